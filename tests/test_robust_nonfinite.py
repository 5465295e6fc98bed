"""NaN and Inf semantics.

Normalization: a NaN or an Inf poisons exactly the statistics it enters -- its batch-norm
channel, its layer-norm row, its group-norm (sample, group), its instance -- whose
output and rstd become NaN (RMS norm: an Inf gives rstd 0), and whose mean NaN, or the
infinity where the unit's only non-finite values are infinities of one sign (as
np.mean); every other channel/row/group is unaffected, bit for bit.  In training, a
poisoned channel's running statistics become NaN (or that infinity for running_mean),
the others update normally.  Activations map NaN to NaN and +-Inf to the function's limit, and their
backward passes at +-Inf give what PyTorch gives.  Where torch is installed the results
are compared with it.
"""
import numpy as np
import pytest

import fastnorm
from _activation_cases import PARAM_CASES, case_id, saved_for_backward

F32 = np.float32


def _with(x, index, value):
    y = x.copy()
    y[index] = value
    return y


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("channels_last", [False, True])
def test_batch_norm_poisons_only_its_channel(bad, channels_last, backend, num_threads, rng):
    x = rng.standard_normal((8, 5, 6, 6)).astype(F32)
    if channels_last:
        x = np.ascontiguousarray(np.moveaxis(x, 1, -1))
    cax = x.ndim - 1 if channels_last else 1
    index = (3, 2, 4, 1) if channels_last else (3, 1, 4, 2)
    poisoned = index[cax]
    xb = _with(x, index, bad)
    rm, rv = np.zeros(5, F32), np.ones(5, F32)
    rm0, rv0 = rm.copy(), rv.copy()
    y, mean, rstd = fastnorm.batch_norm(xb, None, None, rm, rv, channels_last=channels_last)
    y0, mean0, rstd0 = fastnorm.batch_norm(x, None, None, rm0, rv0, channels_last=channels_last)
    others = [c for c in range(5) if c != poisoned]
    assert np.isnan(np.take(y, poisoned, axis=cax)).all()
    assert np.isnan(mean[poisoned]) or np.isinf(mean[poisoned])
    assert np.isnan(rstd[poisoned]) or rstd[poisoned] == 0
    assert np.isnan(rm[poisoned]) or np.isinf(rm[poisoned])
    np.testing.assert_array_equal(np.take(y, others, axis=cax), np.take(y0, others, axis=cax))
    np.testing.assert_array_equal(mean[others], mean0[others])
    np.testing.assert_array_equal(rm[others], rm0[others])
    np.testing.assert_array_equal(rv[others], rv0[others])
    # backward: the poisoned channel's gradient is NaN, the others are those of clean data
    g = rng.standard_normal(x.shape).astype(F32)
    gx, gw, gb = fastnorm.batch_norm_backward(g, xb, np.ones(5, F32), mean, rstd,
                                              channels_last=channels_last, bias=np.zeros(5, F32))
    gx0, gw0, gb0 = fastnorm.batch_norm_backward(g, x, np.ones(5, F32), mean0, rstd0,
                                                 channels_last=channels_last, bias=np.zeros(5, F32))
    assert np.isnan(np.take(gx, poisoned, axis=cax)).all() and np.isnan(gw[poisoned])
    np.testing.assert_array_equal(np.take(gx, others, axis=cax), np.take(gx0, others, axis=cax))
    np.testing.assert_array_equal(gw[others], gw0[others])
    np.testing.assert_array_equal(gb, gb0)  # sum(dy) does not see x


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_layer_rms_group_instance_norm_poison_only_their_unit(bad, backend, num_threads, rng):
    x = rng.standard_normal((6, 8, 5, 4)).astype(F32)
    xb = _with(x, (2, 5, 1, 3), bad)
    # layer norm over (8, 5, 4): only sample 2
    for fn, args in ((fastnorm.layer_norm, ((8, 5, 4),)), (fastnorm.rms_norm, ((8, 5, 4),))):
        y, y0 = fn(xb, *args)[0], fn(x, *args)[0]
        if fn is fastnorm.rms_norm and bad == np.inf:  # rstd = 0: x * 0, NaN at the Inf (as torch)
            assert np.isnan(y[2, 5, 1, 3]) and np.count_nonzero(y[2][~np.isnan(y[2])]) == 0
        else:
            assert np.isnan(y[2]).all()
        np.testing.assert_array_equal(np.delete(y, 2, axis=0), np.delete(y0, 2, axis=0))
    # group norm with 4 groups of 2 channels: only (sample 2, group 2)
    y, mean, _ = fastnorm.group_norm(xb, 4)
    y0 = fastnorm.group_norm(x, 4)[0]
    assert np.isnan(y[2, 4:6]).all() and not np.isnan(mean[2, [0, 1, 3]]).any()
    mask = np.ones(y.shape, bool)
    mask[2, 4:6] = False
    np.testing.assert_array_equal(y[mask], y0[mask])
    # instance norm: only (sample 2, channel 5)
    y, y0 = fastnorm.instance_norm(xb)[0], fastnorm.instance_norm(x)[0]
    assert np.isnan(y[2, 5]).all()
    mask = np.ones(y.shape, bool)
    mask[2, 5] = False
    np.testing.assert_array_equal(y[mask], y0[mask])
    # moments: only the slices containing the value
    mean, var = fastnorm.moments(xb, axis=(0, 2, 3))
    mean0, var0 = fastnorm.moments(x, axis=(0, 2, 3))
    assert not np.isfinite(var[5])
    np.testing.assert_array_equal(np.delete(var, 5), np.delete(var0, 5))


def _statistics_cases():
    """(name, shape, call, unit's first / inner / last index, the unit's index in mean and
    rstd, its part of y): call(x, out) -> (y, mean, rstd, running_mean or None).  The
    shapes reach the kernels' paths: batch norm's runs and column sums (and its one-block
    column sums for 1-D), channels-last, units and rows taken one by one and by groups (the
    first group's sums on their own, a later group's beside the previous one's output
    pass); into out=, large enough calls stream (their units' sums and output one by one)."""
    def bn(shape, channels_last=False):
        c = shape[-1] if channels_last or len(shape) == 2 else shape[1]

        def call(x, out):
            rm, rv = np.zeros(c, F32), np.ones(c, F32)
            y, mean, rstd = fastnorm.batch_norm(x, None, None, rm, rv, channels_last=channels_last,
                                                out=out)
            return y, mean, rstd, rm
        return call

    def stats_only(fn, *args, **kwargs):
        def call(x, out):
            return (*fn(x, *args, out=out, **kwargs), None)
        return call

    def moments(axis):
        def call(x, out):
            mean, var = fastnorm.moments(x, axis=axis)
            return None, mean, 1 / np.sqrt(var), None
        return call

    return [
        ("batch_norm runs", (4, 3, 8, 8), bn((4, 3, 8, 8)),
         [(0, 1, 0, 0), (2, 1, 3, 5), (3, 1, 7, 7)], 1, np.s_[:, 1]),
        ("batch_norm columns", (6, 3, 2, 3), bn((6, 3, 2, 3)),
         [(0, 1, 0, 0), (2, 1, 1, 1), (5, 1, 1, 2)], 1, np.s_[:, 1]),
        ("batch_norm 1-D", (64, 5), bn((64, 5)), [(0, 2), (30, 2), (63, 2)], 2, np.s_[:, 2]),
        ("batch_norm channels-last", (4, 3, 5, 6), bn((4, 3, 5, 6), True),
         [(0, 0, 0, 4), (1, 2, 3, 4), (3, 2, 4, 4)], 4, np.s_[..., 4]),
        ("layer_norm rows by groups, first", (9, 40), stats_only(fastnorm.layer_norm, 40),
         [(1, 0), (1, 17), (1, 39)], 1, np.s_[1]),
        ("layer_norm rows by groups, later", (9, 40), stats_only(fastnorm.layer_norm, 40),
         [(5, 0), (5, 17), (5, 39)], 5, np.s_[5]),
        ("layer_norm wide rows", (3, 9000), stats_only(fastnorm.layer_norm, 9000),
         [(1, 0), (1, 4500), (1, 8999)], 1, np.s_[1]),
        ("group_norm units by groups, first", (3, 8, 5, 4), stats_only(fastnorm.group_norm, 4),
         [(0, 2, 0, 0), (0, 3, 1, 2), (0, 3, 4, 3)], (0, 1), np.s_[0, 2:4]),
        ("group_norm units by groups, later", (3, 8, 5, 4), stats_only(fastnorm.group_norm, 4),
         [(2, 2, 0, 0), (2, 3, 1, 2), (2, 3, 4, 3)], (2, 1), np.s_[2, 2:4]),
        ("group_norm large units", (2, 4, 64, 64), stats_only(fastnorm.group_norm, 2),
         [(1, 2, 0, 0), (1, 2, 9, 9), (1, 3, 63, 63)], (1, 1), np.s_[1, 2:4]),
        ("group_norm channels-last", (3, 5, 4, 8), stats_only(fastnorm.group_norm, 4, channels_last=True),
         [(1, 0, 0, 6), (1, 2, 3, 7), (1, 4, 3, 7)], (1, 3), np.s_[1, ..., 6:8]),
        ("instance_norm", (3, 4, 6, 5), stats_only(fastnorm.instance_norm),
         [(2, 1, 0, 0), (2, 1, 3, 3), (2, 1, 5, 4)], (2, 1), np.s_[2, 1]),
        ("moments over all but axis 1", (4, 3, 8, 8), moments((0, 2, 3)),
         [(0, 1, 0, 0), (2, 1, 3, 5), (3, 1, 7, 7)], 1, None),
        ("moments over axis 0", (64, 5), moments(0), [(0, 2), (30, 2), (63, 2)], 2, None),
    ]


@pytest.mark.parametrize("bad", [np.inf, -np.inf])
@pytest.mark.parametrize("stream", [False, True], ids=["cached", "streamed"])
@pytest.mark.parametrize("case", _statistics_cases(), ids=lambda case: case[0])
def test_an_infinity_gives_its_unit_the_same_statistics_wherever_it_lies(case, stream, bad, backend,
                                                                         num_threads, rng):
    """The mean is the infinity (as np.mean), the variance NaN (inf - inf) and the output
    NaN, whether the infinity is the unit's first element or not: the kernels' one-pass
    sums are centered on the first element, and centered on an infinity they had given a
    NaN mean (fn_sums_center)."""
    _, shape, call, positions, unit, y_part = case
    x = rng.standard_normal(shape).astype(F32)
    out = np.empty_like(x) if stream else None
    try:
        fastnorm._config.set_stream_min_bytes(0 if stream else None)
        clean = [a if a is None else a.copy() for a in call(x, out)]
        for index in positions:
            y, mean, rstd, running_mean = call(_with(x, index, bad), out)
            assert mean[unit] == bad, index
            assert np.isnan(rstd[unit]), index
            if y is not None:
                assert np.isnan(y[y_part]).all(), index
            if running_mean is not None:
                assert running_mean[unit] == bad, index
            others = np.ones(mean.shape, bool)
            others[unit] = False
            np.testing.assert_array_equal(mean[others], clean[1][others])
            np.testing.assert_array_equal(rstd[others], clean[2][others])
    finally:
        fastnorm._config.set_stream_min_bytes(None)


def test_nan_in_weight_or_bias_poisons_only_that_feature(backend, rng):
    x = rng.standard_normal((16, 6)).astype(F32)
    w = _with(np.ones(6, F32), 4, np.nan)
    y = fastnorm.layer_norm(x, 6, w)[0]
    assert np.isnan(y[:, 4]).all() and np.isfinite(np.delete(y, 4, axis=1)).all()
    y = fastnorm.batch_norm(x, None, _with(np.zeros(6, F32), 1, np.nan))[0]
    assert np.isnan(y[:, 1]).all() and np.isfinite(np.delete(y, 1, axis=1)).all()


def test_nan_and_inf_through_dropout(backend):
    x = np.array([np.nan, np.inf, -np.inf, 1.0] * 64, F32)
    y, mask = fastnorm.dropout(x, 0.5, seed=3)
    keep = mask.numpy()
    np.testing.assert_array_equal(y[keep], x[keep] * F32(2))
    assert np.isnan(y[~keep & ~np.isfinite(x)]).all()      # Inf * 0 and NaN * 0: NaN, as PyTorch
    assert (y[~keep & np.isfinite(x)] == 0).all()


# ---------------------------------------------------------------------------- PyTorch parity

@pytest.mark.parametrize("case", PARAM_CASES, ids=case_id)
def test_activation_backward_at_nonfinite_and_huge_inputs(case, backend):
    """Policy: a NaN input gives a NaN gradient (or PyTorch's value for the piecewise-linear
    ones, whose comparisons send NaN to a branch: relu'(NaN) = 0); at +-Inf and at huge finite inputs the
    gradient is grad_output times the derivative's limit.  Where PyTorch is finite it
    agrees; where PyTorch gives NaN (Inf * 0 inside its formulas: erf/tanh GELU, mish,
    softsign at +-Inf; tanh-GELU already at |x| > 1e13) we give the limit, and where
    PyTorch treats a NaN input as positive (elu, selu, celu give grad_output) we give NaN."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    name, params = case
    tfn = {"sigmoid": torch.sigmoid, "tanh": torch.tanh}.get(name) or getattr(F, name)
    x = np.array([np.inf, -np.inf, np.nan, 1e30, -1e30, 1e20, -1e20, 40.0, -40.0, 0.0], F32)
    g = np.array([0.5, -2.0, 1.0, 3.0, -1.0, 2.0, 2.0, 1.0, -1.0, 1.5], F32)
    tx = torch.from_numpy(x.copy()).requires_grad_(True)
    tfn(tx, **params).backward(torch.from_numpy(g))
    want = tx.grad.numpy()
    for dtype in (np.float32, np.float64):
        got = getattr(fastnorm, name + "_backward")(
            g.astype(dtype), saved_for_backward(fastnorm, name, params, x.astype(dtype)), **params)
        assert np.isnan(got[2]) or got[2] == pytest.approx(want[2]), "NaN in: NaN out, or PyTorch's branch"
        finite = ~np.isnan(want)
        finite[2] = False
        np.testing.assert_allclose(got[finite], want[finite], rtol=2e-6, atol=1e-6)
        assert not np.isnan(np.delete(got, 2)).any(), f"{name}: NaN for a non-NaN input: {got}"
        # the limits: derivative 1 at +Inf and 0 at -Inf, except bounded/decaying ones
        limit_pos = 0.0 if name in ("sigmoid", "tanh", "hardsigmoid", "softsign", "relu6") else 1.0
        assert got[0] == pytest.approx(g[0] * limit_pos * (
            1.0507009873554805 if name == "selu" else 1.0))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_norms_with_nonfinite_inputs_match_pytorch(bad, backend, rng):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x = _with(rng.standard_normal((4, 6, 5)).astype(F32), (1, 2, 3), bad)
    t = torch.from_numpy(x.copy())
    w = rng.uniform(0.5, 2, 6).astype(F32)
    b = rng.standard_normal(6).astype(F32)
    rm, rv = np.zeros(6, F32), np.ones(6, F32)
    trm, trv = torch.zeros(6), torch.ones(6)
    pairs = [
        (fastnorm.batch_norm(x, w, b, rm, rv)[0],
         F.batch_norm(t, trm, trv, torch.from_numpy(w), torch.from_numpy(b), training=True)),
        (fastnorm.layer_norm(x, 5)[0], F.layer_norm(t, (5,))),
        (fastnorm.group_norm(x, 3, w, b)[0], F.group_norm(t, 3, torch.from_numpy(w), torch.from_numpy(b))),
        (fastnorm.instance_norm(x)[0], F.instance_norm(t)),
        (fastnorm.rms_norm(x, 5, eps=1e-6)[0], F.rms_norm(t, (5,), eps=1e-6)),
    ]
    for got, want in pairs:
        want = want.numpy()
        assert np.array_equal(np.isnan(got), np.isnan(want))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, equal_nan=True)
    np.testing.assert_allclose(rm, trm.numpy(), rtol=1e-6, atol=1e-7, equal_nan=True)
    np.testing.assert_allclose(rv, trv.numpy(), rtol=1e-6, atol=1e-7, equal_nan=True)
