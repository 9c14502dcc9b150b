"""Print the kernel IR as plain Python for ``numba.njit``.

A stage kernel runs the rows ``b0..b1`` of one block of the batch: the jitted time
loop runs a block per core (``backend.threads.row_blocks``), each block through all T steps.
Each IR loop is one simple loop over the row, the form that vectorises (one
transcendental per loop: ``benchmarks/bench_kernels.py``). Arrays indexed by step are
bound once per kernel call (``X0_t = X0[t]``) and indexed ``[b, j]``: a view made per
row costs about 5 ns (Numba builds the array struct and counts references), and a stage
binds a dozen or two for every row of every step.
"""
from .kir import MIN_MAX, ROW_MAX, Let, Loop, Norm, Padded, Reduce, RowPrinter, Set, elements, lit, remap, source, walk
from .lower import Generator, const_literal, lhs_at

# tanh and the sigmoid by dtype: float32's vectorise (``backend/cpu.py``)
_CALLS = {"exp": "math.exp({0})", "log": "math.log({0})", "sqrt": "math.sqrt({0})", **MIN_MAX}
_BY_DTYPE = {"float32": {"tanh": "tanh_f32({0})", "sigmoid": "sigmoid_f32({0})"},
             "float64": {"tanh": "math.tanh({0})", "sigmoid": "sigmoid_f64({0})"}}
_IMPORTED = {"float32": "sigmoid_f32, tanh_f32", "float64": "sigmoid_f64"}  # what _BY_DTYPE calls from backend.cpu


class _KernelPrinter(RowPrinter):
    def __init__(self, zero, dtype):
        super().__init__()
        self.zero, self.calls = zero, {**_CALLS, **_BY_DTYPE[dtype]}

    def call(self, fn, args):
        return self.calls[fn].format(*args)

    def lines(self, stmts, pad):
        out, src = [], lambda e: source(e, self)
        for s in stmts:
            if isinstance(s, Loop):
                out += [f"{pad}for j in range({s.width}):", *self.lines(s.body, pad + "    ")]
            elif isinstance(s, Set):
                out.append(f"{pad}{src(s.target)} {'+=' if s.add else '='} {src(s.value)}")
            elif isinstance(s, Let):
                out.append(f"{pad}{s.name} = {src(s.value)}")
            elif isinstance(s, Reduce):
                update = (f"{s.name} += {src(s.update)}" if s.how == "+" else
                          f"{s.name} = {ROW_MAX.format(s.name, src(s.update))}")
                out += [f"{pad}{s.name} = {src(s.init)}", f"{pad}for j in range({s.width}):", f"{pad}    {update}"]
                out += self.lines(s.then, pad)
            elif isinstance(s, Norm):
                x = src(s.row)
                out += [f"{pad}acc = {self.zero}", f"{pad}for j in range({s.width}):", f"{pad}    acc += {x} * {x}",
                        f"{pad}SQ[{s.i}, t] += acc"]
            elif isinstance(s, Padded):
                out.append(f"{pad}if M[t, b] == 0:  # past this sequence's length")
                out += self.lines(s.body, pad + "    ") + [f"{pad}    continue"]
        return out


def loop_scalars(kernels):
    """Names of the scratch rows that one loop of one kernel both writes and reads, element j
    at j, written before it is read: each is a scalar of that loop (``d22_j = ...``), not an
    array, which leaves the loop fewer loads and stores and LLVM fewer arrays whose overlap it
    must rule out before vectorising. One block, Intel Xeon, backward ms with / without:
    GRU 0.84 / 1.01 at hidden 32 and 5.29 / 5.57 at 128; LSTM 0.93 / 0.93 and 6.25 / 6.52."""
    loops, first, bad = {}, {}, set()
    stmts = [s for kern in kernels for s in walk(kern.body)]
    in_loops = {id(c) for s in stmts if isinstance(s, Loop) for c in s.body}
    for s in stmts:
        if isinstance(s, Loop):
            for c in s.body:
                for e in (e for e in elements([c]) if e.args[0].scratch):
                    loops.setdefault(e.args[0].name, set()).add(id(s))
                    first.setdefault(e.args[0].name, c)
                    if not isinstance(c, Set) or e.args[1:] != ("0", "0", "j"):
                        bad.add(e.args[0].name)
        elif id(s) not in in_loops:  # read or written outside a loop
            bad.update(e.args[0].name for e in elements([], [getattr(s, name) for name in s.EXPRS]))
    return {n for n, where in loops.items() if len(where) == 1 and n not in bad and _writes_whole(first[n], n)}


def _writes_whole(c, name):
    """Whether ``c`` writes row ``name`` whole, from other values: a loop scalar's first statement must."""
    reads = {e.args[0].name for e in elements([], [c.value])}
    return c.target.args[0].name == name and not c.add and name not in reads


def _as_loop_scalars(stmts, names):
    """Each loop's scratch rows in ``names`` made scalars ``<name>_j``, in place."""
    def read(e):
        return lit(f"{e.args[0].name}_j", e.gen) if e.args[0].name in names else e
    for loop in [s for s in walk(stmts) if isinstance(s, Loop)]:
        body = []
        for c in loop.body:
            value = remap(c.value, read)
            if c.target.kind == "el" and c.target.args[0].name in names:
                name = f"{c.target.args[0].name}_j"
                body.append(Let(name, lit(name, c.value.gen) + value if c.add else value))
            else:
                c.target, c.value = remap(c.target, read), value
                body.append(c)
        loop.body = body


def render_stage(kern, zero, dtype):
    """(the lines that run a stage at step t, inside the time loop; its scratch rows)."""
    p = _KernelPrinter(zero, dtype)
    body = p.lines(kern.body, "            ") or ["            pass"]
    used = {b.name for b in kern.bufs()}
    head = [f"        sp{i} = S0_{i} if t == 0 else Y[t - 1, {i}]" for i in range(kern.states) if f"sp{i}" in used]
    head += [f"        {name} = {view}" for name, view in p.bound.items()]
    return ([f"        # {kern.name}: {kern.doc}", *head, "        for b in range(b0, b1):", *body],
            [b for b in kern.bufs() if b.scratch])


def _weight_gradient(n, lhs, w):
    """``DA<w> += (product n's left operand at every step).T @ its gradient``. A state's
    operand at step t is the state of step t - 1, read in place from Y, plus the initial
    state's product with step 0's gradient."""
    kind, index, lo, hi = lhs
    cols = f"[..., {lo}:{hi}]" if lo is not None else ""
    if kind == "state":
        return (f"    DA{w} += (matmul_tn(Y[:-1, {index}]{cols}, GD{n}[1:]) + S0_{index}{cols}.T @ GD{n}[0])"
                f".reshape(DA{w}.shape)")
    every_step = (f"{kind}[:, {index}]" if index else kind) + cols
    return f"    DA{w} += matmul_tn({every_step}, GD{n}).reshape(DA{w}.shape)"


def render(plan, dtype, header, sizes=None):
    """The generated module's source for ``plan`` in ``dtype``; ``sizes`` = (widths, slices)
    formulas by var id make it one module for every input and hidden size."""
    m = Generator(plan, dtype, sizes).module()
    S, rs, gs = m.S, [r for r, _ in m.residuals], [g for g, *_ in m.products]
    at = [f"P{w}" for w in m.weights]
    dx, da, gd = [d for d, _ in m.dx], [f"DA{n}" for n in range(len(m.a))], [f"GD{n}" for n in range(len(m.products))]
    carries, ext = [c for c, _ in m.carries], [e for e, _ in m.ext]
    # A product's result that no backward kernel reads and no weight gradient needs lives for
    # one step: a (B, w) block of rows, not a (T, B, w) residual (the LSTM's at hidden 512: 26
    # MB a layer, written and read once a step).
    kept = {b.name for k in m.bwd.values() for b in k.bufs()} | {lhs[0] for _, _, lhs, _, _ in m.products}
    one_step = {g for g in gs if g not in kept}
    for buf in {b for k in m.fwd.values() for b in k.bufs() if b.name in one_step}:
        buf.lead = ""
    fwd_args = ["T", "b0", "b1", "I", "H", "M", "Y", *m.s0, *m.x, *m.a, *at, *rs, *gs]
    gs = [g for g in gs if g not in one_step]
    bwd_args = ["T", "b0", "b1", "I", "H", "M", "dY", "Y", *m.s0, *m.x, *m.a, *at, *rs, *gs, *dx, *da, *gd, *carries,
                *ext, "SQ"]
    out = [f'"""{header}"""', "import math", "", "import numpy as np", "",
           f"from tinygrad_rnn.backend.cpu import {_IMPORTED[m.dtype.name]}",
           "from tinygrad_rnn.backend.simd import mm_panels, pack_panels, panel_width",
           "from tinygrad_rnn.compiler.runtime import in_blocks, kernel, matmul_tn, row_blocks", "",
           f"DT = np.{m.dtype.name}", "PANEL = panel_width(DT)"]
    out += [f"{name} = DT({const_literal(value)})" for value, name in m.consts.items()]
    out += ["# which traced values the residuals and the state outputs hold (for diagnostics)",
            f"RESIDUAL_IDS = ({''.join(f'{i}, ' for i in m.residual_ids)})",
            f"OUTPUT_IDS = ({''.join(f'{i}, ' for i in m.output_ids)})", "", ""]
    # The in-kernel product reads each weight packed in panels (P<n>): the forward's is
    # the weight's, the backward's (a product with the weight's transpose) its transpose's.
    # Each stage runs inline in the time loop: one function for Numba to compile per
    # direction. Its scratch rows come from the driver, one set per block: np.empty inside
    # a kernel is an overload, which Numba compiles again in every process (0.1 s).
    scratch_rows = {}
    for name, args, steps, kernels, order in (
            ("_forward_loop", fwd_args, m.fwd_steps, m.fwd, "for t in range(T):"),
            ("_backward_loop", bwd_args, m.bwd_steps, m.bwd, "for t in range(T - 1, -1, -1):")):
        body, scratch = [], {}
        scalars = loop_scalars([kernels[step[1]] for step in steps if step[0] == "stage"])
        for step in steps:
            if step[0] == "stage":
                _as_loop_scalars(kernels[step[1]].body, scalars)
                lines, bufs = render_stage(kernels[step[1]], m.zero, m.dtype.name)
                body += lines
                scratch.update((b.name, b.width) for b in bufs)
            elif name == "_forward_loop":
                _, n, lhs, w = step
                rows = "b0:b1" if f"G{n}" in one_step else "t, b0:b1"
                body.append(f"        mm_panels({lhs_at(lhs, 'b0:b1')}, P{w}, G{n}[{rows}])")
            else:
                _, n, _, w = step
                body.append(f"        mm_panels(GD{n}[t, b0:b1], P{w}, GL{n}[b0:b1])")
        scratch_rows[name] = [f"np.empty({w}, DT)" for w in scratch.values()]
        out += ["@kernel", f"def {name}({', '.join([*args, *scratch])}):", f"    {order}", *body, "", ""]
    flat = [f"    A{n} = A{n}.reshape(-1)" for n in m.flat]
    step_flops = " + ".join(f"({k_in}) * ({w_out})" for _, w_out, _, k_in, _ in m.products) or "0"
    packed = [f"    P{n} = pack_panels(A{n}, PANEL)" for n in m.weights]
    packed_t = [f"    P{n} = pack_panels(A{n}.T, PANEL)" for n in m.weights]
    res = ", ".join(rs + gs) + ("," if len(rs + gs) == 1 else "")
    out += [f"def forward(I, H, M, {', '.join([*m.s0, *m.x, *m.a])}):", "    T, B = M.shape", *flat,
            f"    Y = np.empty((T, {S}, B, H), DT)",
            *[f"    {r} = np.empty((T, B, {w}), DT)" for r, w in m.residuals],
            *[f"    {g} = np.empty(({'' if g in one_step else 'T, '}B, {w}), DT)" for g, w, *_ in m.products], *packed,
            f"    blocks = row_blocks(B, B * ({step_flops}))",
            f"    in_blocks(blocks, lambda n, b0, b1: _forward_loop({', '.join(fwd_args + scratch_rows['_forward_loop'])}))",
            f"    return Y, ({res})", "", ""]
    per_block = [f"{a}[n]" if a in (*da, "SQ") else a for a in bwd_args]
    finish = [_weight_gradient(n, lhs, w) for n, (_, _, lhs, _, w) in enumerate(m.products)]
    out += [f"def backward(I, H, dY, Y, residuals, M, {', '.join([*m.s0, *m.x, *m.a])}):",
            "    T, B = M.shape", *flat, f"    {res} = residuals" if res else "",
            f"    blocks = row_blocks(B, B * ({step_flops}))",
            "    # what every row adds to (batch-free gradients, per-step norms): one partial per block",
            *[f"    {d} = np.empty((T, B, {w}), DT)" for d, w in m.dx],
            *[f"    DA{n} = np.zeros((len(blocks),) + A{n}.shape, DT)" for n in range(len(m.a))], *packed_t,
            *[f"    GD{n} = np.empty((T, B, {w}), DT)" for n, (_, w, *_) in enumerate(m.products) if f"GD{n}" not in m.shared_gd],
            *[f"    {gd} = {same}  # the same gradient" for gd, same in m.shared_gd.items()],
            *[f"    {c} = np.zeros((B, {w}), DT)" for c, w in m.carries],
            *[f"    {e} = np.empty((B, {w}), DT)" for e, w in m.ext],
            f"    SQ = np.zeros((len(blocks), {S}, T))",
            f"    in_blocks(blocks, lambda n, b0, b1: _backward_loop({', '.join(per_block + scratch_rows['_backward_loop'])}))",
            *[f"    {d} = {d}.sum(axis=0)" for d in (*da, "SQ")], *finish,
            f"    return [{', '.join(dx)}], [{', '.join(' + '.join(c) for c in m.dstates)}], [{', '.join(da)}], np.sqrt(SQ)", ""]
    return "\n".join(out)
