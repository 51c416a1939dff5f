#!/usr/bin/env bash
# Device call 3 (issue 17): gpu_c and cuda_c = call 2's binaries plus the patched task channel
# (vendor/cubecl-common: a waiting thread yields for up to 5 ms before it sleeps), attention's
# float32 products in full float32, and KV-cache buffers that double when full. CUDA tests
# (f32, bf16); generation and train of gpu_b2 (call 2) and gpu_c alternating; then the one-call
# table (benches/gpu.sh: steermoe, the transformers cross-check, transformers eager and
# grouped_mm) with gpu_c.
# Binaries (release, --features cuda,profile, stripped, xz): .dev/c3/*.xz;
# .dev/c3/fixtures.tar.xz = ../shared/fixtures/olmoe-tiny; .dev/c3/hf_anchor.py =
# ../shared/tools/hf_anchor.py.
set -u
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}
for b in gpu_b2 gpu_c cuda_c; do xz -dc .dev/c3/$b.xz > /tmp/$b.bin; chmod +x /tmp/$b.bin; done
rm -rf ../shared/fixtures; mkdir -p ../shared; tar -C ../shared -xf .dev/c3/fixtures.tar.xz
echo "== cuda tests f32"; (time timeout 240 /tmp/cuda_c.bin --ignored --test-threads 1 2>&1) > $OUT/tests-cuda-f32.log 2>&1; grep -E "^test |test result|panicked" $OUT/tests-cuda-f32.log | tail -16
echo "== cuda tests bf16"; (time STEERMOE_TEST_PRECISION=bf16 timeout 200 /tmp/cuda_c.bin --ignored --test-threads 1 2>&1) > $OUT/tests-cuda-bf16.log 2>&1; grep -E "test result|panicked|FAILED" $OUT/tests-cuda-bf16.log | tail -8
busy() { python3 -c "import sys; v=[int(x) for x in open(sys.argv[1]) if x.strip().isdigit()]; w=[x for x in v if x>0]; print('nvidia-smi utilization.gpu: %d samples, %d non-zero, mean of non-zero %.1f%%' % (len(v), len(w), sum(w)/max(1,len(w))))" $1; }
for b in gpu_b2 gpu_c gpu_b2 gpu_c; do
  echo "== generate $b"
  nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits -lms 100 > $OUT/util.$b.txt & smi=$!
  timeout 150 /tmp/$b.bin --backend cuda --precision bf16 --what generate 2>>$OUT/stderr.$b | tee -a $OUT/generate.$b.jsonl | cut -c1-300
  kill $smi; busy $OUT/util.$b.txt
done
for b in gpu_b2 gpu_c; do
  echo "== train $b"; timeout 150 /tmp/$b.bin --backend cuda --precision bf16 --what train 2>>$OUT/stderr.$b | tee -a $OUT/train.$b.jsonl | cut -c1-900
done
echo "== table"
OUTDIR=$OUT/gpu GPU_BENCH=/tmp/gpu_c.bin HF_ANCHOR=.dev/c3/hf_anchor.py SKIP=analysis,gemm FIGURE_TIMEOUT=200 benches/gpu.sh 2>&1 | cut -c1-700
