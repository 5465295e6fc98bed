"""Arrays placed at chosen byte offsets from one another modulo 4 KiB, where the kernels'
direction of travel depends on it (fn_trails in fn_stream.h)."""
import numpy as np


class Pages:
    """A buffer of `pages` 4 KiB pages, filled with a byte pattern, whose start (`base`) lies
    16 bytes past a page, as NumPy's own large arrays do."""

    def __init__(self, pages):
        self.buffer = np.full((pages + 1) * 4096, 0xA5, np.uint8)
        self.base = (-self.buffer.ctypes.data) % 4096 + 16

    def at(self, offset, n, dtype):
        """n elements of dtype from base + offset bytes on (offset a multiple of the itemsize)."""
        start = self.base + offset
        return self.buffer[start:start + n * np.dtype(dtype).itemsize].view(dtype)

    def write_into(self, out, call):
        """Runs call() and checks that it wrote no byte of the buffer outside out."""
        before = self.buffer.copy()
        result = call()
        changed = self.buffer != before
        start = out.ctypes.data - self.buffer.ctypes.data
        changed[start:start + out.nbytes] = False
        assert not changed.any(), f"bytes written outside out= at {np.flatnonzero(changed)[:8] - start}"
        return result
