"""Build description of fastnorm's compiled kernels.

Each ``fastnorm/_ext/<family>.pyx`` becomes one extension module; the C files
``fastnorm/_ext/src/<family>_*.c`` are compiled into it (one translation unit per
instruction-set variant, chosen at import time).  The public Python modules that every
call passes through (``fastnorm._config.API_MODULES``) are compiled by Cython as well,
from their own .py files, which remain the package where nothing is compiled: the same
code, without an interpreted frame per call.  Metadata lives in pyproject.toml.

Environment:
  FASTNORM_NO_EXTENSION=1   install the pure-NumPy package only (no compiler needed)
  FASTNORM_NO_OPENMP=1      build the kernels without OpenMP (single-threaded)
  FASTNORM_BUILD_ONLY=a,b   development: (re)build only these kernel families ("api": the
                            compiled Python modules)
"""
import ast
import glob
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
EXT_DIR = os.path.join("fastnorm", "_ext")


def _flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _compile_args(use_openmp):
    if sys.platform == "win32":
        return (["/O2", "/openmp"] if use_openmp else ["/O2"]), []
    # No -ffast-math/-Ofast: they break the exp range reduction and a shared object
    # built with them can switch the whole process to flush-to-zero.  These two flags
    # are what the loops need to vectorize without changing results.  Loops start on a
    # 64-byte boundary: a one-vector loop that straddles one (relu's four instructions did,
    # by chance of layout) ran up to 1.3x slower on AMD Zen 3, whose op cache holds
    # 64-byte windows; relu (256, 1024) 55 -> 42 us, layer norm (32, 768) 1.06-1.08x,
    # the rest level, for 0.8 % more code.  (Ignored with a warning by old clang.)
    args = ["-O3", "-fno-math-errno", "-fno-trapping-math", "-fopenmp-simd", "-falign-loops=64",
            "-Wno-unused-function"]
    link = []
    if use_openmp:
        args.append("-fopenmp")
        link.append("-fopenmp")
    return args, link


_NO_KERNELS = "fastnorm will install without its compiled kernels and run on the (much slower) NumPy backend."


def _warn(message, consequence=_NO_KERNELS):
    bar = "*" * 78
    sys.stderr.write(f"\n{bar}\nfastnorm: {message}\n{consequence}\n{bar}\n\n")


def _cpus():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _cython_jobs():
    """Processes for cythonize: its pool's workers re-run this unguarded script where they
    start by spawn or forkserver (macOS, Windows, Linux from Python 3.14), so only by fork."""
    import multiprocessing
    return _cpus() if multiprocessing.get_all_start_methods()[0] == "fork" else 0


class OptionalBuildExt(build_ext):
    """Build the kernels, but let the package install without them if the compiler fails
    (the import then warns once and uses the NumPy reference).

    Compiles in parallel, one C file per job, as many jobs as the CPUs this process may use
    (``-j N`` / ``--parallel N`` sets another number): the extensions side by side, and each
    extension's files side by side (its generated module and its three kernel variants take
    about as long each), so that the largest extension is not one long serial chain."""

    def build_extensions(self):
        jobs = int(self.parallel) if self.parallel and self.parallel is not True else _cpus()
        if jobs > 1 and self.compiler.compiler_type == "unix":
            slots = threading.BoundedSemaphore(jobs)   # the compiler processes running at once
            compile_files = self.compiler.compile

            def compile_one(source, args, kwargs):
                with slots:
                    return compile_files([source], *args, **kwargs)

            def compile_each(sources, *args, **kwargs):
                with ThreadPoolExecutor(max(1, len(sources))) as pool:
                    parts = list(pool.map(lambda s: compile_one(s, args, kwargs), sources))
                return [obj for part in parts for obj in part]

            self.compiler.compile = compile_each
            self.parallel = len(self.extensions)   # the slots bound the compilers, not this
        super().build_extensions()

    def run(self):
        try:
            super().run()
        except Exception as exc:  # no compiler, no OpenMP, missing headers, ...
            _warn(f"building the compiled kernels failed ({exc}).")

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:
            if ext.name.startswith("fastnorm._ext."):
                _warn(f"building {ext.name} failed ({exc}).")
            else:
                _warn(f"building {ext.name} failed ({exc}).",
                      f"{ext.name} will run as interpreted Python (the same code, slower per call).")


def _api_modules():
    """fastnorm._config.API_MODULES, read from its source (the package is not importable here)."""
    with open(os.path.join(HERE, "fastnorm", "_config.py"), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "API_MODULES"
                                                for t in node.targets):
            return ast.literal_eval(node.value)
    raise RuntimeError("fastnorm/_config.py defines no API_MODULES")


def _api_extensions():
    from Cython.Build import cythonize

    # Plain Python semantics: none of the kernels' directives (wraparound=False would change
    # what a negative index means in this code).
    exts = [Extension("fastnorm." + name, sources=[os.path.join("fastnorm", *name.split(".")) + ".py"])
            for name in _api_modules()]
    return cythonize(exts, nthreads=_cython_jobs(), compiler_directives={"language_level": 3})


def extensions():
    if _flag("FASTNORM_NO_EXTENSION"):
        return []
    try:
        import numpy
        from Cython.Build import cythonize
    except ImportError as exc:
        _warn(f"Cython and NumPy are needed to build the kernels ({exc}).")
        return []

    use_openmp = not _flag("FASTNORM_NO_OPENMP")
    cargs, largs = _compile_args(use_openmp)
    only = {f.strip() for f in os.environ.get("FASTNORM_BUILD_ONLY", "").split(",") if f.strip()}
    exts = _api_extensions() if not only or "api" in only else []
    kernels = []
    for pyx in sorted(glob.glob(os.path.join(EXT_DIR, "*.pyx"))):
        family = os.path.splitext(os.path.basename(pyx))[0]
        if only and family not in only:
            continue
        sources = [pyx] + sorted(glob.glob(os.path.join(EXT_DIR, "src", family + "_*.c")))
        kernels.append(Extension(
            "fastnorm._ext." + family,
            sources=sources,
            include_dirs=[os.path.join(EXT_DIR, "include"), numpy.get_include()],
            # NumPy >= 1.22 API: the memory-handler functions (_pool.pyx); fastnorm needs 1.26.
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION"),
                           ("NPY_TARGET_VERSION", "NPY_1_22_API_VERSION")],
            depends=sorted(glob.glob(os.path.join(EXT_DIR, "include", "*.h"))
                           + glob.glob(os.path.join(EXT_DIR, "*.pxd"))),
            extra_compile_args=cargs,
            extra_link_args=largs,
        ))
    return exts + cythonize(
        kernels,
        nthreads=_cython_jobs(),
        compile_time_env={"FASTNORM_OPENMP": use_openmp},
        compiler_directives={
            "language_level": 3,
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
            "nonecheck": False,
            "embedsignature": True,
        },
    )


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
