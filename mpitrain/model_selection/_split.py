"""Train/test splits and k-fold cross-validation that do not depend on the number of ranks.

Every row's fate depends only on its global row id and the seed: the row's
key is a counter-based hash (splitmix64) of ``(seed, purpose, row id)``.
The test set is exactly the ``n_test`` rows with the smallest keys, and
fold ``f`` of ``K`` holds the rows whose keys rank between the fold's
boundaries in the global order, with scikit-learn's ``KFold`` sizes.  The
boundaries are exact global order statistics of the keys, found by a radix
search: a few rounds (none for small data, about two up to 2**27 rows),
each one small ``Allreduce`` of 255 counts per boundary, then one small
``allgather`` of the few keys left near each boundary.  So the same rows go
to the test set, or to each fold, with 1 or with 400 ranks, and the sizes
are exact (thresholding the keys at ``test_size * 2**64`` would need no
communication, but its size would be random: binomial around the target).

The keys are distinct: the hash is a bijection of 64-bit integers applied
to ``seed_key + (row_id + 1) * golden`` (an odd multiplier, so distinct
row ids give distinct inputs), so ties never blur the boundaries.
"""

from __future__ import annotations

import inspect
import math
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from numbers import Integral, Real
from typing import TYPE_CHECKING, Any

import numpy as np

from mpitrain.comm import (
    allgather_object,
    allreduce_minmax,
    allreduce_sum,
    collective_check,
    get_comm,
    same_text_key,
)
from mpitrain.metrics import (
    classification_scores,
    predict_local,
    regression_scores,
    roc_auc,
    roc_auc_ovr,
)
from mpitrain.utils.hashing import GOLDEN as _GOLDEN
from mpitrain.utils.hashing import MASK64 as _MASK64
from mpitrain.utils.hashing import mix64 as _mix64
from mpitrain.utils.hashing import mix64_int as _mix64_int
from mpitrain.utils.multiclass import agree_classes
from mpitrain.utils.validation import (
    agree_values,
    canonical_value,
    estimator_parameters,
)

if TYPE_CHECKING:  # pragma: no cover
    from mpi4py.MPI import Intracomm

__all__ = [
    "GATHER_KEYS",
    "row_hash",
    "split_sizes",
    "fold_sizes",
    "global_test_mask",
    "global_fold_ids",
    "stratified_fold_sizes",
    "global_stratified_fold_ids",
    "global_row_offset",
    "train_test_split_mask",
    "fold_ids",
    "stratified_fold_ids",
    "train_test_split",
    "SCORINGS",
    "cross_validate",
]


# Separate hash streams, so a split and a cross-validation with one seed are independent.
_SPLIT_STREAM = 0
_FOLD_STREAM = 1
# Radix search: 8 bits of the 64-bit key per round.
_RADIX_BITS = 8
#: The order-statistic search exchanges the keys themselves once this few remain in play.
GATHER_KEYS = 2048


def row_hash(row_ids: np.ndarray, seed: int = 0, stream: int = 0) -> np.ndarray:
    """The 64-bit key of each global row id for ``seed`` (and a ``stream`` per purpose). Pure.

    Distinct row ids get distinct keys.  Vectorised: about 10 ns per row.
    """
    if not isinstance(seed, Integral):
        raise TypeError(f"seed must be an integer, got {seed!r}")
    base = _mix64_int(_mix64_int(int(seed) & _MASK64) + (int(stream) + 1) * _GOLDEN)
    ids = np.asarray(row_ids, dtype=np.uint64)
    return _mix64((ids + np.uint64(1)) * np.uint64(_GOLDEN) + np.uint64(base))


def split_sizes(n_rows: int, test_size: float | int = 0.25) -> tuple[int, int]:
    """``(n_train, n_test)`` by scikit-learn's rule: ``n_test = ceil(test_size * n_rows)``. Pure.

    An integer ``test_size`` is the number of test rows.  Both parts must be
    non-empty.
    """
    if isinstance(test_size, (bool, np.bool_)):
        raise TypeError("test_size must be a float in (0, 1) or a positive integer")
    if isinstance(test_size, Integral):
        n_test = int(test_size)
        if not 0 < n_test < n_rows:
            raise ValueError(
                f"test_size={n_test} rows must be between 1 and n_rows - 1 = {n_rows - 1}"
            )
    elif isinstance(test_size, Real):
        if not 0.0 < float(test_size) < 1.0:
            raise ValueError(
                f"test_size={test_size} must be in (0, 1) as a share of the rows"
            )
        n_test = math.ceil(float(test_size) * n_rows)
    else:
        raise TypeError(
            f"test_size must be a float in (0, 1) or a positive integer, got {test_size!r}"
        )
    n_train = n_rows - n_test
    if n_train < 1 or n_test < 1:
        raise ValueError(
            f"with n_rows={n_rows} and test_size={test_size}, the train or the test set would be empty"
        )
    return n_train, n_test


def fold_sizes(n_rows: int, n_folds: int) -> np.ndarray:
    """Rows per fold, as scikit-learn's ``KFold``: the first ``n_rows % n_folds`` get one more. Pure."""
    if (
        not isinstance(n_folds, Integral)
        or isinstance(n_folds, (bool, np.bool_))
        or n_folds < 2
    ):
        raise ValueError(
            f"the number of folds must be an integer of at least 2, got {n_folds!r}"
        )
    if n_folds > n_rows:
        raise ValueError(f"cannot have {n_folds} folds with only {n_rows} rows")
    sizes = np.full(n_folds, n_rows // n_folds, dtype=np.int64)
    sizes[: n_rows % n_folds] += 1
    return sizes


def _groups_by_rank(keys: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Group of each key when all keys, sorted, are cut into groups of ``sizes``. Pure."""
    groups = np.empty(keys.size, dtype=np.int64)
    groups[np.argsort(keys, kind="stable")] = np.repeat(np.arange(sizes.size), sizes)
    return groups


def global_test_mask(
    n_rows: int, *, test_size: float | int = 0.25, seed: int = 0
) -> np.ndarray:
    """The test mask of all rows (True = test), computed in one process. Pure.

    The reference for :func:`train_test_split_mask`: the ``n_test`` rows
    with the smallest keys.
    """
    _, n_test = split_sizes(n_rows, test_size)
    keys = row_hash(np.arange(n_rows), seed, _SPLIT_STREAM)
    return _groups_by_rank(keys, np.array([n_test, n_rows - n_test])) == 0


def global_fold_ids(n_rows: int, *, n_folds: int = 5, seed: int = 0) -> np.ndarray:
    """The fold (0 .. n_folds - 1) of every row, computed in one process. Pure.

    The reference for :func:`fold_ids`.
    """
    sizes = fold_sizes(n_rows, n_folds)
    return _groups_by_rank(row_hash(np.arange(n_rows), seed, _FOLD_STREAM), sizes)


def stratified_fold_sizes(class_counts: Sequence[int], n_folds: int) -> np.ndarray:
    """Rows of each class in each fold, as scikit-learn's ``StratifiedKFold`` allocates them. Pure.

    The rows sorted by class are dealt to the folds in turn: row ``j`` of
    that order goes to fold ``j mod n_folds``.  So each fold holds every
    class's rows to within one, and the folds' sizes are :func:`fold_sizes`'.
    Classes are in the order of ``class_counts`` (scikit-learn orders them
    by first appearance; mpitrain's are sorted).  Raises ``ValueError``, as
    scikit-learn does, if ``n_folds`` exceeds every class's count.

    Returns
    -------
    ndarray of int64, shape (n_folds, n_classes)
    """
    counts = np.asarray(class_counts, dtype=np.int64)
    fold_sizes(int(counts.sum()), n_folds)  # checks n_folds
    if (counts < n_folds).all():
        raise ValueError(
            f"n_splits={n_folds} cannot be greater than the number of members in each class."
        )
    starts = np.cumsum(counts) - counts
    f = np.arange(n_folds, dtype=np.int64)[:, None]
    # Positions j in [start, start + count) with j ≡ f (mod n_folds); // floors.
    return (starts + counts - 1 - f) // n_folds - (starts - 1 - f) // n_folds


def _warn_small_class(counts: np.ndarray, n_folds: int) -> None:
    """scikit-learn's warning when a class has fewer rows than folds. Local; alike on every rank."""
    if counts.min() < n_folds:
        warnings.warn(
            f"The least populated class in y has only {int(counts.min())} members, "
            f"which is less than n_splits={n_folds}.",
            UserWarning,
            stacklevel=3,
        )


def global_stratified_fold_ids(
    y: np.ndarray, *, n_folds: int = 5, seed: int = 0
) -> np.ndarray:
    """The stratified fold of every row, computed in one process. Pure.

    The reference for :func:`stratified_fold_ids`: the rows of each class,
    ordered by their key (:func:`row_hash` of the global row id, the
    stream of :func:`fold_ids`), are cut into that class's
    :func:`stratified_fold_sizes`.
    """
    classes, codes = np.unique(np.asarray(y), return_inverse=True)
    counts = np.bincount(codes, minlength=len(classes))
    sizes = stratified_fold_sizes(counts, n_folds)
    _warn_small_class(counts, n_folds)
    keys = row_hash(np.arange(len(codes)), seed, _FOLD_STREAM)
    folds = np.empty(len(codes), dtype=np.int64)
    for c in range(len(classes)):
        rows = np.flatnonzero(codes == c)
        folds[rows] = _groups_by_rank(keys[rows], sizes[:, c])
    return folds


def global_row_offset(
    n_local: int, row_offset: int | None = None, *, comm: Intracomm | None = None
) -> tuple[int, int]:
    """This rank's first global row id and the number of rows on all ranks.

    Collective over ``comm`` (one small ``allgather``).  Without
    ``row_offset``, the ranks' rows are taken to follow each other in rank
    order (as :func:`mpitrain.data.row_range` splits a file).  With it
    (given on every rank), the ranks' ranges must tile ``[0, n_rows)``
    exactly, in any order.

    Returns
    -------
    (int, int)
        ``(row_offset, n_rows)``.
    """
    comm = get_comm(comm)
    valid = (
        isinstance(n_local, Integral)
        and not isinstance(n_local, (bool, np.bool_))
        and n_local >= 0
    )
    # Exchanged before any check, so that a bad value on one rank fails on every rank.
    offset_ok = row_offset is None or (
        isinstance(row_offset, Integral) and row_offset >= 0
    )
    mine = (
        int(n_local) if valid else None,
        None if row_offset is None or not offset_ok else int(row_offset),
    )
    everyone = allgather_object((mine, offset_ok), comm)
    bad = [r for r, ((n, _), ok) in enumerate(everyone) if n is None or not ok]
    if bad:
        raise ValueError(
            "n_local and row_offset must be non-negative integers on every rank; "
            f"they are not on ranks {bad}"
        )
    everyone = [pair for pair, _ in everyone]
    counts = [n for n, _ in everyone]
    n_rows = sum(counts)
    given = [o is not None for _, o in everyone]
    if not any(given):
        return int(sum(counts[: comm.Get_rank()])), n_rows
    if not all(given):
        raise ValueError("row_offset must be given on every rank or on none")
    spans = sorted((o, o + n) for n, o in everyone if n > 0)
    position = 0
    for start, stop in spans:
        if start != position:
            raise ValueError(
                f"the ranks' rows (row_offset, row_offset + n_local) must tile 0..{n_rows} exactly; "
                f"got {[(o, o + n) for n, o in everyone]}"
            )
        position = stop
    return int(everyone[comm.Get_rank()][1]), n_rows


def _order_statistics(
    sorted_keys: np.ndarray, ranks: Sequence[int], n_rows: int, comm: Intracomm
) -> np.ndarray:
    """The ``k``-th smallest key over all ranks (0-based) for each ``k`` in ``ranks``.

    Collective over ``comm``.  Radix search: each round splits the interval
    known to hold each answer into 256 buckets by the next 8 bits of the
    key, counts the keys below each bucket edge on every rank (binary
    searches in the rank's sorted keys; one ``Allreduce`` of 255 int64 per
    answer) and keeps the bucket that holds the ``k``-th key.  Once an
    interval holds at most :data:`GATHER_KEYS` keys over all ranks, they
    are exchanged (one small ``allgather``) and the answer is picked out.
    Keys are uniform, so that takes ``ceil(log2(n_rows / GATHER_KEYS) /
    8)`` rounds: none below 2048 rows, about two up to 2**27 rows, at most eight.
    Exactly ``k`` keys are smaller than the result (keys are distinct).
    """
    n_targets = len(ranks)
    lows = [0] * n_targets  # each answer lies in [low, low + 2**width)
    widths = [64] * n_targets
    below = [0] * n_targets  # keys under low, over all ranks
    inside = [n_rows] * n_targets
    steps = [b for b in range(1, 1 << _RADIX_BITS)]
    while True:
        # Decided from reduced counts only: every rank takes the same path.
        active = [
            j for j in range(n_targets) if inside[j] > GATHER_KEYS and widths[j] > 0
        ]
        if not active:
            break
        for j in active:
            widths[j] -= _RADIX_BITS
        edges = np.array(
            [[lows[j] + b * (1 << widths[j]) for b in steps] for j in active],
            dtype=np.uint64,
        )
        counts = (
            np.searchsorted(sorted_keys, edges.ravel(), side="left")
            .astype(np.int64)
            .reshape(edges.shape)
        )
        allreduce_sum(counts, comm)
        for row, j in enumerate(active):
            k, c = int(ranks[j]), counts[row]
            # Edges with at most k keys below them lie at or under the k-th key.
            n_edges = int(np.searchsorted(c, k, side="right"))
            new_below = int(c[n_edges - 1]) if n_edges else below[j]
            new_above = (
                int(c[n_edges]) if n_edges < len(steps) else below[j] + inside[j]
            )
            lows[j] += n_edges * (1 << widths[j])
            below[j], inside[j] = new_below, new_above - new_below
    candidates = []
    for j in range(n_targets):
        start = int(np.searchsorted(sorted_keys, np.uint64(lows[j]), side="left"))
        high = lows[j] + (1 << widths[j])
        stop = (
            sorted_keys.size
            if high > _MASK64
            else int(np.searchsorted(sorted_keys, np.uint64(high), side="left"))
        )
        candidates.append(sorted_keys[start:stop])
    # At most GATHER_KEYS keys per answer over all ranks: small enough to pickle.
    everyone = allgather_object(candidates, comm)
    answers = np.empty(n_targets, dtype=np.uint64)
    for j in range(n_targets):
        pooled = np.sort(
            np.concatenate([rank_candidates[j] for rank_candidates in everyone])
        )
        answers[j] = pooled[int(ranks[j]) - below[j]]
    return answers


def _distributed_groups(
    n_local: int,
    row_offset: int | None,
    sizes_of: Any,
    stream: int,
    seed: int,
    comm: Intracomm,
) -> np.ndarray:
    """Group of each local row when all keys, sorted, are cut by ``sizes_of(n_rows)``. Collective."""
    offset, n_rows = global_row_offset(n_local, row_offset, comm=comm)
    sizes = sizes_of(n_rows)  # the same on every rank: raises everywhere or nowhere
    keys = row_hash(np.arange(offset, offset + n_local), seed, stream)
    boundaries = _order_statistics(np.sort(keys), np.cumsum(sizes)[:-1], n_rows, comm)
    return np.searchsorted(boundaries, keys, side="right").astype(np.int64)


def train_test_split_mask(
    n_local: int,
    row_offset: int | None = None,
    *,
    test_size: float | int = 0.25,
    seed: int = 0,
    comm: Intracomm | None = None,
) -> np.ndarray:
    """Which of this rank's rows are test rows (True), independently of the number of ranks.

    Collective over ``comm``: one ``allgather`` of the row counts, a few
    small ``Allreduce`` calls and one small ``allgather`` (the search for
    the test-set boundary, see :func:`_order_statistics`).
    Equal to ``global_test_mask(n_rows, ...)[row_offset : row_offset +
    n_local]``: the test set is the ``ceil(test_size * n_rows)`` rows (or
    ``test_size`` rows if an integer) with the smallest keys.

    Parameters
    ----------
    n_local : int
        Rows on this rank (possibly 0).
    row_offset : int, default=None
        Global id of this rank's first row; ``None``: the ranks' rows follow
        each other in rank order.
    test_size : float or int, default=0.25
    seed : int, default=0
    comm : mpi4py.MPI.Intracomm, default=None

    Returns
    -------
    ndarray of bool, shape (n_local,)
    """
    comm = get_comm(comm)
    groups = _distributed_groups(
        n_local,
        row_offset,
        lambda n: np.array(split_sizes(n, test_size)[::-1]),
        _SPLIT_STREAM,
        seed,
        comm,
    )
    return groups == 0


def fold_ids(
    n_local: int,
    row_offset: int | None = None,
    *,
    n_folds: int = 5,
    seed: int = 0,
    comm: Intracomm | None = None,
) -> np.ndarray:
    """The fold (0 .. n_folds - 1) of each of this rank's rows, independently of the number of ranks.

    Collective over ``comm``: one ``allgather``, a few small ``Allreduce``
    calls and one small ``allgather``.  Fold sizes are scikit-learn ``KFold``'s (the first
    ``n_rows % n_folds`` folds have one row more); fold ``f`` holds the rows
    whose keys rank between its boundaries.  Equal to
    ``global_fold_ids(n_rows, ...)[row_offset : row_offset + n_local]``.

    Returns
    -------
    ndarray of int64, shape (n_local,)
    """
    comm = get_comm(comm)
    return _distributed_groups(
        n_local, row_offset, lambda n: fold_sizes(n, n_folds), _FOLD_STREAM, seed, comm
    )


def stratified_fold_ids(
    y: Any,
    row_offset: int | None = None,
    *,
    n_folds: int = 5,
    seed: int = 0,
    comm: Intracomm | None = None,
) -> np.ndarray:
    """The stratified fold of each of this rank's rows, independently of the number of ranks.

    scikit-learn's ``StratifiedKFold`` allocation (:func:`stratified_fold_sizes`:
    each fold holds every class's rows to within one, and the folds have
    ``KFold``'s sizes); within a class, rows go to folds by the order of
    their keys, as in :func:`fold_ids`, so the folds are the same at any
    rank count.  Equal to ``global_stratified_fold_ids(y_all, ...)[row_offset
    : row_offset + n_local]``.  Warns, as scikit-learn does and alike on
    every rank, when a class has fewer rows than folds.

    Collective over ``comm``: the row counts' and the labels' ``allgather``
    (:func:`mpitrain.utils.multiclass.agree_classes`), then one search per
    class, in class order, on every rank (:func:`_order_statistics`: a few
    small ``Allreduce`` calls and one small ``allgather`` each).

    Parameters
    ----------
    y : array-like of shape (n_local,)
        This rank's labels (possibly none).
    row_offset : int, default=None
        As :func:`fold_ids`.
    n_folds : int, default=5
    seed : int, default=0
    comm : mpi4py.MPI.Intracomm, default=None

    Returns
    -------
    ndarray of int64, shape (n_local,)

    Raises
    ------
    ValueError
        The same on every rank: fewer than two classes over all ranks, or
        ``n_folds`` above every class's count or the number of rows.
    """
    comm = get_comm(comm)
    y = np.asarray(y)
    offset, _ = global_row_offset(len(y), row_offset, comm=comm)
    agreed = agree_classes(y, None, comm, warn=False)
    counts = agreed.counts
    sizes = stratified_fold_sizes(counts, n_folds)  # the same on every rank
    _warn_small_class(counts, n_folds)
    keys = row_hash(np.arange(offset, offset + len(y)), seed, _FOLD_STREAM)
    codes = agreed.index(y)
    by_class = np.argsort(codes, kind="stable")
    edges = np.searchsorted(codes[by_class], np.arange(len(counts) + 1))
    folds = np.empty(len(y), dtype=np.int64)
    for c, n_class in enumerate(counts):  # every rank, every class, in order
        rows = by_class[edges[c] : edges[c + 1]]
        cuts = np.cumsum(sizes[:, c])[:-1]
        # An empty first fold is a cut before every key (0); cuts after every
        # key (empty last folds) place no row, so only those inside are searched.
        inside = cuts[(cuts > 0) & (cuts < n_class)]
        boundaries = np.concatenate(
            [
                np.zeros(np.count_nonzero(cuts == 0), dtype=np.uint64),
                _order_statistics(np.sort(keys[rows]), inside, int(n_class), comm),
            ]
        )
        folds[rows] = np.searchsorted(boundaries, keys[rows], side="right")
    return folds


def train_test_split(
    *arrays: Any,
    test_size: float | int = 0.25,
    seed: int = 0,
    row_offset: int | None = None,
    comm: Intracomm | None = None,
) -> list[Any]:
    """Split this rank's rows of each array into train and test parts, like scikit-learn's.

    Collective over ``comm`` (see :func:`train_test_split_mask`).  Rows keep
    their order within each part.  ``None`` entries (an absent
    ``sample_weight``) give ``None, None``.

    Returns
    -------
    list
        ``[a_train, a_test, b_train, b_test, ...]``.
    """
    comm = get_comm(comm)
    present = [a for a in arrays if a is not None]
    # Compared over the ranks: a test_size set apart on one rank would give
    # every rank a different split of the same rows.
    agree_values(
        lambda: {
            "arrays": len(arrays),
            "test_size": canonical_value(test_size),
            "seed": canonical_value(seed),
            "row_offset": "given" if row_offset is not None else None,
        },
        comm,
        what="checking the arguments of train_test_split",
        differ="the ranks called train_test_split with different arguments",
    )
    if not present:
        raise ValueError("train_test_split needs at least one array")
    n_local = present[0].shape[0]
    with collective_check(comm, "splitting the rows"):
        for a in present:
            if a.shape[0] != n_local:
                raise ValueError(
                    f"the arrays have different numbers of rows: {[p.shape[0] for p in present]}"
                )
    test = train_test_split_mask(
        n_local, row_offset, test_size=test_size, seed=seed, comm=comm
    )
    out: list[Any] = []
    for a in arrays:
        out.extend([None, None] if a is None else [a[~test], a[test]])
    return out


# ----------------------------------------------------------------------------
# Cross-validation


class _FoldScores:
    """The held-out fold's predictions and metrics, each computed once. Collective when computed."""

    def __init__(
        self,
        estimator: Any,
        X: Any,
        y: np.ndarray,
        w: np.ndarray | None,
        comm: Intracomm,
    ):
        self.estimator, self.X, self.y, self.w, self.comm = estimator, X, y, w, comm
        self._cache: dict[str, Any] = {}

    def _local(self, method: str) -> np.ndarray:
        with collective_check(self.comm, f"computing {method} on the held-out fold"):
            return predict_local(self.estimator, self.X, method)

    def predictions(self) -> np.ndarray:
        if "pred" not in self._cache:
            self._cache["pred"] = self._local("predict")
        return self._cache["pred"]

    def regression(self) -> dict:
        if "regression" not in self._cache:
            self._cache["regression"] = regression_scores(
                self.y, self.predictions(), self.w, comm=self.comm
            )
        return self._cache["regression"]

    def classification(self) -> dict:
        if "classification" not in self._cache:
            self._cache["classification"] = classification_scores(
                self.y, self.predictions(), sample_weight=self.w, comm=self.comm
            )
        return self._cache["classification"]

    def classes(self) -> np.ndarray:
        est = self.estimator
        final = est.steps[-1][1] if hasattr(est, "steps") else est
        return np.asarray(getattr(est, "classes_", getattr(final, "classes_", None)))

    def roc_auc(self) -> float:
        classes = self.classes()
        if classes.ndim != 1 or len(classes) != 2:
            raise ValueError(
                "scoring 'roc_auc' needs a binary classifier; use 'roc_auc_ovr' for more classes"
            )
        # scikit-learn's roc_auc scorer: the decision function if there is one, else probabilities.
        method = (
            "decision_function"
            if hasattr(self.estimator, "decision_function")
            else "predict_proba"
        )
        scores = self._local(method)
        scores = scores[:, 1] if scores.ndim == 2 else scores
        return roc_auc(
            self.y, scores, pos_label=classes[1], sample_weight=self.w, comm=self.comm
        )

    def roc_auc_ovr(self) -> float:
        if not hasattr(self.estimator, "predict_proba"):
            raise ValueError(
                "scoring 'roc_auc_ovr' needs a classifier with predict_proba"
            )
        return roc_auc_ovr(
            self.y,
            self._local("predict_proba"),
            classes=self.classes(),
            sample_weight=self.w,
            comm=self.comm,
        )["auc"]


def _neg_rmse(cache: _FoldScores) -> float:
    return -float(np.sqrt(cache.regression()["mse"]))


#: Named scorings of :func:`cross_validate`, with scikit-learn's names and signs (greater is better).
SCORINGS = {
    "r2": lambda c: c.regression()["r2"],
    "neg_mean_squared_error": lambda c: -c.regression()["mse"],
    "neg_root_mean_squared_error": _neg_rmse,
    "neg_mean_absolute_error": lambda c: -c.regression()["mae"],
    "accuracy": lambda c: c.classification()["accuracy"],
    "f1_macro": lambda c: c.classification()["macro"]["f1"],
    "f1_weighted": lambda c: c.classification()["weighted"]["f1"],
    "f1_micro": lambda c: c.classification()["micro"]["f1"],
    "precision_macro": lambda c: c.classification()["macro"]["precision"],
    "precision_weighted": lambda c: c.classification()["weighted"]["precision"],
    "recall_macro": lambda c: c.classification()["macro"]["recall"],
    "recall_weighted": lambda c: c.classification()["weighted"]["recall"],
    "roc_auc": lambda c: c.roc_auc(),
    "roc_auc_ovr": lambda c: c.roc_auc_ovr(),
}


def _prepare(estimator: Any, comm: Intracomm) -> Any:
    """A fresh clone of ``estimator`` with ``comm`` on every mpitrain step. Local."""
    from sklearn.base import clone

    from mpitrain.preprocessing import check_pipeline

    # A scikit-learn step that learns from rows would fit each rank's rows differently.
    check_pipeline(estimator)
    params = estimator.get_params(deep=True)
    names = [name for name in params if name == "comm" or name.endswith("__comm")]
    if not names:
        raise TypeError(
            f"{type(estimator).__name__} has no comm parameter: cross_validate needs an mpitrain "
            "estimator or a pipeline of them"
        )
    # clone deep-copies plain parameters, and mpi4py copies only COMM_WORLD and
    # COMM_SELF: clone without the communicators, then give them back.
    estimator.set_params(**dict.fromkeys(names))
    try:
        fresh = clone(estimator)
    finally:
        estimator.set_params(**{name: params[name] for name in names})
    return fresh.set_params(**dict.fromkeys(names, comm))


def _fit_params(estimator: Any, sample_weight: np.ndarray | None) -> dict:
    """Route ``sample_weight`` to ``fit``: directly, or to every pipeline step that takes it. Local."""
    if sample_weight is None:
        return {}
    if hasattr(estimator, "steps"):
        return {
            f"{name}__sample_weight": sample_weight
            for name, step in estimator.steps
            if step not in (None, "passthrough")
            and "sample_weight" in inspect.signature(step.fit).parameters
        }
    return {"sample_weight": sample_weight}


def _scoring_names(
    estimator: Any, scoring: str | Sequence[str] | None
) -> tuple[list[str], bool]:
    """The scoring names to use, and whether the result uses scikit-learn's single ``test_score`` key."""
    from sklearn.base import is_classifier

    if scoring is None:
        return ["accuracy" if is_classifier(estimator) else "r2"], True
    names, single = (
        ([scoring], True) if isinstance(scoring, str) else (list(scoring), False)
    )
    unknown = [n for n in names if n not in SCORINGS]
    if unknown or not names:
        raise ValueError(
            f"unknown scoring {unknown or names}; choose from {sorted(SCORINGS)}"
        )
    return names, single


def _cross_validate_folds(
    estimator: Any,
    X: Any,
    y: np.ndarray,
    *,
    cv: int | np.ndarray = 5,
    seed: int = 0,
    sample_weight: np.ndarray | None = None,
    scoring: str | Sequence[str] | None = None,
    row_offset: int | None = None,
    return_estimator: bool = False,
    error_score: Any = np.nan,
    comm: Intracomm | None = None,
) -> dict[str, Any]:
    """:func:`cross_validate` without its warnings: failures come back in ``fit_errors`` and ``score_errors``.

    Collective over ``comm``.  For a caller that reports failures itself
    (the search, over all its candidates); parameters and result as
    :func:`cross_validate`'s.
    """
    if comm is None:  # the estimator's own communicator, if it was given one
        comm = next(
            (
                value
                for name, value in estimator.get_params(deep=True).items()
                if (name == "comm" or name.endswith("__comm")) and value is not None
            ),
            None,
        )
    comm = get_comm(comm)
    prepared: dict[str, Any] = {}

    def arguments() -> dict[str, Any]:
        prepared["names"] = _scoring_names(estimator, scoring)
        prepared["template"] = _prepare(estimator, comm)
        check_error_score(error_score)
        shape = np.shape(X)
        return {
            "cv": int(cv) if isinstance(cv, Integral) else "fold ids",
            "seed": canonical_value(seed),
            "scoring": canonical_value(scoring),
            "error_score": canonical_value(error_score),
            "return_estimator": bool(return_estimator),
            "row_offset": "given" if row_offset is not None else None,
            "features": shape[1] if len(shape) == 2 else f"{len(shape)}-D X",
            **{
                f"estimator's {name}": value
                for name, value in estimator_parameters(estimator).items()
            },
        }

    # Checked on every rank and compared: an argument refused or set on some
    # ranks only would leave the others alone in the folds' collectives.
    agree_values(
        arguments,
        comm,
        what="checking the arguments of cross_validate",
        differ="the ranks called cross_validate with different arguments",
    )
    (names, single), template = prepared["names"], prepared["template"]
    n_local = int(X.shape[0])
    with collective_check(comm, "checking the cross-validation rows"):
        y = np.asarray(y)
        if y.shape[0] != n_local:
            raise ValueError(f"X has {n_local} rows but y has {y.shape[0]}")
        if sample_weight is not None:
            sample_weight = np.asarray(sample_weight, dtype=np.float64)
            if sample_weight.shape != (n_local,):
                raise ValueError(
                    f"sample_weight must have shape ({n_local},), got {sample_weight.shape}"
                )
        given = None
        if not isinstance(cv, Integral):
            given = np.asarray(cv)
            if (
                given.shape != (n_local,)
                or given.dtype.kind not in "iu"
                or (given.size and given.min() < 0)
            ):
                raise ValueError(
                    f"cv must be a number of folds or {n_local} non-negative integer fold ids"
                )
    if given is None:
        from sklearn.base import is_classifier

        # As scikit-learn's check_cv: StratifiedKFold's allocation for classifiers.
        if is_classifier(estimator):
            folds = stratified_fold_ids(y, row_offset, n_folds=cv, seed=seed, comm=comm)
        else:
            folds = fold_ids(n_local, row_offset, n_folds=cv, seed=seed, comm=comm)
        n_folds = int(cv)
    else:
        folds = given.astype(np.int64)
        _, highest = allreduce_minmax(
            np.array([folds.max() if folds.size else -1]), comm
        )
        n_folds = int(highest[0]) + 1
        if n_folds < 2:
            raise ValueError(f"cv needs at least 2 folds, got {n_folds}")
    n_test = allreduce_sum(np.bincount(folds, minlength=n_folds).astype(np.int64), comm)
    n_rows = int(n_test.sum())

    scores = {name: np.empty(n_folds) for name in names}
    times = np.zeros(2 * n_folds)  # fit times, then score times
    fitted: list[Any] = []
    fit_errors: list[str | None] = [None] * n_folds
    score_errors: list[dict[str, str]] = [{} for _ in range(n_folds)]
    for fold in range(n_folds):
        test = folds == fold
        train = ~test
        model = _prepare(template, comm)
        w_train = None if sample_weight is None else sample_weight[train]
        tic = time.perf_counter()
        try:
            model.fit(X[train], y[train], **_fit_params(model, w_train))
        except Exception as exc:
            # mpitrain's fits raise on every rank alike, so every rank
            # goes on to the next fold together.
            if error_score == "raise":
                raise
            times[fold] = time.perf_counter() - tic
            fit_errors[fold] = _error_text(exc)
            for name in names:
                scores[name][fold] = float(error_score)
            if return_estimator:
                fitted.append(None)
            continue
        times[fold] = time.perf_counter() - tic
        tic = time.perf_counter()
        cache = _FoldScores(
            model,
            X[test],
            y[test],
            None if sample_weight is None else sample_weight[test],
            comm,
        )
        for name in names:
            # Each metric's failure (from agreed predictions and reductions)
            # is the same on every rank; it alone gets error_score.
            try:
                scores[name][fold] = SCORINGS[name](cache)
            except Exception as exc:
                if error_score == "raise":
                    raise
                scores[name][fold] = float(error_score)
                score_errors[fold][name] = _error_text(exc)
        times[n_folds + fold] = time.perf_counter() - tic
        if return_estimator:
            fitted.append(getattr(model, "estimator_", model))
    _, slowest = allreduce_minmax(times, comm)

    result: dict[str, Any] = {
        "fit_time": slowest[:n_folds],
        "score_time": slowest[n_folds:],
    }
    if single:
        result["test_score"] = scores[names[0]]
    else:
        result.update({f"test_{name}": values for name, values in scores.items()})
    result.update(
        scoring=names,
        mean={name: float(np.mean(v)) for name, v in scores.items()},
        std={name: float(np.std(v)) for name, v in scores.items()},
        n_folds=n_folds,
        n_train=n_rows - n_test,
        n_test=n_test,
        fit_errors=fit_errors,
        score_errors=score_errors,
    )
    if return_estimator:
        result["estimator"] = fitted
    return result


def cross_validate(
    estimator: Any,
    X: Any,
    y: np.ndarray,
    *,
    cv: int | np.ndarray = 5,
    seed: int = 0,
    sample_weight: np.ndarray | None = None,
    scoring: str | Sequence[str] | None = None,
    row_offset: int | None = None,
    return_estimator: bool = False,
    error_score: Any = np.nan,
    comm: Intracomm | None = None,
) -> dict[str, Any]:
    """K-fold cross-validation of an mpitrain estimator on rows split across ranks.

    Collective over ``comm``.  For each fold, a clone of ``estimator`` (with
    ``comm`` set on it, or on every mpitrain step of a pipeline) is fitted
    on every rank's rows outside the fold, exactly as one fit on those rows
    of all ranks, and scored on the rows in the fold with the exact metrics
    of :mod:`mpitrain.metrics`.  Folds come from :func:`stratified_fold_ids`
    for a classifier (scikit-learn's ``StratifiedKFold`` allocation, as its
    ``cross_validate`` uses) and from :func:`fold_ids` otherwise, so they do
    not depend on the number of ranks.

    Parameters
    ----------
    estimator : mpitrain estimator or pipeline
        Not fitted or modified; a pipeline must pass
        :func:`mpitrain.preprocessing.check_pipeline`.
    X : array-like of shape (n_local_rows, n_features)
    y : array-like of shape (n_local_rows,)
    cv : int or array-like of shape (n_local_rows,), default=5
        The number of folds (at least 2), or this rank's fold of each row
        (integers 0 .. K - 1; K is the largest over all ranks plus one).
    seed : int, default=0
        Seed of the fold assignment.
    sample_weight : array-like of shape (n_local_rows,), default=None
        Passed to ``fit`` (to every pipeline step that accepts it) and used
        by the scores.
    scoring : str or list of str, default=None
        A name in :data:`SCORINGS` (scikit-learn's names and signs, greater
        is better), or a list of them; ``None``: ``"accuracy"`` for
        classifiers, ``"r2"`` for others.
    row_offset : int, default=None
        Global id of this rank's first row (see :func:`global_row_offset`).
    return_estimator : bool, default=False
        Also return each fold's fitted model (``estimator_`` where the
        estimator has one: a plain scikit-learn object; ``None`` for a
        fold whose fit failed).
    error_score : 'raise' or float, default=nan
        As scikit-learn's: the score of a fold whose fit fails (with its
        ``FitFailedWarning``, or its ``ValueError`` when every fold fails),
        and of a metric that cannot be scored for a fitted fold model (its
        "Scoring failed" warning); ``'raise'``: the error is raised.  A
        data-parallel fit agrees its failure over the ranks, so every rank
        records it alike.
    comm : mpi4py.MPI.Intracomm, default=None
        ``None``: the ``comm`` of the estimator (or of its first mpitrain
        step that has one), else ``COMM_WORLD``.

    Returns
    -------
    dict
        As scikit-learn's ``cross_validate``: ``test_score`` (K,) for a
        single scoring or ``test_<name>`` (K,) per name for a list;
        ``fit_time`` and ``score_time`` (K,), seconds, the largest over the
        ranks; plus ``scoring`` (list of names), ``mean`` and ``std``
        (dicts by name; ``std`` with ``ddof=0``), ``n_folds``, ``n_train``
        and ``n_test`` (K,) rows in all ranks, ``fit_errors`` (K,: the
        traceback of a failed fit, else ``None``), ``score_errors`` (K
        dicts: metric name to the traceback of its scoring failure), and
        ``estimator`` (list) if asked.  The same on every rank.
    """
    result = _cross_validate_folds(
        estimator,
        X,
        y,
        cv=cv,
        seed=seed,
        sample_weight=sample_weight,
        scoring=scoring,
        row_offset=row_offset,
        return_estimator=return_estimator,
        error_score=error_score,
        comm=comm,
    )
    # scikit-learn's reports, from the same table on every rank.
    errors = [e for e in result["fit_errors"] if e is not None]
    warn_fit_failures(errors, result["n_folds"], error_score)
    warn_scoring_failures(result["score_errors"], error_score)
    return result


def check_error_score(error_score: Any) -> None:
    """Refuse an ``error_score`` that is neither ``'raise'`` nor a number. Pure."""
    if error_score != "raise" and (
        not isinstance(error_score, Real) or isinstance(error_score, bool)
    ):
        raise ValueError(
            f"error_score must be 'raise' or a number, got {error_score!r}"
        )


def _error_text(exc: BaseException) -> str:
    """The failure as scikit-learn's reports show it: the formatted traceback. Pure."""
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


def warn_scoring_failures(
    per_fit: Iterable[Mapping[str, str]], error_score: Any
) -> None:
    """scikit-learn's "Scoring failed" warning for each metric a fitted model could not give. Local.

    ``per_fit`` holds, per fit in the table's order, the metric names that
    failed with their error texts; call it with the same table on every
    rank so that every rank warns alike.
    """
    for failed in per_fit:
        for text in failed.values():
            warnings.warn(
                "Scoring failed. The score on this train-test partition for "
                f"these parameters will be set to {error_score}. Details: \n{text}",
                UserWarning,
                stacklevel=3,
            )


def warn_fit_failures(
    messages: Iterable[str],
    n_fits: int,
    error_score: Any,
    cause: BaseException | None = None,
) -> None:
    """scikit-learn's search report of failed fits: a FitFailedWarning, or its ValueError when all failed. Local.

    ``messages`` holds one error text per failed (candidate, fold); call it
    with the same table on every rank so that every rank warns or raises
    alike.  ``cause`` (this rank's own exception, if any) is chained.
    """
    from sklearn.exceptions import FitFailedWarning

    messages = list(messages)
    if not messages:
        return
    # One block per error, also where ranks ordered a set's items differently.
    shown: dict[str, str] = {}
    counts = Counter(shown.setdefault(same_text_key(m), m) for m in messages)
    summary = "\n".join(
        f"{'-' * 80}\n{n} fits failed with the following error:\n{message}"
        for message, n in counts.items()
    )
    if len(messages) == n_fits:
        raise ValueError(
            f"\nAll the {n_fits} fits failed.\nIt is very likely that your model is "
            "misconfigured.\nYou can try to debug the error by setting error_score='raise'.\n\n"
            f"Below are more details about the failures:\n{summary}"
        ) from cause
    warnings.warn(
        f"\n{len(messages)} fits failed out of a total of {n_fits}.\nThe score on these "
        f"train-test partitions for these parameters will be set to {error_score}.\n"
        "If these failures are not expected, you can try to debug them by setting "
        f"error_score='raise'.\n\nBelow are more details about the failures:\n{summary}",
        FitFailedWarning,
        stacklevel=4,
    )
