"""What the per-model accuracy tables share (mobilenet_table.py, deit_table.py): one row per run
directory holding a summary.json, then each quantized run's bits by layer type (layers, weights,
weight-averaged bits and the range), given a model's layer types."""
import json
import os
import sys


def print_tables(root, types_in_order, layer_types):
    """Prints the run table of `root` and, per quantized run, its bits by type; `layer_types` maps
    the quantized layer names to types (each one of `types_in_order`)."""
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
        for t in types_in_order:
            rows = [l for l in layers if types[l["name"]] == t]
            if not rows:
                continue
            weights = sum(l["params"] for l in rows)
            avg = sum(l["params"] * l["bits"] for l in rows) / weights
            lo, hi = min(l["bits"] for l in rows), max(l["bits"] for l in rows)
            print(f"| {t} | {len(rows)} | {weights:,} | {avg:.2f} | {lo}–{hi} |")
