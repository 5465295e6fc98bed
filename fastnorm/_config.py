"""Backend, instruction-set and thread configuration shared by every kernel family.

The compiled kernels live in ``fastnorm._ext``; when they cannot be imported the
package runs on the NumPy reference (one warning at import).  Kernel families are
looked up with :func:`extension`, which returns ``None`` on the NumPy backend.
"""
import contextlib
import glob
import operator
import os
import threading
import warnings

import numpy as np

#: Compiled kernel families, one extension module each (fastnorm/_ext/<name>.pyx).
FAMILIES = ("activations", "dropout", "normalization")
#: The Python modules every public call passes through, which setup.py also compiles by
#: Cython from their .py files (the same code; an interpreted frame cost 0.02-0.1 us of a
#: small function call and about 0.4 us of a small layer call), dotted below fastnorm.
#: reference._dropout holds dropout's argument checks and its mask class beside the mask
#: rule they belong to: interpreted, they took 0.6 us of a 3.7 us (32, 128) dropout call.
API_MODULES = ("_arrays", "activations", "dropout", "normalization", "layers", "reference._dropout")

_BACKENDS = ("cython", "numpy")
# Thread counts reach the kernels as a C int (OpenMP's num_threads); far beyond any CPU.
_MAX_THREADS = 1 << 16
#: Kernel variants, worst to best (the order of _runtime.ISA_NAMES and of fn_common.h).
_ISAS = ("base", "avx2", "avx512")
_ISA_HELP = "'base' (any x86-64), 'avx2' (AVX2+FMA) or 'avx512' (AVX-512 F/VL/BW/DQ)"

_runtime = None
_pool = None
_modules = {}
_import_error = None
try:
    from ._ext import _runtime, _pool
    import importlib

    for _name in FAMILIES:
        _modules[_name] = importlib.import_module("fastnorm._ext." + _name)
except ImportError as exc:  # no compiler at install time, or FASTNORM_NO_EXTENSION=1
    _runtime, _pool, _modules, _import_error = None, None, {}, exc
assert _runtime is None or _runtime.ISA_NAMES == _ISAS, "kernel variant numbering differs"


def cache_sizes():
    """CPU 0's data and unified cache sizes from sysfs (L1d, L2 per core; L3 the shared one),
    e.g. {'L1d': '32K', 'L2': '1024K', 'L3': '32768K'}; {} where sysfs has none."""
    def read(index, name):
        with open(os.path.join(index, name)) as f:
            return f.read().strip()

    sizes = {}
    for index in sorted(glob.glob("/sys/devices/system/cpu/cpu0/cache/index[0-9]*")):
        try:
            level, kind, size = (read(index, name) for name in ("level", "type", "size"))
        except OSError:
            continue
        if kind != "Instruction":
            sizes[f"L{level}" + ("d" if kind == "Data" else "")] = size
    return sizes


def _cache_bytes(size):
    """'8192K' / '32M' / '512' (sysfs) in bytes; None when it does not parse."""
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(size[-1:].upper(), 1)
    digits = size[:-1] if scale > 1 else size
    return int(digits) * scale if digits.isdecimal() and digits.isascii() else None


# Batch norm's channel blocks fit this machine's L3 (getattr: a normalization module built
# before the setting existed still imports; its blocks stay as built).
_fit_channel_blocks = getattr(_modules.get("normalization"), "_fit_channel_blocks", None)
if _fit_channel_blocks is not None:
    _fit_channel_blocks(_cache_bytes(cache_sizes().get("L3", "")))


def _env(name):
    return os.environ.get(name, "").strip()


def _parse_threads(text, source):
    if not text:
        return None
    try:
        n = int(text)
    except ValueError:
        n = 0
    if not 1 <= n <= _MAX_THREADS:
        warnings.warn(f"fastnorm: ignoring {source}={text!r} (expected an integer in [1, {_MAX_THREADS}])",
                      RuntimeWarning, stacklevel=3)
        return None
    return n


def _initial_backend():
    wanted = _env("FASTNORM_BACKEND").lower()
    if wanted not in ("", "cython", "numpy"):
        warnings.warn(f"fastnorm: FASTNORM_BACKEND={wanted!r} is not 'cython' or 'numpy'; ignored",
                      RuntimeWarning, stacklevel=3)
        wanted = ""
    if _runtime is None:
        if wanted != "numpy":
            warnings.warn("fastnorm: the compiled kernels are not available "
                          f"({_import_error}); using the NumPy backend, which is much slower",
                          RuntimeWarning, stacklevel=3)
        return "numpy"
    return wanted or "cython"


def _best_isa():
    return "base" if _runtime is None else _runtime.best_isa()


def _runs(name):
    """True when this CPU and build can run kernel variant `name`."""
    return _ISAS.index(name) <= _ISAS.index(_best_isa())


def _runnable_isas():
    """The kernel variants this CPU and build run, best first."""
    return [name for name in reversed(_ISAS) if _runs(name)]


_backend = _initial_backend()
_isa = None
_requested_threads = None
_env_threads = _parse_threads(_env("FASTNORM_NUM_THREADS"), "FASTNORM_NUM_THREADS")
_forked_child = False


def _fixed_threads():
    """The thread count the process's state fixes (1 in a forked child, else set_num_threads,
    else FASTNORM_NUM_THREADS), or None where OpenMP's own setting applies."""
    if _forked_child:
        return 1
    return _requested_threads if _requested_threads is not None else _env_threads


_threads_lock = threading.Lock()


def _sync_threads():
    """Give the compiled glue what get_num_threads() resolves to (_runtime.fix_num_threads):
    the fixed count, or 0 for OpenMP's own setting, which it asks itself call by call.
    Called with _threads_lock held where the state can change in two threads at once."""
    if _runtime is not None:
        fixed = _fixed_threads()
        _runtime.fix_num_threads(0 if fixed is None else fixed)


def _after_fork_in_child():
    # libgomp's thread pool does not survive fork(): a child that enters a parallel
    # region after its parent used one can hang.  Children run the kernels serially.
    global _forked_child
    _forked_child = True
    _sync_threads()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
_sync_threads()


def backend():
    """The backend that computes: ``'cython'`` (compiled kernels) or ``'numpy'``."""
    return _backend


def extension(family):
    """The compiled module of a kernel family, or None when the NumPy backend is active."""
    return _modules[family] if _backend == "cython" else None


def compiled_module(family):
    """The compiled module of a kernel family whatever the backend, or None when the
    compiled kernels are not installed."""
    return _modules.get(family)


def compiled_available():
    return _runtime is not None


@contextlib.contextmanager
def use_backend(name):
    """Context manager selecting the backend for the calls inside it.

    The setting is process-wide (not per thread).  ``'cython'`` raises
    RuntimeError when the compiled kernels are not installed.
    """
    global _backend
    if name not in _BACKENDS:
        raise ValueError(f"use_backend: name must be one of {_BACKENDS}, got {name!r}")
    if name == "cython" and _runtime is None:
        raise RuntimeError(f"use_backend: the compiled kernels are not available ({_import_error})")
    previous, _backend = _backend, name
    try:
        yield name
    finally:
        _backend = previous


def isa():
    """The kernel variant in use: ``'avx512'``, ``'avx2'`` or ``'base'`` (any x86-64)."""
    return _isa


def set_isa(name=None):
    """Select the kernel variant; None picks the best the CPU supports."""
    global _isa
    if name is None:
        name = _best_isa()
    if name not in _ISAS:
        raise ValueError(f"set_isa: name must be one of {_ISAS} or None, got {name!r}")
    if not _runs(name):
        raise ValueError(f"set_isa: this CPU (or this build) cannot run the {name!r} variant; "
                         f"the best it runs is {_best_isa()!r}")
    for module in _modules.values():
        module.set_isa(_ISAS.index(name))
    _isa = name


def _initial_isa():
    wanted = _env("FASTNORM_ISA").lower() or None
    if wanted is not None and wanted not in _ISAS:
        warnings.warn(f"fastnorm: FASTNORM_ISA={wanted!r} is not {_ISA_HELP}; ignored",
                      RuntimeWarning, stacklevel=3)
        wanted = None
    if wanted is not None and not _runs(wanted):
        warnings.warn(f"fastnorm: FASTNORM_ISA={wanted} but the CPU or build cannot run it; "
                      f"using {_best_isa()!r}", RuntimeWarning, stacklevel=3)
        wanted = None
    set_isa(wanted)


_initial_isa()


#: Default of :func:`stream_min_bytes`: the reads and writes of one call from which a
#: kernel stores its result with non-temporal stores.  Measured on the development
#: machines (32 MiB L3): streaming loses below 32 MiB of traffic (the result would have
#: stayed in the cache) and wins from 48 MiB on (relu 4096x4096: 1.3x faster).  At 32-40
#: MiB (Zen 4, 2026-12; streamed against plain, 1 / 2 threads, interleaved in one process,
#: each call repeated and also followed by a call that reads its result): group norm
#: (16, 256, 32, 32) 1.63x / 1.29-1.71x, followed by relu 1.48x / 1.26-1.29x, by group
#: norm 1.39x / 1.26-1.37x; batch norm (4096, 1024) 1.26x / 1.22-1.30x, followed by batch
#: norm 1.38x / 1.22-1.26x; relu of 16 MiB 1.58x / 1.17x, followed by relu 1.49x / 1.18x;
#: relu backward of 11-13 MiB 1.42-1.62x / 1.64-1.98x; sigmoid 1.04-1.07x; layer norm of
#: 16 MiB followed by layer norm 0.94x / 1.00-1.01x.  (A session before had measured group
#: norm at 0.91x with 2 threads on a Zen 5 host.)  At 16 MiB, 2 threads, relu followed by
#: relu ran 0.71x streamed; at 24 MiB level.  Hence from 32 MiB on (it was 40 MiB).
STREAM_MIN_BYTES = 32 << 20


def _byte_count(func, n, default):
    """n (an int >= 0, capped to a C Py_ssize_t), or default for None."""
    if n is None:
        return default
    if isinstance(n, bool) or not (isinstance(n, int) or hasattr(n, "__index__")):
        raise TypeError(f"{func}: n must be an int or None, got {type(n).__name__}")
    n = operator.index(n)
    if n < 0:
        raise ValueError(f"{func}: n must be >= 0, got {n}")
    return min(n, (1 << 63) - 1)


def stream_min_bytes():
    """Bytes (read + written by one call) from which kernels write their result with
    non-temporal stores, past the caches.  ``FASTNORM_STREAM_MIN_BYTES`` sets it at import."""
    return _stream_min_bytes


def set_stream_min_bytes(n=None):
    """Set :func:`stream_min_bytes`; ``None`` restores the default.  Results are the same
    bits either way; only the speed differs."""
    global _stream_min_bytes
    n = _byte_count("set_stream_min_bytes", n, STREAM_MIN_BYTES)
    if _pool is not None:
        _pool.set_stream_min_bytes(n)
    _stream_min_bytes = n


def _env_int(name):
    """The integer >= 0 in environment variable name, or None (unset, or not one: warns)."""
    text = _env(name)
    if not text:
        return None
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:
        warnings.warn(f"fastnorm: ignoring {name}={text!r} (expected an integer >= 0)",
                      RuntimeWarning, stacklevel=3)
        return None
    return n


_stream_min_bytes = STREAM_MIN_BYTES
set_stream_min_bytes(_env_int("FASTNORM_STREAM_MIN_BYTES"))

#: Default of :func:`pool_bytes`.
POOL_BYTES = 512 << 20


def pool_bytes():
    """Bytes of freed large buffers fastnorm keeps for its next results (0: none).

    Results of 1 MiB and more are allocated through this cache (fastnorm/_ext/_pool.pyx):
    glibc returns such blocks to the kernel when they are freed (or trims its heap of them),
    and a fresh block is page-faulted and zeroed as it is first written, which cost as much
    as relu itself on 64 MiB and 5-10x a layer norm of 1.5 MiB.  The arrays are ordinary
    NumPy arrays.  ``FASTNORM_POOL_BYTES`` sets it at import."""
    return _pool_bytes


def set_pool_bytes(n=None):
    """Set :func:`pool_bytes` (``None``: the default); 0 releases every cached buffer."""
    global _pool_bytes
    n = _byte_count("set_pool_bytes", n, POOL_BYTES)
    if _pool is not None:
        _pool.set_limit(n)
    _pool_bytes = n


def empty(shape, dtype, order="C", like=None, like2=None):
    """``np.empty(shape, dtype, order)`` for a result computed from ``like`` (and ``like2``):
    large arrays come from fastnorm's buffer cache (when :func:`pool_bytes` is not 0), their
    data at ``like``'s offset within a 4 KiB page (not just after ``like2`` modulo 4 KiB:
    _pool.pyx's _ALIAS_WINDOW); the others are NumPy's own."""
    if _pool is None:
        return np.empty(shape, dtype, order)
    return _pool.empty(shape, dtype, order, like, like2)


_pool_bytes = POOL_BYTES
set_pool_bytes(_env_int("FASTNORM_POOL_BYTES"))


def get_num_threads():
    """Threads a large kernel call uses.

    Precedence: :func:`set_num_threads`, then ``FASTNORM_NUM_THREADS``, then OpenMP's
    own setting (``OMP_NUM_THREADS``, a threadpoolctl limit, else the CPUs available
    to the process).  Always 1 in a forked child process.  Built without OpenMP, the
    kernels run on one thread whatever the setting, and the default is 1.
    """
    fixed = _fixed_threads()
    if fixed is not None:
        return fixed
    if _runtime is None:
        return 1
    return _runtime.omp_max_threads()


def set_num_threads(n):
    """Use ``n`` threads for large kernel calls from now on; ``None`` restores the default.

    Returns the previous setting (an int, or None where there was none), as ``np.seterr``
    returns the old settings, so that a caller can put it back: ``get_num_threads()`` cannot
    tell an explicit setting from the default it resolves to."""
    global _requested_threads
    if n is not None:
        if isinstance(n, bool) or not isinstance(n, int) and not hasattr(n, "__index__"):
            raise TypeError(f"set_num_threads: n must be a positive int or None, got {type(n).__name__}")
        n = int(n.__index__()) if not isinstance(n, int) else n
        if n < 1:
            raise ValueError(f"set_num_threads: n must be >= 1, got {n}")
        if n > _MAX_THREADS:
            raise ValueError(f"set_num_threads: n must be <= {_MAX_THREADS}, got {n}")
    with _threads_lock:  # the setting and the compiled glue's copy of it change together
        previous, _requested_threads = _requested_threads, n
        _sync_threads()
    return previous


def threads_for(work, grain):
    """Thread count for a call doing ``work`` units: serial below ``grain`` units,
    where starting a parallel region costs more than it saves (measured in bench/)."""
    if work < grain:
        return 1
    return get_num_threads()


def interpreted_modules():
    """The names of the API_MODULES that run as interpreted Python: all of them where
    nothing was compiled, none in a complete build."""
    import importlib
    import importlib.machinery

    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    return [name for name in API_MODULES
            if not importlib.import_module("fastnorm." + name).__file__.endswith(suffixes)]


def show_config(file=None):
    """Print how fastnorm is built and configured: backend, kernel variant, OpenMP, threads."""
    import platform
    import sys

    import numpy as np

    interpreted = interpreted_modules()
    dropout_kernels = compiled_module("dropout")
    activation_kernels = compiled_module("activations")
    lines = [
        f"fastnorm {_version()}",
        f"  backend:        {_backend}" + ("" if _runtime is not None
                                           else f" (compiled kernels unavailable: {_import_error})"),
        f"  kernel variant: {_isa} (best this CPU and build run: {_best_isa()})",
        f"  Python modules: " + (("interpreted: " + ", ".join(interpreted))
                                 if interpreted else "compiled by Cython"),
        f"  OpenMP:         " + (("built in (libgomp), omp_get_max_threads() = "
                                  f"{_runtime.omp_max_threads()}") if _runtime is not None
                                 and _runtime.openmp_enabled() else "not built in"),
        f"  threads:        {get_num_threads()}"
        + (f" (set_num_threads)" if _requested_threads is not None
           else " (FASTNORM_NUM_THREADS)" if _env_threads is not None else ""),
        f"  streaming:      results of calls moving >= {_stream_min_bytes} bytes",
        f"  buffer cache:   up to {_pool_bytes} bytes of freed results"
        + (f" >= {_pool.stats()['min_bytes']} bytes" if _pool is not None else "")
        + ("" if _pool is None or _pool.AVAILABLE else " (not in this build)"),
        f"  dropout:        "
        + ("NumPy's Philox4x64-10 stream; the AVX2 variant generates "
           + ("1 vector + 4 scalar blocks at a time (the default where 256-bit instructions "
              "run as two halves)" if dropout_kernels.split_group() else "2 vectors of 4 blocks at a time")
           if dropout_kernels is not None else "NumPy's Philox4x64-10 stream, by NumPy"),
        f"  exponentials:   "
        + (("the AVX2 variant's sigmoid, silu, softplus, GELU (tanh) forward, ELU/SELU backward "
            + ("split exp(-|x|) over three loops (the default where 256-bit instructions run as "
               "two halves)" if activation_kernels.split_exp() else "take exp(-|x|) in one loop"))
           if activation_kernels is not None else "NumPy's"),
        f"  float16:        converted by "
        + ("F16C on the compiled backend" if _runtime is not None and _runtime.HALF_CONVERSION
           else "NumPy's casts"),
        f"  NumPy:          {np.__version__}",
        f"  Python:         {platform.python_version()} on {platform.machine()} {platform.system()}",
    ]
    print("\n".join(lines), file=file or sys.stdout)


def _version():
    from . import __version__
    return __version__
