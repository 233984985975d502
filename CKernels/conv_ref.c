/* conv_ref.c — the reference convolution: the scalar _ref twins of conv.c's kernels and the
 * fallback the workspace-hungry kernels take when their workspace cannot be allocated. The bottom
 * layer of the conv files (see conv.c): calls nothing but itself. */
#include "msq_kernels.h"
#include "conv_internal.h"
#include <stddef.h>

/* ================================================================ reference kernels
   The oracle the fast kernels are tested against: conv_ref_loops.h's loops for float. */

#define CONV_REF_T float
#define CONV_REF_NAME(op) op##_ref_float
#include "conv_ref_loops.h"
#undef CONV_REF_T
#undef CONV_REF_NAME

void msq_conv2d_forward_ref(float *y, const float *x, const float *w, const float *bias,
                            const msq_conv2d_shape *s, void *workspace) {
    (void)workspace;
    forward_ref_float(y, x, w, bias, s, 0);
}

void msq_conv2d_forward_fallback(float *y, const float *x, const float *w, const float *bias,
                                 const msq_conv2d_shape *s, int accumulate) {
    forward_ref_float(y, x, w, accumulate ? NULL : bias, s, accumulate);
}

void msq_conv2d_backward_input_ref(float *dx, const float *dy, const float *w,
                                   const msq_conv2d_shape *s, void *workspace) {
    (void)workspace;
    backward_input_ref_float(dx, dy, w, s);
}

void msq_conv2d_backward_weight_ref(float *dw, float *dbias, const float *dy, const float *x,
                                    const msq_conv2d_shape *s, void *workspace) {
    (void)workspace;
    backward_weight_ref_float(dw, dbias, dy, x, s);
}
