"""The copy of Fortran-order arrays into C order (and back) that most families make of such
inputs: fn_layout.h through _runtime.to_c_order, used by _arrays.aligned_contiguous from
_REORDER_MIN elements on (NumPy's own copy below that)."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import fastnorm
from fastnorm import _arrays, _config
from fastnorm._arrays import aligned_contiguous

from conftest import NUMPY_ONLY

pytestmark = pytest.mark.skipif(NUMPY_ONLY, reason="the compiled copy is not part of the NumPy backend")

UINTS = {2: np.uint16, 4: np.uint32, 8: np.uint64}
FLOATS = (np.float16, np.float32, np.float64)


def _runtime():
    return _config._runtime


def _bits(shape, size, seed):
    """Random bit patterns (NaN payloads, signed zeros, subnormals among them as floats)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, np.iinfo(UINTS[size]).max, shape, dtype=UINTS[size], endpoint=True)


def _copies(src, vector, threads):
    dst = np.full(src.shape, 0x5A, src.dtype)
    _runtime().to_c_order(src, dst, threads, vector)
    return dst


# ---------------------------------------------------------------------------- the kernel

@given(shape=st.lists(st.integers(1, 23), min_size=2, max_size=5).map(tuple),
       size=st.sampled_from([2, 4, 8]), vector=st.booleans(), threads=st.integers(1, 3),
       seed=st.integers(0, 2**32 - 1))
def test_every_shape_copies_every_bit(shape, size, vector, threads, seed):
    src = np.asfortranarray(_bits(shape, size, seed))
    # (one axis longer than 1: C order as well, nothing to transpose)
    assert _runtime().transposable(src) == (not src.flags.c_contiguous)
    if src.flags.c_contiguous:
        return
    dst = _copies(src, vector, threads)
    assert dst.flags.c_contiguous
    np.testing.assert_array_equal(dst, src)


@pytest.mark.parametrize("size", [2, 4, 8])
@pytest.mark.parametrize("vector", [True, False], ids=["vector", "plain"])
@pytest.mark.parametrize("shape", [(255, 17), (256, 16), (257, 15), (600, 33), (513, 2, 3, 9),
                                   (2, 700), (700, 2), (31, 1, 1, 40), (8, 8), (3, 5)])
def test_blocks_and_edges(shape, size, vector, rng):
    """Rows around the tasks' block of 256 and columns around the blocks' M x M and a line."""
    src = np.asfortranarray(_bits(shape, size, 7))
    for threads in (1, 2, 4):
        np.testing.assert_array_equal(_copies(src, vector, threads), src)


def test_nothing_outside_the_destination_is_written():
    src = np.asfortranarray(_bits((37, 19), 4, 3))
    guard = np.full(37 * 19 + 32, 0xDEADBEEF, np.uint32)
    dst = guard[16:16 + src.size].reshape(src.shape)
    _runtime().to_c_order(src, dst, 2, True)
    np.testing.assert_array_equal(dst, src)
    assert (guard[:16] == 0xDEADBEEF).all() and (guard[16 + src.size:] == 0xDEADBEEF).all()


def test_float_values_come_through_as_they_were():
    values = np.array([np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, 5e-324, 1.0], np.float64)
    src = np.asfortranarray(np.resize(values, (40, 30)))
    src.view(np.uint64)[0, 0] = 0x7FF0000000000001  # a signaling NaN
    for vector in (True, False):
        dst = _copies(src, vector, 1)
        assert dst.tobytes() == np.ascontiguousarray(src).tobytes()


def test_empty_arrays():
    for shape in [(0, 5), (5, 0), (3, 0, 4)]:
        src = np.asfortranarray(np.empty(shape, np.float32))
        dst = np.empty(shape, np.float32)
        _runtime().to_c_order(src, dst, 2, True)


@given(shape=st.lists(st.integers(1, 9), min_size=2, max_size=5).map(tuple), data=st.data(),
       size=st.sampled_from([2, 4, 8]), seed=st.integers(0, 2**32 - 1))
def test_any_view_with_a_contiguous_axis_besides_its_last(shape, data, size, seed):
    """Permuted and sliced views (x.swapaxes(-1, -2), NCHW views of NHWC data, ...): those
    with an axis of unit stride other than their last are copied (one plane per index of the
    other axes), the others refused, as transposable() says."""
    base = _bits(shape, size, seed)
    perm = data.draw(st.permutations(range(len(shape))))
    view = base.transpose(perm)
    steps = tuple(data.draw(st.sampled_from([1, 1, 2])) if i != perm.index(len(shape) - 1) else 1
                  for i in range(len(shape)))
    view = view[tuple(slice(None, None, step) for step in steps)]
    real = [a for a in range(view.ndim) if view.shape[a] > 1]
    expected = (len(real) >= 2 and view.strides[real[-1]] != size
                and any(view.strides[a] == size for a in real[:-1]))
    assert _runtime().transposable(view) == expected
    if expected:
        for vector in (True, False):
            np.testing.assert_array_equal(_copies(view, vector, 2), view)
    elif view.size:
        with pytest.raises(ValueError, match="unit stride"):
            _copies(view, True, 1)


def test_arguments_a_kernel_cannot_take_are_refused():
    to_c_order = _runtime().to_c_order
    f = np.asfortranarray(np.zeros((4, 6), np.float32))
    c = np.zeros((4, 6), np.float32)
    readonly = np.zeros((4, 6), np.float32)
    readonly.flags.writeable = False
    overlapping = np.zeros(30, np.float32)
    misaligned = np.zeros(4 * 6 * 4 + 1, np.uint8)[1:].view(np.float32).reshape(6, 4).T
    cases = [
        (np.zeros(5, np.float32), np.zeros(5, np.float32), "unit stride"),
        (f, np.zeros((4, 6, 1), np.float32), "dimensions"),
        (f, np.zeros((4, 7), np.float32), "shapes differ"),
        (f, np.zeros((4, 6), np.float64), "dtypes differ"),
        (f, np.zeros((4, 6), np.int32), "dtypes differ"),
        (f.astype(np.complex128, order="F"), np.zeros((4, 6), np.complex128), "dtype complex128"),
        (np.asfortranarray(np.empty((4, 6), object)), np.empty((4, 6), object), "dtype object"),
        (c, np.zeros((4, 6), np.float32), "unit stride"),       # C order: nothing to transpose
        (c[::-1].T, np.zeros((6, 4), np.float32), "unit stride"),  # a negative stride
        (f, np.zeros((6, 4), np.float32).T, "C-contiguous"),
        (f, np.zeros((4, 6, 2), np.float32)[..., 0], "C-contiguous"),
        (f, readonly, "writeable"),
        (misaligned, np.zeros((4, 6), np.float32), "aligned"),
        (overlapping[:24].reshape(6, 4).T, overlapping[4:28].reshape(4, 6), "overlap"),
        (overlapping[6:30].reshape(6, 4).T, overlapping[:24].reshape(4, 6), "overlap"),
    ]
    for src, dst, message in cases:
        with pytest.raises(ValueError, match=message):
            to_c_order(src, dst, 1, True)
    assert not _runtime().transposable(np.asfortranarray(np.empty((4, 6), object)))  # 8 bytes
    with pytest.raises(TypeError):
        to_c_order([[1.0]], c, 1, True)


# ---------------------------------------------------------------------------- where it is used

@pytest.fixture
def backend_cython():
    with fastnorm.use_backend("cython"):
        yield


@pytest.fixture
def copies(monkeypatch):
    """Counts the calls of the compiled copy."""
    calls = []
    original = _runtime().to_c_order
    monkeypatch.setattr(_runtime(), "to_c_order",
                        lambda *a: (calls.append(a[0].shape), original(*a))[1])
    return calls


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_aligned_contiguous_reorders_large_arrays_through_the_kernel(dtype, copies, rng):
    x = rng.standard_normal((300, 70)).astype(dtype)
    x3 = x.reshape(30, 10, 70)
    for source, order in ((np.asfortranarray(x), "C"), (x, "F"), (np.asfortranarray(x3), "C"),
                          (x3.swapaxes(1, 2), "C"), (x3.transpose(0, 2, 1)[:, ::2], "C"),
                          (x3.transpose(2, 0, 1), "C")):
        result = aligned_contiguous(source, order=order)
        assert result.flags.c_contiguous if order == "C" else result.flags.f_contiguous
        assert not np.shares_memory(result, source) and result.dtype == dtype
        np.testing.assert_array_equal(result, source)
    assert len(copies) == 5  # (the sliced one has no axis of unit stride: NumPy copies it)
    copies.clear()
    aligned_contiguous(np.asfortranarray(x[:100, :50]))  # 5000 elements: NumPy's copy
    aligned_contiguous(x[:, ::2])                        # neither order: NumPy's copy
    assert copies == []


def test_float16_is_reordered_before_it_is_widened(copies, rng):
    x = rng.standard_normal((300, 70)).astype(np.float16)
    result = aligned_contiguous(np.asfortranarray(x), np.float32)
    assert result.flags.c_contiguous and result.dtype == np.float32
    np.testing.assert_array_equal(result, x.astype(np.float32))
    assert copies == [(300, 70)]


@pytest.mark.parametrize("dtype", FLOATS)
def test_the_families_give_the_same_bits_for_fortran_order_input(dtype, copies, rng):
    """Large Fortran-order inputs go through the compiled copy and come out as their C-order
    twins do."""
    x = (3 + rng.standard_normal((400, 96))).astype(dtype)
    g = rng.standard_normal((400, 96)).astype(dtype)
    w = rng.standard_normal(96).astype(dtype)
    xf, gf = np.asfortranarray(x), np.asfortranarray(g)

    def same(a, b):
        for u, v in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)):
            if u is None:
                assert v is None
            else:
                assert u.shape == v.shape and u.dtype == v.dtype
                assert np.ascontiguousarray(u).tobytes() == np.ascontiguousarray(v).tobytes()

    # (layer and RMS norm read a Fortran-order x in place: test_layer_norm_reads_fortran_order_in_place)
    same(fastnorm.group_norm(xf, 8, w, w), fastnorm.group_norm(x, 8, w, w))
    # elementwise maps run in whichever order their inputs share; mixed orders are copied
    same(fastnorm.silu_backward(g, xf), fastnorm.silu_backward(g, x))
    (yf, mask_f), (y, mask) = fastnorm.dropout(xf, 0.3, seed=5), fastnorm.dropout(x, 0.3, seed=5)
    same(yf, y)
    assert mask_f.packed.tobytes() == mask.packed.tobytes()
    assert copies, "the compiled copy was not used"


def _close(a, b, dtype):
    tol = {np.float16: 1e-3, np.float32: 1e-6, np.float64: 1e-13}[dtype]
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("shape,channels_last", [((400, 96), False), ((30, 12, 7, 5), False),
                                                 ((30, 7, 5, 12), True), ((3, 5), False)])
def test_batch_norm_reads_fortran_order_in_place(shape, channels_last, dtype, copies, backend_cython,
                                                  rng):
    """A Fortran-order x is read as x.T (no copy into C order), y and grad_x come out in its
    layout, with the C-order call's values (summed in another order: not always its bits;
    float32 parameter gradients of the two orders agree within a few float roundings of the
    sum of their terms' magnitudes, as the float stretches of the dual sums give them)."""
    c = shape[-1] if channels_last else shape[1]
    x = (3 + rng.standard_normal(shape)).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    w, b = rng.standard_normal(c).astype(dtype), rng.standard_normal(c).astype(dtype)
    xf, gf = np.asfortranarray(x), np.asfortranarray(g)
    rm, rv = np.zeros(c, dtype), np.ones(c, dtype)
    rm_f, rv_f = rm.copy(), rv.copy()
    y, mean, rstd = fastnorm.batch_norm(x, w, b, rm, rv, channels_last=channels_last)
    yf, mean_f, rstd_f = fastnorm.batch_norm(xf, w, b, rm_f, rv_f, channels_last=channels_last)
    assert yf.flags.f_contiguous and yf.dtype == dtype
    for u, v in ((yf, y), (mean_f, mean), (rstd_f, rstd), (rm_f, rm), (rv_f, rv)):
        _close(u, v, dtype)
    for out in (np.empty(shape, dtype), np.empty(shape, dtype, order="F")):
        assert fastnorm.batch_norm(xf, w, b, channels_last=channels_last, out=out)[0] is out
        _close(out, y, dtype)
    y_eval = fastnorm.batch_norm(x, w, b, rm, rv, training=False, channels_last=channels_last)[0]
    y_eval_f = fastnorm.batch_norm(xf, w, b, rm, rv, training=False, channels_last=channels_last)[0]
    assert y_eval_f.flags.f_contiguous
    _close(y_eval_f, y_eval, dtype)
    in_place = xf.copy(order="F")
    assert fastnorm.batch_norm(in_place, w, b, channels_last=channels_last, out=in_place)[0] is in_place
    _close(in_place, y, dtype)
    strided = np.zeros(shape[:-1] + (2 * shape[-1],), dtype)
    strided[..., ::2] = g
    grads = fastnorm.batch_norm_backward(g, x, w, mean, rstd, channels_last=channels_last, bias=b)
    cax = len(shape) - 1 if channels_last else 1
    per_channel = [c if i == cax else 1 for i in range(len(shape))]
    others = tuple(i for i in range(len(shape)) if i != cax)
    xhat = (x.astype(np.float64) - mean.reshape(per_channel)) * rstd.reshape(per_channel)
    magnitudes = (None, np.abs(g * xhat).sum(axis=others), np.abs(g).sum(axis=others))
    for grad_output in (gf, g, strided[..., ::2]):  # the others are copied into x's layout
        grads_f = fastnorm.batch_norm_backward(grad_output, xf, w, mean, rstd,
                                               channels_last=channels_last, bias=b)
        assert grads_f[0].flags.f_contiguous and grads_f[0].dtype == dtype
        for u, v, magnitude in zip(grads_f, grads, magnitudes):
            if magnitude is None or dtype != np.float32:
                _close(u, v, dtype)
            else:
                assert (np.abs(u.astype(np.float64) - v) <= 1e-6 + 3e-6 * magnitude).all()
    x_copies = [s for s in copies if s in (shape, shape[::-1])]
    assert len(x_copies) == (1 if x.size >= _arrays._REORDER_MIN else 0), copies  # g's, once


@pytest.fixture
def column_calls(monkeypatch):
    """Records (name, arguments) of every call of the column kernels of layer and RMS norm
    (Fortran-order x)."""
    calls = []
    ext = _config.extension("normalization")
    for name in ("cols_forward", "cols_backward"):
        original = getattr(ext, name)
        monkeypatch.setattr(ext, name, lambda *a, _o=original, _n=name: (calls.append((_n, a)), _o(*a))[1])
    return calls


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("shape,nk", [((400, 96), 1), ((100, 6, 8), 2), ((20, 5, 64), 1),
                                      ((2000, 3), 1), ((16, 2), 1)])
def test_layer_norm_reads_fortran_order_in_place(shape, nk, dtype, column_calls, monkeypatch,
                                                 backend_cython, rng):
    """A Fortran-order x with at least 16 rows is read as x.T (no copy into C order), by the
    C-level fast path (2-D float32 / float64, one normalized axis) or the general path, with
    the same bits: y and grad_x come out in x's layout, mean, rstd and the parameter
    gradients in C order, all with the C-order call's values (summed in another order: not
    always its bits; in float32 the row sums of C order and the column sums of x.T each carry
    float roundings of their own -- float stretches along the rows, float visits of four rows
    of x.T without a weight, float terms of four rows in C order's parameter gradients, where
    the columns' are float64 -- so grad_x and the parameter gradients agree to within float32
    roundings of the terms' magnitudes, as batch norm's above)."""
    ext, fast = _config.extension("normalization"), []
    for name, x_at in (("rows_forward_fast", 0), ("rows_backward_fast", 1)):
        def spy(*a, _o=getattr(ext, name), _n=name, _x=x_at):
            result = _o(*a)
            if a[_x].flags.f_contiguous and not a[_x].flags.c_contiguous:
                fast.append((_n, result is not None))
            return result
        monkeypatch.setattr(ext, name, spy)
    ns = shape[len(shape) - nk:]
    x = (3 + rng.standard_normal(shape)).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    w, b = rng.standard_normal(ns).astype(dtype), rng.standard_normal(ns).astype(dtype)
    xf, gf = np.asfortranarray(x), np.asfortranarray(g)
    general_eps = np.float64(1e-5)  # not an exact float: the fast paths leave the call
    for weight, bias in ((w, b), (None, None), (w, None), (None, b)):
        column_calls.clear()
        fast.clear()
        y, mean, rstd = fastnorm.layer_norm(x, ns, weight, bias)
        yf, mean_f, rstd_f = fastnorm.layer_norm(xf, ns, weight, bias)
        assert yf.flags.f_contiguous and yf.dtype == dtype
        for u, v in ((yf, y), (mean_f, mean), (rstd_f, rstd)):
            assert u.shape == v.shape and u.dtype == v.dtype and (u is yf or u.flags.c_contiguous)
            _close(u, v, dtype)
        for u, v in zip(fastnorm.layer_norm(xf, ns, weight, bias, eps=general_eps), (yf, mean_f, rstd_f)):
            assert u.flags.f_contiguous == v.flags.f_contiguous and u.tobytes("A") == v.tobytes("A")
        grads = fastnorm.layer_norm_backward(g, x, ns, weight, mean, rstd, bias=bias)
        lead = tuple(range(len(shape) - nk))
        xhat = ((x.astype(np.float64) - mean.reshape(mean.shape + (1,) * nk))
                * rstd.reshape(rstd.shape + (1,) * nk))
        # grad_x = rstd * (gw - mean(gw) - xhat * mean(gw * xhat)) per row, gw = g * weight
        gw = g.astype(np.float64) * (1 if weight is None else weight)
        rows = tuple(range(len(shape) - nk, len(shape)))
        magnitudes = (rstd.reshape(rstd.shape + (1,) * nk)
                      * (np.abs(gw) + np.abs(gw).mean(axis=rows, keepdims=True)
                         + np.abs(xhat) * np.abs(gw * xhat).mean(axis=rows, keepdims=True)),
                      np.abs(g * xhat).sum(axis=lead), np.abs(g.astype(np.float64)).sum(axis=lead))
        for grad_output in (gf, g):  # g is copied into x's layout (by the general path)
            grads_f = fastnorm.layer_norm_backward(grad_output, xf, ns, weight, mean, rstd, bias=bias)
            assert grads_f[0].flags.f_contiguous and grads_f[0].dtype == dtype
            for u, v, magnitude in zip(grads_f, grads, magnitudes):
                assert (u is None) == (v is None)
                if u is not None:
                    assert u.shape == v.shape and u.dtype == v.dtype
                    assert u is grads_f[0] or u.flags.c_contiguous
                    if magnitude is None or dtype != np.float32:
                        _close(u, v, dtype)
                    else:
                        assert (np.abs(u.astype(np.float64) - v) <= 1e-6 + 3e-6 * magnitude).all()
            if grad_output is gf:
                grads_ff = grads_f
            else:  # the general path's bits are the fast path's
                for u, v in zip(grads_f, grads_ff):
                    assert (u is None and v is None) or u.tobytes("A") == v.tobytes("A")
        y, rstd = fastnorm.rms_norm(x, ns, weight)
        yf, rstd_f = fastnorm.rms_norm(xf, ns, weight)
        assert yf.flags.f_contiguous
        _close(yf, y, dtype)
        _close(rstd_f, rstd, dtype)
        for u, v in zip(fastnorm.rms_norm(xf, ns, weight, eps=np.float64(np.finfo(np.float32 if dtype != np.float64 else dtype).eps)), (yf, rstd_f)):
            assert u.tobytes("A") == v.tobytes("A")
        for u, v in zip(fastnorm.rms_norm_backward(gf, xf, ns, weight, rstd),
                        fastnorm.rms_norm_backward(g, x, ns, weight, rstd)):
            assert (u is None) == (v is None)
            if u is not None:
                assert u.shape == v.shape and u.dtype == v.dtype
                _close(u, v, dtype)
        taken = [name for name, result in fast if result]
        if len(shape) == 2 and dtype != np.float16:  # all but the eps= calls and a C-order g
            assert taken == ["rows_forward_fast", "rows_backward_fast", "rows_forward_fast",
                             "rows_backward_fast"]
        else:
            assert taken == []
        calls = [name for name, _ in column_calls]
        assert calls.count("cols_forward") == (2 if taken else 4) and "cols_backward" in calls
        if dtype != np.float16:  # (float16 is converted to float32 first)
            for name, args in column_calls:  # x read where it lies: (dy, x) or (x)
                assert np.shares_memory(args[1] if name == "cols_backward" else args[0], xf)
    y = fastnorm.layer_norm(x, ns, w, b)[0]
    out = np.empty(shape, dtype, order="F")
    assert fastnorm.layer_norm(xf, ns, w, b, out=out)[0] is out
    _close(out, y, dtype)
    in_place = xf.copy(order="F")
    assert fastnorm.layer_norm(in_place, ns, w, b, out=in_place)[0] is in_place
    _close(in_place, y, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layer_norm_of_other_fortran_order_calls_copies(dtype, column_calls, backend_cython, rng):
    """Below 16 rows, for rows of one element, and with a C-order out=, a Fortran-order x is
    copied into C order and takes the C-order kernels: their bits in every output, y and
    grad_x (without out=) copied back into x's layout."""
    for shape, out_order in (((15, 800), None), ((3, 5, 40), None), ((20, 10, 1), None),
                             ((400, 96), "C")):
        ns = shape[-1]
        x = (3 + rng.standard_normal(shape)).astype(dtype)
        g = rng.standard_normal(shape).astype(dtype)
        w = rng.standard_normal(ns).astype(dtype)
        xf, gf = np.asfortranarray(x), np.asfortranarray(g)
        out = None if out_order is None else np.empty(shape, dtype, order=out_order)
        y, mean, rstd = fastnorm.layer_norm(x, ns, w, w)
        yf, mean_f, rstd_f = fastnorm.layer_norm(xf, ns, w, w, out=out)
        assert yf is out if out is not None else yf.flags.f_contiguous
        for u, v in ((yf, y), (mean_f, mean), (rstd_f, rstd)):
            assert u.tobytes("C") == v.tobytes("C")
        if out is None:
            grads_f = fastnorm.layer_norm_backward(gf, xf, ns, w, mean, rstd, bias=w)
            assert grads_f[0].flags.f_contiguous
            for u, v in zip(grads_f, fastnorm.layer_norm_backward(g, x, ns, w, mean, rstd, bias=w)):
                assert u.tobytes("C") == v.tobytes("C")
            y, rstd = fastnorm.rms_norm(x, ns, w)
            for u, v in zip(fastnorm.rms_norm(xf, ns, w), (y, rstd)):
                assert u.tobytes("C") == v.tobytes("C")
    assert column_calls == []


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layer_norm_of_fortran_order_matches_the_oracle_and_threads(dtype, column_calls,
                                                                     backend_cython, rng):
    """The column kernels (through the fast path) against the NumPy reference, rows with a NaN, an infinity, a
    constant and a large offset included (the parameter gradients, which sum over all rows,
    on the finite rows alone), and with the same bits at 1 and 2 threads (each row's sums
    are split by the shape alone)."""
    from fastnorm import reference
    x = rng.standard_normal((300, 160)).astype(dtype)
    x[3, 7], x[5, 0], x[9] = np.nan, np.inf, 2.5
    x[11] += 1e4
    finite = np.isfinite(x).all(axis=1)
    g = rng.standard_normal(x.shape).astype(dtype)
    w, b = rng.standard_normal(160).astype(dtype), rng.standard_normal(160).astype(dtype)
    tol = 1e-4 if dtype == np.float32 else 1e-10

    def run(x, g):
        xf, gf = np.asfortranarray(x), np.asfortranarray(g)
        y, mean, rstd = fastnorm.layer_norm(xf, 160, w, b)
        y_rms, rstd_rms = fastnorm.rms_norm(xf, 160, w)
        return ((y, mean, rstd) + fastnorm.layer_norm_backward(gf, xf, 160, w, mean, rstd, bias=b)
                + (y_rms, rstd_rms) + fastnorm.rms_norm_backward(gf, xf, 160, w, rstd_rms))

    fastnorm.set_num_threads(1)
    try:
        one = run(x, g)
        fastnorm.set_num_threads(2)
        two = run(x, g)
    finally:
        fastnorm.set_num_threads(None)
    for u, v in zip(one, two):
        assert u.tobytes() == v.tobytes()
    y, mean, rstd, gx, _, _, y_rms, rstd_rms, gx_rms, _ = one
    for u, v in zip((y, mean, rstd), reference.layer_norm(x, (160,), w, b)):
        np.testing.assert_allclose(u, v, rtol=tol, atol=tol)
    assert np.isnan(y[~finite]).all() and np.isfinite(y[finite]).all()
    np.testing.assert_array_equal(y[9], b)  # a constant row: (x - mean) * rstd is 0
    expected = reference.layer_norm_backward(g, x, (160,), w, mean, rstd, bias=b)[0]
    np.testing.assert_allclose(gx, expected, rtol=10 * tol, atol=10 * tol)
    for u, v in zip((y_rms, rstd_rms), reference.rms_norm(x, (160,), w)):
        np.testing.assert_allclose(u, v, rtol=tol, atol=tol)
    expected = reference.rms_norm_backward(g, x, (160,), w, rstd_rms)[0]
    np.testing.assert_allclose(gx_rms, expected, rtol=10 * tol, atol=10 * tol)
    xc, gc = x[finite], g[finite]  # the parameter gradients over the finite rows
    clean = run(xc, gc)
    expected = reference.layer_norm_backward(gc, xc, (160,), w, clean[1], clean[2], bias=b)
    for u, v in zip(clean[3:6], expected):
        np.testing.assert_allclose(u, v, rtol=10 * tol, atol=10 * tol)
    expected = reference.rms_norm_backward(gc, xc, (160,), w, clean[7])
    for u, v in zip(clean[8:], expected):
        np.testing.assert_allclose(u, v, rtol=10 * tol, atol=10 * tol)
    assert one[0].flags.f_contiguous and one[3].flags.f_contiguous and column_calls == []  # (fast path)


@given(lead=st.lists(st.integers(1, 40), min_size=1, max_size=3).map(tuple),
       norm=st.lists(st.integers(1, 9), min_size=1, max_size=2).map(tuple),
       dtype=st.sampled_from([np.float32, np.float64]), affine=st.sampled_from(["wb", "w", "b", ""]),
       offset=st.sampled_from([0.0, 3.0, -1e3]), threads=st.integers(1, 2),
       seed=st.integers(0, 2**32 - 1))
def test_layer_norm_of_fortran_order_against_the_oracle(lead, norm, dtype, affine, offset, threads,
                                                        seed):
    """Any Fortran-order x, whichever way it is read (as x.T from 16 rows with rows of two
    elements or more, else copied), against fastnorm.reference: layer and RMS norm, forward
    and backward, y and grad_x in x's layout."""
    rng = np.random.default_rng(seed)
    shape, ns = lead + norm, norm
    x = np.asfortranarray((offset + rng.standard_normal(shape)).astype(dtype))
    g = np.asfortranarray(rng.standard_normal(shape).astype(dtype))
    w = rng.standard_normal(ns).astype(dtype) if "w" in affine else None
    b = rng.standard_normal(ns).astype(dtype) if "b" in affine else None
    tol = 2e-4 if dtype == np.float32 else 1e-10
    fastnorm.set_num_threads(threads)
    try:
        y, mean, rstd = fastnorm.layer_norm(x, ns, w, b)
        grads = fastnorm.layer_norm_backward(g, x, ns, w, mean, rstd, bias=b)
        y_rms, rstd_rms = fastnorm.rms_norm(x, ns, w)
        grads_rms = fastnorm.rms_norm_backward(g, x, ns, w, rstd_rms)
    finally:
        fastnorm.set_num_threads(None)
    layout = x.flags.f_contiguous
    assert y.flags.f_contiguous == layout and grads[0].flags.f_contiguous == layout
    pairs = list(zip((y, mean, rstd), fastnorm.reference.layer_norm(x, ns, w, b)))
    pairs += zip(grads, fastnorm.reference.layer_norm_backward(g, x, ns, w, mean, rstd, bias=b))
    pairs += zip((y_rms, rstd_rms), fastnorm.reference.rms_norm(x, ns, w))
    pairs += zip(grads_rms, fastnorm.reference.rms_norm_backward(g, x, ns, w, rstd_rms))
    # (rows of one element have variance 0 and rstd 1 / sqrt(eps): their gradients are
    # rounding errors amplified by it)
    rs = max(1.0, float(np.abs(rstd).max(initial=0.0)), float(np.abs(rstd_rms).max(initial=0.0)))
    for u, v in pairs:
        assert (u is None) == (v is None)
        if u is not None:
            assert u.shape == v.shape and u.dtype == v.dtype
            scale = max(rs, float(np.abs(v).max(initial=0.0)))
            np.testing.assert_allclose(u, v, rtol=tol, atol=tol * scale)


def test_fortran_order_fast_path_turns(backend_cython, rng):
    """The C-level fast path of a 2-D Fortran-order x: from 16 rows it reads x.T, into a
    Fortran-order out= (a C-order one, or one that shares the weight's memory, is left to the
    general path); below 16 rows it copies small arrays only (larger ones are left to the
    general path's block transposes)."""
    ext = _config.extension("normalization")
    grain = fastnorm.normalization._GRAIN
    x = np.asfortranarray(rng.standard_normal((40, 96)).astype(np.float32))
    w = rng.standard_normal(96).astype(np.float32)
    expected = fastnorm.layer_norm(x, 96, w, w, eps=np.float64(1e-5))[0]  # (the general path)
    out = np.empty(x.shape, np.float32, order="F")
    assert ext.rows_forward_fast(x, 96, w, w, 1e-5, False, out, grain)[0] is out
    assert out.tobytes("A") == expected.tobytes("A")
    assert ext.rows_forward_fast(x, 96, w, w, 1e-5, False, np.empty(x.shape, np.float32), grain) is None
    both = np.empty(40 * 96 + 96, np.float32)
    aliased = both[96:].reshape(96, 40).T  # a Fortran-order out whose first bytes follow w...
    assert ext.rows_forward_fast(x, 96, both[:96], None, 1e-5, False, aliased, grain) is not None
    assert ext.rows_forward_fast(x, 96, both[96:192], None, 1e-5, False, aliased, grain) is None
    y, rstd = fastnorm.rms_norm(x, 96, w)
    out_rms = np.empty(x.shape, np.float32, order="F")
    assert fastnorm.rms_norm(x, 96, w, out=out_rms)[0] is out_rms
    assert out_rms.tobytes("A") == y.tobytes("A")
    small, large = (np.asfortranarray(rng.standard_normal(s).astype(np.float32)) for s in ((8, 768), (8, 2000)))
    assert ext.rows_forward_fast(small, 768, None, None, 1e-5, False, None, grain) is not None
    assert ext.rows_forward_fast(large, 2000, None, None, 1e-5, False, None, grain) is None
    _, mean, rstd = fastnorm.layer_norm(large, 2000)
    assert ext.rows_backward_fast(large, large, 2000, None, mean, rstd, None, False, grain) is None
    y = fastnorm.layer_norm(large, 2000)[0]  # by block transposes, y copied back
    assert y.flags.f_contiguous
    assert y.tobytes("C") == fastnorm.layer_norm(np.ascontiguousarray(large), 2000)[0].tobytes("C")


def test_fortran_order_general_path_threads(backend_cython, rng):
    """A Fortran-order x the fast path leaves to the general path (3-D) gives the same bits at
    1 and 2 threads."""
    x = np.asfortranarray(rng.standard_normal((40, 30, 50)).astype(np.float32))
    g = np.asfortranarray(rng.standard_normal(x.shape).astype(np.float32))
    w = rng.standard_normal(50).astype(np.float32)
    results = []
    for n in (1, 2):
        fastnorm.set_num_threads(n)
        try:
            y, mean, rstd = fastnorm.layer_norm(x, 50, w, w)
            results.append((y, mean, rstd) + fastnorm.layer_norm_backward(g, x, 50, w, mean, rstd, bias=w)
                           + fastnorm.rms_norm(x, 50, w))
        finally:
            fastnorm.set_num_threads(None)
    for u, v in zip(*results):
        assert u.tobytes("A") == v.tobytes("A")
    assert results[0][0].flags.f_contiguous and results[0][3].flags.f_contiguous
