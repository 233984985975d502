/* batchnorm.c — per-channel batch normalisation over x[n, c, hw].
 *
 * Channel statistics are accumulated in double, two-pass (mean, then squared deviations), by a
 * single thread per channel in a fixed order, so results never depend on the thread count.
 * The per-element arithmetic is in float and identical in the fast and reference kernels. */
#include "msq_kernels.h"
#include "activation_math.h"
#include <math.h>

#define BN_PARALLEL_MIN 16384L /* below this many elements a parallel region costs more than it saves */

static inline size_t row(int i, int ch, int c, int hw) { return ((size_t)i * c + ch) * hw; }

/* The activation a pass fuses after the normalisation. */
enum { BN_PLAIN = 0, BN_RELU = 1, BN_HARDSWISH = 2 };

/* act(v), as activation.c computes it. */
static inline float activate(int act, float v) {
    return act == BN_RELU ? (v < 0.0f ? 0.0f : v) : act == BN_HARDSWISH ? hardswish_f(v) : v;
}

static inline float eval_invstd(float running_var, float eps) {
    return (float)(1.0 / sqrt((double)running_var + (double)eps));
}

/* Running-average update and saved statistics, shared so both kernels round alike. PyTorch puts
   the unbiased variance into running_var; with m == 1 that is 0/0 = NaN, as in PyTorch's arithmetic
   (its Python layer refuses to train on one value per channel, and so does MSQ's). */
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

/* ---------------------------------------------------------------- reference */

/* y = act(BN(x)), act one of BN_PLAIN, BN_RELU, BN_HARDSWISH (as activation.c computes them). */
static void forward_train_ref(float *y, float *save_mean, float *save_invstd, float *running_mean,
                              float *running_var, const float *x, const float *gamma,
                              const float *beta, int n, int c, int hw, float momentum, float eps,
                              int act) {
    long m = (long)n * hw;
    for (int ch = 0; ch < c; ch++) {
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
        finish_stats(save_mean, save_invstd, running_mean, running_var, ch, mean, sq, m, momentum, eps);
        float mu = save_mean[ch], a = gamma[ch] * save_invstd[ch], b = beta[ch];
        for (int i = 0; i < n; i++)
            for (int j = 0; j < hw; j++) {
                size_t o = row(i, ch, c, hw) + j;
                y[o] = activate(act, (x[o] - mu) * a + b);
            }
    }
}

void msq_batchnorm_forward_train_ref(float *y, float *save_mean, float *save_invstd,
                                     float *running_mean, float *running_var,
                                     const float *x, const float *gamma, const float *beta,
                                     int n, int c, int hw, float momentum, float eps) {
    forward_train_ref(y, save_mean, save_invstd, running_mean, running_var, x, gamma, beta, n, c, hw,
                      momentum, eps, 0);
}

void msq_batchnorm_relu_forward_train_ref(float *y, float *save_mean, float *save_invstd,
                                          float *running_mean, float *running_var,
                                          const float *x, const float *gamma, const float *beta,
                                          int n, int c, int hw, float momentum, float eps) {
    forward_train_ref(y, save_mean, save_invstd, running_mean, running_var, x, gamma, beta, n, c, hw,
                      momentum, eps, BN_RELU);
}

void msq_batchnorm_hardswish_forward_train_ref(float *y, float *save_mean, float *save_invstd,
                                               float *running_mean, float *running_var,
                                               const float *x, const float *gamma, const float *beta,
                                               int n, int c, int hw, float momentum, float eps) {
    forward_train_ref(y, save_mean, save_invstd, running_mean, running_var, x, gamma, beta, n, c, hw,
                      momentum, eps, BN_HARDSWISH);
}

void msq_batchnorm_forward_eval_ref(float *y, const float *x, const float *gamma, const float *beta,
                                    const float *running_mean, const float *running_var,
                                    int n, int c, int hw, float eps) {
    for (int ch = 0; ch < c; ch++) {
        float mu = running_mean[ch], a = gamma[ch] * eval_invstd(running_var[ch], eps), b = beta[ch];
        for (int i = 0; i < n; i++)
            for (int j = 0; j < hw; j++) {
                size_t o = row(i, ch, c, hw) + j;
                y[o] = (x[o] - mu) * a + b;
            }
    }
}

/* Shared tail of both backward kernels: the channel's dgamma/dbeta from the double sums. */
static inline void add_param_grads(float *dgamma, float *dbeta, int ch, double sdy, double sdyx,
                                   float invstd) {
    if (dgamma) dgamma[ch] += (float)(sdyx * (double)invstd);
    if (dbeta) dbeta[ch] += (float)sdy;
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

static void backward_ref(float *dx, float *dgamma, float *dbeta, const float *dy, const float *y,
                         const float *x, const float *gamma, const float *beta, const float *save_mean,
                         const float *save_invstd, int n, int c, int hw) {
    long m = (long)n * hw;
    for (int ch = 0; ch < c; ch++) {
        float mu = save_mean[ch], invstd = save_invstd[ch];
        float a = gamma[ch] * invstd, b = beta ? beta[ch] : 0.0f;
        double sdy = 0.0, sdyx = 0.0;
        for (int i = 0; i < n; i++)
            for (int j = 0; j < hw; j++) {
                size_t o = row(i, ch, c, hw) + j;
                const float g = fused_grad(y, beta, dy, x, o, mu, a, b);
                sdy += g;
                sdyx += (double)g * ((double)x[o] - (double)mu);
            }
        add_param_grads(dgamma, dbeta, ch, sdy, sdyx, invstd);
        if (!dx) continue;
        /* PyTorch's form: dx = (dy - mean(dy) - (x - mean) * proj) * gamma * invstd. */
        float k = gamma[ch] * invstd;
        float gm = (float)(sdy / (double)m);
        float proj = (float)(sdyx * (double)invstd * (double)invstd / (double)m);
        for (int i = 0; i < n; i++)
            for (int j = 0; j < hw; j++) {
                size_t o = row(i, ch, c, hw) + j;
                dx[o] += (fused_grad(y, beta, dy, x, o, mu, a, b) - gm - (x[o] - mu) * proj) * k;
            }
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
        add_param_grads(dgamma, dbeta, ch, sdy, sdyx, invstd);
    }
}

/* ---------------------------------------------------------------- fast: OpenMP over channels,
   simd over the contiguous hw run of each (sample, channel) */

static void forward_train(float *y, float *save_mean, float *save_invstd, float *running_mean,
                          float *running_var, const float *x, const float *gamma, const float *beta,
                          int n, int c, int hw, float momentum, float eps, int act) {
    long m = (long)n * hw;
    #pragma omp parallel for schedule(static) if ((long)c * m > BN_PARALLEL_MIN)
    for (int ch = 0; ch < c; ch++) {
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
        finish_stats(save_mean, save_invstd, running_mean, running_var, ch, mean, sq, m, momentum, eps);
        float mu = save_mean[ch], a = gamma[ch] * save_invstd[ch], b = beta[ch];
        for (int i = 0; i < n; i++) {
            const float *xr = x + row(i, ch, c, hw);
            float *yr = y + row(i, ch, c, hw);
            if (act == BN_RELU) {
                #pragma omp simd
                for (int j = 0; j < hw; j++) {
                    const float v = (xr[j] - mu) * a + b;
                    yr[j] = v < 0.0f ? 0.0f : v;
                }
            } else if (act == BN_HARDSWISH) {
                #pragma omp simd
                for (int j = 0; j < hw; j++) yr[j] = hardswish_f((xr[j] - mu) * a + b);
            } else {
                #pragma omp simd
                for (int j = 0; j < hw; j++) yr[j] = (xr[j] - mu) * a + b;
            }
        }
    }
}

void msq_batchnorm_forward_train(float *y, float *save_mean, float *save_invstd,
                                 float *running_mean, float *running_var,
                                 const float *x, const float *gamma, const float *beta,
                                 int n, int c, int hw, float momentum, float eps) {
    forward_train(y, save_mean, save_invstd, running_mean, running_var, x, gamma, beta, n, c, hw,
                  momentum, eps, 0);
}

void msq_batchnorm_relu_forward_train(float *y, float *save_mean, float *save_invstd,
                                      float *running_mean, float *running_var,
                                      const float *x, const float *gamma, const float *beta,
                                      int n, int c, int hw, float momentum, float eps) {
    forward_train(y, save_mean, save_invstd, running_mean, running_var, x, gamma, beta, n, c, hw,
                  momentum, eps, BN_RELU);
}

void msq_batchnorm_hardswish_forward_train(float *y, float *save_mean, float *save_invstd,
                                           float *running_mean, float *running_var,
                                           const float *x, const float *gamma, const float *beta,
                                           int n, int c, int hw, float momentum, float eps) {
    forward_train(y, save_mean, save_invstd, running_mean, running_var, x, gamma, beta, n, c, hw,
                  momentum, eps, BN_HARDSWISH);
}

void msq_batchnorm_forward_eval(float *y, const float *x, const float *gamma, const float *beta,
                                const float *running_mean, const float *running_var,
                                int n, int c, int hw, float eps) {
    #pragma omp parallel for schedule(static) if ((long)c * n * hw > BN_PARALLEL_MIN)
    for (int ch = 0; ch < c; ch++) {
        float mu = running_mean[ch], a = gamma[ch] * eval_invstd(running_var[ch], eps), b = beta[ch];
        for (int i = 0; i < n; i++) {
            const float *xr = x + row(i, ch, c, hw);
            float *yr = y + row(i, ch, c, hw);
            #pragma omp simd
            for (int j = 0; j < hw; j++) yr[j] = (xr[j] - mu) * a + b;
        }
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
        add_param_grads(dgamma, dbeta, ch, sdy, sdyx, invstd);
        if (!dx) continue;
        float k = gamma[ch] * invstd;
        float gm = (float)(sdy / (double)m);
        float proj = (float)(sdyx * (double)invstd * (double)invstd / (double)m);
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
        add_param_grads(dgamma, dbeta, ch, sdy, sdyx, invstd);
    }
}
