"""Layer API: every layer's backward against finite differences through the layer (float64,
random upstream gradients), a Linear -> BatchNorm1d -> ReLU -> Dropout -> Linear stack on its
loss, train/eval semantics, state dicts (np.savez round trip, PyTorch-named state), errors,
and optional parity with torch.nn modules."""
import numpy as np
import pytest

import fastnorm
import fastnorm.layers as L
from _gradcheck import numeric_gradient

F64 = np.float64


# ---------------------------------------------------------------------------- finite differences

def replay_dropout(layer):
    """A callable that puts every dropout stream in ``layer`` back where it is now, so the
    next forward draws the same masks (how a mask is held fixed for finite differences)."""
    streams = []
    for sub in iter_layers(layer):
        if isinstance(sub, L.Dropout):
            streams.append((sub, "offset", sub.offset))
        if isinstance(sub, L.Linear):
            streams.append((sub, "dropconnect_offset", sub.dropconnect_offset))

    def reset():
        for sub, attr, value in streams:
            setattr(sub, attr, value)
    return reset


def iter_layers(layer):
    yield layer
    for child in layer._children.values():
        yield from iter_layers(child)


def check_gradients(layer, x, rng, *, rtol=1e-6, atol=1e-8):
    """backward of sum(layer(x) * G) for a random G against central differences, for the
    input and every parameter."""
    reset = replay_dropout(layer)
    layer.train()
    y = layer(x.copy())
    upstream = rng.standard_normal(y.shape)

    def loss():
        reset()
        return float(np.sum(layer(x_work.copy()) * upstream))

    x_work = x.copy()
    reset()
    layer.zero_grad()
    layer(x.copy())
    grad_x = layer.backward(upstream.copy())
    analytic = {name: p.grad.copy() for name, p in layer.named_parameters()}
    np.testing.assert_allclose(grad_x, numeric_gradient(loss, x_work), rtol=rtol, atol=atol,
                               err_msg=f"{layer!r}: grad_input")
    for name, p in layer.named_parameters():
        np.testing.assert_allclose(analytic[name], numeric_gradient(loss, p.data), rtol=rtol, atol=atol,
                                   err_msg=f"{layer!r}: grad of {name}")


def away_from(x, kinks, gap=0.05):
    """x with every element pushed at least ``gap`` away from the points in kinks."""
    x = x.copy()
    for k in kinks:
        near = np.abs(x - k) < gap
        x[near] = k + np.where(x[near] >= k, gap, -gap)
    return x


def randomize(layer, rng):
    """Random values for every parameter (ones/zeros would hide terms of the gradient)."""
    for p in layer.parameters():
        p.data[...] = rng.standard_normal(p.shape) * 0.5 + (1.0 if p.data.ndim else 0.0)
    return layer


ACTIVATIONS = [
    (L.ReLU, {}), (L.ReLU, {"inplace": True}), (L.ReLU6, {}), (L.ReLU6, {"inplace": True}),
    (L.LeakyReLU, {"negative_slope": 0.2}), (L.LeakyReLU, {"negative_slope": 0.2, "inplace": True}),
    (L.LeakyReLU, {"negative_slope": -0.3, "inplace": True}),
    (L.ELU, {"alpha": 0.7}), (L.ELU, {"inplace": True}), (L.SELU, {}), (L.SELU, {"inplace": True}),
    (L.CELU, {"alpha": 1.3}), (L.GELU, {}), (L.GELU, {"approximate": "tanh"}),
    (L.SiLU, {}), (L.Swish, {"inplace": True}), (L.Softplus, {"beta": 2.0, "threshold": 20.0}),
    (L.Mish, {}), (L.Mish, {"inplace": True}), (L.Sigmoid, {}), (L.Tanh, {}),
    (L.Hardsigmoid, {}), (L.Hardsigmoid, {"inplace": True}), (L.Hardswish, {}), (L.Softsign, {}),
]


@pytest.mark.parametrize("cls, kwargs", ACTIVATIONS, ids=lambda v: getattr(v, "__name__", str(v)))
def test_activation_layers_finite_differences(cls, kwargs, backend, rng):
    x = away_from(rng.uniform(-5, 8, size=(3, 7)), [0.0, -3.0, 3.0, 6.0])
    check_gradients(cls(**kwargs), x, rng)


@pytest.mark.parametrize("cls, kwargs", ACTIVATIONS, ids=lambda v: getattr(v, "__name__", str(v)))
def test_activation_layers_match_kernels(cls, kwargs, rng):
    """Output = the kernel's output; inplace writes into x and returns it; the backward is
    the kernel's backward whatever was kept (input, copy or output)."""
    x = rng.uniform(-5, 8, size=(4, 5))
    g = rng.standard_normal(x.shape)
    fn = cls._forward_fn.__name__
    params = {k: v for k, v in kwargs.items() if k != "inplace"}
    expected = getattr(fastnorm, fn)(x, **params)
    saved = expected if cls in (L.Sigmoid, L.Tanh) else x
    expected_grad = getattr(fastnorm, fn + "_backward")(g, saved, **params)
    layer = cls(**kwargs)
    x_in = x.copy()
    y = layer(x_in)
    np.testing.assert_array_equal(y, expected)
    if kwargs.get("inplace"):
        assert y is x_in
    else:
        np.testing.assert_array_equal(x_in, x)
    np.testing.assert_array_equal(layer.backward(g), expected_grad)


@pytest.mark.parametrize("make, shape", [
    (lambda: L.Linear(5, 3, seed=1, dtype=F64), (4, 5)),
    (lambda: L.Linear(5, 3, bias=False, init="he", seed=1, dtype=F64), (4, 5)),
    (lambda: L.Linear(4, 2, init="glorot", seed=1, dtype=F64), (2, 3, 4)),
    (lambda: L.Linear(5, 3, weight_dropout=0.4, seed=1, dtype=F64), (4, 5)),
    (lambda: L.Dropout(0.4, seed=3), (5, 6)),
    (lambda: L.Dropout(0.4, inplace=True, seed=3), (5, 6)),
    (lambda: L.Dropout(0.0), (3, 4)),
    (lambda: L.Flatten(), (2, 3, 4)),
    (lambda: L.Flatten(0, 1), (2, 3, 4)),
    (lambda: L.BatchNorm1d(4, dtype=F64), (6, 4)),
    (lambda: L.BatchNorm1d(3, momentum=None, dtype=F64), (4, 3, 5)),
    (lambda: L.BatchNorm1d(4, affine=False, dtype=F64), (6, 4)),
    (lambda: L.BatchNorm1d(4, track_running_stats=False, dtype=F64), (6, 4)),
    (lambda: L.BatchNorm2d(3, dtype=F64), (2, 3, 3, 2)),
    (lambda: L.BatchNorm3d(2, dtype=F64), (2, 2, 2, 2, 3)),
    (lambda: L.LayerNorm(5, dtype=F64), (4, 5)),
    (lambda: L.LayerNorm((3, 4), dtype=F64), (2, 3, 4)),
    (lambda: L.LayerNorm(5, bias=False, dtype=F64), (4, 5)),
    (lambda: L.LayerNorm(5, elementwise_affine=False, dtype=F64), (4, 5)),
    (lambda: L.GroupNorm(2, 4, dtype=F64), (3, 4, 5)),
    (lambda: L.GroupNorm(1, 3, affine=False, dtype=F64), (2, 3, 2, 2)),
    (lambda: L.InstanceNorm1d(3, affine=True, dtype=F64), (2, 3, 6)),
    (lambda: L.InstanceNorm2d(3, affine=True, track_running_stats=True, dtype=F64), (3, 3, 3)),
    (lambda: L.InstanceNorm3d(2, dtype=F64), (2, 2, 2, 2, 2)),
    (lambda: L.RMSNorm(5, dtype=F64), (4, 5)),
    (lambda: L.RMSNorm((2, 3), eps=1e-3, dtype=F64), (4, 2, 3)),
], ids=lambda v: v if isinstance(v, tuple) else "")
def test_layer_finite_differences(make, shape, backend, rng):
    layer = randomize(make(), rng)
    x = rng.standard_normal(shape) * 1.5 + 0.3
    check_gradients(layer, x, rng)


def mlp(seed=0, p=0.3, dtype=F64, **linear):
    return L.Sequential(L.Linear(4, 6, seed=seed, dtype=dtype, **linear), L.BatchNorm1d(6, dtype=dtype),
                        L.ReLU(), L.Dropout(p, seed=seed + 1), L.Linear(6, 3, seed=seed + 2, dtype=dtype))


def test_sequential_finite_differences_on_loss(backend, num_threads, rng):
    """Linear -> BatchNorm1d -> ReLU -> Dropout -> Linear, softmax cross-entropy: the
    dropout stream is rewound before every forward, so both evaluations of a difference
    use the same mask."""
    model = randomize(mlp(seed=4), rng)
    x = rng.standard_normal((8, 4))
    labels = rng.integers(0, 3, size=8)
    reset = replay_dropout(model)

    def loss():
        reset()
        return fastnorm.softmax_cross_entropy(model(x_work.copy()), labels)[0]

    x_work = x.copy()
    reset()
    model.zero_grad()
    value, grad = fastnorm.softmax_cross_entropy(model(x.copy()), labels)
    mask = model[3]._saved.numpy()
    assert 0 < mask.sum() < mask.size  # some units really dropped
    grad_x = model.backward(grad)
    analytic = {n: p.grad.copy() for n, p in model.named_parameters()}
    assert loss() == value  # the replayed mask gives the same loss
    np.testing.assert_allclose(grad_x, numeric_gradient(loss, x_work), rtol=1e-6, atol=1e-9)
    for name, p in model.named_parameters():
        np.testing.assert_allclose(analytic[name], numeric_gradient(loss, p.data), rtol=1e-6, atol=1e-9,
                                   err_msg=name)


def test_sequential_with_dropconnect_finite_differences(backend, rng):
    model = randomize(mlp(seed=9, weight_dropout=0.3), rng)
    check_gradients(model, rng.standard_normal((6, 4)), rng)


def test_gradients_accumulate_and_zero_grad(rng):
    layer = L.Linear(3, 2, seed=0, dtype=F64)
    x, g = rng.standard_normal((4, 3)), rng.standard_normal((4, 2))
    layer(x)
    layer.backward(g)
    once = layer.weight.grad.copy()
    layer.backward(g)
    np.testing.assert_allclose(layer.weight.grad, 2 * once)
    np.testing.assert_allclose(once, g.T @ x)
    layer.zero_grad()
    assert not layer.weight.grad.any() and not layer.bias.grad.any()


# ---------------------------------------------------------------------------- layers on larger inputs

def conv_stack(seed):
    return L.Sequential(L.BatchNorm2d(8), L.GELU(), L.GroupNorm(4, 8), L.Dropout(0.25, seed=seed),
                        L.InstanceNorm2d(8, affine=True), L.Flatten(), L.LayerNorm(8 * 24 * 24),
                        L.Linear(8 * 24 * 24, 5, seed=seed))


def run_stack(x, g):
    model = conv_stack(11)
    y = model(x)
    gx = model.backward(g)
    model.eval()
    y_eval = model(x)
    return [y, gx, y_eval] + [p.grad for p in model.parameters()] + list(model.state_dict().values())


def test_stack_matches_numpy_backend(backend, num_threads, rng):
    """float32 stack on inputs big enough to use both threads: same results as the NumPy
    backend (dropout masks are bit-identical across backends)."""
    x = (rng.standard_normal((16, 8, 24, 24)) * 3 + 1).astype(np.float32)
    g = rng.standard_normal((16, 5)).astype(np.float32)
    got = run_stack(x, g)
    with fastnorm.use_backend("numpy"):
        expected = run_stack(x, g)
    for i, (a, b) in enumerate(zip(got, expected)):
        assert a.dtype == b.dtype and a.shape == b.shape
        scale = max(1.0, float(np.abs(b).max()))
        np.testing.assert_allclose(a, b, rtol=0, atol=2e-4 * scale, err_msg=f"output {i}")


# ---------------------------------------------------------------------------- train / eval

def test_dropout_eval_is_identity_and_training_draws_fresh_masks(backend, rng):
    x = rng.standard_normal((64, 32)).astype(np.float32)
    layer = L.Dropout(0.5, seed=42)
    layer.eval()
    assert layer(x) is x and layer.offset == 0
    with pytest.raises(RuntimeError, match="Dropout.backward"):
        layer.backward(x)
    layer.train()
    y1, m1 = layer(x), layer._saved
    y2 = layer(x)
    assert m1.next_offset == layer._saved.offset == layer.offset - (layer._saved.next_offset - layer._saved.offset)
    assert not np.array_equal(y1, y2)
    keep = m1.numpy()
    np.testing.assert_array_equal(y1, np.where(keep, x * np.float32(2.0), 0))
    assert 0.4 < keep.mean() < 0.6
    twin = L.Dropout(0.5, seed=42)  # same seed: same sequence of masks, run to run
    np.testing.assert_array_equal(twin(x), y1)
    np.testing.assert_array_equal(twin(x), y2)
    g = rng.standard_normal(x.shape).astype(np.float32)
    np.testing.assert_array_equal(twin.backward(g), np.where(twin._saved.numpy(), g * np.float32(2.0), 0))
    assert L.Dropout(0.5).seed != L.Dropout(0.5).seed  # unseeded layers draw their own seed


def test_dropconnect_training_and_eval(backend, rng):
    layer = L.Linear(20, 10, weight_dropout=0.5, seed=3, dtype=F64)
    x = rng.standard_normal((7, 20))
    y = layer(x)
    mask = layer._saved[2].numpy()
    assert 0.3 < mask.mean() < 0.7
    w_eff = np.where(mask, layer.weight.data * 2.0, 0.0)
    np.testing.assert_allclose(y, x @ w_eff.T + layer.bias.data, rtol=1e-12, atol=1e-12)
    g = rng.standard_normal(y.shape)
    layer.backward(g)
    assert not layer.weight.grad[~mask].any()  # dropped weights get no gradient
    assert not np.array_equal(layer(x), y)  # a fresh mask per forward
    layer.eval()
    np.testing.assert_allclose(layer(x), x @ layer.weight.data.T + layer.bias.data, rtol=1e-12)


def test_batch_norm_running_statistics_and_eval(backend, rng):
    layer = randomize(L.BatchNorm1d(3, momentum=0.2, dtype=F64), rng)
    rm, rv = np.zeros(3), np.ones(3)
    for step in range(3):
        x = rng.standard_normal((10, 3)) * 2 + step
        y = layer(x)
        rm = 0.8 * rm + 0.2 * x.mean(axis=0)
        rv = 0.8 * rv + 0.2 * x.var(axis=0, ddof=1)
        expected = (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-5) * layer.weight.data + layer.bias.data
        np.testing.assert_allclose(y, expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(layer.running_mean, rm, rtol=1e-12)
    np.testing.assert_allclose(layer.running_var, rv, rtol=1e-12)
    assert int(layer.num_batches_tracked) == 3
    layer.eval()
    before = layer.running_mean.copy(), layer.running_var.copy()
    x = rng.standard_normal((5, 3))
    y = layer(x)
    np.testing.assert_allclose(y, (x - rm) / np.sqrt(rv + 1e-5) * layer.weight.data + layer.bias.data,
                               rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(layer.running_mean, before[0])  # eval leaves the statistics alone
    np.testing.assert_array_equal(layer.running_var, before[1])
    assert int(layer.num_batches_tracked) == 3
    single = layer(x[:1])  # one sample is fine in eval mode
    np.testing.assert_allclose(single, y[:1], rtol=1e-12)
    with pytest.raises(RuntimeError, match="BatchNorm1d.backward"):
        layer.backward(y)


def test_batch_norm_cumulative_average_and_untracked(backend, rng):
    layer = L.BatchNorm2d(2, momentum=None, dtype=F64)
    batches = [rng.standard_normal((3, 2, 2, 2)) + i for i in range(4)]
    for x in batches:
        layer(x)
    means = [x.mean(axis=(0, 2, 3)) for x in batches]
    np.testing.assert_allclose(layer.running_mean, np.mean(means, axis=0), rtol=1e-12)
    untracked = L.BatchNorm1d(2, track_running_stats=False, dtype=F64).eval()
    assert set(untracked.state_dict()) == {"weight", "bias"}
    x = rng.standard_normal((6, 2))
    np.testing.assert_allclose(untracked(x), (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-5), rtol=1e-10)


def test_instance_norm_running_statistics_eval(backend, rng):
    layer = L.InstanceNorm1d(2, track_running_stats=True, momentum=0.5, dtype=F64)
    x = rng.standard_normal((3, 2, 5)) + 2
    layer(x)
    np.testing.assert_allclose(layer.running_mean, 0.5 * x.mean(axis=(0, 2)), rtol=1e-12)
    np.testing.assert_allclose(layer.running_var, 0.5 + 0.5 * x.var(axis=2, ddof=1).mean(0), rtol=1e-12)
    assert int(layer.num_batches_tracked) == 0  # PyTorch never counts for instance norm
    layer.eval()
    y = layer(x[0])  # unbatched (C, L)
    expected = (x[0] - layer.running_mean[:, None]) / np.sqrt(layer.running_var[:, None] + 1e-5)
    np.testing.assert_allclose(y, expected, rtol=1e-10)


def test_train_eval_propagate_and_return_self():
    model = mlp()
    assert model.eval() is model and not any(m.training for m in iter_layers(model))
    assert model.train() is model and all(m.training for m in iter_layers(model))


# ---------------------------------------------------------------------------- state dicts

def trained_mlp(rng, seed=0):
    model = mlp(seed=seed, dtype=np.float32)
    for _ in range(3):
        x = rng.standard_normal((16, 4)).astype(np.float32)
        model(x)
        model.backward(rng.standard_normal((16, 3)).astype(np.float32))
    return model


def test_state_dict_savez_round_trip(tmp_path, rng):
    model = trained_mlp(rng)
    state = model.state_dict()
    assert list(state) == ["0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var",
                           "1.num_batches_tracked", "4.weight", "4.bias"]
    assert all(type(v) is np.ndarray for v in state.values())
    assert state["1.num_batches_tracked"].dtype == np.int64 and int(state["1.num_batches_tracked"]) == 3
    np.savez(tmp_path / "model.npz", **state)
    fresh = mlp(seed=99, dtype=np.float32)
    weight_object = fresh[0].weight
    with np.load(tmp_path / "model.npz") as loaded:
        assert fresh.load_state_dict(loaded) is fresh
    assert fresh[0].weight is weight_object  # optimizers holding parameters stay valid
    for key, value in fresh.state_dict().items():
        np.testing.assert_array_equal(value, state[key], err_msg=key)
    x = rng.standard_normal((5, 4)).astype(np.float32)
    np.testing.assert_array_equal(fresh.eval()(x), model.eval()(x))
    fresh.train(), model.train()
    model[3].offset = fresh[3].offset = 0
    model[3].seed = fresh[3].seed
    np.testing.assert_array_equal(fresh(x), model(x))


def test_state_dict_is_a_copy_and_load_casts(rng):
    layer = L.BatchNorm1d(3)
    state = layer.state_dict()
    state["weight"][...] = 5
    assert (layer.weight.data == 1).all()
    state64 = {k: v.astype(np.float64) if v.dtype.kind == "f" else v for k, v in state.items()}
    layer.load_state_dict(state64)
    assert layer.weight.data.dtype == np.float32 and (layer.weight.data == 5).all()
    assert layer.running_mean.dtype == np.float32


def test_to_dtype_converts_parameters_and_buffers(rng):
    model = mlp(dtype=np.float32).to(np.float64)
    assert all(p.data.dtype == F64 and p.grad.dtype == F64 for p in model.parameters())
    assert model[1].running_var.dtype == F64 and model[1].num_batches_tracked.dtype == np.int64
    assert model(rng.standard_normal((4, 4))).dtype == F64


def test_parameters_order_and_repr():
    model = L.Sequential(L.Linear(3, 4), L.LayerNorm(4), L.Sequential(L.GELU("tanh"), L.Linear(4, 2, bias=False)))
    names = [n for n, _ in model.named_parameters()]
    assert names == ["0.weight", "0.bias", "1.weight", "1.bias", "2.1.weight"]
    assert model.parameters()[0] is model[0].weight
    text = repr(model)
    assert "(0): Linear(in_features=3, out_features=4, bias=True)" in text
    assert "(1): LayerNorm((4,), eps=1e-05, elementwise_affine=True)" in text
    assert "GELU(approximate='tanh')" in text and "(2): Sequential(" in text
    assert repr(L.ReLU(inplace=True)) == "ReLU(inplace=True)"
    assert repr(L.Dropout(0.2)) == "Dropout(p=0.2)"
    assert repr(L.LeakyReLU(0.1)) == "LeakyReLU(negative_slope=0.1)"
    assert repr(L.BatchNorm2d(8)) == "BatchNorm2d(8, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)"
    assert repr(L.Linear(2, 2, weight_dropout=0.5)).endswith("weight_dropout=0.5)")
    assert fastnorm.Swish is fastnorm.SiLU and fastnorm.Linear is L.Linear


def test_linear_initializations():
    rng_ok = {}
    for init in ("default", "he", "he_uniform", "glorot", "glorot_normal"):
        w = L.Linear(400, 300, init=init, seed=0, dtype=F64).weight.data
        rng_ok[init] = w.std()
    np.testing.assert_allclose(rng_ok["default"], 1 / np.sqrt(400) / np.sqrt(3), rtol=0.02)
    np.testing.assert_allclose(rng_ok["he"], np.sqrt(2 / 400), rtol=0.02)
    np.testing.assert_allclose(rng_ok["he_uniform"], np.sqrt(2 / 400), rtol=0.02)
    np.testing.assert_allclose(rng_ok["glorot"], np.sqrt(2 / 700), rtol=0.02)
    np.testing.assert_allclose(rng_ok["glorot_normal"], np.sqrt(2 / 700), rtol=0.02)
    assert not L.Linear(4, 3, init="he").bias.data.any()
    a, b = L.Linear(4, 3, seed=5), L.Linear(4, 3, seed=5)
    np.testing.assert_array_equal(a.weight.data, b.weight.data)
    assert a.weight.data.dtype == np.float32


# ---------------------------------------------------------------------------- errors

def test_error_wrong_input_width():
    with pytest.raises(ValueError, match=r"Linear: x must have in_features=4 .* got shape \(2, 5\)"):
        L.Linear(4, 3)(np.zeros((2, 5), np.float32))
    with pytest.raises(ValueError, match="BatchNorm1d: x must have num_features=3"):
        L.BatchNorm1d(3)(np.zeros((4, 5), np.float32))
    with pytest.raises(ValueError, match=r"BatchNorm2d: expected x of 4 dimensions"):
        L.BatchNorm2d(3)(np.zeros((4, 3), np.float32))
    with pytest.raises(ValueError, match="LayerNorm: x must end with normalized_shape"):
        L.LayerNorm(4)(np.zeros((4, 5), np.float32))
    with pytest.raises(ValueError, match="GroupNorm: x must have shape"):
        L.GroupNorm(2, 4)(np.zeros((4, 6, 2), np.float32))
    with pytest.raises(ValueError, match="InstanceNorm2d: expected x of 4 dimensions"):
        L.InstanceNorm2d(3)(np.zeros((4, 3), np.float32))
    with pytest.raises(TypeError, match=r"Linear: x must have the dtype of the layer's parameters \(float32\)"):
        L.Linear(4, 3)(np.zeros((2, 4)))
    with pytest.raises(TypeError, match="ReLU: x must have dtype float16, float32 or float64"):
        L.ReLU()(np.zeros(3, np.int64))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        L.BatchNorm1d(3)(np.zeros((1, 3), np.float32))


@pytest.mark.parametrize("layer", [L.ReLU(), L.Tanh(), L.LayerNorm(3, dtype=F64)],
                         ids=lambda layer: type(layer).__name__)
def test_backward_takes_grad_output_as_numpy_would(layer, rng):
    """A nested list, a byte-swapped array and an ndarray subclass give the gradient of
    the plain array (they are converted, not refused)."""
    x = rng.standard_normal((2, 3))
    g = rng.standard_normal((2, 3))
    layer(x)
    expected = layer.backward(g)

    class Tagged(np.ndarray):
        pass

    for like in (g.tolist(), g.astype(g.dtype.newbyteorder()), g.view(Tagged)):
        layer(x)
        np.testing.assert_array_equal(layer.backward(like), expected)


def test_failed_batch_norm_forward_does_not_count_the_batch():
    layer = L.BatchNorm1d(3)
    with pytest.raises(ValueError):
        layer(np.zeros((1, 3), np.float32))
    assert int(layer.num_batches_tracked) == 0


@pytest.mark.parametrize("layer", [L.ReLU(), L.Sigmoid(), L.Linear(2, 2), L.BatchNorm1d(2), L.Dropout(),
                                   L.LayerNorm(2), L.Flatten(), L.GroupNorm(1, 2), L.RMSNorm(2),
                                   L.InstanceNorm1d(2)], ids=lambda m: type(m).__name__)
def test_error_backward_before_forward(layer):
    name = type(layer).__name__
    with pytest.raises(RuntimeError, match=f"{name}.backward: there is no training-mode forward"):
        layer.backward(np.zeros((2, 2), np.float32))


def test_error_backward_after_eval_forward_and_wrong_grad():
    layer = L.Linear(2, 3)
    layer(np.zeros((4, 2), np.float32))
    with pytest.raises(ValueError, match=r"Linear.backward: grad_output must have the shape .* \(4, 3\)"):
        layer.backward(np.zeros((4, 2), np.float32))
    with pytest.raises(TypeError, match="Linear.backward: grad_output must have the dtype"):
        layer.backward(np.zeros((4, 3)))
    layer.eval()
    layer(np.zeros((4, 2), np.float32))
    with pytest.raises(RuntimeError, match="Linear.backward"):
        layer.backward(np.zeros((4, 3), np.float32))
    with pytest.raises(RuntimeError, match=r"Sequential|Linear.backward"):
        L.Sequential(L.Linear(2, 2)).backward(np.zeros((1, 2), np.float32))


def test_error_state_dict_mismatch():
    model = mlp(dtype=np.float32)
    state = model.state_dict()
    before = model[0].weight.data.copy()
    missing = {k: v for k, v in state.items() if k != "1.running_var"}
    with pytest.raises(ValueError, match=r"Sequential.load_state_dict: .*missing keys \['1.running_var'\]"):
        model.load_state_dict(missing)
    extra = dict(state, **{"9.weight": np.zeros(2)})
    with pytest.raises(ValueError, match=r"unexpected keys \['9.weight'\]"):
        model.load_state_dict(extra)
    model.load_state_dict(extra, strict=False)
    # strict=False loads what is there and leaves the rest (a new head, as in PyTorch)
    partial = {k: np.full(np.shape(v), 0.25) for k, v in state.items() if k.startswith("0.")}
    running_var = model[1].running_var.copy()
    assert model.load_state_dict(dict(partial, extra=np.zeros(1)), strict=False) is model
    assert (model[0].weight.data == 0.25).all() and (model[0].bias.data == 0.25).all()
    np.testing.assert_array_equal(model[1].running_var, running_var)
    model.load_state_dict(state)
    bad_shape = dict(state)
    bad_shape["0.weight"] = np.zeros((4, 6), np.float32)
    bad_shape["0.bias"] = np.full(6, 7.0, np.float32)
    with pytest.raises(ValueError, match=r"state_dict\['0.weight'\] must have shape \(6, 4\), got \(4, 6\)"):
        model.load_state_dict(bad_shape)
    np.testing.assert_array_equal(model[0].weight.data, before)
    assert not (model[0].bias.data == 7).any()  # nothing changed by a failed load
    with pytest.raises(TypeError, match=r"state_dict\['0.bias'\] must be a numeric array"):
        model.load_state_dict(dict(state, **{"0.bias": np.array(["a"] * 6)}))
    with pytest.raises(TypeError, match="state_dict must be a mapping"):
        model.load_state_dict([1, 2])


@pytest.mark.parametrize("make, exc, message", [
    (lambda: L.Dropout(1.5), ValueError, r"Dropout: p must be a finite number in \[0, 1\]"),
    (lambda: L.Dropout(0.5, seed=-1), ValueError, "Dropout: seed must be >= 0"),
    (lambda: L.Linear(-1, 3), ValueError, "Linear: in_features must be >= 0"),
    (lambda: L.Linear(2.5, 3), TypeError, "Linear: in_features must be an int"),
    (lambda: L.Linear(2, 3, init="xavier"), ValueError, "Linear: init must be one of"),
    (lambda: L.Linear(2, 3, weight_dropout=2), ValueError, "Linear: weight_dropout"),
    (lambda: L.Linear(2, 3, dtype=np.int32), TypeError, "Linear: dtype must be"),
    (lambda: L.BatchNorm1d(0), ValueError, "BatchNorm1d: num_features must be >= 1"),
    (lambda: L.BatchNorm1d(3, eps=-1), ValueError, "BatchNorm1d: eps"),
    (lambda: L.BatchNorm1d(3, affine="yes"), TypeError, "BatchNorm1d: affine must be a bool"),
    (lambda: L.GroupNorm(3, 4), ValueError, r"GroupNorm: num_channels \(4\) must be divisible by num_groups \(3\)"),
    (lambda: L.LayerNorm(()), ValueError, "LayerNorm: normalized_shape must not be empty"),
    (lambda: L.LayerNorm("a"), TypeError, "LayerNorm: normalized_shape must be an int or a sequence"),
    (lambda: L.GELU("erf"), ValueError, "GELU: approximate must be 'none' or 'tanh'"),
    (lambda: L.CELU(alpha=0), ValueError, "CELU: alpha must be non-zero"),
    (lambda: L.Sigmoid(inplace=True), TypeError, "Sigmoid: has no inplace option"),
    (lambda: L.ReLU(inplace=1), TypeError, "ReLU: inplace must be a bool"),
    (lambda: L.Sequential(L.ReLU(), "relu"), TypeError, "Sequential: layer 1 must be a fastnorm Layer"),
])
def test_error_constructor_arguments(make, exc, message):
    with pytest.raises(exc, match=message):
        make()


def test_error_inplace_on_read_only_input():
    x = np.ones(3, np.float32)
    x.flags.writeable = False
    with pytest.raises(ValueError, match="ReLU: inplace=True needs a writeable x"):
        L.ReLU(inplace=True)(x)
    np.testing.assert_array_equal(L.ReLU()(x), x)  # read-only input is fine otherwise


# Chains in which an inplace layer overwrites an array that an earlier layer kept for its
# backward (PyTorch raises "modified by an inplace operation" for each of these).
OVERWRITING_CHAINS = [
    ("Tanh", lambda: L.Sequential(L.Tanh(), L.LeakyReLU(0.1, inplace=True))),
    ("Sigmoid", lambda: L.Sequential(L.Sigmoid(), L.Flatten(), L.ReLU(inplace=True))),
    ("ReLU", lambda: L.Sequential(L.ReLU(inplace=True), L.Dropout(0.5, inplace=True, seed=0))),
    ("ReLU6", lambda: L.Sequential(L.ReLU6(inplace=True), L.Dropout(0.5, inplace=True, seed=0))),
    ("ReLU", lambda: L.Sequential(L.ReLU(inplace=True), L.ReLU(inplace=True))),
    ("Tanh", lambda: L.Sequential(L.Tanh(), L.ELU(inplace=True))),
]


@pytest.mark.parametrize("victim, make", OVERWRITING_CHAINS, ids=lambda v: v if isinstance(v, str) else "")
def test_backward_raises_where_an_inplace_layer_overwrote_a_kept_array(victim, make, rng):
    """The overwritten layer's backward raises instead of differentiating the new values
    (which gave silently wrong gradients: Tanh -> LeakyReLU(inplace) returned 0.0991 for
    0.0071); the same chain in eval mode keeps nothing and runs."""
    x = rng.uniform(-3, 8, size=(2, 3, 4))
    model = make()
    y = model(x.copy())
    with pytest.raises(RuntimeError, match=f"{victim}.backward: an array this layer kept for backward "
                                           "was overwritten by an inplace"):
        model.backward(np.ones_like(y))
    model.eval()
    model(x.copy())
    model.train()   # a fresh forward forgets the mark: the chain without inplace differentiates
    for layer in model:
        layer.inplace = False
    y = model(x.copy())
    assert np.isfinite(model.backward(np.ones_like(y))).all()


def test_backward_raises_where_an_inplace_layer_overwrote_an_input_kept_elsewhere(rng):
    """A branch: Linear keeps its input h, then ReLU(inplace) overwrites h (a residual
    block written by hand); Linear's backward raises, as in PyTorch."""
    h = rng.standard_normal((4, 6))
    linear = L.Linear(6, 3, seed=0, dtype=F64)
    y = linear(h)
    L.ReLU(inplace=True)(h[1:])
    with pytest.raises(RuntimeError, match="Linear.backward: .* overwritten by an inplace ReLU"):
        linear.backward(np.ones_like(y))


def test_inplace_layers_that_overwrite_nothing_kept_run_as_before(rng):
    """Kept arrays elsewhere in memory are left alone: Linear keeps its input, not the output
    that ReLU(inplace) overwrites; interleaved views of one buffer do not overlap; a second
    model's kept arrays are not the first one's."""
    x = rng.standard_normal((4, 6))
    g = rng.standard_normal((4, 3))
    plain = L.Sequential(L.Linear(6, 3, seed=2, dtype=F64), L.ReLU())
    inplace = L.Sequential(L.Linear(6, 3, seed=2, dtype=F64), L.ReLU(inplace=True))
    np.testing.assert_array_equal(inplace(x), plain(x))
    np.testing.assert_array_equal(inplace.backward(g), plain.backward(g))
    buffer = rng.standard_normal((4, 6))
    tanh = L.Tanh()
    tanh(buffer[:, ::2].copy())            # keeps its own output
    even = buffer[:, ::2]
    kept = L.Sigmoid()
    kept._saved = even                     # as if it had kept its input, the even columns
    L._register_kept(kept, even, even.copy())
    L.ReLU(inplace=True)(buffer[:, 1::2])  # writes the odd columns only
    assert kept._overwritten_by is None and tanh._overwritten_by is None
    L.ReLU(inplace=True)(buffer[:, ::4])   # writes into the kept view
    assert kept._overwritten_by == "ReLU"


def test_a_layer_is_marked_for_what_it_keeps_now_not_for_what_it_kept_before(rng):
    """A forward makes the layer's earlier filing (under the buffer of the input it kept
    before) stale; an inplace write there marks nothing, one into what it keeps now does."""
    L.ReLU(inplace=True)   # starts the watch
    a, b = rng.standard_normal((4, 6)), rng.standard_normal((4, 6))
    linear = L.Linear(6, 3, seed=0, dtype=F64)
    linear(a)
    y = linear(b)
    L.ReLU(inplace=True)(a)
    assert linear._overwritten_by is None
    np.testing.assert_array_equal(linear.backward(np.ones_like(y)),
                                  np.ones_like(y) @ linear.weight.data)
    L.ReLU(inplace=True)(b[2:])
    assert linear._overwritten_by == "ReLU"


def test_an_inplace_write_drops_the_stale_filings_it_looks_at(rng):
    """Layers filed under an earlier input's buffer and since under another's are stale
    there: an inplace write into that buffer marks none of them and drops their filings,
    which would otherwise pile up under the addresses a training loop reuses."""
    L.ReLU(inplace=True)   # starts the watch
    L._prune(next(L._filings))   # and no prune runs before the write, wherever the count stood
    a, b = rng.standard_normal((4, 6)), rng.standard_normal((4, 6))
    layers = [L.Tanh() for _ in range(5)]
    for layer in layers:
        layer(a)   # keeps its output; filed under a's buffer and the output's
    for layer in layers:
        layer(b)
    assert all(id(layer) in L._keepers_by_buffer[id(a)] for layer in layers)
    L.ReLU(inplace=True)(a)
    assert all(layer._overwritten_by is None for layer in layers)
    assert not any(id(layer) in L._keepers_by_buffer.get(id(a), {}) for layer in layers)
    assert all(id(layer) in L._keepers_by_buffer[id(b)] for layer in layers)
    for layer in layers:
        assert np.isfinite(layer.backward(np.ones((4, 6)))).all()


def test_the_watch_on_kept_arrays_does_not_grow_with_dropped_models(rng):
    """Models dropped after a forward, and a live layer's earlier filings, stay behind until
    a prune, which runs every so many filings (or until an inplace layer looks at their
    key): the registry stays bounded, and a prune leaves the live layer its current
    filings only."""
    x = rng.standard_normal((2, 3))
    hold = []
    live, inputs = L.Tanh(), []
    for _ in range(3 * L._PRUNE_MIN):
        model = L.Sequential(L.Tanh(), L.Linear(3, 3, seed=0, dtype=F64), L.ReLU(inplace=True))
        model(x)                       # Tanh filed under x's buffer, the same every time
        hold.append(L.Tanh())          # takes the dropped layers' memory: new ids each time
        inputs.append(rng.standard_normal(3))
        live(inputs[-1])               # a live layer on inputs kept alive: a new key each time
    filed = sum(len(refs) for refs in L._keepers_by_buffer.values())
    assert filed <= 2 * L._PRUNE_MIN
    assert all(id(live) in L._keepers_by_buffer[key] for key in live._kept_keys)
    L._prune(next(L._filings))
    assert sum(id(live) in refs for refs in L._keepers_by_buffer.values()) == 2


@pytest.mark.parametrize("build", ["pickle.loads(BLOB)",
                                   "L.Sequential(L.Sigmoid(), L.ReLU()); model[1].inplace = True"],
                         ids=["unpickled", "switched-on"])
def test_the_watch_starts_in_a_process_whose_inplace_layers_were_unpickled_or_switched_on(build):
    """__init__ does not run for an unpickled layer, and inplace may be set after it: either
    way the first training step already catches the overwrite (in a fresh process, where
    no inplace layer was constructed)."""
    import pickle
    import subprocess
    import sys
    blob = pickle.dumps(L.Sequential(L.Tanh(), L.LeakyReLU(0.1, inplace=True)))
    child = f"""
import pickle, numpy as np, fastnorm.layers as L
BLOB = {blob!r}
model = {build}
assert model[1].inplace
y = model(np.linspace(-2, 2, 8).reshape(2, 4))
try:
    model.backward(np.ones_like(y))
except RuntimeError as exc:
    assert "overwritten by an inplace" in str(exc), exc
    print("raised")
"""
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "raised", (done.stdout, done.stderr)


def test_inplace_layers_pickled_by_the_previous_version_load(rng):
    """Their state has ``inplace`` (now a property over ``_inplace``)."""
    import pickle
    for layer in (L.ReLU(inplace=True), L.Dropout(0.3, inplace=True, seed=1)):
        state = dict(layer.__dict__)
        state["inplace"] = state.pop("_inplace")
        old = type(layer).__new__(type(layer))
        old.__setstate__(state)
        assert old.inplace is True and "inplace" not in old.__dict__
        x = rng.standard_normal((2, 3))
        np.testing.assert_array_equal(pickle.loads(pickle.dumps(old))(x.copy()), layer(x.copy()))


def test_layers_train_in_threads_on_one_input(rng):
    """The watch's registry is shared: layers of separate models filed under one input's
    buffer from several threads, and inplace layers dropping the stale filings there, with
    the interpreter switching threads as often as it can (a first form raised KeyError
    there, emptying one set twice); enough filings for several prunes to run among them."""
    import sys
    import threading
    x = rng.standard_normal((1, 1))
    L.ReLU(inplace=True)          # starts the watch
    errors = []

    def train():
        layer = L.Tanh()   # keeps its output: filed under x's buffer and the output's
        writer = L.ReLU(inplace=True)
        try:
            for i in range(20000):
                layer(x)
                if i % 8 == 0:
                    writer(x)   # looks at x's filings (x's values do not matter here)
        except Exception as exc:  # noqa: BLE001 -- any error fails the test below
            errors.append(repr(exc))
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=train) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert errors == []


# ---------------------------------------------------------------------------- PyTorch parity

def torch_state(module):
    return {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


def randomize_torch(torch, module, rng):
    with torch.no_grad():
        for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
            if tensor.dtype.is_floating_point:
                values = rng.standard_normal(tuple(tensor.shape)) * 0.5
                if name.endswith(("weight", "running_var")):
                    values = np.abs(values) + 0.5
                tensor.copy_(torch.from_numpy(values))
            elif name.endswith("num_batches_tracked"):
                tensor.fill_(3)
    return module


TORCH_CASES = [
    ("BatchNorm1d", (3,), {}, (5, 3)),
    ("BatchNorm1d", (3,), {"momentum": None}, (5, 3, 4)),
    ("BatchNorm1d", (3,), {"affine": False}, (5, 3)),
    ("BatchNorm2d", (4,), {"momentum": 0.3, "eps": 1e-3}, (3, 4, 3, 2)),
    ("BatchNorm2d", (4,), {"track_running_stats": False}, (3, 4, 3, 2)),
    ("BatchNorm3d", (2,), {}, (2, 2, 3, 2, 2)),
    ("LayerNorm", ((3, 4),), {}, (2, 5, 3, 4)),
    ("LayerNorm", (4,), {"bias": False, "eps": 1e-3}, (6, 4)),
    ("LayerNorm", (4,), {"elementwise_affine": False}, (6, 4)),
    ("GroupNorm", (2, 6), {}, (3, 6, 4)),
    ("GroupNorm", (3, 6), {"affine": False, "eps": 1e-2}, (3, 6, 2, 2)),
    ("InstanceNorm1d", (3,), {}, (2, 3, 5)),
    ("InstanceNorm1d", (3,), {"affine": True, "track_running_stats": True}, (2, 3, 5)),
    ("InstanceNorm2d", (3,), {"affine": True, "track_running_stats": True, "momentum": 0.4}, (2, 3, 4, 3)),
    ("InstanceNorm2d", (3,), {"affine": True}, (3, 4, 3)),
    ("RMSNorm", (4,), {}, (5, 4)),
    ("RMSNorm", ((2, 3),), {"eps": 1e-3}, (4, 2, 3)),
    ("Linear", (4, 3), {}, (5, 4)),
    ("Linear", (4, 3), {"bias": False}, (2, 5, 4)),
]


@pytest.mark.parametrize("name, args, kwargs, shape", TORCH_CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(TORCH_CASES)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_parity_with_torch_modules(name, args, kwargs, shape, dtype, backend, rng):
    """A torch module with random weights and running statistics, exported as NumPy and
    loaded into ours: same outputs, input and parameter gradients, running statistics
    (training), same outputs in eval mode; and our state loads back into torch."""
    torch = pytest.importorskip("torch")
    tdtype = torch.float64 if dtype == np.float64 else torch.float32
    tmod = randomize_torch(torch, getattr(torch.nn, name)(*args, **kwargs).to(tdtype), rng)
    ours = getattr(L, name)(*args, **kwargs, dtype=dtype)
    ours.load_state_dict(torch_state(tmod))
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in tmod.named_parameters()]
    assert list(ours.state_dict()) == list(tmod.state_dict())
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == np.float64 else dict(rtol=2e-5, atol=2e-5)

    x = (rng.standard_normal(shape) * 2 + 0.5).astype(dtype)
    g = rng.standard_normal(ours(x).shape).astype(dtype)
    ours.load_state_dict(torch_state(tmod))  # undo the running-statistics update of that call
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    yt = tmod(xt)
    yt.backward(torch.from_numpy(g))
    y = ours(x)
    gx = ours.backward(g)
    np.testing.assert_allclose(y, yt.detach().numpy(), **tol)
    np.testing.assert_allclose(gx, xt.grad.numpy(), **tol)
    for (n, p), (tn, tp) in zip(ours.named_parameters(), tmod.named_parameters()):
        np.testing.assert_allclose(p.grad, tp.grad.numpy(), **tol, err_msg=n)
    for key, value in torch_state(tmod).items():
        np.testing.assert_allclose(ours.state_dict()[key], value, **tol, err_msg=key)

    tmod.eval(), ours.eval()
    x2 = (rng.standard_normal(shape) * 2 + 0.5).astype(dtype)
    with torch.no_grad():
        expected = tmod(torch.from_numpy(x2)).numpy()
    np.testing.assert_allclose(ours(x2), expected, **tol)
    tmod.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in ours.state_dict().items()})


ACTIVATION_TORCH = [("ReLU", {}), ("LeakyReLU", {"negative_slope": 0.1}), ("ELU", {"alpha": 0.5}),
                    ("SELU", {}), ("CELU", {"alpha": 2.0}), ("GELU", {}), ("GELU", {"approximate": "tanh"}),
                    ("SiLU", {}), ("Softplus", {"beta": 2.0, "threshold": 3.0}), ("Mish", {}),
                    ("Sigmoid", {}), ("Tanh", {}), ("Hardsigmoid", {}), ("Hardswish", {}),
                    ("Softsign", {}), ("ReLU6", {})]


@pytest.mark.parametrize("name, kwargs", ACTIVATION_TORCH, ids=[f"{n}-{i}" for i, (n, _) in enumerate(ACTIVATION_TORCH)])
def test_activation_parity_with_torch(name, kwargs, rng):
    torch = pytest.importorskip("torch")
    x = away_from(rng.uniform(-8, 8, size=(6, 7)), [0.0, -3.0, 3.0, 6.0])
    g = rng.standard_normal(x.shape)
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    yt = getattr(torch.nn, name)(**kwargs)(xt)
    yt.backward(torch.from_numpy(g))
    layer = getattr(L, name)(**kwargs)
    np.testing.assert_allclose(layer(x), yt.detach().numpy(), rtol=1e-12, atol=1e-13)
    # rtol 1e-7: torch's float64 hardsigmoid backward multiplies by a float32 1/6.
    np.testing.assert_allclose(layer.backward(g), xt.grad.numpy(), rtol=1e-7, atol=1e-12)


def test_mlp_parity_with_torch(backend, rng):
    """torch.nn.Sequential(Linear, BatchNorm1d, ReLU, Linear) state loaded into ours: a few
    SGD training steps on the same batches give the same weights and running statistics."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    tmodel = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(),
                                 torch.nn.Linear(8, 3)).double()
    model = L.Sequential(L.Linear(4, 8), L.BatchNorm1d(8), L.ReLU(), L.Linear(8, 3)).to(F64)
    model.load_state_dict(torch_state(tmodel))
    topt = torch.optim.SGD(tmodel.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3, nesterov=True)
    opt = fastnorm.optim.SGD(model, lr=0.1, momentum=0.9, weight_decay=1e-3, nesterov=True)
    for _ in range(5):
        x = rng.standard_normal((16, 4))
        labels = rng.integers(0, 3, 16)
        topt.zero_grad()
        loss_t = torch.nn.functional.cross_entropy(tmodel(torch.from_numpy(x)), torch.from_numpy(labels))
        loss_t.backward()
        topt.step()
        opt.zero_grad()
        loss, grad = fastnorm.softmax_cross_entropy(model(x), labels)
        model.backward(grad)
        opt.step()
        np.testing.assert_allclose(loss, loss_t.item(), rtol=1e-10)
    for key, value in torch_state(tmodel).items():
        np.testing.assert_allclose(model.state_dict()[key], value, rtol=1e-9, atol=1e-12, err_msg=key)
