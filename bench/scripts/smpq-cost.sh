#!/usr/bin/env bash
# Issue 16: SMPQ's training step against MSQ's and BSQ's, ResNet-20 (3×32×32, batch 128). One
# `msq-bench cost` process per row (so each peak RSS is its own), rows alternated msq → smpq → bsq
# for ROUNDS rounds, so the machine's drift falls on all three alike; prints each round's ms/step
# and the ratios to msq, then their means. smpq's step is a search step: the W step and the α step
# on a validation batch (Shapley estimates are not steps: their seconds are in a run's summary.json,
# smpq_shapley_seconds of smpq_search_seconds).
#   ROUNDS (default 3), STEPS (10), WARMUP (2), THREADS (0 = all cores), BIN (a built msq-bench)
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${ROUNDS:-3}; STEPS=${STEPS:-10}; WARMUP=${WARMUP:-2}; THREADS=${THREADS:-0}
if [[ -z "${BIN:-}" ]]; then
    swift build -c release --package-path bench >&2
    BIN=$(swift build -c release --package-path bench --show-bin-path)/msq-bench
fi
out=$(mktemp -d)
for r in $(seq 1 "$ROUNDS"); do
    for m in msq smpq bsq; do
        "$BIN" cost --model resnet20 --method "$m" --batch 128 --steps "$STEPS" --warmup "$WARMUP" \
            --threads "$THREADS" --json "$out/$r-$m.json" >&2
    done
done
python3 - "$out" "$ROUNDS" <<'PY'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
rows = {m: [json.load(open(f"{out}/{r}-{m}.json")) for r in range(1, rounds + 1)] for m in ("msq", "smpq", "bsq")}
print("| round | msq ms/step | smpq ms/step | bsq ms/step | smpq / msq | bsq / msq |")
print("|---|---|---|---|---|---|")
ratios = {"smpq": [], "bsq": []}
for i in range(rounds):
    ms = {m: rows[m][i]["ms_per_step"] for m in rows}
    for m in ratios: ratios[m].append(ms[m] / ms["msq"])
    print(f"| {i + 1} | {ms['msq']:.1f} | {ms['smpq']:.1f} | {ms['bsq']:.1f} | {ms['smpq'] / ms['msq']:.2f} | {ms['bsq'] / ms['msq']:.2f} |")
sd = lambda xs: statistics.stdev(xs) if len(xs) > 1 else 0.0
print(f"| mean | | | | {statistics.mean(ratios['smpq']):.2f} ± {sd(ratios['smpq']):.2f} | {statistics.mean(ratios['bsq']):.2f} ± {sd(ratios['bsq']):.2f} |")
for m in rows:
    r = rows[m][0]
    print(f"{m}: trainable parameters {r['trainable_params']}, peak RSS {max(x['peak_rss_bytes'] for x in rows[m]) / 2**20:.0f} MiB")
PY
