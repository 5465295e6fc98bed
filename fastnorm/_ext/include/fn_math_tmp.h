/* TEMPORARY: libm stand-ins until fn_math.h lands. */
#ifndef FN_MATH_TMP_H
#define FN_MATH_TMP_H
#include <math.h>
static inline float fn_expf(float x) { return expf(x); }
static inline float fn_expm1f(float x) { return expm1f(x); }
static inline float fn_log1pf(float x) { return log1pf(x); }
static inline float fn_tanhf(float x) { return tanhf(x); }
static inline float fn_erfcf(float x) { return erfcf(x); }
static inline double fn_exp(double x) { return exp(x); }
static inline double fn_expm1(double x) { return expm1(x); }
static inline double fn_log1p(double x) { return log1p(x); }
static inline double fn_tanh(double x) { return tanh(x); }
static inline double fn_erfc(double x) { return erfc(x); }
#endif
