"""Exact linear, ridge and polynomial regression: gold tests against scikit-learn on all rows."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import regression_problem
from sklearn import linear_model
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import PolynomialFeatures

from mpitrain.data import row_range
from mpitrain.stats import (
    PolynomialMap,
    combine_statistics,
    local_statistics,
    solve_least_squares,
)
from mpitrain.testing import run_function

RTOL = 1e-8


def _assert_same_model(mine, reference, rtol=RTOL):
    """Coefficients and intercepts equal within rtol relative to their scale."""
    a = np.append(np.ravel(mine.coef_), mine.intercept_)
    b = np.append(np.ravel(reference.coef_), reference.intercept_)
    np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * np.abs(b).max())


# ---------------------------------------------------------------- pure math


@pytest.mark.parametrize("offset", [0.0, 1e6])
def test_pooled_statistics_equal_numpy_on_all_rows(offset):
    X, y = regression_problem(n=1000, d=4, offset=offset)
    w = np.random.default_rng(2).uniform(0.5, 2, size=1000)
    parts = [
        local_statistics(X[a:b], y[a:b, None], w[a:b], chunk_bytes=2048, min_rows=1)
        for a, b in [(0, 10), (10, 10), (10, 600), (600, 1000)]
    ]  # includes an empty part
    pooled = combine_statistics(parts)
    Z = np.column_stack([X, y])
    mean = np.average(Z, axis=0, weights=w)
    scatter = (Z - mean).T @ ((Z - mean) * w[:, None])
    assert pooled.count == 1000
    np.testing.assert_allclose(pooled.weight, w.sum())
    np.testing.assert_allclose(pooled.mean, mean, rtol=1e-14)
    # Centring is stable even with a mean of 1e6 and unit spread.
    np.testing.assert_allclose(
        pooled.scatter, scatter, rtol=1e-9, atol=1e-9 * np.abs(scatter).max()
    )


def test_min_norm_solution_when_rank_deficient():
    X, y = regression_problem(n=50, d=3)
    X = np.column_stack([X, X[:, 0]])  # a repeated column
    stats = local_statistics(X, y[:, None])
    sol = solve_least_squares(stats, 0.0, singular_values=True)
    ref = linear_model.LinearRegression().fit(X, y)
    np.testing.assert_allclose(sol.coef[0], ref.coef_, atol=1e-8)
    assert sol.method == "svd" and sol.rank == ref.rank_ == 3


@pytest.mark.parametrize(
    "degree,interaction_only", [(1, False), (2, False), (3, False), (3, True)]
)
def test_polynomial_map_matches_sklearn_columns(degree, interaction_only):
    X = np.random.default_rng(0).normal(size=(7, 4))
    ref = PolynomialFeatures(
        degree, interaction_only=interaction_only, include_bias=False
    ).fit_transform(X)
    np.testing.assert_allclose(
        PolynomialMap(4, degree, interaction_only)(X), ref, rtol=1e-14
    )


# ------------------------------------------------------- distributed gold


def _fit_body(comm, kind, params, X, y, w=None):
    import mpitrain

    start, stop = row_range(len(X), comm.Get_size(), comm.Get_rank())
    est = getattr(mpitrain, kind)(comm=comm, **params)
    est.fit(
        X[start:stop], y[start:stop], sample_weight=None if w is None else w[start:stop]
    )
    return est.estimator_


def _reference(kind, params, X, y, w=None):
    if kind == "PolynomialRegression":
        p = dict(params)
        degree = p.pop("degree", 2)
        alpha = p.pop("alpha", 0.0)
        model = (
            linear_model.Ridge(alpha=alpha, **p)
            if alpha > 0
            else linear_model.LinearRegression(**p)
        )
        pipe = make_pipeline(PolynomialFeatures(degree, include_bias=False), model)
        return pipe.fit(
            X, y, **({} if w is None else {pipe.steps[-1][0] + "__sample_weight": w})
        )
    return getattr(linear_model, kind)(**params).fit(X, y, sample_weight=w)


CASES = [
    ("LinearRegression", {}),
    ("LinearRegression", {"fit_intercept": False}),
    ("Ridge", {"alpha": 3.0}),
    ("Ridge", {"alpha": 0.5, "fit_intercept": False}),
    ("PolynomialRegression", {"degree": 2}),
    ("PolynomialRegression", {"degree": 3, "alpha": 2.0}),
]


def _all_cases_body(comm, X, y, w):
    return [
        [_fit_body(comm, kind, params, X, y, weights) for kind, params in CASES]
        for weights in (None, w)
    ]


@pytest.mark.mpi(ranks=[1, 2, 3, 4])
def test_gold_equal_to_sklearn_on_all_rows(mpi_ranks):
    X, y = regression_problem(n=103, d=4, offset=50.0)
    w = np.random.default_rng(5).uniform(0, 3, size=103)
    per_rank = run_function(_all_cases_body, mpi_ranks, X, y, w)
    for weights, fitted in zip((None, w), per_rank[0]):
        for (kind, params), mine in zip(CASES, fitted):
            ref = _reference(kind, params, X, y, weights)
            if kind == "PolynomialRegression":
                mine, ref = mine.steps[-1][1], ref.steps[-1][1]
            _assert_same_model(mine, ref)
    # Every rank holds the bit-identical model.
    for other in per_rank[1:]:
        for a, b in zip(per_rank[0][1], other[1]):
            a, b = (a.steps[-1][1], b.steps[-1][1]) if hasattr(a, "steps") else (a, b)
            assert np.array_equal(a.coef_, b.coef_) and np.array_equal(
                a.intercept_, b.intercept_
            )


def _edge_body(comm, case):
    import mpitrain

    rank, size = comm.Get_rank(), comm.Get_size()
    if case == "more_ranks_than_rows":
        X, y = regression_problem(n=3, d=2)
        # Rows on ranks 0 and 2 only; everyone else takes part with none.
        parts = (
            {0: slice(0, 2), 2 % size: slice(2, 3)} if size > 2 else {0: slice(0, 3)}
        )
        sl = parts.get(rank, slice(0, 0))
        return mpitrain.LinearRegression(comm=comm).fit(X[sl], y[sl]).estimator_
    if case == "fewer_rows_than_features_per_rank":
        X, y = regression_problem(n=40, d=15)
        a, b = row_range(40, size, rank)
        return mpitrain.Ridge(alpha=0.1, comm=comm).fit(X[a:b], y[a:b]).estimator_
    if case == "float32":
        X, y = regression_problem(n=500, d=6, dtype=np.float32)
        a, b = row_range(500, size, rank)
        return mpitrain.LinearRegression(comm=comm).fit(X[a:b], y[a:b]).estimator_
    if case == "multi_target":
        X, y = regression_problem(n=90, d=3, t=2)
        a, b = row_range(90, size, rank)
        return (
            mpitrain.Ridge(alpha=[1.0, 4.0], comm=comm).fit(X[a:b], y[a:b]).estimator_
        )
    if case == "positive":
        X, y = regression_problem(n=200, d=5, seed=3)
        a, b = row_range(200, size, rank)
        return (
            mpitrain.LinearRegression(positive=True, comm=comm)
            .fit(X[a:b], y[a:b])
            .estimator_
        )
    raise AssertionError(case)


@pytest.mark.parametrize("ranks", [1, 3, 4])
def test_edge_cases_equal_sklearn(ranks):
    for case, reference, rtol in [
        (
            "more_ranks_than_rows",
            lambda: linear_model.LinearRegression().fit(*regression_problem(n=3, d=2)),
            RTOL,
        ),
        (
            "fewer_rows_than_features_per_rank",
            lambda: linear_model.Ridge(alpha=0.1).fit(*regression_problem(n=40, d=15)),
            RTOL,
        ),
        # float32 input, float64 statistics: compare with sklearn on the same float32 values in float64.
        (
            "float32",
            lambda: linear_model.LinearRegression().fit(
                *[
                    a.astype(np.float64)
                    for a in regression_problem(n=500, d=6, dtype=np.float32)
                ]
            ),
            1e-7,
        ),
        (
            "multi_target",
            lambda: linear_model.Ridge(alpha=np.array([1.0, 4.0])).fit(
                *regression_problem(n=90, d=3, t=2)
            ),
            RTOL,
        ),
        (
            "positive",
            lambda: linear_model.LinearRegression(positive=True).fit(
                *regression_problem(n=200, d=5, seed=3)
            ),
            1e-6,
        ),
    ]:
        mine = run_function(_edge_body, ranks, case)[0]
        _assert_same_model(mine, reference(), rtol=rtol)


def _pickle_body(comm, X, y):
    import pickle

    import mpitrain

    a, b = row_range(len(X), comm.Get_size(), comm.Get_rank())
    est = mpitrain.Ridge(alpha=1.0, comm=comm).fit(X[a:b], y[a:b])
    return (
        pickle.dumps(est.estimator_),
        est.predict(X[:5]),
        est.n_rows_,
        sorted(est.timings_),
    )


def test_estimator_is_plain_sklearn_and_predicts_without_mpi():
    import pickle
    import sys

    X, y = regression_problem(n=60, d=3)
    blob, pred, n_rows, phases = run_function(_pickle_body, 2, X, y)[1]
    model = pickle.loads(blob)
    assert type(model) is linear_model.Ridge
    np.testing.assert_allclose(model.predict(X[:5]), pred)
    assert n_rows == 60 and phases == ["communicate", "local_compute", "solve"]
    assert "mpi4py.MPI" not in sys.modules  # the parent never initialised MPI


def _check_estimator_body(comm):
    from sklearn.utils.estimator_checks import check_estimator

    import mpitrain

    for est in (
        mpitrain.LinearRegression(),
        mpitrain.Ridge(),
        mpitrain.PolynomialRegression(),
    ):
        check_estimator(est)
    return True


def test_sklearn_check_estimator_on_one_rank():
    assert run_function(_check_estimator_body, 1, timeout=300) == [True]
