"""Backends: one module per device, all exposing the same array functions."""
import functools

import numpy as np

from . import cpu
from ..errors import ConfigError, DeviceError

DEVICES = ("cpu", "cuda")


def get(device):
    """The backend module for ``device`` ("cpu" or "cuda")."""
    if device == "cpu":
        return cpu
    if device == "cuda":
        ok, why = cuda_available()
        if not ok:
            raise DeviceError(f"device 'cuda' is not available: {why}")
        from . import cuda
        return cuda
    raise ConfigError(f"unknown device {device!r}; expected one of {DEVICES}")


def of(array):
    """The backend that owns ``array``."""
    if type(array) is np.ndarray or isinstance(array, (np.ndarray, np.generic)):
        return cpu
    owner = getattr(array, "backend", None)
    if owner is not None:
        return owner
    raise TypeError(f"no backend holds data of type {type(array).__name__}")


@functools.lru_cache(maxsize=None)
def cuda_available():
    """(True, "") when a CUDA GPU (or Numba's simulator) can run kernels, else (False, reason)."""
    import importlib.util
    if importlib.util.find_spec(__name__ + ".cuda") is None:
        return False, "this build of tinygrad_rnn has no CUDA backend"
    try:
        from numba import cuda
    except Exception as e:  # numba-cuda missing or broken
        return False, f"numba.cuda cannot be imported: {e}"
    try:
        if cuda.is_available():
            return True, ""
        return False, "no NVIDIA driver or GPU found"
    except Exception as e:
        return False, str(e).splitlines()[0]
