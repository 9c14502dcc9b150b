"""Optimisers and gradient clipping, updating parameters in place outside the tape."""
import math
import numbers

import numpy as np

from . import backend
from .errors import ConfigError


def _is_number(v):
    """A real number, NumPy scalars included (``np.float32(1.0)``), but not a bool."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _check_lr(lr):
    if not _is_number(lr) or not math.isfinite(lr) or lr < 0:
        raise ConfigError(f"learning rate must be a finite number >= 0, got {lr!r}")


class Optimizer:
    """Base class: ``step()`` applies the update, ``zero_grad()`` clears gradients.

    ``weight_decay`` adds L2 (``wd * p`` to the gradient, as in PyTorch);
    ``l1`` adds ``l1 * sign(p)``.
    """

    def __init__(self, params, lr, weight_decay=0.0, l1=0.0):
        self.params = list(params)
        if not self.params:
            raise ValueError("optimizer got an empty parameter list")
        _check_lr(lr)
        for name, v in (("weight_decay", weight_decay), ("l1", l1)):
            if not _is_number(v) or not math.isfinite(v) or v < 0:
                raise ConfigError(f"{name} must be a finite number >= 0, got {v!r}")
        self.lr, self.weight_decay, self.l1 = lr, weight_decay, l1
        self.state = [dict() for _ in self.params]
        self.steps = 0

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    def _grad(self, p):
        g = p.grad.data
        if self.weight_decay:
            g = g + self.weight_decay * p.data
        if self.l1:
            g = g + self.l1 * backend.of(p.data).sign(p.data)
        return g

    def step(self):
        self.steps += 1
        for p, st in zip(self.params, self.state):
            if p.grad is not None:
                p.data = self._update(p.data, self._grad(p), st)

    def state_dict(self):
        """Flat name -> array mapping (for checkpoints)."""
        out = {"steps": np.asarray(self.steps), "lr": np.asarray(self.lr)}
        for i, st in enumerate(self.state):
            for k, v in st.items():
                out[f"{i}.{k}"] = v if isinstance(v, np.ndarray) else backend.of(v).to_numpy(v)
        return out

    STATE_KEYS = ()  # per-parameter state entries this optimiser keeps

    def load_state_dict(self, state):
        """Restore ``state_dict()`` output; every entry is checked against the parameters
        (name, index, shape, finiteness) before anything changes."""
        name = type(self).__name__
        for key in ("steps", "lr"):
            if key not in state or np.shape(state[key]) != ():
                raise ConfigError(f"{name} state has no scalar {key!r}")
        steps, lr = np.asarray(state["steps"]).item(), np.asarray(state["lr"]).item()
        if not isinstance(steps, numbers.Integral) or steps < 0:
            raise ConfigError(f"{name} state 'steps' must be an integer >= 0, got {steps!r}")
        if not _is_number(lr) or not math.isfinite(lr) or lr <= 0:
            raise ConfigError(f"{name} state 'lr' must be a finite number > 0, got {lr!r}")
        staged = [dict() for _ in self.params]
        for key, v in state.items():
            if key in ("steps", "lr"):
                continue
            i, _, k = key.partition(".")
            if not i.isdigit() or int(i) >= len(self.params) or k not in self.STATE_KEYS:
                raise ConfigError(f"{name} state has an unexpected entry {key!r} (expected <index>."
                                  f"{'|'.join(self.STATE_KEYS) or '(none)'} for {len(self.params)} parameters)")
            p, v = self.params[int(i)], np.asarray(v)
            if v.shape != p.shape or v.dtype.kind != "f" or not np.isfinite(v).all():
                raise ConfigError(f"{name} state {key!r} must be a finite float array of shape {p.shape} "
                                  f"(parameter {i}), got {v.dtype} {v.shape}")
            staged[int(i)][k] = backend.of(p.data).asarray(v.astype(p.dtype))
        self.steps, self.lr, self.state = int(steps), float(lr), staged


class SGD(Optimizer):
    STATE_KEYS = ("momentum",)

    def __init__(self, params, lr=0.01, momentum=0.0, nesterov=False, **kw):
        super().__init__(params, lr, **kw)
        if momentum < 0:
            raise ValueError(f"momentum must be >= 0, got {momentum}")
        if nesterov and momentum == 0:
            raise ValueError("nesterov momentum needs momentum > 0")
        self.momentum, self.nesterov = momentum, nesterov

    def _update(self, p, g, st):
        if self.momentum:
            buf = st["momentum"] = g.copy() if "momentum" not in st else self.momentum * st["momentum"] + g
            g = g + self.momentum * buf if self.nesterov else buf
        return p - self.lr * g


class Adam(Optimizer):
    STATE_KEYS = ("m", "v")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, **kw):
        super().__init__(params, lr, **kw)
        self.betas, self.eps = betas, eps

    def _update(self, p, g, st):
        b1, b2 = self.betas
        m = st["m"] = b1 * st.get("m", 0) + (1 - b1) * g
        v = st["v"] = b2 * st.get("v", 0) + (1 - b2) * g * g
        m_hat = m / (1 - b1 ** self.steps)
        v_hat = v / (1 - b2 ** self.steps)
        return (p - self.lr * m_hat / (backend.of(p).sqrt(v_hat) + self.eps)).astype(p.dtype)


class RMSprop(Optimizer):
    STATE_KEYS = ("square_avg",)

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, **kw):
        super().__init__(params, lr, **kw)
        self.alpha, self.eps = alpha, eps

    def _update(self, p, g, st):
        sq = st["square_avg"] = self.alpha * st.get("square_avg", 0) + (1 - self.alpha) * g * g
        return (p - self.lr * g / (backend.of(p).sqrt(sq) + self.eps)).astype(p.dtype)


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "rmsprop": RMSprop}


def grad_norm(params):
    """Global L2 norm of all gradients (float64), ignoring parameters without one."""
    total = 0.0
    for p in params:
        if p.grad is not None:
            g = p.grad.numpy().astype(np.float64)
            total += float((g * g).sum())
    return math.sqrt(total)


def clip_grad_norm(params, max_norm, error_if_nonfinite=False):
    """Scale gradients so their global norm is at most ``max_norm``; return the norm before.

    Unlike PyTorch, a negative or NaN ``max_norm`` is rejected: PyTorch silently
    reverses the gradients there.
    """
    if not _is_number(max_norm) or not max_norm >= 0:
        raise ConfigError(f"clip_grad_norm: max_norm must be a number >= 0, got {max_norm!r}")
    params = [p for p in params if p.grad is not None]
    norm = grad_norm(params)
    if not math.isfinite(norm):
        if error_if_nonfinite:
            raise FloatingPointError(f"clip_grad_norm: the total gradient norm is {norm}")
        return norm
    if norm > max_norm:
        scale = max_norm / (norm + 1e-6)
        for p in params:
            p.grad.data = (p.grad.data * scale).astype(p.dtype)
    return norm


def clip_grad_value(params, clip_value):
    """Clamp every gradient element into [-clip_value, clip_value]."""
    if not _is_number(clip_value) or not clip_value >= 0:
        raise ConfigError(f"clip_grad_value: clip_value must be a number >= 0, got {clip_value!r}")
    for p in params:
        if p.grad is not None:
            p.grad.data = backend.of(p.grad.data).clip(p.grad.data, -float(clip_value), float(clip_value))
