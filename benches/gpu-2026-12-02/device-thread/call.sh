#!/usr/bin/env bash
# Device call: CUDA tests (f32, bf16) with the device-thread GEMM issue, then train step and
# generation of the previous binary (e25034b: one get_resource round trip per operand) and the
# new one (one task on cubecl's device thread per grouped GEMM), alternating, in one call.
# Binaries (release, --features cuda, carried xz-compressed): .dev/gpu_sym.xz = benches/gpu.rs built
# from e25034b's tree (unstripped, for the backtraces), .dev/gpu_x.xz and .dev/cuda_x.xz = this commit's.
set -u
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}
xz -dc .dev/gpu_sym.xz > /tmp/gpu_old.bin; xz -dc .dev/gpu_x.xz > /tmp/gpu_new.bin; xz -dc .dev/cuda_x.xz > /tmp/cuda.bin; chmod +x /tmp/*.bin
B=/tmp
rm -rf ../shared/fixtures; mkdir -p ../shared; tar -C ../shared -xf .dev/fixtures.tar.xz
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
echo "== cuda tests f32"; (time timeout 200 $B/cuda.bin --ignored --test-threads 1 2>&1) > $OUT/tests-cuda-f32.log 2>&1; tail -4 $OUT/tests-cuda-f32.log
echo "== cuda tests bf16"; (time STEERMOE_TEST_PRECISION=bf16 timeout 150 $B/cuda.bin --ignored --test-threads 1 2>&1) > $OUT/tests-cuda-bf16.log 2>&1; tail -4 $OUT/tests-cuda-bf16.log
for bin in gpu_old gpu_new gpu_old gpu_new; do
  echo "== $bin train"; timeout 120 $B/$bin.bin --backend cuda --precision bf16 --what train 2>>$OUT/stderr.$bin | tee -a $OUT/train.$bin.jsonl | cut -c1-600
done
for bin in gpu_old gpu_new; do
  echo "== $bin generate"; timeout 150 $B/$bin.bin --backend cuda --precision bf16 --what generate 2>>$OUT/stderr.$bin | tee -a $OUT/generate.$bin.jsonl | cut -c1-300
done
echo "== gpu_new generate, burn's matmuls"; STEERMOE_CUBLAS=0 timeout 150 $B/gpu_new.bin --backend cuda --precision bf16 --what generate 2>>$OUT/stderr.cublas0 | tee -a $OUT/generate.cublas0.jsonl | cut -c1-300
