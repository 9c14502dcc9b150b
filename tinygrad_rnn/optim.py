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
        if not _is_number(lr) or not math.isfinite(lr) or lr < 0:  # 0: where a cosine schedule ends
            raise ConfigError(f"{name} state 'lr' must be a finite number >= 0, got {lr!r}")
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
    """Global L2 norm of all gradients (float64), ignoring parameters without one.

    Each device sums its gradients' squares where they are: a GPU's gradients are never
    copied to the host, only the one float64 total of that device is."""
    totals = {}  # backend -> its float64 sum of squares (a 0-d array on that device)
    for p in params:
        if p.grad is not None:
            g = p.grad.data.astype(np.float64)
            owner = backend.of(g)
            part = (g * g).sum()
            totals[owner] = part if owner not in totals else totals[owner] + part
    return math.sqrt(sum(float(np.asarray(owner.to_numpy(t)).reshape(())) for owner, t in totals.items()))


def clip_grad_norm(params, max_norm, error_if_nonfinite=False, norm=None):
    """Scale gradients so their global norm is at most ``max_norm``; return the norm before.
    ``norm``: the gradients' ``grad_norm``, when the caller has it already (not computed again).

    Unlike PyTorch, a negative or NaN ``max_norm`` is rejected: PyTorch silently
    reverses the gradients there.
    """
    if not _is_number(max_norm) or not max_norm >= 0:
        raise ConfigError(f"clip_grad_norm: max_norm must be a number >= 0, got {max_norm!r}")
    params = [p for p in params if p.grad is not None]
    norm = grad_norm(params) if norm is None else norm
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



# ---- learning-rate schedules ---------------------------------------------------------------
class LRScheduler:
    """Base class, in PyTorch's style: build it after the optimizer, call ``step()`` after
    each ``optimizer.step()``. It sets ``optimizer.lr`` from the rate the optimizer had
    when the scheduler was built (``base_lr``) and the number of steps taken (``last_epoch``).

    ``warmup=N`` (an addition to PyTorch's classes) ramps the rate linearly over the
    first N steps, ``base_lr / N``, ``2 base_lr / N``, ..., ``base_lr``; the schedule
    proper counts its steps from the end of the warmup (in PyTorch: ``SequentialLR`` of
    ``LinearLR(opt, 1 / N, total_iters=N - 1)`` and the schedule, milestone N). ``state_dict()`` holds every
    number the schedule depends on, so a resumed run follows it exactly.
    """

    def __init__(self, optimizer, warmup=0):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{type(self).__name__} needs an optimizer, got {type(optimizer).__name__}")
        _check_count("warmup", warmup)
        self.optimizer, self.warmup = optimizer, int(warmup)
        self.base_lr = self.lr = optimizer.lr
        self.last_epoch = 0
        self._apply()

    def get_lr(self):
        """The schedule's rate after ``last_epoch - warmup`` steps past the warmup."""
        return self.base_lr

    def step(self):
        self.last_epoch += 1
        self.lr = self.get_lr()
        self._apply()

    def _apply(self):
        ramp = (self.last_epoch + 1) / self.warmup if self.last_epoch < self.warmup else 1.0
        self.optimizer.lr = self.lr * ramp

    def _since_warmup(self):
        return max(0, self.last_epoch - self.warmup)

    def state_dict(self):
        return {k: v for k, v in vars(self).items() if k != "optimizer"}

    def load_state_dict(self, state):
        unknown = sorted(set(state) - set(self.state_dict()))
        if unknown:
            raise ValueError(f"{type(self).__name__}: unknown scheduler state {unknown}")
        self.__dict__.update(state)
        self._apply()


class ConstantLR(LRScheduler):
    """The optimizer's rate throughout (after the warmup, if any)."""


class StepLR(LRScheduler):
    """Multiply the rate by ``gamma`` every ``step_size`` steps (PyTorch's StepLR)."""

    def __init__(self, optimizer, step_size, gamma=0.1, warmup=0):
        _check_count("step_size", step_size, positive=True)
        _check_factor("gamma", gamma)
        self.step_size, self.gamma = int(step_size), float(gamma)
        super().__init__(optimizer, warmup)

    def get_lr(self):
        return self.base_lr * self.gamma ** (self._since_warmup() // self.step_size)


class CosineAnnealingLR(LRScheduler):
    """From the rate down to ``eta_min`` along half a cosine over ``T_max`` steps
    (PyTorch's CosineAnnealingLR, in its closed form)."""

    def __init__(self, optimizer, T_max, eta_min=0.0, warmup=0):
        _check_count("T_max", T_max, positive=True)
        if not isinstance(eta_min, (int, float)) or not math.isfinite(eta_min) or eta_min < 0:
            raise ValueError(f"eta_min must be a finite number >= 0, got {eta_min!r}")
        self.T_max, self.eta_min = int(T_max), float(eta_min)
        super().__init__(optimizer, warmup)

    def get_lr(self):
        t = self._since_warmup()
        return self.eta_min + (self.base_lr - self.eta_min) * (1 + math.cos(math.pi * t / self.T_max)) / 2


class ReduceLROnPlateau(LRScheduler):
    """Multiply the rate by ``factor`` when the monitored metric (lower is better) has
    not improved by more than a relative ``threshold`` for ``patience`` evaluations
    (PyTorch's ReduceLROnPlateau, mode "min", threshold_mode "rel").

    ``step(metric)`` after an evaluation, as in PyTorch; ``step()`` without a metric
    counts a step (for the warmup) and leaves the rate alone.
    """

    def __init__(self, optimizer, factor=0.1, patience=10, threshold=1e-4, cooldown=0, min_lr=0.0,
                 eps=1e-8, warmup=0):
        _check_factor("factor", factor)
        _check_count("patience", patience)
        _check_count("cooldown", cooldown)
        self.factor, self.patience, self.threshold = float(factor), int(patience), float(threshold)
        self.cooldown, self.min_lr, self.eps = int(cooldown), float(min_lr), float(eps)
        self.best, self.num_bad_epochs, self.cooldown_counter = math.inf, 0, 0
        super().__init__(optimizer, warmup)

    def step(self, metric=None):
        self.last_epoch += 1
        if metric is not None:
            self._judge(float(metric))
        self._apply()

    def _judge(self, metric):
        if metric < self.best * (1 - self.threshold):
            self.best, self.num_bad_epochs = metric, 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        if self.num_bad_epochs > self.patience:
            new = max(self.lr * self.factor, self.min_lr)
            if self.lr - new > self.eps:
                self.lr = new
            self.cooldown_counter, self.num_bad_epochs = self.cooldown, 0


SCHEDULES = {"constant": ConstantLR, "step": StepLR, "cosine": CosineAnnealingLR, "plateau": ReduceLROnPlateau}


def _check_count(name, v, positive=False):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < (1 if positive else 0):
        raise ValueError(f"{name} must be {'a positive' if positive else 'a non-negative'} integer, got {v!r}")


def _check_factor(name, v):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 1:
        raise ValueError(f"{name} must be a number in (0, 1], got {v!r}")
