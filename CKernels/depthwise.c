/* depthwise.c — depthwise convolution (groups == c_in == c_out: one kh x kw filter per channel)
 * computed directly, plane by plane, without im2col + GEMM.
 *
 * Square 3×3 and 5×5 filters at stride 1 and 2 (every MobileNetV3 layer) go to
 * depthwise_channels.c, which vectorises across 8 channels instead of along a row: the forward
 * always, the input gradient at stride 1, the weight gradient of 5×5 filters. What follows serves
 * everything else (other filters and strides, the stride-2 input gradient, the 3×3 weight
 * gradient) and any call whose scratch memory depthwise_channels.c could not allocate.
 *
 *     forward          y[b,c,oy,ox]  = bias[c] + Σ_ky,kx w[c,ky,kx] · x[b,c, oy·sh − ph + ky, ox·sw − pw + kx]
 *     backward input   dx[b,c,iy,ix] += Σ w[c,ky,kx] · dy[b,c,oy,ox]   over every (oy,ox,ky,kx) reading (iy,ix)
 *     backward weight  dw[c,ky,kx]  += Σ_b Σ_oy,ox dy[b,c,oy,ox] · x[b,c, oy·sh − ph + ky, ox·sw − pw + kx]
 *                      dbias[c]     += Σ_b Σ_oy,ox dy[b,c,oy,ox]
 *
 * A depthwise layer does only kh·kw multiply-adds per output, so at vector speed its large planes
 * are bound by DRAM and its small ones (which sit in cache) by the one load per tap per output
 * vector (bench/README, "Depthwise kernels"). Two things stop vector speed on MobileNetV3's
 * planes (7 to 112 pixels wide): the padding (a tap near the border reads outside the plane) and the
 * stride (stride 2 reads every other column). Both go away in a per-thread copy of the plane that
 * is zero-padded and split into column phases (`phased`): phase f holds padded columns f, f + sw,
 * f + 2·sw, …, so every tap of every output is a contiguous, in-bounds 8-float load. Then one
 * routine (`gather`) computes the forward and the input gradient as "init + Σ over taps of
 * w_t · src[o_t + …]" on 8 outputs per vector, 8 vectors at a time so that 8 independent fused
 * multiply-add chains hide the latency and share each tap's broadcast weight:
 *
 *   - forward: the taps of the filter over the phased input;
 *   - backward input, as a gather (no overlapping stores): output column ix + pw = sw·j + f and
 *     row iy + ph = sh·i + g receive exactly the taps kx ≡ f (mod sw), ky ≡ g (mod sh), from
 *     dy[i − (ky − g)/sh, j − (kx − f)/sw], contiguous in j over a zero-padded copy of dy;
 *   - backward weight (`tap_block`): per block of up to 9 taps, each dy vector loaded once and
 *     fused with every tap's shifted input.
 *
 * Small planes (7×7, 14×14) have too few outputs to amortise a call's set-up, so the images of one
 * channel, which share its filter, are stacked: one gather runs over up to 64 KB of padded planes.
 *
 * Sums run in a fixed order that depends only on the shape: every direction splits the channels
 * over threads (each output written, and each channel's weight gradient summed over the images in
 * order, by one thread), so every result is independent of the thread count. No -ffast-math (fused
 * multiply-adds, as direct.c; not near a quantizer). No workspace: each call allocates its threads'
 * scratch (a few padded planes each) once, and falls back to the reference kernel if it cannot. */
#include "msq_kernels.h"
#include "conv_internal.h"
#include "vector_math.h"
#include <immintrin.h>
#include <omp.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int msq_conv2d_depthwise_eligible(const msq_conv2d_shape *s) {
    return s->groups > 1 && s->groups == s->c_in && s->groups == s->c_out;
}

static int round8(int v) { return (v + 7) & ~7; }
static int vectors(int n) { return (n + 7) / 8; }

/* Floats rounded up to whole 64-byte lines, so per-thread slices of one block stay aligned. */
static size_t line_floats(size_t count) { return (count + 15) & ~(size_t)15; }

/* `team` 64-byte aligned slices of `per` floats (a multiple of 16) and of `offs` offsets, or
   nothing (both NULL) when memory is short. */
static int scratch(float **floats, ptrdiff_t **offsets, size_t per, size_t offs, int team) {
    *floats = aligned_alloc(64, sizeof(float) * per * (size_t)team);
    *offsets = malloc(sizeof(ptrdiff_t) * (offs ? offs : 1) * (size_t)team);
    if (*floats && *offsets) return 1;
    free(*floats);
    free(*offsets);
    *floats = NULL;
    *offsets = NULL;
    return 0;
}

/* A zero-padded copy of one plane split into `phases` column phases: phase f, row r, column j
   holds src[r − top][phases·j + f − left] (0 outside the plane). `cols` is a multiple of 8 and
   leaves room for a full vector past the last column any tap reads. The margins are the same for
   every plane of a call, so each thread zeroes its buffers once and `phase_fill` writes only the
   plane's own columns (a memset per row cost as much as the convolution on 7×7 planes). */
typedef struct phased {
    float *data;
    int phases, rows, cols;
} phased;

/* Floats a phased buffer needs, with a vector of slack for phase_fill's last full-vector store. */
static size_t phase_floats(const phased *p) { return (size_t)p->phases * p->rows * p->cols + 8; }

/* The lanes of a masked load of the n floats from index i of a row of w (0 to 8). */
static __m256 load_row(const float *row, int i, int w) {
    const int n = w - i;
    return n >= 8 ? _mm256_loadu_ps(row + i) : _mm256_maskload_ps(row + i, msq_lanes_below(n > 0 ? n : 0));
}

/* Stride 2: one pass over each source row deals its even columns to one phase and its odd
   columns to the other (column c lands in phase (c + left) mod 2 at j = (c + left) / 2), 16
   columns per step. */
static void phase_fill2(const phased *p, const float *src, int h, int w, int top, int left) {
    const int r_hi = top + h < p->rows ? top + h : p->rows;
    const int even_phase = left & 1, even_j = left >> 1, odd_j = (left + 1) >> 1;
    for (int r = top; r < r_hi; r++) {
        const float *restrict row = src + (size_t)(r - top) * w;
        float *restrict e = p->data + ((size_t)even_phase * p->rows + r) * p->cols + even_j;
        float *restrict o = p->data + ((size_t)(1 - even_phase) * p->rows + r) * p->cols + odd_j;
        for (int c = 0; c < w; c += 16) {
            const __m256 v0 = load_row(row, c, w), v1 = load_row(row, c + 8, w);
            const __m256 evens = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(v0, v1, 0x88)), 0xD8));
            const __m256 odds = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(v0, v1, 0xDD)), 0xD8));
            _mm256_storeu_ps(e + c / 2, evens);
            _mm256_storeu_ps(o + c / 2, odds);
        }
    }
}

/* Writes the plane's own columns; the margins stay zero. Rows are as wide
   as the plane needs plus a vector (input_layout), so the full-vector stores below, whose lanes
   past the plane are zeros from masked loads, stay in their row's right margin. */
static void phase_fill(const phased *p, const float *src, int h, int w, int top, int left) {
    const int s = p->phases;
    if (s == 2) {
        phase_fill2(p, src, h, w, top, left);
        return;
    }
    const int r_hi = top + h < p->rows ? top + h : p->rows;
    for (int f = 0; f < s; f++) {
        /* columns j with 0 <= s·j + f − left < w */
        const int last = w - 1 + left - f;
        const int lo = left > f ? (left - f + s - 1) / s : 0, hi = last < 0 ? 0 : last / s + 1; /* exclusive */
        if (lo >= hi) continue;
        for (int r = top; r < r_hi; r++) {
            float *restrict dst = p->data + ((size_t)f * p->rows + r) * p->cols + lo;
            const float *restrict row = src + (size_t)(r - top) * w + (s * lo + f - left);
            const int n = hi - lo;
            if (s == 1) {
                for (int j = 0; j < n; j += 8) _mm256_storeu_ps(dst + j, load_row(row, j, n));
            } else {
                for (int j = 0; j < n; j++) dst[j] = row[s * j];
            }
        }
    }
}

/* The taps of one sum: weight w_t at offset off_t (floats) from an output's base in the source. */
typedef struct taps {
    int n;
    float *w;
    ptrdiff_t *off;
} taps;

/* A position in the items of stacked planes: plane, row, 8-float vector; row-major in each plane. */
typedef struct walk {
    int pl, r, v;
} walk;

static inline void walk_step(walk *k, int rows, int nv) {
    if (++k->v == nv) {
        k->v = 0;
        if (++k->r == rows) {
            k->r = 0;
            ++k->pl;
        }
    }
}

/* Where gather writes: plane pl, row r starts at out + pl·plane_stride + r·stride; the first `width`
   floats of each of the `rows` rows are the outputs. A plane's rows are stored in order, so a full
   vector past a row's end only writes what a later row of the same plane overwrites (or the gap
   between rows); only a vector that would pass the plane's last row is copied lane by lane (a
   masked store, vmaskmovps, costs tens of cycles on AMD's cores). */
typedef struct rows_out {
    float *out;
    ptrdiff_t stride, plane_stride;
    int width, rows;
    /* 0: out = the sums; 1: out += the sums (each vector starts from out's values, and the lanes
       past a row's end are stored back unchanged, since a later row has not been written yet) */
    int accumulate;
} rows_out;

/* out's current values at item k (lanes past the plane's last float read as 0). */
static inline __m256 load_item(const rows_out *o, walk k) {
    const ptrdiff_t at = (ptrdiff_t)k.r * o->stride + 8 * k.v, end = (ptrdiff_t)(o->rows - 1) * o->stride + o->width;
    const float *p = o->out + (ptrdiff_t)k.pl * o->plane_stride + at;
    const int left = o->width - 8 * k.v;
    return left >= 8 || at + 8 <= end ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, msq_lanes_below(left));
}

static inline void store_item(const rows_out *o, walk k, __m256 a) {
    const ptrdiff_t at = (ptrdiff_t)k.r * o->stride + 8 * k.v, end = (ptrdiff_t)(o->rows - 1) * o->stride + o->width;
    float *p = o->out + (ptrdiff_t)k.pl * o->plane_stride + at;
    const int left = o->width - 8 * k.v;
    if (left >= 8) {
        _mm256_storeu_ps(p, a);
    } else if (at + 8 <= end) {
        if (o->accumulate) a = _mm256_blendv_ps(_mm256_loadu_ps(p), a, _mm256_castsi256_ps(msq_lanes_below(left)));
        _mm256_storeu_ps(p, a);
    } else {
        float lanes[8];
        _mm256_storeu_ps(lanes, a);
        for (int l = 0; l < left; l++) p[l] = lanes[l];
    }
}

/* For every item (pl, r, v) of `planes` stacked planes of o->rows rows and ⌈o->width / 8⌉ vectors:
   8 lanes = init (or, with o->accumulate, out's value) + Σ_t w_t · src[pl·plane_step + r·row_step +
   8·v + off_t + lane], taps in order.
   Eight items at a time: eight independent sums hide the fused multiply-adds' latency and share
   each tap's broadcast weight. The last group repeats its last item to fill up (and stores only
   the real ones). */
static void gather(const rows_out *o, const float *src, ptrdiff_t row_step, ptrdiff_t plane_step, int planes,
                   const taps *t, float init) {
    enum { G = 8 };
    const int nv = vectors(o->width), items = planes * o->rows * nv;
    const __m256 b = _mm256_set1_ps(init);
    walk at = {0, 0, 0};
    for (int i = 0; i < items; i += G) {
        const int real = items - i < G ? items - i : G;
        const float *p[G];
        walk k[G];
        for (int u = 0; u < G; u++) {
            if (u < real) {
                k[u] = at;
                p[u] = src + (ptrdiff_t)at.pl * plane_step + (ptrdiff_t)at.r * row_step + 8 * at.v;
                walk_step(&at, o->rows, nv);
            } else {
                p[u] = p[real - 1];
            }
        }
        __m256 a0 = b, a1 = b, a2 = b, a3 = b, a4 = b, a5 = b, a6 = b, a7 = b;
        if (o->accumulate) {
            __m256 from[G];
            for (int u = 0; u < G; u++) from[u] = u < real ? load_item(o, k[u]) : b;
            a0 = from[0], a1 = from[1], a2 = from[2], a3 = from[3], a4 = from[4], a5 = from[5], a6 = from[6], a7 = from[7];
        }
        const float *p0 = p[0], *p1 = p[1], *p2 = p[2], *p3 = p[3], *p4 = p[4], *p5 = p[5], *p6 = p[6], *p7 = p[7];
        for (int j = 0; j < t->n; j++) {
            const __m256 wv = _mm256_broadcast_ss(t->w + j);
            const ptrdiff_t off = t->off[j];
            a0 = _mm256_fmadd_ps(wv, _mm256_loadu_ps(p0 + off), a0);
            a1 = _mm256_fmadd_ps(wv, _mm256_loadu_ps(p1 + off), a1);
            a2 = _mm256_fmadd_ps(wv, _mm256_loadu_ps(p2 + off), a2);
            a3 = _mm256_fmadd_ps(wv, _mm256_loadu_ps(p3 + off), a3);
            a4 = _mm256_fmadd_ps(wv, _mm256_loadu_ps(p4 + off), a4);
            a5 = _mm256_fmadd_ps(wv, _mm256_loadu_ps(p5 + off), a5);
            a6 = _mm256_fmadd_ps(wv, _mm256_loadu_ps(p6 + off), a6);
            a7 = _mm256_fmadd_ps(wv, _mm256_loadu_ps(p7 + off), a7);
        }
        const __m256 a[G] = {a0, a1, a2, a3, a4, a5, a6, a7};
        for (int u = 0; u < real; u++) store_item(o, k[u], a[u]);
    }
}

/* The input plane as the forward and the weight gradient read it: padded by (ph, pw), phased by sw,
   with rows for every output row's taps and columns for every output vector's taps. */
static phased input_layout(const msq_conv2d_shape *s) {
    phased p;
    p.phases = s->stride_w;
    p.rows = s->stride_h * (s->h_out - 1) + s->kh;
    if (p.rows < s->h_in + s->pad_h) p.rows = s->h_in + s->pad_h;
    /* every tap of every output vector, and every column of the plane plus a vector (phase_fill) */
    const int taps = 8 * vectors(s->w_out) + (s->kw - 1) / s->stride_w + 1;
    const int plane = (s->w_in + s->pad_w + s->stride_w - 1) / s->stride_w + 8;
    p.cols = round8(taps > plane ? taps : plane);
    p.data = NULL;
    return p;
}

/* Tap (ky, kx)'s offset from output (oy, ox)'s base in the phased input (base = row sh·oy, column ox). */
static void input_offsets(ptrdiff_t *off, const msq_conv2d_shape *s, const phased *p) {
    for (int ky = 0; ky < s->kh; ky++)
        for (int kx = 0; kx < s->kw; kx++)
            off[ky * s->kw + kx] = ((ptrdiff_t)(kx % p->phases) * p->rows + ky) * p->cols + kx / p->phases;
}

/* Asks for the planes of channel c of images b0 … b0 + nb − 1 (planes of `plane` floats, `channels`
   per image) to be brought into cache. A thread walks the channels in order and reads each
   channel's planes from nb places a whole image apart, a pattern the hardware prefetchers do not
   follow: this asks one channel ahead. Only for stacked (small) planes: a large plane is one
   sequential stream the hardware follows, and would not fit in L1 anyway. */
static void prefetch_planes(const float *t, int b0, int nb, int c, int channels, size_t plane) {
    for (int j = 0; j < nb; j++) {
        const char *at = (const char *)(t + ((size_t)(b0 + j) * channels + c) * plane);
        for (size_t byte = 0; byte < plane * sizeof(float); byte += 64) _mm_prefetch(at + byte, _MM_HINT_T0);
    }
}

/* How many images' planes of `floats` each one thread stacks: about 64 KB, at least 1, at most n. */
static int stack_count(size_t floats, int n) {
    const size_t fit = 16384 / (floats ? floats : 1);
    return fit < 1 ? 1 : (fit > (size_t)n ? n : (int)fit);
}

/* x[n,c,h_in,w_in], w[c,1,kh,kw], bias[c] or NULL -> y[n,c,h_out,w_out] (overwritten). */
void msq_conv2d_depthwise_forward(float *y, const float *x, const float *w, const float *bias,
                                  const msq_conv2d_shape *s) {
    if (msq_depthwise_channels_eligible(s) && msq_depthwise_channels_forward(y, x, w, bias, s) == 0) return;
    const int kk = s->kh * s->kw, channels = s->c_in;
    const size_t in_plane = (size_t)s->h_in * s->w_in, out_plane = (size_t)s->h_out * s->w_out;
    const phased layout = input_layout(s);
    const size_t pf = phase_floats(&layout);
    const int stack = stack_count(pf, s->n), team = msq_conv_team_size(channels);
    const size_t per = line_floats(pf * stack + kk);
    float *all;
    ptrdiff_t *offs;
    if (!scratch(&all, &offs, per, kk, team)) {
        msq_conv2d_forward_ref(y, x, w, bias, s, NULL); /* out of memory: slow but right */
        return;
    }
    #pragma omp parallel num_threads(team) if (team > 1)
    {
        const int id = omp_get_thread_num();
        float *planes = all + per * (size_t)id;
        phased p = layout;
        p.data = planes;
        taps t = {kk, planes + pf * stack, offs + (size_t)kk * id};
        input_offsets(t.off, s, &p);
        memset(planes, 0, sizeof(float) * pf * stack);
        #pragma omp for schedule(static)
        for (int c = 0; c < channels; c++) {
            memcpy(t.w, w + (size_t)c * kk, sizeof(float) * (size_t)kk);
            for (int b0 = 0; b0 < s->n; b0 += stack) {
                const int nb = s->n - b0 < stack ? s->n - b0 : stack;
                for (int j = 0; j < nb; j++) {
                    p.data = planes + pf * j;
                    phase_fill(&p, x + ((size_t)(b0 + j) * channels + c) * in_plane, s->h_in, s->w_in, s->pad_h, s->pad_w);
                }
                if (stack > 1 && c + 1 < channels) prefetch_planes(x, b0, nb, c + 1, channels, in_plane);
                const rows_out o = {y + ((size_t)b0 * channels + c) * out_plane, s->w_out,
                                    (ptrdiff_t)(channels * out_plane), s->w_out, s->h_out, 0};
                gather(&o, planes, (ptrdiff_t)s->stride_h * layout.cols, (ptrdiff_t)pf, nb, &t, bias ? bias[c] : 0.0f);
            }
        }
    }
    free(all);
    free(offs);
}

/* dy[n,c,h_out,w_out], w[c,1,kh,kw] -> dx[n,c,h_in,w_in] (accumulated). */
void msq_conv2d_depthwise_backward_input(float *dx, const float *dy, const float *w, const msq_conv2d_shape *s) {
    if (msq_depthwise_channels_input_eligible(s) && msq_depthwise_channels_backward_input(dx, dy, w, s) == 0) return;
    const int sh = s->stride_h, sw = s->stride_w, kk = s->kh * s->kw, channels = s->c_in;
    const int top = (s->kh - 1) / sh, left = (s->kw - 1) / sw;
    /* Output row iy + ph = sh·i + g and column ix + pw = sw·j + f; i ≤ imax, j ≤ jmax. */
    const int imax = (s->h_in - 1 + s->pad_h) / sh, jmax = (s->w_in - 1 + s->pad_w) / sw;
    phased layout;
    layout.phases = 1;
    layout.rows = (imax + top + 1 > s->h_out + top) ? imax + top + 1 : s->h_out + top;
    layout.cols = round8((jmax + 1 > s->w_out ? jmax + 1 : s->w_out) + left + 8); /* reads, and phase_fill's vector */
    layout.data = NULL;
    const size_t pf = phase_floats(&layout), qf = (size_t)(imax + 1) * round8(jmax + 1);
    const size_t in_plane = (size_t)s->h_in * s->w_in, out_plane = (size_t)s->h_out * s->w_out;
    const int stack = stack_count(pf + qf, s->n), team = msq_conv_team_size(channels);
    const size_t per = line_floats((pf + qf) * stack + kk);
    float *all;
    ptrdiff_t *offs;
    if (!scratch(&all, &offs, per, kk, team)) {
        msq_conv2d_backward_input_ref(dx, dy, w, s, NULL);
        return;
    }
    #pragma omp parallel num_threads(team) if (team > 1)
    {
        const int id = omp_get_thread_num();
        float *planes = all + per * (size_t)id, *sums = planes + pf * stack;
        phased d = layout;
        taps t = {0, sums + qf * stack, offs + (size_t)kk * id};
        memset(planes, 0, sizeof(float) * pf * stack);
        #pragma omp for schedule(static)
        for (int c = 0; c < channels; c++) {
            const float *wc = w + (size_t)c * kk;
            for (int b0 = 0; b0 < s->n; b0 += stack) {
                const int nb = s->n - b0 < stack ? s->n - b0 : stack;
                for (int j = 0; j < nb; j++) {
                    d.data = planes + pf * j;
                    phase_fill(&d, dy + ((size_t)(b0 + j) * channels + c) * out_plane, s->h_out, s->w_out, top, left);
                }
                if (stack > 1 && c + 1 < channels) prefetch_planes(dy, b0, nb, c + 1, channels, out_plane);
                for (int g = 0; g < sh; g++) {
                    const int i_lo = s->pad_h > g ? (s->pad_h - g + sh - 1) / sh : 0;
                    const int i_last = s->h_in - 1 + s->pad_h - g, i_hi = i_last / sh; /* inclusive */
                    if (i_last < 0 || i_hi < i_lo) continue;
                    for (int f = 0; f < sw; f++) {
                        const int j_lo = s->pad_w > f ? (s->pad_w - f + sw - 1) / sw : 0;
                        const int j_last = s->w_in - 1 + s->pad_w - f, j_hi = j_last / sw;
                        if (j_last < 0 || j_hi < j_lo) continue;
                        t.n = 0;
                        for (int ky = g, a = 0; ky < s->kh; ky += sh, a++)
                            for (int kx = f, b = 0; kx < s->kw; kx += sw, b++) {
                                t.w[t.n] = wc[ky * s->kw + kx];
                                t.off[t.n++] = -(ptrdiff_t)a * layout.cols - b;
                            }
                        if (t.n == 0) continue;
                        const int rows = i_hi - i_lo + 1, width = j_hi - j_lo + 1, nv = vectors(width);
                        const float *from = planes + (ptrdiff_t)(i_lo + top) * layout.cols + left + j_lo;
                        if (sh == 1 && sw == 1) {
                            /* one class, whose rows and columns are dx's own: accumulate straight into dx */
                            const rows_out o = {dx + ((size_t)b0 * channels + c) * in_plane, s->w_in,
                                                (ptrdiff_t)(channels * in_plane), width, rows, 1};
                            gather(&o, from, layout.cols, (ptrdiff_t)pf, nb, &t, 0.0f);
                            continue;
                        }
                        const rows_out o = {sums, 8 * nv, (ptrdiff_t)qf, width, rows, 0};
                        gather(&o, from, layout.cols, (ptrdiff_t)pf, nb, &t, 0.0f);
                        for (int j = 0; j < nb; j++) {
                            float *dxq = dx + ((size_t)(b0 + j) * channels + c) * in_plane;
                            for (int r = 0; r < rows; r++) {
                                const float *restrict src = sums + qf * j + (size_t)r * nv * 8;
                                float *restrict dst = dxq + (size_t)(sh * (i_lo + r) + g - s->pad_h) * s->w_in
                                                      + (sw * j_lo + f - s->pad_w);
                                if (sw == 1) {
                                    for (int jj = 0; jj < width; jj++) dst[jj] += src[jj];
                                } else {
                                    for (int jj = 0; jj < width; jj++) dst[(size_t)sw * jj] += src[jj];
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    free(all);
    free(offs);
}

/* The weight gradient's taps go in blocks of up to TAP_BLOCK: each item's dy vector is loaded
   once and fused into every tap sum of the block (one sum per tap, over the items in order), so a
   tap costs one load per item (its shifted input) instead of two. 9 covers a 3×3 filter in one
   block and a 5×5 in three. */
enum { TAP_BLOCK = 9 };

/* acc[8·j …] += Σ over the items (pl, r, v) of nb stacked planes of dy[item] · x[item + off[j]],
   for the block's N taps. */
#define DEFINE_TAP_BLOCK(N)                                                                              \
    static void tap_block_##N(float *acc, const ptrdiff_t *off, const float *dys, const float *xs,         \
                              size_t gf, size_t pf, ptrdiff_t row_step, int nb, int rows, int nv) {         \
        __m256 a[N];                                                                                     \
        for (int j = 0; j < (N); j++) a[j] = _mm256_setzero_ps();                                         \
        for (int pl = 0; pl < nb; pl++) {                                                                \
            const float *d = dys + gf * (size_t)pl;                                                      \
            for (int r = 0; r < rows; r++) {                                                             \
                const float *x = xs + pf * (size_t)pl + (ptrdiff_t)r * row_step;                         \
                for (int v = 0; v < nv; v++, d += 8, x += 8) {                                           \
                    const __m256 g = _mm256_load_ps(d);                                                  \
                    for (int j = 0; j < (N); j++) a[j] = _mm256_fmadd_ps(g, _mm256_loadu_ps(x + off[j]), a[j]); \
                }                                                                                        \
            }                                                                                            \
        }                                                                                                \
        for (int j = 0; j < (N); j++)                                                                    \
            _mm256_store_ps(acc + 8 * j, _mm256_add_ps(_mm256_load_ps(acc + 8 * j), a[j]));              \
    }
DEFINE_TAP_BLOCK(1)
DEFINE_TAP_BLOCK(2)
DEFINE_TAP_BLOCK(3)
DEFINE_TAP_BLOCK(4)
DEFINE_TAP_BLOCK(5)
DEFINE_TAP_BLOCK(6)
DEFINE_TAP_BLOCK(7)
DEFINE_TAP_BLOCK(8)
DEFINE_TAP_BLOCK(9)

static void tap_block(int n, float *acc, const ptrdiff_t *off, const float *dys, const float *xs, size_t gf, size_t pf,
                      ptrdiff_t row_step, int nb, int rows, int nv) {
    switch (n) {
    case 1: tap_block_1(acc, off, dys, xs, gf, pf, row_step, nb, rows, nv); break;
    case 2: tap_block_2(acc, off, dys, xs, gf, pf, row_step, nb, rows, nv); break;
    case 3: tap_block_3(acc, off, dys, xs, gf, pf, row_step, nb, rows, nv); break;
    case 4: tap_block_4(acc, off, dys, xs, gf, pf, row_step, nb, rows, nv); break;
    case 5: tap_block_5(acc, off, dys, xs, gf, pf, row_step, nb, rows, nv); break;
    case 6: tap_block_6(acc, off, dys, xs, gf, pf, row_step, nb, rows, nv); break;
    case 7: tap_block_7(acc, off, dys, xs, gf, pf, row_step, nb, rows, nv); break;
    case 8: tap_block_8(acc, off, dys, xs, gf, pf, row_step, nb, rows, nv); break;
    default: tap_block_9(acc, off, dys, xs, gf, pf, row_step, nb, rows, nv); break;
    }
}

/* dy[n,c,h_out,w_out], x[n,c,h_in,w_in] -> dw[c,1,kh,kw], dbias[c] (accumulated; dbias may be NULL). */
void msq_conv2d_depthwise_backward_weight(float *dw, float *dbias, const float *dy, const float *x,
                                          const msq_conv2d_shape *s) {
    if (msq_depthwise_channels_weight_eligible(s) && msq_depthwise_channels_backward_weight(dw, dbias, dy, x, s) == 0) return;
    const int kk = s->kh * s->kw, nv = vectors(s->w_out), channels = s->c_in;
    const size_t in_plane = (size_t)s->h_in * s->w_in, out_plane = (size_t)s->h_out * s->w_out;
    const phased layout = input_layout(s), grads = {NULL, 1, s->h_out, nv * 8};
    const size_t pf = phase_floats(&layout), gf = phase_floats(&grads);
    const ptrdiff_t row_step = (ptrdiff_t)s->stride_h * layout.cols;
    const int stack = stack_count(pf + gf, s->n), team = msq_conv_team_size(channels);
    /* per thread: padded input planes, dy planes as rows of nv vectors, one vector sum per tap and one for the bias */
    const size_t per = line_floats((pf + gf) * stack + 8 * (size_t)(kk + 1));
    float *all;
    ptrdiff_t *offs;
    if (!scratch(&all, &offs, per, kk, team)) {
        msq_conv2d_backward_weight_ref(dw, dbias, dy, x, s, NULL);
        return;
    }
    #pragma omp parallel num_threads(team) if (team > 1)
    {
        const int id = omp_get_thread_num();
        float *planes = all + per * (size_t)id, *dys = planes + pf * stack, *acc = dys + gf * stack;
        phased p = layout, g = grads;
        ptrdiff_t *off = offs + (size_t)kk * id;
        p.data = planes;
        input_offsets(off, s, &p);
        memset(planes, 0, sizeof(float) * (pf + gf) * stack);
        #pragma omp for schedule(static)
        for (int c = 0; c < channels; c++) {
            memset(acc, 0, sizeof(float) * 8 * (size_t)(kk + 1));
            for (int b0 = 0; b0 < s->n; b0 += stack) {
                const int nb = s->n - b0 < stack ? s->n - b0 : stack;
                for (int j = 0; j < nb; j++) {
                    const size_t q = (size_t)(b0 + j) * channels + c;
                    p.data = planes + pf * j;
                    g.data = dys + gf * j;
                    phase_fill(&p, x + q * in_plane, s->h_in, s->w_in, s->pad_h, s->pad_w);
                    phase_fill(&g, dy + q * out_plane, s->h_out, s->w_out, 0, 0);
                }
                if (stack > 1 && c + 1 < channels) {
                    prefetch_planes(x, b0, nb, c + 1, channels, in_plane);
                    prefetch_planes(dy, b0, nb, c + 1, channels, out_plane);
                }
                for (int k0 = 0; k0 < kk; k0 += TAP_BLOCK) {
                    const int nt = kk - k0 < TAP_BLOCK ? kk - k0 : TAP_BLOCK;
                    tap_block(nt, acc + 8 * (size_t)k0, off + k0, dys, planes, gf, pf, row_step, nb, s->h_out, nv);
                }
                /* the bias: Σ dy, four sums over each plane's vectors in order */
                __m256 b0 = _mm256_setzero_ps(), b1 = b0, b2 = b0, b3 = b0;
                for (int j = 0; j < nb; j++) {
                    const float *d = dys + gf * j;
                    const int n = s->h_out * nv;
                    int q = 0;
                    for (; q + 4 <= n; q += 4) {
                        b0 = _mm256_add_ps(b0, _mm256_load_ps(d + 8 * (size_t)q));
                        b1 = _mm256_add_ps(b1, _mm256_load_ps(d + 8 * (size_t)q + 8));
                        b2 = _mm256_add_ps(b2, _mm256_load_ps(d + 8 * (size_t)q + 16));
                        b3 = _mm256_add_ps(b3, _mm256_load_ps(d + 8 * (size_t)q + 24));
                    }
                    for (; q < n; q++) b0 = _mm256_add_ps(b0, _mm256_load_ps(d + 8 * (size_t)q));
                }
                const __m256 bsum = _mm256_add_ps(_mm256_add_ps(b0, b1), _mm256_add_ps(b2, b3));
                _mm256_store_ps(acc + 8 * (size_t)kk, _mm256_add_ps(_mm256_load_ps(acc + 8 * (size_t)kk), bsum));
            }
            for (int k = 0; k < kk; k++) dw[(size_t)c * kk + k] += msq_lanes_sum8(_mm256_load_ps(acc + 8 * (size_t)k));
            if (dbias) dbias[c] += msq_lanes_sum8(_mm256_load_ps(acc + 8 * (size_t)kk));
        }
    }
    free(all);
    free(offs);
}
