#!/usr/bin/env bash
# The method's measurements on a machine with one NVIDIA GPU, PyTorch and transformers (the
# device machine), in one call. Builds nothing: STEERMOE is a steermoe binary built with
# `--features cuda` (or .dev/steermoe.xz, unpacked here), and ../shared must hold the project's
# shared/ folder (a copy carried as ./shared is linked there).
#
#   benches/method/device.sh smoke      # 2 cells x 2 seeds of configs/organism-sweep.toml: timing
#   benches/method/device.sh organism   # ORGANISM_CELLS x ORGANISM_SEED_GROUPS of the organism sweep,
#                                       # one process each; meanwhile a sibling organism trained by
#                                       # shared/tools/organism_proto.py (HIDDEN=$SIBLING_HIDDEN) and
#                                       # SIBLING_CELLS x SIBLING_SEEDS swept on it; all within BUDGET s
#
# Environment: OUT (where results go; default a temporary folder), JOBS (smoke: jobs at once),
# BUDGET (seconds the organism mode's sweeps may run, default 480), ORGANISM_CELLS, SIBLING_CELLS
# (space-separated cell names), ORGANISM_SEED_GROUPS (space-separated seed lists), SIBLING_SEEDS,
# SIBLING_HIDDEN (default 256). Unfinished jobs are left out of the results, which say so.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$(mktemp -d)}
JOBS=${JOBS:-8}
mkdir -p "$OUT"
[ -e ../shared ] || ln -s "$PWD/shared" ../shared
if [ -z "${STEERMOE:-}" ]; then
  STEERMOE=/tmp/steermoe
  xz -dc .dev/steermoe.xz > "$STEERMOE" && chmod +x "$STEERMOE" || exit 1
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/device.txt"
git log -1 --format='commit %H %cI' 2>/dev/null | tee -a "$OUT/device.txt"

# Results without weights or routing tensors (they are rebuilt by rerunning the sweep).
pack() { # sweep dir, archive name
  tar -C "$(dirname "$1")" --exclude='*.safetensors' --exclude='*.mpk' --exclude='train' \
    -cJf "$OUT/$2" "$(basename "$1")"
}

case "${1:-smoke}" in
  smoke)
    nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader -l 5 > "$OUT/gpu.log" &
    # One job alone, then 4 at once (the first one's work reused).
    timeout "${SMOKE_ONE:-150}" "$STEERMOE" sweep --config configs/organism-sweep.toml --out /tmp/smoke --jobs 1 \
      --set 'sweep.seeds=[0]' --cells 'prompt_free,experts=risk_diff' > "$OUT/smoke1.log" 2>&1
    timeout "${SMOKE_FOUR:-200}" "$STEERMOE" sweep --config configs/organism-sweep.toml --out /tmp/smoke --jobs 4 \
      --set 'sweep.seeds=[0,1]' --cells 'prompt_free,' > "$OUT/smoke4.log" 2>&1
    kill %1
    pack /tmp/smoke smoke.tar.xz
    ;;
  organism)
    # Jobs run as separate processes (one per cell and seed group): in one process, burn's
    # device server serialises the threads of a small model (3 trainings at once ran 1.2x one).
    DEADLINE=$((SECONDS + ${BUDGET:-480}))
    left() { local l=$((DEADLINE - SECONDS)); echo $((l > 10 ? l : 10)); }
    mkdir -p "$OUT/logs"
    nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader -l 10 > "$OUT/gpu.log" &
    smi=$!
    CELLS=${ORGANISM_CELLS:-generation_masked,experts=risk_diff generation_masked,experts=random prompt_free,experts=risk_diff prompt_free,experts=random response_free,experts=risk_diff response_free,experts=random}
    SEED_GROUPS=${ORGANISM_SEED_GROUPS:-[0,1,2] [3,4]}
    SIBLING_CELLS=${SIBLING_CELLS:-generation_masked,experts=risk_diff generation_masked,experts=random prompt_free,experts=risk_diff prompt_free,experts=random}
    cell_args() { for c in "$@"; do printf -- '--cells\n%s\n' "$c"; done; }
    # collect DIR [--set ...]: the collect stage every cell shares, once (the config less [sweep]).
    collect() {
      local dir=$1; shift
      sed '/^\[sweep/,$d' configs/organism-sweep.toml > "$dir.toml"
      "$STEERMOE" --no-tui collect --config "$dir.toml" --out "$dir" "$@"
    }
    # seed DIR SWEEP CELL SEEDS: give the jobs of one process the shared collect (hard links).
    seed_jobs() {
      for s in $(echo "$4" | tr -d '[]' | tr , ' '); do
        local job="$2/cells/$3/seed-$s"
        mkdir -p "$job" && cp -rl "$1/routing" "$1/samples.jsonl" "$job/"
      done
    }
    # merge DEST SRC...: the cells of several sweep directories into one, timings concatenated.
    merge() {
      local dest=$1; shift
      mkdir -p "$dest/cells"
      for d in "$@"; do [ -d "$d/cells" ] && cp -rl "$d/cells/." "$dest/cells/"; done
      { echo cell,seed,stage,outcome,seconds; for d in "$@"; do tail -n +2 "$d/timings.csv" 2>/dev/null; done; } > "$dest/timings.csv"
    }
    (
      # The sibling: organism_proto.py trains it, then runs its own reference (transformers) on it:
      # prompt-token risk difference, 8 experts, 60 steps at lr 2e-4, seed 0 (no mask, mask, random).
      HIDDEN=${SIBLING_HIDDEN:-256} ONLY_SUCCESS=1 SAVE_DIR=/tmp/sibling SEEDS=0 SCOPE=prompt FT_STEPS=60 FT_LR=2e-4 \
        PYTHONUNBUFFERED=1 python3 shared/tools/organism_proto.py > "$OUT/logs/sibling_proto.log" 2>&1 &
      proto=$!
      until grep -q '"saved"' "$OUT/logs/sibling_proto.log" 2>/dev/null || ! kill -0 $proto 2>/dev/null; do sleep 2; done
      cp models/olmoe-organism/{tokenizer.json,tokenizer_config.json} /tmp/sibling/
      echo "sibling saved at $SECONDS s" >> "$OUT/logs/sibling_proto.log"
      collect /tmp/sib-collect --set model.dir=/tmp/sibling > "$OUT/logs/sib-collect.log" 2>&1
      pids=(); i=0
      for c in $SIBLING_CELLS; do
        seed_jobs /tmp/sib-collect /tmp/sib-$i "$c" "${SIBLING_SEEDS:-[0,1,2]}"
        timeout "$(left)" "$STEERMOE" sweep --config configs/organism-sweep.toml --out /tmp/sib-$i --jobs 1 \
          --set model.dir=/tmp/sibling --set "sweep.seeds=${SIBLING_SEEDS:-[0,1,2]}" --cells "$c" > "$OUT/logs/sib-$i.log" 2>&1 &
        pids+=($!); i=$((i + 1))
      done
      wait "${pids[@]}"
      merge /tmp/sibling-sweep /tmp/sib-*
      mapfile -t args < <(cell_args $SIBLING_CELLS)
      "$STEERMOE" sweep --config configs/organism-sweep.toml --out /tmp/sibling-sweep --report --set model.dir=/tmp/sibling \
        --set "sweep.seeds=${SIBLING_SEEDS:-[0,1,2]}" "${args[@]}" > "$OUT/logs/sibling_report.log" 2>&1
      kill $proto 2>/dev/null
    ) &
    sibling=$!
    collect /tmp/org-collect > "$OUT/logs/org-collect.log" 2>&1
    pids=(); i=0
    for c in $CELLS; do
      for g in $SEED_GROUPS; do
        seed_jobs /tmp/org-collect /tmp/org-$i "$c" "$g"
        timeout "$(left)" "$STEERMOE" sweep --config configs/organism-sweep.toml --out /tmp/org-$i --jobs 1 \
          --set "sweep.seeds=$g" --cells "$c" > "$OUT/logs/org-$i.log" 2>&1 &
        pids+=($!); i=$((i + 1))
      done
    done
    wait "${pids[@]}"
    merge /tmp/organism /tmp/org-*
    mapfile -t args < <(cell_args $CELLS)
    "$STEERMOE" sweep --config configs/organism-sweep.toml --out /tmp/organism --report "${args[@]}" > "$OUT/logs/organism_report.log" 2>&1
    wait $sibling
    kill $smi
    pack /tmp/organism organism.tar.xz
    [ -d /tmp/sibling-sweep ] && pack /tmp/sibling-sweep sibling.tar.xz
    cp /tmp/sibling/config.json "$OUT/sibling_config.json" 2>/dev/null
    (cd "$OUT" && tar -cJf logs.tar.xz logs && rm -r logs)
    ;;
esac
ls -la "$OUT"
