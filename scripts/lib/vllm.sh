# Sourced by the end-to-end scripts: starts the real vLLM of the CPU kit (the
# same server as its serve.sh, with a short span batch delay so the wait for
# spans is short) and waits until it is healthy.
#
#   start_vllm DIR PORT GRPC LOG [vllm serve flags...]
#
# Sets VLLM_PID (the caller's EXIT trap stops it); exits when vLLM dies or is
# not healthy within 300 s, with the end of its log.
start_vllm() {
  local dir=$1 port=$2 grpc=$3 log=$4
  shift 4
  export VLLM_TARGET_DEVICE=cpu VLLM_CPU_KVCACHE_SPACE=1 OTEL_SERVICE_NAME=vllm OTEL_BSP_SCHEDULE_DELAY=500
  "$dir/venv/bin/vllm" serve "$dir/tiny-model" --served-model-name tiny --load-format dummy --dtype bfloat16 \
    --max-model-len 2048 --host 127.0.0.1 --port "$port" \
    --otlp-traces-endpoint "grpc://127.0.0.1:$grpc" "$@" >"$log" 2>&1 &
  VLLM_PID=$!
  echo "waiting for vLLM on 127.0.0.1:$port (log: $log)"
  for _ in $(seq 1 300); do
    curl -sf "http://127.0.0.1:$port/health" >/dev/null && return 0
    kill -0 "$VLLM_PID" 2>/dev/null || { tail -30 "$log"; echo "vLLM exited" >&2; exit 1; }
    sleep 1
  done
  echo "vLLM did not become healthy" >&2
  exit 1
}
