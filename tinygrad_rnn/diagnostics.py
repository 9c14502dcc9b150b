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

from . import ops
from .errors import DataError, NonFiniteError, UserCodeError
from .tape import no_grad
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
    of the total derivative through later steps and upper layers. ``which=1``
    gives ||dL/dc_t|| for LSTM-like cells; ``lengths`` goes to the RNN (right-padded
    sequences). Parameter gradients are left as they were.
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
    return {name: (float(np.sqrt((p.grad.numpy().astype(np.float64) ** 2).sum()))
                   if p.grad is not None else math.nan)
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


def _layer_inputs(rnn, x, state):
    """(input sequence, initial state, cell) seen by each layer and direction, in the
    order of the final states (no tape; a reverse direction's input is reversed in time)."""
    seen = []
    with no_grad():
        x = ops.tensor(x).astype(rnn.dtype)
        rnn._layers(x, rnn._initial_state(state, x.shape[1], x.device), None, seen=seen)
    return seen


def _check_output(rnn, out):
    """Gradient norms of a NaN output mean nothing: say where the cell first went non-finite."""
    data = out.numpy()
    if not np.isfinite(data).all():
        t = int(np.argwhere(~np.isfinite(data))[0][0])
        raise NonFiniteError(f"cell {rnn.cell_class.name!r} produces a non-finite output "
                             f"({data[t][~np.isfinite(data[t])][0]}) at time step {t}: its gradients cannot "
                             "be measured (check its step, --init and --hidden)")


def _off_tape(cell):
    """The error for a cell whose new state does not depend on its previous state through
    Tensor ops (its step left the tape), with where the compiler's trace saw it leave."""
    from .compiler import compile_status
    from .plugins import provider_of
    _, why = compile_status(type(cell), **getattr(cell, "_init_options", {}))
    why = why.replace("; keep step in Tensor ops", "")
    return UserCodeError(f"cell {type(cell).name!r} (plugin {provider_of(type(cell))!r}): its new state does not "
                         "depend on the previous state through Tensor ops, so no gradient flows through time"
                         f"{f' ({why})' if why else ''}; keep step in Tensor ops")


def step_jacobian_norms(rnn, x, state=None, layer=0, sample=0):
    """Spectral norm of the step Jacobian d s_t / d s_{t-1} along one sequence's trajectory.

    ``s`` is the full state (h, or (h, c) concatenated). Each Jacobian is built exactly
    with one vector-Jacobian product on a batch of D = num_states * hidden copies,
    each with a one-hot cotangent; its largest singular value is returned. Array (T,),
    in the cell's processing order. ``layer`` counts in the order of the final states
    (for a bidirectional RNN: 0 is layer 0 forward, 1 layer 0 reverse, ...).
    """
    xs, s0, cell = _layer_inputs(rnn, x, state)[layer]
    S, H = cell.num_states, cell.hidden_size
    D = S * H
    states = tuple(Tensor(s.numpy()[sample:sample + 1]) for s in s0)
    eye = np.eye(D, dtype=rnn.dtype)
    norms = np.zeros(xs.shape[0])
    for t in range(xs.shape[0]):
        x_t = Tensor(np.repeat(xs.numpy()[t, sample:sample + 1], D, axis=0))
        inputs = tuple(Tensor(np.repeat(s.numpy(), D, axis=0), requires_grad=True) for s in states)
        out = cell.checked_step(x_t, inputs, t)
        total = sum((o * Tensor(eye[:, i * H:(i + 1) * H])).sum() for i, o in enumerate(out))
        params = cell.parameters()
        if not total.requires_grad:
            raise _off_tape(cell)
        saved = _saved_grads(params)
        total.backward()
        _restore_grads(params, saved)
        if any(s.grad is None for s in inputs):
            raise _off_tape(cell)
        J = np.concatenate([s.grad.numpy() for s in inputs], axis=1)  # row k: d out_k / d state
        if not np.isfinite(J).all():
            raise NonFiniteError(f"cell {rnn.cell_class.name!r}: the step Jacobian at time step {t} (layer {layer}) "
                                 "is not finite (the cell produces NaN or Inf there)")
        norms[t] = np.linalg.norm(J.astype(np.float64), 2)
        states = tuple(Tensor(o.numpy()[:1]) for o in out)
    return norms


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


def gate_saturation(rnn, x, state=None):
    """For gated cells: share of gates (sigmoid outputs, found in the compiled graph)
    below 0.05 or above 0.95, and of tanh outputs beyond +-0.95, over all layers, steps
    and units. None for cells without sigmoid gates or that do not compile."""
    from .compiler import CompileError, step_values
    sig, tanh, n_sig, n_tanh = 0, 0, 0, 0
    for xs, s0, cell in _layer_inputs(rnn, x, state):
        try:
            found = step_values(cell, xs, s0)
        except CompileError:
            return None
        for s in found["sigmoid"]:
            sig += int(((s < 0.05) | (s > 0.95)).sum())
            n_sig += s.size
        for th in found["tanh"]:
            tanh += int((np.abs(th) > 0.95).sum())
            n_tanh += th.size
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


def diagnose_cell(model, task, x, y):
    """Every measure for one model on one batch: a JSON-able dict."""
    rnn = model.rnn
    _check_finite(x)
    lengths = task.lengths(y)  # classify: right-padded sequences
    loss_fn = lambda out: task.loss(model.readout(out, lengths), y)  # noqa: E731
    params = model.parameters()
    saved = _saved_grads(params)
    try:
        out, _ = rnn(x, _tracked_state(rnn, x), lengths=lengths, probe=True)
        _check_output(rnn, out)
        loss_fn(out).backward()
        norms = rnn.step_grad_norms(0)
        c_norms = rnn.step_grad_norms(1) if rnn.num_states > 1 else None
        pnorms = param_grad_norms(model)
    finally:
        _restore_grads(params, saved)
    D = rnn.num_directions
    first_layer = norms[0]
    # Per-sample measures run on the CPU: they are small and read single sequences.
    host_rnn, host_x = rnn.cpu_copy(), Tensor(x.numpy() if isinstance(x, Tensor) else x)
    jac = step_jacobian_norms(host_rnn, host_x)
    result = {
        **_flow_measures(first_layer),
        "grad_norm_per_step": norms[::D].tolist(),
        "jacobian_spectral_norm": {"mean": float(jac.mean()), "max": float(jac.max()),
                                   "per_step": jac.tolist()},
        "recurrent_spectral_radius": recurrent_spectral_radius(host_rnn),
        "gate_saturation": gate_saturation(host_rnn, host_x),
        "param_grad_norms": pnorms,
    }
    if c_norms is not None:
        result["c_grad_norm_per_step"] = c_norms[::D].tolist()
    if D == 2:  # the reverse direction, per step in time order; its measures read it backwards
        result["grad_norm_per_step_reverse"] = norms[1::2].tolist()
        if c_norms is not None:
            result["c_grad_norm_per_step_reverse"] = c_norms[1::2].tolist()
        result["reverse"] = _flow_measures(norms[1][::-1])
    return result


def _flow_measures(norms):
    """Verdict, decay rate, horizon and first/last ratio of norms in processing order."""
    return {"verdict": verdict(norms), "decay_rate": decay_rate(norms), "horizon": horizon(norms),
            "ratio_first_last": float(norms[0] / norms[-1]) if norms[-1] > 0 else None}
