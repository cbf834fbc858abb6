"""Describe a data set split across ranks: per-column statistics, quantiles, classes, slices.

``mpitrain describe DATA.h5`` and :func:`describe_arrays` answer, for the
rows of *all* ranks together: per column, the count of finite values, the
missing ones (NaN, +inf and -inf, counted apart), the mean, the standard
deviation, the minimum, the maximum and quantiles; for a label column, the
class counts; per rank, the rows it holds and whether its slice looks like
the others (class proportions, column means).

Everything exact is computed by reduction, never by moving rows:

- moments: each rank streams its rows in blocks of bounded size through a
  :class:`ColumnStats` accumulator (count, missing, mean, centred sum of
  squares, min, max), whose :meth:`~ColumnStats.merge` is the pooled
  formula of Chan, Golub and LeVeque — ``M2 = M2_a + M2_b + δ² n_a n_b / n``
  — never ``Σx² − n·m²``, so a column with mean 1e6 and unit spread keeps
  its variance.  The ranks' accumulators are gathered (one ``Allgather``)
  and merged in rank order, so every rank gets the bit-identical result and
  also sees every rank's own means and counts;
- quantiles (approximate): a second streamed pass counts each column's
  finite values in :data:`HISTOGRAM_BINS` equal bins between its global
  minimum and maximum and keeps each bin's smallest and largest value; the
  counts are summed over ranks (one ``Allreduce`` of integers, exact) and
  the extremes reduced (one more), and each quantile is interpolated
  within the bin that holds it (:class:`Histograms`,
  :func:`histogram_quantiles`).  Every quantile comes with a *guaranteed*
  bound: the exact value (``np.quantile`` of all finite values, linear
  interpolation) lies within ``± bound`` of the estimate.  The bound is at
  most the spread of the values in one bin, so at most one bin width,
  ``(max − min) / bins``, and 0 when the quantile falls on a bin's first or
  last value — always for columns with few distinct values, whose
  quantiles are therefore exact;
- quantiles (exact): :func:`global_quantiles` finds exact order statistics
  without moving rows, by a search over the ordered integer keys of
  float64 values (:func:`float_keys`): each round counts, on every rank,
  the values at or below up to 255 candidate keys per column and target,
  and sums the counts with one small ``Allreduce``; 8 to 16 rounds pin
  down any float64.
  :func:`describe_arrays` uses it with ``exact_quantiles=True`` (the rows
  are in memory), and :mod:`mpitrain.cleaning` uses it for medians and
  clipping bounds.

Two rules decide whether a rank's slice is "not identically distributed":
class proportions more than :data:`~mpitrain.averaging.CLASS_SHIFT_THRESHOLD`
(total variation) from the global ones, as for coefficient averaging; and a
column mean more than :data:`MEAN_SHIFT_Z` standard errors *and*
:data:`MEAN_SHIFT_STD` standard deviations from the global mean.  On a
random split of i.i.d. rows a rank's mean is about normal around the global
one with that standard error (for draws without replacement), so 5 of them
happen by chance about once in 1.7 million (rank, column) pairs, whatever
the sizes; the second condition keeps a drift too small to matter from
being flagged on huge slices.  Sorted rows move the slice means of the
sorted column by a sizeable fraction of a standard deviation, far beyond
both.
"""

from __future__ import annotations

import math
import os
from contextlib import closing
from dataclasses import dataclass
from functools import reduce
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np

from .averaging import CLASS_SHIFT_THRESHOLD
from .comm import (
    allgather_array,
    allgather_object,
    allreduce_minmax,
    allreduce_sum,
    collective_check,
    get_comm,
    library_comm,
    require_same,
)

if TYPE_CHECKING:  # pragma: no cover
    from mpi4py.MPI import Intracomm

    from .data import RowReader

__all__ = [
    "DEFAULT_QUANTILES",
    "HISTOGRAM_BINS",
    "MAX_CLASSES",
    "MEAN_SHIFT_Z",
    "MEAN_SHIFT_STD",
    "ColumnStats",
    "Histograms",
    "histogram_quantiles",
    "float_keys",
    "keys_to_floats",
    "linear_quantiles",
    "global_order_statistics",
    "global_quantiles",
    "describe_arrays",
    "describe_file",
    "format_description",
]

#: Quantile levels reported by default (0 and 1 are the minimum and maximum).
DEFAULT_QUANTILES = (0.0, 0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99, 1.0)

#: Bins of the per-column histograms that approximate quantiles.
HISTOGRAM_BINS = 2048

#: A target with more distinct values than this is not treated as classes.
MAX_CLASSES = 100

#: A rank's column mean is flagged when it is more than this many standard
#: errors from the global mean ...
MEAN_SHIFT_Z = 5.0

#: ... and also more than this many (global) standard deviations from it.
MEAN_SHIFT_STD = 0.1

# Float64 bytes of one block of rows processed at once: temporaries of a few
# times this size, whatever the size of a rank's slice.
_BLOCK_BYTES = 16 << 20
_MIN_BLOCK_ROWS = 256

# Counts per round of the exact search.  Each round is one reduction, and on
# small problems its latency is all that counts, so the search splits each
# interval into as many parts as this budget allows (from 16 parts, 16 rounds
# for the 64 bits of a float64, to 256 parts, 8 rounds).
_SEARCH_BUDGET = 1 << 17

_SIGN = np.uint64(1 << 63)
_EPS = float(np.finfo(np.float64).eps)
_SUBNORMAL = float(np.finfo(np.float64).smallest_subnormal)


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
    def empty(cls, n_columns: int) -> "ColumnStats":
        """The summary of no rows: the neutral element of :meth:`merge`."""
        zeros = np.zeros(n_columns, dtype=np.int64)
        return cls(0, zeros, zeros.copy(), zeros.copy(), zeros.copy(), 0, np.zeros(n_columns),
                   np.zeros(n_columns), np.full(n_columns, np.inf), np.full(n_columns, -np.inf))

    @property
    def missing(self) -> np.ndarray:
        """NaN and ±inf values per column."""
        return self.nan + self.posinf + self.neginf

    @classmethod
    def of_block(cls, block: np.ndarray) -> "ColumnStats":
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
            mean = np.divide(values.sum(axis=0), count, out=np.zeros(k), where=count > 0)
            dev = np.where(finite, block - mean, 0.0)
            lo = np.where(finite, block, np.inf).min(axis=0)
            hi = np.where(finite, block, -np.inf).max(axis=0)
            rows_with_missing = int((~finite).any(axis=1).sum())
        correction = dev.sum(axis=0)
        m2 = np.einsum("ij,ij->j", dev, dev)
        m2 -= np.divide(correction * correction, count, out=np.zeros(k), where=count > 0)
        # The correction is at most the sum it corrects; rounding may cross zero.
        return cls(n, count, nan, posinf, neginf, rows_with_missing, mean, np.maximum(m2, 0.0), lo, hi)

    def merge(self, other: "ColumnStats") -> "ColumnStats":
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
            mean = np.where(nb == 0, self.mean, np.where(na == 0, other.mean, self.mean + delta * share))
            between = np.where((na > 0) & (nb > 0), delta * delta * na * share, 0.0)
        return ColumnStats(
            self.rows + other.rows, self.count + other.count, self.nan + other.nan,
            self.posinf + other.posinf, self.neginf + other.neginf,
            self.rows_with_missing + other.rows_with_missing, mean, self.m2 + other.m2 + between,
            np.minimum(self.min, other.min), np.maximum(self.max, other.max),
        )

    def to_array(self) -> np.ndarray:
        """Everything as one float64 array (counts are exact below 2**53), for communication."""
        head = np.array([self.rows, self.rows_with_missing], dtype=np.float64)
        return np.concatenate([head] + [np.asarray(getattr(self, f), dtype=np.float64) for f in self.FIELDS])

    @classmethod
    def from_array(cls, values: np.ndarray) -> "ColumnStats":
        """Inverse of :meth:`to_array`."""
        values = np.asarray(values, dtype=np.float64)
        k = (values.size - 2) // len(cls.FIELDS)
        parts = dict(zip(cls.FIELDS, values[2:].reshape(len(cls.FIELDS), k)))
        for name in ("count", "nan", "posinf", "neginf"):
            parts[name] = np.rint(parts[name]).astype(np.int64)
        return cls(int(round(values[0])), rows_with_missing=int(round(values[1])), **parts)

    def std(self, ddof: int = 1) -> np.ndarray:
        """Standard deviation of the finite values (NaN where ``count <= ddof``)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.count > ddof, np.sqrt(self.m2 / (self.count - ddof)), np.nan)


# ----------------------------------------------------------------------------
# Pure math: histogram quantiles with a guaranteed bound


def _span(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """``(hi − lo) / 2``, computed so that it cannot overflow."""
    with np.errstate(invalid="ignore", over="ignore"):
        return hi * 0.5 - lo * 0.5


@dataclass
class Histograms:
    """Per-column histograms of finite values, with each bin's smallest and largest value.

    Mergeable without MPI: counts add, extremes take the minimum and maximum.

    Attributes
    ----------
    counts : ndarray of int64, shape (n_columns, bins)
    low, high : ndarray of float64, shape (n_columns, bins)
        The smallest and largest value in each bin (+inf and -inf if empty).
    """

    counts: np.ndarray
    low: np.ndarray
    high: np.ndarray

    @classmethod
    def empty(cls, n_columns: int, bins: int) -> "Histograms":
        return cls(np.zeros((n_columns, bins), dtype=np.int64), np.full((n_columns, bins), np.inf),
                   np.full((n_columns, bins), -np.inf))

    @classmethod
    def of_block(cls, block: np.ndarray, lo: np.ndarray, hi: np.ndarray, bins: int = HISTOGRAM_BINS) -> "Histograms":
        """Histograms of one block of rows, ``bins`` equal bins over ``[lo, hi]`` per column. Pure.

        Parameters
        ----------
        block : ndarray of shape (n_rows, n_columns)
        lo, hi : ndarray of shape (n_columns,)
            The global minimum and maximum of each column's finite values
            (values outside go to the first or last bin).
        bins : int, default=HISTOGRAM_BINS
        """
        block = np.asarray(block, dtype=np.float64)
        n, k = block.shape
        out = cls.empty(k, bins)
        if n == 0:
            return out
        span = _span(lo, hi)
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            scale = np.where(span > 0, bins / span, 0.0)
            # Halves on both sides, like the span, so that no difference overflows.
            # Every step is monotone in the value, so a bin never holds a value
            # larger than one in the next bin, whatever the rounding.
            position = (block * 0.5 - lo * 0.5) * scale
        finite = np.isfinite(block)
        position = np.where(finite, position, 0.0)
        index = np.clip(np.floor(position, out=position), 0, bins - 1).astype(np.int64)
        index += np.arange(k, dtype=np.int64) * bins
        index, values = index[finite], block[finite]
        out.counts += np.bincount(index, minlength=k * bins).reshape(k, bins)
        np.minimum.at(out.low.reshape(-1), index, values)
        np.maximum.at(out.high.reshape(-1), index, values)
        return out

    def merge(self, other: "Histograms") -> "Histograms":
        """The histograms of both sets of rows (same bins). Pure."""
        return Histograms(self.counts + other.counts, np.minimum(self.low, other.low),
                          np.maximum(self.high, other.high))


def _lerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """numpy's own linear interpolation (``numpy.lib._function_base_impl._lerp``), bit for bit."""
    diff = b - a
    with np.errstate(invalid="ignore"):
        return np.where(t >= 0.5, b - diff * (1 - t), a + diff * t)


def _linear_positions(n: np.ndarray, levels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Order statistics and weights of numpy's "linear" quantiles, as numpy computes them.

    Returns ``(below, above, gamma)`` of shape ``levels.shape + n.shape``: the
    0-based orders of the two values interpolated and the weight of the
    upper one.  Where the virtual index is at or past ``n − 1`` both orders
    are ``n − 1`` and ``gamma`` keeps numpy's value (it multiplies a zero
    difference, except for infinite values, where numpy gives NaN too).
    """
    n = np.asarray(n, dtype=np.int64)
    levels = np.asarray(levels, dtype=np.float64)
    virtual = (n - 1) * levels.reshape(levels.shape + (1,) * n.ndim)
    below = np.floor(virtual)
    past_end = virtual >= n - 1
    below = np.where(past_end, -1.0, below)  # numpy's marker for "the last value"
    gamma = virtual - below
    below_order = np.where(past_end, n - 1, below).astype(np.int64)
    above_order = np.where(past_end, n - 1, below_order + 1)
    return below_order, above_order, gamma


def linear_quantiles(sorted_values: np.ndarray, levels: Sequence[float] | np.ndarray) -> np.ndarray:
    """``np.quantile(values, levels)`` (linear) from already sorted 1-D values. Pure.

    The same arithmetic as numpy, so the results are bit-identical; NaN
    for an empty array.
    """
    values = np.asarray(sorted_values, dtype=np.float64)
    levels = np.asarray(levels, dtype=np.float64)
    if values.size == 0:
        return np.full(levels.shape, np.nan)
    below, above, gamma = _linear_positions(np.int64(values.size), levels)
    return _lerp(values[below], values[above], gamma)


def histogram_quantiles(hist: Histograms, levels: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Quantiles from (summed) histograms, each with a guaranteed error bound. Pure.

    For each level, the two order statistics that numpy's linear quantile
    interpolates are located in their bins from the cumulative counts.  An
    order statistic that is its bin's first or last value is known exactly
    (the bin's smallest or largest value); one inside a bin is estimated by
    spreading the bin's values evenly between its extremes, and lies
    between them.  The two are interpolated as numpy does, and the bound is
    the largest distance from the estimate to the interpolated ends of the
    intervals (plus a few rounding units); it is 0 when both order
    statistics are known exactly (always for columns with few distinct
    values), and never more than one bin width.

    Parameters
    ----------
    hist : Histograms
    levels : sequence of float in [0, 1]

    Returns
    -------
    values, bounds : ndarray of shape (n_levels, n_columns)
        The exact quantile of each column's finite values lies in
        ``values ± bounds``; NaN for columns without any finite value.
    """
    counts = np.asarray(hist.counts, dtype=np.int64)
    k, bins = counts.shape
    levels = np.asarray(levels, dtype=np.float64)
    values = np.full((levels.size, k), np.nan)
    bounds = np.full((levels.size, k), np.nan)
    for j in range(k):
        n = int(counts[j].sum())
        if n == 0:
            continue
        cumulative = np.cumsum(counts[j])
        below, above, gamma = _linear_positions(np.int64(n), levels)
        ends = []
        for order in (below, above):
            b = np.searchsorted(cumulative, order, side="right")
            in_bin = counts[j][b]
            rank_in_bin = order - (cumulative[b] - in_bin)
            low, high = hist.low[j][b], hist.high[j][b]
            with np.errstate(invalid="ignore", divide="ignore"):
                spread = low + rank_in_bin / np.maximum(in_bin - 1, 1) * (high - low)
            estimate = np.where(rank_in_bin == 0, low,
                                np.where(rank_in_bin == in_bin - 1, high, np.clip(spread, low, high)))
            exact = (rank_in_bin == 0) | (rank_in_bin == in_bin - 1) | (low == high)
            ends.append((estimate, np.where(exact, estimate, low), np.where(exact, estimate, high), exact))
        (e0, l0, r0, x0), (e1, l1, r1, x1) = ends
        estimate = _lerp(e0, e1, gamma)
        left, right = _lerp(l0, l1, gamma), _lerp(r0, r1, gamma)
        # numpy interpolates the true values with rounding too: a few units of slack.
        slack = 4 * _EPS * np.maximum(np.abs(left), np.abs(right)) + 4 * _SUBNORMAL
        values[:, j] = estimate
        bounds[:, j] = np.where(x0 & x1, 0.0, np.maximum(estimate - left, right - estimate) + slack)
    return values, bounds


# ----------------------------------------------------------------------------
# Exact global order statistics, without moving rows


def float_keys(values: np.ndarray) -> np.ndarray:
    """Map float64 values to uint64 keys in the same order. Pure.

    Non-negative floats get their bit pattern with the sign bit set, negative
    ones their inverted bit pattern, so integer order is float order over
    all non-NaN values, ±inf included.  ``-0.0`` is first made ``+0.0`` (they
    are equal as floats, so they must share a key).
    """
    x = np.asarray(values, dtype=np.float64) + 0.0  # -0.0 + 0.0 is +0.0
    bits = x.view(np.uint64)
    return np.where(bits & _SIGN, ~bits, bits | _SIGN)


def keys_to_floats(keys: np.ndarray) -> np.ndarray:
    """Inverse of :func:`float_keys`. Pure."""
    keys = np.asarray(keys, dtype=np.uint64)
    bits = np.where(keys & _SIGN, keys & ~_SIGN, ~keys)
    return np.ascontiguousarray(bits).view(np.float64)


class _OrderStatistics:
    """This rank's non-NaN values of each column, sorted as keys, and their global counts.

    Construction is local (one sorted copy of the rows, as uint64 keys);
    :meth:`reduce` and :meth:`select` are collective.
    """

    def __init__(self, X: np.ndarray):
        X = np.asarray(X)
        k = X.shape[1]
        self.keys = []
        self.local_min, self.local_max = np.full(k, np.inf), np.full(k, -np.inf)
        self.counts = np.zeros(k, dtype=np.int64)
        for j in range(k):
            column = np.asarray(X[:, j], dtype=np.float64)
            column = column[~np.isnan(column)]
            self.keys.append(np.sort(float_keys(column)))
            self.counts[j] = column.size
            if column.size:
                self.local_min[j], self.local_max[j] = column.min(), column.max()
        self.comm: "Intracomm | None" = None

    def reduce(self, comm: "Intracomm") -> "_OrderStatistics":
        """Global counts and extremes of each column. Collective over ``comm`` (two reductions)."""
        k = self.counts.size
        self.comm = comm
        self.counts = allreduce_sum(self.counts.copy(), comm)
        extremes, _ = allreduce_minmax(np.concatenate([self.local_min, -self.local_max]), comm)
        self.min_key = float_keys(np.where(self.counts > 0, extremes[:k], 0.0))
        self.max_key = float_keys(np.where(self.counts > 0, -extremes[k:], 0.0))
        return self

    def select(self, orders: np.ndarray) -> np.ndarray:
        """The exact global order statistics ``orders`` (0-based) of each column.

        Collective over the communicator.  ``orders`` has shape
        ``(n_targets, n_columns)`` and must be the same on every rank.
        Orders outside ``[0, count)`` give NaN.

        Each target keeps an interval of keys known to hold the answer —
        the smallest key whose global count of values at or below it
        exceeds the order — and every round narrows all intervals 16- to
        256-fold at once (as many candidates as fit in about 2**17 counts),
        with one ``Allreduce`` of the counts: 8 to 16 rounds.  Local work
        per round is a binary search per candidate.
        """
        assert self.comm is not None, "reduce() first"
        orders = np.asarray(orders, dtype=np.int64)
        t, k = orders.shape
        active = (orders >= 0) & (orders < self.counts)
        lo = np.where(active, self.min_key, np.uint64(0)).astype(np.uint64)
        hi = np.where(active, self.max_key, np.uint64(0)).astype(np.uint64)
        need = orders + 1
        bits = int(np.clip(np.log2(_SEARCH_BUDGET / max(t * k, 1) + 1), 4, 8))
        probes_per_target = (1 << bits) - 1
        steps = np.arange(1, probes_per_target + 1, dtype=np.uint64)
        # Every rank derives lo and hi from the same summed integers, so every
        # rank leaves the loop after the same round.
        while (lo != hi).any():
            step = (hi - lo) // np.uint64(probes_per_target + 1) + np.uint64(1)
            probes = lo[..., None] + step[..., None] * steps - np.uint64(1)
            ceiling = np.where(hi > lo, hi - np.uint64(1), hi)
            probes = np.minimum(probes, ceiling[..., None])
            counts = np.empty((t, k, probes_per_target), dtype=np.int64)
            for j in range(k):
                counts[:, j, :] = np.searchsorted(self.keys[j], probes[:, j, :].ravel(),
                                                  side="right").reshape(t, probes_per_target)
            allreduce_sum(counts, self.comm)
            enough = counts >= need[..., None]
            found = enough.any(axis=-1)
            first = enough.argmax(axis=-1)
            at_first = np.take_along_axis(probes, first[..., None], axis=-1)[..., 0]
            before = np.take_along_axis(probes, np.maximum(first - 1, 0)[..., None], axis=-1)[..., 0]
            new_lo = np.where(found, np.where(first > 0, before + np.uint64(1), lo),
                              probes[..., -1] + np.uint64(1))
            new_hi = np.where(found, at_first, hi)
            settled = lo == hi
            lo = np.where(settled, lo, new_lo)
            hi = np.where(settled, hi, new_hi)
        return np.where(active, keys_to_floats(lo), np.nan)


def _check_levels(q: Any) -> np.ndarray:
    levels = np.asarray(q, dtype=np.float64)
    if levels.ndim > 1 or not np.all((levels >= 0) & (levels <= 1)):
        raise ValueError(f"quantile levels must be numbers in [0, 1], got {q!r}")
    return levels


def _sorted_columns(X: Any, comm: "Intracomm") -> _OrderStatistics:
    """Check and sort this rank's rows, agree on the columns, reduce the counts. Collective over ``comm``."""
    stats = None
    with collective_check(comm, "sorting the rows"):
        X = np.asarray(X)
        if X.ndim != 2:
            raise ValueError(f"X must be 2-D, got shape {X.shape}")
        stats = _OrderStatistics(X)
    require_same(comm, "columns", stats.counts.size)
    return stats.reduce(comm)


def global_order_statistics(X: Any, orders: Any, *, comm: "Intracomm | None" = None) -> np.ndarray:
    """Exact order statistics of every column over all ranks' rows, NaNs excluded.

    Collective over ``comm``: 10 to 18 small reductions; rows never move.
    Every rank passes its own rows (possibly none) with the same number of
    columns, and the same ``orders``.

    Parameters
    ----------
    X : array-like of shape (n_local_rows, n_columns)
    orders : array-like of int, shape (n_targets, n_columns)
        0-based ranks among each column's non-NaN values of all ranks.
    comm : mpi4py.MPI.Intracomm, default=None

    Returns
    -------
    ndarray of float64, shape (n_targets, n_columns)
        The values (as float64), identical on every rank; NaN where an order
        is out of range.  ``-0.0`` is returned as ``+0.0``.
    """
    comm = get_comm(comm)
    with library_comm(comm) as lib:
        stats = _sorted_columns(X, lib)
        return stats.select(np.asarray(orders, dtype=np.int64).reshape(-1, stats.counts.size))


def global_quantiles(X: Any, q: float | Sequence[float], *, comm: "Intracomm | None" = None) -> np.ndarray:
    """Exact quantiles of every column over all ranks' rows, NaNs excluded.

    ``np.nanquantile(all_rows, q, axis=0)`` (method ``"linear"``), bit for
    bit, without moving rows: the exact order statistics come from
    :func:`global_order_statistics` and are interpolated with numpy's own
    arithmetic.  ±inf values take part, as in numpy.

    Collective over ``comm`` (10 to 18 small reductions).  Every rank
    passes its own rows (possibly none) and the same ``q``.

    Parameters
    ----------
    X : array-like of shape (n_local_rows, n_columns)
    q : float or sequence of float in [0, 1]
    comm : mpi4py.MPI.Intracomm, default=None

    Returns
    -------
    ndarray of float64, shape (n_columns,) for a scalar ``q``, else (len(q), n_columns)
        Identical on every rank; NaN for a column without any non-NaN value.

    Raises
    ------
    DistributedError
        The same on every rank if some rank's ``X`` is not 2-D.
    ValueError
        If the ranks have different numbers of columns, or ``q`` is not in [0, 1].
    """
    levels = _check_levels(q)
    comm = get_comm(comm)
    with library_comm(comm) as lib:
        return _quantiles_from(_sorted_columns(X, lib), levels)


def _quantiles_from(stats: _OrderStatistics, levels: np.ndarray) -> np.ndarray:
    """numpy's linear quantiles of each column from exact order statistics. Collective."""
    flat = np.atleast_1d(levels)
    below, above, gamma = _linear_positions(stats.counts, flat)
    values = stats.select(np.concatenate([below, above]))
    L = flat.size
    with np.errstate(invalid="ignore"):
        result = _lerp(values[:L], values[L:], gamma)
    result = np.where(stats.counts > 0, result, np.nan)
    return result[0] if levels.ndim == 0 else result


# ----------------------------------------------------------------------------
# Labels


class _LabelCounter:
    """Counts of each label in the blocks seen, up to ``max_classes`` distinct ones. Local."""

    def __init__(self, max_classes: int):
        self.max_classes = max_classes
        self.counts: dict[Any, int] | None = {}
        self.missing = 0
        self.rows = 0

    def update(self, y: np.ndarray) -> None:
        y = np.asarray(y)
        self.rows += y.shape[0]
        if y.dtype.kind == "f":
            missing = ~np.isfinite(y)
        elif y.dtype.kind == "O":
            missing = np.fromiter((v is None or (isinstance(v, float) and not math.isfinite(v)) for v in y),
                                  dtype=bool, count=y.shape[0])
        else:
            missing = np.zeros(y.shape[0], dtype=bool)
        self.missing += int(missing.sum())
        if self.counts is None:
            return
        present = y[~missing]
        if present.dtype.kind == "O":
            present = present.astype(str)
        labels, counts = np.unique(present, return_counts=True)
        for label, count in zip(labels.tolist(), counts.tolist()):
            self.counts[label] = self.counts.get(label, 0) + count
        if len(self.counts) > self.max_classes:
            self.counts = None  # a continuous target: stop counting, memory stays bounded


# ----------------------------------------------------------------------------
# The collective description


def _default_block_rows(n_columns: int) -> int:
    return max(_MIN_BLOCK_ROWS, _BLOCK_BYTES // (8 * max(n_columns, 1)))


def _number(value: Any) -> float | None:
    """A JSON-safe float: ``None`` for NaN and infinities."""
    value = float(value)
    return value if math.isfinite(value) else None


@dataclass
class _Target:
    name: str
    kind: str  # "numeric" (also a column of the table) or "text"
    dtype: str


class _ArrayBlocks:
    """Rows in memory, a block at a time. Local."""

    def __init__(self, X: np.ndarray, y: np.ndarray | None, block_rows: int):
        self.X, self.y, self.block_rows = X, y, block_rows

    def prepare(self, pass_index: int) -> None:
        """Nothing to do before a pass (the file source opens its reader here)."""

    def __call__(self) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        for a in range(0, self.X.shape[0], self.block_rows):
            yield self.X[a:a + self.block_rows], None if self.y is None else self.y[a:a + self.block_rows]


def _columns_of(X_block: np.ndarray, y_block: np.ndarray | None, numeric_target: bool) -> np.ndarray:
    """The block's numeric columns as float64: the features, then a numeric target."""
    if not numeric_target:
        return np.asarray(X_block, dtype=np.float64)
    Z = np.empty((X_block.shape[0], X_block.shape[1] + 1))
    Z[:, :-1] = X_block
    Z[:, -1] = y_block
    return Z


def _describe_blocks(
    blocks: "_ArrayBlocks | _FileBlocks",
    *,
    n_features: int,
    names: list[str],
    target: _Target | None,
    levels: np.ndarray,
    bins: int,
    max_classes: int,
    comm: "Intracomm",
    what: str,
    source: str | list[str] | None,
    ranges: list[tuple[int, int]] | None,
    exact: Callable[[], np.ndarray] | None = None,
) -> dict:
    """Both passes and the result. Collective over ``comm`` (a library communicator)."""
    size = comm.Get_size()
    numeric_target = target is not None and target.kind == "numeric"
    k = n_features + (1 if numeric_target else 0)
    labels = _LabelCounter(max_classes) if target is not None else None

    # Pass 1: moments and labels, block by block.
    stats = ColumnStats.empty(k)
    blocks.prepare(0)
    with collective_check(comm, what):
        with closing(blocks()) as stream:
            for X_block, y_block in stream:
                stats = stats.merge(ColumnStats.of_block(_columns_of(X_block, y_block, numeric_target)))
                if labels is not None:
                    labels.update(y_block)
    # Every rank's summary on every rank, merged in rank order: bit-identical everywhere.
    per_rank = [ColumnStats.from_array(row) for row in allgather_array(stats.to_array(), comm)]
    overall = reduce(ColumnStats.merge, per_rank, ColumnStats.empty(k))
    label_parts = None
    if labels is not None:
        label_parts = allgather_object((labels.counts, labels.missing, labels.rows), comm)

    # Pass 2: quantiles, exact (rows in memory) or from histograms between the global extremes.
    if exact is not None:
        quantiles, bounds = exact(), np.zeros((levels.size, k))
        bounds[np.isnan(quantiles)] = np.nan
        method = {"method": "exact", "approximate": False, "bins": None}
    else:
        hist = Histograms.empty(k, bins)
        blocks.prepare(1)
        with collective_check(comm, what):
            with closing(blocks()) as stream:
                for X_block, y_block in stream:
                    hist = hist.merge(Histograms.of_block(_columns_of(X_block, y_block, numeric_target),
                                                          overall.min, overall.max, bins))
        allreduce_sum(hist.counts, comm)  # integers: exact, identical on every rank
        extremes, _ = allreduce_minmax(np.concatenate([hist.low.ravel(), -hist.high.ravel()]), comm)
        hist.low, hist.high = extremes[:k * bins].reshape(k, bins), -extremes[k * bins:].reshape(k, bins)
        quantiles, bounds = histogram_quantiles(hist, levels)
        method = {"method": "histogram", "approximate": True, "bins": bins}

    # Everything below is local arithmetic on identical gathered values.
    roles = ["feature"] * n_features + (["target"] if numeric_target else [])
    column_names = list(names) + ([target.name] if numeric_target else [])
    std = overall.std(ddof=1)
    columns = []
    for j in range(k):
        columns.append({
            "name": column_names[j], "role": roles[j], "count": int(overall.count[j]),
            "missing": int(overall.missing[j]), "nan": int(overall.nan[j]), "posinf": int(overall.posinf[j]),
            "neginf": int(overall.neginf[j]),
            "mean": _number(overall.mean[j]) if overall.count[j] else None, "std": _number(std[j]),
            "min": _number(overall.min[j]), "max": _number(overall.max[j]),
            "quantiles": [_number(v) for v in quantiles[:, j]],
            "quantile_bounds": [_number(v) for v in bounds[:, j]],
        })

    target_info, class_shares = _target_summary(target, label_parts, max_classes)
    shifts = _mean_shifts(per_rank, overall)
    rank_rows = []
    offset = 0
    for r, part in enumerate(per_rank):
        start, stop = (ranges[r] if ranges is not None else (offset, offset + part.rows))
        offset += part.rows
        entry = {
            "rank": r, "rows": part.rows, "start": start, "stop": stop,
            "missing_values": int(part.missing[:n_features].sum()),
            "rows_with_missing": part.rows_with_missing,
            "mean": [_number(m) if c else None for m, c in zip(part.mean, part.count)],
            "max_mean_shift_se": _number(shifts["z"][r].max()) if k else None,
            "max_mean_shift_std": _number(shifts["effect"][r].max()) if k else None,
        }
        if target_info is not None and target_info["classes"] is not None:
            entry["class_counts"] = class_shares["counts"][r]
            mine = sum(entry["class_counts"])
            entry["class_proportions"] = [c / mine for c in entry["class_counts"]] if mine else None
            entry["class_tv_distance"] = class_shares["tv"][r]
        rank_rows.append(entry)

    warnings_ = []
    if target_info is not None and target_info["classes"] is not None:
        shifted = [r for r, tv in enumerate(class_shares["tv"]) if tv is not None and tv > CLASS_SHIFT_THRESHOLD]
        if shifted:
            listing = ", ".join(f"rank {r}: {class_shares['tv'][r]:.2f}" for r in shifted)
            warnings_.append({
                "kind": "class_proportions", "ranks": shifted,
                "message": (f"class proportions on {_ranks_text(shifted)} differ from the global ones by more "
                            f"than {CLASS_SHIFT_THRESHOLD} (total variation; {listing}): the slices are not "
                            "identically distributed; shuffle the rows before splitting them"),
            })
    flagged = shifts["flagged"]
    if flagged.any():
        ranks_flagged = [int(r) for r in np.flatnonzero(flagged.any(axis=1))]
        cols_flagged = [int(j) for j in np.flatnonzero(flagged.any(axis=0))]
        r, j = np.unravel_index(np.argmax(np.where(flagged, shifts["effect"], -1.0)), flagged.shape)
        shown = ", ".join(column_names[c] for c in cols_flagged[:8]) + (", ..." if len(cols_flagged) > 8 else "")
        warnings_.append({
            "kind": "column_means", "ranks": ranks_flagged, "columns": [column_names[c] for c in cols_flagged],
            "message": (f"column means on {_ranks_text(ranks_flagged)} differ from the global means by more than "
                        f"{MEAN_SHIFT_Z:g} standard errors and {MEAN_SHIFT_STD:g} standard deviations "
                        f"(columns {shown}; largest: {column_names[j]!r} on rank {r}, "
                        f"{shifts['effect'][r, j]:.2f} standard deviations): the slices are not identically "
                        "distributed (sorted rows?); shuffle the rows before splitting them"),
        })

    return {
        "source": source,
        "rows": overall.rows,
        "features": n_features,
        "ranks": size,
        "rows_with_missing": overall.rows_with_missing,
        "columns": columns,
        "quantile_levels": [float(v) for v in levels],
        "quantile_method": method["method"],
        "quantiles_approximate": method["approximate"],
        "histogram_bins": method["bins"],
        "target": target_info,
        "per_rank": rank_rows,
        "warnings": warnings_,
        "thresholds": {"class_tv_distance": CLASS_SHIFT_THRESHOLD, "mean_shift_se": MEAN_SHIFT_Z,
                       "mean_shift_std": MEAN_SHIFT_STD},
    }


def _ranks_text(ranks: list[int]) -> str:
    return f"rank {ranks[0]}" if len(ranks) == 1 else "ranks " + ", ".join(map(str, ranks))


def _target_summary(target: _Target | None, parts: list | None, max_classes: int) -> tuple[dict | None, dict]:
    """Global class counts and each rank's counts and distance from them. Pure."""
    if target is None or parts is None:
        return None, {}
    info: dict = {"name": target.name, "dtype": target.dtype, "rows": sum(p[2] for p in parts),
                  "missing": sum(p[1] for p in parts), "classes": None, "counts": None, "note": None}
    if any(p[0] is None for p in parts):
        info["note"] = f"more than {max_classes} distinct values: not treated as classes"
        return info, {}
    classes = sorted({label for p in parts for label in p[0]})
    if len(classes) > max_classes:
        info["note"] = f"more than {max_classes} distinct values: not treated as classes"
        return info, {}
    per_rank = [[int(p[0].get(c, 0)) for c in classes] for p in parts]
    total = np.sum(np.array(per_rank, dtype=np.int64).reshape(len(parts), len(classes)), axis=0)
    info["classes"], info["counts"] = classes, [int(c) for c in total]
    tv: list[float | None] = []
    for counts in per_rank:
        mine = np.array(counts, dtype=np.float64)
        if mine.sum() == 0 or total.sum() == 0:
            tv.append(None)
        else:
            tv.append(float(0.5 * np.abs(mine / mine.sum() - total / total.sum()).sum()))
    return info, {"counts": per_rank, "tv": tv}


def _mean_shifts(per_rank: list[ColumnStats], overall: ColumnStats) -> dict[str, np.ndarray]:
    """How far each rank's column means are from the global ones. Pure.

    ``z``: in standard errors of the mean of ``n_r`` values drawn without
    replacement from the ``N`` of all ranks, ``σ √((N − n_r) / ((N − 1) n_r))``
    with ``σ`` the global (population) standard deviation; under a random
    split of i.i.d. rows it is about standard normal, so a rule at 5 fires
    by chance about once in 1.7 million (rank, column) pairs.  ``effect``:
    in global standard deviations, so that a drift too small to matter on
    huge slices is not flagged.  Constant columns (numerically) never are.
    """
    N = overall.count.astype(np.float64)
    sigma = np.sqrt(np.divide(overall.m2, N, out=np.zeros_like(N), where=N > 0))
    varying = (overall.max > overall.min) & (sigma > 64 * _EPS * np.abs(overall.mean))
    zs, effects = [], []
    for part in per_rank:
        n = part.count.astype(np.float64)
        usable = varying & (n > 0) & (n < N)
        with np.errstate(invalid="ignore", divide="ignore"):
            delta = np.abs(part.mean - overall.mean)
            se = sigma * np.sqrt((N - n) / ((N - 1) * n))
            zs.append(np.where(usable, delta / se, 0.0))
            effects.append(np.where(usable, delta / sigma, 0.0))
    z, effect = np.array(zs).reshape(len(per_rank), -1), np.array(effects).reshape(len(per_rank), -1)
    return {"z": z, "effect": effect, "flagged": (z > MEAN_SHIFT_Z) & (effect > MEAN_SHIFT_STD)}


def _check_options(quantiles: Any, bins: int, max_classes: int) -> np.ndarray:
    levels = _check_levels(quantiles)
    if levels.ndim != 1 or levels.size == 0:
        raise ValueError(f"quantiles must be a non-empty sequence of levels in [0, 1], got {quantiles!r}")
    if not (isinstance(bins, (int, np.integer)) and bins >= 2):
        raise ValueError(f"bins must be an integer >= 2, got {bins!r}")
    if not (isinstance(max_classes, (int, np.integer)) and max_classes >= 1):
        raise ValueError(f"max_classes must be a positive integer, got {max_classes!r}")
    return levels


def _target_kind(y: np.ndarray | None) -> str | None:
    if y is None:
        return None
    return "numeric" if y.dtype.kind in "biuf" else "text"


def describe_arrays(
    X: Any,
    y: Any = None,
    *,
    feature_names: Sequence[str] | None = None,
    target_name: str = "y",
    quantiles: Sequence[float] = DEFAULT_QUANTILES,
    bins: int = HISTOGRAM_BINS,
    exact_quantiles: bool = False,
    max_classes: int = MAX_CLASSES,
    block_rows: int | None = None,
    comm: "Intracomm | None" = None,
) -> dict:
    """Describe the rows that all ranks hold in memory.

    Collective over ``comm``: every rank passes its own rows (possibly
    none) with the same columns.  Two passes over the rows in blocks of
    ``block_rows``, a handful of reductions; rows never move.

    Parameters
    ----------
    X : array-like of shape (n_local_rows, n_features)
        Numeric features; NaN and ±inf count as missing.  A DataFrame's
        column names are used as feature names.
    y : array-like of shape (n_local_rows,), default=None
        A target or label column: numbers (also summarised as a column
        named ``target_name``) or text.  If it has at most ``max_classes``
        distinct values on all ranks together, its class counts are
        reported, per rank too.
    feature_names : sequence of str, default=None
        ``None``: the DataFrame's columns, else ``x0, x1, ...``.
    target_name : str, default="y"
    quantiles : sequence of float, default=DEFAULT_QUANTILES
        Levels in [0, 1] (numpy's "linear" definition).
    bins : int, default=HISTOGRAM_BINS
        Histogram bins per column for approximate quantiles.
    exact_quantiles : bool, default=False
        Compute exact quantiles with :func:`global_quantiles` instead of
        histograms (a sorted copy of the local rows; 10 to 18 reductions).
    max_classes : int, default=MAX_CLASSES
    block_rows : int, default=None
        Rows per block (``None``: about 16 MB of float64).
    comm : mpi4py.MPI.Intracomm, default=None

    Returns
    -------
    dict
        JSON-serialisable (no NaN: undefined numbers are ``None``) and
        identical on every rank:

        - ``source`` (None here), ``rows``, ``features``, ``ranks``,
          ``rows_with_missing`` (rows with a missing value in a column of
          the table: a feature or a numeric target);
        - ``columns``: one dict per feature (and numeric target): ``name``,
          ``role`` ("feature" or "target"), ``count`` (finite values),
          ``missing`` (= ``nan`` + ``posinf`` + ``neginf``), ``mean``,
          ``std`` (sample, ddof=1), ``min``, ``max``, ``quantiles`` (one per
          level) and ``quantile_bounds`` (the exact quantile lies within
          ``± bound``; 0 when exact);
        - ``quantile_levels``, ``quantile_method`` ("histogram" or "exact"),
          ``quantiles_approximate``, ``histogram_bins``;
        - ``target``: None, or ``name``, ``dtype``, ``rows``, ``missing``,
          ``classes`` and ``counts`` (None if not classes), ``note``;
        - ``per_rank``: per rank ``rank``, ``rows``, ``start``, ``stop``
          (offsets in rank order), ``missing_values``, ``rows_with_missing``,
          ``mean`` (per column), ``max_mean_shift_se`` and
          ``max_mean_shift_std`` (the largest distance of a column mean from
          the global one, in standard errors and in standard deviations),
          and with classes ``class_counts``, ``class_proportions`` and
          ``class_tv_distance`` (half the L1 distance of the proportions from
          the global ones; None for a rank without labelled rows);
        - ``warnings``: dicts with ``kind`` ("class_proportions" or
          "column_means"), ``ranks``, ``message`` (and ``columns``);
        - ``thresholds`` of the two warnings.

    Raises
    ------
    DistributedError
        The same on every rank if some rank's input is not numeric or not
        2-D, or its ``y`` has the wrong length.
    ValueError
        If ranks disagree on the columns, or an option is invalid.
    """
    levels = _check_options(quantiles, bins, max_classes)
    comm = get_comm(comm)
    with library_comm(comm) as lib:
        local: dict = {}
        with collective_check(lib, "checking the input"):
            if hasattr(X, "columns") and feature_names is None:
                local["names"] = [str(c) for c in X.columns]
            if hasattr(X, "toarray"):
                raise TypeError("describe_arrays needs dense rows, not a sparse matrix")
            Xa = np.asarray(X)
            if Xa.ndim != 2 or Xa.dtype.kind not in "biuf":
                raise ValueError(f"X must be a 2-D numeric array, got shape {Xa.shape} and dtype {Xa.dtype}")
            ya = None if y is None else np.asarray(y)
            if ya is not None and (ya.ndim != 1 or ya.shape[0] != Xa.shape[0]):
                raise ValueError(f"y must be 1-D with one value per row of X ({Xa.shape[0]}), got shape {ya.shape}")
        n_features, names, target = _agree_layout(lib, Xa, ya, feature_names, local.get("names"), target_name)
        blocks = _ArrayBlocks(Xa, ya, block_rows or _default_block_rows(n_features + 1))

        def exact() -> np.ndarray:
            Z = _columns_of(Xa, ya, target is not None and target.kind == "numeric")
            Z = np.where(np.isfinite(Z), Z, np.nan)  # a copy: ±inf are missing here, like NaN
            stats = None
            with collective_check(lib, "sorting the rows"):
                stats = _OrderStatistics(Z)
            return np.atleast_2d(_quantiles_from(stats.reduce(lib), levels))

        return _describe_blocks(blocks, n_features=n_features, names=names, target=target, levels=levels,
                                bins=bins, max_classes=max_classes, comm=lib, what="describing the rows",
                                source=None, ranges=None, exact=exact if exact_quantiles else None)


def _agree_layout(comm: "Intracomm", X: np.ndarray, y: np.ndarray | None, feature_names: Sequence[str] | None,
                  frame_names: list[str] | None, target_name: str) -> tuple[int, list[str], _Target | None]:
    """The columns every rank agrees on. Collective over ``comm`` (one small allgather)."""
    kind = _target_kind(y)
    mine = (X.shape[1], frame_names, y is not None, kind if y is not None and y.shape[0] else None,
            None if y is None else str(y.dtype))
    everyone = allgather_object(mine, comm)
    for what, index in (("numbers of features", 0), ("feature names", 1), ("targets (y given or not)", 2)):
        if len({repr(m[index]) for m in everyone}) > 1:
            listing = ", ".join(f"rank {r}: {m[index]}" for r, m in enumerate(everyone))
            raise ValueError(f"ranks have different {what} ({listing})")
    kinds = {m[3] for m in everyone if m[3] is not None}
    if len(kinds) > 1:
        raise ValueError("ranks have targets of different kinds (numbers on some, text on others)")
    n_features = everyone[0][0]
    names = list(feature_names) if feature_names is not None else everyone[0][1] or [f"x{j}" for j in range(n_features)]
    if len(names) != n_features:
        raise ValueError(f"feature_names has {len(names)} names for {n_features} features")
    target = None
    if everyone[0][2]:
        kind = kinds.pop() if kinds else "numeric"
        dtypes = [m[4] for m in everyone if m[3] is not None] or [everyone[0][4]]
        target = _Target(target_name, kind, "str" if kind == "text" else dtypes[0])
    return n_features, [str(n) for n in names], target


class _FileBlocks:
    """This rank's rows of an HDF5 data set, streamed once per pass. Collective ``prepare``.

    Each pass streams the rows through :meth:`mpitrain.data.RowReader.stream`,
    whose ring of a few blocks bounds the memory whatever the slice's size;
    the second pass opens the files again (a streamed read goes once).  If
    every rank's slice takes no more memory than that ring, the rows are
    kept instead and read only once.  The choice depends only on the data
    set's size, so every rank makes the same one.
    """

    def __init__(self, open_reader: Callable[[], "RowReader"], first: "RowReader", keep: bool):
        self.open_reader, self.keep = open_reader, keep
        self.reader: "RowReader | None" = first
        self.read_seconds = 0.0

    def prepare(self, pass_index: int) -> None:
        """Start reading for pass 0 or 1. Collective when it opens the files again."""
        if pass_index == 0:
            self.reader.begin(keep_rows=self.keep)
        elif not self.keep:
            self.read_seconds += self.reader.read_seconds
            self.reader.close()
            self.reader = None  # released before the next open: never two rings at once
            self.reader = self.open_reader().begin(keep_rows=False)

    def __call__(self) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        for block in self.reader.stream():
            yield block.X, block.y

    def close(self) -> None:
        """Stop the reading thread (an error elsewhere must not leave it inside HDF5)."""
        if self.reader is not None:
            self.read_seconds += self.reader.read_seconds
            self.reader.close()


def _file_feature_names(path: str, x: str, n_features: int) -> list[str] | None:
    """``feature_names`` stored as an attribute of the feature dataset or the file, if it fits. Local."""
    import h5py

    with h5py.File(path, "r") as f:
        stored = f[x].attrs.get("feature_names", f.attrs.get("feature_names"))
    if stored is None:
        return None
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in np.atleast_1d(stored)]
    return names if len(names) == n_features else None


def describe_file(
    path: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    x: str = "X",
    y: str | None = None,
    comm: "Intracomm | None" = None,
    block_rows: int | None = None,
    quantiles: Sequence[float] = DEFAULT_QUANTILES,
    bins: int = HISTOGRAM_BINS,
    max_classes: int = MAX_CLASSES,
    feature_names: Sequence[str] | None = None,
) -> dict:
    """Describe an HDF5 data set, each rank streaming its own slice of rows.

    Collective over ``comm``.  The files' metadata are checked and agreed
    by :func:`mpitrain.data.open_rows`; then every rank streams its own
    contiguous rows (:func:`mpitrain.data.row_range`) in blocks, twice:
    moments and labels, then histograms for the quantiles.  Memory stays
    at a few blocks whatever the file size (slices no larger than that are
    kept and read once).  Quantiles are approximate, each with its
    guaranteed bound (see :func:`histogram_quantiles`).

    Parameters
    ----------
    path : str, path-like, or a sequence of them
        An HDF5 file, a glob pattern or a list of files (see
        :func:`~mpitrain.data.open_rows`).
    x : str, default="X"
        The 2-D numeric feature dataset.
    y : str, default=None
        A 1-D target or label dataset (numeric or text), if any.
    comm : mpi4py.MPI.Intracomm, default=None
    block_rows : int, default=None
        About how many rows to read per block (rounded to the file's
        chunks); ``None``: :data:`mpitrain.data.BLOCK_BYTES` of features.
    quantiles : sequence of float, default=DEFAULT_QUANTILES
    bins : int, default=HISTOGRAM_BINS
    max_classes : int, default=MAX_CLASSES
    feature_names : sequence of str, default=None
        ``None``: the ``feature_names`` attribute of the (first file's)
        feature dataset or file if it has one name per column, else
        ``x0, x1, ...``.

    Returns
    -------
    dict
        As :func:`describe_arrays`, with ``source`` the file (or files)
        and ``per_rank`` ``start``/``stop`` the rank's rows in the data set.

    Raises
    ------
    DistributedError
        The same on every rank if a file, a dataset or a read fails.
    """
    from .data import BLOCK_BYTES, RING_BLOCKS, open_rows, row_range

    levels = _check_options(quantiles, bins, max_classes)
    if block_rows is not None and not (isinstance(block_rows, (int, np.integer)) and block_rows >= 1):
        raise ValueError(f"block_rows must be a positive integer, got {block_rows!r}")
    comm = get_comm(comm)
    with library_comm(comm) as lib:
        def open_reader(block_bytes: int = BLOCK_BYTES) -> "RowReader":
            return open_rows(path, x=x, y=y, comm=lib, labels=True, block_bytes=block_bytes)

        first = open_reader()
        row_bytes = first.x_dtype.itemsize * max(first.n_features, 1)
        block_bytes = BLOCK_BYTES if block_rows is None else int(block_rows) * row_bytes
        if block_bytes != BLOCK_BYTES:
            first = open_reader(block_bytes)  # never begun: nothing to close
        size = lib.Get_size()
        ranges = [row_range(first.n_rows, size, r) for r in range(size)]
        largest = max(b - a for a, b in ranges)
        keep = largest * (row_bytes + (first.y_dtype.itemsize if first.y_dtype is not None else 0)) <= \
            RING_BLOCKS * block_bytes
        blocks = _FileBlocks(lambda: open_reader(block_bytes), first, keep)
        try:
            n_features = first.n_features
            names: list[str] | None = list(feature_names) if feature_names is not None else None
            with collective_check(lib, f"reading {first.path}"):
                if names is None:
                    names = _file_feature_names(first.paths[0], x, n_features)
                elif len(names) != n_features:
                    raise ValueError(f"feature_names has {len(names)} names for {n_features} features")
            names = names or [f"x{j}" for j in range(n_features)]
            target = None
            if y is not None:
                kind = "text" if first.y_dtype == object else "numeric"
                target = _Target(y, kind, "str" if kind == "text" else str(first.y_dtype))
            source = (os.path.abspath(first.paths[0]) if len(first.paths) == 1
                      else [os.path.abspath(p) for p in first.paths])
            return _describe_blocks(blocks, n_features=n_features, names=names, target=target, levels=levels,
                                    bins=bins, max_classes=max_classes, comm=lib,
                                    what=f"reading {first.path}", source=source, ranges=ranges)
        finally:
            blocks.close()


# ----------------------------------------------------------------------------
# Rendering (pure)


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return f"{value:,}"
    return f"{value:.{digits}g}"


def _level_label(level: float) -> str:
    percent = 100 * level
    return f"{percent:.0f}%" if abs(percent - round(percent)) < 1e-9 else f"{percent:g}%"


def format_description(result: dict) -> str:
    """Render the result of :func:`describe_file` or :func:`describe_arrays` as text. Pure.

    A fixed-width table with one row per column (name, count, missing,
    mean, std, min, the quantiles, max, and the largest quantile bound),
    the class counts, the rows of each rank, and the warnings.
    """
    from .report import format_table

    lines = []
    source = result.get("source")
    where = "" if not source else f"{source}: " if isinstance(source, str) else f"{len(source)} files: "
    lines.append(f"{where}{result['rows']:,} rows x {result['features']} features on {result['ranks']} rank(s); "
                 f"{result['rows_with_missing']:,} rows with missing values")
    levels = result["quantile_levels"]
    # The 0 and 1 levels are the min and max columns already.
    shown = [i for i, q in enumerate(levels) if 0 < q < 1]
    header = ["column", "count", "missing", "mean", "std", "min"] + [_level_label(levels[i]) for i in shown] + ["max"]
    approximate = result["quantiles_approximate"]
    if approximate:
        header.append("quantile ±")
    rows = []
    for c in result["columns"]:
        name = c["name"] + (" (target)" if c["role"] == "target" else "")
        row = [name, _fmt(c["count"]), _fmt(c["missing"]), _fmt(c["mean"]), _fmt(c["std"]), _fmt(c["min"])]
        row += [_fmt(c["quantiles"][i]) for i in shown] + [_fmt(c["max"])]
        if approximate:
            bounds = [c["quantile_bounds"][i] for i in shown if c["quantile_bounds"][i] is not None]
            row.append(_fmt(max(bounds), 2) if bounds else "-")
        rows.append(row)
    lines += ["", format_table(header, rows)]
    missing_kinds = [f"{c['name']}: {c['nan']} NaN, {c['posinf']} +inf, {c['neginf']} -inf"
                     for c in result["columns"] if c["posinf"] or c["neginf"]]
    if missing_kinds:
        lines.append("missing values include infinities (" + "; ".join(missing_kinds) + ")")
    all_bounds = [b for c in result["columns"] for b in c["quantile_bounds"] if b is not None]
    if approximate and any(all_bounds):
        lines.append(f"quantiles are approximate ({result['histogram_bins']}-bin histograms between each column's "
                     "min and max): each is within the ± shown of the exact value (numpy's linear quantile)")
    elif approximate:
        lines.append("quantiles are exact: each fell on the first or last value of a histogram bin")
    else:
        lines.append("quantiles are exact (numpy's linear quantile)")

    target = result.get("target")
    if target is not None:
        lines.append("")
        lines.append(f"target {target['name']!r} ({target['dtype']}): {target['rows']:,} rows, "
                     f"{target['missing']:,} missing" + (f"; {target['note']}" if target["note"] else ""))
        if target["classes"] is not None:
            total = sum(target["counts"]) or 1
            lines.append(format_table(["class", "count", "share"],
                                      [[str(c), _fmt(n), f"{n / total:.3f}"]
                                       for c, n in zip(target["classes"], target["counts"])]))

    lines.append("")
    with_classes = target is not None and target["classes"] is not None
    header = ["rank", "rows", "first row", "missing values", "rows with missing", "max mean shift (se / std)"]
    if with_classes:
        header.append("class TV distance")
    rows = []
    for p in result["per_rank"]:
        shift = ("-" if p["max_mean_shift_se"] is None else
                 f"{p['max_mean_shift_se']:.2f} / {p['max_mean_shift_std']:.3f}")
        row = [str(p["rank"]), _fmt(p["rows"]), _fmt(p["start"]), _fmt(p["missing_values"]),
               _fmt(p["rows_with_missing"]), shift]
        if with_classes:
            row.append(_fmt(p.get("class_tv_distance"), 3))
        rows.append(row)
    lines.append(format_table(header, rows))

    if result["warnings"]:
        lines.append("")
        lines += [f"warning: {w['message']}" for w in result["warnings"]]
    return "\n".join(lines)
