"""``nn.RNN``: any registered cell, stacked in layers and run over time."""
import numpy as np

from . import ops
from .cell import Cell
from .compiler import CompileError, compile_cell, fallback_warning, run_layer
from .module import Module, dropout
from .norms import GradProbe
from .plugins import get_cell, raise_if_user_code
from .remat import check_remat, compiled_sequence, every_for, step_sequence
from .tape import no_grad
from .tensor import Tensor

__all__ = ["RNN", "GradProbe"]


class RNN(Module):
    """A stack of ``num_layers`` cells run over a sequence.

    ``RNN(cell, input_size, hidden_size, num_layers=1, batch_first=False,
    dtype="float32", fused=None, bidirectional=False, dropout=0.0, remat=None, **cell_options)``.
    ``cell`` is a registered name or a ``tr.Cell`` subclass. ``fused=None`` runs the
    kernels the compiler generates from the cell's ``step`` when it can compile it (CPU
    and GPU), else the step loop; ``fused=True`` insists; ``fused=False`` forces the
    reference ``step`` path.

    ``remat=K`` (an int, or ``True`` for about sqrt(T)) recomputes the forward pass K
    steps at a time during the backward instead of keeping every step's intermediate
    values: memory for activations falls from T steps to K (plus every K-th state and the
    output), for about one more forward pass of time. Gradients are bit-identical on the
    step path and equal to float rounding on the compiled path (its per-segment weight
    gradients are summed in another order). On the GPU the compiled kernels run without it.

    ``out, state = rnn(x, state=None, lengths=None, probe=False)``: ``x`` is (T, B, I)
    (or (B, T, I) with ``batch_first``); ``out`` is the last layer's output
    (T, B, D*H); ``state`` is a tuple of ``num_states`` tensors (D*num_layers, B, H),
    where D is 2 with ``bidirectional`` and 1 otherwise. As in PyTorch: the
    directions' outputs are concatenated on the feature axis, states are ordered
    layer 0 forward, layer 0 reverse, layer 1 forward, ...; with ``lengths`` the
    reverse direction starts each sequence at its own last valid step (packed
    sequences). ``dropout=p`` drops the input of every layer but the first while
    ``rnn.training`` (``rnn.train()`` / ``rnn.eval()``), drawn from ``tr.manual_seed``'s
    generator. Parameters are named like PyTorch's: ``weight_ih_l0``,
    ``weight_hh_l1``, ``bias_ih_l0_reverse``, ...

    ``probe=True`` measures ||dL/d state_t|| for every step during the backward:
    ``rnn.step_grad_norms(which)`` reads them after ``loss.backward()`` (exact down to
    the smallest representable gradient; ``which`` counts the cell's ``state_names``).
    """

    def __init__(self, cell, input_size, hidden_size, num_layers=1, batch_first=False,
                 dtype="float32", fused=None, bidirectional=False, dropout=0.0, remat=None, **cell_options):
        super().__init__()
        cls = get_cell(cell) if isinstance(cell, str) else cell
        if not isinstance(num_layers, (int, np.integer)) or num_layers < 1:
            raise ValueError(f"num_layers must be a positive integer, got {num_layers!r}")
        self.cell_class = cls
        self.num_states = cls.num_states
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, int(num_layers)
        self.batch_first = batch_first
        if fused is not None and not isinstance(fused, (bool, np.bool_)):
            raise TypeError(f"fused must be None (compile when possible), True or False, got {fused!r}")
        self.fused = None if fused is None else bool(fused)
        self.cell_options = dict(cell_options)
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
        if not isinstance(bidirectional, (bool, np.bool_)):
            raise TypeError(f"bidirectional must be True or False, got {bidirectional!r}")
        if (isinstance(dropout, bool) or not isinstance(dropout, (int, float, np.floating))
                or not 0 <= dropout < 1):
            raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")
        self.bidirectional, self.dropout = bool(bidirectional), float(dropout)
        self.remat = check_remat(remat)
        self.num_directions = 2 if self.bidirectional else 1
        layer_input = [input_size] + [hidden_size * self.num_directions] * (self.num_layers - 1)
        try:
            self.cells = [cls(i, hidden_size, **cell_options) for i in layer_input]
            self.reverse_cells = [cls(i, hidden_size, **cell_options) for i in layer_input] if self.bidirectional else []
        except Exception as e:  # a plugin's constructor failing is its author's bug, told in one line
            raise_if_user_code(e, "cell", cls, "while building the layer")
            raise
        for l, suffix, c in self._directions():
            object.__setattr__(self, f"_cell{l}{suffix}", c)
            for p in c.parameters():
                p.data = p.data.astype(self.dtype)
        self.probes = None

    def _directions(self):
        """(layer, name suffix, cell) in PyTorch's order: l0, l0_reverse, l1, l1_reverse, ..."""
        for l, c in enumerate(self.cells):
            yield l, "", c
            if self.bidirectional:
                yield l, "_reverse", self.reverse_cells[l]

    def named_parameters(self, prefix=""):
        for l, suffix, c in self._directions():
            for name, p in c.named_parameters():
                yield f"{prefix}{name}_l{l}{suffix}", p

    def modules(self):
        yield self
        for _, _, c in self._directions():
            yield from c.modules()

    def cpu_copy(self):
        """This RNN with its current parameters, on the CPU (self if it already is)."""
        if all(p.device == "cpu" for p in self.parameters()):
            return self
        twin = RNN(self.cell_class, self.input_size, self.hidden_size, self.num_layers,
                   self.batch_first, self.dtype, self.fused, self.bidirectional, self.dropout,
                   remat=self.remat, **self.cell_options)
        return twin.train(self.training).load_state_dict(self.state_dict())

    def reset_parameters(self, scheme):
        for _, _, c in self._directions():
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
        # probing: the default initial state is on the tape, so dL/dh_t is measured even
        # when nothing else the layer reads needs a gradient (a cell without parameters)
        state = self._initial_state(state, B, x.device, requires_grad=probe)
        self.probes = [] if probe else None
        x, finals = self._layers(x, state, mask, probe)
        out = x.transpose(1, 0, 2) if self.batch_first else x
        return out, tuple(ops.stack([f[i] for f in finals], 0) for i in range(self.num_states))

    def layer_inputs(self, x, state=None):
        """What each layer and direction reads, in the order of the final states: a list of
        (input (T, B, I_l), initial state tuple, cell), time-major whatever ``batch_first``
        says, a reverse direction's input reversed in time as its cell reads it; no tape."""
        seen = []
        kept = self.remat
        self.remat = kept or True  # only the states are needed: nothing else of a long sequence is kept
        try:
            with no_grad():
                x = ops.tensor(x).astype(self.dtype)
                if self.batch_first:
                    x = x.transpose(1, 0, 2)
                self._layers(x, self._initial_state(state, x.shape[1], x.device), None, seen=seen)
        finally:
            self.remat = kept
        return seen

    def _layers(self, x, state, mask, probe=False, seen=None):
        """Every layer and direction over ``x`` (T, B, I) -> (top output, final states in
        PyTorch's order). ``seen``, a list, collects each direction's (input, initial state, cell)."""
        T, B = x.shape[:2]
        order = _reverse_order(mask, T, B) if self.bidirectional else None
        finals, outs = [], []
        for i, (l, suffix, c) in enumerate(self._directions()):
            if not suffix and l:  # a new layer reads the previous layer's outputs
                x = outs[0] if len(outs) == 1 else ops.cat(outs, axis=-1)
                x, outs = dropout(x, self.dropout, self.training), []
            layer_state = tuple(s[i] for s in state)
            p = GradProbe(_probe_order(order, suffix)) if probe else None
            if probe:
                self.probes.append(p)
            x_in = _time_gather(x, order) if suffix else x  # reverse: each sequence from its own end
            if seen is not None:
                seen.append((x_in, layer_state, c))
            y, final = self._run_layer(c, x_in, layer_state, mask, p)
            outs.append(_time_gather(y, order) if suffix else y)  # the permutation is its own inverse
            finals.append(final)
        return (outs[0] if len(outs) == 1 else ops.cat(outs, axis=-1)), finals

    def _run_layer(self, cell, x, state, mask, probe):
        """One layer over the whole sequence (T, B, I) -> (out (T, B, H), final state tuple).

        ``fused=None`` compiles the cell's ``step`` when it can and falls back to the
        step loop when it cannot; ``fused=True`` insists (a CompileError names the op
        and the line); ``fused=False`` runs the step loop, the reference.
        """
        every = every_for(self.remat, x.shape[0])
        if self.fused is False:
            return _reference_sequence(cell, x, state, mask, probe, every)
        if _has_fused(cell):  # a hand-written whole-sequence override
            return cell.forward_sequence(x, state, mask, probe)
        try:
            compiled = compile_cell(cell, x.dtype)
            # built (and for the CPU compiled) here, so that a failure falls back
            compiled.cuda_module if x.device != "cpu" else compiled.module
        except CompileError as e:
            if self.fused:
                raise
            fallback_warning(e)
            return _reference_sequence(cell, x, state, mask, probe, every)
        if x.device == "cpu" and (every is not None or probe is not None):
            return compiled_sequence(cell, x, state, mask, probe, compiled, every)
        return run_layer(cell, x, state, mask, probe, compiled)

    def step_grad_norms(self, which=0, log10=False):
        """After a ``probe=True`` forward and a backward: array (num_directions * num_layers, T),
        rows in the order of the final states (layer 0, layer 0 reverse, layer 1, ...),
        columns in time order for both directions. ``which`` indexes the cell's
        ``state_names``; ``log10=True`` gives log10 of the norms (-inf for an exact zero),
        which the compiled path measures exactly even below float64's range."""
        if self.probes is None:
            raise RuntimeError("call rnn(x, probe=True) and backward() before step_grad_norms()")
        if log10:
            return np.stack([p.result_log10(self.num_states)[which] for p in self.probes])
        return np.stack([p.result(self.num_states)[which] for p in self.probes])

    def _initial_state(self, state, B, device, requires_grad=False):
        shape = (self.num_directions * self.num_layers, B, self.hidden_size)
        if state is None:
            zeros = np.zeros(shape, self.dtype)
            return tuple(Tensor(zeros, device=device, requires_grad=requires_grad) for _ in range(self.num_states))
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
                                 f"({'2 * ' if self.bidirectional else ''}num_layers, batch, hidden)")
            out.append(s.astype(self.dtype))
        return tuple(out)


def _has_fused(cell):
    """Whether the cell overrides ``forward_sequence`` by hand."""
    return type(cell).forward_sequence is not Cell.forward_sequence


def _reference_sequence(cell, x, state, mask, probe, every=None):
    """The base class's loop over ``step``, even for a cell that has a fused override;
    with ``every``, recomputed that many steps at a time in the backward."""
    if every is not None:
        return step_sequence(cell, x, state, mask, probe, every)
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


def _reverse_order(mask, T, B):
    """(T, B) time indices that read each sequence backwards within its length;
    padded steps stay where they are. Applying it twice gives the identity."""
    lengths = np.full(B, T) if mask is None else mask.sum(axis=0).astype(np.int64)
    t = np.arange(T)[:, None]
    return np.where(t < lengths[None, :], lengths[None, :] - 1 - t, t)


def _time_gather(x, order):
    """``x`` (T, B, F) with ``out[t, b] = x[order[t, b], b]``: one gather on the tape."""
    T, B = order.shape
    rows = (order * B + np.arange(B)[None, :]).reshape(-1)
    # A row gather is what the embedding op does; its backward is a scatter-add kernel
    # (getitem's np.add.at costs 10x more here).
    return ops.embedding(x.reshape(T * B, x.shape[2]), rows).reshape(T, B, x.shape[2])


def _probe_order(order, suffix):
    """Processing steps of the reverse direction, put back in time order (None: forward)."""
    if not suffix:
        return None
    if not (order == order[:, :1]).all():
        raise ValueError("RNN: per-step gradient norms of a bidirectional RNN need equal lengths: "
                         "with unequal lengths the reverse direction's steps are not one time step")
    return order[:, 0]
