#!/usr/bin/env bash
# End to end against a real vLLM (CPU build, tiny random-weight model, no GPU,
# no model download): vLLM exports one `llm_request` span per request into
# tracebench's embedded OTLP receiver; 50 requests at concurrency 8 against a
# server limited to 2 sequences, so requests really queue. Checks that every
# request joined its span, that queue times are real, and that
# connect + network + frontend + queue + prefill adds up to the client's TTFT, and
# that the preconnect left no connection setup inside any TTFT.
#
# usage: scripts/e2e-vllm.sh [VLLM_DIR]
#   VLLM_DIR  where ../shared/vllm-cpu/setup.sh installs vLLM (default $HOME/.cache/vllm-cpu);
#             the install (~6.5 GB, ~5 min) runs first if it is not there yet.
# Not part of CI (the install is large). Prints the run's summary and the checks.
set -euo pipefail
cd "$(dirname "$0")/.."
VLLM_KIT=${VLLM_KIT:-../shared/vllm-cpu}
DIR=${1:-$HOME/.cache/vllm-cpu}
PORT=${PORT:-18123}
GRPC=${GRPC:-14317}
OUT=$(mktemp -d)

"$VLLM_KIT/setup.sh" "$DIR"
cargo build --release --quiet
BIN="${CARGO_TARGET_DIR:-target}/release/tracebench"

# The same server as the kit's serve.sh, plus --max-num-seqs 2 so requests queue,
# and a short span batch delay so the wait for spans is short.
source scripts/lib/vllm.sh
VLLM_PID=
trap 'kill $VLLM_PID 2>/dev/null || true; wait $VLLM_PID 2>/dev/null || true' EXIT
start_vllm "$DIR" "$PORT" "$GRPC" "$OUT/vllm.log" --max-num-seqs 2

"$BIN" run --url "http://127.0.0.1:$PORT" --concurrency 8 --requests 50 \
  --input-tokens 200 --output-tokens 32 --ignore-eos --no-tui --no-db --out "$OUT" --run-id vllm-e2e \
  --otlp-grpc "127.0.0.1:$GRPC" --otlp-http 127.0.0.1:0 --span-wait 20s --gpu off

python3 - "$OUT/vllm-e2e" <<'PY'
import json, sys
run = sys.argv[1]
records = [json.loads(l) for l in open(f"{run}/requests.jsonl")]
summary = json.load(open(f"{run}/summary.json"))
ok = [r for r in records if r["error"] is None]
joined = [r for r in ok if r["server"] is not None]
queued = [r for r in joined if (r["server"]["queue_ms"] or 0) > 1.0]
worst = 0.0
for r in joined:
    d = r["decomposition"]
    parts = (d["connect_ms"] or 0) + d["network_ms"] + d["frontend_ms"] + d["queue_ms"] + d["prefill_ms"]
    worst = max(worst, abs(parts - r["ttft_ms"]))
print(f"requests {len(records)}, ok {len(ok)}, joined {len(joined)} ({summary['join']['rate']:.0%})")
print(f"queued > 1 ms: {len(queued)}; server queue p50 {summary['metrics']['server.queue_ms']['p50']:.1f} ms, "
      f"p99 {summary['metrics']['server.queue_ms']['p99']:.1f} ms")
print(f"decomposition vs client TTFT: worst difference {worst:.6f} ms")
print(summary.get("diagnosis") or "")
failures = []
if len(ok) != 50: failures.append("not every request succeeded")
if len(joined) != len(ok): failures.append("not every request joined its span")
if not queued: failures.append("no request queued, though 8 were sent to 2 slots")
if worst > 1.0: failures.append("the decomposition does not add up to the client TTFT")
cold = [r for r in ok if not (r["connection"] or {}).get("reused")]
print(f"requests on a connection opened for them: {len(cold)} (preconnect opened 8 first)")
if cold: failures.append("some requests opened their connection inside TTFT despite the preconnect")
if failures:
    print("FAILED: " + "; ".join(failures)); sys.exit(1)
print("e2e-vllm: all checks passed")
PY
