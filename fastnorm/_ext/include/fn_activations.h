/* Elementwise activation kernels: op codes, the entry points of every ISA variant and
 * their tables.
 *
 * forward:  y[i] = f(x[i])                      (x and y may be the same buffer)
 * backward: gx[i] = g[i] * f'(s[i])             s = saved forward input, or the
 *                                               forward output for sigmoid/tanh
 * a, b are the op's parameters (see fn_activations_impl.h); unused ones are ignored.
 * stream != 0 writes the result with non-temporal stores (fn_stream.h; same values).
 */
#ifndef FN_ACTIVATIONS_H
#define FN_ACTIVATIONS_H
#include "fn_common.h"

enum fn_act_op {
    FN_ACT_RELU = 0,
    FN_ACT_RELU6,
    FN_ACT_LEAKY_RELU,   /* a = negative_slope */
    FN_ACT_ELU,          /* a = alpha */
    FN_ACT_SELU,
    FN_ACT_CELU,         /* a = alpha (non-zero) */
    FN_ACT_GELU,         /* exact, erf-based */
    FN_ACT_GELU_TANH,
    FN_ACT_SILU,
    FN_ACT_SOFTPLUS,     /* a = beta (non-zero), b = threshold */
    FN_ACT_MISH,
    FN_ACT_SIGMOID,      /* backward takes the forward output */
    FN_ACT_TANH,         /* backward takes the forward output */
    FN_ACT_HARDSIGMOID,
    FN_ACT_HARDSWISH,
    FN_ACT_SOFTSIGN,
    FN_ACT_COUNT
};

#define FN_DECLARE_ACT(isa) \
    void fn_act_forward_f32_##isa(int op, const float *x, float *y, int64_t n, double a, double b, int stream); \
    void fn_act_forward_f64_##isa(int op, const double *x, double *y, int64_t n, double a, double b, int stream); \
    void fn_act_backward_f32_##isa(int op, const float *g, const float *s, float *gx, int64_t n, double a, double b, int stream); \
    void fn_act_backward_f64_##isa(int op, const double *g, const double *s, double *gx, int64_t n, double a, double b, int stream);

FN_DECLARE_ACT(base)
FN_DECLARE_ACT(avx2)
FN_DECLARE_ACT(avx2_split)
FN_DECLARE_ACT(avx512)

typedef struct fn_act_kernels {
    void (*forward_f32)(int, const float *, float *, int64_t, double, double, int);
    void (*forward_f64)(int, const double *, double *, int64_t, double, double, int);
    void (*backward_f32)(int, const float *, const float *, float *, int64_t, double, double, int);
    void (*backward_f64)(int, const double *, const double *, double *, int64_t, double, double, int);
} fn_act_kernels;

/* Indexed by FN_ISA_BASE / FN_ISA_AVX2 / FN_ISA_AVX512 (defined in activations_base.c). */
extern const fn_act_kernels *const fn_act_kernels_by_isa[FN_ISA_COUNT];

/* The table of variant `isa`, pointing at the functions of variant `impl`. */
#define FN_DEFINE_ACT_KERNELS(isa, impl) FN_DEFINE_ACT_KERNELS_(isa, impl)
#define FN_DEFINE_ACT_KERNELS_(isa, impl) \
    const fn_act_kernels fn_act_kernels_##isa = { \
        fn_act_forward_f32_##impl, fn_act_forward_f64_##impl, \
        fn_act_backward_f32_##impl, fn_act_backward_f64_##impl };
extern const fn_act_kernels fn_act_kernels_base, fn_act_kernels_avx2, fn_act_kernels_avx512;
/* The AVX2 variant built with FN_ACT_SPLIT_EXP (src/activations_avx2_split.c): the same
 * results, taken where 256-bit instructions run as two halves. */
extern const fn_act_kernels fn_act_kernels_avx2_split;

#endif /* FN_ACTIVATIONS_H */
