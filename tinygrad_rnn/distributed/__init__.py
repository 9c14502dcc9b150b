"""Scale-out on existing engines: parameter sweeps on Dask (``sweep``), data-parallel
training over MPI (``mpi``). Both import their engine lazily, so the package works
without the ``distributed`` and ``mpi`` extras until one of them is used. ``worker`` is
``dask worker`` with tinygrad_rnn imported first (a command, run with ``python -m``)."""
