"""The standard benchmark suite: fastnorm against NumPy (and PyTorch when installed).

    python -m fastnorm.bench [--quick] [--threads 1 2] [--only NAME ...] [--json FILE]

Every workload is timed side by side with its peers and at every thread count in one
run, interleaved (A at 1 thread, A at 2, B at 1, B at 2, fastnorm at 1, ..., in an order
that rotates from round to round), and reported as medians and ratios:
NumPy/fastnorm, torch/fastnorm (allocating and writing into a preallocated output)
and fastnorm/copy-floor, where the floor is ``np.copyto`` of the same bytes
measured in the same run.  A small-shape section (group norm, channels first and
last, instance and batch norm on arrays of 64-256 KiB, dropout on (32, 128); rows named
"small: ...") follows the standard suite and has geometric means of its own.  ``--quick``
runs small shapes for a few seconds (a smoke test; its numbers mean little).
"""
import argparse
import ctypes
import json
import math
import os
import platform
import statistics
import sys
import time
import tracemalloc

try:
    import resource
except ImportError:  # Windows
    resource = None

import numpy as np

import fastnorm
from fastnorm import _config
from fastnorm import reference as ref

SHAPES = {"large": (4096, 4096), "cache": (256, 1024), "tiny": (32, 128)}
QUICK_SHAPES = {"large": (512, 512), "cache": (64, 256), "tiny": (32, 128)}


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


class Workload:
    """One benchmark row: ``impls`` maps a peer name to a zero-argument callable.  ``small``:
    a row of the small-shape section, reported beside the standard suite but not counted in
    its geometric means (which stay comparable from run to run)."""

    def __init__(self, name, impls, floor_bytes=0, small=False):
        self.name, self.impls, self.floor_bytes, self.small = name, impls, floor_bytes, small


# NumPy formulas a NumPy user would write (forward, backward given (g, saved)).
def _np_sigmoid(x):
    return 1 / (1 + np.exp(-x))


NUMPY_FORMULAS = {
    "relu": (lambda x: np.maximum(x, 0), lambda g, x: g * (x > 0)),
    "leaky_relu": (lambda x: np.where(x > 0, x, 0.01 * x), lambda g, x: np.where(x > 0, g, 0.01 * g)),
    "sigmoid": (_np_sigmoid, lambda g, y: g * y * (1 - y)),
    "tanh": (np.tanh, lambda g, y: g * (1 - y * y)),
    "silu": (lambda x: x * _np_sigmoid(x), lambda g, x: g * _np_sigmoid(x) * (1 + x * (1 - _np_sigmoid(x)))),
    "elu": (lambda x: np.where(x > 0, x, np.expm1(x)), lambda g, x: np.where(x > 0, g, g * np.exp(x))),
    "softplus": (lambda x: np.logaddexp(0, x), lambda g, x: g * _np_sigmoid(x)),
    # NumPy has no erf: the oracle's formula (math.erfc per element) is what is left.
    "gelu": (ref.gelu, ref.gelu_backward),
    "gelu_tanh": (lambda x: 0.5 * x * (1 + np.tanh(0.7978845608028654 * (x + 0.044715 * x ** 3))),
                  lambda g, x: ref.gelu_backward(g, x, "tanh")),
}

TORCH_NAMES = {"relu": "relu", "leaky_relu": "leaky_relu", "sigmoid": "sigmoid", "tanh": "tanh",
               "silu": "silu", "elu": "elu", "softplus": "softplus", "gelu": "gelu",
               "gelu_tanh": "gelu"}


def activation_workloads(shapes, torch):
    rng = np.random.default_rng(0)
    rows = []
    cases = [(n, s, np.float32) for n in NUMPY_FORMULAS for s in shapes]
    cases += [(n, "large", np.float64) for n in ("relu", "sigmoid")]
    for name, size, dtype in cases:
        shape = shapes[size]
        x = (rng.standard_normal(shape) * 3).astype(dtype)
        g = rng.standard_normal(shape).astype(dtype)
        params = {"approximate": "tanh"} if name == "gelu_tanh" else {}
        fname = "gelu" if name == "gelu_tanh" else name
        fwd, bwd = getattr(fastnorm, fname), getattr(fastnorm, fname + "_backward")
        saved = fwd(x, **params) if name in ("sigmoid", "tanh") else x
        out = np.empty_like(x)
        np_fwd, np_bwd = NUMPY_FORMULAS[name]
        tag = f"{name} {shape[0]}x{shape[1]} {np.dtype(dtype).name}"
        fwd_impls = {"numpy": lambda f=np_fwd, x=x: f(x),
                     "fastnorm": lambda x=x, p=params, f=fwd: f(x, **p),
                     "fastnorm-out": lambda x=x, p=params, f=fwd, o=out: f(x, out=o, **p)}
        bwd_impls = {"numpy": lambda f=np_bwd, g=g, s=saved: f(g, s),
                     "fastnorm": lambda f=bwd, g=g, s=saved, p=params: f(g, s, **p)}
        if torch is not None:
            tx, tg, ts = (torch.from_numpy(a) for a in (x, g, saved))
            tout = torch.empty_like(tx)
            tparams = {"approximate": "tanh"} if name == "gelu_tanh" else {}
            F = torch.nn.functional
            tf = getattr(torch, TORCH_NAMES[name], None) if name in ("sigmoid", "tanh") \
                else getattr(F, TORCH_NAMES[name])
            fwd_impls["torch"] = lambda tf=tf, tx=tx, p=tparams: tf(tx, **p)
            if name in ("sigmoid", "tanh", "relu", "silu", "elu", "gelu", "gelu_tanh", "softplus",
                        "leaky_relu"):
                out_fn = {"sigmoid": torch.sigmoid, "tanh": torch.tanh}.get(name)
                if out_fn is not None:
                    fwd_impls["torch-out"] = lambda f=out_fn, tx=tx, o=tout: f(tx, out=o)
            tb = _torch_backward(torch, name, tparams)
            if tb is not None:
                bwd_impls["torch"] = lambda tb=tb, tg=tg, ts=ts: tb(tg, ts)
        rows.append(Workload(f"{tag} fwd", fwd_impls, x.nbytes))
        rows.append(Workload(f"{tag} bwd", bwd_impls, x.nbytes))
    return rows


def dropout_workloads(shapes, torch, sizes=("large", "cache"), small=False):
    """Dropout forward and backward at shapes[size] for each of sizes; small: rows of the
    small-shape section (the "tiny" shape, where the call's own cost shows: 12.5 us of a
    (32, 128) forward before its C-level fast path, 2026-12-05)."""
    rng = np.random.default_rng(1)
    np_rng = np.random.default_rng(2)
    rows = []
    for size in sizes:
        shape = shapes[size]
        x = rng.standard_normal(shape).astype(np.float32)
        g = rng.standard_normal(shape).astype(np.float32)
        out = np.empty_like(x)
        _, mask = fastnorm.dropout(x, 0.5, seed=7)
        keep = mask.numpy()
        tag = f"{'small: ' if small else ''}dropout p=0.5 {shape[0]}x{shape[1]} float32"

        def np_forward(x=x):
            m = np_rng.random(x.shape, dtype=np.float32) >= 0.5
            return x * m / np.float32(0.5), m

        fwd = {"numpy": np_forward,
               "fastnorm": lambda x=x: fastnorm.dropout(x, 0.5, seed=7),
               "fastnorm-out": lambda x=x, o=out: fastnorm.dropout(x, 0.5, seed=7, out=o)}
        bwd = {"numpy": lambda g=g, k=keep: g * k / np.float32(0.5),
               "fastnorm": lambda g=g, m=mask: fastnorm.dropout_backward(g, m),
               "fastnorm-out": lambda g=g, m=mask, o=out: fastnorm.dropout_backward(g, m, out=o)}
        if torch is not None:
            tx, tg = torch.from_numpy(x), torch.from_numpy(g)
            tmask = torch.from_numpy(keep)
            fwd["torch"] = lambda tx=tx: torch.ops.aten.native_dropout(tx, 0.5, True)
            bwd["torch"] = lambda tg=tg, tm=tmask: torch.ops.aten.native_dropout_backward(tg, tm, 2.0)
        rows.append(Workload(f"{tag} fwd", fwd, x.nbytes, small))
        rows.append(Workload(f"{tag} bwd", bwd, x.nbytes, small))
    return rows


NORM_SHAPES = {"bn2d": (64, 64, 56, 56), "bn1d": (4096, 1024), "ln": (8192, 768),
               "ln-small": (32, 768), "gn": (16, 256, 32, 32)}
QUICK_NORM_SHAPES = {"bn2d": (8, 16, 28, 28), "bn1d": (512, 256), "ln": (1024, 768),
                     "ln-small": (32, 768), "gn": (4, 64, 16, 16)}


# Small normalization calls, where per-call overhead and each group's chain of divisions count
# rather than memory: the standard suite's norms are all several MiB, and a group norm
# slower than PyTorch at (4, 64, 16, 16) went unseen by it (2026-12-02), and so did
# channels-last group norm at 0.4-0.5x of PyTorch (NumPy glue on the general path,
# 2026-12-03).  "gn-cl": an (N, C, H, W) shape, laid out (N, H, W, C).
SMALL_NORM_SHAPES = {"gn": (4, 64, 16, 16), "gn-cl": (8, 32, 8, 8), "in": (8, 32, 8, 8),
                     "bn2d": (8, 32, 8, 8)}


def norm_workloads(shapes, torch, small_shapes=None):
    """Batch/layer/group norm forward and backward; NumPy peer = the oracle module.  With
    small_shapes (SMALL_NORM_SHAPES), the small-shape section's rows follow: group norm
    (channels first, then last), instance and batch norm, float32, PyTorch's instance norm
    as batch norm over the (1, N*C, H, W) view, which is what
    torch.nn.functional.instance_norm runs (its weight and bias repeated per sample once,
    outside the timing, where the functional repeats them per call)."""
    rng = np.random.default_rng(3)
    aten = torch.ops.aten if torch is not None else None
    T = torch.from_numpy if torch is not None else None
    mask3 = [True, True, True]
    rows = []

    def arrays(shape, c, dtype):
        x = rng.standard_normal(shape).astype(dtype)
        g = rng.standard_normal(shape).astype(dtype)
        w = rng.standard_normal(c).astype(dtype)
        b = rng.standard_normal(c).astype(dtype)
        return x, g, w, b

    def tag(kind, shape, dtype, small=False):
        return f"{'small: ' if small else ''}{kind} {'x'.join(map(str, shape))} {np.dtype(dtype).name}"

    def batch_norm_rows(shape, dtype, eval_row=False, small=False):  # a function per case:
        c = shape[1]                                                  # closures bind its arrays
        x, g, w, b = arrays(shape, c, dtype)
        rm, rv = np.zeros(c, dtype), np.ones(c, dtype)
        out = np.empty_like(x)
        _, mean, rstd = fastnorm.batch_norm(x, w, b)
        name = "batch_norm" + ("2d" if len(shape) == 4 else "1d")
        fwd = {"numpy": lambda: ref.batch_norm(x, w, b, rm.copy(), rv.copy()),
               "fastnorm": lambda x=x, w=w, b=b, rm=rm, rv=rv: fastnorm.batch_norm(x, w, b, rm, rv),
               "fastnorm-out": lambda: fastnorm.batch_norm(x, w, b, rm, rv, out=out)}
        bwd = {"numpy": lambda: ref.batch_norm_backward(g, x, w, mean, rstd, bias=b),
               "fastnorm": lambda x=x, g=g, w=w, b=b, m=mean, r=rstd:
                   fastnorm.batch_norm_backward(g, x, w, m, r, bias=b)}
        ev = {"numpy": lambda: ref.batch_norm(x, w, b, rm, rv, training=False),
              "fastnorm": lambda x=x, w=w, b=b, rm=rm, rv=rv: fastnorm.batch_norm(x, w, b, rm, rv, training=False),
              "fastnorm-out": lambda: fastnorm.batch_norm(x, w, b, rm, rv, training=False, out=out)}
        if torch is not None:
            tx, tg, tw, tb, trm, trv = map(T, (x, g, w, b, rm.copy(), rv.copy()))
            saved = aten.native_batch_norm(tx, tw, tb, trm, trv, True, 0.1, 1e-5)
            fwd["torch"] = lambda: aten.native_batch_norm(tx, tw, tb, trm, trv, True, 0.1, 1e-5)
            bwd["torch"] = lambda: aten.native_batch_norm_backward(tg, tx, tw, trm, trv, saved[1], saved[2],
                                                                   True, 1e-5, mask3)
            ev["torch"] = lambda: aten.native_batch_norm(tx, tw, tb, trm, trv, False, 0.1, 1e-5)
        rows.extend([Workload(f"{tag(name, shape, dtype, small)} train fwd", fwd, x.nbytes, small),
                     Workload(f"{tag(name, shape, dtype, small)} train bwd", bwd, x.nbytes, small)])
        if eval_row:
            rows.append(Workload(f"{tag(name, shape, dtype, small)} eval fwd", ev, x.nbytes, small))

    def layer_norm_rows(shape, dtype):
        d = shape[-1]
        x, g, w, b = arrays(shape, d, dtype)
        out = np.empty_like(x)
        _, mean, rstd = fastnorm.layer_norm(x, d, w, b)
        fwd = {"numpy": lambda: ref.layer_norm(x, d, w, b),
               "fastnorm": lambda x=x, d=d, w=w, b=b: fastnorm.layer_norm(x, d, w, b),
               "fastnorm-out": lambda: fastnorm.layer_norm(x, d, w, b, out=out)}
        bwd = {"numpy": lambda: ref.layer_norm_backward(g, x, d, w, mean, rstd, bias=b),
               "fastnorm": lambda x=x, g=g, d=d, w=w, b=b, m=mean, r=rstd:
                   fastnorm.layer_norm_backward(g, x, d, w, m, r, bias=b)}
        if torch is not None:
            tx, tg, tw, tb = map(T, (x, g, w, b))
            saved = aten.native_layer_norm(tx, [d], tw, tb, 1e-5)
            fwd["torch"] = lambda: aten.native_layer_norm(tx, [d], tw, tb, 1e-5)
            bwd["torch"] = lambda: aten.native_layer_norm_backward(tg, tx, [d], saved[1], saved[2], tw, tb, mask3)
        rows.extend([Workload(f"{tag('layer_norm', shape, dtype)} fwd", fwd, x.nbytes),
                     Workload(f"{tag('layer_norm', shape, dtype)} bwd", bwd, x.nbytes)])

    def group_norm_rows(shape, groups, small=False, last=False):
        n, c = shape[:2]
        hw = int(np.prod(shape[2:]))
        layout = (n,) + tuple(shape[2:]) + (c,) if last else shape  # last: channels last
        x, g, w, b = arrays(layout, c, np.float32)
        _, mean, rstd = fastnorm.group_norm(x, groups, w, b, channels_last=last)
        out = np.empty_like(x)
        fwd = {"numpy": lambda: ref.group_norm(x, groups, w, b, channels_last=last),
               "fastnorm": lambda: fastnorm.group_norm(x, groups, w, b, channels_last=last),
               "fastnorm-out": lambda: fastnorm.group_norm(x, groups, w, b, channels_last=last, out=out)}
        bwd = {"numpy": lambda: ref.group_norm_backward(g, x, groups, w, mean, rstd, channels_last=last,
                                                        bias=b),
               "fastnorm": lambda: fastnorm.group_norm_backward(g, x, groups, w, mean, rstd, channels_last=last,
                                                                bias=b)}
        if torch is not None:
            # channels last: NCHW tensors whose memory is (N, H, W, C), PyTorch's channels_last format
            to_torch = (lambda a: T(a).movedim(-1, 1)) if last else T
            tx, tg = to_torch(x), to_torch(g)
            tw, tb = T(w), T(b)
            saved = aten.native_group_norm(tx, tw, tb, n, c, hw, groups, 1e-5)
            fwd["torch"] = lambda: aten.native_group_norm(tx, tw, tb, n, c, hw, groups, 1e-5)
            bwd["torch"] = lambda: aten.native_group_norm_backward(tg, tx, saved[1], saved[2], tw, n, c, hw,
                                                                   groups, mask3)
        name = tag("group_norm channels-last" if last else "group_norm", layout, np.float32, small)
        rows.extend([Workload(f"{name} G={groups} fwd", fwd, x.nbytes, small),
                     Workload(f"{name} G={groups} bwd", bwd, x.nbytes, small)])

    def instance_norm_rows(shape, small=False):
        x, g, w, b = arrays(shape, shape[1], np.float32)
        _, mean, rstd = fastnorm.instance_norm(x, w, b)
        out = np.empty_like(x)
        fwd = {"numpy": lambda: ref.instance_norm(x, w, b),
               "fastnorm": lambda: fastnorm.instance_norm(x, w, b),
               "fastnorm-out": lambda: fastnorm.instance_norm(x, w, b, out=out)}
        bwd = {"numpy": lambda: ref.instance_norm_backward(g, x, w, mean, rstd, bias=b),
               "fastnorm": lambda: fastnorm.instance_norm_backward(g, x, w, mean, rstd, bias=b)}
        if torch is not None:
            view = (1, shape[0] * shape[1]) + tuple(shape[2:])
            tx, tg = T(x).reshape(view), T(g).reshape(view)
            tw, tb = T(np.tile(w, shape[0])), T(np.tile(b, shape[0]))
            saved = aten.native_batch_norm(tx, tw, tb, None, None, True, 0.1, 1e-5)
            fwd["torch"] = lambda: aten.native_batch_norm(tx, tw, tb, None, None, True, 0.1, 1e-5)
            bwd["torch"] = lambda: aten.native_batch_norm_backward(tg, tx, tw, None, None, saved[1], saved[2],
                                                                   True, 1e-5, mask3)
        rows.extend([Workload(f"{tag('instance_norm', shape, np.float32, small)} fwd", fwd, x.nbytes, small),
                     Workload(f"{tag('instance_norm', shape, np.float32, small)} bwd", bwd, x.nbytes, small)])

    batch_norm_rows(shapes["bn2d"], np.float32, eval_row=True)
    batch_norm_rows(shapes["bn2d"], np.float64, eval_row=True)
    batch_norm_rows(shapes["bn1d"], np.float32)
    for case in ((shapes["ln"], np.float32), (shapes["ln"], np.float64), (shapes["ln-small"], np.float32)):
        layer_norm_rows(*case)
    group_norm_rows(shapes["gn"], 32)
    if small_shapes:
        group_norm_rows(small_shapes["gn"], 32, small=True)
        group_norm_rows(small_shapes["gn-cl"], 8, small=True, last=True)
        instance_norm_rows(small_shapes["in"], small=True)
        batch_norm_rows(small_shapes["bn2d"], np.float32, small=True)
    return rows


def _torch_backward(torch, name, params):
    """PyTorch's native backward op for an activation, called as (grad, saved)."""
    ops = torch.ops.aten
    table = {
        "relu": lambda g, x: ops.threshold_backward(g, x, 0),
        "leaky_relu": lambda g, x: ops.leaky_relu_backward(g, x, 0.01, False),
        "sigmoid": lambda g, y: ops.sigmoid_backward(g, y),
        "tanh": lambda g, y: ops.tanh_backward(g, y),
        "silu": lambda g, x: ops.silu_backward(g, x),
        "elu": lambda g, x: ops.elu_backward(g, 1.0, 1.0, 1.0, False, x),
        "softplus": lambda g, x: ops.softplus_backward(g, x, 1.0, 20.0),
        "gelu": lambda g, x: ops.gelu_backward(g, x, approximate="none"),
        "gelu_tanh": lambda g, x: ops.gelu_backward(g, x, approximate="tanh"),
    }
    return table.get(name)


def _time_once(fn, inner):
    t0 = time.perf_counter_ns()
    for _ in range(inner):
        fn()
    return (time.perf_counter_ns() - t0) / inner


def _minor_faults():
    """Minor page faults of this process so far (all its threads), or None where unknown."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt if resource is not None else None


# Where the copy floor's destination starts in its 4 KiB page, its source starting at 0.
# Allocated one after the other, the two used to lie nbytes + 16 bytes apart, and glibc's
# memmove (which np.copyto calls) copied them with `rep movsb`, which on Zen 3 ran about 13x
# slower when the destination is 16 bytes further into its page than the source: a 96 KiB
# copy took 38-40 us at that distance against 2.7-3.8 us at 0, 32, 48, 64, ..., 2048 bytes
# (glibc 2.36, 2026-12-02); the layer norm (32, 768) rows of one full run read it as their
# floor.  The floor is what memory allows, so it is taken at a distance without that penalty.
_FLOOR_DST_PAGE_OFFSET = 2048


def _placed_float32(nbytes, page_offset):
    """An uninitialized float32 array of nbytes whose data starts page_offset bytes into a
    4 KiB page."""
    raw = np.empty(nbytes + 8192, np.uint8)
    start = (page_offset - raw.ctypes.data) % 4096
    return raw[start:start + nbytes].view(np.float32)


def measure(workload, repeats, budget_s, threads=(1,), set_threads=None, faults=None):
    """Median seconds per call of every impl at every thread count: {n: {impl: seconds}}.
    Samples are interleaved across impls and thread counts alike, set_threads(n) called before
    each (outside the timing), so that the host's drift from one minute to the next does not
    show as a difference between thread counts (run by run, the 1-thread and 2-thread rows
    used to be timed minutes apart: calls that run serially at both settings came out up to
    1.5x slower at "2 threads").  budget_s is per thread count.  A dict passed as `faults`
    receives the median minor page faults per call of the same samples, {n: {impl: faults}}
    (nothing where the platform does not count them): a result written into fresh pages
    costs a fault per 4 KiB page, which can outweigh the kernel."""
    impls = dict(workload.impls)
    floor_src = floor_dst = None
    if workload.floor_bytes:
        floor_src = _placed_float32(workload.floor_bytes, 0)
        floor_src[...] = 1
        floor_dst = _placed_float32(workload.floor_bytes, _FLOOR_DST_PAGE_OFFSET)
        impls["copy-floor"] = lambda: np.copyto(floor_dst, floor_src)
    set_threads = set_threads or (lambda n: None)
    keys = [(n, name) for name in impls for n in threads]  # each impl's counts side by side
    inner = {}
    for n, name in keys:  # warm up and calibrate: a sample lasts >= ~1 ms (at most 10000 calls)
        set_threads(n)
        impls[name]()
        t = _time_once(impls[name], 1)
        inner[(n, name)] = max(1, min(10000, int(1e6 / max(t, 1.0))))
    samples = {key: [] for key in keys}
    fault_samples = {key: [] for key in keys}
    count_faults = faults is not None and _minor_faults() is not None
    deadline = time.perf_counter() + budget_s * len(threads)
    for r in range(repeats):
        # Where a round starts rotates; the neighbours stay.  Every sample follows an untimed
        # call of the same impl at the same thread count: a call right after NumPy's formula
        # (up to 1 GB of fresh temporaries for GELU) ran measurably slower (GELU 4096x4096:
        # 12.4-13.6 ms against 8.4 ms one call later), which neither the interleaving nor the
        # median removed at 3 samples; and as each impl's second count always follows its
        # first, without that call the second would find the impl's data warm and the first
        # would not (an impl 0.4 ms alone and 0.8 ms after another one measured 0.60 ms at
        # 1 thread and 0.40 ms at 2 when that call came only before samples of one call).
        for key in keys[r % len(keys):] + keys[:r % len(keys)]:
            set_threads(key[0])
            impls[key[1]]()
            before = _minor_faults() if count_faults else 0
            samples[key].append(_time_once(impls[key[1]], inner[key]))
            if count_faults:
                fault_samples[key].append((_minor_faults() - before) / inner[key])
        if r >= 2 and time.perf_counter() > deadline:
            break
    if count_faults:
        faults.update({n: {name: statistics.median(fault_samples[(n, name)]) for name in impls}
                       for n in threads})
    return {n: {name: statistics.median(samples[(n, name)]) * 1e-9 for name in impls} for n in threads}


def peak_allocation(fn):
    """Peak bytes allocated during one call of fn (tracemalloc sees NumPy's array data),
    the returned arrays included."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        result = fn()
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    del result
    return peak


def _ratio(a, b):
    return a / b if a and b else None


def reuse_freed_memory():
    """Have glibc keep freed memory for reuse, in this (benchmark) process: no mmap for large
    blocks, no returning the heap's top to the kernel.  Returns what was set, or None where
    malloc is not glibc's.

    NumPy's and PyTorch's allocating calls get their large results from malloc; glibc serves
    blocks above 32 MiB with a fresh mmap, so each call page-faults its result anew (PyTorch's
    GELU of 4096x4096 float32: 16385 minor faults per call, 48-55 ms against 9-13 ms with
    none), unless a free chunk of the heap happens to be large enough -- which depended on what
    had run before: the memory measurement of NumPy's GELU formula left such chunks, so PyTorch's
    sigmoid of 4096x4096 took 8.7 ms in a full run and 45.9 ms in a run of that workload alone.
    With this every peer's large temporaries are reused from the second call on, as fastnorm's
    results are from its buffer cache: kernels are compared, not the luck of the heap."""
    if platform.libc_ver()[0] != "glibc":
        return None
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):
        return None
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
    if mallopt(M_MMAP_MAX, 0) != 1:
        return None
    if mallopt(M_TRIM_THRESHOLD, 2 ** 31 - 1) != 1:
        mallopt(M_MMAP_MAX, 65536)  # glibc's default: leave malloc as it was
        return None
    return "glibc: M_MMAP_MAX 0, M_TRIM_THRESHOLD 2**31-1"


def run(quick=False, threads=(1, 2), names=None, repeats=None, budget_s=None, use_torch=True):
    """Time the suite; returns {"machine": ..., "results": [...]} (the JSON of ``--json``).
    Calls reuse_freed_memory(), whose malloc setting lasts for the rest of the process."""
    malloc = reuse_freed_memory()
    torch = _torch() if use_torch else None
    shapes = QUICK_SHAPES if quick else SHAPES
    repeats = repeats or (3 if quick else 15)
    budget_s = budget_s if budget_s is not None else (0.05 if quick else 3.0)
    workloads = (activation_workloads(shapes, torch) + dropout_workloads(shapes, torch)
                 + norm_workloads(QUICK_NORM_SHAPES if quick else NORM_SHAPES, torch, SMALL_NORM_SHAPES)
                 + dropout_workloads(shapes, torch, ("tiny",), small=True))
    if names:
        workloads = [w for w in workloads if any(n in w.name for n in names)]
    # Memory does not depend on the thread count: measured once, before the timings.
    peaks = {w.name: {k: peak_allocation(w.impls[k]) for k in ("fastnorm", "numpy") if k in w.impls}
             for w in workloads}
    threads = list(threads)
    # The caller's settings, given back afterwards (`finally` below): fastnorm's explicit one
    # (None: none) and torch's count.
    fastnorm_threads = fastnorm.set_num_threads(None)
    torch_threads = torch.get_num_threads() if torch is not None else None

    def set_threads(n):
        fastnorm.set_num_threads(n)
        if torch is not None:
            torch.set_num_threads(n)

    results = []
    try:
        for w in workloads:
            faults = {}
            t = measure(w, repeats, budget_s, threads, set_threads, faults)
            results += [dict({"workload": w.name, "threads": n, "seconds": t[n], "peak_bytes": peaks[w.name],
                              "input_bytes": w.floor_bytes, "small": w.small},
                             **({"minor_faults_per_call": faults[n]} if faults else {}))
                        for n in threads]
    finally:
        fastnorm.set_num_threads(fastnorm_threads)
        if torch is not None:
            torch.set_num_threads(torch_threads)
    results.sort(key=lambda r: threads.index(r["threads"]))  # by thread count, workloads in order
    return {"machine": dict(machine_info(torch), malloc=malloc), "results": results}


def _cpuinfo_fields(names):
    """The first value of each /proc/cpuinfo field in names ({} where there is none)."""
    found = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in names and key not in found:
                    found[key] = value.strip()
                if not line.strip() and found:
                    break       # the first processor's block is enough
    except OSError:
        pass
    return found


def machine_info(torch):
    """What the numbers depend on.  The CPU's family/model and cache sizes are recorded because
    one VM image runs on different hosts: runs on AMD Zen 4 (family 25, 32K L1d) and Zen 5
    (family 26, 48K L1d) both report "AMD EPYC" as the model name."""
    info = _cpuinfo_fields({"model name", "cpu family", "model"})
    cpu = info.get("model name") or platform.processor() or platform.machine()
    cpu_id = (f"family {info['cpu family']} model {info['model']}"
              if "cpu family" in info and "model" in info else None)
    return {"cpu": cpu, "cpu_id": cpu_id, "caches": _config.cache_sizes(), "cores": os.cpu_count(),
            "python": platform.python_version(),
            "numpy": np.__version__, "torch": getattr(torch, "__version__", None),
            "fastnorm": fastnorm.__version__, "isa": fastnorm.isa(), "backend": fastnorm.backend(),
            "date": time.strftime("%Y-%m-%d")}


def _fmt_time(s):
    return f"{s * 1e3:.3f} ms" if s >= 1e-3 else f"{s * 1e6:.2f} us"


def _fmt_ratio(r):
    return "-" if r is None else f"{r:.2f}x"


def table(report):
    rows = ["| workload | threads | fastnorm | NumPy/fastnorm | torch/fastnorm | torch-out/fastnorm "
            "| fastnorm/floor | allocated: fastnorm / NumPy |", "|---|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        t = r["seconds"]
        fn_t = t["fastnorm"]
        best_fn = min(fn_t, t.get("fastnorm-out", fn_t))
        rows.append("| {} | {} | {} | {} | {} | {} | {} | {} |".format(
            r["workload"], r["threads"], _fmt_time(fn_t), _fmt_ratio(_ratio(t.get("numpy"), fn_t)),
            _fmt_ratio(_ratio(t.get("torch"), fn_t)),
            _fmt_ratio(_ratio(t.get("torch-out"), t.get("fastnorm-out"))),
            _fmt_ratio(_ratio(best_fn, t.get("copy-floor"))), _fmt_alloc(r)))
    return "\n".join(rows)


def _fmt_alloc(row):
    """Peak allocation of one call, in multiples of the input array's bytes."""
    peaks, size = row.get("peak_bytes") or {}, row.get("input_bytes")
    if not size or "fastnorm" not in peaks:
        return "-"
    return " / ".join(f"{peaks[k] / size:.2f}x" for k in ("fastnorm", "numpy") if k in peaks)


def summary(report):
    """Geometric means per thread count: the standard suite's, and the small-shape section's
    apart (rows of results written before that section existed count as standard)."""
    lines = []
    for small in (False, True):
        for n in sorted({r["threads"] for r in report["results"]}):
            rs = [r["seconds"] for r in report["results"]
                  if r["threads"] == n and r.get("small", False) == small]
            vs_np = [t["numpy"] / t["fastnorm"] for t in rs if "numpy" in t]
            vs_torch = [t["torch"] / t["fastnorm"] for t in rs if "torch" in t]
            if not vs_np:
                continue
            line = (f"{'small shapes (not in the suite), ' if small else ''}{n} thread(s): "
                    f"NumPy/fastnorm geometric mean {_geomean(vs_np):.2f}x (min {min(vs_np):.2f}x)")
            if vs_torch:
                line += f"; torch/fastnorm geometric mean {_geomean(vs_torch):.2f}x (min {min(vs_torch):.2f}x)"
            lines.append(line)
    return "\n".join(lines)


def _geomean(v):
    return math.exp(sum(math.log(a) for a in v) / len(v)) if v else float("nan")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m fastnorm.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small shapes, a few seconds")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--only", nargs="+", metavar="NAME", help="workloads whose name contains NAME")
    parser.add_argument("--json", metavar="FILE", help="also write the raw results as JSON")
    parser.add_argument("--no-torch", action="store_true", help="leave PyTorch out even if installed")
    parser.add_argument("--isa", choices=["base", "avx2", "avx512"], help="force a kernel variant")
    args = parser.parse_args(argv)
    if args.isa:
        fastnorm.set_isa(args.isa)
    report = run(quick=args.quick, threads=args.threads, names=args.only, use_torch=not args.no_torch)
    m = report["machine"]
    where = ", ".join(filter(None, [m["cpu_id"], " ".join(f"{k} {v}" for k, v in m["caches"].items())]))
    print(f"fastnorm {m['fastnorm']} ({m['backend']}, {m['isa']}) on {m['cpu']}"
          f"{f' ({where})' if where else ''}, {m['cores']} cores; "
          f"NumPy {m['numpy']}, torch {m['torch'] or 'not installed'}; {m['date']}"
          f"{'; malloc: ' + m['malloc'] if m.get('malloc') else ''}")
    print(table(report))
    print(summary(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
