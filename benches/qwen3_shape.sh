#!/usr/bin/env bash
# Qwen3-30B-A3B's shape on one GPU (issue 18): the train step of configs/qwen3-30b-a3b-cuda.toml
# (batch 16, 50 trained experts, bf16 with f32 master weights) at max_len 384 and 512, and
# greedy generation with routing capture, random weights, each process's peak GPU memory sampled
# by nvidia-smi. One JSON line per figure.
#
#   GPU_BENCH=<benches/gpu.rs binary, --features cuda> benches/qwen3_shape.sh
set -uo pipefail
cd "$(dirname "$0")/.."
GPU_BENCH=${GPU_BENCH:?set GPU_BENCH to the benches/gpu.rs binary}
OUTDIR=${OUTDIR:-$(mktemp -d)}
mkdir -p "$OUTDIR"
CONFIG=benches/qwen3-30b-a3b.json

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
  | python3 -c 'import json,sys; n,m,d=[x.strip() for x in sys.stdin.read().split(",")]; print(json.dumps({"what":"device","gpu":n,"memory":m,"driver":d}))'

peak() { # name, command...
  local name=$1; shift
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > "$OUTDIR/mem.$name" &
  local smi=$!
  timeout "${FIGURE_TIMEOUT:-240}" "$@" 2> "$OUTDIR/stderr.$name"
  local rc=$?
  kill $smi 2>/dev/null; wait $smi 2>/dev/null
  sort -n "$OUTDIR/mem.$name" | tail -1 | python3 -c "import json,sys; print(json.dumps({'what':'peak_gpu_memory','run':'$name','mib':int(sys.stdin.read().strip() or 0),'rc':$rc}))"
  [ "$rc" = 0 ] || tail -3 "$OUTDIR/stderr.$name" >&2
}

for seq in 384 512; do
  peak "train-T$seq" "$GPU_BENCH" --backend cuda --precision bf16 --model-config $CONFIG --what train \
    --seq $seq --steps 4 --warmup-steps 2
done
peak generate "$GPU_BENCH" --backend cuda --precision bf16 --model-config $CONFIG --what generate
