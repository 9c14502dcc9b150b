"""Gradients of functions, as in JAX: ``grad``, ``value_and_grad`` and ``jacobian``.

``tr.grad(f)(*arrays)`` returns NumPy gradients of a scalar-valued ``f`` written with
Tensor ops: the arguments that are differentiated become tensors on a fresh tape, ``f``
runs, and one reverse walk gives their gradients. Nothing leaks out: a module's parameters
that ``f`` uses keep the ``.grad`` they had, and the call works inside ``tr.no_grad()``.
"""
import numpy as np

from . import tape
from .tensor import Tensor


def grad(f, argnums=0, has_aux=False):
    """The function computing the gradient of ``f``, a scalar (shape ``()``) Tensor-valued
    function, with respect to argument ``argnums`` (an int, or a tuple of ints for a tuple
    of gradients). Each gradient is a NumPy array of its argument's shape and dtype. With
    ``has_aux``, ``f`` returns ``(value, aux)`` and the function returns ``(gradient, aux)``.

    >>> tr.grad(lambda x: (x * x).sum())(np.array([1.0, 2.0]))
    array([2., 4.])
    """
    value_and_grad_f = _value_and_grad(f, argnums, has_aux, "grad")

    def gradient(*args, **kwargs):
        value, g = value_and_grad_f(*args, **kwargs)
        return (g, value[1]) if has_aux else g
    gradient.__name__ = f"grad_of_{getattr(f, '__name__', 'f')}"
    gradient.__doc__ = f"Gradient of {getattr(f, '__name__', 'f')} with respect to argument(s) {argnums}."
    return gradient


def value_and_grad(f, argnums=0, has_aux=False):
    """Like ``grad``, but the function returns ``(value, gradient)``: ``value`` is ``f``'s
    result as a NumPy 0-d array (``(value, aux)`` with ``has_aux``)."""
    return _value_and_grad(f, argnums, has_aux, "value_and_grad")


def _value_and_grad(f, argnums, has_aux, who):
    """``value_and_grad``, its errors naming ``who`` (the function the user called)."""
    nums, single = _argnums(argnums)

    def value_and_gradient(*args, **kwargs):
        tensors, call_args = _inputs(f, args, nums, who)
        with _recording():
            result = f(*call_args, **kwargs)
        out, aux = _split_aux(f, result, has_aux, who)
        if out.shape != ():
            raise ValueError(f"{who}: {_name(f)} must return a scalar (shape ()), got shape {out.shape}; "
                             "use tr.jacobian for a non-scalar output, or reduce it (.sum())")
        grads = _vjp(out, tensors, np.ones((), out.dtype))
        value = out.numpy()
        grads = grads[0] if single else tuple(grads)
        return ((value, aux) if has_aux else value), grads
    value_and_gradient.__name__ = f"value_and_grad_of_{_name(f)}"
    return value_and_gradient


def jacobian(f, argnums=0):
    """The function computing the Jacobian of ``f`` (returning a Tensor of any shape) with
    respect to argument ``argnums``: an array of shape ``output.shape + argument.shape``,
    one reverse walk (a VJP) per output element, so meant for small outputs (as
    ``jax.jacrev``). A tuple ``argnums`` gives a tuple of Jacobians."""
    nums, single = _argnums(argnums)

    def jacobian_of(*args, **kwargs):
        tensors, call_args = _inputs(f, args, nums, "jacobian")
        with _recording():
            out, _ = _split_aux(f, f(*call_args, **kwargs), False, "jacobian")
        rows = [np.zeros(out.shape + t.shape, t.dtype) for t in tensors]
        count = out.size
        for i, index in enumerate(np.ndindex(*out.shape)):
            seed = np.zeros(out.shape, out.dtype)
            seed[index] = 1
            for row, g in zip(rows, _vjp(out, tensors, seed, keep_graph=i < count - 1)):
                row[index] = g
        return rows[0] if single else tuple(rows)
    jacobian_of.__name__ = f"jacobian_of_{_name(f)}"
    return jacobian_of


def _name(f):
    return getattr(f, "__name__", type(f).__name__)


def _argnums(argnums):
    single = not isinstance(argnums, (tuple, list))
    nums = (argnums,) if single else tuple(argnums)
    if not nums or any(not isinstance(n, int) or isinstance(n, bool) for n in nums):
        raise TypeError(f"argnums must be an int or a non-empty tuple of ints, got {argnums!r}")
    if len(set(nums)) != len(nums):
        raise ValueError(f"argnums {argnums!r} names an argument twice")
    return nums, single


def _inputs(f, args, nums, who):
    """Fresh leaf tensors for the differentiated arguments; arrays among the others become
    constant tensors, anything else (sizes, flags, callables) is passed as given."""
    for n in nums:
        if not -len(args) <= n < len(args):
            raise ValueError(f"{who}: argnums {n} is out of range for {_name(f)} called with "
                             f"{len(args)} positional argument(s)")
    nums = [n % len(args) for n in nums]
    tensors, call_args = [], list(args)
    for n in nums:
        x = args[n]
        data = x.numpy() if isinstance(x, Tensor) else np.asarray(x)
        if data.dtype not in (np.float32, np.float64):
            raise TypeError(f"{who}: argument {n} of {_name(f)} must be float32 or float64 to be "
                            f"differentiated, got {data.dtype} (pass e.g. np.float64 values)")
        t = Tensor(data.copy(), requires_grad=True)
        tensors.append(t)
        call_args[n] = t
    for i, x in enumerate(args):
        if i not in nums and isinstance(x, np.ndarray):
            call_args[i] = Tensor(x)
    return tensors, call_args


def _split_aux(f, result, has_aux, who):
    aux = None
    if has_aux:
        if not isinstance(result, (tuple, list)) or len(result) != 2:
            raise TypeError(f"{who}: with has_aux=True, {_name(f)} must return a pair (value, aux), "
                            f"got {type(result).__name__}")
        result, aux = result
    if not isinstance(result, Tensor):
        raise TypeError(f"{who}: {_name(f)} must return a Tensor computed from its arguments with "
                        f"Tensor ops, got {type(result).__name__}")
    return result, aux


class _recording:
    """Record on the tape even inside ``tr.no_grad()``: the caller asked for a gradient."""

    def __enter__(self):
        self.previous, tape._recording[0] = tape._recording[0], True

    def __exit__(self, *exc):
        tape._recording[0] = self.previous


def _vjp(out, tensors, seed, keep_graph=False):
    """Gradients of ``sum(out * seed)`` for ``tensors`` as NumPy arrays (zeros where ``out``
    does not depend on one). Every other leaf the walk reaches keeps its ``.grad``."""
    for t in tensors:
        t.grad = None
    if not out.requires_grad:
        return [np.zeros(t.shape, t.dtype) for t in tensors]
    ours = {id(t) for t in tensors}
    others = [] if out._node is None else [
        leaf for node in tape._reachable(out._node) for leaf in node.inputs
        if leaf._node is None and leaf.requires_grad and id(leaf) not in ours]
    saved = [(leaf, leaf.grad) for leaf in {id(l): l for l in others}.values()]
    try:
        out.backward(seed, retain_graph=keep_graph)
    finally:
        for leaf, g in saved:
            leaf.grad = g
    return [np.zeros(t.shape, t.dtype) if t.grad is None else t.grad.numpy().copy() for t in tensors]
