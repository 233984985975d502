"""PyTorch half of bench/scripts/check-safetensors.sh (safetensors in and out of MSQ, issue 15).

    make-case MODEL DIR [--seed S] [--batch N] [--size HW] [--channels C]
        The PyTorch twin of `msq --model MODEL` (models.reference_model, 10 classes) with random
        weights and random batch-norm statistics, in eval mode: writes DIR/weights.safetensors
        (its state_dict, num_batches_tracked included), DIR/input.safetensors (`input`, a random
        batch) and DIR/expected.safetensors (`logits`, PyTorch's output on it).
    compare EXPECTED GOT [--tolerance T]
        Max relative error of GOT's `logits` against EXPECTED's: max|got - expected| / max|expected|
        (relative to the logits' scale, so logits near 0 do not divide by ~0); exit 1 above T (1e-4).
    test-batch FILE OUT [--data-dir DIR] [--limit-test N]
        The Fashion-MNIST test images normalised as FILE's metadata says, as OUT (`input`), for
        `msq-bench logits`.
    eval-export FILE [--data-dir DIR] [--limit-test N] [--batch-size B] [--msq-logits LOGITS]
        Loads an `msq export --format safetensors` FILE into the PyTorch twin with load_state_dict
        (strict), attaches the PACT input quantizers its metadata describes (msq.activation_bits,
        msq.input_alpha.*), normalises the Fashion-MNIST test split as the metadata says and
        prints `test_accuracy A` (4 decimals, as `msq eval`). With LOGITS (`msq-bench logits` on
        the test-batch of the same images) also MSQ's accuracy from them, how many predictions
        differ, and the max relative logit error; and, as the yardstick of float32 rounding, how
        many predictions PyTorch's own float64 evaluation changes.
"""
import argparse
import json
import os
import sys

import numpy as np
import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file, safe_open

from models import CIFAR_DEPTHS, reference_model
from train_fashion_mnist import read_idx


def make_case(a):
    torch.manual_seed(a.seed)
    cin = a.channels if a.channels else (1 if a.model in CIFAR_DEPTHS else 3)
    model = reference_model(a.model, cin, 10, a.size)
    # Random statistics and affine parameters, so a BN tensor loaded into the wrong slot shows.
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.num_batches_tracked.fill_(7)
            elif isinstance(m, nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
            elif isinstance(m, nn.Linear):
                if m.bias is not None:  # Swin's patch-merging reduction has none
                    m.bias.uniform_(-0.5, 0.5)
            if hasattr(m, "relative_position_bias_table"):
                # Swin: a bias of order 1 and queries/keys far from uniform attention, so a wrong
                # table index, head layout or mask shows in the logits.
                m.relative_position_bias_table.normal_(0, 1)
                m.qkv.weight.normal_(0, 0.15)
    model.eval()
    x = torch.randn(a.batch, cin, a.size, a.size)
    with torch.no_grad():
        logits = model(x)
    os.makedirs(a.dir, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, os.path.join(a.dir, "weights.safetensors"))
    save_file({"input": x.contiguous()}, os.path.join(a.dir, "input.safetensors"))
    save_file({"logits": logits.contiguous()}, os.path.join(a.dir, "expected.safetensors"))
    print(f"{a.model}: {len(state)} state_dict tensors, input {list(x.shape)}, logits {list(logits.shape)} "
          f"(max |logit| {logits.abs().max().item():.4g}) in {a.dir}")


def compare(a):
    expected = load_file(a.expected)["logits"].double()
    got = load_file(a.got)["logits"].double()
    if got.shape != expected.shape:
        print(f"shape mismatch: {list(got.shape)} vs {list(expected.shape)}")
        sys.exit(1)
    err = ((got - expected).abs().max() / expected.abs().max()).item()
    ok = err <= a.tolerance
    print(f"max_relative_error {err:.3e} ({'within' if ok else 'ABOVE'} {a.tolerance:g}; "
          f"max|Δ| / max|logit| over {expected.numel()} logits)")
    sys.exit(0 if ok else 1)


class PACT(nn.Module):
    """MSQ's PACT input quantizer (CKernels/quant.c pact_one), float32, round half to even."""

    def __init__(self, alpha, bits):
        super().__init__()
        self.alpha = torch.tensor(max(alpha, 1e-6), dtype=torch.float32)
        self.levels = torch.tensor(float(2 ** bits - 1), dtype=torch.float32)

    def forward(self, x):
        alpha, levels = self.alpha.to(x.dtype), self.levels.to(x.dtype)
        c = torch.minimum(torch.clamp(x, min=0.0), alpha)
        return torch.round((c * levels) / alpha) * alpha / levels


def attach_pact(model, meta):
    """Forward pre-hooks quantizing the inputs of the layers named in msq.input_alpha.*; returns their count."""
    if "msq.activation_bits" not in meta:
        return 0
    bits = int(meta["msq.activation_bits"])
    modules = dict(model.named_modules())
    count = 0
    for key, value in meta.items():
        if not key.startswith("msq.input_alpha."):
            continue
        layer = key[len("msq.input_alpha."):]
        if layer not in modules:
            raise SystemExit(f"metadata {key}: the model has no module {layer}")
        q = PACT(float(value), bits)
        modules[layer].register_forward_pre_hook(lambda _m, args, q=q: (q(args[0]),) + tuple(args[1:]))
        count += 1
    return count


def export_metadata(path):
    with safe_open(path, framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("msq.dataset") != "fashion-mnist":
        raise SystemExit(f"{path}: trained on {meta.get('msq.dataset')}; this helper evaluates fashion-mnist only")
    return meta


def test_split(a, meta):
    """The first --limit-test test images, normalised as the metadata says, and their labels."""
    mean = torch.tensor(json.loads(meta["msq.normalization_mean"]), dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(json.loads(meta["msq.normalization_std"]), dtype=torch.float32).view(1, -1, 1, 1)
    x = read_idx(os.path.join(a.data_dir, "t10k-images-idx3-ubyte.gz"))
    y = read_idx(os.path.join(a.data_dir, "t10k-labels-idx1-ubyte.gz"))
    if a.limit_test:
        x, y = x[: a.limit_test], y[: a.limit_test]
    x = torch.tensor(x, dtype=torch.float32).unsqueeze(1) / 255.0
    return ((x - mean) / std).contiguous(), torch.tensor(y, dtype=torch.long)


def test_batch(a):
    x, _ = test_split(a, export_metadata(a.file))
    save_file({"input": x}, a.out)
    print(f"{len(x)} normalised test images in {a.out}")


def eval_export(a):
    meta = export_metadata(a.file)
    state = load_file(a.file)
    shape = json.loads(meta["msq.input_shape"])
    model = reference_model(meta["msq.model"], shape[0], int(meta["msq.num_classes"]), shape[1])
    model.load_state_dict(state, strict=True)
    model.eval()
    hooks = attach_pact(model, meta)
    x, y = test_split(a, meta)
    with torch.no_grad():
        logits = torch.cat([model(x[i:i + a.batch_size]) for i in range(0, len(x), a.batch_size)])
    bits = {k[len("msq.weight_bits."):]: int(v) for k, v in meta.items() if k.startswith("msq.weight_bits.")}
    print(f"pytorch eval: {meta['msq.model']} load_state_dict(strict=True) of {len(state)} tensors, "
          f"{len(bits)} quantized weights at {min(bits.values())}-{max(bits.values())} bits, "
          f"{hooks} PACT input quantizers, {len(x)} images")
    if a.msq_logits:
        ours = load_file(a.msq_logits)["logits"]
        differ = (ours.argmax(1) != logits.argmax(1)).sum().item()
        err = ((ours.double() - logits.double()).abs().max() / logits.double().abs().max()).item()
        print(f"msq logits on the same images: accuracy {(ours.argmax(1) == y).float().mean().item():.4f}, "
              f"{differ} of {len(y)} predictions differ from PyTorch's, max_relative_error {err:.3e}")
        # Rounding noise alone: the same PyTorch model in float64. PACT's rounding turns a last-bit
        # difference at a level boundary into a whole activation step, so quantized activations
        # amplify it; the count is what float32 arithmetic of one implementation already costs.
        model.double()
        with torch.no_grad():
            exact = torch.cat([model(x[i:i + a.batch_size].double()) for i in range(0, len(x), a.batch_size)])
        err64 = ((logits.double() - exact).abs().max() / exact.abs().max()).item()
        print(f"pytorch float32 vs float64: {(exact.argmax(1) != logits.argmax(1)).sum().item()} of {len(y)} predictions differ, "
              f"max_relative_error {err64:.3e}, float64 accuracy {(exact.argmax(1) == y).float().mean().item():.4f}")
    print(f"test_accuracy {(logits.argmax(1) == y).float().mean().item():.4f}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make-case")
    m.add_argument("model")
    m.add_argument("dir")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--batch", type=int, default=8)
    m.add_argument("--size", type=int, default=32)
    m.add_argument("--channels", type=int, default=0, help="input channels (default 1 for CIFAR ResNets, 3 otherwise)")
    c = sub.add_parser("compare")
    c.add_argument("expected")
    c.add_argument("got")
    c.add_argument("--tolerance", type=float, default=1e-4)
    t = sub.add_parser("test-batch")
    t.add_argument("file")
    t.add_argument("out")
    e = sub.add_parser("eval-export")
    e.add_argument("file")
    e.add_argument("--batch-size", type=int, default=256)
    e.add_argument("--msq-logits")
    for q in (t, e):
        q.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
        q.add_argument("--limit-test", type=int, default=0)
    a = p.parse_args()
    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    {"make-case": make_case, "compare": compare, "test-batch": test_batch, "eval-export": eval_export}[a.cmd](a)


if __name__ == "__main__":
    main()
