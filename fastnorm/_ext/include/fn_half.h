/* float16 <-> float32 conversion of whole arrays with the CPU's F16C instructions, for the
 * float16 inputs and results of every kernel family (which compute in float32).  NumPy 2.4's
 * casts between the two take 1.6-2.4 ns per element on AMD Zen 4 (relu of a (256, 1024)
 * float16 array spent 1.1 of its 1.8 ms in them); F16C converts 8 elements per instruction.
 * IEEE conversions, rounding to nearest even (not MXCSR's mode): the same values as NumPy's
 * casts, infinities and overflow to infinity included.  A signaling NaN comes out quiet
 * (NumPy keeps its payload as it is).  fn_float_to_half reports overflow and underflow (from
 * MXCSR's flags, which it leaves as it found them), so that the caller can warn as NumPy's
 * cast does.  Without F16C (no x86, no AVX state) there is no converter: fn_cpu_has_f16c()
 * is 0 and the callers keep NumPy's casts. */
#ifndef FN_HALF_H
#define FN_HALF_H

#include <string.h>
#include "fn_common.h"

/* What fn_float_to_half returns: the conditions its rounding raised. */
#define FN_HALF_OVERFLOW 1
#define FN_HALF_UNDERFLOW 2

#if FN_HAVE_X86_VARIANTS
#include <immintrin.h>

static inline int fn_cpu_has_f16c(void)
{
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d))
        return 0;
    const unsigned f16c = 1u << 29, osxsave = 1u << 27, avx = 1u << 28;
    if ((c & (f16c | osxsave | avx)) != (f16c | osxsave | avx))
        return 0;
    return (fn__xcr0() & 0x6) == 0x6;   /* the OS saves the YMM state */
}

/* The last 1-7 elements go through a zero-padded block: the same instruction converts
 * every element, and nothing is read or written past the arrays. */
__attribute__((target("avx,f16c")))
static void fn_half_to_float(const uint16_t *src, float *dst, int64_t n)
{
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i))));
    if (i < n) {
        uint16_t h[8] = {0};
        float f[8];
        memcpy(h, src + i, (size_t)(n - i) * sizeof *h);
        _mm256_storeu_ps(f, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)h)));
        memcpy(dst + i, f, (size_t)(n - i) * sizeof *f);
    }
}

__attribute__((target("avx,f16c")))
static int fn_float_to_half(const float *src, uint16_t *dst, int64_t n)
{
    const unsigned csr = _mm_getcsr();
    _mm_setcsr(csr & ~0x3fu);   /* the exception flags, cleared */
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(dst + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
    if (i < n) {
        float f[8] = {0};
        uint16_t h[8];
        memcpy(f, src + i, (size_t)(n - i) * sizeof *f);
        _mm_storeu_si128((__m128i *)h, _mm256_cvtps_ph(_mm256_loadu_ps(f), _MM_FROUND_TO_NEAREST_INT));
        memcpy(dst + i, h, (size_t)(n - i) * sizeof *h);
    }
    const unsigned raised = _mm_getcsr();
    _mm_setcsr(csr);
    return ((raised & 0x8u) ? FN_HALF_OVERFLOW : 0) | ((raised & 0x10u) ? FN_HALF_UNDERFLOW : 0);
}
#else
static inline int fn_cpu_has_f16c(void) { return 0; }
static void fn_half_to_float(const uint16_t *src, float *dst, int64_t n) { (void)src; (void)dst; (void)n; }
static int fn_float_to_half(const float *src, uint16_t *dst, int64_t n) { (void)src; (void)dst; (void)n; return 0; }
#endif

#endif
