/* AVX2+FMA variant of the dropout kernels (selected at import when the CPU has both).
 * The Philox generator is scalar in both variants (AVX2 has no 64x64->128 multiply);
 * this variant gains in the apply, pack and backward loops. */
#include "fn_common.h"
#if FN_HAVE_AVX2_VARIANT
#pragma GCC target("avx2,fma")
#define FN_ISA avx2
#define FN_REAL 32
#include "fn_dropout_impl.h"
#undef FN_REAL
#define FN_REAL 64
#include "fn_dropout_impl.h"
#else
#include "fn_dropout.h"
void fn_dropout_forward_f32_avx2(const float *x, float *y, uint8_t *mask, int64_t n, int64_t start,
                                 uint64_t key_lo, uint64_t key_hi, uint64_t offset,
                                 int32_t threshold, double scale)
{ fn_dropout_forward_f32_base(x, y, mask, n, start, key_lo, key_hi, offset, threshold, scale); }
void fn_dropout_forward_f64_avx2(const double *x, double *y, uint8_t *mask, int64_t n, int64_t start,
                                 uint64_t key_lo, uint64_t key_hi, uint64_t offset,
                                 int32_t threshold, double scale)
{ fn_dropout_forward_f64_base(x, y, mask, n, start, key_lo, key_hi, offset, threshold, scale); }
void fn_dropout_backward_f32_avx2(const float *g, const uint8_t *mask, float *gx, int64_t n, double scale)
{ fn_dropout_backward_f32_base(g, mask, gx, n, scale); }
void fn_dropout_backward_f64_avx2(const double *g, const uint8_t *mask, double *gx, int64_t n, double scale)
{ fn_dropout_backward_f64_base(g, mask, gx, n, scale); }
#endif
