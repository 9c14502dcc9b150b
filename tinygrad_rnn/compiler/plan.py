"""Plan: passes over a traced Graph that give it the whole-sequence shape.

1. ``split_cat_matmul``: ``cat([a, b], -1) @ W`` becomes ``a @ W[:n] + b @ W[n:]``, so
   the part that only sees the input can leave the time loop.
2. ``prune``: drop what the outputs do not need.
3. ``classify``: every equation is one of
   - *param*: depends on parameters and constants only; replayed once per sequence on the tape;
   - *hoisted*: depends on the input but not the state; replayed once on all T*B rows
     (one GEMM for all time steps), on the tape;
   - *step*: depends on the state; compiled into the fused per-step kernels.
4. ``levels``: step equations are cut into stages at recurrent products (``h @ W``):
   stage 0 is pointwise work on the inputs, stage k+1 starts with the products of values
   from stage k. Each stage becomes one generated pointwise kernel.
"""
import numpy as np

from .trace import CompileError, Eqn, Var, value_text

POINTWISE = ("add", "mul", "div", "neg", "pow", "exp", "log", "tanh", "sigmoid",
             "leaky_relu", "where", "clip", "compare")
REDUCTIONS = ("sum", "mean", "max")
ROW_OPS = POINTWISE + REDUCTIONS + ("getitem", "cat", "matmul")


class Plan:
    """What the code generator and the runtime need, derived from one Graph."""

    def __init__(self, graph):
        self.graph = graph
        self.param_eqns, self.hoist_eqns, self.step_eqns = [], [], []
        self.level = {}      # Var -> stage index (step values and their inputs)
        self.hoisted = []    # batched, state-free Vars read by the step (x itself or hoisted results)
        self.aux = []        # state-free, unbatched Vars read by the step (params, param results, constants)
        self.gemms = []      # step matmul Eqns (recurrent products)
        self.num_levels = 1
        self.stages = [0]    # the levels that get a stage kernel (see _levels)


def _fail(graph, e, why):
    raise CompileError(f"cell {graph.cell_name!r}: cannot compile {e.op} at {e.where}: {why}")


def split_cat_matmul(graph):
    """Rewrite ``cat(parts, axis=-1) @ W`` (W free of the batch) into a sum of products."""
    every = [graph.x, *graph.states, *graph.params, *graph.consts, *(e.out for e in graph.eqns)]
    next_id = max(v.id for v in every) + 1
    producer = {e.out: e for e in graph.eqns}
    out = []
    for e in graph.eqns:
        a, w = e.ins if e.op == "matmul" else (None, None)
        cat = producer.get(a)
        if (cat is None or cat.op != "cat" or len(a.shape) != 2 or cat.attrs["axis"] != 1
                or w.batched or len(w.shape) != 2):
            out.append(e)
            continue
        parts = sorted(enumerate(cat.ins), key=lambda p: p[1].dep_s)  # input-only parts first
        offsets = np.cumsum([0] + [p.shape[1] for p in cat.ins])
        prods = []
        for i, part in parts:
            rows = Var(next_id, "op", (part.shape[1], w.shape[1]), w.dtype)
            prod = Var(next_id + 1, "op", (part.shape[0], w.shape[1]), w.dtype)
            next_id += 2
            prod.dep_x, prod.dep_s, prod.batched = part.dep_x, part.dep_s, True
            out.append(Eqn("getitem", [w], {"index": (slice(int(offsets[i]), int(offsets[i + 1])),)}, rows, e.where))
            out.append(Eqn("matmul", [part, rows], {}, prod, e.where))
            prods.append(prod)
        if len(prods) == 1:  # a cat of one part: e.out is its product (plus zero: an equation must make it)
            zero = Var(-1 - len(graph.consts), "const", (), w.dtype, value=np.zeros((), w.dtype))
            graph.consts.append(zero)
            out.append(Eqn("add", [prods[0], zero], {}, e.out, e.where))
        total = prods[0]
        for k, prod in enumerate(prods[1:]):
            s = e.out if k == len(prods) - 2 else Var(next_id, "op", e.out.shape, w.dtype)
            next_id += 1
            s.dep_x, s.dep_s, s.batched = total.dep_x or prod.dep_x, total.dep_s or prod.dep_s, True
            out.append(Eqn("add", [total, prod], {}, s, e.where))
            total = s
    graph.eqns = out
    return graph


def prune(graph):
    live = set(graph.outputs)
    kept = []
    for e in reversed(graph.eqns):
        if e.out in live:
            kept.append(e)
            live.update(e.ins)
    graph.eqns = kept[::-1]
    return graph


def _check_row_op(graph, e):
    """A batched equation must act row by row on (B, width) values."""
    if e.op not in ROW_OPS:
        _fail(graph, e, f"{e.op} on a batched value is not supported in a compiled cell "
                        f"(supported: {', '.join(ROW_OPS)})")
    for v in e.ins:
        if v.batched and len(v.shape) != 2:
            _fail(graph, e, f"batched values must be (batch, features), got shape {v.shape}")
    if e.op == "matmul":
        a, w = e.ins
        if not a.batched or w.batched or len(w.shape) != 2:
            _fail(graph, e, "only (batch, n) @ (n, m) products with a weight on the right are supported")
    elif e.op == "getitem":
        e.attrs["index"] = _last_axis_slice(graph, e)
    elif e.op == "cat":
        if e.attrs["axis"] != 1 or not all(v.batched for v in e.ins):
            _fail(graph, e, "cat must join batched values along the last axis")
    elif e.op in REDUCTIONS:
        if e.attrs["axis"] != 1 or not e.attrs["keepdims"]:
            _fail(graph, e, f"{e.op} must reduce the last axis with keepdims=True")
    else:
        w = e.out.shape[1]
        for v in e.ins:
            if not (v.shape[1] in (w, 1) if v.batched else v.shape in ((), (1,), (w,), (1, w), (1, 1))):
                _fail(graph, e, f"operand {v!r} does not broadcast row by row against width {w}")


def _last_axis_slice(graph, e):
    index, width = e.attrs["index"], e.ins[0].shape[1]
    if not isinstance(index, tuple):
        index = (index,)
    if len(index) == 2 and index[0] is Ellipsis:
        index = (slice(None), index[1])
    if (len(index) == 2 and index[0] == slice(None) and isinstance(index[1], slice)
            and index[1].step in (None, 1)):
        lo, hi, _ = index[1].indices(width)
        if hi > lo:
            return (slice(None), slice(lo, hi))
        _fail(graph, e, f"the slice [:, {value_text(index[1])}] of a value {width} wide selects nothing "
                        "(at these sizes: the cell's hidden or input size may be too small for it)")
    _fail(graph, e, f"only slices of the last axis (x[:, a:b], split) are supported, got index {index!r}")


def classify(graph):
    plan = Plan(graph)
    for e in graph.eqns:
        if not e.out.batched:
            plan.param_eqns.append(e)
            continue
        _check_row_op(graph, e)
        (plan.step_eqns if e.out.dep_s else plan.hoist_eqns).append(e)
    for i, v in enumerate(graph.outputs):
        if not v.dep_s:
            raise CompileError(f"cell {graph.cell_name!r}: state {i} returned by step() does not depend "
                               "on the previous state")
        if v.shape != graph.states[i].shape:
            raise CompileError(f"cell {graph.cell_name!r}: state {i} has shape {v.shape}")
    _slice_in_kernel(plan)
    _bias_in_kernel(plan)
    produced = {e.out for e in plan.step_eqns}
    for e in plan.step_eqns:
        for v in e.ins:
            if v.batched and not v.dep_s and v not in plan.hoisted and v not in produced:
                plan.hoisted.append(v)
            elif not v.batched and v not in plan.aux:  # scalar constants too: inputs, not literals (see lower.py)
                plan.aux.append(v)
    _levels(plan)
    return plan


def _slice_in_kernel(plan):
    """A step that reads slices of a hoisted value (GRU's gate blocks of W_ih x) reads
    the whole value and slices it in the kernel: one (T, B, 3H) array instead of three
    copies, and one gradient array instead of three scatters on the tape."""
    producer = {e.out: e for e in plan.hoist_eqns if e.op == "getitem"}
    moved = list(dict.fromkeys(producer[v] for e in plan.step_eqns for v in e.ins if v in producer))
    still_used = {v for e in plan.hoist_eqns if e not in moved for v in e.ins}
    plan.hoist_eqns = [e for e in plan.hoist_eqns if e not in moved or e.out in still_used]
    plan.step_eqns = moved + plan.step_eqns


def _bias_in_kernel(plan):
    """A bias added to a hoisted product that only the step reads (``x @ W_ih + b_ih``) is
    added in the step kernel, where the row is in registers anyway: the hoisted part is
    the bare GEMM, and neither the bias's pass over all T*B rows nor its gradient's sum
    over them is made (at hidden 128 the two took 0.6 ms of a 15 ms LSTM step)."""
    producer = {e.out: e for e in plan.hoist_eqns}
    hoisted_reads = [v for e in plan.hoist_eqns for v in e.ins]
    moved = []
    for e in plan.hoist_eqns:
        if e.op != "add" or e.out in hoisted_reads:
            continue
        product, bias = e.ins if e.ins[0].batched else e.ins[::-1]
        p = producer.get(product)
        if (p is not None and p.op == "matmul" and not bias.batched and hoisted_reads.count(product) == 1
                and bias.shape in ((product.shape[1],), (1, product.shape[1]))):
            moved.append(e)
    plan.hoist_eqns = [e for e in plan.hoist_eqns if e not in moved]
    plan.step_eqns = moved + plan.step_eqns


def _levels(plan):
    level = {v: 0 for v in [*plan.graph.states, *plan.hoisted, *plan.aux]}
    for e in plan.step_eqns:
        if e.op == "matmul":
            level[e.out] = level[e.ins[0]] + 1
            plan.gemms.append(e)
        else:
            level[e.out] = max([level.get(v, 0) for v in e.ins if v.batched], default=0)
    # Slices are views and cost nothing, and work that does not depend on the state costs
    # the same in any stage: move each to the latest stage its readers allow, so it does
    # not open a stage of its own or keep a value for a later one.
    for e in reversed(plan.step_eqns):
        if e.op != "getitem" and e.out.dep_s:
            continue
        readers = [level[u.out] - (u.op == "matmul") for u in plan.step_eqns if e.out in u.ins]
        if readers and e.out not in plan.graph.outputs:
            level[e.out] = max(level[e.out], min(readers))
    plan.level = level
    plan.num_levels = 1 + max([level[e.out] for e in plan.step_eqns] + [0])
    # The stages that get a kernel: the last (it writes the new state), each with pointwise
    # work, and each whose product is the left operand of another product (its kernel
    # passes that product's gradient on to its weight gradient in the backward).
    producer = {e.out: e for e in plan.step_eqns}
    plan.stages = sorted({plan.num_levels - 1}
                         | {level[e.out] for e in plan.step_eqns if e.op not in ("matmul", "compare")}
                         | {level[e.ins[0]] for e in plan.gemms
                            if e.ins[0] in producer and producer[e.ins[0]].op == "matmul"})


def make_plan(graph):
    return classify(prune(split_cat_matmul(prune(graph))))
