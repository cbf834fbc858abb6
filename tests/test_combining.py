"""Voting and stacking of mpitrain estimators against scikit-learn's own on all rows.

Gold tests use members whose distributed fit is exact (LogisticRegression,
Ridge, LinearRegression), so the combined model must equal scikit-learn's
``Voting*``/``Stacking*`` fitted on all rows; stacking's reference gets the
same folds as explicit splits (``global_stratified_fold_ids`` for the
classifier, ``global_fold_ids`` for the regressor: by global row id, so the
same at every rank count).  With an approximate member (a merged forest),
the combination rule is checked against numpy on the very members fitted.
Rank counts 1, 2 and 3, one with a rank that holds no rows.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn import ensemble as sk_ensemble
from sklearn import linear_model as sk_linear
from sklearn.base import clone
from sklearn.datasets import make_classification, make_regression

from mpitrain.model_selection import global_fold_ids, global_stratified_fold_ids
from mpitrain.testing import mpirun, run_function

TIMEOUT = 240


def _bounds(n: int, ranks: int, empty_rank: int | None) -> list[int]:
    """Row boundaries of each rank, in rank order; ``empty_rank`` gets none. Pure."""
    holders = [r for r in range(ranks) if r != empty_rank]
    cuts = np.linspace(0, n, len(holders) + 1).round().astype(int)
    bounds, k = [0], 0
    for r in range(ranks):
        if r != empty_rank:
            k += 1
        bounds.append(int(cuts[k]))
    return bounds


def _splits(
    n: int, n_folds: int, seed: int, y: np.ndarray | None = None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """scikit-learn's explicit splits of the folds mpitrain assigns by global row id (and class, with ``y``)."""
    folds = (
        global_fold_ids(n, n_folds=n_folds, seed=seed)
        if y is None
        else global_stratified_fold_ids(y, n_folds=n_folds, seed=seed)
    )
    return [
        (np.flatnonzero(folds != k), np.flatnonzero(folds == k)) for k in range(n_folds)
    ]


def _classification(n=240, classes=3, seed=0):
    X, y = make_classification(
        n, 6, n_informative=4, n_redundant=0, n_classes=classes, random_state=seed
    )
    # Text labels: the members learn class indices, le_ maps them back.
    return X, np.array(["ant", "bee", "cat", "dog"])[y]


# ----------------------------------------------------------------- stacking


def _stacking_classifier_body(comm, X, y, bounds):
    from mpitrain.ensemble import StackingClassifier
    from mpitrain.linear_model import LogisticRegression, Ridge

    rank = comm.Get_rank()
    mine = slice(bounds[rank], bounds[rank + 1])
    model = StackingClassifier(
        [
            ("lr", LogisticRegression(C=0.5)),
            ("gone", "drop"),
            ("ridge", Ridge(alpha=2.0)),  # a regressor member: its predict is stacked
        ],
        final_estimator=LogisticRegression(C=2.0),
        cv=4,
        seed=7,
        passthrough=True,
        comm=comm,
    ).fit(X[mine], y[mine])
    return model.estimator_, model.predict(X[mine]), model.n_folds_


# Also at the oldest supported releases: the label encoder is private state of scikit-learn's.
@pytest.mark.minversions
@pytest.mark.mpi(ranks=[1, 2, 3])
def test_stacking_classifier_equals_sklearn(mpi_ranks):
    # Two classes at 2 ranks: the first probability column is dropped, as scikit-learn drops it.
    classes = 2 if mpi_ranks == 2 else 3
    X, y = _classification(classes=classes)
    bounds = _bounds(len(X), mpi_ranks, empty_rank=1 if mpi_ranks == 3 else None)
    ref = sk_ensemble.StackingClassifier(
        [
            ("lr", sk_linear.LogisticRegression(C=0.5)),
            ("gone", "drop"),
            ("ridge", sk_linear.Ridge(alpha=2.0)),
        ],
        final_estimator=sk_linear.LogisticRegression(C=2.0),
        cv=_splits(len(X), 4, seed=7, y=y),
        passthrough=True,
    ).fit(X, y)
    results = run_function(
        _stacking_classifier_body, mpi_ranks, X, y, bounds, timeout=TIMEOUT
    )
    expected = ref.predict_proba(X)
    for rank, (model, local_pred, n_folds) in enumerate(results):
        assert type(model) is sk_ensemble.StackingClassifier and n_folds == 4
        assert model.stack_method_ == ref.stack_method_ == ["predict_proba", "predict"]
        assert list(model.named_estimators_) == ["lr", "gone", "ridge"]
        assert model.named_estimators_["gone"] == "drop"
        np.testing.assert_array_equal(model.classes_, ref.classes_)
        np.testing.assert_array_equal(model.final_estimator_.classes_, range(classes))
        assert (
            model.final_estimator_.n_features_in_ == (1 if classes == 2 else 3) + 1 + 6
        )
        np.testing.assert_allclose(
            model.final_estimator_.coef_,
            ref.final_estimator_.coef_,
            rtol=1e-4,
            atol=1e-5,
        )
        np.testing.assert_allclose(
            model.estimators_[1].coef_, ref.estimators_[1].coef_, rtol=1e-9
        )
        # The plain model predicts without MPI, as scikit-learn's does.
        np.testing.assert_allclose(model.predict_proba(X), expected, atol=1e-5)
        np.testing.assert_array_equal(model.predict(X), ref.predict(X))
        np.testing.assert_array_equal(
            model.get_feature_names_out(), ref.get_feature_names_out()
        )
        # Each rank predicts its own rows; the rank without rows gets none.
        np.testing.assert_array_equal(
            local_pred, ref.predict(X)[bounds[rank] : bounds[rank + 1]]
        )


def _stacking_regressor_body(comm, X, y, w):
    from mpitrain.data import row_range
    from mpitrain.ensemble import StackingRegressor
    from mpitrain.linear_model import LinearRegression, Ridge
    from mpitrain.model_io import model_from_bytes, model_to_bytes

    start, stop = row_range(len(X), comm.Get_size(), comm.Get_rank())
    model = StackingRegressor(
        [("ridge", Ridge(alpha=5.0)), ("ols", LinearRegression())],
        cv=3,
        comm=comm,
    ).fit(X[start:stop], y[start:stop], sample_weight=w[start:stop])
    # Saved and loaded with skops, trusting only the types mpitrain writes.
    return model_from_bytes(model_to_bytes(model.estimator_)), model.final_estimator_


@pytest.mark.mpi(ranks=[2])
def test_stacking_regressor_weighted_equals_sklearn_and_loads(mpi_ranks):
    X, y = make_regression(150, 5, noise=10.0, random_state=1)
    w = np.random.default_rng(0).uniform(0.5, 2.0, len(X))
    ref = sk_ensemble.StackingRegressor(
        [("ridge", sk_linear.Ridge(alpha=5.0)), ("ols", sk_linear.LinearRegression())],
        final_estimator=sk_linear.Ridge(),  # mpitrain's default final estimator
        cv=_splits(len(X), 3, seed=0),
    ).fit(X, y, sample_weight=w)
    for loaded, final in run_function(
        _stacking_regressor_body, mpi_ranks, X, y, w, timeout=TIMEOUT
    ):
        assert type(loaded) is sk_ensemble.StackingRegressor
        assert (
            type(final) is sk_linear.Ridge and loaded.stack_method_ == ["predict"] * 2
        )
        np.testing.assert_allclose(final.coef_, ref.final_estimator_.coef_, rtol=1e-8)
        np.testing.assert_allclose(
            loaded.predict(X), ref.predict(X), rtol=1e-8, atol=1e-8 * np.abs(y).max()
        )


# ------------------------------------------------------------------- voting


def _voting_body(comm, X, y, bounds, voting, weights):
    from mpitrain.ensemble import VotingClassifier
    from mpitrain.linear_model import LogisticRegression

    rank = comm.Get_rank()
    mine = slice(bounds[rank], bounds[rank + 1])
    model = VotingClassifier(
        [("strong", LogisticRegression(C=10.0)), ("weak", LogisticRegression(C=0.01))],
        voting=voting,
        weights=weights,
        comm=comm,
    ).fit(X[mine], y[mine])
    return model.estimator_


@pytest.mark.mpi(ranks=[1, 3])
@pytest.mark.parametrize("voting", ["hard", "soft"])
def test_voting_classifier_equals_sklearn(mpi_ranks, voting):
    X, y = _classification(n=180, seed=3)
    bounds = _bounds(len(X), mpi_ranks, empty_rank=2 if mpi_ranks == 3 else None)
    ref = sk_ensemble.VotingClassifier(
        [
            ("strong", sk_linear.LogisticRegression(C=10.0)),
            ("weak", sk_linear.LogisticRegression(C=0.01)),
        ],
        voting=voting,
        weights=[1.0, 2.0],
    ).fit(X, y)
    for model in run_function(
        _voting_body, mpi_ranks, X, y, bounds, voting, [1.0, 2.0], timeout=TIMEOUT
    ):
        assert type(model) is sk_ensemble.VotingClassifier and model.voting == voting
        np.testing.assert_array_equal(model.classes_, ref.classes_)
        np.testing.assert_array_equal(model.le_.classes_, ref.le_.classes_)
        for mine, theirs in zip(model.estimators_, ref.estimators_):
            np.testing.assert_array_equal(mine.classes_, [0, 1, 2])
            np.testing.assert_allclose(mine.coef_, theirs.coef_, rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(model.predict(X), ref.predict(X))
        if voting == "soft":
            np.testing.assert_allclose(
                model.predict_proba(X), ref.predict_proba(X), atol=1e-5
            )


def _voting_forest_body(comm, X, y, voting):
    from mpitrain.data import row_range
    from mpitrain.ensemble import RandomForestClassifier, VotingClassifier
    from mpitrain.linear_model import LogisticRegression
    from mpitrain.svm import SVC

    start, stop = row_range(len(X), comm.Get_size(), comm.Get_rank())
    members = [
        ("lr", LogisticRegression()),
        ("forest", RandomForestClassifier(n_estimators=12, random_state=0)),
    ]
    if voting == "hard":
        members.append(("svc", SVC(C=3.0)))
    model = VotingClassifier(members, voting=voting, weights=None, comm=comm)
    model.fit(X[start:stop], y[start:stop])
    return model.estimator_, model.predict(X[start:stop]), (start, stop)


@pytest.mark.mpi(ranks=[2])
@pytest.mark.parametrize("voting", ["hard", "soft"])
def test_voting_rule_with_approximate_members(mpi_ranks, voting):
    """A merged forest and the SVM cascade are not scikit-learn's fits on all
    rows, so the check is scikit-learn's rule, in numpy, on the fitted members."""
    X, y = _classification(n=200, seed=5)
    results = run_function(
        _voting_forest_body, mpi_ranks, X, y, voting, timeout=TIMEOUT
    )
    first = results[0][0]
    classes = np.unique(y)
    for model, local_pred, (start, stop) in results:
        assert [type(m).__name__ for m in model.estimators_] == [
            "LogisticRegression",
            "RandomForestClassifier",
            *(["SVC"] if voting == "hard" else []),
        ]
        # The same model on every rank.
        np.testing.assert_array_equal(model.predict(X), first.predict(X))
        if voting == "soft":
            mean = np.mean([m.predict_proba(X) for m in model.estimators_], axis=0)
            np.testing.assert_allclose(model.predict_proba(X), mean, rtol=1e-12)
            expected = classes[mean.argmax(axis=1)]
        else:
            votes = np.stack([m.predict(X) for m in model.estimators_], axis=1)
            counts = np.stack(
                [(votes == k).sum(axis=1) for k in range(len(classes))], axis=1
            )
            expected = classes[counts.argmax(axis=1)]
        np.testing.assert_array_equal(model.predict(X), expected)
        np.testing.assert_array_equal(local_pred, expected[start:stop])
    # The combination is worth having: at least its weakest member's accuracy.
    scores = [
        np.mean(m.predict(X) == np.arange(3)[np.searchsorted(classes, y)])
        for m in first.estimators_
    ]
    assert np.mean(first.predict(X) == y) >= min(scores)


def _voting_regressor_body(comm, X, y):
    from mpitrain.data import row_range
    from mpitrain.ensemble import VotingRegressor
    from mpitrain.linear_model import LinearRegression, Ridge

    start, stop = row_range(len(X), comm.Get_size(), comm.Get_rank())
    return (
        VotingRegressor(
            [("ols", LinearRegression()), ("ridge", Ridge(alpha=30.0))],
            weights=[3, 1],
            comm=comm,
        )
        .fit(X[start:stop], y[start:stop])
        .estimator_
    )


@pytest.mark.mpi(ranks=[3])
def test_voting_regressor_equals_sklearn(mpi_ranks):
    X, y = make_regression(90, 4, noise=3.0, random_state=2)
    ref = sk_ensemble.VotingRegressor(
        [("ols", sk_linear.LinearRegression()), ("ridge", sk_linear.Ridge(alpha=30.0))],
        weights=[3, 1],
    ).fit(X, y)
    for model in run_function(_voting_regressor_body, mpi_ranks, X, y, timeout=TIMEOUT):
        assert type(model) is sk_ensemble.VotingRegressor
        assert list(model.named_estimators_) == ["ols", "ridge"]
        np.testing.assert_allclose(model.predict(X), ref.predict(X), rtol=1e-9)


# -------------------------------------------------- parameters, errors, files


def test_member_parameters_reachable_and_cloned():
    from mpitrain.ensemble import StackingClassifier, VotingClassifier
    from mpitrain.linear_model import LogisticRegression, Ridge

    vote = VotingClassifier([("lr", LogisticRegression()), ("r", "drop")])
    params = vote.get_params(deep=True)
    assert params["lr__C"] == 1.0 and params["r"] == "drop" and "lr__comm" in params
    vote.set_params(lr__C=0.25, r=LogisticRegression(C=4.0), voting="soft")
    assert vote.estimators[0][1].C == 0.25 and vote.estimators[1][1].C == 4.0
    twin = clone(vote)
    assert twin.estimators[1][1] is not vote.estimators[1][1]
    assert twin.get_params(deep=True)["r__C"] == 4.0 and twin.voting == "soft"
    stack = StackingClassifier(
        [("ridge", Ridge())], final_estimator=LogisticRegression()
    )
    stack.set_params(final_estimator__C=0.5, ridge__alpha=3.0)
    assert stack.final_estimator.C == 0.5 and stack.estimators[0][1].alpha == 3.0


def _errors_body(comm, X, y):
    from sklearn.linear_model import LogisticRegression as Plain

    from mpitrain.ensemble import (
        StackingClassifier,
        StackingRegressor,
        VotingClassifier,
    )
    from mpitrain.linear_model import LogisticRegression, Ridge
    from mpitrain.svm import SVC

    cases = {
        "plain member": lambda: VotingClassifier([("lr", Plain())], comm=comm),
        "soft without proba": lambda: VotingClassifier(
            [("lr", LogisticRegression()), ("svc", SVC())], voting="soft", comm=comm
        ),
        "regressor in classifier vote": lambda: VotingClassifier(
            [("ridge", Ridge())], comm=comm
        ),
        "weights": lambda: VotingClassifier(
            [("lr", LogisticRegression())], weights=[1, 2], comm=comm
        ),
        "all dropped": lambda: VotingClassifier([("lr", "drop")], comm=comm),
        # Fold 0 holds every row of the last class: the rows outside it lack that class.
        "fold lacks a class": lambda: StackingClassifier(
            [("lr", LogisticRegression())],
            cv=(y != np.unique(y)[-1]).astype(int),
            comm=comm,
        ),
        "bad fold ids": lambda: StackingRegressor(
            [("ridge", Ridge())], cv=np.zeros(len(X) + comm.Get_rank(), int), comm=comm
        ),
    }
    out = {}
    for name, make in cases.items():
        try:
            make().fit(X, y if name != "bad fold ids" else X[:, 0])
        except (ValueError, TypeError) as exc:
            out[name] = f"{type(exc).__name__}: {exc}"
        else:
            out[name] = "fitted"
    return out


@pytest.mark.mpi(ranks=[2])
def test_bad_members_refused_alike_on_every_rank(mpi_ranks):
    X, y = _classification(n=40)
    results = run_function(_errors_body, mpi_ranks, X, y, timeout=TIMEOUT)
    assert results[0] == results[1]
    out = results[0]
    assert (
        "TypeError" in out["plain member"]
        and "not an mpitrain estimator" in out["plain member"]
    )
    assert (
        "voting='soft'" in out["soft without proba"]
        and "svc (SVC)" in out["soft without proba"]
    )
    assert "should be a classifier" in out["regressor in classifier vote"]
    assert "weights must be equal" in out["weights"]
    assert "All estimators are dropped" in out["all dropped"]
    assert (
        "the rows outside fold 0 hold 2 of the 3 classes" in out["fold lacks a class"]
    )
    # Found on rank 1 only (one row too many), raised on both, naming the rank.
    assert (
        "rank 1" in out["bad fold ids"]
        and "non-negative integer fold ids" in out["bad fold ids"]
    )


def test_saved_combination_with_support_vectors_is_private(tmp_path):
    """A member keeping raw rows (SVC) makes the whole file private (mode 0600)."""
    from sklearn.svm import SVC

    from mpitrain.model_io import holds_raw_rows, load_model, save_model

    X, y = make_classification(40, 3, n_informative=2, n_redundant=0, random_state=0)
    vote = sk_ensemble.VotingClassifier(
        [("lr", sk_linear.LogisticRegression()), ("svc", SVC())]
    ).fit(X, y)
    stack = sk_ensemble.StackingClassifier([("svc", SVC())], cv=2).fit(X, y)
    for model in (vote, stack):
        assert holds_raw_rows(model)
        path = tmp_path / f"{type(model).__name__}.skops"
        save_model(model, path)
        assert path.stat().st_mode & 0o777 == 0o600
        np.testing.assert_array_equal(load_model(path).predict(X), model.predict(X))
    assert not holds_raw_rows(clone(vote).set_params(svc="drop").fit(X, y))


# ------------------------------------------------------------- command line


def test_train_stacking_from_the_command_line(tmp_path, mpitrain_cli):
    from conftest import regression_problem, write_h5

    from mpitrain.model_io import load_model

    X, y = regression_problem(n=200, d=4)
    data = write_h5(tmp_path / "d.h5", X, y)
    out = tmp_path / "m.skops"
    run = mpirun(
        2,
        [
            *mpitrain_cli,
            "train",
            data,
            "--model",
            "stacking",
            "--members",
            "ridge,random-forest",
            "--param",
            "random_forest__n_estimators=8",
            "--param",
            "ridge__alpha=2.0",
            "--out",
            str(out),
            "--report",
            str(tmp_path / "r.json"),
            "--quiet",
        ],
        timeout=TIMEOUT,
    )
    assert run.returncode == 0, run.stderr
    # The report names each member's way of combining the ranks, not "exact" for all.
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["strategy"] == "combined: ridge exact, random_forest merged"
    model = load_model(out)
    assert type(model) is sk_ensemble.StackingRegressor
    assert list(model.named_estimators_) == ["ridge", "random_forest"]
    assert model.named_estimators_["ridge"].alpha == 2.0
    assert len(model.named_estimators_["random_forest"].estimators_) == 8
    assert type(model.final_estimator_) is sk_linear.Ridge
    ridge = sk_linear.Ridge(alpha=2.0).fit(X, y)
    np.testing.assert_allclose(model.estimators_[0].coef_, ridge.coef_, rtol=1e-8)
    assert np.corrcoef(model.predict(X), y)[0, 1] > 0.99


def test_train_options_for_members():
    from mpitrain.errors import UsageError
    from mpitrain.workflow import TrainOptions, make_estimator

    def options(**kw):
        return TrainOptions(data="d.h5", out="m.skops", **kw)

    with pytest.raises(UsageError, match="needs --members"):
        options(model="voting")
    with pytest.raises(UsageError, match="applies to --model stacking or voting only"):
        options(model="ridge", members="lasso")
    with pytest.raises(UsageError, match="--members pca,voting: choose models from"):
        options(model="stacking", members="ridge,pca,voting")
    with pytest.raises(UsageError, match="Ridge is not a classifier"):
        make_estimator(
            options(model="voting", members="logistic,ridge"), None, labels=True
        )
    made = make_estimator(
        options(
            model="stacking",
            members=["ridge", "random-forest", "ridge"],
            params={"ridge_2__alpha": 4.0, "passthrough": True},
        ),
        None,
        labels=False,
    )
    assert type(made).__name__ == "StackingRegressor" and made.passthrough
    assert [name for name, _ in made.estimators] == [
        "ridge",
        "random_forest",
        "ridge_2",
    ]
    assert made.estimators[2][1].alpha == 4.0 and made.estimators[0][1].alpha == 1.0
    with pytest.raises(UsageError, match="has no parameter 'ridge__nope'"):
        make_estimator(
            options(model="voting", members="ridge", params={"ridge__nope": 1}), None
        )
