"""Scale-out: sweeps on Dask (a local cluster; a scheduler and workers as subprocesses, one
killed mid-sweep) and data-parallel training under `mpiexec -n 2`, against serial runs.

Everything listens on 127.0.0.1 only; every subprocess runs in its own session and is
killed, with its children, when the test ends, passed or not.
"""
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner

import cli
import tinygrad_rnn as tr
from tinygrad_rnn.distributed import mpi, sweep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAVE_DASK = all(importlib.util.find_spec(m) for m in ("dask", "distributed"))
needs_dask = pytest.mark.skipif(not HAVE_DASK, reason="needs the distributed extra: pip install -e '.[distributed]'")
MPIEXEC = shutil.which("mpiexec", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
needs_mpi = pytest.mark.skipif(not (importlib.util.find_spec("mpi4py") and MPIEXEC),
                               reason="needs the mpi extra: pip install -e '.[mpi]'")
# MPICH on loopback only: Hydra's proxies connect over lo, and so do the ranks (UCX by
# default, or libfabric's tcp); without UCX_NET_DEVICES the ranks listen on the machine's
# network address too.
MPI_ENV = dict(os.environ, HYDRA_IFACE="lo", UCX_NET_DEVICES="lo", FI_TCP_IFACE="lo", OPENBLAS_NUM_THREADS="1")
TIMINGS = sweep.TIMINGS
TINY = dict(hidden=[4], steps=6, batch=8)


def untimed(result):
    return {k: v for k, v in result.items() if k not in TIMINGS}


def serial(point):
    """The same point run here, as `train --json` would run it."""
    summary = tr.train(cell=point["cell"], task=point["task"], seq_len=point["seq_len"], hidden=point["hidden"],
                       batch=point["batch"], steps=point["steps"], optimizer=point["optimizer"], lr=point["lr"],
                       clip_norm=point["clip_norm"], init_scheme=point["init"], seed=point["seed"])
    return json.loads(json.dumps(summary))


def lines(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def _default_sigint():
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # a background CI job may have it ignored: Ctrl-C tests need it


def popen(args, **kw):
    return subprocess.Popen(args, start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint, **kw)


class Procs:
    """Subprocesses, each in its own session, all killed (with children) at the end."""

    def __init__(self):
        self.procs = []

    def start(self, args, **kw):
        p = popen(args, **kw)
        self.procs.append(p)
        return p

    def kill(self, p):
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait(timeout=30)

    def close(self):
        for p in self.procs:
            self.kill(p)
            for stream in (p.stdout, p.stderr):
                stream.close()


def run(args, timeout, **kw):
    """subprocess.run in a session of its own, killed whole (mpiexec's ranks too) on a timeout."""
    p = popen(args, **kw)
    try:
        out, err = p.communicate(timeout=timeout)
    except BaseException:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        raise
    return subprocess.CompletedProcess(args, p.returncode, out, err)


@pytest.fixture
def procs():
    ps = Procs()
    try:
        yield ps
    finally:
        ps.close()


def listening(procs):
    """(ip, port) of every socket the subprocesses and their children listen on."""
    import psutil
    found = set()
    for p in procs.procs:
        try:
            tree = [psutil.Process(p.pid)] + psutil.Process(p.pid).children(recursive=True)
            for q in tree:
                found |= {c.laddr[:2] for c in q.net_connections("inet") if c.status == psutil.CONN_LISTEN}
        except psutil.NoSuchProcess:
            pass
    return found


def wait_for(condition, timeout, what):
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


# ---- the grid, without Dask -----------------------------------------------------------

def test_grid_from_repeated_and_comma_separated_values():
    cells = sweep.parse_values("cell", ("rnn,lstm", "gru", "rnn"))
    assert cells == ["rnn", "lstm", "gru"]
    assert sweep.parse_values("lr", ("1e-3,0.001", "0.01")) == [0.001, 0.01]
    assert sweep.parse_values("clip_norm", ("none,1",)) == [None, 1.0]
    points = sweep.grid("train", seeds=2, steps=5, cell=cells, seq_len=[10, 20])
    assert len(points) == 3 * 2 * 2 and len({sweep.key(p) for p in points}) == 12
    assert {p["seed"] for p in points} == {0, 1}
    assert points[0] == {"cell": "rnn", "task": "adding", "seq_len": 10, "hidden": 64, "init": "pytorch",
                         "lr": 0.001, "optimizer": "adam", "clip_norm": None, "steps": 5, "batch": 32,
                         "seed": 0, "mode": "train"}
    d = sweep.grid("diagnose", cell=["rnn"])[0]
    assert "optimizer" not in d and d["steps"] == 0 and d["clip_norm"] == 1.0


@pytest.mark.parametrize("args, message", [
    (["--seq-len", "10,abc"], "'abc'"),
    (["--seq-len", "1"], ">= 2"),
    (["--cell", "nope"], "nope"),
    (["--lr", "-1"], "> 0"),
    (["--lr", "nan"], "finite"),
    (["--init", "bogus"], "choose from"),
    (["--cell", "rnn,,gru"], "empty"),
    (["--seeds", "0"], "0"),
    (["--mode", "diagnose", "--optimizer", "sgd"], "--mode train only"),
    (["--seeds", "99999999999999999999"], "the grid has 299,999,999,999,999,999,997 points"),  # was an OverflowError
    (["--seeds", "100000000", "--cell", "rnn"], "more than the 1,000,000 a sweep takes"),  # was minutes of building
])
def test_bad_grid_values_are_usage_errors(tmp_path, args, message):
    result = CliRunner().invoke(cli.main, ["sweep", "--out", str(tmp_path / "r.jsonl"), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert len([line for line in result.output.splitlines() if line.strip()]) == 3  # usage, hint, error
    assert not (tmp_path / "r.jsonl").exists()


def test_results_file_drops_a_torn_last_line_and_refuses_foreign_files(tmp_path):
    point = sweep.grid("train", cell=["rnn"], steps=1)[0]
    out = tmp_path / "r.jsonl"
    out.write_text(json.dumps({"point": point, "result": {"eval_loss": 1, "baseline_loss": 2}}) + "\n" + '{"point": {"cell": "ls')
    results = sweep.Results(str(out))
    assert list(results.records) == [sweep.key(point)]
    with pytest.raises(sweep.SweepError, match="another sweep"):
        sweep.Results(str(out))  # locked while the first one is open
    results.close()
    assert out.read_text().endswith("}\n")
    out.write_text("hello\n")
    with pytest.raises(sweep.SweepError, match="r.jsonl:1 is not a sweep result"):
        sweep.Results(str(out))


# ---- sweeps on Dask --------------------------------------------------------------------

@pytest.mark.slow
@needs_dask
def test_sweep_on_a_local_cluster_of_2_equals_serial_runs_and_resumes(tmp_path, monkeypatch):
    out = str(tmp_path / "results.jsonl")
    points = sweep.grid("train", seeds=2, cell=["rnn", "gru"], seq_len=[5, 9], **TINY)
    logged = []
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "numba"))  # a cold cache, for the workers only
    records, stats = sweep.run(points[:5], out, workers=2, log=logged.append)
    assert stats["ran"] == 5 and stats["failed"] == 0 and len(lines(out)) == 5
    # The warm-up compiled the kernels once, on one worker; no task compiled any.
    assert stats["compiled_warm_up"] > 0 and stats["compiled_tasks"] == 0
    monkeypatch.delenv("NUMBA_CACHE_DIR")
    assert any(m.startswith("[5/5]") for m in logged)
    # Bit for bit the serial run, timings aside.
    for rec in lines(out)[:2]:
        assert untimed(rec["result"]) == untimed(serial(rec["point"]))
    # Re-run with the whole grid: the 5 finished points are skipped, no line twice.
    records, stats = sweep.run(points, out, workers=2)
    assert (stats["skipped"], stats["ran"]) == (5, 3)
    got = lines(out)
    assert len(got) == 8 and len({sweep.key(r["point"]) for r in got}) == 8
    assert [r["point"] for r in records] == points
    rows = sweep.table(records)
    assert len(rows) == 1 + 4 and "solved" in rows[0]


@pytest.mark.slow
@needs_dask
def test_local_cluster_listens_on_loopback_only():
    import psutil
    me = psutil.Process()
    with sweep.connect(workers=2) as client:
        client.wait_for_workers(2, timeout=60)
        tree = [me] + me.children(recursive=True)
        ips = {c.laddr[0] for p in tree for c in p.net_connections("inet") if c.status == psutil.CONN_LISTEN}
    assert len(tree) >= 3 and ips == {"127.0.0.1"}


@pytest.mark.slow
@needs_dask
def test_diagnose_sweep_equals_the_cells_record_of_diagnose(tmp_path):
    out = str(tmp_path / "d.jsonl")
    points = sweep.grid("diagnose", cell=["lstm"], seq_len=[6], hidden=[3], batch=4)
    records, _ = sweep.run(points, out, workers=1)
    report = tr.report.diagnose(("lstm",), "adding", 6, "pytorch", 0, 3, batch=4, seed=0)
    assert records[0]["result"] == json.loads(json.dumps(report["cells"][0], default=lambda v: v.tolist()))
    sweep.plot(records, str(tmp_path / "d.png"))
    assert (tmp_path / "d.png").stat().st_size > 1000


@pytest.mark.slow
@needs_dask
def test_ctrl_c_then_the_same_command_loses_and_repeats_nothing(tmp_path, procs):
    out = str(tmp_path / "r.jsonl")
    args = [sys.executable, os.path.join(ROOT, "cli.py"), "sweep", "--cell", "rnn,gru", "--seq-len", "30,40",
            "--seeds", "3", "--hidden", "16", "--steps", "150", "--workers", "2", "--out", out]
    first = procs.start(args, cwd=str(tmp_path))
    wait_for(lambda: os.path.exists(out) and len(lines(out)) >= 1 or first.poll() is not None, 240, "a result")
    os.killpg(first.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole process group
    _, stderr = first.communicate(timeout=60)
    assert first.returncode == 1 and "Traceback" not in stderr, stderr
    assert stderr.strip().splitlines()[-1].startswith("Error: interrupted: ")
    done = len(lines(out))  # every line whole (lines() parses each)
    assert 1 <= done < 12
    again = run(args, timeout=240, cwd=str(tmp_path))
    assert again.returncode == 0, again.stderr
    assert f"{12 - done} run, {done} already done, 0 not run" in again.stderr
    got = lines(out)
    assert len(got) == 12 and len({sweep.key(r["point"]) for r in got}) == 12


@pytest.mark.slow
@needs_dask
@pytest.mark.parametrize("where, message", [
    ("tcp://127.0.0.1:9", "cannot reach the Dask scheduler"),  # nothing listens there: a 10 s timeout
    ("tcp://127.0.0.1:port", "cannot reach the Dask scheduler"),
    ("bogus://x", "unknown address scheme"),
    ("missing/sched.json", "cannot read the scheduler file"),
    ("garbage.json", "not a Dask scheduler file"),
])
def test_bad_scheduler_is_one_line(tmp_path, where, message):
    (tmp_path / "garbage.json").write_text("garbage")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path)
        result = CliRunner().invoke(cli.main, ["sweep", "--cell", "rnn", "--steps", "1", "--out", "r.jsonl",
                                               "--scheduler", where])
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output
    assert result.output.strip().splitlines()[-1].startswith("Error: ")


@pytest.mark.slow
@needs_dask
def test_sweep_on_a_scheduler_and_2_workers_survives_a_killed_worker(tmp_path, procs):
    sched_file = str(tmp_path / "scheduler.json")
    bindir = os.path.dirname(sys.executable)
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if "OPENBLAS_CORETYPE" not in os.environ:  # NumPy came first here: let the subprocesses match
        env["TINYGRAD_RNN_NO_BLAS_TUNING"] = "1"
    procs.start([os.path.join(bindir, "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0",
                 "--dashboard-address", "127.0.0.1:0", "--scheduler-file", sched_file], env=env)
    wait_for(lambda: os.path.exists(sched_file), 60, "the scheduler file")
    workers = [procs.start([sys.executable, "-m", "tinygrad_rnn.distributed.worker", "--scheduler-file", sched_file,
                            "--host", "127.0.0.1", "--nthreads", "1", "--dashboard-address", "127.0.0.1:0",
                            "--name", f"w{i}"], env=env)
               for i in range(2)]
    wait_for(lambda: len(listening(procs)) >= 5, 60, "the workers to listen")
    assert {ip for ip, _ in listening(procs)} == {"127.0.0.1"}
    out = str(tmp_path / "results.jsonl")
    # 8 points of about half a second each, so that the kill lands mid-sweep.
    args = [sys.executable, os.path.join(ROOT, "cli.py"), "sweep", "--scheduler", sched_file, "--out", out,
            "--cell", "rnn,gru", "--seq-len", "20,30", "--seeds", "2", "--hidden", "16", "--steps", "60"]
    client = procs.start(args, env=env, cwd=str(tmp_path))
    wait_for(lambda: os.path.exists(out) and len(lines(out)) >= 2 or client.poll() is not None, 240,
             "the first results")
    assert client.poll() is None, client.stderr.read()
    procs.kill(workers[1])  # the worker and its nanny: gone for good, mid-sweep
    stdout, stderr = client.communicate(timeout=240)
    assert client.returncode == 0, stderr
    got = lines(out)
    assert len(got) == 8 and len({sweep.key(r["point"]) for r in got}) == 8
    assert "8 run, 0 already done, 0 not run" in stderr and "warning" not in stderr
    # A point computed on a cluster equals the serial run too.
    assert untimed(got[-1]["result"]) == untimed(serial(got[-1]["point"]))


# ---- data-parallel training over MPI --------------------------------------------------

def test_split_covers_the_batch_in_order():
    assert mpi.split(7, 3) == [(0, 3), (3, 5), (5, 7)]
    assert mpi.split(4, 1) == [(0, 4)]


@pytest.mark.slow
@needs_mpi
def test_mpiexec_2_equals_the_single_process_run_and_resumes(tmp_path):
    common = ["--cell", "lstm", "--task", "adding", "--seq-len", "12", "--hidden", "8", "--batch", "9",
              "--lr", "1e-2", "--clip-norm", "0.5", "--dtype", "float64", "--json"]
    env = MPI_ENV

    def mpirun(*args):
        cmd = [MPIEXEC, "-iface", "lo", "-n", "2", sys.executable, os.path.join(ROOT, "cli.py"), "train",
               "--distributed", *common, *args]
        r = run(cmd, timeout=180, env=env, cwd=str(tmp_path))
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)  # one JSON document: rank 1 printed nothing

    single = tr.train(cell="lstm", task="adding", seq_len=12, hidden=8, batch=9, steps=20, lr=1e-2, clip_norm=0.5,
                      dtype="float64")
    straight = mpirun("--steps", "20")
    assert straight["processes"] == 2
    for k in ("train_loss", "eval_loss"):
        assert straight[k] == pytest.approx(single[k], rel=1e-7, abs=0)
    mpirun("--steps", "10", "--save", "half.npz", "--log", "log.jsonl", "--log-every", "5")
    resumed = mpirun("--steps", "20", "--resume", "half.npz")
    assert resumed["start_step"] == 10
    assert resumed["eval_loss"] == pytest.approx(single["eval_loss"], rel=1e-7, abs=0)
    assert [r["step"] for r in lines(tmp_path / "log.jsonl")] == [5, 10]  # rank 0 alone logs
    assert sorted(os.listdir(tmp_path)) == ["half.npz", "log.jsonl"]


@pytest.mark.slow
@needs_mpi
def test_mpiexec_2_with_truncated_bptt_saves_the_whole_batchs_state(tmp_path):
    """Each rank carries its shard's state across chunks; the checkpoint gathers all of it,
    so a 2-process run resumes in 1 process where the straight run would be."""
    opts = dict(cell="gru", task="text", seq_len=20, bptt=10, hidden=8, batch=6, dtype="float64")
    cmd = [MPIEXEC, "-iface", "lo", "-n", "2", sys.executable, os.path.join(ROOT, "cli.py"), "train", "--distributed",
           "--cell", "gru", "--task", "text", "--seq-len", "20", "--bptt", "10", "--hidden", "8", "--batch", "6",
           "--dtype", "float64", "--steps", "6", "--save", str(tmp_path / "six.npz")]
    r = run(cmd, timeout=180, env=MPI_ENV)
    assert r.returncode == 0, r.stderr
    resumed = tr.train(steps=12, resume=str(tmp_path / "six.npz"), **opts)
    straight = tr.train(steps=12, **opts)
    assert resumed["eval_loss"] == pytest.approx(straight["eval_loss"], rel=1e-7, abs=0)


PROBE = """
import os, psutil
from mpi4py import MPI
comm = MPI.COMM_WORLD
comm.Allreduce(MPI.IN_PLACE, bytearray(8), op=MPI.BOR)
def listening(p):
    return {(c.laddr[0], c.laddr[1]) for c in p.net_connections("inet") if c.status == psutil.CONN_LISTEN}
me = psutil.Process(os.getpid())
own = listening(me) - listening(me.parent())  # not counting Hydra's control port, inherited
found = comm.gather(sorted({ip for ip, _ in own}))
if comm.Get_rank() == 0:
    print(found)
"""


@pytest.mark.slow
@needs_mpi
@pytest.mark.skipif(not importlib.util.find_spec("psutil"), reason="needs psutil (comes with the distributed extra)")
def test_mpi_ranks_listen_on_loopback_only(tmp_path):
    (tmp_path / "probe.py").write_text(PROBE)
    r = run([MPIEXEC, "-iface", "lo", "-n", "2", sys.executable, str(tmp_path / "probe.py")], timeout=120, env=MPI_ENV)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[['127.0.0.1'], ['127.0.0.1']]"


@pytest.mark.slow
@needs_mpi
def test_distributed_batch_smaller_than_the_ranks_is_one_line(tmp_path):
    cmd = [MPIEXEC, "-iface", "lo", "-n", "2", sys.executable, os.path.join(ROOT, "cli.py"), "train", "--distributed",
           "--cell", "rnn", "--seq-len", "4", "--hidden", "2", "--batch", "1", "--steps", "2"]
    r = run(cmd, timeout=120, env=MPI_ENV)
    assert r.returncode != 0
    assert "cannot be split across 2 processes" in r.stderr and "Traceback" not in r.stderr


def test_missing_extras_are_one_line_errors(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "dask.distributed", None)
    r = CliRunner().invoke(cli.main, ["train", "--distributed", "--cell", "rnn", "--steps", "1"])
    assert r.exit_code == 1 and "pip install 'tinygrad-rnn[mpi]'" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(cli.main, ["sweep", "--cell", "rnn", "--steps", "1", "--out", str(tmp_path / "r.jsonl")])
    assert r.exit_code == 1 and "pip install 'tinygrad-rnn[distributed]'" in r.output and "Traceback" not in r.output


def test_cell_options_reach_every_point_of_a_sweep():
    points = sweep.grid("train", steps=3, cell=["rnn"], cell_options={"nonlinearity": "relu"})
    assert points[0]["cell_options"] == {"nonlinearity": "relu"}
    assert "cell_options" not in sweep.grid("train", steps=3, cell=["rnn"])[0]  # earlier files' keys unchanged
    result, _ = sweep.run_point(dict(points[0], seq_len=5, hidden=4, batch=2))
    assert "error" not in result and result["steps"] == 3


def test_sweep_refuses_a_bad_cell_option_before_starting():
    from click.testing import CliRunner
    import cli
    result = CliRunner().invoke(cli.main, ["sweep", "--cell", "rnn", "--cell-option", "nonlinearity=sigmoid",
                                           "--out", "never.jsonl"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert not os.path.exists("never.jsonl")


def test_distributed_without_mpi4py_says_what_to_install(monkeypatch):
    from tinygrad_rnn.errors import Error
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import mpi4py now raises ImportError
    with pytest.raises(Error, match=r"^distributed training needs mpi4py and an MPI: pip install 'tinygrad-rnn\[mpi\]'$"):
        mpi.world()


def test_distributed_dropout_is_refused_not_silently_different():
    pytest.importorskip("mpi4py")
    from tinygrad_rnn.distributed import mpi
    from tinygrad_rnn.errors import Error
    with pytest.raises(Error, match=r"^dropout=0.2 is not supported in distributed training yet"):
        mpi.train(cell="gru", task="adding", seq_len=5, hidden=4, layers=2, dropout=0.2, steps=1)
    result = CliRunner().invoke(cli.main, ["train", "--distributed", "--cell", "gru", "--task", "adding", "--seq-len",
                                           "5", "--hidden", "4", "--layers", "2", "--dropout", "0.2", "--steps", "1"])
    assert result.exit_code == 1 and "Error: --dropout 0.2 is not supported in distributed training yet" in result.output


def test_diagnose_heatmap_colours_the_horizon_as_a_fraction_of_t(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from matplotlib.axes import Axes
    shown = []
    real = Axes.imshow
    monkeypatch.setattr(Axes, "imshow", lambda self, data, **kw: shown.append((data.copy(), kw)) or real(self, data, **kw))
    records = [{"point": {"mode": "diagnose", "cell": cell, "seq_len": T, "hidden": 4, "seed": 0},
                "result": {"horizon": horizon, "final_verdict": "healthy"}}
               for cell, T, horizon in (("rnn", 40, 40), ("rnn", 400, 40), ("lstm", 40, 20), ("lstm", 400, 400))]
    sweep.plot(records, str(tmp_path / "h.png"))
    (grid, kw), = shown
    # a horizon of 40 is all of T=40 and a tenth of T=400: colours compare across lengths
    np.testing.assert_allclose(grid, [[1.0, 0.1], [0.5, 1.0]])
    assert (kw["vmin"], kw["vmax"]) == (0, 1)
