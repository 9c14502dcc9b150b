"""Sequence tasks with their losses and trivial baselines, registered as plugins.

Each task yields seeded batches ``(x, target)`` with ``x`` of shape (T, B, input_size),
defines its loss on the readout ``pred`` and reports the loss of a trivial predictor,
so a number printed by ``train`` always has something to be compared with.
"""
import csv
import os

import numpy as np

from . import limits, ops
from .errors import Error
from .hookspecs import hookimpl

# Memory per byte of a data file once read: text as a str, a list of indices and an int64
# array; CSV as lists of Python floats (a few characters each) and a float64 array.
TEXT_BYTES_PER_BYTE = 32
CSV_BYTES_PER_BYTE = 24
EVAL_SEED = 20131  # eval sets are fixed: the same for every run and every cell
EVAL_ROWS = 2 ** 19  # rows x steps of a default eval set past T = 2048 (see Task.eval_set)
DATA_DIR = os.path.join(os.path.dirname(__file__), "data")


class TaskError(Error, ValueError):
    """The task cannot be built from the given options or data."""


class Task:
    """Base class. Subclasses set ``name``, ``input_size``, ``output_size``, and implement
    ``batch(rng, batch_size) -> (x (T, B, I) float32, target)`` and ``baseline()``.

    ``last_step_only``: the loss reads only the last step's output (pred (B, O)),
    else every step's (pred (T, B, O)). ``classification``: targets are class indices
    and the loss is cross-entropy (nats); otherwise mean squared error.
    ``stream``: the task is one long sequence, so truncated BPTT (``--bptt``) applies.
    ``forecast``: the target at step t is the input at t + 1, so a model may read only
    the past (no ``--bidirectional``). ``tokens``: inputs are symbols that the task
    gives as integer indices (T, B) instead of one-hot vectors once ``token_input``
    is set (``--embed``).
    """

    name = None
    input_size = 1
    output_size = 1
    last_step_only = False
    classification = False
    stream = False
    forecast = False
    tokens = False
    token_input = False
    uses_data = False

    def __init__(self, seq_len=100, data=None, **options):
        if isinstance(seq_len, bool) or not isinstance(seq_len, (int, np.integer)) or seq_len < 2:
            raise TaskError(f"task {self.name!r}: seq_len must be an integer >= 2, got {seq_len!r}")
        if options:
            raise TaskError(f"task {self.name!r} takes no options {sorted(options)}")
        if data is not None and not self.uses_data:
            raise TaskError(f"task {self.name!r} makes its own data and takes no data file ({data!r})")
        self.seq_len = int(seq_len)
        self.data = data

    def batch(self, rng, batch_size):
        raise NotImplementedError

    def eval_set(self, batch_size=None):
        """A fixed evaluation batch (same seed for every run): 256 sequences, fewer past
        T = 2048 (at most 2^19 rows x steps in all, at least 8 sequences), so that
        evaluating a long-horizon model costs about what its training steps do (at
        T = 20000, 256 sequences of an LSTM-64 would be 2.6 GB of states alone)."""
        if batch_size is None:
            batch_size = min(256, max(8, EVAL_ROWS // self.seq_len))
        return self.batch(np.random.default_rng(EVAL_SEED), batch_size)

    def lengths(self, target):
        """The sequences' lengths (B,) for the RNN's ``lengths=``, or None: all of length T."""
        return None

    def loss(self, pred, target):
        if self.classification:
            return ops.cross_entropy(pred, target)
        return ops.mse(pred, target)

    def baseline(self):
        raise NotImplementedError

    def config(self):
        return {"task": self.name, "seq_len": self.seq_len, "data": self.data}


class Adding(Task):
    """Adding problem: sum the two marked values (Hochreiter & Schmidhuber 1997)."""

    name = "adding"
    input_size = 2
    last_step_only = True

    def batch(self, rng, batch_size):
        T, B = self.seq_len, batch_size
        values = rng.uniform(0, 1, (T, B))
        cols = np.arange(B)
        first = rng.integers(0, T // 2, B)
        second = rng.integers(T // 2, T, B)
        marks = np.zeros((T, B))
        marks[first, cols] = marks[second, cols] = 1
        x = np.stack([values, marks], axis=-1).astype(np.float32)
        return x, (values[first, cols] + values[second, cols])[:, None].astype(np.float32)

    def baseline(self):
        return 1 / 6  # Var(U1 + U2): the MSE of always predicting the mean, 1


class Copy(Task):
    """Copy memory (Arjovsky et al. 2016): recall 10 symbols after ``seq_len`` blanks."""

    name = "copy"
    input_size = 10   # 8 symbols, blank (0), delimiter (9), one-hot
    output_size = 9   # blank or a symbol
    classification = True
    symbols = 10

    def batch(self, rng, batch_size):
        T, n = self.seq_len, self.symbols
        length = T + 2 * n
        seq = np.zeros((length, batch_size), np.int64)
        seq[:n] = rng.integers(1, 9, (n, batch_size))
        seq[T + n - 1] = 9
        target = np.zeros((length, batch_size), np.int64)
        target[-n:] = seq[:n]
        return one_hot(seq, 10), target

    def baseline(self):
        return self.symbols * np.log(8) / (self.seq_len + 2 * self.symbols)


class RunningSum(Task):
    """Running sum: at every step, output the sum of the inputs so far."""

    name = "sum"

    def batch(self, rng, batch_size):
        x = rng.uniform(-1, 1, (self.seq_len, batch_size, 1)) / np.sqrt(self.seq_len)
        return x.astype(np.float32), np.cumsum(x, axis=0).astype(np.float32)

    def baseline(self):
        T = self.seq_len
        return float(np.mean((np.arange(T) + 1) / (3 * T)))  # predicting 0 always


class Sine(Task):
    """Next-value forecasting of noisy sums of three sines with random frequencies."""

    name = "sine"
    forecast = True

    def batch(self, rng, batch_size):
        t = np.arange(self.seq_len + 1)[:, None]
        signal = np.zeros((self.seq_len + 1, batch_size))
        for _ in range(3):
            freq = rng.uniform(0.02, 0.2, batch_size)
            phase = rng.uniform(0, 2 * np.pi, batch_size)
            signal += rng.uniform(0.2, 0.6, batch_size) * np.sin(2 * np.pi * freq * t + phase)
        signal += rng.normal(0, 0.05, signal.shape)
        return signal[:-1, :, None].astype(np.float32), signal[1:, :, None].astype(np.float32)

    def baseline(self):
        x, y = self.eval_set()
        return float(((y - x) ** 2).mean())  # persistence: predict the last value


class _Stream(Task):
    """One long sequence split into train (first 90%) and eval (last 10%) parts.

    ``pairs(windows)``: (inputs, targets) of windows (T + 1, B) of consecutive steps, the
    targets one step ahead of the inputs; truncated BPTT cuts its own windows from ``train``.
    """

    stream = True
    forecast = True

    def _split(self, series):
        cut = int(len(series) * 0.9)
        self.train, self.eval = series[:cut], series[cut:]
        if len(self.train) <= self.seq_len + 1 or len(self.eval) <= self.seq_len + 1:
            raise TaskError(f"task {self.name!r}: {len(series)} steps of data are too few for "
                            f"seq_len {self.seq_len} (need more than {int((self.seq_len + 2) / 0.1)})")

    def _windows(self, rng, part, batch_size):
        starts = rng.integers(0, len(part) - self.seq_len - 1, batch_size)
        idx = starts[None, :] + np.arange(self.seq_len + 1)[:, None]
        return part[idx]

    def eval_set(self, batch_size=256):
        # Non-overlapping windows covering the held-out tail, in order.
        n = (len(self.eval) - 1) // self.seq_len
        starts = np.arange(min(n, batch_size)) * self.seq_len
        idx = starts[None, :] + np.arange(self.seq_len + 1)[:, None]
        return self.pairs(self.eval[idx])


def one_hot(tokens, n, dtype=np.float32):
    """One-hot rows for integer ``tokens`` (any shape) by indexing: memory is tokens x n,
    never n x n (a 22,000-character alphabet would need 2 GB for np.eye)."""
    tokens = np.asarray(tokens)
    out = np.zeros(tokens.shape + (n,), dtype)
    np.put_along_axis(out, tokens[..., None], 1, axis=-1)
    return out


class Text(_Stream):
    """Character-level language model over a UTF-8 file (default: a shipped corpus).

    ``vocab`` (a string of distinct characters; checkpoints store it) fixes the character
    mapping: a file holding characters outside it is refused, never silently remapped.
    """

    name = "text"
    classification = True
    tokens = True
    uses_data = True

    @classmethod
    def from_vocab(cls, vocab, seq_len=100):
        """A text task with this vocabulary and no data (enough to sample from a model)."""
        task = cls.__new__(cls)
        Task.__init__(task, seq_len)
        task._set_vocab(list(vocab))
        return task

    def _set_vocab(self, vocab):
        self.vocab = vocab
        self.index = {c: i for i, c in enumerate(vocab)}
        self.input_size = self.output_size = len(vocab)

    def one_hot(self, tokens):
        return one_hot(tokens, self.input_size)

    def __init__(self, seq_len=100, data=None, vocab=None, **options):
        super().__init__(seq_len, data, **options)
        path = data or os.path.join(DATA_DIR, "tiny_corpus.txt")
        limits.check_data_file(path, "task 'text': data file", TEXT_BYTES_PER_BYTE)
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            raise TaskError(f"task 'text': no such file {path!r}") from None
        except UnicodeDecodeError as e:
            raise TaskError(f"task 'text': {path!r} is not UTF-8 text (byte {e.start})") from None
        except OSError as e:
            raise TaskError(f"task 'text': cannot read {path!r}: {e.strerror}") from None
        if len(set(text)) < 2:
            raise TaskError(f"task 'text': {path!r} needs at least two distinct characters")
        if vocab is not None:
            new = sorted(set(text) - set(vocab))
            if new:
                raise TaskError(f"task 'text': {path!r} has {len(new)} character(s) the model's vocabulary lacks "
                                f"({''.join(new[:10])!r}): the file changed since the checkpoint was made")
        self._set_vocab(list(vocab) if vocab is not None else sorted(set(text)))
        self._split(np.array([self.index[c] for c in text], np.int64))

    def pairs(self, windows):
        return self.inputs(windows[:-1]), windows[1:]

    def inputs(self, tokens):
        """What the model reads for ``tokens``: their indices with ``token_input``, else one-hot."""
        if self.token_input:
            return np.asarray(tokens, np.int64)
        return self.one_hot(tokens)

    def batch(self, rng, batch_size):
        return self.pairs(self._windows(rng, self.train, batch_size))

    def baseline(self):
        counts = np.bincount(self.train, minlength=self.input_size) + 1.0
        p = counts / counts.sum()
        return float(-(np.log(p[self.eval[1:]])).mean())  # unigram model, nats per char

    def encode(self, text):
        unknown = sorted(set(text) - set(self.index))
        if unknown:
            raise TaskError(f"characters {''.join(unknown)!r} are not in the model's vocabulary")
        return np.array([self.index[c] for c in text], np.int64)

    def decode(self, tokens):
        return "".join(self.vocab[int(t)] for t in tokens)


class Series(_Stream):
    """Next-step forecasting over a user .npy or .csv file of shape (N,) or (N, F)."""

    name = "series"
    uses_data = True

    def __init__(self, seq_len=100, data=None, **options):
        super().__init__(seq_len, data, **options)
        if not data:
            raise TaskError("task 'series' needs a data file: data=PATH (.npy or .csv)")
        values = load_series(data)
        self.input_size = self.output_size = values.shape[1]
        self._split(values)
        self.mean = self.train.mean(axis=0)
        self.std = self.train.std(axis=0) + 1e-8  # normalise with train statistics only
        self.train = ((self.train - self.mean) / self.std).astype(np.float32)
        self.eval = ((self.eval - self.mean) / self.std).astype(np.float32)

    def pairs(self, windows):
        return windows[:-1], windows[1:]

    def batch(self, rng, batch_size):
        return self.pairs(self._windows(rng, self.train, batch_size))

    def baseline(self):
        x, y = self.eval_set()
        return float(((y - x) ** 2).mean())  # persistence


def load_series(path):
    """Read (N,) or (N, F) numbers from .npy or .csv; NaN/Inf is an error naming the position."""
    ext = os.path.splitext(path)[1].lower()
    limits.check_data_file(path, "series file", CSV_BYTES_PER_BYTE if ext == ".csv" else 1)
    try:
        if ext == ".npy":
            with open(path, "rb") as f:  # a header claiming 10^11 elements is refused before allocating
                limits.check_npy(f, os.path.getsize(path), f"series file {path!r}")
            values = np.load(path, allow_pickle=False)
        elif ext == ".csv":
            with open(path, newline="", encoding="utf-8") as f:
                rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
            if rows and not _is_number(rows[0][0]):
                rows = rows[1:]  # a header line
            values = np.array([[float(c) for c in r] for r in rows], np.float64)
        else:
            raise TaskError(f"series file {path!r} must end in .npy or .csv")
    except FileNotFoundError:
        raise TaskError(f"no such file {path!r}") from None
    except ValueError as e:
        if isinstance(e, Error):  # TaskError, or ResourceError from the header check
            raise
        raise TaskError(f"cannot read {path!r} as numbers: {e}") from None
    except OSError as e:
        raise TaskError(f"cannot read {path!r}: {e}") from None
    if values.dtype.kind not in "fiu":
        raise TaskError(f"{path!r} holds {values.dtype} data, not numbers")
    if values.ndim == 1:
        values = values[:, None]
    if values.ndim != 2 or values.shape[0] == 0:
        raise TaskError(f"{path!r} must have shape (N,) or (N, F), got {values.shape}")
    bad = np.argwhere(~np.isfinite(values))
    if len(bad):
        row, col = bad[0]
        raise TaskError(f"{path!r} has a non-finite value ({values[row, col]}) at row {row}, "
                        f"column {col}" + (f" ({len(bad)} in all)" if len(bad) > 1 else ""))
    return values.astype(np.float64)


def _is_number(s):
    try:
        float(s)
        return True
    except ValueError:
        return False


@hookimpl
def register_tasks(register):
    for task in (Adding, Copy, RunningSum, Sine, Text, Series):
        register(task)
