"""Summarises bench/scripts/hessian-modes.sh: accuracy mean ± sd per Hessian mode and how the per-layer
k decisions differ between the modes (usage: python3 hessian_modes_table.py RUNS_DIR).

Runs are RUNS/<mode>-s<seed>/summary.json with their logs RUNS/<mode>-s<seed>.log (the pruning
tables: layer, params, bits, r, Tr(H), ±se, Ω, k, change). At the first pruning interval every mode
of one seed sits at the same weights (nothing differs before the first Hessian estimate), so the k
chosen there compare the traces themselves; later intervals follow different trajectories.
"""
import glob
import json
import os
import re
import statistics
import sys

MODES = [("auto", "Hessian on, new default (Gauss-Newton)"), ("cd", "Hessian on, old central differences"),
         ("off", "Hessian off")]
ROW = re.compile(r"^  (\S+)\s+(\d+)\s+(\d+)\s+([\d.]+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\d)\s*(.*)$")


def intervals(log):
    """Per pruning interval: {layer: (trace or None, k)}."""
    out, cur = [], None
    for line in open(log):
        if line.startswith("pruning interval"):
            cur = {}
            out.append(cur)
        elif cur is not None:
            m = ROW.match(line.rstrip("\n"))
            if m:
                tr = m.group(5)
                cur[m.group(1)] = (float(tr) if tr not in ("-", "nan") else None, int(m.group(8)))
    return out


def mean_sd(xs):
    return (statistics.mean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0)


def main(runs):
    print("| mode | seeds | test accuracy (mean ± sd) | C (sign counted) | C_paper | forced / total drops "
          "| Hessian s (share of run) | negative trace estimates |")
    print("|---|---|---|---|---|---|---|---|")
    per_mode = {}
    for mode, label in MODES:
        runs_m = sorted(glob.glob(os.path.join(runs, f"{mode}-s*/summary.json")))
        if not runs_m:
            continue
        s = [json.load(open(p)) for p in runs_m]
        logs = [p.replace("/summary.json", ".log") for p in runs_m]
        per_mode[mode] = {json.load(open(p))["seed"]: intervals(l) for p, l in zip(runs_m, logs)}
        acc = mean_sd([x["test_accuracy"] for x in s])
        c = mean_sd([x["compression_ratio"] for x in s])
        cp = mean_sd([x["compression_ratio_paper"] for x in s])
        forced = sum(x["forced_prunings"] for x in s)
        total = sum(len(x["pruning_events"]) for x in s)
        hs = sum(x["hessian_seconds"] for x in s)
        ts = sum(x["train_seconds"] for x in s)
        neg = sum(1 for ivs in per_mode[mode].values() for iv in ivs for tr, _ in iv.values() if tr is not None and tr < 0)
        est = sum(1 for ivs in per_mode[mode].values() for iv in ivs for tr, _ in iv.values() if tr is not None)
        print(f"| {label} | {','.join(str(x['seed']) for x in s)} | {acc[0]:.4f} ± {acc[1]:.4f} | {c[0]:.2f} ± {c[1]:.2f} "
              f"| {cp[0]:.2f} | {forced} / {total} | {hs:.0f} of {ts:.0f} ({100 * hs / ts:.1f} %) | {neg} of {est} |")
    if "auto" in per_mode and "cd" in per_mode:
        print()
        print("k at the first pruning interval (same weights in both modes): layers where the modes chose differently")
        for seed in sorted(set(per_mode["auto"]) & set(per_mode["cd"])):
            a, b = per_mode["auto"][seed][0], per_mode["cd"][seed][0]
            diff = [f"{l} (GN k={a[l][1]}, CD k={b[l][1]})" for l in a if l in b and a[l][1] != b[l][1]]
            print(f"- seed {seed}: {len(diff)} of {len(a)} layers differ: {', '.join(diff) if diff else 'none'}")
            ratio = [b[l][0] / a[l][0] for l in a if l in b and a[l][0] and b[l][0] is not None]
            if ratio:
                print(f"  trace ratio CD / GN per layer at that interval: median {statistics.median(ratio):.2f}, "
                      f"min {min(ratio):.2f}, max {max(ratio):.2f}")
        for mode in ("auto", "cd"):
            ks = [k for ivs in per_mode[mode].values() for iv in ivs for _, k in iv.values()]
            print(f"- {mode}: k = 2 in {sum(1 for k in ks if k == 2)} of {len(ks)} layer-intervals")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/hessian-modes")
