/* pool.c — max, average and global average pooling over NCHW planes. */
#include "msq_kernels.h"
#include <math.h>

int msq_pool2d_make_shape(msq_pool2d_shape *s, int n, int c, int h_in, int w_in,
                          int k, int stride, int pad) {
    if (n <= 0 || c <= 0 || h_in <= 0 || w_in <= 0 || k <= 0 || stride <= 0) return -1;
    /* PyTorch's rule; it also guarantees every window overlaps the real input. */
    if (pad < 0 || pad > k / 2) return -1;
    if (h_in + 2 * pad < k || w_in + 2 * pad < k) return -1;
    s->n = n; s->c = c; s->h_in = h_in; s->w_in = w_in;
    s->kh = k; s->kw = k; s->stride_h = stride; s->stride_w = stride; s->pad_h = pad; s->pad_w = pad;
    s->h_out = (h_in + 2 * pad - k) / stride + 1;
    s->w_out = (w_in + 2 * pad - k) / stride + 1;
    return 0;
}

static inline int imax(int a, int b) { return a > b ? a : b; }
static inline int imin(int a, int b) { return a < b ? a : b; }

/* ---- max pooling */

static void maxpool_plane(float *y, int32_t *am, const float *x, const msq_pool2d_shape *s) {
    for (int oh = 0; oh < s->h_out; oh++) {
        int h0 = oh * s->stride_h - s->pad_h;
        int hs = imax(h0, 0), he = imin(h0 + s->kh, s->h_in);
        for (int ow = 0; ow < s->w_out; ow++) {
            int w0 = ow * s->stride_w - s->pad_w;
            int ws = imax(w0, 0), we = imin(w0 + s->kw, s->w_in);
            /* Only the clipped window is scanned, so padding never wins. Strict '>' keeps the
               first maximum; NaN wins as in PyTorch. */
            int32_t best = hs * s->w_in + ws;
            float m = -INFINITY;
            for (int h = hs; h < he; h++)
                for (int w = ws; w < we; w++) {
                    /* Selects instead of a branch: on real activations the comparison is a coin
                       flip, and mispredictions made this loop the slowest of ResNet-18's step. */
                    const float v = x[h * s->w_in + w];
                    const int take = (v > m) | (v != v);
                    m = take ? v : m;
                    best = take ? h * s->w_in + w : best;
                }
            y[oh * s->w_out + ow] = m;
            am[oh * s->w_out + ow] = best;
        }
    }
}

void msq_maxpool2d_forward_ref(float *y, int32_t *argmax, const float *x, const msq_pool2d_shape *s) {
    size_t in = (size_t)s->h_in * s->w_in, out = (size_t)s->h_out * s->w_out;
    for (size_t p = 0; p < (size_t)s->n * s->c; p++) maxpool_plane(y + p * out, argmax + p * out, x + p * in, s);
}

void msq_maxpool2d_forward(float *y, int32_t *argmax, const float *x, const msq_pool2d_shape *s) {
    size_t in = (size_t)s->h_in * s->w_in, out = (size_t)s->h_out * s->w_out;
    long planes = (long)s->n * s->c;
    #pragma omp parallel for schedule(static) if (planes * (long)out > 4096)
    for (long p = 0; p < planes; p++) maxpool_plane(y + p * out, argmax + p * out, x + p * in, s);
}

void msq_maxpool2d_backward_ref(float *dx, const float *dy, const int32_t *argmax, const msq_pool2d_shape *s) {
    size_t in = (size_t)s->h_in * s->w_in, out = (size_t)s->h_out * s->w_out;
    for (size_t p = 0; p < (size_t)s->n * s->c; p++)
        for (size_t o = 0; o < out; o++) dx[p * in + argmax[p * out + o]] += dy[p * out + o];
}

void msq_maxpool2d_backward(float *dx, const float *dy, const int32_t *argmax, const msq_pool2d_shape *s) {
    size_t in = (size_t)s->h_in * s->w_in, out = (size_t)s->h_out * s->w_out;
    long planes = (long)s->n * s->c;
    /* Planes are disjoint, and within a plane the scatter order is fixed: deterministic. */
    #pragma omp parallel for schedule(static) if (planes * (long)out > 4096)
    for (long p = 0; p < planes; p++) {
        float *d = dx + p * in;
        const float *g = dy + p * out;
        const int32_t *a = argmax + p * out;
        for (size_t o = 0; o < out; o++) d[a[o]] += g[o];
    }
}

/* ---- average pooling (count_include_pad = True; without ceil mode every window lies inside
        the padded input, so the divisor is always kh*kw) */

static void avgpool_plane(float *y, const float *x, const msq_pool2d_shape *s) {
    float div = (float)(s->kh * s->kw);
    for (int oh = 0; oh < s->h_out; oh++) {
        int h0 = oh * s->stride_h - s->pad_h;
        int hs = imax(h0, 0), he = imin(h0 + s->kh, s->h_in);
        for (int ow = 0; ow < s->w_out; ow++) {
            int w0 = ow * s->stride_w - s->pad_w;
            int ws = imax(w0, 0), we = imin(w0 + s->kw, s->w_in);
            float sum = 0.0f;
            for (int h = hs; h < he; h++)
                for (int w = ws; w < we; w++) sum += x[h * s->w_in + w];
            y[oh * s->w_out + ow] = sum / div;
        }
    }
}

static void avgpool_backward_plane(float *dx, const float *dy, const msq_pool2d_shape *s) {
    float div = (float)(s->kh * s->kw);
    for (int oh = 0; oh < s->h_out; oh++) {
        int h0 = oh * s->stride_h - s->pad_h;
        int hs = imax(h0, 0), he = imin(h0 + s->kh, s->h_in);
        for (int ow = 0; ow < s->w_out; ow++) {
            int w0 = ow * s->stride_w - s->pad_w;
            int ws = imax(w0, 0), we = imin(w0 + s->kw, s->w_in);
            float g = dy[oh * s->w_out + ow] / div;
            for (int h = hs; h < he; h++)
                for (int w = ws; w < we; w++) dx[h * s->w_in + w] += g;
        }
    }
}

void msq_avgpool2d_forward_ref(float *y, const float *x, const msq_pool2d_shape *s) {
    size_t in = (size_t)s->h_in * s->w_in, out = (size_t)s->h_out * s->w_out;
    for (size_t p = 0; p < (size_t)s->n * s->c; p++) avgpool_plane(y + p * out, x + p * in, s);
}

void msq_avgpool2d_forward(float *y, const float *x, const msq_pool2d_shape *s) {
    size_t in = (size_t)s->h_in * s->w_in, out = (size_t)s->h_out * s->w_out;
    long planes = (long)s->n * s->c;
    #pragma omp parallel for schedule(static) if (planes * (long)out > 4096)
    for (long p = 0; p < planes; p++) avgpool_plane(y + p * out, x + p * in, s);
}

void msq_avgpool2d_backward_ref(float *dx, const float *dy, const msq_pool2d_shape *s) {
    size_t in = (size_t)s->h_in * s->w_in, out = (size_t)s->h_out * s->w_out;
    for (size_t p = 0; p < (size_t)s->n * s->c; p++) avgpool_backward_plane(dx + p * in, dy + p * out, s);
}

void msq_avgpool2d_backward(float *dx, const float *dy, const msq_pool2d_shape *s) {
    size_t in = (size_t)s->h_in * s->w_in, out = (size_t)s->h_out * s->w_out;
    long planes = (long)s->n * s->c;
    #pragma omp parallel for schedule(static) if (planes * (long)out > 4096)
    for (long p = 0; p < planes; p++) avgpool_backward_plane(dx + p * in, dy + p * out, s);
}

/* ---- global average pooling; the plane sum is accumulated in double */

void msq_global_avgpool_forward_ref(float *y, const float *x, int n, int c, int hw) {
    for (size_t p = 0; p < (size_t)n * c; p++) {
        double sum = 0.0;
        for (int i = 0; i < hw; i++) sum += x[p * hw + i];
        y[p] = (float)(sum / hw);
    }
}

void msq_global_avgpool_forward(float *y, const float *x, int n, int c, int hw) {
    long planes = (long)n * c;
    #pragma omp parallel for schedule(static) if (planes * (long)hw > 16384)
    for (long p = 0; p < planes; p++) {
        const float *xp = x + p * hw;
        double sum = 0.0;
        #pragma omp simd reduction(+ : sum)
        for (int i = 0; i < hw; i++) sum += xp[i];
        y[p] = (float)(sum / hw);
    }
}

void msq_global_avgpool_backward_ref(float *dx, const float *dy, int n, int c, int hw) {
    for (size_t p = 0; p < (size_t)n * c; p++) {
        float g = dy[p] / (float)hw;
        for (int i = 0; i < hw; i++) dx[p * hw + i] += g;
    }
}

void msq_global_avgpool_backward(float *dx, const float *dy, int n, int c, int hw) {
    long planes = (long)n * c;
    #pragma omp parallel for schedule(static) if (planes * (long)hw > 16384)
    for (long p = 0; p < planes; p++) {
        float *d = dx + p * hw;
        float g = dy[p] / (float)hw;
        for (int i = 0; i < hw; i++) d[i] += g;
    }
}
