#!/usr/bin/env bash
# Time per training step of MSQ vs float on ResNet-20 (32×32, batch 128) and ResNet-18 (224×224,
# batch 16), synthetic data, one configuration per process; and the cost of one Hessian-trace
# estimate in training steps. Prints one line per configuration; JSON files land in $OUT.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
swift build -c release --package-path bench >/dev/null
BIN=$(swift build -c release --package-path bench --show-bin-path)/msq-bench
"$BIN" cost --model resnet20 --method fp  --batch 128 --steps 30 --warmup 3 --json "$OUT/resnet20-fp.json"
"$BIN" cost --model resnet20 --method msq --batch 128 --steps 30 --warmup 3 --hessian-probes 8 --hessian-batch 64 --json "$OUT/resnet20-msq.json"
"$BIN" cost --model resnet18 --method fp  --batch 16 --steps 5 --warmup 1 --json "$OUT/resnet18-fp.json"
"$BIN" cost --model resnet18 --method msq --batch 16 --steps 5 --warmup 1 --hessian-probes 4 --hessian-batch 16 --json "$OUT/resnet18-msq.json"
