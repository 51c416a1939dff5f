#!/usr/bin/env bash
# Device call 3 (issue 17, the decode loop): this commit's binaries (call 1's gpu_new/cuda_new
# plus the stacked experts' gate and up projections as one GEMM in dense decoding). CUDA tests
# (f32, bf16: the forward argmax check now bounded by the measured logits error), then the
# one-call table (benches/gpu.sh: steermoe's train step and generation, transformers eager and
# grouped_mm, peak memory).
# Binaries (release, --features cuda,profile, stripped, xz): .dev/c3/*.xz;
# .dev/c3/fixtures.tar.xz = ../shared/fixtures/olmoe-tiny; .dev/c3/hf_anchor.py =
# ../shared/tools/hf_anchor.py.
set -u
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}
for b in gpu_final cuda_final; do xz -dc .dev/c3/$b.xz > /tmp/$b.bin; chmod +x /tmp/$b.bin; done
rm -rf ../shared/fixtures; mkdir -p ../shared; tar -C ../shared -xf .dev/c3/fixtures.tar.xz
echo "== cuda tests f32"; (time timeout 200 /tmp/cuda_final.bin --ignored --test-threads 1 2>&1) > $OUT/tests-cuda-f32.log 2>&1; grep -E "^test |test result|panicked" $OUT/tests-cuda-f32.log | tail -16
echo "== cuda tests bf16"; (time STEERMOE_TEST_PRECISION=bf16 timeout 150 /tmp/cuda_final.bin --ignored --test-threads 1 2>&1) > $OUT/tests-cuda-bf16.log 2>&1; grep -E "test result|panicked|FAILED" $OUT/tests-cuda-bf16.log | tail -8
echo "== table"
OUTDIR=$OUT/gpu GPU_BENCH=/tmp/gpu_final.bin HF_ANCHOR=.dev/c3/hf_anchor.py SKIP=check,analysis,gemm FIGURE_TIMEOUT=150 benches/gpu.sh 2>&1 | cut -c1-700
