"""Classes agreed across ranks: the global label set, per-rank counts, and balanced weights.

Every rank must fit in the same global class space, even a rank that holds
no row of some class; a rank whose class proportions differ much from the
global ones is warned about (:class:`ClassProportionWarning`).
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import numpy as np

from mpitrain.comm import allgather_object

if TYPE_CHECKING:  # pragma: no cover
    from mpi4py.MPI import Intracomm


#: Total-variation distance between a rank's class proportions and the
#: global ones above which averaging is warned about.
CLASS_SHIFT_THRESHOLD = 0.2


class ClassProportionWarning(UserWarning):
    """Class proportions differ strongly between ranks: averaging degrades."""


def agree_classes(
    y: np.ndarray,
    sample_weight: np.ndarray | None,
    comm: Intracomm,
    *,
    warn: bool = True,
) -> tuple[np.ndarray, list[dict]]:
    """The global classes (sorted union of every rank's labels), and per-rank weights per class.

    Collective over ``comm`` (one small ``allgather``).  Warns with
    :class:`ClassProportionWarning`, identically on every rank, when some
    rank's class proportions are more than :data:`CLASS_SHIFT_THRESHOLD`
    (total variation) away from the global ones.
    """
    labels, inverse = np.unique(y, return_inverse=True)
    w = (
        np.ones(len(y))
        if sample_weight is None
        else np.asarray(sample_weight, dtype=np.float64)
    )
    mine = {
        label: float(total)
        for label, total in zip(labels.tolist(), np.bincount(inverse, weights=w))
    }
    everyone = allgather_object(mine, comm)
    classes = np.array(sorted({label for rank in everyone for label in rank}))
    if warn and len(classes) > 1:
        overall = np.array(
            [sum(r.get(c, 0.0) for r in everyone) for c in classes.tolist()]
        )
        overall = overall / overall.sum() if overall.sum() > 0 else overall
        shifted = []
        for rank, counts in enumerate(everyone):
            part = np.array([counts.get(c, 0.0) for c in classes.tolist()])
            if (
                part.sum() > 0
                and 0.5 * np.abs(part / part.sum() - overall).sum()
                > CLASS_SHIFT_THRESHOLD
            ):
                shifted.append(rank)
        if shifted:
            warnings.warn(
                f"class proportions on ranks {shifted} differ from the global ones by more than "
                f"{CLASS_SHIFT_THRESHOLD} (total variation); averaged models degrade on such slices — "
                "shuffle the rows or use strategy='exact'",
                ClassProportionWarning,
                stacklevel=3,
            )
    return classes, everyone


def balanced_weights(classes: np.ndarray, counts: list[dict]) -> dict:
    """scikit-learn's "balanced" class weights from every rank's class totals. Pure.

    ``n_samples / (n_classes * count(class))`` over all ranks' rows, where a
    count is a total of sample weights (the row count when unweighted).
    """
    totals = np.array(
        [sum(rank.get(c, 0.0) for rank in counts) for c in classes.tolist()]
    )
    return {
        c: float(totals.sum() / (len(classes) * t))
        for c, t in zip(classes.tolist(), totals)
    }
