#!/usr/bin/env bash
# Device call (issue 17) at the commit with the routers' top-k on the device: the one-call table
# (benches/gpu.sh: steermoe's train step and generation, the transformers cross-check on a 2-layer
# full-width model, transformers eager and grouped_mm), the organism's full split on CUDA, then
# cubecl's kernel profile of a short generation (the last decode step's kernels).
# Binaries (release, --features cuda,profile, xz-compressed): .dev/gpu_b.xz = benches/gpu.rs,
# .dev/steermoe.xz = the CLI; .dev/*.json.xz = ../shared/data (the device's checkout lacks it).
set -u
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}
xz -dc .dev/gpu_b.xz > /tmp/gpu; xz -dc .dev/steermoe.xz > /tmp/steermoe; chmod +x /tmp/gpu /tmp/steermoe
mkdir -p ../shared/data; for d in alpaca-eval olmoe-fwo; do [ -f ../shared/data/$d.json ] || xz -dc .dev/$d.json.xz > ../shared/data/$d.json; done
echo "== table"
(time OUTDIR=$OUT/gpu GPU_BENCH=/tmp/gpu HF_ANCHOR=shared/tools/hf_anchor.py SKIP=analysis,gemm FIGURE_TIMEOUT=200 benches/gpu.sh) 2>&1 | cut -c1-900
echo "== organism"
rm -rf runs/organism-cuda; (time timeout 240 /tmp/steermoe --no-tui run --config configs/organism-cuda.toml) > $OUT/organism-cuda.txt 2>&1; tail -22 $OUT/organism-cuda.txt
echo "== generation kernel profile (16 new tokens; the last table is the last decode step)"
CUBECL_DEBUG_OPTION=profile CUBECL_DEBUG_LOG=$OUT/genprof.txt timeout 90 /tmp/gpu --backend cuda --precision bf16 --what generate --new-tokens 16 > $OUT/genprof.jsonl 2>$OUT/stderr.genprof
cut -c1-300 $OUT/genprof.jsonl; python3 benches/profile_summary.py $OUT/genprof.txt; gzip -f $OUT/genprof.txt
