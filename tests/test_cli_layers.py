"""The CLI's layer and training options: bidirectional, dropout, embeddings, schedules,
evaluation, early stopping and cell options; bad values end in one line, never a traceback."""
import json
import os

import pytest

import tinygrad_rnn as tr
from test_cli import ROOT, expected_verdict, fresh_registry, run  # noqa: F401  (the autouse fixture and helper)

SMALL = ["--seq-len", "8", "--hidden", "8", "--batch", "4"]


def test_train_with_every_new_option(tmp_path):
    log = tmp_path / "log.jsonl"
    r = run("train", "--cell", "gru", "--task", "copy", *SMALL, "--steps", "12", "--layers", "2",
            "--bidirectional", "--dropout", "0.2", "--lr-schedule", "cosine", "--warmup", "3",
            "--eval-every", "4", "--patience", "5", "--log", str(log), "--save", str(tmp_path / "ck.npz"), "--json")
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    assert s["best_step"] in (4, 8, 12) and s["stopped_early"] is False
    evals = [json.loads(l) for l in log.read_text().splitlines() if "eval_loss" in l]
    assert [e["step"] for e in evals] == [4, 8, 12]


def test_embed_for_text_and_generate(tmp_path):
    ck = str(tmp_path / "t.npz")
    r = run("train", "--task", "text", *SMALL, "--steps", "3", "--embed", "6", "--save", ck)
    assert r.exit_code == 0, r.output
    assert "bits/symbol" in r.stdout
    r = run("generate", "--checkpoint", ck, "--prime", "The ", "--length", "5")
    assert r.exit_code == 0 and r.stdout.startswith("The ")


def test_cell_option_makes_a_relu_rnn_everywhere():
    r = run("train", "--cell", "rnn", "--task", "sum", *SMALL, "--steps", "2", "--cell-option", "nonlinearity=relu",
            "--init", "identity", "--json")
    assert r.exit_code == 0, r.output
    r = run("diagnose", "--cell", "rnn", "--seq-len", "10", "--hidden", "8", "--cell-option", "nonlinearity=relu",
            "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["cell_options"] == {"nonlinearity": "relu"}
    r = run("gradcheck", "--cell", "rnn", "--cell-option", "nonlinearity=relu")
    assert r.exit_code == 0, r.output
    installed = any(c["name"] == "peephole_lstm" for c in tr.list_cells())
    plugin = [] if installed else ["--plugin", os.path.join(ROOT, "plugins", "peephole", "tinygrad_rnn_peephole.py")]
    r = run(*plugin, "gradcheck", "--cell", "peephole_lstm", "--cell-option", "forget_bias=2")
    assert r.exit_code == 0, r.output


def test_diagnose_bidirectional_table_and_json():
    r = run("diagnose", "--cell", "lstm", "--seq-len", "10", "--hidden", "8", "--layers", "2", "--bidirectional")
    assert r.exit_code == 0, r.output
    assert "  reverse      init" in r.stdout and "reverse: the reverse direction" in r.stdout
    r = run("diagnose", "--cell", "gru", "--seq-len", "10", "--hidden", "8", "--bidirectional", "--json")
    report = json.loads(r.stdout)
    c = report["cells"][0]
    assert len(c["grad_norm_per_step"][0]) == len(c["grad_norm_per_step_reverse"][0]) == 10
    # the reverse direction processes t = T-1 first: its verdict reads its norms backwards
    reverse = c["grad_norm_per_step_reverse"][0][::-1]
    assert c["reverse"]["verdict"] == expected_verdict(reverse, report["thresholds"]) == c["final_reverse_verdict"]
    assert c["verdict"] == expected_verdict(c["grad_norm_per_step"][0], report["thresholds"])


@pytest.mark.parametrize("args,message", [
    (["train", "--dropout", "1"], "Invalid value for '--dropout'"),
    (["train", "--dropout", "-0.5"], "Invalid value for '--dropout'"),
    (["train", "--embed", "0"], "Invalid value for '--embed'"),
    (["train", "--lr-schedule", "linear"], "Invalid value for '--lr-schedule'"),
    (["train", "--warmup", "-1"], "Invalid value for '--warmup'"),
    (["train", "--lr-gamma", "0"], "Invalid value for '--lr-gamma'"),
    (["train", "--cell", "lstm", "--cell-option", "nonlinearity=relu"],
     "Invalid value for --cell-option: cell 'lstm' has no option 'nonlinearity'"),
    (["train", "--cell", "rnn", "--cell-option", "nonlinearity=sigmoid"], "nonlinearity must be 'tanh' or 'relu'"),
    (["train", "--cell", "rnn", "--cell-option", "relu"], "expected KEY=VALUE"),
    (["diagnose", "--cell-option", "nonlinearity=relu"], "cell 'lstm' has no option 'nonlinearity'"),
    (["gradcheck", "--cell", "gru", "--cell-option", "bias=0"], "cell 'gru' has no option 'bias'"),
])
def test_bad_values_are_usage_errors(args, message):
    r = run(*args)
    assert r.exit_code == 2 and message in r.output, r.output


@pytest.mark.parametrize("args,message", [
    (["--task", "text", "--bidirectional"], "--bidirectional cannot train on task 'text'"),
    (["--task", "adding", "--embed", "8"], "--embed 8 needs a task whose inputs are tokens"),
    (["--lr-schedule", "plateau"], "give --eval-every N"),
    (["--patience", "2"], "--patience 2 counts evaluations: give --eval-every N"),
    (["--warmup", "50"], "--warmup 50 must be below --steps 5"),
    (["--save-every", "2"], "--save-every 2 needs --save PATH"),
])
def test_incompatible_options_are_one_line_errors(args, message):
    r = run("train", *SMALL, "--steps", "5", *args)
    assert r.exit_code == 1 and message in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1


def test_resume_with_conflicting_options(tmp_path):
    ck = str(tmp_path / "ck.npz")
    assert run("train", "--task", "sum", *SMALL, "--steps", "2", "--save", ck).exit_code == 0
    r = run("train", "--steps", "4", "--resume", ck, "--bidirectional")
    assert r.exit_code == 1 and "--bidirectional conflicts with the resumed run's bidirectional False" in r.output
    r = run("train", "--steps", "4", "--resume", ck, "--lr-schedule", "cosine")
    assert r.exit_code == 1 and "--lr-schedule 'cosine' conflicts with the resumed run's lr_schedule 'constant'" in r.output
    assert run("train", "--steps", "4", "--resume", ck).exit_code == 0
