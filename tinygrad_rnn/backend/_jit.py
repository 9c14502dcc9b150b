"""The one place Numba flags are decided.

Every CPU kernel is compiled with ``njit(**JIT)``. ``fastmath`` is a set of
flags rather than ``True`` on purpose: ``nnan``/``ninf`` would let LLVM assume
no NaN or Inf exists, and the training loop relies on NaN surviving a kernel so
it can report the first non-finite parameter. ``error_model="numpy"`` lets
loops containing a division vectorise (a division loop over float32 (64, 512): 26.9 us
-> 3.3 us, ``benchmarks/bench_kernels.py``).
"""
import os

from numba import njit

from .. import kernel_cache

kernel_cache.install()  # checksummed cache entries, and a full disk is a warning (see kernel_cache.py)

FASTMATH = set({"nsz", "arcp", "contract", "afn", "reassoc"})
JIT = dict(cache=os.environ.get("TINYGRAD_RNN_NO_CACHE") != "1", fastmath=FASTMATH,
           error_model="numpy", nogil=True)


def kernel(fn):
    """Compile ``fn`` as a CPU kernel with the project's flags."""
    return njit(**JIT)(fn)
