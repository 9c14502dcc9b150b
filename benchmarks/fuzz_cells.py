"""Random cells against the cell compiler: compiled vs the step path, counted by outcome.

    python benchmarks/fuzz_cells.py [--count 1000] [--seed 0] [--cuda 5] [--show 3]
                                    [--flat] [--save-bugs DIR] [--minimise] [--timeout 180]

Each cell comes from tests/cellgen.py (seeds seed .. seed+count-1: a seed reproduces its
cell, ``python -c "import cellgen; print(cellgen.generate(SEED))"`` in tests/). Each is run
in float64, 2 layers, padded rows, compiled (fused=True), on the step path (fused=False) and
with the default fused=None; outputs, final states, every gradient and the per-step
gradient norms must agree to 1e-10 relative. Prints the counts by outcome (equal, refused
by reason, bug by kind, invalid: the step path itself failed, a grammar problem) and, for
each kind of bug, the seeds and the source of the first ``--show`` cells. ``--cuda N``
also runs the first N compiled cells on CUDA against the CPU, in a subprocess under Numba's
simulator (unless a GPU is there): slow, a few seconds a cell. Exit status 1 if any bug.

Ctrl-C stops the run and prints the counts so far. Each cell runs in a forked child (``--timeout`` seconds), so a crash of Numba or a hang
counts as a bug of that cell instead of ending the run.
"""
import argparse
import collections
import multiprocessing as mp
import os
import signal
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
import cellgen  # noqa: E402


def _child(seed, conn, minimise, chain):
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    try:
        source = cellgen.generate(seed, chain)
        outcome = cellgen.check(cellgen.load(source))
        if outcome.kind == "bug" and minimise:
            source = cellgen.minimise(source, lambda o: (o.kind, o.reason) == (outcome.kind, outcome.reason))
        conn.send((outcome.kind, outcome.reason, outcome.detail, source))
    except BaseException as e:  # anything: the parent must hear of it
        conn.send(("bug", f"the check itself raised {type(e).__name__}", str(e)[:300], cellgen.generate(seed, chain)))


def run_one(seed, timeout, minimise=False, chain=True):
    """(kind, reason, detail, source) for one cell, from a forked child; with ``minimise``
    a failing cell's source is the shortest form found that fails the same way."""
    parent, child = mp.Pipe(duplex=False)
    proc = mp.get_context("fork").Process(target=_child, args=(seed, child, minimise, chain))
    proc.start()
    child.close()
    try:
        ready = parent.poll(timeout)
    except KeyboardInterrupt:
        proc.kill()
        proc.join()
        raise
    if ready:
        try:
            result = parent.recv()
        except EOFError:
            result = None
    else:
        result = ("bug", f"timeout after {timeout} s", "", cellgen.generate(seed, chain))
    proc.join(5)
    if proc.is_alive():
        proc.kill()
        proc.join()
    if result is None:
        result = ("bug", f"the process died (exit {proc.exitcode})", "", cellgen.generate(seed, chain))
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0, help="first seed")
    ap.add_argument("--cuda", type=int, default=0, help="also check this many compiled cells on CUDA")
    ap.add_argument("--show", type=int, default=1, help="print the source of this many cells per bug kind")
    ap.add_argument("--save-bugs", metavar="DIR", help="write each failing cell's source to DIR/seed_N.py")
    ap.add_argument("--flat", action="store_true",
                    help="no product of a recurrent product's result (to find other bugs while that one is open)")
    ap.add_argument("--minimise", action="store_true",
                    help="shorten each failing cell to the lines it needs to fail the same way")
    ap.add_argument("--timeout", type=float, default=180.0, help="seconds per cell")
    args = ap.parse_args()
    import tinygrad_rnn  # noqa: F401  (loaded once before forking: each child starts warm)
    from tinygrad_rnn import compiler  # noqa: F401

    counts = collections.Counter()
    by_reason = collections.defaultdict(list)
    equal_seeds = []
    t0 = time.perf_counter()
    seeds = range(args.seed, args.seed + args.count)
    done = 0
    try:
        for seed in seeds:
            kind, reason, detail, source = run_one(seed, args.timeout, args.minimise, not args.flat)
            done += 1
            counts[kind] += 1
            if kind == "equal":
                equal_seeds.append(seed)
            else:
                by_reason[(kind, reason)].append((seed, detail, source))
            if kind == "bug" and args.save_bugs:
                os.makedirs(args.save_bugs, exist_ok=True)
                with open(os.path.join(args.save_bugs, f"seed_{seed}.py"), "w") as f:
                    f.write(source + f"\n# {reason}\n# {detail}\n")
            if done % 25 == 0 or done == args.count:
                print(f"[{done}/{args.count}] {time.perf_counter() - t0:.0f} s: "
                      + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())), file=sys.stderr, flush=True)
    except KeyboardInterrupt:  # Ctrl-C: the counts so far
        print(f"interrupted after {done} cells", file=sys.stderr)
    args.count = done

    print(f"cells generated: {args.count} (seeds {args.seed}..{args.seed + args.count - 1}"
          f"{', --flat' if args.flat else ''}), "
          f"{time.perf_counter() - t0:.0f} s")
    for kind in ("equal", "refused", "bug", "invalid"):
        print(f"  {kind:8} {counts[kind]}")
        for (k, reason), items in sorted(by_reason.items(), key=lambda kv: -len(kv[1])):
            if k == kind:
                seeds_text = ", ".join(str(s) for s, _, _ in items[:12]) + (" ..." if len(items) > 12 else "")
                print(f"    {len(items):5}  {reason}   [seeds {seeds_text}]")
    for (kind, reason), items in by_reason.items():
        if kind != "bug":
            continue
        for seed, detail, source in items[:args.show]:
            print(f"\n--- bug: {reason} (seed {seed})\n{detail}\n")
            print(source)
    if args.cuda:
        sample = [(s, cellgen.generate(s, not args.flat)) for s in equal_seeds[:args.cuda]]
        t1 = time.perf_counter()
        results = cellgen.check_cuda_in_subprocess(sample, timeout=max(600, 120 * len(sample)))
        tally = collections.Counter(results.values())
        print(f"\nCUDA against the CPU (the simulator unless a GPU is there), {len(sample)} compiled cells, "
              f"{time.perf_counter() - t1:.0f} s:")
        for result, n in tally.most_common():
            print(f"  {n:5}  {result}")
        for seed, result in results.items():
            if result != "equal":
                print(f"    seed {seed}: {result}")
                counts["bug"] += 1
    return 1 if counts["bug"] else 0


if __name__ == "__main__":
    sys.exit(main())
