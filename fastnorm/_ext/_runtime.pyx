"""Process-wide facts the kernels need: OpenMP thread counts and the CPU's ISA variant.

Built without OpenMP, every query answers as a single-threaded runtime would.
"""

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
