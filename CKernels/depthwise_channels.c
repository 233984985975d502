/* depthwise_channels.c — depthwise convolution with 8 channels per vector, for square 3×3 and 5×5
 * filters at stride 1 and 2 (every depthwise layer of MobileNetV3). depthwise.c dispatches here.
 *
 * Vectorised along a row (depthwise.c's `gather`), a 7- or 14-wide plane wastes lanes, and every
 * tap of every output vector costs one load, which bounds the small planes (bench/README,
 * "Depthwise kernels"). Vectorised across channels instead, every lane is a real output and
 * loads can be shared: a thread takes 8 channels of one image, transposes them into a zero-padded,
 * interleaved copy in8[row][col][8 channels], and computes each output row in blocks of BLOCK = 7
 * outputs (7 divides every MobileNetV3 width). For each filter row, its k weight vectors stay in
 * registers and each input vector of the row, loaded once, feeds every output of the block it
 * reaches: k + s·(BLOCK − 1) + k loads per BLOCK·k multiply-adds, against BLOCK·k. The sums go to
 * an interleaved out8[position][8 channels] and are transposed back into the planes. Where the CPU
 * has AVX-512VL (and msq_set_max_isa allows it), stride-1 rows go two at a time: its 32 vector
 * registers hold both rows' sums and filter rows, which hides the multiply-adds' latency and
 * shares each input load between the rows. Same sums in the same order, so the same bits.
 *
 *     y[b,c,oy,ox] = bias[c] + Σ_ky Σ_kx w[c,ky,kx] · x[b,c, s·oy − p + ky, s·ox − p + kx]
 *
 * summed in that order (ky, then kx), by one thread per output: results do not depend on the
 * thread count. At stride 1 the input gradient is the same sum over dy with the filter turned by
 * 180° and padding k − 1 − p, accumulated into dx. The weight gradient of a 5×5 filter sums
 * dy · x over the same interleaved copies, each group of 8 channels on one thread for all images,
 * a filter row's 5 sums and a block's 7 dy vectors in registers.
 *
 * No -ffast-math (fused multiply-adds, as depthwise.c; not near a quantizer). */
#include "msq_kernels.h"
#include "conv_internal.h"
#include "vector_math.h"
#include <immintrin.h>
#include <omp.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum { LANES = 8, BLOCK = 7 };

/* `team` slices of `per` floats (a multiple of 8, so every slice stays 32-byte aligned), 64-byte
   aligned, or NULL when memory is short. */
static float *team_scratch(size_t per, int team) {
    return aligned_alloc(64, sizeof(float) * ((per * (size_t)team + 15) & ~(size_t)15));
}

/* One plane geometry of the sum above: `src` planes h_in × w_in, `dst` planes h_out × w_out. */
typedef struct dw_plan {
    int n, channels, h_in, w_in, h_out, w_out, k, stride, pad;
    int rows, cols; /* in8's padded rows and columns */
} dw_plan;

static dw_plan make_plan(int n, int channels, int h_in, int w_in, int h_out, int w_out, int k, int stride, int pad) {
    dw_plan p = {n, channels, h_in, w_in, h_out, w_out, k, stride, pad, 0, 0};
    const int blocks = (w_out + BLOCK - 1) / BLOCK;
    /* rows and columns every tap of every (padded-out) output block reads, and the plane itself */
    p.rows = stride * (h_out - 1) + k;
    if (p.rows < h_in + pad) p.rows = h_in + pad;
    p.cols = stride * (blocks * BLOCK - 1) + k;
    if (p.cols < w_in + pad) p.cols = w_in + pad;
    return p;
}

int msq_depthwise_channels_eligible(const msq_conv2d_shape *s) {
    return s->kh == s->kw && (s->kh == 3 || s->kh == 5) && s->stride_h == s->stride_w
        && (s->stride_h == 1 || s->stride_h == 2) && s->pad_h == s->pad_w;
}

int msq_depthwise_channels_input_eligible(const msq_conv2d_shape *s) {
    return msq_depthwise_channels_eligible(s) && s->stride_h == 1 && s->pad_h <= s->kh - 1;
}

/* r[i][j] -> r[j][i] for an 8×8 block held as 8 row vectors. */
static inline void transpose8(__m256 r[8]) {
    const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
    const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
    const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
    const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
    const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    r[0] = _mm256_permute2f128_ps(u0, u4, 0x20);
    r[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
    r[2] = _mm256_permute2f128_ps(u2, u6, 0x20);
    r[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
    r[4] = _mm256_permute2f128_ps(u0, u4, 0x31);
    r[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
    r[6] = _mm256_permute2f128_ps(u2, u6, 0x31);
    r[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
}

/* r[j][l] = src[l·plane + j] (j, l < 8): transpose8 of 8 rows, with the rows loaded in 4-float
   halves so that the last shuffle stage (vperm2f128) becomes part of the loads. */
static inline void columns8(__m256 r[8], const float *src, size_t plane) {
    __m256 h[8];
    for (int q = 0; q < 2; q++)     /* positions 4q … 4q + 3 */
        for (int l = 0; l < 4; l++) /* channels l and l + 4 */
            h[4 * q + l] = _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(src + (size_t)l * plane + 4 * q)),
                                                _mm_loadu_ps(src + (size_t)(l + 4) * plane + 4 * q), 1);
    for (int q = 0; q < 2; q++) {
        const __m256 t0 = _mm256_unpacklo_ps(h[4 * q], h[4 * q + 1]), t1 = _mm256_unpackhi_ps(h[4 * q], h[4 * q + 1]);
        const __m256 t2 = _mm256_unpacklo_ps(h[4 * q + 2], h[4 * q + 3]), t3 = _mm256_unpackhi_ps(h[4 * q + 2], h[4 * q + 3]);
        r[4 * q] = _mm256_shuffle_ps(t0, t2, 0x44);
        r[4 * q + 1] = _mm256_shuffle_ps(t0, t2, 0xEE);
        r[4 * q + 2] = _mm256_shuffle_ps(t1, t3, 0x44);
        r[4 * q + 3] = _mm256_shuffle_ps(t1, t3, 0xEE);
    }
}

/* in8[(iy + pad)·cols + ix + pad][l] = src[l·plane + iy·w_in + ix] for the nc ≤ 8 channels of one
   image's group (0 in the lanes past nc). The planes are read 8 positions at a time, flat, so a
   7-wide row costs no partial load; the margins of in8 are not touched (zero for the whole call). */
static void fill(float *restrict in8, const float *src, size_t plane, int nc, const dw_plan *p) {
    const int total = p->h_in * p->w_in;
    const size_t skip = (size_t)(p->cols - p->w_in) * LANES; /* from a row's end to the next row's start */
    float *to = in8 + ((size_t)p->pad * p->cols + p->pad) * LANES;
    int ix = 0;
    for (int at = 0; at < total; at += LANES) {
        const int n = total - at < LANES ? total - at : LANES;
        __m256 r[LANES];
        if (n == LANES && nc == LANES) {
            columns8(r, src + at, plane);
        } else {
            for (int l = 0; l < LANES; l++) {
                const float *from = src + (size_t)l * plane + at;
                r[l] = l >= nc ? _mm256_setzero_ps()
                     : n == LANES ? _mm256_loadu_ps(from) : _mm256_maskload_ps(from, msq_lanes_below(n));
            }
            transpose8(r);
        }
        for (int j = 0; j < LANES; j++) {
            if (j >= n) break;
            _mm256_store_ps(to, r[j]);
            to += LANES;
            if (++ix == p->w_in) {
                ix = 0;
                to += skip;
            }
        }
    }
}

/* dst[l·plane + j] (+)= v8[j][l] (j, l < 8), the inverse of columns8: the rows are stored in
   4-float halves, so the last shuffle stage becomes part of the stores (and a store splits a cache
   line less often). */
static inline void rows8(float *dst, size_t plane, const float *v8, int accumulate) {
    for (int q = 0; q < 2; q++) { /* positions 4q … 4q + 3 */
        const float *v = v8 + (size_t)4 * q * LANES;
        const __m256 p0 = _mm256_load_ps(v), p1 = _mm256_load_ps(v + 8), p2 = _mm256_load_ps(v + 16), p3 = _mm256_load_ps(v + 24);
        const __m256 u0 = _mm256_unpacklo_ps(p0, p1), u1 = _mm256_unpackhi_ps(p0, p1);
        const __m256 u2 = _mm256_unpacklo_ps(p2, p3), u3 = _mm256_unpackhi_ps(p2, p3);
        /* h[l] = channel l's 4 positions | channel l + 4's */
        const __m256 h[4] = {_mm256_shuffle_ps(u0, u2, 0x44), _mm256_shuffle_ps(u0, u2, 0xEE),
                             _mm256_shuffle_ps(u1, u3, 0x44), _mm256_shuffle_ps(u1, u3, 0xEE)};
        for (int l = 0; l < 4; l++) {
            float *lo = dst + (size_t)l * plane + 4 * q, *hi = dst + (size_t)(l + 4) * plane + 4 * q;
            __m128 a = _mm256_castps256_ps128(h[l]), b = _mm256_extractf128_ps(h[l], 1);
            if (accumulate) {
                a = _mm_add_ps(_mm_loadu_ps(lo), a);
                b = _mm_add_ps(_mm_loadu_ps(hi), b);
            }
            _mm_storeu_ps(lo, a);
            _mm_storeu_ps(hi, b);
        }
    }
}

/* dst[l·plane + q] (+)= out8[q][l] for the nc channels, q over the h_out·w_out positions. */
static void drain(float *dst, size_t plane, int nc, const float *restrict out8, const dw_plan *p, int accumulate) {
    const int total = p->h_out * p->w_out;
    for (int at = 0; at < total; at += LANES) {
        const int n = total - at < LANES ? total - at : LANES;
        if (n == LANES && nc == LANES) {
            rows8(dst + at, plane, out8 + (size_t)at * LANES, accumulate);
            continue;
        }
        __m256 r[LANES];
        for (int j = 0; j < LANES; j++)
            r[j] = j < n ? _mm256_load_ps(out8 + (size_t)(at + j) * LANES) : _mm256_setzero_ps();
        transpose8(r);
        for (int l = 0; l < LANES; l++) {
            if (l >= nc) break;
            float *to = dst + (size_t)l * plane + at;
            if (n == LANES) {
                _mm256_storeu_ps(to, accumulate ? _mm256_add_ps(_mm256_loadu_ps(to), r[l]) : r[l]);
            } else { /* lane by lane: a masked store (vmaskmovps) costs tens of cycles on AMD's cores */
                float lane[LANES];
                _mm256_storeu_ps(lane, r[l]);
                #pragma clang loop vectorize(disable) /* else clang emits the masked store */
                for (int q = 0; q < n; q++) to[q] = accumulate ? to[q] + lane[q] : lane[q];
            }
        }
    }
}

/* a[u] += Σ_kx wa[kx] · row[S·u + kx] (u < BLOCK, kx < K, vectors of 8 channels): one filter row
   over one input row; with `pair`, also b[u] += Σ_kx wb[kx] · row[S·u + kx], a second output row
   that reads the same input row through another filter row, each input vector loaded once for
   both. Inlined with constant K, S and pair, so the loops unroll and the sums, the weights and the
   input vector in flight stay in registers. */
static inline __attribute__((always_inline)) void row_taps(__m256 a[BLOCK], __m256 b[BLOCK], const float *restrict row,
                                                           const float *restrict wa, const float *restrict wb,
                                                           const int K, const int S, const int pair) {
    __m256 ka[5], kb[5];
    #pragma clang loop unroll(full)
    for (int kx = 0; kx < K; kx++) {
        ka[kx] = _mm256_load_ps(wa + (size_t)kx * LANES);
        if (pair) kb[kx] = _mm256_load_ps(wb + (size_t)kx * LANES);
    }
    #pragma clang loop unroll(full)
    for (int i = 0; i < S * (BLOCK - 1) + K; i++) {
        const __m256 v = _mm256_load_ps(row + (size_t)i * LANES);
        #pragma clang loop unroll(full)
        for (int kx = 0; kx < K; kx++) {
            const int d = i - kx;
            if (d >= 0 && d % S == 0 && d / S < BLOCK) {
                a[d / S] = _mm256_fmadd_ps(ka[kx], v, a[d / S]);
                if (pair) b[d / S] = _mm256_fmadd_ps(kb[kx], v, b[d / S]);
            }
        }
    }
}

static inline __attribute__((always_inline)) void store_block(float *restrict o, const __m256 acc[BLOCK], int n) {
    #pragma clang loop unroll(full)
    for (int u = 0; u < BLOCK; u++)
        if (u < n) _mm256_store_ps(o + (size_t)u * LANES, acc[u]);
}

/* out8[oy·w_out + ox] = b8 + Σ_ky Σ_kx w8[ky·K + kx] · in8[S·oy + ky][S·ox + kx], in blocks of
   BLOCK outputs, for output rows [oy0, h_out), one row at a time. */
static inline __attribute__((always_inline)) void rows(float *restrict out8, const float *restrict in8,
                                                       const float *restrict w8, const float *restrict b8,
                                                       const dw_plan *p, int oy0, const int K, const int S) {
    const __m256 b = _mm256_load_ps(b8);
    for (int oy = oy0; oy < p->h_out; oy++) {
        for (int x0 = 0; x0 < p->w_out; x0 += BLOCK) {
            __m256 acc[BLOCK];
            #pragma clang loop unroll(full)
            for (int u = 0; u < BLOCK; u++) acc[u] = b;
            for (int ky = 0; ky < K; ky++)
                row_taps(acc, NULL, in8 + ((size_t)(S * oy + ky) * p->cols + (size_t)S * x0) * LANES, w8 + (size_t)ky * K * LANES,
                         NULL, K, S, 0);
            store_block(out8 + ((size_t)oy * p->w_out + x0) * LANES, acc, p->w_out - x0 < BLOCK ? p->w_out - x0 : BLOCK);
        }
    }
}

/* The same sums (in the same order), two output rows at a time: 2·BLOCK sums and 2·K weights, 25
   vectors, which takes AVX-512VL's 32 registers. Twice the independent sums hide the
   multiply-adds' latency (a block of one row is 25 dependent multiply-adds long at 5×5), and each
   input vector feeds both rows. */
static inline __attribute__((always_inline)) void row_pairs(float *restrict out8, const float *restrict in8,
                                                            const float *restrict w8, const float *restrict b8,
                                                            const dw_plan *p, const int K, const int S) {
    const __m256 bias = _mm256_load_ps(b8);
    int oy = 0;
    for (; oy + 1 < p->h_out; oy += 2) {
        for (int x0 = 0; x0 < p->w_out; x0 += BLOCK) {
            __m256 a[BLOCK], c[BLOCK];
            #pragma clang loop unroll(full)
            for (int u = 0; u < BLOCK; u++) a[u] = c[u] = bias;
            /* input row S·oy + r feeds row oy through filter row r and row oy + 1 through r − S */
            const float *base = in8 + ((size_t)S * oy * p->cols + (size_t)S * x0) * LANES;
            const size_t step = (size_t)p->cols * LANES, wrow = (size_t)K * LANES;
            for (int r = 0; r < S; r++) row_taps(a, NULL, base + r * step, w8 + r * wrow, NULL, K, S, 0);
            for (int r = S; r < K; r++) row_taps(a, c, base + r * step, w8 + r * wrow, w8 + (r - S) * wrow, K, S, 1);
            for (int r = K; r < K + S; r++) row_taps(c, NULL, base + r * step, w8 + (r - S) * wrow, NULL, K, S, 0);
            const int n = p->w_out - x0 < BLOCK ? p->w_out - x0 : BLOCK;
            float *o = out8 + ((size_t)oy * p->w_out + x0) * LANES;
            store_block(o, a, n);
            store_block(o + (size_t)p->w_out * LANES, c, n);
        }
    }
    rows(out8, in8, w8, b8, p, oy, K, S);
}

typedef void (*rows_kernel)(float *, const float *, const float *, const float *, const dw_plan *);

#define DEFINE_KERNELS(K, S)                                                                                    \
    static void rows_k##K##_s##S(float *o, const float *i, const float *w, const float *b, const dw_plan *p) { \
        rows(o, i, w, b, p, 0, K, S);                                                                           \
    }                                                                                                           \
    __attribute__((target("avx512f,avx512vl"))) static void pairs_k##K##_s##S(float *o, const float *i,        \
                                                                              const float *w, const float *b,  \
                                                                              const dw_plan *p) {              \
        row_pairs(o, i, w, b, p, K, S);                                                                         \
    }
DEFINE_KERNELS(3, 1)
DEFINE_KERNELS(5, 1)

static void rows_k3_s2(float *o, const float *i, const float *w, const float *b, const dw_plan *p) { rows(o, i, w, b, p, 0, 3, 2); }
static void rows_k5_s2(float *o, const float *i, const float *w, const float *b, const dw_plan *p) { rows(o, i, w, b, p, 0, 5, 2); }

/* The fastest kernel for the plan on this CPU. At stride 2 a row pair needs 2·BLOCK inputs more
   per input row than fit beside its sums, and was no faster (bench/README, "Depthwise kernels"). */
static rows_kernel kernel_for(const dw_plan *p) {
    if (p->stride == 2) return p->k == 3 ? rows_k3_s2 : rows_k5_s2;
    if (msq_isa_avx512()) return p->k == 3 ? pairs_k3_s1 : pairs_k5_s1;
    return p->k == 3 ? rows_k3_s1 : rows_k5_s1;
}

/* Asks for item `it`'s source planes and destination planes to be brought into cache while this
   item computes. A small item's planes (8 consecutive channels of one image: one run of a few KB
   each) are too short for the hardware prefetchers to pick up in time; a large item's are one
   long stream each, which they follow, and would not fit in L1 anyway. */
__attribute__((target("prfchw"))) static void prefetch_item(const dw_plan *p, const float *src, const float *dst, long it, size_t src_plane, size_t dst_plane) {
    enum { SMALL = 16384 }; /* bytes of one side of an item */
    const int g = (int)(it / p->n), b = (int)(it % p->n), c0 = g * LANES;
    const int nc = p->channels - c0 < LANES ? p->channels - c0 : LANES;
    const size_t first = (size_t)b * p->channels + c0;
    const size_t in_bytes = sizeof(float) * src_plane * (size_t)nc, out_bytes = sizeof(float) * dst_plane * (size_t)nc;
    if (in_bytes > SMALL || out_bytes > SMALL) return;
    const char *from = (const char *)(src + first * src_plane), *to = (const char *)(dst + first * dst_plane);
    for (size_t at = 0; at < in_bytes; at += 64) __builtin_prefetch(from + at, 0, 3);
    for (size_t at = 0; at < out_bytes; at += 64) __builtin_prefetch(to + at, 1, 3);
}

/* dst (+)= the sum above over src, for every image and channel; w[c][k·k] is read turned by 180°
   when `flip`. Returns 0, or -1 (nothing written) when the scratch memory cannot be allocated. */
static int run(float *dst, const float *src, const float *w, const float *bias, const dw_plan *p, int flip, int accumulate) {
    const int kk = p->k * p->k, groups = (p->channels + LANES - 1) / LANES;
    const long items = (long)groups * p->n;
    const size_t in_floats = (size_t)p->rows * p->cols * LANES, out_floats = (size_t)p->h_out * p->w_out * LANES;
    const size_t per = in_floats + out_floats + (size_t)(kk + 1) * LANES; /* multiples of 8 floats: aligned */
    const size_t src_plane = (size_t)p->h_in * p->w_in, dst_plane = (size_t)p->h_out * p->w_out;
    const int team = msq_conv_team_size(items);
    float *all = team_scratch(per, team);
    if (!all) return -1;
    const rows_kernel kernel = kernel_for(p);
    #pragma omp parallel num_threads(team) if (team > 1)
    {
        float *in8 = all + per * (size_t)omp_get_thread_num(), *out8 = in8 + in_floats, *w8 = out8 + out_floats;
        float *b8 = w8 + (size_t)kk * LANES;
        memset(in8, 0, sizeof(float) * in_floats);
        int packed = -1;
        /* group-major, so a thread's items share a group's weights until the group changes */
        #pragma omp for schedule(static)
        for (long it = 0; it < items; it++) {
            const int g = (int)(it / p->n), b = (int)(it % p->n), c0 = g * LANES;
            const int nc = p->channels - c0 < LANES ? p->channels - c0 : LANES;
            if (g != packed) {
                for (int t = 0; t < kk; t++)
                    for (int l = 0; l < LANES; l++)
                        w8[t * LANES + l] = l < nc ? w[(size_t)(c0 + l) * kk + (flip ? kk - 1 - t : t)] : 0.0f;
                for (int l = 0; l < LANES; l++) b8[l] = bias && l < nc && !accumulate ? bias[c0 + l] : 0.0f;
                packed = g;
            }
            const size_t first = (size_t)b * p->channels + c0;
            if (it + 1 < items) prefetch_item(p, src, dst, it + 1, src_plane, dst_plane);
            fill(in8, src + first * src_plane, src_plane, nc, p);
            kernel(out8, in8, w8, b8, p);
            drain(dst + first * dst_plane, dst_plane, nc, out8, p, accumulate);
        }
    }
    free(all);
    return 0;
}

int msq_depthwise_channels_forward(float *y, const float *x, const float *w, const float *bias,
                                   const msq_conv2d_shape *s) {
    const dw_plan p = make_plan(s->n, s->c_in, s->h_in, s->w_in, s->h_out, s->w_out, s->kh, s->stride_h, s->pad_h);
    return run(y, x, w, bias, &p, 0, 0);
}

int msq_depthwise_channels_backward_input(float *dx, const float *dy, const float *w, const msq_conv2d_shape *s) {
    const dw_plan p = make_plan(s->n, s->c_in, s->h_out, s->w_out, s->h_in, s->w_in, s->kh, 1, s->kh - 1 - s->pad_h);
    return run(dx, dy, w, NULL, &p, 1, 1);
}

/* ---- weight gradient: dw[c, ky, kx] += Σ_b Σ_oy,ox dy[b,c,oy,ox] · x[b,c, s·oy − p + ky, s·ox − p + kx] */

/* a[kx] += Σ_u d[u] · row[S·u + kx] over a block of BLOCK outputs, for one filter row's K taps
   (a: K vectors of 8 channels, summed in place). Inlined with constant K and S, so the BLOCK dy
   vectors, the K sums and the input vector in flight stay in registers. */
static inline __attribute__((always_inline)) void tap_row(float *restrict a8, const float *restrict d8,
                                                          const float *restrict row, const int K, const int S) {
    __m256 a[5], d[BLOCK];
    #pragma clang loop unroll(full)
    for (int kx = 0; kx < K; kx++) a[kx] = _mm256_load_ps(a8 + (size_t)kx * LANES);
    #pragma clang loop unroll(full)
    for (int u = 0; u < BLOCK; u++) d[u] = _mm256_load_ps(d8 + (size_t)u * LANES);
    #pragma clang loop unroll(full)
    for (int i = 0; i < S * (BLOCK - 1) + K; i++) {
        const __m256 v = _mm256_load_ps(row + (size_t)i * LANES);
        #pragma clang loop unroll(full)
        for (int kx = 0; kx < K; kx++) {
            const int e = i - kx;
            if (e >= 0 && e % S == 0 && e / S < BLOCK) a[kx] = _mm256_fmadd_ps(d[e / S], v, a[kx]);
        }
    }
    #pragma clang loop unroll(full)
    for (int kx = 0; kx < K; kx++) _mm256_store_ps(a8 + (size_t)kx * LANES, a[kx]);
}

/* acc8[t] += the taps' sums over one image's interleaved planes: in8 (the padded input, plan p)
   and d8 (dy, rows of `dcols` positions, zero past w_out). Taps in order, then rows, then blocks. */
static inline __attribute__((always_inline)) void image_taps(float *restrict acc8, const float *restrict in8,
                                                             const float *restrict d8, int dcols, const dw_plan *p,
                                                             const int K, const int S) {
    for (int ky = 0; ky < K; ky++)
        for (int oy = 0; oy < p->h_out; oy++)
            for (int x0 = 0; x0 < p->w_out; x0 += BLOCK)
                tap_row(acc8 + (size_t)ky * K * LANES, d8 + ((size_t)oy * dcols + x0) * LANES,
                        in8 + ((size_t)(S * oy + ky) * p->cols + (size_t)S * x0) * LANES, K, S);
}

typedef void (*taps_kernel)(float *, const float *, const float *, int, const dw_plan *);
#define DEFINE_TAPS(K, S)                                                                                   \
    static void taps_k##K##_s##S(float *a, const float *i, const float *d, int dc, const dw_plan *p) {     \
        image_taps(a, i, d, dc, p, K, S);                                                                  \
    }
DEFINE_TAPS(5, 1)
DEFINE_TAPS(5, 2)

/* 5×5 only: a 3×3 filter row gives 3 sums, 3 chains of dependent multiply-adds too few to hide
   their latency, and depthwise.c's tap blocks ran the 3×3 layers faster (bench/README,
   "Depthwise kernels"). */
int msq_depthwise_channels_weight_eligible(const msq_conv2d_shape *s) {
    return msq_depthwise_channels_eligible(s) && s->kh == 5;
}

/* Each group of 8 channels belongs to one thread for every image, so its sums run in one fixed order
   (images, then taps, rows, blocks) at any thread count. */
int msq_depthwise_channels_backward_weight(float *dw, float *dbias, const float *dy, const float *x,
                                           const msq_conv2d_shape *s) {
    const dw_plan p = make_plan(s->n, s->c_in, s->h_in, s->w_in, s->h_out, s->w_out, s->kh, s->stride_h, s->pad_h);
    const int K = p.k, kk = K * K, groups = (p.channels + LANES - 1) / LANES;
    const int dcols = (p.w_out + BLOCK - 1) / BLOCK * BLOCK;
    /* dy as fill() writes it: h_out rows of dcols positions, no padding */
    dw_plan g = p;
    g.h_in = p.h_out, g.w_in = p.w_out, g.pad = 0, g.rows = p.h_out, g.cols = dcols;
    const size_t in_floats = (size_t)p.rows * p.cols * LANES, d_floats = (size_t)p.h_out * dcols * LANES;
    const size_t per = in_floats + d_floats + (size_t)(kk + 1) * LANES;
    const size_t x_plane = (size_t)p.h_in * p.w_in, dy_plane = (size_t)p.h_out * p.w_out;
    const int team = msq_conv_team_size(groups);
    float *all = team_scratch(per, team);
    if (!all) return -1;
    if (K != 5) return -1;
    const taps_kernel kernel = p.stride == 1 ? taps_k5_s1 : taps_k5_s2;
    #pragma omp parallel num_threads(team) if (team > 1)
    {
        float *in8 = all + per * (size_t)omp_get_thread_num(), *d8 = in8 + in_floats, *acc = d8 + d_floats;
        memset(in8, 0, sizeof(float) * (in_floats + d_floats));
        #pragma omp for schedule(static)
        for (int gi = 0; gi < groups; gi++) {
            const int c0 = gi * LANES, nc = p.channels - c0 < LANES ? p.channels - c0 : LANES;
            memset(acc, 0, sizeof(float) * (size_t)(kk + 1) * LANES);
            for (int b = 0; b < p.n; b++) {
                const size_t first = (size_t)b * p.channels + c0;
                fill(in8, x + first * x_plane, x_plane, nc, &p);
                fill(d8, dy + first * dy_plane, dy_plane, nc, &g);
                kernel(acc, in8, d8, dcols, &p);
                __m256 bsum = _mm256_load_ps(acc + (size_t)kk * LANES);
                for (size_t q = 0; q < (size_t)p.h_out * dcols; q++) bsum = _mm256_add_ps(bsum, _mm256_load_ps(d8 + q * LANES));
                _mm256_store_ps(acc + (size_t)kk * LANES, bsum);
            }
            for (int l = 0; l < nc; l++) {
                for (int t = 0; t < kk; t++) dw[(size_t)(c0 + l) * kk + t] += acc[(size_t)t * LANES + l];
                if (dbias) dbias[c0 + l] += acc[(size_t)kk * LANES + l];
            }
        }
    }
    free(all);
    return 0;
}

