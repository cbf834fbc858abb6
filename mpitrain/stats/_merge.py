"""Merging every rank's sorted values on rank 0, in chunks of bounded size.

Some statistics need all ranks' distinct values side by side: the ROC curve
(every distinct score, with the positive and negative weight at it), the
most frequent value of a column (every distinct value, with its count).
Gathering them all on rank 0 at once takes memory proportional to the
number of distinct values over all rows: 24 bytes a score for the curve,
16 a value for the counts, i.e. O(rows) for continuous data.

:func:`merge_on_root` gathers them in chunks instead.  The chunk
boundaries are exact global order statistics of the values (a bisection
over their float64 bit patterns: at most 64 small reductions, no row moves,
no copy of the values), chosen so that every chunk holds the rows of one
interval of values from all ranks and at most ``limit + ranks - 1`` rows.  Rank 0
receives and consumes one chunk at a time, in order of the values, so its
memory is bounded by the chunk, whatever the number of rows; the result is
the same as with one chunk.  When everything fits in one chunk (few
distinct values, the usual case) there is a single gather, as before.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from mpitrain.comm import (
    allreduce_minmax,
    allreduce_sum,
    collective_check,
    gatherv_rows,
)
from mpitrain.stats._order import float_keys, keys_to_floats

if TYPE_CHECKING:  # pragma: no cover
    from mpi4py.MPI import Intracomm

__all__ = ["MERGE_CHUNK_ROWS", "merge_chunk_bounds", "merge_on_root"]

#: Rows of one chunk that :func:`merge_on_root` gathers on rank 0 (at most
#: this plus the number of ranks minus one): 1,048,576 rows, 24 MB of
#: (score, positive weight, negative weight) triples.
MERGE_CHUNK_ROWS = 1 << 20


def merge_chunk_bounds(values: np.ndarray, limit: int, comm: Intracomm) -> np.ndarray:
    """Upper bounds of chunks of all ranks' sorted values, each of at most ``limit + ranks - 1``.

    Collective over ``comm`` (one reduction; if more than one chunk is
    needed, two more and a bisection of at most 64 small reductions).
    ``values`` is this rank's float64 values in ascending order, without
    NaN, each at most once on a rank (then a value occurs at most ``ranks``
    times in all).  Chunk ``j`` holds the values in ``(bounds[j-1],
    bounds[j]]`` (the first from ``-inf``); the last bound is ``+inf``.

    The ``j``-th inner bound is the exact global ``j·limit``-th smallest
    value: at least ``j·limit`` values lie at or below it, and fewer than
    ``j·limit + ranks`` (its repeats on other ranks), so a chunk holds at
    most ``limit + ranks - 1``.
    """
    if limit < 1:
        raise ValueError(f"limit must be a positive number of rows, got {limit}")
    values = np.asarray(values, dtype=np.float64)
    total = int(allreduce_sum(np.array([values.size], dtype=np.int64), comm)[0])
    chunks = max(1, -(-total // limit))
    if chunks == 1:
        return np.array([np.inf])
    inner = _order_statistics(
        values, np.arange(1, chunks, dtype=np.int64) * limit - 1, comm
    )
    return np.r_[np.unique(inner[inner < np.inf]), np.inf]


def _order_statistics(
    values: np.ndarray, orders: np.ndarray, comm: Intracomm
) -> np.ndarray:
    """The exact global order statistics ``orders`` (0-based) of all ranks' sorted values.

    Collective over ``comm``.  A bisection over the float64 bit patterns
    (:func:`~mpitrain.stats.float_keys`, ordered as the floats), all orders
    at once: each round one ``Allreduce`` of the counts of values at or
    below the middle keys, counted by binary search in the sorted values
    themselves (no copy of them), at most 64 rounds.  Every rank derives the
    same intervals from the same sums, so every rank leaves after the same
    round.
    """
    local = [values[0], -values[-1]] if values.size else [np.inf, np.inf]
    extremes, _ = allreduce_minmax(np.array(local), comm)
    lo = np.full(orders.shape, float_keys(extremes[0]), dtype=np.uint64)
    hi = np.full(orders.shape, float_keys(-extremes[1]), dtype=np.uint64)
    need = orders + 1
    while (lo < hi).any():
        middle = lo + (hi - lo) // np.uint64(2)
        counts = np.searchsorted(values, keys_to_floats(middle), side="right")
        counts = allreduce_sum(counts.astype(np.int64), comm)
        enough = counts >= need
        hi = np.where(enough, middle, hi)
        lo = np.where(enough, lo, middle + np.uint64(1))
    return keys_to_floats(lo)


def merge_on_root(
    rows: np.ndarray,
    values: np.ndarray,
    consume: Callable[[np.ndarray], None],
    comm: Intracomm,
    *,
    limit: int | None = None,
    descending: bool = False,
    what: str = "merging sorted values on rank 0",
) -> int:
    """Give rank 0 every rank's rows, one interval of values at a time. Collective over ``comm``.

    Parameters
    ----------
    rows : ndarray of shape (n_local, ...)
        This rank's rows (any dtype and trailing shape, the same on every
        rank), sorted by ``values``.
    values : ndarray of shape (n_local,)
        The rows' sort keys as float64 (non-decreasing; a value at most once
        per rank, or the chunk bound grows by its repeats).  Integer keys
        beyond 2**53 may round together: they then travel in the same chunk,
        which keeps the result exact.
    consume : callable
        ``consume(chunk)``, called on rank 0 only, once per chunk, in
        ascending order of the values (descending with ``descending``).  A
        chunk holds every rank's rows whose values lie in one interval, in
        rank order (not merged: ``consume`` combines them), at most
        ``limit + ranks - 1`` rows; with few rows there is one chunk, with
        no rows one empty chunk.
    comm : mpi4py.MPI.Intracomm
    limit : int, default=None
        Rows per chunk (see above); ``None`` means :data:`MERGE_CHUNK_ROWS`.
    descending : bool, default=False
    what : str
        Names the work in the agreed error message.

    Returns
    -------
    int
        The number of chunks, the same on every rank.

    Raises
    ------
    DistributedError
        On every rank, if ``consume`` raised on rank 0 or rank 0 could not
        allocate a chunk; the remaining chunks are not gathered.
    """
    values = np.asarray(values, dtype=np.float64)
    bounds = merge_chunk_bounds(
        values, MERGE_CHUNK_ROWS if limit is None else limit, comm
    )
    stops = np.searchsorted(values, bounds, side="right")
    starts = np.r_[0, stops[:-1]]
    order = range(len(bounds) - 1, -1, -1) if descending else range(len(bounds))
    for j in order:
        chunk = gatherv_rows(rows[starts[j] : stops[j]], comm, what=what)
        # Agreed per chunk: rank 0's failure stops every rank at once.
        with collective_check(comm, what):
            if chunk is not None:
                consume(chunk)
        del chunk
    return len(bounds)
