"""Inputs in Fortran order (x.T of a C-order array, say): the norms and an elementwise
backward on such inputs, against the same values in C order, NumPy's formula and PyTorch.

    python bench/layout.py [--threads 1 2] [--repeats 15] [--json FILE]

The elementwise kernels read C-order rows, so a Fortran-order input is first copied into C
order there (fastnorm/_ext/include/fn_layout.h, from _arrays._REORDER_MIN elements on); batch
norm, and layer and RMS norm from 16 rows, read it in place as x.T.  This shows what the
layout costs on top of the C-order call.  Peers, interleaved in one run (medians, as
fastnorm.bench measures them, with its malloc settings): "fastnorm" on the Fortran-order
input, "fastnorm C" on a C-order copy of it, "numpy" (fastnorm.reference, the formula a
NumPy user writes, on the Fortran-order input) and "torch" (its native op on a tensor with
the same strides) where PyTorch is installed.  Ratio columns: fastnorm/fastnorm C (what the
layout costs), numpy/fastnorm and torch/fastnorm.  The copy floor is np.copyto between two
C-order arrays of the input's size.
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import fastnorm  # noqa: E402
from fastnorm import reference as ref  # noqa: E402
from fastnorm.bench import Workload, _torch, measure, reuse_freed_memory  # noqa: E402


def workloads(torch):
    rng = np.random.default_rng(0)
    rows = []

    def arrays(shape, c, dtype):
        x = np.asfortranarray(rng.standard_normal(shape).astype(dtype))
        g = np.asfortranarray(rng.standard_normal(shape).astype(dtype))
        w = rng.standard_normal(c).astype(dtype)
        return x, g, w, w.copy()

    def layer_norm(shape, dtype):
        d = shape[-1]
        x, g, w, b = arrays(shape, d, dtype)
        xc, gc = np.ascontiguousarray(x), np.ascontiguousarray(g)
        _, mean, rstd = fastnorm.layer_norm(x, d, w, b)
        fwd = {"fastnorm": lambda: fastnorm.layer_norm(x, d, w, b),
               "fastnorm C": lambda: fastnorm.layer_norm(xc, d, w, b),
               "numpy": lambda: ref.layer_norm(x, d, w, b)}
        bwd = {"fastnorm": lambda: fastnorm.layer_norm_backward(g, x, d, w, mean, rstd, bias=b),
               "fastnorm C": lambda: fastnorm.layer_norm_backward(gc, xc, d, w, mean, rstd, bias=b),
               "numpy": lambda: ref.layer_norm_backward(g, x, d, w, mean, rstd, bias=b)}
        if torch is not None:
            aten = torch.ops.aten
            tx, tg, tw, tb = (torch.from_numpy(a) for a in (x, g, w, b))
            saved = aten.native_layer_norm(tx, [d], tw, tb, 1e-5)
            fwd["torch"] = lambda: aten.native_layer_norm(tx, [d], tw, tb, 1e-5)
            bwd["torch"] = lambda: aten.native_layer_norm_backward(tg, tx, [d], saved[1], saved[2], tw,
                                                                   tb, [True, True, True])
        name = f"layer_norm {'x'.join(map(str, shape))} {np.dtype(dtype).name} F-order"
        rows.extend([Workload(f"{name} fwd", fwd, x.nbytes), Workload(f"{name} bwd", bwd, x.nbytes)])

    def batch_norm(shape, dtype):
        x, g, w, b = arrays(shape, shape[1], dtype)
        xc, gc = np.ascontiguousarray(x), np.ascontiguousarray(g)
        _, mean, rstd = fastnorm.batch_norm(x, w, b)
        fwd = {"fastnorm": lambda: fastnorm.batch_norm(x, w, b),
               "fastnorm C": lambda: fastnorm.batch_norm(xc, w, b),
               "numpy": lambda: ref.batch_norm(x, w, b)}
        bwd = {"fastnorm": lambda: fastnorm.batch_norm_backward(g, x, w, mean, rstd, bias=b),
               "fastnorm C": lambda: fastnorm.batch_norm_backward(gc, xc, w, mean, rstd, bias=b),
               "numpy": lambda: ref.batch_norm_backward(g, x, w, mean, rstd, bias=b)}
        if torch is not None:
            aten = torch.ops.aten
            tx, tg, tw, tb = (torch.from_numpy(a) for a in (x, g, w, b))
            saved = aten.native_batch_norm(tx, tw, tb, None, None, True, 0.1, 1e-5)
            fwd["torch"] = lambda: aten.native_batch_norm(tx, tw, tb, None, None, True, 0.1, 1e-5)
            bwd["torch"] = lambda: aten.native_batch_norm_backward(
                tg, tx, tw, None, None, saved[1], saved[2], True, 1e-5, [True, True, True])
        name = f"batch_norm {'x'.join(map(str, shape))} {np.dtype(dtype).name} F-order"
        rows.extend([Workload(f"{name} train fwd", fwd, x.nbytes),
                     Workload(f"{name} train bwd", bwd, x.nbytes)])

    def silu_backward(shape, dtype):
        """A C-order gradient against a Fortran-order input: one of the two is copied."""
        x, g, _, _ = arrays(shape, 1, dtype)
        gc, xc = np.ascontiguousarray(g), np.ascontiguousarray(x)
        impls = {"fastnorm": lambda: fastnorm.silu_backward(gc, x),
                 "fastnorm C": lambda: fastnorm.silu_backward(gc, xc),
                 "numpy": lambda: ref.silu_backward(gc, x)}
        if torch is not None:
            tg, tx = torch.from_numpy(gc), torch.from_numpy(x)
            impls["torch"] = lambda: torch.ops.aten.silu_backward(tg, tx)
        rows.append(Workload(f"silu_backward {'x'.join(map(str, shape))} {np.dtype(dtype).name} "
                             "C-order grad, F-order x", impls, x.nbytes))

    layer_norm((8192, 768), np.float32)
    layer_norm((8192, 768), np.float64)
    layer_norm((512, 768), np.float32)
    batch_norm((4096, 1024), np.float32)
    batch_norm((512, 256), np.float32)
    silu_backward((4096, 1024), np.float32)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)
    malloc = reuse_freed_memory()
    torch = _torch()
    peers = ["fastnorm", "fastnorm C", "numpy"] + (["torch"] if torch is not None else [])

    def set_threads(n):
        fastnorm.set_num_threads(n)
        if torch is not None:
            torch.set_num_threads(n)

    report = []
    for w in workloads(torch):
        times = measure(w, args.repeats, 2.0, tuple(args.threads), set_threads)
        report.append({"name": w.name, "seconds": {str(n): t for n, t in times.items()}})
    print(f"fastnorm {fastnorm.__version__}, NumPy {np.__version__}"
          + (f", torch {torch.__version__}" if torch is not None else "") + f"; malloc: {malloc}")
    head = " | ".join(f"{p} {n}T" for n in args.threads for p in peers + ["copy-floor"])
    ratio_names = [f"{r} {n}T" for n in args.threads for r in ("F/C", "numpy/F")
                   + (("torch/F",) if torch is not None else ())]
    print(f"| workload | {head} | {' | '.join(ratio_names)} |")
    print("|---" * (1 + len(args.threads) * (len(peers) + 1) + len(ratio_names)) + "|")
    for row in report:
        cells = []
        for n in args.threads:
            t = row["seconds"][str(n)]
            cells += [f"{t[p] * 1e3:.3f} ms" if p in t else "-" for p in peers + ["copy-floor"]]
        for n in args.threads:
            t = row["seconds"][str(n)]
            cells.append(f"{t['fastnorm'] / t['fastnorm C']:.2f}x")
            cells.append(f"{t['numpy'] / t['fastnorm']:.2f}x")
            if torch is not None:
                cells.append(f"{t['torch'] / t['fastnorm']:.2f}x")
        print(f"| {row['name']} | " + " | ".join(cells) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": report, "malloc": malloc, "threads": args.threads}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
