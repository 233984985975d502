/* channel_scale.c — the last op of a squeeze-excitation block: every channel plane scaled by its
 * gate, and its backward fused into one pass over dy and x.
 *
 *     forward   y[b,c,i]  = x[b,c,i] · s[b,c]
 *     backward  dx[b,c,i] += dy[b,c,i] · s[b,c],   ds[b,c] += Σ_i dy[b,c,i] · x[b,c,i]
 *
 * Planes are split over threads (each plane written by one thread). The fast backward sums ds in
 * eight interleaved partial sums (a fixed order, so vector registers can hold them without
 * reassociation flags) added pairwise at the end; results depend only on the plane size. */
#include "msq_kernels.h"
#include <stddef.h>

#define CS_PARALLEL_MIN 65536 /* elements; below this a parallel region costs more than it saves */

/* x[n,c,hw], s[n,c] -> y[n,c,hw]. */
void msq_channel_scale_forward(float *y, const float *x, const float *s, int n, int c, int hw) {
    const long planes = (long)n * c;
    #pragma omp parallel for schedule(static) if (planes * hw > CS_PARALLEL_MIN)
    for (long p = 0; p < planes; p++) {
        const float g = s[p];
        const float *restrict xp = x + (size_t)p * hw;
        float *restrict yp = y + (size_t)p * hw;
        for (int i = 0; i < hw; i++) yp[i] = xp[i] * g;
    }
}

void msq_channel_scale_forward_ref(float *y, const float *x, const float *s, int n, int c, int hw) {
    for (long p = 0; p < (long)n * c; p++)
        for (int i = 0; i < hw; i++) y[(size_t)p * hw + i] = x[(size_t)p * hw + i] * s[p];
}

/* dy[n,c,hw], x[n,c,hw], s[n,c] -> dx[n,c,hw] and ds[n,c], both accumulated; either may be NULL. */
void msq_channel_scale_backward(float *dx, float *ds, const float *dy, const float *x, const float *s,
                                int n, int c, int hw) {
    const long planes = (long)n * c;
    #pragma omp parallel for schedule(static) if (planes * hw > CS_PARALLEL_MIN)
    for (long p = 0; p < planes; p++) {
        const float *restrict dyp = dy + (size_t)p * hw;
        const float *restrict xp = x + (size_t)p * hw;
        if (dx) {
            const float g = s[p];
            float *restrict dxp = dx + (size_t)p * hw;
            for (int i = 0; i < hw; i++) dxp[i] += dyp[i] * g;
        }
        if (ds) {
            float part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            int i = 0;
            for (; i + 8 <= hw; i += 8)
                for (int k = 0; k < 8; k++) part[k] += dyp[i + k] * xp[i + k];
            for (int k = 0; i < hw; i++, k++) part[k] += dyp[i] * xp[i];
            ds[p] += ((part[0] + part[4]) + (part[2] + part[6])) + ((part[1] + part[5]) + (part[3] + part[7]));
        }
    }
}

void msq_channel_scale_backward_ref(float *dx, float *ds, const float *dy, const float *x, const float *s,
                                    int n, int c, int hw) {
    for (long p = 0; p < (long)n * c; p++) {
        float sum = 0.0f;
        for (int i = 0; i < hw; i++) {
            const size_t j = (size_t)p * hw + i;
            if (dx) dx[j] += dy[j] * s[p];
            sum += dy[j] * x[j];
        }
        if (ds) ds[p] += sum;
    }
}
