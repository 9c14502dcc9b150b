"""Sizes that cannot fit are one-line errors with the estimate, before allocating (issue 9, item 6)."""
import pytest
from click.testing import CliRunner

import cli
from tinygrad_rnn import limits
from tinygrad_rnn.errors import ConfigError, ResourceError
from tinygrad_rnn.training import train


pytestmark = pytest.mark.usefixtures("clean_plugins")


@pytest.mark.parametrize("option,value,estimate", [("--hidden", "1000000", "TB"), ("--layers", "1000000", "TB"),
                                                    ("--batch", "100000000", "TB")])
def test_sizes_that_cannot_fit_are_refused_with_the_estimate(monkeypatch, option, value, estimate):
    monkeypatch.setattr("tinygrad_rnn.nn.Module.__init__", lambda *a: pytest.fail("allocated a model"))
    result = CliRunner().invoke(cli.main, ["train", option, value, "--steps", "1"])
    assert result.exit_code == 1
    line, = result.stderr.strip().splitlines()
    assert line.startswith("Error: --hidden") and f"{option} {value}" in line
    assert "needs about" in line and estimate in line and "available" in line


def test_the_estimate_is_reasonable_for_a_model_that_fits():
    need = limits.model_bytes(2, 128, 1, 100, 64, 1, gates=4, itemsize=4)
    assert 10e6 < need < 200e6  # an LSTM of hidden 128 at T=100, B=64 takes tens of MB
    limits.check_fits(need, "this")
    with pytest.raises(ResourceError, match=r"needs about 1 KB of memory, more than the 10 B available"):
        limits.check_fits(1024, "x", limit=10)


def test_bptt_longer_than_the_data_is_a_clear_error(tmp_path):
    data = tmp_path / "c.txt"
    data.write_text("abcdefgh " * 60)
    with pytest.raises(ConfigError, match=r"--bptt 500 is longer than each sequence's share of the training data "
                                          r"\(486 steps over --batch 2: 243 each\)"):
        train(cell="rnn", task="text", data=str(data), seq_len=8, hidden=4, batch=2, steps=1, bptt=500)
