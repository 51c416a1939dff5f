#!/usr/bin/env python3
"""Nsight Compute's kernel durations of a short generation (benches/results/call-5.sh's `ncu`
part: `ncu --metrics gpu__time_duration.sum --csv --page raw`), summarised per decode step.

A pass of the model starts with the embedding lookup (`select_kernel`); the gpu bench generates
three times (first, again, again) with a prompt pass and NEW decode steps each, so the last run's
decode steps are passes 2·(NEW+1)+1 … 3·(NEW+1)-1. Prints, as Markdown, every decode step's
kernel time and launches, and the kernels of those steps by name (µs a step, launches a step,
µs a launch), then one JSON line of figures.

    python3 benches/ncu_summary.py ncu-qwen3.csv[.xz] --new 8 [--layers 4]
"""
import argparse
import collections
import csv
import io
import json
import lzma


def rows(path):
    opener = lzma.open if path.endswith(".xz") else open
    with opener(path, "rt") as f:
        table = list(csv.reader(io.StringIO(f.read())))
    head, units = table[0], table[1]
    name, dur = head.index("Kernel Name"), head.index("gpu__time_duration.sum")
    scale = {"ns": 1e-3, "us": 1.0, "usecond": 1.0, "ms": 1e3, "msecond": 1e3, "s": 1e6}[units[dur]]
    return [(r[name], float(r[dur].replace(",", "")) * scale) for r in table[2:] if len(r) > dur]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("csv")
    ap.add_argument("--new", type=int, default=8, help="new tokens a run")
    ap.add_argument("--layers", type=int, default=4)
    a = ap.parse_args()
    data = rows(a.csv)
    starts = [i for i, (n, _) in enumerate(data) if n.startswith("select_kernel")]
    passes = a.new + 1
    assert len(starts) == 3 * passes, f"{len(starts)} passes, expected {3 * passes}"
    steps = []
    for p in range(2 * passes + 1, 3 * passes):
        end = starts[p + 1] if p + 1 < len(starts) else len(data)
        steps.append(data[starts[p]:end])
    totals = [sum(d for _, d in s) for s in steps]
    print("| decode step | kernel µs | launches |\n|---|---|---|")
    for i, (t, s) in enumerate(zip(totals, steps)):
        print(f"| {i + 1} | {t:.1f} | {len(s)} |")
    by = collections.defaultdict(lambda: [0, 0.0])
    for s in steps:
        for n, d in s:
            by[n[:70]][0] += 1
            by[n[:70]][1] += d
    print("\n| kernel | µs a step | launches a step | µs a launch |\n|---|---|---|---|")
    for n, (c, d) in sorted(by.items(), key=lambda x: -x[1][1]):
        print(f"| `{n}` | {d / len(steps):.1f} | {c / len(steps):.1f} | {d / c:.2f} |")
    mean = sum(totals) / len(totals)
    fig = {"decode_steps": len(steps), "kernel_us_per_step_mean": round(mean, 1),
           "kernel_us_per_step_min": round(min(totals), 1), "kernel_us_per_step_max": round(max(totals), 1),
           "launches_per_step_mean": round(sum(len(s) for s in steps) / len(steps), 1),
           "layers": a.layers}
    for key, prefix in [("attention", "decode_attention"), ("routed_gate_up", "routed_gate_up"),
                        ("routed_down", "routed_down"), ("lm_head_or_largest_gemm", "nvjet_sm90_tst_384x16")]:
        hits = [(c, d) for n, (c, d) in by.items() if n.startswith(prefix)]
        if hits:
            c, d = map(sum, zip(*hits))
            fig[f"{key}_us_per_launch"] = round(d / c, 2)
    print("\n" + json.dumps(fig))


if __name__ == "__main__":
    main()
