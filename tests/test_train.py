"""Optimisers, clipping, tasks, the training loop and checkpoints."""
import json
import math
import os

import numpy as np
import pytest
import safetensors.numpy

import tinygrad_rnn as tr
from tinygrad_rnn import checkpoint, optim, tasks
from tinygrad_rnn.training import TrainingError, generate, train


def _param(values, grad):
    p = tr.nn.Parameter(np.array(values, np.float64))
    p.grad = tr.Tensor(np.array(grad, np.float64))
    return p


def test_sgd_momentum_nesterov_against_hand_computation():
    p = _param([1.0], [0.5])
    opt = optim.SGD([p], lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1)
    opt.step()  # g = 0.5 + 0.1 * 1 = 0.6; buf = 0.6; update g + 0.9 * buf = 1.14
    assert p.numpy()[0] == pytest.approx(1 - 0.1 * 1.14)
    p.grad = tr.Tensor(np.array([0.5]))
    opt.step()  # g = 0.5 + 0.1 * 0.886 = 0.5886; buf = 0.9 * 0.6 + 0.5886; update g + 0.9 buf
    g = 0.5 + 0.1 * 0.886
    buf = 0.9 * 0.6 + g
    assert p.numpy()[0] == pytest.approx(0.886 - 0.1 * (g + 0.9 * buf))


def test_adam_and_rmsprop_against_hand_computation():
    p = _param([1.0, -2.0], [0.1, -0.3])
    optim.Adam([p], lr=0.01).step()
    np.testing.assert_allclose(p.numpy(), [1 - 0.01, -2 + 0.01], rtol=1e-6)  # first step moves lr * sign
    p = _param([1.0], [0.2])
    optim.RMSprop([p], lr=0.01, alpha=0.9).step()
    assert p.numpy()[0] == pytest.approx(1 - 0.01 * 0.2 / (math.sqrt(0.1 * 0.04) + 1e-8))
    p = _param([2.0], [0.0])
    optim.SGD([p], lr=0.5, l1=0.1).step()
    assert p.numpy()[0] == pytest.approx(2 - 0.05)


def test_clip_grad_norm_returns_norm_before_and_scales():
    a, b = _param([0.0], [3.0]), _param([0.0, 0.0], [0.0, 4.0])
    assert optim.clip_grad_norm([a, b], 1.0) == pytest.approx(5.0)
    assert optim.grad_norm([a, b]) == pytest.approx(1.0, rel=1e-5)
    assert optim.clip_grad_norm([a, b], 10.0) == pytest.approx(1.0, rel=1e-5)
    assert optim.grad_norm([a, b]) == pytest.approx(1.0, rel=1e-5)  # unchanged below the limit


@pytest.mark.parametrize("bad", [-1.0, float("nan"), "1"])
def test_clip_grad_norm_rejects_negative_and_nan(bad):
    with pytest.raises(ValueError, match="max_norm"):
        optim.clip_grad_norm([_param([0.0], [1.0])], bad)


def test_clip_grad_norm_nonfinite():
    p = _param([0.0], [np.inf])
    with pytest.raises(FloatingPointError):
        optim.clip_grad_norm([p], 1.0, error_if_nonfinite=True)
    assert math.isinf(optim.clip_grad_norm([p], 1.0))


def test_clip_grad_value_and_bad_lr():
    p = _param([0.0, 0.0], [3.0, -0.5])
    optim.clip_grad_value([p], 1.0)
    np.testing.assert_allclose(p.grad.numpy(), [1.0, -0.5])
    with pytest.raises(ValueError, match="learning rate"):
        optim.Adam([p], lr=-1)


@pytest.mark.parametrize("name", ["adding", "copy", "sum", "sine", "text"])
def test_task_shapes_and_baselines(name):
    task = tr.get_task(name)(seq_len=20)
    x, y = task.batch(np.random.default_rng(0), 5)
    assert x.dtype == np.float32 and x.shape[1] == 5 and x.shape[2] == task.input_size
    if task.last_step_only:
        assert y.shape == (5, task.output_size)
    elif task.classification:
        assert y.shape == x.shape[:2] and y.max() < task.output_size
    else:
        assert y.shape == x.shape[:2] + (task.output_size,)
    assert task.baseline() > 0


def test_baselines_match_the_papers():
    assert tr.get_task("adding")(seq_len=100).baseline() == pytest.approx(0.1667, abs=1e-4)
    assert tr.get_task("copy")(seq_len=100).baseline() == pytest.approx(10 * np.log(8) / 120)
    # The adding baseline is what predicting the mean scores on real batches.
    _, y = tr.get_task("adding")(seq_len=50).batch(np.random.default_rng(0), 20000)
    assert ((y - 1.0) ** 2).mean() == pytest.approx(1 / 6, rel=0.02)
    x, y = tr.get_task("copy")(seq_len=30).batch(np.random.default_rng(0), 3)
    np.testing.assert_array_equal(x[:10].argmax(-1), y[-10:])
    assert (x[39].argmax(-1) == 9).all()


def test_series_task_reads_csv_and_npy_and_names_bad_values(tmp_path):
    t = np.arange(600, dtype=np.float64)
    np.save(tmp_path / "s.npy", np.stack([np.sin(t / 10), np.cos(t / 7)], 1))
    task = tr.get_task("series")(seq_len=20, data=str(tmp_path / "s.npy"))
    x, y = task.batch(np.random.default_rng(0), 4)
    assert x.shape == (20, 4, 2) and y.shape == (20, 4, 2)
    (tmp_path / "s.csv").write_text("value\n" + "\n".join(str(v) for v in np.sin(t / 5)))
    assert tr.get_task("series")(seq_len=20, data=str(tmp_path / "s.csv")).input_size == 1
    bad = np.sin(t / 10)
    bad[123] = np.nan
    np.save(tmp_path / "bad.npy", bad)
    with pytest.raises(tasks.TaskError, match="row 123, column 0"):
        tr.get_task("series")(seq_len=20, data=str(tmp_path / "bad.npy"))
    with pytest.raises(tasks.TaskError, match=r"needs a data file: data=PATH \(.npy or .csv\)"):
        tr.get_task("series")(seq_len=20)


def _run(tmp_path, **kw):
    args = dict(cell="gru", task="adding", seq_len=12, hidden=8, batch=8, lr=1e-2, clip_norm=1.0,
                log_every=5, seed=3)
    args.update(kw)
    return train(**args)


def test_training_reduces_loss_and_logs(tmp_path):
    log = tmp_path / "log.jsonl"
    s = _run(tmp_path, task="sum", steps=60, log=str(log), diagnose_every=30)
    assert s["eval_loss"] < s["baseline_loss"]
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert {"step", "loss", "grad_norm", "grad_norm_clipped", "lr"} <= set(records[0])
    diag = [r for r in records if "grad_norm_per_step" in r]
    assert len(diag) == 2 and len(diag[0]["grad_norm_per_step"][0]) == 12
    assert set(diag[0]["param_grad_norms"]) >= {"rnn.weight_hh_l0", "head.weight"}


def test_resume_is_bit_exact(tmp_path):
    straight = _run(tmp_path, steps=20)
    _run(tmp_path, steps=10, save=str(tmp_path / "ck.npz"))
    resumed = _run(tmp_path, steps=20, resume=str(tmp_path / "ck.npz"))
    assert resumed["start_step"] == 10
    assert resumed["train_loss"] == straight["train_loss"]
    assert resumed["eval_loss"] == straight["eval_loss"]


def test_tbptt_resume_is_bit_exact(tmp_path):
    kw = dict(task="text", seq_len=16, bptt=8, cell="lstm", hidden=16)
    straight = _run(tmp_path, steps=10, **kw)
    _run(tmp_path, steps=6, save=str(tmp_path / "t.npz"), **kw)
    resumed = _run(tmp_path, steps=10, resume=str(tmp_path / "t.npz"), **kw)
    assert resumed["eval_loss"] == straight["eval_loss"]
    text = generate(str(tmp_path / "t.npz"), prime="Shall ", length=20, seed=1)
    assert text.startswith("Shall ") and len(text) == 26
    assert generate(str(tmp_path / "t.npz"), prime="Shall ", length=20, seed=1) == text


def test_nonfinite_loss_stops_with_the_step_or_skips(tmp_path):
    with pytest.raises(TrainingError, match=r"step \d+: (the loss is inf|non-finite gradient in parameter)"):
        _run(tmp_path, steps=3, lr=1e6, clip_norm=None, optimizer="sgd", init_scheme="identity",
             cell="rnn", task="sum")  # overflow
    s = _run(tmp_path, steps=4, lr=1e6, clip_norm=None, optimizer="sgd", cell="rnn", task="sum",
             on_nonfinite="skip")
    assert s["skipped_steps"] >= 1


def test_checkpoint_atomic_and_rejects_bad_files(tmp_path):
    path = tmp_path / "ck.npz"
    checkpoint.save(str(path), {"step": 1}, {"a": np.ones(3)})
    meta, arrays = checkpoint.load(str(path))
    assert meta["step"] == 1 and arrays["a"].tolist() == [1, 1, 1]
    assert [p.name for p in tmp_path.iterdir()] == ["ck.npz"]  # no temporary left behind
    (tmp_path / "garbage.npz").write_bytes(b"not a zip at all")
    with pytest.raises(checkpoint.CheckpointError, match="corrupt"):
        checkpoint.load(str(tmp_path / "garbage.npz"))
    np.savez(tmp_path / "pickled.npz", evil=np.array([{"x": 1}], dtype=object), __meta__=np.zeros(1, np.uint8))
    with pytest.raises(checkpoint.CheckpointError, match="pickled"):
        checkpoint.load(str(tmp_path / "pickled.npz"))
    with pytest.raises(checkpoint.CheckpointError, match="no such"):
        checkpoint.load(str(tmp_path / "missing.npz"))
    np.savez(tmp_path / "other.npz", x=np.ones(2))
    with pytest.raises(checkpoint.CheckpointError, match="not a tinygrad_rnn checkpoint"):
        checkpoint.load(str(tmp_path / "other.npz"))
    # A truncated file (an interrupted copy) is refused too.
    data = path.read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(checkpoint.CheckpointError):
        checkpoint.load(str(tmp_path / "cut.npz"))


def test_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "ck.npz"
    checkpoint.save(str(path), {"step": 1}, {"a": np.ones(3)})
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(safetensors.numpy, "save", boom)
    with pytest.raises(checkpoint.CheckpointError, match=r"cannot write '.*ck.npz': disk full"):
        checkpoint.save(str(path), {"step": 2}, {"a": np.zeros(3)})
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["ck.npz"]


def test_progress_goes_to_stderr_only(tmp_path, capsys):
    _run(tmp_path, steps=3, progress=True)
    captured = capsys.readouterr()
    assert captured.out == "" and "step 3/3" in captured.err


def test_resume_from_an_incomplete_checkpoint_is_clear(tmp_path):
    path = str(tmp_path / "half.npz")
    checkpoint.save(path, {"step": 3}, {"param/x": np.ones(2)})
    with pytest.raises(checkpoint.CheckpointError, match="incomplete: no config, rng, init_rng"):
        _run(tmp_path, steps=5, resume=path)
    checkpoint.save(path, {"step": 3, "config": {"cell": "gru"}, "rng": {"bit_generator": "PCG64"}, "init_rng": {"bit_generator": "PCG64"}}, {})
    with pytest.raises(checkpoint.CheckpointError, match="unusable config: missing 'task'"):
        _run(tmp_path, steps=5, resume=path)


def test_init_schemes_follow_the_hh_naming():
    rnn = tr.nn.RNN("rnn", 3, 4, nonlinearity="relu")
    rnn.reset_parameters("identity")  # Le et al. 2015: IRNN
    sd = rnn.state_dict()
    np.testing.assert_array_equal(sd["weight_hh_l0"], np.eye(4))
    assert not np.allclose(sd["weight_ih_l0"], 0) and np.all(sd["bias_hh_l0"] == 0)
    lstm = tr.nn.RNN("lstm", 3, 4)
    lstm.reset_parameters("orthogonal")
    w = lstm.state_dict()["weight_hh_l0"].astype(np.float64)
    for g in range(4):  # each gate block is orthogonal
        block = w[4 * g:4 * g + 4]
        np.testing.assert_allclose(block @ block.T, np.eye(4), atol=1e-5)


@pytest.mark.slow
def test_ctrl_c_finishes_the_step_and_saves_it(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    from click.testing import CliRunner

    import cli
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    tiny = ["--hidden", "4", "--seq-len", "5", "--batch", "4"]
    ck, log = tmp_path / "int.npz", tmp_path / "int.jsonl"
    proc = subprocess.Popen([sys.executable, os.path.join(root, "cli.py"), "train", "--cell", "gru",
                             "--steps", "1000000", "--save", str(ck), "--log", str(log), "--log-every", "1",
                             *tiny], cwd=str(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and (not log.exists() or log.read_text().count("\n") < 3):
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, err
    assert "interrupted at step" in err and "Traceback" not in err
    step = checkpoint.load(str(ck))[0]["step"]
    assert step >= 3
    resumed = CliRunner().invoke(cli.main, ["train", "--resume", str(ck), "--steps", str(step + 2)])
    assert resumed.exit_code == 0, resumed.output


def test_a_resumed_run_keeps_on_nonfinite_skip_unless_told_otherwise(tmp_path, monkeypatch):
    ck = str(tmp_path / "ck.npz")
    _run(tmp_path, steps=3, save=ck, on_nonfinite="skip")
    real = optim.grad_norm
    monkeypatch.setattr(optim, "grad_norm", lambda *a, **kw: real(*a, **kw) * float("nan"))
    assert _run(tmp_path, steps=5, resume=ck)["skipped_steps"] == 2  # the checkpoint's setting
    with pytest.raises(TrainingError, match="step 4: .*on_nonfinite="):
        _run(tmp_path, steps=5, resume=ck, on_nonfinite="error")  # a resumed run may change it
