"""``tinygrad-rnn diagnose`` from Python: build each cell's model on a task, measure its
gradient flow (``diagnostics``) at initialisation and after some training (``training``),
and collect the measurements into one JSON-able report; ``plot`` draws it.
"""
import numpy as np

from . import diagnostics
from .errors import DependencyError, Error
from .plugins import get_task, raise_if_user_code
from .tensor import Tensor
from .training import TrainConfig, build, fit


def diagnose(*args, **kwargs):
    """Compare cells' gradient flow on a task, at initialisation and after ``steps`` of training.

    Measured in float64, so that norms far below float32's range are still exact.
    Returns ``{"task", "seq_len", ..., "cells": [{"cell", "verdict", "grad_norm_per_step", ...}]}``.
    With ``bidirectional``, each cell also has ``grad_norm_per_step_reverse`` (time order)
    and ``reverse`` (the reverse direction's verdict and measures, read from t = T-1 down
    to 0, its processing order). ``cell_options`` go to every cell's constructor.
    """
    try:
        return _diagnose(*args, **kwargs)
    except Exception as e:
        if not isinstance(e, Error):
            raise_if_user_code(e, "task", get_task(kwargs.get("task", args[1] if len(args) > 1 else "adding")),
                               "while diagnosing")
        raise


def _diagnose(cells=("rnn", "lstm", "gru"), task="adding", seq_len=100, init_scheme="pytorch",
              steps=0, hidden=64, layers=1, batch=32, seed=0, lr=1e-3, clip_norm=1.0, device="cpu", data=None,
              bidirectional=False, cell_options=None, weights=None):
    """``diagnose`` itself; the wrapper names plugin code that raises."""
    cell_options = cell_options or {}
    report = {"task": task, "seq_len": seq_len, "hidden": hidden, "layers": layers, "init": init_scheme,
              "steps": steps, "seed": seed, "batch": batch, "bidirectional": bool(bidirectional),
              "cell_options": cell_options, "thresholds": diagnostics.THRESHOLDS, "cells": []}
    for cell in cells:
        run = TrainConfig(cell=cell, task=task, seq_len=seq_len, data=data, hidden=hidden, layers=layers,
                          batch=batch, steps=steps, optimizer="adam", lr=lr, clip_norm=clip_norm,
                          init_scheme=init_scheme, seed=seed, device=device, dtype="float64",
                          bidirectional=bidirectional, cell_options=cell_options, weights=weights)
        task_obj, model = build(run.settings())  # the model at initialisation: what fit(run) starts from
        x, y = task_obj.batch(np.random.default_rng(seed + 1), batch)
        entry = {"cell": cell, **diagnostics.diagnose_cell(model, task_obj, Tensor(x, device=device), y)}
        if steps:
            trained = fit(run)
            summary, model = trained.summary, trained.model
            after = diagnostics.diagnose_cell(model, task_obj, Tensor(x, device=device), y)
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
