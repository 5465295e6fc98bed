"""Run the standard benchmark suite (the same as ``python -m fastnorm.bench``).

    python bench/run.py [--quick] [--threads 1 2] [--only NAME ...] [--json FILE]
                        [--no-torch] [--isa base|avx2|avx512]

Prints a Markdown table of medians and ratios (NumPy/fastnorm, torch/fastnorm,
fastnorm/copy-floor) measured side by side in one run; see fastnorm/bench.py.
"""
import sys

from fastnorm.bench import main

if __name__ == "__main__":
    sys.exit(main())
