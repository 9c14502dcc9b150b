"""The CUDA backend against the CPU backend: every op, its gradient, the fused cells.

CI runs these in Numba's simulator (NUMBA_ENABLE_CUDASIM=1), which is slow, so sizes are
tiny; on a machine with a GPU they run for real. The simulator accepts code a GPU would
reject, so a separate test compiles every kernel to PTX for compute capability 9.0.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

import tinygrad_rnn as tr
from tinygrad_rnn.backend import cuda_available

pytestmark = [pytest.mark.skipif(not cuda_available()[0], reason=f"no CUDA device or simulator: {cuda_available()[1]}"),
              pytest.mark.cuda, pytest.mark.slow]  # the simulator runs every thread in Python

R = np.random.default_rng(0)
A, B3, V = R.standard_normal((2, 3)), R.standard_normal((3,)), R.standard_normal((2, 3, 2))
POS = np.abs(A) + 0.5
IDX = np.array([1, 0, 1])
# name, function of tensors, inputs
CASES = [
    ("add_broadcast", lambda a, b: a + b, [A, B3]),
    ("sub_scalar", lambda a: 1 - a * 2, [A]),
    ("mul_div", lambda a, b: a * b / (b * b + 1), [A, B3]),
    ("pow_neg", lambda a: -(a ** 3), [A]),
    ("matmul_2d", lambda a, b: a @ b, [A, R.standard_normal((3, 4))]),
    ("matmul_batched", lambda a, b: a @ b, [V, R.standard_normal((2, 5))]),
    ("matmul_vector", lambda a, b: a @ b, [A, B3]),
    ("exp_log", lambda a: (a.exp() + 1).log(), [A]),
    ("tanh_sigmoid", lambda a: a.tanh() * a.sigmoid(), [A]),
    ("relu_leaky", lambda a: a.relu() + a.leaky_relu(0.2), [A]),
    ("sum_axes", lambda a: a.sum(axis=(0, 2)) + a.sum(axis=1, keepdims=True).sum(), [V]),
    ("mean_max", lambda a: a.mean(axis=0).sum() * a.max(axis=1), [A + np.arange(6).reshape(2, 3)]),
    ("reshape_transpose", lambda a: a.reshape(3, 2).T.transpose(1, 0) * 2, [A]),
    ("getitem_basic", lambda a: a[1, ::-2] * a[:, None, 0].sum(), [V]),
    ("getitem_rows", lambda a: a[IDX] * 3, [A]),
    ("getitem_mask", lambda a: a[np.array([True, False])] * 3, [A]),  # its VJP read the mask as rows 1 and 0
    ("cat_stack_split", lambda a, b: tr.cat([a, b], 1) * tr.stack([a, b], 0).sum(0).sum() + tr.split(a, [1, 2], 1)[1].sum(),
     [A, R.standard_normal((2, 3))]),
    ("where_clip", lambda a, b: tr.where(A > 0, a, b).clip(-0.5, 0.5), [A, B3]),
    ("embedding", lambda w: tr.embedding(w, np.array([[0, 2], [2, 2]])), [R.standard_normal((3, 4))]),
    ("softmax", lambda a: a.softmax(-1) * a.log_softmax(0), [A]),
    ("cross_entropy", lambda a: tr.cross_entropy(a, np.array([2, 0])), [A]),
    ("mse", lambda a, b: tr.mse(a, b), [A, POS]),
]


def _run(fn, inputs, device):
    ts = [tr.Tensor(x, device=device, requires_grad=True) for x in inputs]
    out = fn(*ts)
    w = np.linspace(-1, 1, out.size).reshape(out.shape)
    (out * tr.Tensor(w, device=device)).sum().backward()
    return [out.numpy()] + [t.grad.numpy() for t in ts]


@pytest.mark.parametrize("name,fn,inputs", CASES, ids=[c[0] for c in CASES])
def test_op_and_gradient_match_cpu(name, fn, inputs):
    for got, want in zip(_run(fn, inputs, "cuda"), _run(fn, inputs, "cpu")):
        assert got.shape == want.shape  # assert_allclose lets () pass for (1,)
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_max_is_nan_when_any_element_is_as_on_the_cpu():
    """The row max kernel kept Python's ``v if v > acc else acc``, which drops a NaN after
    a row's first element: CUDA gave 2.0 where NumPy (the CPU) gives NaN."""
    a = np.array([[1.0, np.nan, 2.0], [np.nan, 1.0, 3.0], [1.0, 2.0, 3.0]])
    for axis in (None, 1, 0):
        got = tr.Tensor(a, device="cuda").max(axis=axis).numpy()
        np.testing.assert_array_equal(got, tr.Tensor(a).max(axis=axis).numpy())


COMPILED_CELLS = [("rnn", {}, 1), ("rnn", {"nonlinearity": "relu"}, 2), ("lstm", {}, 2), ("gru", {}, 1),
                  ("mgu", {}, 2), ("peephole_lstm", {}, 1), ("indrnn", {}, 1), ("ln_lstm", {}, 1),
                  ("kitchen_sink", {}, 2)]


def test_cells_written_to_break_the_compiler_match_cpu_on_cuda():
    from example_cells import ADVERSARIAL
    for cls in ADVERSARIAL:
        results = []
        for device in ("cpu", "cuda"):
            tr.manual_seed(0)
            rnn = tr.nn.RNN(cls, 2, 5, dtype="float64", fused=True).to(device)
            x = tr.Tensor(np.random.default_rng(1).standard_normal((2, 2, 2)), device=device, requires_grad=True)
            out, state = rnn(x, lengths=[2, 1], probe=True)
            ((out * out).sum() + sum((s * s).sum() for s in state)).backward()
            results.append([out.numpy(), x.grad.numpy(), rnn.step_grad_norms()] + [p.grad.numpy() for p in rnn.parameters()])
        for got, want in zip(*results):
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12, err_msg=cls.name)


@pytest.mark.parametrize("cell,options,layers", COMPILED_CELLS,
                         ids=[c + "".join(o.values()) for c, o, _ in COMPILED_CELLS])
def test_compiled_cells_on_cuda_match_cpu(cell, options, layers):
    """Every cell's CUDA kernels (generated from step, like the CPU's) against the CPU:
    outputs, final states, every gradient and the per-step norms of every state."""
    from example_cells import KitchenSink, load_example_plugins
    from tinygrad_rnn.compiler import compiled_versions
    load_example_plugins()
    cls = KitchenSink if cell == "kitchen_sink" else cell
    results = []
    for device in ("cpu", "cuda"):
        tr.manual_seed(0)
        rnn = tr.nn.RNN(cls, 2, 3, num_layers=layers, dtype="float64", fused=True, **options).to(device)
        x = tr.Tensor(np.random.default_rng(1).standard_normal((3, 2, 2)), device=device, requires_grad=True)
        out, state = rnn(x, lengths=[3, 2], probe=True)
        ((out * out).sum() + sum((s * s).sum() for s in state)).backward()
        results.append([out.numpy(), *[s.numpy() for s in state], x.grad.numpy()]
                       + [rnn.step_grad_norms(i) for i in range(rnn.num_states)]
                       + [p.grad.numpy() for p in rnn.parameters()])
    compiled = compiled_versions(rnn.cells[0])
    assert compiled and all(c._cuda is not None for c in compiled)  # the CUDA kernels ran
    for got, want in zip(*results):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_bidirectional_with_lengths_and_dropout_matches_cpu():
    results = []
    for device in ("cpu", "cuda"):
        tr.manual_seed(0)
        rnn = tr.nn.RNN("gru", 2, 3, num_layers=2, bidirectional=True, dropout=0.5, dtype="float64").to(device)
        x = tr.Tensor(np.random.default_rng(1).standard_normal((3, 2, 2)), device=device, requires_grad=True)
        out, state = rnn(x, lengths=[3, 2])
        ((out * out).sum() + state[-1].sum()).backward()
        results.append([out.numpy(), state[0].numpy(), x.grad.numpy()] + [p.grad.numpy() for p in rnn.parameters()])
    for got, want in zip(*results):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_float32_training_step_matches_cpu():
    params = {}
    for device in ("cpu", "cuda"):
        tr.manual_seed(0)
        model = tr.model.SequenceModel("gru", 2, 1, hidden_size=3, last_step_only=True).to(device)
        opt = tr.optim.Adam(model.parameters(), lr=0.1)
        x = np.random.default_rng(0).standard_normal((3, 2, 2)).astype(np.float32)
        pred, _ = model(tr.Tensor(x, device=device))
        tr.mse(pred, np.ones((2, 1), np.float32)).backward()
        tr.optim.clip_grad_norm(model.parameters(), 0.5)
        opt.step()
        params[device] = model.state_dict()
    for k, v in params["cpu"].items():
        np.testing.assert_allclose(params["cuda"][k], v, rtol=1e-5, atol=1e-6)


def test_devices_do_not_mix_silently():
    a = tr.Tensor(np.ones(3), device="cuda")
    with pytest.raises(ValueError, match=r"different devices: \['cuda', 'cpu'\]"):
        a + tr.Tensor(np.ones(3))
    assert a.device == "cuda" and a.to("cpu").device == "cpu"
    np.testing.assert_array_equal(a.to("cpu").numpy(), np.ones(3))


def test_cli_trains_on_cuda(monkeypatch):
    from click.testing import CliRunner
    import cli
    # The final evaluation's 256 sequences took 43 of the test's 60 s in the simulator: 8 do.
    monkeypatch.setattr("tinygrad_rnn.tasks.EVAL_ROWS", 8)
    result = CliRunner().invoke(cli.main, ["train", "--device", "cuda", "--cell", "rnn", "--steps", "2",
                                           "--seq-len", "3", "--hidden", "3", "--batch", "2", "--json"])
    assert result.exit_code == 0, result.output
    assert '"steps": 2' in result.stdout


PTX_SCRIPT = """
import os, sys
from numba import cuda
from numba.cuda.cudadrv import nvvm
if not nvvm.is_available():
    print("SKIP no libNVVM"); sys.exit(0)
sys.path.insert(0, os.path.join(os.getcwd(), "tests"))
import tinygrad_rnn as tr
from tinygrad_rnn.backend import cuda as backend
from tinygrad_rnn.compiler import cuda_kernel_signatures, cuda_runtime
from example_cells import KitchenSink, load_example_plugins
load_example_plugins()
kernels = {}
for name, (fn, sig) in backend.KERNELS.items():
    kernels[name] = (fn, sig)
    if "float32" in sig:  # diagnostics run in float64
        kernels[name + ".float64"] = (fn, sig.replace("float32", "float64"))
a2, a3, a4 = ("float32[:, :]", "float32[:, :, :]", "float32[:, :, :, :]")
kernels["_gemm_kernel"] = (cuda_runtime._gemm_kernel.py_func, f"void({a2}, {a2}, {a2}, boolean, boolean, boolean)")
kernels["_stack_prev_kernel"] = (cuda_runtime._stack_prev_kernel.py_func, f"void({a2}, {a4}, int64, int64, {a3})")
kernels["_copy3_kernel"] = (cuda_runtime._copy3_kernel.py_func, f"void({a3}, {a3})")
for cell, options in (("rnn", {}), ("rnn", {"nonlinearity": "relu"}), ("lstm", {}), ("gru", {}), ("mgu", {}),
                      ("peephole_lstm", {}), ("indrnn", {}), ("ln_lstm", {}), (KitchenSink, {})):
    for dtype in ("float32", "float64"):  # float64: what diagnostics run in
        c = tr.nn.RNN(cell, 3, 5, dtype=dtype, **options).cells[0]
        for name, entry in cuda_kernel_signatures(c, dtype).items():
            kernels[f"{c.name}{''.join(options.values())}.{dtype}.{name}"] = entry
failed = []
for name, (fn, sig) in sorted(kernels.items()):
    try:
        ptx, _ = cuda.compile_ptx(fn, sig, cc=(9, 0))
        assert ".target sm_90" in ptx
    except Exception as e:
        why = f"{type(e).__name__} {e}".lower()
        if "nvrtc" in why and ("support" in why or "failure finding" in why):  # no NVRTC, or too old a one
            print("SKIP no NVRTC:", str(e).splitlines()[0]); sys.exit(0)
        failed.append(f"{name}: {type(e).__name__}: {str(e).splitlines()[0]}")
print("COMPILED", len(kernels) - len(failed), "FAILED", failed)
sys.exit(1 if failed else 0)
"""


def test_every_kernel_compiles_to_ptx_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    out = subprocess.run([sys.executable, "-c", PTX_SCRIPT], capture_output=True, text=True, env=env, timeout=600,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if "SKIP" in out.stdout:
        pytest.skip(f"the CUDA toolkit cannot compile here ({out.stdout.strip()})")
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    assert "COMPILED" in out.stdout


def test_cli_diagnoses_on_cuda():
    from click.testing import CliRunner
    import json
    import cli
    args = ["diagnose", "--cell", "gru", "--seq-len", "4", "--hidden", "3", "--batch", "2", "--json"]
    result = CliRunner().invoke(cli.main, args + ["--device", "cuda"])
    assert result.exit_code == 0, result.output
    entry = json.loads(result.stdout)["cells"][0]
    on_cpu = json.loads(CliRunner().invoke(cli.main, args).stdout)["cells"][0]  # the same measures, on the CPU
    assert len(entry["grad_norm_per_step"][0]) == 4 and entry["verdict"] == on_cpu["verdict"]
    np.testing.assert_allclose(entry["grad_norm_per_step"], on_cpu["grad_norm_per_step"], rtol=1e-9)
