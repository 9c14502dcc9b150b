"""Pixel-by-pixel digits: scikit-learn's 8x8 handwritten digits as T=64 sequences of one
pixel each (in reading order, and under one fixed random permutation of the pixels),
classified by rnn, lstm and gru trained here (``--task classify``) and in PyTorch with the
same settings, side by side.

    python benchmarks/bench_digits.py [--quick] [--cells rnn,lstm,gru] [--orders plain,permuted]
                                      [--steps 1500] [--no-torch]

``sklearn.datasets.load_digits`` ships with scikit-learn (1,797 images, no download).
Pixels are scaled to [0, 1]; the held-out split is the task's own (10 %, stratified by
class, fixed), and both sides are scored on it. Settings: hidden 64, batch 32, Adam
lr 3e-3, clip-norm 1.0, seed 0. Both sides start from the same weights (ours, copied into
the PyTorch module by name) and draw the same batches (the task's generator with the run's
seed), so the two columns differ only in the libraries' arithmetic. Seconds are the
training loop's (batches drawn, forward, backward, clip, update), compiles and imports
excluded (a 5-step warm-up run of each cell first). Both sides run on one thread
(``OMP_NUM_THREADS`` and the BLAS thread counts default to 1 here; torch takes the same
count): on the shared 2-core Xeon, two threads per side made a GRU step (hidden 64, T=64,
batch 32, forward + backward) take 1.38 s in PyTorch against 9.5 ms on one thread, and
ours 53 ms against 5.1 ms, from the threads spinning against the other load. ``--quick``: 300 steps, for a loaded
machine; the table in the README is the full run. scikit-learn and torch are benchmark
dependencies only.
"""
import argparse
import os
import tempfile
import time

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_name, "1")  # before NumPy is imported: its BLAS reads them once

import numpy as np  # noqa: E402

import tinygrad_rnn as tr  # noqa: E402
from tinygrad_rnn.training import TrainConfig, build, fit  # noqa: E402
from timing import cpu_name  # noqa: E402  (benchmarks/timing.py, beside this script)

SETTINGS = dict(task="classify", hidden=64, batch=32, optimizer="adam", lr=3e-3, clip_norm=1.0, seed=0)
PERMUTATION_SEED = 0


def digits_file(order, directory):
    """The digits as an .npz for ``--task classify``: x (1797, 64, 1) in [0, 1], y (1797,)."""
    from sklearn.datasets import load_digits
    images, labels = load_digits(return_X_y=True)
    x = (images / 16.0).astype(np.float32)
    if order == "permuted":
        x = x[:, np.random.default_rng(PERMUTATION_SEED).permutation(64)]
    path = os.path.join(directory, f"digits_{order}.npz")
    np.savez(path, x=x[:, :, None], y=labels.astype(np.int64))
    return path


def ours(cell, path, steps):
    result = fit(TrainConfig(cell=cell, data=path, steps=steps, **SETTINGS))
    s = result.summary
    return {"accuracy": s["eval_accuracy"], "train_accuracy": s["train_accuracy"], "seconds": s["seconds"],
            "steps_per_second": s["steps_per_second"], "baseline": s["baseline_accuracy"]}


def theirs(cell, path, steps):
    import torch
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    config = TrainConfig(cell=cell, data=path, steps=steps, **SETTINGS)
    task, model = build(config.settings())  # our model at initialisation: the same starting weights
    weights = {k: torch.tensor(v) for k, v in model.state_dict().items()}
    rnn = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[cell](task.input_size, SETTINGS["hidden"])
    head = torch.nn.Linear(SETTINGS["hidden"], task.output_size)
    rnn.load_state_dict({k[len("rnn."):]: v for k, v in weights.items() if k.startswith("rnn.")})
    head.load_state_dict({k[len("head."):]: v for k, v in weights.items() if k.startswith("head.")})
    params = list(rnn.parameters()) + list(head.parameters())
    opt = torch.optim.Adam(params, lr=SETTINGS["lr"])
    rng = np.random.default_rng(SETTINGS["seed"])  # the batches our run draws
    t0 = time.perf_counter()
    for _ in range(steps):
        x, target = task.batch(rng, SETTINGS["batch"])
        opt.zero_grad()
        out, _ = rnn(torch.from_numpy(x))
        loss = torch.nn.functional.cross_entropy(head(out[-1]), torch.from_numpy(target[:, 0]))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, SETTINGS["clip_norm"])
        opt.step()
    seconds = time.perf_counter() - t0

    def accuracy(index):
        x, target = task._gather(index)
        with torch.no_grad():
            out, _ = rnn(torch.from_numpy(x))
            return float((head(out[-1]).argmax(-1).numpy() == target[:, 0]).mean())
    return {"accuracy": accuracy(task.eval_index), "train_accuracy": accuracy(task.train_sample),
            "seconds": seconds, "steps_per_second": steps / seconds}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", default="rnn,lstm,gru")
    ap.add_argument("--orders", default="plain,permuted")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--quick", action="store_true", help="300 steps (a loaded machine)")
    ap.add_argument("--no-torch", action="store_true")
    args = ap.parse_args()
    steps = 300 if args.quick else args.steps
    cells, orders = args.cells.split(","), args.orders.split(",")
    directory = tempfile.mkdtemp()
    paths = {order: digits_file(order, directory) for order in orders}
    for cell in cells:  # compiles (or cache loads) out of the timed runs
        ours(cell, paths[orders[0]], 5)
    rows = []
    for order in orders:
        for cell in cells:
            mine = ours(cell, paths[order], steps)
            other = None if args.no_torch else theirs(cell, paths[order], steps)
            rows.append((order, cell, mine, other))
            print(f"  {order:8} {cell:4} ours {mine['accuracy']:.1%} in {mine['seconds']:.1f} s"
                  + ("" if other is None else f"; torch {other['accuracy']:.1%} in {other['seconds']:.1f} s"),
                  flush=True)
    print(f"\n{cpu_name()}, {os.cpu_count()} cores, {os.environ['OMP_NUM_THREADS']} thread(s), numpy {np.__version__}, tinygrad_rnn {tr.__version__}; "
          f"{steps} steps, hidden {SETTINGS['hidden']}, batch {SETTINGS['batch']}, Adam lr {SETTINGS['lr']}, "
          f"clip-norm {SETTINGS['clip_norm']}; majority-class baseline {rows[0][2]['baseline']:.1%}")
    print("\n| pixels | cell | ours: eval acc (train) | ours s | ours steps/s | torch: eval acc (train) "
          "| torch s | torch steps/s |")
    print("|---|---|---|---|---|---|---|---|")
    for order, cell, mine, other in rows:
        def fmt(r):
            if r is None:
                return "-", "-", "-"
            return (f"{r['accuracy']:.1%} ({r['train_accuracy']:.1%})", f"{r['seconds']:.1f}",
                    f"{r['steps_per_second']:.1f}")
        a, b = fmt(mine), fmt(other)
        print(f"| {order} | {cell} | {a[0]} | {a[1]} | {a[2]} | {b[0]} | {b[1]} | {b[2]} |")


if __name__ == "__main__":
    main()
