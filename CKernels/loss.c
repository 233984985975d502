/* loss.c — softmax cross-entropy with label smoothing. */
#include "msq_kernels.h"
#include <math.h>
#include <stdlib.h>

#define LOSS_PARALLEL_MIN 4096L /* logits; below this a parallel region costs more than it saves */

static int labels_valid(const int32_t *labels, int n, int k) {
    for (int i = 0; i < n; i++)
        if (labels[i] < 0 || labels[i] >= k) return 0;
    return 1;
}

/* Writes probs for one row and returns its loss -sum_j target_j log p_j, in double. */
static double ce_row(float *probs, const float *logits, int32_t label, int k, float eps) {
    float mx = logits[0];
    for (int j = 1; j < k; j++)
        if (logits[j] > mx) mx = logits[j];
    /* Subtracting the row max keeps exp() from overflowing; double keeps log p exact enough. */
    double s = 0.0;
    for (int j = 0; j < k; j++) s += exp((double)logits[j] - (double)mx);
    double lse = log(s);
    double sum_logp = 0.0;
    for (int j = 0; j < k; j++) {
        double d = (double)logits[j] - (double)mx;
        probs[j] = (float)(exp(d) / s);
        sum_logp += d - lse;
    }
    double logp_label = ((double)logits[label] - (double)mx) - lse;
    return -((1.0 - (double)eps) * logp_label + (double)eps / k * sum_logp);
}

int msq_softmax_cross_entropy_forward_ref(float *loss, float *probs, const float *logits,
                                          const int32_t *labels, int n, int k, float label_smoothing) {
    if (!labels_valid(labels, n, k)) {
        *loss = NAN;
        return -1;
    }
    double total = 0.0;
    for (int i = 0; i < n; i++)
        total += ce_row(probs + (size_t)i * k, logits + (size_t)i * k, labels[i], k, label_smoothing);
    *loss = (float)(total / n);
    return 0;
}

int msq_softmax_cross_entropy_forward(float *loss, float *probs, const float *logits,
                                      const int32_t *labels, int n, int k, float label_smoothing) {
    if (!labels_valid(labels, n, k)) {
        *loss = NAN;
        return -1;
    }
    /* Rows in parallel, their losses summed afterwards in row order: the same total as the
       reference at every thread count. */
    double *row_loss = malloc((size_t)n * sizeof(double));
    if (!row_loss)
        return msq_softmax_cross_entropy_forward_ref(loss, probs, logits, labels, n, k, label_smoothing);
    #pragma omp parallel for schedule(static) if ((long)n * k > LOSS_PARALLEL_MIN)
    for (int i = 0; i < n; i++)
        row_loss[i] = ce_row(probs + (size_t)i * k, logits + (size_t)i * k, labels[i], k, label_smoothing);
    double total = 0.0;
    for (int i = 0; i < n; i++) total += row_loss[i];
    free(row_loss);
    *loss = (float)(total / n);
    return 0;
}

/* A label outside [0, k) only ever meets the comparison, so it cannot write out of bounds. */
static void ce_backward_row(float *dl, const float *p, int32_t label, int k, float eps, float f) {
    float off = eps / (float)k;
    float on = (1.0f - eps) + off;
    for (int j = 0; j < k; j++) dl[j] += (p[j] - (j == label ? on : off)) * f;
}

void msq_softmax_cross_entropy_backward_ref(float *dlogits, const float *probs, const int32_t *labels,
                                            int n, int k, float label_smoothing, float scale) {
    float f = scale / (float)n;
    for (int i = 0; i < n; i++)
        ce_backward_row(dlogits + (size_t)i * k, probs + (size_t)i * k, labels[i], k, label_smoothing, f);
}

void msq_softmax_cross_entropy_backward(float *dlogits, const float *probs, const int32_t *labels,
                                        int n, int k, float label_smoothing, float scale) {
    float f = scale / (float)n;
    #pragma omp parallel for schedule(static) if ((long)n * k > LOSS_PARALLEL_MIN)
    for (int i = 0; i < n; i++)
        ce_backward_row(dlogits + (size_t)i * k, probs + (size_t)i * k, labels[i], k, label_smoothing, f);
}
