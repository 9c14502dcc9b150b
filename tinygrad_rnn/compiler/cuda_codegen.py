"""The same generated stage kernels, for numba.cuda: one block per batch row, its
threads striding over the row (one thread per (batch, hidden) element when the row
fits in a block), reductions per row.

The CPU renderer (``codegen.py``) writes each stage as a loop over rows whose body is a
short list of statements, each one of a few forms. Those forms map one to one onto a
block's work on its row, so the CUDA kernel is a rewrite of the CPU kernel's text:

- ``for b in range(b0, b1):``     -> ``b = cuda.blockIdx.x`` (one block per row; b0, b1 = 0, B)
- ``for j in range(W): ...``     -> ``for j in range(tx, W, nt): ...`` then a barrier
  (every statement of such a loop touches only element j of rows of width W)
- ``X[..., :] = Y`` row copies   -> the same, strided over the block's threads
- ``acc``/``cnt`` row reductions -> run by thread 0, then a barrier
- ``DA..[j] +=``, ``SQ[i, t] +=`` (shared by all rows) -> atomic adds
- per-row scratch ``np.empty(W)`` -> a (B, W) buffer the driver allocates once
- ``continue`` (a padded row)    -> ``return`` (the whole block takes the branch)

The host drivers loop over time like the CPU's Python loop: per step, the recurrent
products (a tiled GEMM) and one launch per stage.
"""
import hashlib
import inspect
import itertools
import re

from . import cuda_runtime
from .codegen import ROW_LOOP, Generator, _only_element_j, const_literal
from .trace import CompileError

_LOOP = re.compile(r"^for j in range\((.+?)\):(\s*#.*)?$")
_SLICE = re.compile(r"^(.*)\[([^\[\]]*:[^\[\]]*)\] (=|\+=) (.+?)(\s*#.*)?$")
_SQ = re.compile(r"^    sq\[\d+\] \+= ")
_SHARED_ADD = re.compile(r"^(\s*)(DA\d+|SQ)\[([^\[\]]*)\] \+= (.+)$")
_ALLOC = re.compile(r"^    (\w+) = np\.(empty|zeros)\((.+?)(, DT)?\)$")


def _unsupported(what):
    return CompileError(f"the CUDA renderer has no form for {what}; the cell runs its step op by op on the "
                        "GPU (please report it)")


def cudaize(src):
    """A CPU stage kernel's source -> (CUDA kernel source, [(scratch name, width)])."""
    lines = src.split("\n")
    head, doc = lines[1], lines[2]
    loop_at = lines.index(ROW_LOOP)
    pre, scratch = [], []
    for line in lines[3:loop_at]:
        m = _ALLOC.match(line)
        if m and m.group(1) == "sq":
            continue  # per-step norms go straight to SQ with atomics
        if m and m.group(2) == "zeros":
            raise _unsupported(f"zeroed per-row scratch ({line.strip()})")  # the driver's buffers are not zeroed
        if m:
            scratch.append((m.group(1), m.group(3)))
            pre.append(f"    {m.group(1)} = SCR_{m.group(1)}[b]")
        else:
            pre.append(line)
    body, post = [], []
    for line in lines[loop_at + 1:]:
        if line.startswith("        "):
            body.append(line[8:])
        elif line.strip():
            post.append(line)
    if any(not re.match(r"^    SQ\[\d+, t\] \+= sq\[\d+\]$", p) for p in post):
        raise _unsupported(f"statements after the row loop ({post})")
    args = head[head.index("(") + 1:head.rindex(")")]
    if scratch:
        args += ", " + ", ".join(f"SCR_{n}" for n, _ in scratch)
    name = head[4:head.index("(")]
    code = ["    b = cuda.blockIdx.x", "    tx = cuda.threadIdx.x", "    nt = cuda.blockDim.x", *pre]
    code += ["    " + s for s in _statements(body, itertools.count())]
    return "\n".join(["@kernel", f"def {name}({args}):", doc, _inline_calls("\n".join(code))]), scratch


# The CPU kernels call backend.cpu's scalar functions and Python's min and max; on the
# GPU they are written out (a call to a separate device function, or to numba.cuda's
# min/max, needs a GPU to compile, even ahead of time).
_INLINE = {"tanh_scalar": "math.tanh({0})", "sigmoid_scalar": "(KONE / (KONE + math.exp(-({0}))))",
           # Python's order: the first argument wins ties and NaNs
           "max": "(({1}) if ({1}) > ({0}) else ({0}))", "min": "(({1}) if ({1}) < ({0}) else ({0}))"}


def _inline_calls(text):
    for name, form in _INLINE.items():
        pattern = re.compile(rf"(?<![\w.]){name}\(")
        while True:
            m = pattern.search(text)
            if m is None:
                break
            args, depth, start = [], 0, m.end()
            for end in range(m.end(), len(text)):
                ch = text[end]
                if ch in "([":
                    depth += 1
                elif ch in ")]":
                    if depth == 0:
                        break
                    depth -= 1
                elif ch == "," and depth == 0:
                    args.append(text[start:end].strip())
                    start = end + 1
            args.append(text[start:end].strip())
            text = text[:m.start()] + form.format(*args) + text[end + 1:]
    return text


def _blocks_of(lines):
    """Split lines at one indentation level into statements (a line and its nested lines)."""
    stmts = []
    for line in lines:
        if line.startswith(" ") and stmts:
            stmts[-1].append(line)
        else:
            stmts.append([line])
    return stmts


def _statements(lines, names):
    """CUDA lines for the statements of a row (``names`` numbers the row views)."""
    stmts, out, n = [], [], 0
    for s in _blocks_of(lines):  # a norm's running total shares a loop with a copy: split them
        totals = [line for line in s[1:] if _LOOP.match(s[0]) and _SQ.match(line)]
        rest = [line for line in s[1:] if line not in totals]
        stmts += ([[s[0], *rest]] if rest or not totals else []) + [[s[0], line] for line in totals]
    open_loop = None  # (width, index in out of its barrier): a loop the next one may join
    while n < len(stmts):
        s = stmts[n]
        first = s[0]
        if first.startswith("if M[t, b] == 0:"):
            inner = [line[4:] for line in s[1:]]
            out.append(first)
            out += ["    " + x for x in _statements(inner, names)]
        elif first == "continue":
            out.append("return")
        elif first == "pass":
            out.append("pass")
        elif first.startswith(("acc = ", "cnt = ")):
            var = first.split(" ")[0]
            group = [s]
            while n + 1 < len(stmts) and re.search(rf"\b{var}\b", "\n".join(stmts[n + 1])):
                n += 1
                group.append(stmts[n])
            out.append("if tx == 0:  # a row reduction: one thread")
            out += ["    " + _shared_add(line) for g in group for line in g]
            out.append("cuda.syncthreads()")
        elif _LOOP.match(first) and len(s) == 2 and _SQ.match(s[1]):
            i = s[1][s[1].index("[") + 1:s[1].index("]")]
            out += ["if tx == 0:  # this row's share of the state's squared gradient norm",
                    "    sqa = 0.0", "    " + first, "        sqa " + s[1].strip()[len(f"sq[{i}] "):],
                    f"    cuda.atomic.add(SQ, ({i}, t), sqa)", "cuda.syncthreads()"]
        elif _LOOP.match(first):
            width = _LOOP.match(first).group(1)
            body = [_shared_add(line) for line in s[1:]]
            joins = all(_only_element_j(line) for line in s[1:])
            if joins and open_loop is not None and open_loop[0] == width and open_loop[1] == len(out) - 1:
                out[-1:] = body + ["cuda.syncthreads()"]  # element j only, both: one loop, one barrier
            else:
                out.append(f"for j in range(tx, {width}, nt):")
                out += body + ["cuda.syncthreads()"]
            open_loop = (width, len(out) - 1) if joins else None
            n += 1
            continue
        elif _SLICE.match(first) and len(s) == 1:
            target, index, op, value, _ = _SLICE.match(first).groups()
            view = f"_w{next(names)}"  # one name per view: numba types each once
            elem = value if re.fullmatch(r"-?[\d.]+|K\d+", value) else f"{value}[j]"
            out += [f"{view} = {target}[{index}]", f"for j in range(tx, {view}.shape[0], nt):",
                    f"    {view}[j] {op} {elem}", "cuda.syncthreads()"]
        elif re.match(r"^r[\d_]+ = ", first) and len(s) == 1:
            out.append(first)  # a row binding or a row scalar: every thread holds the same
        else:
            raise _unsupported(f"the generated statement {s!r}")
        open_loop = None
        n += 1
    return out


def _shared_add(line):
    """``DA..[i] += v`` / ``SQ[i, t] += v``: every row adds into them, so atomically."""
    m = _SHARED_ADD.match(line)
    if not m:
        return line
    indent, name, index, value = m.groups()
    index = f"({index})" if "," in index else index
    return f"{indent}cuda.atomic.add({name}, {index}, {value})"


def render_cuda(plan, dtype, header, sizes=None):
    """The generated CUDA module's source: stage kernels plus host drivers with the same
    ``forward``/``backward`` interface as the CPU module's (backend arrays in and out)."""
    return _CudaModule(Generator(plan, dtype, sizes)).render(header)


class _CudaModule:
    def __init__(self, gen):
        self.g = gen

    def render(self, header):
        g = self.g
        fwd_cpu, bwd_cpu = g.stage_kernels()
        fwd = {k: cudaize(src) for k, src in fwd_cpu.items()}
        bwd = {k: cudaize(src) for k, src in bwd_cpu.items()}
        S = len(g.states)
        names = g.array_names()
        s0, xs, As, rs, gs = names.s0, names.x, names.a, names.r, names.g
        gl, carry, ext, dxs, das, flat = names.gl, names.carry, names.ext, names.dx, names.da, names.flat
        runtime_hash = hashlib.sha256(inspect.getsource(cuda_runtime).encode()).hexdigest()[:12]
        out = [f'"""{header}"""', f"# cuda_runtime {runtime_hash}", "import math", "",
               "import numpy as np", "from numba import cuda", "",
               "from tinygrad_rnn.compiler import cuda_runtime as rt",
               "from tinygrad_rnn.compiler.cuda_runtime import kernel", "",
               f"DT = np.{g.dtype.name}"]
        out += [f"{name} = DT({const_literal(value)})" for value, name in g.consts.items()]
        out += ["KONE = DT(1.0)", "", ""]
        for k in sorted(fwd):
            out += [fwd[k][0], "", ""]
        for k in sorted(bwd, reverse=True):
            out += [bwd[k][0], "", ""]
        widths = sorted({g.W(v) for v in (*g.states, *(e.out for e in g.plan.step_eqns))})
        nt = f"rt.threads_for(max({', '.join(widths)}, 1))"
        to_dev = [f"    {a} = rt.api.device({a})" for a in (*s0, *xs, *As)]

        def scratch(kernels):
            seen = {}
            for _, sc in kernels.values():
                for name, width in sc:
                    seen.setdefault(name, width)
            return [f"    SCR_{n} = rt.api.empty((B, {w}), DT)" for n, w in seen.items()]

        def launch(src, name, sc):
            call = g._stage_call(src, name)
            args = call[call.index("(") + 1:-1]
            extra = "".join(f", SCR_{n}" for n, _ in sc)
            return f"rt.api.launch({name}, B, NT, ({args}{extra}))"

        # forward
        out += [f"def forward(I, H, M, {', '.join([*s0, *xs, *As])}):",
                '    """Every state at every step, and what the backward keeps (device arrays)."""',
                "    T, B = M.shape", "    b0, b1 = 0, B  # every row: one block of threads each", "    M = rt.api.device(M)",
                *to_dev, *flat,
                f"    NT = {nt}",
                f"    Y = rt.api.empty((T, {S}, B, H), DT)"]
        out += [f"    {a} = rt.api.empty((T, B, {g.W(v)}), DT)" for a, v in zip(rs, g.residuals)]
        out += [f"    G{n} = rt.api.empty((T, B, {g.W(e.out)}), DT)" for n, e in enumerate(g.gemms)]
        out += scratch(fwd)
        out += ["    for t in range(T):"]
        for k in range(g.top + 1):  # a stage's products run even when it has no kernel
            for n, e in enumerate(g.gemms):
                if g.level[e.out] == k:
                    out.append(f"        rt.api.gemm({g._lhs(e.ins[0])}, A{g.aux.index(e.ins[1])}, G{n}[t])")
            if k in fwd:
                out.append(f"        {launch(fwd_cpu[k], f'_forward_stage{k}', fwd[k][1])}")
        res = rs + gs
        out += [f"    return rt.api.wrap(Y), ({', '.join(res)}{',' if len(res) == 1 else ''})", "", ""]
        # backward
        out += [f"def backward(I, H, dY, Y, residuals, M, {', '.join([*s0, *xs, *As])}):",
                '    """Gradients of the inputs, initial states and batch-free inputs, and per-step norms."""',
                "    T, B = M.shape", "    b0, b1 = 0, B", "    M = rt.api.device(M)", "    dY = rt.api.device(dY)",
                "    Y = rt.api.device(Y)",
                *to_dev, *flat, f"    NT = {nt}"]
        if res:
            out.append(f"    {', '.join(res)}{',' if len(res) == 1 else ''} = residuals")
        out += [f"    DX{n} = rt.api.empty((T, B, {g.W(v)}), DT)" for n, v in enumerate(g.hoisted)]
        out += [f"    DA{n} = rt.api.zeros(A{n}.shape, DT)" for n in range(len(g.aux))]
        out += [f"    GD{n} = rt.api.empty((T, B, {g.W(e.out)}), DT)" for n, e in enumerate(g.gemms)]
        out += [f"    {c} = rt.api.zeros((B, {g._carry_width(c)}), DT)" for c in [*gl, *carry]]
        out += [f"    {e} = rt.api.empty((B, {g._ext_width(e)}), DT)" for e in ext]
        out += [f"    SQ = rt.api.zeros(({S}, T), np.float64)"]
        out += scratch(bwd)
        out += ["    for t in range(T - 1, -1, -1):"]
        for k in range(g.top, -1, -1):
            if k in bwd:
                out.append(f"        {launch(bwd_cpu[k], f'_backward_stage{k}', bwd[k][1])}")
            for n, e in enumerate(g.gemms):
                if g.level[e.out] == k:
                    out.append(f"        rt.api.gemm(GD{n}[t], A{g.aux.index(e.ins[1])}, GL{n}, trans_b=True)")
        for n, e in enumerate(g.gemms):
            lhs, w = e.ins[0], g.aux.index(e.ins[1])
            k_in, w_out = g.W(lhs), g.W(e.out)
            out.append(f"    rt.api.gemm({self._lhs_all(lhs)}.reshape(T * B, {k_in}), "
                       f"GD{n}.reshape(T * B, {w_out}), DA{w}, trans_a=True, accumulate=True)")
        dstates = [" + ".join(f"rt.api.wrap({c})" for c in g._carry_names(i)) for i in range(S)]
        out += ["    # SQ: squared per-step norms, left on the device (read only when a probe asks)",
                f"    return ([{', '.join(f'rt.api.wrap({d})' for d in dxs)}], [{', '.join(dstates)}], "
                f"[{', '.join(f'rt.api.wrap({d})' for d in das)}], rt.api.wrap(SQ))", ""]
        return "\n".join(out)

    def _lhs_all(self, v):
        """A recurrent product's left operand for all steps, contiguous (T, B, n)."""
        g = self.g
        base, lo, hi = v, "0", g.W(v)
        while base not in g.states and g.producer[base].op == "getitem":  # slices of slices compose
            inner_lo, _ = g.bounds(g.producer[base])
            lo, hi = f"({inner_lo}) + ({lo})", f"({inner_lo}) + ({hi})"
            base = g.producer[base].ins[0]
        if base in g.states:
            i = g.states.index(base)
            return f"rt.api.stack_prev(S0_{i}, Y, {i}, {lo}, {hi})"
        return f"rt.api.contiguous({g._lhs(v, every_step=True)})"
