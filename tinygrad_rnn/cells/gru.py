"""Gated recurrent unit (Cho et al. 2014) with PyTorch's gate order r, z, n and reset placement."""
import tinygrad_rnn as tr


class GRU(tr.Cell):
    """GRU: n = tanh(W_in x + b_in + r * (W_hn h + b_hn)), h' = (1 - z) * n + z * h."""

    name = "gru"
    num_states = 1

    def __init__(self, input_size, hidden_size):
        super().__init__(input_size, hidden_size)
        self.weight_ih = self.param((3 * hidden_size, input_size))
        self.weight_hh = self.param((3 * hidden_size, hidden_size))
        self.bias_ih = self.param((3 * hidden_size,))
        self.bias_hh = self.param((3 * hidden_size,))

    def step(self, x, state):
        (h,) = state
        x_r, x_z, x_n = (x @ self.weight_ih.T + self.bias_ih).split(self.hidden_size, axis=-1)
        h_r, h_z, h_n = (h @ self.weight_hh.T + self.bias_hh).split(self.hidden_size, axis=-1)
        r = (x_r + h_r).sigmoid()
        z = (x_z + h_z).sigmoid()
        n = (x_n + r * h_n).tanh()
        return ((1 - z) * n + z * h,)


@tr.hookimpl
def register_cells(register):
    register(GRU)
