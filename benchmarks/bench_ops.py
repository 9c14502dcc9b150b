"""Per-op overhead: forward + backward of a chain of small-tensor ops, next to PyTorch.

    python benchmarks/bench_ops.py [--ops 400] [--size 8] [--blocks 7]

Prints microseconds per op (forward and backward together) for both engines and
the ratio torch_us / ours_us (above 1: we are faster). Each engine runs in its own
blocks of chains after warm-up chains, blocks alternating (benchmarks/timing.py);
minimum over blocks, the medians' ratio in brackets.
"""
import argparse
import time

import numpy as np

import tinygrad_rnn as tr
from timing import blocked, machine_line, ratio_text


def chain(lib, x, w, b, n_ops):
    # Each loop iteration is 4 primitives: matmul, add, tanh, mul.
    y = x
    for _ in range(n_ops // 4):
        y = (y @ w + b).tanh() * 0.9
    return y.sum()


def best_of(fn, repeat):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ops", type=int, default=400)
    ap.add_argument("--size", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=15, help="chains timed when PyTorch is missing")
    ap.add_argument("--blocks", type=int, default=7)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    xs, ws, bs = (rng.standard_normal(s).astype(np.float32) for s in
                  [(args.size, args.size), (args.size, args.size), (args.size,)])
    n_ops = args.ops // 4 * 4 + 1  # + the final sum

    def ours():
        w, b = tr.Tensor(ws, requires_grad=True), tr.Tensor(bs, requires_grad=True)
        chain(tr, tr.Tensor(xs), w, b, args.ops).backward()

    ours()
    print(machine_line())
    print(f"ops per chain: {n_ops}, tensors {args.size}x{args.size} float32")
    try:
        import torch
    except ImportError:
        print(f"tinygrad_rnn : {best_of(ours, args.repeat) / n_ops * 1e6:7.2f} us/op (forward + backward)")
        print("torch        : not installed, no ratio")
        return
    torch.set_num_threads(2)

    def theirs():
        w = torch.tensor(ws, requires_grad=True)
        b = torch.tensor(bs, requires_grad=True)
        chain(torch, torch.tensor(xs), w, b, args.ops).backward()

    t = blocked({"ours": ours, "torch": theirs}, blocks=args.blocks)
    print(f"tinygrad_rnn : {t['ours'].min / n_ops * 1e3:7.2f} us/op (forward + backward)")
    print(f"torch {torch.__version__}: {t['torch'].min / n_ops * 1e3:7.2f} us/op")
    print(f"ratio torch/ours: {ratio_text(t['torch'], t['ours']).strip()}  (above 1: tinygrad_rnn is faster)")


if __name__ == "__main__":
    main()
