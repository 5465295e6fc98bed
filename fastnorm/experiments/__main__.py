"""``python -m fastnorm.experiments``: run the experiments and write the report."""
import sys

from . import main

sys.exit(main())
