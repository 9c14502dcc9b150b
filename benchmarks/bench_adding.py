"""The adding problem (T=100) solved from the library, next to PyTorch with the same settings.

    python benchmarks/bench_adding.py [--cells lstm,gru,rnn] [--max-steps 4000] [--every 500] [--no-torch]

Settings from the issue: hidden 128, batch 64, Adam lr 3e-3, clip-norm 1.0, seed 0.
Both sides draw the same batches (the task's generator) and are evaluated on the same
fixed eval set every ``--every`` steps; "solved" means eval MSE < 0.01. Our run goes
in chunks through save/resume, which is bit-exact, so the chunks change nothing.
"""
import argparse
import os
import tempfile
import time

import numpy as np

import tinygrad_rnn as tr
from tinygrad_rnn.training import train
from timing import machine_line

SETTINGS = dict(task="adding", seq_len=100, hidden=128, batch=64, optimizer="adam", lr=3e-3, clip_norm=1.0, seed=0)


def ours(cell, max_steps, every):
    ck = os.path.join(tempfile.mkdtemp(), "ck.npz")
    seconds, history = 0.0, []
    for stop in range(every, max_steps + 1, every):
        s = train(cell=cell, steps=stop, save=ck, resume=ck if stop > every else None, log_every=every, **SETTINGS)
        seconds += s["seconds"]
        history.append((stop, s["eval_loss"], seconds))
        print(f"  ours  {cell:4} step {stop:5d} eval {s['eval_loss']:.4f} ({seconds:.0f} s)", flush=True)
        if s["eval_loss"] < 0.01:
            break
    return history


def theirs(cell, max_steps, every):
    import torch
    torch.set_num_threads(2)
    torch.manual_seed(0)
    task = tr.get_task("adding")(seq_len=100)
    rnn = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[cell](2, 128)
    head = torch.nn.Linear(128, 1)
    params = list(rnn.parameters()) + list(head.parameters())
    opt = torch.optim.Adam(params, lr=3e-3)
    rng = np.random.default_rng(0)
    ex, ey = task.eval_set()
    ex, ey = torch.tensor(ex), torch.tensor(ey)
    seconds, history = 0.0, []
    for step in range(1, max_steps + 1):
        x, y = task.batch(rng, 64)
        t0 = time.perf_counter()
        opt.zero_grad()
        out, _ = rnn(torch.tensor(x))
        loss = torch.nn.functional.mse_loss(head(out[-1]), torch.tensor(y))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        seconds += time.perf_counter() - t0
        if step % every == 0:
            with torch.no_grad():
                out, _ = rnn(ex)
                ev = float(torch.nn.functional.mse_loss(head(out[-1]), ey))
            history.append((step, ev, seconds))
            print(f"  torch {cell:4} step {step:5d} eval {ev:.4f} ({seconds:.0f} s)", flush=True)
            if ev < 0.01:
                break
    return history


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", default="lstm,gru,rnn")
    ap.add_argument("--max-steps", type=int, default=4000)
    ap.add_argument("--every", type=int, default=500)
    ap.add_argument("--no-torch", action="store_true")
    args = ap.parse_args()
    print(machine_line())  # each library's run is timed on its own, one after the other
    rows = []
    for cell in args.cells.split(","):
        mine = ours(cell, args.max_steps, args.every)
        other = None if args.no_torch else theirs(cell, args.max_steps, args.every)
        rows.append((cell, mine, other))
    print("\n| cell | ours: solved at step (eval MSE) | ours s | ours steps/s | torch: solved at step (eval MSE) | torch s | torch steps/s |")
    print("|---|---|---|---|---|---|---|")
    for cell, mine, other in rows:
        def fmt(h):
            step, ev, sec = h[-1]
            return f"{step if ev < 0.01 else 'not by ' + str(step)} ({ev:.4f})", f"{sec:.0f}", f"{step / sec:.1f}"
        a = fmt(mine)
        b = fmt(other) if other else ("-", "-", "-")
        print(f"| {cell} | {a[0]} | {a[1]} | {a[2]} | {b[0]} | {b[1]} | {b[2]} |")


if __name__ == "__main__":
    main()
