"""Numba's on-disk kernel cache, made safe against damage and full disks.

Numba loads a cached kernel (``NAME.N.nbc``) by unpickling it and running its machine
code: a file damaged on disk (a flipped bit, a bad sector) can crash the process with
SIGSEGV on every later run, or compute something else. ``install`` makes every cache
entry carry a SHA-256 of its bytes, checked before it is unpickled: a damaged entry, or
one written without a checksum, is a cache miss, compiled again and saved anew. A
kernel that cannot be saved (a full disk, ENOSPC) is used from memory, with one warning
per process, as an unwritable cache already is. The index (``NAME.nbi``) is sealed the same way.
"""
import hashlib
import sys

MAGIC = b"tinygrad_rnn-sha256\n"  # then 32 bytes of digest, then Numba's own bytes
_state = {"installed": False, "warned": False}


def seal(data):
    """Numba's bytes for a data file, with their checksum in front."""
    return MAGIC + hashlib.sha256(data).digest() + data


def unseal(raw):
    """Numba's bytes out of a data file written by ``seal``, or None if the file is
    damaged or has no checksum."""
    head = len(MAGIC) + 32
    if len(raw) < head or not raw.startswith(MAGIC):
        return None
    data = raw[head:]
    return data if hashlib.sha256(data).digest() == raw[len(MAGIC):head] else None


def install():
    """Patch Numba's cache classes once per process (idempotent)."""
    if _state["installed"]:
        return
    import pickle
    from numba.core import caching
    _state["installed"] = True
    files, cache = caching.IndexDataCacheFile, caching.Cache

    def _load_data(self, name):
        path = self._data_path(name)
        with open(path, "rb") as f:
            data = unseal(f.read())
        if data is None:  # Numba's load() takes an OSError for a miss: compiled again, then saved
            raise OSError(f"{path}: damaged or unchecked cache entry")
        return pickle.loads(data)

    def _save_data(self, name, data):
        with self._open_for_write(self._data_path(name)) as f:  # a temporary file, then a rename
            f.write(seal(self._dump(data)))

    def _load_index(self):
        # Numba unpickles the index (NAME.nbi) unchecked: an empty or damaged one raised
        # EOFError / UnpicklingError on every later run. Sealed like the data files, a damaged
        # or unchecked index is an empty one: its kernels are compiled again, the index rewritten.
        try:
            with open(self._index_path, "rb") as f:
                version = pickle.load(f)
                data = unseal(f.read())
        except FileNotFoundError:
            return {}
        except Exception:  # noqa: BLE001 - any damage to the version pickle: a miss
            return {}
        if version != self._version or data is None:
            return {}
        stamp, overloads = pickle.loads(data)
        return overloads if stamp == self._source_stamp else {}

    def _save_index(self, overloads):
        data = self._dump((self._source_stamp, overloads))
        with self._open_for_write(self._index_path) as f:
            pickle.dump(self._version, f, protocol=-1)
            f.write(seal(data))

    save_overload = cache.save_overload

    def guarded_save_overload(self, sig, data):
        try:
            save_overload(self, sig, data)
        except OSError as e:  # the kernel works from memory; only the next run's head start is lost
            if not _state["warned"]:
                _state["warned"] = True
                print(f"tinygrad_rnn: cannot save compiled kernels in {self._cache_path!r} "
                      f"({e.strerror or e}); they are compiled again next run (free some space, or set "
                      "TINYGRAD_RNN_CACHE_DIR to another folder)", file=sys.stderr)

    files._load_data, files._save_data = _load_data, _save_data
    files._load_index, files._save_index = _load_index, _save_index
    cache.save_overload = guarded_save_overload
