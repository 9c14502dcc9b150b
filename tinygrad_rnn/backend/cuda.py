"""CUDA backend: numba.cuda kernels behind a small NumPy-like array class.

It provides the contract in ``api.py``. ``CudaArray`` is a contiguous device
buffer with a shape. It offers the part of the NumPy surface that ``ops.py`` is
written against (``api.ARRAY``: operators, ``sum``, ``reshape``, ``transpose``,
indexing, ...), so every primitive's forward and VJP run unchanged on the GPU. Every kernel is a private ``_<name>_kernel``; the
functions below them validate, pick launch sizes and launch. Three building
blocks carry most ops:

* flat elementwise kernels (same-shape inputs: the common case, fully coalesced);
* one strided-gather kernel (any view: broadcast, transpose, slice) and its
  scatter twin, with shapes and strides passed as tuples so no launch needs a
  host-to-device copy of metadata;
* row reductions over the last axis (other axes are moved there first).

Matrix products use a tiled shared-memory kernel, batched over grid z. A library
GEMM (cuBLAS) was not measured against it: no GPU has been available. The fused
cells launch one recurrent GEMM and one pointwise kernel per step and add each
step's squared gradient norms into a device array with atomics, so per-step
norms cost no extra pass.

Data goes back to the host only through ``to_numpy`` (asked for by the caller)
or ``_to_host_for(reason)``: the hidden round trips, each named and counted in
``HOST_ROUND_TRIPS`` (tests/test_backend_api.py checks that training a small
model makes none). Python scalars in arithmetic (``1 - y``) are uploaded as 0-d
arrays, one small host-to-device copy each, never a read back.

Runs on NVIDIA GPUs, and in Numba's simulator (``NUMBA_ENABLE_CUDASIM=1``) for CI.
"""
import collections
import math
import os

import numpy as np
from numba import cuda

name = "cuda"
SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
THREADS = 64 if SIMULATOR else 256
TILE = 4 if SIMULATOR else 16  # the simulator runs every thread in Python: keep blocks small
KERNELS = {}  # kernel name -> (kernel, a representative float32 signature) for the PTX test
HOST_ROUND_TRIPS = collections.Counter()  # reason -> how many times device data went to the host and back


def _kernel(signature):
    def wrap(fn):
        k = cuda.jit(fn)
        KERNELS[fn.__name__] = (fn, signature)
        return k
    return wrap


def _blocks(n):
    return max(1, (n + THREADS - 1) // THREADS)


# ---- elementwise kernels ----------------------------------------------------------------
# One kernel per operation: a kernel cannot take a function argument, and op codes
# branching inside one kernel would cost every element a switch.
@_kernel("void(float32[::1], float32[::1], float32[::1])")
def _add_kernel(a, b, out):
    i = cuda.grid(1)
    if i < out.size:
        out[i] = a[i] + b[i]


@_kernel("void(float32[::1], float32[::1], float32[::1])")
def _sub_kernel(a, b, out):
    i = cuda.grid(1)
    if i < out.size:
        out[i] = a[i] - b[i]


@_kernel("void(float32[::1], float32[::1], float32[::1])")
def _mul_kernel(a, b, out):
    i = cuda.grid(1)
    if i < out.size:
        out[i] = a[i] * b[i]


@_kernel("void(float32[::1], float32[::1], float32[::1])")
def _div_kernel(a, b, out):
    i = cuda.grid(1)
    if i < out.size:
        out[i] = a[i] / b[i]


@_kernel("void(float32[::1], float32[::1], float32[::1])")
def _pow_kernel(a, b, out):
    i = cuda.grid(1)
    if i < out.size:
        out[i] = a[i] ** b[i]


@_kernel("void(float32[::1], float32[::1], boolean[::1])")
def _gt_kernel(a, b, out):
    i = cuda.grid(1)
    if i < out.size:
        out[i] = a[i] > b[i]


@_kernel("void(float32[::1], float32[::1], boolean[::1])")
def _ge_kernel(a, b, out):
    i = cuda.grid(1)
    if i < out.size:
        out[i] = a[i] >= b[i]


@_kernel("void(float32[::1], float32[::1], boolean[::1])")
def _eq_kernel(a, b, out):
    i = cuda.grid(1)
    if i < out.size:
        out[i] = a[i] == b[i]


@_kernel("void(boolean[::1], boolean[::1], boolean[::1])")
def _and_kernel(a, b, out):
    i = cuda.grid(1)
    if i < out.size:
        out[i] = a[i] and b[i]


@_kernel("void(boolean[::1], float32[::1], float32[::1], float32[::1])")
def _where_kernel(c, a, b, out):
    i = cuda.grid(1)
    if i < out.size:
        out[i] = a[i] if c[i] else b[i]


@_kernel("void(float32[::1], float32[::1])")
def _neg_kernel(a, out):
    i = cuda.grid(1)
    if i < out.size:
        out[i] = -a[i]


@_kernel("void(float32[::1], float32[::1])")
def _exp_kernel(a, out):
    i = cuda.grid(1)
    if i < out.size:
        out[i] = math.exp(a[i])


@_kernel("void(float32[::1], float32[::1])")
def _log_kernel(a, out):
    i = cuda.grid(1)
    if i < out.size:
        out[i] = math.log(a[i])


@_kernel("void(float32[::1], float32[::1])")
def _sqrt_kernel(a, out):
    i = cuda.grid(1)
    if i < out.size:
        out[i] = math.sqrt(a[i])


@_kernel("void(float32[::1], float32[::1])")
def _sign_kernel(a, out):
    i = cuda.grid(1)
    if i < out.size:
        out[i] = (a[i] > 0) - (a[i] < 0)


@_kernel("void(float32[::1], float32[::1])")
def _tanh_kernel(a, out):
    i = cuda.grid(1)
    if i < out.size:
        out[i] = math.tanh(a[i])


@_kernel("void(float32[::1], float32[::1])")
def _sigmoid_kernel(a, out):
    i = cuda.grid(1)
    if i < out.size:
        out[i] = 0.5 + 0.5 * math.tanh(0.5 * a[i])  # never overflows, unlike 1/(1+exp(-x))


@_kernel("void(float32[::1], float32[::1], float32[::1])")
def _tanh_bwd_kernel(g, y, out):
    i = cuda.grid(1)
    if i < out.size:
        out[i] = g[i] * (1 - y[i] * y[i])


@_kernel("void(float32[::1], float32[::1], float32[::1])")
def _sigmoid_bwd_kernel(g, y, out):
    i = cuda.grid(1)
    if i < out.size:
        out[i] = g[i] * y[i] * (1 - y[i])


@_kernel("void(float32[::1], float32, float32[::1])")
def _leaky_relu_kernel(a, slope, out):
    i = cuda.grid(1)
    if i < out.size:
        out[i] = a[i] if a[i] > 0 else a[i] * slope


@_kernel("void(float32[::1], float32[::1], float32, float32[::1])")
def _leaky_relu_bwd_kernel(g, a, slope, out):
    i = cuda.grid(1)
    if i < out.size:
        out[i] = g[i] if a[i] > 0 else g[i] * slope


@_kernel("void(float32[::1], float32, float32, float32[::1])")
def _clip_kernel(a, lo, hi, out):
    i = cuda.grid(1)
    if i < out.size:
        v = a[i]  # comparisons, not min/max: those need a live driver to build PTX
        v = lo if v < lo else v
        out[i] = hi if v > hi else v


@_kernel("void(float32[::1], float32)")
def _fill_kernel(out, value):
    i = cuda.grid(1)
    if i < out.size:
        out[i] = value


@_kernel("void(float32[::1], float64[::1])")
def _cast_kernel(a, out):
    i = cuda.grid(1)
    if i < out.size:
        out[i] = a[i]


# ---- strided copies, reductions, products -----------------------------------------
@_kernel("void(float32[::1], int64, UniTuple(int64, 2), UniTuple(int64, 2), float32[::1])")
def _gather_kernel(src, offset, strides, shape, out):
    # out (contiguous, shape) <- src viewed at offset with element strides (0 = broadcast).
    i = cuda.grid(1)
    if i < out.size:
        rest, pos = i, offset
        for d in range(len(shape) - 1, -1, -1):
            pos += (rest % shape[d]) * strides[d]
            rest //= shape[d]
        out[i] = src[pos]


@_kernel("void(float32[::1], float32[::1], int64, UniTuple(int64, 2), UniTuple(int64, 2))")
def _scatter_kernel(src, dst, offset, strides, shape):
    # dst viewed at offset with strides (no repeats) <- src (contiguous, shape). The index
    # arithmetic is _gather_kernel's, written out again: numba.cuda compiles a call to a
    # shared device function only with a GPU present, and the PTX test runs without one.
    i = cuda.grid(1)
    if i < src.size:
        rest, pos = i, offset
        for d in range(len(shape) - 1, -1, -1):
            pos += (rest % shape[d]) * strides[d]
            rest //= shape[d]
        dst[pos] = src[i]


@_kernel("void(float32[::1], int64, float32[::1])")
def _row_sum_kernel(src, row_len, out):
    r = cuda.grid(1)
    if r < out.size:
        acc = 0.0
        for j in range(row_len):
            acc += src[r * row_len + j]
        out[r] = acc


@_kernel("void(float32[::1], int64, float32[::1])")
def _row_max_kernel(src, row_len, out):
    r = cuda.grid(1)
    if r < out.size:
        acc = src[r * row_len]
        for j in range(1, row_len):
            v = src[r * row_len + j]
            acc = v if v > acc or v != v else acc  # a NaN anywhere makes the max NaN, as NumPy's
        out[r] = acc


@_kernel("void(float32[:, :, ::1], float32[:, :, ::1], float32[:, :, ::1])")
def _matmul_kernel(a, b, out):
    # out[z] = a[z] @ b[z], one TILE x TILE output tile per block, through shared memory.
    sa = cuda.shared.array((TILE, TILE), dtype=_SHARED_DTYPE)
    sb = cuda.shared.array((TILE, TILE), dtype=_SHARED_DTYPE)
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    col = cuda.blockIdx.x * TILE + tx
    row = cuda.blockIdx.y * TILE + ty
    z = cuda.blockIdx.z
    n, k, m = a.shape[1], a.shape[2], b.shape[2]
    acc = 0.0
    for t0 in range(0, k, TILE):
        sa[ty, tx] = a[z, row, t0 + tx] if row < n and t0 + tx < k else 0
        sb[ty, tx] = b[z, t0 + ty, col] if t0 + ty < k and col < m else 0
        cuda.syncthreads()
        for j in range(TILE):
            acc += sa[ty, j] * sb[j, tx]
        cuda.syncthreads()
    if row < n and col < m:
        out[z, row, col] = acc


_SHARED_DTYPE = np.float64  # accumulate in float64 tiles: exact enough for float64 models


@_kernel("void(int64[::1], float32[:, ::1], float32[:, ::1])")
def _rows_add_kernel(indices, g, out):
    # Scatter-add of rows (embedding and row indexing VJP): repeats sum, via atomics.
    i = cuda.grid(1)
    cols = g.shape[1]
    if i < g.shape[0] * cols:
        r, j = i // cols, i % cols
        cuda.atomic.add(out, (indices[r], j), g[r, j])


@_kernel("void(int64[::1], float32[:, ::1], float32[:, ::1])")
def _rows_take_kernel(indices, src, out):
    i = cuda.grid(1)
    cols = src.shape[1]
    if i < out.shape[0] * cols:
        r, j = i // cols, i % cols
        out[r, j] = src[indices[r], j]


@_kernel("void(float32[:, ::1], int64[::1], float32[::1])")
def _pick_kernel(logp, target, out):
    i = cuda.grid(1)
    if i < out.size:
        out[i] = logp[i, target[i]]


@_kernel("void(float32[:, ::1], int64[::1], float32[::1], float32[:, ::1])")
def _softmax_minus_onehot_kernel(logp, target, g, out):
    # g: the mean loss's gradient, read here on the device rather than copied to the host.
    i = cuda.grid(1)
    n, c = logp.shape
    if i < n * c:
        r, j = i // c, i % c
        out[r, j] = (math.exp(logp[r, j]) - (1.0 if target[r] == j else 0.0)) * (g[0] / n)


# ---- the array class ---------------------------------------------------------------------
class CudaArray:
    """A contiguous device buffer plus a shape; the NumPy surface ``ops.py`` needs."""

    __slots__ = ("buf", "shape")
    __array_priority__ = 2000  # numpy scalar (op) CudaArray defers to us

    def __init__(self, buf, shape):
        self.buf = buf          # 1-D contiguous numba device array
        self.shape = tuple(int(s) for s in shape)

    backend = property(lambda self: _this_module())
    dtype = property(lambda self: self.buf.dtype)
    ndim = property(lambda self: len(self.shape))
    size = property(lambda self: int(np.prod(self.shape)))
    T = property(lambda self: self.transpose())

    def __repr__(self):
        return f"CudaArray({self.shape}, {self.dtype})"

    def __len__(self):
        return self.shape[0]

    def __bool__(self):
        # As NumPy: without this, ``x in some_list`` (which compares with ==) was always true.
        if self.size != 1:
            raise ValueError("The truth value of an array with more than one element is ambiguous. "
                             "Use a.any() or a.all()" if self.size else "The truth value of an empty array is "
                             "ambiguous")
        return bool(to_numpy(self).reshape(()))

    def reshape(self, *shape):
        shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        shape = tuple(int(s) for s in shape)
        if -1 in shape:  # as NumPy: one -1, and not next to a 0 (reshape(-1, 0) of 0 elements is ambiguous)
            known = int(np.prod([s for s in shape if s != -1]))
            if shape.count(-1) > 1 or known == 0 or self.size % known:
                raise ValueError(f"cannot reshape array of size {self.size} into shape {shape}")
            shape = tuple(self.size // known if s == -1 else s for s in shape)
        if int(np.prod(shape)) != self.size:
            raise ValueError(f"cannot reshape array of size {self.size} into shape {shape}")
        return CudaArray(self.buf, shape)

    def ravel(self):
        return self.reshape(-1)

    def transpose(self, *axes):
        axes = axes[0] if len(axes) == 1 and isinstance(axes[0], (tuple, list, np.ndarray)) else axes
        axes = tuple(int(a) % max(self.ndim, 1) for a in axes) if len(axes) else tuple(reversed(range(self.ndim)))
        if axes == tuple(range(self.ndim)):
            return self
        strides = _contiguous_strides(self.shape)
        return _gather(self, 0, tuple(strides[a] for a in axes), tuple(self.shape[a] for a in axes))

    def astype(self, dtype, copy=True):
        dtype = np.dtype(dtype)
        if dtype == self.dtype:
            return self
        out = cuda.device_array(self.size, dtype)
        if self.size:
            _cast_kernel[_blocks(self.size), THREADS](self.buf, out)
        return CudaArray(out, self.shape)

    def copy(self):
        out = cuda.device_array(self.size, self.dtype)
        if self.size:  # an empty copy: nothing to move (the simulator refuses one, its strides differ)
            out.copy_to_device(self.buf)
        return CudaArray(out, self.shape)

    # reductions
    def sum(self, axis=None, keepdims=False):
        return _reduce(self, axis, keepdims, _row_sum_kernel)

    def max(self, axis=None, keepdims=False):
        return _reduce(self, axis, keepdims, _row_max_kernel)

    def mean(self, axis=None, keepdims=False):
        n = self.size if axis is None else int(np.prod([self.shape[a] for a in _axes(axis, self.ndim)]))
        return self.sum(axis, keepdims) / n

    # operators
    def __add__(self, o): return _binary(_add_kernel, self, o)
    def __radd__(self, o): return _binary(_add_kernel, o, self)
    def __sub__(self, o): return _binary(_sub_kernel, self, o)
    def __rsub__(self, o): return _binary(_sub_kernel, o, self)
    def __mul__(self, o): return _binary(_mul_kernel, self, o)
    def __rmul__(self, o): return _binary(_mul_kernel, o, self)
    def __truediv__(self, o): return _binary(_div_kernel, self, o)
    def __rtruediv__(self, o): return _binary(_div_kernel, o, self)
    def __pow__(self, o): return _binary(_pow_kernel, self, o)
    def __gt__(self, o): return _binary(_gt_kernel, self, o, np.bool_)
    def __ge__(self, o): return _binary(_ge_kernel, self, o, np.bool_)
    def __lt__(self, o): return _binary(_gt_kernel, o, self, np.bool_)
    def __le__(self, o): return _binary(_ge_kernel, o, self, np.bool_)
    def __eq__(self, o): return _binary(_eq_kernel, self, o, np.bool_)
    def __and__(self, o): return _binary(_and_kernel, self, o, np.bool_)
    def __neg__(self): return _unary(_neg_kernel, self)
    __hash__ = object.__hash__

    def __getitem__(self, index):
        index = _host_index(index)
        if _basic(index):
            offset, strides, shape = _view(self.shape, index)
            return _gather(self, offset, strides, shape)
        if isinstance(index, np.ndarray) and index.dtype.kind in "iu":
            return take_rows(self, _row_indices(index, self.shape[0] if self.ndim else 0))
        if isinstance(index, CudaArray):  # on the device: not checked (that would be a read back)
            return take_rows(self, index)
        return asarray(_to_host_for("getitem with mixed fancy indexing", self)[index])


def _this_module():
    import sys
    return sys.modules[__name__]


# ---- launch helpers -----------------------------------------------------------------------
def _contiguous_strides(shape):
    strides, acc = [], 1
    for s in reversed(shape):
        strides.append(acc)
        acc *= s
    return tuple(reversed(strides))


def _pad(t, n=2):
    # Kernels are compiled per tuple length; pad rank 0 and 1 up to 2 to share the rank-2 build.
    return (0,) * (n - len(t)) + tuple(t) if len(t) < n else tuple(t)


def _pad_shape(t, n=2):
    return (1,) * (n - len(t)) + tuple(t) if len(t) < n else tuple(t)


def _gather(a, offset, strides, shape):
    out = cuda.device_array(int(np.prod(shape)), a.dtype)
    if out.size:
        _gather_kernel[_blocks(out.size), THREADS](a.buf, int(offset), _pad(strides), _pad_shape(shape), out)
    return CudaArray(out, shape)


def _scatter_into(dst, src, offset, strides, shape):
    if src.size:
        _scatter_kernel[_blocks(src.size), THREADS](src.buf, dst.buf, int(offset), _pad(strides), _pad_shape(shape))


def broadcast_to(a, shape):
    a = _as_cuda(a)
    shape = tuple(shape)
    if a.shape == shape:
        return a
    lead = len(shape) - a.ndim
    src = _contiguous_strides(a.shape)
    strides = (0,) * lead + tuple(0 if n == 1 and shape[lead + i] != 1 else src[i] for i, n in enumerate(a.shape))
    return _gather(a, 0, strides, shape)


def _as_cuda(x, dtype=None):
    if isinstance(x, CudaArray):
        return x
    return asarray(np.asarray(x, dtype=dtype))


def _binary(kernel, a, b, out_dtype=None):
    like = a if isinstance(a, CudaArray) else b
    a = _as_cuda(a, like.dtype if not isinstance(a, CudaArray) else None)
    b = _as_cuda(b, like.dtype if not isinstance(b, CudaArray) else None)
    if a.dtype != b.dtype and a.dtype != np.bool_:
        dt = np.result_type(a.dtype, b.dtype)
        a, b = a.astype(dt), b.astype(dt)
    shape = np.broadcast_shapes(a.shape, b.shape)
    a, b = broadcast_to(a, shape), broadcast_to(b, shape)
    out = cuda.device_array(int(np.prod(shape)), out_dtype or a.dtype)
    if out.size:
        kernel[_blocks(out.size), THREADS](a.buf, b.buf, out)
    return CudaArray(out, shape)


def _unary(kernel, a, *extra):
    out = cuda.device_array(a.size, a.dtype)
    if a.size:
        kernel[_blocks(a.size), THREADS](a.buf, *extra, out)
    return CudaArray(out, a.shape)


def _axes(axis, ndim):
    if axis is None:
        return tuple(range(ndim))
    axes = axis if isinstance(axis, tuple) else (axis,)
    return tuple(sorted(a % ndim for a in axes))


def _reduce(a, axis, keepdims, kernel):
    axes = _axes(axis, a.ndim)
    keep = [d for d in range(a.ndim) if d not in axes]
    rows = int(np.prod([a.shape[d] for d in keep]))
    row_len = int(np.prod([a.shape[d] for d in axes]))  # 1 for a 0-d array: one row of one
    shape = tuple(1 if d in axes else a.shape[d] for d in range(a.ndim)) if keepdims else \
        tuple(a.shape[d] for d in keep)
    if row_len == 0:  # an empty reduced part: a sum is 0, as NumPy's; a max has no value, as NumPy says
        if kernel is _row_max_kernel:
            raise ValueError("zero-size array to reduction operation maximum which has no identity")
        return zeros(shape, a.dtype)
    out = cuda.device_array(rows, a.dtype)
    if rows:
        moved = a.transpose(keep + list(axes)) if a.ndim else a  # no copy when already in order
        kernel[_blocks(rows), THREADS](moved.buf, row_len, out)
    return CudaArray(out, shape)


def _host_index(index):
    if isinstance(index, tuple):
        return tuple(_host_index(i) for i in index)
    if isinstance(index, list):
        return np.asarray(index)
    return index


def _basic(index):
    parts = index if isinstance(index, tuple) else (index,)
    return all(isinstance(i, (int, np.integer, slice)) or i is None or i is Ellipsis for i in parts)


def _view(shape, index):
    """(offset, strides, shape) of ``x[index]`` for basic indexing, as NumPy defines it."""
    parts = list(index if isinstance(index, tuple) else (index,))
    if Ellipsis in parts:
        i = parts.index(Ellipsis)
        fill = len(shape) - (len(parts) - 1 - parts.count(None))
        parts[i:i + 1] = [slice(None)] * fill
    parts += [slice(None)] * (len(shape) - (len(parts) - parts.count(None)))
    base = _contiguous_strides(shape)
    offset, strides, out_shape, d = 0, [], [], 0
    for p in parts:
        if p is None:
            strides.append(0)
            out_shape.append(1)
            continue
        n = shape[d]
        if isinstance(p, slice):
            start, stop, step = p.indices(n)
            count = len(range(start, stop, step))
            offset += start * base[d]
            strides.append(base[d] * step)
            out_shape.append(count)
        else:
            i = int(p)
            if not -n <= i < n:
                raise IndexError(f"index {i} is out of bounds for axis {d} with size {n}")
            offset += (i % n) * base[d]
        d += 1
    return offset, tuple(strides), tuple(out_shape)


# ---- the backend functions ops.py calls -------------------------------------------------------
def asarray(data, dtype=None):
    if isinstance(data, CudaArray):
        return data if dtype is None else data.astype(dtype)
    host = np.asarray(data, dtype=dtype)
    if dtype is None and host.dtype == np.float64 and not isinstance(data, (np.ndarray, np.generic)):
        host = host.astype(np.float32)
    # The shape before np.ascontiguousarray, which makes a 0-d array 1-d: a Python scalar, a
    # NumPy scalar or a 0-d array stays 0-d here, as on the CPU (it was (1,), and so was every
    # result it broadcast into: a loss, a mean, ``t.sum() * 2``).
    shape = host.shape
    return CudaArray(cuda.to_device(np.ascontiguousarray(host).reshape(-1)), shape)


def to_numpy(x):
    if isinstance(x, (np.ndarray, np.generic)):
        return x
    return x.buf.copy_to_host().reshape(x.shape)


def _to_host_for(reason, x):
    """``x`` copied to the host because no kernel does ``reason`` yet: a hidden round trip
    (the result goes back to the device), so each one is counted by reason."""
    HOST_ROUND_TRIPS[reason] += 1
    return to_numpy(x)


def copy_as(g, dtype):
    g = _as_cuda(g)
    return g.copy() if g.dtype == np.dtype(dtype) else g.astype(dtype)  # astype copies already


def zeros(shape, dtype=np.float32):
    shape = tuple(shape) if isinstance(shape, (tuple, list)) else (shape,)
    out = cuda.device_array(int(np.prod(shape)), dtype)
    if out.size:
        _fill_kernel[_blocks(out.size), THREADS](out, 0)
    return CudaArray(out, shape)


def ones_like(a):
    out = cuda.device_array(a.size, a.dtype)
    if out.size:
        _fill_kernel[_blocks(out.size), THREADS](out, 1)
    return CudaArray(out, a.shape)


def matmul(a, b):
    a, b = _as_cuda(a), _as_cuda(b)
    squeeze_a, squeeze_b = a.ndim == 1, b.ndim == 1
    if squeeze_a:
        a = a.reshape(1, -1)
    if squeeze_b:
        b = b.reshape(-1, 1)
    if a.shape[-1] != b.shape[-2]:
        raise ValueError(f"matmul: shapes {a.shape} and {b.shape} are incompatible")
    batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    # The batch count from the shape, not reshape(-1, n, k): with k = 0 that read Z as 0.
    Z, n, k, m = int(np.prod(batch)), a.shape[-2], a.shape[-1], b.shape[-1]
    shape = batch + (n, m)
    if Z * n * m == 0 or k == 0:  # nothing to launch (a grid dimension of 0 is a launch error), or K = 0: zeros
        out = zeros(Z * n * m, a.dtype).buf
    else:
        a3 = broadcast_to(a, batch + a.shape[-2:]).reshape(Z, n, k)
        b3 = broadcast_to(b, batch + b.shape[-2:]).reshape(Z, k, m)
        out = cuda.device_array((Z, n, m), a.dtype)
        grid = ((m + TILE - 1) // TILE, (n + TILE - 1) // TILE, Z)
        _matmul_kernel[grid, (TILE, TILE)](a3.buf.reshape(a3.shape), b3.buf.reshape(b3.shape), out)
    if squeeze_a:
        shape = shape[:-2] + shape[-1:]
    if squeeze_b:
        shape = shape[:-1]
    return CudaArray(out.reshape(-1), shape)


def swapaxes(a, i, j):
    axes = list(range(a.ndim))
    axes[i], axes[j] = axes[j], axes[i]
    return a.transpose(axes)


def expand_dims(a, axis):
    axes = axis if isinstance(axis, tuple) else (axis,)
    ndim = a.ndim + len(axes)
    axes = sorted(ax % ndim for ax in axes)
    shape = list(a.shape)
    for ax in axes:
        shape.insert(ax, 1)
    return a.reshape(shape)


def sum_to_shape(g, shape):
    if g.shape == tuple(shape):
        return g
    lead = g.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(i + lead for i, n in enumerate(shape) if n == 1 and g.shape[i + lead] != 1)
    return g.sum(axis=axes, keepdims=True).reshape(shape) if axes else g.reshape(shape)


def exp(a): return _unary(_exp_kernel, a)
def log(a): return _unary(_log_kernel, a)
def sqrt(a): return _unary(_sqrt_kernel, a)
def sign(a): return _unary(_sign_kernel, a)
def tanh(a): return _unary(_tanh_kernel, a)
def sigmoid(a): return _unary(_sigmoid_kernel, a)
def leaky_relu(a, slope): return _unary(_leaky_relu_kernel, a, a.dtype.type(slope))


def tanh_bwd(g, y):
    return _binary(_tanh_bwd_kernel, _as_cuda(g).astype(y.dtype), y)


def sigmoid_bwd(g, y):
    return _binary(_sigmoid_bwd_kernel, _as_cuda(g).astype(y.dtype), y)


def leaky_relu_bwd(g, a, slope):
    g = broadcast_to(_as_cuda(g).astype(a.dtype), a.shape)
    out = cuda.device_array(a.size, a.dtype)
    if a.size:
        _leaky_relu_bwd_kernel[_blocks(a.size), THREADS](g.buf, a.buf, a.dtype.type(slope), out)
    return CudaArray(out, a.shape)


# The op table's VJPs for these ops in one launch each (the table's formula takes three or
# four launches and a scalar upload); same signature, tested against the table.
FUSED_VJPS = {
    "tanh": lambda k, g, y, a: (tanh_bwd(g, y),),
    "sigmoid": lambda k, g, y, a: (sigmoid_bwd(g, y),),
    "leaky_relu": lambda k, g, y, a, slope: (leaky_relu_bwd(g, a, slope),),
}


def clip(a, lo, hi):
    return _unary(_clip_kernel, a, a.dtype.type(lo), a.dtype.type(hi))


def where(cond, a, b):
    cond = _as_cuda(cond)
    like = a if isinstance(a, CudaArray) else b
    a, b = _as_cuda(a, like.dtype), _as_cuda(b, like.dtype)
    shape = np.broadcast_shapes(cond.shape, a.shape, b.shape)
    c, a, b = broadcast_to(cond.astype(np.bool_), shape), broadcast_to(a, shape), broadcast_to(b, shape)
    out = cuda.device_array(int(np.prod(shape)), a.dtype)
    if out.size:
        _where_kernel[_blocks(out.size), THREADS](c.buf, a.buf, b.buf, out)
    return CudaArray(out, shape)


def concatenate(arrays, axis=0):
    arrays = [_as_cuda(a) for a in arrays]
    axis = axis % arrays[0].ndim
    shape = list(arrays[0].shape)
    shape[axis] = sum(a.shape[axis] for a in arrays)
    out = zeros(shape, arrays[0].dtype)
    start = 0
    for a in arrays:
        index = (slice(None),) * axis + (slice(start, start + a.shape[axis]),)
        offset, strides, view_shape = _view(tuple(shape), index)
        _scatter_into(out, a, offset, strides, view_shape)
        start += a.shape[axis]
    return out


def stack(arrays, axis=0):
    arrays = [_as_cuda(a) for a in arrays]
    axis = axis % (arrays[0].ndim + 1)
    return concatenate([expand_dims(a, axis) for a in arrays], axis)


def scatter_add(shape, index, g):
    index = _host_index(index)
    g = _as_cuda(g)
    out = zeros(shape, g.dtype)
    if _basic(index):
        offset, strides, view_shape = _view(tuple(shape), index)
        _scatter_into(out, broadcast_to(g, view_shape), offset, strides, view_shape)
        return out
    if isinstance(index, np.ndarray) and index.dtype.kind in "iu":  # a boolean mask is not rows: on the host
        return embedding_bwd(shape, _row_indices(index, shape[0]), g)
    if isinstance(index, CudaArray):
        return embedding_bwd(shape, index, g)
    host = np.zeros(shape, g.dtype)
    np.add.at(host, index, _to_host_for("scatter_add with mixed fancy indexing", g))
    return asarray(host)


def _row_indices(index, n):
    """Host row indices checked against ``n`` rows, as NumPy checks them, and negative ones
    wrapped: the kernels do not check (a GPU reads or adds out of bounds silently)."""
    if index.size and (index.min() < -n or index.max() >= n):
        bad = index.max() if index.max() >= n else index.min()
        raise IndexError(f"index {bad} is out of bounds for axis 0 with size {n}")
    return index % max(n, 1) if index.size and index.min() < 0 else index


def _indices(indices):
    if isinstance(indices, CudaArray):
        return indices.astype(np.int64).reshape(-1)
    return asarray(np.asarray(indices, np.int64).reshape(-1))


def take_rows(w, indices):
    idx = _indices(indices)
    rows = int(np.prod(w.shape[1:])) if w.ndim > 1 else 1
    src = w.reshape(w.shape[0], rows)
    out = cuda.device_array((idx.size, rows), w.dtype)
    if out.size:
        _rows_take_kernel[_blocks(out.size), THREADS](idx.buf, src.buf.reshape(src.shape), out)
    ishape = indices.shape
    return CudaArray(out.reshape(-1), tuple(ishape) + tuple(w.shape[1:]))


def embedding_bwd(weight_shape, indices, g):
    idx = _indices(indices)
    cols = int(np.prod(weight_shape[1:])) if len(weight_shape) > 1 else 1
    out = zeros((weight_shape[0], cols), g.dtype)
    g2 = _as_cuda(g).reshape(idx.size, cols)
    if g2.size:
        _rows_add_kernel[_blocks(g2.size), THREADS](idx.buf, g2.buf.reshape(g2.shape), out.buf.reshape(out.shape))
    return out.reshape(weight_shape)


def log_softmax(x, axis):
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - log(exp(shifted).sum(axis=axis, keepdims=True))


def cross_entropy(logits, target):
    logp = log_softmax(logits, -1)
    idx = _indices(target)
    picked = cuda.device_array(idx.size, logits.dtype)
    _pick_kernel[_blocks(idx.size), THREADS](logp.buf.reshape(logp.shape), idx.buf, picked)
    return -(CudaArray(picked, (idx.size,)).mean())


def cross_entropy_bwd(logits, target, g):
    logp = log_softmax(logits, -1)
    idx = _indices(target)
    g = _as_cuda(g, logp.dtype).astype(logp.dtype)
    out = cuda.device_array(logp.shape, logp.dtype)
    _softmax_minus_onehot_kernel[_blocks(logp.size), THREADS](logp.buf.reshape(logp.shape), idx.buf,
                                                             g.buf, out)
    return CudaArray(out.reshape(-1), logp.shape)

