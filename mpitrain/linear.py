"""Exact linear, polynomial and ridge regression from reduced sufficient statistics.

Least squares with or without an L2 penalty needs only weighted sums over
rows: the row count, the weight total, the means of X and y and the centred
scatter matrices XᵀX, Xᵀy.  Each rank computes them on its own rows; the
ranks add them with MPI; rank 0 solves the small d×d system and broadcasts
the answer.  The result is scikit-learn's on all rows, up to rounding.

Numerical stability: a rank accumulates its rows in chunks, shifted by a
reference point close to its mean (so no large-mean cancellation), in one
``syrk`` per chunk over ``[X | Y | 1]``.  Ranks are merged with the exact
pooled-scatter formula ``S = Σ_r S_r + Σ_r W_r (m_r - m)(m_r - m)ᵀ``: one
tiny reduction for the global mean, then one reduction of the d×d matrices,
with every term positive semi-definite.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
from numbers import Integral, Real

from sklearn import linear_model as _sk
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils._param_validation import Interval
from sklearn.utils.validation import _num_samples, check_is_fitted, validate_data

from .comm import (
    agree,
    allgather_object,
    allreduce_sum,
    bcast_array,
    collective_check,
    get_comm,
    library_comm,
)

if TYPE_CHECKING:  # pragma: no cover
    from mpi4py.MPI import Intracomm

__all__ = [
    "LinearStatistics",
    "local_statistics",
    "combine_statistics",
    "allreduce_statistics",
    "solve_least_squares",
    "LinearRegression",
    "Ridge",
    "PolynomialRegression",
]

_CHUNK_BYTES = 16 << 20  # work buffer per chunk: big enough for fast syrk, small next to the data


@dataclass
class LinearStatistics:
    """Weighted sufficient statistics of rows ``z = [x, y]`` about their mean.

    Attributes
    ----------
    count : int
        Number of rows.
    weight : float
        Sum of row weights (``count`` when unweighted).
    mean : ndarray of shape (d + t,)
        Weighted mean of ``[x, y]``.
    scatter : ndarray of shape (d + t, d + t)
        ``Σ w (z - mean)(z - mean)ᵀ``.
    n_features : int
        ``d``; the remaining ``t`` columns are targets.
    """

    count: int
    weight: float
    mean: np.ndarray
    scatter: np.ndarray
    n_features: int

    @property
    def xx(self) -> np.ndarray:
        d = self.n_features
        return self.scatter[:d, :d]

    @property
    def xy(self) -> np.ndarray:
        d = self.n_features
        return self.scatter[:d, d:]

    @property
    def x_mean(self) -> np.ndarray:
        return self.mean[: self.n_features]

    @property
    def y_mean(self) -> np.ndarray:
        return self.mean[self.n_features :]


def local_statistics(
    X: np.ndarray,
    Y: np.ndarray,
    sample_weight: np.ndarray | None = None,
    *,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
    n_features: int | None = None,
    chunk_bytes: int = _CHUNK_BYTES,
) -> LinearStatistics:
    """Statistics of one block of rows, computed in chunks. Pure (no MPI).

    Parameters
    ----------
    X : ndarray of shape (n, d_in)
        Rows; float32 rows are widened to float64 one chunk at a time.
    Y : ndarray of shape (n, t)
    sample_weight : ndarray of shape (n,), default=None
        Non-negative row weights.
    transform : callable, default=None
        Row-local feature map applied per chunk (e.g. polynomial features),
        so the expanded matrix never exists for all rows at once.
    n_features : int, default=None
        Number of features after ``transform``; needed when ``transform``
        is given (a rank with no rows cannot find it out).
    chunk_bytes : int
        Size of the float64 work buffer.
    """
    n = X.shape[0]
    t = Y.shape[1]
    d = X.shape[1] if transform is None else n_features
    if d is None:
        raise ValueError("n_features is required with a transform")
    p = d + t + 1
    rows = int(min(max(n, 1), max(64, chunk_bytes // (8 * p))))
    gram = np.zeros((p, p))
    buf = np.empty((rows, p))
    shift = np.zeros(d + t)
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        m = stop - start
        z = buf[:m]
        xs = X[start:stop] if transform is None else transform(X[start:stop])
        z[:, :d] = xs
        z[:, d:-1] = Y[start:stop]
        if start == 0:
            # Shift by the first chunk's mean so sums of squares do not cancel.
            shift = z[:, :-1].mean(axis=0)
        z[:, :-1] -= shift
        z[:, -1] = 1.0
        if sample_weight is not None:
            z *= np.sqrt(sample_weight[start:stop])[:, None]
        gram += z.T @ z  # numpy recognises the transpose and calls syrk
    weight = gram[-1, -1]
    shifted_mean = gram[:-1, -1] / weight if weight > 0 else np.zeros(d + t)
    scatter = gram[:-1, :-1] - weight * np.outer(shifted_mean, shifted_mean)
    return LinearStatistics(n, float(weight), shift + shifted_mean, scatter, d)


def _pooled(parts_weight: float, parts_mean_sum: np.ndarray) -> np.ndarray:
    return parts_mean_sum / parts_weight if parts_weight > 0 else np.zeros_like(parts_mean_sum)


def _between_scatter(stats: LinearStatistics, mean: np.ndarray) -> np.ndarray:
    """``W (m_part - m)(m_part - m)ᵀ``: what a part adds to the pooled scatter."""
    delta = stats.mean - mean
    return stats.weight * np.outer(delta, delta)


def combine_statistics(parts: list[LinearStatistics]) -> LinearStatistics:
    """Pool the statistics of disjoint blocks of rows. Pure (no MPI).

    The same formula as :func:`allreduce_statistics`, for one process.
    """
    weight = sum(p.weight for p in parts)
    mean = _pooled(weight, sum(p.weight * p.mean for p in parts))
    scatter = sum(p.scatter + _between_scatter(p, mean) for p in parts)
    return LinearStatistics(sum(p.count for p in parts), weight, mean, scatter, parts[0].n_features)


def allreduce_statistics(local: LinearStatistics, comm: "Intracomm") -> LinearStatistics:
    """Pool every rank's statistics; every rank gets the global ones.

    Collective over ``comm``: an ``Allreduce`` of ``d + t + 2`` numbers for
    the global mean, then one of the ``(d + t)²`` scatter matrix.
    """
    k = local.mean.size
    head = np.empty(k + 2)
    head[0], head[1], head[2:] = local.count, local.weight, local.weight * local.mean
    allreduce_sum(head, comm)
    weight = float(head[1])
    mean = _pooled(weight, head[2:])
    scatter = np.ascontiguousarray(local.scatter + _between_scatter(local, mean))
    allreduce_sum(scatter, comm)
    return LinearStatistics(int(round(head[0])), weight, mean, scatter, local.n_features)


@dataclass
class LeastSquaresSolution:
    """Coefficients of shape (t, d), intercepts (t,), and how they were found."""

    coef: np.ndarray
    intercept: np.ndarray
    method: str
    rank: int | None = None
    singular: np.ndarray | None = None


def solve_least_squares(
    stats: LinearStatistics,
    alpha: float | np.ndarray = 0.0,
    *,
    fit_intercept: bool = True,
    positive: bool = False,
    singular_values: bool = False,
) -> LeastSquaresSolution:
    """Minimise ``Σ w (y - x·b - c)² + alpha ‖b‖²`` from pooled statistics. Pure.

    Cholesky for a well-conditioned system; otherwise the minimum-norm
    solution from an eigendecomposition (what ``lstsq`` gives on the rows);
    non-negative least squares on the Cholesky factor when ``positive``.
    """
    d = stats.n_features
    t = stats.mean.size - d
    a = stats.xx.copy()
    b = stats.xy.copy()
    if not fit_intercept:
        # Raw second moments: adding the mean terms back is free of cancellation.
        a += stats.weight * np.outer(stats.x_mean, stats.x_mean)
        b += stats.weight * np.outer(stats.x_mean, stats.y_mean)
    alphas = np.broadcast_to(np.asarray(alpha, dtype=np.float64), (t,))
    coef = np.empty((t, d))
    method = "cholesky"
    rank = singular = None
    if singular_values:
        eig = np.clip(np.linalg.eigvalsh(a)[::-1], 0.0, None)
        singular = np.sqrt(eig)
        rank = int(np.count_nonzero(eig > _eig_cutoff(eig)))
    for alpha_value in np.unique(alphas):
        targets = np.flatnonzero(alphas == alpha_value)
        a_reg = a + alpha_value * np.eye(d)
        if positive:
            coef[targets] = _nonnegative(a_reg, b[:, targets])
            method = "nnls"
            continue
        solved = _cholesky_solve(a_reg, b[:, targets])
        if solved is None:
            solved = _min_norm_solve(a_reg, b[:, targets])
            method = "svd"
        coef[targets] = solved.T
    intercept = stats.y_mean - coef @ stats.x_mean if fit_intercept else np.zeros(t)
    return LeastSquaresSolution(coef, intercept, method, rank, singular)


def _eig_cutoff(eig: np.ndarray) -> float:
    # Eigenvalues of a Gram matrix carry absolute errors of about eps * largest.
    return float(eig.max(initial=0.0)) * max(eig.size, 1) * np.finfo(np.float64).eps


def _cholesky_solve(a: np.ndarray, b: np.ndarray) -> np.ndarray | None:
    """Solve with Cholesky, or ``None`` if ``a`` is not safely positive definite."""
    try:
        factor = np.linalg.cholesky(a)
    except np.linalg.LinAlgError:
        return None
    diag = np.abs(np.diag(factor))
    # (min/max of the factor's diagonal)² bounds the condition number from below.
    if diag.size and diag.min() <= diag.max() * np.sqrt(np.finfo(np.float64).eps) * diag.size:
        return None
    z = np.linalg.solve(factor, b)
    return np.linalg.solve(factor.T, z)


def _min_norm_solve(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    eig, vec = np.linalg.eigh(a)
    keep = eig > _eig_cutoff(eig)
    return vec[:, keep] @ ((vec[:, keep].T @ b) / eig[keep, None])


def _nonnegative(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``argmin_{c >= 0} cᵀ a c - 2 bᵀ c`` per column of b, as NNLS on a square root of a."""
    from scipy.optimize import nnls

    eig, vec = np.linalg.eigh(a)
    keep = eig > _eig_cutoff(eig)
    root = np.sqrt(eig[keep])[:, None] * vec[:, keep].T  # rootᵀ root = a
    rhs = (vec[:, keep].T @ b) / np.sqrt(eig[keep])[:, None]
    return np.stack([nnls(root, rhs[:, j], maxiter=50 * a.shape[0])[0] for j in range(b.shape[1])])


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
            timings: dict[str, float] = {}
            with collective_check(lib, "checking the input"):
                X, y = _validate_local_rows(self, X, y)
                w = _check_sample_weight(sample_weight, X.shape[0])
            widths = allgather_object(X.shape[1], lib)
            if len(set(widths)) > 1:
                listing = ", ".join(f"rank {r}: {k}" for r, k in enumerate(widths))
                raise ValueError(f"ranks have different numbers of features ({listing})")
            Y = y.reshape(-1, 1) if y.ndim == 1 else y
            n_targets = allgather_object(Y.shape[1], lib)
            if len(set(n_targets)) > 1:
                raise ValueError(f"ranks have different numbers of targets: {n_targets}")
            plan = self._plan(X.shape[1])
            n_out = plan.n_out

            tic = time.perf_counter()
            with collective_check(lib, "computing local statistics"):
                local = local_statistics(X, Y, w, transform=plan.transform, n_features=n_out)
                if not np.isfinite(local.scatter).all():
                    raise ValueError("sums of squares overflowed: values are too large for float64")
            timings["local_compute"] = time.perf_counter() - tic

            tic = time.perf_counter()
            stats = allreduce_statistics(local, lib)
            timings["communicate"] = time.perf_counter() - tic
            if stats.count == 0:
                raise ValueError(f"no rows to fit: all {lib.Get_size()} ranks have 0 samples")
            if stats.weight <= 0:
                raise ValueError("the sample weights of all rows sum to zero")

            tic = time.perf_counter()
            n_coef = Y.shape[1] * (n_out + 1)
            # [coef, intercept, (rank, singular values)] travel in one buffer.
            packed = np.zeros(n_coef + (1 + n_out if plan.wants_singular else 0))
            failure = None
            if lib.Get_rank() == 0:
                try:
                    solution = solve_least_squares(
                        stats, plan.alpha, fit_intercept=self.fit_intercept,
                        positive=self.positive, singular_values=plan.wants_singular,
                    )
                    packed[: n_coef - Y.shape[1]] = solution.coef.ravel()
                    packed[n_coef - Y.shape[1] : n_coef] = solution.intercept
                    if plan.wants_singular:
                        packed[n_coef] = solution.rank
                        packed[n_coef + 1 :] = solution.singular
                except Exception as exc:  # noqa: BLE001 - agreed below
                    failure = exc
            agree(failure, lib, "solving the normal equations")
            # Only rank 0 solves: reductions may round differently on each rank,
            # and the model must be bit-identical everywhere.
            bcast_array(packed, lib)
            timings["solve"] = time.perf_counter() - tic

        coef = packed[: n_coef - Y.shape[1]].reshape(Y.shape[1], n_out)
        intercept = packed[n_coef - Y.shape[1] : n_coef]
        if y.ndim == 1:
            coef, intercept = coef[0], float(intercept[0])
        extra = {}
        if plan.wants_singular:
            extra = {"rank_": int(packed[n_coef]), "singular_": packed[n_coef + 1 :]}
        self.estimator_ = plan.build(coef, intercept, extra)
        self.n_rows_ = stats.count
        self.n_iter_ = 1  # one reduction and one direct solve, whatever max_iter says
        self.timings_ = timings
        return self

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
        from sklearn.linear_model import LinearRegression as Model

        model = Model(**self._sklearn_params())

        def build(coef, intercept, extra):
            return _fitted_linear(model, coef, intercept, n_features, extra)

        return _Plan(None, n_features, 0.0, True, build)


class Ridge(_ExactLinearModel):
    """Ridge regression over rows split across MPI ranks, exactly.

    Solves the same problem as :class:`sklearn.linear_model.Ridge` on all
    ranks' rows together: ``‖y - Xw - c‖² + alpha ‖w‖²`` (``alpha`` is
    *not* rescaled by the number of rows or ranks).  ``solver``,
    ``max_iter``, ``tol`` and ``random_state`` are recorded on
    ``estimator_`` but the exact method always solves the normal equations.

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
        from sklearn.linear_model import Ridge as Model

        model = Model(**self._sklearn_params())
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
        from sklearn.linear_model import LinearRegression as OLS
        from sklearn.linear_model import Ridge as RidgeModel
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import PolynomialFeatures

        # The feature map depends only on the number of features, so fitting
        # it on one row of zeros gives every rank the same map.
        poly = PolynomialFeatures(self.degree, interaction_only=self.interaction_only, include_bias=False)
        poly.fit(np.zeros((1, n_features)))
        common = dict(fit_intercept=self.fit_intercept, positive=self.positive)
        model = RidgeModel(alpha=self.alpha, **common) if self.alpha > 0 else OLS(**common)
        n_out = int(poly.n_output_features_)

        def build(coef, intercept, extra):
            if self.alpha > 0:
                model.n_iter_ = None
                model.solver_ = "lbfgs" if self.positive else "cholesky"
            return make_pipeline(poly, _fitted_linear(model, coef, intercept, n_out, extra))

        return _Plan(poly.transform, n_out, float(self.alpha), self.alpha == 0, build)
