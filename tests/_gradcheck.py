"""Finite differences shared by the gradient tests."""
import numpy as np


def numeric_gradient(f, a, h=1e-6):
    """Central differences of the scalar f() with respect to every element of a.

    a is perturbed in place (and restored), so f must read a itself."""
    grad = np.zeros(a.shape)
    flat, gflat = a.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + h
        up = f()
        flat[i] = old - h
        down = f()
        flat[i] = old
        gflat[i] = (up - down) / (2 * h)
    return grad
