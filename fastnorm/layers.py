"""Layers: thin stateful objects over the fastnorm kernels (forward and backward).

Every layer has ``forward(x)`` (also ``layer(x)``), ``backward(grad_output) ->
grad_input``, ``train()`` / ``eval()``, ``parameters()``, ``zero_grad()``,
``state_dict()`` / ``load_state_dict()`` and a readable ``repr``.  Names, defaults,
state names and semantics follow ``torch.nn``, so a PyTorch state dict converted to
NumPy arrays loads and gives the same outputs.

Gradients: a forward in training mode keeps what the backward needs (input, output,
statistics, dropout mask); ``backward`` returns the gradient with respect to the
layer's input and *adds* the parameter gradients to ``param.grad`` (clear them with
``zero_grad()``).  A forward in evaluation mode keeps nothing, so ``backward`` then
raises RuntimeError.  ``backward`` may be called more than once after one forward
(each call accumulates again).

inplace=True (where PyTorch has it) overwrites the input.  As in PyTorch, the array
must not be one another layer keeps for its backward -- the output of Sigmoid or Tanh,
or of an inplace ReLU-family layer, possibly seen through Flatten, or an input that
another layer also received: an inplace layer marks every layer whose kept arrays share
memory with the one it overwrites, and that layer's ``backward`` then raises
RuntimeError, where PyTorch's version counters raise (writes by other code than these
layers are not seen).  ReLU, ReLU6 and LeakyReLU (slope >= 0) differentiate from their
output and keep nothing extra; the other inplace layers keep a copy of the input in
training mode, so there inplace saves an allocation, not memory.

dtypes: parameters are float32 unless the constructor's ``dtype=`` says otherwise
(``layer.to(numpy.float64)`` converts an existing layer); inputs of layers with
parameters must have the parameters' dtype (normalization layers also take float16
input with float32 parameters, computed in float32).
"""
import itertools
import math
import numbers
import operator
import secrets
import weakref

import numpy as np

from . import activations as _act
from .dropout import dropout, dropout_backward
from . import normalization as _norm
from ._arrays import as_float_array

__all__ = ["Parameter", "Layer", "Sequential", "Linear", "Flatten", "Dropout",
           "ReLU", "LeakyReLU", "ELU", "SELU", "CELU", "GELU", "SiLU", "Swish", "Softplus", "Mish",
           "Sigmoid", "Tanh", "Hardsigmoid", "Hardswish", "Softsign", "ReLU6",
           "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "LayerNorm", "GroupNorm",
           "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d", "RMSNorm"]

_FLOATS = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))
_F16, _F32 = np.dtype(np.float16), np.dtype(np.float32)


# ---------------------------------------------------------------------------- argument checks

def _int_arg(owner, name, value, minimum=None):
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{owner}: {name} must be an int, got bool")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{owner}: {name} must be an int, got {type(value).__name__}") from None
    if minimum is not None and value < minimum:
        raise ValueError(f"{owner}: {name} must be >= {minimum}, got {value}")
    return value


def _real_arg(owner, name, value, lo=None, hi=None, *, lo_open=False, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{owner}: {name} must be a real number, got {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v) or (lo is not None and (v <= lo if lo_open else v < lo)) \
            or (hi is not None and v > hi):
        lo_s = "-inf" if lo is None else f"{lo:g}"
        hi_s = "inf" if hi is None else f"{hi:g}"
        interval = f"{'(' if lo_open or lo is None else '['}{lo_s}, {hi_s}{']' if hi is not None else ')'}"
        raise ValueError(f"{owner}: {name} must be a finite number in {interval}, got {value!r}")
    return v


def _bool_arg(owner, name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{owner}: {name} must be a bool, got {type(value).__name__}")
    return bool(value)


def _dtype_arg(owner, dtype):
    try:
        d = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{owner}: dtype must be float16, float32 or float64, got {dtype!r}") from None
    if d not in _FLOATS:
        raise TypeError(f"{owner}: dtype must be float16, float32 or float64, got {d}")
    return d


def _shape_arg(owner, name, value):
    if isinstance(value, (numbers.Integral, np.integer)) and not isinstance(value, (bool, np.bool_)):
        value = (value,)
    try:
        shape = tuple(_int_arg(owner, name, s, minimum=1) for s in value)
    except TypeError:
        raise TypeError(f"{owner}: {name} must be an int or a sequence of ints, got {value!r}") from None
    if not shape:
        raise ValueError(f"{owner}: {name} must not be empty")
    return shape


def _seed_arg(owner, seed):
    """A non-negative int seed, or a fresh 64-bit one from OS entropy for None."""
    if seed is None:
        return secrets.randbits(64)
    return _int_arg(owner, "seed", seed, minimum=0)


# ---------------------------------------------------------------------------- parameters, base class

class Parameter:
    """A trainable array: ``data`` (updated by the optimizers in place) and ``grad``
    (same shape and dtype, accumulated by backward, cleared by ``zero_grad()``)."""
    __slots__ = ("data", "grad")

    def __init__(self, data):
        self.data = np.array(data, copy=True)
        self.grad = np.zeros_like(self.data)

    shape = property(lambda self: self.data.shape)
    dtype = property(lambda self: self.data.dtype)
    size = property(lambda self: self.data.size)

    def zero_grad(self):
        self.grad[...] = 0

    def __repr__(self):
        return f"Parameter(shape={self.data.shape}, dtype={self.data.dtype})"


# The layers whose training-mode forwards kept arrays for backward, by the buffer those
# arrays may share with other layers (the owner of the forward's input or output), so that
# an inplace layer finds those it is about to overwrite without looking at every layer (a
# training step of 10 Linear / BatchNorm1d / ReLU(inplace) blocks at (32, 128) took 1.75x as
# long when every inplace forward checked every layer).  A forward files its layer under its
# new keys and leaves the earlier filings where they are: a filing is current while its key
# is among the layer's _kept_keys, and the stale ones go when an inplace layer looks at
# their key (it drops every stale filing it sees, so it looks at each one once) or at the
# next prune, which runs every so many filings.  Taking them back on every forward cost
# about 2 us of a 4 us filing here, and leaving them for the prune alone piled them up
# under the addresses a training loop reuses (all 30 layers of that step under each key),
# which every inplace write then looked at.  Stale filings under keys that no inplace layer
# looks at wait for the prune, which takes about 0.3 us per filing it walks (a forward that
# starts one with 4096 stale filings behind it takes about 1.4 ms longer).  Each filing is a
# weak reference to the layer (a weak-value dictionary of the layers was Python code on every
# filing).  Nothing is filed until an inplace layer exists (constructed, unpickled or
# switched to inplace).  Models may train in threads: every change is one atomic dict
# operation (get, setdefault, item assignment, pop with a default) and the walks go over
# copies, so none raises.  A filing can be lost, which only loses a detection (a lock around
# them cost 0.35 us per forward), where another thread drops a stale filing in the same slot
# (the layer's id: the layer itself seen mid-forward, or a freed layer at its address) under
# the same key, or the key it emptied, in between: a prune can do so under any key, an
# inplace layer only under the buffer it writes, so only where threads share that buffer.
_keepers_by_buffer = {}   # id of a buffer's owner -> {layer id: weak reference to the layer}
_watching = False
# Filings are counted by an iterator, not in a module global: where Cython caches a module's
# globals by the version of its dict (up to Python 3.11), assigning one on every forward made
# the compiled module look them all up again (0.2 us of a 2.1 us filing).
_filings = itertools.count(1)
_PRUNE_MIN = 4096          # filings between prunes, at least
_next_prune = _PRUNE_MIN   # the filing count at which the next prune runs


def _watch():
    global _watching
    _watching = True


def _owner(a):
    """The object that owns a's memory: the base ndarray of a view, or the buffer under it."""
    base = a.base
    while isinstance(base, np.ndarray):
        a = base
        base = a.base
    return a if base is None else base


def _kept_arrays(saved):
    if isinstance(saved, np.ndarray):
        return (saved,)
    if isinstance(saved, tuple):   # a list, not tuple(generator): 0.55 us here against 1.05
        return [a for a in saved if isinstance(a, np.ndarray)]
    return ()


def _register_kept(layer, x, y):
    """Files layer under the buffers of its input x and output y: what it kept that another
    layer can reach lies there (its copies, statistics and masks are its own).  Replaces
    the layer's keys, which makes its filings under other keys stale."""
    ky = id(y if y.base is None else _owner(y))   # most outputs are fresh arrays
    kx = id(_owner(x)) if isinstance(x, np.ndarray) else ky
    keys = (ky,) if kx == ky else (kx, ky)
    layer._kept_keys = keys   # first: a drop that looks later keeps what is filed next
    lid = id(layer)
    ref = weakref.ref(layer)   # the layer's plain weak reference, reused while one lives
    for key in keys:
        refs = _keepers_by_buffer.get(key)
        if refs is None:
            refs = _keepers_by_buffer.setdefault(key, {})
        refs[lid] = ref
        filed = next(_filings)
    if filed >= _next_prune:
        _prune(filed)


def _current_keepers(key):
    """The layers currently filed under key, after dropping its stale filings (of layers
    freed since, or no longer filed there: filed elsewhere or nowhere since, as by an
    eval-mode forward or one still running) and, if none is left, the key."""
    refs = _keepers_by_buffer.get(key)
    if refs is None:
        return []
    layers = []
    for lid, ref in refs.copy().items():   # a copy: other threads may file meanwhile
        layer = ref()
        if layer is None or key not in layer._kept_keys:
            if refs.get(lid) is ref:   # not a new layer at a freed one's address (narrows a race)
                refs.pop(lid, None)
        else:
            layers.append(layer)
    if not refs:
        _keepers_by_buffer.pop(key, None)
    return layers


def _prune(filed):
    """Drops every stale filing and the keys left empty; the next prune runs after as many
    filings as are left (_PRUNE_MIN at least)."""
    global _next_prune
    for key in list(_keepers_by_buffer):
        _current_keepers(key)
    _next_prune = filed + max(_PRUNE_MIN, sum(len(refs) for refs in list(_keepers_by_buffer.values())))


def _overlap(a, b):
    if not np.may_share_memory(a, b):   # disjoint bounds: the common case, and cheap
        return False
    try:
        return np.shares_memory(a, b, max_work=1 << 16)   # interleaved views need not overlap
    except np.exceptions.TooHardError:
        return True


def _before_inplace_write(writer, x):
    """Marks the layers whose kept arrays share memory with x, which `writer` overwrites
    next: their backward would read the new values."""
    _watch()
    owner = _owner(x)
    for layer in _current_keepers(id(owner)):
        # (the writer is mid-forward, so not filed now: `is not writer` is only a guard)
        if layer is not writer and layer._overwritten_by is None \
                and any(_owner(a) is owner and _overlap(a, x) for a in _kept_arrays(layer._saved)):
            layer._overwritten_by = type(writer).__name__


class Layer:
    """Base class: holds parameters, buffers (non-trainable state such as running
    statistics) and child layers, each in registration order -- the order of
    PyTorch's ``named_parameters()`` and ``state_dict()``.

    Subclasses implement ``_forward(x)`` (returns the output and, in training mode,
    stores what ``_backward`` needs in ``self._saved``) and ``_backward(grad_output)``.
    """

    def __init__(self):
        self.training = True
        self._param_names = []
        self._buffer_names = []
        self._children = {}
        self._saved = None
        self._out_spec = None
        self._overwritten_by = None
        self._kept_keys = ()

    # -- registration ---------------------------------------------------------
    def _add_parameter(self, name, data):
        setattr(self, name, Parameter(data))
        self._param_names.append(name)

    def _add_buffer(self, name, data):
        setattr(self, name, data)
        self._buffer_names.append(name)

    def _add_child(self, name, layer):
        if not isinstance(layer, Layer):
            raise TypeError(f"{type(self).__name__}: layer {name} must be a fastnorm Layer, "
                            f"got {type(layer).__name__}")
        self._children[name] = layer

    # -- forward / backward ---------------------------------------------------
    def forward(self, x):
        """The layer's output for ``x``; in training mode also keeps what backward needs."""
        self._saved = None
        self._overwritten_by = None
        if self._kept_keys:
            self._kept_keys = ()   # its filings are stale now (see _keepers_by_buffer)
        y = self._forward(x)
        saved = self._saved
        if saved is None:
            self._out_spec = None
        else:
            self._out_spec = (y.shape, y.dtype)
            if _watching and _kept_arrays(saved):   # not Flatten's shape, Dropout's mask
                _register_kept(self, x, y)
        return y

    def __call__(self, x):
        return self.forward(x)

    def backward(self, grad_output):
        """Gradient with respect to the input of the last training-mode forward;
        parameter gradients are added to ``param.grad``."""
        if self._saved is None or self._overwritten_by is not None:
            self._refuse_backward()
        shape, dtype = self._out_spec
        g = grad_output
        if type(g) is not np.ndarray or g.shape != shape or g.dtype != dtype:
            g = self._converted_grad_output(g, shape, dtype)
        return self._backward(g)

    def _refuse_backward(self):
        name = type(self).__name__
        if self._saved is None:
            raise RuntimeError(f"{name}.backward: there is no training-mode forward to differentiate "
                               "(call the layer on an input in training mode first; an eval-mode "
                               "forward keeps nothing for backward)")
        raise RuntimeError(f"{name}.backward: an array this layer kept for backward was overwritten "
                           f"by an inplace {self._overwritten_by} that ran after it (use "
                           "inplace=False there)")

    def _converted_grad_output(self, grad_output, shape, dtype):
        """grad_output that is not already a float array of the forward output's shape and
        dtype: converted as NumPy would (array-likes, byte-swapped floats), or the error."""
        name = type(self).__name__
        g = as_float_array(f"{name}.backward", "grad_output", grad_output)
        if g.shape != shape:
            raise ValueError(f"{name}.backward: grad_output must have the shape of the forward output "
                             f"{shape}, got {g.shape}")
        if g.dtype != dtype:
            raise TypeError(f"{name}.backward: grad_output must have the dtype of the forward output "
                            f"({dtype}), got {g.dtype}")
        return g

    def _forward(self, x):
        raise NotImplementedError

    def _backward(self, grad_output):
        raise NotImplementedError

    # -- modes ----------------------------------------------------------------
    def train(self, mode=True):
        """Training mode (batch statistics, dropout on, backward possible); returns self."""
        mode = _bool_arg(f"{type(self).__name__}.train", "mode", mode)
        self.training = mode
        for child in self._children.values():
            child.train(mode)
        return self

    def eval(self):
        """Evaluation mode (running statistics, dropout off); returns self."""
        return self.train(False)

    # -- parameters and state -------------------------------------------------
    def named_parameters(self, prefix=""):
        """(name, Parameter) pairs, own parameters first, then each child's, as PyTorch."""
        out = [(prefix + n, getattr(self, n)) for n in self._param_names]
        for cname, child in self._children.items():
            out.extend(child.named_parameters(f"{prefix}{cname}."))
        return out

    def parameters(self):
        """The trainable Parameters, in the order of PyTorch's ``named_parameters()``."""
        return [p for _, p in self.named_parameters()]

    def zero_grad(self):
        for p in self.parameters():
            p.zero_grad()

    def _state_items(self, prefix):
        """(key, owner, attribute name, is_parameter) in PyTorch's state_dict order."""
        items = [(prefix + n, self, n, True) for n in self._param_names]
        items += [(prefix + n, self, n, False) for n in self._buffer_names
                  if getattr(self, n) is not None]
        for cname, child in self._children.items():
            items.extend(child._state_items(f"{prefix}{cname}."))
        return items

    def state_dict(self):
        """A dict of NumPy array copies: parameters, then buffers, then each child's
        (keys ``"0.weight"``, ``"1.running_mean"``, ...), PyTorch's names and order."""
        state = {}
        for key, owner, attr, is_param in self._state_items(""):
            value = getattr(owner, attr)
            state[key] = np.array(value.data if is_param else value, copy=True)
        return state

    def load_state_dict(self, state_dict, strict=True):
        """Copy arrays from a mapping (e.g. ``state_dict()``, ``np.load(...)`` of an
        ``np.savez`` file, or a PyTorch state dict converted to NumPy) into this layer.

        Values are cast to the layer's dtypes; Parameter objects are kept (optimizers
        holding them stay valid).  ``strict``: missing or unexpected keys raise ValueError;
        ``strict=False`` loads the keys the layer has and leaves the others (as PyTorch,
        which returns the missing and unexpected keys where this returns the layer).  Wrong
        shapes and non-numeric values raise before anything is changed.
        """
        name = type(self).__name__
        try:
            keys = list(state_dict.keys())
        except AttributeError:
            raise TypeError(f"{name}.load_state_dict: state_dict must be a mapping of names to arrays, "
                            f"got {type(state_dict).__name__}") from None
        items = self._state_items("")
        expected = [key for key, *_ in items]
        missing = [k for k in expected if k not in state_dict]
        known = set(expected)
        unexpected = [k for k in keys if k not in known]
        if strict and (missing or unexpected):
            parts = []
            if missing:
                parts.append(f"missing keys {missing}")
            if unexpected:
                parts.append(f"unexpected keys {unexpected}")
            raise ValueError(f"{name}.load_state_dict: state_dict does not match the layer: "
                             f"{'; '.join(parts)} (expected keys {expected})")
        staged = []
        for key, owner, attr, is_param in items:
            if key not in state_dict:  # missing, with strict=False
                continue
            current = getattr(owner, attr)
            target = current.data if is_param else current
            try:
                value = np.asarray(state_dict[key])
            except Exception as exc:
                raise TypeError(f"{name}.load_state_dict: state_dict[{key!r}] must be an array, "
                                f"got {type(state_dict[key]).__name__} ({exc})") from None
            if value.dtype.kind not in "fiub":
                raise TypeError(f"{name}.load_state_dict: state_dict[{key!r}] must be a numeric array, "
                                f"got dtype {value.dtype}")
            if value.shape != target.shape:
                raise ValueError(f"{name}.load_state_dict: state_dict[{key!r}] must have shape "
                                 f"{target.shape}, got {value.shape}")
            staged.append((target, value))
        for target, value in staged:
            np.copyto(target, value, casting="unsafe")
        return self

    def to(self, dtype):
        """Convert parameters and floating buffers to ``dtype`` (float16/32/64) in place;
        returns self.  Parameter objects are kept; their gradients are reset to zero."""
        dtype = _dtype_arg(f"{type(self).__name__}.to", dtype)
        for n in self._param_names:
            p = getattr(self, n)
            p.data = p.data.astype(dtype)
            p.grad = np.zeros_like(p.data)
        for n in self._buffer_names:
            b = getattr(self, n)
            if b is not None and b.dtype.kind == "f":
                setattr(self, n, b.astype(dtype))
        for child in self._children.values():
            child.to(dtype)
        self._saved = None
        return self

    # -- helpers for subclasses -------------------------------------------------
    def _param_dtype(self):
        if self._param_names:
            return getattr(self, self._param_names[0]).data.dtype
        for n in self._buffer_names:
            b = getattr(self, n)
            if b is not None and b.dtype.kind == "f":
                return b.dtype
        return None

    def _input(self, x, *, allow_half=False):
        """x as a float array whose dtype matches the layer's parameters."""
        name = type(self).__name__
        x = as_float_array(name, "x", x)
        want = self._param_dtype()
        if want is not None and x.dtype != want and not (allow_half and x.dtype == _F16 and want == _F32):
            raise TypeError(f"{name}: x must have the dtype of the layer's parameters ({want}), got "
                            f"{x.dtype} (convert the input, or the layer with .to(numpy.{x.dtype}))")
        return x

    def extra_repr(self):
        return ""

    def __repr__(self):
        if not self._children:
            return f"{type(self).__name__}({self.extra_repr()})"
        lines = [f"{type(self).__name__}("]
        for cname, child in self._children.items():
            body = repr(child).replace("\n", "\n  ")
            lines.append(f"  ({cname}): {body}")
        lines.append(")")
        return "\n".join(lines)


# ---------------------------------------------------------------------------- containers and shape layers

class Sequential(Layer):
    """Layers applied in order; ``backward`` runs them in reverse.  Children are named
    "0", "1", ... (state dict keys ``"0.weight"``, as ``torch.nn.Sequential``)."""

    def __init__(self, *layers):
        super().__init__()
        for i, layer in enumerate(layers):
            self._add_child(str(i), layer)

    def append(self, layer):
        self._add_child(str(len(self._children)), layer)
        return self

    def __len__(self):
        return len(self._children)

    def __iter__(self):
        return iter(self._children.values())

    def __getitem__(self, index):
        layers = list(self._children.values())
        if isinstance(index, slice):
            return Sequential(*layers[index])
        return layers[index]

    def forward(self, x):
        for layer in self._children.values():
            x = layer.forward(x)
        return x

    def backward(self, grad_output):
        if not self._children:
            return grad_output
        for layer in reversed(list(self._children.values())):
            grad_output = layer.backward(grad_output)
        return grad_output


class Flatten(Layer):
    """Flattens axes ``start_dim..end_dim`` into one (default: all but the batch axis)."""

    def __init__(self, start_dim=1, end_dim=-1):
        super().__init__()
        self.start_dim = _int_arg("Flatten", "start_dim", start_dim)
        self.end_dim = _int_arg("Flatten", "end_dim", end_dim)

    def _forward(self, x):
        x = as_float_array("Flatten", "x", x)
        nd = max(x.ndim, 1)
        start = self.start_dim + nd if self.start_dim < 0 else self.start_dim
        end = self.end_dim + nd if self.end_dim < 0 else self.end_dim
        if not (0 <= start < nd and 0 <= end < nd) or start > end:
            raise ValueError(f"Flatten: start_dim={self.start_dim}, end_dim={self.end_dim} do not "
                             f"select an axis range of x with shape {x.shape}")
        shape = x.shape[:start] + (math.prod(x.shape[start:end + 1]),) + x.shape[end + 1:]
        if self.training:
            self._saved = x.shape
        return x.reshape(shape)

    def _backward(self, g):
        return g.reshape(self._saved)

    def extra_repr(self):
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


# ---------------------------------------------------------------------------- activations

class _InplaceOption:
    """``inplace`` as a property: switching it on starts the watch on kept arrays."""

    @property
    def inplace(self):
        return self._inplace

    @inplace.setter
    def inplace(self, value):
        self._inplace = value
        if value:
            _watch()

    def __setstate__(self, state):
        if "inplace" in state:   # pickled before inplace became a property
            state = dict(state, _inplace=state["inplace"])
            del state["inplace"]
        self.__dict__.update(state)
        if self._inplace:   # an unpickled inplace layer: __init__ did not run
            _watch()

    def _before_overwriting(self, x):
        """Checks that x, which this inplace layer writes next, may be written, and marks
        the layers that kept it for backward."""
        if not x.flags.writeable:
            raise ValueError(f"{type(self).__name__}: inplace=True needs a writeable x, got a "
                             "read-only array")
        _before_inplace_write(self, x)


class _Activation(_InplaceOption, Layer):
    """Elementwise layer over ``fastnorm.<fn>`` / ``<fn>_backward`` (``_forward_fn`` /
    ``_backward_fn``).

    ``_saves_output``: the backward kernel takes the forward output (sigmoid, tanh).
    ``_output_backward``: with ``inplace`` the input is overwritten, and these layers
    can differentiate from the output with the same kernel (the output has the
    input's sign pattern), so nothing is copied; the others keep a copy of the input.
    """
    _forward_fn = _backward_fn = None   # fastnorm.<fn> and <fn>_backward
    _saves_output = False
    _has_inplace = False
    _params = ()

    def __init__(self, **kwargs):
        super().__init__()
        self.inplace = False
        if self._has_inplace:
            self.inplace = _bool_arg(type(self).__name__, "inplace", kwargs.pop("inplace", False))
        elif "inplace" in kwargs:
            raise TypeError(f"{type(self).__name__}: has no inplace option (PyTorch has none)")
        for name, _ in self._params:
            setattr(self, name, kwargs.pop(name))
        if kwargs:
            raise TypeError(f"{type(self).__name__}: unexpected arguments {sorted(kwargs)}")

    def _kwargs(self):
        return {name: getattr(self, name) for name, _ in self._params}

    def _output_backward(self):
        return False

    def _forward(self, x):
        x = as_float_array(type(self).__name__, "x", x)
        if not self._inplace:
            y = self._forward_fn(x, **self._kwargs()) if self._params else self._forward_fn(x)
            if self.training:
                self._saved = y if self._saves_output else x
            return y
        self._before_overwriting(x)
        from_output = self._saves_output or self._output_backward()
        keep = x.copy() if self.training and not from_output else None
        y = self._forward_fn(x, **self._kwargs(), out=x)
        if self.training:
            self._saved = y if from_output else keep
        return y

    def _backward(self, g):
        if self._params:
            return self._backward_fn(g, self._saved, **self._kwargs())
        return self._backward_fn(g, self._saved)

    def extra_repr(self):
        parts = [f"{name}={getattr(self, name)!r}" for name, show in self._params if show]
        if self.inplace:
            parts.append("inplace=True")
        return ", ".join(parts)


def _activation(cls_name, fn, *, params=(), inplace=False, saves_output=False, from_output=None,
                doc=""):
    """Build an activation layer class; ``params``: (name, default, validator) triples."""
    spec = tuple((name, True) for name, _, _ in params)

    def __init__(self, *args, **kwargs):
        if len(args) > len(params):
            raise TypeError(f"{cls_name}: takes at most {len(params)} positional arguments, got {len(args)}")
        values = {}
        for i, (name, default, check) in enumerate(params):
            if i < len(args):
                if name in kwargs:
                    raise TypeError(f"{cls_name}: got multiple values for {name}")
                value = args[i]
            else:
                value = kwargs.pop(name, default)
            values[name] = check(cls_name, name, value)
        _Activation.__init__(self, **values, **kwargs)

    body = {"__init__": __init__, "_saves_output": saves_output, "_has_inplace": inplace,
            "_params": spec, "__doc__": doc,
            "_forward_fn": staticmethod(getattr(_act, fn)),
            "_backward_fn": staticmethod(getattr(_act, fn + "_backward"))}
    if from_output is not None:
        body["_output_backward"] = from_output
    return type(cls_name, (_Activation,), body)


def _real(owner, name, value):
    return _real_arg(owner, name, value)


def _nonzero(owner, name, value):
    v = _real_arg(owner, name, value)
    if v == 0:
        raise ValueError(f"{owner}: {name} must be non-zero, got {value!r}")
    return v


def _approximate(owner, name, value):
    if value not in ("none", "tanh"):
        raise ValueError(f"{owner}: {name} must be 'none' or 'tanh', got {value!r}")
    return value


_always = lambda self: True  # noqa: E731

ReLU = _activation("ReLU", "relu", inplace=True, from_output=_always,
                   doc="max(x, 0).  ReLU(inplace=False)")
ReLU6 = _activation("ReLU6", "relu6", inplace=True, from_output=_always,
                    doc="min(max(x, 0), 6).  ReLU6(inplace=False)")
LeakyReLU = _activation("LeakyReLU", "leaky_relu", params=(("negative_slope", 0.01, _real),),
                        inplace=True, from_output=lambda self: self.negative_slope >= 0,
                        doc="x if x > 0 else negative_slope * x.  "
                            "LeakyReLU(negative_slope=0.01, inplace=False)")
ELU = _activation("ELU", "elu", params=(("alpha", 1.0, _real),), inplace=True,
                  doc="x if x > 0 else alpha * (exp(x) - 1).  ELU(alpha=1.0, inplace=False)")
SELU = _activation("SELU", "selu", inplace=True,
                   doc="scale * elu(x, alpha) with PyTorch's constants.  SELU(inplace=False)")
CELU = _activation("CELU", "celu", params=(("alpha", 1.0, _nonzero),), inplace=True,
                   doc="max(0, x) + min(0, alpha * (exp(x / alpha) - 1)).  "
                       "CELU(alpha=1.0, inplace=False)")
GELU = _activation("GELU", "gelu", params=(("approximate", "none", _approximate),),
                   doc="x * Phi(x), or the tanh approximation.  GELU(approximate='none')")
SiLU = _activation("SiLU", "silu", inplace=True, doc="x * sigmoid(x).  SiLU(inplace=False)")
Swish = SiLU
Softplus = _activation("Softplus", "softplus",
                       params=(("beta", 1.0, _nonzero), ("threshold", 20.0, _real)),
                       doc="log(1 + exp(beta x)) / beta (x where beta x > threshold).  "
                           "Softplus(beta=1.0, threshold=20.0)")
Mish = _activation("Mish", "mish", inplace=True, doc="x * tanh(softplus(x)).  Mish(inplace=False)")
Sigmoid = _activation("Sigmoid", "sigmoid", saves_output=True,
                      doc="1 / (1 + exp(-x)); keeps its output for backward.")
Tanh = _activation("Tanh", "tanh", saves_output=True, doc="tanh(x); keeps its output for backward.")
Hardsigmoid = _activation("Hardsigmoid", "hardsigmoid", inplace=True,
                          doc="relu6(x + 3) / 6.  Hardsigmoid(inplace=False)")
Hardswish = _activation("Hardswish", "hardswish", inplace=True,
                        doc="x * relu6(x + 3) / 6.  Hardswish(inplace=False)")
Softsign = _activation("Softsign", "softsign", doc="x / (1 + |x|).")

for _cls in (ReLU, ReLU6, LeakyReLU, ELU, SELU, CELU, GELU, SiLU, Softplus, Mish, Sigmoid, Tanh,
             Hardsigmoid, Hardswish, Softsign):
    _cls.__module__ = __name__


# ---------------------------------------------------------------------------- dropout, linear

class Dropout(_InplaceOption, Layer):
    """Inverted dropout (``torch.nn.Dropout``): in training mode each element is zeroed
    with probability p and the rest scaled by 1 / (1 - p); identity in eval mode.

    Each training forward draws a fresh mask from the layer's own Philox stream
    (``seed``, ``offset``): it uses the counter ``offset`` and then advances it past the
    values consumed, so a seeded layer gives the same masks run to run.  seed=None draws
    a random seed at construction (readable as ``layer.seed``).  Setting ``offset``
    back replays a mask (how the tests hold a mask fixed).  The stream position is not
    part of the state dict (PyTorch's Dropout has no state).
    """

    def __init__(self, p=0.5, inplace=False, *, seed=None):
        super().__init__()
        self.p = _real_arg("Dropout", "p", p, 0.0, 1.0)
        self.inplace = _bool_arg("Dropout", "inplace", inplace)
        self.seed = _seed_arg("Dropout", seed)
        self.offset = 0

    def _forward(self, x):
        x = as_float_array("Dropout", "x", x)
        if not self.training or self.p == 0.0:
            if self.training:
                self._saved = False  # identity: backward passes grad_output through
            return x
        if self.inplace:
            self._before_overwriting(x)
        y, mask = dropout(x, self.p, seed=self.seed, offset=self.offset,
                          out=x if self.inplace else None)
        self.offset = mask.next_offset
        self._saved = mask
        return y

    def _backward(self, g):
        if self._saved is False:
            return g
        return dropout_backward(g, self._saved)

    def extra_repr(self):
        return f"p={self.p}" + (", inplace=True" if self.inplace else "")


_INITS = ("default", "he", "he_uniform", "glorot", "glorot_normal")


class Linear(Layer):
    """``y = x @ weight.T + bias``; x: (..., in_features) -> (..., out_features).

    weight: (out_features, in_features), bias: (out_features,) (``torch.nn.Linear``).
    init: 'default' (PyTorch's: weight and bias uniform in +-1/sqrt(in_features)),
    'he' (normal, std sqrt(2 / in_features)), 'he_uniform' (bound sqrt(6 / in_features)),
    'glorot' (uniform, bound sqrt(6 / (in + out))) or 'glorot_normal'
    (std sqrt(2 / (in + out))); bias zero for all but 'default'.  seed: an int or a
    numpy Generator for the initial values (and the DropConnect stream).

    weight_dropout=p: DropConnect, the weight-side sibling of dropout.  Each training
    forward multiplies the weight matrix by a fresh dropout mask (kept entries scaled
    by 1 / (1 - p), one mask per forward call shared by the batch), so the gradient
    reaches only the kept weights; eval mode uses the weights unchanged (the mean of
    the masked weights).  The mask stream is the layer's own, like :class:`Dropout`'s
    (``dropconnect_seed``, ``dropconnect_offset``).
    """

    def __init__(self, in_features, out_features, bias=True, *, init="default", weight_dropout=0.0,
                 seed=None, dtype=np.float32):
        super().__init__()
        self.in_features = _int_arg("Linear", "in_features", in_features, minimum=0)
        self.out_features = _int_arg("Linear", "out_features", out_features, minimum=0)
        has_bias = _bool_arg("Linear", "bias", bias)
        if init not in _INITS:
            raise ValueError(f"Linear: init must be one of {_INITS}, got {init!r}")
        self.init = init
        self.weight_dropout = _real_arg("Linear", "weight_dropout", weight_dropout, 0.0, 1.0)
        dtype = _dtype_arg("Linear", dtype)
        if isinstance(seed, np.random.Generator):
            rng = seed
        else:
            rng = np.random.default_rng(None if seed is None else _int_arg("Linear", "seed", seed, minimum=0))
        fan_in, fan_out = self.in_features, self.out_features
        shape = (fan_out, fan_in)
        if init == "default":
            bound = 1.0 / math.sqrt(fan_in) if fan_in else 0.0
            w = rng.uniform(-bound, bound, shape)
            b = rng.uniform(-bound, bound, fan_out)
        else:
            if init == "he":
                w = rng.normal(0.0, math.sqrt(2.0 / max(fan_in, 1)), shape)
            elif init == "he_uniform":
                bound = math.sqrt(6.0 / max(fan_in, 1))
                w = rng.uniform(-bound, bound, shape)
            elif init == "glorot":
                bound = math.sqrt(6.0 / max(fan_in + fan_out, 1))
                w = rng.uniform(-bound, bound, shape)
            else:
                w = rng.normal(0.0, math.sqrt(2.0 / max(fan_in + fan_out, 1)), shape)
            b = np.zeros(fan_out)
        self._add_parameter("weight", w.astype(dtype))
        if has_bias:
            self._add_parameter("bias", b.astype(dtype))
        else:
            self.bias = None
        self.dropconnect_seed = int(rng.integers(0, 2**63))
        self.dropconnect_offset = 0

    def _forward(self, x):
        x = self._input(x)
        if x.ndim == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"Linear: x must have in_features={self.in_features} as its last dimension, "
                             f"got shape {x.shape}")
        w = self.weight.data
        wmask = None
        if self.training and self.weight_dropout > 0.0:
            w, wmask = dropout(w, self.weight_dropout, seed=self.dropconnect_seed,
                               offset=self.dropconnect_offset)
            self.dropconnect_offset = wmask.next_offset
        y = np.matmul(x, w.T)
        if self.bias is not None:
            y += self.bias.data
        if self.training:
            self._saved = (x, w, wmask)
        return y

    def _backward(self, g):
        x, w, wmask = self._saved
        g2 = g.reshape(-1, self.out_features)
        gw = g2.T @ x.reshape(-1, self.in_features)
        if wmask is not None:
            gw = dropout_backward(gw, wmask, out=gw)
        self.weight.grad += gw
        if self.bias is not None:
            self.bias.grad += g2.sum(axis=0)
        return np.matmul(g, w)

    def extra_repr(self):
        s = f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
        if self.weight_dropout:
            s += f", weight_dropout={self.weight_dropout}"
        return s


# ---------------------------------------------------------------------------- normalization

def _new_buffer(value, shape, dtype):
    return np.full(shape, value, dtype=dtype)


class _BatchNorm(Layer):
    """Shared by BatchNorm1d/2d/3d (``torch.nn.BatchNormNd`` semantics).

    Batch statistics normalize in training mode, and in eval mode when
    ``track_running_stats=False``; otherwise the running statistics do.  A training
    forward with tracked statistics increments ``num_batches_tracked`` and updates
    ``running_mean`` / ``running_var`` (unbiased batch variance) with factor momentum,
    or 1 / num_batches_tracked when momentum is None (cumulative average).
    """
    _ndims = ()
    _expect = ""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True,
                 *, dtype=np.float32):
        super().__init__()
        name = type(self).__name__
        self.num_features = _int_arg(name, "num_features", num_features, minimum=1)
        self.eps = _real_arg(name, "eps", eps, 0.0)
        self.momentum = _real_arg(name, "momentum", momentum, 0.0, 1.0, allow_none=True)
        self.affine = _bool_arg(name, "affine", affine)
        self.track_running_stats = _bool_arg(name, "track_running_stats", track_running_stats)
        dtype = _dtype_arg(name, dtype)
        c = self.num_features
        if self.affine:
            self._add_parameter("weight", np.ones(c, dtype))
            self._add_parameter("bias", np.zeros(c, dtype))
        else:
            self.weight = self.bias = None
        if self.track_running_stats:
            self._add_buffer("running_mean", np.zeros(c, dtype))
            self._add_buffer("running_var", np.ones(c, dtype))
            self._add_buffer("num_batches_tracked", np.array(0, dtype=np.int64))
        else:
            self.running_mean = self.running_var = self.num_batches_tracked = None

    def reset_running_stats(self):
        if self.track_running_stats:
            self.running_mean[...] = 0
            self.running_var[...] = 1
            self.num_batches_tracked[...] = 0

    def _check_shape(self, x):
        name = type(self).__name__
        if x.ndim not in self._ndims:
            raise ValueError(f"{name}: expected x of {self._expect}, got shape {x.shape}")
        if x.shape[1] != self.num_features:
            raise ValueError(f"{name}: x must have num_features={self.num_features} channels "
                             f"(axis 1), got shape {x.shape}")

    def _forward(self, x):
        x = self._input(x, allow_half=True)
        self._check_shape(x)
        use_batch_stats = self.training or self.running_mean is None
        weight = None if self.weight is None else self.weight.data
        bias = None if self.bias is None else self.bias.data
        kwargs = {"momentum": self.momentum}
        update = self.training and self.track_running_stats
        if update:
            # Incremented only after the kernel accepted the batch (e.g. not one value per channel).
            nbt = int(self.num_batches_tracked) + 1
            kwargs["num_batches_tracked"] = nbt
        if use_batch_stats:
            rm = self.running_mean if update else None
            rv = self.running_var if update else None
        else:
            rm, rv = self.running_mean, self.running_var
        y, mean, rstd = _norm.batch_norm(x, weight, bias, rm, rv, training=use_batch_stats,
                                         eps=self.eps, **kwargs)
        if update:
            self.num_batches_tracked[...] = nbt
        if self.training:
            self._saved = (x, mean, rstd, use_batch_stats)
        return y

    def _backward(self, g):
        x, mean, rstd, use_batch_stats = self._saved
        weight = None if self.weight is None else self.weight.data
        bias = None if self.bias is None else self.bias.data
        gx, gw, gb = _norm.batch_norm_backward(g, x, weight, mean, rstd, training=use_batch_stats,
                                               bias=bias)
        if gw is not None:
            self.weight.grad += gw
            self.bias.grad += gb
        return gx

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps:g}, momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}")


class BatchNorm1d(_BatchNorm):
    """Batch norm over (N, C) or (N, C, L) input, per channel C."""
    _ndims = (2, 3)
    _expect = "2 or 3 dimensions (N, C) or (N, C, L)"


class BatchNorm2d(_BatchNorm):
    """Batch norm over (N, C, H, W) input, per channel C."""
    _ndims = (4,)
    _expect = "4 dimensions (N, C, H, W)"


class BatchNorm3d(_BatchNorm):
    """Batch norm over (N, C, D, H, W) input, per channel C."""
    _ndims = (5,)
    _expect = "5 dimensions (N, C, D, H, W)"


class LayerNorm(Layer):
    """Normalizes over the trailing ``normalized_shape`` axes (``torch.nn.LayerNorm``);
    weight (ones) and bias (zeros) of shape normalized_shape when elementwise_affine."""

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True, *,
                 dtype=np.float32):
        super().__init__()
        self.normalized_shape = _shape_arg("LayerNorm", "normalized_shape", normalized_shape)
        self.eps = _real_arg("LayerNorm", "eps", eps, 0.0)
        self.elementwise_affine = _bool_arg("LayerNorm", "elementwise_affine", elementwise_affine)
        has_bias = _bool_arg("LayerNorm", "bias", bias)
        dtype = _dtype_arg("LayerNorm", dtype)
        self.weight = self.bias = None
        if self.elementwise_affine:
            self._add_parameter("weight", np.ones(self.normalized_shape, dtype))
            if has_bias:
                self._add_parameter("bias", np.zeros(self.normalized_shape, dtype))

    def _forward(self, x):
        x = self._input(x, allow_half=True)
        ns = self.normalized_shape
        if x.ndim < len(ns) or x.shape[x.ndim - len(ns):] != ns:
            raise ValueError(f"LayerNorm: x must end with normalized_shape {ns}, got shape {x.shape}")
        weight = None if self.weight is None else self.weight.data
        bias = None if self.bias is None else self.bias.data
        y, mean, rstd = _norm.layer_norm(x, ns, weight, bias, eps=self.eps)
        if self.training:
            self._saved = (x, mean, rstd)
        return y

    def _backward(self, g):
        x, mean, rstd = self._saved
        weight = None if self.weight is None else self.weight.data
        bias = None if self.bias is None else self.bias.data
        gx, gw, gb = _norm.layer_norm_backward(g, x, self.normalized_shape, weight, mean, rstd, bias=bias)
        if gw is not None:
            self.weight.grad += gw
        if gb is not None:
            self.bias.grad += gb
        return gx

    def extra_repr(self):
        return (f"{self.normalized_shape}, eps={self.eps:g}, elementwise_affine={self.elementwise_affine}"
                + ("" if self.bias is not None or not self.elementwise_affine else ", bias=False"))


class RMSNorm(Layer):
    """``x / sqrt(mean(x**2) + eps) * weight`` over the trailing ``normalized_shape`` axes
    (``torch.nn.RMSNorm``); eps=None: the machine epsilon of the compute dtype."""

    def __init__(self, normalized_shape, eps=None, elementwise_affine=True, *, dtype=np.float32):
        super().__init__()
        self.normalized_shape = _shape_arg("RMSNorm", "normalized_shape", normalized_shape)
        self.eps = _real_arg("RMSNorm", "eps", eps, 0.0, allow_none=True)
        self.elementwise_affine = _bool_arg("RMSNorm", "elementwise_affine", elementwise_affine)
        dtype = _dtype_arg("RMSNorm", dtype)
        self.weight = None
        if self.elementwise_affine:
            self._add_parameter("weight", np.ones(self.normalized_shape, dtype))

    def _forward(self, x):
        x = self._input(x, allow_half=True)
        ns = self.normalized_shape
        if x.ndim < len(ns) or x.shape[x.ndim - len(ns):] != ns:
            raise ValueError(f"RMSNorm: x must end with normalized_shape {ns}, got shape {x.shape}")
        weight = None if self.weight is None else self.weight.data
        y, rstd = _norm.rms_norm(x, ns, weight, eps=self.eps)
        if self.training:
            self._saved = (x, rstd)
        return y

    def _backward(self, g):
        x, rstd = self._saved
        weight = None if self.weight is None else self.weight.data
        gx, gw = _norm.rms_norm_backward(g, x, self.normalized_shape, weight, rstd)
        if gw is not None:
            self.weight.grad += gw
        return gx

    def extra_repr(self):
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"


class GroupNorm(Layer):
    """Group norm (``torch.nn.GroupNorm``): x (N, C, *spatial), C = num_channels split into
    num_groups groups of consecutive channels; per-channel weight/bias when affine."""

    def __init__(self, num_groups, num_channels, eps=1e-5, affine=True, *, dtype=np.float32):
        super().__init__()
        self.num_groups = _int_arg("GroupNorm", "num_groups", num_groups, minimum=1)
        self.num_channels = _int_arg("GroupNorm", "num_channels", num_channels, minimum=1)
        if self.num_channels % self.num_groups:
            raise ValueError(f"GroupNorm: num_channels ({self.num_channels}) must be divisible by "
                             f"num_groups ({self.num_groups})")
        self.eps = _real_arg("GroupNorm", "eps", eps, 0.0)
        self.affine = _bool_arg("GroupNorm", "affine", affine)
        dtype = _dtype_arg("GroupNorm", dtype)
        self.weight = self.bias = None
        if self.affine:
            self._add_parameter("weight", np.ones(self.num_channels, dtype))
            self._add_parameter("bias", np.zeros(self.num_channels, dtype))

    def _forward(self, x):
        x = self._input(x, allow_half=True)
        if x.ndim < 2 or x.shape[1] != self.num_channels:
            raise ValueError(f"GroupNorm: x must have shape (N, num_channels={self.num_channels}, ...), "
                             f"got {x.shape}")
        weight = None if self.weight is None else self.weight.data
        bias = None if self.bias is None else self.bias.data
        y, mean, rstd = _norm.group_norm(x, self.num_groups, weight, bias, eps=self.eps)
        if self.training:
            self._saved = (x, mean, rstd)
        return y

    def _backward(self, g):
        x, mean, rstd = self._saved
        weight = None if self.weight is None else self.weight.data
        bias = None if self.bias is None else self.bias.data
        gx, gw, gb = _norm.group_norm_backward(g, x, self.num_groups, weight, mean, rstd, bias=bias)
        if gw is not None:
            self.weight.grad += gw
            self.bias.grad += gb
        return gx

    def extra_repr(self):
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps:g}, affine={self.affine}"


class _InstanceNorm(_BatchNorm):
    """Shared by InstanceNorm1d/2d/3d (``torch.nn.InstanceNormNd``): each (sample, channel)
    normalized over the spatial axes.  Defaults affine=False, track_running_stats=False.
    Instance statistics normalize in training mode and whenever running statistics are
    not tracked; a training forward with tracked statistics updates them with the batch
    average (momentum None counts as 0, as PyTorch; num_batches_tracked is kept but not
    incremented, as PyTorch).  Unbatched input (C, *spatial) is accepted.
    """
    _spatial = 1

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=False, track_running_stats=False,
                 *, dtype=np.float32):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, dtype=dtype)

    def _forward(self, x):
        name = type(self).__name__
        x = self._input(x, allow_half=True)
        batched = x.ndim == self._spatial + 2
        if not batched and x.ndim != self._spatial + 1:
            raise ValueError(f"{name}: expected x of {self._spatial + 2} dimensions (N, C, *spatial) or "
                             f"{self._spatial + 1} (C, *spatial), got shape {x.shape}")
        xb = x if batched else x[None]
        if xb.shape[1] != self.num_features:
            raise ValueError(f"{name}: x must have num_features={self.num_features} channels, "
                             f"got shape {x.shape}")
        use_input_stats = self.training or not self.track_running_stats
        weight = None if self.weight is None else self.weight.data
        bias = None if self.bias is None else self.bias.data
        update = self.training and self.track_running_stats
        rm = self.running_mean if (update or not use_input_stats) else None
        rv = self.running_var if (update or not use_input_stats) else None
        momentum = 0.0 if self.momentum is None else self.momentum
        y, mean, rstd = _norm.instance_norm(xb, weight, bias, rm, rv, use_input_stats=use_input_stats,
                                            momentum=momentum, eps=self.eps)
        if self.training:
            self._saved = (xb, mean, rstd, use_input_stats)
        return y if batched else y[0]

    def _backward(self, g):
        xb, mean, rstd, use_input_stats = self._saved
        batched = g.ndim == xb.ndim
        weight = None if self.weight is None else self.weight.data
        bias = None if self.bias is None else self.bias.data
        gx, gw, gb = _norm.instance_norm_backward(g if batched else g[None], xb, weight, mean, rstd,
                                                  use_input_stats=use_input_stats, bias=bias)
        if gw is not None:
            self.weight.grad += gw
            self.bias.grad += gb
        return gx if batched else gx[0]


class InstanceNorm1d(_InstanceNorm):
    """Instance norm over (N, C, L) or (C, L) input."""
    _spatial = 1


class InstanceNorm2d(_InstanceNorm):
    """Instance norm over (N, C, H, W) or (C, H, W) input."""
    _spatial = 2


class InstanceNorm3d(_InstanceNorm):
    """Instance norm over (N, C, D, H, W) or (C, D, H, W) input."""
    _spatial = 3
