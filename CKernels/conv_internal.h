/* conv_internal.h — private to CKernels: helpers the convolution files (conv.c, im2col.c, winograd.c,
 * winograd_interleaved.c, direct.c, depthwise.c) share. They live below their callers (see conv.c's layering):
 * the Winograd weight transform and the workspace allocation in conv_common.c, the fallback in
 * conv_ref.c, the im2col rows in im2col.c. */
#ifndef MSQ_CONV_INTERNAL_H
#define MSQ_CONV_INTERNAL_H
#include "msq_kernels.h"

/* u[ξ][co][ci] = (G g_{co,ci} G^T)[ξ] for w[c_out][c_in][3][3], G = [1 0 0; ½ ½ ½; ½ -½ ½; 0 0 1],
   the F(2x2, 3x3) weight transform of both Winograd layouts. An orphaned `omp for` over output
   channels: call it from every thread of a parallel region (or outside one); it ends in a barrier. */
void msq_winograd_transform_weights(float *u, const float *w, const msq_conv2d_shape *s);

/* Threads for a loop over `items` independent pieces of work: at most the OpenMP thread count, at
   least 1, and 1 inside someone else's parallel region. (attention.c uses it too.) */
int msq_conv_team_size(long items);

/* The caller's workspace, or (workspace NULL) a 64-byte aligned one of `bytes` bytes that *owned
   also points to, for the caller to free; NULL when that allocation fails. */
float *msq_conv_workspace_or_alloc(void *workspace, size_t bytes, float **owned);

/* y = conv(x, w) + bias, or y += conv(x, w) when accumulate != 0 (bias unused then), by the
   reference arithmetic and without allocating: the path of the workspace-hungry kernels when
   their workspace cannot be allocated. */
void msq_conv2d_forward_fallback(float *y, const float *x, const float *w, const float *bias,
                                 const msq_conv2d_shape *s, int accumulate);

/* Output rows [oh0, oh1) of one image's column matrix (im2col.c): row r = (c*kh + i)*kw + j at
   col + r*ldcol holds col[r, (oh-oh0)*w_out + ow] = x[c, oh*sh-ph+i, ow*sw-pw+j], 0 in the
   padding, for `channels` input planes of shape s starting at x. */
void msq_im2col_rows(float *restrict col, size_t ldcol, const float *restrict x, int channels,
                     const msq_conv2d_shape *s, int oh0, int oh1);

/* Adjoint of msq_im2col_rows: x[c, ih, iw] += every col entry that was read from there. */
void msq_col2im_rows_add(float *restrict x, const float *restrict col, size_t ldcol, int channels,
                         const msq_conv2d_shape *s, int oh0, int oh1);

/* Depthwise convolution with 8 channels per vector (depthwise_channels.c), for square 3×3 and 5×5
   filters at stride 1 or 2 and equal padding (`_eligible`); the input gradient at stride 1 with
   padding at most k − 1 (`_input_eligible`); the weight gradient of the 5×5 ones (`_weight_eligible`).
   Same arguments as msq_conv2d_depthwise_forward / _backward_input / _backward_weight; they
   return 0, or -1 with nothing written when scratch memory is short. */
int msq_depthwise_channels_eligible(const msq_conv2d_shape *s);
int msq_depthwise_channels_input_eligible(const msq_conv2d_shape *s);
int msq_depthwise_channels_weight_eligible(const msq_conv2d_shape *s);
int msq_depthwise_channels_forward(float *y, const float *x, const float *w, const float *bias,
                                   const msq_conv2d_shape *s);
int msq_depthwise_channels_backward_input(float *dx, const float *dy, const float *w, const msq_conv2d_shape *s);
int msq_depthwise_channels_backward_weight(float *dw, float *dbias, const float *dy, const float *x,
                                           const msq_conv2d_shape *s);

#endif
