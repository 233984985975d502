#!/usr/bin/env bash
# Issue 19: data-parallel training against one process on the 10k recipe (ResNet-20,
# Fashion-MNIST, first 10k training images, 6 epochs, global batch 128, lr 0.1).
#   P1        one process, 2 threads
#   P1x1      one process, 1 thread: P1 with its sums in another order, the float-noise floor
#   P2-sync   mpirun -np 2, 1 thread each, --sync-bn
#   P2        mpirun -np 2, 1 thread each, per-process batch-norm statistics
#   P2to1     P2-sync killed after epoch 1, resumed at P = 1 (2 threads)
#   P1to2     P1 killed after epoch 1, resumed at P = 2 with --sync-bn
# Each run's summary.json lands in $RUNS/<row>-<method>-s<seed>; finished runs are skipped.
# Usage: bench/scripts/data-parallel-accuracy.sh "ROW:METHOD:SEEDS ..."   e.g. "P1:msq:0,1,2 P2:fp:0"
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${RUNS:-runs/data-parallel}
MSQ=${MSQ:-$(swift build -c release --show-bin-path)/msq}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
RECIPE="--model resnet20 --dataset fashion-mnist --epochs 6 --limit-train 10000 --batch-size 128 --lr 0.1"
MPI="mpirun -np 2 --oversubscribe --bind-to none"
mkdir -p "$RUNS"

method_args() {
    case $1 in
        fp) echo "--method fp" ;;
        msq) echo "--method msq --target-compression 10.67" ;;
        *) echo "unknown method $1" >&2; exit 1 ;;
    esac
}

# Runs "$@" in the background until $out's checkpoint holds epoch 1, then kills it.
kill_after_first_epoch() {
    local out=$1; shift
    "$@" > "$out.first.log" 2>&1 &
    local pid=$!
    while kill -0 $pid 2>/dev/null && ! grep -q "^epoch 1/6  train loss" "$out.first.log"; do sleep 0.5; done
    sleep 1  # the checkpoint is written right after that line
    kill -TERM $pid 2>/dev/null || true
    wait $pid 2>/dev/null || true
    echo "  killed after epoch 1: $(grep -c '^epoch [0-9]/6  train loss' "$out.first.log") epoch(s) logged"
}

for spec in $1; do
    IFS=: read -r row method seeds <<< "$spec"
    for seed in ${seeds//,/ }; do
        out="$RUNS/$row-$method-s$seed"
        [[ -f $out/summary.json ]] && { echo "$out: done"; continue; }
        rm -rf "$out"
        args="$RECIPE $(method_args "$method") --seed $seed --out $out"
        echo "$out: $row $method seed $seed ($(date +%T))"
        case $row in
            P1) $MSQ train $args --threads 2 > "$out.log" 2>&1 ;;
            P1x1) $MSQ train $args --threads 1 > "$out.log" 2>&1 ;;
            P2-sync) $MPI $MSQ train $args --threads 1 --sync-bn > "$out.log" 2>&1 ;;
            P2) $MPI $MSQ train $args --threads 1 > "$out.log" 2>&1 ;;
            P2to1)
                kill_after_first_epoch "$out" $MPI $MSQ train $args --threads 1 --sync-bn
                $MSQ train $args --threads 2 --resume > "$out.log" 2>&1 ;;
            P1to2)
                kill_after_first_epoch "$out" $MSQ train $args --threads 2
                $MPI $MSQ train $args --threads 1 --sync-bn --resume > "$out.log" 2>&1 ;;
            *) echo "unknown row $row" >&2; exit 1 ;;
        esac
        python3 -c "import json,sys; s=json.load(open('$out/summary.json')); print('  test_accuracy %.4f  %s' % (s['test_accuracy'], s.get('bit_scheme', '')))"
    done
done
