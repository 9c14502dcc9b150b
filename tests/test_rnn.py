"""nn.RNN's stacking features: bidirectional layers (PyTorch layout and parity) and dropout."""
import numpy as np
import pytest

import tinygrad_rnn as tr

KINDS = {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}


def _torch_run(torch, tm, x, states, w, lengths, batch_first):
    tx = torch.tensor(x, requires_grad=True)
    ts = [torch.tensor(s, requires_grad=True) for s in states]
    inp = tx
    if lengths is not None:
        inp = torch.nn.utils.rnn.pack_padded_sequence(tx, torch.tensor(lengths), batch_first=batch_first,
                                                      enforce_sorted=False)
    out, final = tm(inp, tuple(ts) if len(ts) == 2 else ts[0])
    if lengths is not None:
        out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=batch_first,
                                                        total_length=x.shape[1 if batch_first else 0])
    final = final if len(ts) == 2 else (final,)
    (out * torch.tensor(w)).sum().add(sum((f * (i + 2.0)).sum() for i, f in enumerate(final))).backward()
    grads = {n: p.grad.numpy() for n, p in tm.named_parameters()}
    return [out.detach().numpy()] + [f.detach().numpy() for f in final] + [tx.grad.numpy()] + \
        [s.grad.numpy() for s in ts], grads


def _our_run(rnn, x, states, w, lengths):
    ox = tr.Tensor(x, requires_grad=True)
    os_ = [tr.Tensor(s, requires_grad=True) for s in states]
    out, final = rnn(ox, tuple(os_), lengths=lengths)
    ((out * w).sum() + sum((f * (i + 2.0)).sum() for i, f in enumerate(final))).backward()
    grads = {n: p.grad.numpy() for n, p in rnn.named_parameters()}
    return [out.numpy()] + [f.numpy() for f in final] + [ox.grad.numpy()] + [s.grad.numpy() for s in os_], grads


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["time_first", "batch_first"])
@pytest.mark.parametrize("lengths", [None, [6, 2, 4]], ids=["full", "lengths"])
@pytest.mark.parametrize("fused", [None, False], ids=["fused", "step"])
def test_bidirectional_matches_pytorch(cell, batch_first, lengths, fused):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    T, B, I, H, L = 6, 3, 4, 5, 2
    tm = getattr(torch.nn, KINDS[cell])(I, H, num_layers=L, bidirectional=True,
                                       batch_first=batch_first).double()
    ours = tr.nn.RNN(cell, I, H, num_layers=L, bidirectional=True, batch_first=batch_first,
                     dtype="float64", fused=fused)
    state_dict = {k: v.detach().numpy() for k, v in tm.state_dict().items()}
    assert list(state_dict) == [n for n, _ in ours.named_parameters()]  # same names, same order
    ours.load_state_dict(state_dict)
    rng = np.random.default_rng(0)
    shape = (B, T) if batch_first else (T, B)
    x = rng.standard_normal(shape + (I,))
    states = [rng.standard_normal((2 * L, B, H)) for _ in range(ours.num_states)]
    w = rng.standard_normal(shape + (2 * H,))
    theirs, tgrads = _torch_run(torch, tm, x, states, w, lengths, batch_first)
    mine, ograds = _our_run(ours, x, states, w, lengths)
    assert [a.shape for a in mine] == [b.shape for b in theirs]
    for a, b in zip(mine, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)
    for name in tgrads:
        np.testing.assert_allclose(ograds[name], tgrads[name], rtol=1e-10, atol=1e-10, err_msg=name)


def test_bidirectional_shapes_and_names():
    rnn = tr.nn.RNN("gru", 3, 4, num_layers=2, bidirectional=True)
    out, (h,) = rnn(np.zeros((5, 2, 3), np.float32))
    assert out.shape == (5, 2, 8) and h.shape == (4, 2, 4)
    names = [n for n, _ in rnn.named_parameters()]
    assert names[:8] == [f"{k}_l0{s}" for s in ("", "_reverse")
                         for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    assert rnn.state_dict()["weight_ih_l1_reverse"].shape == (12, 8)
    with pytest.raises(ValueError, match=r"expected \(4, 2, 4\) \(2 \* num_layers"):
        rnn(np.zeros((5, 2, 3), np.float32), state=np.zeros((2, 2, 4)))


def test_bidirectional_reverse_direction_reads_each_sequence_from_its_own_end():
    tr.manual_seed(0)
    rnn = tr.nn.RNN("lstm", 2, 3, bidirectional=True, dtype="float64")
    x = np.random.default_rng(1).standard_normal((6, 2, 2))
    out, (h, c) = rnn(x, lengths=[6, 4])
    alone, (h_alone, _) = rnn(x[:4, 1:2])  # sequence 1 by itself, no padding
    np.testing.assert_allclose(out.numpy()[:4, 1], alone.numpy()[:, 0], atol=1e-12)
    np.testing.assert_allclose(h.numpy()[:, 1], h_alone.numpy()[:, 0], atol=1e-12)
    assert np.all(out.numpy()[4:, 1] == 0)


@pytest.mark.parametrize("batch_first", [False, True])
def test_layer_inputs_are_what_each_layer_and_direction_reads(batch_first):
    tr.manual_seed(0)
    rnn = tr.nn.RNN("gru", 2, 3, num_layers=2, bidirectional=True, dtype="float64", batch_first=batch_first)
    x = np.random.default_rng(1).standard_normal((5, 2, 2))          # (T, B, I)
    state = np.random.default_rng(2).standard_normal((4, 2, 3))
    out_l0, _ = tr.nn.RNN("gru", 2, 3, bidirectional=True, dtype="float64").load_state_dict(
        {k: v for k, v in rnn.state_dict().items() if "_l0" in k})(x, state[:2])
    seen = rnn.layer_inputs(x.transpose(1, 0, 2) if batch_first else x, state)
    assert [c for _, _, c in seen] == [rnn.cells[0], rnn.reverse_cells[0], rnn.cells[1], rnn.reverse_cells[1]]
    np.testing.assert_array_equal(seen[0][0].numpy(), x)
    np.testing.assert_array_equal(seen[1][0].numpy(), x[::-1])          # the reverse cell reads time backwards
    np.testing.assert_allclose(seen[2][0].numpy(), out_l0.numpy(), atol=1e-12)
    for i, (_, s, _) in enumerate(seen):
        np.testing.assert_array_equal(s[0].numpy(), state[i])
    assert rnn.remat is None and not any(t.requires_grad for t, _, _ in seen)


@pytest.mark.parametrize("fused", [None, False], ids=["fused", "step"])
def test_bidirectional_step_grad_norms_are_in_time_order(fused):
    tr.manual_seed(0)
    rnn = tr.nn.RNN("gru", 2, 3, num_layers=2, bidirectional=True, dtype="float64", fused=fused)
    x = np.random.default_rng(0).standard_normal((7, 2, 2))
    norms = tr.diagnostics.step_grad_norms(rnn, x, lambda out: out[0].sum())  # the loss reads t = 0 only
    assert norms.shape == (4, 7)
    top_forward, top_reverse = norms[2], norms[3]
    assert top_forward[0] > 0 and np.all(top_forward[1:] == 0)  # later forward steps do not reach t = 0
    assert np.all(top_reverse > 0)  # the reverse direction reaches t = 0 from every later step
    assert np.all(np.diff(top_reverse) < 0)  # and its gradient fades going away from t = 0
    with pytest.raises(ValueError, match="equal lengths"):
        rnn(x, lengths=[7, 3], probe=True)


def test_bidirectional_fused_norms_equal_step_norms():
    tr.manual_seed(0)
    rnn = tr.nn.RNN("lstm", 2, 3, num_layers=2, bidirectional=True, dtype="float64")
    x = np.random.default_rng(0).standard_normal((5, 2, 2))
    loss = lambda out: (out * out).sum()  # noqa: E731
    fused = tr.diagnostics.step_grad_norms(rnn, x, loss, which=1)
    rnn.fused = False
    np.testing.assert_allclose(fused, tr.diagnostics.step_grad_norms(rnn, x, loss, which=1), rtol=1e-10)


# ---- dropout between layers --------------------------------------------------------------


def test_dropout_is_identity_in_eval_and_after_the_last_layer():
    x = np.random.default_rng(0).standard_normal((5, 2, 3))
    tr.manual_seed(4)
    plain = tr.nn.RNN("lstm", 3, 4, num_layers=2, dtype="float64")
    tr.manual_seed(4)
    dropped = tr.nn.RNN("lstm", 3, 4, num_layers=2, dtype="float64", dropout=0.5)
    assert dropped.training
    train_out = dropped(x)[0].numpy()
    assert not np.allclose(train_out, plain(x)[0].numpy())
    dropped.eval()
    assert not dropped.cells[1].training
    np.testing.assert_array_equal(dropped(x)[0].numpy(), plain(x)[0].numpy())
    one = tr.nn.RNN("gru", 3, 4, dropout=0.5, dtype="float64")  # one layer: nothing to drop
    np.testing.assert_array_equal(one(x)[0].numpy(), one.eval()(x)[0].numpy())


def test_dropout_masks_the_lower_layers_output_like_inverted_dropout():
    x = np.random.default_rng(0).standard_normal((5, 2, 3))
    rnn = tr.nn.RNN("rnn", 3, 4, num_layers=2, dtype="float64", dropout=0.25, bidirectional=True)
    tr.manual_seed(9)
    out, _ = rnn(x)
    first = tr.nn.RNN("rnn", 3, 4, dtype="float64", bidirectional=True)
    second = tr.nn.RNN("rnn", 8, 4, dtype="float64", bidirectional=True)
    sd = rnn.state_dict()
    first.load_state_dict({k: v for k, v in sd.items() if "_l0" in k})
    second.load_state_dict({k.replace("_l1", "_l0"): v for k, v in sd.items() if "_l1" in k})
    tr.manual_seed(9)
    keep = (tr.init.rng().random((5, 2, 8)) >= 0.25) / 0.75
    expected, _ = second(first(x)[0].numpy() * keep)
    np.testing.assert_allclose(out.numpy(), expected.numpy(), atol=1e-12)


@pytest.mark.parametrize("kwargs,match", [
    ({"dropout": 1.0}, r"dropout must be a number in \[0, 1\)"),
    ({"dropout": -0.1}, "dropout must be"),
    ({"dropout": "0.5"}, "dropout must be"),
    ({"bidirectional": "yes"}, "bidirectional must be True or False"),
])
def test_bad_options_are_clear(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        tr.nn.RNN("lstm", 3, 4, num_layers=2, **kwargs)
