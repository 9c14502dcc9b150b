"""Output files that never lose data: checked before any work, written atomically.

``check_outputs`` runs before training: an output that names an input (``--save`` on
the ``--data`` file), two outputs on one file, or a folder that is missing or not
writable, or an existing file that is not what the option writes (``--save`` over a
data file or a plugin's source) is a one-line error naming the path as the user gave it. ``atomic_write``
writes through a temporary file in the destination's folder, then renames it over
the destination: a crash leaves the old file whole. The destination keeps its
permissions, a symlink is followed (the link stays, its target is replaced), and a
temporary file left by a killed run is removed by the next write to the same path.
"""
import errno
import fcntl
import glob
import json
import math
import os
import re
import shutil
import stat

from .errors import ConfigError


class OutputError(ConfigError):
    """An output path cannot be written, or would overwrite an input."""


def same_file(a, b):
    """Whether paths ``a`` and ``b`` name the same file (following symlinks; either may not exist)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


APPENDED = ("--log", "log=")  # outputs opened for appending: a device or pipe is fine there


def check_outputs(outputs, inputs=(), existing=None):
    """Refuse, before any work, outputs that cannot be written or that would destroy an input.

    ``outputs`` and ``inputs`` are (option, path) pairs such as ("--save", "run.npz");
    pairs whose path is None are ignored. Options in APPENDED are appended to, the others
    replaced (atomically, so they must be regular files). ``existing`` maps an option to
    ``(recognise, noun)``: a non-empty regular file already at its path must pass
    ``recognise(path)`` (be a checkpoint, a log), else it is refused as not being ``noun``.
    """
    for option, path in outputs:
        if path == "":
            raise OutputError(f"{option}: the path is empty; give a file name")
    outputs = [(o, p) for o, p in outputs if p]
    for option, path in outputs:
        for in_option, in_path in inputs:
            if in_path and same_file(path, in_path):
                raise OutputError(f"{option} {path!r} is the {in_option} file: writing there would destroy "
                                  "it; choose another path")
    for i, (option, path) in enumerate(outputs):
        for other, other_path in outputs[i + 1:]:
            if same_file(path, other_path):
                raise OutputError(f"{option} and {other} both name {path!r}; give them different paths")
        check_writable(path, option, replace=option not in APPENDED)
        if existing and option in existing:
            check_existing(path, option, *existing[option])


def check_existing(path, option, recognise, noun):
    """Refuse a non-empty regular file at ``path`` that ``recognise(path)`` does not accept:
    writing there would replace (or append to) something that is not ``noun``."""
    try:
        st = os.stat(path)
    except OSError:
        return  # no file yet (check_writable has reported any other problem)
    if not stat.S_ISREG(st.st_mode) or st.st_size == 0 or recognise(path):
        return
    verb = "append to it" if option in APPENDED else "replace it"
    raise OutputError(f"{option} {path!r} already exists and is not {noun} (it holds {describe(path)}); "
                      f"choose another path, or delete the file if you mean to {verb}")


def describe(path):
    """What a file holds, in a few words, from its first bytes and its name."""
    try:
        with open(path, "rb") as f:
            head, size = f.read(4096), os.fstat(f.fileno()).st_size
    except OSError as e:
        return f"something unreadable: {e.strerror}"
    if head.startswith(b"\x93NUMPY"):
        return "a NumPy .npy array"
    if len(head) > 8 and head[8:9] == b"{" and 2 <= int.from_bytes(head[:8], "little") <= size - 8:
        return "a safetensors checkpoint"  # its format: a u64 header length, then the JSON header
    if head.startswith(b"PK"):
        return "a zip archive (.npz)"
    if path.endswith(".py"):
        return "Python source"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 3:  # not just a character cut at the end of the sample
            return "binary data"
    return "text"


def check_writable(path, option, replace=True):
    """One-line error naming ``option`` and ``path`` unless a file can be written at ``path``.

    ``replace``: the file will be replaced by a rename, so an existing one must be a
    regular file (never a device: renaming over /dev/null would replace the device).
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None  # a new file, or a symlink to a file still to be made
    except OSError as e:
        raise OutputError(f"{option} {path!r}: {e.strerror}") from None
    real = os.path.realpath(path)
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise OutputError(f"{option} {path!r} is a folder; give a file name")
    if st is not None and not stat.S_ISREG(st.st_mode):
        if replace:
            raise OutputError(f"{option} {path!r} is not a regular file (a device, pipe or socket); "
                              "give a file name")
        if stat.S_ISFIFO(st.st_mode):
            _check_fifo_has_reader(path, option)
        return
    folder = os.path.dirname(real) or "."
    if not os.path.isdir(folder):
        if os.path.islink(path):  # a dangling symlink: the missing folder is its target's
            raise OutputError(f"{option} {path!r} is a symlink to {os.readlink(path)!r}, whose folder "
                              "does not exist")
        raise OutputError(f"{option} {path!r}: the folder {os.path.dirname(path) or '.'!r} does not exist")
    if os.path.exists(real) and not os.access(real, os.W_OK):
        raise OutputError(f"{option} {path!r} is not writable")
    try:  # os.access cannot see read-only mounts or ACLs: really create a file there
        probe = os.open(os.path.join(folder, f".{os.path.basename(real)}.{os.getpid()}.probe"),
                        os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as e:
        raise OutputError(f"{option} {path!r}: cannot write in folder {os.path.dirname(path) or '.'!r} "
                          f"({e.strerror})") from None
    os.close(probe)
    os.unlink(os.path.join(folder, f".{os.path.basename(real)}.{os.getpid()}.probe"))


def _check_fifo_has_reader(path, option):
    """Opening a FIFO for writing waits, without a word, for a process to read it: refuse
    one that nobody reads instead."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as e:
        if e.errno == errno.ENXIO:
            raise OutputError(f"{option} {path!r} is a named pipe that no process is reading; start its reader "
                              "first, or give a file name") from None
        raise OutputError(f"{option} {path!r}: {e.strerror}") from None
    os.close(fd)


def check_space(path, nbytes, option):
    """Refuse, before any work, a save whose folder has less free space than ``nbytes``."""
    if not path:
        return
    folder = os.path.dirname(os.path.realpath(path)) or "."
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return
    if free < nbytes:
        raise OutputError(f"{option} {path!r}: the checkpoint needs about {nbytes / 2 ** 20:.1f} MB, "
                          f"the folder has {free / 2 ** 20:.1f} MB free")


class OutputLocks:
    """Exclusive locks on output paths (``lock_outputs``), released together."""

    def __init__(self):
        self.held = []  # (lock file path, descriptor)

    def release(self):
        for lock_path, fd in reversed(self.held):
            try:  # unlinked while still locked: a run waiting on this file sees it go, and retries
                os.unlink(lock_path)
            except OSError:
                pass
            os.close(fd)
        self.held = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def lock_outputs(outputs):
    """Lock each (option, path) for this process, or raise OutputError naming the option,
    the path and the process holding it: two runs writing one checkpoint or one log lose
    a model or interleave their records without a word.

    The lock is ``flock`` on ``.NAME.lock`` beside the file (the file itself is replaced
    by a rename on every save, so a lock on it would not last). The lock file is removed
    on release; one left by a killed run holds no lock and is reused. Devices and pipes
    (``--log /dev/stdout``) are not locked.
    """
    locks = OutputLocks()
    named = {os.path.realpath(p): o for o, p in outputs if p}
    try:
        for option, path in outputs:
            if not path:
                continue
            real = os.path.realpath(path)
            try:
                if not stat.S_ISREG(os.stat(real).st_mode):
                    continue
            except FileNotFoundError:
                pass
            except OSError as e:
                raise OutputError(f"{option} {path!r}: {e.strerror}") from None
            lock_path = os.path.join(os.path.dirname(real), f".{os.path.basename(real)}.lock")
            if lock_path in named:
                raise OutputError(f"{named[lock_path]} {lock_path!r} is the lock file of {option} {path!r}; "
                                  "choose another path")
            locks.held.append((lock_path, _lock(lock_path, option, path)))
    except BaseException:
        locks.release()
        raise
    return locks


def _lock(lock_path, option, path):
    while True:
        try:  # O_NONBLOCK: a FIFO there must not wait for a writer; O_NOFOLLOW: nor a link lead elsewhere
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NONBLOCK | os.O_NOFOLLOW, 0o644)
        except OSError as e:
            raise OutputError(f"{option} {path!r}: cannot lock it ({e.strerror})") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise OutputError(f"{option} {path!r}: its lock file {lock_path!r} is not a regular file; "
                              "move it away, or choose another path")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            os.close(fd)
            raise OutputError(f"{option} {path!r} is being written by another run"
                              f"{f' (process {holder})' if holder.isdigit() else ''}; wait for it to end or "
                              "choose another path") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock_path).st_ino
        except FileNotFoundError:
            same = False
        if same and not _is_lock_content(os.pread(fd, 64, 0)):
            os.close(fd)  # someone's own file of that name: truncating and removing it would lose it
            raise OutputError(f"{option} {path!r}: {lock_path!r} exists and is not a tinygrad_rnn lock "
                              "file (it would be overwritten, then removed); move it away, or choose another path")
        if same:  # else the holder removed it between our open and our lock: take the new one
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            return fd
        os.close(fd)


def _is_lock_content(data):
    """What a lock file of ours holds: nothing (just made, or a run killed before writing)
    or the process id of the run that held it."""
    return data == b"" or re.fullmatch(rb"[0-9]+\n?", data) is not None


def _default_mode():
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def _remove_stale_temporaries(real):
    """Temporary files of writes to ``real`` whose process is gone (a killed run's leftovers)."""
    for tmp in glob.glob(os.path.join(glob.escape(os.path.dirname(real)),
                                      f".{glob.escape(os.path.basename(real))}.*.tmp")):
        pid = tmp[:-len(".tmp")].rsplit(".", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            try:
                os.unlink(tmp)
            except OSError:
                pass


def atomic_write(path, write, error=OutputError):
    """Write ``path`` by calling ``write(fileobj)`` on a temporary file, then renaming it.

    Raises ``error`` (one line, naming ``path``) on an OS failure; the temporary file is
    removed on any failure, including KeyboardInterrupt.
    """
    real = os.path.realpath(path)  # through a symlink: the link stays, its target is replaced
    try:
        st = os.stat(real)
        mode = stat.S_IMODE(st.st_mode)
    except FileNotFoundError:
        st, mode = None, _default_mode()
    except OSError as e:
        raise error(f"cannot write {path!r}: {e.strerror}") from None
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise error(f"cannot write {path!r}: not a regular file (a device, pipe or socket)")
    _remove_stale_temporaries(real)
    tmp = os.path.join(os.path.dirname(real), f".{os.path.basename(real)}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
            os.fchmod(f.fileno(), mode)
            if st is not None and (st.st_uid, st.st_gid) != (os.geteuid(), os.getegid()):
                try:  # keep the owner too, where we may (root saving over a user's file)
                    os.fchown(f.fileno(), st.st_uid, st.st_gid)
                except PermissionError:
                    pass
        os.replace(tmp, real)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise error(f"cannot write {path!r}: {e.strerror or e}") from None
        raise


# ---- JSON Lines logs (train --log) -----------------------------------------------------------
LOG_KINDS = {"loss", "eval_loss", "grad_norm_per_step"}  # a record has its step and one of these
_LONGEST_LINE = 2 ** 26  # a --diagnose-every record of a long sequence is some MB; a data file has no lines


def read_log(path):
    """``(lines, torn)`` of a tinygrad_rnn JSON Lines log: each complete line (bytes) with
    its record's step, and whether a last line was cut short (a killed run). None if the
    file holds anything else: a line that is not a JSON object with an integer "step" and
    a loss, an eval loss or per-step norms."""
    lines = []
    with open(path, "rb") as f:
        while True:
            line = f.readline(_LONGEST_LINE)
            if not line:
                return lines, False
            if not line.endswith(b"\n"):  # the end of the file, or a line too long for a log
                return (lines, True) if len(line) < _LONGEST_LINE and line.startswith(b'{"step"') else None
            try:
                record = json.loads(line)
            except (ValueError, RecursionError):  # RecursionError: nested deeper than json can read
                return None
            step = record.get("step") if isinstance(record, dict) else None
            if not isinstance(step, int) or isinstance(step, bool) or not LOG_KINDS & set(record):
                return None
            lines.append((line, step))


# The first bytes of the image formats a plot is written in: an existing file at a --plot
# path is replaced only if it already is such an image (an earlier plot), never a user's
# checkpoint or document that happens to be named plot.png.
_IMAGE_MAGIC = {"png": (b"\x89PNG\r\n\x1a\n",), "pdf": (b"%PDF",), "svg": (b"<?xml", b"<svg"),
                "jpg": (b"\xff\xd8\xff",), "jpeg": (b"\xff\xd8\xff",), "eps": (b"%!PS",), "ps": (b"%!PS",),
                "tif": (b"II*\x00", b"MM\x00*"), "tiff": (b"II*\x00", b"MM\x00*"), "webp": (b"RIFF",)}
def is_image(path):
    """Whether the file at ``path`` starts as an image of the format its extension names."""
    magic = _IMAGE_MAGIC.get(os.path.splitext(path)[1][1:].lower())
    if magic is None:
        return True  # a format without a known signature (raw, rgba): as before
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:
        return False
    return head.startswith(magic)


PLOT = (is_image, "an image of the format its name says (an earlier plot)")


def is_log(path):
    return read_log(path) is not None


def trim_log(path, last_step):
    """Drop the last run's records past ``last_step`` (a run resumed from an earlier
    checkpoint replays those steps) and a torn last line, atomically; returns the records
    dropped. The last run is the log's tail whose steps never go back: earlier runs
    appended to the same file keep every record."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return 0
        found = read_log(path)
    except FileNotFoundError:
        return 0
    except OSError as e:
        raise OutputError(f"log= {path!r}: cannot read ({e.strerror})") from None
    if found is None:
        raise OutputError(f"log= {path!r} is not a tinygrad_rnn log")
    lines, torn = found
    start = len(lines) - 1
    while start > 0 and lines[start - 1][1] <= lines[start][1]:
        start -= 1
    keep = [line for i, (line, step) in enumerate(lines) if i < start or last_step is None or step <= last_step]
    if len(keep) < len(lines) or torn:
        atomic_write(path, lambda f: f.writelines(keep))
    return len(lines) - len(keep)


def json_safe(value, path="", found=None):
    """``value`` with every non-finite float replaced by None (JSON has no NaN or Infinity).

    The paths of replaced values (``train_loss``, ``cells[0].ratio_first_last``) are
    appended to ``found`` when given.
    """
    if isinstance(value, float) or (hasattr(value, "dtype") and getattr(value, "ndim", 1) == 0):
        v = float(value) if not isinstance(value, bool) else value
        if isinstance(v, float) and not math.isfinite(v):
            if found is not None:
                found.append(path)
            return None
        return value.item() if hasattr(value, "item") else value
    if isinstance(value, dict):
        return {k: json_safe(v, f"{path}.{k}" if path else str(k), found) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v, f"{path}[{i}]", found) for i, v in enumerate(value)]
    if hasattr(value, "tolist"):
        return json_safe(value.tolist(), path, found)
    return value


def dumps(value, **kwargs):
    """``json.dumps`` that always gives valid JSON: non-finite numbers become null."""
    return json.dumps(json_safe(value), allow_nan=False, **kwargs)
