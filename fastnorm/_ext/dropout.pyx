"""Cython glue of the dropout kernels (C loops in fn_dropout_impl.h, Philox in fn_philox.h).

forward / backward take arguments validated and C-order flat from fastnorm.dropout;
forward_fast / backward_fast take its plain arrays as they are and check them here.  This
module picks the ISA variant, decides whether a result streams, splits the work
over OpenMP threads and releases the GIL on calls that use them.
"""
from libc.stdint cimport int32_t, int64_t, uint8_t, uint64_t
from cython.parallel cimport prange
from cython cimport floating
from fastnorm._ext._shared cimport isa_level, threads_for, plain, plain_float, output_for
from fastnorm._ext._pool cimport streams
cimport numpy as cnp

cnp.import_array()

cdef extern from "fn_dropout.h" nogil:
    ctypedef struct fn_dropout_kernels:
        void (*forward_f32)(const float *, float *, uint8_t *, int64_t, int64_t,
                            uint64_t, uint64_t, uint64_t, int32_t, double, int, int) noexcept nogil
        void (*forward_f64)(const double *, double *, uint8_t *, int64_t, int64_t,
                            uint64_t, uint64_t, uint64_t, int32_t, double, int, int) noexcept nogil
        void (*backward_f32)(const float *, const uint8_t *, float *, int64_t, double, int) noexcept nogil
        void (*backward_f64)(const double *, const uint8_t *, double *, int64_t, double, int) noexcept nogil
    const fn_dropout_kernels *fn_dropout_kernels_by_isa[]
    int FN_ISA_COUNT
    int fn_cpu_halves_256bit()
    int fn_cpu_bmi2()
    int fn_cpu_isa()
    enum: FN_ISA_AVX2

cdef const fn_dropout_kernels *_kernels = fn_dropout_kernels_by_isa[0]
# The AVX2 variant's generator mix (fn_philox.h): its split group where 256-bit instructions
# run as two halves.  The same stream either way; set_split_group chooses for the tests.
cdef int _split_group = fn_cpu_halves_256bit()


def set_isa(int level):
    """Route every call to kernel variant `level` (an index of _runtime.ISA_NAMES)."""
    global _kernels
    _kernels = fn_dropout_kernels_by_isa[isa_level(level, FN_ISA_COUNT)]


def split_group():
    """Whether the AVX2 variant generates its Philox blocks by the split group (one vector
    of four blocks and four scalar blocks) rather than two vectors of four."""
    return bool(_split_group)


def set_split_group(value=None):
    """Choose the AVX2 variant's Philox group: True for the split one, False for the vector
    one, None for this CPU's default (split where 256-bit instructions run as two 128-bit
    halves).  The stream is the same; this is for tests and measurements.  The split group
    uses BMI2: ValueError for True on a CPU that runs the AVX2 variant without it."""
    global _split_group
    if value and fn_cpu_isa() >= FN_ISA_AVX2 and not fn_cpu_bmi2():
        raise ValueError("set_split_group: the split Philox group needs a CPU with BMI2, "
                         "and this one runs the AVX2 variant without it")
    _split_group = fn_cpu_halves_256bit() if value is None else bool(value)


cdef inline Py_ssize_t _chunk(Py_ssize_t n, int nthreads) noexcept nogil:
    # Multiples of 64 elements: whole Philox blocks (16), whole mask bytes (8) and whole
    # cache lines of floats, so no two threads write one mask byte or one line.
    return (((n + nthreads - 1) // nthreads) + 63) & ~(<Py_ssize_t>63)


cdef inline void _forward_part(const floating *x, floating *y, uint8_t *mask, Py_ssize_t n,
                               Py_ssize_t start, uint64_t key_lo, uint64_t key_hi,
                               uint64_t offset, int32_t threshold, double scale, int stream) noexcept nogil:
    if floating is float:
        _kernels.forward_f32(x + start, y + start, mask + start // 8, n, start, key_lo, key_hi, offset,
                 threshold, scale, stream, _split_group)
    else:
        _kernels.forward_f64(x + start, y + start, mask + start // 8, n, start, key_lo, key_hi, offset,
                 threshold, scale, stream, _split_group)


cdef inline void _backward_part(const floating *g, const uint8_t *mask, floating *gx,
                                Py_ssize_t n, Py_ssize_t start, double scale, int stream) noexcept nogil:
    if floating is float:
        _kernels.backward_f32(g + start, mask + start // 8, gx + start, n, scale, stream)
    else:
        _kernels.backward_f64(g + start, mask + start // 8, gx + start, n, scale, stream)


cdef void _forward_all(const floating *x, floating *y, uint8_t *mask, Py_ssize_t n,
                       uint64_t key_lo, uint64_t key_hi, uint64_t offset, int32_t threshold,
                       double scale, int nthreads, int stream) noexcept nogil:
    cdef Py_ssize_t c, start, chunk
    if nthreads <= 1:
        _forward_part(x, y, mask, n, 0, key_lo, key_hi, offset, threshold, scale, stream)
        return
    chunk = _chunk(n, nthreads)
    for c in prange(nthreads, num_threads=nthreads, schedule="static"):
        start = c * chunk
        if start < n:
            _forward_part(x, y, mask, min(chunk, n - start), start, key_lo, key_hi, offset,
                          threshold, scale, stream)


cdef void _backward_all(const floating *g, const uint8_t *mask, floating *gx, Py_ssize_t n,
                        double scale, int nthreads, int stream) noexcept nogil:
    cdef Py_ssize_t c, start, chunk
    if nthreads <= 1:
        _backward_part(g, mask, gx, n, 0, scale, stream)
        return
    chunk = _chunk(n, nthreads)
    for c in prange(nthreads, num_threads=nthreads, schedule="static"):
        start = c * chunk
        if start < n:
            _backward_part(g, mask, gx, min(chunk, n - start), start, scale, stream)


cdef inline int _streams_into(object out, const void *result, Py_ssize_t nbytes,
                              bint from_config_empty) noexcept:
    """Whether a general-path result of nbytes at `result` streams: it is the buffer of the
    caller's `out`, or from_config_empty says that it was allocated by _config.empty just
    before this call, so that the pool's state describes it (then the pool decides)."""
    cdef bint callers_out = isinstance(out, cnp.ndarray) and cnp.PyArray_DATA(<cnp.ndarray>out) == result
    return (callers_out or from_config_empty) and streams(nbytes, 2 * nbytes, callers_out)


cdef inline int _check_threshold(int32_t threshold) except -1:
    if not 0 <= threshold <= 65536:
        raise ValueError(f"forward: threshold must be in [0, 65536], got {threshold}")
    return 0


def forward(const floating[::1] x, floating[::1] y, uint8_t[::1] mask, uint64_t key_lo,
            uint64_t key_hi, uint64_t offset, int32_t threshold, double scale, int nthreads,
            object out=None, bint y_from_config_empty=False):
    """y = x * (keep ? scale : 0) and the packed keep bits.

    IN x: (n,) C-order flat input; OUT y: (n,), may be x's buffer; OUT mask:
    (ceil(n / 8),) uint8.  key_lo/key_hi: Philox key words; offset: Philox counter
    the stream starts from; threshold in [0, 65536]: keep iff 16-bit field >= threshold.
    Large results are written with streaming stores where _pool.streams allows: y is the
    buffer of `out` (the caller's output array), or y_from_config_empty says that y was
    allocated by _config.empty just before this call, so that the pool's state describes it
    (then the pool decides), not by np.empty (float16's float32 intermediate).
    """
    cdef Py_ssize_t n = x.shape[0]
    cdef int stream
    if y.shape[0] != n or mask.shape[0] != (n + 7) // 8:
        raise ValueError("forward: x, y and mask lengths do not match")
    _check_threshold(threshold)
    if n == 0:
        return
    stream = _streams_into(out, &y[0], n * <Py_ssize_t>sizeof(floating), y_from_config_empty)
    with nogil:
        _forward_all(&x[0], &y[0], &mask[0], n, key_lo, key_hi, offset, threshold, scale,
                     nthreads, stream)


def backward(const floating[::1] g, const uint8_t[::1] mask, floating[::1] gx, double scale,
             int nthreads, object out=None, bint gx_from_config_empty=False):
    """gx = g * (bit ? scale : 0).  IN g: (n,); IN mask: (ceil(n / 8),) packed keep bits;
    OUT gx: (n,), may be g's buffer.  Streams as forward (out, gx_from_config_empty)."""
    cdef Py_ssize_t n = g.shape[0]
    cdef int stream
    if gx.shape[0] != n or mask.shape[0] != (n + 7) // 8:
        raise ValueError("backward: g, gx and mask lengths do not match")
    if n == 0:
        return
    stream = _streams_into(out, &gx[0], n * <Py_ssize_t>sizeof(floating), gx_from_config_empty)
    with nogil:
        _backward_all(&g[0], &mask[0], &gx[0], n, scale, nthreads, stream)


# ---------------------------------------------------------------------------- fast path
# The common call -- an aligned, C-contiguous, native float32/float64 array and no or a
# matching out= -- runs here without memoryviews (whose fused-type dispatch alone took
# about 1 us of a (32, 128) call).  Anything else returns None and takes the general path
# in fastnorm.dropout, which also produces every error message.

def forward_fast(object x, object out, uint64_t key_lo, uint64_t key_hi, uint64_t offset,
                 int32_t threshold, double scale, Py_ssize_t grain):
    """(y, packed) as forward for a plain array x (and out=), packed a new read-only uint8
    array of ceil(x.size / 8) bytes; None when the general path is needed."""
    _check_threshold(threshold)
    cdef int typenum = plain_float(x)
    if typenum < 0:
        return None
    cdef cnp.ndarray xa = <cnp.ndarray>x
    y = output_for(xa, out, NULL, True)  # a quarter page after x, as the activations' forwards
    if y is None:
        return None
    cdef cnp.ndarray ya = <cnp.ndarray>y
    cdef Py_ssize_t n = cnp.PyArray_SIZE(xa)
    cdef cnp.npy_intp mask_bytes = (n + 7) // 8
    cdef cnp.ndarray packed = cnp.PyArray_EMPTY(1, &mask_bytes, cnp.NPY_UINT8, 0)
    cnp.PyArray_CLEARFLAGS(packed, cnp.NPY_ARRAY_WRITEABLE)  # the mask's bits are read-only
    cdef Py_ssize_t nbytes = n * cnp.PyArray_ITEMSIZE(xa)
    cdef int stream = streams(nbytes, 2 * nbytes, out is not None)
    cdef int nthreads = threads_for(n, grain)
    cdef void *xp = cnp.PyArray_DATA(xa)
    cdef void *yp = cnp.PyArray_DATA(ya)
    cdef uint8_t *mp = <uint8_t *>cnp.PyArray_DATA(packed)
    if n == 0:
        return y, packed
    # Below the threading grain the call keeps the GIL (releasing and retaking it costs more
    # than it could give back on one thread).
    if n < grain:
        _forward_typed(typenum, xp, yp, mp, n, key_lo, key_hi, offset, threshold, scale, 1, stream)
    else:
        with nogil:
            _forward_typed(typenum, xp, yp, mp, n, key_lo, key_hi, offset, threshold, scale,
                           nthreads, stream)
    return y, packed


cdef inline void _forward_typed(int typenum, const void *x, void *y, uint8_t *mask, Py_ssize_t n,
                                uint64_t key_lo, uint64_t key_hi, uint64_t offset,
                                int32_t threshold, double scale, int nthreads,
                                int stream) noexcept nogil:
    if typenum == cnp.NPY_FLOAT32:
        _forward_all[float](<const float *>x, <float *>y, mask, n, key_lo, key_hi, offset,
                            threshold, scale, nthreads, stream)
    else:
        _forward_all[double](<const double *>x, <double *>y, mask, n, key_lo, key_hi, offset,
                             threshold, scale, nthreads, stream)


def backward_fast(object g, object packed, object out, double scale, Py_ssize_t grain):
    """gx as backward for a plain array g (and out=) and packed, the C-contiguous uint8 keep
    bits of g.size elements; None when the general path is needed."""
    cdef int typenum = plain_float(g)
    if typenum < 0 or not plain(packed, cnp.NPY_UINT8):
        return None
    cdef cnp.ndarray ga = <cnp.ndarray>g, pa = <cnp.ndarray>packed
    cdef Py_ssize_t n = cnp.PyArray_SIZE(ga)
    if cnp.PyArray_SIZE(pa) != (n + 7) // 8:
        return None
    gx = output_for(ga, out)
    if gx is None:
        return None
    cdef cnp.ndarray gxa = <cnp.ndarray>gx
    cdef Py_ssize_t nbytes = n * cnp.PyArray_ITEMSIZE(ga)
    cdef int stream = streams(nbytes, 2 * nbytes, out is not None)
    cdef int nthreads = threads_for(n, grain)
    cdef const void *gp = cnp.PyArray_DATA(ga)
    cdef void *gxp = cnp.PyArray_DATA(gxa)
    cdef const uint8_t *mp = <const uint8_t *>cnp.PyArray_DATA(pa)
    if n == 0:
        return gx
    if n < grain:
        _backward_typed(typenum, gp, mp, gxp, n, scale, 1, stream)
    else:
        with nogil:
            _backward_typed(typenum, gp, mp, gxp, n, scale, nthreads, stream)
    return gx


cdef inline void _backward_typed(int typenum, const void *g, const uint8_t *mask, void *gx,
                                 Py_ssize_t n, double scale, int nthreads, int stream) noexcept nogil:
    if typenum == cnp.NPY_FLOAT32:
        _backward_all[float](<const float *>g, mask, <float *>gx, n, scale, nthreads, stream)
    else:
        _backward_all[double](<const double *>g, mask, <double *>gx, n, scale, nthreads, stream)
