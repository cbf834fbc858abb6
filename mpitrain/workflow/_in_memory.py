"""Training on rows held in memory: clean, split, cross-validate, fit, test, plot, compare.

The path of every model that needs its rows (iterative solvers, local
fits, the SVM cascade) and of the options that do (``impute``,
``test_size``, ``cv``, ``plots``, ``compare``).  Every step is collective
over the run's communicator; the test rows are chosen by global row id,
so they are the same at any rank count.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from mpitrain.workflow._options import (
    DEFAULT_ROWS_MEMORY_COPIES,
    ROWS_MEMORY_COPIES,
    TrainOptions,
    make_estimator,
)
from mpitrain.workflow._results import (
    coefficient_plot,
    evaluation_plots,
    final_step,
    format_evaluation,
    local_coefficients,
    model_coefficients,
    model_parameters,
    relative_gap,
)
from mpitrain.workflow._run import Run
from mpitrain.workflow._streamed import preload_writer_on_root

if TYPE_CHECKING:  # pragma: no cover
    from mpitrain.data import RowReader, RowSlice

__all__ = ["fit_on_rows", "prepare_rows", "saved_model", "shuffle_in_memory"]


def saved_model(estimator, imputer=None):
    """What ``train`` saves: the fitted scikit-learn model, after the imputer if any. Local.

    ``estimator`` and ``imputer`` are fitted mpitrain estimators; the result
    is ``estimator.estimator_`` or ``Pipeline([imputer, model])`` of plain
    scikit-learn objects, the same on every rank.
    """
    if imputer is None:
        return estimator.estimator_
    from sklearn.pipeline import make_pipeline

    return make_pipeline(imputer.estimator_, estimator.estimator_)


def fit_on_rows(
    reader: RowReader, options: TrainOptions, run: Run, importing: threading.Thread
) -> tuple[Any, Any, dict[str, float], dict]:
    """Fit a model from rows held in memory (and, with ``compare``, both strategies). Collective.

    Returns
    -------
    estimator
        The fitted mpitrain estimator.
    model
        What is saved: :func:`saved_model` (with the imputer of ``impute``).
    seconds : dict
        Read and fit times of this rank, and the estimator's own phases.
    extra : dict
        Entries for the run report (dropped rows, split, imputation,
        cross-validation, test scores, plots, comparison).
    """
    from mpitrain.comm import collective_check
    from mpitrain.data import check_rows_fit
    from mpitrain.report import format_bytes

    # Refuse rows that cannot fit before reading them, not when the kernel kills a rank.
    cache_mb = (
        options.params.get("cache_size", 200) if options.model in ("svc", "svr") else 0
    )
    cache = (
        int(cache_mb * 2**20) if isinstance(cache_mb, (int, float)) else 0
    )  # a bad value is refused later
    need, limit = check_rows_fit(
        reader,
        run.comm,
        copies=ROWS_MEMORY_COPIES.get(options.model, DEFAULT_ROWS_MEMORY_COPIES),
        fixed_bytes=cache,
        what=f"--model {options.model}",
    )
    run.say(
        f"--model {options.model} holds its rows in memory: about {format_bytes(need)} per rank"
        + (f" (a rank may use {format_bytes(limit)})" if limit is not None else "")
    )
    reader.begin()
    importing.join()
    labels = reader.y is not None and reader.y.dtype.kind in "OUSiub"
    estimator = make_estimator(options, run.comm, labels=labels)
    # Rank 0 imports what writes the model while its rows are still read
    # (a cold read waits on the disk), not after the fit while the others wait.
    writer = preload_writer_on_root(run)
    try:
        with collective_check(run.comm, f"reading {reader.path}"):
            rows = reader.result()
    finally:
        # Before this thread imports anything else (see preload_writer_on_root).
        for thread in writer:
            thread.join()
    run.say(
        f"read {rows.n_rows:,} rows x {rows.n_features} features on {run.size} rank(s) "
        f"(rank 0: {reader.read_seconds:.2f} s)"
    )
    shuffle_seconds = None
    if options.shuffle is not None:
        tic = time.perf_counter()
        rows = shuffle_in_memory(rows, options.shuffle, run)
        shuffle_seconds = time.perf_counter() - tic
        # The rows in the file's order are no longer needed: without the
        # reader's reference the fit's peak is the copies checked above.
        reader.X = reader.y = reader.sample_weight = None
    rows, extra = prepare_rows(rows, options, run)
    if shuffle_seconds is not None:
        extra["shuffle"] = {"seed": options.shuffle}
    imputer = extra.pop("imputer", None)
    test_rows = extra.pop("test_rows", None)
    if options.cv:
        extra["cross_validation"] = _cross_validate(estimator, rows, options, run)
    from mpitrain.base import strategy_name  # scikit-learn: not at import

    strategy = strategy_name(estimator)
    run.say(
        f"fitting {type(estimator).__name__} ({strategy}) across {run.size} rank(s)"
    )
    tic = time.perf_counter()
    estimator.fit(rows.X, rows.y, sample_weight=rows.sample_weight)
    seconds = {"read": reader.read_seconds, "fit": time.perf_counter() - tic}
    if shuffle_seconds is not None:
        seconds["shuffle"] = shuffle_seconds
    # The estimator's own phases (local compute, communicate, solve) where it measures them.
    seconds.update(
        {
            k: v
            for k, v in getattr(estimator, "timings_", {}).items()
            if k not in seconds
        }
    )
    run.say(f"fitted in {seconds['fit']:.2f} s")
    model = saved_model(estimator, imputer)
    # The rows are imputed already: score the model without the imputer, which
    # also holds when scikit-learn dropped an all-missing column.
    extra.update(
        _test_and_plot(estimator, estimator.estimator_, rows, test_rows, options, run)
    )
    if options.compare:
        other = "average" if strategy == "exact" else "exact"
        rival = make_estimator(options, run.comm, strategy=other, labels=labels)
        tic = time.perf_counter()
        rival.fit(rows.X, rows.y, sample_weight=rows.sample_weight)
        seconds[f"fit_{other}"] = time.perf_counter() - tic
        pair = {strategy: estimator, other: rival}
        extra["compare"] = _compare(
            pair["exact"], pair["average"], rows, run, seconds, strategy, other
        )
    return estimator, model, seconds, extra


def shuffle_in_memory(rows: RowSlice, seed: int, run: Run) -> RowSlice:
    """The rows after :func:`mpitrain.data.shuffle_rows` with ``seed``. Collective.

    Rank ``r`` then holds rows ``row_range(n, P, r)`` of the shuffled order:
    exactly the rows it would read from the parts of ``mpitrain shuffle``
    with the same seed, so every later step (the test split by global row,
    the folds, the fit) sees the same rows as training on those parts.
    """
    from mpitrain.data import shuffle_rows

    tic = time.perf_counter()
    moved, start, stop = shuffle_rows(
        {"X": rows.X, "y": rows.y, "sample_weight": rows.sample_weight},
        rows.start,
        rows.n_rows,
        seed=seed,
        comm=run.comm,
    )
    run.say(
        f"shuffled the rows across {run.size} rank(s) (seed {seed}) in "
        f"{time.perf_counter() - tic:.2f} s"
    )
    return dataclasses.replace(
        rows,
        X=moved["X"],
        y=moved["y"],
        sample_weight=moved["sample_weight"],
        start=start,
        stop=stop,
    )


def prepare_rows(
    rows: RowSlice, options: TrainOptions, run: Run
) -> tuple[RowSlice, dict]:
    """``drop_missing``, ``impute`` and ``test_size`` on rows in memory. Collective.

    The test rows are chosen by global row id before any row is dropped, so
    they are the same at every rank count.

    Returns
    -------
    rows : RowSlice
        The training rows, cleaned (and imputed).
    extra : dict
        Report entries (``dropped_rows``, ``split``, ``imputed``), and
        ``imputer`` (the fitted mpitrain imputer) and ``test_rows`` (a
        RowSlice, imputed like the training rows) when there are some.
    """
    from mpitrain.model_selection import train_test_split_mask
    from mpitrain.preprocessing import SimpleImputer, drop_missing

    extra: dict = {}
    X, y, w = rows.X, rows.y, rows.sample_weight
    test = None
    if options.test_size:
        test = train_test_split_mask(
            len(X),
            rows.start,
            test_size=options.test_size,
            seed=options.seed,
            comm=run.comm,
        )
    if options.drop_missing or options.impute:
        # impute fills features; a row without a target is dropped either way.
        checked = X if options.drop_missing else np.zeros((len(X), 0))
        _, _, _, dropped, keep = drop_missing(
            checked, y, None, comm=run.comm, return_kept=True
        )
        X, y = X[keep], None if y is None else y[keep]
        w = None if w is None else w[keep]
        test = None if test is None else test[keep]
        run.say(str(dropped))
        extra["dropped_rows"] = dropped.to_dict()
    test_rows = None
    if test is not None:
        test_rows = (X[test], y[test], None if w is None else w[test])
        X, y, w = X[~test], y[~test], None if w is None else w[~test]
        counts = [int(c) for c in _sum_over_ranks([len(y), int(test.sum())], run)]
        run.say(
            f"split: {counts[0]:,} training and {counts[1]:,} test rows (by global row id, seed {options.seed})"
        )
        extra["split"] = {
            "test_size": options.test_size,
            "seed": options.seed,
            "train_rows": counts[0],
            "test_rows": counts[1],
        }
    if options.impute:
        import warnings

        # Fitted on the training rows only: the test rows must not inform the model.
        imputer = SimpleImputer(strategy=options.impute, comm=run.comm).fit(X)
        missing = int(
            _sum_over_ranks([np.isnan(np.asarray(X, dtype=np.float64)).sum()], run)[0]
        )
        with warnings.catch_warnings():
            # scikit-learn's note on all-missing columns is in the report.
            warnings.simplefilter("ignore")
            X = imputer.transform(X)
            if test_rows is not None:
                test_rows = (imputer.transform(test_rows[0]), *test_rows[1:])
        run.say(
            f"imputed {missing:,} missing feature values of the training rows with the global {options.impute}"
        )
        extra["imputer"] = imputer
        extra["imputed"] = {
            "strategy": options.impute,
            "training_values": missing,
            "statistics": imputer.statistics_,
        }
    if test_rows is not None:
        X_test, y_test, w_test = test_rows
        extra["test_rows"] = dataclasses.replace(
            rows, X=X_test, y=y_test, sample_weight=w_test
        )
    return dataclasses.replace(rows, X=X, y=y, sample_weight=w), extra


def _sum_over_ranks(values, run: Run) -> np.ndarray:
    """Sums of a few numbers over the ranks, identical everywhere. Collective (one reduction)."""
    from mpitrain.comm import allreduce_identical

    return allreduce_identical(np.asarray(values, dtype=np.float64), run.comm)


def _cross_validate(estimator, rows: RowSlice, options: TrainOptions, run: Run) -> dict:
    """``cv`` folds on the training rows. Collective."""
    from mpitrain.model_selection import cross_validate

    # With impute the rows are imputed already (by all training rows' statistics).
    run.say(
        f"{options.cv}-fold cross-validation of {type(estimator).__name__} on {run.size} rank(s)"
    )
    result = cross_validate(
        estimator,
        rows.X,
        rows.y,
        cv=options.cv,
        seed=options.seed,
        sample_weight=rows.sample_weight,
        # A batch job stops on a failed fold, on every rank, instead of
        # reporting NaN.
        error_score="raise",
        comm=run.comm,
    )
    name = result["scoring"][0]
    scores = result["test_score"]
    run.say(
        f"cross-validation ({name}): "
        + ", ".join(f"{s:.4f}" for s in scores)
        + f" (mean {result['mean'][name]:.4f}, std {result['std'][name]:.4f})"
    )
    return {
        k: v
        for k, v in result.items()
        if k not in ("estimator", "fit_errors", "score_errors")
    }


def _test_and_plot(
    estimator,
    model,
    rows: RowSlice,
    test_rows: RowSlice | None,
    options: TrainOptions,
    run: Run,
) -> dict:
    """Scores on the test rows (``test_size``) and the plots (``plots``). Collective.

    ``model`` predicts on the prepared (cleaned and imputed) rows: the saved
    model without its imputer.  The coefficient plot sets each rank's own fit
    of ``estimator`` next to it.
    """
    from mpitrain.metrics import evaluate_estimator

    out: dict = {}
    evaluated = (
        test_rows if test_rows is not None else (rows if options.plots else None)
    )
    if evaluated is None:
        return out
    which = "test" if test_rows is not None else "training"
    result = evaluate_estimator(
        model,
        evaluated.X,
        evaluated.y,
        sample_weight=evaluated.sample_weight,
        comm=run.comm,
    )
    out[f"{which}_scores"] = {k: v for k, v in result.items() if k != "histograms"}
    if not run.quiet:  # the same on every rank: the step below is collective
        # Rank 0 alone formats, between collectives: its failure must reach every rank.
        run.on_root(
            "formatting the evaluation",
            lambda: run.say(
                f"scores on the {which} rows:\n" + format_evaluation(result)
            ),
        )
    if options.plots:
        name = type(estimator).__name__
        files = evaluation_plots(
            result,
            model,
            evaluated.X,
            evaluated.y,
            run.comm,
            options.plots,
            title=f"{name} ({which} rows)",
        )
        coef = model_coefficients(estimator)
        if coef is not None:
            local = local_coefficients(
                estimator, rows.X, rows.y, rows.sample_weight, run.comm
            )
            files += coefficient_plot(
                coef,
                local,
                estimator.estimator_,
                None,
                run.comm,
                options.plots,
                title=name,
            )
        run.say(f"plots written: {', '.join(files)}")
        out["plots"] = files
    return out


def _compare(
    exact, average, rows: RowSlice, run: Run, seconds: dict, chosen: str, other: str
) -> dict:
    """Coefficient and score gap between the two strategies. Collective."""
    from mpitrain.metrics import accuracy, regression_scores
    from mpitrain.report import format_table

    # The fitted model's last step: a polynomial model's estimator_ is a pipeline.
    last_exact = final_step(exact.estimator_)
    a, b = model_parameters(exact), model_parameters(average)
    if hasattr(exact, "classes_") or hasattr(last_exact, "classes_"):
        metric = "accuracy"
        score = {
            name: accuracy(rows.y, model.predict(rows.X), comm=run.comm)
            for name, model in (("exact", exact), ("average", average))
        }
    else:
        metric = "r2"
        score = {
            name: regression_scores(
                rows.y, model.predict(rows.X), rows.sample_weight, comm=run.comm
            )["r2"]
            for name, model in (("exact", exact), ("average", average))
        }
    result = {
        "metric": metric,
        "score_exact": score["exact"],
        "score_average": score["average"],
        "score_difference": score["exact"] - score["average"],
        "max_abs_coef_difference": float(np.abs(a - b).max()),
        "max_relative_coef_difference": relative_gap(b, a),
        "seconds": {chosen: seconds["fit"], other: seconds[f"fit_{other}"]},
        "scored_on": "training rows (all ranks)",
    }
    run.say(
        "strategy comparison (scores on the training rows):\n"
        + format_table(
            ["strategy", metric, "fit s"],
            [
                ["exact", f"{score['exact']:.6f}", f"{result['seconds']['exact']:.3f}"],
                [
                    "average",
                    f"{score['average']:.6f}",
                    f"{result['seconds']['average']:.3f}",
                ],
            ],
        )
        + f"\nmax coefficient difference {result['max_abs_coef_difference']:.3g} "
        f"({result['max_relative_coef_difference']:.2e} of the largest exact coefficient)"
    )
    return result
