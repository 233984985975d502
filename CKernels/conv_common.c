/* conv_common.c — what the conv files share, below the algorithms that use it (see conv.c): the
 * shape maker, the team size, the workspace allocation, and the F(2x2, 3x3) weight transform of both Winograd
 * layouts (winograd.c, winograd_interleaved.c). Calls nothing above it. */
#include "msq_kernels.h"
#include "conv_internal.h"
#include <omp.h>
#include <stddef.h>
#include <stdlib.h>

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

int msq_conv_team_size(long items) {
    if (omp_in_parallel()) return 1;
    const long t = omp_get_max_threads();
    return (int)(items < t ? (items < 1 ? 1 : items) : t);
}

/* Caller's workspace, or a private one sized for the current thread count. */
float *msq_conv_workspace_or_alloc(void *workspace, size_t bytes, float **owned) {
    *owned = NULL;
    if (workspace) return (float *)workspace;
    bytes = (bytes + 63) / 64 * 64 + 64; /* aligned_alloc wants a multiple of the alignment */
    *owned = aligned_alloc(64, bytes);
    return *owned;
}

/* U[ξ][co][ci] = (G g G^T)[ξ], G = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1], for eight input
   channels at a time (one per lane; the last block's missing lanes compute zeros and are not
   stored): every U row is written as contiguous runs, and the arithmetic runs 8-wide. */
typedef float wv8 __attribute__((vector_size(32), aligned(4)));

void msq_winograd_transform_weights(float *u, const float *w, const msq_conv2d_shape *s) {
    const size_t plane = (size_t)s->c_out * s->c_in;
    #pragma omp for schedule(static)
    for (int co = 0; co < s->c_out; co++)
        for (int ci0 = 0; ci0 < s->c_in; ci0 += 8) {
            const int lanes = s->c_in - ci0 < 8 ? s->c_in - ci0 : 8;
            const float *g = w + ((size_t)co * s->c_in + ci0) * 9;
            wv8 gk[9];
            for (int k = 0; k < 9; k++)
                for (int l = 0; l < 8; l++) gk[k][l] = l < lanes ? g[l * 9 + k] : 0.0f;
            wv8 t[4][3]; /* G g */
            for (int j = 0; j < 3; j++) {
                const wv8 g0 = gk[j], g1 = gk[3 + j], g2 = gk[6 + j];
                t[0][j] = g0;
                t[1][j] = 0.5f * (g0 + g1 + g2);
                t[2][j] = 0.5f * (g0 - g1 + g2);
                t[3][j] = g2;
            }
            float *dst = u + (size_t)co * s->c_in + ci0;
            for (int i = 0; i < 4; i++) {
                const wv8 a = t[i][0], b = t[i][1], c = t[i][2];
                const wv8 row[4] = {a, 0.5f * (a + b + c), 0.5f * (a - b + c), c};
                for (int j = 0; j < 4; j++) {
                    float *d = dst + (size_t)(4 * i + j) * plane;
                    if (lanes == 8) *(wv8 *)d = row[j];
                    else for (int l = 0; l < lanes; l++) d[l] = row[j][l];
                }
            }
        }
}

