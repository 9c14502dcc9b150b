"""The backend contract (backend/api.py): every backend provides it, the engine uses nothing else,
fused VJPs agree with the op table, and the CUDA backend's hidden host round trips are counted.

The CUDA tests run in Numba's simulator in CI (NUMBA_ENABLE_CUDASIM=1); sizes are tiny.
"""
import ast
import inspect

import numpy as np
import pytest

import tinygrad_rnn as tr
from tinygrad_rnn import backend, ops, tape, tensor
from tinygrad_rnn.backend import api, cpu, cuda_available

_skip_without_cuda = pytest.mark.skipif(not cuda_available()[0],
                                       reason=f"no CUDA device or simulator: {cuda_available()[1]}")


CUDA_MARKS = [_skip_without_cuda, pytest.mark.cuda, pytest.mark.slow]  # the simulator is slow


def needs_cuda(test):
    """A CUDA test: skipped without a GPU or the simulator, marked ``cuda`` and ``slow``."""
    for mark in CUDA_MARKS:
        test = mark(test)
    return test


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA_MARKS)])
def test_each_backend_provides_the_whole_contract(device):
    k = backend.get(device)
    example = k.asarray(np.ones((2, 3), np.float32))
    assert api.missing(k, example) == []
    assert backend.of(example) is k and k.name == device
    assert all(callable(getattr(k, n)) for n in (*api.FUNCTIONS, *api.ENGINE_FUNCTIONS))
    assert all(callable(getattr(example, n)) for n in api.ARRAY if n.startswith("__") or n in
               ("reshape", "transpose", "astype", "sum", "mean", "max"))


def test_missing_names_what_a_backend_lacks():
    class Partial:
        name = "partial"
        FUSED_VJPS = {}
        asarray = staticmethod(np.asarray)
    lacking = api.missing(Partial, object())
    assert "matmul" in lacking and "asarray" not in lacking and "array.reshape" in lacking


# ---- the engine uses nothing else ----------------------------------------------------------
_OPERATORS = {ast.Add: "__add__", ast.Sub: "__sub__", ast.Mult: "__mul__", ast.Div: "__truediv__",
              ast.Pow: "__pow__", ast.BitAnd: "__and__", ast.USub: "__neg__", ast.Eq: "__eq__",
              ast.Lt: "__lt__", ast.LtE: "__le__", ast.Gt: "__gt__", ast.GtE: "__ge__"}


def _is_backend_expr(node):
    """``k``, ``be``, ``node.k``, ``backend.of(x)``, ``_backend_of(x)``, ``backend.get(d)``."""
    if isinstance(node, ast.Name):
        return node.id in ("k", "be")
    if isinstance(node, ast.Attribute):
        return node.attr == "k"
    if isinstance(node, ast.Call):
        f = node.func
        return (isinstance(f, ast.Name) and f.id == "_backend_of") or (
            isinstance(f, ast.Attribute) and f.attr in ("of", "get") and
            isinstance(f.value, ast.Name) and f.value.id == "backend")
    return False


def _backend_uses(module):
    tree = ast.parse(inspect.getsource(module))
    return {(n.attr, n.lineno) for n in ast.walk(tree)
            if isinstance(n, ast.Attribute) and _is_backend_expr(n.value)}


def _table_functions(tree):
    """The functions of the op table: each takes the backend ``k`` first."""
    for n in ast.walk(tree):
        if isinstance(n, (ast.FunctionDef, ast.Lambda)) and n.args.args and n.args.args[0].arg == "k":
            yield n


@pytest.mark.parametrize("module,allowed", [
    (ops, api.FUNCTIONS),
    (tensor, {**api.FUNCTIONS, **api.ENGINE_FUNCTIONS, **api.ATTRIBUTES}),
    (tape, {**api.FUNCTIONS, **api.ENGINE_FUNCTIONS, **api.ATTRIBUTES}),
])
def test_engine_calls_only_contract_functions(module, allowed):
    used = _backend_uses(module)
    assert used, "the scan found no backend call at all: the test no longer sees the code"
    stray = sorted((name, line) for name, line in used if name not in allowed)
    assert not stray, f"{module.__name__} uses backend names outside backend/api.py: {stray}"


def test_ops_reaches_the_backend_package_only_through_of_and_cpu():
    tree = ast.parse(inspect.getsource(ops))
    used = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)
            and isinstance(n.value, ast.Name) and n.value.id == "backend"}
    assert used <= {"of", "cpu"}, used


def test_op_table_uses_only_contract_array_methods_and_operators():
    tree = ast.parse(inspect.getsource(ops))
    seen, stray = set(), []
    for fn in _table_functions(tree):
        for n in ast.walk(fn):
            if isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Load) and not _is_backend_expr(n.value) \
                    and not (isinstance(n.value, ast.Name) and n.value.id in ("np", "builtins")):
                seen.add(n.attr)
                if n.attr not in api.ARRAY:
                    stray.append((n.attr, n.lineno))
            ops_here = ([n.op] if isinstance(n, (ast.BinOp, ast.UnaryOp)) else
                        n.ops if isinstance(n, ast.Compare) else [])
            for o in ops_here:
                if type(o) not in _OPERATORS:  # is, not, % ...: on Python values, never on arrays here
                    continue
                name = _OPERATORS[type(o)]
                seen.add(name)
                if name not in api.ARRAY:
                    stray.append((name, n.lineno))
    assert {"reshape", "sum", "__mul__", "__eq__"} <= seen, "the scan no longer sees the table"
    assert not stray, f"ops.py's table uses array methods outside backend/api.py: {stray}"


def test_table_vjps_call_no_backward_kernels():
    # The derivatives live in the table: tanh_bwd and friends are fused fast paths, not contract.
    assert not {"tanh_bwd", "sigmoid_bwd", "leaky_relu_bwd"} & set(api.FUNCTIONS)
    assert not {n for n, _ in _backend_uses(ops)} & {"tanh_bwd", "sigmoid_bwd", "leaky_relu_bwd"}


# ---- fused VJPs agree with the table -----------------------------------------------------------
_FUSED_CASES = [("tanh", {}), ("sigmoid", {}), ("leaky_relu", {"slope": 0.0}), ("leaky_relu", {"slope": 0.1})]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA_MARKS)])
def test_fused_vjps_match_the_table(device, dtype):
    k = backend.get(device)
    rng = np.random.default_rng(0)
    shape = (3, 5) if device == "cuda" else (64, 33)
    assert set(k.FUSED_VJPS) <= set(ops.OPS)
    checked = 0
    for name, attrs in _FUSED_CASES:
        if name not in k.FUSED_VJPS:
            continue
        op = ops.OPS[name]
        a = k.asarray((rng.standard_normal(shape) * 3).astype(dtype))
        g = k.asarray(rng.standard_normal(shape).astype(dtype))
        y = op.fwd(k, a, **attrs)
        fused = k.FUSED_VJPS[name](k, g, y, a, **attrs)
        table = op.vjp(k, g, y, a, **attrs)
        assert len(fused) == len(table) == 1
        np.testing.assert_allclose(k.to_numpy(fused[0]), k.to_numpy(table[0]),
                                   rtol=1e-6 if dtype == np.float32 else 1e-14, atol=1e-7)
        assert fused[0].dtype == dtype
        checked += 1
    assert device != "cpu" or checked == len(_FUSED_CASES)


def test_tape_uses_the_fused_vjp_when_the_backend_has_one(monkeypatch):
    calls = []
    table_vjp = ops.OPS["tanh"].vjp
    monkeypatch.setitem(cpu.FUSED_VJPS, "tanh", lambda k, g, y, a: calls.append(1) or table_vjp(k, g, y, a))
    x = tr.Tensor(np.ones(3), requires_grad=True)
    x.tanh().sum().backward()
    assert calls == [1]
    np.testing.assert_allclose(x.grad.numpy(), 1 - np.tanh(1.0) ** 2)


def test_table_alone_gives_the_same_gradients(monkeypatch):
    rng = np.random.default_rng(1)
    x0 = rng.standard_normal((4, 6))
    grads = []
    for fused in (dict(cpu.FUSED_VJPS), {}):
        monkeypatch.setattr(cpu, "FUSED_VJPS", fused)
        x = tr.Tensor(x0, requires_grad=True)
        (x.tanh() * x.sigmoid() + x.leaky_relu(0.2) + x.relu()).sum().backward()
        grads.append(x.grad.numpy())
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-14)


# ---- CUDA: comparisons, host round trips ---------------------------------------------------------
@needs_cuda
def test_tensor_comparisons_on_cuda():
    a, b = np.array([[1.0, -2.0, 3.0]]), np.array([[0.5], [3.0]])
    ta, tb = tr.Tensor(a, device="cuda"), tr.Tensor(b, device="cuda")
    for got, want in [(ta < tb, a < b), (ta <= tb, a <= b), (ta > tb, a > b), (ta >= tb, a >= b),
                      (ta < 1.0, a < 1.0), (2.0 > ta, 2.0 > a)]:
        assert got.device == "cuda"
        np.testing.assert_array_equal(got.numpy(), want)


@needs_cuda
def test_training_a_small_model_on_cuda_makes_no_host_round_trip(monkeypatch):
    """A whole training step (forward, backward, the gradient norm, clipping, an Adam step)
    copies nothing to the host but scalars (the norm), once the cell is compiled (tracing
    reads the parameters once)."""
    from tinygrad_rnn.backend import cuda
    downloads = []
    to_numpy = cuda.to_numpy
    monkeypatch.setattr(cuda, "to_numpy", lambda x: downloads.append(getattr(x, "size", 1)) or to_numpy(x))
    cuda.HOST_ROUND_TRIPS.clear()
    tr.manual_seed(0)
    rng = np.random.default_rng(0)
    rnn = tr.nn.RNN("gru", 2, 3, dtype="float64").to("cuda")
    head = tr.nn.Linear(3, 4, dtype="float64").to("cuda")
    params = rnn.parameters() + head.parameters()
    opt = tr.optim.Adam(params, lr=0.1)
    x = tr.Tensor(rng.standard_normal((3, 2, 2)), device="cuda")

    def step():
        opt.zero_grad()
        out, _ = rnn(x)
        logits = head(out)
        loss = tr.cross_entropy(logits, np.array([[0, 1], [2, 3], [1, 1]])) + \
            tr.mse(out.tanh() * out.sigmoid(), tr.Tensor(np.zeros((3, 2, 3)), device="cuda")) + \
            tr.where(out > 0, out, out * 0.1).relu().softmax(-1).sum()
        loss.backward()
        norm = tr.optim.grad_norm(params)
        assert tr.optim.clip_grad_norm(params, 0.01, norm=norm) == norm > 0.01
        opt.step()
    step()  # compiles the cell
    before = [p.numpy().copy() for p in params]
    downloads.clear()
    step()
    assert sum(cuda.HOST_ROUND_TRIPS.values()) == 0, dict(cuda.HOST_ROUND_TRIPS)
    assert downloads and set(downloads) == {1}, downloads  # the norm's total, a scalar
    host = [p.grad.numpy() for p in params]
    assert abs(np.sqrt(sum((g * g).sum() for g in host)) - 0.01) < 1e-6  # clipped on the device
    assert all(not np.array_equal(b, p.numpy()) for b, p in zip(before, params))  # the step happened


@needs_cuda
def test_a_cuda_array_has_numpy_truthiness():
    a = tr.Tensor(np.array([1.0, 2.0]), device="cuda").data
    with pytest.raises(ValueError, match="truth value of an array with more than one element is ambiguous"):
        bool(a)
    with pytest.raises(ValueError, match="ambiguous"):
        a in [a.copy()]  # noqa: B015 (list membership compares with ==, whose result is an array)
    assert bool(tr.Tensor(np.array([3.0]), device="cuda").data == 3.0)
    assert not bool(tr.Tensor(np.array([3.0]), device="cuda").data == 2.0)


@needs_cuda
def test_host_round_trips_are_counted_by_reason():
    from tinygrad_rnn.backend import cuda
    cuda.HOST_ROUND_TRIPS.clear()
    x = tr.Tensor(np.arange(12.0).reshape(3, 4), device="cuda", requires_grad=True)
    y = x[np.array([0, 2]), 1:3]  # an integer array mixed with a slice: done on the host
    y.sum().backward()
    np.testing.assert_array_equal(y.numpy(), np.arange(12.0).reshape(3, 4)[[0, 2], 1:3])
    assert cuda.HOST_ROUND_TRIPS == {"getitem with mixed fancy indexing": 1,
                                     "scatter_add with mixed fancy indexing": 1}


# ---- imports run one way: ops -> tensor -> tape -> backend ----------------------------------------
def _imported_modules(path):
    """Package-relative names imported anywhere in ``path``, deferred imports included."""
    tree = ast.parse(open(path).read())
    found = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.ImportFrom):
            base = (n.module or "").split(".")
            found |= {".".join(base + [a.name]).strip(".") for a in n.names} | {".".join(base)}
        elif isinstance(n, ast.Import):
            found |= {a.name for a in n.names}
    return found


@pytest.mark.parametrize("module,forbidden", [
    (tensor, {"ops"}),
    (tape, {"ops", "tensor"}),
    (backend, {"ops", "tensor", "tape"}),
    (api, {"ops", "tensor", "tape"}),
    (cpu, {"ops", "tensor", "tape"}),
])
def test_engine_imports_run_one_way(module, forbidden):
    names = {part for name in _imported_modules(module.__file__) for part in name.split(".")}
    assert not names & forbidden, f"{module.__name__} imports {names & forbidden}"


def test_cuda_backend_imports_nothing_above_it():
    import os
    path = os.path.join(os.path.dirname(cpu.__file__), "cuda.py")
    names = {part for name in _imported_modules(path) for part in name.split(".")}
    assert not names & {"ops", "tensor", "tape"}
