#!/usr/bin/env bash
# Out of device memory fails loudly or is right (issue 41): the embedded organism's base evaluation
# (configs/organism-dose.toml's [eval]: 100 held-out FlipAttack jailbreaks and plain goals, 100
# benign instructions, 64 trained answers) run twice on a quiet GPU, then PROCS times at once while
# a PyTorch process holds all but HEADROOM_GB of the device's memory. Every pressured run must
# either exit with status 75 and an "out of device memory" message, or write exactly the quiet
# run's figures (every number of eval.json, and every answer in responses.jsonl). One JSON line
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
python3 - "$W" "$PROCS" <<'PY' | tee "$OUT/oom_stress.jsonl"
import json, sys
from pathlib import Path
w, procs = Path(sys.argv[1]), int(sys.argv[2])
def figures(d):
    v = json.loads((w / d / "eval.json").read_text())
    def strip(x):
        if isinstance(x, dict):
            return {k: strip(y) for k, y in x.items() if "second" not in k and "time" not in k and k not in ("started", "finished", "out", "dir", "path")}
        if isinstance(x, list):
            return [strip(y) for y in x]
        return x
    responses = w / d / "responses.jsonl"
    return strip(v), responses.read_text() if responses.exists() else None
quiet = figures("quiet")
print(json.dumps({"what": "oom_stress_quiet_repeat", "same": figures("quiet2") == quiet}))
tally = {"same": 0, "out_of_memory": 0, "wrong": 0, "other_failure": 0}
for i in range(1, procs + 1):
    name = f"p{i}"
    status = int((w / f"{name}.status").read_text())
    log = (w / f"{name}.log").read_text()
    if status == 0:
        kind = "same" if figures(name) == quiet else "wrong"
    elif status == 75 and "out of device memory" in log:
        kind = "out_of_memory"
    else:
        kind = "other_failure"
    tally[kind] += 1
    print(json.dumps({"what": "oom_stress_run", "run": name, "status": status, "outcome": kind,
                      "last_line": log.strip().splitlines()[-1][:300] if log.strip() else ""}))
print(json.dumps({"what": "oom_stress", "procs": procs, **tally}))
PY
tar -C /tmp -cJf "$OUT/oom-stress.tar.xz" --exclude='*.safetensors' oom-stress
