"""Primitive ops: each is one forward and one VJP, side by side, in one table.

A forward maps backend arrays to a backend array: ``fwd(k, *arrays, **attrs)``
where ``k`` is the backend module of the inputs. A VJP maps the output's
gradient ``g`` to one gradient per input (``None`` where an input is not
differentiable): ``vjp(k, g, out, *arrays, **attrs)``. Ops marked
``broadcast=True`` follow NumPy broadcasting; their VJPs may return gradients
of the broadcast shape, which are summed back to each input's shape here.

The derivatives live here and only here. A backend may offer a fused kernel for
a VJP in its ``FUSED_VJPS`` (same signature, same formula, one pass); the tape
uses it when present, and tests/test_backend_api.py checks it against the table.
The lambdas call only the backend functions listed in ``backend/api.py`` and
arithmetic on their arguments, so the cell compiler can also evaluate them on
symbols (compiler/lower.py).

Everything not in the table is composed from it and needs no VJP of its own:
``a - b`` is ``a + -b``, ``split`` is ``getitem``, ``stack`` is ``cat`` of
reshapes, ``relu`` is ``leaky_relu`` with slope 0, ``log_softmax`` is
``x - max - log(sum(exp(x - max)))``, ``softmax`` is ``exp(log_softmax)``, ``mse``
is ``mean(d * d)``. Measured reasons keep these primitive (one fwd+bwd on float32):
``div`` (as ``a * b**-1``: 1.5-1.9x slower, and its VJP would need ``b**-2``, a
general power, in compiled kernels too); ``mean`` (the compiler writes its
divisor as a size formula, so one generated kernel serves every hidden size;
``sum * (1/n)`` would bake ``n`` in); ``clip`` (as two compares and two wheres:
2.8x slower); ``embedding`` (as ``getitem``, whose VJP is a general scatter-add:
22x slower than the row kernel); ``cross_entropy`` (the CUDA backend fuses it; as
a composition its pick of one log-probability per row is fancy indexing, which
CUDA does through the host).
"""
import builtins

import numpy as np

from . import backend
from .tape import Node, _recording, _tracer, no_grad, not_recording  # noqa: F401  (_tracer: compiler/trace.py sets it here)
from .tensor import Tensor, _as_dtype

OPS = {}
_backend_of = backend.of
_ndarray = np.ndarray  # the CPU fast path: checked by class, before any function call


class Op:
    __slots__ = ("name", "fwd", "vjp", "broadcast", "residuals")

    def __init__(self, name, fwd, vjp, broadcast, residuals):
        self.name, self.fwd, self.vjp = name, fwd, vjp
        self.broadcast, self.residuals = broadcast, residuals

    def __repr__(self):
        return f"<op {self.name}>"


def defop(name, fwd, vjp, broadcast=False, residuals=False):
    """Register a primitive. Public, so users can add their own ops.

    ``broadcast=True``: the op follows NumPy broadcasting, and its VJP may return
    gradients of the broadcast shape; the tape sums them back to each input's shape.
    ``residuals=True``: the forward returns ``(out, residuals)``; the residuals are
    kept for the VJP (as its ``residuals=`` keyword) only when the op is recorded.
    """
    op = OPS[name] = Op(name, fwd, vjp, broadcast, residuals)
    return op


def apply(op, *inputs, **attrs):
    """Run ``op`` forward on Tensors and record it when any input needs a gradient."""
    arrays = [t.data for t in inputs]
    k = _backend_of(arrays[0])
    for a in arrays:
        if (a.__class__ is _ndarray) != (k is backend.cpu) and _backend_of(a) is not k:
            raise ValueError(f"{op.name}: inputs are on different devices: "
                             f"{[t.device for t in inputs]}; move them with .to(device)")
    try:
        out = op.fwd(k, *arrays, **attrs)
    except (ValueError, IndexError) as e:
        shapes = ", ".join(str(tuple(a.shape)) for a in arrays)
        raise type(e)(f"{op.name}: {e} (input shapes {shapes})") from None
    if op.residuals:
        out, residuals = out
        attrs["residuals"] = residuals
    t = Tensor._make(out)
    if _tracer[0] is not None:
        _tracer[0].record(op.name, inputs, attrs, t)
    if _recording[0]:
        for i in inputs:
            if i.requires_grad:
                t.requires_grad = True
                t._node = Node(op, inputs, arrays, attrs, out, k)
                break
    return t


# ---- helpers for the table ---------------------------------------------------
def _unreduce(k, g, shape, axis, keepdims):
    """Broadcast the gradient of a reduction back over the reduced axes."""
    if axis is not None and not keepdims:
        g = k.expand_dims(g, axis)
    return k.broadcast_to(g, shape)


def _count(shape, axis):
    if axis is None:
        return int(np.prod(shape))
    axes = axis if isinstance(axis, tuple) else (axis,)
    return int(np.prod([shape[a] for a in axes]))


def _matmul_vjp(k, g, out, a, b):
    if a.ndim >= 2 and b.ndim == 2:  # rows times one matrix (a Linear on (T, B, H)): b's gradient is one product
        n = int(np.prod(a.shape[:-1]))  # not -1: a 0-size array's reshape(-1, 0) is ambiguous
        rows, g_rows = a.reshape(n, a.shape[-1]), g.reshape(n, g.shape[-1])
        return k.matmul(g, b.T), k.matmul(rows.T, g_rows)
    a2 = a[None, :] if a.ndim == 1 else a
    b2 = b[:, None] if b.ndim == 1 else b
    if b.ndim == 1:  # restore the squeezed axes, b's first: for vector @ vector g is 0-d
        g = k.expand_dims(g, -1)
    if a.ndim == 1:
        g = k.expand_dims(g, -2)
    ga = k.matmul(g, k.swapaxes(b2, -1, -2))
    gb = k.matmul(k.swapaxes(a2, -1, -2), g)
    if a.ndim == 1:
        ga = ga.reshape(ga.shape[:-2] + ga.shape[-1:])
    if b.ndim == 1:
        gb = gb.reshape(gb.shape[:-1])
    return k.sum_to_shape(ga, a.shape), k.sum_to_shape(gb, b.shape)


def _max_vjp(k, g, y, a, axis, keepdims):
    y = _unreduce(k, y, a.shape, axis, keepdims)
    hit = (a == y).astype(a.dtype)  # ties share the gradient, as in PyTorch's amax
    return (_unreduce(k, g, a.shape, axis, keepdims) * hit /
            _unreduce(k, hit.sum(axis=axis, keepdims=True), a.shape, axis, True),)


def _getitem_vjp(k, g, y, a, index):
    return (k.scatter_add(a.shape, index, g),)


def _cat_vjp(k, g, y, *arrays, axis):
    ends = np.cumsum([a.shape[axis] for a in arrays])
    return tuple(g[(slice(None),) * (axis % g.ndim) + (slice(e - a.shape[axis], e),)]
                 for e, a in zip(ends, arrays))


def _cross_entropy_fwd(k, logits, target):
    return k.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))


def _cross_entropy_vjp(k, g, y, logits, target):
    flat = logits.reshape(-1, logits.shape[-1])
    return (k.cross_entropy_bwd(flat, target.reshape(-1), g).reshape(logits.shape),)


def _transpose_vjp(k, g, y, a, axes):
    return (g.transpose(np.argsort(axes)),)


# ---- the table ------------------------------------------------------------------
# name            forward                                      VJP: one gradient per input
defop("add",      lambda k, a, b: a + b,                       lambda k, g, y, a, b: (g, g), broadcast=True)
defop("mul",      lambda k, a, b: a * b,                       lambda k, g, y, a, b: (g * b, g * a), broadcast=True)
defop("div",      lambda k, a, b: a / b,                       lambda k, g, y, a, b: (g / b, -g * y / b), broadcast=True)
defop("neg",      lambda k, a: -a,                             lambda k, g, y, a: (-g,))
defop("pow",      lambda k, a, p: a ** p,                      lambda k, g, y, a, p: (g * p * a ** (p - 1),))
defop("matmul",   lambda k, a, b: k.matmul(a, b),              _matmul_vjp)
defop("exp",      lambda k, a: k.exp(a),                       lambda k, g, y, a: (g * y,))
defop("log",      lambda k, a: k.log(a),                       lambda k, g, y, a: (g / a,))
defop("tanh",     lambda k, a: k.tanh(a),                      lambda k, g, y, a: (g * (1 - y * y),))
defop("sigmoid",  lambda k, a: k.sigmoid(a),                   lambda k, g, y, a: (g * y * (1 - y),))
defop("leaky_relu", lambda k, a, slope: k.leaky_relu(a, slope),
                                                               lambda k, g, y, a, slope: (k.where(a > 0, g, g * slope),))
defop("sum",      lambda k, a, axis, keepdims: k.asarray(a.sum(axis=axis, keepdims=keepdims)),
                                                               lambda k, g, y, a, axis, keepdims: (_unreduce(k, g, a.shape, axis, keepdims),))
defop("mean",     lambda k, a, axis, keepdims: k.asarray(a.mean(axis=axis, keepdims=keepdims)),
                                                               lambda k, g, y, a, axis, keepdims: (_unreduce(k, g / _count(a.shape, axis), a.shape, axis, keepdims),))
defop("max",      lambda k, a, axis, keepdims: k.asarray(a.max(axis=axis, keepdims=keepdims)),
                                                               _max_vjp)
defop("reshape",  lambda k, a, shape: a.reshape(shape),        lambda k, g, y, a, shape: (g.reshape(a.shape),))
defop("transpose", lambda k, a, axes: a.transpose(axes),       _transpose_vjp)
defop("getitem",  lambda k, a, index: a[index],                _getitem_vjp)
defop("cat",      lambda k, *arrays, axis: k.concatenate(arrays, axis),
                                                               _cat_vjp)
defop("where",    lambda k, a, b, cond: k.where(cond, a, b),   lambda k, g, y, a, b, cond: (k.where(cond, g, 0), k.where(cond, 0, g)), broadcast=True)
defop("clip",     lambda k, a, lo, hi: k.clip(a, lo, hi),      lambda k, g, y, a, lo, hi: (g * ((a >= lo) & (a <= hi)),))
defop("embedding", lambda k, w, indices: w[indices],           lambda k, g, y, w, indices: (k.embedding_bwd(w.shape, indices, g),))
defop("cross_entropy", _cross_entropy_fwd,                     _cross_entropy_vjp)
defop("astype",   lambda k, a, dtype: a.astype(dtype),         lambda k, g, y, a, dtype: (g.astype(a.dtype),))


# ---- Tensor-level functions: validate, coerce, apply ---------------------------------
def tensor(x, like=None):
    """``x`` as a Tensor; Python scalars take the dtype and device of ``like``."""
    if isinstance(x, Tensor):
        return x
    if like is not None and like.data.dtype.kind == "f" and isinstance(x, (int, float)):
        return Tensor._make(backend.of(like.data).asarray(x, dtype=like.data.dtype))
    return Tensor(x, device=None if like is None else like.device)


def _pair(a, b):
    if isinstance(a, Tensor) and isinstance(b, Tensor) and a.data.dtype == b.data.dtype:
        return a, b
    a = tensor(a, like=b if isinstance(b, Tensor) else None)
    b = tensor(b, like=a)
    # Integer data meeting float data takes the float dtype (no silent float64).
    if a.dtype != b.dtype:
        if a.dtype.kind != "f":
            a = Tensor._make(a.data.astype(b.dtype))
        elif b.dtype.kind != "f":
            b = Tensor._make(b.data.astype(a.dtype))
    return a, b


_ADD, _MUL, _DIV, _NEG = OPS["add"], OPS["mul"], OPS["div"], OPS["neg"]
_EXP, _LOG, _TANH, _SIGMOID = OPS["exp"], OPS["log"], OPS["tanh"], OPS["sigmoid"]


def add(a, b): return apply(_ADD, *_pair(a, b))
def sub(a, b):
    if isinstance(b, (int, float)):
        return add(a, -b)
    return add(a, neg(tensor(b, like=a if isinstance(a, Tensor) else None)))
def mul(a, b): return apply(_MUL, *_pair(a, b))
def div(a, b): return apply(_DIV, *_pair(a, b))
def neg(a): return apply(_NEG, a)
def exp(a): return apply(_EXP, tensor(a))
def log(a): return apply(_LOG, tensor(a))
def tanh(a): return apply(_TANH, tensor(a))
def sigmoid(a): return apply(_SIGMOID, tensor(a))
def relu(a): return apply(OPS["leaky_relu"], tensor(a), slope=0.0)
def leaky_relu(a, negative_slope=0.01): return apply(OPS["leaky_relu"], tensor(a), slope=float(negative_slope))
def astype(a, dtype):
    dtype = _as_dtype(dtype)
    return a if a.dtype == dtype else apply(OPS["astype"], a, dtype=dtype)


def pow(a, exponent):
    if isinstance(exponent, Tensor) or not np.isscalar(exponent):
        raise TypeError(f"pow: the exponent must be a Python number, got {type(exponent).__name__}")
    return apply(OPS["pow"], tensor(a), p=exponent)


def matmul(a, b):
    a, b = _pair(a, b)
    if not a.data.shape or not b.data.shape:
        raise ValueError(f"matmul: scalars cannot be matrix-multiplied (shapes {a.shape} and {b.shape})")
    ashape, bshape = a.data.shape, b.data.shape
    inner = bshape[-2] if len(bshape) > 1 else bshape[0]
    if ashape[-1] != inner:
        raise ValueError(f"matmul: shapes {a.shape} and {b.shape} are incompatible ({ashape[-1]} != {inner})")
    return apply(OPS["matmul"], a, b)


def _axis(axis, ndim, op):
    if axis is None:
        return None
    axes = tuple(axis) if isinstance(axis, (tuple, list)) else (axis,)
    for ax in axes:
        if not -ndim <= ax < builtins.max(ndim, 1):
            raise ValueError(f"{op}: axis {ax} is out of range for a tensor with {ndim} dimensions")
    axes = tuple(sorted(ax % builtins.max(ndim, 1) for ax in axes))
    return axes if len(axes) > 1 else axes[0]


def sum(a, axis=None, keepdims=False): return apply(OPS["sum"], a, axis=_axis(axis, a.ndim, "sum"), keepdims=keepdims)
def mean(a, axis=None, keepdims=False): return apply(OPS["mean"], a, axis=_axis(axis, a.ndim, "mean"), keepdims=keepdims)
def max(a, axis=None, keepdims=False): return apply(OPS["max"], a, axis=_axis(axis, a.ndim, "max"), keepdims=keepdims)


def reshape(a, *shape):
    shape = tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
    return apply(OPS["reshape"], a, shape=shape)


def transpose(a, *axes):
    axes = tuple(axes[0]) if len(axes) == 1 and isinstance(axes[0], (tuple, list)) else axes
    axes = axes or tuple(reversed(range(a.ndim)))
    if any(not -a.ndim <= ax < a.ndim for ax in axes):  # as NumPy: -1 is the last axis, 2 on 2-D is an error
        raise ValueError(f"transpose: axes {axes} out of range for shape {a.shape} ({a.ndim} axes)")
    if sorted(ax % a.ndim for ax in axes) != list(range(a.ndim)):
        raise ValueError(f"transpose: axes {axes} are not a permutation for shape {a.shape}")
    return apply(OPS["transpose"], a, axes=tuple(ax % a.ndim for ax in axes))


def _index_data(index):
    if isinstance(index, Tensor):
        return index.data
    if isinstance(index, tuple):
        return tuple(_index_data(i) for i in index)
    if isinstance(index, list):
        return np.asarray(index)
    return index


def getitem(a, index):
    return apply(OPS["getitem"], a, index=_index_data(index))


# The latest split: (input shape, sections, axis, piece count, id of the list returned).
# A cell that unpacks the pieces wrongly gets an error naming these shapes (cell.py).
last_split = [None]


def split(a, sections, axis=0):
    """Split into pieces of size ``sections`` (an int, as ``torch.split``; not a count of
    pieces as ``np.split``) or of the sizes listed."""
    axis = _axis(axis, a.ndim, "split")
    n = a.shape[axis]
    if isinstance(sections, (int, np.integer)) and not isinstance(sections, bool):
        if sections <= 0:
            raise ValueError(f"split: the piece size must be positive, got {sections} "
                             f"(splitting shape {a.shape} along axis {axis})")
        sizes = [int(sections)] * (n // sections) + ([n % sections] if n % sections else [])
    else:
        sizes = list(sections)
        if np.sum(sizes) != n:
            raise ValueError(f"split: sizes {sizes} add up to {int(np.sum(sizes))}, but axis {axis} of "
                             f"shape {a.shape} has length {n}")
    lead, start, pieces = (slice(None),) * axis, 0, []
    for size in sizes:
        pieces.append(getitem(a, lead + (slice(start, start + size),)))
        start += size
    last_split[0] = (a.shape, sections, axis, len(pieces), id(pieces))
    return pieces


def split_hint(count=None, result=None):
    """A sentence on the latest split for an error about a wrong number of values, or ""."""
    record = last_split[0]
    if record is None:
        return ""
    shape, sections, axis, pieces, ident = record
    if result is not None and id(result) != ident:
        return ""
    what = f"pieces of size {sections}" if isinstance(sections, (int, np.integer)) else f"sizes {list(sections)}"
    return (f"the last tr.split cut shape {shape} along axis {axis} into {pieces} {what}; "
            "tr.split takes the size of each piece (as torch.split), not the number of pieces (as np.split)")


def _same_rank(op, tensors, axis, stacking):
    tensors = [tensor(t) for t in tensors]
    if not tensors:
        raise ValueError(f"{op}: needs at least one tensor")
    ref = tensors[0].shape
    for t in tensors[1:]:
        rest_ok = (t.shape == ref) if stacking else (
            len(t.shape) == len(ref) and all(x == y for i, (x, y) in enumerate(zip(t.shape, ref))
                                             if i != axis % len(ref)))
        if not rest_ok:
            raise ValueError(f"{op}: shapes {[x.shape for x in tensors]} do not match "
                             f"{'exactly' if stacking else f'outside axis {axis}'}")
    dtype = np.result_type(*[t.dtype for t in tensors])
    return [astype(t, dtype) for t in tensors]


def cat(tensors, axis=0):
    tensors = _same_rank("cat", tensors, axis, stacking=False)
    return apply(OPS["cat"], *tensors, axis=_axis(axis, tensors[0].ndim, "cat"))


def stack(tensors, axis=0):
    tensors = _same_rank("stack", tensors, axis, stacking=True)
    axis = _axis(axis, tensors[0].ndim + 1, "stack")
    shape = tensors[0].shape[:axis] + (1,) + tensors[0].shape[axis:]
    return cat([reshape(t, shape) for t in tensors], axis)


def where(cond, a, b):
    """``a`` where ``cond`` is true, else ``b`` (cond is data, not differentiated)."""
    a, b = _pair(a, b)
    cond_t = tensor(cond)
    cond = cond_t.data.astype(bool)
    if _backend_of(cond) is not _backend_of(a.data):  # a host mask for device data: upload it
        cond = _backend_of(a.data).asarray(_backend_of(cond).to_numpy(cond))
    if _tracer[0] is not None:
        _tracer[0].alias(cond, cond_t)
    return apply(OPS["where"], a, b, cond=cond)


def clip(a, lo=None, hi=None):
    lo = -np.inf if lo is None else lo
    hi = np.inf if hi is None else hi
    if lo > hi:
        raise ValueError(f"clip: lower bound {lo} is above upper bound {hi}")
    return apply(OPS["clip"], a, lo=lo, hi=hi)


def softmax(a, axis=-1): return exp(log_softmax(a, _axis(axis, a.ndim, "softmax")))


def log_softmax(a, axis=-1):
    axis = _axis(axis, a.ndim, "log_softmax")
    with not_recording():  # the shift only keeps exp finite: its derivative cancels exactly
        shift = max(a, axis, keepdims=True)
    shifted = sub(a, shift)
    return sub(shifted, log(sum(exp(shifted), axis, keepdims=True)))


def _int_data(x, op, what):
    data = x.numpy() if isinstance(x, Tensor) else np.asarray(x)
    if data.dtype.kind not in "iu":
        raise TypeError(f"{op}: {what} must be integers, got {data.dtype}")
    return data


def embedding(weight, indices):
    """Rows of ``weight`` (num, dim) picked by integer ``indices`` of any shape."""
    idx = _int_data(indices, "embedding", "indices")
    if weight.ndim != 2:
        raise ValueError(f"embedding: weight must be 2-D (num, dim), got shape {weight.shape}")
    if idx.size and (idx.min() < 0 or idx.max() >= weight.shape[0]):
        raise IndexError(f"embedding: indices must lie in [0, {weight.shape[0]}), "
                         f"got range [{idx.min()}, {idx.max()}]")
    return apply(OPS["embedding"], weight, indices=backend.of(weight.data).asarray(idx))


def cross_entropy(logits, target):
    """Mean cross-entropy of ``logits`` (..., C) against integer class ``target`` (...)."""
    t = _int_data(target, "cross_entropy", "targets")
    if logits.ndim < 1 or t.shape != logits.shape[:-1]:
        raise ValueError(f"cross_entropy: logits {logits.shape} need targets of shape "
                         f"{logits.shape[:-1]}, got {t.shape}")
    if t.size and (t.min() < 0 or t.max() >= logits.shape[-1]):
        raise IndexError(f"cross_entropy: targets must lie in [0, {logits.shape[-1]}), "
                         f"got range [{t.min()}, {t.max()}]")
    return apply(OPS["cross_entropy"], logits, target=backend.of(logits.data).asarray(t))


def mse(a, b):
    """Mean squared error; shapes must match exactly (broadcasting here is a bug magnet)."""
    a, b = _pair(a, b)
    if a.shape != b.shape:
        raise ValueError(f"mse: prediction {a.shape} and target {b.shape} differ in shape")
    d = sub(a, b)
    return mean(mul(d, d))


# Through the arrays' own operators, which every backend provides (api.ARRAY_METHODS).
_COMPARE = {"lt": lambda a, b: a < b, "le": lambda a, b: a <= b,
            "gt": lambda a, b: a > b, "ge": lambda a, b: a >= b}


def compare(a, b, how):
    """Elementwise comparison: a boolean Tensor, never differentiated."""
    a, b = _pair(a, b)
    out = Tensor._make(_COMPARE[how](a.data, b.data))
    if _tracer[0] is not None:
        _tracer[0].record("compare", (a, b), {"how": how}, out)
    return out


# ---- Tensor's operators and math methods ------------------------------------------------
# Installed from here rather than written in tensor.py, so that tensor.py never imports this
# module: the engine's imports run one way (ops -> tensor -> tape -> backend).
def _reflected(fn):
    return lambda self, other: fn(other, self)


for _name, _fn in {
        "__add__": add, "__radd__": _reflected(add), "__sub__": sub, "__rsub__": _reflected(sub),
        "__mul__": mul, "__rmul__": _reflected(mul), "__truediv__": div, "__rtruediv__": _reflected(div),
        "__neg__": neg, "__pow__": pow, "__matmul__": matmul, "__rmatmul__": _reflected(matmul),
        "__getitem__": getitem,
        "__lt__": lambda self, other: compare(self, other, "lt"),
        "__le__": lambda self, other: compare(self, other, "le"),
        "__gt__": lambda self, other: compare(self, other, "gt"),
        "__ge__": lambda self, other: compare(self, other, "ge"),
        "exp": exp, "log": log, "tanh": tanh, "sigmoid": sigmoid, "relu": relu, "leaky_relu": leaky_relu,
        "sum": sum, "mean": mean, "max": max, "reshape": reshape, "transpose": transpose, "split": split,
        "clip": clip, "softmax": softmax, "log_softmax": log_softmax, "astype": astype}.items():
    setattr(Tensor, _name, _fn)
del _name, _fn
