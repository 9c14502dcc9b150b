"""A plugin cell, compiled, next to the same cell written in PyTorch (eager and torch.compile).

    python benchmarks/bench_custom.py [--sizes 32,128] [--seq-len 100] [--batch 32] [--blocks 5]
                                      [--warmup 2] [--no-compile] [--with-gru]

The cell is plugins/mgu (minimal gated unit, 2 gate blocks). A step is forward +
backward of out.sum() for a one-layer RNN (input = hidden), float32. Every contender
(ours, PyTorch eager, torch.compile, and with --with-gru the built-in GRU, 3 gate blocks)
runs in its own blocks of steps after warm-up steps, blocks alternating
(benchmarks/timing.py). Prints ms per step (minimum over blocks) and torch_ms / ours_ms
from the minimums, the medians' ratio in brackets; torch.compile's first call is timed
on its own.
"""
import argparse
import os
import time

import numpy as np

import tinygrad_rnn as tr
from bench_cells import ours_step
from timing import blocked, machine_line, ratio_text


def torch_mgu(size):
    import torch

    class MGU(torch.nn.Module):
        def __init__(self, n, h):
            super().__init__()
            self.w_f = torch.nn.Parameter(torch.empty(n + h, h))
            self.b_f = torch.nn.Parameter(torch.zeros(h))
            self.w_h = torch.nn.Parameter(torch.empty(n + h, h))
            self.b_h = torch.nn.Parameter(torch.zeros(h))
            torch.nn.init.xavier_uniform_(self.w_f)
            torch.nn.init.xavier_uniform_(self.w_h)

        def forward(self, x):
            h = x.new_zeros(x.shape[1], self.b_f.shape[0])
            outs = []
            for x_t in x:
                f = torch.sigmoid(torch.cat([x_t, h], -1) @ self.w_f + self.b_f)
                h_tilde = torch.tanh(torch.cat([x_t, f * h], -1) @ self.w_h + self.b_h)
                h = (1 - f) * h + f * h_tilde
                outs.append(h)
            return torch.stack(outs)
    return MGU(size, size)


def torch_step(model, x):
    import torch
    xt = torch.tensor(x)

    def step():
        model.zero_grad()
        model(xt).sum().backward()
    return step


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="32,128")
    ap.add_argument("--seq-len", type=int, default=100)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--blocks", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps at the start of each block")
    ap.add_argument("--block-seconds", type=float, default=0.3)
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile (slow to start)")
    ap.add_argument("--with-gru", action="store_true", help="also time the built-in GRU")
    args = ap.parse_args()
    if "mgu" not in {r["name"] for r in tr.list_cells()}:
        tr.load_plugin(os.path.join(os.path.dirname(__file__), "..", "plugins", "mgu", "tinygrad_rnn_mgu.py"))
    import torch
    torch.set_num_threads(2)
    print(machine_line())
    print(f"mgu, T={args.seq_len} B={args.batch} float32; torch {torch.__version__} (2 threads); "
          f"{args.blocks} blocks each, {args.warmup} warm-up steps per block")
    print(f"{'size':>5} {'ours ms':>9} {'eager ms':>9} {'eager/ours':>14} {'compile ms':>10} "
          f"{'compile/ours':>14} {'1st call s':>10}")
    rng = np.random.default_rng(0)
    for size in map(int, args.sizes.split(",")):
        x = rng.standard_normal((args.seq_len, args.batch, size)).astype(np.float32)
        model = torch_mgu(size)
        fns = {"ours": ours_step("mgu", x, size, "cpu"), "eager": torch_step(model, x)}
        first = float("nan")
        if not args.no_compile:
            fns["compile"] = torch_step(torch.compile(model), x)
            t0 = time.perf_counter()
            fns["compile"]()
            first = time.perf_counter() - t0
        if args.with_gru:
            fns["gru"] = ours_step("gru", x, size, "cpu")
        t = blocked(fns, blocks=args.blocks, warmup=args.warmup, block_seconds=args.block_seconds)
        comp = (f"{t['compile'].min:10.2f} {ratio_text(t['compile'], t['ours']):>14}" if "compile" in t
                else f"{'-':>10} {'-':>14}")
        print(f"{size:5d} {t['ours'].min:9.2f} {t['eager'].min:9.2f} {ratio_text(t['eager'], t['ours']):>14} "
              f"{comp} {first:10.1f}", flush=True)
        if "gru" in t:
            print(f"      mgu {t['ours'].min:.2f} ms, built-in gru {t['gru'].min:.2f} ms: "
                  f"mgu/gru time {t['ours'].min / t['gru'].min:.2f} ({t['ours'].median / t['gru'].median:.2f})")


if __name__ == "__main__":
    main()
