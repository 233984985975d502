/* direct.c — 3x3 stride-1 "same" convolution computed directly, without im2col, for layers with
 * few channels that the interleaved Winograd does not take (fewer than 8 input channels, as in
 * ResNet-20's stem, or batches that leave its lanes empty), where a GEMM over im2col columns
 * spends more time building and packing the columns than multiplying.
 *
 * Flat padded layout. A group of g images of one channel is stored as one grid of
 * g * (h + 1) + 2 rows of pitch P = w + 1: image i's row y at grid row i * (h + 1) + 1 + y,
 * columns 1 ... w; every other cell is zero. One zero row separates consecutive images (the
 * bottom pad of one and the top pad of the next) and one zero column starts each row (the left
 * pad of that row and, one cell further in flat order, the right pad of the row above). An output
 * pixel at flat index
 *     q = (i * (h + 1) + y) * P + x      (x < w, y < h)
 * then reads its 3x3 window at grid cells q + ky * P + kx, so each tap is one contiguous vector
 * load at a fixed offset and the image edges need no branches. Indices with x == w or y == h are
 * computed too and dropped (forward) or see a zero gradient (backward weight): about
 * 1/P + 1/(h+1) of the work, 6 % at 32x32, 21 % at 8x8.
 *
 *     forward          y[co, q] = Σ_ci Σ_ky,kx w[co, ci, ky, kx] · X[ci, q + ky·P + kx]
 *     backward weight  dw[co, ci, ky, kx] += Σ_q dY[co, q] · X[ci, q + ky·P + kx]
 * The backward input is the forward of the transposed conv (conv.c flips the weights).
 * Work is split by image groups (static schedule); the weight gradient is summed per thread and
 * the partials added in thread order, so results depend only on the shape and the thread count.
 * Workspace, per thread: X [c_in][xpitch] | Y or dY [c_out][ypitch] | dw, dbias partials. */
#include "msq_kernels.h"
#include "conv_internal.h"
#include <omp.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX2__)
#include <immintrin.h>
#endif

/* Up to this many channels in and out the direct kernels beat im2col + GEMM on this design
   (msq-bench kernels: 16 and 32 channels); at 64 the GEMM's longer K amortises its packing and
   the direct kernels' padding cells (31 % of the work at 8x8) cost more than they save. */
#ifndef MSQ_DIRECT_MAX_CHANNELS
#define MSQ_DIRECT_MAX_CHANNELS 32
#endif
/* A thread's X and Y buffers for one image group fit in about this many bytes (core-private L2). */
#ifndef MSQ_DIRECT_GROUP_BYTES
#define MSQ_DIRECT_GROUP_BYTES (640u << 10)
#endif
/* Output pixels per register block: the forward kernel's two 8-float vectors. */
#define QBLOCK 16

typedef struct direct_geom {
    int g;              /* images per group */
    int pitch;          /* P = w + 1 */
    long image_cells;   /* (h + 1) * P: one image and the zero row below it */
    long xpitch;        /* floats per channel in X: the grid plus the last block's overrun */
    long ypitch;        /* floats per channel in Y / dY: g images, rounded up to QBLOCK */
    size_t x_floats, y_floats, part_floats, slice_floats;
} direct_geom;

static size_t round16(size_t n) { return (n + 15) / 16 * 16; }

static int team_threads(void) {
    const int t = omp_in_parallel() ? 1 : omp_get_max_threads();
    return t > 1 ? t : 1;
}

int msq_conv2d_direct_eligible(const msq_conv2d_shape *s) {
    return s->kh == 3 && s->kw == 3 && s->stride_h == 1 && s->stride_w == 1 && s->pad_h == 1 &&
           s->pad_w == 1 && s->groups == 1 && s->c_in <= MSQ_DIRECT_MAX_CHANNELS &&
           s->c_out <= MSQ_DIRECT_MAX_CHANNELS;
}

static direct_geom direct_geometry(const msq_conv2d_shape *s) {
    direct_geom G;
    G.pitch = s->w_in + 1;
    G.image_cells = (long)(s->h_in + 1) * G.pitch;
    const size_t per_image = (size_t)(s->c_in + s->c_out) * G.image_cells * sizeof(float);
    long g = (long)(MSQ_DIRECT_GROUP_BYTES / per_image);
    const long threads = omp_get_max_threads() > 1 ? omp_get_max_threads() : 1;
    const long fair = (s->n + threads - 1) / threads; /* every thread gets a group */
    if (g > fair) g = fair;
    if (g < 1) g = 1;
    G.g = (int)g;
    G.ypitch = (long)round16((size_t)(G.g * G.image_cells));
    /* Reads reach ypitch - 1 + 2 * P + 2 past the grid's first row. */
    G.xpitch = (long)round16((size_t)(G.ypitch + 3 * G.pitch + 2));
    G.x_floats = (size_t)s->c_in * G.xpitch;
    G.y_floats = (size_t)s->c_out * G.ypitch;
    G.part_floats = round16((size_t)s->c_out * s->c_in * 9 + (size_t)s->c_out);
    G.slice_floats = G.x_floats + G.y_floats + G.part_floats;
    return G;
}

size_t msq_conv2d_direct_workspace_size(const msq_conv2d_shape *s) {
    const size_t threads = (size_t)(omp_get_max_threads() > 1 ? omp_get_max_threads() : 1);
    return threads * direct_geometry(s).slice_floats * sizeof(float);
}

/* Images b0 ... b0 + count - 1 of src[n, c, h, w] into the grid interiors of dst[c][pitch]
   at row offset `top` (1 for X, whose first grid row is padding; 0 for dY). */
static void to_grid(float *dst, long pitch, const float *src, const msq_conv2d_shape *s, int c,
                    int b0, int count, const direct_geom *G, int top) {
    const int h = s->h_in, w = s->w_in;
    for (int ch = 0; ch < c; ch++)
        for (int i = 0; i < count; i++)
            for (int y = 0; y < h; y++) {
                const float *restrict from = src + (((size_t)(b0 + i) * c + ch) * h + y) * w;
                float *restrict to = dst + (size_t)ch * pitch + (i * G->image_cells) +
                                     (long)(top + y) * G->pitch + top;
                for (int x = 0; x < w; x++) to[x] = from[x];
            }
}

/* Y[co][0, cells) for output channels [co, co + 4) (rows = 4) or one channel (rows = 1). */
static void forward_block(float *yb, const float *xg, const float *w, int rows, int c_in,
                          const direct_geom *G, long cells) {
    const long P = G->pitch, xp = G->xpitch, yp = G->ypitch;
    const size_t wrow = (size_t)c_in * 9;
    long q = 0;
#if defined(__AVX2__)
    if (rows == 4)
        for (; q + QBLOCK <= cells; q += QBLOCK) {
            __m256 a00 = _mm256_setzero_ps(), a01 = a00, a10 = a00, a11 = a00;
            __m256 a20 = a00, a21 = a00, a30 = a00, a31 = a00;
            const float *w0 = w, *w1 = w + wrow, *w2 = w + 2 * wrow, *w3 = w + 3 * wrow;
            for (int ci = 0; ci < c_in; ci++)
                for (int ky = 0; ky < 3; ky++)
                    for (int kx = 0; kx < 3; kx++) {
                        const float *xr = xg + (size_t)ci * xp + q + ky * P + kx;
                        const int tap = ci * 9 + ky * 3 + kx;
                        const __m256 x0 = _mm256_loadu_ps(xr), x1 = _mm256_loadu_ps(xr + 8);
                        __m256 b = _mm256_broadcast_ss(w0 + tap);
                        a00 = _mm256_fmadd_ps(b, x0, a00); a01 = _mm256_fmadd_ps(b, x1, a01);
                        b = _mm256_broadcast_ss(w1 + tap);
                        a10 = _mm256_fmadd_ps(b, x0, a10); a11 = _mm256_fmadd_ps(b, x1, a11);
                        b = _mm256_broadcast_ss(w2 + tap);
                        a20 = _mm256_fmadd_ps(b, x0, a20); a21 = _mm256_fmadd_ps(b, x1, a21);
                        b = _mm256_broadcast_ss(w3 + tap);
                        a30 = _mm256_fmadd_ps(b, x0, a30); a31 = _mm256_fmadd_ps(b, x1, a31);
                    }
            float *o = yb + q;
            _mm256_storeu_ps(o, a00); _mm256_storeu_ps(o + 8, a01); o += yp;
            _mm256_storeu_ps(o, a10); _mm256_storeu_ps(o + 8, a11); o += yp;
            _mm256_storeu_ps(o, a20); _mm256_storeu_ps(o + 8, a21); o += yp;
            _mm256_storeu_ps(o, a30); _mm256_storeu_ps(o + 8, a31);
        }
#endif
    /* Single channels, and everything without AVX2: the same sums in the same order. */
    for (int r = 0; r < rows; r++) {
        const float *wr = w + (size_t)r * wrow;
        float *o = yb + (size_t)r * yp;
        for (long p = q; p < cells; p++) o[p] = 0.0f;
        for (int ci = 0; ci < c_in; ci++)
            for (int ky = 0; ky < 3; ky++)
                for (int kx = 0; kx < 3; kx++) {
                    const float wv = wr[ci * 9 + ky * 3 + kx];
                    const float *xr = xg + (size_t)ci * xp + ky * P + kx;
                    for (long p = q; p < cells; p++) o[p] += wv * xr[p];
                }
    }
}

void msq_conv2d_direct_forward(float *y, const float *x, const float *w, const float *bias,
                               const msq_conv2d_shape *s, void *workspace, int accumulate) {
    const direct_geom G = direct_geometry(s);
    float *owned, *ws = msq_conv_workspace_or_alloc(workspace, msq_conv2d_direct_workspace_size(s), &owned);
    if (!ws) { /* out of memory: slow but correct */
        msq_conv2d_forward_fallback(y, x, w, bias, s, accumulate);
        return;
    }
    const int groups = (s->n + G.g - 1) / G.g, h = s->h_in, wd = s->w_in;
    const size_t plane = (size_t)h * wd;
    #pragma omp parallel num_threads(team_threads())
    {
        float *xg = ws + (size_t)omp_get_thread_num() * G.slice_floats, *yg = xg + G.x_floats;
        memset(xg, 0, G.x_floats * sizeof(float)); /* padding cells stay zero from here on */
        #pragma omp for schedule(static)
        for (int gi = 0; gi < groups; gi++) {
            const int b0 = gi * G.g, count = s->n - b0 < G.g ? s->n - b0 : G.g;
            to_grid(xg, G.xpitch, x, s, s->c_in, b0, count, &G, 1);
            const long cells = count * G.image_cells;
            int co = 0;
            for (; co + 4 <= s->c_out; co += 4)
                forward_block(yg + (size_t)co * G.ypitch, xg, w + (size_t)co * s->c_in * 9, 4, s->c_in, &G, cells);
            for (; co < s->c_out; co++)
                forward_block(yg + (size_t)co * G.ypitch, xg, w + (size_t)co * s->c_in * 9, 1, s->c_in, &G, cells);
            for (int c = 0; c < s->c_out; c++) {
                const float bv = (bias && !accumulate) ? bias[c] : 0.0f;
                for (int i = 0; i < count; i++) {
                    float *restrict dst = y + ((size_t)(b0 + i) * s->c_out + c) * plane;
                    const float *restrict src = yg + (size_t)c * G.ypitch + i * G.image_cells;
                    for (int r = 0; r < h; r++, dst += wd, src += G.pitch)
                        if (accumulate) for (int j = 0; j < wd; j++) dst[j] += src[j];
                        else            for (int j = 0; j < wd; j++) dst[j] = src[j] + bv;
                }
            }
        }
    }
    free(owned);
}

#if defined(__AVX2__)
static inline float hsum8(__m256 v) {
    __m128 a = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    a = _mm_add_ps(a, _mm_movehl_ps(a, a));
    a = _mm_add_ss(a, _mm_movehdup_ps(a));
    return _mm_cvtss_f32(a);
}
#endif

/* dw[co + r][ci][ky][0..2] += Σ_q dY[co + r, q] · X[ci, q + ky·P + kx] for r < rows (4 or 1). */
static void weight_block(float *dw, const float *dyg, const float *xrow, int rows, int c_in,
                         const direct_geom *G, long cells) {
    const long yp = G->ypitch;
    const size_t wrow = (size_t)c_in * 9;
    long q = 0;
#if defined(__AVX2__)
    if (rows == 4) {
        __m256 a00 = _mm256_setzero_ps(), a01 = a00, a02 = a00, a10 = a00, a11 = a00, a12 = a00;
        __m256 a20 = a00, a21 = a00, a22 = a00, a30 = a00, a31 = a00, a32 = a00;
        const float *d0 = dyg, *d1 = d0 + yp, *d2 = d1 + yp, *d3 = d2 + yp;
        for (; q + 8 <= cells; q += 8) {
            const __m256 x0 = _mm256_loadu_ps(xrow + q), x1 = _mm256_loadu_ps(xrow + q + 1),
                         x2 = _mm256_loadu_ps(xrow + q + 2);
            __m256 d = _mm256_loadu_ps(d0 + q);
            a00 = _mm256_fmadd_ps(d, x0, a00); a01 = _mm256_fmadd_ps(d, x1, a01); a02 = _mm256_fmadd_ps(d, x2, a02);
            d = _mm256_loadu_ps(d1 + q);
            a10 = _mm256_fmadd_ps(d, x0, a10); a11 = _mm256_fmadd_ps(d, x1, a11); a12 = _mm256_fmadd_ps(d, x2, a12);
            d = _mm256_loadu_ps(d2 + q);
            a20 = _mm256_fmadd_ps(d, x0, a20); a21 = _mm256_fmadd_ps(d, x1, a21); a22 = _mm256_fmadd_ps(d, x2, a22);
            d = _mm256_loadu_ps(d3 + q);
            a30 = _mm256_fmadd_ps(d, x0, a30); a31 = _mm256_fmadd_ps(d, x1, a31); a32 = _mm256_fmadd_ps(d, x2, a32);
        }
        dw[0] += hsum8(a00); dw[1] += hsum8(a01); dw[2] += hsum8(a02); dw += wrow;
        dw[0] += hsum8(a10); dw[1] += hsum8(a11); dw[2] += hsum8(a12); dw += wrow;
        dw[0] += hsum8(a20); dw[1] += hsum8(a21); dw[2] += hsum8(a22); dw += wrow;
        dw[0] += hsum8(a30); dw[1] += hsum8(a31); dw[2] += hsum8(a32);
        dw -= 3 * wrow;
    }
#endif
    if (q == cells) return; /* the caller's cell counts are whole vectors: nothing left */
    /* The cells past the last full vector, single channels, and everything without AVX2. */
    for (int r = 0; r < rows; r++) {
        const float *d = dyg + (size_t)r * yp;
        for (int kx = 0; kx < 3; kx++) {
            float acc = 0.0f;
            for (long p = q; p < cells; p++) acc += d[p] * xrow[p + kx];
            dw[(size_t)r * wrow + kx] += acc;
        }
    }
}

void msq_conv2d_direct_backward_weight(float *dw, float *dbias, const float *dy, const float *x,
                                       const msq_conv2d_shape *s, void *workspace) {
    const direct_geom G = direct_geometry(s);
    float *owned, *ws = msq_conv_workspace_or_alloc(workspace, msq_conv2d_direct_workspace_size(s), &owned);
    if (!ws) { /* out of memory: slow but correct */
        msq_conv2d_backward_weight_ref(dw, dbias, dy, x, s, NULL);
        return;
    }
    const int groups = (s->n + G.g - 1) / G.g, team = team_threads();
    const size_t wcount = (size_t)s->c_out * s->c_in * 9;
    #pragma omp parallel num_threads(team)
    {
        float *xg = ws + (size_t)omp_get_thread_num() * G.slice_floats, *dyg = xg + G.x_floats;
        float *pdw = dyg + G.y_floats, *pdb = pdw + wcount;
        memset(xg, 0, (G.x_floats + G.y_floats + G.part_floats) * sizeof(float));
        #pragma omp for schedule(static)
        for (int gi = 0; gi < groups; gi++) {
            const int b0 = gi * G.g, count = s->n - b0 < G.g ? s->n - b0 : G.g;
            const long cells = count * G.image_cells, used = (long)round16((size_t)cells);
            to_grid(xg, G.xpitch, x, s, s->c_in, b0, count, &G, 1);
            to_grid(dyg, G.ypitch, dy, s, s->c_out, b0, count, &G, 0);
            /* A short last group leaves an earlier group's gradient in cells [cells, used). */
            for (int co = 0; co < s->c_out; co++)
                memset(dyg + (size_t)co * G.ypitch + cells, 0, (size_t)(used - cells) * sizeof(float));
            if (dbias)
                for (int co = 0; co < s->c_out; co++) {
                    const float *d = dyg + (size_t)co * G.ypitch;
                    float acc = 0.0f;
                    for (long p = 0; p < cells; p++) acc += d[p];
                    pdb[co] += acc;
                }
            for (int ci = 0; ci < s->c_in; ci++)
                for (int ky = 0; ky < 3; ky++) {
                    const float *xrow = xg + (size_t)ci * G.xpitch + (long)ky * G.pitch;
                    float *dwk = pdw + (size_t)ci * 9 + ky * 3;
                    int co = 0;
                    for (; co + 4 <= s->c_out; co += 4)
                        weight_block(dwk + (size_t)co * s->c_in * 9, dyg + (size_t)co * G.ypitch, xrow, 4,
                                     s->c_in, &G, used);
                    for (; co < s->c_out; co++)
                        weight_block(dwk + (size_t)co * s->c_in * 9, dyg + (size_t)co * G.ypitch, xrow, 1,
                                     s->c_in, &G, used);
                }
        }
    }
    /* Partials in thread order: a fixed sum for a given thread count. */
    for (size_t i = 0; i < wcount; i++) {
        float acc = 0.0f;
        for (int t = 0; t < team; t++) acc += ws[(size_t)t * G.slice_floats + G.x_floats + G.y_floats + i];
        dw[i] += acc;
    }
    if (dbias)
        for (int co = 0; co < s->c_out; co++) {
            float acc = 0.0f;
            for (int t = 0; t < team; t++)
                acc += ws[(size_t)t * G.slice_floats + G.x_floats + G.y_floats + wcount + co];
            dbias[co] += acc;
        }
    free(owned);
}
