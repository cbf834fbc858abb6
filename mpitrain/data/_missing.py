"""Rows with missing values: which, and how many on each rank.

Without scikit-learn (apart from :mod:`mpitrain.preprocessing`, which
re-exports them), so that a streamed exact fit can drop rows on ranks
that never import it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from mpitrain.comm import allgather_array

if TYPE_CHECKING:  # pragma: no cover
    from mpi4py.MPI import Intracomm

__all__ = ["missing_row_mask", "DroppedRows"]


def _missing_labels(y: np.ndarray) -> np.ndarray:
    """Per row, whether a target value is missing: NaN or ±inf, or None in text. Pure."""
    if y.dtype.kind in "fc":
        bad = ~np.isfinite(y)
    elif y.dtype.kind == "O":
        bad = np.frompyfunc(
            lambda v: v is None or (isinstance(v, float) and not np.isfinite(v)), 1, 1
        )(y)
        bad = bad.astype(bool)
    else:
        bad = np.zeros(y.shape, dtype=bool)
    return bad.any(axis=tuple(range(1, bad.ndim))) if bad.ndim > 1 else bad


def missing_row_mask(X: Any, y: Any = None) -> np.ndarray:
    """Which rows have a missing value: NaN or ±inf in ``X``, or a missing target. Pure.

    For streaming code that drops rows block by block; count them with
    :meth:`DroppedRows.gather` at the end.

    Parameters
    ----------
    X : array-like of shape (n_rows, n_features)
    y : array-like of shape (n_rows,) or (n_rows, n_targets), default=None
        Numeric (NaN and ±inf are missing) or text (``None`` is missing).

    Returns
    -------
    ndarray of bool, shape (n_rows,)
    """
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D, got shape {X.shape}")
    mask = (
        ~np.isfinite(X).all(axis=1)
        if X.dtype.kind in "fc"
        else np.zeros(X.shape[0], dtype=bool)
    )
    if y is not None:
        y = np.asarray(y)
        if y.shape[0] != X.shape[0]:
            raise ValueError(f"y has {y.shape[0]} rows but X has {X.shape[0]}")
        mask |= _missing_labels(y)
    return mask


@dataclass(frozen=True)
class DroppedRows:
    """Rows dropped for missing values, per rank, identical on every rank.

    Attributes
    ----------
    per_rank : tuple of int
        Rows dropped on each rank.
    rows_per_rank : tuple of int
        Rows each rank had before dropping.
    missing_by_column : tuple of int
        Per feature column, the rows (of all ranks) with a missing value
        there (a row may count in several columns).
    missing_target : int
        Rows (of all ranks) with a missing target.
    """

    per_rank: tuple[int, ...]
    rows_per_rank: tuple[int, ...]
    missing_by_column: tuple[int, ...]
    missing_target: int

    @property
    def total(self) -> int:
        """Rows dropped on all ranks."""
        return sum(self.per_rank)

    @property
    def n_rows(self) -> int:
        """Rows of all ranks before dropping."""
        return sum(self.rows_per_rank)

    @property
    def kept(self) -> int:
        """Rows of all ranks after dropping."""
        return self.n_rows - self.total

    @classmethod
    def gather(
        cls,
        dropped: int,
        rows: int,
        comm: Intracomm,
        *,
        missing_by_column: Sequence[int],
        missing_target: int = 0,
    ) -> DroppedRows:
        """Combine every rank's counts. Collective over ``comm`` (one ``Allgather``).

        ``missing_by_column`` must have the same length on every rank.
        """
        mine = np.concatenate(
            [[dropped, rows, missing_target], np.asarray(missing_by_column)]
        ).astype(np.int64)
        everyone = allgather_array(mine, comm)
        return cls(
            tuple(int(v) for v in everyone[:, 0]),
            tuple(int(v) for v in everyone[:, 1]),
            tuple(int(v) for v in everyone[:, 3:].sum(axis=0)),
            int(everyone[:, 2].sum()),
        )

    def to_dict(self, feature_names: Sequence[str] | None = None) -> dict:
        """A JSON-ready summary for reports; columns named if ``feature_names`` is given."""
        by_column: Any = list(self.missing_by_column)
        if feature_names is not None:
            by_column = {
                str(n): c for n, c in zip(feature_names, self.missing_by_column)
            }
        return {
            "total": self.total,
            "rows": self.n_rows,
            "kept": self.kept,
            "per_rank": list(self.per_rank),
            "rows_per_rank": list(self.rows_per_rank),
            "missing_by_column": by_column,
            "missing_target": self.missing_target,
        }

    def __str__(self) -> str:
        ranks = ", ".join(f"rank {r}: {n:,}" for r, n in enumerate(self.per_rank))
        return f"dropped {self.total:,} of {self.n_rows:,} rows with missing values ({ranks})"
