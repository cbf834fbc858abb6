"""Exact linear, polynomial, ridge, lasso and elastic-net regression across MPI ranks.

The estimators here are scikit-learn glue around :mod:`mpitrain.stats`:
each rank accumulates the least-squares sufficient statistics of its own
rows, the ranks pool them with two reductions, rank 0 solves the d×d problem
and broadcasts the answer, and every rank builds the same plain
scikit-learn estimator in ``estimator_``.  The result is scikit-learn's on
all rows together, up to rounding (for lasso and elastic net, up to the
coordinate-descent tolerance).

The exact method holds d×d matrices, so it refuses, on every rank and before
allocating, more than :data:`~mpitrain.stats.MAX_GRAM_FEATURES` features
or more memory than the rank has (``MemAvailable`` shared among the ranks of
a node, or the environment variable ``MPITRAIN_MEMORY_LIMIT`` in bytes).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from numbers import Integral, Real
from typing import Any

import numpy as np
from sklearn import linear_model as _sk
from sklearn.base import RegressorMixin, clone

from mpitrain.base import DistributedEstimator
from mpitrain.comm import (
    bcast_array,
    bcast_object,
    collective_check,
    require_same,
)
from mpitrain.stats import (
    LinearStatistics,
    PolynomialMap,
    check_gram_fits,
    check_model_rank,
    check_statistics,
    least_squares_surrogate,
    local_statistics,
    pool_and_solve,
    solve_least_squares,
)
from mpitrain.utils.fixes import Interval, StrOptions

__all__ = [
    "LinearRegression",
    "Ridge",
    "PolynomialRegression",
    "Lasso",
    "ElasticNet",
]


#: The ``strategy`` parameter: "exact" pools sufficient statistics (the answer
#: of scikit-learn on all rows); "average" averages per-rank fits (see
#: :mod:`mpitrain.linear_model._averaging`).
_STRATEGY = {"strategy": [StrOptions({"exact", "average"})]}


# ----------------------------------------------------------------------------
# Estimators


class _ExactLinearModel(RegressorMixin, DistributedEstimator):
    """Shared fit of the exact least-squares estimators (prediction: the base's)."""

    _own_params = ("comm", "strategy")
    _target = "continuous"
    _multi_output = True

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
        with self._fitting(X, y, sample_weight) as fit:
            X, y, w, lib = fit.X, fit.y, fit.sample_weight, fit.comm
            Y = y.reshape(-1, 1) if y.ndim == 1 else y
            plan = self._plan(X.shape[1])
            if self.strategy == "average":
                self._fit_average(plan, X, y, w, lib)
                self.n_rows_ = fit.rows.n_rows
                return self
            check_gram_fits(lib, plan.n_out, Y.shape[1])
            tic = time.perf_counter()
            with collective_check(lib, "computing local statistics"):
                local = local_statistics(
                    X,
                    Y,
                    w,
                    transform=plan.transform,
                    n_features=plan.n_out,
                    first_row=fit.rows.offset,  # a bad value's row in all ranks' rows
                )
            local_seconds = time.perf_counter() - tic
            self._fit_pooled(local, lib, plan, multi_output=y.ndim > 1)
            self.timings_["local_compute"] = local_seconds
        return self

    def _fit_average(self, plan: _Plan, X, y, w, lib) -> None:
        """The ``average`` strategy: local scikit-learn fits, averaged. Collective over ``lib``."""
        from mpitrain.linear_model._averaging import fit_average

        require_same(lib, "targets", 1 if y.ndim == 1 else y.shape[1])
        if y.ndim > 1 and y.shape[1] > 1:
            raise ValueError(
                "strategy='average' fits one target; use strategy='exact' for several"
            )
        tic = time.perf_counter()
        self.estimator_, self.averaging_ = fit_average(
            plan.unfitted, X, y.ravel(), w, lib
        )
        self.n_iter_ = 1
        self.timings_ = {"fit_and_average": time.perf_counter() - tic}

    def fit_statistics(
        self,
        local: LinearStatistics,
        *,
        multi_output: bool = False,
        every_rank: bool = True,
    ):
        """Fit from this rank's sufficient statistics, accumulated elsewhere.

        For rows that never sit in memory at once: accumulate them block by
        block with :class:`mpitrain.stats.StatisticsAccumulator`, using
        the feature map of :meth:`feature_map`, then call this.  Collective
        over ``comm``.

        Parameters
        ----------
        local : LinearStatistics
            This rank's statistics (of no rows, on a rank that has none).
        multi_output : bool, default=False
            Keep 2-D coefficients even for a single target.
        every_rank : bool, default=True
            Every rank calls this and gets the fitted model.  ``False``: rank
            0 alone calls it and keeps the model, while the other ranks call
            :func:`mpitrain.stats.contribute_statistics` with their
            statistics instead (no model, and no scikit-learn, there).

        Returns
        -------
        self : object
        """

        def prepare() -> _Plan:
            if self.strategy != "exact":
                raise ValueError(
                    "fit_statistics() pools sufficient statistics: it needs strategy='exact'"
                )
            return self._plan(local.n_inputs)

        if every_rank:
            # The same parameters on every rank: any failure here is everyone's.
            plan = prepare()
        with self._fit_comm(every_rank) as lib:
            if not every_rank:
                # Rank 0 alone: its failure must reach the other ranks.
                plan = check_model_rank(lib, keeps_model=True, prepare=prepare)
            check_statistics(local, lib, plan.n_out)
            self.n_features_in_ = local.n_inputs
            self._fit_pooled(
                local, lib, plan, multi_output=multi_output, every_rank=every_rank
            )
        return self

    def feature_map(self, n_inputs: int):
        """The row-local feature map (or ``None``) and its output width. Local."""
        plan = self._plan(n_inputs)
        return plan.transform, plan.n_out

    def _fit_pooled(
        self,
        local: LinearStatistics,
        lib,
        plan: _Plan,
        multi_output: bool,
        every_rank: bool = True,
    ) -> None:
        """Pool, solve on rank 0, broadcast (``every_rank``), build ``estimator_``. Collective over ``lib``."""
        n_targets = local.mean.size - local.n_features
        n_out = plan.n_out
        n_coef = n_targets * n_out

        def solve(stats: LinearStatistics) -> np.ndarray:
            # [coef, intercept, plan's extras] travel in one buffer.
            solution = plan.solve(stats)
            packed = np.zeros(n_coef + n_targets + plan.extra_size(n_targets))
            packed[:n_coef] = solution.coef.ravel()
            packed[n_coef : n_coef + n_targets] = solution.intercept
            packed[n_coef + n_targets :] = solution.extra
            return packed

        def build(packed: np.ndarray) -> Any:
            coef = packed[:n_coef].reshape(n_targets, n_out)
            intercept = packed[n_coef : n_coef + n_targets]
            if not multi_output and n_targets == 1:
                coef, intercept = coef[0], float(intercept[0])
            return plan.build(coef, intercept, packed[n_coef + n_targets :])

        if every_rank:
            pooled = pool_and_solve(local, lib, solve, plan.what)
        else:
            # Rank 0 alone builds the model too inside the agreement: a failure
            # there must reach the other ranks before they go on.
            # The default step name: the other ranks' messages must be the same.
            pooled = pool_and_solve(local, lib, lambda stats: build(solve(stats)))
        timings: dict[str, float] = {"local_compute": 0.0, **pooled.timings}
        caught = [(w.category, str(w.message)) for w in pooled.caught]
        if every_rank:
            tic = time.perf_counter()
            packed = pooled.solution
            if packed is None:
                packed = np.zeros(n_coef + n_targets + plan.extra_size(n_targets))
            bcast_array(packed, lib)
            # The solver's warnings (e.g. ConvergenceWarning) reach every rank's user.
            caught = bcast_object(caught, lib)
            timings["solve"] += time.perf_counter() - tic
            self.estimator_ = build(packed)
        else:
            self.estimator_ = pooled.solution
        for category, message in caught:
            warnings.warn(message, category, stacklevel=3)
        self.n_rows_ = pooled.statistics.count
        # Direct solves: one reduction and one solve, whatever max_iter says.
        n_iter = getattr(self.estimator_, "n_iter_", None)
        self.n_iter_ = 1 if n_iter is None else n_iter
        self.timings_ = timings

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags


@dataclass
class _Solution:
    """What a plan's solver returns on rank 0; broadcast as one buffer."""

    coef: np.ndarray  # (n_targets, n_out)
    intercept: np.ndarray  # (n_targets,)
    extra: np.ndarray  # 1-D, plan.extra_size(n_targets) numbers for build


def _no_extra(n_targets: int) -> int:
    return 0


@dataclass
class _Plan:
    """What a model needs to fit: the row map, the solver, and how to finish.

    ``solve`` runs on rank 0 only, from the pooled statistics (pure: no
    communication); ``build`` runs on every rank with the broadcast
    coefficients, intercepts and extras and returns the scikit-learn model.
    """

    transform: Callable[[np.ndarray], np.ndarray] | None
    n_out: int
    solve: Callable[[LinearStatistics], _Solution]
    build: Callable[[np.ndarray, Any, np.ndarray], Any]
    extra_size: Callable[[int], int] = field(default=_no_extra)
    what: str = "solving the normal equations"
    #: The unfitted scikit-learn estimator (or Pipeline) with the user's parameters.
    unfitted: Any = None


def _least_squares_solver(
    alpha, *, fit_intercept: bool, positive: bool, singular_values: bool
):
    """A plan's ``solve``: the direct least-squares solution, optionally with singular values."""

    def solve(stats: LinearStatistics) -> _Solution:
        s = solve_least_squares(
            stats,
            alpha,
            fit_intercept=fit_intercept,
            positive=positive,
            singular_values=singular_values,
        )
        extra = (
            np.concatenate([[s.rank], s.singular]) if singular_values else np.empty(0)
        )
        return _Solution(s.coef, s.intercept, extra)

    return solve


def _singular_attributes(extra: np.ndarray) -> dict:
    """``rank_`` and ``singular_`` from the extras of a solver with ``singular_values``."""
    return {"rank_": int(extra[0]), "singular_": extra[1:]}


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
    strategy : {"exact", "average"}, default="exact"
        "exact" pools sufficient statistics: scikit-learn's answer on all
        rows.  "average" fits scikit-learn on each rank's rows and averages
        coefficients weighted by row weight; Ridge's ``alpha`` is scaled by
        the rank's share of the weight (``alpha_r = alpha·W_r/W``, since the
        loss is a sum over rows), Lasso's and ElasticNet's are not (their
        loss is a mean).  See :mod:`mpitrain.linear_model._averaging`.
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

    _sklearn_class = _sk.LinearRegression
    _parameter_constraints = {
        **_sk.LinearRegression._parameter_constraints,
        "comm": "no_validation",
        **_STRATEGY,
    }

    def __init__(
        self,
        *,
        fit_intercept=True,
        copy_X=True,
        tol=1e-6,
        n_jobs=None,
        positive=False,
        strategy="exact",
        comm=None,
    ):
        self.strategy = strategy
        self.fit_intercept = fit_intercept
        self.copy_X = copy_X
        self.tol = tol
        self.n_jobs = n_jobs
        self.positive = positive
        self.comm = comm

    def _plan(self, n_features):
        model = _sk.LinearRegression(**self._sklearn_params())

        def build(coef, intercept, extra):
            return _fitted_linear(
                model, coef, intercept, n_features, _singular_attributes(extra)
            )

        solve = _least_squares_solver(
            0.0,
            fit_intercept=self.fit_intercept,
            positive=self.positive,
            singular_values=True,
        )
        return _Plan(
            None,
            n_features,
            solve,
            build,
            extra_size=lambda t: 1 + n_features,
            unfitted=clone(model),
        )


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
    strategy : {"exact", "average"}, default="exact"
        "exact" pools sufficient statistics: scikit-learn's answer on all
        rows.  "average" fits scikit-learn on each rank's rows and averages
        coefficients weighted by row weight; Ridge's ``alpha`` is scaled by
        the rank's share of the weight (``alpha_r = alpha·W_r/W``, since the
        loss is a sum over rows), Lasso's and ElasticNet's are not (their
        loss is a mean).  See :mod:`mpitrain.linear_model._averaging`.
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

    _sklearn_class = _sk.Ridge
    _parameter_constraints = {
        **_sk.Ridge._parameter_constraints,
        "comm": "no_validation",
        **_STRATEGY,
    }

    def __init__(
        self,
        alpha=1.0,
        *,
        fit_intercept=True,
        copy_X=True,
        max_iter=None,
        tol=1e-4,
        solver="auto",
        positive=False,
        random_state=None,
        strategy="exact",
        comm=None,
    ):
        self.strategy = strategy
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
            return _fitted_linear(model, coef, intercept, n_features, {})

        solve = _least_squares_solver(
            alpha,
            fit_intercept=self.fit_intercept,
            positive=self.positive,
            singular_values=False,
        )
        return _Plan(None, n_features, solve, build, unfitted=clone(model))


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
    strategy : {"exact", "average"}, default="exact"
        "exact" pools sufficient statistics: scikit-learn's answer on all
        rows.  "average" fits scikit-learn on each rank's rows and averages
        coefficients weighted by row weight; Ridge's ``alpha`` is scaled by
        the rank's share of the weight (``alpha_r = alpha·W_r/W``, since the
        loss is a sum over rows), Lasso's and ElasticNet's are not (their
        loss is a mean).  See :mod:`mpitrain.linear_model._averaging`.
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
        **_STRATEGY,
    }

    def __init__(
        self,
        degree=2,
        *,
        interaction_only=False,
        alpha=0.0,
        fit_intercept=True,
        positive=False,
        strategy="exact",
        comm=None,
    ):
        self.strategy = strategy
        self.degree = degree
        self.interaction_only = interaction_only
        self.alpha = alpha
        self.fit_intercept = fit_intercept
        self.positive = positive
        self.comm = comm

    def _unfitted_estimator(self):
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import PolynomialFeatures

        common = dict(fit_intercept=self.fit_intercept, positive=self.positive)
        # Called by hasattr before fit, so also with parameters not yet validated.
        penalised = isinstance(self.alpha, Real) and self.alpha > 0
        return make_pipeline(
            PolynomialFeatures(
                self.degree, interaction_only=self.interaction_only, include_bias=False
            ),
            _sk.Ridge(alpha=self.alpha, **common)
            if penalised
            else _sk.LinearRegression(**common),
        )

    def _plan(self, n_features):
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import PolynomialFeatures

        # The feature map depends only on the number of features, so every
        # rank builds the same one; scikit-learn's, fitted on a row of zeros,
        # goes into the saved pipeline (a test checks the columns agree).
        poly = PolynomialFeatures(
            self.degree, interaction_only=self.interaction_only, include_bias=False
        )
        poly.fit(np.zeros((1, n_features)))
        transform = PolynomialMap(n_features, self.degree, self.interaction_only)
        common = dict(fit_intercept=self.fit_intercept, positive=self.positive)
        model = (
            _sk.Ridge(alpha=self.alpha, **common)
            if self.alpha > 0
            else _sk.LinearRegression(**common)
        )
        n_out = transform.n_output

        unpenalised = self.alpha == 0

        def build(coef, intercept, extra):
            if not unpenalised:
                model.n_iter_ = None
                model.solver_ = "lbfgs" if self.positive else "cholesky"
            attributes = _singular_attributes(extra) if unpenalised else {}
            return make_pipeline(
                poly, _fitted_linear(model, coef, intercept, n_out, attributes)
            )

        solve = _least_squares_solver(
            float(self.alpha),
            fit_intercept=self.fit_intercept,
            positive=self.positive,
            singular_values=unpenalised,
        )
        return _Plan(
            transform,
            n_out,
            solve,
            build,
            extra_size=(lambda t: 1 + n_out) if unpenalised else _no_extra,
            unfitted=make_pipeline(clone(poly), clone(model)),
        )


def _coordinate_descent_solver(
    template, *, fit_intercept: bool, warm_coef: np.ndarray | None
):
    """A plan's ``solve``: scikit-learn's coordinate descent on the d-row surrogate.

    The objective ``(1/2W) Σ w (y - x·b - c)² + alpha·penalty(b)`` depends on
    the rows only through the pooled scatter; on the surrogate rows
    ``(R, ỹ)`` of :func:`~mpitrain.stats.least_squares_surrogate` (``m``
    of them) it is ``(W/m) [(1/2m) ‖ỹ - R b‖² + (alpha W/m)·penalty(b)] + const``,
    so ``template`` (an unfitted ``Lasso`` or ``ElasticNet``) fitted there
    without intercept, with ``alpha`` times ``W/m``, has the same minimiser.
    Extras: ``n_iter`` per target, then the duality gap per target in the
    units of the objective above (scikit-learn's ``dual_gap_``).
    """

    def solve(stats: LinearStatistics) -> _Solution:
        surrogate = least_squares_surrogate(stats, fit_intercept=fit_intercept)
        m, d = surrogate.design.shape
        t = surrogate.target.shape[1]
        coef = np.zeros((t, d))
        n_iter = np.zeros(t)
        gap = np.zeros(t)
        # m == 0: the loss is flat in b (e.g. one row with an intercept), so the penalty alone picks b = 0.
        if m > 0:
            model = clone(template).set_params(
                alpha=template.alpha * stats.weight / m,
                fit_intercept=False,
                warm_start=warm_coef is not None,
            )
            if warm_coef is not None:
                model.coef_ = (
                    warm_coef.reshape(t, d).copy()
                    if t > 1
                    else warm_coef.reshape(d).copy()
                )
            model.fit(
                surrogate.design, surrogate.target if t > 1 else surrogate.target[:, 0]
            )
            coef[:] = np.reshape(model.coef_, (t, d))
            n_iter[:] = np.ravel(model.n_iter_)
            gap[:] = np.ravel(model.dual_gap_) * m / stats.weight
        intercept = stats.y_mean - coef @ stats.x_mean if fit_intercept else np.zeros(t)
        return _Solution(coef, intercept, np.concatenate([n_iter, gap]))

    return solve


class _ExactCoordinateDescent(_ExactLinearModel):
    """Shared plan of :class:`Lasso` and :class:`ElasticNet`."""

    _sklearn_class: type

    def _plan(self, n_features):
        if not isinstance(self.precompute, bool):
            raise ValueError(
                "precompute must be True or False: the exact method already pools the Gram "
                "matrix of all ranks' rows, so a precomputed one cannot be used"
            )
        template = self._sklearn_class(**self._sklearn_params())
        warm_coef = None
        previous = getattr(self, "estimator_", None)
        if (
            self.warm_start
            and previous is not None
            and np.size(previous.coef_) % n_features == 0
        ):
            warm_coef = np.asarray(previous.coef_, dtype=np.float64)

        def build(coef, intercept, extra):
            t = extra.size // 2
            model = self._sklearn_class(**self._sklearn_params())
            if t == 1:
                # scikit-learn keeps 1-D coefficients for a single target, even from a 2-D y.
                coef, intercept = np.ravel(coef), float(np.ravel(intercept)[0])
                attributes = {"n_iter_": int(extra[0]), "dual_gap_": float(extra[1])}
            else:
                attributes = {
                    "n_iter_": [int(k) for k in extra[:t]],
                    "dual_gap_": extra[t:].copy(),
                }
            return _fitted_linear(model, coef, intercept, n_features, attributes)

        solve = _coordinate_descent_solver(
            template, fit_intercept=self.fit_intercept, warm_coef=warm_coef
        )
        return _Plan(
            None,
            n_features,
            solve,
            build,
            extra_size=lambda t: 2 * t,
            what="coordinate descent on the pooled Gram matrix",
            unfitted=clone(template),
        )


_CD_NOTES = """
    The exact method minimises scikit-learn's objective on all ranks' rows,
    ``(1 / (2 W)) Σ w (y - Xb - c)² + penalty(b)``, with ``W`` the sum of the
    weights (the number of rows when unweighted: scikit-learn rescales
    ``sample_weight`` to sum to ``n_samples``, which leaves this unchanged).
    The objective depends on the rows only through the pooled Gram matrix,
    so rank 0 factors it, ``XᵀWX = RᵀR``, into a surrogate problem of at
    most ``d`` rows with the same minimiser, runs scikit-learn's own
    coordinate descent there (without intercept, ``alpha`` rescaled by
    ``W / m`` for ``m`` surrogate rows), and broadcasts the coefficients;
    the intercept is ``ȳ - x̄·b``.  Coefficients and the zero pattern are
    scikit-learn's on all rows, to the coordinate-descent tolerance.

    ``tol`` and ``max_iter`` keep their meaning but apply to the surrogate:
    one iteration is one sweep over the ``d`` coordinates (costing O(d²)
    instead of O(n·d)), and the duality gap is compared with ``tol`` times
    the weighted sum of squares of ``y`` that the least-squares fit explains
    (scikit-learn uses all of it), so the stopping test is at least as
    strict as scikit-learn's (equally strict when ``X`` fits ``y`` exactly,
    e.g. with more features than rows), but iterates and ``n_iter_`` are not
    identical; the optimum is.  Warnings from the solver (``alpha=0``,
    ``ConvergenceWarning``, whose gap and tolerance are in surrogate units)
    are raised on every rank.

    Each rank holds a few (d+1)×(d+1) matrices: more than
    :data:`mpitrain.stats.MAX_GRAM_FEATURES` features, or more memory
    than the rank has, is refused on every rank before allocating, with a
    ``MemoryError`` that names the memory needed; use ``strategy="average"``
    then."""

_CD_PARAMETERS = """    fit_intercept : bool, default=True
    precompute : bool, default=False
        Passed to the solver on the surrogate (Gram or residual updates; the
        same optimum either way).  A precomputed Gram array is refused:
        the exact method pools the Gram matrix itself.
    copy_X : bool, default=True
        Recorded on ``estimator_``; the input is never modified.
    max_iter : int, default=1000
        Sweeps of coordinate descent on the surrogate (see above).
    tol : float, default=1e-4
        Duality-gap tolerance on the surrogate (see above).
    warm_start : bool, default=False
        Start from the coefficients of the previous ``fit`` (kept in
        ``estimator_``, the same on every rank).
    positive : bool, default=False
        Constrain coefficients to be non-negative.
    random_state : int, RandomState instance or None, default=None
        For ``selection="random"``; only rank 0 draws, so every rank gets
        the same model.
    selection : {{"cyclic", "random"}}, default="cyclic"
    strategy : {{"exact", "average"}}, default="exact"
        "exact" pools sufficient statistics: scikit-learn's answer on all
        rows.  "average" fits scikit-learn on each rank's rows and averages
        coefficients weighted by row weight; Ridge's ``alpha`` is scaled by
        the rank's share of the weight (``alpha_r = alpha·W_r/W``, since the
        loss is a sum over rows), Lasso's and ElasticNet's are not (their
        loss is a mean).  See :mod:`mpitrain.linear_model._averaging`.
    comm : mpi4py.MPI.Intracomm, default=None
        Communicator of the ranks that share the rows; ``None`` means
        ``COMM_WORLD``.  Resolved in ``fit``, never stored on ``estimator_``.

    Attributes
    ----------
    estimator_ : sklearn.linear_model.{name}
        The fitted model, identical on every rank, with ``coef_``,
        ``intercept_``, ``n_features_in_``, ``n_iter_`` (sweeps on the
        surrogate) and ``dual_gap_`` (the surrogate's duality gap, in the
        units of the objective above).
    n_features_in_ : int
    n_rows_ : int
        Rows of all ranks together.
    n_iter_ : int or list of int
        As ``estimator_.n_iter_``.
    timings_ : dict
        Seconds spent in local computation, communication and the solve.
"""


class Lasso(_ExactCoordinateDescent):
    __doc__ = f"""Lasso (L1-penalised least squares) over rows split across MPI ranks, exactly.

    Same parameters and optimum as :class:`sklearn.linear_model.Lasso`
    fitted on all ranks' rows together, with
    ``penalty(b) = alpha ‖b‖₁``; ``estimator_`` is that fitted scikit-learn
    estimator (it pickles and predicts without MPI).  ``fit`` is collective
    over ``comm``: every rank calls it with its own rows (possibly none).
{_CD_NOTES}

    Parameters
    ----------
    alpha : float, default=1.0
        Weight of the L1 penalty, as in scikit-learn (not rescaled by the
        number of rows or ranks).
{_CD_PARAMETERS.format(name="Lasso")}"""

    _sklearn_class = _sk.Lasso
    _parameter_constraints = {
        **_sk.Lasso._parameter_constraints,
        "comm": "no_validation",
        **_STRATEGY,
    }

    def __init__(
        self,
        alpha=1.0,
        *,
        fit_intercept=True,
        precompute=False,
        copy_X=True,
        max_iter=1000,
        tol=1e-4,
        warm_start=False,
        positive=False,
        random_state=None,
        selection="cyclic",
        strategy="exact",
        comm=None,
    ):
        self.strategy = strategy
        self.alpha = alpha
        self.fit_intercept = fit_intercept
        self.precompute = precompute
        self.copy_X = copy_X
        self.max_iter = max_iter
        self.tol = tol
        self.warm_start = warm_start
        self.positive = positive
        self.random_state = random_state
        self.selection = selection
        self.comm = comm


class ElasticNet(_ExactCoordinateDescent):
    __doc__ = f"""Elastic net (L1 and L2 penalties) over rows split across MPI ranks, exactly.

    Same parameters and optimum as :class:`sklearn.linear_model.ElasticNet`
    fitted on all ranks' rows together, with
    ``penalty(b) = alpha l1_ratio ‖b‖₁ + ½ alpha (1 - l1_ratio) ‖b‖²``;
    ``estimator_`` is that fitted scikit-learn estimator.  ``fit`` is
    collective over ``comm``: every rank calls it with its own rows
    (possibly none).
{_CD_NOTES}

    Parameters
    ----------
    alpha : float, default=1.0
        Weight of the penalty, as in scikit-learn.
    l1_ratio : float, default=0.5
        Share of the L1 penalty, in [0, 1].
{_CD_PARAMETERS.format(name="ElasticNet")}"""

    _sklearn_class = _sk.ElasticNet
    _parameter_constraints = {
        **_sk.ElasticNet._parameter_constraints,
        "comm": "no_validation",
        **_STRATEGY,
    }

    def __init__(
        self,
        alpha=1.0,
        *,
        l1_ratio=0.5,
        fit_intercept=True,
        precompute=False,
        max_iter=1000,
        copy_X=True,
        tol=1e-4,
        warm_start=False,
        positive=False,
        random_state=None,
        selection="cyclic",
        strategy="exact",
        comm=None,
    ):
        self.strategy = strategy
        self.alpha = alpha
        self.l1_ratio = l1_ratio
        self.fit_intercept = fit_intercept
        self.precompute = precompute
        self.max_iter = max_iter
        self.copy_X = copy_X
        self.tol = tol
        self.warm_start = warm_start
        self.positive = positive
        self.random_state = random_state
        self.selection = selection
        self.comm = comm
