"""Global preprocessing: gold tests against scikit-learn on all rows, and pipeline checks."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from conftest import regression_problem
from sklearn import linear_model
from sklearn import preprocessing as skp
from sklearn.compose import ColumnTransformer
from sklearn.decomposition import PCA
from sklearn.impute import SimpleImputer
from sklearn.pipeline import make_pipeline as sk_make_pipeline

from mpitrain.data import row_range
from mpitrain.testing import run_function

RTOL = 1e-8
ATTRIBUTES = ("mean_", "var_", "scale_", "n_samples_seen_")


def _problem(case: str):
    """(X, sample_weight, scaler parameters) of one named case; the same on every rank."""
    rng = np.random.default_rng(sum(map(ord, case)))  # stable across processes
    n, d = 157, 4
    X = rng.normal(size=(n, d))
    w = None
    params: dict = {}
    if case == "large_mean":
        X += 1e6  # unit spread around 1e6: E[x²] - E[x]² would lose every digit
        X[:, 2] = 1e6 + 0.25  # a constant column gets scale 1
    elif case == "weighted":
        X = X * [1, 10, 0.1, 3] + 1e4
        w = rng.uniform(0, 3, size=n)
        w[:10] = 0.0
    elif case == "nan":
        X[rng.random((n, d)) < 0.1] = np.nan
        X[:, 3] = np.nan
        X[::7, 3] = 2.0  # a column with few values, NaN on whole ranks
    elif case == "nan_weighted":
        X[rng.random((n, d)) < 0.1] = np.nan
        w = rng.uniform(0.5, 2, size=n)
    elif case == "no_mean":
        X += 5.0
        params = {"with_mean": False}
    elif case == "no_std":
        X += 5.0
        params = {"with_std": False}
    elif case == "neither_weighted":
        X[rng.random((n, d)) < 0.1] = np.nan
        w = rng.uniform(0.5, 2, size=n)
        params = {"with_mean": False, "with_std": False}
    elif case == "float32":
        X = (X + 100.0).astype(np.float32)
        w = rng.uniform(0.5, 2, size=n)
    else:
        raise AssertionError(case)
    return X, w, params


CASES = [
    "large_mean",
    "weighted",
    "nan",
    "nan_weighted",
    "no_mean",
    "no_std",
    "neither_weighted",
    "float32",
]
# Which rank (if any) holds no rows: rank 0 is also the root of the reductions.
LAYOUTS = ["balanced", "first_empty", "last_empty"]


def _my_rows(n: int, comm, layout: str) -> slice:
    size, rank = comm.Get_size(), comm.Get_rank()
    if layout == "balanced" or size == 1:
        return slice(*row_range(n, size, rank))
    empty = 0 if layout == "first_empty" else size - 1
    if rank == empty:
        return slice(0, 0)
    others = [r for r in range(size) if r != empty]
    return slice(*row_range(n, size - 1, others.index(rank)))


def _gold_body(comm):
    """All scaler cases, the pipeline, and an agreed error: one MPI launch per rank count."""
    from mpitrain.errors import DistributedValueError
    from mpitrain.linear_model import Ridge
    from mpitrain.preprocessing import StandardScaler, make_pipeline

    warnings.simplefilter("ignore", RuntimeWarning)
    scalers = {}
    for case in CASES:
        X, w, params = _problem(case)
        for layout in LAYOUTS:
            rows = _my_rows(len(X), comm, layout)
            scaler = StandardScaler(comm=comm, **params).fit(
                X[rows], sample_weight=None if w is None else w[rows]
            )
            scalers[case, layout] = scaler.estimator_

    X, y = regression_problem(n=131, d=5, offset=1e3)
    w = np.random.default_rng(1).uniform(0.5, 2, size=131)
    pipelines = {}
    for layout in LAYOUTS:
        rows = _my_rows(len(X), comm, layout)
        pipe = make_pipeline(StandardScaler(), Ridge(alpha=2.0), comm=comm)
        pipe.fit(
            X[rows],
            y[rows],
            standardscaler__sample_weight=w[rows],
            ridge__sample_weight=w[rows],
        )
        fitted = [step.estimator_ for _, step in pipe.steps]
        # fit_transform of the scaler step must equal its transform: both local after a global fit.
        transformed = pipe[0].fit_transform(X[rows], sample_weight=w[rows])
        pipelines[layout] = (fitted, pipe.predict(X[:7]), transformed, rows)

    # Infinity on the last rank only: every rank raises the same agreed error.
    Xbad = np.ones((20, 3))
    if comm.Get_rank() == comm.Get_size() - 1:
        Xbad[-1, 1] = np.inf
    try:
        StandardScaler(comm=comm).fit(Xbad)
        message = None
    except DistributedValueError as exc:
        message = str(exc)
    return scalers, pipelines, message


def _assert_same_scaler(mine, ref, what):
    for name in ATTRIBUTES:
        a, b = getattr(mine, name), getattr(ref, name)
        if b is None:
            assert a is None, (what, name)
            continue
        assert (
            type(a) is type(b)
            and np.shape(a) == np.shape(b)
            and np.asarray(a).dtype == np.asarray(b).dtype
        ), (what, name, a, b)
        # var_ of a constant column is rounding noise (scikit-learn's may be -1e-47): compare to the largest.
        atol = RTOL * np.nanmax(np.abs(b)) if name == "var_" else 0.0
        np.testing.assert_allclose(
            a, b, rtol=RTOL, atol=atol, equal_nan=True, err_msg=f"{what} {name}"
        )


@pytest.mark.mpi(ranks=[1, 2, 3, 4])
def test_gold_equal_to_sklearn_on_all_rows(mpi_ranks):
    per_rank = run_function(_gold_body, mpi_ranks)
    scalers, pipelines, message = per_rank[0]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for case in CASES:
            X, w, params = _problem(case)
            ref = skp.StandardScaler(**params).fit(X, sample_weight=w)
            for layout in LAYOUTS:
                mine = scalers[case, layout]
                assert (
                    type(mine) is skp.StandardScaler
                    and mine.get_params() == ref.get_params()
                )
                _assert_same_scaler(mine, ref, f"{case}/{layout}")
                np.testing.assert_allclose(
                    mine.transform(X),
                    ref.transform(X),
                    rtol=1e-7,
                    atol=1e-7,
                    equal_nan=True,
                )
    large = scalers["large_mean", "balanced"]
    assert large.scale_[2] == 1.0 and (np.abs(large.var_[[0, 1, 3]] - 1) < 0.3).all()

    X, y = regression_problem(n=131, d=5, offset=1e3)
    w = np.random.default_rng(1).uniform(0.5, 2, size=131)
    ref = sk_make_pipeline(skp.StandardScaler(), linear_model.Ridge(alpha=2.0))
    ref.fit(X, y, standardscaler__sample_weight=w, ridge__sample_weight=w)
    for layout, ((scaler, ridge), predicted, transformed, rows) in pipelines.items():
        _assert_same_scaler(scaler, ref[0], f"pipeline/{layout}")
        np.testing.assert_allclose(
            ridge.coef_, ref[1].coef_, rtol=RTOL, atol=RTOL * np.abs(ref[1].coef_).max()
        )
        np.testing.assert_allclose(ridge.intercept_, ref[1].intercept_, rtol=RTOL)
        np.testing.assert_allclose(predicted, ref.predict(X[:7]), rtol=RTOL)
        if rows.stop > rows.start:
            np.testing.assert_allclose(
                transformed, ref[0].transform(X[rows]), rtol=1e-10, atol=1e-10
            )
        else:  # rank 0 held no rows: it still passes (0, n_features) along the pipeline
            assert transformed.shape == (0, X.shape[1])

    # Every rank holds the bit-identical scaler.
    for other in per_rank[1:]:
        for key, mine in other[0].items():
            for name in ATTRIBUTES:
                a, b = getattr(mine, name), getattr(scalers[key], name)
                assert (a is None and b is None) or np.array_equal(
                    a, b, equal_nan=True
                ), (key, name)

    messages = {m for _, _, m in per_rank}
    assert len(messages) == 1 and message is not None and "inf" in message
    if mpi_ranks > 1:
        assert f"rank {mpi_ranks - 1} (of {mpi_ranks})" in message


def _no_rows_body(comm):
    from mpitrain.preprocessing import StandardScaler

    try:
        StandardScaler(comm=comm).fit(np.zeros((0, 3)))
    except ValueError as exc:
        return str(exc)
    return None


def _check_estimator_body(comm):
    from sklearn.utils.estimator_checks import check_estimator

    from mpitrain.preprocessing import StandardScaler

    for params in ({}, {"with_mean": False}):
        check_estimator(StandardScaler(**params))
    return True


def test_one_rank_checks():
    # Bundled into one launch each: scikit-learn's contract, and no rows anywhere.
    assert run_function(_check_estimator_body, 1, timeout=300) == [True]
    messages = run_function(_no_rows_body, 2)
    assert messages[0] == messages[1] and "no rows to fit" in messages[0]


# ------------------------------------------------------- pipeline checks (no MPI)


@pytest.mark.parametrize(
    "step, replacement",
    [
        (skp.StandardScaler(), "mpitrain.preprocessing.StandardScaler"),
        (skp.MinMaxScaler(), "no distributed MinMaxScaler"),
        (skp.RobustScaler(), "no distributed RobustScaler"),
        (skp.MaxAbsScaler(), "no distributed MaxAbsScaler"),
        (skp.SplineTransformer(), "no distributed SplineTransformer"),
        (skp.KBinsDiscretizer(), "no distributed KBinsDiscretizer"),
        (skp.QuantileTransformer(), "no distributed QuantileTransformer"),
        (skp.PowerTransformer(), "no distributed PowerTransformer"),
        (PCA(), "no distributed PCA"),
        (SimpleImputer(), "use mpitrain.preprocessing.SimpleImputer instead"),
    ],
)
def test_check_pipeline_refuses_data_dependent_sklearn_steps(step, replacement):
    from mpitrain.linear_model import Ridge
    from mpitrain.preprocessing import check_pipeline, make_pipeline

    name = type(step).__name__.lower()
    with pytest.raises(ValueError, match=f"step '{name}' .*{replacement}"):
        check_pipeline(sk_make_pipeline(step, Ridge()))
    with pytest.raises(ValueError, match=replacement):
        make_pipeline(step, Ridge())


def test_check_pipeline_accepts_row_local_and_mpitrain_steps():
    from mpitrain.linear_model import Ridge
    from mpitrain.preprocessing import (
        PolynomialFeatures,
        StandardScaler,
        check_pipeline,
        make_pipeline,
    )

    assert PolynomialFeatures is skp.PolynomialFeatures
    pipe = sk_make_pipeline(
        skp.PolynomialFeatures(2),
        skp.Normalizer(),
        skp.FunctionTransformer(np.log1p),
        StandardScaler(),
        "passthrough",
        Ridge(),
    )
    assert check_pipeline(pipe) is pipe
    assert (
        make_pipeline(PolynomialFeatures(2), StandardScaler(), Ridge()).steps[0][0]
        == "polynomialfeatures"
    )


def test_check_pipeline_searches_nested_steps_and_final_estimator():
    from mpitrain.linear_model import Ridge
    from mpitrain.preprocessing import StandardScaler, check_pipeline

    nested = ColumnTransformer(
        [
            ("num", sk_make_pipeline(SimpleImputer(), StandardScaler()), [0, 1]),
            ("poly", skp.PolynomialFeatures(), [2]),
        ]
    )
    with pytest.raises(ValueError, match="step 'columntransformer/num/simpleimputer'"):
        check_pipeline(sk_make_pipeline(nested, Ridge()))
    # A scikit-learn final estimator would be fitted on one rank's rows too.
    with pytest.raises(
        ValueError, match="step 'ridge' .*use mpitrain.linear_model.Ridge"
    ):
        check_pipeline(sk_make_pipeline(StandardScaler(), linear_model.Ridge()))
    # A class the user vouches for is let through.
    check_pipeline(
        sk_make_pipeline(skp.MaxAbsScaler(), Ridge()), allow=[skp.MaxAbsScaler]
    )


def test_make_pipeline_passes_comm_to_mpitrain_steps():
    from mpitrain.linear_model import Ridge
    from mpitrain.preprocessing import StandardScaler, make_pipeline

    marker = object.__new__(type("FakeComm", (), {}))  # make_pipeline only stores it
    pipe = make_pipeline(
        skp.PolynomialFeatures(), StandardScaler(), Ridge(), comm=marker
    )
    assert pipe[1].comm is marker and pipe[2].comm is marker
    with pytest.raises(ValueError, match="already has a different comm"):
        make_pipeline(StandardScaler(comm=object()), Ridge(), comm=marker)


def test_pooled_moments_equal_numpy():
    from mpitrain.stats import ColumnStats

    rng = np.random.default_rng(3)
    X = rng.normal(size=(500, 3)) + 1e6
    w = rng.uniform(0, 2, size=500)
    parts = [
        ColumnStats.of_rows(X[a:b], w[a:b], chunk_bytes=64)
        for a, b in [(0, 0), (0, 7), (7, 300), (300, 500)]
    ]
    pooled = ColumnStats.combine(parts)
    mean = np.average(X, axis=0, weights=w)
    np.testing.assert_allclose(pooled.mean, mean, rtol=1e-14)
    exact_m2 = (w[:, None] * (X - mean) ** 2).sum(axis=0)
    np.testing.assert_allclose(pooled.m2, exact_m2, rtol=1e-9)
