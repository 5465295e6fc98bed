/* Philox4x64-10 counter-based generator (Salmon, Moraes, Dror, Shaw: "Parallel random
 * numbers: as easy as 1, 2, 3", SC 2011), written to reproduce NumPy's
 * np.random.Philox bit for bit: a 256-bit counter and a 128-bit key, both as uint64
 * words, low word first; one block maps (counter, key) to four uint64 words.
 *
 * Static inline so that each ISA translation unit compiles its own copy.
 */
#ifndef FN_PHILOX_H
#define FN_PHILOX_H
#include <stdint.h>
#include <string.h>

#define FN_PHILOX_M0 UINT64_C(0xD2E7470EE14C6C93)
#define FN_PHILOX_M1 UINT64_C(0xCA5A826395121157)
#define FN_PHILOX_W0 UINT64_C(0x9E3779B97F4A7C15)   /* golden ratio */
#define FN_PHILOX_W1 UINT64_C(0xBB67AE8584CAA73B)   /* sqrt(3) - 1 */
#define FN_PHILOX_ROUNDS 10

/* The key of every round, computed once per call instead of bumped per block. */
typedef struct { uint64_t k0[FN_PHILOX_ROUNDS], k1[FN_PHILOX_ROUNDS]; } fn_philox_keys;

static inline void fn_philox_schedule(fn_philox_keys *ks, uint64_t key_lo, uint64_t key_hi)
{
    for (int r = 0; r < FN_PHILOX_ROUNDS; ++r) {
        ks->k0[r] = key_lo;
        ks->k1[r] = key_hi;
        key_lo += FN_PHILOX_W0;
        key_hi += FN_PHILOX_W1;
    }
}

/* Up to FN_PHILOX_SLANES blocks in scalar registers: one block is a chain of ten dependent
 * 64x64->128 multiplies, so a single block leaves the multiplier idle most of the time;
 * interleaving several blocks lets the multiplies of different blocks overlap.  Block j
 * holds counter value ctr + j (upper counter words zero, as NumPy's are for any counter
 * below 2**128); word w of block j is c[w][j]. */
#define FN_PHILOX_SLANES 8
typedef struct { uint64_t c[4][FN_PHILOX_SLANES]; } fn_philox_scalar;

static inline void fn_philox_scalar_init(fn_philox_scalar *b, unsigned __int128 ctr, int n)
{
#pragma GCC unroll 8
    for (int j = 0; j < n; ++j) {
        const unsigned __int128 v = ctr + (unsigned)j;
        b->c[0][j] = (uint64_t)v;
        b->c[1][j] = (uint64_t)(v >> 64);
        b->c[2][j] = 0;
        b->c[3][j] = 0;
    }
}

static inline void fn_philox_scalar_round(fn_philox_scalar *b, uint64_t k0, uint64_t k1, int n)
{
#pragma GCC unroll 8
    for (int j = 0; j < n; ++j) {
        const unsigned __int128 p0 = (unsigned __int128)FN_PHILOX_M0 * b->c[0][j];
        const unsigned __int128 p1 = (unsigned __int128)FN_PHILOX_M1 * b->c[2][j];
        const uint64_t n0 = (uint64_t)(p1 >> 64) ^ b->c[1][j] ^ k0;
        const uint64_t n2 = (uint64_t)(p0 >> 64) ^ b->c[3][j] ^ k1;
        b->c[1][j] = (uint64_t)p1;
        b->c[3][j] = (uint64_t)p0;
        b->c[0][j] = n0;
        b->c[2][j] = n2;
    }
}

/* Block-major words: out[4j + w] = word w of block j. */
static inline void fn_philox_scalar_words(const fn_philox_scalar *b, uint64_t *out, int n)
{
#pragma GCC unroll 8
    for (int j = 0; j < n; ++j)
        for (int w = 0; w < 4; ++w)
            out[4 * j + w] = b->c[w][j];
}

/* Fields of one group of FN_PHILOX_GROUP consecutive blocks, block-major: the 16-bit
 * field k of word w of block j lands at fields[16 j + 4 w + k] (the order of NumPy's
 * random_raw words read as little-endian uint16). */
static inline void fn_philox_words_to_fields(const uint64_t *words, int nwords, uint16_t *fields)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    memcpy(fields, words, (size_t)nwords * sizeof(uint64_t));
#else
    for (int w = 0; w < nwords; ++w)
        for (int k = 0; k < 4; ++k)
            fields[4 * w + k] = (uint16_t)(words[w] >> (16 * k));
#endif
}

/* Multiply-high of the vector groups.  They build the high half of each 64x64 product from four
 * 32x32->64 products (vpmuludq): with a = a1 2^32 + a0 and m = m1 2^32 + m0,
 *   mid = a0 m1 + (a0 m0 >> 32),  mid2 = a1 m0 + (mid mod 2^32),
 *   hi = a1 m1 + (mid >> 32) + (mid2 >> 32),  and the low half's upper word is mid2 mod 2^32.
 * Neither sum can wrap: (2^32 - 1)^2 + 2^32 - 1 < 2^64.  Three operations fewer per product
 * than adding the three middle terms' 32-bit halves one by one, as the groups did before,
 * and the same words.  Zen 4, 1 thread: the AVX-512 group alone (C harness, interleaved)
 * 5.8-5.9 -> 5.2-5.3 ns per block at best, medians 1.03-1.09x; dropout forward through the
 * API, both builds in one process, paired medians: AVX-512 1.01-1.04x, AVX2 1.07-1.15x
 * ((4096, 4096) and (256, 1024), 1 and 2 threads).  The AVX-512 group is bound by its
 * vector multiplies there; taking the low half from the 32-bit products too, instead of
 * vpmullq, was not faster (0.98-1.06x), nor were other splits between vector and scalar
 * blocks. */
#if FN_TARGET_AVX512
/* AVX-512: as the AVX2 group below, with eight blocks per vector and the low half of each
 * product from vpmullq.  24 vector blocks (three vectors) and 8 scalar ones per group:
 * 2.5 ns per block against 4.3 for the AVX2 group of then (8 vector + 8 scalar blocks), one
 * Zen 5 core (C benchmark of the group alone; 16 vector blocks alone 3.5, 32 alone 2.8;
 * 24 + 8 with the low halves assembled from the 32-bit products, as AVX2 does, 2.6). */
#include <immintrin.h>
#define FN_PHILOX_ZVECS 3
#define FN_PHILOX_GROUP (8 * FN_PHILOX_ZVECS + FN_PHILOX_SLANES)

static inline __m512i fn_philox_mulhi_z(__m512i a, __m512i m_lo, __m512i m_hi)
{
    const __m512i low32 = _mm512_set1_epi64(0xFFFFFFFF);
    const __m512i a_hi = _mm512_srli_epi64(a, 32);
    const __m512i ll = _mm512_mul_epu32(a, m_lo), lh = _mm512_mul_epu32(a, m_hi);
    const __m512i hl = _mm512_mul_epu32(a_hi, m_lo), hh = _mm512_mul_epu32(a_hi, m_hi);
    const __m512i mid = _mm512_add_epi64(lh, _mm512_srli_epi64(ll, 32));   /* see "Multiply-high" above */
    const __m512i mid2 = _mm512_add_epi64(hl, _mm512_and_si512(mid, low32));
    return _mm512_add_epi64(_mm512_add_epi64(hh, _mm512_srli_epi64(mid, 32)), _mm512_srli_epi64(mid2, 32));
}

/* Blocks ctr .. ctr + FN_PHILOX_GROUP - 1 as 16-bit fields (FN_PHILOX_GROUP * 16 of them). */
static inline void fn_philox_group_fields(const fn_philox_keys *ks, unsigned __int128 ctr, uint16_t *fields)
{
    enum { NV = FN_PHILOX_ZVECS, NS = FN_PHILOX_SLANES };
    const __m512i m0 = _mm512_set1_epi64((long long)FN_PHILOX_M0), m1 = _mm512_set1_epi64((long long)FN_PHILOX_M1);
    const __m512i m0_lo = _mm512_set1_epi64((long long)(FN_PHILOX_M0 & 0xFFFFFFFF));
    const __m512i m0_hi = _mm512_set1_epi64((long long)(FN_PHILOX_M0 >> 32));
    const __m512i m1_lo = _mm512_set1_epi64((long long)(FN_PHILOX_M1 & 0xFFFFFFFF));
    const __m512i m1_hi = _mm512_set1_epi64((long long)(FN_PHILOX_M1 >> 32));
    __m512i v0[NV], v1[NV], v2[NV], v3[NV];
    fn_philox_scalar sb;
    for (int v = 0; v < NV; ++v) {
        /* lane j: counter ctr + 8v + j; a lane whose low word wrapped carries into the high */
        const unsigned __int128 first = ctr + 8u * (unsigned)v;
        const __m512i lo0 = _mm512_set1_epi64((long long)(uint64_t)first);
        const __m512i hi0 = _mm512_set1_epi64((long long)(uint64_t)(first >> 64));
        v0[v] = _mm512_add_epi64(lo0, _mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7));
        v1[v] = _mm512_mask_add_epi64(hi0, _mm512_cmplt_epu64_mask(v0[v], lo0), hi0, _mm512_set1_epi64(1));
        v2[v] = _mm512_setzero_si512();
        v3[v] = _mm512_setzero_si512();
    }
    fn_philox_scalar_init(&sb, ctr + 8u * NV, NS);
    /* Two rounds per iteration, not all ten: the fully unrolled group is ~8 KB of code,
     * and its speed then depended on where the linker placed it (dropout (256, 1024)
     * forward 68-113 us across builds of the same source; unrolled by 2 or 5: 73 us in
     * every build tried). */
#pragma GCC unroll 2
    for (int r = 0; r < FN_PHILOX_ROUNDS; ++r) {
        const uint64_t k0 = ks->k0[r], k1 = ks->k1[r];
        const __m512i vk0 = _mm512_set1_epi64((long long)k0), vk1 = _mm512_set1_epi64((long long)k1);
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) {
            const __m512i lo0 = _mm512_mullo_epi64(v0[v], m0), lo1 = _mm512_mullo_epi64(v2[v], m1);
            const __m512i hi0 = fn_philox_mulhi_z(v0[v], m0_lo, m0_hi);
            const __m512i hi1 = fn_philox_mulhi_z(v2[v], m1_lo, m1_hi);
            v0[v] = _mm512_ternarylogic_epi64(hi1, v1[v], vk0, 0x96);   /* three-way xor */
            v2[v] = _mm512_ternarylogic_epi64(hi0, v3[v], vk1, 0x96);
            v1[v] = lo1;
            v3[v] = lo0;
        }
        fn_philox_scalar_round(&sb, k0, k1, NS);
    }
    /* Lanes hold word w of eight blocks; a 4x8 transpose gives each block's four words. */
    for (int v = 0; v < NV; ++v) {
        const __m512i t0 = _mm512_unpacklo_epi64(v0[v], v1[v]), t1 = _mm512_unpackhi_epi64(v0[v], v1[v]);
        const __m512i t2 = _mm512_unpacklo_epi64(v2[v], v3[v]), t3 = _mm512_unpackhi_epi64(v2[v], v3[v]);
        const __m512i a = _mm512_shuffle_i64x2(t0, t2, 0x88), b = _mm512_shuffle_i64x2(t1, t3, 0x88);
        const __m512i c = _mm512_shuffle_i64x2(t0, t2, 0xDD), d = _mm512_shuffle_i64x2(t1, t3, 0xDD);
        uint16_t *dst = fields + 128 * v;
        _mm512_storeu_si512(dst + 0, _mm512_shuffle_i64x2(a, b, 0x88));    /* blocks 0, 1 */
        _mm512_storeu_si512(dst + 32, _mm512_shuffle_i64x2(c, d, 0x88));   /* 2, 3 */
        _mm512_storeu_si512(dst + 64, _mm512_shuffle_i64x2(a, b, 0xDD));   /* 4, 5 */
        _mm512_storeu_si512(dst + 96, _mm512_shuffle_i64x2(c, d, 0xDD));   /* 6, 7 */
    }
    uint64_t words[4 * NS];
    fn_philox_scalar_words(&sb, words, NS);
    fn_philox_words_to_fields(words, 4 * NS, fields + 16 * 8 * NV);
}

#elif FN_TARGET_AVX2
/* AVX2 has no 64x64->128 multiply, but four 32x32->64 products (vpmuludq) per lane
 * build one, four lanes at a time, on the vector pipes.  A group is FN_PHILOX_GROUP blocks,
 * in two vectors of four (or, on Zen 1, one vector and four scalar blocks: below).  Until
 * 2026-12 the group also ran eight blocks in scalar registers in the same round loop
 * (measured then, one Zen 3 core: 4.6-5.2 ns per block against 10.3-11.6 for scalar
 * blocks alone or 7.2-9.4 for vector blocks alone); with the
 * cheaper multiply-high above, and the scalar blocks' 32 words spilled to the stack in every
 * round (two fifths of the kernel's samples were stack moves), vectors alone are faster:
 * dropout forward through the API, Zen 3, 1 thread, builds in one process, paired medians,
 * against 8 vector + 8 scalar blocks: 8 vector blocks alone 1.32-1.47x ((256, 1024) and
 * (4096, 4096)), 16 alone the same (0.98-1.02x of 8), 32 alone level, 12 + 4 scalar
 * 1.22-1.25x, 4 + 4 1.10-1.18x.  Zen 1 is the other way round (fn_philox_group_fields_split
 * below). */
#include <immintrin.h>
#define FN_PHILOX_VLANES 8
#define FN_PHILOX_GROUP FN_PHILOX_VLANES
_Static_assert(FN_PHILOX_VLANES % 4 == 0, "whole vectors of four blocks");

static inline void fn_philox_mulhilo_v(__m256i a, __m256i m_lo, __m256i m_hi, __m256i *hi, __m256i *lo)
{
    const __m256i low32 = _mm256_set1_epi64x(0xFFFFFFFF);
    const __m256i a_hi = _mm256_srli_epi64(a, 32);
    const __m256i ll = _mm256_mul_epu32(a, m_lo), lh = _mm256_mul_epu32(a, m_hi);
    const __m256i hl = _mm256_mul_epu32(a_hi, m_lo), hh = _mm256_mul_epu32(a_hi, m_hi);
    const __m256i mid = _mm256_add_epi64(lh, _mm256_srli_epi64(ll, 32));   /* see "Multiply-high" above */
    const __m256i mid2 = _mm256_add_epi64(hl, _mm256_and_si256(mid, low32));
    *hi = _mm256_add_epi64(_mm256_add_epi64(hh, _mm256_srli_epi64(mid, 32)), _mm256_srli_epi64(mid2, 32));
    *lo = _mm256_blend_epi32(ll, _mm256_slli_epi64(mid2, 32), 0xAA);   /* mid2's low half: lo's high half */
}

/* Blocks ctr .. ctr + 4 nv + ns - 1 as 16-bit fields: nv vectors of four blocks, then ns
 * blocks in scalar registers (fn_philox_scalar_round) in the same round loop.  nv and ns are
 * constants where it is inlined. */
static inline __attribute__((always_inline)) void fn_philox_avx2_blocks(const fn_philox_keys *ks, unsigned __int128 ctr,
                                                                        uint16_t *fields, const int nv, const int ns)
{
    enum { NV_MAX = FN_PHILOX_VLANES / 4 };
    const __m256i m0_lo = _mm256_set1_epi64x((long long)(FN_PHILOX_M0 & 0xFFFFFFFF));
    const __m256i m0_hi = _mm256_set1_epi64x((long long)(FN_PHILOX_M0 >> 32));
    const __m256i m1_lo = _mm256_set1_epi64x((long long)(FN_PHILOX_M1 & 0xFFFFFFFF));
    const __m256i m1_hi = _mm256_set1_epi64x((long long)(FN_PHILOX_M1 >> 32));
    __m256i v0[NV_MAX], v1[NV_MAX], v2[NV_MAX], v3[NV_MAX];
    fn_philox_scalar sb;
    for (int v = 0; v < nv; ++v) {
        unsigned __int128 c[4];
        for (int j = 0; j < 4; ++j)
            c[j] = ctr + (unsigned)(4 * v + j);
        v0[v] = _mm256_setr_epi64x((long long)(uint64_t)c[0], (long long)(uint64_t)c[1],
                                   (long long)(uint64_t)c[2], (long long)(uint64_t)c[3]);
        v1[v] = _mm256_setr_epi64x((long long)(uint64_t)(c[0] >> 64), (long long)(uint64_t)(c[1] >> 64),
                                   (long long)(uint64_t)(c[2] >> 64), (long long)(uint64_t)(c[3] >> 64));
        v2[v] = _mm256_setzero_si256();
        v3[v] = _mm256_setzero_si256();
    }
    if (ns)
        fn_philox_scalar_init(&sb, ctr + (unsigned)(4 * nv), ns);
#pragma GCC unroll 2     /* as in the AVX-512 group: 145 -> 130 us for (256, 1024), 8 + 8 blocks */
    for (int r = 0; r < FN_PHILOX_ROUNDS; ++r) {
        const uint64_t k0 = ks->k0[r], k1 = ks->k1[r];
        const __m256i vk0 = _mm256_set1_epi64x((long long)k0), vk1 = _mm256_set1_epi64x((long long)k1);
#pragma GCC unroll 4
        for (int v = 0; v < nv; ++v) {
            __m256i hi0, lo0, hi1, lo1;
            fn_philox_mulhilo_v(v0[v], m0_lo, m0_hi, &hi0, &lo0);
            fn_philox_mulhilo_v(v2[v], m1_lo, m1_hi, &hi1, &lo1);
            const __m256i n0 = _mm256_xor_si256(_mm256_xor_si256(hi1, v1[v]), vk0);
            const __m256i n2 = _mm256_xor_si256(_mm256_xor_si256(hi0, v3[v]), vk1);
            v1[v] = lo1;
            v3[v] = lo0;
            v0[v] = n0;
            v2[v] = n2;
        }
        if (ns)
            fn_philox_scalar_round(&sb, k0, k1, ns);
    }
    /* Lanes hold word w of four blocks; a 4x4 transpose gives each block's four words. */
    for (int v = 0; v < nv; ++v) {
        const __m256i t0 = _mm256_unpacklo_epi64(v0[v], v1[v]), t1 = _mm256_unpackhi_epi64(v0[v], v1[v]);
        const __m256i t2 = _mm256_unpacklo_epi64(v2[v], v3[v]), t3 = _mm256_unpackhi_epi64(v2[v], v3[v]);
        __m256i *dst = (__m256i *)(fields + 64 * v);
        _mm256_storeu_si256(dst + 0, _mm256_permute2x128_si256(t0, t2, 0x20));
        _mm256_storeu_si256(dst + 1, _mm256_permute2x128_si256(t1, t3, 0x20));
        _mm256_storeu_si256(dst + 2, _mm256_permute2x128_si256(t0, t2, 0x31));
        _mm256_storeu_si256(dst + 3, _mm256_permute2x128_si256(t1, t3, 0x31));
    }
    if (ns) {
        uint64_t words[4 * FN_PHILOX_VLANES];
        fn_philox_scalar_words(&sb, words, ns);
        fn_philox_words_to_fields(words, 4 * ns, fields + 64 * nv);
    }
}

/* Blocks ctr .. ctr + FN_PHILOX_GROUP - 1 as 16-bit fields (FN_PHILOX_GROUP * 16 of them). */
static inline void fn_philox_group_fields(const fn_philox_keys *ks, unsigned __int128 ctr, uint16_t *fields)
{
    fn_philox_avx2_blocks(ks, ctr, fields, FN_PHILOX_VLANES / 4, 0);
}

/* The same blocks as one vector of four and four scalar blocks, for CPUs that issue a 256-bit
 * instruction as two 128-bit halves (fn_cpu_halves_256bit): there the vector multiplies are
 * the slow part, and the scalar multiplier, idle in the vector group, takes half the blocks.
 * AMD EPYC family 23 model 1 (Zen 1, 2 vCPUs), 1 thread, C harness of the group alone (4096
 * blocks, best of 15, interleaved rounds): 19.8-26.5 ns per block against 29.5-33.0 for the
 * vector group; as mixes of the same code, 4 vector + 2 scalar blocks 23.3-23.8, 8 + 4
 * 25.2-26.0, 4 scalar alone 36.5-47.1.  Dropout forward through the API against the build
 * without it, processes alternated, three rounds, float32: (256, 1024) 626-654 -> 434-503 us,
 * (4096, 4096) 43.9-46.0 -> 32.3-34.5 ms at 1 thread and 22.6-23.2 -> 16.9-19.8 ms at 2.
 * Not inlined: inlined beside the vector group, it spilled more and ran only 1.16x faster.
 * Elsewhere the vector group stays: on Zen 3 it beat every mix of vector and scalar blocks
 * (above; this build not measured there), and Intel was not measured.  Compiled for BMI2
 * too (gcc), whose mulx takes any registers where mul works in rdx:rax: the group alone
 * 19.8-20.1 -> 17.9-18.1 ns per block (the harness above); dropout forward float32 through
 * the API, processes alternated with the build without it, three rounds: (256, 1024)
 * 437-458 -> 400-409 us at 1 thread, 224-230 -> 207-212 at 2; (4096, 4096) 32.7-33.2 ->
 * 30.0-30.9 ms and 16.7-17.4 -> 15.4-15.5; (32, 128) 10.2-10.4 -> 9.5-9.9 us.  So the
 * module runs it only on CPUs with BMI2 (fn_cpu_bmi2; all that pick it have it). */
#define FN_PHILOX_HAS_SPLIT 1
#if defined(__GNUC__) && !defined(__clang__)
__attribute__((target("avx2,fma,bmi2")))
#endif
static __attribute__((noinline)) void fn_philox_group_fields_split(const fn_philox_keys *ks, unsigned __int128 ctr, uint16_t *fields)
{
    _Static_assert(FN_PHILOX_VLANES == 8, "one vector of four blocks and four scalar blocks make a group");
    fn_philox_avx2_blocks(ks, ctr, fields, 1, 4);
}

#else /* scalar blocks only */
#define FN_PHILOX_GROUP 4    /* blocks interleaved in scalar registers */

static inline void fn_philox_group_fields(const fn_philox_keys *ks, unsigned __int128 ctr, uint16_t *fields)
{
    fn_philox_scalar sb;
    uint64_t words[4 * FN_PHILOX_GROUP];
    fn_philox_scalar_init(&sb, ctr, FN_PHILOX_GROUP);
#pragma GCC unroll 10    /* small code here: (256, 1024) 192 us, against 240 unrolled by 2 */
    for (int r = 0; r < FN_PHILOX_ROUNDS; ++r)
        fn_philox_scalar_round(&sb, ks->k0[r], ks->k1[r], FN_PHILOX_GROUP);
    fn_philox_scalar_words(&sb, words, FN_PHILOX_GROUP);
    fn_philox_words_to_fields(words, 4 * FN_PHILOX_GROUP, fields);
}
#endif

#ifndef FN_PHILOX_HAS_SPLIT
#define FN_PHILOX_HAS_SPLIT 0   /* fn_philox_group_fields_split is the AVX2 variant's alone */
#endif

#endif /* FN_PHILOX_H */
