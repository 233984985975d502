#include "cblas_bench.h"
#include <cblas.h>

void bench_sgemm(float *c, const float *a, const float *b, int m, int n, int k, int threads) {
    openblas_set_num_threads(threads);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, n, k, 1.0f, a, k, b, n, 0.0f, c, n);
    /* MSQ's kernels expect OpenBLAS pinned to one thread (they call it inside OpenMP regions). */
    openblas_set_num_threads(1);
}
