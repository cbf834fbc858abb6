"""Evaluation metrics over rows split across ranks, exact by reduction.

Every function here is collective: each rank passes its own rows (possibly
none) and every rank gets the same result, equal to scikit-learn's metric on
all ranks' rows together.

* Regression scores (R², MSE, MAE) reduce a few sums.
* Classification scores reduce one confusion matrix of counts (or of summed
  sample weights) over an agreed class list; accuracy, precision, recall and
  F1 per class and averaged follow from it exactly.
* ROC AUC is exact, not binned: each rank compresses its scores to their
  distinct values with the positive and negative weight at each, rank 0
  merges these (one ``Gatherv``, or one per chunk of at most a million
  distinct scores, highest first, so rank 0's memory stays bounded),
  computes the curve and its trapezoidal area as scikit-learn does (tied
  scores form one step, i.e. count half), and broadcasts the area and a
  thinned curve.
* Plots are drawn from reduced histograms over global ranges, never from
  gathered rows.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from mpitrain.comm import (
    allgather_object,
    allreduce_identical,
    allreduce_minmax,
    allreduce_sum,
    bcast_object,
    collective_check,
    get_comm,
)
from mpitrain.stats import merge_on_root
from mpitrain.utils.multiclass import union_labels

if TYPE_CHECKING:  # pragma: no cover
    from mpi4py.MPI import Intracomm

__all__ = [
    "ROC_MAX_POINTS",
    "regression_scores",
    "accuracy",
    "regression_histograms",
    "agree_labels",
    "classification_scores",
    "roc_curve",
    "roc_auc",
    "roc_auc_ovr",
    "binary_score_histograms",
    "predict_local",
    "evaluate_estimator",
]


#: Largest number of points of a returned ROC curve (the AUC always uses all).
ROC_MAX_POINTS = 1000


# ----------------------------------------------------------------------------
# Regression


def regression_scores(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    sample_weight: np.ndarray | None = None,
    comm: Intracomm | None = None,
) -> dict[str, float]:
    """R², mean squared error and mean absolute error of all ranks' rows.

    Collective over ``comm``: two small reductions (the global mean first,
    then sums of squares about it, so the total variance does not cancel),
    each bit-identical on every rank.  Equal to scikit-learn's ``r2_score``,
    ``mean_squared_error`` and ``mean_absolute_error`` on the concatenated
    rows; ``nan`` for all three if the ranks hold no weight at all.
    """
    comm = get_comm(comm)
    y_true = np.asarray(y_true, dtype=np.float64).ravel()
    y_pred = np.asarray(y_pred, dtype=np.float64).ravel()
    w = (
        np.ones_like(y_true)
        if sample_weight is None
        else np.asarray(sample_weight, dtype=np.float64)
    )
    first = allreduce_identical(
        np.array([w.sum(), w @ y_true, float(y_true.size)]), comm
    )
    weight, n_rows = first[0], first[2]
    mean = first[1] / weight if weight > 0 else 0.0
    resid = y_true - y_pred
    second = allreduce_identical(
        np.array([w @ (y_true - mean) ** 2, w @ resid**2, w @ np.abs(resid)]), comm
    )
    total, rss, abs_sum = second
    if weight <= 0:
        return {"r2": float("nan"), "mse": float("nan"), "mae": float("nan")}
    if n_rows < 2:
        # As scikit-learn's r2_score, on every rank alike (all know the count).
        from sklearn.exceptions import UndefinedMetricWarning

        warnings.warn(
            "R^2 score is not well-defined with less than two samples.",
            UndefinedMetricWarning,
            stacklevel=2,
        )
        r2 = float("nan")
    else:
        # scikit-learn's convention for a constant target: 1 if perfect, else 0.
        r2 = 1.0 - rss / total if total > 0 else (1.0 if rss == 0 else 0.0)
    return {"r2": float(r2), "mse": float(rss / weight), "mae": float(abs_sum / weight)}


def accuracy(
    y_true: np.ndarray, y_pred: np.ndarray, comm: Intracomm | None = None
) -> float:
    """Share of all ranks' rows predicted correctly. Collective over ``comm`` (one ``Allreduce``)."""
    comm = get_comm(comm)
    counts = allreduce_sum(
        np.array(
            [np.sum(np.asarray(y_true) == np.asarray(y_pred)), len(y_true)],
            dtype=np.int64,
        ),
        comm,
    )
    return float(counts[0] / counts[1]) if counts[1] else float("nan")


def _as_column(values: Any, name: str) -> np.ndarray:
    """A 1-D array from a 1-D array or a single column. Local."""
    values = np.asarray(values)
    if values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    if values.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {values.shape}")
    return values


def _check_rows(
    y_true: Any,
    other: Any,
    sample_weight: Any,
    other_name: str,
    *,
    finite: tuple[str, ...] = (),
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """This rank's targets, predictions or scores and weights, checked. Local.

    ``other`` may be 2-D (per-class scores) when ``other_name`` says so.
    """
    y_true = _as_column(y_true, "y_true")
    other = np.asarray(other)
    if other_name != "per-class scores":
        other = _as_column(other, other_name)
    if other.shape[0] != y_true.shape[0]:
        raise ValueError(
            f"y_true has {y_true.shape[0]} rows but {other_name} has {other.shape[0]}"
        )
    if sample_weight is not None:
        sample_weight = _as_column(sample_weight, "sample_weight").astype(
            np.float64, copy=False
        )
        if sample_weight.shape[0] != y_true.shape[0]:
            raise ValueError(
                f"y_true has {y_true.shape[0]} rows but sample_weight has {sample_weight.shape[0]}"
            )
        if not np.isfinite(sample_weight).all():
            raise ValueError("sample_weight contains NaN or infinity")
    for name, values in (
        ("y_true", y_true),
        (other_name, other),
        ("sample_weight", sample_weight),
    ):
        if name in finite and values is not None:
            if values.dtype.kind not in "biuf":
                raise ValueError(f"{name} must be numeric, got dtype {values.dtype}")
            if not np.isfinite(values).all():
                raise ValueError(f"{name} contains NaN or infinity")
    return y_true, other, sample_weight


def regression_histograms(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    *,
    bins: int = 64,
    sample_weight: np.ndarray | None = None,
    comm: Intracomm | None = None,
) -> dict[str, Any]:
    """Histograms for regression plots, over global ranges, reduced across ranks.

    Collective over ``comm``: one agreement on the input, one ``Allreduce``
    of the ranges (minima travel negated) and one reduction of all the
    histograms together.  No rows leave their rank; the result is the same
    on every rank and equal to numpy's ``histogram2d``/``histogram`` on all
    rows with the returned edges.

    Parameters
    ----------
    y_true, y_pred : array-like of shape (n_local_rows,)
        Finite actual and predicted values.
    bins : int, default=64
        Bins per axis.
    sample_weight : array-like of shape (n_local_rows,), default=None
        Row weights; the histograms then hold summed weights.
    comm : mpi4py.MPI.Intracomm, default=None

    Returns
    -------
    dict
        ``edges`` (bins + 1,): shared by actual and predicted values, from
        the global minimum to maximum over both (so ``y = x`` is the
        diagonal of the plot); ``joint`` (bins, bins): rows with the actual
        value in bin i and the prediction in bin j; ``residual_edges``
        (bins + 1,) over the global range of ``y_true - y_pred``;
        ``residual`` (bins,): the residual histogram;
        ``residual_vs_predicted`` (bins, bins): prediction bin i, residual
        bin j; ``n_rows`` (int) and ``total_weight`` (float).  Histograms
        are int64 counts without weights, float64 sums of weights with.
        A degenerate range ``[a, a]`` becomes ``[a - 0.5, a + 0.5]`` as in
        numpy.
    """
    comm = get_comm(comm)
    if not isinstance(bins, (int, np.integer)) or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}")
    with collective_check(comm, "checking the regression rows"):
        y_true, y_pred, w = _check_rows(
            y_true, y_pred, sample_weight, "y_pred", finite=("y_true", "y_pred")
        )
        y_true = y_true.astype(np.float64, copy=False)
        y_pred = y_pred.astype(np.float64, copy=False)
    resid = y_true - y_pred
    if y_true.size:
        local = [
            min(y_true.min(), y_pred.min()),
            resid.min(),
            max(y_true.max(), y_pred.max()),
            resid.max(),
        ]
    else:  # a rank without rows must not narrow the range
        local = [np.inf, np.inf, -np.inf, -np.inf]
    lows, highs = allreduce_minmax(np.array(local, dtype=np.float64), comm)
    edges = _uniform_edges(lows[0], highs[2], bins)
    residual_edges = _uniform_edges(lows[1], highs[3], bins)
    weighted = sample_weight is not None
    joint = np.histogram2d(y_true, y_pred, bins=[edges, edges], weights=w)[0]
    vs_pred = np.histogram2d(y_pred, resid, bins=[edges, residual_edges], weights=w)[0]
    residual = np.histogram(resid, bins=residual_edges, weights=w)[0]
    totals = [y_true.size, y_true.size if w is None else w.sum()]
    if weighted:
        buf = allreduce_identical(
            np.concatenate([joint.ravel(), vs_pred.ravel(), residual, totals]), comm
        )
    else:  # counts are integers: an exact integer sum, identical everywhere
        buf = allreduce_sum(
            np.concatenate([joint.ravel(), vs_pred.ravel(), residual, totals]).astype(
                np.int64
            ),
            comm,
        )
    k = bins * bins
    return {
        "edges": edges,
        "joint": buf[:k].reshape(bins, bins),
        "residual_edges": residual_edges,
        "residual": buf[2 * k : 2 * k + bins],
        "residual_vs_predicted": buf[k : 2 * k].reshape(bins, bins),
        "n_rows": int(buf[-2]),
        "total_weight": float(buf[-1]),
    }


def _uniform_edges(low: float, high: float, bins: int) -> np.ndarray:
    """``bins + 1`` equal-width edges over ``[low, high]``, numpy's way. Pure."""
    if not np.isfinite(low):  # no rows anywhere: numpy's default range
        low, high = 0.0, 1.0
    if low == high:
        low, high = low - 0.5, high + 0.5
    return np.linspace(low, high, bins + 1)


# ----------------------------------------------------------------------------
# Classification


def _local_labels(*arrays: np.ndarray) -> np.ndarray:
    """The distinct labels of this rank's arrays (empty if it has no rows). Local."""
    present = [a for a in arrays if a.size]
    if not present:
        return np.zeros(0)
    return np.unique(np.concatenate(present) if len(present) > 1 else present[0])


def _union_labels(gathered: Sequence[np.ndarray]) -> np.ndarray:
    """The sorted union of every rank's class labels; the same error everywhere. Pure.

    :func:`mpitrain.utils.multiclass.union_labels`, which metrics also
    refuse when the labels are continuous values.
    """
    classes = union_labels(list(gathered))
    if classes.dtype.kind == "f" and not np.array_equal(classes, np.round(classes)):
        raise ValueError(
            "classification metrics need class labels, but the values are continuous "
            f"(e.g. {classes[classes != np.round(classes)][0]!r})"
        )
    return classes


def agree_labels(*arrays: np.ndarray, comm: Intracomm | None = None) -> np.ndarray:
    """The sorted union of the labels in every rank's ``arrays``.

    Collective over ``comm`` (one small pickled ``allgather`` of each rank's
    distinct labels).  Ranks without rows contribute nothing, so their
    arrays' dtype does not matter.  Labels may be numbers or strings, not a
    mix.
    """
    comm = get_comm(comm)
    local = _local_labels(*[np.asarray(a).ravel() for a in arrays])
    return _union_labels(allgather_object(local, comm))


def _label_index(values: np.ndarray, index: dict) -> np.ndarray:
    """Positions of ``values`` in the agreed label list (via their distinct values). Local."""
    if values.size == 0:
        return np.zeros(0, dtype=np.int64)
    distinct, inverse = np.unique(values, return_inverse=True)
    return np.array([index[v] for v in distinct.tolist()], dtype=np.int64)[
        inverse.ravel()
    ]


def _divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """``numerator / denominator`` with 0 where the denominator is 0 (``zero_division=0``). Pure."""
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    return np.divide(
        numerator, denominator, out=np.zeros_like(numerator), where=denominator != 0
    )


def classification_scores(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    *,
    labels: Sequence | None = None,
    sample_weight: np.ndarray | None = None,
    comm: Intracomm | None = None,
) -> dict[str, Any]:
    """Confusion matrix, accuracy, and precision, recall and F1 per class, of all ranks' rows.

    Collective over ``comm``: one agreement on the input, one small
    ``allgather`` of each rank's distinct labels, and one reduction of the
    confusion matrix (integer counts, or summed weights made bit-identical
    on every rank).  Equal to scikit-learn's ``confusion_matrix``,
    ``accuracy_score`` and ``precision_recall_fscore_support`` with
    ``zero_division=0`` on all rows, including with ``labels`` (counts are
    taken over every label present, then restricted to ``labels``).

    Parameters
    ----------
    y_true, y_pred : array-like of shape (n_local_rows,)
        Class labels: integers or strings.  A rank may lack classes or rows.
    labels : sequence, default=None
        The labels to report, in this order; ``None`` means the sorted union
        of the labels in ``y_true`` and ``y_pred`` on all ranks.
    sample_weight : array-like of shape (n_local_rows,), default=None
    comm : mpi4py.MPI.Intracomm, default=None

    Returns
    -------
    dict
        ``labels`` (L,); ``confusion_matrix`` (L, L), row = true label,
        column = predicted, int64 unless ``sample_weight`` has a
        non-integer dtype; ``accuracy`` (over all rows, whatever
        ``labels``); ``precision``, ``recall``, ``f1``, ``support`` (L,)
        float64; ``macro``, ``weighted`` and ``micro``: dicts of
        ``precision``, ``recall``, ``f1``; ``n_rows`` (int) and
        ``total_weight`` (float).  ``accuracy`` is ``nan`` without rows.
    """
    comm = get_comm(comm)
    with collective_check(comm, "checking the classification rows"):
        y_true, y_pred, w = _check_rows(y_true, y_pred, sample_weight, "y_pred")
        local = _local_labels(y_true, y_pred)
        # scikit-learn keeps integer weights' sums as integers: the ranks with rows decide.
        integer_weights = (
            None
            if y_true.size == 0
            else (
                sample_weight is None or np.asarray(sample_weight).dtype.kind in "biu"
            )
        )
    gathered = allgather_object((local, integer_weights), comm)
    present = _union_labels([labels_ for labels_, _ in gathered])
    integer = all(flag is not False for _, flag in gathered)
    if labels is None:
        reported = present
        full = present
    else:
        reported = np.asarray(labels)
        if reported.ndim != 1 or reported.size == 0:
            raise ValueError("labels must be a non-empty 1-D sequence")
        extra = present[~np.isin(present, reported)] if present.size else present
        full = np.concatenate([reported, extra]) if extra.size else reported
    index = {label: i for i, label in enumerate(full.tolist())}
    if len(index) != len(full):
        raise ValueError("labels must not repeat a label")
    n_full = len(full)
    rows = _label_index(y_true, index) * n_full + _label_index(y_pred, index)
    counts = np.bincount(rows, weights=w, minlength=n_full * n_full)
    totals = [y_true.size]
    if integer:
        matrix = allreduce_sum(np.concatenate([counts, totals]).astype(np.int64), comm)
    else:
        matrix = allreduce_identical(
            np.concatenate([counts, totals]).astype(np.float64), comm
        )
    n_rows = int(matrix[-1])
    matrix = matrix[:-1].reshape(n_full, n_full)
    return _scores_from_confusion(matrix, reported, n_rows)


def _scores_from_confusion(
    full: np.ndarray, reported: np.ndarray, n_rows: int
) -> dict[str, Any]:
    """All classification scores from the confusion matrix over every present label. Pure.

    The reported labels come first in ``full``'s rows and columns.
    """
    n = len(reported)
    tp = np.diag(full)[:n].astype(np.float64)
    pred_sum = full.sum(axis=0)[:n].astype(np.float64)
    true_sum = full.sum(axis=1)[:n].astype(np.float64)
    total = float(full.sum())
    precision = _divide(tp, pred_sum)
    recall = _divide(tp, true_sum)
    f1 = _divide(2 * tp, true_sum + pred_sum)

    def average(values: np.ndarray, weights: np.ndarray | None) -> float:
        if values.size == 0:
            return float("nan")
        # scikit-learn ignores all-zero weights rather than dividing by zero.
        if weights is None or weights.sum() == 0:
            return float(np.mean(values))
        return float(np.average(values, weights=weights))

    micro = {
        "precision": float(_divide(tp.sum(), pred_sum.sum())),
        "recall": float(_divide(tp.sum(), true_sum.sum())),
        "f1": float(_divide(2 * tp.sum(), true_sum.sum() + pred_sum.sum())),
    }
    return {
        "labels": reported,
        "confusion_matrix": full[:n, :n].copy(),
        "accuracy": float(np.trace(full) / total) if total > 0 else float("nan"),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "support": true_sum,
        "macro": {
            k: average(v, None)
            for k, v in (("precision", precision), ("recall", recall), ("f1", f1))
        },
        "weighted": {
            k: average(v, true_sum)
            for k, v in (("precision", precision), ("recall", recall), ("f1", f1))
        },
        "micro": micro,
        "n_rows": n_rows,
        "total_weight": total,
    }


# ----------------------------------------------------------------------------
# ROC


def _resolve_pos_label(y_true: np.ndarray, pos_label: Any, comm: Intracomm) -> Any:
    """scikit-learn's default positive label: 1 for labels in {0, 1} or {-1, 1}. Collective."""
    if pos_label is not None:
        return pos_label
    classes = agree_labels(y_true, comm=comm)
    if (
        classes.size
        and classes.dtype.kind in "biuf"
        and (set(classes.tolist()) <= {0, 1} or set(classes.tolist()) <= {-1, 1})
    ):
        return 1
    raise ValueError(
        f"y_true takes values in {classes.tolist()} and pos_label is not specified: either make "
        "y_true take values in {0, 1} or {-1, 1} or pass pos_label explicitly"
    )


def _compress_scores(
    scores: np.ndarray, positive: np.ndarray, w: np.ndarray | None
) -> np.ndarray:
    """This rank's distinct scores with the positive and negative weight at each. Local.

    Returns an array of shape (k, 3): score (ascending), positive weight,
    negative weight.  Zero-weight rows are dropped, as scikit-learn does.
    """
    scores = scores.astype(np.float64, copy=False)
    if w is None:
        w = np.ones(scores.shape[0])
    else:
        keep = w != 0
        scores, positive, w = scores[keep], positive[keep], w[keep]
    distinct, inverse = np.unique(scores, return_inverse=True)
    out = np.empty((distinct.size, 3))
    out[:, 0] = distinct
    out[:, 1] = np.bincount(inverse, weights=w * positive, minlength=distinct.size)
    out[:, 2] = np.bincount(inverse, weights=w * ~positive, minlength=distinct.size)
    return out


def _merge_rows(merge_rows: int | None) -> int | None:
    """``merge_rows`` checked (``None``: the library's default chunk). Pure."""
    if merge_rows is not None and int(merge_rows) < 1:
        raise ValueError(
            f"merge_rows must be a positive number of rows, got {merge_rows}"
        )
    return None if merge_rows is None else int(merge_rows)


# Distinct scores per step of the curve's arithmetic (a few MB of work arrays).
_CURVE_BLOCK = 1 << 16


class _CurveBuilder:
    """The ROC curve and its area from merged chunks of scores, highest first. Local (rank 0).

    Follows ``sklearn.metrics.roc_curve`` (``drop_intermediate=True``) and
    ``auc`` step by step, so the area is scikit-learn's: a group of tied
    scores is one step of the curve, its area a trapezoid (ties count half).
    Chunks arrive in descending order of scores; the cumulative weights,
    the test for points between collinear neighbours and the area carry
    from one chunk to the next, and within a chunk from one block of
    ``_CURVE_BLOCK`` points to the next, so the memory is one chunk, the
    work arrays of one block and at most ``2 * max_points`` points, however
    many distinct scores there are.

    The area is summed unnormalised, ``Σ Δfp·(tp + tp')/2``, and divided
    once by ``positives × negatives`` at the end: with integer counts every
    term is exact, so the area is the correctly rounded fraction of
    correctly ordered pairs (ties half).  A curve longer than ``max_points``
    keeps the points nearest to ``max_points`` even steps along ``fpr +
    tpr`` (along the one defined rate if a class is missing), chosen as the
    points stream by with the totals known up front.
    """

    def __init__(self, max_points: int, positive_total: float, negative_total: float):
        self.max_points = max_points
        self.tp = self.fp = 0.0  # cumulative weights so far
        # The last two points before dropping: the next point decides the last one.
        self.held = np.empty((0, 3))  # rows (tp, fp, threshold)
        self.first_done = False
        self.n_points = 1  # kept points, the (0, 0) origin included
        self.last_kept = np.array([0.0, 0.0, np.inf])
        self.before_last = None  # the kept point before last_kept
        self.area2 = 0.0  # twice the unnormalised area
        self.all_points = [self.last_kept[None, :]]  # while n_points <= max_points
        # Thinning: targets along the curve, from totals summed in advance.
        self.scale = np.array(
            [
                1.0 / positive_total if positive_total > 0 else 0.0,
                1.0 / negative_total if negative_total > 0 else 0.0,
            ]
        )
        end = float((self.scale > 0).sum())
        self.targets = np.linspace(0.0, end, max_points)[1:-1]
        self.next_target = 0
        self.chosen: list[tuple[int, np.ndarray]] = [(0, self.last_kept)]

    def feed(self, chunk: np.ndarray) -> None:
        """Add every rank's ``(score, positive, negative)`` rows of one interval of scores."""
        distinct, inverse = np.unique(chunk[:, 0], return_inverse=True)
        positive = np.bincount(inverse, weights=chunk[:, 1], minlength=distinct.size)
        negative = np.bincount(inverse, weights=chunk[:, 2], minlength=distinct.size)
        del inverse
        # Highest first, in blocks: the curve's working arrays stay small.
        for stop in range(distinct.size, 0, -_CURVE_BLOCK):
            part = slice(max(0, stop - _CURVE_BLOCK), stop)
            self._feed_points(
                distinct[part][::-1], positive[part][::-1], negative[part][::-1]
            )

    def _feed_points(
        self, scores: np.ndarray, positive: np.ndarray, negative: np.ndarray
    ) -> None:
        """Add distinct scores (descending) with their positive and negative weights."""
        # Cumulative sums continue the carried ones, addition by addition.
        tps = np.cumsum(np.r_[self.tp, positive])[1:]
        fps = np.cumsum(np.r_[self.fp, negative])[1:]
        self.tp, self.fp = float(tps[-1]), float(fps[-1])
        points = np.column_stack([tps, fps, scores])
        if not self.first_done:  # the first threshold's point is always kept
            self._keep(points[:1])
            self.first_done = True
        seq = np.concatenate([self.held, points])
        # Points with both neighbours known: keep the corners, as scikit-learn's
        # np.diff(fps, 2) and np.diff(tps, 2) test (the first one was decided).
        if len(seq) > 2:
            d1 = np.diff(seq[:, :2], axis=0)
            corner = (np.diff(d1, axis=0) != 0).any(axis=1)
            middle = seq[1:-1]
            self._keep(middle[corner])
        self.held = seq[-2:].copy()

    def _keep(self, kept: np.ndarray) -> None:
        if not len(kept):
            return
        previous = np.concatenate([self.last_kept[None, :2], kept[:-1, :2]])
        self.area2 += float(
            np.sum((kept[:, 1] - previous[:, 1]) * (kept[:, 0] + previous[:, 0]))
        )
        first_index = self.n_points
        if self.n_points <= self.max_points:
            self.all_points.append(kept[: self.max_points + 1 - self.n_points])
        self.n_points += len(kept)
        along = kept[:, 0] * self.scale[0] + kept[:, 1] * self.scale[1]
        waiting = self.targets[self.next_target :]
        reached = np.searchsorted(along, waiting, side="left")
        hit = reached < len(kept)
        for i in np.unique(reached[hit]):
            self.chosen.append((first_index + int(i), kept[i]))
        self.next_target += int(hit.sum())
        if len(kept) > 1:
            self.before_last = kept[-2]
        else:
            self.before_last = self.last_kept
        self.last_kept = kept[-1]

    def finish(self) -> dict[str, Any]:
        """The curve: scikit-learn's points (thinned if longer than ``max_points``) and area."""
        if len(self.held) >= 2:  # the last point overall is always kept
            self._keep(self.held[-1:])
        n_pos, n_neg = (self.tp, self.fp) if self.n_points > 1 else (0.0, 0.0)
        last = self.n_points - 1
        if self.n_points <= self.max_points:
            points = np.concatenate(self.all_points)
        else:
            # As _thin_curve did: targets past the end fall on the point before
            # the last, and the last is kept once.
            chosen = {i: p for i, p in self.chosen if i < last}
            if self.next_target < len(self.targets) or any(
                i == last for i, _ in self.chosen
            ):
                chosen[last - 1] = self.before_last
            chosen[last] = self.last_kept
            points = np.array([chosen[i] for i in sorted(chosen)])
        fpr = points[:, 1] / n_neg if n_neg > 0 else np.full(len(points), np.nan)
        tpr = points[:, 0] / n_pos if n_pos > 0 else np.full(len(points), np.nan)
        defined = n_pos > 0 and n_neg > 0
        return {
            "auc": 0.5 * self.area2 / (n_pos * n_neg) if defined else float("nan"),
            "fpr": fpr,
            "tpr": tpr,
            "thresholds": points[:, 2].copy(),
            "n_points": int(self.n_points),
            "positive_weight": n_pos,
            "negative_weight": n_neg,
        }


def _binary_curve(
    scores: np.ndarray,
    positive: np.ndarray,
    w: np.ndarray | None,
    max_points: int,
    comm: Intracomm,
    merge_rows: int | None,
) -> dict[str, Any]:
    """Merge every rank's compressed scores on rank 0, in bounded chunks; broadcast the curve. Collective."""
    compressed = _compress_scores(scores, positive, w)
    # The totals, known before the points stream by, place the thinned points.
    totals = allreduce_identical(compressed[:, 1:].sum(axis=0), comm)
    builder = (
        _CurveBuilder(max_points, totals[0], totals[1])
        if comm.Get_rank() == 0
        else None
    )
    chunks = merge_on_root(
        compressed,
        compressed[:, 0],
        builder.feed if builder is not None else None,
        comm,
        limit=merge_rows,
        descending=True,
        what="merging the ROC scores on rank 0",
    )
    curve = None
    with collective_check(comm, "computing the ROC curve"):
        if builder is not None:
            curve = builder.finish()
    # A few thousand floats at most: small enough to pickle.
    curve = bcast_object(curve, comm, root=0)
    curve["bytes_gathered"] = int(
        allreduce_sum(np.array([compressed.nbytes], dtype=np.int64), comm)[0]
    )
    curve["merge_chunks"] = chunks
    return curve


def roc_curve(
    y_true: np.ndarray,
    scores: np.ndarray,
    *,
    pos_label: Any = None,
    sample_weight: np.ndarray | None = None,
    max_points: int = ROC_MAX_POINTS,
    merge_rows: int | None = None,
    comm: Intracomm | None = None,
) -> dict[str, Any]:
    """The exact binary ROC curve and AUC of all ranks' rows.

    Collective over ``comm``: one agreement on the input (and one label
    ``allgather`` if ``pos_label`` is ``None``), two small reductions, one
    ``Gatherv`` to rank 0 per chunk (see below), one broadcast.  Each rank
    sends its distinct scores with the positive and negative weight at
    each: 24 bytes per distinct local score, at most 24 bytes per local
    row, and much less when scores repeat (probabilities of a few distinct
    values, decision values of a coarse model).  Rank 0 merges them in
    chunks of at most ``merge_rows`` (plus ranks - 1) rows, highest scores
    first (:func:`mpitrain.stats.merge_on_root`: the chunk bounds are exact
    global order statistics of the scores, found by a bisection of at most
    64 small reductions when more than one chunk is needed), so its memory is
    bounded however many distinct scores there are (measured at 2 ranks
    with 2 million distinct scores: 114 MB peak on rank 0 with the default
    chunk, 73 MB with chunks of 262,144 rows, against 218 MB when all were
    gathered at once); the curve and the area are the same as from one
    chunk.  Scores are model outputs, not feature rows.

    The area equals ``sklearn.metrics.roc_auc_score`` on all rows (exact
    with integer counts; with float sample weights, up to the rounding of
    the weight sums), and is the area under the full curve even when the
    returned points are thinned.

    Parameters
    ----------
    y_true : array-like of shape (n_local_rows,)
        True labels.
    scores : array-like of shape (n_local_rows,)
        Finite scores, higher meaning more likely positive (a decision
        function or the positive class's probability).
    pos_label : int, float, bool or str, default=None
        The positive class; ``None`` means 1 when the labels are {0, 1} or
        {-1, 1} (as in scikit-learn), and every other label is negative.
    sample_weight : array-like of shape (n_local_rows,), default=None
    max_points : int, default=ROC_MAX_POINTS
        Most points returned in ``fpr``, ``tpr``, ``thresholds``.
    merge_rows : int, default=None
        Rows of one chunk merged on rank 0; ``None`` means
        :data:`mpitrain.stats.MERGE_CHUNK_ROWS` (1,048,576).
    comm : mpi4py.MPI.Intracomm, default=None

    Returns
    -------
    dict
        ``auc`` (float; ``nan`` with a warning if positives or negatives are
        missing, as scikit-learn); ``fpr``, ``tpr``, ``thresholds`` (float64
        arrays: scikit-learn's ``roc_curve`` points, the first threshold
        ``inf``, thinned evenly along the curve (along the one defined rate
        if a class is missing) to ``max_points`` if longer); ``n_points``
        (points before thinning); ``positive_weight`` and
        ``negative_weight`` (rows, or summed weights); ``pos_label``;
        ``bytes_gathered`` (bytes sent to rank 0 by all ranks);
        ``merge_chunks`` (chunks merged on rank 0).
    """
    comm = get_comm(comm)
    if max_points < 2:
        raise ValueError(f"max_points must be at least 2, got {max_points}")
    with collective_check(comm, "checking the ROC rows"):
        y_true, scores, w = _check_rows(
            y_true, scores, sample_weight, "scores", finite=("scores",)
        )
    pos_label = _resolve_pos_label(y_true, pos_label, comm)
    curve = _binary_curve(
        scores, y_true == pos_label, w, max_points, comm, _merge_rows(merge_rows)
    )
    curve["pos_label"] = pos_label
    if np.isnan(curve["auc"]):
        warnings.warn(
            "Only one class is present in y_true. ROC AUC score is not defined in that case.",
            UserWarning,
            stacklevel=2,
        )
    return curve


def roc_auc(
    y_true: np.ndarray,
    scores: np.ndarray,
    *,
    pos_label: Any = None,
    sample_weight: np.ndarray | None = None,
    merge_rows: int | None = None,
    comm: Intracomm | None = None,
) -> float:
    """The exact binary ROC AUC of all ranks' rows: :func:`roc_curve`'s ``auc``.

    Collective over ``comm``.  Equal to ``sklearn.metrics.roc_auc_score``,
    in memory bounded by ``merge_rows`` on rank 0 (see :func:`roc_curve`).
    """
    return roc_curve(
        y_true,
        scores,
        pos_label=pos_label,
        sample_weight=sample_weight,
        merge_rows=merge_rows,
        comm=comm,
    )["auc"]


def roc_auc_ovr(
    y_true: np.ndarray,
    scores: np.ndarray,
    *,
    classes: Sequence | None = None,
    average: str = "macro",
    sample_weight: np.ndarray | None = None,
    max_points: int = ROC_MAX_POINTS,
    merge_rows: int | None = None,
    comm: Intracomm | None = None,
) -> dict[str, Any]:
    """Exact one-vs-rest ROC AUC of a multi-class problem over all ranks' rows.

    Collective over ``comm``: one agreement, one label ``allgather`` if
    ``classes`` is ``None``, then one binary :func:`roc_curve` merge per
    class (column of ``scores`` against the rest).  Equal to
    ``sklearn.metrics.roc_auc_score(y_true, scores, multi_class="ovr",
    average=average, sample_weight=...)`` wherever that is defined (it
    requires probabilities that sum to 1 per row; this does not).

    Parameters
    ----------
    y_true : array-like of shape (n_local_rows,)
    scores : array-like of shape (n_local_rows, n_classes)
        Per-class scores, columns in the order of ``classes``.
    classes : sequence, default=None
        The class of each column (e.g. a fitted model's ``classes_``);
        ``None`` means the sorted labels of ``y_true`` on all ranks, which
        must then number ``n_classes``.
    average : {"macro", "weighted"}, default="macro"
        Unweighted mean of the per-class AUCs, or weighted by each class's
        (weighted) row count.  Classes whose AUC is undefined (no rows of
        the class, or nothing else) are left out of the average; scikit-
        learn raises in that case.
    sample_weight : array-like of shape (n_local_rows,), default=None
    max_points : int, default=ROC_MAX_POINTS
    merge_rows : int, default=None
        As in :func:`roc_curve`, for each class's merge.
    comm : mpi4py.MPI.Intracomm, default=None

    Returns
    -------
    dict
        ``auc`` (float), ``average``, ``classes`` (K,), ``per_class`` (K,)
        AUCs, ``curves``: one :func:`roc_curve` dict per class.
    """
    comm = get_comm(comm)
    if average not in ("macro", "weighted"):
        raise ValueError(f"average must be 'macro' or 'weighted', got {average!r}")
    with collective_check(comm, "checking the ROC rows"):
        y_true, scores, w = _check_rows(
            y_true,
            scores,
            sample_weight,
            "per-class scores",
            finite=("per-class scores",),
        )
        if scores.ndim != 2 and scores.size:
            raise ValueError(
                f"scores must have shape (n_rows, n_classes), got {scores.shape}"
            )
    # Ranks without rows may pass scores of any shape; the others fix the width.
    widths = {
        k
        for k in allgather_object(scores.shape[1] if scores.size else None, comm)
        if k is not None
    }
    if len(widths) > 1:
        raise ValueError(
            f"ranks have scores with different numbers of columns: {sorted(widths)}"
        )
    n_columns = widths.pop() if widths else 0
    if not scores.size:
        scores = np.zeros((0, n_columns))
    classes = (
        agree_labels(y_true, comm=comm) if classes is None else np.asarray(classes)
    )
    if len(classes) != n_columns:
        raise ValueError(
            f"there are {len(classes)} classes but scores has {n_columns} columns"
        )
    curves = [
        _binary_curve(
            scores[:, j], y_true == label, w, max_points, comm, _merge_rows(merge_rows)
        )
        for j, label in enumerate(classes.tolist())
    ]
    per_class = np.array([c["auc"] for c in curves])
    defined = ~np.isnan(per_class)
    if not defined.any():
        area = float("nan")
    elif average == "macro":
        area = float(np.mean(per_class[defined]))
    else:
        prevalence = np.array([c["positive_weight"] for c in curves])[defined]
        area = (
            float(np.average(per_class[defined], weights=prevalence))
            if prevalence.sum() > 0
            else float("nan")
        )
    return {
        "auc": area,
        "average": average,
        "classes": classes,
        "per_class": per_class,
        "curves": curves,
    }


def binary_score_histograms(
    y_true: np.ndarray,
    scores: np.ndarray,
    *,
    pos_label: Any = None,
    bins: int = 64,
    sample_weight: np.ndarray | None = None,
    comm: Intracomm | None = None,
) -> dict[str, Any]:
    """Histograms of the scores of positive and of negative rows, over the global score range.

    Collective over ``comm``: one agreement, a label ``allgather`` if
    ``pos_label`` is ``None``, one ``Allreduce`` of the range and one
    reduction of the histograms.  For plotting how well the scores separate
    the classes; equal to numpy's ``histogram`` on all rows with ``edges``.

    Returns
    -------
    dict
        ``edges`` (bins + 1,), ``positive`` and ``negative`` (bins,): int64
        counts, or float64 summed weights with ``sample_weight``;
        ``pos_label``.
    """
    comm = get_comm(comm)
    if not isinstance(bins, (int, np.integer)) or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}")
    with collective_check(comm, "checking the score rows"):
        y_true, scores, w = _check_rows(
            y_true, scores, sample_weight, "scores", finite=("scores",)
        )
        scores = scores.astype(np.float64, copy=False)
    pos_label = _resolve_pos_label(y_true, pos_label, comm)
    local = [scores.min(), scores.max()] if scores.size else [np.inf, -np.inf]
    lows, highs = allreduce_minmax(np.array(local), comm)
    edges = _uniform_edges(lows[0], highs[1], bins)
    positive = y_true == pos_label
    hist = [
        np.histogram(scores[mask], bins=edges, weights=None if w is None else w[mask])[
            0
        ]
        for mask in (positive, ~positive)
    ]
    if sample_weight is None:
        buf = allreduce_sum(np.concatenate(hist).astype(np.int64), comm)
    else:
        buf = allreduce_identical(np.concatenate(hist).astype(np.float64), comm)
    return {
        "edges": edges,
        "positive": buf[:bins],
        "negative": buf[bins:],
        "pos_label": pos_label,
    }


# ----------------------------------------------------------------------------
# Evaluating a fitted model


def predict_local(estimator: Any, X: Any, method: str = "predict") -> np.ndarray:
    """``estimator.<method>(X)`` on this rank's rows, also when there are none.

    Local (no communication).  scikit-learn refuses zero rows; a rank
    without rows gets an empty result of the right dtype and shape from a
    prediction on one dummy row, so that the ranks' results fit together.
    """
    predict = getattr(estimator, method)
    if X.shape[0] > 0:
        return np.asarray(predict(X))
    dummy = np.zeros((1, *X.shape[1:]), dtype=getattr(X, "dtype", np.float64))
    return np.asarray(predict(dummy))[:0]


def _final_step(estimator: Any) -> Any:
    return estimator.steps[-1][1] if hasattr(estimator, "steps") else estimator


def evaluate_estimator(
    estimator: Any,
    X: Any,
    y: np.ndarray,
    *,
    sample_weight: np.ndarray | None = None,
    bins: int = 64,
    max_points: int = ROC_MAX_POINTS,
    comm: Intracomm | None = None,
) -> dict[str, Any]:
    """All of ``mpitrain evaluate``'s metrics of a fitted model on all ranks' rows.

    Collective over ``comm``.  Every rank predicts its own rows locally
    (the model is a plain fitted scikit-learn object or an mpitrain
    estimator) and only reduced statistics travel.

    Parameters
    ----------
    estimator : fitted estimator
        A classifier (``sklearn.base.is_classifier``) or a regressor.
    X : array-like of shape (n_local_rows, n_features)
    y : array-like of shape (n_local_rows,)
    sample_weight : array-like of shape (n_local_rows,), default=None
    bins : int, default=64
        Histogram bins for plots.
    max_points : int, default=ROC_MAX_POINTS
    comm : mpi4py.MPI.Intracomm, default=None

    Returns
    -------
    dict
        Regression: ``task="regression"``, ``n_rows``, ``r2``, ``mse``,
        ``rmse``, ``mae``, ``histograms`` (:func:`regression_histograms`).
        Classification: ``task="classification"``, every key of
        :func:`classification_scores`, and ``roc``: ``None`` if the model
        gives no scores, else for two classes :func:`roc_curve`'s dict plus
        ``kind="binary"``, ``score_source`` and ``score_histograms``
        (:func:`binary_score_histograms`), for more :func:`roc_auc_ovr`'s
        dict plus ``kind="ovr"`` and ``score_source``.  Binary scores are
        the decision function if there is one, else the positive class's
        probability (scikit-learn's ``roc_auc`` scorer); one-vs-rest scores
        are probabilities if the model has them, else decision values.
    """
    from sklearn.base import is_classifier

    comm = get_comm(comm)
    with collective_check(comm, "predicting"):
        y_pred = predict_local(estimator, X)
    if not is_classifier(estimator):
        scores = regression_scores(y, y_pred, sample_weight, comm=comm)
        histograms = regression_histograms(
            y, y_pred, bins=bins, sample_weight=sample_weight, comm=comm
        )
        return {
            "task": "regression",
            "n_rows": histograms["n_rows"],
            **scores,
            "rmse": float(np.sqrt(scores["mse"])),
            "histograms": histograms,
        }
    result: dict[str, Any] = {
        "task": "classification",
        **classification_scores(y, y_pred, sample_weight=sample_weight, comm=comm),
    }
    classes = np.asarray(
        getattr(estimator, "classes_", getattr(_final_step(estimator), "classes_", []))
    )
    has = {m: hasattr(estimator, m) for m in ("decision_function", "predict_proba")}
    roc = None
    if len(classes) == 2 and (has["decision_function"] or has["predict_proba"]):
        source = "decision_function" if has["decision_function"] else "predict_proba"
        with collective_check(comm, f"computing {source}"):
            scores = predict_local(estimator, X, source)
            scores = scores[:, 1] if scores.ndim == 2 else scores
        with warnings.catch_warnings():
            warnings.simplefilter(
                "ignore", UserWarning
            )  # an undefined AUC is reported as nan
            roc = roc_curve(
                y,
                scores,
                pos_label=classes[1],
                sample_weight=sample_weight,
                max_points=max_points,
                comm=comm,
            )
        roc.update(
            kind="binary",
            score_source=source,
            score_histograms=binary_score_histograms(
                y,
                scores,
                pos_label=classes[1],
                bins=bins,
                sample_weight=sample_weight,
                comm=comm,
            ),
        )
    elif len(classes) > 2 and (has["decision_function"] or has["predict_proba"]):
        source = "predict_proba" if has["predict_proba"] else "decision_function"
        with collective_check(comm, f"computing {source}"):
            scores = predict_local(estimator, X, source)
        roc = roc_auc_ovr(
            y,
            scores,
            classes=classes,
            sample_weight=sample_weight,
            max_points=max_points,
            comm=comm,
        )
        roc.update(kind="ovr", score_source=source)
    result["roc"] = roc
    return result
