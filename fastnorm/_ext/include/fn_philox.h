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

/* FN_PHILOX_LANES independent blocks per call: one block is a chain of ten dependent
 * 64x64->128 multiplies, so a single block leaves the multiplier idle most of the time;
 * interleaving several blocks lets the multiplies of different blocks overlap.
 * Block j uses the 128-bit counter value ctr + j (upper counter words zero, as
 * NumPy's are for any counter below 2**128) and writes words out[4j .. 4j+3]. */
#define FN_PHILOX_LANES 4

static inline void fn_philox_blocks(const fn_philox_keys *ks, unsigned __int128 ctr,
                                    uint64_t out[4 * FN_PHILOX_LANES])
{
    uint64_t c0[FN_PHILOX_LANES], c1[FN_PHILOX_LANES], c2[FN_PHILOX_LANES], c3[FN_PHILOX_LANES];
#pragma GCC unroll 8
    for (int j = 0; j < FN_PHILOX_LANES; ++j) {
        const unsigned __int128 v = ctr + (unsigned)j;
        c0[j] = (uint64_t)v;
        c1[j] = (uint64_t)(v >> 64);
        c2[j] = 0;
        c3[j] = 0;
    }
#pragma GCC unroll 10
    for (int r = 0; r < FN_PHILOX_ROUNDS; ++r) {
        const uint64_t k0 = ks->k0[r], k1 = ks->k1[r];
#pragma GCC unroll 8
        for (int j = 0; j < FN_PHILOX_LANES; ++j) {
            const unsigned __int128 p0 = (unsigned __int128)FN_PHILOX_M0 * c0[j];
            const unsigned __int128 p1 = (unsigned __int128)FN_PHILOX_M1 * c2[j];
            const uint64_t n0 = (uint64_t)(p1 >> 64) ^ c1[j] ^ k0;
            const uint64_t n2 = (uint64_t)(p0 >> 64) ^ c3[j] ^ k1;
            c1[j] = (uint64_t)p1;
            c3[j] = (uint64_t)p0;
            c0[j] = n0;
            c2[j] = n2;
        }
    }
#pragma GCC unroll 8
    for (int j = 0; j < FN_PHILOX_LANES; ++j) {
        out[4 * j + 0] = c0[j];
        out[4 * j + 1] = c1[j];
        out[4 * j + 2] = c2[j];
        out[4 * j + 3] = c3[j];
    }
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

#if defined(__AVX2__)
/* AVX2 has no 64x64->128 multiply, but four 32x32->64 products (vpmuludq) per lane
 * build one, four lanes at a time, on the vector pipes -- which the scalar `mul` does
 * not use.  So one group runs FN_PHILOX_VLANES blocks in vectors and FN_PHILOX_LANES
 * x 2 blocks in scalar registers in the same round loop: measured 4.6-5.2 ns per block
 * against 10.3-11.6 for scalar blocks alone (any interleave width) or 7.2-9.4 for
 * vector blocks alone, one Zen 3 core. */
#include <immintrin.h>
#define FN_PHILOX_VLANES 8
#define FN_PHILOX_SLANES 8
#define FN_PHILOX_GROUP (FN_PHILOX_VLANES + FN_PHILOX_SLANES)

static inline void fn_philox_mulhilo_v(__m256i a, __m256i m_lo, __m256i m_hi, __m256i *hi, __m256i *lo)
{
    const __m256i low32 = _mm256_set1_epi64x(0xFFFFFFFF);
    const __m256i a_hi = _mm256_srli_epi64(a, 32);
    const __m256i ll = _mm256_mul_epu32(a, m_lo), lh = _mm256_mul_epu32(a, m_hi);
    const __m256i hl = _mm256_mul_epu32(a_hi, m_lo), hh = _mm256_mul_epu32(a_hi, m_hi);
    const __m256i mid = _mm256_add_epi64(_mm256_add_epi64(_mm256_srli_epi64(ll, 32), _mm256_and_si256(lh, low32)),
                                         _mm256_and_si256(hl, low32));
    *hi = _mm256_add_epi64(_mm256_add_epi64(hh, _mm256_srli_epi64(lh, 32)),
                           _mm256_add_epi64(_mm256_srli_epi64(hl, 32), _mm256_srli_epi64(mid, 32)));
    *lo = _mm256_blend_epi32(ll, _mm256_slli_epi64(mid, 32), 0xAA);
}

/* Blocks ctr .. ctr + FN_PHILOX_GROUP - 1 as 16-bit fields (FN_PHILOX_GROUP * 16 of them). */
static inline void fn_philox_group_fields(const fn_philox_keys *ks, unsigned __int128 ctr, uint16_t *fields)
{
    enum { NV = FN_PHILOX_VLANES / 4, NS = FN_PHILOX_SLANES };
    const __m256i m0_lo = _mm256_set1_epi64x((long long)(FN_PHILOX_M0 & 0xFFFFFFFF));
    const __m256i m0_hi = _mm256_set1_epi64x((long long)(FN_PHILOX_M0 >> 32));
    const __m256i m1_lo = _mm256_set1_epi64x((long long)(FN_PHILOX_M1 & 0xFFFFFFFF));
    const __m256i m1_hi = _mm256_set1_epi64x((long long)(FN_PHILOX_M1 >> 32));
    __m256i v0[NV], v1[NV], v2[NV], v3[NV];
    uint64_t s0[NS], s1[NS], s2[NS], s3[NS];
    for (int v = 0; v < NV; ++v) {
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
#pragma GCC unroll 8
    for (int j = 0; j < NS; ++j) {
        const unsigned __int128 c = ctr + (unsigned)(FN_PHILOX_VLANES + j);
        s0[j] = (uint64_t)c;
        s1[j] = (uint64_t)(c >> 64);
        s2[j] = 0;
        s3[j] = 0;
    }
#pragma GCC unroll 10
    for (int r = 0; r < FN_PHILOX_ROUNDS; ++r) {
        const uint64_t k0 = ks->k0[r], k1 = ks->k1[r];
        const __m256i vk0 = _mm256_set1_epi64x((long long)k0), vk1 = _mm256_set1_epi64x((long long)k1);
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) {
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
#pragma GCC unroll 8
        for (int j = 0; j < NS; ++j) {
            const unsigned __int128 p0 = (unsigned __int128)FN_PHILOX_M0 * s0[j];
            const unsigned __int128 p1 = (unsigned __int128)FN_PHILOX_M1 * s2[j];
            const uint64_t n0 = (uint64_t)(p1 >> 64) ^ s1[j] ^ k0;
            const uint64_t n2 = (uint64_t)(p0 >> 64) ^ s3[j] ^ k1;
            s1[j] = (uint64_t)p1;
            s3[j] = (uint64_t)p0;
            s0[j] = n0;
            s2[j] = n2;
        }
    }
    /* Lanes hold word w of four blocks; a 4x4 transpose gives each block's four words. */
    for (int v = 0; v < NV; ++v) {
        const __m256i t0 = _mm256_unpacklo_epi64(v0[v], v1[v]), t1 = _mm256_unpackhi_epi64(v0[v], v1[v]);
        const __m256i t2 = _mm256_unpacklo_epi64(v2[v], v3[v]), t3 = _mm256_unpackhi_epi64(v2[v], v3[v]);
        __m256i *dst = (__m256i *)(fields + 64 * v);
        _mm256_storeu_si256(dst + 0, _mm256_permute2x128_si256(t0, t2, 0x20));
        _mm256_storeu_si256(dst + 1, _mm256_permute2x128_si256(t1, t3, 0x20));
        _mm256_storeu_si256(dst + 2, _mm256_permute2x128_si256(t0, t2, 0x31));
        _mm256_storeu_si256(dst + 3, _mm256_permute2x128_si256(t1, t3, 0x31));
    }
    uint64_t words[4 * NS];
#pragma GCC unroll 8
    for (int j = 0; j < NS; ++j) {
        words[4 * j + 0] = s0[j];
        words[4 * j + 1] = s1[j];
        words[4 * j + 2] = s2[j];
        words[4 * j + 3] = s3[j];
    }
    fn_philox_words_to_fields(words, 4 * NS, fields + 16 * FN_PHILOX_VLANES);
}

#else /* scalar blocks only */
#define FN_PHILOX_GROUP FN_PHILOX_LANES

static inline void fn_philox_group_fields(const fn_philox_keys *ks, unsigned __int128 ctr, uint16_t *fields)
{
    uint64_t words[4 * FN_PHILOX_LANES];
    fn_philox_blocks(ks, ctr, words);
    fn_philox_words_to_fields(words, 4 * FN_PHILOX_LANES, fields);
}
#endif

#endif /* FN_PHILOX_H */
