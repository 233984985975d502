/* attention.c — multi-head scaled dot-product self-attention over a fused qkv tensor, and the
 * softmax over the last axis it uses.
 *
 * qkv[b, t, 3, h, d] is what a Linear(D, 3·D) puts out for each token (timm's layout, D = H·d):
 * for image b and head h, Q, K and V are T × d matrices with row stride 3·D, read in place.
 *
 *     forward   S = scale·Q·Kᵀ (T × T),  P = softmax over each row of S,  O = P·V
 *               out[b, t, h·d + j] = O[t, j]   (heads side by side: the input of the output proj)
 *     backward  dV += Pᵀ·dO,  dP = dO·Vᵀ,  dS = P ⊙ (dP − rowsum(P ⊙ dP)),
 *               dQ += scale·dS·K,  dK += scale·dSᵀ·Q
 *
 * P is kept for the backward: probs[b, h, T, T], B·H·T² floats (DeiT-Tiny at 224², batch 16:
 * 16·3·197² = 1.9 M floats, 7.4 MB per block). Every (b, h) is one thread's work, its GEMMs
 * single-threaded OpenBLAS calls: results are the same at any thread count. The exponential is
 * vector_math.h's (libm has no vector expf here). No -ffast-math. */
#include "msq_kernels.h"
#include "conv_internal.h"
#include "vector_math.h"
#include <cblas.h>
#include <float.h>
#include <omp.h>
#include <stdlib.h>

static inline float lanes_max(__m256 v) {
    float l[8];
    _mm256_storeu_ps(l, v);
    float m = l[0];
    for (int i = 1; i < 8; i++) m = l[i] > m ? l[i] : m;
    return m;
}

/* p = softmax(s) over one row of n, in place allowed: e^(s − max) / Σ e^(s − max). */
static void softmax_row(float *p, const float *s, int n) {
    __m256 vm = _mm256_set1_ps(-FLT_MAX);
    int j = 0;
    for (; j + 8 <= n; j += 8) vm = _mm256_max_ps(vm, _mm256_loadu_ps(s + j));
    float mx = lanes_max(vm);
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

/* x[rows, n] -> y[rows, n] = softmax of each row (y may be x). */
void msq_softmax_forward(float *y, const float *x, int rows, int n) {
    #pragma omp parallel for schedule(static) if (rows > 16 && !omp_in_parallel())
    for (int r = 0; r < rows; r++) softmax_row(y + (size_t)r * n, x + (size_t)r * n, n);
}

void msq_softmax_forward_ref(float *y, const float *x, int rows, int n) {
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * n;
        float mx = xr[0];
        for (int j = 1; j < n; j++) mx = xr[j] > mx ? xr[j] : mx;
        double s = 0;
        for (int j = 0; j < n; j++) s += exp((double)xr[j] - mx);
        for (int j = 0; j < n; j++) y[(size_t)r * n + j] = (float)(exp((double)xr[j] - mx) / s);
    }
}

/* dS = P ⊙ (dP − Σ_j P·dP) over one row, in place in dp. */
static void softmax_backward_row(float *dp, const float *p, int n) {
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

/* Scratch per thread: one T × T matrix (dP, then dS). */
void msq_attention_forward(float *out, float *probs, const float *qkv, int batch, int tokens, int heads,
                           int head_dim, float scale) {
    const int T = tokens, d = head_dim, D = heads * head_dim, ld = 3 * D;
    const long items = (long)batch * heads;
    #pragma omp parallel for schedule(static) if (items > 1 && !omp_in_parallel())
    for (long it = 0; it < items; it++) {
        const int b = (int)(it / heads), h = (int)(it % heads);
        const float *q = qkv + (size_t)b * T * ld + (size_t)h * d, *k = q + D, *v = q + 2 * D;
        float *p = probs + (size_t)it * T * T;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, d, scale, q, ld, k, ld, 0.0f, p, T);
        for (int r = 0; r < T; r++) softmax_row(p + (size_t)r * T, p + (size_t)r * T, T);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, d, T, 1.0f, p, T, v, ld, 0.0f,
                    out + (size_t)b * T * D + (size_t)h * d, D);
    }
}

void msq_attention_forward_ref(float *out, float *probs, const float *qkv, int batch, int tokens, int heads,
                               int head_dim, float scale) {
    const int T = tokens, d = head_dim, D = heads * head_dim, ld = 3 * D;
    for (int b = 0; b < batch; b++)
        for (int h = 0; h < heads; h++) {
            const float *q = qkv + (size_t)b * T * ld + (size_t)h * d, *k = q + D, *v = q + 2 * D;
            float *p = probs + ((size_t)b * heads + h) * T * T;
            for (int i = 0; i < T; i++)
                for (int j = 0; j < T; j++) {
                    double s = 0;
                    for (int c = 0; c < d; c++) s += (double)q[(size_t)i * ld + c] * k[(size_t)j * ld + c];
                    p[(size_t)i * T + j] = (float)(scale * s);
                }
            msq_softmax_forward_ref(p, p, T, T);
            for (int i = 0; i < T; i++)
                for (int c = 0; c < d; c++) {
                    double s = 0;
                    for (int j = 0; j < T; j++) s += (double)p[(size_t)i * T + j] * v[(size_t)j * ld + c];
                    out[(size_t)b * T * D + (size_t)i * D + (size_t)h * d + c] = (float)s;
                }
        }
}

/* dout[b, t, D], qkv and probs (the forward's) -> dqkv[b, t, 3, h, d] (accumulated). */
void msq_attention_backward(float *dqkv, const float *dout, const float *qkv, const float *probs, int batch,
                            int tokens, int heads, int head_dim, float scale) {
    const int T = tokens, d = head_dim, D = heads * head_dim, ld = 3 * D;
    const long items = (long)batch * heads;
    const int team = msq_conv_team_size(items);
    float *scratch = malloc(sizeof(float) * (size_t)T * T * (size_t)team);
    if (!scratch) { /* out of memory: slow but right */
        msq_attention_backward_ref(dqkv, dout, qkv, probs, batch, tokens, heads, head_dim, scale);
        return;
    }
    #pragma omp parallel num_threads(team) if (team > 1)
    {
        float *ds = scratch + (size_t)T * T * omp_get_thread_num();
        #pragma omp for schedule(static)
        for (long it = 0; it < items; it++) {
            const int b = (int)(it / heads), h = (int)(it % heads);
            const size_t base = (size_t)b * T * ld + (size_t)h * d;
            const float *q = qkv + base, *k = q + D, *v = q + 2 * D;
            float *dq = dqkv + base, *dk = dq + D, *dv = dq + 2 * D;
            const float *p = probs + (size_t)it * T * T, *dout_bh = dout + (size_t)b * T * D + (size_t)h * d;
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, d, T, 1.0f, p, T, dout_bh, D, 1.0f, dv, ld);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, d, 1.0f, dout_bh, D, v, ld, 0.0f, ds, T);
            for (int r = 0; r < T; r++) softmax_backward_row(ds + (size_t)r * T, p + (size_t)r * T, T);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, d, T, scale, ds, T, k, ld, 1.0f, dq, ld);
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, d, T, scale, ds, T, q, ld, 1.0f, dk, ld);
        }
    }
    free(scratch);
}

void msq_attention_backward_ref(float *dqkv, const float *dout, const float *qkv, const float *probs, int batch,
                                int tokens, int heads, int head_dim, float scale) {
    const int T = tokens, d = head_dim, D = heads * head_dim, ld = 3 * D;
    double *ds = malloc(sizeof(double) * (size_t)T * T);
    if (!ds) return;
    for (int b = 0; b < batch; b++)
        for (int h = 0; h < heads; h++) {
            const size_t base = (size_t)b * T * ld + (size_t)h * d;
            const float *q = qkv + base, *k = q + D, *v = q + 2 * D;
            float *dq = dqkv + base, *dk = dq + D, *dv = dq + 2 * D;
            const float *p = probs + ((size_t)b * heads + h) * T * T, *go = dout + (size_t)b * T * D + (size_t)h * d;
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
    free(ds);
}
