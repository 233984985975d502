/* conv.c — 2-D convolution (NCHW input, OIHW weights, any kernel/stride/padding/groups): the
 * dispatcher msq_conv2d_forward / _backward_input / _backward_weight and its own im2col + SGEMM
 * kernels.
 *
 * The conv files are layered; each calls only into layers below it (and OpenBLAS), never back up:
 *   1. conv.c                  dispatcher: picks an algorithm per shape, sizes the workspace
 *   2. winograd_interleaved.c, winograd.c, direct.c, depthwise.c, im2col.c
 *                              the algorithms (im2col.c: column matrices for conv.c's SGEMM path;
 *                              depthwise.c dispatches to depthwise_channels.c where it applies)
 *   3. conv_common.c           shared helpers: shape maker, workspace allocation, Winograd weights
 *      conv_ref.c              the scalar _ref twins and the out-of-memory fallback
 * Declarations shared below the public header live in conv_internal.h. */
#include "msq_kernels.h"
#include "conv_internal.h"
#include <cblas.h>
#include <omp.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

/* ================================================================ fast kernels
   im2col + SGEMM over "bands". A band is either some output rows of one image (big planes)
   or several whole images (small planes); its column matrix col[kdim = cin_g*kh*kw, cols] is
   sized to stay in L2 while OpenBLAS packs it, and is large enough that re-packing the
   weights for every GEMM call stays cheap. Per band and group:
     forward          y[:, band] = w_g[cout_g, kdim] * col
     backward weight  dw_g += dy[:, band] * col^T
     backward input   stride 1 (when it pays): a forward conv of dy with the flipped,
                      transposed weights and padding k-1-p, accumulated straight into dx;
                      otherwise col = w_g^T * dy[:, band], then col2im adds it into dx.
   Multi-image bands gather dy / scatter y through a small tmp[cout_g, cols]. A 1x1
   stride-1 unpadded conv over big planes needs no col: the input planes already are it.
   Deep layers on small planes take the wide mode instead (see use_wide). 3x3 stride-1 layers
   take Winograd for the forward and backward input: on eight interleaved images
   (winograd_interleaved.c) when the batch fills its lanes, else by tile rows (winograd.c) when
   the layer is wide and deep enough; the direct kernels (direct.c) take the rest of the 3x3
   stride-1 layers with few channels. The backward weight of 3x3 stride-1 layers takes the
   interleaved Winograd where it applies, else the direct kernels where they apply.
   Workspace: [flipped weights | per thread: col | tmp | partial dw | partial dbias], or after the
   flipped weights, Winograd's, the direct kernels' or the wide mode's buffers when larger. */

/* Target size of one band's column matrix: half of a 512 KiB L2, leaving room for OpenBLAS's
   packed panels. Smaller bands re-pack the weights too often on small planes (measured on
   ResNet-20 shapes; 256-512 KiB were best, 64 KiB clearly worse). */
#ifndef MSQ_CONV_BAND_BYTES
#define MSQ_CONV_BAND_BYTES (256 * 1024)
#endif

/* Fewest columns per band when the batch allows. Each band's GEMM packs the whole weight
   matrix [cout_g, kdim] again; with deep layers on small planes (ResNet-18's 512x4608 weights
   on 7x7 outputs) an L2-sized band is a handful of columns and the GEMM becomes a repacking
   of the weights. A few hundred columns amortise it; OpenBLAS blocks the larger col itself. */
#ifndef MSQ_CONV_MIN_COLS
#define MSQ_CONV_MIN_COLS 384
#endif

static inline int imin(int a, int b) { return a < b ? a : b; }

/* Start of part t of `rows` cut into `parts`, on 16-row boundaries (the GEMM micro-tile). */
static int split_rows(int rows, int parts, int t) {
    if (t >= parts) return rows;
    const int r = (int)((long)rows * t / parts / 16 * 16);
    return r > rows ? rows : r;
}
static inline int imax(int a, int b) { return a > b ? a : b; }

/* Whole cache lines per workspace part so neighbouring threads never share one. */
static size_t round_floats(size_t n) { return (n + 15) / 16 * 16; }

static int unit_stride(const msq_conv2d_shape *s) { return s->stride_h == 1 && s->stride_w == 1; }

typedef struct conv_geom {
    int cin_g, cout_g, kdim;  /* kdim = cin_g * kh * kw: rows of col, columns of w_g */
    int plane_out;            /* h_out * w_out: leading dimension of a y or dy plane */
    size_t plane_in;          /* h_in * w_in */
    int imgs;                 /* images per band; > 1 only when bands hold whole images */
    int band_rows, row_bands; /* output rows per band, bands per image (1 when imgs > 1) */
    long bands;               /* bands in the batch */
    int band_cols;            /* most columns in one band */
    int direct;               /* 1x1, stride 1, pad 0, one image per band: no col needed */
    size_t col_floats, tmp_floats;
} conv_geom;

/* Depends on the shape and the thread count only, so results are reproducible for both. */
static conv_geom conv_geometry(const msq_conv2d_shape *s) {
    conv_geom G;
    const int threads = imax(1, omp_get_max_threads());
    G.cin_g = s->c_in / s->groups;
    G.cout_g = s->c_out / s->groups;
    G.kdim = G.cin_g * s->kh * s->kw;
    G.plane_in = (size_t)s->h_in * s->w_in;
    G.plane_out = s->h_out * s->w_out;
    const size_t row_bytes = (size_t)G.kdim * s->w_out * sizeof(float);
    const size_t img_bytes = row_bytes * s->h_out;
    size_t band_bytes = (size_t)G.kdim * MSQ_CONV_MIN_COLS * sizeof(float);
    if (band_bytes < MSQ_CONV_BAND_BYTES) band_bytes = MSQ_CONV_BAND_BYTES;
    /* Enough bands to keep every thread busy, as far as the batch allows. */
    const int per_thread = (s->n + threads - 1) / threads;
    if (img_bytes < band_bytes && per_thread > 1) {
        const int max_imgs = imin(per_thread, (int)(band_bytes / img_bytes));
        const int nb = (s->n + max_imgs - 1) / max_imgs;
        G.imgs = (s->n + nb - 1) / nb; /* equal bands: a short last one is a skinny GEMM */
        G.band_rows = s->h_out;
        G.row_bands = 1;
        G.bands = (s->n + G.imgs - 1) / G.imgs;
    } else {
        int max_rows = imin(s->h_out, imax(1, (int)(band_bytes / row_bytes)));
        if (s->n < threads) /* a small batch: split images too, so every thread has a band */
            max_rows = imin(max_rows, imax(1, s->h_out / ((threads + s->n - 1) / s->n)));
        G.imgs = 1;
        G.row_bands = (s->h_out + max_rows - 1) / max_rows;
        G.band_rows = (s->h_out + G.row_bands - 1) / G.row_bands;
        G.bands = (long)s->n * G.row_bands;
    }
    G.band_cols = G.imgs * G.band_rows * s->w_out;
    G.direct = G.imgs == 1 && s->kh == 1 && s->kw == 1 && unit_stride(s) &&
               s->pad_h == 0 && s->pad_w == 0;
    /* Reserved even for direct 1x1 forward: backward_input may still take the col2im route. */
    G.col_floats = round_floats((size_t)G.kdim * G.band_cols);
    G.tmp_floats = G.imgs > 1 ? round_floats((size_t)G.cout_g * G.band_cols) : 0;
    return G;
}

typedef struct conv_band {
    int b0, b1, oh0, oh1; /* images [b0, b1), output rows [oh0, oh1) of each */
    int cols_img, cols;   /* columns per image, in all */
} conv_band;

static conv_band band_at(const msq_conv2d_shape *s, const conv_geom *G, long k) {
    conv_band B;
    if (G->imgs > 1) {
        B.b0 = (int)(k * G->imgs);
        B.b1 = imin(s->n, B.b0 + G->imgs);
        B.oh0 = 0;
        B.oh1 = s->h_out;
    } else {
        B.b0 = (int)(k / G->row_bands);
        B.b1 = B.b0 + 1;
        B.oh0 = (int)(k % G->row_bands) * G->band_rows;
        B.oh1 = imin(B.oh0 + G->band_rows, s->h_out);
    }
    B.cols_img = (B.oh1 - B.oh0) * s->w_out;
    B.cols = (B.b1 - B.b0) * B.cols_img;
    return B;
}

/* The stride-1 backward-input conv: dy is its input, dx its output, padding k-1-p (negative
   padding, when p >= k, just crops; im2col handles it). */
static msq_conv2d_shape transposed_shape(const msq_conv2d_shape *s) {
    msq_conv2d_shape t = *s;
    t.c_in = s->c_out; t.h_in = s->h_out; t.w_in = s->w_out;
    t.c_out = s->c_in; t.h_out = s->h_in; t.w_out = s->w_in;
    t.pad_h = s->kh - 1 - s->pad_h; t.pad_w = s->kw - 1 - s->pad_w;
    return t;
}

/* The transposed conv turns the GEMM's M into cin_g; when that is much smaller than cout_g,
   the col2im route (M = kdim) is the better GEMM. */
static int use_transposed(const msq_conv2d_shape *s) {
    return unit_stride(s) && 2 * (s->c_in / s->groups) >= s->c_out / s->groups;
}

/* ---- wide mode: deep layers on small planes (ResNet-18's last stage) have more output channels
   than a thread has columns, and every band's GEMM repacks the whole, large weight matrix. There
   the team shares one column matrix of whole images and splits the GEMM by output channels. */

/* Most bytes of one wide chunk's column matrix. */
#define MSQ_CONV_WIDE_COL_BYTES (16u << 20)

static int use_wide(const msq_conv2d_shape *s) {
    const long threads = imax(1, omp_get_max_threads());
    const long cols = (long)s->n * s->h_out * s->w_out;
    const int direct = s->kh == 1 && s->kw == 1 && unit_stride(s) && s->pad_h == 0 && s->pad_w == 0;
    return threads > 1 && s->groups == 1 && !direct && cols / threads < s->c_out;
}

/* Whole images per wide chunk. */
static int wide_images(const msq_conv2d_shape *s) {
    const size_t img = (size_t)s->c_in * s->kh * s->kw * s->h_out * s->w_out * sizeof(float);
    int imgs = (int)(MSQ_CONV_WIDE_COL_BYTES / (img ? img : 1));
    return imgs < 1 ? 1 : (imgs > s->n ? s->n : imgs);
}

/* A wide chunk's buffers in its workspace: col [kdim, per * plane], then tmp [c_out, per * plane]. */
typedef struct wide_layout {
    int kdim, plane, per; /* rows of col, output pixels per image, images per chunk */
    float *col, *tmp;
    size_t floats;        /* both, cache-line rounded */
} wide_layout;

static wide_layout wide_layout_of(const msq_conv2d_shape *s, float *ws) {
    wide_layout L;
    L.kdim = s->c_in * s->kh * s->kw;
    L.plane = s->h_out * s->w_out;
    L.per = wide_images(s);
    const size_t cols = (size_t)L.per * L.plane, col_floats = round_floats((size_t)L.kdim * cols);
    L.col = ws;
    L.tmp = ws ? ws + col_floats : NULL;
    L.floats = col_floats + round_floats((size_t)s->c_out * cols);
    return L;
}

static size_t wide_floats(const msq_conv2d_shape *s) { return wide_layout_of(s, NULL).floats; }

/* Floats the Winograd or wide paths need for shape s (0 if neither applies). */
static size_t alternative_floats(const msq_conv2d_shape *s) {
    size_t f = 0;
    if (msq_conv2d_winograd_eligible(s)) f = msq_conv2d_winograd_workspace_size(s) / sizeof(float);
    if (msq_conv2d_winograd_interleaved_eligible(s) &&
        msq_conv2d_winograd_interleaved_workspace_size(s) / sizeof(float) > f)
        f = msq_conv2d_winograd_interleaved_workspace_size(s) / sizeof(float);
    if (msq_conv2d_direct_eligible(s) && msq_conv2d_direct_workspace_size(s) / sizeof(float) > f)
        f = msq_conv2d_direct_workspace_size(s) / sizeof(float);
    if (use_wide(s) && wide_floats(s) > f) f = wide_floats(s);
    return f;
}

typedef struct conv_workspace {
    size_t head_floats;  /* flipped weights, shared */
    size_t slice_floats; /* per thread */
    size_t scratch_floats, dw_floats; /* slice = scratch (col + tmp) | dw | dbias */
    size_t wino_floats;  /* after head, instead of the slices, when Winograd runs */
} conv_workspace;

static conv_workspace workspace_layout(const msq_conv2d_shape *s) {
    conv_workspace L;
    const size_t wcount = (size_t)s->c_out * (s->c_in / s->groups) * s->kh * s->kw;
    const conv_geom G = conv_geometry(s);
    L.scratch_floats = G.col_floats + G.tmp_floats;
    L.head_floats = 0;
    if (use_transposed(s)) {
        const msq_conv2d_shape t = transposed_shape(s);
        const conv_geom T = conv_geometry(&t);
        if (T.col_floats + T.tmp_floats > L.scratch_floats)
            L.scratch_floats = T.col_floats + T.tmp_floats;
        L.head_floats = round_floats(wcount);
    }
    L.dw_floats = round_floats(wcount);
    L.slice_floats = L.scratch_floats + L.dw_floats + round_floats((size_t)s->c_out);
    /* The alternatives to per-thread slices (Winograd, wide mode) for the forward conv and the
       transposed one of backward_input. */
    L.wino_floats = alternative_floats(s);
    if (use_transposed(s)) {
        const msq_conv2d_shape t = transposed_shape(s);
        const size_t tf = alternative_floats(&t);
        if (tf > L.wino_floats) L.wino_floats = tf;
    }
    return L;
}

size_t msq_conv2d_workspace_size(const msq_conv2d_shape *s) {
    if (msq_conv2d_depthwise_eligible(s)) return 0;  /* depthwise.c needs none */
    const conv_workspace L = workspace_layout(s);
    const size_t threads = (size_t)imax(1, omp_get_max_threads());
    const size_t body = threads * L.slice_floats > L.wino_floats ? threads * L.slice_floats : L.wino_floats;
    return (L.head_floats + body) * sizeof(float);
}

static float *workspace_or_alloc(void *workspace, const msq_conv2d_shape *s, float **owned) {
    return msq_conv_workspace_or_alloc(workspace, msq_conv2d_workspace_size(s), owned);
}

static inline const float *group_input(const float *x, const msq_conv2d_shape *s,
                                       const conv_geom *G, int b, int g) {
    return x + ((size_t)b * s->c_in + (size_t)g * G->cin_g) * G->plane_in;
}

static inline size_t group_output(const msq_conv2d_shape *s, const conv_geom *G, int b, int g) {
    return ((size_t)b * s->c_out + (size_t)g * G->cout_g) * G->plane_out;
}

/* The GEMM's [kdim, cols] operand for one band of group g: the input planes themselves
   (direct) or the band's column matrix built in col. */
static const float *band_matrix(const float *x, float *col, const msq_conv2d_shape *s,
                                const conv_geom *G, const conv_band *B, int g, int *ld) {
    if (G->direct) {
        *ld = G->plane_out;
        return group_input(x, s, G, B->b0, g) + (size_t)B->oh0 * s->w_out;
    }
    for (int b = B->b0; b < B->b1; b++)
        msq_im2col_rows(col + (size_t)(b - B->b0) * B->cols_img, (size_t)B->cols,
                    group_input(x, s, G, b, g), G->cin_g, s, B->oh0, B->oh1);
    *ld = B->cols;
    return col;
}

/* dy[:, band] of group g as a [cout_g, cols] matrix: in place for one image, else gathered. */
static const float *band_dy(const float *dy, float *tmp, const msq_conv2d_shape *s,
                            const conv_geom *G, const conv_band *B, int g, int *ld) {
    if (B->b1 - B->b0 == 1) {
        *ld = G->plane_out;
        return dy + group_output(s, G, B->b0, g) + (size_t)B->oh0 * s->w_out;
    }
    for (int o = 0; o < G->cout_g; o++)
        for (int b = B->b0; b < B->b1; b++)
            memcpy(tmp + (size_t)o * B->cols + (size_t)(b - B->b0) * B->cols_img,
                   dy + group_output(s, G, b, g) + (size_t)o * G->plane_out,
                   (size_t)B->cols_img * sizeof(float));
    *ld = B->cols;
    return tmp;
}

/* One output plane from a GEMM result row: dst[p] += src[p] when accumulating, else
   dst[p] = src[p] + bias_value. */
static inline void store_plane(float *restrict dst, const float *restrict src, int count, float bias_value,
                               int accumulate) {
    if (accumulate) {
        for (int p = 0; p < count; p++) dst[p] += src[p];
    } else {
        for (int p = 0; p < count; p++) dst[p] = src[p] + bias_value;
    }
}

/* One band of one group: y[:, band] (+)= w_g * col (+ bias). */
static void forward_item(float *y, const float *x, const float *w, const float *bias,
                         const msq_conv2d_shape *s, const conv_geom *G, long item, float *scratch,
                         int accumulate) {
    const int g = (int)(item % s->groups);
    const conv_band B = band_at(s, G, item / s->groups);
    float *col = scratch, *tmp = scratch + G->col_floats;
    const float *wg = w + (size_t)g * G->cout_g * G->kdim;
    int ld;
    const float *bm = band_matrix(x, col, s, G, &B, g, &ld);
    if (B.b1 - B.b0 == 1) {
        float *yb = y + group_output(s, G, B.b0, g) + (size_t)B.oh0 * s->w_out;
        float beta = accumulate ? 1.0f : 0.0f;
        if (bias && !accumulate) {
            /* Seeding y with the bias lets the GEMM add onto it: no second pass over y. */
            for (int o = 0; o < G->cout_g; o++) {
                const float bv = bias[g * G->cout_g + o];
                float *row = yb + (size_t)o * G->plane_out;
                for (int p = 0; p < B.cols; p++) row[p] = bv;
            }
            beta = 1.0f;
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, G->cout_g, B.cols, G->kdim, 1.0f,
                    wg, G->kdim, bm, ld, beta, yb, G->plane_out);
        return;
    }
    /* Several images: one GEMM into tmp, then each image's planes are copied out. */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, G->cout_g, B.cols, G->kdim, 1.0f,
                wg, G->kdim, bm, ld, 0.0f, tmp, B.cols);
    for (int b = B.b0; b < B.b1; b++)
        for (int o = 0; o < G->cout_g; o++)
            store_plane(y + group_output(s, G, b, g) + (size_t)o * G->plane_out,
                        tmp + (size_t)o * B.cols + (size_t)(b - B.b0) * B.cols_img, B.cols_img,
                        bias ? bias[g * G->cout_g + o] : 0.0f, accumulate);
}

/* y = conv(x, w) + bias, or y += conv(x, w) when accumulating (bias unused then). Bands write
   disjoint parts of y, so the schedule cannot change the bits. */
/* col[kdim, imgs * plane] for images [b0, b0 + imgs), one image per iteration (omp for inside a
   region, ending in its barrier). */
static void im2col_images(float *col, const float *x, const msq_conv2d_shape *s, int b0, int imgs) {
    const int plane = s->h_out * s->w_out;
    const size_t plane_in = (size_t)s->h_in * s->w_in;
    #pragma omp for schedule(static)
    for (int b = 0; b < imgs; b++)
        msq_im2col_rows(col + (size_t)b * plane, (size_t)imgs * plane, x + (size_t)(b0 + b) * s->c_in * plane_in,
                    s->c_in, s, 0, s->h_out);
}

/* Wide mode (see use_wide): per chunk of whole images, the team builds the column matrix
   (images split), computes tmp = w * col (output channels split, rows on 16-row boundaries),
   then copies tmp out to y (images split). Each element is computed by one sgemm call whose
   partition depends only on the shape and the thread count. */
static void forward_wide(float *y, const float *x, const float *w, const float *bias,
                         const msq_conv2d_shape *s, float *ws, int accumulate) {
    const wide_layout L = wide_layout_of(s, ws);
    const int kdim = L.kdim, plane = L.plane, per = L.per;
    float *col = L.col, *tmp = L.tmp;
    #pragma omp parallel num_threads(omp_get_max_threads())
    {
        const int nt = omp_get_num_threads();
        for (int b0 = 0; b0 < s->n; b0 += per) {
            const int imgs = imin(per, s->n - b0), cols = imgs * plane;
            im2col_images(col, x, s, b0, imgs);
            #pragma omp for schedule(static)
            for (int t = 0; t < nt; t++) {
                const int m0 = split_rows(s->c_out, nt, t), m1 = split_rows(s->c_out, nt, t + 1);
                if (m1 > m0)
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m1 - m0, cols, kdim, 1.0f,
                                w + (size_t)m0 * kdim, kdim, col, cols, 0.0f, tmp + (size_t)m0 * cols, cols);
            }
            #pragma omp for schedule(static)
            for (long bo = 0; bo < (long)imgs * s->c_out; bo++) {
                const int b = (int)(bo / s->c_out), o = (int)(bo % s->c_out);
                store_plane(y + ((size_t)(b0 + b) * s->c_out + o) * plane, tmp + (size_t)o * cols + (size_t)b * plane,
                            plane, bias ? bias[o] : 0.0f, accumulate);
            }
        }
    }
}

static void forward_core(float *y, const float *x, const float *w, const float *bias,
                         const msq_conv2d_shape *s, float *slices, size_t slice_floats,
                         int accumulate) {
    if (!omp_in_parallel() && use_wide(s)) {
        forward_wide(y, x, w, bias, s, slices, accumulate);
        return;
    }
    const conv_geom G = conv_geometry(s);
    const long items = G.bands * s->groups;
    const int team = msq_conv_team_size(items);
    #pragma omp parallel for schedule(static) num_threads(team) if (team > 1)
    for (long it = 0; it < items; it++)
        forward_item(y, x, w, bias, s, &G, it, slices + (size_t)omp_get_thread_num() * slice_floats,
                     accumulate);
}

/* x[n,c_in,h_in,w_in], w[c_out,c_in/groups,kh,kw], bias[c_out] or NULL
   -> y[n,c_out,h_out,w_out] (overwritten). */
void msq_conv2d_forward(float *y, const float *x, const float *w, const float *bias,
                        const msq_conv2d_shape *s, void *workspace) {
    if (msq_conv2d_depthwise_eligible(s)) {
        msq_conv2d_depthwise_forward(y, x, w, bias, s);
        return;
    }
    const conv_workspace L = workspace_layout(s);
    float *owned, *ws = workspace_or_alloc(workspace, s, &owned);
    if (!ws) { /* out of memory: slow but correct */
        msq_conv2d_forward_ref(y, x, w, bias, s, NULL);
        return;
    }
    if (msq_conv2d_winograd_interleaved_eligible(s))
        msq_conv2d_winograd_interleaved_forward(y, x, w, bias, s, ws + L.head_floats, 0);
    else if (msq_conv2d_winograd_eligible(s))
        msq_conv2d_winograd_forward(y, x, w, bias, s, ws + L.head_floats, 0);
    else if (msq_conv2d_direct_eligible(s))
        msq_conv2d_direct_forward(y, x, w, bias, s, ws + L.head_floats, 0);
    else
        forward_core(y, x, w, bias, s, ws + L.head_floats, L.slice_floats, 0);
    free(owned);
}

/* col2im route for one unit (a set of whole images, which owns its part of dx) and group g:
   per band, col = w_g^T * dy[:, band], then col2im adds it into dx. Bands of one image
   overlap in dx, so they run in order on one thread. */
static void backward_input_item(float *dx, const float *dy, const float *w,
                                const msq_conv2d_shape *s, const conv_geom *G, long item,
                                float *scratch) {
    const int g = (int)(item % s->groups);
    const long unit = item / s->groups;
    float *col = scratch, *tmp = scratch + G->col_floats;
    const float *wg = w + (size_t)g * G->cout_g * G->kdim;
    for (int r = 0; r < G->row_bands; r++) {
        const conv_band B = band_at(s, G, unit * G->row_bands + r);
        int ld;
        const float *dyb = band_dy(dy, tmp, s, G, &B, g, &ld);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, G->kdim, B.cols, G->cout_g, 1.0f,
                    wg, G->kdim, dyb, ld, 0.0f, col, B.cols);
        for (int b = B.b0; b < B.b1; b++)
            msq_col2im_rows_add(dx + ((size_t)b * s->c_in + (size_t)g * G->cin_g) * G->plane_in,
                            col + (size_t)(b - B.b0) * B.cols_img, (size_t)B.cols, G->cin_g, s,
                            B.oh0, B.oh1);
    }
}

/* Gathers dy of images [b0, b0 + imgs) into tmp[c_out, imgs * plane] (omp for inside a region). */
static void gather_dy_wide(float *tmp, const float *dy, const msq_conv2d_shape *s, int b0, int imgs) {
    const int plane = s->h_out * s->w_out, cols = imgs * plane;
    #pragma omp for schedule(static)
    for (long bo = 0; bo < (long)imgs * s->c_out; bo++) {
        const int b = (int)(bo / s->c_out), o = (int)(bo % s->c_out);
        memcpy(tmp + (size_t)o * cols + (size_t)b * plane, dy + ((size_t)(b0 + b) * s->c_out + o) * plane,
               (size_t)plane * sizeof(float));
    }
}

/* Wide mode of the col2im route: per chunk, tmp = dy, col = w^T * tmp with the kdim rows split
   over the team, then col2im per image. */
static void backward_input_wide(float *dx, const float *dy, const float *w, const msq_conv2d_shape *s,
                                float *ws) {
    const wide_layout L = wide_layout_of(s, ws);
    const int kdim = L.kdim, plane = L.plane, per = L.per;
    float *col = L.col, *tmp = L.tmp;
    #pragma omp parallel num_threads(omp_get_max_threads())
    {
        const int nt = omp_get_num_threads();
        for (int b0 = 0; b0 < s->n; b0 += per) {
            const int imgs = imin(per, s->n - b0), cols = imgs * plane;
            gather_dy_wide(tmp, dy, s, b0, imgs);
            #pragma omp for schedule(static)
            for (int t = 0; t < nt; t++) {
                const int k0 = split_rows(kdim, nt, t), k1 = split_rows(kdim, nt, t + 1);
                if (k1 > k0)
                    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, k1 - k0, cols, s->c_out, 1.0f,
                                w + k0, kdim, tmp, cols, 0.0f, col + (size_t)k0 * cols, cols);
            }
            #pragma omp for schedule(static)
            for (int b = 0; b < imgs; b++)
                msq_col2im_rows_add(dx + (size_t)(b0 + b) * s->c_in * s->h_in * s->w_in, col + (size_t)b * plane,
                                (size_t)cols, s->c_in, s, 0, s->h_out);
        }
    }
}

/* dy[n,c_out,h_out,w_out], w[c_out,c_in/groups,kh,kw] -> dx[n,c_in,h_in,w_in] (accumulated). */
void msq_conv2d_backward_input(float *dx, const float *dy, const float *w,
                               const msq_conv2d_shape *s, void *workspace) {
    if (msq_conv2d_depthwise_eligible(s)) {
        msq_conv2d_depthwise_backward_input(dx, dy, w, s);
        return;
    }
    const conv_workspace L = workspace_layout(s);
    float *owned, *ws = workspace_or_alloc(workspace, s, &owned);
    if (!ws) { /* out of memory: slow but correct */
        msq_conv2d_backward_input_ref(dx, dy, w, s, NULL);
        return;
    }
    if (use_transposed(s)) {
        /* wt[g*cin_g + ci, co, i, j] = w[g*cout_g + co, ci, kh-1-i, kw-1-j]: OIHW weights of
           the transposed conv (c_in outputs, cout_g inputs per group). */
        const int cin_g = s->c_in / s->groups, cout_g = s->c_out / s->groups, kk = s->kh * s->kw;
        float *wt = ws;
        const long pairs = (long)s->groups * cout_g * cin_g;
        /* Serial, this copy was about 1 % of a ResNet-18 step (512x512x9 weights). */
        #pragma omp parallel for collapse(2) schedule(static) if (!omp_in_parallel() && pairs * kk > 65536)
        for (int g = 0; g < s->groups; g++)
            for (int co = 0; co < cout_g; co++)
                for (int ci = 0; ci < cin_g; ci++) {
                    const float *src = w + ((size_t)(g * cout_g + co) * cin_g + ci) * kk;
                    float *dst = wt + ((size_t)(g * cin_g + ci) * cout_g + co) * kk;
                    for (int k = 0; k < kk; k++) dst[k] = src[kk - 1 - k];
                }
        const msq_conv2d_shape t = transposed_shape(s);
        if (msq_conv2d_winograd_interleaved_eligible(&t))
            msq_conv2d_winograd_interleaved_forward(dx, dy, wt, NULL, &t, ws + L.head_floats, 1);
        else if (msq_conv2d_winograd_eligible(&t))
            msq_conv2d_winograd_forward(dx, dy, wt, NULL, &t, ws + L.head_floats, 1);
        else if (msq_conv2d_direct_eligible(&t))
            msq_conv2d_direct_forward(dx, dy, wt, NULL, &t, ws + L.head_floats, 1);
        else
            forward_core(dx, dy, wt, NULL, &t, ws + L.head_floats, L.slice_floats, 1);
    } else if (!omp_in_parallel() && use_wide(s)) {
        backward_input_wide(dx, dy, w, s, ws + L.head_floats);
    } else {
        const conv_geom G = conv_geometry(s);
        const long items = (G.bands / G.row_bands) * s->groups;
        const int team = msq_conv_team_size(items);
        /* Each unit and group owns its part of dx: no races, no order dependence. */
        #pragma omp parallel for schedule(static) num_threads(team) if (team > 1)
        for (long it = 0; it < items; it++)
            backward_input_item(dx, dy, w, s, &G, it,
                                ws + L.head_floats + (size_t)omp_get_thread_num() * L.slice_floats);
    }
    free(owned);
}

/* Bands [k0, k1) into dw[c_out, kdim] and dbias[c_out] (or NULL), accumulating, in order. */
static void backward_weight_bands(float *dw, float *dbias, const float *dy, const float *x,
                                  const msq_conv2d_shape *s, const conv_geom *G, long k0, long k1,
                                  float *scratch) {
    float *col = scratch, *tmp = scratch + G->col_floats;
    for (long k = k0; k < k1; k++) {
        const conv_band B = band_at(s, G, k);
        for (int g = 0; g < s->groups; g++) {
            int ldb, lda;
            const float *bm = band_matrix(x, col, s, G, &B, g, &ldb);
            const float *dyb = band_dy(dy, tmp, s, G, &B, g, &lda);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, G->cout_g, G->kdim, B.cols, 1.0f,
                        dyb, lda, bm, ldb, 1.0f, dw + (size_t)g * G->cout_g * G->kdim, G->kdim);
            if (dbias)
                for (int o = 0; o < G->cout_g; o++) {
                    const float *row = dyb + (size_t)o * lda;
                    float acc = 0.0f;
                    for (int p = 0; p < B.cols; p++) acc += row[p];
                    dbias[g * G->cout_g + o] += acc;
                }
        }
    }
}

/* Wide mode: per chunk, col = im2col (images split), tmp = dy, then dw[rows] += tmp[rows] * col^T
   and dbias with the output channels split over the team; no partial sums to reduce. */
static void backward_weight_wide(float *dw, float *dbias, const float *dy, const float *x,
                                 const msq_conv2d_shape *s, float *ws) {
    const wide_layout L = wide_layout_of(s, ws);
    const int kdim = L.kdim, plane = L.plane, per = L.per;
    float *col = L.col, *tmp = L.tmp;
    #pragma omp parallel num_threads(omp_get_max_threads())
    {
        const int nt = omp_get_num_threads();
        for (int b0 = 0; b0 < s->n; b0 += per) {
            const int imgs = imin(per, s->n - b0), cols = imgs * plane;
            im2col_images(col, x, s, b0, imgs);
            gather_dy_wide(tmp, dy, s, b0, imgs);
            #pragma omp for schedule(static)
            for (int t = 0; t < nt; t++) {
                const int m0 = split_rows(s->c_out, nt, t), m1 = split_rows(s->c_out, nt, t + 1);
                if (m1 <= m0) continue;
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m1 - m0, kdim, cols, 1.0f,
                            tmp + (size_t)m0 * cols, cols, col, cols, 1.0f, dw + (size_t)m0 * kdim, kdim);
                if (dbias)
                    for (int o = m0; o < m1; o++) {
                        const float *row = tmp + (size_t)o * cols;
                        float acc = 0.0f;
                        for (int p = 0; p < cols; p++) acc += row[p];
                        dbias[o] += acc;
                    }
            }
        }
    }
}

/* dy[n,c_out,h_out,w_out], x[n,c_in,h_in,w_in] -> dw[c_out,c_in/groups,kh,kw] and dbias[c_out]
   (both accumulated; dbias may be NULL). */
void msq_conv2d_backward_weight(float *dw, float *dbias, const float *dy, const float *x,
                                const msq_conv2d_shape *s, void *workspace) {
    if (msq_conv2d_depthwise_eligible(s)) {
        msq_conv2d_depthwise_backward_weight(dw, dbias, dy, x, s);
        return;
    }
    const conv_geom G = conv_geometry(s);
    const conv_workspace L = workspace_layout(s);
    float *owned, *ws = workspace_or_alloc(workspace, s, &owned);
    if (!ws) { /* out of memory: slow but correct */
        msq_conv2d_backward_weight_ref(dw, dbias, dy, x, s, NULL);
        return;
    }
    float *slices = ws + L.head_floats;
    if (msq_conv2d_winograd_interleaved_eligible(s)) {
        msq_conv2d_winograd_interleaved_backward_weight(dw, dbias, dy, x, s, slices);
        free(owned);
        return;
    }
    if (msq_conv2d_direct_eligible(s)) {
        msq_conv2d_direct_backward_weight(dw, dbias, dy, x, s, slices);
        free(owned);
        return;
    }
    if (!omp_in_parallel() && use_wide(s)) {
        backward_weight_wide(dw, dbias, dy, x, s, slices);
        free(owned);
        return;
    }
    const int chunks = msq_conv_team_size(G.bands);
    if (chunks <= 1) {
        backward_weight_bands(dw, dbias, dy, x, s, &G, 0, G.bands, slices);
        free(owned);
        return;
    }
    /* Chunk c (a fixed range of bands) sums into its own partial in slice c; the partials are
       then added in chunk order. The chunk boundaries depend only on the shape and the thread
       count, so the result is bit-identical run to run. */
    const size_t dw_count = (size_t)s->c_out * G.kdim;
    #pragma omp parallel for schedule(static) num_threads(chunks)
    for (int c = 0; c < chunks; c++) {
        float *slice = slices + (size_t)c * L.slice_floats;
        float *pdw = slice + L.scratch_floats, *pdb = pdw + L.dw_floats;
        memset(pdw, 0, dw_count * sizeof(float));
        memset(pdb, 0, (size_t)s->c_out * sizeof(float));
        backward_weight_bands(pdw, dbias ? pdb : NULL, dy, x, s, &G, G.bands * c / chunks,
                              G.bands * (c + 1) / chunks, slice);
    }
    const float *part = slices + L.scratch_floats;
    for (size_t i = 0; i < dw_count; i++) {
        float acc = part[i];
        for (int c = 1; c < chunks; c++) acc += part[(size_t)c * L.slice_floats + i];
        dw[i] += acc;
    }
    if (dbias) {
        const float *pdb = part + L.dw_floats;
        for (int o = 0; o < s->c_out; o++) {
            float acc = pdb[o];
            for (int c = 1; c < chunks; c++) acc += pdb[(size_t)c * L.slice_floats + o];
            dbias[o] += acc;
        }
    }
    free(owned);
}
