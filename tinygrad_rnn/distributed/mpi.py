"""Data-parallel training over MPI (mpi4py): ``tinygrad-rnn train --distributed`` under
``mpiexec -n N``.

Every rank draws the same global batch from the same seeded generator and trains on its
own contiguous slice of it. After each backward pass one Allreduce sums, across ranks,
every gradient and the loss, each weighted by the rank's share of the batch (b_r / B),
so the sum is exactly the single-process mean. Clipping and the optimiser step then run
on identical numbers on every rank, so the parameters stay identical without ever being
sent. Rank 0 alone writes logs and checkpoints and prints.
"""
import contextlib
import os
import signal
import sys
import threading
import time

import numpy as np

from .. import training
from ..errors import Error
from ..tensor import Tensor


class DistributedError(Error, RuntimeError):
    """MPI is missing or the run cannot be split across the ranks (one line, exit 1)."""


def world():
    """``mpi4py.MPI.COMM_WORLD``, or a one-line error saying what to install."""
    try:
        from mpi4py import MPI
    except ImportError:
        raise DistributedError("--distributed needs mpi4py and an MPI: pip install 'tinygrad-rnn[mpi]'") from None
    return MPI.COMM_WORLD


def split(n, size):
    """Start and stop of each rank's slice of ``n`` items: the first ``n % size`` ranks get one more."""
    counts = [n // size + (r < n % size) for r in range(size)]
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(int)
    return [(int(starts[r]), int(starts[r + 1])) for r in range(size)]


class DataParallel:
    """The seam ``training.train(parallel=...)`` calls: shard the batch, sum the gradients."""

    def __init__(self, comm):
        self.comm, self.rank, self.size = comm, comm.Get_rank(), comm.Get_size()
        self.root = self.rank == 0
        self.sigint = False       # Ctrl-C reached this rank
        self.interrupted = False  # ...reached some rank before this step's Allreduce: all stop after it

    def _slice(self, n):
        if n < self.size:
            raise DistributedError(f"a batch of {n} cannot be split across {self.size} processes; "
                                   f"use --batch {self.size} or more")
        start, stop = split(n, self.size)[self.rank]
        self.weight = (stop - start) / n  # this rank's share of the global mean
        return slice(start, stop)

    def shard(self, x, y, task):
        """This rank's slice of the batch axis: x is (T, B, I); y is (B, ...) when the
        loss reads the last step only, else (T, B, ...)."""
        s = self._slice(x.shape[1])
        # contiguous copies: the kernels are compiled for C-ordered arrays
        return np.ascontiguousarray(x[:, s]), np.ascontiguousarray(y[s] if task.last_step_only else y[:, s])

    def shard_state(self, state):
        """A full-batch recurrent state (num_layers, B, H) per tensor -> this rank's slice."""
        s = self._slice(state[0].shape[1])
        return tuple(Tensor(np.ascontiguousarray(t.numpy()[:, s]), device=t.device) for t in state)

    def gather_state(self, state):
        """The inverse of ``shard_state`` (collective): every rank gets the full-batch state."""
        if state is None:
            return None
        return tuple(Tensor(np.concatenate(self.comm.allgather(t.numpy()), axis=1), device=t.device)
                     for t in state)

    def allreduce(self, loss_value, params):
        """Sum ``weight * grad`` and ``weight * loss`` over ranks, in place; return the loss.

        One Allreduce of one float64 buffer per step (float32 gradients are summed in
        float64, then cast back). A rank whose local loss was not finite has no gradients:
        it sends zeros, and its NaN or inf loss reaches every rank, so all of them skip or
        stop together. The buffer's last slot carries Ctrl-C: a rank that got it tells the
        others, and every rank sets ``interrupted`` at the same step.
        """
        params = list(params)
        grads = [p.grad.numpy() if p.grad is not None else np.zeros(p.shape, p.dtype) for p in params]
        ends = np.cumsum([g.size for g in grads]).astype(int)
        buf = np.empty(int(ends[-1]) + 2 if grads else 2)
        for g, a, b in zip(grads, ends - [g.size for g in grads], ends):
            buf[a:b] = g.ravel()
        buf[-2] = loss_value
        buf[:-1] *= self.weight
        buf[-1] = float(self.sigint)
        total = np.empty_like(buf)
        self.comm.Allreduce(buf, total)
        for p, g, a, b in zip(params, grads, ends - [g.size for g in grads], ends):
            p.grad = Tensor(total[a:b].reshape(g.shape).astype(g.dtype), device=p.device)
        self.interrupted = bool(total[-1])
        return float(total[-2])

    @contextlib.contextmanager
    def stop_together_on_sigint(self):
        """Ctrl-C (which reaches every rank, or only some) stops all ranks after the same
        step, which is then saved; a second one ends the job at once."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum, frame):
            if self.sigint:
                if self.root:
                    print("\nstopped at once: the checkpoint is the last one written", file=sys.stderr, flush=True)
                self.comm.Abort(130)
            self.sigint = True
            if self.root:
                print("\ninterrupted: every process finishes this step, then it is saved (Ctrl-C again to stop at "
                      "once)", file=sys.stderr, flush=True)
        previous = signal.signal(signal.SIGINT, handler)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)


def train(**kwargs):
    """``training.train`` on every rank of ``MPI.COMM_WORLD``: the summary on rank 0, None elsewhere.

    Only rank 0 writes the log and the checkpoint and shows progress; the summary's
    ``processes`` says how many ranks took part.
    """
    if kwargs.get("dropout"):
        raise DistributedError("--dropout with --distributed is not supported yet: each process would draw "
                               "its own dropout masks, so the run would not equal the single-process one")
    comm = world()
    parallel = DataParallel(comm)
    if parallel.size == 1 and parallel.root:
        print("note: --distributed with one process; run it under `mpiexec -n N` to use N", file=sys.stderr)
    if not parallel.root:
        kwargs.update(log=None, progress=False)
    try:
        with parallel.stop_together_on_sigint() if kwargs.get("save") else contextlib.nullcontext():
            summary = training.train(parallel=parallel, **kwargs)
    except training.TrainingInterrupted:
        if parallel.root:
            raise  # every rank stopped at the same step and rank 0 saved it: it says so, once
        sys.exit(1)
    except Exception as e:
        if parallel.size == 1:
            raise
        # One rank failing alone would leave the others waiting in Allreduce forever: end
        # them all. A usage error fails on every rank alike: rank 0 says it, once; a rank
        # failing alone says it after a pause (rank 0 failing too ends it before that).
        if not parallel.root:
            time.sleep(2)
        message = (str(e).splitlines() or [type(e).__name__])[0]
        print(f"Error: {'' if parallel.root else f'rank {parallel.rank}: '}{message}", file=sys.stderr, flush=True)
        comm.Abort(1)
        os._exit(1)  # Abort can return before the process manager ends this one
    if not parallel.root:
        return None
    summary["processes"] = parallel.size
    return summary
