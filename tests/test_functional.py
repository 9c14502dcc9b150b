"""tr.grad, tr.value_and_grad and tr.jacobian (JAX's semantics, NumPy in and out) against
float64 finite differences."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import tinygrad_rnn as tr


def numeric_jacobian(f, args, n, eps=1e-6):
    """d f(*args) / d args[n] by central differences: shape out.shape + args[n].shape."""
    x = np.asarray(args[n], np.float64)
    value = lambda v: np.asarray(f(*[v if i == n else a for i, a in enumerate(args)]))  # noqa: E731
    out = value(x)
    jac = np.zeros(out.shape + x.shape)
    for j in np.ndindex(*x.shape):
        up, down = x.copy(), x.copy()
        up[j] += eps
        down[j] -= eps
        jac[(...,) + j] = (value(up) - value(down)) / (2 * eps)
    return jac


def with_tensors(f):
    """f on NumPy arrays: its Tensor result's values (for finite differences)."""
    return lambda *a: f(*[tr.Tensor(v) if isinstance(v, np.ndarray) else v for v in a]).numpy()


def loss(w, x, scale=1.0):
    return ((x @ w).tanh() * scale).sum() + (w * w).mean()


R = np.random.default_rng(0)
W, X = R.standard_normal((3, 2)), R.standard_normal((4, 3))


def test_grad_matches_finite_differences_for_each_argnum():
    for n in (0, 1):
        g = tr.grad(loss, argnums=n)(W, X)
        assert isinstance(g, np.ndarray) and g.shape == (W, X)[n].shape and g.dtype == np.float64
        np.testing.assert_allclose(g, numeric_jacobian(with_tensors(loss), [W, X], n), rtol=1e-6, atol=1e-8)


def test_tuple_argnums_value_and_grad_and_has_aux():
    gw, gx = tr.grad(loss, argnums=(0, 1))(W, X, 2.0)
    np.testing.assert_allclose(gw, numeric_jacobian(with_tensors(loss), [W, X, 2.0], 0), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(gx, numeric_jacobian(with_tensors(loss), [W, X, 2.0], 1), rtol=1e-6, atol=1e-8)
    value, g = tr.value_and_grad(loss)(W, X)
    assert value.shape == () and np.isclose(value, loss(tr.Tensor(W), tr.Tensor(X)).item())
    np.testing.assert_array_equal(g, tr.grad(loss)(W, X))
    aux_f = lambda w: ((w * w).sum(), {"norm": float(np.linalg.norm(w.numpy()))})  # noqa: E731
    g, aux = tr.grad(aux_f, has_aux=True)(W)
    np.testing.assert_allclose(g, 2 * W)
    assert aux == {"norm": pytest.approx(np.linalg.norm(W))}
    (value, aux), g = tr.value_and_grad(aux_f, has_aux=True)(W)
    assert np.isclose(value, (W * W).sum()) and "norm" in aux


def test_jacobian_is_one_vjp_per_output_element():
    f = lambda w, x: (x @ w).tanh()  # noqa: E731
    jw = tr.jacobian(f)(W, X)
    assert jw.shape == (4, 2, 3, 2)
    np.testing.assert_allclose(jw, numeric_jacobian(with_tensors(f), [W, X], 0), rtol=1e-6, atol=1e-8)
    jw2, jx = tr.jacobian(f, argnums=(0, 1))(W, X)
    np.testing.assert_array_equal(jw2, jw)
    np.testing.assert_allclose(jx, numeric_jacobian(with_tensors(f), [W, X], 1), rtol=1e-6, atol=1e-8)
    v = np.array([0.3, -1.2, 2.0])
    np.testing.assert_allclose(tr.jacobian(lambda a: a.sigmoid())(v), np.diag(1 / (1 + np.exp(-v)) * (1 - 1 / (1 + np.exp(-v)))))


@settings(max_examples=15, derandomize=True, deadline=None)
@given(rows=st.integers(1, 3), cols=st.integers(1, 3), seed=st.integers(0, 2 ** 16))
def test_jacobian_of_composed_ops_matches_finite_differences(rows, cols, seed):
    r = np.random.default_rng(seed)
    a, b = r.standard_normal((rows, cols)), r.standard_normal((cols,))
    f = lambda a, b: (a * b).exp().log_softmax(-1) + (a - b) ** 2 / (b * b + 1)  # noqa: E731
    np.testing.assert_allclose(tr.jacobian(f, (0, 1))(a, b)[1], numeric_jacobian(with_tensors(f), [a, b], 1),
                               rtol=1e-5, atol=1e-7)


def test_through_an_rnn_parameters_keep_their_gradients_and_no_grad_is_no_obstacle():
    tr.manual_seed(0)
    rnn = tr.nn.RNN("gru", 2, 3, dtype="float64")
    x = R.standard_normal((4, 2, 2))
    marker = tr.Tensor(np.full(rnn.cells[0].weight_hh.shape, 7.0))
    rnn.cells[0].weight_hh.grad = marker
    f = lambda x: (rnn(x)[0] ** 2).sum()  # noqa: E731
    with tr.no_grad():
        g = tr.grad(f)(x)
    assert rnn.cells[0].weight_hh.grad is marker and rnn.cells[0].weight_ih.grad is None
    numeric = numeric_jacobian(lambda v: f(tr.Tensor(v)).numpy(), [x], 0)
    np.testing.assert_allclose(g, numeric, rtol=1e-6, atol=1e-8)


def test_float32_stays_float32_and_an_ignored_input_gets_zeros():
    g = tr.grad(lambda x, y: (y * 2).sum(), argnums=(0, 1))(np.ones(2, np.float32), np.ones(3, np.float32))
    assert g[0].dtype == np.float32 and np.all(g[0] == 0) and np.all(g[1] == 2)
    assert tr.grad(lambda x: (x * x).sum())(3.0) == 6.0  # a Python float is a float64 0-d array


@pytest.mark.parametrize("call,error,match", [
    (lambda: tr.grad(lambda x: x * 2)(np.ones(3)), ValueError, r"^grad: .* must return a scalar \(shape \(\)\), got shape \(3,\)"),
    (lambda: tr.value_and_grad(lambda x: x * 2)(np.ones(3)), ValueError, "^value_and_grad: .* must return a scalar"),
    (lambda: tr.grad(lambda x: x.sum())(np.arange(3)), TypeError, "^grad: argument 0"),  # each names what was called
    (lambda: tr.grad(lambda x: 1.0)(np.ones(3)), TypeError, "must return a Tensor .* got float"),
    (lambda: tr.grad(lambda x: x.sum())(np.arange(3)), TypeError, "argument 0 .* float32 or float64 .* got int64"),
    (lambda: tr.grad(lambda x: x.sum(), argnums=2)(np.ones(3)), ValueError, "argnums 2 is out of range"),
    (lambda: tr.grad(lambda x: x.sum(), argnums="0"), TypeError, "argnums must be an int"),
    (lambda: tr.grad(lambda x: x.sum(), has_aux=True)(np.ones(2)), TypeError, r"pair \(value, aux\)"),
])
def test_mistakes_are_named(call, error, match):
    with pytest.raises(error, match=match):
        call()
