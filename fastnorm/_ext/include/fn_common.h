/* Shared definitions for fastnorm's C kernels.
 *
 * Every kernel family is one template header (fn_<family>_impl.h) compiled into
 * two translation units: src/<family>_base.c (baseline x86-64, i.e. SSE2) and
 * src/<family>_avx2.c (after `#pragma GCC target("avx2,fma")`).  The template
 * names its functions with FN_NAME(stem, suffix), which appends the ISA name, so
 * both variants live in one extension module and the Cython glue picks one table
 * at import time (FASTNORM_ISA=base|avx2 forces one).
 */
#ifndef FN_COMMON_H
#define FN_COMMON_H

#include <stdint.h>
#include <stddef.h>

#define FN_CAT3_(a, b, c) a##_##b##_##c
#define FN_CAT3(a, b, c) FN_CAT3_(a, b, c)
/* FN_NAME(fn_act_forward, f32) -> fn_act_forward_f32_<isa> */
#define FN_NAME(stem, suffix) FN_CAT3(stem, suffix, FN_ISA)

/* An AVX2+FMA variant is built only where GCC/Clang can target x86-64 ISA
 * extensions per function; elsewhere the "avx2" names alias the baseline code. */
#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#define FN_HAVE_AVX2_VARIANT 1
#else
#define FN_HAVE_AVX2_VARIANT 0
#endif

static inline int fn_cpu_has_avx2_fma(void)
{
#if FN_HAVE_AVX2_VARIANT
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    return 0;
#endif
}

#endif /* FN_COMMON_H */
