#!/usr/bin/env bash
# End to end through the proxy against a real vLLM (CPU build, tiny
# random-weight model, no GPU, no model download): the official `openai`
# Python client sends 24 requests (streamed chat, streamed completions, JSON
# chat; 4 at a time, vLLM limited to 2 sequences so requests queue) to
# `tracebench proxy`, which passes them to vLLM; vLLM exports its spans to the
# proxy's receiver. Checks that the SDK parsed every stream, that every
# request's metrics came back and that every record joined its span; prints
# the figures.
#
# usage: scripts/e2e-vllm-proxy.sh [VLLM_DIR]
#   VLLM_DIR  where ../shared/vllm-cpu/setup.sh installs vLLM (default $HOME/.cache/vllm-cpu;
#             installed first when it is not there)
#   PORT, GRPC, HTTP  vLLM's port and the proxy's OTLP receiver (default 18200, 14200, 14210)
# Not part of CI (the vLLM install is large).
set -euo pipefail
cd "$(dirname "$0")/.."
VLLM_KIT=${VLLM_KIT:-../shared/vllm-cpu}
DIR=${1:-$HOME/.cache/vllm-cpu}
PORT=${PORT:-18200}
GRPC=${GRPC:-14200}
HTTP=${HTTP:-14210}
OUT=$(mktemp -d)
[ -x "$DIR/venv/bin/vllm" ] || "$VLLM_KIT/setup.sh" "$DIR"
PYTHON=$(scripts/python-venv.sh)
cargo build --release --quiet
BIN="${CARGO_TARGET_DIR:-target}/release/tracebench"

source scripts/lib/vllm.sh
VLLM_PID= PROXY_PID=
trap 'kill $PROXY_PID $VLLM_PID 2>/dev/null || true; wait $VLLM_PID 2>/dev/null || true' EXIT
start_vllm "$DIR" "$PORT" "$GRPC" "$OUT/vllm.log" --max-num-seqs 2
PROXY_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$BIN" proxy --listen "127.0.0.1:$PROXY_PORT" --upstream "http://127.0.0.1:$PORT" --out "$OUT" \
  --run-id proxy-vllm --no-db --gpu off --otlp-grpc "127.0.0.1:$GRPC" --otlp-http "127.0.0.1:$HTTP" \
  --span-wait 20s >"$OUT/proxy.log" 2>&1 &
PROXY_PID=$!
for _ in $(seq 1 100); do
  curl -sf "http://127.0.0.1:$PROXY_PORT/tracebench/health" >/dev/null && break
  sleep 0.1
done

"$PYTHON" - "http://127.0.0.1:$PROXY_PORT" <<'PY'
import concurrent.futures, json, sys, time, urllib.request
import openai
base = sys.argv[1]
client = openai.OpenAI(base_url=base + "/v1", api_key="sk-e2e", max_retries=0)
extra = {"ignore_eos": True}
def chat_stream(i):
    chunks = list(client.chat.completions.create(model="tiny", max_tokens=32, stream=True, extra_body=extra,
        messages=[{"role": "user", "content": f"Tell me a story, number {i}. " * 20}],
        extra_headers={"x-request-id": f"e2e-{i}"}))
    assert [c for c in chunks if c.choices and c.choices[0].finish_reason], "the stream ended with a finish reason"
    assert all(c.usage is None for c in chunks), "the usage chunk the proxy asked for is removed"
    return f"e2e-{i}"
def completions_stream(i):
    chunks = list(client.completions.create(model="tiny", prompt=f"Once upon a time {i} " * 20, max_tokens=32,
        stream=True, extra_body=extra, extra_headers={"x-request-id": f"e2e-{i}"}))
    assert [c for c in chunks if c.choices and c.choices[0].finish_reason], "the stream ended with a finish reason"
    return f"e2e-{i}"
def chat_json(i):
    whole = client.chat.completions.create(model="tiny", max_tokens=32, extra_body=extra,
        messages=[{"role": "user", "content": f"Hello {i}. " * 20}], extra_headers={"x-request-id": f"e2e-{i}"})
    metrics = whole.model_extra["metrics"]
    assert metrics["output_tokens"] == whole.usage.completion_tokens == 32, metrics
    return f"e2e-{i}"
calls = [(chat_stream, completions_stream, chat_json)[i % 3] for i in range(24)]
with concurrent.futures.ThreadPoolExecutor(4) as pool:
    ids = list(pool.map(lambda pair: pair[1](pair[0]), enumerate(calls)))
deadline = time.time() + 30
records = {}
while time.time() < deadline and len(records) < len(ids):
    for rid in ids:
        if rid not in records:
            r = json.load(urllib.request.urlopen(f"{base}/tracebench/requests/{rid}"))
            if r["server"] is not None:
                records[rid] = r
    time.sleep(0.5)
joined = list(records.values())
print(f"openai {openai.__version__}: {len(ids)} requests through the proxy, {len(joined)} joined with vLLM's span")
def p50(values):
    values = sorted(values)
    return values[len(values) // 2] if values else float("nan")
streamed = [r for r in joined if r["stream"]]
print(f"TTFT p50 at the proxy {p50([r['ttft_ms'] for r in streamed]):.1f} ms, in vLLM's span {p50([r['server']['ttft_ms'] for r in streamed]):.1f} ms")
print(f"server queue p50 {p50([r['server']['queue_ms'] for r in joined]):.1f} ms, prefill p50 {p50([r['server']['prefill_ms'] for r in joined]):.1f} ms, "
      f"decode p50 {p50([r['server']['decode_ms'] for r in joined]):.1f} ms; TPOT p50 at the proxy {p50([r['tpot_ms'] for r in streamed]):.2f} ms")
assert len(joined) == len(ids), "every request joined its span"
assert all(r["output_tokens"] == 32 and r["output_tokens_source"] == "usage" for r in joined), "token counts from usage"
PY
curl -s "http://127.0.0.1:$PROXY_PORT/tracebench/metrics" | grep -E '^tracebench_proxy_(requests_total|queue_time_seconds_count|time_to_first_token_seconds_count)'
kill -INT $PROXY_PID
wait $PROXY_PID
python3 - "$OUT/proxy-vllm" <<'PY'
import json, sys
records = [json.loads(l) for l in open(f"{sys.argv[1]}/requests.jsonl")]
joined = [r for r in records if r["server"] is not None]
print(f"records written: {len(records)}, joined {len(joined)}, source {set(r.get('source') for r in records)}")
assert len(records) == 24 and len(joined) == 24
PY
echo "e2e through the proxy: ok (files in $OUT)"
