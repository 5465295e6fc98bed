"""Thread and process safety: concurrent calls from Python threads (the kernels release
the GIL, the activations' from their threading grain on) give exactly the serial results,
dropout with explicit seeds stays deterministic, and a forked child can still run every
kernel family."""
import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import fastnorm


def _workload(rng):
    """(label, thunk) pairs over every family, large enough to enter OpenMP regions."""
    x = rng.standard_normal((256, 512)).astype(np.float32)
    xd = rng.standard_normal((64, 32, 8, 8))
    g = rng.standard_normal(x.shape).astype(np.float32)
    w = rng.uniform(0.5, 2.0, 512).astype(np.float32)
    mean, rstd = fastnorm.layer_norm(x, 512, w)[1:]
    bmean, brstd = fastnorm.batch_norm(xd)[1:]
    _, mask = fastnorm.dropout(x, 0.4, seed=99)
    return [
        ("gelu", lambda: fastnorm.gelu(x)),
        ("sigmoid_backward", lambda: fastnorm.sigmoid_backward(g, fastnorm.sigmoid(x))),
        ("relu_out", lambda: fastnorm.relu(x, out=np.empty_like(x))),
        ("dropout", lambda: fastnorm.dropout(x, 0.4, seed=1234, offset=7)[0]),
        ("dropout_mask", lambda: fastnorm.dropout(x, 0.25, seed=5)[1].packed),
        ("dropout_backward", lambda: fastnorm.dropout_backward(g, mask)),
        ("layer_norm", lambda: fastnorm.layer_norm(x, 512, w, w)),
        ("layer_norm_backward", lambda: fastnorm.layer_norm_backward(g, x, 512, w, mean, rstd, bias=w)),
        ("batch_norm", lambda: fastnorm.batch_norm(xd)),
        ("batch_norm_channels_last", lambda: fastnorm.batch_norm(x, channels_last=True)),
        ("batch_norm_backward", lambda: fastnorm.batch_norm_backward(xd, xd, None, bmean, brstd)),
        ("group_norm", lambda: fastnorm.group_norm(xd, 8)),
        ("instance_norm", lambda: fastnorm.instance_norm(xd)),
        ("rms_norm", lambda: fastnorm.rms_norm(x, 512)),
        ("moments", lambda: fastnorm.moments(xd, (0, 2, 3))),
    ]


def _as_list(value):
    if isinstance(value, tuple):
        return [v for v in value if isinstance(v, np.ndarray)]
    return [value]


def _identical(a, b):
    return all(np.array_equal(p, q, equal_nan=True) and p.dtype == q.dtype
               for p, q in zip(_as_list(a), _as_list(b)))


def test_concurrent_calls_match_serial(backend, num_threads):
    work = _workload(np.random.default_rng(0))
    serial = {label: thunk() for label, thunk in work}
    jobs = [(label, thunk) for label, thunk in work for _ in range(4)]
    order = np.random.default_rng(1).permutation(len(jobs))
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = [(jobs[i][0], pool.submit(jobs[i][1])) for i in order]
        for label, fut in futures:
            assert _identical(fut.result(timeout=120), serial[label]), label


def test_concurrent_running_statistics_on_separate_buffers(backend):
    """Each thread updates its own running statistics: no cross-talk."""
    rng = np.random.default_rng(2)
    xs = [rng.standard_normal((32, 16, 6, 6)).astype(np.float32) for _ in range(8)]

    def run(x):
        rm, rv = np.zeros(16, np.float32), np.ones(16, np.float32)
        for _ in range(5):
            fastnorm.batch_norm(x, None, None, rm, rv, momentum=0.3)
        return rm, rv

    serial = [run(x) for x in xs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        for got, want in zip(pool.map(run, xs), serial):
            assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])


def test_seeded_dropout_is_deterministic_across_threads_and_thread_counts(backend):
    x = np.random.default_rng(3).standard_normal((300, 301)).astype(np.float32)
    previous = fastnorm.set_num_threads(1)
    try:
        want_y, want_mask = fastnorm.dropout(x, 0.3, seed=2024, offset=11)
        fastnorm.set_num_threads(2)
        with ThreadPoolExecutor(max_workers=3) as pool:
            for y, mask in pool.map(lambda _: fastnorm.dropout(x, 0.3, seed=2024, offset=11), range(12)):
                assert np.array_equal(y, want_y)
                assert np.array_equal(mask.packed, want_mask.packed)
    finally:
        fastnorm.set_num_threads(previous)


def _run_python(code):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FASTNORM_", "OMP_"))}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=env, timeout=180, cwd=os.path.dirname(__file__))
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
@pytest.mark.parametrize("isa", ["base", "avx2", "avx512"])
def test_forked_child_runs_every_family(isa):
    """The parent enters OpenMP regions in every family, then forks; the child (which
    libgomp's thread pool does not survive) must compute the same results, not hang."""
    from fastnorm import _config
    if not _config._runs(isa):
        pytest.skip(f"this CPU does not run the {isa} variant")
    out = _run_python(f"""
        import os, numpy as np, fastnorm
        fastnorm.set_isa({isa!r})
        fastnorm.set_num_threads(2)
        rng = np.random.default_rng(0)
        x = rng.standard_normal((512, 1024)).astype(np.float32)
        xd = rng.standard_normal((32, 16, 16, 16)).astype(np.float32)
        calls = [
            lambda: fastnorm.sigmoid(x),
            lambda: fastnorm.dropout(x, 0.5, seed=7)[0],
            lambda: fastnorm.dropout_backward(x, fastnorm.dropout(x, 0.5, seed=7)[1]),
            lambda: fastnorm.layer_norm(x, 1024)[0],
            lambda: fastnorm.layer_norm_backward(x, x, 1024, None, *fastnorm.layer_norm(x, 1024)[1:])[0],
            lambda: fastnorm.batch_norm(xd)[0],
            lambda: fastnorm.group_norm(xd, 4)[0],
            lambda: fastnorm.moments(xd, (0, 2, 3))[1],
        ]
        expected = [c() for c in calls]           # the parent has used OpenMP in each family
        pid = os.fork()
        if pid == 0:
            ok = all(np.array_equal(c(), e) for c, e in zip(calls, expected))
            ok = ok and fastnorm.get_num_threads() == 1
            os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
        again = all(np.array_equal(c(), e) for c, e in zip(calls, expected))  # parent unaffected
        print(os.WEXITSTATUS(status), again)
    """)
    assert out.split() == ["0", "True"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_multiprocessing_fork_pool():
    out = _run_python("""
        import multiprocessing as mp, numpy as np, fastnorm
        fastnorm.set_num_threads(2)
        x = np.random.default_rng(1).standard_normal((256, 1024)).astype(np.float32)
        want = fastnorm.layer_norm(x, 1024)[0]
        fastnorm.batch_norm(x)                        # OpenMP used before the fork

        def work(seed):
            y = fastnorm.layer_norm(x, 1024)[0]
            d = fastnorm.dropout(x, 0.5, seed=seed)[0]
            return bool(np.array_equal(y, want)), float(d.sum())

        with mp.get_context("fork").Pool(2) as pool:
            results = pool.map(work, [1, 2, 1])
        print(all(r[0] for r in results), results[0][1] == results[2][1])
    """)
    assert out.split() == ["True", "True"]
