/* conv_f64.c — convolution in double precision, for the float64 Hessian-vector product.
 *
 * Why: a float32 R-pass cannot give a stem block of the Hessian to 1e-3 on inputs with a constant
 * background (its sum cancels; PyTorch's own float32 double backward is off by 1e-2 there), so
 * HessianVectorProduct's float64 precision runs the whole R-pass in double. Same geometry and
 * conventions as the float conv kernels (msq_conv2d_shape, NCHW, OIHW weights, groups).
 *
 * Fast kernels: per image and group, im2col into a private column buffer and one cblas_dgemm.
 * OpenMP splits images (forward, input gradient) or fixed blocks of output channels (weight
 * gradient), never a sum, so the thread count changes no bit. The _ref twins are conv_ref_loops.h's
 * direct loops. Calls only cblas. */
#include "msq_kernels.h"
#include <cblas.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

/* col[(ci*kh + i)*kw + j][oh*w_out + ow] = x[g*cin_g + ci, oh*sh - ph + i, ow*sw - pw + j] (0 outside)
   for image x (one image's [c_in, h_in, w_in]). col: [cin_g*kh*kw, h_out*w_out]. */
static void im2col_f64(double *col, const double *x, const msq_conv2d_shape *s, int g) {
    const int cin_g = s->c_in / s->groups, hw_out = s->h_out * s->w_out;
    for (int ci = 0; ci < cin_g; ci++) {
        const double *xc = x + (size_t)(g * cin_g + ci) * s->h_in * s->w_in;
        for (int i = 0; i < s->kh; i++)
            for (int j = 0; j < s->kw; j++) {
                double *row = col + ((size_t)(ci * s->kh + i) * s->kw + j) * hw_out;
                for (int oh = 0; oh < s->h_out; oh++) {
                    const int ih = oh * s->stride_h - s->pad_h + i;
                    double *r = row + (size_t)oh * s->w_out;
                    if (ih < 0 || ih >= s->h_in) { memset(r, 0, sizeof(double) * (size_t)s->w_out); continue; }
                    const double *xr = xc + (size_t)ih * s->w_in;
                    for (int ow = 0; ow < s->w_out; ow++) {
                        const int iw = ow * s->stride_w - s->pad_w + j;
                        r[ow] = (iw >= 0 && iw < s->w_in) ? xr[iw] : 0.0;
                    }
                }
            }
    }
}

/* The transpose of im2col_f64: dx (one image) += col scattered back. Sequential per image. */
static void col2im_add_f64(double *dx, const double *col, const msq_conv2d_shape *s, int g) {
    const int cin_g = s->c_in / s->groups, hw_out = s->h_out * s->w_out;
    for (int ci = 0; ci < cin_g; ci++) {
        double *xc = dx + (size_t)(g * cin_g + ci) * s->h_in * s->w_in;
        for (int i = 0; i < s->kh; i++)
            for (int j = 0; j < s->kw; j++) {
                const double *row = col + ((size_t)(ci * s->kh + i) * s->kw + j) * hw_out;
                for (int oh = 0; oh < s->h_out; oh++) {
                    const int ih = oh * s->stride_h - s->pad_h + i;
                    if (ih < 0 || ih >= s->h_in) continue;
                    const double *r = row + (size_t)oh * s->w_out;
                    double *xr = xc + (size_t)ih * s->w_in;
                    for (int ow = 0; ow < s->w_out; ow++) {
                        const int iw = ow * s->stride_w - s->pad_w + j;
                        if (iw >= 0 && iw < s->w_in) xr[iw] += r[ow];
                    }
                }
            }
    }
}

static size_t col_count(const msq_conv2d_shape *s) {
    return (size_t)(s->c_in / s->groups) * s->kh * s->kw * s->h_out * s->w_out;
}

/* One column buffer per thread of a team of nt, or NULL (nothing kept) if one cannot be had:
   the kernels then take their _ref twin instead of failing half-way through an accumulation. */
static double **alloc_cols(int nt, const msq_conv2d_shape *s) {
    double **cols = calloc((size_t)nt, sizeof(double *));
    if (!cols) return NULL;
    const size_t count = col_count(s) ? col_count(s) : 1;
    for (int t = 0; t < nt; t++)
        if (!(cols[t] = malloc(sizeof(double) * count))) {
            for (int u = 0; u < t; u++) free(cols[u]);
            free(cols);
            return NULL;
        }
    return cols;
}

static void free_cols(double **cols, int nt) {
    for (int t = 0; t < nt; t++) free(cols[t]);
    free(cols);
}

/* y[n, c_out, h_out, w_out] = conv(x, w) + bias (accumulate == 0), or y += conv(x, w) + bias;
   x [n, c_in, h_in, w_in], w [c_out, c_in/groups, kh, kw], bias [c_out] or NULL. */
void msq_conv2d_forward_f64(double *y, const double *x, const double *w, const double *bias,
                            const msq_conv2d_shape *s, int accumulate) {
    const int cin_g = s->c_in / s->groups, cout_g = s->c_out / s->groups;
    const int k = cin_g * s->kh * s->kw, hw_out = s->h_out * s->w_out;
    const int nt = omp_in_parallel() ? 1 : omp_get_max_threads();
    double **cols = alloc_cols(nt, s);
    if (!cols) { msq_conv2d_forward_f64_ref(y, x, w, bias, s, accumulate); return; }
    #pragma omp parallel for schedule(static) num_threads(nt)
    for (int b = 0; b < s->n; b++) {
        double *col = cols[omp_get_thread_num()];
        const double *xb = x + (size_t)b * s->c_in * s->h_in * s->w_in;
        double *yb = y + (size_t)b * s->c_out * hw_out;
        for (int g = 0; g < s->groups; g++) {
            im2col_f64(col, xb, s, g);
            cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, cout_g, hw_out, k, 1.0,
                        w + (size_t)g * cout_g * k, k, col, hw_out, accumulate ? 1.0 : 0.0,
                        yb + (size_t)g * cout_g * hw_out, hw_out);
        }
        if (bias)
            for (int co = 0; co < s->c_out; co++)
                for (int p = 0; p < hw_out; p++) yb[(size_t)co * hw_out + p] += bias[co];
    }
    free_cols(cols, nt);
}

/* dx[n, c_in, h_in, w_in] += conv_transpose(dy, w); dy [n, c_out, h_out, w_out]. */
void msq_conv2d_backward_input_f64(double *dx, const double *dy, const double *w, const msq_conv2d_shape *s) {
    const int cin_g = s->c_in / s->groups, cout_g = s->c_out / s->groups;
    const int k = cin_g * s->kh * s->kw, hw_out = s->h_out * s->w_out;
    const int nt = omp_in_parallel() ? 1 : omp_get_max_threads();
    double **cols = alloc_cols(nt, s);
    if (!cols) { msq_conv2d_backward_input_f64_ref(dx, dy, w, s); return; }
    #pragma omp parallel for schedule(static) num_threads(nt)
    for (int b = 0; b < s->n; b++) {
        double *col = cols[omp_get_thread_num()];
        const double *dyb = dy + (size_t)b * s->c_out * hw_out;
        double *dxb = dx + (size_t)b * s->c_in * s->h_in * s->w_in;
        for (int g = 0; g < s->groups; g++) {
            cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, k, hw_out, cout_g, 1.0,
                        w + (size_t)g * cout_g * k, k, dyb + (size_t)g * cout_g * hw_out, hw_out,
                        0.0, col, hw_out);
            col2im_add_f64(dxb, col, s, g);
        }
    }
    free_cols(cols, nt);
}

/* Output channels per weight-gradient block: blocks never straddle a group, so every dgemm has the
   same shape (and gives the same bits) whichever thread runs it. */
#define MSQ_CONV_F64_BLOCK 16

/* dw[c_out, c_in/groups, kh, kw] += correlation of x [n, c_in, h_in, w_in] with dy [n, c_out, h_out, w_out]:
   dw[co, ci, i, j] += Σ_{b, oh, ow} dy[b, co, oh, ow] · x[b, g*cin_g + ci, oh*sh - ph + i, ow*sw - pw + j]. */
void msq_conv2d_backward_weight_f64(double *dw, const double *dy, const double *x, const msq_conv2d_shape *s) {
    const int cin_g = s->c_in / s->groups, cout_g = s->c_out / s->groups;
    const int k = cin_g * s->kh * s->kw, hw_out = s->h_out * s->w_out;
    const int per_group = (cout_g + MSQ_CONV_F64_BLOCK - 1) / MSQ_CONV_F64_BLOCK;
    const int blocks = s->groups * per_group;
    const int nt = omp_in_parallel() ? 1 : omp_get_max_threads();
    double **cols = alloc_cols(nt, s);
    if (!cols) { msq_conv2d_backward_weight_f64_ref(dw, dy, x, s); return; }
    #pragma omp parallel num_threads(nt)
    {
        /* Thread t owns blocks [lo, hi) and walks every image in order: each dw element is summed
           in the same order at any thread count. One im2col per image and group it touches. */
        const int t = omp_get_thread_num(), team = omp_get_num_threads();
        const int lo = (int)((long)blocks * t / team), hi = (int)((long)blocks * (t + 1) / team);
        double *col = cols[t];
        for (int b = 0; hi > lo && b < s->n; b++) {
            const double *xb = x + (size_t)b * s->c_in * s->h_in * s->w_in;
            const double *dyb = dy + (size_t)b * s->c_out * hw_out;
            int im2col_group = -1;
            for (int blk = lo; blk < hi; blk++) {
                const int g = blk / per_group;
                const int c0 = g * cout_g + (blk % per_group) * MSQ_CONV_F64_BLOCK;
                const int c1 = c0 + MSQ_CONV_F64_BLOCK < (g + 1) * cout_g ? c0 + MSQ_CONV_F64_BLOCK : (g + 1) * cout_g;
                if (g != im2col_group) { im2col_f64(col, xb, s, g); im2col_group = g; }
                cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, c1 - c0, k, hw_out, 1.0,
                            dyb + (size_t)c0 * hw_out, hw_out, col, hw_out, 1.0, dw + (size_t)c0 * k, k);
            }
        }
    }
    free_cols(cols, nt);
}

/* ================================================================ reference kernels
   The oracle of the kernels above: conv_ref_loops.h's direct loops for double. */

#define CONV_REF_T double
#define CONV_REF_NAME(op) op##_ref_double
#include "conv_ref_loops.h"
#undef CONV_REF_T
#undef CONV_REF_NAME

void msq_conv2d_forward_f64_ref(double *y, const double *x, const double *w, const double *bias,
                                const msq_conv2d_shape *s, int accumulate) {
    forward_ref_double(y, x, w, bias, s, accumulate);
}

void msq_conv2d_backward_input_f64_ref(double *dx, const double *dy, const double *w, const msq_conv2d_shape *s) {
    backward_input_ref_double(dx, dy, w, s);
}

void msq_conv2d_backward_weight_f64_ref(double *dw, const double *dy, const double *x, const msq_conv2d_shape *s) {
    backward_weight_ref_double(dw, NULL, dy, x, s);
}
