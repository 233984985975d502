/* runtime.c — thread control shared by all kernels. */
#include "msq_kernels.h"
#include <cblas.h>
#include <omp.h>

void msq_set_num_threads(int n) {
    if (n < 1) n = omp_get_num_procs();
    omp_set_num_threads(n);
    /* Kernels call cblas_sgemm from inside their own parallel regions: one BLAS thread each,
       so the two thread pools never oversubscribe the cores. */
    openblas_set_num_threads(1);
}

int msq_get_num_threads(void) { return omp_get_max_threads(); }

static int max_isa = MSQ_ISA_AVX512;

int msq_set_max_isa(int isa) {
    const int previous = max_isa;
    max_isa = isa >= MSQ_ISA_AVX512 ? MSQ_ISA_AVX512 : MSQ_ISA_AVX2;
    return previous;
}

int msq_isa_avx512(void) {
    return max_isa >= MSQ_ISA_AVX512 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl");
}

/* At load, BLAS gets one thread per caller as msq_set_num_threads gives it, leaving the OpenMP
   count alone: a library user who never sets a thread count (the Trainer no longer does) must not
   get BLAS threads spawned inside every kernel's parallel region. */
__attribute__((constructor)) static void msq_single_threaded_blas(void) { openblas_set_num_threads(1); }
