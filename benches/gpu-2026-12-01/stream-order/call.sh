#!/usr/bin/env bash
# Device call 1: CUDA tests (f32, bf16) with the stream-ordered cuBLAS, then the train step and
# generation of the previous binary (synchronised cuBLAS) and the new one, in one call.
set -u
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}
for f in cuda gpu_new gpu; do xz -dc .dev/$f.xz > /tmp/$f.bin; chmod +x /tmp/$f.bin; done
B=/tmp
rm -rf ../shared/fixtures; mkdir -p ../shared; tar -C ../shared -xf .dev/fixtures.tar.xz
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
echo "== cuda tests f32"; (time timeout 200 $B/cuda.bin --ignored --test-threads 1 2>&1) > $OUT/tests-cuda-f32.log 2>&1; tail -4 $OUT/tests-cuda-f32.log
echo "== cuda tests bf16"; (time STEERMOE_TEST_PRECISION=bf16 timeout 150 $B/cuda.bin --ignored --test-threads 1 2>&1) > $OUT/tests-cuda-bf16.log 2>&1; tail -4 $OUT/tests-cuda-bf16.log
for bin in gpu gpu_new gpu gpu_new; do
  echo "== $bin train"; timeout 120 $B/$bin.bin --backend cuda --precision bf16 --what train 2>>$OUT/stderr.$bin | tee -a $OUT/train.$bin.jsonl | cut -c1-400
done
for bin in gpu gpu_new; do
  echo "== $bin generate"; timeout 150 $B/$bin.bin --backend cuda --precision bf16 --what generate 2>>$OUT/stderr.$bin | tee -a $OUT/generate.$bin.jsonl | cut -c1-300
done
