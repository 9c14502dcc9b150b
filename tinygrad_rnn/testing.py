"""Tools for people who extend tinygrad_rnn: gradient checks in float64."""
import numpy as np

from .tape import no_grad
from .tensor import Tensor


class GradcheckError(AssertionError):
    """Analytic and numerical gradients disagree."""


def _scalarise(out, rng):
    """Reduce an output to a scalar with fixed random weights (tests every element)."""
    if out.size == 1:
        return out.sum(), None
    w = Tensor(rng.standard_normal(out.shape), dtype=out.dtype)
    return (out * w).sum(), w


def gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-3, seed=0):
    """Compare the tape's gradients of ``fn(*inputs)`` with float64 central differences.

    ``inputs`` are arrays or Tensors; each float one is cast to float64 and
    differentiated. A non-scalar output is reduced with fixed random weights.
    Returns True, or raises ``GradcheckError`` naming the input, element and both values.
    """
    rng = np.random.default_rng(seed)
    tensors = []
    for x in inputs:
        data = x.numpy() if isinstance(x, Tensor) else np.asarray(x)
        is_float = data.dtype.kind == "f"
        tensors.append(Tensor(data.astype(np.float64) if is_float else data,
                              requires_grad=is_float))
    out = fn(*tensors)
    if not isinstance(out, Tensor):
        raise TypeError(f"gradcheck: fn must return a Tensor, got {type(out).__name__}")
    loss, weights = _scalarise(out, rng)
    loss.backward()

    def value(args):
        with no_grad():
            o = fn(*args)
            return float((o.numpy() * (1.0 if weights is None else weights.numpy())).sum())

    for i, t in enumerate(tensors):
        if not t.requires_grad:
            continue
        analytic = np.zeros(t.shape) if t.grad is None else t.grad.numpy()
        numeric = np.zeros(t.shape)
        base = t.numpy().copy()
        for j in np.ndindex(*t.shape):
            shifted = []
            for sign in (1.0, -1.0):
                probe = base.copy()
                probe[j] += sign * eps
                args = list(tensors)
                args[i] = Tensor(probe)
                shifted.append(value(args))
            numeric[j] = (shifted[0] - shifted[1]) / (2 * eps)
        bad = ~np.isclose(analytic, numeric, atol=atol, rtol=rtol)
        if bad.any():
            j = tuple(int(v) for v in np.argwhere(bad)[0])
            raise GradcheckError(
                f"gradcheck: input {i} (shape {t.shape}) element {j}: analytic "
                f"{analytic[j]:.8g} vs numerical {numeric[j]:.8g}; "
                f"{int(bad.sum())} of {bad.size} elements differ "
                f"(max abs error {np.abs(analytic - numeric).max():.3g})")
    return True
