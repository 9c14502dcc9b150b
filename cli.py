"""tinygrad-rnn: train recurrent cells and look at their gradients.

Thin on purpose: parse options, call the library, print. User mistakes end in one
line on stderr: exit 2 for usage errors, 1 for everything else, never a traceback.
"""
import json
import math
import sys

import click

import tinygrad_rnn as tr
from tinygrad_rnn import checkpoint, diagnostics, plugins, tasks
from tinygrad_rnn import training

FAIL_ON_EXIT = 3
USER_ERRORS = (ValueError, KeyError, TypeError, FileNotFoundError, PermissionError, IsADirectoryError,
               RuntimeError, plugins.PluginError, checkpoint.CheckpointError, tasks.TaskError)


class App(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except USER_ERRORS as e:
            msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
            raise click.ClickException(str(msg).splitlines()[0] if msg else type(e).__name__) from None


def _emit(data, as_json, human):
    if as_json:
        click.echo(json.dumps(data, indent=2, default=_jsonable))
    else:
        human(data)


def _jsonable(v):
    if hasattr(v, "tolist"):
        return v.tolist()
    raise TypeError(f"cannot serialise {type(v).__name__}")


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
def main(plugin_specs):
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
        for r in rows:
            alias = f" (aliases: {', '.join(r['aliases'])})" if r["aliases"] else ""
            click.echo(f"{r['name']:16} {r['plugin']:28} {r['doc']}{alias}")
    _emit(tr.list_cells(), as_json, human)


@main.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def plugins_cmd(as_json):
    """List the loaded plugins, their distribution and status."""
    def human(rows):
        for r in rows:
            provided = ", ".join(r["cells"] + r["tasks"]) or "-"
            click.echo(f"{r['name']:28} {r['source']:12} {r['distribution'] or '-':24} {r['status']:8} {provided}")
    _emit(plugins.list_plugins(), as_json, human)


@main.command()
@click.option("--cell", required=True, callback=_known("cell"), help="Registered cell name.")
@click.option("--seq-len", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--hidden", type=click.IntRange(min=1), default=4, show_default=True)
def gradcheck(cell, seq_len, hidden):
    """Check a cell against the plugin contract with float64 finite differences."""
    report = tr.testing.check_cell(cell, hidden_size=hidden, seq_len=seq_len)
    click.echo(str(report))
    sys.exit(0 if report.ok else 1)


@main.command()
@click.option("--cell", "cell_names", multiple=True, callback=_known("cell"),
              help="Cell to diagnose (repeatable). Default: rnn, lstm and gru.")
@click.option("--task", default="adding", show_default=True, callback=_known("task"))
@click.option("--seq-len", type=click.IntRange(min=2), default=100, show_default=True)
@click.option("--init", "init_scheme", type=click.Choice(training.INIT_SCHEMES), default="pytorch", show_default=True)
@click.option("--steps", type=click.IntRange(min=0), default=0, show_default=True,
              help="Also diagnose after this many Adam steps (lr 1e-3, clip-norm 1).")
@click.option("--hidden", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--layers", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--batch", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", callback=_device)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, writable=True),
              help="Write a PNG of ||dL/dh_t|| against t (needs matplotlib).")
@click.option("--fail-on", default="", metavar="LIST",
              help="Exit 3 if a listed verdict is found, e.g. vanishing,exploding.")
def diagnose(cell_names, task, seq_len, init_scheme, steps, hidden, layers, batch, seed, device,
             as_json, plot_path, fail_on):
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
    report = diagnostics.diagnose(cell_names or ("rnn", "lstm", "gru"), task, seq_len, init_scheme, steps,
                                  hidden, layers, batch, seed, device=device)
    if plot_path:
        diagnostics.plot(report, plot_path)
    _emit(report, as_json, _print_diagnosis)
    if plot_path and not as_json:
        click.echo(f"plot written to {plot_path}")
    if fail_set & {c["final_verdict"] for c in report["cells"]}:
        sys.exit(FAIL_ON_EXIT)


def _fmt(v, spec=".3g"):
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def _print_diagnosis(report):
    click.echo(f"task {report['task']}, T={report['seq_len']}, hidden {report['hidden']}, "
               f"init {report['init']}, batch {report['batch']}; ||dL/dh_t|| of layer 1 (float64)")
    stages = [("init", lambda c: c)] + ([(f"step {report['steps']}", lambda c: c["after_training"])]
                                        if report["steps"] else [])
    click.echo(f"{'cell':14} {'when':10} {'verdict':10} {'rate/step':>9} {'horizon':>8} "
               f"{'|g_0|/|g_T|':>11} {'|J| mean':>8} {'gate sat':>8}")
    for c in report["cells"]:
        for label, get in stages:
            d = get(c)
            sat = d["gate_saturation"]
            click.echo(f"{c['cell']:14} {label:10} {d['verdict']:10} {_fmt(d['decay_rate'], '.3f'):>9} "
                       f"{d['horizon']:>8} {_fmt(d['ratio_first_last'], '.2e'):>11} "
                       f"{_fmt(d['jacobian_spectral_norm']['mean'], '.3f'):>8} "
                       f"{_fmt(sat['sigmoid_saturated'] if sat else None, '.0%'):>8}")
    click.echo("\n||dL/dh_t|| on a log scale, t = 0 (left) .. T (right):")
    for c in report["cells"]:
        for label, get in stages:
            click.echo(f"{c['cell']:>8} {label:>9} {diagnostics.sparkline(get(c)['grad_norm_per_step'][0])}")
    th = report["thresholds"]
    click.echo(f"\nverdict: vanishing if |g_0|/|g_T| < {th['vanishing_ratio']:g}, exploding if > "
               f"{th['exploding_ratio']:g}; horizon: steps back with |g_t| >= {th['horizon_fraction']:g} |g_T|")


@main.command()
@click.option("--cell", default="lstm", show_default=True, callback=_known("cell"))
@click.option("--task", default="adding", show_default=True, callback=_known("task"))
@click.option("--data", type=click.Path(), help="Data file for the text and series tasks.")
@click.option("--seq-len", type=click.IntRange(min=2), default=100, show_default=True)
@click.option("--hidden", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--layers", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--batch", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--steps", type=click.IntRange(min=0), default=1000, show_default=True,
              help="Total steps; a resumed run continues up to it.")
@click.option("--optimizer", type=click.Choice(["sgd", "adam", "rmsprop"]), default="adam", show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, max=1e6), default=1e-3, show_default=True)
@click.option("--clip-norm", type=click.FloatRange(min=0, max=1e12), default=None)
@click.option("--clip-value", type=click.FloatRange(min=0, max=1e12), default=None)
@click.option("--init", "init_scheme", type=click.Choice(training.INIT_SCHEMES), default="pytorch", show_default=True)
@click.option("--weight-decay", type=click.FloatRange(min=0, max=1e6), default=0.0)
@click.option("--l1", type=click.FloatRange(min=0, max=1e6), default=0.0)
@click.option("--bptt", type=click.IntRange(min=1), default=None, help="Truncated BPTT chunk length (text, series).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", callback=_device)
@click.option("--save", type=click.Path(dir_okay=False), help="Write a checkpoint here at the end.")
@click.option("--resume", type=click.Path(dir_okay=False),
              help="Continue this checkpoint's run (its model, task and settings) up to --steps.")
@click.option("--log", type=click.Path(dir_okay=False), help="Append JSON Lines records here.")
@click.option("--log-every", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--diagnose-every", type=click.IntRange(min=1), default=None,
              help="Also log per-step and per-parameter gradient norms every N steps.")
@click.option("--on-nonfinite", type=click.Choice(["error", "skip"]), default="error", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@click.option("--dtype", type=click.Choice(["float32", "float64"]), default="float32", show_default=True)
@click.option("--distributed", is_flag=True,
              help="Data-parallel over MPI: run under `mpiexec -n N` (pip install 'tinygrad-rnn[mpi]').")
def train(cell, task, data, seq_len, hidden, layers, batch, steps, optimizer, lr, clip_norm, clip_value,
          init_scheme, weight_decay, l1, bptt, seed, device, save, resume, log, log_every, diagnose_every,
          on_nonfinite, as_json, dtype, distributed):
    """Train a cell on a sequence task."""
    if distributed:
        from tinygrad_rnn.distributed import mpi
    summary = (mpi.train if distributed else training.train)(
        cell=cell, task=task, seq_len=seq_len, data=data, hidden=hidden, layers=layers, batch=batch,
        steps=steps, optimizer=optimizer, lr=lr, clip_norm=clip_norm, clip_value=clip_value,
        init_scheme=init_scheme, weight_decay=weight_decay, l1=l1, bptt=bptt, seed=seed, device=device,
        save=save, resume=resume, log=log, log_every=log_every, on_nonfinite=on_nonfinite,
        progress=not as_json and sys.stderr.isatty(), diagnose_every=diagnose_every, dtype=dtype)
    if summary is None:
        return  # an MPI rank other than 0: rank 0 prints

    def human(s):
        click.echo(f"{s['cell']} on {s['task']} (T={s['seq_len']}, hidden {s['hidden']}): "
                   f"{s['steps']} steps in {s['seconds']:.1f} s ({s['steps_per_second']:.1f} steps/s)")
        click.echo(f"train loss {_fmt(s['train_loss'], '.4f')}  eval loss {s['eval_loss']:.4f}  "
                   f"baseline {s['baseline_loss']:.4f}" +
                   (f"  ({s['eval_bits_per_symbol']:.3f} bits/symbol)" if "eval_bits_per_symbol" in s else ""))
        if save:
            click.echo(f"checkpoint written to {save}")
    _emit(summary, as_json, human)


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
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="JSON Lines results, one per point; a re-run skips the points already in it.")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Local cluster size. Default: the CPU count.")
@click.option("--scheduler", metavar="ADDRESS|FILE",
              help="Run on an existing Dask cluster: tcp://host:port or a scheduler file.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False),
              help="Heatmap over seq_len x cell (needs matplotlib).")
@click.pass_context
def sweep(ctx, cell, task, seq_len, hidden, init, lr, optimizer, clip_norm, seeds, steps, batch, mode, out,
          workers, scheduler, plot_path):
    """Run a grid of train or diagnose runs on Dask, one task per point."""
    from tinygrad_rnn.distributed import sweep as sweep_mod
    if workers and scheduler:
        raise click.BadParameter("--workers sizes a local cluster; drop it with --scheduler", param_hint="--workers")
    try:
        points = sweep_mod.grid(mode, seeds, steps, batch, cell=cell, task=task, seq_len=seq_len, hidden=hidden,
                                init=init, lr=lr, optimizer=optimizer, clip_norm=clip_norm)
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
@click.option("--checkpoint", "path", required=True, type=click.Path(dir_okay=False))
@click.option("--prime", default="", help="Text to start from.")
@click.option("--length", type=click.IntRange(min=0), default=200, show_default=True)
@click.option("--temperature", type=click.FloatRange(min=0, min_open=True, max=100), default=1.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def generate(path, prime, length, temperature, seed):
    """Sample text from a character-model checkpoint."""
    click.echo(training.generate(path, prime, length, temperature, seed))


if __name__ == "__main__":
    main()
