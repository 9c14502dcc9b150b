"""Hand-made files nested deeper than Python's json can read (a RecursionError, not a
ValueError) are refused like any other damaged file: one line, the file untouched."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

import cli
from tinygrad_rnn import checkpoint, safeio
from tinygrad_rnn.distributed import sweep

DEEP = "[" * 100_000  # json's C decoder gives up near the interpreter's recursion limit (1000 deep)

pytestmark = pytest.mark.usefixtures("clean_plugins")


def _checkpoint_with_header(path, header):
    np.savez(path, **{"__meta__": np.frombuffer(header.encode(), np.uint8),
                      "param/w": np.zeros(2, np.float32)})


def test_a_checkpoint_header_nested_too_deep_is_a_one_line_error_and_is_kept(tmp_path):
    path = tmp_path / "deep.npz"
    _checkpoint_with_header(path, '{"format": ' + DEEP)
    before = path.read_bytes()
    with pytest.raises(checkpoint.CheckpointError, match="has a corrupt header"):
        checkpoint.load(str(path))
    assert checkpoint.is_checkpoint(str(path)) is False
    result = CliRunner().invoke(cli.main, ["train", "--resume", str(path), "--steps", "2"])
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "has a corrupt header" in lines[0], result.output
    result = CliRunner().invoke(cli.main, ["train", "--cell", "rnn", "--task", "sum", "--seq-len", "3",
                                           "--hidden", "2", "--batch", "2", "--steps", "1", "--save", str(path)])
    assert result.exit_code == 1 and "is not a tinygrad_rnn checkpoint" in result.stderr, result.output
    assert path.read_bytes() == before


def test_a_log_line_nested_too_deep_is_not_a_log(tmp_path):
    path = tmp_path / "deep.jsonl"
    path.write_text(DEEP + "\n")
    assert safeio.read_log(str(path)) is None


def test_a_results_line_nested_too_deep_is_a_damaged_line(tmp_path):
    assert sweep._record('{"point": ' + DEEP) is None


def test_a_scheduler_file_nested_too_deep_is_not_a_scheduler_file(tmp_path):
    path = tmp_path / "sched.json"
    path.write_text(json.dumps({"x": 1})[:-1] + ', "address": ' + DEEP)
    with pytest.raises(sweep.SweepError, match="is not a Dask scheduler file"):
        sweep._scheduler_address(str(path))


@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_a_checkpoint_path_that_exists_but_is_not_a_file_is_not_called_missing(tmp_path, kind):
    import os
    path = tmp_path / "ckpt.npz"
    os.mkfifo(path) if kind == "fifo" else path.mkdir()
    for args in (["train", "--resume", str(path), "--steps", "2"], ["generate", "--checkpoint", str(path)]):
        result = CliRunner().invoke(cli.main, args)
        assert result.exit_code in (1, 2), result.output
        assert "no such checkpoint" not in result.output and "Traceback" not in result.output, result.output
    with pytest.raises(checkpoint.CheckpointError, match="not a regular file|is a folder"):
        checkpoint.load(str(path))


TRAIN = ["train", "--cell", "rnn", "--task", "sum", "--seq-len", "3", "--hidden", "2", "--batch", "2", "--steps", "1"]


def test_a_users_file_at_the_lock_path_is_refused_not_overwritten_and_removed(tmp_path):
    notes = tmp_path / ".run.npz.lock"
    notes.write_text("my notes\n")
    result = CliRunner().invoke(cli.main, [*TRAIN, "--save", str(tmp_path / "run.npz")])
    assert result.exit_code == 1 and "is not a tinygrad_rnn lock file" in result.stderr, result.output
    assert notes.read_text() == "my notes\n" and not (tmp_path / "run.npz").exists()


@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_a_lock_path_that_is_not_a_file_is_one_line(tmp_path, kind):
    import os
    lock = tmp_path / ".run.npz.lock"
    os.mkfifo(lock) if kind == "fifo" else lock.mkdir()  # a FIFO was an EINVAL traceback from ftruncate
    result = CliRunner().invoke(cli.main, [*TRAIN, "--save", str(tmp_path / "run.npz")])
    assert result.exit_code == 1, result.output
    assert len(result.stderr.strip().splitlines()) == 1 and "lock" in result.stderr, result.output


def test_an_output_on_another_outputs_lock_path_is_refused_before_training(tmp_path):
    log = tmp_path / "log"
    result = CliRunner().invoke(cli.main, [*TRAIN, "--save", str(tmp_path / ".log.lock"), "--log", str(log)])
    assert result.exit_code == 1 and "is the lock file of --log" in result.stderr, result.output
    assert not log.exists() and not (tmp_path / ".log.lock").exists()
