#!/usr/bin/env bash
# Start-up and memory of a run whose dataset is large: generates ShareGPT-shaped
# files of a few sizes, serves the simulator, and for each file runs 200
# requests, printing the time from the command's start to its first request
# (the first record's sent_unix_ns) and the process's peak RSS. A lazy feed
# keeps both flat whatever the file's size.
#
# usage: scripts/bench-dataset-startup.sh [SIZES_MB...]   (default: 1 50 400)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
BIN="${CARGO_TARGET_DIR:-target}/release/tracebench"
WORK=$(mktemp -d)
trap 'kill $SIM 2>/dev/null || true; rm -rf "$WORK"' EXIT
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$BIN" sim --port "$PORT" --max-model-len 8192 --decode-step-ms 1 >/dev/null 2>&1 &
SIM=$!
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break; sleep 0.1; done
printf "%10s %14s %20s %14s\n" "file MB" "conversations" "first request (ms)" "peak RSS (MB)"
for MB in "${@:-1 50 400}"; do
  for SIZE in $MB; do
    FILE="$WORK/sharegpt-$SIZE.json"
    COUNT=$(python3 scripts/make-sharegpt.py "$FILE" "$SIZE" | sed -E 's/.*: ([0-9]+) conversations.*/\1/')
    START=$(date +%s%N)
    /usr/bin/time -f "%M" -o "$WORK/rss" "$BIN" run --url "http://127.0.0.1:$PORT" --dataset "$FILE" \
      --requests 200 --concurrency 8 --no-tui --no-db --gpu off --server-metrics off --trace-header off \
      --out "$WORK/out" --run-id "size-$SIZE" >/dev/null 2>&1
    FIRST=$(python3 -c "import json,sys; print(min(json.loads(l)['sent_unix_ns'] for l in open(sys.argv[1])))" "$WORK/out/size-$SIZE/requests.jsonl")
    printf "%10s %14s %20.1f %14.1f\n" "$SIZE" "$COUNT" "$(( (FIRST - START) / 1000 ))e-3" "$(( $(cat "$WORK/rss") ))e-3"
    rm -f "$FILE"
  done
done
