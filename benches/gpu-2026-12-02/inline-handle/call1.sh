#!/usr/bin/env bash
# Device call 1 (issue 17, inline device handle): one binary (change.patch), cubecl's device work
# run inline on the calling thread (CUBECL_DEVICE_HANDLE=inline; change.patch, not kept) or
# handed to the fusion and device threads as before (=channel), alternating in one call:
# generation (with nvidia-smi sampling) and the train step; the CUDA tests run inline, f32 and bf16.
# Binaries (release, --features cuda,profile, stripped, xz): .dev/c4/*.xz;
# .dev/c4/fixtures.tar.xz = ../shared/fixtures/olmoe-tiny.
set -u
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}
for b in gpu cuda; do xz -dc .dev/c4/$b.xz > /tmp/$b.bin; chmod +x /tmp/$b.bin; done
rm -rf ../shared/fixtures; mkdir -p ../shared; tar -C ../shared -xf .dev/c4/fixtures.tar.xz
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
busy() { python3 -c "import sys; v=[int(x) for x in open(sys.argv[1]) if x.strip().isdigit()]; w=[x for x in v if x>0]; print('nvidia-smi utilization.gpu: %d samples, %d non-zero, mean of non-zero %.1f%%' % (len(v), len(w), sum(w)/max(1,len(w))))" $1; }
for m in channel inline channel inline; do
  echo "== generate $m"
  nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits -lms 100 > $OUT/util.$m.txt & smi=$!
  CUBECL_DEVICE_HANDLE=$m timeout 120 /tmp/gpu.bin --backend cuda --precision bf16 --what generate 2>>$OUT/stderr.$m | tee -a $OUT/generate.$m.jsonl | cut -c1-300
  kill $smi; busy $OUT/util.$m.txt
done
for m in channel inline; do
  echo "== train $m"; CUBECL_DEVICE_HANDLE=$m timeout 150 /tmp/gpu.bin --backend cuda --precision bf16 --what train 2>>$OUT/stderr.$m | tee -a $OUT/train.$m.jsonl | cut -c1-900
done
echo "== cuda tests f32 inline"; (time CUBECL_DEVICE_HANDLE=inline timeout 200 /tmp/cuda.bin --ignored --test-threads 1 2>&1) > $OUT/tests-cuda-f32.log 2>&1; grep -E "^test |test result|panicked" $OUT/tests-cuda-f32.log | tail -16
echo "== cuda tests bf16 inline"; (time CUBECL_DEVICE_HANDLE=inline STEERMOE_TEST_PRECISION=bf16 timeout 150 /tmp/cuda.bin --ignored --test-threads 1 2>&1) > $OUT/tests-cuda-bf16.log 2>&1; grep -E "test result|panicked|FAILED" $OUT/tests-cuda-bf16.log | tail -8
tail -3 $OUT/stderr.inline
