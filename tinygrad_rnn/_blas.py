"""Let NumPy's OpenBLAS use its AVX-512 kernels on AMD Zen 4.

OpenBLAS (as bundled with NumPy) does not recognise Zen 4 and falls back to its
AVX2 kernels. On the 2-core Zen 4 machine this project is measured on, forcing
its SkylakeX (AVX-512) kernels took a (3200 x 512) @ (512 x 2048) float32 GEMM
from 210 to 368 GFLOP/s and the per-step recurrent GEMM from 161 to 183.

The choice is read once, when OpenBLAS loads, so this only acts when
``tinygrad_rnn`` is imported before NumPy; it never overrides a user's
``OPENBLAS_CORETYPE``, only acts on AMD CPUs that report every AVX-512 subset
the kernels use, and ``TINYGRAD_RNN_NO_BLAS_TUNING=1`` turns it off. This
module must not import NumPy.
"""
import os
import sys

NEEDED = {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"}


def _cpu():
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            info = f.read(1 << 16)
    except OSError:
        return "", set()
    vendor = next((l.split(":", 1)[1].strip() for l in info.splitlines() if l.startswith("vendor_id")), "")
    flags = next((l.split(":", 1)[1].split() for l in info.splitlines() if l.startswith("flags")), [])
    return vendor, set(flags)


def choose_openblas_core():
    """Set OPENBLAS_CORETYPE=SKYLAKEX where it is safe and helps; return what was set, or None."""
    if ("numpy" in sys.modules or "OPENBLAS_CORETYPE" in os.environ
            or os.environ.get("TINYGRAD_RNN_NO_BLAS_TUNING") == "1"):
        return None
    vendor, flags = _cpu()
    if vendor != "AuthenticAMD" or not NEEDED <= flags:
        return None
    os.environ["OPENBLAS_CORETYPE"] = "SKYLAKEX"
    return "SKYLAKEX"


CHOSEN = choose_openblas_core()
