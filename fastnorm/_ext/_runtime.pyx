"""Process-wide facts the kernels need: OpenMP thread counts and the CPU's ISA variant;
and what every family's inputs may need before a kernel reads them: the float16 <-> float32
conversions (fn_half.h) and the copy of a Fortran-order array into C order (fn_layout.h).

Built without OpenMP, every query answers as a single-threaded runtime would.
"""
cimport numpy as cnp
from cython.parallel cimport prange
from libc.stdint cimport uint16_t, int64_t

cnp.import_array()

cdef extern from "fn_common.h" nogil:
    int fn_cpu_isa()
    int FN_HAVE_X86_VARIANTS
    int FN_ISA_COUNT

#: Kernel variants by their C number (FN_ISA_BASE, FN_ISA_AVX2, FN_ISA_AVX512).
ISA_NAMES = ("base", "avx2", "avx512")
assert len(ISA_NAMES) == FN_ISA_COUNT

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    static int fn_openmp_enabled(void) { return 1; }
    static int fn_omp_max_threads(void) { return omp_get_max_threads(); }
    static void fn_omp_set_num_threads(int n) { omp_set_num_threads(n); }
    #else
    static int fn_openmp_enabled(void) { return 0; }
    static int fn_omp_max_threads(void) { return 1; }
    static void fn_omp_set_num_threads(int n) { (void)n; }
    #endif
    """
    int fn_openmp_enabled() nogil
    int fn_omp_max_threads() nogil
    void fn_omp_set_num_threads(int n) nogil


def openmp_enabled():
    """True when the kernels were compiled with OpenMP."""
    return bool(fn_openmp_enabled())


def omp_max_threads():
    """omp_get_max_threads(): honours OMP_NUM_THREADS, threadpoolctl limits and the
    CPUs available to the process (libgomp counts the affinity mask)."""
    return fn_omp_max_threads()


def omp_set_num_threads(int n):
    fn_omp_set_num_threads(n)


# The count fastnorm._config.get_num_threads() resolves to, held here for the kernels' glue
# (_shared.pxd's threads_for), which asked _config in Python on every call at or above its
# threading grain (0.2 us, 8 % of a sigmoid of 8192 elements): a fixed count
# (set_num_threads, FASTNORM_NUM_THREADS, 1 in a forked child), or 0 for OpenMP's own, which
# threadpoolctl may change at any time and so is asked call by call.
cdef int _fixed_threads = 0


def fix_num_threads(int n):
    """Set by fastnorm._config whenever what get_num_threads() resolves to changes: n > 0
    threads, or 0 for omp_get_max_threads()."""
    global _fixed_threads
    if n < 0:
        raise ValueError(f"fix_num_threads: n must be >= 0, got {n}")
    _fixed_threads = n


cdef int num_threads() noexcept nogil:
    return _fixed_threads if _fixed_threads > 0 else fn_omp_max_threads()


def glue_num_threads():
    """The thread count the kernels' glue uses above its grain (for the tests: it must be
    what fastnorm.get_num_threads() says)."""
    return num_threads()


def best_isa():
    """The best kernel variant this CPU runs and this build has compiled."""
    return ISA_NAMES[fn_cpu_isa()] if FN_HAVE_X86_VARIANTS else "base"


cdef extern from "fn_half.h" nogil:
    int fn_cpu_has_f16c()
    void fn_half_to_float(const uint16_t *src, float *dst, int64_t n)
    int fn_float_to_half(const float *src, uint16_t *dst, int64_t n)
    int FN_HALF_OVERFLOW
    int FN_HALF_UNDERFLOW

#: float16 <-> float32 conversion by the CPU's F16C instructions is available (fn_half.h).
HALF_CONVERSION = bool(fn_cpu_has_f16c())


cdef int _conversion_checked(str func, Py_ssize_t n_src, Py_ssize_t n_dst) except -1:
    if n_src != n_dst:
        raise ValueError(f"{func}: src and dst differ in length")
    if not HALF_CONVERSION:
        raise RuntimeError(f"{func}: this CPU has no F16C conversion")
    return 0


def half_to_float(const uint16_t[::1] src, float[::1] dst):
    """dst = src as float32.  IN src: (n,) float16 data viewed as uint16; OUT dst: (n,)."""
    _conversion_checked("half_to_float", src.shape[0], dst.shape[0])
    if src.shape[0]:
        with nogil:
            fn_half_to_float(&src[0], &dst[0], src.shape[0])


def float_to_half(const float[::1] src, uint16_t[::1] dst):
    """dst = src rounded to float16 (nearest even).  IN src: (n,); OUT dst: (n,) float16 data
    viewed as uint16.  Returns (overflowed, underflowed): whether a finite value became
    infinite, or a value lost precision below float16's normal range."""
    cdef int raised = 0
    _conversion_checked("float_to_half", src.shape[0], dst.shape[0])
    if src.shape[0]:
        with nogil:
            raised = fn_float_to_half(&src[0], &dst[0], src.shape[0])
    return bool(raised & FN_HALF_OVERFLOW), bool(raised & FN_HALF_UNDERFLOW)


cdef extern from "fn_layout.h" nogil:
    int FN_LAYOUT_MAX_DIMS
    ctypedef struct fn_layout_planes:
        int64_t rows, cols, src_ld, dst_ld, planes
        int count
        int64_t dims[64]
        int64_t src_step[64]
        int64_t dst_step[64]
    int fn_layout_has_vector()
    int64_t fn_layout_tasks(const fn_layout_planes *g)
    void fn_transpose(const void *src, void *dst, int size, const fn_layout_planes *g,
                      int64_t task0, int64_t task1, int vector)

cdef extern from "numpy/arrayobject.h":
    bint PyDataType_REFCHK(cnp.PyArray_Descr *descr)
    bint PyArray_EquivTypes(cnp.PyArray_Descr *a, cnp.PyArray_Descr *b)

assert FN_LAYOUT_MAX_DIMS == 64
#: The copy into C order has its vector blocks in this build (fn_layout.h).
LAYOUT_VECTOR = bool(fn_layout_has_vector())


cdef int _plan(cnp.ndarray src, fn_layout_planes *g) noexcept:
    """g, the planes that copy src into C order (fn_layout.h): src's rows run along an axis of
    unit stride other than its last, its columns along its last, one plane per index of the
    other axes (those of length 1 left out).  0, or -1 where src has no such layout (no such
    axis, a stride that is not a positive multiple of the item size, an item size other than
    2, 4 or 8) or holds object references (the copy moves bits, no reference counts)."""
    cdef int nd = src.ndim, a, k = -1, n = -1, size = <int>src.itemsize
    cdef cnp.npy_intp *shape = cnp.PyArray_DIMS(src)
    cdef cnp.npy_intp *strides = cnp.PyArray_STRIDES(src)
    cdef int64_t c_stride[64]
    cdef int64_t step = 1
    if size not in (2, 4, 8) or nd < 2 or nd > FN_LAYOUT_MAX_DIMS:
        return -1
    if PyDataType_REFCHK(cnp.PyArray_DESCR(src)):
        return -1
    for a in range(nd - 1, -1, -1):  # the C-order strides of the destination, in elements
        c_stride[a] = step
        step *= shape[a]
    for a in range(nd):
        if shape[a] == 1:
            continue
        if strides[a] <= 0 or strides[a] % size:
            return -1
        n = a
    for a in range(n):
        if shape[a] > 1 and strides[a] == size:
            k = a
            break
    if n < 0 or k < 0:
        return -1
    g.rows, g.cols = shape[k], shape[n]
    g.src_ld, g.dst_ld = strides[n] // size, c_stride[k]
    g.count, g.planes = 0, 1
    for a in range(nd):
        if a != k and a != n and shape[a] > 1:
            g.dims[g.count] = shape[a]
            g.src_step[g.count] = strides[a] // size
            g.dst_step[g.count] = c_stride[a]
            g.planes *= shape[a]
            g.count += 1
    return 0


def transposable(cnp.ndarray src not None):
    """Whether to_c_order takes src: an axis of unit stride other than its last, positive
    strides, items of 2, 4 or 8 bytes and no object references."""
    cdef fn_layout_planes g
    return _plan(src, &g) == 0


def to_c_order(cnp.ndarray src not None, cnp.ndarray dst not None, int nthreads, bint vector):
    """dst[...] = src, element bits copied as they are.  IN src: transposable(src), aligned;
    OUT dst: C-contiguous, aligned and writeable, src's shape and dtype, not overlapping src.
    vector: use the vector blocks (where LAYOUT_VECTOR)."""
    cdef fn_layout_planes g
    cdef int nd = src.ndim, a, size = <int>src.itemsize
    cdef int64_t tasks, part, t
    cdef char *s = <char *>cnp.PyArray_DATA(src)
    cdef char *d = <char *>cnp.PyArray_DATA(dst)
    cdef Py_ssize_t extent = size
    if dst.ndim != nd:
        raise ValueError(f"to_c_order: src and dst differ in dimensions, {nd} and {dst.ndim}")
    for a in range(nd):
        if src.shape[a] != dst.shape[a]:
            raise ValueError(f"to_c_order: shapes differ, {(<object>src).shape} and "
                             f"{(<object>dst).shape}")
    if not PyArray_EquivTypes(cnp.PyArray_DESCR(src), cnp.PyArray_DESCR(dst)):
        raise ValueError(f"to_c_order: dtypes differ, {src.dtype} and {dst.dtype}")
    if src.size == 0:
        return
    if _plan(src, &g) != 0:
        raise ValueError("to_c_order: src must have an axis of unit stride other than its last, "
                         f"positive strides and items of 2, 4 or 8 bytes without object references, "
                         f"got strides {(<object>src).strides} and dtype {src.dtype}")
    if not (cnp.PyArray_ISALIGNED(src) and cnp.PyArray_IS_C_CONTIGUOUS(dst)
            and cnp.PyArray_ISALIGNED(dst) and cnp.PyArray_ISWRITEABLE(dst)):
        raise ValueError("to_c_order: src must be aligned and dst C-contiguous, aligned and "
                         "writeable")
    for a in range(nd):
        extent += (src.shape[a] - 1) * src.strides[a]
    if s < d + src.size * size and d < s + extent:
        raise ValueError("to_c_order: src and dst overlap")
    vector = vector and LAYOUT_VECTOR
    tasks = fn_layout_tasks(&g)
    nthreads = <int>max(1, min(nthreads, tasks))
    with nogil:
        if nthreads == 1:
            fn_transpose(s, d, size, &g, 0, tasks, vector)
        else:
            part = (tasks + nthreads - 1) // nthreads
            for t in prange(nthreads, num_threads=nthreads, schedule="static"):
                fn_transpose(s, d, size, &g, t * part, min(tasks, (t + 1) * part), vector)
