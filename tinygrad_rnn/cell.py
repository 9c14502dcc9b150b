"""The Cell contract: one time step of a recurrent network, in Tensor ops."""
import inspect

import numpy as np

from . import init as _init
from . import ops
from .errors import ConfigError, UserCodeError, source_file, wrap_user_code
from .module import Module, Parameter
from .registry import provider_of


class _DefaultStateNames:
    """``h``, ``s1``, ``s2``, ... for a cell that names no states of its own."""

    def __get__(self, obj, cls):
        return ("h",) + tuple(f"s{i}" for i in range(1, cls.num_states))


class Cell(Module):
    """Base class for recurrent cells; subclass it and write ``step``.

    Class attributes: ``name`` (registry name, lower case), ``num_states``
    (1 for (h,), 2 for LSTM's (h, c); the output is always ``state[0]``) and,
    optionally, ``state_names`` (diagnostics' names for them; default h, s1, ...).
    Create parameters with ``self.param(shape, init=...)``; they are named after
    the attribute they are assigned to.

    ``cell.cell_options`` is the dict of constructor arguments past the two sizes, by
    name (``{"nonlinearity": "relu"}``), recorded by ``Cell`` itself: the compiler builds
    the same cell again at other sizes with them.
    """

    name = None
    num_states = 1
    state_names = _DefaultStateNames()  # e.g. ("h", "c"): diagnostics report each state by name

    def __new__(cls, *args, **kwargs):
        cell = super().__new__(cls)
        object.__setattr__(cell, "cell_options", _options_by_name(cls, args, kwargs))
        return cell

    def __init__(self, input_size, hidden_size, **options):
        super().__init__()
        for label, v in (("input_size", input_size), ("hidden_size", hidden_size)):
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v <= 0:
                raise ConfigError(f"{type(self).__name__}: {label} must be a positive integer, got {v!r}")
        if options:
            raise ConfigError(f"cell {self.name!r} takes no options {sorted(options)}")
        self.input_size, self.hidden_size = int(input_size), int(hidden_size)

    def param(self, shape, init="uniform"):
        """A new trainable parameter of ``shape``, drawn by ``init``: a scheme's name
        (``tr.init.INITS``) or a function ``init(rng, shape, dtype) -> array`` that draws
        from the NumPy generator ``rng`` (seeded by ``tr.manual_seed``), e.g. JANET's chrono
        initialisation of a forget-gate bias::

            def chrono(rng, shape, dtype, t_max=100):
                return np.log(rng.uniform(1, t_max - 1, shape)).astype(dtype)

            self.b_f = self.param((hidden_size,), init=chrono)
        """
        try:
            return Parameter(_init.make(init, shape, self.hidden_size, np.float32), dtype=np.float32)
        except ConfigError as e:  # a bad name or a bad array: say which cell asked for it
            raise ConfigError(f"{type(self).__name__}.param({tuple(shape)}): {e}") from None

    def reset_parameters(self, scheme):
        """Re-initialise every parameter by a named scheme (``tinygrad-rnn train --init``).

        ``pytorch`` redraws PyTorch's defaults. Any other scheme goes to the recurrent
        weights, recognised by PyTorch's naming: names containing ``hh``. Other matrices
        get ``xavier_uniform`` (or the scheme itself where it is not recurrent-specific),
        vectors get zeros. A cell whose names differ overrides this method.
        """
        recurrent_only = scheme in ("identity", "orthogonal")
        for name, p in self._params.items():
            if scheme == "pytorch":
                arr = _init.uniform(p.shape, self.hidden_size)
            elif p.ndim == 1:
                arr = np.zeros(p.shape)
            elif "hh" in name or not recurrent_only:
                arr = _init.make(scheme, p.shape, self.hidden_size)
            else:
                arr = _init.make("xavier_uniform", p.shape, self.hidden_size)
            p.data = arr.astype(p.dtype)

    def init_state(self, batch, dtype=np.float32, device="cpu"):
        """Zero states: a tuple of ``num_states`` tensors of shape (batch, hidden)."""
        zeros = np.zeros((batch, self.hidden_size), dtype)
        return tuple(ops.Tensor(zeros.copy(), device=device) for _ in range(self.num_states))

    def step(self, x, state):
        """One time step: ``x`` (B, input), ``state`` a tuple -> the new state tuple."""
        raise NotImplementedError

    def checked_step(self, x, state, t):
        """``step`` with its result checked against the contract; an exception raised in a
        plugin cell's ``step`` becomes a one-line ``tr.errors.UserCodeError`` naming the
        cell, its plugin file and line, and the time step ``t``."""
        ops.last_split[0] = None  # a split hint names a split of this step only
        try:
            new = self.step(x, state)
        except (Exception, SystemExit) as e:  # sys.exit() in a step must not end the run silently
            wrapped = wrap_user_code(e, "cell", self, provider_of(type(self)), f"at time step {t}",
                                     unpack_hint=ops.split_hint())
            if wrapped is None:
                raise
            raise wrapped from e
        return _checked_state(self, new, state, t)

    def forward_sequence(self, x, state, mask=None, probe=None):
        """Run over a whole sequence ``x`` (T, B, I); return (out (T, B, H), final state).

        This reference path loops over ``step``; ``tr.nn.RNN`` normally runs the kernels
        the compiler generates from ``step`` instead. A cell may still override this by
        hand. ``mask`` (T, B) marks real (1) and padded (0) steps; ``probe`` collects
        the per-step states so their gradient norms can be read after backward.
        """
        outs = []
        T = x.shape[0]
        for t in range(T):
            new = self.checked_step(x[t], state, t)
            if probe is not None:  # a state passed through unchanged is still a new state at t
                new = tuple(n + 0 if any(n is s for s in state) else n for n in new)
            computed = None
            if mask is not None and not mask[t].all():
                m = mask[t][:, None] > 0
                computed = new
                new = tuple(ops.where(m, n, s) for n, s in zip(new, state))
                outs.append(new[0] * ops.Tensor(mask[t][:, None].astype(new[0].dtype), device=x.device))
            else:
                outs.append(new[0])
            if probe is not None:
                probe.track(new, computed, None if computed is None else mask[t])
            state = new
        return ops.stack(outs, 0), state


def _options_by_name(cls, args, kwargs):
    """The constructor's arguments past self and the two sizes, keyed by name."""
    signature = inspect.signature(cls.__init__)
    try:
        bound = signature.bind(None, *args, **kwargs)
    except TypeError:
        return dict(kwargs)  # __init__ itself says what is wrong with the call
    sizes = [p.name for p in signature.parameters.values() if p.kind in (
        inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)][:3]
    options = {}
    for name, value in bound.arguments.items():
        kind = signature.parameters[name].kind
        if kind is inspect.Parameter.VAR_KEYWORD:
            options.update(value)
        elif name not in sizes and kind is not inspect.Parameter.VAR_POSITIONAL:
            options[name] = value
    return options


def _checked_state(cell, new, old, t):
    """Enforce the contract on what ``step`` returned; errors name the cell, its plugin file
    and the line of its ``step``, and the time step."""
    def fail(problem):
        cls = type(cell)
        line = getattr(getattr(cls.step, "__code__", None), "co_firstlineno", "?")
        raise UserCodeError(f"cell {cell.name!r} (plugin {provider_of(cls)!r}, "
                            f"{source_file(cls) or cls.__module__}:{line}, in step) at time step {t}: {problem}")

    if isinstance(new, ops.Tensor):
        new = (new,)
    if not isinstance(new, (tuple, list)) or len(new) != cell.num_states:
        got = len(new) if isinstance(new, (tuple, list)) else type(new).__name__
        hint = ops.split_hint(result=new)
        fail(f"step() must return a tuple of num_states={cell.num_states} tensors, got {got}"
             + (f" ({hint})" if hint else ""))
    for i, (n, o) in enumerate(zip(new, old)):
        if not isinstance(n, ops.Tensor):
            fail(f"state {i} is a {type(n).__name__}, not a Tensor")
        if n.shape != o.shape:
            fail(f"state {i} has shape {n.shape}, expected {o.shape}")
    return tuple(new)
