/* cblas_bench.h — OpenBLAS's sgemm and thread control, for benchmarks only. */
#ifndef CBLAS_BENCH_H
#define CBLAS_BENCH_H
/** c[m,n] = a[m,k] * b[k,n], row-major, through cblas_sgemm with `threads` OpenBLAS threads. */
void bench_sgemm(float *c, const float *a, const float *b, int m, int n, int k, int threads);
#endif
