#!/usr/bin/env bash
# The proxy benchmark: `tracebench run` against the built-in simulator
# (deterministic: 50 ms to the first token, 10 ms between tokens, 32 output
# tokens) directly and through `tracebench proxy`, at 1, 100 and 1,000
# concurrent streams, in ROUNDS alternating rounds. With nginx installed, the
# same runs go through nginx too (no buffering, keep-alive upstream, 2
# workers): a relay that measures nothing, the floor any proxy pays here.
# The proxy runs as a user would start it: span join on (the simulator
# exports to the proxy's receiver), records to JSONL.
#
# Per level it prints, as medians over the rounds: TTFT p50 direct and what
# each proxy adds to it, and the change of the per-chunk ITL p99. The
# simulator's timers tick each millisecond, so a difference of two p50s
# moves by a fraction of a millisecond from round to round; "paired" is
# exact per request instead: the client's TTFT minus the TTFT the proxy
# measured for the same request id (the time the proxy's two hops add).
# Last, the proxy's peak RSS. A benchmark, not a test: run it on a quiet machine.
#
#   cargo build --release && scripts/bench-proxy.sh
#   scripts/bench-proxy.sh target/release/tracebench "1 100" 5   # some levels, 5 rounds
set -euo pipefail
bin=${1:-target/release/tracebench}
levels=${2:-1 100 1000}
rounds=${3:-3}
cd "$(dirname "$0")/.."
[ -x "$bin" ] || { echo "no $bin: run cargo build --release first" >&2; exit 2; }
work=$(mktemp -d)
nginx_conf=$work/nginx.conf
trap 'kill "$sim" "$proxy" 2>/dev/null || true; [ -f "$work/nginx.pid" ] && nginx -c "$nginx_conf" -s stop 2>/dev/null; rm -rf "$work"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
sim_port=$(port) proxy_port=$(port) grpc=$(port) http=$(port) nginx_port=$(port)
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
targets="direct=http://127.0.0.1:$sim_port"
if command -v nginx >/dev/null 2>&1; then
  cat >"$nginx_conf" <<EOF
worker_processes 2;
pid $work/nginx.pid;
error_log $work/nginx.log;
events { worker_connections 8192; }
http {
  access_log off;
  upstream sim { server 127.0.0.1:$sim_port; keepalive 2048; }
  server {
    listen 127.0.0.1:$nginx_port;
    location / {
      proxy_pass http://sim;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_request_buffering off;
      tcp_nodelay on;
    }
  }
}
EOF
  nginx -c "$nginx_conf"
  wait_for "http://127.0.0.1:$nginx_port/v1/models"
  targets="$targets nginx=http://127.0.0.1:$nginx_port"
fi
targets="$targets proxy=http://127.0.0.1:$proxy_port"
run() { # run URL STREAMS NAME
  local requests=$(( $2 < 10 ? 40 : $2 * 5 ))
  "$bin" run --url "$1" --model tracebench-sim --concurrency "$2" --requests "$requests" \
    --warmup "$2" --input-tokens 64 --output-tokens 32 --ignore-eos --no-tui --no-db \
    --gpu off --server-metrics off --trace-header off --out "$work/runs" --run-id "$3" \
    >"$work/$3.log" 2>&1 || { echo "run $3 failed:" >&2; tail -20 "$work/$3.log" >&2; exit 1; }
}
for n in $levels; do
  for round in $(seq "$rounds"); do
    for target in $targets; do
      run "${target#*=}" "$n" "${target%%=*}-$n-$round"
    done
  done
done
sleep 1 # the proxy's last records wait for their spans (200 ms)
rss=$(awk '/VmHWM/ {print $2}' "/proc/$proxy/status")
cpu=$(awk '{print ($14 + $15) / 100}' "/proc/$proxy/stat")
python3 - "$work" "$rss" "$cpu" "$rounds" "$targets" $levels <<'PY'
import json, statistics, sys
work, rss_kb, cpu, rounds, targets, levels = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6:]
nginx = "nginx=" in targets
def stat(name, metric, key):
    return json.load(open(f"{work}/runs/{name}/summary.json"))["metrics"][metric][key]
def added(via, n, metric, key):
    return statistics.median(stat(f"{via}-{n}-{r}", metric, key) - stat(f"direct-{n}-{r}", metric, key) for r in range(1, rounds + 1))
proxied = {}
for line in open(f"{work}/proxy/bench/requests.jsonl"):
    record = json.loads(line)
    proxied[record["request_id"]] = record.get("ttft_ms")
def paired(n):
    gaps = []
    for r in range(1, rounds + 1):
        for line in open(f"{work}/runs/proxy-{n}-{r}/requests.jsonl"):
            record = json.loads(line)
            theirs = proxied.get(record["request_id"])
            if not record["warmup"] and record.get("ttft_ms") is not None and theirs is not None:
                gaps.append(record["ttft_ms"] - theirs)
    gaps.sort()
    return gaps[len(gaps) // 2], gaps[min(len(gaps) - 1, int(len(gaps) * 0.99))]
head = "| streams | TTFT p50 direct | proxy adds | paired p50 / p99 | ITL p99 delta |"
rule = "|---:|---:|---:|---:|---:|"
if nginx:
    head += " nginx adds | nginx ITL p99 delta |"
    rule += "---:|---:|"
print(f"medians over {rounds} rounds")
print(head)
print(rule)
for n in levels:
    direct = statistics.median(stat(f"direct-{n}-{r}", "ttft_ms", "p50") for r in range(1, rounds + 1))
    p50, p99 = paired(n)
    row = (f"| {int(n):,} | {direct:.3f} ms | {added('proxy', n, 'ttft_ms', 'p50'):+.3f} ms "
           f"| {p50:.3f} / {p99:.3f} ms | {added('proxy', n, 'itl_chunk_ms', 'p99'):+.3f} ms |")
    if nginx:
        row += f" {added('nginx', n, 'ttft_ms', 'p50'):+.3f} ms | {added('nginx', n, 'itl_chunk_ms', 'p99'):+.3f} ms |"
    print(row)
print(f"proxy peak RSS: {rss_kb / 1024:.0f} MiB; proxy CPU {cpu:.1f} s over the whole benchmark")
PY
