/* Instantiates one kernel family for one ISA variant.  A src/<family>_<isa>.c file
 * defines, before including this header:
 *
 *   FN_ISA          base | avx2 | avx512 | avx2_split   (suffix of every function name, FN_NAME;
 *                   avx2_split: the activations' AVX2 table with FN_ACT_SPLIT_EXP)
 *   FN_ISA_LEVEL    0 | 1 | 2              (FN_ISA_BASE, FN_ISA_AVX2, FN_ISA_AVX512)
 *   FN_FAMILY_IMPL  the family's template header, as a string
 *
 * and afterwards defines its kernel table from FN_IMPL, the variant whose functions
 * the table points at: FN_ISA itself, or `base` where this compiler cannot target
 * x86 extensions (FN_HAVE_X86_VARIANTS == 0), so every table always exists.
 */
#include "fn_common.h"

/* What the variant's code may use, for the templates' #if's: FN_TARGET_AVX2 (AVX2 and FMA)
 * and FN_TARGET_AVX512 (F, VL, BW and DQ).  Not __AVX2__ and the like: clang's target
 * attribute below does not define them. */
#define FN_TARGET_AVX2 (FN_HAVE_X86_VARIANTS && FN_ISA_LEVEL >= FN_ISA_AVX2)
#define FN_TARGET_AVX512 (FN_HAVE_X86_VARIANTS && FN_ISA_LEVEL >= FN_ISA_AVX512)

/* clang ignores "#pragma GCC target" (it compiled the AVX2 and AVX-512 variants as
 * baseline code, under their names): it gives the variant's functions the target attribute
 * through "#pragma clang attribute" instead.  That attribute would reach the functions the
 * system headers declare as well, so they are included before it. */
#if defined(__clang__) && FN_TARGET_AVX2
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#define FN_CLANG_TARGET 1
#else
#define FN_CLANG_TARGET 0
#endif

#if FN_ISA_LEVEL == FN_ISA_BASE || FN_HAVE_X86_VARIANTS
#if FN_CLANG_TARGET && FN_ISA_LEVEL == FN_ISA_AVX2
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#elif FN_CLANG_TARGET
#pragma clang attribute push(__attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma"))), apply_to = function)
#elif FN_ISA_LEVEL == FN_ISA_AVX2
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
#if FN_CLANG_TARGET
#pragma clang attribute pop
#endif
#else
#define FN_IMPL base
#endif
