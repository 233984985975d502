/* linear.c — fully connected layer: y = x w^T + b, GEMM-based. */
#include "msq_kernels.h"

/* Shapes: y[n,out], x[n,in], w[out,in], b[out] (may be NULL). */
void msq_linear_forward_ref(float *y, const float *x, const float *w, const float *b,
                            int n, int in_features, int out_features) {
    for (int i = 0; i < n; i++)
        for (int o = 0; o < out_features; o++) {
            const float *xr = x + (size_t)i * in_features, *wr = w + (size_t)o * in_features;
            double acc = b ? (double)b[o] : 0.0;
            for (int p = 0; p < in_features; p++) acc += (double)xr[p] * (double)wr[p];
            y[(size_t)i * out_features + o] = (float)acc;
        }
}

void msq_linear_forward(float *y, const float *x, const float *w, const float *b,
                        int n, int in_features, int out_features) {
    if (n <= 0 || out_features <= 0) return;
    /* Seed y with the bias so the GEMM adds onto it (beta = 1) instead of a second pass. */
    if (b) {
        for (int i = 0; i < n; i++)
            for (int o = 0; o < out_features; o++) y[(size_t)i * out_features + o] = b[o];
    }
    msq_gemm(y, x, w, 0, 1, n, out_features, in_features, 1.0f, b ? 1.0f : 0.0f);
}

/* Shapes: dx[n,in] += dy[n,out] w[out,in]; dw[out,in] += dy^T x; db[out] += sum_n dy. */
void msq_linear_backward_ref(float *dx, float *dw, float *db, const float *dy, const float *x,
                             const float *w, int n, int in_features, int out_features) {
    const size_t in = (size_t)in_features, out = (size_t)out_features;
    if (dx)
        for (int i = 0; i < n; i++)
            for (size_t p = 0; p < in; p++) {
                double acc = 0.0;
                for (size_t o = 0; o < out; o++)
                    acc += (double)dy[i * out + o] * (double)w[o * in + p];
                dx[i * in + p] += (float)acc;
            }
    if (dw)
        for (size_t o = 0; o < out; o++)
            for (size_t p = 0; p < in; p++) {
                double acc = 0.0;
                for (int i = 0; i < n; i++) acc += (double)dy[i * out + o] * (double)x[i * in + p];
                dw[o * in + p] += (float)acc;
            }
    if (db)
        for (size_t o = 0; o < out; o++) {
            double acc = 0.0;
            for (int i = 0; i < n; i++) acc += (double)dy[i * out + o];
            db[o] += (float)acc;
        }
}

void msq_linear_backward(float *dx, float *dw, float *db, const float *dy, const float *x,
                         const float *w, int n, int in_features, int out_features) {
    if (n <= 0 || in_features <= 0 || out_features <= 0) return;
    if (dx) msq_gemm(dx, dy, w, 0, 0, n, in_features, out_features, 1.0f, 1.0f);
    if (dw) msq_gemm(dw, dy, x, 1, 0, out_features, in_features, n, 1.0f, 1.0f);
    if (db) {
        /* Row-by-row so the inner loop is contiguous; the order is fixed, hence deterministic. */
        const size_t out = (size_t)out_features;
        for (int i = 0; i < n; i++)
            for (size_t o = 0; o < out; o++) db[o] += dy[i * out + o];
    }
}
