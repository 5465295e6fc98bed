"""Arrays placed at chosen byte offsets: from one another modulo 4 KiB, where the kernels'
direction of travel depends on it (fn_trails in fn_stream.h), and off their dtype's
alignment, which no kernel may receive."""
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


def misaligned_copy(a, offset):
    """A C-contiguous array of a's values whose data starts `offset` bytes past an
    itemsize boundary (1 <= offset < itemsize), writeable."""
    raw = np.zeros(a.nbytes + 64, np.uint8)
    start = (-raw.ctypes.data) % 64 + offset
    view = np.frombuffer(raw.data, a.dtype, a.size, start).reshape(a.shape)
    view[...] = a
    assert view.flags.c_contiguous and view.flags.writeable and not view.flags.aligned
    return view
