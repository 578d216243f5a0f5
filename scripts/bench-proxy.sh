#!/usr/bin/env bash
# The proxy benchmark: `tracebench run` against the built-in simulator
# (deterministic: 50 ms to the first token, 10 ms between tokens, 32 output
# tokens) directly and through `tracebench proxy`, at 1, 100 and 1,000
# concurrent streams, one after the other. Prints TTFT p50 and per-chunk ITL p99
# both ways (and what the proxy adds) and the proxy's peak RSS. The proxy runs
# as a user would start it: span join on (the simulator exports to the
# proxy's receiver), records to JSONL. A benchmark, not a test: run it on a
# quiet machine.
#
#   cargo build --release && scripts/bench-proxy.sh
#   scripts/bench-proxy.sh target/release/tracebench "1 100"   # some levels only
set -euo pipefail
bin=${1:-target/release/tracebench}
levels=${2:-1 100 1000}
cd "$(dirname "$0")/.."
[ -x "$bin" ] || { echo "no $bin: run cargo build --release first" >&2; exit 2; }
work=$(mktemp -d)
trap 'kill "$sim" "$proxy" 2>/dev/null || true; rm -rf "$work"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
sim_port=$(port) proxy_port=$(port) grpc=$(port) http=$(port)
wait_for() { for _ in $(seq 100); do curl -sf "$1" >/dev/null 2>&1 && return; sleep 0.1; done; echo "$1 never answered" >&2; exit 1; }
"$bin" sim --port "$sim_port" --ttft-ms 50 --itl-ms 10 --max-num-seqs 2048 \
  --otlp-endpoint "grpc://127.0.0.1:$grpc" --span-delay-ms 200 >"$work/sim.log" 2>&1 &
sim=$!
"$bin" proxy --listen "127.0.0.1:$proxy_port" --upstream "http://127.0.0.1:$sim_port" \
  --out "$work/proxy" --run-id bench --no-db --gpu off --server-metrics off \
  --otlp-grpc "127.0.0.1:$grpc" --otlp-http "127.0.0.1:$http" >"$work/proxy.log" 2>&1 &
proxy=$!
wait_for "http://127.0.0.1:$sim_port/v1/models"
wait_for "http://127.0.0.1:$proxy_port/tracebench/health"
run() { # run URL STREAMS NAME
  local requests=$(( $2 < 10 ? 40 : $2 * 5 ))
  "$bin" run --url "$1" --model tracebench-sim --concurrency "$2" --requests "$requests" \
    --warmup "$2" --input-tokens 64 --output-tokens 32 --ignore-eos --no-tui --no-db \
    --gpu off --server-metrics off --trace-header off --out "$work/runs" --run-id "$3" \
    >"$work/$3.log" 2>&1 || { echo "run $3 failed:" >&2; tail -20 "$work/$3.log" >&2; exit 1; }
}
for n in $levels; do
  run "http://127.0.0.1:$sim_port" "$n" "direct-$n"
  run "http://127.0.0.1:$proxy_port" "$n" "proxy-$n"
done
rss=$(awk '/VmHWM/ {print $2}' "/proc/$proxy/status")
cpu=$(awk '{print ($14 + $15) / 100}' "/proc/$proxy/stat")
python3 - "$work" "$rss" "$cpu" $levels <<'PY'
import json, sys
work, rss_kb, cpu, levels = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4:]
def stat(name, metric, key):
    return json.load(open(f"{work}/runs/{name}/summary.json"))["metrics"][metric][key]
print("| streams | TTFT p50 direct | through proxy | added | ITL p99 direct | through proxy | delta |")
print("|---:|---:|---:|---:|---:|---:|---:|")
for n in levels:
    t0, t1 = stat(f"direct-{n}", "ttft_ms", "p50"), stat(f"proxy-{n}", "ttft_ms", "p50")
    i0, i1 = stat(f"direct-{n}", "itl_chunk_ms", "p99"), stat(f"proxy-{n}", "itl_chunk_ms", "p99")
    print(f"| {int(n):,} | {t0:.3f} ms | {t1:.3f} ms | {t1 - t0:+.3f} ms | {i0:.3f} ms | {i1:.3f} ms | {i1 - i0:+.3f} ms |")
print(f"proxy peak RSS: {rss_kb / 1024:.0f} MiB; proxy CPU {cpu:.1f} s over the whole benchmark")
PY
