"""Regressions found by trying the merged CLI as a user would."""
import os
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

import cli
from tinygrad_rnn import checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--hidden", "4", "--seq-len", "5", "--batch", "4"]


def invoke(*args):
    return CliRunner().invoke(cli.main, list(args))


def test_a_finished_cosine_run_resumes(tmp_path):
    ck = str(tmp_path / "cos.npz")
    first = invoke("train", "--cell", "gru", "--steps", "6", "--lr-schedule", "cosine", "--save", ck, *TINY)
    assert first.exit_code == 0, first.output
    assert checkpoint.load(ck)[1]["optim/lr"].item() == 0.0     # where a cosine schedule ends
    again = invoke("train", "--resume", ck, "--steps", "8")
    assert again.exit_code == 0, again.output


def test_cell_options_on_resume_are_checked_against_the_checkpoints_cell(tmp_path):
    ck = str(tmp_path / "relu.npz")
    assert invoke("train", "--cell", "rnn", "--cell-option", "nonlinearity=relu", "--steps", "2", "--save", ck,
                  *TINY).exit_code == 0
    same = invoke("train", "--resume", ck, "--steps", "3", "--cell-option", "nonlinearity=relu")
    assert same.exit_code == 0, same.output
    other = invoke("train", "--resume", ck, "--steps", "4", "--cell-option", "nonlinearity=tanh")
    assert other.exit_code != 0 and "Traceback" not in other.output


def test_ctrl_c_finishes_the_step_and_saves_it(tmp_path):
    ck, log = tmp_path / "int.npz", tmp_path / "int.jsonl"
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "cli.py"), "train", "--cell", "gru",
                             "--steps", "1000000", "--save", str(ck), "--log", str(log), "--log-every", "1",
                             *TINY], cwd=str(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and (not log.exists() or log.read_text().count("\n") < 3):
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, err
    assert "interrupted at step" in err and "Traceback" not in err
    step = checkpoint.load(str(ck))[0]["step"]
    assert step >= 3
    resumed = invoke("train", "--resume", str(ck), "--steps", str(step + 2))
    assert resumed.exit_code == 0, resumed.output


def test_distributed_dropout_is_refused_not_silently_different():
    pytest.importorskip("mpi4py")
    from tinygrad_rnn.distributed import mpi
    from tinygrad_rnn.errors import Error
    with pytest.raises(Error, match="--dropout with --distributed"):
        mpi.train(cell="gru", task="adding", seq_len=5, hidden=4, layers=2, dropout=0.2, steps=1)
