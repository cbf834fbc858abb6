"""Hyperparameter search that uses every rank, whatever the data size.

:class:`GridSearchCV` and :class:`RandomizedSearchCV` take scikit-learn's
parameters and give scikit-learn's fitted attributes (``cv_results_``,
``best_params_``, ``best_score_``, ``best_index_``, ``best_estimator_``),
on rows split across ranks.  Two ways to spread the work:

- **small** (every rank can hold all rows): the rows are gathered on every
  rank (they move, once), and the (candidate, fold) tasks are shared out
  among the ranks, balanced by expected cost (longest processing time
  first, in two waves: the first fold of every candidate, then the other
  folds with each candidate's measured first-fold time as its cost).  Each
  task is a plain scikit-learn fit in one process, so every score equals
  scikit-learn's ``GridSearchCV`` with the same splitter on the same rows.
- **large**: every candidate is fitted data-parallel, as ``train`` does,
  with :func:`mpitrain.model_selection.cross_validate` on folds by global
  row id (independent of the rank count).  With ``group_size`` smaller
  than the number of ranks, the ranks form groups (sub-communicators) and
  the groups run different candidates at once; each group then holds all
  rows (each rank holds its group's share of them).  The exact linear
  models (``Ridge``, ``Lasso``, ``ElasticNet``, ``LinearRegression``) get
  all their folds from one pass over the data
  (:mod:`mpitrain.model_selection._linear_grid`).

``fit(X, y, sample_weight=w)`` weights every fit (the folds' and the
refit's) and every held-out score, as scikit-learn's searches do from
release 1.7 on (before it, their scores were not weighted); the weights
travel with the rows.

``checkpoint=PATH`` records every finished (candidate, fold) result as it
completes (JSON, atomic writes), so a killed search resumes where it
stopped and gives the same table.
"""

from __future__ import annotations

import glob
import hashlib
import inspect
import math
import os
import time
import warnings
from collections import defaultdict
from collections.abc import Mapping, Sequence
from numbers import Integral
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.base import BaseEstimator, MetaEstimatorMixin, clone, is_classifier
from sklearn.utils.validation import check_is_fitted

from mpitrain.comm import (
    agree,
    allgather_object,
    allgatherv_array,
    allreduce_sum,
    bcast_object,
    collective_check,
    get_comm,
    library_comm,
    run_on_root,
    split_comm,
)
from mpitrain.data import (
    memory_limit,
    ranks_sharing_memory,
    read_json_object,
    rows_memory_bytes,
)
from mpitrain.errors import MpitrainError
from mpitrain.metrics import agree_labels, classification_scores, predict_local
from mpitrain.model_selection._split import (
    SCORINGS,
    _cross_validate_folds,
    _error_text,
    _fit_params,
    check_error_score,
    fold_ids,
    stratified_fold_ids,
    warn_fit_failures,
    warn_scoring_failures,
)
from mpitrain.utils.validation import agree_parameters, check_local_weights

if TYPE_CHECKING:  # pragma: no cover
    from mpi4py.MPI import Intracomm

__all__ = [
    "check_search_scoring",
    "GridSearchCV",
    "RandomizedSearchCV",
    "SEARCH_SCORINGS",
    "SEARCH_MODES",
    "SearchStopped",
    "balance_tasks",
    "search_results",
]

#: Scorings the search computes exactly in both modes (scikit-learn's names and signs).
SEARCH_SCORINGS = tuple(sorted(set(SCORINGS) | {"f1", "neg_log_loss"}))

#: Values of ``mode``.
SEARCH_MODES = ("auto", "small", "large")

#: Float64 copies of all rows a rank holds in small mode: the gathered rows,
#: a fold's training rows and the fit's own validated copy.
SMALL_MODE_COPIES = 3.0

#: Models whose large-mode folds come from sufficient statistics in one pass
#: (mpitrain class name -> the model name of ``linear_grid_scores``).
_LINEAR_GRID_MODELS = {
    "LinearRegression": "linear",
    "Ridge": "ridge",
    "Lasso": "lasso",
    "ElasticNet": "elasticnet",
}

#: Scorings the large mode computes from each fold's model (not in cross_validate's SCORINGS).
_OWN_SCORINGS = ("f1", "neg_log_loss")

#: Test hook: stop a rank after it finished this many tasks in one ``fit``
#: (the search then stops on every rank with :class:`SearchStopped`).
_STOP_AFTER_TASKS: int | None = None


class SearchStopped(MpitrainError):
    """The search stopped before its end (test hook); its checkpoint holds what finished."""


# ----------------------------------------------------------------------------
# Pure pieces


def balance_tasks(costs: Sequence[float], n_workers: int) -> list[list[int]]:
    """Share tasks among workers, longest expected cost first, each to the least loaded. Pure.

    Longest-processing-time first: at most 4/3 of the best makespan.  Ties
    go to the lowest task index and the lowest worker, so every rank that
    calls it with the same costs gets the same answer without talking.

    Returns
    -------
    list of list of int
        For each worker, the indices of its tasks, in the order to run them.
    """
    loads = [0.0] * n_workers
    plan: list[list[int]] = [[] for _ in range(n_workers)]
    order = sorted(range(len(costs)), key=lambda t: (-float(costs[t]), t))
    for task in order:
        worker = min(range(n_workers), key=lambda w: (loads[w], w))
        plan[worker].append(task)
        loads[worker] += float(costs[task])
    return plan


def _param_arrays(candidates: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """``param_<name>`` masked arrays as scikit-learn's search makes them. Pure."""
    n = len(candidates)
    by_name: dict[str, dict[int, Any]] = defaultdict(dict)
    for i, params in enumerate(candidates):
        for name, value in params.items():
            by_name[f"param_{name}"][i] = value
    out = {}
    for key, values in by_name.items():
        try:
            arr = np.array(list(values.values()))
        except ValueError:
            dtype = np.dtype(object)
        else:
            dtype = arr.dtype if arr.dtype.kind != "U" and arr.ndim == 1 else object
        masked = np.ma.MaskedArray(np.empty(n, dtype=dtype), mask=True)
        for i, value in values.items():
            masked[i] = value
        out[key] = masked
    return out


def search_results(
    candidates: Sequence[Mapping[str, Any]],
    scores: np.ndarray | Mapping[str, np.ndarray],
    fit_times: np.ndarray,
    score_times: np.ndarray,
) -> dict[str, Any]:
    """A scikit-learn-shaped ``cv_results_`` from per-(candidate, fold) arrays. Pure.

    ``scores``, ``fit_times`` and ``score_times`` have shape
    ``(n_candidates, n_splits)``; ranks, means and standard deviations are
    computed as scikit-learn's ``BaseSearchCV`` does (a failed candidate,
    NaN, ties with the worst).  ``scores`` as a mapping of scoring names
    to such arrays gives a multi-metric table (``mean_test_<name>``, ...).
    """
    from scipy.stats import rankdata

    results: dict[str, Any] = {}
    for key, array in (("fit_time", fit_times), ("score_time", score_times)):
        array = np.asarray(array, dtype=np.float64)
        means = np.average(array, axis=1)
        results[f"mean_{key}"] = means
        results[f"std_{key}"] = np.sqrt(
            np.average((array - means[:, None]) ** 2, axis=1)
        )
    results.update(_param_arrays(candidates))
    results["params"] = [dict(c) for c in candidates]
    named = scores.items() if isinstance(scores, Mapping) else [("score", scores)]
    for name, array in named:
        array = np.asarray(array, dtype=np.float64)
        for k in range(array.shape[1]):
            results[f"split{k}_test_{name}"] = array[:, k].copy()
        means = np.average(array, axis=1)
        results[f"mean_test_{name}"] = means
        results[f"std_test_{name}"] = np.sqrt(
            np.average((array - means[:, None]) ** 2, axis=1)
        )
        if np.isnan(means).all():
            ranks = np.ones_like(means, dtype=np.int32)
        else:
            filled = np.where(np.isnan(means), np.nanmin(means) - 1, means)
            ranks = rankdata(-filled, method="min").astype(np.int32)
        results[f"rank_test_{name}"] = ranks
    return results


def check_search_scoring(scoring: Any, refit: Any) -> list[str] | None:
    """A search's ``scoring`` and ``refit`` checked; its metrics if several. Pure.

    ``scoring``: ``None``, one of :data:`SEARCH_SCORINGS`, or a list (or
    tuple) of distinct ones, whose ``refit`` is one of them or ``False``;
    with one scoring, ``refit`` is ``True`` or ``False``.  Raises
    ``ValueError`` (scikit-learn's message for a multi-metric ``refit``,
    without its callable).  Returns the metrics of a multi-metric search,
    else ``None``.
    """
    if scoring is not None and not isinstance(scoring, (str, list, tuple)):
        raise ValueError(
            f"scoring must be a name, a list of names or None, got {scoring!r}"
        )
    names = list(scoring) if isinstance(scoring, (list, tuple)) else None
    unknown = [
        n for n in names or [scoring] if n is not None and n not in SEARCH_SCORINGS
    ]
    if unknown:
        raise ValueError(
            f"unknown scoring {', '.join(map(repr, unknown))}; choose from "
            f"{', '.join(SEARCH_SCORINGS)}"
        )
    if names is None:
        if not isinstance(refit, bool):
            raise ValueError(
                "refit must be True or False with one scoring (no callable)"
            )
        return None
    if len(set(names)) != len(names) or not names:
        raise ValueError(f"scoring must name distinct metrics, got {scoring!r}")
    if not (refit is False or refit in names):
        raise ValueError(
            "For multi-metric scoring, the parameter refit must be set to a "
            "scorer key to refit an estimator with the best parameter setting "
            "on the whole data and make the best_* attributes available for "
            "that metric. If this is not needed, refit should be set to False "
            f"explicitly. {refit!r} was passed."
        )
    return names


def _warn_about_failures(records: list[dict], n_fits: int, error_score: Any) -> None:
    """scikit-learn's FitFailedWarning (or its ValueError when every fit failed). Local."""
    warn_fit_failures(
        (r["error"] for r in records if r.get("error")), n_fits, error_score
    )


def _plain_estimator(estimator: Any) -> Any:
    """The unfitted scikit-learn estimator an mpitrain estimator (or pipeline) fits. Local.

    A plain scikit-learn estimator is returned cloned.
    """
    from sklearn.pipeline import Pipeline

    if isinstance(estimator, Pipeline):
        steps = [
            (name, step if step in (None, "passthrough") else _plain_estimator(step))
            for name, step in estimator.steps
        ]
        return Pipeline(steps)
    to_plain = getattr(estimator, "_unfitted_estimator", None)
    return to_plain() if to_plain is not None else clone(estimator)


def _comm_names(estimator: Any) -> list[str]:
    """The ``comm`` parameters of an mpitrain estimator or pipeline of them. Local."""
    return [
        name
        for name in estimator.get_params(deep=True)
        if name == "comm" or name.endswith("__comm")
    ]


def _on_comm(estimator: Any, params: Mapping[str, Any], comm: Intracomm) -> Any:
    """A fresh clone of ``estimator`` with ``params`` and ``comm`` on every mpitrain step. Local."""
    names = _comm_names(estimator)
    saved = estimator.get_params(deep=True)
    # clone deep-copies parameters, and a communicator cannot be copied.
    estimator.set_params(**dict.fromkeys(names))
    try:
        fresh = clone(estimator)
    finally:
        estimator.set_params(**{name: saved[name] for name in names})
    return fresh.set_params(**params, **dict.fromkeys(names, comm))


def _estimator_key(estimator: Any) -> dict:
    """The estimator's class and parameters, without communicators, as JSON. Local.

    What a checkpoint compares: a communicator's repr (its address) differs
    from run to run.
    """
    comms = set(_comm_names(estimator))
    params = {
        name: type(value).__name__ if hasattr(value, "get_params") else value
        for name, value in estimator.get_params(deep=True).items()
        if name not in comms and name != "steps"
    }
    return {
        "class": type(estimator).__name__,
        "params": {k: _json_value(v) for k, v in sorted(params.items())},
    }


def _json_value(value: Any) -> Any:
    """A parameter value as JSON can hold it (its repr otherwise). Pure."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    return repr(value)


# ----------------------------------------------------------------------------
# The checkpoint: one JSON file, plus one part file per rank while a run goes


class _Checkpoint:
    """Finished (candidate, fold) results on disk. Each method says where it runs.

    ``PATH`` holds the merged results of earlier runs (written by rank 0);
    while a run goes, each rank that finishes a task rewrites its own part
    file ``PATH.rank<R>.json`` (atomic), so a kill loses at most the tasks
    in flight.  Results come back only under the same fingerprint (the
    candidates, the folds, the scoring, the estimator and the data).
    """

    def __init__(self, path: str | os.PathLike | None, fingerprint: dict):
        self.path = None if path is None else os.fspath(path)
        self.fingerprint = fingerprint
        self.mine: list[dict] = []

    def _part(self, rank: int) -> str:
        return f"{self.path}.rank{rank}.json"

    def _parts(self) -> list[str]:
        return sorted(glob.glob(glob.escape(self.path) + ".rank*.json"))

    def load(self, comm: Intracomm) -> list[dict]:
        """Earlier results, merged and re-saved by rank 0. Collective over ``comm``."""
        if self.path is None:
            return []

        def read() -> list[dict]:
            records: dict[tuple[int, int], dict] = {}
            files = ([self.path] if os.path.exists(self.path) else []) + self._parts()
            for name in files:
                try:
                    saved = read_json_object(name, "results")
                except ValueError as exc:
                    raise ValueError(
                        f"checkpoint {name} is not a search checkpoint ({exc}); "
                        "remove it or choose another path"
                    ) from None
                if saved.get("fingerprint") != self.fingerprint:
                    raise ValueError(
                        f"checkpoint {name} belongs to another search (other candidates, "
                        "folds, scoring, estimator or data); remove it or choose another path"
                    )
                for record in saved["results"]:
                    records[(record["candidate"], record["fold"])] = record
            merged = [records[key] for key in sorted(records)]
            if files:
                self._write(self.path, merged)
                for name in self._parts():
                    os.unlink(name)
            return merged

        return run_on_root(comm, f"reading the checkpoint {self.path}", read)

    def _write(self, path: str, records: list[dict]) -> None:
        from mpitrain.data import write_json

        write_json(path, {"fingerprint": self.fingerprint, "results": records})

    def record(self, result: dict, rank: int) -> None:
        """Add one finished task to this rank's part file. Local."""
        if self.path is None:
            return
        self.mine.append(result)
        self._write(self._part(rank), self.mine)

    def merge(self, records: list[dict], comm: Intracomm) -> None:
        """Rank 0 writes all results into ``PATH``; part files go. Collective over ``comm``."""
        if self.path is None:
            return

        def write() -> None:
            self._write(
                self.path, sorted(records, key=lambda r: (r["candidate"], r["fold"]))
            )
            for name in self._parts():
                os.unlink(name)

        run_on_root(comm, f"writing the checkpoint {self.path}", write)
        self.mine = []


def _score_value(value: Any) -> float:
    return float("nan") if value is None else float(value)


# ----------------------------------------------------------------------------
# The search


class _BaseSearch(MetaEstimatorMixin, BaseEstimator):
    """What grid and randomized search share. Subclasses give ``_candidates``."""

    def _candidates(self, comm: Intracomm) -> list[dict]:  # pragma: no cover
        raise NotImplementedError

    # -- checks -----------------------------------------------------------

    def _check_search_params(self) -> None:
        """Refuse parameters before any work; the same on every rank. Local."""
        if self.mode not in SEARCH_MODES:
            raise ValueError(f"mode must be one of {SEARCH_MODES}, got {self.mode!r}")
        check_search_scoring(self.scoring, self.refit)
        check_error_score(self.error_score)
        if self.group_size is not None and (
            not isinstance(self.group_size, Integral) or self.group_size < 1
        ):
            raise ValueError(
                f"group_size must be a positive integer or None, got {self.group_size!r}"
            )

    def _scoring_names(self) -> list[str] | None:
        """The metrics of a multi-metric search (``scoring`` a list); ``None`` for one. Local."""
        if isinstance(self.scoring, (list, tuple)):
            return list(self.scoring)
        return None

    def _failed_score(self) -> float | dict[str, float]:
        """The score of a failed fit: ``error_score`` (NaN with "raise") for each metric. Local."""
        value = float("nan") if self.error_score == "raise" else float(self.error_score)
        names = self._scoring_names()
        return value if names is None else dict.fromkeys(names, value)

    def _one_pass(self) -> bool:
        """Whether the folds come from statistics in one pass (exact linear model, regression score). Local."""
        if type(self.estimator).__name__ not in _LINEAR_GRID_MODELS:
            return False
        from mpitrain.model_selection._linear_grid import LINEAR_GRID_SCORINGS

        # One metric: a multi-metric search fits its candidates one by one.
        return self.scoring is None or (
            isinstance(self.scoring, str) and self.scoring in LINEAR_GRID_SCORINGS
        )

    def _distributed(self) -> bool:
        """Whether the estimator is an mpitrain one (it has ``comm`` parameters). Local."""
        return bool(_comm_names(self.estimator))

    def _choose_mode(
        self, n_rows: int, n_features: int, comm: Intracomm
    ) -> tuple[str, str]:
        """``(mode, why)``: the same on every rank. Collective over ``comm``."""
        from mpitrain.report import format_bytes

        need = rows_memory_bytes(n_rows, n_features, copies=SMALL_MODE_COPIES)
        smallest, source = _smallest_limit(need, comm)
        fits = smallest is None or need <= smallest
        room = f"all {n_rows:,} rows need about {format_bytes(need)} per rank" + (
            f" and a rank may use {format_bytes(smallest)} ({source})"
            if smallest is not None
            else ""
        )
        name = type(self.estimator).__name__
        if self.mode == "small":
            if not fits:
                raise MemoryError(f"mode='small': {room}; use mode='large'")
            return "small", f"mode='small' was asked ({room})"
        if self.mode == "large":
            if not self._distributed():
                raise ValueError(
                    f"mode='large' needs an mpitrain estimator (with a comm parameter), not {name}"
                )
            return "large", "mode='large' was asked"
        if not self._distributed():
            if not fits:
                raise MemoryError(
                    f"{name} is a plain scikit-learn estimator, which needs every row on "
                    f"one rank, but {room}; use the mpitrain estimator"
                )
            return "small", f"{name} is a plain scikit-learn estimator and {room}"
        if self._one_pass():
            return "large", f"{name} gets every fold from one pass over the data"
        if fits:
            return "small", f"{room}: every rank holds all rows"
        return "large", f"{room}: the rows stay split, each candidate data-parallel"

    # -- fit ---------------------------------------------------------------

    def fit(
        self,
        X: Any,
        y: Any,
        *,
        sample_weight: Any = None,
        row_offset: int | None = None,
    ) -> _BaseSearch:
        """Search the candidates on every rank's rows; refit the best on all rows.

        Collective over ``comm``.  ``X`` and ``y`` are this rank's rows (a
        rank may have none); with ``row_offset`` None the ranks' rows follow
        each other in rank order, which is the global order (the folds of
        ``cv=int`` in small mode are scikit-learn's on the rows in that
        order; in large mode they are :func:`stratified_fold_ids` of the
        labels for a classifier and :func:`fold_ids` otherwise, by global row
        id).

        Parameters
        ----------
        X : array-like of shape (n_local_rows, n_features)
        y : array-like of shape (n_local_rows,)
        sample_weight : array-like of shape (n_local_rows,), default=None
            This rank's row weights, given on every rank or on none (a rank
            without rows passes an empty array).  They weight every fit (in
            a pipeline, every step whose ``fit`` takes them) and every
            held-out score, as scikit-learn's
            ``GridSearchCV.fit(X, y, sample_weight=w)`` does from 1.7 on.
        row_offset : int, default=None
            Global id of this rank's first row.

        Returns
        -------
        self
        """
        comm = get_comm(self.comm)
        with library_comm(comm) as lib:
            # Checked on every rank and compared: a parameter refused or set on
            # some ranks only would leave the others alone in the search.
            agree_parameters(self, lib, check=self._check_search_params)
            X = np.asarray(X)
            y = np.asarray(y)
            with collective_check(lib, "checking the search rows"):
                if X.ndim != 2:
                    raise ValueError(f"X must be 2-D, got shape {X.shape}")
                if y.shape != (X.shape[0],):
                    raise ValueError(
                        f"X has {X.shape[0]} rows but y has shape {y.shape}"
                    )
                if sample_weight is not None:
                    # The estimators' own check: one finite, non-negative weight a row.
                    sample_weight = check_local_weights(sample_weight, X.shape[0])
                    if not _takes_weights(self.estimator):
                        raise TypeError(
                            f"{type(self.estimator).__name__} does not take "
                            "sample_weight in fit"
                        )
            found = allgather_object(
                (X.shape, row_offset, sample_weight is not None), lib
            )
            given = [w for _, _, w in found]
            if any(given) and not all(given):
                raise ValueError(
                    "sample_weight must be given on every rank or on none (a rank "
                    f"without rows passes an empty array); given on ranks "
                    f"{[r for r, w in enumerate(given) if w]}"
                )
            shapes = [(shape, offset) for shape, offset, _ in found]
            features = {s[1] for s, _ in shapes if s[0] > 0} or {X.shape[1]}
            if len(features) > 1:
                raise ValueError(
                    f"ranks have different numbers of features: {[s[1] for s, _ in shapes]}"
                )
            n_features = features.pop()
            n_rows = sum(s[0] for s, _ in shapes)
            candidates = self._candidates(lib)
            if not candidates:
                raise ValueError("no candidates to search")
            mode, why = self._choose_mode(n_rows, n_features, lib)
            tic = time.perf_counter()
            if mode == "small":
                records, n_splits = self._search_small(
                    X, y, sample_weight, shapes, candidates, lib
                )
            else:
                records, n_splits = self._search_large(
                    X, y, sample_weight, row_offset, candidates, lib
                )
            search_seconds = time.perf_counter() - tic
            self._set_results(candidates, records, n_splits)
            self.search_mode_ = mode
            self.mode_reason_ = why
            self.n_splits_ = n_splits
            self.timings_ = {"search": search_seconds}
            if self.refit:
                tic = time.perf_counter()
                self._refit(X, y, sample_weight, comm, lib)
                self.refit_time_ = time.perf_counter() - tic
                self.timings_["refit"] = self.refit_time_
            # The gathered rows and statistics were for the refit only.
            for scratch in ("_small_rows", "_linear_total"):
                if hasattr(self, scratch):
                    delattr(self, scratch)
        return self

    def _set_results(
        self, candidates: list[dict], records: list[dict], n_splits: int
    ) -> None:
        """``cv_results_`` and the best candidate from all task records. Local."""
        shape = (len(candidates), n_splits)
        names = self._scoring_names()
        fit_times, score_times = np.zeros(shape), np.zeros(shape)
        scores = {name: np.zeros(shape) for name in names or ["score"]}
        for r in records:
            at = (r["candidate"], r["fold"])
            found = r["score"] if names is not None else {"score": r["score"]}
            for name, array in scores.items():
                array[at] = _score_value(found[name])
            fit_times[at] = r["fit_time"]
            score_times[at] = r["score_time"]
        if self.error_score != "raise":
            _warn_about_failures(records, len(records), self.error_score)
            ordered = sorted(records, key=lambda r: (r["candidate"], r["fold"]))
            warn_scoring_failures(
                (r.get("score_errors") or {} for r in ordered), self.error_score
            )
        self.cv_results_ = search_results(
            candidates,
            scores if names is not None else scores["score"],
            fit_times,
            score_times,
        )
        for name in names or ["score"]:
            means = self.cv_results_[f"mean_test_{name}"]
            if not np.isfinite(means).all():
                # scikit-learn's warning, from the same table on every rank.
                warnings.warn(
                    f"One or more of the test scores are non-finite: {means}",
                    UserWarning,
                    stacklevel=3,
                )
        self.multimetric_ = names is not None
        self.scorer_ = self.scoring
        # As scikit-learn: a multi-metric search names its best by refit, or has none.
        metric = "score" if names is None else self.refit
        if metric is not False:
            self.best_index_ = int(self.cv_results_[f"rank_test_{metric}"].argmin())
            self.best_score_ = float(
                self.cv_results_[f"mean_test_{metric}"][self.best_index_]
            )
            self.best_params_ = dict(candidates[self.best_index_])

    # -- small mode --------------------------------------------------------

    def _gather_rows(
        self,
        X: np.ndarray,
        y: np.ndarray,
        sample_weight: np.ndarray | None,
        shapes: list,
        comm: Intracomm,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """All rows (and their weights) on every rank, in global order. Collective over ``comm``."""
        n_features = next((s[1] for s, _ in shapes if s[0] > 0), X.shape[1])
        kinds = allgather_object(
            (X.dtype.str if X.size else None, y.dtype.str if y.size else None), comm
        )
        x_types = {k for k, _ in kinds if k is not None}
        x_dtype = np.dtype(x_types.pop()) if len(x_types) == 1 else np.float64
        X_all = allgatherv_array(
            np.ascontiguousarray(X, dtype=x_dtype).ravel(), comm
        ).reshape(-1, n_features)
        y_types = {k for _, k in kinds if k is not None}
        if all(np.dtype(k).kind in "biuf" for k in y_types):
            # Numbers travel as a buffer of the type they all fit in.
            y_type = np.result_type(*y_types) if y_types else np.float64
            y_all = allgatherv_array(np.ascontiguousarray(y, dtype=y_type), comm)
        else:
            # Text labels travel as codes of the labels every rank agrees on.
            labels = agree_labels(y, comm=comm)
            codes = np.searchsorted(labels, y).astype(np.int64)
            y_all = labels[allgatherv_array(codes, comm)]
        w_all = None
        if sample_weight is not None:  # given on every rank (agreed in fit)
            w_all = allgatherv_array(sample_weight, comm)
        offsets = [o for _, o in shapes]
        if any(o is not None for o in offsets):
            if not all(o is not None for o in offsets):
                raise ValueError("row_offset must be given on every rank or on none")
            starts = np.cumsum([0] + [s[0] for s, _ in shapes])
            order = np.argsort(offsets, kind="stable")
            pieces = np.concatenate(
                [np.arange(starts[r], starts[r + 1]) for r in order]
            ).astype(np.int64)
            X_all, y_all = X_all[pieces], y_all[pieces]
            if w_all is not None:
                w_all = w_all[pieces]
        return X_all, y_all, w_all

    def _splits(self, X_all: np.ndarray, y_all: np.ndarray, plain: Any) -> list:
        """The (train, test) index pairs scikit-learn's search would use. Local."""
        from sklearn.model_selection import check_cv

        cv = check_cv(self.cv, y_all, classifier=is_classifier(plain))
        return [(np.asarray(tr), np.asarray(te)) for tr, te in cv.split(X_all, y_all)]

    def _fingerprint(self, candidates: list[dict], extra: dict) -> dict:
        """What makes checkpointed results belong to this search. Pure."""
        return {
            "search": type(self).__name__,
            "estimator": _estimator_key(self.estimator),
            "candidates": [
                {k: _json_value(v) for k, v in sorted(c.items())} for c in candidates
            ],
            # A tuple of metrics comes back from JSON as a list.
            "scoring": self._scoring_names() or self.scoring,
            "error_score": _json_value(self.error_score),
            **extra,
        }

    def _run_tasks(
        self,
        tasks: list[tuple[int, int]],
        costs: list[float],
        work: Any,
        checkpoint: _Checkpoint,
        comm: Intracomm,
        budget: list[int],
    ) -> list[dict]:
        """One wave: tasks shared by :func:`balance_tasks`, results gathered. Collective."""
        rank = comm.Get_rank()
        plan = balance_tasks(costs, comm.Get_size())
        mine: list[dict] = []
        failure: BaseException | None = None
        for t in plan[rank]:
            if budget[0] == 0:
                failure = SearchStopped(
                    f"stopped after {_STOP_AFTER_TASKS} tasks on this rank (test hook)"
                )
                break
            candidate, fold = tasks[t]
            record, error = work(candidate, fold)
            mine.append(record)
            try:
                checkpoint.record(record, rank)
            except Exception as exc:  # a full disk: agreed below, never a hang
                failure = exc
                break
            budget[0] -= 1
            if error is not None and self.error_score == "raise":
                failure = error
                break
        # Every rank finished its share: a failure anywhere stops every rank alike.
        agree(failure, comm, "the search")
        return [r for part in allgather_object(mine, comm) for r in part]

    def _search_small(
        self,
        X: np.ndarray,
        y: np.ndarray,
        sample_weight: np.ndarray | None,
        shapes: list,
        candidates: list[dict],
        comm: Intracomm,
    ) -> tuple[list[dict], int]:
        """Every rank holds all rows; (candidate, fold) tasks shared out. Collective."""
        from sklearn.metrics import check_scoring, get_scorer

        X_all, y_all, w_all = self._gather_rows(X, y, sample_weight, shapes, comm)
        plain = _plain_estimator(self.estimator)
        splits = self._splits(X_all, y_all, plain)
        n_splits = len(splits)
        digest = hashlib.sha256()
        for _, test in splits:
            digest.update(np.ascontiguousarray(test, dtype=np.int64).tobytes())
        fingerprint = self._fingerprint(
            candidates,
            {
                "mode": "small",
                "splits": digest.hexdigest(),
                "data": _rows_digest(_present(X_all, y_all, w_all))
                if self.checkpoint
                else None,
            },
        )
        checkpoint = _Checkpoint(self.checkpoint, fingerprint)
        done = {(r["candidate"], r["fold"]): r for r in checkpoint.load(comm)}
        names = self._scoring_names()
        if names is None:
            scorers = {None: check_scoring(plain, self.scoring)}
        else:
            scorers = {name: get_scorer(name) for name in names}

        def work(candidate: int, fold: int) -> tuple[dict, BaseException | None]:
            train, test = splits[fold]
            error = None
            fit_time = score_time = 0.0
            unscored: dict[str, str] = {}
            tic = time.perf_counter()
            try:
                # The candidate's parameters are the mpitrain estimator's; the
                # fit is scikit-learn's own, in this process.
                model = _plain_estimator(
                    _on_comm(self.estimator, candidates[candidate], None)
                )
                w_train = None if w_all is None else w_all[train]
                model.fit(X_all[train], y_all[train], **_fit_params(model, w_train))
                fit_time = time.perf_counter() - tic
            except Exception as exc:
                fit_time = time.perf_counter() - tic
                error = exc
                score = self._failed_score()
            else:
                tic = time.perf_counter()
                weights = {} if w_all is None else {"sample_weight": w_all[test]}
                found = {}
                for name, scorer in scorers.items():
                    # As scikit-learn's search: a metric that cannot be scored
                    # gets error_score alone; the fit still counts as done.
                    try:
                        found[name] = float(
                            scorer(model, X_all[test], y_all[test], **weights)
                        )
                    except Exception as exc:
                        if self.error_score == "raise":
                            error = exc
                            break
                        found[name] = float(self.error_score)
                        unscored["score" if name is None else name] = _error_text(exc)
                if error is None:
                    score = found if names is not None else found[None]
                else:
                    score = self._failed_score()
                score_time = time.perf_counter() - tic
            record = {
                "candidate": candidate,
                "fold": fold,
                "score": score,
                "fit_time": fit_time,
                "score_time": score_time,
                "error": None if error is None else _error_text(error),
            }
            if unscored:
                record["score_errors"] = unscored
            return record, error

        budget = [-1 if _STOP_AFTER_TASKS is None else int(_STOP_AFTER_TASKS)]
        train_sizes = [len(train) for train, _ in splits]
        # Wave one: each candidate's first missing fold, all of one expected
        # cost per training row (kernel methods: more than linear, the same order).
        first: list[tuple[int, int]] = []
        for i in range(len(candidates)):
            missing = [k for k in range(n_splits) if (i, k) not in done]
            if missing and not any((i, k) in done for k in range(n_splits)):
                first.append((i, missing[0]))
        records = list(done.values())
        if first:
            costs = [float(train_sizes[k]) ** 2 for _, k in first]
            records += self._run_tasks(first, costs, work, checkpoint, comm, budget)
        # Wave two: the other folds, each costing its candidate's measured fit
        # time (scaled by the training rows).
        finished = {(r["candidate"], r["fold"]): r for r in records}
        measured: dict[int, float] = {}
        for (i, k), r in sorted(finished.items()):
            measured.setdefault(
                i,
                (r["fit_time"] + r["score_time"]) / max(train_sizes[k], 1) ** 2,
            )
        rest = [
            (i, k)
            for i in range(len(candidates))
            for k in range(n_splits)
            if (i, k) not in finished
        ]
        if rest:
            costs = [measured.get(i, 1.0) * float(train_sizes[k]) ** 2 for i, k in rest]
            records += self._run_tasks(rest, costs, work, checkpoint, comm, budget)
        checkpoint.merge(records, comm)
        self._small_rows = (X_all, y_all, w_all)
        return records, n_splits

    # -- large mode --------------------------------------------------------

    def _groups(self, comm: Intracomm) -> tuple[int, int]:
        """``(number of groups, this rank's group)``. Local."""
        size = comm.Get_size()
        group_size = (
            size if self.group_size is None else min(int(self.group_size), size)
        )
        if size % group_size:
            raise ValueError(
                f"group_size={group_size} must divide the number of ranks ({size})"
            )
        n_groups = size // group_size
        return n_groups, comm.Get_rank() % n_groups

    def _check_group_rows(self, X: np.ndarray, n_groups: int, comm: Intracomm) -> None:
        """Refuse groups whose shared rows would not fit, on every rank alike. Collective over ``comm``.

        Each rank of a group holds the rows of ``n_groups`` ranks (its own
        and those at its place in the other groups).  The largest such share
        and the smallest memory limit decide, so every rank raises alike.
        """
        from mpitrain.report import format_bytes

        counts = allgather_object(int(X.shape[0]), comm)
        n_features = X.shape[1] if X.ndim == 2 else 1
        most = max(
            sum(counts[start : start + n_groups])
            for start in range(0, len(counts), n_groups)
        )
        need = rows_memory_bytes(most, n_features, copies=SMALL_MODE_COPIES)
        smallest, source = _smallest_limit(need, comm)
        if smallest is not None and need > smallest:
            raise MemoryError(
                f"group_size={comm.Get_size() // n_groups}: each rank of a group would "
                f"hold the rows of {n_groups} ranks ({most:,} rows, about "
                f"{format_bytes(need)}), but a rank may use {format_bytes(smallest)} "
                f"({source}); use a larger group_size (fewer groups, fewer copies)"
            )

    def _search_large(
        self,
        X: np.ndarray,
        y: np.ndarray,
        sample_weight: np.ndarray | None,
        row_offset: int | None,
        candidates: list[dict],
        comm: Intracomm,
    ) -> tuple[list[dict], int]:
        """Candidates fitted data-parallel, several at once on groups of ranks. Collective."""
        if isinstance(self.cv, Integral):
            # As scikit-learn's check_cv: StratifiedKFold's allocation for classifiers.
            folds = (
                stratified_fold_ids(y, row_offset, n_folds=int(self.cv), comm=comm)
                if is_classifier(self.estimator)
                else fold_ids(X.shape[0], row_offset, n_folds=int(self.cv), comm=comm)
            )
        else:
            folds = np.asarray(self.cv, dtype=np.int64)
            with collective_check(comm, "checking the fold ids"):
                if folds.shape != (X.shape[0],) or (folds.size and folds.min() < 0):
                    raise ValueError(
                        f"in large mode cv must be a number of folds or {X.shape[0]} "
                        "non-negative fold ids of this rank's rows"
                    )
        n_splits = max(
            allgather_object(int(folds.max()) + 1 if folds.size else 0, comm)
        )
        if n_splits < 2:
            raise ValueError(f"the search needs at least 2 folds, got {n_splits}")
        fingerprint = self._fingerprint(
            candidates,
            {
                "mode": "large",
                "folds": _rows_digest([folds], comm),
                "data": _rows_digest(_present(X, y, sample_weight), comm)
                if self.checkpoint
                else None,
            },
        )
        checkpoint = _Checkpoint(self.checkpoint, fingerprint)
        records = checkpoint.load(comm)
        done = {(r["candidate"], r["fold"]) for r in records}
        todo = [
            i
            for i in range(len(candidates))
            if any((i, k) not in done for k in range(n_splits))
        ]
        # A candidate is redone whole: its folds come from one cross-validation.
        records = [r for r in records if r["candidate"] not in set(todo)]
        linear = None
        if self._one_pass():
            from mpitrain.model_selection._linear_grid import (
                linear_grid_scores as linear,
            )
        if linear is not None and todo:
            records += self._linear_grid(
                linear, X, y, sample_weight, folds, n_splits, candidates, todo, comm
            )
            todo = []
        n_groups, group = self._groups(comm)
        budget = [-1 if _STOP_AFTER_TASKS is None else int(_STOP_AFTER_TASKS)]
        mine: list[dict] = []
        failure: BaseException | None = None
        if todo:
            # Each group must hold all rows: ranks at the same place in their
            # groups (consecutive ranks, one per group) share their rows.
            Xg, yg, wg, fg = X, y, sample_weight, folds
            if n_groups > 1:
                self._check_group_rows(X, n_groups, comm)
                with split_comm(comm, comm.Get_rank() // n_groups) as across:
                    Xg, yg, wg, fg = _share_rows(
                        X, y, sample_weight, folds, across, comm
                    )
            plan = balance_tasks([1.0] * len(todo), n_groups)[group]
            with split_comm(comm, group) as group_comm:
                for t in plan:
                    if budget[0] == 0:
                        failure = SearchStopped(
                            f"stopped after {_STOP_AFTER_TASKS} tasks on this rank (test hook)"
                        )
                        break
                    candidate = todo[t]
                    found, error = self._cross_validate(
                        Xg,
                        yg,
                        wg,
                        fg,
                        n_splits,
                        candidate,
                        candidates[candidate],
                        group_comm,
                    )
                    mine.extend(found)
                    # The group's first rank writes; the group agrees it could,
                    # and the whole search below.
                    try:
                        with collective_check(group_comm, "recording the results"):
                            if group_comm.Get_rank() == 0:
                                for record in found:
                                    checkpoint.record(record, comm.Get_rank())
                    except Exception as exc:
                        failure = exc
                        break
                    budget[0] -= 1
                    if error is not None and self.error_score == "raise":
                        failure = error
                        break
        agree(failure, comm, "the search")
        # Each group's first rank reports; the ranks of one group agree.
        everyone = allgather_object(mine if comm.Get_rank() < n_groups else [], comm)
        records += [r for part in everyone for r in part]
        checkpoint.merge(records, comm)
        return records, n_splits

    def _cross_validate(
        self,
        X: np.ndarray,
        y: np.ndarray,
        sample_weight: np.ndarray | None,
        folds: np.ndarray,
        n_splits: int,
        candidate: int,
        params: dict,
        comm: Intracomm,
    ) -> tuple[list[dict], BaseException | None]:
        """One candidate's fold results, data-parallel on ``comm``. Collective over ``comm``."""
        multi = self._scoring_names()
        names = multi if multi is not None else [self.scoring]
        # f1 and neg_log_loss are scored here from each fold's model; the
        # others by cross_validate (accuracy when it has none to score).
        own = [name for name in names if name in _OWN_SCORINGS]
        rest = [name for name in names if name not in _OWN_SCORINGS]
        asked = (rest if multi is not None else rest[0]) if rest else "accuracy"
        unscored: dict[int, dict[str, str]] = {}
        fit_errors: list[str | None] = [None] * n_splits
        tic = time.perf_counter()
        try:
            model = _on_comm(self.estimator, params, comm)
            # Each fold's fit failure and each metric's scoring failure
            # comes back per fold, as scikit-learn records them; the search
            # reports them over all candidates.
            found = _cross_validate_folds(
                model,
                X,
                y,
                cv=folds,
                sample_weight=sample_weight,
                scoring=asked,
                return_estimator=bool(own),
                error_score=self.error_score,
                comm=comm,
            )
            fit_errors = list(found["fit_errors"])
            key = (lambda name: name) if multi is not None else (lambda name: "score")
            for k, failed in enumerate(found["score_errors"]):
                for name, text in failed.items():
                    if name in rest:  # not a stand-in accuracy
                        unscored.setdefault(k, {})[key(name)] = text
            scores = {
                name: np.asarray(
                    found["test_score" if multi is None else f"test_{name}"],
                    dtype=np.float64,
                )
                for name in rest
            }
            scores.update({name: np.full(n_splits, np.nan) for name in own})
            score_times = np.asarray(found["score_time"], dtype=np.float64)
            for k, fitted in enumerate(found.get("estimator", [])):
                if fitted is None:  # its fit failed: error_score below
                    continue
                tic_k = time.perf_counter()
                test = folds == k
                w_test = None if sample_weight is None else sample_weight[test]
                for name in own:
                    # A metric the model cannot give (no predict_proba) gets
                    # error_score alone, as in scikit-learn's search; the
                    # failure is agreed over ``comm`` inside _own_score.
                    try:
                        scores[name][k] = _own_score(
                            name, fitted, X[test], y[test], w_test, comm
                        )
                    except Exception as exc:
                        if self.error_score == "raise":
                            raise
                        scores[name][k] = float(self.error_score)
                        unscored.setdefault(k, {})[key(name)] = _error_text(exc)
                # Only the metrics asked for count (not a stand-in accuracy).
                own_time = time.perf_counter() - tic_k
                score_times[k] = own_time + (score_times[k] if rest else 0.0)
            fit_times = np.asarray(found["fit_time"], dtype=np.float64)
            error = None
            per_fold = [
                {name: float(scores[name][k]) for name in names}
                for k in range(n_splits)
            ]
        except Exception as exc:
            error = exc
            per_fold = []  # every fold gets error_score below
            fit_times = np.full(n_splits, (time.perf_counter() - tic) / n_splits)
            score_times = np.zeros(n_splits)
        text = None if error is None else _error_text(error)
        records = []
        for k in range(n_splits):
            failed = text or fit_errors[k]
            record = {
                "candidate": candidate,
                "fold": k,
                "score": (
                    self._failed_score()
                    if failed
                    else per_fold[k]
                    if multi is not None
                    else per_fold[k][names[0]]
                ),
                "fit_time": float(fit_times[k]),
                "score_time": float(score_times[k]),
                "error": failed,
            }
            if k in unscored and not failed:
                record["score_errors"] = unscored[k]
            records.append(record)
        return records, error

    def _linear_grid(
        self,
        linear: Any,
        X: np.ndarray,
        y: np.ndarray,
        sample_weight: np.ndarray | None,
        folds: np.ndarray,
        n_splits: int,
        candidates: list[dict],
        todo: list[int],
        comm: Intracomm,
    ) -> list[dict]:
        """Every fold of the linear candidates from one pass (fold subtraction). Collective."""
        from sklearn.exceptions import FitFailedWarning

        with warnings.catch_warnings():
            # The search warns once for all its records (resumed ones too), in _set_results.
            warnings.simplefilter("ignore", FitFailedWarning)
            found = linear(
                X,
                y,
                model=self.estimator,  # its parameters are every candidate's base
                param_grid=[candidates[i] for i in todo],
                fold_ids=folds,
                n_folds=n_splits,
                scoring=self.scoring,
                sample_weight=sample_weight,
                error_score=self.error_score,
                comm=comm,
            )
        # The refit of the best solves from these statistics: no row read again.
        self._linear_total = found.get("total")
        scores = np.asarray(found["test_scores"], dtype=np.float64)
        fit_times = np.asarray(found["fit_times"], dtype=np.float64)
        score_times = np.asarray(found["score_times"], dtype=np.float64)
        errors = found.get("errors") or [None] * len(todo)
        return [
            {
                "candidate": i,
                "fold": k,
                "score": float(scores[j, k]),
                "fit_time": float(fit_times[j, k]),
                "score_time": float(score_times[j, k]),
                "error": None if errors[j] is None else errors[j][k],
            }
            for j, i in enumerate(todo)
            for k in range(n_splits)
        ]

    # -- refit --------------------------------------------------------------

    def _refit(
        self,
        X: np.ndarray,
        y: np.ndarray,
        sample_weight: np.ndarray | None,
        comm: Intracomm,
        lib: Intracomm,
    ) -> None:
        """The best candidate fitted on all rows. Collective over ``comm``."""
        total = getattr(self, "_linear_total", None)
        if total is not None:
            from mpitrain.model_selection._linear_grid import fit_from_statistics

            best = fit_from_statistics(
                self.estimator, self.best_params_, total, comm=comm
            )
            self.best_estimator_ = best
            self.estimator_ = best.estimator_
        elif self._distributed():
            best = _on_comm(self.estimator, self.best_params_, comm)
            best.fit(X, y, **_fit_params(best, sample_weight))
            self.best_estimator_ = best
            self.estimator_ = getattr(best, "estimator_", best)
        else:
            X_all, y_all, w_all = self._small_rows

            def fit_best() -> Any:
                best = clone(self.estimator).set_params(**self.best_params_)
                return best.fit(X_all, y_all, **_fit_params(best, w_all))

            # One rank fits (the others wait quietly); the fitted model is broadcast.
            self.best_estimator_ = run_on_root(
                lib, "refitting the best candidate", fit_best
            )
            self.estimator_ = self.best_estimator_
        if hasattr(self.estimator_, "classes_"):
            self.classes_ = self.estimator_.classes_

    # -- prediction: the refitted best -------------------------------------

    def predict(self, X: Any) -> np.ndarray:
        """The best estimator's predictions of this rank's rows. Local."""
        check_is_fitted(self, "estimator_")  # NotFittedError, as every estimator's
        return self.estimator_.predict(X)

    def predict_proba(self, X: Any) -> np.ndarray:
        """The best estimator's class probabilities of this rank's rows. Local."""
        check_is_fitted(self, "estimator_")  # NotFittedError, as every estimator's
        return self.estimator_.predict_proba(X)

    def decision_function(self, X: Any) -> np.ndarray:
        """The best estimator's decision function on this rank's rows. Local."""
        check_is_fitted(self, "estimator_")  # NotFittedError, as every estimator's
        return self.estimator_.decision_function(X)


def _smallest_limit(need: int, comm: Intracomm) -> tuple[float | None, str]:
    """The smallest memory limit of any rank (``None``: unknown), and how it is set. Collective over ``comm``.

    ``need`` must be the same on every rank (see
    :func:`mpitrain.data.ranks_sharing_memory`); every rank gets the same
    limit, so a check against it raises alike on every rank.
    """
    limit, source = memory_limit(ranks_sharing_memory(need, comm))
    known = [v for v in allgather_object(limit, comm) if v is not None]
    return (min(known) if known else None), source


def _rows_digest(arrays: Sequence[np.ndarray], comm: Intracomm | None = None) -> str:
    """A SHA-256 of the rows (of every rank's rows, in rank order, with ``comm``).

    Local without ``comm``; collective over ``comm`` otherwise (one small
    ``allgather`` of the ranks' digests).
    """
    digest = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        digest.update(f"{a.dtype.str}{a.shape}".encode())
        digest.update(a.tobytes() if a.dtype.kind != "O" else repr(a.tolist()).encode())
    if comm is None:
        return digest.hexdigest()
    return hashlib.sha256(
        "".join(allgather_object(digest.hexdigest(), comm)).encode()
    ).hexdigest()


def _takes_weights(estimator: Any) -> bool:
    """Whether ``fit`` takes ``sample_weight`` (a pipeline: in some step). Local."""
    if hasattr(estimator, "steps"):
        return bool(_fit_params(estimator, np.ones(0)))
    return "sample_weight" in inspect.signature(estimator.fit).parameters


def _present(*arrays: np.ndarray | None) -> list[np.ndarray]:
    """The arrays that are given (a search's rows, and its weights if any). Pure."""
    return [a for a in arrays if a is not None]


def _share_rows(
    X: np.ndarray,
    y: np.ndarray,
    sample_weight: np.ndarray | None,
    folds: np.ndarray,
    across: Intracomm,
    comm: Intracomm,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
    """The rows (and weights) of every rank of ``across``, in rank order, on each of them. Collective.

    Collective over ``comm`` (the labels of a text target are agreed there)
    and then over ``across``.
    """
    n_features = X.shape[1]
    X_all = allgatherv_array(np.ascontiguousarray(X, dtype=np.float64).ravel(), across)
    if y.dtype.kind in "biuf":
        y_all = allgatherv_array(np.ascontiguousarray(y), across)
    else:
        labels = agree_labels(y, comm=comm)
        y_all = labels[
            allgatherv_array(np.searchsorted(labels, y).astype(np.int64), across)
        ]
    w_all = None
    if sample_weight is not None:  # given on every rank (agreed in fit)
        w_all = allgatherv_array(sample_weight, across)
    f_all = allgatherv_array(np.ascontiguousarray(folds, dtype=np.int64), across)
    return X_all.reshape(-1, n_features), y_all, w_all, f_all


def _own_score(
    scoring: str,
    model: Any,
    X: np.ndarray,
    y: np.ndarray,
    sample_weight: np.ndarray | None,
    comm: Intracomm,
) -> float:
    """Binary F1 (label 1) or negative log loss of all ranks' held-out rows. Collective.

    As scikit-learn's ``f1`` and ``neg_log_loss`` scorers: the log loss
    clips probabilities to ``[eps, 1 - eps]`` of their dtype; with
    ``sample_weight``, both are weighted as theirs are.
    """
    if scoring == "f1":
        with collective_check(comm, "predicting the held-out fold"):
            predicted = predict_local(model, X, "predict")
        # scikit-learn's checks of average="binary", on the fold's labels of all ranks.
        present = agree_labels(y, predicted, comm=comm).tolist()
        if len(present) > 2:
            raise ValueError(
                "Target is multiclass but average='binary'. Please choose another "
                "average setting, one of [None, 'micro', 'macro', 'weighted']."
            )
        if 1 not in present and len(present) >= 2:
            raise ValueError(
                f"pos_label=1 is not a valid label. It should be one of {present}"
            )
        found = classification_scores(
            y, predicted, labels=[1], sample_weight=sample_weight, comm=comm
        )
        return float(found["f1"][0])
    with collective_check(comm, "predicting probabilities of the held-out fold"):
        proba = predict_local(model, X, "predict_proba")
        classes = np.asarray(model.classes_)
        where = np.searchsorted(classes, y)
        if y.size and (
            np.any(where >= classes.size)
            or np.any(classes[np.minimum(where, classes.size - 1)] != y)
        ):
            raise ValueError("the held-out fold has a class the model never saw")
        eps = np.finfo(proba.dtype).eps
        picked = np.clip(proba[np.arange(y.size), where], eps, 1 - eps)
    weights = np.ones(y.size) if sample_weight is None else sample_weight
    sums = allreduce_sum(
        np.array([-(weights * np.log(picked)).sum(), weights.sum()]), comm
    )
    return -float(sums[0] / sums[1])


class GridSearchCV(_BaseSearch):
    """Exhaustive search over a parameter grid, using every rank (see the module docstring).

    Parameters
    ----------
    estimator : mpitrain estimator, pipeline of them, or scikit-learn estimator
        The model to tune; a plain scikit-learn estimator runs in small
        mode only.
    param_grid : dict or list of dicts
        As scikit-learn's: parameter names to lists of values.
    scoring : str or list of str, default=None
        One of :data:`SEARCH_SCORINGS`; ``None``: accuracy for classifiers,
        R² otherwise (the estimator's ``score``).  A list of them: every
        metric is scored on every fold, and ``cv_results_`` holds
        scikit-learn's multi-metric keys (``mean_test_<name>``, ...).
    cv : int, splitter or iterable, default=5
        Small mode: as scikit-learn's (``int``: ``StratifiedKFold`` for
        classifiers, else ``KFold``, unshuffled, on the rows in global
        order).  Large mode: a number of folds by global row id, seed 0
        (:func:`mpitrain.model_selection.stratified_fold_ids` for
        classifiers, with ``StratifiedKFold``'s allocation, else
        :func:`mpitrain.model_selection.fold_ids`), or this rank's fold id
        of each row.
    refit : bool or str, default=True
        Refit the best candidate on all rows (``best_estimator_``,
        ``estimator_``).  With a list of scorings, as scikit-learn: the name
        of the metric that picks the best (``best_index_``, ``best_score_``
        and ``best_params_`` are then its), or ``False`` (no best).
    error_score : 'raise' or float, default=nan
        The score of a (candidate, fold) whose fit fails, and of a metric
        that cannot be scored for a fitted model (scikit-learn's "Scoring
        failed" warning); ``'raise'``: the failure is raised on every rank.
    mode : {"auto", "small", "large"}, default="auto"
        See the module docstring; ``search_mode_`` and ``mode_reason_`` say
        what ``auto`` chose and why.
    group_size : int, default=None
        Large mode: ranks per candidate; ``None``, or a number at least the
        number of ranks: all ranks.  Otherwise it must divide the number of
        ranks.
    checkpoint : str or path, default=None
        JSON file of finished results; a search with the same candidates,
        folds, scoring, estimator and data resumes from it.
    comm : mpi4py.MPI.Intracomm, default=None
        ``None``: ``COMM_WORLD``.

    Attributes
    ----------
    cv_results_ : dict
        scikit-learn's: ``params``, ``param_<name>``, ``split<k>_test_score``,
        ``mean_test_score``, ``std_test_score``, ``rank_test_score``,
        ``mean_fit_time``, ``std_fit_time``, ``mean_score_time``,
        ``std_score_time``.  The same on every rank.
    best_index_, best_score_, best_params_
    best_estimator_ : estimator
        The best candidate refitted on all rows: an mpitrain estimator
        (data-parallel), or a scikit-learn one fitted on rank 0.
    estimator_ : scikit-learn estimator
        The plain fitted scikit-learn model of the best candidate.
    search_mode_ : str
    mode_reason_ : str
    n_splits_ : int
    timings_ : dict
        Seconds of the search and the refit.
    """

    def __init__(
        self,
        estimator: Any,
        param_grid: Mapping[str, Sequence] | Sequence[Mapping[str, Sequence]],
        *,
        scoring: str | Sequence[str] | None = None,
        cv: Any = 5,
        refit: bool | str = True,
        error_score: Any = np.nan,
        mode: str = "auto",
        group_size: int | None = None,
        checkpoint: str | os.PathLike | None = None,
        comm: Intracomm | None = None,
    ):
        self.estimator = estimator
        self.param_grid = param_grid
        self.scoring = scoring
        self.cv = cv
        self.refit = refit
        self.error_score = error_score
        self.mode = mode
        self.group_size = group_size
        self.checkpoint = checkpoint
        self.comm = comm

    def _candidates(self, comm: Intracomm) -> list[dict]:
        """Every point of the grid, in scikit-learn's order. Local."""
        from sklearn.model_selection import ParameterGrid

        return list(ParameterGrid(self.param_grid))


class RandomizedSearchCV(_BaseSearch):
    """Search over ``n_iter`` random parameter settings, using every rank.

    As :class:`GridSearchCV`, with scikit-learn's ``param_distributions``,
    ``n_iter`` and ``random_state``: the candidates are scikit-learn's
    ``ParameterSampler`` draws, made on rank 0 and shared.
    """

    def __init__(
        self,
        estimator: Any,
        param_distributions: Mapping[str, Any] | Sequence[Mapping[str, Any]],
        *,
        n_iter: int = 10,
        scoring: str | Sequence[str] | None = None,
        cv: Any = 5,
        refit: bool | str = True,
        error_score: Any = np.nan,
        random_state: Any = None,
        mode: str = "auto",
        group_size: int | None = None,
        checkpoint: str | os.PathLike | None = None,
        comm: Intracomm | None = None,
    ):
        self.estimator = estimator
        self.param_distributions = param_distributions
        self.n_iter = n_iter
        self.scoring = scoring
        self.cv = cv
        self.refit = refit
        self.error_score = error_score
        self.random_state = random_state
        self.mode = mode
        self.group_size = group_size
        self.checkpoint = checkpoint
        self.comm = comm

    def _candidates(self, comm: Intracomm) -> list[dict]:
        """scikit-learn's ``ParameterSampler`` draws, the same on every rank. Collective."""
        from sklearn.model_selection import ParameterSampler

        draws = None
        if comm.Get_rank() == 0:
            draws = list(
                ParameterSampler(
                    self.param_distributions,
                    self.n_iter,
                    random_state=self.random_state,
                )
            )
        return bcast_object(draws, comm)
