"""``python -m fastnorm``: a quick benchmark table of fastnorm against NumPy (and PyTorch)."""
import sys

from .bench import main

sys.exit(main(["--quick", *sys.argv[1:]]))
