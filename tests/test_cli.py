"""The CLI through click's CliRunner: clean JSON on stdout, one-line errors, exit codes."""
import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

import cli
from tinygrad_rnn import plugins

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def fresh_registry():
    plugins.reset()
    yield
    plugins.reset()


def run(*args):
    result = CliRunner().invoke(cli.main, list(args))
    assert "Traceback" not in result.output, result.output
    return result


def test_version_and_help():
    assert "tinygrad-rnn, version" in run("--version").stdout
    assert "diagnose" in run("-h").stdout


def test_cells_and_plugins_json():
    cells = json.loads(run("cells", "--json").stdout)
    assert {c["name"] for c in cells} >= {"rnn", "lstm", "gru"}
    loaded = json.loads(run("plugins", "--json").stdout)
    assert any(p["name"] == "tinygrad_rnn.cells.lstm" and p["status"] == "ok" for p in loaded)
    assert "lstm" in run("cells").stdout


def test_plugin_option_loads_a_file_and_a_broken_one_fails_cleanly(tmp_path):
    result = run("--plugin", os.path.join(ROOT, "plugins", "indrnn.py"), "cells", "--json")
    assert "indrnn" in {c["name"] for c in json.loads(result.stdout)}
    bad = tmp_path / "broken.py"
    bad.write_text("raise ImportError('missing dependency xyz')\n")
    result = run("--plugin", str(bad), "cells")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        "Error: plugin 'broken': failed to import " + repr(str(bad)) + ": ImportError: missing dependency xyz"]


def expected_verdict(norms, thresholds):
    """The verdict the README defines, from the first-to-last ratio of ``norms`` (time order)."""
    ratio = norms[0] / norms[-1] if norms[-1] > 0 else 0.0
    if ratio < thresholds["vanishing_ratio"]:
        return "vanishing"
    return "exploding" if ratio > thresholds["exploding_ratio"] else "healthy"


def test_diagnose_json_schema_and_fail_on():
    result = run("diagnose", "--seq-len", "20", "--hidden", "8", "--batch", "4", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)  # stdout is one JSON document and nothing else
    assert report["task"] == "adding" and report["seq_len"] == 20
    assert [c["cell"] for c in report["cells"]] == ["rnn", "lstm", "gru"]
    for c in report["cells"]:
        assert len(c["grad_norm_per_step"]) == 1 and len(c["grad_norm_per_step"][0]) == 20
        assert c["verdict"] == expected_verdict(c["grad_norm_per_step"][0], report["thresholds"]) and "horizon" in c
    failed = run("diagnose", "--cell", "rnn", "--seq-len", "60", "--hidden", "8", "--fail-on", "vanishing")
    assert failed.exit_code == 3
    assert "vanishing" in failed.stdout


def test_diagnose_human_output_and_training():
    result = run("diagnose", "--cell", "gru", "--seq-len", "10", "--hidden", "8", "--steps", "3", "--batch", "4")
    assert result.exit_code == 0, result.output
    assert "gru" in result.stdout and "step 3" in result.stdout and "▁" in result.stdout


@pytest.mark.slow
def test_diagnose_plot(tmp_path):
    out = tmp_path / "g.png"
    result = run("diagnose", "--cell", "rnn", "--seq-len", "10", "--hidden", "4", "--plot", str(out))
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert result.exit_code == 1 and "matplotlib" in result.stderr
        return
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("args,code,needle", [
    (["diagnose", "--cell", "nope"], 2, "unknown cell 'nope'"),
    (["diagnose", "--fail-on", "sad"], 2, "unknown verdict"),
    (["train", "--task", "nope"], 2, "unknown task 'nope'"),
    (["train", "--hidden", "0"], 2, "--hidden"),
    (["train", "--lr", "-1"], 2, "--lr"),
    (["train", "--clip-norm", "-0.5"], 2, "--clip-norm"),
    (["train", "--optimizer", "adagrad"], 2, "--optimizer"),
    (["train", "--bptt", "5", "--steps", "1"], 1, "stream tasks"),
    (["train", "--task", "text", "--data", "/no/such/file.txt"], 1, "no such file"),
    (["train", "--task", "series"], 1, "needs a data file: --data PATH (.npy or .csv)"),
    (["train", "--resume", "/no/such.npz"], 1, "no such checkpoint"),
    (["generate", "--checkpoint", "/no/such.npz"], 1, "no such checkpoint"),
    (["gradcheck", "--cell", "nope"], 2, "unknown cell"),
])
def test_user_mistakes_are_one_line_with_exit_code(args, code, needle):
    result = run(*args)
    assert result.exit_code == code, result.output
    assert needle in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len([l for l in lines if l.startswith("Error:")]) == 1 and len(lines) <= 4  # click's usage + one error


def test_device_cuda_without_gpu_says_so(monkeypatch):
    from tinygrad_rnn import backend
    monkeypatch.setattr(backend, "cuda_available", lambda: (False, "no NVIDIA driver or GPU found"))
    result = run("train", "--device", "cuda", "--steps", "1")
    assert result.exit_code == 2 and "no CUDA GPU is available" in result.stderr


def test_train_json_save_resume_generate(tmp_path):
    ck = str(tmp_path / "m.npz")
    base = ["train", "--task", "text", "--seq-len", "16", "--hidden", "16", "--batch", "4", "--bptt", "8",
            "--log-every", "2"]
    first = run(*base, "--steps", "4", "--save", ck, "--json")
    assert first.exit_code == 0, first.output
    summary = json.loads(first.stdout)
    for key in ("cell", "task", "steps", "train_loss", "eval_loss", "baseline_loss", "seconds", "steps_per_second"):
        assert key in summary
    again = json.loads(run(*base, "--steps", "6", "--resume", ck, "--json").stdout)
    assert again["start_step"] == 4 and again["steps"] == 6
    text = run("generate", "--checkpoint", ck, "--prime", "The ", "--length", "12", "--seed", "3")
    assert text.exit_code == 0 and text.stdout.startswith("The ") and len(text.stdout.rstrip("\n")) == 16
    bad_prime = run("generate", "--checkpoint", ck, "--prime", "€")
    assert bad_prime.exit_code == 1 and "vocabulary" in bad_prime.stderr


def test_corrupt_checkpoint_and_non_text_generate(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"garbage")
    result = run("train", "--resume", str(bad))
    assert result.exit_code == 1 and "corrupt" in result.stderr
    ck = str(tmp_path / "add.npz")
    assert run("train", "--steps", "2", "--seq-len", "5", "--hidden", "4", "--save", ck).exit_code == 0
    result = run("generate", "--checkpoint", ck)
    assert result.exit_code == 1 and "needs a text model" in result.stderr


def test_series_nan_is_named(tmp_path):
    data = np.sin(np.arange(400) / 7.0)
    data[77] = np.inf
    np.save(tmp_path / "s.npy", data)
    result = run("train", "--task", "series", "--data", str(tmp_path / "s.npy"), "--seq-len", "10")
    assert result.exit_code == 1 and "row 77" in result.stderr


def test_gradcheck_command():
    result = run("gradcheck", "--cell", "gru")
    assert result.exit_code == 0 and "all checks passed" in result.stdout


def test_plot_without_matplotlib_is_a_clear_error(monkeypatch, tmp_path):
    import sys
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    result = run("diagnose", "--cell", "rnn", "--seq-len", "5", "--hidden", "3", "--plot", str(tmp_path / "x.png"))
    assert result.exit_code == 1
    assert result.stderr.strip() == "Error: --plot needs matplotlib: pip install 'tinygrad-rnn[plot]'"


def test_data_for_a_task_that_makes_its_own_is_an_error(tmp_path):
    (tmp_path / "d.txt").write_text("hello")
    result = run("train", "--task", "adding", "--data", str(tmp_path / "d.txt"), "--steps", "1")
    assert result.exit_code == 1 and "makes its own data" in result.stderr


@pytest.mark.parametrize("command", [["diagnose", "--cell", "rnn", "--seq-len", "5", "--hidden", "3"],
                                     ["sweep", "--cell", "rnn", "--seq-len", "5", "--steps", "1"]])
@pytest.mark.parametrize("name,why", [("x.txt", "matplotlib cannot write 'txt' files"),
                                      ("data.npy", "matplotlib cannot write 'npy' files"),
                                      ("plot", "the name has no extension")])
def test_a_plot_path_matplotlib_cannot_write_is_a_usage_error_before_any_work(tmp_path, monkeypatch, command,
                                                                              name, why):
    pytest.importorskip("matplotlib")
    monkeypatch.setattr("tinygrad_rnn.report.diagnose", lambda *a, **k: pytest.fail("diagnosed"))
    monkeypatch.setattr("tinygrad_rnn.distributed.sweep.run", lambda *a, **k: pytest.fail("swept"))
    result = run(*command, "--out", str(tmp_path / "sw.jsonl"), "--plot", str(tmp_path / name)) \
        if command[0] == "sweep" else run(*command, "--plot", str(tmp_path / name))
    assert result.exit_code == 2
    assert f"Invalid value for '--plot': {str(tmp_path / name)!r}: {why}; end it in .png, .svg or .pdf" \
        in result.stderr
    assert not (tmp_path / name).exists() and not (tmp_path / f"{name}.png").exists()


def test_a_resumed_run_reports_the_steps_it_ran_and_says_when_nothing_is_saved(tmp_path):
    ck = str(tmp_path / "s.npz")
    tiny = ["--cell", "rnn", "--task", "sum", "--seq-len", "4", "--hidden", "2"]
    first = run("train", *tiny, "--steps", "20", "--save", ck)
    compiling = "note: compiling Numba kernels"  # a cold kernel cache says so once: not this test's note
    assert "20 steps in" in first.stdout and "note:" not in first.stderr.replace(compiling, ""), first.stderr
    again = run("train", "--resume", ck, "--steps", "30")
    assert again.exit_code == 0, again.output
    assert "steps 21-30 of 30 in" in again.stdout
    assert again.stderr.strip() == (f"note: without --save the 10 step(s) run now are not saved ({ck} is "
                                    "unchanged, at step 20); add --save PATH to keep them")
    summary = json.loads(run("train", "--resume", ck, "--steps", "30", "--json").stdout)
    assert (summary["start_step"], summary["steps_run"], summary["steps"]) == (20, 10, 30)
    saved = run("train", "--resume", ck, "--steps", "30", "--save", ck)
    assert "note:" not in saved.stderr and "checkpoint written to" in saved.stdout
    done = run("train", "--resume", ck, "--steps", "30")
    assert "no steps (the checkpoint is already at step 30 of 30)" in done.stdout and "note:" not in done.stderr


@pytest.mark.parametrize("option", ["--lr", "--clip-norm", "--clip-value", "--weight-decay", "--l1", "--dropout",
                                    "--lr-gamma"])
@pytest.mark.parametrize("value", ["nan", "-nan", "inf"])
def test_a_non_finite_number_is_a_usage_error(option, value):
    result = run("train", option, value, "--steps", "1")
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{option}'" in result.stderr


def test_a_cell_option_error_says_it_once():
    result = run("train", "--cell", "rnn", "--cell-option", "nonlinearity=foo", "--steps", "1")
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "Error: Invalid value for --cell-option: cell 'rnn': nonlinearity must be 'tanh' or 'relu', got 'foo'")


def test_the_ctrl_c_summary_is_not_an_error_line(monkeypatch):
    from tinygrad_rnn import training

    def interrupted(**kwargs):
        raise training.TrainingInterrupted("interrupted at step 7 of 100; the run up to it is saved in 'x.npz': "
                                           "--resume x.npz to continue")
    monkeypatch.setattr(training, "train", interrupted)
    result = run("train", "--steps", "100", "--save", "x.npz")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        "interrupted at step 7 of 100; the run up to it is saved in 'x.npz': --resume x.npz to continue"]
