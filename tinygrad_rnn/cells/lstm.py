"""Long short-term memory (Hochreiter & Schmidhuber 1997), PyTorch's gate order i, f, g, o."""
import tinygrad_rnn as tr


class LSTM(tr.Cell):
    """LSTM: c' = f*c + i*g, h' = o*tanh(c'); gates i, f, o sigmoid, g tanh."""

    name = "lstm"
    num_states = 2
    state_names = ("h", "c")

    def __init__(self, input_size, hidden_size):
        super().__init__(input_size, hidden_size)
        self.weight_ih = self.param((4 * hidden_size, input_size))
        self.weight_hh = self.param((4 * hidden_size, hidden_size))
        self.bias_ih = self.param((4 * hidden_size,))
        self.bias_hh = self.param((4 * hidden_size,))

    def step(self, x, state):
        h, c = state
        gates = x @ self.weight_ih.T + self.bias_ih + h @ self.weight_hh.T + self.bias_hh
        i, f, g, o = gates.split(self.hidden_size, axis=-1)
        c = f.sigmoid() * c + i.sigmoid() * g.tanh()
        return o.sigmoid() * c.tanh(), c


@tr.hookimpl
def register_cells(register):
    register(LSTM)
