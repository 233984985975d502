"""Prints the MobileNetV3 accuracy table (bench/scripts/mobilenet-accuracy.sh): one row per run
directory holding a summary.json, then each quantized run's bits by layer type.

Layer types, from torchvision's parameter paths: stem (features.0.0), expand 1x1, depthwise and
project 1x1 (an inverted-residual block's convs features.N.block.I.0: expand, depthwise, project
when there are three, depthwise, project when there are two), SE (block.I.fc1 / fc2), last 1x1
(features.N.0, the conv to 6x the width), classifier (classifier.0 / .3). Per type: layers,
weights, weight-averaged bits and the range.

    python3 bench/scripts/mobilenet_table.py runs/mobilenet
"""
import json
import os
import re
import sys
from collections import defaultdict

TYPES = ["stem", "expand 1x1", "depthwise", "SE", "project 1x1", "last 1x1", "classifier"]


def layer_types(names):
    """Maps every quantized layer name to its type."""
    types, blocks = {}, defaultdict(list)
    for name in names:
        if name == "features.0.0":
            types[name] = "stem"
        elif name.startswith("classifier."):
            types[name] = "classifier"
        elif re.fullmatch(r"features\.\d+\.block\.\d+\.fc[12]", name):
            types[name] = "SE"
        elif m := re.fullmatch(r"features\.(\d+)\.block\.(\d+)\.0", name):
            blocks[int(m.group(1))].append((int(m.group(2)), name))
        elif re.fullmatch(r"features\.\d+\.0", name):
            types[name] = "last 1x1"
        else:
            raise ValueError(f"unrecognised MobileNetV3 layer {name}")
    for convs in blocks.values():
        ordered = [n for _, n in sorted(convs)]
        roles = ["expand 1x1", "depthwise", "project 1x1"] if len(ordered) == 3 else ["depthwise", "project 1x1"]
        if len(ordered) != len(roles):
            raise ValueError(f"a block with {len(ordered)} convs: {ordered}")
        types.update(zip(ordered, roles))
    return types


def main(root):
    runs = sorted(d for d in os.listdir(root) if os.path.isfile(os.path.join(root, d, "summary.json")))
    if not runs:
        sys.exit(f"no finished runs (summary.json) under {root}")
    summaries = {r: json.load(open(os.path.join(root, r, "summary.json"))) for r in runs}
    print("| run | method | test accuracy | C (sign counted) | C (paper) | average weight bits | train seconds | peak RSS (MiB) |")
    print("|---|---|---|---|---|---|---|---|")
    for r, s in summaries.items():
        c, cp, bits = s.get("compression_ratio"), s.get("compression_ratio_paper"), s.get("average_weight_bits")
        fmt = lambda v, d=2: "-" if v is None else f"{v:.{d}f}"
        print(f"| {r} | {s['method']} | {s['test_accuracy']:.4f} | {fmt(c)} | {fmt(cp)} | {fmt(bits, 3)} | "
              f"{s['train_seconds']:.0f} | {s['peak_rss_bytes'] / 2**20:.0f} |")
    for r, s in summaries.items():
        layers = s.get("layers")
        if not layers:
            continue
        types = layer_types([l["name"] for l in layers])
        print(f"\n{r}: bits by layer type (weight-averaged; range)\n")
        print("| type | layers | weights | bits | range |")
        print("|---|---|---|---|---|")
        for t in TYPES:
            rows = [l for l in layers if types[l["name"]] == t]
            if not rows:
                continue
            weights = sum(l["params"] for l in rows)
            avg = sum(l["params"] * l["bits"] for l in rows) / weights
            lo, hi = min(l["bits"] for l in rows), max(l["bits"] for l in rows)
            print(f"| {t} | {len(rows)} | {weights:,} | {avg:.2f} | {lo}–{hi} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/mobilenet")
