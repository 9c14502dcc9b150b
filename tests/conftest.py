import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))  # tests import naive.py as a plain module


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def clean_plugins(monkeypatch):
    """A fresh plugin registry for the test, none of its plugins left behind, and no
    plugin or debug settings from the environment."""
    from tinygrad_rnn import plugins
    monkeypatch.delenv("TINYGRAD_RNN_PLUGINS", raising=False)
    monkeypatch.delenv("TINYGRAD_RNN_DEBUG", raising=False)
    plugins.reset()
    yield
    plugins.reset()
