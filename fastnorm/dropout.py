"""Dropout and its backward pass (public API).

``y, mask = dropout(x, p=0.5, *, seed=None, offset=0, out=None)`` is inverted
dropout as in ``torch.nn.functional.dropout`` during training: each element is
kept with probability about 1 - p and scaled by 1 / (1 - p), or zeroed.
``dropout_backward(grad_output, mask, *, out=None)`` returns
``grad_output * (keep ? 1 / (1 - p) : 0)``.

The mask is a pure function of (seed, offset, x.shape, p), identical on the
compiled and NumPy backends, for any thread count and any memory layout of x; the
exact rule (NumPy's Philox4x64-10 stream, 16 bits per decision) is given in
:func:`dropout` and in :mod:`fastnorm.reference._dropout`.  The mask is stored
bit-packed (:class:`DropoutMask`, 1 bit per element).
"""
import numpy as np

from . import _config, reference
from ._arrays import as_float_array, elementwise
from .reference._dropout import (DropoutMask, blocks_for, check_mask, check_offset, check_p,
                                 check_seed, keep_scale, keep_threshold)

__all__ = ["dropout", "dropout_backward", "DropoutMask"]

_WORD = (1 << 64) - 1
_F16 = np.dtype(np.float16)
# Below these sizes one thread beats starting an OpenMP region (bench/dropout_speed.py):
# the forward pass is bound by the Philox generator, the backward pass by memory.
_GRAIN_FORWARD = 1 << 14
_GRAIN_BACKWARD = 1 << 17
# The compiled kernels' module for the fast paths, tried when _config._backend is "cython"
# (an attribute test, not a call: this is on every call's path); the general paths ask
# _config.extension as the other families do.
_ext = _config.compiled_module("dropout")


def dropout(x, p=0.5, *, seed=None, offset=0, out=None):
    """Inverted dropout: returns ``(y, mask)``.

    x: float16/32/64 array of any shape and layout (float16 is computed in
    float32).  y = x * (keep ? 1 / (1 - p) : 0), x's shape and dtype; written to
    ``out`` when given (``out`` may be ``x``).  mask: a :class:`DropoutMask` for
    :func:`dropout_backward`.

    p: drop probability in [0, 1].  seed: an int in [0, 2**128), or None for a
    fresh 64-bit seed from OS entropy (read it back as ``mask.seed``).  offset: an
    int in [0, 2**64 - ceil(x.size / 16)], the Philox counter to start from.

    Exact rule (the same bit for bit on every backend and thread count):

    - The random stream is ``np.random.Philox(key=seed, counter=offset).random_raw()``:
      uint64 words; Philox block b uses counter offset + 1 + b and yields four words.
    - Element i (the C-order flat index of x, whatever its strides) uses the 16-bit
      field ``(word[i // 4] >> (16 * (i % 4))) & 0xFFFF``.
    - It is kept iff field >= t, with ``t = round(p * 65536)`` (half to even):
      p resolves to 2**-16; p = 0 keeps every element, p = 1 none (y = x * 0).
    - Kept elements are multiplied by 1 / (1 - p) with the exact p, dropped ones by
      0 (a dropped NaN or Inf gives NaN, as in PyTorch).
    - A call uses ceil(x.size / 16) counter values: continue the same seed's stream
      with ``offset=mask.next_offset``.
    """
    func = "dropout"
    x = as_float_array(func, "x", x)
    p = check_p(func, p)
    seed = check_seed(func, seed)
    offset = check_offset(func, offset, blocks_for(x.size))
    threshold, scale = keep_threshold(p), keep_scale(p)
    key_lo, key_hi = seed & _WORD, seed >> 64
    # (An empty x may start at counter 2**64, past a uint64: the general path returns it.)
    if _config._backend == "cython" and x.size:
        fast = _ext.forward_fast(x, out, key_lo, key_hi, offset, threshold, scale, _GRAIN_FORWARD)
        if fast is not None:
            y, packed = fast
            return y, DropoutMask._validated(x.shape, p, seed, offset, packed)
    ext = _config.extension("dropout")
    if ext is None:
        return reference.dropout(x, p, seed=seed, offset=offset, out=out)
    packed = np.empty((x.size + 7) // 8, dtype=np.uint8)

    def kernel(flat, y):
        # y comes from _config.empty (the pool, which then decides on streaming), except
        # float16's float32 intermediate, from np.empty, which the pool's state does not describe
        ext.forward(flat[0], y, packed, key_lo, key_hi, offset, threshold, scale,
                    _config.threads_for(y.shape[0], _GRAIN_FORWARD), out, x.dtype != _F16)

    if x.dtype == _F16:
        with np.errstate(over="ignore"):  # rounding a scaled value to float16 may give Inf
            y = elementwise(func, [x], out, kernel, c_order=True)
    else:
        y = elementwise(func, [x], out, kernel, c_order=True)
    packed.flags.writeable = False
    return y, DropoutMask._validated(x.shape, p, seed, offset, packed)


def dropout_backward(grad_output, mask, *, out=None):
    """Gradient of :func:`dropout` with respect to x.

    grad_output: float array of ``mask.shape`` (any layout); mask: the
    :class:`DropoutMask` the forward call returned.  Returns
    ``grad_output * (keep ? 1 / (1 - p) : 0)`` with grad_output's shape and dtype,
    written to ``out`` when given (``out`` may be ``grad_output``).
    """
    func = "dropout_backward"
    g = as_float_array(func, "grad_output", grad_output)
    check_mask(func, g, mask)
    packed, scale = mask.packed, mask.scale
    if _config._backend == "cython":
        gx = _ext.backward_fast(g, packed, out, scale, _GRAIN_BACKWARD)
        if gx is not None:
            return gx
    ext = _config.extension("dropout")
    if ext is None:
        return reference.dropout_backward(g, mask, out=out)

    def kernel(flat, gx):
        # gx comes from _config.empty (the pool then decides on streaming), except float16's
        # float32 intermediate, from np.empty (as the forward's kernel above)
        ext.backward(flat[0], packed, gx, scale, _config.threads_for(gx.shape[0], _GRAIN_BACKWARD),
                     out, g.dtype != _F16)

    if g.dtype == _F16:
        with np.errstate(over="ignore"):
            return elementwise(func, [g], out, kernel, c_order=True)
    return elementwise(func, [g], out, kernel, c_order=True)
