"""Run a compiled cell: helpers the generated source imports, the on-disk cache, and
the ``compiled_sequence`` op that puts a whole layer on the tape as one node.

A compiled layer runs in three parts:
1. the plan's *param* equations, replayed once on the tape (``W.T``, weight slices);
2. its *hoisted* equations, replayed once on all T*B rows (the input GEMM);
3. the generated time loop, one op on the tape whose VJP is the generated backward.
Parts 1 and 2 are ordinary recorded ops, so their gradients come from the op table.
"""
import collections
import glob
import hashlib
import importlib.util
import os
import sys
import tempfile

import numpy as np

from .. import ops
from ..backend._jit import kernel  # noqa: F401  (the generated source imports it from here)
from ..backend.threads import (  # noqa: F401  (the generated source imports them from here)
    in_blocks, matmul, matmul_tn, on_one_blas_thread, row_blocks)


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
    if digest in _modules:
        return _modules[digest]
    path = source_path(source)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if not _holds(path, source):  # missing, or truncated or edited since: write it anew
            from ..safeio import atomic_write  # concurrent writers (sweep workers) each write the same text
            atomic_write(path, lambda f: f.write(source.encode()), error=OSError)
    except OSError as e:  # an unusable cache: compile in a temporary folder, gone at exit
        path = os.path.join(_scratch_folder(os.path.dirname(path), e), os.path.basename(path))
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
        stale = glob.glob(os.path.join(glob.escape(folder), glob.escape(stem) + ".*"))
        if not stale:
            raise
        for f in stale:
            try:
                os.unlink(f)
            except OSError:
                pass
        return getattr(module, name)(*args)


def _holds(path, source):
    try:
        with open(path) as f:
            return f.read() == source
    except (OSError, UnicodeDecodeError):
        return False


def _runtime_key():
    # Numba's cache keys on the generated file only; the jitted helpers it calls live in
    # backend/cpu.py and backend/simd.py (the rest it imports from here), so their source is
    # part of the generated file's name.
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
    readers = collections.Counter(v for e in eqns for v in e.ins)
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
