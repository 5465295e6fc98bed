/* Arrays whose last axis is not their contiguous one into C order (and C-order ones into
 * Fortran order): the copy the kernel families make of such an input (x.T of a C-order
 * matrix, say, or x.swapaxes(-1, -2)) where they do not read it as it lies (batch norm, and
 * layer and RMS norm from 16 rows, read a Fortran-order x as x.T).  NumPy copies it in the
 * destination's order, reading one element per cache line of the source: a Fortran-order
 * (8192, 768) float32 array took 29.5 ms on AMD Zen 4 (1 thread), 25 times its copy floor,
 * and a layer norm of it spent 30 of its 31 ms there.  Here the copy goes by square blocks
 * of M x M elements, transposed in SSE2 registers on x86-64 (by plain loops elsewhere and at
 * the edges), and each destination line is written whole by consecutive blocks.  The source
 * is read along its rows, FN_LAYOUT_BLOCK elements of each, which the hardware prefetcher
 * follows with some help (FN_LAYOUT_AHEAD).
 *
 * Elements are moved as bit patterns (2, 4 or 8 bytes), so the values are untouched: NaN
 * payloads, signed zeros and float16 included.
 *
 * Layout.  The copy is a set of planes, each a transpose: plane p copies a (rows, cols)
 * matrix whose source element (i, j) lies at i + j * src_ld (the source runs along i) to
 * destination i * dst_ld + j (the destination runs along j).  An array with an axis k of unit
 * stride other than its last, copied into C order, is such a set: rows along k, cols along
 * the last axis, one plane per index of the other ("outer") axes.  A Fortran-order (d0, ...,
 * dn) array has k = 0 and the middle axes outer; x.swapaxes(-1, -2) of a C-order array has k
 * = ndim - 2 and the leading axes outer.  Going from C to Fortran order is the same copy of
 * the transposes. */
#ifndef FN_LAYOUT_H
#define FN_LAYOUT_H

#include <stdint.h>
#include "fn_common.h"

#define FN_LAYOUT_MAX_DIMS 64
/* Destination rows per task: the source rows are read in runs of this many elements. */
#define FN_LAYOUT_BLOCK 256
/* Destination columns per task (whole lines of every item size), so that a copy of few rows
 * still splits among threads. */
#define FN_LAYOUT_COL_BLOCK 2048
/* How far ahead of the blocks in a source row its lines are prefetched, in bytes. */
#define FN_LAYOUT_AHEAD 256

/* The planes of a copy (see the top): plane p's outer index is p's C-order digits over
 * dims[0..count), and its source and destination start at that index weighed by src_step and
 * dst_step (elements). */
typedef struct fn_layout_planes {
    int64_t rows, cols, src_ld, dst_ld, planes;
    int count;
    int64_t dims[FN_LAYOUT_MAX_DIMS], src_step[FN_LAYOUT_MAX_DIMS], dst_step[FN_LAYOUT_MAX_DIMS];
} fn_layout_planes;

static inline void fn_layout_plane_start(const fn_layout_planes *g, int64_t p, int64_t *src_at,
                                         int64_t *dst_at)
{
    int64_t s = 0, d = 0;
    for (int a = g->count - 1; a >= 0; a--) {   /* C order: the last axis varies fastest */
        const int64_t index = p % g->dims[a];
        p /= g->dims[a];
        s += index * g->src_step[a];
        d += index * g->dst_step[a];
    }
    *src_at = s;
    *dst_at = d;
}

/* The copy is cut into tasks of up to FN_LAYOUT_BLOCK destination rows by FN_LAYOUT_COL_BLOCK
 * columns of one plane, numbered plane by plane, row block by row block: fn_layout_tasks of
 * them in all, any range of which can run on its own thread. */
static inline int64_t fn_layout_row_blocks(const fn_layout_planes *g)
{
    return (g->rows + FN_LAYOUT_BLOCK - 1) / FN_LAYOUT_BLOCK;
}

static inline int64_t fn_layout_col_blocks(const fn_layout_planes *g)
{
    return (g->cols + FN_LAYOUT_COL_BLOCK - 1) / FN_LAYOUT_COL_BLOCK;
}

static inline int64_t fn_layout_tasks(const fn_layout_planes *g)
{
    return g->planes * fn_layout_row_blocks(g) * fn_layout_col_blocks(g);
}

/* d[i * dst_ld + j] = s[j * src_ld + i] for i < ni, j < nj: a block's plain copy. */
#define FN_LAYOUT_PLAIN(s, src_ld, d, dst_ld, ni, nj)                                        \
    for (int64_t i_ = 0; i_ < (ni); i_++)                                                     \
        for (int64_t j_ = 0; j_ < (nj); j_++)                                                 \
            (d)[i_ * (dst_ld) + j_] = (s)[j_ * (src_ld) + i_]

/* The M x M blocks: M source rows of M elements each in, M destination rows out, in SSE2
 * registers (every x86-64 CPU has them).  Pure data movement (unpacks and moves): no
 * instruction here looks at a value.  Wider blocks lost: AVX 8 x 8 float32 and 4 x 4 float64
 * blocks took 1.1-1.6x the time of these on Zen 4 (their 32-byte loads cross cache lines
 * wherever an array is only 16-byte aligned, as malloc's blocks are). */
#if defined(__SSE2__)
#include <emmintrin.h>
#define FN_LAYOUT_VECTOR 1

static inline void
fn_layout_block_u16_vector(const uint16_t *s, int64_t src_ld, uint16_t *d, int64_t dst_ld)
{
    __m128i r[8], a[8], b[8];
    for (int k = 0; k < 8; k++)
        r[k] = _mm_loadu_si128((const __m128i *)(s + k * src_ld));
    for (int k = 0; k < 8; k += 2) {
        a[k] = _mm_unpacklo_epi16(r[k], r[k + 1]);          /* columns 0-3 of rows k, k + 1 */
        a[k + 1] = _mm_unpackhi_epi16(r[k], r[k + 1]);      /* columns 4-7 */
    }
    for (int k = 0; k < 8; k += 4) {
        b[k] = _mm_unpacklo_epi32(a[k], a[k + 2]);          /* columns 0-1 of rows k..k + 3 */
        b[k + 1] = _mm_unpackhi_epi32(a[k], a[k + 2]);      /* 2-3 */
        b[k + 2] = _mm_unpacklo_epi32(a[k + 1], a[k + 3]);  /* 4-5 */
        b[k + 3] = _mm_unpackhi_epi32(a[k + 1], a[k + 3]);  /* 6-7 */
    }
    for (int k = 0; k < 4; k++) {
        _mm_storeu_si128((__m128i *)(d + 2 * k * dst_ld), _mm_unpacklo_epi64(b[k], b[k + 4]));
        _mm_storeu_si128((__m128i *)(d + (2 * k + 1) * dst_ld), _mm_unpackhi_epi64(b[k], b[k + 4]));
    }
}

static inline void
fn_layout_block_u32_vector(const uint32_t *s, int64_t src_ld, uint32_t *d, int64_t dst_ld)
{
    const __m128 r0 = _mm_loadu_ps((const float *)s), r1 = _mm_loadu_ps((const float *)(s + src_ld));
    const __m128 r2 = _mm_loadu_ps((const float *)(s + 2 * src_ld));
    const __m128 r3 = _mm_loadu_ps((const float *)(s + 3 * src_ld));
    const __m128 t0 = _mm_unpacklo_ps(r0, r1), t1 = _mm_unpackhi_ps(r0, r1);
    const __m128 t2 = _mm_unpacklo_ps(r2, r3), t3 = _mm_unpackhi_ps(r2, r3);
    _mm_storeu_ps((float *)d, _mm_movelh_ps(t0, t2));
    _mm_storeu_ps((float *)(d + dst_ld), _mm_movehl_ps(t2, t0));
    _mm_storeu_ps((float *)(d + 2 * dst_ld), _mm_movelh_ps(t1, t3));
    _mm_storeu_ps((float *)(d + 3 * dst_ld), _mm_movehl_ps(t3, t1));
}

static inline void
fn_layout_block_u64_vector(const uint64_t *s, int64_t src_ld, uint64_t *d, int64_t dst_ld)
{
    const __m128i r0 = _mm_loadu_si128((const __m128i *)s);
    const __m128i r1 = _mm_loadu_si128((const __m128i *)(s + src_ld));
    _mm_storeu_si128((__m128i *)d, _mm_unpacklo_epi64(r0, r1));
    _mm_storeu_si128((__m128i *)(d + dst_ld), _mm_unpackhi_epi64(r0, r1));
}
#else
#define FN_LAYOUT_VECTOR 0
#endif

/* Tasks [task0, task1) of the copy g of src into dst, by blocks of M x M (BLOCK_FN).  The
 * blocks of a task go destination line by destination line (64 bytes: LINE elements; a
 * task's columns start a whole number of lines into the row), so that each line is written
 * whole before the next; the edges the blocks leave (fewer than M rows or columns) are
 * copied plainly. */
#define FN_DEFINE_TRANSPOSE_TASKS(U, name, M, BLOCK_FN)                                        \
static void name(const U *src, U *dst, const fn_layout_planes *g, int64_t task0, int64_t task1) \
{                                                                                             \
    enum { LINE = 64 / (int)sizeof(U), AHEAD = FN_LAYOUT_AHEAD / (int)sizeof(U) };            \
    const int64_t rows = g->rows, cols = g->cols, src_ld = g->src_ld, dst_ld = g->dst_ld;     \
    const int64_t row_blocks = fn_layout_row_blocks(g), col_blocks = fn_layout_col_blocks(g); \
    for (int64_t task = task0; task < task1; task++) {                                        \
        const int64_t plane = task / (row_blocks * col_blocks);                               \
        const int64_t b0 = (task / col_blocks % row_blocks) * FN_LAYOUT_BLOCK;                \
        const int64_t b1 = b0 + FN_LAYOUT_BLOCK < rows ? b0 + FN_LAYOUT_BLOCK : rows;         \
        const int64_t b1_m = b1 - (b1 - b0) % (M);                                            \
        const int64_t c0 = (task % col_blocks) * FN_LAYOUT_COL_BLOCK;                         \
        const int64_t c1 = c0 + FN_LAYOUT_COL_BLOCK < cols ? c0 + FN_LAYOUT_COL_BLOCK : cols; \
        const int64_t c1_m = c1 - (c1 - c0) % (M);                                            \
        int64_t src_at, dst_at;                                                               \
        fn_layout_plane_start(g, plane, &src_at, &dst_at);                                    \
        const U *s = src + src_at;                                                            \
        U *d = dst + dst_at;                                                                  \
        for (int64_t j0 = c0; j0 < c1_m; j0 += LINE) {                                        \
            const int64_t j1 = j0 + LINE <= c1_m ? j0 + LINE : c1_m;                          \
            for (int64_t i0 = b0; i0 < b1_m; i0 += (M)) {                                     \
                if ((i0 - b0) % LINE == 0 && i0 + AHEAD < b1)                                 \
                    for (int64_t j = j0; j < j1; j++)                                         \
                        fn_prefetch_lines_l2(s + j * src_ld + i0 + AHEAD, 64);                \
                for (int64_t j = j0; j < j1; j += (M))                                        \
                    BLOCK_FN(s + j * src_ld + i0, src_ld, d + i0 * dst_ld + j, dst_ld);       \
            }                                                                                 \
        }                                                                                     \
        if (b1_m < b1)          /* the last rows, under the blocks' columns */                \
            FN_LAYOUT_PLAIN(s + c0 * src_ld + b1_m, src_ld, d + b1_m * dst_ld + c0, dst_ld,   \
                            b1 - b1_m, c1_m - c0);                                            \
        if (c1_m < c1)          /* the last columns, every row of the task */                 \
            FN_LAYOUT_PLAIN(s + c1_m * src_ld + b0, src_ld, d + b0 * dst_ld + c1_m,           \
                            dst_ld, b1 - b0, c1 - c1_m);                                      \
    }                                                                                         \
}

/* The plain M x M blocks, for builds without the vector ones (and to test against). */
#define FN_DEFINE_PLAIN_BLOCK(U, suf, M)                                                       \
static inline void fn_layout_block_##suf##_plain(const U *s, int64_t src_ld, U *d,           \
                                                 int64_t dst_ld)                              \
{                                                                                             \
    FN_LAYOUT_PLAIN(s, src_ld, d, dst_ld, M, M);                                              \
}

FN_DEFINE_PLAIN_BLOCK(uint16_t, u16, 8)
FN_DEFINE_PLAIN_BLOCK(uint32_t, u32, 4)
FN_DEFINE_PLAIN_BLOCK(uint64_t, u64, 2)
FN_DEFINE_TRANSPOSE_TASKS(uint16_t, fn_transpose_u16_plain, 8, fn_layout_block_u16_plain)
FN_DEFINE_TRANSPOSE_TASKS(uint32_t, fn_transpose_u32_plain, 4, fn_layout_block_u32_plain)
FN_DEFINE_TRANSPOSE_TASKS(uint64_t, fn_transpose_u64_plain, 2, fn_layout_block_u64_plain)
#if FN_LAYOUT_VECTOR
FN_DEFINE_TRANSPOSE_TASKS(uint16_t, fn_transpose_u16_vector, 8, fn_layout_block_u16_vector)
FN_DEFINE_TRANSPOSE_TASKS(uint32_t, fn_transpose_u32_vector, 4, fn_layout_block_u32_vector)
FN_DEFINE_TRANSPOSE_TASKS(uint64_t, fn_transpose_u64_vector, 2, fn_layout_block_u64_vector)
#endif

/* Whether this build has the vector blocks. */
static inline int fn_layout_has_vector(void) { return FN_LAYOUT_VECTOR; }

/* Tasks [task0, task1) of the copy g, of elements of `size` bytes (2, 4 or 8), with the vector
 * blocks when `vector` (where the build has them), else with the plain ones. */
static void fn_transpose(const void *src, void *dst, int size, const fn_layout_planes *g,
                         int64_t task0, int64_t task1, int vector)
{
#if FN_LAYOUT_VECTOR
#define FN_LAYOUT_PICK(suf) (vector ? fn_transpose_##suf##_vector : fn_transpose_##suf##_plain)
#else
#define FN_LAYOUT_PICK(suf) ((void)vector, fn_transpose_##suf##_plain)
#endif
    if (size == 2)
        FN_LAYOUT_PICK(u16)((const uint16_t *)src, (uint16_t *)dst, g, task0, task1);
    else if (size == 4)
        FN_LAYOUT_PICK(u32)((const uint32_t *)src, (uint32_t *)dst, g, task0, task1);
    else
        FN_LAYOUT_PICK(u64)((const uint64_t *)src, (uint64_t *)dst, g, task0, task1);
#undef FN_LAYOUT_PICK
}

#endif
