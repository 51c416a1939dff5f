#!/usr/bin/env bash
# Device call A of 2026-12-06 (afternoon): issue 43 on planted organisms (plant seeds 0-2, every
# ranking and score: steer-d16 and trained, beside random sets and the oracle) and issue 38's
# forced-off doses (every token scope, ranked / anti-ranked / random, 10 seeds), with the
# ablation ranking's forced-off doses and the causal rankings' top 32 trained (5 seeds) on the
# natural organism; and issue 39's one missing RASA job (full-parameter on johnny, seed 3).
set -u
cd "$(dirname "$0")/.."
xz -dc .dev/steermoe.xz > /tmp/steermoe && chmod +x /tmp/steermoe
export STEERMOE=/tmp/steermoe
s10='[0,1,2,3,4,5,6,7,8,9]'; s5='[0,1,2,3,4]'
k() { local v=$1; shift; local out=""; for e in "$@"; do out="$out $v,experts=$e"; done; echo "$out"; }
DP="$s10$(k steer_prompt risk_diff anti_ranked random)|$s10$(k steer_generation risk_diff anti_ranked random)|$s10$(k steer_response risk_diff anti_ranked random)"
# A random set forced off does not depend on the ranking (steer_prompt's random sets are the same);
# a random twin of a causal ranking measures the effects again for each seed: 3 seeds of those.
DP="$DP;$s10$(k steer_ablation risk_diff anti_ranked)|$s5$(k k32_ablation risk_diff)|[0,1,2]$(k k32_ablation random)"
DP="$DP;$s5$(k k32_attribution risk_diff random)|$s5$(k k32_attribution_ablation risk_diff)|[0,1,2]$(k k32_attribution_ablation random)"
PC="prompt,experts=risk_diff prompt,experts=random prompt,experts=planted"
for v in attribution attribution-unsafe attribution-ablation attribution-ablation-unsafe ablation ablation-unsafe; do
  PC="$PC $v,experts=risk_diff"
done
mkdir -p "$OUT/dose" "$OUT/plant" "$OUT/rasa"
( RASA_PROCS="[3] full,train_on=johnny" OUT="$OUT/rasa" BUDGET=${BUDGET:-500} bash benches/method/device.sh rasa > "$OUT/rasa/run.log" 2>&1 ) &
( DOSE_PROCS="$DP" OUT="$OUT/dose" BUDGET=${BUDGET:-500} bash benches/method/device.sh dose > "$OUT/dose/run.log" 2>&1 ) &
( OUT="$OUT/plant" BUDGET=${BUDGET:-500} PLANT_SEEDS="0 1 2" PLANTED_JOBS=3 PLANTED_CELLS="$PC" \
    PLANT_SET='plant.steps=400' bash benches/method/device.sh plant > "$OUT/plant/run.log" 2>&1 ) &
wait
for d in dose plant rasa; do tar -C "$OUT" -cf "$OUT/$d.tar" "$d" && rm -r "$OUT/$d"; done
ls -la "$OUT"
