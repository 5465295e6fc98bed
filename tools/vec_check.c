/* Vectorization and speed check for fastnorm/_ext/include/fn_math.h.
 *
 * Build exactly as the package builds its kernels, once per ISA variant:
 *
 *   F="-O3 -fno-math-errno -fno-trapping-math -fopenmp-simd"
 *   gcc $F -fopt-info-vec-optimized -fopt-info-vec-missed tools/vec_check.c -lm -o /tmp/vec_base 2>&1 | grep vec_check.c
 *   gcc $F -DUSE_AVX2 -fopt-info-vec-optimized tools/vec_check.c -lm -o /tmp/vec_avx2 2>&1 | grep vec_check.c
 *   objdump -d --no-show-raw-insn /tmp/vec_avx2 | less     # ymm, vfmadd, no calls in k_* loops
 *   /tmp/vec_base; /tmp/vec_avx2                            # Gelem/s, 1<<24 elements, best of 7
 *
 * USE_AVX2 starts the translation unit with `#pragma GCC target("avx2,fma")`,
 * as fastnorm/_ext/src/<family>_avx2.c does.  Each loop is its own noinline
 * function k_<name> so that -fopt-info lines and the disassembly map to one
 * kernel.  main() also checks that every loop's output is bit-identical to the
 * scalar function (vectorization must not change results).
 */
#ifdef USE_AVX2
#pragma GCC target("avx2,fma")
#endif
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "../fastnorm/_ext/include/fn_math.h"

/* the normal tail alone (its second output, e^{-x^2/2}, unused: the compiler drops it) */
static inline float fn_normal_tailf_only(float x) { float gauss; return fn_normal_tailf(x, &gauss); }

#define KERNEL(T, name, EXPR)                                                   \
    __attribute__((noinline)) void k_##name(const T *restrict x, T *restrict y, int64_t n) \
    {                                                                           \
        _Pragma("omp simd")                                                     \
        for (int64_t i = 0; i < n; ++i) { const T v = x[i]; y[i] = (EXPR); }   \
    }

/* float */
KERNEL(float, expf, fn_expf(v))
KERNEL(float, expm1f, fn_expm1f(v))
KERNEL(float, log1pf, fn_log1pf(v))
KERNEL(float, tanhf, fn_tanhf(v))
KERNEL(float, normal_tailf, fn_normal_tailf_only(v))
KERNEL(float, sigmoidf, 1.0f / (1.0f + fn_expf(-v)))
KERNEL(float, geluf, v < 0.0f ? v * fn_normal_tailf_only(v) : v - v * fn_normal_tailf_only(v))
KERNEL(float, softplusf, fn_log1pf(fn_expf(v)))
KERNEL(float, eluf, v > 0.0f ? v : fn_expm1_negf(v))
/* double */
KERNEL(double, exp, fn_exp(v))
KERNEL(double, expm1, fn_expm1(v))
KERNEL(double, log1p, fn_log1p(v))
KERNEL(double, tanh, fn_tanh(v))
KERNEL(double, erfc, fn_erfc(v))
KERNEL(double, sigmoid, 1.0 / (1.0 + fn_exp(-v)))
KERNEL(double, gelu, v * 0.5 * fn_erfc(-v * 0.70710678118654752))
KERNEL(double, softplus, fn_log1p(fn_exp(v)))
KERNEL(double, elu, v > 0.0 ? v : fn_expm1(v))

/* scalar references: the expression in a noinline function of one element,
 * so the calling loop cannot be vectorized */
#define SCALAR(T, name, EXPR)                                                   \
    __attribute__((noinline)) static T e_##name(T v) { return (EXPR); }        \
    __attribute__((noinline)) void s_##name(const T *x, T *y, int64_t n)       \
    {                                                                           \
        for (int64_t i = 0; i < n; ++i) y[i] = e_##name(x[i]);                  \
    }
SCALAR(float, expf, fn_expf(v))
SCALAR(float, expm1f, fn_expm1f(v))
SCALAR(float, log1pf, fn_log1pf(v))
SCALAR(float, tanhf, fn_tanhf(v))
SCALAR(float, normal_tailf, fn_normal_tailf_only(v))
SCALAR(float, sigmoidf, 1.0f / (1.0f + fn_expf(-v)))
SCALAR(float, geluf, v < 0.0f ? v * fn_normal_tailf_only(v) : v - v * fn_normal_tailf_only(v))
SCALAR(float, softplusf, fn_log1pf(fn_expf(v)))
SCALAR(float, eluf, v > 0.0f ? v : fn_expm1_negf(v))
SCALAR(double, exp, fn_exp(v))
SCALAR(double, expm1, fn_expm1(v))
SCALAR(double, log1p, fn_log1p(v))
SCALAR(double, tanh, fn_tanh(v))
SCALAR(double, erfc, fn_erfc(v))
SCALAR(double, sigmoid, 1.0 / (1.0 + fn_exp(-v)))
SCALAR(double, gelu, v * 0.5 * fn_erfc(-v * 0.70710678118654752))
SCALAR(double, softplus, fn_log1p(fn_exp(v)))
SCALAR(double, elu, v > 0.0 ? v : fn_expm1(v))

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

typedef void (*kf_t)(const float *, float *, int64_t);
typedef void (*kd_t)(const double *, double *, int64_t);

static int bad = 0;

static void run_f(const char *name, kf_t k, kf_t s, const float *x, float *y, float *ys, int64_t n, int reps)
{
    double best = 1e30;
    for (int r = 0; r < reps; ++r) { double t = now(); k(x, y, n); t = now() - t; if (t < best) best = t; }
    s(x, ys, n);
    int64_t diff = 0;
    for (int64_t i = 0; i < n; ++i) diff += memcmp(&y[i], &ys[i], sizeof *y) != 0 && !(isnan(y[i]) && isnan(ys[i]));
    bad += diff != 0;
    printf("  %-10s %6.3f Gelem/s  %s\n", name, n / best * 1e-9, diff ? "MISMATCH vs scalar" : "bit-identical to scalar");
}

static void run_d(const char *name, kd_t k, kd_t s, const double *x, double *y, double *ys, int64_t n, int reps)
{
    double best = 1e30;
    for (int r = 0; r < reps; ++r) { double t = now(); k(x, y, n); t = now() - t; if (t < best) best = t; }
    s(x, ys, n);
    int64_t diff = 0;
    for (int64_t i = 0; i < n; ++i) diff += memcmp(&y[i], &ys[i], sizeof *y) != 0 && !(isnan(y[i]) && isnan(ys[i]));
    bad += diff != 0;
    printf("  %-10s %6.3f Gelem/s  %s\n", name, n / best * 1e-9, diff ? "MISMATCH vs scalar" : "bit-identical to scalar");
}

int main(int argc, char **argv)
{
    const int64_t n = 1 << 24;
    const int reps = argc > 1 ? atoi(argv[1]) : 7;
    float *xf = malloc(n * sizeof *xf), *yf = malloc(n * sizeof *yf), *sf = malloc(n * sizeof *sf);
    double *xd = malloc(n * sizeof *xd), *yd = malloc(n * sizeof *yd), *sd = malloc(n * sizeof *sd);
    uint64_t st = 12345;
    for (int64_t i = 0; i < n; ++i) {          /* activations' inputs: mostly N(0, 3), some wide */
        st = st * 6364136223846793005ull + 1442695040888963407ull;
        const double u = (double)(st >> 11) * 0x1p-53;
        const double w = (i % 16 == 0) ? (u - 0.5) * 400.0 : (u - 0.5) * 12.0;
        xf[i] = (float)w; xd[i] = w;
    }
    memset(yf, 0, n * sizeof *yf); memset(yd, 0, n * sizeof *yd);
#ifdef USE_AVX2
    printf("AVX2+FMA build, n = %lld, best of %d\n", (long long)n, reps);
#else
    printf("baseline (SSE2) build, n = %lld, best of %d\n", (long long)n, reps);
#endif
    printf("float:\n");
#define RF(nm) run_f(#nm, k_##nm, s_##nm, xf, yf, sf, n, reps)
    RF(expf); RF(expm1f); RF(log1pf); RF(tanhf); RF(normal_tailf);
    RF(sigmoidf); RF(geluf); RF(softplusf); RF(eluf);
    printf("double:\n");
#define RD(nm) run_d(#nm, k_##nm, s_##nm, xd, yd, sd, n, reps)
    RD(exp); RD(expm1); RD(log1p); RD(tanh); RD(erfc);
    RD(sigmoid); RD(gelu); RD(softplus); RD(elu);
    return bad != 0;
}
