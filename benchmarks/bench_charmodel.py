"""Character LSTM on a text file: one-hot input against a learned embedding, ours next to PyTorch.

    python benchmarks/bench_charmodel.py [--data /usr/share/common-licenses/GPL-3] [--steps 750]
        [--seed 0] [--inputs one-hot,embed] [--no-torch]

Settings from issue 11: LSTM 128, T=50, batch 32, Adam lr 3e-3, clip-norm 5, seed 0, 750 steps;
the score is bits per character on the held-out tail (the text task's last 10%, read in
non-overlapping windows). Both sides draw the same batches (the task's generator) and are
scored on the same eval set. "embed" puts Embedding(V, 128) in front of the LSTM
(``train --embed 128``); "one-hot" feeds one-hot vectors (the default).
"""
import argparse
import math
import time

import numpy as np

import tinygrad_rnn as tr
from tinygrad_rnn.training import train
from timing import machine_line

SETTINGS = dict(task="text", seq_len=50, hidden=128, batch=32, optimizer="adam", lr=3e-3, clip_norm=5.0, seed=0)


def ours(data, steps, embed):
    s = train(cell="lstm", data=data, steps=steps, embed=embed, **SETTINGS)
    return s["eval_bits_per_symbol"], s["seconds"]


def theirs(data, steps, embed):
    import torch
    torch.set_num_threads(2)
    torch.manual_seed(SETTINGS["seed"])
    task = tr.get_task("text")(seq_len=SETTINGS["seq_len"], data=data)
    task.token_input = bool(embed)
    V, H = task.input_size, SETTINGS["hidden"]
    emb = torch.nn.Embedding(V, embed) if embed else None
    lstm = torch.nn.LSTM(embed or V, H)
    head = torch.nn.Linear(H, V)
    params = (list(emb.parameters()) if emb else []) + list(lstm.parameters()) + list(head.parameters())
    opt = torch.optim.Adam(params, lr=SETTINGS["lr"])

    def loss_of(x, y):
        x = emb(torch.tensor(x)) if emb else torch.tensor(x)
        out, _ = lstm(x)
        logits = head(out)
        return torch.nn.functional.cross_entropy(logits.reshape(-1, V), torch.tensor(y).reshape(-1))

    rng = np.random.default_rng(SETTINGS["seed"])
    t0 = time.perf_counter()
    for _ in range(steps):
        x, y = task.batch(rng, SETTINGS["batch"])
        opt.zero_grad()
        loss_of(x, y).backward()
        torch.nn.utils.clip_grad_norm_(params, SETTINGS["clip_norm"])
        opt.step()
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        return float(loss_of(*task.eval_set())) / math.log(2), seconds


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="/usr/share/common-licenses/GPL-3")
    ap.add_argument("--steps", type=int, default=750)
    ap.add_argument("--embed", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--inputs", default="one-hot,embed")
    ap.add_argument("--no-torch", action="store_true")
    args = ap.parse_args()
    print(machine_line())  # each library's run is timed on its own, one after the other
    SETTINGS["seed"] = args.seed
    rows = []
    for label, embed in (("one-hot", None), (f"embed {args.embed}", args.embed)):
        if label.split()[0] not in args.inputs.split(","):
            continue
        bits, sec = ours(args.data, args.steps, embed)
        rows.append(("tinygrad_rnn", label, bits, sec))
        print(f"tinygrad_rnn  {label:10} {bits:.3f} bits/char  ({sec:.0f} s)", flush=True)
        if not args.no_torch:
            bits, sec = theirs(args.data, args.steps, embed)
            rows.append(("pytorch", label, bits, sec))
            print(f"pytorch       {label:10} {bits:.3f} bits/char  ({sec:.0f} s)", flush=True)
    print(f"\n| input | {' | '.join(sorted({r[0] for r in rows}, reverse=True))} |")
    print("|---|" + "---|" * len({r[0] for r in rows}))
    for label in dict.fromkeys(r[1] for r in rows):
        cells = [f"{r[2]:.2f}" for r in rows if r[1] == label]
        print(f"| {label} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
