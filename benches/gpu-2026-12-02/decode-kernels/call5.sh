#!/usr/bin/env bash
# Device call 5 of the session (issue 17): the CUDA tests in float32 and bf16 at 3fdda1c (the
# review's refactor after calls 3 and 4: one macro for the backends' dispatch, one in-cube tree
# sum for both RMSNorm kernels). Its first run (call5/first-run/tests.log) failed one case in both
# precisions: rms_norm_kernel_in_bf16_rounds_as_burn_ops allowed one bf16 step where a one-step
# difference of the normalised value becomes up to two after the product with the weight
# (1.19e-2, 8.97e-3 relative on that run's random inputs); the test now bounds a unit weight by
# one step and a random one by two, and this script ran again (call5/tests.log: 21 of 21 in both). Binary (release, --features cuda,profile, stripped, xz):
# .dev/r9/; .dev/r9/fixtures.tar.xz = ../shared/fixtures/olmoe-tiny.
set -u
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}
xz -dc .dev/r9/cuda_h.xz > /tmp/cuda_h.bin; chmod +x /tmp/cuda_h.bin
rm -rf ../shared/fixtures; mkdir -p ../shared; tar -C ../shared -xf .dev/r9/fixtures.tar.xz
echo "== cuda tests f32"; (echo "## f32"; time timeout 150 /tmp/cuda_h.bin --ignored --test-threads 1 2>&1) >> $OUT/tests.log 2>&1; grep -E "test result|panicked|FAILED" $OUT/tests.log | tail -8
echo "== cuda tests bf16"; (echo "## bf16"; time STEERMOE_TEST_PRECISION=bf16 timeout 120 /tmp/cuda_h.bin --ignored --test-threads 1 2>&1) >> $OUT/tests.log 2>&1; sed -n '/^## bf16/,$p' $OUT/tests.log | grep -E "test result|panicked|FAILED" | tail -8
