"""The Elman RNN, the smallest built-in cell, and the template for writing your own."""
import tinygrad_rnn as tr


class Elman(tr.Cell):
    """Elman RNN: h' = tanh(W_ih x + b_ih + W_hh h + b_hh), or relu."""

    name = "rnn"
    num_states = 1

    def __init__(self, input_size, hidden_size, nonlinearity="tanh"):
        super().__init__(input_size, hidden_size)
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"rnn: nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        self.weight_ih = self.param((hidden_size, input_size))   # PyTorch's names and layout
        self.weight_hh = self.param((hidden_size, hidden_size))
        self.bias_ih = self.param((hidden_size,))
        self.bias_hh = self.param((hidden_size,))

    def step(self, x, state):
        (h,) = state
        pre = x @ self.weight_ih.T + self.bias_ih + h @ self.weight_hh.T + self.bias_hh
        return (pre.tanh() if self.nonlinearity == "tanh" else pre.relu(),)


@tr.hookimpl
def register_cells(register):
    register(Elman, aliases=("elman",))
