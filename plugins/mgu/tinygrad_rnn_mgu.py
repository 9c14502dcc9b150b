"""Minimal gated unit (Zhou et al. 2016) as a tinygrad_rnn plugin: one gate, one state."""
import tinygrad_rnn as tr


class MGU(tr.Cell):
    """Minimal gated unit: f = sigmoid(W_f [x, h]), h' = (1 - f) h + f tanh(W_h [x, f h])."""

    name = "mgu"
    num_states = 1

    def __init__(self, input_size, hidden_size):
        super().__init__(input_size, hidden_size)
        self.w_f = self.param((input_size + hidden_size, hidden_size), init="xavier_uniform")
        self.b_f = self.param((hidden_size,), init="zeros")
        self.w_h = self.param((input_size + hidden_size, hidden_size), init="xavier_uniform")
        self.b_h = self.param((hidden_size,), init="zeros")

    def step(self, x, state):
        (h,) = state
        f = (tr.cat([x, h], axis=-1) @ self.w_f + self.b_f).sigmoid()
        h_tilde = (tr.cat([x, f * h], axis=-1) @ self.w_h + self.b_h).tanh()
        return ((1 - f) * h + f * h_tilde,)


@tr.hookimpl
def register_cells(register):
    register(MGU)
