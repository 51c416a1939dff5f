#!/usr/bin/env bash
# Device call (issue 17): the experts' GEMMs as one cublasGemmGroupedBatchedEx call per
# projection against one cuBLAS GEMM per expert (STEERMOE_GROUPED_GEMM=loop), same binary,
# alternating; a CPU profile of every thread (pprof, `--cpu-profile`) of a warm train step and a
# generation; then the CUDA tests in f32 and bf16.
# Binaries (release, --features cuda,profile, xz-compressed, symbols kept): .dev/gpu.xz =
# benches/gpu.rs, .dev/cuda.xz = tests/cuda.rs; .dev/fixtures.tar.xz = ../shared/fixtures/olmoe-tiny.
set -u
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}
xz -dc .dev/gpu.xz > /tmp/gpu.bin; chmod +x /tmp/gpu.bin
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
G="/tmp/gpu.bin --backend cuda --precision bf16"
for mode in loop grouped; do
  echo "== train $mode, profiled"; STEERMOE_GROUPED_GEMM=$mode timeout 150 $G --what train --cpu-profile $OUT/prof-$mode 2>>$OUT/stderr.$mode | tee -a $OUT/train.jsonl | cut -c1-700
  python3 benches/profile_folded.py $OUT/prof-$mode/train.folded --top 30 > $OUT/prof-$mode/train.summary.txt; head -70 $OUT/prof-$mode/train.summary.txt
done
for mode in grouped loop; do
  echo "== train $mode"; STEERMOE_GROUPED_GEMM=$mode timeout 150 $G --what train 2>>$OUT/stderr.$mode | tee -a $OUT/train.jsonl | cut -c1-700
done
echo "== generate, profiled"; timeout 150 $G --what generate --cpu-profile $OUT/prof-grouped 2>>$OUT/stderr.gen | tee -a $OUT/generate.jsonl | cut -c1-300
python3 benches/profile_folded.py $OUT/prof-grouped/generate.folded --top 30 > $OUT/prof-grouped/generate.summary.txt; head -80 $OUT/prof-grouped/generate.summary.txt
if [ -f .dev/cuda.xz ]; then
  xz -dc .dev/cuda.xz > /tmp/cuda.bin; chmod +x /tmp/cuda.bin
  rm -rf ../shared/fixtures; mkdir -p ../shared; tar -C ../shared -xf .dev/fixtures.tar.xz
  echo "== cuda tests f32"; (time timeout 200 /tmp/cuda.bin --ignored --test-threads 1 2>&1) > $OUT/tests-cuda-f32.log 2>&1; tail -4 $OUT/tests-cuda-f32.log
  echo "== cuda tests bf16"; (time STEERMOE_TEST_PRECISION=bf16 timeout 150 /tmp/cuda.bin --ignored --test-threads 1 2>&1) > $OUT/tests-cuda-bf16.log 2>&1; tail -4 $OUT/tests-cuda-bf16.log
fi
