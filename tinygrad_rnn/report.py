"""``tinygrad-rnn diagnose`` from Python: build each cell's model on a task, measure its
gradient flow (``diagnostics``) at initialisation and after some training (``training``),
and collect the measurements into one JSON-able report; ``plot`` draws it.
"""
import math

import numpy as np

from . import diagnostics, options
from .errors import DependencyError, Error
from .plugins import get_task, raise_if_user_code
from .tensor import Tensor
from .training import TrainConfig, build, check_seq_len, fit, remat_options


# diagnose recomputes the activations (remat) when keeping them would take more than this:
# about 12 float64 values per row, unit and step for an LSTM or GRU (the kernels' residuals
# and the hoisted input products). T = 1000, hidden 64, batch 32 (196 MB) keeps them.
LEAN_ABOVE = 256 * 2 ** 20


def diagnose(cells=("rnn", "lstm", "gru"), task="adding", seq_len=100, init_scheme="pytorch", steps=0, hidden=64,
             layers=1, batch=32, seed=0, lr=1e-3, clip_norm=1.0, device="cpu", data=None, bidirectional=False,
             cell_options=None, remat=None, weights=None, jacobian_max_steps=diagnostics.JACOBIAN_MAX_STEPS):
    """Compare cells' gradient flow on a task, at initialisation and after ``steps`` of training.

    Measured in float64; per-step norms are exact down to the smallest representable
    gradient (they are never 0.0 unless the gradient is exactly zero) and come with their
    log10. Returns a ``Report``: a dict ``{"task", "seq_len", ..., "cells": [{"cell",
    "verdict", "grad_norm_per_step", ...}]}`` that prints as ``tinygrad-rnn diagnose``'s
    table (``print(report)``). Every state beyond the output is reported under the cell's
    ``state_names`` (``c_grad_norm_per_step`` for an LSTM). With ``bidirectional``, each
    cell also has ``grad_norm_per_step_reverse`` (time order) and ``reverse`` (the reverse
    direction's verdict and measures, read from t = T-1 down to 0, its processing order).
    ``cell_options`` go to every cell's constructor. ``remat`` as ``tr.nn.RNN``'s (None:
    switched on, with a note on stderr, when the activations would not fit otherwise).
    ``weights``: a safetensors file of trained weights (PyTorch's names) to start from.
    Step-Jacobian spectra measure at most ``jacobian_max_steps`` steps, evenly spaced.
    """
    kwargs = dict(cells=cells, task=task, seq_len=seq_len, init_scheme=init_scheme, steps=steps, hidden=hidden,
                  layers=layers, batch=batch, seed=seed, lr=lr, clip_norm=clip_norm, device=device, data=data,
                  bidirectional=bidirectional, cell_options=cell_options, remat=remat, weights=weights,
                  jacobian_max_steps=jacobian_max_steps)
    try:
        return Report(_diagnose(**kwargs))
    except Exception as e:
        if not isinstance(e, Error):
            raise_if_user_code(e, "task", get_task(task), "while diagnosing")
        raise


def _diagnose(cells=("rnn", "lstm", "gru"), task="adding", seq_len=100, init_scheme="pytorch",
              steps=0, hidden=64, layers=1, batch=32, seed=0, lr=1e-3, clip_norm=1.0, device="cpu", data=None,
              bidirectional=False, cell_options=None, remat=None, weights=None,
              jacobian_max_steps=diagnostics.JACOBIAN_MAX_STEPS):
    """``diagnose`` itself; the wrapper names plugin code that raises."""
    cell_options = cell_options or {}
    if remat is None and seq_len * batch * hidden * layers * (2 if bidirectional else 1) * 8 * 12 > LEAN_ABOVE:
        remat = True  # the kernels' values for every step would pass LEAN_ABOVE: keep only the states
    report = {"task": task, "seq_len": seq_len, "hidden": hidden, "layers": layers, "init": init_scheme,
              "steps": steps, "seed": seed, "batch": batch, "bidirectional": bool(bidirectional),
              "cell_options": cell_options, "thresholds": diagnostics.THRESHOLDS, "cells": []}
    for cell in cells:
        run = TrainConfig(cell=cell, task=task, seq_len=seq_len, data=data, hidden=hidden, layers=layers,
                          batch=batch, steps=steps, optimizer="adam", lr=lr, clip_norm=clip_norm,
                          init_scheme=init_scheme, seed=seed, device=device, dtype="float64",
                          bidirectional=bidirectional, cell_options=cell_options, weights=weights,
                          **remat_options(remat))
        task_obj, model = build(run.settings(), remat)  # the model at initialisation: what fit(run) starts from
        if seq_len != options.BY_NAME["seq_len"].default:  # chosen (a default cannot be told apart)
            check_seq_len(task_obj, seq_len)
        report["seq_len"] = task_obj.seq_len  # classify: the data file's T
        x, y = task_obj.batch(np.random.default_rng(seed + 1), batch)
        entry = {"cell": cell, **diagnostics.diagnose_cell(model, task_obj, Tensor(x, device=device), y,
                                                           jacobian_max_steps)}
        if steps:
            trained = fit(run)
            summary, model = trained.summary, trained.model
            after = diagnostics.diagnose_cell(model, task_obj, Tensor(x, device=device), y, jacobian_max_steps)
            after.update(train_loss=summary["train_loss"], eval_loss=summary["eval_loss"])
            entry["after_training"] = after
            final = after
        else:
            final = entry
        entry["final_verdict"] = final["verdict"]
        if bidirectional:
            entry["final_reverse_verdict"] = final["reverse"]["verdict"]
        report["cells"].append(entry)
    return report


class Report(dict):
    """What ``diagnose`` returns: a JSON-able dict that prints as the CLI's table."""

    def __str__(self):
        return format_report(self)

    def format(self):
        """The table and sparklines as text (``str(report)``)."""
        return format_report(self)


def _fmt(v, spec=".3g"):
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def _init_label(scheme):
    """What --init did, in the words of its help: the default keeps each cell's own init."""
    if scheme == "pytorch":
        return "pytorch (each cell's own: PyTorch's for the built-ins)"
    matrices = "xavier_uniform" if scheme in ("identity", "orthogonal") else scheme
    return f"{scheme} (on *hh* weights; other matrices {matrices}, vectors 0)"


def format_report(report):
    """``tinygrad-rnn diagnose``'s table and sparklines for a report (what ``str(report)`` gives)."""
    lines = []
    lines.append(f"task {report['task']}, T={report['seq_len']}, hidden {report['hidden']}, "
                 f"init {_init_label(report['init'])}, batch {report['batch']}; ||dL/dh_t|| of layer 1 (float64)")
    stages = [("init", lambda c: c)] + ([(f"step {report['steps']}", lambda c: c["after_training"])]
                                        if report["steps"] else [])
    losses = bool(report["steps"])  # after training: the losses it reached, next to the measures
    lines.append(f"{'cell':14} {'when':10} {'verdict':10} {'rate/step':>9} {'horizon':>8} "
                 f"{'|g_0|/|g_T|':>11} {'|J| mean':>8} {'gate sat':>8}"
                 + (f" {'train loss':>10} {'eval loss':>10}" if losses else ""))
    for c in report["cells"]:
        for label, get in stages:
            d = get(c)
            sat = d["gate_saturation"]
            lines.append(f"{c['cell']:14} {label:10} {d['verdict']:10} {_fmt(d['decay_rate'], '.3f'):>9} "
                         f"{d['horizon']:>8} {_fmt(d['ratio_first_last'], '.2e'):>11} "
                         f"{_fmt(d['jacobian_spectral_norm']['mean'], '.3f'):>8} "
                         f"{_fmt(sat['sigmoid_saturated'] if sat else None, '.0%'):>8}"
                         + (f" {_fmt(d.get('train_loss'), '.4g'):>10} {_fmt(d.get('eval_loss'), '.4g'):>10}"
                            if losses else ""))
            if "reverse" in d:
                r = d["reverse"]
                lines.append(f"{'  reverse':14} {label:10} {r['verdict']:10} {_fmt(r['decay_rate'], '.3f'):>9} "
                             f"{r['horizon']:>8} {_fmt(r['ratio_first_last'], '.2e'):>11} {'-':>8} {'-':>8}")
    rows = [get(c)[key][0] for c in report["cells"] for _, get in stages
            for key in ("grad_norm_per_step", "grad_norm_per_step_reverse") if key in get(c)]
    scale = diagnostics.sparkline_scale(rows)
    legend = f": ▁ = {10 ** scale[0]:.1e} .. █ = {10 ** scale[1]:.1e}" if scale else ""
    lines.append(f"\n||dL/dh_t|| on one log scale for all rows{legend}, t = 0 (left) .. T (right):")
    for c in report["cells"]:
        for label, get in stages:
            lines.append(f"{c['cell']:>8} {label:>9} "
                         f"{diagnostics.sparkline(get(c)['grad_norm_per_step'][0], scale=scale)}")
            if "grad_norm_per_step_reverse" in get(c):
                lines.append(f"{'reverse':>8} {label:>9} "
                             f"{diagnostics.sparkline(get(c)['grad_norm_per_step_reverse'][0], scale=scale)}")
    if report.get("bidirectional"):
        lines.append("reverse: the reverse direction; its verdict, rate and horizon follow its own order, "
                     "from t = T (its first step) down to 0")
    subsets = {c["cell"]: c["jacobian_spectral_norm"]["measured_steps"] for c in report["cells"]
               if "note" in c["jacobian_spectral_norm"]}
    if subsets:
        lines.append(f"|J| mean: step Jacobians: {min(subsets.values())} of {report['seq_len']} steps measured, "
                     "evenly spaced")
    th = report["thresholds"]
    lines.append(f"\nverdict: vanishing if |g_0|/|g_T| < {th['vanishing_ratio']:g}, exploding if > "
                 f"{th['exploding_ratio']:g}; horizon: steps back with |g_t| >= {th['horizon_fraction']:g} |g_T|")
    return "\n".join(lines)


def plot(report, path):
    """||dL/dh_t|| against t on a log scale, one line per cell (needs matplotlib)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise DependencyError("plotting needs matplotlib: pip install 'tinygrad-rnn[plot]'") from None
    fig, ax = plt.subplots(figsize=(7, 4))
    for entry in report["cells"]:
        norms = np.asarray(entry["grad_norm_per_step"][0])
        line, = ax.semilogy(norms, label=f"{entry['cell']} (init, {entry['verdict']})")
        if "grad_norm_per_step_reverse" in entry:
            ax.semilogy(entry["grad_norm_per_step_reverse"][0], ":", color=line.get_color(),
                        label=f"{entry['cell']} reverse (init, {entry['reverse']['verdict']})")
        if "after_training" in entry:
            ax.semilogy(entry["after_training"]["grad_norm_per_step"][0], "--", color=line.get_color(),
                        label=f"{entry['cell']} (after {report['steps']} steps)")
    ax.set_xlabel("time step t")
    ax.set_ylabel("||dL/dh_t||")
    ax.set_title(f"{report['task']} task, T={report['seq_len']}, init={report['init']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
