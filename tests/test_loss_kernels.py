"""The fused loss and gradient kernels of the exact linear classifiers.

``binomial_loss_gradient``, ``multinomial_loss_gradient`` and
``squared_hinge_loss_gradient`` read dense rows in blocks, once per call
(mpitrain.linear_model._classifiers).  Here they are compared with the
plain formulas written out below in numpy and scipy on all rows at once,
over many blocks with an uneven last one, at scores as large as ±800
(where a naive ``exp`` overflows), for float32, Fortran-ordered and sparse
rows; and the whole fit against scikit-learn on rows that span several
blocks per rank.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.special import expit, logsumexp

from mpitrain.linear_model import (
    _classifiers,
    binomial_loss_gradient,
    multinomial_loss_gradient,
    squared_hinge_loss_gradient,
)
from mpitrain.testing import run_function

RTOL = 1e-12


# ------------------------------------------------------------ plain formulas


def _with_intercept(X, fit_intercept, value=1.0):
    return np.column_stack([X, np.full(len(X), value)]) if fit_intercept else X


def reference_binomial(coef, X, y, s, fit_intercept):
    Xt = _with_intercept(np.asarray(X, dtype=np.float64), fit_intercept)
    z = Xt @ coef
    return float(s @ (np.logaddexp(0.0, z) - y * z)), Xt.T @ (s * (expit(z) - y))


def reference_multinomial(coef, X, y_index, s, fit_intercept):
    Xt = _with_intercept(np.asarray(X, dtype=np.float64), fit_intercept)
    Z = Xt @ coef.T
    rows = np.arange(len(Z))
    loss = float(s @ (logsumexp(Z, axis=1) - Z[rows, y_index]))
    P = np.exp(Z - logsumexp(Z, axis=1, keepdims=True))
    P[rows, y_index] -= 1.0
    return loss, (s[:, None] * P).T @ Xt


def reference_squared_hinge(coef, X, Y, cost, scaling):
    Xt = _with_intercept(
        np.asarray(X, dtype=np.float64), scaling is not None, scaling or 0.0
    )
    slack = np.maximum(0.0, 1.0 - Y * (Xt @ coef.T))
    return np.sum(cost * slack**2, axis=0), (-2.0 * cost * slack * Y).T @ Xt


def _assert_close(got, expected):
    (loss, grad), (ref_loss, ref_grad) = got, expected
    np.testing.assert_allclose(loss, ref_loss, rtol=RTOL, atol=0)
    # Gradient entries are sums of terms of both signs: relative to the largest.
    scale = max(np.max(np.abs(ref_grad), initial=0.0), 1.0)
    np.testing.assert_allclose(grad, ref_grad, rtol=0, atol=RTOL * scale)
    assert np.shape(grad) == np.shape(ref_grad)


# ---------------------------------------------------------------- the data


def _rows(n=1003, d=7, seed=0, extreme=True):
    """Rows whose scores reach about ±800 for the coefficients of _coef (some rows)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    if extreme:
        X[::50] *= 400.0 / np.abs(X[::50]).max(axis=1, keepdims=True)
    return X, rng.uniform(0.1, 3.0, n)


def _layouts(X):
    return {
        "C float64": X,
        "Fortran": np.asfortranarray(X),
        "float32": X.astype(np.float32),
        "strided": np.repeat(X, 2, axis=1)[:, ::2],
        "sparse": sp.csr_matrix(np.where(np.abs(X) > 0.5, X, 0.0)),
    }


@pytest.fixture(params=[64, None], ids=["small blocks", "default blocks"])
def block_bytes(request, monkeypatch):
    """Many blocks with an uneven last one (64 bytes: 512 rows), or the default."""
    if request.param is not None:
        monkeypatch.setattr(_classifiers, "_BLOCK_BYTES", request.param)
    return request.param


def _dense(X):
    return X.toarray() if sp.issparse(X) else X


# ----------------------------------------------------------------- the sums


@pytest.mark.parametrize("fit_intercept", [True, False])
def test_binomial_equals_the_plain_formula(block_bytes, fit_intercept):
    X, s = _rows()
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, len(X)).astype(float)
    coef = np.full(X.shape[1] + fit_intercept, 0.5)
    assert np.abs(_with_intercept(X, fit_intercept) @ coef).max() > 700
    for name, Xl in _layouts(X).items():
        with np.errstate(over="raise", invalid="raise", divide="raise"):
            got = binomial_loss_gradient(coef, Xl, y, s, fit_intercept)
        expected = reference_binomial(coef, _dense(Xl), y, s, fit_intercept)
        assert np.isfinite(got[0]) and np.isfinite(got[1]).all(), name
        _assert_close(got, expected)


@pytest.mark.parametrize("n_classes", [3, 12])  # row dots, and one matrix product
@pytest.mark.parametrize("fit_intercept", [True, False])
def test_multinomial_equals_the_plain_formula(block_bytes, n_classes, fit_intercept):
    X, s = _rows(seed=2)
    rng = np.random.default_rng(3)
    y_index = rng.integers(0, n_classes, len(X))
    coef = rng.uniform(-1.0, 1.0, size=(n_classes, X.shape[1] + fit_intercept))
    assert np.abs(_with_intercept(X, fit_intercept) @ coef.T).max() > 700
    for name, Xl in _layouts(X).items():
        with np.errstate(over="raise", invalid="raise", divide="raise"):
            got = multinomial_loss_gradient(coef, Xl, y_index, s, fit_intercept)
        expected = reference_multinomial(coef, _dense(Xl), y_index, s, fit_intercept)
        assert np.isfinite(got[0]) and np.isfinite(got[1]).all(), name
        _assert_close(got, expected)


@pytest.mark.parametrize("n_problems", [1, 3, 12])
@pytest.mark.parametrize("scaling", [None, 1.0, 3.0])
def test_squared_hinge_equals_the_plain_formula(block_bytes, n_problems, scaling):
    X, s = _rows(seed=4, extreme=False)
    rng = np.random.default_rng(5)
    Y = np.where(rng.random((len(X), n_problems)) < 0.4, 1.0, -1.0)
    cost = s[:, None] * rng.uniform(0.5, 2.0, n_problems)
    coef = rng.normal(scale=0.3, size=(n_problems, X.shape[1] + (scaling is not None)))
    for Xl in _layouts(X).values():
        got = squared_hinge_loss_gradient(coef, Xl, Y, cost, scaling)
        expected = reference_squared_hinge(coef, _dense(Xl), Y, cost, scaling)
        np.testing.assert_allclose(got[0], expected[0], rtol=RTOL, atol=0)
        _assert_close((0.0, got[1]), (0.0, expected[1]))


def test_no_rows_contribute_exact_zeros():
    X = np.empty((0, 4))
    none = np.empty(0)
    loss, grad = binomial_loss_gradient(np.ones(5), X, none, none, True)
    assert loss == 0.0 and grad.shape == (5,) and not grad.any()
    loss, grad = multinomial_loss_gradient(np.ones((3, 5)), X, none.astype(int), none)
    assert loss == 0.0 and grad.shape == (3, 5) and not grad.any()
    losses, grad = squared_hinge_loss_gradient(
        np.ones((2, 4)), X, np.empty((0, 2)), np.empty((0, 2)), None
    )
    assert not losses.any() and grad.shape == (2, 4) and not grad.any()


# ---------------------------------------------------------- the whole fit


def _several_blocks_body(comm, X, y, y3):
    """Fits on rows that span several blocks per rank, and dense float32's memory."""
    import tracemalloc

    from mpitrain.data import row_range
    from mpitrain.linear_model import LinearSVC, LogisticRegression

    rows = slice(*row_range(len(X), comm.Get_size(), comm.Get_rank()))
    tight = {"tol": 1e-10, "max_iter": 2000}
    binary = LogisticRegression(comm=comm, C=0.1, **tight).fit(X[rows], y[rows])
    multi = LogisticRegression(comm=comm, **tight).fit(X[rows], y3[rows])
    svc = LinearSVC(comm=comm, tol=1e-8, max_iter=5000).fit(X[rows], y3[rows])
    # Dense float32 rows are converted block by block, never promoted whole
    # (blocks of 64 kB here, so that the rows are many times one block).
    from mpitrain.linear_model import _classifiers

    X32 = X[rows].astype(np.float32)
    block_bytes = _classifiers._BLOCK_BYTES
    _classifiers._BLOCK_BYTES = 64 << 10
    tracemalloc.start()
    try:
        single = LogisticRegression(comm=comm, C=0.1, **tight).fit(X32, y[rows])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        _classifiers._BLOCK_BYTES = block_bytes
    return (
        [(m.coef_, m.intercept_) for m in (binary, multi, svc, single)],
        peak,
        X32.nbytes,
    )


@functools.cache
def _several_blocks_problem():
    """The rows and scikit-learn's four fits on all of them, made once for every rank count."""
    from sklearn.datasets import make_classification
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import LinearSVC

    # 100 features: 2,621 rows a block, so 3-5 blocks on every rank.
    X, y = make_classification(
        n_samples=16000, n_features=100, n_informative=10, random_state=0
    )
    # Three classes from a noisy score: far from separable, so the optimum is well defined.
    score = X @ np.linspace(-0.2, 0.2, 100) + np.random.default_rng(0).normal(
        size=len(X)
    )
    y3 = np.digitize(score, [-0.5, 0.5])
    tight = {"tol": 1e-10, "max_iter": 2000}
    refs = [
        LogisticRegression(C=0.1, **tight).fit(X, y),
        LogisticRegression(**tight).fit(X, y3),
        LinearSVC(tol=1e-8, max_iter=5000).fit(X, y3),
        LogisticRegression(C=0.1, **tight).fit(X.astype(np.float32).astype(float), y),
    ]
    return X, y, y3, refs


@pytest.mark.mpi(ranks=[2, 3])
def test_fit_over_several_blocks_equals_sklearn(mpi_ranks):
    X, y, y3, refs = _several_blocks_problem()
    for fits, peak, x32_bytes in run_function(
        _several_blocks_body, mpi_ranks, X, y, y3
    ):
        for (coef, intercept), ref, tol in zip(fits, refs, (1e-6, 1e-6, 1e-4, 1e-6)):
            np.testing.assert_allclose(coef, ref.coef_, rtol=0, atol=tol)
            np.testing.assert_allclose(intercept, ref.intercept_, rtol=0, atol=tol)
        # A float64 copy of the rows alone would be twice their float32 bytes.
        assert peak < x32_bytes, (peak, x32_bytes)
