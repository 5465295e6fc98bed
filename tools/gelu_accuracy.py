"""Error of the compiled float32 GELU (both forms) over every finite float32.

    python tools/gelu_accuracy.py [none|tanh|both] [isa ...]   # default: both forms, every
                                                              # variant this CPU runs

References in float64: x Phi(x) with scipy's ndtr (erf form; its argument rounding costs
~2^-45 relative), and x sigmoid(z), z = 2 sqrt(2/pi) (x + 0.044715 x^3) (tanh form); both far
below a float32 ulp.  Error in float32 ulps of the reference, less (1 + |x|) 2^-148 absolute
where an intermediate underflows to a subnormal (as in tests/test_activations.py).  About 4
minutes per form and vectorized variant, 10-20 for the SSE2 one.
"""
import sys

import numpy as np

import fastnorm

CHUNK = 1 << 24


def reference(form, x):
    w = x.astype(np.float64)
    if form == "none":
        from scipy.special import ndtr
        return w * ndtr(w)
    z = 2 * 0.7978845608028654 * (w + 0.044715 * w ** 3)
    with np.errstate(over="ignore", invalid="ignore"):
        e = np.exp(-np.abs(z))
        return w * np.where(z >= 0, 1 / (1 + e), e / (1 + e))


def worst_error(form):
    worst, at = 0.0, None
    for start in range(0, 1 << 32, CHUNK):
        x = np.arange(start, start + CHUNK, dtype=np.uint64).astype(np.uint32).view(np.float32)
        x = x[np.isfinite(x)]
        got = fastnorm.gelu(x, approximate=form).astype(np.float64)
        with np.errstate(invalid="ignore", over="ignore"):   # x^3 and the ulp of FLT_MAX
            ref = reference(form, x)
            finite = np.isfinite(ref.astype(np.float32))
            ulp = np.spacing(np.abs(np.where(finite, ref, 1.0).astype(np.float32))).astype(np.float64)
        err = (np.abs(got - ref) - 2 * (1 + np.abs(x.astype(np.float64))) * 2.0 ** -149) / ulp
        bad = ~finite & (got != ref.astype(np.float32))
        if bad.any():
            raise AssertionError(f"overflowing result differs at x = {x[bad][0]!r}")
        err[~finite] = 0.0
        i = int(np.argmax(err))
        if err[i] > worst:
            worst, at = float(err[i]), float(x[i])
    return worst, at


def main(args):
    forms = ["none", "tanh"]
    if args and args[0] in ("none", "tanh", "both"):
        forms = forms if args[0] == "both" else [args[0]]
        args = args[1:]
    for isa in args or ["base", "avx2", "avx512"]:
        try:
            fastnorm.set_isa(isa)
        except ValueError as exc:   # a variant this CPU or build cannot run
            print(f"{isa}: skipped ({exc})")
            continue
        for form in forms:
            worst, at = worst_error(form)
            print(f"{isa}, approximate={form!r}: max {worst:.3f} ulp at x = {at!r}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
