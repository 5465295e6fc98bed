/* Dropout kernels: the entry points of every ISA variant and their tables.
 *
 * The keep decision of element i (C-order flat index over the whole array) comes
 * from NumPy's Philox4x64-10 stream with key (key_lo, key_hi) started at counter
 * `offset`: block b = i / 16 uses counter offset + 1 + b (NumPy increments before it
 * generates), and element i uses the 16-bit field i % 4 (low bits first) of the
 * block's word (i / 4) % 4.  Element i is kept iff field >= threshold, with
 * threshold = round(p * 65536) in [0, 65536].
 *
 * forward:  y[i] = x[i] * (kept ? scale : 0), and bit i % 8 of mask[i / 8] = kept
 *           (np.packbits(..., bitorder='little') layout; unused bits of the last
 *           byte are 0).  x and y may be the same buffer.  `start` is the flat index
 *           of x[0] within the whole array and must be a multiple of 16; mask points
 *           at byte start / 8.  Writes ceil(n / 8) mask bytes.  stream: y's whole
 *           64-byte lines by non-temporal stores (fn_stream.h), the same values, fenced
 *           before the call returns.  split_group: the AVX2 variant generates its blocks
 *           by fn_philox_group_fields_split (fn_philox.h), for CPUs whose 256-bit
 *           instructions run as two halves (fn_cpu_halves_256bit); the same stream, and
 *           ignored by the other variants.
 * backward: gx[i] = g[i] * (bit i of mask ? scale : 0).  g and gx may be the same
 *           buffer; mask[0] holds the bit of g[0].  stream: as forward's, in the AVX2
 *           and AVX-512 variants (the baseline variant stores plainly).
 */
#ifndef FN_DROPOUT_H
#define FN_DROPOUT_H
#include "fn_common.h"

#define FN_DECLARE_DROPOUT(isa) \
    void fn_dropout_forward_f32_##isa(const float *x, float *y, uint8_t *mask, int64_t n, int64_t start, \
                                      uint64_t key_lo, uint64_t key_hi, uint64_t offset, \
                                      int32_t threshold, double scale, int stream, int split_group); \
    void fn_dropout_forward_f64_##isa(const double *x, double *y, uint8_t *mask, int64_t n, int64_t start, \
                                      uint64_t key_lo, uint64_t key_hi, uint64_t offset, \
                                      int32_t threshold, double scale, int stream, int split_group); \
    void fn_dropout_backward_f32_##isa(const float *g, const uint8_t *mask, float *gx, int64_t n, double scale, \
                                       int stream); \
    void fn_dropout_backward_f64_##isa(const double *g, const uint8_t *mask, double *gx, int64_t n, double scale, \
                                       int stream);

FN_DECLARE_DROPOUT(base)
FN_DECLARE_DROPOUT(avx2)
FN_DECLARE_DROPOUT(avx512)

typedef struct fn_dropout_kernels {
    void (*forward_f32)(const float *, float *, uint8_t *, int64_t, int64_t, uint64_t, uint64_t,
                        uint64_t, int32_t, double, int, int);
    void (*forward_f64)(const double *, double *, uint8_t *, int64_t, int64_t, uint64_t, uint64_t,
                        uint64_t, int32_t, double, int, int);
    void (*backward_f32)(const float *, const uint8_t *, float *, int64_t, double, int);
    void (*backward_f64)(const double *, const uint8_t *, double *, int64_t, double, int);
} fn_dropout_kernels;

/* Indexed by FN_ISA_BASE / FN_ISA_AVX2 / FN_ISA_AVX512 (defined in dropout_base.c). */
extern const fn_dropout_kernels *const fn_dropout_kernels_by_isa[FN_ISA_COUNT];

/* The table of variant `isa`, pointing at the functions of variant `impl`. */
#define FN_DEFINE_DROPOUT_KERNELS(isa, impl) FN_DEFINE_DROPOUT_KERNELS_(isa, impl)
#define FN_DEFINE_DROPOUT_KERNELS_(isa, impl) \
    const fn_dropout_kernels fn_dropout_kernels_##isa = { \
        fn_dropout_forward_f32_##impl, fn_dropout_forward_f64_##impl, \
        fn_dropout_backward_f32_##impl, fn_dropout_backward_f64_##impl };
extern const fn_dropout_kernels fn_dropout_kernels_base, fn_dropout_kernels_avx2,
    fn_dropout_kernels_avx512;

#endif /* FN_DROPOUT_H */
