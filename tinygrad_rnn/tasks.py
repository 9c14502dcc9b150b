"""Sequence tasks with their losses and trivial baselines, registered as plugins."""
import numpy as np

from .hookspecs import hookimpl
from . import ops


class Task:
    """A source of seeded batches with a loss and a known trivial baseline.

    Subclasses set ``name``, ``input_size``, ``output_size`` and implement
    ``batch(rng, batch_size, seq_len) -> (x (T, B, I), target)``, ``loss(pred, target)``
    and ``baseline(seq_len)``. ``pred`` is the readout of the RNN's output: all steps
    (T, B, output_size), or the last step only when ``last_step_only``.
    """

    name = None
    input_size = 1
    output_size = 1
    last_step_only = False

    def __init__(self, seq_len=100, **options):
        if not isinstance(seq_len, (int, np.integer)) or seq_len < 2:
            raise ValueError(f"task {self.name!r}: seq_len must be an integer >= 2, got {seq_len!r}")
        self.seq_len = int(seq_len)

    def batch(self, rng, batch_size):
        raise NotImplementedError

    def loss(self, pred, target):
        return ops.mse(pred, target)

    def baseline(self):
        raise NotImplementedError


class Adding(Task):
    """Adding problem (Hochreiter & Schmidhuber 1997): sum the two marked values."""

    name = "adding"
    input_size = 2
    output_size = 1
    last_step_only = True

    def batch(self, rng, batch_size):
        T = self.seq_len
        values = rng.uniform(0, 1, (T, batch_size))
        marks = np.zeros((T, batch_size))
        half = T // 2
        first = rng.integers(0, half, batch_size)
        second = rng.integers(half, T, batch_size)
        cols = np.arange(batch_size)
        marks[first, cols] = 1
        marks[second, cols] = 1
        x = np.stack([values, marks], axis=-1).astype(np.float32)
        target = (values[first, cols] + values[second, cols])[:, None].astype(np.float32)
        return x, target

    def baseline(self):
        return 1 / 6  # Var(U1 + U2): always predicting the mean, 1.0


@hookimpl
def register_tasks(register):
    register(Adding)
