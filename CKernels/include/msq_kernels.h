/*
 * msq_kernels.h — the C kernels under MSQ's Swift layer.
 *
 * Conventions (every kernel):
 *   - Tensors are dense float32, row-major, activations NCHW.
 *   - Arguments: outputs first, then inputs, then dimensions.
 *   - `*_backward` kernels ACCUMULATE into every gradient they write (dx += ..., dw += ...).
 *     The caller zeroes a gradient buffer before the first contribution. This lets residual
 *     branches and shared tensors sum their gradients without extra copies.
 *   - Fast kernels are OpenMP-parallel on outer loops only. Every fast kernel has a plain,
 *     single-threaded scalar `_ref` twin with the same signature; tests compare them.
 *   - Reductions use a fixed partition of work per thread count, so results are
 *     deterministic for a given `msq_set_num_threads` value (needed for bit-identical resume).
 */
#ifndef MSQ_KERNELS_H
#define MSQ_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------- runtime (runtime.c) */

/** Sets the number of OpenMP threads the kernels use. OpenBLAS is pinned to one thread,
 *  because the kernels call it from inside their own parallel regions. n < 1 means "all cores".
 *  Process-wide: call it between kernel calls, never while another thread runs a kernel, and
 *  re-query workspace sizes afterwards (msq_conv2d_workspace_size depends on it). */
void msq_set_num_threads(int n);
/** The number of OpenMP threads the kernels use. */
int msq_get_num_threads(void);

/** Instruction sets a kernel may use beyond its AVX2 + FMA baseline. */
enum { MSQ_ISA_AVX2 = 0, MSQ_ISA_AVX512 = 1 };
/** Caps the instruction set kernels use at `isa` (MSQ_ISA_AVX2 or MSQ_ISA_AVX512; they never use
 *  more than the CPU has) and returns the previous cap. Results are the same bits at either cap;
 *  tests and benchmarks use it to run both variants. Process-wide, like msq_set_num_threads. */
int msq_set_max_isa(int isa);
/** 1 when kernels may use AVX-512 F + VL: the CPU has them and the cap allows them. */
int msq_isa_avx512(void);

/* ---------------------------------------------------------------- GEMM (gemm.c) */

/** c[m,n] = alpha * op(a) * op(b) + beta * c[m,n], row-major.
 *  op(a) is a[m,k] (trans_a = 0) or a[k,m]^T (trans_a = 1); op(b) is b[k,n] or b[n,k]^T.
 *  cblas_sgemm underneath; rows of c split across OpenMP threads when that pays. */
void msq_gemm(float *c, const float *a, const float *b, int trans_a, int trans_b,
              int m, int n, int k, float alpha, float beta);
void msq_gemm_ref(float *c, const float *a, const float *b, int trans_a, int trans_b,
                  int m, int n, int k, float alpha, float beta);

/* ---------------------------------------------------------------- conv2d (conv.c; the shape maker
   in conv_common.c, the _ref twins in conv_ref.c) */

/** Geometry of a 2-D convolution over NCHW input with OIHW weights.
 *  x[n, c_in, h_in, w_in], w[c_out, c_in/groups, kh, kw], y[n, c_out, h_out, w_out],
 *  h_out = (h_in + 2 pad_h - kh) / stride_h + 1 (likewise w_out). c_in and c_out are
 *  multiples of groups; groups == c_in == c_out is depthwise. */
typedef struct msq_conv2d_shape {
    int n, c_in, h_in, w_in;
    int c_out, h_out, w_out;
    int kh, kw, stride_h, stride_w, pad_h, pad_w, groups;
} msq_conv2d_shape;

/** Fills every field of a shape from the free ones; returns 0, or -1 when the geometry is
 *  invalid (non-positive sizes, channels not divisible by groups, empty output). */
int msq_conv2d_make_shape(msq_conv2d_shape *s, int n, int c_in, int h_in, int w_in, int c_out,
                          int kh, int kw, int stride, int pad, int groups);

/** Bytes of scratch memory the fast conv2d kernels need for shape s at the current thread count.
 *  Passing a NULL workspace makes the kernel allocate (and free) it itself. */
size_t msq_conv2d_workspace_size(const msq_conv2d_shape *s);

/** y = conv(x, w) + bias. y[n,c_out,h_out,w_out] is overwritten; bias[c_out] may be NULL. */
void msq_conv2d_forward(float *y, const float *x, const float *w, const float *bias,
                        const msq_conv2d_shape *s, void *workspace);
void msq_conv2d_forward_ref(float *y, const float *x, const float *w, const float *bias,
                            const msq_conv2d_shape *s, void *workspace);

/** dx[n,c_in,h_in,w_in] += conv_transpose(dy, w). */
void msq_conv2d_backward_input(float *dx, const float *dy, const float *w,
                               const msq_conv2d_shape *s, void *workspace);
void msq_conv2d_backward_input_ref(float *dx, const float *dy, const float *w,
                                   const msq_conv2d_shape *s, void *workspace);

/** dw[c_out,c_in/groups,kh,kw] += correlation of x with dy; dbias[c_out] += sum of dy (may be NULL). */
void msq_conv2d_backward_weight(float *dw, float *dbias, const float *dy, const float *x,
                                const msq_conv2d_shape *s, void *workspace);
void msq_conv2d_backward_weight_ref(float *dw, float *dbias, const float *dy, const float *x,
                                    const msq_conv2d_shape *s, void *workspace);

/** Winograd F(2x2, 3x3) (winograd.c), which msq_conv2d_forward and the stride-1
 *  msq_conv2d_backward_input use by themselves where it applies and the interleaved one does not: 3x3 kernels, stride 1, one group,
 *  at least 64 channels in and out, outputs at least 16 wide (any padding). 1 when s is such a shape. */
int msq_conv2d_winograd_eligible(const msq_conv2d_shape *s);
/** Bytes of scratch memory msq_conv2d_winograd_forward needs for shape s. */
size_t msq_conv2d_winograd_workspace_size(const msq_conv2d_shape *s);
/** y = conv(x, w) + bias (accumulate == 0; bias may be NULL), or y += conv(x, w) (accumulate != 0,
 *  bias unused), by F(2x2, 3x3) for an eligible shape. Its reference is msq_conv2d_forward_ref;
 *  results depend only on the shape and the thread count. workspace may be NULL. */
void msq_conv2d_winograd_forward(float *y, const float *x, const float *w, const float *bias,
                                 const msq_conv2d_shape *s, void *workspace, int accumulate);

/** Winograd F(2x2, 3x3) on eight interleaved images (winograd_interleaved.c), which the conv
 *  kernels use by themselves for 3x3 stride-1 layers that winograd.c does not take (small planes,
 *  fewer channels): 3x3 kernels, stride 1, one group, at least 8 input channels, a batch that
 *  fills at least 3/4 of its groups of eight, and eight images' input and output grids under
 *  32 MiB per thread. 1 for such a shape. */
int msq_conv2d_winograd_interleaved_eligible(const msq_conv2d_shape *s);
/** Bytes of scratch memory msq_conv2d_winograd_interleaved_forward needs for shape s. */
size_t msq_conv2d_winograd_interleaved_workspace_size(const msq_conv2d_shape *s);
/** y = conv(x, w) + bias (accumulate == 0; bias may be NULL), or y += conv(x, w) (accumulate != 0,
 *  bias unused), for an eligible shape; x[n,c_in,h_in,w_in], w[c_out,c_in,3,3],
 *  y[n,c_out,h_out,w_out]. Its reference is msq_conv2d_forward_ref; results depend only on the
 *  shape and the thread count. workspace may be NULL. */
void msq_conv2d_winograd_interleaved_forward(float *y, const float *x, const float *w, const float *bias,
                                             const msq_conv2d_shape *s, void *workspace, int accumulate);
/** dw[c_out,c_in,3,3] += Σ dy ⋆ x and dbias[c_out] += Σ dy (dbias may be NULL) for an eligible
 *  shape, by the same transforms run backwards. Its reference is msq_conv2d_backward_weight_ref;
 *  results depend only on the shape and the thread count. workspace may be NULL. */
void msq_conv2d_winograd_interleaved_backward_weight(float *dw, float *dbias, const float *dy, const float *x,
                                                     const msq_conv2d_shape *s, void *workspace);

/** Direct 3x3 convolution (direct.c), which msq_conv2d_forward, msq_conv2d_backward_input and
 *  msq_conv2d_backward_weight use by themselves where it applies and Winograd does not: 3x3
 *  kernels, stride 1, padding 1, one group, at most 32 channels in and out. 1 for such a shape. */
int msq_conv2d_direct_eligible(const msq_conv2d_shape *s);
/** Bytes of scratch memory the direct kernels need for shape s at the current thread count. */
size_t msq_conv2d_direct_workspace_size(const msq_conv2d_shape *s);
/** y[n,c_out,h,w] = conv(x, w) + bias (accumulate == 0; bias may be NULL), or y += conv(x, w)
 *  (accumulate != 0, bias unused), for an eligible shape; x[n,c_in,h,w], w[c_out,c_in,3,3].
 *  Its reference is msq_conv2d_forward_ref. workspace may be NULL. */
void msq_conv2d_direct_forward(float *y, const float *x, const float *w, const float *bias,
                               const msq_conv2d_shape *s, void *workspace, int accumulate);
/** dw[c_out,c_in,3,3] += Σ dy ⋆ x and dbias[c_out] += Σ dy (dbias may be NULL) for an eligible
 *  shape; its reference is msq_conv2d_backward_weight_ref. Results depend only on the shape and
 *  the thread count. workspace may be NULL. */
void msq_conv2d_direct_backward_weight(float *dw, float *dbias, const float *dy, const float *x,
                                       const msq_conv2d_shape *s, void *workspace);

/** Direct depthwise convolution (depthwise.c), which msq_conv2d_forward, msq_conv2d_backward_input
 *  and msq_conv2d_backward_weight use by themselves for every depthwise shape: groups == c_in ==
 *  c_out > 1, any kernel, stride and padding. 1 for such a shape. */
int msq_conv2d_depthwise_eligible(const msq_conv2d_shape *s);
/** y[n,c,h_out,w_out] = conv(x, w) + bias (overwritten; bias may be NULL); x[n,c,h_in,w_in],
 *  w[c,1,kh,kw]. Its reference is msq_conv2d_forward_ref; results do not depend on the thread count. */
void msq_conv2d_depthwise_forward(float *y, const float *x, const float *w, const float *bias,
                                  const msq_conv2d_shape *s);
/** dx[n,c,h_in,w_in] += conv_transpose(dy, w); its reference is msq_conv2d_backward_input_ref. */
void msq_conv2d_depthwise_backward_input(float *dx, const float *dy, const float *w, const msq_conv2d_shape *s);
/** dw[c,1,kh,kw] += Σ dy ⋆ x and dbias[c] += Σ dy (dbias may be NULL); its reference is
 *  msq_conv2d_backward_weight_ref; results do not depend on the thread count. */
void msq_conv2d_depthwise_backward_weight(float *dw, float *dbias, const float *dy, const float *x,
                                          const msq_conv2d_shape *s);

/* ---------------------------------------------------------------- channel scale (channel_scale.c) */

/** y[n,c,hw] = x[n,c,hw] · s[n,c]: a squeeze-excitation block's gate applied to its input. */
void msq_channel_scale_forward(float *y, const float *x, const float *s, int n, int c, int hw);
void msq_channel_scale_forward_ref(float *y, const float *x, const float *s, int n, int c, int hw);
/** dx[n,c,hw] += dy · s[n,c] and ds[n,c] += Σ_hw dy · x, in one pass (both accumulated; either
 *  may be NULL). The fast kernel's ds differs from the reference's by float summation order. */
void msq_channel_scale_backward(float *dx, float *ds, const float *dy, const float *x, const float *s,
                                int n, int c, int hw);
void msq_channel_scale_backward_ref(float *dx, float *ds, const float *dy, const float *x, const float *s,
                                    int n, int c, int hw);

/* ---------------------------------------------------------------- linear (linear.c) */

/** y[n,out] = x[n,in] * w[out,in]^T + b[out]; b may be NULL. */
void msq_linear_forward(float *y, const float *x, const float *w, const float *b,
                        int n, int in_features, int out_features);
void msq_linear_forward_ref(float *y, const float *x, const float *w, const float *b,
                            int n, int in_features, int out_features);
/** dx[n,in] += dy * w; dw[out,in] += dy^T * x; db[out] += sum_n dy. Any output may be NULL. */
void msq_linear_backward(float *dx, float *dw, float *db, const float *dy, const float *x,
                         const float *w, int n, int in_features, int out_features);
void msq_linear_backward_ref(float *dx, float *dw, float *db, const float *dy, const float *x,
                             const float *w, int n, int in_features, int out_features);

/* ---------------------------------------------------------------- batch norm (batchnorm.c) */

/** Training-mode batch norm over x[n,c,hw] with per-channel batch statistics.
 *  y = gamma * (x - mean) * invstd + beta, invstd = 1/sqrt(var_biased + eps).
 *  Writes save_mean[c], save_invstd[c] for backward and updates the running averages
 *  PyTorch's way: running = (1 - momentum) * running + momentum * stat, with the unbiased
 *  variance (m/(m-1), m = n*hw) going into running_var. */
void msq_batchnorm_forward_train(float *y, float *save_mean, float *save_invstd,
                                 float *running_mean, float *running_var,
                                 const float *x, const float *gamma, const float *beta,
                                 int n, int c, int hw, float momentum, float eps);
void msq_batchnorm_forward_train_ref(float *y, float *save_mean, float *save_invstd,
                                     float *running_mean, float *running_var,
                                     const float *x, const float *gamma, const float *beta,
                                     int n, int c, int hw, float momentum, float eps);

/** Inference-mode batch norm: y = gamma * (x - running_mean) / sqrt(running_var + eps) + beta. */
void msq_batchnorm_forward_eval(float *y, const float *x, const float *gamma, const float *beta,
                                const float *running_mean, const float *running_var,
                                int n, int c, int hw, float eps);
void msq_batchnorm_forward_eval_ref(float *y, const float *x, const float *gamma, const float *beta,
                                    const float *running_mean, const float *running_var,
                                    int n, int c, int hw, float eps);

/** Backward of the training-mode forward (batch statistics depend on x).
 *  dx += gamma*invstd/m * (m*dy - sum(dy) - xhat*sum(dy*xhat)); dgamma += sum(dy*xhat); dbeta += sum(dy). */
void msq_batchnorm_backward(float *dx, float *dgamma, float *dbeta, const float *dy,
                            const float *x, const float *gamma, const float *save_mean,
                            const float *save_invstd, int n, int c, int hw);
void msq_batchnorm_backward_ref(float *dx, float *dgamma, float *dbeta, const float *dy,
                                const float *x, const float *gamma, const float *save_mean,
                                const float *save_invstd, int n, int c, int hw);

/** Backward of the inference-mode forward (statistics are constants): dx += dy*gamma*invstd,
 *  dgamma += sum(dy*xhat), dbeta += sum(dy). Used for Hessian-vector products in eval mode. */
void msq_batchnorm_backward_eval(float *dx, float *dgamma, float *dbeta, const float *dy,
                                 const float *x, const float *gamma, const float *running_mean,
                                 const float *running_var, int n, int c, int hw, float eps);
void msq_batchnorm_backward_eval_ref(float *dx, float *dgamma, float *dbeta, const float *dy,
                                     const float *x, const float *gamma, const float *running_mean,
                                     const float *running_var, int n, int c, int hw, float eps);

/** Training-mode batch norm fused with the ReLU after it: y = relu(BN(x)), with BN exactly as
 *  msq_batchnorm_forward_train (same statistics, running averages and rounding) and relu as
 *  msq_activation_forward's (v < 0 ? 0 : v). One pass over y instead of two. */
void msq_batchnorm_relu_forward_train(float *y, float *save_mean, float *save_invstd,
                                      float *running_mean, float *running_var,
                                      const float *x, const float *gamma, const float *beta,
                                      int n, int c, int hw, float momentum, float eps);
void msq_batchnorm_relu_forward_train_ref(float *y, float *save_mean, float *save_invstd,
                                          float *running_mean, float *running_var,
                                          const float *x, const float *gamma, const float *beta,
                                          int n, int c, int hw, float momentum, float eps);
/** Backward of msq_batchnorm_relu_forward_train given its output y[n,c,hw]: msq_batchnorm_backward
 *  of dy masked by relu'(y) (0 where y <= 0, as msq_activation_backward), without forming the
 *  masked gradient. Accumulates into dx (may be NULL), dgamma, dbeta. */
void msq_batchnorm_relu_backward(float *dx, float *dgamma, float *dbeta, const float *dy,
                                 const float *y, const float *x, const float *gamma,
                                 const float *save_mean, const float *save_invstd,
                                 int n, int c, int hw);
void msq_batchnorm_relu_backward_ref(float *dx, float *dgamma, float *dbeta, const float *dy,
                                     const float *y, const float *x, const float *gamma,
                                     const float *save_mean, const float *save_invstd,
                                     int n, int c, int hw);

/** Training-mode batch norm fused with the hard-swish after it: y = hardswish(BN(x)), BN exactly as
 *  msq_batchnorm_forward_train and hardswish as msq_activation_forward's. x, y: [n, c, hw]. */
void msq_batchnorm_hardswish_forward_train(float *y, float *save_mean, float *save_invstd,
                                           float *running_mean, float *running_var,
                                           const float *x, const float *gamma, const float *beta,
                                           int n, int c, int hw, float momentum, float eps);
void msq_batchnorm_hardswish_forward_train_ref(float *y, float *save_mean, float *save_invstd,
                                               float *running_mean, float *running_var,
                                               const float *x, const float *gamma, const float *beta,
                                               int n, int c, int hw, float momentum, float eps);
/** Backward of msq_batchnorm_hardswish_forward_train: msq_batchnorm_backward of
 *  hardswish'(v)·dy, v = BN(x) recomputed from x, γ, β and the saved statistics exactly as the
 *  forward computed it (hard-swish's derivative needs v, which y does not determine). Accumulates
 *  into dx (may be NULL), dgamma, dbeta. */
void msq_batchnorm_hardswish_backward(float *dx, float *dgamma, float *dbeta, const float *dy,
                                      const float *x, const float *gamma, const float *beta,
                                      const float *save_mean, const float *save_invstd,
                                      int n, int c, int hw);
void msq_batchnorm_hardswish_backward_ref(float *dx, float *dgamma, float *dbeta, const float *dy,
                                          const float *x, const float *gamma, const float *beta,
                                          const float *save_mean, const float *save_invstd,
                                          int n, int c, int hw);

/* Split training kernels, for a batch norm whose batch is spread over processes (synchronised
 * batch norm): the caller sums each kernel's per-channel double outputs over the processes
 * between the steps. Run on one process's whole batch, stats → apply_train gives
 * msq_batchnorm_*forward_train's values bit for bit (mean = sum/m, m2 as returned), and
 * backward_reduce → backward_apply gives msq_batchnorm_*backward's (count = m). */

/** The activation a split batch-norm kernel fuses after the normalisation (as the
 *  msq_batchnorm_relu_… and msq_batchnorm_hardswish_… kernels do). */
typedef enum msq_batchnorm_fusion {
    MSQ_BN_FUSE_NONE = 0,
    MSQ_BN_FUSE_RELU = 1,      /* v < 0 ? 0 : v, msq_activation_forward's ReLU */
    MSQ_BN_FUSE_HARDSWISH = 2, /* msq_activation_forward's hard-swish */
} msq_batchnorm_fusion;

/** Per-channel partial statistics of x[n, c, hw], accumulated in double:
 *  sum[c] = Σ x and m2[c] = Σ (x − sum/m)² (m = n·hw values per channel; two-pass about the
 *  local mean, as msq_batchnorm_forward_train computes them; 0 and 0 when m = 0). Shards r combine
 *  into the whole batch's (Chan et al.): S = Σ_r sum_r, M = Σ_r m_r, mean = S/M and
 *  M2 = Σ_r m2_r + (Σ_r sum_r²/m_r − S²/M), where only the bracket (between-shard spread) cancels. */
void msq_batchnorm_stats(double *sum, double *m2, const float *x, int n, int c, int hw);
void msq_batchnorm_stats_ref(double *sum, double *m2, const float *x, int n, int c, int hw);

/** Training-mode normalisation of x[n, c, hw] with given batch statistics: mean[c] and
 *  m2[c] = Σ (x − mean)² over the `count` values per channel of the whole (possibly distributed)
 *  batch. invstd = 1/sqrt(m2/count + eps); y = act(γ·(x − mean)·invstd + β) for act = fusion;
 *  writes save_mean[c], save_invstd[c] and updates the running averages (running_var with the
 *  unbiased m2/(count − 1)) exactly as msq_batchnorm_forward_train. running_* may be NULL. */
void msq_batchnorm_apply_train(float *y, float *save_mean, float *save_invstd,
                               float *running_mean, float *running_var,
                               const float *x, const float *gamma, const float *beta,
                               const double *mean, const double *m2, long count,
                               int n, int c, int hw, float momentum, float eps,
                               msq_batchnorm_fusion fusion);
void msq_batchnorm_apply_train_ref(float *y, float *save_mean, float *save_invstd,
                                   float *running_mean, float *running_var,
                                   const float *x, const float *gamma, const float *beta,
                                   const double *mean, const double *m2, long count,
                                   int n, int c, int hw, float momentum, float eps,
                                   msq_batchnorm_fusion fusion);

/** The per-channel sums of a training backward over dy, x: [n, c, hw], in double:
 *  sum_dy[c] = Σ g and sum_dy_xhat[c] = Σ g·x̂ with x̂ = (x − save_mean)·save_invstd and g = dy,
 *  or relu'(y)·dy given the fused ReLU's output y (non-NULL), or hardswish'(v)·dy given the fused
 *  hard-swish's beta (non-NULL; v = BN(x) recomputed as the forward did); at most one of y, beta.
 *  Also accumulates this shard's dgamma += sum_dy_xhat and dbeta += sum_dy (either may be NULL). */
void msq_batchnorm_backward_reduce(double *sum_dy, double *sum_dy_xhat, float *dgamma, float *dbeta,
                                   const float *dy, const float *y, const float *x, const float *gamma,
                                   const float *beta, const float *save_mean, const float *save_invstd,
                                   int n, int c, int hw);
void msq_batchnorm_backward_reduce_ref(double *sum_dy, double *sum_dy_xhat, float *dgamma, float *dbeta,
                                       const float *dy, const float *y, const float *x, const float *gamma,
                                       const float *beta, const float *save_mean, const float *save_invstd,
                                       int n, int c, int hw);

/** The training input gradient from given per-channel sums: dx[n, c, hw] +=
 *  γ·invstd·(g − sum_dy/count − x̂·sum_dy_xhat/count), g and x̂ as msq_batchnorm_backward_reduce
 *  (same y, beta). With the sums of this batch and count = n·hw it is msq_batchnorm_backward's dx. */
void msq_batchnorm_backward_apply(float *dx, const float *dy, const float *y, const float *x,
                                  const float *gamma, const float *beta, const float *save_mean,
                                  const float *save_invstd, const double *sum_dy,
                                  const double *sum_dy_xhat, long count, int n, int c, int hw);
void msq_batchnorm_backward_apply_ref(float *dx, const float *dy, const float *y, const float *x,
                                      const float *gamma, const float *beta, const float *save_mean,
                                      const float *save_invstd, const double *sum_dy,
                                      const double *sum_dy_xhat, long count, int n, int c, int hw);

/* ---------------------------------------------------------------- activations (activation.c) */

typedef enum msq_activation {
    MSQ_ACT_RELU = 0,      /* max(x, 0) */
    MSQ_ACT_RELU6 = 1,     /* min(max(x, 0), 6) */
    MSQ_ACT_HARDSWISH = 2, /* x * relu6(x + 3) / 6 */
    MSQ_ACT_GELU = 3,      /* x * Phi(x), exact erf form (PyTorch's default) */
    MSQ_ACT_HARDSIGMOID = 4, /* relu6(x + 3) / 6 (squeeze-excitation gates) */
} msq_activation;

/** y[i] = act(x[i]) for i < count. */
void msq_activation_forward(float *y, const float *x, size_t count, msq_activation kind);
void msq_activation_forward_ref(float *y, const float *x, size_t count, msq_activation kind);
/** dx[i] += dy[i] * act'(x[i]). At kinks the derivative is PyTorch's (relu'(0) = 0). */
void msq_activation_backward(float *dx, const float *dy, const float *x, size_t count,
                             msq_activation kind);
void msq_activation_backward_ref(float *dx, const float *dy, const float *x, size_t count,
                                 msq_activation kind);

/* ---------------------------------------------------------------- pooling (pool.c) */

/** Geometry of 2-D pooling over x[n,c,h_in,w_in] -> y[n,c,h_out,w_out],
 *  h_out = (h_in + 2 pad_h - kh) / stride_h + 1 (likewise w_out). */
typedef struct msq_pool2d_shape {
    int n, c, h_in, w_in, h_out, w_out;
    int kh, kw, stride_h, stride_w, pad_h, pad_w;
} msq_pool2d_shape;

/** Fills a pooling shape; returns 0, or -1 when the geometry is invalid (pad > k/2 included). */
int msq_pool2d_make_shape(msq_pool2d_shape *s, int n, int c, int h_in, int w_in,
                          int k, int stride, int pad);

/** Max pooling; padding never wins. argmax[n,c,h_out,w_out] holds the flat index into the
 *  input plane (h*w_in + w) of the maximum, first one on ties. */
void msq_maxpool2d_forward(float *y, int32_t *argmax, const float *x, const msq_pool2d_shape *s);
void msq_maxpool2d_forward_ref(float *y, int32_t *argmax, const float *x, const msq_pool2d_shape *s);
/** dx[plane, argmax] += dy. */
void msq_maxpool2d_backward(float *dx, const float *dy, const int32_t *argmax, const msq_pool2d_shape *s);
void msq_maxpool2d_backward_ref(float *dx, const float *dy, const int32_t *argmax, const msq_pool2d_shape *s);

/** Average pooling, padding counted in the divisor (PyTorch's count_include_pad = True). */
void msq_avgpool2d_forward(float *y, const float *x, const msq_pool2d_shape *s);
void msq_avgpool2d_forward_ref(float *y, const float *x, const msq_pool2d_shape *s);
void msq_avgpool2d_backward(float *dx, const float *dy, const msq_pool2d_shape *s);
void msq_avgpool2d_backward_ref(float *dx, const float *dy, const msq_pool2d_shape *s);

/** Global average pooling: y[n,c] = mean over hw of x[n,c,hw]. */
void msq_global_avgpool_forward(float *y, const float *x, int n, int c, int hw);
void msq_global_avgpool_forward_ref(float *y, const float *x, int n, int c, int hw);
/** dx[n,c,i] += dy[n,c] / hw. */
void msq_global_avgpool_backward(float *dx, const float *dy, int n, int c, int hw);
void msq_global_avgpool_backward_ref(float *dx, const float *dy, int n, int c, int hw);

/* ---------------------------------------------------------------- loss (loss.c) */

/** Softmax cross-entropy with optional label smoothing eps, mean over the batch:
 *  target_j = (1 - eps) * [j == label] + eps / k;  loss = -(1/n) sum_i sum_j target_ij log p_ij.
 *  Writes probs[n,k] (softmax of logits[n,k]) and *loss. Returns 0, or -1 if a label is
 *  outside [0, k) (then *loss is NaN and probs are unspecified). */
int msq_softmax_cross_entropy_forward(float *loss, float *probs, const float *logits,
                                      const int32_t *labels, int n, int k, float label_smoothing);
int msq_softmax_cross_entropy_forward_ref(float *loss, float *probs, const float *logits,
                                          const int32_t *labels, int n, int k, float label_smoothing);
/** dlogits[n,k] += scale * (probs - target) / n. */
void msq_softmax_cross_entropy_backward(float *dlogits, const float *probs, const int32_t *labels,
                                        int n, int k, float label_smoothing, float scale);
void msq_softmax_cross_entropy_backward_ref(float *dlogits, const float *probs, const int32_t *labels,
                                            int n, int k, float label_smoothing, float scale);

/* ---------------------------------------------------------------- R-operator (curvature.c, activation.c) */

/* Hessian-vector products by Pearlmutter's R-operator (MSQ-SPEC §4), layer by layer, eval mode.
 * For y = f(x; θ): the R-forward gives Ry = ∂f/∂x·Rx + ∂f/∂θ·v (v: the probe's block for θ); the
 * R-backward takes (dy, R dy) to R dx and accumulates R dθ = (H v)_θ. A NULL tangent (rx, v) is
 * zero. A NULL dy drops every term of the first-order gradient, which leaves the generalized
 * Gauss-Newton product J^T H_loss J v. R-backward outputs accumulate (+=), R-forwards overwrite. */

/** ry[n,c_out,h_out,w_out] = conv(rx, w) + conv(x, v). scratch (ry's size) is needed only when rx
 *  and v are both non-NULL. Each term runs through msq_conv2d_forward's dispatch. */
void msq_conv2d_rforward(float *ry, float *scratch, const float *x, const float *rx, const float *w,
                         const float *v, const msq_conv2d_shape *s, void *workspace);
void msq_conv2d_rforward_ref(float *ry, float *scratch, const float *x, const float *rx, const float *w,
                             const float *v, const msq_conv2d_shape *s, void *workspace);
/** rdx[n,c_in,h_in,w_in] += conv_transpose(rdy, w) + conv_transpose(dy, v). */
void msq_conv2d_rbackward_input(float *rdx, const float *rdy, const float *dy, const float *w,
                                const float *v, const msq_conv2d_shape *s, void *workspace);
void msq_conv2d_rbackward_input_ref(float *rdx, const float *rdy, const float *dy, const float *w,
                                    const float *v, const msq_conv2d_shape *s, void *workspace);
/** rdw[c_out,c_in/groups,kh,kw] += corr(x, rdy) + corr(rx, dy). */
void msq_conv2d_rbackward_weight(float *rdw, const float *rdy, const float *dy, const float *x,
                                 const float *rx, const msq_conv2d_shape *s, void *workspace);
void msq_conv2d_rbackward_weight_ref(float *rdw, const float *rdy, const float *dy, const float *x,
                                     const float *rx, const msq_conv2d_shape *s, void *workspace);

/** ry[n,out] = rx[n,in]·w[out,in]^T + x·v^T. */
void msq_linear_rforward(float *ry, const float *x, const float *rx, const float *w, const float *v,
                         int n, int in_features, int out_features);
void msq_linear_rforward_ref(float *ry, const float *x, const float *rx, const float *w, const float *v,
                             int n, int in_features, int out_features);
/** rdx[n,in] += rdy·w + dy·v; rdw[out,in] += rdy^T·x + dy^T·rx (rdx or rdw may be NULL). */
void msq_linear_rbackward(float *rdx, float *rdw, const float *rdy, const float *dy, const float *x,
                          const float *rx, const float *w, const float *v, int n, int in_features,
                          int out_features);
void msq_linear_rbackward_ref(float *rdx, float *rdw, const float *rdy, const float *dy, const float *x,
                              const float *rx, const float *w, const float *v, int n, int in_features,
                              int out_features);

/** Eval-mode batch norm (optionally fused with the ReLU after it): ry[n,c,hw] = a_c·rx, a_c =
 *  gamma_c / sqrt(running_var_c + eps), times relu_out > 0 when relu_out (the fused forward's
 *  output) is not NULL. */
void msq_batchnorm_rforward_eval(float *ry, const float *rx, const float *relu_out, const float *gamma,
                                 const float *running_var, int n, int c, int hw, float eps);
void msq_batchnorm_rforward_eval_ref(float *ry, const float *rx, const float *relu_out, const float *gamma,
                                     const float *running_var, int n, int c, int hw, float eps);
/** rdx += a_c·rdy (masked as the R-forward): eval-mode batch norm is affine in x, so no dy term. */
void msq_batchnorm_rbackward_eval(float *rdx, const float *rdy, const float *relu_out, const float *gamma,
                                  const float *running_var, int n, int c, int hw, float eps);
void msq_batchnorm_rbackward_eval_ref(float *rdx, const float *rdy, const float *relu_out, const float *gamma,
                                      const float *running_var, int n, int c, int hw, float eps);

/** ry[i] = act'(x[i])·rx[i] (the derivatives of msq_activation_backward). */
void msq_activation_rforward(float *ry, const float *rx, const float *x, size_t count, msq_activation kind);
void msq_activation_rforward_ref(float *ry, const float *rx, const float *x, size_t count, msq_activation kind);
/** rdx[i] += rdy[i]·act'(x[i]) + dy[i]·act''(x[i])·rx[i] (act'' = 0 for relu and relu6, 1/3 on
 *  [-3, 3] for hardswish, φ(x)(2 − x²) for GELU). */
void msq_activation_rbackward(float *rdx, const float *rdy, const float *dy, const float *x, const float *rx,
                              size_t count, msq_activation kind);
void msq_activation_rbackward_ref(float *rdx, const float *rdy, const float *dy, const float *x,
                                  const float *rx, size_t count, msq_activation kind);

/** ry[n,c,h_out,w_out] = rx at the forward's argmax (max pooling is linear once its argmax is
 *  fixed; its R-backward is msq_maxpool2d_backward, average pooling's are its own kernels). */
void msq_maxpool2d_rforward(float *ry, const float *rx, const int32_t *argmax, const msq_pool2d_shape *s);
void msq_maxpool2d_rforward_ref(float *ry, const float *rx, const int32_t *argmax, const msq_pool2d_shape *s);

/** rdz[n,k] = (diag p − p p^T)·rz / n per row: the Hessian of the batch-mean softmax cross-entropy
 *  w.r.t. the logits (with or without label smoothing) times rz. probs from the forward. */
void msq_softmax_cross_entropy_hvp(float *rdz, const float *probs, const float *rz, int n, int k);
void msq_softmax_cross_entropy_hvp_ref(float *rdz, const float *probs, const float *rz, int n, int k);

/** Rademacher probe slice: v[i] = ±1 for global index g = offset + i, bit (g mod 64) of word g/64 of
 *  a counter-based hash of (seed, stream) (1 → +1). The same values for any thread count and any
 *  slicing, so layer l's block is the slice at offset Σ_{m<l} N_m of one probe over all layers. */
void msq_rademacher(float *v, size_t count, uint64_t seed, uint64_t stream, uint64_t offset);
void msq_rademacher_ref(float *v, size_t count, uint64_t seed, uint64_t stream, uint64_t offset);

/** Elements per partial sum in msq_dot. */
#define MSQ_DOT_CHUNK 4096
/** Σ a[i]·b[i] in double: fixed chunks of MSQ_DOT_CHUNK summed in chunk order, so the same bits at
 *  every thread count. The _ref twin sums sequentially (last bits may differ). */
double msq_dot(const float *a, const float *b, size_t count);
double msq_dot_ref(const float *a, const float *b, size_t count);

/* ---------------------------------------------------------------- float64 convolution (conv_f64.c)
 * The float64 Hessian-vector product's convolutions: the geometry of msq_conv2d_shape, in double.
 * No result depends on the thread count. */

/** y[n,c_out,h_out,w_out] = conv(x, w) + bias, or y += conv(x, w) + bias when accumulate != 0;
 *  x [n,c_in,h_in,w_in], w [c_out,c_in/groups,kh,kw], bias [c_out] or NULL. */
void msq_conv2d_forward_f64(double *y, const double *x, const double *w, const double *bias,
                            const msq_conv2d_shape *s, int accumulate);
void msq_conv2d_forward_f64_ref(double *y, const double *x, const double *w, const double *bias,
                                const msq_conv2d_shape *s, int accumulate);

/** dx[n,c_in,h_in,w_in] += conv_transpose(dy, w); dy [n,c_out,h_out,w_out]. */
void msq_conv2d_backward_input_f64(double *dx, const double *dy, const double *w, const msq_conv2d_shape *s);
void msq_conv2d_backward_input_f64_ref(double *dx, const double *dy, const double *w, const msq_conv2d_shape *s);

/** dw[c_out,c_in/groups,kh,kw] += correlation of x [n,c_in,h_in,w_in] with dy [n,c_out,h_out,w_out]. */
void msq_conv2d_backward_weight_f64(double *dw, const double *dy, const double *x, const msq_conv2d_shape *s);
void msq_conv2d_backward_weight_f64_ref(double *dw, const double *dy, const double *x, const msq_conv2d_shape *s);

/* ---------------------------------------------------------------- transformers (layernorm.c, attention.c, tokens.c) */

/** Layer normalisation over the last axis of x[rows, dim]: y = (x − μ)·rstd·γ + β with
 *  rstd = 1/sqrt(var + eps) (biased variance, as PyTorch); writes y and the per-row mean and rstd
 *  the backward needs. Results do not depend on the thread count. */
void msq_layernorm_forward(float *y, float *mean, float *rstd, const float *x, const float *gamma,
                           const float *beta, int rows, int dim, float eps);
void msq_layernorm_forward_ref(float *y, float *mean, float *rstd, const float *x, const float *gamma,
                               const float *beta, int rows, int dim, float eps);
/** dx += rstd·(g − mean(g) − x̂·mean(g·x̂)) with g = dy·γ and x̂ = (x − μ)·rstd; dγ += Σ_rows dy·x̂,
 *  dβ += Σ_rows dy (either may be NULL). Fixed row chunks: the same bits at any thread count. */
void msq_layernorm_backward(float *dx, float *dgamma, float *dbeta, const float *dy, const float *x,
                            const float *mean, const float *rstd, const float *gamma, int rows, int dim);
void msq_layernorm_backward_ref(float *dx, float *dgamma, float *dbeta, const float *dy, const float *x,
                                const float *mean, const float *rstd, const float *gamma, int rows, int dim);

/** y = softmax of each row of x[rows, n] (y may be x). */
void msq_softmax_forward(float *y, const float *x, int rows, int n);
void msq_softmax_forward_ref(float *y, const float *x, int rows, int n);

/** Multi-head self-attention on qkv[batch, tokens, 3, heads, head_dim] (a Linear(D, 3·D)'s output,
 *  D = heads·head_dim): per image and head, P = softmax(scale·Q·Kᵀ) and O = P·V;
 *  out[batch, tokens, D] holds the heads side by side, probs[batch, heads, tokens, tokens] keeps P
 *  for the backward. Results do not depend on the thread count. */
void msq_attention_forward(float *out, float *probs, const float *qkv, int batch, int tokens, int heads,
                           int head_dim, float scale);
void msq_attention_forward_ref(float *out, float *probs, const float *qkv, int batch, int tokens, int heads,
                               int head_dim, float scale);
/** dqkv += the gradient of msq_attention_forward's out w.r.t. qkv, given dout and the forward's qkv
 *  and probs: dV += Pᵀ·dO, dS = P ⊙ (dO·Vᵀ − rowsum), dQ += scale·dS·K, dK += scale·dSᵀ·Q. */
void msq_attention_backward(float *dqkv, const float *dout, const float *qkv, const float *probs, int batch,
                            int tokens, int heads, int head_dim, float scale);
void msq_attention_backward_ref(float *dqkv, const float *dout, const float *qkv, const float *probs, int batch,
                                int tokens, int heads, int head_dim, float scale);

/* R-operator of layer norm and attention (conventions of the R-operator section: R-forwards
 * overwrite, R-backwards accumulate, a NULL dy gives the Gauss-Newton product). */

/** ry[rows, dim] = γ ⊙ J·rx with J = rstd·(I − 11ᵀ/dim − x̂x̂ᵀ/dim), x̂ = (x − μ)·rstd: the tangent
 *  of msq_layernorm_forward's y for the input tangent rx (γ and β held fixed); mean and rstd from
 *  the forward. */
void msq_layernorm_rforward(float *ry, const float *x, const float *rx, const float *mean, const float *rstd,
                            const float *gamma, int rows, int dim);
void msq_layernorm_rforward_ref(float *ry, const float *x, const float *rx, const float *mean, const float *rstd,
                                const float *gamma, int rows, int dim);
/** rdx[rows, dim] += J·(γ ⊙ rdy) + R_x[J]·(γ ⊙ dy): the tangent of msq_layernorm_backward's dx.
 *  dy or rx NULL drops the second term. */
void msq_layernorm_rbackward(float *rdx, const float *rdy, const float *dy, const float *x, const float *rx,
                             const float *mean, const float *rstd, const float *gamma, int rows, int dim);
void msq_layernorm_rbackward_ref(float *rdx, const float *rdy, const float *dy, const float *x, const float *rx,
                                 const float *mean, const float *rstd, const float *gamma, int rows, int dim);

/** R-forward of msq_attention_forward for the tangent rqkv (qkv's layout, not NULL):
 *  RS = scale·(RQ·Kᵀ + Q·RKᵀ), RP = P ⊙ (RS − rowsum(P ⊙ RS)), RO = RP·V + P·RV. Writes rout
 *  [batch, tokens, D] and rprobs [batch, heads, tokens, tokens] (RP, for the R-backward). */
void msq_attention_rforward(float *rout, float *rprobs, const float *qkv, const float *rqkv, const float *probs,
                            int batch, int tokens, int heads, int head_dim, float scale);
void msq_attention_rforward_ref(float *rout, float *rprobs, const float *qkv, const float *rqkv, const float *probs,
                                int batch, int tokens, int heads, int head_dim, float scale);
/** rdqkv += the tangent of msq_attention_backward's dqkv, from dout and rdout, qkv and rqkv, P and RP:
 *  RdV += Pᵀ·RdO + RPᵀ·dO, RdQ += scale·(RdS·K + dS·RK), RdK += scale·(RdSᵀ·Q + dSᵀ·RQ) with
 *  RdS = RP ⊙ (dP − c) + P ⊙ (RdP − Rc). dout NULL: the plain backward of rdout (Gauss-Newton);
 *  rqkv and rprobs NULL: a zero input tangent. */
void msq_attention_rbackward(float *rdqkv, const float *rdout, const float *dout, const float *qkv,
                             const float *rqkv, const float *probs, const float *rprobs, int batch, int tokens,
                             int heads, int head_dim, float scale);
void msq_attention_rbackward_ref(float *rdqkv, const float *rdout, const float *dout, const float *qkv,
                                 const float *rqkv, const float *probs, const float *rprobs, int batch, int tokens,
                                 int heads, int head_dim, float scale);

/** y[b, j, i] = x[b, i, j] for x[n, rows, cols] (planes to tokens), or y[b, j, i] += x[b, i, j]
 *  when accumulate != 0 (the adjoint, for a backward). */
void msq_transpose_batched(float *y, const float *x, int n, int rows, int cols, int accumulate);

/* ---------------------------------------------------------------- optimizer (sgd.c) */

/** One SGD step with PyTorch's semantics (dampening 0):
 *  g = grad + weight_decay * w;  buf = momentum * buf + g;
 *  g = nesterov ? g + momentum * buf : buf;  w -= lr * g.
 *  With momentum == 0, buf is not touched and g = grad + weight_decay * w. */
void msq_sgd_step(float *w, float *momentum_buf, const float *grad, size_t count,
                  float lr, float momentum, float weight_decay, int nesterov);
void msq_sgd_step_ref(float *w, float *momentum_buf, const float *grad, size_t count,
                      float lr, float momentum, float weight_decay, int nesterov);

/* ---------------------------------------------------------------- optimizer (adamw.c) */

/** One AdamW step with torch.optim.AdamW's semantics (amsgrad off), step t counted from 1:
 *  w *= decay_factor                       (decay_factor = 1 − lr·λ, decoupled weight decay)
 *  m  = m + (1 − β1)(g − m)                (exp_avg.lerp_(g, 1 − β1))
 *  v  = v·β2 + (1 − β2)·g·g                (exp_avg_sq)
 *  w -= step_size·m / (√v / bc2_sqrt + eps)  (step_size = lr / (1 − β1^t), bc2_sqrt = √(1 − β2^t)).
 *  The scalars, 1 − β1 and 1 − β2 included, are computed by the caller in double, as PyTorch does in
 *  Python, then rounded to float (1 − (float)0.99 is 1e-6 away from (float)0.01). exp_avg and
 *  exp_avg_sq start at zero. The _ref twin is a plain loop; both agree bit for bit. */
void msq_adamw_step(float *w, float *exp_avg, float *exp_avg_sq, const float *grad, size_t count,
                    float decay_factor, float one_minus_beta1, float beta2, float one_minus_beta2,
                    float step_size, float bc2_sqrt, float eps);
void msq_adamw_step_ref(float *w, float *exp_avg, float *exp_avg_sq, const float *grad, size_t count,
                        float decay_factor, float one_minus_beta1, float beta2, float one_minus_beta2,
                        float step_size, float bc2_sqrt, float eps);

/* ---------------------------------------------------------------- elementwise (elementwise.c) */

/** y[i] = a[i] + b[i] (y may alias a or b). */
void msq_add_forward(float *y, const float *a, const float *b, size_t count);
/** dst[i] += src[i]. */
void msq_accumulate(float *dst, const float *src, size_t count);
/** dst[i] = value for i < count. */
void msq_fill(float *dst, float value, size_t count);
void msq_fill_ref(float *dst, float value, size_t count);

/* ---- quantizers (quant.c) */

/* MSQ's weight quantizer (MSQ-SPEC §1, "RoundClamp"), its LSB regulariser (§2) and the PACT
 * activation quantizer (§5).
 *
 * Rounding — the project's choice, used everywhere (C kernels, Swift, reference tests):
 * ROUND HALF TO EVEN, i.e. rintf/nearbyintf under the default rounding mode. This is what
 * torch.round does, so the PyTorch peer agrees bit for bit. round(x) below always means this.
 *
 * Arithmetic is float32 in exactly the order written (no FMA contraction, no reciprocal
 * multiplies): w~ = 0.5f + w / (2s), with 2s computed first (exact). Multiplications by powers
 * of two are exact, so 2^n·w~, 2^(n−k)·w~ and s·j/2^(n−1) have one rounding each at most.
 *
 * Scales: s must be finite and >= 0. s == 0 (an all-zero tensor) is defined as w~ = 1/2 for
 * every element, the limit at w = 0: codes j = 0, wq = 0, lsb = 0.
 *
 * Reductions (abs_sum, dalpha) are summed in double over fixed chunks of MSQ_QUANT_CHUNK
 * elements whose partial sums are then added in chunk order, so the fast kernels give the same
 * bits at EVERY thread count (stronger than the header's per-thread-count promise). The `_ref`
 * twins sum sequentially, so they differ from the fast kernels only in the last bits of those
 * double sums; every other output is bit-identical between fast and `_ref`. */

/** Elements per reduction chunk in the fast quantizer kernels (see above). */
#define MSQ_QUANT_CHUNK 1024

/** s = max_i |w[i]| over w[count]; 0 for count == 0. NaN entries are ignored (fmaxf). */
float msq_absmax(const float *w, size_t count);
float msq_absmax_ref(const float *w, size_t count);

/** RoundClamp forward, per tensor with the given scale s (MSQ-SPEC §1, paper Eq. 4),
 *  elementwise over w[count]:
 *
 *      w~ = 0.5f + w / (2s)
 *      q  = clamp(round(2^n · w~), 0, 2^n − 1)        n = bits, round half to even
 *      j  = q − 2^(n−1)                               n-bit two's complement, [−2^(n−1), 2^(n−1)−1]
 *      wq = s · j / 2^(n−1)                           the dequantized weight
 *
 *  Writes wq[count] and, unless codes is NULL, codes[count] = j. bits in 1...16 (MSQ uses 2...8).
 *  w = +s maps to q = 2^n − 1 (round(2^n) = 2^n is clamped), w = −s to q = 0. Weights outside
 *  [−s, s] (a caller-supplied scale smaller than max|w|) are clamped the same way.
 *  s == 0: wq = 0 and codes = 0. Per-output-channel scaling = one call per channel. */
void msq_roundclamp_forward(float *wq, int32_t *codes, const float *w, size_t count,
                            float scale, int bits);
void msq_roundclamp_forward_ref(float *wq, int32_t *codes, const float *w, size_t count,
                                float scale, int bits);

/** RoundClamp backward: the straight-through estimator, dQ_n/dW = 1 (s is a constant).
 *
 *      zero_outside == 0:  dw[i] += dwq[i]
 *      zero_outside != 0:  dw[i] += dwq[i] · 1[0 <= round(2^n · w~[i]) <= 2^n − 1]
 *
 *  i.e. with zero_outside the gradient is zeroed exactly where the clamp changed the code
 *  (round(2^n·w~) < 0 or > 2^n − 1, equivalently 2^n·w~ < −1/2 or 2^n·w~ >= 2^n − 1/2 under
 *  half-to-even). Note that w = +s itself rounds to 2^n and is therefore "outside": with
 *  s = max|W| the largest positive weight gets no gradient in that mode. Masked elements
 *  receive exactly nothing (dw unchanged, even for inf/NaN dwq). s == 0: every element is
 *  inside. dw[count] accumulates. */
void msq_roundclamp_backward(float *dw, const float *dwq, const float *w, size_t count,
                             float scale, int bits, int zero_outside);
void msq_roundclamp_backward_ref(float *dw, const float *dwq, const float *w, size_t count,
                                 float scale, int bits, int zero_outside);

/** The fused LSB pass (MSQ-SPEC §2, paper Eqs. 3, 5–7), one pass over w[count], n = bits,
 *  1 <= k < n <= 16:
 *
 *      q_n     = clamp(round(2^n · w~), 0, 2^n − 1)
 *      q_{n−k} = clamp(round(2^(n−k) · w~), 0, 2^(n−k) − 1)      (no gradient through it)
 *      lsb     = 2^n · w~ − 2^k · q_{n−k}                        continuous in W (Eq. 5)
 *      lsb_int = q_n − 2^k · q_{n−k}           in [−2^(k−1), 2^(k−1)], up to 2^k − 1 at the top clamp
 *
 *  Outputs (each may be NULL):
 *    lsb[count]  = lsb                                           (overwritten)
 *    *abs_sum    = Σ_i |lsb[i]|, in double (chunked order, see above)   (overwritten)
 *    *nonzero    = #{i : lsb_int[i] != 0}                        (overwritten)
 *    grad[count] += sign(lsb[i]) · g,  g = coeff · (2^n / (2s)) computed once in float,
 *                   sign(0) = 0                                  (ACCUMULATES, Eq. 7)
 *  coeff is supplied by the caller: λ / N_total for the objective L_task + λ·R with
 *  R = (1/N_total) Σ_layers Σ_i |lsb| (Eq. 6, 8). The caller forms R from the abs_sums.
 *  s == 0: lsb = 0, abs_sum = 0, nonzero = 0 and grad is left unchanged. */
void msq_lsb_forward_backward(float *lsb, double *abs_sum, int64_t *nonzero, float *grad,
                              const float *w, size_t count, float scale, int bits, int k,
                              float coeff);
void msq_lsb_forward_backward_ref(float *lsb, double *abs_sum, int64_t *nonzero, float *grad,
                                  const float *w, size_t count, float scale, int bits, int k,
                                  float coeff);

/** The proximal LSB step: the proximal operator of t·|lsb| applied to every weight, in place,
 *  over w[count] with the lsb of msq_lsb_forward_backward (n = bits, 1 <= k < n <= 16):
 *
 *      lsb' = sign(lsb) · max(0, |lsb| − t)            soft threshold, t = threshold in n-bit levels
 *      w   += (lsb' − lsb) · (2s / 2^n)                 evaluated in float in that order
 *
 *  so each weight moves toward its nearest (n−k)-bit level by at most t n-bit levels and stops
 *  there (a subgradient step would overshoot and oscillate around it). Weights whose coarse code
 *  is clamped at the top (round(2^(n−k)·w~) > 2^(n−k) − 1, i.e. w near +s) are left unchanged:
 *  pulling them down would shrink s = max|W| and move every level of the tensor.
 *  s == 0 or t <= 0: w unchanged. Elementwise (no reductions): the same bits at any thread count. */
void msq_lsb_prox(float *w, size_t count, float scale, int bits, int k, float threshold);
void msq_lsb_prox_ref(float *w, size_t count, float scale, int bits, int k, float threshold);

/** PACT activation quantizer forward (MSQ-SPEC §5), unsigned A-bit (A = bits in 1...16), alpha > 0:
 *
 *      c = clip(x, 0, alpha);   y = round((c · (2^A − 1)) / alpha) · alpha / (2^A − 1)
 *
 *  evaluated left to right in float: ((round((c·L)/alpha)) · alpha) / L, L = 2^A − 1.
 *  x >= alpha gives (alpha·L)/L, alpha to within an ulp (two roundings). y[count] is overwritten. */
void msq_pact_forward(float *y, const float *x, size_t count, float alpha, int bits);
void msq_pact_forward_ref(float *y, const float *x, size_t count, float alpha, int bits);

/** PACT backward with PACT's straight-through estimator (the rounding is invisible):
 *
 *      dx[i]   += dy[i] · 1[0 <= x[i] < alpha]
 *      *dalpha += Σ_i dy[i] · 1[x[i] >= alpha]      (sum in double, chunked order, then added
 *                                                    to *dalpha as one float)
 *  Both accumulate; either may be NULL. Masked elements contribute exactly nothing. */
void msq_pact_backward(float *dx, float *dalpha, const float *dy, const float *x, size_t count,
                       float alpha);
void msq_pact_backward_ref(float *dx, float *dalpha, const float *dy, const float *x, size_t count,
                           float alpha);

/** LSQ-style signed activation quantizer forward (Esser et al., "Learned Step Size Quantization"),
 *  symmetric A-bit (A = bits in 2...16), clip level alpha > 0, L = 2^(A−1) − 1 levels each side:
 *
 *      c = clip(x, −alpha, alpha);   y = ((round((c·L)/alpha)) · alpha) / L
 *
 *  (codes −L…L; the step is alpha/L). y[count] is overwritten. */
void msq_lsq_forward(float *y, const float *x, size_t count, float alpha, int bits);
void msq_lsq_forward_ref(float *y, const float *x, size_t count, float alpha, int bits);

/** LSQ backward (straight-through inside the range, LSQ's step gradient written for alpha = L·step):
 *
 *      dx[i]   += dy[i] · 1[−alpha < x[i] < alpha]
 *      *dalpha += grad_scale · Σ_i dy[i] · (|x[i]| < alpha ? (round(v_i) − v_i)/L : sign(x[i])),
 *                 v_i = (x[i]·L)/alpha           (sum in double, chunked order)
 *  Both accumulate; either may be NULL. */
void msq_lsq_backward(float *dx, float *dalpha, const float *dy, const float *x, size_t count, float alpha,
                      int bits, float grad_scale);
void msq_lsq_backward_ref(float *dx, float *dalpha, const float *dy, const float *x, size_t count,
                          float alpha, int bits, float grad_scale);

/* ---------------------------------------------------------------- Swin transformer (swin_layout.c, window_attention.c) */

/** torchvision's Swin window partition on NHWC tokens x[B, H, W, C]: zero-pad H, W up to Hp, Wp
 *  (multiples of window), roll by (−shift_h, −shift_w) as torch.roll, cut into nW = (Hp/ws)·(Wp/ws)
 *  windows of ws² tokens, row-major: y[B·nW, ws², C] (overwritten). Pure copies (same bits as _ref). */
void msq_window_partition_forward(float *y, const float *x, int batch, int height, int width, int channels,
                                  int window, int shift_h, int shift_w);
void msq_window_partition_forward_ref(float *y, const float *x, int batch, int height, int width, int channels,
                                      int window, int shift_h, int shift_w);
/** The adjoint of msq_window_partition_forward, which is torchvision's window reverse (un-cut,
 *  roll back, crop): dy[B·nW, ws², C] -> dx[B, H, W, C] (overwritten). */
void msq_window_partition_backward(float *dx, const float *dy, int batch, int height, int width, int channels,
                                   int window, int shift_h, int shift_w);
void msq_window_partition_backward_ref(float *dx, const float *dy, int batch, int height, int width, int channels,
                                       int window, int shift_h, int shift_w);

/** Window attention on qkv[W, ws², 3, heads, head_dim] (W = B·nW windows): per window and head
 *  P = softmax(scale·Q·Kᵀ + bias + mask), O = P·V, with bias[i, j] = table[idx(i, j), h] (table
 *  [(2ws−1)², heads], torchvision's relative_position_bias_table and index) and mask −100 between
 *  tokens of different regions of the rolled pad_h × pad_w image (torchvision's shifted-window
 *  mask; none when both shifts are 0). out[W, ws², D] (heads side by side), probs[W, heads, ws², ws²]
 *  kept for the backward. Results do not depend on the thread count. */
void msq_window_attention_forward(float *out, float *probs, const float *qkv, const float *table, int windows,
                                  int window, int heads, int head_dim, int pad_h, int pad_w, int shift_h,
                                  int shift_w, float scale);
void msq_window_attention_forward_ref(float *out, float *probs, const float *qkv, const float *table, int windows,
                                      int window, int heads, int head_dim, int pad_h, int pad_w, int shift_h,
                                      int shift_w, float scale);
/** dqkv += and dtable += (NULL: skipped) the gradients of msq_window_attention_forward's out, given
 *  dout and the forward's qkv and probs (the mask is constant, so it needs no shape here). The
 *  table gradient sums fixed window chunks in order: the same bits at any thread count. */
void msq_window_attention_backward(float *dqkv, float *dtable, const float *dout, const float *qkv,
                                   const float *probs, int windows, int window, int heads, int head_dim,
                                   float scale);
void msq_window_attention_backward_ref(float *dqkv, float *dtable, const float *dout, const float *qkv,
                                       const float *probs, int windows, int window, int heads, int head_dim,
                                       float scale);

/** torchvision's Swin patch merging layout: x[B, H, W, C] zero-padded to even H, W ->
 *  y[B, ⌈H/2⌉, ⌈W/2⌉, 4C] = cat(x[0::2, 0::2], x[1::2, 0::2], x[0::2, 1::2], x[1::2, 1::2]) on channels
 *  (overwritten). */
void msq_patch_merge_forward(float *y, const float *x, int batch, int height, int width, int channels);
void msq_patch_merge_forward_ref(float *y, const float *x, int batch, int height, int width, int channels);
/** Its adjoint: dy[B, ⌈H/2⌉, ⌈W/2⌉, 4C] -> dx[B, H, W, C] (overwritten; padded slots dropped). */
void msq_patch_merge_backward(float *dx, const float *dy, int batch, int height, int width, int channels);
void msq_patch_merge_backward_ref(float *dx, const float *dy, int batch, int height, int width, int channels);

#ifdef __cplusplus
}
#endif

#endif /* MSQ_KERNELS_H */
