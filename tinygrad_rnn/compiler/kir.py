"""The kernel IR: what one generated stage kernel does for one row of the batch.

``lower.py`` builds it from a Plan; ``render_cpu.py`` prints it for ``numba.njit`` and
``render_cuda.py`` for ``numba.cuda``. A kernel is a list of statements run for each
row ``b`` of its block at step ``t``:

- ``Loop(width, body)``: ``for j in range(width)``, every statement touching element j
  (or one value per row) of rows of that width. On the GPU the block's threads share j.
- ``Set(target, value, add)``: ``target = value`` or ``+=``; a target in a ``shared``
  buffer (a gradient every row adds to) is a per-block partial on the CPU, an atomic
  add on the GPU.
- ``Let(name, value)``: a row scalar, computed once per row.
- ``Reduce(name, init, width, update, how, then)``: a running total over the row
  (``how`` "+" or "max"), then the statements that use it.
- ``Norm(i, row, width)``: this row's share of the squared norm of dL/dstate_i at step t.
- ``Padded(body)``: for a row past its sequence's length, ``body`` instead of the rest.

Expressions (``Ex``) are trees; an element reference (``el``) names its buffer
(``Buf``), the offset of the row view it reads through and the index within it, so
every pass below is a transformation of this structure, never of source text.
"""


class Buf:
    """An array a kernel reads or writes a row of.

    ``lead``: the index before the row (``"t"``, ``"t, 1"``; ``""`` for a (B, width)
    array), or None for a per-row scratch buffer of ``width`` elements; ``shared``: a
    batch-free array every row adds to (indexed by element, not by row)."""

    __slots__ = ("name", "lead", "width", "shared")

    def __init__(self, name, lead=None, width=None, shared=False):
        self.name, self.lead, self.width, self.shared = name, lead, width, shared

    @property
    def scratch(self):
        return self.lead is None and not self.shared

    def __repr__(self):
        return self.name


class Ex:
    """An expression for one element of a row: ``kind`` and ``args`` (see ``walk``);
    ``var``: the traced value an element reference reads (for liveness); ``inv``: the same
    for every element of the row; ``leaf``: nothing to compute (a name or an element)."""

    __slots__ = ("kind", "args", "gen", "var", "inv", "leaf", "boolean")

    def __init__(self, kind, args, gen, var=None, inv=False, leaf=False, boolean=False):
        self.kind, self.args, self.gen, self.var = kind, tuple(args), gen, var
        self.inv, self.leaf, self.boolean = inv, leaf, boolean

    # The op table's lambdas evaluate on these: arithmetic builds trees.
    def _bin(self, other, op, rev=False):
        other = self.gen.lift(other)
        (a, b), inv = self.gen.row_parts((other, self) if rev else (self, other))
        if op == "*" and (a.boolean or b.boolean):
            cond, val = (a, b) if a.boolean else (b, a)
            return Ex("if", (cond, val, self.gen.lit_const(0)), self.gen, inv=inv)
        return Ex("bin", (op, a, b), self.gen, inv=inv)

    def __add__(self, o): return self._bin(o, "+")
    def __radd__(self, o): return self._bin(o, "+", True)
    def __sub__(self, o): return self._bin(o, "-")
    def __rsub__(self, o): return self._bin(o, "-", True)
    def __mul__(self, o): return self._bin(o, "*")
    def __rmul__(self, o): return self._bin(o, "*", True)
    def __truediv__(self, o): return self._bin(o, "/")
    def __rtruediv__(self, o): return self._bin(o, "/", True)
    def __neg__(self): return Ex("neg", (self,), self.gen, inv=self.inv)

    def __pow__(self, p):
        p, g = float(p), self.gen
        if p == 0:
            return g.lit_const(1)
        if p == 1:
            return self
        if p == 2:
            return Ex("bin", ("*", self, self), g, inv=self.inv)
        if p == 0.5:
            return Ex("call", ("sqrt", self), g, inv=self.inv)
        if p == -1:
            return Ex("bin", ("/", g.lit_const(1), self), g, inv=self.inv)
        if p == -0.5:  # the gradient of ** 0.5 (a layer norm's): a vectorised sqrt, not a call of pow
            return Ex("bin", ("/", g.lit_const(1), Ex("call", ("sqrt", self), g, inv=self.inv)), g, inv=self.inv)
        return Ex("pow", (self, g.lit_const(p)), g, inv=self.inv)

    def _cmp(self, o, op):
        (a, b), inv = self.gen.row_parts((self, self.gen.lift(o)))
        return Ex("bin", (op, a, b), self.gen, boolean=True, inv=inv)

    def __gt__(self, o): return self._cmp(o, ">")
    def __ge__(self, o): return self._cmp(o, ">=")
    def __lt__(self, o): return self._cmp(o, "<")
    def __le__(self, o): return self._cmp(o, "<=")

    def __and__(self, o):
        (a, b), inv = self.gen.row_parts((self, o))
        return Ex("bin", ("and", a, b), self.gen, boolean=True, inv=inv)


def lit(code, gen):
    """A name or literal (a constant ``K3``, a row scalar, ``acc``, ``DT(H)``)."""
    return Ex("lit", (code,), gen, inv=True, leaf=True)


def el(buf, index="j", gen=None, base="0", local="0", var=None):
    """Element ``index`` of a row at ``local`` within the row view at ``base`` of ``buf``."""
    return Ex("el", (buf, base, local, index), gen, var=var, inv=index != "j", leaf=True)


# ---- statements -------------------------------------------------------------------
class Stmt:
    """A statement: its fields (``__slots__``), of which ``EXPRS`` hold expressions and
    ``BLOCKS`` nested statement lists."""

    EXPRS = BLOCKS = ()
    DEFAULTS = {}

    def __init__(self, *values, **named):
        given = {**self.DEFAULTS, **dict(zip(self.__slots__, values)), **named}
        for name in self.__slots__:
            setattr(self, name, list(given[name]) if name in self.BLOCKS else given[name])


class Loop(Stmt):
    __slots__, BLOCKS = ("width", "body"), ("body",)


class Set(Stmt):
    # full: the write covers its target's whole row (a slice's gradient does not)
    __slots__, EXPRS, DEFAULTS = ("target", "value", "add", "full"), ("target", "value"), {"add": False, "full": True}


class Let(Stmt):
    __slots__, EXPRS = ("name", "value"), ("value",)


class Reduce(Stmt):
    __slots__, EXPRS, BLOCKS = ("name", "init", "width", "update", "how", "then"), ("init", "update"), ("then",)


class Norm(Stmt):
    __slots__, EXPRS = ("i", "row", "width"), ("row",)


class Padded(Stmt):
    __slots__, BLOCKS = ("body",), ("body",)


class Kernel:
    """One stage kernel: ``name``, its docstring, the state views it binds (``states``: how
    many), the statements for one row, and the arrays it takes (``args``, filled in last)."""

    def __init__(self, name, doc, states, body):
        self.name, self.doc, self.states, self.body, self.args = name, doc, states, body, None

    def bufs(self):
        """Every buffer the kernel touches."""
        seen = {}
        for e in elements(self.body):
            seen.setdefault((e.args[0].name, e.args[0].lead), e.args[0])
        return list(seen.values())


# ---- walking --------------------------------------------------------------------
def walk(stmts):
    """Every statement, nested ones after the one holding them (program order)."""
    for s in stmts:
        yield s
        for block in s.BLOCKS:
            yield from walk(getattr(s, block))


def children(e):
    return [a for a in e.args if isinstance(a, Ex)]


def nodes(stmts, exprs=()):
    """Every expression node of the statements (targets included) and of ``exprs``."""
    stack = [getattr(s, name) for s in walk(stmts) for name in s.EXPRS] + list(exprs)
    while stack:
        e = stack.pop()
        yield e
        stack.extend(children(e))


def elements(stmts, exprs=()):
    """Every element reference in the statements and in ``exprs``."""
    return (e for e in nodes(stmts, exprs) if e.kind == "el")


def remap(e, fn):
    """``e`` with every element reference replaced by ``fn(ref)`` (a new tree)."""
    if e.kind == "el":
        return fn(e)
    if not children(e):
        return e
    args = tuple(remap(a, fn) if isinstance(a, Ex) else a for a in e.args)
    return Ex(e.kind, args, e.gen, e.var, e.inv, e.leaf, e.boolean)


_TRANSCENDENTAL = ("tanh", "sigmoid", "exp", "log", "sqrt")


def transcendentals(stmts):
    return sum(e.kind == "pow" or (e.kind == "call" and e.args[0] in _TRANSCENDENTAL) for e in nodes(stmts))


# ---- passes ----------------------------------------------------------------------
def element_j_only(s):
    """Whether a loop statement touches element j (or a row's one value) only: no read or
    write at an offset within the row (a slice's or a cat's part), no running total."""
    return isinstance(s, Set) and all(e.args[2] == "0" and e.args[3] in ("j", "0")
                                      for e in elements([s]))


def fuse_loops(stmts):
    """Merge back-to-back one-statement loops over the same range into one loop.

    Only statements that touch element j alone are merged, so a merged loop computes
    what the separate loops did, and on the GPU its threads never read what another
    thread writes. A merged loop keeps at most one transcendental call: loops with one
    vectorise, loops with several do not (a loop with two was 3.5x slower than two loops
    with one each)."""
    out, i = [], 0
    while i < len(stmts):
        s = stmts[i]
        i += 1
        if not (isinstance(s, Loop) and len(s.body) == 1):
            out.append(s)
            continue
        body = list(s.body)
        while (i < len(stmts) and isinstance(stmts[i], Loop) and stmts[i].width == s.width
               and len(stmts[i].body) == 1 and element_j_only(body[-1]) and element_j_only(stmts[i].body[0])
               and transcendentals(body) + transcendentals(stmts[i].body) <= 1):
            body.append(stmts[i].body[0])
            i += 1
        out.append(Loop(s.width, body))
    return out


def first_writes_assign(stmts, covered):
    """Turn ``+=`` into ``=`` where a gradient row gets exactly one full write first, or is
    tiled by slices (``covered``: buffer names); return (names that need no zeroing,
    names written exactly once)."""
    writes = {}
    for s in walk(stmts):
        if isinstance(s, Set) and s.add and not s.target.args[0].shared:
            writes.setdefault(s.target.args[0].name, []).append(s)
    assigned = {name for name, ws in writes.items() if name in covered or ws[0].full}
    for name in assigned:
        for s in writes[name] if name in covered else writes[name][:1]:
            s.add = False
    return assigned, {n for n, ws in writes.items() if len(ws) == 1}


def drop_from_loops(stmts, drop):
    """The statements without the loop statements ``drop`` picks, and without loops left empty."""
    for s in stmts:
        if isinstance(s, Loop):
            s.body = [c for c in s.body if not drop(c)]
    return [s for s in stmts if not (isinstance(s, Loop) and not s.body)]


def alias_copies(stmts, single, is_grad):
    """A gradient row whose one write (``single``) is a plain copy of another row (the
    identity VJP of add, a seed) becomes a second name for it: no array, no copy loop.
    Safe because a source is complete before it is copied and nothing writes either name
    after. Returns (statements, {name: (buffer, offset)})."""
    def is_alias(c):
        return (isinstance(c, Set) and not c.add and is_grad(c.target.args[0]) and c.target.args[0].name in single
                and c.value.kind == "el" and c.target.args[1:] == c.value.args[1:] == ("0", "0", "j"))
    aliases = {c.target.args[0].name: (c.value.args[0], "0")
               for s in stmts if isinstance(s, Loop) for c in s.body if is_alias(c)}
    return drop_from_loops(stmts, is_alias), aliases


def substitute(stmts, mapping):
    """Replace each buffer named in ``mapping`` ({name: (buffer, offset)}) by its target,
    chains resolved, in place."""
    def resolve(name):
        buf, off = mapping[name]
        if buf.name in mapping:
            inner, inner_off = resolve(buf.name)
            return inner, plus(inner_off, off)
        return buf, off

    resolved = {name: resolve(name) for name in mapping}

    def fn(e):
        buf, base, local, index = e.args
        if buf.name not in resolved:
            return e
        target, off = resolved[buf.name]
        return Ex("el", (target, plus(off, base), local, index), e.gen, e.var, e.inv, e.leaf, e.boolean)
    for s in walk(stmts):
        for name in s.EXPRS:
            setattr(s, name, remap(getattr(s, name), fn))


def plus(a, b):
    """Two offsets (source) added."""
    if a == "0":
        return b
    if b == "0":
        return a
    return f"{a} + {b}"


# ---- printing, shared by the renderers -------------------------------------------
# How each kind of expression prints; ``s`` gives an operand's source (called in the order
# they print: a renderer binds the arrays it reads in that order).
_FORMS = {"lit": lambda a, s: a[0],
          "bin": lambda a, s: f"({s(a[1])} {a[0]} {s(a[2])})",
          "neg": lambda a, s: f"(-{s(a[0])})",
          "pow": lambda a, s: f"({s(a[0])} ** {s(a[1])})",
          "if": lambda a, s: f"({s(a[1])} if {s(a[0])} else {s(a[2])})"}


def source(e, r):
    """Python source for expression ``e``; ``r`` (a renderer) spells element references
    (``r.element``) and calls (``r.call``)."""
    if e.kind == "el":
        return r.element(e)
    if e.kind == "call":
        return r.call(e.args[0], [source(x, r) for x in e.args[1:]])
    return _FORMS[e.kind](e.args, lambda x: source(x, r))


def index_of(e):
    """The index of an element reference within its buffer's row, as source."""
    _, base, local, index = e.args
    off = plus(base, local)
    return index if off == "0" else f"{off} + {index}"


# min and max as Python's (the first argument wins ties and NaNs), written out for both
# renderers: Numba compiles its builtin ``max`` (an ``overload``) again in every process
# that compiles a new cell, and a CUDA device function call needs a GPU to compile.
MIN_MAX = {"max": "(({1}) if ({1}) > ({0}) else ({0}))", "min": "(({1}) if ({1}) < ({0}) else ({0}))"}
# A row's running max (``max`` over the hidden axis) is NumPy's: a NaN anywhere in the row
# makes it NaN, as on the step path (``{0}`` the total so far, ``{1}`` the next element).
ROW_MAX = "(({1}) if ({1}) > ({0}) or ({1}) != ({1}) else ({0}))"


class RowPrinter:
    """What both renderers print alike: an element reference as ``NAME[b, index]`` (an
    array indexed by step bound once per step: ``X0_t = X0[t]``, collected in ``bound``),
    ``name[index]`` for scratch rows and batch-free arrays."""

    def __init__(self):
        self.bound = {}

    def element(self, e):
        buf, index = e.args[0], index_of(e)
        if buf.shared and buf.name.startswith("A") and index == "0":
            # a batch-free value one wide (a traced constant: eps, beta, dt) is an input, not a
            # literal, so that a cell attribute changed between calls reuses the compiled
            # kernels; read once per step, it is a local scalar inside the loops
            self.bound[f"{buf.name}_0"] = f"{buf.name}[0]"
            return f"{buf.name}_0"
        if buf.shared or buf.lead is None:
            return f"{buf.name}[{index}]"
        if buf.lead == "":
            return f"{buf.name}[b, {index}]"
        name = f"{buf.name}_{buf.lead.replace(', ', '_')}"
        self.bound[name] = f"{buf.name}[{buf.lead}]"
        return f"{name}[b, {index}]"


def describe(stmts, depth=1):
    """The statements as readable text (``tinygrad-rnn compile`` prints kernels so)."""
    class _Plain:
        def element(self, e):
            buf = e.args[0]
            row = "" if buf.lead is None or buf.shared else (f"{buf.lead}, b, " if buf.lead else "b, ")
            return f"{buf.name}[{row}{index_of(e)}]"

        def call(self, fn, args):
            return f"{fn}({', '.join(args)})"
    r, pad, out = _Plain(), "    " * depth, []
    for s in stmts:
        if isinstance(s, Loop):
            out += [f"{pad}for j < {s.width}:", *describe(s.body, depth + 1)]
        elif isinstance(s, Set):
            out.append(f"{pad}{source(s.target, r)} {'+=' if s.add else '='} {source(s.value, r)}")
        elif isinstance(s, Let):
            out.append(f"{pad}{s.name} = {source(s.value, r)}")
        elif isinstance(s, Reduce):
            out.append(f"{pad}{s.name} = {s.how}-reduce over j < {s.width} of {source(s.update, r)} "
                       f"from {source(s.init, r)}")
            out += describe(s.then, depth)
        elif isinstance(s, Norm):
            out.append(f"{pad}norm[{s.i}, t] += |{source(s.row, r)}|^2 over j < {s.width}")
        elif isinstance(s, Padded):
            out += [f"{pad}if padded:", *describe(s.body, depth + 1), f"{pad}    next row"]
    return out
