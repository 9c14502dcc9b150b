"""Recomputation (``tr.nn.RNN(..., remat=K)``) and per-step gradient norms that do not
underflow on the compiled path.

A layer normally keeps every step's intermediate values for the backward pass: the tape
of every step on the step path, the kernels' residual arrays (about 10 hidden-sized
values per row and step for a GRU) on the compiled path. With ``remat=K`` it keeps less
and recomputes the rest, K steps at a time, during the backward (Chen et al. 2016,
Gruslys et al. 2016):

- step path: every K-th state and the layer's output; each segment's steps run again on
  a fresh tape from its first state, and that tape is dropped before the next segment.
  Gradients are bit-identical to the step path without recomputation: the segment's
  tape accumulates into the same tensors in the same order (the boundary state's
  gradient starts from the output gradient it would have met first, see ``_boundary``).
- compiled path: the states (the layer's output, which is kept anyway) and nothing of
  the kernels' residuals; each segment's forward kernel runs again from the state
  before it, then its backward kernel with the gradient carried from the segment after
  it. The per-segment weight gradients are summed here, so gradients equal the
  unsegmented ones to float rounding (the sums are reordered), not bit for bit.

The compiled kernels accumulate each step's norm as a sum of squares, which underflows
below about 1e-154 in float64. When a probed layer's sums leave the safe range, its
backward is run again in short segments, each with its incoming gradient scaled by a
power of two to a largest element near 1 (an exact scaling), and the norms are scaled
back: exact whenever the gradient's elements are representable.
"""
import math

import numpy as np

from . import ops
from .backend.threads import on_one_blas_thread
from .norms import GradProbe, safe_from_squares
from .tape import _recording, no_grad
from .tensor import Tensor

# Segment length of the norm-rescue pass: short enough that a gradient rarely falls by
# 1e140 inside one (an LSTM at init loses about 10^0.19 a step; a segment where it does
# is halved), long enough that the drivers' per-call cost stays small.
RESCUE_SEGMENT = 32


def every_for(remat, T):
    """Segment length for ``remat`` (None/False: no recomputation, True: about sqrt(T),
    an int K: K) over ``T`` steps; None when nothing is recomputed."""
    if remat is None or remat is False:
        return None
    if remat is True:
        return max(1, math.isqrt(T - 1) + 1) if T > 1 else 1
    return min(int(remat), T)


def check_remat(remat):
    """``remat`` as RNN stores it: None, True, or a positive int. Raises ValueError/TypeError."""
    if remat is None or remat is False:
        return None
    if remat is True or isinstance(remat, np.bool_) and remat:
        return True
    if isinstance(remat, (int, np.integer)) and not isinstance(remat, bool):
        if remat < 1:
            raise ValueError(f"remat must be True, None or a positive number of steps, got {remat!r}")
        return int(remat)
    raise TypeError(f"remat must be True, None or a positive number of steps, got {remat!r}")


def segments(T, every):
    """[(start, stop), ...] covering range(T) in pieces of ``every`` steps."""
    return [(a, min(a + every, T)) for a in range(0, T, every)]


# ---- the step path ------------------------------------------------------------------
def step_sequence(cell, x, state, mask, probe, every):
    """``Cell.forward_sequence`` with recomputation: (out (T, B, H), final state tuple)."""
    params = list(cell.parameters())
    S, T = len(state), x.shape[0]
    Y = ops.apply(ops.OPS["remat_step_sequence"], x, *state, *params, cell=cell, mask=mask, probe=probe,
                  every=every, n_states=S, need_x=x.requires_grad)
    return Y[:T], tuple(Y[T + i] for i in range(S))


def _run_steps(cell, x, state, mask, t0, probe=None, stop_before_last=False):
    """The body of ``Cell.forward_sequence`` over ``x`` (steps t0, t0 + 1, ...), op for op the
    same (so the tape is too). Returns (outs, final state, whether the last out is state[0])."""
    outs, last_is_state = [], True
    for t in range(x.shape[0]):
        new = cell.checked_step(x[t], state, t0 + t)
        if probe is not None:  # a state passed through unchanged is still a new state at t
            new = tuple(n + 0 if any(n is s for s in state) else n for n in new)
        computed = None
        if mask is not None and not mask[t0 + t].all():
            m = mask[t0 + t][:, None] > 0
            computed = new
            new = tuple(ops.where(m, n, s) for n, s in zip(new, state))
            outs.append(new[0] * Tensor(mask[t0 + t][:, None].astype(new[0].dtype), device=x.device))
            last_is_state = False
        else:
            outs.append(new[0])
            last_is_state = True
        if probe is not None:
            probe.track(new, computed, None if computed is None else mask[t0 + t])
        state = new
    return outs, state, last_is_state


def _step_fwd(k, x, *arrays, cell, mask, probe, every, n_states, need_x):
    T = x.shape[0]
    state = tuple(Tensor._make(a) for a in arrays[:n_states])
    xt = Tensor._make(x)
    out, checkpoints = [], []
    with no_grad():
        for a, b in segments(T, every):
            checkpoints.append(tuple(s.data for s in state))
            outs, state, _ = _run_steps(cell, xt[a:b], state, mask, a)
            out.extend(o.data for o in outs)
    Y = k.concatenate([k.expand_dims(a, 0) for a in (*out, *(s.data for s in state))], 0)
    return Y, checkpoints


def _step_vjp(k, g, Y, x, *arrays, cell, mask, probe, every, n_states, need_x, residuals):
    checkpoints = residuals
    T, S = x.shape[0], n_states
    params = list(cell.parameters())
    dx = []
    carry = None  # (per-state gradient tensors of the segment's first state)
    norms = np.zeros((S, T)) if probe is not None else None
    g_out, g_final = g[:T], [g[T + i] for i in range(S)]
    was = _recording[0]
    _recording[0] = True  # the segment's tape is built even when backward runs under no_grad
    try:
        for n, (a, b) in reversed(list(enumerate(segments(T, every)))):
            start = tuple(Tensor._make(c, ) for c in checkpoints[n])
            for s in start:
                s.requires_grad = True
            xs = Tensor._make(x[a:b])
            xs.requires_grad = need_x
            seg_probe = GradProbe() if probe is not None else None
            outs, final, last_is_state = _run_steps(cell, xs, start, mask, a, seg_probe)
            boundary = _boundary(g_out, g_final, carry, b == T, last_is_state, b - 1)
            kept = outs[:-1] if last_is_state else outs
            root = None
            if kept:
                root = (ops.stack(kept, 0) * Tensor._make(g_out[a:a + len(kept)])).sum()
            for s, gs in zip(final, boundary):  # after the outputs' nodes: their gradient comes first
                if gs is not None:
                    term = (s * Tensor._make(gs)).sum()
                    root = term if root is None else root + term
            if n > 0 and last_is_state_before(mask, a):
                # the step before this segment gives its output unmasked: in the full tape the
                # output's gradient reaches that state first, then this segment's contributions
                start[0].grad = Tensor._make(k.copy_as(g_out[a - 1], g_out.dtype))
            if root is not None:
                root.backward()
            if seg_probe is not None:
                norms[:, a:b] = seg_probe.result(S)
            if need_x:
                dx.append(xs.grad.data)
            carry = [s.grad.data if s.grad is not None else None for s in start]
    finally:
        _recording[0] = was
    if probe is not None:
        probe.norms = norms
    dx = k.concatenate(dx[::-1], 0) if need_x else None
    return (dx, *carry, *([None] * len(params)))


def last_is_state_before(mask, a):
    """Whether step a - 1's output is its state[0] itself (a step with no padded row)."""
    return mask is None or bool(mask[a - 1].all())


def _boundary(g_out, g_final, carry, last, last_is_state, t):
    """The gradient each final state of a segment receives from outside the segment, summed
    in the order the full tape sums it. Last segment: the layer's final-state gradient, then
    (when the last output is the state itself) the output's. Other segments: what the next
    segment carried back, which started from the output gradient (see ``_step_vjp``)."""
    if last:
        out = [gf if gf.any() else None for gf in g_final]
        if last_is_state:
            out[0] = g_out[t] if out[0] is None else out[0] + g_out[t]
        return out
    return carry


ops.defop("remat_step_sequence", _step_fwd, _step_vjp, residuals=True)


# ---- the compiled path --------------------------------------------------------------
def compiled_sequence(cell, x, state, mask, probe, compiled, every):
    """``compiler.run_layer`` with recomputation (``every``) and/or norms that do not underflow (CPU)."""
    from .compiler import _replayed_inputs
    T, B, I = x.shape
    m = np.ones((T, B), x.dtype) if mask is None else np.ascontiguousarray(mask, dtype=x.dtype)
    if every is None:
        hoisted, aux = _replayed_inputs(cell, x, compiled)
        Y = ops.apply(ops.OPS["probed_compiled_sequence"], *state, *hoisted, *aux, module=compiled.module,
                      sizes=(I, cell.hidden_size), mask=m, probe=probe, n_states=len(state),
                      n_hoisted=len(hoisted))
    else:
        Y = ops.apply(ops.OPS["remat_compiled_sequence"], x, *state, *cell.parameters(), cell=cell,
                      compiled=compiled, mask=m, probe=probe, n_states=len(state), every=every,
                      need_x=x.requires_grad)
    out = Y[:, 0]
    if mask is not None and not mask.all():
        out = out * Tensor(mask[:, :, None].astype(x.dtype), device=x.device)
    return out, tuple(Y[T - 1, i] for i in range(cell.num_states))


def _split(arrays, n_states, n_hoisted):
    arrays = [np.ascontiguousarray(a) for a in arrays]
    return arrays[:n_states], arrays[n_states:n_states + n_hoisted], arrays[n_states + n_hoisted:]


def _c_fwd(k, *arrays, module, sizes, mask, probe, n_states, n_hoisted):
    states, hoisted, aux = _split(arrays, n_states, n_hoisted)
    return module.forward(*sizes, mask, *states, *hoisted, *aux)


def _c_vjp(k, g, Y, *arrays, module, sizes, mask, probe, n_states, n_hoisted, residuals):
    states, hoisted, aux = _split(arrays, n_states, n_hoisted)
    g = np.ascontiguousarray(g, dtype=Y.dtype)
    dx, dstates, daux, norms = module.backward(*sizes, g, Y, residuals, mask, *states, *hoisted, *aux)
    if probe is not None:
        if not safe_from_squares(np.square(np.asarray(norms, np.float64)), Y.dtype):
            # a sum of squares left the range where it is exact: measure again, rescaled
            norms, probe.log10_norms = _segmented(module, sizes, g, Y, mask, states, hoisted, aux,
                                                  RESCUE_SEGMENT)[3:]
        probe.norms = norms
    daux = [d.reshape(np.shape(a)) for d, a in zip(daux, arrays[n_states + n_hoisted:])]  # 0-d ones too
    return (*dstates, *dx, *daux)


def _lean_fwd(k, x, *arrays, cell, compiled, mask, probe, n_states, every, need_x):
    """Segment by segment: the hoisted products of the segment's rows, then its kernels;
    only the states are kept."""
    from .compiler import _replayed_inputs
    T, B, I = x.shape
    states = [np.ascontiguousarray(a) for a in arrays[:n_states]]
    module, sizes, Y = compiled.module, (I, cell.hidden_size), None
    with no_grad():
        for a, b in segments(T, every):
            start = states if a == 0 else [Y[a - 1, i] for i in range(n_states)]
            hoisted, aux = _replayed_inputs(cell, Tensor._make(x[a:b]), compiled)
            Ys, _ = module.forward(*sizes, mask[a:b], *start,
                                   *(np.ascontiguousarray(t.data) for t in (*hoisted, *aux)))
            if Y is None:
                Y = np.empty((T,) + Ys.shape[1:], Ys.dtype)
            Y[a:b] = Ys
    return Y


def _lean_vjp(k, g, Y, x, *arrays, cell, compiled, mask, probe, n_states, every, need_x):
    """From the last segment: the hoisted products again on a fresh tape, the kernels'
    forward and (rescaled) backward, then that tape's backward, which adds the weight
    gradients into the parameters as the step path's tape does."""
    from .compiler import _replayed_inputs
    T, B, I = x.shape
    states = [np.ascontiguousarray(a) for a in arrays[:n_states]]
    module, sizes = compiled.module, (I, cell.hidden_size)
    g = np.ascontiguousarray(g, dtype=Y.dtype)
    norms, logs = np.zeros((n_states, T)), np.zeros((n_states, T))
    carry, dxs = None, []
    was = _recording[0]
    _recording[0] = True
    try:
        for a, b in reversed(segments(T, every)):
            start = states if a == 0 else [np.ascontiguousarray(Y[a - 1, i]) for i in range(n_states)]
            xs = Tensor._make(x[a:b])
            xs.requires_grad = need_x
            hoisted, aux = _replayed_inputs(cell, xs, compiled)
            h_arr = [np.ascontiguousarray(t.data) for t in hoisted]
            a_arr = [np.ascontiguousarray(t.data) for t in aux]
            dh, carry, daux, ns, ls = _segmented(module, sizes, g[a:b], Y[a:b], mask[a:b], start, h_arr,
                                             a_arr, b - a, exact_norms=probe is not None, carry=carry)
            norms[:, a:b], logs[:, a:b] = ns, ls
            root = None
            for t, d in zip((*hoisted, *aux), (*dh, *daux)):
                if t.requires_grad:
                    term = (t * Tensor._make(np.asarray(d).reshape(t.shape))).sum()
                    root = term if root is None else root + term
            if root is not None:
                root.backward()
            if need_x:
                dxs.append(xs.grad.data if xs.grad is not None else np.zeros(xs.shape, x.dtype))
    finally:
        _recording[0] = was
    if probe is not None:
        probe.norms, probe.log10_norms = norms, logs
    dx = np.concatenate(dxs[::-1], 0) if need_x else None
    return (dx, *_unscaled(carry), *([None] * (len(arrays) - n_states)))


def _segmented(module, sizes, g, Y, mask, states, hoisted, aux, every, exact_norms=True, carry=None):
    """The backward kernels run segment by segment from the last, each segment's forward
    recomputed from the state before it (kept in ``Y``). The gradient entering a segment
    is scaled by 2**-e to a largest element near 1 and its results by 2**e (exact scalings
    of floating-point numbers). With ``exact_norms``, a segment whose scaled sums of
    squares still leave the safe range (the gradient fell by more than about 1e140 inside
    it) is done again as two halves, down to single steps. Returns what the module's
    ``backward`` returns, but the state gradient as (arrays, e): the true one is
    arrays * 2**e (``carry``, in that form, is the gradient arriving at the last state
    from after ``Y``'s steps), and then log10 of the norms, which stays exact where a
    gradient falls below float64's range (10^-20000 at T = 10^5)."""
    T, S = mask.shape[0], len(states)
    dx = [np.empty_like(h) for h in hoisted]
    daux, norms, logs = None, np.zeros((S, T)), np.zeros((S, T))
    carry, carry_exp = carry if carry is not None else (None, 0)  # true gradient = carry * 2**carry_exp
    todo = segments(T, every)  # taken from the end
    while todo:
        a, b = todo.pop()
        start = states if a == 0 else [np.ascontiguousarray(Y[a - 1, i]) for i in range(S)]
        hs = [h[a:b] for h in hoisted]
        Ys, res = module.forward(*sizes, mask[a:b], *start, *hs, *aux)
        gs = g[a:b]
        e = _exponent(gs)
        if carry is not None:
            e = max(e, max(_exponent(c) for c in carry) + carry_exp)
        if e == _NO_EXPONENT:
            e = 0
        gs = np.ldexp(gs, -e).astype(g.dtype)
        if carry is not None:
            for i, c in enumerate(carry):
                gs[-1, i] += np.ldexp(c, carry_exp - e).astype(g.dtype)
        dxs, dst, dau, ns = module.backward(*sizes, gs, Ys, res, mask[a:b], *start, *hs, *aux)
        ns = np.asarray(ns, np.float64)
        if exact_norms and b - a > 1 and not safe_from_squares(np.square(ns), g.dtype):
            m = (a + b) // 2
            todo += [(a, m), (m, b)]
            continue
        for d, ds in zip(dx, dxs):
            d[a:b] = np.ldexp(ds, e)
        dau = [np.ldexp(d, e).astype(d.dtype) for d in dau]
        daux = dau if daux is None else [x + y for x, y in zip(daux, dau)]
        norms[:, a:b] = np.ldexp(ns, e)
        with np.errstate(divide="ignore"):  # the scaled norms' log, exact below float64's range too
            logs[:, a:b] = np.log10(ns) + e * math.log10(2)
        carry, carry_exp = list(dst), e
    return dx, (carry, carry_exp), daux, norms, logs


def _unscaled(carry):
    arrays, e = carry
    return [np.ldexp(c, e).astype(c.dtype) for c in arrays]


_NO_EXPONENT = -(10 ** 6)


def _exponent(a):
    """e with max|a| in [2**(e-1), 2**e); _NO_EXPONENT for an all-zero or non-finite array."""
    peak = float(np.abs(a).max()) if a.size else 0.0
    if peak == 0.0 or not math.isfinite(peak):
        return _NO_EXPONENT
    return int(np.frexp(peak)[1])


ops.defop("probed_compiled_sequence", on_one_blas_thread(_c_fwd), on_one_blas_thread(_c_vjp), residuals=True)
ops.defop("remat_compiled_sequence", on_one_blas_thread(_lean_fwd), on_one_blas_thread(_lean_vjp))



def all_states(cell, x, state):
    """Every step's states of one layer over ``x`` (T, B, I) from ``state`` (a tuple of
    (B, H) tensors), without a tape: array (T, num_states, B, H). Compiled when the cell
    compiles (one kernel call), else the step loop."""
    from .compiler import CompileError, compile_cell
    with no_grad():
        try:
            if x.device != "cpu":
                raise CompileError("host only")
            compiled = compile_cell(cell, x.dtype)
        except CompileError:
            rows = []
            for t in range(x.shape[0]):
                state = cell.checked_step(x[t], state, t)
                rows.append(np.stack([s.numpy() for s in state]))
            return np.stack(rows)
        from .compiler import _replayed_inputs
        hoisted, aux = _replayed_inputs(cell, x, compiled)
        arrays = [np.ascontiguousarray(t.numpy()) for t in (*state, *hoisted, *aux)]
        Y, _ = compiled.module.forward(x.shape[2], cell.hidden_size, np.ones(x.shape[:2], x.dtype), *arrays)
        return Y
