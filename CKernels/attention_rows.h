/* attention_rows.h — what attention.c and window_attention.c share: one row of softmax and of its
 * backward (8 lanes, reduced in a fixed order, vector_math.h's exponential; no -ffast-math) and one
 * (image or window, head)'s attention backward. Internal to CKernels. */
#ifndef MSQ_ATTENTION_ROWS_H
#define MSQ_ATTENTION_ROWS_H

#include <cblas.h>
#include "vector_math.h"
#include <float.h>
#include <immintrin.h>
#include <math.h>

static inline float msq_lanes_max(__m256 v) {
    float l[8];
    _mm256_storeu_ps(l, v);
    float m = l[0];
    for (int i = 1; i < 8; i++) m = l[i] > m ? l[i] : m;
    return m;
}

/* p = softmax(s) over one row of n, in place allowed: e^(s − max) / Σ e^(s − max). */
static inline void msq_softmax_row(float *p, const float *s, int n) {
    __m256 vm = _mm256_set1_ps(-FLT_MAX);
    int j = 0;
    for (; j + 8 <= n; j += 8) vm = _mm256_max_ps(vm, _mm256_loadu_ps(s + j));
    float mx = msq_lanes_max(vm);
    for (int t = j; t < n; t++) mx = s[t] > mx ? s[t] : mx;
    const __m256 m = _mm256_set1_ps(mx);
    __m256 acc = _mm256_setzero_ps();
    for (j = 0; j + 8 <= n; j += 8) {
        const __m256 e = msq_exp8(_mm256_sub_ps(_mm256_loadu_ps(s + j), m));
        _mm256_storeu_ps(p + j, e);
        acc = _mm256_add_ps(acc, e);
    }
    float sum = msq_lanes_sum8(acc);
    for (; j < n; j++) {
        p[j] = msq_exp1(s[j] - mx);
        sum += p[j];
    }
    const __m256 inv = _mm256_set1_ps(1.0f / sum);
    for (j = 0; j + 8 <= n; j += 8) _mm256_storeu_ps(p + j, _mm256_mul_ps(_mm256_loadu_ps(p + j), inv));
    for (; j < n; j++) p[j] *= 1.0f / sum;
}

/* dS = P ⊙ (dP − Σ_j P·dP) over one row, in place in dp. */
static inline void msq_softmax_backward_row(float *dp, const float *p, int n) {
    __m256 acc = _mm256_setzero_ps();
    int j = 0;
    for (; j + 8 <= n; j += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(p + j), _mm256_loadu_ps(dp + j), acc);
    float dot = msq_lanes_sum8(acc);
    for (int t = j; t < n; t++) dot = fmaf(p[t], dp[t], dot);
    const __m256 d = _mm256_set1_ps(dot);
    for (j = 0; j + 8 <= n; j += 8)
        _mm256_storeu_ps(dp + j, _mm256_mul_ps(_mm256_loadu_ps(p + j), _mm256_sub_ps(_mm256_loadu_ps(dp + j), d)));
    for (; j < n; j++) dp[j] = p[j] * (dp[j] - dot);
}

/* One head's attention backward, single-threaded GEMMs: dV += Pᵀ·dO, dS = P ⊙ (dO·Vᵀ − rowsum),
 * dQ += scale·dS·K, dK += scale·dSᵀ·Q. q, k, v, dq, dk, dv are T × d with row stride ld (qkv's
 * layout), go T × d with stride D, p T × T; ds is T × T scratch and is left holding dS. */
static inline void msq_attention_head_backward(float *dq, float *dk, float *dv, float *ds, const float *go,
                                               const float *q, const float *k, const float *v, const float *p,
                                               int T, int d, int D, int ld, float scale) {
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, d, T, 1.0f, p, T, go, D, 1.0f, dv, ld);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, d, 1.0f, go, D, v, ld, 0.0f, ds, T);
    for (int r = 0; r < T; r++) msq_softmax_backward_row(ds + (size_t)r * T, p + (size_t)r * T, T);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, d, T, scale, ds, T, k, ld, 1.0f, dq, ld);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, d, T, scale, ds, T, q, ld, 1.0f, dk, ld);
}

/* The `_ref` twins' backward of one (image or window, head), in double: dV += Pᵀ·dO,
 * ds = dS = P ⊙ (dO·Vᵀ − rowsum(P ⊙ dO·Vᵀ)) (left in ds, T × T, for a caller that needs it),
 * dQ += scale·dS·K, dK += scale·dSᵀ·Q. q, k, v, dq, dk, dv are rows of stride ld; go rows of
 * stride D; p is T × T. */
static inline void msq_attention_head_backward_ref(float *dq, float *dk, float *dv, double *ds, const float *go,
                                                   const float *q, const float *k, const float *v, const float *p,
                                                   int T, int d, int D, int ld, float scale) {
    for (int j = 0; j < T; j++)
        for (int c = 0; c < d; c++) {
            double s = 0;
            for (int i = 0; i < T; i++) s += (double)p[(size_t)i * T + j] * go[(size_t)i * D + c];
            dv[(size_t)j * ld + c] += (float)s;
        }
    for (int i = 0; i < T; i++) {
        double dot = 0;
        for (int j = 0; j < T; j++) {
            double s = 0;
            for (int c = 0; c < d; c++) s += (double)go[(size_t)i * D + c] * v[(size_t)j * ld + c];
            ds[(size_t)i * T + j] = s;
            dot += s * p[(size_t)i * T + j];
        }
        for (int j = 0; j < T; j++) ds[(size_t)i * T + j] = p[(size_t)i * T + j] * (ds[(size_t)i * T + j] - dot);
    }
    for (int i = 0; i < T; i++)
        for (int c = 0; c < d; c++) {
            double sq = 0, sk = 0;
            for (int j = 0; j < T; j++) {
                sq += ds[(size_t)i * T + j] * k[(size_t)j * ld + c];
                sk += ds[(size_t)j * T + i] * q[(size_t)j * ld + c];
            }
            dq[(size_t)i * ld + c] += (float)(scale * sq);
            dk[(size_t)i * ld + c] += (float)(scale * sk);
        }
}

#endif /* MSQ_ATTENTION_ROWS_H */
