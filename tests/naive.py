"""Slow, obviously-correct NumPy twins of the kernels written by hand, for the tests to
compare against (tests/test_kernels.py):

- the CPU backend's kernels (backend/cpu.py): tanh, sigmoid and leaky_relu forward and
  backward, the embedding backward's scatter-add;
- the building blocks that the cell compiler's generated kernels call: the scalar
  ``tanh_scalar`` and ``sigmoid_scalar`` (backend/cpu.py; float32 inside Numba is a
  rational approximation) and the in-kernel product ``mm_panels`` (backend/simd.py).

The generated cell kernels themselves have no twin here: their reference is the cell's
own ``step`` run op by op, which they are generated from (tests/test_compiler.py). The
CUDA kernels are compared with the CPU backend (tests/test_cuda.py).
"""
import numpy as np


def tanh(x):
    return np.tanh(x.astype(np.float64)).astype(x.dtype)


def tanh_bwd(g, y):
    return g * (1 - y * y)


def sigmoid(x):
    return (1 / (1 + np.exp(-x.astype(np.float64)))).astype(x.dtype)


def sigmoid_bwd(g, y):
    return g * y * (1 - y)


def leaky_relu(x, slope):
    return np.where(x > 0, x, x * slope)


def leaky_relu_bwd(g, x, slope):
    return np.where(x > 0, g, g * slope)


def embedding_bwd(shape, indices, g):
    out = np.zeros(shape, g.dtype)
    for n, row in enumerate(indices.reshape(-1)):
        out[row] += g.reshape(-1, shape[1])[n]
    return out


def mm(a, w):
    """``a @ w``, one float64 dot product per output element."""
    out = np.zeros((a.shape[0], w.shape[1]))
    for b in range(a.shape[0]):
        for n in range(w.shape[1]):
            out[b, n] = np.dot(a[b].astype(np.float64), w[:, n].astype(np.float64))
    return out.astype(a.dtype)
