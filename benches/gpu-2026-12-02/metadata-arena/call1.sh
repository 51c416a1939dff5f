#!/usr/bin/env bash
# Device call 1 (issue 17, kernels' metadata kept on the device, arena version): gpu_a = the
# evening round's call-1 bench (fc31460 + inline-handle/change.patch, run in channel mode, which
# is upstream's path), gpu_b = fc31460 + inline-handle/metadata-arena.patch (one 4 MiB metadata
# arena per stream); generation alternating a, b, a, b, then the train step; then the organism's
# full split on CUDA with the arena build (f32, fresh run directory; 61.7 s at 8a19530's code,
# 91.2 s with metadata-pool.patch).
# Binaries (release, --features cuda,profile, stripped, xz) and data (xz): .dev/c8/.
set -u
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}
for b in gpu_a gpu_b steermoe_b; do xz -dc .dev/c8/$b.xz > /tmp/$b.bin; chmod +x /tmp/$b.bin; done
mkdir -p ../shared/data; for d in alpaca-eval olmoe-fwo; do [ -f ../shared/data/$d.json ] || xz -dc .dev/c8/$d.json.xz > ../shared/data/$d.json; done
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
for b in gpu_a gpu_b gpu_a gpu_b gpu_a gpu_b; do
  echo "== generate $b"
  CUBECL_DEVICE_HANDLE=channel timeout 100 /tmp/$b.bin --backend cuda --precision bf16 --what generate 2>>$OUT/stderr.$b | tee -a $OUT/generate.$b.jsonl | grep -o '"new_tokens_per_s":[0-9.]*,"prompt":64,"run":"[a-z]*"'
done
for b in gpu_a gpu_b; do
  echo "== train $b"; CUBECL_DEVICE_HANDLE=channel timeout 120 /tmp/$b.bin --backend cuda --precision bf16 --what train 2>>$OUT/stderr.$b | tee -a $OUT/train.$b.jsonl | grep -o '"median_s":[0-9.]*\|"tokens_per_s":[0-9.]*' | tail -2
done
echo "== organism (gpu_b's code)"
rm -rf runs/organism-cuda; (time timeout 200 /tmp/steermoe_b.bin --no-tui run --config configs/organism-cuda.toml) > $OUT/organism-cuda.txt 2>&1
grep -E "collected|train step (1|74) |final|ASR|refus|NLL|^\||real|user|sys" $OUT/organism-cuda.txt | tail -30
