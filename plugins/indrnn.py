"""IndRNN (Li et al. 2018) in one file: load it with `tinygrad-rnn --plugin plugins/indrnn.py`.

Each unit has its own scalar recurrent weight, so the recurrence is elementwise
and gradients neither mix nor vanish across units (for |u| <= 1 with ReLU).
"""
import tinygrad_rnn as tr


class IndRNN(tr.Cell):
    """IndRNN: h' = relu(W x + u * h + b), u a vector of per-unit recurrent weights."""

    name = "indrnn"

    def __init__(self, input_size, hidden_size):
        super().__init__(input_size, hidden_size)
        self.weight = self.param((hidden_size, input_size), init="kaiming_uniform")
        self.u = self.param((hidden_size,), init="ones")
        self.bias = self.param((hidden_size,), init="zeros")

    def step(self, x, state):
        (h,) = state
        return ((x @ self.weight.T + self.u * h + self.bias).relu(),)


@tr.hookimpl
def register_cells(register):
    register(IndRNN)
