"""The threads a CPU step runs on, and BLAS's: one block of rows per core, and BLAS held at
one thread while they run.

The compiled time loop runs the batch as blocks of rows, one per core (``row_blocks``,
``in_blocks``); large products are cut the same way (``matmul``, ``matmul_tn``), and the op
table's 2-D matmul uses them too (``backend.cpu.matmul``), so that no BLAS worker thread is
left busy-waiting while the block threads run.
"""
import contextlib
import functools
import os
import sys
import threading

import numba
import numpy as np


def _env_int(name, default, lo):
    """An integer >= ``lo`` from the environment variable ``name``, else ``default``. Read at
    import, where an exception would be a traceback before any command runs: a bad value
    is a one-line warning naming the variable (and, under MPI, each rank says it)."""
    text = os.environ.get(name)
    if text is None:
        return default
    try:
        value = int(text)
        if value >= lo:
            return value
    except ValueError:
        pass
    print(f"tinygrad_rnn: warning: {name}={text!r} is not an integer >= {lo}; using {default}", file=sys.stderr)
    return default


# BLAS's worker threads busy-wait for a while after each call (OpenBLAS: about 0.1 s), so
# a BLAS call with two threads right before the jitted loop's two block threads puts
# three busy threads on two cores: the LSTM's loops at hidden 128 took 7.3 ms instead of
# 4.3 ms (20-step profile, Intel Xeon, 2 cores). A compiled layer therefore holds BLAS
# at one thread while it runs and spreads its large products over its own block
# threads, which wait on a queue without spinning: no thread of BLAS or of ours spins
# into the user's next computation, and a split product takes what BLAS's own threads
# took: (3200, 128) @ (128, 512) 1.73 ms in two row halves against 1.55 ms with two BLAS
# threads (2.94 ms on one).
# Below this a product runs whole: handing half to a pool thread costs about 75 us here
# (a sleeping thread's wake-up), more than it saves. A layer small enough to run whole is
# best run with no hand-over at all (this and SPLIT_STEP_FLOPS together): training steps at
# hidden 32 (products of 2^21.6 - 2^23.6 multiply-adds), 5 alternating blocks, split at
# 2^23 / whole at 2^24: LSTM 2.54 / 2.33 ms, GRU 2.28 / 1.88, RNN 0.83 / 0.80; split at
# 2^20 the RNN took 1.03-1.07 ms. At hidden 64 the LSTM's and GRU's (2^25.2 - 2^25.6) are
# split: their time loops in one block took 5.43 ms against 4.76 and 4.45-4.65 against 3.90
# (Intel Xeon).
SPLIT_FLOPS = 1 << 24
_blas = []
# Most BLAS builds (OpenBLAS on its own threads, MKL, BLIS) have one thread count for the
# whole process, so layers running on several of the user's threads share one hold: the
# first to enter limits BLAS, the last to leave restores it. Each thread restoring what it
# saw on entry gave BLAS its threads back while another layer still ran, and left it at
# one thread for good when that layer returned. OpenBLAS built on OpenMP keeps a count per
# thread: there each thread limits, and restores, its own.
_hold = {"count": 0, "saved": None}
_hold_lock = threading.Lock()


def one_blas_thread():
    """A context in which BLAS uses one thread (restored when the last such context on any
    thread ends; no-op without threadpoolctl's view of a BLAS, or with one thread configured)."""
    if not _blas:
        _blas.append(_blas_controllers() if THREADS > 1 else ([], None))
    shared, per_thread = _blas[0]
    return _held(shared, per_thread) if shared or per_thread else contextlib.nullcontext()


def _blas_controllers():
    """(process-wide, per-thread): a (get, set) pair of thread-count functions for each BLAS
    library whose thread count is one setting for the process, and threadpoolctl's controller
    of those where each thread has its own."""
    try:
        from threadpoolctl import ThreadpoolController
        blas = ThreadpoolController().select(user_api="blas")
        info = blas.info()
    except Exception:  # an unknown BLAS, or a platform threadpoolctl cannot read: leave it be
        return [], None
    own = [i["filepath"] for i in info if i.get("internal_api") == "openblas" and i.get("threading_layer") == "openmp"]
    shared = [i["filepath"] for i in info if i["filepath"] not in own]
    libs = blas.select(filepath=shared).lib_controllers if shared else []
    return [_thread_count_functions(lib) for lib in libs], (blas.select(filepath=own) if own else None)


def _thread_count_functions(lib):
    """(get, set) of one library's process-wide thread count. For OpenBLAS, its own C
    functions: threadpoolctl's (since 3.8) let one Python thread at a time change OpenBLAS,
    and taking and giving up that control around each change made a hold cost 28-35 us
    against about 1 us, eight holds per training step (AMD EPYC)."""
    symbol = getattr(lib, "_get_symbol", None)  # threadpoolctl's lookup with the build's symbol affixes
    if lib.internal_api == "openblas" and symbol is not None:
        get, set_ = symbol("openblas_get_num_threads"), symbol("openblas_set_num_threads")
        if get is not None and set_ is not None:
            return get, set_
    return lib.get_num_threads, lambda n: _taking_control(lambda: lib.set_num_threads(n))


_clear = []


def _taking_control(change):
    """``change()`` with threadpoolctl's control of OpenBLAS. Since 3.8 it lets one Python
    thread at a time set OpenBLAS's process-wide pool (the first to set it, until that is
    cleared) and ignores the others; the hold is taken and given back on whichever threads
    run layers, so each change takes control and gives it up at once (keeping it would also
    ignore the user's own limits set from another thread)."""
    if not _clear:
        import threadpoolctl
        _clear.append(getattr(getattr(threadpoolctl, "OpenBLASController", None), "clear_controlling_thread", None))
    clear = _clear[0]
    if clear is not None:
        clear(force=True)
    try:
        return change()
    finally:
        if clear is not None:
            clear(force=True)


@contextlib.contextmanager
def _held(shared, per_thread):
    own = per_thread.limit(limits=1) if per_thread else None
    if shared:
        with _hold_lock:
            if _hold["count"] == 0:
                _hold["saved"] = [(set_, n) for get, set_ in shared if (n := get()) != 1]
                for set_, _ in _hold["saved"]:
                    set_(1)
            _hold["count"] += 1
    try:
        yield
    finally:
        if shared:
            with _hold_lock:
                _hold["count"] -= 1
                if _hold["count"] == 0:
                    for set_, n in _hold["saved"]:
                        set_(n)
                    _hold["saved"] = None
        if own:
            own.restore_original_limits()


def on_one_blas_thread(fn):
    """``fn`` run under ``one_blas_thread()`` (the forward and VJP of a compiled layer)."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        with one_blas_thread():
            return fn(*args, **kwargs)
    return run


def matmul(a, b):
    """``a @ b`` for 2-d arrays, its rows spread over the block threads when large."""
    out = np.empty((a.shape[0], b.shape[1]), np.result_type(a, b))
    blocks = row_blocks(a.shape[0]) if a.shape[0] * a.shape[1] * b.shape[1] >= SPLIT_FLOPS else [(0, a.shape[0])]
    in_blocks(blocks, lambda n, r0, r1: np.matmul(a[r0:r1], b, out=out[r0:r1]))
    return out


def matmul_tn(a, g):
    """``a.T @ g`` over every row of ``a`` (..., K) and ``g`` (..., N), leading axes flattened (a
    weight gradient: a sum over the rows of both), cut along the first axis into one partial
    sum per block thread when large; each block flattens its own rows, so a strided view (an
    LSTM's hidden states inside Y) is copied in parallel. The blocks are counted in rows, not
    in indices of the first axis: (T, B, K) at T < 2 * MIN_BLOCK_ROWS is still split."""
    n = a.shape[0]
    blocks = [(0, n)]
    if a.size * g.shape[-1] >= SPLIT_FLOPS:
        count = max(1, min(len(row_blocks(n * int(np.prod(a.shape[1:-1])))), n))
        blocks = [(n * i // count, n * (i + 1) // count) for i in range(count)]
    parts = [None] * len(blocks)

    def part(i, r0, r1):
        parts[i] = a[r0:r1].reshape(-1, a.shape[-1]).T @ g[r0:r1].reshape(-1, g.shape[-1])
    in_blocks(blocks, part)
    return sum(parts[1:], parts[0])


# The jitted time loop runs the batch as blocks of rows, one per core, each block through
# all T steps (its products and pointwise work); the rows of a recurrence never meet, so
# blocks only share what every row adds to (batch-free gradients, per-step norms), which
# the drivers keep per block and sum. Blocks run on Python threads: the kernels release
# the GIL (nogil), and an idle pool thread waits on a queue without spinning, so nothing
# of ours competes with the user's next computation.
MIN_BLOCK_ROWS = _env_int("TINYGRAD_RNN_MIN_BLOCK_ROWS", 8, 1)
THREADS = numba.config.NUMBA_NUM_THREADS  # as configured (NUMBA_NUM_THREADS); Numba's own threads stay unstarted
# Handing a block to a pool thread and waiting for it costs about 75 us on these VMs (a
# sleeping thread's wake-up), twice per training step. Below this many multiply-adds per
# step in the step's products the loop runs as one block (hidden 32: 2^15 - 2^17 for the
# RNN, GRU and LSTM at B=32; see SPLIT_FLOPS for the figures); the RNN at hidden 32 took
# 1.12-1.26 ms a training step in one block against 1.39-1.43 ms in two.
SPLIT_STEP_FLOPS = 1 << 18
_pool = []


def row_blocks(B, step_flops=None):
    """[(b0, b1), ...]: the batch cut into one block per core, each of at least
    MIN_BLOCK_ROWS rows (a smaller block costs more in thread hand-over than it saves), or
    one block when the products of a step take fewer than SPLIT_STEP_FLOPS multiply-adds."""
    if step_flops is not None and step_flops < SPLIT_STEP_FLOPS:
        return [(0, B)]
    n = max(1, min(THREADS, B // max(MIN_BLOCK_ROWS, 1)))
    return [(B * i // n, B * (i + 1) // n) for i in range(n)]


def in_blocks(blocks, run):
    """``run(n, b0, b1)`` for each block, the blocks at the same time."""
    if len(blocks) == 1:
        return run(0, *blocks[0])
    if not _pool or _pool[0][0] != os.getpid():  # a forked child (sweep workers) has none of the parent's threads
        from concurrent.futures import ThreadPoolExecutor
        _pool[:] = [(os.getpid(), ThreadPoolExecutor(max_workers=max(THREADS, len(blocks)),
                                                     thread_name_prefix="tinygrad_rnn"))]
    futures = [_pool[0][1].submit(run, n, b0, b1) for n, (b0, b1) in enumerate(blocks[1:], 1)]
    try:
        run(0, *blocks[0])  # the calling thread runs the first block
    finally:
        for f in futures:
            f.result()
