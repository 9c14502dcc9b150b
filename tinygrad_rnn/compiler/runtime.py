"""Run a compiled cell: helpers the generated source imports, the on-disk cache, and
the ``compiled_sequence`` op that puts a whole layer on the tape as one node.

A compiled layer runs in three parts:
1. the plan's *param* equations, replayed once on the tape (``W.T``, weight slices);
2. its *hoisted* equations, replayed once on all T*B rows (the input GEMM);
3. the generated time loop, one op on the tape whose VJP is the generated backward.
Parts 1 and 2 are ordinary recorded ops, so their gradients come from the op table.
"""
import contextlib
import functools
import hashlib
import importlib.util
import os
import sys
import tempfile
import threading

import numba
import numpy as np

from .. import ops
from ..backend._jit import kernel  # noqa: F401  (the generated source imports it from here)


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
    LSTM's hidden states inside Y) is copied in parallel."""
    n = a.shape[0]
    blocks = row_blocks(n) if a.size * g.shape[-1] >= SPLIT_FLOPS else [(0, n)]
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


def cache_dir():
    """Where generated modules live (Numba caches its machine code beside them)."""
    root = os.environ.get("TINYGRAD_RNN_CACHE_DIR")
    if not root:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(base, "tinygrad_rnn")
    return os.path.join(root, "compiled")


_modules = {}


def _digest(source):
    from .._version import __version__
    return hashlib.sha256((__version__ + _RUNTIME_KEY + source).encode()).hexdigest()[:20]


def source_path(source):
    """Where the generated ``source`` is cached."""
    return os.path.join(cache_dir(), f"cell_{_digest(source)}.py")


def load_source(source):
    """Import generated ``source`` from the cache directory (written once, atomically)."""
    digest = _digest(source)
    mod = _modules.get(digest)
    if mod is not None:
        return mod
    folder = cache_dir()
    path = os.path.join(folder, f"cell_{digest}.py")
    try:
        os.makedirs(folder, exist_ok=True)
        if not _holds(path, source):  # missing, or truncated or edited since: write it anew
            from ..safeio import atomic_write  # concurrent writers (sweep workers) each write the same text
            atomic_write(path, lambda f: f.write(source.encode()), error=OSError)
    except OSError as e:  # an unusable cache: compile in a temporary folder, gone at exit
        folder = _scratch_folder(folder, e)
        path = os.path.join(folder, f"cell_{digest}.py")
        with open(path, "w") as f:
            f.write(source)
    name = f"tinygrad_rnn_compiled.cell_{digest}"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    _modules[digest] = mod
    return mod


_scratch = []


def _scratch_folder(wanted, error):
    """A per-process folder for generated modules, removed at exit, with one warning."""
    if not _scratch:
        import atexit
        import shutil
        _scratch.append(tempfile.mkdtemp(prefix="tinygrad_rnn_"))
        atexit.register(shutil.rmtree, _scratch[0], True)
        print(f"tinygrad_rnn: cannot use the kernel cache {wanted!r} ({error.strerror or error}); compiled "
              "kernels are not kept for the next run (set TINYGRAD_RNN_CACHE_DIR to a writable folder)",
              file=sys.stderr)
    return _scratch[0]


def guarded(module, name, *args):
    """Call a generated function; if it fails while Numba's on-disk cache of the module
    exists, that cache may be damaged (truncated by a full disk, a killed process): remove
    it and try once more, compiling afresh. Running out of memory is not damage: the cache stays."""
    try:
        return getattr(module, name)(*args)
    except MemoryError:
        raise
    except Exception:
        stem = os.path.splitext(os.path.basename(module.__file__))[0]
        folder = os.path.join(os.path.dirname(module.__file__), "__pycache__")
        stale = [os.path.join(folder, f) for f in _listdir(folder) if f.startswith(stem + ".")]
        if not stale:
            raise
        for f in stale:
            try:
                os.unlink(f)
            except OSError:
                pass
        return getattr(module, name)(*args)


def _listdir(folder):
    try:
        return os.listdir(folder)
    except OSError:
        return []


def _holds(path, source):
    try:
        with open(path) as f:
            return f.read() == source
    except (OSError, UnicodeDecodeError):
        return False


def _runtime_key():
    # Numba's cache keys on the generated file only; helpers it calls live here and in
    # backend/cpu.py and backend/simd.py, so their source is part of the generated file's name.
    from ..backend import cpu, simd
    import inspect
    return hashlib.sha256("".join(inspect.getsource(m) for m in (sys.modules[__name__], cpu, simd))
                          .encode()).hexdigest()[:12]


_RUNTIME_KEY = _runtime_key()


# ---- replay of the tape-side parts ---------------------------------------------------
def replay(eqns, env, keep=()):
    """Apply recorded equations to the Tensors in ``env`` (Var -> Tensor), on the tape.

    A product ``a @ w`` (and a bias added to it right after, when nothing else reads
    the bare product; ``keep``: vars read after the replay) becomes one
    ``input_projection`` op, whose VJP skips the gradients no input needs: the
    input x of a layer usually needs none, and its product would cost as much as
    the forward GEMM."""
    readers = {}
    for e in eqns:
        for v in e.ins:
            readers[v] = readers.get(v, 0) + 1
    fused = set()
    for n, e in enumerate(eqns):
        if e in fused:
            continue
        args = [env[v] for v in e.ins]
        if e.op == "matmul" and all(a.ndim == 2 for a in args):
            nxt = eqns[n + 1] if n + 1 < len(eqns) else None
            if (nxt is not None and nxt.op == "add" and nxt.ins[0] is e.out and readers[e.out] == 1
                    and e.out not in keep and env[nxt.ins[1]].shape == (args[1].shape[1],)):
                args.append(env[nxt.ins[1]])
                fused.add(nxt)
                e = nxt
            env[e.out] = ops.apply(ops.OPS["input_projection"], *args,
                                   need=tuple(a.requires_grad for a in args))
        elif e.op == "compare":
            env[e.out] = ops.compare(args[0], args[1], e.attrs["how"])
        elif e.op == "where":
            a, b, cond = args
            env[e.out] = ops.apply(ops.OPS["where"], a, b, cond=cond.data.astype(bool))
        else:
            attrs = {k: v for k, v in e.attrs.items() if k != "residuals"}
            env[e.out] = ops.apply(ops.OPS[e.op], *args, **attrs)
    return env


@on_one_blas_thread
def _projection_fwd(k, a, w, *bias, need):
    out = matmul(a, w) if k.name == "cpu" else k.matmul(a, w)
    if bias:
        out += bias[0]
    return out


@on_one_blas_thread
def _projection_vjp(k, g, y, a, w, *bias, need):
    mm, mm_tn = (matmul, matmul_tn) if k.name == "cpu" else (k.matmul, lambda a, g: k.matmul(a.T, g))
    grads = (mm(g, w.T) if need[0] else None, mm_tn(a, g) if need[1] else None)
    return grads + ((g.sum(axis=0) if need[2] else None,) if bias else ())


ops.defop("input_projection", _projection_fwd, _projection_vjp)


@on_one_blas_thread
def _fwd(k, *arrays, module, sizes, mask, probe, n_states, n_hoisted):
    if k.name != "cpu":  # the CUDA module's drivers take and return device arrays
        return guarded(module, "forward", *sizes, mask, *arrays)
    return guarded(module, "forward", *sizes, mask, *(np.ascontiguousarray(a) for a in arrays))


@on_one_blas_thread
def _vjp(k, g, Y, *arrays, module, sizes, mask, probe, n_states, n_hoisted, residuals):
    if k.name != "cpu":
        dx, dstates, daux, squares = guarded(module, "backward", *sizes, g.astype(Y.dtype), Y, residuals,
                                             mask, *arrays)
        norms = np.sqrt(k.to_numpy(squares)) if probe is not None else None  # stays on the device unless asked
    else:
        dx, dstates, daux, norms = guarded(module, "backward", *sizes, np.ascontiguousarray(g, dtype=Y.dtype),
                                           Y, residuals, mask, *(np.ascontiguousarray(a) for a in arrays))
    if probe is not None:
        probe.norms = norms
    daux = [d.reshape(a.shape) for d, a in zip(daux, arrays[n_states + n_hoisted:])]
    return (*dstates, *dx, *daux)


ops.defop("compiled_sequence", _fwd, _vjp, residuals=True)
