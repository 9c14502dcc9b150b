"""The tape: what was computed, in order, so it can be differentiated backwards.

Each differentiable op appends a ``Node`` stamped with a global sequence number.
Inputs always exist before the op that consumes them, so sorting the nodes
reachable from the loss by descending sequence number is a valid reverse
topological order: no recursion, so a 10,000-step unroll is as easy as a
10-step one. Nodes are owned by the tensors they produced, so an unused graph
is freed by reference counting like any Python object.
"""
import itertools
from contextlib import contextmanager

_sequence = itertools.count()
_recording = [True]
_tracer = [None]  # the cell compiler's recorder while it traces a step (compiler/trace.py)


class Node:
    __slots__ = ("op", "inputs", "arrays", "attrs", "out", "k", "seq", "retain", "freed",
                 "__weakref__")

    def __init__(self, op, inputs, arrays, attrs, out, k):
        self.op, self.inputs, self.arrays, self.attrs, self.out, self.k = op, inputs, arrays, attrs, out, k
        self.seq = next(_sequence)
        self.retain = None  # weakref to the output tensor when it retains its grad
        self.freed = False


def is_recording():
    return _recording[0]


@contextmanager
def no_grad():
    """Run ops without recording them (evaluation, optimiser updates)."""
    if _tracer[0] is not None:  # inside a step the cell compiler traces: it would differentiate through it
        _tracer[0].turns_gradients_off()
    with not_recording():
        yield


@contextmanager
def not_recording():
    """``no_grad`` for the library's own use inside ops (``log_softmax``'s shift, whose gradient
    cancels exactly), which a traced step may contain."""
    previous = _recording[0]
    _recording[0] = False
    try:
        yield
    finally:
        _recording[0] = previous


def _reachable(root_node):
    seen, order, stack = {id(root_node)}, [], [root_node]
    while stack:
        node = stack.pop()
        order.append(node)
        for t in node.inputs:
            parent = t._node
            if parent is not None and id(parent) not in seen:
                seen.add(id(parent))
                stack.append(parent)
    order.sort(key=lambda n: n.seq, reverse=True)
    return order


def _checked(node, grads):
    """The VJP's gradients, broadcast ones summed back to their input's shape."""
    op, inputs = node.op, node.inputs
    if not isinstance(grads, (tuple, list)) or len(grads) != len(inputs):
        count = len(grads) if isinstance(grads, (tuple, list)) else type(grads).__name__
        raise RuntimeError(f"VJP of op '{op.name}' returned {count} gradient(s) for "
                           f"{len(inputs)} input(s)")
    fixed = None
    for i, g in enumerate(grads):
        if g is None:
            continue
        shape = node.arrays[i].shape
        if g.shape != shape:
            if not op.broadcast or tuple(g.shape) == tuple(shape):
                raise RuntimeError(f"VJP of op '{op.name}' returned a gradient of shape "
                                   f"{tuple(g.shape)} for input {i} of shape {tuple(shape)}")
            fixed = fixed or list(grads)
            # A constant (a Python scalar, say) needs no reduction: its gradient is dropped.
            fixed[i] = node.k.sum_to_shape(g, shape) if inputs[i].requires_grad else None
    return grads if fixed is None else fixed


def backward(root, grad, retain_graph=False):
    """Accumulate d(root)/d(leaf) * grad into ``.grad`` of every leaf that needs it."""
    if root._node is None:
        if root.requires_grad:
            root._accumulate(grad)
        return
    order = _reachable(root._node)
    pending = {id(root._node): grad}
    for node in order:
        g = pending.pop(id(node), None)
        if g is not None:
            _backward_node(node, g, pending)
        if not retain_graph:
            # Saved arrays go as soon as their node is done: peak memory is the graph's.
            node.freed, node.out, node.attrs, node.inputs, node.arrays = True, None, None, (), ()


def _backward_node(node, g, pending):
    if node.freed:
        raise RuntimeError(f"backward through op '{node.op.name}' a second time: its saved "
                           "tensors were freed; pass retain_graph=True to the first backward")
    if node.retain is not None and (t := node.retain()) is not None:
        t._accumulate(g)
    # The table's VJP, or the backend's fused kernel for the same formula (tested against it).
    vjp = node.k.FUSED_VJPS.get(node.op.name, node.op.vjp)
    grads = _checked(node, vjp(node.k, g, node.out, *node.arrays, **node.attrs))
    for t, gi in zip(node.inputs, grads):
        if gi is None or not t.requires_grad:
            continue
        if t._node is None:
            t._accumulate(gi)
        else:
            key = id(t._node)
            # Out of place: a VJP may hand the same array to two inputs.
            pending[key] = gi if key not in pending else pending[key] + gi
