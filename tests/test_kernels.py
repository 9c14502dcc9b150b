"""Each hand-written CPU kernel and each building block of the generated ones against its
NumPy twin in tests/naive.py."""
import os

import numpy as np
import pytest

import naive
from numba import njit

from tinygrad_rnn.backend import cpu, simd

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


@njit
def _scalar_kernel(x, out):  # how generated kernels use the scalar building blocks
    for i in range(x.size):
        out[0, i] = cpu.tanh_scalar(x[i])
        out[1, i] = cpu.sigmoid_scalar(x[i])


@pytest.mark.parametrize("dtype,atol", [(np.float32, 3e-7), (np.float64, 1e-15)])
def test_scalar_building_blocks_inside_numba(dtype, atol):
    x = np.concatenate([np.linspace(-20, 20, 4001), [0.0, 1e-30, 3.99e-4, 4.01e-4]]).astype(dtype)
    out = np.empty((2, x.size), dtype)
    _scalar_kernel(x, out)
    np.testing.assert_allclose(out[0], naive.tanh(x), atol=atol, rtol=0)
    np.testing.assert_allclose(out[1], naive.sigmoid(x), atol=atol, rtol=0)


@pytest.mark.parametrize("dtype,rtol", [(np.float32, 1e-5), (np.float64, 1e-12)])
@pytest.mark.parametrize("B,K,N", [(1, 1, 1), (3, 5, 7), (4, 4, 4), (9, 13, 6), (17, 9, 5), (32, 64, 16),
                                   (16, 40, 70), (8, 3, 33)])
def test_in_kernel_products(rng, dtype, rtol, B, K, N):
    # sizes around the tile (8 rows, one panel) on both sides, on every side
    width = simd.panel_width(dtype)
    a = rng.standard_normal((B, K)).astype(dtype)
    w = rng.standard_normal((K, N)).astype(dtype)
    out = np.full((B, N), np.nan, dtype)  # the product must overwrite, not accumulate into, its output
    simd.mm_panels(a, simd.pack_panels(w, width), out)  # the forward's use
    np.testing.assert_allclose(out, naive.mm(a, w), rtol=rtol, atol=rtol * K)
    out_t = np.full((B, K), np.nan, dtype)  # the backward's use: times the weight's transpose, a view
    simd.mm_panels(out, simd.pack_panels(w.T, width), out_t)
    np.testing.assert_allclose(out_t, naive.mm(out, w.T), rtol=rtol, atol=rtol * N * np.abs(out).max())
    # column slices of wider buffers, as a stage's operand and a block's rows are; nothing
    # outside the output's slice is written
    wide = np.zeros((B + 2, N + 5), dtype)
    rows = np.full((B, K + 3), np.nan, dtype)
    rows[:, 1:K + 1] = a
    simd.mm_panels(rows[:, 1:K + 1], simd.pack_panels(w, width), wide[1:B + 1, 2:N + 2])
    np.testing.assert_array_equal(wide[1:B + 1, 2:N + 2], out)
    wide[1:B + 1, 2:N + 2] = 0
    assert not wide.any()


def test_in_kernel_products_without_avx512():
    """On a CPU without AVX-512 the tile is 4 rows of 8-float vectors: the same checks, in a
    process that sees no AVX-512 (nothing cached, so the kernels compile for that tile)."""
    import subprocess
    import sys
    code = """
import llvmlite.binding as llvm
features = llvm.get_host_cpu_features()
features["avx512f"] = False
llvm.get_host_cpu_features = lambda: features
import os

import numpy as np
from tinygrad_rnn.backend import simd
assert (simd.ROWS, simd.VECTOR_BYTES) == (4, 32), (simd.ROWS, simd.VECTOR_BYTES)
rng = np.random.default_rng(0)
for dtype in (np.float32, np.float64):
    for B, K, N in [(1, 1, 1), (5, 7, 9), (9, 13, 17), (4, 16, 16), (3, 5, 40)]:
        a, w = rng.standard_normal((B, K)).astype(dtype), rng.standard_normal((K, N)).astype(dtype)
        out = np.full((B, N), np.nan, dtype)
        simd.mm_panels(a, simd.pack_panels(w, simd.panel_width(dtype)), out)
        np.testing.assert_allclose(out, a.astype(np.float64) @ w, rtol=1e-5, atol=1e-5 * K)
print("ok")
"""
    env = {**os.environ, "TINYGRAD_RNN_NO_CACHE": "1"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


@pytest.mark.slow
def test_the_tile_follows_numbas_target_so_a_portable_cache_serves_every_cpu(tmp_path):
    """With ``NUMBA_CPU_NAME=generic`` (Numba's setting for a cache shared by machines, e.g.
    a cluster's home directory) Numba keys cached code on no CPU features at all, so the
    tile's geometry must not come from the host's: a cache written where AVX-512 is, read
    where it is not, ran an 8-row tile over 4-row panels (heap corruption, an abort)."""
    import subprocess
    import sys
    code = """
import sys
import llvmlite.binding as llvm
features = llvm.get_host_cpu_features()
features["avx512f"] = sys.argv[1] == "avx512"
llvm.get_host_cpu_features = lambda: features

import numpy as np
from tinygrad_rnn.backend import simd
rng = np.random.default_rng(0)
a, w = rng.standard_normal((9, 13)).astype(np.float32), rng.standard_normal((13, 40)).astype(np.float32)
out = np.full((9, 40), np.nan, np.float32)
simd.mm_panels(a, simd.pack_panels(w, simd.panel_width(np.float32)), out)
np.testing.assert_allclose(out, a.astype(np.float64) @ w, rtol=1e-5, atol=1e-4)
print("ok", simd.ROWS, bool(simd.mm_panels.stats.cache_hits))
"""
    env = {**os.environ, "NUMBA_CPU_NAME": "generic", "NUMBA_CACHE_DIR": str(tmp_path)}
    env.pop("NUMBA_CPU_FEATURES", None)
    env.pop("TINYGRAD_RNN_NO_CACHE", None)
    runs = [subprocess.run([sys.executable, "-c", code, host], capture_output=True, text=True, env=env, timeout=300)
            for host in ("avx512", "avx2")]
    for r in runs:
        assert r.returncode == 0 and r.stdout.startswith("ok"), (r.returncode, r.stderr[-2000:])
    (_, rows_a, _), (_, rows_b, hit) = (r.stdout.split() for r in runs)
    assert rows_a == rows_b and hit == "True"  # one geometry, and the second run read the first's cache


@pytest.mark.slow
def test_the_tile_calls_no_software_fma_where_the_target_has_no_fma():
    """The tile's multiply-adds fuse where the CPU has FMA and are a multiply and an add
    where it has none (``llvm.fmuladd``): ``llvm.fma`` must be exact, so a target without
    FMA (``NUMBA_CPU_NAME=generic``, the portable cache) called libm's fmaf per lane, 2.2
    against 34 GFLOP/s at (16, 128) @ (128, 512) on the Intel Xeon."""
    import subprocess
    import sys
    code = """
import re
import numpy as np
from tinygrad_rnn.backend import simd
calls = 0
for dtype in (np.float32, np.float64):
    a, out = np.ones((9, 3), dtype), np.empty((9, 5), dtype)
    simd.mm_panels(a, simd.pack_panels(np.ones((3, 5), dtype), simd.panel_width(dtype)), out)
    assert (out == 3).all()
for asm in simd.mm_panels.inspect_asm().values():
    calls += len(re.findall(r"\\bfmaf?\\b", asm))
print(calls)
"""
    env = {**os.environ, "NUMBA_CPU_NAME": "generic", "TINYGRAD_RNN_NO_CACHE": "1"}
    env.pop("NUMBA_CPU_FEATURES", None)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "0", (r.stdout, r.stderr[-2000:])
