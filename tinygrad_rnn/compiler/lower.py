"""Lower a Plan to the kernel IR (``kir.py``): stage kernels and one driver description.

Elementwise maths is not written here: the forward and the VJP of each primitive are
the op table's own lambdas (``ops.OPS[name].fwd`` / ``.vjp``), evaluated on IR
expressions through a symbolic backend (``_SymBackend``). Structural ops (last-axis
slices, cat, row reductions) are index maps, written out here with the same meaning as
their table entries.

Arrays (all C-contiguous), as the drivers name them:
- ``X<n>`` (T, B, w): hoisted inputs; ``S0_<i>`` (B, H): initial states; ``A<n>``: weights
  and other batch-free values; ``M`` (T, B): the mask; ``Y`` (T, S, B, H): every state.
- ``R<v>`` (T, B, w): forward values kept for the backward or for a later stage;
  ``G<n>`` (T, B, w): recurrent products; ``L<v>``: a value used only in its own stage.
- Backward: ``DX<n>`` and ``DA<n>`` gradients, ``GD<n>`` product gradients (for the weight
  GEMMs at the end), ``GL<n>``/``CS<i>_<k>``/``PASS<i>`` the gradient carried to the
  previous step, ``E<v>_<k>`` contributions from stage k to a value owned by an earlier
  stage, ``d<v>`` a value's gradient within its stage.
"""
import collections
import math
from types import SimpleNamespace

from .. import ops
from .kir import (Buf, Ex, Kernel, Let, Loop, Norm, Padded, Reduce, Set, alias_copies, drop_from_loops,
                  el, elements, first_writes_assign, fuse_loops, lit, plus, substitute, walk)
from .plan import REDUCTIONS


class _SymBackend:
    """The backend functions the op table's elementwise entries call, for one element."""

    def __init__(self, gen):
        self.gen = gen

    def _call(self, fn, a):
        return Ex("call", (fn, a), self.gen, inv=a.inv)

    def tanh(self, a): return self._call("tanh", a)
    def sigmoid(self, a): return self._call("sigmoid", a)
    def exp(self, a): return self._call("exp", a)
    def log(self, a): return self._call("log", a)

    def leaky_relu(self, a, slope):
        g = self.gen
        if slope == 0:
            return Ex("call", ("max", a, g.lit_const(0)), g, inv=a.inv)
        return Ex("if", (Ex("bin", (">", a, g.lit_const(0)), g, boolean=True), a, a * slope), g, inv=a.inv)

    def where(self, cond, a, b):
        (cond, a, b), inv = self.gen.row_parts((cond, self.gen.lift(a), self.gen.lift(b)))
        return Ex("if", (cond, a, b), self.gen, inv=inv)

    def clip(self, a, lo, hi):
        g = self.gen
        return Ex("call", ("min", Ex("call", ("max", a, g.lit_const(lo)), g), g.lit_const(hi)), g, inv=a.inv)


def const_literal(value):
    """Python source for a float constant: repr, except for inf, -inf and nan, whose repr
    is not a name the generated module has (a constant 1e120 is inf in float32)."""
    return repr(value) if math.isfinite(value) else f"float({repr(value)!r})"


class Generator:
    def __init__(self, plan, dtype, sizes=None):
        self.plan, self.dtype = plan, dtype
        self.widths, self.slices = sizes or ({}, {})
        self.consts, self._bufs = {}, {}
        self.zero = self.const(0)  # K0: the renderers' running totals start from it
        self._row_lets, self._row_eqn = None, None
        self.k = _SymBackend(self)
        self.states, self.outputs = list(plan.graph.states), list(plan.graph.outputs)
        self.hoisted, self.aux = list(plan.hoisted), list(plan.aux)
        self.producer = {e.out: e for e in plan.step_eqns}
        self.level, self.top, self.gemms = plan.level, plan.num_levels - 1, list(plan.gemms)
        self.gemm_outs = [e.out for e in self.gemms]
        self.kernel_eqns = {k: [e for e in plan.step_eqns if e.op not in ("matmul", "compare")
                                and self.level[e.out] == k] for k in range(self.top + 1)}
        # var -> stages reading it / passing a gradient back to it
        self.users, self.grad_users = collections.defaultdict(set), collections.defaultdict(set)
        for k, eqns in self.kernel_eqns.items():
            for e in eqns:
                for v in self._reads(e):
                    self.users[v].add(k)
                for v in e.ins:  # a read inside a comparison passes no gradient
                    if self.op_of(v) != "compare":
                        self.grad_users[v].add(k)
        self.gemm_lhs = {}
        for n, e in enumerate(self.gemms):
            self.gemm_lhs.setdefault(e.ins[0], []).append(n)
        # The last stage writes the new states. A product whose result is the left operand of
        # another (``(h @ W1) @ W2``) gets its gradient from that product's backward GEMM,
        # which runs after the later stage's backward kernel: its own stage owns it, so that
        # stage has a kernel even with no pointwise work (it passes the gradient on to the
        # product's weight gradient).
        uses = [(v, self.top) for v in self.outputs]
        uses += [(v, self.level[v]) for v in self.gemm_lhs if self.op_of(v) == "matmul"]
        for v, k in uses:
            self.users[v].add(k)
            self.grad_users[v].add(k)
        self.stages = plan.stages
        self.shared_gd = {}  # GD<n> -> the DX or GD array holding the same gradient (one array)

    # -- sizes: linear in the input size I and hidden size H where that was verified ------
    def wf(self, v):
        """v's width as (a, b, c): a*I + b*H + c."""
        return self.widths.get(v.id) or (0, 0, v.width)

    def W(self, v):
        return fmt(self.wf(v))

    def bounds(self, e):
        """(lo, hi) of a last-axis slice equation, as source."""
        if e.out.id in self.slices:
            return tuple(fmt(f) for f in self.slices[e.out.id])
        sl = e.attrs["index"][1]
        return str(sl.start), str(sl.stop)

    # -- names and buffers ------------------------------------------------------------
    def const(self, value):
        value = float(value)
        return self.consts.setdefault(value, f"K{len(self.consts)}")

    def lit_const(self, value):
        return lit(self.const(value), self)

    def lift(self, value):
        """An expression for ``value``: itself, or a constant for a number."""
        return value if isinstance(value, Ex) else self.lit_const(value)

    def buf(self, name, lead=None, width=None, shared=False):
        return self._bufs.setdefault((name, lead), Buf(name, lead, width, shared))

    def row(self, name, v):  # a (B, width of v) array
        return self.buf(name, "", self.W(v))

    def at(self, buf, index="j", local="0"):
        return el(buf, index, self, local=local)

    def op_of(self, v):
        """The op that computes v in the step; None for an input of the step."""
        return self.producer[v].op if v in self.producer else None

    def _reads(self, e):
        """Vars an equation reads, looking through compare (an inline expression)."""
        out = []
        for v in e.ins:
            out += self._reads(self.producer[v]) if self.op_of(v) == "compare" else [v]
        return out

    def owner(self, v):
        """The stage whose backward finalises v's gradient."""
        if self.op_of(v) not in (None, "matmul"):
            return self.level[v]
        return min(self.grad_users.get(v) or self.users.get(v, {self.top}))

    def view(self, v):
        """(buffer, offset) of v's row inside a kernel."""
        if v in self.states:
            return self.buf(f"sp{self.states.index(v)}", ""), "0"
        if v in self.hoisted:
            return self.buf(f"X{self.hoisted.index(v)}", "t"), "0"
        p = self.producer[v]
        if p.op == "matmul":
            return self.buf(f"G{self.gemms.index(p)}", "t"), "0"
        if p.op == "getitem":
            buf, off = self.view(p.ins[0])
            return buf, plus(off, self.bounds(p)[0])
        if v in self.out_index:
            return self.buf("Y", f"t, {self.out_index[v]}"), "0"
        if v in self.kept:
            return self.buf(f"R{v.id}", "t"), "0"
        return self.buf(f"L{v.id}", None, self.W(v)), "0"

    def read(self, v, index="j"):
        buf, base = self.view(v)
        return el(buf, index, self, base, var=v)

    def sym(self, v, o):
        """One element of v inside the loop over j of the equation making ``o``."""
        if self.op_of(v) == "compare":
            a, b = (self.sym(u, o) for u in self.producer[v].ins)
            return {"lt": a < b, "le": a <= b, "gt": a > b, "ge": a >= b}[self.producer[v].attrs["how"]]
        index = "j" if self.wf(v) == self.wf(o) and self.wf(o) != (0, 0, 1) else "0"
        if v in self.aux:
            return el(self.buf(f"A{self.aux.index(v)}", shared=True), index, self, var=v)
        return self.read(v, index)

    def row_parts(self, parts):
        """(parts, whether the expression they form is a row scalar). When it is not, a part
        that is (``sqrt(mean)``, ``var ** p``: work on a (B, 1) value) becomes a scalar
        computed once per row before the loop over the row, not once per element."""
        if all(p.inv for p in parts):
            return parts, True
        return tuple(self.row_scalar(p) for p in parts), False

    def row_scalar(self, s):
        """A name for ``s`` if it is a row scalar, computed once per row before the equation's loop."""
        if self._row_lets is None or s.leaf or not s.inv:
            return s
        name = f"r{len(self._row_lets)}_{self._row_eqn}"  # numbered per equation: unique in a kernel
        self._row_lets.append(Let(name, s))
        return lit(name, self)

    def _with_row_scalars(self, e, lower):
        """``lower()``'s statements for equation ``e``, after the row scalars it asked for."""
        self._row_lets, self._row_eqn = ([] if self.wf(e.out) != (0, 0, 1) else None), e.out.id
        try:
            stmts = lower()
            return (self._row_lets or []) + stmts
        finally:
            self._row_lets = None

    # -- storage ---------------------------------------------------------------------
    def plan_storage(self):
        """Decide where each forward value lives: lower the backward once to see which
        forward values it reads (the element references that name them)."""
        staged = lambda v: self.op_of(v) not in (None, "matmul")  # a stage kernel computes it
        self.kept = {v for v, ks in self.users.items() if staged(v) and any(k != self.level[v] for k in ks)}
        self.kept |= {v for v in self.gemm_lhs if v in self.producer}
        self.out_index = {}
        for k in self.stages:
            self.kept |= {v for v in self.backward_kernel(k, dry=True) if staged(v)}
        views = [v for v in self.kept if self.op_of(v) == "getitem"]
        while views:  # a kept view keeps its source
            src = self.producer[views.pop()].ins[0]
            if src not in self.kept and staged(src):
                self.kept.add(src)
                views += [src] if self.op_of(src) == "getitem" else []
        self.out_index = {v: i for i, v in enumerate(self.outputs)
                          if staged(v) and self.op_of(v) != "getitem" and self.outputs.index(v) == i}
        self.residuals = [e.out for e in self.plan.step_eqns if e.out in self.kept and e.out not in self.out_index
                          and e.op not in ("matmul", "compare", "getitem")]

    # -- forward -------------------------------------------------------------------
    def forward_kernel(self, k):
        eqns = self.kernel_eqns[k]
        body = fuse_loops([s for e in eqns for s in self._fwd_eqn(e)])
        if k == self.top:
            y = lambda i: self.buf("Y", f"t, {i}")
            body += [Loop(self.W(v), [Set(self.at(y(i)), self.read(v))])
                     for i, v in enumerate(self.outputs) if self.out_index.get(v) != i]
            body.append(Padded([Loop(self.W(s), [Set(self.at(y(i)), self.read(s))])  # carry the state
                                for i, s in enumerate(self.states)]))
        return Kernel(f"_forward_stage{k}", f"Stage {k} of step t, row by row: {_summary(eqns)}.",
                      len(self.states), body)

    def _fwd_eqn(self, e):
        if e.op == "getitem":
            return []
        out_buf, out_base = self.view(e.out)
        target = lambda index="j", local="0": el(out_buf, index, self, out_base, local)
        if e.op == "cat":
            return [Loop(self.W(v), [Set(target(local=at), self.read(v), full=False)]) for v, at in self._cat_parts(e)]
        if e.op in REDUCTIONS:
            a = e.ins[0]
            init = self.read(a, "0") if e.op == "max" else self.lit_const(0)
            total = lit("acc", self)
            fin = Ex("bin", ("/", total, lit(f"DT({self.W(a)})", self)), self) if e.op == "mean" else total
            return [Reduce("acc", init, self.W(a), self.read(a), "max" if e.op == "max" else "+",
                           [Set(target("0"), fin)])]

        def lower():
            syms, params = self._operands(e)
            expr = self.row_scalar(ops.OPS[e.op].fwd(self.k, *syms, **params))  # a row scalar: broadcast along the row
            return [Loop(self.W(e.out), [Set(target(), expr)])]
        return self._with_row_scalars(e, lower)

    def _operands(self, e):
        """One element of each operand of pointwise ``e`` and the parameters the op table's
        lambdas take (``where``'s condition is an operand here, a parameter there)."""
        syms, params = [self.sym(v, e.out) for v in e.ins], e.params
        if e.op == "where":
            params["cond"] = syms.pop()
        return syms, params

    def _cat_parts(self, e):
        """Each part of a cat and where it starts in the row (source)."""
        start = (0, 0, 0)
        for v in e.ins:
            yield v, fmt(start)
            start = tuple(a + b for a, b in zip(start, self.wf(v)))

    # -- backward ------------------------------------------------------------------
    def grad(self, v):
        return self.buf(f"d{v.id}", None, self.W(v))

    def grad_target(self, v, k):
        """The buffer stage k adds v's gradient to (None: not differentiable)."""
        if v.role == "const" or self.op_of(v) == "compare":
            return None
        if v in self.aux:
            return self.buf(f"DA{self.aux.index(v)}", shared=True)
        if v in self.states:
            return self.row(f"CS{self.states.index(v)}_{k}", v)
        if self.owner(v) == k:
            return self.grad(v)
        return self.row(f"E{v.id}_{k}", v)

    def _finals(self, v):
        if v in self.hoisted:
            return [self.buf(f"DX{self.hoisted.index(v)}", "t", self.W(v))]
        if v in self.gemm_outs:
            return [self.buf(f"GD{self.gemm_outs.index(v)}", "t", self.W(v))]
        return []

    def carry_names(self, i):
        """Buffers that carry dL/dstate_i to the previous step."""
        s = self.states[i]
        return ([f"CS{i}_{k}" for k in sorted(self.users.get(s, ()))]
                + [f"GL{g}" for g in self.gemm_lhs.get(s, ())] + [f"PASS{i}"])

    def backward_kernel(self, k, dry=False):
        """Stage k's backward kernel; ``dry``: only the forward values its statements read."""
        eqns = self.kernel_eqns[k]
        body = []
        for e in reversed(eqns):  # a state's gradient is complete at its equation: every in-step use is behind us
            body += [Norm(i, self.at(self.grad(v)), self.W(v)) for i, v in enumerate(self.outputs) if v is e.out]
            body += self._bwd_eqn(e, k)
        if dry:
            return {r.var for r in elements(body) if r.var is not None}
        owned = [e.out for e in eqns] + [v for v in (*self.hoisted, *self.gemm_outs)
                                          if self.owner(v) == k and k in self.users.get(v, ())]
        zero = lambda buf, width: Loop(width, [Set(self.at(buf), self.lit_const(0))])
        copy = lambda width, dest, src, add=True: Loop(width, [Set(self.at(dest), self.at(src), add)])
        targets = {}  # outgoing per-row buffers of this stage (zeroed for padded rows)
        for v in [u for e in eqns for u in e.ins] + (self.outputs if k == self.top else []):
            t = self.grad_target(v, k)
            if t is not None and t.lead == "":
                targets[t.name] = (t, self.W(v))
        targets.update({f"CS{i}_{k}": (self.grad_target(s, k), self.W(s)) for i, s in enumerate(self.states)
                        if k in self.users.get(s, ())})
        head, padded, contribs = [], [], []
        if k == self.top:
            g = [self.buf(f"g{i}", None, self.W(s)) for i, s in enumerate(self.states)]
            pas = [self.row(f"PASS{i}", s) for i, s in enumerate(self.states)]
            for i, s in enumerate(self.states):  # total dL/dstate_i: upstream plus what the next step carried back
                carried = [self.at(self.row(name, s)) for name in self.carry_names(i)]
                total = sum(carried, self.at(self.buf("dY", f"t, {i}")))
                head.append(Loop(self.W(s), [Set(self.at(g[i]), total), Set(self.at(pas[i]), self.lit_const(0))]))
            head += [Norm(i, self.at(g[i]), self.W(v)) for i, v in enumerate(self.outputs)
                     if v not in self.producer]  # a state passed through: nothing in the step uses the new one
            for i, v in enumerate(self.outputs):
                padded.append(copy(self.W(v), pas[i], g[i], add=False))
                if v in self.producer:
                    padded.append(Norm(i, self.at(g[i]), self.W(v)))
            contribs = [copy(self.W(v), self.grad_target(v, k), g[i]) for i, v in enumerate(self.outputs)]
        padded = ([zero(t, w) for name, (t, w) in sorted(targets.items())]
                  + [zero(f, self.W(v)) for v in owned for f in self._finals(v)] + padded)
        for v in owned:
            contribs += [copy(self.W(v), self.grad(v), self.row(f"E{v.id}_{j}", v))
                         for j in sorted(self.grad_users.get(v, ())) if j != k]
            contribs += [copy(self.W(v), self.grad(v), self.row(f"GL{n}", v)) for n in self.gemm_lhs.get(v, ())]
        covered = self._covered_by_slices(eqns, k)
        stmts = contribs + body
        assigned, single = first_writes_assign(stmts, covered)
        stmts, aliases = alias_copies(stmts, single, lambda b: b.scratch and b.name.startswith("d"))
        # A gate block's gradient is a view into the gradient of the value it was split
        # from, so the split's backward copies nothing.
        views = {}
        for e in eqns:
            src, part = self.grad(e.ins[0]), self.grad(e.out)
            if e.op == "getitem" and src.name in covered and src.name not in aliases and part.name not in aliases:
                lo = self.bounds(e)[0]
                views[part.name] = (src, lo)
                stmts = drop_from_loops(stmts, lambda c: _is_copy_back(c, src, lo, part))
        zeros = [zero(t, w) for name, (t, w) in sorted(targets.items()) if name not in assigned]
        zeros += [zero(self.grad(v), self.W(v)) for v in owned
                  if self.grad(v).name not in assigned and self.grad(v).name not in aliases]
        # a state that is a product's result: its gradient is complete once this, its
        # owning stage, has added every contribution
        finals = [Norm(i, self.at(self.grad(v)), self.W(v)) for i, v in enumerate(self.outputs)
                  if v in owned and self.producer[v].op == "matmul"]
        finals += [copy(self.W(v), f, self.grad(v), add=False) for v in owned for f in self._finals(v)]
        rows = head + [Padded(padded)] + zeros + fuse_loops(stmts + finals)
        substitute(rows, {**aliases, **views})
        rows = self._share_product_gradients(rows)
        return Kernel(f"_backward_stage{k}", f"Gradients through stage {k} of step t, in reverse: "
                      f"{_summary(eqns[::-1])}.", len(self.states), rows)

    def _share_product_gradients(self, rows):
        """A product's gradient (GD) that is the same row as a hoisted value's (DX) or
        another product's (an LSTM's gates: x @ W_ih + h @ W_hh) is not written twice: the
        driver passes that array to the weight gradient's GEMM."""
        first = {}  # the row copied -> the first DX or GD array that holds it

        def copied_before(c):
            t = c.target.args[0] if isinstance(c, Set) and not c.add and c.value.kind == "el" else None
            if t is None or t.lead != "t" or not t.name.startswith(("DX", "GD")):
                return False
            key = (c.value.args[0].name, *c.value.args[1:])
            if t.name.startswith("GD") and key in first:
                self.shared_gd[t.name] = first[key]
                return True
            first.setdefault(key, t.name)
            return False
        rows = drop_from_loops(rows, copied_before)
        for s in rows:
            if isinstance(s, Padded):  # nor zeroed twice
                s.body = drop_from_loops(s.body, lambda z: z.target.args[0].name in self.shared_gd)
        return rows

    def _covered_by_slices(self, eqns, k):
        """Gradient buffers of this stage written only by disjoint slices that tile them
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
                covered.add(self.grad(v).name)
        return covered

    def _bwd_eqn(self, e, k):
        o, w = e.out, self.W(e.out)
        dy = lambda index="j", local="0": self.at(self.grad(o), index, local)
        if e.op == "getitem":
            t = self.grad_target(e.ins[0], k)
            return [Loop(w, [Set(self.at(t, local=self.bounds(e)[0]), dy(), add=True, full=False)])]
        if e.op == "cat":
            parts = [(self.grad_target(v, k), v, at) for v, at in self._cat_parts(e)]
            return [Loop(self.W(v), [Set(self.at(t), dy(local=at), add=True)])
                    for t, v, at in parts if t is not None]
        if e.op in REDUCTIONS:
            a = e.ins[0]
            t = self.grad_target(a, k)
            if t is None:
                return []
            wa = self.W(a)
            if e.op == "max":
                hit = Ex("bin", ("==", self.read(a), self.read(o, "0")), self, boolean=True)
                zero, one = self.lit_const(0), self.lit_const(1)
                share = Ex("if", (hit, Ex("bin", ("/", dy("0"), lit("cnt", self)), self), zero), self)
                return [Reduce("cnt", zero, wa, Ex("if", (hit, one, zero), self), "+",
                               [Loop(wa, [Set(self.at(t), share, add=True)])])]
            if e.op == "mean":  # the row's share, divided once per row
                name = f"r{o.id}_0"
                return [Let(name, Ex("bin", ("/", dy("0"), lit(f"DT({wa})", self)), self)),
                        Loop(wa, [Set(self.at(t), lit(name, self), add=True)])]
            return [Loop(wa, [Set(self.at(t), dy("0"), add=True)])]
        return self._with_row_scalars(e, lambda: self._bwd_pointwise(e, k))

    def _bwd_pointwise(self, e, k):
        o, w = e.out, self.W(e.out)
        syms, params = self._operands(e)
        g = self.at(self.grad(o))
        g.inv = self.wf(o) == (0, 0, 1)
        grads = ops.OPS[e.op].vjp(self.k, g, self.sym(o, o), *syms, **params)
        out = []
        for v, gv in zip(e.ins, grads):
            t = self.grad_target(v, k)
            if t is None or gv is None:
                continue
            gv = self.row_scalar(self.lift(gv))
            if self.wf(v) == self.wf(o):
                out.append(Loop(w, [Set(self.at(t), gv, add=True)]))
            else:  # broadcast along the row: sum the contributions
                out.append(Reduce("acc", self.lit_const(0), w, gv, "+",
                                  [Set(self.at(t, "0"), lit("acc", self), add=True)]))
        return out

    # -- the module: kernels and one driver description for both devices ------------------
    def lhs(self, v):
        """A recurrent product's left operand: (kind, index, lo, hi), kind "state" (state
        index) or an array name and the index before its rows; lo/hi a column range or None."""
        lo = hi = None
        while self.op_of(v) == "getitem":  # slices of slices compose
            a, b = self.bounds(self.producer[v])
            lo, hi = (a, b) if lo is None else (f"({a}) + ({lo})", f"({a}) + ({hi})")
            v = self.producer[v].ins[0]
        if v in self.states:
            return "state", self.states.index(v), lo, hi
        buf, _ = self.view(v)  # a product's G, Y or a residual R: its lead is "t" or "t, <index>"
        return buf.name, buf.lead[len("t, "):], lo, hi

    def module(self):
        """Everything a renderer prints: kernels (arguments filled in) and the drivers."""
        self.plan_storage()
        fwd = {k: self.forward_kernel(k) for k in self.stages}
        bwd = {k: self.backward_kernel(k) for k in reversed(self.stages)}
        S, kernels = len(self.states), [*fwd.values(), *bwd.values()]  # forward by stage, then backward in reverse
        for kern in kernels:
            kern.args = _kernel_args(kern, S)
        weight = lambda e: self.aux.index(e.ins[1])
        fwd_steps, bwd_steps = [], []
        products_at = lambda k: [(n, e) for n, e in enumerate(self.gemms) if self.level[e.out] == k]
        for k in range(self.top + 1):  # a stage's products run even when it has no kernel
            fwd_steps += [("gemm", n, self.lhs(e.ins[0]), weight(e)) for n, e in products_at(k)]
            fwd_steps += [("stage", k)] if k in fwd else []
        for k in range(self.top, -1, -1):
            bwd_steps += [("stage", k)] if k in bwd else []
            bwd_steps += [("gemm", n, None, weight(e)) for n, e in products_at(k)]
        carries = {f"GL{n}": self.W(e.ins[0]) for n, e in enumerate(self.gemms)}
        carries.update({c: self.W(s) for i, s in enumerate(self.states) for c in self.carry_names(i)
                        if not c.startswith("GL")})
        ext = {f"E{v.id}_{k}": self.W(v) for v, ks in self.grad_users.items() for k in ks
               if k != self.owner(v) and v not in self.states and v not in self.aux and v.role != "const"}
        weights = sorted({weight(e) for e in self.gemms})
        return SimpleNamespace(
            fwd=fwd, bwd=bwd, kernels=kernels, S=S, consts=self.consts, zero=self.zero, dtype=self.dtype,
            residual_ids=[v.id for v in self.residuals], output_ids=[v.id for v in self.outputs],
            s0=[f"S0_{i}" for i in range(S)], x=[f"X{n}" for n in range(len(self.hoisted))],
            a=[f"A{n}" for n in range(len(self.aux))], weights=weights,
            flat=[n for n in range(len(self.aux)) if n not in weights],
            residuals=[(f"R{v.id}", self.W(v)) for v in self.residuals],
            shared_gd=self.shared_gd,
            products=[(f"G{n}", self.W(e.out), self.lhs(e.ins[0]), self.W(e.ins[0]), weight(e))
                      for n, e in enumerate(self.gemms)],
            dx=[(f"DX{n}", self.W(v)) for n, v in enumerate(self.hoisted)],
            carries=sorted(carries.items()), ext=sorted(ext.items()),
            dstates=[self.carry_names(i) for i in range(S)],
            fwd_steps=fwd_steps, bwd_steps=bwd_steps,
            widths=sorted({self.W(v) for v in (*self.states, *(e.out for e in self.plan.step_eqns))}))


def lhs_at(lhs, rows=""):
    """A product's left operand (``Generator.lhs``) at step t: rows ``rows`` of it, or every row."""
    kind, index, lo, hi = lhs
    if kind == "state":
        base = f"(S0_{index} if t == 0 else Y[t - 1, {index}])" + (f"[{rows}]" if rows else "")
    else:
        base = f"{kind}[{', '.join(i for i in ('t', index, rows) if i)}]"
    return base + (f"[:, {lo}:{hi}]" if lo is not None else "")


def _is_copy_back(s, src, lo, part):
    """``src[lo + j] = part[j]``: a slice's gradient written back into its source's."""
    if not isinstance(s, Set) or s.add:
        return False
    t, v = s.target.args, s.value.args if s.value.kind == "el" else None
    return t[0] is src and t[1:] == ("0", lo, "j") and v is not None and v[0] is part and v[1:] == ("0", "0", "j")


def _kernel_args(kern, n_states):
    """The arrays a kernel takes: Y and the initial states (its state views), then every
    buffer it touches that is not per-row scratch, in order of first use."""
    names = ["Y", *(f"S0_{i}" for i in range(n_states))]
    names += [b.name for b in kern.bufs() if not b.scratch and not b.name.startswith("sp")]
    return list(dict.fromkeys(names)) + (["SQ"] if any(isinstance(s, Norm) for s in walk(kern.body)) else [])


def _summary(eqns):
    return "; ".join(f"v{e.out.id} = {e.op}({', '.join(v.name for v in e.ins)})" for e in eqns) or "no pointwise work"


def fmt(f):
    """(a, b, c) as source for a*I + b*H + c."""
    terms = [name if coef == 1 else f"{coef} * {name}" for coef, name in zip(f[:2], ("I", "H")) if coef]
    if f[2] or not terms:
        terms.append(str(f[2]))
    return " + ".join(terms).replace("+ -", "- ")
