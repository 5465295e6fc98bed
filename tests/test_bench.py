"""The benchmark's record of the machine it ran on (fastnorm.bench.machine_info)."""
import os
import platform
import re
import subprocess
import sys

import numpy as np
import pytest

from fastnorm import bench


def test_machine_info_names_the_cpu_model_and_caches():
    info = bench.machine_info(None)
    assert info["torch"] is None and info["cores"] == os.cpu_count()
    assert isinstance(info["caches"], dict)
    for level, size in info["caches"].items():
        assert re.fullmatch(r"L[1-4]d?", level), level
        assert re.fullmatch(r"\d+[KMG]?", size), size
    assert info["cpu_id"] is None or re.fullmatch(r"family \d+ model \d+", info["cpu_id"])


@pytest.mark.skipif(not os.path.exists("/proc/cpuinfo"), reason="needs Linux's /proc/cpuinfo")
def test_machine_info_reads_the_first_processor():
    with open("/proc/cpuinfo") as f:
        first = f.read().split("\n\n")[0]
    fields = dict((k.strip(), v.strip()) for k, _, v in
                  (line.partition(":") for line in first.splitlines()) if k.strip())
    info = bench.machine_info(None)
    if "cpu family" in fields and "model" in fields:
        assert info["cpu_id"] == f"family {fields['cpu family']} model {fields['model']}"
    if "model name" in fields:
        assert info["cpu"] == fields["model name"]


@pytest.mark.skipif(not os.path.isdir("/sys/devices/system/cpu/cpu0/cache"),
                    reason="needs sysfs cache information")
def test_machine_info_cache_sizes_match_sysfs():
    base = "/sys/devices/system/cpu/cpu0/cache"
    expected = {}
    for entry in sorted(os.listdir(base)):
        if not (entry.startswith("index") and entry[5:].isdigit()):
            continue

        def read(name):
            with open(os.path.join(base, entry, name)) as f:
                return f.read().strip()
        if read("type") != "Instruction":
            expected["L" + read("level") + ("d" if read("type") == "Data" else "")] = read("size")
    assert bench.machine_info(None)["caches"] == expected


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
@pytest.mark.skipif(bool(os.environ.get("GLIBC_TUNABLES") or os.environ.get("LD_PRELOAD")),
                    reason="malloc configured or replaced from the environment")
def test_reuse_freed_memory_keeps_large_blocks():
    """After reuse_freed_memory() a freed 64 MiB block comes back already mapped (no page
    faults when it is written again); without it glibc maps it anew.  In subprocesses: the
    setting lasts for the process."""
    code = """
import ctypes, resource, sys
from fastnorm import bench
if sys.argv[1] == "on":
    assert bench.reuse_freed_memory() is not None
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
def write_block():
    p = libc.malloc(64 << 20)
    ctypes.memset(p, 1, 64 << 20)
    libc.free(p)
write_block()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
write_block()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
    faults = {mode: int(subprocess.check_output([sys.executable, "-c", code, mode]))
              for mode in ("on", "off")}
    assert faults["off"] >= 32, faults       # 64 MiB in 4 KiB pages, or 2 MiB huge pages
    assert 4 * faults["on"] < faults["off"], faults


def test_measure_interleaves_thread_counts():
    """measure() sets the thread count before every sample (every call of an impl runs at the
    count it is reported under) and alternates the counts within each round of samples instead
    of timing one count after the other; the result has every impl at every count."""
    import fastnorm
    events = []

    def impl(name):
        return lambda: events.append(("call", name, fastnorm.get_num_threads()))

    def set_threads(n):
        events.append(("set", n))
        fastnorm.set_num_threads(n)

    work = bench.Workload("fake", {"a": impl("a"), "b": impl("b")}, floor_bytes=64)
    try:
        result = bench.measure(work, 4, 0.0, (1, 2), set_threads)
    finally:
        fastnorm.set_num_threads(None)
    assert sorted(result) == [1, 2]
    assert all(sorted(result[n]) == ["a", "b", "copy-floor"] and min(result[n].values()) > 0 for n in (1, 2))
    current = None
    for event in events:
        if event[0] == "set":
            current = event[1]
        else:
            assert event[2] == current, event
    samples = []   # (thread count, impl) of the samples of a and b (the floor records nothing)
    for i, event in enumerate(events):
        if event[0] == "set" and i + 1 < len(events) and events[i + 1][0] == "call":
            samples.append((event[1], events[i + 1][1]))
    rounds = [samples[i:i + 4] for i in range(4, len(samples), 4)]   # after their calibration
    assert len(rounds) == 3 and all(len(set(r)) == 4 for r in rounds), samples
    for r in rounds:   # each impl's two counts side by side, in the rotating order
        for name in ("a", "b"):
            assert abs(r.index((1, name)) - r.index((2, name))) in (1, 3), r


def test_measure_reports_each_count_and_times_after_a_call_of_its_own(monkeypatch):
    """Timings are faked (no clock): a sample 'takes' 1000 ns times the thread count in effect,
    doubled when another impl ran just before it.  Every sample must be reported under its own
    count, and follow an untimed call of the same impl -- otherwise an impl's second count,
    which always follows its first, would be the only one to find its data warm."""
    import fastnorm
    last = []

    def impl(name):
        return lambda: last.append(name)

    def fake_time(fn, inner):
        before = last[-1] if last else None
        fn()
        return 1000.0 * fastnorm.get_num_threads() * (1 if before == last[-1] else 2)

    monkeypatch.setattr(bench, "_time_once", fake_time)
    work = bench.Workload("fake", {"a": impl("a"), "b": impl("b")})
    try:
        result = bench.measure(work, 5, 0.0, (1, 2), fastnorm.set_num_threads)
    finally:
        fastnorm.set_num_threads(None)
    assert sorted(result) == [1, 2]
    for n in (1, 2):
        assert result[n] == {"a": pytest.approx(n * 1e-6), "b": pytest.approx(n * 1e-6)}, result


def test_run_restores_the_callers_thread_settings():
    """run() sets fastnorm's and PyTorch's thread counts per sample; afterwards both are the
    caller's again: fastnorm's explicit setting (or none) and torch's count.  In a subprocess:
    run() also changes malloc settings for its process."""
    pytest.importorskip("torch")
    code = """
import fastnorm, torch
from fastnorm import bench
for mine in (None, 1):
    fastnorm.set_num_threads(mine)
    torch.set_num_threads(1)
    bench.run(quick=True, threads=(2,), names=["relu 32x128 float32"], repeats=1, budget_s=0.001)
    print(torch.get_num_threads(), fastnorm.set_num_threads(None))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["1", "None", "1", "1"]


@pytest.mark.skipif(sys.platform == "win32", reason="no resource module")
def test_measure_counts_minor_faults_per_call():
    """measure(faults=...) reports the minor page faults per call of each impl: an impl that
    writes a fresh 256 KiB mapping each call (64 pages; several calls per sample) against one
    that writes a reused buffer.  Not dividing by the calls per sample, or counting the
    untimed call before the sample too, fails it."""
    import mmap

    reused = np.zeros(256 << 10, np.uint8)

    def fresh():
        m = mmap.mmap(-1, 256 << 10)
        np.frombuffer(m, np.uint8)[::4096] = 1
        m.close()

    def warm():
        reused[::4096] = 1

    faults = {}
    bench.measure(bench.Workload("fake", {"fresh": fresh, "warm": warm}, floor_bytes=0), 3, 0.0, (1,),
                  faults=faults)
    assert sorted(faults[1]) == ["fresh", "warm"]
    assert 60 <= faults[1]["fresh"] <= 80, faults
    assert faults[1]["warm"] < 1, faults


@pytest.mark.parametrize("nbytes", [4, 16384, 98304, 3 << 20])
def test_copy_floor_buffers_start_where_asked(nbytes):
    """The copy floor's source starts a 4 KiB page and its destination 2 KiB into one (a
    destination 16 bytes further into its page than the source made glibc's memmove 13x
    slower on Zen 3); each holds nbytes of float32, C-contiguous and writable."""
    src = bench._placed_float32(nbytes, 0)
    dst = bench._placed_float32(nbytes, bench._FLOOR_DST_PAGE_OFFSET)
    assert src.ctypes.data % 4096 == 0
    assert dst.ctypes.data % 4096 == bench._FLOOR_DST_PAGE_OFFSET == 2048
    for a in (src, dst):
        assert a.dtype == np.float32 and a.nbytes == nbytes
        assert a.flags.c_contiguous and a.flags.writeable
    src[...] = 1
    np.copyto(dst, src)
    assert (dst == 1).all()


def test_summary_keeps_small_shapes_out_of_the_suites_geometric_means():
    """The small-shape rows get geometric means of their own; the standard suite's are over
    its own rows only, and rows written before the section existed (no "small" key) count
    as standard."""
    def row(threads, numpy, torch, small=None):
        r = {"workload": "w", "threads": threads,
             "seconds": {"fastnorm": 1.0, "numpy": numpy, "torch": torch}}
        if small is not None:
            r["small"] = small
        return r

    report = {"results": [row(1, 4.0, 2.0, False), row(1, 16.0, 8.0), row(1, 100.0, 0.5, True),
                          row(2, 9.0, 3.0)]}
    lines = bench.summary(report).splitlines()
    assert lines == [
        "1 thread(s): NumPy/fastnorm geometric mean 8.00x (min 4.00x); "
        "torch/fastnorm geometric mean 4.00x (min 2.00x)",
        "2 thread(s): NumPy/fastnorm geometric mean 9.00x (min 9.00x); "
        "torch/fastnorm geometric mean 3.00x (min 3.00x)",
        "small shapes (not in the suite), 1 thread(s): NumPy/fastnorm geometric mean 100.00x "
        "(min 100.00x); torch/fastnorm geometric mean 0.50x (min 0.50x)"]


def test_small_shape_rows_are_marked_in_the_results():
    """run() marks every small-shape row, and only those, in its JSON rows."""
    report = bench.run(quick=True, threads=[1], names=["small: group_norm", "layer_norm", "dropout"],
                       repeats=1, budget_s=0.0, use_torch=False)
    marks = {r["workload"]: r["small"] for r in report["results"]}
    assert marks and any(marks.values()) and not all(marks.values())
    assert marks["small: dropout p=0.5 32x128 float32 fwd"] and not marks["dropout p=0.5 64x256 float32 fwd"]
    assert all(small == name.startswith("small: ") for name, small in marks.items())
