#!/usr/bin/env bash
# Exhaustive check of the quantizer kernels' division-free arithmetic against MSQ-SPEC §1
# (bench/tools/quotient_exhaustive.c): every non-NaN float weight, 6 bit widths, 4 fixed + N random
# scales (argument, default 6). About 1 s per scale and width on 2 cores. Needs clang (Swift's
# toolchain has one) and libomp-dev; no -ffast-math and no FMA contraction, as in CKernels.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
out="${TMPDIR:-/tmp}/msq-quotient-exhaustive"
omp_inc="/usr/lib/llvm-14/lib/clang/14.0.6/include"
clang -O2 -mavx2 -mfma -ffp-contract=off -fopenmp -I"$omp_inc" -o "$out" "$here/tools/quotient_exhaustive.c" \
    -L/usr/lib/llvm-14/lib -Wl,-rpath,/usr/lib/llvm-14/lib -lomp -lm
exec "$out" "${1:-6}"
