#!/usr/bin/env python3
"""Summarise a folded-stack CPU profile (`benches/gpu.rs --cpu-profile DIR`, one
`thread;root;...;leaf count` line per distinct stack): per thread, its samples and the functions
where they landed (self) and that were on the stack (inclusive), generic arguments elided.

    python3 benches/profile_folded.py DIR/train.folded [--top 25]

Standard library only.
"""
import argparse
import collections
import re
import sys


def short(name: str) -> str:
    """`a::b::<c as d>::f<T>` -> `<c as d>::f` with generics dropped, up to three path parts."""
    out, depth = [], 0
    for ch in name:
        if ch == "<":
            depth += 1
            if depth == 1:
                out.append("<")
            continue
        if ch == ">":
            depth -= 1
            if depth == 0:
                out.append(">")
            continue
        if depth == 0:
            out.append(ch)
    s = "".join(out).replace("<>", "")
    s = re.sub(r"::h[0-9a-f]{16}$", "", s)
    parts = s.split("::")
    return "::".join(parts[-3:])


def thread_kind(name: str) -> str:
    """Thread names differ by id only (`tokio-…-3`); keep what says what the thread is."""
    return re.sub(r"[-_ ]?\d+$", "", name) or name


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("folded")
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    threads = collections.Counter()
    leaf = collections.defaultdict(collections.Counter)
    incl = collections.defaultdict(collections.Counter)
    with open(args.folded) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            n = int(count)
            frames = stack.split(";")
            t = thread_kind(frames[0])
            names = [short(x) for x in frames[1:] if x]
            threads[t] += n
            if names:
                leaf[t][names[-1]] += n
            for name in set(names):
                incl[t][name] += n
    total = sum(threads.values())
    print(f"{total} samples")
    for t, n in threads.most_common():
        print(f"\n== thread {t!r}: {n} samples ({100 * n / total:.1f}%)")
        print("  self:")
        for name, c in leaf[t].most_common(args.top):
            print(f"    {100 * c / n:5.1f}%  {name}")
        print("  inclusive:")
        for name, c in incl[t].most_common(args.top):
            print(f"    {100 * c / n:5.1f}%  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
