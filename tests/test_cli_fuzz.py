"""The CLI under generated input (``cli_fuzz.py``): a fixed-seed sample of the fuzz, and the
defects it found, each pinned as a case of its own. Every case runs in a forked process."""
import os
import tempfile

import pytest
from hypothesis import HealthCheck, Phase, given, settings

import cli_fuzz as fuzz

UNSPOILED = {name: ("none", None) for name in ("ck.ckpt", "run.log", "data.txt")}


@pytest.fixture(scope="module")
def fixtures():
    folder = tempfile.mkdtemp(prefix="tgr-fuzz-fixtures-")
    fuzz.make_fixtures(folder)
    yield folder
    import shutil
    shutil.rmtree(folder, ignore_errors=True)


def _holds(fixtures, argv, env=None, spoil=None, expect=None):
    broken, code = fuzz.check_case(fixtures, argv, env or {}, spoil or UNSPOILED)
    assert not broken, (argv, env, broken)
    if expect is not None:
        assert code == expect, (argv, code)
    return code


@pytest.mark.slow
def test_a_fixed_sample_of_generated_invocations_holds(fixtures):
    """40 invocations of every command but sweep (a Dask cluster each: the release run has it)."""
    commands = tuple(c for c in fuzz.COMMANDS if c != "sweep")

    @settings(max_examples=40, derandomize=True, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(fuzz.invocation(commands))
    def case(inv):
        argv, env, spoil = inv
        broken, _ = fuzz.check_case(fixtures, argv, env, spoil)
        assert not broken, (argv, env, spoil, broken)
    case()


@pytest.mark.parametrize("plugin", ["raise_base.py", "raise_genexit.py", "raise_exit.py", "raise_value.py"])
def test_a_plugin_raising_anything_at_import_is_one_line_and_never_stops_the_built_ins(fixtures, plugin):
    _holds(fixtures, ["--plugin", plugin, "cells"], expect=1)
    _holds(fixtures, ["cells"], env={"TINYGRAD_RNN_PLUGINS": plugin}, expect=0)
    _holds(fixtures, ["gradcheck", "--cell", "rnn", "--hidden", "2", "--seq-len", "2"],
           env={"TINYGRAD_RNN_PLUGINS": plugin}, expect=0)


@pytest.mark.parametrize("cell,plugin", [("initbase", "init_base.py"), ("initexit", "init_exit.py")])
@pytest.mark.parametrize("command", [["train", "--steps", "1"], ["diagnose"], ["compile"], ["gradcheck"]])
def test_a_cell_raising_base_exception_or_system_exit_in_init_is_its_error(fixtures, cell, plugin, command):
    argv = ["--plugin", plugin, *command, "--cell", cell, "--hidden", "2"]
    if command[0] in ("train", "diagnose"):
        argv += ["--seq-len", "3", "--batch", "2"]
    _holds(fixtures, argv, expect=1)
    _holds(fixtures, argv[2:], env={"TINYGRAD_RNN_PLUGINS": plugin}, expect=1)


def test_a_keyboard_interrupt_from_a_plugin_still_stops_the_program(fixtures, tmp_path):
    path = os.path.join(fixtures, "raise_ctrl_c.py")
    with open(path, "w") as f:
        f.write("raise KeyboardInterrupt\n")
    try:
        broken, code = fuzz.check_case(fixtures, ["--plugin", "raise_ctrl_c.py", "cells"], {}, UNSPOILED)
        assert code == 1 and not broken  # click's "Aborted!", as for Ctrl-C
    finally:
        os.remove(path)


def test_a_step_that_leaves_the_tape_is_named_by_diagnose(fixtures):
    code = _holds(fixtures, ["--plugin", "off_tape.py", "diagnose", "--cell", "offtape", "--hidden", "2",
                             "--seq-len", "3", "--batch", "2"], expect=1)
    assert code == 1


def test_a_cell_with_a_billion_states_is_refused_where_it_is_registered(fixtures):
    from tinygrad_rnn import plugins
    from tinygrad_rnn.errors import Error
    _holds(fixtures, ["--plugin", "many_states.py", "compile", "--cell", "manystates"], expect=1)
    plugins.reset()
    try:
        with pytest.raises(Error, match=r"num_states must be an integer from 1 to 64 .*got 1000000000$"):
            plugins.load_plugin(os.path.join(fixtures, "many_states.py"))
            plugins.get_cell("rnn")
    finally:
        plugins.reset()


@pytest.mark.parametrize("field", ["step", "config.seed", "config.hidden", "rng.state.state", "init_rng.state.state",
                                   "scheduler.last_epoch", "early_stop.best_step"])
def test_a_huge_integer_in_a_checkpoint_header_is_a_one_line_error(fixtures, field):
    spoil = dict(UNSPOILED, **{"ck.ckpt": ("header", (field, 10 ** 30))})
    _holds(fixtures, ["train", "--resume", "ck.ckpt", "--steps", "4", "--save", "ck.ckpt"], spoil=spoil, expect=1)


def test_a_hundred_thousand_layers_is_a_usage_error_not_a_hang(fixtures):
    _holds(fixtures, ["train", "--layers", "100000", "--hidden", "4"], expect=2)
