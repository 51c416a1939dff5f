#!/usr/bin/env bash
# Device call 3 (issue 17, kernels' metadata kept on the device): gpu_a = call 1's bench (no
# metadata cache), gpu_b = call 1's code plus metadata-pool.patch (vendored cubecl-cuda reuses each kernel's dynamic
# metadata buffer instead of copying it before every launch), in channel and inline modes,
# alternating: generation, then the train step; the CUDA tests with gpu_b's code (inline).
# Binaries (release, --features cuda,profile, stripped, xz): .dev/c5/*.xz;
# .dev/c5/fixtures.tar.xz = ../shared/fixtures/olmoe-tiny.
set -u
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}
for b in gpu_a gpu_b cuda_b; do xz -dc .dev/c5/$b.xz > /tmp/$b.bin; chmod +x /tmp/$b.bin; done
rm -rf ../shared/fixtures; mkdir -p ../shared; tar -C ../shared -xf .dev/c5/fixtures.tar.xz
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
for r in a:channel b:channel b:inline a:channel b:channel b:inline; do
  b=gpu_${r%%:*}; m=${r#*:}
  echo "== generate $b $m"
  CUBECL_DEVICE_HANDLE=$m timeout 100 /tmp/$b.bin --backend cuda --precision bf16 --what generate 2>>$OUT/stderr.$b.$m | tee -a $OUT/generate.$b.$m.jsonl | grep -o '"new_tokens_per_s":[0-9.]*,"prompt":64,"run":"[a-z]*"'
done
for r in a:channel b:channel b:inline; do
  b=gpu_${r%%:*}; m=${r#*:}
  echo "== train $b $m"; CUBECL_DEVICE_HANDLE=$m timeout 120 /tmp/$b.bin --backend cuda --precision bf16 --what train 2>>$OUT/stderr.$b.$m | tee -a $OUT/train.$b.$m.jsonl | grep -o '"losses.*"median_s":[0-9.]*\|"step_s.*"tokens_per_s":[0-9.]*'
done
echo "== cuda tests f32 inline"; (time CUBECL_DEVICE_HANDLE=inline timeout 200 /tmp/cuda_b.bin --ignored --test-threads 1 2>&1) > $OUT/tests-cuda-f32.log 2>&1; grep -E "test result|panicked|FAILED" $OUT/tests-cuda-f32.log | tail -8
echo "== cuda tests bf16 inline"; (time CUBECL_DEVICE_HANDLE=inline STEERMOE_TEST_PRECISION=bf16 timeout 150 /tmp/cuda_b.bin --ignored --test-threads 1 2>&1) > $OUT/tests-cuda-bf16.log 2>&1; grep -E "test result|panicked|FAILED" $OUT/tests-cuda-bf16.log | tail -8
