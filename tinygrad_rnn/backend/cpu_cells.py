"""Fused whole-sequence forward and backward for the built-in cells on the CPU.

The shape of the work (DESIGN.md, "Kernels"): the input projection for all steps
in one GEMM; per step one recurrent GEMM (BLAS, into a preallocated buffer) and
one fused pointwise kernel; weight gradients in one GEMM each at the end. The
time loop is plain Python: a step costs a few microseconds of dispatch, and
keeping the loop out of Numba keeps compiles short and BLAS calls free of
SciPy.

Gate layouts follow PyTorch: LSTM (i, f, g, o), GRU (r, z, n), each block H
wide. A step whose mask is 0 (past a sequence's length) carries the state
through unchanged and gets no gradient.

Every backward step kernel returns the squared norms of the total gradients
it was handed, so per-step norms for the diagnostics cost nothing extra.
"""
import numpy as np

from ._jit import kernel
from .cpu import sigmoid_scalar, tanh_scalar

GATES = {"rnn": 1, "lstm": 4, "gru": 3}
NUM_STATES = {"rnn": 1, "lstm": 2, "gru": 1}


# ---- pointwise step kernels (one fused pass per step) ---------------------------
# Written row by row with one simple loop per gate block: loops over contiguous
# rows with a single transcendental each vectorise, while one loop computing
# all four LSTM gates per element ran 3.5x slower (13.6 us vs 3.9 us, B=H=32).

@kernel
def _rnn_step_fwd(pre_x, pre_h, h_prev, m, relu, h):
    B, H = h.shape
    for b in range(B):
        px, ph, hb = pre_x[b], pre_h[b], h[b]
        if m[b] == 0:
            hb[:] = h_prev[b]
        elif relu:
            for j in range(H):
                v = px[j] + ph[j]
                hb[j] = v if v > 0 else 0
        else:
            for j in range(H):
                hb[j] = tanh_scalar(px[j] + ph[j])


@kernel
def _rnn_step_bwd(dy, dh_rec, pass_in, h, m, relu, dpre, pass_out):
    # The total dL/dh_t is summed here (upstream + recurrent + pass-through):
    # three NumPy temporaries per step saved.
    B, H = h.shape
    sq = 0.0
    for b in range(B):
        dyb, rb, pb, hb, dp, po = dy[b], dh_rec[b], pass_in[b], h[b], dpre[b], pass_out[b]
        for j in range(H):
            d = dyb[j] + rb[j] + pb[j]
            sq += d * d
        if m[b] == 0:
            dp[:] = 0
            for j in range(H):
                po[j] = dyb[j] + rb[j] + pb[j]
            continue
        po[:] = 0
        if relu:
            for j in range(H):
                dp[j] = (dyb[j] + rb[j] + pb[j]) if hb[j] > 0 else 0
        else:
            for j in range(H):
                dp[j] = (dyb[j] + rb[j] + pb[j]) * (1 - hb[j] * hb[j])
    return sq


@kernel
def _lstm_step_fwd(pre_x, pre_h, h_prev, c_prev, m, gates, h, c):
    B, H = h.shape
    for b in range(B):
        px, ph, gb, cb, hb, cp = pre_x[b], pre_h[b], gates[b], c[b], h[b], c_prev[b]
        if m[b] == 0:
            hb[:] = h_prev[b]
            cb[:] = cp
            gb[:] = 0
            continue
        for j in range(2 * H):                 # i, f
            gb[j] = sigmoid_scalar(px[j] + ph[j])
        for j in range(2 * H, 3 * H):          # g
            gb[j] = tanh_scalar(px[j] + ph[j])
        for j in range(3 * H, 4 * H):          # o
            gb[j] = sigmoid_scalar(px[j] + ph[j])
        for j in range(H):
            cj = gb[H + j] * cp[j] + gb[j] * gb[2 * H + j]
            cb[j] = cj
            hb[j] = gb[3 * H + j] * tanh_scalar(cj)


@kernel
def _lstm_step_bwd(dy, dh_rec, pass_in, dcy, dc_in, gates, c, c_prev, m, dgates, pass_out, dc_out):
    B, H = c.shape
    sq_h = 0.0
    sq_c = 0.0
    for b in range(B):
        dyb, rb, pb, dcyb, dcib = dy[b], dh_rec[b], pass_in[b], dcy[b], dc_in[b]
        gb, cb, cp, dg, dco, po = gates[b], c[b], c_prev[b], dgates[b], dc_out[b], pass_out[b]
        if m[b] == 0:
            dg[:] = 0
            for j in range(H):
                d = dyb[j] + rb[j] + pb[j]
                dcj = dcyb[j] + dcib[j]
                sq_h += d * d
                sq_c += dcj * dcj
                po[j] = d
                dco[j] = dcj
            continue
        for j in range(H):
            d = dyb[j] + rb[j] + pb[j]
            sq_h += d * d
            i, f, g, o = gb[j], gb[H + j], gb[2 * H + j], gb[3 * H + j]
            tc = tanh_scalar(cb[j])
            dcj = dcyb[j] + dcib[j] + d * o * (1 - tc * tc)  # total dL/dc_t
            sq_c += dcj * dcj
            dg[j] = dcj * g * i * (1 - i)
            dg[H + j] = dcj * cp[j] * f * (1 - f)
            dg[2 * H + j] = dcj * i * (1 - g * g)
            dg[3 * H + j] = d * tc * o * (1 - o)
            dco[j] = dcj * f
            po[j] = 0
    return sq_h, sq_c


@kernel
def _gru_step_fwd(pre_x, pre_h, b_hh, h_prev, m, gates, hn, h):
    # PyTorch's GRU: n = tanh(W_in x + b_in + r * (W_hn h + b_hn)).
    B, H = h.shape
    for b in range(B):
        px, ph, gb, hnb, hb, hp = pre_x[b], pre_h[b], gates[b], hn[b], h[b], h_prev[b]
        if m[b] == 0:
            hb[:] = hp
            gb[:] = 0
            hnb[:] = 0
            continue
        for j in range(2 * H):                 # r, z
            gb[j] = sigmoid_scalar(px[j] + ph[j] + b_hh[j])
        for j in range(H):
            hnj = ph[2 * H + j] + b_hh[2 * H + j]
            hnb[j] = hnj
            gb[2 * H + j] = tanh_scalar(px[2 * H + j] + gb[j] * hnj)
        for j in range(H):
            z = gb[H + j]
            hb[j] = (1 - z) * gb[2 * H + j] + z * hp[j]


@kernel
def _gru_step_bwd(dy, dh_rec, pass_in, gates, hn, h_prev, m, dgx, dgh, pass_out):
    B, H = h_prev.shape
    sq = 0.0
    for b in range(B):
        dyb, rb, pb, gb, hnb, hp = dy[b], dh_rec[b], pass_in[b], gates[b], hn[b], h_prev[b]
        gx, gh, po = dgx[b], dgh[b], pass_out[b]
        if m[b] == 0:
            gx[:] = 0
            gh[:] = 0
            for j in range(H):
                d = dyb[j] + rb[j] + pb[j]
                sq += d * d
                po[j] = d
            continue
        for j in range(H):
            d = dyb[j] + rb[j] + pb[j]
            sq += d * d
            r, z, n = gb[j], gb[H + j], gb[2 * H + j]
            dn = d * (1 - z) * (1 - n * n)
            dz = d * (hp[j] - n) * z * (1 - z)
            dr = dn * hnb[j] * r * (1 - r)
            gx[j], gx[H + j], gx[2 * H + j] = dr, dz, dn
            gh[j], gh[H + j], gh[2 * H + j] = dr, dz, dn * r
            po[j] = d * z
    return sq


# ---- whole-sequence drivers ---------------------------------------------------------
def _check(kind, x, states, w_ih, w_hh, b_ih, b_hh, mask):
    T, B, I = x.shape
    G, H = GATES[kind], w_hh.shape[1]
    expect = {"w_ih": (G * H, I), "w_hh": (G * H, H), "b_ih": (G * H,), "b_hh": (G * H,)}
    for name, arr in zip(expect, (w_ih, w_hh, b_ih, b_hh)):
        if arr.shape != expect[name]:
            raise ValueError(f"fused {kind}: {name} has shape {arr.shape}, expected {expect[name]}")
    for s in states:
        if s.shape != (B, H):
            raise ValueError(f"fused {kind}: state has shape {s.shape}, expected {(B, H)}")
    if mask.shape != (T, B):
        raise ValueError(f"fused {kind}: mask has shape {mask.shape}, expected {(T, B)}")
    if len({a.dtype for a in (x, w_ih, w_hh, b_ih, b_hh, *states)}) != 1:
        raise TypeError(f"fused {kind}: mixed dtypes {[a.dtype.name for a in (x, w_ih, w_hh, *states)]}")
    return T, B, I, G, H


def cell_forward(kind, x, states, w_ih, w_hh, b_ih, b_hh, mask, relu=False):
    """Run a built-in cell over a whole sequence.

    Returns ``Y`` of shape (T, num_states, B, H), the state after every step, and
    the residuals the backward needs.
    """
    T, B, I, G, H = _check(kind, x, states, w_ih, w_hh, b_ih, b_hh, mask)
    dt = x.dtype
    pre_x = np.matmul(x.reshape(T * B, I), w_ih.T).reshape(T, B, G * H)
    pre_x += b_ih if kind == "gru" else b_ih + b_hh
    w_hh_t = np.ascontiguousarray(w_hh.T)
    Y = np.empty((T, NUM_STATES[kind], B, H), dt)
    pre_h = np.empty((B, G * H), dt)
    gates = np.empty((T, B, G * H), dt) if kind != "rnn" else None
    hn = np.empty((T, B, H), dt) if kind == "gru" else None
    h, c = states[0], states[-1]
    for t in range(T):
        np.matmul(h, w_hh_t, out=pre_h)
        if kind == "rnn":
            _rnn_step_fwd(pre_x[t], pre_h, h, mask[t], relu, Y[t, 0])
        elif kind == "lstm":
            _lstm_step_fwd(pre_x[t], pre_h, h, c, mask[t], gates[t], Y[t, 0], Y[t, 1])
            c = Y[t, 1]
        else:
            _gru_step_fwd(pre_x[t], pre_h, b_hh, h, mask[t], gates[t], hn[t], Y[t, 0])
        h = Y[t, 0]
    return Y, (gates, hn)


def cell_backward(kind, dY, Y, residuals, x, states, w_ih, w_hh, mask, relu=False, need_dx=True):
    """Gradients of a fused sequence, in input order, plus per-step norms.

    Returns ``(dx, dstates, dw_ih, dw_hh, db_ih, db_hh, norms)`` where ``norms``
    is an array (num_states, T): ||dL/dh_t|| (and ||dL/dc_t|| for LSTM) over
    batch and hidden, each the total derivative through later steps.
    """
    gates, hn = residuals
    T, S, B, H = Y.shape
    I, G, dt = x.shape[2], GATES[kind], Y.dtype
    dY = np.ascontiguousarray(dY, dtype=dt)  # the kernels read rows of it
    dgx = np.empty((T, B, G * H), dt)
    dgh = np.empty((T, B, G * H), dt) if kind == "gru" else dgx
    # Ping-pong buffers: step t reads what step t+1 wrote, and writes the other one.
    rec_in, rec_out = np.zeros((B, H), dt), np.empty((B, H), dt)
    pass_in, pass_out = np.zeros((B, H), dt), np.empty((B, H), dt)
    dc_in, dc_out = np.zeros((B, H), dt), np.empty((B, H), dt)
    sq = np.zeros((S, T))
    for t in range(T - 1, -1, -1):
        if kind == "rnn":
            sq[0, t] = _rnn_step_bwd(dY[t, 0], rec_in, pass_in, Y[t, 0], mask[t], relu, dgx[t], pass_out)
        elif kind == "lstm":
            c_prev = Y[t - 1, 1] if t else states[1]
            sq[0, t], sq[1, t] = _lstm_step_bwd(dY[t, 0], rec_in, pass_in, dY[t, 1], dc_in, gates[t], Y[t, 1],
                                               c_prev, mask[t], dgx[t], pass_out, dc_out)
            dc_in, dc_out = dc_out, dc_in
        else:
            h_prev = Y[t - 1, 0] if t else states[0]
            sq[0, t] = _gru_step_bwd(dY[t, 0], rec_in, pass_in, gates[t], hn[t], h_prev, mask[t],
                                     dgx[t], dgh[t], pass_out)
        np.matmul(dgh[t], w_hh, out=rec_out)
        rec_in, rec_out = rec_out, rec_in
        pass_in, pass_out = pass_out, pass_in
    dh_next = rec_in + pass_in
    dc_next = dc_in
    h_prevs = np.concatenate([states[0][None], Y[:-1, 0]]) if T > 1 else states[0][None]
    dgx2, dgh2 = dgx.reshape(T * B, G * H), dgh.reshape(T * B, G * H)
    dw_ih = np.matmul(dgx2.T, x.reshape(T * B, I))
    dw_hh = np.matmul(dgh2.T, h_prevs.reshape(T * B, H))
    db_ih = dgx2.sum(axis=0)
    db_hh = dgh2.sum(axis=0)
    dx = np.matmul(dgx2, w_ih).reshape(T, B, I) if need_dx else None
    dstates = (dh_next, dc_next) if kind == "lstm" else (dh_next,)
    return dx, dstates, dw_ih, dw_hh, db_ih, db_hh, np.sqrt(sq)
