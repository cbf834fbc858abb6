"""Checks of the pooled rows that need neither scikit-learn nor MPI.

Apart from :mod:`mpitrain.utils.validation` (which imports scikit-learn's)
so that the ranks of a fit that never build a model need not import it.
"""

from __future__ import annotations

__all__ = ["require_rows"]


def require_rows(n_rows: int, n_ranks: int, total_weight: float | None = None) -> None:
    """Refuse a fit without rows, or whose sample weights sum to zero. Pure.

    Called with numbers every rank shares (after a reduction), so every rank
    raises the same error.  ``total_weight`` is ``None`` when unweighted.
    """
    if n_rows == 0:
        raise ValueError(f"no rows to fit: all {n_ranks} ranks have 0 samples")
    if total_weight is not None and not total_weight > 0:
        raise ValueError("the sample weights of all rows sum to zero")
