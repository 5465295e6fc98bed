"""Property-based fuzzing of every kernel family against the NumPy oracle.

Hypothesis draws shapes (including empty and size-1 axes), memory layouts (Fortran
order, transposes, negative strides, step slices, zero strides from np.broadcast_to),
dtypes, parameters and special values (NaN, +-Inf, -0, huge), runs the public function
on every backend (avx2, base, NumPy) and compares with ``fastnorm.reference`` evaluated
in float64.  The default profile runs 60 examples per test; for nightly-style runs:

    FASTNORM_HYPOTHESIS_PROFILE=long python -m pytest tests/test_robust_fuzz.py

(2000 examples per test, registered in tests/conftest.py).
"""
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st

import fastnorm
from fastnorm import reference

F16, F32, F64 = np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)
TOL = {F16: 1e-2, F32: 2e-5, F64: 1e-11}
SPECIAL = np.array([np.nan, np.inf, -np.inf, -0.0, 0.0, 1e30, -1e30, 1e-40])

dtypes = st.sampled_from([F16, F32, F64])
# The backend fixture only selects a kernel variant: sharing it across examples is intended.
fuzz = settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@st.composite
def arrays(draw, min_ndim=0, max_ndim=4, max_side=6, dtype=None, special=True, shape=None):
    """(array in some layout, its dense C-order copy) of a drawn shape and dtype."""
    dtype = dtype or draw(dtypes)
    if shape is None:
        ndim = draw(st.integers(min_ndim, max_ndim))
        shape = tuple(draw(st.lists(st.integers(0, max_side), min_size=ndim, max_size=ndim)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    values = np.asarray(rng.standard_normal(shape)) * draw(st.sampled_from([1.0, 3.0, 1e-3]))
    values += draw(st.sampled_from([0.0, 0.0, 100.0]))
    if special and values.size and draw(st.booleans()):
        idx = rng.integers(0, values.size, size=draw(st.integers(1, 3)))
        values.reshape(-1)[idx] = rng.choice(SPECIAL, size=idx.size)
    with np.errstate(over="ignore"):  # 1e30 is Inf in float16, as intended
        dense = np.asarray(values, dtype=dtype)
    layout = draw(st.sampled_from(["c", "f", "reversed", "strided", "transposed", "broadcast"]))
    if layout == "f" and dense.ndim:
        a = np.asfortranarray(dense)
    elif layout == "reversed" and dense.ndim:
        a = np.ascontiguousarray(dense[(slice(None, None, -1),) * dense.ndim])[(slice(None, None, -1),) * dense.ndim]
    elif layout == "strided" and dense.ndim:
        big = np.zeros(dense.shape[:-1] + (dense.shape[-1] * 3,), dtype)
        big[..., 1::3] = dense
        a = big[..., 1::3]
    elif layout == "transposed" and dense.ndim > 1:
        a = np.ascontiguousarray(dense.T).T
    elif layout == "broadcast" and dense.ndim and dense.size:
        dense = np.ascontiguousarray(np.broadcast_to(dense[:1], dense.shape))
        a = np.broadcast_to(dense[:1], dense.shape)
    else:
        a = dense
    assert a.shape == dense.shape and a.dtype == dense.dtype
    np.testing.assert_array_equal(a, dense)
    return a, dense


def assert_close(got, want, dtype, *, scale=None):
    """|got - want| <= tol * (|want| + scale) elementwise, NaN where NaN, same dtype."""
    got = np.asarray(got)
    assert got.shape == want.shape
    g, w = got.astype(F64), np.asarray(want, F64)
    assert np.array_equal(np.isnan(g), np.isnan(w)), "NaN positions differ"
    finite = np.isfinite(w)
    assert np.array_equal(g[~finite & ~np.isnan(w)], w[~finite & ~np.isnan(w)]), "Inf differs"
    scale = np.broadcast_to(np.asarray(1.0 if scale is None else scale, F64), w.shape)[finite]
    tol = TOL[np.dtype(dtype)]
    err = np.abs(g[finite] - w[finite])
    assert np.all(err <= tol * (np.abs(w[finite]) + scale)), float(err.max(initial=0))


def _with_nan_free(a):
    return not np.isnan(a).any() and np.isfinite(a).all()


ACT = list(reference._activations.__all__)
FORWARD = [n for n in ACT if not n.endswith("_backward")]
# Parameters are rounded to the compute dtype (as PyTorch's kernels do), so a slope below
# float16/32 resolution would legitimately differ from the float64 oracle: not drawn.
_SLOPES = st.just(0.0) | st.floats(1e-3, 3) | st.floats(-3, -1e-3)
PARAMS = {"leaky_relu": st.fixed_dictionaries({"negative_slope": _SLOPES}),
          "elu": st.fixed_dictionaries({"alpha": st.floats(0.1, 3)}),
          "celu": st.fixed_dictionaries({"alpha": st.floats(0.1, 3)}),
          "softplus": st.fixed_dictionaries({"beta": st.floats(0.25, 4), "threshold": st.floats(1, 30)}),
          "gelu": st.fixed_dictionaries({"approximate": st.sampled_from(["none", "tanh"])})}


def _oracle_activation(name, arrays_, params, dtype):
    """The oracle in float64, rounded once to the output dtype (as the kernels promise)."""
    with np.errstate(all="ignore"):
        return getattr(reference, name)(*[a.astype(F64) for a in arrays_], **params).astype(dtype)


@pytest.mark.parametrize("name", FORWARD)
@given(data=st.data())
@fuzz
def test_activation_forward_matches_oracle(name, data, backend):
    x, dense = data.draw(arrays())
    params = data.draw(PARAMS.get(name, st.just({})))
    want = _oracle_activation(name, [dense], params, x.dtype)
    with np.errstate(all="ignore"):
        got = getattr(fastnorm, name)(x, **params)
    assert got.dtype == x.dtype
    assert_close(got, want, x.dtype)
    if data.draw(st.booleans()) and x.flags.writeable:
        out = np.full_like(dense, 7)
        with np.errstate(all="ignore"):
            assert getattr(fastnorm, name)(x, **params, out=out) is out
        assert_close(out, want, x.dtype)


@pytest.mark.parametrize("name", FORWARD)
@given(data=st.data())
@fuzz
def test_activation_backward_matches_oracle(name, data, backend):
    x, xd = data.draw(arrays(special=False))
    g, gd = data.draw(arrays(shape=x.shape, dtype=x.dtype))
    params = data.draw(PARAMS.get(name, st.just({})))
    saved, saved_d = x, xd
    if name in ("sigmoid", "tanh"):  # their backward takes the forward output
        saved_d = getattr(reference, name)(xd.astype(F64)).astype(x.dtype)
        saved = saved_d
    want = _oracle_activation(name + "_backward", [gd, saved_d], params, x.dtype)
    with np.errstate(all="ignore"):
        got = getattr(fastnorm, name + "_backward")(g, saved, **params)
        slope = getattr(reference, name + "_backward")(np.ones(x.shape), saved_d.astype(F64), **params)
    # grad_output +-inf times a derivative below the compute dtype's normal range (the GELU
    # tails: the tanh form's from x = -10.5 in float32), which rounds or flushes to 0 there:
    # inf * 0 is NaN, where the float64 oracle keeps the derivative and gives the inf
    compute = F64 if x.dtype == F64 else F32
    below = np.isinf(gd) & (np.abs(slope) < np.finfo(compute).tiny) & np.isnan(got)
    want = np.where(below, want.dtype.type(np.nan), want)
    # a derivative evaluated at a rounded argument: compare on the scale of |grad_output|
    scale = np.array(np.abs(gd.astype(F64)))
    scale[~np.isfinite(scale)] = 0
    assert_close(got, want, x.dtype, scale=1 + scale)


@given(data=st.data())
@fuzz
def test_dropout_bit_identical_to_oracle(data, backend):
    x, dense = data.draw(arrays())
    p = data.draw(st.sampled_from([0.0, 1.0, 0.5]) | st.floats(0, 1))
    seed = data.draw(st.integers(0, 2**128 - 1))
    offset = data.draw(st.integers(0, 2**40))
    with np.errstate(all="ignore"):
        y, mask = fastnorm.dropout(x, p, seed=seed, offset=offset)
        want_y, want_mask = reference.dropout(dense, p, seed=seed, offset=offset)
    assert np.array_equal(mask.packed, want_mask.packed)
    assert np.array_equal(y, want_y, equal_nan=True) and y.dtype == x.dtype
    g, gd = data.draw(arrays(shape=x.shape, dtype=x.dtype))
    with np.errstate(all="ignore"):
        assert np.array_equal(fastnorm.dropout_backward(g, mask), reference.dropout_backward(gd, mask),
                              equal_nan=True)


def _norm_tolerance_scale(want):
    w = np.abs(np.asarray(want, F64))
    w = w[np.isfinite(w)]
    return 1.0 + (w.max() if w.size else 0.0)


def _backward_scale(grad, rstd, weight, want):
    """grad_x = dy*w*rstd + terms of that size that cancel: tolerance on their scale."""
    top = lambda a: float(np.abs(np.asarray(a, F64)).max(initial=0))  # noqa: E731
    return _norm_tolerance_scale(want) + top(grad) * top(rstd) * (1.0 if weight is None else top(weight))


def _finite(*arrays_):
    return all(np.isfinite(np.asarray(a, F64)).all() for a in arrays_)


@given(data=st.data())
@fuzz
def test_layer_and_rms_norm_match_oracle(data, backend):
    x, dense = data.draw(arrays(min_ndim=1, special=False))
    k = data.draw(st.integers(1, x.ndim))
    ns = x.shape[x.ndim - k:]
    assume(math.prod(ns) > 0)
    dtype = x.dtype
    pd = F32 if dtype == F16 else dtype
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    w = rng.uniform(0.5, 2, ns).astype(pd) if data.draw(st.booleans()) else None
    b = rng.standard_normal(ns).astype(pd) if data.draw(st.booleans()) else None
    eps = data.draw(st.sampled_from([1e-5, 1e-3, 0.0]))
    assume(eps > 0 or dense.size == 0 or np.ptp(dense.astype(F64).reshape(-1, math.prod(ns)), axis=1).min() > 1e-2)
    f64 = lambda a: None if a is None else a.astype(F64)  # noqa: E731
    y, mean, rstd = fastnorm.layer_norm(x, ns, w, b, eps=eps)
    wy, wmean, wrstd = reference.layer_norm(dense.astype(F64), ns, f64(w), f64(b), eps=eps)
    assert y.dtype == dtype and y.shape == x.shape
    assert_close(y, wy.astype(dtype), dtype, scale=_norm_tolerance_scale(wy))
    assert_close(mean, wmean, mean.dtype, scale=_norm_tolerance_scale(wmean))
    g, gd = data.draw(arrays(shape=x.shape, dtype=dtype, special=False))
    got = fastnorm.layer_norm_backward(g, x, ns, w, mean, rstd, bias=b)
    want = reference.layer_norm_backward(gd.astype(F64), dense.astype(F64), ns, f64(w),
                                         mean.astype(F64), rstd.astype(F64), bias=f64(b))
    for a, e in zip(got, want):
        assert (a is None) == (e is None)
        if a is not None:
            assert_close(a, e.astype(a.dtype), a.dtype, scale=10 * _backward_scale(gd, rstd, w, e))
    yr, rs = fastnorm.rms_norm(x, ns, w, eps=eps or 1e-6)
    wyr, _ = reference.rms_norm(dense.astype(F64), ns, f64(w), eps=eps or 1e-6)
    assert_close(yr, wyr.astype(dtype), dtype, scale=_norm_tolerance_scale(wyr))


@given(data=st.data())
@fuzz
def test_batch_group_instance_norm_match_oracle(data, backend):
    x, dense = data.draw(arrays(min_ndim=2, special=False))
    dtype = x.dtype
    pd = F32 if dtype == F16 else dtype
    channels_last = data.draw(st.booleans())
    c = x.shape[-1] if channels_last else x.shape[1]
    n_per_channel = x.size // c if c else 0
    assume(c > 0 and n_per_channel > 1)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    w = rng.uniform(0.5, 2, c).astype(pd) if data.draw(st.booleans()) else None
    b = rng.standard_normal(c).astype(pd) if data.draw(st.booleans()) else None
    f64 = lambda a: None if a is None else a.astype(F64)  # noqa: E731
    rm, rv = np.zeros(c, pd), np.ones(c, pd)
    wrm, wrv = np.zeros(c), np.ones(c)
    y, mean, rstd = fastnorm.batch_norm(x, w, b, rm, rv, channels_last=channels_last, eps=1e-3)
    wy, wmean, wrstd = reference.batch_norm(dense.astype(F64), f64(w), f64(b), wrm, wrv,
                                            channels_last=channels_last, eps=1e-3)
    assert_close(y, wy.astype(dtype), dtype, scale=_norm_tolerance_scale(wy))
    assert_close(rm, wrm.astype(pd), pd, scale=_norm_tolerance_scale(wrm))
    assert_close(rv, wrv.astype(pd), pd, scale=_norm_tolerance_scale(wrv))
    g, gd = data.draw(arrays(shape=x.shape, dtype=dtype, special=False))
    got = fastnorm.batch_norm_backward(g, x, w, mean, rstd, channels_last=channels_last, bias=b)
    want = reference.batch_norm_backward(gd.astype(F64), dense.astype(F64), f64(w), mean.astype(F64),
                                         rstd.astype(F64), channels_last=channels_last, bias=f64(b))
    for a, e in zip(got, want):
        if a is not None:
            assert_close(a, e.astype(a.dtype), a.dtype, scale=10 * _backward_scale(gd, rstd, w, e))
    divisors = [d for d in range(1, c + 1) if c % d == 0]
    groups = data.draw(st.sampled_from(divisors))
    if x.shape[0]:
        y, mean, rstd = fastnorm.group_norm(x, groups, w, b, eps=1e-3, channels_last=channels_last)
        wy, _, _ = reference.group_norm(dense.astype(F64), groups, f64(w), f64(b), eps=1e-3,
                                        channels_last=channels_last)
        assert_close(y, wy.astype(dtype), dtype, scale=_norm_tolerance_scale(wy))
        got = fastnorm.group_norm_backward(g, x, groups, w, mean, rstd, channels_last=channels_last, bias=b)
        want = reference.group_norm_backward(gd.astype(F64), dense.astype(F64), groups, f64(w),
                                             mean.astype(F64), rstd.astype(F64), channels_last=channels_last,
                                             bias=f64(b))
        for a, e in zip(got, want):
            assert (a is None) == (e is None)
            if a is not None:
                assert_close(a, e.astype(a.dtype), a.dtype, scale=10 * _backward_scale(gd, rstd, w, e))
    if not channels_last and x.ndim > 2 and math.prod(x.shape[2:]) > 1:
        y, _, _ = fastnorm.instance_norm(x, w, b, eps=1e-3)
        wy, _, _ = reference.instance_norm(dense.astype(F64), f64(w), f64(b), eps=1e-3)
        assert_close(y, wy.astype(dtype), dtype, scale=_norm_tolerance_scale(wy))
        # with running statistics: updated in training, normalizing in evaluation
        rm, rv = np.zeros(c, pd), np.ones(c, pd)
        wrm, wrv = np.zeros(c), np.ones(c)
        fastnorm.instance_norm(x, w, b, rm, rv, momentum=0.25, eps=1e-3)
        reference.instance_norm(dense.astype(F64), f64(w), f64(b), wrm, wrv, momentum=0.25, eps=1e-3)
        assert_close(rm, wrm.astype(pd), pd, scale=_norm_tolerance_scale(wrm))
        assert_close(rv, wrv.astype(pd), pd, scale=_norm_tolerance_scale(wrv))
        y, _, _ = fastnorm.instance_norm(x, w, b, rm, rv, use_input_stats=False, eps=1e-3)
        wy, _, _ = reference.instance_norm(dense.astype(F64), f64(w), f64(b), rm.astype(F64), rv.astype(F64),
                                           use_input_stats=False, eps=1e-3)
        assert_close(y, wy.astype(dtype), dtype, scale=_norm_tolerance_scale(wy))


@given(data=st.data())
@fuzz
def test_moments_match_oracle(data, backend):
    x, dense = data.draw(arrays(min_ndim=1))
    axes = data.draw(st.lists(st.integers(0, x.ndim - 1), unique=True, max_size=x.ndim))
    axis = None if not axes and data.draw(st.booleans()) else tuple(axes)
    ddof = data.draw(st.integers(0, 1))
    with np.errstate(all="ignore"):
        mean, var = fastnorm.moments(x, axis, ddof=ddof)
        wmean, wvar = reference.moments(dense.astype(F64), axis, ddof=ddof)
    cd = F32 if x.dtype == F16 else x.dtype
    assert mean.dtype == cd and var.dtype == cd
    if _finite(dense):
        # rounding of a sum is relative to the data's magnitude, not the (cancelled) result's
        top = float(np.abs(dense.astype(F64)).max(initial=0))
        with np.errstate(over="ignore"):
            assert_close(mean, wmean.astype(cd), cd, scale=1 + top)
            assert_close(var, wvar.astype(cd), cd, scale=1 + top * top)
    else:  # any NaN/Inf in a slice makes that slice's statistics non-finite, and only that slice
        assert np.array_equal(np.isfinite(mean), np.isfinite(wmean.astype(cd)))
