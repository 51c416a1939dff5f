#!/usr/bin/env bash
# Device call 4 (issue 17), the commit's binaries: call 2's (GEMM tasks queued without waiting,
# the KV cache written in place, RoPE without a concatenation, attention's products through
# cuBLAS) plus attention in full float32 for f32, KV-cache buffers that double when full, and
# the router back on burn's matmul (call 3's channel patch dropped). CUDA tests (f32, bf16), then
# the one-call table (benches/gpu.sh: steermoe's train step and generation, transformers eager
# and grouped_mm).
# Binaries (release, --features cuda,profile, stripped, xz): .dev/c4/*.xz;
# .dev/c4/fixtures.tar.xz = ../shared/fixtures/olmoe-tiny; .dev/c4/hf_anchor.py =
# ../shared/tools/hf_anchor.py.
set -u
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}
for b in gpu_d cuda_d; do xz -dc .dev/c4/$b.xz > /tmp/$b.bin; chmod +x /tmp/$b.bin; done
rm -rf ../shared/fixtures; mkdir -p ../shared; tar -C ../shared -xf .dev/c4/fixtures.tar.xz
echo "== cuda tests f32"; (time timeout 150 /tmp/cuda_d.bin --ignored --test-threads 1 2>&1) > $OUT/tests-cuda-f32.log 2>&1; grep -E "^test |test result|panicked" $OUT/tests-cuda-f32.log | tail -16
echo "== cuda tests bf16"; (time STEERMOE_TEST_PRECISION=bf16 timeout 110 /tmp/cuda_d.bin --ignored --test-threads 1 2>&1) > $OUT/tests-cuda-bf16.log 2>&1; grep -E "test result|panicked|FAILED" $OUT/tests-cuda-bf16.log | tail -8
echo "== table"
OUTDIR=$OUT/gpu GPU_BENCH=/tmp/gpu_d.bin HF_ANCHOR=.dev/c4/hf_anchor.py SKIP=check,analysis,gemm FIGURE_TIMEOUT=150 benches/gpu.sh 2>&1 | cut -c1-700
