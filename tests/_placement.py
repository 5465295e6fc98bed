"""Arrays placed at chosen byte offsets from one another modulo 4 KiB, where the kernels'
direction of travel depends on it (fn_trails in fn_stream.h)."""
import numpy as np


class Pages:
    """A zeroed buffer of `pages` 4 KiB pages whose start (`base`) lies 16 bytes past a page,
    as NumPy's own large arrays do."""

    def __init__(self, pages):
        self.buffer = np.zeros((pages + 1) * 4096, np.uint8)
        self.base = (-self.buffer.ctypes.data) % 4096 + 16

    def at(self, offset, n, dtype):
        """n elements of dtype from base + offset bytes on (offset a multiple of the itemsize)."""
        start = self.base + offset
        return self.buffer[start:start + n * np.dtype(dtype).itemsize].view(dtype)
