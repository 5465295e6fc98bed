/* Template of the activation kernels; see fn_common.h for how it is instantiated.
 *
 * Every case is one `omp simd` loop over contiguous memory (two or three per block for the
 * MAP2 / MAP3 / MAP_GRAD2 / MAP_GRAD3 cases, see MAP_STAGES) whose body is branch-free
 * (selects, not jumps), so gcc vectorizes it with -fno-trapping-math; the switch sits
 * outside the loops.  `omp simd` rather than `restrict` because x and y may be the same
 * buffer (in-place), which carries no dependency between iterations (the staged maps read
 * a block in their first loops before their last writes it, and element i before
 * writing element i).
 *
 * Logistic terms use e = exp(-|z|), sigmoid(z) = z >= 0 ? 1/(1+e) : e/(1+e):
 * e never overflows, so results stay finite and keep full relative accuracy
 * far into the tails (sigmoid(-100) is a correct subnormal, not 0 or NaN).
 */
#include <math.h>
#include <string.h>
#include "fn_activations.h"
#include "fn_math.h"
#include "fn_stream.h"
#include "fn_real.h"

#define T FN_T
#define STREAM_CHUNK FN_STREAM_CHUNK(T)
/* The loops upwards of the maps of one loop (ONE_LOOP_FORWARD_MAPS, ONE_LOOP_BACKWARD_MAPS
 * below).  With stream set (n is then a whole number of chunks and y 64-byte aligned) each
 * chunk goes through a stack buffer to non-temporal stores (fn_stream.h); the chunk loop
 * sits inside each case so that gcc can keep the chunk in registers.  The loop written out
 * below (mish's backward) always stores plainly (its streamed form was not measured).
 *   Streamed, MAP's forward maps and relu's backward (but the AVX-512 variant's,
 * relu_grad_avx512, not measured with it) ask for their input's lines (relu's backward: g's)
 * FN_STREAM_AHEAD bytes ahead (FN_STREAM_PREFETCH); the other backward maps do not (PREFETCH
 * empty), as the measurement there did not support it (fn_stream.h), nor do the staged maps
 * (MAP_STAGES: compute-bound). */
#define MAP(EXPR) \
    do { \
        if (stream) { \
            for (int64_t i0 = 0; i0 < n; i0 += STREAM_CHUNK) { \
                _Alignas(FN_STREAM_ALIGN) T buf[STREAM_CHUNK]; \
                FN_STREAM_PREFETCH(x + i0, STREAM_CHUNK); \
                _Pragma("omp simd") for (int64_t i = 0; i < STREAM_CHUNK; ++i) { \
                    const T v = x[i0 + i]; buf[i] = (EXPR); } \
                FN_STREAM_COPY(y + i0, buf, STREAM_CHUNK); \
            } \
        } else { \
            _Pragma("omp simd") for (int64_t i = 0; i < n; ++i) { const T v = x[i]; y[i] = (EXPR); } \
        } \
    } while (0)
#define MAP_GRAD_BY(CHUNK, PREFETCH, EXPR) \
    do { \
        if (stream) { \
            for (int64_t i0 = 0; i0 < n; i0 += (CHUNK)) { \
                _Alignas(FN_STREAM_ALIGN) T buf[(CHUNK)]; \
                PREFETCH; \
                _Pragma("omp simd") for (int64_t i = 0; i < (CHUNK); ++i) { \
                    const T v = s[i0 + i]; const T d = g[i0 + i]; buf[i] = (EXPR); } \
                FN_STREAM_COPY(gx + i0, buf, (CHUNK)); \
            } \
        } else { \
            _Pragma("omp simd") for (int64_t i = 0; i < n; ++i) { \
                const T v = s[i]; const T d = g[i]; gx[i] = (EXPR); } \
        } \
    } while (0)
/* MAP's and MAP_GRAD_BY's loops from the last vector down to the first, one vector at a time (for
 * an output that trails its input, fn_trails in fn_stream.h); n a multiple of the step.
 * The same vector code per element as the loops upwards, so the same bits.
 *   Not shared with fn_normalization_impl.h's PIECE16 / MAP_DOWN, whose inner loop runs over
 * absolute indices (i from j0 to j0 + 16): gcc compiles the two index forms differently.  This
 * map written in that form, AMD Zen 4, AVX-512, (256, 1024), kernels through ctypes, the output
 * 48 and 128 bytes after x, both builds in one process: ELU, SELU, CELU float32 0.89-0.94x,
 * float64 0.86-0.91x, GELU float32 0.94x, hardsigmoid / hardswish float32 1.13-1.20x, relu6
 * float64 1.05-1.19x, the rest 0.96-1.04x; normalization's loops in this form changed the code
 * of its upward passes too (PIECE16 writes both directions).  So each family keeps its form. */
#define DESCENDING_STEP (FN_VEC_BYTES / (int64_t)sizeof(T))
/* clang unrolled the AVX-512 variant's one-vector inner loop and vectorized the outer one
 * with gathers and scatters: sigmoid's backward into an output 48 bytes after its input ran
 * 9.6x slower than gcc's.  Kept as a loop (FN_KEEP_LOOP) it is one vector.  Not in the other
 * variants, where clang vectorizes the inner loop as it is, and the base variant built with
 * -g left 14 maps scalar with it.  Nothing for gcc. */
#if FN_TARGET_AVX512
#define DESCENDING_KEEP FN_KEEP_LOOP
#else
#define DESCENDING_KEEP
#endif
#define DESCENDING(src, dst, DECL, EXPR) \
    for (int64_t i0 = n - DESCENDING_STEP; i0 >= 0; i0 -= DESCENDING_STEP) { \
        _Pragma("omp simd") DESCENDING_KEEP for (int64_t i = 0; i < DESCENDING_STEP; ++i) { \
            const T v = src[i0 + i]; DECL dst[i0 + i] = (EXPR); } \
    }
#define MAP_DESCENDING(EXPR) DESCENDING(x, y, , EXPR)
#define MAP_GRAD_DESCENDING(EXPR) DESCENDING(s, gx, GRAD_DECL, EXPR)   /* GRAD_DECL: below */
/* Staged maps for the logistic family: the exponential of a block of elements first (u,
 * STAGE, into a stack buffer), then the rest (EXPR, of v and u).  One loop body from x to y
 * is a chain of about 65 cycles (range reduction, polynomial, scaling, division, selects)
 * of ~30 vector operations; with several iterations in flight the waiting operations fill
 * the out-of-order window, and sigmoid ran at 15.6 cycles per 8 floats where its operations
 * need about 9 (Zen 3, AVX2; llvm-mca's znver3 model agrees).  Two loops with shorter chains
 * keep fewer operations waiting.  C harness, float32 sigmoid over 16K floats in cache, Zen 3:
 * 0.53 ns per element in one loop, 0.42-0.44 in two with blocks of 64-512 floats (1 KiB:
 * 0.43), 0.46 in three (reduction, exponential, logistic).
 *   Kept where the API measured a gain (the cases that use MAP2 / MAP_GRAD2: a division
 * after the exponential makes the second chain long; MAP3 / MAP_GRAD3 where the exponential's
 * argument is a polynomial of its own, GELU's tanh form).  In one loop stay GELU (its
 * rational part apart from its exponential: 0.91-0.96x), ELU (expm1 apart from one
 * multiplication: forward 0.85-0.93x) and mish's backward (see there).
 *   Blocks are the streamed stores' 512-byte chunks, results into a third stack buffer that
 * is then copied out (non-temporal stores when streaming, plain ones else), with loops of a
 * constant trip count; what is left after the whole chunks (never streamed) goes straight
 * to dst.
 * Until 2026-12-04 the plain branch took 1 KiB blocks of a variable trip count and stored
 * into dst: AMD Zen 4, AVX-512, (256, 1024) float32, 1 thread, kernels through the def
 * functions, the output at x's offset, 16 bytes before it or a quarter page after, against
 * that branch, two runs: sigmoid 1.08-1.13x, tanh 1.06-1.09x, silu 1.05-1.10x, mish
 * 1.08-1.10x, softplus 1.00-1.03x, GELU's tanh form 0.96-1.01x (2 threads 0.97-0.98x),
 * backward of softplus 1.06-1.11x, of GELU's tanh form 0.93-1.07x, of silu 0.99-1.03x;
 * float64 1.02-1.09x, (32, 128) 1.03-1.06x; streamed (4096, 4096) level.  An output 1-255
 * bytes after its input modulo 4 KiB, where a plain loop's stores stall the loads that
 * follow (the CPU compares the low 12 bits of addresses; relu 0.63-0.91x there), costs these
 * maps less now: at x's offset / 16 / 48 bytes after x, this build against the one before,
 * sigmoid 1.11x / 1.11x / 1.23x, tanh 1.03x / 1.04x / 1.10x, softplus backward 1.08x / 1.11x /
 * 1.21x.
 * The buffer and the constant trip count go together: variable-length loops into the buffer
 * ran 0.74-0.88x, and 512-byte blocks straight into dst 0.92-1.03x.
 * Blocks hold a multiple of FN_ACT_PAD elements, so that no block ends in gcc's scalar
 * remainder loop (an element's result must not depend on its position, see FN_ACT_PAD).
 *   Same operations, so the same values (against the single loop over every 61st float32 and
 * 16M float64s, both variants this CPU runs), except that some NaN results carry another
 * payload or sign, and on the FMA builds gcc contracts two cases differently: float64
 * softplus differs by 1-2 ulp in 0.2-0.3 % of values (the single loop had fused the
 * exponential's last multiplication into log1p's first addition; worst error against long
 * double 1.66 -> 1.61 ulp), GELU's tanh-form backward in 13 % (error against float64 the
 * same).  Checked on the base and AVX2 variants; the AVX-512 variant (not run on the Zen 3
 * host of that session) is the same C.  GELU's tanh form in three loops against two (its
 * backward) or one (its forward): the same bits but for NaN payloads and signs. */
/* From src to dst, per block in up to three loops: FIRST, a statement of v that may fill
 * the block's buffers wb[i], ub[i] and tb[i] (empty in the two-stage maps: that loop
 * vanishes); then ub[i] = (SECOND), of v, wb[i], ub[i] and tb[i]; then the result, EXPR, of
 * v, u = (U) (ub[i], or an expression of the buffers: STAGED_EXP), wb[i] and what DECL
 * declares (a gradient's d).  Streamed (n then whole chunks) or not, the same loops. */
#define MAP_STAGES(src, dst, DECL, FIRST, SECOND, U, EXPR) \
    do { \
        const int64_t whole = n / STREAM_CHUNK * STREAM_CHUNK; \
        _Alignas(FN_STREAM_ALIGN) T buf[STREAM_CHUNK]; \
        _Alignas(FN_STREAM_ALIGN) T wb[STREAM_CHUNK]; \
        _Alignas(FN_STREAM_ALIGN) T ub[STREAM_CHUNK]; \
        _Alignas(FN_STREAM_ALIGN) T tb[STREAM_CHUNK]; \
        (void)wb; (void)tb; \
        if (stream) { \
            for (int64_t i0 = 0; i0 < whole; i0 += STREAM_CHUNK) { \
                STAGE_LOOPS(src, STREAM_CHUNK, DECL, FIRST, SECOND, U, EXPR, buf[i]) \
                FN_STREAM_COPY(dst + i0, buf, STREAM_CHUNK); \
            } \
        } else { \
            for (int64_t i0 = 0; i0 < whole; i0 += STREAM_CHUNK) { \
                STAGE_LOOPS(src, STREAM_CHUNK, DECL, FIRST, SECOND, U, EXPR, buf[i]) \
                FN_CHUNK_COPY(dst + i0, buf, STREAM_CHUNK); \
            } \
        } \
        if (whole < n) { \
            const int64_t i0 = whole, m = n - whole; \
            STAGE_LOOPS(src, m, DECL, FIRST, SECOND, U, EXPR, dst[i0 + i]) \
        } \
    } while (0)
/* The loops of one block of MAP_STAGES, `count` elements from i0 on, the results to OUT. */
#define STAGE_LOOPS(src, count, DECL, FIRST, SECOND, U, EXPR, OUT) \
    _Pragma("omp simd") for (int64_t i = 0; i < (count); ++i) { \
        const T v = src[i0 + i]; (void)v; FIRST } \
    _Pragma("omp simd") for (int64_t i = 0; i < (count); ++i) { \
        const T v = src[i0 + i]; (void)v; ub[i] = (SECOND); } \
    _Pragma("omp simd") for (int64_t i = 0; i < (count); ++i) { \
        const T v = src[i0 + i]; const T u = (U); DECL OUT = (EXPR); }
#define GRAD_DECL const T d = g[i0 + i];
#define MAP2(STAGE, EXPR) MAP_STAGES(x, y, , , STAGE, ub[i], EXPR)
#define MAP3(FIRST, SECOND, EXPR) MAP_STAGES(x, y, , FIRST, SECOND, ub[i], EXPR)
/* The same for gradients: of v = s[i] and d = g[i]. */
#define MAP_GRAD2(STAGE, EXPR) MAP_STAGES(s, gx, GRAD_DECL, , STAGE, ub[i], EXPR)
#define MAP_GRAD3(FIRST, SECOND, EXPR) MAP_STAGES(s, gx, GRAD_DECL, FIRST, SECOND, ub[i], EXPR)
/* MAP_STAGES for maps of an exponential of a non-positive argument, u = exp(-|z|): FIRST as
 * there, then u in one loop (ONE_LOOP, the expression of MAP_STAGES' SECOND) or, where
 * FN_ACT_SPLIT_EXP is set (the AVX2 build for CPUs that run 256-bit instructions as two 128-bit
 * halves, src/activations_avx2_split.c), split over the three loops: its reduction (REDUCE, of
 * v, wb[i] and ub[i]: r, into ub, t into tb; fn__reduce_tf and fn__exp_neg_polyf and after in
 * fn_math.h) joins FIRST, its polynomial is the second loop, its scaling by 2^k opens the loop
 * of EXPR.  The same bits either way.  On AMD Zen 1 the chains of two loops still waited for
 * the out-of-order window: a C harness of these loops, float32 in cache (16K elements, 512-byte
 * blocks), ns per element, one exponential loop against the split: sigmoid 1.64 -> 1.37, silu
 * 1.69 -> 1.41, softplus 2.31 -> 2.11, silu backward 1.82 -> 1.72, softplus backward 1.79 ->
 * 1.54, GELU's tanh form 5.1 -> 3.8, ELU backward (one loop before) 1.61 -> 1.33; splitting
 * otherwise measured less (the reduction alone first, then the polynomial and scaling: sigmoid
 * 1.52; the scaling in a loop of its own: 1.61; GELU's tanh form with z in a loop of its own:
 * 3.7; ELU's forward, expm1 split the same way from its one loop: 1.38 -> 1.61; tanh's: level,
 * 1.79-1.83 against 1.84).  Through the API, one process switching between the two tables
 * (set_split_exp), medians of 7 alternated rounds, float32 at 1 thread, (256, 1024) /
 * 4096x4096: sigmoid 1.16x / 1.20x, silu 1.10x / 1.18x, softplus 1.05x / 1.06x, softplus
 * backward 1.14x / 1.13x, silu backward 0.99x / 1.01x, GELU's tanh form 1.06x / 1.07x, ELU
 * backward 1.15x / 1.23x, SELU backward 1.12x / 1.17x; float64 4096x4096 sigmoid 1.19x, silu
 * 1.17x, GELU's tanh form 1.23x, ELU / SELU backward 1.17x / 1.20x.  Not taken: GELU's
 * tanh-form backward (the harness 4.67 -> 4.10, the API 0.97x / 0.97x, float64 1.01x).  Not
 * measured on CPUs with full-width units, where another split (reduction, exponential,
 * logistic) had run slower than two loops on Zen 3, so the other tables keep the exponential in
 * one loop. */
#ifndef FN_ACT_SPLIT_EXP
#define FN_ACT_SPLIT_EXP 0
#endif
#if FN_ACT_SPLIT_EXP
#define STAGED_EXP(src, dst, DECL, FIRST, REDUCE, ONE_LOOP, EXPR) \
    MAP_STAGES(src, dst, DECL, FIRST ub[i] = (REDUCE);, FN_EXP_NEG_POLY(ub[i]), \
               FN_EXP_NEG_SCALE_T(tb[i], ub[i]), EXPR)
#else
#define STAGED_EXP(src, dst, DECL, FIRST, REDUCE, ONE_LOOP, EXPR) \
    MAP_STAGES(src, dst, DECL, FIRST, ONE_LOOP, ub[i], EXPR)
#endif
#define EXP_NEG_ABS_REDUCE_T(z) FN_REDUCE_T(-FN_FABS(z), &tb[i])
/* MAP2 / MAP_GRAD2 with u = exp(-|ARG|) */
#define MAP2_EXP(ARG, EXPR) STAGED_EXP(x, y, , , EXP_NEG_ABS_REDUCE_T(ARG), EXP_NEG_ABS(ARG), EXPR)
#define MAP_GRAD2_EXP(ARG, EXPR) \
    STAGED_EXP(s, gx, GRAD_DECL, , EXP_NEG_ABS_REDUCE_T(ARG), EXP_NEG_ABS(ARG), EXPR)
/* tanh's backward (below) streams by cache lines, FN_STREAM_LINE(T) per chunk: gcc unrolls a
 * 512-byte chunk of d * (1 - v * v) into eight vectors whose loads and streamed stores it
 * orders 0, 1, 6, 7, 2, ... within the chunk, and the streamed tanh backward of 4096 x 4096
 * ran 1.3-1.5x slower than sigmoid's, which moves the same bytes (float32 AVX-512 8.6-10.8
 * against 5.9-7.4 ms, float64 17-19 against 12-13; AMD Zen 4, kernels called through ctypes;
 * also seen on Zen 5: 5.1 against 3.5 ms in the benchmark).  By lines it runs at sigmoid's
 * speed (float32 1.32-1.43x, float64 1.34-1.51x, AVX2 1.03-1.13x faster).  Not for every map:
 * lines for all of them made ELU's backward 0.71-0.97x and relu's and softsign's forwards
 * 0.90-0.97x while the others moved within the noise.  Same bits either way. */

/* PyTorch's constants (torch.nn.SELU, GELU tanh form). */
#define SELU_ALPHA ((T)1.6732632423543772848170429916717)
#define SELU_SCALE ((T)1.0507009873554804934193349852946)
#define GELU_K ((T)0.7978845608028654)         /* sqrt(2/pi) */
#define GELU_C ((T)0.044715)
#define GELU_A (2 * 0.7978845608028654)             /* double: split into float head and tail */
#define GELU_B (2 * 0.7978845608028654 * 0.044715)
#define INV_SQRT2 ((T)0.70710678118654752440)
#define INV_SQRT_2PI ((T)0.39894228040143267794)

/* sigmoid(z) from e = exp(-|z|) (the staged maps compute e apart): one division of a
 * selected numerator, 1/(1+e) for z >= 0, e/(1+e) below.  (Until 2026-12-04 e * (1/(1+e))
 * below 0: a multiplication and a rounding more.  AMD Zen 4, AVX-512, the kernel object in a C
 * harness, float32 in cache, 4096 / 262144 elements, against that form: sigmoid forward
 * 1.06x / 1.06x, silu 1.06x / 1.06x, GELU's tanh form 1.02x / 1.02x, softplus backward
 * 1.04x; float64 sigmoid and silu 1.02-1.03x.  Worst error over every third float32 against
 * double: sigmoid 2.82 -> 2.40 ulp, silu 3.53 -> 3.18 ulp where e is normal.)  The passes
 * that need the slope too keep the reciprocal (logistic_by_reciprocal below): this form
 * beside logistic_slope divides twice, and silu's backward ran 0.92x, GELU's tanh form's
 * 0.94x. */
static inline T FN_NAME(logistic, FN_SUF)(T z, T e)
{
    return (z >= 0 ? (T)1 : e) / ((T)1 + e);
}

/* sigmoid(z) as e * r below 0, r = 1/(1+e): the reciprocal that logistic_slope computes
 * too, which the compiler then takes once for both. */
static inline T FN_NAME(logistic_by_reciprocal, FN_SUF)(T z, T e)
{
    const T r = (T)1 / ((T)1 + e);
    return z >= 0 ? r : e * r;
}

/* sigmoid(z) * (1 - sigmoid(z)) = e / (1+e)^2, symmetric in z: no cancellation. */
static inline T FN_NAME(logistic_slope, FN_SUF)(T e)
{
    const T r = (T)1 / ((T)1 + e);
    return e * r * r;
}

/* tanh(softplus(z)) written as n/(n+2) with n = u(u+2), u = e^z: exact algebra,
 * accurate for z << 0 (n ~ 2u).  Above z = 20 the ratio is 1 to double precision,
 * so clamping u's argument there only prevents n from overflowing. */
static inline T FN_NAME(mish_u, FN_SUF)(T z) { return FN_EXP(z > (T)20 ? (T)20 : z); }

/* |x| clamped to 1e6, where GELU's x-proportional terms are settled, so that Inf * 0 (an
 * underflowed factor) cannot give NaN; the comparisons keep NaN as NaN. */
#define GELU_CLAMP(v) ((v) > (T)1e6 ? (T)1e6 : ((v) < (T)-1e6 ? (T)-1e6 : (v)))
#define LOGISTIC FN_NAME(logistic, FN_SUF)
#define LOGISTIC_BY_RECIPROCAL FN_NAME(logistic_by_reciprocal, FN_SUF)
#define LOGISTIC_SLOPE FN_NAME(logistic_slope, FN_SUF)
#define EXP_NEG_ABS(z) FN_EXP_NEG(-FN_FABS(z))
#define MISH_U FN_NAME(mish_u, FN_SUF)

/* GELU's tanh form, x sigmoid(z) with z = 2 GELU_K (x + GELU_C x^3), in three loops per
 * block (MAP3 / MAP_GRAD3): z, then e = exp(-|z|), then the rest: z ahead of the exponential
 * (the float forward's compensated z is some twenty operations of its own) makes the
 * chains three.  C harness, 16K floats in cache, Zen 3 (AVX2), cycles per 8 floats: forward
 * 32.6 in one loop, 28.8-29.9 in two (z first, or z and e first), 24.9 in three; backward
 * 26.6 in two (e first, signed by z's side), 20.2 in three.
 *
 * Forward.  float: exp(-|z|) amplifies the rounding of z by |z| (200 ulp near x = -10 with z
 * rounded to float).  z = A v + B v^3 (A = 2 GELU_K, B = A GELU_C) is formed as a pair
 * z + *lo from exact products (fn__two_prodf) and the constants' float heads and tails, and
 * enters the exponential as that pair (fn_exp_neg2f): within 3.35 ulp over every float (FMA
 * and SSE2 builds; 3.71 before logistic's one division), against 4.18 ulp and 1.6x the time
 * for z formed in double.  *lo is 0
 * where |z| >= 128: the sigmoid is 0 or 1 there regardless (and the tail may be NaN).
 * double: z rounded, *lo = 0. */
static inline T FN_NAME(gelu_tanh_arg, FN_SUF)(T v, T *lo)
{
#if FN_REAL == 32
    const T A_hi = (T)GELU_A, A_lo = (T)(GELU_A - (double)(T)GELU_A);
    const T B_hi = (T)GELU_B, B_lo = (T)(GELU_B - (double)(T)GELU_B);
    T v2_err, v3_err, av_err, bv3_err;
    const T v2 = fn__two_prodf(v, v, &v2_err);
    const T v3 = fn__two_prodf(v2, v, &v3_err);
    const T av = fn__two_prodf(A_hi, v, &av_err);
    const T bv3 = fn__two_prodf(B_hi, v3, &bv3_err);
    const T z = av + bv3, bv3_part = z - av;    /* TwoSum: exact error of av + bv3 */
    const T sum_err = (av - (z - bv3_part)) + (bv3 - bv3_part);
    const T z_lo = sum_err + ((av_err + A_lo * v)
                              + (bv3_err + B_hi * (v3_err + v2_err * v) + B_lo * v3));
    *lo = FN_FABS(z) < 128 ? z_lo : (T)0;
    return z;
#else
    *lo = 0;
    return (T)2 * GELU_K * (v + GELU_C * v * v * v);
#endif
}
/* exp(-|z + lo|), and its reduction for STAGED_EXP (r returned, t into *t) */
static inline T FN_NAME(gelu_tanh_exp, FN_SUF)(T z, T lo)
{
#if FN_REAL == 32
    return fn_exp_neg2f(-FN_FABS(z), z >= 0 ? -lo : lo);
#else
    (void)lo;
    return EXP_NEG_ABS(z);
#endif
}
static inline T FN_NAME(gelu_tanh_exp_reduce_t, FN_SUF)(T z, T lo, T *t)
{
#if FN_REAL == 32
    return fn__reduce2_tf(-FN_FABS(z), z >= 0 ? -lo : lo, t);
#else
    (void)lo;
    return FN_REDUCE_T(-FN_FABS(z), t);
#endif
}

/* Backward: z rounded to T (the derivative's terms do not amplify its rounding as the
 * forward's exponential does), e = exp(-|z|), then sigmoid(z) + x sigmoid'(z) dz/dx from z
 * and e (v clamped by the caller, GELU_CLAMP).  The side of z is read from z itself: taken
 * from the sign bit of a signed e (signbit), gcc left float64's last loop scalar, and the
 * float64 backward ran 3.7x slower (4096 x 4096, 1 and 2 threads). */
static inline T FN_NAME(gelu_tanh_grad_arg, FN_SUF)(T v)
{
    return (T)2 * GELU_K * (v + GELU_C * (v * v) * v);
}
static inline T FN_NAME(gelu_tanh_slope_from, FN_SUF)(T v, T z, T e)
{
    const T dz = (T)2 * GELU_K * (1 + (T)3 * GELU_C * (v * v));
    return LOGISTIC_BY_RECIPROCAL(z, e) + v * LOGISTIC_SLOPE(e) * dz;
}

/* x Phi(x) = 0.5 x erfc(-x/sqrt2), not 0.5 x (1 + erf(x/sqrt2)): the latter cancels for
 * x << 0.  float: Phi from x itself (fn_normal_tailf: no rounded x/sqrt2 whose error
 * erfc would amplify by ~x^2), and x (1 - T) as x - x T. */
FN_ELEMENT T FN_NAME(gelu, FN_SUF)(T v)
{
#if FN_REAL == 32
    T gauss;
    const T tail = fn_normal_tailf(v, &gauss);
    return v < 0 ? v * tail : v - GELU_CLAMP(v) * tail;   /* clamped: inf - inf * 0 */
#else
    return (T)0.5 * v * FN_ERFC(-v * INV_SQRT2);
#endif
}

/* GELU's derivative Phi(x) + x phi(x).  float: fn_normal_tailf's e^{-x^2/2} is phi's, from
 * the exact x^2. */
FN_ELEMENT T FN_NAME(gelu_slope, FN_SUF)(T v)
{
#if FN_REAL == 32
    T gauss;
    const T tail = fn_normal_tailf(v, &gauss);
    const T cdf = v < 0 ? tail : 1 - tail;
    return cdf + GELU_CLAMP(v) * INV_SQRT_2PI * gauss;
#else
    return (T)0.5 * FN_ERFC(-v * INV_SQRT2)
           + GELU_CLAMP(v) * INV_SQRT_2PI * FN_EXP_NEG((T)-0.5 * GELU_CLAMP(v) * GELU_CLAMP(v));
#endif
}

/* The maps of a single loop (MAP), which run in either direction: X(op, expression of v,
 * pa and inv_alpha). */
#define ONE_LOOP_FORWARD_MAPS(X) \
    X(FN_ACT_RELU,        v < 0 ? (T)0 : v) \
    X(FN_ACT_RELU6,       v < 0 ? (T)0 : (v > 6 ? (T)6 : v)) \
    X(FN_ACT_LEAKY_RELU,  v > 0 ? v : v * pa) \
    X(FN_ACT_ELU,         v > 0 ? v : pa * FN_EXPM1_NEG(v)) \
    X(FN_ACT_SELU,        SELU_SCALE * (v > 0 ? v : SELU_ALPHA * FN_EXPM1_NEG(v))) \
    X(FN_ACT_CELU,        v > 0 ? v : pa * FN_EXPM1(v * inv_alpha)) \
    X(FN_ACT_GELU,        FN_NAME(gelu, FN_SUF)(v)) \
    /* PyTorch's order of operations: min(max(x+3, 0), 6) / 6, times x for hardswish. */ \
    X(FN_ACT_HARDSIGMOID, ((v + 3) < 0 ? (T)0 : ((v + 3) > 6 ? (T)6 : (v + 3))) / 6) \
    X(FN_ACT_HARDSWISH,   v * ((v + 3) < 0 ? (T)0 : ((v + 3) > 6 ? (T)6 : (v + 3))) / 6) \
    X(FN_ACT_SOFTSIGN,    v / (1 + FN_FABS(v)))

static void FN_NAME(act_forward_span, FN_SUF)(int op, const T *x, T *y, int64_t n, double a, double b,
                                             int stream)
{
    const T pa = (T)a, pb = (T)b, inv_alpha = (T)1 / pa;   /* CELU's */
    switch (op) {
#define UPWARDS(OP, EXPR) case OP: MAP(EXPR); break;
    ONE_LOOP_FORWARD_MAPS(UPWARDS)
#undef UPWARDS
    /* 0.5 x (1 + tanh(u)) = x sigmoid(2u): same function, no cancellation for x << 0. */
    case FN_ACT_GELU_TANH:
        STAGED_EXP(x, y, , wb[i] = FN_NAME(gelu_tanh_arg, FN_SUF)(v, &ub[i]);,
                   FN_NAME(gelu_tanh_exp_reduce_t, FN_SUF)(wb[i], ub[i], &tb[i]),
                   FN_NAME(gelu_tanh_exp, FN_SUF)(wb[i], ub[i]),
                   v * LOGISTIC(wb[i], u));
        break;
    case FN_ACT_SILU:        MAP2_EXP(v, v * LOGISTIC(v, u)); break;
    case FN_ACT_SOFTPLUS:
        /* PyTorch: x where beta*x > threshold, else log1p(exp(beta*x))/beta, written
         * as max(z,0) + log1p(exp(-|z|)) so that exp never overflows.  beta = 1 (the
         * default) drops the multiply and the division, which are exact there anyway. */
        if (pa == 1)
            MAP2_EXP(v, v > pb ? v : (v > 0 ? v : (T)0) + FN_LOG1P_UNIT(u));
        else
            MAP2_EXP(pa * v, pa * v > pb ? v : ((pa * v > 0 ? pa * v : (T)0) + FN_LOG1P_UNIT(u)) / pa);
        break;
    case FN_ACT_MISH:        MAP2(MISH_U(v), v * ((u * (u + 2)) / (u * (u + 2) + 2))); break;
    case FN_ACT_SIGMOID:     MAP2_EXP(v, LOGISTIC(v, u)); break;
#if FN_REAL == 32   /* fn_tanhf's and fn_tanh's two halves, fn_math.h */
    case FN_ACT_TANH:        MAP2(fn__tanh_qf(v), fn_tanh_fromf(v, u)); break;
#else
    case FN_ACT_TANH:        MAP2(fn__tanh_e(v), fn_tanh_from(v, u)); break;
#endif
    default: break;
    }
}

/* act_forward_span's maps of one loop downwards (MAP_DESCENDING), never streamed; n a
 * multiple of DESCENDING_STEP.  Returns 0, having done nothing, for the staged maps (their
 * chunks go through a buffer, which keeps them out of the stall: level at every offset).
 * A function of its own: a third branch in MAP made gcc compile relu's streamed loop 0.65x
 * slower. */
static int FN_NAME(act_forward_descending, FN_SUF)(int op, const T *x, T *y, int64_t n, double a)
{
    const T pa = (T)a, inv_alpha = (T)1 / pa;
    switch (op) {
#define DOWNWARDS(OP, EXPR) case OP: MAP_DESCENDING(EXPR); return 1;
    ONE_LOOP_FORWARD_MAPS(DOWNWARDS)
#undef DOWNWARDS
    default: return 0;
    }
}

#if FN_TARGET_AVX512
/* relu backward, gx = v <= 0 ? 0 : d, n a multiple of the vector width.  From the C select
 * gcc makes a zero-masking load of g (vmovups with {k}{z}), and a masked load from an
 * address off a 64-byte line -- NumPy's arrays start 16 bytes past one -- ran 25-30 % slower
 * on this machine than an unconditional load (4096x4096 float32, streamed, 1 thread: 4.5 ms
 * against 3.5 ms; aligned, the masked load was as fast).  Here g is loaded unconditionally
 * and ANDed with the comparison's lanes, which gcc leaves alone.  Same bits as the C select
 * (NaN in v keeps d, as !(v <= 0) is true). */
#if FN_REAL == 32
#define RELU_VEC(op) _mm512_##op##_ps
#define RELU_ABOVE_ZERO(v) _mm512_castsi512_ps(_mm512_movm_epi32(_mm512_cmp_ps_mask(v, zero, _CMP_NLE_UQ)))
#else
#define RELU_VEC(op) _mm512_##op##_pd
#define RELU_ABOVE_ZERO(v) _mm512_castsi512_pd(_mm512_movm_epi64(_mm512_cmp_pd_mask(v, zero, _CMP_NLE_UQ)))
#endif
#define RELU_GRAD_AT(i) RELU_VEC(and)(RELU_VEC(loadu)(g + (i)), RELU_ABOVE_ZERO(RELU_VEC(loadu)(s + (i))))
static inline void FN_NAME(relu_grad_avx512, FN_SUF)(const T *g, const T *s, T *gx, int64_t n,
                                                     int stream)
{
    const __typeof__(RELU_VEC(setzero)()) zero = RELU_VEC(setzero)();
    for (int64_t i = 0; i < n; i += 64 / (int64_t)sizeof(T)) {
        const __typeof__(zero) r = RELU_GRAD_AT(i);
        if (stream)
            RELU_VEC(stream)(gx + i, r);
        else
            RELU_VEC(storeu)(gx + i, r);
    }
}

/* The same downwards (MAP_DESCENDING), never streamed. */
static inline void FN_NAME(relu_grad_avx512_descending, FN_SUF)(const T *g, const T *s, T *gx, int64_t n)
{
    const __typeof__(RELU_VEC(setzero)()) zero = RELU_VEC(setzero)();
    for (int64_t i = n - DESCENDING_STEP; i >= 0; i -= DESCENDING_STEP)   /* one vector */
        RELU_VEC(storeu)(gx + i, RELU_GRAD_AT(i));
}
#undef RELU_GRAD_AT
#undef RELU_VEC
#undef RELU_ABOVE_ZERO
#endif

/* The backward passes of one loop (those of ONE_LOOP_FORWARD_MAPS; sigmoid's and tanh's, of
 * their output): X(op, elements per streamed chunk, expression of v, d, pa and inv_alpha).
 * relu's is apart (relu_grad_avx512).  Derivatives at kinks follow PyTorch: relu'(0) = 0,
 * relu6' = 0 at 0 and 6; hardswish'(-3) = 0 and hardswish'(3) = 1 (PyTorch 2.x: the outer
 * pieces own the kinks).
 * ELU, SELU: FN_EXP_NEG is for arguments <= 0, so it gets -|v| (the lanes with v > 0
 * discard it).  Passing v itself, or (v > 0 ? 0 : v), gave the same values but made ELU's
 * streamed backward (4096 x 4096 float32, 1 thread) take 6.7-7.3 ms instead of 3.3-3.6 in
 * the Python process -- not in a C harness running the same object code; not explained.
 * A NaN input gives a NaN whose sign is not the input's on every variant (+NaN with
 * AVX2/AVX-512, -NaN on SSE2; before, it kept the input's sign).
 *   Those two are X_EXP(op, gradient as a macro of the exponential): upwards they are staged
 * maps where FN_ACT_SPLIT_EXP splits the exponential (STAGED_EXP), one loop elsewhere. */
#define ELU_GRAD(E) (v > 0 ? d : d * pa * (E))
#define SELU_GRAD(E) (v > 0 ? d * SELU_SCALE : d * (SELU_SCALE * SELU_ALPHA) * (E))
#define ONE_LOOP_BACKWARD_MAPS(X, X_EXP) \
    X(FN_ACT_RELU6,       STREAM_CHUNK, (v <= 0 || v >= 6) ? (T)0 : d) \
    X(FN_ACT_LEAKY_RELU,  STREAM_CHUNK, v > 0 ? d : d * pa) \
    X_EXP(FN_ACT_ELU,     ELU_GRAD) \
    X_EXP(FN_ACT_SELU,    SELU_GRAD) \
    X(FN_ACT_CELU,        STREAM_CHUNK, v > 0 ? d : d * FN_EXP(v * inv_alpha)) \
    X(FN_ACT_GELU,        STREAM_CHUNK, d * FN_NAME(gelu_slope, FN_SUF)(v)) \
    X(FN_ACT_SIGMOID,     STREAM_CHUNK, d * (1 - v) * v)   /* v = forward output */ \
    X(FN_ACT_TANH,        FN_STREAM_LINE(T), d * (1 - v * v))   /* v = output */ \
    X(FN_ACT_HARDSIGMOID, STREAM_CHUNK, (v > -3 && v < 3) ? d * ((T)1 / 6) : (T)0) \
    X(FN_ACT_HARDSWISH,   STREAM_CHUNK, v <= -3 ? (T)0 : (v < 3 ? d * (v / 3 + (T)0.5) : d)) \
    X(FN_ACT_SOFTSIGN,    STREAM_CHUNK, d / ((1 + FN_FABS(v)) * (1 + FN_FABS(v))))
#define RELU_GRAD (v <= 0 ? (T)0 : d)

static void FN_NAME(act_backward_span, FN_SUF)(int op, const T *g, const T *s, T *gx, int64_t n,
                                              double a, double b, int stream)
{
    const T pa = (T)a, pb = (T)b, inv_alpha = (T)1 / pa;   /* CELU's */
    switch (op) {
    case FN_ACT_RELU:
#if FN_TARGET_AVX512
        FN_NAME(relu_grad_avx512, FN_SUF)(g, s, gx, n, stream);
#else
        MAP_GRAD_BY(STREAM_CHUNK, FN_STREAM_PREFETCH(g + i0, STREAM_CHUNK), RELU_GRAD);
#endif
        break;
#define UPWARDS(OP, CHUNK, EXPR) case OP: MAP_GRAD_BY(CHUNK, , EXPR); break;
#if FN_ACT_SPLIT_EXP
#define UPWARDS_EXP(OP, GRAD) \
    case OP: STAGED_EXP(s, gx, GRAD_DECL, , EXP_NEG_ABS_REDUCE_T(v), , GRAD(u)); break;
#else
#define UPWARDS_EXP(OP, GRAD) UPWARDS(OP, STREAM_CHUNK, GRAD(EXP_NEG_ABS(v)))
#endif
    ONE_LOOP_BACKWARD_MAPS(UPWARDS, UPWARDS_EXP)
#undef UPWARDS
#undef UPWARDS_EXP
    /* The GELU derivatives are exactly 1 or 0 (in either precision) beyond |x| = 1e6:
     * GELU_CLAMP keeps Inf * 0 out of them (x = +-Inf, and x^3 overflowing in the tanh
     * form at |x| > 1.8e19 in float32, gave NaN). */
    case FN_ACT_GELU_TANH:
        MAP_GRAD3(wb[i] = FN_NAME(gelu_tanh_grad_arg, FN_SUF)(GELU_CLAMP(v));,
                  EXP_NEG_ABS(wb[i]),
                  d * FN_NAME(gelu_tanh_slope_from, FN_SUF)(GELU_CLAMP(v), wb[i], u));
        break;
    case FN_ACT_SILU:
        MAP_GRAD2_EXP(v, d * (LOGISTIC_BY_RECIPROCAL(v, u) + GELU_CLAMP(v) * LOGISTIC_SLOPE(u)));
        break;
    case FN_ACT_SOFTPLUS:    MAP_GRAD2_EXP(pa * v, pa * v > pb ? d : d * LOGISTIC(pa * v, u)); break;
    case FN_ACT_MISH: {
        /* d/dx x tanh(sp(x)) = t + x (1 - t^2) sigmoid(x), with t = q/(q+2),
         * 1 - t^2 = 4 (q+1)/(q+2)^2 and sigmoid(x) = u/(1+u). */
        /* One loop: in two stages (1.31-1.42x faster) gcc contracted the sum differently on
         * the FMA builds and the mean error against long double rose (float32 1.22 -> 1.27
         * ulp, float64 1.31 -> 1.35). */
        _Pragma("omp simd") for (int64_t i = 0; i < n; ++i) {
            const T v = s[i], u = MISH_U(v), q = u * (u + 2), r = (T)1 / (q + 2);
            const T vt = v < (T)-1e6 ? (T)-1e6 : v;  /* -Inf * 0 would be NaN; the limit is 0 */
            const T d = q * r + vt * (T)4 * (q + 1) * r * r * (u / (1 + u));
            /* Beyond x = 30 the derivative is 1 to ~1e-24, and q overflows further on
             * (x = 1e30 gave Inf; the limit, and PyTorch at finite x, is 1). */
            gx[i] = g[i] * (v > 30 ? (T)1 : d);
        }
        break;
    }
    default: break;
    }
}

/* act_backward_span's loops of one map downwards, as act_forward_descending.  Not mish's
 * backward, a loop of its own with a division and two exponentials per element (not
 * measured in the window). */
static int FN_NAME(act_backward_descending, FN_SUF)(int op, const T *g, const T *s, T *gx, int64_t n,
                                                   double a)
{
    const T pa = (T)a, inv_alpha = (T)1 / pa;
    switch (op) {
    case FN_ACT_RELU:
#if FN_TARGET_AVX512
        FN_NAME(relu_grad_avx512_descending, FN_SUF)(g, s, gx, n);
#else
        MAP_GRAD_DESCENDING(RELU_GRAD);
#endif
        return 1;
#define DOWNWARDS(OP, CHUNK, EXPR) case OP: MAP_GRAD_DESCENDING(EXPR); return 1;
#define DOWNWARDS_EXP(OP, GRAD) DOWNWARDS(OP, STREAM_CHUNK, GRAD(EXP_NEG_ABS(v)))
    ONE_LOOP_BACKWARD_MAPS(DOWNWARDS, DOWNWARDS_EXP)
#undef DOWNWARDS
#undef DOWNWARDS_EXP
    default: return 0;
    }
}

/* The vector loop body and gcc's scalar remainder loop may round differently (FMA
 * contraction is decided per basic block, and the scalar code keeps branches), so an
 * element's result would depend on its position -- on how an array is split into
 * threads, blocks or views.  Every element therefore goes through the vector body:
 * the last n % FN_ACT_PAD elements are run through a zero-padded stack buffer. */
#define FN_ACT_PAD 16
_Static_assert(STREAM_CHUNK % FN_ACT_PAD == 0,
               "staged blocks must hold whole FN_ACT_PAD pieces");
_Static_assert(FN_ACT_PAD % DESCENDING_STEP == 0,
               "the descending loops must cover whole FN_ACT_PAD pieces");

static void FN_NAME(act_forward_plain, FN_SUF)(int op, const T *x, T *y, int64_t n, double a, double b)
{
    const int64_t body = n - n % FN_ACT_PAD;
    if (!fn_trails(y, x) || !FN_NAME(act_forward_descending, FN_SUF)(op, x, y, body, a))
        FN_NAME(act_forward_span, FN_SUF)(op, x, y, body, a, b, 0);
    if (body < n) {
        /* aligned as declared, not only as gcc's vectorizer chooses (which AddressSanitizer's
         * relocated stack frames did not honour: a segfault on an aligned store) */
        _Alignas(FN_STREAM_ALIGN) T xt[FN_ACT_PAD] = {0};
        _Alignas(FN_STREAM_ALIGN) T yt[FN_ACT_PAD];
        memcpy(xt, x + body, (size_t)(n - body) * sizeof(T));
        FN_NAME(act_forward_span, FN_SUF)(op, xt, yt, FN_ACT_PAD, a, b, 0);
        memcpy(y + body, yt, (size_t)(n - body) * sizeof(T));
    }
}

static void FN_NAME(act_backward_plain, FN_SUF)(int op, const T *g, const T *s, T *gx, int64_t n,
                                                double a, double b)
{
    const int64_t body = n - n % FN_ACT_PAD;
    const int down = fn_trails_one_of(gx, g, s);
    if (!down || !FN_NAME(act_backward_descending, FN_SUF)(op, g, s, gx, body, a))
        FN_NAME(act_backward_span, FN_SUF)(op, g, s, gx, body, a, b, 0);
    if (body < n) {
        _Alignas(FN_STREAM_ALIGN) T gt[FN_ACT_PAD] = {0};   /* as in act_forward_plain */
        _Alignas(FN_STREAM_ALIGN) T st[FN_ACT_PAD] = {0};
        _Alignas(FN_STREAM_ALIGN) T gxt[FN_ACT_PAD];
        memcpy(gt, g + body, (size_t)(n - body) * sizeof(T));
        memcpy(st, s + body, (size_t)(n - body) * sizeof(T));
        FN_NAME(act_backward_span, FN_SUF)(op, gt, st, gxt, FN_ACT_PAD, a, b, 0);
        memcpy(gx + body, gxt, (size_t)(n - body) * sizeof(T));
    }
}

/* stream: write the result with non-temporal stores (fn_stream.h) from the output's first
 * 64-byte boundary to its last whole chunk; the same vector code computes every element
 * either way, so the results are the same bits. */
void FN_NAME(fn_act_forward, FN_SUF)(int op, const T *x, T *y, int64_t n, double a, double b, int stream)
{
    int64_t lead;
    const int64_t chunks = fn_stream_split(y, n, sizeof(T), STREAM_CHUNK, stream, &lead);
    if (chunks == 0) {
        FN_NAME(act_forward_plain, FN_SUF)(op, x, y, n, a, b);
        return;
    }
    FN_NAME(act_forward_plain, FN_SUF)(op, x, y, lead, a, b);
    FN_NAME(act_forward_span, FN_SUF)(op, x + lead, y + lead, chunks, a, b, 1);
    fn_stream_fence();
    FN_NAME(act_forward_plain, FN_SUF)(op, x + lead + chunks, y + lead + chunks, n - lead - chunks, a, b);
}

void FN_NAME(fn_act_backward, FN_SUF)(int op, const T *g, const T *s, T *gx, int64_t n, double a, double b,
                                      int stream)
{
    int64_t lead;
    const int64_t chunks = fn_stream_split(gx, n, sizeof(T), STREAM_CHUNK, stream, &lead);
    if (chunks == 0) {
        FN_NAME(act_backward_plain, FN_SUF)(op, g, s, gx, n, a, b);
        return;
    }
    FN_NAME(act_backward_plain, FN_SUF)(op, g, s, gx, lead, a, b);
    FN_NAME(act_backward_span, FN_SUF)(op, g + lead, s + lead, gx + lead, chunks, a, b, 1);
    fn_stream_fence();
    FN_NAME(act_backward_plain, FN_SUF)(op, g + lead + chunks, s + lead + chunks, gx + lead + chunks,
                                        n - lead - chunks, a, b);
}

#undef FN_ACT_PAD
#undef STREAM_CHUNK
#undef MAP_GRAD_BY
#undef T
#undef MAP
#undef DESCENDING_STEP
#undef DESCENDING_KEEP
#undef DESCENDING
#undef MAP_DESCENDING
#undef MAP_GRAD_DESCENDING
#undef ONE_LOOP_FORWARD_MAPS
#undef ONE_LOOP_BACKWARD_MAPS
#undef ELU_GRAD
#undef SELU_GRAD
#undef RELU_GRAD
#undef SELU_ALPHA
#undef SELU_SCALE
#undef GELU_CLAMP
#undef GELU_K
#undef GELU_C
#undef GELU_A
#undef GELU_B
#undef INV_SQRT2
#undef INV_SQRT_2PI
#undef MISH_U
#undef MAP_STAGES
#undef STAGE_LOOPS
#undef GRAD_DECL
#undef MAP2
#undef MAP3
#undef MAP_GRAD2
#undef MAP_GRAD3
#undef STAGED_EXP
#undef EXP_NEG_ABS_REDUCE_T
#undef MAP2_EXP
#undef MAP_GRAD2_EXP
#undef LOGISTIC
#undef LOGISTIC_BY_RECIPROCAL
#undef LOGISTIC_SLOPE
#undef EXP_NEG_ABS
