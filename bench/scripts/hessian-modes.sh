#!/usr/bin/env bash
# Issue 12, item 6: MSQ at 10.67x on the 10k recipe (ResNet-20, Fashion-MNIST, first 10k training
# images, 6 epochs, batch 128, lr 0.1), seeds 0-2, with the Hessian traces by the new default
# (auto = Gauss-Newton, exact for these piecewise-linear ResNets), by the old float32 central
# differences, and with the Hessian off. About 4 min per run on 2 cores, 9 runs.
# Finished runs in $RUNS are kept (summary.json reused); an interrupted run is resumed.
# Then prints mean ± sd per mode and the per-layer k decisions of each run (bench/scripts/hessian_modes_table.py).
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${RUNS:-runs/hessian-modes}
SEEDS=${SEEDS:-"0 1 2"}
mkdir -p "$RUNS"
if [[ -z "${MSQ:-}" ]]; then
    swift build -c release >/dev/null
    MSQ=$(swift build -c release --show-bin-path)/msq
fi
SUB="--model resnet20 --dataset fashion-mnist --epochs 6 --limit-train 10000 --batch-size 128 --lr 0.1 --method msq --target-compression 10.67"
source bench/scripts/resumable-run.sh
for seed in $SEEDS; do
    run "auto-s$seed" $SUB --seed "$seed"
    run "cd-s$seed"   $SUB --seed "$seed" --hessian-mode central-difference
    run "off-s$seed"  $SUB --seed "$seed" --hessian off
done
python3 bench/scripts/hessian_modes_table.py "$RUNS"
