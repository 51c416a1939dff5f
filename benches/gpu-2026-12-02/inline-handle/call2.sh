#!/usr/bin/env bash
# Device call 2 (issue 17, inline device handle): where a decode step's host time goes. A CPU
# profile of every thread (pprof, `--cpu-profile`) of generation, inline (one thread does the
# model's graph, burn's fusion and cubecl's launches) and channel (three threads).
# Binary: call 1's bench (change.patch; release, --features cuda,profile), debug info stripped, symbols
# kept, xz: .dev/c4/gpu_sym.xz.
set -u
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}
xz -dc .dev/c4/gpu_sym.xz > /tmp/gpu.bin; chmod +x /tmp/gpu.bin
for m in inline channel; do
  echo "== generate $m, profiled"
  CUBECL_DEVICE_HANDLE=$m timeout 150 /tmp/gpu.bin --backend cuda --precision bf16 --what generate --cpu-profile $OUT/prof-$m 2>>$OUT/stderr.$m | tee -a $OUT/generate.jsonl | cut -c1-300
  python3 benches/profile_folded.py $OUT/prof-$m/generate.folded --top 40 > $OUT/prof-$m/generate.summary.txt; head -120 $OUT/prof-$m/generate.summary.txt
  gzip -f $OUT/prof-$m/generate.folded
done
