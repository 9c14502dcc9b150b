"""Initialisation schemes, by name. Fans follow PyTorch's (out, in) weight layout."""
import contextlib

import numpy as np

from .errors import ConfigError

_rng = [np.random.default_rng(0)]


def manual_seed(seed):
    """Seed the generator every initialiser draws from (like ``torch.manual_seed``)."""
    _rng[0] = np.random.default_rng(seed)


def rng():
    """The generator every initialiser (and dropout) draws from."""
    return _rng[0]


@contextlib.contextmanager
def seeded(seed):
    """Within: initialisers draw from a fresh generator seeded with ``seed``; after, the
    user's stream goes on exactly where it was (for throwaway cells, e.g. probes)."""
    saved = _rng[0]
    _rng[0] = np.random.default_rng(seed)
    try:
        yield
    finally:
        _rng[0] = saved


def get_rng_state():
    """That generator's state, a JSON-able dict (checkpoints save it; ``torch.get_rng_state``)."""
    return _rng[0].bit_generator.state


def set_rng_state(state):
    """Put the generator back in a state that ``get_rng_state`` returned."""
    _rng[0].bit_generator.state = state


def _fans(shape):
    if len(shape) < 2:
        return shape[0], shape[0]
    receptive = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    return shape[1] * receptive, shape[0] * receptive


def zeros(shape, hidden_size):
    return np.zeros(shape)


def ones(shape, hidden_size):
    return np.ones(shape)


def uniform(shape, hidden_size):
    """PyTorch's RNN default: U(-1/sqrt(hidden), 1/sqrt(hidden))."""
    bound = 1.0 / np.sqrt(hidden_size)
    return rng().uniform(-bound, bound, shape)


def normal(shape, hidden_size):
    return rng().normal(0.0, 1.0 / np.sqrt(hidden_size), shape)


def xavier_uniform(shape, hidden_size):
    fan_in, fan_out = _fans(shape)
    bound = np.sqrt(6.0 / (fan_in + fan_out))
    return rng().uniform(-bound, bound, shape)


def xavier_normal(shape, hidden_size):
    fan_in, fan_out = _fans(shape)
    return rng().normal(0.0, np.sqrt(2.0 / (fan_in + fan_out)), shape)


def kaiming_uniform(shape, hidden_size):
    bound = np.sqrt(6.0 / _fans(shape)[0])
    return rng().uniform(-bound, bound, shape)


def kaiming_normal(shape, hidden_size):
    return rng().normal(0.0, np.sqrt(2.0 / _fans(shape)[0]), shape)


def _blocks(shape):
    """A stacked gate matrix (G*H, H) is initialised one (H, H) block at a time."""
    if len(shape) == 2 and shape[0] % shape[1] == 0:
        return shape[0] // shape[1], (shape[1], shape[1])
    return 1, shape


def orthogonal(shape, hidden_size):
    if len(shape) < 2:
        raise ValueError(f"orthogonal init needs a matrix, got shape {shape}")
    count, block = _blocks(shape)
    out = []
    for _ in range(count):
        rows, cols = block
        a = rng().standard_normal((max(rows, cols), min(rows, cols)))
        q, r = np.linalg.qr(a)
        q *= np.sign(np.diag(r))  # makes the distribution uniform (Mezzadri 2007)
        out.append(q if rows >= cols else q.T)
    return np.concatenate(out).reshape(shape)


def identity(shape, hidden_size):
    """Identity per gate block (Le et al. 2015 for ReLU RNNs); zeros for vectors."""
    if len(shape) != 2:
        return np.zeros(shape)
    count, block = _blocks(shape)
    return np.concatenate([np.eye(*block)] * count)


INITS = {f.__name__: f for f in (zeros, ones, uniform, normal, xavier_uniform, xavier_normal,
                                 kaiming_uniform, kaiming_normal, orthogonal, identity)}


def make(name, shape, hidden_size, dtype=np.float32):
    """An array of ``shape`` from the scheme ``name``, or from ``name(rng, shape, dtype)`` when
    it is a function: any initialiser of your own, drawing from ``rng`` (the generator
    ``manual_seed`` seeds, so runs stay reproducible), returning an array of that shape."""
    shape = tuple(int(n) for n in shape)
    if callable(name):
        return _custom(name, shape, np.dtype(dtype))
    if not isinstance(name, str) or name not in INITS:
        raise ConfigError(f"unknown init {name!r}; choose from {', '.join(INITS)}, "
                         "or pass a function init(rng, shape, dtype) -> array")
    return INITS[name](shape, hidden_size)


def _custom(fn, shape, dtype):
    label = getattr(fn, "__qualname__", None) or repr(fn)
    arr = fn(rng(), shape, dtype)
    try:
        arr = np.asarray(arr)
    except Exception as e:  # a Tensor, a list of lists, ...: anything NumPy reads is fine
        raise ConfigError(f"init function {label} returned {type(arr).__name__}, not an array ({e})") from None
    if arr.shape != shape:
        raise ConfigError(f"init function {label} returned shape {arr.shape} for a parameter of shape {shape}")
    if arr.dtype.kind not in "fiu":
        raise ConfigError(f"init function {label} returned {arr.dtype} values, not numbers")
    if not np.isfinite(arr).all():
        bad = tuple(int(i) for i in np.argwhere(~np.isfinite(arr))[0])
        raise ConfigError(f"init function {label} returned {arr[bad]} at index {bad}; parameters must be finite")
    return arr
