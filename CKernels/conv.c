/* conv.c — 2-D convolution (NCHW input, OIHW weights, any kernel/stride/padding/groups). */
#include "msq_kernels.h"
#include <stdlib.h>
#include <string.h>
#include <omp.h>

int msq_conv2d_make_shape(msq_conv2d_shape *s, int n, int c_in, int h_in, int w_in, int c_out,
                          int kh, int kw, int stride, int pad, int groups) {
    if (!s) return -1;
    if (n <= 0 || c_in <= 0 || h_in <= 0 || w_in <= 0 || c_out <= 0) return -1;
    if (kh <= 0 || kw <= 0 || stride <= 0 || pad < 0 || groups <= 0) return -1;
    if (c_in % groups != 0 || c_out % groups != 0) return -1;
    if (h_in + 2 * pad < kh || w_in + 2 * pad < kw) return -1;
    s->n = n; s->c_in = c_in; s->h_in = h_in; s->w_in = w_in;
    s->c_out = c_out; s->kh = kh; s->kw = kw;
    s->stride_h = stride; s->stride_w = stride; s->pad_h = pad; s->pad_w = pad; s->groups = groups;
    s->h_out = (h_in + 2 * pad - kh) / stride + 1;
    s->w_out = (w_in + 2 * pad - kw) / stride + 1;
    return 0;
}

/* ================================================================ reference kernels
   Plain loops, one thread, double accumulators: the oracle the fast kernels are tested
   against. Each output element is computed as one sum and added once, so the backward
   twins also gather rather than scatter. */

/* y[n,c_out,h_out,w_out] = bias[c_out] + sum over (ci in group, i, j) of
   x[n, g*cin_g+ci, oh*sh-ph+i, ow*sw-pw+j] * w[co, ci, i, j]. */
void msq_conv2d_forward_ref(float *y, const float *x, const float *w, const float *bias,
                            const msq_conv2d_shape *s, void *workspace) {
    (void)workspace;
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
                                const float xv = x[(((size_t)b * s->c_in + g * cin_g + ci) * s->h_in + ih) * s->w_in + iw];
                                const float wv = w[(((size_t)co * cin_g + ci) * s->kh + i) * s->kw + j];
                                acc += (double)xv * (double)wv;
                            }
                        }
                    y[(((size_t)b * s->c_out + co) * s->h_out + oh) * s->w_out + ow] = (float)acc;
                }
        }
}

/* dx[n,c_in,h_in,w_in] += sum over (co in group, i, j) with ih = oh*sh-ph+i, iw = ow*sw-pw+j
   of dy[n,co,oh,ow] * w[co, ci, i, j]. */
void msq_conv2d_backward_input_ref(float *dx, const float *dy, const float *w,
                                   const msq_conv2d_shape *s, void *workspace) {
    (void)workspace;
    const int cin_g = s->c_in / s->groups, cout_g = s->c_out / s->groups;
    for (int b = 0; b < s->n; b++)
        for (int c = 0; c < s->c_in; c++) {
            const int g = c / cin_g, ci = c % cin_g;
            for (int ih = 0; ih < s->h_in; ih++)
                for (int iw = 0; iw < s->w_in; iw++) {
                    double acc = 0.0;
                    for (int co = g * cout_g; co < (g + 1) * cout_g; co++)
                        for (int i = 0; i < s->kh; i++) {
                            const int th = ih + s->pad_h - i;
                            if (th < 0 || th % s->stride_h != 0) continue;
                            const int oh = th / s->stride_h;
                            if (oh >= s->h_out) continue;
                            for (int j = 0; j < s->kw; j++) {
                                const int tw = iw + s->pad_w - j;
                                if (tw < 0 || tw % s->stride_w != 0) continue;
                                const int ow = tw / s->stride_w;
                                if (ow >= s->w_out) continue;
                                const float gv = dy[(((size_t)b * s->c_out + co) * s->h_out + oh) * s->w_out + ow];
                                const float wv = w[(((size_t)co * cin_g + ci) * s->kh + i) * s->kw + j];
                                acc += (double)gv * (double)wv;
                            }
                        }
                    dx[(((size_t)b * s->c_in + c) * s->h_in + ih) * s->w_in + iw] += (float)acc;
                }
        }
}

/* dw[co,ci,i,j] += sum over (n, oh, ow) of dy[n,co,oh,ow] * x[n, g*cin_g+ci, ih, iw];
   dbias[co] += sum over (n, oh, ow) of dy[n,co,oh,ow]. */
void msq_conv2d_backward_weight_ref(float *dw, float *dbias, const float *dy, const float *x,
                                    const msq_conv2d_shape *s, void *workspace) {
    (void)workspace;
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
                                const float gv = dy[(((size_t)b * s->c_out + co) * s->h_out + oh) * s->w_out + ow];
                                const float xv = x[(((size_t)b * s->c_in + g * cin_g + ci) * s->h_in + ih) * s->w_in + iw];
                                acc += (double)gv * (double)xv;
                            }
                        }
                    dw[(((size_t)co * cin_g + ci) * s->kh + i) * s->kw + j] += (float)acc;
                }
        if (dbias) {
            double acc = 0.0;
            const size_t plane = (size_t)s->h_out * s->w_out;
            for (int b = 0; b < s->n; b++)
                for (size_t p = 0; p < plane; p++) acc += (double)dy[((size_t)b * s->c_out + co) * plane + p];
            dbias[co] += (float)acc;
        }
    }
}

/* ================================================================ fast kernels
   im2col + one GEMM per (image, group). The column matrix of one group of one image is
   col[cin_g*kh*kw, h_out*w_out]; then y_g = w_g * col, col = w_g^T * dy_g (then col2im), and
   dw_g += dy_g * col^T. A 1x1 stride-1 unpadded conv needs no col: the input planes are it. */

typedef struct conv_geom {
    int cin_g, cout_g, kdim;     /* kdim = cin_g * kh * kw: rows of col, columns of w_g */
    size_t plane_in, plane_out;  /* h_in*w_in, h_out*w_out */
    int direct;                  /* 1x1, stride 1, pad 0 */
    size_t col_floats, dw_floats, db_floats, slice_floats; /* per-thread workspace layout */
} conv_geom;

/* Whole cache lines per slice part so neighbouring threads never share one. */
static size_t round_floats(size_t n) { return (n + 15) / 16 * 16; }

static conv_geom conv_geometry(const msq_conv2d_shape *s) {
    conv_geom G;
    G.cin_g = s->c_in / s->groups;
    G.cout_g = s->c_out / s->groups;
    G.kdim = G.cin_g * s->kh * s->kw;
    G.plane_in = (size_t)s->h_in * s->w_in;
    G.plane_out = (size_t)s->h_out * s->w_out;
    G.direct = s->kh == 1 && s->kw == 1 && s->stride_h == 1 && s->stride_w == 1 &&
               s->pad_h == 0 && s->pad_w == 0;
    G.col_floats = G.direct ? 0 : round_floats((size_t)G.kdim * G.plane_out);
    G.dw_floats = round_floats((size_t)s->c_out * G.kdim);
    G.db_floats = round_floats((size_t)s->c_out);
    G.slice_floats = G.col_floats + G.dw_floats + G.db_floats;
    return G;
}

size_t msq_conv2d_workspace_size(const msq_conv2d_shape *s) {
    const conv_geom G = conv_geometry(s);
    int threads = omp_get_max_threads();
    if (threads < 1) threads = 1;
    return (size_t)threads * G.slice_floats * sizeof(float);
}

/* Caller's workspace, or a private one sized for the current thread count. */
static float *workspace_or_alloc(void *workspace, const msq_conv2d_shape *s, float **owned) {
    *owned = NULL;
    if (workspace) return (float *)workspace;
    size_t bytes = msq_conv2d_workspace_size(s);
    bytes = (bytes + 63) / 64 * 64; /* aligned_alloc wants a multiple of the alignment */
    if (bytes == 0) bytes = 64;
    *owned = aligned_alloc(64, bytes);
    return *owned;
}

static inline int imin(int a, int b) { return a < b ? a : b; }
static inline int imax(int a, int b) { return a > b ? a : b; }

/* Output columns ow whose input column ow*sw - pw + j lies inside [0, w_in): [*lo, *hi). */
static inline void valid_ow(const msq_conv2d_shape *s, int j, int *lo, int *hi) {
    const int off = s->pad_w - j; /* iw = ow*sw - off */
    int l = off > 0 ? (off + s->stride_w - 1) / s->stride_w : 0;
    int h = s->w_in - 1 + off >= 0 ? (s->w_in - 1 + off) / s->stride_w + 1 : 0;
    l = imin(l, s->w_out);
    h = imax(imin(h, s->w_out), l);
    *lo = l; *hi = h;
}

/* col[c*kh*kw + i*kw + j, oh*w_out + ow] = x[c, oh*sh-ph+i, ow*sw-pw+j] (0 in the padding).
   One output row at a time so the innermost loop runs along contiguous memory. */
static void im2col(float *restrict col, const float *restrict x, int channels,
                   const msq_conv2d_shape *s) {
    const int H = s->h_in, W = s->w_in, OH = s->h_out, OW = s->w_out, sw = s->stride_w;
    for (int c = 0; c < channels; c++) {
        const float *xc = x + (size_t)c * H * W;
        for (int i = 0; i < s->kh; i++)
            for (int j = 0; j < s->kw; j++) {
                int lo, hi;
                valid_ow(s, j, &lo, &hi);
                const int shift = j - s->pad_w;
                for (int oh = 0; oh < OH; oh++, col += OW) {
                    const int ih = oh * s->stride_h - s->pad_h + i;
                    if (ih < 0 || ih >= H) {
                        memset(col, 0, (size_t)OW * sizeof(float));
                        continue;
                    }
                    const float *src = xc + (size_t)ih * W + shift;
                    for (int ow = 0; ow < lo; ow++) col[ow] = 0.0f;
                    if (sw == 1) {
                        memcpy(col + lo, src + lo, (size_t)(hi - lo) * sizeof(float));
                    } else {
                        for (int ow = lo; ow < hi; ow++) col[ow] = src[(size_t)ow * sw];
                    }
                    for (int ow = hi; ow < OW; ow++) col[ow] = 0.0f;
                }
            }
    }
}

/* x[c, ih, iw] += every col entry im2col would have read from there (padding dropped). */
static void col2im_add(float *restrict x, const float *restrict col, int channels,
                       const msq_conv2d_shape *s) {
    const int H = s->h_in, W = s->w_in, OH = s->h_out, OW = s->w_out, sw = s->stride_w;
    for (int c = 0; c < channels; c++) {
        float *xc = x + (size_t)c * H * W;
        for (int i = 0; i < s->kh; i++)
            for (int j = 0; j < s->kw; j++) {
                int lo, hi;
                valid_ow(s, j, &lo, &hi);
                const int shift = j - s->pad_w;
                for (int oh = 0; oh < OH; oh++, col += OW) {
                    const int ih = oh * s->stride_h - s->pad_h + i;
                    if (ih < 0 || ih >= H) continue;
                    float *dst = xc + (size_t)ih * W + shift;
                    if (sw == 1) {
                        for (int ow = lo; ow < hi; ow++) dst[ow] += col[ow];
                    } else {
                        for (int ow = lo; ow < hi; ow++) dst[(size_t)ow * sw] += col[ow];
                    }
                }
            }
    }
}

/* One group of one image: y_g[cout_g, P] = w_g[cout_g, kdim] * col[kdim, P] (+ bias). */
static void forward_item(float *y, const float *x, const float *w, const float *bias,
                         const msq_conv2d_shape *s, const conv_geom *G, int b, int g, float *col) {
    const float *xg = x + ((size_t)b * s->c_in + (size_t)g * G->cin_g) * G->plane_in;
    float *yg = y + ((size_t)b * s->c_out + (size_t)g * G->cout_g) * G->plane_out;
    const float *wg = w + (size_t)g * G->cout_g * G->kdim;
    const float *cm = xg;
    if (!G->direct) {
        im2col(col, xg, G->cin_g, s);
        cm = col;
    }
    msq_gemm(yg, wg, cm, 0, 0, G->cout_g, (int)G->plane_out, G->kdim, 1.0f, 0.0f);
    if (bias)
        for (int o = 0; o < G->cout_g; o++) {
            const float bv = bias[g * G->cout_g + o];
            float *row = yg + (size_t)o * G->plane_out;
            for (size_t p = 0; p < G->plane_out; p++) row[p] += bv;
        }
}

/* x[n,c_in,h_in,w_in], w[c_out,c_in/groups,kh,kw], bias[c_out] or NULL -> y[n,c_out,h_out,w_out]. */
void msq_conv2d_forward(float *y, const float *x, const float *w, const float *bias,
                        const msq_conv2d_shape *s, void *workspace) {
    const conv_geom G = conv_geometry(s);
    float *owned, *ws = workspace_or_alloc(workspace, s, &owned);
    const long items = (long)s->n * s->groups;
    const int threads = omp_in_parallel() ? 1 : omp_get_max_threads();
    if (threads > 1 && items > 1) {
        /* Items write disjoint slices of y, so any schedule gives the same bits. */
        #pragma omp parallel for schedule(static) num_threads((int)(items < threads ? items : threads))
        for (long it = 0; it < items; it++)
            forward_item(y, x, w, bias, s, &G, (int)(it / s->groups), (int)(it % s->groups),
                         ws + (size_t)omp_get_thread_num() * G.slice_floats);
    } else {
        /* One item (or one thread): msq_gemm may still split the GEMM itself. */
        for (long it = 0; it < items; it++)
            forward_item(y, x, w, bias, s, &G, (int)(it / s->groups), (int)(it % s->groups), ws);
    }
    free(owned);
}

/* One group of one image: col[kdim, P] = w_g^T * dy_g[cout_g, P]; dx_g += col2im(col). */
static void backward_input_item(float *dx, const float *dy, const float *w,
                                const msq_conv2d_shape *s, const conv_geom *G, int b, int g,
                                float *col) {
    float *dxg = dx + ((size_t)b * s->c_in + (size_t)g * G->cin_g) * G->plane_in;
    const float *dyg = dy + ((size_t)b * s->c_out + (size_t)g * G->cout_g) * G->plane_out;
    const float *wg = w + (size_t)g * G->cout_g * G->kdim;
    if (G->direct) {
        msq_gemm(dxg, wg, dyg, 1, 0, G->kdim, (int)G->plane_out, G->cout_g, 1.0f, 1.0f);
    } else {
        msq_gemm(col, wg, dyg, 1, 0, G->kdim, (int)G->plane_out, G->cout_g, 1.0f, 0.0f);
        col2im_add(dxg, col, G->cin_g, s);
    }
}

/* dy[n,c_out,h_out,w_out], w[c_out,c_in/groups,kh,kw] -> dx[n,c_in,h_in,w_in] (accumulated). */
void msq_conv2d_backward_input(float *dx, const float *dy, const float *w,
                               const msq_conv2d_shape *s, void *workspace) {
    const conv_geom G = conv_geometry(s);
    float *owned, *ws = workspace_or_alloc(workspace, s, &owned);
    const long items = (long)s->n * s->groups;
    const int threads = omp_in_parallel() ? 1 : omp_get_max_threads();
    if (threads > 1 && items > 1) {
        /* Each (image, group) owns its slice of dx: no races, no order dependence. */
        #pragma omp parallel for schedule(static) num_threads((int)(items < threads ? items : threads))
        for (long it = 0; it < items; it++)
            backward_input_item(dx, dy, w, s, &G, (int)(it / s->groups), (int)(it % s->groups),
                                ws + (size_t)omp_get_thread_num() * G.slice_floats);
    } else {
        for (long it = 0; it < items; it++)
            backward_input_item(dx, dy, w, s, &G, (int)(it / s->groups), (int)(it % s->groups), ws);
    }
    free(owned);
}

/* Images [b0, b1) into dw[c_out, kdim] and dbias[c_out] (either accumulating). */
static void backward_weight_images(float *dw, float *dbias, const float *dy, const float *x,
                                   const msq_conv2d_shape *s, const conv_geom *G, int b0, int b1,
                                   float *col) {
    for (int b = b0; b < b1; b++)
        for (int g = 0; g < s->groups; g++) {
            const float *xg = x + ((size_t)b * s->c_in + (size_t)g * G->cin_g) * G->plane_in;
            const float *dyg = dy + ((size_t)b * s->c_out + (size_t)g * G->cout_g) * G->plane_out;
            const float *cm = xg;
            if (!G->direct) {
                im2col(col, xg, G->cin_g, s);
                cm = col;
            }
            /* dw_g[cout_g, kdim] += dy_g[cout_g, P] * col[kdim, P]^T */
            msq_gemm(dw + (size_t)g * G->cout_g * G->kdim, dyg, cm, 0, 1, G->cout_g, G->kdim,
                     (int)G->plane_out, 1.0f, 1.0f);
            if (dbias)
                for (int o = 0; o < G->cout_g; o++) {
                    const float *row = dyg + (size_t)o * G->plane_out;
                    float acc = 0.0f;
                    for (size_t p = 0; p < G->plane_out; p++) acc += row[p];
                    dbias[g * G->cout_g + o] += acc;
                }
        }
}

/* dy[n,c_out,h_out,w_out], x[n,c_in,h_in,w_in] -> dw[c_out,c_in/groups,kh,kw] and dbias[c_out]
   (both accumulated; dbias may be NULL). */
void msq_conv2d_backward_weight(float *dw, float *dbias, const float *dy, const float *x,
                                const msq_conv2d_shape *s, void *workspace) {
    const conv_geom G = conv_geometry(s);
    float *owned, *ws = workspace_or_alloc(workspace, s, &owned);
    const int threads = omp_in_parallel() ? 1 : omp_get_max_threads();
    const int chunks = imin(threads, s->n);
    if (chunks <= 1) {
        backward_weight_images(dw, dbias, dy, x, s, &G, 0, s->n, ws);
        free(owned);
        return;
    }
    /* Chunk c (a fixed range of images) sums into its own partial in slice c; the partials
       are then added in chunk order. The chunk boundaries depend only on n and the thread
       count, so the result is bit-identical run to run. */
    const size_t dw_count = (size_t)s->c_out * G.kdim;
    #pragma omp parallel for schedule(static) num_threads(chunks)
    for (int c = 0; c < chunks; c++) {
        float *slice = ws + (size_t)c * G.slice_floats;
        float *pdw = slice + G.col_floats, *pdb = pdw + G.dw_floats;
        memset(pdw, 0, dw_count * sizeof(float));
        memset(pdb, 0, (size_t)s->c_out * sizeof(float));
        const int b0 = (int)((long)s->n * c / chunks), b1 = (int)((long)s->n * (c + 1) / chunks);
        backward_weight_images(pdw, dbias ? pdb : NULL, dy, x, s, &G, b0, b1, slice);
    }
    #pragma omp parallel for schedule(static) num_threads(threads) if (dw_count > 4096)
    for (size_t i = 0; i < dw_count; i++) {
        float acc = ws[G.col_floats + i];
        for (int c = 1; c < chunks; c++) acc += ws[(size_t)c * G.slice_floats + G.col_floats + i];
        dw[i] += acc;
    }
    if (dbias)
        for (int o = 0; o < s->c_out; o++) {
            float acc = ws[G.col_floats + G.dw_floats + o];
            for (int c = 1; c < chunks; c++) acc += ws[(size_t)c * G.slice_floats + G.col_floats + G.dw_floats + o];
            dbias[o] += acc;
        }
    free(owned);
}
