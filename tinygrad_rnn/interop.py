"""``tinygrad-rnn export``: a checkpoint's model as a safetensors file in PyTorch's names.

``rnn.*`` as ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` name them, ``head.*`` as ``nn.Linear``,
``embed.*`` as ``nn.Embedding`` (``weights`` has the names and reads such files back), so
``module.load_state_dict(safetensors.torch.load_file(path), strict=True)`` loads it into a
PyTorch module with those attributes, which then computes the same outputs. A plugin cell
exports under its own parameter names: PyTorch has no such layer.
"""
import json

import safetensors.numpy

from . import checkpoint, safeio, weights
from .plugins import get_cell
from .training import _validated_run, checkpointed_model


def torch_layer(config):
    """The PyTorch layer a checkpoint's RNN loads into, as code, or None for a plugin cell."""
    cell = get_cell(config["cell"])
    builtin = cell.name if cell.__module__.startswith("tinygrad_rnn.cells.") else None
    if builtin not in weights.TORCH_LAYERS:
        return None
    extra = ""
    if builtin == "rnn" and config.get("cell_options", {}).get("nonlinearity") == "relu":
        extra = ", nonlinearity='relu'"
    return f"{weights.TORCH_LAYERS[builtin]}({{input_size}}, {config['hidden']}, num_layers={config['layers']}" \
           f"{', bidirectional=True' if config.get('bidirectional') else ''}{extra})"


def export(checkpoint_path, out):
    """Write the model of the checkpoint at ``checkpoint_path`` to ``out`` (safetensors) with
    PyTorch's names; returns what was written and the PyTorch modules that load it."""
    meta, arrays = checkpoint.load(checkpoint_path)
    config = _validated_run(meta, arrays, checkpoint_path)
    safeio.check_outputs([("out=", out)], [("checkpoint=", checkpoint_path)],
                         {"out=": (weights.is_safetensors, "a safetensors file")})
    task, model = checkpointed_model(checkpoint_path, config, arrays)
    tensors = weights.exported_names(model.state_dict())
    layer = torch_layer(config)
    input_size = model.rnn.input_size
    modules = {"rnn": layer.format(input_size=input_size) if layer else None,
               "head": f"nn.Linear({model.head.weight.shape[1]}, {model.head.weight.shape[0]})"}
    if model.embedding is not None:
        modules["embed"] = f"nn.Embedding({model.embedding.weight.shape[0]}, {model.embedding.weight.shape[1]})"
    metadata = {"format": "pt", "tinygrad_rnn.cell": config["cell"],
                "tinygrad_rnn.config": json.dumps(config)}
    safeio.atomic_write(out, lambda f: f.write(safetensors.numpy.save(tensors, metadata=metadata)),
                        error=weights.WeightsError)
    summary = {"checkpoint": checkpoint_path, "out": out, "cell": config["cell"], "dtype": str(model.rnn.dtype),
               "last_step_only": model.last_step_only, "modules": modules,
               "tensors": {k: list(v.shape) for k, v in tensors.items()}}
    if layer is None:
        summary["note"] = (f"cell {config['cell']!r} is not a built-in: PyTorch has no such layer, so its "
                           "tensors keep the cell's own parameter names (rnn.<name>_l<layer>[_reverse])")
    return summary
