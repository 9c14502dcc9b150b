"""Print the kernel IR for ``numba.cuda``: one block per batch row, its threads striding
over the row (one thread per (batch, hidden) element when the row fits in a block).

Each IR statement has one form here:
- ``Loop``: ``for j in range(tx, W, nt)``, then a barrier (its statements touch element
  j only, so a thread reads what the same thread wrote);
- ``Set`` adding to a batch-free gradient (every row adds to it): an atomic add;
- ``Reduce`` and ``Norm`` (running totals over the row): thread 0, then a barrier;
- per-row scratch: a (B, W) buffer the driver allocates once;
- ``Padded``: ``return`` after its statements (the whole block takes the branch).

The host drivers follow the same driver description as the CPU's (``lower.py``): per
step, the recurrent products (a tiled GEMM) and one launch per stage. A persistent
kernel would run that time loop inside one launch, one block per row: every stage
already works on its own row only, so the launches become barriers between stages
and the per-step GEMM becomes an in-kernel product of the block's row.
"""
import hashlib
import inspect

from . import cuda_runtime
from .kir import MIN_MAX, ROW_MAX, Let, Loop, Norm, Padded, Reduce, RowPrinter, Set, index_of, source
from .lower import Generator, const_literal, lhs_at

# numba.cuda's math module spells these; the sigmoid is backend.cuda's formula (it never
# overflows, unlike 1 / (1 + exp(-x))).
_CALLS = {"tanh": "math.tanh({0})", "sigmoid": "(KHALF + KHALF * math.tanh(KHALF * {0}))", "exp": "math.exp({0})",
          "log": "math.log({0})", "sqrt": "math.sqrt({0})", **MIN_MAX}


class _KernelPrinter(RowPrinter):
    def call(self, fn, args):
        return _CALLS[fn].format(*args)

    def lines(self, stmts, pad, serial=False):
        """``serial``: inside a one-thread section (no strides, no barriers)."""
        out, src = [], lambda e: source(e, self)
        barrier = [] if serial else [f"{pad}cuda.syncthreads()"]
        one = (lambda why: []) if serial else (lambda why: [f"{pad}if tx == 0:  # {why}: one thread"])
        inner = pad if serial else pad + "    "
        for s in stmts:
            if isinstance(s, Loop):
                out.append(f"{pad}for j in range({s.width}):" if serial else f"{pad}for j in range(tx, {s.width}, nt):")
                out += self.lines(s.body, pad + "    ", serial) + barrier
            elif isinstance(s, Set):
                buf, value = s.target.args[0], src(s.value)
                if buf.shared and s.add:
                    out.append(f"{pad}cuda.atomic.add({buf.name}, {index_of(s.target)}, {value})")
                else:
                    out.append(f"{pad}{src(s.target)} {'+=' if s.add else '='} {value}")
            elif isinstance(s, Let):
                out.append(f"{pad}{s.name} = {src(s.value)}")
            elif isinstance(s, Reduce):
                update = (f"{s.name} += {src(s.update)}" if s.how == "+" else
                          f"{s.name} = {ROW_MAX.format(s.name, src(s.update))}")
                out += one("a running total over the row")
                out += [f"{inner}{s.name} = {src(s.init)}", f"{inner}for j in range({s.width}):", f"{inner}    {update}"]
                out += self.lines(s.then, inner, serial=True) + barrier
            elif isinstance(s, Norm):
                x = src(s.row)
                out += one("this row's share of the state's squared gradient norm")
                out += [f"{inner}sqa = 0.0", f"{inner}for j in range({s.width}):", f"{inner}    sqa += {x} * {x}",
                        f"{inner}cuda.atomic.add(SQ, ({s.i}, t), sqa)"] + barrier
            elif isinstance(s, Padded):
                out.append(f"{pad}if M[t, b] == 0:  # past this sequence's length")
                out += self.lines(s.body, pad + "    ", serial) + [f"{pad}    return"]
        return out


def render_kernel(kern):
    """(source, the arguments it is launched with, [(scratch name, width)])."""
    p = _KernelPrinter()
    body = p.lines(kern.body, "    ")
    used = {b.name for b in kern.bufs()}
    scratch = [(b.name, b.width) for b in kern.bufs() if b.scratch]
    head = ["    b = cuda.blockIdx.x", "    tx = cuda.threadIdx.x", "    nt = cuda.blockDim.x"]
    head += [f"    sp{i} = S0_{i} if t == 0 else Y[t - 1, {i}]" for i in range(kern.states) if f"sp{i}" in used]
    head += [f"    {name} = {view}" for name, view in p.bound.items()]
    head += [f"    {name} = SCR_{name}[b]" for name, _ in scratch]
    args = [*kern.args, *(f"SCR_{n}" for n, _ in scratch)]
    return "\n".join([f"@kernel\ndef {kern.name}(t, I, H, M, {', '.join(args)}):", f'    """{kern.doc}"""',
                      *head, *body]), args, scratch


def _lhs_every_step(lhs, width):
    """A product's left operand for all steps, contiguous (T, B, n)."""
    kind, index, lo, hi = lhs
    if kind == "state":
        return f"rt.api.stack_prev(S0_{index}, Y, {index}, {lo or 0}, {hi or width})"
    base = f"{kind}[:, {index}]" if index else kind
    return f"rt.api.contiguous({base}{f'[:, :, {lo}:{hi}]' if lo is not None else ''})"


def render_cuda(plan, dtype, header, sizes=None):
    """The generated CUDA module's source: stage kernels plus host drivers with the same
    ``forward``/``backward`` interface as the CPU module's (backend arrays in and out)."""
    m = Generator(plan, dtype, sizes).module()
    S = m.S
    runtime_hash = hashlib.sha256(inspect.getsource(cuda_runtime).encode()).hexdigest()[:12]
    out = [f'"""{header}"""', f"# cuda_runtime {runtime_hash}", "import math", "", "import numpy as np",
           "from numba import cuda", "", "from tinygrad_rnn.compiler import cuda_runtime as rt",
           "from tinygrad_rnn.compiler.cuda_runtime import kernel", "", f"DT = np.{m.dtype.name}"]
    out += [f"{name} = DT({const_literal(value)})" for value, name in m.consts.items()]
    out += ["KHALF = DT(0.5)", "", ""]
    built = {kern: render_kernel(kern) for kern in m.kernels}
    for text, _, _ in built.values():
        out += [text, "", ""]
    to_dev = [f"    {a} = rt.api.device({a})" for a in (*m.s0, *m.x, *m.a)]
    flat = [f"    A{n} = A{n}.reshape(-1)" for n in m.flat]
    threads = f"    NT = rt.threads_for(max({', '.join(m.widths)}, 1))"

    def scratch(stages):
        widths = {n: w for kern in stages.values() for n, w in built[kern][2]}
        return [f"    SCR_{n} = rt.api.empty((B, {w}), DT)" for n, w in widths.items()]

    def loop_body(steps, stages, gemm):
        """The time loop's body: a product's line from ``gemm(n, lhs, w)``, a stage's launch."""
        launch = lambda kern: f"        rt.api.launch({kern.name}, B, NT, (t, I, H, M, {', '.join(built[kern][1])}))"
        return [gemm(*step[1:]) if step[0] == "gemm" else launch(stages[step[1]]) for step in steps]

    res = [r for r, _ in m.residuals] + [g for g, *_ in m.products]
    packed = ", ".join(res) + ("," if len(res) == 1 else "")
    out += [f"def forward(I, H, M, {', '.join([*m.s0, *m.x, *m.a])}):",
            '    """Every state at every step, and what the backward keeps (device arrays)."""',
            "    T, B = M.shape", "    M = rt.api.device(M)", *to_dev, *flat, threads,
            f"    Y = rt.api.empty((T, {S}, B, H), DT)",
            *[f"    {r} = rt.api.empty((T, B, {w}), DT)" for r, w in m.residuals],
            *[f"    {g} = rt.api.empty((T, B, {w}), DT)" for g, w, *_ in m.products], *scratch(m.fwd),
            "    for t in range(T):",
            *loop_body(m.fwd_steps, m.fwd, lambda n, lhs, w: f"        rt.api.gemm({lhs_at(lhs)}, A{w}, G{n}[t])"),
            f"    return rt.api.wrap(Y), ({packed})", "", ""]
    out += [f"def backward(I, H, dY, Y, residuals, M, {', '.join([*m.s0, *m.x, *m.a])}):",
            '    """Gradients of the inputs, initial states and batch-free inputs, and per-step norms."""',
            "    T, B = M.shape", "    M = rt.api.device(M)", "    dY = rt.api.device(dY)", "    Y = rt.api.device(Y)",
            *to_dev, *flat, threads, *([f"    {packed} = residuals"] if res else []),
            *[f"    {d} = rt.api.empty((T, B, {w}), DT)" for d, w in m.dx],
            *[f"    DA{n} = rt.api.zeros(A{n}.shape, DT)" for n in range(len(m.a))],
            *[f"    GD{n} = rt.api.empty((T, B, {w}), DT)" for n, (_, w, *_) in enumerate(m.products) if f"GD{n}" not in m.shared_gd],
            *[f"    {gd} = {same}  # the same gradient" for gd, same in m.shared_gd.items()],
            *[f"    {c} = rt.api.zeros((B, {w}), DT)" for c, w in m.carries],
            *[f"    {e} = rt.api.empty((B, {w}), DT)" for e, w in m.ext],
            f"    SQ = rt.api.zeros(({S}, T), np.float64)", *scratch(m.bwd), "    for t in range(T - 1, -1, -1):",
            *loop_body(m.bwd_steps, m.bwd, lambda n, _, w: f"        rt.api.gemm(GD{n}[t], A{w}, GL{n}, trans_b=True)")]
    for n, (_, w_out, lhs, k_in, w) in enumerate(m.products):
        out.append(f"    rt.api.gemm({_lhs_every_step(lhs, k_in)}.reshape(T * B, {k_in}), "
                   f"GD{n}.reshape(T * B, {w_out}), DA{w}, trans_a=True, accumulate=True)")
    wrap = lambda names: ", ".join(f"rt.api.wrap({d})" for d in names)
    dstates = [" + ".join(f"rt.api.wrap({c})" for c in cs) for cs in m.dstates]
    out += ["    # SQ: squared per-step norms, left on the device (read only when a probe asks)",
            f"    return ([{wrap(d for d, _ in m.dx)}], [{', '.join(dstates)}], "
            f"[{wrap(f'DA{n}' for n in range(len(m.a)))}], rt.api.wrap(SQ))", ""]
    return "\n".join(out)
