#!/usr/bin/env python3
"""Tally benches/oom_stress.sh's runs: each pressured run either exited 75 naming the failed
allocation, or wrote the quiet run's figures. Figures compare exactly where they are counts, rates
or text (every answer in responses.jsonl), and floats to REL (1e-6) relative: a GPU's reductions
(float32 sums of per-token log-likelihoods) do not add in a fixed order, and two quiet runs on one
H100 differed by 4e-8 relative in the benign NLL (2026-12-07), while the faults this test hunts
were off by 8% or negative. The largest relative difference seen is reported.

    python3 benches/oom_tally.py WORKDIR PROCS
"""
import json, sys
from pathlib import Path

REL = 1e-6
w, procs = Path(sys.argv[1]), int(sys.argv[2])


def figures(d):
    v = json.loads((w / d / "eval.json").read_text())

    def strip(x):
        if isinstance(x, dict):
            return {k: strip(y) for k, y in x.items()
                    if "second" not in k and "time" not in k and k not in ("started", "finished", "out", "dir", "path")}
        if isinstance(x, list):
            return [strip(y) for y in x]
        return x
    responses = w / d / "responses.jsonl"
    return strip(v), responses.read_text() if responses.exists() else None


def compare(a, b, worst):
    """Whether a and b agree (floats to REL); worst[0] keeps the largest relative difference."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(compare(a[k], b[k], worst) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(compare(x, y, worst) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        if not (isinstance(a, (int, float)) and isinstance(b, (int, float))):
            return False
        rel = abs(a - b) / max(abs(a), abs(b), 1e-30)
        worst[0] = max(worst[0], rel)
        return rel <= REL
    return a == b


quiet = figures("quiet")
worst = [0.0]
print(json.dumps({"what": "oom_stress_quiet_repeat", "same": compare(figures("quiet2"), quiet, worst),
                  "bit_identical": figures("quiet2") == quiet, "max_rel_diff": worst[0]}))
tally = {"same": 0, "out_of_memory": 0, "wrong": 0, "other_failure": 0}
for i in range(1, procs + 1):
    name = f"p{i}"
    status = int((w / f"{name}.status").read_text())
    log = (w / f"{name}.log").read_text()
    diff = [0.0]
    if status == 0:
        kind = "same" if compare(figures(name), quiet, diff) else "wrong"
    elif status == 75 and "out of device memory" in log:
        kind = "out_of_memory"
    else:
        kind = "other_failure"
    tally[kind] += 1
    print(json.dumps({"what": "oom_stress_run", "run": name, "status": status, "outcome": kind,
                      "max_rel_diff": diff[0] if status == 0 else None,
                      "last_line": log.strip().splitlines()[-1][:300] if log.strip() else ""}))
print(json.dumps({"what": "oom_stress", "procs": procs, "rel_tolerance": REL, **tally}))
