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

/* ---------------------------------------------------------------- L1 load + FMA rate */

#include <immintrin.h>
#include <omp.h>

/* One thread's loop: 8 independent sums, each step one unaligned 8-float load (at an odd float
   offset, so half the loads split a cache line, as a convolution tap's do) fused into a
   multiply-add, from a 16 KiB buffer that stays in L1. Returns the sum so nothing is elided. */
__attribute__((target("avx2,fma"))) static float load_fma_loop(const float *buf, long steps) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
    const __m256 w = _mm256_set1_ps(0.5f);
    for (long i = 0; i < steps; i++) {
        const float *p = buf + 1 + (i & 63) * 8;
        a0 = _mm256_fmadd_ps(w, _mm256_loadu_ps(p), a0);
        a1 = _mm256_fmadd_ps(w, _mm256_loadu_ps(p + 513), a1);
        a2 = _mm256_fmadd_ps(w, _mm256_loadu_ps(p + 1026), a2);
        a3 = _mm256_fmadd_ps(w, _mm256_loadu_ps(p + 1539), a3);
        a4 = _mm256_fmadd_ps(w, _mm256_loadu_ps(p + 2052), a4);
        a5 = _mm256_fmadd_ps(w, _mm256_loadu_ps(p + 2565), a5);
        a6 = _mm256_fmadd_ps(w, _mm256_loadu_ps(p + 3078), a6);
        a7 = _mm256_fmadd_ps(w, _mm256_loadu_ps(p + 3591), a7);
    }
    float l[8];
    _mm256_storeu_ps(l, _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)),
                                      _mm256_add_ps(_mm256_add_ps(a4, a5), _mm256_add_ps(a6, a7))));
    return l[0];
}

double bench_load_fma_rate(int threads, long steps) {
    if (threads < 1) threads = 1;
    static float buf[4096 + 4608] __attribute__((aligned(64)));
    for (int i = 0; i < 4096 + 4608; i++) buf[i] = 1e-3f * (float)(i % 97);
    float total = 0;
    const double t0 = omp_get_wtime();
    #pragma omp parallel num_threads(threads) reduction(+ : total)
    total += load_fma_loop(buf, steps);
    const double seconds = omp_get_wtime() - t0;
    volatile float sink = total; /* keeps the loops */
    (void)sink;
    return 8.0 * (double)steps * threads / seconds;
}
