"""Which kernel design the cell compiler should generate: hand-written prototypes, measured.

    python benchmarks/bench_kernel_design.py [--cells lstm,gru] [--sizes 32,128,512]
        [--variants a,b,c,d] [--blocks 5] [--steps N] [--check] [--check64]
        [--sweep] [--after]

One training step (forward + backward of out.sum()) of a one-layer LSTM / GRU,
T=100, B=32, input = hidden, float32. Every variant hoists the input projection
into one BLAS GEMM over all T*B rows and does the weight gradients as GEMMs at
the end; the variants differ in how the time loop and its recurrent product run:

  a  one njit loop over t: BLAS product per step (np.dot inside njit, BLAS's own
     threads) then the pointwise stage on the whole batch (today's design).
  b  batch split into blocks over the cores with prange; each block runs all T
     steps of its rows: np.dot on the block's rows, then the gates.
  c  as b, with the product done in the kernel (register-blocked dot-product
     form, 8 rows x 2 columns, weights read as rows of W.T).
  d  hidden split: one prange per step over slices of hidden units; each core
     computes the gate columns of its slice for every row with the in-kernel
     product, so its slice of W stays in its own L2.

PyTorch (torch.nn.LSTM / GRU, 2 threads) is timed the same way, each library in
its own block of steps after warm-ups, blocks alternating, min over blocks.
Prints ms per step and torch_ms / ours_ms (above 1: ours is faster).
--check compares every variant's output and gradients with a NumPy float64
reference (itself checked against PyTorch float64); --check64 also runs the
kernels in float64 against it (1e-9).
"""
import argparse
import json
import os
import subprocess
import sys
import time

import tinygrad_rnn  # noqa: F401  (sets OPENBLAS_CORETYPE on AMD before NumPy loads)
import numpy as np
import numba

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from design_kernels import (_gru_bwd_a, _gru_bwd_bc, _gru_bwd_d, _gru_fwd_a, _gru_fwd_bc,  # noqa: E402
                            _gru_fwd_d, _lstm_bwd_a, _lstm_bwd_bc, _lstm_bwd_d, _lstm_fwd_a,
                            _lstm_fwd_bc, _lstm_fwd_d)

# ---- drivers -------------------------------------------------------------------
def kernel_blas():
    """The OpenBLAS that np.dot inside njit calls (scipy's, not NumPy's), as a threadpoolctl controller.

    np.dot in njit goes through scipy.linalg.cython_blas. Called from prange
    threads of the OpenMP layer, a pthreads OpenBLAS with 2 threads prints
    "Detect OpenMP Loop and this application may hang" on every call, so the
    batch-split driver drops scipy's OpenBLAS to 1 thread for the kernel and
    restores it after (NumPy's OpenBLAS, used by the hoisted GEMMs, is a
    separate library and keeps its threads).
    """
    from threadpoolctl import ThreadpoolController
    import scipy.linalg.cython_blas  # noqa: F401  (loads it)
    libs = [c for c in ThreadpoolController().lib_controllers
            if c.internal_api == "openblas" and "scipy.libs" in c.filepath]
    return libs[0] if libs else None


KERNEL_BLAS = None


class one_blas_thread:
    def __enter__(self):
        self.n = KERNEL_BLAS.num_threads if KERNEL_BLAS else None
        if self.n and self.n != 1:
            KERNEL_BLAS.set_num_threads(1)

    def __exit__(self, *exc):
        if self.n and self.n != 1:
            KERNEL_BLAS.set_num_threads(self.n)


GATES = {"lstm": 4, "gru": 3}


def make_params(cell, H, dtype, seed=0):
    rng = np.random.default_rng(seed)
    G = GATES[cell] * H
    s = 1 / np.sqrt(H)
    p = {"Wx": rng.uniform(-s, s, (H, G)), "Wh": rng.uniform(-s, s, (H, G)), "b": rng.uniform(-s, s, G)}
    if cell == "gru":
        p["bhn"] = rng.uniform(-s, s, H)
    return {k: v.astype(dtype) for k, v in p.items()}


class Ours:
    """One variant's training step with its buffers allocated once (as a layer would)."""

    def __init__(self, cell, variant, x, params):
        self.cell, self.variant, self.x, self.p = cell, variant, x, params
        T, B, I = x.shape
        H = params["Wh"].shape[0]
        G = params["Wh"].shape[1]
        dt = x.dtype
        self.WhT = np.ascontiguousarray(params["Wh"].T)  # a layer keeps this packed copy per update
        self.xf = x.reshape(T * B, I)
        self.XW = np.empty((T, B, G), dt)
        self.hs = np.zeros((T + 1, B, H), dt)
        self.act = np.empty((T, B, G), dt)
        self.dGx = np.empty((T, B, G), dt)
        if cell == "lstm":
            self.cs = np.zeros((T + 1, B, H), dt)
            self.tcs = np.empty((T, B, H), dt)
        else:
            self.hns = np.empty((T, B, H), dt)
            self.dGh = np.empty((T, B, G), dt)
        self.nthreads = numba.get_num_threads()

    def __call__(self):
        p, v, n = self.p, self.variant, self.nthreads
        T, B, G = self.XW.shape
        np.dot(self.xf, p["Wx"], out=self.XW.reshape(T * B, G))
        self.XW += p["b"]
        if self.cell == "lstm":
            a = (self.XW, self.hs, self.cs, self.act, self.tcs)
            if v == "a":
                _lstm_fwd_a(self.XW, p["Wh"], self.hs, self.cs, self.act, self.tcs)
                _lstm_bwd_a(self.WhT, self.cs, self.act, self.tcs, self.dGx)
            elif v in "bc":
                with one_blas_thread():
                    _lstm_fwd_bc(self.XW, p["Wh"], self.WhT, *a[1:], n, v == "c")
                    _lstm_bwd_bc(p["Wh"], self.WhT, self.cs, self.act, self.tcs, self.dGx, n, v == "c")
            else:
                _lstm_fwd_d(self.XW, self.WhT, *a[1:], n)
                _lstm_bwd_d(p["Wh"], self.cs, self.act, self.tcs, self.dGx, n)
            dGh = self.dGx
        else:
            if v == "a":
                _gru_fwd_a(self.XW, p["Wh"], p["bhn"], self.hs, self.act, self.hns)
                _gru_bwd_a(self.WhT, self.hs, self.act, self.hns, self.dGx, self.dGh)
            elif v in "bc":
                with one_blas_thread():
                    _gru_fwd_bc(self.XW, p["Wh"], self.WhT, p["bhn"], self.hs, self.act, self.hns, n, v == "c")
                    _gru_bwd_bc(p["Wh"], self.WhT, self.hs, self.act, self.hns, self.dGx, self.dGh, n,
                                v == "c")
            else:
                _gru_fwd_d(self.XW, self.WhT, p["bhn"], self.hs, self.act, self.hns, n)
                _gru_bwd_d(p["Wh"], self.hs, self.act, self.hns, self.dGx, self.dGh, n)
            dGh = self.dGh
        H = self.hs.shape[2]
        gx = self.dGx.reshape(T * B, G)
        gh = dGh.reshape(T * B, G)
        grads = {"Wx": self.xf.T @ gx, "Wh": self.hs[:-1].reshape(T * B, H).T @ gh, "b": gx.sum(axis=0)}
        if self.cell == "gru":
            grads["bhn"] = gh[:, 2 * H:].sum(axis=0)
        return self.hs[1:], grads


def reference(cell, x, p):
    """Plain NumPy float64 forward and backward of out.sum()."""
    x = x.astype(np.float64)
    p = {k: v.astype(np.float64) for k, v in p.items()}
    T, B, _ = x.shape
    H = p["Wh"].shape[0]
    sig = lambda v: 1 / (1 + np.exp(-v))
    h = np.zeros((B, H)); c = np.zeros((B, H))
    tape, outs = [], []
    for t in range(T):
        xw = x[t] @ p["Wx"] + p["b"]
        hw = h @ p["Wh"]
        if cell == "lstm":
            i, f, g, o = (xw + hw).reshape(B, 4, H).transpose(1, 0, 2)
            i, f, g, o = sig(i), sig(f), np.tanh(g), sig(o)
            cn = f * c + i * g
            tape.append((h, c, i, f, g, o, np.tanh(cn)))
            c = cn
            h = o * np.tanh(cn)
        else:
            r = sig(xw[:, :H] + hw[:, :H]); z = sig(xw[:, H:2 * H] + hw[:, H:2 * H])
            hn = hw[:, 2 * H:] + p["bhn"]
            n = np.tanh(xw[:, 2 * H:] + r * hn)
            tape.append((h, r, z, n, hn))
            h = (1 - z) * n + z * h
        outs.append(h)
    grads = {k: np.zeros_like(v) for k, v in p.items()}
    dh_next = np.zeros((B, H)); dc_next = np.zeros((B, H))
    for t in range(T - 1, -1, -1):
        dh = 1 + dh_next
        if cell == "lstm":
            hp, cp, i, f, g, o, tc = tape[t]
            dc = dc_next + dh * o * (1 - tc ** 2)
            dG = np.concatenate([dc * g * i * (1 - i), dc * cp * f * (1 - f), dc * i * (1 - g ** 2),
                                 dh * tc * o * (1 - o)], axis=1)
            dc_next = dc * f
            dGh = dG
            dh_next = dG @ p["Wh"].T
        else:
            hp, r, z, n, hn = tape[t]
            dan = dh * (1 - z) * (1 - n ** 2)
            dar = dan * hn * r * (1 - r)
            daz = dh * (hp - n) * z * (1 - z)
            dG = np.concatenate([dar, daz, dan], axis=1)
            dGh = np.concatenate([dar, daz, dan * r], axis=1)
            grads["bhn"] += (dan * r).sum(0)
            dh_next = dGh @ p["Wh"].T + dh * z
        grads["Wx"] += x[t].T @ dG
        grads["Wh"] += hp.T @ dGh
        grads["b"] += dG.sum(0)
    return np.stack(outs), grads


def check_reference_against_torch(cell, x, p):
    import torch
    out, grads = reference(cell, x, p)
    H = p["Wh"].shape[0]
    m = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell](H, H).double()
    with torch.no_grad():
        m.weight_ih_l0.copy_(torch.tensor(p["Wx"].T.astype(np.float64)))
        m.weight_hh_l0.copy_(torch.tensor(p["Wh"].T.astype(np.float64)))
        m.bias_ih_l0.copy_(torch.tensor(p["b"].astype(np.float64)))
        m.bias_hh_l0.zero_()
        if cell == "gru":
            m.bias_hh_l0[2 * H:] = torch.tensor(p["bhn"].astype(np.float64))
    y, _ = m(torch.tensor(x.astype(np.float64)))
    y.sum().backward()
    errs = [np.abs(y.detach().numpy() - out).max(),
            np.abs(m.weight_ih_l0.grad.numpy().T - grads["Wx"]).max(),
            np.abs(m.weight_hh_l0.grad.numpy().T - grads["Wh"]).max(),
            np.abs(m.bias_ih_l0.grad.numpy() - grads["b"]).max()]
    return max(errs)


def rel_err(a, b):
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def check_variant(cell, variant, x, p, ref):
    out, grads = Ours(cell, variant, x, p)()
    rout, rgrads = ref
    return max([rel_err(out, rout)] + [rel_err(grads[k], rgrads[k]) for k in rgrads])


def torch_step(cell, x):
    import torch
    H = x.shape[2]
    m = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell](H, H)
    xt = torch.tensor(x)

    def step():
        m.zero_grad()
        out, _ = m(xt)
        out.sum().backward()
    return step


def block_min_ms(fns, blocks, steps):
    """({name: wall ms per step}, {name: process CPU ms per step}): each fn runs `steps` steps per
    block, blocks alternate, min over blocks. With one thread everywhere, CPU time is what the
    step costs a core, nearly independent of what else the machine runs; with more, it counts
    spinning workers too."""
    for fn in fns.values():
        fn(); fn()
    best = {k: float("inf") for k in fns}
    cpu = {k: float("inf") for k in fns}
    for _ in range(blocks):
        for name, fn in fns.items():
            fn()  # one warm-up step at the head of each block
            c0 = time.process_time()
            t0 = time.perf_counter()
            for _ in range(steps):
                fn()
            best[name] = min(best[name], (time.perf_counter() - t0) / steps * 1e3)
            cpu[name] = min(cpu[name], (time.process_time() - c0) / steps * 1e3)
    return best, cpu


def steps_for(H):
    return {32: 20, 64: 10, 128: 6, 256: 3}.get(H, 2)


def cpu_name():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(l.split(":", 1)[1].strip() for l in out.splitlines() if l.startswith("Model name"))
    except (OSError, StopIteration):
        return "unknown CPU"


def setup_threads():
    global KERNEL_BLAS
    KERNEL_BLAS = kernel_blas()
    import torch
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    return torch


def header(torch, args):
    try:
        layer = numba.threading_layer()
    except ValueError:  # no parallel kernel has run yet
        layer = os.environ.get("NUMBA_THREADING_LAYER", "default")
    print(f"CPU {cpu_name()}; numba {numba.__version__} threads {numba.get_num_threads()} "
          f"layer {layer}; torch {torch.__version__} "
          f"threads {torch.get_num_threads()}; T={args.seq_len} B={args.batch} float32; "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)


def run_main(args):
    torch = setup_threads()
    variants = args.variants.split(",")
    rng = np.random.default_rng(1)
    results = []
    first = True
    for cell in args.cells.split(","):
        for H in map(int, args.sizes.split(",")):
            x = rng.standard_normal((args.seq_len, args.batch, H)).astype(np.float32)
            p = make_params(cell, H, np.float32)
            if args.check or args.check64:
                ref = reference(cell, x, p)
                msg = [f"reference vs torch f64 {check_reference_against_torch(cell, x, p):.1e}"]
                for v in variants:
                    msg.append(f"{v}: f32 {check_variant(cell, v, x, p, ref):.1e}")
                    if args.check64:
                        p64 = {k: w.astype(np.float64) for k, w in p.items()}
                        msg.append(f"f64 {check_variant(cell, v, x.astype(np.float64), p64, ref):.1e}")
                print(f"  check {cell} H={H}: " + ", ".join(msg), flush=True)
            fns = {"torch": torch_step(cell, x)}
            for v in variants:
                fns[v] = Ours(cell, v, x, p)
            ms, cpu = block_min_ms(fns, args.blocks, args.steps or steps_for(H))
            if first:
                header(torch, args)
                print(f"{'cell':5} {'H':>4} {'torch ms':>9} "
                      + " ".join(f"{v + ' ms':>8} {'ratio':>6}" for v in variants), flush=True)
                first = False
            print(f"{cell:5} {H:4d} {ms['torch']:9.2f} "
                  + " ".join(f"{ms[v]:8.2f} {ms['torch'] / ms[v]:6.2f}" for v in variants), flush=True)
            if numba.get_num_threads() == 1:
                print(f"{'  CPU':5} {H:4d} {cpu['torch']:9.2f} "
                      + " ".join(f"{cpu[v]:8.2f} {cpu['torch'] / cpu[v]:6.2f}" for v in variants), flush=True)
            results.append({"cell": cell, "H": H, "ms": ms, "cpu": cpu})
    if args.json:
        print("JSON " + json.dumps(results), flush=True)


def spin_cpu_ms(fn, idle_ms=50.0, repeat=3):
    """CPU time this process burns (all threads) in the idle_ms after fn returns: spinning workers."""
    worst = 0.0
    for _ in range(repeat):
        fn()
        c0 = time.process_time()
        time.sleep(idle_ms / 1e3)
        worst = max(worst, (time.process_time() - c0) * 1e3)
    return worst


def run_after(args):
    """What our threads do after a step, and what that costs the user's next (PyTorch) step."""
    torch = setup_threads()
    rng = np.random.default_rng(1)
    variants = args.variants.split(",")
    for cell in args.cells.split(","):
        for H in map(int, args.sizes.split(",")):
            x = rng.standard_normal((args.seq_len, args.batch, H)).astype(np.float32)
            p = make_params(cell, H, np.float32)
            tstep = torch_step(cell, x)
            ours = {v: Ours(cell, v, x, p) for v in variants}
            alone = block_min_ms({"torch": tstep}, args.blocks, args.steps or steps_for(H))[0]["torch"]
            line = [f"{cell} H={H}: torch alone {alone:.2f} ms, spins {spin_cpu_ms(tstep):.1f} CPU-ms in 50 ms idle"]
            for v, fn in ours.items():
                spin = spin_cpu_ms(fn)
                after = float("inf")  # torch step timed right after one of ours, min over steps
                for _ in range(args.blocks * 2):
                    fn()
                    t0 = time.perf_counter()
                    tstep()
                    after = min(after, (time.perf_counter() - t0) * 1e3)
                line.append(f"{v}: spins {spin:.1f} CPU-ms, torch after it {after:.2f} ms ({after / alone:.2f}x)")
            header(torch, args)
            print("; ".join(line), flush=True)


def run_children(args, configs, mode):
    """Run this script in fresh processes, one per environment (thread counts must be set before import)."""
    for name, env in configs:
        cmd = [sys.executable, os.path.abspath(__file__), mode, "--cells", args.cells, "--sizes", args.sizes,
               "--variants", args.variants, "--blocks", str(args.blocks), "--seq-len", str(args.seq_len),
               "--batch", str(args.batch), "--steps", str(args.steps)]
        print(f"--- {name}: {' '.join(f'{k}={v}' for k, v in env.items())}", flush=True)
        proc = subprocess.run(cmd + (["--json"] if mode == "--child" else []),
                              env={**os.environ, **env}, capture_output=True, text=True)
        lines = [l for l in proc.stdout.splitlines() if not l.startswith("JSON ")]
        print("\n".join(lines), flush=True)
        if proc.returncode:
            print(proc.stderr[-2000:], flush=True)
        yield next((json.loads(l[5:]) for l in proc.stdout.splitlines() if l.startswith("JSON ")), [])


def run_sweep(args):
    """1 thread vs 2 threads, each in a fresh process with every pool's size set."""
    configs = [(f"{n} thread(s)", {"NUMBA_NUM_THREADS": str(n), "OPENBLAS_NUM_THREADS": str(n),
                                   "OMP_NUM_THREADS": str(n)}) for n in (1, 2)]
    one, two = list(run_children(args, configs, "--child"))
    print("speed-up from 1 to 2 threads, wall ms_1 / ms_2 (and 1-thread CPU ms / 2-thread wall ms):")
    for r1, r2 in zip(one, two):
        print(f"  {r1['cell']:5} H={r1['H']:4d} " + " ".join(
            f"{k} {r1['ms'][k] / r2['ms'][k]:.2f}x ({r1['cpu'][k] / r2['ms'][k]:.2f}x)" for k in r1["ms"]),
            flush=True)


def run_after_sweep(args):
    configs = [("defaults", {}),
               ("OpenBLAS sleeps at once", {"OPENBLAS_THREAD_TIMEOUT": "4"}),
               ("OpenMP passive", {"OMP_WAIT_POLICY": "PASSIVE"}),
               ("both", {"OPENBLAS_THREAD_TIMEOUT": "4", "OMP_WAIT_POLICY": "PASSIVE"}),
               ("workqueue layer", {"NUMBA_THREADING_LAYER": "workqueue", "OPENBLAS_THREAD_TIMEOUT": "4"})]
    list(run_children(args, configs, "--after-child"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", default="lstm,gru")
    ap.add_argument("--sizes", default="32,128,512")
    ap.add_argument("--variants", default="a,b,c,d")
    ap.add_argument("--seq-len", type=int, default=100)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--blocks", type=int, default=5)
    ap.add_argument("--steps", type=int, default=0, help="steps per block (default by size)")
    ap.add_argument("--check", action="store_true", help="compare with the float64 reference first")
    ap.add_argument("--check64", action="store_true", help="also run the kernels in float64")
    ap.add_argument("--sweep", action="store_true", help="1 vs 2 threads, fresh processes")
    ap.add_argument("--after", action="store_true",
                    help="spinning threads after a step and their cost to a following PyTorch step, "
                         "under several OpenBLAS/OpenMP settings (fresh processes)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--after-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.sweep:
        run_sweep(args)
    elif args.after:
        run_after_sweep(args)
    elif args.after_child:
        run_after(args)
    else:
        run_main(args)


if __name__ == "__main__":
    main()
