"""Classes agreed across ranks: the global label set, per-rank counts, balanced weights, class shift.

Every rank must fit in the same global class space, even a rank that holds
no row of some class.  :func:`agree_classes` is the one agreement every
classifier uses (exact, averaged, cascade): one small ``allgather`` of each
rank's labels with their row counts and sample-weight totals.  A rank whose
class proportions are far from the global ones (total-variation distance,
:func:`class_shift`, above :data:`CLASS_SHIFT_THRESHOLD`) is warned about
with one message (:class:`ClassProportionWarning`); ``mpitrain describe``
flags the same ranks with the same rule.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from mpitrain.comm import allgather_object
from mpitrain.errors import format_ranks

if TYPE_CHECKING:  # pragma: no cover
    from mpi4py.MPI import Intracomm

__all__ = [
    "CLASS_SHIFT_THRESHOLD",
    "ClassProportionWarning",
    "GlobalClasses",
    "agree_classes",
    "balanced_class_weights",
    "class_weights",
    "class_shift",
    "union_labels",
]


#: Total-variation distance between a rank's class proportions and the
#: global ones above which the rank's slice counts as skewed.
CLASS_SHIFT_THRESHOLD = 0.2


class ClassProportionWarning(UserWarning):
    """Class proportions differ strongly between ranks: averaging degrades."""


def class_shift(rank_counts: np.ndarray) -> np.ndarray:
    """Total-variation distance of each rank's class distribution from the global one. Pure.

    ``rank_counts`` has shape (n_ranks, n_classes) (row counts or weight
    totals); ranks without any get distance 0.
    """
    rank_counts = np.asarray(rank_counts, dtype=np.float64)
    total = rank_counts.sum(axis=0)
    rows = rank_counts.sum(axis=1)
    if total.sum() == 0:
        return np.zeros(len(rank_counts))
    p = total / total.sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        local = rank_counts / rows[:, None]
    distance = 0.5 * np.abs(local - p).sum(axis=1)
    return np.where(rows > 0, distance, 0.0)


def class_weights(class_weight, agreed: GlobalClasses) -> np.ndarray:
    """scikit-learn's ``compute_class_weight`` from the GLOBAL class counts. Pure.

    ``None``: ones; ``"balanced"``: :func:`balanced_class_weights` of the
    sample-weighted counts of all ranks; a dict: scikit-learn's own checks
    and values (a dict does not depend on the rows).
    """
    classes = agreed.classes
    if class_weight is None:
        return np.ones(len(classes))
    if isinstance(class_weight, str):
        return balanced_class_weights(agreed.weighted)
    from sklearn.utils.class_weight import compute_class_weight

    return compute_class_weight(class_weight, classes=classes, y=classes)


def balanced_class_weights(totals: np.ndarray) -> np.ndarray:
    """scikit-learn's "balanced" class weights from global per-class totals. Pure.

    ``n_samples / (n_classes * count(class))`` with ``n_samples`` the sum
    of ``totals``, which are row counts or sample-weight totals.
    """
    totals = np.asarray(totals, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return totals.sum() / (len(totals) * totals)


@dataclass(frozen=True)
class GlobalClasses:
    """What every rank knows after :func:`agree_classes`: identical everywhere.

    Attributes
    ----------
    classes : ndarray
        The sorted union of every rank's labels.
    rank_counts : ndarray of int64, shape (n_ranks, n_classes)
        Rows of each class on each rank.
    rank_weights : ndarray of float64, shape (n_ranks, n_classes)
        Sample-weight totals of each class on each rank (the row counts
        when unweighted).
    """

    classes: np.ndarray
    rank_counts: np.ndarray
    rank_weights: np.ndarray

    @property
    def counts(self) -> np.ndarray:
        """Rows of each class, all ranks."""
        return self.rank_counts.sum(axis=0)

    @property
    def weighted(self) -> np.ndarray:
        """Sample-weight total of each class, all ranks."""
        return self.rank_weights.sum(axis=0)

    @property
    def n_rows(self) -> int:
        """Rows of all ranks."""
        return int(self.rank_counts.sum())

    def shift(self) -> np.ndarray:
        """Each rank's :func:`class_shift` (by sample weight) from the global proportions."""
        return class_shift(self.rank_weights)

    def index(self, y: np.ndarray) -> np.ndarray:
        """Each label's position in :attr:`classes`. Local."""
        if len(y) == 0:
            return np.zeros(0, dtype=np.intp)
        return np.searchsorted(self.classes, y)


def union_labels(gathered: list[np.ndarray]) -> np.ndarray:
    """The sorted union of every rank's labels, in rank order. Pure.

    Every rank calls it with the same gathered arrays, so every rank gets
    the same classes, or the same error when the ranks' labels cannot be
    compared (numbers on one rank, strings on another).
    """
    present = [labels for labels in gathered if len(labels)]
    if not present:
        return np.zeros(0)
    kinds = {
        rank: _label_kind(labels) for rank, labels in enumerate(gathered) if len(labels)
    }
    if len(set(kinds.values())) > 1:
        # numpy would turn the numbers into strings and go on: scikit-learn refuses.
        listing = ", ".join(f"rank {r}: {k}" for r, k in kinds.items())
        raise ValueError(
            f"Mix of label input types (string and number) over the ranks ({listing}); "
            "every rank must hold labels of one type"
        )
    try:
        return np.unique(np.concatenate(present))
    except (TypeError, ValueError) as exc:
        kinds = sorted({str(p.dtype) for p in present})
        raise ValueError(
            f"the ranks' class labels cannot be sorted together "
            f"(label dtypes: {kinds}): {exc}"
        ) from None


def _label_kind(labels: np.ndarray) -> str:
    """``"string"`` or ``"number"``: the kind of a rank's (non-empty) labels. Pure."""
    if labels.dtype.kind in "US":
        return "string"
    if labels.dtype.kind == "O":
        return (
            "string" if any(isinstance(v, (str, bytes)) for v in labels) else "number"
        )
    return "number"


def _local_labels(
    y: np.ndarray, sample_weight: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """This rank's labels, their row counts and sample-weight totals. Local."""
    if len(y) == 0:
        return np.asarray(y)[:0], np.zeros(0, dtype=np.int64), np.zeros(0)
    labels, inverse = np.unique(y, return_inverse=True)
    counts = np.bincount(inverse, minlength=len(labels)).astype(np.int64)
    weights = (
        counts.astype(np.float64)
        if sample_weight is None
        else np.bincount(inverse, weights=sample_weight, minlength=len(labels))
    )
    return labels, counts, weights


def _combine_labels(parts: list) -> GlobalClasses:
    """Every rank's ``(labels, counts, weights)`` into the global classes. Pure.

    Every rank calls this with the same gathered list, in rank order, so
    every rank gets the same answer (the same sums) or the same error.
    """
    classes = union_labels([labels for labels, _, _ in parts])
    rank_counts = np.zeros((len(parts), len(classes)), dtype=np.int64)
    rank_weights = np.zeros((len(parts), len(classes)))
    for rank, (labels, counts, weights) in enumerate(parts):
        if len(labels):
            where = np.searchsorted(classes, labels)
            rank_counts[rank, where] = counts
            rank_weights[rank, where] = weights
    return GlobalClasses(classes, rank_counts, rank_weights)


def _warn_class_shift(agreed: GlobalClasses) -> None:
    """One :class:`ClassProportionWarning` if some rank's classes are skewed. Local."""
    distance = agreed.shift()
    skewed = np.flatnonzero(distance > CLASS_SHIFT_THRESHOLD).tolist()
    if not skewed:
        return
    worst = int(np.argmax(distance))
    warnings.warn(
        f"class proportions on {format_ranks(skewed, len(distance))} differ from the "
        f"global ones by more than {CLASS_SHIFT_THRESHOLD} (total variation; largest "
        f"{distance[worst]:.2f}, on rank {worst}): models averaged over ranks "
        "(strategy='average') degrade on such slices, exact fits do not; shuffle the "
        "rows before splitting them (mpitrain shuffle, or train --shuffle)",
        ClassProportionWarning,
        stacklevel=4,
    )


def agree_classes(
    y: np.ndarray,
    sample_weight: np.ndarray | None,
    comm: Intracomm,
    *,
    warn: bool = True,
) -> GlobalClasses:
    """The global classes and every rank's counts per class. Collective over ``comm``.

    One small ``allgather`` of each rank's labels, row counts and
    sample-weight totals.  Raises the same ``ValueError`` on every rank if
    the labels of different ranks cannot be sorted together or if all ranks
    together hold fewer than two classes.  With ``warn``, issues one
    :class:`ClassProportionWarning`, identically on every rank, when some
    rank's class proportions (by sample weight) are more than
    :data:`CLASS_SHIFT_THRESHOLD` (total variation) from the global ones.

    Parameters
    ----------
    y : ndarray of shape (n_local_rows,)
        This rank's checked labels (possibly none).
    sample_weight : ndarray of shape (n_local_rows,) or None
    comm : mpi4py.MPI.Intracomm
    warn : bool, default=True

    Returns
    -------
    GlobalClasses
    """
    agreed = _combine_labels(allgather_object(_local_labels(y, sample_weight), comm))
    if len(agreed.classes) < 2:
        found = (
            f"only one class: {agreed.classes.tolist()[0]!r}"
            if len(agreed.classes)
            else "no labels"
        )
        raise ValueError(
            f"a classifier needs samples of at least 2 classes over all ranks, "
            f"but the data contains {found}"
        )
    if warn:
        _warn_class_shift(agreed)
    return agreed
