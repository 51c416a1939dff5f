#!/usr/bin/env bash
# Serve throughput against generate's (issue 40) in one call on one NVIDIA GPU, at the
# OLMoE-1B-7B shape with random bf16 weights: benches/gpu.rs's `generate` figure (batch 16,
# 64-token prompts, 128 new tokens, greedy, no stop token) saves its random model in Hub layout;
# `steermoe serve` then serves that model (--max-batch 16) and benches/serve_load.py sends rounds
# of 16 concurrent completions of 64-token prompts, 128 tokens each (`ignore_eos`). One JSON line
# per figure on stdout and in $OUT/serve.jsonl.
#
#   STEERMOE=<steermoe built --features cuda> GPU_BENCH=<benches/gpu.rs binary> [ROUNDS=4]
#   [READ_EVERY='8 16': a server for each --read-every, one after the other] [MODEL_DIR=/tmp/...] benches/serve.sh
set -uo pipefail
cd "$(dirname "$0")/.."
STEERMOE=${STEERMOE:?the steermoe binary}
GPU_BENCH=${GPU_BENCH:?the benches/gpu.rs binary}
OUT=${OUT:-$(mktemp -d)}
MODEL=${MODEL_DIR:-/tmp/olmoe-1b-7b-random}
mkdir -p "$OUT"
LOG=$OUT/serve.jsonl
: > "$LOG"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
  | python3 -c 'import json,sys; n,m,d=[x.strip() for x in sys.stdin.read().split(",")]; print(json.dumps({"what":"device","gpu":n,"memory":m,"driver":d}))' | tee -a "$LOG"

timeout "${FIGURE_TIMEOUT:-300}" "$GPU_BENCH" --backend cuda --precision bf16 --what generate \
  --save-model "$MODEL" 2> "$OUT/stderr.generate" | tee -a "$LOG"
cp models/olmoe-organism/tokenizer.json models/olmoe-organism/tokenizer_config.json "$MODEL/"

for every in ${READ_EVERY:-8}; do
  "$STEERMOE" serve --model "$MODEL" --backend cuda --precision bf16 --max-batch 16 --port 0 \
    --read-every "$every" > "$OUT/serve-$every.log" 2>&1 &
  pid=$!
  for _ in $(seq 600); do grep -q 'http://' "$OUT/serve-$every.log" && break; kill -0 $pid 2>/dev/null || break; sleep 0.5; done
  url=$(grep -o 'http://[0-9.:]*/v1' "$OUT/serve-$every.log")
  if [ -n "$url" ]; then
    timeout "${FIGURE_TIMEOUT:-300}" python3 benches/serve_load.py "$url" "$(basename "$MODEL")" \
      --concurrency 16 --prompt-tokens 64 --max-tokens 128 --rounds "${ROUNDS:-4}" \
      | sed "s/^{/{\"read_every\": $every, /" | tee -a "$LOG"
  else
    echo "the server did not start" >&2; tail -20 "$OUT/serve-$every.log" >&2
  fi
  kill -TERM $pid 2>/dev/null; wait $pid 2>/dev/null
done
