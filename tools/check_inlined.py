"""Check that no element function of the kernels was left out of line in a build.

    python tools/check_inlined.py [PACKAGE_DIR]

The element functions -- every function of fastnorm/_ext/include/fn_math.h and the
per-element helpers of fn_activations_impl.h (functions of T returning T) -- are the bodies
of vector loops.  A compiler that keeps one as a call leaves the loop that calls it scalar:
gcc kept fn_expm1, fn_exp, fn_log1p and fn_erfc out of act_forward_span's float64 loops
until 2026-12-05 (ELU, SELU, CELU and GELU float64 forwards 5-9x slower than vectorized), and
clang kept GELU's float64 derivative out of two backward loops.  Such a function then shows
as a local text symbol of the extension module; this lists the modules' symbols (nm) and
fails if one of those names is among them.  PACKAGE_DIR is the installed fastnorm package
(default: the one Python imports).  Exit status 0 when none is out of line.
"""
import glob
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
INCLUDE = os.path.join(HERE, "..", "fastnorm", "_ext", "include")


def element_functions():
    """Name patterns of the element functions, read from the headers."""
    with open(os.path.join(INCLUDE, "fn_math.h")) as f:
        math = set(re.findall(r"^(?:static inline|FN_ELEMENT) [\w ]+?\b(fn_\w+)\(", f.read(), re.M))
    with open(os.path.join(INCLUDE, "fn_activations_impl.h")) as f:
        per_type = set(re.findall(r"^(?:static inline|FN_ELEMENT) T FN_NAME\((\w+), FN_SUF\)\(T ",
                                  f.read(), re.M))
    if not math or not per_type:
        sys.exit("check_inlined: found no element functions in the headers (did they change?)")
    # FN_NAME(name, FN_SUF) becomes name_f32_avx512 and the like (fn_instantiate.h)
    return [re.escape(name) for name in sorted(math)] + \
        [re.escape(name) + r"_f(32|64)_\w+" for name in sorted(per_type)]


def main():
    if len(sys.argv) > 1:
        package = sys.argv[1]
    else:
        import fastnorm
        package = os.path.dirname(fastnorm.__file__)
    modules = sorted(glob.glob(os.path.join(package, "_ext", "*.so")))
    if not modules:
        sys.exit(f"check_inlined: no extension modules under {package}/_ext")
    # gcc names its specialized copies name.constprop.0, name.isra.0, ...
    pattern = re.compile(r"^(%s)(\.[\w.]+)?$" % "|".join(element_functions()))
    out_of_line = []
    for module in modules:
        symbols = subprocess.run(["nm", module], capture_output=True, text=True, check=True).stdout
        local = [parts[2] for parts in map(str.split, symbols.splitlines())
                 if len(parts) == 3 and parts[1] == "t"]
        if not local:  # a stripped module would pass for want of symbols
            sys.exit(f"check_inlined: {module} has no local symbols (stripped?): nothing to check")
        out_of_line += [f"{os.path.basename(module)}: {name}" for name in local if pattern.match(name)]
    if out_of_line:
        print("element functions compiled out of line (their loops stay scalar):")
        print("\n".join("  " + s for s in out_of_line))
        sys.exit(1)
    print(f"element functions: none out of line in {len(modules)} modules")


if __name__ == "__main__":
    main()
