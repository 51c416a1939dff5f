#!/usr/bin/env bash
# Issue 17's profile of one warm train step at the OLMoE-1B-7B shape, in one device call: for
# burn's matmuls (STEERMOE_CUBLAS=0) and for cuBLAS, (1) the step's wall time with the forward,
# backward and optimizer phases timed apart (--phases), then (2) the same steps under cubecl's
# kernel profiler (each launch timed on the device; every kernel's summed time in the last step),
# split into kinds by benches/profile_summary.py. Time outside cubecl's kernels — cuBLAS, host
# synchronisations, launches — is the wall time less the kernel time; cuBLAS's own share is in
# the train line's `cublas_last_step`.
#
#   GPU_BENCH=path/to/gpu-binary OUTDIR=out benches/profile.sh
set -uo pipefail
cd "$(dirname "$0")/.."
GPU_BENCH=${GPU_BENCH:?set GPU_BENCH to the benches/gpu.rs binary}
OUTDIR=${OUTDIR:-$(mktemp -d)}
STEPS=${STEPS:-7}
mkdir -p "$OUTDIR"
for mode in burn cublas; do
  flag=1; [ "$mode" = burn ] && flag=0
  STEERMOE_CUBLAS=$flag timeout "${FIGURE_TIMEOUT:-200}" "$GPU_BENCH" --backend cuda --precision bf16 --what train \
    --steps "$STEPS" --warmup-steps $((STEPS - 3)) --phases 2> "$OUTDIR/stderr.$mode" | tee "$OUTDIR/train.$mode.jsonl"
  wall=$(python3 -c "import json,sys; print([json.loads(l) for l in open('$OUTDIR/train.$mode.jsonl') if '\"train_step\"' in l][-1]['step_s'][-1])" 2>/dev/null || echo "")
  STEERMOE_CUBLAS=$flag CUBECL_DEBUG_OPTION=profile CUBECL_DEBUG_LOG="$OUTDIR/profile.$mode.txt" timeout "${FIGURE_TIMEOUT:-200}" \
    "$GPU_BENCH" --backend cuda --precision bf16 --what train --steps 5 --warmup-steps 4 > "$OUTDIR/train.$mode.profiled.jsonl" 2>> "$OUTDIR/stderr.$mode"
  echo "{\"what\":\"profile\",\"matmul\":\"$mode\"}"
  python3 benches/profile_summary.py "$OUTDIR/profile.$mode.txt" ${wall:+--wall-s $wall}
  gzip -f "$OUTDIR/profile.$mode.txt"
done
