"""Dropout speed on this machine: fastnorm forward/backward against a copy floor and
the NumPy reference, 1 and 2 threads, both kernel variants, interleaved medians.

    python bench/dropout_speed.py [--repeat 25] [--shapes 4096x4096 256x1024]

Rows are medians of ``--repeat`` calls measured round-robin (every variant once per
round), so load on the shared box affects all of them alike; compare ratios within
one run.  "floor" is ``np.copyto`` of the same float32 array (read n, write n floats).
Forward and backward write into preallocated outputs (out=), so page faults of fresh
buffers are not counted.
"""
import argparse
import statistics
import time

import numpy as np

import fastnorm
from fastnorm import reference


def _parse_shape(text):
    return tuple(int(d) for d in text.split("x"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=25)
    parser.add_argument("--shapes", nargs="+", default=["4096x4096", "256x1024"])
    parser.add_argument("--p", type=float, default=0.5)
    parser.add_argument("--no-reference", action="store_true", help="skip the slow NumPy reference")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    for text in args.shapes:
        shape = _parse_shape(text)
        x = rng.standard_normal(shape, dtype=np.float32)
        g = rng.standard_normal(shape, dtype=np.float32)
        y = np.empty_like(x)
        gx = np.empty_like(x)
        _, mask = fastnorm.dropout(x, args.p, seed=1)
        cases = {"floor (np.copyto)": lambda: np.copyto(y, x)}
        for isa in ("avx2", "base"):
            for threads in (1, 2):
                def fwd(isa=isa, threads=threads):
                    fastnorm.set_isa(isa)
                    fastnorm.set_num_threads(threads)
                    fastnorm.dropout(x, args.p, seed=1, out=y)

                def bwd(isa=isa, threads=threads):
                    fastnorm.set_isa(isa)
                    fastnorm.set_num_threads(threads)
                    fastnorm.dropout_backward(g, mask, out=gx)
                cases[f"forward  {isa:4} {threads}T"] = fwd
                cases[f"backward {isa:4} {threads}T"] = bwd
        if not args.no_reference:
            cases["forward  numpy reference"] = lambda: reference.dropout(x, args.p, seed=1, out=y)
            cases["backward numpy reference"] = lambda: reference.dropout_backward(g, mask, out=gx)
        times = {name: [] for name in cases}
        for _ in range(args.repeat):
            for name, call in cases.items():
                t0 = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - t0)
        fastnorm.set_isa(None)
        fastnorm.set_num_threads(None)
        floor = statistics.median(times["floor (np.copyto)"])
        print(f"\nshape {shape} float32, p={args.p}, median of {args.repeat}")
        for name, ts in times.items():
            med = statistics.median(ts)
            print(f"  {name:28s} {med * 1e3:9.3f} ms   {med / floor:6.2f} x floor")


if __name__ == "__main__":
    main()
