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
    int fn_layout_has_vector()
    int64_t fn_layout_tasks(int64_t rows, int64_t mid)
    void fn_to_c_order(const void *src, void *dst, int size, int64_t rows, int64_t cols,
                       const int64_t *mid_dims, int mid_count, int64_t task0, int64_t task1,
                       int vector)

#: The Fortran-to-C-order copy has its vector blocks on this CPU (fn_layout.h).
LAYOUT_VECTOR = bool(fn_layout_has_vector())


def to_c_order(cnp.ndarray src not None, cnp.ndarray dst not None, int nthreads, bint vector):
    """dst[...] = src, element bits copied as they are.  IN src: Fortran-contiguous, at least
    2-d; OUT dst: C-contiguous, src's shape and item size (2, 4 or 8 bytes), not overlapping
    src; both aligned for their item size.  vector: use the vector blocks (where
    LAYOUT_VECTOR)."""
    cdef int nd = src.ndim, a, mid_count, size = <int>src.itemsize
    cdef int64_t mid_dims[64]
    cdef int64_t rows, cols, mid = 1, tasks, part, t
    cdef const void *s = cnp.PyArray_DATA(src)
    cdef void *d = cnp.PyArray_DATA(dst)
    cdef Py_ssize_t nbytes
    if nd < 2 or nd > FN_LAYOUT_MAX_DIMS or dst.ndim != nd:
        raise ValueError(f"to_c_order: src and dst must have one number of dimensions in [2, "
                         f"{FN_LAYOUT_MAX_DIMS}], got {nd} and {dst.ndim}")
    for a in range(nd):
        if src.shape[a] != dst.shape[a]:
            raise ValueError(f"to_c_order: shapes differ, {(<object>src).shape} and {(<object>dst).shape}")
    if size not in (2, 4, 8) or dst.itemsize != size:
        raise ValueError(f"to_c_order: item sizes must be one of 2, 4, 8, got {size} and "
                         f"{dst.itemsize}")
    if not (cnp.PyArray_IS_F_CONTIGUOUS(src) and cnp.PyArray_ISALIGNED(src)
            and cnp.PyArray_IS_C_CONTIGUOUS(dst) and cnp.PyArray_ISALIGNED(dst)
            and cnp.PyArray_ISWRITEABLE(dst)):
        raise ValueError("to_c_order: src must be Fortran-contiguous and dst C-contiguous and "
                         "writeable, both aligned")
    nbytes = src.size * size
    if nbytes and <char *>s < <char *>d + nbytes and <char *>d < <char *>s + nbytes:
        raise ValueError("to_c_order: src and dst overlap")
    vector = vector and LAYOUT_VECTOR
    rows, cols, mid_count = src.shape[0], src.shape[nd - 1], nd - 2
    for a in range(mid_count):
        mid_dims[a] = src.shape[a + 1]
        mid *= mid_dims[a]
    if nbytes == 0:
        return
    tasks = fn_layout_tasks(rows, mid)
    nthreads = <int>max(1, min(nthreads, tasks))
    with nogil:
        if nthreads == 1:
            fn_to_c_order(s, d, size, rows, cols, mid_dims, mid_count, 0, tasks, vector)
        else:
            part = (tasks + nthreads - 1) // nthreads
            for t in prange(nthreads, num_threads=nthreads, schedule="static"):
                fn_to_c_order(s, d, size, rows, cols, mid_dims, mid_count, t * part,
                              min(tasks, (t + 1) * part), vector)
