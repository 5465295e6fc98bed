/* Baseline (SSE2) variant of the activations kernels and its kernel table. */
#define FN_ISA base
#define FN_ISA_LEVEL 0
#define FN_FAMILY_IMPL "fn_activations_impl.h"
#include "fn_instantiate.h"
#include "fn_activations.h"

FN_DEFINE_ACT_KERNELS(FN_ISA, FN_IMPL)

const fn_act_kernels *const fn_act_kernels_by_isa[FN_ISA_COUNT] = {
    &fn_act_kernels_base, &fn_act_kernels_avx2, &fn_act_kernels_avx512 };
