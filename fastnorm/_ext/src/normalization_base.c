/* Baseline (SSE2) variant of the normalization kernels. */
#define FN_ISA base
#define FN_REAL 32
#include "fn_normalization_impl.h"
#undef FN_REAL
#define FN_REAL 64
#include "fn_normalization_impl.h"
