"""Single-layer Rademacher probes for `msq-bench hvp --probes` (see check_hvp.py).

Reads the quantized weights' names and shapes from the `probe.0.NAME` entries of IN_BASE (any
`msq-bench hvp` output) and writes OUT_PROBES with one probe per selected layer: probe j is
Rademacher (+-1, float32) on layer j's weight and zero on every other layer's, stored as
`probe.j.NAME` for every NAME (so every probe names every quantized weight). Layers are taken in
the network's order (conv1, layer1.0.conv1, ..., fc) when IN_BASE's metadata names a model this
directory's models.reference_model builds, else in name order with digit runs compared as numbers;
the metadata key `layers` lists them in probe order, comma-separated, and `seed` the seed.

    python bench/pytorch/make_probes.py IN_BASE.safetensors OUT_PROBES.safetensors [--seed S] [--layers all|NAME,...]
"""
import argparse
import re
import sys

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file


def natural_key(name):
    """`layer10` after `layer9`: digit runs compare as numbers."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def probe_layers(path):
    """({NAME: shape} of the quantized weights, from `probe.0.NAME` entries of an hvp file; metadata)."""
    try:
        with safe_open(path, framework="numpy") as f:
            shapes = {k[len("probe.0."):]: tuple(f.get_slice(k).get_shape()) for k in f.keys() if k.startswith("probe.0.")}
            metadata = f.metadata() or {}
    except FileNotFoundError:
        raise SystemExit(f"make_probes: {path}: no such file")
    except Exception as e:
        raise SystemExit(f"make_probes: {path}: not a readable safetensors file ({e})")
    if not shapes:
        raise SystemExit(f"make_probes: {path} has no probe.0.NAME entries; give it a file written by "
                         "`msq-bench hvp --random 1 --out FILE`")
    return shapes, metadata


def network_order(names, metadata):
    """`names` in the reference model's parameter order, or natural name order if it cannot be built."""
    try:
        from models import reference_model  # imports torch: only when the order is wanted

        model = reference_model(metadata["model"], int(metadata["in_channels"]), int(metadata["classes"]))
        order = [n for n, _ in model.named_parameters() if n in names]
        if len(order) == len(names):
            return order
    except Exception:
        pass
    return sorted(names, key=natural_key)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("base", help="an msq-bench hvp output holding probe.0.NAME for every quantized weight")
    ap.add_argument("out", help="where to write the probes (safetensors)")
    ap.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    ap.add_argument("--layers", default="all", help="'all' (default) or comma-separated weight names")
    args = ap.parse_args(argv)

    shapes, metadata = probe_layers(args.base)
    names = network_order(set(shapes), metadata)
    if args.layers == "all":
        selected = names
    else:
        selected = [n for n in args.layers.split(",") if n]
        unknown = [n for n in selected if n not in shapes]
        if unknown or not selected:
            raise SystemExit(f"make_probes: unknown layer(s) {', '.join(unknown) or '(none given)'}; "
                             f"the quantized weights are: {', '.join(names)}")
        if len(set(selected)) != len(selected):
            raise SystemExit("make_probes: --layers names a layer twice")

    rng = np.random.Generator(np.random.PCG64(args.seed))
    tensors = {}
    for j, layer in enumerate(selected):
        for name in names:
            if name == layer:
                v = (rng.integers(0, 2, size=shapes[name]) * 2 - 1).astype(np.float32)
            else:
                v = np.zeros(shapes[name], dtype=np.float32)
            tensors[f"probe.{j}.{name}"] = v
    save_file(tensors, args.out, metadata={"layers": ",".join(selected), "seed": str(args.seed)})
    print(f"make_probes: {len(selected)} single-layer probes over {len(names)} quantized weights -> {args.out}")


if __name__ == "__main__":
    sys.exit(main())
