/* activation_math.h — per-element activation functions shared by activation.c and the kernels
 * that fuse an activation (batchnorm.c), so a fused pass computes bit for bit what the separate
 * activation kernel does. Internal to CKernels. */
#ifndef MSQ_ACTIVATION_MATH_H
#define MSQ_ACTIVATION_MATH_H

/* x · relu6(x + 3) / 6 (PyTorch's Hardswish). */
static inline float hardswish_f(float x) {
    float r = x + 3.0f;
    r = r < 0.0f ? 0.0f : (r > 6.0f ? 6.0f : r);
    return x * r / 6.0f;
}

/* dy · hardswish'(x) as PyTorch's hardswish_backward: 0 below −3, x/3 + 1/2 up to 3, 1 above;
   written as selects so a zero derivative gives exactly 0 even for inf dy. */
static inline float hardswish_b(float dy, float x) {
    return x < -3.0f ? 0.0f : (x <= 3.0f ? dy * (x / 3.0f + 0.5f) : dy);
}

#endif
