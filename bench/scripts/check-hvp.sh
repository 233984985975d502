#!/usr/bin/env bash
# Cross-checks `msq-bench hvp` (MSQ's Hessian-vector products) against PyTorch's double backward
# in float64 (bench/pytorch/check_hvp.py), on the model and weights of one checkpoint:
#
#   PYTHON=/work/venv/bin/python BIN=path/to/msq-bench bash bench/scripts/check-hvp.sh CHECKPOINT [--calibration N]
#
# Steps, all files in bench/results/check-hvp/<model>/ (<model> from the base file's metadata):
#   1. $BIN hvp --checkpoint CKPT --calibration N --random 1 --seed $SEED --out base.safetensors
#      (one Rademacher probe on every quantized weight; also tells the weights' names and shapes)
#   2. make_probes.py base.safetensors probes.safetensors --seed $SEED: one Rademacher probe per
#      quantized weight, zero on all the others
#   3. for each mode in $MODES: $BIN hvp --checkpoint CKPT --calibration N --probes probes.safetensors
#      --mode MODE --out out-MODE.safetensors, then check_hvp.py on it: check-MODE.txt (the report),
#      check-MODE.csv (every probe x layer comparison)
#   4. check_hvp.py on base.safetensors too (check-base.txt) unless its mode is gauss-newton, where
#      a probe on every layer is not comparable; summary.txt gathers every report's final lines.
# check_hvp.py's --help explains what is compared per mode; in central-difference mode the errors
# against the exact H v are large on ReLU networks by nature, and its 'vs torch CD' figure is the one
# that checks MSQ's implementation.
#
# Arguments: CHECKPOINT (a checkpoint.msqckpt), --calibration N (calibration images, default 64).
# Environment (all optional):
#   PYTHON   a Python with torch, torchvision and safetensors (default python3). To get one:
#              python3 -m venv /work/venv && /work/venv/bin/pip install torch numpy safetensors pillow
#              /work/venv/bin/pip install --no-deps torchvision
#   BIN      a built msq-bench (default: build bench in release mode and use that)
#   SEED     seed of the base probe and of make_probes.py (default 0)
#   MODES    which modes (default "exact gauss-newton central-difference"; with PRECISION=float64
#            "exact gauss-newton", the modes that have a float64 pass)
#   PRECISION float32 (default) or float64: the arithmetic of the exact and Gauss-Newton passes
#            (`msq-bench hvp --precision`); float64 reports are labelled MODE-float64
#   THRESHOLD_EXACT, THRESHOLD_GN, THRESHOLD_CD
#            fail (exit 1, after all modes ran) when that mode's worst relative error exceeds it
#            (default: report only)
#   OUT      results root (default bench/results/check-hvp); <model>/'s old files are deleted first
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3}
SEED=${SEED:-0}
PRECISION=${PRECISION:-float32}
[[ "$PRECISION" == float32 || "$PRECISION" == float64 ]] || { echo "check-hvp: PRECISION is float32 or float64 (got '$PRECISION')" >&2; exit 2; }
if [[ "$PRECISION" == float64 ]]; then MODES=${MODES:-exact gauss-newton}; else MODES=${MODES:-exact gauss-newton central-difference}; fi
OUT_ROOT=${OUT:-bench/results/check-hvp}

usage() {
    echo "usage: PYTHON=… BIN=… bash bench/scripts/check-hvp.sh CHECKPOINT [--calibration N]" >&2
    exit 2
}
[[ $# -ge 1 ]] || usage
checkpoint=$1
shift
calibration=64
while [[ $# -gt 0 ]]; do
    case $1 in
        --calibration) [[ $# -ge 2 ]] || usage; calibration=$2; shift 2 ;;
        --calibration=*) calibration=${1#--calibration=}; shift ;;
        *) echo "check-hvp: unknown argument '$1'" >&2; usage ;;
    esac
done
[[ "$calibration" =~ ^[0-9]+$ ]] && (( calibration >= 1 )) || { echo "check-hvp: --calibration must be a positive integer (got '$calibration')" >&2; exit 2; }
[[ "$SEED" =~ ^[0-9]+$ ]] || { echo "check-hvp: SEED must be a non-negative integer (got '$SEED')" >&2; exit 2; }
[[ -f "$checkpoint" ]] || { echo "check-hvp: no checkpoint at $checkpoint" >&2; exit 2; }
for m in $MODES; do
    [[ "$m" == exact || "$m" == gauss-newton || "$m" == central-difference ]] \
        || { echo "check-hvp: MODES holds exact, gauss-newton and/or central-difference (got '$m')" >&2; exit 2; }
    [[ "$PRECISION" == float32 || "$m" != central-difference ]] \
        || { echo "check-hvp: central-difference runs in float32 only; drop it from MODES with PRECISION=float64" >&2; exit 2; }
done

install_hint="torch, torchvision and safetensors are needed; install them in a virtual environment:
  python3 -m venv /work/venv && /work/venv/bin/pip install torch numpy safetensors pillow && /work/venv/bin/pip install --no-deps torchvision
then run: PYTHON=/work/venv/bin/python bash bench/scripts/check-hvp.sh CHECKPOINT"
if ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "check-hvp: no Python at PYTHON=$PYTHON; $install_hint" >&2
    exit 2
fi
if ! "$PYTHON" -c 'import torch, torchvision, safetensors' 2>/dev/null; then
    echo "check-hvp: $PYTHON cannot import torch, torchvision and safetensors; $install_hint" >&2
    exit 2
fi

if [[ -z "${BIN:-}" ]]; then
    echo "building msq-bench (release)…" >&2
    swift build -c release --package-path bench >&2
    BIN=$(swift build -c release --package-path bench --show-bin-path)/msq-bench
fi
[[ -x "$BIN" ]] || { echo "check-hvp: BIN=$BIN is not an executable" >&2; exit 2; }

# Runs one step, its output to standard error; stops the script if it fails.
run() {
    if ! "$@" >&2; then
        echo "check-hvp: failed: $*" >&2
        exit 2
    fi
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "base probe (one Rademacher probe on every quantized weight)…" >&2
run "$BIN" hvp --checkpoint "$checkpoint" --calibration "$calibration" --random 1 --seed "$SEED" \
    --out "$work/base.safetensors"
meta() {
    "$PYTHON" -c 'import sys; from safetensors import safe_open; print((safe_open(sys.argv[1], "np").metadata() or {}).get(sys.argv[2], ""))' "$@"
}
model=$(meta "$work/base.safetensors" model)
base_mode=$(meta "$work/base.safetensors" mode)
[[ "$model" =~ ^[a-z0-9-]+$ ]] || { echo "check-hvp: base.safetensors names no usable model in its metadata (got '$model')" >&2; exit 2; }
dir="$OUT_ROOT/$model"
mkdir -p "$dir"
rm -f "$dir"/*.safetensors "$dir"/check-*.txt "$dir"/check-*.csv "$dir"/summary.txt
mv "$work/base.safetensors" "$dir/base.safetensors"
run "$PYTHON" bench/pytorch/make_probes.py "$dir/base.safetensors" "$dir/probes.safetensors" --seed "$SEED"

threshold_for() {
    case $1 in
        exact) echo "${THRESHOLD_EXACT:-}" ;;
        gauss-newton) echo "${THRESHOLD_GN:-}" ;;
        central-difference) echo "${THRESHOLD_CD:-}" ;;
    esac
}

status=0
# Checks one hvp output; report on standard output and in check-LABEL.txt.
check() {
    local label=$1 file=$2 mode=$3 threshold rc
    threshold=$(threshold_for "$mode")
    echo "== $label ($mode) ==" | tee "$dir/check-$label.txt"
    set +e
    "$PYTHON" bench/pytorch/check_hvp.py "$file" --csv "$dir/check-$label.csv" ${threshold:+--threshold "$threshold"} \
        2>&1 | tee -a "$dir/check-$label.txt"
    rc=${PIPESTATUS[0]}
    set -e
    if (( rc == 1 )); then
        status=1
    elif (( rc != 0 )); then
        echo "check-hvp: check_hvp.py could not check $file (exit $rc)" >&2
        exit 2
    fi
    { echo "$label: $(grep -E '^worst relative error' "$dir/check-$label.txt" | paste -sd '|' - | sed 's/|/ | /g')"; } >> "$dir/summary.txt"
}

for mode in $MODES; do
    label=$mode
    [[ "$PRECISION" == float32 ]] || label=$mode-$PRECISION
    echo "mode $mode ($PRECISION)…" >&2
    run "$BIN" hvp --checkpoint "$checkpoint" --calibration "$calibration" --probes "$dir/probes.safetensors" \
        --mode "$mode" --precision "$PRECISION" --out "$dir/out-$label.safetensors"
    check "$label" "$dir/out-$label.safetensors" "$mode"
done
if [[ "$base_mode" != gauss-newton ]]; then
    check base "$dir/base.safetensors" "$base_mode"
fi

echo
echo "summary ($dir/summary.txt):"
cat "$dir/summary.txt"
exit $status
