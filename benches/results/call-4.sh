#!/usr/bin/env bash
# Prepared 2026-12-06 (night), not yet run; meant to follow planted-gpu-3/call.sh on the same machine (its /tmp/steermoe
# kept): issue 40's serve throughput against generate's at the OLMoE-1B-7B shape with the server's
# KV cache written in place and the prompts that arrive together prefilled in one pass
# (benches/serve.sh, the GPU alone), then issue 41's memory-pressure stress test
# (benches/oom_stress.sh: the organism's base evaluation twice quiet, then PROCS at once beside a
# process holding all but HEADROOM_GB).
set -u
cd "$(dirname "$0")/../.."
[ -x /tmp/steermoe ] || { xz -dc .dev/steermoe.xz > /tmp/steermoe && chmod +x /tmp/steermoe; } || echo "no steermoe binary"
xz -dc runs/devC/gpu.xz > /tmp/gpu-bench && chmod +x /tmp/gpu-bench
export STEERMOE=/tmp/steermoe GPU_BENCH=/tmp/gpu-bench
mkdir -p "$OUT/serve" "$OUT/oom"
OUT="$OUT/serve" FIGURE_TIMEOUT=150 ROUNDS=3 timeout ${SERVE_S:-280} bash benches/serve.sh > "$OUT/serve/run.log" 2>&1
echo "serve rc $?" >> "$OUT/serve/run.log"
pkill -f 'steermoe serve' 2>/dev/null; rm -rf /tmp/olmoe-1b-7b-random
OUT="$OUT/oom" PROCS=${PROCS:-6} HEADROOM_GB=${HEADROOM_GB:-8} \
  timeout ${OOM_S:-230} bash benches/oom_stress.sh > "$OUT/oom/run.log" 2>&1
echo "oom_stress rc $?" >> "$OUT/oom/run.log"
nvidia-smi --query-compute-apps=pid --format=csv,noheader | xargs -r kill 2>/dev/null
tar -C "$OUT" -cf "$OUT/call4.tar" serve oom && rm -r "$OUT/serve" "$OUT/oom"
ls -la "$OUT"
