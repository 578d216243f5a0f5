#!/usr/bin/env bash
# The real workloads against a real vLLM (CPU build, tiny random-weight model):
# the ShareGPT sample, multi-turn sessions with prefix caching on (later turns'
# TTFT against the first's), and the Mooncake trace sample with shared
# prefixes (cached tokens reported). vLLM runs with --enable-prefix-caching and
# --enable-prompt-tokens-details, and exports its spans into tracebench's receiver.
#
# usage: scripts/e2e-vllm-workloads.sh [VLLM_DIR]
#   VLLM_DIR  the vLLM CPU install of ../shared/vllm-cpu/setup.sh (default $HOME/.cache/vllm-cpu).
#   PORT, GRPC, HTTP: vLLM's port and tracebench's OTLP ports (defaults 18124, 14318, 14319).
# Not part of CI (the install is large). Prints each run's figures.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-$HOME/.cache/vllm-cpu}
PORT=${PORT:-18124}
GRPC=${GRPC:-14318}
HTTP=${HTTP:-14319}
OUT=$(mktemp -d)
[ -x "$DIR/venv/bin/vllm" ] || { echo "no vLLM at $DIR (run ../shared/vllm-cpu/setup.sh)" >&2; exit 1; }
cargo build --release --quiet
BIN="${CARGO_TARGET_DIR:-target}/release/tracebench"

source scripts/lib/vllm.sh
VLLM_PID=
trap 'kill $VLLM_PID 2>/dev/null || true; wait $VLLM_PID 2>/dev/null || true' EXIT
start_vllm "$DIR" "$PORT" "$GRPC" "$OUT/vllm.log" --max-num-seqs 4 \
  --enable-prefix-caching --enable-prompt-tokens-details

run() {
  local id=$1; shift
  echo "== $id: tracebench run $*"
  "$BIN" run --url "http://127.0.0.1:$PORT" --ignore-eos --no-tui --no-db --gpu off --out "$OUT" --run-id "$id" \
    --otlp-grpc "127.0.0.1:$GRPC" --otlp-http "127.0.0.1:$HTTP" --span-wait 20s "$@" >"$OUT/$id.log" 2>&1 \
    || { tail -20 "$OUT/$id.log"; exit 1; }
}
run sharegpt --dataset tests/data/workloads/sharegpt.json --requests 12 --concurrency 4
run sessions --turns 4 --input-tokens 400 --output-tokens 16 --think-time 100ms --concurrency 2 --requests 8
run sessions-file --dataset tests/data/workloads/sessions.jsonl --concurrency 1
run trace --trace-replay tests/data/workloads/mooncake-trace.jsonl

python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
failures = []
for run in ["sharegpt", "sessions", "sessions-file", "trace"]:
    records = [json.loads(l) for l in open(f"{out}/{run}/requests.jsonl")]
    summary = json.load(open(f"{out}/{run}/summary.json"))
    ok = [r for r in records if r["error"] is None]
    joined = [r for r in ok if r["server"] is not None]
    m = summary["metrics"]
    print(f"\n{run}: {len(records)} requests, {len(ok)} ok, {len(joined)} joined their span; "
          f"TTFT p50 {m['ttft_ms']['p50']:.1f} ms, p99 {m['ttft_ms']['p99']:.1f} ms")
    if len(ok) != len(records): failures.append(f"{run}: failed requests")
    if len(joined) != len(ok): failures.append(f"{run}: not every request joined its span")
    w = summary.get("workload") or {}
    if "cache" in w:
        c = w["cache"]
        print(f"  prefix cache: {c['cached_tokens']} of {c['prompt_tokens']} prompt tokens cached ({c['hit_rate']:.0%}) over {c['requests']} requests")
    for turn, t in sorted(w.get("by_turn", {}).items(), key=lambda kv: int(kv[0].rstrip("+"))):
        ttft = t["ttft_ms"]
        prefill = [r["server"]["prefill_ms"] for r in joined
                   if r["turn"] == int(turn.rstrip("+")) and r["server"]["prefill_ms"] is not None]
        prompt = [r["input_tokens"] for r in ok if r["turn"] == int(turn.rstrip("+"))]
        print(f"  turn {turn}: {t['requests']} requests, prompt {sum(prompt) / len(prompt):.0f} tokens, "
              f"TTFT p50 {ttft['p50']:.1f} ms, mean {ttft['mean']:.1f} ms, "
              f"server prefill mean {sum(prefill) / max(len(prefill), 1):.1f} ms, "
              f"cache hit rate {t['cache_hit_rate'] or 0:.0%}")
    if "chunks" in w:
        print(f"  chunks: itl {w['chunks']['itl']}; {w['chunks']['note']}")
    if run == "sharegpt":
        print(f"  max_tokens asked: {sorted(r['max_tokens'] for r in records)}")
    if run == "trace":
        lag = m["schedule_lag_ms"]
        print(f"  schedule lag p50 {lag['p50']:.2f} ms, max {lag['max']:.2f} ms")
        shared = [r for r in ok if (r["cached_tokens"] or 0) > 0]
        print(f"  requests with cached tokens: {len(shared)} of {len(ok)}")
        if not shared: failures.append("trace: no cached tokens reported")
    if run == "sessions":
        by_turn = w["by_turn"]
        if not any((t["cache_hit_rate"] or 0) > 0 for k, t in by_turn.items() if k != "0"):
            failures.append("sessions: later turns had no cache hits")
if failures:
    print("FAILED: " + "; ".join(failures)); sys.exit(1)
print("\ne2e-vllm-workloads: all checks passed")
PY
