"""The warm-started dual solver (mpitrain.svm._smo) against libsvm through scikit-learn.

libsvm without shrinking runs the same algorithm step for step (working-set
selection, update, ρ), so from α = 0 both take the same iterations and
reach the same coefficients up to float rounding.  From a warm start the
solver takes another path to the same optimum: compared with tight
``tol`` on both sides, decision values agree to about ``tol`` times their
scale.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import svm
from sklearn.datasets import make_classification, make_regression
from sklearn.metrics import pairwise

from mpitrain.data import row_range
from mpitrain.svm._smo import (
    KernelSpec,
    KernelStore,
    kernel_matrix,
    svc_duals,
    svr_duals,
)
from mpitrain.testing import run_function

pytest.importorskip("numba")

KERNELS = [
    {"kernel": "rbf", "gamma": 0.1},
    {"kernel": "linear"},
    {"kernel": "poly", "gamma": 0.2, "coef0": 0.5, "degree": 3},
    {"kernel": "sigmoid", "gamma": 0.01, "coef0": -0.5},
]


def _spec(params):
    return KernelSpec(
        params["kernel"],
        params.get("gamma", 1.0),
        params.get("coef0", 0.0),
        params.get("degree", 3),
    )


def _classification(n=400, classes=3, seed=0):
    X, y = make_classification(
        n_samples=n,
        n_features=6,
        n_informative=4,
        n_redundant=0,
        n_classes=classes,
        random_state=seed,
    )
    rng = np.random.default_rng(seed)
    weight = rng.uniform(0.5, 2.0, n)
    weight[rng.choice(n, 20, replace=False)] = 0.0  # libsvm drops these rows
    return X, y, weight


def _libsvm_duals(model, n_rows, weight=None):
    # scikit-learn's support_ indexes the rows of positive weight (libsvm drops the others).
    kept = np.arange(n_rows) if weight is None else np.flatnonzero(weight > 0)
    duals = np.zeros((n_rows, model._dual_coef_.shape[0]))
    duals[kept[model.support_]] = model._dual_coef_.T
    return duals


@pytest.mark.parametrize("params", KERNELS, ids=lambda p: p["kernel"])
@pytest.mark.parametrize("cache_bytes", [1e9, 3e4], ids=["matrix", "row-cache"])
@pytest.mark.parametrize("shrinking", [False, True], ids=["plain", "shrinking"])
def test_svc_from_zero_is_libsvm_step_for_step(params, cache_bytes, shrinking):
    X, y, weight = _classification()
    C, class_weight = 2.0, {0: 1.0, 1: 3.0, 2: 0.5}
    ref = svm.SVC(
        C=C, class_weight=class_weight, shrinking=shrinking, tol=1e-3, **params
    )
    ref.fit(X, y, sample_weight=weight)
    bounds = C * np.array([class_weight[c] for c in y]) * weight
    # A cache of 3e4 bytes holds 18 of 380 kernel rows: evictions on every pair.
    duals, intercept, n_iter, converged, _ = svc_duals(
        X,
        y,
        bounds,
        3,
        _spec(params),
        None,
        tol=1e-3,
        max_iter=-1,
        cache_bytes=cache_bytes,
        shrinking=shrinking,
    )
    assert converged
    np.testing.assert_array_equal(n_iter, ref.n_iter_)
    np.testing.assert_allclose(
        duals, _libsvm_duals(ref, len(X), weight), rtol=0, atol=1e-8 * C
    )
    np.testing.assert_allclose(intercept, ref._intercept_, rtol=0, atol=1e-8)
    # Pairs solved on two threads at once: the same numbers.
    threaded = svc_duals(
        X,
        y,
        bounds,
        3,
        _spec(params),
        None,
        tol=1e-3,
        max_iter=-1,
        cache_bytes=cache_bytes,
        threads=2,
        shrinking=shrinking,
    )
    np.testing.assert_array_equal(threaded[0], duals)
    np.testing.assert_array_equal(threaded[2], n_iter)


@pytest.mark.parametrize("params", KERNELS[:3], ids=lambda p: p["kernel"])
@pytest.mark.parametrize("shrinking", [False, True], ids=["plain", "shrinking"])
def test_svr_from_zero_is_libsvm_step_for_step(params, shrinking):
    X, y = make_regression(n_samples=300, n_features=5, noise=3.0, random_state=2)
    y = y / y.std()
    weight = np.random.default_rng(2).uniform(0.5, 2.0, len(X))
    weight[:7] = 0.0
    C, epsilon = 1.5, 0.1
    ref = svm.SVR(C=C, epsilon=epsilon, shrinking=shrinking, tol=1e-3, **params)
    ref.fit(X, y, sample_weight=weight)
    beta, intercept, n_iter, converged, _ = svr_duals(
        X,
        y,
        C * weight,
        epsilon,
        _spec(params),
        None,
        tol=1e-3,
        max_iter=-1,
        cache_bytes=1e9,
        shrinking=shrinking,
    )
    assert converged and n_iter == ref.n_iter_
    want = np.zeros(len(X))
    want[np.flatnonzero(weight > 0)[ref.support_]] = ref.dual_coef_[0]
    np.testing.assert_allclose(beta, want, rtol=0, atol=1e-8 * C)
    assert intercept == pytest.approx(ref.intercept_[0], abs=1e-8)


def _decision(spec, X_fit, duals, intercept, X):
    return kernel_matrix_between(spec, X, X_fit) @ duals + intercept


def kernel_matrix_between(spec, A, B):
    kw = {"gamma": spec.gamma}
    if spec.kernel == "linear":
        return pairwise.linear_kernel(A, B)
    if spec.kernel == "rbf":
        return pairwise.rbf_kernel(A, B, **kw)
    if spec.kernel == "poly":
        return pairwise.polynomial_kernel(
            A, B, degree=spec.degree, coef0=spec.coef0, **kw
        )
    return pairwise.sigmoid_kernel(A, B, coef0=spec.coef0, **kw)


@pytest.mark.parametrize("params", KERNELS[:3], ids=lambda p: p["kernel"])
def test_warm_start_from_two_halves_reaches_libsvms_optimum(params):
    """The cascade's merge: each half's solution, joined, is the start."""
    X, y, weight = _classification(n=500, classes=2, seed=4)
    C, tol = 1.0, 1e-6
    bounds = C * weight
    halves = [np.arange(0, 250), np.arange(250, 500)]
    warm = np.zeros((len(X), 1))
    for half in halves:
        part = svm.SVC(C=C, tol=tol, **params).fit(
            X[half], y[half], sample_weight=weight[half]
        )
        warm[half[weight[half] > 0][part.support_]] = part._dual_coef_.T
    ref = svm.SVC(C=C, tol=tol, **params).fit(X, y, sample_weight=weight)
    duals, intercept, n_iter, converged, objective = svc_duals(
        X, y, bounds, 2, _spec(params), warm, tol=tol, max_iter=-1, cache_bytes=1e9
    )
    assert converged and n_iter[0] > 0
    spec = _spec(params)
    # The objective the cascade reports, against numpy's ½βᵀKβ − Σ|β| (float64 kernel).
    beta = duals[:, 0]
    K = kernel_matrix_between(spec, X, X)
    assert objective == pytest.approx(
        0.5 * beta @ K @ beta - np.abs(beta).sum(), rel=1e-5
    )
    Xt = make_classification(n_samples=200, n_features=6, random_state=9)[0]
    got = _decision(spec, X, duals[:, 0], intercept[0], Xt)
    want = _decision(
        spec, X, _libsvm_duals(ref, len(X), weight)[:, 0], ref._intercept_[0], Xt
    )
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max())
    # The same support vectors, but for rows whose coefficient is at the tolerance.
    mine = np.abs(duals[:, 0]) > 0
    theirs = np.zeros(len(X), dtype=bool)
    theirs[np.flatnonzero(weight > 0)[ref.support_]] = True
    differ = np.flatnonzero(mine != theirs)
    assert np.all(np.abs(duals[differ, 0]) < 1e-3 * C), differ
    # Warm from libsvm's own optimum: already optimal, no iteration.
    _, again, n_again, _, _ = svc_duals(
        X,
        y,
        bounds,
        2,
        spec,
        _libsvm_duals(ref, len(X), weight),
        tol=tol,
        max_iter=-1,
        cache_bytes=1e9,
    )
    assert n_again[0] == 0
    assert again[0] == pytest.approx(ref._intercept_[0], abs=1e-6)


def test_svr_warm_start_reaches_libsvms_optimum():
    X, y = make_regression(n_samples=400, n_features=5, noise=3.0, random_state=5)
    y = y / y.std()
    spec, C, epsilon, tol = KernelSpec("rbf", 0.2), 2.0, 0.1, 1e-6
    warm = np.zeros(len(X))
    for half in (np.arange(200), np.arange(200, 400)):
        part = svm.SVR(C=C, epsilon=epsilon, gamma=0.2, tol=tol).fit(X[half], y[half])
        warm[half[part.support_]] = part.dual_coef_[0]
    ref = svm.SVR(C=C, epsilon=epsilon, gamma=0.2, tol=tol).fit(X, y)
    beta, intercept, n_iter, converged, _ = svr_duals(
        X,
        y,
        np.full(len(X), C),
        epsilon,
        spec,
        warm,
        tol=tol,
        max_iter=-1,
        cache_bytes=1e9,
    )
    assert converged and n_iter > 0
    want = ref.predict(X)
    got = pairwise.rbf_kernel(X, X, gamma=0.2) @ beta + intercept
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max())


def test_iteration_limit_stops_and_says_so():
    X, y, weight = _classification()
    _, _, n_iter, converged, _ = svc_duals(
        X,
        y,
        weight,
        3,
        KernelSpec("rbf", 0.1),
        None,
        tol=1e-3,
        max_iter=5,
        cache_bytes=1e9,
    )
    assert not converged and n_iter.max() == 5


@pytest.mark.parametrize("threads", [1, 3])
def test_kernel_store_computes_only_new_rows_and_matches_scikit_learn(threads):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 4))
    spec = KernelSpec("rbf", 0.3)
    store = KernelStore(spec, budget_bytes=1e6)
    first = np.arange(0, 40)
    K = store.matrix(first, X[first], threads=threads)
    np.testing.assert_allclose(K, pairwise.rbf_kernel(X[first], gamma=0.3), rtol=1e-6)
    assert K.dtype == np.float32 and store.entries_computed == 40 * 40
    # The next union: 25 rows kept (in another order), 20 new.
    second = np.concatenate([np.arange(59, 39, -1), np.arange(24, -1, -1)])
    K2 = store.matrix(second, X[second], threads=threads)
    np.testing.assert_allclose(K2, pairwise.rbf_kernel(X[second], gamma=0.3), rtol=1e-6)
    assert store.entries_reused == 25 * 25
    assert store.entries_computed == 40 * 40 + 45 * 45 - 25 * 25
    # Too big for the budget: nothing kept, None returned.
    assert KernelStore(spec, budget_bytes=4 * 10 * 10).matrix(first, X[first]) is None
    np.testing.assert_allclose(
        kernel_matrix(spec, X), pairwise.rbf_kernel(X, gamma=0.3), rtol=1e-6
    )


# ----------------------------------------------------------------------------
# The cascade with the warm solver: weights, class weights, the fallback


def _weighted_body(comm, refit_solver):
    import mpitrain.svm

    X, y, weight = _classification(n=420, seed=7)
    a, b = row_range(len(X), comm.Get_size(), comm.Get_rank())
    model = mpitrain.svm.SVC(
        C=3.0,
        class_weight={0: 2.0, 2: 0.5},
        tol=1e-5,
        max_passes=30,
        refit_solver=refit_solver,
        comm=comm,
    ).fit(X[a:b], y[a:b], sample_weight=weight[a:b])
    reg_X, reg_y = make_regression(
        n_samples=300, n_features=4, noise=2.0, random_state=3
    )
    reg_y = reg_y / reg_y.std()
    reg = mpitrain.svm.SVR(
        C=2.0,
        epsilon=0.05,
        tol=1e-5,
        max_passes=30,
        refit_solver=refit_solver,
        comm=comm,
    )
    a, b = row_range(len(reg_X), comm.Get_size(), comm.Get_rank())
    reg.fit(reg_X[a:b], reg_y[a:b], sample_weight=weight[a:b] + 0.5)
    return model.estimator_, model.cascade_, reg.estimator_, reg.cascade_


@pytest.mark.parametrize("refit_solver", ["warm", "engine"])
@pytest.mark.mpi(ranks=[3])
def test_weighted_cascade_is_scikit_learns_optimum(mpi_ranks, refit_solver):
    (model, report, reg, reg_report) = run_function(
        _weighted_body, mpi_ranks, refit_solver, timeout=90
    )[0]
    X, y, weight = _classification(n=420, seed=7)
    ref = svm.SVC(C=3.0, class_weight={0: 2.0, 2: 0.5}, tol=1e-5)
    ref.fit(X, y, sample_weight=weight)
    assert report["converged"], report
    assert (
        report["refit_solver"]
        == ["warm" if refit_solver == "warm" else "sklearn"] * report["passes"]
    )
    assert len(report["refit_iterations"]) == report["passes"]
    assert all(n > 0 for n in report["refit_iterations"])
    want = ref.decision_function(X)
    np.testing.assert_allclose(
        model.decision_function(X), want, rtol=0, atol=1e-3 * np.abs(want).max()
    )
    np.testing.assert_allclose(model.class_weight_, ref.class_weight_)
    reg_X, reg_y = make_regression(
        n_samples=300, n_features=4, noise=2.0, random_state=3
    )
    reg_y = reg_y / reg_y.std()
    reg_ref = svm.SVR(C=2.0, epsilon=0.05, tol=1e-5).fit(
        reg_X, reg_y, sample_weight=weight[:300] + 0.5
    )
    assert reg_report["converged"], reg_report
    want = reg_ref.predict(reg_X)
    np.testing.assert_allclose(
        reg.predict(reg_X), want, rtol=0, atol=1e-3 * np.abs(want).max()
    )


def _no_numba_body(comm):
    import warnings

    import mpitrain.svm
    from mpitrain.svm import _cascade

    def missing():
        raise ImportError("No module named 'numba'")

    loaded = _cascade.load_solver
    _cascade.load_solver = missing  # this job's processes serve other tests too
    try:
        X, y, _ = _classification(n=200, seed=1)
        a, b = row_range(len(X), comm.Get_size(), comm.Get_rank())
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = mpitrain.svm.SVC(
                tol=1e-5, max_passes=30, refit_solver="warm", comm=comm
            )
            model.fit(X[a:b], y[a:b])
    finally:
        _cascade.load_solver = loaded
    return model.estimator_, model.cascade_, [str(w.message) for w in caught]


@pytest.mark.mpi(ranks=[2])
def test_without_numba_the_cascade_warns_and_refits_with_the_engine(mpi_ranks):
    results = run_function(_no_numba_body, mpi_ranks, timeout=90)
    # Rank 0 refits, finds no numba, warns and uses libsvm; rank 1 never
    # refits, so it neither loads numba nor warns.
    assert any("warm-started SVM solver is not available" in m for m in results[0][2])
    assert not any("warm-started" in m for m in results[1][2])
    for model, report, _ in results:
        assert set(report["refit_solver"]) == {"sklearn"} and report["converged"]
        X, y, _ = _classification(n=200, seed=1)
        want = svm.SVC(tol=1e-5).fit(X, y).decision_function(X)
        np.testing.assert_allclose(
            model.decision_function(X), want, rtol=0, atol=1e-3 * np.abs(want).max()
        )


def _auto_body(comm, min_rows):
    import mpitrain.svm
    from mpitrain.svm import _cascade

    default = _cascade.WARM_MIN_ROWS
    _cascade.WARM_MIN_ROWS = min_rows  # this job's processes serve other tests too
    try:
        X, y, _ = _classification(n=300, seed=5)
        a, b = row_range(len(X), comm.Get_size(), comm.Get_rank())
        model = mpitrain.svm.SVC(tol=1e-5, max_passes=30, comm=comm)
        model.fit(X[a:b], y[a:b])
    finally:
        _cascade.WARM_MIN_ROWS = default
    return model.estimator_, model.cascade_


@pytest.mark.mpi(ranks=[2])
@pytest.mark.parametrize(
    "min_rows, solver", [(None, "sklearn"), (300, "warm"), (301, "sklearn")]
)
def test_auto_refit_solver_chooses_by_all_ranks_rows(mpi_ranks, min_rows, solver):
    """The default ("auto"): libsvm below WARM_MIN_ROWS rows in all, the warm solver from it on."""
    from mpitrain.svm import WARM_MIN_ROWS

    assert WARM_MIN_ROWS > 300
    results = run_function(_auto_body, mpi_ranks, min_rows or WARM_MIN_ROWS, timeout=90)
    X, y, _ = _classification(n=300, seed=5)
    want = svm.SVC(tol=1e-5).fit(X, y).decision_function(X)
    for model, report in results:
        assert report["converged"] and set(report["refit_solver"]) == {solver}
        np.testing.assert_allclose(
            model.decision_function(X), want, rtol=0, atol=1e-3 * np.abs(want).max()
        )


@pytest.mark.parametrize("classes", [2, 3])
def test_margin_kernels_keep_rows_between_models_and_equal_decision_values(classes):
    """The margin check's kept kernel rows (slots) against decision values from scratch."""
    from mpitrain.svm._cascade import _MarginKernels, decision_values

    X, y, _ = _classification(n=300, classes=classes, seed=11)
    own = X[:120]
    margins = _MarginKernels(budget_bytes=1e9, min_features=0)
    # Successive models whose support vectors overlap, grow and shrink; ids
    # are the rows' global numbers.
    for start, stop in [(100, 220), (110, 300), (100, 180), (0, 300)]:
        rows = np.arange(start, stop)
        model = svm.SVC(C=1.0, gamma=0.3).fit(X[rows], y[rows])
        got = margins.decisions(model, own, rows[model.support_])
        want = decision_values(model, own)
        assert np.isfinite(got).all()
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-10)
    assert (
        _MarginKernels(budget_bytes=8 * 10, min_features=0).decisions(model, own, rows)
        is None
    )
    # Narrower rows than min_features: computed anew at every check.
    wide = X.shape[1] + 1
    assert _MarginKernels(1e9, min_features=wide).decisions(model, own, rows) is None
