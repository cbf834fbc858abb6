"""Which rows each rank holds: the row partition as pure functions.

The partition depends only on the row count, the rank count and the rank,
so every rank computes every other rank's range without communicating.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    pass

__all__ = [
    "row_range",
    "row_counts",
    "RowSlice",
]


def row_range(n_rows: int, size: int, rank: int) -> tuple[int, int]:
    """The contiguous rows ``[start, stop)`` that ``rank`` of ``size`` owns.

    Balanced: counts differ by at most one, the lowest ranks taking the
    leftover rows.  Ranks beyond ``n_rows`` get an empty range.  Pure.
    """
    if size < 1 or not 0 <= rank < size:
        raise ValueError(f"rank {rank} is not in a communicator of size {size}")
    if n_rows < 0:
        raise ValueError(f"n_rows must be non-negative, got {n_rows}")
    base, extra = divmod(n_rows, size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def row_counts(n_rows: int, size: int) -> np.ndarray:
    """Rows per rank for every rank, as :func:`row_range` assigns them. Pure."""
    base, extra = divmod(n_rows, size)
    return np.array(
        [base + (1 if r < extra else 0) for r in range(size)], dtype=np.int64
    )


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
