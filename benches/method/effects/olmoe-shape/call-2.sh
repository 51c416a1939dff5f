#!/usr/bin/env bash
# Device call 2 of 2026-12-06 (evening), right after call 1 on the same machine (its /tmp/steermoe
# kept), the GPU alone for each figure: issue 40's serve throughput against generate's at the
# OLMoE-1B-7B shape with the server's block decoding (benches/serve.sh), then issue 43's effect
# rankings' cost at that shape (1,024 experts, 64 answered pairs; benches/gpu.rs effects) with up
# to 8 experts of a layer ablated per forward pass and only the ranking's removal (zero) measured.
set -u
cd "$(dirname "$0")/../../../.."
[ -x /tmp/steermoe ] || { xz -dc .dev/steermoe.xz > /tmp/steermoe && chmod +x /tmp/steermoe; } || echo "no steermoe binary: serve skipped"
xz -dc runs/devC/gpu.xz > /tmp/gpu-bench && chmod +x /tmp/gpu-bench
export STEERMOE=/tmp/steermoe GPU_BENCH=/tmp/gpu-bench
mkdir -p "$OUT/serve"
OUT="$OUT/serve" FIGURE_TIMEOUT=150 ROUNDS=3 bash benches/serve.sh > "$OUT/serve/run.log" 2>&1
rm -rf /tmp/olmoe-1b-7b-random
timeout ${AA_S:-80} /tmp/gpu-bench --backend cuda --precision bf16 --what effects --ranking attribution+ablation \
  --removal zero >> "$OUT/effects.jsonl" 2>> "$OUT/effects.err"
echo "attribution+ablation rc $?" >> "$OUT/effects.err"
timeout ${ABLATION_S:-300} /tmp/gpu-bench --backend cuda --precision bf16 --what effects --ranking ablation \
  --removal zero >> "$OUT/effects.jsonl" 2>> "$OUT/effects.err"
echo "ablation rc $?" >> "$OUT/effects.err"
tar -C "$OUT" -cf "$OUT/serve.tar" serve && rm -r "$OUT/serve"
ls -la "$OUT"
