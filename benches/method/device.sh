#!/usr/bin/env bash
# The method's measurements on a machine with one NVIDIA GPU, PyTorch and transformers (the
# device machine), in one call. Builds nothing: STEERMOE is a steermoe binary built with
# `--features cuda` (or .dev/steermoe.xz, unpacked here), and ../shared must hold the project's
# shared/ folder (a copy carried as ./shared is linked there).
#
#   benches/method/device.sh smoke      # 2 cells x 2 seeds of configs/organism-sweep.toml: timing
#   benches/method/device.sh dose       # configs/organism-dose.toml: forced-off and trained dose
#                                       # curves (DOSE_PROCS), within BUDGET s
#   benches/method/device.sh plant      # PLANT_SEEDS planted organisms (configs/plant-organism-
#                                       # cpu.toml on CUDA), each swept with configs/planted-sweep.
#                                       # toml (PLANTED_CELLS), within BUDGET s; PLANT_SET /
#                                       # PLANTED_SET: space-separated KEY=VALUE overrides of the
#                                       # plant / of the planted sweeps
#   benches/method/device.sh rasa       # configs/rasa-organism.toml: one collect per attack
#                                       # family, then RASA_PROCS sweep processes, within BUDGET s
#   benches/method/device.sh organism   # ORGANISM_JOBS of the organism sweep, one process each;
#                                       # meanwhile a sibling organism trained by
#                                       # shared/tools/organism_proto.py (HIDDEN=$SIBLING_HIDDEN) and
#                                       # SIBLING_JOBS swept on it; all within BUDGET s
#
# Environment: OUT (where results go; default a temporary folder), JOBS (smoke: jobs at once),
# BUDGET (seconds the organism mode's sweeps may run, default 480), ORGANISM_JOBS, SIBLING_JOBS
# (space-separated `CELL@[SEEDS]` entries; empty = none), SIBLING=0 (no sibling), SIBLING_HIDDEN
# (default 256), JOB_SET (space-separated `KEY=VALUE` overrides for every job), SIBLING_SET (the same
# for the sibling's jobs only). Unfinished jobs are
# left out of the results, which say so.
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

# merge DEST SRC...: the cells of several sweep directories into one, timings concatenated.
merge() {
  local dest=$1; shift
  mkdir -p "$dest/cells"
  for d in "$@"; do [ -d "$d/cells" ] && cp -rl "$d/cells/." "$dest/cells/"; done
  { echo cell,seed,stage,outcome,seconds; for d in "$@"; do tail -n +2 "$d/timings.csv" 2>/dev/null; done; } > "$dest/timings.csv"
}

# run_groups CFG PREFIX PROCS COLLECT_OF: one process per `;`-separated entry of PROCS, each of one
# or more `|`-separated groups (seeds, then cell names) run one after another as a sweep of CFG in
# PREFIX-<entry>-<group>, every job given the collect of its cell (the folder `COLLECT_OF CELL`
# prints, hard-linked in); waits for them all, within the mode's `left` seconds.
run_groups() {
  local cfg=$1 prefix=$2 procs_text=$3 collect_of=$4
  group() {
    local dir=$1 seeds=$2; shift 2
    local args=()
    for c in "$@"; do
      args+=(--cells "$c")
      local from; from=$("$collect_of" "$c")
      for s in $(echo "$seeds" | tr -d '[]' | tr , ' '); do
        local job="$dir/cells/$c/seed-$s"; mkdir -p "$job"
        cp -rl "$from/routing" "$from/samples.jsonl" "$job/"
      done
    done
    timeout "$(left)" "$STEERMOE" --no-tui sweep --config "$cfg" --out "$dir" --jobs 1 \
      --set "sweep.seeds=$seeds" "${args[@]}" >> "$OUT/logs/$(basename "$dir").log" 2>&1
  }
  local procs pids=() i=0
  IFS=';' read -r -a procs <<< "$procs_text"
  for p in "${procs[@]}"; do (
    IFS='|' read -r -a groups <<< "$p"; g=0
    for gr in "${groups[@]}"; do
      read -r -a words <<< "$gr"
      group "$prefix-$i-$g" "${words[@]}"; g=$((g + 1))
    done
  ) & pids+=($!); i=$((i + 1))
  done
  wait "${pids[@]}"
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
  dose)
    # One process per DOSE_PROCS entry (`;`-separated; each one or more `|`-separated groups run
    # one after another: seeds then the cell names, space-separated), all sharing one collect; ranked and anti-ranked sets do not depend on the seed
    # (greedy collection), so their steered evaluations are shared between seeds.
    DEADLINE=$((SECONDS + ${BUDGET:-480}))
    left() { local l=$((DEADLINE - SECONDS)); echo $((l > 10 ? l : 10)); }
    mkdir -p "$OUT/logs"
    nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader -l 10 > "$OUT/gpu.log" &
    smi=$!
    cfg=configs/organism-dose.toml
    sed '/^\[sweep/,$d' $cfg > /tmp/dose-collect.toml
    "$STEERMOE" --no-tui collect --config /tmp/dose-collect.toml --out /tmp/dose-collect > "$OUT/logs/collect.log" 2>&1
    echo "collected at $SECONDS s" >> "$OUT/logs/collect.log"
    s10='[0,1,2,3,4,5,6,7,8,9]'; s5='[0,1,2,3,4]'
    DOSE_PROCS=${DOSE_PROCS:-$s10 steer_prompt,experts=risk_diff steer_generation,experts=risk_diff steer_response,experts=risk_diff steer_prompt,experts=anti_ranked steer_generation,experts=anti_ranked steer_response,experts=anti_ranked;$s10 steer_prompt,experts=random;$s10 steer_generation,experts=random;$s10 steer_response,experts=random;$s5 k8,experts=risk_diff k8,experts=anti_ranked;$s5 k8,experts=random;$s5 k32,experts=risk_diff k32,experts=anti_ranked;$s5 k32,experts=random}
    dose_collect() { echo /tmp/dose-collect; }
    run_groups $cfg /tmp/dose "$DOSE_PROCS" dose_collect
    merge /tmp/dose /tmp/dose-[0-9]*
    "$STEERMOE" --no-tui sweep --config $cfg --out /tmp/dose --report --set "sweep.seeds=$s10" \
      > "$OUT/logs/report.log" 2>&1
    kill $smi
    pack /tmp/dose dose.tar.xz
    (cd "$OUT" && tar -cJf logs.tar.xz logs && rm -r logs)
    ;;
  rasa)
    # One collect per attack family (greedy, so shared by every variant and seed that trains on
    # it), then one process per RASA_PROCS entry (`;`-separated; each one or more `|`-separated
    # groups run one after another: seeds then cell names), merged and reported.
    DEADLINE=$((SECONDS + ${BUDGET:-480}))
    left() { local l=$((DEADLINE - SECONDS)); echo $((l > 10 ? l : 10)); }
    mkdir -p "$OUT/logs"
    nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader -l 10 > "$OUT/gpu.log" &
    smi=$!
    cfg=configs/rasa-organism.toml
    families="flipattack johnny deepinception"
    sed '/^\[sweep/,$d' $cfg > /tmp/rasa-collect.toml
    cpids=()
    for f in $families; do
      "$STEERMOE" --no-tui collect --config /tmp/rasa-collect.toml --out "/tmp/rasa-collect-$f" \
        --set "data.train_on=$f" > "$OUT/logs/collect-$f.log" 2>&1 &
      cpids+=($!)
    done
    # Only the collects: a bare `wait` would also wait for nvidia-smi, which never ends.
    wait "${cpids[@]}"
    echo "collected at $SECONDS s" >> "$OUT/logs/collect-flipattack.log"
    if [ -z "${RASA_PROCS:-}" ]; then
      RASA_PROCS=""
      for v in rasa expert_only random seeds full router_only; do
        cells=""; for f in $families; do cells="$cells $v,train_on=$f"; done
        RASA_PROCS="$RASA_PROCS;[0,1,2]$cells|[3,4]$cells"
      done
      RASA_PROCS=${RASA_PROCS#;}
    fi
    # Each cell's family's collect.
    rasa_collect() { local fam=${1##*train_on=}; echo "/tmp/rasa-collect-${fam%%,*}"; }
    run_groups $cfg /tmp/rasa "$RASA_PROCS" rasa_collect
    merge /tmp/rasa /tmp/rasa-[0-9]*
    "$STEERMOE" --no-tui sweep --config $cfg --out /tmp/rasa --report > "$OUT/logs/report.log" 2>&1
    kill $smi
    pack /tmp/rasa rasa.tar.xz
    (cd "$OUT" && tar -cJf logs.tar.xz logs && rm -r logs)
    ;;
  plant)
    # PLANT_SEEDS planted organisms at once (a trigger phrase -> a canary in 16 experts with their
    # router rows, configs/plant-organism-cpu.toml on CUDA), then on each the sweep of
    # configs/planted-sweep.toml, cells PLANTED_CELLS, seeds PLANTED_SEEDS.
    DEADLINE=$((SECONDS + ${BUDGET:-480}))
    left() { local l=$((DEADLINE - SECONDS)); echo $((l > 10 ? l : 10)); }
    mkdir -p "$OUT/logs"
    nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader -l 10 > "$OUT/gpu.log" &
    smi=$!
    PSET=(); for e in ${PLANT_SET:-}; do PSET+=(--set "$e"); done   # e.g. PLANT_SET='plant.steps=400'
    SSET=(); for e in ${PLANTED_SET:-}; do SSET+=(--set "$e"); done # e.g. PLANTED_SET='analysis.ablate_both=false'
    cells=()
    for c in ${PLANTED_CELLS:-prompt, generation,experts=risk_diff response,experts=risk_diff}; do cells+=(--cells "$c"); done
    pids=()
    for ps in ${PLANT_SEEDS:-0 1 2}; do (
      timeout "$(left)" "$STEERMOE" --no-tui plant --config configs/plant-organism-cpu.toml --out "/tmp/planted-$ps" \
        --set model.backend=cuda --set "plant.seed=$ps" "${PSET[@]}" > "$OUT/logs/plant-$ps.log" 2>&1 || exit 1
      echo "planted at $SECONDS s" >> "$OUT/logs/plant-$ps.log"
      cp "/tmp/planted-$ps/planted.json" "$OUT/planted-$ps.json"
      timeout "$(left)" "$STEERMOE" --no-tui sweep --config configs/planted-sweep.toml --out "/tmp/planted-sweep-$ps" \
        --jobs "${PLANTED_JOBS:-2}" --set "model.dir=/tmp/planted-$ps" --set "data.path=/tmp/planted-$ps/behaviour.json" \
        --set "sweep.seeds=${PLANTED_SEEDS:-[0]}" "${SSET[@]}" "${cells[@]}" > "$OUT/logs/planted-sweep-$ps.log" 2>&1
      "$STEERMOE" --no-tui sweep --config configs/planted-sweep.toml --out "/tmp/planted-sweep-$ps" --report \
        --set "model.dir=/tmp/planted-$ps" --set "data.path=/tmp/planted-$ps/behaviour.json" \
        --set "sweep.seeds=${PLANTED_SEEDS:-[0]}" "${SSET[@]}" "${cells[@]}" >> "$OUT/logs/planted-sweep-$ps.log" 2>&1
      pack "/tmp/planted-sweep-$ps" "planted-sweep-$ps.tar.xz"
    ) & pids+=($!); done
    wait "${pids[@]}"
    kill $smi
    (cd "$OUT" && tar -cJf logs.tar.xz logs && rm -r logs)
    ;;
  organism)
    # Jobs run as separate processes (one per entry of ORGANISM_JOBS / SIBLING_JOBS, each
    # `CELL@[SEEDS]`, its seeds one after another): in one process, burn's device server
    # serialises the threads of a small model (3 trainings at once ran 1.2x one). More than ~8
    # processes exhaust the GPU's memory (each holds ~11 GB of pool).
    DEADLINE=$((SECONDS + ${BUDGET:-480}))
    left() { local l=$((DEADLINE - SECONDS)); echo $((l > 10 ? l : 10)); }
    mkdir -p "$OUT/logs"
    nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader -l 10 > "$OUT/gpu.log" &
    smi=$!
    ORGANISM_JOBS=${ORGANISM_JOBS:-prompt_free,experts=risk_diff@[0,1,2,3,4] prompt_free,experts=random@[0,1,2,3,4]}
    SIBLING_JOBS=${SIBLING_JOBS:-prompt_free,experts=risk_diff@[0,1,2] prompt_free,experts=random@[0,1,2] generation_masked,experts=risk_diff@[0,1,2]}
    # Extra `--set` for every job (e.g. 'eval.variants=["base","trained"]').
    read -r -a EXTRA <<< "${JOB_SET:-}"
    extra_args() { for e in "${EXTRA[@]}"; do printf -- '--set\n%s\n' "$e"; done; }
    mapfile -t XARGS < <(extra_args)
    read -r -a EXTRA <<< "${SIBLING_SET:-}"
    mapfile -t SIB_XARGS < <(extra_args)
    cells_of() { for j in "$@"; do echo "${j%@*}"; done | awk '!seen[$0]++ { print "--cells"; print }'; }
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
    # run_jobs PREFIX COLLECT_DIR [--set ...] -- JOB...: one sweep process per job entry.
    run_jobs() {
      local prefix=$1 cdir=$2; shift 2
      local sets=(); while [ "$1" != -- ]; do sets+=("$1"); shift; done; shift
      local pids=() i=0
      for j in "$@"; do
        local cell=${j%@*} seeds=${j#*@}
        seed_jobs "$cdir" "$prefix-$i" "$cell" "$seeds"
        timeout "$(left)" "$STEERMOE" sweep --config configs/organism-sweep.toml --out "$prefix-$i" --jobs 1 \
          "${sets[@]}" "${XARGS[@]}" --set "sweep.seeds=$seeds" --cells "$cell" > "$OUT/logs/$(basename "$prefix")-$i.log" 2>&1 &
        pids+=($!); i=$((i + 1))
      done
      wait "${pids[@]}"
    }
    sibling=
    if [ -n "$SIBLING_JOBS" ] && [ "${SIBLING:-1}" = 1 ]; then (
      # The sibling: organism_proto.py trains it, then runs its own reference (transformers) on it:
      # prompt-token risk difference, 8 experts, 60 steps at lr 2e-4, seed 0 (no mask, mask, random).
      HIDDEN=${SIBLING_HIDDEN:-256} ONLY_SUCCESS=1 SAVE_DIR=/tmp/sibling SEEDS=0 SCOPE=prompt FT_STEPS=60 FT_LR=2e-4 \
        PYTHONUNBUFFERED=1 python3 shared/tools/organism_proto.py > "$OUT/logs/sibling_proto.log" 2>&1 &
      proto=$!
      until grep -q '"saved"' "$OUT/logs/sibling_proto.log" 2>/dev/null || ! kill -0 $proto 2>/dev/null \
        || [ $SECONDS -ge $DEADLINE ]; do sleep 2; done
      [ -f /tmp/sibling/config.json ] || { echo "sibling not saved by the deadline" >> "$OUT/logs/sibling_proto.log"; kill $proto; exit 1; }
      cp models/olmoe-organism/{tokenizer.json,tokenizer_config.json} /tmp/sibling/
      echo "sibling saved at $SECONDS s" >> "$OUT/logs/sibling_proto.log"
      collect /tmp/sib-collect --set model.dir=/tmp/sibling > "$OUT/logs/sib-collect.log" 2>&1
      echo "sibling collected at $SECONDS s" >> "$OUT/logs/sibling_proto.log"
      run_jobs /tmp/sib /tmp/sib-collect --set model.dir=/tmp/sibling "${SIB_XARGS[@]}" -- $SIBLING_JOBS
      merge /tmp/sibling-sweep /tmp/sib-[0-9]*
      mapfile -t args < <(cells_of $SIBLING_JOBS)
      "$STEERMOE" sweep --config configs/organism-sweep.toml --out /tmp/sibling-sweep --report --set model.dir=/tmp/sibling \
        "${SIB_XARGS[@]}" "${XARGS[@]}" "${args[@]}" > "$OUT/logs/sibling_report.log" 2>&1
      kill $proto 2>/dev/null
    ) & sibling=$!; fi
    if [ -n "$ORGANISM_JOBS" ]; then
      collect /tmp/org-collect > "$OUT/logs/org-collect.log" 2>&1
      run_jobs /tmp/org /tmp/org-collect -- $ORGANISM_JOBS
      merge /tmp/organism /tmp/org-[0-9]*
      mapfile -t args < <(cells_of $ORGANISM_JOBS)
      "$STEERMOE" sweep --config configs/organism-sweep.toml --out /tmp/organism --report "${XARGS[@]}" "${args[@]}" \
        > "$OUT/logs/organism_report.log" 2>&1
      pack /tmp/organism organism.tar.xz
    fi
    [ -n "$sibling" ] && wait $sibling
    kill $smi
    [ -d /tmp/sibling-sweep ] && pack /tmp/sibling-sweep sibling.tar.xz
    cp /tmp/sibling/config.json "$OUT/sibling_config.json" 2>/dev/null
    (cd "$OUT" && tar -cJf logs.tar.xz logs && rm -r logs)
    ;;
esac
ls -la "$OUT"
