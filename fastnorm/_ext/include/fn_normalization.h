/* Normalization kernels (batch / layer / group / instance / RMS norm): entry points of both
 * ISA variants.  Semantics and the numerics are described in fn_normalization_impl.h.
 *
 * Geometry.  Every per-channel kernel sees x as a C-contiguous (P, A, C, B) array and works
 * on "units" (p, c): the A runs of B contiguous elements at x + ((p*A + a)*C + c)*B.
 * Batch norm NCHW is (1, N, C, H*W), channels-last (1, N*H*W, C, 1); group norm NCHW is
 * (1, 1, N*G, C/G*H*W) for its statistics and (N, 1, C, H*W) for the affine pass; group
 * norm channels-last (N, H*W, C, 1).  Per-unit parameters are indexed p*C + c.
 * Row kernels see x as (M, K) and normalize each row (layer norm, RMS norm).
 */
#ifndef FN_NORMALIZATION_H
#define FN_NORMALIZATION_H
#include "fn_common.h"

#define FN_DECLARE_NORM_T(T, suf, isa) \
    void fn_norm_stats_runs_##suf##_##isa(const T *x, int64_t A, int64_t C, int64_t B, \
        int64_t u0, int64_t u1, double *mean, double *m2); \
    void fn_norm_stats_cols_##suf##_##isa(const T *x, int64_t rows, int64_t W, \
        const double *shift, double *s1, double *s2); \
    void fn_norm_dual_runs_##suf##_##isa(const T *dy, const T *x, int64_t A, int64_t C, int64_t B, \
        int64_t u0, int64_t u1, const double *center, double *s1, double *s2); \
    void fn_norm_dual_cols_##suf##_##isa(const T *dy, const T *x, int64_t rows, int64_t W, \
        const double *center, double *s1, double *s2); \
    void fn_norm_affine_##suf##_##isa(const T *x, T *y, int64_t A, int64_t C, int64_t B, \
        int64_t u0, int64_t u1, const T *mhi, const T *mlo, const T *scale, const T *shift); \
    void fn_norm_affine_grad_##suf##_##isa(const T *dy, const T *x, T *gx, int64_t A, int64_t C, \
        int64_t B, int64_t u0, int64_t u1, const T *k1, const T *mhi, const T *k2, const T *k3); \
    void fn_norm_rows_forward_##suf##_##isa(const T *x, T *y, int64_t K, int64_t r0, int64_t r1, \
        const T *w, const T *b, double eps, int rms, T *mean, T *rstd); \
    void fn_norm_rows_backward_##suf##_##isa(const T *dy, const T *x, T *gx, int64_t K, int64_t r0, \
        int64_t r1, const T *w, const T *mean, const T *rstd, int rms, double *gw, double *gb);

#define FN_DECLARE_NORM(isa) \
    FN_DECLARE_NORM_T(float, f32, isa) \
    FN_DECLARE_NORM_T(double, f64, isa)

FN_DECLARE_NORM(base)
FN_DECLARE_NORM(avx2)

#endif /* FN_NORMALIZATION_H */
