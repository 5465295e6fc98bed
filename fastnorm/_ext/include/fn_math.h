/* fn_math.h -- branch-free elementary functions for vectorized kernels.
 *
 *   float  fn_expf(float),  fn_expm1f(float),  fn_log1pf(float),  fn_tanhf(float)
 *   float  fn_normal_tailf(float, float *): Phi(-|x|) = erfc(|x|/sqrt2)/2, and e^{-x^2/2}
 *   float  fn_log1p_unitf(float): log1p on [0, 1] only
 *   float  fn_exp_negf(float), fn_expm1_negf(float): exp, expm1 for x <= 0 only
 *   float  fn_exp_neg2f(float, float): exp of a compensated pair x + lo, x <= 0
 *   double fn_exp(double),  fn_expm1(double),  fn_log1p(double),  fn_tanh(double),  fn_erfc(double)
 *
 * Every function is straight-line code (selects, no branches, no tables), so gcc
 * 12 vectorizes it inside `#pragma omp simd` loops with -O3 -fno-math-errno
 * -fno-trapping-math -fopenmp-simd, both for baseline x86-64 (SSE2) and after
 * `#pragma GCC target("avx2,fma")`.  It needs no -ffast-math, and it must not be
 * compiled with it: the range reductions rely on exact IEEE arithmetic.  Float
 * functions compute in float, except the normal tail's rational function (double,
 * see there).  Checked with tools/vec_check.c (see
 * tools/README_math.md).
 *
 * Behaviour over the whole range:
 *   exp      overflows to +inf above 88.7228 / 709.78.  Results in the
 *            subnormal range are computed and rounded once (they are not
 *            flushed), down to 0 below -103.97 / -745.13.  exp(-inf) = 0.
 *   expm1    reaches -1 exactly for very negative x and +inf on overflow.
 *            expm1(+-0) = +-0 and expm1(x) = x for tiny x.
 *   log1p    log1p(-1) = -inf, log1p(x < -1) = NaN, log1p(+inf) = +inf,
 *            log1p(+-0) = +-0.
 *   tanh     is odd (tanh(-0) = -0) and tanh(x) = x for tiny x.  It
 *            saturates to exactly +-1 for large |x|.
 *   normal_tail (float) keeps relative accuracy down to its underflow at |x| = 14.5,
 *            and is 0 at +-inf.
 *   erfc     (double) keeps relative accuracy for large x down to its underflow
 *            at 27.23, with subnormal results rounded once.  It reaches exactly 2
 *            from x = -5.86, and erfc(+-inf) = 0 / 2.
 *   NaN in gives NaN out, for every function.
 *
 * Measured accuracy (tools/math_accuracy.c): max error in ulp of the result
 * type, against glibc double (float functions) or long double (double
 * functions).  Float: all 4,278,190,080 finite inputs.  Double: 1e8 random inputs
 * per function, spread over all exponents, plus +-64 ulp around every threshold
 * and branch point.  "base" is the SSE2 build.  "fma" is the build after
 * `#pragma GCC target("avx2,fma")`, where gcc contracts a*b+c into FMA.
 *
 *              float base  float fma  | double base  double fma
 *     exp        1.006       1.039    |    0.983       1.026
 *     expm1      1.660       1.530    |    2.022       1.904
 *     log1p      1.393       1.343    |    1.343       1.303
 *     tanh       2.045       1.855    |    1.452       1.479
 *     normal tail  2.140     1.889    |      -           -     (e^{-x^2/2} output: 1.011 / 1.037)
 *     erfc         -           -      |    2.931       3.096
 *   (The normal tail since its rational function, 2026-12-02; before: 3.272 / 2.509.)
 *   Share of inputs above 2 ulp: normal tail 84 of 4.3e9 (base) / 0 (fma), erfc
 *   6.7e-5 / 5.8e-5, expm1 (double, base) 2 of 1e8, tanhf (base) 16 of 4.3e9.  All other
 *   functions stay within 2 ulp.  fn_exp_negf and fn_expm1_negf equal fn_expf and fn_expm1f
 *   bit for bit on x <= 0.
 *   All special-value checks pass (NaN, +-inf, +-0, thresholds).
 *
 * All polynomial coefficients were derived for this file.  Each is a
 * near-minimax fit: Lawson's iteratively reweighted least squares on Chebyshev
 * nodes, in mpmath at 40-45 digits, weighted by the error that matters in the
 * final result.  For float, the coefficients were rounded one at a time from the
 * lowest order, refitting the rest after each rounding.  For double, they were
 * rounded to nearest.  The fit error of each polynomial is noted at the polynomial.
 * The normal tail's rational function is the exception: fitted in double against
 * scipy's erfcx, its coefficients are double literals (see there).
 */
#ifndef FN_MATH_H
#define FN_MATH_H

/* Element functions that must be inlined whatever the compiler's heuristics say: they are
 * the bodies of vector loops, and a call left in a loop keeps it scalar.  gcc kept fn_expm1,
 * fn_exp, fn_log1p and fn_erfc as calls in act_forward_span's float64 loops (a large function
 * with many call sites) until 2026-12-05: ELU, SELU, CELU and GELU float64 forwards ran 5-9x
 * slower than vectorized.  clang did the same with GELU's float64 derivative.  The rest are
 * left to the heuristics, which inline them (forcing all of them changed the float32
 * kernels' code for nothing).  tools/check_inlined.py checks a build. */
#define FN_ELEMENT static inline __attribute__((always_inline))

#include <math.h>
#include <stdint.h>
#include <string.h>

/* ---- bit casts (memcpy: no aliasing UB, and gcc vectorizes it as a no-op) ---- */
static inline uint32_t fn__bits_f(float x) { uint32_t u; memcpy(&u, &x, sizeof u); return u; }
static inline float fn__from_bits_f(uint32_t u) { float x; memcpy(&x, &u, sizeof x); return x; }
static inline uint64_t fn__bits_d(double x) { uint64_t u; memcpy(&u, &x, sizeof u); return u; }
static inline double fn__from_bits_d(uint64_t u) { double x; memcpy(&x, &u, sizeof x); return x; }

static inline float fn__absf(float x) { return fn__from_bits_f(fn__bits_f(x) & 0x7fffffffu); }
static inline double fn__abs(double x) { return fn__from_bits_d(fn__bits_d(x) & 0x7fffffffffffffffull); }

/* x with the low 12 of its 24 significand bits cleared: the product of two such heads,
 * or of a head and the 12-bit remainder x - head, is exact in float. */
static inline float fn__head12f(float x) { return fn__from_bits_f(fn__bits_f(x) & 0xfffff000u); }

/* 2^k for k in [-126, 127] built in the exponent field. */
static inline float fn__pow2f(int32_t k) { return fn__from_bits_f(((uint32_t)k + 127u) << 23); }
/* 2^k for k in [-1022, 1023]. */
static inline double fn__pow2(int64_t k) { return fn__from_bits_d(((uint64_t)k + 1023u) << 52); }

#define FN__INFF ((float)INFINITY)
#define FN__NANF ((float)NAN)
#define FN__INF ((double)INFINITY)
#define FN__NAN ((double)NAN)

/* ===================================================================== float */

/* Range reduction shared by exp, expm1, tanh and erfc:  x = k ln2 + r,
 * |r| <= ln2/2 (+ rounding), k an integer.  k comes from the "add 1.5*2^23"
 * rounding trick, which needs no SSE4.1 round instruction and leaves k in the
 * low mantissa bits of t (valid while |x| log2(e) < 2^22; callers override
 * the result outside a much smaller range).  ln2 is split so that kf*LN2H is
 * exact for |k| < 2^11 without FMA; with FMA contraction it is exact anyway. */
#define FN__LOG2EF 0x1.715476p+0f
#define FN__LN2HF 0x1.62ep-1f
#define FN__LN2LF 0x1.0bfbe8p-15f
#define FN__SHIFTF 0x1.8p23f
/* t = y log2(e) + 1.5 2^23, which holds the integer k nearest y log2(e) in its low bits:
 * k itself, and kf = t - 1.5 2^23 as a float. */
static inline float fn__shifted_log2f(float y) { return y * FN__LOG2EF + FN__SHIFTF; }
static inline int32_t fn__k_of_tf(float t) { return (int32_t)(fn__bits_f(t) - fn__bits_f(FN__SHIFTF)); }
/* x - kf ln2, ln2 as a head and a tail. */
static inline float fn__minus_k_ln2f(float x, float kf) { return (x - kf * FN__LN2HF) - kf * FN__LN2LF; }
/* r, and t into *t (the split exponentials of fn_activations_impl.h keep t, not k). */
static inline float fn__reduce_tf(float x, float *t)
{
    *t = fn__shifted_log2f(x);
    return fn__minus_k_ln2f(x, *t - FN__SHIFTF);
}
static inline float fn__reducef(float x, int32_t *k)
{
    float t;
    const float r = fn__reduce_tf(x, &t);
    *k = fn__k_of_tf(t);
    return r;
}
/* Same for an argument carried as x + lo, |lo| << |x| (GELU tanh form's z): k must
 * come from the sum, or |r| can leave the polynomial's fit range. */
static inline float fn__reduce2_tf(float x, float lo, float *t)
{
    *t = fn__shifted_log2f(x + lo);
    return fn__minus_k_ln2f(x, *t - FN__SHIFTF) + lo;
}
static inline float fn__reduce2f(float x, float lo, int32_t *k)
{
    float t;
    const float r = fn__reduce2_tf(x, lo, &t);
    *k = fn__k_of_tf(t);
    return r;
}
/* Same for x + lo with |lo| <= ulp(x)/2 (an exact product's rounding error): x + lo rounds
 * to x, so k comes from x alone, one addition shorter on the exponential's critical path;
 * lo joins the reduction's small part (|lo - kf LN2L| < 5e-3), so that only that small sum
 * and the final addition round. */
static inline float fn__reduce_pairf(float x, float lo, int32_t *k)
{
    const float t = fn__shifted_log2f(x), kf = t - FN__SHIFTF;
    *k = fn__k_of_tf(t);
    return (x - kf * FN__LN2HF) + (lo - kf * FN__LN2LF);
}

/* P(r) = (expm1(r) - r)/r^2 on |r| <= ln2/2: degree 4, fitted (mpmath,
 * Lawson iteratively reweighted least squares ~ minimax) to relative error of
 * r + r^2 P(r) against expm1(r), coefficients rounded to float one at a time
 * with the rest refitted.  Fit error 2^-26.1 relative. */
static inline float fn__expm1_polyf(float r)
{
    return 0x1.fffffep-2f + r * (0x1.5554b4p-3f + r * (0x1.5556e8p-5f + r * (0x1.122586p-7f + r * 0x1.6ba8p-10f)));
}

/* Multiply by 2^k as 2^(k>>1) * 2^(k-(k>>1)): both factors stay normal floats
 * for k in [-252, 254], so results that overflow or land in the subnormal
 * range are rounded once, correctly, by the last multiply. */
static inline float fn__scalef(float p, int32_t k)
{
    const int32_t k1 = k >> 1;
    return p * fn__pow2f(k1) * fn__pow2f(k - k1);
}
/* 2^(k+64) for k in [-190, 63], a normal float.  The exponent sum is unsigned: lanes whose
 * k is garbage (arguments past the reduction's range, selected away by the callers) must
 * not overflow a signed int. */
static inline float fn__pow2_plus64f(int32_t k) { return fn__from_bits_f(((uint32_t)k + (64u + 127u)) << 23); }
/* The same for k in [-189, 63] (every exp of a non-positive argument; p in [2^-6, 2]): p
 * 2^(k+64) is exact and normal, the constant 2^-64 rounds once -- the same result as
 * fn__scalef with fewer integer operations (one power of two built instead of two). */
static inline float fn__scale_negf(float p, int32_t k)
{
    return p * fn__pow2_plus64f(k) * 0x1p-64f;
}

/* expm1(r) and e^(k ln2 + r) from the reduced argument. */
static inline float fn__expm1_reducedf(float r) { return r + r * r * fn__expm1_polyf(r); }
static inline float fn__exp_reducedf(float r, int32_t k)
{
    return fn__scalef(1.0f + fn__expm1_reducedf(r), k);
}
/* The same for a reduction of an argument in [-107, 0] (k in [-154, 0]). */
static inline float fn__exp_neg_reducedf(float r, int32_t k)
{
    return fn__scale_negf(1.0f + fn__expm1_reducedf(r), k);
}

/* e^x without the handling of arguments beyond the range of float results. */
static inline float fn__exp_in_range(float x)
{
    int32_t k;
    const float r = fn__reducef(x, &k);
    return fn__exp_reducedf(r, k);
}

static inline float fn_expf(float x)
{
    float y = fn__exp_in_range(x);
    /* Between 88.72 and 100 (and -103.97 and -110) the scaling above already
     * overflows/underflows with correct rounding; beyond, k is meaningless.
     * These are selects on the result, not a clamp of x. */
    y = x > 100.0f ? FN__INFF : y;
    y = x < -110.0f ? 0.0f : y;
    return y;
}

/* exp for x <= 0 (and NaN): fn_expf's result bit for bit (tools/math_accuracy.c checks
 * every such float), for the exp(-|z|) of sigmoid, softplus and the negative branches of
 * gradients.  The argument is clamped at -104, where exp already rounds to 0 (e^-103.97 is
 * half the smallest subnormal), which replaces fn_expf's two range selects by one. */
static inline float fn_exp_negf(float x)
{
    int32_t k;
    const float r = fn__reducef(x < -104.0f ? -104.0f : x, &k);
    return fn__exp_neg_reducedf(r, k);
}

/* fn_exp_negf in three steps, for kernels that run them as three loops over a block
 * (fn_activations_impl.h, FN_ACT_SPLIT_EXP): the reduction without the clamp at -104
 * (fn__reduce_tf, or fn__reduce2_tf for fn_exp_neg2f's pair, whose |lo| <= 2^-20 |x| keeps
 * the same k there), the polynomial, and the scaling by 2^k, with the result 0 where k <
 * -150.  The same bits as fn_exp_negf and fn_exp_neg2f, whose clamp gives 0 (the scaling of
 * k = -150 rounds e^-104 to 0): the results of k < -150 round to 0 anyway, and the
 * meaningless k of a huge argument or -inf comes with a t below the threshold too; a NaN
 * argument makes t and the polynomial NaN, which the comparison keeps.
 * (tests/test_activations.py compares the two forms bit for bit.) */
static inline float fn__exp_neg_polyf(float r) { return 1.0f + fn__expm1_reducedf(r); }
static inline float fn__exp_neg_scale_tf(float t, float p)
{
    const float e = fn__scale_negf(p, fn__k_of_tf(t));
    return t < FN__SHIFTF - 150.0f ? 0.0f : e;   /* p 2^k < 2^-150, half the least subnormal */
}

/* e^(x + lo) for x <= 0 and |lo| <= 2^-20 |x| (an argument carried as a compensated pair,
 * GELU's tanh form): the pair is reduced as one number, so lo's digits are not lost to
 * the rounding of x + lo.  x is clamped at -104 like fn_exp_negf, lo is not: callers pass
 * lo = 0 far below that (GELU's tanh form does from |z| = 128), else x + lo can leave the
 * reduction's range. */
static inline float fn_exp_neg2f(float x, float lo)
{
    int32_t k;
    const float r = fn__reduce2f(x < -104.0f ? -104.0f : x, lo, &k);
    return fn__exp_neg_reducedf(r, k);
}

/* a b = p + *err exactly (barring overflow and underflow): one fmaf where the target has
 * FMA, else Dekker's product of the 12-bit halves (each partial product exact in float). */
static inline float fn__two_prodf(float a, float b, float *err)
{
    const float p = a * b;
#if (defined(FN_TARGET_AVX2) && FN_TARGET_AVX2) || defined(__FMA__) || defined(__ARM_FEATURE_FMA)
    *err = fmaf(a, b, -p);
#else
    const float ah = fn__head12f(a), al = a - ah;
    const float bh = fn__head12f(b), bl = b - bh;
    *err = (((ah * bh - p) + ah * bl) + al * bh) + al * bl;
#endif
    return p;
}

/* expm1(x) = 2^k (expm1(r) + (1 - 2^-k)).  For k = 0 this is expm1(r) itself
 * (full relative accuracy near 0); 1 - 2^-k is exact for |k| <= 24 and its
 * rounding is harmless beyond, so the only cancellation-prone add happens on
 * values of similar size.  2^-k is built from k clamped in the integer domain
 * (a 32-bit integer min vectorizes everywhere). */
static inline float fn_expm1f(float x)
{
    int32_t k;
    const float r = fn__reducef(x, &k);
    const float e = fn__expm1_reducedf(r);
    const int32_t kc = k > 32 ? 32 : k;
    const float c = 1.0f - fn__pow2f(-kc);
    float y = fn__scalef(e + c, k);
    y = x > 100.0f ? FN__INFF : y;
    y = x < -20.0f ? -1.0f : y;     /* e^x < 2^-28 there: -1 is the rounded result */
    y = x == 0.0f ? x : y;          /* keeps -0 */
    return y;
}

/* expm1 for x <= 0 (and NaN): fn_expm1f's result bit for bit (tools/math_accuracy.c checks
 * every such float), for the negative branch of elu/selu.  The argument is clamped to
 * [-20, 0] (expm1 is -1 below -20 anyway; values above 0 are the caller's other branch),
 * which keeps k in [-29, 0]: 2^k is then one normal multiply, and no overflow select is
 * needed.  (256, 1024) elu 0.154 -> 0.109 ns per element (AVX-512, C benchmark). */
static inline float fn_expm1_negf(float x)
{
    float xc = x < -20.0f ? -20.0f : x;
    xc = xc > 0.0f ? 0.0f : xc;
    int32_t k;
    const float r = fn__reducef(xc, &k);
    const float e = fn__expm1_reducedf(r);
    const float y = (e + (1.0f - fn__pow2f(-k))) * fn__pow2f(k);
    return x == 0.0f ? x : y;       /* keeps -0 */
}

/* log1p(x) = k ln2 + log(1+f), 1+f = (1+x) 2^-k in [sqrt(1/2), sqrt(2)).
 * k comes from the rounded u = 1+x, but f is formed from x itself:
 * f = x 2^-k + (2^-k - 1), where x 2^-k is exact and 2^-k - 1 exact for
 * k <= 24, so no correction term for the rounding of 1+x is needed (and for
 * k = 0, f = x exactly).  log(1+f) = f - (f^2/2 - s (f^2/2 + R(s^2))),
 * s = f/(2+f), R(z) = 2 atanh(s)/s - 2, which keeps the large term f exact.
 * Q(z) = R(z)/z fitted like the exp polynomial (weight: relative error of
 * log(1+f)); fit error 2^-30.0. */
static inline float fn_log1pf(float x)
{
    const float u = 1.0f + x;
    /* adding 1 - sqrt(1/2) (in the bit domain) moves the exponent step to sqrt(1/2) */
    const uint32_t iu = fn__bits_f(u) + (0x3f800000u - 0x3f3504f3u);
    const int32_t k = (int32_t)(iu >> 23) - 127;
    const int32_t k1 = k >> 1, k2 = k - k1;
    const float s1 = fn__pow2f(-k1), s2 = fn__pow2f(-k2);
    const float f = x * s1 * s2 + (s1 * s2 - 1.0f);
    const float s = f / (2.0f + f);
    const float z = s * s;
    const float R = z * (0x1.55557ap-1f + z * (0x1.995ec6p-2f + z * 0x1.31e646p-2f));
    const float hfsq = 0.5f * f * f;
    const float kf = (float)k;
    float y = kf * FN__LN2HF - ((hfsq - (s * (hfsq + R) + kf * FN__LN2LF)) - f);
    y = x == 0.0f ? x : y;            /* keeps -0 */
    y = x == FN__INFF ? x : y;
    y = x == -1.0f ? -FN__INFF : y;
    y = x < -1.0f ? FN__NANF : y;
    return y;
}

/* log1p(u) for u in [0, 1] only (softplus's log1p(exp(-|z|))), without log1pf's range
 * reduction and special cases: log1p(u) = 2 atanh(s), s = u/(2+u) in [0, 1/3], written
 * 2s + 2s z P(z), z = s^2, P(z) = (atanh(s)/s - 1)/z.  P fitted as the others (weight:
 * relative error of the result), coefficients rounded to float; fit error 2^-27.4.
 * Max error 1.97 ulp over every float in [0, 1] (base and FMA builds; the rounding of
 * 2 + u and of the division, against log1pf's 1.39), for about half its operations.
 * NaN stays NaN; log1p(0) = 0. */
static inline float fn_log1p_unitf(float u)
{
    const float s = u / (2.0f + u);
    const float z = s * s;
    const float P = 0x1.555502p-2f + z * (0x1.99d208p-3f + z * (0x1.1ebd0cp-3f + z * 0x1.1ed7c2p-3f));
    const float t = s + s;
    return t + t * (z * P);
}

/* tanh(a) = q/(q+2), q = expm1(2a), a = |x| (expm1 keeps q's relative accuracy near 0, so
 * no separate small-argument polynomial is needed).  Below a = 0.55 (tanh < 1/2) it is
 * written h - h d, h = q/2, d = q/(q+2): the division's and q + 2's rounding then enter
 * damped by d: 1.86 ulp (FMA builds) / 2.05 ulp (base) over every float, against 2.57
 * for q/(q+2) alone; the former odd polynomial + 1 - 2/(e^{2a}+1) was 1.49 ulp at 1.35x
 * the time.  tanh(a) rounds to 1 from a = 9.01, so a is clamped to 10, which keeps 2^k in
 * range and needs no overflow handling; NaN passes the clamp.  Sign restored by OR-ing
 * the sign bit, which also gives tanh(-0) = -0.  fn_tanhf = fn_tanh_fromf(x, fn__tanh_qf(x)):
 * q = expm1(2 min(|x|, 10)) first, then the rest (the kernels run the halves as two loops,
 * fn_activations_impl.h). */
static inline float fn__tanh_qf(float x)
{
    const float a = fn__absf(x);
    const float ac = a > 10.0f ? 10.0f : a;
    int32_t k;
    const float r = fn__reducef(2.0f * ac, &k);
    const float e = fn__expm1_reducedf(r);
    return (e + (1.0f - fn__pow2f(-k))) * fn__pow2f(k);
}

/* tanh(x) given q = fn__tanh_qf(x). */
static inline float fn_tanh_fromf(float x, float q)
{
    const float a = fn__absf(x);
    const float d = q / (q + 2.0f);
    const float h = 0.5f * q;
    const float y = a < 0.55f ? h - h * d : d;
    return fn__from_bits_f(fn__bits_f(y) | (fn__bits_f(x) & 0x80000000u));
}

static inline float fn_tanhf(float x) { return fn_tanh_fromf(x, fn__tanh_qf(x)); }

/* The tail of the standard normal distribution, T = Phi(-|x|) = erfc(|x|/sqrt2)/2 <= 1/2
 * (float GELU), and through *gauss e^{-x^2/2} (GELU's derivative adds x e^{-x^2/2}/sqrt(2 pi)).
 * Phi(x) = x < 0 ? T : 1 - T; the caller composes it (GELU forms x (1 - T) as x - x T, one
 * rounding fewer).  With a = |x|:  T = e^{-a^2/2} P(a)/Q(a), P/Q ~ erfcx(a/sqrt2)/2 by one
 * rational function of degree 4/5 over all of [0, 14.6] (relative fit error 2^-27.3): Q's
 * degree 5 gives erfcx's 1/a decay, so large a needs no second fit, and one division serves
 * the whole range.  P and Q are evaluated in double: every coefficient is positive, but for
 * large a each Horner step keeps its rounding, and in float the ratio was up to 5 ulp off
 * (so was a float split into Horner on a below 2 and on 1/a above); in double it is exact to
 * float precision.  This replaced two float fits with per-lane selection and two divisions
 * (docs/performance-log.md, second Zen 3 session: faster and more accurate; accuracy in the
 * table above).
 * Its argument is x itself: erfc(-x/sqrt2) would amplify the rounding of x/sqrt2 by ~x^2
 * (GELU had to carry it as a compensated pair), while here x^2 is formed exactly
 * (fn__two_prodf) and e^{-x^2/2} keeps full relative accuracy down to its underflow.  k
 * comes from the head of -x^2/2 alone (the tail is below half its ulp), and the tail joins
 * the reduction's small part (fn__reduce_pairf).  T = 0 beyond a = 14.6 (it underflows from
 * a = 14.5 on; at a = inf, P/Q is NaN, selected away too); NaN propagates.
 * Coefficients: Lawson iteratively reweighted least squares on the linearized rational
 * problem (weight: relative error), against scipy's erfcx in double. */
static inline float fn_normal_tailf(float x, float *gauss)
{
    const float a = fn__absf(x);
    float sq_err;
    const float sq = fn__two_prodf(x, -0.5f * x, &sq_err);    /* -x^2/2 = sq + sq_err */
    int32_t k;
    const float r = fn__reduce_pairf(sq, sq_err, &k);
    const float em1 = fn__expm1_reducedf(r);
    const double ad = a;
    const double P = 0x1.00000019b6deep-1 + ad * (0x1.c1053ecde1a91p-2 + ad * (0x1.779267b0b120ap-3
                     + ad * (0x1.4d47ebd2f90dfp-5 + ad * 0x1.0e42334cba77bp-8)));
    const double Q = 1.0 + ad * (0x1.acc4d02998029p+0 + ad * (0x1.33ffeefafa2e8p+0 + ad * (0x1.e1246f651c151p-2
                     + ad * (0x1.a1bb5a179ef39p-4 + ad * 0x1.52b70d7ca0ac6p-7))));
    /* fn__scale_negf's 2^-64, applied here on the ratio's shorter path instead of last */
    const float R = (float)(P / Q * 0x1p-64);
    const float t = (R + R * em1) * fn__pow2_plus64f(k);
    const float e = fn__exp_neg_reducedf(r, k);
    *gauss = a > 14.6f ? 0.0f : e;
    return a > 14.6f ? 0.0f : t;
}

/* ==================================================================== double */

#define FN__LOG2E 0x1.71547652b82fep+0
#define FN__LN2H 0x1.62e42fefa38p-1     /* 42 bits: kf*LN2H exact for |k| < 2^11 */
#define FN__LN2L 0x1.ef35793c7673p-45
#define FN__SHIFT 0x1.8p52
static inline int64_t fn__k_of_t(double t) { return (int64_t)(fn__bits_d(t) - fn__bits_d(FN__SHIFT)); }
static inline double fn__minus_k_ln2(double x, double kf) { return (x - kf * FN__LN2H) - kf * FN__LN2L; }
static inline double fn__reduce_t(double x, double *t)
{
    *t = x * FN__LOG2E + FN__SHIFT;
    return fn__minus_k_ln2(x, *t - FN__SHIFT);
}
static inline double fn__reduce(double x, int64_t *k)
{
    double t;
    const double r = fn__reduce_t(x, &t);
    *k = fn__k_of_t(t);
    return r;
}
static inline double fn__reduce2(double x, double lo, int64_t *k)
{
    const double t = (x + lo) * FN__LOG2E + FN__SHIFT;
    *k = fn__k_of_t(t);
    return fn__minus_k_ln2(x, t - FN__SHIFT) + lo;
}

/* As fn__expm1_polyf, degree 9, fit error 2^-55.5. */
static inline double fn__expm1_poly(double r)
{
    return 0x1.0000000000005p-1 + r * (0x1.5555555555547p-3 + r * (0x1.55555555521d8p-5 + r * (0x1.111111111628ep-7
           + r * (0x1.6c16c17ef7277p-10 + r * (0x1.a01a0182603eep-13 + r * (0x1.a019a739036e8p-16
           + r * (0x1.71de6da5ad44dp-19 + r * (0x1.28a20d03806cap-22 + r * 0x1.ae9114026acb5p-26))))))));
}

/* k>>1 without a 64-bit arithmetic shift (SSE2/AVX2 have none): bias to
 * non-negative, shift logically.  Valid for |k| < 2^40.  The arithmetic is in uint64: the
 * meaningless k of a huge or non-finite argument (whose result the callers select away)
 * then wraps instead of overflowing int64, which is undefined without -fwrapv (UBSan in
 * tests/test_robust_nonfinite.py); the same bits wherever nothing overflows. */
static inline double fn__scale(double p, int64_t k)
{
    const uint64_t ku = (uint64_t)k;
    const uint64_t k1 = ((ku + 0x10000000000ull) >> 1) - 0x8000000000ull;
    return p * fn__pow2((int64_t)k1) * fn__pow2((int64_t)(ku - k1));
}

/* expm1(r) from the reduced argument, as fn__expm1_reducedf. */
static inline double fn__expm1_reduced(double r) { return r + r * r * fn__expm1_poly(r); }

FN_ELEMENT double fn_exp(double x)
{
    int64_t k;
    const double r = fn__reduce(x, &k);
    const double p = 1.0 + fn__expm1_reduced(r);
    double y = fn__scale(p, k);
    y = x > 720.0 ? FN__INF : y;
    y = x < -760.0 ? 0.0 : y;
    return y;
}

FN_ELEMENT double fn_expm1(double x)
{
    int64_t k;
    const double r = fn__reduce(x, &k);
    const double e = fn__expm1_reduced(r);
    /* SSE2 has no 64-bit integer compare, so the clamp of k is a select on x:
     * above x = 40 (k >= 57) 1 - 2^-k rounds to 1 anyway. */
    const double c = x > 40.0 ? 1.0 : 1.0 - fn__pow2((int64_t)(0 - (uint64_t)k));   /* as fn__scale */
    double y = fn__scale(e + c, k);
    y = x > 720.0 ? FN__INF : y;
    y = x < -40.0 ? -1.0 : y;       /* e^x < 2^-57 */
    y = x == 0.0 ? x : y;
    return y;
}

/* fn_exp for x <= 0 in three steps (fn__reduce_t, then as fn__exp_neg_polyf and the one
 * after it): the same bits as fn_exp there, whose select gives 0 below -760 (k <= -1096),
 * where every k below -1075 gives 0 here (p 2^k < 2^-1075, half the least subnormal). */
static inline double fn__exp_neg_poly(double r) { return 1.0 + fn__expm1_reduced(r); }
static inline double fn__exp_neg_scale_t(double t, double p)
{
    const double e = fn__scale(p, fn__k_of_t(t));
    return t < FN__SHIFT - 1075.0 ? 0.0 : e;
}

/* As fn_log1pf; Q degree 6, fit error 2^-59.1. */
FN_ELEMENT double fn_log1p(double x)
{
    const double u = 1.0 + x;
    const uint64_t iu = fn__bits_d(u) + (0x3ff0000000000000ull - 0x3fe6a09e667f3bcdull);
    const int64_t k = (int64_t)(iu >> 52) - 1023;
    const int64_t k1 = (int64_t)((uint64_t)(k + 4096) >> 1) - 2048, k2 = k - k1;
    const double s1 = fn__pow2(-k1), s2 = fn__pow2(-k2);
    const double f = x * s1 * s2 + (s1 * s2 - 1.0);
    const double s = f / (2.0 + f);
    const double z = s * s;
    const double R = z * (0x1.5555555555593p-1 + z * (0x1.999999997f9ffp-2 + z * (0x1.249249422bd5dp-2
                     + z * (0x1.c71c51d442984p-3 + z * (0x1.74664af4f0865p-3 + z * (0x1.39a064e637db6p-3
                     + z * 0x1.2f1420d327a99p-3))))));
    const double hfsq = 0.5 * f * f;
    /* k as a double without an int64 -> double conversion (none in SSE2/AVX2):
     * the biased exponent field, placed in the mantissa of 2^52, is exact. */
    const double kf = (fn__from_bits_d((iu >> 52) | 0x4330000000000000ull) - 0x1p52) - 1023.0;
    double y = kf * FN__LN2H - ((hfsq - (s * (hfsq + R) + kf * FN__LN2L)) - f);
    y = x == 0.0 ? x : y;
    y = x == FN__INF ? x : y;
    y = x == -1.0 ? -FN__INF : y;
    y = x < -1.0 ? FN__NAN : y;
    return y;
}

/* tanh: odd polynomial below 0.55, 1 - 2/(e^{2a}+1) above (no cancellation there: the
 * subtracted term is below 1/2).  T(z) = (tanh(x)/x - 1)/z fitted on z = x^2 in
 * [0, 0.55^2], weight relative error of tanh, degree 9, fit error 2^-55.0 (the float
 * version's former form; it now uses expm1).  Sign restored by OR-ing the sign bit:
 * tanh(-0) = -0.  fn_tanh = fn_tanh_from(x, fn__tanh_e(x)): e^{2|x|} first, then the rest
 * (the kernels run the halves as two loops, fn_activations_impl.h). */
static inline double fn__tanh_e(double x) { return fn_exp(2.0 * fn__abs(x)); }

static inline double fn_tanh_from(double x, double e)
{
    const double a = fn__abs(x);
    const double z = a * a;
    const double ys = a + a * (z * (-0x1.55555555554a4p-2 + z * (0x1.1111111103033p-3 + z * (-0x1.ba1ba1adbdd08p-5
                         + z * (0x1.664f45d015c1ep-6 + z * (-0x1.226dde9471265p-7 + z * (0x1.d6c6452555e34p-9
                         + z * (-0x1.7cf52f0e4503dp-10 + z * (0x1.2faab061be43fp-11 + z * (-0x1.b93caf66674edp-13
                         + z * 0x1.ac884c5bd4d4fp-15))))))))));
    const double yl = 1.0 - 2.0 / (e + 1.0);
    const double y = a < 0.55 ? ys : yl;
    return fn__from_bits_d(fn__bits_d(y) | (fn__bits_d(x) & 0x8000000000000000ull));
}

static inline double fn_tanh(double x) { return fn_tanh_from(x, fn__tanh_e(x)); }

/* erfc, three regions, all computed and selected (a = |x|):
 *  a < 0.4:       1 - x E(x^2), E(z) = erf(x)/x (degree 8, 2^-60.5); erf(0.4) < 1/2, so
 *                 the subtraction loses nothing.
 *  0.4 <= a < 2:  e^{-a^2} erfcx(a), erfcx = polynomial in a - 1.25 (degree 20, 2^-55.3).
 *  2 <= a <= 27.3 (erfc underflows at 27.23): erfcx(a) = P(w - wc)/(a + 1),
 *                 w = (a-1)/(a+1) (a polynomial in 1/a^2 would need too high a degree in
 *                 double); P is nearly flat (0.56..0.72), so its Horner sum and the
 *                 rounding of w cost little (degree 18, 2^-55.7).
 * a^2 is carried as hi + lo (hi exact from a 26-bit head of a), so e^{-a^2} keeps full
 * relative accuracy up to the underflow; e^{-a^2} enters as R + R expm1(r), so its rounding
 * is relative to the small expm1(r), and the 2^k scaling comes last (subnormal results
 * rounded once).  One final division (by a + 1, or by 1).  Coefficients rounded to
 * nearest double.  erfc(-a) = 2 - erfc(a). */
FN_ELEMENT double fn_erfc(double x)
{
    const double a = fn__abs(x);
    const double ah = fn__from_bits_d(fn__bits_d(a) & 0xfffffffff8000000ull);
    const double al = a - ah;
    const double hi = ah * ah, lo = al * (a + ah);
    int64_t k;
    const double r = fn__reduce2(-hi, -lo, &k);
    const double em1 = fn__expm1_reduced(r);

    const double d = a - 1.25;
    const double RA = 0x1.78a692138767ap-2 + d * (-0x1.abaacdbfa8b06p-3 + d * (0x1.b56f45eef7e4ap-4 + d * (-0x1.9b635ac624b51p-5
        + d * (0x1.68a25a6642b9fp-6 + d * (-0x1.299636d6c18f2p-7 + d * (0x1.d1b695aa2fdb7p-9 + d * (-0x1.5b8bc94e4b005p-10
        + d * (0x1.f0fe6fe7d065fp-12 + d * (-0x1.55c07c9e3941fp-13 + d * (0x1.c5702b6ba5fb9p-15 + d * (-0x1.22fc56a75b4c7p-16
        + d * (0x1.6a1a01d943ef7p-18 + d * (-0x1.b5b7a42a400e9p-20 + d * (0x1.01643005f65e4p-21 + d * (-0x1.2794f6d9fa961p-23
        + d * (0x1.4ce134ebedc3ep-25 + d * (-0x1.6258df5e5ddebp-27 + d * (0x1.6031fbae1c6dfp-29 + d * (-0x1.eac1c9b9c4827p-31
        + d * 0x1.467cacb645048p-32)))))))))))))))))));
    const double a1 = a + 1.0;
    const double v = (a - 1.0) / a1 - 0x1.433dd05baa5d8p-1;
    const double PB = 0x1.59b85e124ba07p-1 + v * (-0x1.3f1d46ae3e318p-2 + v * (0x1.3168839aebd1ep-10 + v * (0x1.430c90202b3d6p-4
        + v * (-0x1.06dbfa2997822p-10 + v * (-0x1.2c5a519ea40a4p-5 + v * (-0x1.fd29e5e42e6ap-8 + v * (0x1.57ad24f436f66p-6
        + v * (0x1.dc0eab06aa11ap-7 + v * (-0x1.2fb3e1a3ab27fp-7 + v * (-0x1.2917a8a527fa6p-6 + v * (-0x1.cfcb78b61a86fp-9
        + v * (0x1.fb0762a7fce17p-7 + v * (0x1.0c3a69212604ep-6 + v * (-0x1.9ce5393124e74p-9 + v * (-0x1.71bd6fd572c3cp-6
        + v * (-0x1.06157f9ba064fp-6 + v * (0x1.de082fec222e5p-7 + v * 0x1.78ad833515c3bp-6)))))))))))))))));
    const double N = a < 2.0 ? RA : PB;
    const double D = a < 2.0 ? 1.0 : a1;
    double y = fn__scale((N + N * em1) / D, k);
    y = a > 27.3 ? 0.0 : y;
    y = x < 0.0 ? 2.0 - y : y;

    const double z = x * x;
    const double y0 = 1.0 - x * (0x1.20dd750429b6dp+0 + z * (-0x1.812746b037998p-2 + z * (0x1.ce2f21a03c2b1p-4
                         + z * (-0x1.b82ce30e8528cp-6 + z * (0x1.565bcbbc299e9p-8 + z * (-0x1.c02d33140941ap-11
                         + z * (0x1.f986401e79d91p-14 + z * (-0x1.f125e9754916ap-17 + z * 0x1.7dd04873694efp-20))))))));
    return a < 0.4 ? y0 : y;
}

#endif /* FN_MATH_H */
