"""The activation functions under test: parameters, which tensor backward saves, and kinks."""
import numpy as np

# name -> (forward params to try, saved tensor for backward, kink points to avoid in FD checks)
CASES = {
    "relu": ([{}], "x", [0.0]),
    "relu6": ([{}], "x", [0.0, 6.0]),
    "leaky_relu": ([{}, {"negative_slope": 0.2}, {"negative_slope": -1.5}], "x", [0.0]),
    "elu": ([{}, {"alpha": 0.5}, {"alpha": 2.0}], "x", [0.0]),
    "selu": ([{}], "x", [0.0]),
    "celu": ([{}, {"alpha": 0.5}, {"alpha": 3.0}], "x", [0.0]),
    "gelu": ([{}, {"approximate": "tanh"}], "x", []),
    "silu": ([{}], "x", []),
    "softplus": ([{}, {"beta": 2.0, "threshold": 10.0}, {"beta": 0.5, "threshold": 5.0}], "x", []),
    "mish": ([{}], "x", []),
    "sigmoid": ([{}], "y", []),
    "tanh": ([{}], "y", []),
    "hardsigmoid": ([{}], "x", [-3.0, 3.0]),
    "hardswish": ([{}], "x", [-3.0, 3.0]),
    "softsign": ([{}], "x", []),
}

PARAM_CASES = [(name, params) for name, (plist, _, _) in CASES.items() for params in plist]


def case_id(case):
    name, params = case
    return name + "".join(f"-{k}={v}" for k, v in params.items())


def kinks(name, params):
    points = list(CASES[name][2])
    if name == "softplus":  # the switch to the identity at beta*x == threshold
        points.append(params.get("threshold", 20.0) / params.get("beta", 1.0))
    return points


def saved_for_backward(module, name, params, x):
    """The array f_backward expects: the forward output for sigmoid/tanh, else x."""
    if CASES[name][1] == "y":
        return getattr(module, name)(x, **params)
    return x


def spread_values(rng, shape, dtype, scale=4.0):
    """Random values over several magnitudes, with both signs."""
    x = rng.standard_normal(shape) * scale
    x *= np.exp(rng.uniform(-3, 2, shape))
    return x.astype(dtype)
