"""Memory is part of speed: what one call allocates, measured with tracemalloc (which
sees NumPy's array data).  A forward allocates its output and nothing else of the
input's size; with out= it allocates nothing of that size; a dropout mask costs one bit
per element.  Runs on every kernel variant; the NumPy reference is allowed its
temporaries, so the NumPy backend is left out."""
import numpy as np
import pytest

import fastnorm
from fastnorm.bench import peak_allocation
from _activation_cases import PARAM_CASES, case_id, saved_for_backward

N_ROWS, N_COLS = 512, 1024          # 2 MiB of float32: far above any per-call scratch
SLACK = 64 * 1024                   # statistics, parameter gradients, small scratch


@pytest.fixture
def compiled(backend):
    if backend[0] == "numpy":
        pytest.skip("the NumPy reference may allocate temporaries")
    return backend


def _x(dtype=np.float32, shape=(N_ROWS, N_COLS)):
    return (np.random.default_rng(0).standard_normal(shape) * 3).astype(dtype)


@pytest.mark.parametrize("case", PARAM_CASES, ids=case_id)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_activation_allocates_only_its_output(compiled, case, dtype):
    name, params = case
    x = _x(dtype)
    fwd, bwd = getattr(fastnorm, name), getattr(fastnorm, name + "_backward")
    assert peak_allocation(lambda: fwd(x, **params)) <= x.nbytes + SLACK
    out = np.empty_like(x)
    assert peak_allocation(lambda: fwd(x, out=out, **params)) <= SLACK
    saved = saved_for_backward(fastnorm, name, params, x)
    assert peak_allocation(lambda: bwd(x, saved, **params)) <= x.nbytes + SLACK
    assert peak_allocation(lambda: bwd(x, saved, out=out, **params)) <= SLACK


def test_dropout_mask_costs_one_bit_per_element(compiled):
    x = _x()
    mask_bytes = -(-x.size // 8)
    assert peak_allocation(lambda: fastnorm.dropout(x, 0.5, seed=1)) <= x.nbytes + mask_bytes + SLACK
    out = np.empty_like(x)
    assert peak_allocation(lambda: fastnorm.dropout(x, 0.5, seed=1, out=out)) <= mask_bytes + SLACK
    _, mask = fastnorm.dropout(x, 0.5, seed=1)
    assert peak_allocation(lambda: fastnorm.dropout_backward(x, mask)) <= x.nbytes + SLACK
    assert peak_allocation(lambda: fastnorm.dropout_backward(x, mask, out=out)) <= SLACK


def _norm_calls(x, g):
    c = x.shape[1]
    w = np.ones(c, x.dtype)
    b = np.zeros(c, x.dtype)
    d = x.shape[-1]
    _, bm, br = fastnorm.batch_norm(x, w, b)
    _, lm, lr = fastnorm.layer_norm(x, d, w[:1].repeat(d), b[:1].repeat(d))
    _, gm, gr = fastnorm.group_norm(x, 4, w, b)
    _, rr = fastnorm.rms_norm(x, d)
    return {
        "batch_norm": lambda out=None: fastnorm.batch_norm(x, w, b, np.zeros(c, x.dtype),
                                                           np.ones(c, x.dtype), out=out),
        "batch_norm eval": lambda out=None: fastnorm.batch_norm(x, w, b, np.zeros(c, x.dtype),
                                                                np.ones(c, x.dtype), training=False,
                                                                out=out),
        "layer_norm": lambda out=None: fastnorm.layer_norm(x, d, out=out),
        "group_norm": lambda out=None: fastnorm.group_norm(x, 4, w, b, out=out),
        "instance_norm": lambda out=None: fastnorm.instance_norm(x, out=out),
        "rms_norm": lambda out=None: fastnorm.rms_norm(x, d, out=out),
        "batch_norm_backward": lambda: fastnorm.batch_norm_backward(g, x, w, bm, br, bias=b),
        "layer_norm_backward": lambda: fastnorm.layer_norm_backward(g, x, d, None, lm, lr),
        "group_norm_backward": lambda: fastnorm.group_norm_backward(g, x, 4, w, gm, gr, bias=b),
        "rms_norm_backward": lambda: fastnorm.rms_norm_backward(g, x, d, None, rr),
    }


def _returned_bytes(result):
    return sum(a.nbytes for a in (result if isinstance(result, tuple) else (result,))
               if isinstance(a, np.ndarray))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(16, 32, 32, 32), (2048, 256)], ids=str)
def test_normalization_allocates_only_its_outputs(compiled, dtype, shape):
    """Output, statistics and parameter gradients are returned; besides them only small
    scratch (per-channel block sums; the backward passes of group and instance norm also
    keep float64 sums per (sample, channel), larger than the input when there is no
    spatial extent, so their (N, C) case is left out: a known limit, README "Memory")."""
    x = _x(dtype, shape)
    g = _x(dtype, shape)
    out = np.empty_like(x)
    scratch = SLACK + x.nbytes // 16
    for name, call in _norm_calls(x, g).items():
        if (name.startswith("instance_norm") or name == "group_norm_backward") and x.ndim < 3:
            continue
        result = call()
        returned = _returned_bytes(result)
        # float64 intermediates of the returned statistics (mean, M2, rstd) are allowed
        stats = 4 * (returned - result[0].nbytes) if isinstance(result, tuple) else 0
        assert peak_allocation(call) <= returned + stats + scratch, name
        if not name.endswith("_backward"):
            small = returned - x.nbytes
            assert peak_allocation(lambda: call(out=out)) <= small + stats + scratch, name + " with out="


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(4, 50000), (16, 50000), (3, 70000), (64, 8192), (2048, 256)], ids=str)
def test_layer_norm_backward_parameter_sums_stay_small(compiled, dtype, shape):
    """Layer norm backward's parameter gradients are float64 column sums over blocks of at
    least eight rows (normalization.pyx, _ln_param_rows): one partial row per block, 16 bytes
    per column for the two sums.  Blocks of one wide row each had made them four times x's
    bytes at (4, 50000) float32, in fresh pages on every call (750 page faults, 12x slower)."""
    x = _x(dtype, shape)
    g = _x(dtype, shape)
    k = shape[-1]
    w, b = x[0].copy(), g[0].copy()
    _, mean, rstd = fastnorm.layer_norm(x, k, w, b)
    call = lambda: fastnorm.layer_norm_backward(g, x, k, w, mean, rstd, bias=b)
    returned = _returned_bytes(call())
    blocks = -(-shape[0] // 8)
    assert peak_allocation(call) <= returned + 16 * k * blocks + SLACK


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(8, 50000), (64, 4096), (2, 100000)], ids=str)
def test_batch_norm_few_rows_scratch_per_channel(compiled, dtype, shape):
    """Batch norm 1-D with few rows: besides its outputs, the forward keeps three float64
    per channel (mean, M2, the first row as each channel's shift) and three of x's type (the
    output pass's coefficients).  The column sums of one block of rows go straight into the
    statistics (_stats_run); through scratch they had cost two more float64 per channel
    (the build before fails at every shape here)."""
    x = _x(dtype, shape)
    c = shape[1]
    w, b = x[0].copy(), x[1].copy()
    call = lambda: fastnorm.batch_norm(x, w, b)
    returned = _returned_bytes(call())
    assert peak_allocation(call) <= returned + (24 + 3 * x.itemsize) * c + SLACK
