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

try:  # the package and Numba take about half a second to import: a Ctrl-C then ends as any other
    import click

    import tinygrad_rnn as tr
    from tinygrad_rnn import checkpoint, limits, options, plugins, safeio, scaffold
    from tinygrad_rnn import training
    from tinygrad_rnn.cell_options import parse_cell_options
    from tinygrad_rnn.compiler import CompileError, compile_status, inspect_cell
    from tinygrad_rnn.notices import compile_notice
except KeyboardInterrupt:
    sys.stderr.write("\nAborted!\n")  # click's words for a Ctrl-C, and its exit status
    raise SystemExit(1) from None

FAIL_ON_EXIT = 3
BUG_NOTE = ("This is a bug in tinygrad-rnn (or in a plugin it loaded), not a mistake of yours: "
            "please report it with the command line and the traceback above.")


class App(click.Group):
    """Turns ``tr.Error`` into a one-line message; anything else is a bug, shown in full."""

    def parse_args(self, ctx, args):
        """``--plugin`` is the group's option, but it may also come after the subcommand
        (``tinygrad-rnn train --plugin my_cell.py --cell mine``): move it to the front."""
        try:
            args = _plugins_first(list(args))
        except click.UsageError as e:
            e.ctx = ctx
            raise
        return super().parse_args(ctx, args)

    def main(self, *args, **kwargs):
        try:
            return super().main(*args, **kwargs)
        except SystemExit as e:
            if e.code and "--distributed" in sys.argv[1:]:  # the other ranks must not wait for this one
                from tinygrad_rnn.distributed import mpi
                mpi.report_early_failure(f"exit status {e.code}; its error is above")
            raise

    def invoke(self, ctx):
        debug = ctx.params.get("show_traceback") or os.environ.get("TINYGRAD_RNN_DEBUG") == "1"
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except training.TrainingInterrupted as e:  # Ctrl-C, asked for: what was kept, not an error
            if debug:
                traceback.print_exc()
            click.echo(options.to_flags(_one_line(e)), err=True)
            ctx.exit(1)
        except tr.Error as e:
            if debug:
                traceback.print_exc()
                ctx.exit(1)
            raise click.ClickException(options.to_flags(_one_line(e))) from None
        except MemoryError:
            if debug:
                traceback.print_exc()
            raise click.ClickException("out of memory: use smaller sizes (--hidden, --batch, --seq-len)") from None
        except KeyboardInterrupt:
            raise  # Ctrl-C, from plugin code or ours: click stops as it does for any Ctrl-C
        except BaseException as e:  # noqa: B036 (a plugin may raise SystemExit, GeneratorExit, BaseException)
            where = _plugin_frame(e)
            if where is None and isinstance(e, SystemExit):
                raise  # our own exit status
            if debug or where is None:
                traceback.print_exc()
            if where is None:
                click.echo(BUG_NOTE, err=True)
            else:
                click.echo(f"Error: plugin code ({where}) raised {_one_line_of(e)}", err=True)
            ctx.exit(1)


def _plugins_first(args):
    """``args`` with every ``--plugin X`` / ``--plugin=X`` before the rest (none after ``--``)."""
    front, rest, i = [], [], 0
    while i < len(args):
        a = args[i]
        if a == "--":
            rest += args[i:]
            break
        if a == "--plugin":
            if i + 1 == len(args):
                raise click.UsageError("--plugin needs a value: a plugin's .py file or module name")
            front += args[i:i + 2]
            i += 2
            continue
        (front if a.startswith("--plugin=") else rest).append(a)
        i += 1
    return front + rest


def _plugin_frame(exc):
    """``file:line, in function`` of the innermost traceback frame of ``exc`` in a plugin's
    source file (not this package's), or None: then ``exc`` is ours."""
    package = os.path.dirname(os.path.realpath(tr.__file__)) + os.sep
    files = {os.path.realpath(path) for _, path in plugins.plugin_files()}
    found = None
    for frame in traceback.extract_tb(exc.__traceback__):
        real = os.path.realpath(frame.filename)
        if real in files and not real.startswith(package):
            found = f"{frame.filename}:{frame.lineno}, in {frame.name}"
    return found


def _one_line_of(e):
    text = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


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
                hint = f"; a {kind} of your own loads with --plugin FILE.py" if not ctx.find_root().params.get(
                    "plugin_specs") else ""
                raise click.BadParameter(e.args[0] + hint) from None
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


class Int(click.IntRange):
    """An integer in a range that fits a C long: a larger one overflows NumPy's conversions."""

    def convert(self, value, param, ctx):
        rv = super().convert(value, param, ctx)
        if rv > options.MAX_INT:
            self.fail(f"{value!r} is too large (the most is 2**63 - 1)", param, ctx)
        return rv


def _click_type(option):
    if option.kind == "int":
        return Int(min=option.lo, max=option.hi)
    if option.kind == "float":
        return Number(min=option.lo, max=option.hi, min_open=option.lo_open, max_open=option.hi_open)
    if option.kind == "choice":
        return click.Choice(list(option.choices))
    return FilePath() if option.kind == "path" else None


def _click_option(option, command):
    """The click option of a row of the run-option table, as ``command`` takes it."""
    if option.kind == "options":
        return cell_option
    if command == "sweep" and option.grid:
        return click.option(option.flag, option.key, multiple=True, callback=_grid_values, help=option.help)
    kw = dict(default=option.default, show_default=option.show_default, help=option.help, multiple=option.multiple)
    if option.metavar:
        kw["metavar"] = option.metavar
    if option.kind == "name":
        kw.update(callback=_known(option.name), shell_complete=_complete(option.name))
    elif option.kind == "flag":
        kw["is_flag"] = True
    else:
        kw["type"] = _click_type(option)
    if option.name == "device":
        kw["callback"] = _device
    return click.option(option.flag, option.name, **kw)


def _run_options(command):
    """Decorate ``command`` with the click options of its rows in ``tinygrad_rnn.options``."""
    def decorate(f):
        for option in reversed(options.of(command)):
            f = _click_option(option, command)(f)
        return f
    return decorate


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
        plugins.load_all()  # now, so a broken explicit plugin fails before the command


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
    """Show what the cell compiler makes of a cell: its traced step, the plan, the kernel
    IR and the generated Numba source (also cached on disk, path printed)."""
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
    """Run the cell contract checks on a cell (the checks of tr.testing.parametrize_with_checks):
    shapes, determinism, batch independence, lengths, float64 finite-difference gradients,
    compiled against step, CUDA against CPU, float32 against float64, state_dict and
    checkpoint round trips. One PASS, SKIP or FAIL line each; exit 1 if one fails."""
    with compile_notice():
        report = tr.testing.check_cell(cell, hidden_size=hidden, seq_len=seq_len,
                                       **_cell_options(cell, cell_option_pairs))
    click.echo(str(report))
    sys.exit(0 if report.ok else 1)


@main.command("new-cell")
@click.argument("name")
@click.option("--dir", "directory", type=click.Path(file_okay=False), metavar="PATH",
              help="Folder to write the package to (new or empty). Default: ./tinygrad-rnn-NAME.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
def new_cell(name, directory, as_json):
    """Write an installable plugin package for a new cell NAME: pyproject.toml with the
    entry point, a module with a small working cell, tests/ running the contract checks,
    and a README."""
    try:
        made = scaffold.new_cell(name, directory)
    except scaffold.ScaffoldError as e:
        raise click.BadParameter(str(e), param_hint="--dir" if e.what == "dir" else "NAME") from None

    def human(made):
        click.echo(f"wrote cell {made['name']!r} (class {made['class']}) to {made['path']}:")
        for f in made["files"]:
            click.echo(f"  {f}")
        click.echo("next:\n" + "\n".join(f"  {c}" for c in made["commands"]))
    _emit(made, as_json, human)


@main.command(cls=_ListsRegistry)
@_run_options("diagnose")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@click.option("--plot", "plot_path", type=PlotPath(),
              help="Write a PNG of ||dL/dh_t|| against t (needs matplotlib).")
@click.option("--fail-on", default="", metavar="LIST",
              help="Exit 3 if a listed verdict is found, e.g. vanishing,exploding.")
def diagnose(as_json, plot_path, fail_on, cell_option_pairs, **run):
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
        safeio.check_outputs([("--plot", plot_path)], [("--data", run["data"]), *plugins.plugin_files()],
                             {"--plot": safeio.PLOT})
    if run["weights"] and not run["cell"]:
        raise click.UsageError("--weights needs --cell: the cell the weights are for (lstm for nn.LSTM, gru for "
                               "nn.GRU, rnn for nn.RNN)")
    cell_names = run.pop("cell") or ("rnn", "lstm", "gru")
    with compile_notice():
        run["remat"] = run.pop("remat_every") or run["remat"]  # tr.nn.RNN's remat: K, True or None
        report = tr.report.diagnose(cell_names, cell_options=_cell_options(cell_names, cell_option_pairs), **run)
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
@_run_options("train")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@click.option("--distributed", is_flag=True,
              help="Data-parallel over MPI: run under `mpiexec -n N` (pip install 'tinygrad-rnn[mpi]').")
@click.option("--progress/--no-progress", default=None,
              help="Show a progress bar on stderr. Default: when stderr is a terminal.")
@click.pass_context
def train(ctx, as_json, distributed, progress, cell_option_pairs, **run):
    """Train a cell on a sequence task."""
    trainer = training.train
    from tinygrad_rnn.distributed import mpi
    if distributed:
        trainer = mpi.train  # every rank trains; rank 0 alone logs, saves and prints
    else:
        mpi.refuse_without_distributed()
    show = sys.stderr.isatty() if progress is None else progress
    resume, save = run["resume"], run["save"]
    run["cell_options"] = _cell_options(_resumed_cell(ctx, run["cell"], resume), cell_option_pairs)
    with _progress_bar(show, run["steps"]) as on_step, compile_notice():
        summary = trainer(**run, progress=on_step, explicit=_explicit(ctx))
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
        if "eval_accuracy" in s:
            click.echo(f"train accuracy {s['train_accuracy']:.1%}  eval accuracy {s['eval_accuracy']:.1%}  "
                       f"baseline {s['baseline_accuracy']:.1%} (the majority class)")
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
@_run_options("sweep")
@click.option("--seeds", type=click.IntRange(min=1), default=1, show_default=True, help="Seeds 0 .. N-1 per point.")
@click.option("--mode", type=click.Choice(["train", "diagnose"]), default="train", show_default=True,
              help="Train each point, or diagnose its cell.")
@click.option("--out", required=True, type=FilePath(),
              help="JSON Lines results, one per point; a re-run skips the points already in it.")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Local cluster size. Default: the CPU count.")
@click.option("--scheduler", metavar="ADDRESS|FILE",
              help="Run on an existing Dask cluster: tcp://host:port or a scheduler file.")
@click.option("--plot", "plot_path", type=PlotPath(),
              help="Heatmap over seq_len x cell (needs matplotlib).")
@click.option("--retry-failed", is_flag=True,
              help="Run again the points in --out whose result is an error (a full disk, a plugin since fixed).")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON document on stdout (every point's record, the summary rows, the counts).")
@click.pass_context
def sweep(ctx, steps, batch, seeds, mode, out, workers, scheduler, plot_path, retry_failed, as_json, cell_option_pairs,
          **axes):
    """Run a grid of train or diagnose runs on Dask, one task per point."""
    from tinygrad_rnn.distributed import sweep as sweep_mod
    if workers and scheduler:
        raise click.BadParameter("--workers sizes a local cluster; drop it with --scheduler", param_hint="--workers")
    cell_options = _cell_options(list(axes["cell"] or ("rnn", "lstm", "gru")), cell_option_pairs)
    weights = axes.pop("weights")
    weights = weights and os.path.abspath(weights)  # the workers' folder may differ
    try:
        points = sweep_mod.grid(mode, seeds, steps, batch, cell_options=cell_options, weights=weights, **axes)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    if plot_path:
        sweep_mod.pyplot()  # fail before the sweep, not after it
    records, stats = sweep_mod.run(points, out, workers, scheduler, ctx.find_root().params["plugin_specs"],
                                   log=lambda msg: click.echo(msg, err=True), plot=plot_path,
                                   retry_failed=retry_failed)

    def human(_):
        for line in sweep_mod.table(records):
            click.echo(line)
    summary = sweep_mod.summarise(records)[1] if records else []
    _emit({"out": out, "points": records, "summary": summary, "stats": stats}, as_json, human)
    errors = f" ({stats['errors']} ended in an error)" if stats["errors"] else ""
    click.echo(f"{stats['ran']} run{errors}, {stats['skipped']} already done, {stats['failed']} not run, in "
               f"{stats['seconds']:.1f} s; kernels compiled: {stats['compiled_warm_up']} in warm-up, "
               f"{stats['compiled_tasks']} in tasks; results in {out}", err=True)
    if plot_path:
        sweep_mod.plot(records, plot_path)
        click.echo(f"plot written to {plot_path}", err=True)
    if stats["failed"]:
        sys.exit(1)


@main.command("export")
@click.option("--checkpoint", "path", required=True, type=FilePath(), help="A checkpoint written by train --save.")
@click.option("--out", required=True, type=FilePath(), help="The .safetensors file to write.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
def export_cmd(path, out, as_json):
    """Write a checkpoint's model with PyTorch's names (rnn.*, head.*, embed.*) as safetensors."""
    from tinygrad_rnn import interop

    def human(s):
        click.echo(f"{s['out']}: {len(s['tensors'])} tensors ({s['dtype']}) of cell {s['cell']}; PyTorch loads "
                   "them into a module with")
        for attr, module in s["modules"].items():
            click.echo(f"  self.{attr} = {module or '(no PyTorch layer)'}")
        click.echo("  module.load_state_dict(safetensors.torch.load_file(OUT), strict=True)")
        if "note" in s:
            click.echo(f"note: {s['note']}", err=True)
    _emit(interop.export(path, out), as_json, human)


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
