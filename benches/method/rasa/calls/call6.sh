#!/usr/bin/env bash
# Device call 2 of 2026-12-06: issue 39's remaining RASA jobs (seeds 3-4, and what call 1 left),
# issue 38's forced-off doses and top-128 trained cells, and plant seed 2 again.
set -u
cd "$(dirname "$0")/.."
xz -dc .dev/steermoe.xz > /tmp/steermoe && chmod +x /tmp/steermoe
export STEERMOE=/tmp/steermoe
c() { local v=$1; shift; local out=""; for f in "$@"; do out="$out $v,train_on=$f"; done; echo "$out"; }
all="flipattack johnny deepinception"; s=[3,4]
P="$s$(c rasa $all)|[1,2]$(c full johnny)"
P="$P;$s$(c expert_only $all)|$s$(c full flipattack)"
P="$P;$s$(c router_only $all)|[0,1,2]$(c full deepinception)"
P="$P;[0,1,2,3,4]$(c random deepinception)|$s$(c random flipattack johnny)|$s$(c full johnny)"
P="$P;$s$(c seeds $all)|$s$(c full deepinception)"
s10='[0,1,2,3,4,5,6,7,8,9]'; s5='[0,1,2,3,4]'
DP="$s10 steer_prompt,experts=risk_diff steer_prompt,experts=anti_ranked steer_prompt,experts=random|$s5 k128,experts=risk_diff k128,experts=anti_ranked k128,experts=random"
mkdir -p "$OUT/rasa" "$OUT/dose" "$OUT/plant"
( RASA_PROCS="$P" OUT="$OUT/rasa" BUDGET=500 bash benches/method/device.sh rasa > "$OUT/rasa/run.log" 2>&1 ) &
( DOSE_PROCS="$DP" OUT="$OUT/dose" BUDGET=490 bash benches/method/device.sh dose > "$OUT/dose/run.log" 2>&1 ) &
( OUT="$OUT/plant" BUDGET=470 PLANT_SEEDS=2 PLANTED_JOBS=1 PLANT_SET='plant.steps=400' \
    bash benches/method/device.sh plant > "$OUT/plant/run.log" 2>&1 ) &
wait
for d in rasa dose plant; do tar -C "$OUT" -cf "$OUT/$d.tar" "$d" && rm -r "$OUT/$d"; done
ls -la "$OUT"
