"""Render a Plan as plain Python source for Numba: stage kernels and time-loop drivers.

Elementwise maths is not written here: the forward and the VJP of each primitive are
the op table's own lambdas (``ops.OPS[name].fwd`` / ``.vjp``), evaluated on symbols
(``Sym``) through a symbolic backend (``_SymBackend``) that prints expressions for
one element. Structural ops (last-axis slices, cat, row reductions) are index maps,
written out here with the same meaning as their table entries.

Layout of the generated module (all arrays C-contiguous):
- ``X<n>`` (T, B, w): hoisted inputs; ``S0_<i>`` (B, H): initial states; ``A<n>``: weights
  and other batch-free values; ``M`` (T, B): the mask; ``Y`` (T, S, B, H): every state.
- ``R_<v>`` (T, B, w): forward values kept for the backward or for a later stage;
  ``G<n>`` (T, B, w): recurrent products.
- Backward: ``DX<n>`` and ``DA<n>`` gradients, ``GD<n>`` product gradients (for the weight
  GEMMs at the end), ``GL<n>``/``CS_<i>_<k>``/``PASS_<i>`` the gradient carried to the
  previous step, ``E_<v>_<k>`` contributions from stage k to a value owned by an earlier stage.
- Kernels loop over the rows ``b0..b1`` of one block of the batch (the jitted loop runs a
  block per core, see ``runtime.row_blocks``); each op is one simple loop over the row, which is the form
  that vectorises (one transcendental per loop: ``benchmarks/bench_kernels.py``).
"""
import math
import re
from types import SimpleNamespace

import numpy as np

from .. import ops
from .plan import REDUCTIONS


# A stage kernel works on the rows b0..b1 of the batch: the jitted time loop runs one
# block of rows per core (``runtime.row_blocks``), each block through all T steps.
ROW_LOOP = "    for b in range(b0, b1):"


# ---- symbolic evaluation of the op table ------------------------------------------
class Sym:
    """An expression for one element, printed as Python source."""

    __slots__ = ("code", "boolean", "gen", "var", "inv", "leaf")

    def __init__(self, code, gen, boolean=False, var=None, inv=False, leaf=False):
        self.code, self.gen, self.boolean, self.var = code, gen, boolean, var
        self.inv = inv    # the same for every element of the row (built from row scalars and constants)
        self.leaf = leaf  # a name, an element or a constant: nothing to compute

    def __str__(self):
        if self.var is not None and self.gen._reading is not None:
            self.gen._reading.add(self.var)  # only values an expression really uses are kept
        return self.code

    def _lift(self, other):
        return other if isinstance(other, Sym) else Sym(self.gen.const(other), self.gen, inv=True, leaf=True)

    def _bin(self, other, op, rev=False):
        other = self._lift(other)
        (a, b), inv = _row_parts(self.gen, (other, self) if rev else (self, other))
        if op == "*" and (a.boolean or b.boolean):
            cond, val = (a, b) if a.boolean else (b, a)
            return Sym(f"({val} if {cond} else {self.gen.const(0)})", self.gen, inv=inv)
        return Sym(f"({a} {op} {b})", self.gen, inv=inv)

    def __add__(self, o): return self._bin(o, "+")
    def __radd__(self, o): return self._bin(o, "+", True)
    def __sub__(self, o): return self._bin(o, "-")
    def __rsub__(self, o): return self._bin(o, "-", True)
    def __mul__(self, o): return self._bin(o, "*")
    def __rmul__(self, o): return self._bin(o, "*", True)
    def __truediv__(self, o): return self._bin(o, "/")
    def __rtruediv__(self, o): return self._bin(o, "/", True)
    def __neg__(self): return Sym(f"(-{self})", self.gen, inv=self.inv)

    def __pow__(self, p):
        p = float(p)
        if p == 0:
            return Sym(self.gen.const(1), self.gen, inv=True, leaf=True)
        if p == 1:
            return self
        if p == 2:
            return Sym(f"({self} * {self})", self.gen, inv=self.inv)
        if p == 0.5:
            return Sym(f"math.sqrt({self})", self.gen, inv=self.inv)
        if p == -1:
            return Sym(f"({self.gen.const(1)} / {self})", self.gen, inv=self.inv)
        return Sym(f"({self} ** {self.gen.const(p)})", self.gen, inv=self.inv)

    def _cmp(self, o, op):
        (a, b), inv = _row_parts(self.gen, (self, self._lift(o)))
        return Sym(f"({a} {op} {b})", self.gen, boolean=True, inv=inv)

    def __gt__(self, o): return self._cmp(o, ">")
    def __ge__(self, o): return self._cmp(o, ">=")
    def __lt__(self, o): return self._cmp(o, "<")
    def __le__(self, o): return self._cmp(o, "<=")
    def __and__(self, o):
        (a, b), inv = _row_parts(self.gen, (self, o))
        return Sym(f"({a} and {b})", self.gen, boolean=True, inv=inv)


def _row_parts(gen, parts):
    """(parts, whether the expression they form is a row scalar). When it is not, a part
    that is (``math.sqrt(r36[0])``, ``r61[0] ** K3``: work on a (B, 1) value) becomes a
    scalar computed once per row before the loop over the row, not once per element."""
    if all(p.inv for p in parts):
        return parts, True
    return tuple(gen.row_scalar(p) if p.inv and not p.leaf else p for p in parts), False


class _SymBackend:
    """The backend functions the op table's elementwise entries call, for one element."""

    def __init__(self, gen):
        self.gen = gen

    def _s(self, v):
        return v if isinstance(v, Sym) else Sym(self.gen.const(v), self.gen, inv=True, leaf=True)

    def tanh(self, a): return Sym(f"tanh_scalar({a})", self.gen, inv=a.inv)
    def sigmoid(self, a): return Sym(f"sigmoid_scalar({a})", self.gen, inv=a.inv)
    def exp(self, a): return Sym(f"math.exp({a})", self.gen, inv=a.inv)
    def log(self, a): return Sym(f"math.log({a})", self.gen, inv=a.inv)

    def leaky_relu(self, a, slope):
        if slope == 0:
            return Sym(f"max({a}, {self.gen.const(0)})", self.gen, inv=a.inv)
        return Sym(f"({a} if {a} > {self.gen.const(0)} else {a} * {self.gen.const(slope)})", self.gen, inv=a.inv)

    def where(self, cond, a, b):
        (cond, a, b), inv = _row_parts(self.gen, (cond, self._s(a), self._s(b)))
        return Sym(f"({a} if {cond} else {b})", self.gen, inv=inv)

    def clip(self, a, lo, hi):
        return Sym(f"min(max({a}, {self.gen.const(lo)}), {self.gen.const(hi)})", self.gen, inv=a.inv)


def _op_attrs(e):
    """The attributes the table's lambdas take (``cond`` becomes an operand symbol)."""
    return {k: v for k, v in e.attrs.items() if k not in ("cond", "residuals")}


# ---- the generator ---------------------------------------------------------------
def const_literal(value):
    """Python source for a float constant: repr, except for inf, -inf and nan, whose repr
    is not a name the generated module has (a constant 1e120 is inf in float32)."""
    return repr(value) if math.isfinite(value) else f"float({repr(value)!r})"


class Generator:
    def __init__(self, plan, dtype, sizes=None):
        self.plan, self.dtype = plan, np.dtype(dtype)
        self.widths, self.slices = sizes or ({}, {})
        self.consts = {}
        self._reading = None
        self._row_lines, self._row_eqn = None, None
        self.k = _SymBackend(self)
        g = plan.graph
        self.states = list(g.states)
        self.hoisted = list(plan.hoisted)
        self.aux = list(plan.aux)
        self.outputs = list(g.outputs)
        self.producer = {e.out: e for e in plan.step_eqns}
        self.level = plan.level
        self.top = plan.num_levels - 1
        self.gemms = list(plan.gemms)
        self.kernel_eqns = {k: [e for e in plan.step_eqns if e.op not in ("matmul", "compare")
                                and self.level[e.out] == k] for k in range(self.top + 1)}
        self.users = {}  # var -> set of kernels reading it (compare operands count for their readers)
        for k, eqns in self.kernel_eqns.items():
            for e in eqns:
                for v in self._reads(e):
                    self.users.setdefault(v, set()).add(k)
        for v in self.outputs:
            self.users.setdefault(v, set()).add(self.top)
        # kernels a gradient flows back from: a read inside a comparison passes none
        self.grad_users = {}
        for k, eqns in self.kernel_eqns.items():
            for e in eqns:
                for v in e.ins:
                    if not (v in self.producer and self.producer[v].op == "compare"):
                        self.grad_users.setdefault(v, set()).add(k)
        for v in self.outputs:
            self.grad_users.setdefault(v, set()).add(self.top)
        self.gemm_lhs = {}
        for n, e in enumerate(self.gemms):
            self.gemm_lhs.setdefault(e.ins[0], []).append(n)
        # A product whose result is the left operand of another (``(h @ W1) @ W2``) gets its
        # gradient from that product's backward GEMM, which runs after the later stage's
        # backward kernel: its own stage owns it, so that stage has a kernel even with no
        # pointwise work (it passes the gradient on to the product's weight gradient).
        for v in self.gemm_lhs:
            p = self.producer.get(v)
            if p is not None and p.op == "matmul":
                self.users.setdefault(v, set()).add(self.level[v])
                self.grad_users.setdefault(v, set()).add(self.level[v])
        self.stages = plan.stages

    # -- sizes: linear in the input size I and hidden size H where that was verified ------
    def wf(self, v):
        """v's width as (a, b, c): a*I + b*H + c."""
        return self.widths.get(v.id) or (0, 0, v.width)

    def W(self, v):
        return _fmt(self.wf(v))

    def bounds(self, e):
        """(lo, hi) of a last-axis slice equation, as source."""
        if e.out.id in self.slices:
            return tuple(_fmt(f) for f in self.slices[e.out.id])
        sl = e.attrs["index"][1]
        return str(sl.start), str(sl.stop)

    # -- names ---------------------------------------------------------------------
    def const(self, value):
        value = float(value)
        if value not in self.consts:
            self.consts[value] = f"K{len(self.consts)}"
        return self.consts[value]

    def _reads(self, e):
        """Vars an equation's loop reads, looking through compare (an inline expression)."""
        out = []
        for v in e.ins:
            p = self.producer.get(v)
            if p is not None and p.op == "compare":
                out.extend(self._reads(p))
            else:
                out.append(v)
        return out

    def is_view(self, v):
        p = self.producer.get(v)
        return p is not None and p.op == "getitem"

    def owner(self, v):
        """The stage whose backward finalises v's gradient."""
        if v in self.producer and self.producer[v].op != "matmul":
            return self.level[v]
        return min(self.grad_users.get(v) or self.users.get(v, {self.top}))

    # -- storage ---------------------------------------------------------------------
    def plan_storage(self):
        """Decide where each forward value lives; run the backward renderer once to see
        which values it reads."""
        self.kept = set()
        for v, ks in self.users.items():
            if v in self.producer and self.producer[v].op not in ("matmul",) and any(k != self.level[v] for k in ks):
                self.kept.add(v)
        for v in self.gemm_lhs:
            if v in self.producer:
                self.kept.add(v)
        self.bwd_reads = set()
        self.render_backward(dry=True)
        self.kept |= {v for v in self.bwd_reads if v in self.producer and self.producer[v].op != "matmul"}
        changed = True
        while changed:  # a kept view keeps its source
            changed = False
            for v in list(self.kept):
                if self.is_view(v) and self.producer[v].ins[0] not in self.kept:
                    src = self.producer[v].ins[0]
                    if src in self.producer and self.producer[src].op != "matmul":
                        self.kept.add(src)
                        changed = True
        self.out_index = {}
        for i, v in enumerate(self.outputs):
            if (v in self.producer and not self.is_view(v) and self.producer[v].op not in ("matmul",)
                    and v not in self.out_index and self.outputs.index(v) == i):
                self.out_index[v] = i
        self.residuals = [e.out for e in self.plan.step_eqns if e.out in self.kept and e.out not in self.out_index
                          and e.op not in ("matmul", "compare", "getitem")]

    def row(self, v):
        """The expression for v's row ``b`` at step ``t`` inside a kernel."""
        if v in self.states:
            return f"sp{self.states.index(v)}[b]"
        if v in self.hoisted:
            return f"X{self.hoisted.index(v)}[t, b]"
        p = self.producer[v]
        if p.op == "matmul":
            return f"G{self.gemms.index(p)}[t, b]"
        if p.op == "getitem":
            lo, hi = self.bounds(p)
            return f"{self.row(p.ins[0])}[{lo}:{hi}]"
        if v in self.out_index:
            return f"Y[t, {self.out_index[v]}, b]"
        if v in self.kept:
            return f"R{v.id}[t, b]"
        return f"L{v.id}"

    def sym(self, v, o):
        """One element of v inside the loop over j of the equation making ``o``."""
        p = self.producer.get(v)
        if p is not None and p.op == "compare":
            a, b = (self.sym(u, o) for u in p.ins)
            return {"lt": a < b, "le": a <= b, "gt": a > b, "ge": a >= b}[p.attrs["how"]]
        if v.role == "const" and v.value.ndim == 0:
            return Sym(self.const(v.value), self, inv=True, leaf=True)
        idx = "j" if self.wf(v) == self.wf(o) and self.wf(o) != (0, 0, 1) else "0"
        if v in self.aux:
            return Sym(f"A{self.aux.index(v)}[{idx}]", self, var=v, inv=idx == "0", leaf=True)
        return Sym(f"r{v.id}[{idx}]", self, var=v, inv=idx == "0", leaf=True)

    def row_scalar(self, s):
        """A name for row scalar ``s``, computed once per row before the equation's loop."""
        if self._row_lines is None or s.leaf:
            return s
        name = f"r{len(self._row_lines)}_{self._row_eqn}"  # numbered per equation: unique in a kernel
        self._row_lines.append(f"{name} = {s}")
        return Sym(name, self, inv=True, leaf=True)

    def _row_scalars_of(self, e, render):
        """``render()``'s lines for equation ``e``, after the row scalars it asked for."""
        wide = self.wf(e.out) != (0, 0, 1)
        self._row_lines, self._row_eqn = ([] if wide else None), e.out.id
        try:
            lines = render()
            return (self._row_lines or []) + lines
        finally:
            self._row_lines = None

    # -- forward -------------------------------------------------------------------
    def render_forward_kernel(self, k):
        eqns = self.kernel_eqns[k]
        lines, body = [], []
        self._reading = set()
        for e in eqns:
            body.extend(self._fwd_eqn(e))
        reads = set(self._reading)
        self._reading = None
        if k == self.top:
            for i, v in enumerate(self.outputs):
                reads.add(v)
        local = [e.out for e in eqns if e.op != "getitem" and self.row(e.out).startswith("L")]
        args = self._kernel_args(reads | {e.out for e in eqns})
        lines.append(f"@kernel\ndef _forward_stage{k}(t, b0, b1, I, H, M, {', '.join(args)}):")
        lines.append(f'    """Stage {k} of step t, row by row: {self._eqn_summary(eqns)}."""')
        lines.append("    B = M.shape[1]")
        lines.extend(self._state_views())
        for v in local:
            lines.append(f"    L{v.id} = np.empty({self.W(v)}, DT)")
        lines.append(ROW_LOOP)
        bound = self._bind_rows(reads | {e.out for e in eqns})
        lines.extend("        " + s for s in bound)
        lines.extend("        " + s for s in fuse_loops(body))
        if k == self.top:
            for i, v in enumerate(self.outputs):
                if self.out_index.get(v) != i:
                    lines += [f"        for j in range({self.W(v)}):", f"            Y[t, {i}, b, j] = {self.row(v)}[j]"]
            lines.append("        if M[t, b] == 0:  # past this sequence's length: carry the state")
            for i, s in enumerate(self.states):
                lines += [f"            for j in range({self.W(s)}):", f"                Y[t, {i}, b, j] = sp{i}[b, j]"]
        return _index_rows_in_place("\n".join(lines))

    def _fwd_eqn(self, e):
        o, w = e.out, self.W(e.out)
        if e.op == "getitem":
            return []
        if e.op == "cat":
            out, start = [], (0, 0, 0)
            for v in e.ins:
                end = _plus(start, self.wf(v))
                out += [f"for j in range({self.W(v)}):", f"    r{o.id}[{_fmt(start)} + j] = r{v.id}[j]"]
                self._reading.add(v)
                start = end
            return out
        if e.op in REDUCTIONS:
            a = e.ins[0]
            self._reading.add(a)
            if e.op == "max":
                init, upd = f"r{a.id}[0]", f"acc = max(acc, r{a.id}[j])"
            else:
                init, upd = self.const(0), f"acc += r{a.id}[j]"
            fin = f"acc / DT({self.W(a)})" if e.op == "mean" else "acc"
            return [f"acc = {init}", f"for j in range({self.W(a)}):", f"    {upd}", f"r{o.id}[0] = {fin}"]
        def render():
            syms = [self.sym(v, o) for v in e.ins]
            attrs = _op_attrs(e)
            if e.op == "where":
                attrs["cond"] = syms.pop()
            expr = ops.OPS[e.op].fwd(self.k, *syms, **attrs)
            expr = self.row_scalar(expr) if expr.inv else expr  # a row scalar broadcast along the row
            return [f"for j in range({w}):", f"    r{o.id}[j] = {expr}"]
        return self._row_scalars_of(e, render)

    # -- backward ------------------------------------------------------------------
    def grad_target(self, v, k):
        """Where stage k adds v's gradient (None: not differentiable)."""
        if v.role == "const" or (v in self.producer and self.producer[v].op == "compare"):
            return None
        if v in self.aux:
            return f"DA{self.aux.index(v)}"
        if v in self.states:
            return f"CS{self.states.index(v)}_{k}[b]"
        if self.owner(v) == k:
            return f"d{v.id}"
        return f"E{v.id}_{k}[b]"

    def render_backward(self, dry=False):
        self._reading = set() if dry else None
        out = [self.render_backward_kernel(k, dry) for k in reversed(self.stages)]
        if dry:
            self.bwd_reads = set(self._reading)
        self._reading = None
        return out

    def render_backward_kernel(self, k, dry=False):
        eqns = self.kernel_eqns[k]
        reading_outer = self._reading
        self._reading = set()
        body = []
        owned = [e.out for e in eqns] + [v for v in (*self.hoisted, *self._gemm_outs())
                                          if self.owner(v) == k and k in self.users.get(v, ())]
        for e in reversed(eqns):
            for i, v in enumerate(self.outputs):
                if v is e.out:  # its gradient is complete here: every in-step use is behind us
                    body += [f"acc = {self.const(0)}", f"for j in range({self.W(v)}):",
                             f"    acc += d{v.id}[j] * d{v.id}[j]", f"SQ[{i}, t] += acc"]
            body.extend(self._bwd_eqn(e, k))
        fwd_reads = set(self._reading)
        if reading_outer is not None:
            reading_outer |= fwd_reads
        self._reading = reading_outer
        if dry:
            return ""
        targets = set()   # outgoing per-row buffers of this stage (zeroed for padded rows)
        for e in eqns:
            for v in e.ins:
                t = self.grad_target(v, k)
                if t is not None and not t.startswith(("d", "DA")):
                    targets.add(t)
        if k == self.top:
            for v in self.outputs:
                t = self.grad_target(v, k)
                if not t.startswith(("d", "DA")):
                    targets.add(t)
        for i, s in enumerate(self.states):
            if k in self.users.get(s, ()):
                targets.add(f"CS{i}_{k}[b]")
        lines = []
        names = set()
        for t in targets:
            names.add(t.split("[")[0])
        for v in owned:
            if v in self.hoisted:
                names.add(f"DX{self.hoisted.index(v)}")
            elif v in self._gemm_outs():
                names.add(f"GD{self._gemm_index(v)}")
            for j in sorted(self.grad_users.get(v, ())):
                if j != k:
                    names.add(f"E{v.id}_{j}")
            for n in self.gemm_lhs.get(v, ()):
                names.add(f"GL{n}")
        if k == self.top:
            names |= {f"dY", "SQ"} | {f"PASS{i}" for i in range(len(self.states))}
            names |= set(self._carry_names())
        for e in eqns:
            for v in e.ins:
                if v in self.aux:
                    names.add(f"DA{self.aux.index(v)}")
            if e.out in self.outputs:
                names.add("SQ")
        args = sorted(names) + self._kernel_args(fwd_reads | set(owned))
        args = list(dict.fromkeys(args))
        lines.append(f"@kernel\ndef _backward_stage{k}(t, b0, b1, I, H, M, {', '.join(args)}):")
        lines.append(f'    """Gradients through stage {k} of step t, in reverse: {self._eqn_summary(eqns[::-1])}."""')
        lines.append("    B = M.shape[1]")
        lines.extend(self._state_views())
        alloc_at = len(lines)
        if k == self.top:
            lines.append(f"    sq = np.zeros({len(self.states)})")
            for i in range(len(self.states)):
                lines.append(f"    g{i} = np.empty({self.W(self.states[i])}, DT)")
        lines.append(ROW_LOOP)
        ind = "        "
        if k == self.top:
            for i, s in enumerate(self.states):
                carry = " + ".join(self._carry_names(i, "[b, j]")) or self.const(0)
                lines.append(f"{ind}for j in range({self.W(s)}):  # total dL/dstate{i}: upstream + carried")
                lines.append(f"{ind}    v = dY[t, {i}, b, j] + {carry}")
                lines.append(f"{ind}    g{i}[j] = v")
                lines.append(f"{ind}    PASS{i}[b, j] = {self.const(0)}  # read: a padded row sets it again below")
        if k == self.top:
            for i, v in enumerate(self.outputs):
                if v not in self.producer:  # a state passed through: nothing in the step uses the new one
                    lines += [f"{ind}for j in range({self.W(v)}):", f"{ind}    sq[{i}] += g{i}[j] * g{i}[j]"]
        lines.append(f"{ind}if M[t, b] == 0:  # a padded step: the gradient passes to the previous step")
        for t in sorted(targets):
            lines.append(f"{ind}    {t}[:] = 0")
        for v in owned:
            for dest in self._finals(v, k):
                lines.append(f"{ind}    {dest}[:] = 0")
        if k == self.top:
            for i, v in enumerate(self.outputs):
                lines += [f"{ind}    for j in range({self.W(v)}):", f"{ind}        PASS{i}[b, j] = g{i}[j]"]
                if v in self.producer:
                    lines.append(f"{ind}        sq[{i}] += g{i}[j] * g{i}[j]")
        lines.append(f"{ind}    continue")
        bound = self._bind_rows(fwd_reads)
        lines.extend(ind + s for s in bound)
        contribs = []
        if k == self.top:
            for i, v in enumerate(self.outputs):
                contribs += _row_loop(self.W(v), self.grad_target(v, k), "+=", f"g{i}")
        for v in owned:
            for j in sorted(self.grad_users.get(v, ())):
                if j != k:
                    contribs += _row_loop(self.W(v), f"d{v.id}", "+=", f"E{v.id}_{j}[b]")
            for n in self.gemm_lhs.get(v, ()):
                contribs += _row_loop(self.W(v), f"d{v.id}", "+=", f"GL{n}[b]")
        covered = self._covered_by_slices(eqns, k)
        contribs, assigned, single = _first_writes_assign(contribs + body, covered)
        contribs, aliases = _alias_copies(contribs, single)
        # A gate block's gradient is a view into the gradient of the value it was split
        # from, so the split's backward copies nothing.
        views = {}
        for e in eqns:
            src = f"d{e.ins[0].id}"
            if e.op == "getitem" and src in covered and src not in aliases and f"d{e.out.id}" not in aliases:
                lo, hi = self.bounds(e)
                views[f"d{e.out.id}"] = f"{src}[{lo}:{hi}]"
                contribs = [c for c in contribs if not re.match(rf"^\s*{src}\[{re.escape(lo)} \+ j\] = d{e.out.id}\[j\]$", c)]
        contribs = [c for n, c in enumerate(contribs)
                    if not (c.startswith("for j in range(") and not (n + 1 < len(contribs) and contribs[n + 1].startswith("    ")))]
        for t in sorted(targets):
            if t not in assigned:
                lines.append(f"{ind}{t}[:] = 0")
        for v in owned:
            if f"d{v.id}" not in assigned and f"d{v.id}" not in aliases:
                lines.append(f"{ind}d{v.id}[:] = 0")
        for v in owned:
            for dest in self._finals(v, k):
                contribs += _row_loop(self.W(v), dest, "=", f"d{v.id}")
        lines.extend(ind + s for s in fuse_loops(contribs))
        if k == self.top:
            for i in range(len(self.states)):
                lines.append(f"    SQ[{i}, t] += sq[{i}]")
        lines[alloc_at:alloc_at] = ([f"    d{v.id} = np.empty({self.W(v)}, DT)" for v in owned
                                     if f"d{v.id}" not in aliases and f"d{v.id}" not in views]
                                    + [f"    {name} = {view}" for name, view in views.items()])
        text = "\n".join(lines)
        for name in _alias_order(aliases):
            text = re.sub(rf"\b{name}\b", aliases[name].replace("\\", "\\\\"), text)
        return _index_rows_in_place(text)

    def _covered_by_slices(self, eqns, k):
        """Gradient arrays of this stage written only by disjoint slices that tile them
        (the gate blocks of a split): each slice can assign, and nothing needs zeroing."""
        covered = set()
        for e in eqns:
            v = e.out
            readers = [u for u in eqns if v in u.ins]
            if (self.users.get(v, set()) - {k} or v in self.gemm_lhs or v in self.outputs
                    or not readers or any(u.op != "getitem" for u in readers)):
                continue
            spans = sorted((u.attrs["index"][1].start, u.attrs["index"][1].stop) for u in readers)
            if spans[0][0] == 0 and spans[-1][1] == v.width and all(a[1] == b[0] for a, b in zip(spans, spans[1:])):
                covered.add(f"d{v.id}")
        return covered

    def _eqn_summary(self, eqns):
        shown = [f"v{e.out.id} = {e.op}({', '.join(v.name for v in e.ins)})" for e in eqns]
        return "; ".join(shown) if shown else "no pointwise work"

    def _finals(self, v, k):
        if v in self.hoisted:
            return [f"DX{self.hoisted.index(v)}[t, b]"]
        if v in self._gemm_outs():
            return [f"GD{self._gemm_index(v)}[t, b]"]
        return []

    def _gemm_outs(self):
        return [e.out for e in self.gemms]

    def _gemm_index(self, v):
        return self._gemm_outs().index(v)

    def _carry_names(self, i=None, suffix=""):
        """Buffers that carry dL/dstate_i to the previous step."""
        names = []
        for n, s in enumerate(self.states):
            if i is not None and n != i:
                continue
            for k in sorted(self.users.get(s, ())):
                names.append(f"CS{n}_{k}{suffix}")
            for g in self.gemm_lhs.get(s, ()):
                names.append(f"GL{g}{suffix}")
            names.append(f"PASS{n}{suffix}")
        return names

    def _bwd_eqn(self, e, k):
        o, w = e.out, self.W(e.out)
        dy = f"d{o.id}"
        if e.op == "getitem":
            lo, _ = self.bounds(e)
            t = self.grad_target(e.ins[0], k)
            # always "lo + j", even at 0: a write that covers part of a row must not look
            # like a full-row write to _first_writes_assign
            return [f"for j in range({w}):", f"    {t}[{lo} + j] += {dy}[j]"]
        if e.op == "cat":
            out, start = [], (0, 0, 0)
            for v in e.ins:
                t = self.grad_target(v, k)
                if t is not None:
                    out += [f"for j in range({self.W(v)}):", f"    {t}[j] += {dy}[{_at(_fmt(start))}]"]
                start = _plus(start, self.wf(v))
            return out
        if e.op in REDUCTIONS:
            a = e.ins[0]
            t = self.grad_target(a, k)
            if t is None:
                return []
            if e.op == "max":
                self._reading |= {a, o}
                return [f"cnt = {self.const(0)}", f"for j in range({self.W(a)}):",
                        f"    cnt += {self.const(1)} if r{a.id}[j] == r{o.id}[0] else {self.const(0)}",
                        f"for j in range({self.W(a)}):",
                        f"    {t}[j] += {dy}[0] / cnt if r{a.id}[j] == r{o.id}[0] else {self.const(0)}"]
            if e.op == "mean":  # the row's share, divided once per row
                return [f"r{o.id}_0 = {dy}[0] / DT({self.W(a)})", f"for j in range({self.W(a)}):",
                        f"    {t}[j] += r{o.id}_0"]
            return [f"for j in range({self.W(a)}):", f"    {t}[j] += {dy}[0]"]
        return self._row_scalars_of(e, lambda: self._bwd_pointwise(e, k))

    def _bwd_pointwise(self, e, k):
        o, w = e.out, self.W(e.out)
        dy = f"d{o.id}"
        syms = [self.sym(v, o) for v in e.ins]
        attrs = _op_attrs(e)
        if e.op == "where":
            attrs["cond"] = syms.pop()
        g = Sym(f"{dy}[j]", self, inv=self.wf(o) == (0, 0, 1), leaf=True)
        y = self.sym(o, o)
        grads = ops.OPS[e.op].vjp(self.k, g, y, *syms, **attrs)
        out = []
        for v, gv in zip(e.ins, grads):
            t = self.grad_target(v, k)
            if t is None or gv is None:
                continue
            gv = gv if isinstance(gv, Sym) else Sym(self.const(gv), self, inv=True, leaf=True)
            gv = self.row_scalar(gv) if gv.inv else gv
            if self.wf(v) == self.wf(o):
                out += [f"for j in range({w}):", f"    {t}[j] += {gv}"]
            else:  # broadcast along the row: sum the contributions
                out += [f"acc = {self.const(0)}", f"for j in range({w}):", f"    acc += {gv}",
                        f"{t}[0] += acc"]
        return out

    # -- shared pieces ---------------------------------------------------------------
    def _state_views(self):
        return [f"    sp{i} = S0_{i} if t == 0 else Y[t - 1, {i}]" for i in range(len(self.states))]

    def _bind_rows(self, vs):
        lines = []
        for v in sorted(vs, key=lambda v: v.id):
            if v in self.aux or v.role == "const":
                continue
            p = self.producer.get(v)
            if p is not None and p.op == "compare":
                continue
            lines.append(f"r{v.id} = {self.row(v)}")
        return lines

    def _kernel_args(self, vs):
        names = ["Y"] + [f"S0_{i}" for i in range(len(self.states))]
        for v in sorted(vs, key=lambda v: v.id):
            for src in self._arrays_of(v):
                if src not in names:
                    names.append(src)
        return names

    def _arrays_of(self, v):
        if v in self.aux:
            return [f"A{self.aux.index(v)}"]
        if v.role == "const" or v in self.states:
            return []
        if v in self.hoisted:
            return [f"X{self.hoisted.index(v)}"]
        p = self.producer[v]
        if p.op == "compare":
            return [a for u in p.ins for a in self._arrays_of(u)]
        if p.op == "matmul":
            return [f"G{self.gemms.index(p)}"]
        if p.op == "getitem":
            return self._arrays_of(p.ins[0])
        if v in self.out_index:
            return []
        if v in self.kept:
            return [f"R{v.id}"]
        return []

    # -- drivers and the module ---------------------------------------------------------
    def _lhs(self, v, every_step=False, rows=""):
        """The left operand of a recurrent product as an array expression: at step t,
        (B, n) (its rows ``rows`` only, e.g. ``b0:b1``), or with ``every_step`` for all
        steps at once, (T, B, n)."""
        at = f", {rows}" if rows else ""
        if v in self.states:
            i = self.states.index(v)
            return (f"np.concatenate((S0_{i}[None], Y[:-1, {i}]))" if every_step else
                    f"(S0_{i} if t == 0 else Y[t - 1, {i}])" + (f"[{rows}]" if rows else ""))
        p = self.producer[v]
        if p.op == "getitem":
            lo, hi = self.bounds(p)
            return f"{self._lhs(p.ins[0], every_step, rows)}[{':, ' if every_step else ''}:, {lo}:{hi}]"
        step = ":" if every_step else "t"
        if p.op == "matmul":
            return f"G{self.gemms.index(p)}" if every_step else f"G{self.gemms.index(p)}[t{at}]"
        if v in self.out_index:
            return f"Y[{step}, {self.out_index[v]}{at if not every_step else ''}]"
        return f"R{v.id}" if every_step else f"R{v.id}[t{at}]"

    def _stage_call(self, src, name):
        """``name(t, M, args...)`` for a kernel whose def line is in ``src``."""
        head = src.split("\n")[1]
        args = head[head.index("(") + 1:head.rindex(")")]
        return f"{name}({args})"

    def stage_kernels(self):
        """({stage: forward kernel source}, {stage: backward kernel source}), storage planned."""
        self.plan_storage()
        fwd = {k: self.render_forward_kernel(k) for k in self.stages}
        bwd = dict(zip(reversed(self.stages), self.render_backward()))
        return fwd, bwd

    def array_names(self):
        """The names the drivers give their arrays (the module docstring's layout), shared by
        the CPU and CUDA renderers."""
        weights = sorted({self.aux.index(e.ins[1]) for e in self.gemms})
        return SimpleNamespace(
            weights=weights,
            s0=[f"S0_{i}" for i in range(len(self.states))],
            x=[f"X{n}" for n in range(len(self.hoisted))],
            a=[f"A{n}" for n in range(len(self.aux))],
            r=[f"R{v.id}" for v in self.residuals],
            g=[f"G{n}" for n in range(len(self.gemms))],
            dx=[f"DX{n}" for n in range(len(self.hoisted))],
            da=[f"DA{n}" for n in range(len(self.aux))],
            gd=[f"GD{n}" for n in range(len(self.gemms))],
            gl=[f"GL{n}" for n in range(len(self.gemms))],
            carry=[c for c in self._carry_names() if not c.startswith("GL")],
            ext=self._ext_names(),
            flat=[f"    A{n} = A{n}.reshape(-1)" for n in range(len(self.aux)) if n not in weights])

    def render_module(self, header):
        fwd, bwd = self.stage_kernels()
        S, H = len(self.states), "H"
        names = self.array_names()
        weights, s0_args, x_args, a_args, r_args, g_args = (names.weights, names.s0, names.x, names.a, names.r,
                                                             names.g)
        dx_args, da_args, gd_args, gl_args, carry, ext, flat = (names.dx, names.da, names.gd, names.gl, names.carry,
                                                                names.ext, names.flat)
        at_args = [f"AT{w}" for w in weights]
        fwd_loop_args = ["T", "b0", "b1", "I", "H", "M", "Y", *s0_args, *x_args, *a_args, *at_args, *r_args, *g_args]
        bwd_loop_args = ["T", "b0", "b1", "I", "H", "M", "dY", "Y", *s0_args, *x_args, *a_args, *at_args, *r_args, *g_args,
                         *dx_args, *da_args, *gd_args, *gl_args, *carry, *ext, "SQ"]
        out = [f'"""{header}"""', "import math", "", "import numpy as np", "",
               "from tinygrad_rnn.backend.cpu import sigmoid_scalar, tanh_scalar",
               "from tinygrad_rnn.compiler.runtime import in_blocks, kernel, matmul_into, mm_t, row_blocks", "",
               f"DT = np.{self.dtype.name}"]
        out += [f"{name} = DT({const_literal(value)})" for value, name in self.consts.items()]
        out += ["# which traced values the residuals and the state outputs hold (for diagnostics)",
                f"RESIDUAL_IDS = ({''.join(f'{v.id}, ' for v in self.residuals)})",
                f"OUTPUT_IDS = ({''.join(f'{v.id}, ' for v in self.outputs)})"]
        out += ["", ""]
        for k in sorted(fwd):
            out += [fwd[k], "", ""]
        for k in sorted(bwd, reverse=True):
            out += [bwd[k], "", ""]
        # BLAS takes the weight as it is forward and transposed backward; the in-kernel
        # product (dot products over the weight's columns) the other way round.
        for variant, deco, mm_fn, fwd_w, bwd_w in (("py", "", "matmul_into", "A", "AT"),
                                                   ("jit", "@kernel\n", "mm_t", "AT", "A")):
            body = [f"{deco}def _forward_loop_{variant}({', '.join(fwd_loop_args)}):", "    for t in range(T):"]
            for k in range(self.top + 1):  # a stage's products run even when it has no kernel
                for n, e in enumerate(self.gemms):
                    if self.level[e.out] == k:
                        body.append(f"        {mm_fn}({self._lhs(e.ins[0], rows='b0:b1')}, "
                                    f"{fwd_w}{self.aux.index(e.ins[1])}, G{n}[t, b0:b1])")
                if k in fwd:
                    body.append(f"        {self._stage_call(fwd[k], f'_forward_stage{k}')}")
            out += body + ["", ""]
            body = [f"{deco}def _backward_loop_{variant}({', '.join(bwd_loop_args)}):",
                    "    for t in range(T - 1, -1, -1):"]
            for k in range(self.top, -1, -1):
                if k in bwd:
                    body.append(f"        {self._stage_call(bwd[k], f'_backward_stage{k}')}")
                for n, e in enumerate(self.gemms):
                    if self.level[e.out] == k:
                        w = self.aux.index(e.ins[1])
                        body.append(f"        {mm_fn}(GD{n}[t, b0:b1], {bwd_w}{w}, GL{n}[b0:b1])")
            out += body + ["", ""]
        # Python wrappers: allocate, run the loop, finish with the weight GEMMs.
        allocs = [f"    {a} = np.empty((T, B, {self.W(v)}), DT)" for a, v in zip(r_args, self.residuals)]
        allocs += [f"    G{n} = np.empty((T, B, {self.W(e.out)}), DT)" for n, e in enumerate(self.gemms)]
        out += [f"def forward(jit_loop, I, H, M, {', '.join([*s0_args, *x_args, *a_args])}):",
                "    T, B = M.shape", *flat,
                f"    Y = np.empty((T, {S}, B, {H}), DT)", *allocs,
                *[f"    AT{n} = np.ascontiguousarray(A{n}.T)" for n in weights],
                "    loop, blocks = (_forward_loop_jit, row_blocks(B)) if jit_loop else (_forward_loop_py, [(0, B)])",
                f"    in_blocks(blocks, lambda n, b0, b1: loop({', '.join(fwd_loop_args)}))",
                f"    return Y, ({', '.join(r_args + g_args)}{',' if len(r_args + g_args) == 1 else ''})", "", ""]
        unpack = ", ".join(r_args + g_args)
        balloc = [f"    DX{n} = np.empty((T, B, {self.W(v)}), DT)" for n, v in enumerate(self.hoisted)]
        balloc += [f"    DA{n} = np.zeros((len(blocks),) + A{n}.shape, DT)" for n in range(len(self.aux))]
        balloc += [f"    AT{n} = np.ascontiguousarray(A{n}.T)" for n in weights]
        balloc += [f"    GD{n} = np.empty((T, B, {self.W(e.out)}), DT)" for n, e in enumerate(self.gemms)]
        balloc += [f"    {c} = np.zeros((B, {self._carry_width(c)}), DT)" for c in [*gl_args, *carry]]
        balloc += [f"    {e} = np.empty((B, {self._ext_width(e)}), DT)" for e in ext]
        finish = []
        for n, e in enumerate(self.gemms):
            k_in, w_out = self.W(e.ins[0]), self.W(e.out)
            finish.append(f"    DA{self.aux.index(e.ins[1])} += ({self._lhs(e.ins[0], every_step=True)}.reshape(T * B, {k_in}).T "
                          f"@ GD{n}.reshape(T * B, {w_out})).reshape(DA{self.aux.index(e.ins[1])}.shape)")
        dstates = [" + ".join(self._carry_names(i)) for i in range(S)]
        block_args = [f"{a}[n]" if a in (*da_args, "SQ") else a for a in bwd_loop_args]
        out += [f"def backward(jit_loop, I, H, dY, Y, residuals, M, {', '.join([*s0_args, *x_args, *a_args])}):",
                "    T, B = M.shape", *flat,
                f"    {unpack}{',' if len(r_args + g_args) == 1 else ''} = residuals" if unpack else "",
                "    loop, blocks = (_backward_loop_jit, row_blocks(B)) if jit_loop else (_backward_loop_py, [(0, B)])",
                "    # what every row adds to (batch-free gradients, per-step norms): one partial per block",
                *balloc,
                f"    SQ = np.zeros((len(blocks), {S}, T))",
                f"    in_blocks(blocks, lambda n, b0, b1: loop({', '.join(block_args)}))",
                *[f"    {d} = {d}.sum(axis=0)" for d in (*da_args, "SQ")], *finish,
                f"    return [{', '.join(dx_args)}], [{', '.join(dstates)}], [{', '.join(da_args)}], np.sqrt(SQ)", ""]
        return "\n".join(out)

    def _carry_width(self, name):
        if name.startswith("GL"):
            return self.W(self.gemms[int(name[2:])].ins[0])
        if name.startswith("PASS"):
            return self.W(self.states[int(name[4:])])
        return self.W(self.states[int(name[2:].split("_")[0])])

    def _ext_names(self):
        """Buffers that carry a value's gradient from a later stage to the one that owns it."""
        return sorted({f"E{v.id}_{k}" for v in self.grad_users for k in self.grad_users[v]
                       if k != self.owner(v) and v not in self.states and v not in self.aux
                       and v.role != "const"})

    def _ext_width(self, name):
        vid = int(name[1:].split("_")[0])
        for v in self.grad_users:
            if v.id == vid:
                return self.W(v)
        raise KeyError(name)


_ROW_BINDING = re.compile(r"^        (r\d+) = (?P<base>sp\d+|[A-Z]\w*)(?P<row>\[(?:[^\[\]]*, )?b\])?"
                          r"(?P<slices>(?:\[[^\[\]:]+:[^\[\]]+\])*)$")


def _index_rows_in_place(text):
    """Bind each row's arrays once per kernel call, not once per row, and index them
    with ``[b, j]``: ``r5 = R5[t, b]`` in the row loop becomes ``r5 = R5[t]`` before it,
    and ``r5[j]`` becomes ``r5[b, j]`` (a slice's offset folds into the index). A view
    made per row costs about 5 ns (Numba builds the array struct and counts references),
    and a stage binds a dozen or two for every row of every step; likewise
    ``E5_1[b][j]`` becomes ``E5_1[b, j]``."""
    lines = text.split("\n")
    if ROW_LOOP not in lines:
        return text
    loop = lines.index(ROW_LOOP)
    hoisted, uses, body = [], {}, []
    for line in lines[loop + 1:]:
        m = _ROW_BINDING.match(line)
        if m is None:
            body.append(line)
            continue
        name, base, row, slices = m.group(1), m.group("base"), m.group("row"), m.group("slices")
        offsets = [sl[1:-1].split(":")[0] for sl in re.findall(r"\[[^\[\]]+\]", slices)]
        offset = " + ".join(o for o in offsets if o.strip() != "0")
        if row:
            lead = row[1:-1][:-1].rstrip().rstrip(",")  # "[t, 0, b]" -> "t, 0"
            hoisted.append(f"    {name} = {base}[{lead}]" if lead else f"    {name} = {base}")
        else:
            hoisted.append(f"    {name} = {base}{slices}")  # a per-call scratch row: view it once
            offset = ""
        uses[name] = ("b, " if row else "", offset)
    out = "\n".join(body)
    for name, (row, offset) in uses.items():
        shift = f"{offset} + " if offset else ""
        out = re.sub(rf"\b{name}\[([^\[\]]+)\]", lambda m: f"{name}[{row}{shift}{m.group(1)}]", out)
        if re.search(rf"\b{name}\b(?!\[)", out):
            raise AssertionError(f"a whole-row use of {name} is left in:\n{text}")
    out = re.sub(r"\b([A-Z]\w*)\[((?:t, )?b)\]\[", r"\1[\2, ", out)
    if not out.strip():  # the stage only slices: nothing left to do per row
        out = "        pass"
    return "\n".join(lines[:loop] + hoisted + [lines[loop]] + [out])


def _row_loop(width, dest, op, src):
    """``dest op src`` for a whole row, as a loop over j. Not ``dest[:] = src``: Numba
    compiles an array-to-slice assignment with a shape check whose error message takes
    about 2 s to compile in a fresh process (and 0.3 s per further use)."""
    return [f"for j in range({width}):", f"    {dest}[j] {op} {src}[j]"]


_CONTRIB = re.compile(r"^(\s*)(.+?)\[([^\[\]]*)\] \+= (.*)$")


def _first_writes_assign(lines, covered):
    """Turn ``+=`` into ``=`` where a gradient row gets exactly one full write, or is tiled
    by slices (``covered``); return the lines and the targets that need no zeroing."""
    seen = {}
    for n, line in enumerate(lines):
        m = _CONTRIB.match(line)
        if m and not m.group(2).startswith("DA"):
            seen.setdefault(m.group(2), []).append((n, m.group(3)))
    assigned = set()
    out = list(lines)
    for target, writes in seen.items():
        if target in covered:
            assigned.add(target)
            for n, _ in writes:
                out[n] = out[n].replace(" += ", " = ", 1)
        elif writes[0][1] in ("j", ":", "0"):  # the first write covers the row: it assigns
            assigned.add(target)
            out[writes[0][0]] = out[writes[0][0]].replace(" += ", " = ", 1)
    single = {t for t, writes in seen.items() if len(writes) == 1}
    return out, assigned, single


_COPY = re.compile(r"^(\s*)(d\d+)\[(j|:)\] = ((?:d|g)\d+|E\d+_\d+\[b\]|GL\d+\[b\])(\[j\])?$")


def _alias_copies(lines, single):
    """A gradient row whose one write (``single``) is a plain copy of another (the identity
    VJP of add and sub, a seed) becomes a second name for it: no array, no copy loop. Safe
    because a source is complete before it is copied and nothing writes either name after."""
    aliases, out = {}, []
    for line in lines:
        m = _COPY.match(line)
        if m and m.group(2) in single and (m.group(3) == ":") == (m.group(5) is None):
            aliases[m.group(2)] = m.group(4)
            continue
        out.append(line)
    # a loop whose only statement was a removed copy leaves its header behind
    cleaned = []
    for n, line in enumerate(out):
        if line.startswith("for j in range(") and not (n + 1 < len(out) and out[n + 1].startswith("    ")):
            continue
        cleaned.append(line)
    return cleaned, aliases


def _alias_order(aliases):
    """Names to replace, each before any name its replacement mentions (chains resolve)."""
    def root(name, seen=()):
        target = aliases[name]
        base = target.split("[")[0]
        return root(base, seen + (name,)) if base in aliases and base not in seen else target
    for name in list(aliases):
        aliases[name] = root(name)
    return sorted(aliases, key=len, reverse=True)


_TRANSCENDENTAL = ("tanh_scalar(", "sigmoid_scalar(", "math.exp(", "math.log(", "math.sqrt(", "**")


def _transcendentals(line):
    return sum(line.count(f) for f in _TRANSCENDENTAL)


_ELEMENT_J = re.compile(r"\[(?:[^\[\]]*, )?j\]")


def _only_element_j(statement):
    """Whether a loop statement indexes rows at ``[j]`` (or a width-1 value at ``[0]``)
    only: no shifted index (a slice or cat at an offset) and no running total."""
    indexes = re.findall(r"\[[^\[\]]*\]", statement)
    return (re.match(r"^\s*(acc|cnt|sq\[\d+\]) \+=", statement) is None
            and all(i in ("[0]", "[b]", "[t, b]") or _ELEMENT_J.fullmatch(i) for i in indexes))


def fuse_loops(lines):
    """Merge back-to-back one-statement loops over the same range into one loop.

    Each generated loop handles one op; merging neighbours saves passes over the row.
    Only statements that touch element j alone are merged (a statement at an offset,
    ``d[lo + j] += ...`` or ``... = d[lo + j]``, or a running total stays a loop of its
    own), so a merged loop computes what the separate loops did, and on the GPU its
    threads never read what another thread writes. A merged loop keeps at most one
    transcendental call: loops with one vectorise, loops with several do not
    (a loop with two was 3.5x slower than two loops with one each).
    """
    out, i = [], 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("for j in range(") and i + 1 < len(lines) and lines[i + 1].startswith("    ") \
                and not (i + 2 < len(lines) and lines[i + 2].startswith("    ")):
            head, body = line, [lines[i + 1]]
            i += 2
            while (_only_element_j(body[-1]) and i + 1 < len(lines) and lines[i] == head
                   and lines[i + 1].startswith("    ")
                   and not (i + 2 < len(lines) and lines[i + 2].startswith("    "))
                   and _only_element_j(lines[i + 1])
                   and _transcendentals("".join(body)) + _transcendentals(lines[i + 1]) <= 1):
                body.append(lines[i + 1])
                i += 2
            out.append(head)
            out.extend(body)
        else:
            out.append(line)
            i += 1
    return out


def _at(lo):
    """Element j of a row shifted by ``lo`` (source), as an index."""
    return "j" if lo == "0" else f"{lo} + j"


def _plus(a, b):
    return tuple(x + y for x, y in zip(a, b))


def _fmt(f):
    """(a, b, c) as source for a*I + b*H + c."""
    terms = []
    for coef, name in zip(f[:2], ("I", "H")):
        if coef:
            terms.append(name if coef == 1 else f"{coef} * {name}")
    if f[2] or not terms:
        terms.append(str(f[2]))
    return " + ".join(terms).replace("+ -", "- ")


def render(plan, dtype, header, sizes=None):
    """The generated module's source for ``plan`` in ``dtype``; ``sizes`` = (widths, slices)
    formulas by var id make it one module for every input and hidden size."""
    return Generator(plan, dtype, sizes).render_module(header)
