"""PyTorch peer of `msq-bench step`: images/s and peak RSS of one training configuration.

Same models (models.py), synthetic 3-channel input (3x32x32 for resnet20, 3x224x224 for resnet18 and
torchvision's mobilenet_v3_large/small, which train with their classifier dropout as torchvision builds them),
10 classes, SGD lr 0.01, momentum 0.9, Nesterov, weight decay 5e-4 on conv/linear weights only
(MSQ's SGD skips BN parameters and biases). Methods:

  fp   forward, cross-entropy, backward, SGD step.
  msq  every Conv2d/Linear weight through an 8-bit RoundClamp quantizer with a straight-through
       estimator (per tensor, s = max|W| detached), plus the LSB L1 regulariser with k = 1 and
       lambda = 5 over all quantized weights, as msq-bench's LSBRegularizer.

Warm-up steps are not timed; each timed step is. Same options and JSON keys as `msq-bench step`
(plus torch_version and peak_rss_after_import_bytes, the peak RSS before the model is built);
prints one line.

    python bench/pytorch/train_step.py --model resnet20 --method msq --batch 128 --steps 10 --threads 2
"""
import argparse
import json
import os
import resource
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.nn.utils.parametrize as parametrize

from models import DEIT_MODELS, SWIN_MODELS, MOBILENET_MODELS, ResNet18, ResNet20, reference_model

BITS, LSB_K, LAMBDA = 8, 1, 5.0


def roundclamp_codes(w, bits):
    """Unsigned codes q = clamp(round(2^n w~), 0, 2^n - 1), w~ = 0.5 + W/(2s), and s = max|W| (no gradient).

    The float32 operations are the C kernel's, in its order (msq_roundclamp_forward), and
    torch.round rounds half to even like rintf, so the codes match bit for bit.
    """
    w = w.detach()
    s = w.abs().max()
    wt = 0.5 + w / (2 * s)
    return torch.clamp(torch.round(2.0 ** bits * wt), 0, 2 ** bits - 1), s


class RoundClampSTE(nn.Module):
    """Parametrization W -> Q_n(W) = s (q - 2^(n-1)) / 2^(n-1), with the straight-through gradient dQ/dW = 1."""

    def __init__(self, bits):
        super().__init__()
        self.bits = bits

    def forward(self, w):
        q, s = roundclamp_codes(w, self.bits)
        half = 2.0 ** (self.bits - 1)
        # An all-zero tensor quantizes to zeros (the kernel's s == 0 case) instead of 0/0.
        wq = s * (q - half) / half if s > 0 else torch.zeros_like(w)
        return w + (wq - w).detach()


def lsb_penalty(weights, bits, k):
    """Mean |lsb| over all weights, lsb = 2^n w~ - 2^k q_{n-k}; gradient through w~ only (s, q_{n-k} detached)."""
    total, count = 0.0, 0
    for w in weights:
        count += w.numel()
        s = w.detach().abs().max()
        if s == 0:
            continue  # lsb = 0 there, as in the kernel
        wt = 0.5 + w / (2 * s)
        qm = torch.clamp(torch.round(2.0 ** (bits - k) * wt.detach()), 0, 2 ** (bits - k) - 1)
        total = total + (2.0 ** bits * wt - 2.0 ** k * qm).abs().sum()
    return total / max(count, 1)


def quantize(model, bits):
    """Puts every Conv2d/Linear weight behind RoundClampSTE; returns the latent float weights."""
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    for m in layers:
        parametrize.register_parametrization(m, "weight", RoundClampSTE(bits))
    return [m.parametrizations.weight.original for m in layers]


def peak_rss_bytes():
    """Peak RSS of this process (ru_maxrss is KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


def parse_args():
    """The options of `msq-bench step` (without --act-bits), validated."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=["resnet20", "resnet18", *MOBILENET_MODELS, *DEIT_MODELS, *SWIN_MODELS], default="resnet20")
    p.add_argument("--method", choices=["fp", "msq"], default="fp")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = all cores)")
    p.add_argument("--json", help="write the result as JSON here")
    a = p.parse_args()
    if a.batch < 1 or a.steps < 1 or a.warmup < 0 or a.threads < 0:
        p.error("--batch and --steps must be >= 1, --warmup and --threads >= 0")
    return a


def main():
    a = parse_args()
    # What importing torch alone costs, so peak_rss_bytes can be read against it.
    import_rss = peak_rss_bytes()
    torch.set_num_threads(a.threads if a.threads > 0 else (os.cpu_count() or 1))
    torch.manual_seed(0)
    side = 32 if a.model == "resnet20" else 224
    if a.model in MOBILENET_MODELS or a.model in DEIT_MODELS or a.model in SWIN_MODELS:
        model = reference_model(a.model, 3, 10)
    else:
        model = ResNet20(cin=3, classes=10) if a.model == "resnet20" else ResNet18(cin=3, classes=10)
    latent = quantize(model, BITS) if a.method == "msq" else []
    decay = [p for p in model.parameters() if p.dim() > 1]
    no_decay = [p for p in model.parameters() if p.dim() <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": 5e-4}, {"params": no_decay, "weight_decay": 0}],
                          lr=0.01, momentum=0.9, nesterov=True)
    images = torch.randn(a.batch, 3, side, side)
    labels = torch.randint(0, 10, (a.batch,))
    model.train()

    def step():
        opt.zero_grad()
        loss = F.cross_entropy(model(images), labels)
        if latent:
            loss = loss + LAMBDA * lsb_penalty(latent, BITS, LSB_K)
        loss.backward()
        opt.step()

    for _ in range(a.warmup):
        step()
    ms = []
    for _ in range(a.steps):
        t0 = time.perf_counter()
        step()
        ms.append((time.perf_counter() - t0) * 1000)
    rss = peak_rss_bytes()
    mean, median = statistics.fmean(ms), statistics.median(ms)
    result = {
        "model": a.model, "method": a.method, "batch": a.batch, "steps": a.steps, "warmup": a.warmup,
        "input": f"3x{side}x{side}", "threads": torch.get_num_threads(),
        "ms_per_step": mean, "ms_per_step_median": median, "step_ms": ms,
        "images_per_second": a.batch * 1000 / mean, "images_per_second_median": a.batch * 1000 / median,
        "peak_rss_bytes": rss, "peak_rss_after_import_bytes": import_rss, "torch_version": torch.__version__,
    }
    # Worded as msq-bench step's line (stepSummaryLine), so the two read alike.
    print(f"{a.model} {a.method} batch {a.batch}: {mean:.1f} ms/step (median {median:.1f}), "
          f"{a.batch * 1000 / mean:.1f} img/s; peak RSS {rss / 1048576:.1f} MiB; {torch.get_num_threads()} threads "
          f"(PyTorch {torch.__version__})", flush=True)
    if a.json:
        tmp = a.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(result, f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(tmp, a.json)


if __name__ == "__main__":
    main()
