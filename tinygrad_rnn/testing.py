"""Tools for people who extend tinygrad_rnn: gradient checks in float64."""
import numpy as np

from . import init
from .compiler import CompileError, compile_cell
from .plugins import get_cell
from .rnn import RNN
from .tape import no_grad
from .tensor import Tensor


class GradcheckError(AssertionError):
    """Analytic and numerical gradients disagree."""


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


class CellReport:
    """What ``check_cell`` found: ``ok``, and one line per check (str() prints them)."""

    def __init__(self, cell):
        self.cell, self.lines, self.ok = cell, [], True

    def add(self, passed, what):
        self.ok &= bool(passed)
        self.lines.append(f"{'PASS' if passed else 'FAIL'}  {what}")

    def __str__(self):
        verdict = "all checks passed" if self.ok else "some checks FAILED"
        return "\n".join([f"check_cell {self.cell!r}: {verdict}"] + ["  " + l for l in self.lines])

    def __bool__(self):
        return self.ok

    __repr__ = __str__  # a report typed at the Python prompt shows itself


def check_cell(name_or_class, input_size=3, hidden_size=4, batch=2, seq_len=4, seed=0, **cell_options):
    """Check a cell against the plugin contract, for plugin authors.

    Checks: construction and parameters, ``init_state`` and ``step`` shapes and
    state count, float64 finite-difference gradients through ``seq_len`` steps
    with respect to the input, the initial state and every parameter, determinism,
    and (for cells with a fused kernel) fused == reference path. Returns a
    ``CellReport``; ``report.ok`` is the verdict, ``print(report)`` the details.
    ``cell_options`` go to the cell's constructor (``nonlinearity="relu"``, say).
    """
    cls = get_cell(name_or_class) if isinstance(name_or_class, str) else name_or_class
    report = CellReport(getattr(cls, "name", repr(cls)))
    try:
        init.manual_seed(seed)
        rnn = RNN(cls, input_size, hidden_size, dtype="float64", fused=False, **cell_options)
    except Exception as e:
        report.add(False, f"construct {cls.__name__}({input_size}, {hidden_size}): {type(e).__name__}: {e}")
        return report
    params = dict(rnn.named_parameters())
    report.add(len(params) > 0, f"has parameters: {', '.join(f'{k}{v.shape}' for k, v in params.items()) or 'none'}")
    cell = rnn.cells[0]
    rng = np.random.default_rng(seed)
    state0 = cell.init_state(batch, np.float64)
    ok = isinstance(state0, tuple) and len(state0) == cls.num_states and all(
        s.shape == (batch, hidden_size) for s in state0)
    report.add(ok, f"init_state gives {cls.num_states} state(s) of shape {(batch, hidden_size)}")
    x = rng.standard_normal((seq_len, batch, input_size))
    states = [rng.standard_normal((1, batch, hidden_size)) * 0.5 for _ in range(cls.num_states)]
    try:
        out, final = rnn(Tensor(x), tuple(Tensor(s) for s in states))
        ok = out.shape == (seq_len, batch, hidden_size) and len(final) == cls.num_states
        report.add(ok, f"forward over {seq_len} steps: output {out.shape}, {len(final)} final state(s)")
    except Exception as e:
        report.add(False, f"forward: {type(e).__name__}: {e}")
        return report
    again, _ = rnn(Tensor(x), tuple(Tensor(s) for s in states))
    report.add(np.array_equal(out.numpy(), again.numpy()), "deterministic: same input, same output")
    report.add(bool(np.isfinite(out.numpy()).all()), "outputs are finite")

    names = list(params)

    def run(x, *rest):
        st, ps = rest[:cls.num_states], rest[cls.num_states:]
        saved = {n: getattr(cell, n.rsplit("_l", 1)[0]) for n in names}
        for n, p in zip(names, ps):
            object.__setattr__(cell, n.rsplit("_l", 1)[0], p)
        try:
            o, f = rnn(x, tuple(st))
            return o.sum(axis=0) * 0.7 + f[-1][0]
        finally:
            for n, p in saved.items():
                object.__setattr__(cell, n.rsplit("_l", 1)[0], p)

    labels = ["input x"] + [f"initial state {i}" for i in range(cls.num_states)] + names
    values = [x] + states + [p.numpy() for p in params.values()]
    for i, label in enumerate(labels):
        def only(v, i=i):  # differentiate one input at a time for a per-input report
            args = list(values)
            args[i] = v
            return run(*[Tensor(a) if j != i else a for j, a in enumerate(args)])
        try:
            gradcheck(only, [values[i]], seed=seed)
            report.add(True, f"gradient w.r.t. {label} matches finite differences")
        except GradcheckError as e:
            report.add(False, f"gradient w.r.t. {label}: {e}")
        except Exception as e:
            report.add(False, f"gradient w.r.t. {label}: {type(e).__name__}: {e}")
    report.add(*_compiled_matches_step(rnn, x, states))
    return report


def outputs_and_gradients(rnn, x, states, lengths=None, fused=None):
    """Run ``rnn`` with ``rnn.fused = fused`` (it stays set) and backpropagate a loss that
    reads every output and final state. Returns what two paths through a cell must agree
    on: the output, the final states, the gradients of ``x``, of the initial ``states``
    and of every parameter, and the per-step gradient norms of each state."""
    rnn.fused = fused
    rnn.zero_grad()
    xt = Tensor(x, requires_grad=True)
    st = tuple(Tensor(s, requires_grad=True) for s in states)
    out, final = rnn(xt, st, lengths=lengths, probe=True)
    ((out * out).sum() + sum((f * f).sum() for f in final)).backward()
    norms = [rnn.step_grad_norms(i) for i in range(rnn.num_states)]
    return [out.numpy(), *[f.numpy() for f in final], _grad(xt), *[_grad(s) for s in st],
            *[_grad(p) for p in rnn.parameters()], *norms]


def _grad(t):
    """``t``'s gradient; zeros where backward never reached it (a cell that ignores its input)."""
    return np.zeros(t.shape) if t.grad is None else t.grad.numpy()


def relative_differences(got, want):
    """``max |a - b| / max |b|`` for each pair of arrays of two ``outputs_and_gradients`` lists."""
    return [float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300)) for a, b in zip(got, want)]


def _compiled_matches_step(rnn, x, states):
    """(ok, message): the compiled kernels against the step path, with padding, in float64:
    outputs, final states, every gradient and the per-step gradient norms."""
    try:
        compile_cell(rnn.cells[0], np.float64)
    except CompileError as e:
        return True, f"not compiled, runs on the step path: {e}"
    T, B = x.shape[:2]
    lengths = np.maximum(1, T - np.arange(B) % T)
    try:
        compiled = outputs_and_gradients(rnn, x, states, lengths, fused=True)
        step = outputs_and_gradients(rnn, x, states, lengths, fused=False)
    except Exception as e:
        return False, f"compiled kernels: {type(e).__name__}: {e}"
    finally:
        rnn.fused = False
    err = max(relative_differences(compiled, step))
    return err < 1e-10, (f"compiled kernels equal the step path (outputs, states, gradients, per-step "
                         f"norms; max relative difference {err:.1e})")
