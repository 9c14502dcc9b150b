"""A cell whose step holds an infinite constant (a -inf mask, or 1e120 in float32) compiles:
the generated module wrote the constant as `DT(inf)`, a NameError when it was loaded."""
import numpy as np
import pytest

import tinygrad_rnn as tr
from tinygrad_rnn.compiler.lower import const_literal


class MaskedTanh(tr.Cell):
    """h' = tanh(clip(where(z > 0, z, -inf), -1, 1)) for z = [x, h] W."""
    name = "masked_tanh_test"

    def __init__(self, input_size, hidden_size):
        super().__init__(input_size, hidden_size)
        self.w = self.param((input_size + hidden_size, hidden_size), init="xavier_uniform")

    def step(self, x, state):
        z = tr.cat([x, state[0]], axis=-1) @ self.w
        return (tr.where(z > 0, z, float("-inf")).clip(-1.0, 1.0).tanh(),)


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan"), 1.5, -2e-300])
def test_every_constant_literal_reads_back(value):
    back = eval(const_literal(value))  # noqa: S307 - what the generated module does with it
    assert back == value or (np.isnan(value) and np.isnan(back))


def test_a_cell_with_an_infinite_constant_compiles_and_equals_its_step_path():
    x = np.random.default_rng(0).standard_normal((5, 3, 2))
    runs = []
    for fused in (True, False):
        tr.manual_seed(0)
        rnn = tr.nn.RNN(MaskedTanh, 2, 4, dtype="float64", fused=fused)
        out, _ = rnn(x)
        (out * out).sum().backward()
        runs.append((out.numpy(), rnn.state_dict(), {k: np.asarray(p.grad.numpy() if hasattr(p.grad, "numpy") else p.grad) for k, p in rnn.named_parameters()}))
    (out_c, _, grads_c), (out_s, _, grads_s) = runs
    np.testing.assert_allclose(out_c, out_s, rtol=1e-10, atol=1e-12)
    for k in grads_s:
        np.testing.assert_allclose(grads_c[k], grads_s[k], rtol=1e-10, atol=1e-12)
