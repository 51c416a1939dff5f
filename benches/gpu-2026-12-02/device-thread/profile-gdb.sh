#!/usr/bin/env bash
# .dev/gpu_sym.xz: benches/gpu.rs built from e25034b's tree, unstripped (symbols for the backtraces).
# Poor man's profiler: cuda-gdb backtraces of the running bench, generation then training.
set -u
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}
GDB=/usr/local/cuda-13.0/bin/cuda-gdb
xz -dc .dev/gpu_sym.xz > /tmp/gpu && chmod +x /tmp/gpu
sample() { # name start_delay count
  local pid=$1 name=$2 n=$3
  for i in $(seq 1 $n); do
    timeout 20 $GDB -p $pid -batch -nx -ex "set pagination off" -ex "thread apply all bt 40" >> $OUT/bt.$name.txt 2>/dev/null
    echo "=== SAMPLE END" >> $OUT/bt.$name.txt
    sleep 0.3
  done
}
/tmp/gpu --backend cuda --precision bf16 --what generate --new-tokens 384 > $OUT/gen.jsonl 2> $OUT/gen.err &
P=$!; sleep 40; sample $P gen 25; wait $P
/tmp/gpu --backend cuda --precision bf16 --what train --steps 40 --warmup-steps 2 > $OUT/train.jsonl 2> $OUT/train.err &
P=$!; sleep 45; sample $P train 25; kill $P; wait $P
ls -la $OUT; tail -3 $OUT/gen.jsonl $OUT/train.jsonl
