#!/usr/bin/env python3
"""Predicted data-parallel scaling efficiency of MSQ's training step (issue 19, item 6).

Ring all-reduce of B bytes over P ranks (one rank per node, the node's NIC all its own):
    T_comm(P) = 2(P-1)/P * B / bandwidth + 2(P-1) * alpha
exposed = max(0, T_comm - hide * T_step), efficiency = T_step / (T_step + exposed), where T_step
is one rank's compute per step and `hide` the fraction of it the all-reduce can run behind
(the backward's share, ~2/3, when the buckets overlap; 0 when they do not). Weak scaling keeps
the per-rank batch (the global batch grows with P); strong scaling keeps the global batch, so
each rank's step shrinks in proportion (an optimistic linear shrink) while T_comm does not.

The defaults are this repository's measurements (bench/README.md, "Data-parallel training");
override any of them to re-run with your own:
    python3 bench/scripts/scaling_model.py [--alpha-us 10] [--hide 0] [--r18-ms ...] ...
"""
import argparse

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
# Per-rank step time at batch 16, 224², 1 thread (ms); see the README for where each comes from.
p.add_argument("--r18-ms", type=float, default=5022.0)
p.add_argument("--r50-ms", type=float, default=15859.0)
p.add_argument("--deit-ms", type=float, default=19479.0)
p.add_argument("--per-rank-batch", type=int, default=16, help="the batch the step times above are for")
p.add_argument("--global-batch", type=int, default=256, help="strong scaling's fixed global batch (ImageNet ResNet's 256)")
p.add_argument("--alpha-us", type=float, default=10.0, help="per-message latency, µs")
p.add_argument("--hide", type=float, default=0.0, help="fraction of T_step the all-reduce can hide behind")
p.add_argument("--ranks", type=int, nargs="+", default=[8, 64, 256])
p.add_argument("--gbits", type=float, nargs="+", default=[10.0, 100.0])
a = p.parse_args()

# Float32 gradient bytes per step = 4 × trainable parameters (msq-bench dp-step --bytes-only,
# 1000 classes); MSQ's quantizers add only their scales, and the gradients stay float32.
MODELS = {"resnet18": (46_758_048, a.r18_ms), "resnet50": (102_228_128, a.r50_ms), "deit-small": (88_202_656, a.deit_ms)}


def comm_s(nbytes, ranks, gbits):
    return 2 * (ranks - 1) / ranks * nbytes * 8 / (gbits * 1e9) + 2 * (ranks - 1) * a.alpha_us * 1e-6


def efficiency(step_s, nbytes, ranks, gbits):
    exposed = max(0.0, comm_s(nbytes, ranks, gbits) - a.hide * step_s)
    return step_s / (step_s + exposed)


print(f"alpha {a.alpha_us:g} µs, hide {a.hide:g} of the step; weak = {a.per_rank_batch} images per rank, "
      f"strong = global batch {a.global_batch} split over P (per-rank step scaled by its batch)")
head = "| model | MB/step | step/rank (s) | Gbit/s | " + " | ".join(
    f"P={r} T_comm ms | P={r} weak | P={r} strong" for r in a.ranks) + " |"
print(head)
print("|" + "|".join([":--"] + ["--:"] * (head.count("|") - 2)) + "|")
for name, (nbytes, ms) in MODELS.items():
    step = ms / 1000
    for g in a.gbits:
        cells = []
        for r in a.ranks:
            per_rank = a.global_batch / r
            strong_step = step * per_rank / a.per_rank_batch
            cells += [f"{comm_s(nbytes, r, g) * 1000:.0f}", f"{efficiency(step, nbytes, r, g):.0%}",
                      f"{efficiency(strong_step, nbytes, r, g):.0%} ({per_rank:g}/rank)"]
        print(f"| {name} | {nbytes / 1e6:.1f} | {step:.2f} | {g:g} | " + " | ".join(cells) + " |")

# Where each stops scaling: the largest P (powers of 2) with strong-scaling efficiency ≥ 50 %;
# the P from which the latency term outgrows the bandwidth term; and how many times faster than
# ours a rank (a many-core node, a GPU) must step before weak scaling at the largest P drops to 50 %.
print()
for name, (nbytes, ms) in MODELS.items():
    for g in a.gbits:
        r, last = 2, None
        while a.global_batch / r >= 1:
            if efficiency(ms / 1000 * a.global_batch / r / a.per_rank_batch, nbytes, r, g) >= 0.5:
                last = r
            r *= 2
        # 2(P-1)·α > 2(P-1)/P · B/bandwidth  ⇔  P > B / (bandwidth · α)
        cross = nbytes * 8 / (g * 1e9) / (a.alpha_us * 1e-6)
        top = max(a.ranks)
        # efficiency 50 % ⇔ exposed = T_step ⇔ T_step = T_comm / (1 + hide)
        speedup = ms / 1000 / (comm_s(nbytes, top, g) / (1 + a.hide))
        print(f"{name} at {g:g} Gbit/s: strong scaling (global {a.global_batch}) ≥ 50 % up to P = {last}; "
              f"latency term > bandwidth term from P ≈ {cross:,.0f}; weak scaling at P = {top} falls to 50 % "
              f"for a rank {speedup:.0f}× faster than ours")
