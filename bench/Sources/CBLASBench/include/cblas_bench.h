/* cblas_bench.h — OpenBLAS's sgemm and thread control, and a parallel memcpy, for benchmarks only. */
#ifndef CBLAS_BENCH_H
#define CBLAS_BENCH_H
#include <stddef.h>
/** c[m,n] = a[m,k] * b[k,n], row-major, through cblas_sgemm with `threads` OpenBLAS threads. */
void bench_sgemm(float *c, const float *a, const float *b, int m, int n, int k, int threads);
/** memcpy(dst, src, bytes) split into `threads` contiguous pieces (64-byte aligned boundaries),
 *  one per thread: the bandwidth yardstick for the elementwise kernels. */
void bench_parallel_memcpy(void *dst, const void *src, size_t bytes, int threads);
/** 8-float multiply-adds per second on registers alone, summed over `threads` threads, each running
 *  `steps` × 12 of them: the arithmetic ceiling of a kernel made of such multiply-adds. */
double bench_fma_rate(int threads, long steps);
#endif
