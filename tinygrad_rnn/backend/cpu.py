"""CPU backend: NumPy arrays, BLAS matrix products and Numba kernels.

It provides the contract in ``api.py``; NumPy itself supplies most of it. Every
kernel is a private ``_<op>_fwd`` / ``_<op>_bwd`` function working on flat
contiguous arrays; the public wrapper below it validates and dispatches. Which
path runs was chosen by measurement (``benchmarks/bench_kernels.py``):

* float32 tanh/sigmoid use a rational approximation that vectorises (libm's
  scalar ``tanh`` inside njit is ~40x slower than NumPy: 479 us against 12 us on a
  float32 (64, 512) array); its
  error is below 3e-7, i.e. float32 rounding.
* float64 tanh/sigmoid go to NumPy, which is exact and already vectorised
  (SciPy's expit was 20x slower): float64 is the gradient-checking dtype.
* ``FUSED_VJPS``: the backward kernels of tanh, sigmoid and leaky_relu compute
  the op table's formula in one pass instead of NumPy's three. Measured per call
  against the formula in NumPy: float32 (32, 2048) tanh 16.9 vs 22.2 us, sigmoid
  16.7 vs 23.3 us, leaky_relu 11.1 vs 80 us; float64 about 2x for tanh and
  sigmoid. At (32, 32) the kernel call costs about 0.6 us more than NumPy.
"""
import math

import numpy as np
from numba import types
from numba.extending import overload

from . import _malloc  # noqa: F401  (tunes glibc once, at import)
from . import threads
from ._jit import kernel

name = "cpu"
_F32 = np.float32


# ---- scalar building blocks, specialised per dtype at compile time --------
def tanh_scalar(x):
    """tanh for one number; inside kernels it is the vectorisable version."""
    return math.tanh(x)


def sigmoid_scalar(x):
    return 1.0 / (1.0 + math.exp(-x))


# The generated kernels call these by dtype (``compiler/render_cpu.py``): a jitted
# function is loaded from Numba's cache, where an ``overload``'s implementation is compiled
# again in every process that compiles a new cell's kernels (0.2 - 0.3 s each for tanh and
# the sigmoid, 0.1 s for max/min, MGU, AMD EPYC). Compiled with the kernels' own flags, the
# same code results: a callee inherits them under ``overload`` too.
@kernel
def tanh_f32(x):
    # Odd 13/6 minimax rational approximation, clamped where tanh(x) rounds to
    # +-1 in float32. Division instead of exp is what lets the loop vectorise.
    # min(max(x, -c), c) written out as Python's max and min work (a NaN passes through)
    v = _F32(-7.90531110763549805) if _F32(-7.90531110763549805) > x else x
    v = _F32(7.90531110763549805) if _F32(7.90531110763549805) < v else v
    v2 = v * v
    p = v2 * _F32(-2.76076847742355e-16) + _F32(2.00018790482477e-13)
    p = v2 * p + _F32(-8.60467152213735e-11)
    p = v2 * p + _F32(5.12229709037114e-08)
    p = v2 * p + _F32(1.48572235717979e-05)
    p = v2 * p + _F32(6.37261928875436e-04)
    p = v2 * p + _F32(4.89352455891786e-03)
    q = v2 * _F32(1.19825839466702e-06) + _F32(1.18534705686654e-04)
    q = v2 * q + _F32(2.26843463243900e-03)
    q = v2 * q + _F32(4.89352518554385e-03)
    r = v * p / q
    return x if abs(x) < _F32(4e-4) else r


@kernel
def sigmoid_f32(x):
    return _F32(0.5) + _F32(0.5) * tanh_f32(_F32(0.5) * x)


@kernel
def sigmoid_f64(x):
    return 1.0 / (1.0 + math.exp(-x))


@overload(tanh_scalar)
def _tanh_scalar_impl(x):
    if x == types.float32:
        return lambda x: tanh_f32(x)
    return lambda x: math.tanh(x)


@overload(sigmoid_scalar)
def _sigmoid_scalar_impl(x):
    if x == types.float32:
        return lambda x: sigmoid_f32(x)
    return lambda x: sigmoid_f64(x)


# ---- kernels ---------------------------------------------------------------
@kernel
def _tanh_fwd(x, out):
    for i in range(x.size):
        out[i] = tanh_scalar(x[i])


@kernel
def _tanh_bwd(g, y, out):
    for i in range(g.size):
        out[i] = g[i] * (1 - y[i] * y[i])


@kernel
def _sigmoid_fwd(x, out):
    for i in range(x.size):
        out[i] = sigmoid_scalar(x[i])


@kernel
def _sigmoid_bwd(g, y, out):
    for i in range(g.size):
        out[i] = g[i] * y[i] * (1 - y[i])


@kernel
def _leaky_relu_fwd(x, slope, out):
    for i in range(x.size):
        out[i] = x[i] if x[i] > 0 else x[i] * slope


@kernel
def _leaky_relu_bwd(g, x, slope, out):
    for i in range(g.size):
        out[i] = g[i] if x[i] > 0 else g[i] * slope


@kernel
def _embedding_bwd(indices, g, out):
    # Scatter-add of rows: a token used twice sums both gradients.
    for n in range(indices.size):
        row = indices[n]
        for j in range(g.shape[1]):
            out[row, j] += g[n, j]


# ---- wrappers --------------------------------------------------------------
# tanh_bwd, sigmoid_bwd and leaky_relu_bwd are not in the backend contract: the op
# table owns the derivatives, and these are its fused fast path (FUSED_VJPS, below).
def _flat(*arrays):
    return [a.ravel() for a in arrays]  # contiguous 1-D; a view whenever possible


def _elementwise(kernel_fn, like, *arrays, extra=()):
    out = np.empty(like.shape, like.dtype)
    kernel_fn(*_flat(*arrays), *extra, out.reshape(-1))
    return out


def _same_shape(op, *arrays):
    shape = arrays[0].shape
    if any(a.shape != shape for a in arrays):
        raise ValueError(f"{op}: shapes differ: {[a.shape for a in arrays]}")


def tanh(x):
    if x.dtype == np.float32:
        return _elementwise(_tanh_fwd, x, x)
    return np.tanh(x)


def tanh_bwd(g, y):
    _same_shape("tanh_bwd", g, y)
    return _elementwise(_tanh_bwd, y, g.astype(y.dtype, copy=False), y)


def sigmoid(x):
    if x.dtype == np.float32:
        return _elementwise(_sigmoid_fwd, x, x)
    return 0.5 + 0.5 * np.tanh(0.5 * x)  # exact, and unlike 1/(1+exp(-x)) never overflows


def sigmoid_bwd(g, y):
    _same_shape("sigmoid_bwd", g, y)
    return _elementwise(_sigmoid_bwd, y, g.astype(y.dtype, copy=False), y)


def leaky_relu(x, slope):
    return _elementwise(_leaky_relu_fwd, x, x, extra=(x.dtype.type(slope),))


def leaky_relu_bwd(g, x, slope):
    _same_shape("leaky_relu_bwd", g, x)
    g = g.astype(x.dtype, copy=False)
    out = np.empty(x.shape, x.dtype)
    _leaky_relu_bwd(*_flat(g, x), x.dtype.type(slope), out.reshape(-1))
    return out


def embedding_bwd(weight_shape, indices, g):
    out = np.zeros(weight_shape, g.dtype)
    _embedding_bwd(indices.ravel().astype(np.int64, copy=False),
                   np.ascontiguousarray(g).reshape(indices.size, weight_shape[1]), out)  # not -1: ambiguous at dim 0
    return out


def scatter_add(shape, index, g):
    """Gradient of ``x[index]``: zeros with ``g`` added at ``index`` (repeats sum)."""
    out = np.zeros(shape, g.dtype)
    if _is_basic(index):
        out[index] = g  # slices and ints never repeat an element
    else:
        np.add.at(out, index, g)
    return out


def _is_basic(index):
    parts = index if isinstance(index, tuple) else (index,)
    return all(isinstance(i, (int, np.integer, slice)) or i is None or i is Ellipsis for i in parts)


def log_softmax(x, axis):
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def cross_entropy(logits, target):
    """Mean of -log softmax(logits)[n, target[n]] over rows."""
    logp = log_softmax(logits, -1)
    return np.asarray(-logp[np.arange(len(target)), target].mean())


def cross_entropy_bwd(logits, target, g):
    p = np.exp(log_softmax(logits, -1))
    p[np.arange(len(target)), target] -= 1
    return p * (g / len(target))


# The op table's VJPs for these ops, each in one kernel pass (same signature as the table's;
# tests/test_backend_api.py checks each against the table's formula).
FUSED_VJPS = {
    "tanh": lambda k, g, y, a: (tanh_bwd(g, y),),
    "sigmoid": lambda k, g, y, a: (sigmoid_bwd(g, y),),
    "leaky_relu": lambda k, g, y, a, slope: (leaky_relu_bwd(g, a, slope),),
}


def sign(x):
    return np.sign(x)


def sqrt(x):
    return np.sqrt(x)


def sum_to_shape(g, shape):
    """Reduce a broadcast gradient back to ``shape`` (NumPy broadcasting rules)."""
    if g.shape == shape:
        return g
    lead = g.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(i + lead for i, n in enumerate(shape)
                                      if n == 1 and g.shape[i + lead] != 1)
    return g.sum(axis=axes, keepdims=True).reshape(shape) if axes else g.reshape(shape)


def asarray(data, dtype=None):
    return np.asarray(data, dtype=dtype)


def to_numpy(x):
    return x


def copy_as(g, dtype):
    return np.array(g, dtype=dtype, copy=True)


# OpenBLAS (NumPy's) wakes its worker threads for a product of more than 2^18 multiply-adds
# and they then busy-wait for about 0.1 s: every core is busy for 50 ms after a (32, 32) @
# (32, 2^9) product, none after (32, 32) @ (32, 2^8) (AMD EPYC). Running where the compiled
# layers' block threads run next, that took their cores: a character LSTM's training step
# (hidden 128, 76 symbols, T=50, B=32, a Linear head on it) took 28.5-30.8 ms, and 20.9-22.9 ms
# with the workers' wait cut short (OPENBLAS_THREAD_TIMEOUT=4); with such products held at one
# thread, 18.4-20.2 ms. The step path, whose per-step products are of that size, pays for it:
# an LSTM's at hidden 128 took 122-141 ms (medians 178-182) against 109-144 (155-157).
BLAS_THREADED_FLOPS = 1 << 18


def matmul(a, b):
    """NumPy's matmul. Rows times one matrix (``a`` (..., K), ``b`` (K, N)) is one 2-D product
    of all of a's rows (NumPy makes one BLAS call per leading index); large enough to wake
    BLAS's threads, it runs with BLAS held at one thread, its rows spread over the block threads
    when large (``threads.matmul``)."""
    if a.ndim >= 2 and b.ndim == 2 and a.size * b.shape[1] > BLAS_THREADED_FLOPS:
        with threads.one_blas_thread():
            return threads.matmul(a.reshape(-1, a.shape[-1]), b).reshape(a.shape[:-1] + b.shape[1:])
    return np.matmul(a, b)


# NumPy already is the array API the ops are written against.
from numpy import (broadcast_to, clip, concatenate, exp, expand_dims, log,  # noqa: E402,F401
                   ones_like, stack, swapaxes, where)
