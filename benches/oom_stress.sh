#!/usr/bin/env bash
# Out of device memory fails loudly or is right (issue 41): the embedded organism's base evaluation
# (configs/organism-dose.toml's [eval]: 100 held-out FlipAttack jailbreaks and plain goals, 100
# benign instructions, 64 trained answers) run twice on a quiet GPU, then PROCS times at once while
# a PyTorch process holds all but HEADROOM_GB of the device's memory. Every pressured run must
# either exit with status 75 and an "out of device memory" message, or write the quiet run's
# figures (every answer in responses.jsonl exactly, eval.json's floats to 1e-6: benches/oom_tally.py). One JSON line
# per run and a tally.
#
#   STEERMOE=<steermoe built --features cuda> [PROCS=6] [HEADROOM_GB=12] benches/oom_stress.sh
set -uo pipefail
cd "$(dirname "$0")/.."
STEERMOE=${STEERMOE:?the steermoe binary}
OUT=${OUT:-$(mktemp -d)}
PROCS=${PROCS:-6}
HEADROOM_GB=${HEADROOM_GB:-12}
W=/tmp/oom-stress
rm -rf "$W"; mkdir -p "$W" "$OUT"
# The dose config less its [sweep] table: one evaluation of the base model.
cfg=$W/eval.toml
sed -e '/^\[sweep/,$d' -e 's/^variants = .*/variants = ["base"]/' configs/organism-dose.toml > "$cfg"
run() { # NAME: one evaluation; its log and status in $W
  "$STEERMOE" --no-tui eval --config "$cfg" --out "$W/$1" > "$W/$1.log" 2>&1
  echo $? > "$W/$1.status"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/device.txt"
run quiet
run quiet2   # a second quiet run: the figures a pressured run must match are reproducible
HEADROOM_GB=$HEADROOM_GB python3 - <<'PY' > "$W/hog.log" 2>&1 &
import os, time, torch
free, total = torch.cuda.mem_get_info()
keep = int(float(os.environ["HEADROOM_GB"]) * 2**30)
x = torch.empty(max(free - keep, 0), dtype=torch.uint8, device="cuda")
print(f"holding {x.numel() / 2**30:.1f} GiB of {total / 2**30:.1f}; {keep / 2**30:.1f} GiB left", flush=True)
open("/tmp/oom-stress/hog.ready", "w").close()
time.sleep(3600)
PY
hog=$!
for _ in $(seq 120); do [ -e "$W/hog.ready" ] && break; sleep 0.5; done
cat "$W/hog.log"
pids=()
for i in $(seq "$PROCS"); do run "p$i" & pids+=($!); done
wait "${pids[@]}"
kill $hog
python3 benches/oom_tally.py "$W" "$PROCS" | tee "$OUT/oom_stress.jsonl"
tar -C /tmp -cJf "$OUT/oom-stress.tar.xz" --exclude='*.safetensors' oom-stress
