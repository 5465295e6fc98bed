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

#endif /* FN_PHILOX_H */
