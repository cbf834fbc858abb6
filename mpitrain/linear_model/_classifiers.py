"""Exact logistic regression and linear SVM across MPI ranks.

Both problems are smooth sums over rows plus an L2 penalty, so the ranks can
run one quasi-Newton method together: rank 0 runs L-BFGS-B, and each time it
needs the objective it sends the point to every rank, every rank evaluates
the loss and gradient of its own rows, and one reduction sums them on rank 0
(:func:`mpitrain.comm.minimize_on_root`).  The other ranks only evaluate, so
the iterates, the number of iterations and the stopping decision are rank
0's alone, even where ranks' floating-point arithmetic differs (nodes with
other CPUs and BLAS kernels); the solution is then broadcast, and the
optimum is scikit-learn's on all rows together.

The module has two layers:

* pure math (no MPI): :func:`binomial_loss_gradient`,
  :func:`multinomial_loss_gradient` and :func:`squared_hinge_loss_gradient`
  give the weighted *sums* over a block of rows of the pointwise loss and
  its gradient, for given coefficients;
* estimator glue: :class:`LogisticRegression` and :class:`LinearSVC`, which
  agree on the classes and weights globally, drive L-BFGS-B on rank 0
  through :func:`mpitrain.comm.minimize_on_root` and build a plain fitted
  scikit-learn estimator in ``estimator_``.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import optimize, sparse
from scipy.special import expit
from sklearn import linear_model as _sk_linear
from sklearn import svm as _sk_svm
from sklearn.base import ClassifierMixin
from sklearn.exceptions import ConvergenceWarning

from mpitrain.base import DistributedEstimator
from mpitrain.comm import minimize_on_root
from mpitrain.linear_model._averaging import fit_average
from mpitrain.utils.fixes import Hidden, StrOptions, check_optimize_result
from mpitrain.utils.multiclass import (
    GlobalClasses,
    agree_classes,
    class_weights,
)
from mpitrain.utils.validation import FLOAT_DTYPES

if TYPE_CHECKING:  # pragma: no cover
    from mpi4py.MPI import Intracomm
    from scipy.optimize import OptimizeResult

__all__ = [
    "binomial_loss_gradient",
    "multinomial_loss_gradient",
    "squared_hinge_loss_gradient",
    "LogisticRegression",
    "LinearSVC",
]


# scikit-learn's L-BFGS-B settings for LogisticRegression (``_logistic.py``).
_LBFGS_FTOL = 64 * np.finfo(float).eps
_LBFGS_MAXLS = 50


# ----------------------------------------------------------------------------
# Pure math: sums over a block of rows, no MPI.
#
# Each sum needs two products with X per evaluation: z = X w, then the
# gradient Xᵀ r, where r depends on z row by row.  For dense X the rows are
# taken in blocks of about _BLOCK_BYTES: a block is read from memory once
# for its z and then used again for its share of Xᵀ r while it is still in
# cache, with the pointwise work done on the block in between, into buffers
# of one block's length (no array as long as the rows is made per call).
# Sparse X keeps the two whole products (its rows are cheap to re-read).

#: Bytes of X per block of rows.  At 100 features, 1-4 MB were measured
#: best (2 MB: 2,600 rows; docs/performance.md): small enough to stay in the
#: cache, large enough that numpy's cost per call is small against the work.
_BLOCK_BYTES = 2 << 20
#: Fewest rows per block, for narrow data, where that cost per call dominates.
_MIN_BLOCK_ROWS = 512


def _split_coef(coef: np.ndarray, n_features: int, fit_intercept: bool):
    """``(weights, intercept)`` views of one coefficient row or matrix."""
    if fit_intercept:
        return coef[..., :n_features], coef[..., n_features]
    return coef[..., :n_features], np.zeros(coef.shape[:-1])


def _block_rows(n_rows: int, n_features: int) -> int:
    """Rows per block of the fused kernels (at least 1). Pure."""
    rows = max(_MIN_BLOCK_ROWS, _BLOCK_BYTES // (8 * max(n_features, 1)))
    return max(1, min(rows, n_rows))


def _row_blocks(X: np.ndarray, block_rows: int) -> Iterator[tuple[slice, np.ndarray]]:
    """``(rows, X[rows])`` for consecutive blocks of rows, each block C-ordered float64. Pure.

    A block of another dtype (float32) or order is copied into one reused
    buffer, exactly (float32 to float64 loses nothing): ``X`` itself is
    never converted whole, and the copy is already in cache for both
    products.
    """
    n_rows, n_features = X.shape
    buffer = None
    for start in range(0, n_rows, block_rows):
        rows = slice(start, min(start + block_rows, n_rows))
        block = X[rows]
        if block.dtype != np.float64 or not block.flags.c_contiguous:
            if buffer is None:
                buffer = np.empty((block_rows, n_features))
            copy = buffer[: block.shape[0]]
            np.copyto(copy, block)
            block = copy
        yield rows, block


# numpy >= 2.0's vecdot (one dot product per row) reads a block from memory
# at about the speed of a plain sum; BLAS's dgemv (X @ w) measured 2.4 times
# slower from memory here (OpenBLAS 0.3.31, docs/performance.md), though
# faster on a block already in cache, which is where Xᵀ r runs.
if hasattr(np, "vecdot"):

    def _row_dots(block: np.ndarray, w: np.ndarray, out: np.ndarray) -> None:
        """``out[i] = block[i] · w``. Pure."""
        np.vecdot(block, w, out=out)

else:  # pragma: no cover - numpy < 2.0 (the minimum-versions run)

    def _row_dots(block: np.ndarray, w: np.ndarray, out: np.ndarray) -> None:
        """``out[i] = block[i] · w``. Pure."""
        np.einsum("ij,j->i", block, w, out=out)


_blas_threads = None  # threadpoolctl's controller, made on first use (5 ms)


def _one_blas_thread() -> AbstractContextManager[Any]:
    """A context that runs BLAS on one thread, for the block products. Local.

    A block's product is tens of microseconds of work: waking a rank's
    other BLAS threads for each one costs more than they save (4-8 times
    slower at 1,000 features on 2 threads, measured here).
    """
    global _blas_threads
    if _blas_threads is None:
        from threadpoolctl import ThreadpoolController

        _blas_threads = ThreadpoolController()
    return _blas_threads.limit(limits=1, user_api="blas")


#: Up to this many classes (or problems) the block products ``W Xᵀ`` are one
#: row-dot pass per class (the first from memory, the others from cache);
#: above it one matrix product, which measured faster from 20 classes on.
_ROW_DOTS_UP_TO = 10


def _block_products(block: np.ndarray, W: np.ndarray, out: np.ndarray) -> None:
    """``out[j, i] = W[j] · block[i]`` (``out`` of shape (n_classes, rows)). Pure."""
    if W.shape[0] <= _ROW_DOTS_UP_TO:
        for j in range(W.shape[0]):
            _row_dots(block, W[j], out[j])
    else:
        np.matmul(W, block.T, out=out)


def binomial_loss_gradient(
    coef: np.ndarray, X, y: np.ndarray, weights: np.ndarray, fit_intercept: bool = True
) -> tuple[float, np.ndarray]:
    """Weighted sum of the half binomial loss of some rows, and its gradient.

    ``Σ_i weights_i · (log(1 + exp(z_i)) − y_i z_i)`` with ``z = X w + b``:
    scikit-learn's ``HalfBinomialLoss``, summed rather than averaged.
    Dense ``X`` (float64 or float32, any order) is read once per call, in
    blocks (module comment above), with one exponential per row:
    ``e = exp(−|z|)`` gives ``log(1 + exp(z)) = max(z, 0) + log1p(e)`` and
    the sigmoid ``1 / (1 + e)`` (``z ≥ 0``) or ``e / (1 + e)``, so neither
    overflows at any ``z``.  Local: no communication.

    Parameters
    ----------
    coef : ndarray of shape (n_features + fit_intercept,)
        ``w`` followed by the intercept ``b`` if ``fit_intercept``.
    X : {ndarray, sparse matrix} of shape (n_rows, n_features)
    y : ndarray of shape (n_rows,)
        Targets in {0, 1} (1 for the positive class, ``classes_[1]``).
    weights : ndarray of shape (n_rows,)
        Row weights (sample weight times class weight).
    fit_intercept : bool, default=True

    Returns
    -------
    loss : float
    gradient : ndarray of the shape of ``coef``
    """
    if sparse.issparse(X):
        return _binomial_two_products(coef, X, y, weights, fit_intercept)
    X = np.asarray(X)
    n_rows, d = X.shape
    w, b = _split_coef(np.asarray(coef, dtype=np.float64), d, fit_intercept)
    block_rows = _block_rows(n_rows, d)
    z, e, t, r = np.empty((4, block_rows))
    nonnegative = np.empty(block_rows, dtype=bool)
    block_grad = np.empty(d)
    grad = np.zeros(d + int(fit_intercept))
    loss = 0.0
    with _one_blas_thread():
        for rows, block in _row_blocks(X, block_rows):
            m = block.shape[0]
            zb, eb, tb, rb, nb = z[:m], e[:m], t[:m], r[:m], nonnegative[:m]
            yb, sb = y[rows], weights[rows]
            _row_dots(block, w, zb)
            if fit_intercept:
                zb += b
            np.abs(zb, out=tb)
            np.negative(tb, out=tb)
            np.exp(tb, out=eb)
            # log(1 + exp(z)) − y z = log1p(e) + max(z, 0) − y z
            np.log1p(eb, out=tb)
            np.maximum(zb, 0.0, out=rb)
            tb += rb
            np.multiply(yb, zb, out=rb)
            tb -= rb
            loss += float(np.dot(sb, tb))
            # sigmoid(z) = max(e, [z ≥ 0]) / (1 + e): the numerator is 1 for z ≥ 0, e below
            np.greater_equal(zb, 0.0, out=nb)
            np.maximum(eb, nb, out=rb)
            np.add(eb, 1.0, out=tb)
            np.divide(rb, tb, out=rb)
            rb -= yb
            rb *= sb
            np.matmul(rb, block, out=block_grad)  # the block is still in cache
            grad[:d] += block_grad
            if fit_intercept:
                grad[d] += rb.sum()
    return loss, grad


def _binomial_two_products(coef, X, y, weights, fit_intercept):
    """:func:`binomial_loss_gradient` for sparse ``X``: two whole products. Pure."""
    d = X.shape[1]
    w, b = _split_coef(coef, d, fit_intercept)
    z = X @ w + b
    loss = float(weights @ (np.logaddexp(0.0, z) - y * z))
    residual = weights * (expit(z) - y)
    grad = np.empty_like(coef, dtype=np.float64)
    grad[:d] = X.T @ residual
    if fit_intercept:
        grad[d] = residual.sum()
    return loss, grad


def multinomial_loss_gradient(
    coef: np.ndarray,
    X,
    y_index: np.ndarray,
    weights: np.ndarray,
    fit_intercept: bool = True,
) -> tuple[float, np.ndarray]:
    """Weighted sum of the multinomial (softmax) loss of some rows, and its gradient.

    ``Σ_i weights_i · (logsumexp(Z_i) − Z_{i, y_i})`` with ``Z = X Wᵀ + b``:
    scikit-learn's ``HalfMultinomialLoss`` (one coefficient row per
    class), summed rather than averaged.  Dense ``X`` is read once per
    call, in blocks (module comment above), with one exponential per class
    and row, of ``Z`` shifted by its row maximum (so it never overflows).
    Local: no communication.

    Parameters
    ----------
    coef : ndarray of shape (n_classes, n_features + fit_intercept)
        One row per class: weights, then the intercept if ``fit_intercept``.
    X : {ndarray, sparse matrix} of shape (n_rows, n_features)
    y_index : ndarray of int of shape (n_rows,)
        Index of each row's class in ``0 .. n_classes - 1``.
    weights : ndarray of shape (n_rows,)
    fit_intercept : bool, default=True

    Returns
    -------
    loss : float
    gradient : ndarray of shape (n_classes, n_features + fit_intercept)
    """
    if sparse.issparse(X):
        return _multinomial_two_products(coef, X, y_index, weights, fit_intercept)
    X = np.asarray(X)
    n_rows, d = X.shape
    coef = np.asarray(coef, dtype=np.float64)
    k = coef.shape[0]
    W, b = _split_coef(coef, d, fit_intercept)
    W = np.ascontiguousarray(W)
    block_rows = _block_rows(n_rows, d)
    # Classes by rows, so that the reductions over the classes run along
    # whole rows of the buffers (numpy is slow along a short last axis).
    Z, P = np.empty((2, k, block_rows))
    top, norm, t = np.empty((3, block_rows))
    position = np.arange(block_rows)
    block_grad = np.empty((k, d))
    grad = np.zeros((k, d + int(fit_intercept)))
    loss = 0.0
    with _one_blas_thread():
        for rows, block in _row_blocks(X, block_rows):
            m = block.shape[0]
            Zb, Pb, topb, normb, tb = Z[:, :m], P[:, :m], top[:m], norm[:m], t[:m]
            sb = weights[rows]
            _block_products(block, W, Zb)
            if fit_intercept:
                Zb += b[:, None]
            own = y_index[rows] * block_rows + position[:m]  # Z[y_i, i], flat
            np.max(Zb, axis=0, out=topb)
            np.subtract(Zb, topb, out=Pb)
            np.exp(Pb, out=Pb)
            np.sum(Pb, axis=0, out=normb)
            # logsumexp(Z_i) − Z_{i, y_i} = log(norm_i) + top_i − Z_{i, y_i}
            np.log(normb, out=tb)
            tb += topb
            tb -= Z.ravel()[own]
            loss += float(np.dot(sb, tb))
            Pb /= normb
            P.ravel()[own] -= 1.0
            Pb *= sb
            np.matmul(Pb, block, out=block_grad)  # the block is still in cache
            grad[:, :d] += block_grad
            if fit_intercept:
                grad[:, d] += Pb.sum(axis=1)
    return loss, grad


def _multinomial_two_products(coef, X, y_index, weights, fit_intercept):
    """:func:`multinomial_loss_gradient` for sparse ``X``: two whole products. Pure."""
    d = X.shape[1]
    W, b = _split_coef(coef, d, fit_intercept)
    Z = np.asarray(X @ W.T) + b
    rows = np.arange(Z.shape[0])
    top = Z.max(axis=1, keepdims=True)  # shift by the row maximum: exp never overflows
    P = np.exp(Z - top)
    norm = P.sum(axis=1)
    loss = float(weights @ (np.log(norm) + top[:, 0] - Z[rows, y_index]))
    P /= norm[:, None]
    P[rows, y_index] -= 1.0
    P *= weights[:, None]
    grad = np.empty(coef.shape, dtype=np.float64)
    grad[:, :d] = np.asarray(X.T @ P).T
    if fit_intercept:
        grad[:, d] = P.sum(axis=0)
    return loss, grad


def squared_hinge_loss_gradient(
    coef: np.ndarray,
    X,
    Y: np.ndarray,
    cost: np.ndarray,
    intercept_scaling: float | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted squared hinge losses of some rows for one or more problems, and gradients.

    For each problem ``k``: ``Σ_i cost_ik · max(0, 1 − Y_ik (x̃_i · w̃_k))²``
    where ``x̃_i = [x_i, intercept_scaling]`` carries liblinear's synthetic
    intercept feature (omitted when ``intercept_scaling`` is ``None``).
    This is the data term of liblinear's ``L2R_L2LOSS_SVC`` primal; the
    penalty ``½‖w̃_k‖²`` is not included.  Dense ``X`` is read once per
    call, in blocks (module comment above).  Local: no communication.

    Parameters
    ----------
    coef : ndarray of shape (n_problems, n_features + has_intercept)
        ``w̃_k``: the weights, then the weight of the synthetic feature.
    X : {ndarray, sparse matrix} of shape (n_rows, n_features)
    Y : ndarray of shape (n_rows, n_problems)
        Labels in {−1, +1} for each problem.
    cost : ndarray of shape (n_rows, n_problems)
        ``C`` times the sample and class weight of each row in each problem.
    intercept_scaling : float or None
        Value of the synthetic feature, ``None`` for no intercept.

    Returns
    -------
    losses : ndarray of shape (n_problems,)
    gradient : ndarray of shape (n_problems, n_features + has_intercept)
    """
    if sparse.issparse(X):
        return _squared_hinge_two_products(coef, X, Y, cost, intercept_scaling)
    X = np.asarray(X)
    n_rows, d = X.shape
    coef = np.asarray(coef, dtype=np.float64)
    k = coef.shape[0]
    fit_intercept = intercept_scaling is not None
    W, wb = _split_coef(coef, d, fit_intercept)
    W = np.ascontiguousarray(W)
    block_rows = _block_rows(n_rows, d)
    M, T = np.empty((2, k, block_rows))  # problems by rows, as in the multinomial loss
    block_grad = np.empty((k, d))
    grad = np.zeros((k, d + int(fit_intercept)))
    losses = np.zeros(k)
    intercept_grad = np.zeros(k)
    shift = intercept_scaling * wb[:, None] if fit_intercept else None
    with _one_blas_thread():
        for rows, block in _row_blocks(X, block_rows):
            m = block.shape[0]
            Mb, Tb, Yb = M[:, :m], T[:, :m], Y[rows].T
            _block_products(block, W, Mb)
            if fit_intercept:
                Mb += shift
            Mb *= Yb  # the margins
            np.subtract(1.0, Mb, out=Mb)
            np.maximum(Mb, 0.0, out=Mb)  # the slacks
            np.multiply(cost[rows].T, Mb, out=Tb)
            losses += np.einsum("ki,ki->k", Tb, Mb)
            Tb *= Yb
            Tb *= -2.0
            np.matmul(Tb, block, out=block_grad)  # the block is still in cache
            grad[:, :d] += block_grad
            if fit_intercept:
                intercept_grad += Tb.sum(axis=1)
    if fit_intercept:
        grad[:, d] = intercept_scaling * intercept_grad
    return losses, grad


def _squared_hinge_two_products(coef, X, Y, cost, intercept_scaling):
    """:func:`squared_hinge_loss_gradient` for sparse ``X``: two whole products. Pure."""
    d = X.shape[1]
    fit_intercept = intercept_scaling is not None
    W, wb = _split_coef(coef, d, fit_intercept)
    margin = Y * (
        np.asarray(X @ W.T) + (intercept_scaling * wb if fit_intercept else 0.0)
    )
    slack = np.maximum(1.0 - margin, 0.0)
    losses = np.einsum("ik,ik,ik->k", cost, slack, slack)
    G = -2.0 * cost * slack * Y
    grad = np.empty(coef.shape, dtype=np.float64)
    grad[:, :d] = np.asarray(X.T @ G).T
    if fit_intercept:
        grad[:, d] = intercept_scaling * G.sum(axis=0)
    return losses, grad


# ----------------------------------------------------------------------------
# Agreeing on the data globally (see mpitrain.utils.multiclass)


# ----------------------------------------------------------------------------
# The distributed objective


def _local_sums(
    local: Callable[[np.ndarray], tuple[Any, np.ndarray]],
) -> Callable[[np.ndarray], np.ndarray]:
    """Pack ``local(x) -> (losses, gradient)`` into one flat array of sums. Local."""

    def packed(x: np.ndarray) -> np.ndarray:
        losses, grad = local(x)
        return np.concatenate(
            [np.atleast_1d(np.asarray(losses, dtype=np.float64)), grad.ravel()]
        )

    return packed


def _objective_from_sums(
    summed: Callable[[np.ndarray], np.ndarray],
    finish: Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[float, np.ndarray]],
    n_losses: int,
) -> Callable[[np.ndarray], tuple[float, np.ndarray]]:
    """``x -> finish(losses, gradient, x)`` from the global sums (rank 0 only). Local."""

    def objective(x: np.ndarray) -> tuple[float, np.ndarray]:
        sums = summed(x)
        return finish(sums[:n_losses], sums[n_losses:], x)

    return objective


def _lbfgs(
    objective: Callable[[np.ndarray], tuple[float, np.ndarray]],
    x0: np.ndarray,
    *,
    gtol: float,
    maxiter: int,
    ftol: float = _LBFGS_FTOL,
    resume: dict | None = None,
    iteration_done: Callable | None = None,
):
    """Run scipy's L-BFGS-B with scikit-learn's options.

    Local; on rank 0 only, inside :func:`mpitrain.comm.minimize_on_root`,
    whose ``summed`` makes each evaluation collective.  When checkpointing
    (``iteration_done`` given), :func:`mpitrain.checkpoint.lbfgsb` runs the
    same routine with a state that can be saved and resumed.
    """
    if iteration_done is None and resume is None:
        return optimize.minimize(
            objective,
            x0,
            method="L-BFGS-B",
            jac=True,
            options={
                "maxiter": maxiter,
                "maxls": _LBFGS_MAXLS,
                "gtol": gtol,
                "ftol": ftol,
            },
        )
    from mpitrain.optimize import lbfgsb

    return lbfgsb(
        objective,
        x0,
        gtol=gtol,
        ftol=ftol,
        maxiter=maxiter,
        maxls=_LBFGS_MAXLS,
        resume=resume,
        iteration_done=iteration_done,
    )


def _minimize_checkpointed(
    estimator,
    evaluate_local: Callable[[np.ndarray], np.ndarray],
    x0: np.ndarray,
    lib: Intracomm,
    run_lbfgs: Callable[..., Any],
    *,
    n_sums: int,
    agreed: GlobalClasses,
) -> OptimizeResult:
    """:func:`mpitrain.comm.minimize_on_root` of ``run_lbfgs``, checkpointed inside a context. Collective over ``lib``.

    ``run_lbfgs(summed, start, resume=None, iteration_done=None)`` runs
    :func:`_lbfgs` on rank 0.  Outside a :func:`mpitrain.checkpoint.checkpointing`
    context this is exactly ``minimize_on_root``; inside, every iteration
    boundary is a checkpoint step and a saved L-BFGS-B state is resumed.
    """
    from mpitrain.checkpoint import checkpoint_loop

    key = {
        "estimator": type(estimator).__name__,
        "params": estimator._sklearn_params(),
        "classes": agreed.classes,
        "class_weights": agreed.weighted,
        "rows": agreed.n_rows,
        "x0": x0,
    }
    loop = checkpoint_loop(
        "lbfgs",
        key=key,
        comm=lib,
        mode="root",
        what=f"{type(estimator).__name__} L-BFGS",
    )
    if loop is None:
        return minimize_on_root(
            evaluate_local,
            x0,
            lib,
            run_lbfgs,
            n_sums=n_sums,
            what="evaluating the loss",
        )

    def minimize(summed, start, iteration_done):  # rank 0 only
        return run_lbfgs(
            summed, start, resume=loop.state, iteration_done=iteration_done
        )

    return minimize_on_root(
        evaluate_local,
        x0,
        lib,
        minimize,
        n_sums=n_sums,
        what="evaluating the loss",
        at_iteration=loop.step,
    )


# ----------------------------------------------------------------------------
# Estimators


class _ExactLinearClassifier(ClassifierMixin, DistributedEstimator):
    """Shared fit skeleton and attributes of the exact classifiers (prediction: the base's)."""

    _own_params = ("comm", "strategy")
    _target = "classes"
    _x_checks = {"accept_sparse": "csr", "dtype": FLOAT_DTYPES}

    def _solve(
        self,
        X,
        y_index: np.ndarray,
        sample_weight: np.ndarray,
        agreed: GlobalClasses,
        lib: Intracomm,
    ) -> tuple[np.ndarray, np.ndarray, Any, OptimizeResult]:
        """Return ``(coef, intercept, n_iter, solution)``. Collective over ``lib``.

        ``solution`` is :func:`mpitrain.comm.minimize_on_root`'s result
        (for ``n_evaluations`` and this rank's ``seconds``).
        """
        raise NotImplementedError

    def fit(self, X, y, sample_weight=None):
        """Fit on this rank's rows; the model is the one for all ranks' rows.

        Collective over ``comm``: every rank of ``comm`` must call ``fit``
        with its own rows (possibly none) and the same parameters.  Classes
        are the sorted union of every rank's labels, so a rank may see only
        some classes, one, or none.  A
        :class:`~mpitrain.utils.multiclass.ClassProportionWarning` is issued
        (once, on every rank) when some rank's class distribution is far
        from the global one (total-variation distance above
        :data:`~mpitrain.utils.multiclass.CLASS_SHIFT_THRESHOLD`).

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_local_rows, n_features)
        y : array-like of shape (n_local_rows,)
        sample_weight : array-like of shape (n_local_rows,), default=None

        Returns
        -------
        self : object
        """
        tic = time.perf_counter()
        with self._fitting(X, y, sample_weight) as fit:
            if self.strategy == "average":
                return self._fit_average(fit, tic)
            lib, y = fit.comm, fit.y
            # Iterative solvers touch X many times: sparse float32 is promoted once, not
            # per evaluation; dense float32 is converted block by block, in cache, by the
            # loss kernels, so it is never held twice.
            X = (
                fit.X.astype(np.float64, copy=False)
                if sparse.issparse(fit.X)
                else fit.X
            )
            sample_weight = (
                np.ones(X.shape[0]) if fit.sample_weight is None else fit.sample_weight
            )
            agreed = agree_classes(y, sample_weight, lib)
            coef, intercept, n_iter, solution = self._solve(
                X, agreed.index(y), sample_weight, agreed, lib
            )

        model = self._unfitted_estimator()
        model.classes_ = agreed.classes
        model.coef_ = coef
        model.intercept_ = intercept
        model.n_features_in_ = self.n_features_in_
        if hasattr(self, "feature_names_in_"):
            model.feature_names_in_ = self.feature_names_in_
        model.n_iter_ = n_iter
        self.estimator_ = model
        self.classes_ = model.classes_
        self.coef_ = model.coef_
        self.intercept_ = model.intercept_
        self.n_iter_ = model.n_iter_
        self.n_rows_ = agreed.n_rows
        total = time.perf_counter() - tic
        self.timings_ = {
            **solution.seconds,
            "solve": max(total - sum(solution.seconds.values()), 0.0),
        }
        self.n_evaluations_ = solution.n_evaluations
        return self

    def _fit_average(self, fit, tic: float):
        """The ``average`` strategy: per-rank scikit-learn fits, averaged. Collective over ``fit.comm``."""
        model, self.averaging_ = fit_average(
            self._unfitted_estimator(),
            fit.X,
            fit.y,
            fit.sample_weight,
            fit.comm,
            classifier=True,
        )
        self.n_rows_ = fit.rows.n_rows
        self.estimator_ = model
        self.classes_, self.coef_, self.intercept_ = (
            model.classes_,
            model.coef_,
            model.intercept_,
        )
        self.n_iter_ = model.n_iter_
        self.timings_ = {"fit_and_average": time.perf_counter() - tic}
        return self

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        return tags


def _finite_coefficients(x: np.ndarray, what: str) -> None:
    """Raise if the solver left non-finite coefficients (the same on every rank). Local."""
    if not np.isfinite(x).all():
        raise ValueError(
            f"{what} produced non-finite coefficients; the input may be too large "
            "in magnitude: scale it (for example with StandardScaler)"
        )


class LogisticRegression(_ExactLinearClassifier):
    """Logistic regression over rows split across MPI ranks, exactly.

    Minimises scikit-learn's objective for ``solver="lbfgs"`` on all ranks'
    rows together::

        1/S Σ_i s_i · loss_i(w, b) + 1/(2 C S) ‖w‖²,   S = Σ_i s_i

    where ``s_i`` is the sample weight times the class weight, ``loss_i``
    the half binomial loss (two classes) or the multinomial loss (three or
    more), and the intercept is not penalised.  Rank 0 runs L-BFGS-B on
    the globally summed loss and gradient (one broadcast of the point and
    one reduction per evaluation; the other ranks only evaluate), so the
    result is scikit-learn's optimum, the same on every rank; ``estimator_`` is the fitted
    :class:`sklearn.linear_model.LogisticRegression`, which pickles and
    predicts without MPI.

    ``tol`` and ``max_iter`` mean what they mean for scikit-learn's lbfgs
    solver: ``tol`` is L-BFGS-B's ``gtol`` (largest absolute component of
    the gradient of the objective above), ``max_iter`` its ``maxiter``,
    with scikit-learn's ``maxls=50`` and ``ftol=64·eps``.  Classes,
    ``class_weight="balanced"`` and ``S`` are computed from the counts of
    all ranks.

    Parameters
    ----------
    penalty : {"l2", None}, default="deprecated"
        As in scikit-learn 1.8+: leave it alone and use ``C=np.inf`` for no
        penalty.  ``"l1"`` and elastic-net are not supported (no smooth
        exact method); neither is ``l1_ratio > 0``.
    C : float, default=1.0
        Inverse penalty strength; ``np.inf`` means no penalty.
    l1_ratio : float, default=0.0
        Must be 0 (or ``None``, deprecated by scikit-learn).
    dual : bool, default=False
        Must be False (the dual exists only for liblinear).
    tol : float, default=1e-4
    fit_intercept : bool, default=True
    intercept_scaling : float, default=1
        Recorded on ``estimator_``; used by liblinear only.
    class_weight : dict, "balanced" or None, default=None
        ``"balanced"`` uses the global (sample-weighted) class counts.
    random_state : int, RandomState instance or None, default=None
        Recorded; lbfgs is deterministic.
    solver : {"lbfgs"}, default="lbfgs"
        The only solver: the others have other meanings of ``tol`` and
        ``max_iter`` (or another objective, for liblinear).
    max_iter : int, default=100
    verbose : int, default=0
        Recorded; nothing is printed.
    warm_start : bool, default=False
        Start from the previous fit's coefficients when the classes and
        features match (the previous model is the same on every rank).
    n_jobs : None, default=None
        Recorded (scikit-learn deprecates it); threads are set per rank.
    strategy : {"exact", "average"}, default="exact"
        "exact" optimises the objective of all ranks' rows (scikit-learn's
        answer).  "average" fits scikit-learn on each rank's rows with
        ``C`` scaled by the rank's share of the total weight (``C_r = C·W/W_r``,
        since the loss is a sum over rows) and averages the coefficient rows,
        weighted by weight, over the ranks that could fit them (see
        :mod:`mpitrain.linear_model._averaging`).
    comm : mpi4py.MPI.Intracomm, default=None
        Communicator of the ranks that share the rows; ``None`` means
        ``COMM_WORLD``.  Resolved in ``fit``, never stored on ``estimator_``.

    Attributes
    ----------
    estimator_ : sklearn.linear_model.LogisticRegression
        The fitted model, identical on every rank.
    classes_, coef_, intercept_, n_iter_ : as on ``estimator_``
        ``n_iter_`` is ``array([iterations])`` as scikit-learn reports it.
    n_features_in_ : int
    n_rows_ : int
        Rows of all ranks together.
    n_evaluations_ : int
        Loss evaluations, i.e. reductions.
    timings_ : dict
        This rank's seconds in local computation, in communication (the
        broadcasts and reductions, including waiting for rank 0's
        optimiser), and elsewhere ("solve").
    """

    _sklearn_class = _sk_linear.LogisticRegression
    _parameter_constraints = {
        **_sk_linear.LogisticRegression._parameter_constraints,
        "strategy": [StrOptions({"exact", "average"})],
        "penalty": [StrOptions({"l2"}), None, Hidden(StrOptions({"deprecated"}))],
        "solver": [StrOptions({"lbfgs"})],
        "comm": "no_validation",
    }

    def __init__(
        self,
        penalty="deprecated",
        *,
        C=1.0,
        l1_ratio=0.0,
        dual=False,
        tol=1e-4,
        fit_intercept=True,
        intercept_scaling=1,
        class_weight=None,
        random_state=None,
        solver="lbfgs",
        max_iter=100,
        verbose=0,
        warm_start=False,
        n_jobs=None,
        strategy="exact",
        comm=None,
    ):
        self.strategy = strategy
        self.penalty = penalty
        self.C = C
        self.l1_ratio = l1_ratio
        self.dual = dual
        self.tol = tol
        self.fit_intercept = fit_intercept
        self.intercept_scaling = intercept_scaling
        self.class_weight = class_weight
        self.random_state = random_state
        self.solver = solver
        self.max_iter = max_iter
        self.verbose = verbose
        self.warm_start = warm_start
        self.n_jobs = n_jobs
        self.comm = comm

    def _check_params(self) -> None:
        if self.strategy != "exact":
            return  # scikit-learn's own fit checks (and warns) on every rank
        if self.dual:
            raise ValueError("Solver lbfgs supports only dual=False, got dual=True")
        if self.penalty == "deprecated":
            if self.l1_ratio is None:
                warnings.warn(
                    "'l1_ratio=None' was deprecated in version 1.8 and will trigger an error "
                    "in 1.10. Use 0<=l1_ratio<=1 instead.",
                    FutureWarning,
                    stacklevel=3,
                )
            elif self.l1_ratio != 0 and self.C != np.inf:
                raise ValueError(
                    f"mpitrain.LogisticRegression supports only the L2 penalty (l1_ratio=0) "
                    f"or none (C=np.inf), got l1_ratio={self.l1_ratio}"
                )
        else:
            warnings.warn(
                "'penalty' was deprecated in version 1.8 and will be removed in 1.10. Use "
                "C=np.inf instead of penalty=None and leave penalty='l2' out.",
                FutureWarning,
                stacklevel=3,
            )
            if self.l1_ratio not in (0, None):
                raise ValueError(
                    f"Inconsistent values: penalty={self.penalty} with l1_ratio={self.l1_ratio}"
                )
            if self.penalty is None and self.C != 1.0:
                warnings.warn(
                    "Setting penalty=None will ignore the C and l1_ratio parameters",
                    stacklevel=3,
                )
        if self.n_jobs is not None:
            warnings.warn(
                f"'n_jobs' has no effect since 1.8 and will be removed in 1.10. You provided "
                f"'n_jobs={self.n_jobs}', please leave it unspecified.",
                FutureWarning,
                stacklevel=3,
            )

    def _inverse_penalty(self) -> float:
        return np.inf if self.penalty is None else float(self.C)

    def _warm_start_coef(
        self, n_classes: int, n_dof: int, classes: np.ndarray
    ) -> np.ndarray | None:
        previous = getattr(self, "estimator_", None) if self.warm_start else None
        if (
            previous is None
            or len(previous.classes_) != len(classes)
            or not np.array_equal(previous.classes_, classes)
            or previous.coef_.shape[1] + int(self.fit_intercept) != n_dof
        ):
            return None
        coef = previous.coef_
        if self.fit_intercept:
            coef = np.column_stack([coef, previous.intercept_])
        return coef.reshape(n_classes if n_classes > 2 else 1, n_dof)

    def _solve(self, X, y_index, sample_weight, agreed, lib):
        classes = agreed.classes
        n_classes = len(classes)
        d = X.shape[1]
        fi = bool(self.fit_intercept)
        n_dof = d + int(fi)
        cw = class_weights(self.class_weight, agreed)
        weights = sample_weight * cw[y_index]
        # S after class weights, from global counts, as scikit-learn scales the penalty.
        sw_sum = float(cw @ agreed.weighted)
        C = self._inverse_penalty()
        l2 = 0.0 if C == np.inf else 1.0 / (C * sw_sum)
        binary = n_classes == 2
        warm = self._warm_start_coef(n_classes, n_dof, classes)

        if binary:
            target = (y_index == 1).astype(np.float64)
            x0 = np.zeros(n_dof) if warm is None else warm[0].astype(np.float64)

            def local(x):
                return binomial_loss_gradient(x, X, target, weights, fi)

            def penalised(x):
                return x[:d]
        else:
            # scikit-learn's layout: (n_classes, n_dof) raveled in Fortran order.
            x0 = (
                np.zeros((n_classes, n_dof), order="F")
                if warm is None
                else np.asfortranarray(warm, np.float64)
            )
            x0 = x0.ravel(order="F")

            def local(x):
                loss, grad = multinomial_loss_gradient(
                    x.reshape((n_classes, n_dof), order="F"), X, y_index, weights, fi
                )
                return loss, grad.ravel(order="F")

            def penalised(x):
                return x.reshape((n_classes, n_dof), order="F")[:, :d]

        def finish(losses, grad, x):
            grad = grad / sw_sum
            if l2:
                w = penalised(x)
                if binary:
                    grad[:d] += l2 * w
                else:
                    g = grad.reshape((n_classes, n_dof), order="F")
                    g[:, :d] += l2 * w
                    grad = g.ravel(order="F")
                return losses[0] / sw_sum + 0.5 * l2 * float(np.sum(w * w)), grad
            return losses[0] / sw_sum, grad

        def minimize(summed, start, resume=None, iteration_done=None):  # rank 0 only
            return _lbfgs(
                _objective_from_sums(summed, finish, 1),
                start,
                gtol=self.tol,
                maxiter=self.max_iter,
                resume=resume,
                iteration_done=iteration_done,
            )

        # rank 0's x and metadata, bit-identical on every rank
        result = _minimize_checkpointed(
            self,
            _local_sums(local),
            x0,
            lib,
            minimize,
            n_sums=1 + x0.size,
            agreed=agreed,
        )
        x = result.x
        _finite_coefficients(x, "LogisticRegression")
        n_iter = check_optimize_result(
            "lbfgs",
            result,
            self.max_iter,
            extra_warning_msg=_LOGISTIC_SOLVER_CONVERGENCE_MSG,
        )
        if binary:
            coef, intercept = x[:d][None, :], (x[d:] if fi else np.zeros(1))
        else:
            full = x.reshape((n_classes, n_dof), order="F")
            coef = np.ascontiguousarray(full[:, :d])
            intercept = full[:, d].copy() if fi else np.zeros(n_classes)
        return coef, intercept, np.asarray([n_iter], dtype=np.int32), result


_LOGISTIC_SOLVER_CONVERGENCE_MSG = (
    "Please also refer to the documentation for alternative solver options:\n"
    "    https://scikit-learn.org/stable/modules/linear_model.html#logistic-regression"
)


class LinearSVC(_ExactLinearClassifier):
    """Linear SVM (squared hinge, L2) over rows split across MPI ranks, exactly.

    Minimises liblinear's primal ``L2R_L2LOSS_SVC`` objective, as
    :class:`sklearn.svm.LinearSVC` does, on all ranks' rows together::

        ½ ‖w̃‖² + Σ_i C_i max(0, 1 − y_i w̃ · x̃_i)²,   x̃_i = [x_i, intercept_scaling]

    The intercept is the weight of the synthetic feature times
    ``intercept_scaling`` and, as in liblinear, it *is* penalised.
    ``C_i`` is ``C`` times the sample weight times the class weight; with
    more than two classes each one-vs-rest problem weights only its
    positive class (liblinear's rule: the rest keep ``C`` times the sample
    weight).  ``"balanced"`` class weights use the global counts.  All
    one-vs-rest problems are solved in one L-BFGS-B run (one reduction per
    evaluation for all of them); ``estimator_`` is the fitted
    :class:`sklearn.svm.LinearSVC`.

    ``tol`` keeps liblinear's relative meaning: a problem is converged when
    its gradient is below ``tol · max(min(#pos, #neg), 1) / n_rows`` times
    its gradient at the start, measured in the max-abs norm (L-BFGS-B's
    test) where liblinear's TRON uses the Euclidean norm (so ours is at
    most √(n_features + 1) times looser per problem at the same ``tol``;
    tighten ``tol`` for agreement).  As liblinear, it does not stop on a
    small decrease of the objective (``ftol=0``), only when the gradient
    test passes, when ``max_iter`` is reached, or when float64 can no
    longer resolve a decrease (about 1e-7 relative in the coefficients;
    ``tol`` below about 1e-8 cannot be met more closely).  ``max_iter`` caps L-BFGS-B
    iterations, which are cheaper than TRON's Newton iterations: the
    default of 1000 is plenty for well-scaled data.

    Parameters
    ----------
    penalty : {"l2"}, default="l2"
    loss : {"squared_hinge"}, default="squared_hinge"
        The hinge loss is not differentiable, so there is no exact smooth path.
    dual : "auto" or bool, default="auto"
        Recorded; the primal is solved (the optimum is the same).
    tol : float, default=1e-4
    C : float, default=1.0
    multi_class : {"ovr"}, default="ovr"
    fit_intercept : bool, default=True
    intercept_scaling : float, default=1
    class_weight : dict, "balanced" or None, default=None
    verbose : int, default=0
        Recorded; nothing is printed.
    random_state : int, RandomState instance or None, default=None
        Recorded; the method is deterministic.
    max_iter : int, default=1000
    strategy : {"exact", "average"}, default="exact"
        "exact" optimises the objective of all ranks' rows (scikit-learn's
        answer).  "average" fits scikit-learn on each rank's rows with
        ``C`` scaled by the rank's share of the total weight (``C_r = C·W/W_r``,
        since the loss is a sum over rows) and averages the coefficient rows,
        weighted by weight, over the ranks that could fit them (see
        :mod:`mpitrain.linear_model._averaging`).
    comm : mpi4py.MPI.Intracomm, default=None
        ``None`` means ``COMM_WORLD``; resolved in ``fit``.

    Attributes
    ----------
    estimator_ : sklearn.svm.LinearSVC
        The fitted model, identical on every rank.
    classes_, coef_, intercept_ : as on ``estimator_``
    n_iter_ : int
        Iterations of the joint L-BFGS-B run.
    n_features_in_, n_rows_, n_evaluations_, timings_ : see :class:`LogisticRegression`
    """

    _sklearn_class = _sk_svm.LinearSVC
    _parameter_constraints = {
        **_sk_svm.LinearSVC._parameter_constraints,
        "penalty": [StrOptions({"l2"})],
        "loss": [StrOptions({"squared_hinge"})],
        "multi_class": [StrOptions({"ovr"})],
        "strategy": [StrOptions({"exact", "average"})],
        "comm": "no_validation",
    }

    def __init__(
        self,
        penalty="l2",
        loss="squared_hinge",
        *,
        dual="auto",
        tol=1e-4,
        C=1.0,
        multi_class="ovr",
        fit_intercept=True,
        intercept_scaling=1,
        class_weight=None,
        verbose=0,
        random_state=None,
        max_iter=1000,
        strategy="exact",
        comm=None,
    ):
        self.strategy = strategy
        self.penalty = penalty
        self.loss = loss
        self.dual = dual
        self.tol = tol
        self.C = C
        self.multi_class = multi_class
        self.fit_intercept = fit_intercept
        self.intercept_scaling = intercept_scaling
        self.class_weight = class_weight
        self.verbose = verbose
        self.random_state = random_state
        self.max_iter = max_iter
        self.comm = comm

    def _solve(self, X, y_index, sample_weight, agreed, lib):
        n_classes = len(agreed.classes)
        d = X.shape[1]
        scaling = float(self.intercept_scaling) if self.fit_intercept else None
        n_dof = d + int(self.fit_intercept)
        cw = class_weights(self.class_weight, agreed)
        cost_of_row = float(self.C) * sample_weight
        if n_classes == 2:
            # liblinear: +1 is classes_[1]; each side weighted by its own class weight.
            n_problems = 1
            Y = np.where(y_index == 1, 1.0, -1.0)[:, None]
            cost = (cost_of_row * cw[y_index])[:, None]
            positives = agreed.counts[1:2]
        else:
            # One-vs-rest, liblinear's rule: only the positive class carries its class weight.
            n_problems = n_classes
            onehot = y_index[:, None] == np.arange(n_classes)
            Y = np.where(onehot, 1.0, -1.0)
            cost = cost_of_row[:, None] * np.where(onehot, cw, 1.0)
            positives = agreed.counts
        n = agreed.n_rows
        # liblinear's TRON tolerance factor, from global counts.
        factor = np.maximum(np.minimum(positives, n - positives), 1) / n

        def local(x):
            return squared_hinge_loss_gradient(
                x.reshape(n_problems, n_dof), X, Y, cost, scaling
            )

        x0 = np.zeros(n_problems * n_dof)
        scale = np.ones(n_problems)

        def finish(losses, grad, x):
            W = x.reshape(n_problems, n_dof)
            G = (grad.reshape(n_problems, n_dof) + W) / scale[:, None]
            f = (losses + 0.5 * np.einsum("kj,kj->k", W, W)) / scale
            return float(f.sum()), G.ravel()

        def minimize(summed, start, resume=None, iteration_done=None):  # rank 0 only
            # Gradient at the start (w̃ = 0, so the penalty adds nothing): it sets
            # each problem's scale, so that gtol=tol is liblinear's relative test.
            # L-BFGS-B's first evaluation, at the same point, costs no reduction.
            # (A resumed run's start is still x0: the saved state holds the iterate.)
            g0 = summed(start)[n_problems:]
            g0_norm = np.linalg.norm(g0.reshape(n_problems, n_dof), axis=1)
            scale[:] = np.where(g0_norm > 0, factor * g0_norm, 1.0)
            # liblinear stops on the gradient only: no stop on a small decrease of f (ftol=0).
            return _lbfgs(
                _objective_from_sums(summed, finish, n_problems),
                start,
                gtol=self.tol,
                maxiter=self.max_iter,
                ftol=0.0,
                resume=resume,
                iteration_done=iteration_done,
            )

        # rank 0's x and metadata, bit-identical on every rank
        result = _minimize_checkpointed(
            self,
            _local_sums(local),
            x0,
            lib,
            minimize,
            n_sums=n_problems * (1 + n_dof),
            agreed=agreed,
        )
        x = result.x
        _finite_coefficients(x, "LinearSVC")
        n_iter = int(min(result.nit, self.max_iter))
        if result.status != 0:
            warnings.warn(
                f"L-BFGS-B failed to converge after {n_iter} iteration(s) (status={result.status}): "
                f"{result.message}. Increase the number of iterations, or scale the data.",
                ConvergenceWarning,
                stacklevel=3,
            )
        W = x.reshape(n_problems, n_dof)
        coef = np.ascontiguousarray(W[:, :d])
        intercept = scaling * W[:, d] if self.fit_intercept else 0.0
        return coef, intercept, n_iter, result
