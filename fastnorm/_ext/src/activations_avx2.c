/* AVX2+FMA variant of the activation kernels (selected at import when the CPU has both). */
#include "fn_common.h"
#if FN_HAVE_AVX2_VARIANT
#pragma GCC target("avx2,fma")
#define FN_ISA avx2
#define FN_REAL 32
#include "fn_activations_impl.h"
#undef FN_REAL
#define FN_REAL 64
#include "fn_activations_impl.h"
#else
#include "fn_activations.h"
void fn_act_forward_f32_avx2(int op, const float *x, float *y, int64_t n, double a, double b)
{ fn_act_forward_f32_base(op, x, y, n, a, b); }
void fn_act_forward_f64_avx2(int op, const double *x, double *y, int64_t n, double a, double b)
{ fn_act_forward_f64_base(op, x, y, n, a, b); }
void fn_act_backward_f32_avx2(int op, const float *g, const float *s, float *gx, int64_t n, double a, double b)
{ fn_act_backward_f32_base(op, g, s, gx, n, a, b); }
void fn_act_backward_f64_avx2(int op, const double *g, const double *s, double *gx, int64_t n, double a, double b)
{ fn_act_backward_f64_base(op, g, s, gx, n, a, b); }
#endif
