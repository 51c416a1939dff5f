#!/usr/bin/env bash
# Device call 2 (issue 17): gpu_b2 and cuda_b2 = call 1's gpu_b1 plus attention's two batched
# products through cuBLAS (src/cuda/batched.rs) and the GEMM tasks' shared queue
# (src/cuda/device_thread.rs). CUDA tests (f32, bf16) with the new cases (cached decoding and
# greedy tokens on CUDA, the batched GEMM against burn's matmul); generation with nvidia-smi and
# a CPU profile; the train step of gpu_b1 and gpu_b2 alternating.
# Binaries (release, --features cuda,profile, debug info stripped, xz): .dev/c2/*.xz;
# .dev/c2/fixtures.tar.xz = ../shared/fixtures/olmoe-tiny.
set -u
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}
for b in gpu_b1 gpu_b2 cuda_b2; do xz -dc .dev/c2/$b.xz > /tmp/$b.bin; chmod +x /tmp/$b.bin; done
rm -rf ../shared/fixtures; mkdir -p ../shared; tar -C ../shared -xf .dev/c2/fixtures.tar.xz
echo "== cuda tests f32"; (time timeout 240 /tmp/cuda_b2.bin --ignored --test-threads 1 2>&1) > $OUT/tests-cuda-f32.log 2>&1; grep -E "^test |test result|panicked|max \|diff" $OUT/tests-cuda-f32.log | tail -24
echo "== cuda tests bf16"; (time STEERMOE_TEST_PRECISION=bf16 timeout 200 /tmp/cuda_b2.bin --ignored --test-threads 1 2>&1) > $OUT/tests-cuda-bf16.log 2>&1; grep -E "test result|panicked|FAILED" $OUT/tests-cuda-bf16.log | tail -8
busy() { python3 -c "import sys; v=[int(x) for x in open(sys.argv[1]) if x.strip().isdigit()]; w=[x for x in v if x>0]; print('nvidia-smi utilization.gpu: %d samples, %d non-zero, mean of non-zero %.1f%%' % (len(v), len(w), sum(w)/max(1,len(w))))" $1; }
echo "== generate gpu_b2"
nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits -lms 100 > $OUT/util.gpu_b2.txt & smi=$!
timeout 150 /tmp/gpu_b2.bin --backend cuda --precision bf16 --what generate --cpu-profile $OUT/prof 2>>$OUT/stderr.gpu_b2 | tee -a $OUT/generate.gpu_b2.jsonl | cut -c1-300
kill $smi; busy $OUT/util.gpu_b2.txt
python3 benches/profile_folded.py $OUT/prof/generate.folded --top 14 > $OUT/prof/generate.summary.txt; head -70 $OUT/prof/generate.summary.txt
for b in gpu_b1 gpu_b2 gpu_b2; do
  echo "== train $b"; timeout 150 /tmp/$b.bin --backend cuda --precision bf16 --what train 2>>$OUT/stderr.$b | tee -a $OUT/train.$b.jsonl | cut -c1-900
done
