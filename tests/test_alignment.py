"""Arrays whose data is misaligned for their dtype (np.frombuffer at an odd offset: C-contiguous,
yet flags.aligned is False).  The compiled fast paths refuse them; the general path must then
hand the kernels aligned copies (a misaligned T* is undefined behaviour in C) and write a
misaligned out= or running statistic through NumPy.  For each function family: every kernel
call sees only aligned arrays, the results are the same bits as with aligned copies of the
same values, a misaligned out= receives the result, misaligned running statistics are updated
as aligned ones are, and no input changes."""
import numpy as np
import pytest

import fastnorm
from fastnorm import _config
from fastnorm._arrays import aligned_contiguous

from _placement import misaligned_copy

F32, F64 = np.dtype(np.float32), np.dtype(np.float64)
# Arguments that a kernel receives only to compare its address with the buffer it writes:
# dropout's forward and backward get the caller's out= to know whether their result goes to
# the caller.
_ADDRESS_ONLY = {("dropout", "forward"): 9, ("dropout", "backward"): 5}


def _offsets(dtype):
    itemsize = np.dtype(dtype).itemsize
    return sorted({1, itemsize // 2, itemsize - 1})


DTYPE_OFFSETS = [(dtype, offset) for dtype in (F32, F64) for offset in _offsets(dtype)]


def _bits(result):
    """result (an array, a DropoutMask, None or a tuple of these) as comparable bytes."""
    if isinstance(result, tuple):
        return tuple(_bits(r) for r in result)
    if result is None:
        return None
    if isinstance(result, fastnorm.DropoutMask):
        return ("mask", result.shape, result.packed.tobytes())
    return (result.dtype.str, result.shape, result.tobytes())


class _AlignmentCheckedModule:
    """A compiled kernel module whose kernel functions record the arrays they receive that
    are not aligned.  The *_fast and dispatch_* entry points are exempt: they check
    alignment themselves (fastnorm/_ext/_shared.pxd's plain) and refuse such arrays."""

    def __init__(self, family, module, recorder):
        self._family, self._module, self._recorder = family, module, recorder

    def __getattr__(self, name):
        attr = getattr(self._module, name)
        if not callable(attr) or name.endswith("_fast") or name.startswith("dispatch_"):
            return attr
        key = (self._family, name)

        def checked(*args, **kwargs):
            self._recorder.calls.append(key)
            for where, a in [*enumerate(args), *kwargs.items()]:
                if (isinstance(a, np.ndarray) and not a.flags.aligned
                        and _ADDRESS_ONLY.get(key) != where):
                    self._recorder.misaligned.append((key, where, a.dtype.str, a.ctypes.data))
            return attr(*args, **kwargs)
        return checked


class _Recorder:
    def __init__(self):
        self.calls, self.misaligned = [], []


@pytest.fixture
def kernel_calls(monkeypatch):
    """Records every kernel call of the Python layer (and the misaligned arrays among its
    arguments) while the test runs."""
    recorder = _Recorder()
    extension = _config.extension

    def checked_extension(family):
        module = extension(family)
        return None if module is None else _AlignmentCheckedModule(family, module, recorder)

    monkeypatch.setattr(_config, "extension", checked_extension)
    return recorder


def _data(rng, dtype):
    x = (rng.standard_normal((64, 100)) * 2 + 0.5).astype(dtype)
    g = rng.standard_normal((64, 100)).astype(dtype)
    return x, g


def _images(rng, dtype):
    """(N, C, H, W) input and gradient for group and instance norm."""
    x = (rng.standard_normal((8, 16, 10, 10)) * 2 + 0.5).astype(dtype)
    g = rng.standard_normal(x.shape).astype(dtype)
    return x, g


def _channels(rng, dtype, c):
    w = (rng.standard_normal(c) + 1).astype(dtype)
    b = rng.standard_normal(c).astype(dtype)
    rm = rng.standard_normal(c).astype(dtype)
    rv = (rng.random(c) + 0.5).astype(dtype)
    return w, b, rm, rv


def check_misaligned_calls(call, arrays, kernel_calls, offset, *, updated=(), out_like=None):
    """call(**arrays) with each array in turn, then all of them, as misaligned copies (and
    with a misaligned out= where out_like names the argument whose shape out has) gives the
    bits of the call with aligned arrays; `updated` names the arrays written in place
    (running statistics), which must end as the aligned call leaves them; the others, and
    everything else passed, must not change."""
    aligned = {name: a.copy() for name, a in arrays.items()}
    expected = call(**aligned)
    expected_bits = _bits(expected)
    expected_state = {name: aligned[name].tobytes() for name in updated}
    assert all(expected_state[name] != arrays[name].tobytes() for name in updated), "no update to compare"

    def assert_only_updates_written(given, before, where):
        for name, a in given.items():
            assert a.tobytes() == (expected_state[name] if name in updated else before[name]), (where, name)

    variants = [(name,) for name in arrays] + [tuple(arrays)]
    for misaligned_names in variants:
        given = {name: (misaligned_copy(a, offset) if name in misaligned_names else a.copy())
                 for name, a in arrays.items()}
        before = {name: a.tobytes() for name, a in given.items()}
        result = call(**given)
        where = (call.__name__, misaligned_names, given[misaligned_names[0]].dtype.str, offset)
        assert _bits(result) == expected_bits, where
        assert_only_updates_written(given, before, where)
    if out_like is not None:
        y_expected = expected[0] if isinstance(expected, tuple) else expected
        given = {name: misaligned_copy(a, offset) for name, a in arrays.items()}
        before = {name: a.tobytes() for name, a in given.items()}
        out = misaligned_copy(np.full_like(given[out_like], np.nan), offset)
        result = call(**given, out=out)
        y = result[0] if isinstance(result, tuple) else result
        where = (call.__name__, "out", out.dtype.str, offset)
        assert y is out, where
        assert out.tobytes() == y_expected.tobytes(), where
        if isinstance(result, tuple):
            assert _bits(result[1:]) == expected_bits[1:], where
        assert_only_updates_written(given, before, where)
    assert kernel_calls.misaligned == [], kernel_calls.misaligned
    if _config.backend() == "cython":
        assert kernel_calls.calls, "no kernel ran: the check above saw nothing"


# ---------------------------------------------------------------------------- the helper

def test_aligned_contiguous_copies_only_what_a_kernel_cannot_take(rng):
    x = rng.standard_normal((6, 10))
    assert aligned_contiguous(x) is x
    assert aligned_contiguous(x, F64) is x
    fortran = np.asfortranarray(x)
    assert aligned_contiguous(fortran, order="F") is fortran
    for source, dtype, order in ((misaligned_copy(x, 4), None, "C"), (x.T, None, "C"),
                                 (misaligned_copy(x, 3).T, None, "F"), (x, F32, "C"),
                                 (x[:, ::2], None, "C")):
        result = aligned_contiguous(source, dtype, order)
        want = source.dtype if dtype is None else dtype
        assert result is not source and not np.shares_memory(result, source)
        assert result.flags.aligned and result.dtype == want
        assert result.flags.c_contiguous if order == "C" else result.flags.f_contiguous
        np.testing.assert_array_equal(result, source.astype(want))


# ---------------------------------------------------------------------------- activations

@pytest.mark.parametrize("dtype,offset", DTYPE_OFFSETS, ids=str)
@pytest.mark.parametrize("name,params", [("relu", {}), ("leaky_relu", {"negative_slope": 0.2}),
                                         ("elu", {"alpha": 1.5}), ("gelu", {}),
                                         ("gelu", {"approximate": "tanh"}), ("sigmoid", {})],
                         ids=lambda v: str(v) if isinstance(v, str) else ",".join(v) or "-")
def test_activation_forward_and_backward(name, params, dtype, offset, backend, rng, kernel_calls):
    x, g = _data(rng, dtype)
    forward, backward = getattr(fastnorm, name), getattr(fastnorm, name + "_backward")
    saved = forward(x, **params) if name == "sigmoid" else x  # sigmoid's backward takes y

    def activation(x, out=None):
        return forward(x, **params, out=out)

    def activation_backward(grad_output, saved, out=None):
        return backward(grad_output, saved, **params, out=out)

    check_misaligned_calls(activation, {"x": x}, kernel_calls, offset, out_like="x")
    check_misaligned_calls(activation_backward, {"grad_output": g, "saved": saved}, kernel_calls,
                           offset, out_like="grad_output")


@pytest.mark.parametrize("dtype,offset", DTYPE_OFFSETS, ids=str)
def test_activation_in_place_and_fortran_order(dtype, offset, backend, rng, kernel_calls):
    x, _ = _data(rng, dtype)
    expected = fastnorm.silu(x)
    x_mis = misaligned_copy(x, offset)
    assert fastnorm.silu(x_mis, out=x_mis) is x_mis
    assert x_mis.tobytes() == expected.tobytes()
    # the transpose of a misaligned C array is a misaligned Fortran-contiguous one
    xt = misaligned_copy(x, offset).T
    out = misaligned_copy(np.zeros_like(x), offset).T
    assert xt.flags.f_contiguous and not xt.flags.aligned
    assert fastnorm.silu(xt, out=out) is out
    assert out.T.tobytes() == expected.tobytes()
    assert fastnorm.silu(xt).tobytes() == np.ascontiguousarray(expected.T).tobytes()
    assert kernel_calls.misaligned == [], kernel_calls.misaligned


# ---------------------------------------------------------------------------- dropout

@pytest.mark.parametrize("dtype,offset", DTYPE_OFFSETS, ids=str)
def test_dropout_forward_and_backward(dtype, offset, backend, rng, kernel_calls):
    x, g = _data(rng, dtype)
    _, mask = fastnorm.dropout(x, 0.3, seed=11)

    def dropout(x, out=None):
        return fastnorm.dropout(x, 0.3, seed=11, out=out)

    def dropout_backward(grad_output, out=None):
        return fastnorm.dropout_backward(grad_output, mask, out=out)

    check_misaligned_calls(dropout, {"x": x}, kernel_calls, offset, out_like="x")
    check_misaligned_calls(dropout_backward, {"grad_output": g}, kernel_calls, offset,
                           out_like="grad_output")


# ---------------------------------------------------------------------------- batch norm

@pytest.mark.parametrize("dtype,offset", DTYPE_OFFSETS, ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["channels_first", "channels_last"])
def test_batch_norm_training_updates_misaligned_running_statistics(channels_last, dtype, offset,
                                                                    backend, rng, kernel_calls):
    x, _ = _data(rng, dtype)
    w, b, rm, rv = _channels(rng, dtype, 100 if channels_last else 64)
    x = x if channels_last else x.T.copy()  # channels on axis 1: (100, 64)

    def batch_norm(x, weight, bias, running_mean, running_var, out=None):
        return fastnorm.batch_norm(x, weight, bias, running_mean, running_var, training=True,
                                   momentum=0.2, channels_last=channels_last, out=out)

    check_misaligned_calls(batch_norm, {"x": x, "weight": w, "bias": b, "running_mean": rm,
                                        "running_var": rv},
                           kernel_calls, offset, updated=("running_mean", "running_var"), out_like="x")


@pytest.mark.parametrize("dtype,offset", DTYPE_OFFSETS, ids=str)
def test_batch_norm_evaluation(dtype, offset, backend, rng, kernel_calls):
    x, _ = _data(rng, dtype)
    w, b, rm, rv = _channels(rng, dtype, 100)

    def batch_norm(x, weight, bias, running_mean, running_var, out=None):
        return fastnorm.batch_norm(x, weight, bias, running_mean, running_var, training=False, out=out)

    check_misaligned_calls(batch_norm, {"x": x, "weight": w, "bias": b, "running_mean": rm,
                                        "running_var": rv}, kernel_calls, offset, out_like="x")


@pytest.mark.parametrize("dtype,offset", DTYPE_OFFSETS, ids=str)
@pytest.mark.parametrize("training", [True, False], ids=["training", "evaluation"])
def test_batch_norm_backward(training, dtype, offset, backend, rng, kernel_calls):
    x, g = _data(rng, dtype)
    w, b, rm, rv = _channels(rng, dtype, 100)
    _, mean, rstd = fastnorm.batch_norm(x, w, b, rm.copy(), rv.copy(), training=training)

    def batch_norm_backward(grad_output, x, weight, mean, rstd, bias):
        return fastnorm.batch_norm_backward(grad_output, x, weight, mean, rstd, training=training,
                                            bias=bias)

    check_misaligned_calls(batch_norm_backward, {"grad_output": g, "x": x, "weight": w,
                                                 "mean": mean, "rstd": rstd, "bias": b},
                           kernel_calls, offset)


# ---------------------------------------------------------------------------- layer / RMS norm

@pytest.mark.parametrize("dtype,offset", DTYPE_OFFSETS, ids=str)
def test_layer_norm_forward_and_backward(dtype, offset, backend, rng, kernel_calls):
    x, g = _data(rng, dtype)
    w, b, _, _ = _channels(rng, dtype, 100)
    _, mean, rstd = fastnorm.layer_norm(x, 100, w, b)

    def layer_norm(x, weight, bias, out=None):
        return fastnorm.layer_norm(x, 100, weight, bias, out=out)

    def layer_norm_backward(grad_output, x, weight, mean, rstd, bias):
        return fastnorm.layer_norm_backward(grad_output, x, 100, weight, mean, rstd, bias=bias)

    check_misaligned_calls(layer_norm, {"x": x, "weight": w, "bias": b}, kernel_calls, offset,
                           out_like="x")
    check_misaligned_calls(layer_norm_backward, {"grad_output": g, "x": x, "weight": w, "mean": mean,
                                                 "rstd": rstd, "bias": b}, kernel_calls, offset)


@pytest.mark.parametrize("dtype,offset", DTYPE_OFFSETS, ids=str)
def test_rms_norm_forward_and_backward(dtype, offset, backend, rng, kernel_calls):
    x, g = _data(rng, dtype)
    w, _, _, _ = _channels(rng, dtype, 100)
    _, rstd = fastnorm.rms_norm(x, 100, w)

    def rms_norm(x, weight, out=None):
        return fastnorm.rms_norm(x, 100, weight, out=out)

    def rms_norm_backward(grad_output, x, weight, rstd):
        return fastnorm.rms_norm_backward(grad_output, x, 100, weight, rstd)

    check_misaligned_calls(rms_norm, {"x": x, "weight": w}, kernel_calls, offset, out_like="x")
    check_misaligned_calls(rms_norm_backward, {"grad_output": g, "x": x, "weight": w, "rstd": rstd},
                           kernel_calls, offset)


# ---------------------------------------------------------------------------- group / instance norm

@pytest.mark.parametrize("dtype,offset", DTYPE_OFFSETS, ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["channels_first", "channels_last"])
def test_group_norm_forward_and_backward(channels_last, dtype, offset, backend, rng, kernel_calls):
    x, g = _images(rng, dtype)
    if channels_last:
        x, g = np.moveaxis(x, 1, -1).copy(), np.moveaxis(g, 1, -1).copy()
    w, b, _, _ = _channels(rng, dtype, 16)
    _, mean, rstd = fastnorm.group_norm(x, 4, w, b, channels_last=channels_last)

    def group_norm(x, weight, bias, out=None):
        return fastnorm.group_norm(x, 4, weight, bias, channels_last=channels_last, out=out)

    def group_norm_backward(grad_output, x, weight, mean, rstd, bias):
        return fastnorm.group_norm_backward(grad_output, x, 4, weight, mean, rstd,
                                            channels_last=channels_last, bias=bias)

    check_misaligned_calls(group_norm, {"x": x, "weight": w, "bias": b}, kernel_calls, offset,
                           out_like="x")
    check_misaligned_calls(group_norm_backward, {"grad_output": g, "x": x, "weight": w, "mean": mean,
                                                 "rstd": rstd, "bias": b}, kernel_calls, offset)


@pytest.mark.parametrize("dtype,offset", DTYPE_OFFSETS, ids=str)
@pytest.mark.parametrize("use_input_stats", [True, False], ids=["input_stats", "running_stats"])
def test_instance_norm_forward_and_backward(use_input_stats, dtype, offset, backend, rng,
                                            kernel_calls):
    x, g = _images(rng, dtype)
    w, b, rm, rv = _channels(rng, dtype, 16)
    _, mean, rstd = fastnorm.instance_norm(x, w, b, rm.copy(), rv.copy(),
                                           use_input_stats=use_input_stats)

    def instance_norm(x, weight, bias, running_mean, running_var, out=None):
        return fastnorm.instance_norm(x, weight, bias, running_mean, running_var, momentum=0.2,
                                      use_input_stats=use_input_stats, out=out)

    def instance_norm_backward(grad_output, x, weight, mean, rstd, bias):
        return fastnorm.instance_norm_backward(grad_output, x, weight, mean, rstd,
                                               use_input_stats=use_input_stats, bias=bias)

    check_misaligned_calls(instance_norm, {"x": x, "weight": w, "bias": b, "running_mean": rm,
                                           "running_var": rv}, kernel_calls, offset,
                           updated=("running_mean", "running_var") if use_input_stats else (),
                           out_like="x")
    check_misaligned_calls(instance_norm_backward, {"grad_output": g, "x": x, "weight": w,
                                                    "mean": mean, "rstd": rstd, "bias": b},
                           kernel_calls, offset)


@pytest.mark.parametrize("dtype,offset", DTYPE_OFFSETS, ids=str)
@pytest.mark.parametrize("axis", [0, 1, (0, 2)], ids=str)
def test_moments(axis, dtype, offset, backend, rng, kernel_calls):
    x = (rng.standard_normal((16, 10, 40)) + 0.5).astype(dtype)

    def moments(x):
        return fastnorm.moments(x, axis)

    check_misaligned_calls(moments, {"x": x}, kernel_calls, offset)
