/* im2col.c — the column matrices of the im2col + SGEMM convolution (conv.c): im2col rows and
 * their adjoint, col2im. Row by row so the innermost loops run along contiguous memory. */
#include "msq_kernels.h"
#include "conv_internal.h"
#include <stddef.h>
#if defined(__AVX2__)
#include <immintrin.h>
#endif

static inline int imin(int a, int b) { return a < b ? a : b; }
static inline int imax(int a, int b) { return a > b ? a : b; }
static int unit_stride(const msq_conv2d_shape *s) { return s->stride_h == 1 && s->stride_w == 1; }

/* Outputs o in [0, out) whose input o*stride - pad + tap lies inside [0, in): [*lo, *hi). */
static inline void valid_out(int in, int out, int stride, int pad, int tap, int *lo, int *hi) {
    const int off = pad - tap; /* input = o*stride - off */
    int l = off > 0 ? (off + stride - 1) / stride : 0;
    int h = in - 1 + off >= 0 ? (in - 1 + off) / stride + 1 : 0;
    l = imin(l, out);
    h = imax(imin(h, out), l);
    *lo = l; *hi = h;
}

/* Output columns ow whose input column ow*sw - pw + j lies inside [0, w_in): [*lo, *hi). */
static inline void valid_ow(const msq_conv2d_shape *s, int j, int *lo, int *hi) {
    valid_out(s->w_in, s->w_out, s->stride_w, s->pad_w, j, lo, hi);
}

/* The zero fills in im2col are mostly 0-2 floats long; clang would turn each into a memset
   call, which costs more than the stores. */
#if defined(__clang__)
#define MSQ_INLINE_FILLS __attribute__((no_builtin("memset")))
#else
#define MSQ_INLINE_FILLS
#endif

/* im2col_rows for unit stride and w_out == w_in ("same" padding, the common case): output
   rows and input rows then have the same length, so the valid rows of one (c, i, j) are one
   contiguous, shifted copy of the input plane; only the padding columns at the row ends are
   zeroed afterwards. Far fewer, longer loops than row by row on small planes. */
MSQ_INLINE_FILLS static void im2col_rows_same(float *restrict col, size_t ldcol,
                                              const float *restrict x, int channels,
                                              const msq_conv2d_shape *s, int oh0, int oh1) {
    const int H = s->h_in, W = s->w_in;
    const size_t rows = (size_t)(oh1 - oh0);
    for (int c = 0; c < channels; c++) {
        const float *xc = x + (size_t)c * H * W;
        for (int i = 0; i < s->kh; i++) {
            /* Output rows whose input row oh - pad_h + i exists: [a, e). */
            const int a = imin(oh1, imax(oh0, s->pad_h - i));
            const int e = imax(a, imin(oh1, H + s->pad_h - i));
            const size_t n_valid = (size_t)(e - a);
            for (int j = 0; j < s->kw; j++, col += ldcol) {
                int lo, hi;
                valid_ow(s, j, &lo, &hi);
                float *dst = col;
                for (size_t k = 0; k < (size_t)(a - oh0) * W; k++) dst[k] = 0.0f;
                for (size_t k = (size_t)(e - oh0) * W; k < rows * W; k++) dst[k] = 0.0f;
                if (n_valid == 0) continue;
                dst += (size_t)(a - oh0) * W;
                if (hi <= lo) {
                    for (size_t k = 0; k < n_valid * W; k++) dst[k] = 0.0f;
                    continue;
                }
                /* dst[k] = src[k] over the span from the first valid element of the first row
                   to the last valid element of the last row; src stays inside those rows. */
                const float *src = xc + (size_t)(a - s->pad_h + i) * W;
                const ptrdiff_t shift = j - s->pad_w;
                const size_t end = (n_valid - 1) * W + (size_t)hi;
                for (size_t k = (size_t)lo; k < end; k++) dst[k] = src[(ptrdiff_t)k + shift];
                /* Padding columns: row starts [0, lo), row ends [hi, W), contiguous across
                   each row boundary. */
                for (int k = 0; k < lo; k++) dst[k] = 0.0f;
                for (size_t r = 0; r + 1 < n_valid; r++) {
                    float *gap = dst + r * W;
                    for (int k = hi; k < W + lo; k++) gap[k] = 0.0f;
                }
                for (size_t k = end; k < n_valid * W; k++) dst[k] = 0.0f;
            }
        }
    }
}

/* Stride-2 row kernels: dst[ow] = src[2*ow] (gather) and dst[2*ow] += src[ow] (scatter-add)
   for ow in [0, count). Compilers leave these strided loops scalar; with AVX2, eight outputs
   come from two overlapping loads (elements 0..7 and 7..14) so nothing past the last needed
   element is ever touched, which matters for the scatter: the next element may belong to
   another thread's plane. */
#if defined(__AVX2__)
static inline __m256 gather8_stride2(const float *src) {
    const __m256 a = _mm256_loadu_ps(src);     /* s0..s7:  evens at lanes 0,2,4,6 */
    const __m256 b = _mm256_loadu_ps(src + 7); /* s7..s14: evens at lanes 1,3,5,7 */
    const __m256d t = _mm256_castps_pd(_mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 2, 0)));
    /* t = a0 a2 b1 b3 | a4 a6 b5 b7 as 64-bit pairs; swap the middle pairs. */
    return _mm256_castpd_ps(_mm256_permute4x64_pd(t, _MM_SHUFFLE(3, 1, 2, 0)));
}

static inline __m128 gather4_stride2(const float *src) {
    /* s0..s3 and s3..s6: a0 a2 b1 b3 = s0 s2 s4 s6. */
    return _mm_shuffle_ps(_mm_loadu_ps(src), _mm_loadu_ps(src + 3), _MM_SHUFFLE(3, 1, 2, 0));
}
#endif

/* A last vector that does not fit is moved back to end at count, overlapping the one before:
   it rewrites a few outputs with the same values instead of leaving a scalar tail. */
static inline void gather_stride2(float *restrict dst, const float *restrict src, int count) {
    int k = 0;
#if defined(__AVX2__)
    if (count >= 8) {
        for (; k + 8 <= count; k += 8) _mm256_storeu_ps(dst + k, gather8_stride2(src + 2 * k));
        if (k < count) _mm256_storeu_ps(dst + count - 8, gather8_stride2(src + 2 * (count - 8)));
        return;
    }
    if (count >= 4) {
        _mm_storeu_ps(dst, gather4_stride2(src));
        _mm_storeu_ps(dst + count - 4, gather4_stride2(src + 2 * (count - 4)));
        return;
    }
#endif
    for (; k < count; k++) dst[k] = src[2 * k];
}

static inline void scatter_add_stride2(float *restrict dst, const float *restrict src, int count) {
    int k = 0;
#if defined(__AVX2__)
    const __m256 zero = _mm256_setzero_ps();
    for (; k + 8 <= count; k += 8) {
        /* x = s0 s1 s4 s5 | s2 s3 s6 s7, so the unpacks interleave s with zeros in order. */
        const __m256 x = _mm256_castpd_ps(_mm256_permute4x64_pd(
            _mm256_castps_pd(_mm256_loadu_ps(src + k)), _MM_SHUFFLE(3, 1, 2, 0)));
        const __m256 lo = _mm256_unpacklo_ps(x, zero); /* s0 0 s1 0 s2 0 s3 0 */
        const __m256 hi = _mm256_unpackhi_ps(zero, x); /* 0 s4 0 s5 0 s6 0 s7 */
        float *d = dst + 2 * k;
        /* Blend so the untouched lanes keep their exact bits (adding 0 would turn -0 into +0). */
        const __m256 d0 = _mm256_loadu_ps(d);
        _mm256_storeu_ps(d, _mm256_blend_ps(d0, _mm256_add_ps(d0, lo), 0x55));
        const __m256 d1 = _mm256_loadu_ps(d + 7);
        _mm256_storeu_ps(d + 7, _mm256_blend_ps(d1, _mm256_add_ps(d1, hi), 0xAA));
    }
#endif
    for (; k < count; k++) dst[2 * k] += src[k];
}

/* ---------------------------------------------------------------- stride 2 along the width
   Gathering every other input column straight into col leaves short rows (a 16-wide plane
   gives 8 outputs) whose padded ends break the eight-wide loads: ResNet-20's 32->64 stride-2
   layer spent 30 % of its forward here. Instead each input row is split once into its even and
   odd columns, each phase in a buffer with zero margins; every (i, j) row of col is then one
   contiguous copy of w_out floats from one phase, padding included. */

/* The copies are one to a few vectors long: clang would turn copy_short's loop into a memcpy
   call (measured: 8 % of the 32->64 stride-2 forward). */
#if defined(__clang__)
#define MSQ_INLINE_COPIES __attribute__((no_builtin("memset", "memcpy")))
#else
#define MSQ_INLINE_COPIES
#endif

/* floor(a / 2) for any sign. */
static inline int floor_half(int a) { return a >= 0 ? a / 2 : -((1 - a) / 2); }

/* dst[0, n) = src[0, n): eight or four floats per move, the last move overlapping the one
   before it instead of a scalar tail (both read and write only inside the two ranges). */
MSQ_INLINE_COPIES static inline void copy_short(float *restrict dst, const float *restrict src, int n) {
#if defined(__AVX2__)
    if (n >= 8) {
        int k = 0;
        for (; k + 8 <= n; k += 8) _mm256_storeu_ps(dst + k, _mm256_loadu_ps(src + k));
        if (k < n) _mm256_storeu_ps(dst + n - 8, _mm256_loadu_ps(src + n - 8));
        return;
    }
    if (n >= 4) {
        _mm_storeu_ps(dst, _mm_loadu_ps(src));
        _mm_storeu_ps(dst + n - 4, _mm_loadu_ps(src + n - 4));
        return;
    }
#endif
    for (int k = 0; k < n; k++) dst[k] = src[k];
}

/* rows consecutive rows of n floats (dst) from rows step floats apart (src). */
MSQ_INLINE_COPIES static inline void copy_rows(float *restrict dst, const float *restrict src, ptrdiff_t step,
                                               int n, int rows) {
#if defined(__AVX2__)
    if (n == 8) { /* ResNet-20's 16-wide planes: one vector per row */
        for (int r = 0; r < rows; r++, src += step) _mm256_storeu_ps(dst + 8 * r, _mm256_loadu_ps(src));
        return;
    }
#endif
    for (int r = 0; r < rows; r++, src += step, dst += n) copy_short(dst, src, n);
}

/* even[c] = row[2c] for c < ceil(w/2), odd[c] = row[2c + 1] for c < floor(w/2). */
static inline void split_phases(float *restrict even, float *restrict odd, const float *restrict row, int w) {
    int c = 0;
#if defined(__AVX2__)
    for (; 2 * c + 16 <= w; c += 8) {
        const __m256 a = _mm256_loadu_ps(row + 2 * c), b = _mm256_loadu_ps(row + 2 * c + 8);
        /* a0 a2 b0 b2 | a4 a6 b4 b6, then the middle 64-bit pairs swapped: in order. */
        const __m256 e = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0));
        const __m256 o = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1));
        _mm256_storeu_ps(even + c, _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(e), _MM_SHUFFLE(3, 1, 2, 0))));
        _mm256_storeu_ps(odd + c, _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(o), _MM_SHUFFLE(3, 1, 2, 0))));
    }
#endif
    for (; 2 * c + 1 < w; c++) {
        even[c] = row[2 * c];
        odd[c] = row[2 * c + 1];
    }
    if (2 * c < w) even[c] = row[2 * c];
}

/* The phase layout of one call: input column iw = 2*ow + j - pw is phase (j - pw) mod 2 at
   index ow + floor((j - pw) / 2); a phase row holds index t at t + margin. The input rows of a
   block of output rows are split first, then each (i, j) row of col is written front to back
   by a tight loop over the output rows whose input row exists (that range is computed once
   per i: a first version divided by the stride once per input row, and on 16-wide planes those
   divisions cost more than the copies). */
typedef struct s2_layout {
    int margin, pitch; /* floats before index 0; floats per phase row (whole vectors) */
    int out_rows;      /* output rows per block: their input rows fit the phase buffers */
} s2_layout;

/* Floats of one phase's buffer (both live on the stack) and the widest kernel the stride-2
   path takes (its per-column source table is on the stack too). */
#define S2_PHASE_FLOATS 4096
#define S2_KW_MAX 32

/* 0 when one output row's input rows do not fit S2_PHASE_FLOATS or the kernel is wider than
   S2_KW_MAX: the general path takes those shapes. It also takes kernels under 3 wide: there
   each input column lands in col at most once, so splitting first only adds a pass. */
static int s2_layout_of(const msq_conv2d_shape *s, s2_layout *L) {
    const int lo_off = floor_half(-s->pad_w), hi_off = floor_half(s->kw - 1 - s->pad_w);
    L->margin = imax(0, -lo_off);
    /* Index range read: [lo_off, hi_off + w_out); written: [0, ceil(w_in / 2)). */
    L->pitch = (L->margin + imax(hi_off + s->w_out, (s->w_in + 1) / 2) + 7) / 8 * 8;
    const int in_rows = S2_PHASE_FLOATS / L->pitch;
    /* (out_rows - 1) * sh + kh input rows per block. */
    L->out_rows = in_rows >= s->kh ? (in_rows - s->kh) / s->stride_h + 1 : 0;
    return L->out_rows >= 1 && s->kw >= 3 && s->kw <= S2_KW_MAX;
}

MSQ_INLINE_COPIES static void im2col_rows_s2(float *restrict col, size_t ldcol, const float *restrict x,
                                             int channels, const msq_conv2d_shape *s, int oh0, int oh1,
                                             const s2_layout *L) {
    const int H = s->h_in, W = s->w_in, OW = s->w_out, kh = s->kh, kw = s->kw, sh = s->stride_h;
    _Alignas(32) float phase[2][S2_PHASE_FLOATS];
    /* Margins and the index range past each phase's valid columns stay zero throughout. */
    const int used = imin(S2_PHASE_FLOATS, ((imin(L->out_rows, oh1 - oh0) - 1) * sh + kh) * L->pitch);
    for (int p = 0; p < 2; p++)
        for (int t = 0; t < used; t++) phase[p][t] = 0.0f;
    ptrdiff_t src_of[S2_KW_MAX]; /* column j's source in a phase row: one phase, shifted */
    for (int j = 0; j < kw; j++) {
        const int shift = j - s->pad_w;
        src_of[j] = (shift & 1) * S2_PHASE_FLOATS + L->margin + floor_half(shift);
    }
    const ptrdiff_t step = (ptrdiff_t)sh * L->pitch; /* phase rows between output rows */
    for (int c = 0; c < channels; c++) {
        const float *xc = x + (size_t)c * H * W;
        float *colc = col + (size_t)c * kh * kw * ldcol;
        for (int ob = oh0; ob < oh1; ob += L->out_rows) {
            const int oe = imin(oh1, ob + L->out_rows);
            /* Phase row k holds input row first + k. */
            const int first = ob * sh - s->pad_h;
            const int r0 = imax(0, first), r1 = imin(H, (oe - 1) * sh - s->pad_h + kh);
            for (int ih = r0; ih < r1; ih++) {
                const int k = ih - first;
                split_phases(phase[0] + k * L->pitch + L->margin, phase[1] + k * L->pitch + L->margin,
                             xc + (size_t)ih * W, W);
            }
            for (int i = 0; i < kh; i++) {
                /* Output rows [oa, oz) of this block read input rows inside the plane. */
                int lo, hi;
                valid_out(H, s->h_out, sh, s->pad_h, i, &lo, &hi);
                const int oa = imin(oe, imax(ob, lo)), oz = imax(oa, imin(oe, hi));
                for (int j = 0; j < kw; j++) {
                    float *dst = colc + (size_t)(i * kw + j) * ldcol;
                    for (size_t k = (size_t)(ob - oh0) * OW; k < (size_t)(oa - oh0) * OW; k++) dst[k] = 0.0f;
                    for (size_t k = (size_t)(oz - oh0) * OW; k < (size_t)(oe - oh0) * OW; k++) dst[k] = 0.0f;
                    if (oz > oa)
                        copy_rows(dst + (size_t)(oa - oh0) * OW,
                                  phase[0] + (oa * sh - s->pad_h + i - first) * L->pitch + src_of[j], step, OW,
                                  oz - oa);
                }
            }
        }
    }
}

/* Output rows [oh0, oh1) of one image's column matrix, row r = (c*kh + i)*kw + j at
   col + r*ldcol: col[r, (oh-oh0)*w_out + ow] = x[c, oh*sh-ph+i, ow*sw-pw+j], 0 in the padding.
   Row by row so the innermost loop runs along contiguous memory; rows are short (w_out
   floats), so plain loops beat memcpy calls. */
MSQ_INLINE_FILLS void msq_im2col_rows(float *restrict col, size_t ldcol,
                                         const float *restrict x, int channels,
                                         const msq_conv2d_shape *s, int oh0, int oh1) {
    const int H = s->h_in, W = s->w_in, OW = s->w_out, sw = s->stride_w;
    if (unit_stride(s) && W == OW) {
        im2col_rows_same(col, ldcol, x, channels, s, oh0, oh1);
        return;
    }
    s2_layout L;
    if (sw == 2 && s2_layout_of(s, &L)) {
        im2col_rows_s2(col, ldcol, x, channels, s, oh0, oh1, &L);
        return;
    }
    for (int c = 0; c < channels; c++) {
        const float *xc = x + (size_t)c * H * W;
        for (int i = 0; i < s->kh; i++)
            for (int j = 0; j < s->kw; j++, col += ldcol) {
                int lo, hi;
                valid_ow(s, j, &lo, &hi);
                const int shift = j - s->pad_w;
                float *dst = col;
                for (int oh = oh0; oh < oh1; oh++, dst += OW) {
                    const int ih = oh * s->stride_h - s->pad_h + i;
                    if (ih < 0 || ih >= H) {
                        for (int ow = 0; ow < OW; ow++) dst[ow] = 0.0f;
                        continue;
                    }
                    const float *src = xc + (size_t)ih * W;
                    for (int ow = 0; ow < lo; ow++) dst[ow] = 0.0f;
                    if (sw == 1) {
                        for (int ow = lo; ow < hi; ow++) dst[ow] = src[ow + shift];
                    } else if (sw == 2) {
                        gather_stride2(dst + lo, src + 2 * lo + shift, hi - lo);
                    } else {
                        for (int ow = lo; ow < hi; ow++) dst[ow] = src[ow * sw + shift];
                    }
                    for (int ow = hi; ow < OW; ow++) dst[ow] = 0.0f;
                }
            }
    }
}

/* Adjoint of im2col_rows: x[c, ih, iw] += every col entry that was read from there. */
void msq_col2im_rows_add(float *restrict x, const float *restrict col, size_t ldcol,
                            int channels, const msq_conv2d_shape *s, int oh0, int oh1) {
    const int H = s->h_in, W = s->w_in, OW = s->w_out, sw = s->stride_w;
    for (int c = 0; c < channels; c++) {
        float *xc = x + (size_t)c * H * W;
        for (int i = 0; i < s->kh; i++)
            for (int j = 0; j < s->kw; j++, col += ldcol) {
                int lo, hi;
                valid_ow(s, j, &lo, &hi);
                const int shift = j - s->pad_w;
                const float *src = col;
                for (int oh = oh0; oh < oh1; oh++, src += OW) {
                    const int ih = oh * s->stride_h - s->pad_h + i;
                    if (ih < 0 || ih >= H) continue;
                    float *dst = xc + (size_t)ih * W;
                    if (sw == 1) {
                        for (int ow = lo; ow < hi; ow++) dst[ow + shift] += src[ow];
                    } else if (sw == 2) {
                        scatter_add_stride2(dst + 2 * lo + shift, src + lo, hi - lo);
                    } else {
                        for (int ow = lo; ow < hi; ow++) dst[ow * sw + shift] += src[ow];
                    }
                }
            }
    }
}
