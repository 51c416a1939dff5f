#!/usr/bin/env bash
# Device call 3 of 2026-12-06: the full-parameter RASA jobs calls 1-2 left, and k128 anti-ranked seeds 1-4.
set -u
cd "$(dirname "$0")/.."
xz -dc .dev/steermoe.xz > /tmp/steermoe && chmod +x /tmp/steermoe
export STEERMOE=/tmp/steermoe
P="[1,2] full,train_on=deepinception;[4] full,train_on=deepinception|[4] full,train_on=flipattack;[2,3] full,train_on=johnny;[4] full,train_on=johnny"
DP="[1,2,3,4] k128,experts=anti_ranked"
mkdir -p "$OUT/rasa" "$OUT/dose"
( RASA_PROCS="$P" OUT="$OUT/rasa" BUDGET=300 bash benches/method/device.sh rasa > "$OUT/rasa/run.log" 2>&1 ) &
( DOSE_PROCS="$DP" OUT="$OUT/dose" BUDGET=290 bash benches/method/device.sh dose > "$OUT/dose/run.log" 2>&1 ) &
wait
for d in rasa dose; do tar -C "$OUT" -cf "$OUT/$d.tar" "$d" && rm -r "$OUT/$d"; done
ls -la "$OUT"
