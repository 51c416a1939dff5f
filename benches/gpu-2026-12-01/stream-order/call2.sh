#!/usr/bin/env bash
# Device call 2 (run as three calls: the organism run first failed for data not carried; the phases and profile lines ran in the first):
# step's phases and kernel profile at the OLMoE-1B-7B shape.
set -u
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}
for f in steermoe; do xz -dc .dev/$f.xz > /tmp/$f.bin; chmod +x /tmp/$f.bin; done
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
mkdir -p ../shared/data; for d in alpaca-eval olmoe-fwo; do [ -f ../shared/data/$d.json ] || cp .dev/$d.json ../shared/data/; done; ls ../shared/data
rm -rf runs/organism-cuda
echo "== organism"; (time timeout 330 /tmp/steermoe.bin --no-tui run --config configs/organism-cuda.toml) > $OUT/organism-cuda.txt 2>&1; tail -12 $OUT/organism-cuda.txt
cp runs/organism-cuda/metrics.jsonl $OUT/ 2>/dev/null




