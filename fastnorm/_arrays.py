"""Argument validation and memory-layout handling shared by the public functions.

Kernels see only contiguous, aligned 1-D buffers of float32 or float64.  Everything
else a caller may pass (lists, float16, Fortran order, strided or negative-stride views,
data misaligned for its dtype, ``out=`` that aliases an input) is resolved here, and
every rejection names the function, the argument, what was expected and what was given.
"""
import math
import numbers

import numpy as np

from . import _config

FLOAT_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))
_F16 = np.dtype(np.float16)
_F32 = np.dtype(np.float32)


def as_float_array(func, name, x):
    """``x`` as an ndarray of float16/32/64 (array-likes are converted as NumPy would)."""
    if type(x) is not np.ndarray:
        if x is None:
            raise TypeError(f"{func}: {name} must be a float array, got None")
        try:
            x = np.asarray(x)
        except Exception as exc:  # ragged lists and the like
            raise TypeError(f"{func}: {name} must be a float array, got {type(x).__name__} ({exc})") from None
    if x.dtype not in FLOAT_DTYPES:
        if x.dtype.kind == "f" and x.dtype.newbyteorder("=") in FLOAT_DTYPES:
            # byte-swapped floats (files, network data): the same values, natively ordered
            return x.astype(x.dtype.newbyteorder("="))
        raise TypeError(f"{func}: {name} must have dtype float16, float32 or float64, got {x.dtype}")
    return x


def same_array_spec(func, name, a, ref_name, ref):
    """Require ``a`` to have ``ref``'s shape (ValueError) and dtype (TypeError)."""
    if a.shape != ref.shape:
        raise ValueError(f"{func}: {name} must have the shape of {ref_name} {ref.shape}, got {a.shape}")
    if a.dtype != ref.dtype:
        raise TypeError(f"{func}: {name} must have the dtype of {ref_name} ({ref.dtype}), got {a.dtype}")


def check_out(func, out, shape, dtype):
    """Validate a caller-supplied ``out=`` array."""
    if type(out) is not np.ndarray and not isinstance(out, np.ndarray):
        raise TypeError(f"{func}: out must be a numpy.ndarray, got {type(out).__name__}")
    if out.shape != tuple(shape):
        raise ValueError(f"{func}: out must have shape {tuple(shape)}, got {out.shape}")
    if out.dtype != dtype:
        raise TypeError(f"{func}: out must have dtype {dtype}, got {out.dtype}")
    if not out.flags.writeable:
        raise ValueError(f"{func}: out must be writeable, got a read-only array")


def check_real(func, name, value, *, positive=False, nonzero=False, nonnegative=False):
    """``value`` as a finite Python float, with optional sign constraints."""
    # Exact float/int first: the ABC check and np.isfinite cost more than a small kernel.
    if type(value) is not float and type(value) is not int and (
            isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real)):
        raise TypeError(f"{func}: {name} must be a real number, got {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{func}: {name} must be finite, got {v}")
    if positive and not v > 0:
        raise ValueError(f"{func}: {name} must be > 0, got {v}")
    if nonnegative and not v >= 0:
        raise ValueError(f"{func}: {name} must be >= 0, got {v}")
    if nonzero and v == 0:
        raise ValueError(f"{func}: {name} must be non-zero, got {v}")
    return v


def compute_dtype(dtype):
    """float16 is computed in float32; float32 and float64 natively."""
    return _F32 if dtype == _F16 else dtype


# float16 <-> float32 by the CPU's F16C instructions (fn_half.h, through _runtime) on the
# compiled backend: NumPy 2.4's casts between the two took 1.6-2.4 ns per element on AMD
# Zen 4 (1.1 ms of a 1.8 ms float16 relu of (256, 1024)).  Below _HALF_MIN elements NumPy's
# cast is the cheaper call.  Same values (fn_half.h), and overflow / underflow are reported
# as NumPy's cast reports them (_to_half).  Not with the baseline variant forced
# (FASTNORM_ISA=base), which runs no AVX instruction.
_HALF_MIN = 1 << 12
_F16_OVERFLOWS = np.array(65536.0, _F32)      # NumPy's cast of these raises the same floating-
_F16_UNDERFLOWS = np.array(1e-10, _F32)       # point condition, handled by np.errstate's settings


def _fast_half(n):
    # (the "cython" backend is only ever set with _config._runtime imported)
    return (n >= _HALF_MIN and _config._backend == "cython" and _config._runtime.HALF_CONVERSION
            and _config._isa != "base")


def _to_half(a, out):
    """out (float16, C-contiguous) = a (float32, C-contiguous) rounded, through F16C; an overflow
    or underflow on the way is reported by NumPy's own cast, so warnings and errors follow
    np.errstate as for ``a.astype(np.float16)``."""
    overflowed, underflowed = _config._runtime.float_to_half(a.reshape(-1), out.reshape(-1).view(np.uint16))
    if overflowed:
        _F16_OVERFLOWS.astype(_F16)
    if underflowed:
        _F16_UNDERFLOWS.astype(_F16)


def cast(a, dtype):
    """``a`` as ``dtype``: ``a`` itself when it has it, else a new array (C order when ``a``
    is C-contiguous)."""
    if a.dtype == dtype:
        return a
    if (dtype == _F16 and a.dtype == _F32 and a.flags.c_contiguous and a.flags.aligned
            and _fast_half(a.size)):
        out = np.empty(a.shape, _F16)
        _to_half(a, out)
        return out
    return a.astype(dtype)


def copy_cast(out, a):
    """``out[...] = a`` (same shape), rounding to out's dtype (``casting="unsafe"``)."""
    if (out.dtype == _F16 and a.dtype == _F32 and out.flags.c_contiguous and out.flags.aligned
            and a.flags.c_contiguous and a.flags.aligned and not np.may_share_memory(out, a)
            and _fast_half(a.size)):
        _to_half(a, out)
    else:
        np.copyto(out, a, casting="unsafe")


# Arrays whose contiguous axis is not their last (Fortran order, x.swapaxes(-1, -2), ...) into
# C order, and C-order arrays into Fortran order, through fn_layout.h on the compiled backend:
# NumPy copies them reading one element per cache line of the source, a Fortran-order
# (8192, 768) float32 array in 29.5 ms against 3.7 ms there (Zen 4, 1 thread; a layer norm of
# it spent 30 of its 31 ms in NumPy's copy).  Below _REORDER_MIN elements NumPy's copy is as
# fast (this call, 1 thread: (32, 128) float32 2.06 us by NumPy, 2.01 us here, float64 2.29 /
# 2.57; (64, 128) float32 3.41 / 2.54, float64 6.59 / 3.50); from _REORDER_GRAIN on the copy
# runs on every thread.
_REORDER_MIN = 1 << 13
_REORDER_GRAIN = 1 << 15


def _reordered(a, order):
    """A copy of ``a`` contiguous in ``order`` by fn_layout.h, or None where NumPy's copy is
    the one to make (small arrays, misaligned data, layouts that read along the last axis
    anyway, negative strides)."""
    if a.size < _REORDER_MIN or _config._backend != "cython" or not a.flags.aligned:
        return None
    source = a if order == "C" else a.T  # into Fortran order: the transposes into C order
    if not _config._runtime.transposable(source):
        return None
    out = _config.empty(a.shape, a.dtype, order)
    _config._runtime.to_c_order(source, out if order == "C" else out.T,
                                _config.threads_for(a.size, _REORDER_GRAIN), True)
    return out


def aligned_contiguous(a, dtype=None, order="C"):
    """``a`` in the layout a kernel may read and write through a typed pointer: ``a`` itself
    when it is already contiguous in ``order`` ('C' or 'F'), of ``dtype`` (None: a's own)
    and aligned for that dtype, else a new contiguous, aligned copy of those values.

    Alignment matters because a misaligned ``T*`` is undefined behaviour in C (vectorized
    loops may assume it), and ``np.ascontiguousarray`` hands back a contiguous but
    misaligned array (e.g. from ``np.frombuffer`` at an odd offset) without copying it."""
    if dtype is None:
        dtype = a.dtype
    flags = a.flags
    if (flags.c_contiguous if order == "C" else flags.f_contiguous) and flags.aligned and a.dtype == dtype:
        return a
    reordered = _reordered(a, order)  # item bits moved as they are: layout first, then dtype
    if reordered is not None:
        if reordered.dtype == dtype:
            return reordered
        a = reordered
    if a.dtype == _F16 and dtype == _F32 and _fast_half(a.size):
        a = np.asarray(a, order=order)  # (a plain copy into the layout where still needed)
        a = a if a.flags.aligned else a.copy(order=order)
        out = np.empty(a.shape, _F32, order=order)
        _config._runtime.half_to_float(a.reshape(-1, order=order).view(np.uint16),
                                       out.reshape(-1, order=order))
        return out
    return np.array(a, dtype=dtype, order=order)  # always a fresh buffer, which NumPy aligns


def _common_order(arrays):
    if all(a.flags.c_contiguous for a in arrays):
        return "C"
    if all(a.flags.f_contiguous for a in arrays):
        return "F"
    return None


def _same_view(a, b):
    return (a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
            and a.strides == b.strides)


def elementwise(func, inputs, out, kernel, *, c_order=False):
    """Run an elementwise ``kernel(flat_inputs, flat_out)`` over arrays of one shape.

    ``inputs`` are validated float arrays of equal shape and dtype; ``out`` is None
    or an array to be validated here.  The kernel receives 1-D contiguous arrays of
    the compute dtype and writes every element of its output.  The flat index is the
    C-order (row-major) index when ``c_order`` is true (kernels whose result depends
    on the position, like dropout), else whichever memory order avoids copies.
    Inputs are never modified unless one of them is ``out``.
    """
    ref = inputs[0]
    dtype = ref.dtype
    if out is not None:
        check_out(func, out, ref.shape, dtype)
    ctype = compute_dtype(dtype)
    if ref.size == 0:
        return np.empty_like(ref) if out is None else out

    if ctype != dtype:  # float16: convert once, compute in float32, round once
        flat = [aligned_contiguous(a, ctype).reshape(-1) for a in inputs]
        result = np.empty(ref.shape, dtype=ctype)
        kernel(flat, result.reshape(-1))
        if out is None:
            return cast(result, dtype)
        copy_cast(out, result)
        return out

    order = "C" if c_order else (_common_order(inputs) or "C")
    inputs = [aligned_contiguous(a, order=order) for a in inputs]
    flat = [a.reshape(-1, order=order) for a in inputs]
    direct = out is not None and out.flags.aligned and (
        out.flags.c_contiguous if order == "C" else out.flags.f_contiguous)
    if direct:
        for a in inputs:
            if np.may_share_memory(out, a) and not _same_view(out, a):
                direct = False  # partial overlap: element i could be written before it is read
                break
    if direct:
        kernel(flat, out.reshape(-1, order=order))
        return out
    result = _config.empty(ref.shape, dtype, order, like=flat[0],
                           like2=flat[1] if len(flat) > 1 else None)
    kernel(flat, result.reshape(-1, order=order))
    if out is None:
        return result
    np.copyto(out, result)
    return out
