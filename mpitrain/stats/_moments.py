"""Mergeable column moments: one accumulator for describing and for scaling.

:class:`ColumnStats` summarises a set of rows per column: the finite values'
count, (sample-)weight, mean and centred second moment ``M2 = Σ w (x − m)²``,
their minimum and maximum, and the NaN, +inf and -inf values (the missing
ones, kept out of the moments).  Summaries of disjoint sets of rows combine
exactly with the pooled formula

    m = Σ W_r m_r / W,      M2 = Σ M2_r + Σ W_r (m_r − m)²,

never with ``Σ w x² − W m²``, so a column with mean 1e6 and unit spread keeps
its variance.  ``mpitrain describe`` merges block and rank summaries with
:meth:`ColumnStats.merge` (gathered, in rank order);
:class:`mpitrain.preprocessing.StandardScaler` pools ranks with
:func:`allreduce_column_stats` (two reductions and a min/max, the same
formula).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import sparse

from mpitrain.comm import allreduce_identical, allreduce_minmax

if TYPE_CHECKING:  # pragma: no cover
    from mpi4py.MPI import Intracomm

__all__ = [
    "ColumnStats",
    "allreduce_column_stats",
]


# Rows per block in ColumnStats.of_rows: a few MB of float64 temporaries, so
# a rank's slice is never copied whole (same budget as mpitrain.stats).
_CHUNK_BYTES = 4 << 20
_MIN_CHUNK_ROWS = 1024


def _pooled_mean(weight: np.ndarray, weighted_sum: np.ndarray) -> np.ndarray:
    """``Σ W_r m_r / W``, 0 for columns without any weight."""
    return np.divide(
        weighted_sum, weight, out=np.zeros_like(weighted_sum), where=weight > 0
    )


def _between(part: ColumnStats, mean: np.ndarray) -> np.ndarray:
    """``W_r (m_r − m)²``: what a part adds to the pooled M2 (0 where it has no weight)."""
    delta = part.mean - mean
    with np.errstate(invalid="ignore", over="ignore"):
        return np.where(part.weight > 0, part.weight * delta * delta, 0.0)


@dataclass
class ColumnStats:
    """Per-column summary of a set of rows: mergeable across blocks and ranks.

    Moments are of the *finite* values, weighted by the rows' sample weights
    (1 when unweighted); counts, minimum and maximum ignore the weights.

    Attributes
    ----------
    rows : int
        Rows summarised (whatever their values and weights).
    count : ndarray of int64, shape (n_columns,)
        Finite values per column.
    nan, posinf, neginf : ndarray of int64, shape (n_columns,)
        NaN, +inf and -inf values per column: the missing values.
    rows_with_missing : int
        Rows with at least one missing value in some column.
    weight : ndarray of float64, shape (n_columns,)
        Total weight of the finite values (``count`` when unweighted).
    mean : ndarray of float64, shape (n_columns,)
        Weighted mean of the finite values (0 where ``weight`` is 0).
    m2 : ndarray of float64, shape (n_columns,)
        ``Σ w (x − mean)²`` over the finite values.
    min, max : ndarray of float64, shape (n_columns,)
        Extremes of the finite values (+inf and -inf where ``count`` is 0).
    """

    rows: int
    count: np.ndarray
    nan: np.ndarray
    posinf: np.ndarray
    neginf: np.ndarray
    rows_with_missing: int
    weight: np.ndarray
    mean: np.ndarray
    m2: np.ndarray
    min: np.ndarray
    max: np.ndarray

    #: Per-column fields, in the order of :meth:`to_array`.
    FIELDS = (
        "count",
        "nan",
        "posinf",
        "neginf",
        "weight",
        "mean",
        "m2",
        "min",
        "max",
    )
    _COUNTS = ("count", "nan", "posinf", "neginf")

    # -- construction (pure) ------------------------------------------------------

    @classmethod
    def empty(cls, n_columns: int) -> ColumnStats:
        """The summary of no rows: the neutral element of :meth:`merge`. Pure."""
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
            np.zeros(n_columns),
            np.full(n_columns, np.inf),
            np.full(n_columns, -np.inf),
        )

    @classmethod
    def of_block(
        cls, block: np.ndarray, sample_weight: np.ndarray | None = None
    ) -> ColumnStats:
        """Summarise one dense block of rows. Pure.

        Two passes over the block in float64: the weighted mean of the
        finite values, then their deviations from it, with the rounding
        correction ``M2 = Σ w d² − (Σ w d)² / W`` (Chan, Golub and LeVeque).

        Parameters
        ----------
        block : ndarray of shape (n_rows, n_columns)
        sample_weight : ndarray of shape (n_rows,), default=None
        """
        block = np.asarray(block, dtype=np.float64)
        n, k = block.shape
        if n == 0:
            return cls.empty(k)
        w = None if sample_weight is None else np.asarray(sample_weight, np.float64)
        finite = np.isfinite(block)
        if finite.all():
            count = np.full(k, n, dtype=np.int64)
            nan = posinf = neginf = np.zeros(k, dtype=np.int64)
            # One total for every column, so columns agree exactly (scikit-learn's
            # scaler then reports a scalar n_samples_seen_).
            weight = np.full(k, float(n) if w is None else w.sum())
            total = block.sum(axis=0) if w is None else w @ block
            mean = _pooled_mean(weight, total)
            dev = block - mean
            lo, hi = block.min(axis=0), block.max(axis=0)
            rows_with_missing = 0
        else:
            count = finite.sum(axis=0, dtype=np.int64)
            nan = np.isnan(block).sum(axis=0, dtype=np.int64)
            posinf = (block == np.inf).sum(axis=0, dtype=np.int64)
            neginf = n - count - nan - posinf
            present = finite.astype(np.float64)
            values = np.where(finite, block, 0.0)
            weight = count.astype(np.float64) if w is None else w @ present
            total = values.sum(axis=0) if w is None else w @ values
            mean = _pooled_mean(weight, total)
            dev = np.where(finite, block - mean, 0.0)
            lo = np.where(finite, block, np.inf).min(axis=0)
            hi = np.where(finite, block, -np.inf).max(axis=0)
            rows_with_missing = int((~finite).any(axis=1).sum())
        correction = dev.sum(axis=0) if w is None else w @ dev
        dev *= dev
        m2 = dev.sum(axis=0) if w is None else w @ dev
        m2 -= np.divide(
            correction * correction, weight, out=np.zeros(k), where=weight > 0
        )
        # The correction is at most the sum it corrects; rounding may cross zero.
        return cls(
            n,
            count,
            nan,
            posinf,
            neginf,
            rows_with_missing,
            weight,
            mean,
            np.maximum(m2, 0.0),
            lo,
            hi,
        )

    @classmethod
    def of_rows(
        cls,
        X: Any,
        sample_weight: np.ndarray | None = None,
        *,
        chunk_bytes: int = _CHUNK_BYTES,
    ) -> ColumnStats:
        """Summarise a rank's rows, dense (in blocks of bounded size) or CSR/CSC. Pure.

        Parameters
        ----------
        X : ndarray or sparse matrix of shape (n_rows, n_columns)
        sample_weight : ndarray of shape (n_rows,), default=None
        chunk_bytes : int, default=4 MiB
            Size of the float64 temporaries of one dense block.
        """
        n, k = X.shape
        if sparse.issparse(X):
            return cls._of_sparse(X, sample_weight)
        rows = max(_MIN_CHUNK_ROWS, chunk_bytes // (8 * max(k, 1)))
        stats = cls.empty(k)
        for start in range(0, n, rows):
            stats = stats.merge(
                cls.of_block(
                    X[start : start + rows],
                    None
                    if sample_weight is None
                    else sample_weight[start : start + rows],
                )
            )
        return stats

    @classmethod
    def _of_sparse(cls, X: Any, sample_weight: np.ndarray | None) -> ColumnStats:
        """:meth:`of_rows` of a CSR or CSC matrix, without densifying it. Pure."""
        n, k = X.shape
        X = X.tocsr() if X.format not in ("csr", "csc") else X
        data = X.data
        # The column (and row) of every stored entry.
        if X.format == "csr":
            column = X.indices
            row = np.repeat(np.arange(n), np.diff(X.indptr))
        else:
            column = np.repeat(np.arange(k), np.diff(X.indptr))
            row = X.indices
        finite = np.isfinite(data)
        nan = np.bincount(column[np.isnan(data)], minlength=k).astype(np.int64)
        posinf = np.bincount(column[data == np.inf], minlength=k).astype(np.int64)
        neginf = np.bincount(column[data == -np.inf], minlength=k).astype(np.int64)
        rows_with_missing = int(np.unique(row[~finite]).size)
        if not finite.all():
            # scikit-learn's kernel ignores NaN: make every missing value one.
            X = X.copy()
            X.data = np.where(finite, data, np.nan)
        # scikit-learn's own sparse kernel ignores NaNs and takes weights;
        # imported here so that dense-only users of stats do not load scikit-learn.
        from sklearn.utils.sparsefuncs import mean_variance_axis

        mean, var, weight = mean_variance_axis(
            X, axis=0, weights=sample_weight, return_sum_weights=True
        )
        weight = np.asarray(weight, dtype=np.float64)
        present = weight > 0
        mean = np.where(present, np.asarray(mean, dtype=np.float64), 0.0)
        m2 = np.where(present, np.asarray(var, dtype=np.float64) * weight, 0.0)
        # Extremes of the stored finite values, and 0 where a column has implicit zeros.
        lo, hi = np.full(k, np.inf), np.full(k, -np.inf)
        np.minimum.at(lo, column[finite], data[finite])
        np.maximum.at(hi, column[finite], data[finite])
        stored = np.bincount(column, minlength=k)
        implicit = stored < n
        lo[implicit] = np.minimum(lo[implicit], 0.0)
        hi[implicit] = np.maximum(hi[implicit], 0.0)
        return cls(
            n,
            n - nan - posinf - neginf,
            nan,
            posinf,
            neginf,
            rows_with_missing,
            weight,
            mean,
            m2,
            lo,
            hi,
        )

    # -- combining (pure) ---------------------------------------------------------

    @classmethod
    def combine(cls, parts: list[ColumnStats]) -> ColumnStats:
        """The summary of disjoint sets of rows together. Pure.

        ``m = Σ W_r m_r / W`` and ``M2 = Σ M2_r + Σ W_r (m_r − m)²``; the
        same arithmetic :func:`allreduce_column_stats` does across ranks.
        """
        weight = sum(p.weight for p in parts)
        mean = _pooled_mean(weight, sum(p.weight * p.mean for p in parts))
        return cls(
            sum(p.rows for p in parts),
            *(sum(getattr(p, f) for p in parts) for f in cls._COUNTS),
            sum(p.rows_with_missing for p in parts),
            weight,
            mean,
            sum(p.m2 + _between(p, mean) for p in parts),
            np.minimum.reduce([p.min for p in parts]),
            np.maximum.reduce([p.max for p in parts]),
        )

    def merge(self, other: ColumnStats) -> ColumnStats:
        """The summary of both sets of rows together (:meth:`combine` of two). Pure."""
        return self.combine([self, other])

    # -- communication and results ----------------------------------------------

    def to_array(self) -> np.ndarray:
        """Everything as one float64 array (counts are exact below 2**53), for communication."""
        head = np.array([self.rows, self.rows_with_missing], dtype=np.float64)
        return np.concatenate(
            [head]
            + [np.asarray(getattr(self, f), dtype=np.float64) for f in self.FIELDS]
        )

    @classmethod
    def from_array(cls, values: np.ndarray) -> ColumnStats:
        """Inverse of :meth:`to_array`. Pure."""
        values = np.asarray(values, dtype=np.float64)
        k = (values.size - 2) // len(cls.FIELDS)
        parts = dict(zip(cls.FIELDS, values[2:].reshape(len(cls.FIELDS), k)))
        for name in cls._COUNTS:
            parts[name] = np.rint(parts[name]).astype(np.int64)
        return cls(
            int(round(values[0])), rows_with_missing=int(round(values[1])), **parts
        )

    @property
    def missing(self) -> np.ndarray:
        """NaN and ±inf values per column."""
        return self.nan + self.posinf + self.neginf

    def variance(self) -> np.ndarray:
        """Weighted population variance ``M2 / W`` (NaN where ``W`` is 0), as scikit-learn's scaler."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.m2 / self.weight

    def std(self, ddof: int = 1) -> np.ndarray:
        """Standard deviation ``sqrt(M2 / (W − ddof))`` (NaN where ``W <= ddof``)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(
                self.weight > ddof, np.sqrt(self.m2 / (self.weight - ddof)), np.nan
            )


def allreduce_column_stats(
    local: ColumnStats, comm: Intracomm, *, with_m2: bool = True
) -> ColumnStats:
    """Pool every rank's summary; every rank gets bit-identical global ones.

    Collective over ``comm``: one reduction of the counts, weights and
    weighted sums (for the global mean), then, if ``with_m2``, one of the
    ``d`` centred sums ``M2_r + W_r (m_r − m)²``, both reduced on rank 0 and
    broadcast, so every rank holds the same bits; then one reduction of the
    extremes.  ``with_m2`` must be the same on every rank (without it,
    ``m2`` is zero).
    """
    k = local.mean.size
    head = np.concatenate(
        [
            [local.rows, local.rows_with_missing],
            *(np.asarray(getattr(local, f), np.float64) for f in ColumnStats._COUNTS),
            local.weight,
            local.weight * local.mean,
        ]
    )
    allreduce_identical(head, comm)
    counts = [
        np.rint(head[2 + i * k : 2 + (i + 1) * k]).astype(np.int64) for i in range(4)
    ]
    weight = head[2 + 4 * k : 2 + 5 * k].copy()
    mean = _pooled_mean(weight, head[2 + 5 * k :])
    m2 = np.zeros(k)
    if with_m2:
        m2 = np.ascontiguousarray(local.m2 + _between(local, mean))
        allreduce_identical(m2, comm)
    lows, highs = allreduce_minmax(np.concatenate([local.min, local.max]), comm)
    return ColumnStats(
        int(round(head[0])),
        *counts,
        int(round(head[1])),
        weight,
        mean,
        m2,
        lows[:k],
        highs[k:],
    )
