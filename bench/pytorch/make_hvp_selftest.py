"""Writes an `msq-bench hvp`-shaped file whose hv entries PyTorch computed itself, to test check_hvp.py.

The H v here is computed independently of check_hvp.py's double backward: with torch.func
(forward-over-reverse jvp of the gradient for `exact`; J^T H_logits J v with jvp and vjp for
`gauss-newton`; (g(w + e v) - g(w - e v)) / 2e with e = SCALE ||w|| / ||v|| for
`central-difference`, SCALE set by --cd-scale), all in float64. A random reference model (models.reference_model) gets
non-trivial BN statistics and affine parameters; the calibration batch is random images and labels.
Probes are single-layer Rademacher ones as make_probes.py writes (`--probes single`, default) or one
probe on every layer (`--probes all`). hv entries are stored as float64 by default, so check_hvp.py
should report errors near 1e-12 (exact, gauss-newton); `--hv-dtype float32` shows the float32
storage floor. `--perturb E` multiplies the stored H v of one layer (`--perturb-layer`, default the
middle one) by 1 + E, which check_hvp.py must report as a relative error of E on that layer.

    python bench/pytorch/make_hvp_selftest.py OUT.safetensors [--model resnet20] [--in-channels 1]
        [--classes 10] [--images 8] [--size 28] [--mode exact] [--probes single|all] [--seed 0]
        [--hv-dtype float64|float32] [--perturb E] [--perturb-layer NAME]
"""
import argparse
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file
from torch.func import functional_call, grad, jvp, vjp

from check_hvp import MODES
from make_probes import natural_key
from models import MODEL_NAMES, reference_model


def randomise_batchnorm(model, gen):
    """BN statistics and affine parameters away from their initial 0/1, as after training."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.weight.data = torch.rand(c, generator=gen) + 0.5
            m.bias.data = 0.1 * torch.randn(c, generator=gen)
            m.running_mean = 0.1 * torch.randn(c, generator=gen)
            m.running_var = torch.rand(c, generator=gen) * 1.5 + 0.5


def quantized_weight_names(model):
    """Conv/linear weights, in parameter order."""
    return [f"{name}.weight" for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def hvp_function(model, names, images, labels, mode, cd_scale=1e-3):
    """v (dict name -> tensor) -> H v by torch.func, float64, model in eval mode."""
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = dict(model.named_buffers())
    w0 = {n: params[n] for n in names}

    def logits(w):
        return functional_call(model, ({**params, **w}, buffers), (images,))

    def loss(w):
        return F.cross_entropy(logits(w), labels)

    def exact(v):
        return jvp(grad(loss), (w0,), (v,))[1]

    def gauss_newton(v):
        z, jv = jvp(logits, (w0,), (v,))
        p = torch.softmax(z, dim=1)
        # Hessian of the mean cross-entropy w.r.t. the logits, per image: (diag(p) - p p^T) / N.
        hu = (p * jv - p * (p * jv).sum(dim=1, keepdim=True)) / z.shape[0]
        return vjp(logits, w0)[1](hu)[0]

    def central_difference(v):
        norm = lambda d: torch.sqrt(sum((t * t).sum() for t in d.values()))
        eps = cd_scale * norm(w0) / norm(v)
        g = grad(loss)
        plus = g({n: w0[n] + eps * v[n] for n in names})
        minus = g({n: w0[n] - eps * v[n] for n in names})
        return {n: (plus[n] - minus[n]) / (2 * eps) for n in names}

    return {"exact": exact, "gauss-newton": gauss_newton, "central-difference": central_difference}[mode]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("--model", default="resnet20", choices=MODEL_NAMES)
    ap.add_argument("--in-channels", type=int, default=1)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--size", type=int, default=28)
    ap.add_argument("--mode", default="exact", choices=MODES)
    ap.add_argument("--probes", default="single", choices=("single", "all"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--hv-dtype", default="float64", choices=("float64", "float32"))
    ap.add_argument("--perturb", type=float, default=0.0)
    ap.add_argument("--perturb-layer")
    ap.add_argument("--cd-scale", type=float, default=1e-3, help="central-difference step e = SCALE ||w|| / ||v|| (MSQ: 1e-3)")
    args = ap.parse_args(argv)

    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    model = reference_model(args.model, args.in_channels, args.classes)
    randomise_batchnorm(model, gen)
    state = {k: v.detach().float().clone() for k, v in model.state_dict().items()
             if not k.endswith("num_batches_tracked")}
    images = torch.randn(args.images, args.in_channels, args.size, args.size, generator=gen)
    labels = torch.randint(0, args.classes, (args.images,), generator=gen)
    names = quantized_weight_names(model)
    model = model.double().eval()
    shapes = {n: p.shape for n, p in model.named_parameters() if n in names}

    layers = sorted(names, key=natural_key)
    if args.probes == "single":
        probes = []
        for layer in layers:
            probes.append({n: (torch.randint(0, 2, shapes[n], generator=gen) * 2 - 1).double() if n == layer
                           else torch.zeros(shapes[n], dtype=torch.float64) for n in names})
    else:
        probes = [{n: (torch.randint(0, 2, shapes[n], generator=gen) * 2 - 1).double() for n in names}]

    hvp = hvp_function(model, names, images.double(), labels, args.mode, args.cd_scale)
    hv_dtype = torch.float64 if args.hv_dtype == "float64" else torch.float32
    perturb_layer = args.perturb_layer or names[len(names) // 2]
    if perturb_layer not in names:
        raise SystemExit(f"make_hvp_selftest: --perturb-layer {perturb_layer} is no quantized weight; valid: {', '.join(names)}")
    tensors = dict(state)
    tensors["calibration.images"] = images.contiguous()
    tensors["calibration.labels"] = labels.contiguous()
    for j, v in enumerate(probes):
        hv = hvp(v)
        for n in names:
            h = hv[n] * (1 + args.perturb) if n == perturb_layer else hv[n]
            tensors[f"probe.{j}.{n}"] = v[n].float().contiguous()
            tensors[f"hv.{j}.{n}"] = h.to(hv_dtype).contiguous()
    metadata = {"model": args.model, "classes": str(args.classes), "in_channels": str(args.in_channels),
                "mode": args.mode, "writer": "bench/pytorch/make_hvp_selftest.py"}
    save_file(tensors, args.out, metadata=metadata)
    note = f", hv of {perturb_layer} scaled by 1 + {args.perturb:g}" if args.perturb else ""
    print(f"make_hvp_selftest: {args.model} {args.mode}, {len(probes)} probes, {args.images} images "
          f"{args.in_channels}x{args.size}x{args.size}, hv {args.hv_dtype}{note} -> {args.out}")


if __name__ == "__main__":
    sys.exit(main())
