"""Cells the compiler tests share: the example plugins of plugins/, and a cell that
uses every pointwise feature the compiler handles."""
import os

import tinygrad_rnn as tr
from tinygrad_rnn.plugins import load_plugin

PLUGINS = os.path.join(os.path.dirname(__file__), "..", "plugins")


def load_example_plugins():
    """The example cells: the packages are pip-installed (README), the single files loaded here."""
    have = {r["name"] for r in tr.list_cells()}
    for name, f in (("indrnn", "indrnn.py"), ("ln_lstm", "layernorm_lstm.py"),
                    ("mgu", os.path.join("mgu", "tinygrad_rnn_mgu.py")),
                    ("peephole_lstm", os.path.join("peephole", "tinygrad_rnn_peephole.py"))):
        if name not in have:
            load_plugin(os.path.join(PLUGINS, f))


class KitchenSink(tr.Cell):
    """Every pointwise feature at once: a value read by an add and by other ops, width-1
    row statistics broadcast back, where on a comparison, clip, exp, log, max, a (1, H)
    parameter, a slice of a product, and a third state passed through unchanged."""

    name = "kitchen_sink"
    num_states = 3

    def __init__(self, input_size, hidden_size):
        super().__init__(input_size, hidden_size)
        self.w = self.param((input_size + hidden_size, 2 * hidden_size), init="xavier_uniform")
        self.u = self.param((hidden_size,), init="uniform")
        self.scale = self.param((1, hidden_size), init="ones")

    def step(self, x, state):
        h, c, k = state
        a, b = (tr.cat([x, h], axis=-1) @ self.w).split(self.hidden_size, axis=-1)
        s = a + c * self.u
        y = (s + s.tanh()) * 0.5 + s.sigmoid() * s
        m = y.mean(axis=-1, keepdims=True)
        peak = y.max(axis=-1, keepdims=True)
        gated = tr.where(y > m, y, b.exp().clip(0, 3))
        new_h = (gated - m) * self.scale + (peak * 0.1).tanh() + (b * b + 1).log() * 0.1 - k * 0.01
        return new_h, y.clip(-2, 2), k
