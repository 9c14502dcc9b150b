"""Random recurrent cells written as users write ``step``, and the differential check that
runs each one compiled and on the step path.

``generate(seed)`` gives the Python source of one ``tr.Cell`` subclass drawn from a grammar
of what ``step`` may use: input and recurrent products, ``cat([...]) @ W``, products of
intermediates, slices and ``split``, ``cat`` of intermediates, row reductions
(mean / sum / max with keepdims), ``where`` on comparisons, ``clip``, ``**``, ``/``,
sigmoid / tanh / relu / leaky_relu / exp / log, constants and constant attributes of the
cell, 1 or 2 states, parameters of several shapes and inits; values that nothing reads,
too. ``load(source)`` makes it a real class (from a file, so tracebacks and the
compiler's error messages name its lines). ``check(cls)`` runs it and returns an
``Outcome``: ``equal`` (compiled and equal to the step path in float64), ``refused``
(a ``CompileError`` from the cell's own doing, with a short reason), ``bug`` (a mismatch,
a crash, a ``CompileError`` that reports our own failure, or ``fused=None`` that does not
fall back), or ``invalid`` (the step path itself fails: the grammar's fault, not the
compiler's).

``benchmarks/fuzz_cells.py`` runs thousands; tests/test_fuzz_cells.py a fixed-seed sample.
"""
import importlib.util
import os
import random
import re
import sys
import tempfile
import warnings
from dataclasses import dataclass, field

import numpy as np

# Sizes: tiny, so a compile is the only real cost. H >= 3 keeps H - 1 and H // 2 meaningful.
INPUT, HIDDEN, SEQ, BATCH, LAYERS = 2, 3, 4, 3, 2
LENGTHS = [4, 2, 1]          # padded rows: the 2nd and 3rd sequences end early
TOLERANCE = 1e-10            # the compiler's promise: compiled == step path to 1e-10 relative


# ---- widths: a*I + b*H + c, printed the way a user writes them ---------------------------

def _width_text(w, i_name, h_name):
    a, b, c = w
    parts = [name if coef == 1 else f"{coef} * {name}" for coef, name in ((a, i_name), (b, h_name)) if coef]
    text = " + ".join(parts)
    if not text:
        return str(c)
    return text + (f" + {c}" if c > 0 else f" - {-c}" if c < 0 else "")


PROBE_SIZES = [(2, 3), (3, 3), (2, 4), (5, 7)]  # (I, H): a width formula must be >= 1 at each


def _at(w, I, H):
    return w[0] * I + w[1] * H + w[2]


def _init_width(w):
    return _width_text(w, "input_size", "hidden_size")


def _step_width(w):
    return _width_text(w, "I", "H")


def _add(w, v):
    return tuple(p + q for p, q in zip(w, v))


X_W, H_W, ROW_W, H2_W = (1, 0, 0), (0, 1, 0), (0, 0, 1), (0, 2, 0)


@dataclass
class Val:
    name: str
    width: tuple
    dep_s: bool          # depends on a state (through the step)
    mag: float           # a rough bound on |value|, to keep exp and ** finite
    depth: int = 0       # recurrent products on its path from the states (2: a product of a product)


@dataclass
class _Gen:
    rng: random.Random
    num_states: int
    chain_products: bool = True   # False: no product takes a recurrent product's result as operand
    params: list = field(default_factory=list)      # (name, shape text, init)
    consts: list = field(default_factory=list)      # (attribute, value)
    lines: list = field(default_factory=list)
    pool: list = field(default_factory=list)
    uses_i: bool = False
    uses_h: bool = False
    counter: int = 0

    def fresh(self):
        self.counter += 1
        return f"v{self.counter}"

    def param(self, shape_widths, kind):
        """A new parameter; ``kind`` 'matrix' or 'vector'. Returns its expression."""
        name = f"self.p{len(self.params)}"
        if kind == "matrix":
            init = self.rng.choice(["xavier_uniform", "xavier_uniform", "xavier_normal", "orthogonal",
                                    "uniform", "kaiming_uniform", "identity"])
            if init in ("orthogonal", "identity") and shape_widths[0] == ROW_W:
                init = "xavier_uniform"
            shape = f"({_init_width(shape_widths[0])}, {_init_width(shape_widths[1])})"
        else:
            init = self.rng.choice(["zeros", "ones", "uniform", "uniform", "normal"])
            w = shape_widths[0]
            shape = self.rng.choice([f"({_init_width(w)},)", f"(1, {_init_width(w)})"])
        self.params.append((name, shape, init))
        return name

    def const(self):
        """A constant: a literal, or (sometimes) a constant attribute of the cell, like beta or eps."""
        value = self.rng.choice([0.5, 0.1, 2.0, 1.5, 0.25, 3.0])
        if self.rng.random() < 0.25:
            attr = f"self.{self.rng.choice(['alpha', 'beta', 'dt', 'scale'])}{len(self.consts)}"
            self.consts.append((attr, value))
            return attr, value
        return repr(value), value

    def emit(self, expr, width, dep_s, mag, depth=None):
        """A new line ``vN = expr``; ``depth`` defaults to the deepest value ``expr`` reads."""
        name = self.fresh()
        self.lines.append(f"{name} = {expr}")
        if depth is None:
            read = set(re.findall(r"\b(v\d+)\b", expr))
            depth = max([v.depth for v in self.pool if v.name in read] + [0])
        v = Val(name, width, dep_s, min(mag, 1e6), depth)
        self.pool.append(v)
        return v

    def pick(self, pred=lambda v: True, prefer_recent=True):
        cands = [v for v in self.pool if pred(v)]
        if not cands:
            return None
        if prefer_recent and self.rng.random() < 0.6:
            return cands[-1 - min(len(cands) - 1, int(self.rng.expovariate(0.7)))]
        return self.rng.choice(cands)

    def tame(self, v, limit):
        """``v``'s name, or a bounded form of it when it may be too large for exp or **."""
        if v.mag <= limit:
            return v.name, v.mag
        return self.rng.choice([(f"{v.name}.tanh()", 1.0), (f"{v.name}.clip(-3, 3)", 3.0),
                                (f"{v.name}.sigmoid()", 1.0)])

    # ---- the productions ----------------------------------------------------------------

    def product(self):
        if not self.chain_products:
            return self._flat_product()
        r = self.rng.random()
        out_w = self.rng.choice([H_W, H_W, H2_W])
        states = [v for v in self.pool if v.name.startswith("s")]
        if r < 0.2:
            lhs, w, dep, mag = "x", X_W, False, 3.0
        elif r < 0.45:
            s = self.rng.choice(states)
            lhs, w, dep, mag = s.name, H_W, True, s.mag
        elif r < 0.7:
            other = self.pick(lambda v: v.name != "x" and v.width != ROW_W) or self.rng.choice(states)
            parts = ["x", other.name] if self.rng.random() < 0.7 else [other.name, "x"]
            if len(states) == 2 and self.rng.random() < 0.3:
                parts = ["x", "s0", "s1"]
                lhs_w = _add(X_W, H2_W)
                dep, mag = True, 3.0
            else:
                lhs_w = _add(X_W, other.width)
                dep, mag = other.dep_s, max(3.0, other.mag)
            lhs, w = f"tr.cat([{', '.join(parts)}], axis=-1)", lhs_w
        else:
            v = self.pick(lambda v: v.name != "x")
            if v is None:
                return self.pointwise()
            if self.rng.random() < 0.25:  # an operand written inline, as in (s0 + self.p0) @ W
                vec = self.param([v.width], "vector")
                lhs = f"({v.name} + {vec})"
            else:
                lhs = v.name
            w, dep, mag = v.width, v.dep_s, v.mag
        weight = self.param([w, out_w], "matrix")
        return self.emit(f"{lhs} @ {weight}", out_w, dep, mag * 2 + 1, self._depth_of(lhs) + dep)

    def _depth_of(self, expr):
        read = set(re.findall(r"\b(v\d+)\b", expr))
        return max([v.depth for v in self.pool if v.name in read] + [0])

    def _flat_product(self):
        """A product whose operand has no recurrent product upstream (x, states, their
        pointwise results): every cell then has a single stage of products."""
        v = self.pick(lambda v: v.depth == 0 and v.width != ROW_W)
        out_w = self.rng.choice([H_W, H_W, H2_W])
        if v.name != "x" and self.rng.random() < 0.4:
            lhs, w = f"tr.cat([x, {v.name}], axis=-1)", _add(X_W, v.width)
        else:
            lhs, w = v.name, v.width
        weight = self.param([w, out_w], "matrix")
        return self.emit(f"{lhs} @ {weight}", out_w, v.dep_s, v.mag * 2 + 1, int(v.dep_s))

    def pointwise(self):
        kind = self.rng.choice(["binary", "binary", "binary", "unary", "unary", "div", "pow", "where",
                                "clip", "reduce", "reduce", "slice", "split", "cat", "layernorm", "const"])
        return getattr(self, "_" + kind)()

    def _operand_like(self, a):
        """Something that combines with ``a`` row by row: same width, a (B, 1) row value, a
        parameter vector, or a constant."""
        r = self.rng.random()
        if r < 0.5:
            b = self.pick(lambda v: v is not a and v.width == a.width)
            if b is not None:
                return b.name, b.dep_s, b.mag
        if r < 0.7:
            b = self.pick(lambda v: v.width == ROW_W)
            if b is not None:
                return b.name, b.dep_s, b.mag
        if r < 0.85:
            return self.param([a.width], "vector"), False, 2.0
        text, value = self.const()
        return text, False, abs(value)

    def _operand(self):
        return self.pick(lambda v: v.name != "x" or self.rng.random() < 0.3)

    def _binary(self):
        a = self._operand()
        b, dep, mag = self._operand_like(a)
        op = self.rng.choice(["+", "-", "*", "*"])
        if self.rng.random() < 0.5 or op == "-":
            expr = f"{a.name} {op} {b}"
        else:
            expr = f"{b} {op} {a.name}"
        m = a.mag * mag if op == "*" else a.mag + mag
        w = a.width
        return self.emit(expr, w, a.dep_s or dep, m)

    def _unary(self):
        a = self._operand()
        fn = self.rng.choice(["tanh", "sigmoid", "relu", "exp", "log", "leaky_relu", "neg"])
        if fn == "exp":
            text, mag = self.tame(a, 4.0)
            if text != a.name:
                text = f"({text})"
            return self.emit(f"{text}.exp()", a.width, a.dep_s, np.exp(mag))
        if fn == "log":
            form = self.rng.choice([f"({a.name} * {a.name} + 1).log()", f"({a.name}.sigmoid() + 0.1).log()"])
            return self.emit(form, a.width, a.dep_s, np.log(a.mag * a.mag + 1) + 3)
        if fn == "neg":
            return self.emit(f"-{a.name}", a.width, a.dep_s, a.mag)
        if fn == "leaky_relu":
            return self.emit(f"{a.name}.leaky_relu(0.1)", a.width, a.dep_s, a.mag)
        return self.emit(f"{a.name}.{fn}()", a.width, a.dep_s, 1.0 if fn != "relu" else a.mag)

    def _div(self):
        a = self._operand()
        b = self.pick(lambda v: v.width in (a.width, ROW_W)) or a
        form = self.rng.choice(["sq", "exp", "const", "recip", "param"])
        if form == "sq":
            expr, mag = f"{a.name} / ({b.name} * {b.name} + 1)", a.mag
        elif form == "exp":
            t, _ = self.tame(b, 4.0)
            expr, mag = f"{a.name} / (1 + ({t}).exp())", a.mag
        elif form == "const":
            text, value = self.const()
            expr, mag = f"{a.name} / {text}", a.mag / value
        elif form == "recip":  # b's width, not a's: b may be a row value (fuzz seed 9074 made a cat too wide)
            expr, mag, a = f"1 / (1 + {b.name} * {b.name})", 1.0, b
        else:
            vec = self.param([a.width], "vector")
            expr, mag = f"{a.name} / ({vec} * {vec} + 1)", a.mag
        return self.emit(expr, a.width, a.dep_s or b.dep_s, mag)

    def _pow(self):
        a = self._operand()
        form = self.rng.choice(["2", "3", "sqrt", "neg"])
        if form == "2":
            t, mag = self.tame(a, 30.0)
            return self.emit(f"{t if t == a.name else '(' + t + ')'} ** 2", a.width, a.dep_s, mag * mag)
        if form == "3":
            t, mag = self.tame(a, 5.0)
            return self.emit(f"{t if t == a.name else '(' + t + ')'} ** 3", a.width, a.dep_s, mag ** 3)
        if form == "sqrt":
            return self.emit(f"({a.name} * {a.name} + 1e-3) ** 0.5", a.width, a.dep_s, a.mag + 0.1)
        return self.emit(f"({a.name}.sigmoid() + 0.5) ** -1.5", a.width, a.dep_s, 3.0)

    def _where(self):
        a = self._operand()
        r = self.rng.random()
        if r < 0.4:
            cond = f"{a.name} > 0"
        else:
            c = self.pick(lambda v: v is not a and v.width in (a.width, ROW_W))
            cond = f"{a.name} > {c.name}" if c else f"{a.name} < 0.5"
        b, dep, mag = self._operand_like(a)
        other = self.pick(lambda v: v.width == a.width and v is not a)
        first = other.name if other is not None and self.rng.random() < 0.5 else a.name
        first_v = other if first != a.name else a
        return self.emit(f"tr.where({cond}, {first}, {b})", a.width, first_v.dep_s or dep,
                         max(first_v.mag, mag))

    def _clip(self):
        a = self._operand()
        lo, hi = self.rng.choice([(-1, 1), (0, 2), (-0.5, 0.5), (0, None), (None, 1)])
        args = ", ".join(["None" if v is None else repr(v) for v in (lo, hi)])
        mag = a.mag if lo is None or hi is None else max(abs(lo), abs(hi))
        return self.emit(f"{a.name}.clip({args})", a.width, a.dep_s, mag)

    def _reduce(self):
        a = self.pick(lambda v: v.width != ROW_W) or self.pool[0]
        fn = self.rng.choice(["mean", "sum", "max"])
        mag = a.mag * (4 if fn == "sum" else 1)
        return self.emit(f"{a.name}.{fn}(axis=-1, keepdims=True)", ROW_W, a.dep_s, mag)

    def _slice(self):
        a = self.pick(lambda v: v.width not in (ROW_W, X_W))
        if a is None:
            return self._binary()
        # (lo, hi) as width formulas; None: the row's end
        forms = [((0, 0, 1), None), ((0, 0, 0), (0, 0, 1)), ((0, 0, 0), H_W), ((0, 0, 1), H_W),
                 (H_W, None), ((0, 0, 1), (0, 1, 1)), ((0, 0, 0), (0, 0, 2))]
        ok = []
        for lo, hi in forms:
            end = a.width if hi is None else hi
            if all(0 <= _at(lo, I, H) < _at(end, I, H) <= _at(a.width, I, H) and
                   (_at(lo, I, H), _at(end, I, H)) != (0, _at(a.width, I, H)) for I, H in PROBE_SIZES):
                ok.append((lo, hi))
        if not ok:
            return self._binary()
        lo, hi = self.rng.choice(ok)
        end = a.width if hi is None else hi
        text = lambda w: "" if w in ((0, 0, 0), None) else _step_width(w)
        if any(w and w[1] for w in (lo, hi)):
            self.uses_h = True
        width = tuple(p - q for p, q in zip(end, lo))
        return self.emit(f"{a.name}[:, {text(lo)}:{text(hi)}]", width, a.dep_s, a.mag)

    def _split(self):
        a = self.pick(lambda v: v.width[1] >= 2 or (v.width[0] and v.width[1]))
        if a is None:
            return self._slice()
        if a.width[1] >= 2 and not a.width[0] and a.width[2]:  # 2H - 1 wide, say: a slice instead
            return self._slice()
        if a.width[1] >= 2 and not a.width[0]:
            self.uses_h = True
            pieces = [H_W] * a.width[1]
            call = f"{a.name}.split(H, axis=-1)"
        else:
            self.uses_i = self.uses_h = True
            rest = _add(a.width, (-1, 0, 0))
            pieces = [X_W, rest]
            call = f"{a.name}.split([I, {_step_width(rest)}], axis=-1)"
        names = [self.fresh() for _ in pieces]
        self.lines.append(f"{', '.join(names)} = {call}")
        for n, w in zip(names, pieces):
            self.pool.append(Val(n, w, a.dep_s, a.mag, a.depth))
        return self.pool[-1]

    def _cat(self):
        a = self._operand()
        b = self.pick(lambda v: v is not a and v.width != X_W) or a
        w = _add(a.width, b.width)
        if w[1] > 3 or w[0] > 1:
            return self._binary()
        return self.emit(f"tr.cat([{a.name}, {b.name}], axis=-1)", w, a.dep_s or b.dep_s, max(a.mag, b.mag))

    def _layernorm(self):
        """Layer normalisation as users write it (the form issue 17 timed)."""
        a = self.pick(lambda v: v.width != ROW_W and v.name != "x") or self._operand()
        mu = self.emit(f"{a.name}.mean(axis=-1, keepdims=True)", ROW_W, a.dep_s, a.mag)
        var = self.emit(f"(({a.name} - {mu.name}) ** 2).mean(axis=-1, keepdims=True)", ROW_W, a.dep_s,
                        4 * a.mag * a.mag)
        eps, _ = self.const() if self.rng.random() < 0.3 else ("1e-5", 1e-5)
        return self.emit(f"({a.name} - {mu.name}) / ({var.name} + {eps}) ** 0.5", a.width, a.dep_s, 3.0)

    def _const(self):
        a = self._operand()
        text, value = self.const()
        expr = self.rng.choice([f"{text} * {a.name}", f"1 - {a.name}", f"{a.name} + {text}", f"{a.name} * -{text}"])
        return self.emit(expr, a.width, a.dep_s, a.mag * value + 1)

    # ---- the new states ------------------------------------------------------------------

    def new_state(self, i):
        """A (B, H) value for state ``i``, usually depending on a state (else the cell is
        refused: no recurrence), bounded so that T steps and 2 layers stay finite."""
        recurrent = self.rng.random() < 0.93
        cand = [v for v in self.pool if v.width == H_W and v.name != f"s{i}" and (v.dep_s or not recurrent)]
        if recurrent:
            cand = [v for v in cand if v.dep_s]
        if cand and self.rng.random() < 0.85:
            v = cand[-1] if self.rng.random() < 0.6 else self.rng.choice(cand)
        else:
            src = self.pick(lambda v: v.width != ROW_W and (v.dep_s or not recurrent)) or \
                (self.pool[1] if recurrent else self.pool[0])
            if not self.chain_products:
                src = self.pick(lambda v: v.width != ROW_W and v.depth == 0 and (v.dep_s or not recurrent)) \
                    or (self.pool[1] if recurrent else self.pool[0])
            v = self.emit(f"{src.name} @ {self.param([src.width, H_W], 'matrix')}", H_W, src.dep_s, src.mag * 2,
                          src.depth + src.dep_s)
        form = self.rng.choice(["tanh", "tanh", "mix", "clip", "sigmoid", "plain", "residual"])
        s = f"s{i}"
        if form == "plain" and v.mag <= 3:
            return v.name
        if form == "mix":
            z = self.pick(lambda u: u.width in (H_W, ROW_W) and u is not v)
            gate = f"{z.name}.sigmoid()" if z is not None else "0.5"
            return f"(1 - {gate}) * {s} + {gate} * {v.name}.tanh()"
        if form == "clip":
            return f"{v.name}.clip(-2, 2)"
        if form == "residual":
            return f"0.5 * {s} + 0.5 * {v.name}.tanh()"
        return f"{v.name}.{'sigmoid' if form == 'sigmoid' else 'tanh'}()"


def generate(seed, chain_products=True):
    """The source of one random cell (a module defining class ``Cell{seed}``), fully
    determined by ``seed`` (and ``chain_products``: False keeps every product's operand free
    of recurrent products, to find other bugs while that form is broken)."""
    rng = random.Random(seed)
    num_states = 2 if rng.random() < 0.35 else 1
    g = _Gen(rng, num_states, chain_products)
    g.pool.append(Val("x", X_W, False, 3.0))
    for i in range(num_states):
        g.pool.append(Val(f"s{i}", H_W, True, 3.0))
    g.product()  # every cell has at least one product, like every cell users write
    for _ in range(rng.randint(2, 8)):
        (g.product if rng.random() < 0.35 else g.pointwise)()
    outs = [g.new_state(i) for i in range(num_states)]
    if num_states == 2 and rng.random() < 0.15:
        outs[1] = "s1"  # a state passed through unchanged
    states = ", ".join(f"s{i}" for i in range(num_states))
    init = [f"        self.{a.split('.', 1)[1]} = {v!r}" for a, v in g.consts]
    init += [f"        self.{n.split('.', 1)[1]} = self.param({shape}, init={init!r})" for n, shape, init in g.params]
    body = []
    if num_states == 1:
        body.append("        (s0,) = state")
    else:
        body.append(f"        {states} = state")
    text = "\n".join(g.lines)
    if g.uses_h or re.search(r"\bH\b", text):
        body.append("        H = self.hidden_size")
    if g.uses_i or re.search(r"\bI\b", text):
        body.append("        I = self.input_size")
    body += [f"        {line}" for line in g.lines]
    body.append(f"        return ({', '.join(outs)}{',' if num_states == 1 else ''})")
    return "\n".join([
        f'"""A random cell (tests/cellgen.py, seed {seed})."""',
        "import tinygrad_rnn as tr",
        "",
        "",
        f"class Cell{seed}(tr.Cell):",
        f'    name = "fuzz_{seed}"',
        f"    num_states = {num_states}",
        "",
        "    def __init__(self, input_size, hidden_size):",
        "        super().__init__(input_size, hidden_size)",
        *init,
        "",
        "    def step(self, x, state):",
        *body,
        "",
    ])


_LOADED = {}


def load(source, directory=None):
    """The cell class defined in ``source``, imported from a file (so its lines show in
    tracebacks and in the compiler's messages)."""
    name = re.search(r"^class (\w+)\(", source, re.M).group(1)
    if source in _LOADED:
        return _LOADED[source]
    directory = directory or os.path.join(tempfile.gettempdir(), f"tinygrad_rnn_fuzz_cells_{os.getuid()}")
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"{name.lower()}_{abs(hash(source)) % 10**8}.py")
    with open(path, "w") as f:
        f.write(source)
    spec = importlib.util.spec_from_file_location(f"fuzz_cell_{name.lower()}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cls = getattr(module, name)
    _LOADED[source] = cls
    return cls


# ---- the differential check ------------------------------------------------------------------

@dataclass
class Outcome:
    kind: str            # "equal", "refused", "bug", "invalid"
    reason: str = ""     # refused: why; bug: the kind of bug; invalid: what failed
    detail: str = ""     # the full message

    def __str__(self):
        return f"{self.kind}: {self.reason}" + (f"\n    {self.detail}" if self.detail else "")


LABELS = None  # filled per cell: the names of the compared arrays


def _labels(rnn):
    n = rnn.num_states
    return (["output"] + [f"final state {i}" for i in range(n)] + ["grad x"]
            + [f"grad initial state {i}" for i in range(n)]
            + [f"grad {name}" for name, _ in rnn.named_parameters()]
            + [f"per-step norms of state {i}" for i in range(n)])


def _inputs(num_states, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((SEQ, BATCH, INPUT))
    states = [rng.standard_normal((LAYERS, BATCH, HIDDEN)) * 0.5 for _ in range(num_states)]
    return x, states


def normalise(message):
    """A message with its names and numbers replaced, so that the same bug in two cells
    counts once: ``name 'R8' is not defined`` -> ``name 'R<n>' is not defined``."""
    m = message.strip().splitlines()
    m = next((l for l in m if "Error" in l and "Failed in" not in l), m[0] if m else "")
    m = re.sub(r"fuzz_\d+", "<cell>", m)
    m = re.sub(r"Cell\d+", "<Cell>", m)
    m = re.sub(r"/\S+\.py", "<file>", m)
    m = re.sub(r"\b([A-Za-z_]+?)\d+\b", r"\1<n>", m)
    m = re.sub(r"\d+(\.\d+)?(e-?\d+)?", "<n>", m)
    return m[:160]


REFUSALS = [  # (pattern in a CompileError's message, short reason): the cell's own doing
    (r"does not depend on the previous state", "no recurrence"),
    (r"cannot compile (\w+) at .*?: (.*)", None),
    (r"no form for", "CUDA renderer has no form"),
    (r"reads the value of", "reads a value into Python"),
    (r"does not give the same graph|different number of ops", "graph changes between steps"),
]
OUR_FAILURES = [r"please report", r"code generator failed", r"generated", r"Numba", r"numba"]


def classify_compile_error(message):
    """('refused', reason) for a CompileError caused by the cell, ('bug', reason) for one
    that reports the compiler's own failure (it should not happen, but falls back cleanly)."""
    for pattern in OUR_FAILURES:
        if re.search(pattern, message):
            return "bug", "CompileError from our own failure: " + normalise(message)
    for pattern, reason in REFUSALS:
        m = re.search(pattern, message)
        if m:
            if reason is None:
                reason = f"cannot compile {m.group(1)}: {normalise(m.group(2))}"
            return "refused", reason
    return "refused", normalise(message)


def _crash_reason(e):
    text = str(e)
    if "NameError" in text:
        return "Numba typing: NameError in a generated kernel"
    if type(e).__name__ in ("TypingError", "LoweringError", "UnsupportedError"):
        return f"Numba {type(e).__name__}: {normalise(text)}"
    return f"{type(e).__name__}: {normalise(text)}"


def check(cls, devices=("cpu",)):
    """Run ``cls`` compiled (``fused=True``), on the step path (``fused=False``) and with
    the default ``fused=None``, 2 layers, padded rows, float64; compare outputs, final
    states, every gradient and the per-step norms. Returns an Outcome."""
    import tinygrad_rnn as tr
    from tinygrad_rnn.compiler import CompileError
    from tinygrad_rnn.testing import outputs_and_gradients, relative_differences

    x, states = _inputs(cls.num_states)
    try:
        tr.manual_seed(0)
        rnn = tr.nn.RNN(cls, INPUT, HIDDEN, num_layers=LAYERS, dtype="float64", fused=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            step = outputs_and_gradients(rnn, x, states, LENGTHS, fused=False)
    except Exception as e:
        return Outcome("invalid", "step path fails", f"{type(e).__name__}: {e}")
    if not all(np.isfinite(a).all() for a in step):
        return Outcome("invalid", "step path not finite")
    try:
        compiled = outputs_and_gradients(rnn, x, states, LENGTHS, fused=True)
    except CompileError as e:
        kind, reason = classify_compile_error(str(e))
        fallback = _default_falls_back(rnn, x, states, step)
        if fallback is not None:
            return fallback
        return Outcome(kind, reason, str(e).splitlines()[0][:300])
    except Exception as e:
        outcome = Outcome("bug", _crash_reason(e), f"{type(e).__name__}: {str(e)[:300]}")
        fallback = _default_falls_back(rnn, x, states, step)
        if fallback is not None:  # the default must fall back, with a warning
            outcome.detail += " [fused=None: " + fallback.reason + "]"
        return outcome
    errors = relative_differences(compiled, step)
    labels = _labels(rnn)
    bad = [(label, err) for label, err in zip(labels, errors) if not err < TOLERANCE]
    if bad:  # named by the first array that differs: outputs, states, then gradients, then norms
        first = re.sub(r" \d+$", "", re.sub(r"grad (?!x|initial).*", "grad of a parameter", bad[0][0]))
        return Outcome("bug", f"mismatch in {first}",
                       "; ".join(f"{l}: {e:.2e}" for l, e in bad[:6]))
    return Outcome("equal")


def _default_falls_back(rnn, x, states, step):
    """None when the default ``fused=None`` runs the cell and equals the step path; else
    the bug Outcome (the default must fall back when the compiler cannot serve a cell)."""
    from tinygrad_rnn.testing import outputs_and_gradients, relative_differences
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            got = outputs_and_gradients(rnn, x, states, LENGTHS, fused=None)
    except Exception as e:
        return Outcome("bug", f"fused=None does not fall back: {_crash_reason(e)}",
                       f"{type(e).__name__}: {str(e)[:300]}")
    finally:
        rnn.fused = False
    err = max(relative_differences(got, step))
    if not err < TOLERANCE:
        return Outcome("bug", "fused=None differs from the step path", f"max relative difference {err:.2e}")
    return None


CUDA_SCRIPT = r"""
import json, sys
import numpy as np
sys.path.insert(0, {tests!r})
import cellgen
import tinygrad_rnn as tr
results = {{}}
for seed, source in json.loads(sys.stdin.read()):
    cls = cellgen.load(source)
    try:
        results[seed] = cellgen.check_cuda(cls)
    except Exception as e:
        results[seed] = "crash: " + type(e).__name__ + ": " + str(e)[:300]
print("RESULTS " + json.dumps(results))
"""


def check_cuda(cls):
    """In a process with a CUDA device or Numba's simulator: the compiled cell on CUDA
    against the compiled cell on the CPU. Returns "equal", "refused", or the difference."""
    import tinygrad_rnn as tr
    from tinygrad_rnn.compiler import CompileError, compiled_versions
    x, states = _inputs(cls.num_states)
    results = []
    for device in ("cpu", "cuda"):
        tr.manual_seed(0)
        rnn = tr.nn.RNN(cls, INPUT, HIDDEN, num_layers=LAYERS, dtype="float64", fused=True).to(device)
        xt = tr.Tensor(x, device=device, requires_grad=True)
        st = tuple(tr.Tensor(s, device=device, requires_grad=True) for s in states)
        try:
            out, final = rnn(xt, st, lengths=LENGTHS, probe=True)
        except CompileError as e:
            if device == "cpu":
                return "refused"
            return f"refused on CUDA only: {str(e).splitlines()[0][:200]}"
        ((out * out).sum() + sum((f * f).sum() for f in final)).backward()
        grad = lambda t: np.zeros(t.shape) if t.grad is None else t.grad.numpy()  # None: not reached
        results.append([out.numpy(), *[f.numpy() for f in final], grad(xt), *[grad(s) for s in st],
                        *[rnn.step_grad_norms(i) for i in range(rnn.num_states)],
                        *[grad(p) for p in rnn.parameters()]])
    compiled = compiled_versions(rnn.cells[0])
    if not any(getattr(c, "_cuda", None) is not None for c in compiled):
        return "no CUDA kernels ran: the cell ran op by op on CUDA"
    err = max(float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300)) for a, b in zip(*results))
    return "equal" if err < TOLERANCE else f"CUDA differs from the CPU: max relative difference {err:.2e}"


def check_cuda_in_subprocess(seeds_and_sources, timeout=600):
    """``check_cuda`` for each (seed, source) in a fresh process under Numba's CUDA
    simulator (unless a GPU is there), so the simulator never leaks into the caller.
    Returns {seed: result}."""
    import json
    import subprocess
    env = dict(os.environ)
    if "NUMBA_ENABLE_CUDASIM" not in env:
        from tinygrad_rnn.backend import cuda_available
        if not cuda_available()[0]:  # no GPU here: the simulator
            env["NUMBA_ENABLE_CUDASIM"] = "1"
    script = CUDA_SCRIPT.format(tests=os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", script], input=json.dumps(list(seeds_and_sources)),
                          capture_output=True, text=True, env=env, timeout=timeout)
    line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULTS ")), None)
    if line is None:
        raise RuntimeError(f"the CUDA check process failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
    return {int(k): v for k, v in json.loads(line[len("RESULTS "):]).items()}


def minimise(source, same):
    """A shorter cell for which ``same(check(cls))`` still holds: drops the lines of
    ``step`` one at a time (last first), then the parameters and constants nothing reads."""
    lines = source.splitlines()

    def still(candidate):
        try:
            return same(check(load("\n".join(candidate) + "\n")))
        except Exception:
            return False

    start = next(i for i, l in enumerate(lines) if l.startswith("    def step"))
    i = len(lines) - 1
    while i > start:
        line = lines[i]
        if re.match(r"        v\d+(, v\d+)* = ", line):
            candidate = lines[:i] + lines[i + 1:]
            if still(candidate):
                lines = candidate
        i -= 1
    body = "\n".join(lines[start:])
    kept = [l for l in lines[:start] if not re.match(r"        self\.(\w+) = ", l)
            or re.search(r"self\.%s\b" % re.match(r"        self\.(\w+) = ", l).group(1), body)]
    if kept != lines[:start] and still(kept + lines[start:]):
        lines = kept + lines[start:]
    return "\n".join(lines) + "\n"
