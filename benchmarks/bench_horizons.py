"""Long horizons (issue 19): diagnose and train at T = 10^3 to 10^5, time and max RSS, and
what recomputation (remat) costs.

    python benchmarks/bench_horizons.py [--skip-long] [--blocks 5]

1. ``tinygrad-rnn diagnose`` and ``train`` runs, each in a fresh process under
   ``/usr/bin/time -v`` (wall time and maximum resident set size), after one unmeasured
   tiny ``diagnose`` that warms the kernel cache.
2. One training step (forward + backward) of an LSTM (hidden 64, batch 32, T = 1000,
   compiled and step path), with and without ``remat=True``, in one process: each variant
   timed in its own block of steps after warm-up steps, blocks alternating, the median of
   the blocks; the ratio is what recomputation costs.
3. The training loss at T = 2000 with and without ``--remat`` (equal to float rounding).
"""
import argparse
import json
import re
import shutil
import subprocess
import sys
import time

import numpy as np

import tinygrad_rnn as tr

CLI = [shutil.which("tinygrad-rnn") or "tinygrad-rnn"]


def timed(args):
    """(wall seconds, max RSS MB, stdout) of one CLI run in a fresh process."""
    run = subprocess.run(["/usr/bin/time", "-v", *CLI, *args], capture_output=True, text=True)
    if run.returncode:
        raise SystemExit(f"{' '.join(args)} failed:\n{run.stderr[-2000:]}")
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", run.stderr).group(1)
    seconds = sum(float(p) * 60 ** i for i, p in enumerate(reversed(wall.split(":"))))
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", run.stderr).group(1)) / 1024
    return seconds, rss, run.stdout


def processes(skip_long):
    runs = [("diagnose lstm T=100", ["diagnose", "--cell", "lstm", "--seq-len", "100", "--json"]),
            ("diagnose lstm T=1000", ["diagnose", "--cell", "lstm", "--seq-len", "1000", "--hidden", "64",
                                      "--batch", "32", "--json"]),
            ("diagnose lstm T=10000", ["diagnose", "--cell", "lstm", "--seq-len", "10000", "--hidden", "64",
                                       "--batch", "32", "--json"]),
            ("train lstm adding T=2000, 5 steps", ["train", "--cell", "lstm", "--task", "adding", "--seq-len", "2000",
                                                   "--hidden", "64", "--batch", "16", "--steps", "5", "--json"]),
            ("train lstm adding T=2000, 5 steps --remat", ["train", "--cell", "lstm", "--task", "adding", "--seq-len",
                                                           "2000", "--hidden", "64", "--batch", "16", "--steps", "5",
                                                           "--remat", "--json"])]
    if not skip_long:
        runs += [("diagnose gru T=100000", ["diagnose", "--cell", "gru", "--seq-len", "100000", "--hidden", "32",
                                            "--batch", "8", "--json"]),
                 ("train lstm adding T=20000, 3 steps --remat", ["train", "--cell", "lstm", "--task", "adding",
                                                                 "--seq-len", "20000", "--hidden", "64", "--batch",
                                                                 "16", "--steps", "3", "--remat", "--json"]),
                 ("train lstm adding T=20000, 3 steps", ["train", "--cell", "lstm", "--task", "adding",
                                                         "--seq-len", "20000", "--hidden", "64", "--batch", "16",
                                                         "--steps", "3", "--json"])]
    timed(["diagnose", "--seq-len", "3", "--hidden", "2", "--batch", "1"])  # warm the kernel cache
    losses = {}
    for label, args in runs:
        seconds, rss, out = timed(args)
        doc = json.loads(out)
        extra = ""
        if args[0] == "diagnose":
            norms = np.array(doc["cells"][0]["grad_norm_per_step"][0])
            extra = f"zero norms {int((norms == 0).sum())}, smallest {norms.min():.3g}"
        else:
            losses[label] = doc["train_loss"]
            extra = f"train loss {doc['train_loss']!r}"
        print(f"{label:45} {seconds:7.1f} s {rss:8.0f} MB  {extra}", flush=True)
    plain = losses.get("train lstm adding T=2000, 5 steps")
    lean = losses.get("train lstm adding T=2000, 5 steps --remat")
    if plain is not None:
        print(f"T=2000 train loss without / with --remat: {plain!r} / {lean!r} "
              f"(relative difference {abs(plain - lean) / abs(plain):.1e})")


def step_ratio(blocks, steps=3, T=1000):
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(T, 32, 2))
    results = {}
    for fused in (None, False):
        models = {}
        for remat in (None, True):
            tr.manual_seed(0)
            models[remat] = tr.nn.RNN("lstm", 2, 64, fused=fused, remat=remat)

        def step(rnn):
            out, _ = rnn(x)
            (out[-1] * out[-1]).sum().backward()

        for rnn in models.values():
            step(rnn)  # warm-up
        times = {k: [] for k in models}
        for _ in range(blocks):
            for k, rnn in models.items():
                t = time.perf_counter()
                for _ in range(steps):
                    step(rnn)
                times[k].append((time.perf_counter() - t) / steps)
        plain, lean = np.median(times[None]), np.median(times[True])
        name = "compiled" if fused is None else "step path"
        results[name] = lean / plain
        print(f"training step, LSTM 64, batch 32, T={T}, {name}: {plain * 1e3:.0f} ms, with remat=True "
              f"{lean * 1e3:.0f} ms: {lean / plain:.2f}x", flush=True)
    return results


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-long", action="store_true", help="Leave out T = 20000 and 100000.")
    ap.add_argument("--blocks", type=int, default=5)
    args = ap.parse_args()
    print(subprocess.run(["lscpu"], capture_output=True, text=True).stdout.split("Model name:")[1].split("\n")[0]
          .strip())
    step_ratio(args.blocks)
    processes(args.skip_long)
