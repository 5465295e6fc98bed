"""Speed of the normalization kernels against the NumPy reference and (if installed) torch.

    python bench/norm_speed.py [--repeat N] [--only NAME] [--no-reference]

For every workload and thread count (1, 2), the three implementations are called in
interleaved rounds and the median wall time per call is reported with the ratios
NumPy/fastnorm and torch/fastnorm (> 1: fastnorm is faster).  The box is shared and
noisy: read the ratios of one run, not absolute times across runs.
"""
import argparse
import statistics
import time

import numpy as np

import fastnorm
from fastnorm import reference as ref

try:
    import torch
except ImportError:  # optional
    torch = None


def _median_times(fns, repeat):
    times = {name: [] for name in fns}
    for name, fn in fns.items():  # warm-up (page faults, lazy init)
        fn()
    for _ in range(repeat):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(v) for name, v in times.items()}


def workloads(rng):
    f32 = np.float32
    out = []

    # batch norm 2-d training forward / backward and eval forward
    x = rng.standard_normal((64, 64, 56, 56)).astype(f32)
    g = rng.standard_normal(x.shape).astype(f32)
    w, b = rng.standard_normal(64).astype(f32), rng.standard_normal(64).astype(f32)
    rm, rv = np.zeros(64, f32), np.ones(64, f32)
    y, mean, rstd = fastnorm.batch_norm(x, w, b)
    t = {}
    if torch is not None:
        t = dict(x=torch.from_numpy(x), g=torch.from_numpy(g), w=torch.from_numpy(w), b=torch.from_numpy(b),
                 rm=torch.zeros(64), rv=torch.ones(64))
        t["out"] = torch.ops.aten.native_batch_norm(t["x"], t["w"], t["b"], t["rm"], t["rv"], True, 0.1, 1e-5)
    out.append(("bn2d train fwd (64,64,56,56)", {
        "fastnorm": lambda: fastnorm.batch_norm(x, w, b, rm, rv),
        "numpy": lambda: ref.batch_norm(x, w, b, rm.copy(), rv.copy()),
        "torch": t and (lambda: torch.ops.aten.native_batch_norm(t["x"], t["w"], t["b"], t["rm"], t["rv"],
                                                                 True, 0.1, 1e-5)),
    }))
    out.append(("bn2d train bwd (64,64,56,56)", {
        "fastnorm": lambda: fastnorm.batch_norm_backward(g, x, w, mean, rstd, bias=b),
        "numpy": lambda: ref.batch_norm_backward(g, x, w, mean, rstd, bias=b),
        "torch": t and (lambda: torch.ops.aten.native_batch_norm_backward(
            t["g"], t["x"], t["w"], t["rm"], t["rv"], t["out"][1], t["out"][2], True, 1e-5, [True, True, True])),
    }))
    out.append(("bn2d eval fwd (64,64,56,56)", {
        "fastnorm": lambda: fastnorm.batch_norm(x, w, b, rm, rv, training=False),
        "numpy": lambda: ref.batch_norm(x, w, b, rm, rv, training=False),
        "torch": t and (lambda: torch.ops.aten.native_batch_norm(t["x"], t["w"], t["b"], t["rm"], t["rv"],
                                                                 False, 0.1, 1e-5)),
    }))

    # batch norm 1-d
    x1 = rng.standard_normal((4096, 1024)).astype(f32)
    g1 = rng.standard_normal(x1.shape).astype(f32)
    w1, b1 = rng.standard_normal(1024).astype(f32), rng.standard_normal(1024).astype(f32)
    _, m1, r1 = fastnorm.batch_norm(x1, w1, b1)
    t1 = {}
    if torch is not None:
        t1 = dict(x=torch.from_numpy(x1), g=torch.from_numpy(g1), w=torch.from_numpy(w1), b=torch.from_numpy(b1))
        t1["out"] = torch.ops.aten.native_batch_norm(t1["x"], t1["w"], t1["b"], None, None, True, 0.1, 1e-5)
    out.append(("bn1d train fwd (4096,1024)", {
        "fastnorm": lambda: fastnorm.batch_norm(x1, w1, b1),
        "numpy": lambda: ref.batch_norm(x1, w1, b1),
        "torch": t1 and (lambda: torch.ops.aten.native_batch_norm(t1["x"], t1["w"], t1["b"], None, None,
                                                                  True, 0.1, 1e-5)),
    }))
    out.append(("bn1d train bwd (4096,1024)", {
        "fastnorm": lambda: fastnorm.batch_norm_backward(g1, x1, w1, m1, r1, bias=b1),
        "numpy": lambda: ref.batch_norm_backward(g1, x1, w1, m1, r1, bias=b1),
        "torch": t1 and (lambda: torch.ops.aten.native_batch_norm_backward(
            t1["g"], t1["x"], t1["w"], None, None, t1["out"][1], t1["out"][2], True, 1e-5, [True, True, True])),
    }))

    # layer norm, large and small
    for shape in ((8192, 768), (32, 768)):
        xl = rng.standard_normal(shape).astype(f32)
        gl = rng.standard_normal(shape).astype(f32)
        wl, bl = rng.standard_normal(768).astype(f32), rng.standard_normal(768).astype(f32)
        _, ml, rl = fastnorm.layer_norm(xl, 768, wl, bl)
        tl = {}
        if torch is not None:
            tl = dict(x=torch.from_numpy(xl), g=torch.from_numpy(gl), w=torch.from_numpy(wl), b=torch.from_numpy(bl))
            tl["out"] = torch.ops.aten.native_layer_norm(tl["x"], [768], tl["w"], tl["b"], 1e-5)
        buf = np.empty_like(xl)
        out.append((f"layer norm fwd {shape}", {
            "fastnorm": (lambda xl=xl, wl=wl, bl=bl: fastnorm.layer_norm(xl, 768, wl, bl)),
            "numpy": (lambda xl=xl, wl=wl, bl=bl: ref.layer_norm(xl, 768, wl, bl)),
            "torch": tl and (lambda tl=tl: torch.ops.aten.native_layer_norm(tl["x"], [768], tl["w"], tl["b"], 1e-5)),
            "copy floor": (lambda xl=xl, buf=buf: np.copyto(buf, xl)),
        }))
        out.append((f"layer norm bwd {shape}", {
            "fastnorm": (lambda xl=xl, gl=gl, wl=wl, bl=bl, ml=ml, rl=rl:
                         fastnorm.layer_norm_backward(gl, xl, 768, wl, ml, rl, bias=bl)),
            "numpy": (lambda xl=xl, gl=gl, wl=wl, bl=bl, ml=ml, rl=rl:
                      ref.layer_norm_backward(gl, xl, 768, wl, ml, rl, bias=bl)),
            "torch": tl and (lambda tl=tl: torch.ops.aten.native_layer_norm_backward(
                tl["g"], tl["x"], [768], tl["out"][1], tl["out"][2], tl["w"], tl["b"], [True, True, True])),
        }))

    # group norm, 32 groups
    xg = rng.standard_normal((16, 256, 32, 32)).astype(f32)
    gg = rng.standard_normal(xg.shape).astype(f32)
    wg, bg = rng.standard_normal(256).astype(f32), rng.standard_normal(256).astype(f32)
    _, mg, rg = fastnorm.group_norm(xg, 32, wg, bg)
    tg = {}
    if torch is not None:
        tg = dict(x=torch.from_numpy(xg), g=torch.from_numpy(gg), w=torch.from_numpy(wg), b=torch.from_numpy(bg))
        tg["out"] = torch.ops.aten.native_group_norm(tg["x"], tg["w"], tg["b"], 16, 256, 1024, 32, 1e-5)
    out.append(("group norm fwd (16,256,32,32) G=32", {
        "fastnorm": lambda: fastnorm.group_norm(xg, 32, wg, bg),
        "numpy": lambda: ref.group_norm(xg, 32, wg, bg),
        "torch": tg and (lambda: torch.ops.aten.native_group_norm(tg["x"], tg["w"], tg["b"], 16, 256, 1024, 32, 1e-5)),
    }))
    out.append(("group norm bwd (16,256,32,32) G=32", {
        "fastnorm": lambda: fastnorm.group_norm_backward(gg, xg, 32, wg, mg, rg, bias=bg),
        "numpy": lambda: ref.group_norm_backward(gg, xg, 32, wg, mg, rg, bias=bg),
        "torch": tg and (lambda: torch.ops.aten.native_group_norm_backward(
            tg["g"], tg["x"], tg["out"][1], tg["out"][2], tg["w"], 16, 256, 1024, 32, [True, True, True])),
    }))
    return out


def _fmt(t):
    return f"{t * 1e3:9.3f} ms" if t >= 1e-3 else f"{t * 1e6:9.1f} us"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--only", default="", help="substring of the workload names to run")
    parser.add_argument("--no-reference", action="store_true", help="skip the (slow) NumPy reference")
    parser.add_argument("--no-torch", action="store_true",
                        help="skip torch (its OpenMP runtime and ours spin against each other on 2 cores)")
    parser.add_argument("--threads", default="1,2", help="thread counts to run, e.g. 2")
    args = parser.parse_args()
    global torch
    if args.no_torch:
        torch = None
    rng = np.random.default_rng(0)
    print(f"fastnorm isa={fastnorm.isa()}  torch={'%s' % torch.__version__ if torch else 'absent'}")
    for threads in [int(t) for t in args.threads.split(",")]:
        fastnorm.set_num_threads(threads)
        if torch is not None:
            torch.set_num_threads(threads)
        print(f"\n== {threads} thread(s)")
        print(f"{'workload':38s} {'fastnorm':>12s} {'numpy':>12s} {'torch':>12s}   np/fn  torch/fn  extra")
        for name, fns in workloads(rng):
            if args.only and args.only not in name:
                continue
            fns = {k: v for k, v in fns.items() if v and not (args.no_reference and k == "numpy")}
            small = "(32," in name
            times = _median_times(fns, args.repeat * (40 if small else 1))
            fn = times["fastnorm"]
            np_t, t_t = times.get("numpy"), times.get("torch")
            extra = "".join(f"  {k} {_fmt(v)} (fn/{k} {fn / v:.2f})" for k, v in times.items()
                            if k not in ("fastnorm", "numpy", "torch"))
            print(f"{name:38s} {_fmt(fn):>12s} {_fmt(np_t) if np_t else '-':>12s} {_fmt(t_t) if t_t else '-':>12s}"
                  f"  {np_t / fn if np_t else float('nan'):6.1f}  {t_t / fn if t_t else float('nan'):7.2f}{extra}")
    fastnorm.set_num_threads(None)


if __name__ == "__main__":
    main()
