"""Each CPU kernel against its NumPy twin in tests/naive.py."""
import numpy as np
import pytest

import naive
from tinygrad_rnn.backend import cpu

SHAPES = [(1,), (7,), (3, 5), (2, 3, 4), (64, 33)]


@pytest.mark.parametrize("dtype,atol", [(np.float32, 3e-7), (np.float64, 1e-15)])
@pytest.mark.parametrize("shape", SHAPES)
def test_activation_kernels(rng, shape, dtype, atol):
    x = (rng.standard_normal(shape) * 4).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    y = cpu.tanh(x)
    np.testing.assert_allclose(y, naive.tanh(x), atol=atol, rtol=0)
    np.testing.assert_allclose(cpu.tanh_bwd(g, y), naive.tanh_bwd(g, y), rtol=1e-6, atol=1e-7)
    s = cpu.sigmoid(x)
    np.testing.assert_allclose(s, naive.sigmoid(x), atol=atol, rtol=0)
    np.testing.assert_allclose(cpu.sigmoid_bwd(g, s), naive.sigmoid_bwd(g, s), rtol=1e-6, atol=1e-7)
    assert y.dtype == s.dtype == dtype and y.shape == shape


def test_tanh_rational_over_the_whole_float32_range():
    x = np.linspace(-30, 30, 1_000_001, dtype=np.float32)
    x = np.concatenate([x, np.float32([0.0, -0.0, 1e-30, 3.99e-4, 4.01e-4, np.inf, -np.inf])])
    y = cpu.tanh(x)
    np.testing.assert_allclose(y, np.tanh(x.astype(np.float64)), atol=3e-7, rtol=0)
    assert np.all(np.abs(y) <= 1)
    assert np.isnan(cpu.tanh(np.float32([np.nan])))[0], "NaN must survive the kernel"


@pytest.mark.parametrize("slope", [0.0, 0.01, 0.3])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_leaky_relu_kernels(rng, slope, dtype):
    x = rng.standard_normal((5, 6)).astype(dtype)
    g = rng.standard_normal((5, 6)).astype(dtype)
    np.testing.assert_array_equal(cpu.leaky_relu(x, slope), naive.leaky_relu(x, dtype(slope)))
    np.testing.assert_array_equal(cpu.leaky_relu_bwd(g, x, slope), naive.leaky_relu_bwd(g, x, dtype(slope)))


def test_embedding_bwd_scatter_adds_repeats(rng):
    idx = np.array([[0, 3, 3], [1, 0, 3]])
    g = rng.standard_normal((2, 3, 4))
    np.testing.assert_allclose(cpu.embedding_bwd((5, 4), idx, g), naive.embedding_bwd((5, 4), idx, g))


def test_kernels_accept_non_contiguous_input(rng):
    x = rng.standard_normal((6, 8)).astype(np.float32)[:, ::2]
    np.testing.assert_allclose(cpu.tanh(x), naive.tanh(x), atol=3e-7)


def test_shape_mismatch_in_backward_kernel_is_named():
    with pytest.raises(ValueError, match="tanh_bwd"):
        cpu.tanh_bwd(np.ones(3), np.ones(4))
