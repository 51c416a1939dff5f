#!/usr/bin/env bash
# Device call 8 of 2026-12-03 (third session of the day): call 7's design through burn's DDP
# strategy with one rank, the path whose gradient all-reduce thread call 7 did not exercise.
# a: 45ce9e5 (training as before the wait), b: f68104c (a116d2d's wait for the checkpointer
# threads), each with the test many_steps_through_ddp_checkpointing_every_5_steps added (120 steps,
# a checkpoint every 5). First b's equality check once, then eight processes at once for 300 s,
# four looping a, four looping b. (An earlier call8.sh, d94da64, was never run and was removed.)
# summary.txt: a line a run, with its build and worker; totals.txt: the counts.
set -u
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0 RUST_BACKTRACE=1
for v in a b; do xz -dc .dev/r23/cuda_ddp_$v.xz > /tmp/cuda_ddp_$v; chmod +x /tmp/cuda_ddp_$v; done
rm -rf ../shared/fixtures; mkdir -p ../shared; tar -C ../shared -xf .dev/r21/fixtures.tar.xz
sites=$(python3 -c 'import site, sys; print(" ".join(site.getsitepackages() + [sys.prefix]))' 2>/dev/null)
nccl=$(find $sites /usr/lib /usr/local -name 'libnccl.so.2' 2>/dev/null | head -1)
if [ -n "$nccl" ]; then mkdir -p /tmp/nccl && ln -sf "$nccl" /tmp/nccl/libnccl.so; export LD_LIBRARY_PATH=/tmp/nccl:$LD_LIBRARY_PATH; fi
echo "nccl: $nccl" > $OUT/device.txt
nvidia-smi --query-gpu=name,driver_version --format=csv >> $OUT/device.txt
timeout 90 /tmp/cuda_ddp_b --ignored --nocapture --exact one_rank_through_ddp_trains_as_one_device > $OUT/equality.log 2>&1
echo "b equality: rc $?, $(grep -oE 'test result: [a-zA-Z]+' $OUT/equality.log | tail -1)" | tee $OUT/totals.txt
end=$(( $(date +%s) + 300 ))
worker() { # build, worker number
  local v=$1 w=$2 i=0
  while [ $(date +%s) -lt $end ]; do
    i=$((i+1))
    timeout 120 /tmp/cuda_ddp_$v --ignored --nocapture --exact many_steps_through_ddp_checkpointing_every_5_steps > /tmp/run_$v$w.log 2>&1; local rc=$?
    if [ $rc -ne 0 ]; then { echo "=== $v worker $w run $i"; cat /tmp/run_$v$w.log; } >> $OUT/failed_$v.log; fi
    echo "$v worker $w run $i: rc $rc, $(grep -oE 'test result: [a-zA-Z]+' /tmp/run_$v$w.log | tail -1), $(grep -c 'Should have handle' /tmp/run_$v$w.log) lost-handle panics" >> $OUT/summary.txt
  done
}
for w in 1 2 3 4; do worker a $w & worker b $w & done
wait
for v in a b; do echo "$v: $(grep -c "^$v " $OUT/summary.txt) runs, $(grep "^$v " $OUT/summary.txt | grep -vc 'rc 0,') failed, $(grep "^$v " $OUT/summary.txt | grep -c ' [1-9][0-9]* lost-handle') with a lost handle"; done | tee -a $OUT/totals.txt
