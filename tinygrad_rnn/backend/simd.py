"""The in-kernel product of the compiled time loop: ``out = a @ w`` for one block of rows
at one step, written with explicit SIMD vectors.

LLVM does not turn a plain Numba loop nest into a register-blocked product: scalar tiles
stay scalar, and row tiles kept in memory are reloaded at every k. So the inner tile is
an intrinsic that emits the LLVM IR directly: ROWS rows x VECTORS vectors of
accumulators held in registers across the whole k loop, each step of k loading one
stretch of the weight (VECTORS vectors), broadcasting one element of each row and doing
ROWS x VECTORS fused multiply-adds. The weight is packed once per call into panels of
``panel_width`` contiguous columns (``pack_panels``), so each k reads the next contiguous
stretch: read in place, a 2048-column weight jumps 8 KiB per k, and the tile fell from 150
to 62 GFLOP/s at (16, 512) @ (512, 2048).

Single-threaded on the Intel Xeon host (AVX-512, float32, GFLOP/s, this product / the
dot-form loop it replaces / OpenBLAS np.matmul): (16, 32) @ (32, 128) 125 / 48 / 90;
(16, 128) @ (128, 512) 178 / 94 / 102; (16, 512) @ (512, 2048) 149 / 90 / 79;
(16, 2048) @ (2048, 512) 147 / 89 / 75. Tiles of 8x48, 4x64 and 12x32 were each slower
at some of these shapes (8x48: 134-194; 4x64: 103-195; 12x32: 111-134).
"""
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from ._jit import kernel


def _vector_bytes():
    """The SIMD register width: 64 bytes with AVX-512, else 32 (AVX2; LLVM splits wider
    vectors where there are no such registers, so this only decides speed). Read from the
    features Numba compiles for, which key its disk cache, not from the host's: with
    ``NUMBA_CPU_NAME=generic`` (a cache shared by machines) Numba compiles for none, and a
    tile chosen from the host's had code cached on an AVX-512 machine run 8-row tiles over
    another machine's 4-row panels."""
    from numba.core import config
    if config.CPU_FEATURES is not None:
        return 64 if "+avx512f" in config.CPU_FEATURES.split(",") else 32
    import llvmlite.binding as llvm
    return 64 if llvm.get_host_cpu_features().get("avx512f") else 32


VECTOR_BYTES = _vector_bytes()
# 16 accumulators + 2 weight vectors + 1 broadcast of the 32 AVX-512 registers; AVX2 has 16
ROWS, VECTORS = (8, 2) if VECTOR_BYTES == 64 else (4, 2)


def panel_width(dtype):
    """Columns per packed panel (one tile's width) for ``dtype``."""
    return VECTORS * VECTOR_BYTES // np.dtype(dtype).itemsize


def _tile_intrinsic(rows):
    """``tile(zero, pa, lda, pw, pc, ldc, K)``: ``C[r, :width] = sum_k A[r, k] W[k, :width]``
    for ``rows`` rows; pa, pw, pc are addresses, lda and ldc row strides in elements, the
    panel W contiguous (K, width); ``zero`` (0 of the dtype) picks float32 or float64."""
    @intrinsic
    def tile(typingctx, zero, pa, lda, pw, pc, ldc, K):
        sig = types.void(zero, types.intp, types.intp, types.intp, types.intp, types.intp, types.intp)

        def codegen(context, builder, signature, args):
            _, pa, lda, pw, pc, ldc, K = args
            f = ir.FloatType() if signature.args[0] == types.float32 else ir.DoubleType()
            size = 4 if signature.args[0] == types.float32 else 8
            lanes = VECTOR_BYTES // size
            vec = ir.VectorType(f, lanes)
            # fmuladd, not fma: fused where the target has FMA (bit-identical, as fast), a multiply
            # and an add where not; fma must be exact, which there is a libm call per lane
            fma = builder.module.declare_intrinsic(f"llvm.fmuladd.v{lanes}{'f32' if size == 4 else 'f64'}", (),
                                                   ir.FunctionType(vec, [vec, vec, vec]))
            i = pa.type

            def at(base, offset, ty):
                return builder.inttoptr(builder.add(base, offset), ty.as_pointer())
            c = lambda n: ir.Constant(i, n)  # noqa: E731
            row_a, row_c = builder.mul(lda, c(size)), builder.mul(ldc, c(size))
            entry = builder.basic_block
            loop, done = builder.append_basic_block("k"), builder.append_basic_block("k_done")
            builder.branch(loop)
            builder.position_at_end(loop)
            k = builder.phi(i)
            k.add_incoming(c(0), entry)
            acc = [builder.phi(vec) for _ in range(rows * VECTORS)]
            for a in acc:
                a.add_incoming(ir.Constant(vec, [0.0] * lanes), entry)
            w_k = builder.add(pw, builder.mul(k, c(size * lanes * VECTORS)))
            w = [builder.load(at(w_k, c(v * lanes * size), vec), align=size) for v in range(VECTORS)]
            a_k = builder.mul(k, c(size))
            every_lane = ir.Constant(ir.VectorType(ir.IntType(32), lanes), [0] * lanes)
            new = []
            for r in range(rows):
                x = builder.load(at(pa, builder.add(builder.mul(c(r), row_a), a_k), f), align=size)
                x = builder.shuffle_vector(builder.insert_element(ir.Constant(vec, ir.Undefined), x, ir.Constant(
                    ir.IntType(32), 0)), ir.Constant(vec, ir.Undefined), every_lane)
                new += [builder.call(fma, [x, w[v], acc[r * VECTORS + v]]) for v in range(VECTORS)]
            k_next = builder.add(k, c(1))
            k.add_incoming(k_next, loop)
            for a, n in zip(acc, new):
                a.add_incoming(n, loop)
            builder.cbranch(builder.icmp_signed("<", k_next, K), loop, done)
            builder.position_at_end(done)
            for r in range(rows):
                for v in range(VECTORS):
                    out = builder.add(builder.mul(c(r), row_c), c(v * lanes * size))
                    builder.store(new[r * VECTORS + v], at(pc, out, vec), align=size)
            return context.get_dummy_value()
        return sig, codegen
    return tile


_tile_rows, _tile_row = _tile_intrinsic(ROWS), _tile_intrinsic(1)


@kernel
def pack_panels(w, width):
    """``w`` (K, N), any strides, as (ceil(N / width), K, width) panels, zero-padded."""
    K, N = w.shape
    panels = np.zeros(((N + width - 1) // width, K, width), w.dtype)
    # a transposed view (the backward's w.T) is read along its columns: 1.1-1.2 ms against 3.0 ms
    # at (512, 2048) (AMD EPYC, one core)
    if w.strides[0] < w.strides[1]:
        for s in range(panels.shape[0]):
            for j in range(min(width, N - s * width)):
                for k in range(K):
                    panels[s, k, j] = w[k, s * width + j]
        return panels
    for s in range(panels.shape[0]):
        for k in range(K):
            for j in range(min(width, N - s * width)):
                panels[s, k, j] = w[k, s * width + j]
    return panels


@kernel
def mm_panels(a, panels, out):
    """``out = a @ w``, ``w`` given as ``pack_panels(w, panel_width(dtype))``: a and out
    with contiguous rows (any row stride), overwritten, not accumulated into."""
    B, K = a.shape
    N = out.shape[1]
    width = panels.shape[2]
    zero = np.zeros(1, out.dtype)[0]
    size = out.itemsize
    if K == 0 or a.strides[1] != size or out.strides[1] != size:  # never so in generated code
        for b in range(B):
            for n in range(N):
                s = zero
                for k in range(K):
                    s += a[b, k] * panels[n // width, k, n % width]
                out[b, n] = s
        return
    spill = np.empty((ROWS, width), out.dtype)  # a last panel narrower than the tile
    pa, pc, lda, ldc = a.ctypes.data, out.ctypes.data, a.strides[0] // size, out.strides[0] // size
    for s in range(panels.shape[0]):
        pw, n0 = panels[s].ctypes.data, s * width
        cols = min(width, N - n0)
        b = 0
        while b < B:
            rows = ROWS if B - b >= ROWS else 1
            dst, ld = (pc + (b * ldc + n0) * size, ldc) if cols == width else (spill.ctypes.data, width)
            if rows == ROWS:
                _tile_rows(zero, pa + b * lda * size, lda, pw, dst, ld, K)
            else:
                _tile_row(zero, pa + b * lda * size, lda, pw, dst, ld, K)
            if cols < width:
                for i in range(rows):
                    for j in range(cols):
                        out[b + i, n0 + j] = spill[i, j]
            b += rows
