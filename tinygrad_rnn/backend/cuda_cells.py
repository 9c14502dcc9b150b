"""Fused whole-sequence forward and backward for the built-in cells on the GPU.

Same algorithm and layouts as ``cpu_cells.py`` (read that first): the input
projection of all steps in one GEMM; per step one recurrent GEMM and one fused
pointwise kernel (one thread per (batch, unit)); weight gradients in one GEMM
each at the end. The backward step kernel also folds in the upstream gradient
and the previous step's pass-through term, so a step is exactly two launches.
Per-step squared norms are added into a device array with atomics.
"""
import math

import numpy as np
from numba import cuda

from .cuda import (THREADS, TILE, CudaArray, _as_cuda, _blocks, _kernel, _matmul_kernel, concatenate,
                   matmul, to_numpy, zeros)

GATES = {"rnn": 1, "lstm": 4, "gru": 3}
NUM_STATES = {"rnn": 1, "lstm": 2, "gru": 1}
_F2 = "float32[:, ::1]"


@_kernel(f"void({_F2}, {_F2}, {_F2}, float32[::1], boolean, {_F2})")
def _rnn_step_fwd_kernel(pre_x, pre_h, h_prev, m, relu, h):
    i = cuda.grid(1)
    B, H = h.shape
    if i < B * H:
        b, j = i // H, i % H
        if m[b] == 0:
            h[b, j] = h_prev[b, j]
        else:
            v = pre_x[b, j] + pre_h[b, j]
            h[b, j] = (v if v > 0 else 0) if relu else math.tanh(v)


@_kernel(f"void({_F2}, {_F2}, {_F2}, {_F2}, float32[::1], boolean, {_F2}, {_F2}, float64[:, ::1], int64)")
def _rnn_step_bwd_kernel(dy, dh_rec, dh_pass_in, h, m, relu, dpre, dh_pass, sq, t):
    i = cuda.grid(1)
    B, H = h.shape
    if i < B * H:
        b, j = i // H, i % H
        d = dy[b, j] + dh_rec[b, j] + dh_pass_in[b, j]
        cuda.atomic.add(sq, (0, t), d * d)
        if m[b] == 0:
            dpre[b, j] = 0
            dh_pass[b, j] = d
        else:
            dh_pass[b, j] = 0
            if relu:
                dpre[b, j] = d if h[b, j] > 0 else 0
            else:
                dpre[b, j] = d * (1 - h[b, j] * h[b, j])


@_kernel(f"void({_F2}, {_F2}, {_F2}, {_F2}, float32[::1], {_F2}, {_F2}, {_F2})")
def _lstm_step_fwd_kernel(pre_x, pre_h, h_prev, c_prev, m, gates, h, c):
    i = cuda.grid(1)
    B, H = h.shape
    if i < B * H:
        b, j = i // H, i % H
        if m[b] == 0:
            h[b, j] = h_prev[b, j]
            c[b, j] = c_prev[b, j]
            for k in range(4):
                gates[b, k * H + j] = 0
            return
        ig = 0.5 + 0.5 * math.tanh(0.5 * (pre_x[b, j] + pre_h[b, j]))  # sigmoid
        fg = 0.5 + 0.5 * math.tanh(0.5 * (pre_x[b, H + j] + pre_h[b, H + j]))  # sigmoid
        gg = math.tanh(pre_x[b, 2 * H + j] + pre_h[b, 2 * H + j])
        og = 0.5 + 0.5 * math.tanh(0.5 * (pre_x[b, 3 * H + j] + pre_h[b, 3 * H + j]))  # sigmoid
        cj = fg * c_prev[b, j] + ig * gg
        gates[b, j] = ig
        gates[b, H + j] = fg
        gates[b, 2 * H + j] = gg
        gates[b, 3 * H + j] = og
        c[b, j] = cj
        h[b, j] = og * math.tanh(cj)


@_kernel(f"void({_F2}, {_F2}, {_F2}, {_F2}, {_F2}, {_F2}, {_F2}, {_F2}, float32[::1], {_F2}, {_F2}, {_F2}, "
         "float64[:, ::1], int64)")
def _lstm_step_bwd_kernel(dy, dcy, dh_rec, dh_pass_in, dc_in, gates, c, c_prev, m, dgates, dh_pass, dc_prev, sq, t):
    i = cuda.grid(1)
    B, H = c.shape
    if i < B * H:
        b, j = i // H, i % H
        d = dy[b, j] + dh_rec[b, j] + dh_pass_in[b, j]
        dcj = dcy[b, j] + dc_in[b, j]
        cuda.atomic.add(sq, (0, t), d * d)
        if m[b] == 0:
            for k in range(4):
                dgates[b, k * H + j] = 0
            dh_pass[b, j] = d
            dc_prev[b, j] = dcj
            cuda.atomic.add(sq, (1, t), dcj * dcj)
            return
        ig, fg, gg, og = gates[b, j], gates[b, H + j], gates[b, 2 * H + j], gates[b, 3 * H + j]
        tc = math.tanh(c[b, j])
        dcj = dcj + d * og * (1 - tc * tc)  # total dL/dc_t
        cuda.atomic.add(sq, (1, t), dcj * dcj)
        dgates[b, j] = dcj * gg * ig * (1 - ig)
        dgates[b, H + j] = dcj * c_prev[b, j] * fg * (1 - fg)
        dgates[b, 2 * H + j] = dcj * ig * (1 - gg * gg)
        dgates[b, 3 * H + j] = d * tc * og * (1 - og)
        dc_prev[b, j] = dcj * fg
        dh_pass[b, j] = 0


@_kernel(f"void({_F2}, {_F2}, float32[::1], {_F2}, float32[::1], {_F2}, {_F2}, {_F2})")
def _gru_step_fwd_kernel(pre_x, pre_h, b_hh, h_prev, m, gates, hn, h):
    i = cuda.grid(1)
    B, H = h.shape
    if i < B * H:
        b, j = i // H, i % H
        if m[b] == 0:
            h[b, j] = h_prev[b, j]
            hn[b, j] = 0
            for k in range(3):
                gates[b, k * H + j] = 0
            return
        r = 0.5 + 0.5 * math.tanh(0.5 * (pre_x[b, j] + pre_h[b, j] + b_hh[j]))  # sigmoid
        z = 0.5 + 0.5 * math.tanh(0.5 * (pre_x[b, H + j] + pre_h[b, H + j] + b_hh[H + j]))  # sigmoid
        hnj = pre_h[b, 2 * H + j] + b_hh[2 * H + j]
        n = math.tanh(pre_x[b, 2 * H + j] + r * hnj)
        gates[b, j] = r
        gates[b, H + j] = z
        gates[b, 2 * H + j] = n
        hn[b, j] = hnj
        h[b, j] = (1 - z) * n + z * h_prev[b, j]


@_kernel(f"void({_F2}, {_F2}, {_F2}, {_F2}, {_F2}, {_F2}, float32[::1], {_F2}, {_F2}, {_F2}, float64[:, ::1], int64)")
def _gru_step_bwd_kernel(dy, dh_rec, dh_pass_in, gates, hn, h_prev, m, dgx, dgh, dh_pass, sq, t):
    i = cuda.grid(1)
    B, H = h_prev.shape
    if i < B * H:
        b, j = i // H, i % H
        d = dy[b, j] + dh_rec[b, j] + dh_pass_in[b, j]
        cuda.atomic.add(sq, (0, t), d * d)
        if m[b] == 0:
            for k in range(3):
                dgx[b, k * H + j] = 0
                dgh[b, k * H + j] = 0
            dh_pass[b, j] = d
            return
        r, z, n = gates[b, j], gates[b, H + j], gates[b, 2 * H + j]
        dn = d * (1 - z) * (1 - n * n)
        dz = d * (h_prev[b, j] - n) * z * (1 - z)
        dr = dn * hn[b, j] * r * (1 - r)
        dgx[b, j] = dr
        dgx[b, H + j] = dz
        dgx[b, 2 * H + j] = dn
        dgh[b, j] = dr
        dgh[b, H + j] = dz
        dgh[b, 2 * H + j] = dn * r
        dh_pass[b, j] = d * z


def _mm_into(a, b, out):
    """out (n, m) = a (n, k) @ b (k, m) for 2-D contiguous device arrays, no allocation."""
    n, m = out.shape
    grid = ((m + TILE - 1) // TILE, (n + TILE - 1) // TILE, 1)
    _matmul_kernel[grid, (TILE, TILE)](a.reshape(1, *a.shape), b.reshape(1, *b.shape), out.reshape(1, n, m))


def _dev(a, shape):
    return a.buf.reshape(shape)


def cell_forward(kind, x, states, w_ih, w_hh, b_ih, b_hh, mask, relu=False):
    """GPU twin of ``cpu_cells.cell_forward``: returns ``(Y, residuals)``, Y (T, S, B, H)."""
    x, w_ih, w_hh, b_ih, b_hh = (_as_cuda(a) for a in (x, w_ih, w_hh, b_ih, b_hh))
    states = tuple(_as_cuda(s) for s in states)
    mask = _as_cuda(np.asarray(to_numpy(mask), x.dtype)) if not isinstance(mask, CudaArray) else mask
    T, B, I = x.shape
    G, H = GATES[kind], w_hh.shape[1]
    dt = x.dtype
    bias = b_ih if kind == "gru" else b_ih + b_hh
    pre_x = matmul(x.reshape(T * B, I), w_ih.T) + bias
    pre_x_d = _dev(pre_x, (T, B, G * H))
    w_hh_t = _dev(w_hh.T, (H, G * H))
    Y = cuda.device_array((T, NUM_STATES[kind], B, H), dt)
    gates = cuda.device_array((T, B, G * H), dt)
    hn = cuda.device_array((T, B, H), dt)
    pre_h = cuda.device_array((B, G * H), dt)
    m = _dev(mask, (T, B))
    h, c = _dev(states[0], (B, H)), _dev(states[-1], (B, H))
    blocks = _blocks(B * H)
    for t in range(T):
        _mm_into(h, w_hh_t, pre_h)
        if kind == "rnn":
            _rnn_step_fwd_kernel[blocks, THREADS](pre_x_d[t], pre_h, h, m[t], relu, Y[t, 0])
        elif kind == "lstm":
            _lstm_step_fwd_kernel[blocks, THREADS](pre_x_d[t], pre_h, h, c, m[t], gates[t], Y[t, 0], Y[t, 1])
            c = Y[t, 1]
        else:
            _gru_step_fwd_kernel[blocks, THREADS](pre_x_d[t], pre_h, b_hh.buf, h, m[t], gates[t], hn[t], Y[t, 0])
        h = Y[t, 0]
    return CudaArray(Y.reshape(-1), Y.shape), (gates, hn, mask)


def cell_backward(kind, dY, Y, residuals, x, states, w_ih, w_hh, mask, relu=False, need_dx=True):
    """GPU twin of ``cpu_cells.cell_backward``; ``norms`` comes back as a NumPy array."""
    gates, hn, mask = residuals
    x, w_ih, w_hh, dY = _as_cuda(x), _as_cuda(w_ih), _as_cuda(w_hh), _as_cuda(dY)
    T, S, B, H = Y.shape
    I, G, dt = x.shape[2], GATES[kind], Y.dtype
    Yd, dYd = _dev(Y, Y.shape), _dev(dY, Y.shape)
    h0, c0 = _dev(_as_cuda(states[0]), (B, H)), _dev(_as_cuda(states[-1]), (B, H))
    w_hh_d = _dev(w_hh, (G * H, H))
    m = _dev(mask, (T, B))
    dgx = cuda.device_array((T, B, G * H), dt)
    dgh = cuda.device_array((T, B, G * H), dt) if kind == "gru" else dgx
    # Ping-pong buffers: each step reads the *_in of the step after it and writes *_out.
    rec_in, rec_out = _dev(zeros((B, H), dt), (B, H)), cuda.device_array((B, H), dt)
    pass_in, pass_out = _dev(zeros((B, H), dt), (B, H)), cuda.device_array((B, H), dt)
    dc_in, dc_out = _dev(zeros((B, H), dt), (B, H)), cuda.device_array((B, H), dt)
    sq = cuda.to_device(np.zeros((S, T)))
    blocks = _blocks(B * H)
    for t in range(T - 1, -1, -1):
        if kind == "rnn":
            _rnn_step_bwd_kernel[blocks, THREADS](dYd[t, 0], rec_in, pass_in, Yd[t, 0], m[t], relu,
                                                  dgx[t], pass_out, sq, t)
        elif kind == "lstm":
            c_prev = Yd[t - 1, 1] if t else c0
            _lstm_step_bwd_kernel[blocks, THREADS](dYd[t, 0], dYd[t, 1], rec_in, pass_in, dc_in, gates[t],
                                                   Yd[t, 1], c_prev, m[t], dgx[t], pass_out, dc_out, sq, t)
            dc_in, dc_out = dc_out, dc_in
        else:
            h_prev = Yd[t - 1, 0] if t else h0
            _gru_step_bwd_kernel[blocks, THREADS](dYd[t, 0], rec_in, pass_in, gates[t], hn[t], h_prev, m[t],
                                                  dgx[t], dgh[t], pass_out, sq, t)
        _mm_into(dgh[t], w_hh_d, rec_out)
        rec_in, rec_out = rec_out, rec_in
        pass_in, pass_out = pass_out, pass_in
    dh0 = CudaArray(rec_in.reshape(-1), (B, H)) + CudaArray(pass_in.reshape(-1), (B, H))
    dgx2 = CudaArray(dgx.reshape(-1), (T * B, G * H))
    dgh2 = CudaArray(dgh.reshape(-1), (T * B, G * H))
    prev = [CudaArray(h0.reshape(-1), (1, B, H))] + ([CudaArray(Y.buf, Y.shape)[:-1, 0]] if T > 1 else [])
    h_prevs = concatenate(prev, 0).reshape(T * B, H)
    dw_ih = matmul(dgx2.T, _as_cuda(x).reshape(T * B, I))
    dw_hh = matmul(dgh2.T, h_prevs)
    db_ih = dgx2.sum(axis=0)
    db_hh = dgh2.sum(axis=0)
    dx = matmul(dgx2, w_ih).reshape(T, B, I) if need_dx else None
    dstates = (dh0, CudaArray(dc_in.reshape(-1), (B, H)).copy()) if kind == "lstm" else (dh0,)
    return dx, dstates, dw_ih, dw_hh, db_ih, db_hh, np.sqrt(sq.copy_to_host())
