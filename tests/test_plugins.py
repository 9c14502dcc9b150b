"""The plugin contract: discovery, isolation of failures, contract errors, example plugins."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import tinygrad_rnn as tr
from tinygrad_rnn import plugins

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = {"mgu": os.path.join(ROOT, "plugins", "mgu"), "peephole_lstm": os.path.join(ROOT, "plugins", "peephole")}


pytestmark = pytest.mark.usefixtures("clean_plugins")


def _write(tmp_path, name, body):
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return str(path)


GOOD = """
    import tinygrad_rnn as tr

    class Twice(tr.Cell):
        name = "{name}"
        def __init__(self, input_size, hidden_size):
            super().__init__(input_size, hidden_size)
            self.w = self.param((hidden_size, input_size))
        def step(self, x, state):
            return ((x @ self.w.T + state[0] * 0.5).tanh(),)

    @tr.hookimpl
    def register_cells(register):
        register(Twice)
"""


def test_builtins_register_through_the_hook():
    cells = {c["name"]: c for c in tr.list_cells()}
    assert {"rnn", "lstm", "gru"} <= set(cells)
    assert cells["lstm"]["plugin"] == "tinygrad_rnn.cells.lstm"
    assert tr.get_cell("elman") is tr.get_cell("rnn")


@pytest.mark.slow
def test_nothing_is_loaded_at_import_time():
    code = "import tinygrad_rnn, tinygrad_rnn.plugins as p; print(p._state.pm is None)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


def test_register_and_unregister_a_plugin_object(tmp_path):
    sys.path.insert(0, str(tmp_path))
    _write(tmp_path, "twice_plugin.py", GOOD.format(name="twice"))
    try:
        import twice_plugin
        name = plugins.register_plugin(twice_plugin)
        try:
            assert tr.get_cell("twice").name == "twice"
            out, _ = tr.nn.RNN("twice", 2, 3)(np.ones((4, 1, 2), np.float32))
            assert out.shape == (4, 1, 3)
        finally:
            plugins.unregister_plugin(name)
        with pytest.raises(KeyError, match="twice"):
            tr.get_cell("twice")
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("twice_plugin", None)


def test_py_file_plugin_via_load_plugin(tmp_path):
    tr.load_plugin(_write(tmp_path, "mycell.py", GOOD.format(name="mycell")))
    assert tr.get_cell("mycell").name == "mycell"
    assert {c["name"]: c for c in tr.list_cells()}["mycell"]["plugin"] == "mycell"


def test_broken_auto_plugin_warns_and_the_rest_work(tmp_path, monkeypatch, capsys):
    bad = _write(tmp_path, "broken.py", "raise RuntimeError('boom at import')\n")
    good = _write(tmp_path, "fine.py", GOOD.format(name="fine"))
    monkeypatch.setenv("TINYGRAD_RNN_PLUGINS", os.pathsep.join([bad, good]))
    assert tr.get_cell("fine").name == "fine"
    assert tr.get_cell("lstm").name == "lstm"
    err = capsys.readouterr().err
    assert "plugin 'broken'" in err and "boom at import" in err and len(err.strip().splitlines()) == 1
    status = {p["name"]: p["status"] for p in plugins.list_plugins()}
    assert "boom" in status["broken"] and status["fine"] == "ok"


def test_explicit_broken_plugin_is_an_error_naming_it(tmp_path):
    bad = _write(tmp_path, "explodes.py", "import no_such_module_xyz\n")
    tr.get_cell("rnn")  # registry built
    with pytest.raises(plugins.PluginError, match="explodes.*no_such_module_xyz"):
        tr.load_plugin(bad)
    with pytest.raises(plugins.PluginError, match="no such file"):
        tr.load_plugin(str(tmp_path / "missing.py"))


def test_a_taken_name_lists_both_providers(tmp_path):
    clash = _write(tmp_path, "clash.py", GOOD.format(name="lstm"))
    with pytest.raises(plugins.PluginError, match="'lstm' is registered by both 'tinygrad_rnn.cells.lstm' and 'clash'"):
        tr.load_plugin(clash)
        tr.get_cell("lstm")
    assert tr.get_cell("lstm").__module__ == "tinygrad_rnn.cells.lstm"


@pytest.mark.parametrize("body,match", [
    ("class C(tr.Cell):\n    name = 'nostep'\n", "does not define step"),
    ("class C(tr.Cell):\n    name = 'Bad Name'\n    def step(self, x, s): return s\n", "lower-case"),
    ("class C(tr.Cell):\n    name = 'zero'\n    num_states = 0\n    def step(self, x, s): return s\n", "num_states"),
    ("class C:\n    name = 'notacell'\n", "not a subclass of tinygrad_rnn.Cell"),
])
def test_contract_violations_at_registration(tmp_path, body, match):
    src = "import tinygrad_rnn as tr\n" + body + "\n@tr.hookimpl\ndef register_cells(register):\n    register(C)\n"
    path = _write(tmp_path, "violator.py", src)
    with pytest.raises(plugins.PluginError, match=f"violator.*{match}"):
        tr.load_plugin(path)
        tr.list_cells()


@pytest.mark.parametrize("ret,match", [
    ("(h, h)", "num_states=1 tensors, got 2"),
    ("(h[:, :1],)", r"shape \(2, 1\), expected \(2, 3\)"),
    ("(h.numpy(),)", "not a Tensor"),
])
def test_step_returning_wrong_states_names_cell_plugin_and_step(tmp_path, ret, match):
    src = f"""
    import tinygrad_rnn as tr
    class Wrong(tr.Cell):
        name = "wrong"
        def __init__(self, i, h):
            super().__init__(i, h)
            self.w = self.param((h, i))
        def step(self, x, state):
            h = (x @ self.w.T).tanh()
            return {ret}
    @tr.hookimpl
    def register_cells(register):
        register(Wrong)
    """
    tr.load_plugin(_write(tmp_path, "wrongcell.py", src))
    with pytest.raises(tr.errors.UserCodeError, match=f"cell 'wrong' \\(plugin 'wrongcell', .*wrongcell.py:8, in step\\) at time step 0.*{match}"):
        tr.nn.RNN("wrong", 2, 3)(np.ones((3, 2, 2), np.float32))


@pytest.mark.slow
def test_entry_points_are_discovered_and_deduplicated(tmp_path):
    # A real distribution on sys.path: what `pip install` leaves behind, without pip.
    site = tmp_path / "site"
    (site / "demo_cell_pkg.dist-info").mkdir(parents=True)
    (site / "demo_cell_pkg.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: demo-cell-pkg\nVersion: 1.0\n")
    (site / "demo_cell_pkg.dist-info" / "entry_points.txt").write_text("[tinygrad_rnn]\ndemo = demo_cell\n")
    (site / "demo_cell.py").write_text(textwrap.dedent(GOOD.format(name="demo")))
    code = textwrap.dedent(f"""
        import sys; sys.path[:0] = [{str(site)!r}, {str(site)!r}]
        import tinygrad_rnn as tr
        info = {{c["name"]: c for c in tr.list_cells()}}["demo"]
        print(info["plugin"], info["distribution"])
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["demo", "demo-cell-pkg"]
    assert out.stderr == ""
    env = dict(os.environ, TINYGRAD_RNN_NO_PLUGINS="1")
    code_off = code.replace('info = {', 'print(sorted(c["name"] for c in tr.list_cells())); info = {')
    off = subprocess.run([sys.executable, "-c", code_off], capture_output=True, text=True, env=env)
    assert "['gru', 'lstm', 'rnn']" in off.stdout and off.returncode != 0


@pytest.mark.parametrize("name", ["mgu", "peephole_lstm", "indrnn"])
def test_example_plugins_check_and_train(name):
    if name == "indrnn":
        tr.load_plugin(os.path.join(ROOT, "plugins", "indrnn.py"))
    elif name not in {c["name"] for c in tr.list_cells()}:  # not pip-installed: load from source
        sys.path.insert(0, EXAMPLES[name])
        tr.load_plugin("tinygrad_rnn_" + ("mgu" if name == "mgu" else "peephole"))
    report = tr.testing.check_cell(name)
    assert report.ok, str(report)
    tr.manual_seed(0)
    rnn = tr.nn.RNN(name, 2, 8)
    head = tr.nn.Linear(8, 1)
    x = np.random.default_rng(0).uniform(0, 1, (6, 16, 2)).astype(np.float32)
    y = x.sum(axis=(0, 2))[:, None]
    params = rnn.parameters() + head.parameters()
    losses = []
    for _ in range(2):
        out, _ = rnn(x)
        loss = tr.mse(head(out[-1]), y)
        for p in params:
            p.grad = None
        loss.backward()
        losses.append(loss.item())
        with tr.no_grad():
            for p in params:
                p.data -= 0.05 * p.grad.data
    assert losses[1] < losses[0]


def test_installed_example_plugins_are_found_by_entry_point():
    import importlib.metadata as md
    names = {ep.name for ep in md.entry_points(group="tinygrad_rnn")}
    if not {"mgu", "peephole_lstm"} <= names:
        pytest.skip("example plugins not pip-installed (CI installs them: see .ci/run)")
    cells = {c["name"]: c for c in tr.list_cells()}
    assert cells["mgu"]["distribution"] == "tinygrad-rnn-mgu"
    assert cells["peephole_lstm"]["distribution"] == "tinygrad-rnn-peephole"


def test_check_cell_reports_a_wrong_gradient(tmp_path):
    src = """
    import tinygrad_rnn as tr
    from tinygrad_rnn import ops
    leaky = ops.defop("bad_tanh", lambda k, a: k.tanh(a), lambda k, g, y, a: (g,))
    class Bad(tr.Cell):
        name = "badgrad"
        def __init__(self, i, h):
            super().__init__(i, h)
            self.w = self.param((h, i))
        def step(self, x, state):
            return (ops.apply(leaky, x @ self.w.T + state[0]),)
    @tr.hookimpl
    def register_cells(register):
        register(Bad)
    """
    tr.load_plugin(_write(tmp_path, "badgrad.py", src))
    try:
        report = tr.testing.check_cell("badgrad")
        assert not report.ok
        assert "FAIL  gradcheck: [cell 'badgrad'" in str(report)
        assert "gradient of the input" in str(report)
    finally:
        del tr.ops.OPS["bad_tanh"]


@pytest.mark.slow
def test_check_cell_passes_for_every_registered_cell():
    for info in tr.list_cells():
        report = tr.testing.check_cell(info["name"])
        assert report.ok, str(report)


def test_the_same_file_twice_is_one_plugin(tmp_path):
    path = _write(tmp_path, "twin.py", GOOD.format(name="twin"))
    tr.load_plugin(path)
    tr.load_plugin(os.path.join(str(tmp_path), ".", "twin.py"))  # another spelling of the same file
    assert tr.get_cell("twin").name == "twin"


# ---- hardening (issue 9, item 4) ------------------------------------------------
def _cli(*args, env=None):
    from click.testing import CliRunner

    import cli
    return CliRunner().invoke(cli.main, list(args), env=env)


@pytest.mark.parametrize("body", ["import sys\nsys.exit(0)\n", "raise SystemExit(3)\n",
                                  "raise RuntimeError('boom')\n"])
def test_an_auto_loaded_plugin_that_raises_anything_at_import_is_skipped(tmp_path, monkeypatch, body):
    path = _write(tmp_path, "quitter.py", body)
    monkeypatch.setenv("TINYGRAD_RNN_PLUGINS", path)
    warnings = []
    monkeypatch.setattr(plugins._state, "warn", warnings.append)
    assert "lstm" in {c["name"] for c in tr.list_cells()}  # the CLI still works
    assert len(warnings) == 1 and "plugin 'quitter': failed to import" in warnings[0]
    plugins.reset()
    result = _cli("cells", env={"TINYGRAD_RNN_PLUGINS": path})
    assert result.exit_code == 0 and "lstm" in result.stdout and len(warnings) == 2


def test_an_explicit_plugin_that_calls_sys_exit_is_an_error(tmp_path):
    path = _write(tmp_path, "quitter.py", "import sys\nsys.exit(0)\n")
    result = _cli("--plugin", path, "cells")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        f"Error: plugin 'quitter': failed to import {path!r}: SystemExit: 0"]


def test_a_plugin_that_registers_nothing_is_reported(tmp_path, monkeypatch):
    forgot = _write(tmp_path, "forgot.py", GOOD.format(name="forgot").replace("    @tr.hookimpl\n", ""))
    with pytest.raises(plugins.PluginError, match="forgot.*register_cells is not decorated with @tr.hookimpl"):
        tr.load_plugin(forgot)
        tr.list_cells()
    plugins.reset()
    empty = _write(tmp_path, "empty.py", "X = 1\n")
    warnings = []
    monkeypatch.setattr(plugins._state, "warn", warnings.append)
    monkeypatch.setenv("TINYGRAD_RNN_PLUGINS", empty)
    tr.list_cells()
    assert warnings == ["plugin 'empty': registers nothing (no register_cells or register_tasks hook, "
                        "or they never call register) (skipped)"]


def test_an_explicit_file_is_not_shadowed_by_an_installed_plugin_of_the_same_name(tmp_path, monkeypatch):
    # An "installed" plugin named "shadow" (here: from TINYGRAD_RNN_PLUGINS) and a different
    # file shadow.py given explicitly: both load, and their clash is an error naming both.
    installed = tmp_path / "site"
    installed.mkdir()
    first = _write(installed, "shadow.py", GOOD.format(name="shadowcell"))
    second = _write(tmp_path, "shadow.py", GOOD.format(name="othercell"))
    monkeypatch.setenv("TINYGRAD_RNN_PLUGINS", first)
    tr.load_plugin(second)
    names = {c["name"]: c["plugin"] for c in tr.list_cells()}
    assert names["shadowcell"] == "shadow" and names["othercell"] == second
    plugins.reset()
    clash = _write(tmp_path / "site", "clash.py", GOOD.format(name="othercell"))
    monkeypatch.setenv("TINYGRAD_RNN_PLUGINS", clash)
    with pytest.raises(plugins.PluginError, match="'othercell' is registered by both 'clash' and"):
        tr.load_plugin(second)
        tr.list_cells()


def test_no_plugins_keeps_explicit_plugins(tmp_path, monkeypatch):
    monkeypatch.setenv("TINYGRAD_RNN_NO_PLUGINS", "1")
    tr.load_plugin(_write(tmp_path, "kept.py", GOOD.format(name="kept")))
    names = {c["name"] for c in tr.list_cells()}
    assert "kept" in names and "mgu" not in names
    result = _cli("--plugin", str(tmp_path / "kept.py"), "cells", "--json", env={"TINYGRAD_RNN_NO_PLUGINS": "1"})
    assert result.exit_code == 0 and "kept" in result.stdout


def test_registrations_are_all_or_nothing_across_hooks(tmp_path, monkeypatch):
    src = GOOD.format(name="halfcell") + """
    @tr.hookimpl
    def register_tasks(register):
        raise RuntimeError("task setup failed")
"""
    warnings = []
    monkeypatch.setattr(plugins._state, "warn", warnings.append)
    monkeypatch.setenv("TINYGRAD_RNN_PLUGINS", _write(tmp_path, "half.py", src))
    assert "halfcell" not in {c["name"] for c in tr.list_cells()}
    assert warnings == ["plugin 'half': register_tasks raised RuntimeError: task setup failed (skipped)"]
    status = {p["name"]: p for p in plugins.list_plugins()}["half"]
    assert status["cells"] == [] and "task setup failed" in status["status"]


def test_what_a_plugin_prints_while_loading_does_not_corrupt_json(tmp_path):
    import json
    chatty = _write(tmp_path, "chatty.py", 'print("hello from chatty")\n' + textwrap.dedent(GOOD.format(name="chatty")))
    for env in ({"TINYGRAD_RNN_PLUGINS": chatty}, {}):
        plugins.reset()
        args = ["cells", "--json"] if env else ["--plugin", chatty, "cells", "--json"]
        result = _cli(*args, env=env)
        assert result.exit_code == 0, result.output
        assert "chatty" in {c["name"] for c in json.loads(result.stdout)}
        assert "hello from chatty" in result.stderr


def test_a_plugin_file_named_like_an_installed_entry_point_is_loaded(tmp_path):
    import importlib.metadata as md
    if "mgu" not in {ep.name for ep in md.entry_points(group="tinygrad_rnn")}:
        pytest.skip("example plugins not pip-installed")
    mine = _write(tmp_path, "mgu.py", GOOD.format(name="mymgu"))  # plugin name "mgu", like the entry point
    tr.load_plugin(mine)
    cells = {c["name"]: c["plugin"] for c in tr.list_cells()}
    assert cells["mgu"] == "mgu" and cells["mymgu"] == mine
    plugins.reset()
    clash = _write(tmp_path, "mgu_copy.py", GOOD.format(name="mgu"))
    with pytest.raises(plugins.PluginError, match="cell name 'mgu' is registered by both 'mgu' and"):
        tr.load_plugin(clash)
        tr.list_cells()


def test_a_misspelled_hook_is_a_plugin_error_naming_it(tmp_path, monkeypatch):
    typo = _write(tmp_path, "typo.py", GOOD.format(name="typo").replace("def register_cells", "def register_cellz"))
    with pytest.raises(plugins.PluginError, match=r"^plugin 'typo': @tr.hookimpl register_cellz: no hook has that "
                                                  r"name \(misspelt\?\); the hooks are: register_cells, register_tasks$"):
        tr.load_plugin(typo)
        tr.list_cells()
    plugins.reset()
    # installed (here: from the environment): skipped with a warning, and `plugins` shows why
    also = _write(tmp_path, "also.py", textwrap.dedent(GOOD.format(name="also")) + "\n@tr.hookimpl\ndef register_taskz(register):\n"
                                                                  "    pass\n")
    warnings = []
    monkeypatch.setattr(plugins._state, "warn", warnings.append)
    monkeypatch.setenv("TINYGRAD_RNN_PLUGINS", also)
    assert "also" not in {c["name"] for c in tr.list_cells()}
    assert warnings == ["plugin 'also': @tr.hookimpl register_taskz: no hook has that name (misspelt?); "
                        "the hooks are: register_cells, register_tasks (skipped)"]
    assert [p["status"] for p in tr.plugins.list_plugins() if p["name"] == "also"] == [warnings[0][len("plugin 'also': "):-len(" (skipped)")]]
