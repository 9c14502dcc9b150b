"""Recomputation (``tr.nn.RNN(..., remat=K)``): the same gradients with less kept."""
import numpy as np
import pytest

import tinygrad_rnn as tr
from tinygrad_rnn import remat


def _grads(cell, fused, remat_, lengths=None, probe=False, layers=1, bidirectional=False, T=11, seed=0):
    tr.manual_seed(seed)
    rnn = tr.nn.RNN(cell, 3, 4, num_layers=layers, dtype="float64", fused=fused, remat=remat_,
                    bidirectional=bidirectional)
    x = tr.Tensor(np.random.default_rng(seed + 1).normal(size=(T, 3, 3)), requires_grad=True)
    out, state = rnn(x, lengths=lengths, probe=probe)
    # the loss reads every output and both final states, so every path of the gradient is used
    ((out * out).sum() + (state[0] * 3).sum() + (state[-1] ** 2).sum()).backward()
    got = [p.grad.numpy() for p in rnn.parameters()] + [x.grad.numpy(), out.numpy()]
    if probe:
        got += [rnn.step_grad_norms(i) for i in range(rnn.num_states)]
    return got


CASES = [dict(), dict(lengths=np.array([11, 4, 9])), dict(probe=True), dict(layers=2),
         dict(bidirectional=True, probe=True)]


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_step_path_gradients_are_bit_identical(cell, case):
    base = _grads(cell, False, None, **CASES[case])
    for every in (True, 3, 1):
        for a, b in zip(base, _grads(cell, False, every, **CASES[case])):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_compiled_gradients_equal_to_rounding(cell, case):
    """The compiled path sums per-segment weight gradients in another order: equal to
    float64 rounding, not bit for bit (see remat.py)."""
    base = _grads(cell, None, None, **CASES[case])
    for every in (True, 4, 1):
        for a, b in zip(base, _grads(cell, None, every, **CASES[case])):
            np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-300)
    step = _grads(cell, False, 4, **CASES[case])
    for a, b in zip(base, step):  # and the compiled path with remat equals the step path
        np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-14)


def test_a_whole_segment_is_no_recomputation():
    base = _grads("gru", None, None)
    for a, b in zip(base, _grads("gru", None, 100)):  # one segment: the same kernel calls
        np.testing.assert_array_equal(a, b)


def test_remat_true_is_about_the_square_root_of_T():
    assert remat.every_for(True, 1000) == 32 and remat.every_for(True, 1) == 1
    assert remat.every_for(None, 1000) is None and remat.every_for(7, 1000) == 7
    assert remat.segments(7, 3) == [(0, 3), (3, 6), (6, 7)]


@pytest.mark.parametrize("bad", [0, -3, 2.5, "yes"])
def test_bad_remat_is_a_clear_error(bad):
    with pytest.raises((ValueError, TypeError), match="remat must be True, None or a positive number"):
        tr.nn.RNN("gru", 2, 3, remat=bad)


def test_training_with_remat_gives_the_same_losses():
    kw = dict(cell="lstm", task="adding", seq_len=30, hidden=6, batch=4, steps=4, seed=0, dtype="float64")
    plain, lean = tr.train(**kw), tr.train(**kw, remat=5)
    assert lean["train_loss"] == pytest.approx(plain["train_loss"], rel=1e-12)
    assert lean["eval_loss"] == pytest.approx(plain["eval_loss"], rel=1e-12)


def test_remat_switches_itself_on_when_activations_would_not_fit(monkeypatch, capsys):
    from tinygrad_rnn import limits, training
    need = limits.model_bytes(1, 16, 1, 400, 8, 1, 4, 4)
    monkeypatch.setattr(limits, "available_memory", lambda: need // 2)
    task = tr.plugins.get_task("adding")(seq_len=400)
    config = dict(cell="lstm", hidden=16, layers=1, seq_len=400, batch=8, seed=0)
    assert training._check_model_size(config, task) is True
    assert "recomputing them (--remat)" in capsys.readouterr().err
    with pytest.raises(tr.errors.ResourceError):  # remat=False: never recompute, so it does not fit
        training._check_model_size(config, task, remat=False)
    monkeypatch.setattr(limits, "available_memory", lambda: need // 100)
    with pytest.raises(tr.errors.ResourceError):
        training._check_model_size(config, task)


def test_copy_and_adding_train_at_long_horizons():
    for task in ("copy", "adding"):
        s = tr.train(cell="gru", task=task, seq_len=1000, hidden=3, batch=2, steps=1, seed=0, remat=True)
        assert np.isfinite(s["train_loss"])
    eval_x, _ = tr.plugins.get_task("adding")(seq_len=20000).eval_set()
    assert eval_x.shape[1] == 2 ** 19 // 20000  # a long horizon's eval set has fewer sequences
    assert tr.plugins.get_task("adding")(seq_len=2000).eval_set()[0].shape[1] == 256


def test_the_cli_takes_remat_on_diagnose_and_train():
    import json
    from click.testing import CliRunner
    import cli
    runner = CliRunner()
    tiny = ["--cell", "gru", "--seq-len", "9", "--hidden", "3", "--batch", "2", "--json"]
    docs = [json.loads(runner.invoke(cli.main, ["diagnose", *tiny, *extra]).output)
            for extra in ([], ["--remat"], ["--remat-every", "2"])]
    for doc in docs[1:]:
        np.testing.assert_allclose(doc["cells"][0]["grad_norm_per_step"], docs[0]["cells"][0]["grad_norm_per_step"],
                                   rtol=1e-12)
    train = ["train", "--cell", "lstm", "--task", "sum", "--seq-len", "9", "--hidden", "3", "--batch", "2",
             "--steps", "2", "--dtype", "float64", "--json"]
    plain, lean = (json.loads(runner.invoke(cli.main, [*train, *extra]).output) for extra in ([], ["--remat"]))
    assert lean["train_loss"] == pytest.approx(plain["train_loss"], rel=1e-12)
    bad = runner.invoke(cli.main, ["diagnose", *tiny, "--remat-every", "0"])
    assert bad.exit_code == 2 and "Traceback" not in bad.output
