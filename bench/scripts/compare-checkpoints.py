#!/usr/bin/env python3
"""How far apart two msq checkpoints' parameters are (issue 19: P = 2 vs P = 1).

Usage: compare-checkpoints.py A.msqckpt B.msqckpt
Prints the worst tensor's max|A − B| / max|A| and the global relative L2 distance over every
parameter (weights, biases, batch-norm γ and β; not the running statistics or the optimizer's
momentum), then how many elements (and tensors) differ in any bit, running statistics included. File layout: Sources/MSQ/Training/Checkpoint.swift.
"""
import json
import math
import struct
import sys


def load(path):
    data = open(path, "rb").read()
    if data[:8] != b"MSQCKPT\0":
        sys.exit(f"{path}: not an msq checkpoint")
    length = struct.unpack_from("<Q", data, 12)[0]
    header = json.loads(data[20:20 + length])
    offset, tensors = 20 + length, {}
    for entry in header["tensors"]:
        count = math.prod(entry["shape"])
        tensors[entry["name"]] = struct.unpack_from(f"<{count}f", data, offset)
        offset += 4 * count
    return tensors


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    a, b = load(sys.argv[1]), load(sys.argv[2])
    worst, worst_name, num, den, compared = 0.0, "", 0.0, 0.0, 0
    for name, x in a.items():
        if "running" in name or name.startswith("optimizer"):
            continue
        y = b[name]
        scale = max(abs(v) for v in x) or 1.0
        d = max(abs(p - q) for p, q in zip(x, y)) / scale
        if d > worst:
            worst, worst_name = d, name
        num += sum((p - q) ** 2 for p, q in zip(x, y))
        den += sum(p * p for p in x)
        compared += 1
    model = [name for name in a if not name.startswith("optimizer")]
    differing = [sum(1 for p, q in zip(a[n], b[n]) if p != q) for n in model]
    print(f"worst tensor max|Δ|/max|w| {worst:.3e} ({worst_name or '-'}); "
          f"global relative L2 {math.sqrt(num / den) if den else 0:.3e}; {compared} parameters; "
          f"{sum(differing)} of {sum(len(a[n]) for n in model)} elements differ "
          f"({sum(1 for d in differing if d)} of {len(model)} tensors)")


if __name__ == "__main__":
    main()
