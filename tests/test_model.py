"""SequenceModel: the embedding input layer and the bidirectional readout."""
import numpy as np
import pytest

import tinygrad_rnn as tr
from tinygrad_rnn.model import SequenceModel


def test_embedding_reads_token_indices_like_a_one_hot_product():
    tr.manual_seed(0)
    model = SequenceModel("gru", 5, 5, hidden_size=4, embed=3, dtype="float64")
    assert [n for n, _ in model.named_parameters()][:2] == ["embedding.weight", "rnn.weight_ih_l0"]
    tokens = np.array([[0, 4], [2, 2], [1, 3]])
    pred, _ = model(tokens)
    plain = SequenceModel("gru", 3, 5, hidden_size=4, dtype="float64")
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("embedding")})
    one_hot = np.eye(5)[tokens] @ model.embedding.weight.numpy()
    np.testing.assert_allclose(pred.numpy(), plain(one_hot)[0].numpy(), atol=1e-12)
    tr.cross_entropy(pred, tokens).backward()
    grad = model.embedding.weight.grad.numpy()
    assert np.all(grad[[0, 1, 2, 3, 4]].any(axis=1))


def test_embedding_model_refuses_floats():
    model = SequenceModel("lstm", 5, 5, hidden_size=4, embed=3)
    with pytest.raises(TypeError, match=r"integer token indices \(T, B\)"):
        model(np.zeros((3, 2, 5), np.float32))


def test_bidirectional_last_step_reads_each_directions_last_step():
    tr.manual_seed(0)
    model = SequenceModel("lstm", 2, 1, hidden_size=3, last_step_only=True, bidirectional=True, dtype="float64")
    assert model.head.weight.shape == (1, 6)
    x = np.random.default_rng(0).standard_normal((5, 2, 2))
    pred, (h, c) = model(x)
    expected = np.concatenate([h.numpy()[0], h.numpy()[1]], axis=-1) @ model.head.weight.numpy().T
    np.testing.assert_allclose(pred.numpy(), expected + model.head.bias.numpy(), atol=1e-12)


def test_dropout_module_scales_in_training_and_passes_through_in_eval():
    drop = tr.nn.Dropout(0.25)
    x = np.ones((400, 50))
    tr.manual_seed(0)
    y = drop(tr.Tensor(x)).numpy()
    assert set(np.unique(y)) == {0.0, 1 / 0.75} and abs((y == 0).mean() - 0.25) < 0.01
    np.testing.assert_array_equal(drop.eval()(tr.Tensor(x)).numpy(), x)
