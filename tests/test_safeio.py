"""Nothing lost: outputs checked before any work, atomic writes that keep permissions,
follow symlinks and clean up after themselves (issue 9, item 2)."""
import json
import os
import stat
import subprocess
import sys

import numpy as np
import safetensors.numpy
import pytest
from click.testing import CliRunner

import cli
from tinygrad_rnn import checkpoint, safeio
from tinygrad_rnn.training import train

TINY = dict(cell="rnn", task="sum", seq_len=4, hidden=3, batch=2, steps=2)


pytestmark = pytest.mark.usefixtures("clean_plugins")


def _corpus(tmp_path, name="c.txt"):
    path = tmp_path / name
    path.write_text("the quick brown fox jumps over the lazy dog\n" * 40)
    return path


def run(*args):
    return CliRunner().invoke(cli.main, list(args))


@pytest.mark.parametrize("option", ["--save", "--log"])
def test_an_output_naming_the_data_file_is_refused_before_training(tmp_path, option):
    data = _corpus(tmp_path)
    before = data.read_bytes()
    link = tmp_path / "alias.txt"
    link.symlink_to(data)
    for target in (str(data), str(link)):  # also through another name for the same file
        result = run("train", "--task", "text", "--data", str(data), "--seq-len", "8", "--hidden", "4",
                     "--steps", "1", option, target)
        assert result.exit_code == 1
        assert result.stderr.strip().splitlines() == [
            f"Error: {option} {target!r} is the --data file: writing there would destroy it; choose another path"]
    assert data.read_bytes() == before


def test_save_and_log_on_the_same_file_is_refused(tmp_path):
    result = run("train", "--steps", "1", "--save", str(tmp_path / "x"), "--log", str(tmp_path / "x"))
    assert result.exit_code == 1 and "--save and --log both name" in result.stderr
    assert not (tmp_path / "x").exists()


def test_an_unwritable_save_location_is_refused_before_training_naming_the_users_path(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr("tinygrad_rnn.training.build", lambda *a: calls.append(a))  # training must not start
    result = run("train", "--steps", "1", "--save", "no/such/dir/run.npz")
    assert result.exit_code == 1 and calls == []
    assert result.stderr.strip() == "Error: --save 'no/such/dir/run.npz': the folder 'no/such/dir' does not exist"
    result = run("train", "--steps", "1", "--save", str(tmp_path))
    assert result.exit_code == 2 and "is a directory" in result.stderr and calls == []  # click's own check


def test_a_read_only_folder_is_refused_before_training(tmp_path, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    if os.geteuid() == 0:  # root ignores permissions: fail the write probe as a read-only mount would
        real_open = os.open

        def refuse(path, *a, **k):
            if str(path).startswith(str(ro)):
                raise PermissionError(13, "Permission denied", path)
            return real_open(path, *a, **k)
        monkeypatch.setattr(safeio.os, "open", refuse)
    try:
        with pytest.raises(safeio.OutputError, match=r"save= '.*ro/x.npz': cannot write in folder .*Permission denied"):
            train(**TINY, save=str(ro / "x.npz"))
    finally:
        ro.chmod(0o700)


def test_saving_over_a_file_keeps_its_permissions(tmp_path):
    path = tmp_path / "run.npz"
    train(**TINY, save=str(path))
    path.chmod(0o640)
    train(**dict(TINY, steps=3), save=str(path))
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    new = tmp_path / "new.npz"
    train(**TINY, save=str(new))
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(new.stat().st_mode) == 0o666 & ~umask  # like any new file, not 0600


def test_a_symlink_at_the_save_path_is_followed_not_replaced(tmp_path):
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "run.npz"
    link = tmp_path / "latest.npz"
    link.symlink_to(target)
    train(**TINY, save=str(link))
    assert link.is_symlink() and os.readlink(link) == str(target)
    meta, _ = checkpoint.load(str(target))
    assert meta["step"] == 2
    assert sorted(os.listdir(tmp_path / "real")) == ["run.npz"]


def test_the_temporary_file_is_removed_on_any_failure(tmp_path, monkeypatch):
    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(safetensors.numpy, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(str(tmp_path / "x.npz"), {"step": 1}, {"a": np.ones(2)})
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_a_temporary_file_left_by_a_killed_run_is_removed_by_the_next_save(tmp_path):
    code = ("import os, numpy as np, safetensors.numpy, tinygrad_rnn.checkpoint as c\n"
            "safetensors.numpy.save = lambda *a, **k: os.kill(os.getpid(), 9)\n"
            f"c.save({str(tmp_path / 'x.npz')!r}, {{'step': 1}}, {{'a': np.ones(2)}})\n")
    proc = subprocess.run([sys.executable, "-c", code])
    assert proc.returncode == -9
    leftovers = [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]
    assert len(leftovers) == 1 and leftovers[0].startswith(".x.npz.")  # the killed run's file
    checkpoint.save(str(tmp_path / "x.npz"), {"step": 2}, {"a": np.ones(2)})
    assert os.listdir(tmp_path) == ["x.npz"]


def test_json_safe_replaces_non_finite_numbers_and_says_where():
    found = []
    out = safeio.json_safe({"a": float("nan"), "b": [1.0, float("inf")], "c": np.float32(2), "d": "x"}, found=found)
    assert out == {"a": None, "b": [1.0, None], "c": 2.0, "d": "x"} and found == ["a", "b[1]"]
    assert safeio.dumps({"x": float("-inf")}) == '{"x": null}'


def test_a_device_or_a_symlink_loop_is_refused_before_training(tmp_path):
    with pytest.raises(safeio.OutputError, match=r"save= '/dev/null' is not a regular file"):
        train(**TINY, save="/dev/null")
    with pytest.raises(checkpoint.CheckpointError, match="not a regular file"):
        checkpoint.save("/dev/null", {"step": 1}, {"a": np.ones(2)})
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    with pytest.raises(safeio.OutputError, match="save= '.*a': Too many levels of symbolic links"):
        train(**TINY, save=str(tmp_path / "a"))
    train(**TINY, log="/dev/null")  # appending to a device is fine


def test_log_may_not_append_to_the_resumed_checkpoint_but_save_may_replace_it(tmp_path):
    path = str(tmp_path / "run.npz")
    train(**TINY, save=path)
    with pytest.raises(safeio.OutputError, match="log= .* is the resume= file"):
        train(**dict(TINY, steps=3), resume=path, log=path)
    checkpoint.load(path)  # still a checkpoint
    train(**dict(TINY, steps=3), resume=path, save=path)
    assert checkpoint.load(path)[0]["step"] == 3


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_full_disk_under_the_log_is_one_line():
    result = run("train", "--cell", "rnn", "--task", "sum", "--seq-len", "4", "--hidden", "2", "--steps", "2",
                 "--log", "/dev/full")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == ["Error: --log '/dev/full': cannot write (No space left on device)"]


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a file away")
def test_saving_over_another_users_file_keeps_its_owner(tmp_path):
    path = tmp_path / "run.npz"
    train(**TINY, save=str(path))
    os.chown(path, 12345, 23456)
    train(**dict(TINY, steps=3), save=str(path))
    assert (path.stat().st_uid, path.stat().st_gid) == (12345, 23456)


def test_a_save_folder_without_room_for_the_checkpoint_is_refused_before_training(tmp_path, monkeypatch):
    import collections
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(safeio.shutil, "disk_usage", lambda p: usage(10 ** 9, 10 ** 9 - 1000, 1000))
    with pytest.raises(safeio.OutputError, match=r"save= '.*run.npz': the checkpoint needs about .* MB, "
                                                 r"the folder has 0.0 MB free"):
        train(**dict(TINY, steps=10 ** 9), save=str(tmp_path / "run.npz"))  # would take forever if it started


# ---- outputs never land on a plugin's source or on a file of another kind ----------------
PLUGIN = ("import tinygrad_rnn as tr\n\n\n"
          "class Mine(tr.Cell):\n    name = 'mycell'\n    num_states = 1\n\n"
          "    def __init__(self, input_size, hidden_size):\n        super().__init__(input_size, hidden_size)\n"
          "        self.w = self.param((hidden_size, hidden_size))\n\n"
          "    def step(self, x, s):\n        return ((s[0] @ self.w).tanh(),)\n\n\n"
          "@tr.hookimpl\ndef register_cells(register):\n    register(Mine)\n")
CLI_TINY = ["--task", "sum", "--seq-len", "4", "--hidden", "2", "--steps", "1"]


@pytest.mark.parametrize("option", ["--save", "--log"])
def test_an_output_on_a_plugin_file_is_refused_before_training(tmp_path, monkeypatch, option):
    plugin = tmp_path / "my_cell.py"
    plugin.write_text(PLUGIN)
    monkeypatch.chdir(tmp_path)
    result = run("--plugin", "my_cell.py", "train", "--cell", "mycell", *CLI_TINY, option, "my_cell.py")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        f"Error: {option} 'my_cell.py' is the --plugin file: writing there would destroy it; choose another path"]
    assert plugin.read_text() == PLUGIN


def test_an_output_on_a_plugin_named_in_the_environment_is_refused(tmp_path, monkeypatch):
    plugin = tmp_path / "my_cell.py"
    plugin.write_text(PLUGIN)
    monkeypatch.setenv("TINYGRAD_RNN_PLUGINS", str(plugin))
    result = run("train", "--cell", "mycell", *CLI_TINY, "--save", str(plugin))
    assert result.exit_code == 1
    assert "is the TINYGRAD_RNN_PLUGINS file: writing there would destroy it" in result.stderr
    assert plugin.read_text() == PLUGIN


@pytest.mark.parametrize("name,content,holds", [
    ("notes.txt", b"my notes\n", "text"),
    ("data.npy", None, "a NumPy .npy array"),
    ("other.npz", None, "a zip archive (.npz)"),
    ("blob.bin", bytes(range(256)) * 4, "binary data"),
    ("model.safetensors", "safetensors", "a safetensors checkpoint"),
])
def test_save_refuses_to_replace_a_file_that_is_not_a_checkpoint(tmp_path, name, content, holds):
    path = tmp_path / name
    if content == "safetensors":  # another library's weights (a tinygrad_rnn checkpoint is one too)
        safetensors.numpy.save_file({"weight": np.ones((2, 3), np.float32)}, str(path))
    elif content is not None:
        path.write_bytes(content)
    elif name.endswith(".npy"):
        np.save(path, np.arange(5.0))
    else:
        np.savez(path, a=np.arange(5.0))
    before = path.read_bytes()
    result = run("train", "--cell", "rnn", *CLI_TINY, "--save", str(path))
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        f"Error: --save {str(path)!r} already exists and is not a tinygrad_rnn checkpoint (it holds {holds}); "
        "choose another path, or delete the file if you mean to replace it"]
    assert path.read_bytes() == before
    with pytest.raises(checkpoint.CheckpointError, match="is not a tinygrad_rnn checkpoint"):
        checkpoint.save(str(path), {"step": 1}, {"a": np.ones(2)})  # the library refuses too
    assert path.read_bytes() == before


def test_save_replaces_a_checkpoint_or_an_empty_file(tmp_path):
    path = tmp_path / "run.npz"
    path.write_bytes(b"")
    train(**TINY, save=str(path))
    train(**dict(TINY, steps=3), save=str(path))
    assert checkpoint.load(str(path))[0]["step"] == 3


def test_log_refuses_to_append_to_a_file_that_is_not_a_log(tmp_path):
    for content in (b"my notes\n", b'{"step": 1}\n', b'{"a": 1}\n', b"[1, 2]\n"):
        path = tmp_path / "notes.jsonl"
        path.write_bytes(content)
        result = run("train", "--cell", "rnn", *CLI_TINY, "--log", str(path))
        assert result.exit_code == 1
        assert f"--log {str(path)!r} already exists and is not a tinygrad_rnn JSON Lines log" in result.stderr
        assert path.read_bytes() == content


def test_log_names_a_checkpoint_it_refuses_as_one(tmp_path):
    path = tmp_path / "run.ckpt"
    train(**TINY, save=str(path))
    result = run("train", "--cell", "rnn", *CLI_TINY, "--log", str(path))
    assert result.exit_code == 1
    assert f"--log {str(path)!r} already exists and is not a tinygrad_rnn JSON Lines log (it holds a safetensors " \
           "checkpoint)" in result.stderr


def test_log_appends_to_its_own_log(tmp_path):
    path = tmp_path / "run.jsonl"
    train(**TINY, log=str(path), log_every=1)
    train(**TINY, log=str(path), log_every=1)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 1, 2]


@pytest.mark.parametrize("option", ["--save", "--log", "--data", "--resume"])
def test_an_empty_path_is_a_usage_error(option):
    result = run("train", "--cell", "rnn", *CLI_TINY, option, "")
    assert result.exit_code == 2
    assert f"Invalid value for '{option}': the path is empty; give a file name" in result.stderr
    with pytest.raises(safeio.OutputError, match="the path is empty"):
        safeio.check_outputs([(option, "")])


def _steps(path):
    return [(json.loads(line)["step"], "eval_loss" in json.loads(line)) for line in path.read_text().splitlines()]


def test_resuming_from_an_earlier_checkpoint_drops_the_replayed_steps_from_the_log(tmp_path):
    early, log = str(tmp_path / "early.npz"), tmp_path / "run.jsonl"
    run = dict(TINY, log=str(log), log_every=2, eval_every=2)
    train(**dict(run, steps=4), save=early)
    train(**dict(run, steps=8), resume=early, save=str(tmp_path / "late.npz"))
    assert [s for s, _ in _steps(log)] == [2, 2, 4, 4, 6, 6, 8, 8]
    once = log.read_text()
    result = CliRunner().invoke(cli.main, ["train", "--resume", early, "--steps", "8", "--log", str(log),
                                                     "--log-every", "2", "--eval-every", "2"])
    assert result.exit_code == 0, result.output
    assert "note: --log" in result.stderr and "dropped 4 record(s) past step 4" in result.stderr
    assert log.read_text() == once  # the same records, each step once (the run is deterministic)


def test_trimming_keeps_earlier_runs_in_the_same_log_and_cuts_a_torn_line(tmp_path):
    log = tmp_path / "run.jsonl"
    lines = [{"step": s, "loss": 1.0} for s in (1, 2, 3, 1, 2, 3, 4)]
    log.write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"step": 5, "lo')
    assert safeio.trim_log(str(log), 2) == 2
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [1, 2, 3, 1, 2]
    assert safeio.trim_log(str(log), None) == 0 and safeio.trim_log(str(tmp_path / "none.jsonl"), 3) == 0
    log.write_text("my notes\n")  # replaced by something else since the run checked it: named as Python says it
    with pytest.raises(safeio.OutputError, match=r"^log= '.*run.jsonl' is not a tinygrad_rnn log$"):
        safeio.trim_log(str(log), 2)


def test_plot_replaces_an_earlier_plot_never_a_users_file(tmp_path):
    from click.testing import CliRunner
    import cli
    pytest.importorskip("matplotlib")
    precious = tmp_path / "report.png"
    precious.write_bytes(b"PK\x03\x04 a checkpoint someone renamed")
    r = CliRunner().invoke(cli.main, ["diagnose", "--cell", "rnn", "--seq-len", "4", "--hidden", "3", "--batch", "2",
                                      "--plot", str(precious)])
    assert r.exit_code == 1 and "already exists and is not an image" in r.output, r.output
    assert precious.read_bytes() == b"PK\x03\x04 a checkpoint someone renamed"
    earlier = tmp_path / "old.png"
    earlier.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    r = CliRunner().invoke(cli.main, ["diagnose", "--cell", "rnn", "--seq-len", "4", "--hidden", "3", "--batch", "2",
                                      "--plot", str(earlier)])
    assert r.exit_code == 0, r.output
    assert earlier.stat().st_size > 1000
