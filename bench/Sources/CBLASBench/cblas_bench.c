#include "cblas_bench.h"
#include <cblas.h>
#include <string.h>

void bench_sgemm(float *c, const float *a, const float *b, int m, int n, int k, int threads) {
    openblas_set_num_threads(threads);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, n, k, 1.0f, a, k, b, n, 0.0f, c, n);
    /* MSQ's kernels expect OpenBLAS pinned to one thread (they call it inside OpenMP regions). */
    openblas_set_num_threads(1);
}

/* ---------------------------------------------------------------- parallel memcpy */

typedef struct copy_piece {
    char *dst;
    const char *src;
    size_t bytes;
} copy_piece;

/* Piece t of `threads`: contiguous, boundaries on 64-byte multiples (cache lines), as a static
   OpenMP schedule over a float array would roughly give. */
static copy_piece piece_of(void *dst, const void *src, size_t bytes, int t, int threads) {
    size_t per = ((bytes + (size_t)threads - 1) / (size_t)threads + 63) & ~(size_t)63;
    size_t lo = per * (size_t)t < bytes ? per * (size_t)t : bytes;
    size_t hi = lo + per < bytes ? lo + per : bytes;
    copy_piece p = {(char *)dst + lo, (const char *)src + lo, hi - lo};
    return p;
}

void bench_parallel_memcpy(void *dst, const void *src, size_t bytes, int threads) {
    if (threads < 1) threads = 1;
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int t = 0; t < threads; t++) {
        copy_piece p = piece_of(dst, src, bytes, t, threads);
        memcpy(p.dst, p.src, p.bytes);
    }
}
