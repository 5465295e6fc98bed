#!/usr/bin/env bash
# Run a small subset of the test suite under valgrind memcheck, against the normal
# (uninstrumented) build.  Complements tools/sanitize.sh: memcheck also sees reads of
# uninitialized memory, which AddressSanitizer does not.
#
#   tools/valgrind.sh                          # the default subset (about 10-20 minutes)
#   tools/valgrind.sh tests/test_threads.py    # any pytest arguments instead
#
# Exit status 99 means memcheck reported an error (see "== ... ==" lines in the log).
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
exec valgrind --tool=memcheck --error-exitcode=99 --leak-check=no --track-origins=yes \
    --num-callers=30 --show-mismatched-frees=yes \
    "$python" -m pytest -q -p no:cacheprovider -x "$@"
