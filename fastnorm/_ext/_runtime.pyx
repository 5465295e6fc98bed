"""Process-wide facts the kernels need: OpenMP thread counts and the CPU's ISA variant;
and the float16 <-> float32 conversions of every family (fn_half.h).

Built without OpenMP, every query answers as a single-threaded runtime would.
"""
from libc.stdint cimport uint16_t, int64_t

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
