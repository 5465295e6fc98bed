/* Baseline (SSE2) variant of the activation kernels. */
#define FN_ISA base
#define FN_REAL 32
#include "fn_activations_impl.h"
#undef FN_REAL
#define FN_REAL 64
#include "fn_activations_impl.h"
