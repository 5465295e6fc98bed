"""Normalization layers as functions, forward and backward (public API).

Shapes follow PyTorch: ``x`` is ``(N, C)`` or ``(N, C, *spatial)`` for batch, group and
instance norm (``(N, *spatial, C)`` with ``channels_last=True`` for batch and group
norm); layer and RMS norm normalize over the trailing ``normalized_shape`` axes.
Forward functions return ``(y, mean, rstd)`` (RMS norm: ``(y, rstd)``), with
``rstd = 1 / sqrt(var + eps)`` -- what the backward functions take back, exactly as
returned.  Statistics shapes: batch norm ``(C,)``, layer/RMS norm
``x.shape[:-len(normalized_shape)]``, group norm ``(N, num_groups)``, instance norm
``(N, C)``.

dtypes: float32 and float64 are computed natively (float32 data with float64
accumulation), float16 in float32 with ``y`` returned as float16; mean/rstd are in the
compute dtype (float32 for float16/float32 input, float64 for float64 -- PyTorch's
choice for float32).  weight/bias and running statistics have x's dtype (float32 is
also accepted with float16 x); parameter gradients come back in the dtype of the
parameter.  Variances: biased (divide by the count) for normalizing; unbiased for
the running variance, as PyTorch.  ``eps`` (>= 0) sits inside the square root.

Backward functions return ``grad_weight`` only when ``weight`` is given and
``grad_bias`` only when the keyword ``bias`` is given (the forward's bias or anything
of its shape), else None.  Any strides are accepted (non-contiguous input is copied
once); inputs are never modified, except the running statistics, updated in place in
training.
"""
import math
import operator

import numpy as np

from . import _config, reference
from ._arrays import (aligned_contiguous, as_float_array, cast, check_out, check_real, compute_dtype,
                      copy_cast, same_array_spec)
from .reference._normalization import PartialMoments

__all__ = ["moments", "merge_moments", "PartialMoments", "batch_norm", "batch_norm_backward",
           "layer_norm", "layer_norm_backward", "group_norm", "group_norm_backward",
           "instance_norm", "instance_norm_backward", "rms_norm", "rms_norm_backward"]

# Below this many elements a call runs on one thread: starting an OpenMP region (~1 us
# plus waking a thread) costs more than the second core saves (bench/norm_speed.py).
_GRAIN = 1 << 15
# The compiled kernels whatever the backend.  The public functions take their C fast path
# (the *_fast functions, which return None where the general path is needed) while
# `_config._backend == "cython"`: read as an attribute, since calling _config.extension()
# there cost about 0.06 us, 1.3 % of a (32, 768) layer norm (old and new alternated).
_ext = _config.compiled_module("normalization")
_F64 = np.dtype(np.float64)
_F16 = np.dtype(np.float16)


# ---------------------------------------------------------------------------- validation

def _x(func, x, min_ndim, what="x"):
    x = as_float_array(func, what, x)
    if x.ndim < min_ndim:
        raise ValueError(f"{func}: {what} must have at least {min_ndim} dimensions, got shape {x.shape}")
    return x


def _param(func, name, p, shape, x):
    """An optional weight/bias/running statistic of ``shape`` and x's dtype (float32
    also accepted for float16 x)."""
    if p is None:
        return None
    p = as_float_array(func, name, p)
    if p.shape != tuple(shape):
        raise ValueError(f"{func}: {name} must have shape {tuple(shape)}, got {p.shape}")
    if p.dtype != x.dtype and p.dtype != compute_dtype(x.dtype):
        raise TypeError(f"{func}: {name} must have dtype {x.dtype} (the dtype of x), got {p.dtype}")
    return p


def _running(func, running_mean, running_var, c, x, *, updated=True):
    """The running statistics: when ``updated`` (training), the caller's own writeable
    arrays, which are written in place; else (evaluation) only read, so checked and
    converted as weight is: read-only arrays (memory-mapped, say) do, and array-likes
    that convert to x's dtype (a list of floats converts to float64: float64 x only)."""
    if (running_mean is None) != (running_var is None):
        missing = "running_var" if running_var is None else "running_mean"
        raise ValueError(f"{func}: running_mean and running_var must be given together, {missing} is None")
    if running_mean is None:
        return None, None
    if not updated:
        return (_param(func, "running_mean", running_mean, (c,), x),
                _param(func, "running_var", running_var, (c,), x))
    out = []
    for name, r in (("running_mean", running_mean), ("running_var", running_var)):
        if not isinstance(r, np.ndarray):
            raise TypeError(f"{func}: {name} must be a numpy.ndarray (updated in place), got {type(r).__name__}")
        converted = _param(func, name, r, (c,), x)
        if converted is not r:  # an update of a converted copy would be lost
            raise TypeError(f"{func}: {name} must have dtype {x.dtype} in native byte order "
                            f"(it is updated in place), got {r.dtype}")
        if not r.flags.writeable:
            raise ValueError(f"{func}: {name} must be writeable (it is updated in place)")
        out.append(r)
    if np.may_share_memory(out[0], out[1]):
        raise ValueError(f"{func}: running_mean and running_var must not share memory")
    return out


def _stat(func, name, a, shape):
    a = as_float_array(func, name, a)
    if a.shape != tuple(shape):
        raise ValueError(f"{func}: {name} must have shape {tuple(shape)} (as the forward returned it), "
                         f"got {a.shape}")
    return a


def _grad_output(func, grad_output, x):
    g = as_float_array(func, "grad_output", grad_output)
    same_array_spec(func, "grad_output", g, "x", x)
    return g


def _eps(func, eps):
    return check_real(func, "eps", eps, nonnegative=True)


def _flag(func, name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{func}: {name} must be a bool, got {type(value).__name__}")
    return bool(value)


def _int(func, name, value):
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{func}: {name} must be an int, got bool")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{func}: {name} must be an int, got {type(value).__name__}") from None


def _normalized_shape(func, normalized_shape, x):
    if isinstance(normalized_shape, (int, np.integer)) and not isinstance(normalized_shape, bool):
        ns = (int(normalized_shape),)
    else:
        try:
            ns = tuple(_int(func, "normalized_shape", s) for s in normalized_shape)
        except TypeError:
            raise TypeError(f"{func}: normalized_shape must be an int or a sequence of ints, "
                            f"got {normalized_shape!r}") from None
    if not ns or len(ns) > x.ndim or x.shape[x.ndim - len(ns):] != ns:
        raise ValueError(f"{func}: normalized_shape {ns} must be non-empty and equal the trailing "
                         f"dimensions of x, got x of shape {x.shape}")
    return ns


def _num_groups(func, num_groups, c):
    g = _int(func, "num_groups", num_groups)
    if g < 1 or c % g:
        raise ValueError(f"{func}: num_groups must be a positive divisor of the number of channels "
                         f"C = {c}, got {g}")
    return g


def _channels(x, channels_last):
    return x.shape[-1] if channels_last else x.shape[1]


def _count_per_channel(x, channels_last):
    cax = x.ndim - 1 if channels_last else 1
    return math.prod(s for i, s in enumerate(x.shape) if i != cax)


def _momentum_factor(func, momentum, num_batches_tracked):
    if momentum is not None:
        return check_real(func, "momentum", momentum)
    if num_batches_tracked is None:
        raise ValueError(f"{func}: momentum=None (cumulative average) needs num_batches_tracked=, "
                         "the number of batches seen including this one")
    nbt = _int(func, "num_batches_tracked", num_batches_tracked)
    if nbt < 1:
        raise ValueError(f"{func}: num_batches_tracked must be >= 1 (already incremented), got {nbt}")
    return 1.0 / nbt


# ---------------------------------------------------------------------------- kernel glue

def _contiguous(a):
    """a as a C-contiguous, aligned array of the compute dtype (copied only when needed)."""
    return aligned_contiguous(a, compute_dtype(a.dtype))


def _vector(p, cd):
    """p (None passes through) as a flat, C-contiguous, aligned array of dtype cd."""
    return None if p is None else aligned_contiguous(p, cd).reshape(-1)


def _output_buffer(x, xc, out, *params):
    """Where the kernel writes y: ``out`` itself when it can (C-contiguous, aligned, compute
    dtype, not partially overlapping the input, and disjoint from the parameter vectors the
    kernel reads while it writes), else a new array."""
    if (out is not None and out.dtype == xc.dtype and out.flags.c_contiguous and out.flags.aligned
            and (not np.may_share_memory(out, xc)
                 or (out.__array_interface__["data"][0] == xc.__array_interface__["data"][0]))
            and not any(p is not None and np.may_share_memory(out, p) for p in params)):
        return out
    return _config.empty(x.shape, xc.dtype, like=xc)


def _check_out_disjoint(func, out, running):
    """out and the running statistics are both written: they must not alias."""
    for name, r in zip(("running_mean", "running_var"), running):
        if out is not None and r is not None and np.may_share_memory(out, r):
            raise ValueError(f"{func}: out must not share memory with {name} (both are written)")


def _deliver(buf, dtype, out):
    if out is None:
        return cast(buf, dtype)
    if buf is not out:
        copy_cast(out, buf)
    return out


def _affine_params(mean_d, scale_d, bias, cd):
    """(mhi, scale, shift) in the compute dtype cd for the kernels' output pass
    y = (x - mhi) * scale + shift, from the float64 mean and scale and the bias (None: 0),
    all of one shape or broadcastable: mhi is the mean rounded to cd and its rounding error
    is folded into the shift in float64 with the rounded scale, the same operations as
    fn_affine_shift (fn_normalization.h, which says why the product is skipped where the
    error is 0 or the scale infinite), so the kernels that fold it themselves give the
    same bits."""
    mhi = mean_d.astype(cd)
    scale = aligned_contiguous(scale_d, cd)
    scale_r = scale.astype(_F64)
    bias_d = 0.0 if bias is None else np.asarray(bias).astype(cd).astype(_F64)
    with np.errstate(invalid="ignore", over="ignore"):  # inf/NaN means: NaN flows on, silently
        lo = mean_d - mhi
        shift = bias_d - np.where((lo != 0) & ~np.isinf(scale_r), lo * scale_r, 0.0)
    return mhi, scale, aligned_contiguous(shift, cd)


def _rstd(var, eps):
    with np.errstate(divide="ignore", invalid="ignore"):
        return 1.0 / np.sqrt(var + eps)


def _update_running(running, batch, factor):
    running[...] = ((1.0 - factor) * running.astype(_F64) + factor * batch).astype(running.dtype)


def _channel_geometry(x, channels_last):
    """(P, A, C, B) of batch norm: reduce over A and B per channel."""
    c = _channels(x, channels_last)
    if channels_last or x.ndim == 2:
        return (1, x.size // c, c, 1)
    return (1, x.shape[0], c, x.size // (x.shape[0] * c))


def _fortran_only(x):
    """x is Fortran-contiguous and not C-contiguous (x.T is a C-contiguous array)."""
    return x.flags.f_contiguous and not x.flags.c_contiguous


def _transposed_channel_geometry(x, channels_last):
    """(P, A, C, B) of batch norm over x.T for a Fortran-order x: its channels, with every
    other axis reversed, are the same channels as x's (NCHW's x.T is (W, H, C, N))."""
    c = _channels(x, channels_last)
    if channels_last:
        return (1, 1, c, x.size // c)
    return (1, x.size // (x.shape[0] * c), c, x.shape[0])


def _threads(x):
    return _config.threads_for(x.size, _GRAIN)


# ---------------------------------------------------------------------------- moments

def _axes(func, ndim, axis):
    if axis is None:
        return tuple(range(ndim))
    items = (axis,) if isinstance(axis, (int, np.integer)) and not isinstance(axis, bool) else axis
    try:
        items = [_int(func, "axis", a) for a in items]
    except TypeError:
        raise TypeError(f"{func}: axis must be None, an int or a tuple of ints, got {axis!r}") from None
    axes = []
    for a in items:
        if not -ndim <= a < ndim:
            raise ValueError(f"{func}: axis {a} is out of range for an array of {ndim} dimensions")
        a %= ndim
        if a in axes:
            raise ValueError(f"{func}: axis contains {a} twice")
        axes.append(a)
    return tuple(sorted(axes))


def moments(x, axis=None, *, ddof=0, partial=False):
    """Mean and variance of ``x`` over ``axis`` (an int, a tuple of ints, or None = all).

    Returns ``(mean, var)`` in the compute dtype with the reduced axes removed;
    ``var = sum((x - mean)**2) / (n - ddof)`` (ddof=0: biased, ddof=1: sample variance),
    NaN where ``n - ddof <= 0``.  Per-feature statistics reduce over the batch
    (``axis=0``), per-sample ones over the features (``axis=-1``).  A constant slice
    has variance exactly 0.

    partial=True returns mergeable statistics instead: ``PartialMoments(count, mean,
    m2)`` with count = n (an int), mean and m2 = sum((x - mean)**2) float64 arrays of
    the same shape -- combine the partials of pieces of a batch with
    :func:`merge_moments`, then ``.var(ddof)``.  An empty x gives (0, 0, 0).
    """
    func = "moments"
    x = _x(func, x, 0)
    axes = _axes(func, x.ndim, axis)
    ddof = _int(func, "ddof", ddof)
    if ddof < 0:
        raise ValueError(f"{func}: ddof must be >= 0, got {ddof}")
    partial = _flag(func, "partial", partial)
    ext = _config.extension("normalization")
    n = math.prod(x.shape[a] for a in axes)
    if ext is None or n == 0 or x.size == 0:
        return reference.moments(x, axes, ddof=ddof, partial=partial)
    keep = [a for a in range(x.ndim) if a not in axes]
    out_shape = tuple(x.shape[a] for a in keep)
    if not x.flags.c_contiguous and x.flags.f_contiguous and x.ndim > 1:
        # The transpose of a Fortran array is C-contiguous: reduce it with mirrored axes.
        result = moments(x.T, tuple(x.ndim - 1 - a for a in axes), ddof=ddof, partial=partial)
        if partial:
            return PartialMoments(result.count, result.mean.T, result.m2.T)
        return result[0].T, result[1].T
    if keep and keep != list(range(keep[0], keep[-1] + 1)):
        xc = _contiguous(np.transpose(x, keep + list(axes)))
        geometry = (1, 1, math.prod(out_shape), n)
    else:
        xc = _contiguous(x)
        k0, k1 = (keep[0], keep[-1] + 1) if keep else (0, 0)
        geometry = (1, math.prod(x.shape[:k0]), math.prod(x.shape[k0:k1]), math.prod(x.shape[k1:]))
    units = geometry[2]
    mean_d, m2 = np.empty(units), np.empty(units)
    ext.stats(xc.reshape(-1), *geometry, mean_d, m2, _threads(x))
    if partial:
        return PartialMoments(n, mean_d.reshape(out_shape), m2.reshape(out_shape))
    with np.errstate(all="ignore"):
        var = m2 / (n - ddof) if n - ddof > 0 else np.full(units, np.nan)
    cd = compute_dtype(x.dtype)
    return mean_d.astype(cd).reshape(out_shape), var.astype(cd).reshape(out_shape)


def merge_moments(partials):
    """Combine the :class:`PartialMoments` of disjoint pieces of a batch (e.g. from
    ``moments(piece, axis, partial=True)``, or ``(count, mean, m2)`` triples) into
    those of the whole batch, by Chan et al.'s pairwise update over a balanced tree:
    the result equals the one-shot moments up to rounding, whatever the split and
    whatever the order of the partials.  Returns a PartialMoments (float64)."""
    func = "merge_moments"
    try:
        items = list(partials)
    except TypeError:
        raise TypeError(f"{func}: partials must be an iterable of PartialMoments, "
                        f"got {type(partials).__name__}") from None
    if not items:
        raise ValueError(f"{func}: partials must contain at least one PartialMoments, got none")
    checked, shape = [], None
    for i, item in enumerate(items):
        try:
            count, mean, m2 = item
        except (TypeError, ValueError):
            raise TypeError(f"{func}: partials[{i}] must be a PartialMoments or a (count, mean, m2) "
                            f"triple, got {type(item).__name__}") from None
        count = _int(func, f"partials[{i}].count", count)
        if count < 0:
            raise ValueError(f"{func}: partials[{i}].count must be >= 0, got {count}")
        mean, m2 = np.asarray(mean, dtype=_F64), np.asarray(m2, dtype=_F64)
        shape = mean.shape if shape is None else shape
        if mean.shape != shape or m2.shape != shape:
            raise ValueError(f"{func}: partials[{i}] has mean/m2 of shapes {mean.shape}/{m2.shape}, "
                             f"expected {shape} (the shape of partials[0].mean)")
        checked.append(PartialMoments(count, mean, m2))
    return reference.merge_moments(checked)


# ---------------------------------------------------------------------------- batch norm

def batch_norm(x, weight=None, bias=None, running_mean=None, running_var=None, *, training=True,
               momentum=0.1, eps=1e-5, num_batches_tracked=None, channels_last=False, out=None):
    """Batch normalization, per channel over N and the spatial axes.

    x: (N, C, *spatial), or (N, *spatial, C) with ``channels_last``.  weight, bias,
    running_mean, running_var: (C,).  Returns ``(y, mean, rstd)``, mean/rstd (C,).

    Training: the batch mean and biased variance normalize; running statistics, when
    given, are updated in place as PyTorch does: ``r = (1 - f) * r + f * s`` with the
    unbiased batch variance for running_var, where f = momentum, or
    1 / num_batches_tracked when momentum is None (cumulative average; pass the
    counter already incremented for this batch).  One value per channel raises
    ValueError; none gives an empty y, NaN mean and rstd (0/0) and leaves the running
    statistics alone, as PyTorch.  Evaluation (training=False): the running statistics
    (only read, so read-only arrays do, and array-likes that convert to x's dtype)
    normalize and are returned as mean and 1/sqrt(running_var + eps).
    """
    if _config._backend == "cython":
        # num_batches_tracked counts only for momentum=None: the factor 1 / num_batches_tracked
        # (_momentum_factor), the one the layers pass with every training batch.  (Counters
        # beyond 2**53, where 1.0 / n may raise OverflowError, are left to the general path.)
        factor = momentum
        if momentum is None and type(num_batches_tracked) is int and 1 <= num_batches_tracked <= 2 ** 53:
            factor = 1.0 / num_batches_tracked
        result = _ext.batch_norm_fast(x, weight, bias, running_mean, running_var, training, factor,
                                      eps, channels_last, out, _GRAIN)
        if result is not None:
            return result
    func = "batch_norm"
    x = _x(func, x, 2)
    channels_last = _flag(func, "channels_last", channels_last)
    training = _flag(func, "training", training)
    c = _channels(x, channels_last)
    weight = _param(func, "weight", weight, (c,), x)
    bias = _param(func, "bias", bias, (c,), x)
    eps = _eps(func, eps)
    rm, rv = _running(func, running_mean, running_var, c, x, updated=training)
    factor = None
    if training:
        n = _count_per_channel(x, channels_last)
        # none is fine, as in PyTorch: x is then empty, for the reference below
        if n == 1:
            raise ValueError(f"{func}: expected more than 1 value per channel when training, "
                             f"got x of shape {x.shape}")
        if rm is not None:
            factor = _momentum_factor(func, momentum, num_batches_tracked)
    elif rm is None:
        raise ValueError(f"{func}: running_mean and running_var are required when training=False")
    if out is not None:
        check_out(func, out, x.shape, x.dtype)
        if training:
            _check_out_disjoint(func, out, (rm, rv))
    ext = _config.extension("normalization")
    if ext is None or x.size == 0:
        return reference.batch_norm(x, weight, bias, rm, rv, training=training,
                                    momentum=factor if factor is not None else momentum, eps=eps,
                                    channels_last=channels_last, out=out)
    cd = compute_dtype(x.dtype)
    # A Fortran-order x is read as the C-order x.T (its channels the same, the other axes
    # reversed), and y written in x's layout: no copy into C order (fn_layout.h) needed.
    if _fortran_only(x):
        xk, outk = x.T, None if out is None else out.T
        geometry = _transposed_channel_geometry(x, channels_last)
    else:
        xk, outk, geometry = x, out, _channel_geometry(x, channels_last)
    xc = _contiguous(xk)
    nthreads = _threads(x)
    if training:
        mean_d, m2 = np.empty(c), np.empty(c)
        ext.stats(xc.reshape(-1), *geometry, mean_d, m2, nthreads)
        var = m2 / n
        if rm is not None:
            _update_running(rm, mean_d, factor)
            _update_running(rv, m2 / (n - 1), factor)
    else:
        mean_d, var = rm.astype(_F64), rv.astype(_F64)
    rstd_d = _rstd(var, eps)
    y = _channel_affine(ext, xk, xc, outk, mean_d, rstd_d, weight, bias, geometry, nthreads)
    y = out if out is not None else y if xk is x else y.T
    return y, mean_d.astype(cd), rstd_d.astype(cd)


def _channel_affine(ext, x, xc, out, mean_d, rstd_d, weight, bias, geometry, nthreads):
    """y = (x - mean) * rstd * weight + bias per channel from the float64 statistics (C,),
    by the kernels' output pass (_affine_params) over xc, x made contiguous in the compute
    dtype, of (P, A, C, B) geometry; into out where it can, and delivered in x's dtype."""
    scale = rstd_d if weight is None else rstd_d * weight
    mhi, scale, shift = _affine_params(mean_d, scale, bias, xc.dtype)
    buf = _output_buffer(x, xc, out)
    ext.affine(xc.reshape(-1), buf.reshape(-1), *geometry, mhi, scale, shift, nthreads, buf is out)
    return _deliver(buf, x.dtype, out)


def batch_norm_backward(grad_output, x, weight, mean, rstd, *, training=True, channels_last=False,
                        bias=None):
    """Gradients of :func:`batch_norm`: ``(grad_x, grad_weight, grad_bias)``.

    mean, rstd: (C,) as the forward returned them.  With training=False the statistics
    are constants (grad_x = grad_output * weight * rstd).  grad_weight is None without
    weight; grad_bias is None unless ``bias`` is given.
    """
    if _config._backend == "cython":
        result = _ext.batch_norm_backward_fast(grad_output, x, weight, mean, rstd, training, channels_last,
                                               bias, _GRAIN)
        if result is not None:
            return result
    func = "batch_norm_backward"
    x = _x(func, x, 2)
    g = _grad_output(func, grad_output, x)
    channels_last = _flag(func, "channels_last", channels_last)
    training = _flag(func, "training", training)
    c = _channels(x, channels_last)
    weight = _param(func, "weight", weight, (c,), x)
    bias = _param(func, "bias", bias, (c,), x)
    mean = _stat(func, "mean", mean, (c,))
    rstd = _stat(func, "rstd", rstd, (c,))
    ext = _config.extension("normalization")
    if ext is None or x.size == 0:
        return reference.batch_norm_backward(g, x, weight, mean, rstd, training=training,
                                             channels_last=channels_last, bias=bias)
    cd = compute_dtype(x.dtype)
    # as in batch_norm: a Fortran-order x read as x.T (g taken in that layout), and grad_x
    # given x's layout
    if _fortran_only(x):
        xk, gk, geometry = x.T, g.T, _transposed_channel_geometry(x, channels_last)
    else:
        xk, gk, geometry = x, g, _channel_geometry(x, channels_last)
    xc, gc = _contiguous(xk), _contiguous(gk)
    n = _count_per_channel(x, channels_last)
    nthreads = _threads(x)
    mean_d, rstd_d = mean.astype(_F64), rstd.astype(_F64)
    s1, s2 = np.empty(c), np.empty(c)
    ext.dual_sums(gc.reshape(-1), xc.reshape(-1), *geometry, mean_d, s1, s2, nthreads)
    w = 1.0 if weight is None else weight.astype(_F64)
    k1 = np.broadcast_to(w * rstd_d, (c,))
    if training:
        k2 = -w * (rstd_d * rstd_d * rstd_d) * s2 / n  # as the fast path (** 3 rounds differently)
        k3 = -w * rstd_d * s1 / n
    else:
        k2 = k3 = np.zeros(c)
    gx = _config.empty(xk.shape, cd, like=xc)
    ext.affine_grad(gc.reshape(-1), xc.reshape(-1), gx.reshape(-1), *geometry, _vector(k1, cd),
                    _vector(mean, cd), _vector(k2, cd), _vector(k3, cd), nthreads)
    gw = None if weight is None else (rstd_d * s2).astype(weight.dtype)
    gb = None if bias is None else s1.astype(bias.dtype)
    gx = cast(gx, x.dtype)
    return gx if xk is x else gx.T, gw, gb


# ---------------------------------------------------------------------------- layer / RMS norm

# A Fortran-order x whose rows are normalized is read in place as x.T (the cols kernels,
# batch norm 1-D's column sums) when it has _COLS_MIN_ROWS rows or more, of two elements or
# more, and any out= is Fortran-order too (a C-order out would take NumPy's transposing copy
# of the result: (8192, 768) float32 32.7 ms, against 4.9 through the C-order copy of x).
# Any other layout is copied into C order, and so are fewer or one-element rows, whose y and
# grad_x are then copied back into Fortran order: y and grad_x come in x's layout either way.
# The cols kernels' loops run along x.T's rows, an element per row of x: float32 rows of 768,
# 1 thread, forward / backward, cols against the copies (both ways), us: 8 rows 5.4 / 19.3
# against 7.5 / 11.5, 16 rows 6.6 / 20.1 against 15.1 / 26.1, 64 rows 16.2 / 44.5 against
# 80.8 / 249 (the copy of rows a multiple of 4 KiB apart is slow).  The threshold is the
# compiled module's, whose fast path takes the same turns (the copies there NumPy's, for
# small arrays only).
_COLS_MIN_ROWS = getattr(_ext, "COLS_MIN_ROWS", 16)


def _by_columns(x, k, out=None):
    return (_fortran_only(x) and k >= 2 and x.size // k >= _COLS_MIN_ROWS
            and (out is None or _fortran_only(out)))


def _rows_forward(func, x, ns, weight, bias, eps, rms, out):
    cd = compute_dtype(x.dtype)
    k = math.prod(ns)
    m = x.size // k
    lead = x.shape[:x.ndim - len(ns)]
    ext = _config.extension("normalization")
    if _by_columns(x, k, out):
        # x.T is C-order, x's rows its columns, and its leading axes (x's trailing ones,
        # reversed) flatten to k in the order of the weight's transpose; the statistics come
        # in the order of x's leading axes reversed, y in x's layout.
        xk, outk = x.T, None if out is None else out.T
        xc = _contiguous(xk)
        wc = None if weight is None else _vector(weight.T, cd)
        bc = None if bias is None else _vector(bias.T, cd)
        buf = _output_buffer(xk, xc, outk, wc, bc)
        mean, rstd = np.empty(m, cd), np.empty(m, cd)
        ext.cols_forward(xc.reshape(-1), buf.reshape(-1), m, k, wc, bc, eps, rms, mean, rstd,
                         _threads(x), buf is outk)
        y = _deliver(buf, x.dtype, outk)
        return (out if out is not None else y.T), _lead_stat(mean, lead), _lead_stat(rstd, lead)
    xc = _contiguous(x)
    wc, bc = _vector(weight, cd), _vector(bias, cd)
    buf = _output_buffer(x, xc, out, wc, bc)
    mean, rstd = np.empty(m, cd), np.empty(m, cd)
    ext.rows_forward(xc.reshape(-1), buf.reshape(-1), m, k, wc, bc, eps, rms, mean, rstd, _threads(x),
                     buf is out)
    y = _deliver(buf, x.dtype, out)
    if out is None and _fortran_only(x):
        y = aligned_contiguous(y, order="F")
    return y, mean.reshape(lead), rstd.reshape(lead)


def _lead_stat(flat, lead):
    """A vector over x.T's columns or rows (the flattened transpose of an array of shape
    lead: x's leading axes for the statistics, the normalized ones for the parameter
    gradients) in lead's shape, C-contiguous, as the C-order path gives it."""
    return np.ascontiguousarray(flat.reshape(lead[::-1]).T)


def _rows_backward(func, g, x, ns, weight, mean, rstd, rms, want_gb):
    cd = compute_dtype(x.dtype)
    k = math.prod(ns)
    m = x.size // k
    ext = _config.extension("normalization")
    if _by_columns(x, k):
        # as in _rows_forward: x and g read as their transposes (g taken in that layout), the
        # statistics in the order of x.T's columns, and grad_x given x's layout
        xc, gc = _contiguous(x.T), _contiguous(g.T)
        gx = _config.empty(xc.shape, cd, like=xc)
        rstd_c = _vector(rstd.T, cd)
        mean_c = rstd_c if mean is None else _vector(mean.T, cd)
        gw, gb = ext.cols_backward(gc.reshape(-1), xc.reshape(-1), gx.reshape(-1), m, k,
                                   None if weight is None else _vector(weight.T, cd), mean_c, rstd_c,
                                   rms, weight is not None, want_gb, _threads(x))
        gw = None if gw is None else _lead_stat(gw, ns).astype(weight.dtype)
        gb = None if gb is None else _lead_stat(gb, ns)
        return cast(gx, x.dtype).T, gw, gb
    xc, gc = _contiguous(x), _contiguous(g)
    gx = _config.empty(x.shape, cd, like=xc)
    rstd_c = _vector(rstd, cd)
    mean_c = rstd_c if mean is None else _vector(mean, cd)
    gw, gb = ext.rows_backward(gc.reshape(-1), xc.reshape(-1), gx.reshape(-1), m, k,
                               _vector(weight, cd), mean_c, rstd_c, rms, weight is not None,
                               want_gb, _threads(x))
    gw = None if gw is None else gw.reshape(ns).astype(weight.dtype)
    gx = cast(gx, x.dtype)
    return (aligned_contiguous(gx, order="F") if _fortran_only(x) else gx), gw, gb


def layer_norm(x, normalized_shape, weight=None, bias=None, *, eps=1e-5, out=None):
    """Layer normalization over the trailing ``normalized_shape`` axes (biased variance).

    weight, bias: normalized_shape.  Returns ``(y, mean, rstd)``, mean/rstd of shape
    ``x.shape[:-len(normalized_shape)]`` (C order); y (and :func:`layer_norm_backward`'s
    grad_x) in Fortran order for a Fortran-order x (read as it lies from 16 rows of two
    elements or more without a C-order ``out``, else through a copy), else in C order.
    """
    if _config._backend == "cython":
        result = _ext.rows_forward_fast(x, normalized_shape, weight, bias, eps, False, out, _GRAIN)
        if result is not None:
            return result
    func = "layer_norm"
    x = _x(func, x, 1)
    ns = _normalized_shape(func, normalized_shape, x)
    weight = _param(func, "weight", weight, ns, x)
    bias = _param(func, "bias", bias, ns, x)
    eps = _eps(func, eps)
    if out is not None:
        check_out(func, out, x.shape, x.dtype)
    if _config.extension("normalization") is None or x.size == 0:
        return reference.layer_norm(x, ns, weight, bias, eps=eps, out=out)
    return _rows_forward(func, x, ns, weight, bias, eps, False, out)


def layer_norm_backward(grad_output, x, normalized_shape, weight, mean, rstd, *, bias=None):
    """Gradients of :func:`layer_norm`: ``(grad_x, grad_weight, grad_bias)``."""
    if _config._backend == "cython":
        result = _ext.rows_backward_fast(grad_output, x, normalized_shape, weight, mean, rstd, bias,
                                         False, _GRAIN)
        if result is not None:
            return result
    func = "layer_norm_backward"
    x = _x(func, x, 1)
    g = _grad_output(func, grad_output, x)
    ns = _normalized_shape(func, normalized_shape, x)
    weight = _param(func, "weight", weight, ns, x)
    bias = _param(func, "bias", bias, ns, x)
    lead = x.shape[:x.ndim - len(ns)]
    mean = _stat(func, "mean", mean, lead)
    rstd = _stat(func, "rstd", rstd, lead)
    if _config.extension("normalization") is None or x.size == 0:
        return reference.layer_norm_backward(g, x, ns, weight, mean, rstd, bias=bias)
    gx, gw, gb = _rows_backward(func, g, x, ns, weight, mean, rstd, False, bias is not None)
    return gx, gw, (None if gb is None else gb.reshape(ns).astype(bias.dtype))


def rms_norm(x, normalized_shape, weight=None, *, eps=None, out=None):
    """RMS normalization: ``x / sqrt(mean(x**2) + eps) * weight`` over the trailing
    ``normalized_shape`` axes; eps=None means the machine epsilon of the compute dtype
    (float32's for float16/float32 input), as torch.  Returns ``(y, rstd)``; layouts as
    :func:`layer_norm`'s."""
    if _config._backend == "cython":
        result = _ext.rows_forward_fast(x, normalized_shape, weight, None, eps, True, out, _GRAIN)
        if result is not None:
            return result[0], result[2]
    func = "rms_norm"
    x = _x(func, x, 1)
    ns = _normalized_shape(func, normalized_shape, x)
    weight = _param(func, "weight", weight, ns, x)
    eps = float(np.finfo(compute_dtype(x.dtype)).eps) if eps is None else _eps(func, eps)
    if out is not None:
        check_out(func, out, x.shape, x.dtype)
    if _config.extension("normalization") is None or x.size == 0:
        return reference.rms_norm(x, ns, weight, eps=eps, out=out)
    y, _, rstd = _rows_forward(func, x, ns, weight, None, eps, True, out)
    return y, rstd


def rms_norm_backward(grad_output, x, normalized_shape, weight, rstd):
    """Gradients of :func:`rms_norm`: ``(grad_x, grad_weight)`` (None without weight)."""
    if _config._backend == "cython":
        result = _ext.rows_backward_fast(grad_output, x, normalized_shape, weight, None, rstd, None,
                                         True, _GRAIN)
        if result is not None:
            return result[:2]
    func = "rms_norm_backward"
    x = _x(func, x, 1)
    g = _grad_output(func, grad_output, x)
    ns = _normalized_shape(func, normalized_shape, x)
    weight = _param(func, "weight", weight, ns, x)
    rstd = _stat(func, "rstd", rstd, x.shape[:x.ndim - len(ns)])
    if _config.extension("normalization") is None or x.size == 0:
        return reference.rms_norm_backward(g, x, ns, weight, rstd)
    gx, gw, _ = _rows_backward(func, g, x, ns, weight, None, rstd, True, False)
    return gx, gw


# ---------------------------------------------------------------------------- group / instance norm

def _group_geometry(x, channels_last):
    n, c = x.shape[0], _channels(x, channels_last)
    hw = x.size // (n * c)
    return n, c, hw


def _apply_geometry(n, c, hw, channels_last):
    """(P, A, C, B) with one parameter per (sample, channel)."""
    return (n, hw, c, 1) if channels_last else (1, 1, n * c, hw)


def _group_forward(ext, xc, out_buf, n, groups, cg, hw, weight, bias, eps, nthreads, callers_out):
    """NCHW group norm (instance norm: cg = 1) in one pass per group; (mean, M2) per
    (sample, group) as float64 (N, G).  callers_out: out_buf is the caller's out=."""
    cd = xc.dtype
    mean, m2 = np.empty(n * groups), np.empty(n * groups)
    ext.group_forward(xc.reshape(-1), out_buf.reshape(-1), groups, cg, hw, _vector(weight, cd),
                      _vector(bias, cd), eps, mean, m2, nthreads, callers_out)
    return mean.reshape(n, groups), m2.reshape(n, groups)


def _group_apply(ext, xc, out_buf, n, c, hw, groups, mean, rstd, weight, bias, nthreads, callers_out):
    """NCHW output pass with given per-(sample, group) statistics (float64 (N, G))."""
    cd = xc.dtype
    cg = c // groups
    mean_nc = np.repeat(mean, cg, axis=1)
    scale = np.repeat(rstd, cg, axis=1)
    if weight is not None:
        scale = scale * weight.astype(_F64)
    mhi, scale, shift = _affine_params(mean_nc, scale, bias, cd)
    ext.affine(xc.reshape(-1), out_buf.reshape(-1), *_apply_geometry(n, c, hw, False),
               mhi.reshape(-1), scale.reshape(-1), shift.reshape(-1), nthreads, callers_out)


def _group_backward(ext, g, x, groups, channels_last, weight, bias, mean, rstd, training):
    cd = compute_dtype(x.dtype)
    n, c, hw = _group_geometry(x, channels_last)
    cg = c // groups
    xc, gc = _contiguous(x), _contiguous(g)
    nthreads = _threads(x)
    rstd_g = rstd.astype(_F64)
    if training and channels_last:  # per-channel sums merged per group (group_backward_cl)
        gx = _config.empty(x.shape, cd, like=xc)
        gw, gb = ext.group_backward_cl(gc.reshape(-1), xc.reshape(-1), gx.reshape(-1), c, groups,
                                       _vector(weight, cd), mean.astype(_F64).reshape(-1),
                                       _vector(mean, cd), _vector(rstd_g, _F64),
                                       weight is not None, bias is not None, nthreads)
        return (cast(gx, x.dtype), None if gw is None else gw.astype(weight.dtype),
                None if gb is None else gb.astype(bias.dtype))
    if training:  # channels first: one visit per group (fn_norm_group_backward)
        gx = _config.empty(x.shape, cd, like=xc)
        s1, s2 = np.empty(n * c), np.empty(n * c)
        rstd_nc = np.repeat(rstd_g, cg, axis=1)
        ext.group_backward(gc.reshape(-1), xc.reshape(-1), gx.reshape(-1), groups, cg, hw,
                           _vector(weight, cd), mean.astype(_F64).reshape(-1), _vector(mean, cd),
                           _vector(rstd_g, _F64), s1, s2, nthreads)
        s1, s2 = s1.reshape(n, c), s2.reshape(n, c)
        gw = None if weight is None else (rstd_nc * s2).sum(axis=0).astype(weight.dtype)
        gb = None if bias is None else s1.sum(axis=0).astype(bias.dtype)
        return cast(gx, x.dtype), gw, gb
    # statistics given (instance norm with use_input_stats=False): constants in the gradient
    geometry = _apply_geometry(n, c, hw, channels_last)
    rstd_nc = np.repeat(rstd_g, cg, axis=1)
    mean_nc = np.repeat(mean.astype(_F64), cg, axis=1)
    s1, s2 = np.empty(n * c), np.empty(n * c)
    ext.dual_sums(gc.reshape(-1), xc.reshape(-1), *geometry, mean_nc.reshape(-1), s1, s2, nthreads)
    s1, s2 = s1.reshape(n, c), s2.reshape(n, c)
    k1 = rstd_nc if weight is None else rstd_nc * weight.astype(_F64)
    k2 = k3 = np.zeros((n, c))
    gx = _config.empty(x.shape, cd, like=xc)
    ext.affine_grad(gc.reshape(-1), xc.reshape(-1), gx.reshape(-1), *geometry, _vector(k1, cd),
                    _vector(np.repeat(mean, cg, axis=1), cd), _vector(k2, cd), _vector(k3, cd), nthreads)
    gw = None if weight is None else (rstd_nc * s2).sum(axis=0).astype(weight.dtype)
    gb = None if bias is None else s1.sum(axis=0).astype(bias.dtype)
    return cast(gx, x.dtype), gw, gb


def group_norm(x, num_groups, weight=None, bias=None, *, eps=1e-5, channels_last=False, out=None):
    """Group normalization: each sample's channels split into ``num_groups`` groups of
    consecutive channels, each group normalized over its channels and spatial positions
    (biased variance), then a per-channel affine.

    x: (N, C, *spatial), or (N, *spatial, C) with ``channels_last``; num_groups divides
    C; weight, bias: (C,).  Returns ``(y, mean, rstd)``, mean/rstd of shape (N, num_groups).
    """
    if _config._backend == "cython":
        result = _ext.group_norm_fast(x, num_groups, weight, bias, eps, channels_last, out, _GRAIN)
        if result is not None:
            return result
    func = "group_norm"
    x = _x(func, x, 2)
    channels_last = _flag(func, "channels_last", channels_last)
    c = _channels(x, channels_last)
    groups = _num_groups(func, num_groups, c)
    weight = _param(func, "weight", weight, (c,), x)
    bias = _param(func, "bias", bias, (c,), x)
    eps = _eps(func, eps)
    if out is not None:
        check_out(func, out, x.shape, x.dtype)
    ext = _config.extension("normalization")
    if ext is None or x.size == 0:
        return reference.group_norm(x, groups, weight, bias, eps=eps, channels_last=channels_last, out=out)
    cd = compute_dtype(x.dtype)
    n, c, hw = _group_geometry(x, channels_last)
    xc = _contiguous(x)
    nthreads = _threads(x)
    if channels_last:
        buf = _output_buffer(x, xc, out)
        mean, rstd = np.empty((n, groups), cd), np.empty((n, groups), cd)
        ext.group_forward_cl(xc.reshape(-1), buf.reshape(-1), c, groups, _vector(weight, cd),
                             _vector(bias, cd), eps, mean.reshape(-1), rstd.reshape(-1), nthreads,
                             buf is out)
        return _deliver(buf, x.dtype, out), mean, rstd
    buf = _output_buffer(x, xc, out, weight, bias)
    mean, m2 = _group_forward(ext, xc, buf, n, groups, c // groups, hw, weight, bias, eps, nthreads,
                              buf is out)
    rstd = _rstd(m2 / (c // groups * hw), eps)
    return _deliver(buf, x.dtype, out), mean.astype(cd), rstd.astype(cd)


def group_norm_backward(grad_output, x, num_groups, weight, mean, rstd, *, channels_last=False,
                        bias=None):
    """Gradients of :func:`group_norm`: ``(grad_x, grad_weight, grad_bias)``; mean/rstd
    (N, num_groups) as the forward returned them."""
    if _config._backend == "cython":
        result = _ext.group_norm_backward_fast(grad_output, x, num_groups, weight, mean, rstd,
                                               channels_last, bias, _GRAIN)
        if result is not None:
            return result
    func = "group_norm_backward"
    x = _x(func, x, 2)
    g = _grad_output(func, grad_output, x)
    channels_last = _flag(func, "channels_last", channels_last)
    c = _channels(x, channels_last)
    groups = _num_groups(func, num_groups, c)
    weight = _param(func, "weight", weight, (c,), x)
    bias = _param(func, "bias", bias, (c,), x)
    mean = _stat(func, "mean", mean, (x.shape[0], groups))
    rstd = _stat(func, "rstd", rstd, (x.shape[0], groups))
    ext = _config.extension("normalization")
    if ext is None or x.size == 0:
        return reference.group_norm_backward(g, x, groups, weight, mean, rstd,
                                             channels_last=channels_last, bias=bias)
    return _group_backward(ext, g, x, groups, channels_last, weight, bias, mean, rstd, True)


def instance_norm(x, weight=None, bias=None, running_mean=None, running_var=None, *,
                  use_input_stats=True, momentum=0.1, eps=1e-5, out=None):
    """Instance normalization (``F.instance_norm``): each (sample, channel) normalized over
    the spatial axes -- group norm with one channel per group.

    x: (N, C, *spatial); weight, bias, running_mean, running_var: (C,).  Returns
    ``(y, mean, rstd)``, mean/rstd (N, C).  With use_input_stats (the default) the
    instance statistics normalize (one spatial element raises ValueError; none gives an
    empty y, NaN mean and rstd and leaves the running statistics alone) and running
    statistics, when given, are updated in place with the batch average of the
    instance mean and unbiased variance (factor momentum); without it the running
    statistics normalize (they are then required, and only read).
    """
    if _config._backend == "cython" and type(x) is np.ndarray and x.ndim >= 3:
        if use_input_stats is True and x.size != x.shape[0] * x.shape[1]:
            # group norm with a group per channel, the same kernel and arithmetic (bit-identical)
            result = _ext.group_norm_fast(x, x.shape[1], weight, bias, eps, False, out, _GRAIN,
                                          running_mean, running_var, momentum)
            if result is not None:
                return result
        elif use_input_stats is False and running_mean is not None:
            # batch norm's evaluation: the running statistics are per channel, the returned
            # mean and rstd broadcast to (N, C) as the general path returns them
            result = _ext.batch_norm_fast(x, weight, bias, running_mean, running_var, False, momentum,
                                          eps, False, out, _GRAIN)
            if result is not None:
                y, mean, rstd = result
                lead = (x.shape[0], x.shape[1])
                return y, np.broadcast_to(mean, lead).copy(), np.broadcast_to(rstd, lead).copy()
    func = "instance_norm"
    x = _x(func, x, 2)
    use_input_stats = _flag(func, "use_input_stats", use_input_stats)
    c = x.shape[1]
    weight = _param(func, "weight", weight, (c,), x)
    bias = _param(func, "bias", bias, (c,), x)
    eps = _eps(func, eps)
    rm, rv = _running(func, running_mean, running_var, c, x, updated=use_input_stats)
    n, _, hw = (x.shape[0], c, math.prod(x.shape[2:]))
    if use_input_stats:
        # none is fine, as in PyTorch: x is then empty, for the reference below
        if hw == 1:
            raise ValueError(f"{func}: expected more than 1 spatial element when use_input_stats=True, "
                             f"got x of shape {x.shape}")
        if rm is not None:
            momentum = check_real(func, "momentum", momentum)
    elif rm is None:
        raise ValueError(f"{func}: running_mean and running_var are required when use_input_stats=False")
    if out is not None:
        check_out(func, out, x.shape, x.dtype)
        if use_input_stats:
            _check_out_disjoint(func, out, (rm, rv))
    ext = _config.extension("normalization")
    if ext is None or x.size == 0:
        return reference.instance_norm(x, weight, bias, rm, rv, use_input_stats=use_input_stats,
                                       momentum=momentum, eps=eps, out=out)
    cd = compute_dtype(x.dtype)
    xc = _contiguous(x)
    nthreads = _threads(x)
    if use_input_stats:
        buf = _output_buffer(x, xc, out, weight, bias)
        mean, m2 = _group_forward(ext, xc, buf, n, c, 1, hw, weight, bias, eps, nthreads, buf is out)
        rstd = _rstd(m2 / hw, eps)
        if rm is not None:
            batch_mean, batch_var = ext.instance_batch_stats(mean.reshape(-1), m2.reshape(-1), c, hw)
            _update_running(rm, batch_mean, momentum)
            _update_running(rv, batch_var, momentum)
    else:
        mean = np.broadcast_to(rm.astype(_F64), (n, c))
        rstd = _rstd(np.broadcast_to(rv.astype(_F64), (n, c)), eps)
        buf = _output_buffer(x, xc, out)
        _group_apply(ext, xc, buf, n, c, hw, c, mean, rstd, weight, bias, nthreads, buf is out)
    return _deliver(buf, x.dtype, out), mean.astype(cd), rstd.astype(cd)


def instance_norm_backward(grad_output, x, weight, mean, rstd, *, use_input_stats=True, bias=None):
    """Gradients of :func:`instance_norm`: ``(grad_x, grad_weight, grad_bias)``; mean/rstd
    (N, C) as the forward returned them; constants when use_input_stats=False."""
    if (_config._backend == "cython" and use_input_stats is True and type(x) is np.ndarray
            and x.ndim >= 2):
        result = _ext.group_norm_backward_fast(grad_output, x, x.shape[1], weight, mean, rstd, False,
                                               bias, _GRAIN)
        if result is not None:
            return result
    func = "instance_norm_backward"
    x = _x(func, x, 2)
    g = _grad_output(func, grad_output, x)
    use_input_stats = _flag(func, "use_input_stats", use_input_stats)
    c = x.shape[1]
    weight = _param(func, "weight", weight, (c,), x)
    bias = _param(func, "bias", bias, (c,), x)
    mean = _stat(func, "mean", mean, x.shape[:2])
    rstd = _stat(func, "rstd", rstd, x.shape[:2])
    ext = _config.extension("normalization")
    if ext is None or x.size == 0:
        return reference.instance_norm_backward(g, x, weight, mean, rstd,
                                                use_input_stats=use_input_stats, bias=bias)
    return _group_backward(ext, g, x, c, False, weight, bias, mean, rstd, use_input_stats)
