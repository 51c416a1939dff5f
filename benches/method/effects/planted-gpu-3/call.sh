#!/usr/bin/env bash
# Prepared 2026-12-06 (night), not yet run (no device machine could be started): issue 43's planted organisms for the rows the rule still
# lacks. Plant seeds 0 and 2 again (GPU training is not bit for bit reproducible, so each call's
# plant is its own organism and every setting is measured on it), every ranking cell with exact
# ablation measuring only the ranking's removal (`analysis.ablate_both = false`), beside random
# sets and the oracle; the most expensive cells first. Two processes on the GPU (one per plant),
# three jobs a process.
set -u
cd "$(dirname "$0")/../../../.."
xz -dc .dev/steermoe.xz > /tmp/steermoe && chmod +x /tmp/steermoe
export STEERMOE=/tmp/steermoe
PC="ablation,experts=risk_diff ablation-unsafe,experts=risk_diff"
PC="$PC attribution-ablation,experts=risk_diff attribution-ablation-unsafe,experts=risk_diff"
PC="$PC attribution,experts=risk_diff attribution-unsafe,experts=risk_diff"
PC="$PC prompt,experts=risk_diff prompt,experts=random prompt,experts=planted"
mkdir -p "$OUT/plant"
OUT="$OUT/plant" BUDGET=${BUDGET:-520} PLANT_SEEDS="0 2" PLANTED_JOBS=3 PLANTED_CELLS="$PC" \
  PLANT_SET='plant.steps=400' PLANTED_SET='analysis.ablate_both=false' \
  bash benches/method/device.sh plant > "$OUT/plant/run.log" 2>&1
tar -C "$OUT" -cf "$OUT/plant.tar" plant && rm -r "$OUT/plant"
ls -la "$OUT"
