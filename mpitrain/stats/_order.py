"""Order statistics across ranks: histograms, quantiles, and exact global order statistics.

Histograms merge by addition and give quantiles with a stated error; the
exact search narrows each requested order statistic with a few reductions of
counts over the float64 bit patterns, never moving a row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from mpitrain.comm import (
    allreduce_minmax,
    allreduce_sum,
    collective_check,
    get_comm,
    library_comm,
    require_same,
)

if TYPE_CHECKING:  # pragma: no cover
    from mpi4py.MPI import Intracomm

__all__ = [
    "HISTOGRAM_BINS",
    "EPS",
    "Histograms",
    "linear_quantiles",
    "histogram_quantiles",
    "float_keys",
    "keys_to_floats",
    "OrderStatistics",
    "check_levels",
    "global_order_statistics",
    "global_quantiles",
    "quantiles_from",
]


# Counts per round of the exact search.  Each round is one reduction, and on
# small problems its latency is all that counts, so the search splits each
# interval into as many parts as this budget allows (from 16 parts, 16 rounds
# for the 64 bits of a float64, to 256 parts, 8 rounds).
_SEARCH_BUDGET = 1 << 17

#: Bins of the per-column histograms that approximate quantiles.
HISTOGRAM_BINS = 2048

_SIGN = np.uint64(1 << 63)
EPS = float(np.finfo(np.float64).eps)
_SUBNORMAL = float(np.finfo(np.float64).smallest_subnormal)


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
    def empty(cls, n_columns: int, bins: int) -> Histograms:
        return cls(
            np.zeros((n_columns, bins), dtype=np.int64),
            np.full((n_columns, bins), np.inf),
            np.full((n_columns, bins), -np.inf),
        )

    @classmethod
    def of_block(
        cls,
        block: np.ndarray,
        lo: np.ndarray,
        hi: np.ndarray,
        bins: int = HISTOGRAM_BINS,
    ) -> Histograms:
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

    def merge(self, other: Histograms) -> Histograms:
        """The histograms of both sets of rows (same bins). Pure."""
        return Histograms(
            self.counts + other.counts,
            np.minimum(self.low, other.low),
            np.maximum(self.high, other.high),
        )


def _lerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """numpy's own linear interpolation (``numpy.lib._function_base_impl._lerp``), bit for bit."""
    diff = b - a
    with np.errstate(invalid="ignore"):
        return np.where(t >= 0.5, b - diff * (1 - t), a + diff * t)


def _linear_positions(
    n: np.ndarray, levels: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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


def linear_quantiles(
    sorted_values: np.ndarray, levels: Sequence[float] | np.ndarray
) -> np.ndarray:
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


def histogram_quantiles(
    hist: Histograms, levels: Sequence[float] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
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
            estimate = np.where(
                rank_in_bin == 0,
                low,
                np.where(rank_in_bin == in_bin - 1, high, np.clip(spread, low, high)),
            )
            exact = (rank_in_bin == 0) | (rank_in_bin == in_bin - 1) | (low == high)
            ends.append(
                (
                    estimate,
                    np.where(exact, estimate, low),
                    np.where(exact, estimate, high),
                    exact,
                )
            )
        (e0, l0, r0, x0), (e1, l1, r1, x1) = ends
        estimate = _lerp(e0, e1, gamma)
        left, right = _lerp(l0, l1, gamma), _lerp(r0, r1, gamma)
        # numpy interpolates the true values with rounding too: a few units of slack.
        slack = 4 * EPS * np.maximum(np.abs(left), np.abs(right)) + 4 * _SUBNORMAL
        values[:, j] = estimate
        bounds[:, j] = np.where(
            x0 & x1, 0.0, np.maximum(estimate - left, right - estimate) + slack
        )
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


class OrderStatistics:
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
        self.comm: Intracomm | None = None

    def reduce(self, comm: Intracomm) -> OrderStatistics:
        """Global counts and extremes of each column. Collective over ``comm`` (two reductions)."""
        k = self.counts.size
        self.comm = comm
        self.counts = allreduce_sum(self.counts.copy(), comm)
        extremes, _ = allreduce_minmax(
            np.concatenate([self.local_min, -self.local_max]), comm
        )
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
                counts[:, j, :] = np.searchsorted(
                    self.keys[j], probes[:, j, :].ravel(), side="right"
                ).reshape(t, probes_per_target)
            allreduce_sum(counts, self.comm)
            enough = counts >= need[..., None]
            found = enough.any(axis=-1)
            first = enough.argmax(axis=-1)
            at_first = np.take_along_axis(probes, first[..., None], axis=-1)[..., 0]
            before = np.take_along_axis(
                probes, np.maximum(first - 1, 0)[..., None], axis=-1
            )[..., 0]
            new_lo = np.where(
                found,
                np.where(first > 0, before + np.uint64(1), lo),
                probes[..., -1] + np.uint64(1),
            )
            new_hi = np.where(found, at_first, hi)
            settled = lo == hi
            lo = np.where(settled, lo, new_lo)
            hi = np.where(settled, hi, new_hi)
        return np.where(active, keys_to_floats(lo), np.nan)


def check_levels(q: Any) -> np.ndarray:
    levels = np.asarray(q, dtype=np.float64)
    if levels.ndim > 1 or not np.all((levels >= 0) & (levels <= 1)):
        raise ValueError(f"quantile levels must be numbers in [0, 1], got {q!r}")
    return levels


def _sorted_columns(X: Any, comm: Intracomm) -> OrderStatistics:
    """Check and sort this rank's rows, agree on the columns, reduce the counts. Collective over ``comm``."""
    stats = None
    with collective_check(comm, "sorting the rows"):
        X = np.asarray(X)
        if X.ndim != 2:
            raise ValueError(f"X must be 2-D, got shape {X.shape}")
        stats = OrderStatistics(X)
    require_same(comm, "columns", stats.counts.size)
    return stats.reduce(comm)


def global_order_statistics(
    X: Any, orders: Any, *, comm: Intracomm | None = None
) -> np.ndarray:
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
        return stats.select(
            np.asarray(orders, dtype=np.int64).reshape(-1, stats.counts.size)
        )


def global_quantiles(
    X: Any, q: float | Sequence[float], *, comm: Intracomm | None = None
) -> np.ndarray:
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
    levels = check_levels(q)
    comm = get_comm(comm)
    with library_comm(comm) as lib:
        return quantiles_from(_sorted_columns(X, lib), levels)


def quantiles_from(stats: OrderStatistics, levels: np.ndarray) -> np.ndarray:
    """numpy's linear quantiles of each column from exact order statistics. Collective."""
    flat = np.atleast_1d(levels)
    below, above, gamma = _linear_positions(stats.counts, flat)
    values = stats.select(np.concatenate([below, above]))
    L = flat.size
    with np.errstate(invalid="ignore"):
        result = _lerp(values[:L], values[L:], gamma)
    result = np.where(stats.counts > 0, result, np.nan)
    return result[0] if levels.ndim == 0 else result
