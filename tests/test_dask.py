"""fastnorm.dask: results on Dask arrays equal the in-memory fastnorm functions for
several chunkings (regular, irregular, cut along trailing axes), on a local scheduler
(synchronous and threads)."""
import warnings

import numpy as np
import pytest

dask = pytest.importorskip("dask")
da = pytest.importorskip("dask.array")

import fastnorm  # noqa: E402
import fastnorm.dask as fd  # noqa: E402

SHAPE = (37, 6, 5, 4)
CHUNKINGS = [SHAPE, (10, 6, 5, 4), ((5, 20, 12), 6, 5, 4), (7, 4, 2, 3), (5, 1, 5, 1), (37, 6, 1, 4)]
TOL = {np.float16: 1e-3, np.float32: 3e-6, np.float64: 1e-13}


@pytest.fixture(params=["synchronous", "threads"])
def scheduler(request):
    with dask.config.set(scheduler=request.param):
        yield request.param


def _data(rng, dtype, shape=SHAPE, offset=5.0):
    return (rng.standard_normal(shape) * 2 + offset).astype(dtype)


def _close(got, want, dtype):
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=TOL[dtype], atol=TOL[dtype])


# ---------------------------------------------------------------------------- elementwise and dropout

@pytest.mark.parametrize("chunks", CHUNKINGS)
def test_activations_blockwise_bit_identical(backend, scheduler, rng, chunks):
    x_np = _data(rng, np.float32, offset=0.0)
    x = da.from_array(x_np, chunks=chunks)
    for name in ["relu", "gelu", "silu", "sigmoid", "tanh", "softplus", "mish"]:
        np.testing.assert_array_equal(fd.activation(x, name).compute(), getattr(fastnorm, name)(x_np))
    np.testing.assert_array_equal(fd.activation(x, "leaky_relu", negative_slope=0.2).compute(),
                                  fastnorm.leaky_relu(x_np, negative_slope=0.2))
    g_np = rng.standard_normal(SHAPE).astype(np.float32)
    g = da.from_array(g_np, chunks=(12, 3, 5, 4))  # other chunks: unified
    np.testing.assert_array_equal(fd.map_elementwise(fastnorm.gelu_backward, g, x).compute(),
                                  fastnorm.gelu_backward(g_np, x_np))


@pytest.mark.parametrize("chunks", CHUNKINGS)
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_dropout_bit_identical_for_any_chunking(backend, num_threads, scheduler, rng, chunks, dtype):
    x_np = _data(rng, dtype, offset=0.0)
    x = da.from_array(x_np, chunks=chunks)
    for p, seed, offset in [(0.3, 7, 0), (0.5, 2**100 + 3, 12345), (0.0, 1, 3), (1.0, 9, 0)]:
        y_ref, mask = fastnorm.dropout(x_np, p, seed=seed, offset=offset)
        np.testing.assert_array_equal(fd.dropout(x, p, seed=seed, offset=offset).compute(), y_ref)
        g_np = rng.standard_normal(SHAPE).astype(dtype)
        g = da.from_array(g_np, chunks=chunks)
        np.testing.assert_array_equal(fd.dropout_backward(g, p, seed=seed, offset=offset).compute(),
                                      fastnorm.dropout_backward(g_np, mask))


def test_dropout_block_starts_off_counter_boundary(rng):
    # Rows of 7 elements: blocks start at flat indices that are not multiples of 16.
    x_np = rng.standard_normal((50, 7)).astype(np.float32)
    for chunks in [(3, 7), (1, 7), (9, 2), ((1, 2, 47), (3, 4))]:
        got = fd.dropout(da.from_array(x_np, chunks=chunks), 0.4, seed=5, offset=11).compute(scheduler="sync")
        np.testing.assert_array_equal(got, fastnorm.dropout(x_np, 0.4, seed=5, offset=11)[0])
    one = fd.dropout(da.from_array(np.float32(3.0)), 0.5, seed=1).compute()
    assert one == fastnorm.dropout(np.float32(3.0), 0.5, seed=1)[0]


# ---------------------------------------------------------------------------- per-sample norms

@pytest.mark.parametrize("chunks", CHUNKINGS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_layer_rms_group_norm(backend, num_threads, scheduler, rng, chunks, dtype):
    x_np = _data(rng, dtype)
    x = da.from_array(x_np, chunks=chunks)
    pdt = np.float32 if dtype == np.float16 else dtype
    w, b = rng.standard_normal((5, 4)).astype(pdt), rng.standard_normal((5, 4)).astype(pdt)
    _close(fd.layer_norm(x, (5, 4), w, b, eps=1e-3).compute(), fastnorm.layer_norm(x_np, (5, 4), w, b, eps=1e-3)[0],
           dtype)
    _close(fd.layer_norm(x, 4).compute(), fastnorm.layer_norm(x_np, 4)[0], dtype)
    _close(fd.rms_norm(x, (4,), w[0]).compute(), fastnorm.rms_norm(x_np, (4,), w[0])[0], dtype)
    wc, bc = rng.standard_normal(6).astype(pdt), rng.standard_normal(6).astype(pdt)
    _close(fd.group_norm(x, 3, wc, bc).compute(), fastnorm.group_norm(x_np, 3, wc, bc)[0], dtype)
    _close(fd.group_norm(x, 2, channels_last=True).compute(),
           fastnorm.group_norm(x_np, 2, channels_last=True)[0], dtype)


def test_per_sample_norms_only_rechunk_what_they_must(rng):
    x = da.from_array(_data(rng, np.float32), chunks=(10, 6, 5, 4))
    assert fd.layer_norm(x, (5, 4)).chunks == x.chunks  # already whole: no rechunk
    y = fd.group_norm(da.from_array(_data(rng, np.float32), chunks=(10, 3, 5, 2)), 3)
    assert y.chunks[0] == (10, 10, 10, 7) and y.numblocks[1:] == (1, 1, 1)


# ---------------------------------------------------------------------------- moments and batch norm

@pytest.mark.parametrize("chunks", CHUNKINGS)
@pytest.mark.parametrize("split_every", [2, 8])
def test_partial_moments_tree_reduction(backend, scheduler, rng, chunks, split_every):
    x_np = _data(rng, np.float64, offset=1e4)
    x = da.from_array(x_np, chunks=chunks)
    for axis in [(0, 2, 3), 0, (1, 3), None, (0, 1, 2, 3)]:
        got = fd.partial_moments(x, axis, split_every=split_every).compute()
        want = fastnorm.moments(x_np, axis, partial=True)
        assert got.count == want.count and got.mean.shape == want.mean.shape
        np.testing.assert_allclose(got.mean, want.mean, rtol=1e-14)
        np.testing.assert_allclose(got.m2, want.m2, rtol=1e-9)


@pytest.mark.parametrize("chunks", CHUNKINGS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_batch_norm_two_phases(backend, num_threads, scheduler, rng, chunks, dtype, channels_last):
    x_np = _data(rng, dtype, offset=50.0)
    x = da.from_array(x_np, chunks=chunks)
    c = SHAPE[-1] if channels_last else SHAPE[1]
    pdt = np.float32 if dtype == np.float16 else dtype
    w, b = rng.standard_normal(c).astype(pdt), rng.standard_normal(c).astype(pdt)
    y, mean, rstd = dask.compute(*fd.batch_norm(x, w, b, channels_last=channels_last))
    y_ref, mean_ref, rstd_ref = fastnorm.batch_norm(x_np, w, b, channels_last=channels_last)
    _close(y, y_ref, dtype)
    _close(mean, mean_ref, dtype)
    _close(rstd, rstd_ref, dtype)
    rm, rv = rng.standard_normal(c).astype(pdt), rng.uniform(0.5, 2, c).astype(pdt)
    y, mean, rstd = dask.compute(*fd.batch_norm(x, w, b, rm, rv, training=False, channels_last=channels_last))
    y_ref, mean_ref, rstd_ref = fastnorm.batch_norm(x_np, w, b, rm, rv, training=False, channels_last=channels_last)
    _close(y, y_ref, dtype)
    _close(rstd, rstd_ref, dtype)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_batch_norm_of_an_empty_batch(backend, dtype, channels_last):
    """As fastnorm.batch_norm: an empty y and NaN mean and rstd in the compute dtype."""
    x_np = np.zeros((0, 4, 3, 3) if channels_last else (0, 3, 4), dtype)
    y, mean, rstd = dask.compute(*fd.batch_norm(da.from_array(x_np, chunks=2),
                                                channels_last=channels_last))
    y_ref, mean_ref, rstd_ref = fastnorm.batch_norm(x_np, channels_last=channels_last)
    assert y.shape == x_np.shape and y.dtype == y_ref.dtype
    for got, want in [(mean, mean_ref), (rstd, rstd_ref)]:
        assert got.shape == want.shape == (3,) and got.dtype == want.dtype
        assert np.isnan(got).all() and np.isnan(want).all()


def test_batch_norm_of_a_channel_with_an_infinity_in_any_block(backend, rng):
    """Its mean is the infinity, as the in-memory function gives it (not the NaN of Chan's
    update where the infinity was not in the last block merged)."""
    x_np = rng.standard_normal((12, 3, 4)).astype(np.float32)
    x_np[1, 0, 1], x_np[10, 1, 2] = np.inf, -np.inf
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mean = fd.batch_norm(da.from_array(x_np, chunks=(4, 3, 4)))[1].compute()
    np.testing.assert_array_equal(mean, fastnorm.batch_norm(x_np)[1])
    np.testing.assert_array_equal(mean[:2], [np.inf, -np.inf])


def test_running_statistics_from_partial_moments(rng):
    x_np = _data(rng, np.float32)
    x = da.from_array(x_np, chunks=(8, 3, 5, 4))
    total = fd.partial_moments(x, (0, 2, 3)).compute()
    rm, rv = np.zeros(6, np.float32), np.ones(6, np.float32)
    rm_ref, rv_ref = rm.copy(), rv.copy()
    fastnorm.batch_norm(x_np, None, None, rm_ref, rv_ref, momentum=0.1)
    rm[...] = 0.9 * rm + 0.1 * total.mean
    rv[...] = 0.9 * rv + 0.1 * total.var(ddof=1)
    np.testing.assert_allclose(rm, rm_ref, rtol=1e-6)
    np.testing.assert_allclose(rv, rv_ref, rtol=1e-6)


def test_errors(rng):
    x = da.from_array(_data(rng, np.float32), chunks=10)
    with pytest.raises(TypeError, match="dropout: seed must be an int in"):
        fd.dropout(x, 0.5, seed=None)
    with pytest.raises(ValueError, match="dropout: p must be a probability"):
        fd.dropout(x, 1.5, seed=1)
    with pytest.raises(ValueError, match="activation: name must be one of"):
        fd.activation(x, "softmax")
    with pytest.raises(TypeError, match="layer_norm: x must be a dask.array.Array or a numpy.ndarray"):
        fd.layer_norm([1.0, 2.0], 2)
    with pytest.raises(TypeError, match="batch_norm: x must have dtype float16, float32 or float64"):
        fd.batch_norm(da.ones((4, 3), dtype=np.int32))
    with pytest.raises(ValueError, match="layer_norm: normalized_shape"):
        fd.layer_norm(x, (3,))
    with pytest.raises(ValueError, match="batch_norm: running statistics are not updated lazily"):
        fd.batch_norm(x, running_mean=np.zeros(6), running_var=np.ones(6))
    with pytest.raises(ValueError, match="batch_norm: running_mean and running_var are required"):
        fd.batch_norm(x, training=False)
    with pytest.raises(ValueError, match="group_norm: weight must have shape"):
        fd.group_norm(x, 2, np.ones(4))
    with pytest.raises(ValueError, match="map_elementwise: the arrays must have one shape"):
        fd.map_elementwise(fastnorm.relu_backward, x, x[:3])
    with pytest.raises(ValueError, match="partial_moments: split_every must be >= 2"):
        fd.partial_moments(x, 0, split_every=1)
    with pytest.raises(ValueError, match="batch_norm: expected more than 1 value per channel"):
        fd.batch_norm(da.ones((1, 3), chunks=1))[0].compute()
