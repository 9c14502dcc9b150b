"""Euclidean norms that neither underflow nor overflow while the elements are representable.

``sqrt(sum(g**2))`` loses every element below about 1e-154 in float64 (its square is
below the smallest subnormal) and overflows above about 1e154; per-step gradient norms
of long sequences go far below that (1e-187 at T = 1000 for an LSTM at init). As BLAS
``nrm2`` does, the elements are divided by the largest magnitude first, so that only the
rounding of the quotient remains. Where the plain sum of squares is safely inside the
normal range its result is kept as is, so norms that never came near the edge are the
same numbers as before.
"""
import numpy as np

# sum(g**2) is trusted when it lies in [tiny * 2**40, max * 2**-40] of its dtype: then the
# largest square is at least the sum / 2**40 (no array here has 10^12 elements), above
# the subnormal range, and the elements whose squares were lost add under 2**-52 of it.
_MARGIN = 2.0 ** 40


def _safe_range(dtype=np.float64):
    info = np.finfo(dtype)
    return float(info.tiny) * _MARGIN, float(info.max) / _MARGIN


def l2norm(a):
    """||a||_2 of an array (any shape), in float64, exact to rounding whenever the
    elements are representable: 0.0 only for an all-zero array."""
    a = np.asarray(a, np.float64)
    with np.errstate(over="ignore", under="ignore"):
        sq = float((a * a).sum())  # the formula the norms were taken with before: the same numbers
    lo, hi = _safe_range()
    if lo <= sq <= hi or sq == 0.0 and not a.any():
        return float(np.sqrt(sq))
    return _scaled(a)


def _scaled(a):
    peak = float(np.abs(a).max()) if a.size else 0.0
    if peak == 0.0 or not np.isfinite(peak):  # all zero, or an Inf or NaN element
        return peak
    # a power of two, so that the division itself is exact for normal numbers
    scale = 2.0 ** np.frexp(peak)[1]
    q = a / scale
    return float(np.sqrt(np.dot(q.ravel(), q.ravel()))) * scale


def safe_from_squares(sq, dtype=np.float64):
    """Whether norms taken as sqrt of these sums of squares, accumulated in ``dtype``, can be
    trusted: every sum inside the safe range (an exactly zero gradient cannot be told from
    an underflowed one, so a zero is not trusted)."""
    sq = np.asarray(sq, np.float64)
    lo, hi = _safe_range(dtype)
    return bool(np.all((sq >= lo) & (sq <= hi)))


def log10_norms(norms, logs=None):
    """log10 of each norm as a list, None for an exact zero (JSON has no -inf); ``logs``,
    if given, are the log10 values already measured (finite also below float64's range)."""
    norms = np.asarray(norms, np.float64)
    if logs is None:
        with np.errstate(divide="ignore"):
            logs = np.log10(norms)
    return [None if not np.isfinite(v) and v < 0 else float(v) for v in np.asarray(logs, np.float64).ravel()]


class GradProbe:
    """Per-step gradient norms of one layer's states, read after backward.

    Fused cells fill ``norms`` from their backward kernel; the reference path
    keeps each step's state tensors with ``retain_grad`` and reads their grads.
    """

    def __init__(self, order=None):
        self.norms = None
        self.log10_norms = None  # set where the kernels' rescaled pass measured them (below float64 too)
        self._states = []
        self.order = order  # a reverse direction's probe: result column t is processing step order[t]

    def track(self, states, computed=None, mask=None):
        """Keep one step's states. On a partly padded step ``states`` are the masked
        results and ``computed`` what ``step`` returned: a real row's total gradient
        (through the rest of the step too, such as c_t -> h_t) is on ``computed``, a
        padded row's on ``states``."""
        for s in (*states, *(computed or ())):
            if s.requires_grad:
                s.retain_grad()
        self._states.append((list(states), computed, mask))

    def result(self, num_states):
        """Array (num_states, T): ||dL/d state_t|| over batch and hidden, in time order."""
        out = self._result(num_states)
        return out if self.order is None else out[:, self.order]

    def result_log10(self, num_states):
        """Array (num_states, T): log10 of ``result`` (-inf for an exact zero); exact even
        where the norm itself is below float64's range, when the compiled path measured it."""
        if self.log10_norms is not None:
            out = np.asarray(self.log10_norms)
            return out if self.order is None else out[:, self.order]
        with np.errstate(divide="ignore"):
            return np.log10(self.result(num_states))

    def _result(self, num_states):
        if self.norms is not None:
            return np.asarray(self.norms)
        if not self._states:
            raise RuntimeError("no gradient norms recorded: run backward() after the forward pass")
        out = np.zeros((num_states, len(self._states)))
        for t, (states, computed, mask) in enumerate(self._states):
            for i, s in enumerate(states):
                g = _grad64(s)
                if computed is not None:
                    real = mask[:, None] > 0
                    g = np.where(real, _grad64(computed[i]), g)
                out[i, t] = l2norm(g)
        return out


def _grad64(t):
    return np.zeros(t.shape) if t.grad is None else t.grad.numpy().astype(np.float64)
