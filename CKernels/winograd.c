/* winograd.c — 3x3 stride-1 convolution by Winograd's minimal filtering F(2x2, 3x3)
 * (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016).
 *
 * Each 2x2 output tile comes from a 4x4 input tile d and the 3x3 filter g as
 *     Y = A^T [ (G g G^T) ⊙ (B^T d B) ] A,
 * 16 multiplications per tile and channel pair instead of 36, so the GEMM work is 2.25x smaller
 * than im2col's. Tiles are numbered over the whole batch (image, tile row, tile column) and cut
 * into chunks of whole tile rows; each thread takes whole chunks and, in its own slice,
 *     V[ξ][ci][t] = (B^T d_{ci,t} B)[ξ]           input transform
 *     M[ξ][co][t] = Σ_ci U[ξ][co][ci] V[ξ][ci][t]  16 single-threaded GEMMs
 *     y[co, tile t] = (A^T M[·][co][t] A)          output transform (chunks own disjoint tiles)
 * with U[ξ][co][ci] = (G g_{co,ci} G^T)[ξ] computed once per call by the whole team
 * (msq_winograd_transform_weights, conv_common.c). A chunk never leaves its core's cache between
 * the three steps. The chunking depends only on the shape and the thread count, so results are
 * reproducible for both.
 * Workspace: U | per thread: V | M | four padded input rows and their transform. */
#include "msq_kernels.h"
#include "conv_internal.h"
#include <cblas.h>
#include <omp.h>
#include <stddef.h>
#include <stdlib.h>

/* Tiles per chunk: V and M (16 (c_in + c_out) floats per tile) within about half the L2, so the
   GEMMs read V from cache; but at least c_out * c_in / 64 tiles (up to 256) so that packing each
   U[ξ] (c_out x c_in) is amortised over enough columns. */
#ifndef MSQ_WINOGRAD_CHUNK_BYTES
#define MSQ_WINOGRAD_CHUNK_BYTES (512u << 10)
#endif
#define WINO_MAX_MIN_TILES 256

/* Where F(2x2, 3x3) beats im2col + GEMM on this design (measured with msq-bench kernels): with
   fewer channels the 16 GEMMs have too small a K and M; on narrower outputs the tile rows are
   too short for the transforms' vector loops (ResNet-18's 14x14 and 7x7 layers, ResNet-20's
   32-64 channel layers stay on im2col). */
#ifndef MSQ_WINOGRAD_MIN_CHANNELS
#define MSQ_WINOGRAD_MIN_CHANNELS 64
#endif
#ifndef MSQ_WINOGRAD_MIN_WIDTH
#define MSQ_WINOGRAD_MIN_WIDTH 16
#endif

typedef struct wino_geom {
    int tiles_h, tiles_w;   /* ceil(h_out / 2), ceil(w_out / 2) */
    long rows;              /* tile rows in the batch: n * tiles_h */
    long chunk_rows;        /* tile rows per chunk */
    size_t u_floats, v_floats, m_floats, scratch_floats;
} wino_geom;

int msq_conv2d_winograd_eligible(const msq_conv2d_shape *s) {
    return s->kh == 3 && s->kw == 3 && s->stride_h == 1 && s->stride_w == 1 && s->groups == 1 &&
           s->c_in >= MSQ_WINOGRAD_MIN_CHANNELS && s->c_out >= MSQ_WINOGRAD_MIN_CHANNELS &&
           s->w_out >= MSQ_WINOGRAD_MIN_WIDTH;
}

static size_t round16(size_t n) { return (n + 15) / 16 * 16; }

static wino_geom wino_geometry(const msq_conv2d_shape *s) {
    wino_geom G;
    G.tiles_h = (s->h_out + 1) / 2;
    G.tiles_w = (s->w_out + 1) / 2;
    G.rows = (long)s->n * G.tiles_h;
    const size_t per_tile = 16 * sizeof(float) * (size_t)(s->c_in + s->c_out);
    long chunk = (long)(MSQ_WINOGRAD_CHUNK_BYTES / per_tile);
    long min_tiles = (long)s->c_out * s->c_in / 64;
    if (min_tiles > WINO_MAX_MIN_TILES) min_tiles = WINO_MAX_MIN_TILES;
    if (chunk < min_tiles) chunk = min_tiles;
    if (chunk < 1) chunk = 1;
    long chunk_rows = (chunk + G.tiles_w - 1) / G.tiles_w;
    /* Every thread gets a chunk, as far as the rows allow. */
    const long threads = omp_get_max_threads() > 1 ? omp_get_max_threads() : 1;
    const long fair = (G.rows + threads - 1) / threads;
    if (chunk_rows > fair) chunk_rows = fair;
    if (chunk_rows < 1) chunk_rows = 1;
    G.chunk_rows = chunk_rows;
    const size_t tiles = (size_t)chunk_rows * G.tiles_w;
    G.u_floats = round16((size_t)16 * s->c_out * s->c_in);
    G.v_floats = round16((size_t)16 * s->c_in * tiles);
    G.m_floats = round16((size_t)16 * s->c_out * tiles);
    /* Four padded input rows and their transform, per thread, for the input transform. */
    G.scratch_floats = round16((size_t)8 * (2 * G.tiles_w + 2));
    return G;
}

size_t msq_conv2d_winograd_workspace_size(const msq_conv2d_shape *s) {
    const wino_geom G = wino_geometry(s);
    const size_t threads = (size_t)(omp_get_max_threads() > 1 ? omp_get_max_threads() : 1);
    return (G.u_floats + threads * (G.v_floats + G.m_floats + G.scratch_floats)) * sizeof(float);
}

/* Transforms work on whole rows of tiles so every inner loop runs over consecutive tiles of one
   row and vectorises: B^T mixes four input rows elementwise; B then mixes columns 2k..2k+3 of
   tile k, which in even/odd halves (e[k] = q[2k], o[k] = q[2k+1]) are e[k], o[k], e[k+1], o[k+1]. */

/* Input row r (zeros outside the image) at columns -pad_w ... 2*tiles_w + 1 - pad_w. */
static void padded_row(float *dst, const float *xc, const msq_conv2d_shape *s, int r, int width) {
    if (r < 0 || r >= s->h_in) {
        for (int j = 0; j < width; j++) dst[j] = 0.0f;
        return;
    }
    const float *src = xc + (size_t)r * s->w_in;
    /* Columns j - pad_w inside [0, w_in): j in [lo, hi). */
    int lo = s->pad_w < width ? s->pad_w : width;
    int hi = s->w_in + s->pad_w < width ? s->w_in + s->pad_w : width;
    if (hi < lo) hi = lo;
    for (int j = 0; j < lo; j++) dst[j] = 0.0f;
    for (int j = lo; j < hi; j++) dst[j] = src[j - s->pad_w];
    for (int j = hi; j < width; j++) dst[j] = 0.0f;
}

/* V[ξ][ci][t] for the tiles of chunk rows [row0, row0 + rows) (a tile row = image b, row th):
   V = B^T d B, B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]. d: the calling thread's room for
   eight rows of 2 * tiles_w + 2 floats (four padded input rows, then q = B^T d). */
static void transform_input(float *v, const float *x, const msq_conv2d_shape *s, const wino_geom *G,
                            long row0, long rows, float *d) {
    const size_t plane_in = (size_t)s->h_in * s->w_in;
    const long count = rows * G->tiles_w;
    const size_t stride_xi = (size_t)s->c_in * count; /* between ξ planes of V */
    const int tw = G->tiles_w, width = 2 * tw + 2;
    float *restrict d0 = d, *restrict d1 = d + width, *restrict d2 = d + 2 * width, *restrict d3 = d + 3 * width;
    float *restrict q = d + 4 * width; /* q_i at q + i * width */
    for (int ci = 0; ci < s->c_in; ci++)
        for (long r = 0; r < rows; r++) {
            const long row = row0 + r;
            const int b = (int)(row / G->tiles_h), th = (int)(row % G->tiles_h);
            const float *xc = x + ((size_t)b * s->c_in + ci) * plane_in;
            const int r0 = 2 * th - s->pad_h;
            padded_row(d0, xc, s, r0, width);
            padded_row(d1, xc, s, r0 + 1, width);
            padded_row(d2, xc, s, r0 + 2, width);
            padded_row(d3, xc, s, r0 + 3, width);
            for (int j = 0; j < width; j++) {
                q[j] = d0[j] - d2[j];
                q[width + j] = d1[j] + d2[j];
                q[2 * width + j] = d2[j] - d1[j];
                q[3 * width + j] = d1[j] - d3[j];
            }
            float *dst = v + (size_t)ci * count + (size_t)r * tw;
            for (int i = 0; i < 4; i++) {
                /* Even and odd columns of q_i into the (now free) input rows, so that the four
                   outputs below are contiguous loops. */
                const float *restrict qi = q + i * width;
                float *restrict qe = d0, *restrict qo = d1;
                for (int k = 0; k <= tw; k++) {
                    qe[k] = qi[2 * k];
                    qo[k] = qi[2 * k + 1];
                }
                float *restrict o0 = dst + (size_t)(4 * i + 0) * stride_xi;
                float *restrict o1 = dst + (size_t)(4 * i + 1) * stride_xi;
                float *restrict o2 = dst + (size_t)(4 * i + 2) * stride_xi;
                float *restrict o3 = dst + (size_t)(4 * i + 3) * stride_xi;
                for (int k = 0; k < tw; k++) o0[k] = qe[k] - qe[k + 1];
                for (int k = 0; k < tw; k++) o1[k] = qo[k] + qe[k + 1];
                for (int k = 0; k < tw; k++) o2[k] = qe[k + 1] - qo[k];
                for (int k = 0; k < tw; k++) o3[k] = qo[k] - qo[k + 1];
            }
        }
}

/* y[co, tiles of chunk rows [row0, row0 + rows)] (+)= A^T M A (+ bias),
   A^T = [1 1 1 0; 0 1 -1 -1]; the last tile row and column are clipped at the image edge. */
static void transform_output(float *y, const float *m, const float *bias, const msq_conv2d_shape *s,
                             const wino_geom *G, long row0, long rows, int accumulate) {
    const size_t plane_out = (size_t)s->h_out * s->w_out;
    const long count = rows * G->tiles_w;
    const size_t stride_xi = (size_t)s->c_out * count;
    const int tw = G->tiles_w;
    for (int co = 0; co < s->c_out; co++) {
        const float bv = (bias && !accumulate) ? bias[co] : 0.0f;
        for (long r = 0; r < rows; r++) {
            const long row = row0 + r;
            const int b = (int)(row / G->tiles_h), oh = 2 * (int)(row % G->tiles_h);
            const float *src = m + (size_t)co * count + (size_t)r * tw;
            float line[2][2 * tw];
            for (int i = 0; i < 2; i++) {
                /* q_i[j] = (A^T p)_i over the four ξ rows j, then (q_i A) interleaved into line[i]. */
                float q[4][tw];
                for (int j = 0; j < 4; j++) {
                    const float *p0 = src + (size_t)(0 + j) * stride_xi, *p1 = src + (size_t)(4 + j) * stride_xi;
                    const float *p2 = src + (size_t)(8 + j) * stride_xi, *p3 = src + (size_t)(12 + j) * stride_xi;
                    if (i == 0) for (int k = 0; k < tw; k++) q[j][k] = p0[k] + p1[k] + p2[k];
                    else        for (int k = 0; k < tw; k++) q[j][k] = p1[k] - p2[k] - p3[k];
                }
                for (int k = 0; k < tw; k++) {
                    line[i][2 * k] = q[0][k] + q[1][k] + q[2][k];
                    line[i][2 * k + 1] = q[1][k] - q[2][k] - q[3][k];
                }
            }
            float *yc = y + ((size_t)b * s->c_out + co) * plane_out;
            const int out_rows = s->h_out - oh < 2 ? 1 : 2;
            for (int i = 0; i < out_rows; i++) {
                float *dst = yc + (size_t)(oh + i) * s->w_out;
                if (accumulate) for (int j = 0; j < s->w_out; j++) dst[j] += line[i][j];
                else            for (int j = 0; j < s->w_out; j++) dst[j] = line[i][j] + bv;
            }
        }
    }
}

/* y = conv(x, w) + bias, or y += conv(x, w) when accumulate != 0 (bias unused then), for shapes
   msq_conv2d_winograd_eligible accepts. x[n,c_in,h_in,w_in], w[c_out,c_in,3,3],
   y[n,c_out,h_out,w_out]; workspace of msq_conv2d_winograd_workspace_size(s) bytes or NULL. */
void msq_conv2d_winograd_forward(float *y, const float *x, const float *w, const float *bias,
                                 const msq_conv2d_shape *s, void *workspace, int accumulate) {
    const wino_geom G = wino_geometry(s);
    float *owned, *ws = msq_conv_workspace_or_alloc(workspace, msq_conv2d_winograd_workspace_size(s), &owned);
    if (!ws) { /* out of memory: slow but correct */
        msq_conv2d_forward_fallback(y, x, w, bias, s, accumulate);
        return;
    }
    float *u = ws, *slices = u + G.u_floats;
    const size_t slice = G.v_floats + G.m_floats + G.scratch_floats;
    const long chunks = (G.rows + G.chunk_rows - 1) / G.chunk_rows;
    const int team = omp_in_parallel() ? 1 : omp_get_max_threads();
    #pragma omp parallel num_threads(team) if (team > 1)
    {
        msq_winograd_transform_weights(u, w, s); /* ends in a barrier: U is complete before any GEMM */
        /* Each chunk is done start to finish by one thread in its own slice, so V and M stay
           in that core's cache; chunks write disjoint tiles of y. */
        float *v = slices + (size_t)omp_get_thread_num() * slice, *m = v + G.v_floats, *d = m + G.m_floats;
        #pragma omp for schedule(static)
        for (long c = 0; c < chunks; c++) {
            const long row0 = c * G.chunk_rows;
            const long rows = G.rows - row0 < G.chunk_rows ? G.rows - row0 : G.chunk_rows;
            const int count = (int)(rows * G.tiles_w);
            transform_input(v, x, s, &G, row0, rows, d);
            for (int xi = 0; xi < 16; xi++)
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, s->c_out, count, s->c_in,
                            1.0f, u + (size_t)xi * s->c_out * s->c_in, s->c_in,
                            v + (size_t)xi * s->c_in * count, count, 0.0f,
                            m + (size_t)xi * s->c_out * count, count);
            transform_output(y, m, bias, s, &G, row0, rows, accumulate);
        }
    }
    free(owned);
}
