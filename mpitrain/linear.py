"""Exact linear, polynomial and ridge regression across MPI ranks.

The estimators here are scikit-learn glue around :mod:`mpitrain.sufficient`:
each rank accumulates the least-squares sufficient statistics of its own
rows, the ranks pool them with two reductions, rank 0 solves the d×d system
and broadcasts the answer, and every rank builds the same plain
scikit-learn estimator in ``estimator_``.  The result is scikit-learn's on
all rows together, up to rounding.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from numbers import Integral, Real

import numpy as np

from sklearn import linear_model as _sk
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils._param_validation import Interval
from sklearn.utils.validation import _num_samples, check_is_fitted, validate_data

from .comm import agree, allgather_object, bcast_array, collective_check, get_comm, library_comm
from .sufficient import LinearStatistics, PolynomialMap, allreduce_statistics, local_statistics, solve_least_squares

if TYPE_CHECKING:  # pragma: no cover
    from mpi4py.MPI import Intracomm

__all__ = [
    "LinearRegression",
    "Ridge",
    "PolynomialRegression",
]

# ----------------------------------------------------------------------------
# Estimators


def _check_sample_weight(sample_weight: Any, n: int) -> np.ndarray | None:
    if sample_weight is None:
        return None
    w = np.asarray(sample_weight, dtype=np.float64)
    if w.ndim == 0:
        w = np.full(n, float(w))
    if w.shape != (n,):
        raise ValueError(f"sample_weight.shape == {w.shape}, expected {(n,)}!")
    if not np.isfinite(w).all() or (w < 0).any():
        raise ValueError("sample_weight must be finite and non-negative")
    return w


def _same_on_all_ranks(comm, what: str, value: int) -> None:
    """Raise the same error on every rank unless ``value`` agrees. Collective."""
    values = allgather_object(value, comm)
    if len(set(values)) > 1:
        listing = ", ".join(f"rank {r}: {k}" for r, k in enumerate(values))
        raise ValueError(f"ranks have different numbers of {what} ({listing})")


def _validate_local_rows(estimator, X, y):
    """scikit-learn's input checks, except that a rank may hold no rows."""
    try:
        n = _num_samples(X)
    except TypeError:
        n = 1  # not array-like: let validate_data say so
    if n > 0 or y is None:
        return validate_data(estimator, X, y, dtype=[np.float64, np.float32], multi_output=True, y_numeric=True)
    # check_X_y insists on a sample in y; an empty rank still takes part.
    X, y = validate_data(
        estimator, X, y, validate_separately=(
            {"dtype": [np.float64, np.float32], "ensure_min_samples": 0},
            {"dtype": np.float64, "ensure_2d": False, "ensure_min_samples": 0},
        ),
    )
    if y.shape[0] != 0:
        raise ValueError(f"Found input variables with inconsistent numbers of samples: [0, {y.shape[0]}]")
    return X, y


class _ExactLinearModel(RegressorMixin, BaseEstimator):
    """Shared fit/predict of the exact least-squares estimators."""

    def _sklearn_params(self) -> dict:
        params = self.get_params(deep=False)
        params.pop("comm")
        return params

    def _plan(self, n_features: int):
        """Return the :class:`_Plan` for ``n_features`` input features."""
        raise NotImplementedError

    def fit(self, X, y, sample_weight=None):
        """Fit on this rank's rows; the model is the one for all ranks' rows.

        Collective over ``comm``: every rank of ``comm`` must call ``fit``
        with its own rows (possibly none) and the same parameters.

        Parameters
        ----------
        X : array-like of shape (n_local_rows, n_features)
        y : array-like of shape (n_local_rows,) or (n_local_rows, n_targets)
        sample_weight : array-like of shape (n_local_rows,), default=None

        Returns
        -------
        self : object
        """
        # Parameters are the same on every rank, so a bad one fails everywhere at once.
        self._validate_params()
        comm = get_comm(self.comm)
        with library_comm(comm) as lib:
            with collective_check(lib, "checking the input"):
                X, y = _validate_local_rows(self, X, y)
                w = _check_sample_weight(sample_weight, X.shape[0])
            _same_on_all_ranks(lib, "features", X.shape[1])
            Y = y.reshape(-1, 1) if y.ndim == 1 else y
            plan = self._plan(X.shape[1])
            tic = time.perf_counter()
            with collective_check(lib, "computing local statistics"):
                local = local_statistics(X, Y, w, transform=plan.transform, n_features=plan.n_out)
            local_seconds = time.perf_counter() - tic
            self._fit_pooled(local, lib, plan, multi_output=y.ndim > 1)
            self.timings_["local_compute"] = local_seconds
        return self

    def fit_statistics(self, local: LinearStatistics, *, multi_output: bool = False):
        """Fit from this rank's sufficient statistics, accumulated elsewhere.

        For rows that never sit in memory at once: accumulate them block by
        block with :class:`mpitrain.sufficient.StatisticsAccumulator`, using
        the feature map of :meth:`feature_map`, then call this.  Collective
        over ``comm``.

        Parameters
        ----------
        local : LinearStatistics
            This rank's statistics (of no rows, on a rank that has none).
        multi_output : bool, default=False
            Keep 2-D coefficients even for a single target.

        Returns
        -------
        self : object
        """
        self._validate_params()
        comm = get_comm(self.comm)
        with library_comm(comm) as lib:
            _same_on_all_ranks(lib, "features", local.n_inputs)
            plan = self._plan(local.n_inputs)
            if local.n_features != plan.n_out:
                raise ValueError(f"statistics of {local.n_features} features, the model maps "
                                 f"{local.n_inputs} inputs to {plan.n_out}; use feature_map()")
            self.n_features_in_ = local.n_inputs
            self._fit_pooled(local, lib, plan, multi_output=multi_output)
        return self

    def feature_map(self, n_inputs: int):
        """The row-local feature map (or ``None``) and its output width. Local."""
        plan = self._plan(n_inputs)
        return plan.transform, plan.n_out

    def _fit_pooled(self, local: LinearStatistics, lib, plan: "_Plan", multi_output: bool) -> None:
        """Pool, solve on rank 0, broadcast, build ``estimator_``. Collective over ``lib``."""
        timings: dict[str, float] = {"local_compute": 0.0}
        with collective_check(lib, "computing local statistics"):
            if not np.isfinite(local.scatter).all():
                raise ValueError("Input contains NaN or infinity, or sums of squares overflowed float64")
        n_targets = local.mean.size - local.n_features
        _same_on_all_ranks(lib, "targets", n_targets)
        tic = time.perf_counter()
        stats = allreduce_statistics(local, lib)
        timings["communicate"] = time.perf_counter() - tic
        if stats.count == 0:
            raise ValueError(f"no rows to fit: all {lib.Get_size()} ranks have 0 samples")
        if stats.weight <= 0:
            raise ValueError("the sample weights of all rows sum to zero")

        tic = time.perf_counter()
        n_out = plan.n_out
        n_coef = n_targets * n_out
        # [coef, intercept, (rank, singular values)] travel in one buffer.
        packed = np.zeros(n_coef + n_targets + (1 + n_out if plan.wants_singular else 0))
        failure = None
        if lib.Get_rank() == 0:
            try:
                solution = solve_least_squares(
                    stats, plan.alpha, fit_intercept=self.fit_intercept,
                    positive=self.positive, singular_values=plan.wants_singular,
                )
                packed[:n_coef] = solution.coef.ravel()
                packed[n_coef : n_coef + n_targets] = solution.intercept
                if plan.wants_singular:
                    packed[n_coef + n_targets] = solution.rank
                    packed[n_coef + n_targets + 1 :] = solution.singular
            except Exception as exc:  # noqa: BLE001 - agreed below
                failure = exc
        agree(failure, lib, "solving the normal equations")
        # Only rank 0 solves: reductions may round differently on each rank,
        # and the model must be bit-identical everywhere.
        bcast_array(packed, lib)
        timings["solve"] = time.perf_counter() - tic

        coef = packed[:n_coef].reshape(n_targets, n_out)
        intercept = packed[n_coef : n_coef + n_targets]
        if not multi_output and n_targets == 1:
            coef, intercept = coef[0], float(intercept[0])
        extra = {}
        if plan.wants_singular:
            extra = {"rank_": int(packed[n_coef + n_targets]), "singular_": packed[n_coef + n_targets + 1 :]}
        self.estimator_ = plan.build(coef, intercept, extra)
        self.n_rows_ = stats.count
        self.n_iter_ = 1  # one reduction and one direct solve, whatever max_iter says
        self.timings_ = timings

    def predict(self, X):
        """Predict for the given rows, locally (no communication).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        ndarray of shape (n_samples,) or (n_samples, n_targets)
        """
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        return self.estimator_.predict(X)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags


@dataclass
class _Plan:
    """What a model needs to fit: the row map, the penalty, and how to finish."""

    transform: Callable[[np.ndarray], np.ndarray] | None
    n_out: int
    alpha: float | np.ndarray
    wants_singular: bool
    build: Callable[[np.ndarray, Any, dict], Any]


def _fitted_linear(model, coef, intercept, n_features: int, extra: dict):
    model.coef_ = coef
    model.intercept_ = intercept
    model.n_features_in_ = n_features
    for name, value in extra.items():
        setattr(model, name, value)
    return model


class LinearRegression(_ExactLinearModel):
    """Ordinary least squares over rows split across MPI ranks, exactly.

    The same parameters and result as :class:`sklearn.linear_model.LinearRegression`
    fitted on all ranks' rows together; ``estimator_`` is that fitted
    scikit-learn estimator (it pickles and predicts without MPI).

    Parameters
    ----------
    fit_intercept : bool, default=True
    copy_X : bool, default=True
        Recorded on ``estimator_``; the input is never modified.
    tol : float, default=1e-6
        Recorded on ``estimator_``; the exact solve does not iterate.
    n_jobs : int, default=None
        Recorded on ``estimator_``; threads are set per rank instead.
    positive : bool, default=False
        Constrain coefficients to be non-negative (NNLS on the Gram matrix).
    comm : mpi4py.MPI.Intracomm, default=None
        Communicator of the ranks that share the rows; ``None`` means
        ``COMM_WORLD``.  Resolved in ``fit``, never stored on ``estimator_``.

    Attributes
    ----------
    estimator_ : sklearn.linear_model.LinearRegression
        The fitted model, identical on every rank.
    n_features_in_ : int
    n_rows_ : int
        Rows of all ranks together.
    n_iter_ : int
        Always 1: one reduction and one direct solve.
    timings_ : dict
        Seconds spent in local computation, communication and the solve.
    """

    _parameter_constraints = {**_sk.LinearRegression._parameter_constraints, "comm": "no_validation"}

    def __init__(self, *, fit_intercept=True, copy_X=True, tol=1e-6, n_jobs=None, positive=False, comm=None):
        self.fit_intercept = fit_intercept
        self.copy_X = copy_X
        self.tol = tol
        self.n_jobs = n_jobs
        self.positive = positive
        self.comm = comm

    def _plan(self, n_features):
        model = _sk.LinearRegression(**self._sklearn_params())

        def build(coef, intercept, extra):
            return _fitted_linear(model, coef, intercept, n_features, extra)

        return _Plan(None, n_features, 0.0, True, build)


class Ridge(_ExactLinearModel):
    """Ridge regression over rows split across MPI ranks, exactly.

    Solves the same problem as :class:`sklearn.linear_model.Ridge` on all
    ranks' rows together: ``‖y - Xw - c‖² + alpha ‖w‖²`` (``alpha`` is
    *not* rescaled by the number of rows or ranks).  ``solver``,
    ``max_iter``, ``tol`` and ``random_state`` are recorded on
    ``estimator_`` but the exact method always solves the normal equations
    directly (NNLS when ``positive``); ``estimator_.solver_`` names the
    scikit-learn solver for the same problem.

    Parameters
    ----------
    alpha : float or ndarray of shape (n_targets,), default=1.0
    fit_intercept : bool, default=True
    copy_X : bool, default=True
    max_iter : int, default=None
    tol : float, default=1e-4
    solver : str, default="auto"
    positive : bool, default=False
        Non-negative coefficients (NNLS on the penalised Gram matrix).
    random_state : int, RandomState instance or None, default=None
    comm : mpi4py.MPI.Intracomm, default=None
        ``None`` means ``COMM_WORLD``; resolved in ``fit``.

    Attributes
    ----------
    estimator_ : sklearn.linear_model.Ridge
        The fitted model, identical on every rank.
    n_features_in_ : int
    n_rows_ : int
    timings_ : dict
    """

    _parameter_constraints = {**_sk.Ridge._parameter_constraints, "comm": "no_validation"}

    def __init__(self, alpha=1.0, *, fit_intercept=True, copy_X=True, max_iter=None, tol=1e-4,
                 solver="auto", positive=False, random_state=None, comm=None):
        self.alpha = alpha
        self.fit_intercept = fit_intercept
        self.copy_X = copy_X
        self.max_iter = max_iter
        self.tol = tol
        self.solver = solver
        self.positive = positive
        self.random_state = random_state
        self.comm = comm

    def _plan(self, n_features):
        model = _sk.Ridge(**self._sklearn_params())
        alpha = np.asarray(self.alpha, dtype=np.float64)
        if (alpha < 0).any():
            raise ValueError(f"alpha must be non-negative, got {self.alpha}")

        def build(coef, intercept, extra):
            model.n_iter_ = None
            model.solver_ = "lbfgs" if self.positive else "cholesky"
            return _fitted_linear(model, coef, intercept, n_features, extra)

        return _Plan(None, n_features, alpha, False, build)


class PolynomialRegression(_ExactLinearModel):
    """Polynomial regression (ridge-penalised if ``alpha > 0``), exactly.

    Polynomial features are computed row by row, chunk by chunk, on each
    rank, so the expanded matrix is never held for all rows.  ``estimator_``
    is a scikit-learn ``Pipeline`` of ``PolynomialFeatures`` and
    ``LinearRegression`` (``alpha == 0``) or ``Ridge`` (``alpha > 0``).

    Parameters
    ----------
    degree : int, default=2
    interaction_only : bool, default=False
    alpha : float, default=0.0
    fit_intercept : bool, default=True
    positive : bool, default=False
    comm : mpi4py.MPI.Intracomm, default=None
        ``None`` means ``COMM_WORLD``; resolved in ``fit``.
    """

    _parameter_constraints = {
        "degree": [Interval(Integral, 0, None, closed="left")],
        "interaction_only": ["boolean"],
        "alpha": [Interval(Real, 0, None, closed="left")],
        "fit_intercept": ["boolean"],
        "positive": ["boolean"],
        "comm": "no_validation",
    }

    def __init__(self, degree=2, *, interaction_only=False, alpha=0.0, fit_intercept=True,
                 positive=False, comm=None):
        self.degree = degree
        self.interaction_only = interaction_only
        self.alpha = alpha
        self.fit_intercept = fit_intercept
        self.positive = positive
        self.comm = comm

    def _plan(self, n_features):
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import PolynomialFeatures

        # The feature map depends only on the number of features, so every
        # rank builds the same one; scikit-learn's, fitted on a row of zeros,
        # goes into the saved pipeline (a test checks the columns agree).
        poly = PolynomialFeatures(self.degree, interaction_only=self.interaction_only, include_bias=False)
        poly.fit(np.zeros((1, n_features)))
        transform = PolynomialMap(n_features, self.degree, self.interaction_only)
        common = dict(fit_intercept=self.fit_intercept, positive=self.positive)
        model = _sk.Ridge(alpha=self.alpha, **common) if self.alpha > 0 else _sk.LinearRegression(**common)
        n_out = transform.n_output

        def build(coef, intercept, extra):
            if self.alpha > 0:
                model.n_iter_ = None
                model.solver_ = "lbfgs" if self.positive else "cholesky"
            return make_pipeline(poly, _fitted_linear(model, coef, intercept, n_out, extra))

        return _Plan(transform, n_out, float(self.alpha), self.alpha == 0, build)
