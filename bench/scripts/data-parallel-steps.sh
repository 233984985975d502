#!/usr/bin/env bash
# Issue 19: P = 2 (--sync-bn) against P = 1 after 20 steps, and P = 1 at 1 thread against 2 threads
# (the float-rounding floor), for fp and msq: ResNet-20, Fashion-MNIST, 640 images, batch 32,
# started from a float checkpoint (--init-from) at lr $LR (default 0.01, the regime of a run that
# starts from a trained model). Usage: bench/scripts/data-parallel-steps.sh FLOAT_CHECKPOINT
# The float checkpoint used in bench/README: msq train --model resnet20 --dataset fashion-mnist
#   --epochs 2 --limit-train 10000 --limit-test 1000 --batch-size 128 --lr 0.1 --method fp --seed 0
set -euo pipefail
cd "$(dirname "$0")/../.."
BASE=${1:?usage: data-parallel-steps.sh FLOAT_CHECKPOINT}
RUNS=${RUNS:-runs/data-parallel-steps}
LR=${LR:-0.01}
MSQ=${MSQ:-$(swift build -c release --show-bin-path)/msq}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
mkdir -p "$RUNS"
for method in fp msq; do
    case $method in
        fp) args="--method fp" ;;
        msq) args="--method msq --target-compression 10.67" ;;
    esac
    recipe="--model resnet20 --dataset fashion-mnist --epochs 1 --limit-train 640 --limit-test 64 --batch-size 32
            --lr $LR --seed 3 --init-from $BASE $args"
    out="$RUNS/$method-lr$LR"
    rm -rf "$out-p1t2" "$out-p1t1" "$out-p2"
    $MSQ train $recipe --threads 2 --out "$out-p1t2" > "$out-p1t2.log" 2>&1
    $MSQ train $recipe --threads 1 --out "$out-p1t1" > "$out-p1t1.log" 2>&1
    mpirun -np 2 --oversubscribe --bind-to none $MSQ train $recipe --threads 1 --sync-bn --out "$out-p2" > "$out-p2.log" 2>&1
    echo "$method lr $LR, P2 --sync-bn vs P1 x2 threads: $(python3 bench/scripts/compare-checkpoints.py "$out-p1t2/checkpoint.msqckpt" "$out-p2/checkpoint.msqckpt")"
    echo "$method lr $LR, P1 x1 thread vs P1 x2 threads: $(python3 bench/scripts/compare-checkpoints.py "$out-p1t2/checkpoint.msqckpt" "$out-p1t1/checkpoint.msqckpt")"
    if [[ $method == msq ]]; then
        echo "msq lr $LR, distinct final bit schemes over the three runs: $(grep -h '^bit scheme' "$out"-p*.log | sort -u | wc -l)"
    fi
done
