"""Gradient diagnostics: how dL/dh_t vanishes or explodes across time steps.

Measurements only, of a model it is given: per-step and per-parameter gradient norms,
step-Jacobian spectra, gate saturation, verdicts and sparklines. Everything here is
exact: per-step norms come from the generated backward kernels (every compiled cell,
built-in or plugin) or from ``retain_grad`` on every step's state (a cell that does not
compile, or ``fused=False``), and step Jacobians are built
row by row with one batched vector-Jacobian product. ``report.py`` builds the models,
trains them and collects these measurements into ``tinygrad-rnn diagnose``'s report.
"""
import math

import numpy as np

from .errors import ConfigError, DataError, NonFiniteError, UserCodeError
from .norms import l2norm, log10_norms
from .tensor import Tensor

# Verdict thresholds (echoed in JSON output and documented in the README).
VANISHING_RATIO = 1e-3    # ||dL/dh_0|| / ||dL/dh_T|| below this: the gradient vanished
EXPLODING_RATIO = 1e3     # above this: it exploded
HORIZON_FRACTION = 1e-3   # a step is "within reach" while its norm is >= this x the loss step's
THRESHOLDS = {"vanishing_ratio": VANISHING_RATIO, "exploding_ratio": EXPLODING_RATIO,
              "horizon_fraction": HORIZON_FRACTION}


def _saved_grads(params):
    return [p.grad for p in params]


def _restore_grads(params, grads):
    for p, g in zip(params, grads):
        p.grad = g


def _check_finite(x):
    data = x.numpy() if isinstance(x, Tensor) else np.asarray(x)
    if data.dtype.kind == "f" and not np.isfinite(data).all():
        pos = tuple(int(i) for i in np.argwhere(~np.isfinite(data))[0])
        raise DataError(f"the input holds a non-finite value ({data[pos]}) at position {pos}: "
                         "gradient norms of NaN data mean nothing")


def step_grad_norms(rnn, x, loss_fn, state=None, which=0, lengths=None):
    """Array (num_layers, T): ||dL/dh_t|| over (batch, hidden) for each layer and step.

    ``loss_fn(out)`` maps the RNN output (T, B, H) to a scalar Tensor. The norm is
    of the total derivative through later steps and upper layers, exact whenever the
    gradient's elements are representable (no underflow of a sum of squares). ``which``
    indexes the cell's ``state_names``: ``which=1`` gives ||dL/dc_t|| for an LSTM;
    ``lengths`` goes to the RNN (right-padded sequences). Parameter gradients are left as
    they were.
    """
    if not 0 <= which < rnn.num_states:
        raise ValueError(f"which={which}: cell {rnn.cell_class.name!r} has {rnn.num_states} state(s)")
    _check_finite(x)
    params = rnn.parameters()
    saved = _saved_grads(params)
    try:
        out, _ = rnn(x, _tracked_state(rnn, x) if state is None else state, lengths=lengths, probe=True)
        loss = loss_fn(out)
        if not isinstance(loss, Tensor) or loss.size != 1:
            raise ValueError("loss_fn(out) must return a scalar Tensor")
        loss.backward()
        return rnn.step_grad_norms(which)
    finally:
        _restore_grads(params, saved)


def param_grad_norms(module):
    """Parameter name -> L2 norm of its current gradient (NaN where it has none)."""
    return {name: (l2norm(p.grad.numpy()) if p.grad is not None else math.nan)
            for name, p in module.named_parameters()}


def decay_rate(norms):
    """Least-squares per-step factor rho: norm(t - k) ~ norm(t) * rho**k going back from the end."""
    norms = np.asarray(norms, np.float64)
    ok = norms > 0
    if ok.sum() < 2:
        return math.nan
    steps_back = (len(norms) - 1 - np.arange(len(norms)))[ok]
    slope = np.polyfit(steps_back, np.log(norms[ok]), 1)[0]
    return float(np.exp(slope))


def horizon(norms, fraction=HORIZON_FRACTION):
    """Steps back from the last step for which the norm stays >= fraction x its last value."""
    norms = np.asarray(norms, np.float64)
    ref = norms[-1]
    if not ref > 0:
        return 0
    below = np.nonzero(norms[::-1] < fraction * ref)[0]
    return int(below[0]) if len(below) else len(norms)


def verdict(norms):
    """``vanishing``, ``exploding`` or ``healthy`` from first-to-last ratio of the norms."""
    norms = np.asarray(norms, np.float64)
    if not np.all(np.isfinite(norms)):
        return "exploding"
    last, first = norms[-1], norms[0]
    if last == 0:
        return "vanishing"
    ratio = first / last
    if ratio < VANISHING_RATIO:
        return "vanishing"
    if ratio > EXPLODING_RATIO:
        return "exploding"
    return "healthy"


def _check_output(rnn, out):
    """Gradient norms of a NaN output mean nothing: say where the cell first went non-finite."""
    data = out.numpy()
    if not np.isfinite(data).all():
        t = int(np.argwhere(~np.isfinite(data))[0][0])
        raise NonFiniteError(f"cell {rnn.cell_class.name!r} produces a non-finite output "
                             f"({data[t][~np.isfinite(data[t])][0]}) at time step {t}: its gradients cannot "
                             "be measured (check its step, init_scheme= and hidden=)")


def _never_read(cell, states):
    """Whether ``step`` reads none of these states (their columns of the Jacobian are zero:
    ``h' = f(c)``, ``c' = h' @ U``), as opposed to reading one off the tape (a NumPy detour,
    which the tracer refuses)."""
    from .compiler import CompileError
    from .compiler.trace import trace
    try:
        graph = trace(cell, next(iter(cell.parameters())).dtype)
    except CompileError:
        return False
    read = {v for e in graph.eqns for v in e.ins}
    return all(graph.states[i] not in read and graph.states[i] not in graph.outputs for i in states)


def _off_tape(cell):
    """The error for a cell whose new state does not depend on its previous state through
    Tensor ops (its step left the tape), with where the compiler's trace saw it leave."""
    from .compiler import compile_status
    from .plugins import provider_of
    _, why = compile_status(type(cell), **cell.cell_options)
    why = why.replace("; keep step in Tensor ops", "")
    return UserCodeError(f"cell {type(cell).name!r} (plugin {provider_of(type(cell))!r}): its new state does not "
                         "depend on the previous state through Tensor ops, so no gradient flows through time"
                         f"{f' ({why})' if why else ''}; keep step in Tensor ops")


# Jacobian spectra measure at most this many steps of a sequence, evenly spaced (the first
# and the last included). Each LSTM-64 step's spectral norm costs about 2 ms of one core
# (a (128, 128) matrix; power iteration or an SVD alike, measured on 300 steps), so all of
# T = 1000 would take 2 s of a 5 s budget, and T = 10^5 minutes; 200 points draw the curve.
JACOBIAN_MAX_STEPS = 200
# Rows of one batched vector-Jacobian product: (steps per group) x (state size) copies of
# the step. 4096 rows keep a group's tape near 100 MB for an LSTM of hidden 64 in float64.
_JACOBIAN_ROWS = 4096


def jacobian_steps(T, max_steps=JACOBIAN_MAX_STEPS):
    """The time steps whose Jacobian is measured: all T, or ``max_steps`` evenly spaced."""
    if T <= max_steps:
        return np.arange(T)
    return np.unique(np.round(np.linspace(0, T - 1, max_steps)).astype(np.int64))


def step_jacobian_norms(rnn, x, state=None, layer=0, sample=0, max_steps=JACOBIAN_MAX_STEPS):
    """Spectral norm of the step Jacobian d s_t / d s_{t-1} along one sequence's trajectory.

    ``s`` is the full state (h, or (h, c) concatenated). Array over the steps
    ``jacobian_steps(T, max_steps)`` (every step up to ``max_steps``), in the cell's
    processing order. ``layer`` counts in the order of the final states (for a
    bidirectional RNN: 0 is layer 0 forward, 1 layer 0 reverse, ...).

    Each Jacobian is exact: the trajectory's states come from one forward pass, then a
    group of steps is replayed as one batch of D = num_states * hidden one-hot
    cotangent copies per step, and one vector-Jacobian product gives all their rows.
    The largest singular value is found by power iteration on (J^T J)^4 v, all the group's
    matrices at once (two batched matrix-vector products per iteration, in place of a
    full SVD per step); a matrix whose iteration has not settled to 1e-12 after
    ``_POWER_ITERATIONS`` gets an SVD.
    """
    from .remat import all_states
    xs, s0, cell = rnn.layer_inputs(x, state)[layer]
    S, H = cell.num_states, cell.hidden_size
    D = S * H
    x_one = Tensor(xs.numpy()[:, sample:sample + 1])
    start = tuple(Tensor(s.numpy()[sample:sample + 1]) for s in s0)
    traj = all_states(cell, x_one, start)[:, :, 0]  # (T, S, H): the states after each step
    steps = jacobian_steps(xs.shape[0], max_steps)
    before = np.concatenate([np.stack([s.numpy()[0] for s in start])[None], traj[:-1]])  # state before step t
    group = max(1, _JACOBIAN_ROWS // D)
    eye = np.eye(D, dtype=rnn.dtype)
    norms = np.zeros(len(steps))
    params = cell.parameters()
    needs = [p.requires_grad for p in params]
    for p in params:  # only d out / d state is wanted: no weight-gradient products
        p.requires_grad = False
    try:
        for g0 in range(0, len(steps), group):
            norms[g0:g0 + len(steps[g0:g0 + group])] = _group_norms(rnn, cell, xs, before, steps[g0:g0 + group],
                                                                    sample, layer, eye)
    finally:
        for p, n in zip(params, needs):
            p.requires_grad = n
    return norms


def _group_norms(rnn, cell, xs, before, ts, sample, layer, eye):
    """Spectral norms of the step Jacobians at steps ``ts``: one batched VJP."""
    S, H = cell.num_states, cell.hidden_size
    D = S * H
    n = len(ts)
    x_t = Tensor(np.repeat(xs.numpy()[ts, sample], D, axis=0))
    inputs = tuple(Tensor(np.repeat(before[ts, i], D, axis=0), requires_grad=True) for i in range(S))
    out = cell.checked_step(x_t, inputs, int(ts[0]))
    cot = np.tile(eye, (n, 1))  # row k of copy j: one-hot at k
    total = sum((o * Tensor(cot[:, i * H:(i + 1) * H])).sum() for i, o in enumerate(out))
    if not total.requires_grad:
        raise _off_tape(cell)
    total.backward()
    unread = [i for i, s in enumerate(inputs) if s.grad is None]
    if unread and not _never_read(cell, unread):
        raise _off_tape(cell)
    J = np.concatenate([np.zeros(s.shape) if s.grad is None else s.grad.numpy() for s in inputs],
                       axis=1).astype(np.float64).reshape(n, D, D)
    bad = ~np.isfinite(J).reshape(n, -1).all(axis=1)
    if bad.any():
        t = int(ts[np.argmax(bad)])
        raise NonFiniteError(f"cell {rnn.cell_class.name!r}: the step Jacobian at time step {t} (layer {layer}) "
                             "is not finite (the cell produces NaN or Inf there)")
    return spectral_norms(J)


_POWER_ITERATIONS = 150
_SQUARINGS = 2  # each iteration multiplies by (J^T J)^4


def spectral_norms(J):
    """Largest singular value of each matrix of ``J`` (n, D, D) by batched power iteration
    on (J^T J)^4 (two squarings of J^T J, each matrix rescaled to stay in range), with the
    Rayleigh estimate ||J v|| for a unit v; a matrix whose estimate has not settled to
    1e-13 between iterations gets an exact SVD."""
    n, D, _ = J.shape
    # each matrix scaled by a power of two to a largest element near 1 (exact), so that
    # J^T J neither underflows nor overflows; the norms are scaled back at the end
    peak = np.abs(J).max(axis=(1, 2))
    exps = np.where(peak > 0, np.frexp(np.where(peak > 0, peak, 1))[1], 0)
    J = np.ldexp(J, -exps[:, None, None])
    M = np.matmul(np.swapaxes(J, 1, 2), J)
    for _ in range(_SQUARINGS):
        peak = np.abs(M).max(axis=(1, 2), keepdims=True)
        M = M / np.where(peak > 0, peak, 1)
        M = np.matmul(M, M)
    # one start vector for every matrix, and a matrix's estimate frozen once it settles:
    # each result depends on its own matrix only, not on the others measured with it
    v = np.repeat(np.random.default_rng(0).normal(size=(1, D, 1)), n, axis=0)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    sigma = np.zeros(n)
    settled = np.zeros(n, bool)
    for _ in range(_POWER_ITERATIONS):
        w = np.matmul(M, v)
        size = np.linalg.norm(w, axis=1, keepdims=True)
        v = np.where(size > 0, w / np.where(size > 0, size, 1), v)
        new_sigma = np.linalg.norm(np.matmul(J, v), axis=1)[:, 0]
        now = ~settled & (np.abs(new_sigma - sigma) <= 1e-13 * np.maximum(new_sigma, 1e-300))
        sigma = np.where(settled, sigma, new_sigma)
        settled |= now
        if settled.all():
            break
    for k in np.nonzero(~settled)[0]:
        sigma[k] = np.linalg.norm(J[k], 2)
    return np.ldexp(sigma, exps)


def recurrent_spectral_radius(rnn):
    """Spectral radius of each (H, H) block of every recurrent weight (``*hh*`` names)."""
    out = {}
    for name, p in rnn.named_parameters():
        w = p.numpy().astype(np.float64)
        H = rnn.hidden_size
        if "hh" not in name or w.ndim != 2 or w.shape[1] != H or w.shape[0] % H:
            continue
        for g in range(w.shape[0] // H):
            key = name if w.shape[0] == H else f"{name}[{g}]"
            out[key] = float(np.abs(np.linalg.eigvals(w[g * H:(g + 1) * H])).max())
    return out


# Gate values held at once by gate_saturation: 2^20 (row, unit) pairs per step chunk, about
# 80 MB of a GRU's residuals in float64.
_SATURATION_ROWS = 2 ** 20


def gate_saturation(rnn, x, state=None):
    """For gated cells: share of gates (sigmoid outputs, found in the compiled graph)
    below 0.05 or above 0.95, and of tanh outputs beyond +-0.95, over all layers, steps
    and units. None for cells without sigmoid gates or that do not compile."""
    from .compiler import CompileError, step_values
    from .remat import all_states
    sig, tanh, n_sig, n_tanh = 0, 0, 0, 0
    for xs, s0, cell in rnn.layer_inputs(x, state):
        T, B = xs.shape[:2]
        chunk = max(1, _SATURATION_ROWS // (B * cell.hidden_size))
        for a in range(0, T, chunk):  # a chunk of steps at a time: a long sequence's gates would not fit
            part = Tensor(xs.numpy()[a:a + chunk])
            try:
                found = step_values(cell, part, s0)
            except CompileError:
                return None
            for s in found["sigmoid"]:
                sig += int(((s < 0.05) | (s > 0.95)).sum())
                n_sig += s.size
            for th in found["tanh"]:
                tanh += int((np.abs(th) > 0.95).sum())
                n_tanh += th.size
            if a + chunk < T:
                s0 = tuple(Tensor(y) for y in all_states(cell, part, s0)[-1])
    if not n_sig:
        return None
    return {"sigmoid_saturated": sig / n_sig, "tanh_saturated": tanh / max(n_tanh, 1)}


def sparkline_scale(rows):
    """(lo, hi) of log10 over the positive finite values of all ``rows``: one shared scale,
    so that a row falling by 1e-2 and one falling by 1e-20 look different. None if empty."""
    values = np.concatenate([np.asarray(r, np.float64).ravel() for r in rows]) if rows else np.zeros(0)
    values = values[np.isfinite(values) & (values > 0)]
    if not len(values):
        return None
    return float(np.log10(values.min())), float(np.log10(values.max()))


def sparkline(values, width=50, scale=None):
    """A log-scale terminal sparkline (one character per bucket of steps).

    ``scale=(lo, hi)`` in log10 units (``sparkline_scale``) shares one scale across
    rows; without it the row is scaled alone, from its own minimum to its maximum.
    """
    bars = "▁▂▃▄▅▆▇█"
    v = np.asarray(values, np.float64)
    if len(v) > width:
        v = np.array([chunk.mean() for chunk in np.array_split(v, width)])
    logs = np.log10(np.where((v > 0) & np.isfinite(v), v, np.nan))
    if np.all(np.isnan(logs)):
        return " " * len(v)
    lo, hi = scale if scale is not None else (np.nanmin(logs), np.nanmax(logs))
    span = hi - lo if hi > lo else 1.0
    return "".join(" " if np.isnan(l) else bars[int(round((l - lo) / span * 7))] for l in logs)


def _tracked_state(rnn, x):
    """Zero initial states that require grad, so that every step's state is on the tape:
    dL/dh_t exists even for a cell without parameters, whose states would otherwise be
    constants that backward never reaches."""
    shape = (rnn.num_directions * rnn.num_layers, x.shape[1], rnn.hidden_size)
    return tuple(Tensor(np.zeros(shape, rnn.dtype), requires_grad=True, device=x.device)
                 for _ in range(rnn.num_states))


def diagnose_cell(model, task, x, y, jacobian_max_steps=JACOBIAN_MAX_STEPS):
    """Every measure for one model on one batch: a JSON-able dict.

    ``grad_norm_per_step`` is the output state's ||dL/ds_t|| (layer 1, one row per
    layer); every other state is reported under the cell's ``state_names``
    (``c_grad_norm_per_step`` for an LSTM). Each has a ``..._log10`` twin (None for an
    exact zero), so nothing reading it needs to handle log(0) for a norm that is not zero.
    """
    rnn = model.rnn
    names = state_names(rnn.cell_class)
    _check_finite(x)
    lengths = task.lengths(y)  # classify: right-padded sequences
    loss_fn = lambda out: task.loss(model.readout(out, lengths), y)  # noqa: E731
    params = model.parameters()
    saved = _saved_grads(params)
    try:
        out, _ = rnn(x, _tracked_state(rnn, x), lengths=lengths, probe=True)
        _check_output(rnn, out)
        loss_fn(out).backward()
        per_state = [rnn.step_grad_norms(i) for i in range(rnn.num_states)]
        per_state_log = [rnn.step_grad_norms(i, log10=True) for i in range(rnn.num_states)]
        pnorms = param_grad_norms(model)
    finally:
        _restore_grads(params, saved)
    D = rnn.num_directions
    norms = per_state[0]
    # Per-sample measures run on the CPU: they are small and read single sequences.
    host_rnn, host_x = rnn.cpu_copy(), Tensor(x.numpy() if isinstance(x, Tensor) else x)
    jac = step_jacobian_norms(host_rnn, host_x, max_steps=jacobian_max_steps)
    T = x.shape[0]
    spectrum = {"mean": float(jac.mean()), "max": float(jac.max()), "per_step": jac.tolist(),
                "measured_steps": len(jac)}
    if len(jac) < T:
        spectrum["steps"] = jacobian_steps(T, jacobian_max_steps).tolist()
        spectrum["note"] = (f"{len(jac)} of {T} steps measured, evenly spaced from 0 to {T - 1} "
                            "(per_step[i] is step steps[i])")
    result = {
        **_flow_measures(norms[0]),
        "state_names": list(names),
        "grad_norm_per_step": norms[::D].tolist(),
        "grad_norm_per_step_log10": [log10_norms(r, lg) for r, lg in zip(norms[::D], per_state_log[0][::D])],
        "jacobian_spectral_norm": spectrum,
        "recurrent_spectral_radius": recurrent_spectral_radius(host_rnn),
        "gate_saturation": gate_saturation(host_rnn, host_x),
        "param_grad_norms": pnorms,
    }
    for name, n, logs in zip(names[1:], per_state[1:], per_state_log[1:]):
        result[f"{name}_grad_norm_per_step"] = n[::D].tolist()
        result[f"{name}_grad_norm_per_step_log10"] = [log10_norms(r, lg) for r, lg in zip(n[::D], logs[::D])]
    if D == 2:  # the reverse direction, per step in time order; its measures read it backwards
        result["grad_norm_per_step_reverse"] = norms[1::2].tolist()
        for name, n in zip(names[1:], per_state[1:]):
            result[f"{name}_grad_norm_per_step_reverse"] = n[1::2].tolist()
        result["reverse"] = _flow_measures(norms[1][::-1])
    return result


def state_names(cell_class):
    """The cell's ``state_names`` (default ``h``, ``s1``, ...), checked: one distinct,
    non-empty name per state."""
    names = tuple(cell_class.state_names)
    S = cell_class.num_states
    if len(names) != S or len(set(names)) != S or not all(isinstance(n, str) and n.isidentifier() for n in names):
        raise ConfigError(f"cell {cell_class.name!r}: state_names must be {S} distinct identifiers "
                          f"(one per state), got {names!r}")
    return names


def _flow_measures(norms):
    """Verdict, decay rate, horizon and first/last ratio of norms in processing order."""
    return {"verdict": verdict(norms), "decay_rate": decay_rate(norms), "horizon": horizon(norms),
            "ratio_first_last": float(norms[0] / norms[-1]) if norms[-1] > 0 else None}
