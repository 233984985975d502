"""Prints the DeiT accuracy table (bench/scripts/deit-accuracy.sh): one row per run directory holding
a summary.json, then each quantized run's bits by layer type.

Layer types, from timm's parameter paths: embed (patch_embed.proj), qkv, proj (attn.proj), fc1, fc2
(mlp.fc1 / fc2), head. Per type: layers, weights, weight-averaged bits and the range.

    python3 bench/scripts/deit_table.py runs/deit
"""
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bits_table import print_tables  # noqa: E402

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
    print_tables(root, TYPES, layer_types)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/deit")
