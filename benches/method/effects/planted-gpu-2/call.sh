#!/usr/bin/env bash
# Device call 1 of 2026-12-06 (evening): issue 43's planted organisms again, every ranking cell
# (the exact-ablation cells did not finish in the afternoon's call), exact ablation measuring only
# the ranking's removal (`analysis.ablate_both = false`, zero), beside random sets and the oracle;
# and issue 38's missing dose rows: generation-scope forced-off doses (10 seeds) and the trained
# top 32 at the generation and response scopes (5 seeds). Five processes at most on the GPU.
set -u
cd "$(dirname "$0")/../../../.."
xz -dc .dev/steermoe.xz > /tmp/steermoe && chmod +x /tmp/steermoe
export STEERMOE=/tmp/steermoe
s10='[0,1,2,3,4,5,6,7,8,9]'; s5='[0,1,2,3,4]'
DP="$s10 steer_generation,experts=risk_diff steer_generation,experts=anti_ranked steer_generation,experts=random"
DP="$DP;$s5 k32_generation,experts=risk_diff k32_generation,experts=random k32_response,experts=risk_diff k32_response,experts=random"
PC="prompt,experts=risk_diff prompt,experts=random prompt,experts=planted"
for v in attribution attribution-unsafe attribution-ablation attribution-ablation-unsafe ablation ablation-unsafe; do
  PC="$PC $v,experts=risk_diff"
done
mkdir -p "$OUT/dose" "$OUT/plant"
( DOSE_PROCS="$DP" OUT="$OUT/dose" BUDGET=${BUDGET:-510} bash benches/method/device.sh dose > "$OUT/dose/run.log" 2>&1 ) &
( OUT="$OUT/plant" BUDGET=${BUDGET:-510} PLANT_SEEDS="0 1 2" PLANTED_JOBS=3 PLANTED_CELLS="$PC" \
    PLANT_SET='plant.steps=400' PLANTED_SET='analysis.ablate_both=false' \
    bash benches/method/device.sh plant > "$OUT/plant/run.log" 2>&1 ) &
wait
for d in dose plant; do tar -C "$OUT" -cf "$OUT/$d.tar" "$d" && rm -r "$OUT/$d"; done
ls -la "$OUT"
