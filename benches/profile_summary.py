#!/usr/bin/env python3
"""Split one train step's GPU time by kind of kernel, from cubecl's profiling log.

    CUBECL_DEBUG_OPTION=profile CUBECL_DEBUG_LOG=prof.txt gpu --what train --steps 6 --warmup-steps 5
    python3 benches/profile_summary.py prof.txt [--wall-s 3.1] [--table N] [--sort launches] [--list]

cubecl prints a table of kernel name, summed duration and launch count at every device
synchronisation and starts again; the bench synchronises once per step, so the last table is the
last (warm) step; a generation synchronises once at its end, so there the last table is its last
run. Kernels are grouped by their names; `--wall-s` (the step's wall time measured
without profiling) gives the time the device spent waiting on the host (host syncs, launches).
One JSON line out, then a Markdown table.
"""
import argparse
import json
import re
import sys

CATEGORIES = [
    ("GEMM (matmul)", re.compile(r"matmul|gemm|cmma|mma", re.I)),
    ("reductions (softmax, norms, sums, argmax/top-k)", re.compile(r"reduce|softmax|sum|mean|max|min|argm|topk|sort", re.I)),
    ("gather / scatter / select / index", re.compile(r"gather|scatter|select|index|sliceassign|slice_assign|mask", re.I)),
    ("layout copies (contiguous, cat, slice, transpose)", re.compile(r"contiguous|copy|slice|permute|transpose|swap|expand|layout", re.I)),
    ("elementwise (fused and plain)", re.compile(r"elemwise|fuse|unary|binop|cmp|cast|full|fill|clamp|powf|exp|log|sqrt|tanh|sigmoid|silu", re.I)),
    ("random and init", re.compile(r"random|prng|uniform|normal|bernoulli", re.I)),
]

DURATION = re.compile(r"^\s*([0-9.]+)\s*(ns|µs|us|ms|s)\s*$")
SCALE = {"ns": 1e-9, "µs": 1e-6, "us": 1e-6, "ms": 1e-3, "s": 1.0}


def tables(text):
    """Every summary table as a list of (name, seconds, launches)."""
    out, current = [], None
    for line in text.splitlines():
        if line.startswith("|") and "Name" in line and "Duration" in line:
            if current:
                out.append(current)
            current = []
            continue
        if current is None:
            continue
        if line.startswith("|⎯") or not line.startswith("|"):
            if current:
                out.append(current)
            current = None
            continue
        # Kernel names contain " | " themselves: the last three cells are duration, launches
        # and ratio, the name is the rest.
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 4:
            continue
        name, duration, launches = " | ".join(cells[:-3]), cells[-3], cells[-2]
        m = DURATION.match(duration)
        if not m or name.lower() == "total":
            continue
        try:
            count = int(launches)
        except ValueError:
            count = 0
        current.append((name, float(m.group(1)) * SCALE[m.group(2)], count))
    if current:
        out.append(current)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("log")
    ap.add_argument("--wall-s", type=float, default=None)
    ap.add_argument("--top", type=int, default=8)
    ap.add_argument("--table", type=int, default=-1, help="which table (index; default the last)")
    ap.add_argument("--sort", choices=["time", "launches"], default="time", help="order of the top kernels")
    ap.add_argument("--list", action="store_true", help="first list every table's kernel time and launches")
    a = ap.parse_args()
    found = tables(open(a.log, encoding="utf-8", errors="replace").read())
    if not found:
        sys.exit(f"{a.log}: no profiling table found (was CUBECL_DEBUG_OPTION=profile set?)")
    if a.list:
        for i, t in enumerate(found):
            print(json.dumps({"table": i, "kernel_s": round(sum(s for _, s, _ in t), 4), "launches": sum(n for _, _, n in t)}))
    rows = found[a.table]
    total = sum(s for _, s, _ in rows)
    split = {name: [0.0, 0] for name, _ in CATEGORIES}
    split["other"] = [0.0, 0]
    for name, s, n in rows:
        cat = next((c for c, rx in CATEGORIES if rx.search(name)), "other")
        split[cat][0] += s
        split[cat][1] += n
    result = {
        "what": "train_step_profile",
        "tables_in_log": len(found),
        "kernel_s": round(total, 4),
        "launches": sum(n for _, _, n in rows),
        "by_kind": {k: {"s": round(v[0], 4), "share": round(v[0] / total, 3), "launches": v[1]} for k, v in split.items() if v[1]},
        "table": a.table,
        "top_kernels": [{"name": n[:160], "s": round(s, 4), "launches": c}
                        for n, s, c in sorted(rows, key=lambda r: -r[2] if a.sort == "launches" else -r[1])[: a.top]],
    }
    if a.wall_s:
        result["wall_s"] = a.wall_s
        result["device_idle_s"] = round(max(a.wall_s - total, 0.0), 4)
    print(json.dumps(result))
    print()
    print("| kind | GPU time | share | launches |")
    print("|---|---|---|---|")
    for k, v in sorted(result["by_kind"].items(), key=lambda kv: -kv[1]["s"]):
        print(f"| {k} | {v['s'] * 1e3:.1f} ms | {100 * v['share']:.1f}% | {v['launches']} |")
    if a.wall_s:
        print(f"| device waiting on the host (wall {a.wall_s:.3f} s − kernels) | {result['device_idle_s'] * 1e3:.1f} ms | | |")


if __name__ == "__main__":
    main()
