#!/usr/bin/env bash
# Data-parallel scaling on one machine (issue 19, item 5): `msq-bench dp-step` rows for ResNet-20
# (32², global batch 128) and ResNet-18 (224², global batch 16):
#   P1x2  one process, 2 kernel threads (no mpirun)
#   P2x1  mpirun -np 2, 1 thread per rank (the binding picked below)
#   P1x1  one process, 1 thread (what one rank of P2x1 would do alone)
# The rows alternate, REPEATS times, in one run: this machine drifts 10–20 % over minutes, and
# alternating puts the drift on every row alike. Before the rows, P2x1 runs once with
# --bind-to core and once with --bind-to none per model, and the faster (median img/s) is kept.
# Prints each row's median img/s, the ratio (P2x1)/(P1x2) per repetition and its mean, the
# overlap of the all-reduce, then the all-reduce bytes of every catalog model. JSON in $OUT.
#   [BIN=bench/.build/release/msq-bench] [OUT=bench/results/scaling] [REPEATS=3] [METHOD=fp]
#   [STEPS20=10] [STEPS18=4] [BIND=core|none] bash bench/scripts/scaling.sh
set -euo pipefail
BIN=${BIN:-bench/.build/release/msq-bench}
OUT=${OUT:-bench/results/scaling}
REPEATS=${REPEATS:-3}
METHOD=${METHOD:-fp}
STEPS20=${STEPS20:-10}
STEPS18=${STEPS18:-4}
mkdir -p "$OUT"
# Open MPI refuses root unless told twice (containers run as root).
if [[ $(id -u) == 0 ]]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi

# model:global batch:timed steps:warm-up steps
CONFIGS=("resnet20:128:$STEPS20:2" "resnet18:16:$STEPS18:1")

# row NAME MODEL BATCH STEPS WARMUP JSON BIND: one row, its line on stdout and in the log.
row() {
    local name=$1 model=$2 batch=$3 steps=$4 warmup=$5 json=$6 bind=${7:-}
    local args=(dp-step --model "$model" --method "$METHOD" --batch "$batch" --steps "$steps" --warmup "$warmup"
                --json "$json" --label "$name${bind:+ bind-to-$bind}")
    case $name in
        P1x2) "$BIN" "${args[@]}" --threads 2 ;;
        P1x1) "$BIN" "${args[@]}" --threads 1 ;;
        P2x1) mpirun -np 2 --bind-to "$bind" "$BIN" "${args[@]}" --threads 1 ;;
    esac | sed "s/^/$name: /" | tee -a "$OUT/log.txt"
}

echo "# $(date -u +%FT%TZ) $(nproc) cores, load: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/log.txt"
declare -A BINDING
for config in "${CONFIGS[@]}"; do
    IFS=: read -r model batch steps warmup <<< "$config"
    if [[ -n ${BIND:-} ]]; then BINDING[$model]=$BIND; continue; fi
    for bind in core none; do row P2x1 "$model" "$batch" "$steps" "$warmup" "$OUT/bind-$bind-$model.json" "$bind"; done
    BINDING[$model]=$(python3 - "$OUT" "$model" <<'P'
import json, sys
out, model = sys.argv[1:]
rate = {b: json.load(open(f"{out}/bind-{b}-{model}.json"))["images_per_second_median"] for b in ("core", "none")}
print(max(rate, key=rate.get))
P
)
    echo "$model: --bind-to ${BINDING[$model]} is faster" | tee -a "$OUT/log.txt"
done

for rep in $(seq "$REPEATS"); do
    for config in "${CONFIGS[@]}"; do
        IFS=: read -r model batch steps warmup <<< "$config"
        for name in P1x2 P2x1 P1x1; do
            row "$name" "$model" "$batch" "$steps" "$warmup" "$OUT/$model-$name-$rep.json" "${BINDING[$model]}"
        done
    done
done
echo "# $(date -u +%FT%TZ) done, load: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/log.txt"

python3 - "$OUT" "$REPEATS" "${CONFIGS[@]}" <<'P' | tee "$OUT/summary.txt"
import json, statistics, sys
out, reps, configs = sys.argv[1], int(sys.argv[2]), [c.split(":")[0] for c in sys.argv[3:]]
for model in configs:
    r = {n: [json.load(open(f"{out}/{model}-{n}-{i}.json")) for i in range(1, reps + 1)] for n in ("P1x2", "P2x1", "P1x1")}
    print(f"{model} (global batch {r['P1x2'][0]['batch']}, {r['P2x1'][0]['label']}):")
    for n, rows in r.items():
        print(f"  {n}: img/s median per repetition " + " ".join(f"{x['images_per_second_median']:.1f}" for x in rows)
              + f"; compute {statistics.mean(x['compute_ms'] for x in rows):.1f} ms/step")
    ratio = [b["images_per_second_median"] / a["images_per_second_median"] for a, b in zip(r["P1x2"], r["P2x1"])]
    print("  (P2x1)/(P1x2): " + " ".join(f"{x:.3f}" for x in ratio) + f"; mean {statistics.mean(ratio):.3f}")
    two = [b["images_per_second_median"] / a["images_per_second_median"] for a, b in zip(r["P1x1"], r["P2x1"])]
    print("  (P2x1)/(P1x1): " + " ".join(f"{x:.3f}" for x in two) + f"; mean {statistics.mean(two):.3f}")
    p2 = r["P2x1"]
    print(f"  P2x1 all-reduce: {p2[0]['all_reduce_bytes_per_step'] / 1e6:.2f} MB/step in {p2[0]['buckets']} buckets, "
          f"started during backward {sum(x['buckets_started_during_backward'] for x in p2)}/{sum(x['buckets_started'] for x in p2)}; "
          f"exposed {statistics.mean(x['exposed_all_reduce_ms'] for x in p2):.2f} ms/step on rank 0, "
          f"{statistics.mean(x['exposed_all_reduce_ms_last_rank'] for x in p2):.2f} on the last rank out of backward, "
          f"blocking {statistics.mean(x['blocking_all_reduce_ms'] for x in p2):.2f} ms, "
          "overlap " + " ".join(f"{x['overlap'] * 100:.0f}%" for x in p2))
P
"$BIN" dp-step --bytes-only --json "$OUT/bytes.json" | tee "$OUT/bytes.txt"
