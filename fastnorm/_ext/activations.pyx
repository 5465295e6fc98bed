"""Cython glue of the elementwise activation kernels (C loops in fn_activations_impl.h).

Arguments arrive validated and contiguous from fastnorm.activations; this module
only picks the ISA variant, splits the work over OpenMP threads and releases the GIL.
"""
from libc.stdint cimport int64_t
from libc.math cimport isfinite
from cython.parallel cimport prange
from cython cimport floating
cimport numpy as cnp
from fastnorm._ext._shared cimport isa_level, threads_for, plain, plain_float, same_or_apart, same_shape,\
    output_for
from fastnorm._ext._pool cimport streams

cnp.import_array()

cdef extern from "fn_activations.h" nogil:
    enum fn_act_op:
        FN_ACT_RELU
        FN_ACT_RELU6
        FN_ACT_LEAKY_RELU
        FN_ACT_ELU
        FN_ACT_SELU
        FN_ACT_CELU
        FN_ACT_GELU
        FN_ACT_GELU_TANH
        FN_ACT_SILU
        FN_ACT_SOFTPLUS
        FN_ACT_MISH
        FN_ACT_SIGMOID
        FN_ACT_TANH
        FN_ACT_HARDSIGMOID
        FN_ACT_HARDSWISH
        FN_ACT_SOFTSIGN
    ctypedef struct fn_act_kernels:
        void (*forward_f32)(int, const float *, float *, int64_t, double, double, int) noexcept nogil
        void (*forward_f64)(int, const double *, double *, int64_t, double, double, int) noexcept nogil
        void (*backward_f32)(int, const float *, const float *, float *, int64_t, double, double, int) noexcept nogil
        void (*backward_f64)(int, const double *, const double *, double *, int64_t, double, double, int) noexcept nogil
    const fn_act_kernels *fn_act_kernels_by_isa[]
    const fn_act_kernels fn_act_kernels_avx2_split
    int FN_ISA_COUNT
    int fn_cpu_halves_256bit()
    enum: FN_ISA_AVX2

cdef const fn_act_kernels *_kernels = fn_act_kernels_by_isa[0]
cdef int _isa = 0
# The AVX2 variant's exponentials split over three loops where 256-bit instructions run as
# two halves (FN_ACT_SPLIT_EXP, STAGED_EXP in fn_activations_impl.h).  The same results
# either way; set_split_exp chooses for the tests.
cdef int _split_exp = fn_cpu_halves_256bit()

OPS = {
    "relu": FN_ACT_RELU, "relu6": FN_ACT_RELU6, "leaky_relu": FN_ACT_LEAKY_RELU,
    "elu": FN_ACT_ELU, "selu": FN_ACT_SELU, "celu": FN_ACT_CELU, "gelu": FN_ACT_GELU,
    "gelu_tanh": FN_ACT_GELU_TANH, "silu": FN_ACT_SILU, "softplus": FN_ACT_SOFTPLUS,
    "mish": FN_ACT_MISH, "sigmoid": FN_ACT_SIGMOID, "tanh": FN_ACT_TANH,
    "hardsigmoid": FN_ACT_HARDSIGMOID, "hardswish": FN_ACT_HARDSWISH,
    "softsign": FN_ACT_SOFTSIGN,
}


def set_isa(int level):
    """Route every call to kernel variant `level` (an index of _runtime.ISA_NAMES)."""
    global _kernels, _isa
    _isa = isa_level(level, FN_ISA_COUNT)
    _kernels = &fn_act_kernels_avx2_split if _isa == FN_ISA_AVX2 and _split_exp \
        else fn_act_kernels_by_isa[_isa]


def split_exp():
    """Whether the AVX2 variant runs the exponential of sigmoid, silu, softplus, GELU's tanh
    form (forward) and ELU's and SELU's backward split over three loops rather than in one."""
    return bool(_split_exp)


def set_split_exp(value=None):
    """Choose how the AVX2 variant runs those exponentials (split_exp): True split over three
    loops, False in one, None for this CPU's default (split where 256-bit instructions run as
    two 128-bit halves).  The results are the same; this is for tests and measurements."""
    global _split_exp
    _split_exp = fn_cpu_halves_256bit() if value is None else bool(value)
    set_isa(_isa)


cdef inline Py_ssize_t _chunk(Py_ssize_t n, int nthreads) noexcept nogil:
    # Chunks start on 64-byte boundaries (16 floats) so threads never share a cache line.
    return (((n + nthreads - 1) // nthreads) + 15) & ~(<Py_ssize_t>15)


cdef void _forward(int op, const floating *x, floating *y, Py_ssize_t n,
                   double a, double b, int nthreads, int stream) noexcept nogil:
    cdef Py_ssize_t c, start, chunk
    if nthreads <= 1:
        if floating is float:
            _kernels.forward_f32(op, x, y, n, a, b, stream)
        else:
            _kernels.forward_f64(op, x, y, n, a, b, stream)
        return
    chunk = _chunk(n, nthreads)
    for c in prange(nthreads, num_threads=nthreads, schedule="static"):
        start = c * chunk
        if start < n:
            if floating is float:
                _kernels.forward_f32(op, x + start, y + start, min(chunk, n - start), a, b, stream)
            else:
                _kernels.forward_f64(op, x + start, y + start, min(chunk, n - start), a, b, stream)


cdef void _backward(int op, const floating *g, const floating *s, floating *gx, Py_ssize_t n,
                    double a, double b, int nthreads, int stream) noexcept nogil:
    cdef Py_ssize_t c, start, chunk
    if nthreads <= 1:
        if floating is float:
            _kernels.backward_f32(op, g, s, gx, n, a, b, stream)
        else:
            _kernels.backward_f64(op, g, s, gx, n, a, b, stream)
        return
    chunk = _chunk(n, nthreads)
    for c in prange(nthreads, num_threads=nthreads, schedule="static"):
        start = c * chunk
        if start < n:
            if floating is float:
                _kernels.backward_f32(op, g + start, s + start, gx + start, min(chunk, n - start), a, b, stream)
            else:
                _kernels.backward_f64(op, g + start, s + start, gx + start, min(chunk, n - start), a, b, stream)


def forward(int op, const floating[::1] x, floating[::1] y, double a, double b, int nthreads):
    """y = f_op(x) elementwise.  IN x: (n,); OUT y: (n,), may be x's buffer."""
    if y.shape[0] != x.shape[0]:
        raise ValueError("forward: x and y differ in length")
    if not 0 <= op < FN_ACT_SOFTSIGN + 1:
        raise ValueError(f"forward: unknown op {op}")
    if x.shape[0] == 0:
        return
    with nogil:
        _forward(op, &x[0], &y[0], x.shape[0], a, b, nthreads, 0)


def backward(int op, const floating[::1] g, const floating[::1] s, floating[::1] gx,
             double a, double b, int nthreads):
    """gx = g * f_op'(s).  IN g, s: (n,); OUT gx: (n,), may be g's or s's buffer."""
    if not (g.shape[0] == s.shape[0] == gx.shape[0]):
        raise ValueError("backward: g, s and gx differ in length")
    if not 0 <= op < FN_ACT_SOFTSIGN + 1:
        raise ValueError(f"backward: unknown op {op}")
    if g.shape[0] == 0:
        return
    with nogil:
        _backward(op, &g[0], &s[0], &gx[0], g.shape[0], a, b, nthreads, 0)


# ---------------------------------------------------------------------------- fast path
# The common call -- an aligned, C-contiguous, native float32/float64 array and no or a
# matching out= -- is checked and run here without creating memoryviews or temporaries:
# on a (32, 128) array the general Python path costs more than the kernel.  Anything
# else returns None and takes the general path in fastnorm.activations, which also
# produces every error message.

cdef inline bint _params_ok(int op, double a, double b) noexcept:
    """a and b are values op's public function accepts (fastnorm.activations._PARAMS):
    finite, and non-zero where the kernel divides by them.  Else the general path
    validates them and raises."""
    if op == FN_ACT_LEAKY_RELU or op == FN_ACT_ELU:
        return isfinite(a)
    if op == FN_ACT_CELU:
        return isfinite(a) and a != 0
    if op == FN_ACT_SOFTPLUS:
        return isfinite(a) and a != 0 and isfinite(b)
    return True


def forward_fast(int op, object x, object out, double a, double b, Py_ssize_t grain):
    """y = f_op(x) for plain arrays (see above); None when the general path is needed."""
    return _forward_fast(op, x, out, a, b, grain)


cdef object _forward_fast(int op, object x, object out, double a, double b, Py_ssize_t grain):
    if not 0 <= op <= FN_ACT_SOFTSIGN or not _params_ok(op, a, b):
        return None
    cdef int typenum = plain_float(x)
    if typenum < 0:
        return None
    cdef cnp.ndarray xa = <cnp.ndarray>x
    # Apart from x (a quarter page on): memory-bound maps ran faster there than at x's own
    # page offset (1 thread: relu 1024x1024, 4096x4096 and float64 5-6 %, leaky_relu 2-4 %,
    # dropout 2-3 %), the others level (docs/performance-log.md, "an eighteenth session").
    y = output_for(xa, out, NULL, True)
    if y is None:
        return None
    cdef cnp.ndarray ya = <cnp.ndarray>y
    cdef Py_ssize_t n = cnp.PyArray_SIZE(xa)
    cdef int nthreads = threads_for(n, grain)
    cdef Py_ssize_t nbytes = n * cnp.PyArray_ITEMSIZE(xa)
    cdef int stream = streams(nbytes, 2 * nbytes, out is not None)
    if n == 0:
        return y
    # Below the threading grain the call runs on one thread in microseconds and keeps the GIL:
    # releasing and retaking it cost 35-50 ns, 3-6 % of a (32, 128) forward or backward.
    if n < grain:
        _forward_typed(typenum, op, cnp.PyArray_DATA(xa), cnp.PyArray_DATA(ya), n, a, b, 1, stream)
    else:
        with nogil:
            _forward_typed(typenum, op, cnp.PyArray_DATA(xa), cnp.PyArray_DATA(ya), n, a, b,
                           nthreads, stream)
    return y


cdef inline void _forward_typed(int typenum, int op, const void *x, void *y, Py_ssize_t n,
                                double a, double b, int nthreads, int stream) noexcept nogil:
    if typenum == cnp.NPY_FLOAT32:
        _forward[float](op, <const float *>x, <float *>y, n, a, b, nthreads, stream)
    else:
        _forward[double](op, <const double *>x, <double *>y, n, a, b, nthreads, stream)


def backward_fast(int op, object g, object s, object out, double a, double b, Py_ssize_t grain):
    """gx = g * f_op'(s) for plain arrays of one shape; None when the general path is needed."""
    return _backward_fast(op, g, s, out, a, b, grain)


cdef object _backward_fast(int op, object g, object s, object out, double a, double b,
                           Py_ssize_t grain):
    if not 0 <= op <= FN_ACT_SOFTSIGN or not _params_ok(op, a, b):
        return None
    cdef int typenum = plain_float(g)
    if typenum < 0 or not plain(s, typenum):
        return None
    cdef cnp.ndarray ga = <cnp.ndarray>g, sa = <cnp.ndarray>s
    if not same_shape(ga, sa):
        return None
    gx = output_for(ga, out, cnp.PyArray_DATA(sa))
    if gx is None or not same_or_apart(sa, <cnp.ndarray>gx):
        return None
    cdef cnp.ndarray gxa = <cnp.ndarray>gx
    cdef Py_ssize_t n = cnp.PyArray_SIZE(ga)
    cdef int nthreads = threads_for(n, grain)
    cdef Py_ssize_t nbytes = n * cnp.PyArray_ITEMSIZE(ga)
    cdef int stream = streams(nbytes, 3 * nbytes, out is not None)
    if n == 0:
        return gx
    if n < grain:
        _backward_typed(typenum, op, cnp.PyArray_DATA(ga), cnp.PyArray_DATA(sa), cnp.PyArray_DATA(gxa),
                        n, a, b, 1, stream)
    else:
        with nogil:
            _backward_typed(typenum, op, cnp.PyArray_DATA(ga), cnp.PyArray_DATA(sa),
                            cnp.PyArray_DATA(gxa), n, a, b, nthreads, stream)
    return gx


cdef inline void _backward_typed(int typenum, int op, const void *g, const void *s, void *gx,
                                 Py_ssize_t n, double a, double b, int nthreads,
                                 int stream) noexcept nogil:
    if typenum == cnp.NPY_FLOAT32:
        _backward[float](op, <const float *>g, <const float *>s, <float *>gx, n, a, b, nthreads,
                         stream)
    else:
        _backward[double](op, <const double *>g, <const double *>s, <double *>gx, n, a, b,
                          nthreads, stream)


# ---------------------------------------------------------------------------- dispatch
# fastnorm.activations' _forward and _backward when this module is installed (connect()):
# the fast path above where it applies, else the package's general path.  In C because a
# (32, 128) relu spent about 0.35 us of its 0.8-0.9 us in the two Python functions that
# did this (their frames, the backend check, the op and grain lookups).

cdef object _config = None            # fastnorm._config, whose _backend says which computes
cdef object _checked_params = None    # (func, op, a, b) -> validated float (a, b)
cdef object _forward_general = None   # (func, op, x, out, a, b, ref_params) -> y
cdef object _backward_general = None  # (func, op, g, s, s_name, out, a, b, ref_params) -> gx
cdef dict _forward_args = {}          # op name -> (kernel op, threading grain)
cdef dict _backward_args = {}


def connect(config, checked_params, forward_general, backward_general, dict forward_grain,
            dict backward_grain):
    """Called once by fastnorm.activations: its configuration module, parameter check,
    general paths and per-op threading grains (names as OPS)."""
    global _config, _checked_params, _forward_general, _backward_general
    global _forward_args, _backward_args
    _config, _checked_params = config, checked_params
    _forward_general, _backward_general = forward_general, backward_general
    _forward_args = {name: (OPS[name], forward_grain[name]) for name in OPS}
    _backward_args = {name: (OPS[name], backward_grain[name]) for name in OPS}


def dispatch_forward(str func, str op, object x, object out, object a=0.0, object b=0.0,
                     object ref_params=None):
    """y = op(x) for fastnorm.activations' public function `func`: the fast path for plain
    arrays on the compiled backend (parameters that are not floats validated first), else
    the general path, which validates everything and raises."""
    cdef tuple args
    if _config._backend == "cython":
        if not (type(a) is float and type(b) is float):
            a, b = _checked_params(func, op, a, b)
        args = <tuple>_forward_args[op]
        y = _forward_fast(<int>args[0], x, out, <double>a, <double>b, <Py_ssize_t>args[1])
        if y is not None:
            return y
    return _forward_general(func, op, x, out, a, b, ref_params)


def dispatch_backward(str func, str op, object g, object s, str s_name, object out,
                      object a=0.0, object b=0.0, object ref_params=None):
    """gx = g * op'(s) for fastnorm.activations' public function `func`, as dispatch_forward."""
    cdef tuple args
    if _config._backend == "cython":
        if not (type(a) is float and type(b) is float):
            a, b = _checked_params(func, op, a, b)
        args = <tuple>_backward_args[op]
        gx = _backward_fast(<int>args[0], g, s, out, <double>a, <double>b, <Py_ssize_t>args[1])
        if gx is not None:
            return gx
    return _backward_general(func, op, g, s, s_name, out, a, b, ref_params)
