#!/usr/bin/env bash
# Issue 18: DeiT-Tiny on Fashion-MNIST, adapted to 28×28 (patch 4 → 49 patches, depth 6; see the
# README's model list), the 10k recipe for transformers: first 10k training images, full 10k test
# set, 10 epochs, batch 128, AdamW lr 1e-3 (β 0.9/0.999, weight decay 0.05, warm-up 1 epoch,
# cosine), seed 0. Rows: float, MSQ at 10.67x (sign counted; the paper's 16x; weights only, float
# activations), DoReFa 3-bit scaled (10.67x); msq-10.67-act8 and dorefa3-act8 (not in the default
# ROWS) add 8-bit activations, as the paper's ViT rows (LSQ's signed quantizer on every linear). One run per process (about 14 min each with 2
# threads on a quiet 2-core machine); finished runs in $RUNS are kept, an interrupted one is
# resumed. ROWS picks a subset, so two shells can share the grid; then bench/scripts/deit_table.py
# prints accuracies, C and the bits by layer type.
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${RUNS:-runs/deit}
ROWS=${ROWS:-"float msq-10.67 dorefa3"}
THREADS=${THREADS:-2}
RECIPE="--model deit-tiny --dataset fashion-mnist --epochs 10 --limit-train 10000 --batch-size 128 --optimizer adamw --lr 1e-3 --weight-decay 0.05 --warmup-epochs 1 --threads $THREADS --seed 0"
source bench/scripts/accuracy-grid.sh
accuracy_grid bench/scripts/deit_table.py $RECIPE
