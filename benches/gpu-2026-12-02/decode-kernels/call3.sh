#!/usr/bin/env bash
# Device call 3 of the session (issue 17): gpu_f = rms-norm-kernel call 2's bench (814ff01's code
# but for the chosen-stack change); gpu_g = this round's code: for inference the dense experts'
# SwiGLU times routing weight and RoPE as one cubecl kernel each (src/cube/swiglu.rs, rope.rs),
# the decode-attention output reshaped without a copy, forward_cached_last without the chosen
# experts' stack; for training the loss's LM head through cuBLAS (burn's GEMM took ~45 ms of
# the step, rms-norm-kernel/call2/trainprof.summary.txt). The CUDA tests in float32 and bf16
# with gpu_g's code; if they pass, generation alternating f, g, twice; the train step f, g, twice;
# cubecl's kernel profile of a 32-token generation with gpu_g. Few files return: the tests' logs
# in tests.log, every JSON line in runs.jsonl (after a `## binary what` line).
# Binaries (release, --features cuda,profile, stripped, xz): .dev/r7/;
# .dev/r7/fixtures.tar.xz = ../shared/fixtures/olmoe-tiny.
set -u
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}
for b in gpu_f gpu_g cuda_g; do xz -dc .dev/r7/$b.xz > /tmp/$b.bin; chmod +x /tmp/$b.bin; done
rm -rf ../shared/fixtures; mkdir -p ../shared; tar -C ../shared -xf .dev/r7/fixtures.tar.xz
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
echo "== cuda tests f32"; (echo "## f32"; time timeout 150 /tmp/cuda_g.bin --ignored --test-threads 1 2>&1) >> $OUT/tests.log 2>&1; grep -E "^test |test result|panicked" $OUT/tests.log | tail -24
echo "== cuda tests bf16"; (echo "## bf16"; time STEERMOE_TEST_PRECISION=bf16 timeout 120 /tmp/cuda_g.bin --ignored --test-threads 1 2>&1) >> $OUT/tests.log 2>&1; sed -n '/^## bf16/,$p' $OUT/tests.log | grep -E "test result|panicked|FAILED" | tail -8
[ "$(grep -c 'test result: ok' $OUT/tests.log)" = 2 ] || { echo "tests failed: no benchmarks"; exit 1; }
for b in gpu_f gpu_g gpu_f gpu_g; do
  echo "== generate $b"; echo "## $b generate" >> $OUT/runs.jsonl
  timeout 60 /tmp/$b.bin --backend cuda --precision bf16 --what generate 2>>$OUT/stderr.txt | tee -a $OUT/runs.jsonl | grep -o '"new_tokens_per_s":[0-9.]*,"prompt":64,"run":"[a-z]*"'
done
for b in gpu_f gpu_g gpu_f gpu_g; do
  echo "== train $b"; echo "## $b train" >> $OUT/runs.jsonl
  timeout 90 /tmp/$b.bin --backend cuda --precision bf16 --what train 2>>$OUT/stderr.txt | tee -a $OUT/runs.jsonl | grep -o '"median_s":[0-9.]*\|"tokens_per_s":[0-9.]*' | tail -2 | tr '\n' ' '; echo
done
echo "== kernel profile of generation (gpu_g)"; echo "## gpu_g generate profiled" >> $OUT/runs.jsonl
CUBECL_DEBUG_OPTION=profile CUBECL_DEBUG_LOG=$OUT/genprof.txt timeout 120 /tmp/gpu_g.bin --backend cuda --precision bf16 --what generate --new-tokens 32 >> $OUT/runs.jsonl 2>>$OUT/stderr.txt
python3 benches/profile_summary.py $OUT/genprof.txt --table 2 --sort launches --top 30 > $OUT/genprof.summary.txt
python3 -c 'import json,sys; r=json.loads(open(sys.argv[1]).readline()); print("kernel_s", r["kernel_s"], "launches", r["launches"]); [print(k["launches"], round(k["s"],4), k["name"][:70]) for k in r["top_kernels"]]' $OUT/genprof.summary.txt
gzip -f $OUT/genprof.txt
