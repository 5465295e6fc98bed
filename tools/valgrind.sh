#!/usr/bin/env bash
# Run a small subset of the test suite under valgrind memcheck, against the normal
# (uninstrumented) build.  Complements tools/sanitize.sh: memcheck also sees reads of
# uninitialized memory, which AddressSanitizer does not.
#
#   tools/valgrind.sh                          # the default subset (about 10-20 minutes)
#   tools/valgrind.sh tests/test_threads.py    # any pytest arguments instead
#
# Exit status 99 means memcheck reported an error inside fastnorm's code (printed at the
# end; the full log is in $FASTNORM_VALGRIND_LOG, default /tmp/fastnorm-valgrind.log).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# The real interpreter, not a pyenv/conda shim script (valgrind would trace the shell).
python=$("${PYTHON:-python}" -c "import sys; print(sys.executable)")
cd "$repo"

if [ $# -eq 0 ]; then
    # One pass over every public function in several layouts and dtypes, out= overlaps,
    # bad inputs (validation paths), and the concurrent-call test (OpenMP threads).
    set -- tests/test_robustness.py -k "layouts_agree or out_overlapping or wrong_shape or non_array" \
           tests/test_threads.py::test_concurrent_calls_match_serial
fi

# Python objects in plain malloc blocks so memcheck tracks them; no leak check (CPython
# keeps interned objects and caches until exit by design).
export PYTHONMALLOC=malloc
unset FASTNORM_BACKEND
log=${FASTNORM_VALGRIND_LOG:-/tmp/fastnorm-valgrind.log}
status=0
valgrind --tool=memcheck --log-file="$log" --leak-check=no --track-origins=yes \
    --num-callers=30 --show-mismatched-frees=yes \
    "$python" -m pytest -q -p no:cacheprovider -x "$@" || status=$?

# A CPython built without --with-valgrind reports dozens of "uninitialised value" contexts
# of its own (object.h, longobject.c): count them, but fail only on errors whose stack
# passes through fastnorm's extension modules or kernel headers.
"$python" - "$log" <<'PY' || status=99
import re, sys
blocks, cur = [], []
for line in open(sys.argv[1]):
    m = re.match(r"==\d+== ?(.*)", line.rstrip("\n"))
    if not m:
        continue
    if m.group(1):
        cur.append(m.group(1))
    elif cur:
        blocks.append(cur)
        cur = []
blocks.append(cur)
errors = [b for b in blocks if b and re.match(r"(Conditional|Invalid|Use of uninit|Syscall|Mismatched|Source and dest)", b[0])]
ours = [b for b in errors if any(re.search(r"fastnorm|_ext/|fn_\w+_impl|fn_philox|fn_common", l) for l in b)]
print(f"valgrind: {len(errors)} error contexts, {len(ours)} in fastnorm's code (log: {sys.argv[1]})")
for b in ours:
    print("\n".join(b[:25]), "\n---")
sys.exit(1 if ours else 0)
PY
exit $status
