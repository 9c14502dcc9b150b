"""What our threads do after our training step returns, and what that costs the user's
next computation.

    python benchmarks/bench_threads.py [--cells lstm] [--sizes 32,128] [--blocks 5]
                                       [--settings default,timeout,short-spin,one-thread]

Each setting runs in a fresh process (BLAS and OpenMP read their settings when they load):

- ``default``: nothing set;
- ``timeout``: ``OPENBLAS_THREAD_TIMEOUT=4``, OpenBLAS's workers stop spinning after 2^4
  cycles of waiting instead of 2^28 (its default: about 0.1 s at 2-3 GHz) and sleep;
- ``short-spin``: ``OPENBLAS_THREAD_TIMEOUT=20``, 2^20 cycles (about 0.4 ms): long enough to
  stay awake between the per-step products of one training step, short after it;
- ``one-thread``: ``OPENBLAS_NUM_THREADS=1``, no OpenBLAS workers at all.

In each: (1) ``spin``: CPU time the process burns while the caller sleeps 100 ms right
after our step returns (ms of CPU per 100 ms; 0 is quiet, up to 200 on 2 cores is two
spinning threads), and the same after a PyTorch step and after a Numba ``parallel=True``
kernel (the threading layer the compiled kernels may use); (2) ``next torch step``: a
PyTorch training step of the same cell timed right after one of ours, against PyTorch's
step in a block of its own (the slowdown the user sees); (3) ``next GEMM``: a float32
(256 x 256) @ (256 x 256) ``torch.mm`` right after our step against its time alone; (4)
``ours``: our step in its own block, so a setting that fixes (1)-(3) can be checked not
to cost speed. The first line names the CPU.
"""
import argparse
import json
import os
import subprocess
import sys

SETTINGS = {"default": {}, "timeout": {"OPENBLAS_THREAD_TIMEOUT": "4"}, "short-spin": {"OPENBLAS_THREAD_TIMEOUT": "20"},
            "one-thread": {"OPENBLAS_NUM_THREADS": "1"}}


def _cpu_ms_while_sleeping(seconds=0.1):
    import resource
    import time
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    time.sleep(seconds)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    return ((r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)) * 1e3


def child(cell, size, blocks):
    import statistics
    import time

    import numpy as np
    import torch
    import numba

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_cells import ours_step, torch_step
    from timing import blocked

    torch.set_num_threads(2)
    x = np.random.default_rng(0).standard_normal((100, 32, size)).astype(np.float32)
    ours, theirs = ours_step(cell, x, size, "cpu"), torch_step(cell, x, size, "cpu")

    @numba.njit(parallel=True, cache=True)
    def _prange_kernel(a):
        out = np.empty_like(a)
        for i in numba.prange(a.shape[0]):
            for j in range(a.shape[1]):
                out[i, j] = np.tanh(a[i, j])
        return out
    a = np.random.default_rng(1).standard_normal((64, 4096))
    _prange_kernel(a)
    gemm_a = torch.randn(256, 256)

    def gemm():
        torch.mm(gemm_a, gemm_a)

    for fn in (ours, theirs, gemm, ours, theirs):
        fn()
    result = {"threading_layer": numba.threading_layer()}
    spins = {"after ours": [], "after torch": [], "after prange": []}
    for _ in range(5):
        for name, fn in (("after ours", ours), ("after torch", theirs), ("after prange", lambda: _prange_kernel(a))):
            fn()
            spins[name].append(_cpu_ms_while_sleeping())
    result["spin"] = {k: statistics.median(v) for k, v in spins.items()}

    def after_ours(fn, n):
        times = []
        for _ in range(n):
            ours()
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return times
    t = blocked({"ours": ours, "torch": theirs, "gemm": gemm}, blocks=blocks)
    after_torch = min(min(after_ours(theirs, 3)) for _ in range(blocks))
    after_gemm = [statistics.median(after_ours(gemm, 5)) for _ in range(blocks)]
    result.update(ours_ms=t["ours"].min, torch_ms=t["torch"].min, torch_after_ours_ms=after_torch,
                  gemm_us=t["gemm"].min * 1e3, gemm_after_ours_us=min(after_gemm) * 1e3)
    print("RESULT " + json.dumps(result))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", default="lstm")
    ap.add_argument("--sizes", default="32,128")
    ap.add_argument("--blocks", type=int, default=5)
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--child", nargs=3, metavar=("CELL", "SIZE", "BLOCKS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child[0], int(args.child[1]), int(args.child[2]))
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from timing import machine_line
    print(machine_line())
    print(f"{'cell':5} {'size':>4} {'setting':11} {'layer':>6} {'spin ms/100ms: ours torch prange':>33} "
          f"{'ours ms':>8} {'torch ms':>8} {'torch after ours':>16} {'gemm us':>8} {'gemm after ours':>15}")
    for cell in args.cells.split(","):
        for size in args.sizes.split(","):
            for setting in args.settings.split(","):
                env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_THREAD_TIMEOUT", "OPENBLAS_NUM_THREADS")}
                env.update(SETTINGS[setting])
                proc = subprocess.run([sys.executable, __file__, "--child", cell, size, str(args.blocks)],
                                      env=env, capture_output=True, text=True)
                line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
                if line is None:
                    print(f"{cell:5} {size:>4} {setting:11} failed: {proc.stderr.strip().splitlines()[-1:]}")
                    continue
                r = json.loads(line[7:])
                s = r["spin"]
                print(f"{cell:5} {size:>4} {setting:11} {r['threading_layer']:>6} "
                      f"{s['after ours']:15.1f} {s['after torch']:6.1f} {s['after prange']:6.1f}   "
                      f"{r['ours_ms']:8.2f} {r['torch_ms']:8.2f} {r['torch_after_ours_ms']:9.2f} "
                      f"({r['torch_after_ours_ms'] / r['torch_ms']:.2f}x) {r['gemm_us']:8.1f} "
                      f"{r['gemm_after_ours_us']:8.1f} ({r['gemm_after_ours_us'] / r['gemm_us']:.2f}x)", flush=True)


if __name__ == "__main__":
    sys.exit(main())
