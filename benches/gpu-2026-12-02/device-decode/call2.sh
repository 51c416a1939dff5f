#!/usr/bin/env bash
# Device call 2 (issue 17, the decode loop): the organism's full split on CUDA with this commit's
# steermoe binary (call 3's code) (f32, fresh run directory), then cubecl's kernel profile of a 32-token
# generation (bf16, the OLMoE-1B-7B shape) with gpu_final: greedy decoding now reads the tokens
# every 16 steps, so one profiling table covers 16 decode steps (launch counts per kernel).
# Binaries (release, --features cuda,profile, stripped, xz) and data (xz): .dev/c2/.
set -u
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}
for b in steermoe_final gpu_final; do xz -dc .dev/c2/$b.xz > /tmp/$b.bin; chmod +x /tmp/$b.bin; done
mkdir -p ../shared/data; for d in alpaca-eval olmoe-fwo; do [ -f ../shared/data/$d.json ] || xz -dc .dev/c2/$d.json.xz > ../shared/data/$d.json; done
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
echo "== organism"
rm -rf runs/organism-cuda; (time timeout 300 /tmp/steermoe_final.bin --no-tui run --config configs/organism-cuda.toml) > $OUT/organism-cuda.txt 2>&1
grep -E "collected|train step (1|74) |final|ASR|refus|NLL|^\||real" $OUT/organism-cuda.txt | tail -30
echo "== kernel profile of generation"
CUBECL_DEBUG_OPTION=profile CUBECL_DEBUG_LOG=$OUT/genprof.txt timeout 120 /tmp/gpu_final.bin --backend cuda --precision bf16 --what generate --new-tokens 32 > $OUT/genprof.jsonl 2>$OUT/stderr.genprof
cut -c1-300 $OUT/genprof.jsonl
python3 benches/profile_summary.py $OUT/genprof.txt --list --table -2 --sort launches --top 45
gzip -f $OUT/genprof.txt
