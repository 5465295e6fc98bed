"""Run under MPI: ``mpirun -n 4 python tests/mpi_sync_bn_check.py`` (tests/test_distributed.py
launches it with 2 and 4 ranks).

Every rank builds the same global batches (one seed), keeps its own slice (uneven,
one rank possibly empty), runs SyncBatchNorm / sync_batch_norm over MPI.COMM_WORLD
and compares with single-process batch norm over the whole batch, which it computes
itself: outputs and input gradients of its slice, parameter gradients summed over
ranks, running statistics (close to the single-process ones, bit-identical across
ranks), and a few SGD steps of a small network.  On every kernel variant (avx2, base,
NumPy backend) and with 1 and 2 threads.  Rank 0 prints one line "MPI-SYNC-BN OK
<ranks> <checks>" or the failures, and the exit status is non-zero on any failure.
"""
import sys
import traceback

import numpy as np
from mpi4py import MPI

import fastnorm
from fastnorm import _config
from fastnorm.distributed import SyncBatchNorm, allreduce_gradients, sync_batch_norm, \
    sync_batch_norm_backward

COMM = MPI.COMM_WORLD
RANK, SIZE = COMM.Get_rank(), COMM.Get_size()
# Tolerances: the global statistics are merged from partials instead of one pass, so
# they differ from the single-process ones by float64 rounding only; outputs by at most
# a couple of ulps of the data type.
TOL = {np.float16: 2e-3, np.float32: 2e-5, np.float64: 1e-12}


def split_counts(n, seed):
    """Uneven per-rank sample counts summing to n; with 4+ ranks, rank 1 gets none."""
    rng = np.random.default_rng(seed)
    weights = rng.uniform(0.5, 2.0, SIZE)
    if SIZE >= 4:
        weights[1] = 0.0
    counts = np.floor(weights / weights.sum() * n).astype(int)
    counts[0] += n - counts.sum()
    return counts


def my_slice(counts):
    start = int(np.sum(counts[:RANK]))
    return slice(start, start + int(counts[RANK]))


def implementations():
    return [("cython", isa) for isa in _config._runnable_isas()] + [("numpy", None)]


class Checker:
    def __init__(self):
        self.failures, self.count = [], 0

    def close(self, what, got, want, tol):
        self.count += 1
        got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
        if got.shape != want.shape or not np.allclose(got, want, rtol=tol, atol=tol):
            err = np.abs(got - want).max() if got.shape == want.shape else f"shapes {got.shape} {want.shape}"
            self.failures.append(f"rank {RANK}: {what}: max error {err} > {tol}")

    def true(self, what, cond):
        self.count += 1
        if not cond:
            self.failures.append(f"rank {RANK}: {what}")


def same_on_all_ranks(a):
    a = np.ascontiguousarray(a, dtype=np.float64).reshape(-1)
    everyone = np.empty((SIZE, a.size))
    COMM.Allgather(a, everyone)
    return bool((everyone == everyone[0]).all())


def sum_over_ranks(a):
    out = np.empty(a.size)
    COMM.Allreduce(np.ascontiguousarray(a, dtype=np.float64).reshape(-1), out)
    return out.reshape(a.shape)


def check_functional(chk, label, shape, dtype, channels_last, reduction, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 3 + 50).astype(dtype)  # an offset: tests the merge
    dy = rng.standard_normal(shape).astype(dtype)
    c = shape[-1] if channels_last else shape[1]
    pdt = np.float32 if dtype == np.float16 else dtype
    w, b = rng.standard_normal(c).astype(pdt), rng.standard_normal(c).astype(pdt)
    rm_ref, rv_ref = np.zeros(c, pdt), np.ones(c, pdt)
    y_ref, mean_ref, rstd_ref = fastnorm.batch_norm(x, w, b, rm_ref, rv_ref, channels_last=channels_last)
    gx_ref, gw_ref, gb_ref = fastnorm.batch_norm_backward(dy, x, w, mean_ref, rstd_ref, bias=b,
                                                          channels_last=channels_last)
    sl = my_slice(split_counts(shape[0], seed))
    rm, rv = np.zeros(c, pdt), np.ones(c, pdt)
    y, mean, rstd = sync_batch_norm(x[sl], w, b, rm, rv, comm=COMM, channels_last=channels_last,
                                    stats_reduction=reduction)
    gx, gw, gb = sync_batch_norm_backward(dy[sl], x[sl], w, mean, rstd, comm=COMM, bias=b,
                                          channels_last=channels_last)
    tol = TOL[dtype]
    chk.close(f"{label} y", y, y_ref[sl], tol)
    chk.true(f"{label} y dtype", y.dtype == x.dtype)
    chk.close(f"{label} mean", mean, mean_ref, tol)
    chk.close(f"{label} rstd", rstd, rstd_ref, tol)
    chk.close(f"{label} grad_x", gx, gx_ref[sl], tol * 10)
    chk.close(f"{label} grad_weight summed", sum_over_ranks(gw), gw_ref, tol * 100)
    chk.close(f"{label} grad_bias summed", sum_over_ranks(gb), gb_ref, tol * 100)
    chk.close(f"{label} running_mean", rm, rm_ref, tol)
    chk.close(f"{label} running_var", rv, rv_ref, tol)
    if reduction == "gather":
        chk.true(f"{label} statistics bit-identical on all ranks",
                 same_on_all_ranks(np.concatenate([mean, rstd, rm, rv]).astype(np.float64)))


def network(layer_cls, seed, comm=None):
    rng = np.random.default_rng(seed)
    kwargs = {} if comm is None else {"comm": comm}
    net = fastnorm.Sequential(fastnorm.Linear(6, 8, dtype=np.float64), layer_cls(8, dtype=np.float64, **kwargs),
                              fastnorm.ReLU(), fastnorm.Linear(8, 3, dtype=np.float64))
    for p in net.parameters():
        p.data[...] = rng.standard_normal(p.data.shape) * 0.5
    return net


def check_training(chk, seed):
    """Three SGD steps of Linear-SyncBN-ReLU-Linear on sliced batches vs BatchNorm1d on
    the whole batch: the loss is the sum of per-rank sums, so gradients sum over ranks."""
    rng = np.random.default_rng(seed)
    batches = [(rng.standard_normal((24, 6)), rng.standard_normal((24, 3))) for _ in range(3)]
    single, synced = network(fastnorm.BatchNorm1d, seed), network(SyncBatchNorm, seed, COMM)
    opt_single = fastnorm.optim.SGD(single.parameters(), lr=0.05)
    opt_synced = fastnorm.optim.SGD(synced.parameters(), lr=0.05)
    sl = my_slice(split_counts(24, seed))
    for x, t in batches:
        for net, opt, xs, ts, sync in ((single, opt_single, x, t, False), (synced, opt_synced, x[sl], t[sl], True)):
            net.zero_grad()
            out = net(xs)
            net.backward(out - ts)  # gradient of 0.5 * sum((out - t)**2)
            if sync:
                allreduce_gradients(net, COMM)
            opt.step()
    for (name, a), (_, b) in zip(single.state_dict().items(), synced.state_dict().items()):
        chk.close(f"training state {name}", b, a, 1e-10)
        chk.true(f"training state {name} identical on all ranks", same_on_all_ranks(b))
    synced.eval()
    x = batches[0][0]
    chk.close("eval output after training", synced(x[sl]), single.eval()(x)[sl], 1e-10)


def run_all(chk):
    configs = [((16, 3, 5, 4), False), ((33, 7), False), ((12, 4, 4, 5), True), ((9, 5, 6), False)]
    seed = 100
    for name, isa in implementations():
        for threads in (1, 2):
            with fastnorm.use_backend(name):
                if isa is not None:
                    fastnorm.set_isa(isa)
                fastnorm.set_num_threads(threads)
                for dtype in (np.float32, np.float64, np.float16):
                    for shape, channels_last in configs:
                        for reduction in ("gather", "two_step"):
                            seed += 1
                            label = (f"[{isa or name} {threads}t {np.dtype(dtype).name} {shape} "
                                     f"cl={channels_last} {reduction}]")
                            check_functional(chk, label, shape, dtype, channels_last, reduction, seed)
                check_training(chk, seed)


def main():
    chk = Checker()
    try:
        run_all(chk)
    except Exception:
        # A rank that stops making collective calls would leave the others waiting.
        traceback.print_exc()
        sys.stdout.flush()
        COMM.Abort(2)
    failures = COMM.gather(chk.failures, root=0)
    counts = COMM.gather(chk.count, root=0)
    status = 0
    if RANK == 0:
        flat = [f for fs in failures for f in fs]
        if flat:
            print("MPI-SYNC-BN FAILED", SIZE, len(flat))
            print("\n".join(flat[:50]))
            status = 1
        else:
            print("MPI-SYNC-BN OK", SIZE, sum(counts))
        sys.stdout.flush()
    status = COMM.bcast(status, root=0)
    sys.exit(status)


if __name__ == "__main__":
    main()
