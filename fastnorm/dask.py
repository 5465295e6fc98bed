"""fastnorm over Dask arrays: arrays larger than memory, processed block by block.

Every function takes a ``dask.array.Array`` (a NumPy array is wrapped as one block)
and returns lazy Dask arrays whose computed values equal fastnorm's in-memory result
on the whole array, whatever the chunking:

- elementwise functions (:func:`activation`, :func:`map_elementwise`) run blockwise;
- :func:`dropout` gives each block the part of the global mask its elements own
  (bit-identical to ``fastnorm.dropout`` on the whole array; see there);
- :func:`layer_norm`, :func:`rms_norm` and :func:`group_norm` are per sample: the
  normalized axes are rechunked to whole (only the batch axis stays chunked), then
  each block is normalized on its own;
- :func:`batch_norm` runs in two phases: partial moments per block, merged exactly by
  a tree reduction (:func:`partial_moments`, Chan's update), then a blockwise
  normalization with the global statistics.

The per-block work runs the compiled kernels, each using fastnorm's own threads; with
Dask's threaded scheduler, ``fastnorm.set_num_threads(1)`` avoids oversubscription.
"""
import math

import dask
import dask.array as da
import numpy as np

from . import activations as _activations
from . import normalization as _norm
from .distributed import _normalize  # the in-memory batch_norm's arithmetic
from .dropout import dropout as _dropout
from .reference._dropout import ELEMENTS_PER_BLOCK, blocks_for, check_offset, check_p

__all__ = ["activation", "map_elementwise", "dropout", "dropout_backward", "layer_norm", "rms_norm",
           "group_norm", "partial_moments", "batch_norm"]

_FLOATS = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))
_ACTIVATIONS = tuple(n for n in _activations.__all__ if not n.endswith("_backward"))


def _dask_array(func, name, x):
    if not isinstance(x, da.Array):
        if not isinstance(x, np.ndarray):
            raise TypeError(f"{func}: {name} must be a dask.array.Array or a numpy.ndarray, "
                            f"got {type(x).__name__}")
        x = da.from_array(x, chunks=x.shape or ())
    if x.dtype not in _FLOATS:
        raise TypeError(f"{func}: {name} must have dtype float16, float32 or float64, got {x.dtype}")
    if any(math.isnan(s) for s in x.shape):
        raise ValueError(f"{func}: {name} must have known chunk sizes (call compute_chunk_sizes())")
    return x


def _small(func, name, value, shape):
    """A parameter held in memory (weight, bias, running statistics) as a NumPy array."""
    if value is None:
        return None
    if isinstance(value, da.Array):
        value = value.compute()
    value = np.asarray(value)
    if value.shape != tuple(shape):
        raise ValueError(f"{func}: {name} must have shape {tuple(shape)}, got {value.shape}")
    return value


# ---------------------------------------------------------------------------- elementwise

def map_elementwise(fn, *arrays, **kwargs):
    """``fn(*blocks, **kwargs)`` block by block, for an elementwise fastnorm function
    (forward or backward: ``map_elementwise(fastnorm.gelu_backward, g, x)``).  The
    arrays must have one shape; their chunks are unified.  Returns a Dask array of the
    first array's dtype."""
    func = "map_elementwise"
    if not callable(fn):
        raise TypeError(f"{func}: fn must be a callable fastnorm function, got {type(fn).__name__}")
    if not arrays:
        raise ValueError(f"{func}: expected at least one array")
    arrays = [_dask_array(func, f"arrays[{i}]", a) for i, a in enumerate(arrays)]
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise ValueError(f"{func}: the arrays must have one shape, got {sorted(shapes)}")
    if len(arrays) > 1:
        _, arrays = da.core.unify_chunks(*[part for a in arrays for part in (a, tuple(range(a.ndim)))])
    dtype = arrays[0].dtype
    return da.map_blocks(lambda *blocks: fn(*blocks, **kwargs), *arrays, dtype=dtype,
                         meta=np.empty((0,) * arrays[0].ndim, dtype))


def activation(x, name, **kwargs):
    """The fastnorm activation ``name`` (e.g. "gelu", "leaky_relu" with
    negative_slope=...) applied to a Dask array, blockwise."""
    func = "activation"
    if name not in _ACTIVATIONS:
        raise ValueError(f"{func}: name must be one of {', '.join(_ACTIVATIONS)}, got {name!r}")
    return map_elementwise(getattr(_activations, name), _dask_array(func, "x", x), **kwargs)


# ---------------------------------------------------------------------------- dropout

def _dropout_block(block, p, seed, offset, shape, block_info=None):
    """The block's elements of ``fastnorm.dropout(X, p, seed=seed, offset=offset)`` for
    the whole array X of ``shape``.

    An element's decision depends only on its global C-order index i (Philox counter
    offset + 1 + i // 16, field i % 16).  A block owns the indices lo + (its local
    offsets in X's element strides).  Run the kernel over the span [lo - lo % 16, hi):
    it starts on a counter boundary (offset + lo // 16), and the block's elements land
    on exactly their global indices.  A block of whole trailing rows is a contiguous run
    (span = its size, plus < 16 of padding); a block cut along trailing axes makes the
    kernel also decide the elements between its rows (generator work ~ span, a
    trade against a rechunk of the whole array, which costs memory traffic instead).
    """
    if block.size == 0:
        return block.copy()
    location = block_info[0]["array-location"] if block.ndim else []
    strides = [math.prod(shape[k + 1:]) for k in range(len(shape))]
    lo = sum(start * s for (start, _), s in zip(location, strides))
    hi = sum((stop - 1) * s for (_, stop), s in zip(location, strides)) + 1
    pad = lo % ELEMENTS_PER_BLOCK
    counter = offset + lo // ELEMENTS_PER_BLOCK
    if hi - lo == block.size:  # a contiguous run of the global order
        if pad == 0:
            return _dropout(block, p, seed=seed, offset=counter)[0]
        buf = np.zeros(pad + block.size, block.dtype)
        buf[pad:] = block.reshape(-1)
        return _dropout(buf, p, seed=seed, offset=counter)[0][pad:].reshape(block.shape)
    item = block.dtype.itemsize
    view_strides = tuple(s * item for s in strides)
    buf = np.zeros(pad + hi - lo, block.dtype)
    np.lib.stride_tricks.as_strided(buf[pad:], block.shape, view_strides)[...] = block
    out = _dropout(buf, p, seed=seed, offset=counter)[0]
    return np.lib.stride_tricks.as_strided(out[pad:], block.shape, view_strides).copy()


def dropout(x, p=0.5, *, seed, offset=0):
    """Inverted dropout of a Dask array: equals ``fastnorm.dropout(X, p, seed=seed,
    offset=offset)[0]`` on the whole array X, bit for bit, for any chunking.

    seed is required (an int in [0, 2**128)): the mask is a pure function of (seed,
    offset, x.shape, p), which is what makes it chunking-independent and what
    :func:`dropout_backward` recomputes.  The call uses ceil(x.size / 16) counter
    values: continue the stream at ``offset + ceil(x.size / 16)``.
    """
    func = "dropout"
    x = _dask_array(func, "x", x)
    p = check_p(func, p)
    if seed is None or isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) \
            or not 0 <= int(seed) < 1 << 128:
        raise TypeError(f"{func}: seed must be an int in [0, 2**128) (required: every block and the "
                        f"backward pass rebuild the same mask from it), got {seed!r}")
    offset = check_offset(func, offset, blocks_for(x.size))
    return x.map_blocks(_dropout_block, p, int(seed), offset, tuple(int(s) for s in x.shape),
                        dtype=x.dtype, meta=np.empty((0,) * x.ndim, x.dtype))


def dropout_backward(grad_output, p=0.5, *, seed, offset=0):
    """Gradient of :func:`dropout` with the same p, seed and offset: the same mask and
    scale applied to grad_output (``fastnorm.dropout_backward``'s values)."""
    return dropout(grad_output, p, seed=seed, offset=offset)


# ---------------------------------------------------------------------------- per-sample norms

def _whole(x, axes):
    """x with the given axes in one chunk each (only those are rechunked)."""
    if all(x.numblocks[a] == 1 for a in axes):
        return x
    return x.rechunk({a: -1 for a in axes})


def _normalized_axes(func, x, normalized_shape):
    ns = (normalized_shape,) if isinstance(normalized_shape, (int, np.integer)) else tuple(normalized_shape)
    if not ns or len(ns) > x.ndim or tuple(x.shape[x.ndim - len(ns):]) != tuple(int(s) for s in ns):
        raise ValueError(f"{func}: normalized_shape {ns} must be non-empty and equal the trailing "
                         f"dimensions of x, got x of shape {x.shape}")
    return tuple(int(s) for s in ns), tuple(range(x.ndim - len(ns), x.ndim))


def layer_norm(x, normalized_shape, weight=None, bias=None, *, eps=1e-5):
    """:func:`fastnorm.layer_norm` of a Dask array (the output y), blockwise over the
    leading axes (the trailing ``normalized_shape`` axes are rechunked to whole)."""
    func = "layer_norm"
    x = _dask_array(func, "x", x)
    ns, axes = _normalized_axes(func, x, normalized_shape)
    weight, bias = _small(func, "weight", weight, ns), _small(func, "bias", bias, ns)
    x = _whole(x, axes)
    return x.map_blocks(lambda b: _norm.layer_norm(b, ns, weight, bias, eps=eps)[0], dtype=x.dtype,
                        meta=np.empty((0,) * x.ndim, x.dtype))


def rms_norm(x, normalized_shape, weight=None, *, eps=None):
    """:func:`fastnorm.rms_norm` of a Dask array (the output y), blockwise over the
    leading axes."""
    func = "rms_norm"
    x = _dask_array(func, "x", x)
    ns, axes = _normalized_axes(func, x, normalized_shape)
    weight = _small(func, "weight", weight, ns)
    x = _whole(x, axes)
    return x.map_blocks(lambda b: _norm.rms_norm(b, ns, weight, eps=eps)[0], dtype=x.dtype,
                        meta=np.empty((0,) * x.ndim, x.dtype))


def group_norm(x, num_groups, weight=None, bias=None, *, eps=1e-5, channels_last=False):
    """:func:`fastnorm.group_norm` of a Dask array (the output y), blockwise over the
    batch axis (all other axes are rechunked to whole)."""
    func = "group_norm"
    x = _dask_array(func, "x", x)
    if x.ndim < 2:
        raise ValueError(f"{func}: x must have at least 2 dimensions, got shape {x.shape}")
    c = x.shape[-1] if channels_last else x.shape[1]
    weight, bias = _small(func, "weight", weight, (c,)), _small(func, "bias", bias, (c,))
    x = _whole(x, tuple(range(1, x.ndim)))
    return x.map_blocks(lambda b: _norm.group_norm(b, num_groups, weight, bias, eps=eps,
                                                   channels_last=channels_last)[0],
                        dtype=x.dtype, meta=np.empty((0,) * x.ndim, x.dtype))


# ---------------------------------------------------------------------------- moments and batch norm

def _block_partial(block, axes):
    return _norm.moments(block, axes, partial=True)


def _merge(partials):
    return _norm.merge_moments(partials)


def _assemble(grid, depth):
    """One PartialMoments from a nested list (depth = number of kept axes) of the
    partials of each kept-axes block."""
    if depth == 0:
        return grid
    flat = grid
    for _ in range(depth - 1):
        flat = [q for row in flat for q in row]
    count = flat[0].count
    return _norm.PartialMoments(count, np.block(_map_nested(grid, depth, lambda q: q.mean)),
                                np.block(_map_nested(grid, depth, lambda q: q.m2)))


def _map_nested(grid, depth, fn):
    return [fn(q) for q in grid] if depth == 1 else [_map_nested(g, depth - 1, fn) for g in grid]


def partial_moments(x, axis=None, *, split_every=8):
    """Mergeable moments of a Dask array over ``axis``: a ``dask.delayed`` object whose
    ``compute()`` gives ``fastnorm.PartialMoments(count, mean, m2)`` (float64, the kept
    axes' shape).  Each block's partial comes from the compiled kernel; partials are
    merged exactly (Chan) in a tree of fan-in ``split_every``."""
    func = "partial_moments"
    x = _dask_array(func, "x", x)
    axes = _norm._axes(func, x.ndim, axis)
    split_every = _norm._int(func, "split_every", split_every)
    if split_every < 2:
        raise ValueError(f"{func}: split_every must be >= 2, got {split_every}")
    kept = [a for a in range(x.ndim) if a not in axes]
    blocks = x.to_delayed()
    partial = dask.delayed(_block_partial, pure=True)
    merge = dask.delayed(_merge, pure=True)

    def reduce_group(index):
        """Tree-merge the blocks whose kept-axes block index is ``index``."""
        sel = [slice(None)] * x.ndim
        for a, i in zip(kept, index):
            sel[a] = i
        level = [partial(b, axes) for b in np.asarray(blocks[tuple(sel)], dtype=object).reshape(-1)]
        while len(level) > 1:
            level = [merge(level[i:i + split_every]) for i in range(0, len(level), split_every)]
        return level[0]

    def grid(prefix, depth):
        if depth == len(kept):
            return reduce_group(prefix)
        return [grid(prefix + (i,), depth + 1) for i in range(x.numblocks[kept[depth]])]

    return dask.delayed(_assemble, pure=True)(grid((), 0), len(kept))


def _bn_statistics(total, eps):
    n = total.count
    if n == 1:
        raise ValueError(f"batch_norm: expected more than 1 value per channel when training, got {n}")
    # an empty batch, as fastnorm.batch_norm: NaN mean, and NaN rstd from total.var()
    mean = total.mean if n else np.full(np.shape(total.mean), np.nan)
    return mean, _norm._rstd(total.var(), eps)


def _bn_block(block, stats, weight, bias, channels_last, block_info=None):
    mean_d, rstd_d = stats
    cax = block.ndim - 1 if channels_last else 1
    c0, c1 = block_info[0]["array-location"][cax]
    w = None if weight is None else weight[c0:c1]
    b = None if bias is None else bias[c0:c1]
    return _normalize(block, mean_d[c0:c1], rstd_d[c0:c1], w, b, channels_last, None)


def batch_norm(x, weight=None, bias=None, running_mean=None, running_var=None, *, training=True,
               eps=1e-5, channels_last=False, split_every=8):
    """:func:`fastnorm.batch_norm` of a Dask array: returns lazy ``(y, mean, rstd)``,
    mean/rstd (C,) in the compute dtype, as the in-memory function.

    training=True: phase 1 reduces the blocks' partial moments (over N and the spatial
    axes, per channel) in a tree; phase 2 normalizes every block with the global
    statistics (NaN for an empty batch, as the in-memory function).  The running
    statistics are not updated here (that would be a side effect of a lazy graph):
    compute ``partial_moments(x, axes)`` and update them from its mean and
    ``var(ddof=1)`` (unless its count is 0: batch_norm leaves them alone for an empty
    batch).  training=False: running_mean/running_var (C,)
    normalize, blockwise.
    """
    func = "batch_norm"
    x = _dask_array(func, "x", x)
    if x.ndim < 2:
        raise ValueError(f"{func}: x must have at least 2 dimensions, got shape {x.shape}")
    c = x.shape[-1] if channels_last else x.shape[1]
    weight, bias = _small(func, "weight", weight, (c,)), _small(func, "bias", bias, (c,))
    cd = np.dtype(np.float32) if x.dtype == np.float16 else x.dtype
    meta = np.empty((0,) * x.ndim, x.dtype)
    if not training:
        rm = _small(func, "running_mean", running_mean, (c,))
        rv = _small(func, "running_var", running_var, (c,))
        if rm is None or rv is None:
            raise ValueError(f"{func}: running_mean and running_var are required when training=False")
        stats = (rm.astype(np.float64), _norm._rstd(rv.astype(np.float64), eps))
        y = x.map_blocks(_bn_block, stats, weight, bias, channels_last, dtype=x.dtype, meta=meta)
        return y, da.from_array(rm.astype(cd)), da.from_array(stats[1].astype(cd))
    if running_mean is not None or running_var is not None:
        raise ValueError(f"{func}: running statistics are not updated lazily; pass none when training "
                         "and update them from partial_moments(x, axes) (mean, var(ddof=1))")
    cax = x.ndim - 1 if channels_last else 1
    axes = tuple(a for a in range(x.ndim) if a != cax)
    stats = dask.delayed(_bn_statistics, pure=True)(partial_moments(x, axes, split_every=split_every), eps)
    y = x.map_blocks(_bn_block, stats, weight, bias, channels_last, dtype=x.dtype, meta=meta)
    mean = da.from_delayed(dask.delayed(lambda s: s[0].astype(cd))(stats), (c,), dtype=cd)
    rstd = da.from_delayed(dask.delayed(lambda s: s[1].astype(cd))(stats), (c,), dtype=cd)
    return y, mean, rstd
