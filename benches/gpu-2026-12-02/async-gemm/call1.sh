#!/usr/bin/env bash
# Device call 1 (issue 17): gpu_a = the bench at fb63e2a (before); gpu_b1 = cuBLAS GEMM
# operations queued on cubecl's device thread without waiting, the KV cache written in place
# into buffers for the whole generation, top-k's constants from one upload. Generation and train
# alternating; nvidia-smi samples the GPU's busy fraction during each generation.
# Binaries (release, --features cuda,profile, debug info stripped, xz): .dev/c1/{gpu_a,gpu_b1}.xz.
set -u
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}
for b in gpu_a gpu_b1; do xz -dc .dev/c1/$b.xz > /tmp/$b.bin; chmod +x /tmp/$b.bin; done
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
busy() { python3 -c "import sys; v=[int(x) for x in open(sys.argv[1]) if x.strip().isdigit()]; w=[x for x in v if x>0]; print('nvidia-smi utilization.gpu: %d samples, %d non-zero, mean of non-zero %.1f%%' % (len(v), len(w), sum(w)/max(1,len(w))))" $1; }
for b in gpu_a gpu_b1 gpu_a gpu_b1; do
  echo "== generate $b"
  nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits -lms 100 > $OUT/util.$b.txt & smi=$!
  timeout 150 /tmp/$b.bin --backend cuda --precision bf16 --what generate 2>>$OUT/stderr.$b | tee -a $OUT/generate.$b.jsonl | cut -c1-300
  kill $smi; busy $OUT/util.$b.txt
done
for b in gpu_a gpu_b1; do
  echo "== train $b"; timeout 150 /tmp/$b.bin --backend cuda --precision bf16 --what train 2>>$OUT/stderr.$b | tee -a $OUT/train.$b.jsonl | cut -c1-900
done
tail -3 $OUT/stderr.gpu_b1
