"""``train``: read, clean, split, fit, evaluate, save and report, across ranks.

The workflow of ``mpitrain train``, callable from Python with the same
options (:class:`~mpitrain.workflow.TrainOptions`).  Exact least-squares
models stream their rows into sufficient statistics
(:mod:`mpitrain.workflow._streamed`); every other model, and every option
that needs the rows, holds them in memory
(:mod:`mpitrain.workflow._in_memory`).  Rank 0 writes the model and the
report, atomically; ``checkpoint`` makes the fit resumable.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mpitrain import __version__
from mpitrain.utils.threads import start_ahead
from mpitrain.workflow._in_memory import fit_on_rows
from mpitrain.workflow._options import CHECKPOINT_SECONDS, SHORTCUTS, TrainOptions
from mpitrain.workflow._paths import Named, check_paths, data_inputs
from mpitrain.workflow._run import Run
from mpitrain.workflow._streamed import (
    ROOT_EXTRA_SECONDS,
    ROOT_IMPORT_SECONDS,
    default_root_share,
    fit_from_statistics,
    model_on_root_alone,
)

if TYPE_CHECKING:  # pragma: no cover
    from mpi4py.MPI import Intracomm

    from mpitrain.data import RowReader

__all__ = ["train", "run_train", "TrainResult", "run_fingerprint", "train_paths"]

#: Modules the main thread uses while the model's module is imported in the
#: background (run set-up, reading, checkpoints, streamed statistics);
#: imported before that import starts.
_MAIN_THREAD_MODULES = (
    "mpitrain.checkpoint",
    "mpitrain.data",
    "mpitrain.report",
    "mpitrain.stats",
)


@dataclasses.dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes
    ----------
    model
        The saved model: a plain scikit-learn estimator (a pipeline with the
        imputer of ``impute``), the same on every rank; it predicts without
        MPI.  ``None`` on the ranks other than 0 when :func:`run_train` was
        asked for it on rank 0 alone.
    estimator
        The fitted mpitrain estimator (its ``comm`` is the run's), or
        ``None`` where ``model`` is.
    report : dict or None
        The run report (what ``report`` writes) on rank 0, ``None`` elsewhere.
    """

    model: Any
    estimator: Any
    report: dict | None


def train(
    data,
    *,
    model: str,
    out: str | os.PathLike,
    comm: Intracomm | None = None,
    quiet: bool = False,
    threads_per_rank: int | None = None,
    **options: Any,
) -> TrainResult:
    """Fit a model on all rows of ``data``, each rank on its own, as ``mpitrain train`` does.

    Collective over ``comm``.  The model is written to ``out`` by rank 0
    (atomically: an old file stays until the new one is complete), and
    the run report to ``report`` if given.  Errors are raised alike on
    every rank.

    Parameters
    ----------
    data : str, path or sequence of them
        HDF5 file(s) or glob patterns with a 2-D feature and a 1-D target
        dataset, read as one row space.
    model : str
        A key of :data:`mpitrain.workflow.MODELS`: ``"linear"``, ``"ridge"``,
        ``"logistic"``, ``"svc"``, ...
    out : str or path
        Where to save the fitted model (a skops file, see docs/trust.md).
    comm : mpi4py.MPI.Intracomm or None, default=None
        ``None`` means ``COMM_WORLD``.
    quiet : bool, default=False
        No progress output.
    threads_per_rank : int or None, default=None
        BLAS/OpenMP threads per rank (see :func:`mpitrain.workflow.limit_threads`).
    **options
        Any other field of :class:`~mpitrain.workflow.TrainOptions`, named
        like the command's options: ``alpha=1.0``, ``params={"max_iter": 500}``,
        ``x="X"``, ``y="y"``, ``sample_weight=None``, ``report=None``,
        ``strategy=None``, ``test_size=None``, ``impute=None``,
        ``checkpoint=None``, ``resume=False``,
        ``root_share=None`` (rank 0's share of the rows; docs/large-data.md), ...

    Returns
    -------
    TrainResult

    Raises
    ------
    mpitrain.errors.UsageError
        Options that do not fit together or do not apply to the model.
    mpitrain.checkpoint.CheckpointInterrupted
        A signal made every rank save the checkpoint and stop.
    """
    return run_train(
        TrainOptions(data=data, model=model, out=out, **options),
        comm=comm,
        quiet=quiet,
        threads_per_rank=threads_per_rank,
    )


def run_train(
    options: TrainOptions,
    *,
    comm: Intracomm | None = None,
    quiet: bool = False,
    threads_per_rank: int | None = None,
    model_on_every_rank: bool = True,
) -> TrainResult:
    """:func:`train` with its options already made. Collective over ``comm``.

    ``model_on_every_rank=False`` (``mpitrain train``, which only saves the
    model from rank 0): where the fit allows it
    (:func:`~mpitrain.workflow._streamed.model_on_root_alone`: an exact
    linear, polynomial or PCA model streamed on several ranks), the model is built on rank 0
    alone and the other ranks never import scikit-learn, about a second of
    CPU each (and, on a parallel file system, thousands of file lookups
    per rank); their result's ``model`` and ``estimator`` are ``None``.
    """
    # What this thread needs while scikit-learn loads in the background, first:
    # two threads importing one package can meet in its import cycles and see a
    # half-initialised module.
    for name in _MAIN_THREAD_MODULES:
        importlib.import_module(name)
    # scikit-learn's import (about a second) overlaps MPI start-up and the file
    # checks; not at all on a rank that will not build the model (told by the
    # launcher before MPI starts: a guess that only saves time, the protocol
    # is decided below from the run's size).
    if _may_skip_import(options, comm, model_on_every_rank):
        importing = start_ahead(lambda: None, "mpitrain-import")
    else:
        importing = _start_import(options.module)
    reader = None
    try:
        run = Run(comm, quiet=quiet, threads_per_rank=threads_per_rank)
        alone = model_on_root_alone(options, run.size, model_on_every_rank)
        # Before any row is read: no output may destroy an input or fail after the fit.
        check_paths(run.comm, "train", *train_paths(options))
        # The fit's loops save and resume inside this context; the file goes
        # once the model and the report are written.
        with _checkpointing(options, run):
            from mpitrain.data import open_rows

            reader = open_rows(
                options.data,
                x=options.x,
                y=options.y,
                sample_weight=options.sample_weight,
                comm=run.comm,
                # Text labels are let through for models that may classify
                # (a regressor refuses them when it fits); the exact models
                # learn from sums of the target, which must be numbers: the
                # file's dtype is refused before any row is read.
                labels=options.learns_from != "statistics",
                root_share=root_share_of(options, run.size, alone=alone),
            )
            # Each path begins reading on a background thread (while scikit-learn loads):
            # averaging and comparing need the rows in memory; exact least squares streams them.
            if options.rows_in_memory:
                estimator, model, seconds, extra = fit_on_rows(
                    reader, options, run, importing
                )
            else:
                estimator, seconds, extra = fit_from_statistics(
                    reader, options, run, importing, alone=alone
                )
                model = None if estimator is None else estimator.estimator_
            report = _save_and_report(
                options, run, reader, estimator, model, seconds, extra
            )
    finally:
        # Never leave a thread inside an import or HDF5: it can hang the exit.
        importing.join()
        if reader is not None:
            reader.close()
    return TrainResult(model=model, estimator=estimator, report=report)


def root_share_of(
    options: TrainOptions, ranks: int, *, alone: bool = False
) -> float | Callable[[int, int], float]:
    """Rank 0's share of the rows for ``options`` on ``ranks`` ranks (``root_share``). Pure.

    The given ``options.root_share``; else, for a model fitted from
    streamed statistics, :func:`~mpitrain.workflow._streamed.default_root_share`
    of the data's rows and features (a function that :func:`mpitrain.data.open_rows`
    calls with them), whose work of rank 0's alone includes importing
    scikit-learn when the other ranks skip it (``alone``); else 1, the
    balanced partition: the models that hold their rows have no measured
    work of rank 0's alone to offset.
    """
    if options.root_share is not None:
        return options.root_share
    if options.rows_in_memory:
        return 1.0
    extra = ROOT_EXTRA_SECONDS + (ROOT_IMPORT_SECONDS if alone else 0.0)
    return functools.partial(default_root_share, ranks=ranks, extra_seconds=extra)


def _may_skip_import(
    options: TrainOptions, comm: Intracomm | None, model_on_every_rank: bool
) -> bool:
    """Whether this process, by its launcher's rank, will not build the model. Local.

    Only for options that leave the model on rank 0 alone on any number
    of ranks above one, a rank other than 0, and ``COMM_WORLD`` (the
    launcher's ranks are its ranks).
    """
    from mpitrain.comm import env_rank, mpi

    if not model_on_root_alone(options, 2, model_on_every_rank) or env_rank() == 0:
        return False
    return comm is None or comm == mpi().COMM_WORLD


def _start_import(module: str) -> threading.Thread:
    """Import ``module`` in a background thread. Local.

    scikit-learn takes about a second to import; reading data releases the
    GIL, so the import overlaps with the read instead of preceding it.  The
    calling thread must not import anything that imports scikit-learn until
    the thread is joined (see :data:`_MAIN_THREAD_MODULES`).
    """
    # A failed import is met again, and reported, by make_estimator.
    return start_ahead(
        functools.partial(importlib.import_module, module), "mpitrain-import"
    )


def _checkpointing(options: TrainOptions, run: Run):
    """The checkpoint context of ``options.checkpoint`` (a no-op without it). Entering it is collective."""
    if options.checkpoint is None:
        return contextlib.nullcontext()
    from mpitrain.checkpoint import checkpointing

    seconds = (
        CHECKPOINT_SECONDS
        if options.checkpoint_seconds is None
        else options.checkpoint_seconds
    )
    return checkpointing(
        options.checkpoint,
        every=options.checkpoint_every,
        seconds=seconds,
        resume=options.resume,
        fingerprint=run_fingerprint(options, run.comm),
        comm=run.comm,
        log=run.say,
    )


def train_paths(options: TrainOptions) -> tuple[list[Named], list[Named]]:
    """The inputs and outputs of a ``train`` run, for :func:`check_paths`. Local (HDF5 metadata).

    Inputs: the data files and the files their datasets reach through
    links.  Outputs: ``out``, ``report``, ``checkpoint`` (also read when
    resuming: it must be none of the others) and the ``plots`` folder.
    """
    datasets = (options.x, options.y, options.sample_weight)
    inputs = data_inputs(options.data, datasets)
    outputs = [
        Named("--out", options.out),
        Named("--report", options.report),
        Named("--checkpoint", options.checkpoint),
        Named("--plots", options.plots, folder=True),
    ]
    return inputs, outputs


#: Options that change what ``train`` computes: a checkpoint made with other
#: values belongs to another run.  Output paths and progress options do not.
RESULT_OPTIONS = (
    "model",
    *SHORTCUTS,
    "x",
    "y",
    "sample_weight",
    "strategy",
    "rounds",
    "compare",
    "drop_missing",
    "impute",
    "test_size",
    "cv",
    "seed",
    "shuffle",
    "root_share",
)


def run_fingerprint(options: TrainOptions, comm: Intracomm) -> dict:
    """What makes a checkpoint belong to this ``train`` run. Collective over ``comm``.

    Every option that changes the result (:data:`RESULT_OPTIONS`, the
    model's ``params``) and the data: the files in row order and, for each
    file read (data files and what their datasets link to), its size,
    modification time and :func:`mpitrain.data.content_digest` (the
    datasets' layout and a strided sample of its bytes, so that a rewrite
    that keeps the size and the time, ``cp -p`` or ``touch -r``, is seen
    where the sample falls).  The digests are split over the ranks (file
    ``i`` on rank ``i % size``) and gathered: the result is the same on
    every rank.  A file that cannot be read gets ``None`` (reading it says
    why).

    The number of ranks is not part of it: the loops whose saved state is
    per rank (streamed statistics, SGD rounds, the cascade's first-pass
    layers) refuse another number themselves; the L-BFGS fits and the
    cascade's feedback passes resume on any number.
    """
    from mpitrain.comm import allgather_object
    from mpitrain.data import content_digest, fingerprint_files

    datasets = [options.x, options.y, options.sample_weight]
    files = fingerprint_files(options.data, datasets)
    rank, size = comm.Get_rank(), comm.Get_size()
    mine = {}
    for i, entry in enumerate(files):
        if i % size == rank and entry["size"] is not None:
            # Any failure (h5py raises RuntimeError for some names) gives None:
            # a rank that raised here would leave the others in the allgather.
            try:
                mine[entry["path"]] = content_digest(
                    entry["path"], datasets if entry["via"] is None else ()
                )
            except Exception:
                mine[entry["path"]] = None
    digests: dict = {}
    for part in allgather_object(mine, comm):
        digests.update(part)
    fingerprint: dict = {
        "command": "train",
        **{name: getattr(options, name) for name in RESULT_OPTIONS},
        "param": sorted(options.params.items()),
        "data files": [e["path"] for e in files if e["via"] is None],
    }
    for entry in files:
        path = entry["path"]
        fingerprint[f"size of {path}"] = entry["size"]
        fingerprint[f"modification time of {path}"] = entry["mtime_ns"]
        fingerprint[f"contents of {path}"] = digests.get(path)
    return fingerprint


def _save_and_report(
    options: TrainOptions,
    run: Run,
    reader: RowReader,
    estimator,
    model,
    seconds: dict,
    extra: dict,
) -> dict | None:
    """Save the model (and the report) from rank 0; the report on rank 0. Collective."""
    from mpitrain.comm import gather_object
    from mpitrain.data import write_json
    from mpitrain.report import peak_memory_bytes

    mine = {
        "rank": run.rank,
        "rows": reader.stop - reader.start,
        "row_range": [reader.start, reader.stop],
        "slice_bytes": reader.nbytes,
        "seconds": seconds,
        "peak_memory_bytes": peak_memory_bytes(),
    }
    per_rank = gather_object(mine, run.comm)

    written: dict = {}

    def save_model():
        from mpitrain.model_io import save_model as save_model_file

        tic = time.perf_counter()
        # skops, not pickle: loading it cannot run code (docs/trust.md).
        save_model_file(model, options.out)
        written["seconds"] = time.perf_counter() - tic

    run.on_root(f"writing the model to {options.out}", save_model)
    run.say(f"model saved to {options.out}")
    built: dict = {}

    def build_and_write_report() -> None:
        # Rank 0 alone, between collectives: inside the step, so that its
        # failure reaches every rank.
        report = _train_report(options, run, reader, estimator, model, per_rank)
        # Rank 0's time alone writing the model (its imports included), after the fit.
        report["write_seconds"] = written.get("seconds")
        report.update(extra)
        if options.report:
            write_json(options.report, report)
        built["report"] = report

    run.on_root(
        f"writing the report to {options.report}"
        if options.report
        else "making the report",
        build_and_write_report,
    )
    if options.report:
        run.say(f"report written to {options.report}")
    return built.get("report")


def _train_report(
    options: TrainOptions,
    run: Run,
    reader: RowReader,
    estimator,
    model,
    per_rank: list[dict],
) -> dict:
    """The run report of rank 0. Local (the MPI library's name aside)."""
    from mpitrain.base import strategy_name
    from mpitrain.comm import mpi_library_version
    from mpitrain.workflow._results import final_step

    phases = list(per_rank[0]["seconds"])
    last = final_step(model)
    return {
        "mpitrain_version": __version__,
        "command": "train",
        # One file: its path, as always; several: the list, in row order.
        "data": (
            os.path.abspath(reader.paths[0])
            if len(reader.paths) == 1
            else [os.path.abspath(p) for p in reader.paths]
        ),
        "model": options.model,
        "estimator": type(model).__name__,
        "params": {k: v for k, v in estimator.get_params().items() if k != "comm"},
        "strategy": strategy_name(estimator),
        "averaging": getattr(estimator, "averaging_", None),
        "cascade": getattr(estimator, "cascade_", None),
        "ranks": run.size,
        "layout": run.layout,
        "mpi_library": mpi_library_version(),
        "rows": reader.n_rows,
        "features": reader.n_features,
        # Rank 0's share of the partition (per_rank holds the row ranges).
        "root_share": reader.root_share,
        "seconds": {p: max(r["seconds"][p] for r in per_rank) for p in phases},
        "classes": getattr(model, "classes_", None),
        "wall_seconds": run.progress.elapsed(),
        "peak_memory_bytes_per_rank": [r["peak_memory_bytes"] for r in per_rank],
        "per_rank": per_rank,
        "coef": getattr(last, "coef_", None),
        "intercept": getattr(last, "intercept_", None),
        "model_file": os.path.abspath(options.out),
    }
