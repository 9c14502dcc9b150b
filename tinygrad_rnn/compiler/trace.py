"""Trace: run a cell's ``step`` once on real tensors and record its primitives.

The result is a ``Graph``: a small, typed, printable IR in the spirit of a jaxpr.
Every op that ``step`` applies goes through ``ops.apply``, which hands it to the
active tracer, so the graph holds exactly the primitives of the op table (plus
``compare``, the untaped comparison that feeds ``where``). Tensors the tracer
has not seen (Python scalars turned into 0-d arrays, constants made inside
``step``) become constants holding their value.
"""
import inspect
import os

import numpy as np

from .. import backend, ops
from ..errors import Error
from ..tensor import Tensor

TRACE_BATCH = 3  # a batch size no parameter is likely to share, so batch-shaped constants stand out


class CompileError(Error):
    """A cell's ``step`` cannot be compiled; the message names the op and the line."""


class Var:
    """One value of the graph. ``role``: x, state, param, const or op."""

    __slots__ = ("id", "role", "shape", "dtype", "name", "value", "batched", "dep_x", "dep_s")

    def __init__(self, id, role, shape, dtype, name=None, value=None):
        self.id, self.role, self.shape, self.dtype = id, role, tuple(shape), np.dtype(dtype)
        self.name, self.value = name or f"v{id}", value
        self.batched = role in ("x", "state")
        self.dep_x, self.dep_s = role == "x", role == "state"

    @property
    def width(self):
        return self.shape[-1] if self.shape else 1

    def __repr__(self):
        dims = ",".join("B" if (self.batched and i == 0) else str(d) for i, d in enumerate(self.shape))
        return f"{self.name}:{'f32' if self.dtype == np.float32 else self.dtype.name}[{dims}]"


class Eqn:
    """``out = op[attrs](*ins)``, with the line of ``step`` that made it."""

    __slots__ = ("op", "ins", "attrs", "out", "where")

    def __init__(self, op, ins, attrs, out, where):
        self.op, self.ins, self.attrs, self.out, self.where = op, list(ins), dict(attrs), out, where

    @property
    def params(self):
        """The attributes that parametrise the op: not ``where``'s condition (an operand
        here) nor the residuals a forward kept for its VJP."""
        return {k: v for k, v in self.attrs.items() if k not in ("cond", "residuals")}

    def params_text(self):
        """How the parameters print: ``[axis=1, keepdims=True]``, nothing when there are none."""
        shown = self.params
        return "[" + ", ".join(f"{k}={value_text(v)}" for k, v in shown.items()) + "]" if shown else ""

    def __repr__(self):
        return f"{self.out!r} = {self.op}{self.params_text()} {' '.join(operand_text(v) for v in self.ins)}"


def operand_text(v):
    """How an equation's operand prints: a scalar constant (a cell's ``eps``, ``beta``, a
    literal ``0.5``) as its value, anything else by name."""
    if v.role == "const" and v.value is not None and v.value.ndim == 0:
        return str(v.value[()])  # in the cell's dtype: 1e-05, not 9.999999747378752e-06
    return v.name


def value_text(v):
    """How a parameter's value prints (a slice as ``a:b``)."""
    if isinstance(v, tuple):
        return "(" + ",".join(value_text(i) for i in v) + ")"
    if isinstance(v, slice):
        return f"{'' if v.start is None else v.start}:{'' if v.stop is None else v.stop}"
    if v is Ellipsis:
        return "..."
    return repr(v)


class Graph:
    """A traced step: inputs (x, states, params), equations in order, outputs."""

    def __init__(self, cell_name, x, states, params, eqns, outputs, consts):
        self.cell_name = cell_name
        self.x, self.states, self.params = x, states, params
        self.eqns, self.outputs, self.consts = eqns, outputs, consts

    def __str__(self):
        head = " ".join(repr(v) for v in [self.x, *self.states])
        params = " ".join(repr(v) for v in self.params)
        return "\n".join([f"{{ lambda {head} ; {params} .", *(f"    {e!r}" for e in self.eqns),
                          f"  in ({', '.join(v.name for v in self.outputs)}) }}"])


class _Tracer:
    def __init__(self, step_file, merge=True):
        self.vars = {}      # id(tensor) -> Var
        self.keep = []      # the traced tensors, so their ids stay unique
        self.eqns, self.consts = [], []
        self.conds = {}     # id(bool array handed to where) -> the compare Tensor it came from
        self.step_file = step_file
        self.count = 0
        self.merge = merge
        self.seen = {}      # (op, inputs, attrs) -> the Var it gave: a repeated expression is one value
        self.twinned = set()  # the Vars that more than one tensor of step's became

    def new_var(self, t, role, name=None, value=None):
        self.count += 1
        v = Var(self.count, role, t.shape, t.dtype, name, value)
        self.vars[id(t)] = v
        self.keep.append(t)
        return v

    def read(self, t):
        """``step`` reads a value into Python (``.numpy()``, ``.item()``): what it does with
        it would be frozen at trace time, so such a step is not compiled."""
        v = self.vars.get(id(t))
        if v is not None and v.role != "const":
            raise CompileError(f"step() reads the value of {v.name} into Python (.numpy(), .item() or "
                               f"float()) at {self.line()}: what it does with it would be frozen at trace "
                               "time; keep step in Tensor ops")

    def var_of(self, t):
        v = self.vars.get(id(t))
        if v is None:  # a tensor made outside the traced ops: a constant
            v = self.new_var(t, "const", value=np.array(t.data))
            self.consts.append(v)
        return v

    def alias(self, cond_array, cond_tensor):
        self.conds[id(cond_array)] = cond_tensor
        self.keep.append(cond_array)

    def record(self, name, inputs, attrs, out):
        ins = [self.var_of(t) for t in inputs]
        attrs = dict(attrs)
        if name == "where":
            src = self.conds.get(id(attrs["cond"]))
            ins.append(self.var_of(src if src is not None else Tensor._make(np.asarray(attrs["cond"]))))
        # the same op on the same values is the same value: ``v - mu`` written twice in a
        # layer norm is computed once (its row and its gradient), not once per mention
        key = _same_value_key(name, ins, attrs) if self.merge else None
        if key is not None and key in self.seen:
            self.vars[id(out)] = self.seen[key]
            self.keep.append(out)
            self.twinned.add(self.seen[key])
            return
        o = self.new_var(out, "op")
        if key is not None:
            self.seen[key] = o
        o.dep_x = any(v.dep_x for v in ins)
        o.dep_s = any(v.dep_s for v in ins)
        o.batched = o.dep_x or o.dep_s
        self.eqns.append(Eqn(name, ins, attrs, o, self.line()))

    def turns_gradients_off(self):
        raise CompileError(f"step() turns gradients off (tr.no_grad()) at {self.line()}: the compiled kernels "
                           "differentiate every op of step; leave it out, or run the cell on the step path "
                           "(fused=False)")

    def line(self):
        """``file:line`` of the innermost frame in the cell's source file."""
        frame = inspect.currentframe()
        while frame is not None:
            if os.path.abspath(frame.f_code.co_filename) == self.step_file:
                return f"{os.path.basename(self.step_file)}:{frame.f_lineno}"
            frame = frame.f_back
        return "step"


def _same_value_key(name, ins, attrs):
    """What makes an equation's value: its op, its inputs and its attributes, or None where an
    attribute is not a plain value (a ``where``'s condition array is one of its inputs)."""
    plain = (bool, int, float, str, slice, type(None), type(Ellipsis))

    def flat(v):
        return all(flat(u) for u in v) if isinstance(v, tuple) else isinstance(v, plain)
    items = tuple(sorted((k, v) for k, v in attrs.items() if not (name == "where" and k == "cond")))
    if not all(flat(v) for _, v in items):
        return None
    return name, tuple(v.id for v in ins), repr(items)


def trace(cell, dtype, batch=TRACE_BATCH, merge=True):
    """Run ``cell.step`` once on a batch of ``batch`` and return its Graph; ``merge``: a
    repeated expression is one value (not where a state step returns is one: the gradient of
    the value returned, which the per-step norms measure, is not that of its twin)."""
    from ..cell import _checked_state
    dtype = np.dtype(dtype)
    try:
        step_file = os.path.abspath(inspect.getsourcefile(type(cell).step))
    except TypeError:
        step_file = "<step>"
    rng = np.random.default_rng(0)
    tracer = _Tracer(step_file, merge)
    x = Tensor((rng.standard_normal((batch, cell.input_size)) * 0.5).astype(dtype))
    states = tuple(Tensor((rng.standard_normal((batch, cell.hidden_size)) * 0.5).astype(dtype))
                   for _ in range(cell.num_states))
    vx = tracer.new_var(x, "x", "x")
    vs = [tracer.new_var(s, "state", f"s{i}") for i, s in enumerate(states)]
    vp, on_device = [], []
    for name, p in cell.named_parameters():
        if p.dtype != dtype:
            raise CompileError(f"cell {cell.name!r}: parameter {name} is {p.dtype}, the layer runs in {dtype}")
        vp.append(tracer.new_var(p, "param", name))
        if p.device != "cpu":  # the graph is the same on every device: trace on host copies
            on_device.append((p, p.data))
            p.data = backend.of(p.data).to_numpy(p.data)
    previous = ops._tracer[0]
    ops._tracer[0] = tracer
    try:
        from ..tape import not_recording
        with not_recording():
            new = cell.step(x, states)
    finally:
        ops._tracer[0] = previous
        for p, data in on_device:
            p.data = data
    new = _checked_state(cell, new, states, 0)
    for i, t in enumerate(new):
        if id(t) not in tracer.vars:
            raise CompileError(f"cell {cell.name!r}: state {i} returned by step() was not computed "
                               "by tinygrad_rnn ops")
    outs = [tracer.vars[id(t)] for t in new]
    if any(v in tracer.twinned for v in outs):
        return trace(cell, dtype, batch, merge=False)
    return Graph(cell.name, vx, vs, vp, tracer.eqns, outs, tracer.consts)


def trace_checked(cell, dtype):
    """Trace ``step`` at two batch sizes; the graphs must agree, constants included.

    A step whose graph changes with the batch size (it reads ``x.shape[0]``, makes a
    batch-shaped constant, or cut a value off the tape with ``.detach()``) or between two
    calls (it keeps state of its own, or draws random numbers) cannot be compiled."""
    first, second = trace(cell, dtype), trace(cell, dtype, batch=TRACE_BATCH + 2)
    a, b = _fingerprint(first), _fingerprint(second)
    for (where, x), (_, y) in zip(a, b):
        if x != y:
            raise CompileError(f"cell {cell.name!r}: step() at {where} does not give the same graph for "
                               "every batch and every call (it depends on the batch size, on a value cut "
                               "off the tape, or on state or randomness of its own); keep step a function "
                               "of its inputs and parameters")
    if len(a) != len(b):
        raise CompileError(f"cell {cell.name!r}: step() records a different number of ops for different "
                           "batch sizes; keep step a function of its inputs and parameters")
    return first


def _fingerprint(graph):
    """What must not change with the batch size: ops, wiring, attributes, constants."""
    out = [("a constant", (c.id, c.value.shape, c.value.dtype.str, c.value.tobytes())) for c in graph.consts]
    out += [(e.where, (e.op, tuple(v.id for v in e.ins), e.out.id, repr(e.params),
                       e.out.shape[1:] if e.out.batched else e.out.shape)) for e in graph.eqns]
    return out + [("its return", tuple(v.id for v in graph.outputs))]
