"""tinygrad-rnn: train recurrent cells and look at their gradients.

Thin on purpose: parse options, call the library, print. User mistakes end in one
line on stderr: exit 2 for usage errors, 1 for everything else, never a traceback.
Any exception that is not a ``tr.Error`` is a bug: its traceback is shown with a
request to report it. ``--traceback`` (or ``TINYGRAD_RNN_DEBUG=1``) shows every traceback.
"""
import contextlib
import json
import math
import os
import sys
import traceback

import click

import tinygrad_rnn as tr
from tinygrad_rnn import checkpoint, limits, plugins, safeio
from tinygrad_rnn import training
from tinygrad_rnn.cell_options import parse_cell_options
from tinygrad_rnn.compiler import CompileError, compile_status, inspect_cell
from tinygrad_rnn.notices import compile_notice

FAIL_ON_EXIT = 3
BUG_NOTE = ("This is a bug in tinygrad-rnn (or in a plugin it loaded), not a mistake of yours: "
            "please report it with the command line and the traceback above.")


class App(click.Group):
    """Turns ``tr.Error`` into a one-line message; anything else is a bug, shown in full."""

    def invoke(self, ctx):
        debug = ctx.params.get("show_traceback") or os.environ.get("TINYGRAD_RNN_DEBUG") == "1"
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except training.TrainingInterrupted as e:  # Ctrl-C, asked for: what was kept, not an error
            if debug:
                traceback.print_exc()
            click.echo(_one_line(e), err=True)
            ctx.exit(1)
        except tr.Error as e:
            if debug:
                traceback.print_exc()
                ctx.exit(1)
            raise click.ClickException(_one_line(e)) from None
        except MemoryError:
            if debug:
                traceback.print_exc()
            raise click.ClickException("out of memory: use smaller sizes (--hidden, --batch, --seq-len)") from None
        except Exception:
            traceback.print_exc()
            click.echo(BUG_NOTE, err=True)
            ctx.exit(1)


def _one_line(e):
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def _emit(data, as_json, human):
    """Print ``data`` as one valid JSON document (NaN and Infinity become null, and the
    ``nonfinite`` key lists where), or through ``human``."""
    if as_json:
        found = []
        safe = safeio.json_safe(data, found=found)
        if found and isinstance(safe, dict):
            safe["nonfinite"] = found
        click.echo(json.dumps(safe, indent=2, allow_nan=False))
    else:
        human(data)


def _complete(kind):
    """Shell completion of registered cell or task names."""
    def complete(ctx, param, incomplete):
        try:
            rows = tr.list_cells() if kind == "cell" else tr.list_tasks()
        except Exception:  # completion must never print a traceback into the shell
            return []
        names = sorted({n for r in rows for n in [r["name"], *r["aliases"]]})
        return [n for n in names if n.startswith(incomplete.lower())]
    return complete


class _ListsRegistry(click.Command):
    """A command whose --help ends with the registered cells and tasks (plugins included)."""

    def format_epilog(self, ctx, formatter):
        super().format_epilog(ctx, formatter)
        try:
            cells, task_rows = tr.list_cells(), tr.list_tasks()
        except tr.Error:
            return
        for title, rows in (("Registered cells", cells), ("Registered tasks", task_rows)):
            with formatter.section(title):
                formatter.write_dl([(r["name"], r["doc"]) for r in rows])


def _known(kind):
    def check(ctx, param, value):
        if value is None:
            return value
        lookup = tr.get_cell if kind == "cell" else tr.get_task
        for v in (value if isinstance(value, tuple) else (value,)):
            try:
                lookup(v)
            except KeyError as e:
                raise click.BadParameter(e.args[0]) from None
        return value
    return check


# Reusable by every command that builds a cell; parse with _cell_options once the cell is known.
cell_option = click.option(
    "--cell-option", "cell_option_pairs", multiple=True, metavar="KEY=VALUE",
    help="Cell constructor option, e.g. nonlinearity=relu (repeatable); typed and checked against the cell.")


def _resumed_cell(ctx, cell, resume):
    """The cell --cell-option is checked against: the checkpoint's when resuming without --cell."""
    from click.core import ParameterSource
    if resume and ctx.get_parameter_source("cell") is ParameterSource.DEFAULT:
        try:
            return checkpoint.load(resume)[0]["config"]["cell"]
        except Exception:  # noqa: BLE001 (a bad checkpoint is reported by train itself)
            pass
    return cell


def _cell_options(cells, pairs):
    """The --cell-option pairs as a dict, checked against each of ``cells`` (a usage error if not)."""
    options = {}
    for cell in (cells if isinstance(cells, (tuple, list)) else (cells,)):
        try:
            options = parse_cell_options(cell, pairs)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--cell-option") from None
    return options


class FilePath(click.Path):
    """A file path (never a folder) that is not empty: ``--save ""`` is a usage error, not
    an option silently left out."""

    def __init__(self, **kwargs):
        super().__init__(dir_okay=False, **kwargs)

    def convert(self, value, param, ctx):
        if isinstance(value, str) and not value.strip():
            self.fail("the path is empty; give a file name", param, ctx)
        return super().convert(value, param, ctx)


class PlotPath(FilePath):
    """An image path whose extension names a format matplotlib writes, checked before the
    work the plot is made of (not by savefig, after it)."""

    def convert(self, value, param, ctx):
        value = super().convert(value, param, ctx)
        try:
            from matplotlib.backend_bases import FigureCanvasBase
        except ImportError:
            return value  # the command says that --plot needs matplotlib
        formats = sorted(FigureCanvasBase.get_supported_filetypes())
        ext = os.path.splitext(value)[1][1:].lower()
        if ext not in formats:
            why = f"matplotlib cannot write {ext!r} files" if ext else "the name has no extension"
            self.fail(f"{value!r}: {why}; end it in .png, .svg or .pdf (or one of {', '.join(formats)})",
                      param, ctx)
        return value


class Number(click.FloatRange):
    """A float in a range that is a number: click's range lets NaN through (every comparison
    with it is false), and the library would then refuse it with exit 1, not 2."""

    def convert(self, value, param, ctx):
        rv = super().convert(value, param, ctx)
        if math.isnan(rv):
            self.fail(f"{value!r} is not a number", param, ctx)
        return rv


def _device(ctx, param, value):
    if value == "cuda":
        from tinygrad_rnn.backend import cuda_available
        ok, why = cuda_available()
        if not ok:
            raise click.BadParameter(f"no CUDA GPU is available ({why}); use --device cpu")
    return value


@click.group(cls=App, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(tr.__version__, prog_name="tinygrad-rnn")
@click.option("--plugin", "plugin_specs", multiple=True, metavar="PATH_OR_MODULE",
              help="Load a cell/task plugin (a module name or a .py file). Repeatable.")
@click.option("--traceback", "show_traceback", is_flag=True,
              help="Show the full traceback of any error (also: TINYGRAD_RNN_DEBUG=1).")
def main(plugin_specs, show_traceback):
    """A small lab for recurrent networks: cells, training and gradient diagnostics.

    Start with `tinygrad-rnn diagnose`: rnn, lstm and gru on the adding task.
    """
    for spec in plugin_specs:
        tr.load_plugin(spec)
    if plugin_specs:
        plugins._manager()  # load now, so a broken explicit plugin fails before the command


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def cells(as_json):
    """List the registered cells and the plugin that provided each."""
    def human(rows):
        click.echo(f"{'CELL':16} {'PLUGIN':28} DESCRIPTION")
        for r in rows:
            alias = f" (aliases: {', '.join(r['aliases'])})" if r["aliases"] else ""
            compiled = "compiled" if r["compiles"] else "step"
            click.echo(f"{r['name']:16} {r['plugin']:28} {compiled:9} {r['doc']}{alias}")
            if not r["compiles"]:
                click.echo(f"{'':16} not compiled: {r['compile_error']}")
    rows = tr.list_cells()
    for r in rows:
        r["compiles"], r["compile_error"] = compile_status(tr.get_cell(r["name"]))
    _emit(rows, as_json, human)


@main.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def plugins_cmd(as_json):
    """List the loaded plugins, their distribution and status."""
    def human(rows):
        click.echo(f"{'PLUGIN':28} {'SOURCE':12} {'DISTRIBUTION':24} {'STATUS':8} PROVIDES")
        for r in rows:
            provided = ", ".join(r["cells"] + r["tasks"]) or "-"
            click.echo(f"{r['name']:28} {r['source']:12} {r['distribution'] or '-':24} {r['status']:8} {provided}")
    _emit(plugins.list_plugins(), as_json, human)


@main.command("compile")
@click.option("--cell", required=True, callback=_known("cell"), help="Registered cell name.")
@click.option("--input-size", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--hidden", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--dtype", type=click.Choice(["float32", "float64"]), default="float32", show_default=True)
@click.option("--source-only", is_flag=True, help="Print only the generated Python source.")
@click.option("--target", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="Which kernels to show: numba.njit for the CPU, or numba.cuda (no GPU needed to read them).")
@cell_option
def compile_cmd(cell, input_size, hidden, dtype, source_only, target, cell_option_pairs):
    """Show what the cell compiler makes of a cell: its traced step, the plan, and the
    generated Numba source (also cached on disk, path printed)."""
    model = tr.nn.RNN(cell, input_size, hidden, dtype=dtype, **_cell_options(cell, cell_option_pairs))
    try:
        graph, summary, source, path = inspect_cell(model.cells[0], dtype, target)
    except CompileError as e:
        raise click.ClickException(f"{e} (the cell still runs, on the step path)")
    if source_only:
        click.echo(source)
        return
    click.echo(f"# traced step of {cell!r} (input {input_size}, hidden {hidden}, {dtype})\n{graph}\n")
    click.echo(f"# plan\n{summary}\n")
    click.echo(f"# generated source ({path})\n{source}")


@main.command()
@click.option("--cell", required=True, callback=_known("cell"), shell_complete=_complete("cell"),
              help="Registered cell name.")
@click.option("--seq-len", type=click.IntRange(min=1), default=4, show_default=True,
              help="Time steps the gradients are checked through.")
@click.option("--hidden", type=click.IntRange(min=1), default=4, show_default=True, help="Hidden size.")
@cell_option
def gradcheck(cell, seq_len, hidden, cell_option_pairs):
    """Check a cell against the plugin contract with float64 finite differences."""
    with compile_notice():
        report = tr.testing.check_cell(cell, hidden_size=hidden, seq_len=seq_len,
                                       **_cell_options(cell, cell_option_pairs))
    click.echo(str(report))
    sys.exit(0 if report.ok else 1)


INIT_HELP = ("Re-initialise before training. 'pytorch' (the default) keeps each cell's own init "
             "(PyTorch's for the built-ins; a plugin cell's self.param(init=...)); any other scheme "
             "goes to the recurrent (*hh*) weights, other matrices get xavier_uniform (or the scheme), "
             "vectors zeros.")


@main.command(cls=_ListsRegistry)
@click.option("--cell", "cell_names", multiple=True, callback=_known("cell"), shell_complete=_complete("cell"),
              help="Cell to diagnose (repeatable). Default: rnn, lstm and gru.")
@click.option("--task", default="adding", show_default=True, callback=_known("task"),
              shell_complete=_complete("task"), help="Task whose loss the gradients are taken of.")
@click.option("--data", type=FilePath(), help="Data file for the text and series tasks.")
@click.option("--seq-len", type=click.IntRange(min=2), default=100, show_default=True,
              help="Sequence length T.")
@click.option("--init", "init_scheme", type=click.Choice(training.INIT_SCHEMES), default="pytorch",
              show_default=True, help=INIT_HELP)
@click.option("--steps", type=click.IntRange(min=0), default=0, show_default=True,
              help="Also diagnose after this many Adam steps (lr 1e-3, clip-norm 1).")
@click.option("--hidden", type=click.IntRange(min=1), default=64, show_default=True, help="Hidden size.")
@click.option("--layers", type=click.IntRange(min=1), default=1, show_default=True, help="Stacked layers.")
@click.option("--batch", type=click.IntRange(min=1), default=32, show_default=True,
              help="Sequences in the measured batch.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed for initialisation and data (an integer >= 0).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", callback=_device,
              help="Where the model runs (per-sample measures always run on the CPU).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@click.option("--plot", "plot_path", type=PlotPath(),
              help="Write a PNG of ||dL/dh_t|| against t (needs matplotlib).")
@click.option("--fail-on", default="", metavar="LIST",
              help="Exit 3 if a listed verdict is found, e.g. vanishing,exploding.")
@click.option("--bidirectional", is_flag=True, help="Bidirectional layers: norms for each direction.")
@click.option("--remat", is_flag=True, default=None,
              help="Recompute activations in the backward, about sqrt(T) steps at a time (less memory, "
                   "the same numbers). Default: on when the activations would not fit in memory.")
@click.option("--remat-every", type=click.IntRange(min=1), metavar="K",
              help="Recompute K steps at a time (implies --remat).")
@cell_option
def diagnose(cell_names, task, data, seq_len, init_scheme, steps, hidden, layers, batch, seed, device,
             as_json, plot_path, fail_on, bidirectional, remat, remat_every, cell_option_pairs):
    """Gradient norm per time step for each cell, with a verdict."""
    fail_set = {v.strip() for v in fail_on.split(",") if v.strip()}
    bad = fail_set - {"vanishing", "exploding", "healthy"}
    if bad:
        raise click.BadParameter(f"unknown verdict(s) {sorted(bad)}; use vanishing, exploding", param_hint="--fail-on")
    if plot_path:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise click.ClickException("--plot needs matplotlib: pip install 'tinygrad-rnn[plot]'") from None
        safeio.check_outputs([("--plot", plot_path)], [("--data", data), *plugins.plugin_files()])
    cell_names = cell_names or ("rnn", "lstm", "gru")
    with compile_notice():
        report = tr.report.diagnose(cell_names, task, seq_len, init_scheme, steps, hidden, layers, batch, seed,
                                  device=device, data=data, bidirectional=bidirectional,
                                  cell_options=_cell_options(cell_names, cell_option_pairs),
                                  remat=remat_every or remat)
    if plot_path:
        tr.report.plot(report, plot_path)
    _emit(report, as_json, _print_diagnosis)
    if plot_path and not as_json:
        click.echo(f"plot written to {plot_path}")
    if fail_set & {c[k] for c in report["cells"] for k in ("final_verdict", "final_reverse_verdict") if k in c}:
        sys.exit(FAIL_ON_EXIT)


def _fmt(v, spec=".3g"):
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def _print_diagnosis(report):
    click.echo(tr.report.format_report(report))


@main.command(cls=_ListsRegistry)
@click.option("--cell", default="lstm", show_default=True, callback=_known("cell"), shell_complete=_complete("cell"),
              help="Registered cell name (see below).")
@click.option("--task", default="adding", show_default=True, callback=_known("task"),
              shell_complete=_complete("task"), help="Registered task name (see below).")
@click.option("--data", type=FilePath(), help="Data file for the text and series tasks.")
@click.option("--seq-len", type=click.IntRange(min=2), default=100, show_default=True,
              help="Sequence length T of each training example.")
@click.option("--hidden", type=click.IntRange(min=1), default=64, show_default=True, help="Hidden size.")
@click.option("--layers", type=click.IntRange(min=1), default=1, show_default=True, help="Stacked layers.")
@click.option("--batch", type=click.IntRange(min=1), default=32, show_default=True, help="Sequences per step.")
@click.option("--steps", type=click.IntRange(min=0), default=1000, show_default=True,
              help="Total steps; a resumed run continues up to it.")
@click.option("--optimizer", type=click.Choice(["sgd", "adam", "rmsprop"]), default="adam", show_default=True,
              help="Optimiser.")
@click.option("--lr", type=Number(min=0, min_open=True, max=1e6), default=1e-3, show_default=True,
              help="Learning rate (> 0).")
@click.option("--clip-norm", type=Number(min=0, max=1e12), default=None,
              help="Scale gradients down to this global L2 norm.")
@click.option("--clip-value", type=Number(min=0, max=1e12), default=None,
              help="Clamp every gradient element into [-X, X].")
@click.option("--init", "init_scheme", type=click.Choice(training.INIT_SCHEMES), default="pytorch",
              show_default=True, help=INIT_HELP)
@click.option("--weight-decay", type=Number(min=0, max=1e6), default=0.0, help="L2 penalty.")
@click.option("--l1", type=Number(min=0, max=1e6), default=0.0, help="L1 penalty.")
@click.option("--bptt", type=click.IntRange(min=1), default=None, help="Truncated BPTT chunk length (text, series).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed for initialisation and batches (an integer >= 0).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", callback=_device,
              help="Where the model trains.")
@click.option("--save", type=FilePath(),
              help="Write a checkpoint here at the end (it may replace a checkpoint, never another file).")
@click.option("--resume", type=FilePath(),
              help="Continue this checkpoint's run (its model, task and settings) up to --steps.")
@click.option("--log", type=FilePath(),
              help="Append JSON Lines records here (a resumed run first drops the records past its step).")
@click.option("--log-every", type=click.IntRange(min=1), default=50, show_default=True,
              help="Steps between --log records.")
@click.option("--diagnose-every", type=click.IntRange(min=1), default=None,
              help="Also log per-step and per-parameter gradient norms every N steps.")
@click.option("--on-nonfinite", type=click.Choice(["error", "skip"]), default="error", show_default=True,
              help="On a NaN/Inf loss or gradient: stop naming the step, or skip the update.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@cell_option
@click.option("--bidirectional", is_flag=True, help="Bidirectional layers (not for next-step tasks).")
@click.option("--dropout", type=Number(min=0, max=1, max_open=True), default=0.0,
              help="Dropout on the input of every layer but the first (training only).")
@click.option("--embed", type=click.IntRange(min=1), default=None, metavar="DIM",
              help="Learn a DIM-wide embedding of the input tokens instead of one-hot (text).")
@click.option("--remat", is_flag=True, default=None,
              help="Recompute activations in the backward, about sqrt(T) steps at a time (less memory, "
                   "the same gradients). Default: on when the activations would not fit in memory.")
@click.option("--remat-every", type=click.IntRange(min=1), metavar="K",
              help="Recompute K steps at a time (implies --remat).")
@click.option("--lr-schedule", type=click.Choice(list(tr.optim.SCHEDULES)), default="constant", show_default=True,
              help="Learning-rate schedule (PyTorch's StepLR, CosineAnnealingLR, ReduceLROnPlateau).")
@click.option("--warmup", type=click.IntRange(min=0), default=0, metavar="N",
              help="Ramp the learning rate up linearly over the first N steps.")
@click.option("--lr-step-size", type=click.IntRange(min=1), default=None, metavar="N",
              help="step schedule: every N steps (default: a third of the steps after warmup).")
@click.option("--lr-gamma", type=Number(min=0, max=1, min_open=True), default=0.1, show_default=True,
              help="step and plateau schedules: the factor the rate is multiplied by.")
@click.option("--lr-patience", type=click.IntRange(min=0), default=10, show_default=True,
              help="plateau schedule: evaluations without improvement before lowering the rate.")
@click.option("--eval-every", type=click.IntRange(min=1), default=None, metavar="N",
              help="Measure the eval loss every N steps (log and progress).")
@click.option("--patience", type=click.IntRange(min=1), default=None, metavar="K",
              help="Stop when the eval loss has not improved for K evaluations; keep the best model.")
@click.option("--save-every", type=click.IntRange(min=1), default=None, metavar="N",
              help="Also write the --save checkpoint every N steps.")
@click.option("--dtype", type=click.Choice(["float32", "float64"]), default="float32", show_default=True,
              help="Floating-point precision of the model and its training.")
@click.option("--distributed", is_flag=True,
              help="Data-parallel over MPI: run under `mpiexec -n N` (pip install 'tinygrad-rnn[mpi]').")
@click.option("--progress/--no-progress", default=None,
              help="Show a progress bar on stderr. Default: when stderr is a terminal.")
@click.pass_context
def train(ctx, cell, task, data, seq_len, hidden, layers, batch, steps, optimizer, lr, clip_norm, clip_value,
          init_scheme, weight_decay, l1, bptt, seed, device, save, resume, log, log_every, diagnose_every,
          on_nonfinite, as_json, cell_option_pairs, bidirectional, dropout, embed, lr_schedule, warmup,
          lr_step_size, lr_gamma, lr_patience, eval_every, patience, save_every, dtype, distributed, progress,
          remat, remat_every):
    """Train a cell on a sequence task."""
    run = training.train
    if distributed:
        from tinygrad_rnn.distributed import mpi
        run = mpi.train  # every rank trains; rank 0 alone logs, saves and prints
    show = sys.stderr.isatty() if progress is None else progress
    with _progress_bar(show, steps) as on_step, compile_notice():
        summary = run(
            cell=cell, task=task, seq_len=seq_len, data=data, hidden=hidden, layers=layers, batch=batch,
            steps=steps, optimizer=optimizer, lr=lr, clip_norm=clip_norm, clip_value=clip_value,
            init_scheme=init_scheme, weight_decay=weight_decay, l1=l1, bptt=bptt, seed=seed, device=device,
            save=save, resume=resume, log=log, log_every=log_every, on_nonfinite=on_nonfinite,
            progress=on_step, diagnose_every=diagnose_every, explicit=_explicit(ctx), dtype=dtype,
            cell_options=_cell_options(_resumed_cell(ctx, cell, resume), cell_option_pairs),
            bidirectional=bidirectional, dropout=dropout,
            embed=embed, lr_schedule=lr_schedule, warmup=warmup, lr_step_size=lr_step_size, lr_gamma=lr_gamma,
            lr_patience=lr_patience, eval_every=eval_every, patience=patience, save_every=save_every,
            remat=remat_every or remat)
    if summary is None:
        return  # an MPI rank other than 0: rank 0 prints

    start, ran = summary.get("start_step", 0), summary.get("steps_run", summary["steps"])
    if resume and not save and ran:
        click.echo(f"note: without --save the {ran} step(s) run now are not saved ({resume} is unchanged, "
                   f"at step {start}); add --save PATH to keep them", err=True)

    def human(s):
        done = f"steps {start + 1}-{start + ran} of {s['steps']}" if start else f"{ran} steps"
        if start and not ran:
            done = f"no steps (the checkpoint is already at step {start} of {s['steps']})"
        click.echo(f"{s['cell']} on {s['task']} (T={s['seq_len']}, hidden {s['hidden']}): "
                   f"{done} in {s['seconds']:.1f} s ({s['steps_per_second']:.1f} steps/s)")
        click.echo(f"train loss {_fmt(s['train_loss'], '.4f')}  eval loss {_fmt(s['eval_loss'], '.4f')}  "
                   f"baseline {s['baseline_loss']:.4f}" +
                   (f"  ({s['eval_bits_per_symbol']:.3f} bits/symbol)" if "eval_bits_per_symbol" in s else ""))
        if s.get("stopped_early"):
            click.echo(f"stopped early at step {s['stopped_at']}: no better eval loss since step {s['best_step']}")
        if s.get("best_step") is not None:
            click.echo(f"best eval loss {s['best_eval_loss']:.4f} at step {s['best_step']}")
        if s.get("skipped_steps"):
            click.echo(f"skipped {s['skipped_steps']} step(s) with a non-finite loss or gradient (--on-nonfinite skip)")
        if save:
            click.echo(f"checkpoint written to {save}")
    _emit(summary, as_json, human)


def _explicit(ctx):
    """The options given on the command line or in the environment (not defaults)."""
    from click.core import ParameterSource
    return {name for name in ctx.params
            if ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)}


@contextlib.contextmanager
def _progress_bar(show, total):
    """A ``progress(step, steps, loss, grad_norm)`` callback for training, or None.

    On a terminal: click's progress bar. Asked for (--progress) on something else: a
    plain line about every 5 % of the run, which reads well in a log file."""
    if not show or total == 0:
        yield None
    elif sys.stderr.isatty():
        with click.progressbar(length=total, label="training", file=sys.stderr, show_pos=True,
                               item_show_func=lambda s: s) as bar:
            def update(step, steps, loss, norm, note=""):
                bar.update(step - bar.pos, f"loss {loss:.4f}  |g| {norm:.3g}{note}")
            yield update
    else:
        every = max(1, total // 20)

        def update(step, steps, loss, norm, note=""):
            if step % every == 0 or step == steps:
                click.echo(f"step {step}/{steps}  loss {loss:.4f}  |g| {norm:.3g}{note}", err=True)
        yield update


def _grid_values(ctx, param, value):
    from tinygrad_rnn.distributed import sweep as sweep_mod
    try:
        return sweep_mod.parse_values(param.name, value)
    except ValueError as e:
        raise click.BadParameter(str(e).split(": ", 1)[1]) from None


@main.command()
@click.option("--cell", multiple=True, callback=_grid_values,
              help="Cells (repeatable or a,b,c). Default: rnn,lstm,gru.")
@click.option("--task", multiple=True, callback=_grid_values, help="Tasks. Default: adding.")
@click.option("--seq-len", multiple=True, callback=_grid_values, help="Sequence lengths. Default: 100.")
@click.option("--hidden", multiple=True, callback=_grid_values, help="Hidden sizes. Default: 64.")
@click.option("--init", multiple=True, callback=_grid_values, help="Init schemes. Default: pytorch.")
@click.option("--lr", multiple=True, callback=_grid_values, help="Learning rates. Default: 1e-3.")
@click.option("--optimizer", multiple=True, callback=_grid_values, help="Optimizers (train). Default: adam.")
@click.option("--clip-norm", multiple=True, callback=_grid_values,
              help="Gradient-norm clips, or none. Default: none (train), 1 (diagnose).")
@click.option("--seeds", type=click.IntRange(min=1), default=1, show_default=True, help="Seeds 0 .. N-1 per point.")
@click.option("--steps", type=click.IntRange(min=0), default=None,
              help="Steps per point. Default: 1000 (train), 0 (diagnose).")
@click.option("--batch", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--mode", type=click.Choice(["train", "diagnose"]), default="train", show_default=True)
@click.option("--out", required=True, type=FilePath(),
              help="JSON Lines results, one per point; a re-run skips the points already in it.")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Local cluster size. Default: the CPU count.")
@click.option("--scheduler", metavar="ADDRESS|FILE",
              help="Run on an existing Dask cluster: tcp://host:port or a scheduler file.")
@click.option("--plot", "plot_path", type=PlotPath(),
              help="Heatmap over seq_len x cell (needs matplotlib).")
@cell_option
@click.pass_context
def sweep(ctx, cell, task, seq_len, hidden, init, lr, optimizer, clip_norm, seeds, steps, batch, mode, out,
          workers, scheduler, plot_path, cell_option_pairs):
    """Run a grid of train or diagnose runs on Dask, one task per point."""
    from tinygrad_rnn.distributed import sweep as sweep_mod
    if workers and scheduler:
        raise click.BadParameter("--workers sizes a local cluster; drop it with --scheduler", param_hint="--workers")
    cell_options = _cell_options(list(cell or ("rnn", "lstm", "gru")), cell_option_pairs)
    try:
        points = sweep_mod.grid(mode, seeds, steps, batch, cell_options=cell_options, cell=cell, task=task,
                                seq_len=seq_len, hidden=hidden, init=init, lr=lr, optimizer=optimizer,
                                clip_norm=clip_norm)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    if plot_path:
        sweep_mod.pyplot()  # fail before the sweep, not after it
    records, stats = sweep_mod.run(points, out, workers, scheduler, ctx.find_root().params["plugin_specs"],
                                   log=lambda msg: click.echo(msg, err=True))
    for line in sweep_mod.table(records):
        click.echo(line)
    errors = f" ({stats['errors']} ended in an error)" if stats["errors"] else ""
    click.echo(f"{stats['ran']} run{errors}, {stats['skipped']} already done, {stats['failed']} not run, in "
               f"{stats['seconds']:.1f} s; kernels compiled: {stats['compiled_warm_up']} in warm-up, "
               f"{stats['compiled_tasks']} in tasks; results in {out}", err=True)
    if plot_path:
        sweep_mod.plot(records, plot_path)
        click.echo(f"plot written to {plot_path}", err=True)
    if stats["failed"]:
        sys.exit(1)


@main.command()
@click.option("--checkpoint", "path", required=True, type=FilePath())
@click.option("--prime", default="", help="Text to start from.")
@click.option("--length", type=click.IntRange(min=0, max=limits.MAX_GENERATE_LENGTH), default=200,
              show_default=True, help="Characters to generate after the prime.")
@click.option("--temperature", type=Number(min=0, min_open=True, max=100), default=1.0, show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
def generate(path, prime, length, temperature, seed):
    """Sample text from a character-model checkpoint."""
    with compile_notice():
        text = training.generate(path, prime, length, temperature, seed)
    click.echo(text)


if __name__ == "__main__":
    main()
