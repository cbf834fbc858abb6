"""Exact least squares from streamed sufficient statistics, with checkpoints.

Each rank streams its rows through a bounded ring of blocks into a
:class:`mpitrain.stats.StatisticsAccumulator`; one reduction gives the
exact global system.  Memory does not grow with the rows.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mpitrain.workflow._options import TrainOptions, make_estimator
from mpitrain.workflow._run import Run

if TYPE_CHECKING:  # pragma: no cover
    from mpitrain.data import RowBlock, RowReader
    from mpitrain.stats import StatisticsAccumulator

__all__ = [
    "fit_from_statistics",
    "model_on_root_alone",
    "ROOT_IMPORT_SECONDS",
    "add_block",
    "default_root_share",
    "preload_writer_on_root",
    "ROOT_EXTRA_SECONDS",
    "ROW_SECONDS",
]

#: Seconds of work rank 0 does alone that a smaller share of rows lets it
#: do while the others still read: importing skops to write the model
#: (0.43 s measured on the 2-core development machine, quiet).
ROOT_EXTRA_SECONDS = 0.45

#: Seconds rank 0 alone spends importing scikit-learn and the model's module
#: when the other ranks skip it (:func:`model_on_root_alone`): 1.12-1.24 s
#: for ``sklearn.linear_model`` and ``mpitrain.linear_model`` on the 2-core
#: development machine, quiet (``sklearn.decomposition``: about the same).
ROOT_IMPORT_SECONDS = 1.2

#: Models whose streamed exact fit can leave the model on rank 0 alone: the
#: other ranks only add rows to statistics, which needs no scikit-learn (the
#: polynomial map comes from rank 0, as a plain ``PolynomialMap``).
ROOT_ALONE_MODELS = ("linear", "polynomial", "ridge", "lasso", "elasticnet", "pca")

#: Seconds to read and accumulate one float64 row on one core, per feature
#: and per feature squared: ``d * (a + b * d)`` (measured on the 2-core
#: development machine with one BLAS thread per rank: about 2 µs a row at
#: d = 100, 0.3 µs at d = 20, 9 µs at d = 300).
ROW_SECONDS = (15e-9, 0.05e-9)


def model_on_root_alone(options: TrainOptions, ranks: int, every_rank: bool) -> bool:
    """Whether a streamed exact fit leaves the model on rank 0 alone. Pure.

    Only when the caller does not need the model on every rank
    (``every_rank=False``: ``mpitrain train``, which saves it from rank 0),
    on more than one rank, for a model of :data:`ROOT_ALONE_MODELS` whose
    rows stream.  Then the other ranks never import scikit-learn: they
    read, drop rows with missing values if asked, accumulate, save and
    resume checkpoints, and take part in the reduction; rank 0 checks the
    parameters, solves and writes.  The same on every rank.
    """
    return (
        not every_rank
        and ranks > 1
        and options.model in ROOT_ALONE_MODELS
        and not options.rows_in_memory
    )


def fit_from_statistics(
    reader: RowReader,
    options: TrainOptions,
    run: Run,
    importing: threading.Thread,
    *,
    alone: bool = False,
) -> tuple[Any, dict[str, float], dict]:
    """Fit an exact least-squares model from streamed statistics. Collective over ``run.comm``.

    ``importing`` is the thread importing the model's module: plain
    features are accumulated while it runs, and the parameters are checked
    as soon as it is done (a typo must not cost a long read).  ``alone``
    (:func:`model_on_root_alone`): rank 0 alone builds the model and checks
    the parameters, and tells the others its verdict while they read; the
    other ranks import nothing of scikit-learn (``importing`` is not
    theirs to join) and get no model.

    Returns
    -------
    estimator
        The fitted mpitrain estimator (``None`` on the ranks other than 0
        when ``alone``).
    seconds : dict
        Read, compute, communicate and solve times of this rank.
    extra : dict
        Entries for the run report (``dropped_rows`` with ``drop_missing``).

    On rank 0, what writes the model is imported on a thread while rows
    are still read (:func:`preload_writer_on_root`).
    """
    writer: list[threading.Thread] = []
    # Streamed through a bounded ring of blocks: memory does not grow with the rows.
    reader.begin(keep_rows=False)
    try:
        return _fit_streamed(reader, options, run, importing, writer, alone)
    finally:
        # Never leave a thread inside an import: it can hang the exit.
        for thread in writer:
            thread.join()


def _fit_streamed(
    reader: RowReader,
    options: TrainOptions,
    run: Run,
    importing: threading.Thread,
    writer: list[threading.Thread],
    alone: bool,
) -> tuple[Any, dict[str, float], dict]:
    """:func:`fit_from_statistics` once reading has begun; ``writer`` gets rank 0's preload thread. Collective."""
    from mpitrain.comm import RootFlag, bcast_object, collective_check
    from mpitrain.stats import (
        StatisticsAccumulator,
        check_gram_fits,
        contribute_statistics,
    )

    comm = run.comm
    estimator = None
    # Whether this rank builds the model (every rank, or rank 0 alone).
    builds = not alone or run.rank == 0
    bad_parameters: BaseException | None = None
    verdict = None
    if options.model == "polynomial":
        # The feature map comes from the model, so it must exist before the first row.
        verdict = RootFlag(comm) if alone else None
        mapping = None
        if builds:
            importing.join()
            estimator, mapping, bad_parameters = _checked_estimator(
                options, comm, verdict, n_inputs=reader.n_features
            )
        _raise_bad_parameters(
            verdict is not None and verdict.wait(), bad_parameters, comm
        )
        if alone:
            # Rank 0's map is a plain mpitrain.stats.PolynomialMap: the others
            # apply it without the model (or scikit-learn).
            mapping = bcast_object(mapping, comm)
        transform, n_features = mapping
    else:
        # Plain features: accumulate while scikit-learn is still loading.
        transform, n_features = None, reader.n_features
    # One target column, or none (PCA: its scatter alone).
    n_targets = 0 if reader.names["y"] is None else 1
    # Refuse a Gram matrix that cannot fit before allocating it.
    check_gram_fits(comm, n_features, n_targets)
    stats = StatisticsAccumulator(
        reader.n_features,
        n_targets,
        transform=transform,
        n_features=n_features,
        # The largest rank's rows: every rank chooses the compiled Gram kernel
        # (and loads it up front) or BLAS alike, so rank 0's smaller share is
        # not left on the slower path.
        expected_rows=reader.largest_share,
    )
    update = run.progress.counter(
        f"reading and accumulating {reader.path} (rank 0)", reader.stop - reader.start
    )
    if estimator is not None:
        # The polynomial map is built (it imports scikit-learn's preprocessing):
        # from here this thread imports nothing until the writer is joined.
        writer.extend(preload_writer_on_root(run))
    compute_seconds = 0.0
    if alone and verdict is None:
        # Rank 0's verdict on the parameters (1: bad), looked for while reading.
        verdict = RootFlag(comm)
    tic = time.perf_counter()
    blocks = reader.stream()
    if options.checkpoint is not None:
        # Parameters first (on every rank, or rank 0 alone tells the others),
        # then blocks in lockstep with checkpoints.
        if builds and estimator is None:
            importing.join()
            estimator, bad_parameters = _checked_and_preloaded(
                options, comm, verdict, run, writer
            )
        _raise_bad_parameters(
            verdict is not None and verdict.wait(), bad_parameters, comm
        )
        reader, stats, compute_seconds = _accumulate_with_checkpoints(
            reader, stats, run, update, options.drop_missing
        )
        blocks = ()
    rejected = 0  # rank 0's verdict when the model is on it alone
    with collective_check(comm, f"reading {reader.path}"):
        try:
            for block in blocks:
                if builds and estimator is None and not importing.is_alive():
                    # Check the parameters as soon as possible: a typo must not cost a long read.
                    estimator, bad_parameters = _checked_and_preloaded(
                        options, comm, verdict, run, writer
                    )
                    if bad_parameters is not None:
                        break
                elif not builds and verdict.poll():
                    break  # rank 0 found bad parameters: it says which below
                t0 = time.perf_counter()
                add_block(stats, block, options.drop_missing)
                compute_seconds += time.perf_counter() - t0
                update(block.offset + block.n_rows)
            if builds and estimator is None and bad_parameters is None:
                # Every row was read before scikit-learn was imported (small data):
                # rank 0 imports the writer now, before the reduction, while the other
                # ranks still accumulate their larger share, not after it.
                importing.join()
                estimator, bad_parameters = _checked_and_preloaded(
                    options, comm, verdict, run, writer
                )
        finally:
            if verdict is not None:
                # Rank 0's broadcast is posted before this block's agreement on
                # every path (the same order of collectives on every rank): a
                # read that failed before the check sends "stop".
                if run.rank == 0 and not verdict.sent:
                    verdict.send(1)
                rejected = verdict.wait()
    _raise_bad_parameters(rejected, bad_parameters, comm)
    # Before anything else imports on this thread (see preload_writer_on_root); on
    # rank 0 this is where an import not done yet is waited for.
    for thread in writer:
        thread.join()
    streamed = time.perf_counter() - tic
    run.say(
        f"read and accumulated {reader.n_rows:,} rows x {reader.n_features} features on {run.size} rank(s) "
        f"in {streamed:.2f} s (rank 0: reading {reader.read_seconds:.2f} s, computing {compute_seconds:.2f} s, "
        "overlapped)"
    )
    local = stats.result()
    extra: dict = {}
    if options.drop_missing:
        from mpitrain.data._missing import DroppedRows

        # Rows of the slice not in the statistics were dropped (also across a resume).
        slice_rows = reader.stop - reader.start
        dropped = DroppedRows.gather(
            slice_rows - int(local.count), slice_rows, comm, missing_by_column=[]
        )
        run.say(str(dropped))
        extra["dropped_rows"] = dropped.to_dict()
    if builds:
        run.say(
            f"fitting {type(estimator).__name__} exactly (statistics reduced over {run.size} rank(s))"
        )
    if not builds:
        timings = contribute_statistics(local, comm)
    elif alone:
        timings = estimator.fit_statistics(local, every_rank=False).timings_
    else:
        timings = estimator.fit_statistics(local).timings_
    seconds = {
        "read": reader.read_seconds,
        **timings,
        "local_compute": compute_seconds,
    }
    run.say(
        "fitted: communicate {communicate:.3f} s, solve {solve:.3f} s".format(**seconds)
    )
    return estimator, seconds, extra


def _checked_and_preloaded(
    options: TrainOptions,
    comm: Any,
    verdict: Any,
    run: Run,
    writer: list[threading.Thread],
) -> tuple[Any, BaseException | None]:
    """:func:`_checked_estimator` without a feature map; good parameters start rank 0's writer import. Local."""
    estimator, _, bad_parameters = _checked_estimator(options, comm, verdict)
    if bad_parameters is None:
        writer.extend(preload_writer_on_root(run))
    return estimator, bad_parameters


def _checked_estimator(
    options: TrainOptions, comm: Any, verdict: Any, *, n_inputs: int | None = None
) -> tuple[Any, Any, BaseException | None]:
    """``(estimator, feature map, None)`` or ``(None, None, error)`` for the options; rank 0 sends ``verdict``. Local.

    With a ``verdict`` (the model on rank 0 alone) this runs on rank 0
    only, and its checks must be all of the fit's own (``_check_params``
    too): the other ranks learn of a failure only through the verdict.
    With ``n_inputs``, the model's ``feature_map(n_inputs)`` is made here
    too (``None`` otherwise).
    """
    try:
        estimator = make_estimator(options, comm)
        estimator._check_params()
        mapping = None if n_inputs is None else estimator.feature_map(n_inputs)
    except Exception as exc:
        if verdict is not None:
            verdict.send(1)
        return None, None, exc
    if verdict is not None:
        verdict.send(0)
    return estimator, mapping, None


def _raise_bad_parameters(
    rejected: bool, error: BaseException | None, comm: Any
) -> None:
    """Raise the parameters' error alike on every rank. Collective over ``comm`` when ``rejected``.

    ``rejected``: rank 0's verdict (the model on rank 0 alone), the same on
    every rank; its error is then broadcast.  Otherwise every rank checked
    the parameters itself and raises its own ``error``, if any.
    """
    if rejected:
        from mpitrain.comm import bcast_object

        error = bcast_object(_sendable(error), comm)
    if error is not None:
        raise error


def _sendable(error: BaseException | None) -> BaseException | None:
    """``error`` if it pickles, else a :class:`~mpitrain.errors.UsageError` with its message. Pure."""
    import pickle

    from mpitrain.errors import UsageError

    if error is None:
        return None
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:
        return UsageError(f"{type(error).__name__}: {error}")
    return error


def default_root_share(
    n_rows: int, n_features: int, ranks: int, extra_seconds: float = ROOT_EXTRA_SECONDS
) -> float:
    """Rank 0's share of the rows of a streamed exact fit when none is given. Pure.

    Balances rank 0's work alone before the reduction
    (:data:`ROOT_EXTRA_SECONDS`, ``E``) against the reading and
    accumulating of the rows (:data:`ROW_SECONDS`: ``T`` on one core for
    all rows): rank 0 takes ``s`` times the rows of each other rank with
    ``s = 1 - P E / (T + E)``, so that every rank is done at
    ``(T + E) / P`` instead of rank 0 at ``T / P + E`` (the cost model in
    docs/performance.md).  ``extra_seconds`` is ``E``: with the model on
    rank 0 alone (:func:`model_on_root_alone`) it adds
    :data:`ROOT_IMPORT_SECONDS`, scikit-learn's import, which the other
    ranks then skip.  Rounded down to a hundredth, at least 0; 1 on one
    rank.  A function of the data's size and the rank count only, so the
    same on every rank.
    """
    if ranks < 2:
        return 1.0
    a, b = ROW_SECONDS
    total = n_rows * n_features * (a + b * n_features)
    share = 1.0 - ranks * extra_seconds / (total + extra_seconds)
    return max(0.0, math.floor(share * 100) / 100)


def preload_writer_on_root(run: Run) -> list[threading.Thread]:
    """On rank 0, a started thread importing what writes the model (:func:`mpitrain.model_io.preload_writer`). Local.

    Rank 0 alone writes the model after the fit while the other ranks
    wait; its import (skops, about 0.4 s of CPU) is done here instead,
    while rows are still streamed, in the time that a root share below 1
    (``root_share``, docs/data.md) frees on rank 0.  Started only once the
    model's module is imported, and joined before this thread imports
    anything else: two threads importing scikit-learn at once can see a
    half-initialised module.  A failure is left to the save, which says it.
    """
    if run.rank != 0:
        return []
    from mpitrain.model_io import preload_writer
    from mpitrain.utils.threads import start_ahead

    return [start_ahead(preload_writer, "mpitrain-model-writer")]


def add_block(
    stats: StatisticsAccumulator, block: RowBlock, drop_missing: bool
) -> None:
    """Add a streamed block to the statistics, without its rows with missing values if asked. Local."""
    import numpy as np

    X, y, w = block.X, block.y, block.sample_weight
    if drop_missing:
        from mpitrain.data._missing import missing_row_mask

        keep = ~missing_row_mask(X, y)
        if not keep.all():
            X, w = X[keep], None if w is None else w[keep]
            y = None if y is None else y[keep]
    Y = np.empty((X.shape[0], 0)) if y is None else y[:, None]
    stats.add(X, Y, w, first_row=block.start)


def _accumulate_with_checkpoints(
    reader: RowReader,
    stats: StatisticsAccumulator,
    run: Run,
    update: Callable[[int], None],
    drop: bool = False,
) -> tuple[RowReader, StatisticsAccumulator, float]:
    """Stream this rank's rows into ``stats`` with checkpoints at block boundaries. Collective.

    The blocks are the reader's plan (fixed by the file's chunks, never by
    timing), taken in lockstep: after each round every rank has added one
    block (or none, once its rows are done), and a checkpoint step may save
    every rank's partial statistics and rows done.  Resuming builds a
    reader for the rows not done yet, so they are not read again; the
    statistics are then the same bit for bit as without the interruption.
    The number of ranks must match the checkpoint's.

    Returns ``(reader, stats, compute_seconds)``: the reader actually used.
    """
    import numpy as np

    from mpitrain.checkpoint import CheckpointError, checkpoint_loop
    from mpitrain.comm import allreduce_minmax, collective_check

    comm = run.comm
    key = {
        "rows": reader.n_rows,
        "features": reader.n_features,
        "statistics_features": stats.n_features,
        "block_rows": reader.block_rows,
    }
    loop = checkpoint_loop(
        "statistics",
        key=key,
        comm=comm,
        mode="per_rank",
        what="streamed statistics",
        unit="block",
    )
    first = 0  # rows of this rank's slice added before this run
    if loop.resumed:
        saved = loop.state
        with collective_check(comm, "resuming the streamed statistics"):
            if (saved["start"], saved["stop"]) != (reader.start, reader.stop):
                raise CheckpointError(
                    f"the checkpoint's rows {saved['start']}:{saved['stop']} of this rank are "
                    f"not its rows now ({reader.start}:{reader.stop})"
                )
        stats, first = saved["accumulator"], int(saved["rows_done"])
        original = reader
        original.close()
        reader = original.from_row(original.start + first)
    done = first
    compute = 0.0
    feed = reader.stream()
    try:
        while True:
            block = None
            with collective_check(comm, f"reading {reader.path}"):
                block = next(feed, None)
                if block is not None:
                    tic = time.perf_counter()
                    add_block(stats, block, drop)
                    compute += time.perf_counter() - tic
                    done = first + block.offset + block.n_rows
                    update(done)
            if (
                allreduce_minmax(np.array([0.0 if block is None else 1.0]), comm)[1][0]
                == 0
            ):
                break
            # The checkpoint pickles the state at once; the accumulator's work
            # buffer is left out of its pickle.
            loop.step(
                lambda: {
                    "start": reader.start - first,
                    "stop": reader.stop,
                    "rows_done": done,
                    "accumulator": stats,
                }
            )
    finally:
        if first:
            reader.close()
    return reader, stats, compute
