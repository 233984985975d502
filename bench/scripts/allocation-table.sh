#!/usr/bin/env bash
# Issue 13, item 8: ResNet-20 on Fashion-MNIST, the 10k recipe (first 10k training images, 6 epochs,
# batch 128, lr 0.1), seeds 0-2: float, uniform DoReFa, MSQ (paper preset and default), MSQ without
# the Hessian, HAWQ, the fixed-scheme controls (MSQ default's and Hessian-off's seed-0 schemes trained from step 0), and
# (issue 16) SMPQ and DMPQ, whose weights train on 9k of the 10k images (1k held out for α and φ).
# Then (ROWS=full) the full training set, 8 epochs, seed 0. One run per process, about 4 min each on
# an idle 2-core machine (the full-set runs about 25 min). Finished runs in $RUNS are kept
# (summary.json), an interrupted one is resumed. ROWS and SEEDS pick a subset, so two shells can
# share the grid; bench/scripts/allocation_table.py prints the table.
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${RUNS:-runs/allocation}
SEEDS=${SEEDS:-"0 1 2"}
ROWS=${ROWS:-"msq-10.67 dorefa3 msq-off-10.67 msq-pull-10.67 hawq-10.67 msq-12.8 fixed fixed-off msq-slow-10.67 msq-off-slow-10.67 msq-slow-12.8 fixed-slow msq-paper-10.67 dorefa3-pc msq-pc-10.67 dorefa2 dorefa2-pc hawq-12.8 float"}
mkdir -p "$RUNS"
if [[ -z "${MSQ:-}" ]]; then
    swift build -c release >/dev/null
    MSQ=$(swift build -c release --show-bin-path)/msq
fi
THREADS=${THREADS:-2}
RECIPE="--model resnet20 --dataset fashion-mnist --epochs 6 --limit-train 10000 --batch-size 128 --lr 0.1 --threads $THREADS"
SLOW="--prune-interval 0.5 --prune-deadline 0.6"
FULL="--model resnet20 --dataset fashion-mnist --epochs 8 --batch-size 128 --lr 0.1 --threads $THREADS --seed 0"
source bench/scripts/resumable-run.sh
row() {  # row name, seed
    local r=$1 s=$2
    case $r in
        float)           run "$r-s$s" $RECIPE --seed "$s" --method fp ;;
        dorefa3)         run "$r-s$s" $RECIPE --seed "$s" --method dorefa --weight-bits 3 --dorefa-scaled ;;
        dorefa3-pc)      run "$r-s$s" $RECIPE --seed "$s" --method dorefa --weight-bits 3 --dorefa-scaled --scale per-channel ;;
        dorefa2)         run "$r-s$s" $RECIPE --seed "$s" --method dorefa --weight-bits 2 --dorefa-scaled ;;
        dorefa2-pc)      run "$r-s$s" $RECIPE --seed "$s" --method dorefa --weight-bits 2 --dorefa-scaled --scale per-channel ;;
        msq-paper-10.67) run "$r-s$s" $RECIPE --seed "$s" --method msq --target-compression 10.67 --preset paper ;;
        msq-10.67)       run "$r-s$s" $RECIPE --seed "$s" --method msq --target-compression 10.67 ;;
        msq-pc-10.67)    run "$r-s$s" $RECIPE --seed "$s" --method msq --target-compression 10.67 --scale per-channel ;;
        msq-12.8)        run "$r-s$s" $RECIPE --seed "$s" --method msq --target-compression 12.8 ;;
        msq-off-10.67)   run "$r-s$s" $RECIPE --seed "$s" --method msq --target-compression 10.67 --hessian off ;;
        # The scheduled pull (off by default): drops the pace plans are pulled to r ≤ τ first.
        msq-pull-10.67)  run "$r-s$s" $RECIPE --seed "$s" --method msq --target-compression 10.67 --scheduled-pull 2 ;;
        # The pace before 2026-12-07 (the spec's: 0.5-epoch intervals, target met at 60 % of training).
        msq-slow-10.67)  run "$r-s$s" $RECIPE --seed "$s" --method msq --target-compression 10.67 $SLOW ;;
        msq-off-slow-10.67) run "$r-s$s" $RECIPE --seed "$s" --method msq --target-compression 10.67 --hessian off $SLOW ;;
        msq-slow-12.8)   run "$r-s$s" $RECIPE --seed "$s" --method msq --target-compression 12.8 $SLOW ;;
        hawq-10.67)      run "$r-s$s" $RECIPE --seed "$s" --method hawq --target-compression 10.67 ;;
        hawq-12.8)       run "$r-s$s" $RECIPE --seed "$s" --method hawq --target-compression 12.8 ;;
        # Issue 16. SMPQ and DMPQ share the search (same seed, same α); DMPQ takes no Shapley estimate.
        smpq-10.67)      run "$r-s$s" $RECIPE --seed "$s" --method smpq --target-compression 10.67 ;;
        dmpq-10.67)      run "$r-s$s" $RECIPE --seed "$s" --method smpq --selection alpha --shapley-permutations 0 --target-compression 10.67 ;;
        smpq-12.8)       run "$r-s$s" $RECIPE --seed "$s" --method smpq --target-compression 12.8 ;;
        dmpq-12.8)       run "$r-s$s" $RECIPE --seed "$s" --method smpq --selection alpha --shapley-permutations 0 --target-compression 12.8 ;;
        fixed)           # the control: MSQ default's seed-0 scheme, plain QAT from step 0
                         [[ -f "$RUNS/msq-10.67-s0/summary.json" ]] || row msq-10.67 0
                         run "$r-s$s" $RECIPE --seed "$s" --method msq --bit-scheme "$RUNS/msq-10.67-s0/summary.json" ;;
        fixed-off)       # the same control for MSQ with the Hessian off: which scheme is better placed
                         [[ -f "$RUNS/msq-off-10.67-s0/summary.json" ]] || row msq-off-10.67 0
                         run "$r-s$s" $RECIPE --seed "$s" --method msq --bit-scheme "$RUNS/msq-off-10.67-s0/summary.json" ;;
        fixed-slow)      [[ -f "$RUNS/msq-slow-10.67-s0/summary.json" ]] || row msq-slow-10.67 0
                         run "$r-s$s" $RECIPE --seed "$s" --method msq --bit-scheme "$RUNS/msq-slow-10.67-s0/summary.json" ;;
        full)            [[ $s == 0 ]] || return 0
                         run "full-float-s0"     $FULL --method fp
                         run "full-dorefa3-s0"   $FULL --method dorefa --weight-bits 3 --dorefa-scaled
                         run "full-msq-10.67-s0" $FULL --method msq --target-compression 10.67 ;;
        *) echo "unknown row $r" >&2; return 1 ;;
    esac
}
for r in $ROWS; do
    for s in $SEEDS; do row "$r" "$s"; done
done
python3 bench/scripts/allocation_table.py "$RUNS"
