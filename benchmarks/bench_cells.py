"""One training step of each built-in cell next to PyTorch, as a ratio.

    python benchmarks/bench_cells.py [--sizes 32,128,512] [--cells rnn,lstm,gru]
                                     [--seq-len 100] [--batch 32] [--repeat 5] [--device cpu|cuda]

A step is forward + backward of out.sum() for a one-layer RNN (input = hidden),
float32, x requiring no gradient, weights do. Min of ``--repeat`` runs after a
warm-up. Prints torch_ms / ours_ms: above 1 means tinygrad_rnn is faster.
"""
import argparse
import time

import numpy as np

import tinygrad_rnn as tr


def best_ms(fn, repeat):
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times) * 1e3


def paired_best_ms(a, b, repeat):
    """Min times of ``a`` and ``b`` run alternately, so both see the same machine load."""
    a(), b()
    ta, tb = [], []
    for _ in range(repeat):
        for fn, acc in ((a, ta), (b, tb)):
            t0 = time.perf_counter()
            fn()
            acc.append(time.perf_counter() - t0)
    return min(ta) * 1e3, min(tb) * 1e3


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
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--unfused", action="store_true", help="also time the reference step path")
    ap.add_argument("--plugin", action="append", default=[], help="load a cell plugin (module or .py file)")
    args = ap.parse_args()
    for spec in args.plugin:
        tr.load_plugin(spec)
    try:
        import torch
        torch.set_num_threads(2) if args.device == "cpu" else None
    except ImportError:
        torch = None
    print(f"T={args.seq_len} B={args.batch} float32, device {args.device}; "
          f"torch {torch.__version__ if torch else 'not installed'}")
    print(f"{'cell':5} {'size':>5} {'ours ms':>9} {'torch ms':>9} {'torch/ours':>10}")
    rng = np.random.default_rng(0)
    for cell in args.cells.split(","):
        for size in map(int, args.sizes.split(",")):
            x = rng.standard_normal((args.seq_len, args.batch, size)).astype(np.float32)
            if torch and cell in ("rnn", "lstm", "gru"):
                ours, theirs = paired_best_ms(ours_step(cell, x, size, args.device),
                                              torch_step(cell, x, size, args.device), args.repeat)
            else:
                ours, theirs = best_ms(ours_step(cell, x, size, args.device), args.repeat), float("nan")
            print(f"{cell:5} {size:5d} {ours:9.2f} {theirs:9.2f} {theirs / ours:10.2f}", flush=True)
            if args.unfused and cell in ("rnn", "lstm", "gru"):  # plugin cells are unfused already
                slow = best_ms(ours_step(cell, x, size, args.device, fused=False), max(1, args.repeat // 2))
                print(f"{cell:5} {size:5d} unfused {slow:9.2f} ms: fused is {slow / ours:.1f}x faster")


if __name__ == "__main__":
    main()
