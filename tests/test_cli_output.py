"""Output and messages a user sees (issue 9, items 8, 9 and 10)."""
import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

import cli
import tinygrad_rnn as tr
from tinygrad_rnn import notices, optim, training
from tinygrad_rnn.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--seq-len", "5", "--hidden", "3", "--batch", "2"]


pytestmark = pytest.mark.usefixtures("clean_plugins")


def run(*args, **kw):
    return CliRunner().invoke(cli.main, list(args), **kw)


# ---- item 8: output ---------------------------------------------------------------------
def test_json_is_always_valid_and_flags_non_finite_numbers(monkeypatch):
    real = training.train

    def nan_run(**kw):
        summary = real(**kw)
        return dict(summary, train_loss=float("inf"), eval_loss=float("nan"), skipped_steps=2)
    monkeypatch.setattr(training, "train", nan_run)
    result = run("train", "--cell", "rnn", "--task", "sum", *SMALL, "--steps", "2", "--json")
    assert result.exit_code == 0, result.output
    assert "Infinity" not in result.stdout and "NaN" not in result.stdout
    out = json.loads(result.stdout, parse_constant=lambda c: pytest.fail(f"non-standard JSON {c}"))
    assert out["train_loss"] is None and out["eval_loss"] is None
    assert out["nonfinite"] == ["train_loss", "eval_loss"]
    human = run("train", "--cell", "rnn", "--task", "sum", *SMALL, "--steps", "2")
    assert "train loss inf  eval loss -" in human.stdout
    assert "skipped 2 step(s) with a non-finite loss or gradient" in human.stdout


def test_skip_on_a_diverging_run_gives_valid_json_and_counts_skips():
    result = run("train", "--cell", "rnn", "--task", "sum", *SMALL, "--steps", "6", "--optimizer", "sgd",
                 "--lr", "1e6", "--on-nonfinite", "skip", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout, parse_constant=lambda c: pytest.fail(f"non-standard JSON {c}"))
    assert out["skipped_steps"] >= 1 and "eval_loss" in out


def test_progress_flag_overrides_the_terminal_check():
    args = ["train", "--cell", "rnn", "--task", "sum", *SMALL, "--steps", "3"]
    assert "step 3/3" not in run(*args).stderr  # not a terminal: no progress by default
    forced = run(*args, "--progress")
    assert "step 3/3  loss" in forced.stderr and "step 1/3" not in forced.stdout
    assert "step 1/3" not in run(*args, "--no-progress").stderr


# ---- item 9: confusing messages -----------------------------------------------------------
def test_negative_seed_is_refused_clearly():
    result = run("train", "--seed", "-1", "--steps", "1")
    assert result.exit_code == 2 and "Invalid value for '--seed': -1 is not in the range x>=0" in result.stderr
    with pytest.raises(ConfigError, match="seed must be an integer >= 0, got -1"):
        training.train(cell="rnn", task="sum", seq_len=4, hidden=2, batch=2, steps=1, seed=-1)


@pytest.mark.parametrize("kwargs,message", [
    ({"nonsense": 1}, "train() got an unexpected keyword argument 'nonsense'"),
    ({"hiden": 4}, "train() got an unexpected keyword argument 'hiden'. Did you mean 'hidden'?"),
    ({"cell": "rnn", "seq_lenn": 4}, "train() got an unexpected keyword argument 'seq_lenn'. Did you mean 'seq_len'?"),
])
def test_an_unknown_train_argument_is_a_typeerror_worded_like_pythons(kwargs, message):
    with pytest.raises(TypeError) as e:
        tr.train(**kwargs)
    assert str(e.value) == message


def test_a_tiny_temperature_samples_greedily_instead_of_nan(tmp_path):
    path = str(tmp_path / "char.npz")
    training.train(cell="gru", task="text", seq_len=8, hidden=6, batch=4, steps=2, save=path)
    out = training.generate(path, prime="th", length=10, temperature=1e-300)
    assert len(out) == 12
    result = run("generate", "--checkpoint", path, "--length", "5", "--temperature", "1e-300")
    assert result.exit_code == 0 and "NaN" not in result.output


def test_diagnose_on_a_cell_that_produces_nan_says_so(tmp_path):
    path = tmp_path / "nancell.py"
    path.write_text("import tinygrad_rnn as tr\n"
                    "class NaNCell(tr.Cell):\n"
                    "    name = 'nancell'\n"
                    "    def __init__(self, i, h):\n"
                    "        super().__init__(i, h)\n"
                    "        self.w = self.param((h, i))\n"
                    "    def step(self, x, state):\n"
                    "        return ((x @ self.w.T + state[0]).log(),)\n"
                    "@tr.hookimpl\n"
                    "def register_cells(register):\n"
                    "    register(NaNCell)\n")
    with np.errstate(all="ignore"):
        result = run("--plugin", str(path), "diagnose", "--cell", "nancell", "--seq-len", "4", "--hidden", "3")
    assert result.exit_code == 1
    # with a cold kernel cache the compile note comes first (the kernels, backward too, compile before the run)
    line, = [x for x in result.stderr.strip().splitlines() if not x.startswith("note: compiling")]
    assert line.startswith("Error: cell 'nancell' produces a non-finite output (nan) at time step 0")
    assert line.endswith("(check its step, --init and --hidden)")
    assert "SVD" not in result.output
    tr.load_plugin(str(path))
    with np.errstate(all="ignore"), pytest.raises(tr.errors.NonFiniteError) as e:  # from Python, in its names
        tr.report.diagnose(cells=["nancell"], seq_len=4, hidden=3)
    assert str(e.value).endswith("(check its step, init_scheme= and hidden=)")


def test_diagnose_accepts_data_for_the_series_task(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text("\n".join(str(np.sin(i / 5)) for i in range(200)))
    result = run("diagnose", "--task", "series", "--cell", "rnn", "--seq-len", "8", "--hidden", "4",
                 "--batch", "2", "--data", str(path), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["task"] == "series"
    result = run("diagnose", "--task", "series", "--cell", "rnn")
    assert result.exit_code == 1 and "--data PATH" in result.stderr  # an option diagnose has


def test_transpose_refuses_out_of_range_axes():
    t = tr.Tensor(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"transpose: axes \(0, 2\) out of range for shape \(2, 3\)"):
        t.transpose(0, 2)
    with pytest.raises(ValueError, match="out of range"):
        t.transpose(-3, 0)
    assert t.transpose(-1, 0).shape == (3, 2)  # negative axes count from the end, as in NumPy


def test_numpy_scalars_are_accepted_where_floats_are_expected():
    p = tr.nn.Parameter(np.ones(3))
    p.grad = tr.Tensor(np.full(3, 10.0))
    assert optim.clip_grad_norm([p], np.float32(1.0)) == pytest.approx(np.sqrt(300))
    optim.clip_grad_value([p], np.float64(0.1))
    optim.Adam([p], lr=np.float32(0.01), weight_decay=np.float64(0.0)).step()
    summary = training.train(cell="rnn", task="sum", seq_len=4, hidden=2, batch=np.int64(2), steps=1,
                             lr=np.float32(0.01), clip_norm=np.float32(1.0))
    assert summary["steps"] == 1


# ---- item 10: new-user polish -------------------------------------------------------------
def test_check_cell_report_repr_shows_the_report():
    report = tr.testing.check_cell("rnn")
    assert repr(report) == str(report) and repr(report).startswith("check_cell 'rnn': all checks passed")


def test_cells_and_plugins_have_header_rows():
    assert run("cells").stdout.splitlines()[0].split() == ["CELL", "PLUGIN", "DESCRIPTION"]
    assert run("plugins").stdout.splitlines()[0].split() == ["PLUGIN", "SOURCE", "DISTRIBUTION", "STATUS", "PROVIDES"]


@pytest.mark.parametrize("command", ["train", "diagnose"])
def test_help_describes_every_option_and_lists_cells_and_tasks(command):
    result = run("--plugin", os.path.join(ROOT, "plugins", "indrnn.py"), command, "--help")
    assert result.exit_code == 0
    cmd = cli.main.commands[command]
    for param in cmd.params:
        if isinstance(param, __import__("click").Option) and param.name != "help":
            assert param.help, f"{command} {param.opts[0]} has no help"
    assert "Registered cells" in result.stdout and "Registered tasks" in result.stdout
    for name in ("lstm", "gru", "indrnn", "adding", "text", "series"):
        assert f"  {name} " in result.stdout


def test_shell_completion_completes_cell_and_task_names():
    env = {"_TINYGRAD_RNN_COMPLETE": "bash_complete", "COMP_WORDS": "tinygrad-rnn train --cell l", "COMP_CWORD": "3"}
    result = CliRunner().invoke(cli.main, [], prog_name="tinygrad-rnn", env=env)
    assert "plain,lstm" in result.stdout.splitlines()
    env.update(COMP_WORDS="tinygrad-rnn diagnose --task s", COMP_CWORD="3")
    result = CliRunner().invoke(cli.main, [], prog_name="tinygrad-rnn", env=env)
    assert {"plain,series", "plain,sine", "plain,sum"} <= set(result.stdout.splitlines())


def test_a_note_is_printed_while_kernels_compile():
    from numba import njit
    said = []
    with notices.compile_notice(threshold=0.0, say=said.append):
        njit(lambda a: a + 1)(np.float64(1))  # a fresh function: Numba compiles it
    assert said == [notices.COMPILE_NOTE]
    said.clear()
    with notices.compile_notice(threshold=3600, say=said.append):
        njit(lambda a: a * 2)(np.float64(1))
    assert said == []  # below the threshold: silence


def test_sparklines_share_one_scale_across_rows():
    from tinygrad_rnn import diagnostics
    steep = 10.0 ** -np.linspace(20, 0, 40)   # falls by 1e-20
    gentle = 10.0 ** -np.linspace(2, 0, 40)   # falls by 1e-2
    scale = diagnostics.sparkline_scale([steep, gentle])
    assert scale == pytest.approx((-20, 0))
    assert diagnostics.sparkline(gentle, scale=scale).startswith("▇")  # near the top of the shared scale
    assert diagnostics.sparkline(steep, scale=scale).startswith("▁")
    assert diagnostics.sparkline(gentle).startswith("▁")  # scaled alone, it would look the same as steep
    result = run("diagnose", "--seq-len", "6", "--hidden", "4", "--batch", "2", "--cell", "rnn", "--cell", "gru")
    assert "on one log scale for all rows: ▁ = " in result.stdout


@pytest.mark.parametrize("scheme,label", [("pytorch", "init pytorch (each cell's own: PyTorch's for the built-ins)"),
                                          ("orthogonal", "init orthogonal (on *hh* weights; other matrices "
                                                         "xavier_uniform, vectors 0)")])
def test_the_diagnose_header_says_what_init_did(scheme, label):
    result = run("diagnose", "--seq-len", "4", "--hidden", "3", "--batch", "2", "--cell", "rnn", "--init", scheme)
    assert label in result.stdout.splitlines()[0]


def test_training_shows_a_click_progress_bar_when_stderr_is_a_terminal(monkeypatch):
    import io

    class Terminal(io.StringIO):
        def isatty(self):
            return True
    term = Terminal()
    monkeypatch.setattr("sys.stderr", term)
    with cli._progress_bar(True, 4) as update:
        for step in range(1, 5):
            update(step, 4, 0.5, 1.0)
    assert "training" in term.getvalue() and "4/4" in term.getvalue() and "loss 0.5000" in term.getvalue()
