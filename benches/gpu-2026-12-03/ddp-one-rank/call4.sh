#!/usr/bin/env bash
# Device call 4 of 2026-12-03: the same binary as call 3 (tests/cuda_ddp.rs at f104dbe, built
# --release --no-default-features --features cuda,ddp, stripped, xz, in .dev/r21/), run ten times
# in one call for a larger count of how often one rank through DDP, and a second one-device run
# (the control), differ from the first one-device run. All ten logs go into one file.
set -u
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0
xz -dc .dev/r21/cuda_ddp.xz > /tmp/cuda_ddp; chmod +x /tmp/cuda_ddp
rm -rf ../shared/fixtures; mkdir -p ../shared; tar -C ../shared -xf .dev/r21/fixtures.tar.xz
sites=$(python3 -c 'import site, sys; print(" ".join(site.getsitepackages() + [sys.prefix]))' 2>/dev/null)
nccl=$(find $sites /usr/lib /usr/local -name 'libnccl.so.2' 2>/dev/null | head -1)
if [ -n "$nccl" ]; then mkdir -p /tmp/nccl && ln -sf "$nccl" /tmp/nccl/libnccl.so; export LD_LIBRARY_PATH=/tmp/nccl:$LD_LIBRARY_PATH; fi
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/device.txt
for i in $(seq 1 10); do
  echo "=== run $i" >> $OUT/cuda_ddp.log
  timeout 120 /tmp/cuda_ddp --ignored --nocapture --test-threads 1 >> $OUT/cuda_ddp.log 2>&1
  echo "run $i: $(grep -oE 'test result: [a-zA-Z]+' $OUT/cuda_ddp.log | tail -1); tensors with differing elements: DDP $(grep 'DDP vs one device' $OUT/cuda_ddp.log | tail -12 | grep -vc ' 0 of '), control $(grep 'again vs one device' $OUT/cuda_ddp.log | tail -12 | grep -vc ' 0 of ')"
done
