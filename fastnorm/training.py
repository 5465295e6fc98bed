"""Training utilities: early stopping, the train/validation/test split, a minimal fit loop."""
import math
import numbers
import operator

import numpy as np

from .losses import accuracy

__all__ = ["EarlyStopping", "train_val_test_split", "fit"]


class EarlyStopping:
    """Stop when a monitored value has not improved for ``patience`` checks in a row.

    ``step(value, model)`` records one check (e.g. the validation loss after an epoch)
    and returns True once training should stop.  An improvement is ``value < best -
    min_delta`` (mode='min') or ``value > best + min_delta`` (mode='max'); NaN never
    improves.  On each improvement a copy of ``model.state_dict()`` is kept
    (``best_state``); ``restore(model)`` loads it back.

    Attributes: ``best`` (best value, None before the first check), ``best_step``
    (0-based index of the check that gave it), ``num_bad_steps`` (checks since),
    ``stopped`` (True once patience ran out), ``best_state``.
    """

    def __init__(self, patience, min_delta=0.0, mode="min"):
        if isinstance(patience, (bool, np.bool_)):
            raise TypeError("EarlyStopping: patience must be an int, got bool")
        try:
            self.patience = operator.index(patience)
        except TypeError:
            raise TypeError("EarlyStopping: patience must be an int, "
                            f"got {type(patience).__name__}") from None
        if self.patience < 0:
            raise ValueError(f"EarlyStopping: patience must be >= 0, got {self.patience}")
        if isinstance(min_delta, (bool, np.bool_)) or not isinstance(min_delta, numbers.Real):
            raise TypeError(f"EarlyStopping: min_delta must be a real number, got {type(min_delta).__name__}")
        if not (math.isfinite(min_delta) and min_delta >= 0):
            raise ValueError(f"EarlyStopping: min_delta must be finite and >= 0, got {min_delta!r}")
        if mode not in ("min", "max"):
            raise ValueError(f"EarlyStopping: mode must be 'min' or 'max', got {mode!r}")
        self.min_delta, self.mode = float(min_delta), mode
        self.reset()

    def reset(self):
        self.best = None
        self.best_step = None
        self.best_state = None
        self.num_bad_steps = 0
        self.stopped = False
        self._steps = 0

    def improved(self, value):
        """Whether ``value`` would count as an improvement on the best so far."""
        if math.isnan(value):
            return False
        if self.best is None:
            return True
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def step(self, value, model=None):
        """Record one check; returns True when training should stop."""
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Real, np.floating)):
            raise TypeError(f"EarlyStopping.step: value must be a real number, got {type(value).__name__}")
        value = float(value)
        if self.improved(value):
            self.best, self.best_step, self.num_bad_steps = value, self._steps, 0
            if model is not None:
                self.best_state = model.state_dict()
        else:
            self.num_bad_steps += 1
            if self.num_bad_steps >= self.patience:
                self.stopped = True
        self._steps += 1
        return self.stopped

    def restore(self, model):
        """Load the best state into ``model``; returns the model."""
        if self.best_state is None:
            raise RuntimeError("EarlyStopping.restore: no state recorded (call step(value, model) "
                               "with a model first)")
        return model.load_state_dict(self.best_state)

    def __repr__(self):
        return (f"EarlyStopping(patience={self.patience}, min_delta={self.min_delta}, mode={self.mode!r}, "
                f"best={self.best}, best_step={self.best_step}, num_bad_steps={self.num_bad_steps})")


def train_val_test_split(X, y, fractions=(0.6, 0.2, 0.2), seed=None, *, shuffle=True):
    """Split samples (axis 0 of X and y) into training, validation and test groups.

    fractions: three non-negative numbers summing to 1 (train, validation, test).
    The validation and test groups get ``round(fraction * n)`` samples, the training
    group the rest.  With shuffle the samples are permuted first (seed: an int or a
    numpy Generator; the same seed gives the same split).  Returns
    ``((X_train, y_train), (X_val, y_val), (X_test, y_test))``; the groups are disjoint
    and together hold every sample exactly once.
    """
    func = "train_val_test_split"
    X, y = np.asarray(X), np.asarray(y)
    if X.ndim == 0 or y.ndim == 0:
        raise ValueError(f"{func}: X and y must have a sample axis, got shapes {X.shape} and {y.shape}")
    if X.shape[0] != y.shape[0]:
        raise ValueError(f"{func}: X and y must have the same number of samples, got {X.shape[0]} and "
                         f"{y.shape[0]}")
    try:
        fr = [float(f) for f in fractions]
    except (TypeError, ValueError):
        raise TypeError(f"{func}: fractions must be three numbers, got {fractions!r}") from None
    if len(fr) != 3 or any(not math.isfinite(f) or f < 0 for f in fr) or abs(sum(fr) - 1.0) > 1e-9:
        raise ValueError(f"{func}: fractions must be three non-negative numbers summing to 1, "
                         f"got {fractions!r}")
    n = X.shape[0]
    n_val, n_test = round(fr[1] * n), round(fr[2] * n)
    n_train = n - n_val - n_test
    if n_train < 0 or (fr[0] > 0 and n_train == 0):
        raise ValueError(f"{func}: {n} samples are too few for fractions {fractions!r}")
    if shuffle:
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        order = rng.permutation(n)
    else:
        order = np.arange(n)
    parts = np.split(order, [n_train, n_train + n_val])
    return tuple((X[idx], y[idx]) for idx in parts)


def _is_int(value):
    return isinstance(value, (numbers.Integral, np.integer)) and not isinstance(value, (bool, np.bool_))


def _progress(total, enabled, desc):
    """A tqdm bar when tqdm is installed and wanted, else None (tqdm is optional)."""
    if enabled is False:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    # progress=None: a bar only for long runs, and tqdm itself hides it off a terminal.
    if enabled is None and total < 2000:
        return None
    return tqdm(total=total, desc=desc, unit="step", disable=None if enabled is None else False,
                leave=False)


def _predict(model, X, batch_size):
    return np.concatenate([model(X[i:i + batch_size]) for i in range(0, X.shape[0], batch_size)]) \
        if X.shape[0] else model(X)


def fit(model, loss_fn, optimizer, X, y, *, epochs, batch_size=32, validation=None, early_stopping=None,
        seed=None, progress=None):
    """Train ``model`` with minibatch steps; returns the per-epoch history (a dict of lists).

    loss_fn(output, target) -> (loss, grad_output), e.g. :func:`softmax_cross_entropy`.
    Each epoch visits the training samples once in a fresh order (seed: int or
    Generator), with ``zero_grad, forward, loss, backward, step`` per batch.  History
    keys: ``loss`` (mean training data loss), ``penalty`` (``optimizer.penalty()`` at the
    epoch's end), and with ``validation=(X_val, y_val)``: ``val_loss`` and, when y_val
    holds integer labels, ``val_accuracy`` (evaluated in eval mode).  early_stopping: an
    :class:`EarlyStopping` stepped with val_loss (or the training loss without
    validation data); the best state is restored when training ends.  progress: True or
    False forces a tqdm bar (when tqdm is installed) on or off; None shows one for long runs.
    """
    for name, obj, needed in (("model", model, ("forward", "backward", "train", "eval")),
                              ("optimizer", optimizer, ("zero_grad", "step"))):
        missing = [m for m in needed if not callable(getattr(obj, m, None))]
        if missing:
            raise TypeError(f"fit: {name} must have {', '.join(needed)} methods, got "
                            f"{type(obj).__name__} without {', '.join(missing)}")
    if not callable(loss_fn):
        raise TypeError(f"fit: loss_fn must be callable, got {type(loss_fn).__name__}")
    X, y = np.asarray(X), np.asarray(y)
    if X.shape[0] != y.shape[0]:
        raise ValueError(f"fit: X and y must have the same number of samples, got {X.shape[0]} "
                         f"and {y.shape[0]}")
    if not _is_int(epochs) or epochs < 0:
        raise ValueError(f"fit: epochs must be a non-negative int, got {epochs!r}")
    if not _is_int(batch_size) or batch_size < 1:
        raise ValueError(f"fit: batch_size must be a positive int, got {batch_size!r}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    n = X.shape[0]
    batches = max(1, math.ceil(n / batch_size))
    history = {"loss": [], "penalty": []}
    if validation is not None:
        X_val, y_val = (np.asarray(a) for a in validation)
        history["val_loss"] = []
        if y_val.dtype.kind in "iu":
            history["val_accuracy"] = []
    bar = _progress(epochs * batches, progress, "fit")
    try:
        for _ in range(int(epochs)):
            model.train()
            order = rng.permutation(n)
            total, count = 0.0, 0
            for start in range(0, n, batch_size):
                idx = order[start:start + batch_size]
                optimizer.zero_grad()
                out = model(X[idx])
                loss, grad = loss_fn(out, y[idx])
                model.backward(grad)
                optimizer.step()
                total += loss * idx.size
                count += idx.size
                if bar is not None:
                    bar.update(1)
            history["loss"].append(total / max(count, 1))
            history["penalty"].append(optimizer.penalty() if hasattr(optimizer, "penalty") else 0.0)
            monitored = history["loss"][-1]
            if validation is not None:
                model.eval()
                out = _predict(model, X_val, max(batch_size, 1024))
                val_loss, _ = loss_fn(out, y_val)
                history["val_loss"].append(val_loss)
                if "val_accuracy" in history:
                    history["val_accuracy"].append(accuracy(out, y_val))
                monitored = val_loss
                model.train()
            if bar is not None:
                bar.set_postfix(loss=f"{monitored:.4g}")
            if early_stopping is not None and early_stopping.step(monitored, model):
                break
    finally:
        if bar is not None:
            bar.close()
    if early_stopping is not None and early_stopping.best_state is not None:
        early_stopping.restore(model)
    return history
