"""Where large results live: a cache of freed buffers (fn_pool.h) that fastnorm allocates
its results of at least 1 MiB from, through NumPy's memory-handler API (the arrays are
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
    unsigned fn_pool_page_offset
    int fn_pool_last_fresh
    object fn_pool_new_capsule()
    void fn_pool_init()
    void fn_pool_set_limit(size_t limit) nogil
    void fn_pool_stats(size_t *cached, size_t *limit, uint64_t *hits, uint64_t *misses) nogil

cdef extern from "numpy/arrayobject.h":
    object PyDataMem_SetHandler(object handler)

fn_pool_init()
cdef object _handler = fn_pool_new_capsule()
# From 1 MiB (8 MiB until 2026-12-05): glibc's malloc returned 25 MiB results as fresh pages
# (layer norm 8192x768: 1.93 ms with a fresh result, 1.40 ms into a reused one), and in a
# loop that allocates and frees a few buffers of 1-8 MiB per step it trims the top of its
# heap and page-faults them afresh, or not, depending on the sizes the process freed
# before: a (512, 768) float32 step of copy, layer norm, its backward and SiLU (Zen 4,
# 1 thread, default malloc settings) took 590 + 543 + 667 + 602 us with results from
# malloc and 40 + 70 + 141 + 118 us from the cache (NumPy's copy among them: it no longer
# shared a churning heap).  Below 1 MiB the handler's cost (about 0.3 us a result, two
# switches of NumPy's handler) is a larger share of a call and the trap was not seen
# (256-512 KiB results level); fn_pool.h sizes blocks below 8 MiB in 64 KiB units, so at
# most about a sixteenth of such a block goes unused (a fifth above, in 2 MiB granules).
cdef Py_ssize_t _min_bytes = 1 << 20
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


# A result that starts 1-255 bytes after an input of its call, modulo 4 KiB, has each store
# of the kernel's loop land where the CPU's memory disambiguation (which compares addresses'
# low 12 bits) takes one of the next loads for its reader: the load waits.  Measured on Zen 3
# (AVX2, 1 thread) with (256, 1024) float32 inputs in cache, the result 16, 32 or 48 bytes
# after the input against 0, 64, ..., 2048 or 16 bytes before: elu 1.11-1.13x, sigmoid
# 1.10-1.12x, tanh 1.10x, silu 1.09x, elu_backward 1.11x slower (relu, bound by the cache,
# level).  It is what malloc hands out when a result's block follows its input's (16 bytes
# of its header apart: 16, 32, 48, ... for a run of arrays of one size).  The window covers
# the 64-byte vectors and unrolled loops of the AVX-512 kernels too (Zen 4, AVX-512, (256,
# 1024) float32 through out=, the result 16 / 48 / 64 bytes after x: relu 0.86x / 0.63x /
# 0.74x, elu 0.68x at 48, sigmoid 0.83x, relu_backward 0.79x; the staged maps now lose
# less there, fn_activations_impl.h).
#   Only the cache's results are placed (_placement): they cost nothing to put anywhere in
# their block.  Results the cache does not serve (smaller ones, or any with the cache off)
# stay where NumPy's malloc puts them.  Placing those too (a result from 64 KiB on that
# landed in the window was allocated again through the handler, 2026-12-02 to 12-03) made
# malloc hand out fresh pages call after call wherever results stay alive for a while: the
# handler's posix_memalign blocks of 1 MiB came from mmap, and freeing the misplaced block
# first let glibc trim the heap.  Zen 3, 1 thread, default
# malloc settings (not the benchmark's), (256, 1024) float32, the last result or the last
# three kept: silu_backward 463 / 629 us and 129 / 189 page faults per call against 164 /
# 184 us and 0 / 9 unplaced, sigmoid 324 against 148 us with three kept; (1024, 1024)
# silu_backward 1.38-1.78 against 0.64-0.70 ms (its 4 MiB blocks got huge pages, zeroed
# anew each call).  The placement had gained 1.01-1.08x where malloc put a result in the
# window (tests/test_pool.py checks that such results are malloc's blocks).
#   Since 2026-12-04 the single-loop activations, dropout's backward and the channels-first
# output and gradient passes of layer, batch, group and instance norm turn downwards where
# their output trails an input by 1-511 bytes (fn_trails, fn_stream.h), which removes the
# stall for them wherever the output lies (a caller's out=, malloc's blocks); this placement
# still keeps the cache's results clear for the other kernels (the staged maps, the
# channels-last passes), with the window measured for it.
cdef uintptr_t _ALIAS_WINDOW = 256


cdef inline unsigned _page_offset(uintptr_t address, Py_ssize_t itemsize) noexcept:
    """address's offset within a 4 KiB page, rounded down to whole items (an input that is
    not itself aligned must not make its result misaligned)."""
    cdef unsigned offset = <unsigned>(address % 4096)
    return offset - offset % <unsigned>itemsize if itemsize > 0 else 0


cdef inline bint _trails(uintptr_t result, uintptr_t source) noexcept:
    """A result at `result` starts within the alias window after an input at `source`."""
    cdef uintptr_t distance = (result - source) % 4096
    return 0 < distance < _ALIAS_WINDOW


cdef inline bint _clear_of(unsigned offset, uintptr_t source, Py_ssize_t itemsize) noexcept:
    """offset lies at least the alias window away from source's page offset, either way."""
    cdef unsigned distance = (offset - _page_offset(source, itemsize)) % 4096
    return _ALIAS_WINDOW <= distance <= 4096 - _ALIAS_WINDOW


cdef unsigned _placement(uintptr_t like, uintptr_t like2, Py_ssize_t itemsize,
                         bint apart) noexcept:
    """The page offset for a result of inputs at like and like2 (0: none): like's own,
    unless that trails like2, then like2's (which then is before like's, outside the window).
    With apart, a quarter page after like's, or three quarters where a quarter is not clear
    of like2's (like2 blocks less than a quarter page, so one of the two is): for passes that
    visit four rows of a whole number of pages side by side in each of their arrays, where
    arrays at one offset put all their rows' lines in one L1 set (see normalization.pyx,
    _whole_page_rows), and for the single-input elementwise forwards (activations.pyx,
    dropout.pyx)."""
    cdef unsigned offset = _page_offset(like, itemsize)
    if apart:
        if like2 == 0 or _clear_of((offset + 1024) % 4096, like2, itemsize):
            return (offset + 1024) % 4096
        return (offset + 3072) % 4096
    if like2 != 0 and _trails(offset, like2):
        offset = _page_offset(like2, itemsize)
    return offset


cdef object _enter(unsigned page_offset):
    """Route this thread's next NumPy allocation to the handler and its cache, its data
    `page_offset` bytes into a 4 KiB page; returns the handler to give back to _leave (in a
    finally: both must be undone)."""
    global fn_pool_page_offset
    previous = PyDataMem_SetHandler(_handler)
    fn_pool_page_offset = page_offset
    return previous


cdef int _leave(object previous) except -1:
    global fn_pool_page_offset
    fn_pool_page_offset = 0
    PyDataMem_SetHandler(previous)
    return 0


cdef object pooled_empty(int nd, cnp.npy_intp *dims, int typenum, const void *like,
                         const void *like2=NULL, bint apart=False):
    """PyArray_EMPTY(nd, dims, typenum, 0) for a result computed from the inputs at like and
    like2 (NULL: none): from the cache when the size qualifies, at like's offset within a
    page, or apart from the inputs (_placement); else from NumPy."""
    cdef Py_ssize_t itemsize = cnp.PyDataType_ELSIZE(cnp.PyArray_DescrFromType(typenum))
    cdef cnp.npy_intp nbytes = cnp.PyArray_MultiplyList(dims, nd) * itemsize
    if not pooled(nbytes):
        return cnp.PyArray_EMPTY(nd, dims, typenum, 0)
    previous = _enter(_placement(<uintptr_t>like, <uintptr_t>like2, itemsize, apart))
    try:
        return cnp.PyArray_EMPTY(nd, dims, typenum, 0)
    finally:
        _leave(previous)


cdef inline uintptr_t _address(object array):
    return 0 if array is None else <uintptr_t>array.__array_interface__["data"][0]


def empty(shape, dtype, order="C", like=None, like2=None):
    """np.empty(shape, dtype, order) for a result computed from the arrays like and like2
    (or None), placed as pooled_empty places it."""
    import numpy as np
    dtype = np.dtype(dtype)
    cdef Py_ssize_t n = dtype.itemsize
    for d in shape:
        n *= d
    if not pooled(n):
        return np.empty(shape, dtype, order)
    previous = _enter(_placement(_address(like), _address(like2), dtype.itemsize, False))
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
