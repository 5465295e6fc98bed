/* Baseline (SSE2) variant of the dropout kernels. */
#define FN_ISA base
#define FN_REAL 32
#include "fn_dropout_impl.h"
#undef FN_REAL
#define FN_REAL 64
#include "fn_dropout_impl.h"
