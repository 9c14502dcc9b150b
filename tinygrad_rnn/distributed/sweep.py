"""Parameter sweeps on Dask: one task per grid point, results streamed to a JSON Lines file.

A point is a plain dict (cell, task, seq_len, hidden, init, lr, clip_norm, steps, batch,
seed, mode, and optimizer when training). Its task runs exactly what ``tinygrad-rnn
train --json`` (or ``diagnose --json``, for one cell) would run with those options, so
its result equals the serial run's, timings aside. Each finished point is appended to
``out`` as one line ``{"point": ..., "result": ...}`` with a single ``write``; a re-run
reads the file back and skips what is there. Dask does the scheduling and the fault
tolerance (a task on a worker that dies is run again elsewhere); this module only
builds the grid, keeps the file and summarises.
"""
import contextlib
import fcntl
import itertools
import json
import logging
import math
import os
import signal
import statistics
import threading
import time

from .. import options, report, training
from ..errors import Error
from ..plugins import get_cell, get_task, load_plugin

GRID = ("cell", "task", "seq_len", "hidden", "init", "lr", "optimizer", "clip_norm")  # the order of a point's keys
assert set(GRID) == {o.key for o in options.OPTIONS if o.grid}
MODES = ("train", "diagnose")
DEFAULTS = {"train": {"steps": 1000, "clip_norm": None}, "diagnose": {"steps": 0, "clip_norm": 1.0}}
SOLVED_FRACTION = 0.05  # "solved": eval loss below 5 % of the trivial baseline (adding: MSE < 0.0083)
TIMINGS = ("seconds", "steps_per_second")  # the only result fields that differ from a serial run


class SweepError(Error, RuntimeError):
    """The sweep cannot start or finish (one line for the CLI, exit 1)."""


# ---- the grid --------------------------------------------------------------------------

def parse_values(name, raw):
    """Values of grid option ``name`` from repeated and/or comma-separated strings, in order,
    without repeats. Raises ValueError naming the option and the bad value."""
    values = []
    for chunk in raw:
        for s in str(chunk).split(","):
            s = s.strip()
            if not s:
                raise ValueError(f"--{name.replace('_', '-')}: empty value in {chunk!r}")
            try:
                v = options.parse(options.BY_KEY[name].name, s)
            except (ValueError, KeyError) as e:
                why = e.args[0] if e.args else "invalid"
                raise ValueError(f"--{name.replace('_', '-')}: {s!r}: {why}") from None
            if v not in values:
                values.append(v)
    return values


def grid(mode="train", seeds=1, steps=None, batch=32, cell_options=None, weights=None, **options):
    """All points of the grid: the product of each option's list of values, times seeds 0..N-1.

    ``options`` maps names in GRID to lists of values (missing: the command's default);
    ``cell_options`` (``--cell-option``) go to every point's cells.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "diagnose" and options.get("optimizer"):
        raise ValueError("--optimizer applies to --mode train only (diagnose trains with adam)")
    unknown = set(options) - set(GRID)
    if unknown:
        raise ValueError(f"unknown grid option(s) {sorted(unknown)}")
    defaults = {"cell": ["rnn", "lstm", "gru"], "task": ["adding"], "seq_len": [100], "hidden": [64],
                "init": ["pytorch"], "lr": [1e-3], "optimizer": ["adam"],
                "clip_norm": [DEFAULTS[mode]["clip_norm"]]}
    names = [n for n in GRID if not (mode == "diagnose" and n == "optimizer")]
    lists = [list(options.get(n) or defaults[n]) for n in names]
    steps = DEFAULTS[mode]["steps"] if steps is None else steps
    points = []
    for combo in itertools.product(*lists, range(seeds)):
        p = dict(zip(names, combo[:-1]), steps=steps, batch=batch, seed=combo[-1], mode=mode)
        if cell_options:  # only when given, so the points of earlier results files keep their keys
            p["cell_options"] = dict(cell_options)
        if weights:  # every point starts from these weights (--weights)
            p["weights"] = weights
        points.append(p)
    return points


def key(point):
    return json.dumps(point, sort_keys=True)


# ---- one task ----------------------------------------------------------------------------

_loaded_plugins = set()


def blas_core():
    """OpenBLAS's kernel choice in this process (see ``tinygrad_rnn/_blas.py``): results are
    bit-identical only between processes with the same choice."""
    return os.environ.get("OPENBLAS_CORETYPE", "default")


def run_point(point, plugins=()):
    """Run one point where it is called (a Dask worker); return ``(result, facts)``, with
    ``facts``: the number of kernels Numba compiled for it, the OpenBLAS choice.

    ``result`` is the ``train --json`` summary, or the cell's record of ``diagnose --json``,
    as it reads back from JSON; a run that fails (a diverging loss, say) gives
    ``{"error": message}``, which is its result as much as a loss is.
    """
    from numba.core import event

    for spec in plugins:
        if spec not in _loaded_plugins:
            load_plugin(spec)
            _loaded_plugins.add(spec)
    compiles = event.RecordingListener()
    with event.install_listener("numba:compile", compiles):
        try:
            result = _run(point)
        except Exception as e:  # noqa: BLE001 (the point's outcome, recorded like a loss)
            result = {"error": f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}"}
    started = sum(1 for _, ev in compiles.buffer if ev.is_start)
    return json.loads(json.dumps(result, default=_jsonable)), {"compiled": started, "blas": blas_core()}


def _run(p):
    if p["mode"] == "train":  # the point's keys are checkpoint keys: init, not init_scheme
        return training.train(**{options.BY_KEY[k].name: v for k, v in p.items() if k != "mode"})
    found = report.diagnose((p["cell"],), p["task"], p["seq_len"], p["init"], p["steps"], p["hidden"],
                            batch=p["batch"], seed=p["seed"], lr=p["lr"], clip_norm=p["clip_norm"],
                            cell_options=p.get("cell_options"), weights=p.get("weights"))
    return found["cells"][0]


def _jsonable(v):
    if hasattr(v, "tolist"):
        return v.tolist()
    raise TypeError(f"cannot serialise {type(v).__name__}")


def warm_up_point(point):
    """The same code path as ``point`` at toy sizes: it needs the same compiled kernels."""
    return dict(point, seq_len=3, hidden=2, batch=2, steps=min(point["steps"], 1), seed=0)


# ---- the results file ----------------------------------------------------------------------

class Results:
    """The ``--out`` file: finished points read back, new ones appended one line at a time.

    Each line goes out in one ``os.write`` on an ``O_APPEND`` descriptor, so a crash or a
    Ctrl-C leaves whole lines; a torn last line (power loss, a full disk) is cut off when
    the file is opened again. An exclusive lock keeps two sweeps from writing one file.
    """

    def __init__(self, path):
        self.path = path
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as e:
            raise SweepError(f"cannot open {path!r} for the results: {e.strerror}") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self.fd)
            raise SweepError(f"another sweep is writing {path!r}; wait for it or use another --out") from None
        self.records = self._read()

    def _read(self):
        with open(self.path, "rb") as f:
            data = f.read()
        end = data.rfind(b"\n") + 1
        if end < len(data):  # a torn last line: drop it, its point runs again
            os.ftruncate(self.fd, end)
            data = data[:end]
        records = {}
        for n, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
            try:
                rec = json.loads(line)
                records[key(rec["point"])] = rec
            except (ValueError, KeyError, TypeError):
                raise SweepError(f"{self.path}:{n} is not a sweep result line; use another --out") from None
        return records

    def add(self, point, result):
        rec = {"point": point, "result": result}
        os.write(self.fd, (json.dumps(rec) + "\n").encode())
        self.records[key(point)] = rec

    def close(self):
        os.close(self.fd)


# ---- running a sweep -----------------------------------------------------------------------

def _scheduler_address(scheduler):
    """An address as given, or the one in a scheduler file (``dask scheduler --scheduler-file``)."""
    if "://" in scheduler or not (os.sep in scheduler or scheduler.endswith(".json") or os.path.isfile(scheduler)):
        return scheduler
    try:
        with open(scheduler, encoding="utf-8") as f:
            address = json.load(f).get("address")
    except OSError as e:
        raise SweepError(f"cannot read the scheduler file {scheduler!r}: {e.strerror}") from None
    except (ValueError, AttributeError):
        address = None
    if not isinstance(address, str):
        raise SweepError(f"{scheduler!r} is not a Dask scheduler file (no \"address\")")
    return address


def _check_scheme(address):
    """A scheme Dask has no transport for is a mistake in the address: say so at once.
    (Left to the client, it fails later, and sometimes only as a bare AssertionError.)"""
    from distributed.comm.addressing import parse_address
    from distributed.comm.registry import get_backend
    try:
        get_backend(parse_address(address)[0])
    except ValueError as e:
        raise SweepError(f"cannot reach the Dask scheduler at {address!r}: {e}") from None


@contextlib.contextmanager
def connect(workers=None, scheduler=None):
    """A Dask client: on ``scheduler`` (an address, or a scheduler file) if given, else on a
    new local cluster of ``workers`` single-threaded processes bound to 127.0.0.1, closed
    on the way out."""
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError:
        raise SweepError("sweep needs Dask: pip install 'tinygrad-rnn[distributed]'") from None
    cluster = None
    try:
        if scheduler:
            address = _scheduler_address(scheduler)
            _check_scheme(address)
            client = Client(address, timeout="10s")
        else:
            # Ctrl-C is for this process, which stops the sweep and the cluster: the worker
            # processes, started now, inherit SIGINT ignored and stay quiet.
            main = threading.current_thread() is threading.main_thread()
            previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
            try:
                cluster = LocalCluster(n_workers=workers or os.cpu_count(), threads_per_worker=1, processes=True,
                                       host="127.0.0.1", dashboard_address="127.0.0.1:0", silence_logs=logging.CRITICAL)
            finally:
                if main:
                    signal.signal(signal.SIGINT, previous)
            client = Client(cluster)
    except SweepError:
        raise
    except Exception as e:  # noqa: BLE001 (Dask's many ways of saying "not there": OSError, AssertionError...)
        where = f"the Dask scheduler at {scheduler!r}" if scheduler else "a local Dask cluster"
        raise SweepError(f"cannot reach {where}: {(str(e).splitlines() or [type(e).__name__])[0]}") from None
    try:
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def run(points, out, workers=None, scheduler=None, plugins=(), log=None):
    """Run the points not yet in ``out`` on Dask and append each result as it finishes.

    Returns ``(records, stats)``: every point's record (read back or new) in grid order,
    and counts (skipped, ran, failed, kernels compiled in warm-up and in tasks, seconds).
    ``log(message)`` gets one progress line per finished point.
    """
    log = log or (lambda msg: None)
    plugins = tuple(os.path.abspath(s) if s.endswith(".py") else s for s in plugins)
    results = Results(out)
    todo = list({key(p): p for p in points if key(p) not in results.records}.values())
    stats = {"points": len(points), "skipped": len(points) - len(todo), "ran": 0, "errors": 0, "failed": 0,
             "compiled_warm_up": 0, "compiled_tasks": 0, "seconds": 0.0}
    t0 = time.perf_counter()
    try:
        if todo:
            log(f"{stats['skipped']} of {len(points)} points already in {out}; running {len(todo)}")
            with connect(workers, scheduler) as client:
                _sweep(client, todo, results, plugins, stats, log)
        else:
            log(f"all {len(points)} points already in {out}")
    except KeyboardInterrupt:
        raise SweepError(f"interrupted: {stats['ran']} points written to {out}; "
                         "run the same command again to do the rest") from None
    finally:
        results.close()
    stats["seconds"] = time.perf_counter() - t0
    return [results.records[key(p)] for p in points if key(p) in results.records], stats


def _sweep(client, todo, results, plugins, stats, log):
    from dask.distributed import as_completed

    info = client.scheduler_info()["workers"]
    if not info:
        try:
            client.wait_for_workers(1, timeout=60)
        except TimeoutError:
            raise SweepError(f"no Dask worker joined the scheduler at {client.scheduler.address} "
                             "within 60 s") from None
        info = client.scheduler_info()["workers"]
    # Compile once per machine before the sweep fans out: one worker per host runs each
    # distinct code path at toy sizes and fills the Numba cache the others then load.
    hosts = {}
    for addr, w in sorted(info.items()):
        hosts.setdefault(w.get("host", addr), addr)
    warm = list({key(warm_up_point(p)): warm_up_point(p) for p in todo}.values())
    for addr in hosts.values():
        for p in warm:
            _, facts = client.submit(run_point, p, plugins, workers=[addr], allow_other_workers=True,
                                     pure=False).result()
            stats["compiled_warm_up"] += facts["compiled"]
    cores = client.run(blas_core)
    odd = sorted(a for a, core in cores.items() if core != blas_core())
    if odd:
        log(f"warning: OpenBLAS kernels on {len(odd)} worker(s) ({cores[odd[0]]}) differ from this process's "
            f"({blas_core()}): results may differ from serial runs in the last bits; start workers with "
            "python -m tinygrad_rnn.distributed.worker")
    futures = {client.submit(run_point, p, plugins, pure=False, key=f"point-{i}-{hash(key(p)) & 0xffffffff:x}"): p
               for i, p in enumerate(todo)}
    keys = varying(todo) or ["cell", "seq_len"]
    for fut in as_completed(futures):
        p = futures.pop(fut)
        try:
            result, facts = fut.result()
        except Exception as e:  # noqa: BLE001 (a worker lost more often than Dask allows, say)
            stats["failed"] += 1
            log(f"[{stats['ran'] + stats['failed']}/{len(todo)}] {describe(p, keys)}: not run: "
                f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}")
            continue
        results.add(p, result)
        stats["ran"] += 1
        stats["errors"] += "error" in result
        stats["compiled_tasks"] += facts["compiled"]
        log(f"[{stats['ran'] + stats['failed']}/{len(todo)}] {describe(p, keys)}: {headline(result)}")


# ---- reading results ---------------------------------------------------------------------

def varying(points):
    """The grid options that take more than one value among ``points``."""
    return [k for k in GRID + ("seed",) if len({json.dumps(p.get(k)) for p in points}) > 1]


def describe(point, keys=GRID + ("seed",)):
    return " ".join(f"{k}={point[k]}" for k in keys if k in point)


def solved(result):
    return "eval_loss" in result and result["eval_loss"] < SOLVED_FRACTION * result["baseline_loss"]


def headline(result):
    if "error" in result:
        return result["error"]
    if "eval_loss" in result:
        return (f"eval loss {result['eval_loss']:.4g} (baseline {result['baseline_loss']:.3g})"
                f"{', solved' if solved(result) else ''}, {result['seconds']:.1f} s")
    return f"{result['final_verdict']}, horizon {result.get('after_training', result)['horizon']}"


def summarise(records):
    """Group the records over seeds: one row per point without its seed.

    Each row: the point's varying options, ``n``, and for training the median eval
    loss, the baseline and how many seeds solved it; for diagnostics the median horizon
    and the verdicts. Errors are counted, not averaged.
    """
    if not records:
        return [], []
    changing = [k for k in varying([r["point"] for r in records]) if k != "seed"]
    groups = {}
    for r in records:
        g = tuple((k, r["point"].get(k)) for k in GRID if k in r["point"])
        groups.setdefault(g, []).append(r["result"])
    rows = []
    for g, results in groups.items():
        ok = [x for x in results if "error" not in x]
        row = dict(g, n=len(results), errors=len(results) - len(ok))
        if ok and "eval_loss" in ok[0]:
            row.update(eval_loss=statistics.median(x["eval_loss"] for x in ok),
                       baseline=ok[0]["baseline_loss"], solved=sum(solved(x) for x in ok))
        elif ok:
            final = [x.get("after_training", x) for x in ok]
            row.update(horizon=statistics.median(x["horizon"] for x in final),
                       verdicts=sorted({x["final_verdict"] for x in ok}))
        rows.append(row)
    return changing, rows


def table(records):
    """The summary as text lines."""
    if not records:
        return []
    changing, rows = summarise(records)
    cols = list(dict.fromkeys(["cell", "seq_len"] + changing))
    training_mode = records[0]["point"]["mode"] == "train"
    lines = ["  ".join(f"{c:>10}" for c in cols) + "  " +
             (f"{'n':>3} {'eval loss':>10} {'baseline':>9} {'solved':>7}" if training_mode
              else f"{'n':>3} {'horizon':>8}  verdicts")]
    for r in rows:
        cells = "  ".join(f"{str(r[c]):>10}" for c in cols)
        if "eval_loss" in r:
            tail = (f"{r['n']:>3} {r['eval_loss']:>10.4g} {r['baseline']:>9.3g} "
                    f"{r['solved']:>3}/{r['n'] - r['errors']:<3}")
        elif "horizon" in r:
            tail = f"{r['n']:>3} {r['horizon']:>8g}  {','.join(r['verdicts'])}"
        else:
            tail = f"{r['n']:>3}"
        lines.append(cells + "  " + tail + (f"  ({r['errors']} failed)" if r["errors"] else ""))
    return lines


def pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SweepError("--plot needs matplotlib: pip install 'tinygrad-rnn[plot]'") from None
    return plt


def plot(records, path):
    """Heatmap over seq_len x cell, one panel per combination of the other varying options:
    the median eval loss / baseline (train) with seeds solved, or the median gradient
    horizon (diagnose) with the verdict."""
    import numpy as np
    from matplotlib.colors import LogNorm

    plt = pyplot()

    changing, rows = summarise(records)
    rows = [r for r in rows if "eval_loss" in r or "horizon" in r]
    if not rows:
        raise SweepError("nothing to plot: every point failed")
    training_mode = "eval_loss" in rows[0]
    others = [k for k in changing if k not in ("cell", "seq_len")]
    panels = {}
    for r in rows:
        panels.setdefault(tuple((k, r[k]) for k in others), []).append(r)
    cells = list(dict.fromkeys(r["cell"] for r in rows))
    lens = sorted({r["seq_len"] for r in rows})
    n = len(panels)
    fig, axes = plt.subplots(1, n, figsize=(1.2 + 1.1 * len(lens) * n + 1.5, 0.8 + 0.6 * len(cells)), squeeze=False)
    for ax, (label, group) in zip(axes[0], panels.items()):
        grid_ = np.full((len(cells), len(lens)), np.nan)
        notes = {}
        for r in group:
            i, j = cells.index(r["cell"]), lens.index(r["seq_len"])
            if training_mode:
                grid_[i, j] = max(r["eval_loss"] / r["baseline"], 1e-4)
                notes[i, j] = f"{r['eval_loss']:.2g}\n{r['solved']}/{r['n'] - r['errors']}"
            else:
                grid_[i, j] = r["horizon"]
                notes[i, j] = f"{r['horizon']:g}\n{','.join(v[:4] for v in r['verdicts'])}"
        if training_mode:
            im = ax.imshow(grid_, cmap="viridis_r", norm=LogNorm(vmin=1e-3, vmax=1.5), aspect="auto")
        else:
            im = ax.imshow(grid_, cmap="viridis", vmin=0, vmax=max(lens), aspect="auto")
        for (i, j), text in notes.items():
            dark = training_mode and grid_[i, j] > 0.1
            ax.text(j, i, text, ha="center", va="center", fontsize=7, color="white" if dark else "black")
        ax.set_xticks(range(len(lens)), [str(t) for t in lens])
        ax.set_yticks(range(len(cells)), cells)
        ax.set_xlabel("sequence length T")
        ax.set_title(", ".join(f"{k}={v}" for k, v in label), fontsize=8)
    first = records[0]["point"]
    fixed = [k for k in ("task", "hidden", "init", "optimizer", "lr", "clip_norm", "steps", "batch")
             if k in first and k not in changing]
    fig.suptitle(", ".join(f"{k} {first[k]}" for k in fixed) + f"; {max(r['n'] for r in rows)} seed(s)", fontsize=8)
    fig.colorbar(im, ax=axes[0].tolist(),
                 label="colour: eval loss / baseline\ntext: eval loss, seeds solved" if training_mode
                 else "colour: gradient horizon (steps)\ntext: horizon, verdicts")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
