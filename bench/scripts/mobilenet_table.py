"""Prints the MobileNetV3 accuracy table (bench/scripts/mobilenet-accuracy.sh): one row per run
directory holding a summary.json, then each quantized run's bits by layer type.

Layer types, from torchvision's parameter paths: stem (features.0.0), expand 1x1, depthwise and
project 1x1 (an inverted-residual block's convs features.N.block.I.0: expand, depthwise, project
when there are three, depthwise, project when there are two), SE (block.I.fc1 / fc2), last 1x1
(features.N.0, the conv to 6x the width), classifier (classifier.0 / .3). Per type: layers,
weights, weight-averaged bits and the range.

    python3 bench/scripts/mobilenet_table.py runs/mobilenet
"""
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bits_table import print_tables  # noqa: E402
from collections import defaultdict  # noqa: E402

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
    print_tables(root, TYPES, layer_types)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/mobilenet")
