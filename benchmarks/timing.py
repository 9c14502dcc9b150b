"""The benchmarks' one timing protocol: each contender in its own block of steps.

A block runs ``warmup`` untimed steps of one contender, then ``steps`` timed ones; blocks
of the contenders alternate (A B B A A B ...: neither always goes first), and a
contender's figure is the minimum (and the median) over its blocks of the mean step
time in a block.

Why blocks and never single steps alternating: a library's threads keep running after
its step returns. NumPy's OpenBLAS workers spin, waiting for the next call, before they
sleep; on 2 cores they then take CPU from the next thing that runs. Alternating single
steps timed a PyTorch step right after one of ours and made it 2-4x slower (issue 17),
which inflated every ratio. The warm-up steps at the start of a block absorb that.
"""
import os
import platform
import statistics
import subprocess
import time


def cpu_name():
    """The CPU's model name, as ``lscpu`` gives it (the figures depend on it)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_line():
    """One line naming the machine: CPU, cores, load average, thread settings."""
    load = "/".join(f"{v:.1f}" for v in os.getloadavg())
    env = " ".join(f"{k}={os.environ[k]}" for k in ("OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS", "OMP_NUM_THREADS",
                                                     "OPENBLAS_THREAD_TIMEOUT") if k in os.environ)
    return (f"CPU: {cpu_name()}, {os.cpu_count()} cores, load average {load} (1/5/15 min)"
            + (f", {env}" if env else ""))


class Timing:
    """Per-block mean step times of one contender, in ms."""

    def __init__(self, name, blocks_ms, steps):
        self.name, self.blocks_ms, self.steps = name, blocks_ms, steps

    @property
    def min(self):
        return min(self.blocks_ms)

    @property
    def median(self):
        return statistics.median(self.blocks_ms)

    def __repr__(self):
        return f"Timing({self.name}: min {self.min:.3f} ms, median {self.median:.3f} ms, {len(self.blocks_ms)} blocks)"


def steps_for(fns, block_seconds):
    """Steps per block so that the slowest contender's block lasts about ``block_seconds``
    (at least 3): one timed step of each after one untimed."""
    slowest = 0.0
    for fn in fns.values():
        fn()
        t0 = time.perf_counter()
        fn()
        slowest = max(slowest, time.perf_counter() - t0)
    return max(3, int(block_seconds / max(slowest, 1e-6)))


def blocked(fns, blocks=5, steps=None, warmup=2, block_seconds=0.3):
    """Time each callable of ``fns`` ({name: fn}) in alternating blocks; {name: Timing}."""
    steps = steps or steps_for(fns, block_seconds)
    names = list(fns)
    times = {n: [] for n in names}
    for b in range(blocks):
        for name in (names if b % 2 == 0 else names[::-1]):
            fn = fns[name]
            for _ in range(warmup):
                fn()
            t0 = time.perf_counter()
            for _ in range(steps):
                fn()
            times[name].append((time.perf_counter() - t0) / steps * 1e3)
    return {n: Timing(n, times[n], steps) for n in names}


def ratio_text(theirs, ours):
    """``theirs / ours`` from the block minimums, and from the medians in brackets."""
    return f"{theirs.min / ours.min:6.2f} ({theirs.median / ours.median:.2f})"
