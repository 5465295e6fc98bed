"""The NumPy reference of every fastnorm kernel (``fastnorm.reference``).

Same functions, signatures and semantics as the compiled API; used as the test
oracle and, with ``FASTNORM_BACKEND=numpy`` or without a compiler, as the backend.
"""
from ._activations import *  # noqa: F401,F403
from ._activations import __all__ as _activations_all
from ._dropout import *  # noqa: F401,F403
from ._dropout import __all__ as _dropout_all
from ._normalization import *  # noqa: F401,F403
from ._normalization import __all__ as _normalization_all

__all__ = list(_activations_all) + list(_dropout_all) + list(_normalization_all)
