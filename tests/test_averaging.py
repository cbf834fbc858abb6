"""The ``average`` strategy: per-rank scikit-learn fits, averaged by weight."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import linear_model

from conftest import regression_problem
from mpitrain.averaging import rescaled_params, weighted_average
from mpitrain.data import row_range
from mpitrain.testing import run_function


def test_rescaling_rules():
    assert rescaled_params(linear_model.Ridge(alpha=2.0), 0.25) == {"alpha": 0.5}
    assert rescaled_params(linear_model.LogisticRegression(C=2.0), 0.25) == {"C": 8.0}
    assert rescaled_params(linear_model.Lasso(alpha=2.0), 0.25) == {}
    assert rescaled_params(linear_model.LinearRegression(), 0.25) == {}


def test_weighted_average_skips_rows_nobody_fitted():
    got = weighted_average([np.ones((2, 3)), 3 * np.ones((2, 3))], [np.array([1.0, 0.0]), np.array([3.0, 0.0])])
    np.testing.assert_allclose(got, [[2.5] * 3, [0.0] * 3])


def _split(n, size):
    return [slice(*row_range(n, size, r)) for r in range(size)]


def _reference_average(make, X, y, w, size, rescale=None):
    """Per-slice scikit-learn fits, weighted by slice weight, computed here without mpitrain."""
    coefs, intercepts, weights = [], [], []
    total = w.sum()
    for sl in _split(len(X), size):
        if sl.stop == sl.start:
            continue
        model = make()
        if rescale:
            name, how = rescale
            value = getattr(model, name)
            model.set_params(**{name: value * w[sl].sum() / total if how == "times" else value * total / w[sl].sum()})
        model.fit(X[sl], y[sl], sample_weight=w[sl])
        coefs.append(model.coef_)
        intercepts.append(model.intercept_)
        weights.append(w[sl].sum())
    weights = np.array(weights)
    return (sum(c * k for c, k in zip(coefs, weights)) / weights.sum(),
            sum(i * k for i, k in zip(intercepts, weights)) / weights.sum())


CASES = [
    ("Ridge", {"alpha": 5.0}, lambda: linear_model.Ridge(alpha=5.0), ("alpha", "times")),
    ("LinearRegression", {}, lambda: linear_model.LinearRegression(), None),
    ("Lasso", {"alpha": 0.05}, lambda: linear_model.Lasso(alpha=0.05), None),
]


def _average_body(comm, X, y, w):
    import mpitrain

    a, b = row_range(len(X), comm.Get_size(), comm.Get_rank())
    out = []
    for kind, params, _, _ in CASES:
        est = getattr(mpitrain, kind)(strategy="average", comm=comm, **params)
        est.fit(X[a:b], y[a:b], sample_weight=w[a:b])
        out.append(est.estimator_)
    return out


@pytest.mark.mpi(ranks=[1, 3, 4])
def test_average_is_the_weighted_mean_of_per_rank_fits(mpi_ranks):
    X, y = regression_problem(n=203, d=4)
    w = np.random.default_rng(4).uniform(0.5, 2.0, size=203)
    fitted = run_function(_average_body, mpi_ranks, X, y, w)
    for (kind, _, make, rescale), mine in zip(CASES, fitted[0]):
        coef, intercept = _reference_average(make, X, y, w, mpi_ranks, rescale)
        assert type(mine).__name__ == kind
        np.testing.assert_allclose(mine.coef_, coef, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(mine.intercept_, intercept, rtol=1e-10, atol=1e-12)
        if mpi_ranks == 1:  # one rank: averaging is the plain scikit-learn fit on all rows
            ref = make().fit(X, y, sample_weight=w)
            np.testing.assert_allclose(mine.coef_, ref.coef_, rtol=1e-12)
    for other in fitted[1:]:  # bit-identical everywhere
        assert all(np.array_equal(a.coef_, b.coef_) for a, b in zip(fitted[0], other))


def _gap_body(comm, X, y):
    import mpitrain

    a, b = row_range(len(X), comm.Get_size(), comm.Get_rank())
    exact = mpitrain.Ridge(alpha=1.0, comm=comm).fit(X[a:b], y[a:b]).estimator_
    average = mpitrain.Ridge(alpha=1.0, strategy="average", comm=comm).fit(X[a:b], y[a:b]).estimator_
    return exact.coef_, average.coef_


def test_average_is_close_to_exact_on_identically_distributed_slices():
    X, y = regression_problem(n=40_000, d=5, seed=8)
    exact, average = run_function(_gap_body, 4, X, y)[0]
    gap = np.abs(exact - average).max() / np.abs(exact).max()
    assert gap < 1e-3  # 10,000 noisy rows per rank: the per-rank fits agree closely


def _empty_rank_body(comm, X, y):
    import mpitrain

    sl = slice(0, len(X)) if comm.Get_rank() == 1 else slice(0, 0)
    return mpitrain.Ridge(alpha=1.0, strategy="average", comm=comm).fit(X[sl], y[sl]).estimator_


def test_ranks_without_rows_take_part_with_zero_weight():
    X, y = regression_problem(n=50, d=3)
    mine = run_function(_empty_rank_body, 3, X, y)[0]
    ref = linear_model.Ridge(alpha=1.0).fit(X, y)  # the one rank with rows holds all the weight
    np.testing.assert_allclose(mine.coef_, ref.coef_, rtol=1e-12)


def _sgd_body(comm, X, y, labels):
    import mpitrain

    a, b = row_range(len(X), comm.Get_size(), comm.Get_rank())
    reg = mpitrain.SGDRegressor(random_state=0, comm=comm).fit(X[a:b], y[a:b])
    clf = mpitrain.SGDClassifier(loss="log_loss", random_state=0, rounds=8, comm=comm,
                                     class_weight="balanced").fit(X[a:b], labels[a:b])
    # Rank 0 holds only one class: it still takes part, with zero weight.
    if comm.Get_size() > 1:
        keep = labels[a:b] == labels[0] if comm.Get_rank() == 0 else slice(None)
        one = mpitrain.SGDClassifier(random_state=0, comm=comm).fit(X[a:b][keep], labels[a:b][keep])
    else:
        one = None
    return reg.estimator_, clf.estimator_, one and one.estimator_


@pytest.mark.mpi(ranks=[1, 3])
def test_sgd_by_averaging(mpi_ranks):
    X, y = regression_problem(n=3000, d=4, seed=2)
    X = X / X.std(axis=0)
    labels = np.where(X[:, 0] + 0.5 * X[:, 1] > 0.3, "yes", "no")
    reg, clf, one = run_function(_sgd_body, mpi_ranks, X, y, labels)[0]
    if mpi_ranks == 1:
        ref = linear_model.SGDRegressor(random_state=0).fit(X, y)
        np.testing.assert_allclose(reg.coef_, ref.coef_, rtol=1e-12)
    ref = linear_model.LinearRegression().fit(X, y)
    assert np.abs(reg.coef_ - ref.coef_).max() < 0.05 * np.abs(ref.coef_).max()
    assert list(clf.classes_) == ["no", "yes"] and clf.class_weight == "balanced"
    assert (clf.predict(X) == labels).mean() > 0.95
    if one is not None:
        assert (one.predict(X) == labels).mean() > 0.9
