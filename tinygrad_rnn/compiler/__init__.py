"""The cell compiler: a cell's ``step`` becomes fused whole-sequence kernels.

Passes, each small and printable (``tinygrad-rnn compile --cell NAME`` shows them):

1. ``trace``   run ``step`` once on real tensors, recording its primitives (a Graph);
2. ``plan``    split ``cat([x, h]) @ W``, prune, sort equations into param / hoisted /
               per-step work, and cut the per-step work into stages at recurrent products;
3. ``lower``   lower the plan to the kernel IR (``kir``): stage kernels per row of the
               batch, derivatives taken from the op table's VJPs, and one driver
               description; ``render_cpu`` and ``render_cuda`` print it as plain Python
               for ``numba.njit`` and ``numba.cuda``;
4. ``runtime`` cache the source on disk, load it, and run a layer as one op on the tape.

``compile_cell(cell, dtype)`` does all four for one cell instance; ``run_layer`` runs it.
"""
import hashlib
import weakref

import numpy as np

from .. import ops
from ..module import Parameter
from ..tensor import Tensor
from .render_cpu import render
from .plan import make_plan
from .trace import CompileError, operand_text, trace, trace_checked

__all__ = ["CompileError", "Compiled", "InternalCompileError", "fallback_warning", "compile_cell", "compile_status",
           "compiled_versions", "cuda_kernel_signatures", "run_layer", "step_values", "inspect_cell"]


class Compiled:
    """A cell compiled for one (input size, hidden size, dtype): its graph, plan and module."""

    def __init__(self, graph_text, plan, dtype, header, sizes):
        self.graph_text, self.plan, self.dtype, self.header, self.sizes = graph_text, plan, dtype, header, sizes
        self.source = self._cpu = self._cuda = None

    @property
    def module(self):
        """The loaded CPU module, its kernels compiled (and checked) on first use; a
        CompileError when Numba cannot compile them (the same error every time)."""
        if self._cpu is None:
            try:
                self._cpu = _checked_module(self, self.source, _run_drivers)
            except CompileError as e:
                self._cpu = e
        if isinstance(self._cpu, CompileError):
            raise self._cpu
        return self._cpu

    @property
    def cuda_source(self):
        """The same kernels for numba.cuda (``render_cuda``)."""
        from .render_cuda import render_cuda
        return self._rendered(render_cuda, " CUDA")

    @property
    def cuda_module(self):
        """The loaded CUDA module (generated and cached on first use)."""
        if self._cuda is None:
            self._cuda = _checked_module(self, self.cuda_source, _record_cuda_drivers)
        return self._cuda

    def _rendered(self, renderer, target=""):
        """The generated source; a failure of the generator itself (a bug, not the cell's
        doing) becomes a CompileError, so the layer still runs on the step path."""
        try:
            return renderer(self.plan, self.dtype, self.header, self.sizes)
        except CompileError:
            raise
        except Exception as e:
            raise InternalCompileError(f"cell {self.plan.graph.cell_name!r}: the{target} code generator failed "
                                       f"({type(e).__name__}: {e}); the cell runs its step op by op (please report "
                                       "this)") from e


def compile_cell(cell, dtype=None):
    """Compile ``cell`` (an instance) for ``dtype``; cached per instance. Raises CompileError.
    Numba compiles the kernels when ``.module`` (or ``.cuda_module``) is first used."""
    dtype = np.dtype(dtype or next(iter(cell.parameters())).dtype)
    cache = _cache_of(cell)
    key = (dtype, _settings(cell))  # step may read them (self.training, options): a change re-traces
    if key in cache:
        hit = cache[key]
        if isinstance(hit, CompileError):
            raise hit
        return hit
    try:
        compiled = _generate(cell, dtype)
        compiled.source = source = compiled._rendered(render)
    except CompileError as e:
        cache[key] = e
        raise
    from .runtime import load_source
    try:
        load_source(source)  # written to the cache and imported; Numba compiles on first use
    except Exception as e:
        cache[key] = InternalCompileError(f"cell {cell.name!r}: the generated module failed to load "
                                          f"({_one_line(e)}); the cell runs its step op by op (please report this)")
        raise cache[key] from e
    for other in cache.values():  # the same kernels (another value of a scalar attribute): already compiled
        if isinstance(other, Compiled) and other.source == source:
            compiled._cpu, compiled._cuda = other._cpu, other._cuda
            break
    while len(cache) >= _CACHE_PER_CELL:  # an attribute annealed every call must not grow it for ever
        cache.pop(next(iter(cache)))
    cache[key] = compiled
    return compiled


_CACHE_PER_CELL = 16


def compiled_versions(cell):
    """The Compiled objects built for this cell instance so far (one per dtype and settings)."""
    return [c for c in _caches.get(id(cell), {}).values() if isinstance(c, Compiled)]


# id(cell) -> {(dtype, settings): Compiled or CompileError}, dropped with the cell. Kept
# here, not on the cell: a cell is the user's object, and may define __eq__ (unhashable).
_caches = {}


def _cache_of(cell):
    if id(cell) not in _caches:
        _caches[id(cell)] = {}
        weakref.finalize(cell, _caches.pop, id(cell), None)
    return _caches[id(cell)]


class InternalCompileError(CompileError):
    """The compiler, not the cell, failed: its generator, or Numba on the generated code."""


def _checked_module(compiled, source, run):
    """The module loaded from ``source`` after ``run(compiled, module)`` has driven its
    forward and backward once on a tiny batch: Numba types and compiles the kernels on first
    call (and caches them, so the real run does not compile again), and a failure there is a
    bug of the compiler's, found before the layer has put anything on the tape."""
    from .runtime import load_source
    try:
        module = load_source(source)
        run(compiled, module)
        return module
    except Exception as e:
        raise InternalCompileError(
            f"cell {compiled.plan.graph.cell_name!r}: the generated kernels failed to compile "
            f"({_one_line(e)}); the cell runs its step op by op (please report this)") from e


def _one_line(e):
    """The telling line of an error: Numba's start with the pipeline stage that failed
    ("Failed in nopython mode pipeline ...") and end with "During: ..." lines."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    telling = [line for line in lines if not line.startswith(("Failed in ", "During:"))]
    return f"{type(e).__name__}: {(telling or lines or [''])[0]}"


def _run_drivers(compiled, module, call=None):
    """Call the module's ``forward`` and ``backward`` (through ``call(module, name, *args)``;
    by default ``runtime.guarded``) with the real call's types and a tiny batch."""
    from .runtime import guarded
    plan, dt, T, B = compiled.plan, compiled.dtype, 2, 2
    I, H = plan.graph.x.shape[1], plan.graph.states[0].shape[1]
    arrays = [*(np.full((B, H), 0.5, dt) for _ in plan.graph.states),
              *(np.full((T, B, v.width), 0.5, dt) for v in plan.hoisted),
              *(np.full(v.shape, 0.5, dt) for v in plan.aux)]
    mask, call = np.ones((T, B), dt), call or guarded
    Y, residuals = call(module, "forward", I, H, mask, *arrays)
    call(module, "backward", I, H, np.ones_like(Y), Y, residuals, mask, *arrays)


def _record_cuda_drivers(compiled, module):
    """{kernel name: (Python function, argument types)} of every launch the drivers make."""
    from .cuda_runtime import record_launches
    with record_launches() as rec:
        _run_drivers(compiled, module, lambda m, name, *args: getattr(m, name)(*args))
    return rec.launches


def fallback_warning(error):
    """One line on stderr when a layer falls back to the step path because of a compiler
    bug (a cell the compiler refuses falls back without a word: that is documented)."""
    import sys
    if isinstance(error, InternalCompileError) and str(error) not in _warned:
        _warned.add(str(error))  # once per process, not once per layer and call
        print(f"tinygrad_rnn: warning: {error}", file=sys.stderr, flush=True)


_warned = set()


def _settings(cell):
    """The cell's plain attributes (training mode, options) and the contents of its constant
    arrays and Tensors: part of what step computes. The trace keeps the values it read, so
    an array changed in place, or a list of numbers, must change the key as a float does."""
    plain = (bool, int, float, str, type(None))
    slots = {name for name, _ in cell.named_parameters()}  # a parameter's slot, even with another tensor in it
    settings = []
    for k, v in sorted(vars(cell).items()):
        if k.startswith("_") or isinstance(v, Parameter):
            continue
        if isinstance(v, plain) or (isinstance(v, tuple) and all(isinstance(u, plain) for u in v)):
            settings.append((k, v))
        elif isinstance(v, list) and all(isinstance(u, plain) for u in v):
            settings.append((k, tuple(v)))
        elif isinstance(v, (np.ndarray, Tensor)) and v.dtype != object and k not in slots:
            data = np.ascontiguousarray(v.numpy() if isinstance(v, Tensor) else v)
            settings.append((k, data.dtype.str, data.shape, hashlib.sha256(data.view(np.uint8)).hexdigest()))
    return tuple(settings)


def _generate(cell, dtype):
    """The Compiled for ``cell`` before rendering: graph text, plan, module header, size formulas or None."""
    dtype = np.dtype(dtype)
    try:
        graph = trace_checked(cell, dtype)
    except CompileError:
        raise
    except (Exception, SystemExit) as e:  # a bug in step: the step path reports it with the real shapes
        raise CompileError(f"cell {cell.name!r}: step() failed while tracing: "
                           f"{type(e).__name__}: {e}") from e
    graph_text = str(graph)
    plan = make_plan(graph)
    sizes = _size_formulas(cell, dtype, plan)
    where = ("any input and hidden size" if sizes else
             f"input {cell.input_size}, hidden {cell.hidden_size} only")
    header = (f"Generated by tinygrad_rnn's cell compiler for cell {cell.name!r} "
              f"({where}, {dtype.name}).\n\nThe traced step"
              f"{' (at the sizes above)' if not sizes else ''}:\n\n"
              + (_symbolic_graph_text(plan, sizes) if sizes else graph_text) + "\n")
    return Compiled(graph_text, plan, dtype, header, sizes)


def compile_status(cls, **options):
    """(True, "") when cell class ``cls`` compiles, else (False, why); nothing is built."""
    from .. import init
    try:
        with init.seeded(0):
            cell = cls(2, 3, **options)
        c = _generate(cell, np.float32)
        render(c.plan, c.dtype, c.header, c.sizes)  # every pass but loading
        return True, ""
    except CompileError as e:
        return False, str(e)
    except Exception as e:
        return False, f"{type(e).__name__}: {e}"


_PROBES = ((2, 3), (3, 3), (2, 4), (5, 7))


def _size_formulas(cell, dtype, plan):
    """Widths and slice bounds of the per-step values as exact linear functions of
    (input size, hidden size), so one generated module serves every size.

    The cell is traced again at small probe sizes; three fix a formula a*I + b*H + c,
    the fourth and the real trace check it. None (specialise to the real sizes) when
    the step's structure changes with size or a width is not linear.
    """
    from .. import init
    opts = getattr(cell, "cell_options", {})
    plans = []
    try:
        for I, H in _PROBES:
            with init.seeded(0):  # probe cells must not move the user's init stream
                probe = type(cell)(I, H, **opts)
            for p in probe.parameters():
                p.data = p.data.astype(dtype)
            plans.append(make_plan(trace(probe, dtype)))
    except Exception:
        return None

    def signature(p):
        return [(e.op, tuple(v.id for v in e.ins), e.out.id) for e in p.step_eqns], \
            [v.id for v in p.hoisted], [v.id for v in p.aux]
    if any(signature(p) != signature(plan) for p in plans):
        return None
    sizes = [*_PROBES, (cell.input_size, cell.hidden_size)]

    def fit(values):
        a, b = values[1] - values[0], values[2] - values[0]
        f = (a, b, values[0] - 2 * a - 3 * b)
        return f if all(f[0] * I + f[1] * H + f[2] == v for (I, H), v in zip(sizes, values)) else None

    widths, slices = {}, {}
    every = [*plans, plan]
    step_vars = lambda p: [*p.graph.states, *p.hoisted, *p.aux, *(e.out for e in p.step_eqns)]
    for vs in zip(*(step_vars(p) for p in every)):
        f = fit([v.width for v in vs])
        if f is None:
            return None
        widths[vs[0].id] = f
    for es in zip(*(p.step_eqns for p in every)):
        if es[0].op == "getitem":
            lo = fit([e.attrs["index"][1].start for e in es])
            hi = fit([e.attrs["index"][1].stop for e in es])
            if lo is None or hi is None:
                return None
            slices[es[0].out.id] = (lo, hi)
    return widths, slices


def _symbolic_graph_text(plan, sizes):
    from .lower import fmt
    widths, slices = sizes
    lines = []
    # a scalar constant (eps, beta, dt) by the input it is, not its value: one generated module
    # serves every value (a cell attribute annealed between calls compiles nothing new)
    operand = lambda v: f"A{plan.aux.index(v)}" if _is_scalar_constant(v) else operand_text(v)
    for e in plan.step_eqns:
        attrs = "[:, {}:{}]".format(*map(fmt, slices[e.out.id])) if e.op == "getitem" else e.params_text()
        operands = " ".join(operand(v) for v in e.ins)
        lines.append(f"    {e.out.name}[B,{fmt(widths[e.out.id])}] = {e.op}{attrs} {operands}")
    scalars = [f"A{n}" for n, v in enumerate(plan.aux) if _is_scalar_constant(v)]
    return ("per-step equations (widths in I and H):\n" + "\n".join(lines)
            + (f"\nscalar constants of the step, inputs of forward and backward (their values: "
               f"tinygrad-rnn compile): {', '.join(scalars)}" if scalars else ""))


def _is_scalar_constant(v):
    return v.role == "const" and v.value.ndim == 0


def _replayed_inputs(cell, x, compiled):
    """The fused op's hoisted and batch-free inputs, computed on the tape."""
    from .runtime import replay
    plan, graph = compiled.plan, compiled.plan.graph
    T, B, I = x.shape
    params = dict(cell.named_parameters())
    env = {v: params[v.name] for v in graph.params}
    env.update({v: Tensor(v.value, device=x.device) for v in graph.consts})
    replay(plan.param_eqns, env, keep={v for e in plan.hoist_eqns for v in e.ins} | set(plan.aux))
    env[graph.x] = x.reshape(T * B, I)
    replay(plan.hoist_eqns, env, keep=set(plan.hoisted))
    return [env[v].reshape(T, B, v.width) for v in plan.hoisted], [env[v] for v in plan.aux]


def run_layer(cell, x, state, mask=None, probe=None, compiled=None):
    """One layer over a sequence ``x`` (T, B, I): (out (T, B, H), final state tuple)."""
    compiled = compiled or compile_cell(cell, x.dtype)
    T, B, I = x.shape
    hoisted, aux = _replayed_inputs(cell, x, compiled)
    m = np.ones((T, B), x.dtype) if mask is None else np.ascontiguousarray(mask, dtype=x.dtype)
    module = compiled.module if x.device == "cpu" else compiled.cuda_module
    Y = ops.apply(ops.OPS["compiled_sequence"], *state, *hoisted, *aux, module=module, sizes=(I, cell.hidden_size),
                  mask=m, probe=probe, n_states=len(state), n_hoisted=len(hoisted))
    out = Y[:, 0]
    if mask is not None and not mask.all():  # padded steps output zeros, as in PyTorch
        out = out * Tensor(mask[:, :, None].astype(x.dtype), device=x.device)
    return out, tuple(Y[T - 1, i] for i in range(cell.num_states))


def step_values(cell, x, state, ops_named=("sigmoid", "tanh")):
    """Per-step values of a compiled cell over ``x`` (T, B, I), for diagnostics:
    ``{op: [array (T, B, width), ...]}`` for every step equation of those ops, found
    from the graph (a cell's gates are its sigmoid outputs)."""
    from ..tape import no_grad
    from .runtime import guarded
    compiled = compile_cell(cell, x.dtype)
    T, B, I = x.shape
    with no_grad():
        hoisted, aux = _replayed_inputs(cell, x, compiled)
        arrays = [np.ascontiguousarray(t.numpy()) for t in (*state, *hoisted, *aux)]
        Y, residuals = guarded(compiled.module, "forward", I, cell.hidden_size,
                               np.ones((T, B), x.dtype), *arrays)
    kept = dict(zip(compiled.module.RESIDUAL_IDS, residuals))
    kept.update({vid: Y[:, i] for i, vid in enumerate(compiled.module.OUTPUT_IDS)})
    return {op: [kept[e.out.id] for e in compiled.plan.step_eqns if e.op == op and e.out.id in kept]
            for op in ops_named}


def inspect_cell(cell, dtype="float32", target="cpu"):
    """(graph text, plan summary, generated source, its cached file) for a cell instance;
    ``target="cuda"`` gives the numba.cuda module instead of the CPU's."""
    c = compile_cell(cell, dtype)
    p = c.plan
    summary = (f"param equations: {len(p.param_eqns)}, hoisted (all T*B rows at once): "
               f"{len(p.hoist_eqns)}, per step: {len(p.step_eqns)} in {len(p.stages)} stage(s), "
               f"recurrent products: {len(p.gemms)}")
    summary += "\n\n" + _kernel_ir_text(c)
    if target == "cuda":
        return c.graph_text, summary, c.cuda_source, c.cuda_module.__file__
    from .runtime import load_source
    return c.graph_text, summary, c.source, load_source(c.source).__file__  # written, not compiled


def _kernel_ir_text(compiled):
    """The kernel IR both renderers print, one kernel after another, readably."""
    from .kir import describe
    from .lower import Generator
    m = Generator(compiled.plan, compiled.dtype, compiled.sizes).module()
    out = ["kernel IR (each kernel's work for one row b of the batch at step t):"]
    for kern in m.kernels:
        out += [f"  {kern.name}({', '.join(kern.args)})", *describe(kern.body, 2)]
    return "\n".join(out)


def cuda_kernel_signatures(cell, dtype):
    """{kernel name: (Python function, argument types)} for every kernel of the cell's
    CUDA module, found by running its drivers on host arrays (no GPU needed), so each
    can be compiled ahead of time, e.g. to PTX for a given compute capability. The
    recorder makes every array C-contiguous, as the device drivers do, so arrays of the
    real call's dtypes and ranks give the real call's types."""
    compiled = compile_cell(cell, dtype)
    return _record_cuda_drivers(compiled, compiled.cuda_module)
