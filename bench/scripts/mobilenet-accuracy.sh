#!/usr/bin/env bash
# Issue 17: MobileNetV3-Small on Fashion-MNIST, adapted to 28×28 (small-input strides, batch-norm
# momentum 0.1; see the README's model list), the 10k recipe: first 10k training images, full 10k
# test set, 6 epochs, batch 128, SGD lr 0.05 (warm-up 0.5 epoch, cosine), seed 0. Rows: float,
# MSQ at 10.67x (sign counted; the paper's 16x), DoReFa 3-bit scaled (10.67x). One run per process
# (about 6 min each at one thread on a quiet 2-core machine); finished runs in $RUNS are kept, an
# interrupted one is resumed. ROWS picks a subset, so two shells can share the grid; then
# bench/scripts/mobilenet_table.py prints accuracies, C and the bits by layer type.
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${RUNS:-runs/mobilenet}
ROWS=${ROWS:-"float msq-10.67 dorefa3"}
THREADS=${THREADS:-1}
RECIPE="--model mobilenetv3-small --dataset fashion-mnist --epochs 6 --limit-train 10000 --batch-size 128 --lr 0.05 --threads $THREADS --seed 0"
source bench/scripts/accuracy-grid.sh
accuracy_grid bench/scripts/mobilenet_table.py $RECIPE
