"""A recurrent network with a linear readout, shaped for a task."""
from .nn import Linear, Module
from .rnn import RNN


class SequenceModel(Module):
    """``RNN`` + ``Linear`` readout: ``pred, state = model(x, state)``.

    The readout sees the last step only (``task.last_step_only``) or every step.
    """

    def __init__(self, cell, input_size, output_size, hidden_size=64, num_layers=1,
                 last_step_only=False, dtype="float32", **cell_options):
        super().__init__()
        self.rnn = RNN(cell, input_size, hidden_size, num_layers, dtype=dtype, **cell_options)
        self.head = Linear(hidden_size, output_size, dtype=dtype)
        self.last_step_only = last_step_only

    @classmethod
    def for_task(cls, cell, task, hidden_size=64, num_layers=1, dtype="float32", **cell_options):
        return cls(cell, task.input_size, task.output_size, hidden_size, num_layers,
                   task.last_step_only, dtype, **cell_options)

    def forward(self, x, state=None, probe=False):
        out, state = self.rnn(x, state, probe=probe)
        return self.head(out[-1] if self.last_step_only else out), state
