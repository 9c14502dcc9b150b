"""Which kernel design the cell compiler should generate: hand-written prototypes, measured.

    python benchmarks/bench_kernel_design.py [--cells lstm,gru] [--sizes 32,128,512]
        [--variants a,b,c,d] [--blocks 5] [--steps N] [--check] [--check64]
        [--threads-sweep] [--interference] [--product-bench]

One training step (forward + backward of out.sum()) of a one-layer LSTM / GRU,
T=100, B=32, input = hidden, float32. Every variant hoists the input projection
into one BLAS GEMM over all T*B rows and does the weight gradients as GEMMs at
the end; the variants differ in how the time loop and its recurrent product run:

  a  one njit loop over t: BLAS product per step (np.dot inside njit, BLAS's own
     threads) then the pointwise stage on the whole batch (today's design).
  b  batch split into blocks over the cores with prange; each block runs all T
     steps of its rows: np.dot on the block's rows, then the gates.
  c  as b, with the product done in the kernel (register-blocked dot-product
     form, 8 rows x 2 columns, weights read as rows of W.T).
  d  hidden split: one prange per step over slices of hidden units; each core
     computes the gate columns of its slice for every row with the in-kernel
     product, so its slice of W stays in its own L2.

PyTorch (torch.nn.LSTM / GRU, 2 threads) is timed the same way, each library in
its own block of steps after warm-ups, blocks alternating, min over blocks.
Prints ms per step and torch_ms / ours_ms (above 1: ours is faster).
--check compares every variant's output and gradients with a NumPy float64
reference (itself checked against PyTorch float64); --check64 also runs the
kernels in float64 against it (1e-9).
"""
import argparse
import os
import subprocess
import sys
import time

import tinygrad_rnn  # noqa: F401  (sets OPENBLAS_CORETYPE on AMD before NumPy loads)
import numpy as np
import numba
from numba import njit, prange

from tinygrad_rnn.backend.cpu import sigmoid_scalar, tanh_scalar

FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}  # the project's flags (NaN survives)
JIT = dict(cache=True, fastmath=FASTMATH, error_model="numpy", nogil=True, boundscheck=False)
PJIT = dict(JIT, parallel=True)


# ---- the in-kernel product ---------------------------------------------------
@njit(**JIT)
def _mm_nt(A, WT, out, j0, j1, o0):
    """out[:, o0 + j - j0] = A @ WT[j] for j in [j0, j1), i.e. A @ WT[j0:j1].T.

    Dot-product form: WT holds the weight matrix transposed (one row per output
    column), so the k loop reads two contiguous rows and LLVM vectorises it as
    a reduction (reassoc). 8 rows x 2 columns of accumulators stay in registers;
    8 rows per sweep means W is streamed m/8 times. The axpy form (acc[:, j] +=
    a * W[k, j]) kept its accumulators in memory and ran at half the speed.
    """
    m, K = A.shape
    zero = np.zeros(1, A.dtype)[0]  # typed 0 (x - x would be NaN for an inf)
    i = 0
    while i + 8 <= m:
        j = j0
        while j + 2 <= j1:
            c00 = zero; c01 = zero; c10 = zero; c11 = zero
            c20 = zero; c21 = zero; c30 = zero; c31 = zero
            c40 = zero; c41 = zero; c50 = zero; c51 = zero
            c60 = zero; c61 = zero; c70 = zero; c71 = zero
            for k in range(K):
                w0 = WT[j, k]; w1 = WT[j + 1, k]
                a = A[i, k]; c00 += a * w0; c01 += a * w1
                a = A[i + 1, k]; c10 += a * w0; c11 += a * w1
                a = A[i + 2, k]; c20 += a * w0; c21 += a * w1
                a = A[i + 3, k]; c30 += a * w0; c31 += a * w1
                a = A[i + 4, k]; c40 += a * w0; c41 += a * w1
                a = A[i + 5, k]; c50 += a * w0; c51 += a * w1
                a = A[i + 6, k]; c60 += a * w0; c61 += a * w1
                a = A[i + 7, k]; c70 += a * w0; c71 += a * w1
            o = o0 + j - j0
            out[i, o] = c00; out[i, o + 1] = c01
            out[i + 1, o] = c10; out[i + 1, o + 1] = c11
            out[i + 2, o] = c20; out[i + 2, o + 1] = c21
            out[i + 3, o] = c30; out[i + 3, o + 1] = c31
            out[i + 4, o] = c40; out[i + 4, o + 1] = c41
            out[i + 5, o] = c50; out[i + 5, o + 1] = c51
            out[i + 6, o] = c60; out[i + 6, o + 1] = c61
            out[i + 7, o] = c70; out[i + 7, o + 1] = c71
            j += 2
        if j < j1:  # odd column count
            for r in range(i, i + 8):
                s = zero
                for k in range(K):
                    s += A[r, k] * WT[j, k]
                out[r, o0 + j - j0] = s
        i += 8
    for r in range(i, m):  # rows left over when m is not a multiple of 8
        for j in range(j0, j1):
            s = zero
            for k in range(K):
                s += A[r, k] * WT[j, k]
            out[r, o0 + j - j0] = s


# ---- LSTM pointwise stages (gate order i, f, g, o as in PyTorch) ---------------
@njit(**JIT)
def _lstm_fwd_point(xw, P, p0, cprev, hnew, cnew, act, tcs, r0, r1, j0, j1):
    # rows r0..r1 (batch indices), hidden units j0..j1; P row = r - p0
    H = hnew.shape[1]
    for r in range(r0, r1):
        q = r - p0
        for j in range(j0, j1):
            gi = sigmoid_scalar(xw[r, j] + P[q, j])
            gf = sigmoid_scalar(xw[r, H + j] + P[q, H + j])
            gg = tanh_scalar(xw[r, 2 * H + j] + P[q, 2 * H + j])
            go = sigmoid_scalar(xw[r, 3 * H + j] + P[q, 3 * H + j])
            c = gf * cprev[r, j] + gi * gg
            tc = tanh_scalar(c)
            act[r, j] = gi; act[r, H + j] = gf; act[r, 2 * H + j] = gg; act[r, 3 * H + j] = go
            cnew[r, j] = c
            tcs[r, j] = tc
            hnew[r, j] = go * tc


@njit(**JIT)
def _lstm_bwd_point(dhrec, p0, dcarry, act, tcs, cprev, dG, r0, r1, j0, j1):
    # dh = 1 (d out.sum / d h_t) + the recurrent part; dcarry holds dL/dc_t on entry
    H = tcs.shape[1]
    one = np.ones(1, act.dtype)[0]
    for r in range(r0, r1):
        q = r - p0
        for j in range(j0, j1):
            gi = act[r, j]; gf = act[r, H + j]; gg = act[r, 2 * H + j]; go = act[r, 3 * H + j]
            tc = tcs[r, j]
            dh = one + dhrec[q, j]
            dc = dcarry[q, j] + dh * go * (one - tc * tc)
            dG[r, j] = dc * gg * gi * (one - gi)
            dG[r, H + j] = dc * cprev[r, j] * gf * (one - gf)
            dG[r, 2 * H + j] = dc * gi * (one - gg * gg)
            dG[r, 3 * H + j] = dh * tc * go * (one - go)
            dcarry[q, j] = dc * gf


# ---- LSTM kernels --------------------------------------------------------------
@njit(**JIT)
def _lstm_fwd_a(XW, Wh, hs, cs, act, tcs):
    T, B, G = XW.shape
    H = G // 4
    P = np.empty((B, G), XW.dtype)
    for t in range(T):
        np.dot(hs[t], Wh, P)
        _lstm_fwd_point(XW[t], P, 0, cs[t], hs[t + 1], cs[t + 1], act[t], tcs[t], 0, B, 0, H)


@njit(**JIT)
def _lstm_bwd_a(WhT, cs, act, tcs, dG):
    T, B, G = act.shape
    H = G // 4
    dhrec = np.zeros((B, H), act.dtype)
    dcarry = np.zeros((B, H), act.dtype)
    for t in range(T - 1, -1, -1):
        if t < T - 1:
            np.dot(dG[t + 1], WhT, dhrec)
        _lstm_bwd_point(dhrec, 0, dcarry, act[t], tcs[t], cs[t], dG[t], 0, B, 0, H)


@njit(**PJIT)
def _lstm_fwd_bc(XW, Wh, WhT, hs, cs, act, tcs, nblk, in_kernel):
    T, B, G = XW.shape
    H = G // 4
    for p in prange(nblk):
        r0 = p * B // nblk
        r1 = (p + 1) * B // nblk
        P = np.empty((r1 - r0, G), XW.dtype)
        for t in range(T):
            if in_kernel:
                _mm_nt(hs[t, r0:r1], WhT, P, 0, G, 0)
            else:
                np.dot(hs[t, r0:r1], Wh, P)
            _lstm_fwd_point(XW[t], P, r0, cs[t], hs[t + 1], cs[t + 1], act[t], tcs[t], r0, r1, 0, H)


@njit(**PJIT)
def _lstm_bwd_bc(Wh, WhT, cs, act, tcs, dG, nblk, in_kernel):
    T, B, G = act.shape
    H = G // 4
    for p in prange(nblk):
        r0 = p * B // nblk
        r1 = (p + 1) * B // nblk
        dhrec = np.zeros((r1 - r0, H), act.dtype)
        dcarry = np.zeros((r1 - r0, H), act.dtype)
        for t in range(T - 1, -1, -1):
            if t < T - 1:
                if in_kernel:
                    _mm_nt(dG[t + 1, r0:r1], Wh, dhrec, 0, H, 0)
                else:
                    np.dot(dG[t + 1, r0:r1], WhT, dhrec)
            _lstm_bwd_point(dhrec, r0, dcarry, act[t], tcs[t], cs[t], dG[t], r0, r1, 0, H)


@njit(**PJIT)
def _lstm_fwd_d(XW, WhT, hs, cs, act, tcs, nsplit):
    T, B, G = XW.shape
    H = G // 4
    P = np.empty((B, G), XW.dtype)
    for t in range(T):  # one fork-join per step: step t+1 needs all of h_t
        for p in prange(nsplit):
            j0 = p * H // nsplit
            j1 = (p + 1) * H // nsplit
            for g in range(4):
                _mm_nt(hs[t], WhT, P, g * H + j0, g * H + j1, g * H + j0)
            _lstm_fwd_point(XW[t], P, 0, cs[t], hs[t + 1], cs[t + 1], act[t], tcs[t], 0, B, j0, j1)


@njit(**PJIT)
def _lstm_bwd_d(Wh, cs, act, tcs, dG, nsplit):
    T, B, G = act.shape
    H = G // 4
    dhrec = np.zeros((B, H), act.dtype)
    dcarry = np.zeros((B, H), act.dtype)
    for t in range(T - 1, -1, -1):
        for p in prange(nsplit):
            j0 = p * H // nsplit
            j1 = (p + 1) * H // nsplit
            if t < T - 1:  # dh[:, j0:j1] needs all of dG[t+1] and rows j0..j1 of Wh
                _mm_nt(dG[t + 1], Wh, dhrec, j0, j1, j0)
            _lstm_bwd_point(dhrec, 0, dcarry, act[t], tcs[t], cs[t], dG[t], 0, B, j0, j1)


# ---- GRU pointwise stages (PyTorch's: r, z, n; n = tanh(xn + r * (h Whn + bhn))) ---
@njit(**JIT)
def _gru_fwd_point(xw, P, p0, bhn, hprev, hnew, act, hns, r0, r1, j0, j1):
    H = hnew.shape[1]
    one = np.ones(1, hprev.dtype)[0]
    for r in range(r0, r1):
        q = r - p0
        for j in range(j0, j1):
            gr = sigmoid_scalar(xw[r, j] + P[q, j])
            gz = sigmoid_scalar(xw[r, H + j] + P[q, H + j])
            hn = P[q, 2 * H + j] + bhn[j]
            gn = tanh_scalar(xw[r, 2 * H + j] + gr * hn)
            act[r, j] = gr; act[r, H + j] = gz; act[r, 2 * H + j] = gn
            hns[r, j] = hn
            hnew[r, j] = (one - gz) * gn + gz * hprev[r, j]


@njit(**JIT)
def _gru_bwd_point(dhrec, p0, dcarry, act, hns, hprev, dGx, dGh, r0, r1, j0, j1):
    # dcarry holds dh_t * z_t from the step after (the direct path h_{t-1} -> h_t)
    H = hns.shape[1]
    one = np.ones(1, act.dtype)[0]
    for r in range(r0, r1):
        q = r - p0
        for j in range(j0, j1):
            gr = act[r, j]; gz = act[r, H + j]; gn = act[r, 2 * H + j]
            dh = one + dhrec[q, j] + dcarry[q, j]
            dan = dh * (one - gz) * (one - gn * gn)
            dar = dan * hns[r, j] * gr * (one - gr)
            daz = dh * (hprev[r, j] - gn) * gz * (one - gz)
            dGx[r, j] = dar; dGx[r, H + j] = daz; dGx[r, 2 * H + j] = dan
            dGh[r, j] = dar; dGh[r, H + j] = daz; dGh[r, 2 * H + j] = dan * gr
            dcarry[q, j] = dh * gz


# ---- GRU kernels ---------------------------------------------------------------
@njit(**JIT)
def _gru_fwd_a(XW, Wh, bhn, hs, act, hns):
    T, B, G = XW.shape
    H = G // 3
    P = np.empty((B, G), XW.dtype)
    for t in range(T):
        np.dot(hs[t], Wh, P)
        _gru_fwd_point(XW[t], P, 0, bhn, hs[t], hs[t + 1], act[t], hns[t], 0, B, 0, H)


@njit(**JIT)
def _gru_bwd_a(WhT, hs, act, hns, dGx, dGh):
    T, B, G = act.shape
    H = G // 3
    dhrec = np.zeros((B, H), act.dtype)
    dcarry = np.zeros((B, H), act.dtype)
    for t in range(T - 1, -1, -1):
        if t < T - 1:
            np.dot(dGh[t + 1], WhT, dhrec)
        _gru_bwd_point(dhrec, 0, dcarry, act[t], hns[t], hs[t], dGx[t], dGh[t], 0, B, 0, H)


@njit(**PJIT)
def _gru_fwd_bc(XW, Wh, WhT, bhn, hs, act, hns, nblk, in_kernel):
    T, B, G = XW.shape
    H = G // 3
    for p in prange(nblk):
        r0 = p * B // nblk
        r1 = (p + 1) * B // nblk
        P = np.empty((r1 - r0, G), XW.dtype)
        for t in range(T):
            if in_kernel:
                _mm_nt(hs[t, r0:r1], WhT, P, 0, G, 0)
            else:
                np.dot(hs[t, r0:r1], Wh, P)
            _gru_fwd_point(XW[t], P, r0, bhn, hs[t], hs[t + 1], act[t], hns[t], r0, r1, 0, H)


@njit(**PJIT)
def _gru_bwd_bc(Wh, WhT, hs, act, hns, dGx, dGh, nblk, in_kernel):
    T, B, G = act.shape
    H = G // 3
    for p in prange(nblk):
        r0 = p * B // nblk
        r1 = (p + 1) * B // nblk
        dhrec = np.zeros((r1 - r0, H), act.dtype)
        dcarry = np.zeros((r1 - r0, H), act.dtype)
        for t in range(T - 1, -1, -1):
            if t < T - 1:
                if in_kernel:
                    _mm_nt(dGh[t + 1, r0:r1], Wh, dhrec, 0, H, 0)
                else:
                    np.dot(dGh[t + 1, r0:r1], WhT, dhrec)
            _gru_bwd_point(dhrec, r0, dcarry, act[t], hns[t], hs[t], dGx[t], dGh[t], r0, r1, 0, H)


@njit(**PJIT)
def _gru_fwd_d(XW, WhT, bhn, hs, act, hns, nsplit):
    T, B, G = XW.shape
    H = G // 3
    P = np.empty((B, G), XW.dtype)
    for t in range(T):
        for p in prange(nsplit):
            j0 = p * H // nsplit
            j1 = (p + 1) * H // nsplit
            for g in range(3):
                _mm_nt(hs[t], WhT, P, g * H + j0, g * H + j1, g * H + j0)
            _gru_fwd_point(XW[t], P, 0, bhn, hs[t], hs[t + 1], act[t], hns[t], 0, B, j0, j1)


@njit(**PJIT)
def _gru_bwd_d(Wh, hs, act, hns, dGx, dGh, nsplit):
    T, B, G = act.shape
    H = G // 3
    dhrec = np.zeros((B, H), act.dtype)
    dcarry = np.zeros((B, H), act.dtype)
    for t in range(T - 1, -1, -1):
        for p in prange(nsplit):
            j0 = p * H // nsplit
            j1 = (p + 1) * H // nsplit
            if t < T - 1:
                _mm_nt(dGh[t + 1], Wh, dhrec, j0, j1, j0)
            _gru_bwd_point(dhrec, 0, dcarry, act[t], hns[t], hs[t], dGx[t], dGh[t], 0, B, j0, j1)


# ---- drivers -------------------------------------------------------------------
def kernel_blas():
    """The OpenBLAS that np.dot inside njit calls (scipy's, not NumPy's), as a threadpoolctl controller.

    np.dot in njit goes through scipy.linalg.cython_blas. Called from prange
    threads of the OpenMP layer, a pthreads OpenBLAS with 2 threads prints
    "Detect OpenMP Loop and this application may hang" on every call, so the
    batch-split driver drops scipy's OpenBLAS to 1 thread for the kernel and
    restores it after (NumPy's OpenBLAS, used by the hoisted GEMMs, is a
    separate library and keeps its threads).
    """
    from threadpoolctl import ThreadpoolController
    import scipy.linalg.cython_blas  # noqa: F401  (loads it)
    libs = [c for c in ThreadpoolController().lib_controllers
            if c.internal_api == "openblas" and "scipy.libs" in c.filepath]
    return libs[0] if libs else None


KERNEL_BLAS = None


class one_blas_thread:
    def __enter__(self):
        self.n = KERNEL_BLAS.num_threads if KERNEL_BLAS else None
        if self.n and self.n != 1:
            KERNEL_BLAS.set_num_threads(1)

    def __exit__(self, *exc):
        if self.n and self.n != 1:
            KERNEL_BLAS.set_num_threads(self.n)


GATES = {"lstm": 4, "gru": 3}


def make_params(cell, H, dtype, seed=0):
    rng = np.random.default_rng(seed)
    G = GATES[cell] * H
    s = 1 / np.sqrt(H)
    p = {"Wx": rng.uniform(-s, s, (H, G)), "Wh": rng.uniform(-s, s, (H, G)), "b": rng.uniform(-s, s, G)}
    if cell == "gru":
        p["bhn"] = rng.uniform(-s, s, H)
    return {k: v.astype(dtype) for k, v in p.items()}


class Ours:
    """One variant's training step with its buffers allocated once (as a layer would)."""

    def __init__(self, cell, variant, x, params):
        self.cell, self.variant, self.x, self.p = cell, variant, x, params
        T, B, I = x.shape
        H = params["Wh"].shape[0]
        G = params["Wh"].shape[1]
        dt = x.dtype
        self.WhT = np.ascontiguousarray(params["Wh"].T)  # a layer keeps this packed copy per update
        self.xf = x.reshape(T * B, I)
        self.XW = np.empty((T, B, G), dt)
        self.hs = np.zeros((T + 1, B, H), dt)
        self.act = np.empty((T, B, G), dt)
        self.dGx = np.empty((T, B, G), dt)
        if cell == "lstm":
            self.cs = np.zeros((T + 1, B, H), dt)
            self.tcs = np.empty((T, B, H), dt)
        else:
            self.hns = np.empty((T, B, H), dt)
            self.dGh = np.empty((T, B, G), dt)
        self.nthreads = numba.get_num_threads()

    def __call__(self):
        p, v, n = self.p, self.variant, self.nthreads
        T, B, G = self.XW.shape
        np.dot(self.xf, p["Wx"], out=self.XW.reshape(T * B, G))
        self.XW += p["b"]
        if self.cell == "lstm":
            a = (self.XW, self.hs, self.cs, self.act, self.tcs)
            if v == "a":
                _lstm_fwd_a(self.XW, p["Wh"], self.hs, self.cs, self.act, self.tcs)
                _lstm_bwd_a(self.WhT, self.cs, self.act, self.tcs, self.dGx)
            elif v in "bc":
                with one_blas_thread():
                    _lstm_fwd_bc(self.XW, p["Wh"], self.WhT, *a[1:], n, v == "c")
                    _lstm_bwd_bc(p["Wh"], self.WhT, self.cs, self.act, self.tcs, self.dGx, n, v == "c")
            else:
                _lstm_fwd_d(self.XW, self.WhT, *a[1:], n)
                _lstm_bwd_d(p["Wh"], self.cs, self.act, self.tcs, self.dGx, n)
            dGh = self.dGx
        else:
            if v == "a":
                _gru_fwd_a(self.XW, p["Wh"], p["bhn"], self.hs, self.act, self.hns)
                _gru_bwd_a(self.WhT, self.hs, self.act, self.hns, self.dGx, self.dGh)
            elif v in "bc":
                with one_blas_thread():
                    _gru_fwd_bc(self.XW, p["Wh"], self.WhT, p["bhn"], self.hs, self.act, self.hns, n, v == "c")
                    _gru_bwd_bc(p["Wh"], self.WhT, self.hs, self.act, self.hns, self.dGx, self.dGh, n,
                                v == "c")
            else:
                _gru_fwd_d(self.XW, self.WhT, p["bhn"], self.hs, self.act, self.hns, n)
                _gru_bwd_d(p["Wh"], self.hs, self.act, self.hns, self.dGx, self.dGh, n)
            dGh = self.dGh
        H = self.hs.shape[2]
        gx = self.dGx.reshape(T * B, G)
        gh = dGh.reshape(T * B, G)
        grads = {"Wx": self.xf.T @ gx, "Wh": self.hs[:-1].reshape(T * B, H).T @ gh, "b": gx.sum(axis=0)}
        if self.cell == "gru":
            grads["bhn"] = gh[:, 2 * H:].sum(axis=0)
        return self.hs[1:], grads


def reference(cell, x, p):
    """Plain NumPy float64 forward and backward of out.sum()."""
    x = x.astype(np.float64)
    p = {k: v.astype(np.float64) for k, v in p.items()}
    T, B, _ = x.shape
    H = p["Wh"].shape[0]
    sig = lambda v: 1 / (1 + np.exp(-v))
    h = np.zeros((B, H)); c = np.zeros((B, H))
    tape, outs = [], []
    for t in range(T):
        xw = x[t] @ p["Wx"] + p["b"]
        hw = h @ p["Wh"]
        if cell == "lstm":
            i, f, g, o = (xw + hw).reshape(B, 4, H).transpose(1, 0, 2)
            i, f, g, o = sig(i), sig(f), np.tanh(g), sig(o)
            cn = f * c + i * g
            tape.append((h, c, i, f, g, o, np.tanh(cn)))
            c = cn
            h = o * np.tanh(cn)
        else:
            r = sig(xw[:, :H] + hw[:, :H]); z = sig(xw[:, H:2 * H] + hw[:, H:2 * H])
            hn = hw[:, 2 * H:] + p["bhn"]
            n = np.tanh(xw[:, 2 * H:] + r * hn)
            tape.append((h, r, z, n, hn))
            h = (1 - z) * n + z * h
        outs.append(h)
    grads = {k: np.zeros_like(v) for k, v in p.items()}
    dh_next = np.zeros((B, H)); dc_next = np.zeros((B, H))
    for t in range(T - 1, -1, -1):
        dh = 1 + dh_next
        if cell == "lstm":
            hp, cp, i, f, g, o, tc = tape[t]
            dc = dc_next + dh * o * (1 - tc ** 2)
            dG = np.concatenate([dc * g * i * (1 - i), dc * cp * f * (1 - f), dc * i * (1 - g ** 2),
                                 dh * tc * o * (1 - o)], axis=1)
            dc_next = dc * f
            dGh = dG
            dh_next = dG @ p["Wh"].T
        else:
            hp, r, z, n, hn = tape[t]
            dan = dh * (1 - z) * (1 - n ** 2)
            dar = dan * hn * r * (1 - r)
            daz = dh * (hp - n) * z * (1 - z)
            dG = np.concatenate([dar, daz, dan], axis=1)
            dGh = np.concatenate([dar, daz, dan * r], axis=1)
            grads["bhn"] += (dan * r).sum(0)
            dh_next = dGh @ p["Wh"].T + dh * z
        grads["Wx"] += x[t].T @ dG
        grads["Wh"] += hp.T @ dGh
        grads["b"] += dG.sum(0)
    return np.stack(outs), grads


def check_reference_against_torch(cell, x, p):
    import torch
    out, grads = reference(cell, x, p)
    H = p["Wh"].shape[0]
    m = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell](H, H).double()
    with torch.no_grad():
        m.weight_ih_l0.copy_(torch.tensor(p["Wx"].T.astype(np.float64)))
        m.weight_hh_l0.copy_(torch.tensor(p["Wh"].T.astype(np.float64)))
        m.bias_ih_l0.copy_(torch.tensor(p["b"].astype(np.float64)))
        m.bias_hh_l0.zero_()
        if cell == "gru":
            m.bias_hh_l0[2 * H:] = torch.tensor(p["bhn"].astype(np.float64))
    y, _ = m(torch.tensor(x.astype(np.float64)))
    y.sum().backward()
    errs = [np.abs(y.detach().numpy() - out).max(),
            np.abs(m.weight_ih_l0.grad.numpy().T - grads["Wx"]).max(),
            np.abs(m.weight_hh_l0.grad.numpy().T - grads["Wh"]).max(),
            np.abs(m.bias_ih_l0.grad.numpy() - grads["b"]).max()]
    return max(errs)


def rel_err(a, b):
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def check_variant(cell, variant, x, p, ref):
    out, grads = Ours(cell, variant, x, p)()
    rout, rgrads = ref
    return max([rel_err(out, rout)] + [rel_err(grads[k], rgrads[k]) for k in rgrads])


def torch_step(cell, x):
    import torch
    H = x.shape[2]
    m = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell](H, H)
    xt = torch.tensor(x)

    def step():
        m.zero_grad()
        out, _ = m(xt)
        out.sum().backward()
    return step


def block_min_ms(fns, blocks, steps):
    """{name: ms per step}: each fn runs `steps` steps per block, blocks alternate, min over blocks."""
    for fn in fns.values():
        fn(); fn()
    best = {k: float("inf") for k in fns}
    for _ in range(blocks):
        for name, fn in fns.items():
            fn()  # one warm-up step at the head of each block
            t0 = time.perf_counter()
            for _ in range(steps):
                fn()
            best[name] = min(best[name], (time.perf_counter() - t0) / steps * 1e3)
    return best


def steps_for(H):
    return {32: 20, 64: 10, 128: 6, 256: 3}.get(H, 2)


def cpu_name():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(l.split(":", 1)[1].strip() for l in out.splitlines() if l.startswith("Model name"))
    except (OSError, StopIteration):
        return "unknown CPU"


def run_main(args):
    global KERNEL_BLAS
    KERNEL_BLAS = kernel_blas()
    import torch
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    print(f"CPU {cpu_name()}; numba {numba.__version__} threads {numba.get_num_threads()} "
          f"layer {os.environ.get('NUMBA_THREADING_LAYER', 'default')}; torch {torch.__version__} "
          f"threads {torch.get_num_threads()}; T={args.seq_len} B={args.batch} float32", flush=True)
    variants = args.variants.split(",")
    print(f"{'cell':5} {'H':>4} {'torch ms':>9} " + " ".join(f"{v + ' ms':>8} {'ratio':>6}" for v in variants),
          flush=True)
    rng = np.random.default_rng(1)
    for cell in args.cells.split(","):
        for H in map(int, args.sizes.split(",")):
            x = rng.standard_normal((args.seq_len, args.batch, H)).astype(np.float32)
            p = make_params(cell, H, np.float32)
            if args.check or args.check64:
                ref = reference(cell, x, p)
                msg = [f"reference vs torch f64 {check_reference_against_torch(cell, x, p):.1e}"]
                for v in variants:
                    msg.append(f"{v}: f32 {check_variant(cell, v, x, p, ref):.1e}")
                    if args.check64:
                        p64 = {k: w.astype(np.float64) for k, w in p.items()}
                        msg.append(f"f64 {check_variant(cell, v, x.astype(np.float64), p64, ref):.1e}")
                print(f"  check {cell} H={H}: " + ", ".join(msg), flush=True)
            fns = {"torch": torch_step(cell, x)}
            for v in variants:
                fns[v] = Ours(cell, v, x, p)
            ms = block_min_ms(fns, args.blocks, args.steps or steps_for(H))
            print(f"{cell:5} {H:4d} {ms['torch']:9.2f} "
                  + " ".join(f"{ms[v]:8.2f} {ms['torch'] / ms[v]:6.2f}" for v in variants), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", default="lstm,gru")
    ap.add_argument("--sizes", default="32,128,512")
    ap.add_argument("--variants", default="a,b,c,d")
    ap.add_argument("--seq-len", type=int, default=100)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--blocks", type=int, default=5)
    ap.add_argument("--steps", type=int, default=0, help="steps per block (default by size)")
    ap.add_argument("--check", action="store_true", help="compare with the float64 reference first")
    ap.add_argument("--check64", action="store_true", help="also run the kernels in float64")
    args = ap.parse_args()
    run_main(args)


if __name__ == "__main__":
    main()
