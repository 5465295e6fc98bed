"""What every experiment shares: the run context (quick/full, seeds, output folder,
progress bar), the result structure, model building and the training loop over
fastnorm's public Layer API, and figure saving."""
import contextlib
import math
import os
import sys
import time
import zlib

import numpy as np

import fastnorm as fn

__all__ = ["Context", "ExperimentResult", "mlp", "train", "evaluate", "predict", "interleaved_medians",
           "matplotlib_available"]


def matplotlib_available():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


class _NullBar:
    def update(self, n=1):
        pass

    def set_postfix_str(self, s):
        pass

    def close(self):
        pass


class Context:
    """Settings of one run, handed to every experiment.

    quick: small data and few epochs (the CI form).  seed: the run's seed; every random
    stream of an experiment is derived from it and a name (``rng("init")``), so runs
    with the same seed give the same numbers (except measured times).  out_dir: where
    figures go.  progress: show tqdm bars (when tqdm is installed and stderr is a
    terminal; None = tqdm decides).
    """

    def __init__(self, *, quick=False, seed=0, out_dir=".", progress=None, figures=True):
        self.quick = bool(quick)
        self.seed = int(seed)
        self.out_dir = os.fspath(out_dir)
        self.progress = progress
        self.figures = bool(figures) and matplotlib_available()
        self.experiment = ""

    # -- randomness -----------------------------------------------------------
    def seed_for(self, *keys):
        """A 63-bit int seed derived from the run seed, the experiment's name and ``keys``."""
        words = [self.seed] + [zlib.crc32(str(k).encode()) for k in (self.experiment, *keys)]
        return int(np.random.SeedSequence(words).generate_state(2, np.uint64)[0] >> np.uint64(1))

    def rng(self, *keys):
        return np.random.default_rng(self.seed_for(*keys))

    # -- progress -------------------------------------------------------------
    def bar(self, total, desc=None, unit="step"):
        """A tqdm progress bar over ``total`` units (a do-nothing bar without tqdm)."""
        if self.progress is False:
            return _NullBar()
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return _NullBar()
        return tqdm(total=total, desc=desc or self.experiment, unit=unit, leave=False,
                    disable=None if self.progress is None else False, file=sys.stderr,
                    dynamic_ncols=True)

    # -- figures --------------------------------------------------------------
    @contextlib.contextmanager
    def figure(self, name, size=(9.0, 3.2), ncols=1, nrows=1, **subplot_kw):
        """Yields (figure, axes) and saves ``<out_dir>/<name>.png`` (dpi 80).  Without
        matplotlib yields (None, None) and saves nothing.  Uses matplotlib's object API
        (no pyplot), so no GUI backend or global state is touched."""
        if not self.figures:
            yield None, None
            return
        from matplotlib.figure import Figure
        fig = Figure(figsize=size, layout="constrained")
        axes = fig.subplots(nrows, ncols, squeeze=False, **subplot_kw)
        axes = axes[0, 0] if axes.size == 1 else (axes[0] if nrows == 1 else axes)
        yield fig, axes
        os.makedirs(self.out_dir, exist_ok=True)
        fig.savefig(os.path.join(self.out_dir, name + ".png"), dpi=80)


class ExperimentResult:
    """What an experiment returns and the report shows.

    name: the ``--only`` name.  title, claim (what the lecture says), setup (markdown).
    columns / rows: the results table (rows of values; floats are formatted by the
    report).  figures: PNG file names in the output folder.  held: True, False or None
    (mixed / partly).  verdict: one sentence on whether the claim held here.
    notes: extra markdown lines (fallbacks, caveats).  data: the raw numbers (plain
    Python and NumPy values, used by the tests and report.json).  seconds: run time.
    """

    def __init__(self, name, title, claim, setup, columns, rows, verdict, held, *, figures=(),
                 notes=(), data=None, tables=()):
        self.name, self.title, self.claim, self.setup = name, title, claim, setup
        self.columns, self.rows = list(columns), [list(r) for r in rows]
        self.verdict, self.held = verdict, held
        self.figures = list(figures)
        self.notes = [n for n in notes if n]
        self.data = dict(data or {})
        # Extra tables: (caption, columns, rows).
        self.tables = [(c, list(cols), [list(r) for r in rs]) for c, cols, rs in tables]
        self.seconds = float("nan")

    def __repr__(self):
        return f"ExperimentResult({self.name!r}, held={self.held}, {len(self.rows)} rows)"


# ---------------------------------------------------------------------------- models and training

_ACTIVATIONS = {"relu": fn.ReLU, "sigmoid": fn.Sigmoid, "tanh": fn.Tanh,
                "leaky_relu": fn.LeakyReLU, "silu": fn.SiLU}


def mlp(sizes, activation="relu", *, norm=None, dropout=0.0, init="default", seed=0, groups=8):
    """A float32 multilayer perceptron ``sizes[0] -> ... -> sizes[-1]``.

    Each hidden layer is Linear, then the norm layer ('batch', 'layer', 'group' with
    ``groups`` groups, or None), then the activation, then Dropout(dropout) when
    dropout > 0 (dropout is the drop probability, 1 - retention).  Every Linear and
    Dropout gets its own seed derived from ``seed``."""
    rng = np.random.default_rng(seed)
    layers = []
    for i, (d_in, d_out) in enumerate(zip(sizes[:-2], sizes[1:-1])):
        layers.append(fn.Linear(d_in, d_out, init=init, seed=rng))
        if norm == "batch":
            layers.append(fn.BatchNorm1d(d_out))
        elif norm == "layer":
            layers.append(fn.LayerNorm(d_out))
        elif norm == "group":
            layers.append(fn.GroupNorm(groups, d_out))
        elif norm is not None:
            raise ValueError(f"mlp: norm must be 'batch', 'layer', 'group' or None, got {norm!r}")
        layers.append(_ACTIVATIONS[activation]())
        if dropout > 0:
            layers.append(fn.Dropout(dropout, seed=int(rng.integers(0, 2**62))))
    layers.append(fn.Linear(sizes[-2], sizes[-1], init=init, seed=rng))
    return fn.Sequential(*layers)


def predict(model, X, batch_size=1024):
    """Model outputs in evaluation mode (the mode is restored afterwards)."""
    was_training = model.training
    model.eval()
    try:
        return np.concatenate([model(X[i:i + batch_size]) for i in range(0, X.shape[0], batch_size)])
    finally:
        model.train(was_training)


def evaluate(model, X, y):
    """(mean cross-entropy loss, accuracy) in evaluation mode."""
    out = predict(model, X)
    loss, _ = fn.softmax_cross_entropy(out, y)
    return loss, fn.accuracy(out, y)


def train(model, optimizer, X, y, *, epochs, batch_size, rng, bar=None, on_epoch=None,
          on_step=None, forward=None, max_steps=None):
    """Minibatch training with ``zero_grad, forward, softmax_cross_entropy, backward, step``.

    Each epoch visits the samples once in a fresh order drawn from ``rng``; the last
    partial batch is kept.  on_step(step, loss) runs after each step, on_epoch(epoch,
    mean_loss) after each epoch; either may return True to stop.  forward(model, x)
    replaces ``model(x)`` (to observe hidden values).  max_steps stops after that many
    steps.  Returns the mean training loss of each epoch (a list).
    """
    n = X.shape[0]
    losses = []
    step = 0
    forward = forward or (lambda m, xb: m(xb))
    model.train()
    for epoch in range(epochs):
        order = rng.permutation(n)
        total = 0.0
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            optimizer.zero_grad()
            out = forward(model, X[idx])
            loss, grad = fn.softmax_cross_entropy(out, y[idx])
            if not math.isfinite(loss):
                raise FloatingPointError(f"training diverged (loss {loss}) at step {step}")
            model.backward(grad)
            optimizer.step()
            total += loss * idx.size
            step += 1
            if bar is not None:
                bar.update(1)
            if on_step is not None and on_step(step, loss):
                losses.append(total / max(start + idx.size, 1))
                return losses
            if max_steps is not None and step >= max_steps:
                losses.append(total / max(start + idx.size, 1))
                return losses
        losses.append(total / n)
        if on_epoch is not None and on_epoch(epoch, losses[-1]):
            break
    return losses


def interleaved_medians(funcs, repeats, warmup=True):
    """Median wall time (seconds) of each zero-argument callable in ``funcs`` (a dict),
    timed in turns (A, B, C, A, B, C, ...) so that load from other processes on a
    shared machine falls on all of them alike; one untimed warm-up call each first."""
    if warmup:
        for f in funcs.values():
            f()
    times = {k: [] for k in funcs}
    for _ in range(repeats):
        for k, f in funcs.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return {k: float(np.median(v)) for k, v in times.items()}
