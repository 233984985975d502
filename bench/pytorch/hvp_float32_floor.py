"""How far float32 autograd itself is from float64 on one block of H·v: PyTorch double backward on an
`msq-bench hvp` output file in float64, in float32, and in float32 with only LAYER's module in float64,
each compared on LAYER's block, next to MSQ's float32 H·v on the same block.

    python hvp_float32_floor.py OUT.safetensors [LAYER] [PROBE ...]   (default conv1.weight, probes 0 and 5)

Made for ResNet-18's stem on Fashion-MNIST, whose block is the one above 1e-3 (bench/README).
"""
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file

from models import reference_model


class Float64(nn.Module):
    """Runs a module in float64 inside a float32 network."""

    def __init__(self, module):
        super().__init__()
        self.inner = module.double()

    def forward(self, x):
        return self.inner(x.double()).float()


def hv(t, meta, dtype, probe, layer, layer_float64=False):
    m = reference_model(meta["model"], int(meta["in_channels"]), int(meta["classes"]))
    sd = {k: v for k, v in t.items() if not k.startswith(("probe.", "hv.", "calibration."))}
    m.load_state_dict(sd, strict=False)
    m = m.to(dtype).eval()
    names = sorted({k.split(".", 2)[2] for k in t if k.startswith("probe.0.")})
    params = dict(m.named_parameters())
    if layer_float64:
        path = layer.rsplit(".", 1)[0]
        parent, _, child = path.rpartition(".")
        owner = m.get_submodule(parent) if parent else m
        setattr(owner, child, Float64(getattr(owner, child)))
        params[layer] = m.get_submodule(path).inner.weight
    ps = [params[n] for n in names]
    x = t["calibration.images"].to(dtype)
    loss = F.cross_entropy(m(x), t["calibration.labels"])
    g = torch.autograd.grad(loss, ps, create_graph=True)
    v = [t[f"probe.{probe}.{n}"].to(p.dtype) for n, p in zip(names, ps)]
    return dict(zip(names, torch.autograd.grad(sum((a * b).sum() for a, b in zip(g, v)), ps)))[layer].double()


def main():
    path = sys.argv[1]
    layer = sys.argv[2] if len(sys.argv) > 2 else "conv1.weight"
    probes = [int(a) for a in sys.argv[3:]] or [0, 5]
    with safe_open(path, "pt") as f:
        meta = f.metadata()
    t = load_file(path)
    for j in probes:
        ref = hv(t, meta, torch.float64, j, layer)
        err = lambda a: ((a - ref).norm() / ref.norm()).item()
        print(f"probe {j}: {layer}: torch float32 {err(hv(t, meta, torch.float32, j, layer)):.3e}; "
              f"torch float32 with {layer.rsplit('.', 1)[0]} in float64 {err(hv(t, meta, torch.float32, j, layer, True)):.3e}; "
              f"msq float32 {err(t[f'hv.{j}.{layer}'].double()):.3e} (all against torch float64)")


if __name__ == "__main__":
    main()
