"""Where large results live: a cache of freed buffers (fn_pool.h) that fastnorm allocates
its results of at least 8 MiB from, through NumPy's memory-handler API (the arrays are
ordinary NumPy arrays; only where their memory comes from differs), and the rule for when
kernels write results with non-temporal stores (fn_stream.h).  fastnorm._config holds
the settings: pool_bytes() (``FASTNORM_POOL_BYTES``), stream_min_bytes()
(``FASTNORM_STREAM_MIN_BYTES``).
"""
cimport numpy as cnp
from libc.stdint cimport uint64_t, uintptr_t

cnp.import_array()

cdef extern from *:
    """
    #include "fn_pool.h"
    static PyDataMem_Handler fn_pool_handler = {
        "fastnorm_pool", 1,
        {NULL, fn_pool_malloc, fn_pool_calloc, fn_pool_realloc, fn_pool_free}
    };
    static PyObject *fn_pool_new_capsule(void)
    {
        return PyCapsule_New(&fn_pool_handler, "mem_handler", NULL);
    }
    """
    int FN_POOL_AVAILABLE
    unsigned fn_pool_phase
    int fn_pool_last_fresh
    object fn_pool_new_capsule()
    void fn_pool_init()
    void fn_pool_set_limit(size_t limit) nogil
    void fn_pool_stats(size_t *cached, size_t *limit, uint64_t *hits, uint64_t *misses) nogil

cdef extern from "numpy/arrayobject.h":
    object PyDataMem_SetHandler(object handler)

fn_pool_init()
cdef object _handler = fn_pool_new_capsule()
# From 8 MiB: glibc's malloc returned 25 MiB results as fresh pages too (layer norm
# 8192x768: 1.93 ms with a fresh result, 1.40 ms into a reused one); blocks are whole 2 MiB
# granules, so at most a fifth of a cached block goes unused.
cdef Py_ssize_t _min_bytes = 8 << 20
#: The default of set_min_bytes: results from this size on come from the cache.
MIN_BYTES = _min_bytes
cdef size_t _limit = 0
cdef Py_ssize_t _stream_min_bytes = 0x7fffffffffffffff  # set by fastnorm._config at import

#: Whether this build caches (not on Windows).
AVAILABLE = bool(FN_POOL_AVAILABLE)


cdef bint pooled(Py_ssize_t nbytes) noexcept:
    """An output of nbytes comes from the cache (and so is not fresh from the kernel)."""
    return _limit > 0 and nbytes >= _min_bytes


cdef bint streams(Py_ssize_t out_bytes, Py_ssize_t moved_bytes, bint callers_out) noexcept:
    """Whether a call that reads and writes moved_bytes in all writes its result of out_bytes
    with non-temporal stores: from stream_min_bytes() of traffic on, into a caller's buffer
    or a block that came from the cache -- not into memory fresh from the kernel (a cache
    miss, or the cache off), whose pages were just zeroed and sit in the cache, where plain
    stores are cheaper (layer norm 8192x768 float32, 1 thread, cold caches: into out= 2.04 ->
    1.40 ms streamed, into a fresh result 1.93 -> 2.21 ms).  Call it right after allocating
    the result: fn_pool_last_fresh describes this thread's last block."""
    return moved_bytes >= _stream_min_bytes and (callers_out or (pooled(out_bytes) and not fn_pool_last_fresh))


cdef inline unsigned _phase(uintptr_t address, Py_ssize_t itemsize) noexcept:
    """address's offset from a 64-byte line, rounded down to whole items (an input that is
    not itself aligned must not make its result misaligned)."""
    cdef unsigned phase = <unsigned>(address % 64)
    return phase - phase % <unsigned>itemsize if itemsize > 0 else 0


cdef object _enter(unsigned phase):
    """Route this thread's next NumPy allocation to the cache, its data `phase` bytes past a
    line; returns the handler to give back to _leave (in a finally: both must be undone)."""
    global fn_pool_phase
    previous = PyDataMem_SetHandler(_handler)
    fn_pool_phase = phase
    return previous


cdef int _leave(object previous) except -1:
    global fn_pool_phase
    fn_pool_phase = 0
    PyDataMem_SetHandler(previous)
    return 0


cdef object pooled_empty(int nd, cnp.npy_intp *dims, int typenum, const void *like):
    """PyArray_EMPTY(nd, dims, typenum, 0), from the cache when the size qualifies, its data
    at the same offset from a cache line as `like` (an input of the call, or NULL)."""
    cdef Py_ssize_t itemsize = cnp.PyDataType_ELSIZE(cnp.PyArray_DescrFromType(typenum))
    cdef cnp.npy_intp nbytes = cnp.PyArray_MultiplyList(dims, nd) * itemsize
    if not pooled(nbytes):
        return cnp.PyArray_EMPTY(nd, dims, typenum, 0)
    previous = _enter(_phase(<uintptr_t>like, itemsize))
    try:
        return cnp.PyArray_EMPTY(nd, dims, typenum, 0)
    finally:
        _leave(previous)


def empty(shape, dtype, order="C", like=None):
    """np.empty(shape, dtype, order), from the cache when the size qualifies; its data at the
    same offset from a cache line as the array `like`'s, if given."""
    import numpy as np
    dtype = np.dtype(dtype)
    n = dtype.itemsize
    for d in shape:
        n *= d
    if not pooled(n):
        return np.empty(shape, dtype, order)
    previous = _enter(0 if like is None else _phase(like.__array_interface__["data"][0], dtype.itemsize))
    try:
        return np.empty(shape, dtype, order)
    finally:
        _leave(previous)


def set_limit(Py_ssize_t nbytes):
    """Hold at most nbytes of freed buffers (0: none, and release what is held)."""
    global _limit
    _limit = max(nbytes, 0) if FN_POOL_AVAILABLE else 0
    fn_pool_set_limit(_limit)


def set_stream_min_bytes(Py_ssize_t nbytes):
    global _stream_min_bytes
    _stream_min_bytes = nbytes


def set_min_bytes(Py_ssize_t nbytes):
    global _min_bytes
    _min_bytes = nbytes


def stats():
    """{'cached': bytes held, 'limit': ..., 'min_bytes': ..., 'hits': ..., 'misses': ...}"""
    cdef size_t cached, limit
    cdef uint64_t hits, misses
    fn_pool_stats(&cached, &limit, &hits, &misses)
    return {"cached": cached, "limit": limit, "min_bytes": _min_bytes, "hits": hits, "misses": misses}
