"""A/B of batch norm 1-D's column-sum kernels (fn_norm_stats_cols, fn_norm_dual_cols) of two
builds, called through ctypes in one process, interleaved, as normalization.pyx calls them
(row blocks of max(64, ceil(rows / 32)) rows, each into its own partial sums).

    python tools/cols_sums_ab.py OLD.so[:FETCH[:rw]] NEW.so[:FETCH[:rw]] [SHAPES] [--cold] [--f64]

OLD.so / NEW.so: copies of fastnorm/_ext/normalization*.so of the two builds.  FETCH (0 or 1)
is the kernels' fetch argument; leave it out for a build from before it existed.  ":rw" marks
a build whose fn_norm_dual_cols takes row weights after it (from 2026-12-05 on; passed NULL,
batch norm's call); leave it out for a build from before.  SHAPES:
rows x columns, comma-separated (default 4096x1024,8192x512,16384x256).  --cold reads a
64 MiB buffer before every call.  Prints medians per kernel and build, the ratio to the first
build, and whether the sums are the same bits.
"""
import ctypes
import sys
import time

import numpy as np

P, I = ctypes.c_void_p, ctypes.c_int64


def kernel(spec, name, dtype, args):
    path, fetch, rw = (spec.split(":") + ["", ""])[:3]
    f = getattr(ctypes.CDLL(path), f"fn_norm_{name}_{'f64' if dtype == np.float64 else 'f32'}_avx512")
    tail = ([int(fetch)] if fetch else []) + ([None] if rw == "rw" and name == "dual_cols" else [])
    f.argtypes = args + ([ctypes.c_int] if fetch else []) + ([P] if len(tail) > bool(fetch) else [])
    return lambda *a: f(*a, *tail)


def by_blocks(call, rows, cols):
    """Partial sums per row block, as normalization.pyx computes them, then totalled."""
    rb = max(64, (rows + 31) // 32)
    nb = (rows + rb - 1) // rb
    s1, s2 = np.zeros((nb, cols)), np.zeros((nb, cols))
    for b in range(nb):
        call(b * rb, min(rb, rows - b * rb), s1[b], s2[b])
    return s1.sum(0), s2.sum(0)


def main(argv):
    flags = {a for a in argv if a.startswith("--")}
    pos = [a for a in argv if not a.startswith("--")]
    builds, shapes = pos[:2], (pos[2] if len(pos) > 2 else "4096x1024,8192x512,16384x256")
    dtype = np.float64 if "--f64" in flags else np.float32
    flush = np.ones(64 << 20, np.uint8)
    rng = np.random.default_rng(0)
    for shape in shapes.split(","):
        rows, cols = map(int, shape.split("x"))
        x = (3 + rng.standard_normal((rows, cols))).astype(dtype)
        g = rng.standard_normal((rows, cols)).astype(dtype)
        shift = x[0].astype(np.float64)
        for name, args in (("stats_cols", [P, I, I, P, P, P]), ("dual_cols", [P, P, I, I, P, P, P])):
            runs, times, results = {}, {spec: [] for spec in builds}, {}
            for spec in builds:
                f = kernel(spec, name, dtype, args)
                if name == "stats_cols":
                    def call(r0, n, a, b, f=f):
                        f(x[r0:].ctypes.data, n, cols, shift.ctypes.data, a.ctypes.data, b.ctypes.data)
                else:
                    def call(r0, n, a, b, f=f):
                        f(g[r0:].ctypes.data, x[r0:].ctypes.data, n, cols, shift.ctypes.data, a.ctypes.data,
                          b.ctypes.data)
                runs[spec] = call
            for _ in range(15):
                for spec in builds:
                    if "--cold" in flags:
                        flush.sum()
                    t = time.perf_counter()
                    results[spec] = by_blocks(runs[spec], rows, cols)
                    times[spec].append(time.perf_counter() - t)
            base = np.median(times[builds[0]])
            same = all(np.array_equal(a, b) for a, b in zip(results[builds[0]], results[builds[1]]))
            print(f"{name:10s} {shape:11s} " + "  ".join(
                f"{s.split('/')[-1]} {np.median(times[s]) * 1e3:.3f} ms ({base / np.median(times[s]):.2f}x)"
                for s in builds) + ("  same bits" if same else "  DIFFERENT"))


if __name__ == "__main__":
    main(sys.argv[1:])
