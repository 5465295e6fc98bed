"""float16 data: the compiled backend converts it to and from float32 with the CPU's F16C
instructions (fastnorm/_ext/include/fn_half.h) where NumPy's casts are slow.  The conversions
give NumPy's values bit for bit (a signaling NaN comes out quiet) and report overflow and
underflow as NumPy's cast does, and every family's float16 result is its float32 result
rounded by NumPy, in any layout."""
import warnings

import numpy as np
import pytest

import fastnorm
from fastnorm import _arrays, _config

from _placement import misaligned_copy

_runtime = _config._runtime
needs_f16c = pytest.mark.skipif(_runtime is None or not _runtime.HALF_CONVERSION,
                                reason="no compiled F16C conversion on this build or CPU")


def _half_bits(f32):
    out = np.empty(f32.size, np.uint16)
    _runtime.float_to_half(f32, out)
    return out


@needs_f16c
def test_every_float16_widens_to_numpys_float32():
    h = np.arange(1 << 16, dtype=np.uint16)
    got = np.empty(h.size, np.float32)
    _runtime.half_to_float(h, got)
    want = h.view(np.float16).astype(np.float32)
    nan = np.isnan(want)
    assert np.array_equal(got.view(np.uint32)[~nan], want.view(np.uint32)[~nan])
    assert np.isnan(got[nan]).all() and np.array_equal(np.signbit(got[nan]), np.signbit(want[nan]))


@needs_f16c
def test_float32_rounds_to_numpys_float16():
    # every 4099th float32 bit pattern (both signs, all exponents), and the edges of the
    # float16 range: the largest finite, the rounding point to infinity, the subnormals
    bits = np.arange(0, 1 << 32, 4099, dtype=np.uint64).astype(np.uint32)
    edges = np.array([0.0, -0.0, 65504.0, 65519.99, 65520.0, -65520.0, 6.1035156e-05, 6.0975552e-05,
                      5.9604645e-08, 2.9802322e-08, 2.9802326e-08, 1e-10, np.inf, -np.inf, np.nan],
                     np.float32)
    x = np.concatenate([bits.view(np.float32), edges])
    got = _half_bits(x)
    with np.errstate(over="ignore", invalid="ignore"):
        want = x.astype(np.float16).view(np.uint16)
    nan = np.isnan(x)
    assert np.array_equal(got[~nan], want[~nan])
    assert np.isnan(got[nan].view(np.float16)).all()


@needs_f16c
@pytest.mark.parametrize("n", list(range(0, 20)) + [4095, 4096, 4097])
def test_conversions_cover_every_length_and_nothing_beyond(n, rng):
    x = rng.standard_normal(n + 2).astype(np.float32)
    h = np.full(n + 2, 0x7777, np.uint16)
    _runtime.float_to_half(x[:n], h[:n])
    assert np.array_equal(h[:n], x[:n].astype(np.float16).view(np.uint16))
    assert (h[n:] == 0x7777).all()
    f = np.full(n + 2, 7.0, np.float32)
    _runtime.half_to_float(h[:n], f[:n])
    assert np.array_equal(f[:n], h[:n].view(np.float16).astype(np.float32))
    assert (f[n:] == 7.0).all()


@needs_f16c
def test_conversions_reject_different_lengths():
    with pytest.raises(ValueError, match="half_to_float: src and dst differ in length"):
        _runtime.half_to_float(np.zeros(3, np.uint16), np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="float_to_half: src and dst differ in length"):
        _runtime.float_to_half(np.zeros(3, np.float32), np.zeros(2, np.uint16))


def _layouts(rng):
    """float16 arrays above the conversion threshold in C order, Fortran order, a strided
    view and misaligned data, with values that overflow float16 in some results."""
    base = (rng.standard_normal((96, 160)) * 4).astype(np.float16)
    base[0, :4] = [np.inf, -np.inf, np.nan, 60000]
    yield "C", base
    yield "F", np.asfortranarray(base)
    yield "strided", np.concatenate([base, base], axis=1)[:, ::2]
    yield "misaligned", misaligned_copy(base, 1)


def _widened(a):
    return a.astype(np.float32) if isinstance(a, np.ndarray) and a.dtype == np.float16 else a


def _compare(fn, *args, **kwargs):
    """fn on float16 arguments against fn on the same values in float32, its float32 results
    rounded by NumPy: the F16C conversions must add nothing to the float32 computation."""
    got = fn(*args, **kwargs)
    with np.errstate(over="ignore"):
        want = fn(*map(_widened, args), **{k: _widened(v) for k, v in kwargs.items()})
    got = got if isinstance(got, tuple) else (got,)
    want = want if isinstance(want, tuple) else (want,)
    for g, w in zip(got, want):
        if isinstance(g, fastnorm.DropoutMask):
            assert np.array_equal(g.packed, w.packed)
            continue
        if g is None:
            assert w is None
            continue
        with np.errstate(over="ignore"):
            w = w.astype(g.dtype)
        assert g.shape == w.shape
        assert np.array_equal(g.view(np.uint16 if g.dtype == np.float16 else np.uint32),
                              w.view(np.uint16 if w.dtype == np.float16 else np.uint32))


@needs_f16c
def test_float16_results_are_the_float32_results_rounded_in_every_layout(rng):
    assert fastnorm.backend() == "cython"
    w = (rng.standard_normal(160) + 1).astype(np.float16)
    for name, x in _layouts(rng):
        assert x.size >= _arrays._HALF_MIN, name
        g = np.ascontiguousarray(x)[::-1].copy()
        _compare(fastnorm.relu, x)
        _compare(fastnorm.gelu, x)
        _compare(fastnorm.silu_backward, g, x)
        _compare(fastnorm.dropout, x, 0.3, seed=5)
        _compare(fastnorm.layer_norm, x, 160, w, w)
        _, mean, rstd = fastnorm.layer_norm(x, 160, w)
        _compare(fastnorm.layer_norm_backward, g, x, 160, w, mean, rstd)
        _compare(fastnorm.batch_norm, x, w, w)
        _compare(fastnorm.tanh, x, out=np.empty_like(x))


@needs_f16c
def test_the_compiled_backend_converts_through_f16c_and_the_numpy_backend_does_not(rng, monkeypatch):
    calls = []
    for name in ("half_to_float", "float_to_half"):
        original = getattr(_runtime, name)
        monkeypatch.setattr(_runtime, name,
                            lambda *a, _f=original, _n=name: (calls.append(_n), _f(*a))[1])
    x = rng.standard_normal((64, 100)).astype(np.float16)
    fastnorm.sigmoid(x)
    fastnorm.layer_norm(x, 100)
    assert calls == ["half_to_float", "float_to_half"] * 2
    calls.clear()
    fastnorm.sigmoid(x[:8])  # below _HALF_MIN: NumPy's casts are cheaper there
    with fastnorm.use_backend("numpy"):
        fastnorm.sigmoid(x)
    assert calls == []


@needs_f16c
def test_rounding_reports_overflow_and_underflow():
    h = np.empty(3, np.uint16)
    assert _runtime.float_to_half(np.array([1.0, -2.0, 65504.0], np.float32), h) == (False, False)
    assert _runtime.float_to_half(np.array([1.0, 65520.0, np.inf], np.float32), h) == (True, False)
    assert _runtime.float_to_half(np.array([np.inf, np.nan, 0.0], np.float32), h) == (False, False)
    assert _runtime.float_to_half(np.array([1e-10, 1.0, 2.0], np.float32), h) == (False, True)
    assert _runtime.float_to_half(np.array([2.0 ** -24, 2.0 ** -14, 0.0], np.float32), h) == (False, False)


@needs_f16c
@pytest.mark.parametrize("n", [128, 8192])   # NumPy's cast below _HALF_MIN, F16C above
def test_float16_overflow_warns_and_raises_as_numpys_cast(n):
    x = np.full(n, 65000.0, np.float16)      # selu(x) = 1.0507 x: past float16's largest
    with pytest.warns(RuntimeWarning, match="overflow encountered in cast"):
        y = fastnorm.selu(x)
    assert np.isposinf(y).all()
    with np.errstate(over="raise"), pytest.raises(FloatingPointError, match="overflow"):
        fastnorm.selu(x)
    with np.errstate(over="ignore"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            fastnorm.selu(x)
    tiny = np.full(n, 1e-4, np.float16)      # gelu(1e-4) = 5e-5: a float16 subnormal, inexact
    with np.errstate(under="raise"), pytest.raises(FloatingPointError, match="underflow"):
        fastnorm.gelu(tiny)


@needs_f16c
def test_float16_in_place_and_into_an_overlapping_out(rng):
    x = (rng.standard_normal(10000) * 3).astype(np.float16)
    want = fastnorm.relu(x.astype(np.float32)).astype(np.float16)
    y = x.copy()
    assert fastnorm.relu(y, out=y) is y
    assert np.array_equal(y.view(np.uint16), want.view(np.uint16))
    buf = np.concatenate([x, np.zeros(8, np.float16)])
    out = fastnorm.relu(buf[:-8], out=buf[8:])       # out overlaps the input, shifted
    assert np.array_equal(out.view(np.uint16), want.view(np.uint16))


@needs_f16c
def test_the_forced_baseline_variant_keeps_numpys_casts(rng, monkeypatch):
    calls = []
    monkeypatch.setattr(_runtime, "half_to_float", lambda *a: calls.append(a))
    x = rng.standard_normal((64, 100)).astype(np.float16)
    previous = fastnorm.isa()
    fastnorm.set_isa("base")
    try:
        fastnorm.sigmoid(x)
    finally:
        fastnorm.set_isa(previous)
    assert calls == []
