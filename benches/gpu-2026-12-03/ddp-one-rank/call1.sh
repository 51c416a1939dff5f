#!/usr/bin/env bash
# Device call 1 of 2026-12-03 (one H200; no two-GPU machine lent). Binaries (release, stripped,
# xz) in .dev/r20c/: cuda.plain = tests/cuda.rs built --no-default-features --features cuda,profile
# from f7ac1c1's source (the grid-helper review, not yet run on CUDA); cuda_ddp.ddp and gpu.ddp =
# tests/cuda_ddp.rs and benches/gpu.rs built --no-default-features --features cuda,ddp from
# 62eade9. fixtures.tar.xz = ../shared/fixtures/olmoe-tiny.
#  1. tests/cuda.rs in float32 and bf16 (f7ac1c1's kernels);
#  2. tests/cuda_ddp.rs: one rank through burn's DDP strategy (NCCL) trains as one device;
#  3. at the OLMoE-1B-7B shape (bf16, 16 x 512, 50 trainable experts): the hand-loop train step,
#     then `--what learner` on device 0 plainly and through DDP with one rank.
set -u
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0
for b in cuda.plain cuda_ddp.ddp gpu.ddp; do xz -dc .dev/r20c/$b.xz > /tmp/$b; chmod +x /tmp/$b; done
rm -rf ../shared/fixtures; mkdir -p ../shared; tar -C ../shared -xf .dev/r20c/fixtures.tar.xz
nvidia-smi --query-gpu=index,name,driver_version --format=csv,noheader | tee $OUT/device.txt
# NCCL as benches/ddp.sh finds it: PyTorch's libnccl.so.2 linked as libnccl.so.
sites=$(python3 -c 'import site, sys; print(" ".join(site.getsitepackages() + [sys.prefix]))' 2>/dev/null)
nccl=$(find $sites /usr/lib /usr/local -name 'libnccl.so.2' 2>/dev/null | head -1)
if [ -n "$nccl" ]; then mkdir -p /tmp/nccl && ln -sf "$nccl" /tmp/nccl/libnccl.so; export LD_LIBRARY_PATH=/tmp/nccl:$LD_LIBRARY_PATH; fi
echo "nccl: ${nccl:-none found}" | tee -a $OUT/device.txt
echo "== cuda tests f32"; (echo "## f32"; time timeout 150 /tmp/cuda.plain --ignored --test-threads 1 2>&1) >> $OUT/tests.log 2>&1; grep -E "test result|panicked|FAILED" $OUT/tests.log | tail -8
echo "== cuda tests bf16"; (echo "## bf16"; time STEERMOE_TEST_PRECISION=bf16 timeout 120 /tmp/cuda.plain --ignored --test-threads 1 2>&1) >> $OUT/tests.log 2>&1; sed -n '/^## bf16/,$p' $OUT/tests.log | grep -E "test result|panicked|FAILED" | tail -8
echo "== cuda_ddp"; (time timeout 120 /tmp/cuda_ddp.ddp --ignored --nocapture --test-threads 1 2>&1) > $OUT/cuda_ddp.log 2>&1; grep -E "test result|panicked|FAILED|update|nccl|NCCL" $OUT/cuda_ddp.log | tail -20
for spec in "train::" "learner::" "learner:one-rank:--ddp-one-rank"; do
  IFS=: read what name flag <<< "$spec"
  echo "== $what $name"
  timeout 150 /tmp/gpu.ddp --backend cuda --what $what --steps 12 --warmup-steps 4 $flag > $OUT/$what$name.jsonl 2> $OUT/$what$name.err; echo "rc=$?"
  tail -3 $OUT/$what$name.err; tail -1 $OUT/$what$name.jsonl | cut -c1-900
done
