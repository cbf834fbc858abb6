"""``shuffle``: redistribute a data set's rows into one part per rank, checked before any work.

The workflow of ``mpitrain shuffle DATA --out DIR``: the paths are checked
(no output destroys an input, and the folder will hold nothing that
``DIR/*.h5`` would read besides the parts), then
:func:`mpitrain.data.shuffle_files` moves every row to its place in a
seeded permutation that does not depend on the rank count.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from mpitrain.errors import DistributedError, UsageError
from mpitrain.workflow._paths import Named, check_paths, data_inputs
from mpitrain.workflow._run import Run

if TYPE_CHECKING:  # pragma: no cover
    from mpi4py.MPI import Intracomm

__all__ = ["shuffle", "shuffle_folder_problems"]


def shuffle_folder_problems(
    out: str | os.PathLike, inputs: Sequence[Named]
) -> list[str]:
    """What makes ``out`` unfit to hold the parts; empty if nothing. Local.

    Refused: a folder that is or contains an input (the shuffle would
    replace files beside it, and ``DIR/*.h5`` would read it as a part), and
    a folder holding HDF5 files that are not parts of an earlier shuffle
    (``DIR/*.h5`` would read them with the parts).  Parts of an earlier
    shuffle are replaced, or removed once the new parts are written.
    """
    from mpitrain.data import is_part_name

    problems = []
    folder = os.path.realpath(os.fspath(out))
    inside = [
        named
        for named in inputs
        if os.path.commonpath([os.path.realpath(os.fspath(named.path)), folder])
        == folder
    ]
    if inside:
        # One sentence for all of them: a pattern such as DIR/*.h5 names many files.
        first, more = inside[0], len(inside) - 1
        problems.append(
            f"--out {os.fspath(out)} holds the input {first.option} {os.fspath(first.path)}"
            + (f" and {more} more input file{'s' if more > 1 else ''}" if more else "")
            + ": its parts would be read with the input's files; choose a folder "
            "outside the input's"
        )
    if os.path.isdir(folder):
        strangers = sorted(
            name
            for name in os.listdir(folder)
            if name.endswith(".h5") and not is_part_name(name)
        )
        if strangers:
            shown = ", ".join(strangers[:3]) + (" ..." if len(strangers) > 3 else "")
            problems.append(
                f"--out {os.fspath(out)} holds HDF5 files that are not parts of a shuffle "
                f"({shown}); DIR/*.h5 would read them with the parts: choose an empty folder"
            )
    return problems


def shuffle(
    data: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    out: str | os.PathLike,
    seed: int = 0,
    x: str = "X",
    y: str | None = "y",
    sample_weight: str | None = None,
    comm: Intracomm | None = None,
    quiet: bool = False,
    threads_per_rank: int | None = None,
) -> dict:
    """Shuffle the rows of ``data`` into one part per rank, as ``mpitrain shuffle`` does.

    Collective over ``comm``.  Rank ``r`` of ``P`` writes
    ``out/part-<r>-of-<P>.h5``; reading ``out/*.h5`` as one data set gives
    every rank a slice distributed like the whole, and the parts in order
    hold the same rows in the same order at any ``P`` (see
    :func:`mpitrain.data.shuffle_files`).  Every part keeps ``row_id``,
    the original row of each row: ``mpitrain predict --original-order``
    writes predictions back in the input's order.

    Parameters
    ----------
    data : str, path or sequence of them
        HDF5 file(s) or glob patterns, one row space.
    out : str or path
        The folder of the parts (made if missing).
    seed : int, default=0
        Seed of the permutation.
    x, y : str, default="X", "y"
        Feature and target datasets; ``y=None``: no target.
    sample_weight : str or None, default=None
        Dataset of row weights.  Every other dataset with one row per row
        is copied too.
    comm : mpi4py.MPI.Intracomm or None, default=None
        ``None`` means ``COMM_WORLD``.
    quiet : bool, default=False
        No progress output.
    threads_per_rank : int or None, default=None
        BLAS/OpenMP threads per rank.

    Returns
    -------
    dict
        The manifest written to ``out/shuffle.json``, with this rank's
        ``seconds``.
    """
    from mpitrain.comm import agree
    from mpitrain.data import shuffle_files

    run = Run(comm, quiet=quiet, threads_per_rank=threads_per_rank)
    inputs = data_inputs(data, (x, y, sample_weight))
    check_paths(run.comm, "shuffle", inputs, [Named("--out", out, folder=True)])
    failure: BaseException | None = None
    try:
        problems = shuffle_folder_problems(out, inputs)
        if problems:
            failure = UsageError("; ".join(problems))
    except Exception as exc:
        failure = exc
    try:
        agree(failure, run.comm, "checking the files of shuffle", quiet=False)
    except DistributedError as exc:
        raise UsageError(str(exc)) from failure
    # shuffle_files makes the folder: it knows whether it made it, and removes
    # it again if the shuffle fails while it is empty.
    manifest = shuffle_files(
        data,
        out,
        seed=seed,
        x=x,
        y=y,
        sample_weight=sample_weight,
        comm=run.comm,
        log=run.say,
    )
    run.say(
        f"wrote {manifest['rows']:,} rows in {manifest['parts']} part(s) to {out} "
        f"(seed {seed}) in {manifest['seconds']['total']:.2f} s; read them as "
        f"{os.path.join(os.fspath(out), '*.h5')}"
    )
    return manifest
