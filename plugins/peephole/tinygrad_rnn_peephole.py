"""Peephole LSTM (Gers & Schmidhuber 2000): the gates also look at the cell state."""
import tinygrad_rnn as tr


class PeepholeLSTM(tr.Cell):
    """LSTM whose input and forget gates see c_{t-1} and whose output gate sees c_t."""

    name = "peephole_lstm"
    num_states = 2
    state_names = ("h", "c")

    def __init__(self, input_size, hidden_size, forget_bias=1.0):
        super().__init__(input_size, hidden_size)
        self.weight_ih = self.param((4 * hidden_size, input_size))
        self.weight_hh = self.param((4 * hidden_size, hidden_size), init="orthogonal")
        self.bias = self.param((4 * hidden_size,), init="zeros")
        self.bias.data[hidden_size:2 * hidden_size] = forget_bias  # remember by default
        self.peep_i = self.param((hidden_size,), init="zeros")
        self.peep_f = self.param((hidden_size,), init="zeros")
        self.peep_o = self.param((hidden_size,), init="zeros")

    def step(self, x, state):
        h, c = state
        gates = x @ self.weight_ih.T + h @ self.weight_hh.T + self.bias
        i, f, g, o = gates.split(self.hidden_size, axis=-1)
        i = (i + self.peep_i * c).sigmoid()
        f = (f + self.peep_f * c).sigmoid()
        c = f * c + i * g.tanh()
        o = (o + self.peep_o * c).sigmoid()
        return o * c.tanh(), c


@tr.hookimpl
def register_cells(register):
    register(PeepholeLSTM, aliases=("peephole",))
