/* Template of the dropout kernels; see fn_common.h for how it is instantiated and
 * fn_dropout.h for the contract.
 *
 * The forward pass works in tiles of FN_DROPOUT_TILE elements: generate the tile's
 * Philox blocks into a small buffer of 16-bit fields (fn_philox.h: blocks in vectors, and
 * with AVX-512, or AVX2 on Zen 1 (split_group), scalar blocks beside them; the generator is
 * the bottleneck), then two loops over the tile -- apply (y = x * factor) and pack the keep
 * bits.  The tile buffer stays in L1.
 * With `stream`, y goes out by non-temporal stores (fn_stream.h; whole 64-byte lines
 * only, the kernel fences before it returns): on Zen 4, where the generator is slower than
 * on Zen 5, plain stores' read for ownership did not overlap with the generator, and
 * streaming removes it (4096 x 4096 float32 through the API, both builds in one process,
 * paired medians over four runs: 1.00-1.08x at 1 thread, 1.02-1.28x at 2; measured no gain
 * on Zen 5, where the prefetch below sufficed).  Calls below stream_min_bytes() keep plain
 * stores (streamed: 0.93x at (256, 1024), whose y stays cached).
 *
 * The factor is selected between two constants and then multiplied, never the output
 * selected: a dropped NaN or Inf stays NaN (NaN * 0), as in PyTorch, and the loop is
 * a multiply by a blend, which vectorizes on SSE2 as well as AVX2.
 */
#include <string.h>
#include "fn_dropout.h"
#include "fn_philox.h"
#include "fn_real.h"
#include "fn_stream.h"

#define T FN_T
/* Elements per tile: a multiple of 16 * FN_PHILOX_GROUP (whole groups of blocks), or the
 * groups of a tile would write past its field buffer. */
#define FN_DROPOUT_TILE 1024
_Static_assert(FN_DROPOUT_TILE % (16 * FN_PHILOX_GROUP) == 0, "a tile must hold whole Philox groups");


#ifndef FN_DROPOUT_PACK_DEFINED_FOR_ISA
/* Guarded per translation unit: the template is included once per FN_REAL. */
#define FN_DROPOUT_PACK_DEFINED_FOR_ISA
/* bytes[j] = bits (field[8j + k] >= t) for k = 0..7, low bit first. */
static inline void FN_NAME(fn_dropout_pack, any)(const uint16_t *field, int32_t t, uint8_t *bytes, int64_t nbytes)
{
    int64_t j = 0;
    if (t >= 65536) {  /* nothing kept; the vector paths' unsigned compares need t <= 65535 */
        memset(bytes, 0, (size_t)nbytes);
        return;
    }
#if FN_TARGET_AVX512
    /* 32 fields compared straight into a mask register: its 32 bits are 4 mask bytes. */
    const __m512i tv = _mm512_set1_epi16((short)(uint16_t)t);
    for (; j + 4 <= nbytes; j += 4) {
        const uint32_t bits = (uint32_t)_mm512_cmpge_epu16_mask(_mm512_loadu_si512(field + 8 * j), tv);
        memcpy(bytes + j, &bits, 4);  /* little-endian: byte j holds elements 8j .. 8j+7 */
    }
#elif FN_TARGET_AVX2
    /* A bytewise loop over bits does not vectorize well (it cost as much as the
     * generator); here: compare 32 fields, narrow to bytes, movemask -> 4 mask bytes. */
    const __m256i tv = _mm256_set1_epi16((short)(uint16_t)t);
    for (; j + 4 <= nbytes; j += 4) {
        const __m256i a = _mm256_loadu_si256((const __m256i *)(field + 8 * j));
        const __m256i b = _mm256_loadu_si256((const __m256i *)(field + 8 * j + 16));
        const __m256i ka = _mm256_cmpeq_epi16(_mm256_max_epu16(a, tv), a);  /* a >= t, unsigned */
        const __m256i kb = _mm256_cmpeq_epi16(_mm256_max_epu16(b, tv), b);
        const __m256i k8 = _mm256_permute4x64_epi64(_mm256_packs_epi16(ka, kb), 0xD8);
        const uint32_t bits = (uint32_t)_mm256_movemask_epi8(k8);
        memcpy(bytes + j, &bits, 4);  /* little-endian: byte j holds elements 8j .. 8j+7 */
    }
#endif
    for (; j < nbytes; ++j) {
        unsigned byte = 0;
        for (int k = 0; k < 8; ++k)
            byte |= (unsigned)((int32_t)field[8 * j + k] >= t) << k;
        bytes[j] = (uint8_t)byte;
    }
}
#endif

void FN_NAME(fn_dropout_forward, FN_SUF)(const T *x, T *y, uint8_t *mask, int64_t n, int64_t start,
                                         uint64_t key_lo, uint64_t key_hi, uint64_t offset,
                                         int32_t threshold, double scale, int stream, int split_group)
{
    fn_philox_keys ks;
    uint16_t field[FN_DROPOUT_TILE] __attribute__((aligned(64)));   /* whole cache lines for 64-byte vectors */
    const T kept_factor = (T)scale;
    const int32_t t = threshold;
    (void)split_group;   /* read by the AVX2 variant alone (FN_PHILOX_HAS_SPLIT) */
    fn_philox_schedule(&ks, key_lo, key_hi);
    /* Counter of this call's first block; 128-bit so that offset + 1 + b carries
     * into the second counter word exactly as NumPy's 256-bit counter does. */
    unsigned __int128 ctr = (unsigned __int128)offset + 1u + (uint64_t)(start / 16);

    for (int64_t s = 0; s < n; s += FN_DROPOUT_TILE) {
        const int64_t m = n - s < FN_DROPOUT_TILE ? n - s : FN_DROPOUT_TILE;
        const int64_t groups = (m + 16 * FN_PHILOX_GROUP - 1) / (16 * FN_PHILOX_GROUP);
        /* The generator touches no memory, so nothing leads the hardware prefetcher ahead:
         * ask for the next tile of x while this one's blocks are generated.  4096 x 4096
         * float32, one thread (C harness): 5.4 -> 4.8 ms; from cache 72 -> 68 us. */
        const int64_t ahead = n - s - FN_DROPOUT_TILE < FN_DROPOUT_TILE ? n - s - FN_DROPOUT_TILE : FN_DROPOUT_TILE;
        fn_prefetch_lines(x + s + FN_DROPOUT_TILE, ahead * (int64_t)sizeof(T));
        for (int64_t gi = 0; gi < groups; ++gi) {
#if FN_PHILOX_HAS_SPLIT
            if (split_group)
                fn_philox_group_fields_split(&ks, ctr, field + gi * 16 * FN_PHILOX_GROUP);
            else
#endif
                fn_philox_group_fields(&ks, ctr, field + gi * 16 * FN_PHILOX_GROUP);
            ctr += FN_PHILOX_GROUP;
        }
        const T *xs = x + s;
        T *ys = y + s;
        FN_MAP_STREAMED(T, FN_STREAM_COPY, stream, ys, m, i, xs[i] * ((int32_t)field[i] >= t ? kept_factor : (T)0));

        uint8_t *ms = mask + s / 8;
        const int64_t full = m / 8;
        FN_NAME(fn_dropout_pack, any)(field, t, ms, full);
        if (full * 8 < m) {  /* partial last byte: bits past n stay 0, as np.packbits pads */
            unsigned byte = 0;
            for (int64_t i = full * 8; i < m; ++i)
                byte |= (unsigned)((int32_t)field[i] >= t) << (i - full * 8);
            ms[full] = (uint8_t)byte;
        }
    }
    if (stream)
        fn_stream_fence();
}

void FN_NAME(fn_dropout_backward, FN_SUF)(const T *g, const uint8_t *mask, T *gx, int64_t n, double scale,
                                          int stream)
{
    const T kept_factor = (T)scale;
    const int64_t full = n / 8;
    int64_t j0 = 0;
#define KEPT_GRAD(i) (g[(i)] * (((mask[(i) / 8] >> ((i) % 8)) & 1u) ? kept_factor : (T)0))   /* one element */
#if FN_TARGET_AVX2
    /* Per mask byte: broadcast it, test one bit per lane, and the lane mask selects
     * the factor (gcc's own vectorization of the bit loop was slower than SSE2's).  From the
     * last byte down where gx trails g (fn_trails, fn_stream.h).  AMD Zen 4, float32, 1 thread,
     * kernel through ctypes against the upward loop alone: gx 16 / 48 / 64 bytes after g
     * modulo 4 KiB, (4096, 4096) 1.27x / 1.46x / 1.42x, (256, 1024) 0.94-0.97x / 1.21-1.43x /
     * 0.97-1.00x; elsewhere 0.97-1.02x.
     * GRAD_OF_BITS(bits, e, STORE): the 8 elements from e, of the keep bits `bits`, stored by
     * the intrinsic _mm256_<STORE>_ps / _pd (storeu, or stream for non-temporal stores). */
#if FN_REAL == 32
    const __m256i lane_bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    const __m256 factor = _mm256_set1_ps(kept_factor);
#define GRAD_OF_BITS(bits, e, STORE)                                                             \
    do {                                                                                         \
        const __m256i b = _mm256_and_si256(_mm256_set1_epi32((int)(bits)), lane_bit);           \
        const __m256 f = _mm256_and_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32(b, lane_bit)), factor); \
        _mm256_##STORE##_ps(gx + (e), _mm256_mul_ps(_mm256_loadu_ps(g + (e)), f));               \
    } while (0)
#else
    const __m256i bit_lo = _mm256_setr_epi64x(1, 2, 4, 8), bit_hi = _mm256_setr_epi64x(16, 32, 64, 128);
    const __m256d factor = _mm256_set1_pd(kept_factor);
#define GRAD_OF_BITS(bits, e, STORE)                                                             \
    do {                                                                                         \
        const __m256i v = _mm256_set1_epi64x((long long)(bits));                                 \
        const __m256d f_lo = _mm256_and_pd(_mm256_castsi256_pd(                                  \
            _mm256_cmpeq_epi64(_mm256_and_si256(v, bit_lo), bit_lo)), factor);                   \
        const __m256d f_hi = _mm256_and_pd(_mm256_castsi256_pd(                                  \
            _mm256_cmpeq_epi64(_mm256_and_si256(v, bit_hi), bit_hi)), factor);                   \
        _mm256_##STORE##_pd(gx + (e), _mm256_mul_pd(_mm256_loadu_pd(g + (e)), f_lo));             \
        _mm256_##STORE##_pd(gx + (e) + 4, _mm256_mul_pd(_mm256_loadu_pd(g + (e) + 4), f_hi));     \
    } while (0)
#endif
    /* Streamed: gx's whole 64-byte lines with non-temporal stores, each asking for g's line
     * FN_STREAM_AHEAD bytes on (as the activations' streamed maps, fn_stream.h), the
     * elements before and after them one by one.  A line starts at element e = head + 64 k /
     * sizeof(T), whose bit sits `shift` = head mod 8 places into its mask byte, the same for
     * every line; with shift > 0 the 8 bits of e..e+7 straddle two bytes, both within the
     * mask (e + 7 < n).  AMD Zen 1, 1 thread, 4096 x 4096 through the API, processes
     * alternated, against plain stores: float32 12.2-12.8 -> 6.1-6.7 ms (streamed without the
     * prefetch 8.8-9.5), float64 22.2-23.0 -> 13.6-15.5 (16.0-17.4); 2 threads 8.7-9.1 ->
     * 5.7-6.0 and 16.9-18.5 -> 10.5-11.3 ms; np.copyto of the array 7.0-7.5 / 13.4-14.6 ms. */
    int64_t head;
    const int64_t body = fn_stream_split(gx, n, sizeof(T), FN_STREAM_LINE(T), stream, &head);
    if (body > 0) {
        const unsigned shift = (unsigned)(head & 7);
        for (int64_t i = 0; i < head; ++i)
            gx[i] = KEPT_GRAD(i);
        for (int64_t e0 = head; e0 < head + body; e0 += FN_STREAM_LINE(T)) {
            FN_STREAM_PREFETCH(g + e0, FN_STREAM_LINE(T));
            for (int64_t e = e0; e < e0 + FN_STREAM_LINE(T); e += 8) {
                const int64_t j = e / 8;
                const unsigned bits = shift ? ((mask[j] | (unsigned)mask[j + 1] << 8) >> shift) & 0xffu : mask[j];
                GRAD_OF_BITS(bits, e, stream);   /* _mm256_stream_ps / _pd */
            }
        }
        for (int64_t i = head + body; i < n; ++i)
            gx[i] = KEPT_GRAD(i);
        fn_stream_fence();
        return;
    }
    if (fn_trails(gx, g)) {
        for (int64_t j = full - 1; j >= 0; --j)
            GRAD_OF_BITS(mask[j], 8 * j, storeu);
    } else {
        for (int64_t j = 0; j < full; ++j)
            GRAD_OF_BITS(mask[j], 8 * j, storeu);
    }
    j0 = full;
#undef GRAD_OF_BITS
#else
    (void)stream;   /* the baseline variant stores plainly (not measured streamed) */
#endif
#pragma omp simd
    for (int64_t j = j0; j < full; ++j) {
        const unsigned byte = mask[j];
#pragma GCC unroll 8
        for (int k = 0; k < 8; ++k)
            gx[8 * j + k] = g[8 * j + k] * (((byte >> k) & 1u) ? kept_factor : (T)0);
    }
    for (int64_t i = full * 8; i < n; ++i)
        gx[i] = KEPT_GRAD(i);
#undef KEPT_GRAD
}

#undef T
