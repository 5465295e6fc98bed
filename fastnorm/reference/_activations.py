"""NumPy reference of the activation functions: the test oracle and the fallback backend.

Same functions and signatures as :mod:`fastnorm.activations`.  Written as plain
NumPy formulas, independent of the C kernels where a textbook form is accurate
(mish via logaddexp, the tanh-GELU backward via tanh), and in the stable forms
where the textbook one overflows (sigmoid through exp(-|x|)).  Computes in the
input's dtype (float16 in float32) and returns the input's dtype.
"""
import math

import numpy as np

SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946
_GELU_K = math.sqrt(2.0 / math.pi)
_GELU_C = 0.044715
_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)

# NumPy has no erf/erfc; math.erfc per element is exact to double rounding and slow,
# which is acceptable for the oracle and the no-compiler fallback.
_erfc_object = np.frompyfunc(math.erfc, 1, 1)


def _erfc(z):
    return np.asarray(_erfc_object(z), dtype=object).astype(z.dtype)


def _compute(x):
    # float64 throughout: the oracle is then correctly rounded to within an ulp in every
    # dtype (a float32 formula loses 100+ ulp where erfc or exp amplify an argument's rounding).
    return np.asarray(x, dtype=np.float64)


def _finish(y, dtype, out):
    y = np.asarray(y).astype(dtype, copy=False)
    if out is None:
        return y
    np.copyto(out, y)
    return out


def _map(fn, x, out):
    x = np.asarray(x)
    with np.errstate(all="ignore"):  # the unselected arm of a where() may overflow
        return _finish(fn(_compute(x)), x.dtype, out)


def _map_grad(fn, grad_output, saved, out):
    g = np.asarray(grad_output)
    with np.errstate(all="ignore"):
        return _finish(fn(_compute(g), _compute(saved)), g.dtype, out)


def _sigmoid(z):
    return _sigmoid_of(z, np.exp(-np.abs(z)))


def _sigmoid_of(z, e):
    """sigmoid(z) from e = exp(-|z|), which sigmoid(-z) shares."""
    return np.where(z >= 0, 1 / (1 + e), e / (1 + e))


def _softplus(z, beta, threshold):
    bz = beta * z
    smooth = (np.maximum(bz, 0) + np.log1p(np.exp(-np.abs(bz)))) / beta
    return np.where(bz > threshold, z, smooth)


def relu(x, *, out=None):
    return _map(lambda v: np.where(v < 0, 0, v), x, out)


def relu_backward(grad_output, x, *, out=None):
    return _map_grad(lambda g, v: np.where(v <= 0, 0, g), grad_output, x, out)


def relu6(x, *, out=None):
    return _map(lambda v: np.where(v < 0, 0, np.where(v > 6, 6, v)), x, out)


def relu6_backward(grad_output, x, *, out=None):
    return _map_grad(lambda g, v: np.where((v <= 0) | (v >= 6), 0, g), grad_output, x, out)


def leaky_relu(x, negative_slope=0.01, *, out=None):
    return _map(lambda v: np.where(v > 0, v, v * v.dtype.type(negative_slope)), x, out)


def leaky_relu_backward(grad_output, x, negative_slope=0.01, *, out=None):
    return _map_grad(lambda g, v: np.where(v > 0, g, g * g.dtype.type(negative_slope)),
                     grad_output, x, out)


def elu(x, alpha=1.0, *, out=None):
    return _map(lambda v: np.where(v > 0, v, alpha * np.expm1(v)), x, out)


def elu_backward(grad_output, x, alpha=1.0, *, out=None):
    return _map_grad(lambda g, v: np.where(v > 0, g, g * alpha * np.exp(v)), grad_output, x, out)


def selu(x, *, out=None):
    return _map(lambda v: SELU_SCALE * np.where(v > 0, v, SELU_ALPHA * np.expm1(v)), x, out)


def selu_backward(grad_output, x, *, out=None):
    return _map_grad(lambda g, v: g * SELU_SCALE * np.where(v > 0, 1, SELU_ALPHA * np.exp(v)),
                     grad_output, x, out)


def celu(x, alpha=1.0, *, out=None):
    return _map(lambda v: np.where(v > 0, v, alpha * np.expm1(v / alpha)), x, out)


def celu_backward(grad_output, x, alpha=1.0, *, out=None):
    return _map_grad(lambda g, v: np.where(v > 0, g, g * np.exp(v / alpha)), grad_output, x, out)


def _gelu_tanh_z(v):
    """z = 2u of GELU's tanh form, u = sqrt(2/pi) (v + 0.044715 v^3)."""
    return 2 * _GELU_K * (v + _GELU_C * v ** 3)


def _gelu_tanh(v):
    # 0.5 v (1 + tanh(u)) == v sigmoid(2u); the latter does not cancel for v << 0.
    return v * _sigmoid(_gelu_tanh_z(v))


def gelu(x, approximate="none", *, out=None):
    if approximate == "tanh":
        return _map(_gelu_tanh, x, out)
    return _map(lambda v: 0.5 * v * _erfc(-v * _INV_SQRT2), x, out)


def _tame(v):
    """v clamped to +-1e6 (NaN kept): beyond it these derivatives are exactly their limits,
    and the clamp keeps Inf * 0 (NaN) out of them at x = +-Inf."""
    return np.clip(v, -1e6, 1e6)


def gelu_backward(grad_output, x, approximate="none", *, out=None):
    if approximate == "tanh":
        def grad(g, v):
            # d/dv of v sigmoid(z), z = 2u (_gelu_tanh): 0.5 (1 + tanh(u)) = sigmoid(z) and
            # 0.5 (1 - tanh(u)^2) = 2 sigmoid(z) sigmoid(-z), which do not cancel for v << 0
            # (1 + tanh(u) was exactly 0 in float64 from v = -6.9 on, where the derivative is
            # about -1e-18: grad_output = -inf then gave NaN, not +inf)
            v = _tame(v)
            z = _gelu_tanh_z(v)
            e = np.exp(-np.abs(z))
            s = _sigmoid_of(z, e)
            return g * (s + v * s * _sigmoid_of(-z, e) * 2 * _GELU_K * (1 + 3 * _GELU_C * v * v))
        return _map_grad(grad, grad_output, x, out)
    return _map_grad(lambda g, v: g * (0.5 * _erfc(-v * _INV_SQRT2)
                                       + _tame(v) * _INV_SQRT_2PI * np.exp(-0.5 * _tame(v) ** 2)),
                     grad_output, x, out)


def silu(x, *, out=None):
    return _map(lambda v: v * _sigmoid(v), x, out)


def silu_backward(grad_output, x, *, out=None):
    def grad(g, v):
        s = _sigmoid(v)
        return g * s * (1 + _tame(v) * (1 - s))
    return _map_grad(grad, grad_output, x, out)


def softplus(x, beta=1.0, threshold=20.0, *, out=None):
    return _map(lambda v: _softplus(v, beta, threshold), x, out)


def softplus_backward(grad_output, x, beta=1.0, threshold=20.0, *, out=None):
    return _map_grad(lambda g, v: np.where(beta * v > threshold, g, g * _sigmoid(beta * v)),
                     grad_output, x, out)


def mish(x, *, out=None):
    return _map(lambda v: v * np.tanh(np.logaddexp(0, v)), x, out)


def mish_backward(grad_output, x, *, out=None):
    def grad(g, v):
        t = np.tanh(np.logaddexp(0, v))
        return g * (t + _tame(v) * (1 - t * t) * _sigmoid(v))
    return _map_grad(grad, grad_output, x, out)


def sigmoid(x, *, out=None):
    return _map(_sigmoid, x, out)


def sigmoid_backward(grad_output, y, *, out=None):
    return _map_grad(lambda g, s: g * (1 - s) * s, grad_output, y, out)


def tanh(x, *, out=None):
    return _map(np.tanh, x, out)


def tanh_backward(grad_output, y, *, out=None):
    return _map_grad(lambda g, t: g * (1 - t * t), grad_output, y, out)


def hardsigmoid(x, *, out=None):
    return _map(lambda v: np.clip(v + 3, 0, 6) / 6, x, out)


def hardsigmoid_backward(grad_output, x, *, out=None):
    return _map_grad(lambda g, v: np.where((v > -3) & (v < 3), g / 6, 0), grad_output, x, out)


def hardswish(x, *, out=None):
    return _map(lambda v: v * np.clip(v + 3, 0, 6) / 6, x, out)


def hardswish_backward(grad_output, x, *, out=None):
    return _map_grad(lambda g, v: np.where(v <= -3, 0, np.where(v < 3, g * (v / 3 + 0.5), g)),
                     grad_output, x, out)


def softsign(x, *, out=None):
    return _map(lambda v: v / (1 + np.abs(v)), x, out)


def softsign_backward(grad_output, x, *, out=None):
    return _map_grad(lambda g, v: g / (1 + np.abs(v)) ** 2, grad_output, x, out)


swish = silu
swish_backward = silu_backward


ACTIVATIONS = ("relu", "relu6", "leaky_relu", "elu", "selu", "celu", "gelu", "silu", "swish",
               "softplus", "mish", "sigmoid", "tanh", "hardsigmoid", "hardswish", "softsign")
__all__ = [f for name in ACTIVATIONS for f in (name, name + "_backward")]
