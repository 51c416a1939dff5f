#!/usr/bin/env bash
# Device call 4 (issue 17): call 3's metadata cache without the inline switch (metadata-pool.patch: each kernel's metadata kept in its own
# buffer of the memory pool), cubecl's channel handle as upstream (the inline experiment not
# kept): the organism's full split
# on CUDA (f32, fresh run directory), then the one-call table (benches/gpu.sh: steermoe's train
# step and generation; transformers eager and grouped_mm; peak memory).
# Binaries (release, --features cuda,profile, stripped, xz) and data (xz): .dev/c6/;
# .dev/c6/hf_anchor.py = ../shared/tools/hf_anchor.py.
set -u
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}
for b in steermoe gpu; do xz -dc .dev/c6/$b.xz > /tmp/$b.bin; chmod +x /tmp/$b.bin; done
mkdir -p ../shared/data; for d in alpaca-eval olmoe-fwo; do [ -f ../shared/data/$d.json ] || xz -dc .dev/c6/$d.json.xz > ../shared/data/$d.json; done
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
echo "== organism"
rm -rf runs/organism-cuda; (time timeout 200 /tmp/steermoe.bin --no-tui run --config configs/organism-cuda.toml) > $OUT/organism-cuda.txt 2>&1
grep -E "collected|train step (1|74) |final|ASR|refus|NLL|^\||real" $OUT/organism-cuda.txt | tail -30
echo "== table"
OUTDIR=$OUT/gpu GPU_BENCH=/tmp/gpu.bin HF_ANCHOR=.dev/c6/hf_anchor.py SKIP=check,analysis,gemm FIGURE_TIMEOUT=120 benches/gpu.sh 2>&1 | cut -c1-700
