"""Zero-size arrays on the CUDA backend against the CPU backend, op by op.

Every primitive of the op table runs forward and backward on shapes with a zero-size
dimension (0 rows, 0 columns, K=0 products, empty reduction axes, an empty batch) on
both devices. The CPU backend is NumPy's behaviour: where it gives a result the CUDA
backend must give the same one (NaN where NumPy's is NaN, as a mean over nothing);
where it raises (a max over an empty axis), the CUDA backend must raise the same kind
of error at the same stage. Shapes are tiny: in Numba's simulator each launch runs
every thread in Python.
"""
import warnings

import numpy as np
import pytest

import tinygrad_rnn as tr
from tinygrad_rnn import ops
from tinygrad_rnn.backend import cuda_available

pytestmark = [pytest.mark.skipif(not cuda_available()[0], reason=f"no CUDA device or simulator: {cuda_available()[1]}"),
              pytest.mark.cuda]

EMPTY = np.zeros(0, np.int64)

# name, op table entries it exercises, function of tensors, input shapes ("+" before a
# shape: positive values, for log and division)
CASES = [
    # elementwise, one input
    ("neg", {"neg"}, lambda a: -a, [(3, 0)]),
    ("exp", {"exp"}, lambda a: a.exp(), [(0, 3)]),
    ("log", {"log"}, lambda a: a.log(), ["+", (2, 0, 3)]),
    ("tanh_sigmoid", {"tanh", "sigmoid", "mul"}, lambda a: a.tanh() * a.sigmoid(), [(0,)]),
    ("relu_leaky", {"leaky_relu", "add"}, lambda a: a.relu() + a.leaky_relu(0.2), [(3, 0)]),
    ("pow", {"pow"}, lambda a: a ** 3, [(0, 2)]),
    ("clip", {"clip"}, lambda a: a.clip(-0.5, 0.5), [(0, 3)]),
    ("astype", {"astype"}, lambda a: a.astype("float32"), [(3, 0)]),
    # elementwise, two inputs, broadcasting into and out of zero-size shapes
    ("add_broadcast", {"add"}, lambda a, b: a + b, [(3, 1), (0,)]),
    ("sub_scalar", {"add", "neg"}, lambda a: 1 - a, [(0, 3)]),
    ("mul_broadcast", {"mul"}, lambda a, b: a * b, [(0, 3), (3,)]),
    ("div_broadcast", {"div"}, lambda a, b: a / b, [(2, 0), "+", (2, 1)]),
    ("where", {"where"}, lambda a, b: tr.where(a > 0, a, b), [(3, 0), (3, 0)]),
    # products
    ("matmul_k0", {"matmul"}, lambda a, b: a @ b, [(3, 0), (0, 4)]),
    ("matmul_rows0", {"matmul"}, lambda a, b: a @ b, [(0, 2), (2, 4)]),
    ("matmul_cols0", {"matmul"}, lambda a, b: a @ b, [(3, 2), (2, 0)]),
    ("matmul_batch0", {"matmul"}, lambda a, b: a @ b, [(0, 3, 2), (2, 4)]),
    ("matmul_batched_k0", {"matmul"}, lambda a, b: a @ b, [(2, 3, 0), (2, 0, 4)]),
    ("matmul_batch_broadcast0", {"matmul"}, lambda a, b: a @ b, [(0, 1, 2), (3, 2, 2)]),
    ("matmul_vec_vec0", {"matmul"}, lambda a, b: a @ b, [(0,), (0,)]),
    ("matmul_mat_vec0", {"matmul"}, lambda a, b: a @ b, [(3, 0), (0,)]),
    ("matmul_vec0_mat", {"matmul"}, lambda a, b: a @ b, [(0,), (0, 4)]),
    # reshapes and views
    ("reshape", {"reshape"}, lambda a: a.reshape(0, 5), [(3, 0)]),
    ("transpose", {"transpose"}, lambda a: a.transpose(2, 0, 1), [(2, 0, 3)]),
    ("getitem_slice", {"getitem"}, lambda a: a[1:1] + a[:, 2:2].sum(), [(3, 2)]),
    ("getitem_empty_axis", {"getitem"}, lambda a: a[1, ..., None], [(2, 0)]),
    ("getitem_empty_index", {"getitem"}, lambda a: a[EMPTY], [(3, 2)]),
    ("getitem_rows_of_empty", {"getitem"}, lambda a: a[np.array([2, -1, 2])], [(3, 0)]),
    ("getitem_row_of_no_rows", {"getitem"}, lambda a: a[np.array([0])], [(0, 3)]),  # IndexError on both
    ("getitem_empty_mask", {"getitem"}, lambda a: a[np.zeros(3, bool)], [(3, 2)]),
    ("cat_empty_piece", {"cat"}, lambda a, b: tr.cat([a, b], 1), [(3, 0), (3, 2)]),
    ("cat_all_empty", {"cat"}, lambda a, b: tr.cat([a, b], 0), [(0, 2), (0, 2)]),
    ("stack_split", {"cat", "reshape", "getitem"},
     lambda a: tr.stack([a, a], 0) + tr.split(a, [0, 1], 0)[0].sum(), [(1, 0)]),
    ("embedding_no_indices", {"embedding"}, lambda w: tr.embedding(w, EMPTY), [(3, 4)]),
    ("embedding_empty_rows", {"embedding"}, lambda w: tr.embedding(w, np.array([[0, 2], [2, 2]])), [(3, 0)]),
    ("embedding_empty_batch", {"embedding"}, lambda w: tr.embedding(w, np.zeros((2, 0), np.int64)), [(3, 4)]),
    ("cross_entropy_no_rows", {"cross_entropy"}, lambda a: tr.cross_entropy(a, EMPTY), [(0, 3)]),
    ("cross_entropy_empty_batch", {"cross_entropy"}, lambda a: tr.cross_entropy(a, np.zeros((2, 0), np.int64)),
     [(2, 0, 3)]),
    ("cross_entropy_no_classes", {"cross_entropy"}, lambda a: tr.cross_entropy(a, EMPTY), [(0, 0)]),
    ("softmax_rows0", {"max", "exp", "log", "sum"}, lambda a: a.softmax(-1), [(0, 3)]),
    ("softmax_empty_axis", {"max"}, lambda a: a.log_softmax(0), [(0, 3)]),
    ("mse_empty", {"mean", "mul"}, lambda a, b: tr.mse(a, b), [(3, 0), (3, 0)]),
]
# reductions: every axis choice on shapes whose reduced part, kept part or both are empty
for _op in ("sum", "mean", "max"):
    for _shape, _axes in (((3, 0), (None, 0, 1, -1)), ((0, 3), (None, 0, 1)), ((0, 0), (None, 1)),
                          ((2, 0, 3), (None, 1, (0, 2), (1, 2))), ((0,), (None, 0))):
        for _axis in _axes:
            for _keep in (False, True):
                CASES.append((f"{_op}{_shape}axis{_axis}{'keep' if _keep else ''}".replace(" ", ""), {_op},
                              lambda a, op=_op, axis=_axis, keep=_keep: getattr(a, op)(axis=axis, keepdims=keep),
                              [_shape]))


def _inputs(spec, rng):
    arrays, positive = [], False
    for s in spec:
        if s == "+":
            positive = True
            continue
        x = rng.standard_normal(s)
        arrays.append(np.abs(x) + 0.5 if positive else x)
        positive = False
    return arrays


def _run(fn, inputs, device):
    """('ok', [output, gradients...]) or ('raised', stage, exception type, message)."""
    ts = [tr.Tensor(x, device=device, requires_grad=True) for x in inputs]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # NumPy's "mean of empty slice" and 0/0 on the CPU
        try:
            out = fn(*ts)
        except Exception as e:
            return "raised", "forward", type(e), str(e)
        try:
            w = np.linspace(-1, 1, out.size).reshape(out.shape)
            (out * tr.Tensor(w, dtype=out.dtype, device=device)).sum().backward()
        except Exception as e:
            return "raised", "backward", type(e), str(e)
        return "ok", [out.numpy()] + [None if t.grad is None else t.grad.numpy() for t in ts]


def test_the_cases_cover_every_op_of_the_table():
    table = {name for name, op in ops.OPS.items() if op.fwd.__module__ == ops.__name__}
    covered = set().union(*(c[1] for c in CASES))
    assert table - covered == set()


@pytest.mark.parametrize("name,used,fn,spec", CASES, ids=[c[0] for c in CASES])
def test_zero_size_op_and_gradient_match_cpu(name, used, fn, spec):
    inputs = _inputs(spec, np.random.default_rng(0))
    want = _run(fn, inputs, "cpu")
    got = _run(fn, inputs, "cuda")
    if want[0] == "raised" or got[0] == "raised":
        assert got[:2] == want[:2], f"cpu: {want}, cuda: {got}"
        assert issubclass(got[2], want[2]) or issubclass(want[2], got[2]), f"cpu: {want}, cuda: {got}"
        return
    for i, (g, w) in enumerate(zip(got[1], want[1])):
        what = "output" if i == 0 else f"gradient of input {i - 1}"
        if w is None:
            assert g is None, what
            continue
        assert g.shape == w.shape and g.dtype == w.dtype, f"{what}: {g.shape} {g.dtype} != {w.shape} {w.dtype}"
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12, err_msg=what)


def test_empty_max_raises_numpys_error_on_cuda():
    x = tr.Tensor(np.zeros((3, 0)), device="cuda")
    with pytest.raises(ValueError, match="zero-size array to reduction operation maximum"):
        x.max(axis=1)
    with pytest.raises(ValueError, match="zero-size array to reduction operation maximum"):
        x.max()
    assert x.max(axis=0).shape == (0,)


def test_row_indices_are_checked_and_wrapped_on_cuda():
    """Host integer indices are checked on the host (a GPU kernel reads out of bounds silently)
    and negative ones wrapped, for the forward and for its scatter-add VJP."""
    x = tr.Tensor(np.arange(6.0).reshape(3, 2), device="cuda", requires_grad=True)
    with pytest.raises(IndexError, match=r"^getitem: index 3 is out of bounds for axis 0 with size 3"):
        x[np.array([0, 3])]
    with pytest.raises(IndexError, match=r"^getitem: index -4 is out of bounds"):
        x[np.array([-4])]
    y = x[np.array([-1, 0, -1])]
    (y * y).sum().backward()
    np.testing.assert_array_equal(y.numpy(), [[4, 5], [0, 1], [4, 5]])
    np.testing.assert_array_equal(x.grad.numpy(), [[0, 2], [0, 0], [16, 20]])


def test_scalars_stay_0d_on_cuda():
    t = tr.Tensor(np.ones((2, 3)), device="cuda")
    assert tr.Tensor(3.0, device="cuda").shape == ()
    assert t.mean().shape == t.sum().shape == (t.sum() * 2).shape == (1 - t.max()).shape == ()
    assert tr.mse(t, t).shape == tr.cross_entropy(t, np.array([0, 1])).shape == ()
