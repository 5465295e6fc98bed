"""Activation functions: every function on every backend against the NumPy oracle
(itself checked against scalar float64 math and hand-computed values), finite
differences of every backward, layouts, dtypes, special values and errors."""
import math

import numpy as np
import pytest
from hypothesis import given, strategies as st
from hypothesis.extra import numpy as hnp

import fastnorm
from fastnorm import _config
from fastnorm import reference as ref

from _placement import Pages
from conftest import NUMPY_ONLY
from _activation_cases import (CASES, PARAM_CASES, case_id, kinks, saved_for_backward,
                               spread_values)

FLOATS = [np.float32, np.float64]
# Forward accuracy bound in ulps of the result's dtype, against the oracle evaluated in float64.
MAX_ULP = {np.float32: 4, np.float64: 4}


def ulp_error(actual, expected64):
    """|actual - expected| in units in the last place of actual's dtype.

    Subnormal results are measured in ulps of the smallest normal number: an
    intermediate that underflows (exp(-100) in float32) keeps only a few bits, and
    no float32 formula can do better without rescaling."""
    dt = actual.dtype
    finite = np.isfinite(expected64.astype(dt))
    scale = np.maximum(np.abs(expected64.astype(dt)), np.finfo(dt).tiny)
    spacing = np.spacing(np.where(finite, scale, 1).astype(dt)).astype(np.float64)
    err = np.abs(actual.astype(np.float64) - expected64) / spacing
    return np.where(finite, err, 0.0)


def assert_same_specials(actual, expected):
    """NaN where expected is NaN, the same infinity where it overflows."""
    expected = expected.astype(actual.dtype)
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected))
    inf = np.isinf(expected)
    np.testing.assert_array_equal(actual[inf], expected[inf])


def reference_f64(name, params, x):
    return getattr(ref, name)(x.astype(np.float64), **params)


# ---------------------------------------------------------------------------- the oracle

# Hand-computed values: (name, params, x, expected).
HAND = [
    ("relu", {}, [-2.0, 0.0, 3.5], [0.0, 0.0, 3.5]),
    ("relu6", {}, [-1.0, 3.0, 7.0], [0.0, 3.0, 6.0]),
    ("leaky_relu", {}, [-2.0, 5.0], [-0.02, 5.0]),
    ("elu", {"alpha": 2.0}, [-1.0, 1.0], [2 * (math.exp(-1) - 1), 1.0]),
    ("selu", {}, [1.0, -1.0], [1.0507009873554805, 1.0507009873554805 * 1.6732632423543772 * (math.exp(-1) - 1)]),
    ("celu", {"alpha": 2.0}, [-2.0], [2 * (math.exp(-1) - 1)]),
    ("gelu", {}, [1.0, -1.0], [0.8413447460685429, -0.15865525393145707]),
    ("gelu", {"approximate": "tanh"}, [1.0], [0.8411919906082768]),
    ("silu", {}, [1.0], [0.7310585786300049]),
    ("softplus", {}, [0.0, 30.0], [math.log(2.0), 30.0]),
    ("mish", {}, [1.0], [0.8650983882673103]),
    ("sigmoid", {}, [0.0, 2.0], [0.5, 0.8807970779778823]),
    ("tanh", {}, [0.5], [0.46211715726000974]),
    ("hardsigmoid", {}, [-4.0, 0.0, 1.5, 4.0], [0.0, 0.5, 0.75, 1.0]),
    ("hardswish", {}, [-4.0, 1.0, 4.0], [0.0, 4.0 / 6.0, 4.0]),
    ("softsign", {}, [-3.0, 1.0], [-0.75, 0.5]),
]


@pytest.mark.parametrize("name, params, x, expected", HAND, ids=[h[0] for h in HAND])
def test_oracle_hand_computed(name, params, x, expected, backend):
    got = getattr(fastnorm, name)(np.array(x), **params)
    np.testing.assert_allclose(got, expected, rtol=1e-14, atol=1e-300)


SCALAR_MATH = {
    "relu": lambda v: max(v, 0.0),
    "elu": lambda v: v if v > 0 else math.expm1(v),
    "gelu": lambda v: 0.5 * v * math.erfc(-v / math.sqrt(2)),
    "silu": lambda v: v / (1 + math.exp(-v)) if v > -700 else 0.0,
    "softplus": lambda v: v if v > 20 else math.log1p(math.exp(v)),
    "mish": lambda v: v * math.tanh(math.log1p(math.exp(v))) if v < 700 else v,
    "sigmoid": lambda v: 1 / (1 + math.exp(-v)) if v > -700 else 0.0,
    "tanh": math.tanh,
    "softsign": lambda v: v / (1 + abs(v)),
}


@pytest.mark.parametrize("name", sorted(SCALAR_MATH))
def test_oracle_against_scalar_math(name):
    x = np.concatenate([np.linspace(-30, 30, 2001), [-700.0, -100.0, 100.0, 650.0]])
    expected = np.array([SCALAR_MATH[name](v) for v in x])
    # erfc's condition number is ~2x^2: rounding x/sqrt(2) differently costs ~1e-12 at |x| = 30.
    rtol = 1e-11 if name == "gelu" else 1e-13
    np.testing.assert_allclose(getattr(ref, name)(x), expected, rtol=rtol, atol=1e-300)


# ---------------------------------------------------------------------------- forward

@pytest.mark.parametrize("case", PARAM_CASES, ids=case_id)
@pytest.mark.parametrize("dtype", FLOATS)
def test_forward_accuracy(case, dtype, backend, rng):
    name, params = case
    x = np.concatenate([spread_values(rng, 20000, dtype),
                        np.linspace(-12, 12, 5001, dtype=dtype),
                        np.array([0.0, -0.0, 1e-30, -1e-30, 3.0, -3.0, 6.0, 20.0, -20.0, 88.0,
                                  -88.0, -100.0, 100.0, -1000.0, 1000.0], dtype=dtype)])
    got = getattr(fastnorm, name)(x, **params)
    assert got.dtype == dtype and got.shape == x.shape
    expected = reference_f64(name, params, x)
    assert_same_specials(got, expected)
    # Where an intermediate (exp(-|z|)) underflows, float arithmetic keeps only its absolute
    # precision: allow (1 + |x|) of the smallest subnormal on top of the ulp bound.
    slack = 2 * (1 + np.abs(x.astype(np.float64))) * np.finfo(dtype).smallest_subnormal
    allowed = np.full(x.shape, float(MAX_ULP[dtype]))
    if dtype == np.float64 and name == "gelu":
        # float64 has no wider type to form erfc's argument in: its rounding is amplified
        # by erfc's condition number, 2a^2 at a = -x/sqrt(2), and the float64 oracle
        # rounds its own argument too.
        a2 = x.astype(np.float64) ** 2 / 2
        allowed += (6 * a2 if params.get("approximate") != "tanh"
                    else 4 * np.abs(1.6 * (x + 0.044715 * x ** 3)))
    err = ulp_error(got, expected)
    over = err - allowed - slack / np.spacing(np.abs(expected.astype(dtype))).astype(np.float64)
    worst = int(np.argmax(over))
    assert over[worst] <= 0, f"{name}{params}: {err[worst]:.1f} ulp at x={x[worst]!r}"


# float32 GELU, both forms, densely: every 1021st float of [-11, 6] (past -10.5 the result
# underflows) and every float around the worst points found by exhaustive runs of earlier
# versions (the tanh form's z formed in double: 4.18 ulp at -3.887; the erf form's
# erfc(-x/sqrt2) with a compensated argument: 4.19 near -7.23) and of the current ones (the
# erf form's rational tail: 2.61 ulp at -1.8328 with FMA, 2.83 at -1.8386 without).
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_float32_dense(approximate, backend):
    def floats_between(lo, hi, step):
        if hi <= 0:
            return -floats_between(abs(hi), abs(lo), step)
        # the bit patterns of non-negative floats are ordered like their values
        lo_bits, hi_bits = np.array([lo, hi], dtype=np.float32).view(np.int32)
        return np.arange(lo_bits, hi_bits + 1, step, dtype=np.int32).view(np.float32)
    x = np.concatenate([floats_between(-11.0, 0.0, 1021), floats_between(0.0, 6.0, 1021),
                        floats_between(-3.95, -3.8, 1), floats_between(-7.3, -7.2, 7),
                        floats_between(-1.9, -1.75, 3), floats_between(-1.84, -1.83, 1),
                        floats_between(0.0075, 0.008, 1)])
    got = fastnorm.gelu(x, approximate=approximate)
    expected = reference_f64("gelu", {"approximate": approximate}, x)
    slack = 2 * (1 + np.abs(x.astype(np.float64))) * np.finfo(np.float32).smallest_subnormal
    err = ulp_error(got, expected) - slack / np.spacing(np.abs(expected.astype(np.float32))).astype(np.float64)
    worst = int(np.argmax(err))
    assert err[worst] <= MAX_ULP[np.float32], \
        f"gelu({approximate}): {err[worst]:.2f} ulp at x={x[worst]!r}"


@pytest.mark.parametrize("name", list(CASES))
def test_forward_float16(name, backend, rng):
    x = spread_values(rng, 3000, np.float16)
    got = getattr(fastnorm, name)(x)
    assert got.dtype == np.float16
    expected = reference_f64(name, {}, x.astype(np.float32)).astype(np.float16)
    # computed in float32, rounded once to float16: at most one float16 ulp off.
    assert np.all(ulp_error(got, expected.astype(np.float64)) <= 1)


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("dtype", FLOATS)
def test_large_magnitudes_stay_finite(name, dtype, backend):
    x = np.array([-1000.0, -100.0, -50.0, 50.0, 100.0, 1000.0], dtype=dtype)
    y = getattr(fastnorm, name)(x)
    assert np.all(np.isfinite(y)), f"{name}: {y}"
    g = np.ones_like(x)
    gx = getattr(fastnorm, name + "_backward")(g, saved_for_backward(fastnorm, name, {}, x))
    assert np.all(np.isfinite(gx)), f"{name}_backward: {gx}"


def test_named_large_values(backend):
    for dtype in FLOATS:
        assert 0 < fastnorm.sigmoid(np.array([-100.0], dtype))[0] < 1e-40
        assert fastnorm.softplus(np.array([100.0], dtype))[0] == 100
        assert fastnorm.silu(np.array([-1000.0], dtype))[0] == 0
        np.testing.assert_array_equal(fastnorm.mish(np.array([-1000.0, 1000.0], dtype)), [0, 1000])


# Magnitudes where the exponential's range reduction yields a meaningless k (|x| ~ 5906.5 for
# the GELU tail's -x^2/2, beyond 2^22/log2(e) for the others): the lanes are selected away,
# and the integer exponent arithmetic on them must not overflow (a signed overflow there was
# undefined behaviour, caught by tools/sanitize.sh).
@pytest.mark.parametrize("name", list(CASES))
def test_reduction_out_of_range_magnitudes(name, backend):
    x = np.array([-5906.53, 5906.53, -3.0e6, 3.0e6, -2.9e7, 2.9e7, -1e30, 1e30], np.float32)
    with np.errstate(over="ignore"):
        y = getattr(fastnorm, name)(x)
        expected = reference_f64(name, {}, x).astype(np.float32)
        g = np.ones_like(x)
        gx = getattr(fastnorm, name + "_backward")(g, saved_for_backward(fastnorm, name, {}, x))
    np.testing.assert_array_equal(np.isfinite(y), np.isfinite(expected))
    finite = np.isfinite(expected)
    np.testing.assert_allclose(y[finite], expected[finite], rtol=1e-6, atol=0)
    assert not np.any(np.isnan(gx)), f"{name}_backward: {gx}"


@pytest.mark.parametrize("name", list(CASES))
def test_nan_propagates(name, backend):
    x = np.array([np.nan, 1.0, np.nan], dtype=np.float32)
    y = getattr(fastnorm, name)(x)
    assert np.isnan(y[0]) and np.isnan(y[2]) and not np.isnan(y[1])


def test_swish_is_silu():
    assert fastnorm.swish is fastnorm.silu and fastnorm.swish_backward is fastnorm.silu_backward


# ---------------------------------------------------------------------------- backward

def grad_tolerance(dtype, g, x):
    eps = np.finfo(dtype).eps
    return 16 * eps * np.abs(g.astype(np.float64)) * (1 + np.abs(x.astype(np.float64)) ** 2)


@pytest.mark.parametrize("case", PARAM_CASES, ids=case_id)
@pytest.mark.parametrize("dtype", FLOATS)
def test_backward_against_oracle(case, dtype, backend, rng):
    name, params = case
    x = np.concatenate([spread_values(rng, 20000, dtype), np.linspace(-12, 12, 2001, dtype=dtype)])
    g = rng.standard_normal(x.shape).astype(dtype)
    saved = saved_for_backward(fastnorm, name, params, x)
    got = getattr(fastnorm, name + "_backward")(g, saved, **params)
    assert got.dtype == dtype
    expected = getattr(ref, name + "_backward")(g.astype(np.float64), saved.astype(np.float64), **params)
    tol = grad_tolerance(dtype, g, x) + 4 * np.finfo(dtype).eps * np.abs(expected)
    bad = np.abs(got - expected) > tol
    assert not bad.any(), f"{name}{params}: x={x[bad][:3]} got={got[bad][:3]} want={expected[bad][:3]}"


@pytest.mark.parametrize("case", PARAM_CASES, ids=case_id)
def test_backward_finite_differences(case, backend, rng):
    name, params = case
    x = rng.uniform(-8, 8, 4000)
    for k in kinks(name, params):
        x = np.where(np.abs(x - k) < 1e-3, x + 2e-3, x)
    g = rng.standard_normal(x.shape)
    h = 1e-6
    f = getattr(fastnorm, name)
    numeric = g * (f(x + h, **params) - f(x - h, **params)) / (2 * h)
    analytic = getattr(fastnorm, name + "_backward")(g, saved_for_backward(fastnorm, name, params, x),
                                                      **params)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-7 * (1 + np.abs(x)).max())


@pytest.mark.skipif(not _config.compiled_available() or NUMPY_ONLY or "avx2" not in _config._runnable_isas(),
                    reason="the compiled AVX2 variant only")
def test_split_exponential_gives_the_same_results(rng):
    """The AVX2 variant runs the exponential of sigmoid, silu, softplus (forward and
    backward), GELU's tanh form (forward) and ELU's and SELU's backward in one loop or, where
    256-bit instructions run as two halves, split over three (FN_ACT_SPLIT_EXP): the same
    results on any AVX2 CPU, but for the payload and sign of NaN results.  Float32 bit
    patterns spread over every exponent and both signs, float64 values of every magnitude,
    each around the exponential's thresholds (its 0 from -103.97 / -745.13 on, the clamp at
    -104 and the select below -760 of the one-loop forms) and the specials; lengths that end
    in the remainder loop; results allocated, into out= (streamed with stream_min_bytes 0) and
    in place; compared bit for bit where not NaN."""
    ext = _config.compiled_module("activations")
    default = ext.split_exp()
    x32 = np.concatenate([np.arange(0, 2**32, 4099, dtype=np.uint64).astype(np.uint32).view(np.float32),
                          np.linspace(-110.0, -100.0, 20001, dtype=np.float32)])
    x64 = np.concatenate([rng.standard_normal(100_000) * 10.0 ** rng.integers(-300, 300, 100_000),
                          np.linspace(-770.0, -700.0, 20001), rng.uniform(-40, 40, 100_000)])
    cases = [("sigmoid", {}), ("silu", {}), ("softplus", {}), ("softplus", {"beta": 2.5, "threshold": 7.0}),
             ("softplus", {"beta": -0.5, "threshold": 30.0}), ("gelu", {"approximate": "tanh"}),
             ("elu", {}), ("elu", {"alpha": 0.3}), ("selu", {})]

    def results(x, g, into):
        """Every case's forward and backward, allocated, into out= or in place (x's copy)."""
        out = []
        with np.errstate(all="ignore"):
            for name, params in cases:
                calls = [(getattr(fastnorm, name), (x,))]
                if name != "sigmoid":   # sigmoid's backward takes the output: no exponential
                    calls.append((getattr(fastnorm, name + "_backward"), (g, x)))
                for f, args in calls:
                    if into == "allocated":
                        out.append(f(*args, **params))
                    else:
                        args = tuple(a.copy() for a in args)
                        target = np.empty_like(x) if into == "out" else args[-1]
                        assert f(*args, **params, out=target) is target
                        out.append(target)
        return out

    previous = fastnorm.isa()
    try:
        with fastnorm.use_backend("cython"):
            fastnorm.set_isa("avx2")
            for x in (x32, x64):
                info = np.finfo(x.dtype)
                specials = [np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, 1e30, -1e30, info.max, info.min,
                            info.tiny / 4, -info.tiny / 4, info.smallest_subnormal, -info.smallest_subnormal]
                x = np.concatenate([np.array(specials, x.dtype), x])
                rng.shuffle(x)
                g = rng.standard_normal(x.size).astype(x.dtype)
                bits = np.uint32 if x.dtype == np.float32 else np.uint64
                for stream_min in (None, 0):
                    _config.set_stream_min_bytes(stream_min)
                    for n, into in ((x.size, "allocated"), (x.size, "out"), (x.size, "in place"),
                                    (1, "out"), (7, "allocated"), (129, "in place"), (515, "out")):
                        ext.set_split_exp(False)
                        one = results(x[:n], g[:n], into)
                        ext.set_split_exp(True)
                        three = results(x[:n], g[:n], into)
                        for a, b in zip(one, three):
                            assert a.dtype == b.dtype == x.dtype
                            same = (a.view(bits) == b.view(bits)) | (np.isnan(a) & np.isnan(b))
                            assert same.all(), (x.dtype, n, into, x[:n][~same][:5], a[~same][:5], b[~same][:5])
    finally:
        fastnorm.set_isa(previous)
        ext.set_split_exp(None)
        _config.set_stream_min_bytes(None)
    assert ext.split_exp() is default


def test_gelu_tanh_derivative_in_the_far_negative_tail(backend):
    """The tanh form's derivative is about -5.6e-18 at x = -7.668 and -2.8e-36 at -10: the
    oracle forms it without 1 + tanh(u), which was exactly 0 in float64 from x = -6.9 on
    (a fuzz run found grad_output = -inf giving the kernel's +inf against the oracle's NaN).
    The oracle against central differences of its own forward, whose values there are as
    small and keep their relative precision; the float32 and float64 kernels against it."""
    x = np.linspace(-19.5, -6.0, 28)
    h = 1e-6 * np.abs(x)
    numeric = (ref.gelu(x + h, approximate="tanh") - ref.gelu(x - h, approximate="tanh")) / (2 * h)
    oracle = ref.gelu_backward(np.ones_like(x), x, approximate="tanh")
    assert np.all(oracle < 0)
    np.testing.assert_allclose(oracle, numeric, rtol=1e-5)
    np.testing.assert_allclose(fastnorm.gelu_backward(np.ones_like(x), x, approximate="tanh"), oracle,
                               rtol=1e-12)
    x32 = np.array([-7.668, -9.0, -10.0], np.float32)   # derivatives in float32's normal range
    np.testing.assert_array_equal(
        fastnorm.gelu_backward(np.full(3, -np.inf, np.float32), x32, approximate="tanh"), [np.inf] * 3)
    np.testing.assert_allclose(fastnorm.gelu_backward(np.ones(3, np.float32), x32, approximate="tanh"),
                               ref.gelu_backward(np.ones(3), x32.astype(np.float64), approximate="tanh"),
                               rtol=1e-5)


def test_derivatives_at_kinks_follow_pytorch(backend):
    g = np.ones(2)
    np.testing.assert_array_equal(fastnorm.relu_backward(np.ones(1), np.zeros(1)), [0])
    np.testing.assert_array_equal(fastnorm.relu6_backward(g, np.array([0.0, 6.0])), [0, 0])
    np.testing.assert_array_equal(fastnorm.hardswish_backward(g, np.array([-3.0, 3.0])), [0, 1])
    np.testing.assert_array_equal(fastnorm.hardsigmoid_backward(g, np.array([-3.0, 3.0])), [0, 0])
    # softplus switches to the identity where beta*x > threshold
    np.testing.assert_array_equal(fastnorm.softplus(np.array([20.5]), 1.0, 20.0), [20.5])


def test_sigmoid_derivative_is_at_most_a_quarter(backend):
    x = np.linspace(-10, 10, 10001)
    d = fastnorm.sigmoid_backward(np.ones_like(x), fastnorm.sigmoid(x))
    assert d.max() == pytest.approx(0.25) and d.max() <= 0.25 and d[5000] == 0.25


# ---------------------------------------------------------------------------- layouts and out=

@st.composite
def strided_arrays(draw):
    """Arrays of random shape viewed through transposes, steps and reversals."""
    dtype = draw(st.sampled_from([np.float16, np.float32, np.float64]))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=7))
    base = draw(hnp.arrays(np.float64, shape, elements=st.floats(-30, 30, width=32)))
    x = base.astype(dtype)
    if x.ndim:
        if draw(st.booleans()):
            x = x.T
        if draw(st.booleans()):
            x = np.asfortranarray(x)
        axis = draw(st.integers(0, x.ndim - 1))
        step = draw(st.sampled_from([1, 2, -1, -2]))
        index = [slice(None)] * x.ndim
        index[axis] = slice(None, None, step)
        x = x[tuple(index)]
    return x


@given(x=strided_arrays(), case=st.sampled_from(PARAM_CASES))
def test_any_layout_matches_oracle(x, case):
    name, params = case
    for backend in ("cython", "numpy") if fastnorm._config.compiled_available() else ("numpy",):
        with fastnorm.use_backend(backend):
            y = getattr(fastnorm, name)(x, **params)
            g = np.ones_like(x)[..., ::-1] if x.ndim else np.ones_like(x)
            gx = getattr(fastnorm, name + "_backward")(g, saved_for_backward(fastnorm, name, params, x),
                                                       **params)
        assert y.shape == x.shape and y.dtype == x.dtype and gx.dtype == x.dtype
        compute = np.float32 if x.dtype == np.float16 else x.dtype
        expected = getattr(ref, name)(np.ascontiguousarray(x), **params)
        rtol = {np.float16: 1e-3, np.float32: 1e-5, np.float64: 1e-12}[np.dtype(compute).type if x.dtype != np.float16 else np.float16]
        np.testing.assert_allclose(y.astype(np.float64), expected.astype(np.float64), rtol=rtol,
                                   atol=rtol)


@pytest.mark.parametrize("name", ["relu", "sigmoid", "gelu"])
def test_out_in_place_and_views(name, backend, rng):
    f = getattr(fastnorm, name)
    x = rng.standard_normal((6, 8))
    expected = f(x)
    y = x.copy()
    assert f(y, out=y) is y
    np.testing.assert_array_equal(y, expected)
    # out in Fortran order, and a strided out view
    out = np.empty((6, 8), order="F")
    assert f(x, out=out) is out
    np.testing.assert_array_equal(out, expected)
    big = np.zeros((6, 16))
    f(x, out=big[:, ::2])
    np.testing.assert_array_equal(big[:, ::2], expected)
    np.testing.assert_array_equal(big[:, 1::2], 0)
    # out overlapping the input shifted by one element
    buf = rng.standard_normal(49)
    src = buf[:48].reshape(6, 8)
    expected = f(src.copy())
    f(src, out=buf[1:].reshape(6, 8))
    np.testing.assert_array_equal(buf[1:].reshape(6, 8), expected)


def test_read_only_and_memmap_inputs(backend, tmp_path, rng):
    x = rng.standard_normal(1000).astype(np.float32)
    x.flags.writeable = False
    np.testing.assert_array_equal(fastnorm.tanh(x), ref.tanh(x) if backend[0] == "numpy" else fastnorm.tanh(x.copy()))
    path = tmp_path / "x.npy"
    np.save(path, x)
    mm = np.load(path, mmap_mode="r")
    np.testing.assert_array_equal(fastnorm.relu(mm), np.maximum(x, 0))


@pytest.mark.parametrize("shape", [(0,), (3, 0), (0, 4, 5), (), (1,), (1, 1)])
def test_empty_scalar_and_single_element(shape, backend):
    x = np.full(shape, -0.5)
    for name in CASES:
        y = getattr(fastnorm, name)(x)
        assert y.shape == shape
        np.testing.assert_allclose(y, getattr(ref, name)(x), rtol=1e-14)


def test_lists_and_scalars_are_accepted(backend):
    np.testing.assert_array_equal(fastnorm.relu([-1.0, 2.0]), [0.0, 2.0])
    assert fastnorm.relu(-3.0).shape == ()


def test_inputs_not_modified(backend, rng):
    x = rng.standard_normal((50, 30)).astype(np.float32)
    g = rng.standard_normal((50, 30)).astype(np.float32)
    before = (x.tobytes(), g.tobytes())
    for name, params in PARAM_CASES:
        getattr(fastnorm, name)(x, **params)
        getattr(fastnorm, name + "_backward")(g, x, **params)
    assert (x.tobytes(), g.tobytes()) == before


def test_thread_count_does_not_change_results(rng):
    if not fastnorm._config.compiled_available():
        pytest.skip("compiled kernels not built")
    x = rng.standard_normal(3 * (1 << 17) + 5).astype(np.float32)
    g = rng.standard_normal(x.shape).astype(np.float32)
    results = []
    for n in (1, 2):
        fastnorm.set_num_threads(n)
        try:
            results.append([getattr(fastnorm, name)(x) for name in CASES]
                           + [getattr(fastnorm, name + "_backward")(g, x) for name in CASES])
        finally:
            fastnorm.set_num_threads(None)
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------- errors

@pytest.mark.parametrize("bad", [np.arange(4), np.ones(4, bool), np.ones(4, complex),
                                 np.array(["a", "b"]), np.array([object()])],
                         ids=["int", "bool", "complex", "str", "object"])
def test_wrong_dtype_raises_type_error(bad, backend):
    with pytest.raises(TypeError, match=r"relu: x must have dtype float16, float32 or float64"):
        fastnorm.relu(bad)
    with pytest.raises(TypeError, match=r"sigmoid_backward: grad_output"):
        fastnorm.sigmoid_backward(bad, np.ones(4))


def test_bad_out_and_shapes(backend):
    x = np.ones((3, 4))
    with pytest.raises(ValueError, match=r"gelu: out must have shape \(3, 4\), got \(4, 3\)"):
        fastnorm.gelu(x, out=np.empty((4, 3)))
    with pytest.raises(TypeError, match=r"gelu: out must have dtype float64, got float32"):
        fastnorm.gelu(x, out=np.empty((3, 4), np.float32))
    ro = np.empty((3, 4))
    ro.flags.writeable = False
    with pytest.raises(ValueError, match=r"gelu: out must be writeable"):
        fastnorm.gelu(x, out=ro)
    with pytest.raises(TypeError, match=r"gelu: out must be a numpy.ndarray, got list"):
        fastnorm.gelu(x, out=[0.0] * 12)
    with pytest.raises(ValueError, match=r"relu_backward: x must have the shape of grad_output"):
        fastnorm.relu_backward(x, np.ones((3, 5)))
    with pytest.raises(TypeError, match=r"tanh_backward: y must have the dtype of grad_output"):
        fastnorm.tanh_backward(x, x.astype(np.float32))


def test_bad_parameters(backend):
    x = np.ones(3)
    with pytest.raises(ValueError, match=r"celu: alpha must be non-zero"):
        fastnorm.celu(x, alpha=0.0)
    with pytest.raises(ValueError, match=r"gelu: approximate must be 'none' or 'tanh', got 'fast'"):
        fastnorm.gelu(x, approximate="fast")
    with pytest.raises(ValueError, match=r"leaky_relu: negative_slope must be finite, got nan"):
        fastnorm.leaky_relu(x, float("nan"))
    with pytest.raises(ValueError, match=r"softplus: beta must be non-zero"):
        fastnorm.softplus(x, beta=0)
    with pytest.raises(TypeError, match=r"elu: alpha must be a real number, got str"):
        fastnorm.elu(x, alpha="1")
    with pytest.raises(ValueError, match=r"elu_backward: alpha must be finite"):
        fastnorm.elu_backward(x, x, alpha=float("inf"))


# ---------------------------------------------------------------------------- PyTorch parity

SPECIALS = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e30, -1e30, 3.0, -3.0, 6.0, 1e-30],
                    dtype=np.float32)


@pytest.mark.parametrize("case", PARAM_CASES, ids=case_id)
def test_matches_pytorch(case, backend, rng):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    name, params = case
    tfn = {"sigmoid": torch.sigmoid, "tanh": torch.tanh}.get(name) or getattr(F, name)
    x = np.concatenate([rng.standard_normal(2000).astype(np.float32) * 5, SPECIALS])
    tx = torch.from_numpy(x.copy()).requires_grad_(True)
    ty = tfn(tx, **params)
    g = rng.standard_normal(x.shape).astype(np.float32)
    ty.backward(torch.from_numpy(g))
    y = getattr(fastnorm, name)(x, **params)
    want = ty.detach().numpy()
    if name == "gelu" and not params:
        # torch's erf-GELU gives NaN at +inf; the limit (and ours) is +inf.
        want = np.where(x == np.inf, np.inf, want)
    np.testing.assert_allclose(y, want, rtol=2e-6, atol=1e-6, equal_nan=True)
    finite = np.isfinite(x) & (np.abs(x) < 1e29)
    gx = getattr(fastnorm, name + "_backward")(g[finite], saved_for_backward(fastnorm, name, params, x[finite]),
                                               **params)
    np.testing.assert_allclose(gx, tx.grad.numpy()[finite], rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("dtype", FLOATS)
def test_result_does_not_depend_on_position(dtype, backend, rng):
    """An element's result is the same wherever it sits: in the vector body, in the
    remainder, in an unaligned view, alone, in the whole 512-byte chunks of the staged maps
    or in what follows them -- so splitting an array into threads, blocks (Dask) or views
    never changes a bit."""
    x = spread_values(rng, 1135, dtype)
    g = rng.standard_normal(x.shape).astype(dtype)
    for name, params in PARAM_CASES:
        f, b = getattr(fastnorm, name), getattr(fastnorm, name + "_backward")
        y = f(x, **params)
        s = saved_for_backward(fastnorm, name, params, x)
        gx = b(g, s, **params)
        for k in (1, 3, 7, 17):
            np.testing.assert_array_equal(f(x[k:], **params), y[k:], err_msg=f"{name}{params} at +{k}")
            np.testing.assert_array_equal(b(g[k:], s[k:], **params), gx[k:], err_msg=f"{name}{params}")
        singles = np.array([f(x[i:i + 1], **params)[0] for i in range(0, 1135, 10)])
        np.testing.assert_array_equal(singles, y[::10], err_msg=f"{name}{params} alone")
        singles = np.array([b(g[i:i + 1], s[i:i + 1], **params)[0] for i in range(0, 1135, 10)])
        np.testing.assert_array_equal(singles, gx[::10], err_msg=f"{name}{params} backward alone")


@pytest.mark.parametrize("dtype", FLOATS)
def test_result_does_not_depend_on_where_the_output_lies(dtype, backend, rng):
    """An out= array 1-511 bytes after an input modulo 4 KiB makes the maps of one loop run
    from the end down (fn_trails, fn_stream.h); the results are the same bits as in an
    array of their own, forward and backward, whichever inputs the output trails or leads,
    and nothing outside out= is written."""
    n, itemsize = 1135, np.dtype(dtype).itemsize
    pages = Pages(16)
    x = pages.at(0, n, dtype)
    x[:] = spread_values(rng, n, dtype)
    g = pages.at(4 * 4096 + 8 * itemsize, n, dtype)   # g 8 elements after x
    g[:] = rng.standard_normal(n)
    after = [itemsize, 48, 256, 512 - itemsize, 512, 1024]
    places = [8 * 4096 + d for d in after + [-d for d in after]]
    for name, params in PARAM_CASES:
        f, b = getattr(fastnorm, name), getattr(fastnorm, name + "_backward")
        y = f(x, **params)
        s = saved_for_backward(fastnorm, name, params, x)
        s_placed = pages.at(12 * 4096, n, dtype)   # s at x's offset
        s_placed[:] = s
        gx = b(g, s_placed, **params)
        for place in places:
            out = pages.at(place, n, dtype)
            out[:] = np.nan
            pages.write_into(out, lambda: f(x, out=out, **params))
            assert out.tobytes() == y.tobytes(), f"{name}{params} out at x + {place}"
            # g lies 8 elements after x and s: the output trails both, trails one and
            # leads the other, or neither, by the place
            out[:] = np.nan
            pages.write_into(out, lambda: b(g, s_placed, out=out, **params))
            assert out.tobytes() == gx.tobytes(), f"{name}{params} grad at x + {place}"


@pytest.mark.skipif(not fastnorm._config.compiled_available(), reason="compiled kernels only")
def test_fast_path_takes_plain_float_parameters_only_when_valid():
    # Plain float parameters skip the Python checks and go straight to the C fast path,
    # which must accept exactly the values the public functions accept (check_real:
    # finite, non-zero divisors) and decline the rest, so that the general path raises.
    ext = fastnorm._config._modules["activations"]
    x = np.linspace(-3, 3, 64, dtype=np.float32)
    inf, nan = float("inf"), float("nan")
    cases = {  # op: (valid (a, b), [(invalid a, b, the parameter named in the error)])
        "leaky_relu": ((0.01, 0.0), [(inf, 0.0, "negative_slope"), (nan, 0.0, "negative_slope")]),
        "elu": ((-2.0, 0.0), [(-inf, 0.0, "alpha"), (nan, 0.0, "alpha")]),
        "celu": ((0.5, 0.0), [(0.0, 0.0, "alpha"), (inf, 0.0, "alpha"), (nan, 0.0, "alpha")]),
        "softplus": ((2.0, 20.0), [(0.0, 20.0, "beta"), (nan, 20.0, "beta"), (-inf, 20.0, "beta"),
                                   (1.0, inf, "threshold"), (1.0, nan, "threshold")]),
    }
    for op, (valid, invalid) in cases.items():
        code = ext.OPS[op]
        names = [name for name, _ in fastnorm.activations._PARAMS[op]]
        assert ext.forward_fast(code, x, None, *valid, 1) is not None, op
        assert ext.backward_fast(code, x, x, None, *valid, 1) is not None, op
        for a, b, bad in invalid:
            assert ext.forward_fast(code, x, None, a, b, 1) is None, (op, a, b)
            assert ext.backward_fast(code, x, x, None, a, b, 1) is None, (op, a, b)
            kwargs = dict(zip(names, (a, b)))
            with pytest.raises(ValueError, match=f"^{op}: {bad} must"):
                getattr(fastnorm, op)(x, **kwargs)
            with pytest.raises(ValueError, match=f"^{op}_backward: {bad} must"):
                getattr(fastnorm, f"{op}_backward")(x, x, **kwargs)


def test_public_functions_dispatch_in_the_extension(monkeypatch):
    """With the compiled kernels installed, the public functions go through the extension's
    dispatchers, which follow the backend switch: on the NumPy backend the reference
    computes (here a stand-in that records its calls), and the kernels again after it."""
    ext = fastnorm._config.compiled_module("activations")
    if ext is None:
        pytest.skip("compiled kernels only")
    from fastnorm import activations
    assert activations._forward is ext.dispatch_forward
    assert activations._backward is ext.dispatch_backward
    x = np.linspace(-2, 2, 12, dtype=np.float32)
    with fastnorm.use_backend("cython"):   # also when the suite runs on FASTNORM_BACKEND=numpy
        compiled = fastnorm.gelu(x, approximate="tanh"), fastnorm.leaky_relu_backward(x, x, 2)
    calls = []

    def stand_in(*arrays, out, **params):
        calls.append(params)
        out[...] = 7

    monkeypatch.setattr(activations.reference, "gelu", stand_in)
    monkeypatch.setattr(activations.reference, "leaky_relu_backward", stand_in)
    with fastnorm.use_backend("numpy"):
        assert (fastnorm.gelu(x, approximate="tanh") == 7).all()
        assert (fastnorm.leaky_relu_backward(x, x, 2) == 7).all()
    assert calls == [{"approximate": "tanh"}, {"negative_slope": 2.0}]
    with fastnorm.use_backend("cython"):
        assert fastnorm.gelu(x, approximate="tanh").tobytes() == compiled[0].tobytes()
        assert fastnorm.leaky_relu_backward(x, x, 2).tobytes() == compiled[1].tobytes()
    assert len(calls) == 2


def test_op_table_matches_the_kernels():
    """The Python layer's op list (its threading grains) names exactly the kernels' ops."""
    ext = fastnorm._config.extension("activations")
    if ext is None:
        pytest.skip("the NumPy backend has no kernel op table")
    from fastnorm import activations
    assert set(activations._OPS) == set(ext.OPS)
    assert set(activations._FORWARD_GRAIN) == set(activations._BACKWARD_GRAIN) == set(ext.OPS)


def _forward_backward_bits(name, params, x, g, out):
    """The bytes of op `name`'s forward of x and of its backward of g, both computed into out
    (the backward's saved array as _activation_cases says)."""
    getattr(fastnorm, name)(x, out=out, **params)
    y = out.copy()
    saved = y if CASES[name][1] == "y" else x
    getattr(fastnorm, name + "_backward")(g, saved, out=out, **params)
    return y.tobytes(), out.tobytes()


@pytest.mark.skipif(not fastnorm._config.compiled_available(), reason="compiled kernels only")
@pytest.mark.parametrize("dtype", FLOATS)
def test_streamed_results_are_the_same_bits(dtype, rng):
    # Large calls into a caller's out= store with non-temporal stores from the output's
    # first 64-byte boundary to its last whole chunk (fn_stream.h); the threshold set to 0
    # streams every call.  Results must not change: every op, forward and backward, every
    # ISA variant, outputs at every offset from a 64-byte boundary, 1 and 2 threads.
    config = fastnorm._config
    n = 140_001  # above every op's threading grain, odd: lead, chunks and a tail
    x = spread_values(rng, n + 16, dtype)
    g = rng.standard_normal(n + 16).astype(dtype)
    out = np.empty(n + 32, dtype)
    previous_isa = fastnorm.isa()
    try:
        for isa in config._runnable_isas():
            fastnorm.set_isa(isa)
            for name, params in PARAM_CASES:
                for shift in (0, 3, 8):
                    xs, gs = x[shift:shift + n], g[shift:shift + n]
                    o = out[shift:shift + n]
                    results = []
                    for threshold, threads in ((None, 1), (0, 1), (0, 2)):
                        config.set_stream_min_bytes(threshold)
                        fastnorm.set_num_threads(threads)
                        results.append(_forward_backward_bits(name, params, xs, gs, o))
                    assert results[0] == results[1] == results[2], (isa, name, params, shift)
    finally:
        config.set_stream_min_bytes(None)
        fastnorm.set_num_threads(None)
        fastnorm.set_isa(previous_isa)


@pytest.mark.skipif(not fastnorm._config.compiled_available(), reason="compiled kernels only")
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("stream", [False, True])
def test_staged_maps_in_place(dtype, stream, rng):
    """The staged maps (sigmoid, silu, softplus, tanh, mish forward, GELU's tanh form: the
    exponentials of a block first, or its arguments and then their exponentials, then the
    rest) give the same bits in place as into a fresh array, forward into x and
    backward into grad_output or into the saved input, over several blocks and a partial
    one, plain and streamed (threshold 0, 64-byte-aligned arrays)."""
    config = fastnorm._config
    n = 3 * 256 + 57 + 2 * 1024

    def aligned(values):
        raw = np.empty(values.size + 64 // values.itemsize, values.dtype)
        start = (-raw.ctypes.data % 64) // values.itemsize
        a = raw[start:start + values.size]
        a[...] = values
        return a

    x0 = spread_values(rng, n, dtype)
    g0 = rng.standard_normal(n).astype(dtype)
    cases = [("sigmoid", {}), ("silu", {}), ("softplus", {}),
             ("softplus", {"beta": 2.0, "threshold": 15.0}), ("tanh", {}),
             ("gelu", {"approximate": "tanh"}), ("mish", {})]
    try:
        config.set_stream_min_bytes(0 if stream else None)
        for name, params in cases:
            fwd, bwd = getattr(fastnorm, name), getattr(fastnorm, name + "_backward")
            y = fwd(x0, **params)
            x = aligned(x0)
            fwd(x, out=x, **params)
            assert x.tobytes() == y.tobytes(), (name, params)
            saved = saved_for_backward(fastnorm, name, params, x0)
            gx = bwd(g0, saved, **params)
            g = aligned(g0)
            bwd(g, saved, out=g, **params)
            assert g.tobytes() == gx.tobytes(), (name, params, "out=grad_output")
            s = aligned(saved)
            bwd(g0, s, out=s, **params)
            assert s.tobytes() == gx.tobytes(), (name, params, "out=saved")
    finally:
        config.set_stream_min_bytes(None)


def test_stream_threshold_setting():
    config = fastnorm._config
    assert config.stream_min_bytes() == config.STREAM_MIN_BYTES
    try:
        config.set_stream_min_bytes(1 << 20)
        assert config.stream_min_bytes() == 1 << 20
        with pytest.raises(ValueError, match="set_stream_min_bytes: n must be >= 0, got -1"):
            config.set_stream_min_bytes(-1)
        with pytest.raises(TypeError, match="set_stream_min_bytes: n must be an int or None, got float"):
            config.set_stream_min_bytes(1.5)
    finally:
        config.set_stream_min_bytes(None)
    assert config.stream_min_bytes() == config.STREAM_MIN_BYTES
