#!/usr/bin/env bash
# Runs every test. Installs what the tests need on a fresh machine first:
# Debian's chromium (the HTML report renders in a real browser), tmux (the
# dashboard in a real terminal), the Kubernetes manifest validator (npm) and a
# Python venv with the official `openai` package (a real SDK client reads the
# proxy's streams).
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v tmux >/dev/null 2>&1 || missing+=(tmux)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing ${missing[*]} (Debian packages) for the browser and terminal checks"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "missing ${missing[*]} and cannot install here (needs root and apt-get)" >&2
  fi
fi
# The Kubernetes schema validator of the `tracebench k8s` manifests (npm).
scripts/k8s-validate/setup.sh
TRACEBENCH_PYTHON="$(pwd)/$(scripts/python-venv.sh)"
export TRACEBENCH_PYTHON
export TRACEBENCH_REQUIRE_BROWSER=1 TRACEBENCH_REQUIRE_TMUX=1 TRACEBENCH_REQUIRE_K8S_VALIDATOR=1
cargo test --all-targets "$@"
cargo test --doc
