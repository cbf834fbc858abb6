"""Exact linear grids by fold subtraction: every (candidate, fold) of a grid from one pass over the rows.

Interface (what ``mpitrain.model_selection._search`` calls in large mode)::

    linear_grid_scores(X, y, *, model, param_grid, fold_ids, n_folds,
                       scoring="r2", sample_weight=None, error_score=nan,
                       comm=None) -> dict                       # Collective
    fit_from_statistics(model, params, total, *, comm=None)    # Collective
    LINEAR_GRID_MODELS, LINEAR_GRID_SCORINGS

- ``model``: ``"linear"``, ``"ridge"``, ``"lasso"`` or ``"elasticnet"``
  (the keys of :data:`LINEAR_GRID_MODELS`), or an unfitted mpitrain
  ``LinearRegression``/``Ridge``/``Lasso``/``ElasticNet`` whose parameters
  are the base of every candidate (its ``comm`` is ignored).
- ``param_grid``: the candidates, one dict of parameter values per
  candidate, as ``list(sklearn.model_selection.ParameterGrid(grid))`` gives.
- ``fold_ids``: this rank's rows' global fold (0 .. ``n_folds`` - 1), e.g.
  from :func:`mpitrain.model_selection.fold_ids`.
- ``scoring``: ``"r2"`` (also ``None``), ``"neg_mean_squared_error"`` or
  ``"neg_root_mean_squared_error"``; any other name is a ``UsageError``.
- The result, identical on every rank: ``params``, ``scoring``,
  ``test_scores`` (n_candidates × K), ``fit_times`` and ``score_times``
  (n_candidates × K, seconds of each solve and score, on the rank that did
  it), ``errors`` (n_candidates lists of K messages or ``None``),
  ``n_test`` and ``n_train`` (K,), ``statistics_time`` (seconds of the pass
  over the rows and its reduction, the largest over the ranks),
  ``fold_statistics`` (K :class:`~mpitrain.stats.LinearStatistics`) and
  ``total`` (the statistics of all rows: pass it to
  :func:`fit_from_statistics` to refit the best candidate without reading a
  row again).

How: each rank makes, in one pass over its rows, the sufficient statistics
of each fold (count, weight, mean and centred scatter of ``[X | y]``, with
:class:`~mpitrain.stats.StatisticsAccumulator`); one reduction of the means
and one of the K scatter matrices pool them
(:func:`~mpitrain.stats.allreduce_statistics_many`).  Fold k's training
statistics are the other folds' merged with the pairwise formula of
:func:`~mpitrain.stats.combine_statistics` (centred scatter plus the
between-fold term, every term positive semi-definite), so nothing is
subtracted and nothing cancels, however large the means.  Each (candidate,
fold) is then solved from statistics by the estimator's own
``fit_statistics`` (the same solver as ``fit``: Cholesky for ridge,
scikit-learn's coordinate descent on the d-row surrogate for lasso and
elastic net), the tasks dealt round-robin over the ranks, and scored on fold
k exactly from fold k's statistics:

    SSE_k = S_yy − 2 wᵀS_xy + wᵀS_xx w + W_k (ȳ_k − b − wᵀx̄_k)²

(computed as the quadratic form ``vᵀ S_k v`` with ``v = [−w, 1]``).  R² is
``1 − SSE_k / S_yy``, the mean squared error ``SSE_k / W_k``.  With
``sample_weight`` both the fits and the scores are weighted, as in
:func:`mpitrain.model_selection.cross_validate`.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Mapping, Sequence
from numbers import Integral, Real
from typing import TYPE_CHECKING, Any

import numpy as np

from mpitrain.comm import (
    allgather_object,
    allreduce_sum,
    collective_check,
    get_comm,
    library_comm,
    self_comm,
)
from mpitrain.errors import UsageError
from mpitrain.linear_model import ElasticNet, Lasso, LinearRegression, Ridge
from mpitrain.model_selection._split import warn_fit_failures
from mpitrain.stats import (
    LinearStatistics,
    StatisticsAccumulator,
    allreduce_statistics_many,
    check_gram_fits,
    combine_statistics,
)
from mpitrain.utils.validation import agree_rows, check_local_rows

if TYPE_CHECKING:  # pragma: no cover
    from mpi4py.MPI import Intracomm

__all__ = [
    "LINEAR_GRID_MODELS",
    "LINEAR_GRID_SCORINGS",
    "linear_grid_scores",
    "fit_from_statistics",
    "held_out_sse",
]

#: ``model`` names of the exact linear grid and their mpitrain estimators.
LINEAR_GRID_MODELS = {
    "linear": LinearRegression,
    "ridge": Ridge,
    "lasso": Lasso,
    "elasticnet": ElasticNet,
}

#: Scorings computed exactly from a fold's statistics (scikit-learn's names and signs).
LINEAR_GRID_SCORINGS = ("r2", "neg_mean_squared_error", "neg_root_mean_squared_error")

# Rows gathered per block when a fold's rows are scattered through a rank's
# slice: a few MB, so the copy stays in cache next to the accumulator's own.
_BLOCK_BYTES = 4 << 20
_MIN_BLOCK_ROWS = 2048


def _resolve_model(model: Any) -> tuple[type, dict[str, Any]]:
    """The estimator class and the base parameters of every candidate. Pure."""
    if isinstance(model, str):
        if model not in LINEAR_GRID_MODELS:
            raise UsageError(
                f"the exact linear grid fits {', '.join(LINEAR_GRID_MODELS)}; got model {model!r}"
            )
        return LINEAR_GRID_MODELS[model], {}
    classes = tuple(LINEAR_GRID_MODELS.values())
    # type() rather than isinstance: a subclass may fit in a way statistics do not capture.
    if type(model) not in classes:
        raise UsageError(
            "the exact linear grid fits mpitrain's LinearRegression, Ridge, Lasso and "
            f"ElasticNet; got {type(model).__name__}"
        )
    params = model.get_params(deep=False)
    params.pop("comm", None)
    return type(model), params


def _check_candidates(
    cls: type, base: Mapping[str, Any], param_grid: Any
) -> list[dict[str, Any]]:
    """The candidates as a list of dicts, their names checked. Pure.

    Raises :class:`UsageError` for what the grid cannot mean here; a bad
    *value* (say a negative ``alpha``) is left to the fit, which records it
    in the candidate's row.
    """
    if isinstance(param_grid, Mapping) or not isinstance(param_grid, Sequence):
        raise UsageError(
            "param_grid must be a list of candidates, one dict of parameter values each "
            "(e.g. list(sklearn.model_selection.ParameterGrid(grid)))"
        )
    valid = set(cls().get_params(deep=False)) - {"comm"}
    candidates = []
    for index, params in enumerate(param_grid):
        if not isinstance(params, Mapping):
            raise UsageError(
                f"candidate {index} of param_grid is a {type(params).__name__}, not a dict"
            )
        unknown = sorted(set(params) - valid)
        if unknown:
            raise UsageError(
                f"candidate {index}: {cls.__name__} has no parameter {', '.join(map(repr, unknown))}; "
                f"it has: {', '.join(sorted(valid))}"
            )
        listed = [
            name for name, value in params.items() if isinstance(value, list | tuple)
        ]
        if listed:
            raise UsageError(
                f"candidate {index} gives a list for {', '.join(listed)}: param_grid holds one value "
                "per parameter per candidate (expand a grid with sklearn's ParameterGrid)"
            )
        if {**base, **params}.get("strategy", "exact") != "exact":
            raise UsageError(
                "the exact linear grid solves from pooled statistics: strategy must be 'exact'"
            )
        candidates.append(dict(params))
    if not candidates:
        raise UsageError("param_grid holds no candidate")
    return candidates


def _check_scoring(scoring: Any) -> str:
    """The scoring name, or a UsageError for one statistics cannot give. Pure."""
    if scoring is None:
        return "r2"
    if not isinstance(scoring, str) or scoring not in LINEAR_GRID_SCORINGS:
        raise UsageError(
            f"scoring {scoring!r} cannot be computed from sufficient statistics: the exact linear "
            f"grid scores by {', '.join(LINEAR_GRID_SCORINGS)}; use the general search (a fit "
            "per candidate and fold) for other scorings"
        )
    return scoring


def _check_fold_ids(fold_ids: Any, n_rows: int, n_folds: int) -> np.ndarray:
    """This rank's fold ids as int64, one per row, in 0 .. n_folds - 1. Local."""
    folds = np.asarray(fold_ids)
    if folds.shape != (n_rows,) or (folds.size and folds.dtype.kind not in "iu"):
        raise ValueError(
            f"fold_ids must be {n_rows} integers (one per row of X), got shape {folds.shape} "
            f"of {folds.dtype}"
        )
    folds = folds.astype(np.int64, copy=False)
    if folds.size and (folds.min() < 0 or folds.max() >= n_folds):
        raise ValueError(
            f"fold_ids must lie in 0 .. {n_folds - 1}; found {folds.min()} .. {folds.max()}"
        )
    return folds


def _fold_statistics(
    X: np.ndarray,
    y: np.ndarray,
    sample_weight: np.ndarray | None,
    folds: np.ndarray,
    n_folds: int,
) -> list[LinearStatistics]:
    """Sufficient statistics of this rank's rows of each fold, in one pass. Local.

    A fold whose rows are contiguous is added as a view; otherwise its rows
    are gathered in blocks of a few MB, so memory stays bounded whatever the
    slice size.
    """
    n, d = X.shape
    Y = y.reshape(-1, 1)
    block = max(_MIN_BLOCK_ROWS, _BLOCK_BYTES // (8 * (d + 2)))
    parts = []
    for fold in range(n_folds):
        acc = StatisticsAccumulator(d, 1)
        rows = np.flatnonzero(folds == fold)
        if rows.size and rows[-1] - rows[0] + 1 == rows.size:
            part = slice(int(rows[0]), int(rows[-1]) + 1)
            acc.add(
                X[part], Y[part], None if sample_weight is None else sample_weight[part]
            )
        else:
            for start in range(0, rows.size, block):
                take = rows[start : start + block]
                acc.add(
                    X[take],
                    Y[take],
                    None if sample_weight is None else sample_weight[take],
                )
        parts.append(acc.result())
    return parts


def _no_rows(like: LinearStatistics) -> LinearStatistics:
    """Statistics of no rows, shaped as ``like``. Pure."""
    k = like.mean.size
    return LinearStatistics(
        0, 0.0, np.zeros(k), np.zeros((k, k)), like.n_features, like.n_inputs
    )


def held_out_sse(stats: LinearStatistics, coef: np.ndarray, intercept: float) -> float:
    """Weighted sum of squared errors of ``x·coef + intercept`` on the rows of ``stats``. Pure.

    ``vᵀ S v + W (ȳ − b − coef·x̄)²`` with ``v = [−coef, 1]`` and ``S`` the
    centred scatter of ``[x, y]``: the residuals' scatter about their mean
    plus their mean's share, both non-negative (a rounding-level negative
    quadratic form is clipped to zero).
    """
    d = stats.n_features
    v = np.empty(d + 1)
    v[:d] = -np.ravel(coef)
    v[d] = 1.0
    quadratic = max(float(v @ stats.scatter @ v), 0.0)
    offset = float(stats.y_mean[0] - intercept - np.ravel(coef) @ stats.x_mean)
    return quadratic + stats.weight * offset * offset


def _score(scoring: str, stats: LinearStatistics, sse: float) -> float:
    """The held-out score from a fold's statistics and its SSE, with scikit-learn's edge cases. Pure."""
    if scoring == "r2":
        if stats.count < 2:
            return (
                math.nan
            )  # scikit-learn: R² is not well-defined with less than two samples
        total = float(stats.scatter[stats.n_features, stats.n_features])
        if total == 0.0:
            return 1.0 if sse == 0.0 else 0.0  # scikit-learn's force_finite
        return 1.0 - sse / total
    if not stats.weight > 0:
        return math.nan
    mse = sse / stats.weight
    return -mse if scoring == "neg_mean_squared_error" else -math.sqrt(mse)


def _describe_failure(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def linear_grid_scores(
    X: Any,
    y: Any,
    *,
    model: Any,
    param_grid: Sequence[Mapping[str, Any]],
    fold_ids: Any,
    n_folds: int,
    scoring: str | None = "r2",
    sample_weight: Any = None,
    error_score: float | str = np.nan,
    comm: Intracomm | None = None,
) -> dict[str, Any]:
    """Held-out scores of every candidate on every fold, from one pass over the rows.

    Collective over ``comm``: every rank calls it with its own rows
    (possibly none) and the same other arguments.  The scores equal
    scikit-learn's ``GridSearchCV`` with the same candidates, the same folds
    (as explicit ``(train, test)`` index arrays) and the same scoring on all
    ranks' rows together: to rounding for linear and ridge regression, to
    the coordinate-descent tolerance for lasso and elastic net.

    Parameters
    ----------
    X : array-like of shape (n_local_rows, n_features)
    y : array-like of shape (n_local_rows,)
    model : {"linear", "ridge", "lasso", "elasticnet"} or estimator
        The model, or an unfitted mpitrain ``LinearRegression``, ``Ridge``,
        ``Lasso`` or ``ElasticNet`` whose parameters every candidate starts
        from (``strategy`` must be ``"exact"``).
    param_grid : list of dict
        One dict of parameter values per candidate.
    fold_ids : array-like of int of shape (n_local_rows,)
        The global fold of each of this rank's rows, 0 .. ``n_folds`` - 1.
    n_folds : int
        K, at least 2; every fold must hold a row on some rank.
    scoring : {"r2", "neg_mean_squared_error", "neg_root_mean_squared_error"} or None, default="r2"
        ``None`` means ``"r2"``.  Other scorings (classification metrics,
        mean absolute error) cannot come from the statistics and raise
        :class:`~mpitrain.errors.UsageError`.
    sample_weight : array-like of shape (n_local_rows,), default=None
        Weights of the fits and of the scores.
    error_score : float or "raise", default=nan
        The score of a (candidate, fold) whose fit fails, with a
        ``FitFailedWarning`` as scikit-learn gives; ``"raise"`` raises the
        first failure on every rank instead.  If every fit fails, a
        ``ValueError`` is raised, as scikit-learn does.
    comm : mpi4py.MPI.Intracomm, default=None
        ``None`` means ``COMM_WORLD``.

    Returns
    -------
    dict
        The same on every rank: ``params`` (list of dict), ``scoring``,
        ``test_scores``, ``fit_times``, ``score_times`` (arrays of shape
        (n_candidates, n_folds); times in seconds of each solve and score,
        which exclude the pass over the rows), ``errors`` (per candidate, a
        list of K messages or ``None``), ``n_test`` and ``n_train`` (int64
        arrays of shape (n_folds,)), ``statistics_time`` (seconds of the
        pass and its reduction, the largest over the ranks),
        ``fold_statistics`` (list of K ``LinearStatistics``) and ``total``
        (``LinearStatistics`` of all rows; see :func:`fit_from_statistics`).
        The pooled statistics may differ in the last bit between ranks;
        the scores and times do not.

    Raises
    ------
    UsageError
        A model, grid or scoring the statistics cannot serve (raised on
        every rank before any communication).
    ValueError
        Bad rows or fold ids on any rank (agreed: the same error on every
        rank), an empty fold, or every fit failed.
    """
    cls, base = _resolve_model(model)
    candidates = _check_candidates(cls, base, param_grid)
    scoring = _check_scoring(scoring)
    if not isinstance(n_folds, Integral) or isinstance(n_folds, bool) or n_folds < 2:
        raise UsageError(f"n_folds must be an integer of at least 2, got {n_folds!r}")
    n_folds = int(n_folds)
    if not (isinstance(error_score, Real) or error_score == "raise"):
        raise UsageError(
            f"error_score must be a number or 'raise', got {error_score!r}"
        )

    # Resolved after the argument checks, so a usage error needs no MPI.
    with library_comm(get_comm(comm)) as lib:
        size, rank = lib.Get_size(), lib.Get_rank()
        tic = time.perf_counter()
        template = cls(**base)
        with collective_check(lib, "checking the input"):
            X, y, w = check_local_rows(
                template, X, y, sample_weight, target="continuous"
            )
            folds = _check_fold_ids(fold_ids, X.shape[0], n_folds)
        agree_rows(lib, X, w, estimator=template)
        # K fold statistics, their reduction buffer and up to K training sums beside one fit's 5.
        check_gram_fits(lib, X.shape[1], 1, copies=2 * n_folds + 5)
        with collective_check(lib, "computing the fold statistics"):
            parts = _fold_statistics(X, y, w, folds, n_folds)
        fold_stats = allreduce_statistics_many(parts, lib)
        del parts
        n_test = np.array([s.count for s in fold_stats], dtype=np.int64)
        if (n_test == 0).any():
            raise ValueError(
                f"folds {np.flatnonzero(n_test == 0).tolist()} hold no row on any rank: "
                f"every one of the {n_folds} folds needs a row"
            )
        total = combine_statistics(fold_stats)
        statistics_time = time.perf_counter() - tic

        n_candidates = len(candidates)
        # Scores, fit times, score times; then each rank's statistics time.
        numbers = np.zeros(3 * n_candidates * n_folds + size)
        scores, fit_times, score_times = numbers[: 3 * n_candidates * n_folds].reshape(
            3, n_candidates, n_folds
        )
        numbers[3 * n_candidates * n_folds + rank] = statistics_time
        failures: dict[tuple[int, int], str] = {}
        first_failure: BaseException | None = None
        caught: list[tuple[type[Warning], str]] = []
        training: dict[int, LinearStatistics] = {}
        with collective_check(lib, "solving the linear grid"):
            # Round-robin over (candidate, fold): a rank's share mixes alphas, whose
            # coordinate-descent costs differ, and the folds of each one.
            for task in range(rank, n_candidates * n_folds, size):
                c, k = divmod(task, n_folds)
                if k not in training:
                    training[k] = combine_statistics(
                        [s for j, s in enumerate(fold_stats) if j != k]
                    )
                estimator = cls(**{**base, **candidates[c], "comm": self_comm()})
                start = time.perf_counter()
                try:
                    with warnings.catch_warnings(record=True) as seen:
                        warnings.simplefilter("always")
                        estimator.fit_statistics(training[k])
                    caught += [(m.category, str(m.message)) for m in seen]
                except Exception as exc:
                    fit_times[c, k] = time.perf_counter() - start
                    failures[(c, k)] = _describe_failure(exc)
                    scores[c, k] = math.nan
                    first_failure = first_failure or exc
                    continue
                fit_times[c, k] = time.perf_counter() - start
                start = time.perf_counter()
                fitted = estimator.estimator_
                sse = held_out_sse(
                    fold_stats[k], fitted.coef_, float(fitted.intercept_)
                )
                scores[c, k] = _score(scoring, fold_stats[k], sse)
                score_times[c, k] = time.perf_counter() - start
        # Each entry was filled by one rank and is zero on the others: the sum is exact.
        allreduce_sum(numbers, lib)
        gathered = allgather_object((failures, sorted(set(caught), key=str)), lib)

    errors: list[list[str | None]] = [[None] * n_folds for _ in candidates]
    for rank_failures, _ in gathered:
        for (c, k), message in rank_failures.items():
            errors[c][k] = message
    seen_warnings: set = set()
    for _, rank_warnings in gathered:
        for category, message in rank_warnings:
            if (category, message) not in seen_warnings:
                seen_warnings.add((category, message))
                warnings.warn(message, category, stacklevel=2)
    failed = [
        (c, k) for c in range(n_candidates) for k in range(n_folds) if errors[c][k]
    ]
    if failed:
        _report_failures(
            failed, errors, candidates, error_score, n_folds, first_failure
        )
        for c, k in failed:
            scores[c, k] = error_score
    return {
        "params": candidates,
        "scoring": scoring,
        "test_scores": scores.copy(),
        "fit_times": fit_times.copy(),
        "score_times": score_times.copy(),
        "errors": errors,
        "n_test": n_test,
        "n_train": n_test.sum() - n_test,
        "statistics_time": float(numbers[3 * n_candidates * n_folds :].max()),
        "fold_statistics": fold_stats,
        "total": total,
    }


def _report_failures(
    failed: list[tuple[int, int]],
    errors: list[list[str | None]],
    candidates: list[dict[str, Any]],
    error_score: float | str,
    n_folds: int,
    local_failure: BaseException | None,
) -> None:
    """Raise or warn about failed fits as scikit-learn's search does, alike on every rank. Local.

    ``errors`` is the gathered table, the same on every rank, so every rank
    raises (or warns) the same; the local exception, where this rank has
    one, is chained for its traceback.
    """
    if error_score == "raise":
        c, k = failed[0]
        raise ValueError(
            f"fitting candidate {c} {candidates[c]} on fold {k} failed: {errors[c][k]}"
        ) from local_failure
    warn_fit_failures(
        (errors[c][k] for c, k in failed),
        len(candidates) * n_folds,
        error_score,
        local_failure,
    )


def fit_from_statistics(
    model: Any,
    params: Mapping[str, Any],
    total: LinearStatistics,
    *,
    comm: Intracomm | None = None,
):
    """Refit a candidate on all rows from the pooled statistics, reading no row.

    Collective over ``comm`` (the estimator's ``fit_statistics``): rank 0
    solves from ``total`` (the ``"total"`` of :func:`linear_grid_scores`),
    the other ranks contribute no rows, and every rank gets the same model.

    Parameters
    ----------
    model : str or estimator
        As for :func:`linear_grid_scores`.
    params : dict
        The candidate's parameters (e.g. ``result["params"][best]``).
    total : LinearStatistics
        The statistics of all rows, the same on every rank.
    comm : mpi4py.MPI.Intracomm, default=None
        ``None`` means ``COMM_WORLD``; also set as the returned estimator's ``comm``.

    Returns
    -------
    estimator
        The fitted mpitrain estimator; its ``estimator_`` is the plain
        scikit-learn model, identical on every rank.
    """
    cls, base = _resolve_model(model)
    (params,) = _check_candidates(cls, base, [params])
    estimator = cls(**{**base, **params, "comm": comm})
    local = total if get_comm(comm).Get_rank() == 0 else _no_rows(total)
    return estimator.fit_statistics(local)
