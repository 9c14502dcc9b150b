"""What generated CUDA modules call: allocation, launches, recurrent products.

A generated CUDA module (``render_cuda.py``) holds the stage kernels and two host
drivers, ``forward`` and ``backward``, that loop over time and launch them. The drivers
reach everything device-specific through this module's ``api`` object, so the PTX
test can swap it for a recorder that runs the drivers on host arrays and collects every
kernel's argument types without a GPU (``record_launches``).
"""
import contextlib
import math

import numpy as np
from numba import cuda

from ..backend.cuda import SIMULATOR, TILE, CudaArray, zeros

# One block per batch row; its threads stride over the row. The simulator runs each
# thread as a Python thread: a few threads still exercise striding and barriers.
MAX_THREADS = 4 if SIMULATOR else 256


def kernel(fn):
    """The decorator of generated stage kernels."""
    return cuda.jit(fn, cache=not SIMULATOR)


@cuda.jit
def _gemm_kernel(a, b, out, trans_a, trans_b, accumulate):
    # out (+)= op(a) @ op(b), op = transpose when asked; one TILE x TILE output tile per
    # block through shared memory, float64 accumulation (as backend.cuda's matmul).
    sa = cuda.shared.array((TILE, TILE), dtype=np.float64)
    sb = cuda.shared.array((TILE, TILE), dtype=np.float64)
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    col = cuda.blockIdx.x * TILE + tx
    row = cuda.blockIdx.y * TILE + ty
    n, m = out.shape
    k = a.shape[0] if trans_a else a.shape[1]
    acc = 0.0
    for t0 in range(0, k, TILE):
        ka, kb = t0 + tx, t0 + ty
        if row < n and ka < k:
            sa[ty, tx] = a[ka, row] if trans_a else a[row, ka]
        else:
            sa[ty, tx] = 0
        if col < m and kb < k:
            sb[ty, tx] = b[col, kb] if trans_b else b[kb, col]
        else:
            sb[ty, tx] = 0
        cuda.syncthreads()
        for j in range(TILE):
            acc += sa[ty, j] * sb[j, tx]
        cuda.syncthreads()
    if row < n and col < m:
        if accumulate:
            out[row, col] += acc
        else:
            out[row, col] = acc


@cuda.jit
def _stack_prev_kernel(first, Y, i, lo, out):
    # out[t] = (first if t == 0 else Y[t - 1, i])[:, lo:lo + width]: the left operand of
    # a recurrent product for every step, for its weight gradient.
    t = cuda.blockIdx.x
    T, B, width = out.shape
    for e in range(cuda.threadIdx.x, B * width, cuda.blockDim.x):
        r, j = e // width, e % width
        out[t, r, j] = first[r, lo + j] if t == 0 else Y[t - 1, i, r, lo + j]


@cuda.jit
def _copy3_kernel(src, out):
    t = cuda.blockIdx.x
    T, B, width = out.shape
    for e in range(cuda.threadIdx.x, B * width, cuda.blockDim.x):
        out[t, e // width, e % width] = src[t, e // width, e % width]


class _Device:
    """The real thing: numba device arrays and launches."""

    def device(self, x):
        """A device view of a CudaArray (or a copy of a host array)."""
        if isinstance(x, CudaArray):
            return x.buf.reshape(x.shape)
        return cuda.to_device(np.ascontiguousarray(x))

    def empty(self, shape, dtype):
        return cuda.device_array(shape, dtype)

    def zeros(self, shape, dtype):
        return zeros(shape, dtype).buf.reshape(shape)

    def launch(self, kernel, blocks, threads, args):
        if blocks:
            kernel[blocks, threads](*args)

    def gemm(self, a, b, out, trans_a=False, trans_b=False, accumulate=False):
        n, m = out.shape
        if n and m:
            grid = ((m + TILE - 1) // TILE, (n + TILE - 1) // TILE)
            _gemm_kernel[grid, (TILE, TILE)](a, b, out, trans_a, trans_b, accumulate)

    def stack_prev(self, first, Y, i, lo, hi):
        T, B = Y.shape[0], Y.shape[2]
        out = cuda.device_array((T, B, hi - lo), Y.dtype)
        if out.size:
            _stack_prev_kernel[T, threads_for(B * (hi - lo))](first, Y, i, lo, out)
        return out

    def contiguous(self, a):
        if a.is_c_contiguous():
            return a
        out = cuda.device_array(a.shape, a.dtype)
        if out.size:
            _copy3_kernel[a.shape[0], threads_for(a.shape[1] * a.shape[2])](a, out)
        return out

    def wrap(self, a):
        return CudaArray(a.reshape(-1), a.shape)


class _Recorder:
    """Runs the drivers on host arrays and records each kernel launch's argument types
    (for compiling every generated kernel to PTX on a machine without a GPU)."""

    def __init__(self):
        self.launches = {}

    def device(self, x):
        return np.ascontiguousarray(x)

    def empty(self, shape, dtype):
        return np.zeros(shape, dtype)

    zeros = empty

    def launch(self, kernel, blocks, threads, args):
        from numba import typeof
        sig = tuple(typeof(a) for a in args)
        self.launches.setdefault(kernel.py_func.__name__, (kernel.py_func, sig))

    def gemm(self, a, b, out, trans_a=False, trans_b=False, accumulate=False):
        pass

    def stack_prev(self, first, Y, i, lo, hi):
        return np.zeros((Y.shape[0], Y.shape[2], hi - lo), Y.dtype)

    def contiguous(self, a):
        return np.ascontiguousarray(a)

    def wrap(self, a):
        return a


api = _Device()


@contextlib.contextmanager
def record_launches():
    """Within: generated drivers take host arrays and record launches instead of running."""
    global api
    saved, api = api, _Recorder()
    try:
        yield api
    finally:
        api = saved


def threads_for(width):
    """Threads per block for rows of ``width`` elements: a multiple of the warp size."""
    return max(1, min(MAX_THREADS, 32 * math.ceil(width / 32) if not SIMULATOR else width))
