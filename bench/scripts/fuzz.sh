#!/usr/bin/env bash
# Runs one libFuzzer harness: bench/scripts/fuzz.sh TARGET SECONDS [libFuzzer options…]
# TARGET: idx, cifar, checkpoint or model. Builds bench/fuzz's fuzz-TARGET with
# --sanitize=fuzzer --sanitize=address (scratch path bench/fuzz/.build-fuzz), makes the seed
# corpora if missing (fuzz-seeds.sh), then fuzzes for SECONDS with the growing corpus in
# bench/fuzz/corpus/TARGET and crash, leak or timeout inputs in bench/fuzz/artifacts/.
# Prints libFuzzer's final statistics (executions, coverage); exits non-zero on a finding.
set -euo pipefail
if [[ $# -lt 2 ]] || ! [[ "$1" =~ ^(idx|cifar|checkpoint|model)$ ]] || ! [[ "$2" =~ ^[0-9]+$ ]]; then
    echo "usage: $0 idx|cifar|checkpoint|model SECONDS [libFuzzer options...]" >&2
    exit 2
fi
target=$1 seconds=$2
shift 2
root="$(cd "$(dirname "$0")/../.." && pwd)"
fuzz="$root/bench/fuzz"
[[ -d "$fuzz/corpus/seeds/$target" ]] || bash "$root/bench/scripts/fuzz-seeds.sh"
# SwiftPM does not notice a file added to MSQ (a path dependency here) and keeps the old plan
# ("cannot find ... in scope"): drop the plan so it is made again (unchanged targets are not rebuilt).
rm -f "$fuzz/.build-fuzz/release.yaml" "$fuzz/.build-fuzz/x86_64-unknown-linux-gnu/release/description.json"
# swiftc keeps only the last -sanitize= it is given, and SwiftPM passes --sanitize=fuzzer and
# --sanitize=address as two: alone they build Swift code with ASan but without coverage (libFuzzer
# then sees only the C code). The -Xswiftc flag comes last and names both.
swift build -c release --package-path "$fuzz" --scratch-path "$fuzz/.build-fuzz" \
    --sanitize=fuzzer --sanitize=address -Xswiftc -sanitize=fuzzer,address --product "fuzz-$target" >&2
mkdir -p "$fuzz/corpus/$target" "$fuzz/artifacts"
# -timeout: an input taking 10 s is a hang. -max_len: a few CIFAR-10 records; for models, room
# for the whole-network seed (88 kB).
case $target in
    idx|cifar) max_len=16384 ;;
    checkpoint) max_len=8192 ;;
    model) max_len=131072 ;;
esac
exec "$fuzz/.build-fuzz/release/fuzz-$target" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=4096 \
    -max_len="$max_len" -print_final_stats=1 -artifact_prefix="$fuzz/artifacts/$target-" "$@" \
    "$fuzz/corpus/$target" "$fuzz/corpus/seeds/$target"
