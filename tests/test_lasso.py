"""Exact Lasso and ElasticNet: gold tests against scikit-learn on all rows, and the Gram size limit."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import linear_model

from mpitrain.data import row_range
from mpitrain.stats import (
    check_gram_size,
    gram_bytes,
    least_squares_surrogate,
    local_statistics,
)
from mpitrain.testing import run_function

RTOL = 1e-6
TIGHT = {"tol": 1e-12, "max_iter": 200_000}


def sparse_problem(n, d, seed=0, offset=0.0, t=None, intercept=1.5):
    """Rows whose target depends on about half of the features."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) + offset
    shape = (d,) if t is None else (d, t)
    coef = rng.uniform(-3, 3, size=shape) * (rng.uniform(size=shape) < 0.5)
    y = (
        (X - offset) @ coef
        + intercept
        + 0.3 * rng.normal(size=(n,) if t is None else (n, t))
    )
    return X, y


# Data sets by name, built identically in the parent and on every rank.
DATA = {
    "tall": lambda: sparse_problem(157, 8, seed=1, offset=20.0),
    # At 2-4 ranks every rank holds fewer rows than features.
    "few_rows_per_rank": lambda: sparse_problem(22, 12, seed=2),
    # More features than rows in total: the Gram matrix is singular.
    "wide": lambda: sparse_problem(15, 30, seed=3),
    "positive": lambda: (lambda X, y: (X, np.abs(y) + X @ np.full(6, 0.5)))(
        *sparse_problem(120, 6, seed=4)
    ),
    "multi_target": lambda: sparse_problem(90, 5, seed=5, t=2),
}

CASES = [
    ("Lasso", {"alpha": 0.1}, "tall"),
    ("Lasso", {"alpha": 0.3, "fit_intercept": False}, "tall"),
    ("ElasticNet", {"alpha": 0.2, "l1_ratio": 0.4}, "tall"),
    ("ElasticNet", {"alpha": 0.05, "l1_ratio": 0.7, "fit_intercept": False}, "tall"),
    ("Lasso", {"alpha": 0.05}, "few_rows_per_rank"),
    ("ElasticNet", {"alpha": 0.1, "l1_ratio": 0.5}, "few_rows_per_rank"),
    ("Lasso", {"alpha": 0.05}, "wide"),
    ("Lasso", {"alpha": 0.05, "fit_intercept": False}, "wide"),
    ("ElasticNet", {"alpha": 0.05, "l1_ratio": 0.9}, "wide"),
    ("Lasso", {"alpha": 0.2, "positive": True}, "positive"),
    (
        "ElasticNet",
        {"alpha": 0.1, "l1_ratio": 0.6, "positive": True, "fit_intercept": False},
        "positive",
    ),
    ("Lasso", {"alpha": 0.1}, "multi_target"),
    (
        "Lasso",
        {"alpha": 0.1, "precompute": True, "selection": "random", "random_state": 0},
        "tall",
    ),
]


def _weights(n, seed=7):
    return np.random.default_rng(seed).uniform(0.0, 3.0, size=n)


def _my_rows(comm, n, layout):
    """This rank's slice: balanced, or none on the last rank (when there are several)."""
    size, rank = comm.Get_size(), comm.Get_rank()
    if layout == "empty_last_rank" and size > 1:
        return slice(*row_range(n, size - 1, rank)) if rank < size - 1 else slice(0, 0)
    return slice(*row_range(n, size, rank))


def _gold_body(comm):
    import mpitrain.linear_model as ml

    results = []
    for layout in ("balanced", "empty_last_rank"):
        for weighted in (False, True):
            for kind, params, data in CASES:
                X, y = DATA[data]()
                rows = _my_rows(comm, len(X), layout)
                w = _weights(len(X))[rows] if weighted else None
                est = getattr(ml, kind)(comm=comm, **params, **TIGHT).fit(
                    X[rows], y[rows], sample_weight=w
                )
                results.append(est.estimator_)
    # warm_start: a second fit from the first's coefficients reaches the same optimum.
    X, y = DATA["tall"]()
    rows = _my_rows(comm, len(X), "balanced")
    est = ml.Lasso(alpha=0.1, warm_start=True, comm=comm, **TIGHT).fit(X[rows], y[rows])
    est.set_params(alpha=0.2).fit(X[rows], y[rows])
    results.append(est.estimator_)
    return results


def _reference_models():
    models = []
    for _layout in ("balanced", "empty_last_rank"):
        for weighted in (False, True):
            for kind, params, data in CASES:
                X, y = DATA[data]()
                w = _weights(len(X)) if weighted else None
                models.append(
                    getattr(linear_model, kind)(**params, **TIGHT).fit(
                        X, y, sample_weight=w
                    )
                )
    X, y = DATA["tall"]()
    models.append(linear_model.Lasso(alpha=0.2, warm_start=True, **TIGHT).fit(X, y))
    return models


def _assert_same_solution(mine, ref, label):
    assert type(mine) is type(ref), label
    assert mine.get_params() == ref.get_params(), label
    np.testing.assert_array_equal(
        mine.coef_ == 0, ref.coef_ == 0, err_msg=f"zero pattern differs: {label}"
    )
    a = np.append(np.ravel(mine.coef_), mine.intercept_)
    b = np.append(np.ravel(ref.coef_), ref.intercept_)
    np.testing.assert_allclose(
        a, b, rtol=RTOL, atol=RTOL * np.abs(b).max(), err_msg=label
    )
    assert np.shape(mine.coef_) == np.shape(ref.coef_) and np.shape(
        mine.dual_gap_
    ) == np.shape(ref.dual_gap_)
    assert mine.n_features_in_ == ref.n_features_in_


@pytest.mark.mpi(ranks=[1, 2, 3, 4])
def test_gold_equal_to_sklearn_on_all_rows(mpi_ranks):
    per_rank = run_function(_gold_body, mpi_ranks)
    references = _reference_models()
    labels = [
        f"{layout}, weighted={weighted}, {kind}{params} on {data}"
        for layout in ("balanced", "empty_last_rank")
        for weighted in (False, True)
        for kind, params, data in CASES
    ] + ["warm start"]
    assert len(per_rank[0]) == len(references) == len(labels)
    for mine, ref, label in zip(per_rank[0], references, labels):
        _assert_same_solution(mine, ref, label)
    # Every rank holds the bit-identical model (rank 0 solved and broadcast).
    for other in per_rank[1:]:
        for a, b in zip(per_rank[0], other):
            assert np.array_equal(a.coef_, b.coef_) and np.array_equal(
                a.intercept_, b.intercept_
            )
            assert a.n_iter_ == b.n_iter_


# ---------------------------------------------------------------- pure math


@pytest.mark.parametrize(
    "n,d,fit_intercept", [(50, 6, True), (50, 6, False), (8, 20, True), (8, 20, False)]
)
def test_surrogate_has_the_loss_of_all_rows_up_to_a_constant(n, d, fit_intercept):
    X, y = sparse_problem(n, d, seed=11, offset=5.0)
    w = _weights(n)
    sur = least_squares_surrogate(
        local_statistics(X, y[:, None], w), fit_intercept=fit_intercept
    )
    assert sur.design.shape[0] == min(d, n - fit_intercept) and sur.method == (
        "cholesky" if n > d else "eigh"
    )
    gaps = []
    for b in np.random.default_rng(0).normal(size=(5, d)):
        r = y - X @ b
        c = np.average(r, weights=w) if fit_intercept else 0.0
        loss = np.sum(w * (r - c) ** 2)
        gaps.append(loss - np.sum((sur.target[:, 0] - sur.design @ b) ** 2))
    np.testing.assert_allclose(gaps, gaps[0], rtol=1e-9, atol=1e-9 * np.sum(w * y**2))


def test_gram_size_check_names_the_memory_and_the_alternative():
    assert gram_bytes(100, 1) == 8 * 102**2
    assert check_gram_size(100, 1, available_bytes=1e9) >= gram_bytes(100, 1)
    assert check_gram_size(20_000) > 0  # the limit itself is allowed
    with pytest.raises(
        MemoryError,
        match=r"20,001 features .*more than 20,000.*3\.2 GB per copy.*strategy=\"average\"",
    ):
        check_gram_size(20_001)
    with pytest.raises(
        MemoryError,
        match=r"only 1\.0 MB is available.*8\.0 MB per copy.*strategy=\"average\"",
    ):
        check_gram_size(999, 2, available_bytes=1e6)


def _too_large_body(comm):
    import os

    import mpitrain.linear_model as ml
    from mpitrain.data import MEMORY_LIMIT_VARIABLE
    from mpitrain.errors import DistributedMemoryError

    messages = []
    X, y = sparse_problem(40, 30, seed=1)
    rows = slice(*row_range(40, comm.Get_size(), comm.Get_rank()))
    if comm.Get_rank() == comm.Get_size() - 1:
        os.environ[MEMORY_LIMIT_VARIABLE] = "1000"  # this rank alone is short of memory
    for est in (
        ml.Lasso(comm=comm),
        ml.Ridge(comm=comm),
        ml.PolynomialRegression(degree=2, comm=comm),
    ):
        try:
            est.fit(X[rows], y[rows])
        except DistributedMemoryError as exc:
            messages.append(str(exc))
    os.environ.pop(MEMORY_LIMIT_VARIABLE, None)
    try:
        # Refused before any Gram matrix is allocated (that one would need 3.2 GB per copy).
        ml.ElasticNet(comm=comm).fit(np.zeros((2, 20_001)), np.zeros(2))
    except DistributedMemoryError as exc:
        messages.append(str(exc))
    est = ml.Lasso(comm=comm).fit(X[rows], y[rows])  # the job is still healthy
    return messages, est.estimator_.coef_


def test_too_large_gram_is_refused_on_every_rank():
    per_rank = run_function(_too_large_body, 3)
    messages = per_rank[0][0]
    assert len(messages) == 4
    assert all(r[0] == messages for r in per_rank)  # the same error on every rank
    for text in messages[:3]:
        assert "on rank 2 (of 3)" in text and "only 1.0 kB is available" in text
        assert "per rank at peak" in text and 'strategy="average"' in text
    assert "30 features" in messages[0] and "32×32" in messages[0]  # (d + t + 1)²
    assert (
        "495 features" in messages[2] and "497×497" in messages[2]
    )  # polynomial features, not inputs
    assert "on all 3 ranks" in messages[3] and "20,001 features" in messages[3]


def _check_estimator_body(comm):
    from sklearn.utils.estimator_checks import check_estimator

    import mpitrain.linear_model as ml

    for est in (ml.Lasso(), ml.ElasticNet()):
        check_estimator(est)
    return True


def test_sklearn_check_estimator_on_one_rank():
    assert run_function(_check_estimator_body, 1, timeout=300) == [True]


def _root_alone_body(comm, wrong_roles, strategy="exact"):
    """Rank 0 fits with every_rank=False, the others contribute (or, wrongly, all fit)."""
    from mpitrain.linear_model import ElasticNet, Lasso
    from mpitrain.stats import contribute_statistics

    X, y = DATA["tall"]()
    rank, size = comm.Get_rank(), comm.Get_size()
    # Rank 0 holds no rows at all: its statistics are of none.
    a, b = (0, 0) if rank == 0 else row_range(len(X), size - 1, rank - 1)
    local = local_statistics(X[a:b], y[a:b, None])
    out = {}
    for cls in (Lasso, ElasticNet):
        model = cls(alpha=0.3, comm=comm, strategy=strategy, **TIGHT)
        try:
            if rank == 0 or wrong_roles:
                model.fit_statistics(local, every_rank=False)
                out[cls.__name__] = (
                    model.estimator_.coef_,
                    model.estimator_.intercept_,
                )
            else:
                timings = contribute_statistics(local, comm)
                out[cls.__name__] = sorted(timings)
        except ValueError as exc:
            out[cls.__name__] = str(exc)
    return out


@pytest.mark.mpi(ranks=[2, 3, 4])
def test_model_on_rank_0_alone_is_sklearns_on_all_rows(mpi_ranks):
    X, y = DATA["tall"]()
    results = run_function(_root_alone_body, mpi_ranks, False)
    for name, ref_cls in (
        ("Lasso", linear_model.Lasso),
        ("ElasticNet", linear_model.ElasticNet),
    ):
        ref = ref_cls(alpha=0.3, **TIGHT).fit(X, y)
        coef, intercept = results[0][name]
        np.testing.assert_allclose(coef, ref.coef_, rtol=RTOL, atol=1e-9)
        np.testing.assert_allclose(intercept, ref.intercept_, rtol=RTOL)
        for other in results[1:]:  # no model there: the timings of their part
            assert other[name] == ["communicate", "local_compute", "solve"]
    # Every rank calling fit_statistics(every_rank=False): one error everywhere, no hang.
    results = run_function(_root_alone_body, mpi_ranks, True)
    for result in results:
        assert "rank 0 calls fit_statistics(every_rank=False)" in result["Lasso"]
    # A refusal that rank 0 alone can see reaches every rank too.
    results = run_function(_root_alone_body, mpi_ranks, False, "average")
    for result in results:
        assert "on rank 0 (of" in result["Lasso"]
        assert "it needs strategy='exact'" in result["Lasso"]
