"""Optimizers over :class:`fastnorm.layers.Parameter` objects, and the weight penalties.

Regularization as the lecture defines it: L2 weight decay is the penalty
``lambda/2 * ||w||^2``, whose gradient ``lambda * w`` is added to the gradient
(``weight_decay=lambda``); L1 is ``lambda * ||w||_1`` with gradient
``lambda * sign(w)`` (``l1=lambda``).  :class:`AdamW` instead decays the weights
directly (decoupled, ``w -= lr * weight_decay * w``), as ``torch.optim.AdamW``.

Update rules, defaults and state follow ``torch.optim`` (SGD with momentum and
Nesterov, Adam, AdamW), so the same gradients give the same steps.  ``params`` is a
layer, an iterable of Parameters, or a list of dicts ``{"params": [...], <option>:
value}`` (parameter groups, e.g. no weight decay on biases); ``optimizer.param_groups``
holds the options and may be edited between steps (learning-rate schedules).
"""
import math
import numbers

import numpy as np

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "l1_penalty", "l2_penalty"]


def _parameters(owner, params):
    from .layers import Layer, Parameter
    if isinstance(params, Layer):
        params = params.parameters()
    if isinstance(params, Parameter):
        raise TypeError(f"{owner}: params must be an iterable of Parameters (e.g. model.parameters()), "
                        "got a single Parameter")
    try:
        params = list(params)
    except TypeError:
        raise TypeError(f"{owner}: params must be a layer or an iterable of Parameters, "
                        f"got {type(params).__name__}") from None
    return params


def _number(owner, name, value, *, lo=0.0, hi=None, hi_open=False):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{owner}: {name} must be a real number, got {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v) or v < lo or (hi is not None and (v >= hi if hi_open else v > hi)):
        bound = "" if hi is None else (f" and < {hi:g}" if hi_open else f" and <= {hi:g}")
        raise ValueError(f"{owner}: {name} must be finite, >= {lo:g}{bound}, got {value!r}")
    return v


def _weights(owner, params):
    """The arrays of Parameters (or plain arrays) to take a penalty over."""
    from .layers import Parameter
    out = []
    for p in _parameters(owner, params):
        out.append(p.data if isinstance(p, Parameter) else np.asarray(p))
    return out


def l2_penalty(params, weight_decay=1.0):
    """``weight_decay / 2 * sum(w**2)`` over the parameters (a float): the L2 term to add
    to the data loss for the loss curve; its gradient is what ``weight_decay=`` adds."""
    lam = _number("l2_penalty", "weight_decay", weight_decay)
    weights = _weights("l2_penalty", params)
    return lam / 2.0 * float(sum(np.square(w, dtype=np.float64).sum() for w in weights))


def l1_penalty(params, l1=1.0):
    """``l1 * sum(|w|)`` over the parameters (a float); its gradient (l1 * sign(w)) is
    what ``l1=`` adds."""
    lam = _number("l1_penalty", "l1", l1)
    return lam * float(sum(np.abs(w).sum(dtype=np.float64) for w in _weights("l1_penalty", params)))


class Optimizer:
    """Base class: parameter groups, ``zero_grad()``, ``step()``, ``penalty()``."""
    _options = ()

    def __init__(self, params, defaults):
        from .layers import Parameter
        name = type(self).__name__
        items = _parameters(name, params)
        if not items:
            raise ValueError(f"{name}: params is empty (nothing to optimize)")
        groups = items if all(isinstance(g, dict) for g in items) else [{"params": items}]
        self.param_groups = []
        seen = set()
        for group in groups:
            unknown = set(group) - {"params", *defaults}
            if unknown:
                raise ValueError(f"{name}: unknown parameter-group options {sorted(unknown)} "
                                 f"(known: {sorted(defaults)})")
            if "params" not in group:
                raise ValueError(f"{name}: a parameter group needs a 'params' entry")
            ps = _parameters(name, group["params"])
            for p in ps:
                if not isinstance(p, Parameter):
                    raise TypeError(f"{name}: params must hold fastnorm Parameters, got {type(p).__name__}")
                if id(p) in seen:
                    raise ValueError(f"{name}: a Parameter appears more than once in params")
                seen.add(id(p))
            full = dict(defaults)
            full.update({k: v for k, v in group.items() if k != "params"})
            self._check(full)
            full["params"] = ps
            self.param_groups.append(full)
        self.defaults = dict(defaults)
        self.state = {}  # id(Parameter) -> per-parameter state (momentum buffers, moments)

    def _check(self, group):
        pass

    @property
    def params(self):
        return [p for g in self.param_groups for p in g["params"]]

    def zero_grad(self):
        for p in self.params:
            p.zero_grad()

    def step(self):
        """Apply one update from the parameters' ``.grad`` (in place on ``.data``)."""
        for group in self.param_groups:
            self._check(group)
            for p in group["params"]:
                self._update(p, group, self.state.setdefault(id(p), {}))

    def _coupled_gradient(self, p, group):
        """grad + weight_decay * w + l1 * sign(w) (the coupled regularizers)."""
        g = p.grad
        wd, l1 = group.get("weight_decay", 0.0), group.get("l1", 0.0)
        if wd or l1:
            g = g.copy()
            if wd:
                g += wd * p.data
            if l1:
                g += l1 * np.sign(p.data)
        return g

    def penalty(self):
        """The regularization terms of the loss: sum over groups of
        ``l1 * ||w||_1 + weight_decay / 2 * ||w||^2`` (for AdamW the decoupled decay has
        no exact penalty; its nominal L2 term is reported)."""
        total = 0.0
        for group in self.param_groups:
            if group.get("weight_decay", 0.0):
                total += l2_penalty(group["params"], group["weight_decay"])
            if group.get("l1", 0.0):
                total += l1_penalty(group["params"], group["l1"])
        return total

    def __repr__(self):
        lines = [f"{type(self).__name__}("]
        for i, g in enumerate(self.param_groups):
            opts = ", ".join(f"{k}={g[k]!r}" for k in self.defaults)
            lines.append(f"  group {i}: {len(g['params'])} parameters, {opts}")
        return "\n".join(lines) + "\n)"


class SGD(Optimizer):
    """Stochastic gradient descent (``torch.optim.SGD`` with dampening 0).

    d = grad + weight_decay * w + l1 * sign(w); with momentum, buf = momentum * buf + d
    (buf = d on the first step) and d = buf, or d + momentum * buf with Nesterov;
    then w -= lr * d.
    """

    def __init__(self, params, lr, momentum=0.0, weight_decay=0.0, l1=0.0, nesterov=False):
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay,
                                  "l1": l1, "nesterov": nesterov})

    def _check(self, group):
        for key in ("lr", "momentum", "weight_decay", "l1"):
            group[key] = _number("SGD", key, group[key])
        if not isinstance(group["nesterov"], (bool, np.bool_)):
            raise TypeError(f"SGD: nesterov must be a bool, got {type(group['nesterov']).__name__}")
        if group["nesterov"] and group["momentum"] <= 0:
            raise ValueError("SGD: nesterov=True requires momentum > 0")

    def _update(self, p, group, state):
        d = self._coupled_gradient(p, group)
        mu = group["momentum"]
        if mu:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = np.array(d, copy=True)
            else:
                buf *= mu
                buf += d
            d = d + mu * buf if group["nesterov"] else buf
        p.data -= (group["lr"] * d).astype(p.data.dtype, copy=False)


class Adam(Optimizer):
    """Adam (``torch.optim.Adam``): d = grad + weight_decay * w + l1 * sign(w) (L2 and L1
    added to the gradient), m = b1 m + (1 - b1) d, v = b2 v + (1 - b2) d^2,
    w -= lr / (1 - b1^t) * m / (sqrt(v / (1 - b2^t)) + eps)."""
    _decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, l1=0.0):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay,
                                  "l1": l1})

    def _check(self, group):
        name = type(self).__name__
        for key in ("lr", "eps", "weight_decay", "l1"):
            group[key] = _number(name, key, group[key])
        try:
            b1, b2 = group["betas"]
        except (TypeError, ValueError):
            raise TypeError(f"{name}: betas must be a pair of numbers, got {group['betas']!r}") from None
        group["betas"] = (_number(name, "betas[0]", b1, hi=1.0, hi_open=True),
                          _number(name, "betas[1]", b2, hi=1.0, hi_open=True))

    def _update(self, p, group, state):
        lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        if self._decoupled:
            if wd:
                p.data *= 1.0 - lr * wd
            d = self._coupled_gradient(p, {"l1": group["l1"]})
        else:
            d = self._coupled_gradient(p, group)
        if not state:
            state["step"] = 0
            state["exp_avg"] = np.zeros_like(p.data)
            state["exp_avg_sq"] = np.zeros_like(p.data)
        state["step"] += 1
        t = state["step"]
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m *= b1
        m += (1.0 - b1) * d
        v *= b2
        v += (1.0 - b2) * np.square(d)
        denom = np.sqrt(v) / math.sqrt(1.0 - b2 ** t) + eps
        p.data -= (lr / (1.0 - b1 ** t)) * m / denom


class AdamW(Adam):
    """AdamW (``torch.optim.AdamW``): Adam with decoupled weight decay
    (w -= lr * weight_decay * w before the Adam step; default weight_decay 0.01).
    ``l1`` is still added to the gradient."""
    _decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, l1=0.0):
        super().__init__(params, lr, betas, eps, weight_decay, l1)
