/* quant.c — MSQ's RoundClamp weight quantizer, the fused LSB regulariser pass and PACT
 * (MSQ-SPEC §1, §2, §5). The header states the formulas, operation order and rounding mode
 * (round half to even via rintf under the default rounding mode).
 *
 * The per-element arithmetic lives in static inline helpers shared by the fast and the `_ref`
 * kernels, so both give the same bits per element. The fast kernels split arrays into fixed
 * chunks of MSQ_QUANT_CHUNK elements; reductions are summed per chunk in double (8 fixed
 * lanes, so the loop vectorises without reassociation) and the chunk sums are added in chunk
 * order: the result does not depend on the thread count. */
#include "msq_kernels.h"
#include <math.h>
#include <stdlib.h>
#if defined(__AVX2__)
#include <immintrin.h>
#endif

_Static_assert(MSQ_QUANT_CHUNK <= 1 << 30, "lsb_chunk counts a chunk's nonzeros in 32 bits");
#define QUANT_PARALLEL_MIN 16384 /* elements; below this a parallel region costs more than it saves */
#define QUANT_LANES 8

static inline float pow2f(int e) { return (float)(1u << e); }

/* w~ = 0.5f + w / (2s); 2s is exact. */
static inline float wtilde(float w, float two_s) { return 0.5f + w / two_s; }

/* 2^n · w~ without a division, for the fast kernels (a vector division costs more than all
   the rest of RoundClamp). With d = 2s / 2^(n-1) and r = RN(1/d): q1 = RN(w·r), the residual
   e = w − q1·d exactly (one FMA), and RN(q1 + e·r) = RN(w / d) (Markstein's correction;
   Handbook of Floating-Point Arithmetic, 2nd ed., §4.7). Then RN(2^(n-1) + 2q) (one FMA) is
   2^n · RN(0.5 + RN(w / (2s))) — powers of two commute with rounding — with one mul fewer.
   q is half the quotient the spec rounds so that q1 cannot overflow while the spec's quotient
   is finite; a subnormal quotient vanishes into 2^(n-1) either way, and an infinite q1 (the
   spec's quotient overflows too; q2 is NaN) is kept. bench/scripts/check-quotient.sh checks
   this against the spec for every non-NaN float w, at bits 1-16 and scales over [2^-60, 2^60];
   fast_scale() keeps the kernels inside that range. */
static inline float code_real(float w, float d, float recip, float half) {
    const float q1 = w * recip;
    const float e = fmaf(-q1, d, w);
    const float q2 = fmaf(e, recip, q1);
    return fmaf(2.0f, q2 != q2 ? q1 : q2, half);
}

/* Scales the division-free kernels take; others (never seen in training, where s = max|W|
   of real weights) run the `_ref` arithmetic. Inside it (bits <= 16), d, r and s / 2^(n-1)
   are normal numbers, so the products that replace divisions round exactly as they do. */
static inline int fast_scale(float scale) { return scale >= 0x1p-60f && scale <= 0x1p60f; }

/* clamp(round(v), 0, hi): rintf is round-half-even in the default rounding mode. fmaxf/fminf
   send NaN to 0 (fmaxf(NaN, 0) = 0), so a NaN weight becomes code 0 instead of UB on conversion. */
static inline float roundclamp(float v, float hi) { return fminf(fmaxf(rintf(v), 0.0f), hi); }

static inline size_t n_chunks(size_t count) { return (count + MSQ_QUANT_CHUNK - 1) / MSQ_QUANT_CHUNK; }

/* Sum of 8 lanes in a fixed tree order. */
static inline double lanes_sum(const double *a) {
    return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
}

/* ---------------------------------------------------------------- absmax */

float msq_absmax_ref(const float *w, size_t count) {
    float m = 0.0f;
    for (size_t i = 0; i < count; i++) m = fmaxf(m, fabsf(w[i]));
    return m;
}

/* max is exact and order-free (NaNs aside, which fmaxf ignores everywhere), so any partition
   gives the reference's bits. */
float msq_absmax(const float *w, size_t count) {
    float m = 0.0f;
    #pragma omp parallel for simd schedule(static) reduction(max : m) if (count > QUANT_PARALLEL_MIN)
    for (size_t i = 0; i < count; i++) m = fmaxf(m, fabsf(w[i]));
    return m;
}

/* ---------------------------------------------------------------- RoundClamp */

static inline void rc_fwd_one(float *wq, int32_t *code, float w, float two_s, float scale_n,
                              float hi, float half, float s) {
    float q = roundclamp(scale_n * wtilde(w, two_s), hi);
    float j = q - half;
    *wq = (s * j) / half;
    if (code) *code = (int32_t)j;
}

static void rc_fwd_zero(float *wq, int32_t *codes, size_t count) {
    for (size_t i = 0; i < count; i++) {
        wq[i] = 0.0f;
        if (codes) codes[i] = 0;
    }
}

void msq_roundclamp_forward_ref(float *wq, int32_t *codes, const float *w, size_t count,
                                float scale, int bits) {
    if (scale == 0.0f) {
        rc_fwd_zero(wq, codes, count);
        return;
    }
    float two_s = 2.0f * scale, scale_n = pow2f(bits), hi = scale_n - 1.0f, half = pow2f(bits - 1);
    for (size_t i = 0; i < count; i++)
        rc_fwd_one(&wq[i], codes ? &codes[i] : NULL, w[i], two_s, scale_n, hi, half, scale);
}

typedef struct rc_params {
    float d, recip, half, hi, s_half, s; /* code_real's d, 1/d, 2^(n-1); 2^n - 1; s/2^(n-1), s */
} rc_params;

/* One chunk of the fast forward: wq = RN(j·s') as q·s' − s, codes = j = q − 2^(n-1). */
static void rc_fwd_chunk(float *restrict wq, int32_t *restrict codes, const float *restrict w, size_t m,
                         const rc_params *pp) {
    const rc_params p = *pp;
    size_t i = 0;
#if defined(__AVX2__)
    const __m256 d = _mm256_set1_ps(p.d), recip = _mm256_set1_ps(p.recip), half = _mm256_set1_ps(p.half);
    const __m256 hi = _mm256_set1_ps(p.hi), s_half = _mm256_set1_ps(p.s_half), neg_s = _mm256_set1_ps(-p.s);
    const __m256 pos_s = _mm256_set1_ps(p.s);
    for (; i + 8 <= m; i += 8) {
        /* Only the clamped code is used here, so w is clamped to [-s, s] first (the codes of
           weights outside are 0 and 2^n - 1 either way; maxps sends NaN to -s, code 0, as
           roundclamp does): then 0 <= code value <= 2^n, the quotient cannot overflow and
           neither the guard nor the clamp at 0 is needed. Two operations fewer per vector. */
        const __m256 wc = _mm256_min_ps(_mm256_max_ps(_mm256_loadu_ps(w + i), neg_s), pos_s);
        const __m256 q1 = _mm256_mul_ps(wc, recip);
        const __m256 q2 = _mm256_fmadd_ps(_mm256_fnmadd_ps(q1, d, wc), recip, q1);
        const __m256 a = _mm256_fmadd_ps(_mm256_set1_ps(2.0f), q2, half);
        const __m256 q = _mm256_min_ps(_mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), hi);
        _mm256_storeu_ps(wq + i, _mm256_fmadd_ps(q, s_half, neg_s));
        if (codes) _mm256_storeu_si256((__m256i *)(codes + i), _mm256_cvttps_epi32(_mm256_sub_ps(q, half)));
    }
#endif
    for (; i < m; i++) {
        const float q = roundclamp(code_real(w[i], p.d, p.recip, p.half), p.hi);
        wq[i] = fmaf(q, p.s_half, -p.s);
        if (codes) codes[i] = (int32_t)(q - p.half);
    }
}

void msq_roundclamp_forward(float *wq, int32_t *codes, const float *w, size_t count,
                            float scale, int bits) {
    if (scale == 0.0f) {
        rc_fwd_zero(wq, codes, count);
        return;
    }
    if (!fast_scale(scale)) {
        msq_roundclamp_forward_ref(wq, codes, w, count, scale, bits);
        return;
    }
    const float hi = pow2f(bits) - 1.0f, half = pow2f(bits - 1);
    const float d = 2.0f * scale / half, recip = 1.0f / d;
    /* (s·j)/2^(n-1) = RN(j·s') with s' = s/2^(n-1) exact (scaling by a power of two commutes
       with rounding for normal numbers), and j·s' = q·s' − s exactly: one FMA. */
    const rc_params p = {d, recip, half, hi, scale / half, scale};
    const size_t nc = n_chunks(count);
    #pragma omp parallel for schedule(static) if (count > QUANT_PARALLEL_MIN)
    for (size_t c = 0; c < nc; c++) {
        const size_t start = c * MSQ_QUANT_CHUNK;
        const size_t m = count - start < MSQ_QUANT_CHUNK ? count - start : MSQ_QUANT_CHUNK;
        rc_fwd_chunk(wq + start, codes ? codes + start : NULL, w + start, m, &p);
    }
}

/* 1 when the unclamped code round(2^n w~) lies in [0, 2^n - 1]. */
static inline int rc_inside(float w, float two_s, float scale_n, float hi) {
    float r = rintf(scale_n * wtilde(w, two_s));
    return r >= 0.0f && r <= hi;
}

void msq_roundclamp_backward_ref(float *dw, const float *dwq, const float *w, size_t count,
                                 float scale, int bits, int zero_outside) {
    if (!zero_outside || scale == 0.0f) {
        for (size_t i = 0; i < count; i++) dw[i] += dwq[i];
        return;
    }
    float two_s = 2.0f * scale, scale_n = pow2f(bits), hi = scale_n - 1.0f;
    for (size_t i = 0; i < count; i++)
        if (rc_inside(w[i], two_s, scale_n, hi)) dw[i] += dwq[i];
}

void msq_roundclamp_backward(float *dw, const float *dwq, const float *w, size_t count,
                             float scale, int bits, int zero_outside) {
    if (!zero_outside || scale == 0.0f) {
        #pragma omp parallel for simd schedule(static) if (count > QUANT_PARALLEL_MIN)
        for (size_t i = 0; i < count; i++) dw[i] += dwq[i];
        return;
    }
    if (!fast_scale(scale)) {
        msq_roundclamp_backward_ref(dw, dwq, w, count, scale, bits, zero_outside);
        return;
    }
    const float hi = pow2f(bits) - 1.0f, half = pow2f(bits - 1);
    const float d = 2.0f * scale / half, recip = 1.0f / d;
    #pragma omp parallel for simd schedule(static) if (count > QUANT_PARALLEL_MIN)
    for (size_t i = 0; i < count; i++) {
        float r = rintf(code_real(w[i], d, recip, half));
        float g = dw[i];
        dw[i] = (r >= 0.0f && r <= hi) ? g + dwq[i] : g;
    }
}

/* ---------------------------------------------------------------- fused LSB pass */

typedef struct lsb_params {
    float two_s, scale_n, hi_n, scale_m, hi_m, pow_k, step;
    float half, d, recip, inv_pow_k; /* for code_real: 2^(n-1), 2s / 2^(n-1), 1/d; 2^-k */
} lsb_params;

static lsb_params lsb_make(float scale, int bits, int k, float coeff) {
    lsb_params p;
    p.two_s = 2.0f * scale;
    p.scale_n = pow2f(bits);
    p.hi_n = p.scale_n - 1.0f;
    p.scale_m = pow2f(bits - k);
    p.hi_m = p.scale_m - 1.0f;
    p.pow_k = pow2f(k);
    p.step = coeff * (p.scale_n / p.two_s);
    p.half = pow2f(bits - 1);
    p.d = p.two_s / p.half;
    p.recip = 1.0f / p.d;
    p.inv_pow_k = 1.0f / p.pow_k;
    return p;
}

/* lsb of one weight; *nz = 1 when lsb_int != 0. All quantities are exact integers in float
   except wt, a (exact multiple of wt) and the final subtraction. */
static inline float lsb_one(float w, const lsb_params *p, int *nz) {
    float wt = wtilde(w, p->two_s);
    float a = p->scale_n * wt;
    float qn = roundclamp(a, p->hi_n);
    float qm = roundclamp(p->scale_m * wt, p->hi_m);
    float base = p->pow_k * qm;
    *nz = (qn - base) != 0.0f;
    return a - base;
}

static inline float sign_f(float x) { return x > 0.0f ? 1.0f : (x < 0.0f ? -1.0f : 0.0f); }

static void lsb_zero(float *lsb, double *abs_sum, int64_t *nonzero, size_t count) {
    if (lsb)
        for (size_t i = 0; i < count; i++) lsb[i] = 0.0f;
    if (abs_sum) *abs_sum = 0.0;
    if (nonzero) *nonzero = 0;
}

void msq_lsb_forward_backward_ref(float *lsb, double *abs_sum, int64_t *nonzero, float *grad,
                                  const float *w, size_t count, float scale, int bits, int k,
                                  float coeff) {
    if (scale == 0.0f) {
        lsb_zero(lsb, abs_sum, nonzero, count);
        return;
    }
    lsb_params p = lsb_make(scale, bits, k, coeff);
    double sum = 0.0;
    int64_t nzc = 0;
    for (size_t i = 0; i < count; i++) {
        int nz;
        float l = lsb_one(w[i], &p, &nz);
        if (lsb) lsb[i] = l;
        sum += fabs((double)l);
        nzc += nz;
        if (grad) grad[i] += sign_f(l) * p.step;
    }
    if (abs_sum) *abs_sum = sum;
    if (nonzero) *nonzero = nzc;
}

/* lsb_one by code_real: 2^(n-k)·w~ = (2^n·w~)·2^-k exactly. Returns lsb_int != 0. */
static inline int lsb_fast(float *l, float w, const lsb_params *p) {
    float a = code_real(w, p->d, p->recip, p->half);
    float qn = roundclamp(a, p->hi_n);
    float qm = roundclamp(a * p->inv_pow_k, p->hi_m);
    float base = p->pow_k * qm;
    *l = a - base;
    return qn != base;
}

/* One chunk of the fused pass: writes lsb (into `out`, the caller's array or a scratch chunk),
   adds the gradient, returns the chunk's |lsb| sum and nonzero count. Three short loops over
   data in L1: fused into one, with everything in registers, it ran slower (AVX2 has 16). */
static double lsb_chunk(float *restrict out, int64_t *nz_out, float *restrict grad,
                        const float *restrict w, size_t m, const lsb_params *pp) {
    const lsb_params p = *pp;
    /* A 32-bit count (a chunk holds at most MSQ_QUANT_CHUNK weights): with a 64-bit one the
       vectoriser keeps four floats per AVX2 register instead of eight. */
    int32_t nzc = 0;
    #pragma omp simd reduction(+ : nzc)
    for (size_t i = 0; i < m; i++) {
        float l;
        nzc += lsb_fast(&l, w[i], &p);
        out[i] = l;
    }
    if (grad) {
        #pragma omp simd
        for (size_t i = 0; i < m; i++) grad[i] += sign_f(out[i]) * p.step;
    }
    double acc[QUANT_LANES] = {0};
    size_t i = 0;
    for (; i + QUANT_LANES <= m; i += QUANT_LANES)
        for (int j = 0; j < QUANT_LANES; j++) acc[j] += fabs((double)out[i + j]);
    for (int j = 0; i < m; i++, j++) acc[j] += fabs((double)out[i]);
    *nz_out = nzc;
    return lanes_sum(acc);
}

void msq_lsb_forward_backward(float *lsb, double *abs_sum, int64_t *nonzero, float *grad,
                              const float *w, size_t count, float scale, int bits, int k,
                              float coeff) {
    if (scale == 0.0f) {
        lsb_zero(lsb, abs_sum, nonzero, count);
        return;
    }
    if (!fast_scale(scale)) {
        msq_lsb_forward_backward_ref(lsb, abs_sum, nonzero, grad, w, count, scale, bits, k, coeff);
        return;
    }
    lsb_params p = lsb_make(scale, bits, k, coeff);
    size_t nc = n_chunks(count);
    double one_sum;
    int64_t one_nz;
    double *sums = nc > 1 ? malloc(nc * sizeof(double)) : &one_sum;
    int64_t *nzs = nc > 1 ? malloc(nc * sizeof(int64_t)) : &one_nz;
    if (!sums || !nzs) {
        if (nc > 1) {
            free(sums);
            free(nzs);
        }
        msq_lsb_forward_backward_ref(lsb, abs_sum, nonzero, grad, w, count, scale, bits, k, coeff);
        return;
    }
    #pragma omp parallel for schedule(static) if (count > QUANT_PARALLEL_MIN)
    for (size_t c = 0; c < nc; c++) {
        size_t start = c * MSQ_QUANT_CHUNK;
        size_t m = count - start < MSQ_QUANT_CHUNK ? count - start : MSQ_QUANT_CHUNK;
        float scratch[MSQ_QUANT_CHUNK];
        float *out = lsb ? lsb + start : scratch;
        sums[c] = lsb_chunk(out, &nzs[c], grad ? grad + start : NULL, w + start, m, &p);
    }
    double total = 0.0;
    int64_t nzc = 0;
    for (size_t c = 0; c < nc; c++) {
        total += sums[c];
        nzc += nzs[c];
    }
    if (nc > 1) {
        free(sums);
        free(nzs);
    }
    if (abs_sum) *abs_sum = total;
    if (nonzero) *nonzero = nzc;
}

/* ---------------------------------------------------------------- proximal LSB step */

/* One weight's proximal step (header: msq_lsb_prox). lsb_one gives the same lsb as the fused
   pass's `_ref` arithmetic; the coarse code is recomputed to see the top clamp. */
static inline float lsb_prox_one(float w, const lsb_params *p, float t) {
    int nz;
    float l = lsb_one(w, p, &nz);
    if (rintf(p->scale_m * wtilde(w, p->two_s)) > p->hi_m) return w;
    float mag = fabsf(l) - t;
    float shrunk = mag > 0.0f ? sign_f(l) * mag : 0.0f;
    return w + (shrunk - l) * (p->two_s / p->scale_n);
}

void msq_lsb_prox_ref(float *w, size_t count, float scale, int bits, int k, float threshold) {
    if (scale == 0.0f || !(threshold > 0.0f)) return;
    lsb_params p = lsb_make(scale, bits, k, 0.0f);
    for (size_t i = 0; i < count; i++) w[i] = lsb_prox_one(w[i], &p, threshold);
}

void msq_lsb_prox(float *w, size_t count, float scale, int bits, int k, float threshold) {
    if (scale == 0.0f || !(threshold > 0.0f)) return;
    lsb_params p = lsb_make(scale, bits, k, 0.0f);
    #pragma omp parallel for schedule(static) if (count > QUANT_PARALLEL_MIN)
    for (size_t i = 0; i < count; i++) w[i] = lsb_prox_one(w[i], &p, threshold);
}

/* ---------------------------------------------------------------- PACT */

static inline float pact_one(float x, float alpha, float levels) {
    float c = fminf(fmaxf(x, 0.0f), alpha);
    return (rintf((c * levels) / alpha) * alpha) / levels;
}

void msq_pact_forward_ref(float *y, const float *x, size_t count, float alpha, int bits) {
    float levels = pow2f(bits) - 1.0f;
    for (size_t i = 0; i < count; i++) y[i] = pact_one(x[i], alpha, levels);
}

void msq_pact_forward(float *y, const float *x, size_t count, float alpha, int bits) {
    const float levels = pow2f(bits) - 1.0f;
    #pragma omp parallel for simd schedule(static) if (count > QUANT_PARALLEL_MIN)
    for (size_t i = 0; i < count; i++) y[i] = pact_one(x[i], alpha, levels);
}

void msq_pact_backward_ref(float *dx, float *dalpha, const float *dy, const float *x, size_t count,
                           float alpha) {
    double da = 0.0;
    for (size_t i = 0; i < count; i++) {
        if (dx && x[i] >= 0.0f && x[i] < alpha) dx[i] += dy[i];
        if (x[i] >= alpha) da += (double)dy[i];
    }
    if (dalpha) *dalpha += (float)da;
}

static double pact_chunk(float *restrict dx, const float *restrict dy, const float *restrict x,
                         size_t m, float alpha) {
    if (dx) {
        #pragma omp simd
        for (size_t i = 0; i < m; i++) {
            float d = dx[i];
            dx[i] = (x[i] >= 0.0f && x[i] < alpha) ? d + dy[i] : d;
        }
    }
    double acc[QUANT_LANES] = {0};
    size_t i = 0;
    for (; i + QUANT_LANES <= m; i += QUANT_LANES)
        for (int j = 0; j < QUANT_LANES; j++) acc[j] += x[i + j] >= alpha ? (double)dy[i + j] : 0.0;
    for (int j = 0; i < m; i++, j++) acc[j] += x[i] >= alpha ? (double)dy[i] : 0.0;
    return lanes_sum(acc);
}

void msq_pact_backward(float *dx, float *dalpha, const float *dy, const float *x, size_t count,
                       float alpha) {
    size_t nc = n_chunks(count);
    double one_sum = 0.0;
    double *sums = nc > 1 ? malloc(nc * sizeof(double)) : &one_sum;
    if (!sums) {
        msq_pact_backward_ref(dx, dalpha, dy, x, count, alpha);
        return;
    }
    #pragma omp parallel for schedule(static) if (count > QUANT_PARALLEL_MIN)
    for (size_t c = 0; c < nc; c++) {
        size_t start = c * MSQ_QUANT_CHUNK;
        size_t m = count - start < MSQ_QUANT_CHUNK ? count - start : MSQ_QUANT_CHUNK;
        sums[c] = pact_chunk(dx ? dx + start : NULL, dy + start, x + start, m, alpha);
    }
    double total = 0.0;
    for (size_t c = 0; c < nc; c++) total += sums[c];
    if (nc > 1) free(sums);
    if (dalpha) *dalpha += (float)total;
}

/* ---------------------------------------------------------------- LSQ (signed activations) */

static inline float lsq_one(float x, float alpha, float levels) {
    float c = fminf(fmaxf(x, -alpha), alpha);
    return (rintf((c * levels) / alpha) * alpha) / levels;
}

void msq_lsq_forward_ref(float *y, const float *x, size_t count, float alpha, int bits) {
    float levels = pow2f(bits - 1) - 1.0f;
    for (size_t i = 0; i < count; i++) y[i] = lsq_one(x[i], alpha, levels);
}

void msq_lsq_forward(float *y, const float *x, size_t count, float alpha, int bits) {
    const float levels = pow2f(bits - 1) - 1.0f;
    #pragma omp parallel for simd schedule(static) if (count > QUANT_PARALLEL_MIN)
    for (size_t i = 0; i < count; i++) y[i] = lsq_one(x[i], alpha, levels);
}

/* dy_q/dα of one element: (round(v) − v)/L inside the range (v = x·L/α), sign(x) outside. */
static inline double lsq_dalpha(float x, float alpha, float levels) {
    if (x >= alpha) return 1.0;
    if (x <= -alpha) return -1.0;
    const float v = (x * levels) / alpha;
    return ((double)rintf(v) - (double)v) / levels;
}

void msq_lsq_backward_ref(float *dx, float *dalpha, const float *dy, const float *x, size_t count,
                          float alpha, int bits, float grad_scale) {
    const float levels = pow2f(bits - 1) - 1.0f;
    double da = 0.0;
    for (size_t i = 0; i < count; i++) {
        if (dx && x[i] > -alpha && x[i] < alpha) dx[i] += dy[i];
        da += (double)dy[i] * lsq_dalpha(x[i], alpha, levels);
    }
    if (dalpha) *dalpha += (float)(da * grad_scale);
}

static double lsq_chunk(float *restrict dx, const float *restrict dy, const float *restrict x, size_t m,
                        float alpha, float levels) {
    if (dx) {
        #pragma omp simd
        for (size_t i = 0; i < m; i++) {
            float d = dx[i];
            dx[i] = (x[i] > -alpha && x[i] < alpha) ? d + dy[i] : d;
        }
    }
    double acc[QUANT_LANES] = {0};
    size_t i = 0;
    for (; i + QUANT_LANES <= m; i += QUANT_LANES)
        for (int j = 0; j < QUANT_LANES; j++) acc[j] += (double)dy[i + j] * lsq_dalpha(x[i + j], alpha, levels);
    for (int j = 0; i < m; i++, j++) acc[j] += (double)dy[i] * lsq_dalpha(x[i], alpha, levels);
    return lanes_sum(acc);
}

void msq_lsq_backward(float *dx, float *dalpha, const float *dy, const float *x, size_t count, float alpha,
                      int bits, float grad_scale) {
    const float levels = pow2f(bits - 1) - 1.0f;
    size_t nc = n_chunks(count);
    double one_sum = 0.0;
    double *sums = nc > 1 ? malloc(nc * sizeof(double)) : &one_sum;
    if (!sums) {
        msq_lsq_backward_ref(dx, dalpha, dy, x, count, alpha, bits, grad_scale);
        return;
    }
    #pragma omp parallel for schedule(static) if (count > QUANT_PARALLEL_MIN)
    for (size_t c = 0; c < nc; c++) {
        size_t start = c * MSQ_QUANT_CHUNK;
        size_t m = count - start < MSQ_QUANT_CHUNK ? count - start : MSQ_QUANT_CHUNK;
        sums[c] = lsq_chunk(dx ? dx + start : NULL, dy + start, x + start, m, alpha, levels);
    }
    double total = 0.0;
    for (size_t c = 0; c < nc; c++) total += sums[c];
    if (nc > 1) free(sums);
    if (dalpha) *dalpha += (float)(total * grad_scale);
}
