"""Per-step gradient norms: exact against PyTorch; verdicts on constructed cases; measures."""
import numpy as np
import pytest

import tinygrad_rnn as tr
from tinygrad_rnn import diagnostics as D


def _torch_unrolled_norms(torch, cell, sd, x, w, layers, H):
    """||dL/dh_t|| per layer from PyTorch cells unrolled by hand with retain_grad."""
    mk = {"rnn": torch.nn.RNNCell, "lstm": torch.nn.LSTMCell, "gru": torch.nn.GRUCell}[cell]
    cells = []
    for l in range(layers):
        c = mk(x.shape[2] if l == 0 else H, H).double()
        c.load_state_dict({k.replace(f"_l{l}", ""): torch.tensor(v) for k, v in sd.items() if k.endswith(f"_l{l}")})
        cells.append(c)
    T, B = x.shape[:2]
    inp = [torch.tensor(x[t]) for t in range(T)]
    keep = []
    for c in cells:
        h = torch.zeros(B, H, dtype=torch.float64)
        cs = torch.zeros(B, H, dtype=torch.float64)
        hs, cells_c = [], []
        for t in range(T):
            if cell == "lstm":
                h, cs = c(inp[t], (h, cs))
                cs.retain_grad()
                cells_c.append(cs)
            else:
                h = c(inp[t], h)
            h.retain_grad()
            hs.append(h)
        keep.append((hs, cells_c))
        inp = hs
    (torch.stack(inp) * torch.tensor(w)).sum().backward()
    h_norms = np.array([[float(h.grad.norm()) for h in hs] for hs, _ in keep])
    c_norms = np.array([[float(c.grad.norm()) for c in cs] for _, cs in keep]) if cell == "lstm" else None
    return h_norms, c_norms


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("fused", [True, False])
def test_step_grad_norms_match_pytorch_unrolled(cell, fused):
    torch = pytest.importorskip("torch")
    tr.manual_seed(0)
    rnn = tr.nn.RNN(cell, 3, 5, num_layers=2, dtype="float64", fused=fused)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((7, 4, 3))
    w = rng.standard_normal((7, 4, 5))
    ours = D.step_grad_norms(rnn, x, lambda out: (out * w).sum())
    theirs, c_theirs = _torch_unrolled_norms(torch, cell, rnn.state_dict(), x, w, 2, 5)
    np.testing.assert_allclose(ours, theirs, rtol=1e-8)
    if cell == "lstm":
        np.testing.assert_allclose(D.step_grad_norms(rnn, x, lambda out: (out * w).sum(), which=1),
                                   c_theirs, rtol=1e-8)


def test_step_grad_norms_leave_parameter_grads_alone():
    rnn = tr.nn.RNN("gru", 2, 3)
    D.step_grad_norms(rnn, np.ones((4, 2, 2), np.float32), lambda out: out.sum())
    assert all(p.grad is None for p in rnn.parameters())


def _relu_rnn_with_recurrent(scale, H=8):
    rnn = tr.nn.RNN("rnn", 2, H, nonlinearity="relu", dtype="float64")
    sd = rnn.state_dict()
    sd["weight_hh_l0"] = scale * np.eye(H)
    sd["weight_ih_l0"] = np.abs(sd["weight_ih_l0"])
    sd["bias_ih_l0"] = sd["bias_hh_l0"] = np.zeros(H)
    rnn.load_state_dict(sd)
    return rnn


def test_verdicts_on_constructed_cases():
    rng = np.random.default_rng(0)
    loss_last = lambda out: out[-1].sum()
    # A tanh RNN at T=100 with PyTorch's default init: vanishing.
    tr.manual_seed(0)
    tanh_rnn = tr.nn.RNN("rnn", 2, 32, dtype="float64")
    norms = D.step_grad_norms(tanh_rnn, rng.uniform(0, 1, (100, 8, 2)), loss_last)[0]
    assert D.verdict(norms) == "vanishing" and D.horizon(norms) < 100
    # A ReLU RNN with recurrent weights 1.5 x identity and positive inputs: exploding.
    x_pos = rng.uniform(0, 1, (60, 4, 2))
    norms = D.step_grad_norms(_relu_rnn_with_recurrent(1.5), x_pos, loss_last)[0]
    assert D.verdict(norms) == "exploding"
    assert D.decay_rate(norms) == pytest.approx(1.5, rel=1e-6)
    # The identity recurrence (IRNN, Le et al. 2015): every step gets the same gradient.
    norms = D.step_grad_norms(_relu_rnn_with_recurrent(1.0), x_pos, loss_last)[0]
    assert D.verdict(norms) == "healthy" and D.horizon(norms) == 60
    np.testing.assert_allclose(norms, norms[-1])


def test_step_jacobian_norm_is_exact_for_linear_recurrence():
    rnn = _relu_rnn_with_recurrent(0.7, H=4)
    x = np.random.default_rng(0).uniform(0, 1, (5, 2, 2))
    np.testing.assert_allclose(D.step_jacobian_norms(rnn, x), 0.7, rtol=1e-12)


def test_step_jacobian_of_lstm_matches_finite_differences():
    tr.manual_seed(2)
    rnn = tr.nn.RNN("lstm", 2, 3, dtype="float64")
    x = np.random.default_rng(1).standard_normal((3, 1, 2))
    norms = D.step_jacobian_norms(rnn, x)
    cell = rnn.cells[0]
    s = np.zeros(6)
    for t in range(3):
        def f(v):
            with tr.no_grad():
                h, c = cell.step(tr.Tensor(x[t]), (tr.Tensor(v[None, :3]), tr.Tensor(v[None, 3:])))
            return np.concatenate([h.numpy()[0], c.numpy()[0]])
        J = np.stack([(f(s + e) - f(s - e)) / 2e-6 for e in np.eye(6) * 1e-6], axis=1)
        assert norms[t] == pytest.approx(np.linalg.norm(J, 2), rel=1e-6)
        s = f(s)


def test_spectral_radius_and_saturation():
    rnn = _relu_rnn_with_recurrent(1.5)
    assert D.recurrent_spectral_radius(rnn) == {"weight_hh_l0": pytest.approx(1.5)}
    lstm = tr.nn.RNN("lstm", 2, 4)
    radius = D.recurrent_spectral_radius(lstm)
    assert sorted(radius) == [f"weight_hh_l0[{g}]" for g in range(4)]
    sat = D.gate_saturation(lstm, np.zeros((3, 2, 2), np.float32))
    assert sat == {"sigmoid_saturated": 0.0, "tanh_saturated": 0.0}
    big = tr.nn.RNN("lstm", 2, 4)
    big.load_state_dict({k: v * 0 + (50.0 if "bias" in k else 0.0) for k, v in big.state_dict().items()})
    assert D.gate_saturation(big, np.zeros((3, 2, 2), np.float32))["sigmoid_saturated"] == 1.0
    assert D.gate_saturation(tr.nn.RNN("rnn", 2, 3), np.zeros((3, 2, 2), np.float32)) is None


def test_horizon_and_rate_helpers():
    norms = 0.5 ** np.arange(20)[::-1]
    assert D.decay_rate(norms) == pytest.approx(0.5)
    assert D.horizon(norms) == 10  # 0.5**10 < 1e-3 <= 0.5**9
    line = D.sparkline(norms, width=10)
    bars = "▁▂▃▄▅▆▇█"
    assert len(line) == 10 and line[0] == "▁" and line[-1] == "█"
    assert [bars.index(c) for c in line] == sorted(bars.index(c) for c in line)  # log-linear: monotone


def test_nan_input_is_an_error_naming_the_position():
    x = np.zeros((4, 2, 2))
    x[2, 1, 0] = np.nan
    with pytest.raises(ValueError, match=r"non-finite value \(nan\) at position \(2, 1, 0\)"):
        D.step_grad_norms(tr.nn.RNN("rnn", 2, 3), x, lambda out: out.sum())


class _NoParams(tr.Cell):
    """h_t = tanh(h_{t-1} + 1): no parameters, and the input is never read."""

    name = "noparam"
    num_states = 1

    def step(self, x, state):
        return ((state[0] + 1).tanh(),)


@pytest.mark.usefixtures("clean_plugins")
@pytest.mark.parametrize("fused", [None, False])
def test_a_cell_without_parameters_is_diagnosed_exactly(fused):
    """Its states are constants to the tape unless the initial state is tracked: the
    norms were missing (compiled path: an error) or all zero (step path)."""
    import types
    from tinygrad_rnn import plugins
    plugin = types.ModuleType("noparam_plugin")
    plugin.register_cells = tr.hookimpl(lambda register: register(_NoParams))
    plugins.register_plugin(plugin)
    rnn = tr.nn.RNN("noparam", 2, 3, dtype="float64")
    rnn.fused = fused
    x = tr.Tensor(np.random.default_rng(0).normal(size=(5, 2, 2)))
    w = np.arange(6.0).reshape(2, 3)
    norms = D.step_grad_norms(rnn, x, lambda out: (out[-1] * tr.Tensor(w)).sum())[0]
    h = [np.zeros((2, 3))]
    for _ in range(5):
        h.append(np.tanh(h[-1] + 1))
    g, want = w.copy(), []
    for t in range(5, 0, -1):  # dL/dh_t for h_1 .. h_5, then back through tanh
        want.append(np.sqrt((g ** 2).sum()))
        g = g * (1 - h[t] ** 2)
    np.testing.assert_allclose(norms, want[::-1], rtol=1e-12)


@pytest.mark.usefixtures("clean_plugins")
def test_diagnose_and_gradcheck_of_a_cell_without_parameters(tmp_path):
    from click.testing import CliRunner
    import cli
    plugin = tmp_path / "noparam.py"
    plugin.write_text("import tinygrad_rnn as tr\n\n\nclass NoParam(tr.Cell):\n    name = 'noparam'\n"
                      "    num_states = 1\n\n    def step(self, x, s):\n        return ((s[0] + 1).tanh(),)\n\n\n"
                      "@tr.hookimpl\ndef register_cells(register):\n    register(NoParam)\n")
    result = CliRunner().invoke(cli.main, ["--plugin", str(plugin), "diagnose", "--cell", "noparam", "--seq-len", "6",
                                           "--hidden", "2", "--batch", "2", "--json"])
    assert result.exit_code == 0, result.output
    import json
    assert min(json.loads(result.stdout)["cells"][0]["grad_norm_per_step"][0]) > 0
    result = CliRunner().invoke(cli.main, ["--plugin", str(plugin), "gradcheck", "--cell", "noparam"])
    assert "Traceback" not in result.output and "Error" not in result.output
    assert "PASS  compiled_matches_step" in result.stdout and "PASS  gradcheck" in result.stdout
    assert result.exit_code == 0  # a cell without parameters meets the contract


# ---- long horizons: norms that do not underflow, spectra that scale, state names -------
def test_l2norm_is_exact_far_below_the_square_root_of_the_smallest_float():
    from tinygrad_rnn.norms import l2norm, log10_norms
    a = np.array([3e-190, -4e-190, 0.0])
    assert l2norm(a) == pytest.approx(5e-190, rel=1e-15)
    assert np.sqrt((a ** 2).sum()) == 0.0  # what a plain sum of squares gives
    assert l2norm(np.array([3e200, 4e200])) == pytest.approx(5e200, rel=1e-15)
    assert l2norm(np.zeros(4)) == 0.0
    g = np.random.default_rng(0).normal(size=50)  # inside the safe range: the plain formula, bit for bit
    assert l2norm(g) == float(np.sqrt((g ** 2).sum()))
    assert log10_norms([0.0, 1e-200, 10.0]) == [None, -200.0, 1.0]


def _fading_rnn(fused, factor=1e-20, H=3):
    """tanh RNN whose recurrent weight is factor * I: dL/dh falls by about ``factor`` a step."""
    tr.manual_seed(0)
    rnn = tr.nn.RNN("rnn", 2, H, dtype="float64", fused=fused)
    rnn.cells[0].weight_hh.data = np.eye(H) * factor
    return rnn


@pytest.mark.parametrize("fused", [None, False])
def test_step_grad_norms_do_not_underflow(fused):
    T = 16  # dL/dh_0 is about 1e-300: its squares (1e-600) are far below float64's range
    x = np.random.default_rng(0).uniform(0, 1, (T, 2, 2))
    norms = D.step_grad_norms(_fading_rnn(fused), x, lambda out: (out[-1] * out[-1]).sum())[0]
    assert (norms > 0).all()
    assert 1e-320 < norms[0] < 1e-250
    steps = norms[1:] / norms[:-1]  # each step back multiplies by ~1e-20 (times tanh' factors)
    assert (steps > 1e19).all() and (steps < 1e22).all()


def test_compiled_norms_equal_the_step_path_below_the_underflow_threshold():
    T = 16
    x = np.random.default_rng(0).uniform(0, 1, (T, 3, 2))
    loss = lambda out: (out * out).sum()  # noqa: E731
    compiled = D.step_grad_norms(_fading_rnn(None), x, loss)
    step = D.step_grad_norms(_fading_rnn(False), x, loss)
    assert (compiled > 0).all()
    np.testing.assert_allclose(compiled, step, rtol=1e-12)


def test_power_iteration_equals_the_svd():
    J = np.random.default_rng(0).normal(size=(20, 12, 12)) * np.logspace(-200, 100, 20)[:, None, None]
    J[3] = 0.0
    got = D.spectral_norms(J)
    np.testing.assert_allclose(got, np.linalg.norm(J, 2, axis=(1, 2)), rtol=1e-12)
    assert got[3] == 0.0


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_step_jacobian_norms_equal_an_svd_of_each_step(cell):
    tr.manual_seed(3)
    rnn = tr.nn.RNN(cell, 2, 5, dtype="float64")
    x = np.random.default_rng(1).standard_normal((7, 2, 2))
    norms = D.step_jacobian_norms(rnn, x)
    c = rnn.cells[0]
    S = c.num_states
    state = tuple(tr.Tensor(np.zeros((1, 5))) for _ in range(S))
    for t in range(7):  # the Jacobian row by row through the tape, then its SVD
        rows = []
        for k in range(S * 5):
            inputs = tuple(tr.Tensor(s.numpy(), requires_grad=True) for s in state)
            out = c.step(tr.Tensor(x[t, :1]), inputs)
            out[k // 5][0, k % 5].backward()
            rows.append(np.concatenate([s.grad.numpy()[0] for s in inputs]))
        assert norms[t] == pytest.approx(np.linalg.norm(np.array(rows), 2), rel=1e-10)
        with tr.no_grad():
            state = tuple(tr.Tensor(s.numpy()) for s in c.step(tr.Tensor(x[t, :1]), state))


def test_jacobians_of_a_long_sequence_are_an_evenly_spaced_subset():
    assert D.jacobian_steps(5, 10).tolist() == [0, 1, 2, 3, 4]
    steps = D.jacobian_steps(1001, 11)
    assert steps.tolist() == list(range(0, 1001, 100))
    rnn = _relu_rnn_with_recurrent(0.7, H=4)
    x = np.random.default_rng(0).uniform(0, 1, (40, 2, 2))
    full = D.step_jacobian_norms(rnn, x)
    part = D.step_jacobian_norms(rnn, x, max_steps=5)
    np.testing.assert_array_equal(part, full[D.jacobian_steps(40, 5)])


@pytest.mark.usefixtures("clean_plugins")
def test_every_state_is_reported_under_its_name():
    import types
    from tinygrad_rnn import plugins

    class Named(tr.Cell):
        name = "named_states"
        num_states = 2
        state_names = ("y", "z")

        def __init__(self, input_size, hidden_size):
            super().__init__(input_size, hidden_size)
            self.w = self.param((input_size, hidden_size), init="xavier_uniform")

        def step(self, x, state):
            y, z = state
            z2 = z * 0.5 + (x @ self.w).tanh()
            return (y * 0.5 + z2 * 0.1, z2)

    class Unnamed(tr.Cell):
        name = "unnamed_states"
        num_states = 3

        def step(self, x, state):
            a, b, c = state
            return ((a * 0.5 + x.sum(axis=-1, keepdims=True)).tanh(), a * 0.5 + b * 0.2, c * 0.9 + b * 0.1)

    assert tr.Cell.state_names == ("h",) and Unnamed.state_names == ("h", "s1", "s2")
    assert plugins.get_cell("lstm").state_names == ("h", "c")
    plugin = types.ModuleType("named_states_plugin")
    plugin.register_cells = tr.hookimpl(lambda register: (register(Named), register(Unnamed)))
    plugins.register_plugin(plugin)
    report = tr.report.diagnose(cells=("named_states", "unnamed_states", "lstm"), seq_len=6, hidden=3, batch=2)
    named, unnamed, lstm = report["cells"]
    assert named["state_names"] == ["y", "z"] and "z_grad_norm_per_step" in named
    assert "c_grad_norm_per_step" not in named
    assert {"s1_grad_norm_per_step", "s2_grad_norm_per_step", "s2_grad_norm_per_step_log10"} <= set(unnamed)
    assert "c_grad_norm_per_step" in lstm and lstm["state_names"] == ["h", "c"]
    for key in ("grad_norm_per_step", "c_grad_norm_per_step"):
        norms = np.array(lstm[key])
        np.testing.assert_allclose(np.array(lstm[key + "_log10"], float), np.log10(norms), rtol=1e-12)


def test_bad_state_names_are_a_config_error():
    class Bad(tr.Cell):
        name = "bad_names"
        num_states = 2
        state_names = ("h",)
    with pytest.raises(tr.errors.ConfigError, match="state_names must be 2 distinct"):
        D.state_names(Bad)


def test_compiled_log10_norms_stay_exact_below_float64s_range():
    T = 16  # dL/dh_0 is about 1e-450: not a float64, but its log10 is measured
    x = np.random.default_rng(0).uniform(0, 1, (T, 2, 2))
    rnn = _fading_rnn(None, factor=1e-30)
    out, _ = rnn(x, probe=True)
    (out[-1] * out[-1]).sum().backward()
    logs = rnn.step_grad_norms(0, log10=True)[0]
    norms = rnn.step_grad_norms(0)[0]
    assert np.isfinite(logs).all() and -480 < logs[0] < -420 and norms[0] == 0.0
    steps = np.diff(logs)  # about 30 decades a step
    assert (steps > 29).all() and (steps < 31.5).all()
    fine = norms > 1e-300  # where the norm is a float64, its log10 is its log10
    np.testing.assert_allclose(logs[fine], np.log10(norms[fine]), rtol=1e-12)


class _UnreadState(tr.Cell):
    """Two states, and step never reads h (h' = tanh(x W + c K), c' = h' U): the gradient
    flows through c, and h's columns of the step Jacobian are zero."""

    name = "unread_state"
    num_states = 2

    def __init__(self, input_size, hidden_size):
        super().__init__(input_size, hidden_size)
        self.w = self.param((input_size, hidden_size), init="xavier_uniform")
        self.k = self.param((hidden_size, hidden_size), init="orthogonal")
        self.u = self.param((hidden_size, hidden_size), init="orthogonal")

    def step(self, x, state):
        h, c = state
        h = (x @ self.w + c @ self.k).tanh()
        return h, h @ self.u


def test_a_state_the_step_never_reads_has_zero_jacobian_columns_not_an_off_tape_error():
    """diagnose took a state step() does not read for one that left the tape."""
    from tinygrad_rnn import diagnostics
    tr.manual_seed(0)
    rnn = tr.nn.RNN(_UnreadState, 2, 3, dtype="float64")
    x = np.random.default_rng(0).standard_normal((6, 2, 2))
    norms = diagnostics.step_jacobian_norms(rnn, x)
    assert np.isfinite(norms).all() and (norms > 0).all()
