"""tinygrad_rnn: a small, fast, hackable lab for recurrent neural networks."""
from . import _blas  # noqa: F401  (first: it may choose NumPy's BLAS kernels, before NumPy loads)
from . import errors
from .errors import Error
from .tape import no_grad
from .tensor import Tensor
from .ops import cat, stack, where, embedding, cross_entropy, mse, split, defop
from .init import manual_seed
from .functional import grad, value_and_grad, jacobian
from .hookspecs import hookimpl
from . import nn, ops, testing
from .cell import Cell
from .plugins import get_cell, list_cells, load_plugin, get_task, list_tasks
from . import checkpoint, compiler, diagnostics, init, optim, report, tasks, training
from .compiler import CompileError
from .training import train

from ._version import __version__

__all__ = ["Error", "errors", "Tensor", "no_grad", "cat", "stack", "where", "embedding", "cross_entropy", "mse",
           "split", "defop", "manual_seed", "grad", "value_and_grad", "jacobian", "hookimpl", "nn", "ops", "testing", "Cell",
           "get_cell", "list_cells", "load_plugin", "get_task", "list_tasks", "checkpoint",
           "diagnostics", "init", "optim", "report", "tasks", "training", "train", "compiler", "CompileError",
           "__version__"]
