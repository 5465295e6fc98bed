"""Check that the extension modules in a wheel need no glibc symbol newer than a version.

    python tools/check_glibc.py WHEEL 2.28

Bundled libraries (``<pkg>.libs/``, e.g. libgomp) are listed but not judged: they carry
the requirement of the machine that built them.
"""
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path


def glibc_versions(path):
    out = subprocess.run(["objdump", "-T", str(path)], capture_output=True, text=True, check=True).stdout
    found = {}
    for line in out.splitlines():
        m = re.search(r"\(GLIBC_(\d+)\.(\d+)(?:\.\d+)?\)\s+(\S+)", line)
        if m:
            found.setdefault((int(m.group(1)), int(m.group(2))), []).append(m.group(3))
    return found


def main(wheel, limit):
    major, minor = map(int, limit.split("."))
    bad = []
    with tempfile.TemporaryDirectory() as tmp:
        zipfile.ZipFile(wheel).extractall(tmp)
        for so in sorted(Path(tmp).rglob("*.so*")):
            versions = glibc_versions(so)
            newest = max(versions, default=(0, 0))
            bundled = ".libs" in so.parent.name
            print(f"{so.relative_to(tmp)}: newest GLIBC_{newest[0]}.{newest[1]}"
                  + (" (bundled, not judged)" if bundled else ""))
            if not bundled and newest > (major, minor):
                bad.append((so.name, {f"{a}.{b}": v for (a, b), v in versions.items() if (a, b) > (major, minor)}))
    if bad:
        print(f"FAIL: needs glibc newer than {limit}: {bad}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
