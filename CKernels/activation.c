/* activation.c — pointwise activations and their PyTorch derivatives.
 * The per-element functions are shared by the fast and reference kernels, so both agree
 * bit for bit; the fast ones hoist the switch out of the loop (so the loops vectorise) and
 * split large arrays across threads. NaN propagates through the forward as in PyTorch. */
#include "msq_kernels.h"
#include "activation_math.h"
#include "vector_math.h"
#include <math.h>

/* Spelled out: M_SQRT1_2 and friends are not ISO C. */
#define SQRT1_2 0.70710678118654752440f
#define INV_SQRT_2PI 0.39894228040143267794f
#define ACT_PARALLEL_MIN 65536 /* elements; below this a parallel region costs more than it saves */

static inline float relu_f(float x) { return x < 0.0f ? 0.0f : x; }
static inline float relu6_f(float x) { return x < 0.0f ? 0.0f : (x > 6.0f ? 6.0f : x); }
/* GELU with vector_math.h's erf and exp, whose 8-wide forms (gelu8_f, gelu8_b) do the same
   operations: fast, tail and reference agree bit for bit. */
static inline float gelu_f(float x) { return x * 0.5f * (1.0f + msq_erf1(x * SQRT1_2)); }
static inline float hardsigmoid_f(float x) {
    float r = x + 3.0f;
    r = r < 0.0f ? 0.0f : (r > 6.0f ? 6.0f : r);
    return r / 6.0f;
}

/* dy * act'(x), written as selects so a zero derivative gives exactly 0 even for inf dy.
   Kinks follow PyTorch: threshold_backward (relu'(0) = 0), hardtanh_backward (relu6' = 0 at 0
   and 6), hardswish_backward (x < -3: 0; x <= 3: x/3 + 1/2; else 1), hardsigmoid_backward
   (1/6 on the open interval (-3, 3), else 0). */
static inline float relu_b(float dy, float x) { return x <= 0.0f ? 0.0f : dy; }
static inline float relu6_b(float dy, float x) { return (x <= 0.0f || x >= 6.0f) ? 0.0f : dy; }
static inline float hardsigmoid_b(float dy, float x) { return (x > -3.0f && x < 3.0f) ? dy / 6.0f : 0.0f; }
static inline float gelu_b(float dy, float x) {
    float cdf = 0.5f * (1.0f + msq_erf1(x * SQRT1_2));
    float pdf = INV_SQRT_2PI * msq_exp1(x * x * -0.5f);
    return dy * (cdf + x * pdf);
}

static inline __m256 gelu8_f(__m256 x) {
    const __m256 e = msq_erf8(_mm256_mul_ps(x, _mm256_set1_ps(SQRT1_2)));
    return _mm256_mul_ps(_mm256_mul_ps(x, _mm256_set1_ps(0.5f)), _mm256_add_ps(_mm256_set1_ps(1.0f), e));
}

static inline __m256 gelu8_b(__m256 dy, __m256 x) {
    const __m256 cdf = _mm256_mul_ps(_mm256_set1_ps(0.5f),
                                     _mm256_add_ps(_mm256_set1_ps(1.0f), msq_erf8(_mm256_mul_ps(x, _mm256_set1_ps(SQRT1_2)))));
    const __m256 pdf = _mm256_mul_ps(_mm256_set1_ps(INV_SQRT_2PI),
                                     msq_exp8(_mm256_mul_ps(_mm256_mul_ps(x, x), _mm256_set1_ps(-0.5f))));
    return _mm256_mul_ps(dy, _mm256_add_ps(cdf, _mm256_mul_ps(x, pdf)));
}

static inline float act_fwd(float x, msq_activation kind) {
    switch (kind) {
    case MSQ_ACT_RELU: return relu_f(x);
    case MSQ_ACT_RELU6: return relu6_f(x);
    case MSQ_ACT_HARDSWISH: return hardswish_f(x);
    case MSQ_ACT_GELU: return gelu_f(x);
    case MSQ_ACT_HARDSIGMOID: return hardsigmoid_f(x);
    }
    return x;
}

static inline float act_bwd(float dy, float x, msq_activation kind) {
    switch (kind) {
    case MSQ_ACT_RELU: return relu_b(dy, x);
    case MSQ_ACT_RELU6: return relu6_b(dy, x);
    case MSQ_ACT_HARDSWISH: return hardswish_b(dy, x);
    case MSQ_ACT_GELU: return gelu_b(dy, x);
    case MSQ_ACT_HARDSIGMOID: return hardsigmoid_b(dy, x);
    }
    return dy;
}

void msq_activation_forward_ref(float *y, const float *x, size_t count, msq_activation kind) {
    for (size_t i = 0; i < count; i++) y[i] = act_fwd(x[i], kind);
}

void msq_activation_backward_ref(float *dx, const float *dy, const float *x, size_t count,
                                 msq_activation kind) {
    for (size_t i = 0; i < count; i++) dx[i] += act_bwd(dy[i], x[i], kind);
}

#define FWD_LOOP(f)                                                                  \
    _Pragma("omp parallel for simd schedule(static) if (count > ACT_PARALLEL_MIN)") \
    for (size_t i = 0; i < count; i++) y[i] = f(x[i])

#define BWD_LOOP(f)                                                                  \
    _Pragma("omp parallel for simd schedule(static) if (count > ACT_PARALLEL_MIN)") \
    for (size_t i = 0; i < count; i++) dx[i] += f(dy[i], x[i])

/* GELU in explicit 8-wide blocks (the compiler does not vectorise the polynomials' calls), the
   tail by the scalar twins. */
static void gelu_forward(float *y, const float *x, size_t count) {
    const size_t blocks = count / 8;
    #pragma omp parallel for schedule(static) if (count > ACT_PARALLEL_MIN)
    for (size_t b = 0; b < blocks; b++) _mm256_storeu_ps(y + 8 * b, gelu8_f(_mm256_loadu_ps(x + 8 * b)));
    for (size_t i = 8 * blocks; i < count; i++) y[i] = gelu_f(x[i]);
}

static void gelu_backward(float *dx, const float *dy, const float *x, size_t count) {
    const size_t blocks = count / 8;
    #pragma omp parallel for schedule(static) if (count > ACT_PARALLEL_MIN)
    for (size_t b = 0; b < blocks; b++) {
        const __m256 g = gelu8_b(_mm256_loadu_ps(dy + 8 * b), _mm256_loadu_ps(x + 8 * b));
        _mm256_storeu_ps(dx + 8 * b, _mm256_add_ps(_mm256_loadu_ps(dx + 8 * b), g));
    }
    for (size_t i = 8 * blocks; i < count; i++) dx[i] += gelu_b(dy[i], x[i]);
}

void msq_activation_forward(float *y, const float *x, size_t count, msq_activation kind) {
    switch (kind) {
    case MSQ_ACT_RELU: FWD_LOOP(relu_f); break;
    case MSQ_ACT_RELU6: FWD_LOOP(relu6_f); break;
    case MSQ_ACT_HARDSWISH: FWD_LOOP(hardswish_f); break;
    case MSQ_ACT_GELU: gelu_forward(y, x, count); break;
    case MSQ_ACT_HARDSIGMOID: FWD_LOOP(hardsigmoid_f); break;
    default: msq_activation_forward_ref(y, x, count, kind); break;
    }
}

void msq_activation_backward(float *dx, const float *dy, const float *x, size_t count,
                             msq_activation kind) {
    switch (kind) {
    case MSQ_ACT_RELU: BWD_LOOP(relu_b); break;
    case MSQ_ACT_RELU6: BWD_LOOP(relu6_b); break;
    case MSQ_ACT_HARDSWISH: BWD_LOOP(hardswish_b); break;
    case MSQ_ACT_GELU: gelu_backward(dx, dy, x, count); break;
    case MSQ_ACT_HARDSIGMOID: BWD_LOOP(hardsigmoid_b); break;
    default: msq_activation_backward_ref(dx, dy, x, count, kind); break;
    }
}

/* ---- R-operator (curvature.c composes these into Hessian-vector products) */

/* act''(x): zero almost everywhere for the piecewise-linear kinds; hardswish is x(x+3)/6 on
   [-3, 3] (PyTorch's hardswish_backward takes that branch at both ends), GELU's is φ(x)(2 − x²). */
static inline float act_second(float x, msq_activation kind) {
    switch (kind) {
    case MSQ_ACT_RELU: case MSQ_ACT_RELU6: case MSQ_ACT_HARDSIGMOID: return 0.0f;
    case MSQ_ACT_HARDSWISH: return (x >= -3.0f && x <= 3.0f) ? 1.0f / 3.0f : 0.0f;
    case MSQ_ACT_GELU: return INV_SQRT_2PI * msq_exp1(x * x * -0.5f) * (2.0f - x * x);
    }
    return 0.0f;
}

static void act_rbackward(float *rdx, const float *rdy, const float *dy, const float *x, const float *rx,
                          size_t count, msq_activation kind, int parallel) {
    int second = dy != NULL && rx != NULL && kind != MSQ_ACT_RELU && kind != MSQ_ACT_RELU6 && kind != MSQ_ACT_HARDSIGMOID;
    #pragma omp parallel for schedule(static) if (parallel && count > ACT_PARALLEL_MIN)
    for (size_t i = 0; i < count; i++) {
        float r = act_bwd(rdy[i], x[i], kind);
        if (second) r += dy[i] * act_second(x[i], kind) * rx[i];
        rdx[i] += r;
    }
}

void msq_activation_rforward(float *ry, const float *rx, const float *x, size_t count, msq_activation kind) {
    #pragma omp parallel for schedule(static) if (count > ACT_PARALLEL_MIN)
    for (size_t i = 0; i < count; i++) ry[i] = act_bwd(rx[i], x[i], kind);
}

void msq_activation_rforward_ref(float *ry, const float *rx, const float *x, size_t count, msq_activation kind) {
    for (size_t i = 0; i < count; i++) ry[i] = act_bwd(rx[i], x[i], kind);
}

void msq_activation_rbackward(float *rdx, const float *rdy, const float *dy, const float *x, const float *rx,
                              size_t count, msq_activation kind) {
    act_rbackward(rdx, rdy, dy, x, rx, count, kind, 1);
}

void msq_activation_rbackward_ref(float *rdx, const float *rdy, const float *dy, const float *x,
                                  const float *rx, size_t count, msq_activation kind) {
    act_rbackward(rdx, rdy, dy, x, rx, count, kind, 0);
}
