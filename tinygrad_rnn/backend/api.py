"""The backend contract: everything the engine may ask of a backend.

A backend is a module (``cpu.py``, ``cuda.py``) that owns one kind of array;
``backend.of(array)`` finds it (NumPy arrays by type, others by their
``backend`` attribute). ``ops.py`` reaches a backend in two ways only:

* the module functions in ``FUNCTIONS``, through ``k``, the backend of an op's
  inputs (or ``backend.of(x)``);
* the array attributes, methods and operators in ``ARRAY``, on the arrays.

``tensor.py``, ``tape.py`` and ``optim.py`` also call ``ENGINE_FUNCTIONS`` and read
``ATTRIBUTES``. Each entry says what the engine relies on; NumPy's meaning
applies wherever a name is NumPy's. tests/test_backend_api.py checks that every
backend provides all of this, and, by reading the source, that ``ops.py``,
``tensor.py`` and ``tape.py`` use nothing else from a backend.

A backend adds what it likes beyond this (kernels, helpers), but the engine may
not call it: an op that needs a new backend function adds it here first, and to
every backend.
"""

# name: how ops.py calls it, and what it returns.
FUNCTIONS = {
    "asarray": "asarray(data, dtype=None): host data, a Python scalar or an array of this backend, "
               "as an array here (Python floats become float32)",
    "to_numpy": "to_numpy(x): a NumPy array with x's data (a copy off the CPU)",
    "matmul": "matmul(a, b): NumPy's matmul (batched, 1-D operands promoted and squeezed)",
    "swapaxes": "swapaxes(a, i, j)",
    "expand_dims": "expand_dims(a, axis): axis an int or a tuple",
    "broadcast_to": "broadcast_to(a, shape): may be a view; the engine never writes into it",
    "sum_to_shape": "sum_to_shape(g, shape): sum a broadcast gradient back to shape (NumPy rules)",
    "concatenate": "concatenate(arrays, axis)",
    "where": "where(cond, a, b): cond boolean; a or b may be a Python scalar",
    "clip": "clip(a, lo, hi): lo/hi Python numbers, possibly infinite",
    "exp": "exp(a)",
    "log": "log(a)",
    "tanh": "tanh(a)",
    "sigmoid": "sigmoid(a): 1 / (1 + exp(-a)) without overflow",
    "leaky_relu": "leaky_relu(a, slope): a if a > 0 else a * slope",
    "scatter_add": "scatter_add(shape, index, g): zeros(shape) with g added at x[index] "
                   "(basic or integer-array index; repeats sum)",
    "embedding_bwd": "embedding_bwd(weight_shape, indices, g): rows of g added into zeros at indices",
    "cross_entropy": "cross_entropy(logits, target): 0-d mean of -log softmax(logits)[n, target[n]], "
                     "logits (N, C), integer target (N,) of this backend",
    "cross_entropy_bwd": "cross_entropy_bwd(logits, target, g): its gradient for the 0-d output gradient g",
}

# Used by tensor.py (creating, moving, seeding gradients), tape.py and optim.py.
ENGINE_FUNCTIONS = {
    "ones_like": "ones_like(a)",
    "copy_as": "copy_as(g, dtype): a new array, never a view (optimisers update gradients in place)",
    "sign": "sign(a)",
    "sqrt": "sqrt(a)",
}

ATTRIBUTES = {
    "name": "the device name: 'cpu' or 'cuda'",
    "FUSED_VJPS": "dict op name -> a fused VJP with the op table's signature "
                  "vjp(k, g, y, *inputs, **attrs); the same formula as the table's, "
                  "tested against it; may be empty",
}

# On the arrays. Operators are listed by their special method; the arithmetic ones must
# also work with a Python scalar on either side (``1 - y``), broadcasting as NumPy does.
ARRAY = {
    "shape": "tuple of ints", "dtype": "a NumPy dtype", "ndim": "int", "size": "int",
    "T": "reversed axes",
    "reshape": "reshape(shape) or reshape(*shape); -1 allowed",
    "transpose": "transpose(axes) or transpose(*axes)",
    "astype": "astype(dtype): float32, float64 or bool",
    "sum": "sum(axis=None, keepdims=False)",
    "mean": "mean(axis=None, keepdims=False)",
    "max": "max(axis=None, keepdims=False)",
    "__getitem__": "basic indexing (ints, slices, None, Ellipsis), integer arrays, tuples of both",
    "__add__": "", "__radd__": "", "__sub__": "", "__rsub__": "", "__mul__": "", "__rmul__": "",
    "__truediv__": "", "__rtruediv__": "", "__pow__": "a ** p, p a Python number", "__neg__": "",
    "__eq__": "elementwise, boolean result", "__lt__": "", "__le__": "", "__gt__": "", "__ge__": "",
    "__and__": "of boolean arrays",
}


def missing(module, example):
    """Names of the contract that ``module`` (with ``example``, one of its arrays) lacks."""
    wanted = (*FUNCTIONS, *ENGINE_FUNCTIONS, *ATTRIBUTES)
    names = [n for n in wanted if not hasattr(module, n)]
    return names + [f"array.{n}" for n in ARRAY if not hasattr(example, n)]
