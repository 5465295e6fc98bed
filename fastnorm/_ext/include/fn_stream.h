/* Non-temporal ("streaming") stores for results that do not fit in the caches.
 *
 * A plain store to a line that is not cached first reads the line from memory (read for
 * ownership), so a kernel that reads one large array and writes another moves three
 * arrays' worth of bytes, not two.  A non-temporal store writes the line without reading
 * it.  Measured on the development machine (AMD EPYC, 32 MiB L3, 1 thread, the library's
 * relu kernel on 4096 x 4096 float32 called through ctypes): 2.83 ms with plain stores,
 * 2.38 ms streamed, where np.copyto of the array takes about 2.9 ms.  Below about 32 MiB
 * of reads plus writes streaming loses (C loop, 1M floats: 0.057 -> 0.095 ms): a plain
 * store leaves the result in the cache for whoever reads it next.  So the Cython glue asks
 * for streaming only from fastnorm._config.stream_min_bytes() of traffic, and only into a
 * caller's buffer or a reused block of the result cache (_pool.pyx, streams()).
 *
 * Kernels keep their ordinary vector loops and stream by chunks: FN_STREAM_BYTES of
 * results are computed into an aligned stack buffer by the same loop code, with a
 * constant trip count, then copied out with non-temporal stores; where that chunk loop
 * sits inside one operation's code, gcc keeps the chunk in registers and the buffer
 * disappears (relu: 2.38 ms; a C loop storing straight from registers: 2.32-2.38 ms;
 * the chunk loop around a switch over operations, where the buffer stays: 2.54 ms).
 * Chunks of 256 and 512 bytes measured alike, 1024 and 2048 slower (2.54).  Elements
 * before the output's first 64-byte boundary take the plain path; so do those after the
 * last whole chunk, except that in FN_MAP_STREAMED the whole lines there stream one by one
 * when they are at least a sixteenth of the run (see there).
 *
 * Included from the kernel templates after fn_instantiate.h's target pragma (or clang's
 * target attribute), so the copy uses the widest stores of the variant being compiled; one
 * definition per translation unit (the include guard), as every unit is compiled for one ISA.
 */
#ifndef FN_STREAM_H
#define FN_STREAM_H
#include <stdint.h>
#include <string.h>
#include "fn_common.h"

#define FN_STREAM_BYTES 512   /* one chunk */
#define FN_STREAM_ALIGN 64

#if defined(__SSE2__)
#include <immintrin.h>
#define FN_CAN_STREAM 1

/* fn_stream_copy_f32 / _f64: n floats / doubles from src to dst, both 64-byte aligned, n a
 * multiple of 64 bytes.  Typed loads and stores (not a byte copy): gcc then keeps a short
 * chunk in registers and drops the buffer altogether (relu), which the byte copy prevented.
 * fn_chunk_copy_f32 / _f64: the same with plain stores (src aligned, dst anywhere, n a whole
 * number of vectors), for the staged maps' chunks that are not streamed
 * (fn_activations_impl.h, MAP_STAGES). */
#if FN_TARGET_AVX512
#define FN_STREAM_VEC(p) _mm512_##p
#define FN_VEC_BYTES 64
#elif FN_TARGET_AVX2
#define FN_STREAM_VEC(p) _mm256_##p
#define FN_VEC_BYTES 32
#else
#define FN_STREAM_VEC(p) _mm_##p
#define FN_VEC_BYTES 16
#endif
#define FN_DEFINE_COPY(name, store, suffix, T, ps)                                      \
    static inline void name##_##suffix(T *dst, const T *src, int64_t n)                 \
    {                                                                                   \
        for (int64_t i = 0; i < n; i += FN_VEC_BYTES / (int64_t)sizeof(T))              \
            FN_STREAM_VEC(store##_##ps)(dst + i, FN_STREAM_VEC(load_##ps)(src + i));    \
    }

/* Orders the streamed stores before whatever follows (another thread, or Python, reads
 * the output next): non-temporal stores are weakly ordered. */
static inline void fn_stream_fence(void) { _mm_sfence(); }

#else
#define FN_CAN_STREAM 0
#define FN_VEC_BYTES 16   /* what the compiler's vectorizer is assumed to use */
#define FN_DEFINE_COPY(name, store, suffix, T, ps)                                      \
    static inline void name##_##suffix(T *dst, const T *src, int64_t n)                 \
    {                                                                                   \
        memcpy(dst, src, (size_t)n * sizeof(T));                                        \
    }
static inline void fn_stream_fence(void) {}
#endif
FN_DEFINE_COPY(fn_stream_copy, stream, f32, float, ps)
FN_DEFINE_COPY(fn_stream_copy, stream, f64, double, pd)
FN_DEFINE_COPY(fn_chunk_copy, storeu, f32, float, ps)
FN_DEFINE_COPY(fn_chunk_copy, storeu, f64, double, pd)

/* A streamed chunk of n elements from p asks for the input lines FN_STREAM_AHEAD bytes
 * further on, into L2 (a hint: no fault past the array's end).  With non-temporal stores
 * nothing but the hardware prefetcher brings the input in ahead of the loads, and on AMD Zen 1
 * (2 vCPUs, 1 thread, 4096 x 4096) it fell behind: a C loop copying with streamed stores
 * (huge pages) took 8.3-9.0 ms where memcpy took 7.0-7.3 and the same loop with this
 * prefetch 7.1-7.6 (2-16 KiB ahead alike).  Through the API, the build without it in
 * processes alternated: relu forward float32 8.3-9.7 -> 7.0-7.1 ms, float64 16.4-18.0 -> 13.7-14.4, relu backward
 * float32 13.2-17.4 -> 10.6-10.9, float64 30.3-33.7 -> 20.7-22.4 (2 threads 21.6-23.3 ->
 * 16.1-16.6; np.copyto 6.5-7.8 / 12.6-13.1).  The other backward maps did not gain: asking
 * for both inputs' lines was slower than for one, and for g alone leaky_relu's and sigmoid's
 * backward measured level and tanh's float64 backward (its chunks are single lines) slower
 * (20.4-23.2 -> 23.7-25.6 ms), so only relu's backward asks (fn_activations_impl.h). */
#define FN_STREAM_AHEAD 8192
#define FN_STREAM_PREFETCH(p, n) fn_prefetch_lines_l2((const char *)(p) + FN_STREAM_AHEAD, (n) * (int64_t)sizeof(*(p)))

/* Whether out starts 1 to FN_TRAIL_BYTES - 1 bytes after in, modulo 4 KiB.  The CPU checks
 * a load against the stores still in flight by the low 12 bits of their addresses, so in a
 * loop running upwards such an output's stores hold up the loads of the input that follow
 * them by that many bytes (4K aliasing), though the two arrays never meet.  A loop running
 * downwards reads those addresses before it writes the aliasing ones.  C harness, AMD Zen 4,
 * relu over 1 MiB of float32 (x 16 bytes past a page), upwards against downwards by one
 * vector at a time, the output every 16 bytes from 2 KiB before x to 2 KiB after, modulo
 * 4 KiB: 1.09-1.59x faster downwards where the output trails by 48-368 bytes, 0.64-0.92x
 * where it leads by as much (the mirror image), within 0.9-1.1x elsewhere (noise of this
 * host, both ways). */
#define FN_TRAIL_BYTES 512
static inline int fn_trails(const void *out, const void *in)
{
    const uintptr_t d = ((uintptr_t)out - (uintptr_t)in) % 4096;
    return d != 0 && d < FN_TRAIL_BYTES;
}

/* Whether an output of two inputs runs downwards: it trails one of them and leads neither
 * (downwards, an output that leads an input by as much stalls on that one instead). */
static inline int fn_trails_one_of(const void *out, const void *a, const void *b)
{
    return (fn_trails(out, a) || fn_trails(out, b)) && !fn_trails(a, out) && !fn_trails(b, out);
}

/* How n elements of `size` bytes at out split for streaming: returns the number of elements
 * stored in whole chunks of `chunk` elements, from out's first 64-byte boundary on, and sets
 * *head to where they start; the elements before *head and after the chunks are stored
 * plainly.  0 (and *head = n) where nothing streams: stream unset, no streaming stores on
 * this target, out not aligned to its element size, or no whole chunk. */
static inline int64_t fn_stream_split(const void *out, int64_t n, size_t size, int64_t chunk,
                                      int stream, int64_t *head)
{
    const uintptr_t a = (uintptr_t)out;
    *head = n;
    if (!stream || !FN_CAN_STREAM || a % size != 0)
        return 0;
    const int64_t lead = (int64_t)(((FN_STREAM_ALIGN - a % FN_STREAM_ALIGN) % FN_STREAM_ALIGN) / size);
    const int64_t body = lead > n ? 0 : (n - lead) / chunk * chunk;
    if (body > 0)
        *head = lead;
    return body;
}

/* for (i = 0; i < n; ++i) out[i] = EXPR, EXPR written in terms of i; with `stream` set, the
 * output's whole 64-byte-aligned chunks are computed into a stack buffer by the same
 * expression and streamed, then the whole lines after them, one line at a time, when they
 * are at least a sixteenth of the run; the rest is stored plainly.  The lines matter for
 * short runs: a 3 KiB layer norm row 16 bytes off a line has 464 bytes after its last whole
 * chunk, and streaming them too made (8192, 768) float32 layer norm forward 1.36-1.51 ->
 * 0.89-1.14 ms (1 thread, kernel called through ctypes, interleaved with the previous
 * build; (4096, 1000): 0.85-0.93 -> 0.62-0.65 ms; float64 (8192, 768): 1.13-1.25x).  Where
 * they are a few per cent of the run, streaming them was slower ((2048, 4096) float32, 7
 * lines of 256: 0.86x; float64 (4096, 1000), 4 of 125: 0.96x), hence the sixteenth.
 * T: the element type, COPY: fn_stream_copy_f32 or _f64.  No fence: the kernel calls
 * fn_stream_fence() once before it returns (a fence per row or run waits for the stores in
 * flight each time: batch norm 2-D's 4096 runs of 12 KB took 5 % longer than with plain
 * stores). */
#define FN_STREAM_CHUNK(T) (FN_STREAM_BYTES / (int64_t)sizeof(T))
#define FN_STREAM_LINE(T) (FN_STREAM_ALIGN / (int64_t)sizeof(T))
/* Streams out[c] = EXPR (i = c) for c in [from, to), `piece` elements at a time: each piece
 * computed into an aligned buffer, then copied out.  out + from must be 64-byte aligned,
 * piece a whole number of 64-byte lines and to - from a multiple of piece (COPY's terms). */
#define FN_STREAM_PIECES(T, COPY, out, from, to, piece, i, EXPR)                               \
    for (int64_t fn_c = (from); fn_c < (to); fn_c += (piece)) {                                 \
        _Alignas(FN_STREAM_ALIGN) T fn_buf[piece];                                              \
        _Pragma("omp simd") for (int64_t fn_j = 0; fn_j < (piece); ++fn_j) {                    \
            const int64_t i = fn_c + fn_j;                                                      \
            fn_buf[fn_j] = (EXPR);                                                              \
        }                                                                                       \
        COPY((out) + fn_c, fn_buf, (piece));                                                    \
    }
#define FN_MAP_STREAMED(T, COPY, stream, out, n, i, EXPR)                                       \
    do {                                                                                        \
        const int64_t fn_n = (n);                                                               \
        int64_t fn_head;                                                                        \
        const int64_t fn_chunks = fn_stream_split((out), fn_n, sizeof(T), FN_STREAM_CHUNK(T),    \
                                                  (stream), &fn_head);                          \
        _Pragma("omp simd") for (int64_t i = 0; i < fn_head; ++i) (out)[i] = (EXPR);            \
        FN_STREAM_PIECES(T, COPY, out, fn_head, fn_head + fn_chunks, FN_STREAM_CHUNK(T), i, EXPR) \
        if (fn_chunks) {                                                                        \
            const int64_t fn_t = fn_head + fn_chunks;                                           \
            int64_t fn_lines = (fn_n - fn_t) / FN_STREAM_LINE(T) * FN_STREAM_LINE(T);             \
            if (fn_lines * 16 < fn_n)                                                           \
                fn_lines = 0;                                                                   \
            FN_STREAM_PIECES(T, COPY, out, fn_t, fn_t + fn_lines, FN_STREAM_LINE(T), i, EXPR)   \
            _Pragma("omp simd") for (int64_t i = fn_t + fn_lines; i < fn_n; ++i)                \
                (out)[i] = (EXPR);                                                              \
        }                                                                                       \
    } while (0)

#endif /* FN_STREAM_H */
