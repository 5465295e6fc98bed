/* AVX2+FMA variant of the activations kernels and its kernel table. */
#define FN_ISA avx2
#define FN_ISA_LEVEL 1
#define FN_FAMILY_IMPL "fn_activations_impl.h"
#include "fn_instantiate.h"
#include "fn_activations.h"

FN_DEFINE_ACT_KERNELS(FN_ISA, FN_IMPL)
