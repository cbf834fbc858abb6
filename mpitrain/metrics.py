"""Regression metrics over rows split across ranks, exact by reduction."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .comm import allreduce_sum, get_comm

if TYPE_CHECKING:  # pragma: no cover
    from mpi4py.MPI import Intracomm

__all__ = ["regression_scores", "accuracy"]


def regression_scores(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    sample_weight: np.ndarray | None = None,
    comm: "Intracomm | None" = None,
) -> dict[str, float]:
    """R², mean squared error and mean absolute error of all ranks' rows.

    Collective over ``comm``: two small ``Allreduce`` calls (the global mean
    first, then sums of squares about it, so the total variance does not
    cancel).  Equal to scikit-learn's metrics on the concatenated rows.
    """
    comm = get_comm(comm)
    y_true = np.asarray(y_true, dtype=np.float64).ravel()
    y_pred = np.asarray(y_pred, dtype=np.float64).ravel()
    w = np.ones_like(y_true) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    first = allreduce_sum(np.array([w.sum(), w @ y_true]), comm)
    weight = first[0]
    mean = first[1] / weight if weight > 0 else 0.0
    resid = y_true - y_pred
    second = allreduce_sum(np.array([w @ (y_true - mean) ** 2, w @ resid**2, w @ np.abs(resid)]), comm)
    total, rss, abs_sum = second
    if weight <= 0:
        return {"r2": float("nan"), "mse": float("nan"), "mae": float("nan")}
    # scikit-learn's convention for a constant target: 1 if perfect, else 0.
    r2 = 1.0 - rss / total if total > 0 else (1.0 if rss == 0 else 0.0)
    return {"r2": float(r2), "mse": float(rss / weight), "mae": float(abs_sum / weight)}


def accuracy(y_true: np.ndarray, y_pred: np.ndarray, comm: "Intracomm | None" = None) -> float:
    """Share of all ranks' rows predicted correctly. Collective over ``comm`` (one ``Allreduce``)."""
    comm = get_comm(comm)
    counts = allreduce_sum(np.array([np.sum(np.asarray(y_true) == np.asarray(y_pred)), len(y_true)],
                                    dtype=np.float64), comm)
    return float(counts[0] / counts[1]) if counts[1] else float("nan")
