"""The benchmark's record of the machine it ran on (fastnorm.bench.machine_info)."""
import os
import re

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
