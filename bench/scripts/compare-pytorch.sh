#!/usr/bin/env bash
# MSQ vs PyTorch on the same training step (issues 5, 17, 18): ResNet-20 (3×32×32, batch 128), ResNet-18,
# MobileNetV3-Large/-Small, DeiT-Tiny/-Small and Swin-T (3×224×224, batch 16) × fp, msq. Each configuration runs `msq-bench step` and
# bench/pytorch/train_step.py alternately (ours, PyTorch, ours, PyTorch, …; REPEATS of each, one
# process per run, so a slow spell of a busy machine hits both sides), one JSON file per run, then
# prints one markdown table (`msq-bench compare-table`) on standard output. Progress goes to
# standard error.
#
# Environment (all optional):
#   PYTHON   a Python with torch (default python3). To get one:
#              python3 -m venv .venv && .venv/bin/pip install torch numpy
#              PYTHON=.venv/bin/python bash bench/scripts/compare-pytorch.sh
#   BIN      a built msq-bench (default: build bench in release mode and use that)
#   THREADS  threads for both sides (default 2)
#   REPEATS  runs of each side per configuration (default 2)
#   STEPS20  timed steps on ResNet-20 (default 10)     STEPS18  on the 224² models (default 3)
#   WARMUP   untimed steps per run (default 2)
#   MODELS   which models (default "resnet20 resnet18"; also mobilenetv3-large, mobilenetv3-small, deit-tiny, deit-small, swin-t)    METHODS  which methods (default "fp msq")
#   OUT      directory for the JSON files (default bench/results/compare-pytorch; its *.json are
#            deleted first)
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3}
THREADS=${THREADS:-2}
REPEATS=${REPEATS:-2}
STEPS20=${STEPS20:-10}
STEPS18=${STEPS18:-3}
WARMUP=${WARMUP:-2}
OUT=${OUT:-bench/results/compare-pytorch}
MODELS=${MODELS:-resnet20 resnet18}
METHODS=${METHODS:-fp msq}
for m in $MODELS; do
    case "$m" in
        resnet20|resnet18|mobilenetv3-large|mobilenetv3-small|deit-tiny|deit-small|swin-t) ;;
        *) echo "compare-pytorch: MODELS holds resnet20, resnet18, mobilenetv3-large, mobilenetv3-small, deit-tiny, deit-small, swin-t (got '$m')" >&2; exit 1 ;;
    esac
done
for m in $METHODS; do
    [[ "$m" == fp || "$m" == msq ]] || { echo "compare-pytorch: METHODS holds fp and/or msq (got '$m')" >&2; exit 1; }
done

install_hint="PyTorch is needed; install it in a virtual environment:
  python3 -m venv .venv && .venv/bin/pip install torch numpy
then run: PYTHON=.venv/bin/python bash bench/scripts/compare-pytorch.sh"
if ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "compare-pytorch: no Python at PYTHON=$PYTHON; $install_hint" >&2
    exit 1
fi
if ! torch_version=$("$PYTHON" -c 'import torch; print(torch.__version__)' 2>/dev/null); then
    echo "compare-pytorch: $PYTHON cannot import torch; $install_hint" >&2
    exit 1
fi
for n in "$THREADS" "$REPEATS" "$STEPS20" "$STEPS18" "$WARMUP"; do
    [[ "$n" =~ ^[0-9]+$ ]] || { echo "compare-pytorch: THREADS, REPEATS, STEPS20, STEPS18, WARMUP must be integers (got '$n')" >&2; exit 1; }
done
(( REPEATS >= 1 && STEPS20 >= 1 && STEPS18 >= 1 )) || { echo "compare-pytorch: REPEATS, STEPS20, STEPS18 must be ≥ 1" >&2; exit 1; }

if [[ -z "${BIN:-}" ]]; then
    echo "building msq-bench (release)…" >&2
    swift build -c release --package-path bench >&2
    BIN=$(swift build -c release --package-path bench --show-bin-path)/msq-bench
fi
[[ -x "$BIN" ]] || { echo "compare-pytorch: BIN=$BIN is not an executable" >&2; exit 1; }

mkdir -p "$OUT"
rm -f "$OUT"/*.json
echo "PyTorch $torch_version ($PYTHON), $THREADS threads, $REPEATS runs per side, JSON in $OUT" >&2

# Runs one process, its one-line summary to standard error; stops the script if it fails.
run() {
    local label=$1; shift
    echo "  $label" >&2
    if ! "$@" >&2; then
        echo "compare-pytorch: failed: $*" >&2
        exit 1
    fi
}

for model in $MODELS; do
    if [[ "$model" == resnet20 ]]; then batch=128 steps=$STEPS20; else batch=16 steps=$STEPS18; fi
    for method in $METHODS; do
        echo "$model $method batch $batch ($WARMUP warm-up + $steps timed steps per run)…" >&2
        for ((i = 1; i <= REPEATS; i++)); do
            common=(--model "$model" --method "$method" --batch "$batch" --steps "$steps" --warmup "$WARMUP"
                    --threads "$THREADS")
            run "ours $i/$REPEATS" "$BIN" step "${common[@]}" --json "$OUT/$model-$method-ours-$i.json"
            run "PyTorch $i/$REPEATS" "$PYTHON" bench/pytorch/train_step.py "${common[@]}" \
                --json "$OUT/$model-$method-pytorch-$i.json"
        done
    done
done

"$BIN" compare-table --json-dir "$OUT"
