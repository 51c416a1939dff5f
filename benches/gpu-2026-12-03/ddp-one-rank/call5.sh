#!/usr/bin/env bash
# Device call 5 of 2026-12-03: tests/cuda_ddp.rs at the commit that adds many_steps_* (built
# --release --no-default-features --features cuda,ddp, debug info stripped but symbols kept so
# that a panic's backtrace names functions; xz, in .dev/r22/). First the equality check once
# (its code as at 73611ac), then the two 120-step tests in turn, for 200 s with this project's
# kernels and cuBLAS GEMMs on and 200 s with both off (STEERMOE_CUBE_KERNELS=0 STEERMOE_CUBLAS=0),
# counting runs that fail and how ('Should have handle for tensor' is burn-fusion 0.21's lost
# handle). Logs: equality.log, on.log, off.log; summary.txt has a line per run.
set -u
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0 RUST_BACKTRACE=1
xz -dc .dev/r22/cuda_ddp.xz > /tmp/cuda_ddp; chmod +x /tmp/cuda_ddp
rm -rf ../shared/fixtures; mkdir -p ../shared; tar -C ../shared -xf .dev/r21/fixtures.tar.xz
sites=$(python3 -c 'import site, sys; print(" ".join(site.getsitepackages() + [sys.prefix]))' 2>/dev/null)
nccl=$(find $sites /usr/lib /usr/local -name 'libnccl.so.2' 2>/dev/null | head -1)
if [ -n "$nccl" ]; then mkdir -p /tmp/nccl && ln -sf "$nccl" /tmp/nccl/libnccl.so; export LD_LIBRARY_PATH=/tmp/nccl:$LD_LIBRARY_PATH; fi
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/device.txt
timeout 120 /tmp/cuda_ddp --ignored --nocapture --exact one_rank_through_ddp_trains_as_one_device > $OUT/equality.log 2>&1
echo "equality: $(grep -oE 'test result: [a-zA-Z]+' $OUT/equality.log | tail -1)" | tee -a $OUT/summary.txt
phase() { # name, seconds, env...
  local name=$1 secs=$2; shift 2
  local end=$(( $(date +%s) + secs )) i=0
  while [ $(date +%s) -lt $end ]; do
    i=$((i+1))
    for t in many_steps_through_ddp many_steps_on_one_device; do
      echo "=== $name run $i $t" >> $OUT/$name.log
      local s=$(date +%s.%N)
      env "$@" timeout 90 /tmp/cuda_ddp --ignored --nocapture --exact $t > /tmp/run.log 2>&1; local rc=$?
      cat /tmp/run.log >> $OUT/$name.log
      echo "$name run $i $t: rc $rc, $(grep -oE 'test result: [a-zA-Z]+' /tmp/run.log | tail -1), $(grep -c 'Should have handle' /tmp/run.log) lost-handle panics, $(echo "$(date +%s.%N) - $s" | bc | cut -c1-5) s" | tee -a $OUT/summary.txt
    done
  done
}
phase on 200 STEERMOE_CUBE_KERNELS=1
phase off 200 STEERMOE_CUBE_KERNELS=0 STEERMOE_CUBLAS=0
