/* Baseline (SSE2) variant of the dropout kernels and its kernel table. */
#define FN_ISA base
#define FN_ISA_LEVEL 0
#define FN_FAMILY_IMPL "fn_dropout_impl.h"
#include "fn_instantiate.h"
#include "fn_dropout.h"

FN_DEFINE_DROPOUT_KERNELS(FN_ISA, FN_IMPL)

const fn_dropout_kernels *const fn_dropout_kernels_by_isa[FN_ISA_COUNT] = {
    &fn_dropout_kernels_base, &fn_dropout_kernels_avx2, &fn_dropout_kernels_avx512 };
