#!/usr/bin/env bash
# Device call 1 (issue 17, the routers as one kernel each): gpu_a = the evening round's call-1
# bench (fc31460 + inline-handle/change.patch, run in channel mode: upstream's path), gpu_b = this
# round's code (src/cube/: the routers' softmax, top-k, weights and dense weights as one cubecl
# kernel in inference, the top-k's indices as one kernel under autodiff). CUDA tests (f32, bf16;
# the new case compares the kernels with burn's ops), generation alternating a, b, three times,
# the train step of each, and cubecl's kernel profile of a 32-token generation with gpu_b.
# Binaries (release, --features cuda,profile, stripped, xz): .dev/r1/;
# .dev/r1/fixtures.tar.xz = ../shared/fixtures/olmoe-tiny.
set -u
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}
for b in gpu_a gpu_b cuda_b; do xz -dc .dev/r1/$b.xz > /tmp/$b.bin; chmod +x /tmp/$b.bin; done
rm -rf ../shared/fixtures; mkdir -p ../shared; tar -C ../shared -xf .dev/r1/fixtures.tar.xz
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
echo "== cuda tests f32"; (time timeout 200 /tmp/cuda_b.bin --ignored --test-threads 1 2>&1) > $OUT/tests-cuda-f32.log 2>&1; grep -E "^test |test result|panicked" $OUT/tests-cuda-f32.log | tail -18
echo "== cuda tests bf16"; (time STEERMOE_TEST_PRECISION=bf16 timeout 150 /tmp/cuda_b.bin --ignored --test-threads 1 2>&1) > $OUT/tests-cuda-bf16.log 2>&1; grep -E "test result|panicked|FAILED" $OUT/tests-cuda-bf16.log | tail -8
for b in gpu_a gpu_b gpu_a gpu_b gpu_a gpu_b; do
  echo "== generate $b"
  timeout 100 /tmp/$b.bin --backend cuda --precision bf16 --what generate 2>>$OUT/stderr.$b | tee -a $OUT/generate.$b.jsonl | grep -o '"new_tokens_per_s":[0-9.]*,"prompt":64,"run":"[a-z]*"'
done
for b in gpu_a gpu_b; do
  echo "== train $b"; timeout 120 /tmp/$b.bin --backend cuda --precision bf16 --what train 2>>$OUT/stderr.$b | tee -a $OUT/train.$b.jsonl | grep -o '"median_s":[0-9.]*\|"tokens_per_s":[0-9.]*' | tail -2
done
echo "== kernel profile of generation (gpu_b)"
CUBECL_DEBUG_OPTION=profile CUBECL_DEBUG_LOG=$OUT/genprof.txt timeout 120 /tmp/gpu_b.bin --backend cuda --precision bf16 --what generate --new-tokens 32 > $OUT/genprof.jsonl 2>$OUT/stderr.genprof
python3 benches/profile_summary.py $OUT/genprof.txt --table 2 --sort launches --top 30 > $OUT/genprof.summary.txt
python3 -c 'import json,sys; r=json.loads(open(sys.argv[1]).readline()); print("launches", r["launches"]); [print(k["launches"], k["name"][:70]) for k in r["top_kernels"]]' $OUT/genprof.summary.txt
gzip -f $OUT/genprof.txt
