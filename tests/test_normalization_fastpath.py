"""The C-level fast paths of layer/RMS, batch, group and instance norm
(fastnorm._ext.normalization.*_fast): taken for plain float32/float64 arrays, bit-identical to
the general path (forced here with a non-contiguous copy of every array, or out=), declined
(None) for anything unusual, and every error still raised -- with its message -- by the
general path."""
import numpy as np
import pytest

import fastnorm
from fastnorm import _config
from conftest import count_fast_calls

pytestmark = pytest.mark.skipif(not _config.compiled_available(), reason="no compiled kernels")
GRAIN = 1 << 15
SHAPES = [(7,), (3, 5), (2, 3, 17), (40, 33), (64, 1024)]  # the last crosses the thread grain


def ext():
    return _config._modules["normalization"]


def strided(a):
    """A non-contiguous view with a's values (x's view alone forces the general path;
    0-d and one-element arrays are always contiguous)."""
    if a is None or a.ndim == 0:
        return a
    wide = np.empty(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
    view = wide[..., ::2]
    view[...] = a
    assert a.size <= 1 or not view.flags.c_contiguous
    return view


def assert_identical(fast, general):
    assert len(fast) == len(general)
    for f, g in zip(fast, general):
        if g is None:
            assert f is None
            continue
        assert type(f) is np.ndarray and f.dtype == g.dtype and f.shape == g.shape
        np.testing.assert_array_equal(f, g)
        assert f.tobytes() == g.tobytes()  # bit for bit, signed zeros and NaN payloads included


def _params(rng, k, dtype, affine):
    """(weight, bias) of k elements: both (affine True), neither (False), or one of them
    ("weight", "bias")."""
    if not affine:
        return None, None
    w, b = rng.standard_normal(k).astype(dtype), rng.standard_normal(k).astype(dtype)
    return (w if affine != "bias" else None), (b if affine != "weight" else None)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("affine", [False, True])
def test_layer_norm_fast_equals_general(dtype, shape, affine, backend, num_threads, rng):
    if backend[0] != "cython":
        pytest.skip("the fast path exists only on the compiled backend")
    k = shape[-1]
    x = (3 + rng.standard_normal(shape)).astype(dtype)
    w, b = _params(rng, k, dtype, affine)
    for ns in (k, (k,)):
        assert ext().rows_forward_fast(x, ns, w, b, 1e-5, False, None, GRAIN) is not None
        fast = fastnorm.layer_norm(x, ns, w, b, eps=1e-5)
        general = fastnorm.layer_norm(strided(x), ns, strided(w), strided(b), eps=1e-5)
        assert_identical(fast, general)
        out = np.empty_like(x)
        y_out = fastnorm.layer_norm(x, ns, w, b, eps=1e-5, out=out)[0]
        assert y_out is out and out.tobytes() == fast[0].tobytes()
    _, mean, rstd = fast
    g = rng.standard_normal(shape).astype(dtype)
    for bias in (None, b):
        assert ext().rows_backward_fast(g, x, k, w, mean, rstd, bias, False, GRAIN) is not None
        fast = fastnorm.layer_norm_backward(g, x, k, w, mean, rstd, bias=bias)
        general = fastnorm.layer_norm_backward(strided(g), strided(x), k, strided(w), strided(mean),
                                               strided(rstd), bias=strided(bias))
        assert_identical(fast, general)
        if w is not None:
            assert fast[1].dtype == w.dtype
        if bias is not None:
            assert fast[2].dtype == bias.dtype


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, axes", [((2, 3, 4, 5), 2), ((2, 3, 4, 5), 3), ((3, 4, 5), 3), ((6, 1, 7), 2)],
                         ids=str)
@pytest.mark.parametrize("affine", [False, True])
def test_layer_norm_over_several_axes_fast_equals_general(dtype, shape, axes, affine, backend, num_threads,
                                                          rng):
    """normalized_shape of several trailing axes (the LayerNorm layer's (C, H, W), say; all of
    x's axes: 0-d statistics) takes the fast path: the general path's bits, parameter
    gradients shaped as the parameters; layer and RMS norm."""
    if backend[0] != "cython":
        pytest.skip("the fast path exists only on the compiled backend")
    ns = shape[len(shape) - axes:]
    x = (3 + rng.standard_normal(shape)).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    w, b = ((rng.standard_normal(ns).astype(dtype), rng.standard_normal(ns).astype(dtype)) if affine
            else (None, None))
    assert ext().rows_forward_fast(x, ns, w, b, 1e-5, False, None, GRAIN) is not None
    fast = fastnorm.layer_norm(x, ns, w, b)
    assert_identical(fast, fastnorm.layer_norm(_strided_any(x), ns, w, b))
    assert fast[1].shape == fast[2].shape == shape[:len(shape) - axes]
    tol = dict(rtol=2e-4, atol=2e-4) if dtype == np.float32 else dict(rtol=1e-9, atol=1e-9)
    for got, want in zip(fast, fastnorm.reference.layer_norm(x, ns, w, b)):
        np.testing.assert_allclose(got, want, **tol)
    _, mean, rstd = fast
    assert ext().rows_backward_fast(g, x, ns, w, mean, rstd, b, False, GRAIN) is not None
    fast_b = fastnorm.layer_norm_backward(g, x, ns, w, mean, rstd, bias=b)
    assert_identical(fast_b, fastnorm.layer_norm_backward(_strided_any(g), _strided_any(x), ns, w, mean, rstd,
                                                          bias=b))
    for got, want in zip(fast_b, fastnorm.reference.layer_norm_backward(g, x, ns, w, mean, rstd, bias=b)):
        assert (got is None) == (want is None)
        if got is not None:
            assert got.shape == want.shape
            np.testing.assert_allclose(got, want, **tol)
    fast_r = fastnorm.rms_norm(x, ns, w)
    assert_identical(fast_r, fastnorm.rms_norm(_strided_any(x), ns, w))
    fast_rb = fastnorm.rms_norm_backward(g, x, ns, w, fast_r[1])
    assert_identical(fast_rb, fastnorm.rms_norm_backward(_strided_any(g), _strided_any(x), ns, w, fast_r[1]))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("eps", [None, 1e-6, 0.0])
def test_rms_norm_fast_equals_general(dtype, shape, eps, backend, num_threads, rng):
    if backend[0] != "cython":
        pytest.skip("the fast path exists only on the compiled backend")
    k = shape[-1]
    x = rng.standard_normal(shape).astype(dtype)
    w = rng.standard_normal(k).astype(dtype)
    for weight in (None, w):
        assert ext().rows_forward_fast(x, k, weight, None, eps, True, None, GRAIN) is not None
        fast = fastnorm.rms_norm(x, k, weight, eps=eps)
        general = fastnorm.rms_norm(strided(x), k, strided(weight), eps=eps)
        assert_identical(fast, general)
        out = np.empty_like(x)
        assert ext().rows_forward_fast(x, k, weight, None, eps, True, out, GRAIN)[0] is out
        y_out = fastnorm.rms_norm(x, k, weight, eps=eps, out=out)[0]
        assert y_out is out and out.tobytes() == fast[0].tobytes()
        g = rng.standard_normal(shape).astype(dtype)
        assert ext().rows_backward_fast(g, x, k, weight, None, fast[1], None, True, GRAIN) is not None
        fast_b = fastnorm.rms_norm_backward(g, x, k, weight, fast[1])
        general_b = fastnorm.rms_norm_backward(strided(g), strided(x), k, strided(weight), strided(fast[1]))
        assert_identical(fast_b, general_b)


def test_fast_path_results_match_the_oracle(rng):
    # Not only equal to the general path: right (the general path is checked against the
    # oracle in test_normalization.py; this guards the fast path's own argument wiring).
    x = rng.standard_normal((6, 10)).astype(np.float64)
    w, b = rng.standard_normal(10), rng.standard_normal(10)
    for got, want in zip(fastnorm.layer_norm(x, 10, w, b), fastnorm.reference.layer_norm(x, (10,), w, b)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    g = rng.standard_normal(x.shape)
    _, mean, rstd = fastnorm.layer_norm(x, 10, w, b)
    got = fastnorm.layer_norm_backward(g, x, 10, w, mean, rstd, bias=b)
    want = fastnorm.reference.layer_norm_backward(g, x, (10,), w, mean, rstd, bias=b)
    for a, e in zip(got, want):
        np.testing.assert_allclose(a, e, rtol=1e-11, atol=1e-11)


def _unusual_forward_calls(x, w, b):
    """(label, args of rows_forward_fast) that must take the general path."""
    swapped = x.astype(x.dtype.newbyteorder())
    unaligned = np.frombuffer(b"\0" + x.tobytes(), x.dtype, offset=1).reshape(x.shape)
    return [
        ("list", (x.tolist(), 5, w, b, 1e-5)),
        ("float16", (x.astype(np.float16), 5, w, b, 1e-5)),
        ("int", (x.astype(np.int64), 5, w, b, 1e-5)),
        ("non-contiguous", (np.repeat(x, 2, axis=1)[:, ::2], 5, w, b, 1e-5)),
        ("Fortran-order 3-d", (np.asfortranarray(x[None]), 5, w, b, 1e-5)),
        ("Fortran-order, C-order out", (np.asfortranarray(x), 5, w, b, 1e-5, np.empty_like(x))),
        ("byte-swapped", (swapped, 5, w, b, 1e-5)),
        ("unaligned", (unaligned, 5, w, b, 1e-5)),
        ("subclass", (x.view(np.matrix), 5, w, b, 1e-5)),
        ("empty", (x[:0], 5, w, b, 1e-5)),
        ("0-d", (np.float32(1.0) * np.ones((), x.dtype), 1, None, None, 1e-5)),
        ("ns mismatch", (x, 4, w, b, 1e-5)),
        ("ns 2 dims not x's", (x, (3, 4), None, None, 1e-5)),
        ("ns 2 dims, weight 1-d", (x, (3, 5), np.ones(15, x.dtype), None, 1e-5)),
        ("ns longer than x", (x, (1, 3, 5), None, None, 1e-5)),
        ("ns empty", (x, (), None, None, 1e-5)),
        ("ns list", (x, [5], w, b, 1e-5)),
        ("ns bool", (x[:, :1].copy(), True, None, None, 1e-5)),
        ("ns float", (x, 5.0, w, b, 1e-5)),
        ("ns huge", (x, 2 ** 80, w, b, 1e-5)),
        ("weight list", (x, 5, w.tolist(), b, 1e-5)),
        ("weight float64", (x, 5, w.astype(np.float64), b, 1e-5)),
        ("weight 2-d", (x, 5, w[None], b, 1e-5)),
        ("bias length", (x, 5, w, b[:4], 1e-5)),
        ("bias strided", (x, 5, w, np.repeat(b, 2)[::2], 1e-5)),
        ("eps int", (x, 5, w, b, 0)),
        ("eps negative", (x, 5, w, b, -1e-5)),
        ("eps nan", (x, 5, w, b, float("nan"))),
        ("eps inf", (x, 5, w, b, float("inf"))),
        ("eps numpy", (x, 5, w, b, np.float64(1e-5))),
        ("eps None for layer norm", (x, 5, w, b, None)),
    ]


def test_fast_path_declines_unusual_calls(rng):
    x = rng.standard_normal((3, 5)).astype(np.float32)
    w, b = rng.standard_normal(5).astype(np.float32), rng.standard_normal(5).astype(np.float32)
    assert ext().rows_forward_fast(x, 5, w, b, 1e-5, False, None, GRAIN) is not None
    assert ext().rows_forward_fast(x, (5,), w, b, 1e-5, False, None, GRAIN) is not None
    for label, (xx, ns, ww, bb, eps, *out) in _unusual_forward_calls(x, w, b):
        assert ext().rows_forward_fast(xx, ns, ww, bb, eps, False, (out or [None])[0], GRAIN) is None, label
    _, mean, rstd = fastnorm.layer_norm(x, 5, w, b)
    assert ext().rows_backward_fast(x, x, 5, w, mean, rstd, b, False, GRAIN) is not None
    declined = [
        ("grad dtype", (x.astype(np.float64), x, 5, w, mean, rstd, b, False)),
        ("grad shape", (x[:2], x, 5, w, mean, rstd, b, False)),
        ("grad strided", (x.T.copy().T, x, 5, w, mean, rstd, b, False)),
        ("x Fortran-order, grad C-order", (x, np.asfortranarray(x), 5, w, mean, rstd, b, False)),
        ("mean shape", (x, x, 5, w, mean[None], rstd, b, False)),
        ("mean float64", (x, x, 5, w, mean.astype(np.float64), rstd, b, False)),
        ("mean missing", (x, x, 5, w, None, rstd, b, False)),
        ("rstd list", (x, x, 5, w, mean, rstd.tolist(), b, False)),
        ("rms with mean", (x, x, 5, w, mean, rstd, None, True)),
        ("bias length", (x, x, 5, w, mean, rstd, b[:3], False)),
        ("ns mismatch", (x, x, 4, w, mean, rstd, b, False)),
    ]
    for label, args in declined:
        assert ext().rows_backward_fast(*args, GRAIN) is None, label


def test_unusual_calls_still_work_through_the_general_path(rng):
    x = rng.standard_normal((3, 5)).astype(np.float32)
    w, b = rng.standard_normal(5).astype(np.float32), rng.standard_normal(5).astype(np.float32)
    expected = fastnorm.layer_norm(x, 5, w, b)
    for args, kwargs in [((np.asfortranarray(x), 5, w, b), {}), ((x, [5], w, b), {}), ((x, np.int64(5), w, b), {}),
                         ((x, 5, w, b), {"eps": np.float64(1e-5)}),
                         ((x.astype(x.dtype.newbyteorder()), 5, w, b), {})]:
        got = fastnorm.layer_norm(*args, **kwargs)
        for a, e in zip(got, expected):
            np.testing.assert_array_equal(a, e)


X = np.arange(12, dtype=np.float32).reshape(3, 4)
W = np.ones(4, np.float32)
S = np.ones(3, np.float32)
ERRORS = [
    (lambda: fastnorm.layer_norm(X, 4, eps=-1e-5), ValueError, "layer_norm: eps must be >= 0"),
    (lambda: fastnorm.layer_norm(X, 4, eps=float("nan")), ValueError, "layer_norm: eps must be finite"),
    (lambda: fastnorm.layer_norm(X, 4, eps=float("inf")), ValueError, "layer_norm: eps must be finite"),
    (lambda: fastnorm.layer_norm(X, 4, eps="1"), TypeError, "layer_norm: eps must be a real number"),
    (lambda: fastnorm.layer_norm(X, 4, eps=True), TypeError, "layer_norm: eps must be a real number"),
    (lambda: fastnorm.layer_norm(X, 3), ValueError, "layer_norm: normalized_shape (3,)"),
    (lambda: fastnorm.layer_norm(X, 2 ** 80), ValueError, "layer_norm: normalized_shape"),
    (lambda: fastnorm.layer_norm(X[:, :1], True), TypeError, "layer_norm: normalized_shape must be an int"),
    (lambda: fastnorm.layer_norm(X, 4.0), TypeError, "layer_norm: normalized_shape must be an int"),
    (lambda: fastnorm.layer_norm(X, 4, np.ones(3, np.float32)), ValueError,
     "layer_norm: weight must have shape (4,)"),
    (lambda: fastnorm.layer_norm(X, 4, np.ones(4)), TypeError, "layer_norm: weight must have dtype float32"),
    (lambda: fastnorm.layer_norm(X, 4, W, np.ones((1, 4), np.float32)), ValueError,
     "layer_norm: bias must have shape (4,)"),
    (lambda: fastnorm.layer_norm(X.astype(np.int32), 4), TypeError, "layer_norm: x"),
    (lambda: fastnorm.layer_norm(X, 4, out=np.empty((3, 5), np.float32)), ValueError, "layer_norm: out"),
    (lambda: fastnorm.layer_norm_backward(X[:2], X, 4, W, S, S), ValueError, "layer_norm_backward: grad_output"),
    (lambda: fastnorm.layer_norm_backward(X.astype(np.float64), X, 4, W, S, S), (TypeError, ValueError),
     "layer_norm_backward: grad_output"),
    (lambda: fastnorm.layer_norm_backward(X, X, 4, W, S[:2], S), ValueError,
     "layer_norm_backward: mean must have shape (3,)"),
    (lambda: fastnorm.layer_norm_backward(X, X, 4, W, S, S[None]), ValueError,
     "layer_norm_backward: rstd must have shape (3,)"),
    (lambda: fastnorm.layer_norm_backward(X, X, 4, W, S, S, bias=np.ones(5, np.float32)), ValueError,
     "layer_norm_backward: bias must have shape (4,)"),
    (lambda: fastnorm.layer_norm_backward(X, X, 4, np.ones(4), S, S), TypeError,
     "layer_norm_backward: weight must have dtype float32"),
    (lambda: fastnorm.rms_norm(X, 4, eps=-1.0), ValueError, "rms_norm: eps must be >= 0"),
    (lambda: fastnorm.rms_norm(X, 4, np.ones(5, np.float32)), ValueError, "rms_norm: weight must have shape"),
    (lambda: fastnorm.rms_norm(X, (2, 4)), ValueError, "rms_norm: normalized_shape"),
    (lambda: fastnorm.rms_norm_backward(X, X, 4, W, S[:1]), ValueError, "rms_norm_backward: rstd must have shape"),
    (lambda: fastnorm.rms_norm_backward(X, X, 4, np.ones(4), S), TypeError, "rms_norm_backward: weight"),
]


@pytest.mark.parametrize("call, exc, message", ERRORS, ids=[e[2][:50] for e in ERRORS])
def test_errors_come_from_the_general_path(call, exc, message, backend):
    with pytest.raises(exc, match=message.replace("(", r"\(").replace(")", r"\)")):
        call()


# ---------------------------------------------------------------------------- batch norm

BN_SHAPES = [((6, 5), False), ((4, 3, 7), False), ((2, 3, 4, 5), False), ((2, 4, 5, 3), True),
             ((30, 200), False),  # enough channels for a float64 rounding difference to show
             ((64, 8, 9, 9), False),  # crosses the thread grain
             ((9, 1100), False), ((2, 3, 2, 1030), True),  # rows over 4 KiB: four at a time
             ((2, 600, 3, 3), False)]  # per-channel arithmetic in 256-channel chunks


def _strided_any(a):
    """A non-contiguous view of a copy of a (x of any rank): forces the general path."""
    wide = np.empty(a.shape + (2,), a.dtype)
    view = wide[..., 0]
    view[...] = a
    return view


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, channels_last", BN_SHAPES, ids=str)
@pytest.mark.parametrize("mode", ["train", "train+running", "eval"])
@pytest.mark.parametrize("affine", [False, True, "weight", "bias"])
def test_batch_norm_fast_equals_general(dtype, shape, channels_last, mode, affine, backend, num_threads,
                                        rng):
    if backend[0] != "cython":
        pytest.skip("the fast path exists only on the compiled backend")
    c = shape[-1] if channels_last else shape[1]
    x = (2 + 3 * rng.standard_normal(shape)).astype(dtype)
    w, b = _params(rng, c, dtype, affine)
    rm0, rv0 = rng.standard_normal(c).astype(dtype), rng.uniform(0.5, 2, c).astype(dtype)
    training = mode != "eval"
    running = mode != "train"
    results = []
    for path in ("fast", "general"):
        rm, rv = (rm0.copy(), rv0.copy()) if running else (None, None)
        xx = x if path == "fast" else _strided_any(x)
        if path == "fast":
            assert ext().batch_norm_fast(x, w, b, rm0.copy() if running else None,
                                         rv0.copy() if running else None, training, 0.25, 1e-5,
                                         channels_last, None, GRAIN) is not None
        got = fastnorm.batch_norm(xx, w, b, rm, rv, training=training, momentum=0.25, eps=1e-5,
                                  channels_last=channels_last)
        results.append((got, rm, rv))
    (fast, rm_f, rv_f), (general, rm_g, rv_g) = results
    assert_identical(fast, general)
    if running:
        assert_identical((rm_f, rv_f), (rm_g, rv_g))
        if training:
            assert not np.array_equal(rm_f, rm0)


@pytest.mark.parametrize("momentum, num_batches_tracked, fast", [
    (0.25, 3, True),            # the counter does not count with a momentum
    (None, 3, True),            # the cumulative average: factor 1 / 3
    (None, 1, True),
    (None, np.int64(3), False),  # other counter types: the general path, the same values
    (None, 2 ** 60, False),
])
def test_batch_norm_num_batches_tracked_takes_the_fast_path(momentum, num_batches_tracked, fast, monkeypatch,
                                                             backend, rng):
    """The batch norm layers pass num_batches_tracked with every training batch: the fast path
    takes the call (the counter as the factor 1 / n where momentum is None), with the general
    path's bits and running statistics."""
    if backend[0] != "cython":
        pytest.skip("the fast path exists only on the compiled backend")
    calls = count_fast_calls(monkeypatch, ext(), ["batch_norm_fast"])
    x = (2 + 3 * rng.standard_normal((4, 3, 5, 2))).astype(np.float32)
    w, b = _params(rng, 3, np.float32, True)
    rm0, rv0 = rng.standard_normal(3).astype(np.float32), rng.uniform(0.5, 2, 3).astype(np.float32)
    results = []
    for xx in (x, _strided_any(x)):
        rm, rv = rm0.copy(), rv0.copy()
        got = fastnorm.batch_norm(xx, w, b, rm, rv, momentum=momentum, num_batches_tracked=num_batches_tracked)
        results.append((got, rm, rv))
    assert calls[0] == ("batch_norm_fast", fast)
    (fast_r, rm_f, rv_f), (general, rm_g, rv_g) = results
    assert_identical(fast_r, general)
    assert_identical((rm_f, rv_f), (rm_g, rv_g))
    factor = momentum if momentum is not None else 1.0 / int(num_batches_tracked)
    np.testing.assert_allclose(rm_f, (1 - factor) * rm0 + factor * x.mean(axis=(0, 2, 3)), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="num_batches_tracked"):
        fastnorm.batch_norm(x, w, b, rm0.copy(), rv0.copy(), momentum=None)
    with pytest.raises(ValueError, match="num_batches_tracked must be >= 1"):
        fastnorm.batch_norm(x, w, b, rm0.copy(), rv0.copy(), momentum=None, num_batches_tracked=0)


def test_batch_norm_fast_path_declines_unusual_calls(rng):
    x = rng.standard_normal((4, 3, 5)).astype(np.float32)
    w, b = np.ones(3, np.float32), np.zeros(3, np.float32)
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)

    def fast(xx=x, ww=w, bb=b, rmm=rm, rvv=rv, training=True, momentum=0.1, eps=1e-5, last=False,
             out=None):
        return ext().batch_norm_fast(xx, ww, bb, rmm, rvv, training, momentum, eps, last, out, GRAIN)

    assert fast() is not None
    assert fast(rmm=None, rvv=None) is not None
    assert fast(training=False) is not None
    read_only = rm.copy()
    read_only.flags.writeable = False
    both = np.zeros(6, np.float32)
    declined = {
        "1-d x": dict(xx=x[0, 0]), "float16": dict(xx=x.astype(np.float16)),
        "strided": dict(xx=_strided_any(x)), "list": dict(xx=x.tolist()), "empty": dict(xx=x[:0]),
        "one value per channel": dict(xx=x[:1, :, :1].copy()),
        "training int": dict(training=1), "channels_last int": dict(last=0),
        "eps int": dict(eps=0), "eps negative": dict(eps=-1.0), "eps nan": dict(eps=float("nan")),
        "momentum None": dict(momentum=None), "momentum int": dict(momentum=1),
        "momentum inf": dict(momentum=float("inf")),
        "weight float64": dict(ww=w.astype(np.float64)), "bias length": dict(bb=b[:2]),
        "running_mean only": dict(rvv=None), "running_var only": dict(rmm=None),
        "eval without running": dict(rmm=None, rvv=None, training=False),
        "running read-only": dict(rmm=read_only), "running float64": dict(rvv=rv.astype(np.float64)),
        "running overlap": dict(rmm=both[:3], rvv=both[1:4]),
        "channels_last wrong C": dict(last=True),
    }
    for label, kwargs in declined.items():
        assert fast(**kwargs) is None, label


X4 = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
C3 = np.ones(3, np.float32)
BN_ERRORS = [
    (lambda: fastnorm.batch_norm(X4, eps=-1.0), ValueError, "batch_norm: eps must be >= 0"),
    (lambda: fastnorm.batch_norm(X4, eps=float("nan")), ValueError, "batch_norm: eps must be finite"),
    (lambda: fastnorm.batch_norm(X4, training=1), TypeError, "batch_norm: training must be a bool"),
    (lambda: fastnorm.batch_norm(X4, channels_last=0), TypeError, "batch_norm: channels_last must be a bool"),
    (lambda: fastnorm.batch_norm(X4, np.ones(4, np.float32)), ValueError, "batch_norm: weight must have shape (3,)"),
    (lambda: fastnorm.batch_norm(X4, C3, np.ones(3)), TypeError, "batch_norm: bias must have dtype float32"),
    (lambda: fastnorm.batch_norm(X4, running_mean=np.zeros(3, np.float32)), ValueError,
     "batch_norm: running_mean and running_var must be given together"),
    (lambda: fastnorm.batch_norm(X4, training=False), ValueError, "batch_norm: running_mean and running_var are required"),
    (lambda: fastnorm.batch_norm(X4[:1, :, :1], C3), ValueError, "batch_norm: expected more than 1 value per channel"),
    (lambda: fastnorm.batch_norm(X4, running_mean=np.zeros(3, np.float32), running_var=np.ones(3, np.float32),
                                 momentum=float("inf")), ValueError, "batch_norm: momentum must be finite"),
    (lambda: fastnorm.batch_norm(X4, running_mean=np.zeros(3), running_var=np.ones(3)), TypeError,
     "batch_norm: running_mean must have dtype float32"),
    (lambda: fastnorm.batch_norm(X4, running_mean=np.zeros(3, np.float32), running_var=np.ones(3, np.float32),
                                 momentum=None), ValueError, "batch_norm: momentum=None"),
    (lambda: fastnorm.batch_norm(X4.astype(np.int64)), TypeError, "batch_norm: x"),
    (lambda: fastnorm.batch_norm(X4[0, 0]), ValueError, "batch_norm: x must have at least 2 dimensions"),
]


@pytest.mark.parametrize("call, exc, message", BN_ERRORS, ids=[e[2][:50] for e in BN_ERRORS])
def test_batch_norm_errors_come_from_the_general_path(call, exc, message, backend):
    with pytest.raises(exc, match=message.replace("(", r"\(").replace(")", r"\)")):
        call()


def test_batch_norm_read_only_running_statistics_still_raise(backend):
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    rm.flags.writeable = False
    with pytest.raises(ValueError, match="batch_norm: running_mean must be writeable"):
        fastnorm.batch_norm(X4, running_mean=rm, running_var=rv)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, channels_last", BN_SHAPES, ids=str)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("affine", [False, True])
def test_batch_norm_backward_fast_equals_general(dtype, shape, channels_last, training, affine, backend,
                                                 num_threads, rng):
    if backend[0] != "cython":
        pytest.skip("the fast path exists only on the compiled backend")
    c = shape[-1] if channels_last else shape[1]
    x = (2 + 3 * rng.standard_normal(shape)).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    w, b = _params(rng, c, dtype, affine)
    _, mean, rstd = fastnorm.batch_norm(x, w, b, channels_last=channels_last)
    assert ext().batch_norm_backward_fast(g, x, w, mean, rstd, training, channels_last, b, GRAIN) is not None
    fast = fastnorm.batch_norm_backward(g, x, w, mean, rstd, training=training, channels_last=channels_last,
                                        bias=b)
    general = fastnorm.batch_norm_backward(_strided_any(g), _strided_any(x), w, mean, rstd, training=training,
                                           channels_last=channels_last, bias=b)
    assert_identical(fast, general)


def test_batch_norm_backward_fast_path_declines_unusual_calls(rng):
    x = rng.standard_normal((4, 3, 5)).astype(np.float32)
    w, m = np.ones(3, np.float32), np.zeros(3, np.float32)

    def fast(gg=x, xx=x, ww=w, mm=m, rr=m, training=True, last=False, bb=None):
        return ext().batch_norm_backward_fast(gg, xx, ww, mm, rr, training, last, bb, GRAIN)

    assert fast() is not None
    declined = {
        "1-d x": dict(xx=x[0, 0], gg=x[0, 0]), "float16": dict(xx=x.astype(np.float16)),
        "grad float64": dict(gg=x.astype(np.float64)), "grad shape": dict(gg=x[:2]),
        "grad strided": dict(gg=_strided_any(x)), "mean float64": dict(mm=m.astype(np.float64)),
        "rstd length": dict(rr=m[:2]), "mean list": dict(mm=m.tolist()), "weight length": dict(ww=w[:2]),
        "bias float64": dict(bb=np.zeros(3)), "training int": dict(training=1),
        "channels_last wrong C": dict(last=True),
    }
    for label, kwargs in declined.items():
        assert fast(**kwargs) is None, label


BN_BACKWARD_ERRORS = [
    (lambda: fastnorm.batch_norm_backward(X4[:1], X4, C3, C3, C3), ValueError, "batch_norm_backward: grad_output"),
    (lambda: fastnorm.batch_norm_backward(X4, X4, C3, C3[:2], C3), ValueError,
     "batch_norm_backward: mean must have shape (3,)"),
    (lambda: fastnorm.batch_norm_backward(X4, X4, C3, C3, C3[None]), ValueError,
     "batch_norm_backward: rstd must have shape (3,)"),
    (lambda: fastnorm.batch_norm_backward(X4, X4, np.ones(3), C3, C3), TypeError,
     "batch_norm_backward: weight must have dtype float32"),
    (lambda: fastnorm.batch_norm_backward(X4, X4, C3, C3, C3, bias=np.ones(2, np.float32)), ValueError,
     "batch_norm_backward: bias must have shape (3,)"),
    (lambda: fastnorm.batch_norm_backward(X4, X4, C3, C3, C3, training="yes"), TypeError,
     "batch_norm_backward: training must be a bool"),
]


@pytest.mark.parametrize("call, exc, message", BN_BACKWARD_ERRORS, ids=[e[2][:50] for e in BN_BACKWARD_ERRORS])
def test_batch_norm_backward_errors_come_from_the_general_path(call, exc, message, backend):
    with pytest.raises(exc, match=message.replace("(", r"\(").replace(")", r"\)")):
        call()


# ---------------------------------------------------------------------------- one-pass group norm
# NCHW group norm and instance norm normalize each group right after its statistics
# (fn_norm_group_forward).  They must give the bits of the two-pass path they replaced:
# per-group statistics (the stats kernel), then the per-(sample, channel) affine pass.

def _two_pass_group_norm(x, groups, w, b, eps):
    from fastnorm import normalization as N
    n, c, hw = N._group_geometry(x, False)
    xc = N._contiguous(x)
    mean, m2 = np.empty(n * groups), np.empty(n * groups)  # groups: rows of the (N*G, C/G*HW) view
    ext().stats(xc.reshape(-1), 1, 1, n * groups, c // groups * hw, mean, m2, 1)
    mean, m2 = mean.reshape(n, groups), m2.reshape(n, groups)
    rstd = N._rstd(m2 / (c // groups * hw), eps)
    y = np.empty_like(xc)
    N._group_apply(ext(), xc, y, n, c, hw, groups, mean, rstd, w, b, 1, False)
    return y, mean.astype(x.dtype), rstd.astype(x.dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, groups", [((4, 32, 8, 8), 8), ((3, 6, 5), 3), ((2, 8, 1), 4),
                                           ((2, 64, 33, 3), 64), ((5, 12), 4), ((64, 32, 32), 4)],
                         ids=str)
@pytest.mark.parametrize("affine", [True, False])
def test_one_pass_group_norm_equals_two_pass(backend, dtype, shape, groups, affine):
    if backend[0] != "cython":
        pytest.skip("compiled kernels only")
    rng = np.random.default_rng(5)
    x = (rng.standard_normal(shape) * 3 + (1e3 if dtype == np.float32 else 0)).astype(dtype)
    if shape[0] == 3:  # one shape with NaNs: they must poison the same groups either way
        x.reshape(-1)[::97] = np.nan
    w, b = _params(rng, shape[1], dtype, affine)
    try:
        for n in (1, 2):
            fastnorm.set_num_threads(n)
            assert_identical(fastnorm.group_norm(x, groups, w, b), _two_pass_group_norm(x, groups, w, b, 1e-5))
            if x.ndim > 2 and x.size // (shape[0] * shape[1]) > 1:
                assert_identical(fastnorm.instance_norm(x, w, b),
                                 _two_pass_group_norm(x, shape[1], w, b, 1e-5))
    finally:
        fastnorm.set_num_threads(None)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, groups", [((4, 32, 8, 8), 8), ((3, 6, 5), 3), ((5, 12, 1), 4),
                                           ((2, 16, 33, 3), 16)], ids=str)
@pytest.mark.parametrize("affine", [True, False])
def test_one_pass_group_norm_backward_agrees_with_channels_last(backend, dtype, shape, groups, affine):
    """NCHW group norm backward runs one visit per group (fn_norm_group_backward); the
    channels-last layout still takes the two-pass path.  Same math, so the same gradients
    up to the order of the channel sums."""
    if backend[0] != "cython":
        pytest.skip("compiled kernels only")
    rng = np.random.default_rng(9)
    x = (rng.standard_normal(shape) * 2 + 3).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    w, b = _params(rng, shape[1], dtype, affine)
    _, mean, rstd = fastnorm.group_norm(x, groups, w, b)
    last = lambda a: np.ascontiguousarray(np.moveaxis(a, 1, -1))
    first = lambda a: np.moveaxis(a, -1, 1)
    nchw = fastnorm.group_norm_backward(g, x, groups, w, mean, rstd, bias=b)
    nhwc = fastnorm.group_norm_backward(last(g), last(x), groups, w, mean, rstd, bias=b, channels_last=True)
    tol = dict(rtol=2e-5, atol=2e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(nchw[0], first(nhwc[0]), **tol)
    for a, c in zip(nchw[1:], nhwc[1:]):
        assert (a is None) == (c is None)
        if a is not None:
            np.testing.assert_allclose(a, c, **tol)



def _out_cases(x, weight):
    """(label, x's copy, out, weight, usable by the fast path) for a forward of x that
    reads weight while it writes y."""
    k = weight.size
    flat = np.empty(x.size + 1, x.dtype)
    shifted_x = flat[:-1].reshape(x.shape)
    shifted_x[...] = x
    in_place = x.copy()
    read_only = np.empty_like(x)
    read_only.flags.writeable = False
    holder = np.empty(x.size + k - 1, x.dtype)  # the weight's last element is out's first
    shared_weight = holder[:k]
    shared_weight[...] = weight
    other = np.float64 if x.dtype == np.float32 else np.float32
    return [
        ("fresh", x.copy(), np.empty_like(x), weight, True),
        ("in place", in_place, in_place, weight, True),
        ("other dtype", x.copy(), np.empty(x.shape, other), weight, False),
        ("other shape", x.copy(), np.empty((x.size,), x.dtype), weight, False),
        ("read-only", x.copy(), read_only, weight, False),
        ("strided", x.copy(), _strided_any(np.empty_like(x)), weight, False),
        ("partial overlap with x", shifted_x, flat[1:].reshape(x.shape), weight, False),
        ("overlaps the weight", x.copy(), holder[k - 1:].reshape(x.shape), shared_weight, False),
    ]


def _check_fast_out(label, usable, fast, out, expected):
    """The fast path wrote out itself (bit for bit the result without out=) or declined."""
    assert (fast is not None) == usable, label
    if usable:
        assert fast[0] is out, label
        assert_identical(fast, expected)


def _check_public_out(label, public, out, expected):
    """The public call returns the result without out= bit for bit, in out, or raises
    as the general path does."""
    try:
        got = public()
    except (TypeError, ValueError) as e:
        assert label in ("other dtype", "other shape", "read-only"), (label, e)
        return
    assert got[0] is out, label
    assert_identical(got, expected)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_forward_fast_paths_write_out_directly_or_decline(dtype, rng):
    x0 = (1 + rng.standard_normal((6, 7, 5))).astype(dtype)
    w, b = rng.standard_normal(5).astype(dtype), rng.standard_normal(5).astype(dtype)
    expected = fastnorm.layer_norm(x0, 5, w, b)
    for label, x, out, ww, usable in _out_cases(x0, w):
        _check_fast_out(label, usable, ext().rows_forward_fast(x, 5, ww, b, 1e-5, False, out, GRAIN),
                        out, expected)
        x[...] = x0
        _check_public_out(label, lambda: fastnorm.layer_norm(x, 5, ww, b, out=out), out, expected)

    c = x0.shape[1]  # batch norm over axis 1; the running statistics are read and written
    w, b = rng.standard_normal(c).astype(dtype), rng.standard_normal(c).astype(dtype)
    rm0, rv0 = np.zeros(c, dtype), np.ones(c, dtype)
    expected = fastnorm.batch_norm(x0, w, b, rm0.copy(), rv0.copy(), training=True)
    cases = _out_cases(x0, w)
    cases.append(("overlaps running_var", x0.copy(), np.empty_like(x0), w, False))
    for label, x, out, ww, usable in cases:
        rm, rv = rm0.copy(), (out.reshape(-1)[:c] if label == "overlaps running_var" else rv0.copy())
        rv[...] = rv0
        _check_fast_out(label, usable, ext().batch_norm_fast(x, ww, b, rm, rv, True, 0.1, 1e-5, False, out,
                                                             GRAIN), out, expected)
        x[...], rm[...], rv[...] = x0, rm0, rv0
        if label == "overlaps running_var":
            with pytest.raises(ValueError, match="batch_norm: out must not share memory with running_var"):
                fastnorm.batch_norm(x, ww, b, rm, rv, training=True, out=out)
            continue
        _check_public_out(label, lambda: fastnorm.batch_norm(x, ww, b, rm, rv, training=True, out=out),
                          out, expected)

    expected = fastnorm.group_norm(x0, 7, w, b)  # 7 groups of the 7 channels of axis 1
    for label, x, out, ww, usable in _out_cases(x0, w):
        _check_fast_out(label, usable, ext().group_norm_fast(x, 7, ww, b, 1e-5, False, out, GRAIN),
                        out, expected)
        x[...] = x0
        _check_public_out(label, lambda: fastnorm.group_norm(x, 7, ww, b, out=out), out, expected)


GN_CASES = [((2, 6), 3), ((3, 8, 5), 4), ((2, 12, 4, 4), 1), ((2, 12, 4, 4), 12), ((5, 4, 3, 2, 2), 2),
            ((300, 8, 3), 4), ((4, 64, 16, 16), 32)]  # many samples; the last crosses the thread grain


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, groups", GN_CASES, ids=str)
@pytest.mark.parametrize("affine", [False, True])
def test_group_norm_fast_equals_general(dtype, shape, groups, affine, backend, num_threads, rng):
    if backend[0] != "cython":
        pytest.skip("the fast path exists only on the compiled backend")
    x = (2 + 3 * rng.standard_normal(shape)).astype(dtype)
    x.flat[::7] = 1e4  # a large offset within some groups, as accurate through both paths
    w, b = _params(rng, shape[1], dtype, affine)
    assert ext().group_norm_fast(x, groups, w, b, 1e-5, False, None, GRAIN) is not None
    fast = fastnorm.group_norm(x, groups, w, b, eps=1e-5)
    general = fastnorm.group_norm(_strided_any(x), groups, w, b, eps=1e-5)
    assert_identical(fast, general)
    assert fast[1].shape == fast[2].shape == (shape[0], groups)
    _, mean, rstd = fast
    g = rng.standard_normal(shape).astype(dtype)
    for bias in (None, b):
        assert ext().group_norm_backward_fast(g, x, groups, w, mean, rstd, False, bias, GRAIN) is not None
        fast = fastnorm.group_norm_backward(g, x, groups, w, mean, rstd, bias=bias)
        general = fastnorm.group_norm_backward(_strided_any(g), _strided_any(x), groups, w, mean, rstd,
                                               bias=bias)
        assert_identical(fast, general)
        assert (fast[1] is None) == (w is None) and (fast[2] is None) == (bias is None)


GN_CL_CASES = [((2, 6), 3), ((3, 5, 8), 4), ((2, 4, 4, 12), 1), ((2, 4, 4, 12), 12), ((5, 2, 3, 2, 4), 2),
               ((300, 3, 8), 4), ((1, 7, 1), 1), ((4, 16, 16, 64), 32),  # the last crosses the thread grain
               ((2, 3, 520), 4), ((2, 3, 600), 600)]  # coefficients in 256-channel chunks


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, groups", GN_CL_CASES, ids=str)
@pytest.mark.parametrize("affine", [False, True, "weight", "bias"])
def test_group_norm_channels_last_fast_equals_general(dtype, shape, groups, affine, backend, num_threads,
                                                      rng):
    """Channels-last group norm, forward and backward, takes the fast path for plain arrays
    and gives the general path's bits (the same code, group_forward_cl / group_backward_cl),
    in place too; and the oracle's values."""
    if backend[0] != "cython":
        pytest.skip("the fast path exists only on the compiled backend")
    x = (2 + 3 * rng.standard_normal(shape)).astype(dtype)
    x.flat[::7] = 1e4  # a large offset within some groups
    w, b = _params(rng, shape[-1], dtype, affine)
    assert ext().group_norm_fast(x, groups, w, b, 1e-5, True, None, GRAIN) is not None
    fast = fastnorm.group_norm(x, groups, w, b, eps=1e-5, channels_last=True)
    assert_identical(fast, fastnorm.group_norm(_strided_any(x), groups, w, b, eps=1e-5, channels_last=True))
    assert fast[1].shape == fast[2].shape == (shape[0], groups)
    in_place = x.copy()
    assert fastnorm.group_norm(in_place, groups, w, b, eps=1e-5, channels_last=True, out=in_place)[0] is in_place
    assert in_place.tobytes() == fast[0].tobytes()
    tol = dict(rtol=2e-4, atol=2e-4) if dtype == np.float32 else dict(rtol=1e-9, atol=1e-9)
    for got, want in zip(fast, fastnorm.reference.group_norm(x, groups, w, b, eps=1e-5, channels_last=True)):
        np.testing.assert_allclose(got, want, **tol)
    _, mean, rstd = fast
    g = rng.standard_normal(shape).astype(dtype)
    for bias in (None, b):
        assert ext().group_norm_backward_fast(g, x, groups, w, mean, rstd, True, bias, GRAIN) is not None
        fast_b = fastnorm.group_norm_backward(g, x, groups, w, mean, rstd, channels_last=True, bias=bias)
        general_b = fastnorm.group_norm_backward(_strided_any(g), _strided_any(x), groups, w, mean, rstd,
                                                 channels_last=True, bias=bias)
        assert_identical(fast_b, general_b)
        assert (fast_b[1] is None) == (w is None) and (fast_b[2] is None) == (bias is None)
        want_b = fastnorm.reference.group_norm_backward(g, x, groups, w, mean, rstd, channels_last=True,
                                                        bias=bias)
        for got, want in zip(fast_b, want_b):
            assert (got is None) == (want is None)
            if got is not None:
                np.testing.assert_allclose(got, want, **tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nan_signs_where_two_nans_add(dtype, backend, num_threads, rng):
    """Where two NaNs meet in an addition the fast path keeps the first operand's, as x86's
    scalar add does, in every lane of its vector loops (whose adds gcc may commute): a NaN
    running statistic updated with a batch of the other NaN sign keeps its own, and a
    parameter gradient's sum over samples keeps the first NaN sample's.  (NumPy's own vector
    loops do so too, except in some tail lanes (n = 37 float64: the last five take the second
    operand's NaN), so the general path is compared by value here, not by bits.)"""
    if backend[0] != "cython":
        pytest.skip("the fast path exists only on the compiled backend")
    neg_nan, pos_nan = np.copysign(np.nan, -1.0), np.nan
    C = 37  # every lane position, and a tail
    channels = np.arange(C)
    x = rng.standard_normal((4, C)).astype(dtype)
    x[1, 0::3] = neg_nan  # batch mean -NaN in channels 0, 3, 6, ...
    rm0 = rng.standard_normal(C).astype(dtype)
    rv0 = rng.uniform(0.5, 2, C).astype(dtype)
    rm0[0::2] = rv0[0::2] = pos_nan  # running statistics +NaN in the even channels
    runs = []
    for xx in (x, _strided_any(x)):
        rm, rv = rm0.copy(), rv0.copy()
        out = fastnorm.batch_norm(xx, None, None, rm, rv, momentum=0.25)
        runs.append((out, rm, rv))
    (fast, rm_f, rv_f), (general, rm_g, rv_g) = runs
    for f, g in zip(fast + (rm_f, rv_f), general + (rm_g, rv_g)):
        np.testing.assert_array_equal(f, g)
    own = channels % 2 == 0
    assert not np.signbit(rm_f[own]).any() and not np.signbit(rv_f[own]).any()
    batch = ~own & (channels % 3 == 0)
    assert np.isnan(rm_f[batch]).all() and np.signbit(rm_f[batch]).all()

    # channels-last group norm backward: in the even channels sample 0 sums to +NaN and
    # sample 1 to -NaN; in channels 1, 5, 9, ... only sample 2 is NaN, -NaN
    xg = rng.standard_normal((3, 5, 2 * C)).astype(dtype)
    w = rng.standard_normal(2 * C).astype(dtype)
    _, mean, rstd = fastnorm.group_norm(xg, 2, w, None, channels_last=True)
    g = rng.standard_normal(xg.shape).astype(dtype)
    g[0, 1, 0::2] = pos_nan
    g[1, 2, 0::2] = neg_nan
    g[2, 3, 1::4] = neg_nan
    fast_b = fastnorm.group_norm_backward(g, xg, 2, w, mean, rstd, channels_last=True, bias=w)
    general_b = fastnorm.group_norm_backward(_strided_any(g), _strided_any(xg), 2, w, mean, rstd,
                                             channels_last=True, bias=w)
    for f, gg in zip(fast_b, general_b):
        np.testing.assert_array_equal(f, gg)
    grad_bias = fast_b[2]
    assert not np.signbit(grad_bias[0::2]).any() and np.isnan(grad_bias[0::2]).all()
    assert np.signbit(grad_bias[1::4]).all() and np.isnan(grad_bias[1::4]).all()


def test_group_norm_fast_path_declines_unusual_calls(rng):
    x = rng.standard_normal((2, 6, 5)).astype(np.float32)
    w, b = np.ones(6, np.float32), np.zeros(6, np.float32)

    def fast(xx=x, groups=3, ww=w, bb=b, eps=1e-5, last=False, out=None):
        return ext().group_norm_fast(xx, groups, ww, bb, eps, last, out, GRAIN)

    assert fast() is not None
    assert fast(ww=None, bb=None) is not None
    declined = {
        "1-d x": dict(xx=x[0, 0]), "float16": dict(xx=x.astype(np.float16)),
        "strided": dict(xx=_strided_any(x)), "list": dict(xx=x.tolist()), "empty": dict(xx=x[:0]),
        "channels_last int": dict(last=0), "channels_last None": dict(last=None),
        "groups not dividing": dict(groups=4), "channels_last, groups not dividing": dict(last=True), "groups 0": dict(groups=0), "groups > C": dict(groups=12),
        "groups float": dict(groups=3.0), "groups bool": dict(groups=True), "groups numpy int": dict(groups=np.int64(3)),
        "eps int": dict(eps=0), "eps negative": dict(eps=-1.0), "eps nan": dict(eps=float("nan")),
        "weight float64": dict(ww=w.astype(np.float64)), "bias length": dict(bb=b[:2]),
        "out overlapping the weight": dict(out=None),
    }
    holder = np.empty(x.size + 5, np.float32)
    declined["out overlapping the weight"] = dict(ww=holder[:6], out=holder[5:].reshape(x.shape))
    for label, kwargs in declined.items():
        assert fast(**kwargs) is None, label
    # what the fast path declines still works (numpy ints) or raises there
    np.testing.assert_array_equal(fastnorm.group_norm(x, np.int64(3), w, b)[0], fast()[0])
    # channels last, (2, 5, 6) with 3 groups of the 6 channels: taken
    assert fast(last=True, ww=None, bb=None, xx=x.reshape(2, 5, 6)) is not None

    _, mean, rstd = fast()
    g = np.ones_like(x)

    def fast_b(gg=g, xx=x, groups=3, ww=w, mm=mean, rr=rstd, last=False, bb=b):
        return ext().group_norm_backward_fast(gg, xx, groups, ww, mm, rr, last, bb, GRAIN)

    assert fast_b() is not None
    assert fast_b(ww=None, bb=None) is not None
    declined_b = {
        "strided x": dict(xx=_strided_any(x)), "strided grad": dict(gg=_strided_any(g)),
        "grad float64": dict(gg=g.astype(np.float64)), "grad shape": dict(gg=g[:1]),
        "channels_last int": dict(last=1), "channels_last, groups not dividing": dict(last=True),
        "groups not dividing": dict(groups=4),
        "groups numpy int": dict(groups=np.int64(3)), "mean shape": dict(mm=mean[:, :2]),
        "rstd float64": dict(rr=rstd.astype(np.float64)), "mean strided": dict(mm=_strided_any(mean)),
        "weight length": dict(ww=w[:2]), "bias float64": dict(bb=b.astype(np.float64)),
    }
    for label, kwargs in declined_b.items():
        assert fast_b(**kwargs) is None, label


GN_ERRORS = [
    (lambda: fastnorm.group_norm(X4, 2), ValueError, "group_norm: num_groups"),
    (lambda: fastnorm.group_norm(X4, 0), ValueError, "group_norm: num_groups"),
    (lambda: fastnorm.group_norm(X4, 3, eps=-1.0), ValueError, "group_norm: eps must be >= 0"),
    (lambda: fastnorm.group_norm(X4, 3, np.ones(4, np.float32)), ValueError, "group_norm: weight must have shape (3,)"),
    (lambda: fastnorm.group_norm(X4, 3, C3, np.ones(3)), TypeError, "group_norm: bias must have dtype float32"),
    (lambda: fastnorm.group_norm(X4[0, 0], 1), ValueError, "group_norm: x must have at least 2 dimensions"),
    (lambda: fastnorm.group_norm_backward(X4, X4, 3, None, np.zeros((2, 2), np.float32), np.ones((2, 3), np.float32)),
     ValueError, "group_norm_backward: mean must have shape (2, 3)"),
    (lambda: fastnorm.group_norm_backward(X4[:1], X4, 3, None, np.zeros((2, 3), np.float32),
                                          np.ones((2, 3), np.float32)), ValueError, "group_norm_backward: grad_output"),
]


@pytest.mark.parametrize("call, exc, message", GN_ERRORS, ids=[e[2][:50] for e in GN_ERRORS])
def test_group_norm_errors_come_from_the_general_path(call, exc, message, backend):
    with pytest.raises(exc, match=message.replace("(", r"\(").replace(")", r"\)")):
        call()



@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(2, 3, 5), (3, 4, 2, 3), (4, 64, 16, 16)], ids=str)
@pytest.mark.parametrize("affine", [False, True])
def test_instance_norm_takes_the_group_norm_fast_path(dtype, shape, affine, backend, num_threads, rng):
    if backend[0] != "cython":
        pytest.skip("the fast path exists only on the compiled backend")
    x = (1 + 2 * rng.standard_normal(shape)).astype(dtype)
    w, b = _params(rng, shape[1], dtype, affine)
    fast = fastnorm.instance_norm(x, w, b)
    assert_identical(fast, fastnorm.instance_norm(_strided_any(x), w, b))
    assert_identical(fast, fastnorm.group_norm(x, shape[1], w, b))
    g = rng.standard_normal(shape).astype(dtype)
    for bias in (None, b):
        got = fastnorm.instance_norm_backward(g, x, w, fast[1], fast[2], bias=bias)
        assert_identical(got, fastnorm.instance_norm_backward(_strided_any(g), _strided_any(x), w, fast[1],
                                                              fast[2], bias=bias))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(2, 3, 5), (3, 4, 2, 3), (4, 64, 16, 16)], ids=str)
@pytest.mark.parametrize("affine", [False, True])
def test_instance_norm_with_running_statistics_takes_the_fast_paths(dtype, shape, affine, backend, num_threads,
                                                                    monkeypatch, rng):
    """Instance norm with running statistics (the InstanceNorm layers with
    track_running_stats): training updates them on the fast path (group norm's kernel, the
    batch averages by instance_batch_stats), evaluation normalizes with them on batch norm's
    evaluation path; both the general path's bits, running statistics included."""
    if backend[0] != "cython":
        pytest.skip("the fast path exists only on the compiled backend")
    x = (1 + 2 * rng.standard_normal(shape)).astype(dtype)
    c = shape[1]
    w, b = _params(rng, c, dtype, affine)
    rm0, rv0 = rng.standard_normal(c).astype(dtype), rng.uniform(0.5, 2, c).astype(dtype)
    assert ext().group_norm_fast(x, c, w, b, 1e-5, False, None, GRAIN, rm0.copy(), rv0.copy(), 0.3) is not None
    assert ext().batch_norm_fast(x, w, b, rm0.copy(), rv0.copy(), False, 0.3, 1e-5, False, None, GRAIN) is not None
    calls = count_fast_calls(monkeypatch, ext(), ["group_norm_fast", "batch_norm_fast"])
    for use_input_stats in (True, False):
        results = []
        for xx in (x, _strided_any(x)):
            rm, rv = rm0.copy(), rv0.copy()
            calls.clear()
            got = fastnorm.instance_norm(xx, w, b, rm, rv, use_input_stats=use_input_stats, momentum=0.3)
            results.append((got, rm, rv, list(calls)))
        (fast, rm_f, rv_f, taken), (general, rm_g, rv_g, _) = results
        assert taken == [("group_norm_fast" if use_input_stats else "batch_norm_fast", True)]
        assert_identical(fast, general)
        assert fast[1].shape == fast[2].shape == shape[:2]
        assert_identical((rm_f, rv_f), (rm_g, rv_g))
        if use_input_stats:
            hw = x[0, 0].size
            want_rm = 0.7 * rm0 + 0.3 * x.reshape(shape[0], c, hw).mean(axis=(0, 2))
            want_rv = 0.7 * rv0 + 0.3 * x.reshape(shape[0], c, hw).var(axis=2, ddof=1).mean(axis=0)
            tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(rm_f, want_rm, **tol)
            np.testing.assert_allclose(rv_f, want_rv, **tol)
        else:
            assert_identical((rm_f, rv_f), (rm0, rv0))
    # declined: a running statistic alone, read-only, overlapping, momentum not a float, channels last
    declined = {"rv missing": (rm0.copy(), None, 0.3), "momentum int": (rm0.copy(), rv0.copy(), 0),
                "momentum nan": (rm0.copy(), rv0.copy(), float("nan")),
                "read-only": (np.zeros(c, dtype), np.ones(c, dtype), 0.3), "overlapping": None}
    declined["read-only"][0].flags.writeable = False
    both = np.ones(2 * c, dtype)
    declined["overlapping"] = (both[:c], both[:c], 0.3)
    for label, (rm, rv, momentum) in declined.items():
        assert ext().group_norm_fast(x, c, w, b, 1e-5, False, None, GRAIN, rm, rv, momentum) is None, label
    assert ext().group_norm_fast(x, c, w, b, 1e-5, True, None, GRAIN, rm0.copy(), rv0.copy(), 0.3) is None
    if c > 1:
        assert ext().group_norm_fast(x, 1, w, b, 1e-5, False, None, GRAIN, rm0.copy(), rv0.copy(), 0.3) is None


def test_instance_norm_errors_come_from_the_general_path_and_running_statistics_change_nothing_else(rng):
    x = rng.standard_normal((2, 3, 1)).astype(np.float32)
    with pytest.raises(ValueError, match="instance_norm: expected more than 1 spatial element"):
        fastnorm.instance_norm(x)
    with pytest.raises(ValueError, match="instance_norm: expected more than 1 spatial element"):
        fastnorm.instance_norm(x[:, :, 0])
    with pytest.raises(ValueError, match="instance_norm: expected more than 1 spatial element"):
        fastnorm.instance_norm(x, running_mean=np.zeros(3, np.float32), running_var=np.ones(3, np.float32))
    x = rng.standard_normal((2, 3, 4)).astype(np.float32)
    with pytest.raises(ValueError, match="instance_norm: running_mean and running_var are required"):
        fastnorm.instance_norm(x, use_input_stats=False)
    with pytest.raises(ValueError, match="instance_norm: out must not share memory with running_mean"):
        rm = np.zeros(x.size + 3, np.float32)
        fastnorm.instance_norm(x, running_mean=rm[:3], running_var=np.ones(3, np.float32),
                               out=rm[:x.size].reshape(x.shape))
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    y, mean, rstd = fastnorm.instance_norm(x, running_mean=rm, running_var=rv, momentum=0.5)
    np.testing.assert_allclose(rm, 0.5 * x.mean(axis=(0, 2)), rtol=1e-5, atol=1e-6)
    assert_identical((y, mean, rstd), fastnorm.instance_norm(x))


def test_group_norm_backward_with_one_channel_takes_the_general_path(rng):
    # With one channel the general path's sums over samples are NumPy's pairwise 1-D sums.
    x = (1 + rng.standard_normal((300, 1, 4))).astype(np.float64)
    w, b = rng.standard_normal(1), rng.standard_normal(1)
    _, mean, rstd = fastnorm.group_norm(x, 1, w, b)
    g = rng.standard_normal(x.shape)
    assert ext().group_norm_backward_fast(g, x, 1, w, mean, rstd, False, b, GRAIN) is None
    assert_identical(fastnorm.group_norm_backward(g, x, 1, w, mean, rstd, bias=b),
                     fastnorm.group_norm_backward(_strided_any(g), _strided_any(x), 1, w, mean, rstd, bias=b))


def test_group_norm_backward_fast_parameter_gradients_as_numpy_sums_them(rng):
    # A product rstd * s2 that underflows to -0.0 sums to +0.0, as NumPy's sum from +0.0 does;
    # a float32 sum that overflows warns (NumPy's cast), as the general path's astype does.
    x = np.tile(np.array([1e4, -1e4, 1e3, -1e3]), (3, 2, 1))
    g = np.ones_like(x)
    g[:, :, 2] = -5e-324
    g[:, :, [0, 1, 3]] = 0.0
    w, b = np.ones(2), np.zeros(2)
    _, mean, rstd = fastnorm.group_norm(x, 2, w, b)
    fast = fastnorm.group_norm_backward(g, x, 2, w, mean, rstd, bias=b)
    assert_identical(fast, fastnorm.group_norm_backward(_strided_any(g), _strided_any(x), 2, w, mean, rstd,
                                                        bias=b))
    assert not np.signbit(fast[1]).any()

    x = rng.standard_normal((2, 4, 2)).astype(np.float32)
    g = np.full_like(x, 3e38)
    w, b = np.ones(4, np.float32), np.zeros(4, np.float32)
    _, mean, rstd = fastnorm.group_norm(x, 2, w, b)
    with pytest.warns(RuntimeWarning, match="overflow"):
        assert ext().group_norm_backward_fast(g, x, 2, w, mean, rstd, False, b, GRAIN) is not None
    with pytest.warns(RuntimeWarning, match="overflow"):
        fast = fastnorm.group_norm_backward(g, x, 2, w, mean, rstd, bias=b)
    with pytest.warns(RuntimeWarning, match="overflow"):
        general = fastnorm.group_norm_backward(_strided_any(g), _strided_any(x), 2, w, mean, rstd, bias=b)
    assert_identical(fast, general)
    assert np.isinf(fast[2]).all()
    with np.errstate(over="raise"), pytest.raises(FloatingPointError):
        fastnorm.group_norm_backward(g, x, 2, w, mean, rstd, bias=b)


def test_batch_norm_backward_fast_float32_parameter_gradient_overflow_warns(rng):
    x = rng.standard_normal((2, 4, 2)).astype(np.float32)
    g = np.full_like(x, 3e38)
    w, b = np.ones(4, np.float32), np.zeros(4, np.float32)
    _, mean, rstd = fastnorm.batch_norm(x, w, b)
    with pytest.warns(RuntimeWarning, match="overflow"):
        assert ext().batch_norm_backward_fast(g, x, w, mean, rstd, True, False, b, GRAIN) is not None
    with pytest.warns(RuntimeWarning, match="overflow"):
        fast = fastnorm.batch_norm_backward(g, x, w, mean, rstd, bias=b)
    with pytest.warns(RuntimeWarning, match="overflow"):
        general = fastnorm.batch_norm_backward(_strided_any(g), _strided_any(x), w, mean, rstd, bias=b)
    assert_identical(fast, general)
    assert np.isinf(fast[2]).all()
    with np.errstate(over="raise"), pytest.raises(FloatingPointError):
        fastnorm.batch_norm_backward(g, x, w, mean, rstd, bias=b)


def test_group_and_instance_norm_calls_take_the_fast_paths(monkeypatch, backend, rng):
    if backend[0] != "cython":
        pytest.skip("the fast path exists only on the compiled backend")
    taken = count_fast_calls(monkeypatch, ext(), ["group_norm_fast", "group_norm_backward_fast"])
    x = rng.standard_normal((2, 4, 3, 3)).astype(np.float32)
    w, b = np.ones(4, np.float32), np.zeros(4, np.float32)
    _, mean, rstd = fastnorm.group_norm(x, 2, w, b)
    fastnorm.group_norm_backward(x, x, 2, w, mean, rstd, bias=b)
    _, mean, rstd = fastnorm.instance_norm(x, w, b)
    fastnorm.instance_norm_backward(x, x, w, mean, rstd, bias=b)
    xl = np.ascontiguousarray(np.moveaxis(x, 1, -1))
    _, mean, rstd = fastnorm.group_norm(xl, 2, w, b, channels_last=True)
    fastnorm.group_norm_backward(xl, xl, 2, w, mean, rstd, channels_last=True, bias=b)
    assert taken == [("group_norm_fast", True), ("group_norm_backward_fast", True)] * 3


LAYER_CASES = [
    ("BatchNorm1d", lambda L: L.BatchNorm1d(6), (5, 6)),
    ("BatchNorm1d momentum=None", lambda L: L.BatchNorm1d(6, momentum=None), (5, 6, 3)),
    ("BatchNorm2d", lambda L: L.BatchNorm2d(6), (3, 6, 4, 4)),
    ("BatchNorm2d untracked", lambda L: L.BatchNorm2d(6, track_running_stats=False), (3, 6, 4, 4)),
    ("BatchNorm3d no affine", lambda L: L.BatchNorm3d(6, affine=False), (2, 6, 2, 3, 2)),
    ("LayerNorm", lambda L: L.LayerNorm(6), (4, 5, 6)),
    ("LayerNorm several axes", lambda L: L.LayerNorm((6, 4, 4)), (3, 6, 4, 4)),
    ("RMSNorm", lambda L: L.RMSNorm((5, 6)), (4, 5, 6)),
    ("GroupNorm", lambda L: L.GroupNorm(3, 6), (3, 6, 4, 4)),
    ("InstanceNorm2d", lambda L: L.InstanceNorm2d(6), (3, 6, 4, 4)),
    ("InstanceNorm2d tracked", lambda L: L.InstanceNorm2d(6, affine=True, track_running_stats=True), (3, 6, 4, 4)),
]


@pytest.mark.parametrize("name, make, shape", LAYER_CASES, ids=[c[0] for c in LAYER_CASES])
def test_norm_layers_take_the_fast_paths(name, make, shape, monkeypatch, backend, rng):
    """The normalization layers' training forward and backward and their evaluation forward
    reach the C-level fast paths with the arguments they pass (the batch norm layers'
    num_batches_tracked, LayerNorm's normalized_shape tuple, tracked instance statistics),
    not the general path's NumPy glue, which costs about 100 us at these sizes."""
    if backend[0] != "cython":
        pytest.skip("the fast path exists only on the compiled backend")
    import fastnorm.layers as L
    calls = count_fast_calls(monkeypatch, ext(), [n for n in dir(ext()) if n.endswith("_fast")])
    layer = make(L)
    x = (1 + rng.standard_normal(shape)).astype(np.float32)
    y = layer.forward(x)
    layer.backward(np.ones_like(y))
    layer.eval()
    layer.forward(x)
    assert len(calls) == 3 and all(taken for _, taken in calls), calls
