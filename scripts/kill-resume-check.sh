#!/usr/bin/env bash
# Checks that a run killed with SIGKILL in the middle of an epoch and restarted with --resume ends
# with the same weights as an uninterrupted run (compares `msq inspect` weight hashes).
#   bash scripts/kill-resume-check.sh [extra msq train options]
set -euo pipefail
cd "$(dirname "$0")/.."
swift build -c release --product msq >/dev/null
msq="$(swift build -c release --show-bin-path)/msq"
work=$(mktemp -d)
opts=(--model resnet20 --dataset fashion-mnist --epochs 3 --limit-train 3000 --limit-test 1000
      --batch-size 128 --lr 0.1 --seed 0 "$@")

echo "== uninterrupted run"
"$msq" train "${opts[@]}" --out "$work/straight" | grep -v "  step "

echo "== run to be killed"
"$msq" train "${opts[@]}" --out "$work/killed" > "$work/killed.log" 2>&1 &
pid=$!
# Wait for the first epoch's checkpoint, then a few seconds into the second epoch.
until [ -f "$work/killed/metrics.jsonl" ] && grep -q '"epoch":1' "$work/killed/metrics.jsonl"; do sleep 0.5; done
sleep 4
kill -9 "$pid"
wait "$pid" 2>/dev/null || true
echo "killed (SIGKILL) 4 s into epoch 2; its checkpoint holds epoch $("$msq" inspect "$work/killed/checkpoint.msqckpt" | sed -n 's/.*epochs completed \([0-9]*\).*/\1/p')"

echo "== resumed run"
"$msq" train "${opts[@]}" --out "$work/killed" --resume | grep -v "  step "

a=$("$msq" inspect "$work/straight/checkpoint.msqckpt" | grep weights_fnv1a64)
b=$("$msq" inspect "$work/killed/checkpoint.msqckpt" | grep weights_fnv1a64)
echo "uninterrupted: $a"
echo "killed+resumed: $b"
if [ "$a" = "$b" ]; then echo "RESULT: bit-identical final weights"; else echo "RESULT: weights differ"; exit 1; fi
