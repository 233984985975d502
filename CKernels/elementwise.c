/* elementwise.c — small vector helpers used by residual connections, gradient sums and tensor fills. */
#include "msq_kernels.h"

/* y[count] = a[count] + b[count] */
void msq_add_forward(float *y, const float *a, const float *b, size_t count) {
    #pragma omp parallel for schedule(static) if (count > 65536)
    for (size_t i = 0; i < count; i++) y[i] = a[i] + b[i];
}

/* dst[count] += src[count] */
void msq_accumulate(float *dst, const float *src, size_t count) {
    #pragma omp parallel for schedule(static) if (count > 65536)
    for (size_t i = 0; i < count; i++) dst[i] += src[i];
}

/* dst[count] = value. Every fresh tensor is filled (backward kernels accumulate into zeros); one
   thread cannot saturate memory bandwidth, and a serial fill leaves the other cores waiting. */
void msq_fill(float *dst, float value, size_t count) {
    #pragma omp parallel for schedule(static) if (count > 65536)
    for (size_t i = 0; i < count; i++) dst[i] = value;
}

void msq_fill_ref(float *dst, float value, size_t count) {
    for (size_t i = 0; i < count; i++) dst[i] = value;
}
