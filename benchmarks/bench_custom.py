"""A plugin cell, compiled, next to the same cell written in PyTorch (eager and torch.compile).

    python benchmarks/bench_custom.py [--sizes 32,128] [--seq-len 100] [--batch 32] [--repeat 7]
                                      [--no-compile] [--with-gru]

The cell is plugins/mgu (minimal gated unit, 2 gate blocks). A step is forward +
backward of out.sum() for a one-layer RNN (input = hidden), float32. Prints
torch_ms / ours_ms for eager and for torch.compile (first call timed separately),
and with --with-gru the built-in GRU (3 gate blocks) for comparison.
"""
import argparse
import os
import time

import numpy as np

import tinygrad_rnn as tr
from bench_cells import ours_step, paired_best_ms


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
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile (slow to start)")
    ap.add_argument("--with-gru", action="store_true", help="also time the built-in GRU")
    args = ap.parse_args()
    if "mgu" not in {r["name"] for r in tr.list_cells()}:
        tr.load_plugin(os.path.join(os.path.dirname(__file__), "..", "plugins", "mgu", "tinygrad_rnn_mgu.py"))
    import torch
    torch.set_num_threads(2)
    print(f"mgu, T={args.seq_len} B={args.batch} float32; torch {torch.__version__}")
    print(f"{'size':>5} {'ours ms':>9} {'eager ms':>9} {'eager/ours':>10} {'compile ms':>10} "
          f"{'compile/ours':>12} {'1st call s':>10}")
    rng = np.random.default_rng(0)
    for size in map(int, args.sizes.split(",")):
        x = rng.standard_normal((args.seq_len, args.batch, size)).astype(np.float32)
        ours = ours_step("mgu", x, size, "cpu")
        model = torch_mgu(size)
        ours_ms, eager_ms = paired_best_ms(ours, torch_step(model, x), args.repeat)
        comp_ms, first = float("nan"), float("nan")
        if not args.no_compile:
            compiled = torch.compile(model)
            step = torch_step(compiled, x)
            t0 = time.perf_counter()
            step()
            first = time.perf_counter() - t0
            ours_ms2, comp_ms = paired_best_ms(ours, step, args.repeat)
            ours_ms = min(ours_ms, ours_ms2)
        print(f"{size:5d} {ours_ms:9.2f} {eager_ms:9.2f} {eager_ms / ours_ms:10.2f} {comp_ms:10.2f} "
              f"{comp_ms / ours_ms:12.2f} {first:10.1f}", flush=True)
        if args.with_gru:  # timed alternating with the MGU, like every other comparison here
            mgu_ms, gru_ms = paired_best_ms(ours, ours_step("gru", x, size, "cpu"), args.repeat)
            print(f"      mgu {mgu_ms:.2f} ms, built-in gru {gru_ms:.2f} ms: mgu/gru time {mgu_ms / gru_ms:.2f}")


if __name__ == "__main__":
    main()
