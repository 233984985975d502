/* conv_ref_loops.h — the direct convolution loops behind the reference twins, for one element
 * type: conv_ref.c includes it for float, conv_f64.c for double. Define CONV_REF_T (the element
 * type) and CONV_REF_NAME(op) (the static function names) before each include. Plain loops, one
 * thread, double accumulators; each output element is computed as one sum and added once, so
 * the backward loops gather rather than scatter. */
#include "msq_kernels.h"
#include <stddef.h>

#ifndef MSQ_CONV_REF_OFFSETS
#define MSQ_CONV_REF_OFFSETS
/* Flat offsets of x[b, c, h, w], y[b, c, h, w] and w[co, ci, i, j]. */
static inline size_t x_at(const msq_conv2d_shape *s, int b, int c, int h, int w) {
    return (((size_t)b * s->c_in + c) * s->h_in + h) * s->w_in + w;
}
static inline size_t y_at(const msq_conv2d_shape *s, int b, int c, int h, int w) {
    return (((size_t)b * s->c_out + c) * s->h_out + h) * s->w_out + w;
}
static inline size_t w_at(const msq_conv2d_shape *s, int co, int ci, int i, int j) {
    return (((size_t)co * (s->c_in / s->groups) + ci) * s->kh + i) * s->kw + j;
}
#endif

/* y[n,c_out,h_out,w_out] (+)= bias[co] + sum over (ci < cin_g, i, j) of
   x[n, g*cin_g + ci, oh*sh - ph + i, ow*sw - pw + j] * w[co, ci, i, j],  g = co / cout_g. */
static void CONV_REF_NAME(forward)(CONV_REF_T *y, const CONV_REF_T *x, const CONV_REF_T *w, const CONV_REF_T *bias,
                                   const msq_conv2d_shape *s, int accumulate) {
    const int cin_g = s->c_in / s->groups, cout_g = s->c_out / s->groups;
    for (int b = 0; b < s->n; b++)
        for (int co = 0; co < s->c_out; co++) {
            const int g = co / cout_g;
            for (int oh = 0; oh < s->h_out; oh++)
                for (int ow = 0; ow < s->w_out; ow++) {
                    double acc = bias ? (double)bias[co] : 0.0;
                    for (int ci = 0; ci < cin_g; ci++)
                        for (int i = 0; i < s->kh; i++) {
                            const int ih = oh * s->stride_h - s->pad_h + i;
                            if (ih < 0 || ih >= s->h_in) continue;
                            for (int j = 0; j < s->kw; j++) {
                                const int iw = ow * s->stride_w - s->pad_w + j;
                                if (iw < 0 || iw >= s->w_in) continue;
                                acc += (double)x[x_at(s, b, g * cin_g + ci, ih, iw)] *
                                       (double)w[w_at(s, co, ci, i, j)];
                            }
                        }
                    if (accumulate) y[y_at(s, b, co, oh, ow)] += (CONV_REF_T)acc;
                    else            y[y_at(s, b, co, oh, ow)] = (CONV_REF_T)acc;
                }
        }
}

/* dx[n,c_in,h_in,w_in] += sum over (co in c's group, i, j) of dy[n, co, oh, ow] * w[co, ci, i, j]
   for every (oh, ow) with oh*sh - ph + i == ih and ow*sw - pw + j == iw. */
static void CONV_REF_NAME(backward_input)(CONV_REF_T *dx, const CONV_REF_T *dy, const CONV_REF_T *w,
                                          const msq_conv2d_shape *s) {
    const int cin_g = s->c_in / s->groups, cout_g = s->c_out / s->groups;
    for (int b = 0; b < s->n; b++)
        for (int c = 0; c < s->c_in; c++) {
            const int g = c / cin_g, ci = c % cin_g;
            for (int ih = 0; ih < s->h_in; ih++)
                for (int iw = 0; iw < s->w_in; iw++) {
                    double acc = 0.0;
                    for (int co = g * cout_g; co < (g + 1) * cout_g; co++)
                        for (int i = 0; i < s->kh; i++) {
                            const int th = ih + s->pad_h - i, oh = th / s->stride_h;
                            if (th < 0 || th % s->stride_h != 0 || oh >= s->h_out) continue;
                            for (int j = 0; j < s->kw; j++) {
                                const int tw = iw + s->pad_w - j, ow = tw / s->stride_w;
                                if (tw < 0 || tw % s->stride_w != 0 || ow >= s->w_out) continue;
                                acc += (double)dy[y_at(s, b, co, oh, ow)] *
                                       (double)w[w_at(s, co, ci, i, j)];
                            }
                        }
                    dx[x_at(s, b, c, ih, iw)] += (CONV_REF_T)acc;
                }
        }
}

/* dw[co,ci,i,j] += sum over (n, oh, ow) of dy[n, co, oh, ow] * x[n, g*cin_g + ci, ih, iw];
   dbias[co] += sum over (n, oh, ow) of dy[n, co, oh, ow]. */
static void CONV_REF_NAME(backward_weight)(CONV_REF_T *dw, CONV_REF_T *dbias, const CONV_REF_T *dy,
                                           const CONV_REF_T *x, const msq_conv2d_shape *s) {
    const int cin_g = s->c_in / s->groups, cout_g = s->c_out / s->groups;
    for (int co = 0; co < s->c_out; co++) {
        const int g = co / cout_g;
        for (int ci = 0; ci < cin_g; ci++)
            for (int i = 0; i < s->kh; i++)
                for (int j = 0; j < s->kw; j++) {
                    double acc = 0.0;
                    for (int b = 0; b < s->n; b++)
                        for (int oh = 0; oh < s->h_out; oh++) {
                            const int ih = oh * s->stride_h - s->pad_h + i;
                            if (ih < 0 || ih >= s->h_in) continue;
                            for (int ow = 0; ow < s->w_out; ow++) {
                                const int iw = ow * s->stride_w - s->pad_w + j;
                                if (iw < 0 || iw >= s->w_in) continue;
                                acc += (double)dy[y_at(s, b, co, oh, ow)] *
                                       (double)x[x_at(s, b, g * cin_g + ci, ih, iw)];
                            }
                        }
                    dw[w_at(s, co, ci, i, j)] += (CONV_REF_T)acc;
                }
        if (dbias) {
            double acc = 0.0;
            for (int b = 0; b < s->n; b++)
                for (int oh = 0; oh < s->h_out; oh++)
                    for (int ow = 0; ow < s->w_out; ow++) acc += (double)dy[y_at(s, b, co, oh, ow)];
            dbias[co] += (CONV_REF_T)acc;
        }
    }
}
