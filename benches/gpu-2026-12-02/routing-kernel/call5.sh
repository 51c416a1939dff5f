#!/usr/bin/env bash
# Device call 5 (issue 17; the session's last 4.5 minutes of device time): gpu_c = call 2's bench
# (bd261b0's code), gpu_d = the routing kernel reading the router logits in their own dtype (no
# float32 cast launched before it) and, in bf16, the router's product through cuBLAS instead of
# burn's matmul — an attempt at the elementwise ops burn's fusion ran unfused since the routing
# kernel. Generation alternating c, d, twice; the CUDA tests in bf16, and in float32 those whose
# name says routing or cached decoding (the float32 path is unchanged but for the kernel's
# generic input). Binaries (release, --features cuda,profile, stripped, xz): .dev/r5/;
# .dev/r5/fixtures.tar.xz = ../shared/fixtures/olmoe-tiny.
set -u
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}
for b in gpu_c gpu_d cuda_d; do xz -dc .dev/r5/$b.xz > /tmp/$b.bin; chmod +x /tmp/$b.bin; done
rm -rf ../shared/fixtures; mkdir -p ../shared; tar -C ../shared -xf .dev/r5/fixtures.tar.xz
for b in gpu_c gpu_d gpu_c gpu_d; do
  echo "== generate $b"
  timeout 45 /tmp/$b.bin --backend cuda --precision bf16 --what generate 2>>$OUT/stderr.txt | tee -a $OUT/generate.$b.jsonl | grep -o '"new_tokens_per_s":[0-9.]*,"prompt":64,"run":"[a-z]*"'
done
echo "== cuda tests bf16"; (time STEERMOE_TEST_PRECISION=bf16 timeout 80 /tmp/cuda_d.bin --ignored --test-threads 1 2>&1) > $OUT/tests-cuda-bf16.log 2>&1; grep -E "^test |test result|panicked" $OUT/tests-cuda-bf16.log | tail -20
echo "== cuda tests f32 (routing, cached decoding)"; (time timeout 45 /tmp/cuda_d.bin --ignored --test-threads 1 routing cached 2>&1) > $OUT/tests-cuda-f32.log 2>&1; grep -E "^test |test result|panicked" $OUT/tests-cuda-f32.log | tail -8
