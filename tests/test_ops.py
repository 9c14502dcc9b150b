"""Every primitive: forward against NumPy, gradient against float64 finite differences."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

import tinygrad_rnn as tr
from tinygrad_rnn import ops
from tinygrad_rnn.testing import gradcheck, GradcheckError


def randn(rng, *shape):
    return rng.standard_normal(shape)


# (name, fn, input shapes, numpy reference) -- one line per case
BINARY = {
    "add": (lambda a, b: a + b, np.add),
    "sub": (lambda a, b: a - b, np.subtract),
    "mul": (lambda a, b: a * b, np.multiply),
    "div": (lambda a, b: a / b, np.divide),
}
BROADCAST_PAIRS = [((3, 4), (3, 4)), ((3, 4), (4,)), ((3, 1), (1, 4)), ((2, 3, 4), (3, 1)), ((), (2, 3)), ((5,), ())]


@pytest.mark.parametrize("name", BINARY)
@pytest.mark.parametrize("sa,sb", BROADCAST_PAIRS)
def test_binary_ops(rng, name, sa, sb):
    fn, ref = BINARY[name]
    a, b = randn(rng, *sa), randn(rng, *sb)
    if name == "div":
        b = np.sign(b) * (np.abs(b) + 0.5)
    np.testing.assert_allclose(fn(tr.Tensor(a), tr.Tensor(b)).numpy(), ref(a, b))
    assert gradcheck(fn, [a, b])


@settings(max_examples=25, deadline=None)
@given(hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=3, max_side=3), st.sampled_from(list(BINARY)))
def test_binary_ops_any_broadcast(shapes, name):
    rng = np.random.default_rng(0)
    (sa, sb), fn = shapes.input_shapes, BINARY[name][0]
    a, b = rng.standard_normal(sa), rng.standard_normal(sb) + 3.0
    assert fn(tr.Tensor(a), tr.Tensor(b)).shape == np.broadcast_shapes(sa, sb)
    assert gradcheck(fn, [a, b])


UNARY = [
    ("neg", lambda x: -x, np.negative, None),
    ("pow2", lambda x: x ** 2, lambda x: x ** 2, None),
    ("pow-1.5", lambda x: x ** -1.5, lambda x: x ** -1.5, "positive"),
    ("sqrt", lambda x: x.sqrt(), np.sqrt, "positive"),
    ("exp", lambda x: x.exp(), np.exp, None),
    ("log", lambda x: x.log(), np.log, "positive"),
    ("tanh", lambda x: x.tanh(), np.tanh, None),
    ("sigmoid", lambda x: x.sigmoid(), lambda x: 1 / (1 + np.exp(-x)), None),
    ("relu", lambda x: x.relu(), lambda x: np.maximum(x, 0), "away_from_0"),
    ("leaky_relu", lambda x: x.leaky_relu(0.1), lambda x: np.where(x > 0, x, 0.1 * x), "away_from_0"),
    ("rsub", lambda x: 1 - x, lambda x: 1 - x, None),
    ("rdiv", lambda x: 2 / x, lambda x: 2 / x, "positive"),
    ("clip", lambda x: x.clip(-0.5, 0.7), lambda x: np.clip(x, -0.5, 0.7), "away_from_clip"),
    ("softmax", lambda x: x.softmax(-1), lambda x: np.exp(x) / np.exp(x).sum(-1, keepdims=True), None),
    ("log_softmax0", lambda x: x.log_softmax(0), lambda x: x - np.log(np.exp(x).sum(0, keepdims=True)), None),
    ("T", lambda x: x.T, lambda x: x.T, None),
    ("transpose", lambda x: x.transpose(1, 0, 2), lambda x: x.transpose(1, 0, 2), None),
    ("reshape", lambda x: x.reshape(-1, 2), lambda x: x.reshape(-1, 2), None),
    ("float32", lambda x: x.float().double(), lambda x: x.astype(np.float32).astype(np.float64), None),
]


def _domain(x, kind):
    if kind == "positive":
        return np.abs(x) + 0.3
    if kind == "away_from_0":
        return np.sign(x) * (np.abs(x) + 0.1)
    if kind == "away_from_clip":
        return np.where(np.abs(x + 0.5) < 0.05, x - 0.1, np.where(np.abs(x - 0.7) < 0.05, x + 0.1, x))
    return x


@pytest.mark.parametrize("name,fn,ref,kind", UNARY, ids=[u[0] for u in UNARY])
def test_unary_ops(rng, name, fn, ref, kind):
    x = _domain(randn(rng, 2, 3, 4), kind)
    np.testing.assert_allclose(fn(tr.Tensor(x)).numpy(), ref(x), rtol=1e-6)
    # A float32 round trip quantises at ~1e-7, so its finite difference needs a larger step.
    assert gradcheck(fn, [x], **(dict(eps=1e-3, atol=1e-3) if name == "float32" else {}))


@pytest.mark.parametrize("op", ["sum", "mean", "max"])
@pytest.mark.parametrize("axis", [None, 0, 1, -1, (0, 2)])
@pytest.mark.parametrize("keepdims", [False, True])
def test_reductions(rng, op, axis, keepdims):
    x = randn(rng, 2, 3, 4)
    out = getattr(tr.Tensor(x), op)(axis=axis, keepdims=keepdims)
    np.testing.assert_allclose(out.numpy(), getattr(np, op)(x, axis=axis, keepdims=keepdims))
    assert gradcheck(lambda t: getattr(t, op)(axis=axis, keepdims=keepdims), [x])


def test_max_splits_gradient_between_ties():
    x = tr.Tensor(np.array([1.0, 3.0, 3.0]), requires_grad=True)
    x.max().backward()
    np.testing.assert_allclose(x.grad.numpy(), [0, 0.5, 0.5])


@pytest.mark.parametrize("sa,sb", [((3, 4), (4, 5)), ((2, 3, 4), (4, 5)), ((2, 3, 4), (2, 4, 5)),
                                   ((1, 3, 4), (2, 4, 2)), ((4,), (4, 3)), ((3, 4), (4,)), ((4,), (4,))])
def test_matmul(rng, sa, sb):
    a, b = randn(rng, *sa), randn(rng, *sb)
    np.testing.assert_allclose((tr.Tensor(a) @ tr.Tensor(b)).numpy(), a @ b)
    assert gradcheck(lambda x, y: x @ y, [a, b])


@pytest.mark.parametrize("sa,sb", [((3, 0), (0, 4)), ((3, 4), (4, 0)), ((2, 3, 0), (0, 4)),
                                   ((2, 3, 4), (4, 0)), ((2, 0, 4), (4, 5))])
def test_matmul_gradients_with_an_empty_axis(sa, sb):
    """An empty inner or output axis: zero gradients of the operands' shapes (flattening the
    rows with ``reshape(-1, 0)`` raised, a 0-size array's -1 being ambiguous)."""
    a, b = tr.Tensor(np.ones(sa), requires_grad=True), tr.Tensor(np.ones(sb), requires_grad=True)
    (a @ b).sum().backward()
    assert a.grad.shape == sa and b.grad.shape == sb
    assert not a.grad.numpy().any() and not b.grad.numpy().any()


@pytest.mark.parametrize("index", [1, -1, slice(1, 3), (slice(None), -2), (Ellipsis, 0),
                                   np.array([0, 2, 0]), (np.array([0, 1, 1]), np.array([2, 0, 2])),
                                   (slice(None), [3, 3, 0])],
                         ids=["int", "neg", "slice", "tuple", "ellipsis", "intarray", "pairs", "list"])
def test_getitem(rng, index):
    x = randn(rng, 3, 4)
    np.testing.assert_allclose(tr.Tensor(x)[index].numpy(), x[index])
    assert gradcheck(lambda t: t[index], [x])


def test_getitem_with_repeated_indices_scatter_adds():
    x = tr.Tensor(np.zeros(3), requires_grad=True)
    x[np.array([0, 0, 2])].sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [2, 0, 1])


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_cat_stack_split(rng, axis):
    a, b = randn(rng, 2, 3), randn(rng, 2, 3)
    np.testing.assert_allclose(tr.cat([tr.Tensor(a), tr.Tensor(b)], axis).numpy(), np.concatenate([a, b], axis))
    np.testing.assert_allclose(tr.stack([tr.Tensor(a), tr.Tensor(b)], axis).numpy(), np.stack([a, b], axis))
    assert gradcheck(lambda x, y: tr.cat([x, y, x], axis) ** 2, [a, b])
    assert gradcheck(lambda x, y: tr.stack([x, y], axis) ** 2, [a, b])
    pieces = tr.split(tr.Tensor(np.concatenate([a, b], axis)), [a.shape[axis], b.shape[axis]], axis)
    np.testing.assert_allclose(pieces[1].numpy(), b)
    assert gradcheck(lambda x: tr.split(x, 2, axis)[0] * 3, [np.concatenate([a, b], axis)])


def test_where(rng):
    a, b = randn(rng, 3, 4), randn(rng, 4)
    cond = a > 0
    np.testing.assert_allclose(tr.where(cond, tr.Tensor(a), tr.Tensor(b)).numpy(), np.where(cond, a, b))
    assert gradcheck(lambda x, y: tr.where(cond, x, y), [a, b])


def test_embedding(rng):
    w = randn(rng, 5, 3)
    idx = np.array([[0, 4], [4, 4]])
    np.testing.assert_allclose(tr.embedding(tr.Tensor(w), idx).numpy(), w[idx])
    assert gradcheck(lambda t: tr.embedding(t, idx), [w])


@pytest.mark.parametrize("shape", [(4, 3), (2, 5, 3)])
def test_cross_entropy(rng, shape):
    logits = randn(rng, *shape)
    target = rng.integers(0, shape[-1], shape[:-1])
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    expected = -np.take_along_axis(logp, target[..., None], -1).mean()
    np.testing.assert_allclose(tr.cross_entropy(tr.Tensor(logits), target).numpy(), expected)
    assert gradcheck(lambda t: tr.cross_entropy(t, target), [logits])


def test_mse(rng):
    a, b = randn(rng, 3, 4), randn(rng, 3, 4)
    np.testing.assert_allclose(tr.mse(tr.Tensor(a), tr.Tensor(b)).numpy(), ((a - b) ** 2).mean())
    assert gradcheck(tr.mse, [a, b])


def test_composite_expression_matches_numpy_chain(rng):
    a, b = randn(rng, 4, 3), randn(rng, 3, 2)
    fn = lambda x, y: ((x @ y).tanh() * (x @ y).sigmoid() + 1).log_softmax(-1).sum(0)
    assert gradcheck(fn, [a, b])


def test_gradcheck_catches_a_wrong_vjp(rng):
    wrong = ops.defop("wrong_square", lambda k, a: a * a, lambda k, g, y, a: (g * a,))  # missing factor 2
    try:
        with pytest.raises(GradcheckError, match="input 0"):
            gradcheck(lambda t: ops.apply(wrong, t), [randn(rng, 3)])
    finally:
        del ops.OPS["wrong_square"]


def test_float32_stays_float32_with_python_scalars():
    x = tr.Tensor([1.0, 2.0], requires_grad=True)
    y = (1 - x) * 2 + 0.5 / (x + 1) - x ** 2
    assert x.dtype == y.dtype == np.float32
    y.sum().backward()
    assert x.grad.dtype == np.float32
