/* tokens.c — layouts between a convolution's planes and a transformer's tokens. */
#include "msq_kernels.h"
#include <omp.h>
#include <stddef.h>

/* y[b, j, i] (+)= x[b, i, j] for x[n, rows, cols]: planes [n, C, H·W] to tokens [n, H·W, C], and
   (accumulate = 1) the same map's adjoint back. In 32 × 32 tiles, so both sides stay in cache. */
void msq_transpose_batched(float *y, const float *x, int n, int rows, int cols, int accumulate) {
    #pragma omp parallel for schedule(static) if (n > 1 && !omp_in_parallel())
    for (int b = 0; b < n; b++) {
        const float *xb = x + (size_t)b * rows * cols;
        float *yb = y + (size_t)b * rows * cols;
        for (int i0 = 0; i0 < rows; i0 += 32)
            for (int j0 = 0; j0 < cols; j0 += 32) {
                const int i1 = i0 + 32 < rows ? i0 + 32 : rows, j1 = j0 + 32 < cols ? j0 + 32 : cols;
                for (int j = j0; j < j1; j++)
                    for (int i = i0; i < i1; i++) {
                        const float v = xb[(size_t)i * cols + j];
                        yb[(size_t)j * rows + i] = accumulate ? yb[(size_t)j * rows + i] + v : v;
                    }
            }
    }
}
