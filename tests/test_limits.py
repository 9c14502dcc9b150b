"""Sizes that cannot fit are one-line errors with the estimate, before allocating (issue 9, item 6)."""
import pytest
from click.testing import CliRunner

import cli
from tinygrad_rnn import limits
from tinygrad_rnn.errors import ConfigError, ResourceError
from tinygrad_rnn.training import train


pytestmark = pytest.mark.usefixtures("clean_plugins")


@pytest.mark.parametrize("option,value,estimate", [("--hidden", "1000000", "TB"), ("--batch", "100000000", "TB")])
def test_sizes_that_cannot_fit_are_refused_with_the_estimate(monkeypatch, option, value, estimate):
    monkeypatch.setattr("tinygrad_rnn.nn.Module.__init__", lambda *a: pytest.fail("allocated a model"))
    result = CliRunner().invoke(cli.main, ["train", option, value, "--steps", "1"])
    assert result.exit_code == 1
    line, = result.stderr.strip().splitlines()
    assert line.startswith("Error: --hidden") and f"{option} {value}" in line
    assert "needs at least about" in line and estimate in line and "available" in line


def test_layers_past_the_limit_are_refused_before_any_work(monkeypatch):
    monkeypatch.setattr("tinygrad_rnn.nn.Module.__init__", lambda *a: pytest.fail("allocated a model"))
    result = CliRunner().invoke(cli.main, ["train", "--layers", "100000", "--hidden", "4", "--steps", "1"])
    assert result.exit_code == 2
    assert "Invalid value for '--layers': 100000 is not in the range 1<=x<=1000" in result.stderr
    with pytest.raises(ConfigError, match=r"^layers must be an integer in \[1, 1000\], got 100000$"):
        train(cell="rnn", task="sum", seq_len=4, hidden=4, layers=100000, steps=1)


def test_the_estimate_is_reasonable_for_a_model_that_fits():
    need = limits.model_bytes(2, 128, 1, 100, 64, 1, gates=4, itemsize=4)
    assert 10e6 < need < 200e6  # an LSTM of hidden 128 at T=100, B=64 takes tens of MB
    limits.check_fits(need, "this")
    with pytest.raises(ResourceError, match=r"needs about 1 KB of memory, more than the 10 B available"):
        limits.check_fits(1024, "x", limit=10)


def test_bptt_longer_than_the_data_is_a_clear_error(tmp_path):
    data = tmp_path / "c.txt"
    data.write_text("abcdefgh " * 60)
    with pytest.raises(ConfigError, match=r"bptt=500 is longer than each sequence's share of the training data "
                                          r"\(486 steps over batch=2: 243 each\)"):
        train(cell="rnn", task="text", data=str(data), seq_len=8, hidden=4, batch=2, steps=1, bptt=500)


@pytest.mark.parametrize("task,data,what", [("text", "/dev/zero", "task 'text': data file"),
                                            ("series", "/dev/zero", "series file"),
                                            ("series", "fifo.csv", "series file")])
def test_a_data_file_that_never_ends_is_refused_before_reading(tmp_path, monkeypatch, task, data, what):
    import os
    monkeypatch.chdir(tmp_path)
    os.mkfifo("fifo.csv")  # opening it to read would wait for a writer forever
    for command in (["train", "--task", task, "--data", data, "--steps", "1"],
                    ["diagnose", "--cell", "rnn", "--task", task, "--data", data]):
        result = CliRunner().invoke(cli.main, command)
        assert result.exit_code == 1, result.output
        assert result.stderr.strip().splitlines() == [
            f"Error: {what} {data!r} is not a regular file (a device, pipe or socket); give a file that ends"]


def test_a_data_file_too_big_for_memory_is_refused_before_reading(tmp_path, monkeypatch):
    path = tmp_path / "big.txt"
    path.write_text("ab" * 1000)
    monkeypatch.setattr(limits, "available_memory", lambda: 10_000)
    with pytest.raises(ResourceError, match=r"task 'text': data file '.*big.txt' \(1.95 KB\) needs about 62.5 KB"):
        train(cell="rnn", task="text", data=str(path), seq_len=4, steps=1)


def test_generate_length_is_capped(tmp_path):
    from tinygrad_rnn.training import generate
    result = CliRunner().invoke(cli.main, ["generate", "--checkpoint", "x.npz", "--length", "100000000"])
    assert result.exit_code == 2
    assert "Invalid value for '--length': 100000000 is not in the range 0<=x<=1000000" in result.stderr
    path = str(tmp_path / "char.npz")
    train(cell="rnn", task="text", seq_len=8, hidden=4, steps=1, save=path)
    with pytest.raises(ConfigError, match="length 1000001 is more than the 1000000 characters generate makes at once"):
        generate(path, length=limits.MAX_GENERATE_LENGTH + 1)


def test_the_estimate_counts_each_cells_own_matrices_and_leaves_the_generator_alone():
    from tinygrad_rnn import init
    from tinygrad_rnn.plugins import get_cell
    from tinygrad_rnn.training import _gates
    state = init.get_rng_state()
    assert [_gates(get_cell(c), {}) for c in ("rnn", "gru", "lstm", "mgu")] == [1, 3, 4, 2]  # mgu: a plugin
    assert init.get_rng_state() == state
