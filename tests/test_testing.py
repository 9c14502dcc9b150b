"""The cell contract as pytest tests: parametrize_with_checks, check_cell, and each check failing."""
import numpy as np
import pytest

import tinygrad_rnn as tr
from tinygrad_rnn import testing
from tinygrad_rnn.testing import CHECK_NAMES, parametrize_with_checks

from example_cells import KitchenSink, load_example_plugins

load_example_plugins()

CELLS = ["rnn", ("rnn", {"nonlinearity": "relu"}), "lstm", "gru", "mgu", "peephole_lstm", "indrnn", "ln_lstm",
         KitchenSink]


@parametrize_with_checks(CELLS)
def test_built_in_and_example_cells(cell, check):
    check(cell)


class RowMixer(tr.Cell):
    """Reads the batch mean of the state: row b depends on every row."""
    name = "row_mixer"

    def __init__(self, input_size, hidden_size):
        super().__init__(input_size, hidden_size)
        self.w = self.param((input_size, hidden_size), init="xavier_uniform")

    def step(self, x, state):
        (h,) = state
        return ((x @ self.w + h.mean(axis=0, keepdims=True)).tanh(),)


class Noisy(tr.Cell):
    """Adds fresh noise each step, drawn from NumPy's global generator."""
    name = "noisy"

    def __init__(self, input_size, hidden_size):
        super().__init__(input_size, hidden_size)
        self.w = self.param((input_size, hidden_size), init="xavier_uniform")

    def step(self, x, state):
        (h,) = state
        noise = tr.Tensor(np.random.standard_normal(h.shape) * 1e-3, dtype=h.dtype)
        return ((x @ self.w + h + noise).tanh(),)


class ForgetsPadding(tr.Cell):
    """A hand-written forward_sequence that ignores the padding mask."""
    name = "forgets_padding"

    def __init__(self, input_size, hidden_size):
        super().__init__(input_size, hidden_size)
        self.w = self.param((input_size, hidden_size), init="xavier_uniform")

    def step(self, x, state):
        return ((x @ self.w + state[0]).tanh(),)

    def forward_sequence(self, x, state, mask=None, probe=None):
        return tr.Cell.forward_sequence(self, x, state, None, probe)


def test_a_cell_that_mixes_batch_rows_fails_batch_independence():
    with pytest.raises(AssertionError) as e:
        testing.check_batch_independence(RowMixer)
    msg = str(e.value)
    assert msg.startswith("batch_independence [cell 'row_mixer'")
    assert "output of row 0 in the batch differs by" in msg and "at index (" in msg
    assert "in the batch" in msg and "alone" in msg


def test_a_nondeterministic_cell_fails_determinism():
    with pytest.raises(AssertionError, match=r"^determinism \[cell 'noisy'.*\(step path\) differs by"):
        testing.check_determinism(Noisy)


def test_a_cell_that_ignores_padding_fails_lengths():
    with pytest.raises(AssertionError, match=r"^lengths \[cell 'forgets_padding'.*padded step"):
        testing.check_lengths(ForgetsPadding)


def test_a_wrong_vjp_fails_gradcheck_naming_the_parameter():
    bad = tr.defop("bad_tanh_t", lambda k, a: k.tanh(a), lambda k, g, y, a: (g,))

    class BadGrad(tr.Cell):
        name = "badgrad_t"

        def __init__(self, i, h):
            super().__init__(i, h)
            self.w = self.param((i, h))

        def step(self, x, state):
            return (tr.ops.apply(bad, x @ self.w + state[0]),)
    try:
        with pytest.raises(AssertionError, match=r"^gradcheck \[cell 'badgrad_t'.*gradient of the input .*"
                                                 r"at index \(.*tape .* finite differences .* differ by"):
            testing.check_gradcheck(BadGrad)
    finally:
        del tr.ops.OPS["bad_tanh_t"]


def test_a_wrong_state_count_fails_the_contract():
    class TwoForOne(tr.Cell):
        name = "two_for_one"

        def step(self, x, state):
            return (state[0], state[0])
    with pytest.raises(AssertionError, match=r"^contract .*num_states=1 tensors, got 2"):
        testing.check_contract(TwoForOne)


def test_ids_are_cell_dash_check_and_expected_failures_are_strict_xfails():
    mark = parametrize_with_checks(["gru", RowMixer, ("rnn", {"nonlinearity": "relu"})],
                                   expected_failed_checks={"row_mixer-batch_independence": "reads the batch mean",
                                                           "lengths": "not yet"})
    assert mark.name == "parametrize" and mark.args[0] == "cell, check"
    params = mark.args[1]
    ids = [p.id for p in params]
    assert ids[:len(CHECK_NAMES)] == [f"gru-{n}" for n in CHECK_NAMES]
    assert "row_mixer-gradcheck" in ids and "rnn_relu-compiled_matches_step" in ids
    xfails = {p.id: p.marks[0].kwargs for p in params if p.marks}
    assert xfails["row_mixer-batch_independence"] == {"reason": "reads the batch mean", "strict": True,
                                                      "raises": AssertionError}
    assert {"gru-lengths", "row_mixer-lengths", "rnn_relu-lengths"} <= set(xfails)
    assert "gru-batch_independence" not in xfails
    assert repr(params[0].values[1]) == "contract" and "Contract" in params[0].values[1].__doc__


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="unknown check.*'gradients'.*gradcheck"):
        parametrize_with_checks(["gru"], expected_failed_checks={"gradients": "typo"})
    with pytest.raises(TypeError, match=r"unknown size\(s\) \['hidden'\]"):
        parametrize_with_checks(["gru"], hidden=3)
    with pytest.raises(KeyError, match="unknown cell 'nope'"):
        parametrize_with_checks(["nope"])
    with pytest.raises(TypeError, match="tr.Cell subclass"):
        parametrize_with_checks([object])
    with pytest.raises(TypeError, match=r"cells is a list of cells, got 'gru'; write \['gru'\]"):
        parametrize_with_checks("gru")  # was "unknown cell 'g'"
    with pytest.raises(TypeError, match=r"\(cell, \{options\}\), got \('rnn', 'relu'\)"):
        parametrize_with_checks([("rnn", "relu")])  # was an AttributeError
    for size, value in [("hidden_size", 0), ("seq_len", -1), ("batch", 2.5), ("seed", -1), ("input_size", True)]:
        with pytest.raises(ValueError, match=f"{size} must be an integer >= "):
            parametrize_with_checks(["gru"], **{size: value})  # was accepted, to fail in every test


@parametrize_with_checks([RowMixer], expected_failed_checks={"batch_independence": "reads the batch mean",
                                                             "lengths": "a row run alone has another batch mean"})
def test_expected_failures_run_as_xfail(cell, check):
    check(cell)


def test_every_check_has_a_docstring_and_check_cell_runs_them_all():
    for fn in testing.CHECKS:
        assert fn.__doc__ and fn.__doc__.split(":")[0], fn.__name__
    report = testing.check_cell(RowMixer)
    assert not report.ok and list(report.results) == list(CHECK_NAMES)
    assert report.results["batch_independence"] == "fail" and report.results["gradcheck"] == "pass"
    assert report.results["cuda_matches_cpu"] in ("skip", "pass")
    text = str(report)
    assert "FAIL  batch_independence: [cell 'row_mixer'" in text
    assert "PASS  gradcheck: the tape's gradients equal float64 finite differences" in text


def test_the_compiled_check_skips_with_the_compilers_reason():
    with pytest.raises(testing.CheckSkipped, match="not compiled"):
        testing.check_compiled_matches_step(RowMixer)


def test_the_cuda_check_skips_unless_asked(monkeypatch):
    from tinygrad_rnn.backend import cuda_available
    import os
    if cuda_available()[0] and os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
        pytest.skip("a GPU is here: the check runs")
    monkeypatch.delenv(testing.CUDASIM_ENV, raising=False)
    with pytest.raises(testing.CheckSkipped, match=testing.CUDASIM_ENV):
        testing.check_cuda_matches_cpu("gru")


@pytest.mark.slow
@pytest.mark.cuda
def test_the_cuda_check_runs_in_the_simulator_when_asked(monkeypatch):
    monkeypatch.setenv(testing.CUDASIM_ENV, "1")
    testing.check_cuda_matches_cpu("rnn", hidden_size=2, batch=2, seq_len=2, input_size=2)


DEVICE_DEPENDENT = """
import tinygrad_rnn as tr


class DeviceDependent(tr.Cell):
    \"\"\"Scales its update by 1.1 on the GPU only (by hand: the compiler would see one device).\"\"\"
    name = "device_dependent"

    def __init__(self, i, h):
        super().__init__(i, h)
        self.w = self.param((i, h), init="xavier_uniform")

    def step(self, x, state):
        return ((x @ self.w + state[0]).tanh() * (1.1 if x.device == "cuda" else 1.0),)

    def forward_sequence(self, x, state, mask=None, probe=None):
        return tr.Cell.forward_sequence(self, x, state, mask, probe)


@tr.hookimpl
def register_cells(register):
    register(DeviceDependent)
"""


@pytest.mark.slow
@pytest.mark.cuda
@pytest.mark.usefixtures("clean_plugins")
def test_the_simulator_subprocess_reports_what_differed(monkeypatch, tmp_path):
    """A --plugin file's cell travels to the subprocess, and its failure comes back as one line."""
    path = tmp_path / "devdep.py"
    path.write_text(DEVICE_DEPENDENT)
    tr.load_plugin(str(path))
    monkeypatch.setenv(testing.CUDASIM_ENV, "1")
    with pytest.raises(AssertionError, match=r"^cuda_matches_cpu \[cell 'device_dependent'.*output differs by "
                                             r".* \(cuda .*, cpu .*\)"):
        testing.check_cuda_matches_cpu("device_dependent", hidden_size=2, seq_len=2)


def test_relative_differences_of_float32_zeros_are_zero():
    """Two all-zero float32 gradients (a cell that ignores its input) agree: 0, not NaN
    (1e-300 as a float32 is 0, and 0 / 0 is NaN, which every tolerance test reads as a
    failure, and which ``max`` of a list may silently skip)."""
    zeros = np.zeros(3, np.float32)
    tiny = np.full(3, 1e-30, np.float32)
    same, off_zero, same_tiny = testing.relative_differences([zeros, tiny, tiny], [zeros, zeros, tiny])
    assert same == 0.0 and same_tiny == 0.0 and off_zero > 1
