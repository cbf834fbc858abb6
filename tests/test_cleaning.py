"""Cleaning across ranks: gold tests against scikit-learn and numpy on all rows, at 1-4 ranks."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn import linear_model
from sklearn.impute import SimpleImputer as SkSimpleImputer
from sklearn.pipeline import make_pipeline as sk_make_pipeline

from mpitrain.data import row_range
from mpitrain.testing import run_function

STRATEGIES = ["mean", "median", "most_frequent", "constant"]
LAYOUTS = ["balanced", "first_empty", "last_empty"]
CLIPS = [(0.01, 0.99), (0.1, 0.5), (0.0, 1.0), (0.3, 0.3)]


def _my_rows(n: int, size: int, rank: int, layout: str) -> slice:
    """A rank's rows; in the *_empty layouts one rank holds none and the others split all rows."""
    if layout == "balanced" or size == 1:
        return slice(*row_range(n, size, rank))
    empty = 0 if layout == "first_empty" else size - 1
    if rank == empty:
        return slice(0, 0)
    others = [r for r in range(size) if r != empty]
    return slice(*row_range(n, size - 1, others.index(rank)))


def _data(dtype=np.float64):
    """Rounded values (ties for most_frequent), NaN everywhere, a column missing on whole ranks, an empty column."""
    rng = np.random.default_rng(21)
    n = 131
    X = np.round(rng.normal(size=(n, 6)) * [1, 1, 10, 1, 1, 1] + [0, -3, 0, 5, 0, 0], 1)
    X[rng.random(X.shape) < 0.15] = np.nan
    X[:50, 4] = np.nan  # entirely missing on the first rank(s)
    X[:, 5] = np.nan  # missing on every rank: dropped, or kept as 0
    X[[7, 8], 1] = [-0.0, 0.0]
    return X.astype(dtype)


def _int_data():
    """Integers with -1 as the missing marker."""
    rng = np.random.default_rng(4)
    X = rng.integers(0, 6, size=(90, 3))
    X[rng.random(X.shape) < 0.2] = -1
    return X


def _cases():
    """(name, data, SimpleImputer parameters, layouts): the same on every rank.

    Each case runs on balanced slices and on slices with an empty rank (the
    first or the last, alternately), which keeps the launch short.
    """
    cases = []
    for strategy in STRATEGIES:
        for keep in (False, True):
            cases.append(
                (
                    f"{strategy}/keep={keep}",
                    "float64",
                    {"strategy": strategy, "keep_empty_features": keep},
                )
            )
    cases.append(
        ("mean/indicator", "float64", {"strategy": "mean", "add_indicator": True})
    )
    cases.append(
        (
            "most_frequent/keep/indicator",
            "float64",
            {
                "strategy": "most_frequent",
                "keep_empty_features": True,
                "add_indicator": True,
            },
        )
    )
    cases.append(
        ("constant/fill", "float64", {"strategy": "constant", "fill_value": -9.5})
    )
    for strategy in ("mean", "median"):
        cases.append((f"{strategy}/float32", "float32", {"strategy": strategy}))
    for strategy in ("median", "most_frequent", "constant"):
        cases.append(
            (f"{strategy}/int-1", "int", {"strategy": strategy, "missing_values": -1})
        )
    return [
        (name, kind, params, ("balanced", LAYOUTS[1 + i % 2]))
        for i, (name, kind, params) in enumerate(cases)
    ]


def _data_for(kind: str):
    return _int_data() if kind == "int" else _data(np.dtype(kind))


def _gold_body(comm):
    from mpitrain.linear_model import Ridge
    from mpitrain.preprocessing import (
        QuantileClipper,
        SimpleImputer,
        drop_missing,
        make_pipeline,
    )

    warnings.simplefilter(
        "ignore", UserWarning
    )  # "Skipping features without any observed values"
    size, rank = comm.Get_size(), comm.Get_rank()
    imputers = {}
    for name, kind, params, layouts in _cases():
        X = _data_for(kind)
        for layout in layouts:
            rows = _my_rows(len(X), size, rank, layout)
            imputer = SimpleImputer(comm=comm, **params)
            local = imputer.fit_transform(X[rows])
            imputers[name, layout] = (imputer.estimator_, imputer.statistics_, local)

    X = _data()
    clippers = {}
    for i, (lower, upper) in enumerate(CLIPS):
        for layout in ("balanced", LAYOUTS[1 + i % 2]):
            rows = _my_rows(len(X), size, rank, layout)
            clipper = QuantileClipper(lower, upper, comm=comm).fit(X[rows])
            clippers[lower, upper, layout] = (
                clipper.estimator_,
                clipper.lower_bounds_,
                clipper.upper_bounds_,
                clipper.transform(X[rows]),
                clipper.n_rows_,
            )

    X = _data()
    X[[3, 60, 100], 2] = [np.inf, -np.inf, np.inf]
    X = X[:, :5]  # no all-NaN column: some rows survive
    y = np.arange(len(X), dtype=np.float64)
    y[[10, 61]] = np.nan
    labels = np.array(["a", None, "b"] * 50, dtype=object)[: len(X)]
    w = np.linspace(1, 2, len(X))
    dropped = {}
    for layout in LAYOUTS:
        rows = _my_rows(len(X), size, rank, layout)
        dropped[layout, "y"] = drop_missing(
            X[rows], y[rows], w[rows], comm=comm, return_kept=True
        )
        dropped[layout, "labels"] = drop_missing(X[rows], labels[rows], comm=comm)

    # A pipeline: the global median fills the gaps, then the exact ridge fit.
    X = _data()[:, :5]
    target = np.nan_to_num(X[:, 0]) * 2 + np.nan_to_num(X[:, 3]) + 1.0
    rows = _my_rows(len(X), size, rank, "first_empty")
    pipe = make_pipeline(
        SimpleImputer(strategy="median"), Ridge(alpha=1.0), comm=comm
    ).fit(X[rows], target[rows])
    pipeline = (pipe[0].estimator_, pipe[1].estimator_, pipe.predict(X[:9]))

    # Infinity on the last rank only, and ranks that disagree on the columns: the same error everywhere.
    errors = []
    bad = _data()[rows]
    if rank == size - 1 and len(bad):
        bad[0, 0] = np.inf
    for args in ((bad,), (_data()[:, : 3 + rank % 2],)):
        try:
            SimpleImputer(comm=comm).fit(*args)
            errors.append(None)
        except ValueError as exc:
            errors.append((type(exc).__name__, str(exc)))
    return imputers, clippers, dropped, pipeline, errors


def _same_statistics(mine, ref):
    return np.array_equal(
        np.asarray(mine, dtype=np.float64),
        np.asarray(ref, dtype=np.float64),
        equal_nan=True,
    )


@pytest.mark.mpi(ranks=[1, 2, 3, 4])
def test_gold_equal_to_sklearn_and_numpy_on_all_rows(mpi_ranks):
    per_rank = run_function(_gold_body, mpi_ranks)
    imputers, clippers, dropped, pipeline, errors = per_rank[0]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for name, kind, params, layouts in _cases():
            X = _data_for(kind)
            ref = SkSimpleImputer(**params).fit(X)
            expected = ref.transform(X)
            for layout in layouts:
                fitted, statistics, _ = imputers[name, layout]
                what = f"{name}/{layout}"
                assert type(fitted) is SkSimpleImputer and repr(
                    fitted.get_params()
                ) == repr(ref.get_params()), what
                assert statistics.dtype == ref.statistics_.dtype, what
                if params["strategy"] == "mean":
                    rtol = 1e-6 if kind == "float32" else 1e-13
                    np.testing.assert_allclose(
                        statistics.astype(float),
                        ref.statistics_.astype(float),
                        rtol=rtol,
                        equal_nan=True,
                        err_msg=what,
                    )
                else:  # median, most frequent and constant are exact
                    assert _same_statistics(statistics, ref.statistics_), (
                        what,
                        statistics,
                        ref.statistics_,
                    )
                got = fitted.transform(X)
                assert got.dtype == expected.dtype and got.shape == expected.shape, what
                np.testing.assert_allclose(
                    got,
                    expected,
                    rtol=1e-6 if kind == "float32" else 1e-13,
                    err_msg=what,
                )
                if params.get("add_indicator"):
                    assert np.array_equal(
                        fitted.indicator_.features_, ref.indicator_.features_
                    ), what
                # Each rank imputed its own rows locally, a rank without rows included.
                for rank, outcome in enumerate(per_rank):
                    rows = _my_rows(len(X), mpi_ranks, rank, layout)
                    local = outcome[0][name, layout][2]
                    assert local.shape == (rows.stop - rows.start, expected.shape[1]), (
                        what
                    )
                    np.testing.assert_allclose(
                        local, expected[rows], rtol=1e-6 if kind == "float32" else 1e-13
                    )
                    # Every rank holds the bit-identical statistics.
                    assert _same_statistics(outcome[0][name, layout][1], statistics), (
                        what
                    )

    X = _data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the all-NaN column
        for (lower, upper, layout), (
            plain,
            lower_bounds,
            upper_bounds,
            _,
            n_rows,
        ) in clippers.items():
            reference = np.nanquantile(X, [lower, upper], axis=0)
            assert np.array_equal(lower_bounds, reference[0], equal_nan=True), (
                lower,
                layout,
            )
            assert np.array_equal(upper_bounds, reference[1], equal_nan=True), (
                upper,
                layout,
            )
            assert n_rows == len(X)
            # The plain fitted transformer came back pickled and clips here, without MPI or mpitrain.
            lo = np.nan_to_num(reference[0], nan=-np.inf)
            hi = np.nan_to_num(reference[1], nan=np.inf)
            assert type(plain).__module__.startswith("sklearn.")
            assert np.array_equal(
                plain.transform(X), np.clip(X, lo, hi), equal_nan=True
            )
            for rank, outcome in enumerate(per_rank):
                rows = _my_rows(len(X), mpi_ranks, rank, layout)
                assert np.array_equal(
                    outcome[1][lower, upper, layout][3],
                    np.clip(X[rows], lo, hi),
                    equal_nan=True,
                )
                assert np.array_equal(
                    outcome[1][lower, upper, layout][1], lower_bounds, equal_nan=True
                )

    X = _data()
    X[[3, 60, 100], 2] = [np.inf, -np.inf, np.inf]
    X = X[:, :5]
    y = np.arange(len(X), dtype=np.float64)
    y[[10, 61]] = np.nan
    labels = np.array(["a", None, "b"] * 50, dtype=object)[: len(X)]
    w = np.linspace(1, 2, len(X))
    for target_kind, target in (("y", y), ("labels", labels)):
        missing_target = (
            np.isnan(y) if target_kind == "y" else np.array([v is None for v in labels])
        )
        mask = ~np.isfinite(X).all(axis=1) | missing_target
        for layout in LAYOUTS:
            record = dropped[layout, target_kind][3]
            slices = [_my_rows(len(X), mpi_ranks, r, layout) for r in range(mpi_ranks)]
            assert record.per_rank == tuple(int(mask[s].sum()) for s in slices)
            assert record.rows_per_rank == tuple(s.stop - s.start for s in slices)
            assert (
                record.total == mask.sum()
                and record.kept == (~mask).sum()
                and record.n_rows == len(X)
            )
            assert record.missing_by_column == tuple(
                (~np.isfinite(X)).sum(axis=0).tolist()
            )
            assert record.missing_target == missing_target.sum()
            assert record.to_dict()["per_rank"] == list(
                record.per_rank
            ) and "dropped" in str(record)
            for outcome, rows in zip(per_rank, slices):
                Xk, yk, wk, mine, *kept = outcome[2][layout, target_kind]
                keep = ~mask[rows]
                assert len(kept) == (
                    1 if target_kind == "y" else 0
                )  # return_kept=True for y only
                assert all(np.array_equal(k, keep) for k in kept)
                assert mine == record  # identical on every rank
                assert np.array_equal(Xk, X[rows][keep]) and np.array_equal(
                    yk, target[rows][keep]
                )
                if target_kind == "y":
                    assert np.array_equal(wk, w[rows][keep])
                else:
                    assert wk is None

    ref = sk_make_pipeline(
        SkSimpleImputer(strategy="median"), linear_model.Ridge(alpha=1.0)
    )
    Xp = _data()[:, :5]
    ref.fit(Xp, np.nan_to_num(Xp[:, 0]) * 2 + np.nan_to_num(Xp[:, 3]) + 1.0)
    imputer, ridge, predicted = pipeline
    assert _same_statistics(imputer.statistics_, ref[0].statistics_)
    np.testing.assert_allclose(ridge.coef_, ref[1].coef_, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(predicted, ref.predict(Xp[:9]), rtol=1e-8)

    assert all(outcome[4] == errors for outcome in per_rank)
    inf_error, column_error = errors
    assert inf_error[0] == "DistributedValueError" and "infinity" in inf_error[1]
    if mpi_ranks > 1:
        assert f"rank {mpi_ranks - 1} (of {mpi_ranks})" in inf_error[1]
        assert (
            column_error[0] == "ValueError"
            and "different numbers of features" in column_error[1]
        )
    else:
        assert column_error is None  # one rank cannot disagree with itself


def _estimator_checks_body(comm):
    from sklearn.utils.estimator_checks import check_estimator

    from mpitrain.preprocessing import QuantileClipper, SimpleImputer

    # check_estimator raises on the first failed check.
    for estimator in (
        SimpleImputer(),
        SimpleImputer(strategy="median"),
        SimpleImputer(strategy="most_frequent"),
        SimpleImputer(strategy="constant", add_indicator=True),
        QuantileClipper(),
    ):
        check_estimator(estimator)
    return True


def _no_rows_body(comm):
    from mpitrain.preprocessing import QuantileClipper, SimpleImputer

    messages = []
    for estimator in (SimpleImputer(comm=comm), QuantileClipper(comm=comm)):
        try:
            estimator.fit(np.zeros((0, 3)))
            messages.append(None)
        except ValueError as exc:
            messages.append(str(exc))
    return messages


def test_one_rank_estimator_checks_and_no_rows():
    # scikit-learn's contract for both transformers, one launch; then no rows on any rank.
    assert run_function(_estimator_checks_body, 1, timeout=300) == [True]
    messages = run_function(_no_rows_body, 2)
    assert messages[0] == messages[1] and all(
        "no rows to fit" in m for m in messages[0]
    )


# ---------------------------------------------------------------- local pieces (no MPI)


def test_missing_row_mask():
    from mpitrain.preprocessing import missing_row_mask

    X = np.array([[1.0, 2.0], [np.nan, 0.0], [np.inf, 1.0], [0.0, -np.inf], [3.0, 4.0]])
    assert missing_row_mask(X).tolist() == [False, True, True, True, False]
    y = np.array([1.0, 2.0, 3.0, 4.0, np.nan])
    assert missing_row_mask(X, y).tolist() == [False, True, True, True, True]
    labels = np.array(["a", "b", None, "c", "d"], dtype=object)
    assert missing_row_mask(X[[0, 4, 0, 4, 0]], labels).tolist() == [
        False,
        False,
        True,
        False,
        False,
    ]
    assert missing_row_mask(np.arange(6).reshape(3, 2)).tolist() == [False] * 3
    assert missing_row_mask(np.zeros((0, 3)), np.zeros(0)).shape == (0,)
    with pytest.raises(ValueError, match="2-D"):
        missing_row_mask(np.zeros(3))
    with pytest.raises(ValueError, match="rows"):
        missing_row_mask(X, y[:3])


def _crossed_bounds_body(comm):
    from mpitrain.preprocessing import QuantileClipper

    try:
        QuantileClipper(0.9, 0.1, comm=comm).fit(np.zeros((3, 2)))
    except ValueError as exc:
        return str(exc)
    return None


@pytest.mark.mpi(ranks=[2])
def test_quantile_clipper_refuses_crossed_bounds(mpi_ranks):
    # Checked on every rank before any row is looked at, and agreed.
    for message in run_function(_crossed_bounds_body, mpi_ranks):
        assert message is not None and "must not be above" in message, message


@pytest.mark.mpi(ranks=[2])
def test_train_imputes_around_an_all_missing_column(tmp_path, mpi_ranks):
    """scikit-learn drops a column with no observed value; the test rows are scored alike."""
    import json

    import h5py
    from cli_in_job import cli_in_job

    from mpitrain.model_selection import global_test_mask

    rng = np.random.default_rng(3)
    X = rng.normal(size=(240, 3))
    X[:, 1] = np.nan
    X[rng.random(240) < 0.1, 2] = np.nan
    y = 2.0 * X[:, 0] + rng.normal(scale=0.1, size=240)
    path, report = tmp_path / "d.h5", tmp_path / "r.json"
    with h5py.File(path, "w") as f:
        f["X"], f["y"] = X, y
    # The command's entry point in the shared job (tests/cli_in_job.py): train
    # --impute --test-size is launched for real in test_workflow.py.
    run = cli_in_job(
        mpi_ranks,
        [
            "train",
            str(path),
            "--model",
            "ridge",
            "--impute",
            "mean",
            "--test-size",
            "0.25",
            "--out",
            str(tmp_path / "m.skops"),
            "--report",
            str(report),
            "--quiet",
        ],
    )
    assert run.returncode == 0, run.stderr
    test = global_test_mask(240, test_size=0.25, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the all-missing column
        ref = sk_make_pipeline(SkSimpleImputer(), linear_model.Ridge()).fit(
            X[~test], y[~test]
        )
        expected = ref.score(X[test], y[test])
    assert json.loads(report.read_text())["test_scores"]["r2"] == pytest.approx(
        expected, rel=1e-9
    )
