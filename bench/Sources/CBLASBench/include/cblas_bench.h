/* cblas_bench.h — OpenBLAS's sgemm and thread control, and a parallel memcpy, for benchmarks only. */
#ifndef CBLAS_BENCH_H
#define CBLAS_BENCH_H
#include <stddef.h>
/** c[m,n] = a[m,k] * b[k,n], row-major, through cblas_sgemm with `threads` OpenBLAS threads. */
void bench_sgemm(float *c, const float *a, const float *b, int m, int n, int k, int threads);
/** memcpy(dst, src, bytes) split into `threads` contiguous pieces (64-byte aligned boundaries),
 *  one per thread: the bandwidth yardstick for the elementwise kernels. */
void bench_parallel_memcpy(void *dst, const void *src, size_t bytes, int threads);
/** Unaligned 8-float loads fused into multiply-adds per second, summed over `threads` threads, each
 *  running `steps` × 8 of them from an L1-resident buffer: the ceiling of a kernel that does one
 *  such load per multiply-add (a depthwise convolution's taps). */
double bench_load_fma_rate(int threads, long steps);
#endif
