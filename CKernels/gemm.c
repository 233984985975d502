/* gemm.c — row-major SGEMM: cblas underneath, OpenMP split of C for large problems. */
#include "msq_kernels.h"
#include <cblas.h>
#include <omp.h>

/* Below this many multiply-adds one sgemm call beats the fork/join cost. */
#define MSQ_GEMM_PARALLEL_MIN_MACS (1L << 18)

/* c[m,n] = alpha * op(a)[m,k] * op(b)[k,n] + beta * c; double accumulation so tests have a
   reference whose own rounding error is negligible. beta == 0 never reads c (BLAS rule). */
void msq_gemm_ref(float *c, const float *a, const float *b, int trans_a, int trans_b,
                  int m, int n, int k, float alpha, float beta) {
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            double acc = 0.0;
            for (int p = 0; p < k; p++) {
                float av = trans_a ? a[(size_t)p * m + i] : a[(size_t)i * k + p];
                float bv = trans_b ? b[(size_t)j * k + p] : b[(size_t)p * n + j];
                acc += (double)av * (double)bv;
            }
            float prev = beta == 0.0f ? 0.0f : beta * c[(size_t)i * n + j];
            c[(size_t)i * n + j] = (float)(alpha * acc) + prev;
        }
}

/* Start of part i of [0, len) cut into parts pieces, rounded to a multiple of align so each
   thread's block lines up with the BLAS micro-tile. */
static int split_start(int len, int parts, int align, int i) {
    if (i >= parts) return len;
    long s = (long)len * i / parts;
    s = (s + align / 2) / align * align;
    return s > len ? len : (int)s;
}

/* c[m,n] = alpha * op(a) * op(b) + beta * c. */
void msq_gemm(float *c, const float *a, const float *b, int trans_a, int trans_b,
              int m, int n, int k, float alpha, float beta) {
    if (m <= 0 || n <= 0) return;
    if (k <= 0) {
        /* Not every BLAS treats k == 0 as "scale c"; do it here. */
        for (size_t i = 0; i < (size_t)m * n; i++) c[i] = beta == 0.0f ? 0.0f : beta * c[i];
        return;
    }
    const CBLAS_TRANSPOSE ta = trans_a ? CblasTrans : CblasNoTrans;
    const CBLAS_TRANSPOSE tb = trans_b ? CblasTrans : CblasNoTrans;
    const int lda = trans_a ? m : k, ldb = trans_b ? k : n;
    int threads = omp_in_parallel() ? 1 : omp_get_max_threads();
    if (threads <= 1 || (long)m * n * k < MSQ_GEMM_PARALLEL_MIN_MACS) {
        cblas_sgemm(CblasRowMajor, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, n);
        return;
    }
    /* Split the longer side of c; each part is one independent sgemm, so the result depends
       only on the thread count (fixed partition), never on scheduling. */
    const int by_rows = m >= n;
    const int len = by_rows ? m : n, align = by_rows ? 16 : 8;
    int parts = threads;
    if (len < parts * align) parts = len / align > 0 ? len / align : 1;
    #pragma omp parallel for schedule(static) num_threads(parts) if (parts > 1)
    for (int t = 0; t < parts; t++) {
        int s = split_start(len, parts, align, t), e = split_start(len, parts, align, t + 1);
        if (e <= s) continue;
        if (by_rows) {
            const float *ap = trans_a ? a + s : a + (size_t)s * k;
            cblas_sgemm(CblasRowMajor, ta, tb, e - s, n, k, alpha, ap, lda, b, ldb, beta,
                        c + (size_t)s * n, n);
        } else {
            const float *bp = trans_b ? b + (size_t)s * k : b + s;
            cblas_sgemm(CblasRowMajor, ta, tb, m, e - s, k, alpha, a, lda, bp, ldb, beta,
                        c + s, n);
        }
    }
}
