"""What every kernel module's glue needs, inlined into each module that cimports it:
the check of a kernel-variant index, the thread count of a call, and the tests that let
a C-level fast path take an array as it is and write into a caller's out=."""
cimport numpy as cnp
from libc.stdint cimport intptr_t
from fastnorm._ext._pool cimport pooled_empty
from fastnorm._ext._runtime cimport num_threads


cdef inline int isa_level(int level, int count) except -1:
    """level, if it indexes one of the count kernel tables; else ValueError."""
    if not 0 <= level < count:
        raise ValueError(f"set_isa: level must be in [0, {count}), got {level}")
    return level


cdef inline int threads_for(Py_ssize_t n, Py_ssize_t grain) noexcept:
    """1 below the threading grain (n elements), else fastnorm's thread setting
    (fastnorm._config.get_num_threads(), as _runtime holds it)."""
    if n < grain:
        return 1
    return num_threads()


cdef inline bint plain(object a, int typenum):
    """a is exactly an ndarray of typenum, C-contiguous, aligned and in native byte order."""
    if type(a) is not cnp.ndarray:
        return False
    cdef cnp.ndarray arr = <cnp.ndarray>a
    return (cnp.PyArray_TYPE(arr) == typenum and cnp.PyArray_IS_C_CONTIGUOUS(arr)
            and cnp.PyArray_ISALIGNED(arr) and cnp.PyArray_ISNOTSWAPPED(arr))


cdef inline int plain_float(object a):
    """a's typenum if a is a plain (above) float32 or float64 array, else -1: the arrays
    the C-level fast paths take as they are."""
    if type(a) is not cnp.ndarray:
        return -1
    cdef int typenum = cnp.PyArray_TYPE(<cnp.ndarray>a)
    if (typenum == cnp.NPY_FLOAT32 or typenum == cnp.NPY_FLOAT64) and plain(a, typenum):
        return typenum
    return -1


cdef inline bint overlap(cnp.ndarray a, cnp.ndarray b):
    """Some byte of a is also a byte of b."""
    cdef intptr_t pa = <intptr_t>cnp.PyArray_DATA(a), pb = <intptr_t>cnp.PyArray_DATA(b)
    return pa < pb + cnp.PyArray_NBYTES(b) and pb < pa + cnp.PyArray_NBYTES(a)


cdef inline bint same_or_apart(cnp.ndarray a, cnp.ndarray b):
    """a and b start at the same byte (an in-place call) or share none: what an
    elementwise kernel may read from one while it writes the other."""
    return cnp.PyArray_DATA(a) == cnp.PyArray_DATA(b) or not overlap(a, b)


cdef inline bint same_shape(cnp.ndarray a, cnp.ndarray b):
    cdef int d
    if cnp.PyArray_NDIM(a) != cnp.PyArray_NDIM(b):
        return False
    for d in range(cnp.PyArray_NDIM(a)):
        if cnp.PyArray_DIMS(a)[d] != cnp.PyArray_DIMS(b)[d]:
            return False
    return True


cdef inline object output_for(cnp.ndarray x, object out, const void *like2=NULL,
                              bint apart=False):
    """Where a fast path writes its result of x's shape and type: a new array when out is
    None (_pool.pyx's pooled_empty for a result of x and like2, the call's other input or
    NULL: from fastnorm's cache of large buffers when x is large, at x's offset within a
    page, not just after like2 modulo 4 KiB, or with apart a quarter page after it; else
    NumPy's), out itself when the kernel can
    write it directly (plain, x's type and shape, writeable, x itself or disjoint from it),
    else None (the general path validates and copies)."""
    if out is None:
        return pooled_empty(cnp.PyArray_NDIM(x), cnp.PyArray_DIMS(x), cnp.PyArray_TYPE(x),
                            cnp.PyArray_DATA(x), like2, apart)
    if not plain(out, cnp.PyArray_TYPE(x)):
        return None
    cdef cnp.ndarray o = <cnp.ndarray>out
    if not (cnp.PyArray_ISWRITEABLE(o) and same_shape(x, o) and same_or_apart(x, o)):
        return None
    return o
