/* Shared definitions for fastnorm's C kernels.
 *
 * Every kernel family is one template header (fn_<family>_impl.h) compiled into
 * three translation units, src/<family>_{base,avx2,avx512}.c (baseline x86-64 i.e.
 * SSE2; AVX2+FMA; AVX-512), each through fn_instantiate.h.  The template names its
 * functions with FN_NAME(stem, suffix), which appends the ISA name, so all variants
 * live in one extension module; each unit also defines the family's table of kernel
 * pointers, and the Cython glue picks a table at import time (FASTNORM_ISA forces one).
 */
#ifndef FN_COMMON_H
#define FN_COMMON_H

#include <stdint.h>
#include <stddef.h>

#define FN_CAT3_(a, b, c) a##_##b##_##c
#define FN_CAT3(a, b, c) FN_CAT3_(a, b, c)
/* FN_NAME(fn_act_forward, f32) -> fn_act_forward_f32_<isa> */
#define FN_NAME(stem, suffix) FN_CAT3(stem, suffix, FN_ISA)

/* Kernel variants, in order of preference (macros: fn_instantiate.h tests them in #if).
 * The Python side names them "base", "avx2", "avx512" (_runtime.ISA_NAMES). */
#define FN_ISA_BASE 0
#define FN_ISA_AVX2 1
#define FN_ISA_AVX512 2
#define FN_ISA_COUNT 3

/* The AVX2 and AVX-512 variants are compiled only where GCC/Clang can target x86-64
 * ISA extensions per function; elsewhere their kernel tables point at the baseline
 * code (fn_instantiate.h). */
#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#define FN_HAVE_X86_VARIANTS 1
#else
#define FN_HAVE_X86_VARIANTS 0
#endif

/* The best variant this CPU runs.  AVX2 needs FMA; AVX-512 needs F, VL, BW and DQ; and each
 * needs the OS to save its registers (XCR0: the YMM state, and for AVX-512 the mask and ZMM
 * states).  Asked of CPUID and XGETBV directly rather than through __builtin_cpu_supports,
 * whose answers come from the runtime library's CPU model: zig's compiler_rt (zig cc, clang)
 * answered "no" to everything, and such a build ran the baseline variant alone. */
#if FN_HAVE_X86_VARIANTS
#include <cpuid.h>
static inline uint64_t fn__xcr0(void)
{
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}

/* CPUID leaf 7 (subleaf 0) EBX, the AVX2, BMI2 and AVX-512 feature bits; 0 where the CPU
 * has no leaf 7. */
static inline unsigned fn__cpuid7_ebx(void)
{
    unsigned a, b, c, d;
    if (__get_cpuid_max(0, NULL) < 7)
        return 0;
    __cpuid_count(7, 0, a, b, c, d);
    return b;
}
#endif

static inline int fn_cpu_isa(void)
{
#if FN_HAVE_X86_VARIANTS
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d))
        return FN_ISA_BASE;
    const unsigned fma = 1u << 12, osxsave = 1u << 27, avx = 1u << 28;
    if ((c & (fma | osxsave | avx)) != (fma | osxsave | avx))
        return FN_ISA_BASE;
    const uint64_t xcr0 = fn__xcr0(), ymm_state = 0x6;
    b = fn__cpuid7_ebx();
    if (!(b & (1u << 5)) || (xcr0 & ymm_state) != ymm_state)   /* AVX2 */
        return FN_ISA_BASE;
    const unsigned avx512 = (1u << 16) | (1u << 17) | (1u << 30) | (1u << 31);  /* F DQ BW VL */
#ifdef __APPLE__
    /* macOS turns the AVX-512 state on at a thread's first use, so XCR0 may not show it
     * yet (LLVM's compiler-rt takes it as saved there too).  Not tested on a Mac. */
    const int zmm_saved = 1;
#else
    const uint64_t zmm_state = 0xe6;   /* opmask, ZMM_Hi256, Hi16_ZMM, and the YMM state */
    const int zmm_saved = (xcr0 & zmm_state) == zmm_state;
#endif
    if ((b & avx512) == avx512 && zmm_saved)
        return FN_ISA_AVX512;
    return FN_ISA_AVX2;
#else
    return FN_ISA_BASE;
#endif
}

/* 1 on the CPUs known here to issue each 256-bit vector instruction as two 128-bit halves
 * and run the AVX2 variant: AMD family 23 (17h) models 0-47, Zen and Zen+ (Zen 2, from model
 * 48, has 256-bit units).  Other such cores (Intel's Gracemont E-cores, Hygon's family 24)
 * are neither detected nor measured.  The AVX2 dropout generator takes another mix of
 * vector and scalar blocks there (fn_philox.h).  Asked once per process, by the dropout
 * module at import. */
static inline int fn_cpu_halves_256bit(void)
{
#if FN_HAVE_X86_VARIANTS
    unsigned a, b, c, d;
    if (!__get_cpuid(0, &a, &b, &c, &d))
        return 0;
    const int amd = b == 0x68747541u && d == 0x69746e65u && c == 0x444d4163u;   /* "AuthenticAMD" */
    if (!amd || !__get_cpuid(1, &a, &b, &c, &d))
        return 0;
    const unsigned family = ((a >> 8) & 0xF) + ((a >> 20) & 0xFF);
    const unsigned model = ((a >> 4) & 0xF) | ((a >> 12) & 0xF0);
    return family == 0x17 && model < 0x30;
#else
    return 0;
#endif
}

/* 1 where the CPU has BMI2 (mulx: the AVX2 variant's split dropout group is compiled for it,
 * fn_philox.h).  Every CPU that fn_cpu_halves_256bit picks has it. */
static inline int fn_cpu_bmi2(void)
{
#if FN_HAVE_X86_VARIANTS
    return (fn__cpuid7_ebx() >> 8) & 1;
#else
    return 0;
#endif
}

/* After "omp simd", over a loop of a constant trip count (16 elements beside a piece of
 * sums): clang unrolls such a loop fully before its loop vectorizer runs, and the unrolled
 * statements stayed scalar (vfmadd213ss, one element each: group norm (16, 64, 16, 16) 2.7-3.2x
 * slower than gcc's build); kept as a loop it is vectorized.  gcc vectorizes it as it is. */
#if defined(__clang__)
#define FN_KEEP_LOOP _Pragma("clang loop unroll(disable)")
#else
#define FN_KEEP_LOOP
#endif

/* Ask for the 64-byte lines of [p, p + bytes) to be loaded into the caches (a hint: no
 * fault, no effect on results), for a loop whose next data the hardware prefetcher cannot
 * see coming.  `locality` is __builtin_prefetch's (a constant): 3 into L1, 2 into L2. */
#if defined(__GNUC__)
#define FN__PREFETCH_LINES(p, bytes, locality)                       \
    for (int64_t o_ = 0; o_ < (bytes); o_ += 64)                     \
        __builtin_prefetch((const char *)(p) + o_, 0, (locality))
#else
#define FN__PREFETCH_LINES(p, bytes, locality) ((void)(p), (void)(bytes))
#endif

static inline void fn_prefetch_lines(const void *p, int64_t bytes) { FN__PREFETCH_LINES(p, bytes, 3); }

/* The same into L2 (prefetcht1), not L1: for many lines in flight.  A prefetch into L1
 * holds one of its few miss buffers until the line arrives, so a burst of them stalls the
 * loop that issued it; L2 tracks more misses. */
static inline void fn_prefetch_lines_l2(const void *p, int64_t bytes) { FN__PREFETCH_LINES(p, bytes, 2); }

#endif /* FN_COMMON_H */
