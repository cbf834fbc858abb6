"""GridSearchCV / RandomizedSearchCV across ranks, and ``mpitrain search``, against scikit-learn."""

from __future__ import annotations

import json
import os
import sys
import warnings

import h5py
import numpy as np
import pytest

from mpitrain.testing import mpirun, run_function

SVC_GRID = {"C": [0.5, 5.0], "gamma": [0.02, 0.2]}


def _digits(n: int = 180):
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    return X[:n] / 16.0, y[:n]


def _rows(n: int, comm, empty_last: bool = False) -> slice:
    """This rank's rows; with ``empty_last`` the last of several ranks has none."""
    from mpitrain.data import row_range

    size, rank = comm.Get_size(), comm.Get_rank()
    if empty_last and size > 1:
        if rank == size - 1:
            return slice(n, n)
        size -= 1
    start, stop = row_range(n, size, rank)
    return slice(start, stop)


def _table(search) -> dict:
    keep = ("mean_test_score", "std_test_score", "rank_test_score", "params")
    out = {k: search.cv_results_[k] for k in keep}
    out.update(
        {k: v for k, v in search.cv_results_.items() if k.startswith("split")},
        best_params=search.best_params_,
        best_score=search.best_score_,
        best_index=search.best_index_,
        mode=search.search_mode_,
    )
    return out


def _assert_same_table(got: dict, ref, atol: float = 0.0) -> None:
    for key in got:
        if key.startswith("split") or key in ("mean_test_score", "std_test_score"):
            np.testing.assert_allclose(
                got[key], ref.cv_results_[key], rtol=0, atol=atol
            )
    np.testing.assert_array_equal(
        got["rank_test_score"], ref.cv_results_["rank_test_score"]
    )
    assert got["params"] == ref.cv_results_["params"]
    assert got["best_params"] == ref.best_params_
    assert got["best_index"] == ref.best_index_


def _small_body(comm, X, y):
    from mpitrain.model_selection import GridSearchCV, RandomizedSearchCV
    from mpitrain.svm import SVC

    rows = _rows(len(y), comm, empty_last=comm.Get_size() == 3)
    search = GridSearchCV(SVC(), SVC_GRID, cv=3, comm=comm).fit(X[rows], y[rows])
    # One candidate x 2 folds: fewer tasks than ranks at 3 ranks.
    tiny = GridSearchCV(SVC(), {"C": [1.0]}, cv=2, mode="small", comm=comm)
    tiny.fit(X[rows], y[rows])
    drawn = RandomizedSearchCV(
        SVC(), SVC_GRID, n_iter=2, cv=2, random_state=1, mode="small", comm=comm
    ).fit(X[rows], y[rows])
    return {
        "grid": _table(search),
        "tiny": _table(tiny),
        "random": _table(drawn),
        "estimator": search.estimator_,
        "reason": search.mode_reason_,
    }


@pytest.mark.mpi(ranks=[1, 2, 3])
def test_small_mode_equals_sklearn(mpi_ranks):
    from sklearn.model_selection import GridSearchCV as Reference
    from sklearn.model_selection import RandomizedSearchCV
    from sklearn.svm import SVC

    X, y = _digits()
    per_rank = run_function(_small_body, mpi_ranks, X, y)
    drawn = RandomizedSearchCV(SVC(), SVC_GRID, n_iter=2, cv=2, random_state=1).fit(
        X, y
    )
    ref = Reference(SVC(), SVC_GRID, cv=3).fit(X, y)
    tiny = Reference(SVC(), {"C": [1.0]}, cv=2).fit(X, y)
    for got in per_rank:  # the same table on every rank
        assert got["grid"]["mode"] == "small"
        _assert_same_table(got["grid"], ref)
        _assert_same_table(got["tiny"], tiny)
        _assert_same_table(got["random"], drawn)
        assert got["estimator"].get_params()["C"] == ref.best_params_["C"]
        assert "every rank holds all rows" in got["reason"]


def test_balance_tasks_longest_first():
    from mpitrain.model_selection import balance_tasks

    plan = balance_tasks([1.0, 5.0, 2.0, 2.0, 4.0], 2)
    loads = [sum([1.0, 5.0, 2.0, 2.0, 4.0][t] for t in tasks) for tasks in plan]
    assert sorted(loads) == [7.0, 7.0]
    assert plan[0][0] == 1  # the longest first
    assert balance_tasks([1.0], 3) == [[0], [], []]


def _large_body(comm, X, y, group_size):
    from mpitrain.linear_model import LogisticRegression
    from mpitrain.model_selection import GridSearchCV

    rows = _rows(len(y), comm)
    out = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        search = GridSearchCV(
            LogisticRegression(tol=1e-10, max_iter=5000),
            {"C": [0.1, 1.0, -1.0]},  # C=-1 fails on every rank: error_score
            scoring="neg_log_loss",
            cv=3,
            mode="large",
            group_size=group_size,
            comm=comm,
        ).fit(X[rows], y[rows])
    out["log_loss"] = _table(search)
    out["warned"] = [str(w.message) for w in caught if "fits failed" in str(w.message)]
    out["coef"] = search.estimator_.coef_
    search = GridSearchCV(
        LogisticRegression(tol=1e-10, max_iter=5000),
        {"C": [0.01, 1.0]},
        scoring="f1",
        cv=3,
        mode="large",
        group_size=group_size,
        comm=comm,
    ).fit(X[rows], y[rows])
    out["f1"] = _table(search)
    return out


@pytest.mark.mpi(ranks=[2, 4])
def test_large_mode_equals_sklearn_on_the_same_folds(mpi_ranks):
    from sklearn.datasets import make_classification
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV as Reference

    from mpitrain.model_selection import global_stratified_fold_ids

    X, y = make_classification(
        n_samples=150, n_features=4, n_informative=3, n_redundant=0, random_state=3
    )
    # A classifier's folds are stratified, as scikit-learn's check_cv makes them.
    folds = global_stratified_fold_ids(y, n_folds=3, seed=0)
    cv = [(np.flatnonzero(folds != k), np.flatnonzero(folds == k)) for k in range(3)]
    per_rank = run_function(_large_body, mpi_ranks, X, y, 2 if mpi_ranks == 4 else None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = Reference(
            LogisticRegression(tol=1e-10, max_iter=5000),
            {"C": [0.1, 1.0, -1.0]},
            scoring="neg_log_loss",
            cv=cv,
        ).fit(X, y)
    f1 = Reference(
        LogisticRegression(tol=1e-10, max_iter=5000),
        {"C": [0.01, 1.0]},
        scoring="f1",
        cv=cv,
    ).fit(X, y)
    for got in per_rank:
        assert got["log_loss"]["mode"] == "large"
        _assert_same_table(got["log_loss"], ref, atol=1e-6)
        assert np.isnan(got["log_loss"]["split0_test_score"][2])  # the failed candidate
        assert got["warned"] and "3 fits failed out of a total of 9" in got["warned"][0]
        np.testing.assert_allclose(got["coef"], ref.best_estimator_.coef_, atol=1e-5)
        _assert_same_table(got["f1"], f1, atol=1e-12)


def _ridge_body(comm, X, y):
    from mpitrain.linear_model import Ridge
    from mpitrain.model_selection import GridSearchCV

    rows = _rows(len(y), comm)
    search = GridSearchCV(
        Ridge(),
        {"alpha": [0.01, 1.0, 100.0]},
        scoring="neg_mean_squared_error",
        cv=4,
        comm=comm,
    ).fit(X[rows], y[rows])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        GridSearchCV(Ridge(), {"alpha": [1.0, -1.0]}, cv=4, comm=comm).fit(
            X[rows], y[rows]
        )
    warned = [str(w.message) for w in caught if "fits failed" in str(w.message)]
    return _table(search), search.mode_reason_, search.estimator_.coef_, warned


@pytest.mark.mpi(ranks=[2])
def test_ridge_grid_in_large_mode_gets_its_folds_in_one_pass(mpi_ranks):
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import GridSearchCV as Reference

    from mpitrain.model_selection import global_fold_ids

    rng = np.random.default_rng(4)
    X = rng.normal(size=(97, 5)) + 30.0
    y = X @ rng.normal(size=5) + rng.normal(size=97)
    folds = global_fold_ids(len(y), n_folds=4, seed=0)
    cv = [(np.flatnonzero(folds != k), np.flatnonzero(folds == k)) for k in range(4)]
    ref = Reference(
        Ridge(), {"alpha": [0.01, 1.0, 100.0]}, scoring="neg_mean_squared_error", cv=cv
    ).fit(X, y)
    for table, reason, coef, warned in run_function(_ridge_body, mpi_ranks, X, y):
        assert table["mode"] == "large" and "one pass" in reason
        # A failing alpha is reported once, as scikit-learn reports it.
        assert len(warned) == 1 and "4 fits failed out of a total of 8" in warned[0]
        _assert_same_table(table, ref, atol=1e-8)
        np.testing.assert_allclose(coef, ref.best_estimator_.coef_, rtol=1e-8)


def _weighted_body(comm, X, y, w, Xr, yr, wr):
    from mpitrain.linear_model import LogisticRegression, Ridge
    from mpitrain.model_selection import GridSearchCV
    from mpitrain.svm import SVC

    size, rank = comm.Get_size(), comm.Get_rank()
    out = {}
    # Small mode, each rank holding another rank's slice: the weights must
    # follow their rows into the global order that row_offset gives.
    theirs = _rows(len(y), _Like(size, size - 1 - rank), empty_last=size == 3)
    small = GridSearchCV(SVC(), SVC_GRID, cv=3, mode="small", comm=comm).fit(
        X[theirs], y[theirs], sample_weight=w[theirs], row_offset=theirs.start
    )
    out["small"] = _table(small)
    out["small_decision"] = small.estimator_.decision_function(X)
    # Large mode: a linear grid in one pass (weighted statistics), and
    # per-candidate fits on one group per rank (rows and weights shared).
    rows = _rows(len(yr), comm, empty_last=size == 3)
    ridge = GridSearchCV(
        Ridge(),
        {"alpha": [0.01, 10.0, 1000.0]},
        scoring="neg_mean_squared_error",
        cv=4,
        comm=comm,
    ).fit(Xr[rows], yr[rows], sample_weight=wr[rows])
    out["ridge"] = _table(ridge)
    out["ridge_reason"] = ridge.mode_reason_
    out["ridge_coef"] = ridge.estimator_.coef_
    rows = _rows(len(y), comm, empty_last=size == 3)
    binary = (y[rows] > 4).astype(int)
    for scoring in ("neg_log_loss", "f1", "accuracy"):
        logistic = GridSearchCV(
            LogisticRegression(tol=1e-10, max_iter=5000),
            {"C": [0.01, 1.0]},
            scoring=scoring,
            cv=3,
            mode="large",
            group_size=1 if size > 1 else None,
            comm=comm,
        ).fit(X[rows], binary, sample_weight=w[rows])
        out[scoring] = _table(logistic)
    out["logistic_coef"] = logistic.estimator_.coef_
    # Refusals, the same on every rank.
    errors = {}
    cases = {
        "one rank": lambda: (X[rows], y[rows], w[rows] if rank == 0 else None),
        "nan": lambda: (X[rows], y[rows], np.where(rank == 0, np.nan, w[rows])),
        "shape": lambda: (X[rows], y[rows], w[rows][: max(0, len(w[rows]) - 1)]),
        "negative": lambda: (X[rows], y[rows], np.where(rank == 0, -1.0, w[rows])),
    }
    for name, data in cases.items():
        Xc, yc, wc = data()
        try:
            GridSearchCV(SVC(), {"C": [1.0]}, cv=2, comm=comm).fit(
                Xc, yc, sample_weight=wc
            )
            errors[name] = None
        except (ValueError, TypeError) as exc:
            errors[name] = f"{type(exc).__name__}: {exc}"
    from sklearn.neighbors import KNeighborsClassifier

    try:
        GridSearchCV(KNeighborsClassifier(), {"n_neighbors": [3]}, cv=2, comm=comm).fit(
            X[rows], y[rows], sample_weight=w[rows]
        )
        errors["no weights"] = None
    except (ValueError, TypeError) as exc:
        errors["no weights"] = f"{type(exc).__name__}: {exc}"
    out["errors"] = errors
    return out


class _Like:
    """A stand-in communicator of a given size and rank, for :func:`_rows`."""

    def __init__(self, size: int, rank: int):
        self.size, self.rank = size, rank

    def Get_size(self) -> int:
        return self.size

    def Get_rank(self) -> int:
        return self.rank


@pytest.mark.mpi(ranks=[1, 2, 3])
def test_weighted_search_equals_sklearns_in_both_modes(mpi_ranks):
    import sklearn
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.model_selection import GridSearchCV as Reference
    from sklearn.svm import SVC

    from mpitrain.model_selection import global_fold_ids, global_stratified_fold_ids

    if tuple(int(p) for p in sklearn.__version__.split(".")[:2]) < (1, 7):
        pytest.skip("scikit-learn weights a search's scores from 1.7 on")
    X, y = _digits()
    rng = np.random.default_rng(7)
    w = rng.uniform(0.1, 3.0, size=len(y))
    Xr = rng.normal(size=(97, 5)) + 30.0
    yr = Xr @ rng.normal(size=5) + rng.normal(size=97) * (1 + 3 * (Xr[:, 0] > 30))
    wr = rng.uniform(0.1, 3.0, size=len(yr))
    per_rank = run_function(_weighted_body, mpi_ranks, X, y, w, Xr, yr, wr)

    small = Reference(SVC(), SVC_GRID, cv=3).fit(X, y, sample_weight=w)
    unweighted = Reference(SVC(), SVC_GRID, cv=3).fit(X, y)
    # The weights change the answer, so the comparison below can tell.
    assert not np.allclose(
        small.cv_results_["mean_test_score"], unweighted.cv_results_["mean_test_score"]
    )
    folds = global_fold_ids(len(yr), n_folds=4, seed=0)
    cv = [(np.flatnonzero(folds != k), np.flatnonzero(folds == k)) for k in range(4)]
    ridge = Reference(
        Ridge(),
        {"alpha": [0.01, 10.0, 1000.0]},
        scoring="neg_mean_squared_error",
        cv=cv,
    ).fit(Xr, yr, sample_weight=wr)
    binary = (y > 4).astype(int)
    folds = global_stratified_fold_ids(binary, n_folds=3, seed=0)
    cv = [(np.flatnonzero(folds != k), np.flatnonzero(folds == k)) for k in range(3)]
    logistic = {
        scoring: Reference(
            LogisticRegression(tol=1e-10, max_iter=5000),
            {"C": [0.01, 1.0]},
            scoring=scoring,
            cv=cv,
        ).fit(X, binary, sample_weight=w)
        for scoring in ("neg_log_loss", "f1", "accuracy")
    }
    for got in per_rank:
        assert got["small"]["mode"] == "small"
        _assert_same_table(got["small"], small)
        # The refit is the cascade on the weighted rows (libsvm's optimum to its tol).
        np.testing.assert_allclose(
            got["small_decision"], small.decision_function(X), atol=1e-2
        )
        assert got["ridge"]["mode"] == "large" and "one pass" in got["ridge_reason"]
        _assert_same_table(got["ridge"], ridge, atol=1e-8)
        np.testing.assert_allclose(
            got["ridge_coef"], ridge.best_estimator_.coef_, rtol=1e-8
        )
        for scoring, ref in logistic.items():
            _assert_same_table(got[scoring], ref, atol=1e-6)
        np.testing.assert_allclose(
            got["logistic_coef"], ref.best_estimator_.coef_, atol=1e-5
        )
        errors = got["errors"]
        if mpi_ranks > 1:
            assert "given on every rank or on none" in errors["one rank"]
        assert "NaN" in errors["nan"]
        assert "negative values" in errors["negative"]
        assert "sample_weight has shape" in errors["shape"]
        assert "TypeError" in errors["no weights"]
        assert (
            "KNeighborsClassifier does not take sample_weight in fit"
            in errors["no weights"]
        )
    # Every rank raised the same message.
    for name in per_rank[0]["errors"]:
        assert len({got["errors"][name] for got in per_rank}) == 1, name


def _scores_of(search) -> dict:
    """The score columns of a search's table, and its best (where it has one)."""
    out = {
        k: v
        for k, v in search.cv_results_.items()
        if k.startswith(("split", "mean_test", "std_test", "rank_test"))
    }
    out["multimetric"] = search.multimetric_
    for name in ("best_index_", "best_score_", "best_params_"):
        if hasattr(search, name):
            out[name] = getattr(search, name)
    out["has_estimator"] = hasattr(search, "estimator_")
    return out


def _assert_same_scores(got: dict, ref, atol: float) -> None:
    keys = [
        k
        for k in ref.cv_results_
        if k.startswith(("split", "mean_test", "std_test", "rank_test"))
    ]
    assert sorted(k for k in got if k in ref.cv_results_) == sorted(keys)
    for key in keys:
        if key.startswith("rank"):
            np.testing.assert_array_equal(got[key], ref.cv_results_[key], err_msg=key)
        else:
            np.testing.assert_allclose(
                got[key], ref.cv_results_[key], rtol=0, atol=atol, err_msg=key
            )
    assert got["multimetric"] == ref.multimetric_
    for name in ("best_index_", "best_score_", "best_params_"):
        assert (name in got) == hasattr(ref, name), name
        if name in got:
            if name == "best_score_":
                both_nan = np.isnan(got[name]) and np.isnan(ref.best_score_)
                assert both_nan or abs(got[name] - ref.best_score_) <= atol
            else:
                assert got[name] == getattr(ref, name), name
    assert got["has_estimator"] == hasattr(ref, "best_estimator_")


def _multimetric_body(comm, X, y, Xr, yr, folder):
    from mpitrain.linear_model import LogisticRegression, Ridge
    from mpitrain.model_selection import GridSearchCV
    from mpitrain.svm import SVC

    size = comm.Get_size()
    rows = _rows(len(y), comm, empty_last=size == 3)
    out = {}
    out["small"] = _scores_of(
        GridSearchCV(
            SVC(),
            SVC_GRID,
            scoring=["accuracy", "f1_macro", "recall_macro"],
            refit="f1_macro",
            cv=3,
            mode="small",
            comm=comm,
        ).fit(X[rows], y[rows])
    )
    binary = (y[rows] > 4).astype(int)
    large = GridSearchCV(
        LogisticRegression(tol=1e-10, max_iter=5000),
        {"C": [0.001, 0.1, 10.0]},
        scoring=("neg_log_loss", "accuracy", "f1"),
        refit="accuracy",
        cv=3,
        mode="large",
        group_size=1 if size > 1 else None,
        comm=comm,
    ).fit(X[rows], binary)
    out["large"] = _scores_of(large)
    out["large_coef"] = large.estimator_.coef_
    rows = _rows(len(yr), comm, empty_last=size == 3)
    ridge = GridSearchCV(
        Ridge(),
        {"alpha": [0.01, 10.0, 1000.0]},
        scoring=["r2", "neg_mean_squared_error"],
        refit=False,
        cv=4,
        mode="large",
        comm=comm,
    ).fit(Xr[rows], yr[rows])
    out["ridge"] = _scores_of(ridge)
    out["ridge_reason"] = ridge.mode_reason_
    # Resumed from its checkpoint (metrics given as a tuple): the same table.
    path = os.path.join(folder, f"mm{size}.json")
    tables = []
    for _ in range(2):
        tables.append(
            _scores_of(
                GridSearchCV(
                    SVC(),
                    {"C": [0.5, 5.0]},
                    scoring=("accuracy", "f1_macro"),
                    refit="accuracy",
                    cv=2,
                    mode="small",
                    checkpoint=path,
                    comm=comm,
                ).fit(X[_rows(len(y), comm)], y[_rows(len(y), comm)])
            )
        )
    out["resumed"] = tables
    errors = []
    for scoring, refit in (
        (["accuracy", "f1_macro"], True),
        (["accuracy", "f1_macro"], "f1"),
        (["accuracy", "nonsense"], "accuracy"),
        (["accuracy", "accuracy"], "accuracy"),
        ({"a": "accuracy"}, "a"),
    ):
        try:
            GridSearchCV(
                SVC(), {"C": [1.0]}, scoring=scoring, refit=refit, comm=comm
            ).fit(X[rows], y[rows])
            errors.append(None)
        except ValueError as exc:
            errors.append(str(exc))
    out["errors"] = errors
    return out


@pytest.mark.mpi(ranks=[1, 2, 3])
def test_multimetric_search_equals_sklearns_in_both_modes(mpi_ranks, tmp_path):
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.model_selection import GridSearchCV as Reference
    from sklearn.svm import SVC

    from mpitrain.model_selection import global_fold_ids, global_stratified_fold_ids

    X, y = _digits()
    rng = np.random.default_rng(5)
    Xr = rng.normal(size=(97, 5)) + 30.0
    yr = Xr @ rng.normal(size=5) + rng.normal(size=97)
    per_rank = run_function(_multimetric_body, mpi_ranks, X, y, Xr, yr, str(tmp_path))

    small = Reference(
        SVC(),
        SVC_GRID,
        scoring=["accuracy", "f1_macro", "recall_macro"],
        refit="f1_macro",
        cv=3,
    ).fit(X, y)
    binary = (y > 4).astype(int)
    folds = global_stratified_fold_ids(binary, n_folds=3, seed=0)
    cv = [(np.flatnonzero(folds != k), np.flatnonzero(folds == k)) for k in range(3)]
    large = Reference(
        LogisticRegression(tol=1e-10, max_iter=5000),
        {"C": [0.001, 0.1, 10.0]},
        scoring=("neg_log_loss", "accuracy", "f1"),
        refit="accuracy",
        cv=cv,
    ).fit(X, binary)
    folds = global_fold_ids(len(yr), n_folds=4, seed=0)
    cv = [(np.flatnonzero(folds != k), np.flatnonzero(folds == k)) for k in range(4)]
    ridge = Reference(
        Ridge(),
        {"alpha": [0.01, 10.0, 1000.0]},
        scoring=["r2", "neg_mean_squared_error"],
        refit=False,
        cv=cv,
    ).fit(Xr, yr)
    for got in per_rank:
        _assert_same_scores(got["small"], small, atol=0.0)
        _assert_same_scores(got["large"], large, atol=1e-6)
        np.testing.assert_allclose(
            got["large_coef"], large.best_estimator_.coef_, atol=1e-5
        )
        _assert_same_scores(got["ridge"], ridge, atol=1e-8)
        assert "one pass" not in got["ridge_reason"]
        refit_true, refit_unknown, unknown, twice, mapping = got["errors"]
        assert "For multi-metric scoring, the parameter refit" in refit_true
        assert "'f1' was passed" in refit_unknown
        assert "unknown scoring 'nonsense'" in unknown
        assert "distinct" in twice
        assert "a list of names" in mapping
        first, resumed = got["resumed"]
        for key in first:
            if key.startswith(("split", "mean_test", "rank_test")):
                np.testing.assert_array_equal(resumed[key], first[key], err_msg=key)
    assert all(got["errors"] == per_rank[0]["errors"] for got in per_rank)


def _error_body(comm, X, y):
    from mpitrain.errors import DistributedError
    from mpitrain.linear_model import LogisticRegression
    from mpitrain.model_selection import GridSearchCV
    from mpitrain.svm import SVC

    rows = _rows(len(y), comm)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        search = GridSearchCV(
            SVC(), {"C": [1.0, -1.0]}, cv=3, mode="small", comm=comm
        ).fit(X[rows], y[rows])
    warned = [str(w.message) for w in caught if "fits failed" in str(w.message)]
    try:
        GridSearchCV(
            SVC(),
            {"C": [1.0, -1.0]},
            cv=3,
            error_score="raise",
            mode="small",
            comm=comm,
        ).fit(X[rows], y[rows])
        raised = None
    except DistributedError as exc:
        raised = str(exc)
    # A memory budget too small for all rows: auto keeps the rows split.
    os.environ["MPITRAIN_MEMORY_LIMIT"] = "150000"  # 187 kB needed
    try:
        model = LogisticRegression(max_iter=50)  # the cascade checks its own memory
        auto = GridSearchCV(model, {"C": [1.0]}, cv=2, comm=comm).fit(X[rows], y[rows])
        try:
            GridSearchCV(model, {"C": [1.0]}, cv=2, mode="small", comm=comm).fit(
                X[rows], y[rows]
            )
            refused = None
        except MemoryError as exc:
            refused = str(exc)
        # Two groups of one rank: each would hold all rows, which do not fit.
        try:
            GridSearchCV(
                model, {"C": [1.0, 2.0]}, cv=2, mode="large", group_size=1, comm=comm
            ).fit(X[rows], y[rows])
            grouped = None
        except MemoryError as exc:
            grouped = str(exc)
    finally:
        del os.environ["MPITRAIN_MEMORY_LIMIT"]
    budget = (auto.search_mode_, auto.mode_reason_, refused, grouped)
    return _table(search), warned, raised, budget


@pytest.mark.mpi(ranks=[2])
def test_failed_candidate_gets_error_score_and_raise_is_agreed(mpi_ranks):
    from sklearn.model_selection import GridSearchCV as Reference
    from sklearn.svm import SVC

    X, y = _digits(120)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = Reference(SVC(), {"C": [1.0, -1.0]}, cv=3).fit(X, y)
    for table, warned, raised, budget in run_function(_error_body, mpi_ranks, X, y):
        _assert_same_table(table, ref)
        assert (
            np.isnan(table["mean_test_score"][1]) and table["rank_test_score"][1] == 2
        )
        assert "3 fits failed out of a total of 6" in warned[0]
        assert (
            "will be set to nan" in warned[0] and "InvalidParameterError" in warned[0]
        )
        assert raised is not None and "the search failed on" in raised
        assert "'C' parameter of SVC must be a float in the range (0.0, inf]" in raised
        mode, reason, refused, grouped = budget
        assert mode == "large" and "the rows stay split" in reason
        assert refused is not None and "use mode='large'" in refused
        assert grouped is not None and "group_size=1" in grouped
        assert (
            "the rows of 2 ranks (120 rows" in grouped
            and "larger group_size" in grouped
        )


def _unscored_body(comm, X, y):
    from mpitrain.errors import DistributedError
    from mpitrain.linear_model import LogisticRegression
    from mpitrain.model_selection import GridSearchCV
    from mpitrain.svm import SVC

    rows = _rows(len(y), comm, empty_last=comm.Get_size() == 3)
    out = {}
    # Binary f1 of a multiclass target fails in every fold; neg_log_loss of
    # an SVC without probabilities too.
    for key, model, target, scoring, mode in (
        ("small", SVC(), y, ["accuracy", "f1"], "small"),
        (
            "large",
            LogisticRegression(tol=1e-10, max_iter=5000),
            y % 3,
            ["accuracy", "f1"],
            "large",
        ),
        ("single", SVC(), y, "neg_log_loss", "small"),
        ("no_method", SVC(), y, ["accuracy", "neg_log_loss"], "small"),
    ):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            search = GridSearchCV(
                model,
                {"C": [0.5, 5.0]},
                scoring=scoring,
                refit="accuracy" if isinstance(scoring, list) else True,
                cv=3,
                mode=mode,
                comm=comm,
            ).fit(X[rows], target[rows])
        out[key] = _scores_of(search)
        out[key + "_warned"] = [str(w.message) for w in caught]
    try:
        GridSearchCV(
            SVC(),
            {"C": [1.0]},
            scoring=["accuracy", "f1"],
            refit="accuracy",
            cv=3,
            error_score="raise",
            mode="small",
            comm=comm,
        ).fit(X[rows], y[rows])
        out["raised"] = None
    except DistributedError as exc:
        out["raised"] = str(exc)
    return out


@pytest.mark.mpi(ranks=[2, 3])
def test_a_metric_that_cannot_be_scored_gets_error_score_alone(mpi_ranks):
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV as Reference
    from sklearn.svm import SVC

    from mpitrain.model_selection import global_stratified_fold_ids

    X, y = _digits(150)
    folds = global_stratified_fold_ids(y % 3, n_folds=3, seed=0)
    cv = [(np.flatnonzero(folds != k), np.flatnonzero(folds == k)) for k in range(3)]
    grid = {"C": [0.5, 5.0]}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        refs = {
            "small": Reference(
                SVC(), grid, scoring=["accuracy", "f1"], refit="accuracy", cv=3
            ).fit(X, y),
            "large": Reference(
                LogisticRegression(tol=1e-10, max_iter=5000),
                grid,
                scoring=["accuracy", "f1"],
                refit="accuracy",
                cv=cv,
            ).fit(X, y % 3),
            "single": Reference(SVC(), grid, scoring="neg_log_loss", cv=3).fit(X, y),
        }
    ref_warned = [str(w.message) for w in caught]
    assert sum("Scoring failed" in m for m in ref_warned) == 18  # 3 searches x 6 fits
    assert not any("fits failed" in m for m in ref_warned)
    # scikit-learn's multi-metric scorer raises AttributeError from the whole
    # search when a model lacks a metric's method; the accuracy-only search
    # is the reference for the metric that can be scored.
    accuracy = Reference(SVC(), grid, cv=3).fit(X, y)
    reasons = {
        "small": "Target is multiclass but average='binary'",
        "large": "Target is multiclass but average='binary'",
        "single": "predict_proba",
        "no_method": "predict_proba",
    }
    for got in run_function(_unscored_body, mpi_ranks, X, y):
        _assert_same_scores(got["small"], refs["small"], atol=0.0)
        _assert_same_scores(got["large"], refs["large"], atol=1e-6)
        _assert_same_scores(got["single"], refs["single"], atol=0.0)
        for key in ("split0", "split1", "split2", "mean", "std"):
            np.testing.assert_array_equal(
                got["no_method"][f"{key}_test_accuracy"],
                accuracy.cv_results_[f"{key}_test_score"],
            )
        assert np.isnan(got["no_method"]["mean_test_neg_log_loss"]).all()
        for key, reason in reasons.items():
            warned = got[key + "_warned"]
            # Each (candidate, fold) warned once, on every rank, with the
            # reason; no fit counted as failed; the table's NaN named.
            failed = [m for m in warned if "Scoring failed" in m]
            assert len(failed) == 6, key
            assert all("will be set to nan" in m and reason in m for m in failed), key
            assert not any("fits failed" in m for m in warned), key
            assert any("test scores are non-finite" in m for m in warned), key
        assert got["raised"] is not None and "average='binary'" in got["raised"]


def _fold_failure_body(comm, X, y, folds):
    from mpitrain.linear_model import LogisticRegression
    from mpitrain.model_selection import GridSearchCV

    rows = _rows(len(y), comm, empty_last=comm.Get_size() == 3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        search = GridSearchCV(
            LogisticRegression(tol=1e-10, max_iter=5000),
            {"C": [0.1, 1.0]},
            cv=folds[rows],
            mode="large",
            comm=comm,
        ).fit(X[rows], y[rows])
    return _table(search), [str(w.message) for w in caught]


@pytest.mark.mpi(ranks=[2, 3])
def test_large_mode_fold_whose_fit_fails_alone_gets_error_score(mpi_ranks):
    from conftest import fold_failure_problem
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV as Reference

    # Fold 0's fit fails, the other folds' fits work: scikit-learn records
    # it per fold, not per candidate.
    X, y, folds, splits = fold_failure_problem()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = Reference(
            LogisticRegression(tol=1e-10, max_iter=5000), {"C": [0.1, 1.0]}, cv=splits
        ).fit(X, y)
    assert np.isnan(ref.cv_results_["split0_test_score"]).all()
    assert np.isfinite(ref.cv_results_["split1_test_score"]).all()
    for table, warned in run_function(_fold_failure_body, mpi_ranks, X, y, folds):
        _assert_same_table(table, ref, atol=1e-6)
        assert any("2 fits failed out of a total of 6" in m for m in warned)
        assert any("test scores are non-finite" in m for m in warned)


def _resume_body(comm, X, y, path):
    from mpitrain.errors import DistributedError
    from mpitrain.model_selection import GridSearchCV
    from mpitrain.model_selection import _search as module
    from mpitrain.svm import SVC

    rows = _rows(len(y), comm)
    grid = {"C": [0.5, 5.0], "gamma": [0.02, 0.2]}
    module._STOP_AFTER_TASKS = 2
    try:
        GridSearchCV(
            SVC(comm=comm), grid, cv=3, mode="small", checkpoint=path, comm=comm
        ).fit(X[rows], y[rows])
        stopped = None
    except DistributedError as exc:
        stopped = str(exc)
    finally:
        module._STOP_AFTER_TASKS = None
    comm.Barrier()
    parts = sorted(os.listdir(os.path.dirname(path)))
    saved = []
    for name in parts:
        if name.endswith(".json"):
            with open(os.path.join(os.path.dirname(path), name)) as f:
                saved += json.load(f)["results"]
    comm.Barrier()
    # Another communicator object, as in a new job: the checkpoint still belongs.
    other = comm.Dup()
    search = GridSearchCV(
        SVC(comm=other), grid, cv=3, mode="small", checkpoint=path, comm=other
    )
    search.fit(X[rows], y[rows])
    other.Free()
    return stopped, parts, saved, _table(search), search.cv_results_


@pytest.mark.mpi(ranks=[2])
def test_stopped_search_resumes_with_the_same_table(mpi_ranks, tmp_path):
    from sklearn.model_selection import GridSearchCV as Reference
    from sklearn.svm import SVC

    X, y = _digits(150)
    path = str(tmp_path / "search.json")
    per_rank = run_function(_resume_body, mpi_ranks, X, y, path)
    ref = Reference(SVC(), SVC_GRID, cv=3).fit(X, y)
    stopped, parts, saved, table, results = per_rank[0]
    assert "stopped after 2 tasks" in stopped
    # Each rank recorded its own 2 tasks, as they finished, in its part file.
    assert parts == ["search.json.rank0.json", "search.json.rank1.json"]
    assert len(saved) == 4
    _assert_same_table(table, ref)
    # The recorded tasks were reused, not run again: their fit times came back.
    for record in saved:
        i, k = record["candidate"], record["fold"]
        assert record["score"] == results[f"split{k}_test_score"][i]
    with open(path) as f:
        assert len(json.load(f)["results"]) == 12
    assert sorted(os.listdir(tmp_path)) == ["search.json"]


def _search_in_slices(comm, data, folder, prefix, slices, **options) -> list[str]:
    """The SVC_GRID search in candidate slices, one report each (what Slurm array tasks do)."""
    from mpitrain.workflow import search

    reports = []
    for piece, bounds in enumerate(slices):
        report = os.path.join(folder, f"{prefix}{piece}.json")
        search(
            data,
            model="svc",
            grid=["C=0.5,5", "gamma=0.02,0.2"],
            cv=3,
            candidates=bounds,
            out=os.path.join(folder, f"{prefix}{piece}.skops"),
            report=report,
            quiet=True,
            comm=comm,
            **options,
        )
        reports.append(report)
    return reports


def _slices_body(comm, data, folder):
    from mpitrain.errors import UsageError
    from mpitrain.workflow import merge_search_reports, search

    reports = _search_in_slices(comm, data, folder, "part", ["0:2", "2:"])
    merged = None
    if comm.Get_rank() == 0:
        merged = merge_search_reports(
            reports,
            report=os.path.join(folder, "merged.json"),
            out=os.path.join(folder, "best.skops"),
        )
    drawn = search(
        data,
        model="svc",
        grid={"C": ["0.5", "5"], "gamma": ["0.02", "0.2"]},
        random=2,
        seed=1,
        cv=3,
        out=os.path.join(folder, "drawn.skops"),
        quiet=True,
        comm=comm,
    )
    try:
        # x names no data set: the misspelt grid name must be refused first,
        # before any row is read.
        search(
            data,
            model="svc",
            grid=["nope=1,2"],
            x="no_such_dataset",
            out=os.path.join(folder, "x.skops"),
            comm=comm,
        )
        refused = None
    except UsageError as exc:
        refused = str(exc)
    return merged, drawn, refused


def _write_digits(path: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    X, y = _digits(n)
    with h5py.File(path, "w") as f:
        f["X"] = X
        f["y"] = y
    return X, y


@pytest.mark.mpi(ranks=[2])
def test_candidate_slices_merge_into_the_whole_search(mpi_ranks, tmp_path):
    from sklearn.model_selection import GridSearchCV as Reference
    from sklearn.model_selection import RandomizedSearchCV
    from sklearn.svm import SVC

    data = str(tmp_path / "digits.h5")
    X, y = _write_digits(data, 150)
    merged, drawn, refused = run_function(_slices_body, mpi_ranks, data, str(tmp_path))[
        0
    ]
    assert "--grid nope: SVC has no such parameter" in refused
    assert not os.path.exists(tmp_path / "x.skops")
    ref = Reference(SVC(), SVC_GRID, cv=3).fit(X, y)
    sampled = RandomizedSearchCV(SVC(), SVC_GRID, n_iter=2, random_state=1, cv=3).fit(
        X, y
    )
    assert drawn["cv_results"]["params"] == sampled.cv_results_["params"]
    np.testing.assert_allclose(
        drawn["cv_results"]["mean_test_score"], sampled.cv_results_["mean_test_score"]
    )
    table = merged["cv_results"]
    assert table["candidate"] == [0, 1, 2, 3]
    np.testing.assert_allclose(
        table["mean_test_score"], ref.cv_results_["mean_test_score"]
    )
    assert table["rank_test_score"] == ref.cv_results_["rank_test_score"].tolist()
    assert merged["best_params"] == ref.best_params_
    assert os.path.exists(tmp_path / "best.skops") and os.path.exists(
        tmp_path / "merged.csv"
    )


def _multi_slices_body(comm, data, folder):
    from mpitrain.workflow import merge_search_reports

    reports = _search_in_slices(
        comm,
        data,
        folder,
        "multi",
        ["0:3", "3:"],
        scoring=["accuracy", "f1_macro"],
        refit="f1_macro",
    )
    merged = None
    if comm.Get_rank() == 0:
        merged = merge_search_reports(
            reports, report=os.path.join(folder, "multi.json"), out=None
        )
    return merged


@pytest.mark.mpi(ranks=[2])
def test_multimetric_slices_merge_into_sklearns_multimetric_search(mpi_ranks, tmp_path):
    from sklearn.model_selection import GridSearchCV as Reference
    from sklearn.svm import SVC

    data = str(tmp_path / "digits.h5")
    X, y = _write_digits(data, 150)
    merged = run_function(_multi_slices_body, mpi_ranks, data, str(tmp_path))[0]
    ref = Reference(
        SVC(), SVC_GRID, cv=3, scoring=["accuracy", "f1_macro"], refit="f1_macro"
    ).fit(X, y)
    table = merged["cv_results"]
    for key, values in ref.cv_results_.items():
        if key.startswith(("split", "mean_test", "std_test")):
            np.testing.assert_allclose(table[key], values, err_msg=key)
        elif key.startswith("rank_test"):
            assert table[key] == values.tolist(), key
    assert (
        merged["scoring"] == ["accuracy", "f1_macro"] and merged["refit"] == "f1_macro"
    )
    assert merged["best_params"] == ref.best_params_
    assert merged["best_score"] == pytest.approx(ref.best_score_)


def _svc_search_command(mpitrain_cli, data, folder, *extra: str) -> list[str]:
    """``mpitrain search`` of SVC_GRID with 3 folds, writing best.skops and r.json in ``folder``."""
    return [
        *mpitrain_cli,
        "search",
        data,
        "--model",
        "svc",
        "--grid",
        "C=0.5,5",
        "--grid",
        "gamma=0.02,0.2",
        "--cv",
        "3",
        *extra,
        "--out",
        str(folder / "best.skops"),
        "--report",
        str(folder / "r.json"),
        "--quiet",
    ]


@pytest.mark.mpi_own_job
def test_search_command_end_to_end(tmp_path, mpitrain_cli):
    from sklearn.model_selection import GridSearchCV as Reference
    from sklearn.svm import SVC

    from mpitrain.model_io import load_model

    data = str(tmp_path / "digits.h5")
    X, y = _write_digits(data, 150)
    report = tmp_path / "r.json"
    done = mpirun(
        2,
        _svc_search_command(
            mpitrain_cli,
            data,
            tmp_path,
            "--scoring",
            "accuracy",
            "--checkpoint",
            str(tmp_path / "ck.json"),
        ),
        timeout=float(os.environ.get("MPITRAIN_TEST_TIMEOUT", 120)),
    )
    assert done.returncode == 0, done.stderr
    ref = Reference(SVC(), SVC_GRID, cv=3).fit(X, y)
    # Printed once, from rank 0.
    assert done.stdout.count("best accuracy") == 1
    best = ref.best_params_
    assert f"with C={best['C']:g}, gamma={best['gamma']!r}" in done.stdout
    got = json.loads(report.read_text())
    assert got["mode"] == "small" and got["best_params"] == ref.best_params_
    np.testing.assert_allclose(
        got["cv_results"]["mean_test_score"], ref.cv_results_["mean_test_score"]
    )
    lines = (tmp_path / "r.csv").read_text().splitlines()
    assert len(lines) == 5 and lines[0].startswith("params,")
    model = load_model(str(tmp_path / "best.skops"))
    np.testing.assert_array_equal(model.predict(X), ref.best_estimator_.predict(X))


@pytest.mark.mpi_own_job
def test_search_command_with_sample_weight(tmp_path, mpitrain_cli):
    import sklearn
    from sklearn.model_selection import GridSearchCV as Reference
    from sklearn.svm import SVC

    if tuple(int(p) for p in sklearn.__version__.split(".")[:2]) < (1, 7):
        pytest.skip("scikit-learn weights a search's scores from 1.7 on")
    data = str(tmp_path / "digits.h5")
    X, y = _write_digits(data, 150)
    w = np.random.default_rng(2).uniform(0.1, 3.0, size=len(y))
    with h5py.File(data, "a") as f:
        f["w"] = w
    report = tmp_path / "r.json"
    command = _svc_search_command(mpitrain_cli, data, tmp_path, "--sample-weight", "w")
    timeout = float(os.environ.get("MPITRAIN_TEST_TIMEOUT", 120))
    done = mpirun(2, command, timeout=timeout)
    assert done.returncode == 0, done.stderr
    ref = Reference(SVC(), SVC_GRID, cv=3).fit(X, y, sample_weight=w)
    got = json.loads(report.read_text())
    assert got["sample_weight"] == "w" and got["best_params"] == ref.best_params_
    np.testing.assert_allclose(
        got["cv_results"]["mean_test_score"],
        ref.cv_results_["mean_test_score"],
        rtol=0,
        atol=1e-12,
    )
    # A weight dataset that is not there: one message, every rank fails.
    command[command.index("w")] = "weights"
    done = mpirun(2, command, timeout=timeout)
    assert done.returncode != 0
    assert "weights" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.mpi_own_job
def test_search_command_with_several_metrics(tmp_path, mpitrain_cli):
    from sklearn.model_selection import GridSearchCV as Reference
    from sklearn.svm import SVC

    data = str(tmp_path / "digits.h5")
    X, y = _write_digits(data, 150)
    timeout = float(os.environ.get("MPITRAIN_TEST_TIMEOUT", 120))
    command = _svc_search_command(
        mpitrain_cli,
        data,
        tmp_path,
        "--scoring",
        "accuracy,f1_macro",
        "--refit",
        "f1_macro",
    )
    done = mpirun(2, command, timeout=timeout)
    assert done.returncode == 0, done.stderr
    ref = Reference(
        SVC(), SVC_GRID, cv=3, scoring=["accuracy", "f1_macro"], refit="f1_macro"
    ).fit(X, y)
    assert done.stdout.count("best f1_macro") == 1
    got = json.loads((tmp_path / "r.json").read_text())
    assert got["best_params"] == ref.best_params_
    for name in ("accuracy", "f1_macro"):
        np.testing.assert_allclose(
            got["cv_results"][f"mean_test_{name}"], ref.cv_results_[f"mean_test_{name}"]
        )
    # A --refit that is not among the metrics: refused before any row is read.
    os.unlink(tmp_path / "best.skops")
    command[command.index("--refit") + 1] = "r2"
    done = mpirun(2, command, timeout=timeout)
    assert done.returncode != 0
    assert "--refit r2 is not one of --scoring accuracy,f1_macro" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "best.skops").exists()


def test_search_command_refuses_what_it_cannot_score(tmp_path, mpitrain_cli):
    """Refused with one clear line, before any fit where the options say so; no model written."""
    from conftest import write_h5

    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 3))
    regression = write_h5(tmp_path / "r.h5", X, X @ [1.0, 2.0, 3.0])
    # One row of class 1: the folds without it cannot fit a classifier.
    labels = write_h5(tmp_path / "c.h5", X, (np.arange(200) == 7).astype(np.int64))
    out = tmp_path / "best.skops"
    timeout = float(os.environ.get("MPITRAIN_TEST_TIMEOUT", 120))
    cases = [
        (
            [
                regression,
                "--model",
                "ridge",
                "--grid",
                "alpha=0.1,1",
                "--scoring",
                "accuracy",
            ],
            "--scoring accuracy needs a classifier; --model ridge is a regressor",
        ),
        (
            [regression, "--model", "ridge", "--grid", "alpha=-1,1"],
            "--grid candidate alpha=-1: The 'alpha' parameter of Ridge must be",
        ),
        (
            [regression, "--model", "kmeans", "--grid", "n_clusters=2,3"],
            "--model kmeans is neither",
        ),
        (
            [labels, "--model", "logistic", "--grid", "C=0.1,1", "--cv", "5"],
            "no candidate has a finite mean accuracy",
        ),
    ]
    for args, expected in cases:
        command = [*mpitrain_cli, "search", *args, "--out", str(out), "--quiet"]
        done = mpirun(2, command, timeout=timeout)
        assert done.returncode == 1, (args, done.stderr)
        assert done.stderr.count(expected) == 1, (args, done.stderr)
        # Without --debug the failures' tracebacks are cut to their errors.
        assert "Traceback" not in done.stderr and 'File "' not in done.stderr
        assert "error_score" not in done.stderr
        assert not out.exists()
    # The last case's fit failures, reported once with their error.
    assert "needs samples of at least 2 classes" in done.stderr
    assert "Run with --debug for the tracebacks." in done.stderr


@pytest.mark.slow
def test_search_sbatch_pieces_run_without_slurm(tmp_path):
    """Each array task's slice, then the merging script it wrote, run by hand."""
    import subprocess

    from sklearn.model_selection import GridSearchCV as Reference
    from sklearn.svm import SVC

    script = os.path.join(os.path.dirname(__file__), "..", "slurm", "search.sbatch")
    data = str(tmp_path / "digits.h5")
    X, y = _write_digits(data, 120)
    env = {
        **os.environ,
        "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
        "DATA": data,
        "MODEL": "svc",
        "GRID": "C=0.5,5 gamma=0.02,0.2",
        "PER_TASK": "3",
        "CV": "3",
        "SEARCH_DIR": str(tmp_path / "s"),
        "LAUNCHER": "mpiexec",
        "NTASKS": "1",
        "PYTHON": sys.executable,
        "EXTRA": "--quiet",
        "OMP_NUM_THREADS": "1",
    }
    timeout = float(os.environ.get("MPITRAIN_TEST_TIMEOUT", 120))
    for task in (0, 1):
        done = subprocess.run(
            ["bash", script],
            env={**env, "SLURM_ARRAY_TASK_ID": str(task), "SLURM_ARRAY_TASK_MIN": "0"},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert done.returncode == 0, done.stderr
    # No sbatch here: task 0 wrote the merging script and said to run it.
    assert "run: bash" in done.stderr or (tmp_path / "s" / "merge.sh").exists()
    merged = subprocess.run(
        ["bash", str(tmp_path / "s" / "merge.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert merged.returncode == 0, merged.stderr
    got = json.loads((tmp_path / "s" / "search.json").read_text())
    ref = Reference(SVC(), SVC_GRID, cv=3).fit(X, y)
    assert got["cv_results"]["candidate"] == [0, 1, 2, 3]
    np.testing.assert_allclose(
        got["cv_results"]["mean_test_score"], ref.cv_results_["mean_test_score"]
    )
    assert got["best_params"] == ref.best_params_
    assert (tmp_path / "s" / "best.skops").exists()
    assert f"best accuracy {ref.best_score_:.6g}" in merged.stdout


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
