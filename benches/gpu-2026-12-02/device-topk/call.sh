#!/usr/bin/env bash
# Device call (issue 17): the routers' top-k on the device (src/model/routing.rs `top_k`) against
# burn's topk (a sort on the host, a device synchronisation per MoE layer); both binaries have
# the grouped cuBLAS expert GEMMs. CUDA tests first, then train and generation alternating,
# then a CPU profile of the new binary.
# Binaries (release, --features cuda,profile, xz-compressed, symbols kept): .dev/gpu_a.xz = before
# (burn's topk), .dev/gpu_b.xz and .dev/cuda.xz = after; .dev/fixtures.tar.xz = ../shared/fixtures/olmoe-tiny.
set -u
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}
for b in gpu_a gpu_b cuda; do xz -dc .dev/$b.xz > /tmp/$b.bin; chmod +x /tmp/$b.bin; done
rm -rf ../shared/fixtures; mkdir -p ../shared; tar -C ../shared -xf .dev/fixtures.tar.xz
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
echo "== cuda tests f32"; (time timeout 200 /tmp/cuda.bin --ignored --test-threads 1 2>&1) > $OUT/tests-cuda-f32.log 2>&1; grep -E "^test |test result" $OUT/tests-cuda-f32.log | tail -12
echo "== cuda tests bf16"; (time STEERMOE_TEST_PRECISION=bf16 timeout 150 /tmp/cuda.bin --ignored --test-threads 1 2>&1) > $OUT/tests-cuda-bf16.log 2>&1; tail -3 $OUT/tests-cuda-bf16.log
for b in gpu_a gpu_b gpu_a gpu_b; do
  echo "== train $b"; timeout 150 /tmp/$b.bin --backend cuda --precision bf16 --what train 2>>$OUT/stderr.$b | tee -a $OUT/train.$b.jsonl | cut -c1-700
done
for b in gpu_a gpu_b; do
  echo "== generate $b"; timeout 150 /tmp/$b.bin --backend cuda --precision bf16 --what generate 2>>$OUT/stderr.$b | tee -a $OUT/generate.$b.jsonl | cut -c1-300
done
echo "== profiles gpu_b"; timeout 150 /tmp/gpu_b.bin --backend cuda --precision bf16 --what train,generate --cpu-profile $OUT/prof 2>>$OUT/stderr.prof | tee -a $OUT/prof.jsonl | cut -c1-400
for f in train generate; do python3 benches/profile_folded.py $OUT/prof/$f.folded --top 20 > $OUT/prof/$f.summary.txt; head -50 $OUT/prof/$f.summary.txt; done
