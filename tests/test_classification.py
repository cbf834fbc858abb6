"""Exact LogisticRegression and LinearSVC: gold tests against scikit-learn on all rows.

The objectives below are written out in numpy from scikit-learn's and
liblinear's definitions, independently of mpitrain's code, and evaluated at
both coefficient sets: mpitrain's fit across ranks and scikit-learn's
tightly converged fit on all rows in one process.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.optimize import approx_fprime
from sklearn import linear_model, svm
from sklearn._loss.loss import HalfBinomialLoss, HalfMultinomialLoss
from sklearn.datasets import make_classification
from sklearn.linear_model._linear_loss import LinearModelLoss

from mpitrain.data import row_range
from mpitrain.linear_model import (
    binomial_loss_gradient,
    multinomial_loss_gradient,
    squared_hinge_loss_gradient,
)
from mpitrain.testing import run_function
from mpitrain.utils.multiclass import class_shift

OBJECTIVE_RTOL = 1e-6
TIGHT_LR = {"tol": 1e-10, "max_iter": 5000}
TIGHT_SVC = {"tol": 1e-10, "max_iter": 20000}


# ------------------------------------------------------- reference objectives


def logistic_objective(
    coef, intercept, X, y, classes, C=1.0, sample_weight=None, class_weight=None
):
    """scikit-learn's lbfgs objective: 1/S Σ s_i loss_i + ‖W‖² / (2 C S)."""
    X = X.toarray() if sp.issparse(X) else np.asarray(X, dtype=np.float64)
    idx = np.searchsorted(classes, y)
    s = (
        np.ones(len(y))
        if sample_weight is None
        else np.asarray(sample_weight, dtype=np.float64)
    )
    if class_weight == "balanced":
        counts = np.bincount(idx, weights=s, minlength=len(classes))
        s = s * (s.sum() / (len(classes) * counts))[idx]
    S = s.sum()
    if len(classes) == 2:
        z = X @ coef[0] + intercept[0]
        t = (idx == 1).astype(float)
        loss = np.logaddexp(0, z) - t * z
    else:
        Z = X @ coef.T + intercept
        m = Z.max(axis=1)
        loss = (
            m + np.log(np.exp(Z - m[:, None]).sum(axis=1)) - Z[np.arange(len(y)), idx]
        )
    penalty = 0.0 if C == np.inf else np.sum(coef**2) / (2 * C * S)
    return float(s @ loss / S + penalty)


def svc_objective(
    coef,
    intercept,
    X,
    y,
    classes,
    C=1.0,
    sample_weight=None,
    class_weight=None,
    intercept_scaling=1.0,
    fit_intercept=True,
):
    """liblinear's L2R_L2LOSS_SVC primal, summed over the one-vs-rest problems."""
    X = X.toarray() if sp.issparse(X) else np.asarray(X, dtype=np.float64)
    idx = np.searchsorted(classes, y)
    s = (
        np.ones(len(y))
        if sample_weight is None
        else np.asarray(sample_weight, dtype=np.float64)
    )
    cw = np.ones(len(classes))
    if class_weight == "balanced":
        counts = np.bincount(idx, weights=s, minlength=len(classes))
        cw = s.sum() / (len(classes) * counts)
    problems = (
        [(1, cw[idx])]
        if len(classes) == 2
        else [(k, np.where(idx == k, cw[k], 1.0)) for k in range(len(classes))]
    )
    total = 0.0
    for row, (k, weight) in enumerate(problems):
        sign = np.where(idx == k, 1.0, -1.0)
        b = np.ravel(intercept)[row] if fit_intercept else 0.0
        bias_weight = b / intercept_scaling if fit_intercept else 0.0
        slack = np.maximum(0.0, 1.0 - sign * (X @ coef[row] + b))
        total += 0.5 * (coef[row] @ coef[row] + bias_weight**2) + C * np.sum(
            s * weight * slack**2
        )
    return float(total)


# ----------------------------------------------------------------- pure math


def _block(n=40, d=4, k=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    y = rng.integers(0, k, size=n)
    w = rng.uniform(0.2, 2.0, size=n)
    return X, y, w


@pytest.mark.parametrize("fit_intercept", [True, False])
def test_binomial_sum_equals_sklearn_linear_model_loss(fit_intercept):
    X, y, w = _block(k=2)
    coef = np.random.default_rng(1).normal(size=X.shape[1] + fit_intercept)
    ref = LinearModelLoss(HalfBinomialLoss(), fit_intercept=fit_intercept)
    ref_loss, ref_grad = ref.loss_gradient(coef, X, y.astype(float), w)
    loss, grad = binomial_loss_gradient(coef, X, y.astype(float), w, fit_intercept)
    np.testing.assert_allclose(loss, ref_loss * w.sum(), rtol=1e-13)
    np.testing.assert_allclose(grad, ref_grad * w.sum(), rtol=1e-12, atol=1e-13)
    # Sparse rows give the same sums.
    loss_sp, grad_sp = binomial_loss_gradient(
        coef, sp.csr_matrix(X), y.astype(float), w, fit_intercept
    )
    np.testing.assert_allclose([loss_sp, *grad_sp], [loss, *grad], rtol=1e-13)


@pytest.mark.parametrize("fit_intercept", [True, False])
def test_multinomial_sum_equals_sklearn_linear_model_loss(fit_intercept):
    X, y, w = _block(k=4)
    coef = np.random.default_rng(2).normal(size=(4, X.shape[1] + fit_intercept))
    ref = LinearModelLoss(HalfMultinomialLoss(n_classes=4), fit_intercept=fit_intercept)
    ref_loss, ref_grad = ref.loss_gradient(coef, X, y.astype(float), w)
    loss, grad = multinomial_loss_gradient(coef, X, y, w, fit_intercept)
    np.testing.assert_allclose(loss, ref_loss * w.sum(), rtol=1e-13)
    np.testing.assert_allclose(grad, ref_grad * w.sum(), rtol=1e-12, atol=1e-13)
    # An empty block contributes exactly zero.
    loss0, grad0 = multinomial_loss_gradient(coef, X[:0], y[:0], w[:0], fit_intercept)
    assert loss0 == 0.0 and not grad0.any()


@pytest.mark.parametrize("scaling", [None, 1.0, 3.0])
def test_squared_hinge_sums_and_gradient(scaling):
    X, y, w = _block(k=3)
    Y = np.where(y[:, None] == np.arange(3), 1.0, -1.0)
    cost = 0.7 * w[:, None] * np.array([1.0, 2.0, 0.5])
    n_dof = X.shape[1] + (scaling is not None)
    coef = np.random.default_rng(3).normal(scale=0.3, size=(3, n_dof))
    losses, grad = squared_hinge_loss_gradient(coef, X, Y, cost, scaling)
    Xt = X if scaling is None else np.column_stack([X, np.full(len(X), scaling)])
    for k in range(3):
        expected = sum(
            cost[i, k] * max(0.0, 1 - Y[i, k] * Xt[i] @ coef[k]) ** 2
            for i in range(len(X))
        )
        np.testing.assert_allclose(losses[k], expected, rtol=1e-13)

        def f(c, k=k):
            full = coef.copy()
            full[k] = c
            return squared_hinge_loss_gradient(full, X, Y, cost, scaling)[0][k]

        np.testing.assert_allclose(
            grad[k], approx_fprime(coef[k], f, 1e-7), rtol=1e-5, atol=1e-5
        )


def test_class_shift_is_total_variation_distance():
    counts = np.array([[10, 0], [0, 10], [5, 5], [0, 0]])
    np.testing.assert_allclose(class_shift(counts), [0.5, 0.5, 0.0, 0.0])


# ------------------------------------------------------- distributed gold


def _problem(n, d, k, seed, informative=None):
    X, y = make_classification(
        n_samples=n,
        n_features=d,
        n_informative=informative or min(d, 4),
        n_redundant=0,
        n_classes=k,
        n_clusters_per_class=1,
        flip_y=0.1,
        class_sep=0.8,
        random_state=seed,
    )
    return X, y


def _ill_conditioned(n=1500, seed=7):
    """A rare one-hot column (3 rows of n) beside a column 1000 times larger than the rest."""
    X, y = _problem(n, 5, 2, seed)
    rare = np.zeros(n)
    rare[[3, 500, 1200]] = 1.0
    return np.column_stack([X[:, :4], 1000.0 * X[:, 4], rare]), y


@functools.cache
def gold_cases():
    """(name, kind, our params, sklearn params, X, y, sample_weight, split, compare_coef)."""
    rng = np.random.default_rng(11)
    Xb, yb = _problem(360, 5, 2, 0)
    Xm, ym = _problem(420, 6, 4, 1)
    X3, y3 = _problem(390, 5, 3, 2)
    w3 = rng.uniform(0.2, 3.0, len(y3))
    wm = rng.uniform(0.5, 2.0, len(ym))
    names = np.array(["cat", "dog", "eel"])[y3]
    negative = np.array([-7, -2])[yb]
    negative3 = np.array([-9, -3, 0])[y3]
    # Imbalanced classes sorted across ranks: per-rank "balanced" weights would be wrong.
    Xi, yi = make_classification(
        n_samples=400,
        n_features=5,
        n_informative=3,
        n_redundant=0,
        n_classes=3,
        weights=[0.7, 0.2, 0.1],
        flip_y=0.05,
        random_state=3,
    )
    Xc, yc = _ill_conditioned()
    lr, sv = "LogisticRegression", "LinearSVC"
    svc_ref = {**TIGHT_SVC, "dual": False}
    return (
        (
            "lr_binary_l2",
            lr,
            {"C": 0.5, **TIGHT_LR},
            {"C": 0.5, **TIGHT_LR},
            Xb,
            yb,
            None,
            "even",
            True,
        ),
        (
            "lr_multinomial_l2_weighted",
            lr,
            {"C": 2.0, **TIGHT_LR},
            {"C": 2.0, **TIGHT_LR},
            Xm,
            ym,
            wm,
            "even",
            True,
        ),
        (
            "lr_binary_no_penalty",
            lr,
            {"C": np.inf, **TIGHT_LR},
            {"C": np.inf, **TIGHT_LR},
            Xb,
            yb,
            None,
            "even",
            True,
        ),
        (
            "lr_multinomial_penalty_none",
            lr,
            {"penalty": None, **TIGHT_LR},
            {"C": np.inf, **TIGHT_LR},
            X3,
            y3,
            None,
            "even",
            True,
        ),
        (
            "lr_no_intercept",
            lr,
            {"fit_intercept": False, **TIGHT_LR},
            {"fit_intercept": False, **TIGHT_LR},
            Xb,
            yb,
            None,
            "even",
            True,
        ),
        (
            "lr_class_missing_on_ranks",
            lr,
            TIGHT_LR,
            TIGHT_LR,
            Xm,
            ym,
            None,
            "sorted",
            True,
        ),
        ("lr_empty_rank", lr, TIGHT_LR, TIGHT_LR, Xb, yb, None, "empty", True),
        ("lr_string_labels", lr, TIGHT_LR, TIGHT_LR, X3, names, w3, "even", True),
        (
            "lr_negative_labels",
            lr,
            TIGHT_LR,
            TIGHT_LR,
            Xb,
            negative,
            None,
            "sorted",
            True,
        ),
        (
            "lr_balanced_global",
            lr,
            {"class_weight": "balanced", **TIGHT_LR},
            {"class_weight": "balanced", **TIGHT_LR},
            Xi,
            yi,
            None,
            "sorted",
            True,
        ),
        (
            "lr_sparse",
            lr,
            TIGHT_LR,
            TIGHT_LR,
            sp.csr_matrix(np.where(np.abs(Xm) > 0.8, Xm, 0.0)),
            ym,
            None,
            "even",
            True,
        ),
        (
            "lr_float32",
            lr,
            TIGHT_LR,
            TIGHT_LR,
            Xb.astype(np.float32),
            yb,
            None,
            "even",
            True,
        ),
        ("lr_ill_conditioned", lr, TIGHT_LR, TIGHT_LR, Xc, yc, None, "even", False),
        (
            "svc_binary",
            sv,
            {"C": 0.7, **TIGHT_SVC},
            {"C": 0.7, **svc_ref},
            Xb,
            yb,
            None,
            "even",
            True,
        ),
        (
            "svc_3class_weighted_scaling",
            sv,
            {"intercept_scaling": 2.0, **TIGHT_SVC},
            {"intercept_scaling": 2.0, **svc_ref},
            X3,
            y3,
            w3,
            "even",
            True,
        ),
        (
            "svc_no_intercept",
            sv,
            {"fit_intercept": False, **TIGHT_SVC},
            {"fit_intercept": False, **svc_ref},
            X3,
            y3,
            None,
            "even",
            True,
        ),
        (
            "svc_class_missing_on_ranks",
            sv,
            TIGHT_SVC,
            svc_ref,
            X3,
            y3,
            None,
            "sorted",
            True,
        ),
        (
            "svc_empty_rank_strings",
            sv,
            TIGHT_SVC,
            svc_ref,
            X3,
            names,
            None,
            "empty",
            True,
        ),
        (
            "svc_negative_labels",
            sv,
            TIGHT_SVC,
            svc_ref,
            X3,
            negative3,
            None,
            "even",
            True,
        ),
        (
            "svc_balanced_global",
            sv,
            {"class_weight": "balanced", **TIGHT_SVC},
            {"class_weight": "balanced", **svc_ref},
            Xi,
            yi,
            None,
            "sorted",
            True,
        ),
        (
            "svc_ill_conditioned",
            sv,
            {"C": 0.1, **TIGHT_SVC},
            {"C": 0.1, **svc_ref},
            Xc,
            yc,
            None,
            "even",
            False,
        ),
    )


def _rows(split, y, size, rank):
    """Which rows this rank holds: even blocks, blocks of label-sorted rows, or none on rank 1."""
    n = len(y)
    if split == "sorted":
        a, b = row_range(n, size, rank)
        return np.argsort(y, kind="stable")[a:b]
    if split == "empty" and size > 1:
        if rank == 1:
            return np.arange(0)
        a, b = row_range(n, size - 1, rank if rank < 1 else rank - 1)
        return np.arange(a, b)
    a, b = row_range(n, size, rank)
    return np.arange(a, b)


def _error_cases(comm):
    """Bad input found on some ranks only: every rank must raise the same error."""
    import mpitrain.linear_model as mc

    rank, size = comm.Get_rank(), comm.Get_size()
    X, y = _problem(60, 4, 2, 5)
    a, b = row_range(60, size, rank)
    Xr, yr = X[a:b].copy(), y[a:b]
    outcomes = {}
    bad = Xr.copy()
    if rank == size - 1:
        bad[0, 1] = np.nan
    one_class = np.zeros(len(yr), dtype=int)
    narrow = Xr[:, :3] if rank == 0 and size > 1 else Xr
    for name, make in [
        ("nan_on_last_rank", lambda: mc.LogisticRegression(comm=comm).fit(bad, yr)),
        ("one_class_globally", lambda: mc.LinearSVC(comm=comm).fit(Xr, one_class)),
        ("features_differ", lambda: mc.LogisticRegression(comm=comm).fit(narrow, yr)),
    ]:
        try:
            make()
            outcomes[name] = None
        except Exception as exc:
            outcomes[name] = (type(exc).__name__, str(exc))
    return outcomes


def _gold_body(comm, cases):
    import warnings

    import mpitrain

    rank, size = comm.Get_rank(), comm.Get_size()
    fitted = []
    for _name, kind, params, _, X, y, w, split, _ in cases:
        rows = _rows(split, y, size, rank)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            est = getattr(mpitrain.linear_model, kind)(comm=comm, **params)
            est.fit(X[rows], y[rows], sample_weight=None if w is None else w[rows])
        shown = [
            (c.category.__name__, str(c.message))
            for c in caught
            if c.category is not FutureWarning
        ]
        fitted.append(
            {
                "estimator": est.estimator_ if rank == 0 else None,
                "coef": est.coef_,
                "intercept": est.intercept_,
                "warnings": shown,
            }
        )
    return fitted, _error_cases(comm)


def _objective(kind, model, X, y, params, w):
    common = {"sample_weight": w, "class_weight": params.get("class_weight")}
    C = params.get("C", 1.0)
    if kind == "LogisticRegression":
        return logistic_objective(
            model.coef_, model.intercept_, X, y, model.classes_, C=C, **common
        )
    return svc_objective(
        model.coef_,
        model.intercept_,
        X,
        y,
        model.classes_,
        C=C,
        intercept_scaling=params.get("intercept_scaling", 1.0),
        fit_intercept=params.get("fit_intercept", True),
        **common,
    )


@functools.cache
def _reference_fits():
    refs = []
    for _name, kind, _, ref_params, X, y, w, _, _ in gold_cases():
        Xref = X.astype(
            np.float64
        )  # float32 input is compared in float64, as mpitrain computes
        model = getattr(linear_model if kind == "LogisticRegression" else svm, kind)(
            **ref_params
        )
        refs.append(model.fit(Xref, y, sample_weight=w))
    return refs


@pytest.mark.mpi(ranks=[1, 2, 3, 4])
def test_gold_equal_to_sklearn_on_all_rows(mpi_ranks):
    cases = gold_cases()
    per_rank = run_function(_gold_body, mpi_ranks, cases)
    fits = per_rank[0][0]
    for case, mine, ref in zip(cases, fits, _reference_fits()):
        name, kind, _, ref_params, X, y, w, split, compare_coef = case
        model = mine["estimator"]
        assert type(model) is type(ref), name
        np.testing.assert_array_equal(model.classes_, ref.classes_, err_msg=name)
        assert model.coef_.shape == ref.coef_.shape and np.shape(
            model.intercept_
        ) == np.shape(ref.intercept_)
        Xf = X.astype(np.float64)
        f_mine = _objective(kind, model, Xf, y, ref_params, w)
        f_ref = _objective(kind, ref, Xf, y, ref_params, w)
        assert abs(f_mine - f_ref) <= OBJECTIVE_RTOL * abs(f_ref), (name, f_mine, f_ref)
        if compare_coef:
            a = np.append(model.coef_.ravel(), model.intercept_)
            b = np.append(ref.coef_.ravel(), ref.intercept_)
            np.testing.assert_allclose(
                a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max(), err_msg=name
            )
            # The plain scikit-learn estimator predicts without MPI, as scikit-learn's does.
            np.testing.assert_array_equal(
                model.predict(Xf), ref.predict(Xf), err_msg=name
            )
        # Every rank holds the bit-identical model and saw the same warnings.
        for other, _ in per_rank[1:]:
            theirs = other[cases.index(case)]
            assert np.array_equal(theirs["coef"], mine["coef"]), name
            assert np.array_equal(theirs["intercept"], mine["intercept"]), name
            assert theirs["warnings"] == mine["warnings"], name
        # The class-proportion warning: once, exactly when some rank's classes are skewed.
        skewed = [m for c, m in mine["warnings"] if c == "ClassProportionWarning"]
        expect_skew = split == "sorted" and mpi_ranks > 1
        assert len(skewed) == int(expect_skew), (name, mine["warnings"])
    # Bad input on some ranks: the same error on every rank, naming the ranks.
    errors = [errs for _, errs in per_rank]
    assert all(e == errors[0] for e in errors)
    kind, message = errors[0]["nan_on_last_rank"]
    assert kind == "DistributedValueError" and "NaN" in message
    if mpi_ranks > 1:
        assert f"rank {mpi_ranks - 1} (of {mpi_ranks})" in message
    kind, message = errors[0]["one_class_globally"]
    assert kind == "ValueError" and "at least 2 classes" in message
    if mpi_ranks > 1:
        kind, message = errors[0]["features_differ"]
        assert kind == "ValueError" and "different numbers of features" in message
    else:
        assert errors[0]["features_differ"] is None


def _check_estimator_body(comm):
    from sklearn.utils.estimator_checks import check_estimator

    import mpitrain.linear_model as mc

    check_estimator(mc.LogisticRegression())
    # The same expected failures as scikit-learn's own LinearSVC: the stopping
    # test is relative to max(min(#pos, #neg), 1) / n_rows, which changes when
    # rows are repeated, so the default tol stops at slightly different points
    # (about 1e-4 relative).  Weighted fits are checked against scikit-learn at
    # tight tol in the gold test instead.
    reason = "tol is relative to class counts, which repeating rows changes; see the gold test"
    check_estimator(
        mc.LinearSVC(),
        expected_failed_checks={
            "check_sample_weight_equivalence_on_dense_data": reason,
            "check_sample_weight_equivalence_on_sparse_data": reason,
        },
    )
    return True


def test_sklearn_check_estimator_on_one_rank():
    assert run_function(_check_estimator_body, 1, timeout=300) == [True]


# ------------------------------------------- rank 0 drives the optimiser


def _skewed_optimiser_body(comm):
    """Fit cleanly, then with L-BFGS-B's arithmetic perturbed on every rank but 0.

    The perturbation stands for nodes whose CPUs (and BLAS kernels) round
    differently: were every rank running its own L-BFGS-B, the ranks would
    take different steps and numbers of iterations, call different numbers
    of collectives and hang.  Only rank 0's optimiser may count.  Then one
    rank's loss evaluation fails mid-fit: every rank must raise the same error.
    """
    from scipy import optimize

    import mpitrain.linear_model as mc

    rank, size = comm.Get_rank(), comm.Get_size()
    Xb, yb = _problem(360, 5, 2, 0)
    X3, y3 = _problem(390, 5, 3, 2)
    cases = [
        ("LogisticRegression", TIGHT_LR, Xb, yb),
        ("LogisticRegression", TIGHT_LR, X3, y3),
        ("LinearSVC", TIGHT_SVC, X3, y3),
    ]
    real_minimize = optimize.minimize

    def skewed_minimize(fun, x0, *args, **kwargs):
        noise = 1.0 + rank * 1e-7 * np.cos(np.arange(np.size(x0)))

        def skewed(x):
            f, g = fun(x)
            return f * (1.0 + rank * 1e-13), g * noise

        return real_minimize(skewed, x0, *args, **kwargs)

    fits = []
    for kind, params, X, y in cases:
        rows = _rows("even", y, size, rank)
        clean = getattr(mc, kind)(comm=comm, **params).fit(X[rows], y[rows])
        optimize.minimize = skewed_minimize
        try:
            skew = getattr(mc, kind)(comm=comm, **params).fit(X[rows], y[rows])
        finally:
            optimize.minimize = real_minimize
        fits.append(
            [
                (m.coef_, m.intercept_, m.n_iter_, m.n_evaluations_)
                for m in (clean, skew)
            ]
        )

    # The module that looks the function up, not the package face that re-exports it.
    from mpitrain.linear_model import _classifiers

    real_loss = _classifiers.binomial_loss_gradient
    calls = []

    def failing_loss(*args, **kwargs):
        calls.append(1)
        if rank == size - 1 and len(calls) == 4:
            raise FloatingPointError("overflow in row 12")
        return real_loss(*args, **kwargs)

    _classifiers.binomial_loss_gradient = failing_loss
    try:
        rows = _rows("even", yb, size, rank)
        mc.LogisticRegression(comm=comm, **TIGHT_LR).fit(Xb[rows], yb[rows])
        failure = None
    except Exception as exc:
        failure = (type(exc).__name__, str(exc), len(calls))
    finally:
        _classifiers.binomial_loss_gradient = real_loss
    return fits, failure


@pytest.mark.mpi(ranks=[1, 2, 3, 4])
def test_ranks_with_different_arithmetic_finish_together_with_rank_0s_answer(mpi_ranks):
    # A hang (the old design) fails at the short timeout instead of blocking the suite.
    per_rank = run_function(_skewed_optimiser_body, mpi_ranks, timeout=60)
    fits0, failure0 = per_rank[0]
    for fits, failure in per_rank:
        for (clean, skew), (clean0, _skew0) in zip(fits, fits0):
            # Rank 0's optimiser is unperturbed, so the skewed fit is the clean fit, bit for bit...
            for a, b in zip(skew, clean0):
                assert np.array_equal(a, b)
            # ...and every rank holds it.
            for a, b in zip(clean, clean0):
                assert np.array_equal(a, b)
        assert failure == failure0
    kind, message, n_calls = failure0
    assert kind == "DistributedError" and "evaluating the loss" in message
    assert "overflow in row 12" in message
    if mpi_ranks > 1:
        assert f"rank {mpi_ranks - 1} (of {mpi_ranks})" in message
    # Every rank stopped right after the failing (fourth) evaluation.
    assert n_calls == 4
