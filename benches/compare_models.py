#!/usr/bin/env python3
"""Compare two models in Hub layout tensor by tensor (issue 19: the two-GPU run's final weights
against the one-GPU run's). Standard library only: safetensors is a JSON header and raw
little-endian data.

    python3 benches/compare_models.py A_DIR B_DIR [--tolerance REL]

Prints one JSON line per tensor that differs, with its max |a - b| over max |a| (relative to the
tensor's largest magnitude), then a summary line: tensors compared, bit-identical, differing, the
largest relative difference, and whether every difference is within --tolerance (default 1e-2:
bf16 rounding is 2^-8 = 3.9e-3 of a value; TF32 about 5e-4). Exits 1 when the two models do not
hold the same tensor names, shapes and dtypes, 2 when a difference exceeds the tolerance.
"""
import argparse
import json
import struct
import sys
from array import array
from pathlib import Path


def read_safetensors(path):
    """name -> (dtype, shape, raw bytes) of one file."""
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        out[name] = (info["dtype"], info["shape"], data[base + start : base + end])
    return out


def read_model(directory):
    """Every tensor of every `*.safetensors` file in `directory` (shards included)."""
    files = sorted(Path(directory).glob("*.safetensors"))
    if not files:
        sys.exit(f"{directory}: no .safetensors file")
    tensors = {}
    for f in files:
        for name, t in read_safetensors(f).items():
            if name in tensors:
                sys.exit(f"{directory}: tensor {name} is in two files")
            tensors[name] = t
    return tensors


def values(dtype, raw):
    """The tensor's values as Python floats."""
    if dtype == "F32":
        a = array("f")
        a.frombytes(raw)
    elif dtype == "BF16":
        h = array("H")
        h.frombytes(raw)
        a = array("f")
        a.frombytes(b"".join(struct.pack("<I", v << 16) for v in h))
    elif dtype == "F16":
        a = [struct.unpack("<e", raw[i : i + 2])[0] for i in range(0, len(raw), 2)]
    else:
        raise ValueError(f"dtype {dtype} is not compared")
    if sys.byteorder != "little" and isinstance(a, array):
        a.byteswap()
    return a


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--tolerance", type=float, default=1e-2)
    args = p.parse_args()
    a, b = read_model(args.a), read_model(args.b)
    if a.keys() != b.keys():
        only = sorted(a.keys() ^ b.keys())
        print(json.dumps({"what": "mismatch", "tensors_in_one_only": only[:20], "count": len(only)}))
        sys.exit(1)
    identical, differing, worst = 0, 0, 0.0
    for name in sorted(a):
        (da, sa, ra), (db, sb, rb) = a[name], b[name]
        if (da, sa) != (db, sb):
            print(json.dumps({"what": "mismatch", "tensor": name, "a": [da, sa], "b": [db, sb]}))
            sys.exit(1)
        if ra == rb:
            identical += 1
            continue
        differing += 1
        va, vb = values(da, ra), values(db, rb)
        scale = max(abs(x) for x in va) or 1.0
        diff = max(abs(x - y) for x, y in zip(va, vb))
        rel = diff / scale
        worst = max(worst, rel)
        print(json.dumps({"what": "tensor", "tensor": name, "dtype": da, "shape": sa, "max_abs_diff": diff, "max_abs": scale, "rel": rel}))
    ok = worst <= args.tolerance
    print(json.dumps({"what": "summary", "tensors": len(a), "identical": identical, "differing": differing, "max_rel": worst, "tolerance": args.tolerance, "within": ok}))
    sys.exit(0 if ok else 2)


if __name__ == "__main__":
    main()
