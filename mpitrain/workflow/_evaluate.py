"""``evaluate`` and ``predict``: a saved model on every rank's rows.

Metrics are exact by reduction (``mpitrain.metrics``); predictions are
written in row order by every rank in turn
(``mpitrain.data.write_rows_in_order``).  No raw rows move between ranks.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from mpitrain.errors import UsageError
from mpitrain.workflow._paths import Named, check_paths, data_inputs
from mpitrain.workflow._results import (
    evaluation_plots,
    final_step,
    format_evaluation,
    is_classifier,
)
from mpitrain.workflow._run import Run

if TYPE_CHECKING:  # pragma: no cover
    from mpi4py.MPI import Intracomm

__all__ = ["load_model", "evaluate", "predict"]


def load_model(
    path: str | os.PathLike, comm: Intracomm, *, trust_pickle: bool = False
) -> Any:
    """Load a saved model on every rank, without running code from it. Collective over ``comm`` (one agreement).

    A model file is small next to the data; every rank reads it itself,
    with :func:`mpitrain.model_io.load_model`: a skops file holding only
    the types mpitrain writes, or a pickle/joblib file only with
    ``trust_pickle`` (``--trust-pickle``).  A refusal is raised on every
    rank alike.
    """
    from mpitrain.comm import collective_check
    from mpitrain.model_io import load_model as load_model_file

    model = None
    with collective_check(comm, f"loading the model {path}"):
        model = load_model_file(path, trusted=trust_pickle)
        # A transformer (PCA) predicts its transform.
        if not (hasattr(model, "predict") or hasattr(model, "transform")):
            raise ValueError(
                f"{path} holds a {type(model).__name__}, not a fitted model (no predict method)"
            )
    return model


def evaluate(
    model: str | os.PathLike,
    data: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    x: str = "X",
    y: str = "y",
    sample_weight: str | None = None,
    report: str | os.PathLike | None = None,
    plots: str | os.PathLike | None = None,
    comm: Intracomm | None = None,
    quiet: bool = False,
    threads_per_rank: int | None = None,
    trust_pickle: bool = False,
) -> dict:
    """Score a saved model exactly on every rank's rows, as ``mpitrain evaluate`` does. Collective over ``comm``.

    Regression: R², MSE, RMSE, MAE.  Classification: accuracy, per-class
    precision, recall and F1, confusion matrix, exact ROC AUC where the
    model gives scores.  Equal to scikit-learn's metrics on all rows.  Rank
    0 prints the table.

    Parameters
    ----------
    model : str or path
        A model file written by :func:`mpitrain.workflow.train` (skops).
    data : str, path or sequence of them
        HDF5 file(s) or glob patterns.
    x, y : str, default="X", "y"
        Feature and target datasets.
    sample_weight : str or None, default=None
        Dataset of row weights.
    report : str or path or None, default=None
        Write the metrics as JSON (rank 0).
    plots : str or path or None, default=None
        Write PNG plots to this folder (drawn on rank 0).
    comm : mpi4py.MPI.Intracomm or None, default=None
        ``None`` means ``COMM_WORLD``.
    quiet : bool, default=False
        No progress output (the table is printed all the same).
    threads_per_rank : int or None, default=None
        BLAS/OpenMP threads per rank.
    trust_pickle : bool, default=False
        Also load a pickle or joblib model file, which can run any code
        when loaded (``--trust-pickle``); see :func:`load_model`.

    Returns
    -------
    dict
        :func:`mpitrain.metrics.evaluate_estimator`'s result, the same on
        every rank.
    """
    from mpitrain.data import read_rows, write_json
    from mpitrain.metrics import evaluate_estimator

    run = Run(comm, quiet=quiet, threads_per_rank=threads_per_rank)
    if report or plots:
        # Before any work: the report and the plots must destroy no input.
        check_paths(
            run.comm,
            "evaluate",
            [Named("MODEL", model), *data_inputs(data, (x, y, sample_weight))],
            [Named("--report", report), Named("--plots", plots, folder=True)],
        )
    fitted = load_model(model, run.comm, trust_pickle=trust_pickle)
    from sklearn.base import ClusterMixin

    if isinstance(final_step(fitted), ClusterMixin) or not hasattr(fitted, "predict"):
        # The same file on every rank: refused everywhere alike.
        raise ValueError(
            f"{model} holds a {type(final_step(fitted)).__name__}, which predicts no target: "
            "evaluate scores predictions against --y; use 'mpitrain predict' for its "
            "transform or cluster labels"
        )
    rows = read_rows(
        data,
        x=x,
        y=y,
        sample_weight=sample_weight,
        comm=run.comm,
        labels=is_classifier(fitted),
    )
    if rows.n_rows == 0:
        # The count of all ranks: refused on every rank alike.
        raise ValueError(f"no rows to evaluate in {rows.path}")
    classes = getattr(final_step(fitted), "classes_", None)
    if is_classifier(fitted) and classes is not None:
        # Text against numbers would fail inside the metrics' sort, unexplained;
        # the file's dtype is the same on every rank.
        text_target = rows.y.dtype.kind in "OUS"
        if text_target != (np.asarray(classes).dtype.kind in "OUS"):
            shown = ", ".join(map(repr, np.asarray(classes)[:4].tolist()))
            raise ValueError(
                f"--y {y} holds {'text' if text_target else 'numeric'} labels, but the "
                f"model's classes are {'numbers' if text_target else 'text'} ({shown}"
                f"{', ...' if len(classes) > 4 else ''}): is it the model's target?"
            )
    run.say(
        f"evaluating {type(final_step(fitted)).__name__} on {rows.n_rows:,} rows across {run.size} rank(s)"
    )
    tic = time.perf_counter()
    result = evaluate_estimator(
        fitted, rows.X, rows.y, sample_weight=rows.sample_weight, comm=run.comm
    )
    seconds = time.perf_counter() - tic
    # Rank 0 alone formats and prints, between collectives: its failure
    # (a closed standard output, say) must reach every rank.
    run.on_root(
        "printing the evaluation", lambda: print(format_evaluation(result), flush=True)
    )
    files = []
    if plots:
        files = evaluation_plots(
            result,
            fitted,
            rows.X,
            rows.y,
            run.comm,
            plots,
            title=type(final_step(fitted)).__name__,
        )
        run.say(f"plots: {', '.join(files)}")
    if report:
        content = {
            "command": "evaluate",
            "model_file": os.path.abspath(model),
            "data": [os.path.abspath(p) for p in rows.paths or (rows.path,)],
            "ranks": run.size,
            "layout": run.layout,
            "seconds": seconds,
            "plots": files,
            "metrics": result,
        }
        run.on_root(f"writing {report}", lambda: write_json(report, content))
        run.say(f"report written to {report}")
    return result


def predict(
    model: str | os.PathLike,
    data: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    out: str | os.PathLike,
    x: str = "X",
    dataset: str = "prediction",
    scores: bool = False,
    original_order: bool = False,
    comm: Intracomm | None = None,
    quiet: bool = False,
    threads_per_rank: int | None = None,
    trust_pickle: bool = False,
) -> dict:
    """Predict every row with a saved model, as ``mpitrain predict`` does. Collective over ``comm``.

    Every rank predicts its own rows; the predictions land in one HDF5
    dataset in the row order of ``data``.  The file appears under its name
    only when every rank has succeeded.

    The parts of ``mpitrain shuffle`` hold ``row_id``, each row's number in
    the file that was shuffled: it is copied beside the predictions, or,
    with ``original_order``, the predictions travel back to those rows
    (one ``Alltoallv`` per round, :func:`mpitrain.data.move_rows`) and are
    written in the order of the file that was shuffled.

    Parameters
    ----------
    model : str or path
        A model file written by :func:`mpitrain.workflow.train` (skops).
    data : str, path or sequence of them
        HDF5 file(s) or glob patterns.
    out : str or path
        The output HDF5 file.
    x : str, default="X"
        Feature dataset.
    dataset : str, default="prediction"
        Name of the output dataset.
    scores : bool, default=False
        Also write class probabilities or decision values
        (``{dataset}_proba`` / ``{dataset}_decision``).
    original_order : bool, default=False
        ``data`` are all the parts of one shuffle: write the predictions in
        the original row order, by their ``row_id`` (``--original-order``).
    comm : mpi4py.MPI.Intracomm or None, default=None
        ``None`` means ``COMM_WORLD``.
    quiet : bool, default=False
        No progress output.
    threads_per_rank : int or None, default=None
        BLAS/OpenMP threads per rank.
    trust_pickle : bool, default=False
        Also load a pickle or joblib model file, which can run any code
        when loaded (``--trust-pickle``); see :func:`load_model`.

    Returns
    -------
    dict
        :func:`mpitrain.data.write_rows_in_order`'s summary of the file
        written.
    """
    from mpitrain.comm import collective_check
    from mpitrain.data import ROW_ID, move_rows, read_rows, write_rows_in_order
    from mpitrain.metrics import predict_local

    if (
        not dataset
        or dataset.startswith("/")
        or dataset.endswith("/")
        or "//" in dataset
    ):
        # h5py's own refusal would name neither the option nor come before predicting.
        raise UsageError(
            f"--dataset {dataset!r}: expected a dataset name such as 'prediction' "
            "(not empty, no leading, trailing or double '/')"
        )
    run = Run(comm, quiet=quiet, threads_per_rank=threads_per_rank)
    # Before any work: the predictions must overwrite neither the data nor the model.
    check_paths(
        run.comm,
        "predict",
        [Named("MODEL", model), *data_inputs(data, (x,))],
        [Named("--out", out)],
    )
    fitted = load_model(model, run.comm, trust_pickle=trust_pickle)
    # The same answer on every rank (rank 0 looks), so every rank reads alike.
    has_row_id = run.on_root(
        f"looking for {ROW_ID} in the data", lambda: _every_file_has(data, ROW_ID)
    )
    if original_order and not has_row_id:
        raise UsageError(
            f"--original-order: the data has no {ROW_ID!r} dataset in every file; "
            "it puts back in order the parts of 'mpitrain shuffle'"
        )
    written = (
        {dataset, f"{dataset}_proba", f"{dataset}_decision"} if scores else {dataset}
    )
    if has_row_id and not original_order and ROW_ID in written:
        # The parts' row ids are written beside the predictions, under that name.
        raise UsageError(
            f"--dataset {dataset}: the predictions would be overwritten by the "
            f"parts' {ROW_ID!r}, which is written beside them; choose another name"
        )
    rows = read_rows(data, x=x, y=ROW_ID if has_row_id else None, comm=run.comm)
    run.say(
        f"predicting {rows.n_rows:,} rows with {type(final_step(fitted)).__name__} on {run.size} rank(s)"
    )
    tic = time.perf_counter()
    columns: dict[str, np.ndarray] = {}
    with collective_check(run.comm, "predicting"):
        # Cluster labels for k-means; the components of every row for PCA.
        columns[dataset] = predict_local(
            fitted, rows.X, "predict" if hasattr(fitted, "predict") else "transform"
        )
        if scores:
            method = next(
                (
                    m
                    for m in ("predict_proba", "decision_function")
                    if hasattr(fitted, m)
                ),
                None,
            )
            if method is None:
                raise ValueError(
                    f"--scores: {type(final_step(fitted)).__name__} gives no scores"
                )
            columns[
                f"{dataset}_{'proba' if method == 'predict_proba' else 'decision'}"
            ] = predict_local(fitted, rows.X, method)
    if has_row_id:
        row_ids = np.asarray(rows.y, dtype=np.int64)
        if original_order:
            moved, _, _ = move_rows(
                columns,
                row_ids,
                rows.n_rows,
                comm=run.comm,
                what="putting the predictions back in the original order",
            )
            columns = {k: v for k, v in moved.items() if v is not None}
        else:
            columns[ROW_ID] = row_ids
    seconds = time.perf_counter() - tic
    info = write_rows_in_order(
        out,
        columns,
        comm=run.comm,
        total_rows=rows.n_rows,
        attrs={
            "model_file": os.path.abspath(model),
            "source": ", ".join(os.path.abspath(p) for p in rows.paths or (rows.path,)),
        },
    )
    run.say(
        f"predicted in {seconds:.2f} s; wrote {info['n_rows']:,} rows ({', '.join(columns)}) to {out}"
    )
    return info


def _every_file_has(data, name: str) -> bool:
    """Whether every file of ``data`` holds a dataset ``name``. Local (HDF5 metadata)."""
    import h5py

    from mpitrain.data import expand_paths

    try:
        for path in expand_paths(data):
            with h5py.File(path, "r") as f:
                if not isinstance(f.get(name), h5py.Dataset):
                    return False
    except Exception:
        return False  # a missing or broken file: reading the rows says why
    return True
