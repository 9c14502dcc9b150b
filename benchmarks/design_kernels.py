"""Hand-written prototypes of the kernels the cell compiler should generate (issue 17).

Kept apart from the driver (bench_kernel_design.py) because Numba's cache is keyed on
the source file: editing the driver must not recompile these. Plain code meant to be
lifted into generated kernels: `_mm_nt` (the in-kernel product), the pointwise stages,
and the three driver shapes (per-step BLAS loop, batch split, hidden split).
"""
import numpy as np
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
# Pointwise stages: one loop per gate block, each touching few arrays. LLVM vectorises a
# loop only after runtime alias checks between every pair of arrays it stores to and loads
# from; the single fused loop (7 arrays) stayed scalar: 17-18 ns per hidden element against
# 6.4-8.9 split (LSTM forward, (32, H) rows, H = 32..512, one core, CPU time).
@njit(**JIT)
def _lstm_fwd_point(xw, P, p0, cprev, hnew, cnew, act, tcs, r0, r1, j0, j1):
    # rows r0..r1 (batch indices), hidden units j0..j1; P row = r - p0
    H = hnew.shape[1]
    for r in range(r0, r1):
        q = r - p0
        for j in range(j0, j1):
            act[r, j] = sigmoid_scalar(xw[r, j] + P[q, j])
        for j in range(j0, j1):
            act[r, H + j] = sigmoid_scalar(xw[r, H + j] + P[q, H + j])
        for j in range(j0, j1):
            act[r, 2 * H + j] = tanh_scalar(xw[r, 2 * H + j] + P[q, 2 * H + j])
        for j in range(j0, j1):
            act[r, 3 * H + j] = sigmoid_scalar(xw[r, 3 * H + j] + P[q, 3 * H + j])
        for j in range(j0, j1):
            cnew[r, j] = act[r, H + j] * cprev[r, j] + act[r, j] * act[r, 2 * H + j]
        for j in range(j0, j1):
            tcs[r, j] = tanh_scalar(cnew[r, j])
        for j in range(j0, j1):
            hnew[r, j] = act[r, 3 * H + j] * tcs[r, j]


@njit(**JIT)
def _lstm_bwd_point(dhrec, p0, dcarry, act, tcs, cprev, dG, r0, r1, j0, j1):
    # dh = 1 (d out.sum / d h_t) + the recurrent part; dcarry holds dL/dc_{t+1} f_{t+1} on entry,
    # dL/dc_t in the middle and dL/dc_t f_t on exit
    H = tcs.shape[1]
    one = np.ones(1, act.dtype)[0]
    for r in range(r0, r1):
        q = r - p0
        for j in range(j0, j1):
            tc = tcs[r, j]
            dcarry[q, j] += (one + dhrec[q, j]) * act[r, 3 * H + j] * (one - tc * tc)
        for j in range(j0, j1):
            gi = act[r, j]
            dG[r, j] = dcarry[q, j] * act[r, 2 * H + j] * gi * (one - gi)
        for j in range(j0, j1):
            gf = act[r, H + j]
            dG[r, H + j] = dcarry[q, j] * cprev[r, j] * gf * (one - gf)
        for j in range(j0, j1):
            gg = act[r, 2 * H + j]
            dG[r, 2 * H + j] = dcarry[q, j] * act[r, j] * (one - gg * gg)
        for j in range(j0, j1):
            go = act[r, 3 * H + j]
            dG[r, 3 * H + j] = (one + dhrec[q, j]) * tcs[r, j] * go * (one - go)
        for j in range(j0, j1):
            dcarry[q, j] *= act[r, H + j]


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
            act[r, j] = sigmoid_scalar(xw[r, j] + P[q, j])
        for j in range(j0, j1):
            act[r, H + j] = sigmoid_scalar(xw[r, H + j] + P[q, H + j])
        for j in range(j0, j1):
            hns[r, j] = P[q, 2 * H + j] + bhn[j]
        for j in range(j0, j1):
            act[r, 2 * H + j] = tanh_scalar(xw[r, 2 * H + j] + act[r, j] * hns[r, j])
        for j in range(j0, j1):
            gz = act[r, H + j]
            hnew[r, j] = (one - gz) * act[r, 2 * H + j] + gz * hprev[r, j]


@njit(**JIT)
def _gru_bwd_point(dhrec, p0, dcarry, act, hns, hprev, dGx, dGh, r0, r1, j0, j1):
    # dcarry holds dh_t * z_t from the step after (the direct path h_{t-1} -> h_t);
    # it is first turned into the whole dh_t, then into dh_t * z_t for the step before
    H = hns.shape[1]
    one = np.ones(1, act.dtype)[0]
    for r in range(r0, r1):
        q = r - p0
        for j in range(j0, j1):
            dcarry[q, j] += one + dhrec[q, j]
        for j in range(j0, j1):
            gn = act[r, 2 * H + j]
            dGx[r, 2 * H + j] = dcarry[q, j] * (one - act[r, H + j]) * (one - gn * gn)
        for j in range(j0, j1):
            gr = act[r, j]
            dGx[r, j] = dGx[r, 2 * H + j] * hns[r, j] * gr * (one - gr)
        for j in range(j0, j1):
            gz = act[r, H + j]
            dGx[r, H + j] = dcarry[q, j] * (hprev[r, j] - act[r, 2 * H + j]) * gz * (one - gz)
        for j in range(j0, j1):
            dGh[r, j] = dGx[r, j]
        for j in range(j0, j1):
            dGh[r, H + j] = dGx[r, H + j]
        for j in range(j0, j1):
            dGh[r, 2 * H + j] = dGx[r, 2 * H + j] * act[r, j]
        for j in range(j0, j1):
            dcarry[q, j] *= act[r, H + j]


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
