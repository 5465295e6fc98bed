"""Normalization (moments, batch/layer/group/instance/RMS norm): every function on every
backend against the float64 NumPy oracle over random shapes, layouts, dtypes and
parameters; finite differences of every backward; running statistics against hand-written
updates; large offsets; thread-count bit-identity; errors; optional parity with torch."""
import math
import warnings
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, strategies as st

import fastnorm
from fastnorm import reference as ref
from _gradcheck import numeric_gradient
from _placement import Pages

FLOATS = [np.float16, np.float32, np.float64]
# Tolerance relative to the largest expected magnitude, by input dtype: float16 output is
# rounded to 11 bits; float32 kernels compute the output pass in float32.
TOL = {np.dtype(np.float16): 4e-3, np.dtype(np.float32): 2e-5, np.dtype(np.float64): 1e-10}


def compiled_backends():
    return ("cython", "numpy") if fastnorm._config.compiled_available() else ("numpy",)


def assert_close(actual, expected, dtype, what=""):
    assert actual.shape == expected.shape, what
    expected = np.asarray(expected, np.float64)
    scale = max(1.0, float(np.max(np.abs(expected)))) if expected.size else 1.0
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=0,
                               atol=TOL[np.dtype(dtype)] * scale, err_msg=what)


def compute_dtype(dtype):
    return np.dtype(np.float32) if np.dtype(dtype) == np.float16 else np.dtype(dtype)


# ---------------------------------------------------------------------------- cases
#
# A case runs forward and backward of one normalization on a module (fastnorm or the
# oracle) and returns every output by name.  Running statistics are copies, so a case
# can be run twice.

def _nsplit(x, k):
    return x.shape[x.ndim - k:]


def run_forward(mod, kind, x, w, b, p):
    """p: dict with eps, groups, k (normalized dims), rm, rv (running stats or None)."""
    rm = None if p.get("rm") is None else p["rm"].copy()
    rv = None if p.get("rv") is None else p["rv"].copy()
    mean = None
    if kind in ("batch", "batch_cl", "batch_eval"):
        y, mean, rstd = mod.batch_norm(x, w, b, rm, rv, training=kind != "batch_eval", eps=p["eps"],
                                       channels_last=kind == "batch_cl")
    elif kind in ("group", "group_cl"):
        y, mean, rstd = mod.group_norm(x, p["groups"], w, b, eps=p["eps"], channels_last=kind == "group_cl")
    elif kind in ("instance", "instance_eval"):
        y, mean, rstd = mod.instance_norm(x, w, b, rm, rv, use_input_stats=kind == "instance", eps=p["eps"])
    elif kind == "layer":
        y, mean, rstd = mod.layer_norm(x, _nsplit(x, p["k"]), w, b, eps=p["eps"])
    elif kind == "rms":
        y, rstd = mod.rms_norm(x, _nsplit(x, p["k"]), w, eps=p["eps"])
    else:
        raise AssertionError(kind)
    return dict(y=y, mean=mean, rstd=rstd, rm=rm, rv=rv)


def run_backward(mod, kind, g, x, w, b, mean, rstd, p):
    gb = None
    if kind in ("batch", "batch_cl", "batch_eval"):
        gx, gw, gb = mod.batch_norm_backward(g, x, w, mean, rstd, training=kind != "batch_eval",
                                             channels_last=kind == "batch_cl", bias=b)
    elif kind in ("group", "group_cl"):
        gx, gw, gb = mod.group_norm_backward(g, x, p["groups"], w, mean, rstd,
                                             channels_last=kind == "group_cl", bias=b)
    elif kind in ("instance", "instance_eval"):
        gx, gw, gb = mod.instance_norm_backward(g, x, w, mean, rstd, use_input_stats=kind == "instance",
                                                bias=b)
    elif kind == "layer":
        gx, gw, gb = mod.layer_norm_backward(g, x, _nsplit(x, p["k"]), w, mean, rstd, bias=b)
    else:
        gx, gw = mod.rms_norm_backward(g, x, _nsplit(x, p["k"]), w, rstd)
    return dict(gx=gx, gw=gw, gb=gb)


def run_case(mod, kind, x, g, w, b, p):
    out = run_forward(mod, kind, x, w, b, p)
    out.update(run_backward(mod, kind, g, x, w, b, out["mean"], out["rstd"], p))
    return out


def param_shape(kind, shape, p):
    if kind in ("layer", "rms"):
        return shape[len(shape) - p["k"]:]
    return (shape[-1],) if kind.endswith("_cl") else (shape[1],)


KINDS = ["batch", "batch_cl", "batch_eval", "group", "group_cl", "instance", "instance_eval",
         "layer", "rms"]


def valid_for(kind, shape, p):
    if kind in ("batch", "batch_cl"):
        c = shape[-1] if kind == "batch_cl" else shape[1]
        return math.prod(shape) // max(c, 1) > 1
    if kind == "instance":
        return len(shape) >= 3 and math.prod(shape[2:]) > 1
    return True


@st.composite
def cases(draw, kinds=KINDS, max_side=5):
    kind = draw(st.sampled_from(kinds))
    min_dims = 1 if kind in ("layer", "rms") else 2
    ndim = draw(st.integers(min_dims, 5))
    shape = tuple(draw(st.lists(st.integers(1, max_side), min_size=ndim, max_size=ndim)))
    p = {"eps": draw(st.sampled_from([1e-5, 1e-3, 0.1])), "k": draw(st.integers(1, ndim))}
    if kind == "rms" and draw(st.booleans()):
        p["eps"] = None
    c = shape[-1] if kind.endswith("_cl") else (shape[1] if ndim > 1 else 1)
    p["groups"] = draw(st.sampled_from([d for d in range(1, c + 1) if c % d == 0]))
    if kind in ("batch", "batch_cl") and not valid_for(kind, shape, p):
        shape = (shape[0] + 1,) + shape[1:]
    if kind == "instance" and not valid_for(kind, shape, p):
        shape = shape[:2] + (2,) + shape[3:] if ndim >= 3 else shape + (2,)
    dtype = draw(st.sampled_from(FLOATS))
    seed = draw(st.integers(0, 2**31 - 1))
    layout = draw(st.sampled_from(["c", "strided", "reversed", "fortran"]))
    offset = draw(st.sampled_from([0.0, 3.0, -50.0]))
    affine = draw(st.sampled_from(["both", "weight", "bias", "none"]))
    return kind, shape, p, dtype, seed, layout, offset, affine


def make_inputs(kind, shape, p, dtype, seed, layout, offset, affine):
    rng = np.random.default_rng(seed)
    x = (offset + rng.standard_normal(shape) * rng.uniform(0.5, 3)).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    if layout == "strided":
        big = np.zeros(shape[:-1] + (2 * shape[-1],), dtype)
        big[..., ::2] = x
        x = big[..., ::2]
    elif layout == "reversed":
        x = np.ascontiguousarray(x[::-1])[::-1]
    elif layout == "fortran":
        x = np.asfortranarray(x)
    pshape = param_shape(kind, shape, p)
    pdt = compute_dtype(dtype) if dtype == np.float16 and rng.random() < 0.5 else dtype
    w = rng.standard_normal(pshape).astype(pdt) if affine in ("both", "weight") else None
    b = rng.standard_normal(pshape).astype(pdt) if affine in ("both", "bias") and kind != "rms" else None
    if kind in ("batch", "batch_cl", "batch_eval", "instance", "instance_eval"):
        p = dict(p, rm=rng.standard_normal(pshape).astype(dtype),
                 rv=rng.uniform(0.5, 2.0, pshape).astype(dtype))
    return x, g, w, b, p


def f64(a):
    return None if a is None else np.asarray(a, np.float64)


def check_against_oracle(kind, x, g, w, b, p):
    """Forward against the oracle on the float64 inputs; backward against the oracle fed
    the same inputs and the statistics this forward returned (the backward's contract),
    with a tolerance on grad_x scaled by its largest term, |rstd * weight * grad_output|
    (the terms of grad_x cancel when a group has few elements)."""
    dtype = x.dtype
    eps = p["eps"]
    if eps is None:
        eps = float(np.finfo(compute_dtype(dtype)).eps)
    p64 = dict(p, rm=f64(p.get("rm")), rv=f64(p.get("rv")), eps=eps)
    expected = run_forward(ref, kind, f64(x), f64(w), f64(b), p64)
    got = run_forward(fastnorm, kind, x, w, b, p)
    assert got["y"].dtype == dtype
    assert got["rstd"].dtype == compute_dtype(dtype)
    for name in ("y", "mean", "rstd", "rm", "rv"):
        if expected[name] is None:
            assert got[name] is None, name
            continue
        assert got[name].dtype == (compute_dtype(dtype) if name in ("mean", "rstd") else dtype)
        assert_close(got[name], expected[name], dtype if name != "rstd" else compute_dtype(dtype),
                     f"{kind} {name}")
    mean, rstd = got["mean"], got["rstd"]
    back = run_backward(fastnorm, kind, g, x, w, b, mean, rstd, p)
    bexp = run_backward(ref, kind, f64(g), f64(x), f64(w), f64(b), f64(mean), f64(rstd), p64)
    assert back["gx"].dtype == dtype
    term = np.max(np.abs(f64(g))) * np.max(np.abs(f64(rstd))) * (1.0 if w is None else np.max(np.abs(f64(w))))
    gx_scale = max(term, float(np.max(np.abs(bexp["gx"]))), 1.0)
    np.testing.assert_allclose(f64(back["gx"]), bexp["gx"], rtol=0, atol=TOL[np.dtype(dtype)] * gx_scale,
                               err_msg=f"{kind} gx")
    for name, param in (("gw", w), ("gb", b)):
        if bexp[name] is None:
            assert back[name] is None, name
            continue
        assert back[name].dtype == param.dtype
        assert_close(back[name], bexp[name], compute_dtype(dtype) if param.dtype != np.float16 else dtype,
                     f"{kind} {name}")


@given(case=cases())
def test_forward_backward_match_oracle_random(case):
    kind, shape, p, dtype, seed, layout, offset, affine = case
    x, g, w, b, p = make_inputs(*case)
    for backend in compiled_backends():
        with fastnorm.use_backend(backend):
            check_against_oracle(kind, x, g, w, b, p)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", FLOATS)
def test_forward_backward_every_backend_and_thread_count(kind, dtype, backend, num_threads):
    # Large enough (>= 2**15 elements) for the parallel paths.
    shape = {"layer": (64, 24, 32), "rms": (64, 24, 32)}.get(kind, (8, 16, 20, 16))
    p = {"eps": 1e-5, "k": 2, "groups": 4}
    x, g, w, b, p = make_inputs(kind, shape, p, dtype, 7, "c", 2.0, "both")
    check_against_oracle(kind, x, g, w, b, p)


@pytest.mark.parametrize("kind, shape, p", [
    ("batch", (1, 1, 5), {}), ("batch", (5, 1), {}), ("batch_cl", (3, 1, 1, 2), {}),
    ("batch_eval", (1, 1), {}), ("batch", (2, 3, 1, 1, 1), {}),
    ("group", (1, 1), {"groups": 1}), ("group", (1, 6, 1), {"groups": 6}), ("group_cl", (2, 1, 4), {"groups": 2}),
    ("instance", (1, 1, 2), {}), ("instance_eval", (1, 1), {}),
    ("layer", (1,), {"k": 1}), ("layer", (7, 1), {"k": 1}), ("layer", (1, 1, 1), {"k": 3}),
    ("rms", (3, 1), {"k": 1}), ("rms", (1, 1), {"k": 2}),
])
def test_size_one_edges(kind, shape, p, backend):
    p = dict({"eps": 1e-5, "k": 1, "groups": 1}, **p)
    x, g, w, b, p = make_inputs(kind, shape, p, np.float64, 3, "c", 1.0, "both")
    check_against_oracle(kind, x, g, w, b, p)


# ---------------------------------------------------------------------------- oracle checks

def test_oracle_against_textbook_formulas(rng):
    x = rng.standard_normal((4, 3, 5))
    y, mean, rstd = ref.batch_norm(x, training=True)
    np.testing.assert_allclose(mean, x.mean(axis=(0, 2)))
    np.testing.assert_allclose(rstd, 1 / np.sqrt(x.var(axis=(0, 2)) + 1e-5))
    np.testing.assert_allclose(y.mean(axis=(0, 2)), 0, atol=1e-12)
    y, mean, rstd = ref.layer_norm(x, (3, 5), eps=0.0)
    np.testing.assert_allclose(y.reshape(4, -1).std(axis=1), 1, rtol=1e-12)
    y, mean, rstd = ref.group_norm(x.reshape(4, 3, 5, 1), 3)
    np.testing.assert_allclose(y[..., 0], ref.instance_norm(x)[0])
    y, rstd = ref.rms_norm(x, 5, eps=0.0)
    np.testing.assert_allclose(np.sqrt((y ** 2).mean(axis=-1)), 1, rtol=1e-12)


def test_lecture_table_sample_std():
    """The lecture's 6x3 layer outputs normalized per row with the sample standard deviation
    (ddof=1).  Exact values: row 1 (-0.927173, -0.132453, 1.059626) -> -0.9, -0.1, 1.1;
    row 2 all equal -> 0, 0, 0 (zero spread, no NaN); row 3 (-0.755929, -0.377964,
    1.133893); row 4 (0.132453, 0.927173, -1.059626); row 5 (1.091089, -0.872872,
    -0.218218); row 6 (0.577350, -1.154701, 0.577350)."""
    table = np.array([[1, 3, 6], [2, 2, 2], [0, 1, 5], [4, 6, 1], [5, 2, 3], [1, 0, 1]], float)
    expected = np.array([[-0.927173, -0.132453, 1.059626], [0, 0, 0],
                         [-0.755929, -0.377964, 1.133893], [0.132453, 0.927173, -1.059626],
                         [1.091089, -0.872872, -0.218218], [0.577350, -1.154701, 0.577350]])
    for backend in compiled_backends():
        with fastnorm.use_backend(backend):
            for dtype in (np.float32, np.float64):
                mean, var = fastnorm.moments(table.astype(dtype), axis=1, ddof=1)
                np.testing.assert_allclose(mean, [10 / 3, 2, 2, 11 / 3, 10 / 3, 2 / 3], rtol=1e-6)
                np.testing.assert_allclose(var, [19 / 3, 0, 7, 19 / 3, 7 / 3, 1 / 3], rtol=1e-6)
                assert var[1] == 0  # exactly: a constant row must not give a tiny negative
                std = np.sqrt(var)
                z = np.divide(table - mean[:, None], std[:, None], out=np.zeros_like(table),
                              where=std[:, None] > 0)
                assert not np.isnan(z).any()
                np.testing.assert_allclose(z, expected, atol=1e-6)
                np.testing.assert_array_equal(np.round(z[0], 1), [-0.9, -0.1, 1.1])
                # layer norm of the same rows (biased variance, eps inside the root): no NaN either
                y = fastnorm.layer_norm(table.astype(dtype), 3)[0]
                assert np.all(np.isfinite(y)) and np.all(y[1] == 0)


# ---------------------------------------------------------------------------- moments

@pytest.mark.parametrize("axis", [0, 1, 2, -1, (0, 2), (1, 2), (0, 1), None, (), (2, 0)])
@pytest.mark.parametrize("layout", ["c", "fortran", "strided"])
@pytest.mark.parametrize("dtype", FLOATS)
def test_moments_against_numpy(axis, layout, dtype, backend, rng):
    x = (5 + rng.standard_normal((6, 40, 7))).astype(dtype)
    if layout == "fortran":
        x = np.asfortranarray(x)
    elif layout == "strided":
        x = x[::2, ::-1]
    for ddof in (0, 1):
        mean, var = fastnorm.moments(x, axis, ddof=ddof)
        np_axis = axis if axis != () else ()
        xd = x.astype(np.float64)
        assert mean.dtype == compute_dtype(dtype) == var.dtype
        tol = 1e-6 if dtype != np.float64 else 1e-12
        np.testing.assert_allclose(mean, xd.mean(axis=np_axis), rtol=tol)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # n - ddof <= 0: NaN expected
            expected_var = xd.var(axis=np_axis, ddof=ddof)
        np.testing.assert_allclose(var, expected_var, rtol=10 * tol, atol=tol)


@pytest.mark.parametrize("shape, channels_last", [((0, 8, 2, 2), False), ((0, 2, 2, 8), True), ((0, 8), False)],
                         ids=str)
def test_group_norm_empty_batch(shape, channels_last, backend):
    """An empty batch gives empty results, as in PyTorch: y like x, mean and rstd (0, G),
    gx like x, and zero parameter gradients (the oracle's reshape to (N, G, -1) used to
    raise for N = 0)."""
    x = np.empty(shape, np.float32)
    w, b = np.ones(8, np.float32), np.zeros(8, np.float32)
    y, mean, rstd = fastnorm.group_norm(x, 4, w, b, channels_last=channels_last)
    assert y.shape == shape and mean.shape == (0, 4) and rstd.shape == (0, 4)
    gx, gw, gb = fastnorm.group_norm_backward(x, x, 4, w, mean, rstd, channels_last=channels_last, bias=b)
    assert gx.shape == shape and gx.dtype == np.float32
    np.testing.assert_array_equal(gw, 0)
    np.testing.assert_array_equal(gb, 0)


EMPTY_BN = [((0, 3), False), ((2, 3, 0, 4), False), ((0, 3, 4), False), ((0, 3), True), ((2, 0, 4, 3), True)]


@pytest.mark.parametrize("shape, channels_last", EMPTY_BN, ids=str)
@pytest.mark.parametrize("affine, running", [(True, True), (False, False)], ids=["affine-running", "bare"])
@pytest.mark.parametrize("dtype", FLOATS)
def test_batch_norm_no_values_per_channel(shape, channels_last, affine, running, dtype, backend):
    """No values per channel in training (PyTorch: an empty output, running statistics
    unchanged, zero parameter gradients): y empty (into out=), mean and rstd (C,) NaN (0/0),
    the running statistics untouched, as the oracle, without a warning."""
    c = shape[-1] if channels_last else shape[1]
    x = np.empty(shape, dtype)
    w, b = (np.full(c, 2, dtype), np.ones(c, dtype)) if affine else (None, None)
    rm, rv = (np.arange(c, dtype=dtype), np.full(c, 3, dtype)) if running else (None, None)
    before = None if rm is None else (rm.copy(), rv.copy())
    out = np.empty_like(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y, mean, rstd = fastnorm.batch_norm(x, w, b, rm, rv, channels_last=channels_last, out=out)
        momentum_none = fastnorm.batch_norm(x, w, b, rm, rv, channels_last=channels_last, momentum=None,
                                            num_batches_tracked=3)
        gx, gw, gb = fastnorm.batch_norm_backward(x, x, w, mean, rstd, channels_last=channels_last, bias=b)
    assert y is out and momentum_none[0].shape == shape
    assert mean.shape == rstd.shape == (c,) and mean.dtype == rstd.dtype == compute_dtype(dtype)
    assert np.isnan(mean).all() and np.isnan(rstd).all()
    if running:
        np.testing.assert_array_equal(rm, before[0])
        np.testing.assert_array_equal(rv, before[1])
    assert gx.shape == shape and gx.dtype == dtype
    if affine:
        assert gw.dtype == gb.dtype == dtype
        np.testing.assert_array_equal(gw, np.zeros(c))
        np.testing.assert_array_equal(gb, np.zeros(c))
    else:
        assert gw is None and gb is None
    expected = ref.batch_norm(x, w, b, None if rm is None else rm.copy(), None if rv is None else rv.copy(),
                              channels_last=channels_last)
    for got, want in zip((y, mean, rstd), expected):
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("shape", [(2, 3, 0), (2, 3, 0, 5), (0, 3, 4), (0, 3, 0)], ids=str)
def test_instance_norm_no_spatial_elements(shape, backend):
    """No spatial elements (or no samples): y empty (into out=), mean and rstd (N, C) NaN
    (0/0), the running statistics untouched (PyTorch returns an empty output), zero
    parameter gradients, as the oracle, without a warning; evaluation too."""
    x = np.empty(shape, np.float32)
    w, b = np.full(3, 2, np.float32), np.ones(3, np.float32)
    rm, rv = np.arange(3, dtype=np.float32), np.full(3, 3, np.float32)
    out = np.empty_like(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y, mean, rstd = fastnorm.instance_norm(x, w, b, rm, rv, out=out)
        gx, gw, gb = fastnorm.instance_norm_backward(x, x, w, mean, rstd, bias=b)
        y_eval, mean_eval, _ = fastnorm.instance_norm(x, w, b, rm, rv, use_input_stats=False)
        gx_eval, gw_eval, _ = fastnorm.instance_norm_backward(x, x, w, mean_eval, rstd, use_input_stats=False)
    assert y is out and y_eval.shape == gx.shape == gx_eval.shape == shape
    assert mean.shape == rstd.shape == mean_eval.shape == shape[:2]
    assert np.isnan(mean).all() and np.isnan(rstd).all()
    np.testing.assert_array_equal(rm, np.arange(3))
    np.testing.assert_array_equal(rv, 3)
    for grad in (gw, gb, gw_eval):
        np.testing.assert_array_equal(grad, np.zeros(3))
    expected = ref.instance_norm(x, w, b, rm.copy(), rv.copy())
    for got, want in zip((y, mean, rstd), expected):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("call", [
    lambda rm, rv: fastnorm.batch_norm(np.ones((1, 3)), None, None, rm, rv),
    lambda rm, rv: fastnorm.batch_norm(np.ones((1, 3, 1, 1)), None, None, rm, rv),
    lambda rm, rv: fastnorm.batch_norm(np.ones((1, 1, 3)), None, None, rm, rv, channels_last=True),
    lambda rm, rv: fastnorm.instance_norm(np.ones((2, 3, 1)), None, None, rm, rv),
    lambda rm, rv: fastnorm.instance_norm(np.ones((2, 3, 1, 1)), None, None, rm, rv),
], ids=["bn-2d", "bn-4d", "bn-channels-last", "in-3d", "in-4d"])
def test_one_value_per_channel_still_raises(call, backend):
    rm, rv = np.zeros(3), np.ones(3)
    with pytest.raises(ValueError, match="expected more than 1"):
        call(rm, rv)
    assert (rm == 0).all() and (rv == 1).all()


@pytest.mark.parametrize("shape, num_groups, channels_last", [((2, 4, 0), 2, False), ((2, 0, 4), 2, True)],
                         ids=str)
def test_group_norm_empty_groups(shape, num_groups, channels_last, backend):
    """Groups without elements: y empty, mean and rstd (N, G) NaN (0/0), zero parameter
    gradients, without a warning (PyTorch returns an empty output)."""
    x = np.empty(shape, np.float32)
    w, b = np.ones(4, np.float32), np.zeros(4, np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y, mean, rstd = fastnorm.group_norm(x, num_groups, w, b, channels_last=channels_last)
        gx, gw, gb = fastnorm.group_norm_backward(x, x, num_groups, w, mean, rstd,
                                                  channels_last=channels_last, bias=b)
    assert y.shape == gx.shape == shape and mean.shape == rstd.shape == (2, num_groups)
    assert np.isnan(mean).all() and np.isnan(rstd).all()
    np.testing.assert_array_equal(gw, np.zeros(4))
    np.testing.assert_array_equal(gb, np.zeros(4))


@pytest.mark.parametrize("shape", [(3, 0), (0, 5)], ids=str)
def test_layer_and_rms_norm_empty(shape, backend):
    """Empty rows give NaN mean and rstd (0/0), no rows empty statistics; no warning."""
    x = np.empty(shape)
    w = np.ones(shape[1:])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y, mean, rstd = fastnorm.layer_norm(x, shape[1:], w, w)
        gx, gw, gb = fastnorm.layer_norm_backward(x, x, shape[1:], w, mean, rstd, bias=w)
        y_rms, rstd_rms = fastnorm.rms_norm(x, shape[1:], w)
        gx_rms, gw_rms = fastnorm.rms_norm_backward(x, x, shape[1:], w, rstd_rms)
    assert y.shape == gx.shape == y_rms.shape == gx_rms.shape == shape
    assert mean.shape == rstd.shape == rstd_rms.shape == shape[:1]
    assert np.isnan(mean).all() and np.isnan(rstd).all() and np.isnan(rstd_rms).all()
    for grad in (gw, gb, gw_rms):
        np.testing.assert_array_equal(grad, np.zeros(shape[1:]))


@pytest.mark.parametrize("kind, shape", [("batch", (0, 3)), ("batch", (2, 3, 0, 4)), ("instance", (2, 3, 0))],
                         ids=str)
def test_empty_batch_parity_with_torch(kind, shape, backend):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x = np.empty(shape, np.float32)
    w, b = np.full(3, 2, np.float32), np.ones(3, np.float32)
    rm, rv = np.arange(3, dtype=np.float32), np.full(3, 3, np.float32)
    xt = torch.tensor(x, requires_grad=True)
    wt, bt = torch.tensor(w, requires_grad=True), torch.tensor(b, requires_grad=True)
    rmt, rvt = torch.tensor(rm), torch.tensor(rv)
    if kind == "batch":
        yt = F.batch_norm(xt, rmt, rvt, wt, bt, training=True)
        y, mean, rstd = fastnorm.batch_norm(x, w, b, rm, rv)
        gx, gw, gb = fastnorm.batch_norm_backward(x, x, w, mean, rstd, bias=b)
    else:
        yt = F.instance_norm(xt, rmt, rvt, wt, bt, use_input_stats=True)
        y, mean, rstd = fastnorm.instance_norm(x, w, b, rm, rv)
        gx, gw, gb = fastnorm.instance_norm_backward(x, x, w, mean, rstd, bias=b)
    yt.backward(torch.tensor(x))
    assert y.shape == tuple(yt.shape) and gx.shape == tuple(xt.grad.shape)
    for got, t in ((rm, rmt), (rv, rvt), (gw, wt.grad), (gb, bt.grad)):
        np.testing.assert_array_equal(got, t.numpy())


def test_moments_degenerate(backend):
    x = np.arange(12.0).reshape(3, 4)
    mean, var = fastnorm.moments(x, 0, ddof=3)
    assert np.isnan(var).all() and np.allclose(mean, x.mean(axis=0))
    mean, var = fastnorm.moments(np.zeros((0, 4)), 0)
    assert mean.shape == (4,) and np.isnan(mean).all() and np.isnan(var).all()
    mean, var = fastnorm.moments(np.zeros((3, 0)), 0)
    assert mean.shape == (0,) and var.shape == (0,)
    mean, var = fastnorm.moments(np.float32(2.5), None)
    assert mean == 2.5 and var == 0 and mean.dtype == np.float32
    mean, var = fastnorm.moments([[1.0, 2.0], [3.0, 5.0]], axis=1)
    np.testing.assert_allclose(var, [0.25, 1.0])


# ---------------------------------------------------------------------------- finite differences


FD_CASES = [("batch", (3, 2, 4)), ("batch_cl", (2, 3, 2)), ("batch_eval", (3, 2, 2)),
            ("batch", (5, 3)), ("group", (2, 4, 3)), ("group_cl", (2, 3, 4)),
            ("instance", (2, 3, 4)), ("instance_eval", (2, 2, 3)), ("layer", (3, 2, 4)),
            ("rms", (3, 2, 4))]


@pytest.mark.parametrize("kind, shape", FD_CASES, ids=[f"{k}-{s}" for k, s in FD_CASES])
def test_backward_finite_differences(kind, shape, backend, rng):
    p = {"eps": 1e-3, "k": 2, "groups": 2}
    x, g, w, b, p = make_inputs(kind, shape, p, np.float64, 11, "c", 0.5, "both")
    p["rm"] = p["rv"] = None if kind in ("batch", "batch_cl", "instance") else p.get("rm")
    if kind.endswith("_eval"):
        p["rv"] = rng.uniform(0.5, 2.0, w.shape)
    got = run_case(fastnorm, kind, x, g, w, b, p)

    def loss():  # sum(y * g) with a random upstream gradient g
        return float(np.sum(run_case(fastnorm, kind, x, g, w, b, p)["y"] * g))

    np.testing.assert_allclose(got["gx"], numeric_gradient(loss, x), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got["gw"], numeric_gradient(loss, w), rtol=1e-5, atol=1e-7)
    if b is not None:
        np.testing.assert_allclose(got["gb"], numeric_gradient(loss, b), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kind", ["batch", "group", "layer", "instance"])
def test_gradients_returned_only_for_given_parameters(kind, backend, rng):
    p = {"eps": 1e-5, "k": 1, "groups": 1}
    for affine in ("none", "weight", "bias", "both"):
        x, g, w, b, pp = make_inputs(kind, (3, 2, 4), p, np.float64, 5, "c", 0.0, affine)
        pp["rm"] = pp["rv"] = None
        got = run_case(fastnorm, kind, x, g, w, b, pp)
        assert (got["gw"] is None) == (w is None) and (got["gb"] is None) == (b is None)
    x = rng.standard_normal((3, 4))
    gx, gw = fastnorm.rms_norm_backward(x, x, 4, None, fastnorm.rms_norm(x, 4)[1])
    assert gw is None


# ---------------------------------------------------------------------------- running statistics

@pytest.mark.parametrize("channels_last", [False, True])
def test_running_statistics_several_steps(channels_last, backend, rng):
    c, momentum = 3, 0.3
    rm, rv = np.zeros(c, np.float32), np.ones(c, np.float32)
    em, ev = np.zeros(c), np.ones(c)
    axes = (0, 1, 2) if channels_last else (0, 2, 3)
    for step in range(4):
        x = (rng.standard_normal((4, 5, 6, c) if channels_last else (4, c, 5, 6)) * (step + 1) + step).astype(np.float32)
        fastnorm.batch_norm(x, None, None, rm, rv, momentum=momentum, channels_last=channels_last)
        xd = x.astype(np.float64)
        em = (1 - momentum) * em + momentum * xd.mean(axis=axes)
        ev = (1 - momentum) * ev + momentum * xd.var(axis=axes, ddof=1)
        np.testing.assert_allclose(rm, em, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(rv, ev, rtol=1e-5)
    # evaluation mode uses (and does not change) them
    before = (rm.copy(), rv.copy())
    y, mean, rstd = fastnorm.batch_norm(x, None, None, rm, rv, training=False, channels_last=channels_last)
    np.testing.assert_array_equal(rm, before[0])
    np.testing.assert_allclose(mean, rm)
    np.testing.assert_allclose(rstd, 1 / np.sqrt(rv.astype(np.float64) + 1e-5), rtol=1e-6)
    shape = (1, 1, 1, c) if channels_last else (1, c, 1, 1)
    np.testing.assert_allclose(y, (x - rm.reshape(shape)) / np.sqrt(rv.reshape(shape) + 1e-5), rtol=1e-4, atol=1e-4)


def test_running_statistics_cumulative_average(backend, rng):
    """momentum=None: factor 1/num_batches_tracked, so the running mean is the plain
    average of the batch means (and the running var of the unbiased batch vars)."""
    rm, rv = np.zeros(2), np.ones(2)
    means, variances = [], []
    for step in range(1, 5):
        x = rng.standard_normal((7, 2)) + step
        fastnorm.batch_norm(x, None, None, rm, rv, momentum=None, num_batches_tracked=step)
        means.append(x.mean(axis=0))
        variances.append(x.var(axis=0, ddof=1))
        np.testing.assert_allclose(rm, np.mean(means, axis=0), rtol=1e-12)
        np.testing.assert_allclose(rv, np.mean(variances, axis=0), rtol=1e-12)


def test_instance_norm_running_statistics(backend, rng):
    rm, rv = np.zeros(3), np.ones(3)
    x = rng.standard_normal((4, 3, 10)) * 2 + 1
    fastnorm.instance_norm(x, running_mean=rm, running_var=rv, momentum=0.25)
    np.testing.assert_allclose(rm, 0.25 * x.mean(axis=2).mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(rv, 0.75 + 0.25 * x.var(axis=2, ddof=1).mean(axis=0), rtol=1e-12)


# ---------------------------------------------------------------------------- numerics

def test_large_offset_float32(backend, rng):
    """x = 1e4 + randn in float32 normalizes to within 4 float32 ulps (of the largest
    output) of the float64 answer: the textbook float32 E[x^2] - E[x]^2 is off by O(1)
    here, and an output pass that folded the mean into the shift (x * scale + (b - mean *
    scale)) or dropped the float32 mean's rounding error (up to 5e-4 at 1e4) by ~1e-3."""
    x = (1e4 + rng.standard_normal((16, 8, 12, 12))).astype(np.float32)
    xd = x.astype(np.float64)
    wb = np.linspace(0.5, 2, 8).astype(np.float32)
    cases = [
        (fastnorm.batch_norm(x)[0], ref.batch_norm(xd)[0]),
        (fastnorm.batch_norm(np.moveaxis(x, 1, -1).copy(), channels_last=True)[0],
         np.moveaxis(ref.batch_norm(xd)[0], 1, -1)),
        (fastnorm.layer_norm(x, (12, 12))[0], ref.layer_norm(xd, (12, 12))[0]),
        (fastnorm.group_norm(x, 4)[0], ref.group_norm(xd, 4)[0]),
        (fastnorm.group_norm(np.moveaxis(x, 1, -1).copy(), 4, channels_last=True)[0],
         np.moveaxis(ref.group_norm(xd, 4)[0], 1, -1)),
        (fastnorm.instance_norm(x)[0], ref.instance_norm(xd)[0]),
        (fastnorm.batch_norm(x.reshape(-1, 8))[0], ref.batch_norm(xd.reshape(-1, 8))[0]),
        (fastnorm.batch_norm(x, wb, -wb)[0], ref.batch_norm(xd, wb.astype(np.float64), -wb.astype(np.float64))[0]),
        (fastnorm.group_norm(x, 4, wb, wb)[0], ref.group_norm(xd, 4, wb.astype(np.float64), wb.astype(np.float64))[0]),
    ]
    for got, expected in cases:
        assert np.max(np.abs(got - expected)) < 4 * np.spacing(np.float32(np.abs(expected).max()))
    mean, var = fastnorm.moments(x, (0, 2, 3))
    np.testing.assert_allclose(var, xd.var(axis=(0, 2, 3)), rtol=1e-4)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_infinite_scale_matches_reference(dtype, backend):
    """Eval batch norm with a zero running variance and eps = 0 scales by 1/0 = inf: as in
    (x - mean) * inf + b, elements away from the mean become +-inf and those at it NaN, on
    the fast path, the general path (strided input) and channels-last alike.  (The output
    pass folds the float32 mean's rounding error into the shift, b - lo * scale; with lo = 0
    and scale = inf that product must not be taken, or 0 * inf turns every element NaN.)"""
    x = np.array([[1.0, 2.0, -1.0], [3.0, 0.5, -1.0], [1.0, -4.0, 2.0]], dtype)
    rm, rv = np.array([1.0, 0.5, -1.0], dtype), np.zeros(3, dtype)
    b = np.array([0.5, -2.0, 1.0], dtype)
    expected = ref.batch_norm(x, None, b, rm.copy(), rv.copy(), training=False, eps=0.0)[0]
    assert np.isinf(expected).sum() == 4 and np.isnan(expected).sum() == 5
    wide = np.empty((3, 6), dtype)
    wide[:, ::2] = x
    for xx, last in ((x, False), (wide[:, ::2], False), (x.reshape(3, 1, 3), True)):
        got = fastnorm.batch_norm(xx, None, b, rm.copy(), rv.copy(), training=False, eps=0.0,
                                  channels_last=last)[0]
        np.testing.assert_array_equal(got.reshape(expected.shape), expected)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rows_with_infinite_rstd_and_signed_zeros_match_reference(dtype, backend):
    """Layer and RMS norm rows whose variance + eps is 0 scale by rstd = inf: +-inf away
    from the mean, NaN at it, as (x - mean) * rstd (the row kernels fold the mean's
    rounding error into a constant per row, which must not become 0 * inf = NaN for the
    whole row; float64 squares of 1e-170 underflow, float32 ones cannot, so there only a
    constant row); and -0 stays -0 (x * rstd + 0 would make it +0).  On the fast path and
    the general path (a strided view)."""
    tiny = 1e-170 if dtype == np.float64 else 0.0
    x = np.array([[tiny, -tiny, 0.0, tiny], [-0.0, 1.0, -2.0, 0.5]], dtype)
    wide = np.zeros((2, 8), dtype)
    wide[:, ::2] = x
    w = np.full(4, 2, dtype)
    for xx in (x, wide[:, ::2]):
        cases = ((fastnorm.layer_norm(xx, 4, eps=0.0)[0], ref.layer_norm(x, 4, eps=0.0)[0]),
                 (fastnorm.rms_norm(xx, 4, eps=0.0)[0], ref.rms_norm(x, 4, eps=0.0)[0]),
                 (fastnorm.rms_norm(xx, 4, w)[0], ref.rms_norm(x, 4, w)[0]))
        for got, expected in cases:
            special = ~np.isfinite(expected) | (expected == 0)
            np.testing.assert_array_equal(got[special], expected[special])
            np.testing.assert_array_equal(np.signbit(got[special]), np.signbit(expected[special]))
            np.testing.assert_allclose(got[~special], expected[~special], rtol=1e-6)
    assert np.signbit(ref.rms_norm(x, 4)[0][1, 0])
    if dtype == np.float64:
        assert np.isinf(ref.layer_norm(x, 4, eps=0.0)[0][0]).all()


@pytest.mark.parametrize("channels_last", [False, True])
def test_infinite_weight_matches_reference(channels_last, backend, rng):
    """An infinite weight with a float32 mean that float32 cannot hold (1e4 + randn): the
    mean's rounding error is not folded into the shift there (lo * inf), so the channel
    is +-inf on both sides of the mean as in the reference, not inf - inf = NaN on one."""
    x = (1e4 + rng.standard_normal((64, 3))).astype(np.float32)
    w, b = np.array([np.inf, 1.0, -np.inf], np.float32), np.array([0.5, -1.0, 2.0], np.float32)
    mean = x.astype(np.float64).mean(axis=0)
    assert np.all(mean != mean.astype(np.float32))       # the case of a rounding error
    assert not np.any(x == mean.astype(np.float32))       # where the pass gives NaN, the reference +-inf
    expected = ref.batch_norm(x, w, b)[0]
    assert np.isinf(expected[:, [0, 2]]).all()
    if channels_last:
        got = fastnorm.batch_norm(x.reshape(64, 1, 3), w, b, channels_last=True)[0].reshape(64, 3)
    else:
        got = fastnorm.batch_norm(x.T.copy().T, w, b)[0]  # Fortran order: the general path
        np.testing.assert_array_equal(fastnorm.batch_norm(x, w, b)[0][:, [0, 2]], expected[:, [0, 2]])
    np.testing.assert_array_equal(got[:, [0, 2]], expected[:, [0, 2]])


def test_constant_input_gives_zero_not_nan(backend):
    x = np.full((4, 3, 5), 7.25, np.float32)
    for y in (fastnorm.batch_norm(x)[0], fastnorm.layer_norm(x, 5)[0], fastnorm.group_norm(x, 3)[0],
              fastnorm.instance_norm(x)[0]):
        np.testing.assert_array_equal(y, 0)


def _at_one_and_two_threads(fn):
    """[fn() with 1 thread, fn() with 2 threads]; the thread setting restored after."""
    results = []
    for n in (1, 2):
        fastnorm.set_num_threads(n)
        try:
            results.append(fn())
        finally:
            fastnorm.set_num_threads(None)
    return results


def test_thread_count_bit_identical(backend, rng):
    if backend[0] == "numpy":
        pytest.skip("the NumPy backend is single-threaded")
    x = (3 + rng.standard_normal((64, 16, 9, 16))).astype(np.float32)
    g = rng.standard_normal(x.shape).astype(np.float32)
    w, b = rng.standard_normal(16).astype(np.float32), rng.standard_normal(16).astype(np.float32)
    x2, g2 = x.reshape(-1, 16), g.reshape(-1, 16)   # batch norm 1-d: column path, row blocks
    xl, gl = x.reshape(-1, 144), g.reshape(-1, 144)
    wl = rng.standard_normal(144).astype(np.float32)

    def everything():
        res = []
        for cl in (False, True):
            y, m, r = fastnorm.batch_norm(x, w, b, channels_last=cl)
            res += [y, m, r, *fastnorm.batch_norm_backward(g, x, w, m, r, channels_last=cl, bias=b)]
            y, m, r = fastnorm.group_norm(x, 4, w, b, channels_last=cl)
            res += [y, m, r, *fastnorm.group_norm_backward(g, x, 4, w, m, r, channels_last=cl, bias=b)]
        y, m, r = fastnorm.batch_norm(x2, w, b)
        res += [y, m, r, *fastnorm.batch_norm_backward(g2, x2, w, m, r, bias=b)]
        y, m, r = fastnorm.layer_norm(xl, 144, wl, wl)
        res += [y, m, r, *fastnorm.layer_norm_backward(gl, xl, 144, wl, m, r, bias=wl)]
        y, r = fastnorm.rms_norm(xl, 144, wl)
        res += [y, r, *fastnorm.rms_norm_backward(gl, xl, 144, wl, r)]
        res += list(fastnorm.moments(x, (0, 2, 3))) + list(fastnorm.moments(x2, 0))
        return res

    for a, b_ in zip(*_at_one_and_two_threads(everything)):
        np.testing.assert_array_equal(a, b_)


def _wide_row_calls(shape, dtype, rng):
    """Layer/RMS norm backward calls on one random case, by name: call(mod) runs it on
    fastnorm (default) or on the oracle, with both, either or neither parameter gradient."""
    k = shape[-1]
    x = (2 + 3 * rng.standard_normal(shape)).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    w, b = rng.standard_normal(k).astype(dtype), rng.standard_normal(k).astype(dtype)
    _, mean, rstd = fastnorm.layer_norm(x, k, w, b)
    _, rms_rstd = fastnorm.rms_norm(x, k, w)
    calls = {f"layer w={ww is not None} b={bb is not None}":
             (lambda ww=ww, bb=bb, mod=fastnorm: mod.layer_norm_backward(g, x, k, ww, mean, rstd, bias=bb))
             for ww in (w, None) for bb in (b, None)}
    calls["rms"] = lambda mod=fastnorm: mod.rms_norm_backward(g, x, k, w, rms_rstd)
    return calls


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rows_same_bits_alone_and_in_a_block(dtype, backend, rng):
    """Layer and RMS norm give a row the same bits whether it is normalized alone or among
    others, in place or not: the kernel takes the sums of a block's first group of rows by
    themselves and every later row's while it writes the row one group before
    (fn_norm_rows_forward), and the two must agree to the bit, for row lengths 1-40 (0-15
    elements after whole 16-element pieces) and rows long enough for groups of 3, 2 and 1.
    Row 1 has a large offset and row 3 a NaN.  Also into an out= array 1-511 bytes after x
    modulo 4 KiB, where a row's output runs from its end down (row_output, fn_trails)."""
    itemsize = np.dtype(dtype).itemsize
    pages = Pages(80)
    for k in list(range(1, 41)) + [500, 600, 1000, 1200, 1500]:
        x = pages.at(0, 11 * k, dtype).reshape(11, k)
        x[:] = rng.standard_normal((11, k)) * 3 + 2
        x[1] += 1e4
        x[3, k // 2] = np.nan
        w, b = rng.standard_normal(k).astype(dtype), rng.standard_normal(k).astype(dtype)
        for call in (lambda a, **o: fastnorm.layer_norm(a, k, w, b, **o),
                     lambda a, **o: fastnorm.rms_norm(a, k, w, **o)):
            block = call(x)
            in_place = x.copy()
            call(in_place, out=in_place)
            assert in_place.tobytes() == block[0].tobytes(), k
            for d in (itemsize, 48, 256, 512 - itemsize, 512, -48):
                out = pages.at(40 * 4096 + d, 11 * k, dtype).reshape(11, k)   # x: < 33 pages
                out[:] = np.inf
                pages.write_into(out, lambda: call(x, out=out))
                assert out.tobytes() == block[0].tobytes(), (k, d)
            for i in range(11):
                alone = call(x[i:i + 1].copy())
                for a, b_ in zip(alone, block):
                    assert a.tobytes() == b_[i:i + 1].tobytes(), (k, i)
        # the output pass without weight or bias (other compiled variants of it)
        for call in (lambda a, **o: fastnorm.layer_norm(a, k, **o),
                     lambda a, **o: fastnorm.layer_norm(a, k, None, b, **o),
                     lambda a, **o: fastnorm.rms_norm(a, k, **o)):
            block = call(x)
            for d in (48, 512 - itemsize):
                out = pages.at(40 * 4096 + d, 11 * k, dtype).reshape(11, k)
                out[:] = np.inf
                pages.write_into(out, lambda: call(x, out=out))
                assert out.tobytes() == block[0].tobytes(), (k, d)


@pytest.mark.parametrize("k", [1, 15, 16, 127, 128, 129, 144, 256, 300, 1000, 4100])
def test_rows_backward_sums_without_parameter_gradients(k, backend, num_threads, rng):
    """Float32 layer and RMS norm backward without parameter gradients take each row's two
    sums (of g = dy * w and of g * (x - mean)) in float over stretches of at most 128
    elements, then in double (rows_grad_sums): grad_x stays within a few float roundings of
    the float64 oracle's for rows without a whole 16-element piece (1, 15), of whole
    stretches (128, 256), of stretches and a part-stretch, with and without a tail of 1-15
    elements, and with an offset of 1e4 on one row (its centred values rounded to float32, as
    x - mean everywhere else); a row gives the same bits alone and among others.  The same
    sums with a weight (no public call has a weight without its gradient: the kernel's own
    entry point).  Rows whose float sums overflow (dy near 1e38) or hold a NaN take the double
    sums instead: finite where the double sums are, and the bits of the call with a parameter
    gradient, whose row sums are the same."""
    x = (rng.standard_normal((9, k)) * 3 + 2).astype(np.float32)
    x[2] += 1e4
    g = rng.standard_normal((9, k)).astype(np.float32)
    w = rng.standard_normal(k).astype(np.float32)
    _, mean, rstd = fastnorm.layer_norm(x, k)
    _, rms_rstd = fastnorm.rms_norm(x, k)
    f64 = {name: a.astype(np.float64) for name, a in
           {"x": x, "g": g, "w": w, "mean": mean, "rstd": rstd, "rms_rstd": rms_rstd}.items()}

    def within(got, expected, gscale, r):
        # the largest term of a row's grad_x, |rstd * g|, sets the scale of its roundings
        scale = gscale.max(axis=1, keepdims=True) * r[:, None]
        err = np.abs(got.astype(np.float64) - expected) / scale
        assert err.max() < 3e-6, float(err.max())

    calls = {
        "layer": (lambda x, g, m, r, r2: fastnorm.layer_norm_backward(g, x, k, None, m, r)[0],
                  lambda: ref.layer_norm_backward(f64["g"], f64["x"], k, None, f64["mean"], f64["rstd"])[0],
                  f64["rstd"]),
        "rms": (lambda x, g, m, r, r2: fastnorm.rms_norm_backward(g, x, k, None, r2)[0],
                lambda: ref.rms_norm_backward(f64["g"], f64["x"], k, None, f64["rms_rstd"])[0],
                f64["rms_rstd"]),
    }
    for name, (ours, oracle, r) in calls.items():
        got = ours(x, g, mean, rstd, rms_rstd)
        within(got, oracle(), np.abs(f64["g"]), r)
        for i in (0, 2, 8):
            alone = ours(x[i:i + 1], g[i:i + 1], mean[i:i + 1], rstd[i:i + 1], rms_rstd[i:i + 1])
            assert alone.tobytes() == got[i:i + 1].tobytes(), (name, i)
    bias = np.zeros(k, np.float32)
    huge = g.copy()
    huge[1] = np.float32(1e38) * np.sign(g[1])
    huge[4, k // 2] = np.nan
    without = fastnorm.layer_norm_backward(huge, x, k, None, mean, rstd)[0]
    with_bias = fastnorm.layer_norm_backward(huge, x, k, None, mean, rstd, bias=bias)[0]
    assert np.isnan(without[4]).all()
    assert np.isfinite(without[1]).all() or k == 1   # one element: rstd = eps**-0.5 overflows dy * rstd
    for i in (1, 4):
        assert without[i].tobytes() == with_bias[i].tobytes(), i
    if backend[0] != "cython":
        return
    ext = fastnorm._config._modules["normalization"]
    gx = np.empty(x.size, np.float32)
    sums = ext.rows_backward(g.ravel(), x.ravel(), gx, 9, k, w, mean, rstd, False, False, False,
                             fastnorm.get_num_threads())
    assert sums == (None, None)
    within(gx.reshape(x.shape),
           ref.layer_norm_backward(f64["g"], f64["x"], k, f64["w"], f64["mean"], f64["rstd"])[0],
           np.abs(f64["g"] * f64["w"]), f64["rstd"])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_groups_same_bits_alone_and_in_a_block(dtype, backend, num_threads, rng):
    """Group and instance norm give a sample the same bits whether it is normalized alone or
    among others, in place or not: the kernel takes the sums of a range's first units (groups
    of a sample) by themselves and every later unit's while it writes the unit one group of
    units before (fn_norm_group_forward), and the two must agree to the bit, for channel runs
    of 1-40 elements (0-15 after whole 16-element pieces), 1-3 channels per group, and units
    long enough for groups of units of 2 and 1.  Sample 1 has a large offset and sample 3 a
    NaN.  The kernel called directly with 2 and 3 threads (ranges that start inside a group
    of units) gives the bits of 1 thread.  The same for group norm backward's grad_x (a fused
    backward tried and not kept had let gcc round its weighted channel sums differently from
    one place in the batch to another)."""
    for hw in list(range(1, 41)) + [300, 700, 1500]:
        for cg in (1, 2, 3):
            x = (rng.standard_normal((11, 2 * cg, hw)) * 3 + 2).astype(dtype)
            x[1] += 1e4
            x[3, cg, hw // 2] = np.nan
            w, b = rng.standard_normal(2 * cg).astype(dtype), rng.standard_normal(2 * cg).astype(dtype)
            calls = [lambda a, **o: fastnorm.group_norm(a, 2, w, b, **o),
                     lambda a, **o: fastnorm.group_norm(a, 2, **o)]
            if hw > 1:
                calls.append(lambda a, **o: fastnorm.instance_norm(a, w, b, **o))
            for call in calls:
                block = call(x)
                in_place = x.copy()
                call(in_place, out=in_place)
                assert in_place.tobytes() == block[0].tobytes(), (hw, cg)
                for i in range(11):
                    alone = call(x[i:i + 1].copy())
                    for a, b_ in zip(alone, block):
                        assert a.tobytes() == b_[i:i + 1].tobytes(), (hw, cg, i)
            if backend[0] != "numpy":
                ext = fastnorm._config._modules["normalization"]
                results = []
                for threads in (1, 2, 3):
                    y, mean_d, m2 = np.empty_like(x), np.empty(22), np.empty(22)
                    ext.group_forward(x.reshape(-1), y.reshape(-1), 2, cg, hw, w, b, 1e-5, mean_d, m2,
                                      threads)
                    results.append(y.tobytes() + mean_d.tobytes() + m2.tobytes())
                assert results[1] == results[0] and results[2] == results[0], (hw, cg)
            g = rng.standard_normal(x.shape).astype(dtype)
            _, mean, rstd = fastnorm.group_norm(x, 2, w, b)
            grad_x = fastnorm.group_norm_backward(g, x, 2, w, mean, rstd, bias=b)[0]
            for i in range(11):
                alone = fastnorm.group_norm_backward(g[i:i + 1].copy(), x[i:i + 1].copy(), 2, w,
                                                     mean[i:i + 1].copy(), rstd[i:i + 1].copy(), bias=b)[0]
                assert alone.tobytes() == grad_x[i:i + 1].tobytes(), ("backward", hw, cg, i)


# Byte distances of an output from an input modulo 4 KiB: 1-511 after it the channels-first
# output passes run downwards (fn_trails, MAP_DOWN), elsewhere upwards.
_PLACES = (8, 48, 256, 504, 512, -48)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_channel_outputs_same_bits_wherever_they_lie(dtype, backend, num_threads, rng):
    """Batch norm (training and eval), group norm and instance norm write the same bits into
    an out= array wherever it lies from x (1-511 bytes after it their output passes go down:
    affine_runs_down, unit_output), and nothing outside it; channel runs of 1-40 elements
    (0-15 after whole 16-element pieces) and longer, 1-3 channels per group, a NaN in one
    channel and a large offset in another.  Batch norm training also by blocks of channels
    (_set_channel_blocks: the output pass called once per sample and block, ranges that start
    past the first run)."""
    ext = fastnorm._config.compiled_module("normalization")
    pages = Pages(100)
    for hw in (1, 7, 16, 23, 40, 300):
        for cg in (1, 2, 3):
            shape = (3, 2 * cg, hw)
            n = math.prod(shape)
            x = pages.at(0, n, dtype).reshape(shape)
            x[:] = rng.standard_normal(shape) * 3 + 2
            x[1, 0] += 1e4
            x[2, cg, hw // 2] = np.nan
            w, b = rng.standard_normal(2 * cg).astype(dtype), rng.standard_normal(2 * cg).astype(dtype)
            calls = [lambda a, **o: fastnorm.group_norm(a, 2, w, b, **o),
                     lambda a, **o: fastnorm.group_norm(a, 2, **o),
                     lambda a, **o: fastnorm.batch_norm(a, w, b, **o),
                     lambda a, **o: fastnorm.batch_norm(a, None, b, np.zeros(2 * cg, dtype),
                                                        np.ones(2 * cg, dtype), training=False, **o)]
            if hw > 1:
                calls.append(lambda a, **o: fastnorm.instance_norm(a, w, b, **o))
            for i, call in enumerate(calls):
                expected = call(x)[0].tobytes()
                # blocks of one channel (3 runs of hw): the pass called per sample and channel
                blocks = (None,) if ext is None or i != 2 else (None, (3 * hw * x.itemsize, 0, 0))
                for block in blocks:
                    previous = None if block is None else ext._set_channel_blocks(*block)
                    try:
                        for d in _PLACES:
                            out = pages.at(50 * 4096 + d, n, dtype).reshape(shape)   # x: < 45 pages
                            out[:] = np.inf
                            pages.write_into(out, lambda: call(x, out=out))
                            assert out.tobytes() == expected, (hw, cg, i, block, d)
                    finally:
                        if previous is not None:
                            ext._set_channel_blocks(*previous)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_channel_gradients_same_bits_wherever_they_lie(dtype, threads, backend, rng):
    """The gradient passes of batch norm (affine_grad) and group norm (group_backward), called
    with grad_x 1-511 bytes after dy or after x (they then go down, unless grad_x also leads
    one of them by as much: fn_trails_one_of) and elsewhere, with 1 and 2 threads (ranges that
    start past the first run or unit), give the same bits and write nothing outside grad_x.
    A run whose coefficients hold a NaN is NaN throughout, with one NaN's bits wherever
    grad_x lies (nan_grad_run): batch norm's channel 1 with a NaN k2, channel 2 with a NaN
    k1 and k2 = k3 = 0 (as in eval mode with a NaN weight), group norm's unit 3 with a NaN
    rstd (so NaN k1, k2, k3 of both signs).  (Batch norm's runs of one element go by the
    channels-last loop, which computes its NaNs.)"""
    if backend[0] == "numpy":
        pytest.skip("compiled kernels only")
    ext = fastnorm._config._modules["normalization"]
    pages = Pages(160)
    for hw in (1, 7, 16, 23, 40, 300):
        for cg in (1, 2, 3):
            groups, n_samples = 2, 3
            c = groups * cg
            n = n_samples * c * hw
            x = pages.at(0, n, dtype)
            x[:] = rng.standard_normal(n) * 3 + 2
            dy = pages.at(50 * 4096 + 256, n, dtype)   # 256 bytes after x modulo 4 KiB
            dy[:] = rng.standard_normal(n)
            w = rng.standard_normal(c).astype(dtype)
            k1, mhi, k2, k3 = (rng.standard_normal(c).astype(dtype) for _ in range(4))
            k2[1] = np.nan
            nan_runs = np.zeros((n_samples, c, hw), bool)
            nan_runs[:, 1] = True
            if c > 2:
                k1[2], k2[2], k3[2] = -np.nan, 0, 0
                nan_runs[:, 2] = True
            units = n_samples * groups
            center = rng.standard_normal(units)
            mhi_g = center.astype(dtype)
            rstd = np.abs(rng.standard_normal(units)) + 0.5
            rstd[3] = np.nan
            s_shape = units * cg

            def affine_grad(gx):
                ext.affine_grad(dy, x, gx, 1, n_samples, c, hw, k1, mhi, k2, k3, threads)

            def group_backward(gx):
                ext.group_backward(dy, x, gx, groups, cg, hw, w, center, mhi_g, rstd,
                                   np.empty(s_shape), np.empty(s_shape), threads)

            unit_3 = np.zeros((units, cg * hw), bool)
            unit_3[3] = True
            for kernel, nan_at in ((affine_grad, nan_runs), (group_backward, unit_3)):
                expected = np.empty(n, dtype)
                kernel(expected)
                assert np.array_equal(np.isnan(expected), nan_at.reshape(-1)), (kernel.__name__, hw, cg)
                if kernel is group_backward or hw > 1:   # runs of 1: the channels-last loop
                    nan_bits = expected[np.isnan(expected)].view(f"u{expected.itemsize}")
                    assert np.all(nan_bits == nan_bits[0]), (kernel.__name__, hw, cg)
                # from x: 8 and 48 (just before dy), 256 (at dy), 504 and 512 (after both
                # or after dy alone), 304 (48 after dy), -48 (before both)
                for d in _PLACES + (304,):
                    gx = pages.at(100 * 4096 + d, n, dtype)
                    gx[:] = np.inf
                    pages.write_into(gx, lambda: kernel(gx))
                    assert gx.tobytes() == expected.tobytes(), (kernel.__name__, hw, cg, d)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_row_gradients_same_bits_wherever_they_lie(dtype, threads, backend, rng):
    """Layer and RMS norm's backward kernel (rows_backward), called with grad_x 1-511 bytes
    after dy or x (each row's output then goes down, rows_backward_down) and elsewhere, with
    and without weight and parameter gradients, 1 and 2 threads: the same bits (grad_x and
    the parameter gradients) and nothing written outside grad_x; row lengths 1-40 and longer,
    a large offset in one row and a NaN in another."""
    if backend[0] == "numpy":
        pytest.skip("compiled kernels only")
    ext = fastnorm._config._modules["normalization"]
    pages = Pages(120)
    rows = 5
    for k in (1, 7, 16, 23, 40, 300, 1000):
        n = rows * k
        x = pages.at(0, n, dtype)
        x[:] = rng.standard_normal(n) * 3 + 2
        x[k: 2 * k] += 1e4
        x[3 * k + k // 2] = np.nan
        dy = pages.at(40 * 4096 + 256, n, dtype)   # 256 bytes after x modulo 4 KiB
        dy[:] = rng.standard_normal(n)
        w = rng.standard_normal(k).astype(dtype)
        for rms in (False, True):
            _, mean, rstd = fastnorm.layer_norm(x.reshape(rows, k), k, w)
            if rms:
                _, rstd = fastnorm.rms_norm(x.reshape(rows, k), k, w)
                mean = rstd
            for weight, want in ((w, True), (w, False), (None, False)):
                def kernel(gx):
                    return ext.rows_backward(dy, x, gx, rows, k, weight, mean, rstd, rms,
                                             want and weight is not None, want, threads)

                expected = np.empty(n, dtype)
                expected_sums = [a.tobytes() for a in kernel(expected) if a is not None]
                for d in _PLACES + (304,):
                    gx = pages.at(80 * 4096 + d, n, dtype)
                    gx[:] = np.inf
                    sums = pages.write_into(gx, lambda: kernel(gx))
                    assert gx.tobytes() == expected.tobytes(), (k, rms, weight is None, want, d)
                    assert [a.tobytes() for a in sums if a is not None] == expected_sums


@pytest.mark.parametrize("rows", [2, 5])
@pytest.mark.parametrize("path", ["fast", "general"])
def test_float32_parameter_gradient_overflow_warns(path, rows):
    """A float32 weight/bias gradient beyond float32's range is inf with NumPy's overflow
    warning, on the fast path (plain arrays) as on the general one (a strided x); also where
    a four-row float partial overflowed first (5 rows: the block's float64 terms again)."""
    g = np.full((rows, 8), 3e38, np.float32)
    x = np.arange(rows * 8, dtype=np.float32).reshape(rows, 8)
    w, b = np.ones(8, np.float32), np.zeros(8, np.float32)
    y, mean, rstd = fastnorm.layer_norm(x, 8, w, b)
    if path == "general":
        x = np.repeat(x, 2, axis=1)[:, ::2]
    with pytest.warns(RuntimeWarning, match="overflow"):
        gx, gw, gb = fastnorm.layer_norm_backward(g, x, 8, w, mean, rstd, bias=b)
    assert gb.dtype == np.float32 and np.isposinf(gb).all()
    with np.errstate(over="raise"), pytest.raises(FloatingPointError):
        fastnorm.layer_norm_backward(g, x, 8, w, mean, rstd, bias=b)


def test_reference_rounds_parameter_gradients_under_the_callers_settings():
    """The NumPy reference (the oracle and the backend without a compiler) is silent on
    non-finite data, but rounds the parameter gradients to float32 under the caller's
    floating-point settings: one beyond float32's range is inf with NumPy's overflow warning
    (or error), as on the compiled backend (test_float32_parameter_gradient_overflow_warns)."""
    g = np.full((2, 8), 3e38, np.float32)
    x = np.arange(16, dtype=np.float32).reshape(2, 8)
    w, b = np.ones(8, np.float32), np.zeros(8, np.float32)
    _, mean, rstd = ref.layer_norm(x, 8, w, b)
    _, bmean, brstd = ref.batch_norm(x, w, b)
    for backward in (lambda: ref.layer_norm_backward(g, x, 8, w, mean, rstd, bias=b),
                     lambda: ref.batch_norm_backward(g, x, w, bmean, brstd, bias=b)):
        with pytest.warns(RuntimeWarning, match="overflow"):
            gb = backward()[2]
        assert gb.dtype == np.float32 and np.isposinf(gb).all()
        with np.errstate(over="raise"), pytest.raises(FloatingPointError):
            backward()
    xn = x.copy()
    xn[0, 3] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gx, gw, gb = ref.layer_norm_backward(np.ones_like(x), xn, 8, w, mean, rstd, bias=b)
    assert np.isnan(gx[0]).all() and np.isfinite(gx[1]).all()


def test_float32_parameter_gradient_overflow_boundary():
    """The float64 sums round to float32 as NumPy's cast: FLT_MAX + 2^103 (half an ulp, a tie
    to even) becomes Inf with the overflow warning, FLT_MAX + 2^102 becomes FLT_MAX without
    one."""
    fmax = float(np.finfo(np.float32).max)
    x = np.arange(16, dtype=np.float32).reshape(2, 8)
    _, mean, rstd = fastnorm.layer_norm(x, 8)
    b = np.zeros(8, np.float32)
    for extra, overflows in ((2.0 ** 103, True), (2.0 ** 102, False)):
        g = np.array([[fmax] * 8, [extra] * 8], np.float32)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            gb = fastnorm.layer_norm_backward(g, x, 8, None, mean, rstd, bias=b)[2]
        assert bool(caught) == overflows
        expected = np.float32(np.inf) if overflows else np.float32(fmax)
        assert (gb == expected).all()


@pytest.mark.parametrize("which", ["both", "weight", "bias", "rms"])
@pytest.mark.parametrize("shape", [(4, 8), (9, 8), (600, 600)], ids=str)
def test_float32_parameter_gradient_partial_overflow(shape, which, backend, num_threads, rng):
    """float32 layer / RMS norm backward adds its parameter-gradient terms four rows at a
    time in float before the float64 column sums.  Four equal first rows of x with dy = 2^127,
    2^127, -2^127, -2^127: their float terms or partials overflow (Inf, then NaN), while in
    float64 the products are exact and cancel to 0.  The block then takes the float64 terms
    for all its rows, so the gradients are the other rows' sums, the oracle's to float32
    accuracy: a fallback that kept an Inf, or redid only some rows ((600, 600) has several
    sub-blocks), would fail."""
    m, k = shape
    x = rng.standard_normal(shape).astype(np.float32)
    g = rng.standard_normal(shape).astype(np.float32)
    w, b = rng.standard_normal(k).astype(np.float32), rng.standard_normal(k).astype(np.float32)
    x[:4] = np.linspace(-2, 2, k, dtype=np.float32)
    g[:4] = np.array([1, 1, -1, -1], np.float32)[:, None] * np.float32(2.0 ** 127)
    weight = None if which == "bias" else w
    bias = b if which in ("both", "bias") else None
    with np.errstate(over="ignore", invalid="ignore"):
        if which == "rms":
            _, rstd = fastnorm.rms_norm(x, k, w)
            got = fastnorm.rms_norm_backward(g, x, k, w, rstd)[1:]
            expected = ref.rms_norm_backward(f64(g), f64(x), k, f64(w), f64(rstd))[1:]
        else:
            _, mean, rstd = fastnorm.layer_norm(x, k, weight, bias)
            got = fastnorm.layer_norm_backward(g, x, k, weight, mean, rstd, bias=bias)[1:]
            expected = ref.layer_norm_backward(f64(g), f64(x), k, f64(weight), f64(mean), f64(rstd),
                                               bias=f64(bias))[1:]
    assert sum(e is not None for e in expected) == (2 if which == "both" else 1)
    for a, e in zip(got, expected):
        assert (a is None) == (e is None)
        if a is not None:
            assert np.isfinite(a).all()
            assert_close(a, e, np.float32)


@pytest.mark.parametrize("shape", [(37, 513), (2703, 600), (3, 901, 1030)], ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_wide_row_parameter_gradients(shape, dtype, backend, rng):
    """float64 rows wider than 512 from more than 12 MiB of dy and x sum the parameter
    gradients in a pass over each sub-block of rows (four per visit, remainder rows included;
    the last two shapes) with the AVX-512 kernels, the other variants and smaller calls in the
    row loop (test_parameter_gradient_pass_same_bits forces both places on every variant);
    float32 always in its own pass.  Both: the oracle's values, and the same bits at 1 and 2
    threads, with both, either or neither gradient, for layer and RMS norm."""
    calls = _wide_row_calls(shape, dtype, rng)
    for name, call in calls.items():
        got = _at_one_and_two_threads(call)
        for a, b_ in zip(*got):
            assert (a is None) == (b_ is None), name
            if a is not None:
                np.testing.assert_array_equal(a, b_, err_msg=name)
        for a, e in zip(got[0], call(mod=ref)):
            assert (a is None) == (e is None), name
            if a is not None:
                assert_close(a, e, dtype, name)


@pytest.mark.parametrize("blocks, rows, channels", [(1, 11, 1025), (1, 9, 3001), (1, 5, 513), (1, 4, 1100),
                                                    (2, 5, 1100), (3, 6, 600), (4, 1, 1100),
                                                    (1, 11, 64), (1, 9, 128), (2, 5, 33), (3, 6, 7),
                                                    (4, 1, 16), (5, 4, 64), (1, 4200, 128),
                                                    (1, 9, 700), (2, 5, 300), (1, 6, 1024),
                                                    (1, 7, 1023)], ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_wide_channels_last_rows_same_bits(blocks, rows, channels, dtype, backend, rng):
    """Channels-last output passes take rows wider than 4 KiB, and rows narrower than 4 KiB
    in ranges of at most 2 MiB (float32 (4200, 128): one row at a time on 1 thread, four on
    2 and 3; rows of exactly 4 KiB, (6, 1024) float32, one at a time), four at a time (one
    read of the per-channel vectors for four rows) when four whole rows of one parameter
    block are left in the range: the same bits as one row at a time (each row passed alone
    with its block's vectors), on every ISA and at 1-3 threads (ranges starting or ending
    inside a row), with 1-3 rows left over, rows of 4 KiB + one element ((5, 513) float64,
    (11, 1025) float32) and one element less ((7, 1023) float32), several parameter blocks
    (group norm's per-sample geometry: a visit must not span two), and in place (y is x),
    where a visit past the range's end would read rows another thread already wrote."""
    if backend[0] != "cython":
        pytest.skip("compiled kernels only")
    ext = fastnorm._config._modules["normalization"]
    n = blocks * rows
    x = (5 + rng.standard_normal((n, channels))).astype(dtype)
    g = rng.standard_normal((n, channels)).astype(dtype)
    vectors = [rng.standard_normal(blocks * channels).astype(dtype) for _ in range(4)]

    def forward(a, vs, nthreads, in_place=False):
        y = a.copy() if in_place else np.empty_like(a)
        ext.affine((y if in_place else a).reshape(-1), y.reshape(-1), len(vs[0]) // channels,
                   a.shape[0] * channels // len(vs[0]), channels, 1, *vs[:3], nthreads)  # mhi, scale, shift
        return y

    def backward(d, a, vs, nthreads):
        gx = np.empty_like(a)
        ext.affine_grad(d.reshape(-1), a.reshape(-1), gx.reshape(-1), len(vs[0]) // channels,
                        a.shape[0] * channels // len(vs[0]), channels, 1, *vs, nthreads)
        return gx

    def block_of(r):
        return [v[(r // rows) * channels:(r // rows + 1) * channels] for v in vectors]

    # The backend fixture has set the ISA variant.
    one_by_one = (np.concatenate([forward(x[r:r + 1], block_of(r), 1) for r in range(n)]),
                  np.concatenate([backward(g[r:r + 1], x[r:r + 1], block_of(r), 1) for r in range(n)]))
    for nthreads in (1, 2, 3):  # bit for bit (assert_array_equal would let -0.0 == 0.0 pass)
        assert forward(x, vectors, nthreads).tobytes() == one_by_one[0].tobytes(), nthreads
        assert forward(x, vectors, nthreads, in_place=True).tobytes() == one_by_one[0].tobytes(), nthreads
        assert backward(g, x, vectors, nthreads).tobytes() == one_by_one[1].tobytes(), nthreads
    p1, p2, p3 = (v.reshape(blocks, 1, channels) for v in vectors[:3])
    expected = (x.reshape(blocks, rows, channels) - p1) * p2 + p3
    assert_close(forward(x, vectors, 1).reshape(expected.shape), expected, dtype)


@pytest.mark.parametrize("shape, dtype", [((2, 5, 1, 1100), np.float32), ((2, 3, 2, 600), np.float64)], ids=str)
def test_wide_channels_last_group_norm(shape, dtype, backend, rng):
    """Group norm channels-last with rows over 4 KiB (per-sample parameters: four-row visits
    within one sample only) against the oracle, forward and backward."""
    x = (2 + rng.standard_normal(shape)).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    c = shape[-1]
    w, b = rng.standard_normal(c).astype(dtype), rng.standard_normal(c).astype(dtype)
    got = fastnorm.group_norm(x, 4, w, b, channels_last=True)
    want = ref.group_norm(x, 4, w, b, channels_last=True)
    for a, e in zip(got, want):
        assert_close(a, e, dtype)
    got_b = fastnorm.group_norm_backward(g, x, 4, w, got[1], got[2], channels_last=True, bias=b)
    want_b = ref.group_norm_backward(g, x, 4, w, got[1], got[2], channels_last=True, bias=b)
    for a, e in zip(got_b, want_b):
        assert_close(a, e, dtype)


def _fused_multiply_add(a, b, c):
    """a * b + c rounded once, elementwise (float64 arrays): what a fused multiply-add gives."""
    return np.array([float(Fraction(p) * Fraction(q) + Fraction(s))
                     for p, q, s in zip(a.tolist(), b.tolist(), c.tolist())])


def _round_float32(v):
    """The float32 nearest the rational v, ties to even."""
    f = np.float32(float(v))
    neighbours = (np.nextafter(f, np.float32(-np.inf)), f, np.nextafter(f, np.float32(np.inf)))
    return min(neighbours, key=lambda c: (abs(Fraction(float(c)) - v), int(c.view(np.uint32)) & 1))


def _fused_multiply_add32(a, b, c):
    """a * b + c rounded once to float32, elementwise (float32 arrays): a * b is exact in
    float64, and so is the sum where its TwoSum error is zero; the rest in rationals."""
    p, cd = a.astype(np.float64) * b.astype(np.float64), c.astype(np.float64)
    s = p + cd
    t = s - p
    err = (p - (s - t)) + (cd - t)
    out = s.astype(np.float32)
    for i in np.flatnonzero(err != 0):
        out[i] = _round_float32(Fraction(float(p[i])) + Fraction(float(cd[i])))
    return out


def _column_sums_in_float_visits(g, x, center, madd, move):
    """(s1, s2) = (sum(g), sum(g * (x - center))) per column of float32 (rows, W) data as the
    float32 column sums with the AVX2 / AVX-512 lanes take them (dual_cols_float): blocks of
    max(64, ceil(rows / 32)) rows, each in visits of four rows (the last two or three in one
    visit, or a last one alone) whose terms go in float32, p = sum(g) and q = madd(g, x - cf,
    q) row after row with cf = center rounded to float32, and then into float64 sums per
    block, whose second sum is moved to the centre, move(cf - center, first, second), before
    the blocks' sums are added in order."""
    rows, width = x.shape
    cf = center.astype(np.float32)
    shift = cf.astype(np.float64) - center
    block = max(64, (rows + 31) // 32)
    s1, s2 = np.zeros(width), np.zeros(width)
    for b0 in range(0, rows, block):
        n = min(block, rows - b0)
        visits = [4] * (n // 4) + ([n % 4] if n % 4 > 1 else [1] * (n % 4))
        a, b, r = np.zeros(width), np.zeros(width), b0
        for k in visits:
            p, q = np.zeros(width, np.float32), np.zeros(width, np.float32)
            for j in range(r, r + k):
                p = p + g[j]
                q = madd(g[j], x[j] - cf, q)
            a, b, r = a + p.astype(np.float64), b + q.astype(np.float64), r + k
        s1, s2 = s1 + a, s2 + move(shift, a, b)
    return s1, s2


# The fused references of test_column_statistics_same_bits by (rows, channels, dtype, data),
# and those of its float32 float visits by (that key, "float visits"): exact rational
# arithmetic per element is slow, and every ISA and thread count of a case compares against
# the same ones.
_FUSED_COLUMN_SUMS = {}


@pytest.mark.parametrize("rows, channels", [(9, 1100), (23, 600), (70, 520), (150, 300), (13, 100),
                                           (200, 7), (17, 2048), (23, 512), (23, 256), (2, 1100),
                                           (3, 600), (7, 300), (5, 2100), (9, 4099)], ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_column_statistics_same_bits(rows, channels, dtype, backend, num_threads, rng):
    """Batch norm's per-feature statistics of (N, C) data (column sums over blocks of rows,
    eight rows per visit for rows of 2 KiB and more, four for narrower ones, the last two or
    three of a block in one visit, or a last one alone): every row is added after the one
    before, so mean and M2 are exactly those of a plain row-by-row sum of each block in
    float64 (blocks of max(64, ceil(N / 32)) rows, their sums added in order; each square
    added by a multiply-add that the build fuses or not, the same way in every column and
    visit), and mean and M2 of a column are the same bits whether its rows went eight or
    four at a time (the same columns taken narrower than 2 KiB, also from an odd offset,
    which moves them between the vector body and the scalar remainder), on every ISA and
    thread count.  The backward's column sums (dual_sums: four rows per visit, then the last
    two or three in one visit, or a last one alone) add sum(dy) and sum(dy * (x - center))
    the same way, in float64 (float32 with the AVX2 / AVX-512 lanes: each visit's terms in
    float32 first, _column_sums_in_float_visits, also around a centre that is no float, and
    over more than one slab of 2048 columns); their centre is x's last row, so that no row's
    terms are zero.  Values spread over 7 decades, so that the float64 sums round and a
    different order would show (in float64 data; float32 terms mostly add exactly)."""
    if backend[0] != "cython":
        pytest.skip("compiled kernels only")
    ext = fastnorm._config._modules["normalization"]
    spread = np.exp(rng.uniform(-8, 8, (rows, channels)))
    x = (3 + rng.standard_normal((rows, channels)) * spread).astype(dtype)
    g = (rng.standard_normal((rows, channels)) * spread).astype(dtype)

    def stats(a):
        mean, m2 = np.empty(a.shape[1]), np.empty(a.shape[1])
        ext.stats(np.ascontiguousarray(a).reshape(-1), 1, rows, a.shape[1], 1, mean, m2, num_threads)
        return mean, m2

    def row_by_row(add_row):
        """Each block's rows added one after the other, partial = add_row(partial, r) from
        +0.0, and the blocks' sums added in order."""
        block = max(64, (rows + 31) // 32)
        total = np.zeros(channels)
        for b0 in range(0, rows, block):
            partial = np.zeros(channels)
            for r in range(b0, min(b0 + block, rows)):
                partial = add_row(partial, r)
            total = total + partial
        return total

    xd, gd = x.astype(np.float64), g.astype(np.float64)
    shift, center = xd[0], xd[-1]
    d, e = xd - shift, xd - center
    mean, m2 = stats(x)
    sum_d = row_by_row(lambda p, r: p + d[r])
    np.testing.assert_array_equal(mean, shift + sum_d / rows)
    s1, s2 = np.empty(channels), np.empty(channels)
    ext.dual_sums(g.reshape(-1), x.reshape(-1), 1, rows, channels, 1, center, s1, s2, num_threads)
    float_visits = dtype == np.float32 and backend[1] != "base"
    if not float_visits:
        np.testing.assert_array_equal(s1, row_by_row(lambda p, r: p + gd[r]))

    def products(madd):
        """(M2, sum(dy * (x - center))) with every product added by madd(a, b, partial)."""
        squares = row_by_row(lambda p, r: madd(d[r], d[r], p))
        m2_ref = squares - sum_d * (sum_d / rows)      # the moments' own arithmetic: not fused
        return np.where(m2_ref < 0, 0.0, m2_ref), row_by_row(lambda p, r: madd(gd[r], e[r], p))

    key = (rows, channels, np.dtype(dtype).str, hash(x.tobytes()), hash(g.tobytes()))
    if key not in _FUSED_COLUMN_SUMS:
        _FUSED_COLUMN_SUMS[key] = products(_fused_multiply_add)
    models = (_FUSED_COLUMN_SUMS[key], products(lambda a, b, c: c + a * b))
    if float_visits:
        assert any(np.array_equal(m2, m2_ref) for m2_ref, _ in models)
        # ... and again around a centre that is no float, which the sums move to per block
        off_center = center + 1 / 3
        t1, t2 = np.empty(channels), np.empty(channels)
        ext.dual_sums(g.reshape(-1), x.reshape(-1), 1, rows, channels, 1, off_center, t1, t2,
                      num_threads)
        if (key, "float visits") not in _FUSED_COLUMN_SUMS:
            _FUSED_COLUMN_SUMS[key, "float visits"] = [
                _column_sums_in_float_visits(g, x, c, _fused_multiply_add32, _fused_multiply_add)
                for c in (center, off_center)]
        unfused = [_column_sums_in_float_visits(g, x, c, lambda a, b, q: q + a * b,
                                                lambda d, a, b: b + d * a)
                   for c in (center, off_center)]
        assert any(all(np.array_equal(u, v) for u, v in zip((s1, s2, t1, t2), (*on, *off)))
                   for on, off in (_FUSED_COLUMN_SUMS[key, "float visits"], unfused))
    else:
        assert any(np.array_equal(m2, m2_ref) and np.array_equal(s2, s2_ref)
                   for m2_ref, s2_ref in models)
    narrow = 2048 // x.itemsize - 1       # columns of a row under 2 KiB: four rows per visit
    if channels > narrow:
        for lo in (0, 1):
            part = stats(x[:, lo:lo + narrow])
            np.testing.assert_array_equal(part[0], mean[lo:lo + narrow])
            np.testing.assert_array_equal(part[1], m2[lo:lo + narrow])
    xd = x.astype(np.float64)
    np.testing.assert_allclose(m2, ((xd - xd.mean(axis=0)) ** 2).sum(axis=0), rtol=1e-9)


@pytest.mark.parametrize("shape", [(41, 600), (3, 600), (6, 30000), (2, 5, 1030), (7, 13), (9, 47)],
                         ids=str)
@pytest.mark.parametrize("dtype", [np.float64])   # float32 always takes its own pass
def test_parameter_gradient_pass_same_bits(shape, dtype, backend, num_threads, rng):
    """float64 layer norm backward's two places for the parameter-gradient sums (the row loop
    and the pass over rows in cache, chosen by size; float32 always takes its own pass, with
    float terms four rows at a time) give the same bits: forced one way and the
    other, with sub-blocks of 1-3 remainder rows, the 4-row minimum block ((6, 30000)),
    fewer rows than one visit ((3, 600)), and rows shorter than one 16-element piece or
    with a tail of 9-15 elements after them ((7, 13), (9, 47))."""
    if backend[0] != "cython":
        pytest.skip("compiled kernels only")
    ext = fastnorm._config._modules["normalization"]
    calls = _wide_row_calls(shape, dtype, rng)

    def everything():
        return [a for call in calls.values() for a in call()]

    previous = ext._set_param_pass_threshold(0, 0)
    try:
        by_pass = everything()
        ext._set_param_pass_threshold(1 << 62, 1 << 62)
        in_row_loop = everything()
    finally:
        ext._set_param_pass_threshold(*previous)
    for a, b_ in zip(by_pass, in_row_loop):
        assert (a is None) == (b_ is None)
        if a is not None:
            assert a.tobytes() == b_.tobytes(), a.shape


@pytest.mark.parametrize("shape", [(3, 9, 1601), (4, 8, 20, 70), (1, 10, 7000), (3, 8, 4200), (5, 9, 16),
                                   (6, 8, 3, 5)], ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_channel_blocks_same_bits(shape, dtype, backend, num_threads, rng):
    """Batch norm by blocks of channels (large channels-first data with long runs: each
    block's statistics, then its output pass) gives the same bits as the statistics of all
    channels and then one output pass: forward with running statistics, out= and with or
    without weight and bias, backward in training and eval, plain and streamed stores; forced
    on small arrays with blocks of 1-6 channels (the last ones shorter) and one block per
    thread.  The first four shapes cross the threading grain.  Each blocked call follows the
    same calls on other data, so that memory a block failed to write holds wrong values.  Runs
    shorter than 16 ((6, 8, 3, 5)) keep the column sums, which add in another order, whatever
    the block setting.  With AVX-512, runs of 4 KiB and more in blocks have the statistics
    fetch the next sample's runs as they go, which must not change the order of the sums:
    (3, 8, 4200) has them in both dtypes, and its eight channels without blocks are a stretch
    over the fetch's bound (128 KiB), so that at 1 thread the reference does not fetch (a
    reordered sum shows in float64; float32's outputs mostly round it away)."""
    if backend[0] != "cython":
        pytest.skip("compiled kernels only")
    ext = fastnorm._config._modules["normalization"]
    a, c, b = shape[0], shape[1], int(np.prod(shape[2:]))
    x = (4 + 3 * rng.standard_normal(shape)).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    w, bias = rng.standard_normal(c).astype(dtype), rng.standard_normal(c).astype(dtype)
    sample_bytes = a * b * x.itemsize       # one channel of one array
    threads = fastnorm.get_num_threads() if x.size >= 1 << 15 else 1

    def everything(x, g):
        res = []
        for weight, beta in ((w, bias), (None, None), (w, None)):
            rm, rv = np.linspace(-1, 1, c).astype(dtype), np.linspace(1, 2, c).astype(dtype)
            y, mean, rstd = fastnorm.batch_norm(x, weight, beta, rm, rv, momentum=0.3)
            out = np.full_like(x, np.nan)
            fastnorm.batch_norm(x, weight, beta, out=out)
            res += [y, mean, rstd, rm, rv, out]
            for training in (True, False):
                res += [r for r in fastnorm.batch_norm_backward(g, x, weight, mean, rstd, training=training,
                                                               bias=beta) if r is not None]
        return res

    previous = ext._set_channel_blocks(0, 0, 0)
    try:
        for stream_from in (None, 0):
            fastnorm.set_stream_min_bytes(stream_from)
            expected = everything(x, g)
            for block_bytes in (2 * sample_bytes, 4 * sample_bytes, 6 * sample_bytes, 1 << 40):
                ext._set_channel_blocks(block_bytes, 0, 0)
                counts = [ext._channel_block_count(a, c, b, x.itemsize, arrays, threads) for arrays in (1, 2)]
                assert (min(counts) == 0) == (b < 16 and a > 1), counts
                everything(-x, 2 * g)
                for e, r in zip(expected, everything(x, g)):
                    assert e.tobytes() == r.tobytes(), (block_bytes, stream_from, e.shape)
    finally:
        ext._set_channel_blocks(*previous)
        fastnorm.set_stream_min_bytes(None)


@pytest.mark.skipif(not fastnorm._config.compiled_available(), reason="compiled kernels only")
def test_channel_blocks_fit_the_l3():
    """The channel blocks take a quarter of the L3 that fastnorm._config reads from sysfs, at
    most 4 MiB (the size measured on a 32 MiB L3); a channel larger than the block but at most
    half the L3 and 4 MiB goes as a block of its own, a larger one leaves batch norm
    unblocked."""
    ext = fastnorm._config._modules["normalization"]
    previous = ext._set_channel_blocks(0, 0, 0)
    ext._set_channel_blocks(*previous)
    fitted = ext._fit_channel_blocks(None)      # unknown: unchanged
    assert fitted[0] == previous[0]
    mib = 1 << 20
    try:
        assert ext._fit_channel_blocks(32 * mib) == (4 * mib, 4 * mib)
        assert ext._fit_channel_blocks(64 * mib) == (4 * mib, 4 * mib)
        # (A, C, B) float32 of 64 channels (48 MiB or more), one channel's bytes A * B * 4
        # per array that the statistics read
        blocks = lambda a, b, arrays: ext._channel_block_count(a, 64, b, 4, arrays, 1)
        assert ext._fit_channel_blocks(4 * mib) == (1 * mib, 2 * mib)
        assert blocks(64, 3136, 2) == 64 and blocks(64, 6272, 2) == 0   # 1.5 MiB alone, 3 MiB not
        assert ext._fit_channel_blocks(8 * mib) == (2 * mib, 4 * mib)
        assert blocks(64, 4096, 1) == 32        # 1 MiB channels: two per 2 MiB block
        assert blocks(64, 3136, 1) == 32        # 0.77 MiB: two
        assert blocks(64, 3136, 2) == 64        # 1.5 MiB: one
        assert blocks(64, 6272, 2) == 64        # 3 MiB: alone, over the block
        assert blocks(128, 6272, 2) == 0        # 6 MiB: no blocks
        ext._fit_channel_blocks(32 * mib)
        assert blocks(64, 4096, 1) == 16 and blocks(64, 3136, 2) == 32 and blocks(64, 6272, 2) == 64
    finally:
        ext._fit_channel_blocks(2 * fitted[1])   # the alone bound as fitted at import
        ext._set_channel_blocks(*previous)
    assert ext._fit_channel_blocks(None) == fitted
    sizes = fastnorm._config.cache_sizes()
    l3 = fastnorm._config._cache_bytes(sizes.get("L3", ""))
    if l3:
        assert fitted == (min(4 * mib, l3 // 4), min(4 * mib, l3 // 2)), (sizes, fitted)


@pytest.mark.parametrize("text, expected", [("8192K", 8 << 20), ("32M", 32 << 20), ("1G", 1 << 30),
                                            ("512", 512), ("", None), ("abcK", None), ("K", None),
                                            ("1.5M", None), ("²K", None), ("32 MiB", None)])
def test_cache_sizes_parse(text, expected):
    assert fastnorm._config._cache_bytes(text) == expected


@pytest.mark.parametrize("rows, channels", [(150, 1100), (70, 520), (23, 600), (40, 65), (9, 7),
                                           (300, 64), (33, 2048)], ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_column_sums_fetch_same_bits(rows, channels, dtype, backend, num_threads, rng):
    """The column sums of batch norm 1-D go over the columns in chunks of 64 and fetch the
    next rows for large arrays of narrow rows (_set_cols_fetch; forced on here for small ones): the
    same bits as over whole rows, forward (statistics, running statistics, output) and
    backward, for widths that are and are not multiples of the chunk and row counts that
    leave remainders to the two- or three-row visits and the one-row loop, on every ISA and
    thread count."""
    if backend[0] != "cython":
        pytest.skip("compiled kernels only")
    ext = fastnorm._config._modules["normalization"]
    x = (3 + rng.standard_normal((rows, channels)) * np.exp(rng.uniform(-4, 4, channels))).astype(dtype)
    g = rng.standard_normal((rows, channels)).astype(dtype)
    w = rng.standard_normal(channels).astype(dtype)

    def everything():
        rm, rv = np.zeros(channels, dtype), np.ones(channels, dtype)
        y, mean, rstd = fastnorm.batch_norm(x, w, None, rm, rv)
        mean_d, m2 = np.empty(channels), np.empty(channels)
        ext.stats(x.reshape(-1), 1, rows, channels, 1, mean_d, m2, num_threads)
        s1, s2 = np.empty(channels), np.empty(channels)
        ext.dual_sums(g.reshape(-1), x.reshape(-1), 1, rows, channels, 1, mean_d, s1, s2, num_threads)
        return [y, mean, rstd, rm, rv, mean_d, m2, s1, s2,
                *fastnorm.batch_norm_backward(g, x, w, mean, rstd, bias=w)]

    row = x.nbytes // rows
    previous = ext._set_cols_fetch(1 << 62, row + 1)
    try:
        assert not ext._cols_fetch_taken(x.nbytes, row)
        expected = everything()
        assert ext._set_cols_fetch(x.nbytes, row + 1) == (1 << 62, row + 1)
        assert ext._cols_fetch_taken(x.nbytes, row) and not ext._cols_fetch_taken(x.nbytes - 1, row)
        assert not ext._cols_fetch_taken(x.nbytes, row + 1)
        for e, r in zip(expected, everything()):
            assert e.tobytes() == r.tobytes(), e.shape
    finally:
        ext._set_cols_fetch(*previous)


# ---------------------------------------------------------------------------- API contracts

def test_out_and_float16(backend, rng):
    x = rng.standard_normal((4, 3, 5)).astype(np.float32)
    expected = fastnorm.batch_norm(x)[0]
    out = np.empty_like(x)
    assert fastnorm.batch_norm(x, out=out)[0] is out
    np.testing.assert_array_equal(out, expected)
    inplace = x.copy()
    fastnorm.layer_norm(inplace, 5, out=inplace)
    np.testing.assert_allclose(inplace, fastnorm.layer_norm(x, 5)[0], rtol=1e-6, atol=1e-6)
    strided = np.zeros((4, 3, 10), np.float32)
    fastnorm.group_norm(x, 3, out=strided[..., ::2])
    np.testing.assert_allclose(strided[..., ::2], fastnorm.group_norm(x, 3)[0], rtol=1e-6, atol=1e-6)
    h = x.astype(np.float16)
    y, mean, rstd = fastnorm.instance_norm(h)
    assert y.dtype == np.float16 and mean.dtype == np.float32 and rstd.dtype == np.float32
    y, rstd = fastnorm.rms_norm(h, 5)
    assert y.dtype == np.float16 and rstd.dtype == np.float32
    np.testing.assert_allclose(rstd, ref.rms_norm(h.astype(np.float64), 5, eps=float(np.finfo(np.float32).eps))[1],
                               rtol=1e-6)
    with pytest.raises(TypeError, match="batch_norm: out"):
        fastnorm.batch_norm(x, out=np.empty(x.shape))


def test_read_only_inputs_and_lists(backend, rng):
    x = rng.standard_normal((6, 4))
    x.flags.writeable = False
    w = np.ones(4)
    w.flags.writeable = False
    y, m, r = fastnorm.layer_norm(x, 4, w, w)
    fastnorm.layer_norm_backward(x, x, 4, w, m, r)
    fastnorm.batch_norm(x, w, w)
    y, m, r = fastnorm.batch_norm([[1.0, 2.0], [3.0, 5.0]])
    np.testing.assert_allclose(y, [[-1, -1], [1, 1]], rtol=1e-4)


@pytest.mark.parametrize("dtype", FLOATS)
def test_evaluation_reads_read_only_running_statistics(dtype, backend, rng):
    """Evaluation only reads the running statistics: read-only ones (memory-mapped, frozen)
    and lists give the same bits as writeable arrays; training, which writes them, still
    requires writeable arrays."""
    x = rng.standard_normal((4, 3, 5)).astype(dtype)
    rm, rv = rng.standard_normal(3).astype(dtype), rng.uniform(0.5, 2, 3).astype(dtype)
    frozen_m, frozen_v = rm.copy(), rv.copy()
    frozen_m.flags.writeable = frozen_v.flags.writeable = False
    calls = [lambda m, v: fastnorm.batch_norm(x, None, None, m, v, training=False),
             lambda m, v: fastnorm.batch_norm(np.moveaxis(x, 1, -1), x[0, :, 0], None, m, v, training=False,
                                              channels_last=True),
             lambda m, v: fastnorm.instance_norm(x, None, x[0, :, 0], m, v, use_input_stats=False)]
    for call in calls:
        expected = call(rm, rv)
        others = [call(frozen_m, frozen_v)] + ([call(rm.tolist(), rv.tolist())] if dtype == np.float64 else [])
        for got in others:
            for a, e in zip(got, expected):
                assert a.dtype == e.dtype
                np.testing.assert_array_equal(a, e)
    with pytest.raises(ValueError, match="batch_norm: running_mean must be writeable"):
        fastnorm.batch_norm(x, None, None, frozen_m, frozen_v)
    with pytest.raises(ValueError, match="instance_norm: running_mean must be writeable"):
        fastnorm.instance_norm(x, None, None, frozen_m, frozen_v)
    with pytest.raises(TypeError, match="batch_norm: running_mean must be a numpy.ndarray"):
        fastnorm.batch_norm(x, None, None, rm.tolist(), rv.tolist())
    with pytest.raises(TypeError, match="batch_norm: running_var must have dtype"):
        fastnorm.batch_norm(x, None, None, rm, rv.astype(np.int64), training=False)


def test_evaluation_out_may_share_memory_with_running_statistics(backend, rng):
    """Only read in evaluation, the running statistics may share memory with out (one
    arena): the results are those of separate arrays."""
    x = rng.standard_normal((4, 3, 5))
    rm, rv = rng.standard_normal(3), rng.uniform(0.5, 2, 3)
    for call in (lambda m, o: fastnorm.batch_norm(x, None, None, m, rv, training=False, out=o),
                 lambda m, o: fastnorm.instance_norm(x, None, None, m, rv, use_input_stats=False, out=o)):
        expected = call(rm.copy(), None)
        arena = np.empty(x.size)
        arena[:3] = rm
        got = call(arena[:3], arena.reshape(x.shape))
        assert got[0].base is arena
        for a, e in zip(got, expected):
            np.testing.assert_array_equal(a, e)


def test_inputs_not_modified(backend, rng):
    x = rng.standard_normal((4, 6, 5)).astype(np.float32)
    g = rng.standard_normal(x.shape).astype(np.float32)
    w, b = np.ones(6, np.float32), np.zeros(6, np.float32)
    arrays = (x, g, w, b)
    before = [a.tobytes() for a in arrays]
    for kind in KINDS:
        p = {"eps": 1e-5, "k": 1, "groups": 2, "rm": np.zeros(6, np.float32), "rv": np.ones(6, np.float32)}
        pw = np.ones(5, np.float32) if kind in ("layer", "rms") else w
        pb = np.zeros(5, np.float32) if kind in ("layer", "rms") else b
        if kind.endswith("_cl"):
            continue
        run_case(fastnorm, kind, x, g, pw, pb, p)
    assert [a.tobytes() for a in arrays] == before


# ---------------------------------------------------------------------------- errors

X4 = np.ones((2, 4, 3))
W4 = np.ones(4)
M4 = np.zeros(4)
STATS_LN = np.zeros((2, 4))

ERRORS = [
    (lambda: fastnorm.batch_norm(X4, np.ones(3)), ValueError, "batch_norm: weight must have shape"),
    (lambda: fastnorm.batch_norm(X4, None, np.ones(5)), ValueError, "batch_norm: bias"),
    (lambda: fastnorm.batch_norm(X4, W4.astype(np.float32)), TypeError, "batch_norm: weight must have dtype"),
    (lambda: fastnorm.batch_norm(X4, eps=-1e-5), ValueError, "batch_norm: eps"),
    (lambda: fastnorm.batch_norm(X4, eps="a"), TypeError, "batch_norm: eps"),
    (lambda: fastnorm.batch_norm(np.ones((1, 4))), ValueError, "more than 1 value per channel"),
    (lambda: fastnorm.batch_norm(np.ones(4)), ValueError, "batch_norm: x must have at least 2"),
    (lambda: fastnorm.batch_norm(X4, running_mean=np.zeros(4), running_var=np.ones(3)), ValueError,
     "batch_norm: running_var must have shape"),
    (lambda: fastnorm.batch_norm(X4, running_mean=np.zeros(4, np.float32), running_var=np.ones(4)),
     TypeError, "batch_norm: running_mean must have dtype"),
    (lambda: fastnorm.batch_norm(X4, running_mean=np.zeros(4)), ValueError, "running_var is None"),
    (lambda: fastnorm.batch_norm(X4, running_mean=[0.0] * 4, running_var=[1.0] * 4), TypeError,
     "running_mean must be a numpy.ndarray"),
    (lambda: fastnorm.batch_norm(X4, training=False), ValueError, "required when training=False"),
    (lambda: fastnorm.batch_norm(X4, running_mean=np.zeros(4), running_var=np.ones(4), momentum=None),
     ValueError, "num_batches_tracked"),
    (lambda: fastnorm.batch_norm(X4, running_mean=np.zeros(4), running_var=np.ones(4), momentum=None,
                                 num_batches_tracked=0), ValueError, "num_batches_tracked must be >= 1"),
    (lambda: fastnorm.batch_norm(X4.astype(np.int64)), TypeError, "batch_norm: x must have dtype"),
    (lambda: fastnorm.batch_norm(X4, training=1), TypeError, "batch_norm: training must be a bool"),
    (lambda: fastnorm.batch_norm(X4, out=np.empty((2, 4))), ValueError, "batch_norm: out must have shape"),
    (lambda: fastnorm.batch_norm_backward(np.ones((2, 4)), X4, W4, M4, M4), ValueError,
     "batch_norm_backward: grad_output must have the shape"),
    (lambda: fastnorm.batch_norm_backward(X4.astype(np.float32), X4, W4, M4, M4), TypeError,
     "batch_norm_backward: grad_output must have the dtype"),
    (lambda: fastnorm.batch_norm_backward(X4, X4, W4, np.zeros(3), M4), ValueError,
     "batch_norm_backward: mean must have shape"),
    (lambda: fastnorm.batch_norm_backward(X4, X4, np.ones(2), M4, M4), ValueError,
     "batch_norm_backward: weight"),
    (lambda: fastnorm.batch_norm_backward(X4, X4, W4, M4, M4, bias=np.ones(2)), ValueError,
     "batch_norm_backward: bias"),
    (lambda: fastnorm.group_norm(X4, 3), ValueError, "group_norm: num_groups must be a positive divisor"),
    (lambda: fastnorm.group_norm(X4, 0), ValueError, "group_norm: num_groups"),
    (lambda: fastnorm.group_norm(X4, 2.0), TypeError, "group_norm: num_groups must be an int"),
    (lambda: fastnorm.group_norm(X4, 2, np.ones(2)), ValueError, "group_norm: weight"),
    (lambda: fastnorm.group_norm(X4, 2, eps=-1.0), ValueError, "group_norm: eps"),
    (lambda: fastnorm.group_norm_backward(X4, X4, 2, W4, np.zeros((2, 4)), np.zeros((2, 2))), ValueError,
     "group_norm_backward: mean must have shape"),
    (lambda: fastnorm.group_norm_backward(X4, X4, 3, W4, np.zeros((2, 2)), np.zeros((2, 2))), ValueError,
     "group_norm_backward: num_groups"),
    (lambda: fastnorm.group_norm_backward(X4[:1], X4, 2, W4, np.zeros((2, 2)), np.zeros((2, 2))),
     ValueError, "group_norm_backward: grad_output"),
    (lambda: fastnorm.layer_norm(X4, (4,)), ValueError, "layer_norm: normalized_shape"),
    (lambda: fastnorm.layer_norm(X4, ()), ValueError, "layer_norm: normalized_shape"),
    (lambda: fastnorm.layer_norm(X4, (1, 2, 4, 3)), ValueError, "layer_norm: normalized_shape"),
    (lambda: fastnorm.layer_norm(X4, "3"), TypeError, "layer_norm: normalized_shape"),
    (lambda: fastnorm.layer_norm(X4, 3, np.ones(4)), ValueError, "layer_norm: weight must have shape (3,)"),
    (lambda: fastnorm.layer_norm(X4, 3, eps=-0.1), ValueError, "layer_norm: eps"),
    (lambda: fastnorm.layer_norm_backward(X4, X4, 3, None, np.zeros(2), np.zeros((2, 4))), ValueError,
     "layer_norm_backward: mean must have shape (2, 4)"),
    (lambda: fastnorm.layer_norm_backward(X4, X4, 4, None, STATS_LN, STATS_LN), ValueError,
     "layer_norm_backward: normalized_shape"),
    (lambda: fastnorm.layer_norm_backward(X4[..., :2], X4, 3, None, STATS_LN, STATS_LN), ValueError,
     "layer_norm_backward: grad_output"),
    (lambda: fastnorm.rms_norm(X4, 3, np.ones(2)), ValueError, "rms_norm: weight"),
    (lambda: fastnorm.rms_norm(X4, 3, eps=-1.0), ValueError, "rms_norm: eps"),
    (lambda: fastnorm.rms_norm_backward(X4, X4, 3, None, np.zeros(2)), ValueError, "rms_norm_backward: rstd"),
    (lambda: fastnorm.instance_norm(np.ones((2, 4))), ValueError, "instance_norm: expected more than 1 spatial"),
    (lambda: fastnorm.instance_norm(X4, use_input_stats=False), ValueError, "required when use_input_stats=False"),
    (lambda: fastnorm.instance_norm(X4, running_mean=np.zeros(3), running_var=np.ones(3)), ValueError,
     "instance_norm: running_mean must have shape"),
    (lambda: fastnorm.instance_norm(X4, eps=-1.0), ValueError, "instance_norm: eps"),
    (lambda: fastnorm.instance_norm_backward(X4, X4, W4, M4, M4), ValueError,
     "instance_norm_backward: mean must have shape (2, 4)"),
    (lambda: fastnorm.moments(X4, 3), ValueError, "moments: axis 3 is out of range"),
    (lambda: fastnorm.moments(X4, (0, 0)), ValueError, "moments: axis contains 0 twice"),
    (lambda: fastnorm.moments(X4, 0, ddof=-1), ValueError, "moments: ddof"),
    (lambda: fastnorm.moments(X4, 0.5), TypeError, "moments: axis"),
    (lambda: fastnorm.moments(None, 0), TypeError, "moments: x"),
]


@pytest.mark.parametrize("call, exc, message", ERRORS, ids=[e[2][:40] for e in ERRORS])
def test_invalid_arguments(call, exc, message, backend):
    with pytest.raises(exc, match=message.replace("(", r"\(").replace(")", r"\)")):
        call()


def test_failed_call_leaves_running_statistics_alone(backend):
    rm, rv = np.zeros(4), np.ones(4)
    with pytest.raises(ValueError):
        fastnorm.batch_norm(X4, np.ones(3), None, rm, rv)
    assert (rm == 0).all() and (rv == 1).all()


# ---------------------------------------------------------------------------- torch parity

TORCH_CASES = ["batch", "batch_cl", "batch_eval", "group", "group_cl", "instance", "instance_eval",
               "layer", "rms"]


@pytest.mark.parametrize("kind", TORCH_CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_parity_with_torch(kind, dtype, backend, rng):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    shape = (4, 6, 5, 3)
    cl = kind.endswith("_cl")
    x = (rng.standard_normal(shape) * 2 + 1).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    c = shape[-1] if cl else shape[1]
    w = rng.standard_normal((5, 3) if kind in ("layer", "rms") else c).astype(dtype)
    b = rng.standard_normal(w.shape).astype(dtype)
    rm, rv = rng.standard_normal(c).astype(dtype), rng.uniform(0.5, 2, c).astype(dtype)
    rmt, rvt = torch.tensor(rm), torch.tensor(rv)
    as_t = (lambda a: torch.tensor(np.moveaxis(a, -1, 1).copy())) if cl else torch.tensor
    xt = as_t(x).requires_grad_()
    wt, bt = torch.tensor(w, requires_grad=True), torch.tensor(b, requires_grad=True)
    p = {"eps": 1e-5, "k": 2, "groups": 3, "rm": rm, "rv": rv}
    if kind in ("batch", "batch_cl", "batch_eval"):
        yt = F.batch_norm(xt, rmt, rvt, wt, bt, training=kind != "batch_eval", eps=1e-5)
    elif kind in ("group", "group_cl"):
        yt = F.group_norm(xt, 3, wt, bt, eps=1e-5)
    elif kind in ("instance", "instance_eval"):
        yt = F.instance_norm(xt, rmt, rvt, wt, bt, use_input_stats=kind == "instance", eps=1e-5)
    elif kind == "layer":
        yt = F.layer_norm(xt, (5, 3), wt, bt, eps=1e-5)
    else:
        yt = F.rms_norm(xt, (5, 3), wt, eps=1e-5)
        b, bt = None, None
    yt.backward(as_t(g))
    got = run_case(fastnorm, kind, x, g, w, b, p)
    back = (lambda a: np.moveaxis(a, -1, 1)) if cl else (lambda a: a)
    tol = {np.float32: 2e-5, np.float64: 1e-10}[dtype]
    pairs = [("y", back(got["y"]), yt), ("gx", back(got["gx"]), xt.grad), ("gw", got["gw"], wt.grad)]
    if bt is not None:
        pairs.append(("gb", got["gb"], bt.grad))
    if kind in ("batch", "batch_cl", "instance"):
        pairs += [("running_mean", got["rm"], rmt), ("running_var", got["rv"], rvt)]
    for name, a, t in pairs:
        assert_close(a, t.detach().numpy(), dtype, f"{kind} {name}")


@pytest.mark.skipif(not fastnorm._config.compiled_available(), reason="compiled kernels only")
@pytest.mark.parametrize("P, A, C, B", [(3, 5, 4, 17), (2, 1, 7, 33), (4, 3, 1, 16), (1, 6, 5, 40)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_per_unit_sums_kernels_with_several_samples(P, A, C, B, dtype, rng):
    # The per-unit kernels take their units as spans of channels of one sample p, visited
    # in address order; the Python layer only calls them with P = 1, so P > 1 and thread
    # shares that cut a span mid-sample are checked here, directly, against float64
    # NumPy, and bit for bit across thread counts.  (Float32 dual sums with the lanes go
    # through float stretches: test_dual_sums_in_float_stretches.)
    ext = fastnorm._config._modules["normalization"]
    x = (5 + rng.standard_normal((P, A, C, B))).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    units = x.transpose(0, 2, 1, 3).reshape(P * C, A * B).astype(np.float64)
    center = units.mean(axis=1) + 0.25
    results = []
    for nthreads in (1, 2, 3):
        mean, m2 = np.empty(P * C), np.empty(P * C)
        s1, s2 = np.empty(P * C), np.empty(P * C)
        ext.stats(x.reshape(-1), P, A, C, B, mean, m2, nthreads)
        ext.dual_sums(dy.reshape(-1), x.reshape(-1), P, A, C, B, center, s1, s2, nthreads)
        results.append((mean, m2, s1, s2))
    g = dy.transpose(0, 2, 1, 3).reshape(P * C, A * B).astype(np.float64)
    want = (units.mean(axis=1), ((units - units.mean(axis=1, keepdims=True)) ** 2).sum(axis=1),
            g.sum(axis=1), (g * (units - center[:, None])).sum(axis=1))
    terms = (np.abs(g).sum(axis=1), np.abs(g * (units - center[:, None])).sum(axis=1))
    for i, (got, expected) in enumerate(zip(results[0], want)):
        if i >= 2 and dtype == np.float32:
            assert (np.abs(got - expected) <= 3e-6 * terms[i - 2]).all(), i
        else:
            np.testing.assert_allclose(got, expected, rtol=1e-11, atol=1e-9)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert a.tobytes() == b.tobytes()


@pytest.mark.skipif(not fastnorm._config.compiled_available(), reason="compiled kernels only")
@pytest.mark.parametrize("A, B", [(1, 1), (1, 15), (3, 16), (3, 17), (3, 127), (3, 128), (3, 129),
                                  (1, 144), (3, 256), (3, 300), (1, 1000),
                                  (2, 1), (7, 1), (70, 1), (5, 3), (9, 15)])
@pytest.mark.parametrize("isa", ["avx2", "avx512"])
def test_dual_sums_in_float_stretches(isa, A, B, rng):
    """The float32 dual sums (batch and group norm backward: s1 = sum(dy), s2 = sum(dy * (x -
    center)) per unit, here A runs of B elements each) with the AVX2 / AVX-512 lanes go in
    float vectors over stretches of at most 128 elements of a run, then in double
    (float_dual_pieces), centred on the float nearest center and moved to center in double:
    within a few float roundings of the float64 sums (scaled by the sum of the terms'
    magnitudes), for runs without a whole 16-element piece (one run per unit), of whole
    stretches, of stretches and a part-stretch, with and without a tail, with an offset of
    1e4 on one unit and a center that is no float; the same bits from both variants where the
    CPU runs both.  Runs shorter than 16 elements of several samples go by columns, whose
    terms go in float per visit of up to four rows (dual_cols_float), with the same bounds and
    the same treatment of the units below.  A unit whose s2 overflows in float
    (dy near 1e38, |x - center| near 10) takes it in double: within float64's roundings.  A
    unit whose s2 alone overflows in float (dy and x near 1e20) keeps s1's float sum, the bits
    it has with x of ordinary size (sum(dy) does not see x).  A unit with a NaN gives NaN."""
    if not fastnorm._config._runs(isa):
        pytest.skip(f"this CPU does not run the {isa} variant")
    ext = fastnorm._config._modules["normalization"]
    P, C = 1, 5
    x = (2 + 3 * rng.standard_normal((P, A, C, B))).astype(np.float32)
    x[:, :, 1] += 1e4
    x[:, :, 2] = np.where(rng.random((P, A, B)) < 0.5, -10, 10)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    dy[:, :, 2] = np.float32(1e38) * np.sign(dy[:, :, 2])
    dy[0, A // 2, 3, B // 2] = np.nan
    dy[:, :, 4] *= np.float32(1e20)
    benign = x.copy()
    x[:, :, 4] *= np.float32(1e20)

    def sums(name, data):
        units = data.transpose(0, 2, 1, 3).reshape(C, A * B).astype(np.float64)
        center = units.mean(axis=1) + 1 / 3
        s1, s2 = np.empty(C), np.empty(C)
        previous = fastnorm.isa()
        fastnorm.set_isa(name)
        try:
            ext.dual_sums(dy.reshape(-1), data.reshape(-1), P, A, C, B, center, s1, s2, 1)
        finally:
            fastnorm.set_isa(previous)
        return (s1, s2), units, center

    got, units, center = sums(isa, x)
    g = dy.transpose(0, 2, 1, 3).reshape(C, A * B).astype(np.float64)
    with np.errstate(invalid="ignore"):
        terms = (g, g * (units - center[:, None]))
    for k, (s, t) in enumerate(zip(got, terms)):
        expected = t.sum(axis=1)
        assert np.isnan(s[3]) and np.isnan(expected[3])
        double = [2, 4] if k == 1 else []
        single = [0, 1, 2, 4] if k == 0 else [0, 1]
        assert (np.abs(s[double] - expected[double]) <= 1e-12 * np.abs(t[double]).sum(axis=1)).all()
        assert (np.abs(s[single] - expected[single]) <= 3e-6 * np.abs(t[single]).sum(axis=1)).all()
    assert got[0][4].tobytes() == sums(isa, benign)[0][0][4].tobytes()
    if isa == "avx512" and fastnorm._config._runs("avx2"):
        assert [a.tobytes() for a in got] == [a.tobytes() for a in sums("avx2", x)[0]]


@pytest.mark.skipif(not fastnorm._config.compiled_available(), reason="compiled kernels only")
@pytest.mark.parametrize("length", [997, 700])
def test_streamed_results_are_the_same_bits(length, rng):
    # The normalize passes write with non-temporal stores above a traffic threshold
    # (fn_stream.h); threshold 0 streams every call.  Same bits: batch norm (train, eval,
    # backward), layer and RMS norm with and without parameters, group and instance norm
    # forward and backward, layer and RMS norm backward, channels first and last, every ISA
    # variant, outputs at several offsets, 1 and 2 threads.  Runs of 997 also stream the whole lines after their last chunk in float32, runs of
    # 700 in float64 (there those lines are at least a sixteenth of the run).
    # Results from 2 MiB come from the buffer cache (a new result streams only into a reused
    # block, _pool.streams; smaller blocks are not cached): the large channels-last backward
    # passes below, which have no out=, stream too.
    config = fastnorm._config
    previous_isa = fastnorm.isa()
    config._pool.set_min_bytes(0)

    def run(dtype, shift):
        x = (3 + rng_fixed.standard_normal(2 * 6 * length + 8)).astype(dtype)[shift:shift + 2 * 6 * length]
        x = x.reshape(2, 6, length)
        g = np.asarray(rng_fixed.standard_normal(x.shape), dtype)
        w, b = np.linspace(0.5, 2, 6).astype(dtype), np.linspace(-1, 1, 6).astype(dtype)
        wk, bk = np.linspace(0.5, 2, length).astype(dtype), np.linspace(-1, 1, length).astype(dtype)
        out = np.empty(x.size + 8, dtype)[shift:shift + x.size].reshape(x.shape)
        got = []
        y, mean, rstd = fastnorm.batch_norm(x, w, b, out=out)
        got += [out.copy(), mean, rstd]
        got += list(fastnorm.batch_norm_backward(g, x, w, mean, rstd, bias=b))
        fastnorm.batch_norm(x, w, b, np.zeros(6, dtype), np.ones(6, dtype), training=False, out=out)
        got.append(out.copy())
        for wp, bp in ((wk, bk), (wk, None), (None, bk), (None, None)):
            y, mean, rstd = fastnorm.layer_norm(x, length, wp, bp, out=out)
            got += [out.copy(), mean, rstd]
            got += [a for a in fastnorm.layer_norm_backward(g, x, length, wp, mean, rstd, bias=bp)
                    if a is not None]
        y, rstd = fastnorm.rms_norm(x, length, wk, out=out)
        got += [out.copy(), rstd]
        got += [a for a in fastnorm.rms_norm_backward(g, x, length, wk, rstd) if a is not None]
        y, mean, rstd = fastnorm.group_norm(x, 3, w, b, out=out)
        got += [out.copy(), mean, rstd]
        got += [a for a in fastnorm.group_norm_backward(g, x, 3, w, mean, rstd, bias=b) if a is not None]
        got.append(fastnorm.instance_norm(x, out=out)[0].copy())
        # Channels-last: rows of `length` channels and of half as many (so that float32 and
        # float64 both have rows of 2-4 KiB, which stream, and rows outside that, which do
        # not); 400 rows per sample, so that the backward's results (over 2 MiB) come from
        # the cache's reused blocks.
        for c in (length, length // 2):
            size = 2 * 400 * c
            xl = (3 + rng_fixed.standard_normal(size + 8)).astype(dtype)[shift:shift + size].reshape(2, 400, c)
            gl = np.asarray(rng_fixed.standard_normal(xl.shape), dtype)
            wl, bl = np.linspace(0.5, 2, c).astype(dtype), np.linspace(-1, 1, c).astype(dtype)
            outl = np.empty(xl.size + 8, dtype)[shift:shift + xl.size].reshape(xl.shape)
            y, mean, rstd = fastnorm.batch_norm(xl, wl, bl, out=outl, channels_last=True)
            got += [outl.copy(), mean, rstd]
            got += list(fastnorm.batch_norm_backward(gl, xl, wl, mean, rstd, bias=bl, channels_last=True))
            y, mean, rstd = fastnorm.group_norm(xl, 1, wl, bl, out=outl, channels_last=True)
            got += [outl.copy(), mean, rstd]
            got += [a for a in fastnorm.group_norm_backward(gl, xl, 1, wl, mean, rstd, bias=bl,
                                                           channels_last=True) if a is not None]
            # layer and RMS norm over the rows of c: results over 2 MiB, so they stream too
            y, mean, rstd = fastnorm.layer_norm(xl, c, wl, bl)
            got += list(fastnorm.layer_norm_backward(gl, xl, c, wl, mean, rstd, bias=bl))
            y, rstd = fastnorm.rms_norm(xl, c, wl)
            got += [a for a in fastnorm.rms_norm_backward(gl, xl, c, wl, rstd) if a is not None]
        return [a.tobytes() for a in got]

    try:
        for isa in config._runnable_isas():
            fastnorm.set_isa(isa)
            for dtype in (np.float32, np.float64):
                for shift in (0, 1, 5):
                    results = []
                    for threshold, threads in ((None, 1), (0, 1), (0, 2)):
                        rng_fixed = np.random.default_rng(3)
                        config.set_stream_min_bytes(threshold)
                        fastnorm.set_num_threads(threads)
                        results.append(run(dtype, shift))
                    assert results[0] == results[1], (isa, dtype, shift, length)
                    assert results[0] == results[2], (isa, dtype, shift, length)
    finally:
        config._pool.set_min_bytes(config._pool.MIN_BYTES)
        config.set_stream_min_bytes(None)
        fastnorm.set_num_threads(None)
        fastnorm.set_isa(previous_isa)
