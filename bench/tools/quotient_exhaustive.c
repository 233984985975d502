/* quotient_exhaustive.c — checks, for every float weight w (all 2^32 bit patterns but NaNs), that
 * the fast quantizer kernels' division-free code value (quant.c, code_real) equals the
 * MSQ-SPEC §1 arithmetic bit for bit:
 *
 *     spec:  2^n · RN(0.5 + RN(w / (2s)))
 *     fast:  RN(2^(n-1) + 2q)  (one FMA),  q = RN(q1 + e·r) unless q1 is not finite,
 *            d = 2s / 2^(n-1), r = RN(1/d), q1 = RN(w·r), e = w − q1·d (one FMA)
 *
 * q = RN(w / d) is half the quotient the spec rounds, so q1 cannot overflow while the spec's
 * quotient is finite (with d = s / 2^(n-1) it did, at w = ±0x1.fffffcp+126, s = 0x1.fffffep-1).
 *
 * at bits n in {1, 2, 4, 8, 12, 16} and scales s spanning [2^-60, 2^60] (the edges, 1, and
 * random ones). Build and run: bash bench/scripts/check-quotient.sh [random scales]. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static inline float from_bits(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static inline uint32_t bits_of(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

static inline float spec_code_real(float w, float two_s, float scale_n) {
    return scale_n * (0.5f + w / two_s);
}

/* Must stay the same arithmetic as quant.c's code_real. */
static inline float fast_code_real(float w, float d, float r, float half) {
    const float q1 = w * r;
    const float e = fmaf(-q1, d, w);
    const float q2 = fmaf(e, r, q1);
    return fmaf(2.0f, q2 != q2 ? q1 : q2, half);
}

int main(int argc, char **argv) {
    const int n_random = argc > 1 ? atoi(argv[1]) : 6;
    const int bit_list[] = {1, 2, 4, 8, 12, 16};
    float scales[64];
    int n_scales = 0;
    scales[n_scales++] = 0x1p-60f;
    scales[n_scales++] = 0x1p60f;
    scales[n_scales++] = 1.0f;
    scales[n_scales++] = 0x1.fffffep-1f;
    srand(12345);
    for (int i = 0; i < n_random && n_scales < 64; i++)
        scales[n_scales++] = ldexpf(0.5f + (float)rand() / (2.0f * (float)RAND_MAX), rand() % 120 - 60);
    long total_bad = 0;
    for (int si = 0; si < n_scales; si++)
        for (size_t bi = 0; bi < sizeof bit_list / sizeof bit_list[0]; bi++) {
            const float s = scales[si], scale_n = ldexpf(1.0f, bit_list[bi]), half = scale_n / 2;
            const float two_s = 2.0f * s, d = two_s / half, r = 1.0f / d;
            long bad = 0;
            #pragma omp parallel for reduction(+ : bad) schedule(static)
            for (int64_t u = 0; u <= 0xffffffffLL; u++) {
                const float w = from_bits((uint32_t)u);
                if (w != w) continue;
                if (bits_of(spec_code_real(w, two_s, scale_n)) != bits_of(fast_code_real(w, d, r, half))) bad++;
            }
            printf("s = %-16a bits %2d: %ld mismatches\n", s, bit_list[bi], bad);
            fflush(stdout);
            total_bad += bad;
        }
    printf("%s: %ld mismatches in %d scales x 6 bit widths x every non-NaN float\n",
           total_bad ? "FAILED" : "OK", total_bad, n_scales);
    return total_bad != 0;
}
