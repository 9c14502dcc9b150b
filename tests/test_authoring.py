"""What a new cell author tripped on: init functions, blank docstrings, split's errors,
--plugin after the subcommand, the losses in diagnose's table."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

import cli
import tinygrad_rnn as tr
from tinygrad_rnn import plugins

CHRONO_CELL = '''
import numpy as np
import tinygrad_rnn as tr


def chrono(rng, shape, dtype, t_max=10):
    return np.log(rng.uniform(1, t_max - 1, shape)).astype(dtype)


class Janet(tr.Cell):
    name = "janet_t"

    def __init__(self, input_size, hidden_size):
        super().__init__(input_size, hidden_size)
        self.w = self.param((input_size + hidden_size, 2 * hidden_size), init="xavier_uniform")
        self.b_f = self.param((hidden_size,), init=chrono)

    def step(self, x, state):
        (h,) = state
        f, c = (tr.cat([x, h], axis=-1) @ self.w).split(self.hidden_size, axis=-1)
        f = (f + self.b_f).sigmoid()
        return (f * h + (1 - f) * c.tanh(),)


@tr.hookimpl
def register_cells(register):
    register(Janet)
'''


@pytest.fixture(autouse=True)
def fresh_registry(clean_plugins):
    yield


def _plugin(tmp_path, text, name="mycell.py"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def run(*args):
    result = CliRunner().invoke(cli.main, list(args))
    assert "Traceback" not in result.output, result.output
    return result


def test_param_takes_an_init_function_drawing_from_the_seeded_generator(tmp_path):
    tr.load_plugin(_plugin(tmp_path, CHRONO_CELL))
    tr.manual_seed(5)
    a = tr.nn.RNN("janet_t", 2, 6).state_dict()["b_f_l0"]
    tr.manual_seed(5)
    b = tr.nn.RNN("janet_t", 2, 6).state_dict()["b_f_l0"]
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.float32 and a.shape == (6,)
    assert np.all((a >= 0) & (a <= np.log(9)))  # log U(1, t_max - 1)
    assert tr.testing.check_cell("janet_t").ok


@pytest.mark.parametrize("returns,match", [
    ("np.zeros(3)", r"returned shape \(3,\) for a parameter of shape \(4,\)"),
    ("np.full(shape, np.nan)", r"returned nan at index \(0,\); parameters must be finite"),
    ("np.array(['a'] * shape[0])", "values, not numbers"),
])
def test_a_bad_init_function_is_one_line_naming_the_cell(returns, match):
    class Bad(tr.Cell):
        name = "bad_init"

        def __init__(self, i, h):
            super().__init__(i, h)
            self.b = self.param((h,), init=lambda rng, shape, dtype: eval(returns))
    with pytest.raises(tr.errors.ConfigError, match=r"Bad.param\(\(4,\)\): init function .*" + match):
        tr.nn.RNN(Bad, 2, 4)
    with pytest.raises(tr.errors.ConfigError, match="unknown init 'glorot'.*or pass a function"):
        tr.init.make("glorot", (2, 2), 2)


def test_a_cell_without_a_docstring_is_listed_by_name_and_state_count(tmp_path):
    src = ("import tinygrad_rnn as tr\n\nclass Bare(tr.Cell):\n    name = 'bare'\n    num_states = 2\n\n"
           "    def step(self, x, s):\n        return s\n\n\n@tr.hookimpl\ndef register_cells(register):\n"
           "    register(Bare)\n")
    path = _plugin(tmp_path, src)
    result = run("--plugin", path, "cells", "--json")
    assert {r["name"]: r["doc"] for r in json.loads(result.stdout)}["bare"] == "Bare (2 states)"
    assert "bare           Bare (2 states)" in run("--plugin", path, "train", "--help").stdout


def test_split_errors_say_what_the_shapes_were(tmp_path):
    a = tr.Tensor(np.zeros((2, 8)))
    with pytest.raises(ValueError, match=r"sizes \[3, 3\] add up to 6, but axis 1 of shape \(2, 8\) has length 8"):
        tr.split(a, [3, 3], axis=1)
    with pytest.raises(ValueError, match=r"piece size must be positive, got 0 \(splitting shape \(2, 8\)"):
        tr.split(a, 0, axis=1)
    src = CHRONO_CELL.replace("split(self.hidden_size, axis=-1)", "split(2, axis=-1)")  # np.split's meaning
    tr.load_plugin(_plugin(tmp_path, src))
    with pytest.raises(tr.errors.UserCodeError) as e:
        tr.nn.RNN("janet_t", 2, 4, fused=False)(np.zeros((3, 2, 2), np.float32))
    msg = str(e.value)
    assert "too many values to unpack" in msg and "num_states" not in msg
    assert "the last tr.split cut shape (2, 8) along axis 1 into 4 pieces of size 2" in msg
    assert "not the number of pieces (as np.split)" in msg


def test_a_step_returning_split_pieces_is_told_about_split():
    class Pieces(tr.Cell):
        name = "pieces"

        def step(self, x, state):
            return tr.split(tr.cat([state[0], state[0]], axis=-1), 2, axis=-1)
    with pytest.raises(tr.errors.UserCodeError, match=r"num_states=1 tensors, got 4 \(the last tr.split cut "
                                                      r"shape \(2, 8\) along axis 1 into 4 pieces of size 2"):
        tr.nn.RNN(Pieces, 2, 4, fused=False)(np.zeros((3, 2, 2), np.float32))


def test_plugin_works_after_the_subcommand(tmp_path):
    path = _plugin(tmp_path, CHRONO_CELL)
    for args in (["cells", "--plugin", path], ["cells", f"--plugin={path}"], ["--plugin", path, "cells"]):
        result = run(*args)
        assert result.exit_code == 0 and "janet_t" in result.stdout, (args, result.output)
    result = run("diagnose", "--cell", "janet_t", "--plugin", path, "--seq-len", "4", "--hidden", "3",
                 "--batch", "2", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["cells"][0]["cell"] == "janet_t"


def test_plugin_without_a_value_is_a_usage_error():
    for args in (["cells", "--plugin"], ["--plugin"]):
        result = run(*args)
        assert result.exit_code == 2 and "--plugin needs a value" in result.stderr


def test_an_unknown_cell_says_how_to_load_one():
    result = run("diagnose", "--cell", "janet_x")
    assert result.exit_code == 2
    assert "unknown cell 'janet_x'" in result.stderr and "--plugin FILE.py" in result.stderr


def test_diagnose_with_steps_prints_the_losses_in_its_table():
    result = run("diagnose", "--cell", "rnn", "--seq-len", "6", "--hidden", "4", "--steps", "2", "--batch", "4")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    header = next(l for l in lines if l.startswith("cell "))
    assert header.split()[-4:] == ["train", "loss", "eval", "loss"]
    trained = next(l for l in lines if l.startswith("rnn") and "step 2" in l).split()
    report = json.loads(run("diagnose", "--cell", "rnn", "--seq-len", "6", "--hidden", "4", "--steps", "2",
                            "--batch", "4", "--json").stdout)["cells"][0]["after_training"]
    assert trained[-2:] == [format(report["train_loss"], ".4g"), format(report["eval_loss"], ".4g")]
    untrained = run("diagnose", "--cell", "rnn", "--seq-len", "6", "--hidden", "4", "--batch", "4").stdout
    assert "train loss" not in untrained
