"""The cell compiler: compiled kernels against the step path, errors, caching, the CLI."""
import os

import numpy as np
import pytest

import tinygrad_rnn as tr
from tinygrad_rnn.compiler import CompileError, compile_cell, compile_status, compiled_versions, runtime
from tinygrad_rnn.backend import threads
from tinygrad_rnn.testing import outputs_and_gradients as run, relative_differences

from example_cells import ADVERSARIAL, KitchenSink, UsersLayerNormLSTM, load_example_plugins


CELLS = [("rnn", {}), ("rnn", {"nonlinearity": "relu"}), ("lstm", {}), ("gru", {}),
         ("mgu", {}), ("peephole_lstm", {}), ("indrnn", {}), ("ln_lstm", {})]


@pytest.fixture(autouse=True)
def example_plugins():
    load_example_plugins()


def assert_close(got, want, rtol):
    for i, err in enumerate(relative_differences(got, want)):
        assert err < rtol, f"item {i}: relative difference {err:.2e}"


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("lengths", [None, [5, 2, 4]])
@pytest.mark.parametrize("cell,options", CELLS, ids=[c + "".join(o.values()) for c, o in CELLS])
def test_compiled_equals_step_path_float64(cell, options, layers, lengths):
    tr.manual_seed(3)
    rnn = tr.nn.RNN(cell, 3, 4, num_layers=layers, dtype="float64", **options)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 3, 3))
    states = [rng.standard_normal((layers, 3, 4)) * 0.5 for _ in range(rnn.num_states)]
    lengths = None if lengths is None else np.array(lengths)
    compiled = run(rnn, x, states, lengths, fused=True)
    step = run(rnn, x, states, lengths, fused=False)
    assert_close(compiled, step, 1e-10)


def test_float32_compiled_close_to_float64():
    tr.manual_seed(0)
    r64 = tr.nn.RNN("gru", 3, 4, dtype="float64")
    r32 = tr.nn.RNN("gru", 3, 4, dtype="float32").load_state_dict(r64.state_dict())
    x = np.random.default_rng(2).standard_normal((6, 2, 3))
    states = [np.zeros((1, 2, 4))]
    assert_close(run(r32, x.astype(np.float32), [s.astype(np.float32) for s in states], None, True),
                 run(r64, x, states, None, True), 1e-4)


def test_one_generated_module_serves_every_size():
    small = compile_cell(tr.nn.RNN("lstm", 3, 5).cells[0])
    large = compile_cell(tr.nn.RNN("lstm", 7, 33).cells[0])
    assert small.module is large.module
    assert "4 * H" in small.source and "any input and hidden size" in small.source


def test_generated_source_is_cached_on_disk_and_readable(tmp_path, monkeypatch):
    monkeypatch.setenv("TINYGRAD_RNN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(runtime, "_modules", {})
    cell = tr.nn.RNN("mgu", 2, 3).cells[0]
    compiled = compile_cell(cell)
    path = runtime.source_path(compiled.source)
    assert path.startswith(str(tmp_path))
    with open(path) as f:
        text = f.read()
    assert text == compiled.source
    assert "# _forward_stage1:" in text and "# _backward_stage2:" in text  # MGU: two stages of products



def test_a_row_one_loop_writes_and_reads_is_a_scalar_of_that_loop():
    """The LSTM's backward: the output gate's and cell tanh's gradients live only in the loop
    that computes them (scalars), the cell state's gradient is read by later loops (an array)."""
    source = compile_cell(tr.nn.RNN("lstm", 3, 4).cells[0]).source
    backward = source[source.index("def _backward_loop"):source.index("\ndef forward")]
    scalars = {name for name in backward.replace("(", " ").split() if name.endswith("_j")}
    params = backward[backward.index("(") + 1:backward.index("):")].split(", ")
    call = source[source.index(": _backward_loop(") + len(": _backward_loop("):]
    passed = call[:call.index("))\n")].replace(", DT)", " DT)").split(", ")
    arrays = {name for name, arg in zip(params, passed) if arg.startswith("np.empty(")}  # the driver's scratch rows
    assert arrays
    assert len(scalars) >= 4, scalars
    assert not {name[:-2] for name in scalars} & arrays  # none of them is also allocated
    assert any(f"{name}[j]" in backward for name in arrays)  # rows read across loops stay arrays



def test_the_generated_header_prints_where_like_the_traced_graph():
    """An op without parameters prints none (it printed ``where[]`` in the symbolic header)."""
    source = compile_cell(KitchenSink(3, 4)).source
    header = source.split('"""')[1]
    assert " = where " in header and "where[]" not in header


class Tangled(tr.Cell):
    """A cell whose step mixes samples of the batch: not a row-wise recurrence."""

    name = "tangled"

    def __init__(self, input_size, hidden_size):
        super().__init__(input_size, hidden_size)
        self.w = self.param((input_size, hidden_size))

    def step(self, x, state):
        (h,) = state
        return ((x @ self.w + h.transpose() @ h).tanh(),)   # (B, H) + (H, H): only when B == H


class Reshaper(tr.Cell):
    name = "reshaper"

    def __init__(self, input_size, hidden_size):
        super().__init__(input_size, hidden_size)
        self.w = self.param((input_size, hidden_size))

    def step(self, x, state):
        (h,) = state
        return ((x @ self.w).reshape(-1, self.hidden_size) * h,)


def test_compile_error_names_the_op_and_the_line():
    rnn = tr.nn.RNN(Reshaper, 2, 3, fused=True)
    with pytest.raises(CompileError, match=r"cannot compile reshape at test_compiler.py:\d+"):
        rnn(np.zeros((2, 3, 2), np.float32))


def test_uncompilable_cell_falls_back_to_the_step_path():
    ok, why = compile_status(Reshaper)
    assert not ok and "reshape" in why
    rnn = tr.nn.RNN(Reshaper, 2, 3)                        # fused=None: runs, on the step path
    x = np.random.default_rng(0).standard_normal((4, 3, 2)).astype(np.float32)
    out_auto, _ = rnn(x)
    rnn.fused = False
    out_step, _ = rnn(x)
    np.testing.assert_array_equal(out_auto.numpy(), out_step.numpy())


def test_batch_mixing_step_is_refused_not_miscompiled():
    ok, why = compile_status(Tangled)
    assert not ok and ("matmul" in why or "broadcast" in why)


def test_fused_false_never_compiles():
    rnn = tr.nn.RNN("gru", 2, 3, fused=False)
    rnn(np.zeros((2, 1, 2), np.float32))
    assert compiled_versions(rnn.cells[0]) == []
    rnn.fused = None
    rnn(np.zeros((2, 1, 2), np.float32))
    assert len(compiled_versions(rnn.cells[0])) == 1


@pytest.mark.parametrize("args,kwargs", [((), {"nonlinearity": "relu"}), (("relu",), {})])
def test_a_cell_built_by_hand_with_options_compiles_for_every_size(args, kwargs):
    """The compiler re-makes the cell at probe sizes with the options it was built with (a
    probe without them traced tanh, so the module was specialised to one size)."""
    cell = tr.get_cell("rnn")(2, 3, *args, **kwargs)
    assert cell.cell_options == {"nonlinearity": "relu"}
    assert compile_cell(cell, "float32").sizes is not None


def test_the_compiler_writes_nothing_into_a_cell():
    rnn = tr.nn.RNN("rnn", 2, 3, nonlinearity="relu")
    before = dict(vars(rnn.cells[0]))
    rnn(np.zeros((2, 1, 2), np.float32))
    compile_status(type(rnn.cells[0]), nonlinearity="relu")
    assert vars(rnn.cells[0]) == before


def test_a_hand_written_forward_sequence_still_wins():
    calls = []

    class Own(tr.get_cell("rnn")):
        name = "own_rnn"

        def forward_sequence(self, x, state, mask=None, probe=None):
            calls.append(x.shape)
            return tr.Cell.forward_sequence(self, x, state, mask, probe)
    tr.nn.RNN(Own, 2, 3)(np.zeros((4, 1, 2), np.float32))
    assert calls == [(4, 1, 2)]


def test_probe_cells_do_not_move_the_users_init_stream():
    tr.manual_seed(7)
    a = tr.nn.RNN("peephole_lstm", 3, 5)
    compile_cell(a.cells[0])                  # builds probe-size cells internally
    b = tr.nn.RNN("peephole_lstm", 3, 5)
    tr.manual_seed(7)
    tr.nn.RNN("peephole_lstm", 3, 5)
    c = tr.nn.RNN("peephole_lstm", 3, 5)
    for (name, p), (_, q) in zip(b.named_parameters(), c.named_parameters()):
        np.testing.assert_array_equal(p.numpy(), q.numpy(), err_msg=name)


def test_gates_are_found_from_the_graph_for_plugin_cells():
    rnn = tr.nn.RNN("peephole_lstm", 2, 4, dtype="float64")
    sat = tr.diagnostics.gate_saturation(rnn, np.zeros((3, 2, 2)))
    assert sat is not None and 0 <= sat["sigmoid_saturated"] <= 1
    assert tr.diagnostics.gate_saturation(tr.nn.RNN("indrnn", 2, 3), np.zeros((3, 2, 2), np.float32)) is None


def test_check_cell_compares_compiled_with_step():
    report = tr.testing.check_cell("mgu")
    assert report.ok
    assert "PASS  compiled_matches_step: the compiled kernels equal the step path" in str(report)


def test_cli_compile_prints_graph_plan_and_source():
    from click.testing import CliRunner
    from cli import main
    result = CliRunner().invoke(main, ["compile", "--cell", "gru", "--hidden", "4"])
    assert result.exit_code == 0, result.output
    assert "= sigmoid" in result.output and "recurrent products: 1" in result.output
    assert "# _backward_stage1:" in result.output
    result = CliRunner().invoke(main, ["compile", "--cell", "nope"])
    assert result.exit_code == 2 and "Traceback" not in result.output


def test_cli_cells_says_which_cells_compile():
    from click.testing import CliRunner
    from cli import main
    result = CliRunner().invoke(main, ["cells"])
    assert result.exit_code == 0
    line = next(line for line in result.output.splitlines() if line.startswith("lstm "))
    assert "compiled" in line


@pytest.mark.slow
def test_a_damaged_cached_module_is_rewritten(tmp_path, monkeypatch):
    monkeypatch.setenv("TINYGRAD_RNN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(runtime, "_modules", {})          # nothing loaded yet in this process
    cell = tr.nn.RNN("indrnn", 2, 3).cells[0]
    source = compile_cell(cell).source
    path = runtime.source_path(source)
    with open(path, "w") as f:
        f.write("def broken(:\n")                 # a truncated or edited file in the cache
    runtime._modules.clear()
    fresh = tr.nn.RNN("indrnn", 2, 3)
    out, _ = fresh(np.ones((2, 1, 2), np.float32))
    assert np.isfinite(out.numpy()).all()
    with open(path) as f:
        assert f.read() == source


@pytest.mark.slow
@pytest.mark.parametrize("layers,lengths", [(1, None), (2, [5, 2, 4])])
def test_kitchen_sink_cell_compiles_exactly(layers, lengths):
    assert compile_status(KitchenSink)[0], compile_status(KitchenSink)[1]
    tr.manual_seed(1)
    rnn = tr.nn.RNN(KitchenSink, 3, 4, num_layers=layers, dtype="float64")
    rng = np.random.default_rng(5)
    x = rng.standard_normal((5, 3, 3))
    states = [rng.standard_normal((layers, 3, 4)) * 0.5 for _ in range(3)]
    lengths = None if lengths is None else np.array(lengths)
    assert_close(run(rnn, x, states, lengths, fused=True), run(rnn, x, states, lengths, fused=False), 1e-10)


@pytest.mark.slow
@pytest.mark.parametrize("cls", ADVERSARIAL, ids=[c.name for c in ADVERSARIAL])
def test_cells_written_to_break_the_compiler_compile_exactly(cls):
    assert compile_status(cls)[0], compile_status(cls)[1]
    tr.manual_seed(2)
    rnn = tr.nn.RNN(cls, 2, 5, num_layers=2, dtype="float64")
    rng = np.random.default_rng(6)
    x = rng.standard_normal((4, 3, 2))
    states = [rng.standard_normal((2, 3, 5)) * 0.5 for _ in range(rnn.num_states)]
    lengths = np.array([4, 1, 3])
    assert_close(run(rnn, x, states, lengths, fused=True), run(rnn, x, states, lengths, fused=False), 1e-10)


def test_fused_loops_touch_element_j_only():
    """A merged loop must compute what its separate loops did: statements at an offset or
    running totals stay loops of their own (on the GPU, threads would race)."""
    from tinygrad_rnn.compiler.kir import Buf, Loop, Reduce, Set, el, fuse_loops, lit
    d = {n: Buf(f"d{n}", None, "H") for n in (6, 7, 8, 9, 10, 14, 15)}
    loop = lambda target, value, add=False: Loop("H", [Set(target, value, add)])
    merged = fuse_loops([loop(el(d[6]), el(d[7])), loop(el(d[8]), el(d[6]), add=True)])
    assert len(merged) == 1 and len(merged[0].body) == 2
    for shifted in ([loop(el(d[8], local="1"), el(d[10]), True), loop(el(d[6]), el(d[8]), True)],
                    [loop(el(d[6]), el(d[8]), True), loop(el(d[14]), el(d[15], local="H"))],
                    [Reduce("cnt", lit("K0", None), "H", lit("K1", None), "+", []), loop(el(d[8]), el(d[9], "0"), True)]):
        assert len(fuse_loops(shifted)) == 2


def _elman_like(name, body, **extra):
    """A one-state cell whose step ends with ``body(self, pre, h)``."""
    def init(self, input_size, hidden_size):
        tr.Cell.__init__(self, input_size, hidden_size)
        self.wx = self.param((input_size, hidden_size))
        self.wh = self.param((hidden_size, hidden_size))
        for k, v in extra.items():
            setattr(self, k, v)

    def step(self, x, state):
        (h,) = state
        return (body(self, x @ self.wx + h @ self.wh, h),)
    return type(name, (tr.Cell,), {"name": name, "__init__": init, "step": step})


def _if_item(self, pre, h):
    if pre.sum().item() > 0:  # Python control flow on a value: frozen at trace time
        return pre.tanh()
    return pre.sigmoid()


def _numpy_stat(self, pre, h):
    return (pre / (float(np.abs(h.numpy()).mean()) + 1)).tanh()


def _batch_size(self, pre, h):
    return pre.tanh() * (2.0 / (pre.shape[0] + 1)) + h * 0.5


def _counter(self, pre, h):
    self.calls += 1
    return (pre * (1.0 / self.calls)).tanh()


def _eye_constant(self, pre, h):
    return (pre + h @ tr.Tensor(np.eye(self.hidden_size))).tanh()


@pytest.mark.parametrize("body,why", [(_if_item, "reads the value"), (_numpy_stat, "reads the value"),
                                      (_batch_size, "same graph"), (_counter, "same graph")])
def test_steps_that_read_values_or_sizes_or_keep_state_are_refused(body, why):
    cls = _elman_like("odd", body, calls=0)
    with pytest.raises(CompileError, match=why):
        tr.nn.RNN(cls, 2, 4, fused=True, dtype="float64")(np.ones((3, 5, 2)))
    rnn = tr.nn.RNN(cls, 2, 4, dtype="float64")                 # fused=None: the step path, right numbers
    x = np.random.default_rng(0).standard_normal((3, 5, 2))
    auto, _ = rnn(x)
    rnn.fused = False
    if body is not _counter:                                      # a counter differs from call to call
        np.testing.assert_array_equal(auto.numpy(), rnn(x)[0].numpy())


@pytest.mark.slow
def test_a_constant_sized_like_the_trace_batch_still_compiles():
    cls = _elman_like("eyes", _eye_constant)
    for hidden in (3, 5):                                         # 3 and 5 are the trace batch sizes
        assert compile_status(cls)[0]
        rnn = tr.nn.RNN(cls, 2, hidden, fused=True, dtype="float64")
        x = np.random.default_rng(1).standard_normal((3, 4, 2))
        compiled = run(rnn, x, [np.zeros((1, 4, hidden))], None, True)
        assert_close(compiled, run(rnn, x, [np.zeros((1, 4, hidden))], None, False), 1e-10)


@pytest.mark.slow
def test_training_mode_and_attributes_are_part_of_the_compiled_step():
    def zoneout_like(self, pre, h):
        new = pre.tanh()
        return new if self.training else h * self.p + new * (1 - self.p)
    cls = _elman_like("zoneish", zoneout_like, p=0.5)
    rnn = tr.nn.RNN(cls, 2, 3, dtype="float64")
    x = np.random.default_rng(2).standard_normal((4, 2, 2))
    outs = {}
    for mode in ("train", "eval"):
        getattr(rnn, mode)()
        for fused in (None, False):
            rnn.fused = fused
            outs[mode, fused] = rnn(x)[0].numpy()
    np.testing.assert_allclose(outs["train", None], outs["train", False], rtol=1e-12)
    np.testing.assert_allclose(outs["eval", None], outs["eval", False], rtol=1e-12)
    assert not np.allclose(outs["train", None], outs["eval", None])
    rnn.cells[0].p = 0.9                                          # changed after the first call: seen
    rnn.fused = None
    changed = rnn(x)[0].numpy()
    rnn.fused = False
    np.testing.assert_allclose(changed, rnn(x)[0].numpy(), rtol=1e-12)


def test_arrays_a_step_reads_from_its_cell_are_part_of_the_compiled_step():
    """A constant array or Tensor the step reads from its cell is captured by the trace:
    changed after the first call, in place or by assignment, the compiled layer must see
    the new values, as the step path does (it went on with the traced ones)."""
    def scaled(self, pre, h):
        return (pre * self.gain + self.shift).tanh()
    cls = _elman_like("arrayish", scaled, gain=np.linspace(0.5, 1.5, 3), shift=tr.Tensor(np.zeros(3)))
    rnn = tr.nn.RNN(cls, 2, 3, dtype="float64")
    x = np.random.default_rng(2).standard_normal((4, 2, 2))
    states = [np.zeros((1, 2, 3))]
    assert_close(run(rnn, x, states, None, None), run(rnn, x, states, None, False), 1e-10)
    cell = rnn.cells[0]
    for change in (lambda: cell.gain.__imul__(3.0), lambda: setattr(cell, "gain", -cell.gain),
                   lambda: setattr(cell, "shift", tr.Tensor(np.full(3, 0.7))),
                   lambda: cell.shift.numpy().__setitem__(slice(None), -0.4)):
        change()
        assert_close(run(rnn, x, states, None, None), run(rnn, x, states, None, False), 1e-10)


def test_fused_must_be_none_true_or_false():
    with pytest.raises(TypeError, match="fused"):
        tr.nn.RNN("gru", 2, 3, fused=0)


@pytest.mark.slow
def test_a_damaged_numba_cache_is_compiled_afresh(tmp_path):
    import subprocess
    import sys
    code = ("import numpy as np, tinygrad_rnn as tr; "
            "out, _ = tr.nn.RNN('rnn', 2, 3)(np.ones((2, 1, 2), np.float32)); out.sum().backward(); "
            "print(float(out.sum().item()))")
    env = dict(os.environ, TINYGRAD_RNN_CACHE_DIR=str(tmp_path))
    if "NUMBA_CACHE_DIR" in env:  # Numba's cache of the generated module lives there, not beside it
        env["NUMBA_CACHE_DIR"] = str(tmp_path / "numba")
    first = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    cached = [f for f in tmp_path.rglob("cell_*.nb*")]
    assert cached
    for f in cached:
        f.write_bytes(f.read_bytes()[:50])                        # truncated, as by a full disk
    again = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert again.stdout == first.stdout


@pytest.mark.slow
def test_an_unusable_cache_dir_warns_once_and_still_runs(tmp_path):
    import subprocess
    import sys
    blocker = tmp_path / "afile"
    blocker.write_text("not a folder")
    code = "import numpy as np, tinygrad_rnn as tr; print(tr.nn.RNN('gru', 2, 3)(np.ones((2, 1, 2), np.float32))[0].shape)"
    env = dict(os.environ, TINYGRAD_RNN_CACHE_DIR=str(blocker))
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "(2, 1, 3)" in result.stdout
    assert result.stderr.count("cannot use the kernel cache") == 1


class NoParam(tr.Cell):
    """No parameters, and an input that needs no gradient: nothing but the probe asks for one."""

    name = "noparam"

    def step(self, x, state):
        return ((state[0] + x.sum(axis=-1, keepdims=True)).tanh(),)


@pytest.mark.slow
def test_probe_measures_a_cell_without_parameters_on_both_paths():
    norms = []
    for fused in (True, False):
        rnn = tr.nn.RNN(NoParam, 2, 3, dtype="float64", fused=fused)
        out, _ = rnn(np.ones((4, 2, 2)), probe=True)
        (out * out).sum().backward()
        norms.append(rnn.step_grad_norms())
    assert norms[0].shape == (1, 4) and (norms[0] > 0).all()
    np.testing.assert_allclose(norms[0], norms[1], rtol=1e-12)


def test_a_failure_of_the_code_generator_falls_back_to_the_step_path(monkeypatch):
    """A generator bug is not the cell's doing: the layer still runs (fused=None), and
    fused=True names it as a CompileError, not a traceback from deep in the code generator."""
    import tinygrad_rnn.compiler as compiler

    def broken(*args):
        raise AssertionError("a whole-row use of r5 is left in")
    monkeypatch.setattr(compiler, "render", broken)
    x = np.random.default_rng(0).standard_normal((3, 2, 2))
    rnn = tr.nn.RNN("gru", 2, 3, dtype="float64")
    out, _ = rnn(x)
    rnn.fused = False
    np.testing.assert_array_equal(out.numpy(), rnn(x)[0].numpy())  # it ran the step path
    with pytest.raises(CompileError, match="code generator failed .*AssertionError.*please report"):
        tr.nn.RNN("gru", 2, 3, dtype="float64", fused=True)(x)


class ProductOfAProduct(tr.Cell):
    """Found by random cells: ``(s + p0) @ p1`` is the left operand of a second product
    (through a split ``cat([x, v1]) @ p2``), so stage 1 holds only a product. Its result
    was read from a residual that was never written (``NameError: name 'R8'``), the
    product itself was never run and its weight gradient read uninitialised memory."""

    name = "product_of_a_product"

    def __init__(self, input_size, hidden_size):
        super().__init__(input_size, hidden_size)
        self.p0 = self.param((hidden_size,), init="ones")
        self.p1 = self.param((hidden_size, hidden_size), init="xavier_uniform")
        self.p2 = self.param((input_size + hidden_size, hidden_size), init="xavier_uniform")
        self.p3 = self.param((input_size, 2 * hidden_size), init="xavier_uniform")

    def step(self, x, state):
        (s0,) = state
        v1 = (s0 + self.p0) @ self.p1
        v2 = tr.cat([x, v1], axis=-1) @ self.p2
        v3 = v1 + v2  # noqa: F841  (never used: pruned)
        v5 = (x @ self.p3).mean(axis=-1, keepdims=True)
        return ((v2 - v5).tanh(),)


class ChainOfProducts(tr.Cell):
    """A product read by a later stage and by a further product: stage 1 has no kernel
    of its own in the forward but owns the first product's gradient in the backward."""

    name = "chain_of_products"

    def __init__(self, input_size, hidden_size):
        super().__init__(input_size, hidden_size)
        self.w_ih = self.param((input_size, hidden_size), init="xavier_uniform")
        self.w1 = self.param((hidden_size, hidden_size), init="xavier_uniform")
        self.w2 = self.param((hidden_size, hidden_size), init="xavier_uniform")

    def step(self, x, state):
        (h,) = state
        a = h @ self.w1
        return ((x @ self.w_ih + a + a @ self.w2).tanh(),)


class OpenEndedClip(tr.Cell):
    """Found by random cells (seed 6): ``clip(0, None)`` has an infinite bound, which the
    generated module wrote as ``DT(inf)``, an undefined name."""

    name = "open_ended_clip"

    def __init__(self, input_size, hidden_size):
        super().__init__(input_size, hidden_size)
        self.p1 = self.param((hidden_size, hidden_size), init="xavier_uniform")
        self.p2 = self.param((input_size, hidden_size), init="xavier_uniform")

    def step(self, x, state):
        (s0,) = state
        return ((s0.clip(0, None) ** 3 - x @ self.p2 + (s0 @ self.p1).clip(None, 0.5)).sigmoid(),)


@pytest.mark.parametrize("cls", [ProductOfAProduct, ChainOfProducts, OpenEndedClip], ids=lambda c: c.name)
def test_a_product_of_a_product_compiles_exactly(cls):
    tr.manual_seed(3)
    rnn = tr.nn.RNN(cls, 3, 4, num_layers=2, dtype="float64")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 3, 3))
    states = [rng.standard_normal((2, 3, 4)) * 0.5]
    compiled = run(rnn, x, states, np.array([5, 2, 4]), fused=True)
    step = run(rnn, x, states, np.array([5, 2, 4]), fused=False)
    assert_close(compiled, step, 1e-10)


def test_a_numba_failure_on_generated_code_falls_back_with_one_warning(monkeypatch, capfd):
    """Numba failing to type or compile what the generator wrote is the compiler's bug:
    fused=None warns once, naming the cell, and runs the step path; fused=True raises a
    CompileError that carries Numba's message."""
    import tinygrad_rnn.compiler as compiler
    real = compiler.render

    def untypable(*args):
        return real(*args).replace("    for b in range(b0, b1):\n", "    B = not_defined_anywhere\n    for b in range(b0, b1):\n", 1)
    monkeypatch.setattr(compiler, "render", untypable)
    x = np.random.default_rng(0).standard_normal((3, 2, 2))
    rnn = tr.nn.RNN("rnn", 2, 3, dtype="float64", num_layers=2)
    out, _ = rnn(x)
    rnn(x)
    rnn.fused = False
    np.testing.assert_array_equal(out.numpy(), rnn(x)[0].numpy())  # it ran the step path
    warned = [line for line in capfd.readouterr().err.splitlines() if "warning" in line]
    assert len(warned) == 1 and "cell 'rnn'" in warned[0] and "not_defined_anywhere" in warned[0], warned
    with pytest.raises(CompileError, match="generated kernels failed to compile .*not_defined_anywhere"):
        tr.nn.RNN("rnn", 2, 3, dtype="float64", fused=True)(x)


def _wide_loop_bodies(source):
    """The statements of every loop over a row wider than one element."""
    bodies, lines = [], source.splitlines()
    for n, line in enumerate(lines):
        head = line.strip()
        if head.startswith("for j in range(") and head != "for j in range(1):":
            indent = len(line) - len(line.lstrip())
            for inner in lines[n + 1:]:
                if len(inner) - len(inner.lstrip()) <= indent:
                    break
                bodies.append(inner.strip())
    return bodies


def test_row_values_are_computed_once_per_row():
    """A (B, 1) value (a row mean, its square root, a power of it, the row's share of a
    mean's gradient) is computed once per row, not once per element of the row, forward
    and backward; the result still equals the step path."""
    import re
    compiled = compile_cell(UsersLayerNormLSTM(3, 4), np.float32)
    bodies = _wide_loop_bodies(compiled.source)
    assert bodies
    row_scalar = r"r\d+\[(?:b, )?0\]|d\d+\[0\]"
    for statement in bodies:
        assert "/ DT(" not in statement, statement
        assert not re.search(rf"math\.sqrt\(({row_scalar})\)|({row_scalar}) \*\* ", statement), statement
    assert re.search(r"^\s+r\d+_\d+ = .*(/ DT\(|\*\*|math\.sqrt)", compiled.source, re.M)  # computed before the loop
    tr.manual_seed(1)
    rnn = tr.nn.RNN(UsersLayerNormLSTM, 3, 4, dtype="float64")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 3))
    states = [rng.standard_normal((1, 3, 4)) * 0.5 for _ in range(2)]
    assert_close(run(rnn, x, states, np.array([4, 1, 3]), fused=True),
                 run(rnn, x, states, np.array([4, 1, 3]), fused=False), 1e-10)


def test_a_repeated_expression_is_one_value_unless_a_state_is_one_of_its_twins():
    """``v - mu`` written twice (a layer norm as users write it) is traced once; a state that
    step returns twinned with an expression used elsewhere keeps a value of its own, so its
    per-step gradient norm is that of the tensor returned (the fuzzer's seed 3)."""
    graph = compile_cell(UsersLayerNormLSTM(3, 4), np.float32).plan.graph
    assert [e.op for e in graph.eqns].count("neg") == 2  # one per norm, not one per mention

    class Twinned(tr.Cell):
        name = "twinned_state"
        num_states = 2

        def __init__(self, input_size, hidden_size):
            super().__init__(input_size, hidden_size)
            self.w = self.param((input_size + hidden_size, hidden_size), init="xavier_uniform")

        def step(self, x, state):
            h, c = state
            v = tr.cat([x, h], axis=-1) @ self.w
            return v.tanh(), c * v.sigmoid() + v.tanh()
    graph = compile_cell(Twinned(2, 3), np.float32).plan.graph
    assert [e.op for e in graph.eqns].count("tanh") == 2
    tr.manual_seed(0)
    rnn = tr.nn.RNN(Twinned, 2, 3, dtype="float64")
    x = np.random.default_rng(0).standard_normal((5, 2, 2))
    probes = []
    for fused in (True, False):
        rnn.fused = fused
        out, _ = rnn(tr.Tensor(x), probe=True)
        (out ** 2).sum().backward()
        probes.append(rnn.step_grad_norms(0))
    np.testing.assert_allclose(probes[0], probes[1], rtol=1e-10)


def test_a_step_that_turns_gradients_off_is_not_compiled():
    """``tr.no_grad()`` inside step: the compiled kernels would differentiate through it (a
    gradient off by 13% in float64), so the compiler refuses it, naming the line, and the
    default falls back to the step path; a softmax inside step (no_grad inside the op) compiles."""
    class Gated(tr.Cell):
        name = "no_grad_gate"

        def __init__(self, input_size, hidden_size, off=True):
            super().__init__(input_size, hidden_size)
            self.off = off
            self.w = self.param((input_size + hidden_size, hidden_size), init="xavier_uniform")

        def step(self, x, state):
            (h,) = state
            if self.off:
                with tr.no_grad():
                    gate = (h * 2).sigmoid()
            else:
                gate = (h * 2).softmax(-1)
            return ((tr.cat([x, h], axis=-1) @ self.w).tanh() * gate,)
    with pytest.raises(CompileError, match=r"no_grad.*test_compiler\.py:\d+"):
        compile_cell(Gated(2, 3), np.float32)
    compile_cell(Gated(2, 3, off=False), np.float32)
    tr.manual_seed(0)
    rnn = tr.nn.RNN(Gated, 2, 3, dtype="float64")
    rng = np.random.default_rng(0)
    x, states = rng.standard_normal((4, 2, 2)), [rng.standard_normal((1, 2, 3)) * 0.5]
    assert_close(run(rnn, x, states, fused=None), run(rnn, x, states, fused=False), 1e-12)


def test_printed_step_shows_constants_and_the_plan_counts_its_kernels():
    from tinygrad_rnn.compiler import inspect_cell
    cell = UsersLayerNormLSTM(3, 4)
    graph, summary, source, _ = inspect_cell(cell, "float32")
    step = source.split("per-step equations")[1].split('"""')[0]
    plan = compile_cell(cell, np.float32).plan
    scalars = {v.name for v in plan.graph.consts if v.value.ndim == 0}
    eqn_lines = [line for line in step.strip().splitlines()[1:] if " = " in line]
    operands = {w for line in eqn_lines for w in line.split(" = ")[1].split()[1:]}
    assert scalars and not scalars & operands  # a constant is never an undefined vNN: the input it is,
    inputs = {f"A{n}" for n, v in enumerate(plan.aux) if v.role == "const" and v.value.ndim == 0}
    assert inputs and inputs <= operands and f"inputs of forward and backward (their values: " in step
    assert " 1e-05" in graph  # and the printed graph (tinygrad-rnn compile) gives its value
    for cell in (UsersLayerNormLSTM(3, 4), tr.nn.RNN("mgu", 2, 3).cells[0], ProductOfAProduct(2, 3)):
        _, summary, source, _ = inspect_cell(cell, "float32")
        kernels = source.count("# _forward_stage")
        assert f"in {kernels} stage(s)" in summary, (summary, kernels)
        assert source.count("# _backward_stage") == kernels


@pytest.mark.parametrize("cell", ["lstm", "mgu", "ln_lstm"])
def test_row_blocks_on_threads_equal_one_block(cell, monkeypatch):
    """The jitted loop runs the batch as blocks of rows on threads, each block through all
    steps; what every row adds to (a gain's gradient, the per-step norms) is kept per block
    and summed, so the blocks agree with one block and with the step path."""
    tr.manual_seed(2)
    rnn = tr.nn.RNN(cell, 3, 4, dtype="float64", num_layers=2)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 5, 3))
    states = [rng.standard_normal((2, 5, 4)) * 0.5 for _ in range(rnn.num_states)]
    lengths = np.array([4, 1, 3, 4, 2])
    monkeypatch.setattr(threads, "MIN_BLOCK_ROWS", 1)
    monkeypatch.setattr(threads, "SPLIT_STEP_FLOPS", 0)  # blocks however small the products
    monkeypatch.setattr(threads, "THREADS", 3)  # whatever the machine has: three blocks of 1-2 rows
    assert threads.row_blocks(5) == [(0, 1), (1, 3), (3, 5)]
    monkeypatch.setattr(threads, "SPLIT_STEP_FLOPS", 1 << 16)
    assert threads.row_blocks(5, 5 * 4 * 16) == [(0, 5)]  # a step's products too small to share
    monkeypatch.setattr(threads, "SPLIT_STEP_FLOPS", 0)
    blocks = run(rnn, x, states, lengths, fused=True)
    monkeypatch.setattr(threads, "MIN_BLOCK_ROWS", 100)
    one = run(rnn, x, states, lengths, fused=True)
    assert_close(blocks, one, 1e-12)
    assert_close(blocks, run(rnn, x, states, lengths, fused=False), 1e-10)


@pytest.mark.parametrize("value", ["abc", "-3", ""])
def test_a_bad_tuning_variable_is_a_warning_naming_it_not_a_traceback(value):
    import subprocess
    import sys
    env = dict(os.environ, TINYGRAD_RNN_MIN_BLOCK_ROWS=value)
    r = subprocess.run([sys.executable, "-c", "import tinygrad_rnn.backend.threads as r; print(r.MIN_BLOCK_ROWS)"],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "8", r.stderr
    assert "Traceback" not in r.stderr and "TINYGRAD_RNN_MIN_BLOCK_ROWS" in r.stderr


def _blas_threads():
    from threadpoolctl import threadpool_info
    return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]


def _needs_threaded_blas():
    if threads.THREADS < 2 or not any(n > 1 for n in _blas_threads()):
        pytest.skip("BLAS or Numba runs on one thread here: there is nothing to hold or restore")


def test_blas_gets_its_threads_back_after_a_step_and_after_an_error_inside_a_layer(monkeypatch):
    """The user's own matmuls after a training step keep BLAS's threads, also when the
    layer stopped with an exception (a shape error, a KeyboardInterrupt)."""
    _needs_threaded_blas()
    before = _blas_threads()
    rnn = tr.nn.RNN("gru", 3, 4)
    x = tr.Tensor(np.ones((5, 2, 3), np.float32), requires_grad=True)
    out, _ = rnn(x)
    out.sum().backward()
    assert _blas_threads() == before

    def interrupted(*args, **kwargs):
        assert _blas_threads() == [1] * len(before)  # held while the layer runs
        raise KeyboardInterrupt
    monkeypatch.setattr(runtime, "guarded", interrupted)
    with pytest.raises(KeyboardInterrupt):
        rnn(x)
    assert _blas_threads() == before


def test_a_weight_gradient_over_few_steps_is_split_by_its_rows(monkeypatch):
    """matmul_tn on (T, B, K) cuts along T, but counts rows: 4 steps of 16 rows are two blocks
    (counting steps, 4 < MIN_BLOCK_ROWS, made one block of 64 rows, on one core, for any T < 16),
    and 2 steps of 3 rows stay one; the sum equals one flat product."""
    monkeypatch.setattr(threads, "THREADS", 2)
    monkeypatch.setattr(threads, "MIN_BLOCK_ROWS", 8)
    monkeypatch.setattr(threads, "SPLIT_FLOPS", 0)
    seen, run_blocks = [], threads.in_blocks
    monkeypatch.setattr(threads, "in_blocks", lambda blocks, run: (seen.append(blocks), run_blocks(blocks, run))[1])
    rng = np.random.default_rng(0)
    for (T, B), blocks in [((4, 16), [(0, 2), (2, 4)]), ((2, 3), [(0, 2)]), ((1, 64), [(0, 1)])]:
        a, g = rng.standard_normal((T, B, 3)), rng.standard_normal((T, B, 5))
        seen.clear()
        np.testing.assert_allclose(threads.matmul_tn(a, g), a.reshape(-1, 3).T @ g.reshape(-1, 5), rtol=1e-12)
        assert seen == [blocks]


def test_a_large_tape_matmul_runs_with_blas_held_and_gives_its_threads_back(monkeypatch):
    """A 2-D product large enough to wake BLAS's busy-waiting workers runs with BLAS at one
    thread (a Linear head's left them spinning into the next layer's block threads); a small
    one, which BLAS runs on one thread anyway, pays no hold; both equal NumPy's."""
    from tinygrad_rnn.backend import cpu
    _needs_threaded_blas()
    before, seen = _blas_threads(), []
    split = threads.matmul

    def watched(a, b):
        seen.append(_blas_threads())
        return split(a, b)
    monkeypatch.setattr(threads, "matmul", watched)
    rng = np.random.default_rng(0)
    big, w = rng.standard_normal((256, 64)), rng.standard_normal((64, 64))  # 2^20 multiply-adds
    small = rng.standard_normal((8, 64))
    x = tr.Tensor(big, requires_grad=True)
    (x @ tr.Tensor(w)).sum().backward()
    assert seen and all(n == [1] * len(before) for n in seen)
    np.testing.assert_allclose(cpu.matmul(big, w), big @ w, rtol=1e-12)
    steps = big.reshape(64, 4, 64).transpose(1, 0, 2)  # a (T, B, H) view: its rows flattened into one product
    np.testing.assert_allclose(cpu.matmul(steps, w), steps @ w, rtol=1e-12)
    seen.clear()
    np.testing.assert_allclose(cpu.matmul(small, w), small @ w, rtol=1e-12)
    assert not seen and _blas_threads() == before


def test_overlapping_layers_on_two_threads_give_blas_its_threads_back():
    """Two threads inside compiled layers at once: BLAS stays at one thread until the last
    one leaves, then gets what it had (restoring at the first exit gave it back too early,
    and the second exit left it at one thread for the rest of the process)."""
    import threading
    _needs_threaded_blas()
    before = _blas_threads()
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def first():
        with threads.one_blas_thread():
            first_in.set()
            second_in.wait(10)
        first_out.set()

    def second():
        first_in.wait(10)
        with threads.one_blas_thread():
            second_in.set()
            first_out.wait(10)
            seen["after the first left"] = _blas_threads()
    workers = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(20)
    assert seen["after the first left"] == [1] * len(before)
    assert _blas_threads() == before

    def users_own_limit():  # the hold keeps no claim on BLAS that would ignore the user's limits
        from threadpoolctl import threadpool_limits
        with threadpool_limits(limits=1, user_api="blas"):
            seen["user's limit"] = _blas_threads()
    t = threading.Thread(target=users_own_limit)
    t.start()
    t.join(20)
    assert seen["user's limit"] == [1] * len(before)
    assert _blas_threads() == before


def test_running_out_of_memory_in_a_layer_keeps_its_kernel_cache(tmp_path):
    """A MemoryError from a generated driver (a long sequence) is not a damaged cache: the
    cached kernels stay, and the next process does not compile them again."""
    folder = tmp_path / "__pycache__"
    folder.mkdir()
    entry = folder / "cell_x._forward_loop-1.py311.1.nbc"
    entry.write_bytes(b"kernel")
    calls = []

    class Module:
        __file__ = str(tmp_path / "cell_x.py")

        @staticmethod
        def forward(*args):
            calls.append(args)
            raise MemoryError("Unable to allocate 375. MiB")
    with pytest.raises(MemoryError):
        runtime.guarded(Module, "forward", 1)
    assert entry.exists() and len(calls) == 1


def test_compile_help_names_everything_it_prints():
    from click.testing import CliRunner
    from cli import main
    result = CliRunner().invoke(main, ["compile", "--help"])
    assert result.exit_code == 0 and "kernel IR" in " ".join(result.output.split()), result.output


def test_a_scalar_attribute_changed_between_calls_reuses_the_kernels():
    """A cell's float attribute (a leak rate, a temperature annealed every call) is an input
    of the generated kernels, not a literal in them: a new value gives the step path's
    result without a new module (each new value compiled one, about 1 s, before)."""
    class Leaky(tr.Cell):
        name = "leaky_rate"

        def __init__(self, input_size, hidden_size):
            super().__init__(input_size, hidden_size)
            self.w = self.param((input_size, hidden_size))
            self.u = self.param((hidden_size, hidden_size))
            self.rate = 0.5

        def step(self, x, state):
            (h,) = state
            return ((1 - self.rate) * h + self.rate * (x @ self.w + h @ self.u).tanh(),)
    tr.manual_seed(0)
    rnn = tr.nn.RNN(Leaky, 3, 4, dtype="float64")
    x = np.random.default_rng(0).standard_normal((5, 2, 3))
    for rate in (0.5, 0.3, 0.1):
        rnn.cells[0].rate = rate
        assert_close(run(rnn, x, [np.zeros((1, 2, 4))], None, fused=True),
                     run(rnn, x, [np.zeros((1, 2, 4))], None, fused=False), 1e-10)
    assert len({c.source for c in compiled_versions(rnn.cells[0])}) == 1


def test_an_empty_slice_is_named_as_one():
    """At hidden 1, ``a[:, :H // 2]`` selects nothing: the refusal says so, not that only
    slices of the last axis are supported (which it is)."""
    class Halves(tr.Cell):
        name = "halves"

        def __init__(self, input_size, hidden_size):
            super().__init__(input_size, hidden_size)
            self.w = self.param((input_size, 2 * hidden_size))
            self.u = self.param((hidden_size, 2 * hidden_size))

        def step(self, x, state):
            (h,) = state
            a = x @ self.w + h @ self.u
            H = self.hidden_size
            return ((a[:, :H // 2].sum(axis=-1, keepdims=True) + a[:, H:]).tanh(),)
    assert compile_status(Halves)[0]
    with pytest.raises(CompileError, match=r"the slice \[:, :0\] of a value 2 wide selects nothing"):
        compile_cell(tr.nn.RNN(Halves, 2, 1).cells[0])


class _RowMaxOfState(tr.Cell):
    """h' = tanh(x W + h / 2 + max(h) / 10): the row max reads the state element by element,
    so a NaN in one element of h reaches the max without a product spreading it first."""
    name = "row_max_of_state"

    def __init__(self, input_size, hidden_size):
        super().__init__(input_size, hidden_size)
        self.w = self.param((input_size, hidden_size), init="xavier_uniform")

    def step(self, x, state):
        (h,) = state
        return ((x @ self.w + h * 0.5 + h.max(axis=-1, keepdims=True) * 0.1).tanh(),)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("where", [0, 1, 2])
def test_a_nan_anywhere_in_a_row_makes_its_compiled_max_nan_as_on_the_step_path(dtype, where):
    """np.max is NaN when any element is; the kernels' running max was Python's
    (``u if u > acc else acc``), which drops a NaN after the row's first element, so the
    compiled layer gave finite outputs where the step path gave NaN."""
    tr.manual_seed(0)
    rnn = tr.nn.RNN(_RowMaxOfState, 2, 3, dtype=dtype)
    x = np.random.default_rng(1).standard_normal((3, 2, 2)).astype(dtype)
    s0 = np.full((1, 2, 3), 0.2, dtype)
    s0[0, 0, where] = np.nan
    with np.errstate(invalid="ignore"):
        compiled = run(rnn, x, [s0], np.array([3, 2]), fused=True)
        step = run(rnn, x, [s0], np.array([3, 2]), fused=False)
    assert np.isnan(step[0][:, 0]).all()  # row 0 is NaN from its first step on
    for got, want in zip(compiled, step):
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
