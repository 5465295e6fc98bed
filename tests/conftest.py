"""Shared fixtures.  The suite refuses to run on a silent NumPy fallback: unless
FASTNORM_BACKEND=numpy was asked for, the compiled kernels must be what is tested."""
import importlib
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

import fastnorm
from fastnorm import _config

settings.register_profile("default", max_examples=60, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=2000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("FASTNORM_HYPOTHESIS_PROFILE", "default"))

NUMPY_ONLY = os.environ.get("FASTNORM_BACKEND", "").strip().lower() == "numpy"


def pytest_report_header(config):
    return (f"fastnorm {fastnorm.__version__} from {os.path.dirname(fastnorm.__file__)}; "
            f"backend={fastnorm.backend()} isa={fastnorm.isa()} threads={fastnorm.get_num_threads()}")


def pytest_sessionstart(session):
    if os.environ.get("FASTNORM_REQUIRE_INSTALLED") == "1":
        source_tree = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        if os.path.abspath(fastnorm.__file__).startswith(source_tree + os.sep):
            pytest.exit(f"fastnorm was imported from the source tree ({fastnorm.__file__}), "
                        "not from the installed package", returncode=3)
    if not NUMPY_ONLY and not _config.compiled_available():
        pytest.exit("fastnorm's compiled extension is not importable "
                    f"({_config._import_error}); refusing to test the NumPy fallback in its place. "
                    "Set FASTNORM_BACKEND=numpy to test the NumPy backend on purpose.", returncode=3)
    interpreted = _config.interpreted_modules()
    if not NUMPY_ONLY and interpreted:
        pytest.exit(f"fastnorm's Python modules {interpreted} are not compiled; "
                    "refusing to test them in place of the compiled ones (build them: "
                    "FASTNORM_BUILD_ONLY=api python setup.py build_ext --inplace)", returncode=3)
    stale = _stale_compiled_modules(interpreted)
    if stale:
        pytest.exit(f"fastnorm's compiled {stale} are older than their .py files, which the tests "
                    "would not be testing: rebuild them (FASTNORM_BUILD_ONLY=api python setup.py "
                    "build_ext --inplace)", returncode=3)


def _stale_compiled_modules(interpreted):
    """In a source checkout: the compiled API modules (those not in `interpreted`) whose .py
    changed after they were built (an installed package is left alone: its files' times say
    nothing about the build)."""
    package = os.path.dirname(os.path.abspath(fastnorm.__file__))
    if not os.path.exists(os.path.join(os.path.dirname(package), "setup.py")):
        return []
    return [name for name in _config.API_MODULES if name not in interpreted
            and os.path.getmtime(os.path.join(package, *name.split(".")) + ".py")
            > os.path.getmtime(importlib.import_module("fastnorm." + name).__file__)]


def count_fast_calls(monkeypatch, module, names):
    """A list that receives (name, taken) for every call of the named C-level fast paths of a
    compiled module while the test runs (taken: the fast path returned a result, not None)."""
    calls = []
    for name in names:
        original = getattr(module, name)

        def counted(*args, _original=original, _name=name):
            result = _original(*args)
            calls.append((_name, result is not None))
            return result

        monkeypatch.setattr(module, name, counted)
    return calls


def _implementations():
    if NUMPY_ONLY:
        return [("numpy", None)]
    return [("cython", isa) for isa in _config._runnable_isas()] + [("numpy", None)]


@pytest.fixture(params=_implementations(), ids=lambda p: p[1] or p[0])
def backend(request):
    """Runs the test once per kernel variant this CPU runs (avx512, avx2, base) and once on
    the NumPy backend."""
    name, isa = request.param
    previous = fastnorm.isa()
    with fastnorm.use_backend(name):
        if isa is not None:
            fastnorm.set_isa(isa)
        try:
            yield request.param
        finally:
            if isa is not None:
                fastnorm.set_isa(previous)


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def num_threads(request):
    previous = fastnorm.set_num_threads(request.param)
    try:
        yield request.param
    finally:
        fastnorm.set_num_threads(previous)


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
