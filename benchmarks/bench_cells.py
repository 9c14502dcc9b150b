"""One training step of each built-in cell next to PyTorch, as a ratio.

    python benchmarks/bench_cells.py [--sizes 32,128,512] [--cells lstm,gru,rnn]
                                     [--seq-len 100] [--batch 32] [--blocks 5] [--warmup 2]
                                     [--block-seconds 0.3] [--threads 2] [--device cpu|cuda]

A step is forward + backward of out.sum() for a one-layer RNN (input = hidden),
float32, x requiring no gradient, weights do. Each library runs in its own blocks of
steps (``--warmup`` untimed steps, then enough timed ones to fill ``--block-seconds``),
blocks alternating (benchmarks/timing.py says why). Prints ms per step (the minimum over
blocks) and torch_ms / ours_ms from the minimums, with the medians' ratio in brackets:
above 1 means tinygrad_rnn is faster. The first line names the CPU: ratios differ by CPU.
"""
import argparse

import numpy as np

import tinygrad_rnn as tr
from timing import blocked, machine_line, ratio_text


def ours_step(cell, x, size, device, fused=None):
    rnn = tr.nn.RNN(cell, size, size, fused=fused)
    if device != "cpu":
        rnn.to(device)
    xt = tr.Tensor(x, device=device)

    def step():
        rnn.zero_grad()
        out, _ = rnn(xt)
        out.sum().backward()
        if device != "cpu":
            rnn.parameters()[0].grad.numpy()  # wait for the GPU
    return step


def torch_step(cell, x, size, device):
    import torch
    cls = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell]
    m = cls(size, size).to(device)
    xt = torch.tensor(x, device=device)

    def step():
        m.zero_grad()
        out, _ = m(xt)
        out.sum().backward()
        if device != "cpu":
            torch.cuda.synchronize()
    return step


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="32,128,512")
    ap.add_argument("--cells", default="lstm,gru,rnn")
    ap.add_argument("--seq-len", type=int, default=100)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--blocks", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps at the start of each block")
    ap.add_argument("--block-seconds", type=float, default=0.3)
    ap.add_argument("--threads", type=int, default=2, help="PyTorch's threads (torch.set_num_threads)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--unfused", action="store_true", help="also time the reference step path")
    ap.add_argument("--plugin", action="append", default=[], help="load a cell plugin (module or .py file)")
    args = ap.parse_args()
    for spec in args.plugin:
        tr.load_plugin(spec)
    try:
        import torch
        torch.set_num_threads(args.threads) if args.device == "cpu" else None
    except ImportError:
        torch = None
    print(machine_line())
    print(f"T={args.seq_len} B={args.batch} float32, device {args.device}; "
          f"torch {torch.__version__ + f' ({args.threads} threads)' if torch else 'not installed'}; "
          f"{args.blocks} blocks each, {args.warmup} warm-up steps per block")
    print(f"{'cell':5} {'size':>5} {'ours ms':>9} {'torch ms':>9} {'torch/ours (medians)':>21}")
    rng = np.random.default_rng(0)
    for cell in args.cells.split(","):
        for size in map(int, args.sizes.split(",")):
            x = rng.standard_normal((args.seq_len, args.batch, size)).astype(np.float32)
            fns = {"ours": ours_step(cell, x, size, args.device)}
            if torch and cell in ("rnn", "lstm", "gru"):
                fns["torch"] = torch_step(cell, x, size, args.device)
            if args.unfused and cell in ("rnn", "lstm", "gru"):  # plugin cells are unfused already
                fns["unfused"] = ours_step(cell, x, size, args.device, fused=False)
            t = blocked(fns, blocks=args.blocks, warmup=args.warmup, block_seconds=args.block_seconds)
            if "torch" in t:
                print(f"{cell:5} {size:5d} {t['ours'].min:9.2f} {t['torch'].min:9.2f} "
                      f"{ratio_text(t['torch'], t['ours']):>21}", flush=True)
            else:
                print(f"{cell:5} {size:5d} {t['ours'].min:9.2f} {'-':>9} {'-':>21}", flush=True)
            if "unfused" in t:
                print(f"{cell:5} {size:5d} unfused {t['unfused'].min:9.2f} ms: fused is "
                      f"{t['unfused'].min / t['ours'].min:.1f}x faster")


if __name__ == "__main__":
    main()
