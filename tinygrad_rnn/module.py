"""What cells and layers are made of: Module and Parameter (named, trainable tensors, as in
PyTorch), and the small layers Linear, Embedding and Dropout."""
import numpy as np

from . import init as _init
from . import ops
from .tensor import Tensor


class Parameter(Tensor):
    """A leaf Tensor that a Module owns and an optimiser updates."""

    __slots__ = ()

    def __init__(self, data, dtype=None):
        super().__init__(data, dtype=dtype, requires_grad=True)


class Module:
    """Parameters and sub-modules registered by attribute assignment, as in PyTorch."""

    def __init__(self):
        object.__setattr__(self, "_params", {})
        object.__setattr__(self, "_modules", {})
        object.__setattr__(self, "training", True)

    def __setattr__(self, name, value):
        if "_params" not in self.__dict__:
            raise RuntimeError(f"{type(self).__name__}: call super().__init__() before assigning "
                               f"attributes (assigning {name!r})")
        self._params.pop(name, None)
        self._modules.pop(name, None)
        if isinstance(value, Parameter):
            self._params[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    def named_parameters(self, prefix=""):
        for name, p in self._params.items():
            yield prefix + name, p
        for name, m in self._modules.items():
            yield from m.named_parameters(prefix + name + ".")

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def modules(self):
        yield self
        for m in self._modules.values():
            yield from m.modules()

    def zero_grad(self):
        for p in self.parameters():
            p.grad = None

    def train(self, mode=True):
        for m in self.modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self):
        return self.train(False)

    def state_dict(self):
        """Parameter name -> NumPy array (a copy)."""
        return {name: p.numpy().copy() for name, p in self.named_parameters()}

    def load_state_dict(self, state, strict=True):
        """Copy arrays (NumPy, or anything ``np.asarray`` takes) into the parameters."""
        params = dict(self.named_parameters())
        missing = sorted(set(params) - set(state))
        unexpected = sorted(set(state) - set(params))
        if strict and (missing or unexpected):
            raise KeyError(f"load_state_dict: missing {missing}, unexpected {unexpected}")
        staged = {}
        for name, value in state.items():
            if name not in params:
                continue
            arr = np.asarray(value.detach().cpu().numpy() if hasattr(value, "detach") else value)
            p = params[name]
            if arr.shape != p.shape:
                raise ValueError(f"load_state_dict: {name} has shape {arr.shape}, "
                                 f"the model expects {p.shape}")
            if not np.isfinite(arr).all():
                raise ValueError(f"load_state_dict: {name} contains NaN or Inf")
            staged[name] = arr.astype(p.dtype)
        for name, arr in staged.items():  # nothing changes unless every entry is valid
            p = params[name]
            p.data = Tensor(arr, device=p.device).data
        return self

    def to(self, device):
        for m in self.modules():
            for name, p in list(m._params.items()):
                if p.device != device:
                    moved = Parameter.__new__(Parameter)
                    moved.data, moved.grad, moved._node = p.to(device).data, None, None
                    moved.requires_grad = True
                    setattr(m, name, moved)
        return self

    def astype(self, dtype):
        for p in self.parameters():
            p.data = p.data.astype(dtype)
        return self

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)


class Linear(Module):
    def __init__(self, in_features, out_features, bias=True, dtype="float32"):
        super().__init__()
        _positive(in_features=in_features, out_features=out_features)
        bound = 1.0 / np.sqrt(in_features)
        r = _init.rng()
        self.weight = Parameter(r.uniform(-bound, bound, (out_features, in_features)), dtype=dtype)
        self.bias = Parameter(r.uniform(-bound, bound, (out_features,)), dtype=dtype) if bias else None

    def forward(self, x):
        y = x @ self.weight.T
        return y if self.bias is None else y + self.bias


class Embedding(Module):
    def __init__(self, num_embeddings, embedding_dim, dtype="float32"):
        super().__init__()
        _positive(num_embeddings=num_embeddings, embedding_dim=embedding_dim)
        self.weight = Parameter(_init.rng().standard_normal((num_embeddings, embedding_dim)), dtype=dtype)

    def forward(self, indices):
        return ops.embedding(self.weight, indices)


class Dropout(Module):
    """Inverted dropout; the identity in eval mode."""

    def __init__(self, p=0.5):
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"Dropout: p must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x):
        return dropout(x, self.p, self.training)


def dropout(x, p, training=True):
    """Inverted dropout: zero each element with probability ``p``, scale the rest by
    1 / (1 - p); the identity when not ``training``. Masks come from the generator
    ``tr.manual_seed`` seeds (saved in checkpoints, so resumed runs draw the same)."""
    if not training or p == 0:
        return x
    keep = (_init.rng().random(x.shape) >= p) / (1 - p)
    return x * Tensor(keep.astype(x.dtype), device=x.device)


def _positive(**sizes):
    for name, v in sizes.items():
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v <= 0:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")

