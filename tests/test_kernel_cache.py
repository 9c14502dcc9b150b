"""Numba's kernel cache under damage and full disks (issue 22, items 11 and 12): a damaged
entry is never run (it is compiled again), a full disk is one warning."""
import glob
import os
import subprocess
import sys

from tinygrad_rnn import kernel_cache

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

KERNEL = """
import sys
import numpy as np
from tinygrad_rnn.backend._jit import kernel
{patch}

@kernel
def scaled_sum(x, a):
    s = 0.0
    for v in x:
        s += a * v
    return s

print(scaled_sum(np.arange(10.0), 0.5))
"""

FULL_DISK = """
import errno, os
from numba.core import caching
def full(self, path):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
caching.IndexDataCacheFile._open_for_write = full
"""


def run_kernel(tmp_path, patch=""):
    (tmp_path / "mod.py").write_text(KERNEL.format(patch=patch))
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"),
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, str(tmp_path / "mod.py")], capture_output=True, text=True, env=env,
                          timeout=300)


def test_every_single_bit_flip_of_a_sealed_entry_is_caught():
    data = bytes(range(256)) * 3
    sealed = kernel_cache.seal(data)
    assert kernel_cache.unseal(sealed) == data
    for bit in range(0, len(sealed) * 8, 37):
        damaged = bytearray(sealed)
        damaged[bit // 8] ^= 1 << bit % 8
        assert kernel_cache.unseal(bytes(damaged)) is None
    assert kernel_cache.unseal(data) is None  # an entry without a checksum is not trusted either


def test_a_damaged_cache_entry_is_compiled_again_not_run(tmp_path):
    first = run_kernel(tmp_path)
    assert first.returncode == 0 and first.stdout.strip() == "22.5", first.stderr
    (entry,) = glob.glob(str(tmp_path / "cache" / "**" / "*.nbc"), recursive=True)
    damaged = bytearray(open(entry, "rb").read())
    damaged[len(damaged) // 2] ^= 0x10  # one bit, in the middle of the machine code's pickle
    with open(entry, "wb") as f:
        f.write(damaged)
    again = run_kernel(tmp_path)
    assert again.returncode == 0 and again.stdout.strip() == "22.5", again.stderr
    assert open(entry, "rb").read() != bytes(damaged)  # replaced by a fresh compile
    assert kernel_cache.unseal(open(entry, "rb").read()) is not None


def test_an_empty_or_damaged_cache_index_is_compiled_again_not_a_traceback(tmp_path):
    first = run_kernel(tmp_path)
    assert first.returncode == 0 and first.stdout.strip() == "22.5", first.stderr
    (index,) = glob.glob(str(tmp_path / "cache" / "**" / "*.nbi"), recursive=True)
    for damage in (b"", open(index, "rb").read()[:-7]):  # emptied, cut short: EOFError from Numba's unpickling
        with open(index, "wb") as f:
            f.write(damage)
        again = run_kernel(tmp_path)
        assert again.returncode == 0 and again.stdout.strip() == "22.5", again.stderr
        assert open(index, "rb").read() != damage  # written anew by the fresh compile
    third = run_kernel(tmp_path)  # and the rewritten index serves the next run
    assert third.returncode == 0 and third.stdout.strip() == "22.5", third.stderr


def test_a_full_disk_under_the_cache_is_one_warning(tmp_path):
    r = run_kernel(tmp_path, patch=FULL_DISK)
    assert r.returncode == 0 and r.stdout.strip() == "22.5", r.stderr
    assert "Traceback" not in r.stderr
    assert r.stderr.count("cannot save compiled kernels") == 1 and "No space left on device" in r.stderr
