"""Layer-normalised LSTM (Ba, Kiros & Hinton 2016) in one file: `--plugin plugins/layernorm_lstm.py`.

Each gate block's input and recurrent pre-activations are normalised over the
hidden units, and so is the cell state before its tanh. The row means and
variances are reductions over the hidden axis, which the cell compiler fuses
into the step kernels like any other op.
"""
import tinygrad_rnn as tr


class LayerNormLSTM(tr.Cell):
    """LSTM with LN(W_ih x) + LN(W_hh h) + b gates and h' = o * tanh(LN(c'))."""

    name = "ln_lstm"
    num_states = 2
    state_names = ("h", "c")

    def __init__(self, input_size, hidden_size, eps=1e-5):
        super().__init__(input_size, hidden_size)
        self.eps = eps
        self.weight_ih = self.param((4 * hidden_size, input_size), init="xavier_uniform")
        self.weight_hh = self.param((4 * hidden_size, hidden_size), init="orthogonal")
        self.bias = self.param((4 * hidden_size,), init="zeros")
        self.gain_ih = self.param((4 * hidden_size,), init="ones")
        self.gain_hh = self.param((4 * hidden_size,), init="ones")
        self.gain_c = self.param((hidden_size,), init="ones")
        self.shift_c = self.param((hidden_size,), init="zeros")

    def norm(self, v, gain):
        centred = v - v.mean(axis=-1, keepdims=True)
        variance = (centred * centred).mean(axis=-1, keepdims=True)
        return centred / (variance + self.eps) ** 0.5 * gain

    def step(self, x, state):
        h, c = state
        gates = (self.norm(x @ self.weight_ih.T, self.gain_ih) + self.norm(h @ self.weight_hh.T, self.gain_hh)
                 + self.bias)
        i, f, g, o = gates.split(self.hidden_size, axis=-1)
        c = f.sigmoid() * c + i.sigmoid() * g.tanh()
        return o.sigmoid() * (self.norm(c, self.gain_c) + self.shift_c).tanh(), c


@tr.hookimpl
def register_cells(register):
    register(LayerNormLSTM)
