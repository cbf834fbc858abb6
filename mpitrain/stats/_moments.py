"""Mergeable column moments: counts, means and centred second moments that combine exactly across ranks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import sparse
from sklearn.utils.sparsefuncs import mean_variance_axis

from mpitrain.comm import allreduce_identical

if TYPE_CHECKING:  # pragma: no cover
    from mpi4py.MPI import Intracomm

__all__ = [
    "ColumnStats",
    "ColumnMoments",
    "local_moments",
    "combine_moments",
    "allreduce_moments",
]


# ----------------------------------------------------------------------------
# Pure math: mergeable moments


@dataclass
class ColumnStats:
    """Per-column summary of a set of rows: mergeable, without MPI.

    Attributes
    ----------
    rows : int
        Rows summarised (whatever their values).
    count : ndarray of int64, shape (n_columns,)
        Finite values per column.
    nan, posinf, neginf : ndarray of int64, shape (n_columns,)
        NaN, +inf and -inf values per column: the missing values.
    rows_with_missing : int
        Rows with at least one missing value in some column.
    mean : ndarray of float64, shape (n_columns,)
        Mean of the finite values (0 where ``count`` is 0).
    m2 : ndarray of float64, shape (n_columns,)
        Sum of squared deviations of the finite values from ``mean``.
    min, max : ndarray of float64, shape (n_columns,)
        Extremes of the finite values (+inf and -inf where ``count`` is 0).
    """

    rows: int
    count: np.ndarray
    nan: np.ndarray
    posinf: np.ndarray
    neginf: np.ndarray
    rows_with_missing: int
    mean: np.ndarray
    m2: np.ndarray
    min: np.ndarray
    max: np.ndarray

    #: Per-column fields, in the order of :meth:`to_array`.
    FIELDS = ("count", "nan", "posinf", "neginf", "mean", "m2", "min", "max")

    @classmethod
    def empty(cls, n_columns: int) -> ColumnStats:
        """The summary of no rows: the neutral element of :meth:`merge`."""
        zeros = np.zeros(n_columns, dtype=np.int64)
        return cls(
            0,
            zeros,
            zeros.copy(),
            zeros.copy(),
            zeros.copy(),
            0,
            np.zeros(n_columns),
            np.zeros(n_columns),
            np.full(n_columns, np.inf),
            np.full(n_columns, -np.inf),
        )

    @property
    def missing(self) -> np.ndarray:
        """NaN and ±inf values per column."""
        return self.nan + self.posinf + self.neginf

    @classmethod
    def of_block(cls, block: np.ndarray) -> ColumnStats:
        """Summarise one block of rows. Pure.

        Two passes over the block in float64: the mean of the finite values,
        then their deviations from it, with the rounding correction
        ``M2 = Σ d² − (Σ d)² / n``.

        Parameters
        ----------
        block : ndarray of shape (n_rows, n_columns)
        """
        block = np.asarray(block, dtype=np.float64)
        n, k = block.shape
        if n == 0:
            return cls.empty(k)
        finite = np.isfinite(block)
        if finite.all():
            count = np.full(k, n, dtype=np.int64)
            nan = posinf = neginf = np.zeros(k, dtype=np.int64)
            mean = block.mean(axis=0)
            dev = block - mean
            lo, hi = block.min(axis=0), block.max(axis=0)
            rows_with_missing = 0
        else:
            count = finite.sum(axis=0, dtype=np.int64)
            nan = np.isnan(block).sum(axis=0, dtype=np.int64)
            posinf = (block == np.inf).sum(axis=0, dtype=np.int64)
            neginf = n - count - nan - posinf
            values = np.where(finite, block, 0.0)
            mean = np.divide(
                values.sum(axis=0), count, out=np.zeros(k), where=count > 0
            )
            dev = np.where(finite, block - mean, 0.0)
            lo = np.where(finite, block, np.inf).min(axis=0)
            hi = np.where(finite, block, -np.inf).max(axis=0)
            rows_with_missing = int((~finite).any(axis=1).sum())
        correction = dev.sum(axis=0)
        m2 = np.einsum("ij,ij->j", dev, dev)
        m2 -= np.divide(
            correction * correction, count, out=np.zeros(k), where=count > 0
        )
        # The correction is at most the sum it corrects; rounding may cross zero.
        return cls(
            n,
            count,
            nan,
            posinf,
            neginf,
            rows_with_missing,
            mean,
            np.maximum(m2, 0.0),
            lo,
            hi,
        )

    def merge(self, other: ColumnStats) -> ColumnStats:
        """The summary of both sets of rows together. Pure.

        Chan et al.'s pooled formula: with ``n = n_a + n_b`` and
        ``δ = m_b − m_a``, ``m = m_a + δ n_b / n`` and
        ``M2 = M2_a + M2_b + δ² n_a n_b / n`` (columns without values in one
        part take the other part's moments unchanged).
        """
        na, nb = self.count.astype(np.float64), other.count.astype(np.float64)
        n = na + nb
        delta = other.mean - self.mean
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            share = np.where(n > 0, nb / n, 0.0)
            mean = np.where(
                nb == 0,
                self.mean,
                np.where(na == 0, other.mean, self.mean + delta * share),
            )
            between = np.where((na > 0) & (nb > 0), delta * delta * na * share, 0.0)
        return ColumnStats(
            self.rows + other.rows,
            self.count + other.count,
            self.nan + other.nan,
            self.posinf + other.posinf,
            self.neginf + other.neginf,
            self.rows_with_missing + other.rows_with_missing,
            mean,
            self.m2 + other.m2 + between,
            np.minimum(self.min, other.min),
            np.maximum(self.max, other.max),
        )

    def to_array(self) -> np.ndarray:
        """Everything as one float64 array (counts are exact below 2**53), for communication."""
        head = np.array([self.rows, self.rows_with_missing], dtype=np.float64)
        return np.concatenate(
            [head]
            + [np.asarray(getattr(self, f), dtype=np.float64) for f in self.FIELDS]
        )

    @classmethod
    def from_array(cls, values: np.ndarray) -> ColumnStats:
        """Inverse of :meth:`to_array`."""
        values = np.asarray(values, dtype=np.float64)
        k = (values.size - 2) // len(cls.FIELDS)
        parts = dict(zip(cls.FIELDS, values[2:].reshape(len(cls.FIELDS), k)))
        for name in ("count", "nan", "posinf", "neginf"):
            parts[name] = np.rint(parts[name]).astype(np.int64)
        return cls(
            int(round(values[0])), rows_with_missing=int(round(values[1])), **parts
        )

    def std(self, ddof: int = 1) -> np.ndarray:
        """Standard deviation of the finite values (NaN where ``count <= ddof``)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(
                self.count > ddof, np.sqrt(self.m2 / (self.count - ddof)), np.nan
            )


# ----------------------------------------------------------------------------
# Weighted moments for scaling


# Rows per block in the local passes: a few MB of float64 temporaries, so a
# rank's slice is never copied whole (same budget as mpitrain.stats).
_CHUNK_BYTES = 4 << 20
_MIN_CHUNK_ROWS = 1024


# ----------------------------------------------------------------------------
# Pure math: per-column moments, pooled exactly


@dataclass
class ColumnMoments:
    """Weighted per-column moments of a block of rows, NaNs ignored.

    Attributes
    ----------
    n_rows : int
        Rows in the block (NaN or not).
    weight : ndarray of shape (n_features,)
        Per column, the number (or total weight) of non-NaN values.
    mean : ndarray of shape (n_features,)
        Weighted mean of the non-NaN values (0 where ``weight`` is 0 in a
        part, NaN where it is 0 after pooling, as scikit-learn gives).
    m2 : ndarray of shape (n_features,)
        ``Σ w (x - mean)²`` over the non-NaN values.
    """

    n_rows: int
    weight: np.ndarray
    mean: np.ndarray
    m2: np.ndarray


def local_moments(
    X: Any, sample_weight: np.ndarray | None = None, *, chunk_bytes: int = _CHUNK_BYTES
) -> ColumnMoments:
    """Per-column moments of this rank's rows (dense or CSR/CSC). Pure.

    Two passes over row blocks: sums and counts, then deviations from the
    block's own mean with the Chan–Golub–LeVeque rounding correction
    (``M2 = Σ w d² - (Σ w d)² / W``), all in float64.

    Parameters
    ----------
    X : ndarray or sparse matrix of shape (n_rows, n_features)
    sample_weight : ndarray of shape (n_rows,), default=None
    chunk_bytes : int, default=4 MiB
        Size of the float64 temporaries of one block.

    Returns
    -------
    ColumnMoments
    """
    n, d = X.shape
    if n == 0:
        return ColumnMoments(0, np.zeros(d), np.zeros(d), np.zeros(d))
    if sparse.issparse(X):
        # scikit-learn's own sparse kernel ignores NaNs and takes weights.
        mean, var, weight = mean_variance_axis(
            X, axis=0, weights=sample_weight, return_sum_weights=True
        )
        weight = np.asarray(weight, dtype=np.float64)
        present = weight > 0
        mean = np.where(present, np.asarray(mean, dtype=np.float64), 0.0)
        m2 = np.where(present, np.asarray(var, dtype=np.float64) * weight, 0.0)
        return ColumnMoments(n, weight, mean, m2)

    rows = max(_MIN_CHUNK_ROWS, chunk_bytes // (8 * max(d, 1)))
    w = None if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    weight, total = np.zeros(d), np.zeros(d)
    for start in range(0, n, rows):
        block, present, ww = _block(X, w, start, start + rows)
        if present is None:
            # One total for every column, so columns without NaNs agree exactly
            # (scikit-learn then reports a scalar n_samples_seen_).
            weight += block.shape[0] if ww is None else ww.sum()
        else:
            weight += present.sum(axis=0) if ww is None else ww @ present
        total += block.sum(axis=0) if ww is None else ww @ block
    mean = np.divide(total, weight, out=np.zeros(d), where=weight > 0)

    m2, correction = np.zeros(d), np.zeros(d)
    for start in range(0, n, rows):
        block, present, ww = _block(X, w, start, start + rows)
        dev = np.subtract(block, mean, out=block)
        if present is not None:
            dev *= (
                present  # NaN entries were zeroed; keep them out of the deviations too
            )
        correction += dev.sum(axis=0) if ww is None else ww @ dev
        dev *= dev
        m2 += dev.sum(axis=0) if ww is None else ww @ dev
    m2 -= np.divide(correction * correction, weight, out=np.zeros(d), where=weight > 0)
    # The correction is at most the sum it corrects; rounding may cross zero.
    return ColumnMoments(n, weight, mean, np.maximum(m2, 0.0))


def _block(X: np.ndarray, w: np.ndarray | None, start: int, stop: int):
    """Rows ``start:stop`` as float64 with NaNs zeroed, the non-NaN mask (None if no NaN), their weights."""
    block = np.array(X[start:stop], dtype=np.float64)
    missing = np.isnan(block)
    present = None
    if missing.any():
        block[missing] = 0.0
        present = (~missing).astype(np.float64)
    return block, present, None if w is None else w[start:stop]


def _between(part: ColumnMoments, mean: np.ndarray) -> np.ndarray:
    """``W_r (m_r - m)²``: what a part adds to the pooled M2 (0 where it has no values)."""
    delta = part.mean - mean
    with np.errstate(invalid="ignore", over="ignore"):
        return np.where(part.weight > 0, part.weight * delta * delta, 0.0)


def _global_mean(weight: np.ndarray, total: np.ndarray) -> np.ndarray:
    # A column without any value has no mean: NaN, as scikit-learn's 0/0 gives.
    with np.errstate(invalid="ignore", divide="ignore"):
        return total / weight


def combine_moments(parts: list[ColumnMoments]) -> ColumnMoments:
    """Pool the moments of disjoint blocks of rows. Pure (no MPI).

    The same formula as :func:`allreduce_moments`, for one process.
    """
    weight = sum(p.weight for p in parts)
    mean = _global_mean(weight, sum(p.weight * p.mean for p in parts))
    m2 = sum(p.m2 + _between(p, mean) for p in parts)
    return ColumnMoments(sum(p.n_rows for p in parts), weight, mean, m2)


def allreduce_moments(
    local: ColumnMoments, comm: Intracomm, *, with_m2: bool = True
) -> ColumnMoments:
    """Pool every rank's moments; every rank gets bit-identical global ones.

    Collective over ``comm``: a reduction of ``2 d + 1`` numbers (rows,
    per-column weights and weighted sums) for the global mean, then, if
    ``with_m2``, one of ``d`` centred sums.  Both are reduced on rank 0 and
    broadcast, so every rank computes the same scaler from the same bits.
    ``with_m2`` must be the same on every rank.
    """
    d = local.mean.size
    head = np.empty(2 * d + 1)
    head[0] = local.n_rows
    head[1 : d + 1] = local.weight
    head[d + 1 :] = local.weight * local.mean
    allreduce_identical(head, comm)
    weight = head[1 : d + 1].copy()
    mean = _global_mean(weight, head[d + 1 :])
    m2 = np.zeros(d)
    if with_m2:
        m2 = np.ascontiguousarray(local.m2 + _between(local, mean))
        allreduce_identical(m2, comm)
    return ColumnMoments(int(round(head[0])), weight, mean, m2)
