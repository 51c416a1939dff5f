#!/usr/bin/env bash
# Issue 19 on a machine with two NVIDIA GPUs (the device tool's `nvidia-h200-x2`), in one call:
# the organism's full split trained on one device and on two, the two final models compared
# tensor by tensor (benches/compare_models.py; the one-device run against the base model too, for
# the size of the training update itself), both evaluation tables, and each run's training
# tokens/s from its metrics.jsonl; then issue 19's speed-up at the OLMoE-1B-7B shape:
# `benches/gpu.rs --what learner` (steermoe train's own path on random bf16 weights, 16 x 512 and
# 32 x 512, 50 trainable experts) on one device and on two.
#
#   STEERMOE=path/to/steermoe GPU_BENCH=path/to/gpu-bench OUT=out benches/ddp.sh
#
# STEERMOE is a binary built with `cargo build --release --no-default-features --features cuda,ddp`,
# GPU_BENCH the gpu bench of the same build (`cargo bench --no-run --no-default-features --features
# cuda,ddp --bench gpu` prints its path). The organism's data is read where
# configs/organism-cuda.toml says. NCCL: cudarc loads `libnccl.so`;
# PyTorch's pip package ships `libnccl.so.2`, so a folder with a `libnccl.so` link to it goes first
# on LD_LIBRARY_PATH (printed). NVLink multicast stays off (NCCL_NVLS_ENABLE=0).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0
STEERMOE=${STEERMOE:?set STEERMOE to a steermoe binary built with --features cuda,ddp}
GPU_BENCH=${GPU_BENCH:?set GPU_BENCH to the benches/gpu.rs binary of the same build}
nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader | tee "$OUT/device.txt"

# NCCL: the first libnccl.so.2 in Python's package folders (PyTorch's `nvidia-nccl` wheel), or the
# system's.
sites=$(python3 -c 'import site, sys; print(" ".join(site.getsitepackages() + [sys.prefix]))' 2>/dev/null)
nccl=$(find $sites /usr/lib /usr/local -name 'libnccl.so.2' 2>/dev/null | head -1)
if [ -n "$nccl" ]; then
  mkdir -p /tmp/nccl && ln -sf "$nccl" /tmp/nccl/libnccl.so
  export LD_LIBRARY_PATH=/tmp/nccl:$LD_LIBRARY_PATH
  echo "nccl: /tmp/nccl/libnccl.so -> $nccl" | tee -a "$OUT/device.txt"
else
  echo "nccl: no libnccl.so.2 found; relying on a libnccl.so on the library path" | tee -a "$OUT/device.txt"
fi

train() { # name, devices
  local name=$1 devices=$2
  rm -rf "runs/ddp-$name"
  echo "== $name: --devices $devices" | tee -a "$OUT/runs.txt"
  { time timeout "${RUN_TIMEOUT:-400}" "$STEERMOE" --no-tui run --config configs/organism-cuda.toml \
      --out "runs/ddp-$name" --devices "$devices"; } > "$OUT/$name.txt" 2>&1
  echo "rc=$?" | tee -a "$OUT/runs.txt"
  tail -9 "$OUT/$name.txt" | tee -a "$OUT/runs.txt"
  [ -f "runs/ddp-$name/metrics.jsonl" ] && cp "runs/ddp-$name/metrics.jsonl" "$OUT/$name.metrics.jsonl"
  python3 - "runs/ddp-$name/metrics.jsonl" "$name" <<'PY' | tee -a "$OUT/runs.txt"
import json, statistics, sys
try:
    rows = [json.loads(l) for l in open(sys.argv[1]) if '"tokens_per_s"' in l]
except FileNotFoundError:
    rows = []
tps = [r["tokens_per_s"] for r in rows[2:]] or [r["tokens_per_s"] for r in rows]
print(json.dumps({"what": "train_tokens_per_s", "run": sys.argv[2], "steps": len(rows),
                  "median_after_2": statistics.median(tps) if tps else None}))
PY
}
train one 0
# The commit the binary was built from (the run's provenance), not this checkout's.
python3 -c 'import json; print("binary built from", json.load(open("runs/ddp-one/provenance.json"))["git_revision"])' 2>/dev/null | tee -a "$OUT/device.txt"
train two 0,1
echo "== update of one device's training (base vs one)"
python3 benches/compare_models.py models/olmoe-organism runs/ddp-one/final_model > "$OUT/compare.base-one.jsonl"; tail -1 "$OUT/compare.base-one.jsonl"
echo "== two devices against one"
python3 benches/compare_models.py runs/ddp-one/final_model runs/ddp-two/final_model > "$OUT/compare.one-two.jsonl"; echo "rc=$?"
tail -1 "$OUT/compare.one-two.jsonl"

echo "== the OLMoE-1B-7B shape: one device, two devices (benches/gpu.rs --what learner)"
for batch in 16 32; do
  for devices in 0 0,1; do
    name="learner.b$batch.d${devices/,/}"
    timeout "${FIGURE_TIMEOUT:-200}" "$GPU_BENCH" --backend cuda --what learner --devices "$devices" --batch "$batch" \
      --steps 12 --warmup-steps 4 > "$OUT/$name.jsonl" 2> "$OUT/$name.err"
    echo "$name rc=$?"; tail -1 "$OUT/$name.jsonl" | cut -c1-600
  done
done
