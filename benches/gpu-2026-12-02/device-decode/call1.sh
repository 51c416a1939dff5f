#!/usr/bin/env bash
# Device call 1 (issue 17, the decode loop): gpu_head = the bench at 90a7ad8 (before); gpu_new =
# greedy decoding kept on the device (each step's argmax fed back, stopped rows tracked there, the
# tokens read every 16 steps) and a forward pass's constants (the 0..n index, RoPE's frequencies)
# uploaded once per pass and kept by the KV cache for every decode step (before: ~21 blocking
# uploads a decode step). CUDA tests (f32, bf16) of the new code; generation alternating with
# nvidia-smi sampling; the train step of both.
# Binaries (release, --features cuda,profile, stripped, xz): .dev/c1/*.xz;
# .dev/c1/fixtures.tar.xz = ../shared/fixtures/olmoe-tiny.
set -u
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}
for b in gpu_head gpu_new cuda_new; do xz -dc .dev/c1/$b.xz > /tmp/$b.bin; chmod +x /tmp/$b.bin; done
rm -rf ../shared/fixtures; mkdir -p ../shared; tar -C ../shared -xf .dev/c1/fixtures.tar.xz
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
echo "== cuda tests f32"; (time timeout 200 /tmp/cuda_new.bin --ignored --test-threads 1 2>&1) > $OUT/tests-cuda-f32.log 2>&1; grep -E "^test |test result|panicked" $OUT/tests-cuda-f32.log | tail -16
echo "== cuda tests bf16"; (time STEERMOE_TEST_PRECISION=bf16 timeout 150 /tmp/cuda_new.bin --ignored --test-threads 1 2>&1) > $OUT/tests-cuda-bf16.log 2>&1; grep -E "test result|panicked|FAILED" $OUT/tests-cuda-bf16.log | tail -8
busy() { python3 -c "import sys; v=[int(x) for x in open(sys.argv[1]) if x.strip().isdigit()]; w=[x for x in v if x>0]; print('nvidia-smi utilization.gpu: %d samples, %d non-zero, mean of non-zero %.1f%%' % (len(v), len(w), sum(w)/max(1,len(w))))" $1; }
for b in gpu_head gpu_new gpu_head gpu_new; do
  echo "== generate $b"
  nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits -lms 100 > $OUT/util.$b.txt & smi=$!
  timeout 120 /tmp/$b.bin --backend cuda --precision bf16 --what generate 2>>$OUT/stderr.$b | tee -a $OUT/generate.$b.jsonl | cut -c1-300
  kill $smi; busy $OUT/util.$b.txt
done
for b in gpu_head gpu_new; do
  echo "== train $b"; timeout 150 /tmp/$b.bin --backend cuda --precision bf16 --what train 2>>$OUT/stderr.$b | tee -a $OUT/train.$b.jsonl | cut -c1-900
done
tail -3 $OUT/stderr.gpu_new
