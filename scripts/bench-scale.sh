#!/usr/bin/env bash
# The scale benchmark: one `tracebench run` of REQUESTS requests (default
# 1,000,000) against the built-in simulator answering fast (1 ms to the first
# token, 1 ms between tokens, 4 output tokens), 200 in flight, spans on.
# Prints the time from launch to the first request sent, the run's peak RSS
# and CPU time, its wall time and rate. A benchmark, not a test: run it on a quiet machine.
#
#   cargo build --release && scripts/bench-scale.sh 1000000
#   scripts/bench-scale.sh 100000 path/to/other/tracebench   # compare builds
#   scripts/bench-scale.sh 1000000 target/release/tracebench --trace-source none
#
# Arguments after the binary go to `tracebench run` as they are.
set -euo pipefail
requests=${1:-1000000}
bin=${2:-target/release/tracebench}
shift $(( $# < 2 ? $# : 2 ))
cd "$(dirname "$0")/.."
[ -x "$bin" ] || { echo "no $bin: run cargo build --release first" >&2; exit 2; }
work=$(mktemp -d)
trap 'kill "$sim" 2>/dev/null || true; rm -rf "$work"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
sim_port=$(port) grpc=$(port) http=$(port)
"$bin" sim --port "$sim_port" --ttft-ms 1 --itl-ms 1 --max-num-seqs 256 \
  --otlp-endpoint "grpc://127.0.0.1:$grpc" --span-delay-ms 200 >"$work/sim.log" 2>&1 &
sim=$!
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$sim_port/v1/models" >/dev/null 2>&1 && break
  sleep 0.1
done
launched=$(date +%s%N)
/usr/bin/time -v -o "$work/time.txt" "$bin" run --url "http://127.0.0.1:$sim_port" \
  --requests "$requests" --concurrency 200 --input-tokens 16 --output-tokens 4 --ignore-eos \
  --no-tui --no-db --gpu off --server-metrics off --span-wait 5s \
  --otlp-grpc "127.0.0.1:$grpc" --otlp-http "127.0.0.1:$http" \
  --out "$work/results" --run-id bench "$@" >"$work/run.log" 2>&1 || {
  echo "the run failed:" >&2; tail -20 "$work/run.log" >&2; exit 1; }
python3 - "$work" "$launched" "$requests" <<'PY'
import json, re, sys
work, launched, requests = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
first_sent, lines = None, 0
with open(f"{work}/results/bench/requests.jsonl") as f:
    for line in f:
        lines += 1
        if lines <= 5000:
            sent = json.loads(line)["sent_unix_ns"]
            first_sent = sent if first_sent is None else min(first_sent, sent)
time_txt = open(f"{work}/time.txt").read()
rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", time_txt).group(1))
wall = re.search(r"Elapsed \(wall clock\) time.*: (.+)", time_txt).group(1)
summary = json.load(open(f"{work}/results/bench/summary.json"))
print(f"requests: {requests} asked, {lines} recorded, {summary['requests']['ok']} ok")
print(f"time to first request: {(first_sent - launched) / 1e6:.0f} ms after launch")
cpu = sum(float(re.search(rf"{kind} time \(seconds\): ([\d.]+)", time_txt).group(1)) for kind in ("User", "System"))
print(f"peak RSS: {rss_kb / 1024:.0f} MiB; client CPU {cpu:.1f} s ({cpu * 1e6 / requests:.0f} us a request)")
print(f"wall: {wall}; {summary['request_throughput']:.0f} req/s over the measured window")
join = summary.get("join")
print(f"spans joined: {join['rate']:.3f}" if join else "spans: not collected")
PY
