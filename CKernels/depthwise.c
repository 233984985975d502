/* depthwise.c — depthwise convolution (groups == c_in == c_out: one k x k filter per channel)
 * computed directly, plane by plane, without im2col + GEMM. A depthwise layer does k·k
 * multiply-adds per output, so the GEMM route (one 1 x k·k by k·k x HW product per group) spends
 * its time building and packing columns; here each tap is one pass over an output row, a
 * contiguous vector loop at stride 1.
 *
 *     forward          y[b,c,oy,ox]  = bias[c] + Σ_ky,kx w[c,ky,kx] · x[b,c, oy·sh − ph + ky, ox·sw − pw + kx]
 *     backward input   dx[b,c,iy,ix] += Σ w[c,ky,kx] · dy[b,c,oy,ox]   over every (oy,ox,ky,kx) reading (iy,ix)
 *     backward weight  dw[c,ky,kx]  += Σ_b Σ_oy,ox dy[b,c,oy,ox] · x[b,c, oy·sh − ph + ky, ox·sw − pw + kx]
 *                      dbias[c]     += Σ_b Σ_oy,ox dy[b,c,oy,ox]
 *
 * Taps that fall in the zero padding are skipped by clipping each tap's output range, so there is
 * no padded copy and no branch in the inner loops. Forward and backward input split the n·c planes
 * over threads (each plane written by one thread); the weight gradient splits channels (each
 * thread sums its channels over the images in order), so every result is independent of the thread
 * count. No workspace. */
#include "msq_kernels.h"
#include <omp.h>
#include <stddef.h>

int msq_conv2d_depthwise_eligible(const msq_conv2d_shape *s) {
    return s->groups > 1 && s->groups == s->c_in && s->groups == s->c_out;
}

/* The outputs ox of one tap column kx that read inside the row: 0 <= ox·sw − pw + kx < w_in. */
typedef struct tap_range { int lo, hi; } tap_range; /* ox in [lo, hi), possibly empty */

static tap_range tap_columns(const msq_conv2d_shape *s, int kx) {
    const int sw = s->stride_w, before = s->pad_w - kx, last = s->w_in - 1 + s->pad_w - kx;
    tap_range r;
    r.lo = before > 0 ? (before + sw - 1) / sw : 0;
    r.hi = last < 0 ? 0 : last / sw + 1;
    if (r.hi > s->w_out) r.hi = s->w_out;
    if (r.lo > r.hi) r.lo = r.hi;
    return r;
}

static int threads_for(long items) {
    if (omp_in_parallel()) return 1;
    const int t = omp_get_max_threads();
    return items < t ? (int)(items > 0 ? items : 1) : t;
}

/* One plane: x[h_in, w_in], w[kh, kw] -> y[h_out, w_out] = bias + conv. */
static void forward_plane(float *restrict y, const float *restrict x, const float *restrict w, float bias,
                          const msq_conv2d_shape *s, const tap_range *cols) {
    const int sh = s->stride_h, sw = s->stride_w;
    for (int oy = 0; oy < s->h_out; oy++) {
        float *restrict yr = y + (size_t)oy * s->w_out;
        for (int ox = 0; ox < s->w_out; ox++) yr[ox] = bias;
        for (int ky = 0; ky < s->kh; ky++) {
            const int iy = oy * sh - s->pad_h + ky;
            if (iy < 0 || iy >= s->h_in) continue;
            const float *restrict xr = x + (size_t)iy * s->w_in;
            for (int kx = 0; kx < s->kw; kx++) {
                const float wv = w[ky * s->kw + kx];
                const int lo = cols[kx].lo, hi = cols[kx].hi, off = kx - s->pad_w;
                if (sw == 1) {
                    for (int ox = lo; ox < hi; ox++) yr[ox] += wv * xr[ox + off];
                } else {
                    for (int ox = lo; ox < hi; ox++) yr[ox] += wv * xr[ox * sw + off];
                }
            }
        }
    }
}

/* Runs `plane` on every (image, channel) plane, split over threads: `out` planes of out_plane
   floats, `in` planes of in_plane floats, channel c's filter and bias. kw > 64 (no such layer in
   practice) is left to the caller. */
typedef void (*plane_kernel)(float *out, const float *in, const float *w, float bias, const msq_conv2d_shape *s,
                             const tap_range *cols);

static void each_plane(plane_kernel plane, float *out, size_t out_plane, const float *in, size_t in_plane,
                       const float *w, const float *bias, const msq_conv2d_shape *s) {
    tap_range cols[64];
    for (int kx = 0; kx < s->kw; kx++) cols[kx] = tap_columns(s, kx);
    const long planes = (long)s->n * s->c_in;
    const int team = threads_for(planes);
    #pragma omp parallel for schedule(static) num_threads(team) if (team > 1)
    for (long p = 0; p < planes; p++) {
        const int c = (int)(p % s->c_in);
        plane(out + p * out_plane, in + p * in_plane, w + (size_t)c * s->kh * s->kw, bias ? bias[c] : 0.0f, s, cols);
    }
}

/* x[n,c,h_in,w_in], w[c,1,kh,kw], bias[c] or NULL -> y[n,c,h_out,w_out] (overwritten). */
void msq_conv2d_depthwise_forward(float *y, const float *x, const float *w, const float *bias,
                                  const msq_conv2d_shape *s) {
    if (s->kw > 64) { msq_conv2d_forward_ref(y, x, w, bias, s, NULL); return; }
    each_plane(forward_plane, y, (size_t)s->h_out * s->w_out, x, (size_t)s->h_in * s->w_in, w, bias, s);
}

/* One plane: dy[h_out, w_out], w[kh, kw] -> dx[h_in, w_in] += the transposed conv. */
static void backward_input_plane(float *restrict dx, const float *restrict dy, const float *restrict w, float unused_bias,
                                 const msq_conv2d_shape *s, const tap_range *cols) {
    (void)unused_bias;
    const int sh = s->stride_h, sw = s->stride_w;
    for (int oy = 0; oy < s->h_out; oy++) {
        const float *restrict dyr = dy + (size_t)oy * s->w_out;
        for (int ky = 0; ky < s->kh; ky++) {
            const int iy = oy * sh - s->pad_h + ky;
            if (iy < 0 || iy >= s->h_in) continue;
            float *restrict dxr = dx + (size_t)iy * s->w_in;
            for (int kx = 0; kx < s->kw; kx++) {
                const float wv = w[ky * s->kw + kx];
                const int lo = cols[kx].lo, hi = cols[kx].hi, off = kx - s->pad_w;
                if (sw == 1) {
                    for (int ox = lo; ox < hi; ox++) dxr[ox + off] += wv * dyr[ox];
                } else {
                    for (int ox = lo; ox < hi; ox++) dxr[ox * sw + off] += wv * dyr[ox];
                }
            }
        }
    }
}

/* dy[n,c,h_out,w_out], w[c,1,kh,kw] -> dx[n,c,h_in,w_in] (accumulated). */
void msq_conv2d_depthwise_backward_input(float *dx, const float *dy, const float *w, const msq_conv2d_shape *s) {
    if (s->kw > 64) { msq_conv2d_backward_input_ref(dx, dy, w, s, NULL); return; }
    each_plane(backward_input_plane, dx, (size_t)s->h_in * s->w_in, dy, (size_t)s->h_out * s->w_out, w, NULL, s);
}

/* dy[n,c,h_out,w_out], x[n,c,h_in,w_in] -> dw[c,1,kh,kw], dbias[c] (accumulated; dbias may be NULL). */
void msq_conv2d_depthwise_backward_weight(float *dw, float *dbias, const float *dy, const float *x,
                                          const msq_conv2d_shape *s) {
    if (s->kw > 64 || s->kh * s->kw > 1024) { msq_conv2d_backward_weight_ref(dw, dbias, dy, x, s, NULL); return; }
    tap_range cols[64];
    for (int kx = 0; kx < s->kw; kx++) cols[kx] = tap_columns(s, kx);
    const size_t in_plane = (size_t)s->h_in * s->w_in, out_plane = (size_t)s->h_out * s->w_out;
    const int kk = s->kh * s->kw, sh = s->stride_h, sw = s->stride_w;
    const int team = threads_for(s->c_in);
    #pragma omp parallel for schedule(static) num_threads(team) if (team > 1)
    for (int c = 0; c < s->c_in; c++) {
        float acc[1024];
        float bias_acc = 0.0f;
        for (int k = 0; k < kk; k++) acc[k] = 0.0f;
        for (int b = 0; b < s->n; b++) {
            const float *xp = x + ((size_t)b * s->c_in + c) * in_plane;
            const float *dyp = dy + ((size_t)b * s->c_in + c) * out_plane;
            for (int oy = 0; oy < s->h_out; oy++) {
                const float *restrict dyr = dyp + (size_t)oy * s->w_out;
                if (dbias) for (int ox = 0; ox < s->w_out; ox++) bias_acc += dyr[ox];
                for (int ky = 0; ky < s->kh; ky++) {
                    const int iy = oy * sh - s->pad_h + ky;
                    if (iy < 0 || iy >= s->h_in) continue;
                    const float *restrict xr = xp + (size_t)iy * s->w_in;
                    for (int kx = 0; kx < s->kw; kx++) {
                        const int lo = cols[kx].lo, hi = cols[kx].hi, off = kx - s->pad_w;
                        float sum = 0.0f;
                        if (sw == 1) {
                            for (int ox = lo; ox < hi; ox++) sum += dyr[ox] * xr[ox + off];
                        } else {
                            for (int ox = lo; ox < hi; ox++) sum += dyr[ox] * xr[ox * sw + off];
                        }
                        acc[ky * s->kw + kx] += sum;
                    }
                }
            }
        }
        for (int k = 0; k < kk; k++) dw[(size_t)c * kk + k] += acc[k];
        if (dbias) dbias[c] += bias_acc;
    }
}
