"""Weights in PyTorch's names, both ways: ``interop.export`` writes a checkpoint's model as a
safetensors file that a PyTorch module loads with ``load_state_dict(strict=True)``, and
``load`` reads weights trained in PyTorch into a model built here (``--weights``).

The names are PyTorch's: ``rnn.*`` as ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` name them
(``weight_ih_l0``, ``bias_hh_l1_reverse``, ...), ``head.*`` as ``nn.Linear`` and ``embed.*``
as ``nn.Embedding``. The built-in cells already hold their parameters in PyTorch's layout
and gate order (LSTM i, f, g, o; GRU r, z, n), so nothing is reordered: only the embedding's
module name differs. A plugin cell exports under its own parameter names: PyTorch has no
such layer. ``load`` takes an exported model or a bare ``nn.LSTM``/``nn.GRU``/``nn.RNN``
state_dict, checks every name and shape against the model and says what does not fit
(a missing layer, a transposed matrix, a gate-count mismatch) instead of guessing.
"""
import os
import re

from . import checkpoint
from .errors import Error

# our module name -> the exported one (rnn. and head. are the same on both sides)
EXPORTED = {"embedding.": "embed."}
PREFIXES = ("rnn.", "head.", "embed.")
# built-in cell name -> the PyTorch layer of the same equations, parameters and gate order
TORCH_LAYERS = {"lstm": "nn.LSTM", "gru": "nn.GRU", "rnn": "nn.RNN"}
GATES = {4: ("lstm", "nn.LSTM"), 3: ("gru", "nn.GRU"), 1: ("rnn", "nn.RNN")}
_LAYERED = re.compile(r"^(?P<base>.+)_l(?P<layer>\d+)(?P<reverse>_reverse)?$")


class WeightsError(Error, ValueError):
    """A weights file that cannot be read or does not fit the model."""


# ---- export ---------------------------------------------------------------------------------
def exported_names(state):
    """Our state_dict names -> PyTorch's (``embedding.weight`` -> ``embed.weight``)."""
    out = {}
    for name, value in state.items():
        for ours, theirs in EXPORTED.items():
            if name.startswith(ours):
                name = theirs + name[len(ours):]
        out[name] = value
    return out


def is_safetensors(path):
    """Whether ``path`` holds a readable safetensors header (any content)."""
    try:
        checkpoint.read_safetensors_header(path, path, WeightsError)
    except WeightsError:
        return False
    return True


# ---- --weights ------------------------------------------------------------------------------
def load(path, model, config=None):
    """Load the safetensors weights at ``path`` into ``model`` (a ``SequenceModel``): an
    exported model (``rnn.*``, ``head.*``, ``embed.*``) or a bare RNN state_dict
    (``weight_ih_l0``, ...; the head and embedding then keep their initialisation).
    ``config`` (the run's settings) words the messages; a WeightsError says what does
    not fit, and the model is unchanged unless everything fits."""
    if not isinstance(path, str) or not os.path.isfile(path):
        raise WeightsError(f"weights= {path!r}: no such file")
    label = f"weights= {path!r}"
    arrays, metadata = checkpoint.read_safetensors(path, label, WeightsError)
    if checkpoint.HEADER_KEY in metadata:
        raise WeightsError(f"{label} is a tinygrad_rnn checkpoint: continue it with resume=, or export it "
                           "first (tinygrad-rnn export)")
    if not arrays:
        raise WeightsError(f"{label} holds no tensors")
    for name, value in arrays.items():
        if value.dtype.kind != "f":
            raise WeightsError(f"{label}: tensor {name!r} holds {value.dtype} values, not floats")
    foreign = sorted(n for n in arrays if "." in n and not n.startswith(PREFIXES))
    if foreign:
        modules = sorted({n.split(".")[0] for n in foreign})
        raise WeightsError(f"{label}: tensor(s) {_names(foreign, str)} belong to module(s) "
                           f"{', '.join(map(repr, modules))}, which the model does not have: it reads rnn.* "
                           "(nn.LSTM/GRU/RNN), head.* (nn.Linear) and embed.* (nn.Embedding), or a bare "
                           "nn.LSTM/GRU/RNN state_dict without a prefix; rename them, e.g. "
                           f"{{k.replace('{modules[0]}.', 'rnn.'): v for k, v in sd.items()}}")
    bare = not any(n.startswith(PREFIXES) for n in arrays)
    ours = {("rnn." + n if bare else _our_name(n)): v for n, v in arrays.items()}
    expected = {n: p.shape for n, p in model.named_parameters() if not bare or n.startswith("rnn.")}
    shown = (lambda n: n[4:]) if bare else (lambda n: next((t + n[len(o):] for o, t in EXPORTED.items()
                                                            if n.startswith(o)), n))
    _check_layers(label, ours, model, config or {}, shown)
    _check_shapes(label, ours, expected, model, config or {}, shown)
    missing = [n for n in expected if n not in ours]
    unexpected = [n for n in ours if n not in expected]
    if unexpected:
        hint = (" (an exported model's tensors start with rnn., head. or embed.; a bare nn.LSTM/GRU/RNN "
                "state_dict has none of them)") if not bare else ""
        raise WeightsError(f"{label}: unexpected tensor(s) {_names(unexpected, shown)}, which the model does not "
                           f"have{hint}; it has {_names(list(expected), shown)}")
    if missing:
        bias = " (a layer built with bias=False? these cells always have biases)" if all(
            "bias" in n for n in missing) else ""
        raise WeightsError(f"{label}: missing tensor(s) {_names(missing, shown)}{bias}")
    try:
        model.load_state_dict(ours, strict=False)
    except ValueError as e:
        raise WeightsError(f"{label}: {e}") from None
    return sorted(ours)


def _our_name(name):
    for ours, theirs in EXPORTED.items():
        if name.startswith(theirs):
            return ours + name[len(theirs):]
    return name


def _names(names, shown, at_most=6):
    listed = ", ".join(repr(shown(n)) for n in names[:at_most])
    return listed + (f" and {len(names) - at_most} more" if len(names) > at_most else "")


def _check_layers(label, ours, model, config, shown):
    """Layers and directions first: a missing layer is one message, not four missing tensors."""
    rnn = model.rnn
    found = [m for m in (_LAYERED.match(n[4:]) for n in ours if n.startswith("rnn.")) if m]
    if not found:
        return
    layers = max(int(m["layer"]) for m in found) + 1
    reverse = any(m["reverse"] for m in found)
    if reverse and not rnn.bidirectional:
        raise WeightsError(f"{label} holds a bidirectional layer (*_reverse tensors); the model is not "
                           "bidirectional: add bidirectional=True")
    if rnn.bidirectional and not reverse:
        raise WeightsError(f"{label} holds no *_reverse tensors, but the model is bidirectional=True: drop "
                           "bidirectional=True or give the weights of a bidirectional layer")
    if layers != rnn.num_layers:
        raise WeightsError(f"{label} holds {layers} layer(s) (tensors *_l0 .. *_l{layers - 1}), the model has "
                           f"layers={rnn.num_layers}: use layers={layers}")
    absent = sorted({l for l in range(layers)} - {int(m["layer"]) for m in found})
    if absent:
        raise WeightsError(f"{label} has no tensors of layer {absent[0]} (*_l{absent[0]}) between its others")


def _check_shapes(label, ours, expected, model, config, shown):
    """Every tensor's shape, with what a mismatch most likely is."""
    H = model.rnn.hidden_size
    cell = config.get("cell", model.rnn.cell_class.name)
    hh = ours.get("rnn.weight_hh_l0")
    want = expected.get("rnn.weight_hh_l0")
    if hh is not None and want is not None and hh.ndim == 2 and hh.shape != want and hh.shape != want[::-1]:
        rows, cols = hh.shape
        gates, model_gates = rows // cols if cols and rows % cols == 0 else None, want[0] // H
        if gates is not None and gates != model_gates:
            kind = GATES.get(gates)
            suggestion = f" (as {kind[1]}): use cell={kind[0]}" if kind else ""
            raise WeightsError(f"{label}: gate-count mismatch: 'weight_hh_l0' stacks {gates} gate(s) of hidden "
                               f"size {cols}{suggestion}; cell={cell} has {model_gates}")
        if cols != H:
            raise WeightsError(f"{label}: the weights are for hidden size {cols} ('weight_hh_l0' is {hh.shape}), "
                               f"the model has hidden={H}: use hidden={cols}")
    for name, shape in expected.items():
        got = ours.get(name)
        if got is None or got.shape == shape:
            continue
        what = f"{label}: {shown(name)!r} has shape {got.shape}, the model expects {shape}"
        if got.ndim == 2 and got.shape == shape[::-1]:
            raise WeightsError(f"{what}: transposed? PyTorch's layout is (outputs, inputs); pass the tensor "
                               "itself, not its .T")
        if name == "rnn.weight_ih_l0" and got.ndim == 2 and got.shape[0] == shape[0]:
            source = (f"embed={model.embedding.weight.shape[1]}" if model.embedding is not None
                      else f"task {config.get('task', '?')!r}")
            raise WeightsError(f"{what}: the weights read {got.shape[1]} input feature(s) per step, the model's "
                               f"input has {shape[1]} ({source})")
        raise WeightsError(what)
