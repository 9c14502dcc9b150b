"""Tools for people who extend tinygrad_rnn: the cell contract as checks, and gradient checks.

The contract a cell must meet is the list ``CHECKS``: one function per check, each with a
docstring that says what it checks. Three ways run the same functions:

- ``parametrize_with_checks([MyCell])`` makes them pytest tests, one per (cell, check);
- ``check_cell(MyCell)`` runs them all and returns a report that prints itself;
- ``tinygrad-rnn gradcheck --cell NAME`` prints that report.

A check passes silently, raises ``AssertionError`` naming the check, the cell, what
differed, by how much and where, or raises ``CheckSkipped`` when it does not apply (a cell
that does not compile has nothing to compare with its step path).
"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

from . import checkpoint, init
from .cell import Cell
from .compiler import CompileError
from .plugins import get_cell
from .rnn import RNN
from .tape import no_grad
from .tensor import Tensor

DEFAULT_SIZES = {"input_size": 3, "hidden_size": 4, "batch": 3, "seq_len": 4, "seed": 0}
# Set to 1 to run the CUDA check in Numba's simulator (in a subprocess) where no GPU is
# present; the simulator runs every GPU thread in Python, so this takes seconds per cell.
CUDASIM_ENV = "TINYGRAD_RNN_CHECK_CUDASIM"


class GradcheckError(AssertionError):
    """Analytic and numerical gradients disagree."""


class CheckSkipped(Exception):
    """A check that does not apply to this cell here; the message says why."""


# ---- gradcheck of a function ------------------------------------------------------------
def _scalarise(out, rng):
    """Reduce an output to a scalar with fixed random weights (tests every element)."""
    if out.size == 1:
        return out.sum(), None
    w = Tensor(rng.standard_normal(out.shape), dtype=out.dtype)
    return (out * w).sum(), w


def gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-3, seed=0):
    """Compare the tape's gradients of ``fn(*inputs)`` with float64 central differences.

    ``inputs`` are arrays or Tensors; each float one is cast to float64 and
    differentiated. A non-scalar output is reduced with fixed random weights.
    Returns True, or raises ``GradcheckError`` naming the input, element and both values.
    """
    rng = np.random.default_rng(seed)
    tensors = []
    for x in inputs:
        data = x.numpy() if isinstance(x, Tensor) else np.asarray(x)
        is_float = data.dtype.kind == "f"
        tensors.append(Tensor(data.astype(np.float64) if is_float else data,
                              requires_grad=is_float))
    out = fn(*tensors)
    if not isinstance(out, Tensor):
        raise TypeError(f"gradcheck: fn must return a Tensor, got {type(out).__name__}")
    loss, weights = _scalarise(out, rng)
    if loss.requires_grad:  # else fn ignores its inputs: every gradient is 0, and is checked as such
        loss.backward()

    def value(args):
        with no_grad():
            o = fn(*args)
            return float((o.numpy() * (1.0 if weights is None else weights.numpy())).sum())

    for i, t in enumerate(tensors):
        if not t.requires_grad:
            continue
        analytic = np.zeros(t.shape) if t.grad is None else t.grad.numpy()
        numeric = np.zeros(t.shape)
        base = t.numpy().copy()
        for j in np.ndindex(*t.shape):
            shifted = []
            for sign in (1.0, -1.0):
                probe = base.copy()
                probe[j] += sign * eps
                args = list(tensors)
                args[i] = Tensor(probe)
                shifted.append(value(args))
            numeric[j] = (shifted[0] - shifted[1]) / (2 * eps)
        bad = ~np.isclose(analytic, numeric, atol=atol, rtol=rtol)
        if bad.any():
            j = tuple(int(v) for v in np.argwhere(bad)[0])
            raise GradcheckError(
                f"gradcheck: input {i} (shape {t.shape}) element {j}: analytic "
                f"{analytic[j]:.8g} vs numerical {numeric[j]:.8g}; "
                f"{int(bad.sum())} of {bad.size} elements differ "
                f"(max abs error {np.abs(analytic - numeric).max():.3g})")
    return True


# ---- the cell under test ------------------------------------------------------------------
class _Case:
    """One cell (a class, a registered name, or ``(either, {options})``) at the check sizes:
    builds its layers from one seed and draws the inputs every check uses."""

    def __init__(self, cell, sizes):
        self.cls, self.options = _resolve(cell)
        self.name = cell_id(cell)
        unknown = set(sizes) - set(DEFAULT_SIZES)
        if unknown:
            raise TypeError(f"unknown check size(s) {sorted(unknown)}; use {', '.join(DEFAULT_SIZES)}")
        s = {**DEFAULT_SIZES, **sizes}
        self.I, self.H, self.B, self.T, self.seed = (s[k] for k in DEFAULT_SIZES)
        self.sizes = s
        self.num_states = self.cls.num_states
        rng = np.random.default_rng(self.seed)
        self.x = rng.standard_normal((self.T, self.B, self.I))
        self.states = [rng.standard_normal((1, self.B, self.H)) * 0.5 for _ in range(self.num_states)]
        # padded rows of every length from T down: row b has T - b % T steps
        self.lengths = np.maximum(1, self.T - np.arange(self.B) % self.T)

    def rnn(self, dtype="float64", fused=None, seed=None):
        """A one-layer RNN of the cell, initialised from ``seed`` (the case's by default)
        without moving the user's ``tr.manual_seed`` stream."""
        with init.seeded(self.seed if seed is None else seed):
            return RNN(self.cls, self.I, self.H, dtype=dtype, fused=fused, **self.options)

    def fail(self, check, problem):
        raise AssertionError(f"{check} [cell {self.name!r}, input {self.I}, hidden {self.H}, "
                             f"batch {self.B}, T={self.T}]: {problem}")


def _split_options(cell):
    """``(cell, options)`` of a cell given alone or as ``(cell, {options})``."""
    if not isinstance(cell, tuple):
        return cell, {}
    if len(cell) != 2 or not isinstance(cell[1], dict):
        raise TypeError(f"a cell with constructor options is (cell, {{options}}), got {cell!r}")
    return cell


def _resolve(cell):
    cell, options = _split_options(cell)
    cls = get_cell(cell) if isinstance(cell, str) else cell
    if not (isinstance(cls, type) and issubclass(cls, Cell)):
        raise TypeError(f"a cell to check is a tr.Cell subclass, a registered name or "
                        f"(either, {{options}}), got {cell!r}")
    return cls, dict(options)


def cell_id(cell):
    """The name a cell goes by in check ids: its registry name, then its options' values."""
    cell, options = _split_options(cell)
    name = cell if isinstance(cell, str) else (getattr(cell, "name", None) or getattr(cell, "__name__", repr(cell)))
    return "_".join([str(name), *(str(v) for v in options.values())])


def _run(rnn, x, states, lengths=None, probe=False, device="cpu"):
    """Forward and backward through ``rnn`` with a loss that reads every output and final
    state (squared). Returns named NumPy arrays: what two runs must agree on."""
    rnn.zero_grad()
    xt = Tensor(x, device=device, requires_grad=True)
    st = tuple(Tensor(s, device=device, requires_grad=True) for s in states)
    out, final = rnn(xt, st, lengths=lengths, probe=probe)
    ((out * out).sum() + sum((f * f).sum() for f in final)).backward()
    got = {"output": out.numpy(), **{f"final state {i}": f.numpy() for i, f in enumerate(final)},
           "gradient of the input": _grad(xt),
           **{f"gradient of initial state {i}": _grad(s) for i, s in enumerate(st)},
           **{f"gradient of {n}": _grad(p) for n, p in rnn.named_parameters()}}
    if probe:
        got.update({f"per-step norms of state {i}": rnn.step_grad_norms(i) for i in range(rnn.num_states)})
    return got


def _grad(t):
    """``t``'s gradient; zeros where backward never reached it (a cell that ignores its input)."""
    return np.zeros(t.shape, t.dtype) if t.grad is None else t.grad.numpy()


def _where(diff):
    return tuple(int(v) for v in np.unravel_index(int(np.argmax(diff)), diff.shape))


def _compare(case, check, got, want, rtol, exact=False, labels=("got", "expected")):
    """Every array of ``got`` against ``want``'s, relative to the largest element of each;
    fails on the worst one, naming it, the element, both values and the difference."""
    for key, b in want.items():
        a = np.asarray(got[key], np.float64)
        b = np.asarray(b, np.float64)
        if a.shape != b.shape:
            case.fail(check, f"{key} has shape {a.shape} vs {b.shape}")
        if a.size == 0:
            continue
        diff = np.abs(a - b)
        scale = max(float(np.abs(b).max()), 1e-300)
        bad = diff.max() > 0 if exact else diff.max() > rtol * scale
        if bad or not np.isfinite(a).all():
            j = _where(np.where(np.isfinite(diff), diff, np.inf))
            bound = "must be identical" if exact else f"tolerance {rtol:g} x max |{labels[1]}| {scale:.3g}"
            case.fail(check, f"{key} differs by {diff[j]:.3g} at index {j} ({labels[0]} {a[j]:.10g}, "
                             f"{labels[1]} {b[j]:.10g}; {bound}); {int((diff > 0).sum())} of {diff.size} "
                             f"elements differ")


# ---- the checks ---------------------------------------------------------------------------
def check_contract(cell, **sizes):
    """Contract: names, state count, shapes and dtypes of init_state, step and the layer.

    ``name`` and ``num_states`` are set; parameters are floats; ``init_state`` gives
    ``num_states`` zero states of shape (batch, hidden) in the asked dtype; ``step`` returns
    ``num_states`` tensors of shape (batch, hidden) in the input's dtype (float32 and
    float64); the layer's output is (T, batch, hidden) and finite."""
    case, check = _Case(cell, sizes), "contract"
    cls = case.cls
    if not isinstance(getattr(cls, "name", None), str) or not cls.name:
        case.fail(check, f"class attribute name must be a non-empty string, got {getattr(cls, 'name', None)!r}")
    if not isinstance(cls.num_states, int) or isinstance(cls.num_states, bool) or cls.num_states < 1:
        case.fail(check, f"num_states must be an integer >= 1, got {cls.num_states!r}")
    for dtype in (np.float32, np.float64):
        rnn = case.rnn(np.dtype(dtype).name, fused=False)
        c = rnn.cells[0]
        for name, p in c.named_parameters():
            if p.dtype != dtype:
                case.fail(check, f"parameter {name!r} is {p.dtype} in a {np.dtype(dtype).name} layer")
        state = c.init_state(case.B, dtype)
        if not isinstance(state, tuple) or len(state) != case.num_states:
            got = len(state) if isinstance(state, (tuple, list)) else type(state).__name__
            case.fail(check, f"init_state({case.B}, {np.dtype(dtype).name}) must return a tuple of "
                             f"num_states={case.num_states} tensors, got {got}")
        for i, s in enumerate(state):
            if not isinstance(s, Tensor) or s.shape != (case.B, case.H) or s.dtype != dtype:
                case.fail(check, f"init_state state {i}: expected a {np.dtype(dtype).name} Tensor of shape "
                                 f"{(case.B, case.H)}, got {getattr(s, 'dtype', type(s).__name__)} "
                                 f"{getattr(s, 'shape', '')}")
            if np.any(s.numpy() != 0):
                case.fail(check, f"init_state state {i} is not all zeros")
        new = c.step(Tensor(case.x[0].astype(dtype)), tuple(Tensor(s[0].astype(dtype)) for s in case.states))
        new = (new,) if isinstance(new, Tensor) else new
        if not isinstance(new, (tuple, list)) or len(new) != case.num_states:
            got = len(new) if isinstance(new, (tuple, list)) else type(new).__name__
            case.fail(check, f"step() must return a tuple of num_states={case.num_states} tensors, got {got}")
        for i, n in enumerate(new):
            if not isinstance(n, Tensor) or n.shape != (case.B, case.H) or n.dtype != dtype:
                case.fail(check, f"step() state {i}: expected a {np.dtype(dtype).name} Tensor of shape "
                                 f"{(case.B, case.H)}, got {getattr(n, 'dtype', type(n).__name__)} "
                                 f"{getattr(n, 'shape', '')}")
    out, final = case.rnn()(case.x, tuple(case.states))
    if out.shape != (case.T, case.B, case.H) or len(final) != case.num_states:
        case.fail(check, f"the layer's output is {out.shape} with {len(final)} final state(s), expected "
                         f"{(case.T, case.B, case.H)} with {case.num_states}")
    if not np.isfinite(out.numpy()).all():
        t, b, h = _where(~np.isfinite(out.numpy()))
        case.fail(check, f"the output is not finite at step {t}, row {b}, unit {h}")


def check_determinism(cell, **sizes):
    """Determinism: the same seed and input give identical results.

    Two layers built from one seed have identical parameters, and one layer
    run twice on the same input gives identical outputs, final states and gradients, on the
    step path and on the compiled path."""
    case, check = _Case(cell, sizes), "determinism"
    a, b = case.rnn().state_dict(), case.rnn().state_dict()
    _compare(case, check, {f"parameter {k}": v for k, v in b.items()}, {f"parameter {k}": v for k, v in a.items()},
             0, exact=True, labels=("second build", "first build"))
    for fused in (False, None):
        rnn = case.rnn(fused=fused)
        first = _run(rnn, case.x, case.states)
        again = _run(rnn, case.x, case.states)
        path = "step path" if fused is False else "default path"
        _compare(case, check, {f"{k} ({path})": v for k, v in again.items()},
                 {f"{k} ({path})": v for k, v in first.items()}, 0, exact=True,
                 labels=("second run", "first run"))


def check_batch_independence(cell, **sizes):
    """Batch independence: no row of the batch affects another.

    Row b of the output and of every final state depends only on
    row b of the input and of the initial state, so it equals running row b alone."""
    case, check = _Case(cell, sizes), "batch_independence"
    rnn = case.rnn()
    with no_grad():
        out, final = rnn(case.x, tuple(case.states))
        for b in range(case.B):
            alone, alone_final = rnn(case.x[:, b:b + 1], tuple(s[:, b:b + 1] for s in case.states))
            want = {"output": alone.numpy(), **{f"final state {i}": f.numpy() for i, f in enumerate(alone_final)}}
            got = {"output": out.numpy()[:, b:b + 1],
                   **{f"final state {i}": f.numpy()[:, b:b + 1] for i, f in enumerate(final)}}
            _compare(case, check, {f"{k} of row {b} in the batch": v for k, v in got.items()},
                     {f"{k} of row {b} in the batch": v for k, v in want.items()}, 1e-10,
                     labels=("in the batch", "alone"))


def check_lengths(cell, **sizes):
    """Lengths: a padded row carries its state and equals its shorter sequence run alone.

    A padded row outputs zeros after its last step, its final state is its state
    at its last step, and its outputs and final state equal running the shorter sequence
    alone."""
    case, check = _Case(cell, sizes), "lengths"
    rnn = case.rnn()
    with no_grad():
        out, final = rnn(case.x, tuple(case.states), lengths=case.lengths)
        out = out.numpy()
        for b, n in enumerate(case.lengths):
            n = int(n)
            if np.any(out[n:, b] != 0):
                t = n + int(np.argmax(np.any(out[n:, b] != 0, axis=-1)))
                case.fail(check, f"row {b} (length {n}) outputs {out[t, b].max():.3g} at padded step {t}, not 0")
            alone, alone_final = rnn(case.x[:n, b:b + 1], tuple(s[:, b:b + 1] for s in case.states))
            want = {"outputs": alone.numpy()[:, 0],
                    **{f"final state {i}": f.numpy()[0, 0] for i, f in enumerate(alone_final)}}
            got = {"outputs": out[:n, b], **{f"final state {i}": f.numpy()[0, b] for i, f in enumerate(final)}}
            label = lambda k: f"{k} of row {b} (length {n} of {case.T})"  # noqa: E731
            _compare(case, check, {label(k): v for k, v in got.items()}, {label(k): v for k, v in want.items()},
                     1e-10, labels=("padded", "alone"))


def check_gradcheck(cell, eps=1e-6, atol=1e-5, rtol=1e-3, **sizes):
    """Gradients: the tape's gradients equal float64 finite differences through T steps.

    Central differences for every element of
    the input, of every initial state and of every parameter, against the tape's gradients
    of a loss that reads every output and final state (on the path the layer runs)."""
    case, check = _Case(cell, sizes), "gradcheck"
    rnn = case.rnn()
    rng = np.random.default_rng(case.seed + 1)
    weights = [rng.standard_normal((case.T, case.B, case.H))] + [
        rng.standard_normal((1, case.B, case.H)) for _ in range(case.num_states)]
    xt = Tensor(case.x.copy(), requires_grad=True)
    st = [Tensor(s.copy(), requires_grad=True) for s in case.states]

    def loss():
        out, final = rnn(xt, tuple(st))
        return (out * weights[0]).sum() + sum((f * w).sum() for f, w in zip(final, weights[1:]))

    rnn.zero_grad()
    loss().backward()
    targets = [("the input", xt)] + [(f"initial state {i}", s) for i, s in enumerate(st)] + [
        (f"parameter {n}", p) for n, p in rnn.named_parameters()]
    analytic = {label: _grad(t).copy() for label, t in targets}
    with no_grad():
        for label, t in targets:
            numeric = np.zeros(t.shape)
            for j in np.ndindex(*t.shape):
                kept = t.data[j]
                t.data[j] = kept + eps
                up = float(loss().numpy())
                t.data[j] = kept - eps
                down = float(loss().numpy())
                t.data[j] = kept
                numeric[j] = (up - down) / (2 * eps)
            a = analytic[label]
            bad = np.abs(a - numeric) > atol + rtol * np.abs(numeric)
            if bad.any():
                err = np.where(bad, np.abs(a - numeric), 0)
                j = _where(err)
                case.fail(check, f"gradient of {label} (shape {t.shape}) at index {j}: tape {a[j]:.8g}, "
                                 f"finite differences {numeric[j]:.8g}, differ by {err[j]:.3g} "
                                 f"(tolerance {atol:g} + {rtol:g} x |fd|); {int(bad.sum())} of {bad.size} differ")


def check_compiled_matches_step(cell, **sizes):
    """Compiled against step: the compiled kernels equal the step path to 1e-10.

    The kernels the compiler generates from ``step`` (or a
    hand-written ``forward_sequence``) give the step path's outputs, final states, every
    gradient and per-step gradient norms, with padded rows, in float64 (to 1e-10 relative).
    Skipped, with the compiler's reason, for a cell that does not compile."""
    case, check = _Case(cell, sizes), "compiled_matches_step"
    compiled = case.rnn(fused=True)
    try:
        got = _run(compiled, case.x, case.states, case.lengths, probe=True)
    except CompileError as e:
        raise CheckSkipped(f"not compiled, runs on the step path: {e}") from None
    want = _run(case.rnn(fused=False), case.x, case.states, case.lengths, probe=True)
    _compare(case, check, got, want, 1e-10, labels=("compiled", "step"))


def check_cuda_matches_cpu(cell, **sizes):
    """CUDA against CPU: the layer on the GPU equals the CPU's to 1e-10.

    The layer on the GPU gives the CPU's outputs, final states, every
    gradient and per-step norms, with padded rows, in float64 (to 1e-10 relative). Runs on
    a GPU; without one, in Numba's simulator in a subprocess when TINYGRAD_RNN_CHECK_CUDASIM=1
    (slow); else skipped."""
    case = _Case(cell, sizes)
    simulating = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
    if not simulating:
        from .backend import cuda_available
        ok, why = cuda_available()
        if ok:
            return _cuda_compare(case)
    if os.environ.get(CUDASIM_ENV) != "1":
        raise CheckSkipped(f"no GPU; set {CUDASIM_ENV}=1 to run it in Numba's simulator (slow)")
    if simulating:
        return _cuda_compare(case)
    _cuda_in_simulator(cell, case)


def _cuda_compare(case):
    from .backend import cuda_available
    ok, why = cuda_available()
    if not ok:
        raise CheckSkipped(f"no CUDA device or simulator: {why}")
    want = _run(case.rnn(), case.x, case.states, case.lengths, probe=True)
    got = _run(case.rnn().to("cuda"), case.x, case.states, case.lengths, probe=True, device="cuda")
    _compare(case, "cuda_matches_cpu", got, want, 1e-10, labels=("cuda", "cpu"))


def _cuda_in_simulator(cell, case):
    """Run the CUDA check in a fresh process with the simulator on (it must be chosen before
    numba.cuda is imported); the class travels as module + name, or as its registered name."""
    cls, options = case.cls, case.options
    from .plugins import plugin_files
    spec = {"module": cls.__module__, "qualname": cls.__qualname__, "name": cls.name,
            "options": options, "sizes": case.sizes}
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1",
               PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    files = [path for where, path in plugin_files() if where != "plugin"]  # installed ones load anyway
    if files:
        env["TINYGRAD_RNN_PLUGINS"] = os.pathsep.join(dict.fromkeys(files))
    code = "import sys, json; from tinygrad_rnn.testing import _cuda_child; _cuda_child(json.loads(sys.argv[1]))"
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], env=env, capture_output=True,
                          text=True)
    last = (proc.stdout.strip().splitlines() or [""])[-1]
    if proc.returncode == 0 and last.startswith("SKIP "):
        raise CheckSkipped(last[5:])
    if proc.returncode != 0:
        lines = [l for l in proc.stderr.strip().splitlines() if l.strip()]
        raise AssertionError(lines[-1] if lines else f"the simulator subprocess exited with {proc.returncode}")


def _cuda_child(spec):
    import importlib
    from .plugins import list_cells
    list_cells()  # loads the plugins (TINYGRAD_RNN_PLUGINS too), whose modules a class may live in
    try:
        module = sys.modules.get(spec["module"]) or importlib.import_module(spec["module"])
        cls = module
        for part in spec["qualname"].split("."):
            cls = getattr(cls, part)
    except (ImportError, AttributeError):
        cls = get_cell(spec["name"])
    try:
        _cuda_compare(_Case((cls, spec["options"]), spec["sizes"]))
    except CheckSkipped as e:
        print(f"SKIP {e}")
        return
    except AssertionError as e:
        sys.exit(str(e).replace("\n", " "))  # the parent raises it again, from the last line
    print("PASS")


def check_float32_matches_float64(cell, **sizes):
    """float32 against float64: the float32 layer agrees with float64 to 1e-4.

    With the same parameters, a float32 layer's outputs, final
    states and gradients equal the float64 layer's to 1e-4 relative (of each array's largest
    element), and are float32."""
    case, check = _Case(cell, sizes), "float32_matches_float64"
    wide = case.rnn("float64")
    narrow = case.rnn("float32")
    narrow.load_state_dict(wide.state_dict())
    x32 = case.x.astype(np.float32)
    s32 = [s.astype(np.float32) for s in case.states]
    got = _run(narrow, x32, s32)
    for key, v in got.items():
        if v.dtype != np.float32:
            case.fail(check, f"{key} of the float32 layer is {v.dtype}")
    want = _run(wide, x32.astype(np.float64), [s.astype(np.float64) for s in s32])
    _compare(case, check, got, want, 1e-4, labels=("float32", "float64"))


def check_state_dict_round_trip(cell, **sizes):
    """state_dict round trip: loading a state_dict reproduces the layer exactly.

    A layer built from another seed, given this layer's
    ``state_dict``, has the same parameter names, shapes and values and computes identical
    outputs; ``state_dict`` returns copies (changing one leaves the layer alone)."""
    case, check = _Case(cell, sizes), "state_dict_round_trip"
    src, dst = case.rnn(), case.rnn(seed=case.seed + 1)
    sd = src.state_dict()
    dst.load_state_dict(sd)
    _compare(case, check, dst.state_dict(), sd, 0, exact=True, labels=("loaded", "saved"))
    with no_grad():
        want, got = src(case.x)[0].numpy(), dst(case.x)[0].numpy()
    _compare(case, check, {"output after loading": got}, {"output after loading": want}, 0, exact=True,
             labels=("loaded", "original"))
    for name, arr in sd.items():
        if arr.size:
            arr.flat[0] += 1.0
            if src.state_dict()[name].flat[0] == arr.flat[0]:
                case.fail(check, f"state_dict()[{name!r}] is the parameter itself, not a copy")


def check_checkpoint_round_trip(cell, **sizes):
    """Checkpoint round trip: parameters saved and loaded reproduce the layer exactly.

    The parameters saved with ``tr.checkpoint.save`` and read back
    with ``tr.checkpoint.load`` into a layer built from another seed give identical
    parameters (names, shapes, dtypes, values) and outputs."""
    case, check = _Case(cell, sizes), "checkpoint_round_trip"
    for dtype in ("float32", "float64"):
        src, dst = case.rnn(dtype), case.rnn(dtype, seed=case.seed + 1)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "cell-check.npz")
            checkpoint.save(path, {"check": "cell"}, {f"param/{k}": v for k, v in src.state_dict().items()})
            meta, arrays = checkpoint.load(path)
        params = checkpoint.section(arrays, "param")
        for name, v in src.state_dict().items():
            if name not in params or params[name].dtype != v.dtype:
                case.fail(check, f"{dtype} parameter {name!r} came back as "
                                 f"{params[name].dtype if name in params else 'nothing'}")
        dst.load_state_dict(params)
        _compare(case, check, {f"{k} ({dtype})": v for k, v in dst.state_dict().items()},
                 {f"{k} ({dtype})": v for k, v in src.state_dict().items()}, 0, exact=True,
                 labels=("loaded", "saved"))
        with no_grad():
            want, got = src(case.x.astype(dtype))[0].numpy(), dst(case.x.astype(dtype))[0].numpy()
        _compare(case, check, {f"output ({dtype})": got}, {f"output ({dtype})": want}, 0, exact=True,
                 labels=("loaded", "saved"))


CHECKS = (check_contract, check_determinism, check_batch_independence, check_lengths, check_gradcheck,
          check_compiled_matches_step, check_cuda_matches_cpu, check_float32_matches_float64,
          check_state_dict_round_trip, check_checkpoint_round_trip)
CHECK_NAMES = tuple(c.__name__[len("check_"):] for c in CHECKS)


def _summary(fn):
    """A check's first docstring line, after its title: what a pass means."""
    first = fn.__doc__.strip().splitlines()[0]
    return first.split(": ", 1)[1] if ": " in first else first


# ---- three ways to run them ---------------------------------------------------------------
class CellCheck:
    """One check bound to the sizes it runs at; ``check(cell)`` runs it, and under pytest a
    ``CheckSkipped`` becomes a skip. ``name`` is the id part, ``__doc__`` the check's."""

    def __init__(self, fn, sizes):
        self.fn, self.sizes = fn, dict(sizes)
        self.name = fn.__name__[len("check_"):]
        self.__doc__ = fn.__doc__

    def __call__(self, cell):
        try:
            self.fn(cell, **self.sizes)
        except CheckSkipped as e:
            import pytest
            pytest.skip(str(e))

    def __repr__(self):
        return self.name


def parametrize_with_checks(cells, *, expected_failed_checks=None, **sizes):
    """A ``pytest.mark.parametrize`` over (cell, check) for every cell and every check::

        from tinygrad_rnn.testing import parametrize_with_checks

        @parametrize_with_checks([MyCell])          # classes or registered names
        def test_my_cell(cell, check):
            check(cell)

    ``cells`` are ``tr.Cell`` subclasses, registered names, or ``(either, {options})`` for a
    cell's constructor options; the test gets the class (``(class, options)``). Ids read ``<cell>-<check>`` (``mycell-gradcheck``, so
    ``pytest -k gradcheck`` runs one check for every cell). ``expected_failed_checks`` maps a
    check name (or ``<cell>-<check>`` for one cell) to the reason it fails: those tests are
    strict xfails (one that starts passing is reported, so the entry can go). ``sizes``:
    ``input_size``, ``hidden_size``, ``batch``, ``seq_len``, ``seed`` (defaults
    {DEFAULT_SIZES}).
    """
    import pytest
    unknown = set(sizes) - set(DEFAULT_SIZES)
    if unknown:
        raise TypeError(f"parametrize_with_checks: unknown size(s) {sorted(unknown)}; use {', '.join(DEFAULT_SIZES)}")
    for name, value in sizes.items():
        least = 0 if name == "seed" else 1
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise ValueError(f"parametrize_with_checks: {name} must be an integer >= {least}, got {value!r}")
    if isinstance(cells, (str, type)):  # a lone name is iterable: 'rnn' would be cells 'r', 'n', 'n'
        raise TypeError(f"parametrize_with_checks: cells is a list of cells, got {cells!r}; "
                        f"write [{cells!r}]" if isinstance(cells, str) else
                        f"parametrize_with_checks: cells is a list of cells, got {cells!r}; write [{cells.__name__}]")
    cells = list(cells)
    expected = dict(expected_failed_checks or {})
    ids = [cell_id(c) for c in cells]
    valid = set(CHECK_NAMES) | {f"{i}-{n}" for i in ids for n in CHECK_NAMES}
    bad = sorted(set(expected) - valid)
    if bad:
        raise ValueError(f"parametrize_with_checks: expected_failed_checks names unknown check(s) {bad}; "
                         f"checks are {', '.join(CHECK_NAMES)} (or <cell>-<check> for one cell)")
    params = []
    for cell, cid in zip(cells, ids):
        # Names are looked up now, at collection: a typo fails here, naming it, and the tests
        # get the class itself, whatever happens to the registry before they run.
        cls, options = _resolve(cell)
        cell = (cls, options) if options else cls
        for fn in CHECKS:
            check = CellCheck(fn, sizes)
            reason = expected.get(f"{cid}-{check.name}", expected.get(check.name))
            marks = [pytest.mark.xfail(reason=reason, strict=True, raises=AssertionError)] if reason else []
            params.append(pytest.param(cell, check, id=f"{cid}-{check.name}", marks=marks))
    return pytest.mark.parametrize("cell, check", params)


parametrize_with_checks.__doc__ = parametrize_with_checks.__doc__.replace("{DEFAULT_SIZES}", str(DEFAULT_SIZES))


class CellReport:
    """What ``check_cell`` found: ``ok``, ``results`` (check name -> "pass", "skip" or
    "fail"), and one line per check (str() prints them)."""

    def __init__(self, cell):
        self.cell, self.lines, self.ok, self.results = cell, [], True, {}

    def add(self, status, name, what):
        self.results[name] = status
        self.ok &= status != "fail"
        self.lines.append(f"{status.upper():4}  {name}: {what}")

    def __str__(self):
        verdict = "all checks passed" if self.ok else "some checks FAILED"
        return "\n".join([f"check_cell {self.cell!r}: {verdict}"] + ["  " + l for l in self.lines])

    def __bool__(self):
        return self.ok

    __repr__ = __str__  # a report typed at the Python prompt shows itself


def check_cell(name_or_class, input_size=3, hidden_size=4, batch=3, seq_len=4, seed=0, **cell_options):
    """Run every check of ``CHECKS`` on a cell (the plugin contract) and return a
    ``CellReport``: ``report.ok`` is the verdict, ``print(report)`` one line per check,
    passed, skipped (and why) or failed (and what differed, by how much, where).
    ``cell_options`` go to the cell's constructor (``nonlinearity="relu"``, say).
    """
    cell = (name_or_class, cell_options) if cell_options else name_or_class
    report = CellReport(cell_id(cell))
    sizes = dict(input_size=input_size, hidden_size=hidden_size, batch=batch, seq_len=seq_len, seed=seed)
    for fn in CHECKS:
        name = fn.__name__[len("check_"):]
        try:
            fn(cell, **sizes)
            report.add("pass", name, _summary(fn))
        except CheckSkipped as e:
            report.add("skip", name, str(e))
        except AssertionError as e:
            msg = str(e)
            report.add("fail", name, msg[len(name) + 1:] if msg.startswith(name + " [") else msg)
        except Exception as e:  # the cell raised: that is a failed check, reported in one line
            first = (str(e).strip().splitlines() or [""])[0]
            report.add("fail", name, f"{type(e).__name__}: {first}")
            if name == "contract":
                break  # nothing else can run on a cell that does not build or step
    return report


def outputs_and_gradients(rnn, x, states, lengths=None, fused=None):
    """Run ``rnn`` with ``rnn.fused = fused`` (it stays set) and backpropagate a loss that
    reads every output and final state. Returns what two paths through a cell must agree
    on: the output, the final states, the gradients of ``x``, of the initial ``states``
    and of every parameter, and the per-step gradient norms of each state."""
    rnn.fused = fused
    return list(_run(rnn, x, states, lengths, probe=True).values())


def relative_differences(got, want):
    """``max |a - b| / max |b|`` for each pair of arrays of two ``outputs_and_gradients`` lists."""
    # in float64: a float32 quotient's floor of 1e-300 is 0, and two zero arrays gave 0 / 0 = NaN
    pairs = ((np.asarray(a, np.float64), np.asarray(b, np.float64)) for a, b in zip(got, want))
    return [float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300)) for a, b in pairs]
