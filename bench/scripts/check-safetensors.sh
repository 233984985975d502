#!/usr/bin/env bash
# Safetensors in and out of MSQ against PyTorch (issue 15, deliverable 5). Two checks:
#  (a) in:  torchvision ResNet-18 (3×64×64, batch 4), our ResNet-20 (1×32×32, batch 8) and
#      torchvision's MobileNetV3-Large and -Small (3×96×96, batch 2, issue 17), both DeiTs, and
#      torchvision's Swin-T twice (issue 18): its swin_t at 3×224×224 (batch 1; the last stage is one
#      unshifted window) and its SwinTransformer class in MSQ's small-input shape (patch 2, depths
#      [2, 2, 2]) at 3×36×36 (batch 2: 18² tokens padded to 21², so shifted blocks mask across
#      padding; an odd 9² merge; a 5² stage padded to one window) with
#      random weights and random batch-norm statistics, saved by PyTorch (state_dict, with
#      num_batches_tracked), loaded by `msq-bench logits` (loadSafeTensors, PyTorch names); the
#      eval-mode logits must be within TOLERANCE (1e-4) of PyTorch's, relative to the largest
#      |logit| (bench/pytorch/check_safetensors.py compare prints max_relative_error).
#  (b) out: a `msq train --method msq` run of ResNet-20 on Fashion-MNIST (10k images, 3 epochs), `msq export
#      --format safetensors`, loaded with PyTorch's load_state_dict (strict) into the twin in
#      bench/pytorch/models.py with the PACT input quantizers its metadata describes; its test
#      accuracy must be within 0.1 points of what `msq eval` reports for the `.msqmodel` export
#      of the same checkpoint. Once per entry of ACT_BITS ("none" = float activations). Also
#      printed: how many test predictions MSQ's and PyTorch's logits disagree on, and (the float32
#      noise yardstick) how many PyTorch's own float64 evaluation changes: with quantized
#      activations a last-bit difference at a PACT level boundary becomes a whole activation step.
# Figures go to standard output; progress and the tools' own output to standard error.
#
# Environment (all optional):
#   PYTHON       a Python with torch, torchvision, safetensors, numpy (default python3)
#   THREADS      threads for both sides (default 2)
#   DATA_DIR     Fashion-MNIST directory (default /usr/share/datasets/fashion-mnist)
#   LIMIT_TRAIN  training images of the MSQ run (default 10000)   EPOCHS  its epochs (default 3)
#   TARGET       its --target-compression (default 8)             ACT_BITS  (default "none 4"; "" skips (b))
#   TRAIN_FLAGS  more `msq train` options (default "--batch-size 128"; MSQ's defaults otherwise).
#                A barely trained model (3000 images, 1 epoch, --hessian off) has many near-ties,
#                and with 4-bit activations float32 rounding flips enough of them to miss 0.1
#                points (0.20 seen; results/check-safetensors/summary-short-run.txt)
#   LIMIT_TEST   test images for the run and both evaluations (default "" = all 10000)
#   MODELS       the (a) cases (default: all; e.g. "swin-t swin-t@224": a case is MODEL or MODEL@SIZE)
#   OUT          work directory (default bench/results/check-safetensors; emptied first)
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3}
THREADS=${THREADS:-2}
DATA_DIR=${DATA_DIR:-/usr/share/datasets/fashion-mnist}
LIMIT_TRAIN=${LIMIT_TRAIN:-10000}
EPOCHS=${EPOCHS:-3}
TARGET=${TARGET:-8}
ACT_BITS=${ACT_BITS-none 4}
MODELS=${MODELS:-resnet18 resnet20 mobilenetv3-large mobilenetv3-small deit-tiny deit-small swin-t swin-t@224}
LIMIT_TEST=${LIMIT_TEST-}
TRAIN_FLAGS=${TRAIN_FLAGS---batch-size 128}
TOLERANCE=1e-4
OUT=${OUT:-bench/results/check-safetensors}

if ! "$PYTHON" -c 'import torch, torchvision, safetensors, numpy' 2>/dev/null; then
    echo "check-safetensors: $PYTHON cannot import torch, torchvision, safetensors and numpy; install them in a venv:
  python3 -m venv .venv && .venv/bin/pip install torch torchvision safetensors numpy
then run: PYTHON=.venv/bin/python bash bench/scripts/check-safetensors.sh" >&2
    exit 1
fi
for n in "$THREADS" "$LIMIT_TRAIN" "$EPOCHS" ${LIMIT_TEST:+"$LIMIT_TEST"}; do
    [[ "$n" =~ ^[0-9]+$ ]] || { echo "check-safetensors: THREADS, LIMIT_TRAIN, EPOCHS, LIMIT_TEST must be integers (got '$n')" >&2; exit 1; }
done
for a in $ACT_BITS; do
    [[ "$a" == none || "$a" =~ ^[0-9]+$ ]] || { echo "check-safetensors: ACT_BITS holds 'none' or bit counts (got '$a')" >&2; exit 1; }
done

echo "building msq and msq-bench (release)…" >&2
swift build -c release >&2
swift build -c release --package-path bench >&2
MSQ=$(swift build -c release --show-bin-path)/msq
BENCH=$(swift build -c release --package-path bench --show-bin-path)/msq-bench
HELPER=bench/pytorch/check_safetensors.py
export THREADS

rm -rf "$OUT"
mkdir -p "$OUT"
status=0
# The figures: standard output and $OUT/summary.txt.
say() { echo "$*" | tee -a "$OUT/summary.txt"; }
say "# check-safetensors.sh $(date -u +%Y-%m-%dT%H:%MZ), torch $("$PYTHON" -c 'import torch; print(torch.__version__)'), $THREADS threads"

say "## (a) PyTorch safetensors → MSQ, eval-mode logits (tolerance $TOLERANCE relative)"
for case_ in $MODELS; do
    model=${case_%@*}
    dir="$OUT/$case_"
    case $case_ in
        resnet18) shape=(--size 64 --batch 4) ;;
        resnet20) shape=(--size 32 --batch 8) ;;
        deit-tiny) shape=(--size 32 --batch 2) ;;   # < 64 pixels: patch 4, depth 6
        deit-small) shape=(--size 64 --batch 2) ;;  # ≥ 64 pixels: DeiT's patch 16, depth 12
        swin-t) shape=(--size 36 --batch 2) ;;      # < 64 pixels: patch 2, depths [2, 2, 2]
        *@*) shape=(--size "${case_#*@}" --batch 1) ;;
        *)        shape=(--size 96 --batch 2) ;;  # ≥ 64 pixels: torchvision's own strides
    esac
    "$PYTHON" "$HELPER" make-case "$model" "$dir" "${shape[@]}" >&2
    "$BENCH" logits --model "$model" --weights "$dir/weights.safetensors" --input "$dir/input.safetensors" \
        --out "$dir/msq-logits.safetensors" --threads "$THREADS" >&2
    if line=$("$PYTHON" "$HELPER" compare "$dir/expected.safetensors" "$dir/msq-logits.safetensors" --tolerance "$TOLERANCE"); then :; else status=1; fi
    say "$case_: $line"
done

say "## (b) msq export --format safetensors → PyTorch load_state_dict, test accuracy vs msq eval (tolerance 0.1 points)"
limit=(); [[ -n "$LIMIT_TEST" ]] && limit=(--limit-test "$LIMIT_TEST")
for act in $ACT_BITS; do
    run="$OUT/msq-act-$act"
    actflag=(); [[ $act != none ]] && actflag=(--act-bits "$act")
    echo "msq train (act bits $act)…" >&2
    "$MSQ" train --model resnet20 --dataset fashion-mnist --data-dir "$DATA_DIR" --method msq --target-compression "$TARGET" \
        "${actflag[@]}" $TRAIN_FLAGS --epochs "$EPOCHS" --limit-train "$LIMIT_TRAIN" "${limit[@]}" --threads "$THREADS" --out "$run" >&2
    "$MSQ" export --checkpoint "$run/checkpoint.msqckpt" --out "$run/model.msqmodel" >&2
    "$MSQ" export --checkpoint "$run/checkpoint.msqckpt" --out "$run/model.safetensors" --format safetensors >&2
    ours=$("$MSQ" eval --model "$run/model.msqmodel" --data-dir "$DATA_DIR" "${limit[@]}" --threads "$THREADS" | tee /dev/stderr | awk '/^test_accuracy/ {print $2}')
    # The same images through MSQ's float model with the export's weights and PACT metadata, to
    # count differing predictions (msq eval prints only the accuracy).
    "$PYTHON" "$HELPER" test-batch "$run/model.safetensors" "$run/test-batch.safetensors" --data-dir "$DATA_DIR" "${limit[@]}" >&2
    "$BENCH" logits --model resnet20 --weights "$run/model.safetensors" --input "$run/test-batch.safetensors" \
        --out "$run/msq-logits.safetensors" --threads "$THREADS" >&2
    report=$("$PYTHON" "$HELPER" eval-export "$run/model.safetensors" --data-dir "$DATA_DIR" "${limit[@]}" \
        --msq-logits "$run/msq-logits.safetensors" | tee /dev/stderr)
    theirs=$(awk '/^test_accuracy/ {print $2}' <<< "$report")
    while read -r l; do say "act bits $act: $l"; done < <(grep -E '^(msq logits|pytorch float32)' <<< "$report")
    verdict=$(awk -v a="$ours" -v b="$theirs" 'BEGIN { d = (a - b) * 100; if (d < 0) d = -d; printf "%.2f points %s", d, (d <= 0.1 ? "within 0.1" : "ABOVE 0.1") }')
    [[ $verdict == *ABOVE* || -z "$ours" || -z "$theirs" ]] && status=1
    say "act bits $act: msq eval test_accuracy $ours, PyTorch test_accuracy $theirs; difference $verdict"
done
exit $status
