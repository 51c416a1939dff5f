#!/usr/bin/env bash
# Device call 3 of 2026-12-06 (evening), right after calls 1 and 2 on the same machine (their
# /tmp/steermoe and /tmp/gpu-bench kept): issue 41's memory-pressure stress test with the vendored
# cubecl-cuda's out-of-memory exit (benches/oom_stress.sh: the organism's base evaluation twice
# quiet, then PROCS at once beside a process holding all but HEADROOM_GB), then the OLMoE-1B-7B
# shape's train and generate figures for steermoe and transformers in one call (benches/gpu.sh;
# the train figure prints MFU by the standard count beside the project's).
set -u
cd "$(dirname "$0")/../.."
[ -x /tmp/steermoe ] || { xz -dc .dev/steermoe.xz > /tmp/steermoe && chmod +x /tmp/steermoe; }
[ -x /tmp/gpu-bench ] || { xz -dc runs/devC/gpu.xz > /tmp/gpu-bench && chmod +x /tmp/gpu-bench; }
mkdir -p "$OUT/oom" "$OUT/gpu"
OUT="$OUT/oom" STEERMOE=/tmp/steermoe PROCS=${PROCS:-6} HEADROOM_GB=${HEADROOM_GB:-8} \
  timeout ${OOM_S:-220} bash benches/oom_stress.sh > "$OUT/oom/run.log" 2>&1
echo "oom_stress rc $?" >> "$OUT/oom/run.log"
# Whatever a cut-off stress test left on the GPU (its memory hog included).
nvidia-smi --query-compute-apps=pid --format=csv,noheader | xargs -r kill 2>/dev/null; sleep 2
OUTDIR="$OUT/gpu" GPU_BENCH=/tmp/gpu-bench SKIP=gemm,check,analysis FIGURE_TIMEOUT=${FIGURE_S:-120} \
  timeout ${GPU_S:-330} bash benches/gpu.sh > "$OUT/gpu/run.log" 2>&1
tar -C "$OUT" -cf "$OUT/call3.tar" oom gpu && rm -r "$OUT/oom" "$OUT/gpu"
ls -la "$OUT"
