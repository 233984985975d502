/* swin_layout.c — the token layouts of a Swin transformer (torchvision's swin_t, v1), on NHWC
 * tokens x[B, H, W, C].
 *
 * Window partition (torchvision's shifted_window_attention, before its qkv linear):
 *     pad H, W with zeros up to Hp, Wp, the next multiples of the window ws;
 *     roll by (−sh, −sw) as torch.roll: s[i, j] = padded[(i + sh) mod Hp, (j + sw) mod Wp];
 *     cut s into (Hp/ws)·(Wp/ws) windows of ws·ws tokens, windows and tokens in row-major order:
 *     y[b·nW + wr·(Wp/ws) + wc, tr·ws + tc, :] = s[wr·ws + tr, wc·ws + tc, :].
 * Its backward (the adjoint) is torchvision's window reverse: un-cut, roll by (+sh, +sw), crop to
 * H × W (padded positions are dropped). The same two maps serve the attention's output: reverse
 * forward = partition backward, reverse backward = partition forward.
 *
 * Patch merging (torchvision's _patch_merging_pad): pad H, W to even with zeros, then
 *     y[b, i, j, q·C + c] = x[b, 2i + dr_q, 2j + dc_q, c],  (dr, dc)_q = (0,0), (1,0), (0,1), (1,1),
 * i.e. x0 = x[0::2, 0::2], x1 = x[1::2, 0::2], x2 = x[0::2, 1::2], x3 = x[1::2, 1::2] on channels.
 *
 * Every output element is written once from one input element (or zero): pure copies, so the
 * fast and reference versions give the same bits. The fast ones walk output windows/rows and
 * copy C-float runs; the references walk the other side element by element. */
#include "msq_kernels.h"
#include <omp.h>
#include <string.h>

static inline int round_up(int n, int m) { return (n + m - 1) / m * m; }

/* Shape: x[B, H, W, C] -> y[B·nW, ws·ws, C] (overwritten), nW = (Hp/ws)·(Wp/ws). */
void msq_window_partition_forward(float *y, const float *x, int batch, int height, int width, int channels,
                                  int window, int shift_h, int shift_w) {
    const int hp = round_up(height, window), wp = round_up(width, window), ws = window, C = channels;
    const int nwc = wp / ws, nw = (hp / ws) * nwc;
    const long windows = (long)batch * nw;
    #pragma omp parallel for schedule(static) if (windows > 1 && !omp_in_parallel())
    for (long w = 0; w < windows; w++) {
        const int b = (int)(w / nw), wi = (int)(w % nw), wr = wi / nwc, wc = wi % nwc;
        float *yw = y + (size_t)w * ws * ws * C;
        for (int tr = 0; tr < ws; tr++) {
            const int r = (wr * ws + tr + shift_h) % hp;
            for (int tc = 0; tc < ws; tc++) {
                const int c = (wc * ws + tc + shift_w) % wp;
                float *dst = yw + (size_t)(tr * ws + tc) * C;
                if (r < height && c < width)
                    memcpy(dst, x + (((size_t)b * height + r) * width + c) * C, sizeof(float) * C);
                else
                    memset(dst, 0, sizeof(float) * C);
            }
        }
    }
}

void msq_window_partition_forward_ref(float *y, const float *x, int batch, int height, int width, int channels,
                                      int window, int shift_h, int shift_w) {
    const int hp = round_up(height, window), wp = round_up(width, window), ws = window;
    const int nwc = wp / ws, nw = (hp / ws) * nwc;
    /* Walk the padded image; find where each of its pixels lands after the roll. */
    for (int b = 0; b < batch; b++)
        for (int pr = 0; pr < hp; pr++)
            for (int pc = 0; pc < wp; pc++) {
                const int i = ((pr - shift_h) % hp + hp) % hp, j = ((pc - shift_w) % wp + wp) % wp;
                const size_t w = (size_t)b * nw + (size_t)(i / ws) * nwc + j / ws;
                const size_t t = (size_t)(i % ws) * ws + j % ws;
                for (int ch = 0; ch < channels; ch++)
                    y[(w * ws * ws + t) * channels + ch] =
                        pr < height && pc < width ? x[(((size_t)b * height + pr) * width + pc) * channels + ch] : 0.0f;
            }
}

/* Shape: dy[B·nW, ws·ws, C] -> dx[B, H, W, C] (overwritten; every pixel has exactly one token). */
void msq_window_partition_backward(float *dx, const float *dy, int batch, int height, int width, int channels,
                                   int window, int shift_h, int shift_w) {
    const int hp = round_up(height, window), wp = round_up(width, window), ws = window, C = channels;
    const int nwc = wp / ws, nw = (hp / ws) * nwc;
    const long windows = (long)batch * nw;
    #pragma omp parallel for schedule(static) if (windows > 1 && !omp_in_parallel())
    for (long w = 0; w < windows; w++) {
        const int b = (int)(w / nw), wi = (int)(w % nw), wr = wi / nwc, wc = wi % nwc;
        const float *src = dy + (size_t)w * ws * ws * C;
        for (int tr = 0; tr < ws; tr++) {
            const int r = (wr * ws + tr + shift_h) % hp;
            if (r >= height) continue;
            for (int tc = 0; tc < ws; tc++) {
                const int c = (wc * ws + tc + shift_w) % wp;
                if (c < width)
                    memcpy(dx + (((size_t)b * height + r) * width + c) * C, src + (size_t)(tr * ws + tc) * C,
                           sizeof(float) * C);
            }
        }
    }
}

void msq_window_partition_backward_ref(float *dx, const float *dy, int batch, int height, int width, int channels,
                                       int window, int shift_h, int shift_w) {
    const int hp = round_up(height, window), wp = round_up(width, window), ws = window;
    const int nwc = wp / ws, nw = (hp / ws) * nwc;
    for (int b = 0; b < batch; b++)
        for (int pr = 0; pr < height; pr++)
            for (int pc = 0; pc < width; pc++) {
                const int i = ((pr - shift_h) % hp + hp) % hp, j = ((pc - shift_w) % wp + wp) % wp;
                const size_t w = (size_t)b * nw + (size_t)(i / ws) * nwc + j / ws;
                const size_t t = (size_t)(i % ws) * ws + j % ws;
                for (int ch = 0; ch < channels; ch++)
                    dx[(((size_t)b * height + pr) * width + pc) * channels + ch] = dy[(w * ws * ws + t) * channels + ch];
            }
}

/* Shape: x[B, H, W, C] -> y[B, ⌈H/2⌉, ⌈W/2⌉, 4C] (overwritten). */
void msq_patch_merge_forward(float *y, const float *x, int batch, int height, int width, int channels) {
    const int ho = (height + 1) / 2, wo = (width + 1) / 2, C = channels;
    const long rows = (long)batch * ho;
    #pragma omp parallel for schedule(static) if (rows > 1 && !omp_in_parallel())
    for (long br = 0; br < rows; br++) {
        const int b = (int)(br / ho), i = (int)(br % ho);
        for (int j = 0; j < wo; j++)
            for (int q = 0; q < 4; q++) {
                const int r = 2 * i + (q & 1), c = 2 * j + (q >> 1);
                float *dst = y + (((size_t)br * wo + j) * 4 + q) * C;
                if (r < height && c < width)
                    memcpy(dst, x + (((size_t)b * height + r) * width + c) * C, sizeof(float) * C);
                else
                    memset(dst, 0, sizeof(float) * C);
            }
    }
}

void msq_patch_merge_forward_ref(float *y, const float *x, int batch, int height, int width, int channels) {
    const int ho = (height + 1) / 2, wo = (width + 1) / 2;
    const int dr[4] = {0, 1, 0, 1}, dc[4] = {0, 0, 1, 1};
    for (int b = 0; b < batch; b++)
        for (int i = 0; i < ho; i++)
            for (int j = 0; j < wo; j++)
                for (int q = 0; q < 4; q++)
                    for (int ch = 0; ch < channels; ch++) {
                        const int r = 2 * i + dr[q], c = 2 * j + dc[q];
                        y[(((size_t)b * ho + i) * wo + j) * 4 * channels + (size_t)q * channels + ch] =
                            r < height && c < width ? x[(((size_t)b * height + r) * width + c) * channels + ch] : 0.0f;
                    }
}

/* Shape: dy[B, ⌈H/2⌉, ⌈W/2⌉, 4C] -> dx[B, H, W, C] (overwritten; padded slots are dropped). */
void msq_patch_merge_backward(float *dx, const float *dy, int batch, int height, int width, int channels) {
    const int ho = (height + 1) / 2, wo = (width + 1) / 2, C = channels;
    const long rows = (long)batch * height;
    #pragma omp parallel for schedule(static) if (rows > 1 && !omp_in_parallel())
    for (long br = 0; br < rows; br++) {
        const int b = (int)(br / height), r = (int)(br % height);
        for (int c = 0; c < width; c++) {
            const int q = (r & 1) | ((c & 1) << 1);
            memcpy(dx + ((size_t)br * width + c) * C, dy + ((((size_t)b * ho + r / 2) * wo + c / 2) * 4 + q) * C,
                   sizeof(float) * C);
        }
    }
}

void msq_patch_merge_backward_ref(float *dx, const float *dy, int batch, int height, int width, int channels) {
    const int ho = (height + 1) / 2, wo = (width + 1) / 2;
    const int dr[4] = {0, 1, 0, 1}, dc[4] = {0, 0, 1, 1};
    for (int b = 0; b < batch; b++)
        for (int i = 0; i < ho; i++)
            for (int j = 0; j < wo; j++)
                for (int q = 0; q < 4; q++) {
                    const int r = 2 * i + dr[q], c = 2 * j + dc[q];
                    if (r >= height || c >= width) continue;
                    for (int ch = 0; ch < channels; ch++)
                        dx[(((size_t)b * height + r) * width + c) * channels + ch] =
                            dy[(((size_t)b * ho + i) * wo + j) * 4 * channels + (size_t)q * channels + ch];
                }
}
