"""The error contract: tr.Error is one line in the CLI, anything else is a bug shown in full,
and exceptions in plugin code name the cell or task, its file and line, and the step."""
import textwrap

import pytest
from click.testing import CliRunner

import cli
import tinygrad_rnn as tr
from tinygrad_rnn import training

CELL = """
import tinygrad_rnn as tr

class Faulty(tr.Cell):
    name = "faulty"
    num_states = {num_states}
    def __init__(self, i, h):
        super().__init__(i, h)
        self.w = self.param((h, i))
    def step(self, x, state):
{body}

@tr.hookimpl
def register_cells(register):
    register(Faulty)
"""

TASK = """
import numpy as np
import tinygrad_rnn as tr

class Flaky(tr.tasks.Task):
    name = "flaky"
    def batch(self, rng, batch_size):
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls == 3:
            return {}["missing"]
        return np.ones((self.seq_len, batch_size, 1), np.float32), np.ones((batch_size, 1), np.float32)
    last_step_only = True
    def baseline(self):
        return 1.0

@tr.hookimpl
def register_tasks(register):
    register(Flaky)
"""


pytestmark = pytest.mark.usefixtures("clean_plugins")


def run(*args, env=None):
    return CliRunner().invoke(cli.main, list(args), env=env)


def _cell(tmp_path, body, num_states=1):
    path = tmp_path / "faulty.py"
    path.write_text(CELL.format(num_states=num_states, body=textwrap.indent(textwrap.dedent(body), " " * 8)))
    return str(path)


def test_an_exception_in_a_cell_step_is_one_line_naming_cell_file_line_and_step(tmp_path):
    path = _cell(tmp_path, """
        if x.shape[0] and state[0].numpy().sum() != 0:
            raise ZeroDivisionError("bad arithmetic")
        return ((x @ self.w.T + state[0]).tanh() + 1,)
    """)
    result = run("--plugin", path, "train", "--cell", "faulty", "--task", "sum", "--seq-len", "5",
                 "--hidden", "3", "--batch", "2", "--steps", "1")
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert result.stderr.strip().splitlines() == [
        f"Error: cell 'faulty' (plugin 'faulty', {path}:13, in step) raised ZeroDivisionError: "
        "bad arithmetic at time step 1"]


def test_traceback_flag_and_debug_variable_show_the_whole_traceback(tmp_path):
    path = _cell(tmp_path, "raise ZeroDivisionError('bad arithmetic')\n")
    args = ["train", "--cell", "faulty", "--task", "sum", "--seq-len", "3", "--hidden", "2", "--steps", "1"]
    for result in (run("--traceback", "--plugin", path, *args),
                   run("--plugin", path, *args, env={"TINYGRAD_RNN_DEBUG": "1"})):
        assert result.exit_code == 1
        assert "Traceback (most recent call last)" in result.stderr
        assert 'faulty.py", line 11, in step' in result.stderr  # the user's own frame
        assert "ZeroDivisionError: bad arithmetic" in result.stderr


def test_a_num_states_mismatch_names_the_cell(tmp_path):
    path = _cell(tmp_path, """
        (h,) = state
        return ((x @ self.w.T + h).tanh(), h)
    """, num_states=2)
    tr.load_plugin(path)
    with pytest.raises(tr.errors.UserCodeError, match=r"cell 'faulty' \(plugin 'faulty', .*faulty.py:12, in step\) "
                       r"raised ValueError: too many values to unpack.*num_states=2.*at time step 0"):
        tr.nn.RNN("faulty", 2, 3)(tr.Tensor([[[1.0, 2.0]]]))


def test_an_exception_in_a_task_plugin_names_task_file_line_and_training_step(tmp_path):
    path = tmp_path / "flaky.py"
    path.write_text(TASK)
    result = run("--plugin", str(path), "train", "--cell", "rnn", "--task", "flaky", "--seq-len", "3",
                 "--hidden", "2", "--batch", "2", "--steps", "5")
    assert result.exit_code == 1, result.output
    assert result.stderr.strip().splitlines() == [
        f"Error: task 'flaky' (plugin 'flaky', {path}:10, in batch) raised KeyError: 'missing' at training step 3"]


def test_library_bugs_show_a_traceback_and_ask_for_a_report(monkeypatch):
    def broken(**kwargs):
        raise KeyError("an internal bug")
    monkeypatch.setattr(training, "train", broken)
    result = run("train", "--steps", "1")
    assert result.exit_code == 1
    assert "Traceback (most recent call last)" in result.stderr and "KeyError: 'an internal bug'" in result.stderr
    assert cli.BUG_NOTE in result.stderr


@pytest.mark.parametrize("exc", [tr.errors.ConfigError("bad option --x"), tr.tasks.TaskError("bad data"),
                                 tr.checkpoint.CheckpointError("bad file"), tr.plugins.PluginError("bad plugin"),
                                 tr.errors.UnknownNameError("unknown cell 'x'")])
def test_every_tr_error_is_one_line(monkeypatch, exc):
    assert isinstance(exc, tr.Error)
    monkeypatch.setattr(training, "train", lambda **kw: (_ for _ in ()).throw(exc))
    result = run("train", "--steps", "1")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [f"Error: {exc}"]


def test_error_classes_keep_their_builtin_meaning():
    assert issubclass(tr.tasks.TaskError, ValueError) and issubclass(tr.checkpoint.CheckpointError, ValueError)
    assert issubclass(tr.errors.UnknownNameError, KeyError)
    with pytest.raises(KeyError, match="unknown cell 'nope'"):
        tr.get_cell("nope")
    assert str(tr.errors.UnknownNameError("unknown cell 'x'")) == "unknown cell 'x'"


@pytest.mark.parametrize("command", [("train", "--task", "sum", "--steps", "1"), ("compile",),
                                     ("diagnose", "--seq-len", "3")])
def test_a_cell_whose_constructor_raises_names_the_cell(tmp_path, command):
    path = tmp_path / "badinit.py"
    path.write_text(CELL.format(num_states=1, body="        return state\n").replace(
        "        super().__init__(i, h)\n", "        super().__init__(i, h)\n        1 / 0\n"))
    result = run("--plugin", str(path), command[0], "--cell", "faulty", *command[1:])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        f"Error: cell 'faulty' (plugin 'badinit', {path}:9, in __init__) raised ZeroDivisionError: "
        "division by zero while building the layer"]


def test_a_task_that_raises_in_diagnose_names_the_task(tmp_path):
    path = tmp_path / "flaky.py"
    path.write_text(TASK.replace("if self.calls == 3", "if self.calls == 1"))
    result = run("--plugin", str(path), "diagnose", "--cell", "rnn", "--task", "flaky", "--seq-len", "3")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        f"Error: task 'flaky' (plugin 'flaky', {path}:10, in batch) raised KeyError: 'missing' while diagnosing"]


def test_sys_exit_in_a_cell_step_is_an_error_not_a_silent_exit(tmp_path):
    path = _cell(tmp_path, "import sys\nsys.exit(0)\n")
    result = run("--plugin", path, "train", "--cell", "faulty", "--task", "sum", "--seq-len", "3", "--steps", "1")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        f"Error: cell 'faulty' (plugin 'faulty', {path}:12, in step) raised SystemExit: 0 at time step 0"]
