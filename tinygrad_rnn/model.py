"""A recurrent network with a linear readout, shaped for a task."""
import numpy as np

from . import ops
from .module import Embedding, Linear, Module
from .rnn import RNN


class SequenceModel(Module):
    """[``Embedding``] + ``RNN`` + ``Linear`` readout: ``pred, state = model(x, state)``.

    The readout sees the last step only (``task.last_step_only``) or every step.
    ``embed=D`` puts an ``Embedding(input_size, D)`` in front of the RNN: ``x`` is then
    integer token indices (T, B), as for PyTorch's ``nn.Embedding``, and the model
    learns its input representation instead of reading one-hot vectors.
    ``bidirectional`` and ``dropout`` go to the ``RNN``; a bidirectional model that
    reads the last step only reads each direction's last step: the forward direction
    at t = T-1 and the reverse direction at t = 0 (PyTorch's ``h_n[-2:]``).
    """

    def __init__(self, cell, input_size, output_size, hidden_size=64, num_layers=1,
                 last_step_only=False, dtype="float32", bidirectional=False, dropout=0.0, embed=None,
                 **cell_options):
        super().__init__()
        self.embedding = Embedding(input_size, embed, dtype=dtype) if embed else None
        self.rnn = RNN(cell, embed or input_size, hidden_size, num_layers, dtype=dtype,
                       bidirectional=bidirectional, dropout=dropout, **cell_options)
        self.head = Linear(hidden_size * self.rnn.num_directions, output_size, dtype=dtype)
        self.last_step_only = last_step_only

    @classmethod
    def for_task(cls, cell, task, hidden_size=64, num_layers=1, dtype="float32", bidirectional=False,
                 dropout=0.0, embed=None, **cell_options):
        return cls(cell, task.input_size, task.output_size, hidden_size, num_layers,
                   task.last_step_only, dtype, bidirectional, dropout, embed, **cell_options)

    def rnn_input(self, x):
        """What the RNN reads: ``x`` itself, or its tokens' embeddings."""
        if self.embedding is None:
            return x
        x = ops.tensor(x)
        if x.dtype.kind not in "iu" or x.ndim != 2:
            raise TypeError(f"a model with an embedding reads integer token indices (T, B), "
                            f"got {x.dtype} of shape {x.shape}")
        return self.embedding(x)

    def readout(self, out, lengths=None):
        """Predictions from the RNN's output (T, B, D*H). With ``lengths`` (B,) a last-step
        readout reads each sequence's last valid step (the forward direction at
        ``lengths - 1``; the reverse one, which starts there, at t = 0)."""
        if not self.last_step_only:
            return self.head(out)
        last = -1 if lengths is None else (np.asarray(lengths) - 1, np.arange(out.shape[1]))
        if self.rnn.bidirectional:
            H = self.rnn.hidden_size
            forward = out[-1, :, :H] if lengths is None else out[last + (slice(None, H),)]
            return self.head(ops.cat([forward, out[0, :, H:]], axis=-1))
        return self.head(out[last])

    def forward(self, x, state=None, probe=False, lengths=None):
        """``pred, state``; ``lengths`` (B,): right-padded sequences of these lengths (the RNN's)."""
        out, state = self.rnn(self.rnn_input(x), state, lengths=lengths, probe=probe)
        return self.readout(out, lengths), state
