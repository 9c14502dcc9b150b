"""Run a compiled cell: helpers the generated source imports, the on-disk cache, and
the ``compiled_sequence`` op that puts a whole layer on the tape as one node.

A compiled layer runs in three parts:
1. the plan's *param* equations, replayed once on the tape (``W.T``, weight slices);
2. its *hoisted* equations, replayed once on all T*B rows (the input GEMM);
3. the generated time loop, one op on the tape whose VJP is the generated backward.
Parts 1 and 2 are ordinary recorded ops, so their gradients come from the op table.
"""
import hashlib
import importlib.util
import os
import sys
import tempfile

import numba
import numpy as np

from .. import ops
from ..backend._jit import kernel  # noqa: F401  (the generated source imports it from here)
from ..tensor import Tensor

# Below this hidden size the whole time loop runs inside one Numba function with an
# in-kernel product; above it, a Python loop calls BLAS per step. Measured on the
# 2-core VM (benchmarks/bench_cells.py --loop): see README "Performance".
JIT_LOOP_MAX_HIDDEN = int(os.environ.get("TINYGRAD_RNN_JIT_LOOP_MAX_HIDDEN", "64"))


@kernel
def mm(a, w, out):
    """``out = a @ w`` for small operands, inside the jitted time loop where a BLAS call
    per step would cost more than the product (FACTS.md). Four rows of ``a`` and four
    rows of ``w`` at a time: each loaded row of ``w`` serves four output rows and each
    output row is loaded and stored once per four rows of ``w``, so the inner loop is
    bound by multiply-adds, not memory (float32 (32, 32) @ (32, 128): 3.2 us against
    7.5 us one row at a time and 3.4 us for NumPy's BLAS call). The backward calls it
    with the transposed weight."""
    B, K = a.shape
    N = w.shape[1]
    B4, K4 = B - B % 4, K - K % 4
    for b in range(0, B4, 4):
        o0, o1, o2, o3 = out[b], out[b + 1], out[b + 2], out[b + 3]
        a0, a1, a2, a3 = a[b], a[b + 1], a[b + 2], a[b + 3]
        for j in range(N):
            o0[j] = 0
            o1[j] = 0
            o2[j] = 0
            o3[j] = 0
        for k in range(0, K4, 4):
            w0, w1, w2, w3 = w[k], w[k + 1], w[k + 2], w[k + 3]
            p0, p1, p2, p3 = a0[k], a0[k + 1], a0[k + 2], a0[k + 3]
            q0, q1, q2, q3 = a1[k], a1[k + 1], a1[k + 2], a1[k + 3]
            r0, r1, r2, r3 = a2[k], a2[k + 1], a2[k + 2], a2[k + 3]
            u0, u1, u2, u3 = a3[k], a3[k + 1], a3[k + 2], a3[k + 3]
            for j in range(N):
                x0, x1, x2, x3 = w0[j], w1[j], w2[j], w3[j]
                o0[j] += p0 * x0 + p1 * x1 + p2 * x2 + p3 * x3
                o1[j] += q0 * x0 + q1 * x1 + q2 * x2 + q3 * x3
                o2[j] += r0 * x0 + r1 * x1 + r2 * x2 + r3 * x3
                o3[j] += u0 * x0 + u1 * x1 + u2 * x2 + u3 * x3
        for k in range(K4, K):
            wk = w[k]
            p, q, r, u = a0[k], a1[k], a2[k], a3[k]
            for j in range(N):
                o0[j] += p * wk[j]
                o1[j] += q * wk[j]
                o2[j] += r * wk[j]
                o3[j] += u * wk[j]
    for b in range(B4, B):
        o = out[b]
        for j in range(N):
            o[j] = 0
        for k in range(K):
            s = a[b, k]
            wk = w[k]
            for j in range(N):
                o[j] += s * wk[j]


def matmul_into(a, w, out):
    np.matmul(a, w, out=out)


# The jitted time loop runs the batch as blocks of rows, one per core, each block through
# all T steps (its products and pointwise work); the rows of a recurrence never meet, so
# blocks only share what every row adds to (batch-free gradients, per-step norms), which
# the drivers keep per block and sum. Blocks run on Python threads: the kernels release
# the GIL (nogil), and an idle pool thread waits on a queue without spinning, so nothing
# of ours competes with the user's next computation.
MIN_BLOCK_ROWS = int(os.environ.get("TINYGRAD_RNN_MIN_BLOCK_ROWS", "8"))
THREADS = numba.config.NUMBA_NUM_THREADS  # as configured (NUMBA_NUM_THREADS); Numba's own threads stay unstarted
_pool = []


def row_blocks(B):
    """[(b0, b1), ...]: the batch cut into one block per core, each of at least
    MIN_BLOCK_ROWS rows (a smaller block costs more in thread hand-over than it saves)."""
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
            fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
            try:
                with os.fdopen(fd, "w") as f:
                    f.write(source)
                os.chmod(tmp, 0o644)
                os.replace(tmp, path)  # concurrent writers (sweep workers) each write the same text
            except BaseException:
                if os.path.exists(tmp):
                    os.unlink(tmp)
                raise
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
    it and try once more, compiling afresh."""
    try:
        return getattr(module, name)(*args)
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
    # backend/cpu.py, so their source is part of the generated file's name.
    from ..backend import cpu
    import inspect
    return hashlib.sha256((inspect.getsource(sys.modules[__name__]) +
                           inspect.getsource(cpu)).encode()).hexdigest()[:12]


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


def _projection_fwd(k, a, w, *bias, need):
    out = k.matmul(a, w)
    if bias:
        out += bias[0]
    return out


def _projection_vjp(k, g, y, a, w, *bias, need):
    grads = (k.matmul(g, w.T) if need[0] else None, k.matmul(a.T, g) if need[1] else None)
    return grads + ((g.sum(axis=0) if need[2] else None,) if bias else ())


ops.defop("input_projection", _projection_fwd, _projection_vjp)


def _fwd(k, *arrays, module, sizes, jit_loop, mask, probe, n_states, n_hoisted):
    if k.name != "cpu":  # the CUDA module's drivers take and return device arrays
        return guarded(module, "forward", *sizes, mask, *arrays)
    states = [np.ascontiguousarray(a) for a in arrays[:n_states]]
    rest = [np.ascontiguousarray(a) for a in arrays[n_states:]]
    return guarded(module, "forward", jit_loop, *sizes, mask, *states, *rest)


def _vjp(k, g, Y, *arrays, module, sizes, jit_loop, mask, probe, n_states, n_hoisted, residuals):
    if k.name != "cpu":
        dx, dstates, daux, squares = guarded(module, "backward", *sizes, g.astype(Y.dtype), Y, residuals,
                                             mask, *arrays)
        norms = np.sqrt(k.to_numpy(squares)) if probe is not None else None  # stays on the device unless asked
    else:
        states = [np.ascontiguousarray(a) for a in arrays[:n_states]]
        rest = [np.ascontiguousarray(a) for a in arrays[n_states:]]
        dx, dstates, daux, norms = guarded(module, "backward", jit_loop, *sizes,
                                           np.ascontiguousarray(g, dtype=Y.dtype), Y, residuals, mask,
                                           *states, *rest)
    if probe is not None:
        probe.norms = norms
    daux = [d.reshape(a.shape) for d, a in zip(daux, arrays[n_states + n_hoisted:])]
    return (*dstates, *dx, *daux)


ops.defop("compiled_sequence", _fwd, _vjp, residuals=True)
