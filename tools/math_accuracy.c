/* Accuracy check for fastnorm/_ext/include/fn_math.h.
 *
 * Build and run from the repository root (links libm only; threads come from
 * glibc's libc):
 *
 *   gcc -O2 tools/math_accuracy.c -lm -o /tmp/math_accuracy && /tmp/math_accuracy
 *   gcc -O2 -DFN_ACC_AVX2 tools/math_accuracy.c -lm -o /tmp/math_accuracy_fma   # AVX2+FMA variant
 *
 * FN_ACC_AVX2 puts `#pragma GCC target("avx2,fma")` in front of the header, as
 * the package's AVX2 translation unit does; gcc then contracts a*b+c into FMA
 * (GNU C default -ffp-contract=fast), so that variant's results differ in the
 * last bits and must be checked separately.  Results do not depend on
 * vectorization (no -ffast-math), so checking the scalar code is enough.
 *
 * float functions: every finite float (2^32 - 2^24 inputs), reference = glibc's
 *   double function rounded nowhere (its error, < 1 double ulp = 2^-29 float ulp,
 *   is far below what is measured).
 * double functions: random inputs (uniform over the bit patterns of the
 *   interesting range, i.e. over all exponents, and uniform in value over it),
 *   plus thresholds and branch points; reference = long double libm (expl,
 *   expm1l, log1pl, tanhl, erfcl), error reported in double ulp.
 * Error in ulp = |y - ref| / ulp(ref), ulp of the output type at ref, with
 * 2^-149 / 2^-1074 in the subnormal range (so subnormal results are judged in
 * absolute terms, which is what the type can represent).  Results that are
 * infinite must match the correctly rounded infinity exactly.
 *
 * Options: argv[1] = number of random double samples per function (default 1e8),
 *          argv[2] = "quick" to test only every 16th float.
 */
#ifdef FN_ACC_AVX2
#pragma GCC target("avx2,fma")
#endif
#include <float.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "../fastnorm/_ext/include/fn_math.h"

#define NTHREADS 2

typedef float (*ff_t)(float);
typedef double (*dd_t)(double);
typedef long double (*ll_t)(long double);

/* noinline wrappers: each fn_* compiled once, as a plain function. */
#define WRAPF(name) static __attribute__((noinline)) float w_##name(float x) { return name(x); }
#define WRAPD(name) static __attribute__((noinline)) double w_##name(double x) { return name(x); }
WRAPF(fn_expf) WRAPF(fn_expm1f) WRAPF(fn_log1pf) WRAPF(fn_tanhf)
/* fn_normal_tailf's two outputs, Phi(-|x|) and e^{-x^2/2}, and their double references */
static __attribute__((noinline)) float w_fn_normal_tailf(float x) { float g; return fn_normal_tailf(x, &g); }
static __attribute__((noinline)) float w_fn_normal_gaussf(float x) { float g; fn_normal_tailf(x, &g); return g; }
static double normal_tail(double x) { return 0.5 * erfc(fabs(x) * 0.70710678118654752440); }
static double gauss(double x) { return exp(-0.5 * x * x); }
WRAPF(fn_exp_negf) WRAPF(fn_expm1_negf)
WRAPD(fn_exp) WRAPD(fn_expm1) WRAPD(fn_log1p) WRAPD(fn_tanh) WRAPD(fn_erfc)

static int same_nan_or_value_f(float a, float b)
{
    if (isnan(a) || isnan(b)) return isnan(a) && isnan(b);
    return a == b && !signbit(a) == !signbit(b);
}
static int same_nan_or_value_d(double a, double b)
{
    if (isnan(a) || isnan(b)) return isnan(a) && isnan(b);
    return a == b && !signbit(a) == !signbit(b);
}

/* ulp error of float y against reference r (double). Returns +inf for a
 * mismatch in NaN/inf/sign-of-zero class. */
static double ulp_err_f(float y, double r)
{
    if (isnan(r) || isnan(y)) return (isnan(r) && isnan(y)) ? 0.0 : INFINITY;
    const float rr = (float)r;
    if (isinf(rr) || isinf(y)) return (rr == y) ? 0.0 : INFINITY;
    if (r == 0.0 && y == 0.0) return !signbit(r) == !signbit(y) ? 0.0 : INFINITY;
    double ulp;
    if (fabs(r) < 0x1p-126) ulp = 0x1p-149;
    else { int e; frexp(r, &e); ulp = ldexp(1.0, e - 24); }
    return fabs((double)y - r) / ulp;
}

static double ulp_err_d(double y, long double r)
{
    if (isnan(r) || isnan(y)) return (isnan(r) && isnan(y)) ? 0.0 : INFINITY;
    const double rr = (double)r;
    if (isinf(rr) || isinf(y)) return (rr == y) ? 0.0 : INFINITY;
    if (r == 0.0L && y == 0.0) return !signbit(r) == !signbit(y) ? 0.0 : INFINITY;
    long double ulp;
    if (fabsl(r) < 0x1p-1022L) ulp = 0x1p-1074L;
    else { int e; frexpl(r, &e); ulp = ldexpl(1.0L, e - 53); }
    return (double)(fabsl((long double)y - r) / ulp);
}

/* ------------------------------------------------------------------ float */
struct fjob {
    ff_t f; dd_t ref; uint64_t lo, hi, step;
    double maxerr; float worst; uint64_t n, n1, n2;   /* n1: > 1 ulp, n2: > 2 ulp */
};

static void *frun(void *arg)
{
    struct fjob *j = arg;
    double maxerr = 0; float worst = 0; uint64_t n = 0, n1 = 0, n2 = 0;
    for (uint64_t b = j->lo; b < j->hi; b += j->step) {
        uint32_t u = (uint32_t)b;
        if ((u & 0x7f800000u) == 0x7f800000u) continue;     /* inf/NaN: special checks */
        float x; memcpy(&x, &u, 4);
        const float y = j->f(x);
        const double e = ulp_err_f(y, j->ref((double)x));
        ++n; n1 += e > 1.0; n2 += e > 2.0;
        if (e > maxerr || isnan(e)) { maxerr = isnan(e) ? INFINITY : e; worst = x; }
    }
    j->maxerr = maxerr; j->worst = worst; j->n = n; j->n1 = n1; j->n2 = n2;
    return NULL;
}

static void check_float(const char *name, ff_t f, dd_t ref, uint64_t step)
{
    struct fjob jobs[NTHREADS];
    pthread_t th[NTHREADS];
    const uint64_t total = 1ull << 32, chunk = total / NTHREADS;
    for (int t = 0; t < NTHREADS; ++t) {
        jobs[t] = (struct fjob){ f, ref, chunk * t, t == NTHREADS - 1 ? total : chunk * (t + 1), step, 0, 0, 0, 0, 0 };
        pthread_create(&th[t], NULL, frun, &jobs[t]);
    }
    double maxerr = 0; float worst = 0; uint64_t n = 0, n1 = 0, n2 = 0;
    for (int t = 0; t < NTHREADS; ++t) {
        pthread_join(th[t], NULL);
        if (jobs[t].maxerr > maxerr) { maxerr = jobs[t].maxerr; worst = jobs[t].worst; }
        n += jobs[t].n; n1 += jobs[t].n1; n2 += jobs[t].n2;
    }
    const float y = f(worst);
    printf("%-10s max %6.3f ulp at x = %-16a (%.9g): got %a, ref %a; >1ulp: %llu, >2ulp: %llu of %llu\n",
           name, maxerr, worst, worst, y, ref(worst), (unsigned long long)n1, (unsigned long long)n2,
           (unsigned long long)n);
    fflush(stdout);
}

/* The x <= 0 variants (fn_exp_negf, fn_expm1_negf) must equal the full functions bit for
 * bit on their domain: +0 and every float with the sign bit set (-0, negatives, -inf,
 * negative-signed NaNs; NaN only as NaN). */
static void check_negative_variant(const char *name, ff_t variant, ff_t full, const char *full_name)
{
    uint64_t differ = 0;
    float first = 0;
    for (uint64_t u = 0x80000000ull; u <= 0x100000000ull; ++u) {
        const uint32_t bits = u == 0x100000000ull ? 0u : (uint32_t)u;
        float x;
        memcpy(&x, &bits, sizeof x);
        const float a = variant(x), b = full(x);
        if (!(isnan(a) && isnan(b)) && memcmp(&a, &b, sizeof a)) {
            if (!differ++) first = x;
        }
    }
    printf("%-10s equals %s bit for bit on x <= 0: %s", name, full_name, differ ? "NO" : "yes");
    if (differ)
        printf(" (%llu differ, first at %a)", (unsigned long long)differ, first);
    printf("\n");
    fflush(stdout);
}

/* ----------------------------------------------------------------- double */
static uint64_t rng_next(uint64_t *s)    /* splitmix64 */
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

struct djob {
    dd_t f; ll_t ref; double lo, hi;   /* interesting range of x */
    uint64_t nsamp, seed;
    double maxerr, worst; uint64_t n, n1, n2;
};

static void dstep(struct djob *j, double x, double *maxerr, double *worst)
{
    const double e = ulp_err_d(j->f(x), j->ref((long double)x));
    ++j->n; j->n1 += e > 1.0; j->n2 += e > 2.0;
    if (e > *maxerr || isnan(e)) { *maxerr = isnan(e) ? INFINITY : e; *worst = x; }
}

static void *drun(void *arg)
{
    struct djob *j = arg;
    double maxerr = 0, worst = 0;
    uint64_t s = j->seed;
    const double amax = fmax(fabs(j->lo), fabs(j->hi));
    const uint64_t bmax = 0x7ff0000000000000ull;   /* +inf: bit patterns below are finite */
    uint64_t amax_bits; memcpy(&amax_bits, &amax, 8);
    for (uint64_t i = 0; i < j->nsamp; ++i) {
        const uint64_t r = rng_next(&s);
        double x;
        switch (i & 3) {
        case 0: /* uniform over bit patterns of |x| in [0, amax]: every exponent equally */
        case 1: {
            uint64_t b = r % (amax_bits + 1);
            memcpy(&x, &b, 8);
            if (r >> 63) x = -x;
            break;
        }
        case 2: /* uniform in value over the range */
            x = j->lo + (j->hi - j->lo) * ((double)(r >> 11) * 0x1p-53);
            break;
        default: /* uniform over bit patterns of any finite double */
        {
            uint64_t b = r % bmax;
            memcpy(&x, &b, 8);
            if (r >> 63) x = -x;
        }
        }
        if ((i & 3) != 3 && (x < j->lo || x > j->hi)) continue;
        dstep(j, x, &maxerr, &worst);
    }
    j->maxerr = maxerr; j->worst = worst;
    return NULL;
}

/* Deterministic extra points: neighbourhoods (+-64 ulp) of every point in pts. */
static void dpoints(struct djob *j, const double *pts, int np, double *maxerr, double *worst)
{
    for (int p = 0; p < np; ++p) {
        double x = pts[p];
        for (int d = 0; d < 64; ++d) x = nextafter(x, -INFINITY);
        for (int d = 0; d < 129; ++d) { dstep(j, x, maxerr, worst); x = nextafter(x, INFINITY); }
    }
}

static void check_double(const char *name, dd_t f, ll_t ref, double lo, double hi, uint64_t nsamp,
                         const double *pts, int np)
{
    struct djob jobs[NTHREADS];
    pthread_t th[NTHREADS];
    for (int t = 0; t < NTHREADS; ++t) {
        jobs[t] = (struct djob){ f, ref, lo, hi, nsamp / NTHREADS, 0x1234567ull + 7919ull * t, 0, 0, 0, 0, 0 };
        pthread_create(&th[t], NULL, drun, &jobs[t]);
    }
    double maxerr = 0, worst = 0; uint64_t n = 0, n1 = 0, n2 = 0;
    for (int t = 0; t < NTHREADS; ++t) {
        pthread_join(th[t], NULL);
        if (jobs[t].maxerr > maxerr) { maxerr = jobs[t].maxerr; worst = jobs[t].worst; }
        n += jobs[t].n; n1 += jobs[t].n1; n2 += jobs[t].n2;
    }
    struct djob pj = { f, ref, lo, hi, 0, 0, 0, 0, 0, 0, 0 };
    dpoints(&pj, pts, np, &maxerr, &worst);
    n += pj.n; n1 += pj.n1; n2 += pj.n2;
    printf("%-10s max %6.3f ulp at x = %-24a (%.17g): got %a, ref %La; >1ulp: %llu, >2ulp: %llu of %llu\n",
           name, maxerr, worst, worst, f(worst), ref(worst), (unsigned long long)n1, (unsigned long long)n2,
           (unsigned long long)n);
    fflush(stdout);
}

/* --------------------------------------------------------- special values */
static int nfail = 0;
static void sf(const char *name, ff_t f, float x, float want)
{
    const float y = f(x);
    const int ok = same_nan_or_value_f(y, want);
    nfail += !ok;
    if (!ok) printf("  FAIL %s(%a) = %a, want %a\n", name, x, y, want);
}
static void sd(const char *name, dd_t f, double x, double want)
{
    const double y = f(x);
    const int ok = same_nan_or_value_d(y, want);
    nfail += !ok;
    if (!ok) printf("  FAIL %s(%a) = %a, want %a\n", name, x, y, want);
}

static void specials(void)
{
    const float fi = INFINITY, fn = NAN;
    const double di = INFINITY, dn = NAN;
    /* float */
    sf("expf", w_fn_expf, fn, fn);      sf("expf", w_fn_expf, fi, fi);       sf("expf", w_fn_expf, -fi, 0.0f);
    sf("expf", w_fn_expf, 0.0f, 1.0f);  sf("expf", w_fn_expf, -0.0f, 1.0f);
    sf("expf", w_fn_expf, 0x1.62e42ep+6f, (float)exp(0x1.62e42ep+6));          /* largest finite result */
    sf("expf", w_fn_expf, 0x1.62e430p+6f, fi);                                   /* first overflow */
    sf("expf", w_fn_expf, -0x1.9fe368p+6f, 0x1p-149f);                          /* smallest subnormal */
    sf("expf", w_fn_expf, -0x1.9fe36ap+6f, 0.0f);                               /* first underflow to 0 */
    sf("expf", w_fn_expf, FLT_MAX, fi);  sf("expf", w_fn_expf, -FLT_MAX, 0.0f);
    sf("expm1f", w_fn_expm1f, fn, fn);  sf("expm1f", w_fn_expm1f, fi, fi);   sf("expm1f", w_fn_expm1f, -fi, -1.0f);
    sf("expm1f", w_fn_expm1f, 0.0f, 0.0f); sf("expm1f", w_fn_expm1f, -0.0f, -0.0f);
    sf("expm1f", w_fn_expm1f, 0x1p-149f, 0x1p-149f); sf("expm1f", w_fn_expm1f, -0x1p-149f, -0x1p-149f);
    sf("expm1f", w_fn_expm1f, 0x1.62e42ep+6f, (float)expm1(0x1.62e42ep+6)); sf("expm1f", w_fn_expm1f, 0x1.62e430p+6f, fi);
    sf("expm1f", w_fn_expm1f, -FLT_MAX, -1.0f); sf("expm1f", w_fn_expm1f, FLT_MAX, fi);
    sf("log1pf", w_fn_log1pf, fn, fn);  sf("log1pf", w_fn_log1pf, fi, fi);   sf("log1pf", w_fn_log1pf, -fi, fn);
    sf("log1pf", w_fn_log1pf, -1.0f, -fi); sf("log1pf", w_fn_log1pf, -1.5f, fn); sf("log1pf", w_fn_log1pf, -FLT_MAX, fn);
    sf("log1pf", w_fn_log1pf, nextafterf(-1.0f, -2.0f), fn);
    sf("log1pf", w_fn_log1pf, 0.0f, 0.0f); sf("log1pf", w_fn_log1pf, -0.0f, -0.0f);
    sf("log1pf", w_fn_log1pf, 0x1p-149f, 0x1p-149f); sf("log1pf", w_fn_log1pf, -0x1p-149f, -0x1p-149f);
    sf("log1pf", w_fn_log1pf, FLT_MAX, (float)log1p(FLT_MAX));
    sf("tanhf", w_fn_tanhf, fn, fn);    sf("tanhf", w_fn_tanhf, fi, 1.0f);    sf("tanhf", w_fn_tanhf, -fi, -1.0f);
    sf("tanhf", w_fn_tanhf, 0.0f, 0.0f); sf("tanhf", w_fn_tanhf, -0.0f, -0.0f);
    sf("tanhf", w_fn_tanhf, 0x1p-149f, 0x1p-149f); sf("tanhf", w_fn_tanhf, -0x1p-149f, -0x1p-149f);
    sf("tanhf", w_fn_tanhf, 10.0f, 1.0f); sf("tanhf", w_fn_tanhf, -10.0f, -1.0f);
    sf("tanhf", w_fn_tanhf, FLT_MAX, 1.0f); sf("tanhf", w_fn_tanhf, -FLT_MAX, -1.0f);
    sf("normal_tailf", w_fn_normal_tailf, fn, fn); sf("normal_tailf", w_fn_normal_tailf, fi, 0.0f);
    sf("normal_tailf", w_fn_normal_tailf, -fi, 0.0f); sf("normal_tailf", w_fn_normal_tailf, 0.0f, 0.5f);
    sf("normal_tailf", w_fn_normal_tailf, -0.0f, 0.5f); sf("normal_tailf", w_fn_normal_tailf, FLT_MAX, 0.0f);
    sf("normal_tailf", w_fn_normal_tailf, -FLT_MAX, 0.0f); sf("normal_tailf", w_fn_normal_tailf, -15.0f, 0.0f);
    sf("normal_tailf", w_fn_normal_tailf, -14.0f, (float)normal_tail(-14.0));
    sf("normal_gaussf", w_fn_normal_gaussf, fn, fn); sf("normal_gaussf", w_fn_normal_gaussf, fi, 0.0f);
    sf("normal_gaussf", w_fn_normal_gaussf, -fi, 0.0f); sf("normal_gaussf", w_fn_normal_gaussf, 0.0f, 1.0f);
    /* double */
    sd("exp", w_fn_exp, dn, dn);        sd("exp", w_fn_exp, di, di);          sd("exp", w_fn_exp, -di, 0.0);
    sd("exp", w_fn_exp, 0.0, 1.0);      sd("exp", w_fn_exp, -0.0, 1.0);
    sd("exp", w_fn_exp, 0x1.62e42fefa39efp+9, (double)expl(0x1.62e42fefa39efp+9L));  /* largest finite */
    sd("exp", w_fn_exp, 0x1.62e42fefa39f0p+9, di);
    sd("exp", w_fn_exp, -0x1.74910d52d3051p+9, 0x1p-1074);                   /* smallest subnormal */
    sd("exp", w_fn_exp, -0x1.74910d52d3052p+9, 0.0);
    sd("exp", w_fn_exp, DBL_MAX, di);   sd("exp", w_fn_exp, -DBL_MAX, 0.0);
    sd("expm1", w_fn_expm1, dn, dn);    sd("expm1", w_fn_expm1, di, di);      sd("expm1", w_fn_expm1, -di, -1.0);
    sd("expm1", w_fn_expm1, 0.0, 0.0);  sd("expm1", w_fn_expm1, -0.0, -0.0);
    sd("expm1", w_fn_expm1, 0x1p-1074, 0x1p-1074); sd("expm1", w_fn_expm1, -0x1p-1074, -0x1p-1074);
    sd("expm1", w_fn_expm1, 0x1.62e42fefa39f0p+9, di); sd("expm1", w_fn_expm1, -DBL_MAX, -1.0); sd("expm1", w_fn_expm1, DBL_MAX, di);
    sd("log1p", w_fn_log1p, dn, dn);    sd("log1p", w_fn_log1p, di, di);      sd("log1p", w_fn_log1p, -di, dn);
    sd("log1p", w_fn_log1p, -1.0, -di); sd("log1p", w_fn_log1p, -1.5, dn);    sd("log1p", w_fn_log1p, -DBL_MAX, dn);
    sd("log1p", w_fn_log1p, nextafter(-1.0, -2.0), dn);
    sd("log1p", w_fn_log1p, 0.0, 0.0);  sd("log1p", w_fn_log1p, -0.0, -0.0);
    sd("log1p", w_fn_log1p, 0x1p-1074, 0x1p-1074); sd("log1p", w_fn_log1p, -0x1p-1074, -0x1p-1074);
    sd("log1p", w_fn_log1p, DBL_MAX, (double)log1pl(DBL_MAX));
    sd("tanh", w_fn_tanh, dn, dn);      sd("tanh", w_fn_tanh, di, 1.0);       sd("tanh", w_fn_tanh, -di, -1.0);
    sd("tanh", w_fn_tanh, 0.0, 0.0);    sd("tanh", w_fn_tanh, -0.0, -0.0);
    sd("tanh", w_fn_tanh, 0x1p-1074, 0x1p-1074); sd("tanh", w_fn_tanh, -0x1p-1074, -0x1p-1074);
    sd("tanh", w_fn_tanh, 20.0, 1.0);   sd("tanh", w_fn_tanh, -20.0, -1.0);
    sd("tanh", w_fn_tanh, DBL_MAX, 1.0); sd("tanh", w_fn_tanh, -DBL_MAX, -1.0);
    sd("erfc", w_fn_erfc, dn, dn);      sd("erfc", w_fn_erfc, di, 0.0);       sd("erfc", w_fn_erfc, -di, 2.0);
    sd("erfc", w_fn_erfc, 0.0, 1.0);    sd("erfc", w_fn_erfc, -0.0, 1.0);
    sd("erfc", w_fn_erfc, -7.0, 2.0);   sd("erfc", w_fn_erfc, DBL_MAX, 0.0);  sd("erfc", w_fn_erfc, -DBL_MAX, 2.0);
    sd("erfc", w_fn_erfc, 27.0, (double)erfcl(27.0L)); sd("erfc", w_fn_erfc, 28.0, 0.0);
    printf("special values: %s (%d failures)\n", nfail ? "FAIL" : "all OK", nfail);
}

int main(int argc, char **argv)
{
    const uint64_t nsamp = argc > 1 ? (uint64_t)atof(argv[1]) : 100000000ull;
    const uint64_t step = (argc > 2 && !strcmp(argv[2], "quick")) ? 16 : 1;
#ifdef FN_ACC_AVX2
    printf("fn_math.h accuracy, AVX2+FMA variant (FMA contraction)\n");
#else
    printf("fn_math.h accuracy, baseline variant (no FMA)\n");
#endif
    specials();

    printf("float, %s finite inputs:\n", step == 1 ? "all" : "every 16th");
    check_float("expf", w_fn_expf, exp, step);
    check_float("expm1f", w_fn_expm1f, expm1, step);
    check_float("log1pf", w_fn_log1pf, log1p, step);
    check_float("tanhf", w_fn_tanhf, tanh, step);
    check_float("normal_tailf", w_fn_normal_tailf, normal_tail, step);
    check_float("normal_gaussf", w_fn_normal_gaussf, gauss, step);
    check_negative_variant("exp_negf", w_fn_exp_negf, w_fn_expf, "expf");
    check_negative_variant("expm1_negf", w_fn_expm1_negf, w_fn_expm1f, "expm1f");

    printf("double, %.3g random inputs per function + thresholds/branch points:\n", (double)nsamp);
    const double ln2 = 0x1.62e42fefa39efp-1;
    {
        const double pts[] = { 0x1.62e42fefa39efp+9, -0x1.6232bdd7abcd2p+9, -0x1.74910d52d3051p+9, -0x1.74385446d71c3p+9,
                               ln2 / 2, -ln2 / 2, 3 * ln2 / 2, -3 * ln2 / 2, 0x1p-30, -0x1p-30, 1.0, -1.0, 0.0 };
        check_double("exp", w_fn_exp, expl, -760, 720, nsamp, pts, sizeof pts / sizeof *pts);
    }
    {
        const double pts[] = { 0x1.62e42fefa39efp+9, ln2 / 2, -ln2 / 2, 3 * ln2 / 2, -3 * ln2 / 2, 0x1p-27, -0x1p-27,
                               -37.5, -40.0, 0x1p-1022, -0x1p-1022, 0.0 };
        check_double("expm1", w_fn_expm1, expm1l, -60, 720, nsamp, pts, sizeof pts / sizeof *pts);
    }
    {
        const double pts[] = { -1.0, 0x1.6a09e667f3bcdp-1 - 1, 0x1.6a09e667f3bcdp+0 - 1, 0x1.6a09e667f3bcdp+0 * 2 - 1,
                               0x1p-27, -0x1p-27, 0x1p53, 0x1p54, DBL_MAX, 0x1p-1022, 0.0 };
        check_double("log1p", w_fn_log1p, log1pl, -1.0, DBL_MAX, nsamp, pts, sizeof pts / sizeof *pts);
    }
    {
        const double pts[] = { 0.55, -0.55, 0x1p-27, -0x1p-27, 19.0, 0x1p-1022, 0.0 };
        check_double("tanh", w_fn_tanh, tanhl, -40, 40, nsamp, pts, sizeof pts / sizeof *pts);
    }
    {
        const double pts[] = { 0.0, 4.0, 26.5, 26.55, 27.2, 27.22, 27.3, -5.9, -6.0, 0x1p-27, -0x1p-27 };
        check_double("erfc", w_fn_erfc, erfcl, -10, 28, nsamp, pts, sizeof pts / sizeof *pts);
    }
    return nfail != 0;
}
