/* curvature.c — Hessian-vector products by Pearlmutter's R-operator (MSQ-SPEC §4).
 *
 * For a layer y = f(x; θ) the R-forward gives Ry = ∂f/∂x·Rx + ∂f/∂θ·v (v = the probe's block for θ,
 * NULL = 0), and the R-backward maps the pair (g_y, R g_y) to (g_x, R g_x) while accumulating
 * R g_θ = (H v)_θ. Passing dy = NULL drops every term that multiplies the first-order gradient:
 * what is left is J^T H_loss J v, the generalized Gauss-Newton product.
 *
 * Layering: these kernels sit ABOVE the layer families (conv, linear, batch norm, activation,
 * pooling, loss) and call their public entry points; nothing below calls back up here.
 * The convolution R-kernels run each product through msq_conv2d_* so every term gets the
 * fastest algorithm for its shape (Winograd for 3x3 stride 1): a stacked im2col GEMM over
 * [x | Rx] would give up Winograd on the layers that dominate the cost. */
#include "msq_kernels.h"
#include <math.h>
#include <stdlib.h>

#define CURV_PARALLEL_MIN 65536 /* elements; below this a parallel region costs more than it saves */

static size_t conv_out_count(const msq_conv2d_shape *s) {
    return (size_t)s->n * s->c_out * s->h_out * s->w_out;
}

/* ---------------------------------------------------------------- convolution */

/* ry[n,c_out,h_out,w_out] = conv(rx, w) + conv(x, v); rx or v may be NULL (a zero tangent).
   scratch (the size of ry) holds conv(x, v) when both terms are present, else it may be NULL. */
static void conv_rforward(float *ry, float *scratch, const float *x, const float *rx, const float *w,
                          const float *v, const msq_conv2d_shape *s, void *workspace, int reference) {
    void (*conv)(float *, const float *, const float *, const float *, const msq_conv2d_shape *, void *) =
        reference ? msq_conv2d_forward_ref : msq_conv2d_forward;
    size_t count = conv_out_count(s);
    if (rx == NULL && v == NULL) { msq_fill(ry, 0.0f, count); return; }
    if (rx == NULL) { conv(ry, x, v, NULL, s, workspace); return; }
    conv(ry, rx, w, NULL, s, workspace);
    if (v == NULL) return;
    conv(scratch, x, v, NULL, s, workspace);
    if (reference) {
        for (size_t i = 0; i < count; i++) ry[i] += scratch[i];
    } else {
        msq_accumulate(ry, scratch, count);
    }
}

void msq_conv2d_rforward(float *ry, float *scratch, const float *x, const float *rx, const float *w,
                         const float *v, const msq_conv2d_shape *s, void *workspace) {
    conv_rforward(ry, scratch, x, rx, w, v, s, workspace, 0);
}

void msq_conv2d_rforward_ref(float *ry, float *scratch, const float *x, const float *rx, const float *w,
                             const float *v, const msq_conv2d_shape *s, void *workspace) {
    conv_rforward(ry, scratch, x, rx, w, v, s, workspace, 1);
}

void msq_conv2d_rbackward_input(float *rdx, const float *rdy, const float *dy, const float *w,
                                const float *v, const msq_conv2d_shape *s, void *workspace) {
    msq_conv2d_backward_input(rdx, rdy, w, s, workspace);
    if (dy != NULL && v != NULL) msq_conv2d_backward_input(rdx, dy, v, s, workspace);
}

void msq_conv2d_rbackward_input_ref(float *rdx, const float *rdy, const float *dy, const float *w,
                                    const float *v, const msq_conv2d_shape *s, void *workspace) {
    msq_conv2d_backward_input_ref(rdx, rdy, w, s, workspace);
    if (dy != NULL && v != NULL) msq_conv2d_backward_input_ref(rdx, dy, v, s, workspace);
}

void msq_conv2d_rbackward_weight(float *rdw, const float *rdy, const float *dy, const float *x,
                                 const float *rx, const msq_conv2d_shape *s, void *workspace) {
    msq_conv2d_backward_weight(rdw, NULL, rdy, x, s, workspace);
    if (dy != NULL && rx != NULL) msq_conv2d_backward_weight(rdw, NULL, dy, rx, s, workspace);
}

void msq_conv2d_rbackward_weight_ref(float *rdw, const float *rdy, const float *dy, const float *x,
                                     const float *rx, const msq_conv2d_shape *s, void *workspace) {
    msq_conv2d_backward_weight_ref(rdw, NULL, rdy, x, s, workspace);
    if (dy != NULL && rx != NULL) msq_conv2d_backward_weight_ref(rdw, NULL, dy, rx, s, workspace);
}

/* ---------------------------------------------------------------- linear */

static void linear_rforward(float *ry, const float *x, const float *rx, const float *w, const float *v,
                            int n, int in_features, int out_features, int reference) {
    size_t count = (size_t)n * out_features;
    if (rx != NULL) {
        (reference ? msq_linear_forward_ref : msq_linear_forward)(ry, rx, w, NULL, n, in_features, out_features);
    } else {
        msq_fill(ry, 0.0f, count);
    }
    if (v != NULL) {
        (reference ? msq_gemm_ref : msq_gemm)(ry, x, v, 0, 1, n, out_features, in_features, 1.0f, 1.0f);
    }
}

void msq_linear_rforward(float *ry, const float *x, const float *rx, const float *w, const float *v,
                         int n, int in_features, int out_features) {
    linear_rforward(ry, x, rx, w, v, n, in_features, out_features, 0);
}

void msq_linear_rforward_ref(float *ry, const float *x, const float *rx, const float *w, const float *v,
                             int n, int in_features, int out_features) {
    linear_rforward(ry, x, rx, w, v, n, in_features, out_features, 1);
}

static void linear_rbackward(float *rdx, float *rdw, const float *rdy, const float *dy, const float *x,
                             const float *rx, const float *w, const float *v, int n, int in_features,
                             int out_features, int reference) {
    void (*bwd)(float *, float *, float *, const float *, const float *, const float *, int, int, int) =
        reference ? msq_linear_backward_ref : msq_linear_backward;
    bwd(rdx, rdw, NULL, rdy, x, w, n, in_features, out_features);
    if (dy == NULL) return;
    /* dy·v into rdx and dy^T·rx into rdw: the same two products with (x, w) replaced by (rx, v). */
    float *dx2 = (v != NULL) ? rdx : NULL;
    float *dw2 = (rx != NULL) ? rdw : NULL;
    if (dx2 == NULL && dw2 == NULL) return;
    bwd(dx2, dw2, NULL, dy, rx != NULL ? rx : x, v != NULL ? v : w, n, in_features, out_features);
}

void msq_linear_rbackward(float *rdx, float *rdw, const float *rdy, const float *dy, const float *x,
                          const float *rx, const float *w, const float *v, int n, int in_features,
                          int out_features) {
    linear_rbackward(rdx, rdw, rdy, dy, x, rx, w, v, n, in_features, out_features, 0);
}

void msq_linear_rbackward_ref(float *rdx, float *rdw, const float *rdy, const float *dy, const float *x,
                              const float *rx, const float *w, const float *v, int n, int in_features,
                              int out_features) {
    linear_rbackward(rdx, rdw, rdy, dy, x, rx, w, v, n, in_features, out_features, 1);
}

/* ---------------------------------------------------------------- batch norm (eval), + ReLU */

/* In eval mode batch norm is the per-channel affine map a·x + b, a = gamma / sqrt(var + eps), so
   its tangent and its (transposed) R-backward are both a·t; the fused ReLU multiplies by its mask
   (y > 0, y the fused forward's output), whose derivative is zero almost everywhere. */
static inline void bn_eval_scaled(float *out, const float *in, const float *relu_out, const float *gamma,
                                  const float *running_var, int n, int c, int hw, float eps,
                                  int accumulate, int parallel) {
    long planes = (long)n * c;
    /* Four plain loops, so each one vectorises (a mask or accumulate test inside one loop did not). */
    #pragma omp parallel for schedule(static) if (parallel && planes * (long)hw > CURV_PARALLEL_MIN)
    for (long p = 0; p < planes; p++) {
        int ch = (int)(p % c);
        float a = gamma[ch] / sqrtf(running_var[ch] + eps);
        float *o = out + p * hw;
        const float *t = in + p * hw;
        const float *m = relu_out != NULL ? relu_out + p * hw : NULL;
        if (m == NULL && accumulate) {
            for (int i = 0; i < hw; i++) o[i] += a * t[i];
        } else if (m == NULL) {
            for (int i = 0; i < hw; i++) o[i] = a * t[i];
        } else if (accumulate) {
            for (int i = 0; i < hw; i++) o[i] += m[i] > 0.0f ? a * t[i] : 0.0f;
        } else {
            for (int i = 0; i < hw; i++) o[i] = m[i] > 0.0f ? a * t[i] : 0.0f;
        }
    }
}

void msq_batchnorm_rforward_eval(float *ry, const float *rx, const float *relu_out, const float *gamma,
                                 const float *running_var, int n, int c, int hw, float eps) {
    bn_eval_scaled(ry, rx, relu_out, gamma, running_var, n, c, hw, eps, 0, 1);
}

void msq_batchnorm_rforward_eval_ref(float *ry, const float *rx, const float *relu_out, const float *gamma,
                                     const float *running_var, int n, int c, int hw, float eps) {
    bn_eval_scaled(ry, rx, relu_out, gamma, running_var, n, c, hw, eps, 0, 0);
}

void msq_batchnorm_rbackward_eval(float *rdx, const float *rdy, const float *relu_out, const float *gamma,
                                  const float *running_var, int n, int c, int hw, float eps) {
    bn_eval_scaled(rdx, rdy, relu_out, gamma, running_var, n, c, hw, eps, 1, 1);
}

void msq_batchnorm_rbackward_eval_ref(float *rdx, const float *rdy, const float *relu_out, const float *gamma,
                                      const float *running_var, int n, int c, int hw, float eps) {
    bn_eval_scaled(rdx, rdy, relu_out, gamma, running_var, n, c, hw, eps, 1, 0);
}

/* ---------------------------------------------------------------- max pooling */

static void maxpool_rforward(float *ry, const float *rx, const int32_t *argmax, const msq_pool2d_shape *s,
                             int parallel) {
    size_t in = (size_t)s->h_in * s->w_in, out = (size_t)s->h_out * s->w_out;
    long planes = (long)s->n * s->c;
    #pragma omp parallel for schedule(static) if (parallel && planes * (long)out > CURV_PARALLEL_MIN)
    for (long p = 0; p < planes; p++) {
        const float *t = rx + p * in;
        const int32_t *a = argmax + p * out;
        float *o = ry + p * out;
        for (size_t i = 0; i < out; i++) o[i] = t[a[i]];
    }
}

void msq_maxpool2d_rforward(float *ry, const float *rx, const int32_t *argmax, const msq_pool2d_shape *s) {
    maxpool_rforward(ry, rx, argmax, s, 1);
}

void msq_maxpool2d_rforward_ref(float *ry, const float *rx, const int32_t *argmax, const msq_pool2d_shape *s) {
    maxpool_rforward(ry, rx, argmax, s, 0);
}

/* ---------------------------------------------------------------- softmax cross-entropy */

/* rdz[i,:] = (p_i ⊙ rz_i − p_i (p_i · rz_i)) / n: the Hessian of the batch-mean cross-entropy w.r.t.
   the logits, (diag p − p p^T) / n, applied to rz. Label smoothing adds a term linear in log p
   whose targets sum to one, so the Hessian is the same with or without it. */
static void xent_hvp(float *rdz, const float *probs, const float *rz, int n, int k, int parallel) {
    float inv_n = 1.0f / (float)n;
    #pragma omp parallel for schedule(static) if (parallel && (long)n * k > CURV_PARALLEL_MIN)
    for (int i = 0; i < n; i++) {
        const float *p = probs + (size_t)i * k;
        const float *t = rz + (size_t)i * k;
        float *o = rdz + (size_t)i * k;
        double dot = 0.0;
        for (int j = 0; j < k; j++) dot += (double)p[j] * t[j];
        float pt = (float)dot;
        for (int j = 0; j < k; j++) o[j] = p[j] * (t[j] - pt) * inv_n;
    }
}

void msq_softmax_cross_entropy_hvp(float *rdz, const float *probs, const float *rz, int n, int k) {
    xent_hvp(rdz, probs, rz, n, k, 1);
}

void msq_softmax_cross_entropy_hvp_ref(float *rdz, const float *probs, const float *rz, int n, int k) {
    xent_hvp(rdz, probs, rz, n, k, 0);
}

/* ---------------------------------------------------------------- probes and reductions */

static inline uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* Word b of the probe stream (seed, stream): a counter-based hash, so any slice of a probe can be
   generated on its own, by any thread, in any order. */
static inline uint64_t probe_word(uint64_t key, uint64_t b) {
    return mix64(key + (b + 1) * 0x9e3779b97f4a7c15ULL);
}

static inline uint64_t probe_key(uint64_t seed, uint64_t stream) {
    return mix64(seed ^ mix64(stream + 0x52414445ULL)); /* "RADE" */
}

void msq_rademacher(float *v, size_t count, uint64_t seed, uint64_t stream, uint64_t offset) {
    uint64_t key = probe_key(seed, stream);
    long words = (long)((offset + count + 63) / 64 - offset / 64);
    uint64_t first = offset / 64;
    #pragma omp parallel for schedule(static) if (count > CURV_PARALLEL_MIN)
    for (long wi = 0; wi < words; wi++) {
        uint64_t b = first + (uint64_t)wi;
        uint64_t word = probe_word(key, b);
        uint64_t lo = b * 64 > offset ? b * 64 : offset;
        uint64_t hi = (b + 1) * 64 < offset + count ? (b + 1) * 64 : offset + count;
        for (uint64_t g = lo; g < hi; g++) v[g - offset] = ((word >> (g & 63)) & 1) ? 1.0f : -1.0f;
    }
}

void msq_rademacher_ref(float *v, size_t count, uint64_t seed, uint64_t stream, uint64_t offset) {
    uint64_t key = probe_key(seed, stream);
    for (size_t i = 0; i < count; i++) {
        uint64_t g = offset + i;
        v[i] = ((probe_word(key, g / 64) >> (g & 63)) & 1) ? 1.0f : -1.0f;
    }
}

double msq_dot(const float *a, const float *b, size_t count) {
    size_t chunks = (count + MSQ_DOT_CHUNK - 1) / MSQ_DOT_CHUNK;
    double stack[64];
    double *partial = chunks <= 64 ? stack : malloc(chunks * sizeof(double));
    if (partial == NULL) return msq_dot_ref(a, b, count);
    #pragma omp parallel for schedule(static) if (count > CURV_PARALLEL_MIN)
    for (long c = 0; c < (long)chunks; c++) {
        size_t lo = (size_t)c * MSQ_DOT_CHUNK, hi = lo + MSQ_DOT_CHUNK < count ? lo + MSQ_DOT_CHUNK : count;
        double s = 0.0;
        for (size_t i = lo; i < hi; i++) s += (double)a[i] * b[i];
        partial[c] = s;
    }
    double sum = 0.0;
    for (size_t c = 0; c < chunks; c++) sum += partial[c];
    if (partial != stack) free(partial);
    return sum;
}

double msq_dot_ref(const float *a, const float *b, size_t count) {
    double sum = 0.0;
    for (size_t i = 0; i < count; i++) sum += (double)a[i] * b[i];
    return sum;
}
