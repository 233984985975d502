/* window_attention.c — Swin's (shifted) window attention, as torchvision's shifted_window_attention
 * (v1), over windows already partitioned (swin_layout.c) and passed through the qkv linear.
 *
 * qkv[w, t, 3, h, d] for window w of W = B·nW windows of T = ws² tokens (a Linear(D, 3·D)'s
 * output, D = H·d, the layout attention.c reads). For window w and head h:
 *
 *     forward   S = scale·Q·Kᵀ + B_h + M_w,  P = softmax over each row of S,  O = P·V
 *               B_h[i, j] = table[idx(i, j), h]  (table [(2ws−1)², H], torchvision's
 *                           relative_position_bias_table; idx as its relative_position_index:
 *                           (ri − rj + ws − 1)·(2ws − 1) + (ci − cj + ws − 1))
 *               M_w[i, j] = −100 where tokens i and j of window w (w mod nW in its image) lie in
 *                           different regions of the rolled image, else 0 (torchvision's mask:
 *                           along an axis of padded size p and shift s > 0 the regions are
 *                           [0, p − ws), [p − ws, p − s), [p − s, p); an axis with s = 0 is one
 *                           region, so with both shifts 0 nothing is masked)
 *               out[w, t, h·d + j] = O[t, j]
 *     backward  dV += Pᵀ·dO,  dS = P ⊙ (dO·Vᵀ − rowsum(P ⊙ dO·Vᵀ)),
 *               dQ += scale·dS·K,  dK += scale·dSᵀ·Q,  dtable[idx(i, j), h] += Σ_w dS[i, j]
 *
 * P is kept for the backward: probs[w, h, T, T]. Every (w, h) is one thread's work, its GEMMs
 * single-threaded OpenBLAS calls. The table gradient sums dS over fixed chunks of WINDOW_CHUNK
 * windows per head, then the chunks in order: the same bits at any thread count. The softmax rows
 * and each head's backward are attention.c's (attention_rows.h). */
#include "msq_kernels.h"
#include "conv_internal.h"
#include "attention_rows.h"
#include "vector_math.h"
#include <cblas.h>
#include <float.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

enum { WINDOW_CHUNK = 16 };
static const float mask_value = -100.0f; /* torchvision's, not −inf: a row is never all masked */

static inline int rel_index(int i, int j, int ws) {
    return (i / ws - j / ws + ws - 1) * (2 * ws - 1) + (i % ws - j % ws + ws - 1);
}

/* torchvision's mask region of rolled coordinate r on an axis of padded size p and shift s. */
static inline int region(int r, int p, int ws, int s) {
    return s == 0 ? 0 : (r < p - ws ? 0 : (r < p - s ? 1 : 2));
}

/* ids[nW, T]: the region (3·row region + column region) of every token of every window of one image. */
static void window_regions(int *ids, int ws, int pad_h, int pad_w, int shift_h, int shift_w) {
    const int nwc = pad_w / ws, nw = (pad_h / ws) * nwc, T = ws * ws;
    for (int wi = 0; wi < nw; wi++)
        for (int t = 0; t < T; t++) {
            const int r = (wi / nwc) * ws + t / ws, c = (wi % nwc) * ws + t % ws;
            ids[wi * T + t] = 3 * region(r, pad_h, ws, shift_h) + region(c, pad_w, ws, shift_w);
        }
}

/* Shape: qkv[W, T, 3, H, d], table[(2ws−1)², H] -> out[W, T, H·d], probs[W, H, T, T] (overwritten). */
void msq_window_attention_forward(float *out, float *probs, const float *qkv, const float *table, int windows,
                                  int window, int heads, int head_dim, int pad_h, int pad_w, int shift_h,
                                  int shift_w, float scale) {
    const int ws = window, T = ws * ws, d = head_dim, D = heads * head_dim, ld = 3 * D;
    const int nw = (pad_h / ws) * (pad_w / ws);
    float *bias = malloc(sizeof(float) * (size_t)heads * T * T);
    int *ids = malloc(sizeof(int) * (size_t)nw * T);
    if (!bias || !ids) { /* out of memory: slow but right */
        free(bias);
        free(ids);
        msq_window_attention_forward_ref(out, probs, qkv, table, windows, window, heads, head_dim, pad_h, pad_w,
                                         shift_h, shift_w, scale);
        return;
    }
    for (int h = 0; h < heads; h++)
        for (int i = 0; i < T; i++)
            for (int j = 0; j < T; j++) bias[((size_t)h * T + i) * T + j] = table[(size_t)rel_index(i, j, ws) * heads + h];
    window_regions(ids, ws, pad_h, pad_w, shift_h, shift_w);
    const long items = (long)windows * heads;
    #pragma omp parallel for schedule(static) if (items > 1 && !omp_in_parallel())
    for (long it = 0; it < items; it++) {
        const int w = (int)(it / heads), h = (int)(it % heads);
        const float *q = qkv + (size_t)w * T * ld + (size_t)h * d, *k = q + D, *v = q + 2 * D;
        const int *id = ids + (size_t)(w % nw) * T;
        float *p = probs + (size_t)it * T * T;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, d, scale, q, ld, k, ld, 0.0f, p, T);
        for (int i = 0; i < T; i++) {
            float *row = p + (size_t)i * T;
            const float *b = bias + ((size_t)h * T + i) * T;
            for (int j = 0; j < T; j++) {
                float s = row[j] + b[j];
                if (id[i] != id[j]) s += mask_value;
                row[j] = s;
            }
            msq_softmax_row(row, row, T);
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, d, T, 1.0f, p, T, v, ld, 0.0f,
                    out + (size_t)w * T * D + (size_t)h * d, D);
    }
    free(bias);
    free(ids);
}

void msq_window_attention_forward_ref(float *out, float *probs, const float *qkv, const float *table, int windows,
                                      int window, int heads, int head_dim, int pad_h, int pad_w, int shift_h,
                                      int shift_w, float scale) {
    const int ws = window, T = ws * ws, d = head_dim, D = heads * head_dim, ld = 3 * D;
    const int nwc = pad_w / ws, nw = (pad_h / ws) * nwc;
    double *s = malloc(sizeof(double) * (size_t)T);
    if (!s) return;
    for (int w = 0; w < windows; w++)
        for (int h = 0; h < heads; h++) {
            const float *q = qkv + (size_t)w * T * ld + (size_t)h * d, *k = q + D, *v = q + 2 * D;
            float *p = probs + ((size_t)w * heads + h) * T * T;
            const int wi = w % nw;
            for (int i = 0; i < T; i++) {
                const int ri = (wi / nwc) * ws + i / ws, ci = (wi % nwc) * ws + i % ws;
                double mx = -INFINITY, sum = 0;
                for (int j = 0; j < T; j++) {
                    const int rj = (wi / nwc) * ws + j / ws, cj = (wi % nwc) * ws + j % ws;
                    double dot = 0;
                    for (int c = 0; c < d; c++) dot += (double)q[(size_t)i * ld + c] * k[(size_t)j * ld + c];
                    const int same = region(ri, pad_h, ws, shift_h) == region(rj, pad_h, ws, shift_h) &&
                                     region(ci, pad_w, ws, shift_w) == region(cj, pad_w, ws, shift_w);
                    s[j] = scale * dot + table[(size_t)rel_index(i, j, ws) * heads + h] + (same ? 0.0 : mask_value);
                    mx = s[j] > mx ? s[j] : mx;
                }
                for (int j = 0; j < T; j++) sum += exp(s[j] - mx);
                for (int j = 0; j < T; j++) p[(size_t)i * T + j] = (float)(exp(s[j] - mx) / sum);
            }
            for (int i = 0; i < T; i++)
                for (int c = 0; c < d; c++) {
                    double acc = 0;
                    for (int j = 0; j < T; j++) acc += (double)p[(size_t)i * T + j] * v[(size_t)j * ld + c];
                    out[(size_t)w * T * D + (size_t)i * D + (size_t)h * d + c] = (float)acc;
                }
        }
    free(s);
}

/* Shape: dout[W, T, H·d], qkv and probs (the forward's) -> dqkv[W, T, 3, H, d] (accumulated),
   dtable[(2ws−1)², H] (accumulated; may be NULL). */
void msq_window_attention_backward(float *dqkv, float *dtable, const float *dout, const float *qkv,
                                   const float *probs, int windows, int window, int heads, int head_dim,
                                   float scale) {
    const int ws = window, T = ws * ws, d = head_dim, D = heads * head_dim, ld = 3 * D;
    const int chunks = (windows + WINDOW_CHUNK - 1) / WINDOW_CHUNK;
    const long tasks = (long)heads * chunks;
    const int team = msq_conv_team_size(tasks);
    float *scratch = malloc(sizeof(float) * (size_t)T * T * (size_t)team);
    float *partial = dtable ? calloc((size_t)tasks * T * T, sizeof(float)) : NULL;
    if (!scratch || (dtable && !partial)) { /* out of memory: slow but right */
        free(scratch);
        free(partial);
        msq_window_attention_backward_ref(dqkv, dtable, dout, qkv, probs, windows, window, heads, head_dim, scale);
        return;
    }
    #pragma omp parallel num_threads(team) if (team > 1)
    {
        float *ds = scratch + (size_t)T * T * omp_get_thread_num();
        #pragma omp for schedule(static)
        for (long task = 0; task < tasks; task++) {
            const int h = (int)(task / chunks), chunk = (int)(task % chunks);
            const int w1 = (chunk + 1) * WINDOW_CHUNK < windows ? (chunk + 1) * WINDOW_CHUNK : windows;
            for (int w = chunk * WINDOW_CHUNK; w < w1; w++) {
                const size_t base = (size_t)w * T * ld + (size_t)h * d;
                const float *q = qkv + base, *k = q + D, *v = q + 2 * D;
                float *dq = dqkv + base, *dk = dq + D, *dv = dq + 2 * D;
                const float *p = probs + ((size_t)w * heads + h) * T * T;
                const float *go = dout + (size_t)w * T * D + (size_t)h * d;
                msq_attention_head_backward(dq, dk, dv, ds, go, q, k, v, p, T, d, D, ld, scale);
                if (partial) {
                    float *acc = partial + (size_t)task * T * T;
                    for (size_t e = 0; e < (size_t)T * T; e++) acc[e] += ds[e];
                }
            }
        }
    }
    if (partial) {
        /* Chunks in order per head, then each (i, j) into its table entry in row-major order. */
        for (int h = 0; h < heads; h++) {
            float *sum = partial + (size_t)h * chunks * T * T;
            for (int c = 1; c < chunks; c++) {
                const float *src = sum + (size_t)c * T * T;
                for (size_t e = 0; e < (size_t)T * T; e++) sum[e] += src[e];
            }
            for (int i = 0; i < T; i++)
                for (int j = 0; j < T; j++) dtable[(size_t)rel_index(i, j, ws) * heads + h] += sum[(size_t)i * T + j];
        }
    }
    free(scratch);
    free(partial);
}

void msq_window_attention_backward_ref(float *dqkv, float *dtable, const float *dout, const float *qkv,
                                       const float *probs, int windows, int window, int heads, int head_dim,
                                       float scale) {
    const int ws = window, T = ws * ws, d = head_dim, D = heads * head_dim, ld = 3 * D;
    const int entries = (2 * ws - 1) * (2 * ws - 1);
    double *ds = malloc(sizeof(double) * (size_t)T * T);
    double *dt = calloc((size_t)entries * heads, sizeof(double));
    if (!ds || !dt) {
        free(ds);
        free(dt);
        return;
    }
    for (int w = 0; w < windows; w++)
        for (int h = 0; h < heads; h++) {
            const size_t base = (size_t)w * T * ld + (size_t)h * d;
            const float *q = qkv + base, *k = q + D, *v = q + 2 * D;
            float *dq = dqkv + base, *dk = dq + D, *dv = dq + 2 * D;
            const float *p = probs + ((size_t)w * heads + h) * T * T, *go = dout + (size_t)w * T * D + (size_t)h * d;
            msq_attention_head_backward_ref(dq, dk, dv, ds, go, q, k, v, p, T, d, D, ld, scale);
            for (int i = 0; i < T; i++)
                for (int j = 0; j < T; j++) dt[(size_t)rel_index(i, j, ws) * heads + h] += ds[(size_t)i * T + j];
        }
    if (dtable)
        for (int e = 0; e < entries * heads; e++) dtable[e] += (float)dt[e];
    free(ds);
    free(dt);
}
