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

#include <immintrin.h>
#include <omp.h>

/* ---------------------------------------------------------------- FMA rate */

/* One thread's loop: 12 independent 8-float multiply-add chains on registers alone, more than the
   FMA latency × units needs to keep every unit busy. Returns the sum so nothing is elided. */
__attribute__((target("avx2,fma"))) static float fma_loop(long steps) {
    __m256 a[12];
    for (int j = 0; j < 12; j++) a[j] = _mm256_set1_ps(1e-3f * (float)j);
    const __m256 w = _mm256_set1_ps(0.999f), b = _mm256_set1_ps(1e-6f);
    for (long i = 0; i < steps; i++) {
        __asm__ volatile("" : "+x"(a[0]), "+x"(a[1]), "+x"(a[2]), "+x"(a[3]), "+x"(a[4]), "+x"(a[5]));
        for (int j = 0; j < 12; j++) a[j] = _mm256_fmadd_ps(w, a[j], b);
    }
    __m256 s = a[0];
    for (int j = 1; j < 12; j++) s = _mm256_add_ps(s, a[j]);
    float l[8];
    _mm256_storeu_ps(l, s);
    return l[0];
}

double bench_fma_rate(int threads, long steps) {
    if (threads < 1) threads = 1;
    float total = 0;
    const double t0 = omp_get_wtime();
    #pragma omp parallel num_threads(threads) reduction(+ : total)
    total += fma_loop(steps);
    const double seconds = omp_get_wtime() - t0;
    volatile float sink = total;
    (void)sink;
    return 12.0 * (double)steps * threads / seconds;
}
