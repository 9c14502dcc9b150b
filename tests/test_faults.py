"""Scale-out and files under faults (issue 22): nothing lost, nothing hangs.

Each test provokes one fault (a foreign file under --out, a short or failed write, two
runs on one output, a FIFO, a killed worker, a rank that fails alone) and checks what
is guaranteed: the files are whole, the message is one line, the command ends.
"""
import contextlib
import errno
import json
import os
import signal
import subprocess
import sys

import pytest
from click.testing import CliRunner

import cli
from tinygrad_rnn import checkpoint, safeio
from tinygrad_rnn.distributed import sweep
from tinygrad_rnn.training import train

TINY = dict(cell="rnn", task="sum", seq_len=4, hidden=3, batch=2, steps=2)
pytestmark = pytest.mark.usefixtures("clean_plugins")


def invoke(*args):
    return CliRunner().invoke(cli.main, [str(a) for a in args])


def record(point, eval_loss=1.0):
    return json.dumps({"point": point, "result": {"eval_loss": eval_loss, "baseline_loss": 2.0, "seconds": 0.1}})


POINT = sweep.grid("train", cell=["rnn"], steps=1)[0]


# ---- 1: a file that is not a results file is refused untouched ----------------------------

def test_sweep_out_on_a_checkpoint_refuses_it_untouched(tmp_path):
    ckpt = tmp_path / "rnn.npz"
    train(save=str(ckpt), **TINY)
    before = ckpt.read_bytes()
    result = invoke("sweep", "--cell", "rnn", "--steps", "1", "--out", ckpt)
    assert result.exit_code == 1 and "is not a sweep result line" in result.output, result.output
    assert ckpt.read_bytes() == before
    assert checkpoint.is_checkpoint(str(ckpt))


@pytest.mark.parametrize("content", [b"first line\nsecond line without a newline", b"no newline at all",
                                     record(POINT).encode() + b"\nnot a record, no newline"])
def test_a_text_without_a_final_newline_keeps_its_last_line(tmp_path, content):
    out = tmp_path / "notes.txt"
    out.write_bytes(content)
    with pytest.raises(sweep.SweepError, match="is not a sweep result line"):
        sweep.Results(str(out))
    assert out.read_bytes() == content


def test_blank_and_damaged_lines_are_skipped_and_their_points_run_again(tmp_path):
    other = dict(POINT, seed=1)
    out = tmp_path / "r.jsonl"
    damaged = record(other)[:30] + record(dict(POINT, seed=2))  # a record cut short, another appended
    hand_edited = json.dumps({"point": dict(POINT, seed=3), "result": None})
    out.write_text(record(POINT) + "\n\n" + damaged + "\n" + hand_edited + "\n")
    results = sweep.Results(str(out))
    try:
        assert list(results.records) == [sweep.key(POINT)]
        assert results.notes and "line(s) 3, 4" in results.notes[0]
    finally:
        results.close()


# ---- 4: a full disk under --out ------------------------------------------------------------

def test_a_short_write_is_finished_not_dropped(tmp_path, monkeypatch):
    real_write = os.write
    monkeypatch.setattr(sweep.os, "write", lambda fd, data: real_write(fd, data[:7]))  # space comes back slowly
    out = tmp_path / "r.jsonl"
    results = sweep.Results(str(out))
    try:
        for seed in range(3):
            results.add(dict(POINT, seed=seed), {"eval_loss": 1.0, "baseline_loss": 2.0, "seconds": 0.1})
    finally:
        results.close()
    monkeypatch.undo()
    again = sweep.Results(str(out))
    try:
        assert len(again.records) == 3 and not again.notes
    finally:
        again.close()


def test_a_full_disk_is_one_line_and_leaves_whole_lines(tmp_path, monkeypatch):
    out = tmp_path / "r.jsonl"
    out.write_text(record(POINT) + "\n")
    real_write = os.write
    calls = []

    def full(fd, data):
        calls.append(1)
        if len(calls) == 1:
            return real_write(fd, data[:10])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(sweep.os, "write", full)
    results = sweep.Results(str(out))
    try:
        with pytest.raises(sweep.SweepError, match="No space left on device; 1 points are in it"):
            results.add(dict(POINT, seed=1), {"eval_loss": 1.0, "baseline_loss": 2.0, "seconds": 0.1})
    finally:
        results.close()
    assert out.read_text() == record(POINT) + "\n"


# ---- 6: --plot on the --out file -----------------------------------------------------------

def test_plot_on_the_results_file_is_refused_before_any_work(tmp_path):
    out = tmp_path / "results.png"  # a name matplotlib would write
    out.write_text(record(POINT) + "\n")
    link = tmp_path / "link.png"
    link.symlink_to(out)  # also through another name
    for plot in (out, link):
        result = invoke("sweep", "--cell", "rnn", "--steps", "1", "--out", out, "--plot", plot)
        assert result.exit_code == 1 and "both name" in result.output, result.output
        assert out.read_text() == record(POINT) + "\n"


# ---- 5: two runs on one --save or --log -----------------------------------------------------

@pytest.mark.parametrize("option", ["--save", "--log"])
def test_a_second_run_on_the_same_output_is_refused_before_training(tmp_path, option):
    path = tmp_path / ("run.npz" if option == "--save" else "log.jsonl")
    other = subprocess.Popen([sys.executable, "-c", LOCK_AND_WAIT, option, str(path)], stdout=subprocess.PIPE,
                             stdin=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "locked"
        result = invoke("train", "--cell", "rnn", "--task", "sum", "--seq-len", "4", "--hidden", "3", "--steps", "2",
                        option, path)
        assert result.exit_code == 1, result.output
        assert f"is being written by another run (process {other.pid})" in result.output
        assert not path.exists()
    finally:
        other.communicate("")
    train(**{option[2:]: str(path)}, **TINY)  # free again once the other run has ended
    assert path.exists() and not any(p.name.endswith(".lock") for p in tmp_path.iterdir())


LOCK_AND_WAIT = """
import sys
from tinygrad_rnn import safeio
with safeio.lock_outputs([(sys.argv[1], sys.argv[2])]):
    print("locked", flush=True)
    sys.stdin.read()
"""


def test_a_lock_file_left_by_a_killed_run_does_not_block(tmp_path):
    (tmp_path / ".run.npz.lock").write_text("99999999\n")
    train(save=str(tmp_path / "run.npz"), **TINY)
    assert (tmp_path / "run.npz").exists()


# ---- 2, 3: checkpoints under MPI ---------------------------------------------------------------

from test_distributed import MPI_ENV, MPIEXEC, ROOT, needs_mpi, run as run_in_session  # noqa: E402

TEXT_BPTT = ["--cell", "gru", "--task", "text", "--seq-len", "20", "--bptt", "10", "--hidden", "8", "--batch", "6",
             "--dtype", "float64"]


def mpmd(tmp_path, *args, n=2):
    """``mpiexec`` with each rank in its own folder (rank r in tmp_path/r): what a rank
    writes is seen apart from what rank 0 writes."""
    cmd = [MPIEXEC, "-iface", "lo"]
    for rank in range(n):
        (tmp_path / str(rank)).mkdir(exist_ok=True)
        cmd += [":"] * (rank > 0) + ["-n", "1", "-wdir", str(tmp_path / str(rank)), sys.executable,
                                     os.path.join(ROOT, "cli.py"), "train", "--distributed", *map(str, args)]
    return cmd


@needs_mpi
def test_mpi_bptt_snapshots_hold_the_whole_batch_and_rank_0_alone_writes_them(tmp_path):
    """--patience keeps (and writes) the best snapshot: it must hold every shard's carried
    state, so that it resumes; rank 1 writes nothing."""
    r = run_in_session(mpmd(tmp_path, *TEXT_BPTT, "--steps", "6", "--eval-every", "2", "--patience", "9",
                            "--save", "best.npz"), timeout=180, env=MPI_ENV)
    assert r.returncode == 0, r.stderr
    assert os.listdir(tmp_path / "1") == []
    resumed = train(cell="gru", task="text", seq_len=20, bptt=10, hidden=8, batch=6, dtype="float64", steps=8,
                    eval_every=2, patience=9, resume=str(tmp_path / "0" / "best.npz"))
    assert resumed["start_step"] == 6


@needs_mpi
@pytest.mark.slow
def test_ctrl_c_under_mpi_stops_every_rank_at_one_step_and_saves_it(tmp_path):
    from test_distributed import popen, wait_for
    log = tmp_path / "log.jsonl"
    cmd = [MPIEXEC, "-iface", "lo", "-n", "2", sys.executable, os.path.join(ROOT, "cli.py"), "train", "--distributed",
           "--cell", "rnn", "--task", "sum", "--seq-len", "4", "--hidden", "3", "--batch", "4", "--steps", "10000000",
           "--save", "x.npz", "--log", str(log), "--log-every", "20"]
    p = popen(cmd, env=MPI_ENV, cwd=str(tmp_path))
    try:
        wait_for(lambda: log.exists() and log.stat().st_size > 0, 120, "the first log record")
        os.killpg(p.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: every process gets it
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.communicate()
    assert p.returncode == 1, err
    assert "Traceback" not in err and "assert" not in err
    stopped = int(err.split("interrupted at step ")[1].split()[0])
    resumed = train(cell="rnn", task="sum", seq_len=4, hidden=3, batch=4, steps=stopped + 1,
                    resume=str(tmp_path / "x.npz"))
    assert resumed["start_step"] == stopped


# ---- 10: FIFOs and devices ---------------------------------------------------------------------

def _in_time(args, timeout=60):
    """The CLI in a subprocess, which must end (a hang fails the test instead of the suite)."""
    return subprocess.run([sys.executable, os.path.join(ROOT, "cli.py"), *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("where", ["fifo", "/dev/zero", "/dev/full"])
def test_sweep_out_on_a_fifo_or_a_device_is_refused(tmp_path, where):
    if where == "fifo":
        where = tmp_path / "fifo"
        os.mkfifo(where)
    r = _in_time(["sweep", "--cell", "rnn", "--steps", "1", "--out", where])
    assert r.returncode == 1 and "is not a regular file" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_sweep_scheduler_file_on_a_fifo_is_refused(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    r = _in_time(["sweep", "--cell", "rnn", "--steps", "1", "--out", tmp_path / "r.jsonl",
                  "--scheduler", tmp_path / "fifo"])
    assert r.returncode == 1 and "is not a regular file" in r.stderr, r.stderr


def test_train_log_on_a_fifo_nobody_reads_is_refused_and_one_with_a_reader_is_written(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    args = ["train", "--cell", "rnn", "--task", "sum", "--seq-len", "4", "--hidden", "3", "--steps", "2",
            "--log", fifo]
    r = _in_time(args)
    assert r.returncode == 1 and "no process is reading" in r.stderr, r.stderr
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # the pipe's buffer holds the short log
    try:
        r = _in_time(args)
        assert r.returncode == 0, r.stderr
        assert b'"step": 2' in os.read(reader, 1 << 16)
    finally:
        os.close(reader)


# ---- 7, 8: workers lost during the warm-up or all at once ------------------------------------

from test_distributed import needs_dask  # noqa: E402

CRASHES_AT_WARM_UP_SIZE = '''
import os
import tinygrad_rnn as tr


class Crashy(tr.Cell):
    """An Elman cell whose process dies at hidden size 2 (the sweep's warm-up size)."""
    name = "crashy"

    def __init__(self, input_size, hidden_size):
        super().__init__(input_size, hidden_size)
        if hidden_size == 2:
            os._exit(3)
        self.weight_ih = self.param((hidden_size, input_size))
        self.weight_hh = self.param((hidden_size, hidden_size))

    def step(self, x, state):
        (h,) = state
        return ((x @ self.weight_ih.T + h @ self.weight_hh.T).tanh(),)


@tr.hookimpl
def register_cells(register):
    register(Crashy)
'''


@needs_dask
@pytest.mark.slow
def test_a_worker_that_dies_in_the_warm_up_does_not_hang_the_sweep(tmp_path):
    plugin = tmp_path / "crashy.py"
    plugin.write_text(CRASHES_AT_WARM_UP_SIZE)
    out = tmp_path / "r.jsonl"
    r = _in_time(["--plugin", plugin, "sweep", "--cell", "crashy", "--task", "sum", "--seq-len", "4", "--hidden", "3",
                  "--steps", "2", "--batch", "4", "--workers", "1", "--out", out], timeout=240)
    assert r.returncode == 0, r.stderr
    assert "warm-up stopped" in r.stderr and "Traceback" not in r.stderr
    assert "eval_loss" in json.loads(out.read_text())["result"]


@needs_dask
@pytest.mark.slow
def test_every_worker_killed_mid_sweep_is_said_and_ends_the_sweep(tmp_path, monkeypatch):
    import threading
    from test_distributed import Procs, lines, wait_for
    monkeypatch.setattr(sweep, "WORKERLESS_NOTE", 1)
    monkeypatch.setattr(sweep, "WORKERLESS_WAIT", 4)
    procs = Procs()
    try:
        sched_file, _ = _cluster(procs, tmp_path)
        worker = procs.procs[1]
        out = str(tmp_path / "r.jsonl")
        points = sweep.grid("train", cell=["rnn"], task=["sum"], seq_len=[4], hidden=[3], steps=40, batch=4, seeds=30)
        killer = threading.Thread(target=lambda: (wait_for(lambda: os.path.exists(out) and lines(out), 120,
                                                           "a first result"), procs.kill(worker)), daemon=True)
        killer.start()
        said = []
        with pytest.raises(sweep.SweepError, match="no Dask worker for 4 s: .* points written to"):
            sweep.run(points, out, scheduler=sched_file, log=said.append)
        assert any("no Dask worker is left" in s for s in said)
        assert 1 <= len(lines(out)) < 30
    finally:
        procs.close()


# ---- 9, 13: ranks that fail alone or differ ---------------------------------------------------

SUM = ["--cell", "rnn", "--task", "sum", "--seq-len", "4", "--hidden", "3", "--steps", "3"]


def mpmd_each(tmp_path, *per_rank):
    """``mpiexec`` with rank r running ``train --distributed`` + per_rank[r] in tmp_path/r."""
    cmd = [MPIEXEC, "-iface", "lo"]
    for rank, args in enumerate(per_rank):
        (tmp_path / str(rank)).mkdir(exist_ok=True)
        cmd += [":"] * (rank > 0) + ["-n", "1", "-wdir", str(tmp_path / str(rank)), sys.executable,
                                     os.path.join(ROOT, "cli.py"), "train", "--distributed", *map(str, args)]
    return run_in_session(cmd, timeout=120, env=MPI_ENV)


@needs_mpi
@pytest.mark.parametrize("rank_1, named", [(["--lr", "0.01"], "--lr 0.01 on rank 1 but --lr 0.001 on rank 0"),
                                           (["--hidden", "5"], "--hidden 5 on rank 1 but --hidden 3 on rank 0")])
def test_ranks_started_with_different_settings_all_stop_with_one_line(tmp_path, rank_1, named):
    r = mpmd_each(tmp_path, SUM, SUM + rank_1)
    assert r.returncode != 0
    assert named in r.stderr and r.stderr.count("Error:") == 1, r.stderr
    assert "Message truncated" not in r.stderr and "BAD TERMINATION" not in r.stdout + r.stderr


@needs_mpi
def test_ranks_reading_different_data_all_stop(tmp_path):
    text = ["--task", "text", "--data", "corpus.txt", "--cell", "rnn", "--seq-len", "8", "--hidden", "3",
            "--steps", "2"]
    for rank, words in enumerate(["the quick brown fox ", "jumps over the lazy dog "]):
        (tmp_path / str(rank)).mkdir()
        (tmp_path / str(rank) / "corpus.txt").write_text(words * 40)
    r = mpmd_each(tmp_path, text, text)
    assert r.returncode != 0 and "data contents is" in r.stderr, r.stderr


@needs_mpi
def test_a_rank_that_fails_before_mpi_starts_ends_the_job(tmp_path):
    r = mpmd_each(tmp_path, SUM, SUM + ["--no-such-option"])
    assert r.returncode != 0
    assert "No such option" in r.stderr and "rank 1 failed before training" in r.stderr, r.stderr


@needs_mpi
def test_mpiexec_without_distributed_is_refused_on_every_rank(tmp_path):
    r = run_in_session([MPIEXEC, "-iface", "lo", "-n", "2", sys.executable, os.path.join(ROOT, "cli.py"), "train",
                        *SUM, "--save", "x.npz"], timeout=120, env=MPI_ENV, cwd=str(tmp_path))
    assert r.returncode != 0 and "without --distributed" in r.stderr, r.stderr
    assert not (tmp_path / "x.npz").exists()


# ---- 16, 17: JSON, names, empty and read-only files, paths ---------------------------------------

def test_a_non_finite_result_is_written_as_null_with_nonfinite_as_train_json_does(tmp_path):
    out = tmp_path / "r.jsonl"
    results = sweep.Results(str(out))
    try:
        results.add(POINT, {"eval_loss": float("inf"), "baseline_loss": 2.0, "seconds": 0.1})
    finally:
        results.close()
    text = out.read_text()
    assert "Infinity" not in text
    assert json.loads(text)["result"] == {"eval_loss": None, "baseline_loss": 2.0, "seconds": 0.1,
                                          "nonfinite": ["eval_loss"]}
    again = sweep.Results(str(out))
    try:
        assert sweep.table(list(again.records.values()))[1].split()[3] == "inf"  # tabulated, not a traceback
    finally:
        again.close()


def test_cell_names_and_aliases_are_one_cell():
    points = sweep.grid("train", cell=["lstm", "LSTM", "rnn", "elman"], steps=1)
    assert [p["cell"] for p in points] == ["lstm", "rnn"]


def test_an_empty_scheduler_address_is_refused(tmp_path):
    with pytest.raises(sweep.SweepError, match="the address is empty"):
        sweep.run([POINT], str(tmp_path / "r.jsonl"), scheduler="")
    assert not (tmp_path / "r.jsonl").exists()


def test_a_sweep_that_cannot_connect_leaves_no_empty_out(tmp_path):
    with pytest.raises(sweep.SweepError, match="cannot reach"):
        sweep.run([POINT], str(tmp_path / "r.jsonl"), scheduler="nosuchscheme://127.0.0.1:1")
    assert not (tmp_path / "r.jsonl").exists()


def test_a_read_only_complete_results_file_is_tabulated(tmp_path, monkeypatch):
    out = tmp_path / "r.jsonl"
    out.write_text(record(POINT) + "\n")
    out.chmod(0o444)
    real_open = os.open

    def read_only(path, flags, *mode):  # as a user sees it (root may write anyway)
        if os.fspath(path) == str(out) and flags & os.O_RDWR:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
        return real_open(path, flags, *mode)
    monkeypatch.setattr(sweep.os, "open", read_only)
    records, stats = sweep.run([POINT], str(out))
    assert len(records) == 1 and stats["skipped"] == 1
    with pytest.raises(sweep.SweepError, match="still to run"):
        sweep.run([POINT, dict(POINT, seed=1)], str(out))


def test_a_dangling_symlink_save_names_its_target(tmp_path):
    (tmp_path / "dangling.npz").symlink_to(tmp_path / "nodir" / "x.npz")
    with pytest.raises(safeio.OutputError, match="is a symlink to .*nodir/x.npz.*whose folder does not exist"):
        train(save=str(tmp_path / "dangling.npz"), **TINY)


def test_local_workers_are_capped_at_the_points_to_run(tmp_path, monkeypatch):
    asked = []

    class Stop(Exception):
        pass

    def fake_connect(workers, scheduler):
        asked.append(workers)
        raise Stop
    monkeypatch.setattr(sweep, "connect", fake_connect)
    with pytest.raises(Stop):
        sweep.run([POINT, dict(POINT, seed=1)], str(tmp_path / "r.jsonl"), workers=32)
    assert asked == [2]


# ---- 15: --retry-failed -------------------------------------------------------------------------

def test_retry_failed_runs_the_failed_points_again_and_keeps_the_new_result(tmp_path, monkeypatch):
    out = tmp_path / "r.jsonl"
    out.write_text(json.dumps({"point": POINT, "result": {"error": "OSError: No space left on device"}}) + "\n")
    ran = []

    def fake_sweep(client, todo, results, plugins, stats, log):
        ran.extend(todo)
        for p in todo:
            results.add(p, {"eval_loss": 0.5, "baseline_loss": 2.0, "seconds": 0.1})
            stats["ran"] += 1
    monkeypatch.setattr(sweep, "connect", lambda workers, scheduler: contextlib.nullcontext())
    monkeypatch.setattr(sweep, "_sweep", fake_sweep)
    records, stats = sweep.run([POINT], str(out))
    assert ran == [] and "error" in records[0]["result"]  # without the flag: done is done
    records, stats = sweep.run([POINT], str(out), retry_failed=True)
    assert ran == [POINT] and records[0]["result"]["eval_loss"] == 0.5
    records, _ = sweep.run([POINT], str(out), retry_failed=True)
    assert ran == [POINT] and records[0]["result"]["eval_loss"] == 0.5  # read back: the new record wins


# ---- 14: the scheduler killed ---------------------------------------------------------------------

@needs_dask
@pytest.mark.slow
def test_a_killed_scheduler_mid_sweep_is_one_line_without_tracebacks(tmp_path):
    from test_distributed import Procs, lines, wait_for
    procs = Procs()
    try:
        sched_file, env = _cluster(procs, tmp_path)
        out = tmp_path / "r.jsonl"
        client = procs.start([sys.executable, os.path.join(ROOT, "cli.py"), "sweep", "--scheduler", sched_file,
                              "--out", str(out), "--cell", "rnn", "--task", "sum", "--seq-len", "4", "--hidden", "3",
                              "--steps", "40", "--batch", "4", "--seeds", "30"], env=env)
        wait_for(lambda: out.exists() and lines(out) or client.poll() is not None, 120, "a first result")
        procs.kill(procs.procs[0])  # the scheduler
        _, err = client.communicate(timeout=120)
        assert client.returncode == 1, err
        assert "Traceback" not in err and "ERROR" not in err, err
        assert 1 <= len(lines(out)) < 30
    finally:
        procs.close()


def _cluster(procs, tmp_path):
    """A ``dask scheduler`` and one worker without a nanny (so that a kill is for good)."""
    from test_distributed import wait_for
    sched_file = str(tmp_path / "scheduler.json")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if "OPENBLAS_CORETYPE" not in os.environ:
        env["TINYGRAD_RNN_NO_BLAS_TUNING"] = "1"
    procs.start([os.path.join(os.path.dirname(sys.executable), "dask"), "scheduler", "--host", "127.0.0.1",
                 "--port", "0", "--dashboard-address", "127.0.0.1:0", "--scheduler-file", sched_file], env=env)
    wait_for(lambda: os.path.exists(sched_file), 60, "the scheduler file")
    procs.start([sys.executable, "-m", "tinygrad_rnn.distributed.worker", "--scheduler-file", sched_file,
                 "--host", "127.0.0.1", "--nthreads", "1", "--no-nanny", "--dashboard-address", "127.0.0.1:0"],
                env=env)
    return sched_file, env


@needs_mpi
def test_an_error_of_every_rank_in_the_set_up_is_one_line_without_mpi_abort(tmp_path):
    r = run_in_session([MPIEXEC, "-iface", "lo", "-n", "2", sys.executable, os.path.join(ROOT, "cli.py"), "train",
                        "--distributed", *SUM, "--batch", "1"], timeout=120, env=MPI_ENV, cwd=str(tmp_path))
    assert r.returncode == 1, r.stderr
    assert r.stderr.count("cannot be split across 2 processes") == 1, r.stderr
    assert "BAD TERMINATION" not in r.stdout + r.stderr and "Abort" not in r.stderr


def test_ctrl_c_while_the_cli_imports_the_package_is_one_line_not_a_traceback():
    """The console script imports ``cli``, which imports the package and Numba (about half a
    second): a Ctrl-C then showed a KeyboardInterrupt traceback from deep in Numba's
    imports. It ends as any other Ctrl-C does: click's ``Aborted!``, exit 1."""
    script = "\n".join([
        "import sys",
        "class CtrlC:",
        "    def find_spec(self, name, path=None, target=None):",
        "        if name == 'numba':",
        "            raise KeyboardInterrupt",
        "sys.meta_path.insert(0, CtrlC())",
        "sys.argv = ['tinygrad-rnn', 'cells']",
        "from cli import main",  # what the console script does
        "sys.exit(main())"])
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT,
                       stdin=subprocess.DEVNULL)
    assert (r.returncode, r.stderr.strip()) == (1, "Aborted!"), r.stderr
