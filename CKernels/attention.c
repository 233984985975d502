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
#include "attention_rows.h"
#include "vector_math.h"
#include <cblas.h>
#include <float.h>
#include <omp.h>
#include <stdlib.h>

/* x[rows, n] -> y[rows, n] = softmax of each row (y may be x). */
void msq_softmax_forward(float *y, const float *x, int rows, int n) {
    #pragma omp parallel for schedule(static) if (rows > 16 && !omp_in_parallel())
    for (int r = 0; r < rows; r++) msq_softmax_row(y + (size_t)r * n, x + (size_t)r * n, n);
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
        for (int r = 0; r < T; r++) msq_softmax_row(p + (size_t)r * T, p + (size_t)r * T, T);
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
            msq_attention_head_backward(dq, dk, dv, ds, dout_bh, q, k, v, p, T, d, D, ld, scale);
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
            msq_attention_head_backward_ref(dq, dk, dv, ds, go, q, k, v, p, T, d, D, ld, scale);
        }
    free(ds);
}

/* ---------------------------------------------------------------- R-operator
 *
 * Tangents RQ, RK, RV are read from rqkv in qkv's layout; RP is kept in rprobs [b, h, T, T].
 *     rforward   RS = scale·(RQ·Kᵀ + Q·RKᵀ),  RP = P ⊙ (RS − rowsum(P ⊙ RS)),  RO = RP·V + P·RV
 *     rbackward  with dP = dO·Vᵀ, c = rowsum(P ⊙ dP), dS = P ⊙ (dP − c):
 *                RdP = RdO·Vᵀ + dO·RVᵀ,  Rc = rowsum(RP ⊙ dP + P ⊙ RdP),
 *                RdS = RP ⊙ (dP − c) + P ⊙ (RdP − Rc),
 *                RdV += Pᵀ·RdO + RPᵀ·dO,  RdQ += scale·(RdS·K + dS·RK),  RdK += scale·(RdSᵀ·Q + dSᵀ·RQ)
 * Without dO only the first term of each survives: the plain backward of RdO (Gauss-Newton). A NULL
 * rqkv (with rprobs) is a zero tangent. Scratch: two T × T matrices per thread. */

void msq_attention_rforward(float *rout, float *rprobs, const float *qkv, const float *rqkv, const float *probs,
                            int batch, int tokens, int heads, int head_dim, float scale) {
    const int T = tokens, d = head_dim, D = heads * head_dim, ld = 3 * D;
    const long items = (long)batch * heads;
    #pragma omp parallel for schedule(static) if (items > 1 && !omp_in_parallel())
    for (long it = 0; it < items; it++) {
        const int b = (int)(it / heads), h = (int)(it % heads);
        const size_t base = (size_t)b * T * ld + (size_t)h * d;
        const float *q = qkv + base, *k = q + D, *v = q + 2 * D;
        const float *rq = rqkv + base, *rk = rq + D, *rv = rq + 2 * D;
        const float *p = probs + (size_t)it * T * T;
        float *rp = rprobs + (size_t)it * T * T, *ro = rout + (size_t)b * T * D + (size_t)h * d;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, d, scale, rq, ld, k, ld, 0.0f, rp, T);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, d, scale, q, ld, rk, ld, 1.0f, rp, T);
        for (int r = 0; r < T; r++) msq_softmax_backward_row(rp + (size_t)r * T, p + (size_t)r * T, T);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, d, T, 1.0f, rp, T, v, ld, 0.0f, ro, D);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, d, T, 1.0f, p, T, rv, ld, 1.0f, ro, D);
    }
}

void msq_attention_rforward_ref(float *rout, float *rprobs, const float *qkv, const float *rqkv, const float *probs,
                                int batch, int tokens, int heads, int head_dim, float scale) {
    const int T = tokens, d = head_dim, D = heads * head_dim, ld = 3 * D;
    double *rs = malloc(sizeof(double) * (size_t)T * T);
    if (!rs) return;
    for (int b = 0; b < batch; b++)
        for (int h = 0; h < heads; h++) {
            const size_t base = (size_t)b * T * ld + (size_t)h * d, bh = ((size_t)b * heads + h) * T * T;
            const float *q = qkv + base, *k = q + D, *v = q + 2 * D;
            const float *rq = rqkv + base, *rk = rq + D, *rv = rq + 2 * D, *p = probs + bh;
            for (int i = 0; i < T; i++) {
                double dot = 0;
                for (int j = 0; j < T; j++) {
                    double s = 0;
                    for (int c = 0; c < d; c++)
                        s += (double)rq[(size_t)i * ld + c] * k[(size_t)j * ld + c]
                           + (double)q[(size_t)i * ld + c] * rk[(size_t)j * ld + c];
                    rs[(size_t)i * T + j] = scale * s;
                    dot += scale * s * p[(size_t)i * T + j];
                }
                for (int j = 0; j < T; j++) {
                    rs[(size_t)i * T + j] = p[(size_t)i * T + j] * (rs[(size_t)i * T + j] - dot);
                    rprobs[bh + (size_t)i * T + j] = (float)rs[(size_t)i * T + j];
                }
            }
            for (int i = 0; i < T; i++)
                for (int c = 0; c < d; c++) {
                    double s = 0;
                    for (int j = 0; j < T; j++)
                        s += rs[(size_t)i * T + j] * v[(size_t)j * ld + c] + (double)p[(size_t)i * T + j] * rv[(size_t)j * ld + c];
                    rout[(size_t)b * T * D + (size_t)i * D + (size_t)h * d + c] = (float)s;
                }
        }
    free(rs);
}

/* One row of the R-backward's elementwise part: from dP (a) and RdP (ra), with P (p) and RP (rp, may
   be NULL), leaves dS in a and RdS in ra. */
static void softmax_rbackward_row(float *a, float *ra, const float *p, const float *rp, int n) {
    __m256 vc = _mm256_setzero_ps(), vrc = _mm256_setzero_ps();
    int j = 0;
    for (; j + 8 <= n; j += 8) {
        const __m256 pa = _mm256_loadu_ps(p + j), da = _mm256_loadu_ps(a + j);
        vc = _mm256_fmadd_ps(pa, da, vc);
        vrc = _mm256_fmadd_ps(pa, _mm256_loadu_ps(ra + j), vrc);
        if (rp) vrc = _mm256_fmadd_ps(_mm256_loadu_ps(rp + j), da, vrc);
    }
    float c = msq_lanes_sum8(vc), rc = msq_lanes_sum8(vrc);
    for (int t = j; t < n; t++) {
        c = fmaf(p[t], a[t], c);
        rc = fmaf(p[t], ra[t], rc);
        if (rp) rc = fmaf(rp[t], a[t], rc);
    }
    const __m256 bc = _mm256_set1_ps(c), brc = _mm256_set1_ps(rc);
    for (j = 0; j + 8 <= n; j += 8) {
        const __m256 pa = _mm256_loadu_ps(p + j), centred = _mm256_sub_ps(_mm256_loadu_ps(a + j), bc);
        __m256 r = _mm256_mul_ps(pa, _mm256_sub_ps(_mm256_loadu_ps(ra + j), brc));
        if (rp) r = _mm256_fmadd_ps(_mm256_loadu_ps(rp + j), centred, r);
        _mm256_storeu_ps(ra + j, r);
        _mm256_storeu_ps(a + j, _mm256_mul_ps(pa, centred));
    }
    for (; j < n; j++) {
        const float centred = a[j] - c;
        float r = p[j] * (ra[j] - rc);
        if (rp) r = fmaf(rp[j], centred, r);
        ra[j] = r;
        a[j] = p[j] * centred;
    }
}

void msq_attention_rbackward(float *rdqkv, const float *rdout, const float *dout, const float *qkv,
                             const float *rqkv, const float *probs, const float *rprobs, int batch, int tokens,
                             int heads, int head_dim, float scale) {
    if (!dout) { /* Gauss-Newton: the plain backward of RdO */
        msq_attention_backward(rdqkv, rdout, qkv, probs, batch, tokens, heads, head_dim, scale);
        return;
    }
    const int T = tokens, d = head_dim, D = heads * head_dim, ld = 3 * D;
    const long items = (long)batch * heads;
    const int team = msq_conv_team_size(items);
    float *scratch = malloc(sizeof(float) * 2 * (size_t)T * T * (size_t)team);
    if (!scratch) { /* out of memory: slow but right */
        msq_attention_rbackward_ref(rdqkv, rdout, dout, qkv, rqkv, probs, rprobs, batch, tokens, heads, head_dim, scale);
        return;
    }
    #pragma omp parallel num_threads(team) if (team > 1)
    {
        float *a = scratch + (size_t)2 * T * T * omp_get_thread_num(), *ra = a + (size_t)T * T;
        #pragma omp for schedule(static)
        for (long it = 0; it < items; it++) {
            const int b = (int)(it / heads), h = (int)(it % heads);
            const size_t base = (size_t)b * T * ld + (size_t)h * d, io = (size_t)b * T * D + (size_t)h * d;
            const float *q = qkv + base, *k = q + D, *v = q + 2 * D;
            const float *rq = rqkv ? rqkv + base : NULL, *rk = rq ? rq + D : NULL, *rv = rq ? rq + 2 * D : NULL;
            const float *p = probs + (size_t)it * T * T, *rp = rprobs ? rprobs + (size_t)it * T * T : NULL;
            const float *go = dout + io, *rgo = rdout + io;
            float *rdq = rdqkv + base, *rdk = rdq + D, *rdv = rdq + 2 * D;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, d, 1.0f, go, D, v, ld, 0.0f, a, T);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, d, 1.0f, rgo, D, v, ld, 0.0f, ra, T);
            if (rv) cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, d, 1.0f, go, D, rv, ld, 1.0f, ra, T);
            for (int r = 0; r < T; r++)
                softmax_rbackward_row(a + (size_t)r * T, ra + (size_t)r * T, p + (size_t)r * T, rp ? rp + (size_t)r * T : NULL, T);
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, d, T, 1.0f, p, T, rgo, D, 1.0f, rdv, ld);
            if (rp) cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, d, T, 1.0f, rp, T, go, D, 1.0f, rdv, ld);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, d, T, scale, ra, T, k, ld, 1.0f, rdq, ld);
            if (rk) cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, d, T, scale, a, T, rk, ld, 1.0f, rdq, ld);
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, d, T, scale, ra, T, q, ld, 1.0f, rdk, ld);
            if (rq) cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, d, T, scale, a, T, rq, ld, 1.0f, rdk, ld);
        }
    }
    free(scratch);
}

void msq_attention_rbackward_ref(float *rdqkv, const float *rdout, const float *dout, const float *qkv,
                                 const float *rqkv, const float *probs, const float *rprobs, int batch, int tokens,
                                 int heads, int head_dim, float scale) {
    const int T = tokens, d = head_dim, D = heads * head_dim, ld = 3 * D;
    double *a = malloc(sizeof(double) * 2 * (size_t)T * T), *ra = a ? a + (size_t)T * T : NULL;
    if (!a) return;
    for (int b = 0; b < batch; b++)
        for (int h = 0; h < heads; h++) {
            const size_t base = (size_t)b * T * ld + (size_t)h * d, io = (size_t)b * T * D + (size_t)h * d;
            const size_t bh = ((size_t)b * heads + h) * T * T;
            const float *q = qkv + base, *k = q + D, *v = q + 2 * D;
            const float *rq = rqkv ? rqkv + base : NULL, *rk = rq ? rq + D : NULL, *rv = rq ? rq + 2 * D : NULL;
            const float *p = probs + bh, *rp = rprobs ? rprobs + bh : NULL;
            const float *go = dout ? dout + io : NULL, *rgo = rdout + io;
            float *rdq = rdqkv + base, *rdk = rdq + D, *rdv = rdq + 2 * D;
            for (int i = 0; i < T; i++) {
                double c = 0, rc = 0;
                for (int j = 0; j < T; j++) {
                    double s = 0, rs = 0;
                    for (int e = 0; e < d; e++) {
                        rs += (double)rgo[(size_t)i * D + e] * v[(size_t)j * ld + e];
                        if (go) s += (double)go[(size_t)i * D + e] * v[(size_t)j * ld + e];
                        if (go && rv) rs += (double)go[(size_t)i * D + e] * rv[(size_t)j * ld + e];
                    }
                    const double pij = p[(size_t)i * T + j], rpij = go && rp ? rp[(size_t)i * T + j] : 0;
                    a[(size_t)i * T + j] = s;
                    ra[(size_t)i * T + j] = rs;
                    c += pij * s;
                    rc += rpij * s + pij * rs;
                }
                for (int j = 0; j < T; j++) {
                    const double pij = p[(size_t)i * T + j], rpij = go && rp ? rp[(size_t)i * T + j] : 0;
                    ra[(size_t)i * T + j] = rpij * (a[(size_t)i * T + j] - c) + pij * (ra[(size_t)i * T + j] - rc);
                    a[(size_t)i * T + j] = pij * (a[(size_t)i * T + j] - c);
                }
            }
            for (int i = 0; i < T; i++)
                for (int e = 0; e < d; e++) {
                    double sv = 0, sq = 0, sk = 0;
                    for (int j = 0; j < T; j++) {
                        sv += (double)p[(size_t)j * T + i] * rgo[(size_t)j * D + e];
                        if (go && rp) sv += (double)rp[(size_t)j * T + i] * go[(size_t)j * D + e];
                        sq += ra[(size_t)i * T + j] * k[(size_t)j * ld + e];
                        sk += ra[(size_t)j * T + i] * q[(size_t)j * ld + e];
                        if (go && rk) sq += a[(size_t)i * T + j] * rk[(size_t)j * ld + e];
                        if (go && rq) sk += a[(size_t)j * T + i] * rq[(size_t)j * ld + e];
                    }
                    rdv[(size_t)i * ld + e] += (float)sv;
                    rdq[(size_t)i * ld + e] += (float)(scale * sq);
                    rdk[(size_t)i * ld + e] += (float)(scale * sk);
                }
        }
    free(a);
}
