"""Rank-count-independent splits and cross-validation: gold tests against one process on all rows."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from conftest import fold_failure_problem, regression_problem
from sklearn import linear_model
from sklearn import metrics as skm
from sklearn.datasets import make_classification
from sklearn.model_selection import KFold, StratifiedKFold
from sklearn.model_selection import train_test_split as sk_train_test_split

from mpitrain.data import row_range
from mpitrain.model_selection import (
    fold_sizes,
    global_fold_ids,
    global_stratified_fold_ids,
    global_test_mask,
    row_hash,
    split_sizes,
    stratified_fold_sizes,
)
from mpitrain.testing import run_function

N_ROWS = 157
BIG = 20_011  # beyond GATHER_KEYS: the search takes a round before exchanging keys


def _layout(n: int, comm, layout: str) -> tuple[int, int]:
    """(offset, count) of this rank's rows: balanced, uneven with rank 1 empty, or in reverse rank order."""
    size, rank = comm.Get_size(), comm.Get_rank()
    if layout == "balanced" or size == 1:
        start, stop = row_range(n, size, rank)
        return start, stop - start
    if layout == "uneven":
        shares = np.array([3, 0, 1, 5][:size], dtype=float)
        bounds = np.r_[0, np.round(np.cumsum(shares) / shares.sum() * n)].astype(int)
        return int(bounds[rank]), int(bounds[rank + 1] - bounds[rank])
    # "reversed": rank 0 holds the last rows; only valid with an explicit row_offset.
    start, stop = row_range(n, size, size - 1 - rank)
    return start, stop - start


# ---------------------------------------------------------------- pure functions


@pytest.mark.parametrize("n", [2, 3, 10, 157, 1000])
@pytest.mark.parametrize("test_size", [0.1, 0.25, 0.5, 0.9, 1])
def test_split_sizes_follow_sklearn(n, test_size):
    X = np.arange(n)
    try:
        train, test = sk_train_test_split(X, test_size=test_size, random_state=0)
    except ValueError:  # an empty part: refused by both
        with pytest.raises(ValueError):
            split_sizes(n, test_size)
        return
    assert split_sizes(n, test_size) == (len(train), len(test))
    mask = global_test_mask(n, test_size=test_size, seed=5)
    assert mask.sum() == len(test)


def test_split_sizes_refuse_empty_parts():
    for n, size in [(1, 0.5), (10, 0.0), (10, 1.0), (10, 10), (10, 0)]:
        with pytest.raises(ValueError):
            split_sizes(n, size)
    with pytest.raises(TypeError):
        split_sizes(10, "half")


@pytest.mark.parametrize("n,k", [(10, 2), (11, 3), (157, 5), (5, 5)])
def test_fold_sizes_equal_kfold_and_cover_every_row_once(n, k):
    expected = [len(test) for _, test in KFold(k).split(np.arange(n))]
    np.testing.assert_array_equal(fold_sizes(n, k), expected)
    folds = global_fold_ids(n, n_folds=k, seed=3)
    np.testing.assert_array_equal(np.bincount(folds, minlength=k), expected)
    with pytest.raises(ValueError):
        fold_sizes(n, n + 1)
    with pytest.raises(ValueError):
        fold_sizes(n, 1)


def test_keys_are_distinct_seeded_and_well_mixed():
    ids = np.arange(200_000)
    keys = row_hash(ids, seed=7)
    assert np.unique(keys).size == ids.size
    assert not np.array_equal(keys, row_hash(ids, seed=8))
    assert not np.array_equal(keys, row_hash(ids, seed=7, stream=1))
    np.testing.assert_array_equal(
        row_hash(ids[1000:1010], seed=7), keys[1000:1010]
    )  # depends on the id only
    # Consecutive ids land in unrelated places: test rows are spread evenly over the file.
    mask = global_test_mask(200_000, test_size=0.2, seed=7)
    per_block = mask.reshape(100, 2000).mean(axis=1)
    assert np.abs(per_block - 0.2).max() < 0.05
    assert not np.array_equal(mask, global_test_mask(200_000, test_size=0.2, seed=8))


def _class_counts_per_fold(y, folds, n_folds, n_classes):
    return np.array(
        [np.bincount(y[folds == k], minlength=n_classes) for k in range(n_folds)]
    )


@pytest.mark.parametrize("n_folds", [2, 3, 5, 7])
def test_stratified_folds_have_stratified_kfolds_allocation(n_folds):
    """Each fold's rows of each class: exactly as many as in scikit-learn's StratifiedKFold."""
    rng = np.random.default_rng(n_folds)
    for n in (20, 97, 301):
        # Classes first seen in sorted order: scikit-learn numbers them by first appearance.
        y = np.r_[np.arange(4), rng.choice(4, n - 4, p=[0.5, 0.3, 0.15, 0.05])]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a class with fewer rows than folds
            expected = [
                np.bincount(y[test], minlength=4)
                for _, test in StratifiedKFold(n_folds).split(np.zeros(n), y)
            ]
            folds = global_stratified_fold_ids(y, n_folds=n_folds, seed=3)
            other_seed = global_stratified_fold_ids(y, n_folds=n_folds, seed=4)
        np.testing.assert_array_equal(
            stratified_fold_sizes(np.bincount(y), n_folds), expected
        )
        np.testing.assert_array_equal(
            _class_counts_per_fold(y, folds, n_folds, 4), expected
        )
        np.testing.assert_array_equal(
            np.bincount(folds, minlength=n_folds), fold_sizes(n, n_folds)
        )
        # Within a class the rows go to folds by key: another seed, other folds.
        assert not np.array_equal(folds, other_seed)


def test_stratified_folds_warn_and_refuse_as_scikit_learn():
    y = np.array([0] * 10 + [1] * 2)
    with pytest.warns(UserWarning) as ours:
        global_stratified_fold_ids(y, n_folds=3)
    with pytest.warns(UserWarning) as theirs:
        list(StratifiedKFold(3).split(np.zeros(12), y))
    assert str(ours[0].message) == str(theirs[0].message)
    y = np.array([0, 0, 1, 1])
    with pytest.raises(ValueError) as ours:
        global_stratified_fold_ids(y, n_folds=3)
    with pytest.raises(ValueError) as theirs:
        list(StratifiedKFold(3).split(np.zeros(4), y))
    assert str(ours.value) == str(theirs.value)


# ------------------------------------------------------------ distributed split


def _split_body(comm, n):
    from mpitrain.errors import DistributedValueError
    from mpitrain.model_selection import (
        fold_ids,
        train_test_split,
        train_test_split_mask,
    )

    out = {}
    for layout in ("balanced", "uneven", "reversed"):
        offset, count = _layout(n, comm, layout)
        # Rank-ordered layouts need no offset; the reversed one passes it.
        given = offset if layout == "reversed" else None
        out[layout] = {
            "offset": offset,
            "mask": train_test_split_mask(
                count, given, test_size=0.3, seed=11, comm=comm
            ),
            "mask_int": train_test_split_mask(
                count, given, test_size=17, seed=0, comm=comm
            ),
            "folds": fold_ids(count, given, n_folds=4, seed=11, comm=comm),
            "folds_7": fold_ids(count, given, n_folds=7, seed=2, comm=comm),
        }
    # The radix rounds: forced down to single keys (cap 0) or a few, and a data set big enough for one round.
    import mpitrain.model_selection as ms

    default = ms.GATHER_KEYS
    for cap in (0, 3):
        ms.GATHER_KEYS = cap
        offset, count = _layout(n, comm, "uneven")
        out[f"cap_{cap}"] = {
            "offset": offset,
            "mask": train_test_split_mask(count, test_size=0.3, seed=11, comm=comm),
            "folds": fold_ids(count, n_folds=4, seed=11, comm=comm),
        }
    ms.GATHER_KEYS = default
    offset, count = _layout(BIG, comm, "uneven")
    out["big"] = {
        "offset": offset,
        "mask": train_test_split_mask(count, test_size=0.1, seed=1, comm=comm),
        "folds": fold_ids(count, n_folds=10, seed=1, comm=comm),
    }
    # train_test_split on arrays, with an absent weight.
    offset, count = _layout(n, comm, "uneven")
    rows = np.arange(offset, offset + count)
    out["arrays"] = train_test_split(
        rows, rows * 2.0, None, test_size=0.3, seed=11, comm=comm
    )
    # Offsets that do not tile the rows are refused on every rank.
    try:
        train_test_split_mask(
            5, 3 if comm.Get_rank() == 0 else 0 if comm.Get_size() > 1 else 1, comm=comm
        )
        out["bad_offsets"] = None
    except (ValueError, DistributedValueError) as exc:
        out["bad_offsets"] = str(exc)
    return out


@pytest.mark.mpi(ranks=[1, 2, 3, 4])
def test_split_and_folds_do_not_depend_on_the_rank_count(mpi_ranks):
    per_rank = run_function(_split_body, mpi_ranks, N_ROWS)
    mask = global_test_mask(N_ROWS, test_size=0.3, seed=11)
    mask_int = global_test_mask(N_ROWS, test_size=17, seed=0)
    folds = global_fold_ids(N_ROWS, n_folds=4, seed=11)
    folds_7 = global_fold_ids(N_ROWS, n_folds=7, seed=2)
    assert (
        mask.sum() == 48 and mask_int.sum() == 17
    )  # ceil(0.3 * 157), and an exact count
    for layout in ("balanced", "uneven", "reversed"):
        parts = sorted((r[layout] for r in per_rank), key=lambda p: p["offset"])
        for name, reference in (
            ("mask", mask),
            ("mask_int", mask_int),
            ("folds", folds),
            ("folds_7", folds_7),
        ):
            np.testing.assert_array_equal(
                np.concatenate([p[name] for p in parts]),
                reference,
                err_msg=f"{layout} {name}",
            )
    for layout in ("cap_0", "cap_3"):
        parts = sorted((r[layout] for r in per_rank), key=lambda p: p["offset"])
        np.testing.assert_array_equal(
            np.concatenate([p["mask"] for p in parts]), mask, err_msg=layout
        )
        np.testing.assert_array_equal(
            np.concatenate([p["folds"] for p in parts]), folds, err_msg=layout
        )
    parts = sorted((r["big"] for r in per_rank), key=lambda p: p["offset"])
    big_mask = np.concatenate([p["mask"] for p in parts])
    assert big_mask.sum() == 2002
    np.testing.assert_array_equal(
        big_mask, global_test_mask(BIG, test_size=0.1, seed=1)
    )
    np.testing.assert_array_equal(
        np.concatenate([p["folds"] for p in parts]),
        global_fold_ids(BIG, n_folds=10, seed=1),
    )
    train = np.concatenate([r["arrays"][0] for r in per_rank])
    test = np.concatenate([r["arrays"][1] for r in per_rank])
    np.testing.assert_array_equal(test, np.flatnonzero(mask))
    np.testing.assert_array_equal(train, np.flatnonzero(~mask))
    np.testing.assert_array_equal(
        np.concatenate([r["arrays"][3] for r in per_rank]), 2.0 * np.flatnonzero(mask)
    )
    assert all(r["arrays"][4] is None and r["arrays"][5] is None for r in per_rank)
    messages = {r["bad_offsets"] for r in per_rank}
    assert len(messages) == 1 and "tile" in messages.pop()


# ------------------------------------------------------------ cross-validation


def _stratified_body(comm, y, y_big):
    from mpitrain.model_selection import stratified_fold_ids

    out = {}
    for layout in ("balanced", "uneven", "reversed"):
        offset, count = _layout(len(y), comm, layout)
        given = offset if layout == "reversed" else None
        mine = y[offset : offset + count]
        out[layout] = {
            "offset": offset,
            "folds": stratified_fold_ids(mine, given, n_folds=4, seed=11, comm=comm),
        }
    offset, count = _layout(len(y_big), comm, "uneven")
    out["big"] = {
        "offset": offset,
        "folds": stratified_fold_ids(
            y_big[offset : offset + count], n_folds=10, seed=1, comm=comm
        ),
    }
    # A class with fewer rows than folds: scikit-learn's warning, on every rank.
    small = np.array([0] * 10 + [1] * 2)
    offset, count = _layout(len(small), comm, "uneven")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out["small"] = {
            "offset": offset,
            "folds": stratified_fold_ids(
                small[offset : offset + count], n_folds=3, comm=comm
            ),
        }
    out["warned"] = [str(w.message) for w in caught]
    # More folds than every class's rows: refused on every rank.
    tiny = np.array([0, 0, 1, 1])
    offset, count = _layout(len(tiny), comm, "uneven")
    try:
        stratified_fold_ids(tiny[offset : offset + count], n_folds=3, comm=comm)
        out["error"] = None
    except ValueError as exc:
        out["error"] = str(exc)
    return out


@pytest.mark.mpi(ranks=[1, 2, 3, 4])
def test_stratified_folds_do_not_depend_on_the_rank_count(mpi_ranks):
    rng = np.random.default_rng(0)
    labels = np.array(["ant", "bee", "cat"])
    y = labels[rng.choice(3, N_ROWS, p=[0.6, 0.3, 0.1])]
    y_big = labels[rng.choice(3, BIG, p=[0.7, 0.2, 0.1])]
    small = np.array([0] * 10 + [1] * 2)
    per_rank = run_function(_stratified_body, mpi_ranks, y, y_big)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        references = {
            "balanced": (y, global_stratified_fold_ids(y, n_folds=4, seed=11)),
            "big": (y_big, global_stratified_fold_ids(y_big, n_folds=10, seed=1)),
            "small": (small, global_stratified_fold_ids(small, n_folds=3)),
        }
    references["uneven"] = references["reversed"] = references["balanced"]
    for name, (labels_all, reference) in references.items():
        parts = sorted((r[name] for r in per_rank), key=lambda p: p["offset"])
        folds = np.concatenate([p["folds"] for p in parts])
        np.testing.assert_array_equal(folds, reference, err_msg=name)
        _, codes = np.unique(labels_all, return_inverse=True)
        n_folds = int(folds.max()) + 1
        np.testing.assert_array_equal(
            _class_counts_per_fold(codes, folds, n_folds, codes.max() + 1),
            stratified_fold_sizes(np.bincount(codes), n_folds),
            err_msg=name,
        )
    for r in per_rank:
        assert r["warned"] == [
            "The least populated class in y has only 2 members, which is less than n_splits=3."
        ]
        assert r["error"] == (
            "n_splits=3 cannot be greater than the number of members in each class."
        )


def _cv_body(comm, Xr, yr, wr, Xc, yc):
    from mpitrain.linear_model import LogisticRegression, Ridge
    from mpitrain.model_selection import cross_validate
    from mpitrain.preprocessing import StandardScaler, make_pipeline

    out = {}
    offset, count = _layout(len(yr), comm, "uneven")
    rows = slice(offset, offset + count)
    out["ridge"] = cross_validate(
        Ridge(alpha=2.0), Xr[rows], yr[rows], cv=5, seed=3, comm=comm
    )
    out["ridge_weighted"] = cross_validate(
        Ridge(alpha=0.5),
        Xr[rows],
        yr[rows],
        cv=4,
        seed=1,
        sample_weight=wr[rows],
        scoring=["r2", "neg_mean_squared_error", "neg_mean_absolute_error"],
        return_estimator=True,
        comm=comm,
    )
    out["pipeline"] = cross_validate(
        make_pipeline(StandardScaler(), Ridge(alpha=2.0)),
        Xr[rows],
        yr[rows],
        cv=3,
        seed=0,
        sample_weight=wr[rows],
        comm=comm,
    )
    offset, count = _layout(len(yc), comm, "balanced")
    rows = slice(offset, offset + count)
    out["logistic"] = cross_validate(
        LogisticRegression(tol=1e-10, max_iter=5000),
        Xc[rows],
        yc[rows],
        cv=3,
        seed=4,
        scoring=["accuracy", "roc_auc", "f1_macro"],
        comm=comm,
    )
    # Not an mpitrain estimator: refused on every rank, before any fit.
    try:
        cross_validate(linear_model.Ridge(), Xr[rows], yr[rows], comm=comm)
    except ValueError as exc:
        out["refused"] = str(exc)
    return out


def _sklearn_cv(make, X, y, folds, score, sample_weight=None, fit_weight=True):
    """scikit-learn fitted and scored per fold on all rows, with the given fold of each row."""
    results = []
    for fold in range(folds.max() + 1):
        test, train = folds == fold, folds != fold
        kwargs = (
            {}
            if sample_weight is None or not fit_weight
            else {"sample_weight": sample_weight[train]}
        )
        model = make().fit(X[train], y[train], **kwargs)
        results.append(
            score(
                model,
                X[test],
                y[test],
                None if sample_weight is None else sample_weight[test],
            )
        )
    return np.array(results)


@pytest.mark.mpi(ranks=[1, 2, 3, 4])
def test_cross_validate_equals_sklearn_per_fold(mpi_ranks):
    Xr, yr = regression_problem(n=131, d=4, offset=20.0)
    wr = np.random.default_rng(9).uniform(0.2, 2.0, size=131)
    Xc, yc = make_classification(
        n_samples=240, n_features=4, n_informative=3, n_redundant=0, random_state=5
    )
    per_rank = run_function(_cv_body, mpi_ranks, Xr, yr, wr, Xc, yc)
    got = per_rank[0]
    for other in per_rank[1:]:  # identical on every rank
        for key in ("ridge", "logistic"):
            np.testing.assert_array_equal(
                other[key]["test_score"]
                if "test_score" in other[key]
                else other[key]["test_accuracy"],
                got[key]["test_score"]
                if "test_score" in got[key]
                else got[key]["test_accuracy"],
            )
            np.testing.assert_array_equal(other[key]["fit_time"], got[key]["fit_time"])

    # Exact Ridge: the same score per fold as scikit-learn on all rows, within 1e-8.
    ridge = got["ridge"]
    folds = global_fold_ids(131, n_folds=5, seed=3)
    ref = _sklearn_cv(
        lambda: linear_model.Ridge(alpha=2.0),
        Xr,
        yr,
        folds,
        lambda m, X, y, w: skm.r2_score(y, m.predict(X)),
    )
    np.testing.assert_allclose(ridge["test_score"], ref, rtol=0, atol=1e-8)
    assert ridge["scoring"] == ["r2"] and ridge["mean"]["r2"] == pytest.approx(
        ref.mean(), abs=1e-8
    )
    assert ridge["std"]["r2"] == pytest.approx(ref.std(), abs=1e-8)
    np.testing.assert_array_equal(ridge["n_test"], np.bincount(folds))
    np.testing.assert_array_equal(ridge["n_train"], 131 - np.bincount(folds))
    assert (
        ridge["fit_time"].shape == ridge["score_time"].shape == (5,)
        and (ridge["fit_time"] > 0).all()
    )

    weighted = got["ridge_weighted"]
    folds = global_fold_ids(131, n_folds=4, seed=1)
    for name, metric in (
        ("r2", skm.r2_score),
        ("neg_mean_squared_error", skm.mean_squared_error),
        ("neg_mean_absolute_error", skm.mean_absolute_error),
    ):
        sign = 1 if name == "r2" else -1
        ref = _sklearn_cv(
            lambda: linear_model.Ridge(alpha=0.5),
            Xr,
            yr,
            folds,
            lambda m, X, y, w: sign * metric(y, m.predict(X), sample_weight=w),
            sample_weight=wr,
        )
        np.testing.assert_allclose(
            weighted[f"test_{name}"], ref, rtol=1e-9, atol=1e-8, err_msg=name
        )
    assert [type(e) for e in weighted["estimator"]] == [linear_model.Ridge] * 4

    # A pipeline: the scaler is fitted globally on each training part, weights reach both steps.
    from sklearn.pipeline import make_pipeline as sk_make_pipeline
    from sklearn.preprocessing import StandardScaler as SkScaler

    folds = global_fold_ids(131, n_folds=3, seed=0)
    results = []
    for fold in range(3):
        test, train = folds == fold, folds != fold
        pipe = sk_make_pipeline(SkScaler(), linear_model.Ridge(alpha=2.0))
        pipe.fit(
            Xr[train],
            yr[train],
            standardscaler__sample_weight=wr[train],
            ridge__sample_weight=wr[train],
        )
        results.append(
            skm.r2_score(yr[test], pipe.predict(Xr[test]), sample_weight=wr[test])
        )
    np.testing.assert_allclose(
        got["pipeline"]["test_score"], results, rtol=0, atol=1e-8
    )

    # Exact logistic regression, tightly converged on both sides: the per-fold models agree to
    # about 1e-7, so every test row gets the same label (accuracy and F1 equal) and the AUC
    # agrees to 1e-6.
    # A classifier's folds are stratified, as scikit-learn's cross_validate's.
    logistic = got["logistic"]
    folds = global_stratified_fold_ids(yc, n_folds=3, seed=4)
    np.testing.assert_array_equal(logistic["n_test"], np.bincount(folds))

    def make():
        return linear_model.LogisticRegression(tol=1e-10, max_iter=5000)

    accuracy = _sklearn_cv(
        make, Xc, yc, folds, lambda m, X, y, w: skm.accuracy_score(y, m.predict(X))
    )
    auc = _sklearn_cv(
        make,
        Xc,
        yc,
        folds,
        lambda m, X, y, w: skm.roc_auc_score(y, m.decision_function(X)),
    )
    f1 = _sklearn_cv(
        make,
        Xc,
        yc,
        folds,
        lambda m, X, y, w: skm.f1_score(y, m.predict(X), average="macro"),
    )
    np.testing.assert_array_equal(logistic["test_accuracy"], accuracy)
    np.testing.assert_allclose(logistic["test_f1_macro"], f1, rtol=1e-12)
    np.testing.assert_allclose(logistic["test_roc_auc"], auc, rtol=0, atol=1e-6)

    assert "cannot be fitted on rows split across ranks" in got["refused"]
    assert len({r["refused"] for r in per_rank}) == 1


def _cv_failures_body(comm, X, y, folds, X3, y3):
    from mpitrain.errors import DistributedError
    from mpitrain.linear_model import LogisticRegression
    from mpitrain.model_selection import cross_validate

    out = {}
    for key, Xk, yk, cv, scoring in (
        ("fit", X, y, folds, None),
        ("one_class", X, y, folds, ["accuracy", "roc_auc"]),
        ("three_classes", X3, y3, 3, ["accuracy", "roc_auc"]),
    ):
        offset, count = _layout(len(yk), comm, "uneven")
        rows = slice(offset, offset + count)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            found = cross_validate(
                LogisticRegression(tol=1e-10, max_iter=5000),
                Xk[rows],
                yk[rows],
                cv=cv if isinstance(cv, int) else cv[rows],
                scoring=scoring,
                comm=comm,
            )
        out[key] = {k: v for k, v in found.items() if k.startswith("test_")}
        out[key + "_warned"] = [(w.category.__name__, str(w.message)) for w in caught]
        out[key + "_fit_errors"] = found["fit_errors"]
    offset, count = _layout(len(y), comm, "uneven")
    rows = slice(offset, offset + count)
    for key, labels, error_score in (
        ("raised", y, "raise"),
        ("all_failed", np.zeros_like(y), np.nan),
    ):
        try:
            cross_validate(
                LogisticRegression(),
                X[rows],
                labels[rows],
                cv=folds[rows],
                error_score=error_score,
                comm=comm,
            )
            out[key] = None
        except (DistributedError, ValueError) as exc:
            out[key] = f"{type(exc).__name__}: {exc}"
    return out


@pytest.mark.mpi(ranks=[2, 3])
def test_cross_validate_failures_as_sklearns(mpi_ranks):
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_validate as reference

    # Fold 0's fit fails; folds 1 and 2 fit, and their roc_auc is undefined.
    X, y, folds, splits = fold_failure_problem()
    # Three classes: roc_auc (binary) cannot be scored on any fold.
    X3, y3 = make_classification(
        n_samples=90,
        n_features=4,
        n_informative=3,
        n_redundant=0,
        n_classes=3,
        random_state=2,
    )
    folds3 = global_stratified_fold_ids(y3, n_folds=3, seed=0)
    splits3 = [
        (np.flatnonzero(folds3 != k), np.flatnonzero(folds3 == k)) for k in range(3)
    ]
    refs = {}
    for key, Xk, yk, cv, scoring in (
        ("fit", X, y, splits, None),
        ("one_class", X, y, splits, ["accuracy", "roc_auc"]),
        ("three_classes", X3, y3, splits3, ["accuracy", "roc_auc"]),
    ):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            refs[key] = reference(
                LogisticRegression(tol=1e-10, max_iter=5000),
                Xk,
                yk,
                cv=cv,
                scoring=scoring,
            )
        refs[key + "_warned"] = [w.category.__name__ for w in caught]
    assert refs["fit_warned"] == ["FitFailedWarning"]
    assert refs["three_classes_warned"].count("UserWarning") == 3
    for got in run_function(_cv_failures_body, mpi_ranks, X, y, folds, X3, y3):
        for key in ("fit", "one_class", "three_classes"):
            ref = {k: v for k, v in refs[key].items() if k.startswith("test_")}
            assert sorted(got[key]) == sorted(ref)
            for name, values in ref.items():
                np.testing.assert_allclose(
                    got[key][name], values, atol=1e-6, err_msg=key + name
                )
        for key in ("fit", "one_class"):
            assert got[key + "_fit_errors"][1:] == [None, None]
            assert "2 classes" in got[key + "_fit_errors"][0]
            warned = got[key + "_warned"]
            assert [m for c, m in warned if c == "FitFailedWarning"][0].startswith(
                "\n1 fits failed out of a total of 3"
            )
        assert got["three_classes_fit_errors"] == [None, None, None]
        failed = [m for c, m in got["three_classes_warned"] if "Scoring failed" in m]
        assert len(failed) == 3 and all("binary" in m for m in failed)
        assert "2 classes" in got["raised"]
        assert got["all_failed"].startswith("ValueError: \nAll the 3 fits failed")


def test_fit_failures_equal_up_to_a_set_order_are_one_block():
    from sklearn.exceptions import FitFailedWarning

    from mpitrain.model_selection._split import warn_fit_failures

    # Two ranks' processes order the same set differently (their hash seeds).
    first = "ValueError: must be among {'relu', 'tanh'}"
    second = "ValueError: must be among {'tanh', 'relu'}"
    with pytest.warns(FitFailedWarning) as caught:
        warn_fit_failures([first, second], 4, np.nan)
    text = str(caught[0].message)
    assert "2 fits failed out of a total of 4" in text
    assert text.count("fits failed with the following error") == 1
    assert "2 fits failed with the following error:\n" + first in text
