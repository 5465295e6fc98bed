"""fastnorm: fast CPU kernels for activations, dropout and normalization, forward and backward.

Compiled (Cython + C, OpenMP) kernels with a pure-NumPy twin of every function
(:mod:`fastnorm.reference`) that is both the test oracle and the fallback backend.
"""
from . import reference
from ._config import (backend, get_num_threads, isa, pool_bytes, set_isa, set_num_threads,
                      set_pool_bytes, set_stream_min_bytes, show_config, stream_min_bytes,
                      use_backend)
from .activations import *  # noqa: F401,F403
from .activations import __all__ as _activations_all
from .dropout import DropoutMask, dropout, dropout_backward
from .normalization import *  # noqa: F401,F403
from .normalization import __all__ as _normalization_all
from . import optim
from .layers import *  # noqa: F401,F403
from .layers import __all__ as _layers_all
from .losses import accuracy, mse_loss, softmax_cross_entropy
from .training import EarlyStopping, fit, train_val_test_split

__version__ = "0.1.0"

__all__ = ["backend", "use_backend", "get_num_threads", "set_num_threads", "isa", "set_isa",
           "pool_bytes", "set_pool_bytes", "stream_min_bytes", "set_stream_min_bytes", "show_config",
           "reference", *_activations_all, "dropout", "dropout_backward", "DropoutMask",
           *_normalization_all, *_layers_all, "softmax_cross_entropy", "mse_loss", "accuracy",
           "EarlyStopping", "train_val_test_split", "fit", "optim"]
