#!/usr/bin/env bash
# Build fastnorm's kernels with AddressSanitizer + UndefinedBehaviorSanitizer in a scratch
# copy of the repository and run the test suite against that build.
#
#   tools/sanitize.sh                      # committed HEAD, whole suite except the slow tests
#   tools/sanitize.sh tests/test_robustness.py -k dropout    # extra arguments go to pytest
#
# Environment:
#   FASTNORM_SANITIZE_DIR     scratch directory (default /tmp/fastnorm-sanitize); recreated
#   FASTNORM_SANITIZE_SOURCE  'head' (default: git archive of HEAD) or 'worktree' (the tracked
#                             files as they are in the working tree, uncommitted edits included)
#
# The checkout's own in-place extension modules are never touched: other processes keep
# importing the normal build.  Not part of the default CI (about 10x slower than a normal run).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
scratch=${FASTNORM_SANITIZE_DIR:-/tmp/fastnorm-sanitize}
source_mode=${FASTNORM_SANITIZE_SOURCE:-head}
# The real interpreter, not a pyenv/conda shim script (valgrind would trace the shell).
python=$("${PYTHON:-python}" -c "import sys; print(sys.executable)")

case "$scratch" in /|"$repo"|"$repo"/*) echo "refusing scratch dir $scratch" >&2; exit 2;; esac
rm -rf "$scratch"
mkdir -p "$scratch"
if [ "$source_mode" = worktree ]; then
    (cd "$repo" && git ls-files -z | xargs -0 tar -cf - 2>/dev/null) | tar -xf - -C "$scratch"
else
    git -C "$repo" archive HEAD | tar -xf - -C "$scratch"
fi
find "$scratch" -name '*.so' -delete

sanitize="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined -g"
echo "== building with $sanitize in $scratch"
(cd "$scratch" && CFLAGS="$sanitize" LDFLAGS="-fsanitize=address,undefined" \
    "$python" setup.py build_ext --inplace -q)

# setup.py's build is optional (a failed build falls back to NumPy): insist on sanitized modules.
for family in _runtime activations dropout normalization; do
    so=$(ls "$scratch"/fastnorm/_ext/"$family".*.so 2>/dev/null || true)
    if [ -z "$so" ] || ! nm -D "$so" 2>/dev/null | grep __asan_ >/dev/null; then
        echo "sanitized build of $family is missing or not instrumented ($so)" >&2
        exit 1
    fi
done

libasan=$(gcc -print-file-name=libasan.so)
libubsan=$(gcc -print-file-name=libubsan.so)
export LD_PRELOAD="$libasan:$libubsan"
# CPython and NumPy keep allocations until exit by design: leak reports are noise.
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:strict_string_checks=1:check_initialization_order=1:detect_stack_use_after_return=1"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
# Python objects in plain malloc blocks, so overflows into them are seen too.
export PYTHONMALLOC=malloc
export PYTHONPATH="$scratch${PYTHONPATH:+:$PYTHONPATH}"
unset FASTNORM_BACKEND

cd "$scratch"
imported=$("$python" -c "import fastnorm, os; print(os.path.dirname(fastnorm.__file__))")
if [ "$imported" != "$scratch/fastnorm" ]; then
    echo "fastnorm was imported from $imported, not from the sanitized copy" >&2
    exit 1
fi
echo "== pytest under ASan+UBSan (fastnorm from $imported)"
if [ $# -eq 0 ]; then
    set -- tests -m "not slow"
fi
# --capture=sys: pytest captures Python's writes only, so that a sanitizer's report (written to
# file descriptor 2 by the C runtime, after which the process exits) is not lost with the
# captured output; with the default fd capture a failure showed as rc=1 and nothing else.
exec "$python" -m pytest -q -p no:cacheprovider --capture=sys "$@"
