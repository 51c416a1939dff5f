#!/usr/bin/env bash
# Issue 39 on the device, part PART: RASA_SEEDS of every (variant, family), 5 processes balanced by
# the CPU run's per-variant cost.
set -u
cd "$(dirname "$0")/.."
xz -dc .dev/steermoe.xz > /tmp/steermoe && chmod +x /tmp/steermoe
export STEERMOE=/tmp/steermoe
S=${RASA_SEEDS:-[0,1,2]}
c() { local v=$1; shift; local out=""; for f in "$@"; do out="$out $v,train_on=$f"; done; echo "$out"; }
all="flipattack johnny deepinception"
P="$S$(c rasa $all);$S$(c random flipattack johnny);$S$(c seeds $all);$S$(c router_only $all)$(c expert_only $all);$S$(c full $all)$(c random deepinception)"
mkdir -p "$OUT/rasa"
RASA_PROCS="$P" OUT="$OUT/rasa" BUDGET=${B:-520} bash benches/method/device.sh rasa > "$OUT/rasa/run.log" 2>&1
tar -C "$OUT" -cf "$OUT/rasa.tar" rasa && rm -r "$OUT/rasa"
ls -la "$OUT"
