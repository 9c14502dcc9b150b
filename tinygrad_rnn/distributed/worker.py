"""``python -m tinygrad_rnn.distributed.worker SCHEDULER [dask worker options]``: ``dask worker``
with tinygrad_rnn imported first.

``dask worker`` imports NumPy before any task runs, too early for ``tinygrad_rnn._blas``
to choose OpenBLAS's kernels the way ``tinygrad-rnn train`` does, and different kernels
give different last bits. Imported here first, the choice lands in this process's
environment, and the worker processes the nanny starts inherit it: their results then
equal serial runs bit for bit. The sweep warns when a worker's choice differs from its own.
"""
import tinygrad_rnn  # noqa: F401  (first: see tinygrad_rnn/_blas.py)
from distributed.cli.dask_worker import main

if __name__ == "__main__":
    main()
