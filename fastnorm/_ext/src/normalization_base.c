/* Baseline (SSE2) variant of the normalization kernels and its kernel table. */
#define FN_ISA base
#define FN_ISA_LEVEL 0
#define FN_FAMILY_IMPL "fn_normalization_impl.h"
#include "fn_instantiate.h"
#include "fn_normalization.h"

FN_DEFINE_NORM_KERNELS(FN_ISA, FN_IMPL)

const fn_norm_kernels *const fn_norm_kernels_by_isa[FN_ISA_COUNT] = {
    &fn_norm_kernels_base, &fn_norm_kernels_avx2, &fn_norm_kernels_avx512 };
