"""Built-in cells: fused path == reference step path, PyTorch parity, lengths, errors."""
import numpy as np
import pytest

import tinygrad_rnn as tr
from tinygrad_rnn.testing import outputs_and_gradients

CELLS = [("rnn", {}), ("rnn", {"nonlinearity": "relu"}), ("lstm", {}), ("gru", {})]
IDS = ["rnn_tanh", "rnn_relu", "lstm", "gru"]


@pytest.mark.parametrize("cell,opts", CELLS, ids=IDS)
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("lengths", [None, [5, 2, 1]], ids=["full", "lengths"])
def test_fused_equals_reference_path_float64(cell, opts, layers, lengths):
    tr.manual_seed(3)
    rnn = tr.nn.RNN(cell, 3, 4, num_layers=layers, dtype="float64", **opts)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 3, 3))
    state = [rng.standard_normal((layers, 3, 4)) for _ in range(rnn.num_states)]
    fused = outputs_and_gradients(rnn, x, state, lengths, fused=True)
    ref = outputs_and_gradients(rnn, x, state, lengths, fused=False)
    for a, b in zip(fused, ref):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("cell,opts", CELLS, ids=IDS)
def test_fused_gradcheck_float64(cell, opts):
    tr.manual_seed(1)
    rnn = tr.nn.RNN(cell, 2, 3, dtype="float64", **opts)
    x = np.random.default_rng(1).standard_normal((4, 2, 2))
    if opts.get("nonlinearity") == "relu":
        x = np.abs(x) + 0.1  # keep pre-activations away from relu's kink
    fn = lambda x, *params: _functional(rnn, x, params)
    assert tr.testing.gradcheck(fn, [x] + [p.numpy() for p in rnn.parameters()])


def _functional(rnn, x, params):
    # Run the RNN with the given parameter tensors swapped in (so gradcheck sees them).
    saved = {}
    for (name, p), new in zip(rnn.named_parameters(), params):
        cell = rnn.cells[int(name.rsplit("_l", 1)[1])]
        attr = name.rsplit("_l", 1)[0]
        saved[(cell, attr)] = getattr(cell, attr)
        object.__setattr__(cell, attr, new)
    try:
        out, state = rnn(x)
        return out.sum(axis=0) + state[-1][0]
    finally:
        for (cell, attr), p in saved.items():
            object.__setattr__(cell, attr, p)


def test_step_paths_match_named_parameters_like_pytorch():
    rnn = tr.nn.RNN("lstm", 3, 4, num_layers=2)
    assert [n for n, _ in rnn.named_parameters()] == [
        f"{k}_l{l}" for l in range(2) for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    assert rnn.state_dict()["weight_ih_l1"].shape == (16, 4)


def test_batch_first_and_state_shapes():
    rnn = tr.nn.RNN("gru", 3, 5, num_layers=2, batch_first=True)
    out, (h,) = rnn(np.zeros((4, 7, 3), np.float32))
    assert out.shape == (4, 7, 5) and h.shape == (2, 4, 5)


def test_padded_steps_output_zero_and_keep_state():
    rnn = tr.nn.RNN("lstm", 2, 3)
    x = np.random.default_rng(0).standard_normal((6, 2, 2)).astype(np.float32)
    out, (h, c) = rnn(x, lengths=[6, 3])
    assert np.all(out.numpy()[3:, 1] == 0)
    np.testing.assert_allclose(h.numpy()[0, 1], out.numpy()[2, 1])
    short, _ = rnn(x[:3, 1:2])
    np.testing.assert_allclose(short.numpy()[:, 0], out.numpy()[:3, 1], rtol=1e-6)


@pytest.mark.parametrize("bad,match", [
    (np.zeros((5, 3)), "3-D"),
    (np.zeros((5, 2, 4)), "expects 3"),
    (np.zeros((5, 2, 3), np.int64), "floating point"),
])
def test_bad_inputs_are_clear(bad, match):
    rnn = tr.nn.RNN("rnn", 3, 4)
    with pytest.raises((ValueError, TypeError), match=match):
        rnn(bad)


def test_bad_state_and_lengths_are_clear():
    rnn = tr.nn.RNN("lstm", 3, 4)
    x = np.zeros((5, 2, 3), np.float32)
    with pytest.raises(ValueError, match="needs 2 state"):
        rnn(x, state=(np.zeros((1, 2, 4)),))
    with pytest.raises(ValueError, match=r"expected \(1, 2, 4\)"):
        rnn(x, state=(np.zeros((1, 2, 4)), np.zeros((2, 2, 4))))
    with pytest.raises(ValueError, match="lengths"):
        rnn(x, lengths=[6, 1])
    with pytest.raises(KeyError, match="unknown cell 'nope'"):
        tr.nn.RNN("nope", 3, 4)
    with pytest.raises(ValueError, match="hidden_size"):
        tr.nn.RNN("gru", 3, 0)


def test_load_state_dict_rejects_bad_entries_and_changes_nothing():
    rnn = tr.nn.RNN("rnn", 2, 3)
    before = rnn.state_dict()
    bad = dict(before, weight_hh_l0=np.zeros((4, 4)))
    with pytest.raises(ValueError, match="weight_hh_l0"):
        rnn.load_state_dict(bad)
    with pytest.raises(KeyError, match="missing"):
        rnn.load_state_dict({"weight_ih_l0": before["weight_ih_l0"]})
    for k, v in rnn.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


# ---- PyTorch parity -------------------------------------------------------------


def _torch():
    return pytest.importorskip("torch")


@pytest.mark.parametrize("cell,opts", CELLS, ids=IDS)
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("dtype,tol", [("float64", 1e-10), ("float32", 2e-5)])
def test_matches_pytorch(cell, opts, layers, dtype, tol):
    torch = _torch()
    torch.manual_seed(0)
    cls = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell]
    tm = cls(3, 5, num_layers=layers, **opts).to(getattr(torch, dtype))
    ours = tr.nn.RNN(cell, 3, 5, num_layers=layers, dtype=dtype, **opts)
    ours.load_state_dict({k: v.detach().numpy() for k, v in tm.state_dict().items()})

    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 2, 3)).astype(dtype)
    states = [rng.standard_normal((layers, 2, 5)).astype(dtype) for _ in range(ours.num_states)]
    w = rng.standard_normal((6, 2, 5)).astype(dtype)

    tx = torch.tensor(x, requires_grad=True)
    ts = [torch.tensor(s, requires_grad=True) for s in states]
    tout, tfinal = tm(tx, tuple(ts) if cell == "lstm" else ts[0])
    tfinal = tfinal if cell == "lstm" else (tfinal,)
    (tout * torch.tensor(w)).sum().add(sum((f * (i + 2.0)).sum() for i, f in enumerate(tfinal))).backward()

    ox = tr.Tensor(x, requires_grad=True)
    os_ = [tr.Tensor(s, requires_grad=True) for s in states]
    oout, ofinal = ours(ox, tuple(os_))
    ((oout * w).sum() + sum((f * (i + 2.0)).sum() for i, f in enumerate(ofinal))).backward()

    np.testing.assert_allclose(oout.numpy(), tout.detach().numpy(), rtol=tol, atol=tol)
    for a, b in zip(ofinal, tfinal):
        np.testing.assert_allclose(a.numpy(), b.detach().numpy(), rtol=tol, atol=tol)
    np.testing.assert_allclose(ox.grad.numpy(), tx.grad.numpy(), rtol=tol, atol=tol)
    for a, b in zip(os_, ts):
        np.testing.assert_allclose(a.grad.numpy(), b.grad.numpy(), rtol=tol, atol=tol)
    tgrads = dict(tm.named_parameters())
    for name, p in ours.named_parameters():
        np.testing.assert_allclose(p.grad.numpy(), tgrads[name].grad.numpy(), rtol=tol, atol=tol * 10,
                                   err_msg=name)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("fused", [True, False])
def test_padded_steps_get_no_gradient(cell, fused):
    rnn = tr.nn.RNN(cell, 2, 3, fused=fused, dtype="float64")
    x = tr.Tensor(np.random.default_rng(0).standard_normal((5, 2, 2)), requires_grad=True)
    out, state = rnn(x, lengths=[5, 2])
    ((out * out).sum() + state[0].sum()).backward()
    g = x.grad.numpy()
    assert np.all(g[2:, 1] == 0) and np.all(g[:2, 1] != 0) and np.all(g[:, 0] != 0)
