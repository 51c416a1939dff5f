#!/usr/bin/env bash
# Device call 8 of 2026-12-03 (what was left of the session's device time): build b of calls 6-7
# (a116d2d, the wait for the checkpointer threads) through DDP with one rank: the equality check
# once, then four processes at once looping many_steps_through_ddp (120 steps, a checkpoint every
# 40) for 60 s. summary.txt: a line a run.
set -u
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0 RUST_BACKTRACE=1
xz -dc .dev/r22/cuda_ddp_b.xz > /tmp/cuda_ddp_b; chmod +x /tmp/cuda_ddp_b
rm -rf ../shared/fixtures; mkdir -p ../shared; tar -C ../shared -xf .dev/r21/fixtures.tar.xz
sites=$(python3 -c 'import site, sys; print(" ".join(site.getsitepackages() + [sys.prefix]))' 2>/dev/null)
nccl=$(find $sites /usr/lib /usr/local -name 'libnccl.so.2' 2>/dev/null | head -1)
if [ -n "$nccl" ]; then mkdir -p /tmp/nccl && ln -sf "$nccl" /tmp/nccl/libnccl.so; export LD_LIBRARY_PATH=/tmp/nccl:$LD_LIBRARY_PATH; fi
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/device.txt
timeout 60 /tmp/cuda_ddp_b --ignored --nocapture --exact one_rank_through_ddp_trains_as_one_device > $OUT/equality.log 2>&1
echo "equality: $(grep -oE 'test result: [a-zA-Z]+' $OUT/equality.log | tail -1)" | tee -a $OUT/summary.txt
end=$(( $(date +%s) + 60 ))
worker() {
  local w=$1 i=0
  while [ $(date +%s) -lt $end ]; do
    i=$((i+1))
    timeout 60 /tmp/cuda_ddp_b --ignored --nocapture --exact many_steps_through_ddp > /tmp/run_$w.log 2>&1; local rc=$?
    if [ $rc -ne 0 ]; then { echo "=== worker $w run $i"; cat /tmp/run_$w.log; } >> $OUT/failed.log; fi
    echo "worker $w run $i: rc $rc, $(grep -oE 'test result: [a-zA-Z]+' /tmp/run_$w.log | tail -1), $(grep -c 'Should have handle' /tmp/run_$w.log) lost-handle panics" >> $OUT/summary.txt
  done
}
for w in 1 2 3 4; do worker $w & done
wait
cat $OUT/summary.txt
