#!/usr/bin/env bash
# Issue 4's accuracy table on Fashion-MNIST (ResNet-20, seed 0, batch 128, lr 0.1, no augmentation):
#   full training set, 8 epochs: FP, DoReFa 3-bit, BSQ, CSQ and MSQ at 10.67x (about 20 min each);
#   first 10k images, 6 epochs: DoReFa 2/4-bit and MSQ at 12.8x and 16x (about 4 min each).
# Runs already finished in $RUNS are kept (their summary.json is reused); an interrupted run is
# resumed. Prints one markdown table at the end.
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${RUNS:-runs/accuracy}
mkdir -p "$RUNS"
swift build -c release >/dev/null
MSQ=$(swift build -c release --show-bin-path)/msq
swift build -c release --package-path bench >/dev/null
BENCH=$(swift build -c release --package-path bench --show-bin-path)/msq-bench
FULL="--model resnet20 --dataset fashion-mnist --epochs 8 --batch-size 128 --lr 0.1 --seed 0"
SUB="--model resnet20 --dataset fashion-mnist --epochs 6 --limit-train 10000 --batch-size 128 --lr 0.1 --seed 0"
source bench/scripts/resumable-run.sh
run full-fp       $FULL --method fp
run full-dorefa3  $FULL --method dorefa --weight-bits 3 --dorefa-scaled
run full-bsq      $FULL --method bsq --target-compression 10.67
run full-csq      $FULL --method csq --target-compression 10.67
run full-msq3     $FULL --method msq --target-compression 10.67
run sub-fp        $SUB --method fp
run sub-dorefa2   $SUB --method dorefa --weight-bits 2 --dorefa-scaled
run sub-dorefa3   $SUB --method dorefa --weight-bits 3 --dorefa-scaled
run sub-dorefa4   $SUB --method dorefa --weight-bits 4 --dorefa-scaled
run sub-msq3      $SUB --method msq --target-compression 10.67
run sub-msq128    $SUB --method msq --target-compression 12.8
run sub-msq16     $SUB --method msq --target-compression 16
"$BENCH" accuracy-table "$RUNS"/full-{fp,dorefa3,bsq,csq,msq3} "$RUNS"/sub-{fp,dorefa2,dorefa3,dorefa4,msq3,msq128,msq16}
