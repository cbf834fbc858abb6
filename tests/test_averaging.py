"""The ``average`` strategy: per-rank scikit-learn fits, averaged by weight."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import regression_problem
from sklearn import linear_model

from mpitrain.data import row_range
from mpitrain.linear_model import rescaled_params, weighted_average
from mpitrain.testing import run_function


def test_rescaling_rules():
    assert rescaled_params(linear_model.Ridge(alpha=2.0), 0.25) == {"alpha": 0.5}
    assert rescaled_params(linear_model.LogisticRegression(C=2.0), 0.25) == {"C": 8.0}
    assert rescaled_params(linear_model.Lasso(alpha=2.0), 0.25) == {}
    assert rescaled_params(linear_model.LinearRegression(), 0.25) == {}


def test_weighted_average_skips_rows_nobody_fitted():
    got = weighted_average(
        [np.ones((2, 3)), 3 * np.ones((2, 3))],
        [np.array([1.0, 0.0]), np.array([3.0, 0.0])],
    )
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
            model.set_params(
                **{
                    name: value * w[sl].sum() / total
                    if how == "times"
                    else value * total / w[sl].sum()
                }
            )
        model.fit(X[sl], y[sl], sample_weight=w[sl])
        coefs.append(model.coef_)
        intercepts.append(model.intercept_)
        weights.append(w[sl].sum())
    weights = np.array(weights)
    return (
        sum(c * k for c, k in zip(coefs, weights)) / weights.sum(),
        sum(i * k for i, k in zip(intercepts, weights)) / weights.sum(),
    )


CASES = [
    (
        "Ridge",
        {"alpha": 5.0},
        lambda: linear_model.Ridge(alpha=5.0),
        ("alpha", "times"),
    ),
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
        if (
            mpi_ranks == 1
        ):  # one rank: averaging is the plain scikit-learn fit on all rows
            ref = make().fit(X, y, sample_weight=w)
            np.testing.assert_allclose(mine.coef_, ref.coef_, rtol=1e-12)
    for other in fitted[1:]:  # bit-identical everywhere
        assert all(np.array_equal(a.coef_, b.coef_) for a, b in zip(fitted[0], other))


def _gap_body(comm, X, y):
    import mpitrain

    a, b = row_range(len(X), comm.Get_size(), comm.Get_rank())
    exact = mpitrain.Ridge(alpha=1.0, comm=comm).fit(X[a:b], y[a:b]).estimator_
    average = (
        mpitrain.Ridge(alpha=1.0, strategy="average", comm=comm)
        .fit(X[a:b], y[a:b])
        .estimator_
    )
    return exact.coef_, average.coef_


def test_average_is_close_to_exact_on_identically_distributed_slices():
    X, y = regression_problem(n=40_000, d=5, seed=8)
    exact, average = run_function(_gap_body, 4, X, y)[0]
    gap = np.abs(exact - average).max() / np.abs(exact).max()
    assert gap < 1e-3  # 10,000 noisy rows per rank: the per-rank fits agree closely


def _empty_rank_body(comm, X, y):
    import mpitrain

    sl = slice(0, len(X)) if comm.Get_rank() == 1 else slice(0, 0)
    return (
        mpitrain.Ridge(alpha=1.0, strategy="average", comm=comm)
        .fit(X[sl], y[sl])
        .estimator_
    )


def test_ranks_without_rows_take_part_with_zero_weight():
    X, y = regression_problem(n=50, d=3)
    mine = run_function(_empty_rank_body, 3, X, y)[0]
    ref = linear_model.Ridge(alpha=1.0).fit(
        X, y
    )  # the one rank with rows holds all the weight
    np.testing.assert_allclose(mine.coef_, ref.coef_, rtol=1e-12)


def _sgd_body(comm, X, y, labels):
    import mpitrain

    a, b = row_range(len(X), comm.Get_size(), comm.Get_rank())
    reg = mpitrain.SGDRegressor(random_state=0, comm=comm).fit(X[a:b], y[a:b])
    clf = mpitrain.SGDClassifier(
        loss="log_loss", random_state=0, rounds=8, comm=comm, class_weight="balanced"
    ).fit(X[a:b], labels[a:b])
    # Rank 0 holds only one class: it still takes part, with zero weight.
    if comm.Get_size() > 1:
        keep = labels[a:b] == labels[0] if comm.Get_rank() == 0 else slice(None)
        one = mpitrain.SGDClassifier(random_state=0, comm=comm).fit(
            X[a:b][keep], labels[a:b][keep]
        )
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


def _classifier_average_body(comm, X, labels):
    import mpitrain

    a, b = row_range(len(X), comm.Get_size(), comm.Get_rank())
    return [
        mpitrain.LogisticRegression(C=0.5, strategy="average", comm=comm)
        .fit(X[a:b], labels[a:b])
        .estimator_,
        mpitrain.LinearSVC(C=0.5, strategy="average", comm=comm)
        .fit(X[a:b], labels[a:b])
        .estimator_,
    ]


def _reference_classifier_average(make, X, labels, size):
    """Per-slice scikit-learn fits with C scaled by the slice's share, averaged by row count."""
    coefs, intercepts, weights = [], [], []
    for sl in _split(len(X), size):
        model = make()
        model.set_params(C=model.C * len(X) / (sl.stop - sl.start))
        model.fit(X[sl], labels[sl])
        coefs.append(model.coef_)
        intercepts.append(model.intercept_)
        weights.append(sl.stop - sl.start)
    w = np.array(weights, dtype=float)
    return sum(c * k for c, k in zip(coefs, w)) / w.sum(), sum(
        i * k for i, k in zip(intercepts, w)
    ) / w.sum()


@pytest.mark.mpi(ranks=[1, 3])
def test_classifier_average_is_the_weighted_mean_of_per_rank_fits(mpi_ranks):
    from sklearn.svm import LinearSVC

    rng = np.random.default_rng(6)
    X = rng.normal(size=(600, 3))
    labels = np.array(["a", "b", "c"])[(X @ rng.normal(size=(3, 3))).argmax(axis=1)]
    logistic, svc = run_function(_classifier_average_body, mpi_ranks, X, labels)[0]
    for mine, make in (
        (logistic, lambda: linear_model.LogisticRegression(C=0.5)),
        (svc, lambda: LinearSVC(C=0.5)),
    ):
        coef, intercept = _reference_classifier_average(make, X, labels, mpi_ranks)
        assert list(mine.classes_) == ["a", "b", "c"]
        np.testing.assert_allclose(mine.coef_, coef, rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(mine.intercept_, intercept, rtol=1e-8, atol=1e-10)
        assert (mine.predict(X) == labels).mean() > 0.9


def _missing_class_body(comm, X, labels):
    import warnings

    import mpitrain

    # Sorted rows: each rank sees a different mix of classes, the first only one.
    order = np.argsort(labels, kind="stable")
    a, b = row_range(len(X), comm.Get_size(), comm.Get_rank())
    rows = order[a:b]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        est = mpitrain.LogisticRegression(strategy="average", comm=comm).fit(
            X[rows], labels[rows]
        )
    return (
        est.estimator_,
        est.averaging_["ranks_contributing"],
        [str(w.category.__name__) for w in caught],
    )


def test_average_with_classes_missing_on_ranks_warns_and_still_fits():
    rng = np.random.default_rng(7)
    X = rng.normal(size=(900, 2))
    labels = np.where(X[:, 0] > 0, "hi", np.where(X[:, 0] < -1, "lo", "mid"))
    counts = {c: int((labels == c).sum()) for c in ("hi", "lo", "mid")}
    assert (
        counts["hi"] >= 300 and counts["mid"] >= 300
    )  # ranks 0 and 2 each see one class
    results = run_function(_missing_class_body, 3, X, labels)
    model, contributing, warned = results[0]
    assert list(model.classes_) == ["hi", "lo", "mid"]
    assert all(r[2] == warned for r in results)  # the same warning on every rank
    assert "ClassProportionWarning" in warned
    assert contributing == [1]  # ranks 0 and 2 hold one class each: zero weight
    assert (model.predict(X) == labels).mean() > 0.6


def _average_errors_body(comm):
    import mpitrain
    from mpitrain.stats import local_statistics

    X = np.random.default_rng(comm.Get_rank()).normal(size=(20, 2))
    messages = []
    # One class over all ranks: nothing to separate.
    try:
        mpitrain.LogisticRegression(strategy="average", comm=comm).fit(X, np.zeros(20))
    except ValueError as exc:
        messages.append(str(exc))
    # Every rank sees one class only (a different one): no rank can fit any row.
    try:
        mpitrain.LinearSVC(strategy="average", comm=comm).fit(
            X, np.full(20, comm.Get_rank())
        )
    except ValueError as exc:
        messages.append(str(exc))
    # Pooled statistics only make sense for the exact strategy.
    try:
        mpitrain.Ridge(strategy="average", comm=comm).fit_statistics(
            local_statistics(X, X[:, :1])
        )
    except ValueError as exc:
        messages.append(str(exc))
    return messages


def test_average_errors_are_the_same_on_every_rank():
    results = run_function(_average_errors_body, 3)
    assert all(r == results[0] for r in results)
    one_class, no_fit, statistics = results[0]
    # The one class agreement's message, as for the exact classifiers.
    assert "needs samples of at least 2 classes over all ranks" in one_class
    assert "only one class: 0.0" in one_class
    assert (
        "no rank could fit every coefficient row" in no_fit
        and "strategy='exact'" in no_fit
    )
    assert "needs strategy='exact'" in statistics
