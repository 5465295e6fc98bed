/* AVX2+FMA variant of the normalization kernels (selected at import when the CPU has both). */
#include "fn_common.h"
#if FN_HAVE_AVX2_VARIANT
#pragma GCC target("avx2,fma")
#define FN_ISA avx2
#define FN_REAL 32
#include "fn_normalization_impl.h"
#undef FN_REAL
#define FN_REAL 64
#include "fn_normalization_impl.h"
#else
#include "fn_normalization.h"
void fn_norm_stats_runs_f32_avx2(const float *x, int64_t A, int64_t C, int64_t B, int64_t u0, int64_t u1, double *mean, double *m2)
{ fn_norm_stats_runs_f32_base(x, A, C, B, u0, u1, mean, m2); }
void fn_norm_stats_cols_f32_avx2(const float *x, int64_t rows, int64_t W, const double *shift, double *s1, double *s2)
{ fn_norm_stats_cols_f32_base(x, rows, W, shift, s1, s2); }
void fn_norm_dual_runs_f32_avx2(const float *dy, const float *x, int64_t A, int64_t C, int64_t B, int64_t u0, int64_t u1, const double *center, double *s1, double *s2)
{ fn_norm_dual_runs_f32_base(dy, x, A, C, B, u0, u1, center, s1, s2); }
void fn_norm_dual_cols_f32_avx2(const float *dy, const float *x, int64_t rows, int64_t W, const double *center, double *s1, double *s2)
{ fn_norm_dual_cols_f32_base(dy, x, rows, W, center, s1, s2); }
void fn_norm_affine_f32_avx2(const float *x, float *y, int64_t A, int64_t C, int64_t B, int64_t u0, int64_t u1, const float *mhi, const float *mlo, const float *scale, const float *shift)
{ fn_norm_affine_f32_base(x, y, A, C, B, u0, u1, mhi, mlo, scale, shift); }
void fn_norm_affine_grad_f32_avx2(const float *dy, const float *x, float *gx, int64_t A, int64_t C, int64_t B, int64_t u0, int64_t u1, const float *k1, const float *mhi, const float *k2, const float *k3)
{ fn_norm_affine_grad_f32_base(dy, x, gx, A, C, B, u0, u1, k1, mhi, k2, k3); }
void fn_norm_rows_forward_f32_avx2(const float *x, float *y, int64_t K, int64_t r0, int64_t r1, const float *w, const float *b, double eps, int rms, float *mean, float *rstd)
{ fn_norm_rows_forward_f32_base(x, y, K, r0, r1, w, b, eps, rms, mean, rstd); }
void fn_norm_rows_backward_f32_avx2(const float *dy, const float *x, float *gx, int64_t K, int64_t r0, int64_t r1, const float *w, const float *mean, const float *rstd, int rms, double *gw, double *gb)
{ fn_norm_rows_backward_f32_base(dy, x, gx, K, r0, r1, w, mean, rstd, rms, gw, gb); }
void fn_norm_stats_runs_f64_avx2(const double *x, int64_t A, int64_t C, int64_t B, int64_t u0, int64_t u1, double *mean, double *m2)
{ fn_norm_stats_runs_f64_base(x, A, C, B, u0, u1, mean, m2); }
void fn_norm_stats_cols_f64_avx2(const double *x, int64_t rows, int64_t W, const double *shift, double *s1, double *s2)
{ fn_norm_stats_cols_f64_base(x, rows, W, shift, s1, s2); }
void fn_norm_dual_runs_f64_avx2(const double *dy, const double *x, int64_t A, int64_t C, int64_t B, int64_t u0, int64_t u1, const double *center, double *s1, double *s2)
{ fn_norm_dual_runs_f64_base(dy, x, A, C, B, u0, u1, center, s1, s2); }
void fn_norm_dual_cols_f64_avx2(const double *dy, const double *x, int64_t rows, int64_t W, const double *center, double *s1, double *s2)
{ fn_norm_dual_cols_f64_base(dy, x, rows, W, center, s1, s2); }
void fn_norm_affine_f64_avx2(const double *x, double *y, int64_t A, int64_t C, int64_t B, int64_t u0, int64_t u1, const double *mhi, const double *mlo, const double *scale, const double *shift)
{ fn_norm_affine_f64_base(x, y, A, C, B, u0, u1, mhi, mlo, scale, shift); }
void fn_norm_affine_grad_f64_avx2(const double *dy, const double *x, double *gx, int64_t A, int64_t C, int64_t B, int64_t u0, int64_t u1, const double *k1, const double *mhi, const double *k2, const double *k3)
{ fn_norm_affine_grad_f64_base(dy, x, gx, A, C, B, u0, u1, k1, mhi, k2, k3); }
void fn_norm_rows_forward_f64_avx2(const double *x, double *y, int64_t K, int64_t r0, int64_t r1, const double *w, const double *b, double eps, int rms, double *mean, double *rstd)
{ fn_norm_rows_forward_f64_base(x, y, K, r0, r1, w, b, eps, rms, mean, rstd); }
void fn_norm_rows_backward_f64_avx2(const double *dy, const double *x, double *gx, int64_t K, int64_t r0, int64_t r1, const double *w, const double *mean, const double *rstd, int rms, double *gw, double *gb)
{ fn_norm_rows_backward_f64_base(dy, x, gx, K, r0, r1, w, mean, rstd, rms, gw, gb); }
#endif
