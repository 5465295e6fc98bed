/* AVX2+FMA variant of the activations kernels with the exponentials of the staged maps split
 * over three loops (FN_ACT_SPLIT_EXP, fn_activations_impl.h): the AVX2 table on CPUs that
 * run 256-bit instructions as two 128-bit halves (activations.pyx).  The same results. */
#define FN_ISA avx2_split
#define FN_ISA_LEVEL 1
#define FN_ACT_SPLIT_EXP 1
#define FN_FAMILY_IMPL "fn_activations_impl.h"
#include "fn_instantiate.h"
#include "fn_activations.h"

FN_DEFINE_ACT_KERNELS(FN_ISA, FN_IMPL)
