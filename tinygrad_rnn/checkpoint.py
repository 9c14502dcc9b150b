"""Checkpoints that never unpickle: one .npz of plain arrays plus a JSON header.

Saved atomically (a temporary file in the same folder, then ``os.replace``), so an
interrupted save never destroys the previous checkpoint. Read with
``allow_pickle=False``: a file carrying pickled objects is refused, not executed.
"""
import json
import os
import tempfile
import zipfile

import numpy as np

from .errors import Error

FORMAT = "tinygrad-rnn-checkpoint"
VERSION = 1


class CheckpointError(Error, ValueError):
    """The file is missing, corrupt, pickle-bearing or not a tinygrad_rnn checkpoint."""


def save(path, meta, arrays):
    """Write ``arrays`` (name -> ndarray) and the JSON-able ``meta`` dict to ``path``."""
    payload = {k: np.asarray(v) for k, v in arrays.items()}
    header = json.dumps({"format": FORMAT, "version": VERSION, **meta})
    payload["__meta__"] = np.frombuffer(header.encode("utf-8"), np.uint8)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise CheckpointError(f"cannot save checkpoint: folder {folder!r} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=".ckpt-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load(path):
    """Return ``(meta, arrays)``; raises CheckpointError with a one-line reason."""
    if not os.path.isfile(path):
        raise CheckpointError(f"no such checkpoint file {path!r}")
    if not zipfile.is_zipfile(path):  # else NumPy guesses "pickled data" for any junk
        raise CheckpointError(f"{path!r} is corrupt or not a checkpoint (not an .npz archive)")
    try:
        with np.load(path, allow_pickle=False) as z:
            if not hasattr(z, "files"):
                raise CheckpointError(f"{path!r} is a single array, not a checkpoint")
            arrays = {k: z[k] for k in z.files}
    except CheckpointError:
        raise
    except ValueError as e:
        if "allow_pickle" in str(e) or "Object arrays" in str(e):
            raise CheckpointError(f"{path!r} contains pickled objects; refusing to load it") from None
        raise CheckpointError(f"{path!r} is not a valid checkpoint: {e}") from None
    except (zipfile.BadZipFile, OSError, EOFError, KeyError) as e:
        raise CheckpointError(f"{path!r} is corrupt or not a checkpoint ({type(e).__name__}: {e})") from None
    raw = arrays.pop("__meta__", None)
    if raw is None or raw.dtype != np.uint8:
        raise CheckpointError(f"{path!r} is not a tinygrad_rnn checkpoint (no header)")
    try:
        meta = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path!r} has a corrupt header: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path!r} is not a tinygrad_rnn checkpoint")
    if meta.get("version") != VERSION:
        raise CheckpointError(f"{path!r} has checkpoint version {meta.get('version')}, "
                              f"this tinygrad_rnn reads version {VERSION}")
    return meta, arrays
