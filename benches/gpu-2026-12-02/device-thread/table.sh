#!/usr/bin/env bash
# The one-call table at this commit (device call 7, warm machine of call 6): benches/gpu.sh with
# steermoe's train step and generation and transformers' eager and grouped_mm in one process
# each. (Call 6 ran the same line with HF_ANCHOR=../shared/tools/hf_anchor.py, which the device's
# checkout does not have; its steermoe lines, train median 0.993 s and generation 291/274 new
# tokens/s, agree with these. Call 6 then ran the organism: organism-cuda.txt.)
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}
xz -dc .dev/gpu_x.xz > /tmp/gpu; chmod +x /tmp/gpu
OUTDIR=$OUT/gpu GPU_BENCH=/tmp/gpu HF_ANCHOR=shared/tools/hf_anchor.py SKIP=check,analysis,gemm FIGURE_TIMEOUT=200 benches/gpu.sh
