"""tinygrad_rnn: a small, fast, hackable lab for recurrent neural networks."""
from .tape import no_grad
from .tensor import Tensor
from .ops import cat, stack, where, embedding, cross_entropy, mse, split, defop
from . import testing

__version__ = "0.1.0"

__all__ = ["Tensor", "no_grad", "cat", "stack", "where", "embedding", "cross_entropy", "mse",
           "split", "defop", "testing", "__version__"]
