/* Template of the normalization kernels; see fn_common.h for how it is instantiated and
 * fn_normalization.h for the (P, A, C, B) geometry of the per-channel kernels.
 *
 * Statistics.  Mean and variance come from ONE pass of sums of the data shifted by the
 * unit's first element x0 (0 where that is not finite: fn_sums_center), accumulated in
 * double: s1 = sum(x - x0), s2 = sum((x - x0)^2), mean = x0 + s1/n, M2 = s2 - s1^2/n.
 * Measured on this machine (shared/notes) as fast as a plain one-pass sum/sum-of-squares
 * and as accurate as float64 two-pass (~6e-8 relative) even for 1e4 + randn float32 data,
 * where a float32 E[x^2] - E[x]^2 is off by O(1); Welford was 10x slower (one division per
 * element).  The shift makes s1/n of the order of the spread, so the subtraction in M2 does
 * not cancel.
 *
 * Determinism.  Every reduction here covers a fixed set of elements in a fixed order
 * (one unit, one row, or one caller-chosen block of rows); the callers (normalization.pyx)
 * choose units and blocks from the shape alone and combine block partials in index
 * order, so results do not depend on the number of threads.
 *
 * Output passes.  Statistics and affine are folded per unit into (mhi, scale, shift) and
 * one fused pass writes y = (x - mhi) * scale + shift, where mhi is the double mean rounded
 * to T and its rounding error lo = mean - mhi is folded into the shift in double,
 * shift = b - lo * scale (fn_affine_shift in fn_normalization.h, which also says what an
 * infinite scale gives): x - mhi is exact when x is near the mean (Sterbenz), so a float32
 * mean of 1e4 costs no accuracy (folding the whole mean into the shift, x*scale + (b -
 * mean*scale), would lose ~1e-3 to cancellation there).  The NumPy paths compute the
 * shift with the same operations (normalization._affine_params).
 * (Until 2026-12 the kernels took mhi and lo separately and computed
 * ((x - mhi) - lo) * scale + shift: a fourth per-channel vector and one more subtraction
 * per element; channels-last (4096, 1024) float32 batch norm's output pass ran 1.27-1.34x
 * faster with three: kernel through ctypes, 1 thread, interleaved.)  The row kernels of
 * layer and RMS norm, whose per-column vectors are the weight and bias, fold lo into a
 * scalar per row instead: ((x - mhi) * rstd + o) [* w] [+ b], o = -lo * rstd
 * (fn_affine_shift) rounded once to T (row_output; until 2026-12 ((x - mhi) - lo) * rstd:
 * with FMA one operation per element fewer, layer norm (32, 768) float32 forward 1.05x
 * faster through the API, 1 thread, and at most as far from float64 on random rows).
 */
#include <math.h>
#include "fn_normalization.h"
#include "fn_real.h"
#include "fn_stream.h"

#define T FN_T

/* The run reductions below read one run front to back, one stream.  (Four quarters side
 * by side helped batch norm only while it visited a channel's runs 800 KB apart; in the
 * address-order visits of fn_norm_stats_runs / fn_norm_dual_runs below one stream is
 * faster: (64, 64, 56, 56) float32 statistics 2.46 -> 1.39 ms, dual sums 3.65 -> 2.17 ms,
 * 1 thread, C micro-benchmark.) */

/* Sixteen double lanes, lane j taking elements j, j + 16, j + 32, ... of a run: two zmm
 * registers (AVX-512) or four ymm (AVX2), added up at the end as one tree, lane j += lane
 * j + w for w = 8, 4, 2, 1, which is the same order for both, so that the two variants give
 * the same bits for the whole pieces.  The reductions below use them for whole 16-element
 * pieces and add the rest (left to gcc, which may vectorize a tail differently per variant)
 * in order: an order fixed by the code rather than by the vectorizer, so that the loop can
 * also ask for lines of the next run (gcc does not vectorize a loop with a prefetch in it).
 * Written with intrinsics, not as loops over lane arrays for gcc to vectorize: gcc 12 took
 * such trees through the stack (each level's stores read back by the next; a fifth of layer
 * norm (32, 768) with AVX-512), converted the upper half of 16 floats by an extract where a
 * second 8-float load converts directly, and kept one of the AVX2 float32 variant's partial
 * sums on the stack (statistics 1.7-3.4x slower).  gcc's own reductions, which the SSE2
 * variant keeps, carry one vector of partial sums per sum: on Zen 3 (AVX2) the float32
 * statistics then wait on the latency of one add or multiply-add per 8 elements, and the
 * tree went through the stack.
 * AVX-512 on Zen 4, through the API, both builds in one process, paired medians, 1 / 2
 * threads, against gcc's reduction: the tree in registers alone, layer norm (32, 768) 1.23x /
 * 1.22x, (8192, 768) 1.08x / level, batch norm (256, 64, 14, 14) 1.10x / 1.09x; the direct
 * conversions on top of it, layer norm (32, 768) 1.05x / 1.05x, (8192, 768) 1.10x / level,
 * group norm (16, 256, 32, 32) 1.05x / 1.05x, batch norm (256, 64, 14, 14) 1.04x / 1.05x. */
#if FN_TARGET_AVX2
#define FN_LANES16 1
/* Always inlined, like the reductions built from them: left to gcc, it kept some of the
 * reductions as calls, and the AVX-512 kernels then compiled otherwise than before. */
#define FN_LANES_INLINE __attribute__((always_inline))
#include <immintrin.h>
#if FN_ISA_LEVEL == FN_ISA_AVX512
#define LANE_VECS 2
#define VPD __m512d
#define VPD_SET1 _mm512_set1_pd
#define VPD_ADD _mm512_add_pd
#define VPD_SUB _mm512_sub_pd
#define VPD_MUL _mm512_mul_pd
#define VPD_FMA _mm512_fmadd_pd
#define VPD_LOADU _mm512_loadu_pd
#define VPD_STOREU _mm512_storeu_pd
#define VPD_LOAD_PS(p) _mm512_cvtps_pd(_mm256_loadu_ps(p))           /* 8 floats as doubles */
#define VPD_LOAD_PS_LESS(p, m) _mm512_cvtps_pd(_mm256_sub_ps(_mm256_loadu_ps(p), _mm256_set1_ps(m)))
#else
#define LANE_VECS 4
#define VPD __m256d
#define VPD_SET1 _mm256_set1_pd
#define VPD_ADD _mm256_add_pd
#define VPD_SUB _mm256_sub_pd
#define VPD_MUL _mm256_mul_pd
#define VPD_FMA _mm256_fmadd_pd
#define VPD_LOADU _mm256_loadu_pd
#define VPD_STOREU _mm256_storeu_pd
#define VPD_LOAD_PS(p) _mm256_cvtps_pd(_mm_loadu_ps(p))               /* 4 floats as doubles */
#define VPD_LOAD_PS_LESS(p, m) _mm256_cvtps_pd(_mm_sub_ps(_mm_loadu_ps(p), _mm_set1_ps(m)))
#endif
#define LANE_W (16 / LANE_VECS)   /* doubles per vector */
#if LANE_VECS == 2
#define VPS __m512
#define VPS_SET1 _mm512_set1_ps
#define VPS_LOADU _mm512_loadu_ps
#define VPS_ADD _mm512_add_ps
#define VPS_SUB _mm512_sub_ps
#define VPS_MUL _mm512_mul_ps
#define VPS_FMA _mm512_fmadd_ps
#define VPS_LO_PD(v) _mm512_cvtps_pd(_mm512_castps512_ps256(v))
#define VPS_HI_PD(v) _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)))
#else
#define VPS __m256
#define VPS_SET1 _mm256_set1_ps
#define VPS_LOADU _mm256_loadu_ps
#define VPS_ADD _mm256_add_ps
#define VPS_SUB _mm256_sub_ps
#define VPS_MUL _mm256_mul_ps
#define VPS_FMA _mm256_fmadd_ps
#define VPS_LO_PD(v) _mm256_cvtps_pd(_mm256_castps256_ps128(v))
#define VPS_HI_PD(v) _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1))
#endif
#define PS_VECS (LANE_VECS / 2)   /* float vectors per 16-element piece */
#define PS_W (16 / PS_VECS)       /* floats per vector */
#define ROW_SUM_STRETCH 8         /* most 16-element pieces a float stretch takes */
typedef struct { VPD v[LANE_VECS]; } FN_NAME(lanes16, FN_SUF);
#define LANES FN_NAME(lanes16, FN_SUF)

static inline FN_LANES_INLINE LANES FN_NAME(lanes_set1, FN_SUF)(double c)
{
    LANES a;
    for (int q = 0; q < LANE_VECS; ++q)
        a.v[q] = VPD_SET1(c);
    return a;
}
/* LANE_W elements of p as doubles (float: converted straight from memory). */
static inline FN_LANES_INLINE VPD FN_NAME(vpd_load, FN_SUF)(const T *p)
{
#if FN_REAL == 32
    return VPD_LOAD_PS(p);
#else
    return VPD_LOADU(p);
#endif
}
/* (double)(p[j] - m) for LANE_W elements, the difference rounded to T first. */
static inline FN_LANES_INLINE VPD FN_NAME(vpd_load_less, FN_SUF)(const T *p, T m)
{
#if FN_REAL == 32
    return VPD_LOAD_PS_LESS(p, m);
#else
    return VPD_SUB(VPD_LOADU(p), VPD_SET1(m));
#endif
}
/* Elements i .. i + 15 of p as doubles. */
static inline FN_LANES_INLINE LANES FN_NAME(lanes_load, FN_SUF)(const T *p, int64_t i)
{
    LANES a;
    for (int q = 0; q < LANE_VECS; ++q)
        a.v[q] = FN_NAME(vpd_load, FN_SUF)(p + i + q * LANE_W);
    return a;
}
/* The same, less c: (double)p[i] - c. */
static inline FN_LANES_INLINE LANES FN_NAME(lanes_load_centered, FN_SUF)(const T *p, int64_t i, double c)
{
    LANES a = FN_NAME(lanes_load, FN_SUF)(p, i);
    for (int q = 0; q < LANE_VECS; ++q)
        a.v[q] = VPD_SUB(a.v[q], VPD_SET1(c));
    return a;
}
/* One step of two sums, one vector: a += h, b += h * d (fused). */
static inline FN_LANES_INLINE void FN_NAME(vpd_add, FN_SUF)(VPD h, VPD d, VPD *a, VPD *b)
{
    *a = VPD_ADD(*a, h);
    *b = VPD_FMA(h, d, *b);
}
/* The same for a 16-element piece. */
static inline FN_LANES_INLINE void FN_NAME(lanes_add, FN_SUF)(LANES h, LANES d, LANES *a, LANES *b)
{
    for (int q = 0; q < LANE_VECS; ++q)
        FN_NAME(vpd_add, FN_SUF)(h.v[q], d.v[q], &a->v[q], &b->v[q]);
}
/* The sixteen lanes added as the tree above. */
static inline FN_LANES_INLINE double FN_NAME(lanes_tree_sum, FN_SUF)(LANES a)
{
#if LANE_VECS == 2
    const __m512d w8 = _mm512_add_pd(a.v[0], a.v[1]);
    const __m256d w4 = _mm256_add_pd(_mm512_castpd512_pd256(w8), _mm512_extractf64x4_pd(w8, 1));
#else
    const __m256d w4 = _mm256_add_pd(_mm256_add_pd(a.v[0], a.v[2]), _mm256_add_pd(a.v[1], a.v[3]));
#endif
    const __m128d w2 = _mm_add_pd(_mm256_castpd256_pd128(w4), _mm256_extractf128_pd(w4, 1));
    return _mm_cvtsd_f64(_mm_add_sd(w2, _mm_unpackhi_pd(w2, w2)));
}
#else
#define FN_LANES_INLINE   /* the plain reductions: inlining left to gcc */
#endif

/* The sums of x[j] - shift and of their squares over the whole 16-element pieces of x[0, n),
 * in the lanes, into the doubles sa and sb, with the statement STEP done for each piece
 * (starting at element i) alongside; i is left after the last piece.  Without the lanes
 * there are no pieces: run_sums_tail below takes the whole run. */
#ifdef FN_LANES16
#define SUMS_OF_PIECES(x, n, shift, sa, sb, i, STEP)                                        \
    do {                                                                                    \
        LANES sums_a = FN_NAME(lanes_set1, FN_SUF)(0.0), sums_b = sums_a;                   \
        for (; (i) + 16 <= (n); (i) += 16) {                                                \
            const LANES sums_d = FN_NAME(lanes_load_centered, FN_SUF)(x, i, shift);         \
            FN_NAME(lanes_add, FN_SUF)(sums_d, sums_d, &sums_a, &sums_b);                   \
            STEP                                                                            \
        }                                                                                   \
        (sa) = FN_NAME(lanes_tree_sum, FN_SUF)(sums_a);                                     \
        (sb) = FN_NAME(lanes_tree_sum, FN_SUF)(sums_b);                                     \
    } while (0)
#else
#define SUMS_OF_PIECES(x, n, shift, sa, sb, i, STEP) ((void)0)
#endif

/* Elements [i, n) of run_sums below, added in order to *sa, *sb (the whole run where the
 * lanes do not exist, left to gcc's reduction there). */
static inline FN_LANES_INLINE void FN_NAME(run_sums_tail, FN_SUF)(const T *x, int64_t i, int64_t n,
                                                                   double shift, double *sa,
                                                                   double *sb)
{
    double a = *sa, b = *sb;
#ifndef FN_LANES16
#pragma omp simd reduction(+:a, b)
#endif
    for (int64_t j = i; j < n; ++j) {
        const double d = (double)x[j] - shift;
        a += d;
        b += d * d;
    }
    *sa = a;
    *sb = b;
}

/* s1 += sum(x - shift), s2 += sum((x - shift)^2) over one contiguous run; the lines of the
 * run `next` (as long as this one; NULL: none) are fetched into L2 meanwhile, where the lanes
 * above exist (the other variants ignore it).  (The tail is left to gcc: float64 tails of 4
 * or more elements it vectorizes without fusing d * d; the same in every caller, as it
 * depends on n alone.) */
static inline FN_LANES_INLINE void FN_NAME(run_sums, FN_SUF)(const T *x, int64_t n, double shift, double *s1,
                                                              double *s2, const T *next)
{
    double sa = 0.0, sb = 0.0;
    int64_t i = 0;
    /* 16 elements: 64 or 128 bytes */
    SUMS_OF_PIECES(x, n, shift, sa, sb, i, if (next) fn_prefetch_lines_l2(next + i, 16 * (int64_t)sizeof(T)););
    (void)next;
    FN_NAME(run_sums_tail, FN_SUF)(x, i, n, shift, &sa, &sb);
    *s1 += sa;
    *s2 += sb;
}

/* fn_norm_stats_runs passes run_sums the next sample's runs to fetch, and fn_norm_dual_runs
 * run_dual (the AVX-512 variant fetches in both, AVX2 in run_sums only, the others ignore
 * `next`), where the runs are
 * long and the stretch of them short: batch norm's channel blocks.  Statistics kernel through
 * ctypes, 1 thread, Zen 4, from memory, against no fetch: (64, 64, 56, 56) float32 by blocks
 * of 5 channels (61 KiB stretches, the forward's blocks) 1.05-1.35x
 * (eight runs, median 1.24x), runs of 49 KiB two by two (98 KiB) 1.13-1.20x, runs of 4 KiB
 * sixteen by sixteen 1.08-1.55x; stretches of 122 KiB level; fetching stretches of 392 KiB
 * 0.89-1.09x, and runs of 784 bytes 0.78-0.96x.  Batch norm 2-D train forward through the
 * API 1.12-1.16x (1 thread), 1.07-1.15x (2).  With the AVX2 lanes on Zen 3 (512 KiB L2),
 * against the same lanes without it, paired: (64, 64, 56, 56) float32 forward 1.08x / 1.05x
 * (1 / 2 threads), float64 level. */
#define FETCH_RUN_MIN_BYTES (4 << 10)
#define FETCH_STRETCH_MAX_BYTES (128 << 10)
/* Whether the runs of `channels` channels, B elements each, fetch the next sample's (above). */
static inline int FN_NAME(fetch_next_sample, FN_SUF)(int64_t B, int64_t channels)
{
    const int64_t run_bytes = B * (int64_t)sizeof(T);
    return run_bytes >= FETCH_RUN_MIN_BYTES && channels * run_bytes <= FETCH_STRETCH_MAX_BYTES;
}

/* The float32 variants with the lanes: p = sum(g) and q = sum(g * (x - c)), g = dy * w (w
 * NULL: dy), over the whole 16-element pieces of [0, n), as float vectors over stretches of
 * up to ROW_SUM_STRETCH pieces (a lane adds at most that many terms, g * (x - c) fused, x - c
 * rounded to float), each stretch then added into the double lanes, instead of converting
 * every element to double.  The sums then carry a few float roundings of a stretch's size,
 * not of the run's.  Float sums overflow where double ones do not (|dy| near 1e38, or
 * |dy * (x - c)| above 3.4e38), so a caller takes double sums where one comes out inf or
 * NaN (also from an inf or a NaN in the data).  Returns the index after the last whole
 * piece.  The lines `next` elements further on in dy and x (0: none) are fetched into L2
 * meanwhile.  The same lanes and order for AVX2 and AVX-512: the same bits. */
#if defined(FN_LANES16) && FN_REAL == 32
static inline FN_LANES_INLINE int64_t FN_NAME(float_dual_pieces, FN_SUF)(
    const T *dy, const T *w, const T *x, int64_t n, T c, double *p, double *q, int64_t next)
{
    const VPS cv = VPS_SET1(c);
    LANES pl = FN_NAME(lanes_set1, FN_SUF)(0.0), ql = pl;
    int64_t k0 = 0;
    while (k0 + 16 <= n) {
        const int64_t end = n - k0 >= 16 * ROW_SUM_STRETCH ? k0 + 16 * ROW_SUM_STRETCH
                                                           : k0 + (n - k0) / 16 * 16;
        VPS pf[PS_VECS], qf[PS_VECS];
        for (int v = 0; v < PS_VECS; ++v)
            pf[v] = qf[v] = VPS_SET1(0.0f);
        for (; k0 < end; k0 += 16) {
#pragma GCC unroll 2
            for (int v = 0; v < PS_VECS; ++v) {
                const int64_t k = k0 + v * PS_W;
                const VPS d = VPS_LOADU(dy + k);
                const VPS g = w ? VPS_MUL(d, VPS_LOADU(w + k)) : d;
                pf[v] = VPS_ADD(pf[v], g);
                qf[v] = VPS_FMA(g, VPS_SUB(VPS_LOADU(x + k), cv), qf[v]);
            }
            if (next) {
                fn_prefetch_lines_l2(dy + next + k0, 16 * (int64_t)sizeof(T));
                fn_prefetch_lines_l2(x + next + k0, 16 * (int64_t)sizeof(T));
            }
        }
        for (int v = 0; v < PS_VECS; ++v) {
            pl.v[2 * v] = VPD_ADD(pl.v[2 * v], VPS_LO_PD(pf[v]));
            pl.v[2 * v + 1] = VPD_ADD(pl.v[2 * v + 1], VPS_HI_PD(pf[v]));
            ql.v[2 * v] = VPD_ADD(ql.v[2 * v], VPS_LO_PD(qf[v]));
            ql.v[2 * v + 1] = VPD_ADD(ql.v[2 * v + 1], VPS_HI_PD(qf[v]));
        }
    }
    *p = FN_NAME(lanes_tree_sum, FN_SUF)(pl);
    *q = FN_NAME(lanes_tree_sum, FN_SUF)(ql);
    return k0;
}
#endif

/* s1 += sum(dy), s2 += sum(dy * (x - center)) over one contiguous run; the lines of the runs
 * `next` elements further on in dy and x (0: none) are fetched into L2 meanwhile where the
 * lanes exist, as run_sums does; fn_norm_dual_runs asks for it with AVX-512 only, under the
 * statistics' bounds (adopted, not tuned for two arrays).  (With gcc's reduction, fetching
 * had measured 0.68-0.99x; with the AVX-512 lanes, batch norm backward (64, 64, 56, 56)
 * float32 by channel blocks, through the API, paired, three runs: 1.07-1.16x at 1 thread
 * and, as it happens, 1.07-1.16x at 2.  With the AVX2 lanes on Zen 3, against the same
 * lanes without it, paired, 1 thread: float64 0.90-0.91x in two runs, float32 1.03-1.07x;
 * so AVX2 does not ask, DUAL_FETCH.)  The lanes against
 * gcc's reduction, whose order differs (so the last bits may), AVX-512 through the API,
 * paired, 1 / 2 threads: batch norm backward (256, 64, 14, 14) 1.14x / 1.18x, (64, 64, 56, 56)
 * 1.03x / 1.01x, group norm backward (16, 256, 32, 32) 1.07x / 1.09x. */
#define DUAL_FETCH (FN_ISA_LEVEL == FN_ISA_AVX512)
static inline FN_LANES_INLINE void FN_NAME(run_dual, FN_SUF)(const T *dy, const T *x, int64_t n, double center,
                                                              double *s1, double *s2, int64_t next)
{
    double sa = 0.0, sb = 0.0;
    int64_t i = 0;
#ifdef FN_LANES16
    int double_lanes = 1;
#if FN_REAL == 32
    /* Float stretches (float_dual_pieces), centred on the float nearest center, then moved
     * to center in double by the identity
     * sum(dy * (x - center)) = sum(dy * (x - cf)) + (cf - center) * sum(dy).
     * Against the double lanes below, on AMD Zen 1 (AVX2, whose 256-bit conversions and double
     * operations issue as two halves), through the API, builds in processes alternated, three
     * rounds, 1 / 2 threads: batch norm backward (64, 64, 56, 56) 15.0-16.1 -> 12.2-12.8 ms /
     * 9.1-10.5 -> 8.0-9.3 ms, (256, 64, 14, 14) 4.68-4.79 -> 4.03-4.57 / 3.20-3.73 ->
     * 2.79-3.02 ms, group norm backward (16, 256, 32, 32) 4.09-4.53 -> 3.42-3.64 / 2.48-2.64 ->
     * 2.31-2.32 ms.  Not measured with AVX-512 (Zen 4, where these sums ran near memory
     * speed). */
    const T cf = (T)center;
    i = FN_NAME(float_dual_pieces, FN_SUF)(dy, NULL, x, n, cf, &sa, &sb, next);
    sb += ((double)cf - center) * sa;
    double_lanes = !(isfinite(sa) && isfinite(sb));
    const double float_sa = sa;
#endif
    if (double_lanes) {   /* float64, or float sums that came out inf or NaN */
        LANES a = FN_NAME(lanes_set1, FN_SUF)(0.0), b = a;
        for (i = 0; i + 16 <= n; i += 16) {
            /* Lane vector by lane vector, each loaded, centered and added before the next
             * one's loads: with all of dy's and then all of x's loaded first, gcc kept two of
             * the eight AVX2 accumulators on the stack in fn_norm_group_backward (a
             * store-to-load round trip in every step; its backward 1.06-1.21x faster
             * without). */
            for (int q = 0; q < LANE_VECS; ++q) {
                const VPD h = FN_NAME(vpd_load, FN_SUF)(dy + i + q * LANE_W);
                const VPD d = VPD_SUB(FN_NAME(vpd_load, FN_SUF)(x + i + q * LANE_W), VPD_SET1(center));
                FN_NAME(vpd_add, FN_SUF)(h, d, &a.v[q], &b.v[q]);
            }
            if (next) {
                fn_prefetch_lines_l2(dy + next + i, 16 * (int64_t)sizeof(T));
                fn_prefetch_lines_l2(x + next + i, 16 * (int64_t)sizeof(T));
            }
        }
        sa = FN_NAME(lanes_tree_sum, FN_SUF)(a);
        sb = FN_NAME(lanes_tree_sum, FN_SUF)(b);
#if FN_REAL == 32
        if (isfinite(float_sa))   /* only s2 failed: sum(dy) keeps its bits, as it does not see x */
            sa = float_sa;
#endif
    }
#else
    (void)next;
#pragma omp simd reduction(+:sa, sb)
#endif
    for (int64_t j = i; j < n; ++j) {
        const double h = (double)dy[j];
        sa += h;
        sb += h * ((double)x[j] - center);
    }
    *s1 += sa;
    *s2 += sb;
}

#define RUN_SUMS FN_NAME(run_sums, FN_SUF)
#define RUN_DUAL FN_NAME(run_dual, FN_SUF)

/* Mean and M2 from shifted sums of n elements.  Clamps rounding below zero but lets a NaN
 * through: "q > 0 ? q : 0" turned a NaN channel into variance 0 (finite rstd, a silently
 * wrong running_var). */
static inline void FN_NAME(finish_moments, FN_SUF)(double shift, double s1, double s2, double n,
                                                   double *mean, double *m2)
{
    *mean = shift + s1 / n;
    const double q = s2 - s1 * (s1 / n);
    *m2 = q < 0.0 ? 0.0 : q;
}

/* Outputs written from their end down, where they start just after an input (fn_trails,
 * fn_stream.h): a loop running upwards then has its stores hold up the loads of the input
 * that follow them.  PIECE16(j0, i, STMT) does STMT for the 16 elements from j0 on,
 * MAP_DOWN(n, i, STMT) for i in [0, n): first the elements past the last whole piece, then
 * the pieces from the last down.  Where a call goes upwards through rows or units that each
 * descend (layer norm's rows and group norm's units forward, whose next row's or unit's sums
 * go upwards beside the output; layer norm's rows and group norm's runs backward, written
 * after each row's or unit's sums), only while the call (one thread's share) covers at most
 * DOWN_MAX_BYTES of x: from
 * memory those descents lost (layer norm (8192, 768) 0.74-0.83x, see rows_by_groups; group
 * norm (64, 32, 2, 1024) float32 16 MiB, kernel through ctypes, 1 thread, forward
 * 0.93-0.96x, backward 0.80-0.82x at +48 / +64).  Batch norm's affine passes
 * (fn_norm_affine, fn_norm_affine_grad) descend a call's whole range in one go and need no
 * bound; batch norm 2-D's blocked training path calls them once per sample and block of
 * channels, upwards from call to call, each call a block's stretch of at most
 * _channel_block_bytes (4 MiB, normalization.pyx) (through the API, (16, 64, 56, 56) float32
 * 1.15-1.16x at +48 / +64, from memory).  Same operations per element either way, so the
 * same bits.  (The activations' DESCENDING loops index from each piece's start instead; why
 * the two forms are kept apart: there.) */
#define DOWN_MAX_BYTES ((int64_t)4 << 20)
#define PIECE16(j0, i, STMT)                                                                   \
    _Pragma("omp simd") FN_KEEP_LOOP for (int64_t i = (j0); i < (j0) + 16; ++i) STMT;
#define MAP_DOWN(n, i, STMT)                                                                   \
    do {                                                                                       \
        const int64_t md_whole = (n) / 16 * 16;                                                \
        _Pragma("omp simd") for (int64_t i = md_whole; i < (n); ++i) STMT;                     \
        for (int64_t md_j = md_whole - 16; md_j >= 0; md_j -= 16)                              \
            PIECE16(md_j, i, STMT)                                                          \
    } while (0)

/* One contiguous run with scalar parameters: y = (x - h) * s + t (forward) and
 * gx = dy * a1 + (x - h) * a2 + a3 (backward); shared by the two-pass kernels and the
 * one-pass group kernels, which must give the same bits.  stream: non-temporal stores
 * (fn_stream.h), the same values.  The _down variants run from the end down (MAP_DOWN;
 * never streamed). */
#define AFFINE_Y(xv, h, s, t) (((xv) - (h)) * (s) + (t))   /* also unit_output's, same bits */
static inline void FN_NAME(affine_run, FN_SUF)(const T *x, T *y, int64_t n, T h, T s, T t,
                                               int stream)
{
    FN_MAP_STREAMED(T, FN_STREAM_COPY, stream, y, n, i, AFFINE_Y(x[i], h, s, t));
}

static inline void FN_NAME(affine_run_down, FN_SUF)(const T *x, T *y, int64_t n, T h, T s, T t)
{
    MAP_DOWN(n, i, y[i] = AFFINE_Y(x[i], h, s, t));
}

/* A NaN among a gradient run's coefficients a1, h, a2, a3 (from a NaN in the data, weight or
 * statistics of its unit or channel, or an infinite x there) makes every element NaN (dy * a1
 * and (x - h) * a2 are NaN whatever dy and a2): written as one NaN (plain stores: a rare
 * case), since the sign of a NaN computed from several depends on the operand order gcc chose
 * for each loop (the downward loops chose otherwise).  Returns whether it did. */
static inline int FN_NAME(nan_grad_run, FN_SUF)(T *gx, int64_t n, T a1, T h, T a2, T a3)
{
    if (!(isnan(a1) || isnan(h) || isnan(a2) || isnan(a3)))
        return 0;
#pragma omp simd
    for (int64_t i = 0; i < n; ++i)
        gx[i] = (T)NAN;
    return 1;
}

static inline void FN_NAME(affine_grad_run, FN_SUF)(const T *dy, const T *x, T *gx, int64_t n,
                                                    T a1, T h, T a2, T a3, int stream)
{
    if (!FN_NAME(nan_grad_run, FN_SUF)(gx, n, a1, h, a2, a3))
        FN_MAP_STREAMED(T, FN_STREAM_COPY, stream, gx, n, i, dy[i] * a1 + (x[i] - h) * a2 + a3);
}

static inline void FN_NAME(affine_grad_run_down, FN_SUF)(const T *dy, const T *x, T *gx,
                                                         int64_t n, T a1, T h, T a2, T a3)
{
    if (!FN_NAME(nan_grad_run, FN_SUF)(gx, n, a1, h, a2, a3))
        MAP_DOWN(n, i, gx[i] = dy[i] * a1 + (x[i] - h) * a2 + a3);
}

/* The channels-last loops below read five or six streams (x, dy, the per-channel
 * vectors) that NumPy places 16 bytes past a page or anywhere: 64-byte vectors there
 * straddle cache lines on every load, and the AVX-512 variant ran (4096, 1024) float32
 * batch norm's affine pass in 0.93 ms and its gradient pass in 1.05 ms, against 0.63 and
 * 0.71 ms with 32-byte vectors (1 thread; aligning the output with a scalar lead-in and
 * copying the vectors to the same alignment reached only 0.73 ms).  So they ask for
 * 32 bytes per vector on every ISA. */
#define CHANNEL_VECTOR_LANES (32 / (int)sizeof(T))

/* Channels-last rows wider than CHANNEL_ROW_BYTES are visited four at a time by the output
 * passes below (batch norm's and group norm's channels-last passes), where
 * four whole rows of one parameter block p are left in the range; the others one at a time.
 * The per-channel vectors of such rows (three in the forward pass, four in the gradient pass:
 * 12-32 bytes per channel) no longer fit in L1
 * beside the rows and came from L2 or L3 again for every row: (1536, 4096) float32 took
 * twice as long per element as (6144, 1024).  Read once for four rows: the forward pass
 * 1.24-1.57x faster for C = 2048-16384 float32 and 1.27-1.43x float64, the gradient pass
 * 1.11-1.40x and 1.12-1.18x (1 thread, kernels called through ctypes, interleaved with the
 * one-row loop).  Narrower rows from memory stay one at a time: four side by side made
 * C = 256-1024 float32 0.57-0.67x (eight streams from memory instead of two).  Rows narrower
 * than CHANNEL_ROW_BYTES go four at a time too where the range holds at most
 * CHANNEL_CACHED_RANGE_BYTES of x, in cache: there a row's pass had loaded three (four)
 * vectors for every vector of x.  Zen 3, through the def functions, both builds in one
 * process, paired medians, 1 thread, rows of at most 512 bytes: forward pass (2, 1024, 64)
 * float32 1.26x, (8, 64, 32) 1.38x, (1, 4096, 128) 1.18-1.24x, gradient pass 1.26x, 1.36x,
 * 1.08x; group norm channels-last (2, 32, 32, 64) forward / backward 1.12x / 1.20x (2
 * threads 1.11x / 1.08x), batch norm channels-last (8, 8, 8, 32) 1.31x / 1.21x.  Rows of
 * 512 bytes to 4 KiB, Zen 4, batch norm 1-D training forward / backward through the API,
 * both builds in one process, interleaved, 1 / 2 threads: float32 (256, 160) 1.17x / 1.08x and
 * 1.12x / 1.10x, (256, 384) 1.14x / 1.04x and 1.02x / 1.05x, (512, 512) 1.07-1.14x / 1.05-1.09x
 * and 1.02-1.03x / 1.00-1.01x, (256, 600) 1.05x / 1.05x and 1.02x / 1.03x, (128, 768)
 * 1.07-1.15x / 1.03-1.09x and 1.05-1.07x / 1.04x, (256, 896) 1.02x / 1.03x and 1.05x / 1.06x,
 * (512, 896) 1.22x / 1.10x and 1.05x / 1.11x; float64 (128, 200) 1.32x / 1.11x and 1.18x /
 * 1.07x, (256, 256) 1.20x / 1.00x and 1.06x / 1.04x, (256, 384) 1.13x / 0.99x and 1.02x /
 * 1.03x; channels-last group norm (8, 16, 16, 256), (4, 8, 8, 512), (8, 8, 8, 768)
 * 0.99-1.06x.  Rows of exactly 4 KiB stay one at a time: four of them lie at one page offset,
 * where the lines a visit touches in each array share one L1 set (as for wider rows of whole
 * pages, normalization.pyx's _whole_page_rows; (256, 1024) float32 backward 0.62x / 0.68x
 * four at a time).  Beyond the range limit, from memory, narrow rows lost: forward (1, 8192,
 * 128) float32 0.75x, (1, 16384, 128) 0.82-0.85x, gradient pass (1, 16384, 128) 0.66x;
 * (1024, 768) was level.  Same operations per element either way, so the same bits. */
#define CHANNEL_ROW_BYTES FN_NORM_CHANNEL_ROW_BYTES
#define CHANNEL_CACHED_RANGE_BYTES ((int64_t)2 << 20)
/* Channels-last output passes stream their rows (fn_stream.h) when asked to, but only rows
 * of 2 KiB up to CHANNEL_ROW_BYTES: each row is streamed on its own (FN_MAP_STREAMED), which
 * pays off where a row holds several whole chunks.  Kernels through ctypes, 1 thread,
 * interleaved, streamed against plain, the output 16 bytes off a line as NumPy places it
 * (forward / gradient pass): rows of 512 floats 1.18-1.35x / 1.13-1.16x, 768 1.39x / 2.11x,
 * 1024 1.29-1.62x / 1.11-1.45x; rows of 128 and 256 0.97-0.98x / 0.95-1.03x (a row is
 * one or two chunks, the rest plain stores around them); wider rows 0.84-1.10x (the
 * four-row visits, which read the per-channel vectors once for four rows, are faster than
 * one streamed row at a time). */
#define CHANNEL_STREAM_MIN_BYTES 2048
#define STREAM_ROWS(stream)                                                                  \
    ((stream) && C * (int64_t)sizeof(T) >= CHANNEL_STREAM_MIN_BYTES                            \
     && C * (int64_t)sizeof(T) <= CHANNEL_ROW_BYTES)
/* Whether the visit at run u (row r, channel c0) of the range [u0, u1) takes four rows. */
#define FOUR_ROWS_AT(u, r, c0)                                                               \
    ((C * (int64_t)sizeof(T) > CHANNEL_ROW_BYTES                                               \
      || (C * (int64_t)sizeof(T) < CHANNEL_ROW_BYTES                                           \
          && (u1 - u0) * (int64_t)sizeof(T) <= CHANNEL_CACHED_RANGE_BYTES))                     \
     && (c0) == 0 && u1 - (u) >= 4 * C && (r) / A == ((r) + 3) / A)

#define FINISH_MOMENTS FN_NAME(finish_moments, FN_SUF)
#define AFFINE_RUN FN_NAME(affine_run, FN_SUF)
#define AFFINE_RUN_DOWN FN_NAME(affine_run_down, FN_SUF)
#define AFFINE_GRAD_RUN FN_NAME(affine_grad_run, FN_SUF)
#define AFFINE_GRAD_RUN_DOWN FN_NAME(affine_grad_run_down, FN_SUF)

/* Mean and M2 = sum((x - mean)^2) of units [u0, u1) (each: A runs of B).  The units are
 * taken as spans of consecutive channels c0 <= c < c1 of one p, and a span's runs are
 * visited in address order, a outer and c inner: one sequential stream of reads instead
 * of A runs 800 KB apart per channel, while each unit still adds its runs in the order
 * a = 0 .. A-1.  The sums accumulate in mean[] and m2[] until the span is finished. */
void FN_NAME(fn_norm_stats_runs, FN_SUF)(const T *x, int64_t A, int64_t C, int64_t B,
                                         int64_t u0, int64_t u1, double *mean, double *m2)
{
    const double n = (double)A * (double)B;
    for (int64_t u = u0; u < u1;) {
        const int64_t p = u / C, c0 = u % C, c1 = u1 - p * C < C ? u1 - p * C : C;
        const T *xp = x + p * A * C * B;
        double *s1 = mean + p * C, *s2 = m2 + p * C;
        for (int64_t c = c0; c < c1; ++c)
            s1[c] = s2[c] = 0.0;
        /* A sample's runs of channels c0..c1-1 are one stretch; the next sample's lie C * B
         * items further on, where the hardware prefetcher finds them late when the stretch is
         * short (FETCH_RUN_MIN_BYTES above). */
        const int fetch = FN_NAME(fetch_next_sample, FN_SUF)(B, c1 - c0);
        for (int64_t a = 0; a < A; ++a)
            for (int64_t c = c0; c < c1; ++c) {
                const T *run = xp + (a * C + c) * B;
                RUN_SUMS(run, B, fn_sums_center((double)xp[c * B]), &s1[c], &s2[c],
                         fetch && a + 1 < A ? run + C * B : NULL);
            }
        for (int64_t c = c0; c < c1; ++c)
            FINISH_MOMENTS(fn_sums_center((double)xp[c * B]), s1[c], s2[c], n, &s1[c], &s2[c]);
        u = p * C + c1;
    }
}

/* Group unit xu's output (cg channels of hw elements, channels c0 .. c0 + cg - 1, statistics
 * mu and rs): y = (x - h) * scale + shift per channel, h = mu rounded to T, scale = rs * w[c]
 * and shift = fn_affine_shift(mu, h, scale, b[c]) rounded from double exactly as the two-pass
 * path (statistics, then fn_norm_affine) rounds them, so both give the same bits.  w, b may
 * be NULL.  With xn (not NULL) the sums of that unit (a later one, cg * hw elements) accumulate
 * meanwhile, a 16-element piece beside each 16 elements of output, and are stored in *s1, *s2:
 * the same bits as run_sums(xn, cg * hw, shift, ...) adds to zeros (as row_output does for
 * layer norm; a unit holds at least as many pieces as its channels hold whole ones). */
static inline __attribute__((always_inline)) void FN_NAME(unit_output, FN_SUF)(
    const T *xu, T *yu, int64_t c0, int64_t cg, int64_t hw, double mu, double rs, const T *w,
    const T *b, const T *xn, double shift, double *s1, double *s2, int stream, int down)
{
    const T h = (T)mu;
    int64_t i = 0;   /* the next piece of xn */
#ifdef FN_LANES16
    LANES pa = FN_NAME(lanes_set1, FN_SUF)(0.0), pb = pa;
#endif
    /* down (never with stream): the channels from the last down, each from its end down
     * (MAP_DOWN), while xn's pieces still go upwards, in the order that gives their bits */
    for (int64_t jj = 0; jj < cg; ++jj) {
        const int64_t j = down ? cg - 1 - jj : jj;
        const int64_t c = c0 + j;
        const T sc = w ? (T)(rs * (double)w[c]) : (T)rs;
        const T t = (T)fn_affine_shift(mu, (double)h, (double)sc, b ? (double)b[c] : 0.0);
        const T *xr = xu + j * hw;
        T *yr = yu + j * hw;
        if (!xn) {
            if (down)
                AFFINE_RUN_DOWN(xr, yr, hw, h, sc, t);
            else
                AFFINE_RUN(xr, yr, hw, h, sc, t, stream);
            continue;
        }
        /* one loop for both directions (with the downward pieces in a branch of their own,
         * gcc kept one of the lanes on the stack, upwards too: instance norm 0.55-0.66x) */
        const int64_t whole = hw / 16 * 16;
        int64_t k = 0;
        if (down) {
#pragma omp simd
            for (int64_t e = whole; e < hw; ++e)
                yr[e] = AFFINE_Y(xr[e], h, sc, t);
        }
#ifdef FN_LANES16
        for (; k + 16 <= hw; k += 16, i += 16) {
            const LANES d = FN_NAME(lanes_load_centered, FN_SUF)(xn, i, shift);
            FN_NAME(lanes_add, FN_SUF)(d, d, &pa, &pb);
            PIECE16(down ? whole - 16 - k : k, e, yr[e] = AFFINE_Y(xr[e], h, sc, t))
        }
#endif
        if (down) {
            for (int64_t e0 = whole - 16 - k; e0 >= 0; e0 -= 16)
                PIECE16(e0, e, yr[e] = AFFINE_Y(xr[e], h, sc, t))
        } else {
#pragma omp simd
            for (int64_t e = k; e < hw; ++e)
                yr[e] = AFFINE_Y(xr[e], h, sc, t);
        }
    }
    if (!xn)
        return;
    const int64_t L = cg * hw;
    double sa = 0.0, sb = 0.0;
#ifdef FN_LANES16
    for (; i + 16 <= L; i += 16) {
        const LANES d = FN_NAME(lanes_load_centered, FN_SUF)(xn, i, shift);
        FN_NAME(lanes_add, FN_SUF)(d, d, &pa, &pb);
    }
    sa = FN_NAME(lanes_tree_sum, FN_SUF)(pa);
    sb = FN_NAME(lanes_tree_sum, FN_SUF)(pb);
#endif
    FN_NAME(run_sums_tail, FN_SUF)(xn, i, L, shift, &sa, &sb);
    *s1 = sa;
    *s2 = sb;
}

/* Unit u's mean and M2 from its sums s1, s2 of x - shift over n elements, stored in mean[u]
 * and m2[u]; its mean returned in *mu and its rstd, 1 / sqrt(M2 / n + eps), returned (the
 * float64 formula of group_norm_fast and the general path's _rstd). */
static inline double FN_NAME(unit_stats, FN_SUF)(double shift, double s1, double s2, double n,
                                                 double eps, double *mean, double *m2, int64_t u,
                                                 double *mu)
{
    double q;
    FINISH_MOMENTS(shift, s1, s2, n, mu, &q);
    mean[u] = *mu;
    m2[u] = q;
    return 1.0 / sqrt(q / n + eps);
}

#define UNIT_GROUP 4   /* most units per group of units_by_groups */

/* Units [u0, u1) of fn_norm_group_forward below (not streamed) by groups of `group` units (at
 * most UNIT_GROUP), as rows_by_groups does for layer norm: each unit's output is written
 * while the sums of the unit one group further on accumulate (unit_output), then the
 * statistics of the whole next group are taken side by side.  Inlined with group a literal
 * 1 too, so that its sums stay in registers. */
static inline __attribute__((always_inline)) void FN_NAME(units_by_groups, FN_SUF)(
    const T *x, T *y, int64_t G, int64_t cg, int64_t hw, int64_t u0, int64_t u1, const T *w,
    const T *b, double eps, double *mean, double *m2, const int64_t group)
{
    const int64_t L = cg * hw;
    const double n = (double)L;
    const int down = (u1 - u0) * L * (int64_t)sizeof(T) <= DOWN_MAX_BYTES && fn_trails(y, x);
    /* The sums of the units of the next group (the first group's: a pass of their own). */
    double shift[UNIT_GROUP], s1[UNIT_GROUP], s2[UNIT_GROUP];
    for (int64_t u = u0; u < u1 && u < u0 + group; ++u) {
        const int64_t j = u - u0;
        shift[j] = fn_sums_center((double)x[u * L]);
        s1[j] = 0.0;
        s2[j] = 0.0;
        RUN_SUMS(x + u * L, L, shift[j], &s1[j], &s2[j], NULL);
    }
    for (int64_t g = u0; g < u1; g += group) {
        const int64_t k = u1 - g < group ? u1 - g : group;
        double mu[UNIT_GROUP] = {0.0}, rs[UNIT_GROUP] = {0.0};   /* zeros: for gcc's warning */
        for (int64_t j = 0; j < k; ++j)
            rs[j] = FN_NAME(unit_stats, FN_SUF)(shift[j], s1[j], s2[j], n, eps, mean, m2, g + j,
                                                &mu[j]);
        for (int64_t j = 0; j < k; ++j) {
            const int64_t u = g + j;
            const T *xn = u + group < u1 ? x + (u + group) * L : NULL;
            shift[j] = xn ? fn_sums_center((double)xn[0]) : 0.0;
            /* down as a literal, so that each copy is compiled for one direction */
            if (down)
                FN_NAME(unit_output, FN_SUF)(x + u * L, y + u * L, (u % G) * cg, cg, hw, mu[j],
                                             rs[j], w, b, xn, shift[j], &s1[j], &s2[j], 0, 1);
            else
                FN_NAME(unit_output, FN_SUF)(x + u * L, y + u * L, (u % G) * cg, cg, hw, mu[j],
                                             rs[j], w, b, xn, shift[j], &s1[j], &s2[j], 0, 0);
        }
    }
}

/* Group norm of NCHW data (instance norm: cg = 1) in one visit per group: units u in
 * [u0, u1) of the N*G groups, each cg channels of hw contiguous elements.  Statistics as
 * fn_norm_stats_runs (mean and M2 to mean[u], m2[u]), and the output (unit_output) while
 * the group is still in cache: the input is read from memory once instead of twice, and no
 * per-(sample, channel) coefficient arrays exist.  w, b may be NULL.  Units go by groups
 * (units_by_groups) of up to 4, and of as many as let the group's units of x and y fit L1's
 * 32 KiB twice over (larger units go one by one, still fused).  Streamed units (stream)
 * come from memory, where the sums wait on loads, not on their chains: each unit's sums are
 * taken just before its output, which then finds the unit in cache.  (Unstreamed calls from
 * memory keep the fused loop: against sums-then-output per unit, results fresh from malloc,
 * paired, float32, 1 / 2 threads: (16, 256, 32, 32) 1.50x / 0.98x, (8, 256, 64, 64) 1.08x /
 * 1.08x, (4, 64, 128, 128) 1.28x / 1.04x, (2, 32, 256, 256) G = 8 1.33x / 1.01x.) */
void FN_NAME(fn_norm_group_forward, FN_SUF)(const T *x, T *y, int64_t G, int64_t cg, int64_t hw,
                                            int64_t u0, int64_t u1, const T *w, const T *b,
                                            double eps, double *mean, double *m2, int stream)
{
    const int64_t L = cg * hw;
    if (stream) {
        const double n = (double)L;
        for (int64_t u = u0; u < u1; ++u) {
            const T *xu = x + u * L;
            const double shift = fn_sums_center((double)xu[0]);
            double s1 = 0.0, s2 = 0.0, mu;
            RUN_SUMS(xu, L, shift, &s1, &s2, NULL);
            const double rs = FN_NAME(unit_stats, FN_SUF)(shift, s1, s2, n, eps, mean, m2, u, &mu);
            FN_NAME(unit_output, FN_SUF)(xu, y + u * L, (u % G) * cg, cg, hw, mu, rs, w, b, NULL,
                                         0.0, NULL, NULL, 1, 0);
        }
        fn_stream_fence();
        return;
    }
    const int64_t units_in_l1 = (32 << 10) / (L * (int64_t)sizeof(T));
    const int64_t group = units_in_l1 >= 4 * UNIT_GROUP ? UNIT_GROUP
                          : units_in_l1 >= 8            ? units_in_l1 / 4
                                                        : 1;
    if (group == 1)
        FN_NAME(units_by_groups, FN_SUF)(x, y, G, cg, hw, u0, u1, w, b, eps, mean, m2, 1);
    else
        FN_NAME(units_by_groups, FN_SUF)(x, y, G, cg, hw, u0, u1, w, b, eps, mean, m2, group);
}
#undef UNIT_GROUP

/* Group norm backward of NCHW data (instance norm: cg = 1), training statistics, in one
 * visit per group u in [u0, u1): per channel c = (u % G) * cg + j the sums
 * s1[u*cg + j] = sum(dy) and s2[u*cg + j] = sum(dy * (x - center[u])) (as fn_norm_dual_runs),
 * then, while the group is in cache, gx = dy * k1 + (x - mhi[u]) * k2 + k3 with
 * k1 = rstd * w[c], k2 = -rstd^3 sum_c(w s2) / m, k3 = -rstd sum_c(w s1) / m, m = cg * hw
 * (the two-pass path's coefficients; the channel sums of a group are added in channel
 * order).  w may be NULL.  Where gx trails dy or x and leads neither (fn_trails_one_of,
 * fn_stream.h) and the call is within DOWN_MAX_BYTES, each run of the output goes from its
 * end down; the units and their channels still go upwards.  Kernel through ctypes, 1
 * thread, float32, gx 16-256 bytes after x, against the units and channels downwards too
 * (each unit's output in one descent after its sums upwards): (4, 32, 2, 1024) 1.06-1.48x
 * against 0.97-1.18x faster than upwards, (4, 64, 1, 256) 1.00-1.15x against 0.83-1.01x,
 * (8, 32, 8, 256) 0.98-1.16x against 0.85-1.02x.  (Choosing the unit order per unit inside
 * the loop made instance norm (4, 64, 16, 16) 0.87-0.94x as fast upwards too; the unit's
 * body in a function called from one loop per direction gave 0.86-1.08x in the window where
 * this form gave 0.99-1.15x.) */
void FN_NAME(fn_norm_group_backward, FN_SUF)(const T *dy, const T *x, T *gx, int64_t G, int64_t cg,
                                             int64_t hw, int64_t u0, int64_t u1, const T *w,
                                             const double *center, const T *mhi, const double *rstd,
                                             double *s1, double *s2, int stream)
{
    const int64_t L = cg * hw;
    const double m = (double)L;
    const int down = !stream && (u1 - u0) * L * (int64_t)sizeof(T) <= DOWN_MAX_BYTES
                     && fn_trails_one_of(gx, dy, x);
    for (int64_t u = u0; u < u1; ++u) {
        const T *xu = x + u * L, *gu = dy + u * L;
        T *ou = gx + u * L;
        const int64_t c0 = (u % G) * cg;
        const double rs = rstd[u];
        double g1 = 0.0, g2 = 0.0;
        for (int64_t j = 0; j < cg; ++j) {
            double a = 0.0, b = 0.0;
            RUN_DUAL(gu + j * hw, xu + j * hw, hw, center[u], &a, &b, 0);   /* a group is one stretch */
            s1[u * cg + j] = a;
            s2[u * cg + j] = b;
            const double wc = w ? (double)w[c0 + j] : 1.0;
            g1 += wc * a;
            g2 += wc * b;
        }
        const T k2 = (T)(-(rs * rs * rs) * g2 / m), k3 = (T)(-rs * g1 / m), h = mhi[u];
        for (int64_t j = 0; j < cg; ++j) {
            const T k1 = (T)(rs * (w ? (double)w[c0 + j] : 1.0));
            if (down)
                AFFINE_GRAD_RUN_DOWN(gu + j * hw, xu + j * hw, ou + j * hw, hw, k1, h, k2, k3);
            else
                AFFINE_GRAD_RUN(gu + j * hw, xu + j * hw, ou + j * hw, hw, k1, h, k2, k3, stream);
        }
    }
    if (stream)
        fn_stream_fence();
}

/* The column sums of batch norm 1-D (fn_norm_stats_cols, fn_norm_dual_cols) go over the
 * columns in chunks of COLS_CHUNK when the caller asks them to fetch (`fetch`: arrays too
 * large to be in cache, of rows under 4 KiB, see normalization.pyx), and with each chunk fetch
 * the same columns of the next visit's rows (see stats_cols_visits); otherwise over whole
 * rows. */
#define COLS_CHUNK 64   /* 256 bytes of a float32 row, 512 of a float64 one */

/* Columns [w0, w1) of k rows from `next` on (rows W apart), into L2. */
static inline void FN_NAME(cols_fetch, FN_SUF)(const T *next, int k, int64_t W, int64_t w0, int64_t w1)
{
    for (int j = 0; j < k; ++j)
        fn_prefetch_lines_l2(next + j * W + w0, (w1 - w0) * (int64_t)sizeof(T));
}

/* The visits of k rows from row r on while k whole rows are left, r advanced past them (k
 * a constant at each call site, so that the rows' loop in BODY unrolls): for each, the
 * statement ROWS (its rows' pointers from r), then the columns [0, n) under omp simd, the
 * statement BODY (__VA_ARGS__) for column w, in chunks of COLS_CHUNK with the statement FETCH
 * (columns [w0, w1) of the next visit's rows) before each where `fetch` asks and a next
 * visit follows, else in one go.  Shared by stats_cols_visits and the column sums of the
 * backward. */
#define COLS_VISITS(r, rows, n, k, fetch, ROWS, FETCH, ...)                                     \
    for (; (r) + (k) <= (rows); (r) += (k)) {                                                   \
        ROWS                                                                                    \
        const int fetch_next = (fetch) && (r) + 2 * (k) <= (rows);                              \
        const int64_t chunk = fetch_next ? COLS_CHUNK : (n);                                    \
        for (int64_t w0 = 0; w0 < (n); w0 += chunk) {                                           \
            const int64_t w1 = (n) - w0 > chunk ? w0 + chunk : (n);                             \
            if (fetch_next) {                                                                   \
                FETCH                                                                           \
            }                                                                                   \
            _Pragma("omp simd") for (int64_t w = w0; w < w1; ++w) {                             \
                __VA_ARGS__                                                                     \
            }                                                                                   \
        }                                                                                       \
    }

/* Visits of k rows from row r of fn_norm_stats_cols below while k whole rows are left;
 * returns the first row not done.  With `fetch`, the columns in chunks, and with each chunk
 * the same columns of the next visit's k rows fetched into L2: rows side by side are a pattern
 * the hardware prefetcher follows poorly from memory (each row's stream ends at its page).  The
 * statistics used to fetch the whole next visit into L1 at once before the sums, which left
 * the sums and the memory traffic one after the other on Zen 4 (an L1 prefetch holds one of
 * few miss buffers).  1 thread, Zen 4, kernels through ctypes, interleaved with that burst, one
 * call over an array from memory: (4096, 1024) float32 1.19-1.52x (1.4-1.8 -> 1.0-1.5 ms;
 * reading the array alone, np.sum: 0.9 ms), (8192, 512) 1.55-1.97x, (16384, 256) 1.16-1.48x,
 * (2048, 2048) 1.13-1.46x, float64 (4096, 512) 1.49x, (2048, 1024) 1.20x, (8192, 256) 1.90x;
 * from L3 1.28-2.47x.  Chunks of 32 and 128 columns came within 15 % of 64 and 256 were slower
 * (float32 and float64 alike); the same chunks fetched into L1 were 0.90-1.08x (float32).
 * Without `fetch` (arrays likely in cache, see normalization.pyx) no prefetch at all: against
 * the burst, in the row blocks the module calls, 1.00-1.26x from memory and 1.04-1.11x from
 * cache for (256, 1024) to (1024, 2048) float32.  (On Zen 5 the burst had measured 1.3x faster
 * than nothing from memory; not measured there since.)  The order of the sums per column is
 * unchanged: the same bits. */
static inline __attribute__((always_inline)) int64_t FN_NAME(stats_cols_visits, FN_SUF)(
    const T *x, int64_t r, int64_t rows, int64_t W, const double *shift, double *s1, double *s2,
    const int k, int fetch)
{
    COLS_VISITS(r, rows, W, k, fetch, const T *xr = x + r * W;,
                FN_NAME(cols_fetch, FN_SUF)(xr + k * W, k, W, w0, w1);,
                const double c = shift[w];
                double a = s1[w], b = s2[w];
                _Pragma("GCC unroll 8")
                for (int j = 0; j < k; ++j) {
                    const double d = (double)xr[j * W + w] - c;
                    a += d;
                    b += d * d;
                }
                s1[w] = a;
                s2[w] = b;)
    return r;
}

/* The eight-row visits in a function of their own: with them written inline in
 * fn_norm_stats_cols, its four-row loop ran (16384, 256) at 0.53-0.87x (one run of 8
 * placements; 0.97-1.29x once split off). */
static __attribute__((noinline)) int64_t FN_NAME(stats_cols_by8, FN_SUF)(
    const T *x, int64_t rows, int64_t W, const double *shift, double *s1, double *s2, int fetch)
{
    return FN_NAME(stats_cols_visits, FN_SUF)(x, 0, rows, W, shift, s1, s2, 8, fetch);
}

/* Column sums of a (rows, W) block, shifted per column: s1[w] += sum_r (x[r,w] - shift[w]),
 * s2[w] += sum_r (...)^2.  Vectorized along the row (channels-last, batch norm 1-D). */
void FN_NAME(fn_norm_stats_cols, FN_SUF)(const T *x, int64_t rows, int64_t W, const double *shift,
                                         double *s1, double *s2, int fetch)
{
    /* Several rows per visit of the column sums: a fraction of their loads and stores, which
     * bound this loop ((4096, 1024) float32 statistics 0.8 -> 0.5 ms with four rows on Zen 5).
     * Rows of 2 KiB and more go eight at a time: against four, on Zen 4, kernels called
     * through ctypes, interleaved, 1 thread, two runs over 8 placements of x and the sums
     * each: 1.10-1.31x at (4096, 1024), 1.17-1.44x at (8192, 512), 1.05-1.23x at (2048,
     * 2048); narrower rows four at a time ((16384, 256): 0.65-1.08x by eight, and with the
     * same four-row code on both sides 0.69-1.35x from placement to placement: noisy).
     * (Eight rows were not measured on Zen 5, where fn_norm_dual_cols' four, eight or
     * interleaved rows had come within 4 % of each other.)  The rows are still added one
     * after the other, each a + b or a * b + c: the operations, order and FMA contraction of
     * the one-row loop, so the same bits whichever loop takes a row, and the same in the
     * vector body and in any scalar remainder gcc emits (where a column lands depends on the
     * arrays' alignment, and results must not); test_column_statistics_same_bits. */
    int64_t r = W * (int64_t)sizeof(T) >= 2048 ? FN_NAME(stats_cols_by8, FN_SUF)(x, rows, W, shift, s1, s2, fetch)
                                               : 0;
    r = FN_NAME(stats_cols_visits, FN_SUF)(x, r, rows, W, shift, s1, s2, 4, fetch);
    /* The last two or three rows in one visit too, not one pass over the sums each: with few
     * rows (a small batch) and wide rows, the passes over the float64 sums and shifts (24
     * bytes a column) outweigh the rows' own bytes.  The last visit: no rows after it to
     * fetch. */
    if (rows - r == 3)
        r = FN_NAME(stats_cols_visits, FN_SUF)(x, r, rows, W, shift, s1, s2, 3, 0);
    else if (rows - r == 2)
        r = FN_NAME(stats_cols_visits, FN_SUF)(x, r, rows, W, shift, s1, s2, 2, 0);
    for (; r < rows; ++r) {
        const T *row = x + r * W;
#pragma omp simd
        for (int64_t w = 0; w < W; ++w) {
            const double d = (double)row[w] - shift[w];
            s1[w] += d;
            s2[w] += d * d;
        }
    }
}

/* Per unit: s1 = sum(dy), s2 = sum(dy * (x - center[u])), in address order as
 * fn_norm_stats_runs. */
void FN_NAME(fn_norm_dual_runs, FN_SUF)(const T *dy, const T *x, int64_t A, int64_t C, int64_t B,
                                        int64_t u0, int64_t u1, const double *center,
                                        double *s1, double *s2)
{
    for (int64_t u = u0; u < u1;) {
        const int64_t p = u / C, c0 = u % C, c1 = u1 - p * C < C ? u1 - p * C : C;
        const int64_t base = p * A * C * B;
        for (int64_t c = c0; c < c1; ++c)
            s1[p * C + c] = s2[p * C + c] = 0.0;
        const int fetch = DUAL_FETCH && FN_NAME(fetch_next_sample, FN_SUF)(B, c1 - c0);
        for (int64_t a = 0; a < A; ++a)
            for (int64_t c = c0; c < c1; ++c) {
                const int64_t off = base + (a * C + c) * B;
                RUN_DUAL(dy + off, x + off, B, center[p * C + c], &s1[p * C + c], &s2[p * C + c],
                         fetch && a + 1 < A ? C * B : 0);
            }
        u = p * C + c1;
    }
}

/* Visits of k rows from row r of fn_norm_dual_cols below while k whole rows are left, as
 * stats_cols_visits (with `fetch`, the columns in chunks and the same columns of the next
 * visit's rows of both arrays fetched into L2); each row's terms added to each column's sums
 * row after row, as the one-row loop adds them (the same bits).  Returns the first row not
 * done. */
static inline __attribute__((always_inline)) int64_t FN_NAME(dual_cols_visits, FN_SUF)(
    const T *dy, const T *x, int64_t r, int64_t rows, int64_t W, const double *center,
    double *s1, double *s2, const int k, int fetch, const T *rw)
{
    COLS_VISITS(r, rows, W, k, fetch, const T *xr = x + r * W; const T *gr = dy + r * W;,
                FN_NAME(cols_fetch, FN_SUF)(xr + k * W, k, W, w0, w1);
                FN_NAME(cols_fetch, FN_SUF)(gr + k * W, k, W, w0, w1);,
                const double c = center[w];
                double a = s1[w], b = s2[w];
                /* k <= 4.  Every row's dy converted first, as in the four-row visit when
                 * it was written out: against that, (16384, 256) float32 ran 0.94-0.98x with
                 * each conversion beside its use and 0.97-1.00x like this (1 thread, paired;
                 * within noise of each other). */
                double h[4];
                _Pragma("GCC unroll 4")
                for (int j = 0; j < k; ++j)
                    h[j] = rw ? (double)gr[j * W + w] * (double)rw[r + j] : (double)gr[j * W + w];
                _Pragma("GCC unroll 4")
                for (int j = 0; j < k; ++j) {
                    a += h[j];
                    b += h[j] * ((double)xr[j * W + w] - c);
                }
                s1[w] = a;
                s2[w] = b;)
    return r;
}

#if defined(FN_LANES16) && FN_REAL == 32
/* The float32 column sums without row weights with the AVX2 / AVX-512 lanes: per visit of k
 * rows (as dual_cols_visits) each column's k terms go in float, p = sum(g) and
 * q = sum(g * (x - cf)) (cf the float nearest the column's centre, g * (x - cf) fused,
 * x - cf rounded to float), and then into the float64 sums, instead of converting every
 * element to double; the sums then carry a few float roundings of k <= 4 terms per visit, as
 * the runs' float stretches do (run_dual).  Columns [0, n) of rows W apart from dy and x on;
 * cf, s1 and s2 are the slab's (dual_cols_float).  Returns the first row not done. */
static inline __attribute__((always_inline)) int64_t FN_NAME(dual_cols_float_visits, FN_SUF)(
    const T *dy, const T *x, int64_t r, int64_t rows, int64_t W, int64_t n, const T *cf,
    double *s1, double *s2, const int k, int fetch)
{
    COLS_VISITS(r, rows, n, k, fetch, const T *xr = x + r * W; const T *gr = dy + r * W;,
                FN_NAME(cols_fetch, FN_SUF)(xr + k * W, k, W, w0, w1);
                FN_NAME(cols_fetch, FN_SUF)(gr + k * W, k, W, w0, w1);,
                T p = 0, q = 0;
                _Pragma("GCC unroll 4")
                for (int j = 0; j < k; ++j) {
                    const T g = gr[j * W + w];
                    p += g;
                    q += g * (xr[j * W + w] - cf[w]);
                }
                s1[w] += (double)p;
                s2[w] += (double)q;)
    return r;
}

#define COLS_SLAB 2048   /* columns per slab of dual_cols_float: their float centres on the stack */

/* dual_cols without row weights in float32 with the lanes, by slabs of at most COLS_SLAB
 * columns (each over all the rows; the order of each column's terms does not depend on the
 * slabs).  Each column's second sum is then moved from cf to its centre in double,
 * sum(g * (x - c)) = sum(g * (x - cf)) + (cf - c) * sum(g), and a column whose float sums
 * overflowed (|dy| near 1e38, or |dy * (x - c)| above 3.4e38) or hold a NaN takes its second
 * sum in double, and its first too where that one failed (sum(dy) does not see x): the bits
 * the double form gives it, and the other columns keep theirs.  Against the double form on
 * AMD Zen 1 (whose 256-bit conversions issue as two halves), C harness, 1 thread, blocks of
 * 128 rows as normalization.pyx takes them, (4096, 1024) from memory 3.8 -> 2.9-3.0 ms, (256,
 * 1024) from L2/L3 0.15-0.17 -> 0.08 ms. */
static inline __attribute__((always_inline)) void FN_NAME(dual_cols_float, FN_SUF)(
    const T *dy, const T *x, int64_t rows, int64_t W, const double *center, double *s1,
    double *s2, int fetch)
{
    T cf[COLS_SLAB];
    for (int64_t c0 = 0; c0 < W; c0 += COLS_SLAB) {
        const int64_t n = W - c0 < COLS_SLAB ? W - c0 : COLS_SLAB;
        const T *gs = dy + c0, *xs = x + c0;
        double *a = s1 + c0, *b = s2 + c0;
        for (int64_t w = 0; w < n; ++w) {
            cf[w] = (T)center[c0 + w];
            a[w] = b[w] = 0.0;
        }
        int64_t r =
            FN_NAME(dual_cols_float_visits, FN_SUF)(gs, xs, 0, rows, W, n, cf, a, b, 4, fetch);
        if (rows - r == 3)
            r = FN_NAME(dual_cols_float_visits, FN_SUF)(gs, xs, r, rows, W, n, cf, a, b, 3, 0);
        else if (rows - r == 2)
            r = FN_NAME(dual_cols_float_visits, FN_SUF)(gs, xs, r, rows, W, n, cf, a, b, 2, 0);
        FN_NAME(dual_cols_float_visits, FN_SUF)(gs, xs, r, rows, W, n, cf, a, b, 1, 0);
        for (int64_t w = 0; w < n; ++w) {
            const double c = center[c0 + w];
            b[w] += ((double)cf[w] - c) * a[w];
            if (isfinite(a[w]) && isfinite(b[w]))
                continue;
            double da = 0.0, db = 0.0;
            for (int64_t i = 0; i < rows; ++i) {
                const double g = (double)gs[i * W + w];
                da += g;
                db += g * ((double)xs[i * W + w] - c);
            }
            if (!isfinite(a[w]))
                a[w] = da;
            b[w] = db;
        }
    }
}
#undef COLS_SLAB
#endif

/* Column sums of a (rows, W) block: s1[w] = sum_r g, s2[w] = sum_r g * (x[r,w] - center[w])
 * with g = dy[r,w] * rw[r] (rw: a weight per row, NULL: none, g = dy; the weighted sums are
 * layer norm's of a Fortran-order x).  dual_cols below is inlined with rw a literal NULL
 * or not, so that batch norm's sums do not multiply by a weight.  Float32 without row weights
 * goes by dual_cols_float where the lanes exist. */
static inline __attribute__((always_inline)) void FN_NAME(dual_cols, FN_SUF)(
    const T *dy, const T *x, int64_t rows, int64_t W, const double *center, double *s1,
    double *s2, int fetch, const T *rw)
{
#if defined(FN_LANES16) && FN_REAL == 32
    if (!rw) {
        FN_NAME(dual_cols_float, FN_SUF)(dy, x, rows, W, center, s1, s2, fetch);
        return;
    }
#endif
    for (int64_t w = 0; w < W; ++w)
        s1[w] = s2[w] = 0.0;
    /* Four rows per visit (fn_norm_stats_cols: eight from 2 KiB rows), the next visit's rows
     * of both arrays fetched chunk by chunk: from memory, 1 thread, Zen 4, kernels through
     * ctypes interleaved with no prefetch ((4096, 1024) float32: 1.21x, 2.37 -> 1.96 ms),
     * (8192, 512) 2.00x, (16384, 256) 2.02x, (2048, 2048) 1.21x; from L3 1.13-2.35x.  Chunks
     * of 32 and 128 columns: 1.08-2.30x and 1.10-2.13x.  (On Zen 5, a burst of the next four
     * rows into L1 before each visit had made these sums slower, 1.27-1.30 -> 1.43-1.46 ms.) */
    int64_t r = FN_NAME(dual_cols_visits, FN_SUF)(dy, x, 0, rows, W, center, s1, s2, 4, fetch, rw);
    /* The last two or three rows in one visit (as fn_norm_stats_cols, nothing to fetch). */
    if (rows - r == 3)
        r = FN_NAME(dual_cols_visits, FN_SUF)(dy, x, r, rows, W, center, s1, s2, 3, 0, rw);
    else if (rows - r == 2)
        r = FN_NAME(dual_cols_visits, FN_SUF)(dy, x, r, rows, W, center, s1, s2, 2, 0, rw);
    for (; r < rows; ++r) {
        const T *xr = x + r * W, *gr = dy + r * W;
        const double wr = rw ? (double)rw[r] : 1.0;
#pragma omp simd
        for (int64_t w = 0; w < W; ++w) {
            const double g = rw ? (double)gr[w] * wr : (double)gr[w];
            s1[w] += g;
            s2[w] += g * ((double)xr[w] - center[w]);
        }
    }
}

void FN_NAME(fn_norm_dual_cols, FN_SUF)(const T *dy, const T *x, int64_t rows, int64_t W,
                                        const double *center, double *s1, double *s2, int fetch,
                                        const T *rw)
{
    if (rw)
        FN_NAME(dual_cols, FN_SUF)(dy, x, rows, W, center, s1, s2, fetch, rw);
    else
        FN_NAME(dual_cols, FN_SUF)(dy, x, rows, W, center, s1, s2, fetch, NULL);
}

/* The runs [u0, u1) of fn_norm_affine (B > 1) and of fn_norm_affine_grad, from the last down
 * (see fn_norm_affine). */
static __attribute__((noinline)) void FN_NAME(affine_runs_down, FN_SUF)(
    const T *x, T *y, int64_t A, int64_t C, int64_t B, int64_t u0, int64_t u1, const T *mhi,
    const T *scale, const T *shift)
{
    for (int64_t u = u1 - 1; u >= u0; --u) {
        const int64_t k = (u / (A * C)) * C + u % C;
        AFFINE_RUN_DOWN(x + u * B, y + u * B, B, mhi[k], scale[k], shift[k]);
    }
}

static __attribute__((noinline)) void FN_NAME(affine_grad_runs_down, FN_SUF)(
    const T *dy, const T *x, T *gx, int64_t A, int64_t C, int64_t B, int64_t u0, int64_t u1,
    const T *k1, const T *mhi, const T *k2, const T *k3)
{
    for (int64_t u = u1 - 1; u >= u0; --u) {
        const int64_t k = (u / (A * C)) * C + u % C;
        AFFINE_GRAD_RUN_DOWN(dy + u * B, x + u * B, gx + u * B, B, k1[k], mhi[k], k2[k], k3[k]);
    }
}

/* fn_norm_affine below, upwards (and channels-last: B == 1). */
static __attribute__((noinline)) void FN_NAME(affine_up, FN_SUF)(
    const T *x, T *y, int64_t A, int64_t C, int64_t B, int64_t u0, int64_t u1, const T *mhi,
    const T *scale, const T *shift, int stream)
{
    if (B == 1) {  /* channels-last: vectorize along the channels of a row */
        int64_t u = u0;
        while (u < u1) {
            const int64_t r = u / C, c0 = u % C;
            const int64_t c1 = (u1 - r * C) < C ? (u1 - r * C) : C;
            const int64_t q = (r / A) * C;
            const T *xr = x + r * C;
            T *yr = y + r * C;
            const T *h = mhi + q, *s = scale + q, *t = shift + q;
            if (STREAM_ROWS(stream)) {
                FN_MAP_STREAMED(T, FN_STREAM_COPY, 1, yr + c0, c1 - c0, i,
                                (xr[c0 + i] - h[c0 + i]) * s[c0 + i] + t[c0 + i]);
                u = r * C + c1;
                continue;
            }
            if (FOUR_ROWS_AT(u, r, c0)) {
                const T *x1 = xr + C, *x2 = x1 + C, *x3 = x2 + C;
                T *y1 = yr + C, *y2 = y1 + C, *y3 = y2 + C;
#pragma omp simd simdlen(CHANNEL_VECTOR_LANES)
                for (int64_t c = 0; c < C; ++c) {
                    const T hc = h[c], sc = s[c], tc = t[c];
                    yr[c] = (xr[c] - hc) * sc + tc;
                    y1[c] = (x1[c] - hc) * sc + tc;
                    y2[c] = (x2[c] - hc) * sc + tc;
                    y3[c] = (x3[c] - hc) * sc + tc;
                }
                u += 4 * C;
                continue;
            }
#pragma omp simd simdlen(CHANNEL_VECTOR_LANES)
            for (int64_t c = c0; c < c1; ++c)
                yr[c] = (xr[c] - h[c]) * s[c] + t[c];
            u = r * C + c1;
        }
    } else {
        for (int64_t u = u0; u < u1; ++u) {
            const int64_t k = (u / (A * C)) * C + u % C;
            AFFINE_RUN(x + u * B, y + u * B, B, mhi[k], scale[k], shift[k], stream);
        }
    }
    if (stream)
        fn_stream_fence();
}

/* fn_norm_affine_grad below, upwards (and channels-last). */
static __attribute__((noinline)) void FN_NAME(affine_grad_up, FN_SUF)(
    const T *dy, const T *x, T *gx, int64_t A, int64_t C, int64_t B, int64_t u0, int64_t u1,
    const T *k1, const T *mhi, const T *k2, const T *k3, int stream)
{
    if (B == 1) {
        int64_t u = u0;
        while (u < u1) {
            const int64_t r = u / C, c0 = u % C;
            const int64_t c1 = (u1 - r * C) < C ? (u1 - r * C) : C;
            const int64_t q = (r / A) * C;
            const T *xr = x + r * C, *gr = dy + r * C;
            T *out = gx + r * C;
            const T *a1 = k1 + q, *h = mhi + q, *a2 = k2 + q, *a3 = k3 + q;
            if (STREAM_ROWS(stream)) {
                FN_MAP_STREAMED(T, FN_STREAM_COPY, 1, out + c0, c1 - c0, i,
                                gr[c0 + i] * a1[c0 + i] + (xr[c0 + i] - h[c0 + i]) * a2[c0 + i]
                                    + a3[c0 + i]);
                u = r * C + c1;
                continue;
            }
            if (FOUR_ROWS_AT(u, r, c0)) {
                const T *x1 = xr + C, *x2 = x1 + C, *x3 = x2 + C;
                const T *g1 = gr + C, *g2 = g1 + C, *g3 = g2 + C;
                T *o1 = out + C, *o2 = o1 + C, *o3 = o2 + C;
#pragma omp simd simdlen(CHANNEL_VECTOR_LANES)
                for (int64_t c = 0; c < C; ++c) {
                    const T b1 = a1[c], hc = h[c], b2 = a2[c], b3 = a3[c];
                    out[c] = gr[c] * b1 + (xr[c] - hc) * b2 + b3;
                    o1[c] = g1[c] * b1 + (x1[c] - hc) * b2 + b3;
                    o2[c] = g2[c] * b1 + (x2[c] - hc) * b2 + b3;
                    o3[c] = g3[c] * b1 + (x3[c] - hc) * b2 + b3;
                }
                u += 4 * C;
                continue;
            }
#pragma omp simd simdlen(CHANNEL_VECTOR_LANES)
            for (int64_t c = c0; c < c1; ++c)
                out[c] = gr[c] * a1[c] + (xr[c] - h[c]) * a2[c] + a3[c];
            u = r * C + c1;
        }
    } else {
        for (int64_t u = u0; u < u1; ++u) {
            const int64_t k = (u / (A * C)) * C + u % C;
            AFFINE_GRAD_RUN(dy + u * B, x + u * B, gx + u * B, B, k1[k], mhi[k], k2[k], k3[k],
                            stream);
        }
    }
    if (stream)
        fn_stream_fence();
}

/* y = (x - mhi) * scale + shift with parameters per (p, c), for the runs u in [u0, u1) of
 * the (P*A*C) run index (run u starts at u*B, p = u / (A*C)): affine_up, or, where y trails
 * x (B > 1, not streamed), affine_runs_down: the runs from the last down, each from its end
 * down, the whole range in one descent (with runs of up to 4 KiB descending one by one but
 * the runs upwards, the stores of a run still held up the loads of the runs above it that
 * share their page offsets: 1 KiB runs 1.02-1.05x, 4 KiB runs 1.13-1.38x faster than
 * upwards, against 1.37-1.65x and 1.30-1.74x in one descent, kernel through ctypes).  A
 * whole descent needs no size bound (DOWN_MAX_BYTES is for runs descending one by one):
 * kernel through ctypes, 1 thread, (64, 64, 1024) float32 (16 MiB, from memory) 48 / 64
 * bytes after x, this pass 1.09-1.18x / 1.18-1.22x faster than upwards, the gradient pass
 * 1.19x / 1.23x.  The three are functions of their own: with the downward branch inside
 * it, the upward pass compiled otherwise and ran its streamed batch norm 2-D eval (64, 64,
 * 56, 56) float32 2.5-4% slower (kernel through ctypes, 1 thread). */
void FN_NAME(fn_norm_affine, FN_SUF)(const T *x, T *y, int64_t A, int64_t C, int64_t B,
                                     int64_t u0, int64_t u1, const T *mhi, const T *scale,
                                     const T *shift, int stream)
{
    if (B > 1 && !stream && fn_trails(y, x))
        FN_NAME(affine_runs_down, FN_SUF)(x, y, A, C, B, u0, u1, mhi, scale, shift);
    else
        FN_NAME(affine_up, FN_SUF)(x, y, A, C, B, u0, u1, mhi, scale, shift, stream);
}

/* gx = dy * k1 + (x - mhi) * k2 + k3 with parameters per (p, c); same indexing and the same
 * split as fn_norm_affine, downwards where gx trails dy or x and leads neither
 * (fn_trails_one_of). */
void FN_NAME(fn_norm_affine_grad, FN_SUF)(const T *dy, const T *x, T *gx, int64_t A, int64_t C,
                                          int64_t B, int64_t u0, int64_t u1, const T *k1,
                                          const T *mhi, const T *k2, const T *k3, int stream)
{
    if (B > 1 && !stream && fn_trails_one_of(gx, dy, x))
        FN_NAME(affine_grad_runs_down, FN_SUF)(dy, x, gx, A, C, B, u0, u1, k1, mhi, k2, k3);
    else
        FN_NAME(affine_grad_up, FN_SUF)(dy, x, gx, A, C, B, u0, u1, k1, mhi, k2, k3, stream);
}

/* One row of layer / RMS norm's output, y = ((x - h) * s + o) [* w] [+ b] (w, b NULL: absent;
 * every call site passes each as itself or a literal NULL, so that each variant is compiled
 * knowing its terms, as rows_grad_sums below).  With xn (not NULL) the sums of that row (a
 * later one) accumulate meanwhile and are stored in *s1, *s2: the same bits as
 * run_sums(xn, K, shift, ...) adds to zeros (a sum from +0.0 is never -0.0), so that their add
 * and multiply-add chains (a wait of 4 cycles per 16 elements at one step per lane vector)
 * run under this row's loads and stores instead of before them. */
static inline __attribute__((always_inline)) void FN_NAME(row_output, FN_SUF)(
    const T *xr, T *yr, int64_t K, T h, T s, T o, const T *w, const T *b, const T *xn,
    double shift, double *s1, double *s2, int stream, int down)
{
#define ROW_Y(k) (w ? (b ? ((xr[k] - h) * s + o) * w[k] + b[k] : ((xr[k] - h) * s + o) * w[k])  \
                    : (b ? ((xr[k] - h) * s + o) + b[k] : (xr[k] - h) * s + o))
#define ROW_PIECE(k0) PIECE16(k0, k, yr[k] = ROW_Y(k))
    /* down (never with stream): the output from its end down, see rows_by_groups. */
    if (!xn && !down) {
        FN_MAP_STREAMED(T, FN_STREAM_COPY, stream, yr, K, k, ROW_Y(k));
        return;
    }
    double sa = 0.0, sb = 0.0;
    int64_t k0 = 0;
    if (down) {
        const int64_t whole = K / 16 * 16;
#pragma omp simd
        for (int64_t k = whole; k < K; ++k)
            yr[k] = ROW_Y(k);
        if (xn) {
            /* piece k0 of the sums beside piece whole - 16 - k0 of the output */
            SUMS_OF_PIECES(xn, K, shift, sa, sb, k0, ROW_PIECE(whole - 16 - k0));
            FN_NAME(run_sums_tail, FN_SUF)(xn, k0, K, shift, &sa, &sb);
        }
        /* the pieces the sums did not take along (all of them without xn or the lanes) */
        for (int64_t j0 = whole - 16 - k0; j0 >= 0; j0 -= 16)
            ROW_PIECE(j0)
    } else {
        SUMS_OF_PIECES(xn, K, shift, sa, sb, k0, ROW_PIECE(k0));
        FN_NAME(run_sums_tail, FN_SUF)(xn, k0, K, shift, &sa, &sb);
#pragma omp simd
        for (int64_t k = k0; k < K; ++k)
            yr[k] = ROW_Y(k);
    }
    if (xn) {
        *s1 = sa;
        *s2 = sb;
    }
#undef ROW_PIECE
#undef ROW_Y
}

/* What a row's output pass needs of its statistics: y = ((x - h) * s + o) [* w] [+ b]. */
typedef struct { T h, s, o; } FN_NAME(row_coefs, FN_SUF);

/* Row r's statistics from its mean mu (0 for RMS norm) and (biased) variance var: mean[r]
 * (not for RMS norm) and rstd[r] stored, and the coefficients of its output pass returned. */
static inline FN_NAME(row_coefs, FN_SUF) FN_NAME(row_coefs_from, FN_SUF)(
    double mu, double var, double eps, int rms, T *mean, T *rstd, int64_t r)
{
    if (!rms)
        mean[r] = (T)mu;
    const double rs = 1.0 / sqrt(var + eps);
    rstd[r] = (T)rs;
    /* x - mu = (x - h) - (mu - h) with h = mu rounded to T: x - h is exact near the
     * mean (Sterbenz) and -(mu - h) * s joins as one constant o (fn_affine_shift: -0
     * where mu - h is 0 or s infinite, so that -0 stays -0 and an infinite s gives
     * +-inf, not inf - inf), so that the row costs one subtraction and, with FMA, one
     * multiply-add per element before the affine terms (it was ((x - h) - l) * s: two
     * subtractions and a multiplication).  A row with a NaN gives NaN through x - h
     * already; a NaN o would only make the NaN's sign depend on the operand order the
     * compiler chose (-0.0 - NaN compiles to a negation), so o is -0 there too. */
    FN_NAME(row_coefs, FN_SUF) c;
    c.h = (T)mu;
    c.s = (T)rs;
    const double shift_o = fn_affine_shift(mu, (double)c.h, (double)c.s, -0.0);
    c.o = (T)(isnan(shift_o) ? -0.0 : shift_o);
    return c;
}

/* Row r's statistics from its sums s1, s2 of x - shift (shift 0 for RMS norm): mean[r] (not
 * for RMS norm) and rstd[r] stored, and the coefficients of its output pass returned. */
static inline FN_NAME(row_coefs, FN_SUF) FN_NAME(row_stats, FN_SUF)(
    double shift, double s1, double s2, int64_t K, double eps, int rms, T *mean, T *rstd,
    int64_t r)
{
    double mu = 0.0, var;
    if (rms) {
        var = s2 / (double)K;
    } else {
        mu = shift + s1 / (double)K;
        var = (s2 - s1 * (s1 / (double)K)) / (double)K;
        if (var < 0.0)
            var = 0.0;
    }
    return FN_NAME(row_coefs_from, FN_SUF)(mu, var, eps, rms, mean, rstd, r);
}

/* row_output of row r (xr, yr) with coefficients c, for each combination of w and b. */
#define ROW_OUTPUT(xn, shift, s1, s2, down)                                                      \
    do {                                                                                         \
        if (w && b)                                                                              \
            FN_NAME(row_output, FN_SUF)(xr, yr, K, c.h, c.s, c.o, w, b, xn, shift, s1, s2,     \
                                        stream, down);                                           \
        else if (w)                                                                              \
            FN_NAME(row_output, FN_SUF)(xr, yr, K, c.h, c.s, c.o, w, NULL, xn, shift, s1, s2,  \
                                        stream, down);                                           \
        else if (b)                                                                              \
            FN_NAME(row_output, FN_SUF)(xr, yr, K, c.h, c.s, c.o, NULL, b, xn, shift, s1, s2,  \
                                        stream, down);                                           \
        else                                                                                     \
            FN_NAME(row_output, FN_SUF)(xr, yr, K, c.h, c.s, c.o, NULL, NULL, xn, shift, s1,   \
                                        s2, stream, down);                                       \
    } while (0)

#define ROW_GROUP 4   /* most rows per group of rows_by_groups */

/* Rows [r0, r1) of fn_norm_rows_forward below (not streamed) by groups of `group` rows (at
 * most ROW_GROUP): each row's output is written while the sums of the row one group further
 * on accumulate (row_output), and then the statistics of that whole group are taken, their
 * chains of divisions and a square root (about 90 cycles after the sums) side by side, where
 * rows one by one each waited for their own.  Inlined with group a literal 1 too, where the
 * sums then stay in registers (through the arrays, which a variable group needs, float64
 * (32, 768) ran 1.03x slower than with one row after the other before). */
static inline __attribute__((always_inline)) void FN_NAME(rows_by_groups, FN_SUF)(
    const T *x, T *y, int64_t K, int64_t r0, int64_t r1, const T *w, const T *b, double eps,
    int rms, T *mean, T *rstd, const int64_t group)
{
    const int stream = 0;
    /* Each row's output from its end down where it trails the row (fn_trails, fn_stream.h):
     * its stores then no longer hold up the loads of x that follow them (the next rows' sums
     * still go upwards, in the order that gives their bits), but only for rows that stay in
     * the caches (DOWN_MAX_BYTES).  AMD Zen 4, float32, out= 48 / 64 / 128 bytes after x
     * modulo 4 KiB, 1 thread, kernel through ctypes, downwards against upwards: (1024, 768)
     * 1.10-1.25x / 1.09-1.18x / 1.06x, (32, 768) 1.04-1.07x / 1.05-1.09x / 1.04x; from memory
     * (each row downwards, the rows upwards: a pattern the prefetchers may not follow; not
     * measured further), (8192, 768) 0.82x / 0.76-0.83x / 0.74x.  The bound is on this
     * call's rows, a thread's share where the rows are split. */
    const int down = (r1 - r0) * K * (int64_t)sizeof(T) <= DOWN_MAX_BYTES && fn_trails(y, x);
    /* The sums of the rows of the next group (the first group's: a pass of their own). */
    double shift[ROW_GROUP], s1[ROW_GROUP], s2[ROW_GROUP];
    for (int64_t r = r0; r < r1 && r < r0 + group; ++r) {
        const int64_t j = r - r0;
        shift[j] = rms ? 0.0 : fn_sums_center((double)x[r * K]);
        s1[j] = 0.0;
        s2[j] = 0.0;
        RUN_SUMS(x + r * K, K, shift[j], &s1[j], &s2[j], NULL);
    }
    for (int64_t g = r0; g < r1; g += group) {
        const int64_t n = r1 - g < group ? r1 - g : group;
        FN_NAME(row_coefs, FN_SUF) coefs[ROW_GROUP];
        for (int64_t j = 0; j < n; ++j)
            coefs[j] = FN_NAME(row_stats, FN_SUF)(shift[j], s1[j], s2[j], K, eps, rms, mean, rstd,
                                                  g + j);
        for (int64_t j = 0; j < n; ++j) {
            const int64_t r = g + j;
            const T *xr = x + r * K;
            T *yr = y + r * K;
            const T *xn = r + group < r1 ? xr + group * K : NULL;
            shift[j] = (xn && !rms) ? fn_sums_center((double)xn[0]) : 0.0;
            const FN_NAME(row_coefs, FN_SUF) c = coefs[j];
            ROW_OUTPUT(xn, shift[j], &s1[j], &s2[j], down);
        }
    }
}

/* Layer norm (rms = 0) or RMS norm (rms = 1) of rows [r0, r1) of an (M, K) array; w and b
 * may be NULL; mean is not written for RMS norm.  Rows go by groups (rows_by_groups) of up
 * to 4, and of as many as let the group's rows of x and y and the weight and bias, 2 * group
 * + 2 rows, fit L1's 32 KiB.  (A row's sums and its output are about 3 * group + 2 rows of
 * traffic apart, so part of it may come from L2; the measured choice: groups of 4 against
 * rows one by one, Zen 3, 1 thread, interleaved: float32 (32, 768) 1.04-1.05x, (256, 1024)
 * 1.03x, (64, 64) 1.21-1.24x; float64 (64, 64) 1.19x, (64, 256) 1.07x; float64 (32, 768) in
 * groups of 2, its rows 6 KiB, 0.96-0.97x.)  Streamed rows (stream) come from memory, where
 * the sums wait on loads, not on their chains: each row's sums are taken just before its
 * output, which then finds the row in cache. */
void FN_NAME(fn_norm_rows_forward, FN_SUF)(const T *x, T *y, int64_t K, int64_t r0, int64_t r1,
                                           const T *w, const T *b, double eps, int rms,
                                           T *mean, T *rstd, int stream)
{
    if (stream) {
        for (int64_t r = r0; r < r1; ++r) {
            const T *xr = x + r * K;
            T *yr = y + r * K;
            const double shift = rms ? 0.0 : fn_sums_center((double)xr[0]);
            double s1 = 0.0, s2 = 0.0;
            RUN_SUMS(xr, K, shift, &s1, &s2, NULL);
            const FN_NAME(row_coefs, FN_SUF) c =
                FN_NAME(row_stats, FN_SUF)(shift, s1, s2, K, eps, rms, mean, rstd, r);
            ROW_OUTPUT(NULL, 0.0, NULL, NULL, 0);
        }
        fn_stream_fence();
        return;
    }
    const int64_t rows_in_l1 = (32 << 10) / (K * (int64_t)sizeof(T));
    const int64_t group = rows_in_l1 >= 2 * ROW_GROUP + 2 ? ROW_GROUP
                          : rows_in_l1 >= 6                ? (rows_in_l1 - 2) / 2
                                                           : 1;
    if (group == 1)
        FN_NAME(rows_by_groups, FN_SUF)(x, y, K, r0, r1, w, b, eps, rms, mean, rstd, 1);
    else
        FN_NAME(rows_by_groups, FN_SUF)(x, y, K, r0, r1, w, b, eps, rms, mean, rstd, group);
}
#undef ROW_GROUP
#undef ROW_OUTPUT

/* The sums of one row of the backward, a1 = sum(g) and a2 = sum(g * xc) with
 * g = dy * w (w NULL: 1) and xc = x - mu, and the row's terms of the parameter gradients,
 * gw[k] += dy * (xc * rs) and gb[k] += dy (gw/gb NULL: not wanted).  For short rows the
 * column updates sit in this loop, which waits for the row to arrive from memory, not in
 * the output loop, which reads cache: there they made the (8192, 768) float32 backward
 * 2.9x slower than without parameter gradients (4.0 ms against 1.4; here 2.5-2.9 ms).
 * Taking two or four rows per visit of the columns in this loop was slower still
 * (interleaved rows from memory: 2.6x slower even without parameter gradients); wider
 * rows from memory leave the updates to rows_param_sums (see normalization.pyx).  The
 * column terms here serve float64 only: float32 takes rows_param_sums_float.  Every
 * call site passes gw and gb as themselves or a literal NULL, and w as a literal NULL or
 * under a test of w, so each variant is compiled knowing which terms exist (with
 * "w ? w[k] : 1" left to run time, gcc loaded w[k] under a mask from address 0, 7x slower). */
static inline __attribute__((always_inline)) void FN_NAME(rows_grad_sums, FN_SUF)(
    const T *dy, const T *x, int64_t K, const T *w, T mu, double rs, double *a1, double *a2,
    double *gw, double *gb)
{
    double p = 0.0, q = 0.0;
    int64_t k0 = 0;
#if defined(FN_LANES16) && FN_REAL == 32
    /* float32 without column terms: the sums by float_dual_pieces, as converting
     * every element to double had limited this loop (backward without parameter gradients,
     * Zen 3, paired medians of the final build, 1 / 2 threads: (512, 768) 1.10x / 1.14x,
     * (2048, 256) 1.08x / 1.20x, (32, 768) 1.12x / 1.11x, (64, 4096) 1.13x / 1.13x,
     * (4, 50000) 1.18x / 1.16x, (8192, 768) from memory level; earlier runs up to 1.23x).  A row
     * whose float sums come out inf or NaN takes the double sums below instead, which give
     * the bits it had before.  The column terms need d and xc as doubles anyway (done here
     * alongside the float sums, 0.92-0.95x), so rows with them keep the double sums; float32
     * no longer takes them here (its parameter gradients go by rows_param_sums_float), so its
     * grad_x has the same bits with and without parameter gradients. */
    int double_sums = 1;
    if (!gw && !gb) {
        k0 = FN_NAME(float_dual_pieces, FN_SUF)(dy, w, x, K, mu, &p, &q, 0);
        double_sums = !(isfinite(p) && isfinite(q));
        if (double_sums)
            p = q = 0.0, k0 = 0;
    }
#else
    const int double_sums = 1;
    (void)double_sums;
#endif
#ifdef FN_LANES16
    if (double_sums) {
        /* Whole 16-element pieces in the lanes, as run_dual (gcc's reduction converted the upper
         * halves by extracts and reduced through the stack), the column terms alongside with the
         * per-element operations of the loop below (one fused multiply-add into gw, as
         * rows_param_sums), so that both float64 parameter paths give the same bits; the loop
         * below takes the rest. */
        const VPD rsv = VPD_SET1(rs);
        LANES pl = FN_NAME(lanes_set1, FN_SUF)(0.0), ql = pl;
        for (; k0 + 16 <= K; k0 += 16) {
#pragma GCC unroll 4   /* unrolled, so that the accumulators' vectors stay in registers */
            for (int v = 0; v < LANE_VECS; ++v) {   /* vector by vector: fewer live registers */
                const int64_t k = k0 + v * LANE_W;
                const VPD d = FN_NAME(vpd_load, FN_SUF)(dy + k);
                const VPD g = w ? VPD_MUL(d, FN_NAME(vpd_load, FN_SUF)(w + k)) : d;
                const VPD xc = FN_NAME(vpd_load_less, FN_SUF)(x + k, mu);   /* x - mu rounded to T, as below */
                FN_NAME(vpd_add, FN_SUF)(g, xc, &pl.v[v], &ql.v[v]);
                if (gw)
                    VPD_STOREU(gw + k, VPD_FMA(d, VPD_MUL(xc, rsv), VPD_LOADU(gw + k)));
                if (gb)
                    VPD_STOREU(gb + k, VPD_ADD(VPD_LOADU(gb + k), d));
            }
        }
        p = FN_NAME(lanes_tree_sum, FN_SUF)(pl);
        q = FN_NAME(lanes_tree_sum, FN_SUF)(ql);
    }
#endif
#pragma omp simd reduction(+:p, q)
    for (int64_t k = k0; k < K; ++k) {
        const T d = dy[k], xc = x[k] - mu;
        const double g = w ? (double)d * (double)w[k] : (double)d;
        p += g;
        q += g * (double)xc;
        if (gw)
            gw[k] += (double)d * ((double)xc * rs);
        if (gb)
            gb[k] += (double)d;
    }
    *a1 = p;
    *a2 = q;
}

/* rows_grad_sums of the current row (gr, xr, mu, rs of fn_norm_rows_backward below, its
 * sums into a1, a2) with w = wp, and its column terms into pw, pb (either may be NULL). */
#define GRAD_ROW_SUMS(wp, pw, pb)                                                            \
    do {                                                                                     \
        if ((pw) && (pb))                                                                    \
            FN_NAME(rows_grad_sums, FN_SUF)(gr, xr, K, wp, mu, rs, &a1, &a2, pw, pb);        \
        else if (pw)                                                                         \
            FN_NAME(rows_grad_sums, FN_SUF)(gr, xr, K, wp, mu, rs, &a1, &a2, pw, NULL);      \
        else if (pb)                                                                         \
            FN_NAME(rows_grad_sums, FN_SUF)(gr, xr, K, wp, mu, rs, &a1, &a2, NULL, pb);      \
        else                                                                                 \
            FN_NAME(rows_grad_sums, FN_SUF)(gr, xr, K, wp, mu, rs, &a1, &a2, NULL, NULL);    \
    } while (0)

/* Layer norm backward's parameter gradients: gw[k] += sum_r dy[r,k] * ((x[r,k] - mu_r) * rs_r)
 * and gb[k] += sum_r dy[r,k] over rows [r0, r1) of the (M, K) arrays (mu_r = mean[r], 0 for
 * RMS norm; rs_r = rstd[r]), the rows added one after the other exactly as rows_grad_sums
 * adds them (so the same bits), but four rows per visit of the columns: a quarter of the
 * loads and stores of the double gw, gb.  Called on rows still in cache (see below).
 * gw or gb may be NULL. */
static inline void FN_NAME(rows_param_sums, FN_SUF)(const T *dy, const T *x, int64_t K,
                                                    int64_t r0, int64_t r1, const T *mean,
                                                    const T *rstd, int rms, double *gw, double *gb)
{
    int64_t r = r0;
    for (; r + 4 <= r1; r += 4) {
        const T *d0 = dy + r * K, *d1 = d0 + K, *d2 = d1 + K, *d3 = d2 + K;
        const T *x0 = x + r * K, *x1 = x0 + K, *x2 = x1 + K, *x3 = x2 + K;
        const T m0 = rms ? (T)0 : mean[r], m1 = rms ? (T)0 : mean[r + 1];
        const T m2 = rms ? (T)0 : mean[r + 2], m3 = rms ? (T)0 : mean[r + 3];
        const double q0 = (double)rstd[r], q1 = (double)rstd[r + 1];
        const double q2 = (double)rstd[r + 2], q3 = (double)rstd[r + 3];
        if (gw && gb) {  /* one loop: dy is loaded and converted once for both */
#pragma omp simd
            for (int64_t k = 0; k < K; ++k) {
                const double e0 = (double)d0[k], e1 = (double)d1[k];
                const double e2 = (double)d2[k], e3 = (double)d3[k];
                double a = gw[k], c = gb[k];
                a += e0 * ((double)(x0[k] - m0) * q0);
                c += e0;
                a += e1 * ((double)(x1[k] - m1) * q1);
                c += e1;
                a += e2 * ((double)(x2[k] - m2) * q2);
                c += e2;
                a += e3 * ((double)(x3[k] - m3) * q3);
                c += e3;
                gw[k] = a;
                gb[k] = c;
            }
        } else if (gw) {
#pragma omp simd
            for (int64_t k = 0; k < K; ++k) {
                double a = gw[k];
                a += (double)d0[k] * ((double)(x0[k] - m0) * q0);
                a += (double)d1[k] * ((double)(x1[k] - m1) * q1);
                a += (double)d2[k] * ((double)(x2[k] - m2) * q2);
                a += (double)d3[k] * ((double)(x3[k] - m3) * q3);
                gw[k] = a;
            }
        } else {
#pragma omp simd
            for (int64_t k = 0; k < K; ++k) {
                double c = gb[k];
                c += (double)d0[k];
                c += (double)d1[k];
                c += (double)d2[k];
                c += (double)d3[k];
                gb[k] = c;
            }
        }
    }
    for (; r < r1; ++r) {
        const T *dr = dy + r * K, *xr = x + r * K;
        const T mu = rms ? (T)0 : mean[r];
        const double rs = (double)rstd[r];
        if (gw) {
#pragma omp simd
            for (int64_t k = 0; k < K; ++k)
                gw[k] += (double)dr[k] * ((double)(xr[k] - mu) * rs);
        }
        if (gb) {
#pragma omp simd
            for (int64_t k = 0; k < K; ++k)
                gb[k] += (double)dr[k];
        }
    }
}

#if FN_REAL == 32
/* Rows r .. r + n - 1 (n = 4 or 1) of rows_param_sums_float, with_w / with_b literals at
 * every call (one loop reads dy once for both gradients).  Returns its part of the check. */
static inline __attribute__((always_inline)) float FN_NAME(param_group_float, FN_SUF)(
    const T *dy, const T *x, int64_t K, int64_t r, int n, const T *mean, const T *rstd, int rms,
    double *gw, double *gb, const int with_w, const int with_b)
{
    float finite = 0.0f;
    const T *d0 = dy + r * K, *x0 = x + r * K;
    const T m0 = rms ? (T)0 : mean[r], q0 = rstd[r];
#define PARAM_TERM(j) (d##j[k] * ((x##j[k] - m##j) * q##j))
    if (n == 1) {
#pragma omp simd reduction(+:finite)
        for (int64_t k = 0; k < K; ++k) {
            if (with_w) {
                const T a = PARAM_TERM(0);
                finite += a - a;
                gw[k] += (double)a;
            }
            if (with_b) {
                finite += d0[k] - d0[k];
                gb[k] += (double)d0[k];
            }
        }
        return finite;
    }
    const T *d1 = d0 + K, *d2 = d1 + K, *d3 = d2 + K;
    const T *x1 = x0 + K, *x2 = x1 + K, *x3 = x2 + K;
    const T m1 = rms ? (T)0 : mean[r + 1], m2 = rms ? (T)0 : mean[r + 2];
    const T m3 = rms ? (T)0 : mean[r + 3];
    const T q1 = rstd[r + 1], q2 = rstd[r + 2], q3 = rstd[r + 3];
#pragma omp simd reduction(+:finite)
    for (int64_t k = 0; k < K; ++k) {
        if (with_w) {
            T a = PARAM_TERM(0);
            a += PARAM_TERM(1);
            a += PARAM_TERM(2);
            a += PARAM_TERM(3);
            finite += a - a;
            gw[k] += (double)a;
        }
        if (with_b) {
            const T c = (d0[k] + d1[k]) + (d2[k] + d3[k]);
            finite += c - c;
            gb[k] += (double)c;
        }
    }
#undef PARAM_TERM
    return finite;
}

/* float32's parameter gradients over rows [r0, r1), as rows_param_sums but with the terms
 * dy * ((x - mu_r) * rs_r) formed in float and added four rows at a time in float (in row
 * order, then that partial added to the float64 column sum gw[k]); gb likewise, its four dy
 * added pairwise.  Remainder rows add their float terms one by one.  Zen 1 (two 128-bit
 * halves per vector, one 16-byte store per cycle), through the API, 1 thread, both
 * gradients, against the float64 terms in the row loop (interleaved medians): (32, 768)
 * 1.24-1.39x, (256, 768) 1.38x, (8192, 768) 1.17-1.20x, (2048, 256) 1.08-1.11x, (1024, 768)
 * and (64, 4096) level; eight rows per visit measured the same as four.  Not measured on
 * Zen 3 or Zen 4; a close variant on Zen 3 (an earlier session, performance-log "Tried for
 * the parameter gradients") ran 0.93-0.96x at (64, 4096) and (8192, 768), 1.03-1.07x at
 * smaller shapes.  A partial is a float sum of four terms, each rounded at most twice, so it
 * is within about 5 float32 roundings of the sum of the group's term magnitudes (5 * 2^-24 *
 * sum |term|, less with the multiply-adds), and the sum across groups stays in float64.
 * Returns 0 where a partial came out Inf or NaN (a float overflow the float64 terms may not
 * have, or Inf / NaN inputs): the caller then takes the float64 terms for the whole block,
 * whose Inf, NaN and overflow warning are the float64 path's.  The check is a sum of a - a
 * over the partials: 0 while all are finite, NaN from the first that is not. */
static inline int FN_NAME(rows_param_sums_float, FN_SUF)(const T *dy, const T *x, int64_t K,
                                                         int64_t r0, int64_t r1, const T *mean,
                                                         const T *rstd, int rms, double *gw,
                                                         double *gb)
{
    float finite = 0.0f;
    for (int64_t r = r0; r < r1;) {
        const int n = r1 - r >= 4 ? 4 : 1;
#define GROUP(pw, pb, with_w, with_b)                                                             \
    FN_NAME(param_group_float, FN_SUF)(dy, x, K, r, n, mean, rstd, rms, pw, pb, with_w, with_b)
        if (gw && gb)
            finite += GROUP(gw, gb, 1, 1);
        else if (gw)
            finite += GROUP(gw, NULL, 1, 0);
        else
            finite += GROUP(NULL, gb, 0, 1);
#undef GROUP
        r += n;
    }
    return finite == 0.0f;
}
#endif

/* Rows of dy and x per parameter pass (rows_param_sums, rows_param_sums_float): about 192
 * KiB of them, so that they are still in cache (a multiple of four rows, at least four). */
#define PARAM_BLOCK_BYTES ((int64_t)192 << 10)

/* The coefficients of a row's gx = g * s + (x - mean) * k2 + k3 (fn_norm_rows_backward below)
 * from its rstd rs (as double) and its sums a1 = sum(g), a2 = sum(g * (x - mean)) over K
 * elements. */
static inline void FN_NAME(row_grad_coefs, FN_SUF)(double rs, double a1, double a2, int64_t K,
                                                   int rms, T *s, T *k2, T *k3)
{
    *s = (T)rs;
    *k2 = (T)(-rs * rs * rs * a2 / (double)K);
    *k3 = rms ? (T)0 : (T)(-rs * a1 / (double)K);
}

/* The body of rows_backward_up / rows_backward_down below, each row's gx written by
 * ROW_MAP(EXPR of k): upwards (ROW_UP, streamed where asked) or downwards (ROW_DOWN). */
#define ROWS_BACKWARD(ROW_MAP)                                                                 \
    do {                                                                                       \
        /* whole four-row visits of rows_param_sums_float */                                   \
        int64_t block = PARAM_BLOCK_BYTES / (2 * K * (int64_t)sizeof(T)) / 4 * 4;             \
        if (block < 4)                                                                         \
            block = 4;                                                                         \
        /* float32 always takes the pass (rows_param_sums_float), and its float row sums */   \
        const int pass = FN_REAL == 32 || param_pass;                                          \
        int param_float = FN_REAL == 32;                                                       \
        ZERO_SUMS();                                                                           \
        for (int64_t b0 = r0; b0 < r1; b0 += block) {                                         \
            const int64_t b1 = r1 - b0 > block ? b0 + block : r1;                              \
            for (int64_t r = b0; r < b1; ++r) {                                                \
                const T *xr = x + r * K, *gr = dy + r * K;                                     \
                T *out = gx + r * K;                                                           \
                const T mu = rms ? (T)0 : mean[r];                                             \
                const double rs = (double)rstd[r];                                             \
                /* Not RUN_DUAL: the gradient is dy * w here, and the row's mean is given. */  \
                double a1 = 0.0, a2 = 0.0;                                                     \
                if (!pass) {                                                                   \
                    if (w)                                                                     \
                        GRAD_ROW_SUMS(w, gw, gb);                                              \
                    else                                                                       \
                        GRAD_ROW_SUMS(NULL, gw, gb);                                           \
                } else { /* float64: the double sums of the row loop's parameter path, the */  \
                    if (w) /* same bits; float32: the float sums, as without parameters */     \
                        GRAD_ROW_SUMS(w, NULL, NULL);                                          \
                    else                                                                       \
                        GRAD_ROW_SUMS(NULL, NULL, NULL);                                       \
                }                                                                              \
                T s, k2, k3;                                                                   \
                FN_NAME(row_grad_coefs, FN_SUF)(rs, a1, a2, K, rms, &s, &k2, &k3);             \
                if (FN_NAME(nan_grad_run, FN_SUF)(out, K, s, mu, k2, k3))                      \
                    continue; /* a NaN row: one NaN's bits in both directions */               \
                if (w)                                                                         \
                    ROW_MAP(gr[k] * w[k] * s + (xr[k] - mu) * k2 + k3);                        \
                else                                                                           \
                    ROW_MAP(gr[k] * s + (xr[k] - mu) * k2 + k3);                               \
            }                                                                                  \
            if (pass && (gw || gb))                                                            \
                PARAM_PASS(b0, b1);                                                            \
        }                                                                                      \
        if (!param_float && FN_REAL == 32 && (gw || gb)) { /* an Inf or NaN partial */        \
            ZERO_SUMS();                                                                       \
            FN_NAME(rows_param_sums, FN_SUF)(dy, x, K, r0, r1, mean, rstd, rms, gw, gb);       \
        }                                                                                      \
    } while (0)
#define ZERO_SUMS()                                                                            \
    do {                                                                                       \
        if (gw)                                                                                \
            memset(gw, 0, (size_t)K * sizeof(double));                                         \
        if (gb)                                                                                \
            memset(gb, 0, (size_t)K * sizeof(double));                                         \
    } while (0)
#if FN_REAL == 32
#define PARAM_PASS(b0, b1)                                                                     \
    do {                                                                                       \
        if (param_float)                                                                       \
            param_float = FN_NAME(rows_param_sums_float, FN_SUF)(dy, x, K, b0, b1, mean, rstd, \
                                                                 rms, gw, gb);                 \
    } while (0)
#else
#define PARAM_PASS(b0, b1)                                                                     \
    FN_NAME(rows_param_sums, FN_SUF)(dy, x, K, b0, b1, mean, rstd, rms, gw, gb)
#endif
#define ROW_UP(EXPR) FN_MAP_STREAMED(T, FN_STREAM_COPY, stream, out, K, k, EXPR)
#define ROW_DOWN(EXPR) MAP_DOWN(K, k, out[k] = (EXPR))

static __attribute__((noinline)) void FN_NAME(rows_backward_up, FN_SUF)(
    const T *dy, const T *x, T *gx, int64_t K, int64_t r0, int64_t r1, const T *w,
    const T *mean, const T *rstd, int rms, double *gw, double *gb, int param_pass, int stream)
{
    ROWS_BACKWARD(ROW_UP);
    if (stream)
        fn_stream_fence();
}

static __attribute__((noinline)) void FN_NAME(rows_backward_down, FN_SUF)(
    const T *dy, const T *x, T *gx, int64_t K, int64_t r0, int64_t r1, const T *w,
    const T *mean, const T *rstd, int rms, double *gw, double *gb, int param_pass)
{
    ROWS_BACKWARD(ROW_DOWN);
}
#undef ROWS_BACKWARD
#undef PARAM_PASS
#undef ZERO_SUMS
#undef ROW_UP
#undef ROW_DOWN

/* Backward of rows_forward for rows [r0, r1): with g = dy * w and xc = x - mean (mean = 0
 * for RMS norm), gx = rstd * g + xc * k2 + k3, k2 = -rstd^3 * mean(g * xc),
 * k3 = -rstd * mean(g) (0 for RMS norm).  When gw / gb are not NULL, sets them (double, K
 * each; zeroed here first) to this block's sum(dy * xc * rstd) and sum(dy) per column.
 * float64 adds its terms row by row: in each row's first loop (param_pass = 0), or after
 * every PARAM_BLOCK_BYTES of rows by rows_param_sums (param_pass = 1); the same bits either
 * way, the caller picks the faster (normalization.pyx).  float32 always takes the pass,
 * rows_param_sums_float (param_pass is ignored), and where one of its float partials comes
 * out Inf or NaN, the whole block's sums again by rows_param_sums after the rows (dy and x
 * read once more).  The pass reads dy and x after the rows' gx is written: gx must not
 * overlap them (both callers write into a fresh array).  stream: gx by non-temporal stores
 * (fn_stream.h), the same values; gx is not read back here, and streaming it saves its
 * lines' reads from memory (8192 x 768, 1 thread, Zen 3: float32 1.28x, float64 1.39x).
 * Where gx trails dy or x and leads neither (fn_trails_one_of) and the rows hold at most
 * DOWN_MAX_BYTES, each row's gx is written from its end down (rows_backward_down; the rows,
 * and each row's sums, still upwards).  A row whose coefficients hold a NaN is one NaN
 * (nan_grad_run), in both directions.  The module's rows_backward, both builds in one
 * process, 1 thread, float32, gx 48 / 64 / 128 bytes after x: without parameter gradients
 * (32, 768) 1.17x / 1.19x / 1.08x, (256, 768) 1.09x / 1.10x / 1.07x faster than upwards;
 * with them (256, 768) 1.03-1.06x, (32, 768) 1.03-1.06x (0.98x at 16 bytes).  Functions of
 * their own, so that the upward one compiles as this function did before the other
 * existed (its disassembly is the old function's but for the NaN check). */
void FN_NAME(fn_norm_rows_backward, FN_SUF)(const T *dy, const T *x, T *gx, int64_t K, int64_t r0,
                                            int64_t r1, const T *w, const T *mean, const T *rstd,
                                            int rms, double *gw, double *gb, int param_pass,
                                            int stream)
{
    if (!stream && (r1 - r0) * K * (int64_t)sizeof(T) <= DOWN_MAX_BYTES
        && fn_trails_one_of(gx, dy, x))
        FN_NAME(rows_backward_down, FN_SUF)(dy, x, gx, K, r0, r1, w, mean, rstd, rms, gw, gb,
                                            param_pass);
    else
        FN_NAME(rows_backward_up, FN_SUF)(dy, x, gx, K, r0, r1, w, mean, rstd, rms, gw, gb,
                                          param_pass, stream);
}
#undef GRAD_ROW_SUMS

/* Layer and RMS norm of a Fortran-order (M, K) x, each of its M rows normalized, read in
 * place as its C-order transpose xt, (K, M): row m of x is column m of xt.  Its statistics
 * are the column sums of batch norm 1-D (fn_norm_stats_cols, fn_norm_dual_cols, called by
 * normalization.pyx); below are the coefficients and the passes over the rows of xt.  The
 * forward's arithmetic per element is that of the row kernels above, so its results differ
 * from those of x in C order only where the sums, added in another order, round differently;
 * the backward's sums take x - mean in double with a weight (the column sums' form) and, in
 * float32 without one, where the lanes exist, float terms per visit of four rows of xt
 * (dual_cols_float), where the row kernels take float stretches along a row, so its float32
 * gradients differ from C order's within float roundings of the terms' sizes, and in the
 * last bits more often.  The
 * parameter gradients' sums along xt's rows are gcc's vector reductions, whose order follows
 * the vector width: float64 ones can differ in the last bit between the kernel variants.
 * They take float64 terms, where C order's float32 ones take float partials of four rows
 * (rows_param_sums_float): the two agree to within float32 roundings of the terms' sizes. */

/* Each column's statistics over K elements from its float64 mean and M2 (the column sums of
 * fn_norm_stats_cols shifted by the column's first element, finished), or for RMS norm from
 * its plain sum of squares m2 (unshifted sums, not finished: a mean square as the rows'
 * s2 / K): mean[m] (not for RMS norm) and rstd[m] stored, and the output pass's h[m], s[m],
 * o[m] (row_coefs_from). */
void FN_NAME(fn_norm_cols_coefs, FN_SUF)(int64_t M, int64_t K, const double *mean_d,
                                         const double *m2, double eps, int rms, T *mean, T *rstd,
                                         T *h, T *s, T *o)
{
    for (int64_t m = 0; m < M; ++m) {
        const FN_NAME(row_coefs, FN_SUF) c = FN_NAME(row_coefs_from, FN_SUF)(
            rms ? 0.0 : mean_d[m], m2[m] / (double)K, eps, rms, mean, rstd, m);
        h[m] = c.h;
        s[m] = c.s;
        o[m] = c.o;
    }
}

/* The cols passes below go over xt's rows in tiles of 4 KiB of each per-column
 * vector, all rows [k0, k1) of one tile before the next: the vectors of a tile stay in L1,
 * where whole rows of wide x.T (an (8192, 768) x: three vectors of 32 KiB) read them from L2
 * for every row. */
#define COLS_TILE ((int64_t)(4096 / sizeof(T)))

/* Rows [k0, k1) of yt = y.T: yt[k, m] = ((xt[k, m] - h[m]) * s[m] + o[m]) [* w[k]] [+ b[k]]
 * (w, b NULL: absent), row_output's expression for row m of x.  stream: yt by non-temporal
 * stores (fn_stream.h). */
void FN_NAME(fn_norm_cols_forward, FN_SUF)(const T *xt, T *yt, int64_t M, int64_t k0, int64_t k1,
                                           const T *h, const T *s, const T *o, const T *w,
                                           const T *b, int stream)
{
    for (int64_t m0 = 0; m0 < M; m0 += COLS_TILE) {
        const int64_t n = M - m0 < COLS_TILE ? M - m0 : COLS_TILE;
        const T *ht = h + m0, *st = s + m0, *ot = o + m0;
        for (int64_t k = k0; k < k1; ++k) {
            const T *xr = xt + k * M + m0;
            T *yr = yt + k * M + m0;
            if (w && b) {
                const T wk = w[k], bk = b[k];
                FN_MAP_STREAMED(T, FN_STREAM_COPY, stream, yr, n, m,
                                ((xr[m] - ht[m]) * st[m] + ot[m]) * wk + bk);
            } else if (w) {
                const T wk = w[k];
                FN_MAP_STREAMED(T, FN_STREAM_COPY, stream, yr, n, m,
                                ((xr[m] - ht[m]) * st[m] + ot[m]) * wk);
            } else if (b) {
                const T bk = b[k];
                FN_MAP_STREAMED(T, FN_STREAM_COPY, stream, yr, n, m,
                                ((xr[m] - ht[m]) * st[m] + ot[m]) + bk);
            } else {
                FN_MAP_STREAMED(T, FN_STREAM_COPY, stream, yr, n, m, (xr[m] - ht[m]) * st[m] + ot[m]);
            }
        }
    }
    if (stream)
        fn_stream_fence();
}

/* Each column's coefficients of the backward (row_grad_coefs) from its rstd and its float64
 * sums a1 = sum(dy * w), a2 = sum(dy * w * (x - mean)) (fn_norm_dual_cols with row weights). */
void FN_NAME(fn_norm_cols_grad_coefs, FN_SUF)(int64_t M, int64_t K, const T *rstd,
                                              const double *a1, const double *a2, int rms, T *s,
                                              T *k2, T *k3)
{
    for (int64_t m = 0; m < M; ++m)
        FN_NAME(row_grad_coefs, FN_SUF)((double)rstd[m], a1[m], a2[m], K, rms, &s[m], &k2[m],
                                        &k3[m]);
}

/* Rows [k0, k1) of gxt = grad_x.T: gxt[k, m] = dyt[k, m] [* w[k]] * s[m] + (xt[k, m] - mu[m])
 * * k2[m] + k3[m] (w NULL: absent; mu zeros for RMS norm), the row kernels' expression for
 * row m of x, by tiles (COLS_TILE); where gw / gb are not NULL, also row k's parameter
 * gradients gw[k] = sum_m dy * ((x - mu[m]) * rstd[m]) and gb[k] = sum_m dy in float64 (the
 * terms as rows_param_sums computes them), each tile's part summed after the tile's gxt
 * while its dy and x are in cache, and the parts added tile after tile.  stream: gxt by
 * non-temporal stores.  A row of x whose coefficients hold a NaN gives NaNs through the
 * arithmetic, without the row kernels' one-NaN fill (nan_grad_run, which keeps their two
 * directions alike): their sign bits can differ from the C-order call's. */
void FN_NAME(fn_norm_cols_backward, FN_SUF)(const T *dyt, const T *xt, T *gxt, int64_t M,
                                            int64_t k0, int64_t k1, const T *w, const T *mu,
                                            const T *s, const T *k2, const T *k3, const T *rstd,
                                            double *gw, double *gb, int stream)
{
    for (int64_t k = k0; k < k1; ++k) {
        if (gw)
            gw[k] = 0.0;
        if (gb)
            gb[k] = 0.0;
    }
    for (int64_t m0 = 0; m0 < M; m0 += COLS_TILE) {
        const int64_t n = M - m0 < COLS_TILE ? M - m0 : COLS_TILE;
        const T *mt = mu + m0, *st = s + m0, *k2t = k2 + m0, *k3t = k3 + m0, *rt = rstd + m0;
        for (int64_t k = k0; k < k1; ++k) {
            const T *dr = dyt + k * M + m0, *xr = xt + k * M + m0;
            T *out = gxt + k * M + m0;
            if (w) {
                const T wk = w[k];
                FN_MAP_STREAMED(T, FN_STREAM_COPY, stream, out, n, m,
                                dr[m] * wk * st[m] + (xr[m] - mt[m]) * k2t[m] + k3t[m]);
            } else {
                FN_MAP_STREAMED(T, FN_STREAM_COPY, stream, out, n, m,
                                dr[m] * st[m] + (xr[m] - mt[m]) * k2t[m] + k3t[m]);
            }
            if (gw && gb) {  /* one loop: dy is loaded and converted once for both */
                double a = 0.0, c = 0.0;
#pragma omp simd reduction(+:a, c)
                for (int64_t m = 0; m < n; ++m) {
                    const double d = (double)dr[m];
                    a += d * ((double)(xr[m] - mt[m]) * (double)rt[m]);
                    c += d;
                }
                gw[k] += a;
                gb[k] += c;
            } else if (gw) {
                double a = 0.0;
#pragma omp simd reduction(+:a)
                for (int64_t m = 0; m < n; ++m)
                    a += (double)dr[m] * ((double)(xr[m] - mt[m]) * (double)rt[m]);
                gw[k] += a;
            } else if (gb) {
                double c = 0.0;
#pragma omp simd reduction(+:c)
                for (int64_t m = 0; m < n; ++m)
                    c += (double)dr[m];
                gb[k] += c;
            }
        }
    }
    if (stream)
        fn_stream_fence();
}
#undef COLS_TILE

/* Batch norm's per-channel arithmetic in float64, vectorized: every operation is one IEEE
 * operation (+, -, *, /, sqrt, a conversion), each correctly rounded in a vector lane as in
 * a scalar, so the results have the bits of the NumPy expressions in
 * fastnorm.normalization (batch_norm, batch_norm_backward, _affine_params, _update_running)
 * as long as no product is fused with an addition: hence contraction is off here (gcc:
 * the optimize pragma; clang: STDC FP_CONTRACT), where fn_running_step and fn_affine_shift
 * use a volatile, which keeps a loop scalar.  With few rows per channel this arithmetic
 * is a large part of a call: scalar, it took half of a (8, 4096) float32 forward. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")
#endif
#define BN_CHUNK 256   /* channels per pass through the stack buffers below */

/* The weight and bias of m <= BN_CHUNK channels in float64, 1 and 0 where absent
 * (r * 1.0 is r, b - 0.0 is b). */
static inline void FN_NAME(weight_bias_span, FN_SUF)(int64_t m, const T *w, const T *b, double *wt,
                                                     double *bs)
{
    for (int64_t i = 0; i < m; ++i) {
        wt[i] = w ? (double)w[i] : 1.0;
        bs[i] = b ? (double)b[i] : 0.0;
    }
}

/* One channel's (mhi, scale, shift) of the output pass from its float64 mean mu, rstd r,
 * weight wt and bias bs: mhi = mu rounded to T, scale = r * wt, shift = bs - (mu - mhi) *
 * scale (fn_affine_shift).  Inlined into the vectorized loops below. */
static inline __attribute__((always_inline)) void FN_NAME(affine_params, FN_SUF)(
    double mu, double r, double wt, double bs, T *mhi, T *scale, T *shift)
{
#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#endif
    const T h = (T)mu, s = (T)(r * wt);
    const double lo = mu - (double)h, product = lo * (double)s;
    *mhi = h;
    *scale = s;
    *shift = (T)(bs - ((lo == 0.0 || isinf((double)s)) ? 0.0 : product));
}

/* The output pass's parameters (affine_params) of C channels from their float64 mean and
 * rstd (channels-last group norm: per sample, its groups' mean and rstd repeated per
 * channel; w, b may be NULL). */
void FN_NAME(fn_norm_channel_affine, FN_SUF)(int64_t C, const double *mean, const double *rstd,
                                             const T *w, const T *b, T *mhi, T *scale, T *shift)
{
    double wt[BN_CHUNK], bs[BN_CHUNK];
    for (int64_t c0 = 0; c0 < C; c0 += BN_CHUNK) {
        const int64_t m = C - c0 < BN_CHUNK ? C - c0 : BN_CHUNK;
        FN_NAME(weight_bias_span, FN_SUF)(m, w ? w + c0 : NULL, b ? b + c0 : NULL, wt, bs);
        for (int64_t i = 0; i < m; ++i)
            FN_NAME(affine_params, FN_SUF)(mean[c0 + i], rstd[c0 + i], wt[i], bs[i], &mhi[c0 + i],
                                           &scale[c0 + i], &shift[c0 + i]);
    }
}

/* Training: the running statistics' update (fn_running_step, unbiased variance) for C
 * channels, and (mean, var) of the batch; eval: (mean, var) from the running statistics,
 * the mean also written to mean_d.  Then per channel rstd = 1 / sqrt(var + eps), the
 * outputs mean and rstd rounded to T, and the output pass's parameters (affine_params;
 * w, b, rm, rv may be NULL where unused). */
void FN_NAME(fn_norm_bn_channels, FN_SUF)(int64_t C, int64_t n, int training, int running,
                                          double f, double eps, double *mean_d, const double *m2,
                                          T *rm, T *rv, const T *w, const T *b, T *mean_out,
                                          T *rstd_out, T *mhi, T *scale, T *shift)
{
#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#endif
    const double nd = (double)n, unbiased = (double)(n - 1), kept = 1.0 - f;
    double mu[BN_CHUNK], var[BN_CHUNK], wt[BN_CHUNK], bs[BN_CHUNK];
    for (int64_t c0 = 0; c0 < C; c0 += BN_CHUNK) {
        const int64_t m = C - c0 < BN_CHUNK ? C - c0 : BN_CHUNK;
        if (training) {
            for (int64_t i = 0; i < m; ++i) {
                mu[i] = mean_d[c0 + i];
                var[i] = m2[c0 + i] / nd;
            }
            if (running) {
                for (int64_t i = 0; i < m; ++i) {
                    const double a = kept * (double)rm[c0 + i], d = f * mu[i];
                    const double e = kept * (double)rv[c0 + i], g = f * (m2[c0 + i] / unbiased);
                    /* a NaN a kept as it is: a scalar a + d returns it (the first
                     * operand's NaN, as NumPy's add), gcc may swap a vector add's operands */
                    rm[c0 + i] = (T)(isnan(a) ? a : a + d);
                    rv[c0 + i] = (T)(isnan(e) ? e : e + g);
                }
            }
        } else {
            for (int64_t i = 0; i < m; ++i) {
                mu[i] = mean_d[c0 + i] = (double)rm[c0 + i];
                var[i] = (double)rv[c0 + i];
            }
        }
        FN_NAME(weight_bias_span, FN_SUF)(m, w ? w + c0 : NULL, b ? b + c0 : NULL, wt, bs);
        for (int64_t i = 0; i < m; ++i) {
            const double r = 1.0 / sqrt(var[i] + eps);
            rstd_out[c0 + i] = (T)r;
            mean_out[c0 + i] = (T)mu[i];
            FN_NAME(affine_params, FN_SUF)(mu[i], r, wt[i], bs[i], &mhi[c0 + i], &scale[c0 + i],
                                           &shift[c0 + i]);
        }
    }
}

/* Batch norm backward's coefficients of gx = dy * k1 + (x - mean) * k2 + k3 from the
 * float64 rstd and the channel sums s1 = sum(dy), s2 = sum(dy * (x - mean)) over n
 * elements, as normalization.batch_norm_backward's NumPy expressions (w may be NULL: 1;
 * eval: k2 = k3 = 0). */
void FN_NAME(fn_norm_bn_backward_channels, FN_SUF)(int64_t C, int64_t n, int training,
                                                   const T *w, const double *rstd_d,
                                                   const double *s1, const double *s2,
                                                   T *k1, T *k2, T *k3)
{
#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#endif
    const double nd = (double)n;
    double wt[BN_CHUNK];
    for (int64_t c0 = 0; c0 < C; c0 += BN_CHUNK) {
        const int64_t m = C - c0 < BN_CHUNK ? C - c0 : BN_CHUNK;
        for (int64_t i = 0; i < m; ++i)
            wt[i] = w ? (double)w[c0 + i] : 1.0;
        if (training) {
            for (int64_t i = 0; i < m; ++i) {
                const double r = rstd_d[c0 + i];
                k1[c0 + i] = (T)(wt[i] * r);
                k2[c0 + i] = (T)((-wt[i]) * (r * r * r) * s2[c0 + i] / nd);
                k3[c0 + i] = (T)((-wt[i]) * r * s1[c0 + i] / nd);
            }
        } else {
            for (int64_t i = 0; i < m; ++i) {
                k1[c0 + i] = (T)(wt[i] * rstd_d[c0 + i]);
                k2[c0 + i] = 0;
                k3[c0 + i] = 0;
            }
        }
    }
}
#if FN_REAL == 64   /* float64 only: one copy per variant */
/* The moments of C channels from their shifted sums over n elements, in place: s1 -> mean =
 * shift + s1 / n, s2 -> M2 = s2 - s1 * (s1 / n), clamped at 0 (a NaN stays NaN): the
 * statistics of short runs by column sums (normalization.pyx's _stats_run).  Contraction is
 * off here; finish_moments above is the runs kernels' own, contracted. */
void FN_CAT3(fn_norm, finish_moments, FN_ISA)(int64_t C, const double *shift, double n, double *s1,
                                            double *s2)
{
#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#endif
    for (int64_t c = 0; c < C; ++c) {
        const double t1 = s1[c], v = s2[c] - t1 * (t1 / n);
        s1[c] = shift[c] + t1 / n;
        s2[c] = v < 0.0 ? 0.0 : v;
    }
}
#endif
#undef BN_CHUNK

/* dst = src rounded to T (float64 sums as the parameter gradients' type); 1 where a finite
 * sum became infinite (a float32 overflow, which the caller reports as NumPy's cast would),
 * else 0.  The flag is an OR over the elements, not a branch, so that the loop vectorizes;
 * it is taken from src alone (finite and at least FLT_MAX + half its ulp, which rounds to
 * Inf) in 64-bit lanes: converting dst back and packing 64-bit compares into an int flag
 * made the float32 loop about 3 cycles per element on Zen 1. */
int FN_NAME(fn_norm_narrow, FN_SUF)(int64_t K, const double *src, T *dst)
{
    int64_t overflow = 0;
    for (int64_t k = 0; k < K; ++k) {
        dst[k] = (T)src[k];
#if FN_REAL == 32
        const double a = fabs(src[k]);
        overflow |= (int64_t)((a >= 0x1.ffffffp+127) & (a < (double)INFINITY));
#endif
    }
    return overflow != 0;
}
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC pop_options
#endif

#undef RUN_SUMS
#undef SUMS_OF_PIECES
#undef RUN_DUAL
#undef FN_LANES_INLINE
#ifdef FN_LANES16
#undef FN_LANES16
#undef LANES
#undef LANE_VECS
#undef LANE_W
#undef VPD
#undef VPD_SET1
#undef VPD_ADD
#undef VPD_SUB
#undef VPD_MUL
#undef VPD_FMA
#undef VPD_LOADU
#undef VPD_STOREU
#undef VPD_LOAD_PS
#undef VPD_LOAD_PS_LESS
#undef VPS
#undef VPS_SET1
#undef VPS_LOADU
#undef VPS_ADD
#undef VPS_SUB
#undef VPS_MUL
#undef VPS_FMA
#undef VPS_LO_PD
#undef VPS_HI_PD
#undef PS_VECS
#undef PS_W
#undef ROW_SUM_STRETCH
#endif
#undef FETCH_RUN_MIN_BYTES
#undef DUAL_FETCH
#undef FETCH_STRETCH_MAX_BYTES
#undef FINISH_MOMENTS
#undef CHANNEL_VECTOR_LANES
#undef CHANNEL_ROW_BYTES
#undef CHANNEL_CACHED_RANGE_BYTES
#undef COLS_CHUNK
#undef COLS_VISITS
#undef FOUR_ROWS_AT
#undef AFFINE_RUN
#undef AFFINE_RUN_DOWN
#undef AFFINE_GRAD_RUN
#undef AFFINE_GRAD_RUN_DOWN
#undef DOWN_MAX_BYTES
#undef PIECE16
#undef MAP_DOWN
#undef T
