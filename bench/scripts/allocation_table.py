"""Summarises bench/scripts/allocation-table.sh (usage: python3 allocation_table.py RUNS_DIR).

Runs are RUNS/<row>-s<seed>/summary.json. Per row: test accuracy mean ± sd over the seeds found,
C (sign counted) and C_paper (magnitude bits only, MSQ-SPEC §3), forced / total precision drops,
the epoch the target was met (mean), and seed 0's scheme. Then the full-set runs (full-*-s0).
"""
import glob
import json
import os
import re
import statistics
import sys

ROWS = [
    ("float", "float"),
    ("dorefa3", "DoReFa 3-bit, scaled, per-tensor (10.67x)"),
    ("dorefa3-pc", "DoReFa 3-bit, scaled, per-channel (10.67x)"),
    ("dorefa2", "DoReFa 2-bit, scaled, per-tensor (16x)"),
    ("dorefa2-pc", "DoReFa 2-bit, scaled, per-channel (16x)"),
    ("msq-paper-10.67", "MSQ --preset paper, 10.67x"),
    ("msq-10.67", "MSQ default, 10.67x"),
    ("msq-pc-10.67", "MSQ default, per-channel, 10.67x"),
    ("msq-12.8", "MSQ default, 12.8x"),
    ("msq-off-10.67", "MSQ default, Hessian off, 10.67x"),
    ("msq-pull-10.67", "MSQ default + scheduled pull ρ = 2, 10.67x"),
    ("hawq-10.67", "HAWQ, 10.67x"),
    ("hawq-12.8", "HAWQ, 12.8x"),
    ("smpq-10.67", "SMPQ (Shapley selection), 10.67x"),
    ("dmpq-10.67", "DMPQ (α selection, same search), 10.67x"),
    ("smpq-12.8", "SMPQ (Shapley selection), 12.8x"),
    ("dmpq-12.8", "DMPQ (α selection, same search), 12.8x"),
    ("fixed", "fixed scheme of MSQ default seed 0, QAT from step 0"),
    ("fixed-off", "fixed scheme of MSQ Hessian-off seed 0, QAT from step 0"),
    ("msq-slow-10.67", "MSQ, spec pace (interval 0.5, deadline 0.6), 10.67x"),
    ("msq-off-slow-10.67", "MSQ, spec pace, Hessian off, 10.67x"),
    ("msq-slow-12.8", "MSQ, spec pace, 12.8x"),
    ("fixed-slow", "fixed scheme of MSQ spec-pace seed 0, QAT from step 0"),
]


def mean_sd(xs):
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def load(runs, row):
    out = {}
    for p in sorted(glob.glob(os.path.join(runs, f"{row}-s*/summary.json"))):
        # "fixed-s*" also matches "fixed-slow-s0": only <row>-s<digits> is this row's.
        if not re.fullmatch(re.escape(row) + r"-s\d+", os.path.basename(os.path.dirname(p))):
            continue
        s = json.load(open(p))
        out[s["seed"]] = s
    return out


def scheme(s):
    return " ".join(str(layer["bits"]) for layer in s.get("layers", []))


def fmt_row(label, runs):
    seeds = sorted(runs)
    xs = [runs[k] for k in seeds]
    acc, sd = mean_sd([x["test_accuracy"] for x in xs])
    c = statistics.mean(x["compression_ratio"] for x in xs)
    cp = statistics.mean(x["compression_ratio_paper"] for x in xs)
    drops = sum(len(x.get("pruning_events", [])) for x in xs)
    forced = sum(x.get("forced_prunings", 0) for x in xs)
    met = [x.get("final_phase_start_epoch") for x in xs if x.get("final_phase_start_epoch") is not None]
    met_s = f"{statistics.mean(met):.2f}" if met else "-"
    drops_s = f"{forced} / {drops}" if drops else "-"
    # One seed has no spread: say so rather than print ± 0.
    acc_s = f"{acc:.4f} ± {sd:.4f}" if len(xs) > 1 else f"{acc:.4f} (one seed)"
    first = runs.get(0, xs[0])
    return (f"| {label} | {','.join(map(str, seeds))} | {acc_s} | {c:.2f} | {cp:.2f} | {drops_s} "
            f"| {met_s} | {scheme(first)} |")


def main(runs):
    print("| row | seeds | test accuracy (mean ± sd) | C | C_paper | forced / total drops | target met (epoch) "
          "| scheme of the first seed (conv1 … fc) |")
    print("|---|---|---|---|---|---|---|---|")
    for row, label in ROWS:
        r = load(runs, row)
        if r:
            print(fmt_row(label, r))
    full = sorted(glob.glob(os.path.join(runs, "full-*-s0/summary.json")))
    if full:
        print()
        print("| full training set, 8 epochs, seed 0 | test accuracy | C | C_paper | forced / total drops |")
        print("|---|---|---|---|---|")
        for p in full:
            s = json.load(open(p))
            name = os.path.basename(os.path.dirname(p))
            drops = len(s.get("pruning_events", []))
            # A float run has no compression fields: 1x, 32 bits per weight.
            c, cp = s.get("compression_ratio", 1.0), s.get("compression_ratio_paper", 1.0)
            print(f"| {name} | {s['test_accuracy']:.4f} | {c:.2f} | {cp:.2f} | {s.get('forced_prunings', 0)} / {drops} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/allocation")
