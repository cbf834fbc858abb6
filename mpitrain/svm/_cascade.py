"""Kernel SVMs across MPI ranks by the cascade (Graf et al., NIPS 2004).

Kernel SVM training grows roughly with the square of the rows, so each rank
solving a small problem pays most.  The cascade:

1. **Global before local.**  ``gamma="scale"`` is ``1 / (n_features ·
   Var(X))`` over the entries of *all* ranks' rows (pooled means and centred
   sums, one reduction each), ``"auto"`` is ``1 / n_features``;
   ``class_weight="balanced"`` comes from global class counts.  Every fit
   below uses the numeric gamma and a dict of class weights.
2. **Layer 0.**  Each rank fits scikit-learn's SVC/SVR on its rows and keeps
   its support vectors with their labels, sample weights and global row ids
   (the rank's row offset plus the local index).  A rank that cannot fit (no
   rows with positive weight, fewer than two such rows for SVR, or one class
   for SVC) passes *all* its rows with positive weight up unchanged (none if
   it has none): they are all candidates.  Rows of zero weight never travel;
   libsvm ignores them, so they cannot be support vectors.
3. **Tree.**  Groups of ``arity`` consecutive active ranks send their sets to
   the group's first rank (point-to-point numpy buffers), which merges them,
   removes duplicate ids, refits and keeps the new support vectors; repeated
   until one set is on rank 0 (``arity >= ranks`` is the flat gather).  The
   sizes travel first and every rank agrees that each leader could allocate
   (and has the memory to fit) its group's rows before any row moves, so a
   leader that cannot fails on every rank instead of leaving its members
   blocked in their sends.  Inside a checkpointing context the first pass
   can be saved at each layer boundary (every rank's surviving rows) and
   resumed from there on the same number of ranks.  Rank 0's fit on the last union is the global model.  With
   ``engine="intelex"`` every fit uses scikit-learn-intelex, and the final
   model's support vectors, dual coefficients and intercepts are copied onto
   a plain scikit-learn ``SVC``/``SVR`` (:func:`plain_sklearn_model`), so
   ``estimator_`` predicts and loads without the extra.
4. **Feedback**.  The global support vectors are broadcast; each rank
   finds its own rows that violate the KKT conditions of the global model
   (SVC: a non-support-vector row with ``y·f(x) < 1 − tol`` in any
   one-vs-one problem of its class; SVR: ``|y − f(x)| > ε + tol``).  If any
   rank finds one, every rank sends its violators to rank 0, with the rows
   that satisfy the margin by less than ``feedback_margin`` (the ones most
   likely to violate once the model moves), and rank 0 refits them with the
   global support vectors (deduplicated by id): one fit per feedback pass.
   The number of rows to send is agreed first, and rank 0 refuses, on every
   rank and naming the size, a union its memory cannot hold (see
   :func:`mpitrain.data.available_memory`).  Rows that satisfy the KKT conditions cannot change the
   global model, so leaving them out keeps a feedback pass as cheap as the
   final merge, where Graf et al.'s original rule (each rank refits all
   its rows plus the support vectors, then the cascade again) would refit
   more rows than the first pass.
   Passes stop when no rank finds a violator (then the model satisfies the
   KKT conditions on all rows: the global optimum up to ``tol``), when the
   dual objective changes by less than ``tol`` relatively, or after
   ``max_passes``.

Privacy: support vectors are **raw rows of the user's data**, moved between
ranks (and broadcast to every rank in feedback passes).  The linear
strategies of mpitrain move only sums; this one does not.

The module has two layers: pure functions (tree groups, deduplication by
id, KKT violator tests, dual objectives, pooled variance; no MPI) and the
estimators :class:`SVC` and :class:`SVR`.
"""

from __future__ import annotations

import os
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from numbers import Integral, Real
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn import svm as _sk_svm
from sklearn.base import ClassifierMixin, RegressorMixin
from sklearn.exceptions import ConvergenceWarning

from mpitrain.base import DistributedEstimator
from mpitrain.comm import (
    agree,
    allgather_array,
    allreduce_identical,
    allreduce_minmax,
    bcast_object,
    bcast_rows_quietly,
    collective_check,
    gatherv_rows,
    merge_rows_to_leaders,
    quiet_barrier,
    scatterv_rows,
)
from mpitrain.svm._smo import (
    KERNELS,
    KernelSpec,
    KernelStore,
    block_entries,
    dual_column,
    find_ids,
    kernel_block,
    load_solver,
    svc_duals,
    svr_duals,
)
from mpitrain.utils.fixes import (
    Interval,
    StrOptions,
    libsvm_gamma,
    libsvm_support_counts,
    set_libsvm_gamma,
    set_libsvm_state,
)
from mpitrain.utils.multiclass import agree_classes, balanced_class_weights

if TYPE_CHECKING:  # pragma: no cover
    from mpi4py.MPI import Intracomm

__all__ = [
    "PRIVACY_NOTE",
    "cascade_tree",
    "dedupe_by_id",
    "svc_violators",
    "svr_violators",
    "decision_values",
    "svc_dual_objective",
    "svr_dual_objective",
    "pooled_entry_variance",
    "plain_sklearn_model",
    "SVC",
    "SVR",
    "WARM_MIN_ROWS",
]


PRIVACY_NOTE = (
    "support vectors are raw rows of the user's data; the cascade moves them between ranks "
    "(and broadcasts the global ones to every rank in feedback passes)"
)

_INTELEX_MISSING = (
    'engine="intelex" needs scikit-learn-intelex, which is not installed: '
    'pip install "mpitrain[intel]"'
)


# ----------------------------------------------------------------------------
# Pure functions (no MPI)


def cascade_tree(size: int, arity: int) -> list[list[list[int]]]:
    """The merge groups of each layer of the cascade. Pure.

    Layer 1 groups ranks ``0 .. size-1`` in runs of ``arity``; the first rank
    of each group is its leader and the only rank active in the next layer;
    layers repeat until one rank (rank 0) remains.  One rank: no layers.

    >>> cascade_tree(5, 2)
    [[[0, 1], [2, 3], [4]], [[0, 2], [4]], [[0, 4]]]
    """
    if size < 1 or arity < 2:
        raise ValueError(
            f"need size >= 1 and arity >= 2, got size={size}, arity={arity}"
        )
    layers = []
    active = list(range(size))
    while len(active) > 1:
        groups = [active[i : i + arity] for i in range(0, len(active), arity)]
        layers.append(groups)
        active = [g[0] for g in groups]
    return layers


def dedupe_by_id(ids: np.ndarray) -> np.ndarray:
    """Indices that keep the first occurrence of each id, in increasing id order. Pure."""
    _, first = np.unique(np.asarray(ids), return_index=True)
    return first


def svc_violators(
    decision_ovo: np.ndarray, y_index: np.ndarray, n_classes: int, tol: float
) -> np.ndarray:
    """Rows whose margin ``y·f(x)`` is below ``1 − tol`` in a one-vs-one problem of their class. Pure.

    Parameters
    ----------
    decision_ovo : ndarray of shape (n_rows,) for two classes, else (n_rows, n_classes·(n_classes−1)/2)
        scikit-learn's decision values: binary, positive means ``classes_[1]``;
        one-vs-one columns in libsvm's pair order ``(0,1), (0,2), …, (1,2), …``,
        positive meaning the pair's first class.
    y_index : ndarray of int
        Each row's class index.
    """
    y_index = np.asarray(y_index)
    if n_classes == 2:
        margin = np.where(y_index == 1, 1.0, -1.0) * np.asarray(decision_ovo).ravel()
        return margin < 1.0 - tol
    decision_ovo = np.asarray(decision_ovo).reshape(len(y_index), -1)
    bad = np.zeros(len(y_index), dtype=bool)
    column = 0
    for i in range(n_classes):
        for j in range(i + 1, n_classes):
            value = decision_ovo[:, column]
            bad |= (y_index == i) & (value < 1.0 - tol)
            bad |= (y_index == j) & (-value < 1.0 - tol)
            column += 1
    return bad


def svr_violators(
    y: np.ndarray, prediction: np.ndarray, epsilon: float, tol: float
) -> np.ndarray:
    """Rows outside the ε-tube by more than ``tol``: ``|y − f(x)| > ε + tol``. Pure."""
    return np.abs(np.asarray(y) - np.asarray(prediction)) > epsilon + tol


_BLOCK_ROWS = 1024


def _quadratic_form(
    model, A: np.ndarray, coef: np.ndarray, share: tuple[int, int] = (0, 1)
) -> float:
    """``coefᵀ K(A, A) coef`` in row blocks, never holding the whole kernel matrix. Pure.

    With 20,000 support vectors the full matrix would take 3.2 GB; a block
    of ``_BLOCK_ROWS`` rows takes ``_BLOCK_ROWS × len(A)`` floats.  ``share = (i, n)`` sums
    only every n-th block from block i, so n ranks can split the work and
    add their parts.
    """
    part, parts = share
    block_rows = _BLOCK_ROWS
    total = 0.0
    for start in range(part * block_rows, len(A), parts * block_rows):
        stop = min(len(A), start + block_rows)
        total += float(
            coef[start:stop] @ (_kernel_block(model, A[start:stop], A) @ coef)
        )
    return total


def _kernel_block(
    model, rows: np.ndarray, A: np.ndarray, out: np.ndarray | None = None
) -> np.ndarray:
    """libsvm's kernel between ``rows`` and ``A`` with a fitted model's kernel parameters. Pure.

    One BLAS product and in-place element-wise steps
    (:func:`mpitrain.svm._smo.kernel_block`): scikit-learn's pairwise
    kernels spend about 40 % more on the same block (measured on 10,000 ×
    3,675 RBF entries at 784 features: 2.4 s against 1.7 s for the product).
    """
    if model.kernel not in KERNELS:
        raise ValueError(f"unsupported kernel {model.kernel!r}")
    spec = KernelSpec(
        model.kernel, libsvm_gamma(model), float(model.coef0), int(model.degree)
    )
    return kernel_block(
        spec,
        np.asarray(rows, dtype=np.float64),
        np.asarray(A, dtype=np.float64),
        out=out,
    )


def decision_values(model, X: np.ndarray) -> np.ndarray:
    """A fitted SVC's one-vs-one decision values (SVR: predictions) by blocked BLAS kernels. Pure.

    The same numbers as ``decision_function`` with ``decision_function_shape
    ="ovo"`` (``predict`` for SVR), but libsvm evaluates the kernel one pair
    of rows at a time; here a block of rows against all support vectors is
    one matrix product (for RBF, via ‖x‖² + ‖s‖² − 2x·s), about six times
    faster, which is what the feedback passes spend their time on.  A block
    holds at most :func:`~mpitrain.svm._smo.block_entries` kernel entries.

    Returns
    -------
    ndarray of shape (n_rows,) for SVR and two-class SVC (positive means
    ``classes_[1]``), else (n_rows, n_classes·(n_classes−1)/2) in libsvm's
    pair order, positive meaning the pair's first class.
    """
    sv = model.support_vectors_
    dual = np.asarray(model.dual_coef_, dtype=np.float64)
    intercept = np.asarray(model.intercept_, dtype=np.float64)
    two = not hasattr(model, "classes_") or len(model.classes_) == 2
    n_pairs = 1 if two else len(intercept)
    starts = np.concatenate([[0], np.cumsum(libsvm_support_counts(model))])
    n_rows = len(X)
    out = np.empty((n_rows, n_pairs))
    step = max(1, block_entries(sv.shape[1]) // max(len(sv), 1))
    for a in range(0, n_rows, step):
        K = _kernel_block(model, X[a : a + step], sv)
        if two:
            out[a : a + step, 0] = K @ dual[0] + intercept[0]
            continue
        # Each class's support vectors against all their pairs at once: one
        # product per class, (other classes × class SVs) @ (class SVs × rows).
        per_class = [
            dual[:, starts[c] : starts[c + 1]] @ K[:, starts[c] : starts[c + 1]].T
            for c in range(len(starts) - 1)
        ]
        out[a : a + step] = _pair_decisions(per_class, intercept)
    return out[:, 0] if two else out


def _pair_decisions(per_class, intercept: np.ndarray) -> np.ndarray:
    """One-vs-one decision values from each class's sums over its support vectors. Pure.

    ``per_class[c]`` holds, for each other class ``k`` in row
    :func:`dual_column` ``(c, k)``, the sum over class ``c``'s support
    vectors of coefficient × kernel, per row; the pair ``(i, j)`` adds class
    ``i``'s row for ``j``, class ``j``'s row for ``i`` and its intercept.
    """
    n_classes = len(per_class)
    out = np.empty((per_class[0].shape[1], len(intercept)))
    column = 0
    for i in range(n_classes):
        for j in range(i + 1, n_classes):
            out[:, column] = (
                per_class[i][dual_column(i, j)]
                + per_class[j][dual_column(j, i)]
                + intercept[column]
            )
            column += 1
    return out


def svc_dual_objective(model, share: tuple[int, int] = (0, 1)) -> float:
    """libsvm's dual objective ``½ αᵀQα − Σα``, summed over the one-vs-one problems. Pure.

    With ``share = (i, n)`` it returns part ``i`` of ``n`` parts that sum to
    the objective (the linear term goes to part 0).

    Computed from a fitted :class:`sklearn.svm.SVC`: for the pair ``(i, j)``
    the signed coefficients ``y_k α_k`` of class ``i``'s support vectors are
    in ``dual_coef_[j − 1]`` and class ``j``'s in ``dual_coef_[i]``.
    """
    sv = model.support_vectors_
    counts = libsvm_support_counts(model)
    starts = np.concatenate([[0], np.cumsum(counts)])
    n_classes = len(counts)
    total = 0.0
    for i in range(n_classes):
        for j in range(i + 1, n_classes):
            idx = np.concatenate(
                [
                    np.arange(starts[i], starts[i + 1]),
                    np.arange(starts[j], starts[j + 1]),
                ]
            )
            coef = np.concatenate(
                [
                    model.dual_coef_[j - 1, starts[i] : starts[i + 1]],
                    model.dual_coef_[i, starts[j] : starts[j + 1]],
                ]
            )
            total += 0.5 * _quadratic_form(model, sv[idx], coef, share=share)
            if share[0] == 0:
                total -= np.abs(coef).sum()
    return float(total)


def svr_dual_objective(
    model, y_support: np.ndarray, share: tuple[int, int] = (0, 1)
) -> float:
    """libsvm's ε-SVR dual objective ``½ βᵀKβ + ε Σ|β| − Σ y β`` with ``β = α − α*``. Pure.

    ``share`` as in :func:`svc_dual_objective`.
    """
    beta = model.dual_coef_.ravel()
    quadratic = _quadratic_form(model, model.support_vectors_, beta, share=share)
    linear = (
        model.epsilon * np.abs(beta).sum() - np.asarray(y_support) @ beta
        if share[0] == 0
        else 0.0
    )
    return float(0.5 * quadratic + linear)


def pooled_entry_variance(
    counts: np.ndarray, means: np.ndarray, centred_sums: np.ndarray
) -> float:
    """Variance of all entries from per-block entry counts, means and centred sums of squares. Pure.

    ``S = Σ S_r + Σ c_r (m_r − m)²`` over blocks, divided by ``Σ c_r``: the
    same arithmetic the estimators do with two reductions.
    """
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    mean = (counts * means).sum() / total
    return float(
        (np.sum(centred_sums) + (counts * (np.asarray(means) - mean) ** 2).sum())
        / total
    )


# ----------------------------------------------------------------------------
# Collective pieces


def _global_gamma(gamma, X: np.ndarray, n_features: int, comm: Intracomm) -> float:
    """scikit-learn's numeric gamma for all ranks' rows. Collective over ``comm`` (two reductions).

    Pooled means and centred sums (not Σx² − n·m²), so the variance does not
    cancel when the entries' mean is large.
    """
    if gamma == "auto":
        return 1.0 / n_features
    if gamma != "scale":
        return float(gamma)
    count = float(X.size)
    local_mean = float(X.mean()) if X.size else 0.0
    head = allreduce_identical(np.array([count, count * local_mean]), comm)
    if head[0] == 0:
        return 1.0
    mean = head[1] / head[0]
    centred = float(((X - local_mean) ** 2).sum()) if X.size else 0.0
    spread = allreduce_identical(
        np.array([centred + count * (local_mean - mean) ** 2]), comm
    )[0]
    variance = spread / head[0]
    return 1.0 / (n_features * variance) if variance != 0 else 1.0


def plain_sklearn_model(model, sklearn_class: type):
    """A plain scikit-learn SVC/SVR holding another library's fitted SVM. Pure.

    scikit-learn-intelex's models predict through oneDAL and need the extra
    to load.  libsvm's prediction needs only the support vectors, their dual
    coefficients, the intercepts, the per-class support counts and the kernel
    parameters, so these are copied onto a fresh ``sklearn_class`` in the
    form scikit-learn's own ``fit`` leaves them: the public ``dual_coef_`` and
    ``intercept_``, and libsvm's ``_dual_coef_``/``_intercept_``, whose signs
    are flipped for two classes.  A model that already is ``sklearn_class``
    is returned unchanged.

    Parameters
    ----------
    model : fitted SVC or SVR with scikit-learn's public attributes
    sklearn_class : type
        :class:`sklearn.svm.SVC` or :class:`sklearn.svm.SVR`.
    """
    if type(model) is sklearn_class:
        return model
    params = {
        k: v for k, v in model.get_params().items() if k in sklearn_class().get_params()
    }
    n_support = np.asarray(libsvm_support_counts(model), dtype=np.int32).ravel()
    if not hasattr(model, "classes_") and n_support.size == 1:
        # libsvm's regressors carry two counts (scikit-learn keeps both).
        n_support = np.array([n_support[0], n_support[0]], dtype=np.int32)
    return libsvm_model(
        sklearn_class,
        params,
        support=model.support_,
        support_vectors=model.support_vectors_,
        n_support=n_support,
        dual_coef=model.dual_coef_,
        intercept=model.intercept_,
        n_iter=getattr(model, "n_iter_", 0),
        shape_fit=model.shape_fit_,
        gamma=libsvm_gamma(model),
        classes=getattr(model, "classes_", None),
        class_weight=getattr(model, "class_weight_", None),
        fit_status=int(getattr(model, "fit_status_", 0)),
    )


def libsvm_model(
    sklearn_class: type,
    params: dict,
    *,
    support: np.ndarray,
    support_vectors: np.ndarray,
    n_support: np.ndarray,
    dual_coef: np.ndarray,
    intercept: np.ndarray,
    n_iter,
    shape_fit: tuple,
    gamma: float,
    classes: np.ndarray | None = None,
    class_weight: np.ndarray | None = None,
    fit_status: int = 0,
):
    """A fitted scikit-learn SVC/SVR from libsvm's solution, as scikit-learn's ``fit`` leaves it. Pure.

    ``dual_coef`` and ``intercept`` are the public attributes (for two
    classes, the negatives of libsvm's own); ``n_support`` holds libsvm's
    counts per class (two equal counts for a regressor).
    """
    plain = sklearn_class(**params)
    dual_coef = np.array(dual_coef, dtype=np.float64, order="C")
    intercept = np.array(intercept, dtype=np.float64).ravel()
    plain.support_ = np.asarray(support, dtype=np.int32)
    plain.support_vectors_ = np.array(support_vectors, dtype=np.float64, order="C")
    plain.dual_coef_ = dual_coef
    plain.intercept_ = intercept
    # libsvm's own copies; no probability estimates (intelex may hold None or zeros).
    set_libsvm_state(
        plain,
        n_support=np.asarray(n_support, dtype=np.int32),
        dual_coef=dual_coef,
        intercept=intercept,
        two_classes=classes is not None and len(classes) == 2,
        gamma=gamma,
    )
    plain.fit_status_ = int(fit_status)
    plain.shape_fit_ = tuple(shape_fit)
    plain.n_features_in_ = int(plain.support_vectors_.shape[1])
    plain.n_iter_ = (
        np.atleast_1d(np.asarray(n_iter, dtype=np.int32))
        if classes is not None
        else int(np.sum(n_iter))
    )
    if classes is not None:
        plain.classes_ = np.asarray(classes)
        plain.class_weight_ = np.asarray(class_weight, dtype=np.float64)
    else:
        plain.class_weight_ = np.empty(0)
    return plain


def _engine_class(engine: str, classifier: bool):
    """The class used for local and intermediate fits. Local."""
    if engine == "intelex":
        try:
            from sklearnex import svm as _ex_svm
        except ImportError:
            raise ImportError(_INTELEX_MISSING) from None
        return _ex_svm.SVC if classifier else _ex_svm.SVR
    return _sk_svm.SVC if classifier else _sk_svm.SVR


class _Block:
    """Rows in transit: ``[X | duals | label | weight | id]`` as one float64 matrix.

    Ids are global row numbers, exact in float64 below 2⁵³.  For SVC the
    label column holds the class index.  ``duals`` are each row's dual
    coefficients in the last fit that saw it (zero for rows no fit kept),
    in libsvm's layout: for SVC the row's signed coefficient against each
    other class (column ``k − 1`` for class ``k`` above its own, ``k``
    below), for SVR ``β = α − α*``.  The warm-started refits start from them.
    """

    def __init__(self, n_features: int, n_dual: int):
        self.n_features = n_features
        self.n_dual = n_dual
        self.width = n_features + n_dual + 3

    def pack(
        self, X: np.ndarray, label: np.ndarray, weight: np.ndarray, ids: np.ndarray
    ) -> np.ndarray:
        """A block of rows that no fit has seen (zero duals). Pure."""
        block = np.zeros((len(X), self.width))
        block[:, : self.n_features] = X
        block[:, -3] = label
        block[:, -2] = weight
        block[:, -1] = ids
        return block

    def unpack(self, block: np.ndarray):
        """``(X, label, weight, ids)``. Pure."""
        d = self.n_features
        # libsvm needs C-contiguous rows and weights: copy the column slices.
        return (
            np.ascontiguousarray(block[:, :d]),
            np.ascontiguousarray(block[:, -3]),
            np.ascontiguousarray(block[:, -2]),
            block[:, -1].astype(np.int64),
        )

    def duals(self, block: np.ndarray) -> np.ndarray:
        """The rows' dual coefficients, shape (n_rows, n_dual). Pure."""
        return block[:, self.n_features : self.n_features + self.n_dual]


def _row_duals(model, n_rows: int, n_dual: int, class_index) -> np.ndarray:
    """A fitted libsvm model's dual coefficients per row of its training set, in :class:`_Block`'s layout. Pure.

    ``class_index`` maps the model's classes to the global class indices
    (None for SVR).  A fit that saw only some classes has fewer one-vs-one
    pairs; its coefficients move to the global pairs' columns.
    """
    duals = np.zeros((n_rows, n_dual))
    support = np.asarray(model.support_)
    coef = np.asarray(model._dual_coef_)  # libsvm's signs
    if class_index is None:
        duals[support, 0] = coef[0]
        return duals
    counts = libsvm_support_counts(model)
    starts = np.concatenate([[0], np.cumsum(counts)])
    local = len(counts)
    for c in range(local):
        rows = support[starts[c] : starts[c + 1]]
        g_c = class_index[c]
        for k in range(local):
            if k == c:
                continue
            g_k = class_index[k]
            duals[rows, dual_column(g_c, g_k)] = coef[
                dual_column(c, k), starts[c] : starts[c + 1]
            ]
    return duals


@contextmanager
def _refit_threads(alone: bool):
    """While the other ranks wait, BLAS may use every core this process may run on; yields how many. Local.

    The waiting ranks poll with sleeps (:func:`mpitrain.comm.agree`), so
    their cores are idle; this process's affinity (a Slurm or launcher
    binding) still bounds it.
    """
    if not alone:
        yield 1
        return
    from threadpoolctl import threadpool_limits

    from mpitrain.utils.threads import cores_available

    cores = cores_available()
    with threadpool_limits(limits=cores, user_api="blas"):
        yield cores


@contextmanager
def _engine_threads(engine: str, threads: int | None):
    """scikit-learn-intelex's threads for a fit: ``threads``, else the rank's limit. Local.

    oneDAL runs on its own thread pool (TBB), which threadpoolctl does not
    limit: left alone, every rank's fits would use all the node's cores.
    libsvm runs on one thread, so nothing is set for it.
    """
    if engine != "intelex":
        yield
        return
    import daal4py

    from mpitrain.utils.threads import threads_in_force

    before = daal4py.num_threads()
    daal4py.daalinit(int(threads or threads_in_force()))
    try:
        yield
    finally:
        daal4py.daalinit(before)


class _WarmSolver:
    """The warm-started refits of one cascade fit on one rank (:mod:`mpitrain.svm._smo`). Local.

    Holds what every refit shares: the kernel, each row's bound
    ``C · class_weight · sample_weight``, and the rank's
    :class:`~mpitrain.svm._smo.KernelStore`, which keeps the kernel entries of
    the rows refitted last.
    """

    def __init__(
        self, estimator: _CascadeSVM, params: dict, classes, budget_bytes: float
    ):
        self.classifier = estimator._classifier
        self.sklearn_class = estimator._sklearn_class
        self.params = params
        self.classes = classes
        self.spec = KernelSpec(
            params["kernel"],
            float(params["gamma"]),
            float(params["coef0"]),
            int(params["degree"]),
        )
        self.cache_bytes = float(params["cache_size"]) * 2**20
        self.store = KernelStore(self.spec, budget_bytes)
        self.tol = float(params["tol"])
        self.max_iter = int(params["max_iter"])
        if self.classifier:
            weights = params.get("class_weight") or {}
            self.class_weight = np.array(
                [float(weights.get(c, 1.0)) for c in classes.tolist()]
            )
        self._available: bool | None = None
        self.engine = estimator.engine

    def load_ahead(self) -> None:
        """Import numba and load the solver's compiled code on a thread. Local."""
        from mpitrain.utils.threads import start_ahead

        start_ahead(_load_solver_code, "mpitrain-svm-solver")

    def available(self) -> bool:
        """Whether the solver loads here (numba installed, its code compiled); warns once if not. Local."""
        if self._available is None:
            try:
                _load_solver_code()
                self._available = True
            except Exception as exc:  # numba missing, or it cannot compile
                warnings.warn(
                    f"the warm-started SVM solver is not available ({exc}); "
                    f"the cascade refits with engine={self.engine!r}",
                    RuntimeWarning,
                    stacklevel=4,
                )
                self._available = False
        return self._available

    def fit(self, X, label, weight, ids, warm: np.ndarray, threads: int = 1):
        """The model of rows ``X`` started from ``warm`` (the rows' duals in :class:`_Block`'s layout). Local.

        ``threads``: one-vs-one pairs solved at once.  Returns the model, the
        global indices of the classes it saw (None for SVR) and its dual
        objective (libsvm's, from the solver's gradient).
        """
        C = float(self.params["C"])
        if self.classifier:
            label = label.astype(np.intp)
            bounds = C * self.class_weight[label] * weight
        else:
            bounds = C * weight
        keep = np.flatnonzero(bounds > 0)
        if self.classifier:
            # Grouped by class (in row order within one): a two-class fit then
            # solves on the kept matrix itself, with no copy of it per pair,
            # and the model's support vectors come out in libsvm's order.
            keep = keep[np.argsort(label[keep], kind="stable")]
        full = self.store.matrix(ids[keep], X[keep], threads=threads)
        solve = {
            "tol": self.tol,
            "max_iter": self.max_iter,
            "cache_bytes": self.cache_bytes,
            "full": full,
            "shrinking": bool(self.params["shrinking"]),
        }
        if self.classifier:
            present = np.unique(label[keep])
            local = np.searchsorted(present, label[keep])
            duals, intercept, n_iter, converged, objective = svc_duals(
                X[keep],
                local,
                bounds[keep],
                len(present),
                self.spec,
                _local_duals(warm[keep], label[keep], present),
                threads=threads,
                **solve,
            )
            model = self._classifier_model(
                X, keep, local, present, duals, intercept, n_iter
            )
        else:
            beta, intercept, n_iter, converged, objective = svr_duals(
                X[keep],
                label[keep],
                bounds[keep],
                float(self.params["epsilon"]),
                self.spec,
                warm[keep, 0],
                **solve,
            )
            support = keep[np.flatnonzero(beta)]
            count = len(support)
            model = libsvm_model(
                self.sklearn_class,
                self.params,
                support=support,
                support_vectors=X[support],
                n_support=np.array([count, count]),
                dual_coef=beta[beta != 0][None, :],
                intercept=np.array([intercept]),
                n_iter=n_iter,
                shape_fit=X.shape,
                gamma=self.spec.gamma,
            )
            present = None
        if not converged:
            warnings.warn(
                f"the warm-started SVM refit stopped at max_iter={self.max_iter} before "
                "reaching tol",
                ConvergenceWarning,
                stacklevel=2,
            )
        return model, present, objective

    def _classifier_model(self, X, keep, local, present, duals, intercept, n_iter):
        # libsvm's model: support vectors grouped by class, in row order within
        # a class; each one's coefficients against the other classes.
        on = np.abs(duals).sum(axis=1) > 0
        groups = [np.flatnonzero(on & (local == c)) for c in range(len(present))]
        order = np.concatenate(groups)
        support = keep[order]
        coef = duals[order].T
        two = len(present) == 2
        return libsvm_model(
            self.sklearn_class,
            self.params,
            support=support,
            support_vectors=X[support],
            n_support=np.array([len(g) for g in groups]),
            # The public attributes: for two classes, libsvm's negated.
            dual_coef=-coef if two else coef,
            intercept=-intercept if two else intercept,
            n_iter=n_iter,
            shape_fit=X.shape,
            gamma=self.spec.gamma,
            classes=self.classes[present],
            class_weight=self.class_weight[present],
        )


def _load_solver_code() -> None:
    """Load (or compile) the solver's code by solving a two-row problem. Local."""
    load_solver()
    svc_duals(
        np.array([[0.0], [1.0]]),
        np.array([0, 1]),
        np.ones(2),
        2,
        KernelSpec("linear", 1.0),
        None,
        tol=1e-3,
        max_iter=-1,
        cache_bytes=1e6,
    )


def _local_duals(
    warm: np.ndarray, label: np.ndarray, present: np.ndarray
) -> np.ndarray:
    """Duals in :class:`_Block`'s layout over all classes → over the ``present`` classes only. Pure."""
    out = np.zeros((len(warm), max(len(present) - 1, 1)))
    for c, g_c in enumerate(present):
        rows = label == g_c
        for k, g_k in enumerate(present):
            if k != c:
                out[rows, dual_column(c, k)] = warm[rows, dual_column(g_c, g_k)]
    return out


def _kernel_budget(cache_size: float, ranks: int) -> float:
    """Bytes a rank may keep for each of :class:`_MarginKernels` and the warm solver's :class:`KernelStore`. Local.

    A quarter of the memory this rank may use (``MPITRAIN_MEMORY_LIMIT``, else
    its share of MemAvailable as if every rank shared this node), and at
    least ``cache_size`` MB.
    """
    from mpitrain.data import available_memory

    share = available_memory(ranks)
    return max(float(cache_size) * 2**20, 0.25 * share if share else 0.0)


#: Training rows (all ranks') from which ``refit_solver="auto"`` refits with
#: the warm solver.  Measured with the solver's code already compiled (loading
#: it takes 0.4–0.5 s), 2 ranks, whole fits, RBF: 6,000 rows in 1.18 s by
#: libsvm against 1.38 s warm (2 noisy features) and 0.71 against 0.79 s
#: (20 features); 8,000 rows 3.0 against 1.3 s and 0.85 against 0.88 s;
#: 12,000 rows 5.4 against 2.8 s and 1.8 against 1.2 s.
WARM_MIN_ROWS = 8_000


#: Narrowest rows for which :class:`_MarginKernels` keeps the kernel between checks.
_KEEP_MIN_FEATURES = 256


class _MarginKernels:
    """``K(the global support vectors, this rank's rows)``, kept from one pass's margin check to the next. Local.

    Consecutive passes' models share most support vectors, so a check
    computes only the new ones' kernel rows.  Each support vector keeps its
    slot (a row of one buffer) while it stays in the model, and a new one
    takes a freed slot: the kept rows are neither copied nor reordered from
    pass to pass.  Kept in
    float64, so the decision values are the ones :func:`decision_values`
    computes, while slots × rows fit in ``budget_bytes``; else every check
    computes its kernel blocks anew.

    Kept only from ``min_features`` features on (:data:`_KEEP_MIN_FEATURES`):
    on narrower rows, computing an entry anew in cache-sized blocks costs
    less than writing it once to gigabytes of fresh memory and reading it
    back.  Measured on one thread, 20,000 rows × 11,400 support vectors,
    three checks (the second with 1,500 new support vectors): 1.7 s anew
    against 5.2 s kept at 20 features, 2.9 against 4.9 s at 64, 4.8 against
    6.2 s at 128.  The kept kernel's first check spends most of its time
    faulting in its 2.3 GB.  At 784 features (images: 10,000 rows, 3,700
    support vectors) an entry costs about 44 ns to compute, and keeping
    wins: 2.8 s kept against 3.5 s anew.
    """

    def __init__(self, budget_bytes: float, min_features: int | None = None):
        self.budget_bytes = budget_bytes
        self.min_features = _KEEP_MIN_FEATURES if min_features is None else min_features
        self._slot_ids = np.empty(0, dtype=np.int64)  # -1: a free slot
        self._K: np.ndarray | None = None

    def decisions(self, model, X: np.ndarray, sv_ids: np.ndarray) -> np.ndarray | None:
        """:func:`decision_values` of ``model`` on all rows ``X``, or None if the kernel does not fit. Local."""
        n, m = len(X), len(sv_ids)
        capacity = len(self._slot_ids)
        if m > capacity:
            capacity = m + m // 4  # room for the next passes' new support vectors
        too_narrow = X.shape[1] < self.min_features
        if too_narrow or 8.0 * n * capacity > self.budget_bytes or n == 0:
            self._slot_ids, self._K = np.empty(0, dtype=np.int64), None
            return None
        if capacity > len(self._slot_ids):
            # Zeros, not np.empty: a free slot's coefficient is 0, and 0 × NaN
            # (whatever memory held) would be NaN in every decision value.
            grown = np.zeros((capacity, n))
            slot_ids = np.full(capacity, -1, dtype=np.int64)
            if self._K is not None:
                grown[: len(self._slot_ids)] = self._K
                slot_ids[: len(self._slot_ids)] = self._slot_ids
            self._K, self._slot_ids = grown, slot_ids
        # Each support vector's slot: its old one, else a slot freed now.
        found, at = find_ids(self._slot_ids, sv_ids)
        slot = np.where(found, at, -1)
        kept = np.zeros(capacity, dtype=bool)
        kept[slot[found]] = True
        self._slot_ids[~kept] = -1
        new = np.flatnonzero(~found)
        slot[new] = np.flatnonzero(~kept)[: len(new)]
        self._slot_ids[slot[new]] = sv_ids[new]
        step = max(1, block_entries(X.shape[1]) // max(n, 1))
        for a in range(0, len(new), step):
            rows = new[a : a + step]
            slots = slot[rows]
            sv = model.support_vectors_[rows]
            if slots[-1] - slots[0] == len(slots) - 1:
                # Consecutive slots (the first check fills them in order):
                # computed where they are kept, with no temporary.
                _kernel_block(model, sv, X, out=self._K[slots[0] : slots[-1] + 1])
            else:
                self._K[slots] = _kernel_block(model, sv, X)
        # Coefficients over the slots (free slots: zero), each class apart for
        # the one-vs-one sums: one product for every class and pair.
        dual = np.asarray(model.dual_coef_, dtype=np.float64)
        intercept = np.asarray(model.intercept_, dtype=np.float64)
        counts = libsvm_support_counts(model)
        two = not hasattr(model, "classes_") or len(model.classes_) == 2
        if two:
            coef = np.zeros(capacity)
            coef[slot] = dual[0]
            return coef @ self._K + intercept[0]
        n_classes = len(counts)
        starts = np.concatenate([[0], np.cumsum(counts)])
        coef = np.zeros((n_classes, n_classes - 1, capacity))
        for c in range(n_classes):
            coef[c][:, slot[starts[c] : starts[c + 1]]] = dual[
                :, starts[c] : starts[c + 1]
            ]
        per_class = (coef.reshape(-1, capacity) @ self._K).reshape(
            n_classes, n_classes - 1, n
        )
        return _pair_decisions(per_class, intercept)


@dataclass
class _Fits:
    """What every fit of one cascade shares: the engine's class and parameters, the
    global classes (SVC), the block layout and the warm solver (or None)."""

    fit_class: type
    params: dict
    classes: np.ndarray | None
    layout: _Block
    warm: _WarmSolver | None
    #: Seconds this rank spent in each of :data:`_PHASES`.
    seconds: dict
    #: Solver iterations of the refit of the pass's global model (rank 0's).
    refit_iterations: int = 0
    #: That refit's dual objective, when the warm solver made it.
    objective: float | None = None


#: The cascade's phases, timed for ``timings_``: loading the solvers, the first layer's local fits,
#: the merges up the tree, the feedback passes' gathering and refit, the
#: final model's check and broadcast, and the margin checks on every row.
_PHASES = (
    "import",
    "local_fit",
    "merges",
    "feedback_refits",
    "model_broadcasts",
    "margin_checks",
)


# ----------------------------------------------------------------------------
# Estimators


class _CascadeSVM(DistributedEstimator):
    """Shared cascade of :class:`SVC` and :class:`SVR` (prediction: the base's)."""

    _classifier: bool
    _sklearn_class: type
    _own_params = (
        "strategy",
        "arity",
        "max_passes",
        "feedback_margin",
        "engine",
        "refit_solver",
        "comm",
    )
    # libsvm computes in float64.
    _x_checks = {"dtype": np.float64}

    # -- the cascade ---------------------------------------------------------

    def _fit_set(
        self, block: np.ndarray, fit: _Fits, warm: bool = False, alone: bool = False
    ) -> tuple[np.ndarray, Any, np.ndarray]:
        """Fit on a block; return ``(surviving rows, model or None, the block fitted)``. Local.

        A set that cannot be fitted (see the module docstring) survives whole.
        Survivors keep the block's (id) order; ``model.support_`` indexes the
        block fitted, whose dual columns hold the fit's coefficients (zero
        off the support).  ``warm`` refits with the warm-started solver from
        the block's duals (when ``fit.warm`` is set), else with the engine;
        ``alone`` means the other ranks wait meanwhile, so the refit may use
        every core this process may run on.
        """
        layout = fit.layout
        X, label, weight, ids = layout.unpack(block)
        positive = weight > 0
        if not positive.all():
            # libsvm drops rows of zero weight and scikit-learn's support_ then
            # indexes the rows that are left: fit on those alone.
            block = block[positive]
            X, label, weight, ids = layout.unpack(block)
            positive = positive[positive]
        if self._classifier:
            can_fit = len(np.unique(label[positive])) >= 2
        else:
            can_fit = int(positive.sum()) >= 2
        if not can_fit:
            return block, None, block
        # The warm solver with the union's kernel matrix; above its budget,
        # libsvm's shrinking and cache serve better than kernel rows computed
        # one by one (on 40,000 × 20 rows: 23 s against 13 s for the merge,
        # measured before the solver shrank).
        warm = (
            warm
            and fit.warm is not None
            and fit.warm.store.fits(int(positive.sum()))
            and fit.warm.available()
        )
        objective = None
        if warm:
            with _refit_threads(alone) as threads:
                model, present, objective = fit.warm.fit(
                    X, label, weight, ids, layout.duals(block), threads=threads
                )
        else:
            model = fit.fit_class(**fit.params)
            y = fit.classes[label.astype(np.intp)] if self._classifier else label
            with _refit_threads(alone) as threads:
                with _engine_threads(self.engine, threads if alone else None):
                    model.fit(X, y, sample_weight=weight)
        if alone:
            # The refit that makes the pass's global model (rank 0's, the others waiting).
            fit.refit_iterations += int(np.sum(getattr(model, "n_iter_", 0)))
            fit.objective = objective
        if not warm:
            # Another engine's model in libsvm's form, to read its duals.
            model = plain_sklearn_model(model, self._sklearn_class)
            present = (
                np.searchsorted(fit.classes, model.classes_)
                if self._classifier
                else None
            )
        fitted = block.copy()
        layout.duals(fitted)[:] = _row_duals(model, len(block), layout.n_dual, present)
        return fitted[np.sort(np.asarray(model.support_))], model, fitted

    def _check_fit_memory(
        self,
        fit: _Fits,
        n_rows: int,
        width: int,
        copies: int,
        what: str,
        advice: str = "",
    ) -> None:
        """Refuse, naming the sizes, a set this rank's memory cannot hold while fitting it. Local.

        The need is ``copies`` float64 copies of the rows in transit
        (``width`` columns: features, duals, label, weight, id) plus the
        kernel cache (``cache_size`` MB, or the whole ``n_rows²`` float32
        matrix if smaller); a warm-started refit holds the union's matrix
        instead, twice (its :class:`~mpitrain.svm._smo.KernelStore` keeps the
        last refit's while it assembles the next), when the store takes it
        (the rule :meth:`_fit_set` follows).  The limit is :func:`mpitrain.data.available_memory` for
        this rank alone: the other ranks wait while it merges, and
        MemAvailable already counts what they hold.
        """
        from mpitrain.data import MEMORY_LIMIT_VARIABLE, available_memory
        from mpitrain.report import format_bytes

        limit = available_memory(1)
        if limit is None:
            return
        cache = min(float(self.cache_size) * 2**20, 4.0 * n_rows * n_rows)
        if fit.warm is not None and fit.warm.store.fits(n_rows):
            cache = 2 * 4.0 * n_rows * n_rows
        rows_bytes = 8.0 * n_rows * width
        need = copies * rows_bytes + cache
        if need <= limit:
            return
        source = (
            MEMORY_LIMIT_VARIABLE
            if os.environ.get(MEMORY_LIMIT_VARIABLE, "").strip()
            else "MemAvailable"
        )
        raise MemoryError(
            f"{what}: {n_rows:,} rows of {width} values ({format_bytes(rows_bytes)}) "
            f"need about {format_bytes(need)} to merge and fit ({copies} copies of the rows "
            f"+ {format_bytes(cache)} of kernel cache) but this rank may use "
            f"{format_bytes(limit)} ({source}){'; ' + advice if advice else ''}"
        )

    def _feedback_pass(
        self,
        violators: np.ndarray,
        global_sv: np.ndarray,
        fit: _Fits,
        lib: Intracomm,
    ) -> tuple[Any, np.ndarray | None, list[int], int]:
        """A feedback pass: every rank's violators go to rank 0, which refits them with the
        global support vectors. Collective over ``lib``.

        No per-rank or intermediate refits: a subgroup's violators fitted without
        the global support vectors would drop rows the global model needs, and
        refitting the support vectors on every rank would cost a full fit each.
        Rank 0 checks its memory for the union before any violator moves
        (the sizes travel first) and refuses, naming the size, on every rank.
        Returns what :meth:`_cascade_pass` returns.
        """
        rank = lib.Get_rank()
        model = fitted = None
        sent = 0
        tic = time.perf_counter()

        def reserve(n_rows: int, _row_shape) -> None:
            self._check_fit_memory(
                fit,
                n_rows + len(global_sv),
                violators.shape[1],
                copies=4,  # gathered, joined with the support vectors, deduplicated, unpacked
                what=f"the feedback pass gathers {n_rows:,} margin violators and "
                f"near-violators on rank 0, refitted with {len(global_sv):,} global "
                "support vectors",
                advice="lower feedback_margin (0 sends the violators only) or "
                "max_passes, or give rank 0 more memory",
            )

        # One Gatherv, reached by every rank (no rank is busy fitting here:
        # the margins were just agreed); the rows are already float64 blocks.
        gathered = gatherv_rows(
            violators, lib, reserve=reserve, what="gathering margin violators"
        )
        if rank != 0:
            sent += violators.nbytes
        with collective_check(lib, "merging margin violators"):
            if rank == 0:
                union = np.concatenate([global_sv, gathered])
                union = union[dedupe_by_id(union[:, -1])]
        counts = [int(allreduce_identical(np.array([float(len(violators))]), lib)[0])]
        with collective_check(lib, "refitting the global SVM"):
            if rank == 0:
                # The global support vectors start from their coefficients,
                # the new rows from zero; the other ranks wait.
                survivors, model, fitted = self._fit_set(
                    union, fit, warm=True, alone=True
                )
        # Every rank reports the same count (only rank 0 holds the model).
        refit = float(model.support_.size) if rank == 0 and model is not None else 0.0
        counts.append(int(allreduce_identical(np.array([refit]), lib)[0]))
        fit.seconds["feedback_refits"] += time.perf_counter() - tic
        return model, fitted, counts, sent

    def _cascade_pass(
        self,
        own: np.ndarray,
        fit: _Fits,
        lib: Intracomm,
        tree,
        layers=None,
    ) -> tuple[Any, np.ndarray | None, list[int], int]:
        """The first pass of the cascade. Collective over ``lib``.

        Inside a checkpointing context ``layers`` is the checkpoint loop of
        the pass's layer boundaries (see :meth:`_checkpoint_loops`): after
        the local fits and after each merge but the last, every rank's
        surviving rows can be saved, and a resumed pass continues with the
        next merge.

        Returns rank 0's final model (``None`` elsewhere), the block that
        model was fitted on (rank 0; ``None`` elsewhere), the support-vector
        counts per layer (layer 0: summed over ranks) and the bytes this
        rank sent.
        """
        rank = lib.Get_rank()
        model = fitted = None
        if layers is not None and layers.resumed:
            # Continue after the saved layer boundary, with every rank's survivors.
            survivors, counts, sent = self._resume_layers(layers, lib)
            done = layers.iteration
            row_counts = None  # merge_rows_to_leaders exchanges them
        else:
            working = own[dedupe_by_id(own[:, -1])]
            tic = time.perf_counter()
            with collective_check(lib, "fitting the local SVM"):
                survivors, model, fitted = self._fit_set(working, fit)
            fit.seconds["local_fit"] += time.perf_counter() - tic
            # Every rank's survivors: summed for the report, and the sizes of
            # the next merge (one Allgather serves both).
            row_counts = allgather_array(
                np.array([len(survivors)], dtype=np.int64), lib
            )[:, 0]
            counts = [int(row_counts.sum())]
            sent = 0
            done = 1  # layers completed: the local fits are layer 0
            self._layer_boundary(layers, done, tree, survivors, counts, sent, lib)
        tic = time.perf_counter()
        for depth, groups in enumerate(tree, start=1):
            if depth < done:
                continue
            what = f"cascade layer {depth}"

            def reserve(n_rows: int, width: int, what=what) -> None:
                self._check_fit_memory(fit, n_rows, width, copies=3, what=what)

            # Sizes first, the leaders' buffers agreed, then the rows move
            # (see merge_rows_to_leaders): a leader that cannot hold its
            # group's rows fails on every rank, never with a send pending.
            union, sent_now = merge_rows_to_leaders(
                survivors,
                groups,
                lib,
                what=f"receiving support vectors ({what})",
                reserve=reserve,
                row_counts=row_counts,
            )
            sent += sent_now
            leading = any(g[0] == rank for g in groups)
            # Every rank enters this check, also ranks idle in this layer:
            # its agreement is an Iallreduce polled with sleeps (comm.agree),
            # so they wait without spinning while the leaders refit.
            with collective_check(lib, f"merging support vectors ({what})"):
                survivors = union
                if leading:
                    union = union[dedupe_by_id(union[:, -1])]
                    # Each set's support vectors start from their coefficients
                    # (the union of feasible solutions is feasible).
                    survivors, model, fitted = self._fit_set(
                        union, fit, warm=True, alone=len(groups) == 1
                    )
            # Members and idle ranks hold no rows now: the sum is the leaders'.
            row_counts = allgather_array(
                np.array([len(survivors)], dtype=np.int64), lib
            )[:, 0]
            counts.append(int(row_counts.sum()))
            self._layer_boundary(layers, depth + 1, tree, survivors, counts, sent, lib)
        fit.seconds["merges"] += time.perf_counter() - tic
        return (
            (model if rank == 0 else None),
            (fitted if rank == 0 else None),
            counts,
            sent,
        )

    def fit(self, X, y, sample_weight=None):
        """Fit on this rank's rows; the model is the one for all ranks' rows.

        Collective over ``comm``: every rank calls it with its own rows
        (possibly none) and the same parameters.

        Parameters
        ----------
        X : array-like of shape (n_local_rows, n_features)
        y : array-like of shape (n_local_rows,)
        sample_weight : array-like of shape (n_local_rows,), default=None

        Returns
        -------
        self : object
        """
        tic = time.perf_counter()
        with self._fitting(X, y, sample_weight) as fit:
            lib, X, y = fit.comm, fit.X, fit.y
            rank, size = lib.Get_rank(), lib.Get_size()
            sample_weight = (
                np.ones(X.shape[0]) if fit.sample_weight is None else fit.sample_weight
            )
            phase_tic = time.perf_counter()
            with collective_check(lib, "loading the solver"):
                fit_class = _engine_class(self.engine, self._classifier)
            import_seconds = time.perf_counter() - phase_tic
            n_features = X.shape[1]
            n_rows = fit.rows.rows_per_rank
            offset = fit.rows.offset

            params = self._sklearn_params()
            params.pop("probability", None)
            params.pop("decision_function_shape", None)
            params.pop("break_ties", None)
            gamma = _global_gamma(self.gamma, X, n_features, lib)
            params["gamma"] = gamma
            classes = None
            if self._classifier:
                # Unweighted counts, as scikit-learn's "balanced" uses; no averaging warning here.
                agreed = agree_classes(y, None, lib, warn=False)
                classes = agreed.classes
                if self.class_weight == "balanced":
                    balanced = balanced_class_weights(agreed.counts)
                    params["class_weight"] = dict(zip(classes.tolist(), balanced))
                label = agreed.index(y).astype(np.float64)
            else:
                label = y
            layout = _Block(n_features, (len(classes) - 1 if self._classifier else 1))
            own = layout.pack(
                X, label, sample_weight, np.arange(offset, offset + X.shape[0])
            )
            budget = _kernel_budget(self.cache_size, size)
            margins = _MarginKernels(budget)
            phase_tic = time.perf_counter()
            fits = _Fits(
                fit_class,
                params,
                classes,
                layout,
                self._warm_solver(params, classes, budget, int(sum(n_rows))),
                dict.fromkeys(_PHASES, 0.0),
            )
            fits.seconds["import"] = import_seconds + time.perf_counter() - phase_tic

            tree = cascade_tree(size, self.arity)
            if fits.warm is not None and any(
                group[0] == rank for groups in tree for group in groups
            ):
                # This rank refits unions: numba's import and compiled code
                # load while it fits its own rows (libsvm releases the GIL).
                fits.warm.load_ahead()
            report = {
                "passes": 0,
                "support_vectors_per_layer": [],
                "violators": [],
                "dual_objective": [],
                "refit_iterations": [],
                "refit_solver": [],
                "converged": False,
                "stopped_because": "",
                "arity": self.arity,
                "layers": len(tree),
                "privacy": PRIVACY_NOTE,
            }
            sent = 0
            extra = None
            sending = None  # this rank's rows for the next feedback pass
            previous_dual = None
            model = None
            first_pass = 1
            loop, layers = self._checkpoint_loops(
                gamma, classes, n_features, int(sum(n_rows)), lib
            )
            if loop is not None and loop.resumed:
                # Continue with the feedback pass after the saved one, from the same
                # global support vectors and the same rows to send.
                first_pass, extra, sending, previous_dual, report, sent = (
                    self._resume_passes(loop, own, rank)
                )
            for pass_number in range(first_pass, self.max_passes + 1):
                if extra is None:
                    model, fitted, counts_per_layer, sent_now = self._cascade_pass(
                        own, fits, lib, tree, layers
                    )
                else:
                    model, fitted, counts_per_layer, sent_now = self._feedback_pass(
                        own[sending], extra, fits, lib
                    )
                sent += sent_now
                # The global model's refit is the pass's critical path: its
                # iterations, for the report; and its dual objective, if the
                # warm solver made it (then no rank computes it again).
                known = rank == 0 and fits.objective is not None
                refit_iterations, solver_objective, known_objective = (
                    allreduce_identical(
                        np.array(
                            [
                                float(fits.refit_iterations if rank == 0 else 0),
                                float(known),
                                fits.objective if known else 0.0,
                            ]
                        ),
                        lib,
                    )
                )
                fits.refit_iterations, fits.objective = 0, None
                report["refit_iterations"].append(int(refit_iterations))
                report["refit_solver"].append(
                    "warm" if solver_objective else self.engine
                )
                # Rank 0 checks and measures its final model while the
                # others wait quietly at this barrier, not spinning in bcast.
                summary = sv_block = failure = None
                if rank == 0:
                    try:
                        if model is None:
                            raise ValueError(
                                "the union of support vectors on rank 0 could not be fitted "
                                "(a single class or fewer than two rows with positive weight)"
                            )
                        # Another engine's model becomes a plain scikit-learn one, so
                        # estimator_ predicts and loads without the extra.
                        model = plain_sklearn_model(model, self._sklearn_class)
                        if self._classifier and not np.array_equal(
                            model.classes_, classes
                        ):
                            raise ValueError(
                                f"the final union of support vectors lacks classes: it has "
                                f"{model.classes_.tolist()} of {classes.tolist()}"
                            )
                        # The support vectors in the model's order, so labels align with dual_coef_.
                        sv_block = fitted[np.asarray(model.support_)]
                        summary = model
                    except Exception as exc:
                        failure = exc
                # Rank 0 refits the last union (inside _cascade_pass) and measures
                # it; the others wait for it here, polling with sleeps, instead
                # of spinning inside the broadcast.
                phase_tic = time.perf_counter()
                quiet_barrier(lib)
                agree(failure, lib, "fitting the global SVM")
                model = bcast_object(summary, lib)
                if pass_number == self.max_passes:
                    # No pass can follow: checking every row for violators would only
                    # feed the report, at the cost of a decision function over all rows.
                    report["passes"] = pass_number
                    report["support_vectors_per_layer"].append(counts_per_layer)
                    report["violators"].append(None)
                    report["dual_objective"].append(None)
                    report["converged"] = None
                    report["stopped_because"] = (
                        "max_passes (convergence not checked after the last pass)"
                    )
                    fits.seconds["model_broadcasts"] += time.perf_counter() - phase_tic
                    break
                # Only the model's support vectors travel back, with labels, weights and ids.
                sv_rows = bcast_rows_quietly(sv_block, lib)
                if rank == 0:
                    sent += sv_rows.nbytes * (size - 1)
                fits.seconds["model_broadcasts"] += time.perf_counter() - phase_tic
                phase_tic = time.perf_counter()
                with collective_check(lib, "checking margins against the global model"):
                    violating, sending = self._violators(
                        model, own, sv_rows, classes, layout, margins
                    )
                    mine = int(violating.sum())
                    if solver_objective:
                        # The warm solver's gradient gave it (known_objective).
                        part = 0.0
                    else:
                        # The dual objective (for the stopping test) costs
                        # O(support vectors²) kernel entries: every rank sums a
                        # share of the blocks.
                        share = (rank, size)
                        part = (
                            svc_dual_objective(model, share)
                            if self._classifier
                            else svr_dual_objective(
                                model, layout.unpack(sv_rows)[1], share
                            )
                        )
                violators, dual = allreduce_identical(
                    np.array([float(mine), part]), lib
                )
                violators = int(violators)
                dual = float(dual) + (known_objective if solver_objective else 0.0)
                fits.seconds["margin_checks"] += time.perf_counter() - phase_tic
                report["passes"] = pass_number
                report["support_vectors_per_layer"].append(counts_per_layer)
                report["violators"].append(violators)
                report["dual_objective"].append(dual)
                if violators == 0:
                    report["converged"], report["stopped_because"] = (
                        True,
                        "no violators",
                    )
                    break
                if previous_dual is not None and abs(
                    dual - previous_dual
                ) <= self.tol * max(abs(dual), 1e-300):
                    report["stopped_because"] = (
                        "dual objective changed by less than tol"
                    )
                    break
                previous_dual = dual
                # The next pass refits the global support vectors plus every rank's
                # violators on rank 0: rows that satisfy the KKT conditions of the
                # global model cannot change it.
                extra = sv_rows
                if loop is not None:
                    loop.step(
                        lambda: self._passes_state(
                            own, sending, extra, previous_dual, report, sent, lib
                        ),
                        iteration=pass_number,
                    )
            else:
                report["stopped_because"] = "max_passes"
            # Wall seconds per phase, the slowest rank's: the local fits run in
            # parallel, the rest is rank 0's work that the others wait for.
            phases = list(fits.seconds)
            _, slowest = allreduce_minmax(
                np.array([fits.seconds[k] for k in phases]), lib
            )
            phase_seconds = dict(zip(phases, slowest.tolist()))
            report["bytes_moved"] = int(
                allreduce_identical(np.array([float(sent)]), lib)[0]
            )
            report["support_vectors"] = int(model.support_.shape[0])
            self.n_rows_ = int(sum(n_rows))

        self.estimator_ = self._finish_model(model, gamma)
        self.cascade_ = report
        self.n_features_in_ = n_features
        self.support_vectors_ = self.estimator_.support_vectors_
        self.dual_coef_ = self.estimator_.dual_coef_
        self.intercept_ = self.estimator_.intercept_
        if self._classifier:
            self.classes_ = self.estimator_.classes_
        # The workflow's phases (read, local compute, communicate, solve, import).
        self.timings_ = {
            "fit": time.perf_counter() - tic,
            "import": phase_seconds["import"],
            "local_compute": phase_seconds["local_fit"]
            + phase_seconds["margin_checks"],
            "solve": phase_seconds["merges"] + phase_seconds["feedback_refits"],
            "communicate": phase_seconds["model_broadcasts"],
            # The cascade's own phases, behind the four above.
            **{f"cascade_{k}": v for k, v in phase_seconds.items() if k != "import"},
        }
        return self

    # -- checkpoints of the passes (see mpitrain.checkpoint) ---------------------

    def _checkpoint_loops(
        self,
        gamma: float,
        classes,
        n_features: int,
        n_rows: int,
        lib: Intracomm,
    ):
        """The checkpoint loops of the passes and of the first pass's layers, or ``(None, None)``.

        Collective over ``lib`` inside a checkpointing context (nothing
        happens outside one).  The passes' saved state is global (support
        vectors, ids of the rows to send, report), so a resume may use
        another number of ranks.  The layers' state is every rank's
        surviving rows, kept on rank 0 (mode "root"); it can only continue on
        the same number of ranks, the tree's shape (see
        :meth:`_resume_layers`).  Both loops are always opened, in this
        order, so that several fits in one context find their own states.
        """
        from mpitrain.checkpoint import checkpoint_loop

        key = {
            "estimator": type(self).__name__,
            "params": {
                k: v for k, v in self.get_params(deep=False).items() if k != "comm"
            },
            "gamma": gamma,
            "classes": classes,
            "features": n_features,
            "rows": n_rows,
        }
        passes = checkpoint_loop(
            "cascade",
            key=key,
            comm=lib,
            mode="all",
            what=f"{type(self).__name__} cascade",
            unit="pass",
        )
        if passes is None:
            return None, None
        layers = checkpoint_loop(
            "cascade_layers",
            key=key,
            comm=lib,
            mode="root",
            what=f"{type(self).__name__} cascade's first pass",
            unit="layer",
        )
        return passes, layers

    @staticmethod
    def _layer_boundary(
        layers,
        done: int,
        tree,
        survivors: np.ndarray,
        counts: list[int],
        sent: int,
        lib: Intracomm,
    ) -> None:
        """A layer boundary of the first pass: save if due. Collective over ``lib``.

        ``done`` layers are complete (the local fits are layer 0).  There is
        no boundary after the last merge: rank 0 then holds the model, and
        the pass's own boundary follows.
        """
        if layers is None or done > len(tree):
            return

        def state() -> dict | None:
            # Every rank's survivors, in rank order, on rank 0 (buffers, not pickles).
            rows = gatherv_rows(survivors, lib, what="gathering the survivors to save")
            per_rank = allgather_array(
                np.array([len(survivors), sent], dtype=np.int64), lib
            )
            if lib.Get_rank() != 0:
                return None
            return {
                "survivors": rows,
                "rows_per_rank": per_rank[:, 0].copy(),
                "sent_per_rank": per_rank[:, 1].copy(),
                "counts": [int(c) for c in counts],
                "ranks": lib.Get_size(),
            }

        layers.step(state, iteration=done)

    @staticmethod
    def _resume_layers(layers, lib: Intracomm) -> tuple[np.ndarray, list[int], int]:
        """``(survivors, counts, sent)`` of this rank from the saved layer boundary. Collective over ``lib``.

        Rank 0 holds the saved state; each rank gets its own rows back.
        """
        from mpitrain.checkpoint import CheckpointError

        state = layers.state
        head = None
        if lib.Get_rank() == 0:
            head = (
                state["ranks"],
                state["rows_per_rank"].tolist(),
                state["sent_per_rank"].tolist(),
                state["counts"],
            )
        saved_ranks, rows_per_rank, sent_per_rank, counts = bcast_object(head, lib)
        size = lib.Get_size()
        if saved_ranks != size:
            raise CheckpointError(
                f"the checkpoint {layers.checkpoint.path} holds {layers.what} after "
                f"{layers.unit} {layers.iteration} on {saved_ranks} ranks; the cascade's "
                f"tree depends on the number of ranks, so resume it on {saved_ranks} "
                f"ranks, not {size} (or remove it to start again)"
            )
        survivors = scatterv_rows(
            state["survivors"] if lib.Get_rank() == 0 else None,
            rows_per_rank,
            lib,
            what="restoring the survivors",
        )
        return survivors, list(counts), int(sent_per_rank[lib.Get_rank()])

    @staticmethod
    def _passes_state(
        own: np.ndarray,
        sending: np.ndarray,
        extra: np.ndarray,
        previous_dual: float,
        report: dict,
        sent: int,
        lib: Intracomm,
    ) -> dict | None:
        """What the next pass needs, on rank 0 (``None`` elsewhere). Collective over ``lib``."""
        ids = gatherv_rows(np.ascontiguousarray(own[sending][:, -1]), lib)
        bytes_moved = allreduce_identical(np.array([float(sent)]), lib)[0]
        if lib.Get_rank() != 0:
            return None
        return {
            "extra": extra,
            "sending_ids": ids,
            "previous_dual": previous_dual,
            "report": report,
            "bytes_moved": int(bytes_moved),
        }

    @staticmethod
    def _resume_passes(loop, own: np.ndarray, rank: int):
        """``(first pass, extra, sending, previous_dual, report, sent)`` from a saved state. Local."""
        state = loop.state
        sending = np.isin(own[:, -1], state["sending_ids"])
        # The bytes moved before, counted once (on rank 0) in the final sum.
        sent = state["bytes_moved"] if rank == 0 else 0
        return (
            loop.iteration + 1,
            state["extra"],
            sending,
            state["previous_dual"],
            state["report"],
            sent,
        )

    def _violators(
        self,
        model,
        own: np.ndarray,
        sv_rows: np.ndarray,
        classes,
        layout: _Block,
        margins: _MarginKernels,
    ) -> tuple[np.ndarray, np.ndarray]:
        """This rank's rows that violate the global model's KKT conditions, and the rows to
        send to the next feedback pass (the violators and the rows within
        ``feedback_margin`` of violating), as masks. Local.

        ``margins`` keeps the kernel between this rank's rows and the
        support vectors from one pass to the next.
        """
        X, label, weight, ids = layout.unpack(own)
        sv_ids = layout.unpack(sv_rows)[3]
        candidates = (weight > 0) & ~np.isin(ids, sv_ids)
        violating = np.zeros(len(own), dtype=bool)
        sending = np.zeros(len(own), dtype=bool)
        if not candidates.any():
            return violating, sending
        decision = margins.decisions(model, X, sv_ids)
        decision = (
            decision_values(model, X[candidates])
            if decision is None
            else decision[candidates]
        )
        if self._classifier:
            y_index = label[candidates].astype(np.intp)
            violating[candidates] = svc_violators(
                decision, y_index, len(classes), self.tol
            )
            # y·f(x) < 1 + m  ⇔  y·f(x) < 1 − tol with tol = −m.
            sending[candidates] = svc_violators(
                decision, y_index, len(classes), -self.feedback_margin
            )
        else:
            violating[candidates] = svr_violators(
                label[candidates], decision, self.epsilon, self.tol
            )
            sending[candidates] = svr_violators(
                label[candidates],
                decision,
                self.epsilon,
                -self.feedback_margin * self.epsilon,
            )
        return violating, sending | violating

    def _warm_solver(
        self, params: dict, classes, budget_bytes: float, n_rows: int
    ) -> _WarmSolver | None:
        """The warm-started solver for the refits, or None for the engine's. Local.

        ``n_rows``: all ranks' training rows, so every rank chooses alike.

        Nothing is loaded here: only ranks that refit (the tree's leaders)
        load numba, on a thread while they fit their own rows.
        """
        if self.refit_solver == "engine" or (
            self.refit_solver == "auto" and n_rows < WARM_MIN_ROWS
        ):
            return None
        return _WarmSolver(self, params, classes, budget_bytes)

    def _finish_model(self, model, gamma: float):
        """The user's parameters on the fitted model; ``_gamma`` stays the global numeric value."""
        user = {
            k: v
            for k, v in self._sklearn_params().items()
            if k in model.get_params() and k != "probability"
        }
        model.set_params(**user)
        set_libsvm_gamma(model, gamma)
        return model

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = False
        return tags


_CASCADE_CONSTRAINTS = {
    "feedback_margin": [Interval(Real, 0, None, closed="left")],
    "kernel": [StrOptions(set(KERNELS))],
    "strategy": [StrOptions({"cascade"})],
    "arity": [Interval(Integral, 2, None, closed="left")],
    "max_passes": [Interval(Integral, 1, None, closed="left")],
    "engine": [StrOptions({"sklearn", "intelex"})],
    "refit_solver": [StrOptions({"auto", "warm", "engine"})],
    "comm": "no_validation",
}


class SVC(ClassifierMixin, _CascadeSVM):
    """Kernel support-vector classifier over rows split across MPI ranks, by cascade.

    scikit-learn's :class:`sklearn.svm.SVC` parameters, plus the cascade's.
    ``fit`` is collective over ``comm``: every rank calls it with its own rows
    (possibly none).  See the module docstring for the algorithm and its
    privacy cost (support vectors, raw rows, move between ranks).

    Parameters
    ----------
    C, kernel, degree, gamma, coef0, shrinking, tol, cache_size, class_weight, max_iter,
    decision_function_shape, break_ties, random_state : as in :class:`sklearn.svm.SVC`
        ``kernel`` is one of "linear", "poly", "rbf", "sigmoid".
        ``gamma="scale"`` and ``class_weight="balanced"`` use all ranks' rows.
        ``tol`` is also the margin slack of the feedback test and the
        relative dual-objective change that stops the passes.
    probability : bool, default=False
        Only False: Platt scaling would need its own distributed
        cross-validation.
    verbose : bool, default=False
    strategy : {"cascade"}, default="cascade"
    arity : int, default=2
        Ranks per merge group in the tree; ``arity >= ranks`` gathers all
        sets on rank 0 at once.
    max_passes : int, default=5
        Cascade passes at most (the first plus feedback passes).
    feedback_margin : float, default=0.1
        Feedback passes send the violators and also the rows that satisfy
        the margin by less than this (``y·f(x) < 1 + feedback_margin``; SVR:
        ``|y − f(x)| > ε·(1 − feedback_margin)``): the rows most likely to
        violate after the refit, so fewer passes are needed (on 40,000
        rows: 643 → 2 → 0 violators, converged in three passes; violators
        only: 643 → 52 → 4).  ``0`` sends violators only.
    engine : {"sklearn", "intelex"}, default="sklearn"
        Solver of every fit.  "intelex" uses scikit-learn-intelex
        (``pip install "mpitrain[intel]"``); its final model is copied onto a
        plain scikit-learn SVC, so ``estimator_`` never needs the extra.
    refit_solver : {"auto", "warm", "engine"}, default="auto"
        Solver of the merges and feedback refits.  "auto" is "warm" from
        :data:`WARM_MIN_ROWS` training rows (all ranks' together) on, and
        "engine" below: there libsvm refits a union in a fraction of a
        second, less than numba takes to load the warm solver's code (and
        far less than its first compilation on a new installation).  "warm" is libsvm's
        algorithm (:mod:`mpitrain.svm._smo`) started from the coefficients
        the rows had in the fits below (new rows at zero), with the union's
        kernel matrix kept between refits; a union whose matrix exceeds the
        budget (at least ``cache_size`` MB, up to a quarter of the memory
        the rank may use) is refitted by ``engine``, whose shrinking serves
        better there.  The first layer's local fits use ``engine``.
        "engine" refits every union from scratch with ``engine``.  Without
        numba, "warm" warns and uses the engine.
    comm : mpi4py.MPI.Intracomm, default=None
        ``None`` means ``COMM_WORLD``; resolved in ``fit``.

    Attributes
    ----------
    estimator_ : sklearn.svm.SVC
        The fitted model, identical on every rank; it has the user's
        parameters (``gamma="scale"`` stays "scale"), while its ``_gamma``,
        which prediction uses, is the value from all ranks' rows and its
        ``class_weight_`` the global weights.
    cascade_ : dict
        ``passes``, ``support_vectors_per_layer`` (first pass: layer 0 summed
        over ranks, then each merge layer summed over its leaders; feedback
        passes: the rows sent to rank 0 (violators and near-violators), then the
        support vectors of its refit), ``violators`` per pass,
        ``dual_objective`` per pass (libsvm's ``½αᵀQα − Σα``, summed over the
        one-vs-one problems; ``None`` after the last allowed pass, where it
        would only feed the report), ``converged`` (True: no violators, the
        optimum on all rows up to ``tol``; ``None``: the run ended at
        ``max_passes`` and the last pass was not checked, since checking costs
        a decision function over every row), ``stopped_because``, ``bytes_moved`` (rows sent
        between ranks, broadcasts counted once per receiving rank),
        per pass ``refit_solver`` ("warm" or the engine) and
        ``refit_iterations`` (the solver and iterations of rank 0's refit
        that made the pass's global model; on one rank the local fit is the
        model: the engine, 0),
        ``support_vectors``, ``arity``, ``layers`` and ``privacy``.
    classes_, support_vectors_, dual_coef_, intercept_ : as on ``estimator_``
    timings_ : dict
        Wall seconds, the slowest rank's: ``fit``, ``import`` (loading the
        solvers), ``local_compute`` (the first layer's fits and the margin
        checks), ``solve`` (merges and feedback refits, with their row
        transfers) and ``communicate`` (checking and broadcasting each
        pass's model).
    n_features_in_, n_rows_
    """

    _classifier = True
    _target = "classes"
    _sklearn_class = _sk_svm.SVC
    _parameter_constraints = {
        **_sk_svm.SVC._parameter_constraints,
        **_CASCADE_CONSTRAINTS,
        "probability": ["boolean"],
    }

    def __init__(
        self,
        *,
        C=1.0,
        kernel="rbf",
        degree=3,
        gamma="scale",
        coef0=0.0,
        shrinking=True,
        probability=False,
        tol=1e-3,
        cache_size=200,
        class_weight=None,
        verbose=False,
        max_iter=-1,
        decision_function_shape="ovr",
        break_ties=False,
        random_state=None,
        strategy="cascade",
        arity=2,
        max_passes=5,
        feedback_margin=0.1,
        engine="sklearn",
        refit_solver="auto",
        comm=None,
    ):
        self.C = C
        self.kernel = kernel
        self.degree = degree
        self.gamma = gamma
        self.coef0 = coef0
        self.shrinking = shrinking
        self.probability = probability
        self.tol = tol
        self.cache_size = cache_size
        self.class_weight = class_weight
        self.verbose = verbose
        self.max_iter = max_iter
        self.decision_function_shape = decision_function_shape
        self.break_ties = break_ties
        self.random_state = random_state
        self.strategy = strategy
        self.arity = arity
        self.max_passes = max_passes
        self.feedback_margin = feedback_margin
        self.engine = engine
        self.refit_solver = refit_solver
        self.comm = comm

    def _check_params(self) -> None:
        if self.probability:
            raise ValueError(
                "probability=True is not supported by the cascade (Platt scaling would need "
                "a distributed cross-validation); use probability=False"
            )


class SVR(RegressorMixin, _CascadeSVM):
    """Kernel ε-support-vector regression over rows split across MPI ranks, by cascade.

    scikit-learn's :class:`sklearn.svm.SVR` parameters plus ``strategy``,
    ``arity``, ``max_passes``, ``feedback_margin``, ``engine``,
    ``refit_solver`` and ``comm`` (see :class:`SVC`).
    The feedback test is ``|y − f(x)| > epsilon + tol``; the dual objective
    is libsvm's ``½βᵀKβ + ε Σ|β| − Σ yβ`` with ``β = α − α*``.

    Attributes
    ----------
    estimator_ : sklearn.svm.SVR
    cascade_ : dict
        As for :class:`SVC`.
    support_vectors_, dual_coef_, intercept_, n_features_in_, n_rows_, timings_
    """

    _classifier = False
    _sklearn_class = _sk_svm.SVR
    _parameter_constraints = {
        **_sk_svm.SVR._parameter_constraints,
        **_CASCADE_CONSTRAINTS,
    }

    def __init__(
        self,
        *,
        kernel="rbf",
        degree=3,
        gamma="scale",
        coef0=0.0,
        tol=1e-3,
        C=1.0,
        epsilon=0.1,
        shrinking=True,
        cache_size=200,
        verbose=False,
        max_iter=-1,
        strategy="cascade",
        arity=2,
        max_passes=5,
        feedback_margin=0.1,
        engine="sklearn",
        refit_solver="auto",
        comm=None,
    ):
        self.kernel = kernel
        self.degree = degree
        self.gamma = gamma
        self.coef0 = coef0
        self.tol = tol
        self.C = C
        self.epsilon = epsilon
        self.shrinking = shrinking
        self.cache_size = cache_size
        self.verbose = verbose
        self.max_iter = max_iter
        self.strategy = strategy
        self.arity = arity
        self.max_passes = max_passes
        self.feedback_margin = feedback_margin
        self.engine = engine
        self.refit_solver = refit_solver
        self.comm = comm
