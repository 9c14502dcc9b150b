"""A layer-normalised LSTM written the way users write it, next to the built-in LSTM.

    python benchmarks/bench_layernorm.py [--sizes 32,128] [--seq-len 100] [--batch 32] [--blocks 5]

The cell normalises the recurrent pre-activations and the cell state with ``** 2`` and
``** 0.5`` on row means (the form issue 17 measured at 2.4x the LSTM's time before row
values became row scalars). A step is forward + backward of out.sum() for a one-layer
RNN (input = hidden), float32, both compiled; the two run in alternating blocks
(benchmarks/timing.py). Prints ms per step (minimum over blocks) and ln_ms / lstm_ms
(issue 17's target: at most 1.4). The first line names the CPU.
"""
import argparse
import os
import sys

import numpy as np

from bench_cells import ours_step
from timing import blocked, machine_line

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from example_cells import UsersLayerNormLSTM  # noqa: E402  (the cell the compiler's tests check)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="32,128")
    ap.add_argument("--seq-len", type=int, default=100)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--blocks", type=int, default=5)
    args = ap.parse_args()
    print(machine_line())
    print(f"T={args.seq_len} B={args.batch} float32, both compiled; {args.blocks} blocks each")
    print(f"{'size':>5} {'lstm ms':>9} {'ln ms':>9} {'ln/lstm':>8}")
    rng = np.random.default_rng(0)
    for size in map(int, args.sizes.split(",")):
        x = rng.standard_normal((args.seq_len, args.batch, size)).astype(np.float32)
        t = blocked({"lstm": ours_step("lstm", x, size, "cpu"), "ln": ours_step(UsersLayerNormLSTM, x, size, "cpu")},
                    blocks=args.blocks)
        print(f"{size:5d} {t['lstm'].min:9.2f} {t['ln'].min:9.2f} {t['ln'].min / t['lstm'].min:8.2f}", flush=True)


if __name__ == "__main__":
    main()
