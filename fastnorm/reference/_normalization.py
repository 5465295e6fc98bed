"""NumPy reference of the normalization functions: the test oracle and the fallback backend.

Same functions, signatures and semantics as :mod:`fastnorm.normalization`, written as
plain textbook NumPy in float64 (two-pass variance), whatever the input dtype, then
rounded once: ``y`` to the input's dtype, ``mean``/``rstd`` to the compute dtype
(float32 for float16/float32 input, float64 for float64), parameter gradients to the
parameter's dtype.  Arguments are assumed valid (the public module validates them);
running statistics are updated in place as PyTorch does.
"""
import contextvars
import functools
import math
from typing import NamedTuple

import numpy as np

__all__ = ["moments", "merge_moments", "PartialMoments", "batch_norm", "batch_norm_backward",
           "layer_norm", "layer_norm_backward", "group_norm", "group_norm_backward", "instance_norm", "instance_norm_backward",
           "rms_norm", "rms_norm_backward"]

_F64 = np.float64


# The caller's np.geterr() while a _silent_on_nonfinite function runs (None outside one).
_callers_errstate = contextvars.ContextVar("fastnorm_reference_errstate", default=None)


def _silent_on_nonfinite(fn):
    """Run fn with NumPy's floating-point warnings off: NaN/Inf in the data propagate into
    the affected channel/row/group silently, as on the compiled backend (but for the
    parameter gradients' rounding, _param_grads)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        token = _callers_errstate.set(np.geterr())
        try:
            with np.errstate(all="ignore"):
                return fn(*args, **kwargs)
        finally:
            _callers_errstate.reset(token)
    return wrapper


def _cdtype(dtype):
    return np.dtype(np.float32) if dtype == np.float16 else np.dtype(dtype)


def _d(a):
    return None if a is None else np.asarray(a, dtype=_F64)


def _mean(a, axis, keepdims=False):
    """a.mean(axis), the same sum and division (the same bits), but NaN (0/0) over empty axes
    without NumPy's "Mean of empty slice" warning: undefined statistics flow on silently,
    as on the compiled backend."""
    axis = (axis,) if np.ndim(axis) == 0 else axis
    return a.sum(axis=axis, keepdims=keepdims) / math.prod(a.shape[i] for i in axis)


def _finish(y, dtype, out):
    if out is None:
        return y.astype(dtype)
    np.copyto(out, y, casting="unsafe")
    return out


def _axes(ndim, axis):
    if axis is None:
        return tuple(range(ndim))
    if np.ndim(axis) == 0:
        axis = (axis,)
    return tuple(sorted(int(a) % ndim for a in axis)) if ndim else ()


class PartialMoments(NamedTuple):
    """Mergeable statistics of a part of the data: ``count`` (int, values per feature),
    ``mean`` and ``m2`` = sum((x - mean)**2) (float64 arrays, one value per feature).
    An empty part is (0, 0, 0), the identity of :func:`merge_moments`."""
    count: int
    mean: np.ndarray
    m2: np.ndarray

    def var(self, ddof=0):
        """m2 / (count - ddof) (float64), NaN where count - ddof <= 0."""
        with np.errstate(all="ignore"):
            if self.count - ddof > 0:
                return np.asarray(self.m2 / (self.count - ddof))
            return np.full(np.shape(self.m2), np.nan)


def _merge_two(a, b):
    """Chan, Golub & LeVeque's pairwise update: exact in exact arithmetic, and
    without the cancellation of sum(x**2) - n * mean**2.  Where a part's mean is not
    finite (an infinity or NaN in it), the update's a.mean + (b.mean - a.mean) * w would
    be inf - inf = NaN; the count-weighted sum of the means is taken there, which is the
    infinity (NaN for infinities of both signs or a NaN), as np.mean over the union."""
    if b.count == 0:
        return a
    if a.count == 0:
        return b
    n = a.count + b.count
    with np.errstate(invalid="ignore"):
        delta = b.mean - a.mean
        mean = a.mean + delta * (b.count / n)
        m2 = a.m2 + b.m2 + delta * delta * (a.count * (b.count / n))
        finite = np.isfinite(a.mean) & np.isfinite(b.mean)
        if not finite.all():
            mean = np.where(finite, mean, a.mean * (a.count / n) + b.mean * (b.count / n))
    return PartialMoments(n, mean, m2)


def merge_moments(partials):
    """Combine PartialMoments of disjoint parts into those of their union: pairwise
    (a balanced tree over the given order, so rounding grows with log(parts))."""
    level = [PartialMoments(int(c), np.asarray(m, dtype=_F64), np.asarray(q, dtype=_F64))
             for c, m, q in partials]
    if not level:
        raise ValueError("merge_moments: partials must contain at least one PartialMoments, got none")
    while len(level) > 1:
        level = [_merge_two(level[i], level[i + 1]) if i + 1 < len(level) else level[i]
                 for i in range(0, len(level), 2)]
    return level[0]


def moments(x, axis=None, *, ddof=0, partial=False):
    """(mean, var) over ``axis`` (an int, a tuple of ints or None for all axes);
    var = sum((x - mean)**2) / (n - ddof), NaN where n - ddof <= 0.  partial=True
    returns PartialMoments(n, mean, m2) in float64 instead (ddof is then unused)."""
    x = np.asarray(x)
    axes = _axes(x.ndim, axis)
    n = int(np.prod([x.shape[a] for a in axes], dtype=np.int64))
    xd = x.astype(_F64)
    if partial:
        if n == 0:
            zeros = np.zeros([s for i, s in enumerate(x.shape) if i not in axes])
            return PartialMoments(0, zeros, zeros.copy())
        mean = xd.mean(axis=axes, keepdims=True)
        with np.errstate(invalid="ignore"):  # inf - inf: NaN, as in the compiled kernels
            m2 = ((xd - mean) ** 2).sum(axis=axes)
        return PartialMoments(n, np.asarray(np.squeeze(mean, axis=axes)), np.asarray(m2))
    with np.errstate(all="ignore"):
        mean = xd.mean(axis=axes, keepdims=True) if n else np.full(
            [1 if i in axes else s for i, s in enumerate(x.shape)], np.nan)
        m2 = ((xd - mean) ** 2).sum(axis=axes)
        var = m2 / (n - ddof) if n - ddof > 0 else np.full(m2.shape, np.nan)
    cd = _cdtype(x.dtype)
    return np.squeeze(mean, axis=axes).astype(cd), np.asarray(var).astype(cd)


def _channel_geometry(x, channels_last):
    cax = x.ndim - 1 if channels_last else 1
    axes = tuple(a for a in range(x.ndim) if a != cax)
    shape = [1] * x.ndim
    shape[cax] = x.shape[cax]
    return axes, shape


def _affine(xhat, weight, bias, shape):
    if weight is not None:
        xhat = xhat * (_d(weight) if shape is None else _d(weight).reshape(shape))
    if bias is not None:
        xhat = xhat + (_d(bias) if shape is None else _d(bias).reshape(shape))
    return xhat


def _update_running(running, batch, factor):
    running[...] = ((1.0 - factor) * running.astype(_F64) + factor * batch).astype(running.dtype)


@_silent_on_nonfinite
def batch_norm(x, weight=None, bias=None, running_mean=None, running_var=None, *, training=True,
               momentum=0.1, eps=1e-5, num_batches_tracked=None, channels_last=False, out=None):
    """Batch norm over every axis but the channel axis (1, or the last with channels_last).

    Returns ``(y, mean, rstd)``, mean/rstd of shape (C,).  Training normalizes with the
    batch statistics (biased variance) and, when running statistics are given, updates
    them in place: ``r = (1 - f) r + f * stat`` with the unbiased batch variance, where
    ``f = momentum``, or ``1 / num_batches_tracked`` when momentum is None; no values per
    channel give NaN mean/rstd and leave them alone.  Evaluation normalizes with the
    running statistics (and returns them as mean/rstd).
    """
    x = np.asarray(x)
    axes, shape = _channel_geometry(x, channels_last)
    xd = x.astype(_F64)
    if training:
        mean = _mean(xd, axes)
        var = _mean((xd - mean.reshape(shape)) ** 2, axes)
        n = math.prod(x.shape[a] for a in axes)
        if running_mean is not None and n > 0:  # no values: nothing to average in (PyTorch)
            factor = momentum if momentum is not None else 1.0 / num_batches_tracked
            _update_running(running_mean, mean, factor)
            _update_running(running_var, var * n / (n - 1), factor)
    else:
        mean, var = _d(running_mean), _d(running_var)
    rstd = 1.0 / np.sqrt(var + eps)
    y = _affine((xd - mean.reshape(shape)) * rstd.reshape(shape), weight, bias, shape)
    cd = _cdtype(x.dtype)
    # the statistics first: in evaluation out may share memory with the running ones
    mean, rstd = mean.astype(cd), rstd.astype(cd)
    return _finish(y, x.dtype, out), mean, rstd


def _param_grads(g, xhat, axes, weight, bias):
    """The float64 weight and bias gradients rounded to the parameters' dtype under the
    caller's floating-point settings: a float32 gradient beyond float32's range is inf with
    NumPy's overflow warning (or error), as the compiled backend gives it."""
    gw = None if weight is None else (g * xhat).sum(axis=axes)
    gb = None if bias is None else g.sum(axis=axes)
    with np.errstate(**(_callers_errstate.get() or np.geterr())):
        return (None if gw is None else gw.astype(np.asarray(weight).dtype),
                None if gb is None else gb.astype(np.asarray(bias).dtype))


@_silent_on_nonfinite
def batch_norm_backward(grad_output, x, weight, mean, rstd, *, training=True, channels_last=False,
                        bias=None):
    """(grad_x, grad_weight, grad_bias) of :func:`batch_norm`; in evaluation mode the
    statistics are constants.  grad_weight is None without weight, grad_bias None
    without bias (only its presence matters)."""
    x = np.asarray(x)
    axes, shape = _channel_geometry(x, channels_last)
    g, xd = _d(grad_output), x.astype(_F64)
    mean, rstd = _d(mean).reshape(shape), _d(rstd).reshape(shape)
    xhat = (xd - mean) * rstd
    w = 1.0 if weight is None else _d(weight).reshape(shape)
    if training:
        n = math.prod(x.shape[a] for a in axes)
        gx = (w * rstd / n) * (n * g - g.sum(axis=axes, keepdims=True)
                               - xhat * (g * xhat).sum(axis=axes, keepdims=True))
    else:
        gx = g * w * rstd
    return (gx.astype(x.dtype), *_param_grads(g, xhat, axes, weight, bias))


def _normalized_shape(normalized_shape):
    return (int(normalized_shape),) if np.ndim(normalized_shape) == 0 else tuple(int(s) for s in normalized_shape)


@_silent_on_nonfinite
def layer_norm(x, normalized_shape, weight=None, bias=None, *, eps=1e-5, out=None):
    """Normalize over the trailing ``normalized_shape`` axes (biased variance); weight and
    bias have shape normalized_shape.  Returns ``(y, mean, rstd)``, mean/rstd of shape
    ``x.shape[:-len(normalized_shape)]``."""
    x = np.asarray(x)
    axes = tuple(range(x.ndim - len(_normalized_shape(normalized_shape)), x.ndim))
    xd = x.astype(_F64)
    mean = _mean(xd, axes, keepdims=True)
    rstd = 1.0 / np.sqrt(_mean((xd - mean) ** 2, axes, keepdims=True) + eps)
    y = _affine((xd - mean) * rstd, weight, bias, None)
    cd = _cdtype(x.dtype)
    return _finish(y, x.dtype, out), np.squeeze(mean, axes).astype(cd), np.squeeze(rstd, axes).astype(cd)


@_silent_on_nonfinite
def layer_norm_backward(grad_output, x, normalized_shape, weight, mean, rstd, *, bias=None):
    """(grad_x, grad_weight, grad_bias) of :func:`layer_norm`."""
    x = np.asarray(x)
    k = len(_normalized_shape(normalized_shape))
    axes = tuple(range(x.ndim - k, x.ndim))
    lead = tuple(range(x.ndim - k))
    g, xd = _d(grad_output), x.astype(_F64)
    mean = _d(mean).reshape(x.shape[:x.ndim - k] + (1,) * k)
    rstd = _d(rstd).reshape(mean.shape)
    xhat = (xd - mean) * rstd
    gy = g if weight is None else g * _d(weight)
    gx = rstd * (gy - _mean(gy, axes, keepdims=True)
                 - xhat * _mean(gy * xhat, axes, keepdims=True))
    return (gx.astype(x.dtype), *_param_grads(g, xhat, lead, weight, bias))


def _grouped(a, num_groups):
    """(N, C, *spatial) as (N, G, C/G * prod(spatial)) (a copy is fine in the oracle); the
    last size is spelled out, which -1 cannot be when N = 0."""
    return a.reshape(a.shape[0], num_groups, math.prod(a.shape[1:]) // num_groups)


def _to_channels_first(a):
    return np.moveaxis(a, -1, 1)


@_silent_on_nonfinite
def group_norm(x, num_groups, weight=None, bias=None, *, eps=1e-5, channels_last=False, out=None):
    """Normalize each sample's channel groups (C/num_groups consecutive channels and all
    spatial positions; biased variance), then a per-channel affine.  Returns
    ``(y, mean, rstd)``, mean/rstd of shape (N, num_groups)."""
    x = np.asarray(x)
    xc = _to_channels_first(x) if channels_last else x
    xg = _grouped(xc.astype(_F64), num_groups)
    mean = _mean(xg, 2)
    rstd = 1.0 / np.sqrt(_mean((xg - mean[:, :, None]) ** 2, 2) + eps)
    y = ((xg - mean[:, :, None]) * rstd[:, :, None]).reshape(xc.shape)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    y = _affine(y, weight, bias, shape)
    if channels_last:
        y = np.moveaxis(y, 1, -1)
    cd = _cdtype(x.dtype)
    return _finish(y, x.dtype, out), mean.astype(cd), rstd.astype(cd)


def _expand_group_stats(stat, num_groups, channels):
    return np.repeat(_d(stat), channels // num_groups, axis=1)  # (N, C)


@_silent_on_nonfinite
def group_norm_backward(grad_output, x, num_groups, weight, mean, rstd, *, channels_last=False,
                        bias=None):
    """(grad_x, grad_weight, grad_bias) of :func:`group_norm`."""
    x = np.asarray(x)
    g, xd = _d(grad_output), x.astype(_F64)
    if channels_last:
        g, xd = _to_channels_first(g), _to_channels_first(xd)
    n, c = xd.shape[:2]
    spatial = (1,) * (xd.ndim - 2)
    mean_c = _expand_group_stats(mean, num_groups, c).reshape((n, c) + spatial)
    rstd_c = _expand_group_stats(rstd, num_groups, c).reshape((n, c) + spatial)
    xhat = (xd - mean_c) * rstd_c
    gy = g if weight is None else g * _d(weight).reshape((1, c) + spatial)
    gyg, xhg = _grouped(gy, num_groups), _grouped(xhat, num_groups)
    gxg = (gyg - _mean(gyg, 2, keepdims=True) - xhg * _mean(gyg * xhg, 2, keepdims=True))
    gx = gxg.reshape(xd.shape) * rstd_c
    gw, gb = _param_grads(g, xhat, (0,) + tuple(range(2, xd.ndim)), weight, bias)
    if channels_last:
        gx = np.moveaxis(gx, 1, -1)
    return gx.astype(x.dtype), gw, gb


@_silent_on_nonfinite
def instance_norm(x, weight=None, bias=None, running_mean=None, running_var=None, *,
                  use_input_stats=True, momentum=0.1, eps=1e-5, out=None):
    """Normalize each (sample, channel) over the spatial axes, as F.instance_norm.

    Returns ``(y, mean, rstd)`` of shape (N, C).  With use_input_stats, running
    statistics (shape (C,)), when given, are updated in place with the average over
    the batch of the per-instance statistics (unbiased variance), as PyTorch does (an
    empty x leaves them alone); without it the running statistics normalize.
    """
    x = np.asarray(x)
    n, c = x.shape[:2]
    xd = x.astype(_F64)
    axes = tuple(range(2, x.ndim))
    spatial = (1,) * (x.ndim - 2)
    if use_input_stats:
        mean = _mean(xd, axes)
        var = _mean((xd - mean.reshape((n, c) + spatial)) ** 2, axes)
        if running_mean is not None and x.size:  # no values: nothing to average in
            m = x.size // (n * c)
            _update_running(running_mean, mean.mean(axis=0), momentum)
            _update_running(running_var, (var * m / (m - 1)).mean(axis=0), momentum)
    else:
        mean = np.broadcast_to(_d(running_mean), (n, c))
        var = np.broadcast_to(_d(running_var), (n, c))
    rstd = 1.0 / np.sqrt(var + eps)
    y = (xd - mean.reshape((n, c) + spatial)) * rstd.reshape((n, c) + spatial)
    y = _affine(y, weight, bias, (1, c) + spatial)
    cd = _cdtype(x.dtype)
    # the statistics first: without use_input_stats out may share memory with the running ones
    mean, rstd = mean.astype(cd), rstd.astype(cd)
    return _finish(y, x.dtype, out), mean, rstd


@_silent_on_nonfinite
def instance_norm_backward(grad_output, x, weight, mean, rstd, *, use_input_stats=True, bias=None):
    """(grad_x, grad_weight, grad_bias) of :func:`instance_norm` (statistics constant
    without use_input_stats)."""
    x = np.asarray(x)
    n, c = x.shape[:2]
    if use_input_stats:
        return group_norm_backward(grad_output, x, c, weight, mean, rstd, bias=bias)
    spatial = (1,) * (x.ndim - 2)
    g, xd = _d(grad_output), x.astype(_F64)
    mean, rstd = _d(mean).reshape((n, c) + spatial), _d(rstd).reshape((n, c) + spatial)
    xhat = (xd - mean) * rstd
    w = 1.0 if weight is None else _d(weight).reshape((1, c) + spatial)
    gx = g * w * rstd
    return (gx.astype(x.dtype), *_param_grads(g, xhat, (0,) + tuple(range(2, x.ndim)), weight, bias))


@_silent_on_nonfinite
def rms_norm(x, normalized_shape, weight=None, *, eps=None, out=None):
    """x / sqrt(mean(x**2 over the trailing normalized_shape axes) + eps) * weight;
    eps=None means the machine epsilon of the compute dtype.  Returns ``(y, rstd)``."""
    x = np.asarray(x)
    axes = tuple(range(x.ndim - len(_normalized_shape(normalized_shape)), x.ndim))
    cd = _cdtype(x.dtype)
    if eps is None:
        eps = float(np.finfo(cd).eps)
    xd = x.astype(_F64)
    rstd = 1.0 / np.sqrt(_mean(xd * xd, axes, keepdims=True) + eps)
    y = _affine(xd * rstd, weight, None, None)
    return _finish(y, x.dtype, out), np.squeeze(rstd, axes).astype(cd)


@_silent_on_nonfinite
def rms_norm_backward(grad_output, x, normalized_shape, weight, rstd):
    """(grad_x, grad_weight) of :func:`rms_norm`; grad_weight is None without weight."""
    x = np.asarray(x)
    k = len(_normalized_shape(normalized_shape))
    axes = tuple(range(x.ndim - k, x.ndim))
    g, xd = _d(grad_output), x.astype(_F64)
    rstd = _d(rstd).reshape(x.shape[:x.ndim - k] + (1,) * k)
    xhat = xd * rstd
    gy = g if weight is None else g * _d(weight)
    gx = rstd * (gy - xhat * _mean(gy * xhat, axes, keepdims=True))
    return gx.astype(x.dtype), _param_grads(g, xhat, tuple(range(x.ndim - k)), weight, None)[0]

