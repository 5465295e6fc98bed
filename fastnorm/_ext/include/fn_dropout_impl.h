/* Template of the dropout kernels; see fn_common.h for how it is instantiated and
 * fn_dropout.h for the contract.
 *
 * The forward pass works in tiles of FN_DROPOUT_TILE elements: generate the tile's
 * Philox blocks into a small buffer of 16-bit fields (scalar, several blocks
 * interleaved: the generator is the bottleneck), then two vectorizable loops over the
 * tile -- apply (y = x * factor) and pack the keep bits.  The tile buffer stays in L1.
 *
 * The factor is selected between two constants and then multiplied, never the output
 * selected: a dropped NaN or Inf stays NaN (NaN * 0), as in PyTorch, and the loop is
 * a multiply by a blend, which vectorizes on SSE2 as well as AVX2.
 */
#include <string.h>
#include "fn_dropout.h"
#include "fn_philox.h"
#include "fn_real.h"

#define T FN_T
/* Elements per tile: a multiple of 16 * FN_PHILOX_LANES (whole groups of blocks). */
#define FN_DROPOUT_TILE 1024

void FN_NAME(fn_dropout_forward, FN_SUF)(const T *x, T *y, uint8_t *mask, int64_t n, int64_t start,
                                         uint64_t key_lo, uint64_t key_hi, uint64_t offset,
                                         int32_t threshold, double scale)
{
    fn_philox_keys ks;
    uint16_t field[FN_DROPOUT_TILE];
    const T kept_factor = (T)scale;
    const int32_t t = threshold;
    fn_philox_schedule(&ks, key_lo, key_hi);
    /* Counter of this call's first block; 128-bit so that offset + 1 + b carries
     * into the second counter word exactly as NumPy's 256-bit counter does. */
    unsigned __int128 ctr = (unsigned __int128)offset + 1u + (uint64_t)(start / 16);

    for (int64_t s = 0; s < n; s += FN_DROPOUT_TILE) {
        const int64_t m = n - s < FN_DROPOUT_TILE ? n - s : FN_DROPOUT_TILE;
        const int64_t groups = (m + 16 * FN_PHILOX_LANES - 1) / (16 * FN_PHILOX_LANES);
        for (int64_t gi = 0; gi < groups; ++gi) {
            uint64_t words[4 * FN_PHILOX_LANES];
            fn_philox_blocks(&ks, ctr, words);
            ctr += FN_PHILOX_LANES;
            uint16_t *f = field + gi * 16 * FN_PHILOX_LANES;
#pragma GCC unroll 16
            for (int w = 0; w < 4 * FN_PHILOX_LANES; ++w) {
                const uint64_t v = words[w];
                f[4 * w + 0] = (uint16_t)v;
                f[4 * w + 1] = (uint16_t)(v >> 16);
                f[4 * w + 2] = (uint16_t)(v >> 32);
                f[4 * w + 3] = (uint16_t)(v >> 48);
            }
        }
        const T *xs = x + s;
        T *ys = y + s;
#pragma omp simd
        for (int64_t i = 0; i < m; ++i)
            ys[i] = xs[i] * ((int32_t)field[i] >= t ? kept_factor : (T)0);

        uint8_t *ms = mask + s / 8;
        const int64_t full = m / 8;
#pragma omp simd
        for (int64_t j = 0; j < full; ++j) {
            unsigned byte = 0;
#pragma GCC unroll 8
            for (int k = 0; k < 8; ++k)
                byte |= (unsigned)((int32_t)field[8 * j + k] >= t) << k;
            ms[j] = (uint8_t)byte;
        }
        if (full * 8 < m) {  /* partial last byte: bits past n stay 0, as np.packbits pads */
            unsigned byte = 0;
            for (int64_t i = full * 8; i < m; ++i)
                byte |= (unsigned)((int32_t)field[i] >= t) << (i - full * 8);
            ms[full] = (uint8_t)byte;
        }
    }
}

void FN_NAME(fn_dropout_backward, FN_SUF)(const T *g, const uint8_t *mask, T *gx, int64_t n, double scale)
{
    const T kept_factor = (T)scale;
    const int64_t full = n / 8;
#pragma omp simd
    for (int64_t j = 0; j < full; ++j) {
        const unsigned byte = mask[j];
#pragma GCC unroll 8
        for (int k = 0; k < 8; ++k)
            gx[8 * j + k] = g[8 * j + k] * (((byte >> k) & 1u) ? kept_factor : (T)0);
    }
    for (int64_t i = full * 8; i < n; ++i)
        gx[i] = g[i] * (((mask[i / 8] >> (i % 8)) & 1u) ? kept_factor : (T)0);
}

#undef T
