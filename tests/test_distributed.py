"""Mergeable moments (moments(partial=True), merge_moments) and fastnorm.distributed:
sync_batch_norm / backward / SyncBatchNorm against single-process batch norm over the
concatenated batch, with an in-process communicator (ranks as threads), and the same
under real MPI (mpirun -n 2 and -n 4, skipped without mpirun or mpi4py)."""
import os
import shutil
import signal
import subprocess
import sys
import threading
import warnings

import numpy as np
import pytest
from hypothesis import given, strategies as st

import fastnorm
from fastnorm import reference
from fastnorm.distributed import (SyncBatchNorm, allreduce_gradients, allreduce_moments,
                                  sync_batch_norm, sync_batch_norm_backward)

TOL = {np.float16: 2e-3, np.float32: 2e-5, np.float64: 1e-12}
HERE = os.path.dirname(os.path.abspath(__file__))


# ---------------------------------------------------------------------------- in-process communicator

class _Group:
    def __init__(self, size):
        self.size = size
        self.barrier = threading.Barrier(size, timeout=60)
        self.slots = [None] * size


class ThreadComm:
    """What fastnorm.distributed needs of an mpi4py communicator, for ranks that are
    threads of this process: Allreduce (sum, in rank order: identical on every rank),
    Get_rank, Get_size.  Counts calls and bytes sent."""

    def __init__(self, group, rank):
        self.group, self.rank = group, rank
        self.calls = self.bytes_sent = 0

    def Get_rank(self):
        return self.rank

    def Get_size(self):
        return self.group.size

    def Allreduce(self, sendbuf, recvbuf, op=None):
        assert op is None, "fastnorm relies on the default operation (sum)"
        group = self.group
        group.slots[self.rank] = np.array(sendbuf, copy=True)
        self.calls += 1
        self.bytes_sent += group.slots[self.rank].nbytes
        group.barrier.wait()
        total = group.slots[0].copy()
        with np.errstate(all="ignore"):  # as MPI's sum, in C: inf + -inf is NaN, no warning
            for part in group.slots[1:]:
                total += part
        recvbuf[...] = total
        group.barrier.wait()  # nobody overwrites a slot before everyone has summed


def run_ranks(size, fn):
    """fn(comm) on `size` threads, one per rank; returns (results, comms).  An exception
    on one rank breaks the barrier of the others and is re-raised here."""
    group = _Group(size)
    comms = [ThreadComm(group, r) for r in range(size)]
    results, errors = [None] * size, [None] * size

    def target(r):
        try:
            results[r] = fn(comms[r])
        except BaseException as exc:  # noqa: B036 - re-raised below
            errors[r] = exc
            group.barrier.abort()

    threads = [threading.Thread(target=target, args=(r,)) for r in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    first = [e for e in errors if e is not None and not isinstance(e, threading.BrokenBarrierError)]
    if first:
        raise first[0]
    if any(e is not None for e in errors):
        raise errors[0]
    return results, comms


def split_points(n, parts, rng, allow_empty=True):
    cuts = np.sort(rng.integers(0, n + 1, parts - 1)) if allow_empty else np.linspace(0, n, parts + 1)[1:-1]
    return np.concatenate(([0], np.asarray(cuts, int), [n]))


# ---------------------------------------------------------------------------- partial / merge moments

def _oracle(x, axis):
    xd = np.asarray(x, np.float64)
    mean = xd.mean(axis=axis)
    return mean, ((xd - np.expand_dims(mean, axis)) ** 2).sum(axis=axis)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("layout", ["c", "fortran", "strided"])
def test_partial_moments_match_oracle(backend, num_threads, rng, dtype, layout):
    x = (rng.standard_normal((13, 6, 9)) * 4 + 100).astype(dtype)
    if layout == "fortran":
        x = np.asfortranarray(x)
    elif layout == "strided":
        x = (rng.standard_normal((26, 6, 18)) * 4 + 100).astype(dtype)[::2, :, ::2]
    for axis in [0, 1, 2, (0, 2), (0, 1), (1, 2), (0, 1, 2)]:
        p = fastnorm.moments(x, axis, partial=True)
        mean, m2 = _oracle(x, axis)
        assert isinstance(p, fastnorm.PartialMoments)
        assert type(p.count) is int and p.count == x.size // np.asarray(mean).size
        assert p.mean.dtype == np.float64 and p.m2.dtype == np.float64
        assert p.mean.shape == np.shape(mean) and p.m2.shape == np.shape(m2)
        np.testing.assert_allclose(p.mean, mean, rtol=1e-13)
        np.testing.assert_allclose(p.m2, m2, rtol=1e-9)
        mean_v, var_v = fastnorm.moments(x, axis, ddof=1)
        np.testing.assert_allclose(p.var(1), var_v, rtol=TOL[dtype] if dtype != np.float16 else 1e-6)


def test_partial_moments_empty_and_var():
    p = fastnorm.moments(np.zeros((0, 2), np.float32), 0, partial=True)
    assert p.count == 0 and (p.mean == 0).all() and (p.m2 == 0).all() and p.mean.shape == (2,)
    assert np.isnan(p.var()).all() and p.var().shape == (2,)
    one = fastnorm.moments(np.array([[2.0, 5.0]]), 0, partial=True)
    assert one.var(0).tolist() == [0.0, 0.0] and np.isnan(one.var(1)).all()
    # The empty partial is the identity of the merge, exactly.
    merged = fastnorm.merge_moments([p, one, p])
    assert merged.count == 1 and merged.mean.tolist() == [2.0, 5.0] and merged.m2.tolist() == [0, 0]


@given(rows=st.integers(1, 60), cols=st.integers(1, 5), parts=st.integers(1, 12),
       seed=st.integers(0, 2**32 - 1), offset=st.sampled_from([0.0, 1e4, -3e6]))
def test_merge_many_splits_equals_one_shot(rows, cols, parts, seed, offset):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, cols)) * rng.uniform(0.01, 10) + offset
    cuts = split_points(rows, parts, rng)
    partials = [fastnorm.moments(x[a:b], 0, partial=True) for a, b in zip(cuts[:-1], cuts[1:])]
    mean, m2 = _oracle(x, 0)
    scale = np.abs(x - mean).max() + 1e-300
    # Data of magnitude |offset| are only known to eps * |offset|: each deviation from a
    # mean carries that much error whichever way it is computed (the conditioning).
    eps = np.finfo(np.float64).eps
    m2_tol = 8 * rows * scale * eps * (abs(offset) + scale)
    for order in (partials, partials[::-1], [partials[i] for i in rng.permutation(len(partials))]):
        got = fastnorm.merge_moments(order)
        assert got.count == rows
        np.testing.assert_allclose(got.mean, mean, rtol=1e-14, atol=1e-13 * scale)
        np.testing.assert_allclose(got.m2, m2, rtol=1e-10, atol=m2_tol)


def test_merge_two_dimensional_splits_and_triples(rng):
    # Pieces split along two reduced axes, given as plain (count, mean, m2) tuples.
    x = rng.standard_normal((12, 4, 10)) + 7
    pieces = [x[i:i + 4, :, j:j + 5] for i in range(0, 12, 4) for j in range(0, 10, 5)]
    partials = [tuple(fastnorm.moments(p, (0, 2), partial=True)) for p in pieces]
    got = fastnorm.merge_moments(iter(partials))
    mean, m2 = _oracle(x, (0, 2))
    np.testing.assert_allclose(got.mean, mean, rtol=1e-14)
    np.testing.assert_allclose(got.m2, m2, rtol=1e-12)
    _, var = fastnorm.moments(x, (0, 2))
    np.testing.assert_allclose(got.var(), var, rtol=1e-12)


def test_merge_matches_reference_on_every_backend(backend, rng):
    x = rng.standard_normal((40, 3)).astype(np.float32) + 3
    parts = [fastnorm.moments(c, 0, partial=True) for c in np.array_split(x, 7)]
    ref_parts = [reference.moments(c, 0, partial=True) for c in np.array_split(x, 7)]
    got, want = fastnorm.merge_moments(parts), reference.merge_moments(ref_parts)
    assert got.count == want.count
    np.testing.assert_allclose(got.mean, want.mean, rtol=1e-13)
    np.testing.assert_allclose(got.m2, want.m2, rtol=1e-10)


def test_merge_moments_errors():
    good = fastnorm.moments(np.ones((3, 2)), 0, partial=True)
    with pytest.raises(ValueError, match="merge_moments: partials must contain at least one"):
        fastnorm.merge_moments([])
    with pytest.raises(TypeError, match="merge_moments: partials must be an iterable"):
        fastnorm.merge_moments(5)
    with pytest.raises(TypeError, match=r"merge_moments: partials\[1\] must be a PartialMoments"):
        fastnorm.merge_moments([good, 3.0])
    with pytest.raises(ValueError, match=r"merge_moments: partials\[1\] has mean/m2 of shapes"):
        fastnorm.merge_moments([good, (3, np.zeros(3), np.zeros(3))])
    with pytest.raises(ValueError, match=r"partials\[0\].count must be >= 0"):
        fastnorm.merge_moments([(-1, np.zeros(2), np.zeros(2))])
    with pytest.raises(TypeError, match=r"partials\[0\].count must be an int"):
        fastnorm.merge_moments([(1.5, np.zeros(2), np.zeros(2))])
    with pytest.raises(TypeError, match="moments: partial must be a bool"):
        fastnorm.moments(np.ones(3), partial=1)


# ---------------------------------------------------------------------------- allreduce_moments

@pytest.mark.parametrize("reduction", ["gather", "two_step", None])
@pytest.mark.parametrize("size", [1, 2, 3, 5])
def test_allreduce_moments_exact_and_identical(rng, reduction, size):
    x = rng.standard_normal((50, 4)) * 0.1 + 1e5
    cuts = split_points(50, size, rng)

    def rank(comm):
        r = comm.Get_rank()
        local = fastnorm.moments(x[cuts[r]:cuts[r + 1]], 0, partial=True)
        return allreduce_moments(local, comm, stats_reduction=reduction)

    results, comms = run_ranks(size, rank)
    mean, m2 = _oracle(x, 0)
    for got in results:
        assert got.count == 50
        np.testing.assert_allclose(got.mean, mean, rtol=1e-15)
        np.testing.assert_allclose(got.m2, m2, rtol=1e-9)
        np.testing.assert_array_equal(got.mean, results[0].mean)
        np.testing.assert_array_equal(got.m2, results[0].m2)
    # gather: one Allreduce of size x (2C + 1) float64; two_step: two of C + 1.
    calls, volume = (2, 2 * (4 + 1) * 8) if reduction == "two_step" else (1, size * (2 * 4 + 1) * 8)
    assert all(c.calls == calls and c.bytes_sent == volume for c in comms)


def test_allreduce_moments_all_empty():
    def rank(comm):
        return allreduce_moments(fastnorm.moments(np.zeros((0, 2)), 0, partial=True), comm,
                                 stats_reduction="two_step")
    results, _ = run_ranks(2, rank)
    assert results[0].count == 0 and (results[0].mean == 0).all()


# ---------------------------------------------------------------------------- sync_batch_norm

CONFIGS = [((16, 3, 5, 4), False), ((33, 7), False), ((12, 4, 4, 5), True), ((9, 5, 6), False),
           ((10, 2, 3, 2, 2), False)]


def _single_and_synced(x, dy, w, b, counts, channels_last, reduction, momentum=0.1, nbt=None):
    c = x.shape[-1] if channels_last else x.shape[1]
    pdt = w.dtype
    rm_ref, rv_ref = np.zeros(c, pdt), np.ones(c, pdt)
    ref = fastnorm.batch_norm(x, w, b, rm_ref, rv_ref, channels_last=channels_last, momentum=momentum,
                              num_batches_tracked=nbt)
    ref_grads = fastnorm.batch_norm_backward(dy, x, w, ref[1], ref[2], bias=b, channels_last=channels_last)
    starts = np.concatenate(([0], np.cumsum(counts)))

    def rank(comm):
        r = comm.Get_rank()
        sl = slice(starts[r], starts[r + 1])
        rm, rv = np.zeros(c, pdt), np.ones(c, pdt)
        y, mean, rstd = sync_batch_norm(x[sl], w, b, rm, rv, comm=comm, channels_last=channels_last,
                                        stats_reduction=reduction, momentum=momentum,
                                        num_batches_tracked=nbt)
        forward_calls = comm.calls
        grads = sync_batch_norm_backward(dy[sl], x[sl], w, mean, rstd, comm=comm, bias=b,
                                         channels_last=channels_last)
        return y, mean, rstd, rm, rv, grads, forward_calls, comm.calls - forward_calls

    results, _ = run_ranks(len(counts), rank)
    return (ref, rm_ref, rv_ref, ref_grads), results


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("shape,channels_last", CONFIGS)
@pytest.mark.parametrize("reduction", ["gather", "two_step"])
def test_sync_batch_norm_equals_single_process(backend, num_threads, rng, dtype, shape, channels_last,
                                               reduction):
    x = (rng.standard_normal(shape) * 3 + 50).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    c = shape[-1] if channels_last else shape[1]
    pdt = np.float32 if dtype == np.float16 else dtype
    w, b = rng.standard_normal(c).astype(pdt), rng.standard_normal(c).astype(pdt)
    counts = [shape[0] // 3, 0, shape[0] - shape[0] // 3 - 2, 2]  # uneven, one rank empty
    (ref, rm_ref, rv_ref, (gx_ref, gw_ref, gb_ref)), results = _single_and_synced(
        x, dy, w, b, counts, channels_last, reduction)
    tol = TOL[dtype]
    y = np.concatenate([res[0] for res in results])
    gx = np.concatenate([res[5][0] for res in results])
    assert y.dtype == dtype and gx.dtype == dtype
    np.testing.assert_allclose(y.astype(np.float64), ref[0].astype(np.float64), rtol=tol, atol=tol)
    np.testing.assert_allclose(gx.astype(np.float64), gx_ref.astype(np.float64), rtol=tol * 10, atol=tol * 10)
    gw = sum(res[5][1].astype(np.float64) for res in results)
    gb = sum(res[5][2].astype(np.float64) for res in results)
    np.testing.assert_allclose(gw, gw_ref, rtol=tol * 100, atol=tol * 100)
    np.testing.assert_allclose(gb, gb_ref, rtol=tol * 100, atol=tol * 100)
    for y_r, mean, rstd, rm, rv, _, forward_calls, backward_calls in results:
        assert mean.dtype == ref[1].dtype and rstd.dtype == ref[2].dtype
        np.testing.assert_allclose(mean, ref[1], rtol=tol)
        np.testing.assert_allclose(rstd, ref[2], rtol=tol)
        np.testing.assert_allclose(rm, rm_ref, rtol=tol, atol=tol)
        np.testing.assert_allclose(rv, rv_ref, rtol=tol, atol=tol)
        # Running statistics agree on every rank, bit for bit.
        np.testing.assert_array_equal(rm, results[0][3])
        np.testing.assert_array_equal(rv, results[0][4])
        assert forward_calls == (1 if reduction == "gather" else 2) and backward_calls == 1


def test_sync_batch_norm_single_rank_is_batch_norm(backend, rng):
    x = rng.standard_normal((20, 6, 3)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    (ref, _, _, grads), results = _single_and_synced(x, dy, np.ones(6, np.float32), np.zeros(6, np.float32),
                                                       [20], False, "gather")
    np.testing.assert_allclose(results[0][0], ref[0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(results[0][5][0], grads[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("channels_last", [False, True])
def test_sync_batch_norm_backward_single_rank_bits(backend, rng, channels_last):
    """One rank: the same float64 coefficients, operation for operation, as batch_norm_backward
    (rstd^3 as a product in both; NumPy's ** 3 differs from it in the last bit)."""
    x = (2 + 3 * rng.standard_normal((30, 4, 200))).astype(np.float64)
    dy = rng.standard_normal(x.shape)
    c = x.shape[-1] if channels_last else x.shape[1]
    w, b = rng.standard_normal(c), rng.standard_normal(c)
    _, mean, rstd = fastnorm.batch_norm(x, w, b, channels_last=channels_last)
    ref = fastnorm.batch_norm_backward(dy, x, w, mean, rstd, bias=b, channels_last=channels_last)
    results, _ = run_ranks(1, lambda comm: sync_batch_norm_backward(dy, x, w, mean, rstd, comm=comm, bias=b,
                                                                     channels_last=channels_last))
    for got, want in zip(results[0], ref):
        assert got.tobytes() == want.tobytes()


def test_cumulative_momentum_and_eval_without_communication(rng):
    x = rng.standard_normal((12, 3)) + 2
    dy = rng.standard_normal(x.shape)
    (ref, rm_ref, rv_ref, _), results = _single_and_synced(x, dy, np.ones(3), np.zeros(3), [5, 7], False,
                                                             "gather", momentum=None, nbt=3)
    for res in results:
        np.testing.assert_allclose(res[3], rm_ref, rtol=1e-13)
        np.testing.assert_allclose(res[4], rv_ref, rtol=1e-13)

    class NoComm:
        def Allreduce(self, *args):
            raise AssertionError("evaluation mode must not communicate")
        Get_rank = Get_size = Allreduce

    rm, rv = rng.standard_normal(3), rng.uniform(0.5, 2, 3)
    y, mean, rstd = sync_batch_norm(x, None, None, rm, rv, comm=NoComm(), training=False)
    y_ref, mean_ref, rstd_ref = fastnorm.batch_norm(x, None, None, rm, rv, training=False)
    np.testing.assert_array_equal(y, y_ref)
    gx, gw, gb = sync_batch_norm_backward(dy, x, np.ones(3), mean, rstd, comm=NoComm(), training=False)
    np.testing.assert_array_equal(gx, fastnorm.batch_norm_backward(dy, x, np.ones(3), mean, rstd,
                                                                   training=False)[0])


def test_sync_batch_norm_finite_differences(rng):
    """d/dx of the global loss sum_r <dy_r, y_r>, through the communication, in float64."""
    x = rng.standard_normal((7, 3, 2))
    dy = rng.standard_normal(x.shape)
    w, b = rng.standard_normal(3), rng.standard_normal(3)
    counts = [3, 4]

    def per_rank(xx, fn):
        def rank(comm):
            r = comm.Get_rank()
            sl = slice(0, 3) if r == 0 else slice(3, 7)
            return fn(comm, xx[sl], dy[sl])
        return run_ranks(len(counts), rank)[0]

    def loss(xx):
        outs = per_rank(xx, lambda comm, xs, gs: float((sync_batch_norm(xs, w, b, comm=comm)[0] * gs).sum()))
        return sum(outs)

    def grad(comm, xs, gs):
        _, mean, rstd = sync_batch_norm(xs, w, b, comm=comm)
        return sync_batch_norm_backward(gs, xs, w, mean, rstd, comm=comm, bias=b)

    results = per_rank(x, grad)
    gx = np.concatenate([g[0] for g in results])
    gw = results[0][1] + results[1][1]
    h = 1e-6
    for idx in [(0, 0, 0), (2, 1, 1), (3, 2, 0), (6, 0, 1)]:
        xp, xm = x.copy(), x.copy()
        xp[idx] += h
        xm[idx] -= h
        assert abs((loss(xp) - loss(xm)) / (2 * h) - gx[idx]) < 1e-6
    for ch in range(3):
        def loss_w(dw, ch=ch):
            w2 = w.copy()
            w2[ch] += dw
            return sum(per_rank(x, lambda comm, xs, gs: float((sync_batch_norm(xs, w2, b, comm=comm)[0] * gs).sum())))
        assert abs((loss_w(h) - loss_w(-h)) / (2 * h) - gw[ch]) < 1e-6


@pytest.mark.parametrize("channels_last", [False, True])
def test_sync_batch_norm_with_no_values_on_any_rank_is_batch_norm_of_an_empty_batch(backend, channels_last):
    """As fastnorm.batch_norm (and PyTorch): empty y, NaN mean and rstd, the running
    statistics untouched; the backward gives empty grad_x and zero parameter gradients."""
    x = np.zeros((0, 5, 3, 3) if channels_last else (0, 3, 5), np.float32)
    ref_y, ref_mean, ref_rstd = fastnorm.batch_norm(x, channels_last=channels_last)
    ref_grads = fastnorm.batch_norm_backward(x, x, np.ones(3, np.float32), ref_mean, ref_rstd,
                                             channels_last=channels_last, bias=np.zeros(3, np.float32))

    def rank(comm):
        rm, rv = np.full(3, 0.5, np.float32), np.full(3, 2.0, np.float32)
        y, mean, rstd = sync_batch_norm(x, None, None, rm, rv, comm=comm, channels_last=channels_last)
        grads = sync_batch_norm_backward(x, x, np.ones(3, np.float32), mean, rstd, comm=comm,
                                         channels_last=channels_last, bias=np.zeros(3, np.float32))
        return y, mean, rstd, rm, rv, grads

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        results, _ = run_ranks(2, rank)
    for y, mean, rstd, rm, rv, grads in results:
        assert y.shape == x.shape and y.dtype == x.dtype
        for got, want in [(mean, ref_mean), (rstd, ref_rstd)]:
            assert got.dtype == want.dtype and np.isnan(got).all() and np.isnan(want).all()
        np.testing.assert_array_equal(rm, np.full(3, 0.5, np.float32))
        np.testing.assert_array_equal(rv, np.full(3, 2.0, np.float32))
        for got, want in zip(grads, ref_grads):
            assert got.shape == want.shape and got.dtype == want.dtype
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("reduction", ["gather", "two_step"])
def test_an_infinity_on_any_rank_gives_the_single_process_statistics(backend, rng, reduction):
    """A channel with infinities of one sign has that infinity as its mean, as batch_norm
    over the whole batch (and np.mean), whichever rank holds it; Chan's update alone gave
    inf - inf = NaN where the infinity was not in the last part merged."""
    x = rng.standard_normal((8, 4, 3)).astype(np.float32)
    x[1, 0, 1] = np.inf        # rank 0
    x[6, 1, 2] = -np.inf       # rank 1
    x[2, 2, 0], x[7, 2, 2] = np.inf, -np.inf
    x[5, 3, 0] = np.nan
    _, want_mean, want_rstd = fastnorm.batch_norm(x)

    def rank(comm):
        part = x[4 * comm.Get_rank():4 * comm.Get_rank() + 4]
        return sync_batch_norm(part, comm=comm, stats_reduction=reduction)[1:]

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        results, _ = run_ranks(2, rank)
        parts = [fastnorm.moments(x[i:i + 2], (0, 2), partial=True) for i in range(0, 8, 2)]
        merged = fastnorm.merge_moments(parts)
    np.testing.assert_array_equal(want_mean, [np.inf, -np.inf, np.nan, np.nan])
    for mean, rstd in results:
        np.testing.assert_array_equal(mean, want_mean)
        np.testing.assert_array_equal(rstd, want_rstd)
    np.testing.assert_array_equal(merged.mean, want_mean)
    assert np.isnan(merged.var()).all()


def test_sync_batch_norm_errors(rng):
    x = rng.standard_normal((4, 3))

    def one_value(comm):
        xs = x[:1] if comm.Get_rank() == 0 else x[:0]
        return sync_batch_norm(xs, comm=comm)

    with pytest.raises(ValueError, match="sync_batch_norm: expected more than 1 value per channel over all ranks"):
        run_ranks(2, one_value)
    with pytest.raises(TypeError, match="sync_batch_norm: comm must be an mpi4py communicator"):
        sync_batch_norm(x, comm=object())
    with pytest.raises(ValueError, match="stats_reduction must be None, 'gather' or 'two_step'"):
        run_ranks(1, lambda comm: sync_batch_norm(x, comm=comm, stats_reduction="ring"))
    with pytest.raises(ValueError, match="sync_batch_norm: weight must have shape"):
        run_ranks(1, lambda comm: sync_batch_norm(x, np.ones(4), comm=comm))
    with pytest.raises(TypeError, match="sync_batch_norm_backward: comm must be"):
        sync_batch_norm_backward(x, x, None, np.zeros(3), np.ones(3), comm=3)
    with pytest.raises(ValueError, match="sync_batch_norm_backward: mean must have shape"):
        run_ranks(1, lambda comm: sync_batch_norm_backward(x, x, None, np.zeros(2), np.ones(3), comm=comm))
    with pytest.raises(ValueError, match="sync_batch_norm: x must have at least 2 dimensions"):
        sync_batch_norm(np.ones(3), comm=None)


# ---------------------------------------------------------------------------- SyncBatchNorm layer

@pytest.mark.parametrize("shape,layer_cls", [((12, 4), fastnorm.BatchNorm1d), ((12, 4, 5), fastnorm.BatchNorm1d),
                                              ((8, 4, 3, 3), fastnorm.BatchNorm2d),
                                              ((6, 4, 2, 3, 2), fastnorm.BatchNorm3d)])
@pytest.mark.parametrize("affine,track", [(True, True), (False, True), (True, False)])
def test_layer_equals_batch_norm_layer(backend, rng, shape, layer_cls, affine, track):
    single = layer_cls(4, affine=affine, track_running_stats=track, momentum=0.3)
    if affine:
        single.weight.data[...] = rng.standard_normal(4)
        single.bias.data[...] = rng.standard_normal(4)
    steps = [(rng.standard_normal(shape).astype(np.float32) * 2 + 1,
              rng.standard_normal(shape).astype(np.float32)) for _ in range(2)]
    starts = [0, shape[0] // 3, shape[0] // 3, shape[0]]  # rank 1 has no samples
    initial = single.state_dict()
    ref_outputs = []
    for x, dy in steps:
        ref_outputs.append((single(x), single.backward(dy)))
    single.eval()
    x_eval = steps[0][0]
    ref_eval = single(x_eval)

    def rank(comm):
        r = comm.Get_rank()
        sl = slice(starts[r], starts[r + 1])
        layer = SyncBatchNorm(4, affine=affine, track_running_stats=track, momentum=0.3, comm=comm)
        layer.load_state_dict(initial)
        outs = [(layer(x[sl]), layer.backward(dy[sl])) for x, dy in steps]
        allreduce_gradients(layer, comm)
        layer.eval()
        return outs, layer.state_dict(), [p.grad.copy() for p in layer.parameters()], layer(x_eval)

    results, _ = run_ranks(3, rank)
    for step, (y_ref, gx_ref) in enumerate(ref_outputs):
        np.testing.assert_allclose(np.concatenate([res[0][step][0] for res in results]), y_ref, rtol=2e-5, atol=2e-5)
        np.testing.assert_allclose(np.concatenate([res[0][step][1] for res in results]), gx_ref, rtol=2e-4, atol=2e-4)
    for _, state, grads, y_eval in results:
        assert list(state) == list(single.state_dict())
        for key, value in single.state_dict().items():
            np.testing.assert_allclose(state[key], value, rtol=2e-5, atol=2e-5)
            np.testing.assert_array_equal(state[key], results[0][1][key])
        for got, want in zip(grads, single.parameters()):
            np.testing.assert_allclose(got, want.grad, rtol=2e-4, atol=2e-4)
        if track:  # eval with running statistics is local and equals the single-process layer
            np.testing.assert_allclose(y_eval, ref_eval, rtol=2e-5, atol=2e-5)


def test_layer_interface_and_conversion():
    layer = SyncBatchNorm(3, momentum=None, comm="unused", dtype=np.float64)
    assert [n for n, _ in layer.named_parameters()] == ["weight", "bias"]
    assert list(layer.state_dict()) == ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    assert repr(layer).startswith("SyncBatchNorm(3, eps=1e-05, momentum=None")
    assert layer.eval() is layer and not layer.training
    y = layer(np.ones((2, 3, 4)))  # evaluation mode: no communication at all
    np.testing.assert_allclose(y, 1 / np.sqrt(1 + 1e-5))
    with pytest.raises(ValueError, match="SyncBatchNorm: x must have num_features=3"):
        layer(np.ones((2, 4)))
    with pytest.raises(ValueError, match="SyncBatchNorm: stats_reduction must be"):
        SyncBatchNorm(3, stats_reduction="tree")
    with pytest.raises(RuntimeError, match="no training-mode forward"):
        layer.backward(np.ones((2, 3, 4)))

    bn = fastnorm.BatchNorm2d(5)
    net = fastnorm.Sequential(fastnorm.Linear(2, 5), fastnorm.Sequential(bn, fastnorm.ReLU()))
    params = [id(p) for p in net.parameters()]
    converted = SyncBatchNorm.convert_sync_batchnorm(net, comm="c", stats_reduction="two_step")
    assert converted is net and isinstance(net[1][0], SyncBatchNorm)
    assert net[1][0].comm == "c" and net[1][0].stats_reduction == "two_step"
    assert [id(p) for p in net.parameters()] == params
    assert net[1][0].running_mean is bn.running_mean
    with pytest.raises(TypeError, match="convert_sync_batchnorm: layer must be a fastnorm Layer"):
        SyncBatchNorm.convert_sync_batchnorm(3)


def test_allreduce_gradients(rng):
    grads = [rng.standard_normal(4) for _ in range(3)]

    def rank(comm):
        lin = fastnorm.Linear(2, 2, dtype=np.float64)
        lin.weight.grad[...] = grads[comm.Get_rank()][:4].reshape(2, 2)
        lin.bias.grad[...] = grads[comm.Get_rank()][2:]
        allreduce_gradients(lin, comm, average=True)
        return lin.weight.grad.copy(), lin.bias.grad.copy()

    results, comms = run_ranks(3, rank)
    want = sum(grads) / 3
    for w, b in results:
        np.testing.assert_allclose(w.reshape(-1), want, rtol=1e-14)
        np.testing.assert_allclose(b, want[2:], rtol=1e-14)
    assert all(c.calls == 1 for c in comms)
    with pytest.raises(TypeError, match="allreduce_gradients: layer must be a fastnorm Layer"):
        allreduce_gradients(3, comms[0])


def test_import_fastnorm_stays_light():
    code = ("import sys, fastnorm; bad = [m for m in ('mpi4py', 'dask', 'fastnorm.distributed', "
            "'fastnorm.dask') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


# ---------------------------------------------------------------------------- real MPI ranks

def _mpirun():
    mpirun = shutil.which("mpirun") or shutil.which("mpiexec")
    if mpirun is None:
        pytest.skip("no mpirun/mpiexec on PATH (install Open MPI or MPICH, e.g. apt-get install openmpi-bin)")
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        pytest.skip("mpi4py is not installed (pip install 'fastnorm[distributed]')")
    return mpirun


def _mpi_env(mpirun):
    env = dict(os.environ)
    version = subprocess.run([mpirun, "--version"], capture_output=True, text=True, timeout=60)
    if "Open MPI" in version.stdout + version.stderr or "OpenRTE" in version.stdout + version.stderr:
        # Open MPI: more ranks than cores, root in containers, and shared memory / loopback
        # only -- no network traffic.  (MPICH's hydra needs none of this.)
        env.update(OMPI_MCA_rmaps_base_oversubscribe="1", OMPI_ALLOW_RUN_AS_ROOT="1",
                   OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMPI_MCA_btl="self,vader",
                   OMPI_MCA_oob_tcp_if_include="lo", OMPI_MCA_btl_tcp_if_include="lo")
    else:
        env.update(HYDRA_IFACE="lo", MPIR_CVAR_CH3_INTERFACE_HOSTNAME="localhost")
    return env


@pytest.mark.parametrize("nranks", [2, 4])
def test_mpirun_sync_batch_norm(nranks):
    """Real MPI: sync_batch_norm, its backward and SyncBatchNorm training equal
    single-process batch norm over the whole batch, on every kernel variant."""
    mpirun = _mpirun()
    cmd = [mpirun, "-n", str(nranks), sys.executable, os.path.join(HERE, "mpi_sync_bn_check.py")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=_mpi_env(mpirun), start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the session we started: mpirun and its ranks
        output, _ = proc.communicate()
        pytest.fail(f"mpirun -n {nranks} did not finish within 300 s:\n{output[-4000:]}")
    assert proc.returncode == 0 and f"MPI-SYNC-BN OK {nranks}" in output, output[-4000:]
