/* pool.c — max, average and global average pooling over NCHW planes. */
#include "msq_kernels.h"
#include <math.h>
#if defined(__AVX2__)
#include <immintrin.h>
#endif

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

/* One output: the max over the clipped window (so padding never wins) and its flat index.
   Strict '>' keeps the first maximum in row-major scan order; NaN wins as in PyTorch. */
static inline void max_window(float *y, int32_t *am, const float *x, const msq_pool2d_shape *s,
                              int hs, int he, int ow) {
    const int w0 = ow * s->stride_w - s->pad_w;
    const int ws = imax(w0, 0), we = imin(w0 + s->kw, s->w_in);
    int32_t best = hs * s->w_in + ws;
    float m = -INFINITY;
    for (int h = hs; h < he; h++)
        for (int w = ws; w < we; w++) {
            /* Selects instead of a branch: on real activations the comparison is a coin flip. */
            const float v = x[h * s->w_in + w];
            const int take = (v > m) | (v != v);
            m = take ? v : m;
            best = take ? h * s->w_in + w : best;
        }
    *y = m;
    *am = best;
}

static void maxpool_plane(float *y, int32_t *am, const float *x, const msq_pool2d_shape *s) {
    for (int oh = 0; oh < s->h_out; oh++) {
        const int h0 = oh * s->stride_h - s->pad_h;
        const int hs = imax(h0, 0), he = imin(h0 + s->kh, s->h_in);
        for (int ow = 0; ow < s->w_out; ow++)
            max_window(y + oh * s->w_out + ow, am + oh * s->w_out + ow, x, s, hs, he, ow);
    }
}

/* The fast plane: for stride-2 windows (ResNet-18's 3x3 s2 stem pooling) eight outputs at a
   time, same scan order and comparisons as max_window, so the same values and indices. Each
   window column is the even elements of 16 consecutive inputs; outputs whose window reaches
   the padding, or whose 16-float loads would leave the row, go through max_window. */
static void maxpool_plane_fast(float *y, int32_t *am, const float *x, const msq_pool2d_shape *s) {
#if defined(__AVX2__)
    if (s->stride_w != 2) {
        maxpool_plane(y, am, x, s);
        return;
    }
    /* Vector outputs ow0 ... ow0 + 7 need 2 * ow0 - pad_w >= 0 and
       2 * ow0 - pad_w + (kw - 1) + 15 < w_in for the last load's last element. */
    const int ow_lo = (s->pad_w + 1) / 2;
    const __m256i lane2 = _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14);
    for (int oh = 0; oh < s->h_out; oh++) {
        const int h0 = oh * s->stride_h - s->pad_h;
        const int hs = imax(h0, 0), he = imin(h0 + s->kh, s->h_in);
        float *yr = y + oh * s->w_out;
        int32_t *ar = am + oh * s->w_out;
        int ow = 0;
        for (; ow < ow_lo && ow < s->w_out; ow++) max_window(yr + ow, ar + ow, x, s, hs, he, ow);
        for (; ow + 8 <= s->w_out && 2 * ow - s->pad_w + s->kw + 14 < s->w_in; ow += 8) {
            const int c0 = 2 * ow - s->pad_w;
            __m256 m = _mm256_set1_ps(-INFINITY);
            __m256i best = _mm256_add_epi32(_mm256_set1_epi32(hs * s->w_in + c0), lane2);
            for (int h = hs; h < he; h++)
                for (int kw = 0; kw < s->kw; kw++) {
                    const int at = h * s->w_in + c0 + kw;
                    const __m256 a = _mm256_loadu_ps(x + at), b = _mm256_loadu_ps(x + at + 8);
                    /* Even elements, in order: [a0 a2 b0 b2 | a4 a6 b4 b6] -> [a0 a2 a4 a6 b0 b2 b4 b6]. */
                    const __m256 v = _mm256_castpd_ps(_mm256_permute4x64_pd(
                        _mm256_castps_pd(_mm256_shuffle_ps(a, b, 0x88)), 0xD8));
                    const __m256 take = _mm256_or_ps(_mm256_cmp_ps(v, m, _CMP_GT_OQ), _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
                    m = _mm256_blendv_ps(m, v, take);
                    const __m256i idx = _mm256_add_epi32(_mm256_set1_epi32(at), lane2);
                    best = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(best), _mm256_castsi256_ps(idx), take));
                }
            _mm256_storeu_ps(yr + ow, m);
            _mm256_storeu_si256((__m256i *)(ar + ow), best);
        }
        for (; ow < s->w_out; ow++) max_window(yr + ow, ar + ow, x, s, hs, he, ow);
    }
#else
    maxpool_plane(y, am, x, s);
#endif
}

void msq_maxpool2d_forward_ref(float *y, int32_t *argmax, const float *x, const msq_pool2d_shape *s) {
    size_t in = (size_t)s->h_in * s->w_in, out = (size_t)s->h_out * s->w_out;
    for (size_t p = 0; p < (size_t)s->n * s->c; p++) maxpool_plane(y + p * out, argmax + p * out, x + p * in, s);
}

void msq_maxpool2d_forward(float *y, int32_t *argmax, const float *x, const msq_pool2d_shape *s) {
    size_t in = (size_t)s->h_in * s->w_in, out = (size_t)s->h_out * s->w_out;
    long planes = (long)s->n * s->c;
    #pragma omp parallel for schedule(static) if (planes * (long)out > 4096)
    for (long p = 0; p < planes; p++) maxpool_plane_fast(y + p * out, argmax + p * out, x + p * in, s);
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
