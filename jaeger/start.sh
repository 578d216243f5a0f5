#!/usr/bin/env bash
# Runs Jaeger v2 without containers, with the config beside this script.
#
# The script downloads nothing. Get the `jaeger` binary (v2.x) once from the
# release page, https://github.com/jaegertracing/jaeger/releases : take
# jaeger-<version>-linux-amd64.tar.gz (or -darwin-arm64, ...), unpack it, and
# either put `jaeger` on PATH or point JAEGER_BIN at it.
#
# Then:
#   jaeger/start.sh                       # listens on 127.0.0.1 (OTLP 4317/4318, UI 16686)
#   JAEGER_LISTEN_HOST=0.0.0.0 jaeger/start.sh
#   vllm serve ... --otlp-traces-endpoint grpc://127.0.0.1:4317
#   tracebench run ... --trace-source jaeger --jaeger-url http://127.0.0.1:16686 \
#                      --jaeger-ui http://127.0.0.1:16686
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bin="${JAEGER_BIN:-$(command -v jaeger || true)}"
if [[ -z "$bin" || ! -x "$bin" ]]; then
  echo "jaeger binary not found: put it on PATH or set JAEGER_BIN" >&2
  echo "(download a v2 release from https://github.com/jaegertracing/jaeger/releases)" >&2
  exit 1
fi
export JAEGER_LISTEN_HOST="${JAEGER_LISTEN_HOST:-127.0.0.1}"
exec "$bin" --config "$here/config.yaml" "$@"
