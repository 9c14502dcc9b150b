"""The tape: order, accumulation, freeing, retain_graph, no_grad, and errors."""
import gc
import tracemalloc

import numpy as np
import pytest

import tinygrad_rnn as tr
from tinygrad_rnn import ops


def test_shared_weight_accumulates_over_uses():
    w = tr.Tensor(np.array([2.0]), requires_grad=True)
    h = tr.Tensor(np.array([1.0]))
    for _ in range(3):
        h = h * w
    h.sum().backward()
    np.testing.assert_allclose(w.grad.numpy(), [3 * 2.0 ** 2])


def test_grads_accumulate_across_backward_calls_until_cleared():
    x = tr.Tensor([1.0, 2.0], requires_grad=True)
    (x * 3).sum().backward()
    (x * 3).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [6, 6])
    x.zero_grad()
    assert x.grad is None


def test_ten_thousand_op_chain_has_no_recursion_limit():
    x = tr.Tensor(np.array([0.5]), requires_grad=True)
    y = x
    for _ in range(10_000):
        y = y * 1.0001
    y.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [1.0001 ** 10_000], rtol=1e-4)


@pytest.mark.slow
def test_five_thousand_step_unrolled_recurrence():
    rng = np.random.default_rng(0)
    w = tr.Tensor(rng.standard_normal((4, 4)) * 0.3, requires_grad=True)
    h = tr.Tensor(np.zeros((2, 4)))
    xs = rng.standard_normal((5000, 2, 4))
    for t in range(5000):
        h = (h @ w + xs[t]).tanh()
    h.sum().backward()
    assert w.grad.shape == (4, 4) and np.isfinite(w.grad.numpy()).all()


def test_backward_twice_without_retain_graph_names_the_op():
    x = tr.Tensor([1.0], requires_grad=True)
    y = (x * 2).tanh().sum()
    y.backward()
    with pytest.raises(RuntimeError, match="second time"):
        y.backward()


def test_retain_graph_allows_a_second_backward():
    x = tr.Tensor([1.0], requires_grad=True)
    y = (x * x).sum()
    y.backward(retain_graph=True)
    y.backward()
    np.testing.assert_allclose(x.grad.numpy(), [4.0])


def test_saved_arrays_are_freed_after_backward():
    x = tr.Tensor(np.ones(3), requires_grad=True)
    y = (x * 2).tanh()
    node = y._node
    y.sum().backward()
    assert node.out is None and node.inputs == ()


@pytest.mark.slow
def test_memory_stays_flat_over_many_training_steps():
    rng = np.random.default_rng(0)
    w = tr.Tensor(rng.standard_normal((16, 16)) * 0.1, requires_grad=True)
    xs = rng.standard_normal((10, 8, 16))

    def train_step():
        h = tr.Tensor(np.zeros((8, 16)))
        for t in range(10):
            h = (h @ w + xs[t]).tanh()
        h.sum().backward()
        with tr.no_grad():
            w.data -= 0.01 * w.grad.data
        w.zero_grad()

    for _ in range(50):
        train_step()
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    for _ in range(1000):
        train_step()
    gc.collect()
    grown = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    assert grown < 200_000, f"memory grew by {grown} bytes over 1000 steps"


def test_no_grad_records_nothing():
    x = tr.Tensor([1.0], requires_grad=True)
    with tr.no_grad():
        y = x * 2
    assert not y.requires_grad and y._node is None
    z = x * 2
    assert z.requires_grad


def test_detach_cuts_the_tape():
    x = tr.Tensor([3.0], requires_grad=True)
    y = (x * x).detach() * x
    y.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [9.0])


def test_retain_grad_keeps_intermediate_gradient():
    x = tr.Tensor([1.0, -2.0], requires_grad=True)
    h = (x * 3).retain_grad()
    (h * h).sum().backward()
    np.testing.assert_allclose(h.grad.numpy(), 2 * h.numpy())


def test_backward_with_explicit_grad_on_non_scalar():
    x = tr.Tensor([1.0, 2.0], requires_grad=True)
    (x * 3).backward(grad=np.array([1.0, 10.0], np.float32))
    np.testing.assert_allclose(x.grad.numpy(), [3, 30])


# ---- errors name the op and the shapes ----------------------------------------
def test_backward_on_non_scalar_without_grad():
    with pytest.raises(ValueError, match=r"scalar.*\(2,\)"):
        (tr.Tensor([1.0, 2.0], requires_grad=True) * 2).backward()


def test_mismatched_shapes_name_op_and_shapes():
    with pytest.raises(ValueError, match=r"add.*\(3,\).*\(4,\)"):
        tr.Tensor(np.ones(3)) + tr.Tensor(np.ones(4))
    with pytest.raises(ValueError, match=r"matmul.*\(2, 3\).*\(2, 3\)"):
        tr.Tensor(np.ones((2, 3))) @ tr.Tensor(np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"mse.*\(3,\).*\(3, 1\)"):
        tr.mse(tr.Tensor(np.ones(3)), tr.Tensor(np.ones((3, 1))))
    with pytest.raises(ValueError, match="cat"):
        tr.cat([tr.Tensor(np.ones((2, 3))), tr.Tensor(np.ones((3, 2)))], axis=0)


def test_integer_data_cannot_require_grad():
    with pytest.raises(TypeError, match="int64"):
        tr.Tensor(np.arange(3), requires_grad=True)
    with pytest.raises(TypeError, match="bool"):
        tr.Tensor(np.array([True]), requires_grad=True)


def test_vjp_returning_wrong_count_or_shape_names_the_op():
    bad_count = ops.defop("bad_count", lambda k, a, b: a + b, lambda k, g, y, a, b: (g,))
    bad_shape = ops.defop("bad_shape", lambda k, a: a.sum(), lambda k, g, y, a: (np.ones(7),))
    try:
        x = tr.Tensor(np.ones(3), requires_grad=True)
        with pytest.raises(RuntimeError, match="bad_count.*1 gradient.*2 input"):
            ops.apply(bad_count, x, x).sum().backward()
        with pytest.raises(RuntimeError, match=r"bad_shape.*\(7,\).*\(3,\)"):
            ops.apply(bad_shape, x).backward()
    finally:
        del ops.OPS["bad_count"], ops.OPS["bad_shape"]


def test_bad_indices_and_targets_are_clear():
    w = tr.Tensor(np.ones((4, 2)), requires_grad=True)
    with pytest.raises(IndexError, match=r"embedding.*\[0, 4\)"):
        tr.embedding(w, [0, 4])
    with pytest.raises(TypeError, match="integers"):
        tr.cross_entropy(w, np.array([0.5, 1.0, 0.0, 0.0]))
    with pytest.raises(ValueError, match="axis 3"):
        w.sum(axis=3)
