/* batchnorm.c — per-channel batch normalisation over x[n, c, hw].
 *
 * Channel statistics are accumulated in double, two-pass (mean, then squared deviations), by a
 * single thread per channel in a fixed order, so results never depend on the thread count.
 * The per-element arithmetic is in float and identical in the fast and reference kernels.
 *
 * Every kernel is put together from four per-channel steps, each with a reference and a fast
 * version: the statistics (channel_stats), the normalisation (normalize_channel), the backward's
 * two sums (grad_sums) and the input gradient (input_grad). The one-process kernels run them back
 * to back; the split ones (msq_batchnorm_stats, _apply_train, _backward_reduce, _backward_apply)
 * stop where a synchronised batch norm sums the per-channel values over its processes. */
#include "msq_kernels.h"
#include "activation_math.h"
#include <math.h>

#define BN_PARALLEL_MIN 16384L /* below this many elements a parallel region costs more than it saves */

#define BN_INLINE static inline __attribute__((always_inline))

static inline size_t row(int i, int ch, int c, int hw) { return ((size_t)i * c + ch) * hw; }

/* act(v), as activation.c computes it. */
static inline float activate(int act, float v) {
    return act == MSQ_BN_FUSE_RELU ? (v < 0.0f ? 0.0f : v) : act == MSQ_BN_FUSE_HARDSWISH ? hardswish_f(v) : v;
}

static inline float eval_invstd(float running_var, float eps) {
    return (float)(1.0 / sqrt((double)running_var + (double)eps));
}

/* Running-average update and saved statistics, shared so all kernels round alike. PyTorch puts
   the unbiased variance into running_var; with m == 1 that is 0/0 = NaN, as in PyTorch's arithmetic
   (its Python layer refuses to train on one value per channel, and so does MSQ's). `sq` is the
   sum of squared deviations from `mean` over the m values. */
static inline void finish_stats(float *save_mean, float *save_invstd, float *running_mean,
                                float *running_var, int ch, double mean, double sq, long m,
                                float momentum, float eps) {
    double invstd = 1.0 / sqrt(sq / (double)m + (double)eps);
    save_mean[ch] = (float)mean;
    save_invstd[ch] = (float)invstd;
    double mo = (double)momentum;
    if (running_mean) running_mean[ch] = (float)((1.0 - mo) * running_mean[ch] + mo * mean);
    if (running_var) running_var[ch] = (float)((1.0 - mo) * running_var[ch] + mo * (sq / (double)(m - 1)));
}

/* The channel's dgamma/dbeta from the double sums Σg and Σg·x̂. */
static inline void add_param_grads(float *dgamma, float *dbeta, int ch, double sdy, double sdy_xhat) {
    if (dgamma) dgamma[ch] += (float)sdy_xhat;
    if (dbeta) dbeta[ch] += (float)sdy;
}

/* PyTorch's form of the training input gradient, dx = (g − gm − (x − μ)·proj)·k with k = γ·invstd,
   gm = Σg/m and proj = Σg·x̂·invstd/m (Σg·x̂ = Σg·(x − μ)·invstd, rounded once in double). */
static inline void dx_coefficients(float *k, float *gm, float *proj, float gamma, float invstd,
                                   double sdy, double sdy_xhat, long m) {
    *k = gamma * invstd;
    *gm = (float)(sdy / (double)m);
    *proj = (float)(sdy_xhat * (double)invstd / (double)m);
}

/* The gradient reaching BN's output: dy; with the fused ReLU's output y, relu'(·) dy
   (activation.c's relu_b: 0 where y <= 0); with the fused hard-swish's β, hardswish'(v) dy for
   v = (x − μ)·a + β recomputed exactly as the forward computed it (a = γ·invstd). */
static inline float fused_grad(const float *y, const float *beta, const float *dy, const float *x, size_t o,
                               float mu, float a, float b) {
    if (y) return y[o] <= 0.0f ? 0.0f : dy[o];
    if (beta) return hardswish_b(dy[o], (x[o] - mu) * a + b);
    return dy[o];
}

/* ---------------------------------------------------------------- reference steps */

/* Σx and Σ(x − Σx/m)² over channel ch's m = n·hw values (0 and 0 when m = 0). */
static void channel_stats_ref(double *sum_out, double *sq_out, const float *x, int ch, int n, int c, int hw) {
    long m = (long)n * hw;
    double sum = 0.0;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < hw; j++) sum += x[row(i, ch, c, hw) + j];
    double mean = sum / (double)m;
    double sq = 0.0;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < hw; j++) {
            double d = (double)x[row(i, ch, c, hw) + j] - mean;
            sq += d * d;
        }
    *sum_out = sum;
    *sq_out = sq;
}

/* y = act((x − μ)·a + b) over channel ch. */
static void normalize_channel_ref(float *y, const float *x, int ch, float mu, float a, float b, int act,
                                  int n, int c, int hw) {
    for (int i = 0; i < n; i++)
        for (int j = 0; j < hw; j++) {
            size_t o = row(i, ch, c, hw) + j;
            y[o] = activate(act, (x[o] - mu) * a + b);
        }
}

/* Σg and Σg·(x − μ) over channel ch, g as fused_grad. */
static void grad_sums_ref(double *sdy_out, double *sdyx_out, const float *dy, const float *y, const float *x,
                          const float *beta, int ch, float mu, float a, float b, int n, int c, int hw) {
    double sdy = 0.0, sdyx = 0.0;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < hw; j++) {
            size_t o = row(i, ch, c, hw) + j;
            const float g = fused_grad(y, beta, dy, x, o, mu, a, b);
            sdy += g;
            sdyx += (double)g * ((double)x[o] - (double)mu);
        }
    *sdy_out = sdy;
    *sdyx_out = sdyx;
}

/* dx += (g − gm − (x − μ)·proj)·k over channel ch. */
static void input_grad_ref(float *dx, const float *dy, const float *y, const float *x, const float *beta, int ch,
                           float mu, float a, float b, float k, float gm, float proj, int n, int c, int hw) {
    for (int i = 0; i < n; i++)
        for (int j = 0; j < hw; j++) {
            size_t o = row(i, ch, c, hw) + j;
            dx[o] += (fused_grad(y, beta, dy, x, o, mu, a, b) - gm - (x[o] - mu) * proj) * k;
        }
}

/* ---------------------------------------------------------------- reference kernels */

/* y = act(BN(x)), act a msq_batchnorm_fusion. */
static void forward_train_ref(float *y, float *save_mean, float *save_invstd, float *running_mean,
                              float *running_var, const float *x, const float *gamma,
                              const float *beta, int n, int c, int hw, float momentum, float eps,
                              int act) {
    long m = (long)n * hw;
    for (int ch = 0; ch < c; ch++) {
        double sum, sq;
        channel_stats_ref(&sum, &sq, x, ch, n, c, hw);
        finish_stats(save_mean, save_invstd, running_mean, running_var, ch, sum / (double)m, sq, m, momentum, eps);
        normalize_channel_ref(y, x, ch, save_mean[ch], gamma[ch] * save_invstd[ch], beta[ch], act, n, c, hw);
    }
}

void msq_batchnorm_forward_train_ref(float *y, float *save_mean, float *save_invstd,
                                     float *running_mean, float *running_var,
                                     const float *x, const float *gamma, const float *beta,
                                     int n, int c, int hw, float momentum, float eps) {
    forward_train_ref(y, save_mean, save_invstd, running_mean, running_var, x, gamma, beta, n, c, hw,
                      momentum, eps, MSQ_BN_FUSE_NONE);
}

void msq_batchnorm_relu_forward_train_ref(float *y, float *save_mean, float *save_invstd,
                                          float *running_mean, float *running_var,
                                          const float *x, const float *gamma, const float *beta,
                                          int n, int c, int hw, float momentum, float eps) {
    forward_train_ref(y, save_mean, save_invstd, running_mean, running_var, x, gamma, beta, n, c, hw,
                      momentum, eps, MSQ_BN_FUSE_RELU);
}

void msq_batchnorm_hardswish_forward_train_ref(float *y, float *save_mean, float *save_invstd,
                                               float *running_mean, float *running_var,
                                               const float *x, const float *gamma, const float *beta,
                                               int n, int c, int hw, float momentum, float eps) {
    forward_train_ref(y, save_mean, save_invstd, running_mean, running_var, x, gamma, beta, n, c, hw,
                      momentum, eps, MSQ_BN_FUSE_HARDSWISH);
}

void msq_batchnorm_stats_ref(double *sum, double *m2, const float *x, int n, int c, int hw) {
    for (int ch = 0; ch < c; ch++) channel_stats_ref(&sum[ch], &m2[ch], x, ch, n, c, hw);
}

void msq_batchnorm_apply_train_ref(float *y, float *save_mean, float *save_invstd,
                                   float *running_mean, float *running_var,
                                   const float *x, const float *gamma, const float *beta,
                                   const double *mean, const double *m2, long count,
                                   int n, int c, int hw, float momentum, float eps,
                                   msq_batchnorm_fusion fusion) {
    for (int ch = 0; ch < c; ch++) {
        finish_stats(save_mean, save_invstd, running_mean, running_var, ch, mean[ch], m2[ch], count, momentum, eps);
        normalize_channel_ref(y, x, ch, save_mean[ch], gamma[ch] * save_invstd[ch], beta[ch], (int)fusion, n, c, hw);
    }
}

void msq_batchnorm_forward_eval_ref(float *y, const float *x, const float *gamma, const float *beta,
                                    const float *running_mean, const float *running_var,
                                    int n, int c, int hw, float eps) {
    for (int ch = 0; ch < c; ch++) {
        float mu = running_mean[ch], a = gamma[ch] * eval_invstd(running_var[ch], eps), b = beta[ch];
        normalize_channel_ref(y, x, ch, mu, a, b, MSQ_BN_FUSE_NONE, n, c, hw);
    }
}

static void backward_ref(float *dx, float *dgamma, float *dbeta, const float *dy, const float *y,
                         const float *x, const float *gamma, const float *beta, const float *save_mean,
                         const float *save_invstd, int n, int c, int hw) {
    long m = (long)n * hw;
    for (int ch = 0; ch < c; ch++) {
        float mu = save_mean[ch], invstd = save_invstd[ch];
        float a = gamma[ch] * invstd, b = beta ? beta[ch] : 0.0f;
        double sdy, sdyx;
        grad_sums_ref(&sdy, &sdyx, dy, y, x, beta, ch, mu, a, b, n, c, hw);
        double sdy_xhat = sdyx * (double)invstd;
        add_param_grads(dgamma, dbeta, ch, sdy, sdy_xhat);
        if (!dx) continue;
        float k, gm, proj;
        dx_coefficients(&k, &gm, &proj, gamma[ch], invstd, sdy, sdy_xhat, m);
        input_grad_ref(dx, dy, y, x, beta, ch, mu, a, b, k, gm, proj, n, c, hw);
    }
}

void msq_batchnorm_backward_ref(float *dx, float *dgamma, float *dbeta, const float *dy,
                                const float *x, const float *gamma, const float *save_mean,
                                const float *save_invstd, int n, int c, int hw) {
    backward_ref(dx, dgamma, dbeta, dy, NULL, x, gamma, NULL, save_mean, save_invstd, n, c, hw);
}

void msq_batchnorm_relu_backward_ref(float *dx, float *dgamma, float *dbeta, const float *dy,
                                     const float *y, const float *x, const float *gamma,
                                     const float *save_mean, const float *save_invstd,
                                     int n, int c, int hw) {
    backward_ref(dx, dgamma, dbeta, dy, y, x, gamma, NULL, save_mean, save_invstd, n, c, hw);
}

void msq_batchnorm_hardswish_backward_ref(float *dx, float *dgamma, float *dbeta, const float *dy,
                                          const float *x, const float *gamma, const float *beta,
                                          const float *save_mean, const float *save_invstd,
                                          int n, int c, int hw) {
    backward_ref(dx, dgamma, dbeta, dy, NULL, x, gamma, beta, save_mean, save_invstd, n, c, hw);
}

void msq_batchnorm_backward_reduce_ref(double *sum_dy, double *sum_dy_xhat, float *dgamma, float *dbeta,
                                       const float *dy, const float *y, const float *x, const float *gamma,
                                       const float *beta, const float *save_mean, const float *save_invstd,
                                       int n, int c, int hw) {
    for (int ch = 0; ch < c; ch++) {
        float mu = save_mean[ch], invstd = save_invstd[ch];
        float a = gamma[ch] * invstd, b = beta ? beta[ch] : 0.0f;
        double sdy, sdyx;
        grad_sums_ref(&sdy, &sdyx, dy, y, x, beta, ch, mu, a, b, n, c, hw);
        sum_dy[ch] = sdy;
        sum_dy_xhat[ch] = sdyx * (double)invstd;
        add_param_grads(dgamma, dbeta, ch, sum_dy[ch], sum_dy_xhat[ch]);
    }
}

void msq_batchnorm_backward_apply_ref(float *dx, const float *dy, const float *y, const float *x,
                                      const float *gamma, const float *beta, const float *save_mean,
                                      const float *save_invstd, const double *sum_dy,
                                      const double *sum_dy_xhat, long count, int n, int c, int hw) {
    for (int ch = 0; ch < c; ch++) {
        float mu = save_mean[ch], invstd = save_invstd[ch];
        float a = gamma[ch] * invstd, b = beta ? beta[ch] : 0.0f;
        float k, gm, proj;
        dx_coefficients(&k, &gm, &proj, gamma[ch], invstd, sum_dy[ch], sum_dy_xhat[ch], count);
        input_grad_ref(dx, dy, y, x, beta, ch, mu, a, b, k, gm, proj, n, c, hw);
    }
}

void msq_batchnorm_backward_eval_ref(float *dx, float *dgamma, float *dbeta, const float *dy,
                                     const float *x, const float *gamma, const float *running_mean,
                                     const float *running_var, int n, int c, int hw, float eps) {
    for (int ch = 0; ch < c; ch++) {
        float mu = running_mean[ch], invstd = eval_invstd(running_var[ch], eps);
        float a = gamma[ch] * invstd;
        double sdy = 0.0, sdyx = 0.0;
        for (int i = 0; i < n; i++)
            for (int j = 0; j < hw; j++) {
                size_t o = row(i, ch, c, hw) + j;
                sdy += dy[o];
                sdyx += (double)dy[o] * ((double)x[o] - (double)mu);
                if (dx) dx[o] += dy[o] * a;
            }
        add_param_grads(dgamma, dbeta, ch, sdy, sdyx * (double)invstd);
    }
}

/* ---------------------------------------------------------------- fast steps: simd over the
   contiguous hw run of each (sample, channel); the kernels run OpenMP over channels */

BN_INLINE void channel_stats(double *sum_out, double *sq_out, const float *x, int ch, int n, int c, int hw) {
    long m = (long)n * hw;
    double sum = 0.0;
    for (int i = 0; i < n; i++) {
        const float *xr = x + row(i, ch, c, hw);
        #pragma omp simd reduction(+ : sum)
        for (int j = 0; j < hw; j++) sum += xr[j];
    }
    double mean = sum / (double)m;
    double sq = 0.0;
    for (int i = 0; i < n; i++) {
        const float *xr = x + row(i, ch, c, hw);
        #pragma omp simd reduction(+ : sq)
        for (int j = 0; j < hw; j++) {
            double d = (double)xr[j] - mean;
            sq += d * d;
        }
    }
    *sum_out = sum;
    *sq_out = sq;
}

BN_INLINE void normalize_channel(float *y, const float *x, int ch, float mu, float a, float b, int act,
                                 int n, int c, int hw) {
    for (int i = 0; i < n; i++) {
        const float *xr = x + row(i, ch, c, hw);
        float *yr = y + row(i, ch, c, hw);
        if (act == MSQ_BN_FUSE_RELU) {
            #pragma omp simd
            for (int j = 0; j < hw; j++) {
                const float v = (xr[j] - mu) * a + b;
                yr[j] = v < 0.0f ? 0.0f : v;
            }
        } else if (act == MSQ_BN_FUSE_HARDSWISH) {
            #pragma omp simd
            for (int j = 0; j < hw; j++) yr[j] = hardswish_f((xr[j] - mu) * a + b);
        } else {
            #pragma omp simd
            for (int j = 0; j < hw; j++) yr[j] = (xr[j] - mu) * a + b;
        }
    }
}

BN_INLINE void grad_sums(double *sdy_out, double *sdyx_out, const float *dy, const float *y, const float *x,
                         const float *beta, int ch, float mu, float a, float b, int n, int c, int hw) {
    double dmu = (double)mu, sdy = 0.0, sdyx = 0.0;
    for (int i = 0; i < n; i++) {
        const float *xr = x + row(i, ch, c, hw), *gr = dy + row(i, ch, c, hw);
        const float *yr = y ? y + row(i, ch, c, hw) : NULL;
        if (beta) {
            #pragma omp simd reduction(+ : sdy, sdyx)
            for (int j = 0; j < hw; j++) {
                const float g = hardswish_b(gr[j], (xr[j] - mu) * a + b);
                sdy += g;
                sdyx += (double)g * ((double)xr[j] - dmu);
            }
        } else if (yr) {
            #pragma omp simd reduction(+ : sdy, sdyx)
            for (int j = 0; j < hw; j++) {
                const float g = yr[j] <= 0.0f ? 0.0f : gr[j];
                sdy += g;
                sdyx += (double)g * ((double)xr[j] - dmu);
            }
        } else {
            #pragma omp simd reduction(+ : sdy, sdyx)
            for (int j = 0; j < hw; j++) {
                sdy += gr[j];
                sdyx += (double)gr[j] * ((double)xr[j] - dmu);
            }
        }
    }
    *sdy_out = sdy;
    *sdyx_out = sdyx;
}

BN_INLINE void input_grad(float *dx, const float *dy, const float *y, const float *x, const float *beta, int ch,
                          float mu, float a, float b, float k, float gm, float proj, int n, int c, int hw) {
    for (int i = 0; i < n; i++) {
        const float *xr = x + row(i, ch, c, hw), *gr = dy + row(i, ch, c, hw);
        float *dr = dx + row(i, ch, c, hw);
        if (beta) {
            #pragma omp simd
            for (int j = 0; j < hw; j++)
                dr[j] += (hardswish_b(gr[j], (xr[j] - mu) * a + b) - gm - (xr[j] - mu) * proj) * k;
        } else if (y) {
            const float *yr = y + row(i, ch, c, hw);
            #pragma omp simd
            for (int j = 0; j < hw; j++) dr[j] += ((yr[j] <= 0.0f ? 0.0f : gr[j]) - gm - (xr[j] - mu) * proj) * k;
        } else {
            #pragma omp simd
            for (int j = 0; j < hw; j++) dr[j] += (gr[j] - gm - (xr[j] - mu) * proj) * k;
        }
    }
}

/* ---------------------------------------------------------------- fast kernels: OpenMP over channels */

static void forward_train(float *y, float *save_mean, float *save_invstd, float *running_mean,
                          float *running_var, const float *x, const float *gamma, const float *beta,
                          int n, int c, int hw, float momentum, float eps, int act) {
    long m = (long)n * hw;
    #pragma omp parallel for schedule(static) if ((long)c * m > BN_PARALLEL_MIN)
    for (int ch = 0; ch < c; ch++) {
        double sum, sq;
        channel_stats(&sum, &sq, x, ch, n, c, hw);
        finish_stats(save_mean, save_invstd, running_mean, running_var, ch, sum / (double)m, sq, m, momentum, eps);
        normalize_channel(y, x, ch, save_mean[ch], gamma[ch] * save_invstd[ch], beta[ch], act, n, c, hw);
    }
}

void msq_batchnorm_forward_train(float *y, float *save_mean, float *save_invstd,
                                 float *running_mean, float *running_var,
                                 const float *x, const float *gamma, const float *beta,
                                 int n, int c, int hw, float momentum, float eps) {
    forward_train(y, save_mean, save_invstd, running_mean, running_var, x, gamma, beta, n, c, hw,
                  momentum, eps, MSQ_BN_FUSE_NONE);
}

void msq_batchnorm_relu_forward_train(float *y, float *save_mean, float *save_invstd,
                                      float *running_mean, float *running_var,
                                      const float *x, const float *gamma, const float *beta,
                                      int n, int c, int hw, float momentum, float eps) {
    forward_train(y, save_mean, save_invstd, running_mean, running_var, x, gamma, beta, n, c, hw,
                  momentum, eps, MSQ_BN_FUSE_RELU);
}

void msq_batchnorm_hardswish_forward_train(float *y, float *save_mean, float *save_invstd,
                                           float *running_mean, float *running_var,
                                           const float *x, const float *gamma, const float *beta,
                                           int n, int c, int hw, float momentum, float eps) {
    forward_train(y, save_mean, save_invstd, running_mean, running_var, x, gamma, beta, n, c, hw,
                  momentum, eps, MSQ_BN_FUSE_HARDSWISH);
}

void msq_batchnorm_stats(double *sum, double *m2, const float *x, int n, int c, int hw) {
    #pragma omp parallel for schedule(static) if ((long)c * n * hw > BN_PARALLEL_MIN)
    for (int ch = 0; ch < c; ch++) channel_stats(&sum[ch], &m2[ch], x, ch, n, c, hw);
}

void msq_batchnorm_apply_train(float *y, float *save_mean, float *save_invstd,
                               float *running_mean, float *running_var,
                               const float *x, const float *gamma, const float *beta,
                               const double *mean, const double *m2, long count,
                               int n, int c, int hw, float momentum, float eps,
                               msq_batchnorm_fusion fusion) {
    int act = (int)fusion;
    #pragma omp parallel for schedule(static) if ((long)c * n * hw > BN_PARALLEL_MIN)
    for (int ch = 0; ch < c; ch++) {
        finish_stats(save_mean, save_invstd, running_mean, running_var, ch, mean[ch], m2[ch], count, momentum, eps);
        normalize_channel(y, x, ch, save_mean[ch], gamma[ch] * save_invstd[ch], beta[ch], act, n, c, hw);
    }
}

void msq_batchnorm_forward_eval(float *y, const float *x, const float *gamma, const float *beta,
                                const float *running_mean, const float *running_var,
                                int n, int c, int hw, float eps) {
    #pragma omp parallel for schedule(static) if ((long)c * n * hw > BN_PARALLEL_MIN)
    for (int ch = 0; ch < c; ch++) {
        float mu = running_mean[ch], a = gamma[ch] * eval_invstd(running_var[ch], eps), b = beta[ch];
        normalize_channel(y, x, ch, mu, a, b, MSQ_BN_FUSE_NONE, n, c, hw);
    }
}

static void backward(float *dx, float *dgamma, float *dbeta, const float *dy, const float *y,
                     const float *x, const float *gamma, const float *beta, const float *save_mean,
                     const float *save_invstd, int n, int c, int hw) {
    long m = (long)n * hw;
    #pragma omp parallel for schedule(static) if ((long)c * m > BN_PARALLEL_MIN)
    for (int ch = 0; ch < c; ch++) {
        float mu = save_mean[ch], invstd = save_invstd[ch];
        float a = gamma[ch] * invstd, b = beta ? beta[ch] : 0.0f;
        double sdy, sdyx;
        grad_sums(&sdy, &sdyx, dy, y, x, beta, ch, mu, a, b, n, c, hw);
        double sdy_xhat = sdyx * (double)invstd;
        add_param_grads(dgamma, dbeta, ch, sdy, sdy_xhat);
        if (!dx) continue;
        float k, gm, proj;
        dx_coefficients(&k, &gm, &proj, gamma[ch], invstd, sdy, sdy_xhat, m);
        input_grad(dx, dy, y, x, beta, ch, mu, a, b, k, gm, proj, n, c, hw);
    }
}

void msq_batchnorm_backward(float *dx, float *dgamma, float *dbeta, const float *dy,
                            const float *x, const float *gamma, const float *save_mean,
                            const float *save_invstd, int n, int c, int hw) {
    backward(dx, dgamma, dbeta, dy, NULL, x, gamma, NULL, save_mean, save_invstd, n, c, hw);
}

void msq_batchnorm_relu_backward(float *dx, float *dgamma, float *dbeta, const float *dy,
                                 const float *y, const float *x, const float *gamma,
                                 const float *save_mean, const float *save_invstd,
                                 int n, int c, int hw) {
    backward(dx, dgamma, dbeta, dy, y, x, gamma, NULL, save_mean, save_invstd, n, c, hw);
}

void msq_batchnorm_hardswish_backward(float *dx, float *dgamma, float *dbeta, const float *dy,
                                      const float *x, const float *gamma, const float *beta,
                                      const float *save_mean, const float *save_invstd,
                                      int n, int c, int hw) {
    backward(dx, dgamma, dbeta, dy, NULL, x, gamma, beta, save_mean, save_invstd, n, c, hw);
}

void msq_batchnorm_backward_reduce(double *sum_dy, double *sum_dy_xhat, float *dgamma, float *dbeta,
                                   const float *dy, const float *y, const float *x, const float *gamma,
                                   const float *beta, const float *save_mean, const float *save_invstd,
                                   int n, int c, int hw) {
    #pragma omp parallel for schedule(static) if ((long)c * n * hw > BN_PARALLEL_MIN)
    for (int ch = 0; ch < c; ch++) {
        float mu = save_mean[ch], invstd = save_invstd[ch];
        float a = gamma[ch] * invstd, b = beta ? beta[ch] : 0.0f;
        double sdy, sdyx;
        grad_sums(&sdy, &sdyx, dy, y, x, beta, ch, mu, a, b, n, c, hw);
        sum_dy[ch] = sdy;
        sum_dy_xhat[ch] = sdyx * (double)invstd;
        add_param_grads(dgamma, dbeta, ch, sum_dy[ch], sum_dy_xhat[ch]);
    }
}

void msq_batchnorm_backward_apply(float *dx, const float *dy, const float *y, const float *x,
                                  const float *gamma, const float *beta, const float *save_mean,
                                  const float *save_invstd, const double *sum_dy,
                                  const double *sum_dy_xhat, long count, int n, int c, int hw) {
    #pragma omp parallel for schedule(static) if ((long)c * n * hw > BN_PARALLEL_MIN)
    for (int ch = 0; ch < c; ch++) {
        float mu = save_mean[ch], invstd = save_invstd[ch];
        float a = gamma[ch] * invstd, b = beta ? beta[ch] : 0.0f;
        float k, gm, proj;
        dx_coefficients(&k, &gm, &proj, gamma[ch], invstd, sum_dy[ch], sum_dy_xhat[ch], count);
        input_grad(dx, dy, y, x, beta, ch, mu, a, b, k, gm, proj, n, c, hw);
    }
}

void msq_batchnorm_backward_eval(float *dx, float *dgamma, float *dbeta, const float *dy,
                                 const float *x, const float *gamma, const float *running_mean,
                                 const float *running_var, int n, int c, int hw, float eps) {
    #pragma omp parallel for schedule(static) if ((long)c * n * hw > BN_PARALLEL_MIN)
    for (int ch = 0; ch < c; ch++) {
        float mu = running_mean[ch], invstd = eval_invstd(running_var[ch], eps);
        float a = gamma[ch] * invstd;
        double dmu = (double)mu, sdy = 0.0, sdyx = 0.0;
        for (int i = 0; i < n; i++) {
            const float *xr = x + row(i, ch, c, hw), *gr = dy + row(i, ch, c, hw);
            #pragma omp simd reduction(+ : sdy, sdyx)
            for (int j = 0; j < hw; j++) {
                sdy += gr[j];
                sdyx += (double)gr[j] * ((double)xr[j] - dmu);
            }
            if (dx) {
                float *dr = dx + row(i, ch, c, hw);
                #pragma omp simd
                for (int j = 0; j < hw; j++) dr[j] += gr[j] * a;
            }
        }
        add_param_grads(dgamma, dbeta, ch, sdy, sdyx * (double)invstd);
    }
}
