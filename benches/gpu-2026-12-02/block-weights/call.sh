#!/usr/bin/env bash
# Device call: CUDA tests (f32, bf16) with the trained experts' weights read in one block (no
# per-expert cast and stack operations; weight gradients written in f32 by cuBLAS), then the train
# step of the previous commit's binary (b246f9a) and this one, alternating, in one call.
# Binaries (release, --features cuda, carried xz-compressed): .dev/gpu_x.xz = benches/gpu.rs of
# b246f9a; .dev/gpu_y.xz and .dev/cuda_y.xz = b246f9a with change.patch applied.
set -u
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}
xz -dc .dev/gpu_x.xz > /tmp/gpu_before.bin; xz -dc .dev/gpu_y.xz > /tmp/gpu_after.bin; xz -dc .dev/cuda_y.xz > /tmp/cuda.bin; chmod +x /tmp/*.bin
B=/tmp
rm -rf ../shared/fixtures; mkdir -p ../shared; tar -C ../shared -xf .dev/fixtures.tar.xz
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
echo "== cuda tests f32"; (time timeout 150 $B/cuda.bin --ignored --test-threads 1 2>&1) > $OUT/tests-cuda-f32.log 2>&1; grep -E 'test result|FAILED|panicked' $OUT/tests-cuda-f32.log
echo "== cuda tests bf16"; (time STEERMOE_TEST_PRECISION=bf16 timeout 120 $B/cuda.bin --ignored --test-threads 1 2>&1) > $OUT/tests-cuda-bf16.log 2>&1; grep -E 'test result|FAILED|panicked' $OUT/tests-cuda-bf16.log
for bin in gpu_before gpu_after gpu_before gpu_after; do
  echo "== $bin train"; timeout 90 $B/$bin.bin --backend cuda --precision bf16 --what train 2>>$OUT/stderr.$bin | grep train_step
done
