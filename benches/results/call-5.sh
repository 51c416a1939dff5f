#!/usr/bin/env bash
# Issue 41's decode memory and issue 40's serve figure, on one GPU, binaries of one commit
# (.dev/steermoe.xz, .dev/gpu.xz: `cargo build --release --features cuda --bin steermoe --bench
# gpu`, stripped, xz). PARTS picks what runs (default: all, in this order):
# - olmoe: generation with routing capture at the OLMoE-1B-7B shape (random bf16 weights, 64-token
#   prompts, 128 new tokens, greedy): batch 16 with the experts shared (`MoeLm::share_experts`),
#   batch 16 stacked once per call beside the weights (as before), batch 64 shared;
# - train: train steps at the OLMoE-1B-7B shape and Qwen3-30B-A3B's with 12 layers, steermoe and
#   transformers grouped_mm;
# - tests: the CUDA parity suite (.dev/suite.xz: `cargo test --release --features cuda --test suite
#   --no-run`) in float32 and bf16;
# - memory: OLMoE and Qwen3 batch 16 again, with cubecl's pools (in use, reserved) printed after
#   the model is made, after its experts are shared and after generation (a later gpu bench);
# - qwen3: the same at Qwen3-30B-A3B's whole shape (48 layers), batch 16 and 64, shared; with
#   QWEN3_BASELINE set, batch 16 again with the routed experts, a cube a row and the fused residual
#   add turned off; with QWEN3_ARGMAX_BASELINE set, batch 16 with burn's one-level argmax;
# - nsys: Nsight Systems' kernel and API summaries of the OLMoE batch-16 generation (NSYS_ARGS: more
#   gpu bench arguments, e.g. another shape), if nsys is there;
# - hf: transformers' grouped_mm generation (benches/hf_anchor.py) at both shapes, batch 16 and 64;
# - serve: benches/serve.sh (serve against generate at batch 16, ROUNDS rounds);
# - oom: benches/oom_stress.sh with HEADROOM_GB (PROCS processes beside a memory hog);
# - ops: a decode step's MoE block op by op (gpu bench --what decode-ops, one layer) at the
#   OLMoE-1B-7B and Qwen3-30B-A3B shapes, batch 16 and 64;
# - ab: the same at batch 16 and OLMoE generation at batch 16 (AB_ROUNDS rounds; no generation
#   if AB_NO_GEN is set, Qwen3's too if AB_QWEN3_GEN is) with the gpu bench of .dev/gpu-old.xz
#   (the commit before a change) and of .dev/gpu.xz, alternating, in one call.
# - routed: the routed-only experts forced on against off (STEERMOE_ROUTED_EXPERTS=1|0), decode
#   ops at both shapes (not if ROUTED_NO_OPS is set) and generation, batch 16, AB_ROUNDS rounds,
#   one binary (.dev/gpu.xz).
# - unroll: the routed kernels' row unrolling (1, 2, 4, 8) and batch 64 routed, decode ops against
#   the stacked GEMMs at both shapes; UNROLL_RUNS lists batch:unroll runs (off: stacked GEMMs;
#   default 16:off 16:1 16:2 16:4 16:8 64:off 64:4).
# - route: ROUTE_VARIANTS (default: old cube new), one binary: old = routing a thread a row and the
#   residual add apart from the next norm (STEERMOE_ROUTE_KERNEL=row STEERMOE_FUSED_RESIDUAL=0),
#   cube = routing a cube a row, new = and the add fused into the norm; decode ops at both shapes
#   (old and cube; not if ROUTE_NO_OPS is set) and generation (OLMoE-1B-7B; Qwen3-30B-A3B with
#   ROUTED_QWEN3_LAYERS layers), batch 16, AB_ROUNDS rounds, alternating; decode ops at the OLMoE
#   shape for each batch of ROUTE_BIG_BATCHES too (e.g. "1024 8192": prefill-sized row counts).
# - profile: cubecl's kernel profile (CUBECL_DEBUG_OPTION=profile: every launch timed on the device)
#   of a generation at Qwen3-30B-A3B's shape (ROUTED_QWEN3_LAYERS layers, batch 16, PROFILE_NEW new
#   tokens) before (routing a thread a row, stacked GEMMs, the residual add apart) and after (the
#   defaults: a cube a row, routed experts, the add fused into the norm),
#   its last run by kind (benches/profile_summary.py: a generation synchronises once a run, so the
#   log's last table is the last run); PROFILE_WHEN picks before, after or both (the default).
# - argmax: greedy decoding's argmax over the vocabulary, burn's `argmax(1)` (STEERMOE_ARGMAX=burn)
#   against the two levels of src/generate/argmax.rs (the default), generation at batch 16
#   (OLMoE-1B-7B; Qwen3-30B-A3B with ROUTED_QWEN3_LAYERS layers), AB_ROUNDS rounds, alternating.
# - tile: the routed kernels' cube shape (STEERMOE_ROUTED_TILE=lanes x groups x pass, routed
#   experts forced on), decode ops at both shapes for each batch:tile of TILE_RUNS; with
#   TILE_GEN, generation at batch 16 and 64 (OLMoE-1B-7B; Qwen3-30B-A3B with ROUTED_QWEN3_LAYERS
#   layers) for each tile of TILE_GEN.
# - ncu: Nsight Compute's duration of every kernel (cuBLAS's included; kernels run one at a time,
#   clocks and caches left alone) of a short generation, OLMoE-1B-7B and Qwen3-30B-A3B shapes with
#   NCU_LAYERS layers (default 4), batch 16, NCU_NEW new tokens (default 8), beside the same
#   generation unprofiled: what a step's kernels take against its wall time.
# - launch: the decode attention kernel of src/cube/attention_kernel.rs and the kernels' metadata
#   uploaded once (vendor/cubecl-cuda's third change, opt-in), in one call: the gpu bench of
#   .dev/gpu-old.xz (before both), of .dev/gpu.xz as it is (the new attention) and with
#   STEERMOE_METADATA_CACHE=1 (both), alternating, AB_ROUNDS rounds, generation at batch 16 (OLMoE-1B-7B; Qwen3-30B-A3B
#   with ROUTED_QWEN3_LAYERS layers); then LAUNCH_FULL's runs (of olmoe-b64, qwen3-48-b16,
#   qwen3-48-b64: the 48-layer Qwen3 at batch 16 or 64, OLMoE at 64), old and new.
# TEST_PRECISIONS (default "f32 bf16") picks the tests part's runs, TEST_TIMEOUT (default 280 s) bounds each.
# Every process's peak GPU memory is sampled by nvidia-smi every 200 ms. JSON lines in $OUT.
set -u
cd "$(dirname "$0")/../.."
for b in steermoe gpu; do
  [ -x /tmp/$b ] || { xz -dc .dev/$b.xz > /tmp/$b && chmod +x /tmp/$b; }
done
export STEERMOE=/tmp/steermoe GPU_BENCH=/tmp/gpu
PARTS=${PARTS:-olmoe qwen3 nsys hf serve oom}
mkdir -p "$OUT"
LOG=$OUT/figures.jsonl
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/device.txt"

peak() { # NAME COMMAND...: run it, its JSON lines and its peak memory into $LOG
  local name=$1; shift
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > "$OUT/mem.$name" &
  local smi=$!
  timeout "${FIGURE_TIMEOUT:-200}" "$@" 2> "$OUT/stderr.$name" | sed "s/^{/{\"figure\": \"$name\", /" >> "$LOG"
  local rc=${PIPESTATUS[0]}
  kill $smi 2>/dev/null; wait $smi 2>/dev/null
  echo "{\"figure\": \"$name\", \"what\": \"peak_gpu_memory\", \"mib\": $(sort -n "$OUT/mem.$name" | tail -1), \"rc\": $rc}" >> "$LOG"
  tail -1 "$LOG"
}
GEN=("$GPU_BENCH" --backend cuda --precision bf16 --what generate)

for part in $PARTS; do
  case $part in
    olmoe)
      peak olmoe-b16-shared "${GEN[@]}"
      peak olmoe-b16-stacked "${GEN[@]}" --stack-per-call
      peak olmoe-b64-shared "${GEN[@]}" --gen-batch 64 ;;
    train)
      # One-call train tables: steermoe's bench step (16 x 512, 50 experts trainable, AdamW) and
      # transformers' grouped_mm at the OLMoE-1B-7B shape and at Qwen3-30B-A3B's with 12 layers.
      peak olmoe-train "$GPU_BENCH" --backend cuda --precision bf16 --what train --steps 8 --warmup-steps 4
      peak hf-olmoe-train env WHAT=train IMPLS=grouped_mm python3 benches/hf_anchor.py
      peak qwen3-12-train "$GPU_BENCH" --backend cuda --precision bf16 --what train --steps 8 --warmup-steps 4 \
        --model-config benches/qwen3-30b-a3b.json --layers 12
      peak hf-qwen3-12-train env ARCH=qwen3 LAYERS=12 WHAT=train IMPLS=grouped_mm python3 benches/hf_anchor.py ;;
    tests)
      # The suite binary finds its fixtures under the path it was built at.
      [ -e /work/main ] || { mkdir -p /work && ln -s "$PWD" /work/main; }
      xz -dc .dev/suite.xz > /tmp/suite && chmod +x /tmp/suite
      for p in ${TEST_PRECISIONS:-f32 bf16}; do
        STEERMOE_TEST_PRECISION=$p timeout "${TEST_TIMEOUT:-280}" /tmp/suite cuda:: --ignored --test-threads 1 \
          > "$OUT/tests-$p.log" 2>&1
        echo "rc $?" >> "$OUT/tests-$p.log"
        grep -E "^test result|FAILED|panicked" "$OUT/tests-$p.log" | head -5
      done ;;
    ab)
      [ -f .dev/gpu-old.xz ] && xz -dc .dev/gpu-old.xz > /tmp/gpu-old && chmod +x /tmp/gpu-old
      for round in $(seq "${AB_ROUNDS:-1}"); do
        for bin in old new; do
          g=/tmp/gpu; [ $bin = old ] && g=/tmp/gpu-old
          peak olmoe-ops-$bin-$round "$g" --backend cuda --precision bf16 --what decode-ops
          peak qwen3-ops-$bin-$round "$g" --backend cuda --precision bf16 --what decode-ops \
            --model-config benches/qwen3-30b-a3b.json
          [ -n "${AB_NO_GEN:-}" ] || peak olmoe-gen-$bin-$round "$g" --backend cuda --precision bf16 --what generate
        done
      done
      for bin in ${AB_QWEN3_GEN:+old new}; do
        g=/tmp/gpu; [ $bin = old ] && g=/tmp/gpu-old
        peak qwen3-gen-$bin "$g" --backend cuda --precision bf16 --what generate \
          --model-config benches/qwen3-30b-a3b.json
      done ;;
    routed)
      # Routed-only experts (src/cube/routed_experts.rs) against the stacked GEMMs, one binary:
      # STEERMOE_ROUTED_EXPERTS=0 turns the routed kernels off, 1 on. Decode ops at both shapes, batch
      # 16, and generation (OLMoE-1B-7B, Qwen3-30B-A3B with ROUTED_QWEN3_LAYERS layers), alternating.
      for round in $(seq "${AB_ROUNDS:-1}"); do
        for on in 0 1; do
          if [ -z "${ROUTED_NO_OPS:-}" ]; then
            peak olmoe-ops-routed$on-$round env STEERMOE_ROUTED_EXPERTS=$on "$GPU_BENCH" --backend cuda \
              --precision bf16 --what decode-ops
            peak qwen3-ops-routed$on-$round env STEERMOE_ROUTED_EXPERTS=$on "$GPU_BENCH" --backend cuda \
              --precision bf16 --what decode-ops --model-config benches/qwen3-30b-a3b.json
          fi
          peak olmoe-gen-routed$on-$round env STEERMOE_ROUTED_EXPERTS=$on "${GEN[@]}"
          peak qwen3-gen-routed$on-$round env STEERMOE_ROUTED_EXPERTS=$on "${GEN[@]}" \
            --model-config benches/qwen3-30b-a3b.json --layers "${ROUTED_QWEN3_LAYERS:-12}"
        done
      done ;;
    unroll)
      # The routed kernels' row unrolling (STEERMOE_ROUTED_UNROLL) and batch 64 routed, forced on
      # (STEERMOE_ROUTED_EXPERTS=1), against the stacked GEMMs: decode ops at both shapes.
      for bv in ${UNROLL_RUNS:-16:off 16:1 16:2 16:4 16:8 64:off 64:4}; do
        b=${bv%%:*} v=${bv#*:}
        envs=(STEERMOE_ROUTED_EXPERTS=1 STEERMOE_ROUTED_UNROLL=$v)
        [ $v = off ] && envs=(STEERMOE_ROUTED_EXPERTS=0)
        peak olmoe-ops-b$b-$v env "${envs[@]}" "$GPU_BENCH" --backend cuda --precision bf16 \
          --what decode-ops --gen-batch $b
        peak qwen3-ops-b$b-$v env "${envs[@]}" "$GPU_BENCH" --backend cuda --precision bf16 \
          --what decode-ops --gen-batch $b --model-config benches/qwen3-30b-a3b.json
      done ;;
    route)
      # old: routing a thread a row, the residual add apart from the next norm (the defaults
      # before); cube: routing a cube a row; new: and the add fused into the norm.
      for round in $(seq "${AB_ROUNDS:-1}"); do
        for v in ${ROUTE_VARIANTS:-old cube new}; do
          case $v in
            old) envs=(STEERMOE_ROUTE_KERNEL=row STEERMOE_FUSED_RESIDUAL=0) ;;
            cube) envs=(STEERMOE_ROUTE_KERNEL=cube STEERMOE_FUSED_RESIDUAL=0) ;;
            new) envs=(STEERMOE_ROUTE_KERNEL=cube STEERMOE_FUSED_RESIDUAL=1) ;;
          esac
          if [ $v != new ] && [ -z "${ROUTE_NO_OPS:-}" ]; then
            peak olmoe-ops-$v-$round env "${envs[@]}" "$GPU_BENCH" --backend cuda --precision bf16 \
              --what decode-ops
            peak qwen3-ops-$v-$round env "${envs[@]}" "$GPU_BENCH" --backend cuda --precision bf16 \
              --what decode-ops --model-config benches/qwen3-30b-a3b.json
          fi
          if [ $v != new ]; then
            for b in ${ROUTE_BIG_BATCHES:-}; do
              peak olmoe-ops-b$b-$v-$round env "${envs[@]}" "$GPU_BENCH" --backend cuda --precision bf16 \
                --what decode-ops --gen-batch $b
            done
          fi
          peak olmoe-gen-$v-$round env "${envs[@]}" "${GEN[@]}"
          peak qwen3-gen-$v-$round env "${envs[@]}" "${GEN[@]}" \
            --model-config benches/qwen3-30b-a3b.json --layers "${ROUTED_QWEN3_LAYERS:-12}"
        done
      done ;;
    argmax)
      for round in $(seq "${AB_ROUNDS:-1}"); do
        for v in burn two; do
          peak olmoe-gen-argmax-$v-$round env STEERMOE_ARGMAX=$v "${GEN[@]}"
          peak qwen3-gen-argmax-$v-$round env STEERMOE_ARGMAX=$v "${GEN[@]}" \
            --model-config benches/qwen3-30b-a3b.json --layers "${ROUTED_QWEN3_LAYERS:-12}"
        done
      done ;;
    tile)
      for bt in ${TILE_RUNS:-16:16x16x4 16:16x16x2 16:32x8x4 16:32x8x2 16:64x4x2 16:8x32x2 64:16x16x4 64:16x16x8 64:32x8x8}; do
        b=${bt%%:*} t=${bt#*:}
        envs=(STEERMOE_ROUTED_EXPERTS=1 STEERMOE_ROUTED_TILE=$t)
        peak olmoe-ops-b$b-$t env "${envs[@]}" "$GPU_BENCH" --backend cuda --precision bf16 \
          --what decode-ops --gen-batch $b
        peak qwen3-ops-b$b-$t env "${envs[@]}" "$GPU_BENCH" --backend cuda --precision bf16 \
          --what decode-ops --gen-batch $b --model-config benches/qwen3-30b-a3b.json
      done
      for t in ${TILE_GEN:-}; do
        for b in 16 64; do
          peak olmoe-gen-b$b-$t env STEERMOE_ROUTED_TILE=$t "${GEN[@]}" --gen-batch $b
          peak qwen3-gen-b$b-$t env STEERMOE_ROUTED_TILE=$t "${GEN[@]}" --gen-batch $b \
            --model-config benches/qwen3-30b-a3b.json --layers "${ROUTED_QWEN3_LAYERS:-12}"
        done
      done ;;
    profile)
      for when in ${PROFILE_WHEN:-before after}; do
        envs=(STEERMOE_ROUTE_KERNEL=cube)
        [ $when = before ] && envs=(STEERMOE_ROUTE_KERNEL=row STEERMOE_ROUTED_EXPERTS=0 STEERMOE_FUSED_RESIDUAL=0)
        env "${envs[@]}" CUBECL_DEBUG_OPTION=profile CUBECL_DEBUG_LOG="$OUT/profile-$when.txt" \
          timeout "${FIGURE_TIMEOUT:-200}" "${GEN[@]}" --model-config benches/qwen3-30b-a3b.json \
          --layers "${ROUTED_QWEN3_LAYERS:-12}" --new-tokens "${PROFILE_NEW:-32}" \
          > "$OUT/profile-$when.jsonl" 2> "$OUT/stderr.profile-$when"
        echo "{\"figure\": \"profile-$when\", \"rc\": $?}" >> "$LOG"
        python3 benches/profile_summary.py "$OUT/profile-$when.txt" --top 25 > "$OUT/profile-$when.md"
        head -1 "$OUT/profile-$when.md" | sed "s/^{/{\"figure\": \"profile-$when\", /" >> "$LOG"
        tail -n +2 "$OUT/profile-$when.md"
        xz -T4 -6 "$OUT/profile-$when.txt"
      done ;;
    launch)
      [ -f .dev/gpu-old.xz ] && xz -dc .dev/gpu-old.xz > /tmp/gpu-old && chmod +x /tmp/gpu-old
      for round in $(seq "${AB_ROUNDS:-1}"); do
        for v in old new cache; do
          g=(/tmp/gpu); [ $v = old ] && g=(/tmp/gpu-old); [ $v = cache ] && g=(env STEERMOE_METADATA_CACHE=1 /tmp/gpu)
          peak olmoe-gen-$v-$round "${g[@]}" --backend cuda --precision bf16 --what generate
          peak qwen3-gen-$v-$round "${g[@]}" --backend cuda --precision bf16 --what generate \
            --model-config benches/qwen3-30b-a3b.json --layers "${ROUTED_QWEN3_LAYERS:-12}"
        done
      done
      for v in ${LAUNCH_FULL:+old new}; do
        g=/tmp/gpu; [ $v = old ] && g=/tmp/gpu-old
        for run in $LAUNCH_FULL; do
          case $run in
            olmoe-b64) peak olmoe-b64-$v "$g" --backend cuda --precision bf16 --what generate --gen-batch 64 ;;
            qwen3-48-b*) peak $run-$v "$g" --backend cuda --precision bf16 --what generate \
              --model-config benches/qwen3-30b-a3b.json --gen-batch ${run#qwen3-48-b} ;;
          esac
        done
      done ;;
    ncu)
      for shape in olmoe qwen3; do
        cfg=(); [ $shape = qwen3 ] && cfg=(--model-config benches/qwen3-30b-a3b.json)
        for new in "${NCU_NEW:-8}" 64; do
          peak $shape-ncu-plain-new$new "${GEN[@]}" "${cfg[@]}" --layers "${NCU_LAYERS:-4}" --new-tokens $new
        done
        NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu | head -1)
        timeout "${FIGURE_TIMEOUT:-300}" "$NCU" --clock-control none --cache-control none \
          --metrics gpu__time_duration.sum --csv --page raw --log-file "$OUT/ncu-$shape.log" \
          -o /tmp/ncu-$shape -f "${GEN[@]}" "${cfg[@]}" --layers "${NCU_LAYERS:-4}" \
          --new-tokens "${NCU_NEW:-8}" > "$OUT/ncu-$shape.jsonl" 2> "$OUT/stderr.ncu-$shape"
        echo "{\"figure\": \"ncu-$shape\", \"rc\": $?}" >> "$LOG"
        "$NCU" --import /tmp/ncu-$shape.ncu-rep --csv --page raw --metrics gpu__time_duration.sum \
          > "$OUT/ncu-$shape.csv" 2>> "$OUT/stderr.ncu-$shape"
        wc -l "$OUT/ncu-$shape.csv"; xz -T4 -6 "$OUT/ncu-$shape.csv"
      done ;;
    ops)
      for b in 16 64; do
        peak olmoe-ops-b$b "$GPU_BENCH" --backend cuda --precision bf16 --what decode-ops --gen-batch $b
        peak qwen3-ops-b$b "$GPU_BENCH" --backend cuda --precision bf16 --what decode-ops --gen-batch $b \
          --model-config benches/qwen3-30b-a3b.json
      done ;;
    memory)
      peak olmoe-b16-memory "${GEN[@]}"
      peak qwen3-b16-memory "${GEN[@]}" --model-config benches/qwen3-30b-a3b.json ;;
    qwen3)
      peak qwen3-b16-shared "${GEN[@]}" --model-config benches/qwen3-30b-a3b.json
      peak qwen3-b64-shared "${GEN[@]}" --model-config benches/qwen3-30b-a3b.json --gen-batch 64
      # The same binary with the decode kernels of 58135d5 on (routed experts, a cube a row, the
      # add fused into the norm) turned off: the baseline on this machine.
      [ -z "${QWEN3_BASELINE:-}" ] || peak qwen3-b16-baseline env STEERMOE_ROUTED_EXPERTS=0 \
        STEERMOE_ROUTE_KERNEL=row STEERMOE_FUSED_RESIDUAL=0 "${GEN[@]}" --model-config benches/qwen3-30b-a3b.json
      # With QWEN3_ARGMAX_BASELINE set, batch 16 again with burn's one-level argmax.
      [ -z "${QWEN3_ARGMAX_BASELINE:-}" ] || peak qwen3-b16-argmax-burn env STEERMOE_ARGMAX=burn \
        "${GEN[@]}" --model-config benches/qwen3-30b-a3b.json ;;
    nsys)
      NSYS=$(command -v nsys || ls /usr/local/cuda*/bin/nsys /opt/nvidia/nsight-systems/*/bin/nsys 2>/dev/null | head -1)
      if [ -n "$NSYS" ]; then
        timeout 240 "$NSYS" profile -t cuda -o "$OUT/gen" --force-overwrite true "$GPU_BENCH" --backend cuda \
          --precision bf16 --what generate ${NSYS_ARGS:-} > "$OUT/nsys.log" 2>&1
        "$NSYS" stats -r cuda_gpu_kern_sum,cuda_api_sum -f csv -o "$OUT/gen" "$OUT/gen.nsys-rep" >> "$OUT/nsys.log" 2>&1
        rm -f "$OUT/gen.nsys-rep" "$OUT/gen.sqlite"
      else
        echo "no nsys on this machine" > "$OUT/nsys.log"
      fi ;;
    hf)
      peak hf-olmoe env WHAT=gen IMPLS=grouped_mm GEN_B=16,64 python3 benches/hf_anchor.py
      peak hf-qwen3 env ARCH=qwen3 WHAT=gen IMPLS=grouped_mm GEN_B=16,64 python3 benches/hf_anchor.py ;;
    serve)
      mkdir -p "$OUT/serve"
      OUT="$OUT/serve" FIGURE_TIMEOUT=150 ROUNDS=${ROUNDS:-8} timeout "${SERVE_S:-300}" \
        bash benches/serve.sh > "$OUT/serve/run.log" 2>&1
      echo "serve rc $?" >> "$OUT/serve/run.log"
      rm -rf /tmp/olmoe-1b-7b-random ;;
    oom)
      mkdir -p "$OUT/oom"
      OUT="$OUT/oom" PROCS=${PROCS:-6} HEADROOM_GB=${HEADROOM_GB:-20} \
        timeout "${OOM_S:-280}" bash benches/oom_stress.sh > "$OUT/oom/run.log" 2>&1
      echo "oom_stress rc $?" >> "$OUT/oom/run.log" ;;
  esac
done
ls -la "$OUT"
