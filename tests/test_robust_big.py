"""64-bit indexing: one call over more than 2**31 float32 elements (8 GiB each).

The kernels see contiguous buffers, so the real 64-bit cases are element counts and
offsets beyond 2**31 in one call: an activation over 2**31 + 2**20 + 3 elements, a
layer norm over (2**21 + 3, 1024) rows (row offsets r * K > 2**31), and a batch-norm
channel of 2**31 + 16 elements as ONE contiguous run.  Each test works in place
(``out=x``) so the peak stays at ~8.1 GiB, and checks windows at the start, across
element 2**31 and at the end against values recomputed from an index pattern.  The copy
of a Fortran-order array into C order (fn_layout.h) goes beyond 2**31 items of 2 bytes
(8.6 GiB for its source and destination).

Opt-in (memory and ~1 minute per test on the 2-core box):

    FASTNORM_SLOW_TESTS=1 python -m pytest -m slow tests/test_robust_big.py
"""
import os

import numpy as np
import pytest

import fastnorm
from fastnorm import reference

BIG = 1 << 31
CHUNK = 1 << 24
GIB = 1 << 30

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("FASTNORM_SLOW_TESTS") != "1",
                       reason="8 GiB tests: set FASTNORM_SLOW_TESTS=1 (and -m slow) to run them"),
]


def _available_bytes():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def _big_float32(n):
    need = n * 4 + GIB
    if _available_bytes() < need:
        pytest.skip(f"needs {need / GIB:.1f} GiB of free memory")
    return np.empty(n, np.float32)


def _pattern(start, stop, period=1000, scale=1e-2, offset=-5.0):
    """The value at flat index i: ((i % period) * scale + offset), float32."""
    return ((np.arange(start, stop, dtype=np.int64) % period) * scale + offset).astype(np.float32)


def _fill(x, period=1000, **kw):
    """x[i] = pattern(i), chunk by chunk copied out of one precomputed block."""
    block = _pattern(0, CHUNK + period, period=period, **kw)
    for s in range(0, x.size, CHUNK):
        e = min(s + CHUNK, x.size)
        x[s:e] = block[s % period:s % period + (e - s)]


def _windows(n):
    w = 1 << 12
    return [(0, w), (BIG - w, min(BIG + w, n)), (n - w, n)]


# Every test computes in a helper that returns only small windows: the 8 GiB array is
# freed before any assertion (a failure's traceback must not keep it alive).

@pytest.fixture
def settings(request):
    isa, threads = request.param
    from fastnorm import _config
    if not _config._runs(isa):
        pytest.skip(f"this CPU does not run the {isa} variant")
    previous = fastnorm.isa()
    fastnorm.set_isa(isa)
    fastnorm.set_num_threads(threads)
    yield request.param
    fastnorm.set_isa(previous)
    fastnorm.set_num_threads(None)


def _sigmoid_windows(n):
    x = _big_float32(n)
    _fill(x)
    assert fastnorm.sigmoid(x, out=x) is x
    return {w: x[w[0]:w[1]].copy() for w in _windows(n)}


@pytest.mark.parametrize("settings", [("avx512", 1), ("avx2", 1), ("base", 2)], indirect=True, ids=str)
def test_activation_over_more_than_2_31_elements(settings):
    n = BIG + (1 << 20) + 3
    for (s, e), got in _sigmoid_windows(n).items():
        want = reference.sigmoid(_pattern(s, e).astype(np.float64))
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=0)


_LN_ROWS = (0, (1 << 21) - 1, 1 << 21, (1 << 21) + 2)


def _layer_norm_rows(rows, k):
    x = _big_float32(rows * k).reshape(rows, k)
    _fill(x.reshape(-1), period=997)          # rows differ: 997 does not divide 1024
    y, mean, rstd = fastnorm.layer_norm(x, k, out=x)
    assert y is x and mean.shape == (rows,)
    return {r: (x[r].copy(), mean[r], rstd[r]) for r in _LN_ROWS}


@pytest.mark.parametrize("settings", [("avx512", 1)], indirect=True, ids=str)
def test_layer_norm_rows_beyond_2_31_elements(settings):
    rows, k = (1 << 21) + 3, 1024
    for r, (got, mean, rstd) in _layer_norm_rows(rows, k).items():
        row = _pattern(r * k, (r + 1) * k, period=997).astype(np.float64)
        want, wmean, wrstd = reference.layer_norm(row, k)
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-5)
        np.testing.assert_allclose(mean, wmean, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(rstd, wrstd, rtol=1e-5)


def _batch_norm_windows(n, period):
    x = _big_float32(n)
    _fill(x, period=period, scale=1.0, offset=-511.5)
    y, mean, rstd = fastnorm.batch_norm(x.reshape(1, 1, n), out=x.reshape(1, 1, n))
    return mean, rstd, {w: y.reshape(-1)[w[0]:w[1]].copy() for w in _windows(n)}


@pytest.mark.parametrize("settings", [("avx2", 2)], indirect=True, ids=str)
def test_batch_norm_channel_of_more_than_2_31_elements(settings):
    n = BIG + 16
    period = 1024
    # Exact statistics of the pattern: whole periods plus a 16-element tail.
    v = np.arange(period) - 511.5
    q, r = divmod(n, period)
    mean = (q * v.sum() + v[:r].sum()) / n
    var = (q * ((v - mean) ** 2).sum() + ((v[:r] - mean) ** 2).sum()) / n
    got_mean, got_rstd, windows = _batch_norm_windows(n, period)
    np.testing.assert_allclose(got_mean[0], mean, rtol=0, atol=1e-6)
    np.testing.assert_allclose(got_rstd[0], 1 / np.sqrt(var + 1e-5), rtol=1e-6)
    for (s, e), got in windows.items():
        want = (_pattern(s, e, period=period, scale=1.0, offset=-511.5) - mean) / np.sqrt(var + 1e-5)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def _transposed_windows(rows, cols):
    """A Fortran-order (rows, cols) uint16 array (x.T of a C-order one; item (i, j) holds
    (7 i + 13 j) mod 2**16) copied into C order by fn_layout.h: source and destination offsets
    beyond 2**31 elements."""
    from fastnorm import _config
    need = 2 * rows * cols * 2 + GIB
    if _available_bytes() < need:
        pytest.skip(f"needs {need / GIB:.1f} GiB of free memory")
    src = np.empty((cols, rows), np.uint16)
    i7 = (np.arange(rows, dtype=np.int64) * 7)[None, :]
    for j0 in range(0, cols, 1024):
        j = np.arange(j0, min(j0 + 1024, cols), dtype=np.int64)[:, None]
        src[j0:j0 + j.size] = (i7 + 13 * j) & 0xFFFF
    dst = np.empty((rows, cols), np.uint16)
    _config._runtime.to_c_order(src.T, dst, fastnorm.get_num_threads(), True)
    del src
    flat = dst.reshape(-1)
    return {w: flat[w[0]:w[1]].copy() for w in _windows(rows * cols)}


@pytest.mark.parametrize("settings", [("avx512", 2)], indirect=True, ids=str)
def test_transposing_copy_beyond_2_31_elements(settings):
    rows, cols = (1 << 16) + 3, (1 << 15) + 5   # 2**31 + 425999 items of 2 bytes
    for (s, e), got in _transposed_windows(rows, cols).items():
        k = np.arange(s, e, dtype=np.int64)
        i, j = k // cols, k % cols
        np.testing.assert_array_equal(got, ((7 * i + 13 * j) & 0xFFFF).astype(np.uint16))
