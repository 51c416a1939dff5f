#!/usr/bin/env bash
# Device call 11 of 2026-12-03: build d (3d67388, the wait right after each checkpoint) on the
# one-device path too, which call 10 did not run: four processes looping
# many_steps_on_one_device_checkpointing_every_5_steps and four looping the equality check, 100 s.
# summary.txt: a line a run; failed_d.log: every failed run's whole output; totals.txt: counts.
set -u
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0 RUST_BACKTRACE=1
xz -dc .dev/r23/cuda_ddp_d.xz > /tmp/cuda_ddp_d; chmod +x /tmp/cuda_ddp_d
rm -rf ../shared/fixtures; mkdir -p ../shared; tar -C ../shared -xf .dev/r21/fixtures.tar.xz
sites=$(python3 -c 'import site, sys; print(" ".join(site.getsitepackages() + [sys.prefix]))' 2>/dev/null)
nccl=$(find $sites /usr/lib /usr/local -name 'libnccl.so.2' 2>/dev/null | head -1)
if [ -n "$nccl" ]; then mkdir -p /tmp/nccl && ln -sf "$nccl" /tmp/nccl/libnccl.so; export LD_LIBRARY_PATH=/tmp/nccl:$LD_LIBRARY_PATH; fi
echo "nccl: $nccl" > $OUT/device.txt
nvidia-smi --query-gpu=name,driver_version --format=csv >> $OUT/device.txt
worker() { # build, test, worker, seconds
  local v=$1 t=$2 w=$3 end=$(( $(date +%s) + $4 )) i=0
  while [ $(date +%s) -lt $end ]; do
    i=$((i+1))
    timeout 120 /tmp/cuda_ddp_$v --ignored --nocapture --exact $t > /tmp/run_$v$w.log 2>&1; local rc=$?
    if [ $rc -ne 0 ]; then { echo "=== $v $t worker $w run $i"; cat /tmp/run_$v$w.log; } >> $OUT/failed_$v.log; fi
    echo "$v $t worker $w run $i: rc $rc, $(grep -oE 'test result: [a-zA-Z]+' /tmp/run_$v$w.log | tail -1), $(grep -c 'Should have handle' /tmp/run_$v$w.log) lost-handle panics" >> $OUT/summary.txt
  done
}
for w in 1 2 3 4; do
  worker d many_steps_on_one_device_checkpointing_every_5_steps $w 100 &
  worker d one_rank_through_ddp_trains_as_one_device $((w + 4)) 100 &
done
wait
for v in "d many_steps" "d one_rank"; do
  echo "$v: $(grep -c "^$v" $OUT/summary.txt) runs, $(grep "^$v" $OUT/summary.txt | grep -vc 'rc 0,') failed, $(grep "^$v" $OUT/summary.txt | grep -c ' [1-9][0-9]* lost-handle') with a lost handle"
done | tee $OUT/totals.txt
