"""Sufficient statistics of least squares: accumulate, pool across ranks, solve.

Least squares with or without an L2 penalty needs only weighted sums over
rows: the row count, the weight total, the means of X and y and the centred
scatter matrices XᵀX, Xᵀy.  Each rank accumulates them over its own rows,
block by block; the ranks pool them with two reductions; one rank solves
the small d×d system.  Only numpy (and scipy for NNLS) is needed here, so
rows can stream while scikit-learn is still being imported.

Numerical stability: rows are shifted by a reference point close to their
mean before the sums of squares (so no large-mean cancellation), and parts
are pooled with the exact formula ``S = Σ_r S_r + Σ_r W_r (m_r - m)(m_r - m)ᵀ``:
one tiny reduction for the global mean, then one of the d×d matrices, with
every term positive semi-definite.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from mpitrain.comm import (
    agree,
    allreduce_sum,
    collective_check,
    library_comm,
    node_layout,
    require_same,
)
from mpitrain.data import available_memory
from mpitrain.report import format_bytes
from mpitrain.stats._gram import (
    MAX_KERNEL_COLUMNS,
    GramKernel,
    kernel_choice,
    kernel_pays,
    load_in_background,
)
from mpitrain.utils._rows import require_rows
from mpitrain.utils.threads import cores_available, threads_in_force

if TYPE_CHECKING:  # pragma: no cover
    from mpi4py.MPI import Intracomm

__all__ = [
    "MAX_GRAM_FEATURES",
    "LinearStatistics",
    "StatisticsAccumulator",
    "local_statistics",
    "PolynomialMap",
    "combine_statistics",
    "allreduce_statistics",
    "allreduce_statistics_many",
    "LeastSquaresSolution",
    "solve_least_squares",
    "LeastSquaresSurrogate",
    "least_squares_surrogate",
    "gram_bytes",
    "check_gram_size",
    "check_gram_fits",
    "check_statistics",
    "PooledSolve",
    "pool_and_solve",
    "contribute_statistics",
    "check_model_rank",
]


# Work buffer per chunk: small enough that syrk reads it back from L2 (1 MB
# per core on the machine measured), but at least _MIN_CHUNK_ROWS rows so
# syrk stays efficient.  One thread, median of 7, against 4 MB and 2,048
# rows: 1,000,000 x 50 in 0.188 s against 0.227; 2,000,000 x 100 (+1 target)
# in 0.96 against 1.23; 500,000 x 100 in 0.226 against 0.273; at 10 columns
# no difference.
_CHUNK_BYTES = 1 << 20
_MIN_CHUNK_ROWS = 512

#: Beyond this many features the exact method refuses: the d×d Gram takes
#: 3.2 GB per copy at 20,000 and its O(d³) solve takes minutes or more.
MAX_GRAM_FEATURES = 20_000
# Square matrices of the Gram's size alive at the peak of a fit: the
# accumulated sum, one chunk's product, the centred scatter, the pooled
# copy, and the solver's factor (rank 0).
_GRAM_COPIES = 5


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
    n_inputs : int
        Features of the rows before any feature map (``d`` without one).
    """

    count: int
    weight: float
    mean: np.ndarray
    scatter: np.ndarray
    n_features: int
    n_inputs: int

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


class StatisticsAccumulator:
    """Accumulates :class:`LinearStatistics` over blocks of rows, one at a time. Pure.

    Rows are copied chunk by chunk into a float64 work buffer ``[x - s, y - s, 1]``
    (times ``sqrt(w)``), shifted by the first chunk's mean ``s`` so that sums of
    squares do not cancel, and their Gram matrix is added.  Up to
    :data:`~mpitrain.stats._gram.MAX_KERNEL_COLUMNS` columns the compiled
    kernel of :class:`~mpitrain.stats._gram.GramKernel` does the copy and the
    product (near the ``dgemm`` peak where ``syrk`` reaches about 60 %, and
    split over the rank's threads); wider, one ``syrk`` per chunk.

    Parameters
    ----------
    n_inputs : int
        Features of the rows given to :meth:`add`.
    n_targets : int
    transform : callable, default=None
        Row-local feature map applied per chunk (e.g. :class:`PolynomialMap`),
        so the expanded matrix never exists for all rows at once.
    n_features : int, default=None
        Features after ``transform`` (required with a transform).
    chunk_bytes, min_rows : int
        Size of the float64 work buffer, and its least number of rows.
    use_kernel : bool or None, default=None
        None: the compiled kernel where its width allows and the rows repay
        loading it (see ``expected_rows``), unless the environment variable
        ``MPITRAIN_GRAM_KERNEL`` says ``always`` or ``never``
        (:func:`~mpitrain.stats._gram.kernel_choice`); True: wherever the
        width allows; False: BLAS ``syrk`` at every width.
    expected_rows : int, default=None
        Rows this accumulator will be given in all (a rank's slice), so that
        the kernel is chosen from the first block on, and loaded on a thread
        from the start.
    """

    # Defaults for accumulators restored from checkpoints written before these existed.
    use_kernel = None
    expected_rows = None
    _gram_kernel = None
    _threads: int | None = None

    def __init__(
        self,
        n_inputs: int,
        n_targets: int,
        *,
        transform=None,
        n_features: int | None = None,
        chunk_bytes: int = _CHUNK_BYTES,
        min_rows: int = _MIN_CHUNK_ROWS,
        use_kernel: bool | None = None,
        expected_rows: int | None = None,
    ):
        d = n_inputs if transform is None else n_features
        if d is None:
            raise ValueError("n_features is required with a transform")
        self.n_inputs, self.n_features, self.n_targets = n_inputs, d, n_targets
        self.transform = transform
        p = d + n_targets + 1
        self._rows = int(max(min_rows, chunk_bytes // (8 * p)))
        self._buf: np.ndarray | None = None
        self._gram = np.zeros((p, p))
        self._shift: np.ndarray | None = None
        self.count = 0
        self.use_kernel = kernel_choice() if use_kernel is None else use_kernel
        self.expected_rows = expected_rows
        if expected_rows and self.uses_kernel(expected_rows):
            # Paid while the first rows are read rather than at the first block.
            load_in_background()

    def __getstate__(self) -> dict:
        # The work buffer (up to chunk_bytes) is scratch: a pickle (a checkpoint) needs none.
        # The thread count is this process's: a checkpoint resumed elsewhere asks again.
        return {**self.__dict__, "_buf": None, "_gram_kernel": None, "_threads": None}

    def add(
        self,
        X: np.ndarray,
        Y: np.ndarray,
        sample_weight: np.ndarray | None = None,
        first_row: int = 0,
    ) -> None:
        """Add rows ``X`` (n, n_inputs), targets ``Y`` (n, n_targets) and optional weights.

        Raises ValueError naming the row (numbered from ``first_row``) if a
        value is NaN or infinite, or so large that its square overflows.
        """
        # A non-finite or huge value makes numpy warn (``inf - inf``, an
        # overflowing square) before the Gram's diagonal names the row:
        # the error says it all, the warnings are noise.
        with np.errstate(invalid="ignore", over="ignore"):
            n, d = X.shape[0], self.n_features
            if n and self._shift is None:
                head = (
                    X[: self._rows]
                    if self.transform is None
                    else self.transform(X[: self._rows])
                )
                self._shift = np.concatenate(
                    [
                        np.mean(head, axis=0, dtype=np.float64),
                        np.mean(Y[: self._rows], axis=0, dtype=np.float64),
                    ]
                )
            kernel = self._kernel(self.count + n) if n else None
            if kernel is not None and self.transform is None:
                # One call for the whole block: the kernel chunks it to its cache and threads.
                self._add_gram(
                    kernel.gram(X, Y, self._shift, sample_weight), X, Y, first_row
                )
                self.count += n
                return
            if self._buf is None and n and kernel is None:
                self._buf = np.empty((min(n, self._rows), d + self.n_targets + 1))
            for start in range(0, n, self._rows):
                stop = min(n, start + self._rows)
                features = (
                    X[start:stop]
                    if self.transform is None
                    else self.transform(X[start:stop])
                )
                weight = None if sample_weight is None else sample_weight[start:stop]
                if kernel is not None:
                    gram = kernel.gram(features, Y[start:stop], self._shift, weight)
                else:
                    if stop - start > self._buf.shape[0]:
                        self._buf = np.empty((stop - start, self._buf.shape[1]))
                    z = self._buf[: stop - start]
                    # Copy and shift in one pass over the chunk.
                    np.subtract(features, self._shift[:d], out=z[:, :d])
                    np.subtract(Y[start:stop], self._shift[d:], out=z[:, d:-1])
                    z[:, -1] = 1.0
                    if weight is not None:
                        z *= np.sqrt(weight)[:, None]
                    gram = z.T @ z  # numpy recognises the transpose and calls syrk
                self._add_gram(gram, X[start:stop], Y[start:stop], first_row + start)
            self.count += n

    def uses_kernel(self, rows: int) -> bool:
        """Whether a block that brings the rows added to ``rows`` uses the compiled kernel. Local.

        Chosen by the width and the rows (the larger of ``rows`` and
        ``expected_rows``), never by timing, so that every run of the same
        blocks sums in the same order.  Loading the kernel has a fixed cost
        (llvmlite's import and the cached code): in ``auto`` it is used once
        :func:`~mpitrain.stats._gram.kernel_pays` says the rows repay it;
        until then, BLAS.
        """
        p = self.n_features + self.n_targets + 1
        if p > MAX_KERNEL_COLUMNS or self.use_kernel is False:
            return False
        if self.use_kernel or self._gram_kernel is not None:
            return True
        rows = max(rows, self.expected_rows or 0)
        # threads_in_force() asks every loaded library (3 ms a call, 10 ms
        # the first in a process with MPI loaded; asked once per accumulator): not
        # when even all this process's cores would leave the work below the
        # kernel's threshold (the work grows with the threads).
        if not kernel_pays(rows, p, cores_available()):
            return False
        return kernel_pays(rows, p, self._threads_in_force())

    def _threads_in_force(self) -> int:
        if self._threads is None:
            self._threads = threads_in_force()
        return self._threads

    def _kernel(self, rows: int):
        """The compiled Gram kernel (:meth:`uses_kernel`), loaded on first use, or None. Local."""
        if not self.uses_kernel(rows):
            return None
        if self._gram_kernel is None:
            p = self.n_features + self.n_targets + 1
            try:
                self._gram_kernel = GramKernel(p, threads=self._threads_in_force())
            except (ImportError, RuntimeError) as exc:
                # llvmlite missing, or LLVM unable to compile or load the
                # code: BLAS gives the same statistics, more slowly.
                import warnings

                warnings.warn(
                    f"the compiled Gram kernel is not available ({exc}); using BLAS",
                    RuntimeWarning,
                    stacklevel=3,
                )
                self.use_kernel = False
                return None
        return self._gram_kernel

    def _add_gram(self, gram: np.ndarray, X, Y, first_row: int) -> None:
        # A NaN or infinity anywhere in a row reaches the diagonal of the Gram matrix.
        if not np.isfinite(gram[np.diag_indices_from(gram)]).all():
            _raise_non_finite(X, Y, first_row)
        self._gram += gram

    def result(self) -> LinearStatistics:
        """The statistics of all rows added so far."""
        gram = self._gram
        k = self.n_features + self.n_targets
        shift = np.zeros(k) if self._shift is None else self._shift
        weight = gram[-1, -1]
        shifted_mean = gram[:-1, -1] / weight if weight > 0 else np.zeros(k)
        scatter = gram[:-1, :-1] - weight * np.outer(shifted_mean, shifted_mean)
        return LinearStatistics(
            self.count,
            float(weight),
            shift + shifted_mean,
            scatter,
            self.n_features,
            self.n_inputs,
        )


def _raise_non_finite(X: np.ndarray, Y: np.ndarray, first_row: int) -> None:
    # A NaN or infinity anywhere in a row reaches the diagonal of the Gram matrix.
    for name, values in (("X", X), ("y", Y)):
        bad = ~np.isfinite(values).all(axis=1)
        if bad.any():
            raise ValueError(
                f"Input {name} contains NaN or infinity in {int(bad.sum())} row(s) of a block, "
                f"the first at row {first_row + int(np.argmax(bad))}"
            )
    raise ValueError(
        f"values too large: sums of squares overflow float64 near row {first_row}"
    )


def local_statistics(
    X: np.ndarray,
    Y: np.ndarray,
    sample_weight: np.ndarray | None = None,
    *,
    transform=None,
    n_features: int | None = None,
    chunk_bytes: int = _CHUNK_BYTES,
    min_rows: int = _MIN_CHUNK_ROWS,
    first_row: int = 0,
) -> LinearStatistics:
    """Statistics of one block of rows (see :class:`StatisticsAccumulator`). Pure.

    ``first_row``: the global number of the block's first row, so that a
    non-finite value is reported at its row in the whole data set.
    """
    acc = StatisticsAccumulator(
        X.shape[1],
        Y.shape[1],
        transform=transform,
        n_features=n_features,
        chunk_bytes=chunk_bytes,
        min_rows=min_rows,
    )
    acc.add(X, Y, sample_weight, first_row=first_row)
    return acc.result()


class PolynomialMap:
    """Polynomial features of degree 1..``degree``, without the bias column. Pure.

    The columns come in the order of scikit-learn's ``PolynomialFeatures``
    (``include_bias=False``): by degree, then lexicographically by the
    combination of input columns, so the coefficients fit its pipeline.
    Needs no scikit-learn, so rows can stream before it is imported.
    """

    def __init__(self, n_inputs: int, degree: int, interaction_only: bool = False):
        from itertools import combinations, combinations_with_replacement

        pick = combinations if interaction_only else combinations_with_replacement
        self.combos = [
            c for k in range(1, degree + 1) for c in pick(range(n_inputs), k)
        ]
        self.n_output = len(self.combos)

    def __call__(self, X: np.ndarray) -> np.ndarray:
        out = np.empty((X.shape[0], self.n_output), dtype=np.float64)
        for j, combo in enumerate(self.combos):
            col = out[:, j]
            col[:] = X[:, combo[0]]
            for c in combo[1:]:
                col *= X[:, c]
        return out


def _pooled(parts_weight: float, parts_mean_sum: np.ndarray) -> np.ndarray:
    return (
        parts_mean_sum / parts_weight
        if parts_weight > 0
        else np.zeros_like(parts_mean_sum)
    )


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
    return LinearStatistics(
        sum(p.count for p in parts),
        weight,
        mean,
        scatter,
        parts[0].n_features,
        parts[0].n_inputs,
    )


def allreduce_statistics(local: LinearStatistics, comm: Intracomm) -> LinearStatistics:
    """Pool every rank's statistics; every rank gets the global ones.

    Collective over ``comm``: an ``Allreduce`` of ``d + t + 2`` numbers for
    the global mean, then one of the ``(d + t)²`` scatter matrix.
    """
    return allreduce_statistics_many([local], comm)[0]


def allreduce_statistics_many(
    parts: list[LinearStatistics], comm: Intracomm
) -> list[LinearStatistics]:
    """Pool every rank's statistics of several groups of rows at once (e.g. folds).

    Collective over ``comm``: every rank passes the same number of parts,
    part ``g`` holding this rank's rows of group ``g`` (possibly none);
    every rank gets the global statistics of each group.  Two reductions
    whatever the number of groups: one ``Allreduce`` of ``G (d + t + 2)``
    numbers for the global means, then one of the ``G`` scatter matrices,
    each pooled with the formula of :func:`combine_statistics`.
    """
    n_groups = len(parts)
    if n_groups == 0:
        return []
    k = parts[0].mean.size
    head = np.empty((n_groups, k + 2))
    for g, part in enumerate(parts):
        head[g, 0], head[g, 1], head[g, 2:] = (
            part.count,
            part.weight,
            part.weight * part.mean,
        )
    allreduce_sum(head, comm)
    means = [_pooled(float(head[g, 1]), head[g, 2:]) for g in range(n_groups)]
    scatter = np.empty((n_groups, k, k))
    for g, part in enumerate(parts):
        np.add(part.scatter, _between_scatter(part, means[g]), out=scatter[g])
    allreduce_sum(scatter, comm)
    return [
        LinearStatistics(
            int(round(head[g, 0])),
            float(head[g, 1]),
            means[g],
            scatter[g],
            part.n_features,
            part.n_inputs,
        )
        for g, part in enumerate(parts)
    ]


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
    a, b = _second_moments(stats, fit_intercept)
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


def _second_moments(
    stats: LinearStatistics, fit_intercept: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Copies of ``XᵀWX`` and ``XᵀWY``: centred with an intercept, raw without."""
    a = stats.xx.copy()
    b = stats.xy.copy()
    if not fit_intercept:
        # Raw second moments: adding the mean terms back is free of cancellation.
        a += stats.weight * np.outer(stats.x_mean, stats.x_mean)
        b += stats.weight * np.outer(stats.x_mean, stats.y_mean)
    return a, b


@dataclass
class LeastSquaresSurrogate:
    """A few rows ``(design, target)`` with the same least-squares loss as all rows.

    ``‖target - design b‖² = Σ w (y - x·b - c)² + const`` for every ``b`` (with
    ``c`` the optimal intercept when fitting one, else 0), so any penalised
    least-squares problem on all rows can be solved on these ``m ≤ d`` rows
    instead, with the penalty rescaled by ``m / weight``.

    Attributes
    ----------
    design : ndarray of shape (m, d)
        ``R`` with ``RᵀR = XᵀWX`` (upper Cholesky factor, ``m = d``; or
        ``Λ^½ Vᵀ`` over the ``m`` clearly positive eigenvalues when ``XᵀWX``
        is singular or nearly so).
    target : ndarray of shape (m, t)
        ``ỹ`` with ``Rᵀỹ = XᵀWy``.
    method : str
        ``"cholesky"`` or ``"eigh"``.
    """

    design: np.ndarray
    target: np.ndarray
    method: str


def least_squares_surrogate(
    stats: LinearStatistics, *, fit_intercept: bool = True
) -> LeastSquaresSurrogate:
    """Factor pooled statistics into a small equivalent least-squares problem. Pure.

    The loss ``Σ w (y - x·b - c)²``, minimised over the intercept ``c`` when
    ``fit_intercept``, equals ``bᵀ S b - 2 bᵀ C + const`` with the scatter
    ``S = XᵀWX`` and ``C = XᵀWy`` (centred, or raw without an intercept).
    With ``S = RᵀR`` and ``Rᵀỹ = C`` it is ``‖ỹ - R b‖² + const``.  ``C``
    lies in the range of ``S`` (both are sums over the same rows), so
    ``ỹ`` exists even when ``S`` is singular, e.g. with more features than
    rows; the eigen-directions dropped there have zero (or rounding-level)
    curvature, and the loss does not depend on them.
    """
    from scipy.linalg import solve_triangular

    a, b = _second_moments(stats, fit_intercept)
    try:
        factor = np.linalg.cholesky(a)
    except np.linalg.LinAlgError:
        factor = None
    if factor is not None:
        diag = np.abs(np.diag(factor))
        # Same guard as the direct solve: a factor this close to singular
        # would turn rounding noise of C into large entries of ỹ.
        if (
            diag.size
            and diag.min() > diag.max() * np.sqrt(np.finfo(np.float64).eps) * diag.size
        ):
            target = solve_triangular(factor, b, lower=True)
            return LeastSquaresSurrogate(
                np.ascontiguousarray(factor.T), target, "cholesky"
            )
    eig, vec = np.linalg.eigh(a)
    keep = eig > _eig_cutoff(eig)
    root = np.sqrt(eig[keep])
    design = root[:, None] * vec[:, keep].T
    target = (vec[:, keep].T @ b) / root[:, None]
    return LeastSquaresSurrogate(design, target, "eigh")


def gram_bytes(n_features: int, n_targets: int = 1) -> int:
    """Bytes of one ``(d + t + 1)²`` float64 Gram matrix, as the accumulator holds it. Pure."""
    return 8 * (n_features + n_targets + 1) ** 2


def check_gram_size(
    n_features: int,
    n_targets: int = 1,
    *,
    available_bytes: float | None = None,
    max_features: int = MAX_GRAM_FEATURES,
    copies: int = _GRAM_COPIES,
) -> int:
    """Refuse, before allocating, a Gram matrix that is too large. Pure.

    Parameters
    ----------
    n_features : int
        ``d``, features after any feature map.
    n_targets : int, default=1
    available_bytes : float, default=None
        Memory this process may use; ``None`` skips the memory test.
    max_features : int, default=MAX_GRAM_FEATURES
    copies : int, default=5
        Gram-sized matrices alive at the peak (more for several at once,
        e.g. one per fold).

    Returns
    -------
    int
        Bytes needed at the peak: ``copies`` Gram-sized matrices (five for
        one exact fit: accumulated, per chunk, centred, pooled, factored).

    Raises
    ------
    MemoryError
        If ``n_features > max_features`` or the peak exceeds ``available_bytes``;
        the message names the memory needed and the alternative.
    """
    one = gram_bytes(n_features, n_targets)
    need = copies * one
    side = n_features + n_targets + 1
    if n_features > max_features:
        reason = f"more than {max_features:,} features"
    elif available_bytes is not None and need > available_bytes:
        reason = f"only {format_bytes(available_bytes)} is available to this rank"
    else:
        return need
    raise MemoryError(
        f"{n_features:,} features are too many for the exact method ({reason}): it holds the "
        f"{side:,}×{side:,} Gram matrix, {format_bytes(one)} per copy and about {format_bytes(need)} "
        f'per rank at peak; use strategy="average" (coefficient averaging on each rank\'s rows) instead'
    )


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
    if (
        diag.size
        and diag.min() <= diag.max() * np.sqrt(np.finfo(np.float64).eps) * diag.size
    ):
        return None
    # Triangular solves (d² each), not general ones that would refactorise (d³).
    from scipy.linalg import cho_solve

    return cho_solve((factor, True), b)


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
    return np.stack(
        [nnls(root, rhs[:, j], maxiter=50 * a.shape[0])[0] for j in range(b.shape[1])]
    )


# Below this peak, asking how many ranks share a node is not worth a collective.
_SMALL_GRAM_BYTES = 256 << 20


def check_gram_fits(
    lib: Intracomm, n_features: int, n_targets: int = 1, *, copies: int = _GRAM_COPIES
) -> None:
    """Refuse a Gram matrix that will not fit, with the same error on every rank.

    Collective over ``lib``.  ``n_features`` must be the same on every rank
    (it decides whether the ranks ask how many of them share a node).
    """
    ranks_on_node = 1
    if copies * gram_bytes(n_features, n_targets) > _SMALL_GRAM_BYTES:
        ranks_on_node = node_layout(lib)["local_size"]
    with collective_check(lib, "checking memory for the Gram matrix"):
        check_gram_size(
            n_features,
            n_targets,
            available_bytes=available_memory(ranks_on_node),
            copies=copies,
        )


# -- an exact fit's collective part, with or without the model's classes -----------


def check_statistics(
    local: LinearStatistics, lib: Intracomm, n_out: int | None = None
) -> None:
    """Check this rank's statistics against every rank's before pooling. Collective over ``lib``.

    The same inputs on every rank, statistics of ``n_out`` features (the
    model's mapped width; ``None`` on a rank without the model, which
    leaves the check to those that have it), and memory for the pooled
    Gram matrix (pooling copies it a few more times).
    """
    require_same(lib, "features", local.n_inputs)
    with collective_check(lib, "checking the statistics"):
        if n_out is not None and local.n_features != n_out:
            raise ValueError(
                f"statistics of {local.n_features} features, the model maps "
                f"{local.n_inputs} inputs to {n_out}; use feature_map()"
            )
    check_gram_fits(lib, local.n_features, local.mean.size - local.n_features)


@dataclass
class PooledSolve:
    """What :func:`pool_and_solve` returns on each rank.

    Attributes
    ----------
    statistics : LinearStatistics
        The global statistics (every rank).
    solution : object
        What ``solve`` returned, on rank 0; ``None`` elsewhere.
    caught : list of warnings.WarningMessage
        The warnings ``solve`` raised on rank 0 (empty elsewhere).
    timings : dict
        ``communicate`` (the reduction) and ``solve`` (rank 0's solve and
        its agreement) seconds of this rank.
    """

    statistics: LinearStatistics
    solution: Any = None
    caught: list = field(default_factory=list)
    timings: dict = field(default_factory=dict)


def pool_and_solve(
    local: LinearStatistics,
    lib: Intracomm,
    solve: Callable[[LinearStatistics], Any] | None = None,
    what: str = "solving",
) -> PooledSolve:
    """Pool every rank's statistics and solve on rank 0. Collective over ``lib``.

    The collective part of an exact fit from sufficient statistics: the
    statistics are checked finite, their targets agreed, pooled (one
    reduction), the pooled rows checked, and ``solve(global statistics)``
    run on rank 0 alone (reductions may round differently on each rank,
    and the model must be bit-identical everywhere); its failure is raised
    on every rank (``what`` names the step; with the model on rank 0 alone,
    leave the default, which the other ranks use too, so that every rank
    raises the same message).  ``solve`` is used on rank 0
    only: a rank that will not hold the model passes ``None`` and needs no
    scikit-learn (:func:`contribute_statistics`).
    """
    with collective_check(lib, "computing local statistics"):
        if not np.isfinite(local.scatter).all():
            raise ValueError(
                "Input contains NaN or infinity, or sums of squares overflowed float64"
            )
    require_same(lib, "targets", local.mean.size - local.n_features)
    tic = time.perf_counter()
    stats = allreduce_statistics(local, lib)
    pooled = PooledSolve(stats, timings={"communicate": time.perf_counter() - tic})
    # Statistics pooled from elsewhere (fit_statistics) were never agreed on.
    require_rows(stats.count, lib.Get_size(), stats.weight)
    tic = time.perf_counter()
    failure = None
    if lib.Get_rank() == 0:
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                pooled.solution = solve(stats)
            pooled.caught = caught
        except Exception as exc:
            failure = exc
    agree(failure, lib, what)
    pooled.timings["solve"] = time.perf_counter() - tic
    return pooled


def contribute_statistics(local: LinearStatistics, comm: Intracomm) -> dict[str, float]:
    """A rank's part in an exact fit whose model rank 0 alone keeps. Collective over ``comm``.

    The ranks other than 0 call this while rank 0 calls the estimator's
    ``fit_statistics(local, every_rank=False)`` (same communicator, same
    collectives): their statistics are checked and pooled, and rank 0
    solves.  No model and no scikit-learn here: ``mpitrain train`` uses it
    so that only rank 0 imports scikit-learn for an exact fit.  Returns
    this rank's ``communicate`` and ``solve`` seconds, with
    ``local_compute`` 0 as the estimators report it.
    """
    with library_comm(comm) as lib:
        check_model_rank(lib, keeps_model=False)
        check_statistics(local, lib)
        pooled = pool_and_solve(local, lib)
    return {"local_compute": 0.0, **pooled.timings}


def check_model_rank(
    lib: Intracomm,
    *,
    keeps_model: bool,
    prepare: Callable[[], Any] | None = None,
) -> Any:
    """Refuse, on every rank, a fit whose model would not be on rank 0 alone. Collective over ``lib``.

    The first step of ``fit_statistics(every_rank=False)`` (rank 0,
    ``keeps_model=True``) and of :func:`contribute_statistics` (the others).
    Rank 0's ``prepare()`` (its checks of the model's parameters, its plan)
    runs inside the same agreement, so that a failure there reaches the
    other ranks instead of leaving them in the next collective; its result
    is returned (``None`` elsewhere).
    """
    result = None
    with collective_check(lib, "preparing the fit from statistics"):
        if keeps_model != (lib.Get_rank() == 0):
            raise ValueError(
                "with the model on rank 0 alone, rank 0 calls fit_statistics(every_rank=False) "
                "and the other ranks call contribute_statistics"
            )
        if prepare is not None:
            result = prepare()
    return result
