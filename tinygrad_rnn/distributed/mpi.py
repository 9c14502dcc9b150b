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
import hashlib
import os
import signal
import sys
import threading
import time

import numpy as np

from .. import options, training
from ..errors import Error
from ..tensor import Tensor


class DistributedError(Error, RuntimeError):
    """MPI is missing or the run cannot be split across the ranks (one line, exit 1)."""


def world():
    """``mpi4py.MPI.COMM_WORLD``, or a one-line error saying what to install."""
    try:
        from mpi4py import MPI
    except ImportError:
        raise DistributedError("distributed training needs mpi4py and an MPI: pip install 'tinygrad-rnn[mpi]'") from None
    return MPI.COMM_WORLD


# ---- start-up: every rank says it is ready, with its settings, before any training ------------

LAUNCHER_SIZE = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE")  # set by MPICH's Hydra (and Slurm's PMI), Open MPI
ENVIRONMENT = ("TINYGRAD_RNN_MIN_BLOCK_ROWS", "TINYGRAD_RNN_PLUGINS", "TINYGRAD_RNN_NO_PLUGINS")  # change results


def launched_size():
    """How many processes an MPI launcher (``mpiexec -n N``) started, from the environment
    it gives each one; 1 outside a launcher."""
    for name in LAUNCHER_SIZE:
        try:
            return max(1, int(os.environ[name]))
        except (KeyError, ValueError):
            continue
    return 1


def refuse_without_distributed():
    """Under ``mpiexec -n N`` (N > 1) without ``--distributed``, every process would run the
    whole job, all racing on one ``--save`` and logging each record N times."""
    n = launched_size()
    if n > 1:
        raise DistributedError(f"started by an MPI launcher as one of {n} processes, without --distributed: each "
                               "would run the whole job and they would overwrite each other's outputs; add "
                               "--distributed, or run it without mpiexec")


def _file_digest(path):
    try:
        with open(path, "rb") as f:
            digest = hashlib.sha256()
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
            return digest.hexdigest()[:16]  # enough to tell two files apart
    except OSError as e:
        return f"unreadable ({e.strerror})"


def settings_of(kwargs):
    """What must be the same on every rank: the run's options, the contents of the files
    it reads (data, checkpoint, plugins) and the environment variables that change results."""
    from ..plugins import plugin_files
    found = {k: (sorted(v) if isinstance(v, (set, frozenset)) else v) for k, v in kwargs.items()
             if k not in ("progress", "log") and not callable(v)}
    for option in ("data", "resume"):
        if kwargs.get(option):
            found[f"{option} contents"] = _file_digest(kwargs[option])
    for where, path in plugin_files():
        found[f"plugin {os.path.basename(path)}"] = _file_digest(path)
    for name in ENVIRONMENT:
        found[name] = os.environ.get(name)
    return {k: repr(v) for k, v in found.items()}


def _start_together(comm, status):
    """The first collective of a run: every rank's ``status`` (its settings, or the error
    that stopped it before training) to every rank."""
    return comm.allgather(status)


def check_start(comm, settings):
    """Stop every rank, with one line on rank 0 and no MPI_Abort, if a rank failed before
    training (``report_early_failure``) or runs other settings than rank 0."""
    statuses = _start_together(comm, {"settings": settings})
    failed = [(r, s["failed"]) for r, s in enumerate(statuses) if "failed" in s]
    if failed:
        rank, why = failed[0]
        raise DistributedError(f"rank {rank} failed before training ({why}); every rank stops")
    for rank, status in enumerate(statuses[1:], 1):
        theirs, ours = status["settings"], statuses[0]["settings"]
        differ = [k for k in dict.fromkeys([*ours, *theirs]) if ours.get(k) != theirs.get(k)]
        if differ:
            k = differ[0]
            if k in options.BY_NAME:  # the CLI says --lr 0.01 for lr=0.01
                differs = f"{k}={theirs.get(k)} on rank {rank} but {k}={ours.get(k)} on rank 0"
            else:
                differs = f"{k} is {theirs.get(k)} on rank {rank} but {ours.get(k)} on rank 0"
            raise DistributedError(f"the ranks were started with different settings: {differs}"
                                   f"{f' (and {len(differ) - 1} more)' if len(differ) > 1 else ''}; give every "
                                   "rank the same command line, files and environment")


def report_early_failure(why):
    """Called on a rank whose command failed before training (a usage error, a plugin file
    missing on its host) under ``mpiexec -n N --distributed``: the other ranks wait for it
    in the start-up exchange, so it joins the exchange with its failure and they all stop.
    Does nothing outside a launcher or once MPI is up (the failure is then handled there)."""
    if launched_size() < 2 or "mpi4py.MPI" in sys.modules:  # importing mpi4py.MPI starts MPI: up already
        return
    try:
        from mpi4py import MPI
        _start_together(MPI.COMM_WORLD, {"failed": why})
    except Exception:  # noqa: BLE001 (no mpi4py, no MPI: nothing to tell)
        pass


def split(n, size):
    """Start and stop of each rank's slice of ``n`` items: the first ``n % size`` ranks get one more."""
    counts = [n // size + (r < n % size) for r in range(size)]
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(int)
    return [(int(starts[r]), int(starts[r + 1])) for r in range(size)]


class PeerFailed(DistributedError):
    """A rank failed before the first collective of training (the same error on every rank,
    or one rank's): every rank stops, one line on rank 0, no MPI_Abort."""


class DataParallel:
    """The seam ``training.train(parallel=...)`` calls: shard the batch, sum the gradients."""

    def __init__(self, comm):
        self.comm, self.rank, self.size = comm, comm.Get_rank(), comm.Get_size()
        self.root = self.rank == 0
        self.started = False      # the first collective of training is done: failures now end the job
        self.sigint = False       # Ctrl-C reached this rank
        self.interrupted = False  # ...reached some rank before this step's Allreduce: all stop after it

    def start(self, failure=None):
        """The first collective of training, before any other: each rank's failure in the
        set-up (None if it has none) reaches every rank, and all stop together if one failed
        (a batch that cannot be split, a file missing on one host) instead of aborting."""
        self.started = True
        statuses = self.comm.allgather(failure)
        failed = [(rank, why) for rank, why in enumerate(statuses) if why is not None]
        if failed:
            rank, why = failed[0]
            everywhere = len(failed) == self.size and all(w == why for _, w in failed)
            raise PeerFailed(why if everywhere else f"rank {rank}: {why}")

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
        if not self.started:
            self.start()
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
        if not self.started:
            self.start()
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
        raise DistributedError(f"dropout={kwargs['dropout']} is not supported in distributed training yet: each "
                               "process would draw its own dropout masks, so the run would not equal the "
                               "single-process one")
    settings = settings_of(kwargs)
    comm = world()
    parallel = DataParallel(comm)
    try:
        check_start(comm, settings)
    except DistributedError:
        if parallel.root:
            raise  # the same on every rank: rank 0 says it, once; no MPI_Abort
        sys.exit(1)
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
        try:
            if isinstance(e, PeerFailed):
                raise
            if not parallel.started:  # the others wait in the first collective: tell them, stop together
                parallel.start((str(e).splitlines() or [type(e).__name__])[0])
        except PeerFailed as peer:
            if parallel.root:
                raise DistributedError(str(peer)) from None
            sys.exit(1)
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
