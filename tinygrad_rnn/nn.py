"""``tr.nn``: the layers, by their public names (re-exports only, as ``torch.nn``).

Module, Parameter, Linear, Embedding and Dropout live in ``module.py`` (below the cells,
which are made of them); RNN, the layer that runs cells over time, in ``rnn.py``.
"""
from .module import Dropout, Embedding, Linear, Module, Parameter, dropout
from .rnn import RNN, GradProbe

__all__ = ["Module", "Parameter", "Linear", "Embedding", "Dropout", "dropout", "RNN", "GradProbe"]
