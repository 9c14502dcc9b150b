"""``nn.RNN``: any registered cell, stacked in layers and run over time."""
import numpy as np

from . import ops
from .compiler import CompileError, compile_cell, run_layer
from .nn import Module
from .tensor import Tensor


class GradProbe:
    """Per-step gradient norms of one layer's states, read after backward.

    Fused cells fill ``norms`` from their backward kernel; the reference path
    keeps each step's state tensors with ``retain_grad`` and reads their grads.
    """

    def __init__(self):
        self.norms = None
        self._states = []

    def track(self, states, computed=None, mask=None):
        """Keep one step's states. On a partly padded step ``states`` are the masked
        results and ``computed`` what ``step`` returned: a real row's total gradient
        (through the rest of the step too, such as c_t -> h_t) is on ``computed``, a
        padded row's on ``states``."""
        kept = []
        for s in (*states, *(computed or ())):
            if s.requires_grad:
                s.retain_grad()
        self._states.append((list(states), computed, mask))

    def result(self, num_states):
        """Array (num_states, T): ||dL/d state_t|| over batch and hidden."""
        if self.norms is not None:
            return np.asarray(self.norms)
        if not self._states:
            raise RuntimeError("no gradient norms recorded: run backward() after the forward pass")
        out = np.zeros((num_states, len(self._states)))
        for t, (states, computed, mask) in enumerate(self._states):
            for i, s in enumerate(states):
                g = _grad64(s)
                if computed is not None:
                    real = mask[:, None] > 0
                    g = np.where(real, _grad64(computed[i]), g)
                out[i, t] = np.sqrt((g ** 2).sum())
        return out


def _grad64(t):
    return np.zeros(t.shape) if t.grad is None else t.grad.numpy().astype(np.float64)


def fused_sequence(cell, kind, x, state, mask, probe, relu=False):
    from .cell import fused_sequence as run
    return run(cell, kind, x, state, mask, probe, relu=relu)


class RNN(Module):
    """A stack of ``num_layers`` cells run over a sequence.

    ``RNN(cell, input_size, hidden_size, num_layers=1, batch_first=False,
    dtype="float32", fused=None, **cell_options)``. ``cell`` is a registered
    name or a ``tr.Cell`` subclass. ``fused=None`` uses a cell's fused kernel
    when it has one; ``fused=False`` forces the reference ``step`` path.

    ``out, state = rnn(x, state=None, lengths=None)``: ``x`` is (T, B, I)
    (or (B, T, I) with ``batch_first``); ``out`` is the last layer's output
    (T, B, H); ``state`` is a tuple of ``num_states`` tensors (num_layers, B, H).
    Parameters are named like PyTorch's: ``weight_ih_l0``, ``weight_hh_l1``, ...
    """

    def __init__(self, cell, input_size, hidden_size, num_layers=1, batch_first=False,
                 dtype="float32", fused=None, **cell_options):
        super().__init__()
        from .plugins import get_cell

        cls = get_cell(cell) if isinstance(cell, str) else cell
        if not isinstance(num_layers, (int, np.integer)) or num_layers < 1:
            raise ValueError(f"num_layers must be a positive integer, got {num_layers!r}")
        self.cell_class = cls
        self.num_states = cls.num_states
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, int(num_layers)
        self.batch_first = batch_first
        self.fused = fused
        self.cell_options = dict(cell_options)
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
        self.cells = [cls(input_size if l == 0 else hidden_size, hidden_size, **cell_options)
                      for l in range(self.num_layers)]
        for l, c in enumerate(self.cells):
            c.__dict__["_init_options"] = dict(cell_options)  # the compiler re-makes cells at probe sizes
            object.__setattr__(self, f"_cell{l}", c)
            for p in c.parameters():
                p.data = p.data.astype(self.dtype)
        self.probes = None

    def named_parameters(self, prefix=""):
        for l, c in enumerate(self.cells):
            for name, p in c.named_parameters():
                yield f"{prefix}{name}_l{l}", p

    def modules(self):
        yield self
        for c in self.cells:
            yield from c.modules()

    def cpu_copy(self):
        """This RNN with its current parameters, on the CPU (self if it already is)."""
        if all(p.device == "cpu" for p in self.parameters()):
            return self
        twin = RNN(self.cell_class, self.input_size, self.hidden_size, self.num_layers,
                   self.batch_first, self.dtype, self.fused, **self.cell_options)
        return twin.load_state_dict(self.state_dict())

    def reset_parameters(self, scheme):
        for c in self.cells:
            c.reset_parameters(scheme)

    def forward(self, x, state=None, lengths=None, probe=False):
        """Run the sequence; with ``probe=True`` keep per-step gradient norms in ``self.probes``."""
        x = ops.tensor(x)
        if x.ndim != 3:
            raise ValueError(f"RNN: input must be 3-D ({'B, T' if self.batch_first else 'T, B'}, "
                             f"{self.input_size}), got shape {x.shape}")
        if x.dtype != self.dtype:
            if x.dtype.kind != "f":
                raise TypeError(f"RNN: input must be floating point, got {x.dtype}")
            x = x.astype(self.dtype)
        if self.batch_first:
            x = x.transpose(1, 0, 2)
        T, B, I = x.shape
        if I != self.input_size:
            raise ValueError(f"RNN: input has {I} features per step, the model expects "
                             f"{self.input_size} (input shape {x.shape})")
        if T == 0 or B == 0:
            raise ValueError(f"RNN: empty input of shape {x.shape}")
        mask = _mask(lengths, T, B, self.dtype)
        state = self._initial_state(state, B, x.device)
        self.probes = [GradProbe() for _ in self.cells] if probe else None
        finals = []
        for l, c in enumerate(self.cells):
            layer_state = tuple(s[l] for s in state)
            x, final = self._run_layer(c, x, layer_state, mask, self.probes[l] if probe else None)
            finals.append(final)
        out = x.transpose(1, 0, 2) if self.batch_first else x
        return out, tuple(ops.stack([f[i] for f in finals], 0) for i in range(self.num_states))

    def _run_layer(self, cell, x, state, mask, probe):
        """One layer over the whole sequence (T, B, I) -> (out (T, B, H), final state tuple).

        ``fused=None`` compiles the cell's ``step`` when it can and falls back to the
        step loop when it cannot; ``fused=True`` insists (a CompileError names the op
        and the line); ``fused=False`` runs the step loop, the reference.
        """
        if self.fused is False:
            return _reference_sequence(cell, x, state, mask, probe)
        if _has_fused(cell):  # a hand-written whole-sequence override
            return cell.forward_sequence(x, state, mask, probe)
        if x.device != "cpu":
            kind = getattr(cell, "fused_kind", None)
            if kind is not None:
                return fused_sequence(cell, kind, x, state, mask, probe,
                                      relu=getattr(cell, "nonlinearity", "tanh") == "relu")
            if self.fused:
                raise CompileError(f"cell {cell.name!r}: compiled kernels run on the CPU only; "
                                   "use fused=None or False on cuda")
            return _reference_sequence(cell, x, state, mask, probe)
        try:
            compiled = compile_cell(cell, x.dtype)
        except CompileError:
            if self.fused:
                raise
            return _reference_sequence(cell, x, state, mask, probe)
        return run_layer(cell, x, state, mask, probe, compiled)

    def step_grad_norms(self, which=0):
        """After a ``probe=True`` forward and a backward: array (num_layers, T)."""
        if self.probes is None:
            raise RuntimeError("call rnn(x, probe=True) and backward() before step_grad_norms()")
        return np.stack([p.result(self.num_states)[which] for p in self.probes])

    def _initial_state(self, state, B, device):
        shape = (self.num_layers, B, self.hidden_size)
        if state is None:
            zeros = np.zeros(shape, self.dtype)
            return tuple(Tensor(zeros, device=device) for _ in range(self.num_states))
        if isinstance(state, Tensor) or not isinstance(state, (tuple, list)):
            state = (state,)
        if len(state) != self.num_states:
            raise ValueError(f"RNN: cell {self.cell_class.name!r} needs {self.num_states} state "
                             f"tensor(s), got {len(state)}")
        out = []
        for i, s in enumerate(state):
            s = ops.tensor(s)
            if s.shape != shape:
                raise ValueError(f"RNN: state {i} has shape {s.shape}, expected {shape} "
                                 "(num_layers, batch, hidden)")
            out.append(s.astype(self.dtype))
        return tuple(out)


def _has_fused(cell):
    """Whether the cell overrides ``forward_sequence`` by hand."""
    from .cell import Cell
    return type(cell).forward_sequence is not Cell.forward_sequence


def _reference_sequence(cell, x, state, mask, probe):
    """The base class's loop over ``step``, even for a cell that has a fused override."""
    from .cell import Cell
    return Cell.forward_sequence(cell, x, state, mask, probe)


def _mask(lengths, T, B, dtype):
    if lengths is None:
        return None
    lengths = np.asarray(lengths.numpy() if isinstance(lengths, Tensor) else lengths)
    if lengths.shape != (B,) or lengths.dtype.kind not in "iu":
        raise ValueError(f"RNN: lengths must be {B} integers (one per sequence), got "
                         f"shape {lengths.shape} dtype {lengths.dtype}")
    if lengths.min() < 1 or lengths.max() > T:
        raise ValueError(f"RNN: lengths must lie in [1, {T}], got [{lengths.min()}, {lengths.max()}]")
    return (np.arange(T)[:, None] < lengths[None, :]).astype(dtype)
