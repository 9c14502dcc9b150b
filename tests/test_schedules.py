"""Learning-rate schedules (tr.optim), evaluation during training, early stopping, and
exact resumption of all of it (with dropout) from checkpoints."""
import json

import numpy as np
import pytest

import tinygrad_rnn as tr
from tinygrad_rnn import checkpoint, optim
from tinygrad_rnn.training import train


def _opt(lr=0.1):
    return optim.SGD([tr.nn.Parameter(np.zeros(2))], lr=lr)


def _rates(sched, n, metrics=None):
    out = []
    for i in range(n):
        out.append(sched.optimizer.lr)
        sched.step() if metrics is None else sched.step(metrics[i])
    return out


@pytest.mark.parametrize("make,make_torch", [
    (lambda o: optim.StepLR(o, 3, 0.5), lambda torch, o: torch.optim.lr_scheduler.StepLR(o, 3, 0.5)),
    (lambda o: optim.CosineAnnealingLR(o, 7, 0.01),
     lambda torch, o: torch.optim.lr_scheduler.CosineAnnealingLR(o, 7, 0.01)),
], ids=["step", "cosine"])
def test_schedules_match_pytorch(make, make_torch):
    torch = pytest.importorskip("torch")
    topt = torch.optim.SGD([torch.zeros(2, requires_grad=True)], lr=0.1)
    tsched = make_torch(torch, topt)
    theirs = []
    for _ in range(12):
        theirs.append(topt.param_groups[0]["lr"])
        topt.step()
        tsched.step()
    np.testing.assert_allclose(_rates(make(_opt()), 12), theirs, rtol=1e-12)


def test_plateau_matches_pytorch():
    torch = pytest.importorskip("torch")
    metrics = [5, 4, 4, 4, 4, 3.9999, 3, 3, 3, 3, 3, 2, 2, 2, 2, 2]
    topt = torch.optim.SGD([torch.zeros(2, requires_grad=True)], lr=0.1)
    tsched = torch.optim.lr_scheduler.ReduceLROnPlateau(topt, factor=0.5, patience=2, cooldown=1, min_lr=0.02)
    theirs = []
    for m in metrics:
        theirs.append(topt.param_groups[0]["lr"])
        tsched.step(m)
    ours = _rates(optim.ReduceLROnPlateau(_opt(), 0.5, 2, cooldown=1, min_lr=0.02), len(metrics), metrics)
    np.testing.assert_allclose(ours, theirs, rtol=1e-12)


def test_warmup_ramps_then_the_schedule_starts():
    # As PyTorch's SequentialLR([LinearLR(opt, 1/N, total_iters=N-1), StepLR(...)], milestones=[N]).
    sched = optim.StepLR(_opt(0.4), step_size=2, gamma=0.5, warmup=4)
    np.testing.assert_allclose(_rates(sched, 8), [0.1, 0.2, 0.3, 0.4, 0.4, 0.4, 0.2, 0.2])
    plateau = optim.ReduceLROnPlateau(_opt(0.2), warmup=2)
    assert _rates(plateau, 3) == [0.1, 0.2, 0.2]


def test_scheduler_state_resumes_exactly():
    a = optim.ReduceLROnPlateau(_opt(), 0.5, 1, warmup=3)
    first = _rates(a, 5, [3, 2, 2, 2, 2])
    state = json.loads(json.dumps(a.state_dict()))  # what a checkpoint keeps
    b = optim.ReduceLROnPlateau(_opt(), 0.5, 1, warmup=3)
    b.load_state_dict(state)
    rest = [2, 2, 1, 1, 1]
    assert _rates(b, 5, rest) == _rates(a, 5, rest)
    assert first[:3] == pytest.approx([0.1 / 3, 0.2 / 3, 0.1])
    with pytest.raises(ValueError, match="unknown scheduler state"):
        b.load_state_dict({"bogus": 1})


@pytest.mark.parametrize("make,match", [
    (lambda: optim.StepLR(_opt(), 0), "step_size must be a positive integer"),
    (lambda: optim.StepLR(_opt(), 2, gamma=1.5), r"gamma must be a number in \(0, 1\]"),
    (lambda: optim.CosineAnnealingLR(_opt(), 5, eta_min=-1), "eta_min"),
    (lambda: optim.ConstantLR(_opt(), warmup=-1), "warmup must be a non-negative integer"),
    (lambda: optim.ConstantLR("sgd"), "needs an optimizer"),
])
def test_bad_schedule_arguments_are_clear(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


# ---- in the training loop -----------------------------------------------------------------

def _run(**kw):
    args = dict(cell="gru", task="adding", seq_len=10, hidden=8, batch=8, lr=1e-2, clip_norm=1.0,
                log_every=5, seed=3)
    args.update(kw)
    return train(**args)


def _params(path):
    return {k: v for k, v in checkpoint.load(path)[1].items() if k.startswith("param/")}


@pytest.mark.parametrize("schedule", ["step", "cosine", "plateau"])
def test_schedules_and_dropout_resume_exactly(tmp_path, schedule):
    kw = dict(layers=2, dropout=0.3, lr_schedule=schedule, warmup=3, eval_every=2, lr_patience=0,
              lr_step_size=4)
    straight = _run(steps=12, save=str(tmp_path / "a.npz"), **kw)
    with pytest.raises(RuntimeError, match="interrupted"):  # a run cut off after its step-5 checkpoint
        _run(steps=12, save=str(tmp_path / "b.npz"), save_every=5, log=str(tmp_path / "boom"), **kw)
    resumed = _run(steps=12, save=str(tmp_path / "b.npz"), resume=str(tmp_path / "b.npz"))
    assert resumed["start_step"] == 5
    assert resumed["lr"] == straight["lr"] and resumed["eval_loss"] == straight["eval_loss"]
    a, b = _params(tmp_path / "a.npz"), _params(tmp_path / "b.npz")
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.fixture(autouse=True)
def _interrupt_after_step_5(monkeypatch):
    """Writing the log line of step 6 to a file named "boom" interrupts the run."""
    from tinygrad_rnn import training
    write = training._write

    def boom(f, record):
        if f.name.endswith("boom") and record.get("step", 0) > 5:
            raise RuntimeError("interrupted")
        write(f, record)
    monkeypatch.setattr(training, "_write", boom)


def test_dropout_changes_training_and_eval_runs_without_it(tmp_path):
    plain = _run(steps=6, layers=2)
    dropped = _run(steps=6, layers=2, dropout=0.5)
    assert plain["train_loss"] != dropped["train_loss"]
    assert _run(steps=6, layers=2, dropout=0.5)["eval_loss"] == dropped["eval_loss"]  # seeded


def test_eval_every_logs_and_patience_keeps_the_best(tmp_path):
    log, ck = tmp_path / "log.jsonl", str(tmp_path / "ck.npz")
    s = _run(steps=60, lr=0.5, optimizer="sgd", eval_every=3, patience=2, log=str(log), save=ck)
    evals = [r for r in map(json.loads, log.read_text().splitlines()) if "eval_loss" in r]
    assert s["stopped_early"] and s["stopped_at"] < 60
    assert [r["step"] for r in evals] == list(range(3, s["stopped_at"] + 1, 3))
    best = min(evals, key=lambda r: r["eval_loss"])
    assert s["best_step"] == best["step"] and s["best_eval_loss"] == best["eval_loss"]
    assert s["eval_loss"] == s["best_eval_loss"]  # the model kept is the best one
    meta, _ = checkpoint.load(ck)
    assert meta["step"] == s["best_step"]


def test_patience_stops_after_k_evaluations_without_improvement(tmp_path):
    s = _run(steps=60, lr=0.5, optimizer="sgd", eval_every=3, patience=2)
    assert s["stopped_at"] - s["best_step"] == 2 * 3


@pytest.mark.parametrize("kw,match", [
    (dict(lr_schedule="plateau"), "lr_schedule='plateau' lowers the rate when the eval loss stalls: give eval_every=N"),
    (dict(patience=3), "patience=3 counts evaluations: give eval_every=N"),
    (dict(warmup=10, steps=10), "warmup=10 must be below steps=10"),
    (dict(lr_schedule="linear"), "lr_schedule must be one of constant, step, cosine, plateau, got 'linear'"),
    (dict(dropout=1.0), r"dropout must be a number in \[0, 1\)"),
    (dict(embed=8), r"embed=8 needs a task whose inputs are tokens \(text\), not 'adding'"),
    (dict(bidirectional=True, task="sine"), "bidirectional=True cannot train on task 'sine'"),
    (dict(embed=0), "embed must be null or an integer >= 1, got 0"),
])
def test_bad_training_options_are_clear(kw, match):
    with pytest.raises(ValueError, match=match):
        _run(**dict(dict(steps=4), **kw))


def test_resume_with_conflicting_options_is_an_error(tmp_path):
    ck = str(tmp_path / "ck.npz")
    _run(steps=4, save=ck, dropout=0.2, layers=2)
    with pytest.raises(ValueError, match=r"dropout=0.5 conflicts with the resumed run's dropout 0.2"):
        _run(steps=6, resume=ck, dropout=0.5)
    with pytest.raises(ValueError, match="bidirectional=True conflicts with the resumed run's bidirectional False"):
        _run(steps=6, resume=ck, bidirectional=True)
    assert _run(steps=6, resume=ck, dropout=0.2)["start_step"] == 4  # repeating the setting is fine


def test_bidirectional_and_embedding_train_and_resume(tmp_path):
    s = _run(steps=30, bidirectional=True, task="copy", seq_len=5, lr=3e-2)
    assert s["eval_loss"] < 2.2  # below ln(9): it learned something
    kw = dict(task="text", seq_len=16, hidden=16, embed=8, cell="lstm")
    straight = _run(steps=8, **kw)
    _run(steps=4, save=str(tmp_path / "e.npz"), **kw)
    resumed = _run(steps=8, resume=str(tmp_path / "e.npz"), **kw)
    assert resumed["eval_loss"] == straight["eval_loss"]
    text = tr.training.generate(str(tmp_path / "e.npz"), prime="Shall ", length=10, seed=1)
    assert text.startswith("Shall ") and len(text) == 16


def test_checkpoints_from_before_these_options_still_resume(tmp_path):
    ck = str(tmp_path / "old.npz")
    straight = _run(steps=8)
    _run(steps=4, save=ck)
    meta, arrays = checkpoint.load(ck)
    for key in ("scheduler", "early_stop"):
        del meta[key]
    meta["config"] = {k: v for k, v in meta["config"].items() if k not in
                      ("bidirectional", "dropout", "embed", "lr_schedule", "warmup", "lr_step_size", "lr_gamma",
                       "lr_patience", "eval_every", "patience")}
    checkpoint.save(ck, meta, arrays)
    assert _run(steps=8, resume=ck)["eval_loss"] == straight["eval_loss"]


def test_a_finished_cosine_run_resumes(tmp_path):
    from click.testing import CliRunner

    import cli
    tiny = ["--hidden", "4", "--seq-len", "5", "--batch", "4"]
    ck = str(tmp_path / "cos.npz")
    first = CliRunner().invoke(cli.main, ["train", "--cell", "gru", "--steps", "6", "--lr-schedule", "cosine",
                                          "--save", ck, *tiny])
    assert first.exit_code == 0, first.output
    assert checkpoint.load(ck)[1]["optim/lr"].item() == 0.0     # where a cosine schedule ends
    again = CliRunner().invoke(cli.main, ["train", "--resume", ck, "--steps", "8"])
    assert again.exit_code == 0, again.output
