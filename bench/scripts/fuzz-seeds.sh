#!/usr/bin/env bash
# Writes the seed corpora of the fuzz harnesses: bench/scripts/fuzz-seeds.sh [DIR]
# (default bench/fuzz/corpus/seeds). Small valid IDX, CIFAR-10, checkpoint and .msqmodel files
# made by the fuzz-seeds tool with MSQ's own writers, plus gzip copies of the data files (the
# IDX and CIFAR-10 harnesses send gzip inputs through the file readers).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
out="${1:-$root/bench/fuzz/corpus/seeds}"
# A file added to MSQ (a path dependency here) is seen only with a fresh build plan.
rm -f "$root/bench/fuzz/.build-seeds/release.yaml" "$root/bench/fuzz/.build-seeds/x86_64-unknown-linux-gnu/release/description.json"
swift build -c release --package-path "$root/bench/fuzz" --scratch-path "$root/bench/fuzz/.build-seeds" \
    --product fuzz-seeds >&2
rm -rf "$out"
"$root/bench/fuzz/.build-seeds/release/fuzz-seeds" "$out"
for kind in idx cifar; do
    for f in "$out/$kind"/*; do gzip -n -c "$f" > "$f.gz"; done
done
