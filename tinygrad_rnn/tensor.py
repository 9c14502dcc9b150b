"""Tensor: a backend array, its gradient, and its place on the tape.

This module holds the data side (storage, dtype and device, conversion, the
autodiff entry points). The maths is sugar over ``ops.py``: the operators
(``+ - * / ** @ [] < <= > >=``, unary ``-``) and the math methods (``exp log tanh
sigmoid relu leaky_relu sum mean max reshape transpose split clip softmax
log_softmax astype``) are ops functions that ``ops.py`` installs on ``Tensor``.
That way this module never imports ops, and the engine's imports run one way:
ops -> tensor -> tape -> backend.
"""
import weakref

import numpy as np

from . import backend
from .tape import _tracer
from .tape import backward as _backward

_FLOATS = (np.float32, np.float64)


def _as_dtype(dtype):
    if dtype is None:
        return None
    dt = np.dtype(dtype)
    if dt not in _FLOATS and dt.kind not in "iub":
        raise TypeError(f"unsupported dtype {dt}; use float32 or float64")
    return dt


class Tensor:
    """An n-dimensional array that records the ops applied to it.

    ``Tensor(data, dtype=None, requires_grad=False, device="cpu")``: ``data`` is a
    NumPy array, nested lists, a Python scalar or another Tensor. Python floats
    become float32 (like PyTorch); float64 arrays stay float64.
    """

    __slots__ = ("data", "grad", "requires_grad", "_node", "__weakref__")
    __array_priority__ = 1000  # ndarray (op) Tensor defers to Tensor's reflected operators

    def __init__(self, data, dtype=None, requires_grad=False, device=None):
        if isinstance(data, Tensor):
            data = data.data
        dtype = _as_dtype(dtype)
        host = isinstance(data, (np.ndarray, np.generic, list, tuple, int, float, bool))
        if device is None:
            device = "cpu" if host else backend.of(data).name
        be = backend.get(device)
        if be is backend.cpu:
            if not host:
                data = backend.of(data).to_numpy(data)
            arr = np.asarray(data, dtype=dtype)
            if dtype is None and arr.dtype == np.float64 and not isinstance(data, (np.ndarray, np.generic)):
                arr = arr.astype(np.float32)
            if arr.dtype == np.float16:
                arr = arr.astype(np.float32)
            if arr.dtype.kind not in "fiub":
                raise TypeError(f"cannot make a Tensor from {type(data).__name__} data of dtype {arr.dtype}")
        else:
            arr = be.asarray(data, dtype=dtype)
        self.data = arr
        self.grad = None
        self._node = None
        self.requires_grad = False
        if requires_grad:
            self.requires_grad_(True)

    @classmethod
    def _make(cls, data):
        t = cls.__new__(cls)
        t.data, t.grad, t._node, t.requires_grad = data, None, None, False
        return t

    # ---- properties -------------------------------------------------------
    @property
    def shape(self):
        return tuple(self.data.shape)

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def ndim(self):
        return len(self.data.shape)

    @property
    def size(self):
        return int(np.prod(self.data.shape))

    @property
    def device(self):
        return backend.of(self.data).name

    @property
    def is_leaf(self):
        return self._node is None

    @property
    def T(self):
        return self.transpose()

    def __len__(self):
        return self.data.shape[0]

    def __repr__(self):
        grad = ", requires_grad=True" if self.requires_grad else ""
        dev = "" if self.device == "cpu" else f", device={self.device!r}"
        return f"Tensor({np.array2string(self.numpy(), prefix='Tensor(')}, dtype={self.dtype}{dev}{grad})"

    # ---- conversion -------------------------------------------------------
    def numpy(self):
        """The data as a NumPy array (a copy when it lives on another device)."""
        if _tracer[0] is not None:  # the cell compiler is tracing a step
            _tracer[0].read(self)
        return backend.of(self.data).to_numpy(self.data)

    def item(self):
        if self.size != 1:
            raise ValueError(f"item() needs a tensor with one element, got shape {self.shape}")
        return self.numpy().reshape(()).item()

    def tolist(self):
        return self.numpy().tolist()

    def float(self):
        return self.astype(np.float32)

    def double(self):
        return self.astype(np.float64)

    def to(self, device):
        """This tensor on ``device``; a leaf stays a leaf (like ``nn.Module.to``)."""
        if device == self.device:
            return self
        be = backend.get(device)
        out = Tensor._make(be.asarray(self.numpy() if device == "cpu" else self.data))
        out.requires_grad = self.requires_grad
        return out

    # ---- autodiff ---------------------------------------------------------
    def requires_grad_(self, flag=True):
        if flag and self.data.dtype not in _FLOATS:
            raise TypeError(f"only float32/float64 tensors can require gradients, "
                            f"got {self.data.dtype} with shape {self.shape}")
        self.requires_grad = bool(flag)
        return self

    def detach(self):
        """Same data, cut from the tape."""
        return Tensor._make(self.data)

    def retain_grad(self):
        """Keep ``.grad`` on this non-leaf tensor after backward."""
        if not self.requires_grad:
            raise RuntimeError("retain_grad() on a tensor that does not require grad")
        if self._node is not None:
            self._node.retain = weakref.ref(self)
        return self

    def backward(self, grad=None, retain_graph=False):
        """Accumulate d(self)/d(leaf) into every leaf's ``.grad``."""
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require grad: "
                               "no input of the computation had requires_grad=True")
        if grad is None:
            if self.size != 1:
                raise ValueError(f"backward() without grad needs a scalar, got shape {self.shape}; "
                                 "pass grad= of the same shape")
            grad = backend.of(self.data).ones_like(self.data)
        else:
            grad = grad.data if isinstance(grad, Tensor) else np.asarray(grad, self.dtype)
            if tuple(grad.shape) != self.shape:
                raise ValueError(f"backward(): grad has shape {tuple(grad.shape)}, "
                                 f"tensor has shape {self.shape}")
        _backward(self, grad, retain_graph)

    def _accumulate(self, g):
        be = backend.of(self.data)
        g = be.copy_as(g, self.data.dtype)  # own copy: optimisers may scale it in place
        if self.grad is None:
            self.grad = Tensor._make(g)
        else:
            self.grad.data = self.grad.data + g

    def zero_grad(self):
        self.grad = None

    # ---- sugar built on the operators ops.py installs --------------------------
    def sqrt(self):
        return self ** 0.5
