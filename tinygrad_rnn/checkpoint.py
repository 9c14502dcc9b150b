"""Checkpoints that never unpickle: safetensors files (plain arrays plus a JSON header).

A checkpoint is a safetensors file, the pickle-free tensor format of the PyTorch
ecosystem: its tensors are the arrays, its string metadata holds the JSON header.
Checkpoints written by earlier versions (one .npz of plain arrays with the header in a
``__meta__`` member) still load, with ``allow_pickle=False``: a file carrying pickled
objects is refused, not executed. Which of the two a file is comes from its first bytes,
never its name. Saved atomically (a temporary file in the same folder, then
``os.replace``), so an interrupted save never destroys the previous checkpoint. Every
tensor's shape, dtype and offsets are checked against the bytes the file holds before
anything is read, and ``validate_run`` checks a training checkpoint's header and optimiser
state field by field.

A training checkpoint holds arrays under ``param/`` (the model), ``optim/`` (the optimiser)
and ``extra/`` (truncated BPTT's position), and a header with the run's settings, its step,
both random generators, the schedule and the early-stopping record: ``snapshot`` makes
one, ``restore`` loads one into a run, ``section`` reads one part.
"""
import json
import math
import numbers
import os
import struct
import zipfile

import numpy as np
import safetensors.numpy
from safetensors import SafetensorError

from . import init, limits, options, safeio
from .errors import Error, ResourceError

FORMAT = "tinygrad-rnn-checkpoint"
VERSION = 1
HEADER_KEY = "tinygrad_rnn"  # the safetensors metadata entry that holds the JSON header


class CheckpointError(Error, ValueError):
    """The file is missing, corrupt, pickle-bearing or not a tinygrad_rnn checkpoint."""


def save(path, meta, arrays):
    """Write ``arrays`` (name -> ndarray) and the JSON-able ``meta`` dict to ``path`` (safetensors)."""
    payload = {k: np.array(v, order="C", copy=None) for k, v in arrays.items()}  # 0-d stays 0-d
    for name, value in payload.items():
        if value.dtype.name not in NUMPY_DTYPES.values():
            raise CheckpointError(f"cannot save: array {name!r} holds {value.dtype}, which safetensors "
                                  "cannot store")
    header = json.dumps({"format": FORMAT, "version": VERSION, **meta})
    try:
        safeio.check_writable(path, "checkpoint")
        safeio.check_existing(path, "checkpoint", is_checkpoint, NOUN)
    except safeio.OutputError as e:
        raise CheckpointError(f"cannot save: {e}") from None
    # serialised inside the temporary file's lifetime: an interrupted save leaves nothing behind
    safeio.atomic_write(path, lambda f: f.write(safetensors.numpy.save(payload, metadata={HEADER_KEY: header})),
                        error=CheckpointError)


NOUN = "a tinygrad_rnn checkpoint"
ZIP_MAGIC = b"PK"  # a zip archive: an .npz checkpoint of an earlier version

# safetensors dtype -> the NumPy dtype it reads as; others (BF16, F8_*) NumPy cannot hold
NUMPY_DTYPES = {"BOOL": "bool", "U8": "uint8", "I8": "int8", "U16": "uint16", "I16": "int16",
                "U32": "uint32", "I32": "int32", "U64": "uint64", "I64": "int64",
                "F16": "float16", "F32": "float32", "F64": "float64"}
# safetensors itself refuses a header over 100 MB; ours are a few kB (a 1,000-layer LSTM's: 140 kB)
MAX_HEADER_BYTES = 100 * 2 ** 20


def read_safetensors_header(path, label, error):
    """``(tensors, metadata)`` of the safetensors file at ``path``, every entry checked
    against the bytes the file holds (and the memory free) before any tensor is read:
    ``tensors`` maps name -> (dtype name, shape, (begin, end)), ``metadata`` the string
    metadata. A file that is truncated, claims a huge or malformed header, or holds a
    dtype NumPy cannot hold raises ``error`` naming ``label``."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            first = f.read(8)
            if len(first) < 8:
                raise error(f"{label} is truncated: {size} byte(s), and a safetensors file starts with an "
                            "8-byte header length")
            (n,) = struct.unpack("<Q", first)
            if n > size - 8 or n > MAX_HEADER_BYTES:
                raise error(f"{label} claims a {n}-byte header but holds {size - 8} byte(s) after its length"
                            f"{'' if n <= MAX_HEADER_BYTES else ' (and at most 100 MB are read)'}: corrupt, "
                            "truncated or not a safetensors file")
            raw = f.read(n)
    except OSError as e:
        raise error(f"{label} cannot be read: {e.strerror}") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise error(f"{label} has a malformed safetensors header ({e})") from None
    if not isinstance(header, dict):
        raise error(f"{label} has a malformed safetensors header (not a JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise error(f"{label} has malformed safetensors metadata (it must map names to strings)")
    data_bytes, tensors, total = size - 8 - n, {}, 0
    for name, entry in header.items():
        where = f"{label}: tensor {name!r}"
        if not (isinstance(entry, dict) and isinstance(entry.get("dtype"), str)
                and isinstance(entry.get("shape"), list) and isinstance(entry.get("data_offsets"), list)):
            raise error(f"{where} has a malformed entry (needs dtype, shape and data_offsets)")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in NUMPY_DTYPES:
            raise error(f"{where} has dtype {dtype[:20]!r}, which NumPy cannot hold (use one of "
                        f"{', '.join(NUMPY_DTYPES)})")
        if not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= options.MAX_INT for d in shape):
            raise error(f"{where} has a malformed shape {options.shown(shape)}")
        if (len(offsets) != 2 or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
                or not 0 <= offsets[0] <= offsets[1]):
            raise error(f"{where} has malformed data_offsets {options.shown(offsets)}")
        claimed = math.prod(shape) * np.dtype(NUMPY_DTYPES[dtype]).itemsize
        if offsets[1] > data_bytes or offsets[1] - offsets[0] != claimed:
            raise error(f"{where} claims shape {tuple(shape)} of {NUMPY_DTYPES[dtype]} "
                        f"({limits.human_bytes(claimed)}) at bytes {offsets[0]}..{offsets[1]}, but the file holds "
                        f"{limits.human_bytes(data_bytes)} of data: corrupt or truncated")
        tensors[name] = (NUMPY_DTYPES[dtype], tuple(shape), tuple(offsets))
        total += claimed
    try:
        limits.check_fits(total, label)
    except ResourceError as e:
        raise error(str(e)) from None
    return tensors, metadata


def read_safetensors(path, label, error):
    """``(arrays, metadata)`` of the safetensors file at ``path``, checked as
    ``read_safetensors_header`` does; ``error`` names ``label`` on any failure."""
    _, metadata = read_safetensors_header(path, label, error)
    try:
        arrays = safetensors.numpy.load_file(path)
    except (SafetensorError, OSError, ValueError) as e:  # overlapping offsets, a gap, ...
        raise error(f"{label} is corrupt ({str(e).splitlines()[0]})") from None
    return arrays, metadata


def _first_bytes(path):
    with open(path, "rb") as f:
        return f.read(2)


def is_checkpoint(path):
    """Whether ``path`` is a checkpoint (of any version and container): a safetensors file or
    an .npz whose header names the format. Reads only the header, so it is cheap enough to
    ask before every save."""
    try:
        if _first_bytes(path) == ZIP_MAGIC:
            return _npz_meta(path).get("format") == FORMAT
        _, metadata = read_safetensors_header(path, path, CheckpointError)
        return json.loads(metadata.get(HEADER_KEY, "null")).get("format") == FORMAT
    except (OSError, EOFError, KeyError, ValueError, AttributeError, RecursionError, zipfile.BadZipFile, NotImplementedError):
        return False  # CheckpointError is a ValueError


def _npz_meta(path):
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("__meta__.npy")
        if info.file_size > 2 ** 24:
            return {}
        with zf.open(info) as member:
            raw = np.lib.format.read_array(member, allow_pickle=False)
    meta = json.loads(raw.tobytes().decode("utf-8")) if raw.dtype == np.uint8 else None
    return meta if isinstance(meta, dict) else {}


def load(path):
    """Return ``(meta, arrays)`` of a safetensors or (older) .npz checkpoint; raises
    CheckpointError with a one-line reason."""
    if not os.path.isfile(path):
        if os.path.isdir(path):
            raise CheckpointError(f"checkpoint {path!r} is a folder, not a file")
        if os.path.exists(path):
            raise CheckpointError(f"checkpoint {path!r} is not a regular file (a device, pipe or socket); "
                                  "give a checkpoint file")
        raise CheckpointError(f"no such checkpoint file {path!r}")
    try:
        zipped = _first_bytes(path) == ZIP_MAGIC
    except OSError as e:
        raise CheckpointError(f"{path!r} cannot be read: {e.strerror}") from None
    if zipped:
        meta, arrays = _load_npz(path)
    else:
        arrays, metadata = read_safetensors(path, f"{path!r}", CheckpointError)
        if HEADER_KEY not in metadata:
            raise CheckpointError(f"{path!r} is a safetensors file but not a tinygrad_rnn checkpoint (no "
                                  f"{HEADER_KEY!r} header in its metadata; for weights trained elsewhere use "
                                  "--weights)")
        try:
            meta = json.loads(metadata[HEADER_KEY])
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{path!r} has a corrupt header: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path!r} is not a tinygrad_rnn checkpoint")
    if meta.get("version") != VERSION:
        raise CheckpointError(f"{path!r} has checkpoint version {meta.get('version')}, "
                              f"this tinygrad_rnn reads version {VERSION}")
    return meta, arrays


def _load_npz(path):
    """``(meta, arrays)`` of a checkpoint written before checkpoints were safetensors."""
    if not zipfile.is_zipfile(path):  # else NumPy guesses "pickled data" for any junk
        raise CheckpointError(f"{path!r} is corrupt or not a checkpoint (not an .npz archive)")
    _check_members(path)
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
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        # RecursionError: a hand-made header nested deeper than json's recursion limit
        raise CheckpointError(f"{path!r} has a corrupt header: {e}") from None
    return meta, arrays


def _check_members(path):
    """Refuse members whose header claims more data than they hold (before allocating)."""
    try:
        with zipfile.ZipFile(path) as zf:
            infos = [i for i in zf.infolist() if i.filename.endswith(".npy")]
            total = sum(i.file_size for i in infos)
            limits.check_fits(total, f"checkpoint {path!r}")
            for info in infos:
                with zf.open(info) as member:
                    limits.check_npy(member, info.file_size, f"checkpoint {path!r} member {info.filename[:-4]!r}")
    except ResourceError as e:
        raise CheckpointError(str(e)) from None
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as e:
        raise CheckpointError(f"{path!r} is corrupt or not a checkpoint ({type(e).__name__}: {e})") from None


# ---- training checkpoints: every field checked by type and range -----------------------
def _int(v, lo=None):
    """An integer >= ``lo`` that fits a C long (a larger one overflows NumPy's conversions)."""
    return (isinstance(v, numbers.Integral) and not isinstance(v, bool) and (lo is None or v >= lo)
            and abs(v) <= options.MAX_INT)


def _num(v, lo=None, open_lo=False):
    ok = isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)
    return ok and (lo is None or (v > lo if open_lo else v >= lo))


# config key -> (check, what it must be): every option the run table marks saved, and the
# text task's character mapping
RUN_FIELDS = {**options.run_fields(),
              "vocab": (lambda v: v is None or (isinstance(v, str) and len(set(v)) == len(v) >= 2),
                        lambda v=None: "null or a string of distinct characters")}
REQUIRED = ("cell", "task", "seq_len", "hidden", "layers", "batch", "optimizer", "lr", "seed")


HEADER = ("format", "version", "step", "config", "rng", "init_rng", "scheduler", "early_stop")
EARLY_STOP = {  # the early-stopping record: key -> (check, what it must be, for the value found)
    "best": (lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool) and not math.isnan(v),
             lambda v: "a number (Infinity before the first evaluation)"),
    "best_step": (lambda v: v is None or _int(v, 0),
                  lambda v: options.integer_what(0, value=v) if options.past_c_long(v) else "null or an integer >= 0"),
    "bad": (lambda v: _int(v, 0), lambda v: options.integer_what(0, value=v)),
}


def _option_value(v):
    return isinstance(v, (str, bool, numbers.Real)) and not (isinstance(v, float) and not math.isfinite(v))


def validate_run(meta, arrays, path):
    """Check a training checkpoint's header (step, RNG states, run config, early-stopping
    record) and its optimiser entries' names; raise CheckpointError naming the first bad
    field. Unknown keys are refused: a hand edit that does nothing must not look as if it did."""
    missing = [k for k in ("config", "step", "rng", "init_rng") if k not in meta]
    if missing or not isinstance(meta["config"], dict):
        raise CheckpointError(f"{path!r} is incomplete: no {', '.join(missing) or 'config'}")
    _no_unknown(path, "header", meta, HEADER)
    if not _int(meta["step"], 0):
        raise CheckpointError(f"{path!r}: header field 'step' must be {options.integer_what(0, value=meta['step'])}, "
                              f"got {options.shown(meta['step'])}")
    for key in ("rng", "init_rng"):
        if not isinstance(meta[key], dict) or "bit_generator" not in meta[key]:
            raise CheckpointError(f"{path!r}: header field {key!r} is not a random generator state")
    config = meta["config"]
    absent = [k for k in REQUIRED if k not in config]
    if absent:
        raise CheckpointError(f"{path!r} has an unusable config: missing {', '.join(map(repr, absent))}")
    _no_unknown(path, "config", config, RUN_FIELDS)
    for key, (check, what) in RUN_FIELDS.items():
        if key in config and not check(config[key]):
            raise CheckpointError(f"{path!r}: config field {key!r} must be {what(config[key])}, "
                                  f"got {options.shown(config[key])}")
    for key, value in config.get("cell_options", {}).items():
        if not _option_value(value):
            raise CheckpointError(f"{path!r}: config field 'cell_options' entry {key!r} must be text, a finite "
                                  f"number or true/false, got {value!r}")
    if "early_stop" in meta:
        early = meta["early_stop"]
        if not isinstance(early, dict) or set(early) != set(EARLY_STOP):
            raise CheckpointError(f"{path!r}: header field 'early_stop' must be an object with keys "
                                  f"{', '.join(EARLY_STOP)}, got {early!r}")
        for key, (check, what) in EARLY_STOP.items():
            if not check(early[key]):
                raise CheckpointError(f"{path!r}: early_stop field {key!r} must be {what(early[key])}, "
                                      f"got {options.shown(early[key])}")
        if early["best_step"] is not None and early["best_step"] > meta["step"]:
            raise CheckpointError(f"{path!r}: early_stop field 'best_step' ({early['best_step']}) is past the "
                                  f"checkpoint's step {meta['step']}")
    for key in ("optim/steps", "optim/lr"):
        if key not in arrays or arrays[key].shape != ():
            raise CheckpointError(f"{path!r}: optimizer state has no scalar {key[6:]!r}")
    steps, lr = arrays["optim/steps"].item(), arrays["optim/lr"].item()
    if not _int(steps, 0):
        raise CheckpointError(f"{path!r}: optimizer state 'steps' must be {options.integer_what(0, value=steps)}, "
                              f"got {options.shown(steps)}")
    if not _num(lr, 0):  # 0 is where a cosine schedule ends
        raise CheckpointError(f"{path!r}: optimizer state 'lr' must be a finite number >= 0, got {lr!r}")
    return config


def _no_unknown(path, what, fields, known):
    unknown = sorted(set(fields) - set(known), key=str)
    if unknown:
        raise CheckpointError(f"{path!r}: unknown {what} field(s) {', '.join(map(repr, unknown))} "
                              f"(known: {', '.join(known)})")


# Scheduler state entries whose range is narrower than "a number >= 0" (an integer where the
# schedule has one); a bad one would divide by zero or grow the rate.
SCHEDULER_FIELDS = {
    "step_size": (lambda v: _int(v, 1), lambda v: options.integer_what(1, value=v)),
    "T_max": (lambda v: _int(v, 1), lambda v: options.integer_what(1, value=v)),
    "gamma": (lambda v: _num(v, 0, open_lo=True) and v <= 1, lambda v: "a number in (0, 1]"),
    "factor": (lambda v: _num(v, 0, open_lo=True) and v <= 1, lambda v: "a number in (0, 1]"),
    "best": (lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool) and not math.isnan(v),
             lambda v: "a number (Infinity before the first evaluation)"),
}


def check_scheduler(path, state, sched):
    """Check a saved schedule state against the run's scheduler ``sched``: the same keys, each
    an integer >= 0 where the scheduler holds an integer, else a finite number >= 0 (or as
    SCHEDULER_FIELDS says)."""
    expected = sched.state_dict()
    if not isinstance(state, dict):
        raise CheckpointError(f"{path!r}: header field 'scheduler' must be an object, got {state!r}")
    _no_unknown(path, f"scheduler ({type(sched).__name__})", state, expected)
    absent = [k for k in expected if k not in state]
    if absent:
        raise CheckpointError(f"{path!r}: scheduler state is missing {', '.join(map(repr, absent))}")
    for key, now in expected.items():
        if key in SCHEDULER_FIELDS:
            check, what = SCHEDULER_FIELDS[key]
        elif isinstance(now, int):
            check, what = (lambda v: _int(v, 0)), (lambda v: options.integer_what(0, value=v))
        else:
            check, what = (lambda v: _num(v, 0)), (lambda v: "a finite number >= 0")
        if not check(state[key]):
            raise CheckpointError(f"{path!r}: scheduler field {key!r} must be {what(state[key])}, "
                                  f"got {options.shown(state[key])}")


# ---- a training run, saved and restored ---------------------------------------------------
def section(arrays, prefix):
    """The arrays saved under ``prefix/`` (``param``, ``optim``, ``extra``), by their own names."""
    head = prefix + "/"
    return {k[len(head):]: v for k, v in arrays.items() if k.startswith(head)}


def snapshot(step, settings, model, opt, sched, rng, early, carried=None, cursors=None):
    """``(meta, arrays)`` of a training run at ``step``, as ``save`` takes them: the model's
    and optimiser's state, the run's ``settings`` (``build`` reads them back), the batch
    generator ``rng`` and the initialisers' generator, the schedule, the early-stopping
    record and, with truncated BPTT, each sequence's cursor and carried state."""
    arrays = {f"param/{k}": v for k, v in model.state_dict().items()}
    arrays.update({f"optim/{k}": np.array(v) for k, v in opt.state_dict().items()})
    if cursors is not None and carried is not None:
        arrays["extra/cursors"] = cursors
        arrays.update({f"extra/state{i}": s.numpy() for i, s in enumerate(carried)})
    meta = {"step": step, "config": {k: v for k, v in settings.items() if k != "device"},
            "rng": rng.bit_generator.state, "init_rng": init.get_rng_state(),
            "scheduler": sched.state_dict(), "early_stop": early}
    return meta, arrays


def check_parameters(path, arrays):
    """Refuse parameters that are not float arrays: an integer array would load with every
    weight truncated to the model's float type."""
    for name, value in section(arrays, "param").items():
        if value.dtype.kind != "f":
            raise CheckpointError(f"{path!r}: parameter {name!r} holds {value.dtype} values, not floats")


def restore(path, meta, arrays, model, opt, rng, sched=None):
    """Load a checkpoint's model and optimiser states, both generators and the schedule
    (``sched``) into a run; an entry that does not fit is a CheckpointError naming ``path``.
    Returns the saved step."""
    check_parameters(path, arrays)
    if sched is not None and "scheduler" in meta:
        check_scheduler(path, meta["scheduler"], sched)
    try:
        model.load_state_dict(section(arrays, "param"))
        opt.load_state_dict(section(arrays, "optim"))
        if sched is not None and "scheduler" in meta:
            sched.load_state_dict(meta["scheduler"])
    except (KeyError, ValueError, TypeError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        raise CheckpointError(f"{path!r} does not fit this model: {msg}") from None
    for key in ("rng", "init_rng"):
        try:
            if key == "rng":
                rng.bit_generator.state = meta["rng"]
            else:
                init.set_rng_state(meta["init_rng"])
        except (KeyError, ValueError, TypeError, OverflowError) as e:  # OverflowError: a state past its bits
            raise CheckpointError(f"{path!r}: header field {key!r} is not a valid random generator state "
                                  f"({e.args[0] if isinstance(e, KeyError) and e.args else e})") from None
    return int(meta["step"])
