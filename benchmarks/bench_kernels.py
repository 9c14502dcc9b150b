"""The CPU backend's kernels against the NumPy they replace, per call.

    python benchmarks/bench_kernels.py [--sizes 32x32,32x512,32x2048,64x2048] [--repeat 5]

Forward: tanh and sigmoid (the rational float32 approximation; NumPy for float64)
against NumPy. Backward: each fused VJP in ``cpu.FUSED_VJPS`` against the op
table's own formula evaluated by NumPy, which is what runs without it. Prints
microseconds per call, min of ``--repeat`` runs; below 1 in the last column means
the kernel is faster. The machine is shared and noisy: compare ratios of one run.
"""
import argparse
import timeit

import numpy as np

from tinygrad_rnn import ops
from tinygrad_rnn.backend import cpu


def us(fn, repeat, number=2000):
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="32x32,32x512,32x2048,64x2048")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    print(f"{'dtype':8s} {'shape':>11s} {'what':22s} {'kernel us':>10s} {'numpy us':>10s} {'ratio':>6s}")
    for dtype in (np.float32, np.float64):
        for size in args.sizes.split(","):
            shape = tuple(int(n) for n in size.split("x"))
            x = (rng.standard_normal(shape) * 2).astype(dtype)
            g = rng.standard_normal(shape).astype(dtype)
            rows = [("tanh forward", lambda: cpu.tanh(x), lambda: np.tanh(x)),
                    ("sigmoid forward", lambda: cpu.sigmoid(x), lambda: 1 / (1 + np.exp(-x)))]
            for name, attrs in (("tanh", {}), ("sigmoid", {}), ("leaky_relu", {"slope": 0.01})):
                y = ops.OPS[name].fwd(cpu, x, **attrs)
                fused, table = cpu.FUSED_VJPS[name], ops.OPS[name].vjp
                rows.append((f"{name} VJP", lambda f=fused, y=y, a=attrs: f(cpu, g, y, x, **a),
                             lambda t=table, y=y, a=attrs: t(cpu, g, y, x, **a)))
            for what, kernel, numpy in rows:
                k_us, n_us = us(kernel, args.repeat), us(numpy, args.repeat)
                print(f"{np.dtype(dtype).name:8s} {size:>11s} {what:22s} {k_us:10.1f} {n_us:10.1f} {k_us / n_us:6.2f}")


if __name__ == "__main__":
    main()
