"""Size checks made before allocating: a size that cannot fit is a one-line error with
the estimate, not a MemoryError (or a swapping machine) minutes later."""
import math
import os
import stat

import numpy as np

from .errors import ResourceError

# Per-layer Python overhead (cell object, parameter wrappers, tape nodes per step), so
# that a million tiny layers is refused too.
_LAYER_OVERHEAD = 64 * 1024
_STEP_OVERHEAD = 2 * 1024


def human_bytes(n):
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if n < 1024 or unit == "PB":
            return f"{n:.3g} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.3g} PB"


def available_memory():
    """Bytes of memory this process may still use (MemAvailable, else physical memory)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 2 ** 62


# generate samples one character per forward step (about 10^4 a second): a million is
# minutes of work; more is a mistake, not a sample anyone reads.
MAX_GENERATE_LENGTH = 10 ** 6


def check_data_file(path, what, bytes_per_byte):
    """Refuse, before reading, a data file that is not a regular file (``/dev/zero`` never
    ends, a pipe cannot be read twice) or whose contents would not fit in memory once loaded
    (``bytes_per_byte``: the memory one byte of the file takes once parsed)."""
    try:
        st = os.stat(path)
    except OSError:
        return  # the reader reports a missing or unreadable file in its own words
    if not stat.S_ISREG(st.st_mode):
        raise ResourceError(f"{what} {path!r} is not a regular file (a device, pipe or socket); "
                            "give a file that ends")
    check_fits(st.st_size * bytes_per_byte, f"{what} {path!r} ({human_bytes(st.st_size)})")


def check_fits(nbytes, what, limit=None, at_least=False):
    """Raise ResourceError if ``nbytes`` exceeds the memory available (or ``limit``);
    ``at_least``: ``nbytes`` is a lower bound, and the message says so."""
    limit = available_memory() if limit is None else limit
    if nbytes > limit:
        raise ResourceError(f"{what} needs {'at least ' if at_least else ''}about {human_bytes(nbytes)} of memory, "
                            f"more than the {human_bytes(limit)} available")


def model_bytes(input_size, hidden, layers, seq_len, batch, output_size=1, gates=4, itemsize=4, steps_kept=1):
    """Estimated peak memory of training a ``layers``-deep RNN (parameters, Adam state and
    gradients, activations kept for backward). ``gates`` is the cell's gate count (LSTM 4)."""
    params = sum((input_size if l == 0 else hidden) * gates * hidden + hidden * gates * hidden + 2 * gates * hidden
                 for l in range(min(layers, 2)))
    params += max(layers - 2, 0) * (2 * gates * hidden * hidden + 2 * gates * hidden)
    params += hidden * output_size + output_size
    activations = seq_len * batch * layers * hidden * (gates + 2) * steps_kept
    inputs = seq_len * batch * (input_size + output_size)
    return (4 * params + 2 * activations + inputs) * itemsize + layers * _LAYER_OVERHEAD + \
        seq_len * layers * _STEP_OVERHEAD


def check_npy(fileobj, stored_bytes, label):
    """Read an .npy header from ``fileobj`` and refuse a shape that the file cannot hold.

    ``stored_bytes`` is the size of the whole .npy member or file. Returns (shape, dtype).
    """
    try:
        version = np.lib.format.read_magic(fileobj)
        shape, fortran, dtype = (np.lib.format.read_array_header_1_0(fileobj) if version == (1, 0)
                                 else np.lib.format.read_array_header_2_0(fileobj))
    except (ValueError, OSError, EOFError) as e:
        raise ResourceError(f"{label} has a corrupt .npy header ({str(e).splitlines()[0]})") from None
    header = fileobj.tell()
    if dtype.hasobject:
        return shape, dtype  # the loader refuses pickled data with its own message
    count = math.prod(shape)
    claimed = count * dtype.itemsize
    if claimed > max(stored_bytes - header, 0):
        raise ResourceError(f"{label} claims shape {shape} of {dtype} ({human_bytes(claimed)}) but holds "
                            f"only {human_bytes(max(stored_bytes - header, 0))} of data: corrupt or truncated")
    check_fits(claimed, f"{label} (shape {shape})")
    return shape, dtype
