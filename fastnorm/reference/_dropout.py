"""NumPy reference of dropout: the test oracle and the fallback backend.

Inverted dropout (as ``torch.nn.functional.dropout`` in training): every element
is kept with probability about 1 - p and scaled by 1 / (1 - p), or set to zero.

The mask rule (shared bit for bit by the compiled kernels, any thread count, any
memory layout of ``x``):

* The random stream is NumPy's own Philox4x64-10,
  ``np.random.Philox(key=seed, counter=offset).random_raw()``: a sequence of
  uint64 words.  NumPy increments its 256-bit counter before generating, so block
  b of the stream is Philox(counter = offset + 1 + b, key = seed) and yields four
  words; ``seed`` is the 128-bit key (low uint64 word first).
* Element i -- its C-order (row-major) flat index, whatever the strides of ``x`` --
  takes the 16-bit field ``i % 4`` (low bits first) of word ``i // 4``, i.e.
  ``(word[i // 4] >> (16 * (i % 4))) & 0xFFFF``.
* It is kept iff that field >= t, with ``t = round(p * 65536)`` (Python's round:
  half to even).  So p resolves to 2**-16 (p = 0 keeps everything, p = 1 keeps
  nothing); 16 bits per decision because the generator is the bottleneck.
* Kept elements are multiplied by ``1 / (1 - p)`` with the exact p (as PyTorch),
  dropped ones by 0 -- a multiply, so a dropped NaN or Inf gives NaN, as in
  PyTorch; p = 1 gives ``x * 0``.  float16 is computed in float32.
* A call over ``size`` elements uses ceil(size / 16) counter values, so the next
  call with the same seed should start at ``offset + ceil(size / 16)``
  (:attr:`DropoutMask.next_offset`).

Here the keep-array is built from NumPy's generator directly by that rule -- an
oracle nobody in this project wrote -- and packed with ``np.packbits``.
"""
import math
import numbers
import secrets

import numpy as np

from .._arrays import as_float_array, check_out, compute_dtype

__all__ = ["dropout", "dropout_backward", "DropoutMask"]

#: Elements decided by one Philox block: 4 words x 4 fields of 16 bits.
ELEMENTS_PER_BLOCK = 16
#: Number of distinct 16-bit field values; the threshold lies in [0, FIELD_RANGE].
FIELD_RANGE = 1 << 16
_SEED_LIMIT = 1 << 128
_COUNTER_LIMIT = 1 << 64
_WORD = (1 << 64) - 1


def blocks_for(size):
    """Philox blocks (counter values) a call over ``size`` elements consumes."""
    return -(-int(size) // ELEMENTS_PER_BLOCK)


def keep_threshold(p):
    """t = round(p * 65536): an element is kept iff its 16-bit field >= t."""
    return int(round(p * FIELD_RANGE))


def keep_scale(p):
    """1 / (1 - p); 0 for p == 1, where nothing is kept (the output is x * 0)."""
    return 0.0 if p == 1.0 else 1.0 / (1.0 - p)


# The exact float / int of the common call skips the ABC checks below, which take longer
# than a small dropout call's kernel.

def check_p(func, p):
    if type(p) is not float and (isinstance(p, (bool, np.bool_)) or not isinstance(p, numbers.Real)):
        raise TypeError(f"{func}: p must be a real number in [0, 1], got {type(p).__name__}")
    value = float(p)
    if not 0.0 <= value <= 1.0:  # also rejects NaN
        raise ValueError(f"{func}: p must be a probability in [0, 1], got {value}")
    return value


def check_seed(func, seed):
    """``seed`` as an int in [0, 2**128); None draws a fresh 64-bit seed from OS entropy."""
    if seed is None:
        return secrets.randbits(64)
    if type(seed) is not int and (isinstance(seed, (bool, np.bool_))
                                  or not isinstance(seed, numbers.Integral)):
        raise TypeError(f"{func}: seed must be an int in [0, 2**128) or None, got {type(seed).__name__}")
    value = int(seed)
    if not 0 <= value < _SEED_LIMIT:
        raise ValueError(f"{func}: seed must be an int in [0, 2**128), got {value}")
    return value


def check_offset(func, offset, blocks):
    """``offset`` as an int in [0, 2**64 - blocks] (the counter must not pass 2**64)."""
    if type(offset) is not int and (isinstance(offset, (bool, np.bool_))
                                    or not isinstance(offset, numbers.Integral)):
        raise TypeError(f"{func}: offset must be an int, got {type(offset).__name__}")
    value = int(offset)
    if not 0 <= value <= _COUNTER_LIMIT - blocks:
        raise ValueError(f"{func}: offset must be an int in [0, 2**64 - {blocks}] "
                         f"(this call uses {blocks} Philox blocks), got {value}")
    return value


class DropoutMask:
    """The keep mask of one dropout call, bit-packed (1 bit per element).

    Attributes: ``shape`` (of the input), ``p``, ``seed``, ``offset`` (the Philox
    counter the call started from), ``next_offset`` (where the next call with the
    same seed should start), ``packed`` (read-only uint8 array of ceil(size / 8)
    bytes, the layout of ``np.packbits(keep.ravel(), bitorder='little')``: bit k
    of byte j is element 8j + k in C order) and ``nbytes`` (its size).
    ``numpy()`` returns the boolean keep-array of ``shape`` (True = kept).
    """
    __slots__ = ("_shape", "_p", "_seed", "_offset", "_packed")

    def __init__(self, shape, p, seed, offset, packed):
        shape = tuple(int(d) for d in shape)
        if any(d < 0 for d in shape):
            raise ValueError(f"DropoutMask: shape must have non-negative dimensions, got {shape}")
        size = math.prod(shape)
        p = check_p("DropoutMask", p)  # a NaN or out-of-range p would scale silently wrong
        packed = np.asarray(packed)
        if packed.dtype != np.uint8 or packed.shape != ((size + 7) // 8,):
            raise ValueError(f"DropoutMask: packed must be a uint8 array of shape ({(size + 7) // 8},) "
                             f"for shape {shape}, got {packed.dtype} {packed.shape}")
        if not packed.flags.c_contiguous:  # the kernels read the bytes as one contiguous run
            packed = np.ascontiguousarray(packed)
        if packed.flags.writeable:
            packed = packed.view()
            packed.flags.writeable = False
        self._shape, self._p, self._seed, self._offset = shape, float(p), int(seed), int(offset)
        self._packed = packed

    @classmethod
    def _validated(cls, shape, p, seed, offset, packed):
        """The mask of a dropout call whose arguments were checked: shape a tuple of ints, p
        a float in [0, 1], seed and offset ints in range, packed a fresh, read-only,
        C-contiguous uint8 array of ceil(size / 8) bytes that no one else holds.  The
        constructor's checks are skipped: they cost more than a small dropout call's kernel."""
        mask = object.__new__(cls)
        mask._shape, mask._p, mask._seed, mask._offset, mask._packed = shape, p, seed, offset, packed
        return mask

    def __reduce__(self):
        # through the constructor, which makes the unpickled bits read-only again
        return DropoutMask, (self._shape, self._p, self._seed, self._offset, self._packed)

    shape = property(lambda self: self._shape, doc="Shape of the input (and of numpy()).")
    p = property(lambda self: self._p, doc="Drop probability.")
    seed = property(lambda self: self._seed, doc="Philox key, an int in [0, 2**128).")
    offset = property(lambda self: self._offset, doc="Philox counter the call started from.")
    packed = property(lambda self: self._packed, doc="Read-only packed keep bits (uint8).")

    @property
    def size(self):
        return math.prod(self._shape)

    @property
    def next_offset(self):
        """offset + ceil(size / 16): the counter a following call with the same seed starts at."""
        return self._offset + blocks_for(self.size)

    @property
    def nbytes(self):
        """Bytes of per-element storage held: ceil(size / 8)."""
        return self._packed.nbytes

    @property
    def scale(self):
        """Factor applied to kept elements: 1 / (1 - p) (0 for p == 1)."""
        return keep_scale(self._p)

    def numpy(self):
        """The boolean keep-array of ``shape`` (True = kept)."""
        bits = np.unpackbits(self._packed, count=self.size, bitorder="little")
        return bits.view(np.bool_).reshape(self._shape)

    def __repr__(self):
        return (f"DropoutMask(shape={self._shape}, p={self._p!r}, seed={self._seed}, "
                f"offset={self._offset}, next_offset={self.next_offset}, nbytes={self.nbytes})")


def keep_array(shape, p, seed, offset):
    """Boolean keep-array of ``shape`` built from np.random.Philox by the module's rule."""
    size = math.prod(shape)
    blocks = blocks_for(size)
    if blocks == 0:
        return np.ones(shape, dtype=bool)
    words = np.random.Philox(key=seed, counter=offset).random_raw(4 * blocks)
    shifts = np.array([0, 16, 32, 48], dtype=np.uint64)
    fields = (words[:, None] >> shifts) & np.uint64(0xFFFF)  # field k of word w at [w, k]
    keep = fields.reshape(-1)[:size] >= np.uint64(keep_threshold(p))
    return keep.reshape(shape)


def _finish(y, dtype, out):
    with np.errstate(over="ignore"):  # a float16 result may round to Inf, as any cast would
        y = y.astype(dtype, copy=False)
    if out is None:
        return y
    np.copyto(out, y)
    return out


def dropout(x, p=0.5, *, seed=None, offset=0, out=None):
    """Inverted dropout of ``x`` (any shape); returns ``(y, mask)``.

    ``y = x * (keep ? 1 / (1 - p) : 0)`` of x's shape and dtype; ``mask`` is the
    :class:`DropoutMask` for :func:`dropout_backward`.  The keep decisions follow
    the rule in this module's docstring.
    """
    func = "dropout"
    x = as_float_array(func, "x", x)
    p = check_p(func, p)
    seed = check_seed(func, seed)
    offset = check_offset(func, offset, blocks_for(x.size))
    if out is not None:
        check_out(func, out, x.shape, x.dtype)
    keep = keep_array(x.shape, p, seed, offset)
    ctype = compute_dtype(x.dtype)
    factor = keep.astype(ctype) * ctype.type(keep_scale(p))
    with np.errstate(all="ignore"):  # Inf * 0 = NaN for a dropped Inf, as in PyTorch
        y = x.astype(ctype, copy=False) * factor
    mask = DropoutMask(x.shape, p, seed, offset, np.packbits(keep.reshape(-1), bitorder="little"))
    return _finish(y, x.dtype, out), mask


def check_mask(func, grad_output, mask):
    if not isinstance(mask, DropoutMask):
        raise TypeError(f"{func}: mask must be the DropoutMask returned by dropout, "
                        f"got {type(mask).__name__}")
    if grad_output.shape != mask.shape:
        raise ValueError(f"{func}: grad_output must have the mask's shape {mask.shape}, "
                         f"got {grad_output.shape}")


def dropout_backward(grad_output, mask, *, out=None):
    """Gradient of dropout: ``grad_output * (keep ? 1 / (1 - p) : 0)``.

    ``grad_output`` must have ``mask.shape`` (any layout); the result has its
    dtype (float16 computed in float32).
    """
    func = "dropout_backward"
    g = as_float_array(func, "grad_output", grad_output)
    check_mask(func, g, mask)
    if out is not None:
        check_out(func, out, g.shape, g.dtype)
    ctype = compute_dtype(g.dtype)
    factor = mask.numpy().astype(ctype) * ctype.type(mask.scale)
    with np.errstate(all="ignore"):
        gx = g.astype(ctype, copy=False) * factor
    return _finish(gx, g.dtype, out)
