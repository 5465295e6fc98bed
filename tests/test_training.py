"""Training utilities: losses (values, stability, finite differences), optimizers against
their update rules and torch.optim, L1/L2 penalties, early stopping, the three-way split,
fit, and a seeded end-to-end run on a two-class problem with and without each regularizer."""
import math
import sys

import numpy as np
import pytest

import fastnorm
import fastnorm.layers as L
from fastnorm import optim
from _gradcheck import numeric_gradient


# ---------------------------------------------------------------------------- losses

def test_softmax_cross_entropy_value_and_gradient(rng):
    logits = rng.standard_normal((6, 4)) * 3
    labels = rng.integers(0, 4, 6)
    loss, grad = fastnorm.softmax_cross_entropy(logits, labels)
    prob = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    assert loss == pytest.approx(-np.log(prob[np.arange(6), labels]).mean(), rel=1e-13)
    work = logits.copy()
    numeric = numeric_gradient(lambda: fastnorm.softmax_cross_entropy(work, labels)[0], work)
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-9)
    total, grad_sum = fastnorm.softmax_cross_entropy(logits, labels, reduction="sum")
    assert total == pytest.approx(6 * loss, rel=1e-13)
    np.testing.assert_allclose(grad_sum, 6 * grad, rtol=1e-13)


def test_softmax_cross_entropy_is_stable_for_large_logits():
    logits = np.array([[1e4, 0.0, -1e4], [-5e3, 5e3 + 2.0, 5e3]], np.float32)
    loss, grad = fastnorm.softmax_cross_entropy(logits, np.array([0, 2]))
    assert math.isfinite(loss) and np.isfinite(grad).all() and grad.dtype == np.float32
    # Row 0 is certain and right (loss 0); row 1 is off by a logit gap of 2: log(1 + e^2).
    assert loss == pytest.approx(np.log1p(np.exp(2.0)) / 2, rel=1e-6)
    shifted, _ = fastnorm.softmax_cross_entropy(logits.astype(np.float64) - 1e3, np.array([0, 2]))
    assert shifted == pytest.approx(loss, rel=1e-6)


def test_softmax_cross_entropy_soft_targets_match_labels(rng):
    logits = rng.standard_normal((5, 3))
    labels = rng.integers(0, 3, 5)
    onehot = np.eye(3)[labels]
    a = fastnorm.softmax_cross_entropy(logits, labels)
    b = fastnorm.softmax_cross_entropy(logits, onehot)
    assert a[0] == pytest.approx(b[0], rel=1e-13)
    np.testing.assert_allclose(a[1], b[1], atol=1e-15)
    soft = rng.dirichlet(np.ones(3), size=5)
    work = logits.copy()
    numeric = numeric_gradient(lambda: fastnorm.softmax_cross_entropy(work, soft)[0], work)
    np.testing.assert_allclose(fastnorm.softmax_cross_entropy(logits, soft)[1], numeric, rtol=1e-6, atol=1e-9)


def test_mse_loss(rng):
    p, t = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    loss, grad = fastnorm.mse_loss(p, t)
    assert loss == pytest.approx(np.mean((p - t) ** 2), rel=1e-13)
    work = p.copy()
    np.testing.assert_allclose(grad, numeric_gradient(lambda: fastnorm.mse_loss(work, t)[0], work),
                               rtol=1e-6, atol=1e-9)
    total, grad_sum = fastnorm.mse_loss(p, t, reduction="sum")
    assert total == pytest.approx(12 * loss) and np.allclose(grad_sum, 12 * grad)


def test_accuracy():
    logits = np.array([[0.0, 1.0], [2.0, 1.0], [0.0, 3.0], [1.0, 0.0]])
    assert fastnorm.accuracy(logits, np.array([1, 0, 0, 0])) == 0.75


@pytest.mark.parametrize("call, exc, message", [
    (lambda: fastnorm.softmax_cross_entropy(np.zeros((2, 3)), np.array([0, 3])), ValueError,
     r"softmax_cross_entropy: labels must lie in \[0, 3\)"),
    (lambda: fastnorm.softmax_cross_entropy(np.zeros((2, 3)), np.array([0, 1, 2])), ValueError,
     r"labels must have shape \(2,\)"),
    (lambda: fastnorm.softmax_cross_entropy(np.zeros(3), np.array([0])), ValueError, r"logits must have shape \(N, C\)"),
    (lambda: fastnorm.softmax_cross_entropy(np.zeros((2, 3)), np.zeros((2, 2))), ValueError,
     "class-probability labels must have the logits' shape"),
    (lambda: fastnorm.softmax_cross_entropy(np.zeros((2, 3)), np.array(["a", "b"])), TypeError,
     "labels must be integer class indices"),
    (lambda: fastnorm.softmax_cross_entropy(np.zeros((2, 3)), np.array([0, 1]), reduction="none"), ValueError,
     "reduction must be 'mean' or 'sum'"),
    (lambda: fastnorm.mse_loss(np.zeros(3), np.zeros(4)), ValueError, r"mse_loss: target must have the shape"),
])
def test_loss_errors(call, exc, message):
    with pytest.raises(exc, match=message):
        call()


# ---------------------------------------------------------------------------- optimizers

def one_param(rng, shape=(3, 4)):
    p = L.Parameter(rng.standard_normal(shape))
    p.grad[...] = rng.standard_normal(shape)
    return p


def test_sgd_update_rule_with_l1_and_l2(rng):
    p = one_param(rng)
    w, g = p.data.copy(), p.grad.copy()
    optim.SGD([p], lr=0.1, weight_decay=0.01, l1=0.02).step()
    np.testing.assert_allclose(p.data, w - 0.1 * (g + 0.01 * w + 0.02 * np.sign(w)), rtol=1e-14)
    np.testing.assert_array_equal(p.grad, g)  # step leaves the gradient alone


def test_sgd_momentum_and_nesterov_by_hand(rng):
    for nesterov in (False, True):
        p = one_param(rng)
        w, g = p.data.copy(), p.grad.copy()
        opt = optim.SGD([p], lr=0.1, momentum=0.9, nesterov=nesterov)
        buf = None
        for _ in range(3):
            opt.step()
            buf = g.copy() if buf is None else 0.9 * buf + g
            w = w - 0.1 * (g + 0.9 * buf if nesterov else buf)
        np.testing.assert_allclose(p.data, w, rtol=1e-13)


@pytest.mark.parametrize("name, kwargs", [
    ("SGD", {"lr": 0.1}), ("SGD", {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.01}),
    ("SGD", {"lr": 0.05, "momentum": 0.5, "nesterov": True, "weight_decay": 0.1}),
    ("Adam", {"lr": 0.01}), ("Adam", {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.1}),
    ("AdamW", {"lr": 0.01}), ("AdamW", {"lr": 0.02, "weight_decay": 0.3}),
])
def test_optimizers_match_torch(name, kwargs, rng):
    torch = pytest.importorskip("torch")
    p = one_param(rng)
    tp = torch.nn.Parameter(torch.from_numpy(p.data.copy()))
    opt = getattr(optim, name)([p], **kwargs)
    topt = getattr(torch.optim, name)([tp], **kwargs)
    for _ in range(4):
        g = rng.standard_normal(p.shape)
        p.grad[...] = g
        tp.grad = torch.from_numpy(g.copy())
        opt.step()
        topt.step()
    np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=1e-12, atol=1e-14)


def test_adam_first_step_has_size_lr_and_l1_adds_sign(rng):
    p = one_param(rng)
    w = p.data.copy()
    optim.Adam([p], lr=0.01).step()
    np.testing.assert_allclose(np.abs(p.data - w), 0.01, rtol=1e-5)
    q = L.Parameter(np.array([2.0, -3.0]))
    optim.AdamW([q], lr=0.1, weight_decay=0.0, l1=1.0).step()  # gradient is only l1 * sign(w)
    np.testing.assert_allclose(q.data, [1.9, -2.9], rtol=1e-6)


def test_penalties_and_param_groups(rng):
    model = L.Sequential(L.Linear(3, 2, seed=0, dtype=np.float64), L.Linear(2, 1, seed=1, dtype=np.float64))
    w = np.concatenate([p.data.ravel() for p in model.parameters()])
    assert optim.l2_penalty(model, 0.1) == pytest.approx(0.05 * np.sum(w ** 2), rel=1e-13)
    assert optim.l1_penalty(model.parameters(), 0.2) == pytest.approx(0.2 * np.abs(w).sum(), rel=1e-13)
    assert optim.l2_penalty(model) == pytest.approx(0.5 * np.sum(w ** 2), rel=1e-13)
    weights = [model[0].weight, model[1].weight]
    biases = [model[0].bias, model[1].bias]
    opt = optim.SGD([{"params": weights}, {"params": biases, "weight_decay": 0.0, "l1": 0.0}],
                    lr=0.1, weight_decay=0.5, l1=0.1)
    assert opt.penalty() == pytest.approx(optim.l2_penalty(weights, 0.5) + optim.l1_penalty(weights, 0.1))
    model.zero_grad()
    b_before = model[0].bias.data.copy()
    opt.step()  # zero gradients: only the regularizers move the weights, never the biases
    np.testing.assert_array_equal(model[0].bias.data, b_before)
    assert opt.param_groups[1]["weight_decay"] == 0.0 and opt.param_groups[0]["lr"] == 0.1
    opt.param_groups[0]["lr"] = 0.0  # schedules edit the groups between steps
    w_before = model[0].weight.data.copy()
    opt.step()
    np.testing.assert_array_equal(model[0].weight.data, w_before)


@pytest.mark.parametrize("call, exc, message", [
    (lambda p: optim.SGD(p, lr=-0.1), ValueError, "SGD: lr must be finite, >= 0"),
    (lambda p: optim.SGD(p, lr=0.1, nesterov=True), ValueError, "SGD: nesterov=True requires momentum > 0"),
    (lambda p: optim.SGD([], lr=0.1), ValueError, "SGD: params is empty"),
    (lambda p: optim.SGD(p[0], lr=0.1), TypeError, "got a single Parameter"),
    (lambda p: optim.SGD([np.zeros(3)], lr=0.1), TypeError, "SGD: params must hold fastnorm Parameters"),
    (lambda p: optim.SGD(p + p, lr=0.1), ValueError, "appears more than once"),
    (lambda p: optim.Adam(p, betas=(0.9, 1.0)), ValueError, r"Adam: betas\[1\] must be finite, >= 0 and < 1"),
    (lambda p: optim.AdamW([{"params": p, "momentum": 0.9}]), ValueError, "AdamW: unknown parameter-group options"),
    (lambda p: optim.SGD(p, lr="0.1"), TypeError, "SGD: lr must be a real number"),
    (lambda p: optim.l2_penalty(p, -1.0), ValueError, "l2_penalty: weight_decay"),
])
def test_optimizer_errors(call, exc, message, rng):
    with pytest.raises(exc, match=message):
        call([one_param(rng)])


# ---------------------------------------------------------------------------- early stopping, split

class Box:
    """A stand-in model whose state is one number."""
    def __init__(self):
        self.value = 0.0

    def state_dict(self):
        return {"value": np.array(self.value)}

    def load_state_dict(self, state):
        self.value = float(state["value"])
        return self


def test_early_stopping_patience_restore_and_modes():
    box, stopper = Box(), fastnorm.EarlyStopping(patience=2, min_delta=0.01)
    decisions = []
    for epoch, loss in enumerate([1.0, 0.8, 0.795, 0.9, 0.7, 0.75, 0.71, 0.72]):
        box.value = epoch
        decisions.append(stopper.step(loss, box))
        if decisions[-1]:
            break
    # 0.795 is within min_delta of 0.8: not an improvement.  Two misses after 0.7 stop it.
    assert decisions == [False, False, False, True]
    assert stopper.best == 0.8 and stopper.best_step == 1 and stopper.stopped
    box.value = 99
    stopper.restore(box)
    assert box.value == 1
    up = fastnorm.EarlyStopping(patience=1, mode="max")
    assert [up.step(a) for a in (0.5, 0.6, float("nan"))] == [False, False, True]
    assert up.best == 0.6
    zero = fastnorm.EarlyStopping(patience=0)
    assert [zero.step(v) for v in (3.0, 2.0, 2.5)] == [False, False, True]


def test_early_stopping_restores_a_layer(rng):
    layer = L.Linear(3, 2, seed=0)
    stopper = fastnorm.EarlyStopping(patience=1)
    stopper.step(1.0, layer)
    best = layer.weight.data.copy()
    layer.weight.data += 1
    stopper.step(2.0, layer)
    stopper.restore(layer)
    np.testing.assert_array_equal(layer.weight.data, best)


@pytest.mark.parametrize("call, exc, message", [
    (lambda: fastnorm.EarlyStopping(patience=-1), ValueError, "EarlyStopping: patience must be >= 0"),
    (lambda: fastnorm.EarlyStopping(patience=1.5), TypeError, "EarlyStopping: patience must be an int"),
    (lambda: fastnorm.EarlyStopping(2, mode="best"), ValueError, "EarlyStopping: mode must be 'min' or 'max'"),
    (lambda: fastnorm.EarlyStopping(2, min_delta=-0.1), ValueError, "EarlyStopping: min_delta"),
    (lambda: fastnorm.EarlyStopping(2).restore(Box()), RuntimeError, "EarlyStopping.restore: no state"),
    (lambda: fastnorm.EarlyStopping(2).step("low"), TypeError, "EarlyStopping.step: value"),
])
def test_early_stopping_errors(call, exc, message):
    with pytest.raises(exc, match=message):
        call()


def test_train_val_test_split():
    X = np.arange(200).reshape(100, 2)
    y = np.arange(100)
    (xt, yt), (xv, yv), (xs, ys) = fastnorm.train_val_test_split(X, y, (0.7, 0.2, 0.1), seed=3)
    assert (len(yt), len(yv), len(ys)) == (70, 20, 10)
    np.testing.assert_array_equal(np.sort(np.concatenate([yt, yv, ys])), y)  # disjoint, complete
    np.testing.assert_array_equal(xt[:, 0], 2 * yt)  # rows stay paired with their labels
    again = fastnorm.train_val_test_split(X, y, (0.7, 0.2, 0.1), seed=3)
    np.testing.assert_array_equal(again[1][1], yv)
    other = fastnorm.train_val_test_split(X, y, (0.7, 0.2, 0.1), seed=4)
    assert not np.array_equal(other[1][1], yv)
    ordered = fastnorm.train_val_test_split(X, y, (0.5, 0.25, 0.25), shuffle=False)
    np.testing.assert_array_equal(ordered[2][1], np.arange(75, 100))
    with pytest.raises(ValueError, match="fractions must be three non-negative numbers summing to 1"):
        fastnorm.train_val_test_split(X, y, (0.7, 0.2, 0.2))
    with pytest.raises(ValueError, match="the same number of samples"):
        fastnorm.train_val_test_split(X, y[:-1])
    with pytest.raises(ValueError, match="too few"):
        fastnorm.train_val_test_split(X[:2], y[:2], (0.2, 0.4, 0.4))


# ---------------------------------------------------------------------------- end to end

def two_class_data(seed=0, n=800, noise_dims=6):
    """Inside or outside a circle in two informative dimensions, plus noise dimensions
    (not linearly separable; the noise inputs are what L1 should silence)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 2 + noise_dims))
    y = (X[:, 0] ** 2 + X[:, 1] ** 2 > 1.4).astype(np.int64)
    return X.astype(np.float32), y


def build(config, d, hidden=32):
    layers = [L.Linear(d, hidden, init="he", seed=1, weight_dropout=0.2 if config == "dropconnect" else 0.0)]
    if config == "batchnorm":
        layers.append(L.BatchNorm1d(hidden))
    layers.append(L.ReLU())
    if config == "dropout":
        layers.append(L.Dropout(0.2, seed=2))
    layers.append(L.Linear(hidden, 2, seed=3))
    model = L.Sequential(*layers)
    if config == "adam":
        return model, optim.Adam(model, lr=0.01)
    if config == "adamw":
        return model, optim.AdamW(model, lr=0.01, weight_decay=0.05)
    extra = {"l2": {"weight_decay": 1e-3}, "l1": {"l1": 1e-3}}.get(config, {})
    return model, optim.SGD(model, lr=0.05, momentum=0.9, **extra)


@pytest.fixture(scope="module")
def splits():
    X, y = two_class_data()
    return fastnorm.train_val_test_split(X, y, (0.6, 0.2, 0.2), seed=0)


def train(config, splits):
    (Xtr, ytr), (Xva, yva), (Xte, yte) = splits
    model, opt = build(config, Xtr.shape[1])
    # 20 epochs of 15 batches: 300 steps.
    history = fastnorm.fit(model, fastnorm.softmax_cross_entropy, opt, Xtr, ytr, epochs=20, batch_size=32,
                           validation=(Xva, yva), seed=4, progress=False)
    model.eval()
    return model, history, fastnorm.accuracy(model(Xte), yte)


@pytest.mark.parametrize("config", ["none", "l2", "l1", "dropout", "dropconnect", "batchnorm", "adam", "adamw"])
def test_end_to_end_two_class_reaches_90_percent(config, splits, backend):
    model, history, test_accuracy = train(config, splits)
    assert len(history["loss"]) == 20 and history["loss"][-1] < 0.5 * history["loss"][0]
    assert history["val_accuracy"][-1] >= 0.88
    assert test_accuracy >= 0.90, f"{config}: test accuracy {test_accuracy:.3f}"


def test_regularizers_shrink_the_weights(splits):
    def norms(config):
        model = train(config, splits)[0]
        w = np.concatenate([p.data.ravel() for p in model.parameters()]).astype(np.float64)
        return np.abs(w).sum(), np.square(w).sum()

    plain_l1, plain_l2 = norms("none")
    assert norms("l1")[0] < 0.9 * plain_l1
    assert norms("l2")[1] < 0.9 * plain_l2


def test_seeded_training_is_reproducible(splits):
    a, b = train("dropout", splits), train("dropout", splits)
    assert a[1]["loss"] == b[1]["loss"]
    for pa, pb in zip(a[0].parameters(), b[0].parameters()):
        np.testing.assert_array_equal(pa.data, pb.data)


def test_fit_with_early_stopping_restores_best(splits):
    (Xtr, ytr), (Xva, yva), _ = splits
    model, opt = build("none", Xtr.shape[1])
    stopper = fastnorm.EarlyStopping(patience=2)
    opt.param_groups[0]["lr"] = 0.5  # too large: validation loss soon stops improving
    history = fastnorm.fit(model, fastnorm.softmax_cross_entropy, opt, Xtr, ytr, epochs=60, batch_size=32,
                           validation=(Xva, yva), early_stopping=stopper, seed=1)
    assert stopper.stopped and len(history["val_loss"]) < 60
    assert len(history["val_loss"]) == stopper.best_step + 1 + stopper.patience
    assert min(history["val_loss"]) == stopper.best
    model.eval()
    restored, _ = fastnorm.softmax_cross_entropy(model(Xva), yva)
    assert restored == pytest.approx(stopper.best, rel=1e-6)
    assert set(history) == {"loss", "penalty", "val_loss", "val_accuracy"}


def test_fit_penalty_history_and_progress_flag(splits, monkeypatch):
    (Xtr, ytr), _, _ = splits
    model, opt = build("l2", Xtr.shape[1])
    monkeypatch.setitem(sys.modules, "tqdm", None)  # tqdm is optional: no bar, no error
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    history = fastnorm.fit(model, fastnorm.softmax_cross_entropy, opt, Xtr[:64], ytr[:64], epochs=2,
                           batch_size=16, progress=True)
    assert set(history) == {"loss", "penalty"}
    assert history["penalty"][-1] == pytest.approx(opt.penalty()) and history["penalty"][-1] > 0
    with pytest.raises(ValueError, match="fit: batch_size must be a positive int"):
        fastnorm.fit(model, fastnorm.softmax_cross_entropy, opt, Xtr, ytr, epochs=1, batch_size=0)
