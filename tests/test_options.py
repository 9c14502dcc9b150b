"""The run-option table: what derives from it, and the library speaking Python while the CLI speaks flags."""
import dataclasses

import pytest
from click.testing import CliRunner

import cli
from tinygrad_rnn import checkpoint, options, training
from tinygrad_rnn.distributed import sweep
from tinygrad_rnn.errors import ConfigError, ResourceError

pytestmark = pytest.mark.usefixtures("clean_plugins")


def test_every_train_config_field_is_a_row_and_every_train_option_a_click_option():
    fields = [f.name for f in dataclasses.fields(training.TrainConfig)]
    assert fields == [o.name for o in options.OPTIONS] + ["progress", "explicit", "parallel"]
    for command in ("train", "diagnose", "sweep"):
        params = {p.opts[0]: p for p in cli.main.commands[command].params}
        for option in options.of(command):
            assert option.flag in params, (command, option.flag)
            if option.kind not in ("options", "name") and not (command == "sweep" and option.grid):
                assert params[option.flag].default == option.default, (command, option.flag)
    assert cli.main.commands["diagnose"].params[0].multiple  # diagnose --cell compares several cells


def test_checkpoint_fields_and_grid_axes_come_from_the_table():
    saved = {o.key for o in options.OPTIONS if o.saved}
    assert set(checkpoint.RUN_FIELDS) == saved | {"vocab"}
    assert "init" in saved and "init_scheme" not in saved and "save" not in saved
    assert set(sweep.GRID) == {o.key for o in options.OPTIONS if o.grid}


@pytest.mark.parametrize("name,value,message", [
    ("hidden", 0, "hidden must be an integer >= 1, got 0"),
    ("hidden", 2.0, "hidden must be an integer >= 1, got 2.0"),
    ("hidden", True, "hidden must be an integer >= 1, got True"),
    ("seed", 10 ** 50, "seed must be an integer in [0, 2**63 - 1], got 10000000000000000000...(51 characters)"),
    ("lr", float("nan"), "lr must be a finite number > 0 and <= 1e+06, got nan"),
    ("dropout", 1, r"dropout must be a number in [0, 1), got 1"),
    ("clip_norm", -1, "clip_norm must be null or a finite number >= 0 and <= 1e+12, got -1"),
    ("optimizer", "lbfgs", "optimizer must be one of sgd, adam, rmsprop, got 'lbfgs'"),
])
def test_check_names_the_python_argument(name, value, message):
    with pytest.raises(ConfigError) as e:
        options.check(name, value)
    assert str(e.value) == message


def test_a_value_in_range_passes_and_the_grid_parses_text():
    for name, value in [("hidden", 1), ("clip_norm", None), ("lr", 1e6), ("dropout", 0), ("layers", 1000)]:
        options.check(name, value)
    assert options.parse("clip_norm", "None") is None and options.parse("hidden", "8") == 8
    for name, text, why in [("hidden", "x", "not an integer"), ("seq_len", "1", "must be an integer >= 2"),
                            ("lr", "0", "must be a finite number > 0"), ("init_scheme", "he", "choose from")]:
        with pytest.raises(ValueError, match=why):
            options.parse(name, text)


@pytest.mark.parametrize("python,flags", [
    ("hidden=100000000 layers=1 seq_len=5 batch=10000 needs about 569 PB",
     "--hidden 100000000 --layers 1 --seq-len 5 --batch 10000 needs about 569 PB"),
    ("save= '/x/y.npz': the folder '/x' does not exist", "--save '/x/y.npz': the folder '/x' does not exist"),
    ("bidirectional=True conflicts with ...; drop bidirectional= to continue, or start a new one without resume=",
     "--bidirectional conflicts with ...; drop --bidirectional to continue, or start a new one without --resume"),
    ("init_scheme='orthogonal' conflicts", "--init 'orthogonal' conflicts"),
    ("cell 'rnn': nonlinearity=relu; x.hidden=2; 'seed=3'", "cell 'rnn': nonlinearity=relu; x.hidden=2; 'seed=3'"),
])
def test_to_flags_rewrites_python_arguments_only(python, flags):
    assert options.to_flags(python) == flags


def test_the_library_names_python_arguments_and_the_cli_flags(tmp_path):
    small = dict(cell="rnn", task="sum", seq_len=5, steps=1)
    with pytest.raises(ResourceError, match=r"^hidden=100000000 layers=1 seq_len=5 batch=10000 needs at least about 142 PB"):
        training.train(**small, hidden=10 ** 8, batch=10 ** 4)
    with pytest.raises(Exception, match=r"^save= '/nonexistent/x.ckpt': the folder '/nonexistent' does not exist"):
        training.train(**small, save="/nonexistent/x.ckpt")
    with pytest.raises(ConfigError, match=r"^embed=4 needs a task whose inputs are tokens"):
        training.train(**small, embed=4)
    result = CliRunner().invoke(cli.main, ["train", "--cell", "rnn", "--task", "sum", "--seq-len", "5",
                                           "--steps", "1", "--save", "/nonexistent/x.ckpt"])
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: --save '/nonexistent/x.ckpt': the folder '/nonexistent' does not exist")


def test_resuming_refuses_a_chosen_setting_that_differs_even_from_a_config(tmp_path):
    path = str(tmp_path / "run.npz")
    small = dict(cell="rnn", task="sum", seq_len=4, hidden=3, batch=2)
    training.train(**small, steps=1, save=path)
    with pytest.raises(ConfigError, match=r"^hidden=5 conflicts with the resumed run's hidden 3"):
        training.fit(training.TrainConfig(**dict(small, hidden=5), steps=2, resume=path))  # explicit left empty
    assert training.fit(training.TrainConfig(**small, steps=2, resume=path, lr=1e-3)).summary["start_step"] == 1
