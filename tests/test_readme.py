"""The README's Python examples run as written (they are the first code a user copies)."""
import os
import re
import types

import pytest

import fastnorm

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def _blocks():
    if not os.path.exists(README):
        return []
    with open(README) as f:
        return re.findall(r"```python\n(.*?)```", f.read(), re.S)


@pytest.mark.parametrize("code", _blocks(), ids=lambda c: c.splitlines()[0][:40])
def test_readme_example_runs(code, tmp_path, monkeypatch):
    if "dask" in code:
        pytest.importorskip("dask.array")
    monkeypatch.chdir(tmp_path)  # examples may write files (np.savez)
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    # Running without an exception is the test; the examples use the installed fastnorm.
    modules = [v for v in namespace.values() if isinstance(v, types.ModuleType)]
    assert any(m is fastnorm or m.__name__.startswith("fastnorm.") for m in modules)


def test_readme_has_each_section_once():
    """Every top-level section appears once: a botched edit once pasted a second copy of the
    whole README into itself (every section twice, 3793 lines)."""
    if not os.path.exists(README):
        pytest.skip("README.md is not beside the tests (installed package)")
    with open(README) as f:
        headings = [line.rstrip() for line in f if line.startswith(("# ", "## "))]
    assert headings and len(headings) == len(set(headings)), sorted(
        h for h in set(headings) if headings.count(h) > 1)
