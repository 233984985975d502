/* adamw.c — AdamW, PyTorch's torch.optim.AdamW update (single-tensor path, not amsgrad). */
#include "msq_kernels.h"
#include <math.h>

/* One element in PyTorch's order of operations (each line one rounded float operation):
   w *= decay_factor; m += (1 - beta1)(g - m); v = v·beta2 + (1 - beta2)·g·g;
   w -= step_size·m / (sqrt(v) / bc2_sqrt + eps). */
static inline void adamw_one(float *w, float *m, float *v, float g, float decay_factor,
                             float one_minus_beta1, float beta2, float one_minus_beta2,
                             float step_size, float bc2_sqrt, float eps) {
    float wd = *w * decay_factor;
    float mn = *m + one_minus_beta1 * (g - *m);
    float vn = *v * beta2;
    vn = vn + one_minus_beta2 * g * g;
    float denom = sqrtf(vn) / bc2_sqrt + eps;
    *m = mn;
    *v = vn;
    *w = wd - step_size * mn / denom;
}

void msq_adamw_step_ref(float *w, float *exp_avg, float *exp_avg_sq, const float *grad, size_t count,
                        float decay_factor, float one_minus_beta1, float beta2, float one_minus_beta2,
                        float step_size, float bc2_sqrt, float eps) {
    for (size_t i = 0; i < count; i++)
        adamw_one(&w[i], &exp_avg[i], &exp_avg_sq[i], grad[i], decay_factor, one_minus_beta1, beta2,
                  one_minus_beta2, step_size, bc2_sqrt, eps);
}

/* The same per-element expression (no contraction: -ffp-contract=off), so bit-identical to the
   reference at any thread count; only the loop is parallel and vectorised. */
#define ADAMW_PARALLEL_MIN 32768

void msq_adamw_step(float *w, float *exp_avg, float *exp_avg_sq, const float *grad, size_t count,
                    float decay_factor, float one_minus_beta1, float beta2, float one_minus_beta2,
                    float step_size, float bc2_sqrt, float eps) {
    const float omb1 = one_minus_beta1, omb2 = one_minus_beta2;
    #pragma omp parallel for simd schedule(static) if (count > ADAMW_PARALLEL_MIN)
    for (size_t i = 0; i < count; i++) {
        float g = grad[i];
        float wd = w[i] * decay_factor;
        float mn = exp_avg[i] + omb1 * (g - exp_avg[i]);
        float vn = exp_avg_sq[i] * beta2;
        vn = vn + omb2 * g * g;
        float denom = sqrtf(vn) / bc2_sqrt + eps;
        exp_avg[i] = mn;
        exp_avg_sq[i] = vn;
        w[i] = wd - step_size * mn / denom;
    }
}
