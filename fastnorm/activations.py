"""Activation functions and their backward passes (public API).

Every forward ``f(x, ..., *, out=None)`` maps an array elementwise and returns an
array of the input's shape and dtype.  Every backward
``f_backward(grad_output, saved, ..., *, out=None)`` returns
``grad_output * f'(x)``, where ``saved`` is the forward input ``x`` -- except for
:func:`sigmoid_backward` and :func:`tanh_backward`, which take the forward output
``y`` (as PyTorch's own backward ops do).

float32 and float64 are computed natively, float16 in float32; other dtypes raise
TypeError.  Any shape and strides are accepted; ``out=`` may be the input itself.
Semantics, defaults and the derivative at kinks follow ``torch.nn.functional``.
"""
from . import _config, reference
from ._arrays import as_float_array, check_real, elementwise, same_array_spec

# Below these sizes one thread is faster than starting an OpenMP region (bench/):
# cheap maps are memory-bound and only gain from threads on large arrays.
_GRAIN_CHEAP = 1 << 17
_GRAIN_MATH = 1 << 13
_CHEAP = frozenset(("relu", "relu6", "leaky_relu", "hardsigmoid", "hardswish", "softsign"))
# sigmoid/tanh backward only multiply by the saved output.
_CHEAP_BACKWARD = _CHEAP | {"sigmoid", "tanh"}
# The kernels' ops (the extension's OPS), with their grains looked up once here rather than
# on every call: a (32, 128) call spends less than a microsecond in Python.
_OPS = ("relu", "relu6", "leaky_relu", "elu", "selu", "celu", "gelu", "gelu_tanh", "silu",
        "softplus", "mish", "sigmoid", "tanh", "hardsigmoid", "hardswish", "softsign")
_FORWARD_GRAIN = {op: _GRAIN_CHEAP if op in _CHEAP else _GRAIN_MATH for op in _OPS}
_BACKWARD_GRAIN = {op: _GRAIN_CHEAP if op in _CHEAP_BACKWARD else _GRAIN_MATH for op in _OPS}


# The real parameters of the parameterized ops, in the kernels' (a, b) order: the public
# name and whether it must be non-zero (a divisor).  The C fast path takes plain floats
# and checks their values itself (finite, non-zero divisors); anything else is validated
# here by check_real, with the function's name in the message.
_PARAMS = {
    "leaky_relu": (("negative_slope", False),),
    "elu": (("alpha", False),),
    "celu": (("alpha", True),),
    "softplus": (("beta", True), ("threshold", False)),
}


def _checked_params(func, op, a, b):
    """op's parameters a, b validated as Python floats (left as they are where op has none)."""
    spec = _PARAMS.get(op)
    if spec is None:
        return a, b
    a = check_real(func, spec[0][0], a, nonzero=spec[0][1])
    if len(spec) > 1:
        b = check_real(func, spec[1][0], b, nonzero=spec[1][1])
    return a, b


def _reference_params(op, a, b, ref_params):
    """The keyword arguments of op's NumPy reference: its parameters by name, and the rest
    (ref_params: a dict or None)."""
    return {**{name: v for (name, _), v in zip(_PARAMS.get(op, ()), (a, b))}, **(ref_params or {})}


def _forward_general(func, op, x, out, a=0.0, b=0.0, ref_params=None):
    """y = op(x) for the public function `func`: parameters validated, any array-like, on
    the NumPy reference or the compiled kernels.  The public functions call _forward (defined
    after _backward_general), which comes here for what the compiled fast path does not take."""
    a, b = _checked_params(func, op, a, b)
    ext = _config.extension("activations")
    x = as_float_array(func, "x", x)
    if ext is None:
        ref = getattr(reference, func)
        ref_params = _reference_params(op, a, b, ref_params)

        def kernel(flat, y):
            ref(flat[0], **ref_params, out=y)
    else:
        code, grain = ext.OPS[op], _FORWARD_GRAIN[op]

        def kernel(flat, y):
            ext.forward(code, flat[0], y, a, b, _config.threads_for(y.shape[0], grain))
    return elementwise(func, [x], out, kernel)


def _backward_general(func, op, grad_output, saved, saved_name, out, a=0.0, b=0.0,
                      ref_params=None):
    """grad_output * op'(saved) for the public function `func`, as _forward_general."""
    a, b = _checked_params(func, op, a, b)
    ext = _config.extension("activations")
    g = as_float_array(func, "grad_output", grad_output)
    s = as_float_array(func, saved_name, saved)
    same_array_spec(func, saved_name, s, "grad_output", g)
    if ext is None:
        ref = getattr(reference, func)
        ref_params = _reference_params(op, a, b, ref_params)

        def kernel(flat, gx):
            ref(flat[0], flat[1], **ref_params, out=gx)
    else:
        code, grain = ext.OPS[op], _BACKWARD_GRAIN[op]

        def kernel(flat, gx):
            ext.backward(code, flat[0], flat[1], gx, a, b, _config.threads_for(gx.shape[0], grain))
    return elementwise(func, [g, s], out, kernel)


# What the public functions call: without the compiled kernels the general paths; with
# them the extension's dispatch_forward / dispatch_backward, which run plain arrays on the
# compiled fast path in C and pass everything else (and every call on the NumPy backend)
# to the general paths.  A (32, 128) relu spent about 0.35 us of its 0.8-0.9 us in the
# Python functions that did this dispatch before.
_forward, _backward = _forward_general, _backward_general
_ext = _config.compiled_module("activations")
if _ext is not None:
    _ext.connect(_config, _checked_params, _forward_general, _backward_general, _FORWARD_GRAIN,
                 _BACKWARD_GRAIN)
    _forward, _backward = _ext.dispatch_forward, _ext.dispatch_backward
del _ext


def relu(x, *, out=None):
    """max(x, 0); NaN propagates."""
    return _forward("relu", "relu", x, out)


def relu_backward(grad_output, x, *, out=None):
    """grad_output where x > 0, else 0 (relu'(0) = 0, as PyTorch)."""
    return _backward("relu_backward", "relu", grad_output, x, "x", out)


def relu6(x, *, out=None):
    """min(max(x, 0), 6)."""
    return _forward("relu6", "relu6", x, out)


def relu6_backward(grad_output, x, *, out=None):
    """grad_output where 0 < x < 6, else 0."""
    return _backward("relu6_backward", "relu6", grad_output, x, "x", out)


def leaky_relu(x, negative_slope=0.01, *, out=None):
    """x where x > 0, else negative_slope * x."""
    return _forward("leaky_relu", "leaky_relu", x, out, negative_slope)


def leaky_relu_backward(grad_output, x, negative_slope=0.01, *, out=None):
    return _backward("leaky_relu_backward", "leaky_relu", grad_output, x, "x", out, negative_slope)


def elu(x, alpha=1.0, *, out=None):
    """x where x > 0, else alpha * (exp(x) - 1)."""
    return _forward("elu", "elu", x, out, alpha)


def elu_backward(grad_output, x, alpha=1.0, *, out=None):
    return _backward("elu_backward", "elu", grad_output, x, "x", out, alpha)


def selu(x, *, out=None):
    """scale * elu(x, alpha) with PyTorch's fixed scale and alpha (self-normalizing)."""
    return _forward("selu", "selu", x, out)


def selu_backward(grad_output, x, *, out=None):
    return _backward("selu_backward", "selu", grad_output, x, "x", out)


def celu(x, alpha=1.0, *, out=None):
    """max(0, x) + min(0, alpha * (exp(x / alpha) - 1)); alpha must be non-zero."""
    return _forward("celu", "celu", x, out, alpha)


def celu_backward(grad_output, x, alpha=1.0, *, out=None):
    return _backward("celu_backward", "celu", grad_output, x, "x", out, alpha)


def _gelu_op(func, approximate):
    if approximate == "none":
        return "gelu"
    if approximate == "tanh":
        return "gelu_tanh"
    raise ValueError(f"{func}: approximate must be 'none' or 'tanh', got {approximate!r}")


def gelu(x, approximate="none", *, out=None):
    """x * Phi(x) (``approximate='none'``, via erfc) or PyTorch's tanh approximation."""
    return _forward("gelu", _gelu_op("gelu", approximate), x, out,
                    ref_params={"approximate": approximate})


def gelu_backward(grad_output, x, approximate="none", *, out=None):
    return _backward("gelu_backward", _gelu_op("gelu_backward", approximate), grad_output, x, "x",
                     out, ref_params={"approximate": approximate})


def silu(x, *, out=None):
    """x * sigmoid(x) (Swish with beta = 1)."""
    return _forward("silu", "silu", x, out)


def silu_backward(grad_output, x, *, out=None):
    return _backward("silu_backward", "silu", grad_output, x, "x", out)


def softplus(x, beta=1.0, threshold=20.0, *, out=None):
    """log(1 + exp(beta * x)) / beta, and x itself where beta * x > threshold."""
    return _forward("softplus", "softplus", x, out, beta, threshold)


def softplus_backward(grad_output, x, beta=1.0, threshold=20.0, *, out=None):
    return _backward("softplus_backward", "softplus", grad_output, x, "x", out, beta, threshold)


def mish(x, *, out=None):
    """x * tanh(softplus(x))."""
    return _forward("mish", "mish", x, out)


def mish_backward(grad_output, x, *, out=None):
    return _backward("mish_backward", "mish", grad_output, x, "x", out)


def sigmoid(x, *, out=None):
    """1 / (1 + exp(-x)), finite and accurate in both tails."""
    return _forward("sigmoid", "sigmoid", x, out)


def sigmoid_backward(grad_output, y, *, out=None):
    """grad_output * y * (1 - y), where ``y = sigmoid(x)`` is the forward *output*."""
    return _backward("sigmoid_backward", "sigmoid", grad_output, y, "y", out)


def tanh(x, *, out=None):
    """Hyperbolic tangent."""
    return _forward("tanh", "tanh", x, out)


def tanh_backward(grad_output, y, *, out=None):
    """grad_output * (1 - y**2), where ``y = tanh(x)`` is the forward *output*."""
    return _backward("tanh_backward", "tanh", grad_output, y, "y", out)


def hardsigmoid(x, *, out=None):
    """relu6(x + 3) / 6 (PyTorch's constants, not ONNX's slope 0.2)."""
    return _forward("hardsigmoid", "hardsigmoid", x, out)


def hardsigmoid_backward(grad_output, x, *, out=None):
    """grad_output / 6 where -3 < x < 3, else 0."""
    return _backward("hardsigmoid_backward", "hardsigmoid", grad_output, x, "x", out)


def hardswish(x, *, out=None):
    """x * relu6(x + 3) / 6."""
    return _forward("hardswish", "hardswish", x, out)


def hardswish_backward(grad_output, x, *, out=None):
    return _backward("hardswish_backward", "hardswish", grad_output, x, "x", out)


def softsign(x, *, out=None):
    """x / (1 + |x|)."""
    return _forward("softsign", "softsign", x, out)


def softsign_backward(grad_output, x, *, out=None):
    return _backward("softsign_backward", "softsign", grad_output, x, "x", out)


swish = silu
swish_backward = silu_backward

from .reference._activations import __all__  # noqa: E402  (same names as the oracle)
