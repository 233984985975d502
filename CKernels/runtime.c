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
