"""``describe``: statistics of every column, each rank streaming its own rows."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from mpitrain.workflow._paths import Named, check_paths, data_inputs
from mpitrain.workflow._run import Run

if TYPE_CHECKING:  # pragma: no cover
    from mpi4py.MPI import Intracomm

__all__ = ["describe"]


def describe(
    data: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    x: str = "X",
    y: str | None = None,
    json: str | os.PathLike | None = None,
    comm: Intracomm | None = None,
    quiet: bool = False,
    threads_per_rank: int | None = None,
) -> dict:
    """Describe every column of a data set, as ``mpitrain describe`` does. Collective over ``comm``.

    Count, missing values, mean, std, min, max and approximate quantiles of
    every column, class counts of a label column and rows per rank, computed
    by reduction (no rows move between ranks).  Rank 0 prints the table.

    Parameters
    ----------
    data : str, path or sequence of them
        HDF5 file(s) or glob patterns, one row space.
    x : str, default="X"
        Feature dataset.
    y : str or None, default=None
        Target or label dataset to describe too.
    json : str or path or None, default=None
        Also write the result as JSON (rank 0).
    comm : mpi4py.MPI.Intracomm or None, default=None
        ``None`` means ``COMM_WORLD``.
    quiet : bool, default=False
        No progress output (the table is printed all the same).
    threads_per_rank : int or None, default=None
        BLAS/OpenMP threads per rank (see :func:`mpitrain.workflow.limit_threads`).

    Returns
    -------
    dict
        :func:`mpitrain.describe.describe_file`'s result with ``seconds``,
        the same on every rank.
    """
    from mpitrain.data import write_json
    from mpitrain.describe import describe_file, format_description

    run = Run(comm, quiet=quiet, threads_per_rank=threads_per_rank)
    if json:
        # Before any row is read: the JSON file must not be one of the data files.
        check_paths(
            run.comm, "describe", data_inputs(data, (x, y)), [Named("--json", json)]
        )
    tic = time.perf_counter()
    result = describe_file(data, x=x, y=y, comm=run.comm)
    result["seconds"] = time.perf_counter() - tic
    if json:
        run.on_root(f"writing {json}", lambda: write_json(json, result))
    if run.rank == 0:
        print(format_description(result), flush=True)
        if json:
            print(f"\nJSON written to {json}", flush=True)
    return result
