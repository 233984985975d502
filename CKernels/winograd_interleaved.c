/* winograd_interleaved.c — Winograd F(2x2, 3x3) on eight images at once, for 3x3 stride-1 layers
 * on small planes or with few channels (ResNet-20's 32/16/8 planes at 16-64 channels, ResNet-18's
 * 14x14 and 7x7 stages), where winograd.c's tile rows are too short to vectorise its transforms.
 *
 * Eight images are interleaved so that one 8-float vector holds the same pixel of all eight:
 *     X[ci][r][c][lane] = x[b0 + lane, ci, r - pad, c - pad]   (zero outside the image)
 * Every transform is then plain vector arithmetic on whole pixels, whatever the plane's width:
 *     V[ξ][ci][t] = (B^T d_{ci,t} B)[ξ]            input transform, tile t's 4x4 window of X
 *     M[ξ][co][t] = Σ_ci U[ξ][co][ci] V[ξ][ci][t]   16 products, 8 lanes per tile as columns
 *     Y[co][2ty + a][2tx + b] = (A^T M[·][co][t] A)[a][b]
 * and the images are de-interleaved into y at the end (8x8 transposes). Groups of eight images
 * are split over the team (static schedule); a group's tiles go through the three steps in chunks
 * sized for the core's L2. Lanes past the batch's end hold zeros (lanes never mix, and those
 * lanes are never written back). Results depend only on the shape and the thread count.
 * The backward weight runs the same steps backwards (msq_conv2d_winograd_interleaved_backward_weight).
 * Workspace: U | per thread: X | Y | V chunk | M chunk | partial dU. */
#include "msq_kernels.h"
#include "conv_internal.h"
#include <cblas.h>
#include <omp.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

/* Eight floats; aligned(4) so that loads and stores through it may be unaligned. */
typedef float v8 __attribute__((vector_size(32), aligned(4)));
#define LANES 8

/* V and M chunks of a group within about this many bytes (core-private L2). */
#ifndef MSQ_WINOGRAD_IL_CHUNK_BYTES
#define MSQ_WINOGRAD_IL_CHUNK_BYTES (512u << 10)
#endif
/* At least this many tiles per chunk (128 GEMM columns), so that cblas_sgemm's packing of U[ξ]
   is amortised on deep layers even when a tile's V and M exceed the chunk budget. */
#define MIN_CHUNK_TILES 16
/* Up to this many weights per ξ (c_out * c_in) the forward products use products_few below
   instead of cblas_sgemm, whose packing costs more than the product at K = 16 (a C harness here:
   274 vs 264 effective GFLOP/s at 16x16; from 32x32 on cblas_sgemm is as fast or faster). The
   backward weight's products always go to cblas_sgemm (264 vs 244 at 16x16, 320 vs 278 at 32x32). */
#ifndef MSQ_WINOGRAD_IL_FEW_WEIGHTS
#define MSQ_WINOGRAD_IL_FEW_WEIGHTS (16 * 16)
#endif
/* Fewer input channels than this and the transforms outweigh the 2.25x saving (a stem's 3). */
#ifndef MSQ_WINOGRAD_IL_MIN_CHANNELS
#define MSQ_WINOGRAD_IL_MIN_CHANNELS 8
#endif

typedef struct il_geom {
    int tiles_h, tiles_w;   /* ceil(h_out / 2), ceil(w_out / 2) */
    int hp, wp;             /* X's rows and columns: 2 * tiles + 2 */
    int ho, wo;             /* Y's rows and columns: whole tiles, 2 * tiles */
    long tiles;             /* per group: tiles_h * tiles_w */
    long chunk;             /* tiles per chunk */
    int groups;             /* ceil(n / 8) */
    size_t u_floats, x_floats, y_floats, v_floats, m_floats, slice_floats;
} il_geom;

static size_t round16(size_t n) { return (n + 15) / 16 * 16; }

/* Floats between the 16 ξ planes of a V, M or D chunk of `channels` rows of tc tiles: one cache
   line more than the plane, so that the 16 planes a tile's transform touches do not fall into
   one L1 set (plane sizes are often multiples of 4 KiB). */
static size_t plane_stride(int channels, long tc) { return (size_t)channels * tc * LANES + 16; }

static il_geom il_geometry(const msq_conv2d_shape *s);

/* Lanes of the last group past the batch's end are wasted work: at least 3/4 of the lanes must
   hold images (so batches of 6-8, 12-16, 18-24, ... and every batch from 24 up). And a thread's
   interleaved input and output grids (eight whole images) must stay under
   MSQ_WINOGRAD_IL_MAX_GRID_BYTES: large planes (a VGG's 224x224 x 64 channels would need 400 MB
   at two threads) go to the other kernels. */
#ifndef MSQ_WINOGRAD_IL_MAX_GRID_BYTES
#define MSQ_WINOGRAD_IL_MAX_GRID_BYTES (32u << 20)
#endif
int msq_conv2d_winograd_interleaved_eligible(const msq_conv2d_shape *s) {
    const long lanes = (long)(s->n + LANES - 1) / LANES * LANES;
    if (!(s->kh == 3 && s->kw == 3 && s->stride_h == 1 && s->stride_w == 1 && s->groups == 1 &&
          s->c_in >= MSQ_WINOGRAD_IL_MIN_CHANNELS && 4L * s->n >= 3 * lanes))
        return 0;
    const il_geom G = il_geometry(s);
    return (G.x_floats + G.y_floats) * sizeof(float) <= MSQ_WINOGRAD_IL_MAX_GRID_BYTES;
}

static il_geom il_geometry(const msq_conv2d_shape *s) {
    il_geom G;
    G.tiles_h = (s->h_out + 1) / 2;
    G.tiles_w = (s->w_out + 1) / 2;
    G.hp = 2 * G.tiles_h + 2;
    G.wp = 2 * G.tiles_w + 2;
    G.ho = 2 * G.tiles_h;
    G.wo = 2 * G.tiles_w;
    G.tiles = (long)G.tiles_h * G.tiles_w;
    G.groups = (s->n + LANES - 1) / LANES;
    const size_t per_tile = (size_t)16 * LANES * (s->c_in + s->c_out) * sizeof(float);
    long chunk = (long)(MSQ_WINOGRAD_IL_CHUNK_BYTES / per_tile);
    if (chunk < MIN_CHUNK_TILES) chunk = MIN_CHUNK_TILES;
    if (chunk > G.tiles) chunk = G.tiles;
    G.chunk = chunk;
    G.u_floats = round16((size_t)16 * s->c_out * s->c_in);
    G.x_floats = round16((size_t)s->c_in * G.hp * G.wp * LANES);
    G.y_floats = round16((size_t)s->c_out * G.ho * G.wo * LANES);
    G.v_floats = round16(16 * plane_stride(s->c_in, chunk));
    G.m_floats = round16(16 * plane_stride(s->c_out, chunk));
    G.slice_floats = G.x_floats + G.y_floats + G.v_floats + G.m_floats + G.u_floats;
    return G;
}

size_t msq_conv2d_winograd_interleaved_workspace_size(const msq_conv2d_shape *s) {
    const il_geom G = il_geometry(s);
    const size_t threads = (size_t)(omp_get_max_threads() > 1 ? omp_get_max_threads() : 1);
    return (G.u_floats + threads * G.slice_floats) * sizeof(float);
}

/* r[i] <- column i of the 8x8 matrix whose rows are r[0..7]. */
static inline void transpose8(v8 r[8]) {
    v8 t[8], q[8];
    for (int i = 0; i < 8; i += 2) {
        t[i] = __builtin_shufflevector(r[i], r[i + 1], 0, 8, 1, 9, 4, 12, 5, 13);
        t[i + 1] = __builtin_shufflevector(r[i], r[i + 1], 2, 10, 3, 11, 6, 14, 7, 15);
    }
    for (int i = 0; i < 8; i += 4) {
        q[i] = __builtin_shufflevector(t[i], t[i + 2], 0, 1, 8, 9, 4, 5, 12, 13);
        q[i + 1] = __builtin_shufflevector(t[i], t[i + 2], 2, 3, 10, 11, 6, 7, 14, 15);
        q[i + 2] = __builtin_shufflevector(t[i + 1], t[i + 3], 0, 1, 8, 9, 4, 5, 12, 13);
        q[i + 3] = __builtin_shufflevector(t[i + 1], t[i + 3], 2, 3, 10, 11, 6, 7, 14, 15);
    }
    for (int i = 0; i < 4; i++) {
        r[i] = __builtin_shufflevector(q[i], q[i + 4], 0, 1, 2, 3, 8, 9, 10, 11);
        r[i + 4] = __builtin_shufflevector(q[i], q[i + 4], 4, 5, 6, 7, 12, 13, 14, 15);
    }
}

/* Images b0 ... b0 + count - 1 of x[n, c, h, w] into the grids X[c][rows][cols][lane] at row and
   column offset (top, left); lanes >= count get zeros. Cells outside stay as they are (zero). */
static void interleave(float *X, const float *x, int c, int h, int w, int rows, int cols, int top,
                       int left, int b0, int count) {
    const size_t plane = (size_t)h * w;
    const v8 zero = {0};
    for (int ci = 0; ci < c; ci++) {
        const float *src[LANES];
        for (int l = 0; l < LANES; l++)
            src[l] = l < count ? x + ((size_t)(b0 + l) * c + ci) * plane : NULL;
        for (int r = 0; r < h; r++) {
            float *dst = X + (((size_t)ci * rows + r + top) * cols + left) * LANES;
            int c = 0;
            for (; c + 8 <= w; c += 8) {
                v8 rows[8];
                for (int l = 0; l < LANES; l++) rows[l] = src[l] ? *(const v8 *)(src[l] + (size_t)r * w + c) : zero;
                transpose8(rows);
                for (int j = 0; j < 8; j++) *(v8 *)(dst + (size_t)(c + j) * LANES) = rows[j];
            }
            for (; c < w; c++)
                for (int l = 0; l < LANES; l++)
                    dst[(size_t)c * LANES + l] = src[l] ? src[l][(size_t)r * w + c] : 0.0f;
        }
    }
}

/* Zeroes the cells of the grids X[c][rows][cols][lane] outside [top, top + h) x [left, left + w),
   the cells interleave never writes: a call clears only these, not the whole grid. */
static void zero_border(float *X, int c, int rows, int cols, int top, int left, int h, int w) {
    const size_t row = (size_t)cols * LANES, right = (size_t)(cols - left - w) * LANES;
    for (int ch = 0; ch < c; ch++) {
        float *g = X + (size_t)ch * rows * row;
        memset(g, 0, (size_t)top * row * sizeof(float));
        for (int r = top; r < top + h; r++) {
            memset(g + r * row, 0, (size_t)left * LANES * sizeof(float));
            memset(g + r * row + (size_t)(left + w) * LANES, 0, right * sizeof(float));
        }
        memset(g + (size_t)(top + h) * row, 0, (size_t)(rows - top - h) * row * sizeof(float));
    }
}

/* y[b0 + lane] (=, + bias) or (+=) Y's first h_out x w_out pixels, for lanes < count. */
static void deinterleave_output(float *y, const float *Y, const float *bias, const msq_conv2d_shape *s,
                                const il_geom *G, int b0, int count, int accumulate) {
    const int h = s->h_out, w = s->w_out;
    const size_t plane = (size_t)h * w;
    for (int co = 0; co < s->c_out; co++) {
        const float bv = (bias && !accumulate) ? bias[co] : 0.0f;
        float *dst[LANES];
        for (int l = 0; l < count; l++) dst[l] = y + ((size_t)(b0 + l) * s->c_out + co) * plane;
        for (int r = 0; r < h; r++) {
            const float *src = Y + ((size_t)co * G->ho + r) * G->wo * LANES;
            int c = 0;
            for (; c + 8 <= w; c += 8) {
                v8 px[8];
                for (int j = 0; j < 8; j++) px[j] = *(const v8 *)(src + (size_t)(c + j) * LANES);
                transpose8(px); /* px[l] = image l's pixels c ... c + 7 */
                for (int l = 0; l < count; l++) {
                    v8 *d = (v8 *)(dst[l] + (size_t)r * w + c);
                    if (accumulate) *d += px[l];
                    else            *d = px[l] + bv;
                }
            }
            for (; c < w; c++)
                for (int l = 0; l < count; l++) {
                    float *d = dst[l] + (size_t)r * w + c;
                    const float v = src[(size_t)c * LANES + l];
                    if (accumulate) *d += v;
                    else            *d = v + bv;
                }
        }
    }
}

/* V[ξ][ci][t - t0] for tiles [t0, t0 + tc): B^T d B, B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]. */
static void transform_input(float *V, const float *X, const msq_conv2d_shape *s, const il_geom *G,
                            long t0, long tc) {
    const size_t xi_stride = plane_stride(s->c_in, tc); /* between ξ planes of V */
    for (int ci = 0; ci < s->c_in; ci++) {
        const float *xc = X + (size_t)ci * G->hp * G->wp * LANES;
        for (long t = t0; t < t0 + tc; t++) {
            const int ty = (int)(t / G->tiles_w), tx = (int)(t % G->tiles_w);
            const float *base = xc + ((size_t)(2 * ty) * G->wp + 2 * tx) * LANES;
            v8 d[4][4], q[4][4];
            for (int i = 0; i < 4; i++)
                for (int j = 0; j < 4; j++) d[i][j] = *(const v8 *)(base + ((size_t)i * G->wp + j) * LANES);
            for (int j = 0; j < 4; j++) {
                q[0][j] = d[0][j] - d[2][j];
                q[1][j] = d[1][j] + d[2][j];
                q[2][j] = d[2][j] - d[1][j];
                q[3][j] = d[1][j] - d[3][j];
            }
            float *dst = V + ((size_t)ci * tc + (t - t0)) * LANES;
            for (int i = 0; i < 4; i++) {
                *(v8 *)(dst + (size_t)(4 * i + 0) * xi_stride) = q[i][0] - q[i][2];
                *(v8 *)(dst + (size_t)(4 * i + 1) * xi_stride) = q[i][1] + q[i][2];
                *(v8 *)(dst + (size_t)(4 * i + 2) * xi_stride) = q[i][2] - q[i][1];
                *(v8 *)(dst + (size_t)(4 * i + 3) * xi_stride) = q[i][1] - q[i][3];
            }
        }
    }
}

/* Y[co][2ty + a][2tx + b] = (A^T M A)[a][b] for tiles [t0, t0 + tc), A^T = [1 1 1 0; 0 1 -1 -1]. */
static void transform_output(float *Y, const float *M, const msq_conv2d_shape *s, const il_geom *G,
                             long t0, long tc) {
    const size_t xi_stride = plane_stride(s->c_out, tc);
    for (int co = 0; co < s->c_out; co++) {
        float *yc = Y + (size_t)co * G->ho * G->wo * LANES;
        for (long t = t0; t < t0 + tc; t++) {
            const int ty = (int)(t / G->tiles_w), tx = (int)(t % G->tiles_w);
            const float *src = M + ((size_t)co * tc + (t - t0)) * LANES;
            v8 m[16], q0[4], q1[4];
            for (int k = 0; k < 16; k++) m[k] = *(const v8 *)(src + (size_t)k * xi_stride);
            for (int j = 0; j < 4; j++) {
                q0[j] = m[j] + m[4 + j] + m[8 + j];
                q1[j] = m[4 + j] - m[8 + j] - m[12 + j];
            }
            float *o = yc + ((size_t)(2 * ty) * G->wo + 2 * tx) * LANES;
            *(v8 *)o = q0[0] + q0[1] + q0[2];
            *(v8 *)(o + LANES) = q0[1] - q0[2] - q0[3];
            *(v8 *)(o + (size_t)G->wo * LANES) = q1[0] + q1[1] + q1[2];
            *(v8 *)(o + (size_t)(G->wo + 1) * LANES) = q1[1] - q1[2] - q1[3];
        }
    }
}

/* m[co][j] = Σ_ci u[co][ci] v[ci][j] for j < cols (a multiple of 8); u[c_out][c_in], v[c_in][cols],
   m[c_out][cols]. V's rows are read in place, U broadcast from L1; register block: 4 output
   channels x 16 columns. The sum over ci runs in order, so results do not depend on threads. */
static void products_few(float *restrict m, const float *restrict u, const float *restrict v,
                         int c_out, int c_in, long cols) {
#pragma clang fp contract(fast)
    int co = 0;
    for (; co + 4 <= c_out; co += 4) {
        const float *u0 = u + (size_t)co * c_in, *u1 = u0 + c_in, *u2 = u1 + c_in, *u3 = u2 + c_in;
        float *m0 = m + (size_t)co * cols, *m1 = m0 + cols, *m2 = m1 + cols, *m3 = m2 + cols;
        long j = 0;
        for (; j + 16 <= cols; j += 16) {
            v8 a00 = {0}, a01 = {0}, a10 = {0}, a11 = {0}, a20 = {0}, a21 = {0}, a30 = {0}, a31 = {0};
            const float *vp = v + j;
            for (int ci = 0; ci < c_in; ci++, vp += cols) {
                const v8 x0 = *(const v8 *)vp, x1 = *(const v8 *)(vp + 8);
                a00 += u0[ci] * x0; a01 += u0[ci] * x1;
                a10 += u1[ci] * x0; a11 += u1[ci] * x1;
                a20 += u2[ci] * x0; a21 += u2[ci] * x1;
                a30 += u3[ci] * x0; a31 += u3[ci] * x1;
            }
            *(v8 *)(m0 + j) = a00; *(v8 *)(m0 + j + 8) = a01;
            *(v8 *)(m1 + j) = a10; *(v8 *)(m1 + j + 8) = a11;
            *(v8 *)(m2 + j) = a20; *(v8 *)(m2 + j + 8) = a21;
            *(v8 *)(m3 + j) = a30; *(v8 *)(m3 + j + 8) = a31;
        }
        for (; j < cols; j += 8) {
            v8 a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
            const float *vp = v + j;
            for (int ci = 0; ci < c_in; ci++, vp += cols) {
                const v8 x0 = *(const v8 *)vp;
                a0 += u0[ci] * x0; a1 += u1[ci] * x0; a2 += u2[ci] * x0; a3 += u3[ci] * x0;
            }
            *(v8 *)(m0 + j) = a0; *(v8 *)(m1 + j) = a1; *(v8 *)(m2 + j) = a2; *(v8 *)(m3 + j) = a3;
        }
    }
    for (; co < c_out; co++) {
        const float *ur = u + (size_t)co * c_in;
        float *mr = m + (size_t)co * cols;
        for (long j = 0; j < cols; j += 8) {
            v8 a = {0};
            const float *vp = v + j;
            for (int ci = 0; ci < c_in; ci++, vp += cols) a += ur[ci] * *(const v8 *)vp;
            *(v8 *)(mr + j) = a;
        }
    }
}

/* y = conv(x, w) + bias, or y += conv(x, w) when accumulate != 0 (bias unused then), for shapes
   msq_conv2d_winograd_interleaved_eligible accepts. x[n,c_in,h_in,w_in], w[c_out,c_in,3,3],
   y[n,c_out,h_out,w_out]; workspace of msq_conv2d_winograd_interleaved_workspace_size(s) bytes or NULL. */
void msq_conv2d_winograd_interleaved_forward(float *y, const float *x, const float *w, const float *bias,
                                             const msq_conv2d_shape *s, void *workspace, int accumulate) {
    const il_geom G = il_geometry(s);
    float *owned, *ws = msq_conv_workspace_or_alloc(workspace, msq_conv2d_winograd_interleaved_workspace_size(s), &owned);
    if (!ws) { /* out of memory: slow but correct */
        msq_conv2d_forward_fallback(y, x, w, bias, s, accumulate);
        return;
    }
    float *u = ws, *slices = u + G.u_floats;
    const int team = omp_in_parallel() ? 1 : omp_get_max_threads();
    const int few = (long)s->c_out * s->c_in <= MSQ_WINOGRAD_IL_FEW_WEIGHTS;
    #pragma omp parallel num_threads(team) if (team > 1)
    {
        msq_winograd_transform_weights(u, w, s); /* ends in a barrier */
        float *X = slices + (size_t)omp_get_thread_num() * G.slice_floats;
        float *Y = X + G.x_floats, *V = Y + G.y_floats, *M = V + G.v_floats;
        zero_border(X, s->c_in, G.hp, G.wp, s->pad_h, s->pad_w, s->h_in, s->w_in);
        #pragma omp for schedule(static)
        for (int g = 0; g < G.groups; g++) {
            const int b0 = g * LANES, count = s->n - b0 < LANES ? s->n - b0 : LANES;
            interleave(X, x, s->c_in, s->h_in, s->w_in, G.hp, G.wp, s->pad_h, s->pad_w, b0, count);
            for (long t0 = 0; t0 < G.tiles; t0 += G.chunk) {
                const long tc = G.tiles - t0 < G.chunk ? G.tiles - t0 : G.chunk, cols = tc * LANES;
                transform_input(V, X, s, &G, t0, tc);
                for (int xi = 0; xi < 16; xi++) {
                    const float *uk = u + (size_t)xi * s->c_out * s->c_in;
                    const float *vk = V + (size_t)xi * plane_stride(s->c_in, tc);
                    float *mk = M + (size_t)xi * plane_stride(s->c_out, tc);
                    if (few)
                        products_few(mk, uk, vk, s->c_out, s->c_in, cols);
                    else
                        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, s->c_out, (int)cols, s->c_in,
                                    1.0f, uk, s->c_in, vk, (int)cols, 0.0f, mk, (int)cols);
                }
                transform_output(Y, M, s, &G, t0, tc);
            }
            deinterleave_output(y, Y, bias, s, &G, b0, count, accumulate);
        }
    }
    free(owned);
}

/* ---- backward weight. With Y = A^T M A, M[ξ] = U[ξ] V[ξ] and U = G g G^T (the forward above),
 *     D[ξ][co][t] = (A dY_{co,t} A^T)[ξ]                  dY's 2x2 tile t into the ξ domain
 *     dU[ξ][co][ci] = Σ_t D[ξ][co][t] V[ξ][ci][t]         16 products over tiles and lanes
 *     dw[co][ci] += G^T dU[·][co][ci] G
 * exactly the gradient of the same linear map, with 2.25x fewer multiplications than direct sums.
 * Each thread sums dU over its groups; the partials are added in thread order. */

/* D[ξ][co][t - t0] for tiles [t0, t0 + tc) of dY (Y's layout), A = [1 0; 1 1; 1 -1; 0 -1]. */
static void transform_dy(float *D, const float *Yg, const msq_conv2d_shape *s, const il_geom *G,
                         long t0, long tc) {
    const size_t xi_stride = plane_stride(s->c_out, tc);
    for (int co = 0; co < s->c_out; co++) {
        const float *yc = Yg + (size_t)co * G->ho * G->wo * LANES;
        for (long t = t0; t < t0 + tc; t++) {
            const int ty = (int)(t / G->tiles_w), tx = (int)(t % G->tiles_w);
            const float *o = yc + ((size_t)(2 * ty) * G->wo + 2 * tx) * LANES;
            const v8 y00 = *(const v8 *)o, y01 = *(const v8 *)(o + LANES);
            const v8 y10 = *(const v8 *)(o + (size_t)G->wo * LANES), y11 = *(const v8 *)(o + (size_t)(G->wo + 1) * LANES);
            /* Rows of A dY: [y0], [y0 + y1], [y0 - y1], [-y1] (y_a = row a of the tile). */
            const v8 r[4][2] = {{y00, y01}, {y00 + y10, y01 + y11}, {y00 - y10, y01 - y11}, {-y10, -y11}};
            float *dst = D + ((size_t)co * tc + (t - t0)) * LANES;
            for (int i = 0; i < 4; i++) {
                *(v8 *)(dst + (size_t)(4 * i + 0) * xi_stride) = r[i][0];
                *(v8 *)(dst + (size_t)(4 * i + 1) * xi_stride) = r[i][0] + r[i][1];
                *(v8 *)(dst + (size_t)(4 * i + 2) * xi_stride) = r[i][0] - r[i][1];
                *(v8 *)(dst + (size_t)(4 * i + 3) * xi_stride) = -r[i][1];
            }
        }
    }
}

/* dw[co][ci][3][3] += G^T dU[·][co][ci] G for the pair k = co * c_in + ci,
   G = [1 0 0; ½ ½ ½; ½ -½ ½; 0 0 1]. */
static void weights_from_du(float *dw, const float *du, const msq_conv2d_shape *s, size_t k) {
    const size_t plane = (size_t)s->c_out * s->c_in;
    float e[4][4], t[3][4];
    for (int xi = 0; xi < 16; xi++) e[xi / 4][xi % 4] = du[(size_t)xi * plane + k];
    for (int j = 0; j < 4; j++) { /* G^T e: rows a = 0, 1, 2 */
        t[0][j] = e[0][j] + 0.5f * (e[1][j] + e[2][j]);
        t[1][j] = 0.5f * (e[1][j] - e[2][j]);
        t[2][j] = 0.5f * (e[1][j] + e[2][j]) + e[3][j];
    }
    float *g = dw + k * 9;
    for (int a = 0; a < 3; a++) { /* (G^T e) G */
        g[3 * a + 0] += t[a][0] + 0.5f * (t[a][1] + t[a][2]);
        g[3 * a + 1] += 0.5f * (t[a][1] - t[a][2]);
        g[3 * a + 2] += 0.5f * (t[a][1] + t[a][2]) + t[a][3];
    }
}

/* dy[n,c_out,h_out,w_out], x[n,c_in,h_in,w_in] -> dw[c_out,c_in,3,3] and dbias[c_out] (both
   accumulated; dbias may be NULL), for shapes msq_conv2d_winograd_interleaved_eligible accepts. */
void msq_conv2d_winograd_interleaved_backward_weight(float *dw, float *dbias, const float *dy, const float *x,
                                                     const msq_conv2d_shape *s, void *workspace) {
    const il_geom G = il_geometry(s);
    float *owned, *ws = msq_conv_workspace_or_alloc(workspace, msq_conv2d_winograd_interleaved_workspace_size(s), &owned);
    if (!ws) { /* out of memory: slow but correct */
        msq_conv2d_backward_weight_ref(dw, dbias, dy, x, s, NULL);
        return;
    }
    float *slices = ws + G.u_floats;
    const int team = omp_in_parallel() ? 1 : omp_get_max_threads();
    const size_t plane_out = (size_t)s->h_out * s->w_out;
    const size_t pairs = (size_t)s->c_out * s->c_in, du_count = 16 * pairs;
    #pragma omp parallel num_threads(team) if (team > 1)
    {
        float *X = slices + (size_t)omp_get_thread_num() * G.slice_floats;
        float *Y = X + G.x_floats, *V = Y + G.y_floats, *D = V + G.v_floats, *dU = D + G.m_floats;
        zero_border(X, s->c_in, G.hp, G.wp, s->pad_h, s->pad_w, s->h_in, s->w_in);
        zero_border(Y, s->c_out, G.ho, G.wo, 0, 0, s->h_out, s->w_out);
        memset(dU, 0, G.u_floats * sizeof(float));
        #pragma omp for schedule(static)
        for (int g = 0; g < G.groups; g++) {
            const int b0 = g * LANES, count = s->n - b0 < LANES ? s->n - b0 : LANES;
            interleave(X, x, s->c_in, s->h_in, s->w_in, G.hp, G.wp, s->pad_h, s->pad_w, b0, count);
            interleave(Y, dy, s->c_out, s->h_out, s->w_out, G.ho, G.wo, 0, 0, b0, count);
            for (long t0 = 0; t0 < G.tiles; t0 += G.chunk) {
                const long tc = G.tiles - t0 < G.chunk ? G.tiles - t0 : G.chunk, cols = tc * LANES;
                transform_input(V, X, s, &G, t0, tc);
                transform_dy(D, Y, s, &G, t0, tc);
                for (int xi = 0; xi < 16; xi++) {
                    const float *dk = D + (size_t)xi * plane_stride(s->c_out, tc);
                    const float *vk = V + (size_t)xi * plane_stride(s->c_in, tc);
                    float *uk = dU + (size_t)xi * s->c_out * s->c_in;
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, s->c_out, s->c_in, (int)cols,
                                1.0f, dk, (int)cols, vk, (int)cols, 1.0f, uk, s->c_in);
                }
            }
        }
        /* dbias: whole output channels per thread, images and pixels in order. */
        if (dbias) {
            #pragma omp for schedule(static) nowait
            for (int co = 0; co < s->c_out; co++) {
                float acc = 0.0f;
                for (int b = 0; b < s->n; b++) {
                    const float *p = dy + ((size_t)b * s->c_out + co) * plane_out;
                    for (size_t i = 0; i < plane_out; i++) acc += p[i];
                }
                dbias[co] += acc;
            }
        }
        /* The partials in thread order into thread 0's (the groups loop's barrier has passed),
           then every weight pair from its 16 sums. */
        const int nt = omp_get_num_threads();
        float *du0 = slices + G.x_floats + G.y_floats + G.v_floats + G.m_floats;
        for (int t = 1; t < nt; t++) {
            const float *p = du0 + (size_t)t * G.slice_floats;
            #pragma omp for schedule(static)
            for (size_t i = 0; i < du_count; i++) du0[i] += p[i];
        }
        #pragma omp for schedule(static)
        for (size_t k = 0; k < pairs; k++) weights_from_du(dw, du0, s, k);
    }
    free(owned);
}
