"""PyTorch side of the Hessian-vector-product cross-check of `msq-bench hvp`.

Reads OUT.safetensors as `msq-bench hvp` writes it:
  - every parameter and BN buffer under PyTorch's state_dict names (no num_batches_tracked),
  - `calibration.images` (float32 NCHW, already normalised) and `calibration.labels` (int64),
  - for each probe j = 0, 1, ... and each quantized weight NAME (conv/linear weights):
    `probe.j.NAME` (the direction v on that weight, possibly all zero) and `hv.j.NAME` (MSQ's H v there),
  - `__metadata__`: `model` (models.MODEL_NAMES: the ResNets, MobileNetV3s, DeiTs), `classes`, `in_channels`,
    `mode` (exact|gauss-newton|central-difference).

H is the Hessian of the mean softmax cross-entropy (no label smoothing) over the calibration batch
with respect to the quantized weights only, the model in eval mode (BN running statistics), all
else fixed. This script rebuilds the model (models.reference_model), loads the file's tensors and
computes H v by double backward in float64, then reports per probe and per layer the relative error
||hv_msq - hv_torch|| / ||hv_torch||.

Which layers are compared:
  - exact, central-difference: every layer where torch's H v is nonzero (a layer where it is zero but
    MSQ's is not is compared relative to the norm of the probe's whole H v, marked `*`); the worst
    error on each probe's own layer(s) is printed separately.
  - gauss-newton: only the layers where the probe is nonzero, and only probes on a single layer. In a
    ReLU network the output is linear in each single layer's weights, so the Gauss-Newton matrix
    equals the Hessian on the diagonal blocks, not on the off-diagonal ones.

Central differences in a ReLU network do not converge to the Hessian: the perturbed weights move
some units across their kink, and each such jump of the gradient, divided by 2e, stays O(1) as e
shrinks. So in mode central-difference large errors against the exact H v on layers before the last
ReLU are expected (PyTorch's own float64 central difference at MSQ's step is off by up to ~100x on
ResNet-20's early layers, and within 1e-4 on fc). This mode therefore also compares with PyTorch's
own central difference at the same step, e = s ||w|| / ||v|| (w: all quantized weights, v: the
probe, s: metadata `relative_step`, default 1e-3, as MSQ's HessianVectorProduct), the perturbed
weights rounded to float32 as MSQ does: that column checks MSQ's implementation.

Prints a line per probe, a table per layer (worst relative error over the probes), and finally
`worst relative error over all compared layers: X (mode M)`. With --threshold T the exit status is
1 when X > T or nothing was compared; 2 means the file is unusable.

    python bench/pytorch/check_hvp.py OUT.safetensors [--threshold T] [--csv FILE] [--threads N]
"""
import argparse
import csv
import math
import re
import sys
import time

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file

from models import MODEL_NAMES, reference_model

MODES = ("exact", "gauss-newton", "central-difference")
ENTRY = re.compile(r"^(probe|hv)\.(\d+)\.(.+)$")


class Unusable(Exception):
    """The file cannot be checked; the message says why."""


def read_out(path):
    """(tensors, metadata) of an msq-bench hvp output."""
    try:
        tensors = load_file(path)
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
    except FileNotFoundError:
        raise Unusable(f"{path}: no such file")
    except Exception as e:  # safetensors raises its own types for a corrupt file
        raise Unusable(f"{path}: not a readable safetensors file ({e})")
    return tensors, metadata


def parse_metadata(metadata, path):
    """model, classes, in_channels, mode from the file's __metadata__, validated."""
    missing = [k for k in ("model", "classes", "in_channels", "mode") if k not in metadata]
    if missing:
        raise Unusable(f"{path}: __metadata__ lacks {', '.join(missing)} (has: {', '.join(sorted(metadata)) or 'nothing'})")
    model, mode = metadata["model"], metadata["mode"]
    if model not in MODEL_NAMES:
        raise Unusable(f"{path}: unknown model '{model}'; valid: {', '.join(MODEL_NAMES)}")
    if mode not in MODES:
        raise Unusable(f"{path}: unknown mode '{mode}'; valid: {', '.join(MODES)}")
    try:
        classes, in_channels = int(metadata["classes"]), int(metadata["in_channels"])
    except ValueError:
        raise Unusable(f"{path}: classes '{metadata['classes']}' and in_channels '{metadata['in_channels']}' must be integers")
    if classes < 1 or in_channels < 1:
        raise Unusable(f"{path}: classes and in_channels must be positive")
    try:
        step = float(metadata.get("relative_step", "1e-3"))
    except ValueError:
        step = math.nan
    if not (step > 0 and math.isfinite(step)):
        raise Unusable(f"{path}: relative_step '{metadata['relative_step']}' is not a positive number")
    return model, classes, in_channels, mode


def split_entries(tensors, path):
    """(state, images, labels, probes, hvs); probes and hvs map j -> {NAME: tensor}."""
    state, probes, hvs = {}, {}, {}
    for key, t in tensors.items():
        m = ENTRY.match(key)
        if m:
            (probes if m.group(1) == "probe" else hvs).setdefault(int(m.group(2)), {})[m.group(3)] = t
        elif not key.startswith("calibration."):
            state[key] = t
    for key in ("calibration.images", "calibration.labels"):
        if key not in tensors:
            raise Unusable(f"{path}: no '{key}' entry")
    if not probes:
        raise Unusable(f"{path}: no probe.j.NAME entries")
    first = min(probes)
    names = set(probes[first])
    for j in sorted(set(probes) | set(hvs)):
        for what, table in (("probe", probes), ("hv", hvs)):
            got = set(table.get(j, {}))
            if got != names:
                diff = sorted(got ^ names)
                raise Unusable(f"{path}: {what}.{j}.* does not cover the same weights as probe.{first}.* "
                               f"(differs on: {', '.join(diff[:5])}{' ...' if len(diff) > 5 else ''})")
            for name, t in table[j].items():
                if not t.is_floating_point():
                    raise Unusable(f"{path}: {what}.{j}.{name} is {t.dtype}, not floating point")
    return state, tensors["calibration.images"], tensors["calibration.labels"], probes, hvs


def build_model(model_name, classes, in_channels, state, path, image=224):
    """The reference model with the file's parameters and buffers, float64, eval mode (`image`: the
    calibration images' side, which sizes a vision transformer's position embedding)."""
    model = reference_model(model_name, in_channels, classes, image)
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise Unusable(f"{path}: its tensors do not fit {model_name}: {e}")
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise Unusable(f"{path}: state dict does not match {model_name}: missing {missing[:5]}, "
                       f"unexpected {result.unexpected_keys[:5]}")
    return model.double().eval()


def check_calibration(images, labels, in_channels, classes, path):
    if images.dim() != 4 or images.shape[1] != in_channels or not images.is_floating_point():
        raise Unusable(f"{path}: calibration.images is {images.dtype} {list(images.shape)}, expected float [N, {in_channels}, H, W]")
    if labels.dim() != 1 or labels.shape[0] != images.shape[0] or labels.dtype != torch.int64:
        raise Unusable(f"{path}: calibration.labels is {labels.dtype} {list(labels.shape)}, expected int64 [{images.shape[0]}]")
    if labels.numel() and (labels.min() < 0 or labels.max() >= classes):
        raise Unusable(f"{path}: calibration.labels outside 0..{classes - 1}")


def torch_hvps(model, images, labels, order, probes):
    """{j: [H v_j restricted to each weight in `order`]} by double backward, float64."""
    params = dict(model.named_parameters())
    for p in model.parameters():
        p.requires_grad_(False)
    weights = [params[n] for n in order]
    for w in weights:
        w.requires_grad_(True)
    # The math attention kernel: the fused CPU kernels have no double backward.
    from torch.nn.attention import SDPBackend, sdpa_kernel
    with sdpa_kernel(SDPBackend.MATH):
        loss = F.cross_entropy(model(images.double()), labels)
    grads = torch.autograd.grad(loss, weights, create_graph=True)
    out = {}
    for j in sorted(probes):
        support = [i for i, n in enumerate(order) if probes[j][n].abs().max() > 0]
        if not support:
            continue
        dot = sum((grads[i] * probes[j][order[i]].double()).sum() for i in support)
        hv = torch.autograd.grad(dot, weights, retain_graph=True, allow_unused=True)
        out[j] = [torch.zeros_like(w) if h is None else h.detach() for h, w in zip(hv, weights)]
    return out, loss.item()


def torch_central_differences(model, images, labels, order, probes, relative_step):
    """{j: [(g(w + e v) - g(w - e v)) / 2e per weight]}, e = relative_step ||w|| / ||v||, as MSQ's
    HessianVectorProduct: perturbed weights rounded to float32, gradients in float64."""
    params = dict(model.named_parameters())
    weights = [params[n] for n in order]
    saved = [w.detach().clone() for w in weights]
    wn = math.sqrt(sum(float(w.pow(2).sum()) for w in saved))
    x = images.double()
    out = {}
    try:
        for j in sorted(probes):
            v = [probes[j][n].double() for n in order]
            vn = math.sqrt(sum(float(t.pow(2).sum()) for t in v))
            if vn == 0:
                continue
            eps = relative_step * (wn if wn > 0 else 1.0) / vn
            grads = []
            for sign in (1.0, -1.0):
                with torch.no_grad():
                    for w, w0, d in zip(weights, saved, v):
                        w.copy_((w0 + sign * eps * d).float().double())
                grads.append(torch.autograd.grad(F.cross_entropy(model(x), labels), weights))
            out[j] = [(p - m) / (2 * eps) for p, m in zip(*grads)]
    finally:
        with torch.no_grad():
            for w, w0 in zip(weights, saved):
                w.copy_(w0)
    return out


def compare(order, probes, hvs, torch_hv, mode):
    """Rows (j, support, layer, |t|, |m|, error or None, own, flagged) and notes."""
    rows, notes = [], []
    for j in sorted(probes):
        support = [n for n in order if probes[j][n].abs().max() > 0]
        if j not in torch_hv:
            notes.append(f"probe {j} is zero on every weight: skipped")
            continue
        if mode == "gauss-newton" and len(support) > 1:
            notes.append(f"probe {j} spans {len(support)} layers: Gauss-Newton includes off-diagonal blocks there, skipped")
            continue
        total = math.sqrt(sum(float(t.pow(2).sum()) for t in torch_hv[j]))
        for i, name in enumerate(order):
            t, m = torch_hv[j][i], hvs[j][name].double()
            nt, nm = float(t.norm()), float(m.norm())
            own = name in support
            if mode == "gauss-newton" and not own:
                err, flagged = None, False
            elif nt > 0:
                err, flagged = float((m - t).norm()) / nt, False
            elif nm > 0:
                err, flagged = (nm / total if total > 0 else math.inf), True
            else:
                err, flagged = None, False
            rows.append((j, support, name, nt, nm, err, own, flagged))
    return rows, notes


def fmt(x):
    return "-" if x is None else f"{x:.3e}"


def report(order, rows, notes, mode, numel, cd_rows=None):
    """Prints the per-probe lines and the per-layer table (with a column against PyTorch's central
    difference when `cd_rows` is given); returns (worst, worst own)."""
    for note in notes:
        print(f"note: {note}")
    if mode == "gauss-newton":
        print("note: gauss-newton: only each probe's own layer is compared (GN equals the Hessian on diagonal blocks only)")
    by_probe = {}
    for r in rows:
        by_probe.setdefault(r[0], []).append(r)
    print("\nper probe: worst relative error on its own layer(s), and over every compared layer")
    for j, rs in by_probe.items():
        compared = [r for r in rs if r[5] is not None]
        own = [r[5] for r in compared if r[6]]
        worst = max(compared, key=lambda r: r[5], default=None)
        support = rs[0][1]
        where = support[0] if len(support) == 1 else f"{len(support)} layers"
        print(f"  probe {j:3d} on {where:32s} own {fmt(max(own, default=None))}   all {fmt(worst[5] if worst else None)}"
              + (f" ({worst[2]})" if worst else ""))

    width = max(len(n) for n in order)
    extra = f" {'vs torch CD':>12s}" if cd_rows is not None else ""
    print(f"\n{'layer':{width}s} {'params':>9s} {'compared':>8s} {'worst rel. error':>16s} {'worst on own probe':>18s}{extra}")
    for name in order:
        rs = [r for r in rows if r[2] == name and r[5] is not None]
        own = [r[5] for r in rs if r[6]]
        flag = "*" if any(r[7] for r in rs) else " "
        cd = ""
        if cd_rows is not None:
            cd = f" {fmt(max((r[5] for r in cd_rows if r[2] == name and r[5] is not None), default=None)):>12s}"
        print(f"{name:{width}s} {numel[name]:9d} {len(rs):8d} {fmt(max((r[5] for r in rs), default=None)):>16s}{flag}"
              f"{fmt(max(own, default=None)):>18s}{cd}")
    if any(r[7] for r in rows):
        print("* torch's H v is zero on this layer for some probe, MSQ's is not: error relative to the probe's whole H v")
    errors = [r[5] for r in rows if r[5] is not None]
    own = [r[5] for r in rows if r[5] is not None and r[6]]
    return (max(errors) if errors else math.nan), (max(own) if own else math.nan)


def write_csv(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["probe", "probe_layers", "layer", "norm_torch", "norm_msq", "rel_error", "own_layer"])
        for j, support, name, nt, nm, err, own, _ in rows:
            w.writerow([j, " ".join(support), name, f"{nt:.9e}", f"{nm:.9e}", "" if err is None else f"{err:.9e}", int(own)])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="an msq-bench hvp output (safetensors)")
    ap.add_argument("--threshold", type=float, help="exit 1 if the worst relative error exceeds this")
    ap.add_argument("--csv", help="also write every (probe, layer) comparison to this CSV file")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    try:
        tensors, metadata = read_out(args.out)
        model_name, classes, in_channels, mode = parse_metadata(metadata, args.out)
        state, images, labels, probes, hvs = split_entries(tensors, args.out)
        check_calibration(images, labels, in_channels, classes, args.out)
        model = build_model(model_name, classes, in_channels, state, args.out, image=images.shape[-1])
        params = dict(model.named_parameters())
        names = set(probes[min(probes)])
        unknown = sorted(n for n in names if n not in params)
        if unknown:
            raise Unusable(f"{args.out}: probe names that are no {model_name} parameter: {', '.join(unknown[:5])}")
        order = [n for n in params if n in names]
        for j in probes:
            for table, what in ((probes, "probe"), (hvs, "hv")):
                for n in order:
                    if tuple(table[j][n].shape) != tuple(params[n].shape):
                        raise Unusable(f"{args.out}: {what}.{j}.{n} has shape {list(table[j][n].shape)}, "
                                       f"the weight {list(params[n].shape)}")
    except Unusable as e:
        print(f"check_hvp: {e}", file=sys.stderr)
        return 2

    start = time.time()
    torch_hv, loss = torch_hvps(model, images, labels, order, probes)
    seconds = time.time() - start
    print(f"check_hvp: {args.out}: {model_name}, {in_channels} input channels, {classes} classes, mode {mode}")
    print(f"  {images.shape[0]} calibration images {list(images.shape[1:])}, {len(probes)} probes, "
          f"{len(order)} quantized weights; torch {torch.__version__} float64 double backward, "
          f"loss {loss:.6f}, {seconds:.1f} s")
    rows, notes = compare(order, probes, hvs, torch_hv, mode)
    cd_rows = None
    if mode == "central-difference":
        step = float(metadata.get("relative_step", "1e-3"))
        torch_cd = torch_central_differences(model, images, labels, order, probes, step)
        cd_rows, _ = compare(order, probes, hvs, torch_cd, mode)
        notes.append("central differences straddle ReLU kinks, so large errors against the exact H v are expected "
                     "before the last ReLU; the 'vs torch CD' column compares with PyTorch's central difference "
                     f"at the same step (relative_step {step:g}, weights rounded to float32)")
    if args.csv:
        write_csv(args.csv, rows)
    worst, worst_own = report(order, rows, notes, mode, {n: params[n].numel() for n in order}, cd_rows)
    if cd_rows is not None:
        cd_errors = [r[5] for r in cd_rows if r[5] is not None]
        print(f"worst relative error against PyTorch's central difference at the same step: "
              f"{max(cd_errors) if cd_errors else math.nan:.3e}")
    if mode != "gauss-newton":
        print(f"worst relative error on the probes' own layers: {worst_own:.3e}")
    print(f"worst relative error over all compared layers: {worst:.3e} (mode {mode})")
    if args.threshold is not None and not (worst <= args.threshold):
        print(f"check_hvp: FAIL: {worst:.3e} exceeds the threshold {args.threshold:g}"
              + (" (nothing was compared)" if math.isnan(worst) else ""), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
