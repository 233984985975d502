#!/usr/bin/env bash
# The training-cost grid of issue 4: ResNet-20 (3×32×32, batch 128) and ResNet-18 (3×224×224,
# batch 16) × fp, msq, dorefa, bsq, csq, one `msq-bench cost` process per configuration (so each
# peak RSS is its own), then one markdown table (`msq-bench table`) on standard output, followed by a
# note for every configuration the binary refused or that failed. Progress goes to standard error.
#
# Environment (all optional):
#   OUT      directory for the per-configuration JSON files (default bench/results/cost-grid;
#            its *.json files are deleted first)
#   MODELS   default "resnet20 resnet18"        METHODS  default "fp msq dorefa bsq csq"
#   BATCH20  default 128    STEPS20 default 10  (ResNet-20 batch and timed steps)
#   BATCH18  default 16     STEPS18 default 4   (ResNet-18 batch and timed steps)
#   WARMUP   untimed steps per configuration (default 2)
#   THREADS  kernel threads (default 0 = all cores)
#   BIN      a built msq-bench to use (default: build bench in release mode and use that)
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-bench/results/cost-grid}
MODELS=${MODELS:-"resnet20 resnet18"}
METHODS=${METHODS:-"fp msq dorefa bsq csq"}
BATCH20=${BATCH20:-128}; STEPS20=${STEPS20:-10}
BATCH18=${BATCH18:-16};  STEPS18=${STEPS18:-4}
WARMUP=${WARMUP:-2}
THREADS=${THREADS:-0}
if [[ -z "${BIN:-}" ]]; then
    swift build -c release --package-path bench >&2 || exit 1
    BIN=$(swift build -c release --package-path bench --show-bin-path)/msq-bench
fi
mkdir -p "$OUT"
rm -f "$OUT"/*.json

notes=()
errlog=$(mktemp)
trap 'rm -f "$errlog"' EXIT
for model in $MODELS; do
    case $model in
        resnet20) batch=$BATCH20; steps=$STEPS20 ;;
        resnet18) batch=$BATCH18; steps=$STEPS18 ;;
        *) notes+=("$model: unknown model, skipped"); continue ;;
    esac
    for method in $METHODS; do
        echo "cost $model $method batch $batch ($steps steps)…" >&2
        "$BIN" cost --model "$model" --method "$method" --batch "$batch" --steps "$steps" --warmup "$WARMUP" \
            --threads "$THREADS" --json "$OUT/$model-$method.json" >&2 2>"$errlog"
        rc=$?
        if (( rc != 0 )); then
            rm -f "$OUT/$model-$method.json"
            reason=$(grep -m1 '^Error:' "$errlog" | sed 's/^Error: //')
            [[ -z "$reason" ]] && reason=$(grep -v '^[[:space:]]*$' "$errlog" | tail -n1)
            if (( rc == 64 )); then
                notes+=("$model $method: skipped, msq-bench refused it: $reason")
            elif (( rc > 128 )); then
                notes+=("$model $method: skipped, killed by signal $((rc - 128)) ${reason:+($reason)}")
            else
                notes+=("$model $method: skipped, exit $rc ${reason:+($reason)}")
            fi
            echo "  ${notes[-1]}" >&2
        fi
    done
done

if compgen -G "$OUT/*.json" >/dev/null; then
    "$BIN" table --json-dir "$OUT"
else
    echo "no configuration ran" >&2
fi
if (( ${#notes[@]} > 0 )); then
    echo
    for n in "${notes[@]}"; do echo "- $n"; done
fi
