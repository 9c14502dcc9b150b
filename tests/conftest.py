import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))  # tests import naive.py as a plain module


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def clean_plugins():
    """A fresh plugin registry for the test, and none of its plugins left behind."""
    from tinygrad_rnn import plugins
    plugins.reset()
    yield
    plugins.reset()
