"""From 1 core to 2: how much faster a training step gets, ours and PyTorch's.

    python benchmarks/bench_scaling.py [--cells lstm,gru] [--sizes 32,128,512] [--threads 1,2]
                                       [--rounds 2] [--blocks 3] [--seq-len 100] [--batch 32]

Each thread count runs in fresh processes with NUMBA_NUM_THREADS, OPENBLAS_NUM_THREADS and
OMP_NUM_THREADS set (they are read when the libraries load) and ``torch.set_num_threads``;
in each process ours and PyTorch's step (forward + backward of out.sum(), T=100, B=32,
input = hidden, float32) run in alternating blocks (benchmarks/timing.py). The processes
for 1 and 2 threads alternate ``--rounds`` times and each figure is the minimum over them,
so a burst of load from elsewhere hits both thread counts alike. Prints ms per step per
thread count and the speed-up from the first thread count to the last; issue 17's target
is 1.7x or more at hidden >= 128 for LSTM and GRU. The first line names the CPU.
"""
import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
TARGET = 1.7


def child(cells, sizes, threads, blocks, seq_len, batch):
    import numpy as np
    import torch
    sys.path.insert(0, HERE)
    from bench_cells import ours_step, torch_step
    from timing import blocked
    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    out = {}
    for cell in cells:
        for size in sizes:
            x = rng.standard_normal((seq_len, batch, size)).astype(np.float32)
            t = blocked({"ours": ours_step(cell, x, size, "cpu"), "torch": torch_step(cell, x, size, "cpu")},
                        blocks=blocks)
            out[f"{cell} {size}"] = {"ours": t["ours"].min, "torch": t["torch"].min}
    print("RESULT " + json.dumps(out))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", default="lstm,gru")
    ap.add_argument("--sizes", default="32,128,512")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--blocks", type=int, default=3)
    ap.add_argument("--seq-len", type=int, default=100)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    cells, sizes = args.cells.split(","), [int(s) for s in args.sizes.split(",")]
    if args.child:
        return child(cells, sizes, args.child, args.blocks, args.seq_len, args.batch)
    sys.path.insert(0, HERE)
    from timing import machine_line
    print(machine_line())
    counts = [int(n) for n in args.threads.split(",")]
    best = {}
    for r in range(args.rounds):
        for n in (counts if r % 2 == 0 else counts[::-1]):
            env = dict(os.environ, NUMBA_NUM_THREADS=str(n), OPENBLAS_NUM_THREADS=str(n), OMP_NUM_THREADS=str(n))
            cmd = [sys.executable, __file__, "--child", str(n), "--cells", args.cells, "--sizes", args.sizes,
                   "--blocks", str(args.blocks), "--seq-len", str(args.seq_len), "--batch", str(args.batch)]
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
            if line is None:
                sys.exit(f"the {n}-thread process failed: {proc.stderr.strip()[-2000:]}")
            for case, times in json.loads(line[7:]).items():
                for lib, ms in times.items():
                    key = (case, lib, n)
                    best[key] = min(best.get(key, float("inf")), ms)
            print(f"  round {r + 1}, {n} thread(s) done", file=sys.stderr, flush=True)
    lo, hi = counts[0], counts[-1]
    print(f"T={args.seq_len} B={args.batch} float32; ms per training step, minimum over {args.rounds} "
          f"process(es) x {args.blocks} blocks; speed-up = {lo}-thread time / {hi}-thread time")
    print(f"{'case':10} {'torch ' + str(lo) + ' -> ' + str(hi):>18} {'speed-up':>8} "
          f"{'ours ' + str(lo) + ' -> ' + str(hi):>18} {'speed-up':>8}  target")
    for cell in cells:
        for size in sizes:
            case = f"{cell} {size}"
            row = f"{case:10}"
            for lib in ("torch", "ours"):
                a, b = best[(case, lib, lo)], best[(case, lib, hi)]
                row += f" {a:8.2f} -> {b:7.2f} {a / b:7.2f}x"
            if size >= 128:
                gain = best[(case, "ours", lo)] / best[(case, "ours", hi)]
                row += f"  {'met' if gain >= TARGET else 'missed'} ({TARGET}x)"
            print(row, flush=True)


if __name__ == "__main__":
    sys.exit(main())
