#!/usr/bin/env bash
# Device call 4 (issue 17): the CUDA tests of this round's code again, after the decode-attention
# test's reference moved to the host in float64 (in call 2 it used burn's CUDA matmul, which runs
# float32 as TF32, and failed on its own error: 4.2e-4). The library code is call 2's and 3's.
# Binary (release, --features cuda,profile, stripped, xz): .dev/r4/cuda_d.xz;
# .dev/r4/fixtures.tar.xz = ../shared/fixtures/olmoe-tiny.
set -u
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}
xz -dc .dev/r4/cuda_d.xz > /tmp/cuda_d.bin; chmod +x /tmp/cuda_d.bin
rm -rf ../shared/fixtures; mkdir -p ../shared; tar -C ../shared -xf .dev/r4/fixtures.tar.xz
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
echo "== cuda tests f32"; (time timeout 200 /tmp/cuda_d.bin --ignored --test-threads 1 2>&1) > $OUT/tests-cuda-f32.log 2>&1; grep -E "^test |test result|panicked" $OUT/tests-cuda-f32.log | tail -19
echo "== cuda tests bf16"; (time STEERMOE_TEST_PRECISION=bf16 timeout 150 /tmp/cuda_d.bin --ignored --test-threads 1 2>&1) > $OUT/tests-cuda-bf16.log 2>&1; grep -E "test result|panicked|FAILED" $OUT/tests-cuda-bf16.log | tail -8
