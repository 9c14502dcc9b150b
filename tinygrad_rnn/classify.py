"""Sequence classification on the user's own labelled sequences: ``--task classify --data FILE.npz``.

``FILE.npz`` holds ``x`` (N, T, F) numbers, ``y`` (N,) integer class ids 0..C-1 and,
optionally, ``lengths`` (N,) for right-padded sequences of unequal length. The model reads
the last valid output of its top layer (both directions' with ``bidirectional``) through a
linear head to C logits; the loss is cross-entropy. The held-out split is stratified by
class and fixed (the same seed for every run): each class's sequences are shuffled and its
last ``eval_fraction`` held out.

A batch's target is an int64 array (B, 2): the class id and the sequence's length, so
that it is sliced along the batch like any last-step target (data-parallel shards).
"""
import math
import os
import zipfile

import numpy as np

from . import limits, ops
from .hookspecs import hookimpl
from .tasks import EVAL_SEED, Task, TaskError

# A label past this is a typo or a corrupt file: a head with 65,536 logits per sequence is
# already more than any sequence data set here needs.
MAX_CLASSES = 2 ** 16
# Accuracy on the training split reads at most this many of its sequences (a fixed sample):
# the whole of sequential MNIST's 54,000 would cost as much as thousands of training steps.
TRAIN_ACCURACY_SAMPLE = 4096
EVAL_CHUNK = 256  # sequences per forward pass when scoring: activations stay (T, 256, H)


def _fail(path, message):
    raise TaskError(f"task 'classify': {path!r}: {message}")


def _headers(path):
    """Each .npy member's (shape, dtype), read from the zip without loading any data; a shape
    that cannot fit in memory is refused here (``limits.check_npy``)."""
    try:
        zf = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise TaskError(f"task 'classify': no such file {path!r}") from None
    except zipfile.BadZipFile:
        _fail(path, "is not an .npz file (np.savez(path, x=..., y=...) writes one)")
    except OSError as e:
        raise TaskError(f"task 'classify': cannot read {path!r}: {e.strerror or e}") from None
    headers = {}
    with zf:
        for info in zf.infolist():
            if not info.filename.endswith(".npy"):
                continue
            name = info.filename[:-4]
            if name not in ("x", "y", "lengths"):
                continue
            with zf.open(info) as f:
                headers[name] = limits.check_npy(f, info.file_size, f"task 'classify': {path!r} array {name!r}")
    return headers


def _check_headers(path, headers):
    for name in ("x", "y"):
        if name not in headers:
            _fail(path, f"has no array {name!r} (it holds {sorted(headers) or 'none of x, y, lengths'}); "
                        "save it with np.savez(path, x=x, y=y)")
    for name, (shape, dtype) in headers.items():
        if dtype.hasobject:
            _fail(path, f"array {name!r} holds Python objects ({dtype}), which are never unpickled: "
                        "save numeric arrays")
        if dtype.kind not in "fiu":
            _fail(path, f"array {name!r} holds {dtype}, not numbers")
    ranks = {"x": (3, "(N, T, F)"), "y": (1, "(N,)"), "lengths": (1, "(N,)")}
    for name, (shape, _) in headers.items():
        rank, wanted = ranks[name]
        if len(shape) != rank:
            _fail(path, f"array {name!r} must have shape {wanted}, got shape {shape}")
    n, T, F = headers["x"][0]
    if n == 0 or T == 0 or F == 0:
        _fail(path, f"array 'x' is empty (shape {headers['x'][0]})")
    for name in ("y", "lengths"):
        if name in headers and headers[name][0][0] != n:
            _fail(path, f"array {name!r} has {headers[name][0][0]} entries but 'x' has {n} sequences")
    # What loading takes: the arrays themselves, x's float32 copy, and a batch-major copy of it.
    x_bytes = math.prod(headers["x"][0])
    need = sum(math.prod(s) * d.itemsize for s, d in headers.values()) + 2 * 4 * x_bytes
    limits.check_fits(need, f"task 'classify': {path!r} (x of shape {headers['x'][0]})")


def _check_labels(path, y, n):
    if y.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(y) | (y != np.round(y)))
        if len(bad):
            _fail(path, f"array 'y' has a non-integer label ({y[bad[0]]}) at index {bad[0]}: "
                        "labels are class ids 0..C-1")
    y = y.astype(np.int64)
    if y.min() < 0:
        i = int(np.argmin(y))
        _fail(path, f"array 'y' has a negative label ({y[i]}) at index {i}: labels are class ids 0..C-1")
    top = min(n, MAX_CLASSES)
    if y.max() >= top:
        i = int(np.argmax(y))
        _fail(path, f"array 'y' has label {y[i]} at index {i}, too large: class ids must be below "
                    f"{top} ({'the number of sequences' if top == n else 'the most classes a head may have'})")
    classes = np.unique(y)
    if len(classes) < 2:
        _fail(path, f"array 'y' holds one class only ({classes[0]}): classification needs at least two")
    return y


def _check_inputs(path, x):
    bad = np.argwhere(~np.isfinite(x))
    if len(bad):
        i, t, f = (int(v) for v in bad[0])
        _fail(path, f"array 'x' has a non-finite value ({x[i, t, f]}) at sequence {i}, step {t}, feature {f}"
                    + (f" ({len(bad)} in all)" if len(bad) > 1 else ""))


def _check_lengths(path, lengths, T):
    if lengths.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(lengths) | (lengths != np.round(lengths)))
        if len(bad):
            _fail(path, f"array 'lengths' has a non-integer value ({lengths[bad[0]]}) at index {bad[0]}")
    lengths = lengths.astype(np.int64)
    bad = np.flatnonzero((lengths < 1) | (lengths > T))
    if len(bad):
        _fail(path, f"array 'lengths' has {lengths[bad[0]]} at index {bad[0]}: lengths must lie in [1, {T}] "
                    "(x's T)" + (f" ({len(bad)} out of range in all)" if len(bad) > 1 else ""))
    return lengths


def load_classification(path):
    """(x float32 (N, T, F), y int64 (N,), lengths int64 (N,)) from an .npz file, every array
    checked; a bad file is a one-line ``TaskError`` naming the array (sizes are checked from
    the headers before anything is loaded; object arrays are never unpickled)."""
    limits.check_data_file(path, "task 'classify': data file", 1)
    if not os.path.exists(path):
        raise TaskError(f"task 'classify': no such file {path!r}")
    headers = _headers(path)
    _check_headers(path, headers)
    try:
        with np.load(path, allow_pickle=False) as f:
            x, y = f["x"], f["y"]
            lengths = f["lengths"] if "lengths" in headers else None
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        _fail(path, f"cannot be read ({str(e).splitlines()[0] if str(e) else type(e).__name__})")
    n, T, _ = x.shape
    y = _check_labels(path, y, n)
    _check_inputs(path, x)
    lengths = np.full(n, T, np.int64) if lengths is None else _check_lengths(path, lengths, T)
    return x.astype(np.float32, copy=False), y, lengths


def stratified_split(y, fraction, seed=EVAL_SEED):
    """(train indices, eval indices): each class's members shuffled (``seed``) and the last
    ``round(fraction * count)`` of them held out, keeping at least one of each in training."""
    rng = np.random.default_rng(seed)
    train, held = [], []
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        k = min(int(round(fraction * len(members))), len(members) - 1)
        train.append(members[:len(members) - k])
        held.append(members[len(members) - k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(held))


class Classify(Task):
    """One label per sequence, from a user .npz file (see the module docstring)."""

    name = "classify"
    classification = True
    last_step_only = True
    uses_data = True
    run_options = ("eval_fraction",)  # what ``training.build`` passes from the run's settings

    def __init__(self, seq_len=100, data=None, eval_fraction=0.1, **options):
        super().__init__(seq_len, data, **options)
        if not data:
            raise TaskError("task 'classify' needs a data file: data=FILE.npz holding x (N, T, F) and y (N,)")
        if isinstance(eval_fraction, bool) or not isinstance(eval_fraction, (int, float)) \
                or not 0 < eval_fraction < 1:
            raise TaskError(f"task 'classify': eval_fraction must be a number in (0, 1), got {eval_fraction!r}")
        x, y, lengths = load_classification(data)
        self.eval_fraction = float(eval_fraction)
        n, T, F = x.shape
        self.seq_len = T  # the file's T: --seq-len does not apply
        self.input_size = F
        self.num_classes = self.output_size = int(y.max()) + 1
        train, held = stratified_split(y, self.eval_fraction)
        if len(held) == 0:
            raise TaskError(f"task 'classify': {data!r}: eval_fraction={self.eval_fraction} of {n} sequences "
                            "holds out none; raise eval_fraction= or add sequences")
        self._x, self._target = x, np.stack([y, lengths], axis=1)
        self.train_index, self.eval_index = train, held
        sample = np.random.default_rng(EVAL_SEED + 1).permutation(train)[:TRAIN_ACCURACY_SAMPLE]
        self.train_sample = np.sort(sample)

    def _gather(self, index):
        x = np.ascontiguousarray(self._x[index].transpose(1, 0, 2))  # (T, B, F)
        return x, self._target[index]

    def batch(self, rng, batch_size):
        return self._gather(self.train_index[rng.integers(0, len(self.train_index), batch_size)])

    def eval_set(self, batch_size=256):
        return self._gather(self.eval_index[:batch_size])

    def lengths(self, target):
        """Each sequence's length, for the RNN's ``lengths=`` and the readout."""
        return np.asarray(target)[:, 1]

    def loss(self, pred, target):
        return ops.cross_entropy(pred, np.asarray(target)[:, 0])

    def _prior(self):
        counts = np.bincount(self._target[self.train_index, 0], minlength=self.num_classes)
        return counts / counts.sum()

    def baseline(self):
        """Cross-entropy (nats) on the held-out split of predicting the training split's class frequencies."""
        p = self._prior()
        return float(-np.log(p[self._target[self.eval_index, 0]]).mean())

    def baseline_accuracy(self):
        """Held-out accuracy of always answering the training split's most frequent class."""
        return float((self._target[self.eval_index, 0] == int(np.argmax(self._prior()))).mean())

    def score(self, model, part="eval", device="cpu"):
        """(mean cross-entropy, accuracy) of ``model`` on the held-out split (``part="eval"``)
        or the fixed training sample (``"train"``), in eval mode, in chunks."""
        from .tape import no_grad
        from .tensor import Tensor
        index = self.eval_index if part == "eval" else self.train_sample
        total_loss, correct = 0.0, 0
        was_training = model.training
        model.eval()
        try:
            with no_grad():
                for start in range(0, len(index), EVAL_CHUNK):
                    x, target = self._gather(index[start:start + EVAL_CHUNK])
                    pred, _ = model(Tensor(x, device=device), lengths=self.lengths(target))
                    total_loss += float(self.loss(pred, target).item()) * len(target)
                    correct += int((pred.numpy().argmax(axis=-1) == target[:, 0]).sum())
        finally:
            model.train(was_training)
        return total_loss / len(index), correct / len(index)

    def summary(self, model, device="cpu"):
        """What ``train``'s summary adds for this task: accuracies next to the losses."""
        _, train_accuracy = self.score(model, "train", device)
        _, eval_accuracy = self.score(model, "eval", device)
        return {"train_accuracy": train_accuracy, "eval_accuracy": eval_accuracy,
                "baseline_accuracy": self.baseline_accuracy(), "num_classes": self.num_classes,
                "eval_sequences": int(len(self.eval_index)), "train_sequences": int(len(self.train_index))}

    def config(self):
        return dict(super().config(), eval_fraction=self.eval_fraction)


@hookimpl
def register_tasks(register):
    register(Classify)
