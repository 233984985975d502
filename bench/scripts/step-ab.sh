#!/usr/bin/env bash
# A/B speed check of the training step: alternates `msq-bench step` (by default ResNet-20, msq,
# batch 128, 10 timed steps, 2 threads) of two builds ROUNDS times in one run, so machine drift
# hits both, and prints each row's median ms/step and the throughput ratio B/A of the row medians.
#   BEFORE=path/to/old/msq-bench AFTER=path/to/new/msq-bench [ROUNDS=4] [MODEL=resnet20]
#   [METHOD=msq] [BATCH=128] [STEPS=10] bash bench/scripts/step-ab.sh
set -euo pipefail
: "${BEFORE:?set BEFORE to the old msq-bench binary}" "${AFTER:?set AFTER to the new msq-bench binary}"
ROUNDS=${ROUNDS:-4}
MODEL=${MODEL:-resnet20}
METHOD=${METHOD:-msq}
BATCH=${BATCH:-128}
STEPS=${STEPS:-10}
tmp=$(mktemp -d)
for i in $(seq "$ROUNDS"); do
    for side in before after; do
        bin=$BEFORE; [[ $side == after ]] && bin=$AFTER
        "$bin" step --model "$MODEL" --method "$METHOD" --batch "$BATCH" --steps "$STEPS" --threads 2 \
            --json "$tmp/$side-$i.json" > /dev/null
    done
done
python3 - "$tmp" "$ROUNDS" <<'P'
import json, statistics, sys
tmp, rounds = sys.argv[1], int(sys.argv[2])
med = {s: [json.load(open(f"{tmp}/{s}-{i}.json"))["ms_per_step_median"] for i in range(1, rounds + 1)] for s in ("before", "after")}
for s in ("before", "after"):
    print(s, " ".join(f"{m:.1f}" for m in med[s]), "ms/step (median per row)")
print("pairwise throughput after/before:", " ".join(f"{b / a:.2f}" for b, a in zip(med["before"], med["after"])))
print(f"throughput ratio after/before (medians of rows): {statistics.median(med['before']) / statistics.median(med['after']):.2f}")
P
