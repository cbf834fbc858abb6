"""Exact linear grids by fold subtraction: every (candidate, fold) score against scikit-learn's GridSearchCV."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import linear_model as sk
from sklearn.model_selection import GridSearchCV, ParameterGrid

from mpitrain.errors import UsageError
from mpitrain.model_selection._linear_grid import linear_grid_scores
from mpitrain.testing import run_function

K = 4
TIGHT = {"tol": [1e-12], "max_iter": [100_000]}
SKLEARN = {
    "linear": sk.LinearRegression,
    "ridge": sk.Ridge,
    "lasso": sk.Lasso,
    "elasticnet": sk.ElasticNet,
}


def _problem(n=160, d=6, seed=0, offset=0.0):
    """Rows with a sparse linear target, and each row's fold (uneven fold sizes)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) + offset
    coef = rng.uniform(-2, 2, d) * (rng.uniform(size=d) < 0.7)
    y = (X - offset) @ coef + 1.5 + offset + 0.5 * rng.normal(size=n)
    folds = rng.integers(0, K, n)
    return X, y, folds


def _bounds(n, size, rank):
    """This rank's rows; with 4 ranks, rank 2 holds none (it still takes part)."""
    if size == 4:
        cuts = [0, n // 3, 2 * n // 3, 2 * n // 3, n]
        return cuts[rank], cuts[rank + 1]
    from mpitrain.data import row_range

    return row_range(n, size, rank)


def _reference(model, grid, X, y, folds, scoring):
    """scikit-learn's GridSearchCV on all rows with the same folds: (n_candidates, K) scores."""
    cv = [(np.flatnonzero(folds != k), np.flatnonzero(folds == k)) for k in range(K)]
    search = GridSearchCV(SKLEARN[model](), grid, cv=cv, scoring=scoring).fit(X, y)
    return np.column_stack(
        [search.cv_results_[f"split{k}_test_score"] for k in range(K)]
    )


def _grid_body(comm, X, y, folds, cases):
    from mpitrain.model_selection._linear_grid import (
        fit_from_statistics,
        linear_grid_scores,
    )

    start, stop = _bounds(len(X), comm.Get_size(), comm.Get_rank())
    out = []
    for model, grid, scoring in cases:
        result = linear_grid_scores(
            X[start:stop],
            y[start:stop],
            model=model,
            param_grid=list(ParameterGrid(grid)),
            fold_ids=folds[start:stop],
            n_folds=K,
            scoring=scoring,
            comm=comm,
        )
        best = int(np.argmax(result["test_scores"].mean(axis=1)))
        refit = fit_from_statistics(
            model, result["params"][best], result["total"], comm=comm
        ).estimator_
        out.append(
            {
                "scores": result["test_scores"],
                "n_test": result["n_test"],
                "best": best,
                "coef": refit.coef_,
                "intercept": refit.intercept_,
                "times": (result["fit_times"] >= 0).all()
                and result["statistics_time"] > 0,
            }
        )
    return out


RIDGE_CASES = [
    ("ridge", {"alpha": [1e-3, 0.1, 3.0, 100.0], "fit_intercept": [True, False]}, "r2"),
    ("ridge", {"alpha": [0.5, 20.0]}, "neg_mean_squared_error"),
    ("linear", {"fit_intercept": [True, False]}, "neg_root_mean_squared_error"),
]


@pytest.mark.mpi(ranks=[1, 2, 4])
def test_ridge_and_linear_equal_gridsearchcv(mpi_ranks):
    X, y, folds = _problem()
    results = run_function(_grid_body, mpi_ranks, X, y, folds, RIDGE_CASES)
    for case, mine in zip(RIDGE_CASES, results[0]):
        model, grid, scoring = case
        reference = _reference(model, grid, X, y, folds, scoring)
        np.testing.assert_allclose(mine["scores"], reference, rtol=1e-10, atol=1e-12)
        np.testing.assert_array_equal(mine["n_test"], np.bincount(folds, minlength=K))
        assert mine["times"]
        # The best candidate refitted from the total statistics: scikit-learn on all rows.
        params = list(ParameterGrid(grid))[mine["best"]]
        full = SKLEARN[model](**params).fit(X, y)
        np.testing.assert_allclose(mine["coef"], full.coef_, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(
            mine["intercept"], full.intercept_, rtol=1e-10, atol=1e-12
        )
    for other in results[1:]:  # identical on every rank
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a["scores"], b["scores"])


CD_CASES = [
    ("lasso", {"alpha": [0.003, 0.03, 0.3, 3.0], **TIGHT}, "r2"),
    (
        "elasticnet",
        {
            "alpha": [0.01, 0.5],
            "l1_ratio": [0.2, 0.8],
            "fit_intercept": [True, False],
            **TIGHT,
        },
        "neg_mean_squared_error",
    ),
]


@pytest.mark.mpi(ranks=[1, 2, 4])
def test_lasso_and_elasticnet_equal_gridsearchcv(mpi_ranks):
    """To the coordinate-descent tolerance: with tol=1e-12 the optima agree to about 1e-9."""
    X, y, folds = _problem(seed=1)
    results = run_function(_grid_body, mpi_ranks, X, y, folds, CD_CASES)
    for (model, grid, scoring), mine in zip(CD_CASES, results[0]):
        reference = _reference(model, grid, X, y, folds, scoring)
        np.testing.assert_allclose(mine["scores"], reference, rtol=1e-8, atol=1e-9)
        params = list(ParameterGrid(grid))[mine["best"]]
        full = SKLEARN[model](**params).fit(X, y)
        np.testing.assert_allclose(mine["coef"], full.coef_, rtol=1e-7, atol=1e-8)


def _weighted_body(comm, X, y, folds, w, grid):
    start, stop = _bounds(len(X), comm.Get_size(), comm.Get_rank())
    return {
        scoring: linear_grid_scores(
            X[start:stop],
            y[start:stop],
            model="ridge",
            param_grid=grid,
            fold_ids=folds[start:stop],
            n_folds=K,
            scoring=scoring,
            sample_weight=w[start:stop],
            comm=comm,
        )["test_scores"]
        for scoring in ("r2", "neg_mean_squared_error")
    }


@pytest.mark.mpi(ranks=[2])
def test_weighted_fits_and_scores(mpi_ranks):
    from sklearn.metrics import mean_squared_error, r2_score

    X, y, folds = _problem(seed=2)
    w = np.random.default_rng(3).uniform(0.0, 3.0, len(X))
    grid = [{"alpha": 0.1}, {"alpha": 10.0}]
    mine = run_function(_weighted_body, mpi_ranks, X, y, folds, w, grid)[0]
    for c, params in enumerate(grid):
        for k in range(K):
            train, test = folds != k, folds == k
            pred = sk.Ridge(**params).fit(X[train], y[train], w[train]).predict(X[test])
            r2 = r2_score(y[test], pred, sample_weight=w[test])
            mse = mean_squared_error(y[test], pred, sample_weight=w[test])
            np.testing.assert_allclose(mine["r2"][c, k], r2, rtol=1e-10)
            np.testing.assert_allclose(
                mine["neg_mean_squared_error"][c, k], -mse, rtol=1e-10
            )


@pytest.mark.mpi(ranks=[2])
def test_large_means_do_not_cancel(mpi_ranks):
    """Rows near 1e8 with spread 1: training statistics by raw subtraction
    (Σxxᵀ of all rows minus the fold's, each about n·1e16) would lose every
    digit of the scatter (about n); merging centred folds keeps ~1e-8 of it."""
    X, y, folds = _problem(n=200, seed=4, offset=1e8)
    grid = {"alpha": [1e-2, 1.0]}
    cases = [("ridge", grid, "r2"), ("lasso", {"alpha": [0.01, 0.1], **TIGHT}, "r2")]
    mine = run_function(_grid_body, mpi_ranks, X, y, folds, cases)[0]
    # The reference sees the same rows shifted by exactly 1e8 (Sterbenz: exact),
    # which an intercept absorbs, so it has no large means to lose digits to.
    for (model, grid, scoring), result in zip(cases, mine):
        reference = _reference(model, grid, X - 1e8, y - 1e8, folds, scoring)
        assert reference.min() > 0.5
        np.testing.assert_allclose(result["scores"], reference, rtol=1e-6)


def _failure_body(comm, X, y, folds, grid, error_score):
    import warnings

    start, stop = _bounds(len(X), comm.Get_size(), comm.Get_rank())
    try:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            result = linear_grid_scores(
                X[start:stop],
                y[start:stop],
                model="ridge",
                param_grid=grid,
                fold_ids=folds[start:stop],
                n_folds=K,
                error_score=error_score,
                comm=comm,
            )
    except Exception as exc:
        return type(exc).__name__, str(exc)
    return result["test_scores"], result["errors"], [w.category.__name__ for w in seen]


@pytest.mark.mpi(ranks=[2])
def test_failed_candidate_gets_error_score(mpi_ranks):
    X, y, folds = _problem(seed=5)
    grid = [{"alpha": 1.0}, {"alpha": -1.0}]
    outs = run_function(_failure_body, mpi_ranks, X, y, folds, grid, np.nan)
    reference = _reference("ridge", {"alpha": [1.0]}, X, y, folds, "r2")
    for scores, errors, categories in outs:
        np.testing.assert_allclose(scores[0], reference[0], rtol=1e-10)
        assert np.isnan(scores[1]).all()
        assert errors[0] == [None] * K
        assert all("alpha" in message for message in errors[1])
        assert "FitFailedWarning" in categories
    # error_score="raise": the same error on both ranks, naming the candidate.
    outs = run_function(_failure_body, mpi_ranks, X, y, folds, grid, "raise")
    assert outs[0] == outs[1]
    assert outs[0][0] == "ValueError" and "candidate 1 {'alpha': -1.0}" in outs[0][1]


def _bad_folds_body(comm, X, y, folds):
    start, stop = _bounds(len(X), comm.Get_size(), comm.Get_rank())
    mine = folds[start:stop].copy()
    if comm.Get_rank() == 1:
        mine[0] = K  # out of range on one rank only
    try:
        linear_grid_scores(
            X[start:stop],
            y[start:stop],
            model="lasso",
            param_grid=[{"alpha": 0.1}],
            fold_ids=mine,
            n_folds=K,
            comm=comm,
        )
    except Exception as exc:
        return type(exc).__name__, str(exc)
    return None


@pytest.mark.mpi(ranks=[2])
def test_bad_fold_ids_on_one_rank_fail_every_rank(mpi_ranks):
    X, y, folds = _problem(seed=6)
    outs = run_function(_bad_folds_body, mpi_ranks, X, y, folds)
    assert outs[0] == outs[1]
    name, message = outs[0]
    assert name == "DistributedValueError"
    assert "rank 1" in message and f"fold_ids must lie in 0 .. {K - 1}" in message


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"scoring": "accuracy"}, "cannot be computed from sufficient statistics"),
        ({"scoring": "neg_mean_absolute_error"}, "cannot be computed from sufficient"),
        ({"model": "svc"}, "the exact linear grid fits"),
        ({"param_grid": {"alpha": [1.0, 2.0]}}, "list of candidates"),
        ({"param_grid": [{"alpha": [1.0, 2.0]}]}, "ParameterGrid"),
        ({"param_grid": [{"C": 1.0}]}, "Ridge has no parameter 'C'"),
        ({"param_grid": [{"strategy": "average"}]}, "strategy must be 'exact'"),
        ({"n_folds": 1}, "n_folds must be an integer of at least 2"),
    ],
)
def test_usage_errors_before_any_communication(kwargs, match):
    """Raised from the arguments alone, in this (non-MPI) pytest process."""
    X, y, folds = _problem(n=20)
    args = dict(model="ridge", param_grid=[{"alpha": 1.0}], fold_ids=folds, n_folds=K)
    with pytest.raises(UsageError, match=match):
        linear_grid_scores(X, y, **{**args, **kwargs})


def _instance_body(comm, X, y, folds, grid):
    from mpitrain.linear_model import Lasso
    from mpitrain.model_selection._linear_grid import fit_from_statistics

    start, stop = _bounds(len(X), comm.Get_size(), comm.Get_rank())
    # The instance's parameters are every candidate's base; its comm is not used.
    base = Lasso(fit_intercept=False, tol=1e-12, max_iter=100_000, comm=comm)
    result = linear_grid_scores(
        X[start:stop],
        y[start:stop],
        model=base,
        param_grid=grid,
        fold_ids=folds[start:stop],
        n_folds=K,
        scoring="neg_mean_squared_error",
        comm=comm,
    )
    refit = fit_from_statistics(base, grid[0], result["total"], comm=comm)
    return result["test_scores"], refit.estimator_.coef_, refit.estimator_.intercept_


@pytest.mark.mpi(ranks=[2])
def test_estimator_instance_gives_the_base_parameters(mpi_ranks):
    X, y, folds = _problem(seed=7)
    grid = [{"alpha": 0.01}, {"alpha": 0.2}]
    scores, coef, intercept = run_function(
        _instance_body, mpi_ranks, X, y, folds, grid
    )[0]
    base = {"fit_intercept": [False], **TIGHT}
    reference = _reference(
        "lasso", {**base, "alpha": [0.01, 0.2]}, X, y, folds, "neg_mean_squared_error"
    )
    np.testing.assert_allclose(scores, reference, rtol=1e-8)
    full = sk.Lasso(alpha=0.01, fit_intercept=False, tol=1e-12, max_iter=100_000).fit(
        X, y
    )
    np.testing.assert_allclose(coef, full.coef_, rtol=1e-7, atol=1e-9)
    assert intercept == 0.0


def _memory_body(comm, X, y, folds, limit):
    import os

    from mpitrain.linear_model import Ridge

    start, stop = _bounds(len(X), comm.Get_size(), comm.Get_rank())
    before = os.environ.get("MPITRAIN_MEMORY_LIMIT")
    os.environ["MPITRAIN_MEMORY_LIMIT"] = str(limit)
    try:
        # One fit's 5 Gram-sized matrices fit in the limit ...
        Ridge(comm=comm).fit(X[start:stop], y[start:stop])
        # ... the grid's 2K + 5 do not: refused on every rank before the pass.
        linear_grid_scores(
            X[start:stop],
            y[start:stop],
            model="ridge",
            param_grid=[{"alpha": 1.0}],
            fold_ids=folds[start:stop],
            n_folds=K,
            comm=comm,
        )
    except Exception as exc:
        return type(exc).__name__, str(exc)
    finally:
        if before is None:
            del os.environ["MPITRAIN_MEMORY_LIMIT"]
        else:
            os.environ["MPITRAIN_MEMORY_LIMIT"] = before
    return None


@pytest.mark.mpi(ranks=[2])
def test_memory_check_counts_every_fold(mpi_ranks):
    from mpitrain.stats import gram_bytes

    X, y, folds = _problem(seed=8)
    limit = 6 * gram_bytes(X.shape[1])
    outs = run_function(_memory_body, mpi_ranks, X, y, folds, limit)
    assert outs[0] == outs[1]
    name, message = outs[0]
    assert name == "DistributedMemoryError"
    assert "too many for the exact method" in message
