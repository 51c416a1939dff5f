#!/usr/bin/env bash
# Device call 7 of 2026-12-03: call 6's two builds (a: 45ce9e5, training as before; b: a116d2d,
# each window waits for the checkpointer threads to take the previous window's records in), the
# same test (one device, 120 steps, a checkpoint every 5 steps), but eight processes at once for
# 300 s — four looping a, four looping b — for more runs than call 6's 17 a build, in which the
# lost handle stopped only one. summary.txt: a line a run, with its worker.
set -u
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0 RUST_BACKTRACE=1
for v in a b; do xz -dc .dev/r22/cuda_ddp_$v.xz > /tmp/cuda_ddp_$v; chmod +x /tmp/cuda_ddp_$v; done
rm -rf ../shared/fixtures; mkdir -p ../shared; tar -C ../shared -xf .dev/r21/fixtures.tar.xz
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/device.txt
end=$(( $(date +%s) + 300 ))
worker() { # build, worker number
  local v=$1 w=$2 i=0
  while [ $(date +%s) -lt $end ]; do
    i=$((i+1))
    timeout 120 /tmp/cuda_ddp_$v --ignored --nocapture --exact many_steps_on_one_device_checkpointing_every_5_steps > /tmp/run_$v$w.log 2>&1; local rc=$?
    if [ $rc -ne 0 ]; then { echo "=== $v worker $w run $i"; cat /tmp/run_$v$w.log; } >> $OUT/failed_$v.log; fi
    echo "$v worker $w run $i: rc $rc, $(grep -oE 'test result: [a-zA-Z]+' /tmp/run_$v$w.log | tail -1), $(grep -c 'Should have handle' /tmp/run_$v$w.log) lost-handle panics" >> $OUT/summary.txt
  done
}
for w in 1 2 3 4; do worker a $w & worker b $w & done
wait
for v in a b; do echo "$v: $(grep -c "^$v " $OUT/summary.txt) runs, $(grep "^$v " $OUT/summary.txt | grep -vc 'rc 0,') failed, $(grep "^$v " $OUT/summary.txt | grep -c ' [1-9][0-9]* lost-handle') with a lost handle"; done | tee $OUT/totals.txt
