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
import stat
import statistics
import threading
import time

from .. import options, report, safeio, training
from ..errors import Error
from ..plugins import get_cell, get_task, load_plugin, plugin_files

GRID = ("cell", "task", "seq_len", "hidden", "init", "lr", "optimizer", "clip_norm")  # the order of a point's keys
# Every point is a dict held in memory before the sweep starts (about 1 KB each), and a
# results file of a million points is some hundred MB: a grid past this is a typo (--seeds 1e8).
MAX_POINTS = 10 ** 6
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
    for i, n in enumerate(names):  # "LSTM" and "lstm", an alias and its name: one cell, run once
        if n in ("cell", "task"):
            lists[i] = list(dict.fromkeys(_canonical(n, v) for v in lists[i]))
    steps = DEFAULTS[mode]["steps"] if steps is None else steps
    count = math.prod(len(values) for values in lists) * seeds
    if count > MAX_POINTS:
        sizes = " x ".join(str(len(values)) for values, n in zip(lists, names) if len(values) > 1)
        raise ValueError(f"the grid has {count:,} points ({sizes + ' x ' if sizes else ''}{seeds:,} seeds), "
                         f"more than the {MAX_POINTS:,} a sweep takes; give fewer values or --seeds")
    points = []
    for combo in itertools.product(*lists, range(seeds)):
        p = dict(zip(names, combo[:-1]), steps=steps, batch=batch, seed=combo[-1], mode=mode)
        if cell_options:  # only when given, so the points of earlier results files keep their keys
            p["cell_options"] = dict(cell_options)
        if weights:  # every point starts from these weights (--weights)
            p["weights"] = weights
        points.append(p)
    return points


def _canonical(kind, name):
    """The registered name of a cell or task given by any of its names (case, aliases)."""
    try:
        return (get_cell if kind == "cell" else get_task)(name).name
    except (KeyError, AttributeError, TypeError):
        return name  # not registered here: run_point says so, as the point's error


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

    Each line goes out whole on an ``O_APPEND`` descriptor (a short write is finished, a
    failed one is cut back off), so a crash, a Ctrl-C or a full disk leaves whole lines.
    The file is checked before anything in it changes: a file that is not a results file
    (a checkpoint, a text) is refused untouched. A torn last line (power loss) is then cut
    off, and a damaged line (a record cut short with another appended to it, a record
    edited by hand) is skipped: its point runs again. An exclusive lock keeps two sweeps
    from writing one file. A file the sweep created and wrote nothing to is removed.
    """

    def __init__(self, path):
        self.path, self.notes, self.readonly = path, [], None
        created = not os.path.lexists(path)
        try:  # O_NONBLOCK: a FIFO is refused below, not waited on
            self.fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK, 0o644)
        except PermissionError as e:  # a complete, read-only results file can still be tabulated
            self.fd, self.readonly = self._open_read_only(path, e), e.strerror
        except OSError as e:
            raise SweepError(f"cannot open {path!r} for the results: {e.strerror}") from None
        self.created = created
        try:
            if not stat.S_ISREG(os.fstat(self.fd).st_mode):
                raise SweepError(f"--out {path!r} is not a regular file (a device, pipe or socket); give a file name")
            os.set_blocking(self.fd, True)
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise SweepError(f"another sweep is writing {path!r}; wait for it or use another --out") from None
            self.records = self._read()
        except BaseException:
            os.close(self.fd)
            raise

    @staticmethod
    def _open_read_only(path, error):
        try:
            return os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except OSError:
            raise SweepError(f"cannot open {path!r} for the results: {error.strerror}") from None

    def _read(self):
        size = os.fstat(self.fd).st_size
        if size > MAX_RESULTS_BYTES:
            raise SweepError(f"{self.path} holds {size / 2 ** 20:.0f} MB: too large for a sweep results file; "
                             "use another --out")
        data = os.pread(self.fd, size, 0)
        end = data.rfind(b"\n") + 1
        records, damaged = {}, []
        for n, line in enumerate(data[:end].split(b"\n")[:-1], 1):
            if not line.strip():
                continue  # a blank line (a hand edit): nothing lost
            rec = _record(line)
            if rec is not None:
                records[key(rec["point"])] = rec
            elif line.startswith(RECORD_START):
                damaged.append(n)
            else:  # refused before anything in the file changes
                raise SweepError(f"{self.path}:{n} is not a sweep result line; use another --out")
        tail = data[end:]
        if tail and not (tail.startswith(RECORD_START) or RECORD_START.startswith(tail)):
            line_number = data.count(b"\n") + 1
            raise SweepError(f"{self.path}:{line_number} is not a sweep result line; use another --out")
        if damaged:
            self.notes.append(f"note: {self.path}: line(s) {', '.join(map(str, damaged))} are damaged records; "
                              "their points run again")
        if tail and self.readonly is None:  # a torn last line (power loss): drop it, its point runs again
            os.ftruncate(self.fd, end)
        return records

    def add(self, point, result):
        """Append one record, whole, or raise SweepError with the file as it was."""
        rec = {"point": point, "result": result}
        line = (_dumps(rec) + "\n").encode()
        if self.readonly is not None:
            raise SweepError(f"cannot write {self.path!r}: {self.readonly}")
        before = os.fstat(self.fd).st_size
        try:
            written = 0
            while written < len(line):  # a short write (a disk almost full) is finished, not dropped
                written += os.write(self.fd, line[written:])
        except OSError as e:
            try:
                os.ftruncate(self.fd, before)  # no half line left behind
            except OSError:
                pass
            raise SweepError(f"cannot write the results to {self.path!r}: {e.strerror}; {len(self.records)} "
                             "points are in it; run the same command again to do the rest") from None
        self.records[key(point)] = rec

    def close(self):
        if self.created and not self.records:
            try:  # still locked: nobody else can have written to it
                if os.fstat(self.fd).st_size == 0:
                    os.unlink(self.path)
            except OSError:
                pass
        os.close(self.fd)


RECORD_START = b'{"point"'
MAX_RESULTS_BYTES = 2 ** 30  # a million points' records are some hundred MB; /dev/zero is endless


def _record(line):
    """The record a results line holds, or None: a JSON object with a "point" object and a
    "result" that ``summarise`` can read (an error, a training summary, a diagnosis)."""
    try:
        rec = json.loads(line)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than json can read
        return None
    if not (isinstance(rec, dict) and isinstance(rec.get("point"), dict) and isinstance(rec.get("result"), dict)):
        return None
    result = rec["result"]
    if "error" in result:
        return rec
    if "eval_loss" in result:
        return rec if "baseline_loss" in result else None
    final = result.get("after_training", result)
    return rec if isinstance(final, dict) and "horizon" in final and "final_verdict" in result else None


def _dumps(record):
    """JSON that is JSON, as ``train --json`` writes it: a non-finite number (a diverged
    loss) is null, and the result's ``nonfinite`` lists where."""
    found = []
    result = safeio.json_safe(record["result"], found=found)
    if found and isinstance(result, dict):
        result["nonfinite"] = found
    return json.dumps(dict(record, result=result), allow_nan=False)


# ---- running a sweep -----------------------------------------------------------------------

def _scheduler_address(scheduler):
    """An address as given, or the one in a scheduler file (``dask scheduler --scheduler-file``)."""
    if "://" in scheduler or not (os.sep in scheduler or scheduler.endswith(".json") or os.path.isfile(scheduler)):
        return scheduler
    try:
        if not stat.S_ISREG(os.stat(scheduler).st_mode):  # a FIFO would wait for a writer
            raise SweepError(f"the scheduler file {scheduler!r} is not a regular file")
        with open(scheduler, encoding="utf-8") as f:
            address = json.load(f).get("address")
    except OSError as e:
        raise SweepError(f"cannot read the scheduler file {scheduler!r}: {e.strerror}") from None
    except (ValueError, AttributeError, RecursionError):
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
    quiet = [logging.getLogger(name) for name in ("distributed.client", "distributed.core", "distributed.comm")]
    levels = [q.level for q in quiet]
    for q in quiet:  # a lost scheduler is said once, by the sweep, not as chained tracebacks
        q.setLevel(logging.CRITICAL)
    try:
        yield client
    finally:
        try:
            client.close(timeout=10)
        except Exception:  # noqa: BLE001 (closing a client whose scheduler is gone)
            pass
        if cluster is not None:
            cluster.close()
        for q, level in zip(quiet, levels):
            q.setLevel(level)


def check_outputs(out, plot=None):
    """Refuse, before any work, ``--out`` and ``--plot`` on one file (the plot would replace
    the results), either on a plugin's source, or ``--out`` on something that is not a
    regular file (a FIFO would wait for a writer, a device never ends)."""
    safeio.check_outputs([("--out", out), ("--plot", plot)], plugin_files(), {"--plot": safeio.PLOT})


def run(points, out, workers=None, scheduler=None, plugins=(), log=None, plot=None, retry_failed=False):
    """Run the points not yet in ``out`` on Dask and append each result as it finishes.

    ``plot``: the path the caller will plot to, checked against ``out`` first.
    ``retry_failed``: run again the points whose result is an error (a full disk, a plugin
    bug since fixed); the new record is appended and is the one read back.

    Returns ``(records, stats)``: every point's record (read back or new) in grid order,
    and counts (skipped, ran, failed, kernels compiled in warm-up and in tasks, seconds).
    ``log(message)`` gets one progress line per finished point.
    """
    log = log or (lambda msg: None)
    if scheduler is not None and not scheduler.strip():
        raise SweepError("--scheduler: the address is empty; give tcp://host:port or a scheduler file, "
                         "or leave --scheduler out for a local cluster")
    plugins = tuple(os.path.abspath(s) if s.endswith(".py") else s for s in plugins)
    check_outputs(out, plot)
    results = Results(out)
    for note in results.notes:
        log(note)
    def done(p):
        rec = results.records.get(key(p))
        return rec is not None and not (retry_failed and "error" in rec["result"])
    todo = list({key(p): p for p in points if not done(p)}.values())
    if todo and results.readonly is not None:
        results.close()
        raise SweepError(f"cannot write {out!r} ({results.readonly}) and {len(todo)} of its {len(points)} points "
                         "are still to run; make it writable or use another --out")
    stats = {"points": len(points), "skipped": len(points) - len(todo), "ran": 0, "errors": 0, "failed": 0,
             "compiled_warm_up": 0, "compiled_tasks": 0, "seconds": 0.0}
    t0 = time.perf_counter()
    try:
        if todo:
            log(f"{stats['skipped']} of {len(points)} points already in {out}; running {len(todo)}")
            # no more local workers than points: the others would only start and wait
            with connect(min(workers or os.cpu_count() or 1, len(todo)), scheduler) as client:
                try:
                    _sweep(client, todo, results, plugins, stats, log)
                except (SweepError, KeyboardInterrupt):
                    raise
                except Exception:  # a call to a scheduler that is gone (in the warm-up, say): one line
                    if client.status == "running":
                        raise
                    _Watch(client, results, stats, log).lost()
        else:
            log(f"all {len(points)} points already in {out}")
    except KeyboardInterrupt:
        raise SweepError(f"interrupted: {stats['ran']} points written to {out}; "
                         "run the same command again to do the rest") from None
    finally:
        results.close()
    stats["seconds"] = time.perf_counter() - t0
    return [results.records[key(p)] for p in points if key(p) in results.records], stats


WORKERLESS_WAIT = 60  # seconds without any worker before the sweep gives up (as at start-up)
WORKERLESS_NOTE = 5  # ...and before it says so (a nanny restarts a worker in about 2 s)
POLL = 1.0  # seconds between looks at the cluster while waiting for tasks


class _Watch:
    """Waits on futures while watching the cluster: says when no worker is left, gives up
    after WORKERLESS_WAIT seconds of that, and says when one joins again."""

    def __init__(self, client, results, stats, log):
        self.client, self.results, self.stats, self.log = client, results, stats, log
        self.alone_since, self.said = None, False

    def workers(self):
        try:
            return self.client.scheduler_info()["workers"]
        except Exception:  # noqa: BLE001 (the scheduler gone: OSError, CommClosedError, TimeoutError...)
            self.lost()

    def lost(self):
        raise SweepError(f"lost the Dask scheduler at {self.client.scheduler.address}: {self.stats['ran']} points "
                         f"written to {self.results.path}; run the same command again to do the rest") from None

    def wait(self, futures, gone=None):
        """The futures done among ``futures`` (at least one), watching the cluster meanwhile;
        an empty set as soon as ``gone()`` is true."""
        from distributed import wait
        while True:
            try:
                done, _ = wait(futures, timeout=POLL, return_when="FIRST_COMPLETED")
                if done:
                    return done
            except TimeoutError:  # nothing finished in this look
                pass
            except Exception:  # noqa: BLE001 (futures cancelled: by a lost scheduler, or by hand)
                if self.client.status != "running":
                    self.lost()
                return {f for f in futures if f.done()}
            self.check()
            if gone is not None and gone():
                return set()

    def check(self):
        if self.workers():
            if self.said:
                self.log("a Dask worker joined: going on")
            self.alone_since, self.said = None, False
            return
        now = time.monotonic()
        if self.alone_since is None:
            self.alone_since = now
        elif now - self.alone_since > WORKERLESS_NOTE and not self.said:  # not a nanny's quick restart
            self.said = True
            self.log(f"no Dask worker is left on the scheduler at {self.client.scheduler.address}; waiting up to "
                     f"{WORKERLESS_WAIT} s for one to join")
        elif now - self.alone_since > WORKERLESS_WAIT:
            raise SweepError(f"no Dask worker for {WORKERLESS_WAIT} s: {self.stats['ran']} points written to "
                             f"{self.results.path}; start workers and run the same command again to do the rest")


def _sweep(client, todo, results, plugins, stats, log):
    info = client.scheduler_info()["workers"]
    if not info:
        try:
            client.wait_for_workers(1, timeout=WORKERLESS_WAIT)
        except TimeoutError:
            raise SweepError(f"no Dask worker joined the scheduler at {client.scheduler.address} "
                             f"within {WORKERLESS_WAIT} s") from None
        info = client.scheduler_info()["workers"]
    watch = _Watch(client, results, stats, log)
    _warm_up(client, todo, plugins, stats, log, info, watch)
    cores = client.run(blas_core)
    odd = sorted(a for a, core in cores.items() if core != blas_core())
    if odd:
        log(f"warning: OpenBLAS kernels on {len(odd)} worker(s) ({cores[odd[0]]}) differ from this process's "
            f"({blas_core()}): results may differ from serial runs in the last bits; start workers with "
            "python -m tinygrad_rnn.distributed.worker")
    futures = {client.submit(run_point, p, plugins, pure=False, key=f"point-{i}-{hash(key(p)) & 0xffffffff:x}"): p
               for i, p in enumerate(todo)}
    keys = varying(todo) or ["cell", "seq_len"]
    while futures:
        for fut in watch.wait(list(futures)):
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


def _warm_up(client, todo, plugins, stats, log, info, watch):
    """Compile once per machine before the sweep fans out: one worker per host runs each
    distinct code path at toy sizes and fills the Numba cache the others then load.

    Only a head start: if the worker dies (a plugin that crashes its process, a nanny's
    restart) or a warm-up task fails, the warm-up on that host stops there, with a note,
    and the points (which survive what Dask survives) compile their own kernels."""
    hosts = {}
    for addr, w in sorted(info.items()):
        hosts.setdefault(w.get("host", addr), addr)
    warm = list({key(warm_up_point(p)): warm_up_point(p) for p in todo}.values())
    for addr in hosts.values():
        for p in warm:
            fut = client.submit(run_point, p, plugins, workers=[addr], allow_other_workers=True, pure=False)
            # tied to one worker: if it goes, Dask may never run the task again
            if not watch.wait([fut], gone=lambda: addr not in watch.workers()):
                why = f"its worker {addr} is gone"
            else:
                try:
                    _, facts = fut.result()
                    stats["compiled_warm_up"] += facts["compiled"]
                    continue
                except Exception as e:  # noqa: BLE001 (a worker killed while warming up, say)
                    why = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}"
            fut.cancel()
            log(f"note: warm-up stopped ({why}); the points compile their own kernels")
            return


# ---- reading results ---------------------------------------------------------------------

def varying(points):
    """The grid options that take more than one value among ``points``."""
    return [k for k in GRID + ("seed",) if len({json.dumps(p.get(k)) for p in points}) > 1]


def describe(point, keys=GRID + ("seed",)):
    return " ".join(f"{k}={point[k]}" for k in keys if k in point)


def _loss(result):
    """A result's eval loss; a non-finite one is written as null (JSON has no Infinity)."""
    return math.inf if result["eval_loss"] is None else result["eval_loss"]


def solved(result):
    return "eval_loss" in result and _loss(result) < SOLVED_FRACTION * result["baseline_loss"]


def headline(result):
    if "error" in result:
        return result["error"]
    if "eval_loss" in result:
        return (f"eval loss {_loss(result):.4g} (baseline {result['baseline_loss']:.3g})"
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
            row.update(eval_loss=statistics.median(_loss(x) for x in ok),
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
            else:  # as a fraction of T: a horizon of 40 is all of T=40 but little of T=400
                grid_[i, j] = r["horizon"] / r["seq_len"]
                notes[i, j] = f"{r['horizon']:g}\n{','.join(v[:4] for v in r['verdicts'])}"
        if training_mode:
            im = ax.imshow(grid_, cmap="viridis_r", norm=LogNorm(vmin=1e-3, vmax=1.5), aspect="auto")
        else:
            im = ax.imshow(grid_, cmap="viridis", vmin=0, vmax=1, aspect="auto")
        for (i, j), text in notes.items():
            # text in black on the light end of each colour map, white on the dark end
            # (viridis_r is dark at high loss ratios, viridis at small horizon fractions)
            dark = grid_[i, j] > 0.1 if training_mode else grid_[i, j] < 0.6
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
                 else "colour: gradient horizon / T\ntext: horizon (steps), verdicts")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
