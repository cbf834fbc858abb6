"""Which rows each rank holds: the row partition as pure functions.

The partition depends only on the row count, the rank count, the rank and
rank 0's stated share (``root_share``), so every rank computes every other
rank's range without communicating.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from numbers import Real
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    pass

__all__ = [
    "check_root_share",
    "row_range",
    "row_counts",
    "RowSlice",
]


def check_root_share(root_share: float) -> float:
    """``root_share`` as a float, or a :class:`ValueError` saying what is allowed. Pure."""
    if isinstance(root_share, (bool, np.bool_)) or not isinstance(
        root_share, (Real, np.floating, np.integer)
    ):
        raise ValueError(f"root_share must be a number from 0 to 1, got {root_share!r}")
    value = float(root_share)
    if not 0.0 <= value <= 1.0:  # also refuses NaN
        raise ValueError(f"root_share must be a number from 0 to 1, got {root_share!r}")
    return value


def _root_rows(n_rows: int, size: int, root_share: float) -> int:
    """Rows of rank 0: ``ceil(n_rows * s / (size - 1 + s))``, in exact arithmetic. Pure.

    Exact fractions, not floats, so that the count cannot depend on the
    platform's rounding.  The ceiling makes ``s = 1`` give rank 0 the
    ``ceil(n_rows / size)`` rows of the balanced partition.
    """
    if size == 1:
        return n_rows
    share = Fraction(root_share)  # exact: a float is a dyadic rational
    return math.ceil(n_rows * share / (size - 1 + share))


def row_range(
    n_rows: int, size: int, rank: int, root_share: float = 1.0
) -> tuple[int, int]:
    """The contiguous rows ``[start, stop)`` that ``rank`` of ``size`` owns.

    With ``root_share=1`` (the default) the partition is balanced: counts
    differ by at most one, the lowest ranks taking the leftover rows, and
    ranks beyond ``n_rows`` get an empty range.  With ``root_share=s``,
    rank 0 gets ``ceil(n_rows * s / (size - 1 + s))`` rows, about ``s``
    times the rows of each other rank (``s = 0``: none), and the other
    ranks share the rest as evenly, the lowest of them taking the leftover
    rows.  ``s = 1`` gives the balanced partition, row for row.  Ranks stay
    in row order.  Pure: the same on every rank, no communication.

    Parameters
    ----------
    n_rows : int
        Rows of the data set.
    size, rank : int
        The number of ranks and this one.
    root_share : float, default=1.0
        Rank 0's rows relative to each other rank's, from 0 to 1: rank 0
        reads less in proportion to what it alone does (the cost model in
        docs/performance.md).  Alone (``size=1``) rank 0 reads every row.

    Returns
    -------
    (start, stop) : tuple of int

    Raises
    ------
    ValueError
        A rank outside ``[0, size)``, negative ``n_rows``, or a share
        outside ``[0, 1]``.
    """
    if size < 1 or not 0 <= rank < size:
        raise ValueError(f"rank {rank} is not in a communicator of size {size}")
    if n_rows < 0:
        raise ValueError(f"n_rows must be non-negative, got {n_rows}")
    root = _root_rows(n_rows, size, check_root_share(root_share))
    if rank == 0:
        return 0, root
    base, extra = divmod(n_rows - root, size - 1)
    start = root + (rank - 1) * base + min(rank - 1, extra)
    return start, start + base + (1 if rank - 1 < extra else 0)


def row_counts(n_rows: int, size: int, root_share: float = 1.0) -> np.ndarray:
    """Rows per rank for every rank, as :func:`row_range` assigns them. Pure.

    One exact division whatever ``size``: cheap on every rank of a large job.
    """
    if size < 1:
        raise ValueError(f"a communicator has at least one rank, got size {size}")
    if n_rows < 0:
        raise ValueError(f"n_rows must be non-negative, got {n_rows}")
    root = _root_rows(n_rows, size, check_root_share(root_share))
    counts = np.empty(size, dtype=np.int64)
    counts[0] = root
    if size > 1:
        base, extra = divmod(n_rows - root, size - 1)
        counts[1:] = base
        counts[1 : 1 + extra] += 1
    return counts


@dataclass
class RowSlice:
    """One rank's rows of an HDF5 data set (one file or several).

    Attributes
    ----------
    X : ndarray of shape (stop - start, n_features)
        Features; float32 if stored as float32 in every file, float64 otherwise.
    y : ndarray of shape (stop - start,) or None
        Target: float64 for floating-point targets, integer labels as stored.
    sample_weight : ndarray of shape (stop - start,) or None
    start, stop : int
        The global row range of this rank.
    n_rows : int
        Rows in the whole data set (all files).
    path : str
        The file, or a short description of the files, for messages.
    paths : tuple of str
        Every file of the data set, in row order.
    """

    X: np.ndarray
    y: np.ndarray | None
    sample_weight: np.ndarray | None
    start: int
    stop: int
    n_rows: int
    path: str
    paths: tuple[str, ...] = ()

    @property
    def n_features(self) -> int:
        return self.X.shape[1]

    @property
    def nbytes(self) -> int:
        return sum(
            a.nbytes for a in (self.X, self.y, self.sample_weight) if a is not None
        )
