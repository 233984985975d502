"""Prints the DeiT accuracy table (bench/scripts/deit-accuracy.sh): one row per run directory holding
a summary.json, then each quantized run's bits by layer type.

Layer types, from timm's parameter paths: embed (patch_embed.proj), qkv, proj (attn.proj), fc1, fc2
(mlp.fc1 / fc2), head. Per type: layers, weights, weight-averaged bits and the range.

    python3 bench/scripts/deit_table.py runs/deit
"""
import json
import os
import re
import sys

TYPES = ["embed", "qkv", "proj", "fc1", "fc2", "head"]


def layer_types(names):
    """Maps every quantized layer name to its type."""
    types = {}
    for name in names:
        if name == "patch_embed.proj":
            types[name] = "embed"
        elif name == "head":
            types[name] = "head"
        elif m := re.fullmatch(r"blocks\.\d+\.(attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)", name):
            types[name] = m.group(1).split(".")[1]
        else:
            raise ValueError(f"unrecognised DeiT layer {name}")
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
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/deit")
