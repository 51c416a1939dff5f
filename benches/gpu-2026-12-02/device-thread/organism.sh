#!/usr/bin/env bash
# The organism's full split on CUDA with the steermoe binary of this commit (device call 6).
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}
xz -dc .dev/steermoe_x.xz > /tmp/steermoe; chmod +x /tmp/steermoe
mkdir -p ../shared/data; for d in alpaca-eval olmoe-fwo; do [ -f ../shared/data/$d.json ] || cp .dev/$d.json ../shared/data/; done
rm -rf runs/organism-cuda; time timeout 240 /tmp/steermoe --no-tui run --config configs/organism-cuda.toml
