#!/usr/bin/env bash
# Device call 2 (issue 17, RMSNorm as one kernel). Call 1 ran an earlier version of this script
# with a kernel whose tree reduction halved a comptime value (so the loop did not run as meant):
# 7 CUDA tests failed (call1/tests.log) and nothing was measured; fixed by reading the cube's size
# at run time. gpu_d = the bench at 2131679 (routing-kernel call 5's; 123dcfd after it changed no
# computation); gpu_f = this round's code (src/cube/norm.rs: every RMSNorm one cubecl kernel, a
# cube a row, instead of burn's fused reduction that runs one thread a row; under autodiff too,
# the input's gradient one kernel). The CUDA tests in float32 and bf16 with this round's code
# (the first run after 123dcfd too); if they pass, generation alternating d, f, twice; the train
# step alternating d, f, twice; cubecl's kernel profiles of a 32-token generation and of a train
# step with gpu_f. The call returns few files: the tests' logs are in tests.log, every JSON line
# in runs.jsonl (after a `## binary what` line).
# Binaries (release, --features cuda,profile, stripped, xz): .dev/r6/;
# .dev/r6/fixtures.tar.xz = ../shared/fixtures/olmoe-tiny.
set -u
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}
for b in gpu_d gpu_f cuda_f; do xz -dc .dev/r6/$b.xz > /tmp/$b.bin; chmod +x /tmp/$b.bin; done
rm -rf ../shared/fixtures; mkdir -p ../shared; tar -C ../shared -xf .dev/r6/fixtures.tar.xz
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
echo "== cuda tests f32"; (echo "## f32"; time timeout 150 /tmp/cuda_f.bin --ignored --test-threads 1 2>&1) >> $OUT/tests.log 2>&1; grep -E "^test |test result|panicked" $OUT/tests.log | tail -22
echo "== cuda tests bf16"; (echo "## bf16"; time STEERMOE_TEST_PRECISION=bf16 timeout 120 /tmp/cuda_f.bin --ignored --test-threads 1 2>&1) >> $OUT/tests.log 2>&1; sed -n '/^## bf16/,$p' $OUT/tests.log | grep -E "^test |test result|panicked" | tail -22
[ "$(grep -c 'test result: ok' $OUT/tests.log)" = 2 ] || { echo "tests failed: no benchmarks"; exit 1; }
for b in gpu_d gpu_f gpu_d gpu_f; do
  echo "== generate $b"; echo "## $b generate" >> $OUT/runs.jsonl
  timeout 60 /tmp/$b.bin --backend cuda --precision bf16 --what generate 2>>$OUT/stderr.txt | tee -a $OUT/runs.jsonl | grep -o '"new_tokens_per_s":[0-9.]*,"prompt":64,"run":"[a-z]*"'
done
for b in gpu_d gpu_f gpu_d gpu_f; do
  echo "== train $b"; echo "## $b train" >> $OUT/runs.jsonl
  timeout 90 /tmp/$b.bin --backend cuda --precision bf16 --what train 2>>$OUT/stderr.txt | tee -a $OUT/runs.jsonl | grep -o '"median_s":[0-9.]*\|"tokens_per_s":[0-9.]*' | tail -2 | tr '\n' ' '; echo
done
echo "== kernel profile of generation (gpu_f)"; echo "## gpu_f generate profiled" >> $OUT/runs.jsonl
CUBECL_DEBUG_OPTION=profile CUBECL_DEBUG_LOG=$OUT/genprof.txt timeout 120 /tmp/gpu_f.bin --backend cuda --precision bf16 --what generate --new-tokens 32 >> $OUT/runs.jsonl 2>>$OUT/stderr.txt
python3 benches/profile_summary.py $OUT/genprof.txt --table 2 --sort launches --top 30 > $OUT/genprof.summary.txt
python3 -c 'import json,sys; r=json.loads(open(sys.argv[1]).readline()); print("kernel_s", r["kernel_s"], "launches", r["launches"]); [print(k["launches"], round(k["s"],4), k["name"][:70]) for k in r["top_kernels"]]' $OUT/genprof.summary.txt
gzip -f $OUT/genprof.txt
wall=$(python3 -c "import json; print([json.loads(l) for l in open('$OUT/runs.jsonl') if '\"train_step\"' in l][-1]['step_s'][-1])" 2>/dev/null || echo "")
echo "== kernel profile of train (gpu_f)"; echo "## gpu_f train profiled" >> $OUT/runs.jsonl
CUBECL_DEBUG_OPTION=profile CUBECL_DEBUG_LOG=/tmp/trainprof.txt timeout 150 /tmp/gpu_f.bin --backend cuda --precision bf16 --what train --steps 5 --warmup-steps 4 >> $OUT/runs.jsonl 2>>$OUT/stderr.txt
python3 benches/profile_summary.py /tmp/trainprof.txt ${wall:+--wall-s $wall} --top 30 > $OUT/trainprof.summary.txt
python3 -c 'import json,sys; r=json.loads(open(sys.argv[1]).readline()); print({k: r[k] for k in r if k != "top_kernels"}); [print(k["launches"], round(k["s"],4), k["name"][:70]) for k in r["top_kernels"]]' $OUT/trainprof.summary.txt
