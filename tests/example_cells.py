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


# Cells a reviewer wrote to break the compiler (each found a bug, CPU or CUDA): shifted
# slices next to other ops, tied row maxima, products of slices of slices, values read in a
# later stage only through a comparison, a new state as a product's operand.


class MaxDup(tr.Cell):
    """row max over cat([a, a]): every max is tied with its duplicate."""
    name = "max_dup"
    def __init__(self, I, H):
        super().__init__(I, H)
        self.w = self.param((I + H, H), init="xavier_uniform")
    def step(self, x, state):
        (h,) = state
        a = (tr.cat([x, h], axis=-1) @ self.w)
        peak = tr.cat([a, a], axis=-1).max(axis=-1, keepdims=True)
        return ((a + peak).tanh(),)


class MaxTies(tr.Cell):
    """clip saturates -> ties in a row max."""
    name = "max_ties"
    def __init__(self, I, H):
        super().__init__(I, H)
        self.w = self.param((I + H, H), init="xavier_uniform")
    def step(self, x, state):
        (h,) = state
        z = (tr.cat([x, h], axis=-1) @ self.w) * 10
        y = z.clip(-0.1, 0.1)
        peak = y.max(axis=-1, keepdims=True)
        return ((y + peak).tanh(),)


class Multi(tr.Cell):
    """slices at offsets, cat of computed values, a sum feeding ops, several recurrent
    products in several stages, lhs = slice of a computed value / of a state."""
    name = "multi"
    num_states = 2
    def __init__(self, I, H):
        super().__init__(I, H)
        self.w1 = self.param((I + H, 2 * H), init="xavier_uniform")
        self.u2 = self.param((H, H), init="xavier_uniform")
        self.u3 = self.param((H - 1, H), init="xavier_uniform")
        self.b = self.param((H,), init="uniform")
    def step(self, x, state):
        h, c = state
        H = self.hidden_size
        a = tr.cat([x, h], axis=-1) @ self.w1
        p, q = a.split(H, axis=-1)
        z = (p + c).tanh()
        zz = tr.cat([z, q.sigmoid()], axis=-1)
        g = zz[:, 1:H + 1] @ self.u2
        m = zz.sum(axis=-1, keepdims=True)
        r = c[:, 1:] @ self.u3
        new_h = (g + m * 0.1).relu() + r * self.b
        new_c = tr.where(z > 0, c, g).clip(-1, 1)
        return new_h, new_c


class OutLhs(tr.Cell):
    """new state used as lhs of a product in the same step; output view; a duplicated
    output; a state passed through (state 0 unchanged would be silly: state 2)."""
    name = "out_lhs"
    num_states = 3
    def __init__(self, I, H):
        super().__init__(I, H)
        self.w = self.param((I + H, 2 * H), init="xavier_uniform")
        self.u = self.param((H, 2 * H), init="xavier_uniform")
    def step(self, x, state):
        h, c, k = state
        H = self.hidden_size
        new_c = (tr.cat([x, h], axis=-1) @ self.w)[:, :H].tanh() + c * 0.5
        z = (new_c @ self.u).sigmoid()          # lhs: a new state (an output)
        new_h = z[:, H:] * new_c + z[:, :H]      # views of z
        return new_h, new_c, k


class SliceSlice(tr.Cell):
    name = "slice_slice"
    def __init__(self, I, H):
        super().__init__(I, H)
        self.w = self.param((I + H, H), init="xavier_uniform")
        self.u = self.param((H - 2, H), init="xavier_uniform")
    def step(self, x, state):
        (h,) = state
        s = h[:, 1:][:, 1:]
        return ((tr.cat([x, h], axis=-1) @ self.w + s @ self.u).tanh(),)


class OffsetRace(tr.Cell):
    """a slice at offset 1 of cat([p, sum(p)]): correct on the CPU, a race on the GPU."""
    name = "offset_race"
    def __init__(self, I, H):
        super().__init__(I, H)
        self.w = self.param((I + H, H), init="xavier_uniform")
    def step(self, x, state):
        (h,) = state
        p = (tr.cat([x, h], axis=-1) @ self.w).tanh()
        zz = tr.cat([p, p.sum(axis=-1, keepdims=True)], axis=-1)
        return ((zz[:, 1:] + p).tanh(),)


class CompareOnly(tr.Cell):
    """z read in a later stage only through a comparison: E buffer never written."""
    name = "compare_only"
    def __init__(self, I, H):
        super().__init__(I, H)
        self.w = self.param((I + H, H), init="xavier_uniform")
        self.u = self.param((H, H), init="xavier_uniform")
    def step(self, x, state):
        (h,) = state
        z = (tr.cat([x, h], axis=-1) @ self.w).tanh()
        g = z @ self.u
        return (tr.where(z > 0, g, g * 0.5),)


class Pow(tr.Cell):
    """pow, exp/log, where with const branches, min/max clip, relu, width-1 chains."""
    name = "powc"
    def __init__(self, I, H):
        super().__init__(I, H)
        self.w = self.param((I + H, H), init="xavier_uniform")
        self.s = self.param((1,), init="ones")
    def step(self, x, state):
        (h,) = state
        z = tr.cat([x, h], axis=-1) @ self.w
        m = z.mean(axis=-1, keepdims=True)
        v = ((z - m) ** 2).mean(axis=-1, keepdims=True)
        n = (z - m) / (v + 1e-3) ** 0.5
        q = tr.where(n > 0.2, n ** 3, (n.exp() + 1).log() * self.s)
        return ((q.clip(-2, 2) + z.relu() * 0.1 - z.max(axis=-1, keepdims=True) * 0.05).tanh(),)


ADVERSARIAL = (MaxDup, MaxTies, Multi, OutLhs, SliceSlice, OffsetRace, CompareOnly, Pow)


class UsersLayerNormLSTM(tr.Cell):
    """A layer-normalised LSTM written the way users write it: ``** 2`` and ``** 0.5``
    on row means (``plugins/layernorm_lstm.py`` is the hand-tuned one)."""

    name = "users_ln_lstm"
    num_states = 2

    def __init__(self, input_size, hidden_size, eps=1e-5):
        super().__init__(input_size, hidden_size)
        self.eps = eps
        self.weight_ih = self.param((4 * hidden_size, input_size), init="xavier_uniform")
        self.weight_hh = self.param((4 * hidden_size, hidden_size), init="orthogonal")
        self.gain = self.param((4 * hidden_size,), init="ones")
        self.gain_c = self.param((hidden_size,), init="ones")

    def norm(self, v, gain):
        mu = v.mean(axis=-1, keepdims=True)
        var = ((v - mu) ** 2).mean(axis=-1, keepdims=True)
        return (v - mu) / (var + self.eps) ** 0.5 * gain

    def step(self, x, state):
        h, c = state
        gates = x @ self.weight_ih.T + self.norm(h @ self.weight_hh.T, self.gain)
        i, f, g, o = gates.split(self.hidden_size, axis=-1)
        c = f.sigmoid() * c + i.sigmoid() * g.tanh()
        return o.sigmoid() * self.norm(c, self.gain_c).tanh(), c
