"""--cell-option: KEY=VALUE text typed and checked against a cell's constructor."""
import pytest

import tinygrad_rnn as tr
from tinygrad_rnn.cell_options import check_cell_options, parse_cell_options


class Knobs(tr.Cell):
    name = "knobs"

    def __init__(self, input_size, hidden_size, scale=1.0, steps=2, gated=False, mode="a", free=None):
        super().__init__(input_size, hidden_size)
        if mode not in ("a", "b"):
            raise ValueError(f"mode must be 'a' or 'b', got {mode!r}")
        self.w = self.param((hidden_size, hidden_size))

    def step(self, x, state):
        return state


class Open(Knobs):
    name = "open"

    def __init__(self, input_size, hidden_size, **extra):
        super().__init__(input_size, hidden_size)


def test_values_take_the_type_of_the_default():
    opts = parse_cell_options(Knobs, ["scale=2", "steps=3", "gated=yes", "mode=b", "free=0.5"])
    assert opts == {"scale": 2.0, "steps": 3, "gated": True, "mode": "b", "free": 0.5}
    assert type(opts["scale"]) is float and type(opts["steps"]) is int
    assert parse_cell_options(Knobs, ["free=abc", "gated=0"]) == {"free": "abc", "gated": False}
    assert parse_cell_options(Open, ["k=1", "j=true", "s=x=y"]) == {"k": 1, "j": True, "s": "x=y"}
    assert parse_cell_options("rnn", ["nonlinearity=relu"]) == {"nonlinearity": "relu"}
    assert parse_cell_options("lstm", []) == {}


@pytest.mark.parametrize("pairs,match", [
    (["scale=big"], r"--cell-option scale=big: cell 'knobs' expects a number for 'scale'"),
    (["scale=nan"], "expects a number"),
    (["steps=2.5"], "expects an integer for 'steps'"),
    (["gated=maybe"], "expects true or false"),
    (["speed=3"], r"cell 'knobs' has no option 'speed' \(its options: scale=1.0, steps=2, gated=False, mode=a"),
    (["scale"], "expected KEY=VALUE"),
    (["=3"], "expected KEY=VALUE"),
    (["mode=a", "mode=b"], "'mode' is given twice"),
    (["mode=c"], "^cell 'knobs': mode must be 'a' or 'b', got 'c'$"),
    (["input_size=3"], "has no option 'input_size'"),
])
def test_bad_options_are_one_line_errors(pairs, match):
    with pytest.raises(ValueError, match=match) as info:
        parse_cell_options(Knobs, pairs)
    assert "\n" not in str(info.value)


def test_builtin_cells_check_their_values():
    with pytest.raises(ValueError, match="cell 'lstm' has no option 'nonlinearity' \\(its options: none\\)"):
        parse_cell_options("lstm", ["nonlinearity=relu"])
    with pytest.raises(ValueError, match="^cell 'rnn': nonlinearity must be 'tanh' or 'relu', got 'sigmoid'$"):
        parse_cell_options("rnn", ["nonlinearity=sigmoid"])
    assert check_cell_options("rnn", {"nonlinearity": "relu"}) == {"nonlinearity": "relu"}


def test_a_relu_rnn_from_options_trains():
    s = tr.train(cell="rnn", task="sum", seq_len=8, hidden=8, batch=8, steps=3, cell_options={"nonlinearity": "relu"},
                 init_scheme="identity")
    assert s["steps"] == 3
    with pytest.raises(ValueError, match="sigmoid"):
        tr.train(cell="rnn", task="sum", seq_len=8, steps=1, cell_options={"nonlinearity": "sigmoid"})


def test_cell_options_on_resume_are_checked_against_the_checkpoints_cell(tmp_path):
    from click.testing import CliRunner

    import cli
    tiny = ["--hidden", "4", "--seq-len", "5", "--batch", "4"]
    ck = str(tmp_path / "relu.npz")

    def invoke(*args):
        return CliRunner().invoke(cli.main, list(args))
    assert invoke("train", "--cell", "rnn", "--cell-option", "nonlinearity=relu", "--steps", "2", "--save", ck,
                  *tiny).exit_code == 0
    same = invoke("train", "--resume", ck, "--steps", "3", "--cell-option", "nonlinearity=relu")
    assert same.exit_code == 0, same.output
    other = invoke("train", "--resume", ck, "--steps", "4", "--cell-option", "nonlinearity=tanh")
    assert other.exit_code == 1
    assert other.stderr.strip() == (
        f"Error: --cell-option {{'nonlinearity': 'tanh'}} conflicts with the resumed run's cell_options "
        f"{{'nonlinearity': 'relu'}} in {ck!r}; drop --cell-option to continue that run, or start a new one "
        "without --resume")
