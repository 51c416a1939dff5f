#!/usr/bin/env bash
# Device call 6 of 2026-12-03: is burn-train's checkpointer the way into burn-fusion 0.21's lost
# handle, and does waiting for it stop it? Two builds of tests/cuda_ddp.rs (--release
# --no-default-features --features cuda,ddp, debug info stripped, symbols kept; xz in .dev/r22/):
#   a: 45ce9e5, training as before;
#   b: a116d2d, each window waits until the checkpointer threads have taken the previous
#      window's records in (checkpoint::Taken).
# In turn for 360 s: a with checkpoints every 5 steps (24 a run), a with none, b with
# checkpoints every 5 steps; one device, 120 steps each. summary.txt: a line a run.
set -u
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0 RUST_BACKTRACE=1
for v in a b; do xz -dc .dev/r22/cuda_ddp_$v.xz > /tmp/cuda_ddp_$v; chmod +x /tmp/cuda_ddp_$v; done
rm -rf ../shared/fixtures; mkdir -p ../shared; tar -C ../shared -xf .dev/r21/fixtures.tar.xz
sites=$(python3 -c 'import site, sys; print(" ".join(site.getsitepackages() + [sys.prefix]))' 2>/dev/null)
nccl=$(find $sites /usr/lib /usr/local -name 'libnccl.so.2' 2>/dev/null | head -1)
if [ -n "$nccl" ]; then mkdir -p /tmp/nccl && ln -sf "$nccl" /tmp/nccl/libnccl.so; export LD_LIBRARY_PATH=/tmp/nccl:$LD_LIBRARY_PATH; fi
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/device.txt
end=$(( $(date +%s) + 360 )); i=0
while [ $(date +%s) -lt $end ]; do
  i=$((i+1))
  for run in "a many_steps_on_one_device_checkpointing_every_5_steps" "a many_steps_on_one_device_without_checkpoints" "b many_steps_on_one_device_checkpointing_every_5_steps"; do
    set -- $run
    s=$(date +%s%N)
    timeout 120 /tmp/cuda_ddp_$1 --ignored --nocapture --exact $2 > /tmp/run.log 2>&1; rc=$?
    ms=$(( ($(date +%s%N) - s) / 1000000 ))
    { echo "=== run $i $1 $2"; cat /tmp/run.log; } >> $OUT/$1.log
    echo "run $i $1 $2: rc $rc, $(grep -oE 'test result: [a-zA-Z]+' /tmp/run.log | tail -1), $(grep -c 'Should have handle' /tmp/run.log) lost-handle panics, $ms ms" | tee -a $OUT/summary.txt
  done
done
