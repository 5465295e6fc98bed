"""Batch norm over a batch split across processes: SyncBatchNorm over MPI (mpi4py).

Every rank holds a slice of the global batch (any number of samples, possibly none);
the statistics are those of the whole (concatenated) batch, so outputs, input
gradients and running statistics equal single-process batch norm over the
concatenation, on every rank.  Per training step:

- forward: each rank computes partial moments (count, mean, M2 per channel) of its
  slice with the compiled kernel, one ``Allreduce`` turns them into global ones (see
  :func:`allreduce_moments`), then each rank normalizes its slice;
- backward: each rank computes its two per-channel sums (sum(dy), sum(dy * (x - mean)))
  and one ``Allreduce`` of them (plus the sample count) gives the global sums.

``comm`` is an mpi4py communicator (default ``mpi4py.MPI.COMM_WORLD``, imported only
when needed) or anything with the same ``Allreduce(sendbuf, recvbuf)`` (default
operation: sum), ``Get_rank()`` and ``Get_size()``.  All ranks must make the same
calls in the same order (they are collectives); an argument error raised on one rank
before the collective leaves the others waiting, as with any MPI program.

Parameter gradients are the *local* ones (sum over this rank's samples), as in
``torch.nn.SyncBatchNorm``: summed over ranks -- :func:`allreduce_gradients`, what
data-parallel training does for every layer -- they equal the single-process ones.
Evaluation mode uses the running statistics and communicates nothing.
"""
import numpy as np

from . import _config
from . import normalization as _norm
from ._arrays import check_out, compute_dtype
from .layers import BatchNorm1d, BatchNorm2d, BatchNorm3d, Layer, _BatchNorm, _bool_arg

__all__ = ["SyncBatchNorm", "sync_batch_norm", "sync_batch_norm_backward", "allreduce_moments",
           "allreduce_gradients", "default_comm"]

_F64 = np.dtype(np.float64)
#: Up to this many ranks the statistics are gathered (one Allreduce of size x (2C + 1)
#: values, bit-identical results on every rank); beyond, two Allreduces of 2C + 1 values
#: (constant volume).  See allreduce_moments.
GATHER_MAX_RANKS = 16
_REDUCTIONS = ("gather", "two_step")


# ---------------------------------------------------------------------------- communicator

def default_comm():
    """mpi4py's COMM_WORLD (imports mpi4py, which initializes MPI)."""
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise ImportError("fastnorm.distributed: comm=None means mpi4py's COMM_WORLD, but mpi4py is "
                          f"not importable ({exc}); install it (pip install 'fastnorm[distributed]') "
                          "or pass comm=") from None
    return MPI.COMM_WORLD


def _comm(func, comm, *, gather=False):
    if comm is None:
        comm = default_comm()
    needed = ("Allreduce", "Get_rank", "Get_size") if gather else ("Allreduce",)
    for attr in needed:
        if not callable(getattr(comm, attr, None)):
            raise TypeError(f"{func}: comm must be an mpi4py communicator or provide {', '.join(needed)} "
                            f"with mpi4py's signatures, got {type(comm).__name__} without {attr}()")
    return comm


def _allreduce_sum(comm, values):
    """Elementwise sum over ranks of a float64 vector (mpi4py's default operation is SUM)."""
    send = np.ascontiguousarray(values, dtype=_F64)
    recv = np.empty_like(send)
    comm.Allreduce(send, recv)
    return recv


def _reduction(func, stats_reduction, comm):
    if stats_reduction is None:
        return "gather" if comm.Get_size() <= GATHER_MAX_RANKS else "two_step"
    if stats_reduction not in _REDUCTIONS:
        raise ValueError(f"{func}: stats_reduction must be None, 'gather' or 'two_step', "
                         f"got {stats_reduction!r}")
    return stats_reduction


# ---------------------------------------------------------------------------- moments

def allreduce_moments(partial, comm=None, *, stats_reduction=None):
    """Global :class:`~fastnorm.PartialMoments` from each rank's partial (a collective).

    Partials (count, mean, M2) do not add up, so one of two exact schemes is used:

    - ``"gather"`` (default up to GATHER_MAX_RANKS ranks): each rank writes its
      (count, mean, M2) into its own row of a zero (size, 2C + 1) buffer and the rows
      are summed by one Allreduce.  Adding zeros is exact, so this is an allgather
      whatever algorithm MPI picks; every rank then merges the same partials in rank
      order with Chan's update (:func:`~fastnorm.merge_moments`), so the statistics --
      and the running statistics derived from them -- are bit-identical on every rank.
      Volume: size * (2C + 1) float64.
    - ``"two_step"`` (default beyond): Allreduce (count, count * mean) -> the global
      mean mu; then Allreduce ``M2_r + count_r * (mean_r - mu)**2`` -> the global M2.
      That is Chan's merge taken about mu: every term is >= 0, so nothing cancels
      (unlike sum(x**2) - N mu**2, or shifted sums about a shift far from the data).
      Volume: 2 * (C + 1) float64 whatever the number of ranks, two latencies.

    partial: PartialMoments with float64 mean/m2 of one shape (the same on every rank).
    """
    func = "allreduce_moments"
    comm = _comm(func, comm, gather=True)
    scheme = _reduction(func, stats_reduction, comm)
    count = int(partial.count)
    mean = np.asarray(partial.mean, dtype=_F64)
    m2 = np.asarray(partial.m2, dtype=_F64)
    shape, c = mean.shape, mean.size
    if scheme == "gather":
        size, rank = comm.Get_size(), comm.Get_rank()
        rows = np.zeros((size, 2 * c + 1))
        rows[rank, 0] = count
        rows[rank, 1:c + 1] = mean.reshape(-1)
        rows[rank, c + 1:] = m2.reshape(-1)
        rows = _allreduce_sum(comm, rows.reshape(-1)).reshape(size, 2 * c + 1)
        parts = [_norm.PartialMoments(int(r[0]), r[1:c + 1].reshape(shape), r[c + 1:].reshape(shape))
                 for r in rows]
        return _norm.merge_moments(parts)
    totals = _allreduce_sum(comm, np.concatenate(([count], count * mean.reshape(-1))))
    n = int(totals[0])
    if n == 0:
        return _norm.PartialMoments(0, np.zeros(shape), np.zeros(shape))
    mu = totals[1:] / n
    with np.errstate(invalid="ignore"):  # inf - inf where a channel holds an infinity: NaN
        local = m2.reshape(-1) + count * (mean.reshape(-1) - mu) ** 2 if count else np.zeros(c)
    m2_total = _allreduce_sum(comm, np.concatenate(([0.0], local)))[1:]
    return _norm.PartialMoments(n, mu.reshape(shape), m2_total.reshape(shape))


def _reduce_axes(x, channels_last):
    cax = x.ndim - 1 if channels_last else 1
    return tuple(a for a in range(x.ndim) if a != cax)


# ---------------------------------------------------------------------------- local kernels

def _normalize(x, mean_d, rstd_d, weight, bias, channels_last, out):
    """y = (x - mean) * rstd * weight + bias per channel, statistics in float64: the
    same arithmetic as normalization.batch_norm (normalization._affine_params)."""
    c = mean_d.shape[0]
    ext = _config.extension("normalization")
    if ext is None or x.size == 0:
        shape = [1] * x.ndim
        shape[x.ndim - 1 if channels_last else 1] = c
        with np.errstate(invalid="ignore"):  # inf - inf at an infinity: NaN, as the kernels
            y = (x.astype(_F64) - mean_d.reshape(shape)) * rstd_d.reshape(shape)
        if weight is not None:
            y = y * weight.astype(_F64).reshape(shape)
        if bias is not None:
            y = y + bias.astype(_F64).reshape(shape)
        if out is None:
            return y.astype(x.dtype)
        np.copyto(out, y, casting="unsafe")
        return out
    return _norm._channel_affine(ext, x, _norm._contiguous(x), out, mean_d, rstd_d, weight, bias,
                                 _norm._channel_geometry(x, channels_last), _norm._threads(x))


# ---------------------------------------------------------------------------- functional API

def sync_batch_norm(x, weight=None, bias=None, running_mean=None, running_var=None, *, comm=None,
                    training=True, momentum=0.1, eps=1e-5, num_batches_tracked=None,
                    channels_last=False, out=None, stats_reduction=None):
    """:func:`fastnorm.batch_norm` over the batch formed by every rank's ``x`` (a collective
    in training mode).

    x: this rank's (N_r, C, *spatial) (or (N_r, *spatial, C) with ``channels_last``);
    N_r may differ between ranks, and be 0.  No values over all ranks (N_r = 0 on every
    rank, or a zero spatial size) is batch_norm of an empty batch: an empty y, NaN mean
    and rstd, the running statistics untouched.  Returns ``(y, mean, rstd)``: y for this
    rank's x, mean/rstd (C,) the global statistics (identical on every rank).  Running
    statistics (given on every rank or on none) are updated with the global mean and
    unbiased global variance, as single-process batch_norm over the concatenation.
    training=False: the running statistics normalize, no communication.
    stats_reduction: see :func:`allreduce_moments`.
    """
    func = "sync_batch_norm"
    x = _norm._x(func, x, 2)
    channels_last = _norm._flag(func, "channels_last", channels_last)
    training = _norm._flag(func, "training", training)
    if not training:
        return _norm.batch_norm(x, weight, bias, running_mean, running_var, training=False, eps=eps,
                                channels_last=channels_last, out=out)
    c = _norm._channels(x, channels_last)
    weight = _norm._param(func, "weight", weight, (c,), x)
    bias = _norm._param(func, "bias", bias, (c,), x)
    eps = _norm._eps(func, eps)
    rm, rv = _norm._running(func, running_mean, running_var, c, x)
    factor = None if rm is None else _norm._momentum_factor(func, momentum, num_batches_tracked)
    if out is not None:
        check_out(func, out, x.shape, x.dtype)
        _norm._check_out_disjoint(func, out, (rm, rv))
    comm = _comm(func, comm, gather=True)
    local = _norm.moments(x, _reduce_axes(x, channels_last), partial=True)
    total = allreduce_moments(local, comm, stats_reduction=stats_reduction)
    n = total.count
    if n == 1:
        raise ValueError(f"{func}: expected more than 1 value per channel over all ranks when "
                         f"training, got {n} (this rank's x has shape {x.shape})")
    mean_d = total.mean
    if n == 0:
        # No values on any rank, as batch_norm over an empty batch (and PyTorch): every
        # rank's y is empty, mean and rstd NaN (total.var() is NaN for no values), the
        # running statistics untouched.
        mean_d = np.full(c, np.nan)
    elif rm is not None:
        _norm._update_running(rm, mean_d, factor)
        _norm._update_running(rv, total.var(ddof=1), factor)
    rstd_d = _norm._rstd(total.var(), eps)
    y = _normalize(x, mean_d, rstd_d, weight, bias, channels_last, out)
    cd = compute_dtype(x.dtype)
    return y, mean_d.astype(cd), rstd_d.astype(cd)


def sync_batch_norm_backward(grad_output, x, weight, mean, rstd, *, comm=None, training=True,
                             channels_last=False, bias=None):
    """Gradients of :func:`sync_batch_norm`: ``(grad_x, grad_weight, grad_bias)`` (a
    collective in training mode: one Allreduce of 2C + 1 values).

    grad_x is this rank's slice of the single-process gradient over the concatenated
    batch; grad_weight / grad_bias are this rank's contributions (sum them over ranks
    for the single-process ones; None without weight / bias, as batch_norm_backward).
    mean, rstd: (C,) as the forward returned them.  training=False: local, no
    communication (the statistics are constants).
    """
    func = "sync_batch_norm_backward"
    x = _norm._x(func, x, 2)
    channels_last = _norm._flag(func, "channels_last", channels_last)
    training = _norm._flag(func, "training", training)
    if not training:
        return _norm.batch_norm_backward(grad_output, x, weight, mean, rstd, training=False,
                                         channels_last=channels_last, bias=bias)
    g = _norm._grad_output(func, grad_output, x)
    c = _norm._channels(x, channels_last)
    weight = _norm._param(func, "weight", weight, (c,), x)
    bias = _norm._param(func, "bias", bias, (c,), x)
    mean = _norm._stat(func, "mean", mean, (c,))
    rstd = _norm._stat(func, "rstd", rstd, (c,))
    comm = _comm(func, comm)
    n_local = _norm._count_per_channel(x, channels_last)
    mean_d, rstd_d = mean.astype(_F64), rstd.astype(_F64)
    w = np.ones(c) if weight is None else weight.astype(_F64)
    cd = compute_dtype(x.dtype)
    ext = _config.extension("normalization")
    if ext is None or x.size == 0:
        # The NumPy reference's formula, with the two sums taken over all ranks.
        axes = _reduce_axes(x, channels_last)
        shape = [1] * x.ndim
        shape[x.ndim - 1 if channels_last else 1] = c
        gd = g.astype(_F64)
        xhat = (x.astype(_F64) - mean_d.reshape(shape)) * rstd_d.reshape(shape)
        s1, s2hat = gd.sum(axis=axes), (gd * xhat).sum(axis=axes)
        totals = _allreduce_sum(comm, np.concatenate(([n_local], s1, s2hat)))
        n, t1, t2hat = totals[0], totals[1:c + 1].reshape(shape), totals[c + 1:].reshape(shape)
        gx = (w.reshape(shape) * rstd_d.reshape(shape) / n) * (n * gd - t1 - xhat * t2hat)
        gx = gx.astype(x.dtype)
        gw = None if weight is None else s2hat.astype(weight.dtype)
    else:
        xc, gc = _norm._contiguous(x), _norm._contiguous(g)
        geometry = _norm._channel_geometry(x, channels_last)
        nthreads = _norm._threads(x)
        s1, s2 = np.empty(c), np.empty(c)
        ext.dual_sums(gc.reshape(-1), xc.reshape(-1), *geometry, mean_d, s1, s2, nthreads)
        totals = _allreduce_sum(comm, np.concatenate(([n_local], s1, s2)))
        n, t1, t2 = totals[0], totals[1:c + 1], totals[c + 1:]
        k1 = w * rstd_d
        k2 = -w * (rstd_d * rstd_d * rstd_d) * t2 / n  # as batch_norm_backward
        k3 = -w * rstd_d * t1 / n
        gxc = np.empty(x.shape, cd)
        ext.affine_grad(gc.reshape(-1), xc.reshape(-1), gxc.reshape(-1), *geometry, _norm._vector(k1, cd),
                        _norm._vector(mean, cd), _norm._vector(k2, cd), _norm._vector(k3, cd), nthreads)
        gx = gxc.astype(x.dtype, copy=False)
        gw = None if weight is None else (rstd_d * s2).astype(weight.dtype)
    gb = None if bias is None else s1.astype(bias.dtype)
    return gx, gw, gb


def allreduce_gradients(layer, comm=None, *, average=False):
    """Sum (or average) every parameter gradient of ``layer`` over the ranks, in place,
    with one Allreduce (float64) -- the data-parallel step between backward and the
    optimizer.  With SyncBatchNorm layers and per-rank gradients of one global loss,
    the sum gives the single-process gradients.  Returns ``layer``."""
    func = "allreduce_gradients"
    if not isinstance(layer, Layer):
        raise TypeError(f"{func}: layer must be a fastnorm Layer, got {type(layer).__name__}")
    average = _bool_arg(func, "average", average)
    comm = _comm(func, comm, gather=average)
    params = layer.parameters()
    if not params:
        return layer
    totals = _allreduce_sum(comm, np.concatenate([p.grad.astype(_F64).reshape(-1) for p in params]))
    if average:
        totals /= comm.Get_size()
    start = 0
    for p in params:
        p.grad[...] = totals[start:start + p.grad.size].reshape(p.grad.shape)
        start += p.grad.size
    return layer


# ---------------------------------------------------------------------------- layer

class SyncBatchNorm(_BatchNorm):
    """Batch norm whose training statistics span every rank's batch
    (``torch.nn.SyncBatchNorm``): input (N, C, *spatial) with 0 to 3 spatial axes.

    Same constructor, parameters, buffers, state_dict and train/eval semantics as
    :class:`~fastnorm.BatchNorm2d`, plus ``comm=`` (None: mpi4py's COMM_WORLD, looked
    up at the first training forward) and ``stats_reduction=`` (see
    :func:`allreduce_moments`).  Training forward and backward are collectives; in
    evaluation mode nothing is communicated (a batch without tracked running
    statistics is then normalized with its local statistics, as PyTorch does).
    Parameter gradients are local: sum them over ranks (:func:`allreduce_gradients`).
    """
    _ndims = (2, 3, 4, 5)
    _expect = "2 to 5 dimensions (N, C, *spatial)"

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True,
                 *, comm=None, stats_reduction=None, dtype=np.float32):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, dtype=dtype)
        if stats_reduction is not None and stats_reduction not in _REDUCTIONS:
            raise ValueError(f"SyncBatchNorm: stats_reduction must be None, 'gather' or 'two_step', "
                             f"got {stats_reduction!r}")
        self.comm = comm
        self.stats_reduction = stats_reduction

    def _forward(self, x):
        if not self.training:
            return super()._forward(x)
        x = self._input(x, allow_half=True)
        self._check_shape(x)
        if self.comm is None:
            self.comm = default_comm()
        weight = None if self.weight is None else self.weight.data
        bias = None if self.bias is None else self.bias.data
        kwargs = {"momentum": self.momentum}
        if self.track_running_stats:
            nbt = int(self.num_batches_tracked) + 1
            kwargs["num_batches_tracked"] = nbt
        y, mean, rstd = sync_batch_norm(x, weight, bias, self.running_mean, self.running_var,
                                        comm=self.comm, eps=self.eps,
                                        stats_reduction=self.stats_reduction, **kwargs)
        if self.track_running_stats:
            self.num_batches_tracked[...] = nbt
        self._saved = (x, mean, rstd, True)
        return y

    def _backward(self, g):
        x, mean, rstd, _ = self._saved
        weight = None if self.weight is None else self.weight.data
        bias = None if self.bias is None else self.bias.data
        gx, gw, gb = sync_batch_norm_backward(g, x, weight, mean, rstd, comm=self.comm, bias=bias)
        if gw is not None:
            self.weight.grad += gw
            self.bias.grad += gb
        return gx

    @classmethod
    def convert_sync_batchnorm(cls, layer, comm=None, *, stats_reduction=None):
        """``layer`` with every BatchNorm1d/2d/3d inside replaced by a SyncBatchNorm that
        shares its Parameter objects (optimizers holding them stay valid) and buffers;
        containers are changed in place and returned, a BatchNorm layer is replaced."""
        if isinstance(layer, (BatchNorm1d, BatchNorm2d, BatchNorm3d)):
            sync = cls(layer.num_features, layer.eps, layer.momentum, layer.affine,
                       layer.track_running_stats, comm=comm, stats_reduction=stats_reduction,
                       dtype=layer._param_dtype() or np.float32)
            for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
                setattr(sync, name, getattr(layer, name))
            sync.training = layer.training
            return sync
        if not isinstance(layer, Layer):
            raise TypeError(f"SyncBatchNorm.convert_sync_batchnorm: layer must be a fastnorm Layer, "
                            f"got {type(layer).__name__}")
        for name, child in list(layer._children.items()):
            layer._children[name] = cls.convert_sync_batchnorm(child, comm, stats_reduction=stats_reduction)
        return layer
