#!/usr/bin/env bash
# AdamW against SGD on the calibration recipe's float model (ResNet-20, Fashion-MNIST, first 10k
# training images, 6 epochs, batch 128, one thread), seeds 0–2 each:
#   SGD   --lr 0.1 (Nesterov momentum 0.9, weight decay 5e-4: the default recipe)
#   AdamW --optimizer adamw --lr 4e-3 --weight-decay 0.05 (β 0.9/0.999, ε 1e-8: PyTorch's defaults)
# Both use the same warm-up (0.5 epochs) and cosine schedule. About 6–12 min per run on 2 cores.
# README "The msq command" has the figures (2026-12-07: SGD 0.8895 ± 0.0019, AdamW 4e-3 0.8854 ± 0.0049).
# Runs already finished in $RUNS are kept, interrupted ones resumed. Prints test accuracy per
# seed and mean ± sd (sample standard deviation) per optimizer.
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${RUNS:-runs/adamw-vs-sgd}
ADAMW_LR=${ADAMW_LR:-4e-3}
mkdir -p "$RUNS"
swift build -c release >/dev/null
MSQ=$(swift build -c release --show-bin-path)/msq
RECIPE="--model resnet20 --dataset fashion-mnist --epochs 6 --limit-train 10000 --batch-size 128 --method fp --threads 1"
source bench/scripts/resumable-run.sh
for seed in 0 1 2; do
    run sgd-s$seed   $RECIPE --seed $seed --lr 0.1
    run adamw-s$seed $RECIPE --seed $seed --optimizer adamw --lr "$ADAMW_LR" --weight-decay 0.05
done
python3 - "$RUNS" <<'PY'
import json, statistics, sys
runs = sys.argv[1]
print("| optimizer | lr | seed 0 | seed 1 | seed 2 | mean ± sd |")
print("|---|---|---|---|---|---|")
for name in ("sgd", "adamw"):
    summaries = [json.load(open(f"{runs}/{name}-s{s}/summary.json")) for s in range(3)]
    acc = [s["test_accuracy"] for s in summaries]
    cells = " | ".join(f"{a:.4f}" for a in acc)
    print(f"| {name} | {summaries[0]['lr']:g} | {cells} | {statistics.mean(acc):.4f} ± {statistics.stdev(acc):.4f} |")
PY
