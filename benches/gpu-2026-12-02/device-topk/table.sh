#!/usr/bin/env bash
# The one-call table (issue 17) at the device top-k commit: benches/gpu.sh with steermoe's train
# step and generation beside transformers' eager and grouped_mm, in one call. (final.sh's run of
# the same line had the anchor at a path the device's checkout lacks; its steermoe lines agree.)
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}
xz -dc .dev/gpu_b.xz > /tmp/gpu; chmod +x /tmp/gpu
OUTDIR=$OUT/gpu GPU_BENCH=/tmp/gpu HF_ANCHOR=.dev/hf_anchor.py SKIP=check,analysis,gemm FIGURE_TIMEOUT=150 benches/gpu.sh 2>&1 | cut -c1-700
