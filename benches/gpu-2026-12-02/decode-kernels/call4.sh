#!/usr/bin/env bash
# Device call 4 of the session (issue 17), call 3's build (gpu_g and the steermoe binary of the
# same build): the organism's full split on CUDA (f32, fresh run directory), then the one-call
# table (benches/gpu.sh: steermoe's train step and generation; transformers eager and grouped_mm;
# peak memory). Binaries (release, --features cuda,profile, stripped, xz) and data (xz):
# .dev/r8/; .dev/r8/hf_anchor.py = ../shared/tools/hf_anchor.py. (tests/fixtures is left out of
# this call's tree to keep it under the carry limit; nothing here reads it.)
set -u
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}
for b in steermoe gpu_g; do xz -dc .dev/r8/$b.xz > /tmp/$b.bin; chmod +x /tmp/$b.bin; done
mkdir -p ../shared/data; for d in alpaca-eval olmoe-fwo; do [ -f ../shared/data/$d.json ] || xz -dc .dev/r8/$d.json.xz > ../shared/data/$d.json; done
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
echo "== organism"
rm -rf runs/organism-cuda; (time timeout 200 /tmp/steermoe.bin --no-tui run --config configs/organism-cuda.toml) > $OUT/organism-cuda.txt 2>&1
grep -E "collected|analysed|train step (1|74) |final|ASR|refus|NLL|^\||real|user" $OUT/organism-cuda.txt | tail -30
echo "== table"
OUTDIR=$OUT/gpu GPU_BENCH=/tmp/gpu_g.bin HF_ANCHOR=.dev/r8/hf_anchor.py SKIP=check,analysis,gemm FIGURE_TIMEOUT=120 benches/gpu.sh 2>&1 | cut -c1-700
