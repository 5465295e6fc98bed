"""Robustness contract of every public function (issue 7), table-driven.

For each kernel function the table gives a valid call and the role of each array
argument; generic mutations of that call (wrong dtypes, shapes, dtype mismatches,
bad ``out=``, array-likes, layouts, overlapping ``out=``) are derived from it, and
each must either compute the right thing or raise TypeError/ValueError whose message
names the function and the argument.  Every public callable of ``fastnorm.__all__``
must appear in one of the tables (a new function cannot be forgotten).  Inputs are
hashed before and after every call: only ``out=`` and running statistics may change.
"""
import copy
import hashlib
import inspect
import re
import types

import numpy as np
import pytest

import fastnorm
from fastnorm import reference
from fastnorm import layers as L

F16, F32, F64 = np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)
ACTIVATIONS = list(reference._activations.__all__)
_PARAMS = {"leaky_relu": {"negative_slope": 0.2}, "elu": {"alpha": 1.5}, "celu": {"alpha": 0.7},
           "softplus": {"beta": 2.0, "threshold": 10.0}, "gelu": {"approximate": "tanh"}}


def _param_cases(func, **bad):
    """(overrides, exception, regex) for real parameters: NaN, Inf, wrong types."""
    cases = []
    for name, extra in bad.items():
        cases += [({name: float("nan")}, ValueError, f"{func}: {name}"),
                  ({name: float("inf")}, ValueError, f"{func}: {name}"),
                  ({name: "1"}, TypeError, f"{func}: {name}"),
                  *([({name: None}, TypeError, f"{func}: {name}")] if name != "momentum" else []),
                  ({name: np.ones(2)}, TypeError, f"{func}: {name}")]
        cases += [({name: v}, ValueError, f"{func}: {name}") for v in extra]
    return cases


class Spec:
    """A valid call of one function and how its arguments may be broken.

    build(dtype, rng) -> kwargs of a valid call; roles: array argument -> 'x' (the
    primary input), 'same' (x's shape and dtype), 'param' (weight/bias: fixed shape,
    x's dtype), 'stat' (statistics as the forward returned them), 'running' (updated
    in place); cases: extra (overrides, exception, regex) for the other parameters."""

    def __init__(self, name, build, roles, cases=(), out=True, min_ndim=0):
        self.name, self.build, self.roles = name, build, roles
        self.cases, self.out, self.min_ndim = list(cases), out, min_ndim

    @property
    def func(self):
        return getattr(fastnorm, self.name)

    @property
    def oracle(self):
        return getattr(reference, self.name)


def _activation_spec(name):
    params = _PARAMS.get(name.removesuffix("_backward"), {})
    base = name.removesuffix("_backward")
    real = {k: v for k, v in params.items() if k != "approximate"}
    extra = {"celu": {"alpha": [0.0]}, "softplus": {"beta": [0.0]}}.get(base, {})
    bad = {k: extra.get(k, []) for k in real}
    cases = _param_cases(name, **bad)
    if base == "gelu":
        cases.append(({"approximate": "erf"}, ValueError, f"{name}: approximate"))
    if name.endswith("_backward"):
        saved = "y" if base in ("sigmoid", "tanh") else "x"

        def build(dt, rng, saved=saved, params=params):
            return {"grad_output": rng.standard_normal((3, 5)).astype(dt),
                    saved: rng.uniform(-4, 4, (3, 5)).astype(dt), **params}
        return Spec(name, build, {"grad_output": "x", saved: "same"}, cases)

    def build(dt, rng, params=params):
        return {"x": rng.uniform(-4, 4, (3, 5)).astype(dt), **params}
    return Spec(name, build, {"x": "x"}, cases)


def _stats_of(fwd, x, *args, **kw):
    out = fwd(x, *args, **kw)
    return out[1:]


def _bn(dt, rng):
    return {"x": rng.standard_normal((4, 3, 5)).astype(dt), "weight": rng.uniform(0.5, 2, 3).astype(dt),
            "bias": rng.standard_normal(3).astype(dt), "running_mean": np.zeros(3, dt),
            "running_var": np.ones(3, dt), "momentum": 0.1, "eps": 1e-5}


def _bn_backward(dt, rng):
    x = rng.standard_normal((4, 3, 5)).astype(dt)
    mean, rstd = reference.batch_norm(x)[1:]
    return {"grad_output": rng.standard_normal(x.shape).astype(dt), "x": x,
            "weight": rng.uniform(0.5, 2, 3).astype(dt), "mean": mean, "rstd": rstd,
            "bias": np.zeros(3, dt)}


def _ln(dt, rng):
    return {"x": rng.standard_normal((3, 4, 6)).astype(dt), "normalized_shape": (6,),
            "weight": rng.uniform(0.5, 2, 6).astype(dt), "bias": rng.standard_normal(6).astype(dt),
            "eps": 1e-5}


def _ln_backward(dt, rng):
    x = rng.standard_normal((3, 4, 6)).astype(dt)
    mean, rstd = reference.layer_norm(x, 6)[1:]
    return {"grad_output": rng.standard_normal(x.shape).astype(dt), "x": x, "normalized_shape": 6,
            "weight": rng.uniform(0.5, 2, 6).astype(dt), "mean": mean, "rstd": rstd,
            "bias": np.zeros(6, dt)}


def _rms(dt, rng):
    return {"x": rng.standard_normal((3, 4, 6)).astype(dt), "normalized_shape": 6,
            "weight": rng.uniform(0.5, 2, 6).astype(dt), "eps": 1e-6}


def _rms_backward(dt, rng):
    x = rng.standard_normal((3, 4, 6)).astype(dt)
    return {"grad_output": rng.standard_normal(x.shape).astype(dt), "x": x, "normalized_shape": 6,
            "weight": rng.uniform(0.5, 2, 6).astype(dt), "rstd": reference.rms_norm(x, 6)[1]}


def _gn(dt, rng):
    return {"x": rng.standard_normal((2, 6, 5)).astype(dt), "num_groups": 3,
            "weight": rng.uniform(0.5, 2, 6).astype(dt), "bias": rng.standard_normal(6).astype(dt),
            "eps": 1e-5}


def _gn_backward(dt, rng):
    x = rng.standard_normal((2, 6, 5)).astype(dt)
    mean, rstd = reference.group_norm(x, 3)[1:]
    return {"grad_output": rng.standard_normal(x.shape).astype(dt), "x": x, "num_groups": 3,
            "weight": rng.uniform(0.5, 2, 6).astype(dt), "mean": mean, "rstd": rstd,
            "bias": np.zeros(6, dt)}


def _in(dt, rng):
    return {"x": rng.standard_normal((2, 3, 5)).astype(dt), "weight": rng.uniform(0.5, 2, 3).astype(dt),
            "bias": rng.standard_normal(3).astype(dt), "running_mean": np.zeros(3, dt),
            "running_var": np.ones(3, dt), "momentum": 0.1, "eps": 1e-5}


def _in_backward(dt, rng):
    x = rng.standard_normal((2, 3, 5)).astype(dt)
    mean, rstd = reference.instance_norm(x)[1:]
    return {"grad_output": rng.standard_normal(x.shape).astype(dt), "x": x,
            "weight": rng.uniform(0.5, 2, 3).astype(dt), "mean": mean, "rstd": rstd,
            "bias": np.zeros(3, dt)}


def _moments(dt, rng):
    return {"x": rng.standard_normal((3, 4, 5)).astype(dt), "axis": (0, 2), "ddof": 1}


def _dropout(dt, rng):
    return {"x": rng.standard_normal((3, 37)).astype(dt), "p": 0.3, "seed": 7, "offset": 5}


def _dropout_backward(dt, rng):
    g = rng.standard_normal((3, 37)).astype(dt)
    return {"grad_output": g, "mask": reference.dropout(g, 0.3, seed=7)[1]}


_EPS = [-1e-3]
_NORM_ROLES = {"x": "x", "weight": "param", "bias": "param"}
_BACKWARD_ROLES = {"grad_output": "x", "x": "same", "weight": "param", "mean": "stat", "rstd": "stat",
                   "bias": "param"}
SPECS = [_activation_spec(n) for n in ACTIVATIONS] + [
    Spec("moments", _moments, {"x": "x"}, out=False, cases=[
        ({"axis": 3}, ValueError, "moments: axis"), ({"axis": (0, 0)}, ValueError, "moments: axis"),
        ({"axis": 1.5}, TypeError, "moments: axis"), ({"ddof": -1}, ValueError, "moments: ddof"),
        ({"ddof": 1.0}, TypeError, "moments: ddof")]),
    Spec("batch_norm", _bn, {**_NORM_ROLES, "running_mean": "running", "running_var": "running"},
         min_ndim=2, cases=_param_cases("batch_norm", eps=_EPS, momentum=[]) + [
             ({"x": np.ones(3, F32)}, ValueError, "batch_norm: x"),
             ({"x": np.ones((1, 3), F32)}, ValueError, "batch_norm: expected more than 1 value"),
             ({"running_var": None}, ValueError, "batch_norm: running_mean and running_var"),
             ({"running_mean": [0.0] * 3}, TypeError, "batch_norm: running_mean"),
             ({"training": 1}, TypeError, "batch_norm: training"),
             ({"channels_last": "no"}, TypeError, "batch_norm: channels_last"),
             ({"momentum": None}, ValueError, "batch_norm: momentum=None"),
             ({"momentum": None, "num_batches_tracked": 0}, ValueError, "batch_norm: num_batches_tracked"),
             ({"training": False, "running_mean": None, "running_var": None}, ValueError,
              "batch_norm: running_mean and running_var are required")]),
    Spec("batch_norm_backward", _bn_backward, _BACKWARD_ROLES, out=False, min_ndim=2, cases=[
        ({"training": "yes"}, TypeError, "batch_norm_backward: training")]),
    Spec("layer_norm", _ln, _NORM_ROLES, min_ndim=1, cases=_param_cases("layer_norm", eps=_EPS) + [
        ({"normalized_shape": 5}, ValueError, "layer_norm: normalized_shape"),
        ({"normalized_shape": ()}, ValueError, "layer_norm: normalized_shape"),
        ({"normalized_shape": (1, 3, 4, 6)}, ValueError, "layer_norm: normalized_shape"),
        ({"normalized_shape": 6.0}, TypeError, "layer_norm: normalized_shape"),
        ({"normalized_shape": "6"}, TypeError, "layer_norm: normalized_shape")]),
    Spec("layer_norm_backward", _ln_backward, _BACKWARD_ROLES, out=False, min_ndim=1, cases=[
        ({"normalized_shape": (4, 6)}, ValueError, "layer_norm_backward: (normalized_shape|weight)")]),
    Spec("rms_norm", _rms, {"x": "x", "weight": "param"}, min_ndim=1,
         cases=_param_cases("rms_norm", eps=_EPS)[:1] + [
             ({"normalized_shape": 7}, ValueError, "rms_norm: normalized_shape")]),
    Spec("rms_norm_backward", _rms_backward,
         {"grad_output": "x", "x": "same", "weight": "param", "rstd": "stat"}, out=False, min_ndim=1),
    Spec("group_norm", _gn, _NORM_ROLES, min_ndim=2, cases=_param_cases("group_norm", eps=_EPS) + [
        ({"num_groups": 0}, ValueError, "group_norm: num_groups"),
        ({"num_groups": 4}, ValueError, "group_norm: num_groups"),
        ({"num_groups": -3}, ValueError, "group_norm: num_groups"),
        ({"num_groups": 3.0}, TypeError, "group_norm: num_groups"),
        ({"num_groups": None}, TypeError, "group_norm: num_groups"),
        ({"x": np.ones(6, F32)}, ValueError, "group_norm: x")]),
    Spec("group_norm_backward", _gn_backward, _BACKWARD_ROLES, out=False, min_ndim=2, cases=[
        ({"num_groups": 2}, ValueError, "group_norm_backward: (mean|rstd)"),
        ({"num_groups": 5}, ValueError, "group_norm_backward: num_groups")]),
    Spec("instance_norm", _in, {**_NORM_ROLES, "running_mean": "running", "running_var": "running"},
         min_ndim=2, cases=_param_cases("instance_norm", eps=_EPS, momentum=[]) + [
             ({"x": np.ones((2, 3, 1), F32)}, ValueError, "instance_norm: expected more than 1"),
             ({"use_input_stats": 0}, TypeError, "instance_norm: use_input_stats")]),
    Spec("instance_norm_backward", _in_backward, _BACKWARD_ROLES, out=False, min_ndim=2),
    Spec("dropout", _dropout, {"x": "x"}, cases=[
        ({"p": v}, ValueError, "dropout: p") for v in (-0.1, 1.5, float("nan"), float("inf"))] + [
        ({"p": "0.5"}, TypeError, "dropout: p"), ({"p": None}, TypeError, "dropout: p"),
        ({"seed": -1}, ValueError, "dropout: seed"), ({"seed": 1 << 128}, ValueError, "dropout: seed"),
        ({"seed": 1.0}, TypeError, "dropout: seed"), ({"offset": -1}, ValueError, "dropout: offset"),
        ({"offset": (1 << 64) - 1}, ValueError, "dropout: offset"),
        ({"offset": 0.5}, TypeError, "dropout: offset")]),
    Spec("dropout_backward", _dropout_backward, {"grad_output": "x"}, cases=[
        ({"mask": None}, TypeError, "dropout_backward: mask"),
        ({"mask": np.ones((3, 37), bool)}, TypeError, "dropout_backward: mask"),
        ({"grad_output": np.ones((37, 3))}, ValueError, "dropout_backward: grad_output")]),
]
SPEC_BY_NAME = {s.name: s for s in SPECS}


# ---------------------------------------------------------------------------- the other callables

def _bad_calls_of_config():
    return {
        "backend": [(lambda: fastnorm.backend(1), TypeError, "backend")],
        "isa": [(lambda: fastnorm.isa("avx2"), TypeError, "isa")],
        "get_num_threads": [(lambda: fastnorm.get_num_threads(2), TypeError, "get_num_threads")],
        "set_num_threads": [(lambda: fastnorm.set_num_threads(0), ValueError, "set_num_threads: n"),
                            (lambda: fastnorm.set_num_threads(1 << 40), ValueError, "set_num_threads: n"),
                            (lambda: fastnorm.set_num_threads(2.0), TypeError, "set_num_threads: n"),
                            (lambda: fastnorm.set_num_threads(True), TypeError, "set_num_threads: n")],
        "set_isa": [(lambda: fastnorm.set_isa("sse9"), ValueError, "set_isa: name")],
        "pool_bytes": [(lambda: fastnorm.pool_bytes(1), TypeError, "pool_bytes")],
        "set_pool_bytes": [(lambda: fastnorm.set_pool_bytes(-1), ValueError, "set_pool_bytes: n"),
                           (lambda: fastnorm.set_pool_bytes(1.0), TypeError, "set_pool_bytes: n"),
                           (lambda: fastnorm.set_pool_bytes(True), TypeError, "set_pool_bytes: n")],
        "stream_min_bytes": [(lambda: fastnorm.stream_min_bytes(1), TypeError, "stream_min_bytes")],
        "set_stream_min_bytes": [
            (lambda: fastnorm.set_stream_min_bytes(-1), ValueError, "set_stream_min_bytes: n"),
            (lambda: fastnorm.set_stream_min_bytes("1"), TypeError, "set_stream_min_bytes: n")],
        "use_backend": [(lambda: fastnorm.use_backend("torch").__enter__(), ValueError, "use_backend: name")],
        "show_config": [(lambda: fastnorm.show_config(file=42), AttributeError, "")],
        "DropoutMask": [
            (lambda: fastnorm.DropoutMask((4,), 0.5, 1, 0, np.zeros(2, np.uint8)), ValueError, "DropoutMask: packed"),
            (lambda: fastnorm.DropoutMask((4,), float("nan"), 1, 0, np.zeros(1, np.uint8)), ValueError, "DropoutMask: p"),
            (lambda: fastnorm.DropoutMask((-8,), 0.5, 1, 0, np.zeros(0, np.uint8)), ValueError, "DropoutMask: shape"),
            (lambda: fastnorm.DropoutMask((9,), 0.5, 1, 0, np.zeros(2, np.int8)), ValueError, "DropoutMask: packed")],
        **({"merge_moments": [(lambda: fastnorm.merge_moments([]), ValueError, "merge_moments: partials")]}
           if hasattr(fastnorm, "merge_moments") else {}),
    }


def _bad_calls_of_training():
    x = np.zeros((4, 3), np.float32)
    return {
        "softmax_cross_entropy": [
            (lambda: fastnorm.softmax_cross_entropy(x, np.zeros(5, int)), ValueError, "softmax_cross_entropy: labels"),
            (lambda: fastnorm.softmax_cross_entropy(x, np.full(4, 3)), ValueError, "softmax_cross_entropy: labels"),
            (lambda: fastnorm.softmax_cross_entropy(x.astype(int), np.zeros(4, int)), TypeError,
             "softmax_cross_entropy: logits"),
            (lambda: fastnorm.softmax_cross_entropy(x, np.zeros(4, int), reduction="avg"), ValueError,
             "softmax_cross_entropy: reduction")],
        "mse_loss": [(lambda: fastnorm.mse_loss(x, x[:2]), ValueError, "mse_loss: target"),
                     (lambda: fastnorm.mse_loss(x, "a"), TypeError, "mse_loss: target")],
        "accuracy": [(lambda: fastnorm.accuracy(x, np.zeros(3, int)), ValueError, "accuracy: labels")],
        "EarlyStopping": [(lambda: fastnorm.EarlyStopping(-1), ValueError, "EarlyStopping: patience"),
                          (lambda: fastnorm.EarlyStopping(2, mode="up"), ValueError, "EarlyStopping: mode")],
        "train_val_test_split": [
            (lambda: fastnorm.train_val_test_split(x, np.zeros(3)), ValueError, "train_val_test_split"),
            (lambda: fastnorm.train_val_test_split(x, np.zeros(4), fractions=(0.5, 0.6, 0.2)), ValueError,
             "train_val_test_split: fractions")],
        "fit": [pytest.param(lambda: fastnorm.fit(L.Linear(3, 2), fastnorm.mse_loss, None, x, x, epochs=1),
                             TypeError, "fit: optimizer"),
                (lambda: fastnorm.fit(L.Linear(3, 2), fastnorm.mse_loss,
                                      fastnorm.optim.SGD(L.Linear(3, 2).parameters(), lr=0.1), x, x,
                                      epochs=-1), ValueError, "fit: epochs")],
    }


# Layers: a constructor call with a bad argument, and a valid layer fed a bad input.
# (layer factory, good input shape, parameter dtype)
LAYERS = {
    "Sequential": (lambda: L.Sequential(L.Linear(5, 4), L.ReLU()), (3, 5)),
    "Linear": (lambda: L.Linear(5, 4), (3, 5)),
    "Flatten": (lambda: L.Flatten(), (3, 5, 2)),
    "Dropout": (lambda: L.Dropout(0.3, seed=1), (3, 5)),
    "BatchNorm1d": (lambda: L.BatchNorm1d(5), (3, 5)),
    "BatchNorm2d": (lambda: L.BatchNorm2d(5), (3, 5, 2, 2)),
    "BatchNorm3d": (lambda: L.BatchNorm3d(5), (3, 5, 2, 2, 2)),
    "LayerNorm": (lambda: L.LayerNorm(5), (3, 5)),
    "RMSNorm": (lambda: L.RMSNorm(5), (3, 5)),
    "GroupNorm": (lambda: L.GroupNorm(5, 5), (3, 5, 2)),
    "InstanceNorm1d": (lambda: L.InstanceNorm1d(5, affine=True), (3, 5, 4)),
    "InstanceNorm2d": (lambda: L.InstanceNorm2d(5, affine=True), (3, 5, 2, 2)),
    "InstanceNorm3d": (lambda: L.InstanceNorm3d(5, affine=True), (3, 5, 2, 2, 2)),
}
_ACT_LAYERS = ["ReLU", "LeakyReLU", "ELU", "SELU", "CELU", "GELU", "SiLU", "Swish", "Softplus", "Mish",
               "Sigmoid", "Tanh", "Hardsigmoid", "Hardswish", "Softsign", "ReLU6"]
for _n in _ACT_LAYERS:
    LAYERS[_n] = ((lambda n=_n: getattr(L, n)()), (3, 5))

LAYER_CONSTRUCTOR_CASES = {
    "Linear": [((-1, 4), ValueError, "in_features"), ((5, 4.5), TypeError, "out_features")],
    "Flatten": [(("a",), TypeError, "start_dim")],
    "Dropout": [((1.5,), ValueError, "p"), ((float("nan"),), ValueError, "p")],
    "BatchNorm1d": [((0,), ValueError, "num_features"), ((4, -1.0), ValueError, "eps")],
    "LayerNorm": [(((),), ValueError, "normalized_shape"), ((4, float("nan")), ValueError, "eps")],
    "RMSNorm": [((0,), ValueError, "normalized_shape")],
    "GroupNorm": [((3, 5), ValueError, "num_groups"), ((0, 5), ValueError, "num_groups")],
    "InstanceNorm2d": [((0,), ValueError, "num_features")],
    "LeakyReLU": [((float("nan"),), ValueError, "negative_slope")],
    "CELU": [((0.0,), ValueError, "alpha")],
    "Softplus": [((0.0,), ValueError, "beta")],
    "GELU": [(("erf",), ValueError, "approximate")],
}


# Containers and base classes that compute nothing (their users are tested instead).
_PLAIN_CLASSES = {"Parameter", "Layer", "PartialMoments"}


def _public_callables():
    return sorted(n for n in fastnorm.__all__
                  if callable(getattr(fastnorm, n)) and not isinstance(getattr(fastnorm, n), types.ModuleType))


def test_every_public_callable_is_in_a_table():
    covered = (set(SPEC_BY_NAME) | set(_bad_calls_of_config()) | set(_bad_calls_of_training())
               | set(LAYERS) | _PLAIN_CLASSES)
    missing = [n for n in _public_callables() if n not in covered]
    assert not missing, f"public callables without robustness cases: {missing}"
    assert set(ACTIVATIONS) <= set(fastnorm.__all__)


# ---------------------------------------------------------------------------- helpers

def _digest(value):
    """A hash of everything an argument holds (arrays: bytes, dtype, shape, strides)."""
    h = hashlib.sha256()
    if isinstance(value, np.ndarray):
        h.update(repr((value.dtype.str, value.shape, value.strides)).encode())
        h.update(np.ascontiguousarray(value).view(np.uint8).tobytes())
    elif isinstance(value, fastnorm.DropoutMask):
        h.update(repr(value).encode())
        h.update(value.packed.tobytes())
    else:
        h.update(repr(value).encode())
    return h.hexdigest()


def _digests(kwargs, skip=()):
    return {k: _digest(v) for k, v in kwargs.items() if k not in skip}


_ALIASES = {"swish": "silu", "swish_backward": "silu_backward"}  # the same function objects


def _message_names(exc, func, arg):
    func = _ALIASES.get(func, func)
    text = str(exc.value)
    return text.startswith(f"{func}:") and arg in text


def _results(value):
    """A function's result as a list of arrays (None kept)."""
    if isinstance(value, tuple):
        return [v for v in value if not isinstance(v, fastnorm.DropoutMask)]
    return [value]


def _assert_same_results(got, want, dtype):
    rtol = {F16: 2e-3, F32: 2e-5, F64: 1e-12}[np.dtype(dtype)]
    for g, w in zip(_results(got), _results(want)):
        if w is None:
            assert g is None
            continue
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_allclose(g.astype(np.float64), w.astype(np.float64), rtol=rtol, atol=rtol)


def _call(spec, kwargs):
    return spec.func(**kwargs)


_BAD_DTYPES = {
    "int": lambda a: np.round(a).astype(np.int64),
    "bool": lambda a: a > 0,
    "complex": lambda a: a.astype(np.complex128),
    "object": lambda a: a.astype(object),
    "str": lambda a: a.astype(str),
    "datetime": lambda a: np.zeros(a.shape, "datetime64[s]"),
}


def _array_args(spec, dt=F32):
    kw = spec.build(dt, np.random.default_rng(0))
    return [(k, role) for k, role in spec.roles.items() if isinstance(kw.get(k), np.ndarray)]


def _array_arg_ids():
    return [(s.name, k, role) for s in SPECS for k, role in _array_args(s)]


# ---------------------------------------------------------------------------- bad arguments

@pytest.mark.parametrize("bad_dtype", sorted(_BAD_DTYPES))
@pytest.mark.parametrize("name,arg,role", _array_arg_ids(), ids=lambda v: str(v))
def test_wrong_dtype_names_function_and_argument(name, arg, role, bad_dtype, backend):
    spec = SPEC_BY_NAME[name]
    kw = spec.build(F32, np.random.default_rng(1))
    kw[arg] = _BAD_DTYPES[bad_dtype](kw[arg])
    with pytest.raises(TypeError) as exc:
        _call(spec, kw)
    assert _message_names(exc, name, arg), str(exc.value)


@pytest.mark.parametrize("name,arg,role", [a for a in _array_arg_ids() if a[2] != "x"], ids=str)
def test_wrong_shape_names_function_and_argument(name, arg, role, backend):
    spec = SPEC_BY_NAME[name]
    for reshape in (lambda a: np.concatenate([a, a[..., :1]], axis=-1),   # one element too many
                    lambda a: a[..., :-1],                                # one too few
                    lambda a: a[None],                                    # an extra axis
                    lambda a: a.reshape(-1)[:1].reshape(()) if a.ndim == 1 else a[0]):  # one axis fewer
        kw = spec.build(F32, np.random.default_rng(2))
        kw[arg] = np.ascontiguousarray(reshape(kw[arg]))
        hashes = _digests(kw, skip=("running_mean", "running_var"))
        with pytest.raises(ValueError) as exc:
            _call(spec, kw)
        assert _message_names(exc, name, arg), str(exc.value)
        assert _digests(kw, skip=("running_mean", "running_var")) == hashes


@pytest.mark.parametrize("name,arg,role", [a for a in _array_arg_ids() if a[2] in ("same", "param", "running")],
                         ids=str)
def test_mismatched_dtype_names_function_and_argument(name, arg, role, backend):
    spec = SPEC_BY_NAME[name]
    kw = spec.build(F32, np.random.default_rng(3))
    kw[arg] = kw[arg].astype(F64)
    with pytest.raises(TypeError) as exc:
        _call(spec, kw)
    assert _message_names(exc, name, arg), str(exc.value)


@pytest.mark.parametrize("name", [s.name for s in SPECS if s.min_ndim > 0])
def test_too_few_dimensions(name, backend):
    spec = SPEC_BY_NAME[name]
    kw = spec.build(F32, np.random.default_rng(4))
    primary = next(k for k, r in spec.roles.items() if r == "x")
    kw[primary] = np.ones((1,) * (spec.min_ndim - 1), F32)
    with pytest.raises(ValueError) as exc:
        _call(spec, kw)
    assert str(exc.value).startswith(f"{name}:"), str(exc.value)


@pytest.mark.parametrize("name,overrides,error,pattern",
                         [(s.name, *case) for s in SPECS for case in s.cases],
                         ids=lambda v: repr(v)[:40] if not isinstance(v, type) else v.__name__)
def test_bad_parameter(name, overrides, error, pattern, backend):
    spec = SPEC_BY_NAME[name]
    kw = spec.build(F32, np.random.default_rng(5))
    kw.update(overrides)
    with pytest.raises(error, match=pattern):
        _call(spec, kw)


@pytest.mark.parametrize("name", [s.name for s in SPECS if s.out])
def test_bad_out(name, backend):
    spec = SPEC_BY_NAME[name]
    kw = spec.build(F32, np.random.default_rng(6))
    primary = kw[next(k for k, r in spec.roles.items() if r == "x")]
    read_only = np.empty_like(primary)
    read_only.flags.writeable = False
    bad = [(np.empty(primary.shape[::-1] + (1,), F32), ValueError),
           (np.empty(primary.size, F32), ValueError),
           (np.empty(primary.shape, F64), TypeError),
           (np.empty(primary.shape, F16), TypeError),
           (np.empty(primary.shape, np.int32), TypeError),
           (read_only, ValueError),
           (np.broadcast_to(np.empty(primary.shape[-1:], F32), primary.shape), ValueError),
           (primary.tolist(), TypeError),
           (memoryview(np.empty_like(primary)), TypeError)]
    for out, error in bad:
        hashes = _digests(kw, skip=("running_mean", "running_var"))
        with pytest.raises(error) as exc:
            _call(spec, {**kw, "out": out})
        assert _message_names(exc, name, "out"), str(exc.value)
        assert _digests(kw, skip=("running_mean", "running_var")) == hashes


@pytest.mark.parametrize("name", [s.name for s in SPECS])
def test_non_array_inputs(name, backend):
    """None and ragged lists raise naming the argument; lists, tuples, memoryviews and
    NumPy scalars of floats are accepted as NumPy would and give the array's result."""
    spec = SPEC_BY_NAME[name]
    for arg, role in _array_args(spec):
        if role == "running":
            continue  # updated in place: only an ndarray makes sense (tested in the table)
        optional = role == "param"  # weight=None / bias=None are valid
        for bad, error in (*([] if optional else [(None, TypeError)]), ([[1.0, 2.0], [3.0]], TypeError),
                           ("abc", TypeError), (object(), TypeError), ({"a": 1.0}, TypeError)):
            kw = spec.build(F64, np.random.default_rng(7))
            kw[arg] = bad
            with pytest.raises(error) as exc:
                _call(spec, kw)
            assert _message_names(exc, name, arg), str(exc.value)
        kw = spec.build(F64, np.random.default_rng(7))
        want = _call(spec, copy.deepcopy(kw))
        for convert in (lambda a: a.tolist(), lambda a: memoryview(np.ascontiguousarray(a))):
            alt = copy.deepcopy(kw)
            alt[arg] = convert(alt[arg])
            _assert_same_results(_call(spec, alt), want, F64)


@pytest.mark.parametrize("name", [s.name for s in SPECS if s.roles == {"x": "x"} and s.min_ndim == 0])
def test_scalar_input(name, backend):
    spec = SPEC_BY_NAME[name]
    kw = spec.build(F64, np.random.default_rng(8))
    kw["x"] = kw["x"][0, 0] if name != "moments" else kw["x"]
    if name == "moments":
        kw.update(x=np.float64(1.5), axis=None, ddof=0)
    want = _call(spec, {**kw, "x": np.asarray(kw["x"])})
    got = _call(spec, {**kw, "x": float(kw["x"])})
    _assert_same_results(got, want, F64)


# ---------------------------------------------------------------------------- layouts, inputs untouched

def _layouts(a, rng):
    """The same values as a in other layouts: F order, reversed axes, strided, broadcast
    (zero strides, read-only), read-only, and byte-swapped."""
    yield "fortran", np.asfortranarray(a)
    rev = np.ascontiguousarray(a[(slice(None, None, -1),) * a.ndim])
    yield "negative", rev[(slice(None, None, -1),) * a.ndim]
    wide = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype) if a.ndim else None
    if wide is not None:
        wide[..., ::2] = a
        yield "strided", wide[..., ::2]
    ro = a.copy()
    ro.flags.writeable = False
    yield "readonly", ro
    yield "byteswapped", a.astype(a.dtype.newbyteorder())


@pytest.mark.parametrize("dtype", [F16, F32, F64], ids=str)
@pytest.mark.parametrize("name", [s.name for s in SPECS])
def test_layouts_agree_and_inputs_are_untouched(name, dtype, backend):
    spec = SPEC_BY_NAME[name]
    rng = np.random.default_rng(9)
    base = spec.build(dtype, rng)
    updated = ("running_mean", "running_var")
    want = _call(spec, copy.deepcopy(base))
    for arg, role in _array_args(spec, dtype):
        if role == "running":
            continue
        for label, alt in _layouts(base[arg], rng):
            kw = copy.deepcopy(base)
            kw[arg] = alt
            hashes = _digests(kw, skip=updated)
            got = _call(spec, kw)
            assert _digests(kw, skip=updated) == hashes, f"{name} modified an input ({arg}, {label})"
            _assert_same_results(got, want, dtype)


def test_broadcast_zero_stride_inputs(backend):
    """np.broadcast_to views (zero strides, read-only) as every array argument."""
    for spec in SPECS:
        kw = spec.build(F32, np.random.default_rng(10))
        for arg, role in _array_args(spec):
            if role == "running":
                continue
            a = kw[arg]
            row = np.ascontiguousarray(a[(0,) * (a.ndim - 1)]) if a.ndim > 1 else a[:1]
            alt = {**copy.deepcopy(kw), arg: np.broadcast_to(row, a.shape)}
            dense = {**copy.deepcopy(kw), arg: np.ascontiguousarray(alt[arg])}
            hashes = _digests(alt, skip=("running_mean", "running_var"))
            try:
                want = _call(spec, dense)
            except ValueError:  # e.g. a constant channel is fine, but skip shapes that are invalid
                continue
            _assert_same_results(_call(spec, alt), want, F32)
            assert _digests(alt, skip=("running_mean", "running_var")) == hashes


@pytest.mark.parametrize("name", [s.name for s in SPECS if s.out])
@pytest.mark.parametrize("dtype", [F16, F32, F64], ids=str)
def test_out_overlapping_an_input(name, dtype, backend):
    """out= overlapping any array argument, partially or exactly, in either direction:
    the result is what a fresh output would hold (as NumPy ufuncs guarantee)."""
    spec = SPEC_BY_NAME[name]
    rng = np.random.default_rng(11)
    base = spec.build(dtype, rng)
    primary = next(k for k, r in spec.roles.items() if r == "x")
    shape = base[primary].shape
    size = base[primary].size
    for arg, role in _array_args(spec, dtype):
        if role == "running":
            continue
        n = base[arg].size
        for shift in (1, 3, n - 1, n, size - 1):
            for out_first in (False, True):
                kw = copy.deepcopy(base)
                want = _call(spec, copy.deepcopy(kw))
                buf = np.empty(size + n + shift, dtype)
                if out_first:
                    out, view = buf[:size].reshape(shape), buf[shift:shift + n]
                else:
                    view, out = buf[:n], buf[shift:shift + size].reshape(shape)
                view[...] = kw[arg].reshape(-1)
                kw[arg] = view.reshape(kw[arg].shape)
                got = _call(spec, {**kw, "out": out})
                y = got[0] if isinstance(got, tuple) else got
                assert y is out
                _assert_same_results(got, want, dtype)
        # out is the input itself (in place)
        if role == "x":
            kw = copy.deepcopy(base)
            want = _call(spec, copy.deepcopy(kw))
            got = _call(spec, {**kw, "out": kw[arg]})
            _assert_same_results(got, want, dtype)


@pytest.mark.parametrize("name", ["batch_norm", "instance_norm"])
def test_out_aliasing_running_statistics_raises(name, backend):
    spec = SPEC_BY_NAME[name]
    kw = spec.build(F32, np.random.default_rng(12))
    out = np.empty_like(kw["x"])
    kw["running_mean"] = out.reshape(-1)[:3]
    with pytest.raises(ValueError, match=f"{name}: out must not share memory with running_mean"):
        _call(spec, {**kw, "out": out})


def test_running_statistics_are_updated_in_place_only(backend):
    for name in ("batch_norm", "instance_norm"):
        spec = SPEC_BY_NAME[name]
        kw = spec.build(F32, np.random.default_rng(13))
        rm, rv = kw["running_mean"], kw["running_var"]
        _call(spec, kw)
        assert kw["running_mean"] is rm and not np.array_equal(rm, np.zeros(3))
        for bad in (rm.astype(rm.dtype.newbyteorder()), rm[::-1]):
            alt = {**spec.build(F32, np.random.default_rng(13)), "running_mean": bad}
            if bad.dtype.isnative:  # a reversed view is still updated through the view
                before = bad.copy()
                _call(spec, alt)
                assert not np.array_equal(bad, before)
            else:
                with pytest.raises(TypeError, match=f"{name}: running_mean"):
                    _call(spec, alt)


# ---------------------------------------------------------------------------- other callables

def _flatten(table):
    rows = []
    for name, cases in table.items():
        for i, case in enumerate(cases):
            if hasattr(case, "marks"):  # a pytest.param (a known gap, marked xfail)
                rows.append(pytest.param(name, i, *case.values, marks=case.marks))
            else:
                rows.append((name, i, *case))
    return rows


@pytest.mark.parametrize("name,i,call,error,pattern",
                         _flatten(_bad_calls_of_config()) + _flatten(_bad_calls_of_training()),
                         ids=lambda v: v if isinstance(v, str) else "")
def test_bad_calls_of_other_callables(name, i, call, error, pattern):
    previous = fastnorm.get_num_threads(), fastnorm.isa()
    try:
        with pytest.raises(error) as exc:
            call()
    finally:
        fastnorm.set_isa(previous[1])
    assert re.search(pattern, str(exc.value)), str(exc.value)


@pytest.mark.parametrize("name,i,args,error,arg",
                         _flatten(LAYER_CONSTRUCTOR_CASES), ids=lambda v: v if isinstance(v, str) else "")
def test_layer_constructor_rejects(name, i, args, error, arg):
    with pytest.raises(error) as exc:
        getattr(L, name)(*args)
    assert str(exc.value).startswith(f"{name}:") and arg in str(exc.value), str(exc.value)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layer_rejects_bad_inputs(name, backend):
    factory, shape = LAYERS[name]
    rng = np.random.default_rng(14)
    good = rng.standard_normal(shape).astype(F32)
    for bad_dtype, convert in _BAD_DTYPES.items():
        layer = factory()
        with pytest.raises(TypeError) as exc:
            layer(convert(good))
        # the layer that rejects it is named (for a container: the child layer)
        assert str(exc.value).split(":")[0].split(".")[0] in LAYERS, str(exc.value)
    layer = factory()
    with pytest.raises((TypeError, ValueError)):
        layer(None)
    if name not in _ACT_LAYERS and name not in ("Flatten", "Dropout"):
        wrong = rng.standard_normal(shape[:1] + (shape[1] + 1,) + shape[2:]).astype(F32)
        with pytest.raises(ValueError) as exc:
            factory()(wrong)
        assert str(exc.value).split(":")[0].split(".")[0] in (
            *LAYERS, "batch_norm", "layer_norm", "rms_norm", "group_norm", "instance_norm"), str(exc.value)
    # backward: wrong shape/dtype of grad_output, and no forward at all
    layer = factory()
    with pytest.raises(RuntimeError):
        layer.backward(np.ones(shape, F32))
    y = layer(good)
    with pytest.raises(ValueError, match=r"backward: grad_output"):
        layer.backward(np.ones(y.shape[:-1] + (y.shape[-1] + 1,), F32))
    with pytest.raises(TypeError, match=r"backward: grad_output"):
        layer.backward(np.ones(y.shape, np.int32))


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layer_leaves_its_input_untouched(name, backend):
    factory, shape = LAYERS[name]
    x = np.random.default_rng(15).standard_normal(shape).astype(F32)
    h = _digest(x)
    layer = factory()
    y = layer(x)
    layer.backward(np.random.default_rng(16).standard_normal(y.shape).astype(F32))
    assert _digest(x) == h
