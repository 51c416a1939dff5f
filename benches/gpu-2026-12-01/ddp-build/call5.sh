#!/usr/bin/env bash
# Device call 5: the ddp build (cuda,ddp) on one H200: several devices where there is one, then
# the organism's full split trained on one device with this build.
set -u
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}
xz -dc .dev/steermoe_ddp.xz > /tmp/steermoe_ddp; chmod +x /tmp/steermoe_ddp
mkdir -p ../shared/data; for d in alpaca-eval olmoe-fwo; do [ -f ../shared/data/$d.json ] || cp .dev/$d.json ../shared/data/; done
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
echo "== cpu on a ddp build"; /tmp/steermoe_ddp --no-tui run --config configs/organism-cpu.toml --out /tmp/x 2>&1 | tail -2
echo "== devices 0,1 on one GPU"; rm -rf runs/organism-cuda; timeout 200 /tmp/steermoe_ddp --no-tui run --config configs/organism-cuda.toml --devices 0,1 > $OUT/devices01.txt 2>&1; echo "rc=$?"; tail -4 $OUT/devices01.txt
echo "== one device, ddp build"; rm -rf runs/organism-cuda; (time timeout 330 /tmp/steermoe_ddp --no-tui run --config configs/organism-cuda.toml) > $OUT/organism-cuda-ddp-build.txt 2>&1; tail -12 $OUT/organism-cuda-ddp-build.txt
