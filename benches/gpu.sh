#!/usr/bin/env bash
# The GPU benchmark of issue 8 in one call, on a machine with one NVIDIA GPU, transformers and
# torch: steermoe's figures (benches/gpu.rs), transformers' (hf_anchor.py) in the same run, the
# analysis figure (benches/analysis.rs), the transformers cross-check of the computation
# (benches/hf_check.py), then the ratios. One JSON line per figure.
#
#   benches/gpu.sh                    # builds nothing: set the binaries below, or have
#                                     # `cargo bench --features cuda --no-run` built them
# Environment:
#   GPU_BENCH       the benches/gpu.rs binary (built with --features cuda)
#   ANALYSIS_BENCH  the benches/analysis.rs binary
#   HF_ANCHOR       transformers' side (default benches/hf_anchor.py)
#   SKIP            figures to leave out, comma-separated (hf, check, analysis, gemm, train, generate)
#   FIGURE_TIMEOUT  seconds each measuring process may run (default 400)
set -uo pipefail
cd "$(dirname "$0")/.."
GPU_BENCH=${GPU_BENCH:?set GPU_BENCH to the benches/gpu.rs binary}
ANALYSIS_BENCH=${ANALYSIS_BENCH:-}
HF_ANCHOR=${HF_ANCHOR:-benches/hf_anchor.py}
SKIP=${SKIP:-}
OUTDIR=${OUTDIR:-$(mktemp -d)}
mkdir -p "$OUTDIR"
LOG=$OUTDIR/bench.jsonl
: > "$LOG"
skip() { [[ ",$SKIP," == *",$1,"* ]]; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
  | python3 -c 'import json,sys; n,m,d=[x.strip() for x in sys.stdin.read().split(",")]; print(json.dumps({"what":"device","gpu":n,"memory":m,"driver":d}))' | tee -a "$LOG"

# Peak GPU memory of each process, sampled by nvidia-smi.
peak() { # name, command...
  local name=$1; shift
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > "$OUTDIR/mem.$name" &
  local smi=$!
  timeout "${FIGURE_TIMEOUT:-400}" "$@" 2> "$OUTDIR/stderr.$name" | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  kill $smi 2>/dev/null; wait $smi 2>/dev/null
  sort -n "$OUTDIR/mem.$name" | tail -1 | python3 -c "import json,sys; print(json.dumps({'what':'peak_gpu_memory','run':'$name','mib':int(sys.stdin.read().strip() or 0),'rc':$rc}))" | tee -a "$LOG"
  [ "$rc" = 0 ] || tail -5 "$OUTDIR/stderr.$name" >&2
}

figures=()
for f in gemm train generate; do skip $f || figures+=($f); done
if [ ${#figures[@]} -gt 0 ]; then
  for f in "${figures[@]}"; do
    peak "steermoe-$f" "$GPU_BENCH" --backend cuda --precision bf16 --what "$f"
  done
fi
if ! skip check; then
  rm -rf "$OUTDIR/check"
  timeout "${FIGURE_TIMEOUT:-400}" "$GPU_BENCH" --backend cuda --precision bf16 --what "" --check-dir "$OUTDIR/check" 2>>"$OUTDIR/stderr.check" | tee -a "$LOG"
  python3 benches/hf_check.py "$OUTDIR/check" 2>>"$OUTDIR/stderr.check" | tee -a "$LOG"
fi
if ! skip hf; then
  peak transformers python3 "$HF_ANCHOR"
fi
if [ -n "$ANALYSIS_BENCH" ] && ! skip analysis; then
  "$ANALYSIS_BENCH" --bench | tee -a "$LOG"
fi

# Ratios steermoe / transformers.
python3 - "$LOG" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
def pick(what, impl, key, **kw):
    for r in rows:
        if r.get("what") == what and r.get("impl") == impl and key in r and all(r.get(k) == v for k, v in kw.items()):
            return r[key]
ours_train = pick("train_step", "steermoe", "tokens_per_s")
ours_gen = [r["new_tokens_per_s"] for r in rows if r.get("what") == "generate_router_capture" and r.get("impl") == "steermoe" and r.get("run") == "again"]
ours_gen = max(ours_gen) if ours_gen else None
out = {"what": "ratios"}
for impl in ("eager", "grouped_mm"):
    t = pick("train_step", impl, "tokens_per_s")
    g = pick("generate_router_capture", impl, "new_tokens_per_s")
    if ours_train and t:
        out[f"train_vs_{impl}"] = round(ours_train / t, 3)
    if ours_gen and g:
        out[f"generate_vs_{impl}"] = round(ours_gen / g, 3)
a = pick("analysis", None, "tokens_per_s") or next((r["tokens_per_s"] for r in rows if r.get("bench") == "analysis"), None)
if a:
    out["analysis_vs_seeds_loop"] = round(a / 2700, 1)
print(json.dumps(out))
EOF
echo "log: $LOG" >&2
