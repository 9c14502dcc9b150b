"""Per-op overhead: forward + backward of a chain of small-tensor ops, next to PyTorch.

    python benchmarks/bench_ops.py [--ops 300] [--size 8] [--repeat 7]

Prints microseconds per op (forward and backward together) for both engines and
the ratio torch_us / ours_us (above 1: we are faster). Min of several runs.
"""
import argparse
import time

import numpy as np

import tinygrad_rnn as tr


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
    ap.add_argument("--repeat", type=int, default=15)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    xs, ws, bs = (rng.standard_normal(s).astype(np.float32) for s in
                  [(args.size, args.size), (args.size, args.size), (args.size,)])
    n_ops = args.ops // 4 * 4 + 1  # + the final sum

    def ours():
        w, b = tr.Tensor(ws, requires_grad=True), tr.Tensor(bs, requires_grad=True)
        chain(tr, tr.Tensor(xs), w, b, args.ops).backward()

    ours()
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

    theirs()
    t_ours = t_torch = float("inf")
    for _ in range(args.repeat):  # alternate, so both see the same machine load
        t_ours = min(t_ours, best_of(ours, 1) / n_ops * 1e6)
        t_torch = min(t_torch, best_of(theirs, 1) / n_ops * 1e6)
    print(f"tinygrad_rnn : {t_ours:7.2f} us/op (forward + backward)")
    print(f"torch {torch.__version__}: {t_torch:7.2f} us/op")
    print(f"ratio torch/ours: {t_torch / t_ours:.2f}  (above 1: tinygrad_rnn is faster)")


if __name__ == "__main__":
    main()
