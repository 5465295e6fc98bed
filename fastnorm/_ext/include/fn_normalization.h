/* Normalization kernels (batch / layer / group / instance / RMS norm): entry points of every
 * ISA variant and their tables.  Semantics and the numerics are described in fn_normalization_impl.h.
 *
 * Geometry.  Every per-channel kernel sees x as a C-contiguous (P, A, C, B) array and works
 * on "units" (p, c): the A runs of B contiguous elements at x + ((p*A + a)*C + c)*B.
 * Batch norm NCHW is (1, N, C, H*W), channels-last (1, N*H*W, C, 1); group norm NCHW is
 * (1, 1, N*G, C/G*H*W) for its statistics and (N, 1, C, H*W) for the affine pass; group
 * norm channels-last (N, H*W, C, 1).  Per-unit parameters are indexed p*C + c.
 * Row kernels see x as (M, K) and normalize each row (layer norm, RMS norm); column kernels
 * normalize the rows of a Fortran-order x, read as its transpose (K, M).
 */
#ifndef FN_NORMALIZATION_H
#define FN_NORMALIZATION_H
#include <math.h>
#include "fn_common.h"

/* Channels-last rows wider than this go four at a time through the output passes
 * (fn_normalization_impl.h, FOUR_ROWS_AT); normalization.pyx places the gradient of such rows
 * that are whole pages apart from its inputs (_whole_page_rows). */
#define FN_NORM_CHANNEL_ROW_BYTES 4096

/* The center of a unit's one-pass sums (fn_normalization_impl.h): its first element, or 0
 * where that is +-inf or NaN.  Centered on an infinity, every difference is NaN or an
 * infinity of the other sign and the mean inf - inf = NaN, where np.mean (and an infinity
 * anywhere else in the unit) gives the infinity; a NaN reaches the sums either way. */
static inline double fn_sums_center(double first)
{
    return isfinite(first) ? first : 0.0;
}

/* The shift of the output passes' y = (x - mhi) * scale + shift (fn_normalization_impl.h):
 * bias - (mean - mhi) * scale in double, mhi the mean rounded to the compute type and scale
 * the scale as the pass uses it (rounded to the compute type), so that (x - mhi) * scale +
 * shift is (x - mean) * scale + bias up to the roundings.  The product is skipped where
 * mean - mhi is 0 or the scale infinite (variance + eps == 0, an infinite weight): the
 * pass then gives what (x - mean) * scale + bias gives, +-inf away from the mean (except
 * at x == mhi exactly, NaN, where the mean is not a value of the compute type), and not
 * inf - inf.  The scalar form, for the kernels' per-unit loops; the per-channel loops of
 * batch norm and channels-last group norm compute the same vectorized (affine_params in
 * fn_normalization_impl.h, contraction off there); normalization._affine_params computes
 * the same in NumPy, and all must round alike: the product goes through a
 * volatile so that no compiler fuses it with the subtraction (gcc contracts a * b + c into
 * an FMA where the target has one, as the AVX2 and AVX-512 variants do, and NumPy rounds
 * the product first; no test can see the difference, which survives the rounding of the
 * shift to float32 about once in 2^29 channels, but it was there: vfnmadd231sd). */
static inline double fn_affine_shift(double mean, double mhi, double scale, double bias)
{
    const double lo = mean - mhi;
    if (lo == 0.0 || isinf(scale))
        return bias;
    volatile double product = lo * scale;
    return bias - product;
}

/* A running statistic's update, (1 - f) * r + f * s in float64, rounded as NumPy's
 * elementwise (1.0 - f) * r + f * s rounds it (normalization._update_running): each product
 * rounded on its own, as above, wherever a compiler could contract them into a multiply-add
 * (an FMA target, or -march in CFLAGS). */
static inline double fn_running_step(double r, double f, double s)
{
    volatile double kept = (1.0 - f) * r;
    volatile double added = f * s;
    return kept + added;
}

#define FN_DECLARE_NORM_T(T, suf, isa) \
    void fn_norm_stats_runs_##suf##_##isa(const T *x, int64_t A, int64_t C, int64_t B, \
        int64_t u0, int64_t u1, double *mean, double *m2); \
    void fn_norm_stats_cols_##suf##_##isa(const T *x, int64_t rows, int64_t W, \
        const double *shift, double *s1, double *s2, int fetch); \
    void fn_norm_dual_runs_##suf##_##isa(const T *dy, const T *x, int64_t A, int64_t C, int64_t B, \
        int64_t u0, int64_t u1, const double *center, double *s1, double *s2); \
    void fn_norm_dual_cols_##suf##_##isa(const T *dy, const T *x, int64_t rows, int64_t W, \
        const double *center, double *s1, double *s2, int fetch, const T *rw); \
    void fn_norm_affine_##suf##_##isa(const T *x, T *y, int64_t A, int64_t C, int64_t B, \
        int64_t u0, int64_t u1, const T *mhi, const T *scale, const T *shift, int stream); \
    void fn_norm_affine_grad_##suf##_##isa(const T *dy, const T *x, T *gx, int64_t A, int64_t C, \
        int64_t B, int64_t u0, int64_t u1, const T *k1, const T *mhi, const T *k2, const T *k3, \
        int stream); \
    void fn_norm_rows_forward_##suf##_##isa(const T *x, T *y, int64_t K, int64_t r0, int64_t r1, \
        const T *w, const T *b, double eps, int rms, T *mean, T *rstd, int stream); \
    void fn_norm_rows_backward_##suf##_##isa(const T *dy, const T *x, T *gx, int64_t K, int64_t r0, \
        int64_t r1, const T *w, const T *mean, const T *rstd, int rms, double *gw, double *gb, \
        int param_pass, int stream); \
    void fn_norm_cols_coefs_##suf##_##isa(int64_t M, int64_t K, const double *mean_d, \
        const double *m2, double eps, int rms, T *mean, T *rstd, T *h, T *s, T *o); \
    void fn_norm_cols_forward_##suf##_##isa(const T *xt, T *yt, int64_t M, int64_t k0, int64_t k1, \
        const T *h, const T *s, const T *o, const T *w, const T *b, int stream); \
    void fn_norm_cols_grad_coefs_##suf##_##isa(int64_t M, int64_t K, const T *rstd, \
        const double *a1, const double *a2, int rms, T *s, T *k2, T *k3); \
    void fn_norm_cols_backward_##suf##_##isa(const T *dyt, const T *xt, T *gxt, int64_t M, \
        int64_t k0, int64_t k1, const T *w, const T *mu, const T *s, const T *k2, const T *k3, \
        const T *rstd, double *gw, double *gb, int stream); \
    void fn_norm_group_forward_##suf##_##isa(const T *x, T *y, int64_t G, int64_t cg, int64_t hw, \
        int64_t u0, int64_t u1, const T *w, const T *b, double eps, double *mean, double *m2, \
        int stream); \
    void fn_norm_group_backward_##suf##_##isa(const T *dy, const T *x, T *gx, int64_t G, int64_t cg, \
        int64_t hw, int64_t u0, int64_t u1, const T *w, const double *center, const T *mhi, \
        const double *rstd, double *s1, double *s2, int stream); \
    void fn_norm_bn_channels_##suf##_##isa(int64_t C, int64_t n, int training, int running, \
        double f, double eps, double *mean_d, const double *m2, T *rm, T *rv, const T *w, \
        const T *b, T *mean_out, T *rstd_out, T *mhi, T *scale, T *shift); \
    void fn_norm_bn_backward_channels_##suf##_##isa(int64_t C, int64_t n, int training, \
        const T *w, const double *rstd_d, const double *s1, const double *s2, T *k1, T *k2, T *k3); \
    void fn_norm_channel_affine_##suf##_##isa(int64_t C, const double *mean, const double *rstd, \
        const T *w, const T *b, T *mhi, T *scale, T *shift); \
    int fn_norm_narrow_##suf##_##isa(int64_t K, const double *src, T *dst);

#define FN_DECLARE_NORM(isa) \
    FN_DECLARE_NORM_T(float, f32, isa) \
    FN_DECLARE_NORM_T(double, f64, isa) \
    void fn_norm_finish_moments_##isa(int64_t C, const double *shift, double n, double *s1, \
        double *s2);

FN_DECLARE_NORM(base)
FN_DECLARE_NORM(avx2)
FN_DECLARE_NORM(avx512)

#define FN_NORM_KERNEL_FIELDS(T, suf) \
    void (*stats_runs_##suf)(const T *, int64_t, int64_t, int64_t, int64_t, int64_t, double *, double *); \
    void (*stats_cols_##suf)(const T *, int64_t, int64_t, const double *, double *, double *, int); \
    void (*dual_runs_##suf)(const T *, const T *, int64_t, int64_t, int64_t, int64_t, int64_t, \
                            const double *, double *, double *); \
    void (*dual_cols_##suf)(const T *, const T *, int64_t, int64_t, const double *, double *, double *, int, \
                            const T *); \
    void (*affine_##suf)(const T *, T *, int64_t, int64_t, int64_t, int64_t, int64_t, \
                         const T *, const T *, const T *, int); \
    void (*affine_grad_##suf)(const T *, const T *, T *, int64_t, int64_t, int64_t, int64_t, int64_t, \
                              const T *, const T *, const T *, const T *, int); \
    void (*rows_forward_##suf)(const T *, T *, int64_t, int64_t, int64_t, const T *, const T *, \
                               double, int, T *, T *, int); \
    void (*rows_backward_##suf)(const T *, const T *, T *, int64_t, int64_t, int64_t, const T *, \
                                const T *, const T *, int, double *, double *, int, int); \
    void (*cols_coefs_##suf)(int64_t, int64_t, const double *, const double *, double, int, T *, T *, \
                             T *, T *, T *); \
    void (*cols_forward_##suf)(const T *, T *, int64_t, int64_t, int64_t, const T *, const T *, \
                               const T *, const T *, const T *, int); \
    void (*cols_grad_coefs_##suf)(int64_t, int64_t, const T *, const double *, const double *, int, \
                                  T *, T *, T *); \
    void (*cols_backward_##suf)(const T *, const T *, T *, int64_t, int64_t, int64_t, const T *, \
                                const T *, const T *, const T *, const T *, const T *, double *, \
                                double *, int); \
    void (*group_forward_##suf)(const T *, T *, int64_t, int64_t, int64_t, int64_t, int64_t, \
                                const T *, const T *, double, double *, double *, int); \
    void (*group_backward_##suf)(const T *, const T *, T *, int64_t, int64_t, int64_t, int64_t, \
                                 int64_t, const T *, const double *, const T *, const double *, \
                                 double *, double *, int); \
    void (*bn_channels_##suf)(int64_t, int64_t, int, int, double, double, double *, const double *, \
                              T *, T *, const T *, const T *, T *, T *, T *, T *, T *); \
    void (*bn_backward_channels_##suf)(int64_t, int64_t, int, const T *, const double *, \
                                       const double *, const double *, T *, T *, T *); \
    void (*channel_affine_##suf)(int64_t, const double *, const double *, const T *, const T *, \
                                 T *, T *, T *); \
    int (*narrow_##suf)(int64_t, const double *, T *);

typedef struct fn_norm_kernels {
    FN_NORM_KERNEL_FIELDS(float, f32)
    FN_NORM_KERNEL_FIELDS(double, f64)
    void (*finish_moments)(int64_t, const double *, double, double *, double *);
} fn_norm_kernels;

/* Indexed by FN_ISA_BASE / FN_ISA_AVX2 / FN_ISA_AVX512 (defined in normalization_base.c). */
extern const fn_norm_kernels *const fn_norm_kernels_by_isa[FN_ISA_COUNT];

/* The table of variant `isa`, pointing at the functions of variant `impl`. */
#define FN_NORM_KERNEL_INIT(suf, impl) \
    fn_norm_stats_runs_##suf##_##impl, fn_norm_stats_cols_##suf##_##impl, \
    fn_norm_dual_runs_##suf##_##impl, fn_norm_dual_cols_##suf##_##impl, \
    fn_norm_affine_##suf##_##impl, fn_norm_affine_grad_##suf##_##impl, \
    fn_norm_rows_forward_##suf##_##impl, fn_norm_rows_backward_##suf##_##impl, \
    fn_norm_cols_coefs_##suf##_##impl, fn_norm_cols_forward_##suf##_##impl, \
    fn_norm_cols_grad_coefs_##suf##_##impl, fn_norm_cols_backward_##suf##_##impl, \
    fn_norm_group_forward_##suf##_##impl, fn_norm_group_backward_##suf##_##impl, \
    fn_norm_bn_channels_##suf##_##impl, fn_norm_bn_backward_channels_##suf##_##impl, \
    fn_norm_channel_affine_##suf##_##impl, fn_norm_narrow_##suf##_##impl
#define FN_DEFINE_NORM_KERNELS(isa, impl) FN_DEFINE_NORM_KERNELS_(isa, impl)
#define FN_DEFINE_NORM_KERNELS_(isa, impl) \
    const fn_norm_kernels fn_norm_kernels_##isa = { \
        FN_NORM_KERNEL_INIT(f32, impl), FN_NORM_KERNEL_INIT(f64, impl), \
        fn_norm_finish_moments_##impl };
extern const fn_norm_kernels fn_norm_kernels_base, fn_norm_kernels_avx2, fn_norm_kernels_avx512;

#endif /* FN_NORMALIZATION_H */
