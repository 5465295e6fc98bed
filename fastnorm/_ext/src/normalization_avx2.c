/* AVX2+FMA variant of the normalization kernels and its kernel table. */
#define FN_ISA avx2
#define FN_ISA_LEVEL 1
#define FN_FAMILY_IMPL "fn_normalization_impl.h"
#include "fn_instantiate.h"
#include "fn_normalization.h"

FN_DEFINE_NORM_KERNELS(FN_ISA, FN_IMPL)
