/* sgd.c — SGD with momentum, PyTorch semantics (dampening 0, optional Nesterov). */
#include "msq_kernels.h"

/* One element of the update, in the header's order of operations. momentum_buf is only read
   when momentum != 0, so callers without momentum may pass NULL. */
static inline void sgd_one(float *w, float *buf, float grad, float lr, float momentum,
                           float weight_decay, int nesterov) {
    float g = grad;
    /* PyTorch skips the decay term when weight_decay == 0 (matters only for inf/NaN weights). */
    if (weight_decay != 0.0f) g = g + weight_decay * *w;
    if (momentum != 0.0f) {
        float b = momentum * *buf + g;
        *buf = b;
        g = nesterov ? g + momentum * b : b;
    }
    *w = *w - lr * g;
}

void msq_sgd_step_ref(float *w, float *momentum_buf, const float *grad, size_t count,
                      float lr, float momentum, float weight_decay, int nesterov) {
    for (size_t i = 0; i < count; i++)
        sgd_one(&w[i], momentum_buf ? &momentum_buf[i] : NULL, grad[i], lr, momentum,
                weight_decay, nesterov);
}

/* The fast kernel does the same per-element arithmetic (no contraction, no reassociation), so it
   matches the reference bit for bit; the loop-invariant branches are split out so each loop is
   straight-line and vectorises. */
#define SGD_PARALLEL_MIN 65536

void msq_sgd_step(float *w, float *momentum_buf, const float *grad, size_t count,
                  float lr, float momentum, float weight_decay, int nesterov) {
    if (momentum == 0.0f) {
        if (weight_decay != 0.0f) {
            #pragma omp parallel for simd schedule(static) if (count > SGD_PARALLEL_MIN)
            for (size_t i = 0; i < count; i++) w[i] = w[i] - lr * (grad[i] + weight_decay * w[i]);
        } else {
            #pragma omp parallel for simd schedule(static) if (count > SGD_PARALLEL_MIN)
            for (size_t i = 0; i < count; i++) w[i] = w[i] - lr * grad[i];
        }
        return;
    }
    float *buf = momentum_buf;
    if (nesterov) {
        #pragma omp parallel for simd schedule(static) if (count > SGD_PARALLEL_MIN)
        for (size_t i = 0; i < count; i++) {
            float g = weight_decay != 0.0f ? grad[i] + weight_decay * w[i] : grad[i];
            float b = momentum * buf[i] + g;
            buf[i] = b;
            w[i] = w[i] - lr * (g + momentum * b);
        }
    } else {
        #pragma omp parallel for simd schedule(static) if (count > SGD_PARALLEL_MIN)
        for (size_t i = 0; i < count; i++) {
            float g = weight_decay != 0.0f ? grad[i] + weight_decay * w[i] : grad[i];
            float b = momentum * buf[i] + g;
            buf[i] = b;
            w[i] = w[i] - lr * b;
        }
    }
}
