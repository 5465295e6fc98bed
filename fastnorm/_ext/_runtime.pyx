"""Process-wide facts the kernels need: OpenMP thread counts and the CPU's ISA.

Built without OpenMP, every query answers as a single-threaded runtime would.
"""

cdef extern from "fn_common.h" nogil:
    int fn_cpu_has_avx2_fma()
    int FN_HAVE_AVX2_VARIANT

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


def cpu_has_avx2_fma():
    return bool(fn_cpu_has_avx2_fma())


def avx2_variant_built():
    return bool(FN_HAVE_AVX2_VARIANT)
