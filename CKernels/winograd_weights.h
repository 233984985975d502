/* winograd_weights.h — private to CKernels: the F(2x2, 3x3) weight transform both Winograd
 * layouts (winograd.c by tile rows, winograd_interleaved.c by interleaved images) share. */
#ifndef MSQ_WINOGRAD_WEIGHTS_H
#define MSQ_WINOGRAD_WEIGHTS_H
#include "msq_kernels.h"

/* u[ξ][co][ci] = (G g_{co,ci} G^T)[ξ] for w[c_out][c_in][3][3], G = [1 0 0; ½ ½ ½; ½ -½ ½; 0 0 1].
   An orphaned `omp for` over output channels: call it from every thread of a parallel region (or
   outside one); it ends in a barrier. */
void msq_winograd_transform_weights(float *u, const float *w, const msq_conv2d_shape *s);

#endif
