/* Instantiates one kernel family for one ISA variant.  A src/<family>_<isa>.c file
 * defines, before including this header:
 *
 *   FN_ISA          base | avx2 | avx512   (suffix of every function name, FN_NAME)
 *   FN_ISA_LEVEL    0 | 1 | 2              (FN_ISA_BASE, FN_ISA_AVX2, FN_ISA_AVX512)
 *   FN_FAMILY_IMPL  the family's template header, as a string
 *
 * and afterwards defines its kernel table from FN_IMPL, the variant whose functions
 * the table points at: FN_ISA itself, or `base` where this compiler cannot target
 * x86 extensions (FN_HAVE_X86_VARIANTS == 0), so every table always exists.
 */
#include "fn_common.h"

#if FN_ISA_LEVEL == FN_ISA_BASE || FN_HAVE_X86_VARIANTS
#if FN_ISA_LEVEL == FN_ISA_AVX2
#pragma GCC target("avx2,fma")
#elif FN_ISA_LEVEL == FN_ISA_AVX512
/* 512-bit vectors: gcc's generic tuning would otherwise be free to stay at 256. */
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,prefer-vector-width=512")
#endif
#define FN_IMPL FN_ISA
#define FN_REAL 32
#include FN_FAMILY_IMPL
#undef FN_REAL
#define FN_REAL 64
#include FN_FAMILY_IMPL
#undef FN_REAL
#else
#define FN_IMPL base
#endif
