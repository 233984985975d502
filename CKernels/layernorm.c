/* layernorm.c — layer normalisation over the last axis (a transformer's tokens).
 *
 *     forward   μ_r = mean_j x[r,j],  rstd_r = 1 / sqrt(mean_j (x[r,j] − μ_r)² + ε),
 *               y[r,j] = (x[r,j] − μ_r)·rstd_r·γ[j] + β[j]
 *     backward  x̂ = (x − μ)·rstd,  g = dy·γ,
 *               dx[r,j] += rstd_r·(g[r,j] − mean_j g[r,·] − x̂[r,j]·mean_j (g·x̂)[r,·]),
 *               dγ[j] += Σ_r dy[r,j]·x̂[r,j],  dβ[j] += Σ_r dy[r,j]
 *
 * Rows go to threads whole; a row's sums run in 8 lanes, reduced in a fixed order. dγ and dβ sum
 * over rows in fixed chunks of CHUNK rows, and the chunks' partial sums are added in chunk order:
 * every result is the same at any thread count. No -ffast-math. */
#include "msq_kernels.h"
#include "vector_math.h"
#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

enum { CHUNK = 32 };

/* Σ_j a[j] (8 lanes, then the tail). */
static inline float row_sum(const float *a, int n) {
    __m256 s = _mm256_setzero_ps();
    int j = 0;
    for (; j + 8 <= n; j += 8) s = _mm256_add_ps(s, _mm256_loadu_ps(a + j));
    float t = msq_lanes_sum8(s);
    for (; j < n; j++) t += a[j];
    return t;
}

/* μ and rstd of one row: two passes (the centred second pass keeps the variance exact enough for
   rows far from 0). */
static inline void row_stats(float *mean, float *rstd, const float *x, int n, float eps) {
    const float mu = row_sum(x, n) / (float)n;
    const __m256 m = _mm256_set1_ps(mu);
    __m256 s = _mm256_setzero_ps();
    int j = 0;
    for (; j + 8 <= n; j += 8) {
        const __m256 d = _mm256_sub_ps(_mm256_loadu_ps(x + j), m);
        s = _mm256_fmadd_ps(d, d, s);
    }
    float v = msq_lanes_sum8(s);
    for (; j < n; j++) v = fmaf(x[j] - mu, x[j] - mu, v);
    *mean = mu;
    *rstd = 1.0f / sqrtf(v / (float)n + eps);
}

/* x[rows, dim], γ[dim], β[dim] -> y[rows, dim], mean[rows], rstd[rows] (overwritten). */
void msq_layernorm_forward(float *y, float *mean, float *rstd, const float *x, const float *gamma,
                           const float *beta, int rows, int dim, float eps) {
    #pragma omp parallel for schedule(static) if (rows > 64 && !omp_in_parallel())
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * dim;
        float *yr = y + (size_t)r * dim;
        row_stats(mean + r, rstd + r, xr, dim, eps);
        const __m256 m = _mm256_set1_ps(mean[r]), s = _mm256_set1_ps(rstd[r]);
        int j = 0;
        for (; j + 8 <= dim; j += 8) {
            const __m256 h = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(xr + j), m), s);
            _mm256_storeu_ps(yr + j, _mm256_fmadd_ps(h, _mm256_loadu_ps(gamma + j), _mm256_loadu_ps(beta + j)));
        }
        for (; j < dim; j++) yr[j] = fmaf((xr[j] - mean[r]) * rstd[r], gamma[j], beta[j]);
    }
}

void msq_layernorm_forward_ref(float *y, float *mean, float *rstd, const float *x, const float *gamma,
                               const float *beta, int rows, int dim, float eps) {
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * dim;
        double s = 0, v = 0;
        for (int j = 0; j < dim; j++) s += xr[j];
        const double mu = s / dim;
        for (int j = 0; j < dim; j++) v += (xr[j] - mu) * (xr[j] - mu);
        const double rs = 1.0 / sqrt(v / dim + eps);
        mean[r] = (float)mu;
        rstd[r] = (float)rs;
        for (int j = 0; j < dim; j++) y[(size_t)r * dim + j] = (float)((xr[j] - mu) * rs * gamma[j] + beta[j]);
    }
}

/* One row's input gradient: dx += rstd·(g − mean(g) − x̂·mean(g·x̂)), g = dy·γ (dy when γ is NULL). */
static void row_backward(float *dx, const float *dy, const float *x, float mu, float rs, const float *gamma, int n) {
    const __m256 m = _mm256_set1_ps(mu), s = _mm256_set1_ps(rs);
    __m256 a = _mm256_setzero_ps(), b = _mm256_setzero_ps();
    int j = 0;
    for (; j + 8 <= n; j += 8) {
        const __m256 g = gamma ? _mm256_mul_ps(_mm256_loadu_ps(dy + j), _mm256_loadu_ps(gamma + j)) : _mm256_loadu_ps(dy + j);
        const __m256 h = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + j), m), s);
        a = _mm256_add_ps(a, g);
        b = _mm256_fmadd_ps(g, h, b);
    }
    float sg = msq_lanes_sum8(a), sgh = msq_lanes_sum8(b);
    for (int t = j; t < n; t++) {
        const float g = gamma ? dy[t] * gamma[t] : dy[t], h = (x[t] - mu) * rs;
        sg += g;
        sgh = fmaf(g, h, sgh);
    }
    const float mg = sg / (float)n, mgh = sgh / (float)n;
    const __m256 vmg = _mm256_set1_ps(mg), vmgh = _mm256_set1_ps(mgh);
    for (j = 0; j + 8 <= n; j += 8) {
        const __m256 g = gamma ? _mm256_mul_ps(_mm256_loadu_ps(dy + j), _mm256_loadu_ps(gamma + j)) : _mm256_loadu_ps(dy + j);
        const __m256 h = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + j), m), s);
        const __m256 d = _mm256_mul_ps(s, _mm256_sub_ps(_mm256_sub_ps(g, vmg), _mm256_mul_ps(h, vmgh)));
        _mm256_storeu_ps(dx + j, _mm256_add_ps(_mm256_loadu_ps(dx + j), d));
    }
    for (; j < n; j++) {
        const float g = gamma ? dy[j] * gamma[j] : dy[j], h = (x[j] - mu) * rs;
        dx[j] += rs * ((g - mg) - h * mgh);
    }
}

/* dy, x [rows, dim], mean, rstd [rows] (the forward's), γ [dim] -> dx [rows, dim], dγ, dβ [dim]
   (all accumulated; dγ and dβ may be NULL). */
void msq_layernorm_backward(float *dx, float *dgamma, float *dbeta, const float *dy, const float *x,
                            const float *mean, const float *rstd, const float *gamma, int rows, int dim) {
    const int chunks = (rows + CHUNK - 1) / CHUNK;
    const int params = dgamma || dbeta;
    float *part = params ? malloc(sizeof(float) * 2 * (size_t)dim * (size_t)chunks) : NULL;
    if (params && !part) { /* out of memory: slow but right */
        msq_layernorm_backward_ref(dx, dgamma, dbeta, dy, x, mean, rstd, gamma, rows, dim);
        return;
    }
    #pragma omp parallel for schedule(static) if (chunks > 1 && !omp_in_parallel())
    for (int c = 0; c < chunks; c++) {
        const int r0 = c * CHUNK, r1 = r0 + CHUNK < rows ? r0 + CHUNK : rows;
        float *pg = part ? part + (size_t)2 * dim * c : NULL, *pb = pg ? pg + dim : NULL;
        if (pg) {
            memset(pg, 0, sizeof(float) * 2 * (size_t)dim);
        }
        for (int r = r0; r < r1; r++) {
            const float *dyr = dy + (size_t)r * dim, *xr = x + (size_t)r * dim;
            row_backward(dx + (size_t)r * dim, dyr, xr, mean[r], rstd[r], gamma, dim);
            if (!pg) continue;
            const __m256 m = _mm256_set1_ps(mean[r]), s = _mm256_set1_ps(rstd[r]);
            int j = 0;
            for (; j + 8 <= dim; j += 8) {
                const __m256 d = _mm256_loadu_ps(dyr + j);
                const __m256 h = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(xr + j), m), s);
                _mm256_storeu_ps(pg + j, _mm256_fmadd_ps(d, h, _mm256_loadu_ps(pg + j)));
                _mm256_storeu_ps(pb + j, _mm256_add_ps(_mm256_loadu_ps(pb + j), d));
            }
            for (; j < dim; j++) {
                pg[j] = fmaf(dyr[j], (xr[j] - mean[r]) * rstd[r], pg[j]);
                pb[j] += dyr[j];
            }
        }
    }
    if (part) {
        for (int c = 0; c < chunks; c++) {
            const float *pg = part + (size_t)2 * dim * c, *pb = pg + dim;
            for (int j = 0; j < dim; j++) {
                if (dgamma) dgamma[j] += pg[j];
                if (dbeta) dbeta[j] += pb[j];
            }
        }
        free(part);
    }
}

void msq_layernorm_backward_ref(float *dx, float *dgamma, float *dbeta, const float *dy, const float *x,
                                const float *mean, const float *rstd, const float *gamma, int rows, int dim) {
    for (int r = 0; r < rows; r++) {
        const float *dyr = dy + (size_t)r * dim, *xr = x + (size_t)r * dim;
        double sg = 0, sgh = 0;
        for (int j = 0; j < dim; j++) {
            const double h = ((double)xr[j] - mean[r]) * rstd[r], g = (double)dyr[j] * gamma[j];
            sg += g;
            sgh += g * h;
            if (dgamma) dgamma[j] += (float)(dyr[j] * h);
            if (dbeta) dbeta[j] += dyr[j];
        }
        for (int j = 0; j < dim; j++) {
            const double h = ((double)xr[j] - mean[r]) * rstd[r], g = (double)dyr[j] * gamma[j];
            dx[(size_t)r * dim + j] += (float)(rstd[r] * (g - sg / dim - h * sgh / dim));
        }
    }
}

/* ---------------------------------------------------------------- R-operator (γ, β held fixed)
 *
 * With x̂ = (x − μ)·rstd, y = γ ⊙ x̂ + β has the symmetric Jacobian ∂x̂/∂x = J = rstd·(I − 11ᵀ/n −
 * x̂x̂ᵀ/n), so dx = J·(γ ⊙ dy). Its R-passes, with a = γ ⊙ dy, Rx̂ = J·rx, s = mean(x̂ ⊙ rx) (so
 * R rstd = −rstd²·s), m = mean(x̂ ⊙ a), q = mean(Rx̂ ⊙ a):
 *     rforward   ry = γ ⊙ J·rx
 *     rbackward  rdx += J·(γ ⊙ rdy) − rstd·s·J·a − rstd·(m·Rx̂ + q·x̂)
 * the last two terms being R_x[J]·a (absent without dy or rx: the Gauss-Newton product). */

/* Σ_j x̂[j]·u[j]·(g ? g[j] : 1) over one row, x̂ = (x − μ)·rs (8 lanes, then the tail). */
static float row_dot_xhat(const float *x, float mu, float rs, const float *u, const float *g, int n) {
    const __m256 m = _mm256_set1_ps(mu), s = _mm256_set1_ps(rs);
    __m256 acc = _mm256_setzero_ps();
    int j = 0;
    for (; j + 8 <= n; j += 8) {
        __m256 w = _mm256_loadu_ps(u + j);
        if (g) w = _mm256_mul_ps(w, _mm256_loadu_ps(g + j));
        acc = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + j), m), s), w, acc);
    }
    float t = msq_lanes_sum8(acc);
    for (; j < n; j++) t = fmaf((x[j] - mu) * rs, g ? u[j] * g[j] : u[j], t);
    return t;
}

/* Σ_j a[j]·b[j]·c[j] over one row. */
static float row_dot3(const float *a, const float *b, const float *c, int n) {
    __m256 acc = _mm256_setzero_ps();
    int j = 0;
    for (; j + 8 <= n; j += 8)
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + j), _mm256_mul_ps(_mm256_loadu_ps(b + j), _mm256_loadu_ps(c + j)), acc);
    float t = msq_lanes_sum8(acc);
    for (; j < n; j++) t = fmaf(a[j], b[j] * c[j], t);
    return t;
}

/* out = J·rx over one row (overwritten). */
static void row_jacobian(float *out, const float *rx, const float *x, float mu, float rs, int n) {
    memset(out, 0, sizeof(float) * (size_t)n);
    row_backward(out, rx, x, mu, rs, NULL, n);
}

/* x, rx [rows, dim], mean, rstd [rows] (the forward's), γ [dim] -> ry [rows, dim] (overwritten). */
void msq_layernorm_rforward(float *ry, const float *x, const float *rx, const float *mean, const float *rstd,
                            const float *gamma, int rows, int dim) {
    #pragma omp parallel for schedule(static) if (rows > 64 && !omp_in_parallel())
    for (int r = 0; r < rows; r++) {
        float *out = ry + (size_t)r * dim;
        row_jacobian(out, rx + (size_t)r * dim, x + (size_t)r * dim, mean[r], rstd[r], dim);
        int j = 0;
        for (; j + 8 <= dim; j += 8) _mm256_storeu_ps(out + j, _mm256_mul_ps(_mm256_loadu_ps(out + j), _mm256_loadu_ps(gamma + j)));
        for (; j < dim; j++) out[j] *= gamma[j];
    }
}

void msq_layernorm_rforward_ref(float *ry, const float *x, const float *rx, const float *mean, const float *rstd,
                                const float *gamma, int rows, int dim) {
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * dim, *u = rx + (size_t)r * dim;
        double su = 0, shu = 0;
        for (int j = 0; j < dim; j++) {
            su += u[j];
            shu += ((double)xr[j] - mean[r]) * rstd[r] * u[j];
        }
        for (int j = 0; j < dim; j++) {
            const double h = ((double)xr[j] - mean[r]) * rstd[r];
            ry[(size_t)r * dim + j] = (float)(gamma[j] * rstd[r] * (u[j] - su / dim - h * shu / dim));
        }
    }
}

/* rdy, dy (may be NULL), x, rx (may be NULL) [rows, dim], mean, rstd [rows], γ [dim] -> rdx [rows, dim]
   (accumulated). Scratch: two rows per thread, for the terms that need both dy and rx. */
void msq_layernorm_rbackward(float *rdx, const float *rdy, const float *dy, const float *x, const float *rx,
                             const float *mean, const float *rstd, const float *gamma, int rows, int dim) {
    const int second = dy && rx;
    const int team = rows > 64 && !omp_in_parallel() ? omp_get_max_threads() : 1;
    float *scratch = second ? malloc(sizeof(float) * 2 * (size_t)dim * (size_t)team) : NULL;
    if (second && !scratch) { /* out of memory: slow but right */
        msq_layernorm_rbackward_ref(rdx, rdy, dy, x, rx, mean, rstd, gamma, rows, dim);
        return;
    }
    #pragma omp parallel num_threads(team) if (team > 1)
    {
        float *jrx = scratch ? scratch + (size_t)2 * dim * omp_get_thread_num() : NULL, *ja = jrx ? jrx + dim : NULL;
        #pragma omp for schedule(static)
        for (int r = 0; r < rows; r++) {
            const size_t o = (size_t)r * dim;
            const float *xr = x + o;
            const float mu = mean[r], rs = rstd[r];
            float *out = rdx + o;
            row_backward(out, rdy + o, xr, mu, rs, gamma, dim);
            if (!second) continue;
            row_jacobian(jrx, rx + o, xr, mu, rs, dim);
            memset(ja, 0, sizeof(float) * (size_t)dim);
            row_backward(ja, dy + o, xr, mu, rs, gamma, dim);
            const float s = row_dot_xhat(xr, mu, rs, rx + o, NULL, dim) / (float)dim;
            const float m = row_dot_xhat(xr, mu, rs, dy + o, gamma, dim) / (float)dim;
            const float q = row_dot3(jrx, dy + o, gamma, dim) / (float)dim;
            const __m256 vs = _mm256_set1_ps(-rs * s), vm = _mm256_set1_ps(-rs * m), vq = _mm256_set1_ps(-rs * q);
            const __m256 vmu = _mm256_set1_ps(mu), vrs = _mm256_set1_ps(rs);
            int j = 0;
            for (; j + 8 <= dim; j += 8) {
                const __m256 h = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(xr + j), vmu), vrs);
                __m256 t = _mm256_mul_ps(vs, _mm256_loadu_ps(ja + j));
                t = _mm256_fmadd_ps(vm, _mm256_loadu_ps(jrx + j), t);
                t = _mm256_fmadd_ps(vq, h, t);
                _mm256_storeu_ps(out + j, _mm256_add_ps(_mm256_loadu_ps(out + j), t));
            }
            for (; j < dim; j++) {
                const float h = (xr[j] - mu) * rs;
                out[j] += fmaf(-rs * q, h, fmaf(-rs * m, jrx[j], -rs * s * ja[j]));
            }
        }
    }
    free(scratch);
}

void msq_layernorm_rbackward_ref(float *rdx, const float *rdy, const float *dy, const float *x, const float *rx,
                                 const float *mean, const float *rstd, const float *gamma, int rows, int dim) {
    double *jrx = malloc(sizeof(double) * 2 * (size_t)dim), *ja = jrx ? jrx + dim : NULL;
    if (!jrx) return;
    for (int r = 0; r < rows; r++) {
        const size_t o = (size_t)r * dim;
        const float *xr = x + o;
        const double rs = rstd[r];
        /* Row sums for J·w with w = γ ⊙ rdy, γ ⊙ dy and rx. */
        double sra = 0, shra = 0, sa = 0, sha = 0, su = 0, shu = 0;
        for (int j = 0; j < dim; j++) {
            const double h = ((double)xr[j] - mean[r]) * rs, ra = (double)gamma[j] * rdy[o + j];
            sra += ra;
            shra += h * ra;
            if (dy && rx) {
                const double a = (double)gamma[j] * dy[o + j];
                sa += a;
                sha += h * a;
                su += rx[o + j];
                shu += h * rx[o + j];
            }
        }
        double q = 0;
        for (int j = 0; j < dim; j++) {
            const double h = ((double)xr[j] - mean[r]) * rs;
            jrx[j] = rs * ((dy && rx ? rx[o + j] : 0) - su / dim - h * shu / dim);
            ja[j] = rs * ((dy && rx ? (double)gamma[j] * dy[o + j] : 0) - sa / dim - h * sha / dim);
            if (dy && rx) q += jrx[j] * gamma[j] * dy[o + j];
        }
        const double s = shu / dim, m = sha / dim;
        q /= dim;
        for (int j = 0; j < dim; j++) {
            const double h = ((double)xr[j] - mean[r]) * rs, ra = (double)gamma[j] * rdy[o + j];
            const double t = rs * (ra - sra / dim - h * shra / dim) - rs * s * ja[j] - rs * (m * jrx[j] + q * h);
            rdx[o + j] = (float)(rdx[o + j] + t);
        }
    }
    free(jrx);
}
