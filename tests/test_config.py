"""Backend selection, ISA variants, thread control, import hygiene and fork safety."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastnorm
from fastnorm import _config
from conftest import NUMPY_ONLY

compiled = pytest.mark.skipif(not _config.compiled_available(), reason="compiled kernels not built")


def run_python(code, **env):
    """Run code in a fresh interpreter (outside the source tree) and return its stdout."""
    full_env = {k: v for k, v in os.environ.items()
                if not k.startswith(("FASTNORM_", "OMP_"))}
    full_env.update(env)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env=full_env, timeout=120, cwd=os.path.dirname(__file__))
    assert proc.returncode == 0, proc.stderr
    return proc.stdout, proc.stderr


def test_compiled_backend_is_what_is_tested():
    """The suite tests the compiled kernels unless FASTNORM_BACKEND=numpy asked otherwise."""
    assert fastnorm.backend() == ("numpy" if NUMPY_ONLY else "cython")


def test_python_modules_are_compiled_and_reported():
    """The API modules run compiled wherever the kernels are (a build compiles both), and
    show_config says which way they run."""
    import io
    interpreted = _config.interpreted_modules()
    if _config.compiled_available():
        assert interpreted == []
        assert type(fastnorm.relu).__name__ == "cython_function_or_method"
    text = io.StringIO()
    fastnorm.show_config(file=text)
    line = next(ln for ln in text.getvalue().splitlines() if "Python modules:" in ln)
    assert line.endswith("compiled by Cython" if not interpreted else ", ".join(interpreted))


@compiled
@pytest.mark.parametrize("family, choice, label, words", [
    ("dropout", "split_group", "dropout:", ("2 vectors of 4 blocks", "1 vector + 4 scalar blocks")),
    ("activations", "split_exp", "exponentials:", ("in one loop", "over three loops")),
], ids=["dropout generator group", "exponential loops"])
def test_show_config_names_the_choices_made_by_cpu(family, choice, label, words):
    """The AVX2 variant's choices that depend on whether 256-bit instructions run as two
    halves (fn_cpu_halves_256bit): the dropout generator's mix of vector and scalar Philox
    blocks, the staged activations' exponential in one loop or three.  show_config says
    which runs."""
    import io
    kernels = _config.compiled_module(family)
    try:
        for split, expected in zip((False, True), words):
            try:
                getattr(kernels, "set_" + choice)(split)
            except ValueError as exc:   # the split Philox group on an AVX2 CPU without BMI2
                pytest.skip(str(exc))
            assert getattr(kernels, choice)() is split
            text = io.StringIO()
            fastnorm.show_config(file=text)
            line = next(ln for ln in text.getvalue().splitlines() if label in ln)
            assert expected in line, line
    finally:
        getattr(kernels, "set_" + choice)(None)


def test_reference_is_the_numpy_module():
    assert fastnorm.reference.relu.__module__ == "fastnorm.reference._activations"


@compiled
def test_use_backend_switches_and_restores():
    x = np.linspace(-3, 3, 7)
    assert fastnorm.backend() == "cython"
    with fastnorm.use_backend("numpy"):
        assert fastnorm.backend() == "numpy"
        np.testing.assert_allclose(fastnorm.gelu(x), fastnorm.reference.gelu(x))
    assert fastnorm.backend() == "cython"
    with pytest.raises(ValueError, match="use_backend: name must be one of"):
        with fastnorm.use_backend("torch"):
            pass


def test_env_selects_numpy_backend():
    out, err = run_python("import fastnorm; print(fastnorm.backend())", FASTNORM_BACKEND="numpy")
    assert out.strip() == "numpy" and err == ""


@compiled
def test_import_prints_nothing_and_starts_no_threads():
    out, err = run_python("""
        import os, threading
        import numpy  # OpenBLAS starts its own pool when NumPy loads; count after it
        before = len(os.listdir('/proc/self/task'))
        import fastnorm
        after = len(os.listdir('/proc/self/task'))
        print(before, after, threading.active_count(), fastnorm.backend())
    """)
    before, after, active, backend = out.split()
    assert err == "" and before == after and active == "1" and backend == "cython"


@compiled
def test_subnormals_survive_import_and_kernels():
    out, _ = run_python("""
        import numpy as np, fastnorm
        fastnorm.gelu(np.ones(1 << 18, np.float32))
        tiny32, tiny64 = np.float32(2e-38), 2e-308
        print(float(tiny32 * np.float32(0.25)) != 0.0, (np.array([tiny64]) * 0.25)[0] != 0.0)
    """)
    assert out.split() == ["True", "True"]


@compiled
@pytest.mark.skipif(not os.path.exists("/proc/cpuinfo") or os.uname().machine != "x86_64",
                    reason="reads Linux's x86-64 CPU flags")
def test_best_variant_matches_the_kernels_cpu_flags():
    """fn_cpu_isa (CPUID and XGETBV) against the flags Linux lists, which it clears for
    what the OS does not save: avx512 needs F, VL, BW and DQ, avx2 needs AVX2 and FMA."""
    with open("/proc/cpuinfo") as f:
        flags = next(line for line in f if line.startswith("flags")).split(":", 1)[1].split()
    if {"avx512f", "avx512vl", "avx512bw", "avx512dq"} <= set(flags):
        expected = "avx512"
    elif {"avx2", "fma"} <= set(flags):
        expected = "avx2"
    else:
        expected = "base"
    assert _config._runtime.best_isa() == expected


@compiled
@pytest.mark.parametrize("env, expected", [
    ({"FASTNORM_NUM_THREADS": "1", "OMP_NUM_THREADS": "2"}, 1),
    ({"OMP_NUM_THREADS": "1"}, 1),
    ({"OMP_NUM_THREADS": "2"}, 2),
    ({"FASTNORM_NUM_THREADS": "2", "OMP_NUM_THREADS": "1"}, 2),
])
def test_thread_count_precedence(env, expected):
    if expected > 1 and "FASTNORM_NUM_THREADS" not in env and not fastnorm._config._runtime.openmp_enabled():
        pytest.skip("built without OpenMP: OMP_NUM_THREADS sets nothing")
    out, _ = run_python("import fastnorm; print(fastnorm.get_num_threads(), "
                        "fastnorm._config._runtime.glue_num_threads())", **env)
    assert out.split() == [str(expected)] * 2  # the compiled glue's count is the same


def test_set_num_threads_returns_the_previous_setting():
    """The explicit setting, not get_num_threads()'s resolved count: putting the returned
    value back restores "no setting" too."""
    first = fastnorm.set_num_threads(3)
    try:
        assert fastnorm.set_num_threads(2) == 3
        assert fastnorm.set_num_threads(None) == 2
        assert fastnorm.set_num_threads(None) is None
        assert fastnorm.set_num_threads(5) is None
    finally:
        fastnorm.set_num_threads(first)
    assert fastnorm.set_num_threads(first) == first


@compiled
def test_set_num_threads_wins_and_resets():
    default = fastnorm.get_num_threads()
    fastnorm.set_num_threads(3)
    try:
        assert fastnorm.get_num_threads() == 3 == _config._runtime.glue_num_threads()
    finally:
        fastnorm.set_num_threads(None)
    assert fastnorm.get_num_threads() == default == _config._runtime.glue_num_threads()
    with pytest.raises(ValueError, match="set_num_threads: n must be >= 1, got 0"):
        fastnorm.set_num_threads(0)
    with pytest.raises(TypeError, match="set_num_threads: n must be a positive int"):
        fastnorm.set_num_threads(1.5)


@compiled
def test_threadpoolctl_sees_and_limits_the_openmp_threads():
    pytest.importorskip("threadpoolctl")
    if not fastnorm._config._runtime.openmp_enabled():
        pytest.skip("built without OpenMP")
    out, _ = run_python("""
        import fastnorm
        from threadpoolctl import threadpool_info, threadpool_limits
        apis = {lib['user_api'] for lib in threadpool_info()}
        glue = fastnorm._config._runtime.glue_num_threads
        with threadpool_limits(1, user_api='openmp'):
            inside = fastnorm.get_num_threads(), glue()
        print('openmp' in apis, *inside, fastnorm.get_num_threads(), glue())
    """, OMP_NUM_THREADS="2")
    assert out.split() == ["True", "1", "1", "2", "2"]


@compiled
def test_isa_variants_selectable():
    from fastnorm import _config
    runnable = _config._runnable_isas()
    assert fastnorm.isa() == runnable[0], "the default is the best variant the CPU runs"
    assert runnable[-1] == "base"
    previous = fastnorm.isa()
    try:
        for name in runnable:
            fastnorm.set_isa(name)
            assert fastnorm.isa() == name
    finally:
        fastnorm.set_isa(previous)
    with pytest.raises(ValueError, match="set_isa: name must be one of"):
        fastnorm.set_isa("sse4")
    for name in set(_config._ISAS) - set(runnable):
        with pytest.raises(ValueError, match=f"cannot run the '{name}' variant"):
            fastnorm.set_isa(name)
    out, _ = run_python("import fastnorm; print(fastnorm.isa())", FASTNORM_ISA="base")
    assert out.strip() == "base"


@compiled
def test_isa_variants_compute_the_same_function():
    """Every variant evaluates the same formulas.  The elementwise kernels of AVX2 and
    AVX-512 contract the same products into FMAs, so they agree bit for bit; reductions
    may add in another order, and base (no FMA) rounds differently."""
    from fastnorm import _config
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((37, 129)) * 4).astype(np.float32)
    calls = {
        "gelu": lambda: fastnorm.gelu(x),
        "softplus": lambda: fastnorm.softplus(x),
        "tanh": lambda: fastnorm.tanh(x),
        "layer_norm": lambda: fastnorm.layer_norm(x, 129)[0],
        "batch_norm": lambda: fastnorm.batch_norm(x.reshape(37, 129, 1))[0],
    }
    previous = fastnorm.isa()
    try:
        results = {}
        for name in _config._runnable_isas():
            fastnorm.set_isa(name)
            results[name] = {k: f() for k, f in calls.items()}
    finally:
        fastnorm.set_isa(previous)
    for k in calls:
        if "avx2" in results and "avx512" in results and not k.endswith("_norm"):
            np.testing.assert_array_equal(results["avx512"][k], results["avx2"][k], err_msg=k)
        np.testing.assert_allclose(results[_config._runnable_isas()[0]][k], results["base"][k],
                                   rtol=2e-6, atol=2e-6, err_msg=k)


def test_unknown_or_unrunnable_isa_in_environment_warns():
    out, err = run_python("import fastnorm; print(fastnorm.isa())", FASTNORM_ISA="sse9")
    assert "FASTNORM_ISA='sse9' is not" in err


@compiled
def test_forked_child_can_still_compute():
    if not hasattr(os, "fork"):
        pytest.skip("no fork on this platform")
    out, _ = run_python("""
        import os, numpy as np, fastnorm
        fastnorm.set_num_threads(2)
        x = np.linspace(-4, 4, 1 << 20).astype(np.float32)
        expected = fastnorm.sigmoid(x)          # the parent uses an OpenMP region
        pid = os.fork()
        if pid == 0:
            ok = (np.array_equal(fastnorm.sigmoid(x), expected)
                  and fastnorm.get_num_threads() == 1 == fastnorm._config._runtime.glue_num_threads())
            os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
        print(os.WEXITSTATUS(status))
    """)
    assert out.strip() == "0"


@pytest.mark.parametrize("name, getter", [("FASTNORM_POOL_BYTES", "pool_bytes"),
                                          ("FASTNORM_STREAM_MIN_BYTES", "stream_min_bytes")])
def test_byte_settings_from_the_environment(name, getter):
    code = f"import fastnorm._config as c; print(c.{getter}())"
    out, _ = run_python(code, **{name: "12345"})
    assert out.split() == ["12345"]
    out, err = run_python(code, **{name: "lots"})
    assert f"ignoring {name}='lots' (expected an integer >= 0)" in err
    assert int(out) == getattr(fastnorm._config, getter.upper())
