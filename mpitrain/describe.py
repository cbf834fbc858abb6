"""Describe a data set split across ranks: per-column statistics, quantiles, classes, slices.

``mpitrain describe DATA.h5`` and :func:`describe_arrays` answer, for the
rows of *all* ranks together: per column, the count of finite values, the
missing ones (NaN, +inf and -inf, counted apart), the mean, the standard
deviation, the minimum, the maximum and quantiles; for a label column, the
class counts; per rank, the rows it holds and whether its slice looks like
the others (class proportions, column means).

Everything exact is computed by reduction, never by moving rows:

- moments: each rank streams its rows in blocks of bounded size through a
  :class:`~mpitrain.stats.ColumnStats` accumulator (count, missing, mean,
  centred sum of squares, min, max; the one the scaler pools too), whose
  :meth:`~mpitrain.stats.ColumnStats.merge` is the pooled formula
  ``M2 = Σ M2_r + Σ n_r (m_r − m)²`` — never ``Σx² − n·m²``, so a column
  with mean 1e6 and unit spread keeps its variance.  The ranks'
  accumulators are gathered (one ``Allgather``) and merged in rank order,
  so every rank gets the bit-identical result and also sees every rank's
  own means and counts;
- quantiles (approximate): a second streamed pass counts each column's
  finite values in :data:`HISTOGRAM_BINS` equal bins between its global
  minimum and maximum and keeps each bin's smallest and largest value; the
  counts are summed over ranks (one ``Allreduce`` of integers, exact) and
  the extremes reduced (one more), and each quantile is interpolated
  within the bin that holds it (:class:`Histograms`,
  :func:`histogram_quantiles`).  Every quantile comes with a *guaranteed*
  bound: the exact value (``np.quantile`` of all finite values, linear
  interpolation) lies within ``± bound`` of the estimate.  The bound is at
  most the spread of the values in one bin, so at most one bin width,
  ``(max − min) / bins``, and 0 when the quantile falls on a bin's first or
  last value — always for columns with few distinct values, whose
  quantiles are therefore exact;
- quantiles (exact): :func:`global_quantiles` finds exact order statistics
  without moving rows, by a search over the ordered integer keys of
  float64 values (:func:`float_keys`): each round counts, on every rank,
  the values at or below up to 255 candidate keys per column and target,
  and sums the counts with one small ``Allreduce``; 8 to 16 rounds pin
  down any float64.
  :func:`describe_arrays` uses it with ``exact_quantiles=True`` (the rows
  are in memory), and :mod:`mpitrain.preprocessing` uses it for medians and
  clipping bounds.

Two rules decide whether a rank's slice is "not identically distributed":
class proportions more than :data:`~mpitrain.utils.multiclass.CLASS_SHIFT_THRESHOLD`
(total variation, :func:`~mpitrain.utils.multiclass.class_shift`) from the
global ones, the rule the classifiers warn with; and a
column mean more than :data:`MEAN_SHIFT_Z` standard errors *and*
:data:`MEAN_SHIFT_STD` standard deviations from the global mean.  On a
random split of i.i.d. rows a rank's mean is about normal around the global
one with that standard error (for draws without replacement), so 5 of them
happen by chance about once in 1.7 million (rank, column) pairs, whatever
the sizes; the second condition keeps a drift too small to matter from
being flagged on huge slices.  Sorted rows move the slice means of the
sorted column by a sizeable fraction of a standard deviation, far beyond
both.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass
from functools import reduce
from typing import TYPE_CHECKING, Any

import numpy as np

from mpitrain.comm import (
    allgather_array,
    allgather_object,
    allreduce_minmax,
    allreduce_sum,
    collective_check,
    get_comm,
    library_comm,
)
from mpitrain.stats import (
    EPS,
    HISTOGRAM_BINS,
    ColumnStats,
    Histograms,
    OrderStatistics,
    check_levels,
    histogram_quantiles,
    quantiles_from,
)
from mpitrain.utils.multiclass import CLASS_SHIFT_THRESHOLD, class_shift

if TYPE_CHECKING:  # pragma: no cover
    from mpi4py.MPI import Intracomm

    from mpitrain.data import RowReader


#: Quantile levels reported by default (0 and 1 are the minimum and maximum).
DEFAULT_QUANTILES = (0.0, 0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99, 1.0)

#: A target with more distinct values than this is not treated as classes.
MAX_CLASSES = 100

#: A rank's column mean is flagged when it is more than this many standard
#: errors from the global mean ...
MEAN_SHIFT_Z = 5.0

#: ... and also more than this many (global) standard deviations from it.
MEAN_SHIFT_STD = 0.1

# Float64 bytes of one block of rows processed at once: temporaries of a few
# times this size, whatever the size of a rank's slice.
_BLOCK_BYTES = 16 << 20
_MIN_BLOCK_ROWS = 256


# ----------------------------------------------------------------------------
# Labels


class _LabelCounter:
    """Counts of each label in the blocks seen, up to ``max_classes`` distinct ones. Local."""

    def __init__(self, max_classes: int):
        self.max_classes = max_classes
        self.counts: dict[Any, int] | None = {}
        self.missing = 0
        self.rows = 0

    def update(self, y: np.ndarray) -> None:
        y = np.asarray(y)
        self.rows += y.shape[0]
        if y.dtype.kind == "f":
            missing = ~np.isfinite(y)
        elif y.dtype.kind == "O":
            missing = np.fromiter(
                (
                    v is None or (isinstance(v, float) and not math.isfinite(v))
                    for v in y
                ),
                dtype=bool,
                count=y.shape[0],
            )
        else:
            missing = np.zeros(y.shape[0], dtype=bool)
        self.missing += int(missing.sum())
        if self.counts is None:
            return
        present = y[~missing]
        if present.dtype.kind == "O":
            present = present.astype(str)
        labels, counts = np.unique(present, return_counts=True)
        for label, count in zip(labels.tolist(), counts.tolist()):
            self.counts[label] = self.counts.get(label, 0) + count
        if len(self.counts) > self.max_classes:
            self.counts = (
                None  # a continuous target: stop counting, memory stays bounded
            )


# ----------------------------------------------------------------------------
# The collective description


def _default_block_rows(n_columns: int) -> int:
    return max(_MIN_BLOCK_ROWS, _BLOCK_BYTES // (8 * max(n_columns, 1)))


def _number(value: Any) -> float | None:
    """A JSON-safe float: ``None`` for NaN and infinities."""
    value = float(value)
    return value if math.isfinite(value) else None


@dataclass
class _Target:
    name: str
    kind: str  # "numeric" (also a column of the table) or "text"
    dtype: str


class _ArrayBlocks:
    """Rows in memory, a block at a time. Local."""

    def __init__(self, X: np.ndarray, y: np.ndarray | None, block_rows: int):
        self.X, self.y, self.block_rows = X, y, block_rows

    def prepare(self, pass_index: int) -> None:
        """Nothing to do before a pass (the file source opens its reader here)."""

    def __call__(self) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        for a in range(0, self.X.shape[0], self.block_rows):
            yield (
                self.X[a : a + self.block_rows],
                None if self.y is None else self.y[a : a + self.block_rows],
            )


def _columns_of(
    X_block: np.ndarray, y_block: np.ndarray | None, numeric_target: bool
) -> np.ndarray:
    """The block's numeric columns as float64: the features, then a numeric target."""
    if not numeric_target:
        return np.asarray(X_block, dtype=np.float64)
    Z = np.empty((X_block.shape[0], X_block.shape[1] + 1))
    Z[:, :-1] = X_block
    Z[:, -1] = y_block
    return Z


def _describe_blocks(
    blocks: _ArrayBlocks | _FileBlocks,
    *,
    n_features: int,
    names: list[str],
    target: _Target | None,
    levels: np.ndarray,
    bins: int,
    max_classes: int,
    comm: Intracomm,
    what: str,
    source: str | list[str] | None,
    ranges: list[tuple[int, int]] | None,
    exact: Callable[[], np.ndarray] | None = None,
) -> dict:
    """Both passes and the result. Collective over ``comm`` (a library communicator)."""
    size = comm.Get_size()
    numeric_target = target is not None and target.kind == "numeric"
    k = n_features + (1 if numeric_target else 0)
    labels = _LabelCounter(max_classes) if target is not None else None

    # Pass 1: moments and labels, block by block.
    stats = ColumnStats.empty(k)
    blocks.prepare(0)
    with collective_check(comm, what):
        with closing(blocks()) as stream:
            for X_block, y_block in stream:
                stats = stats.merge(
                    ColumnStats.of_block(_columns_of(X_block, y_block, numeric_target))
                )
                if labels is not None:
                    labels.update(y_block)
    # Every rank's summary on every rank, merged in rank order: bit-identical everywhere.
    per_rank = [
        ColumnStats.from_array(row) for row in allgather_array(stats.to_array(), comm)
    ]
    overall = reduce(ColumnStats.merge, per_rank, ColumnStats.empty(k))
    label_parts = None
    if labels is not None:
        label_parts = allgather_object(
            (labels.counts, labels.missing, labels.rows), comm
        )

    # Pass 2: quantiles, exact (rows in memory) or from histograms between the global extremes.
    if exact is not None:
        quantiles, bounds = exact(), np.zeros((levels.size, k))
        bounds[np.isnan(quantiles)] = np.nan
        method = {"method": "exact", "approximate": False, "bins": None}
    else:
        hist = Histograms.empty(k, bins)
        blocks.prepare(1)
        with collective_check(comm, what):
            with closing(blocks()) as stream:
                for X_block, y_block in stream:
                    hist = hist.merge(
                        Histograms.of_block(
                            _columns_of(X_block, y_block, numeric_target),
                            overall.min,
                            overall.max,
                            bins,
                        )
                    )
        allreduce_sum(hist.counts, comm)  # integers: exact, identical on every rank
        extremes, _ = allreduce_minmax(
            np.concatenate([hist.low.ravel(), -hist.high.ravel()]), comm
        )
        hist.low, hist.high = (
            extremes[: k * bins].reshape(k, bins),
            -extremes[k * bins :].reshape(k, bins),
        )
        quantiles, bounds = histogram_quantiles(hist, levels)
        method = {"method": "histogram", "approximate": True, "bins": bins}

    # Everything below is local arithmetic on identical gathered values.
    roles = ["feature"] * n_features + (["target"] if numeric_target else [])
    column_names = list(names) + ([target.name] if numeric_target else [])
    std = overall.std(ddof=1)
    columns = []
    for j in range(k):
        columns.append(
            {
                "name": column_names[j],
                "role": roles[j],
                "count": int(overall.count[j]),
                "missing": int(overall.missing[j]),
                "nan": int(overall.nan[j]),
                "posinf": int(overall.posinf[j]),
                "neginf": int(overall.neginf[j]),
                "mean": _number(overall.mean[j]) if overall.count[j] else None,
                "std": _number(std[j]),
                "min": _number(overall.min[j]),
                "max": _number(overall.max[j]),
                "quantiles": [_number(v) for v in quantiles[:, j]],
                "quantile_bounds": [_number(v) for v in bounds[:, j]],
            }
        )

    target_info, class_shares = _target_summary(target, label_parts, max_classes)
    shifts = _mean_shifts(per_rank, overall)
    rank_rows = []
    offset = 0
    for r, part in enumerate(per_rank):
        start, stop = ranges[r] if ranges is not None else (offset, offset + part.rows)
        offset += part.rows
        entry = {
            "rank": r,
            "rows": part.rows,
            "start": start,
            "stop": stop,
            "missing_values": int(part.missing[:n_features].sum()),
            "rows_with_missing": part.rows_with_missing,
            "mean": [_number(m) if c else None for m, c in zip(part.mean, part.count)],
            "max_mean_shift_se": _number(shifts["z"][r].max()) if k else None,
            "max_mean_shift_std": _number(shifts["effect"][r].max()) if k else None,
        }
        if target_info is not None and target_info["classes"] is not None:
            entry["class_counts"] = class_shares["counts"][r]
            mine = sum(entry["class_counts"])
            entry["class_proportions"] = (
                [c / mine for c in entry["class_counts"]] if mine else None
            )
            entry["class_tv_distance"] = class_shares["tv"][r]
        rank_rows.append(entry)

    warnings_ = []
    if target_info is not None and target_info["classes"] is not None:
        shifted = [
            r
            for r, tv in enumerate(class_shares["tv"])
            if tv is not None and tv > CLASS_SHIFT_THRESHOLD
        ]
        if shifted:
            listing = ", ".join(
                f"rank {r}: {class_shares['tv'][r]:.2f}" for r in shifted
            )
            warnings_.append(
                {
                    "kind": "class_proportions",
                    "ranks": shifted,
                    "message": (
                        f"class proportions on {_ranks_text(shifted)} differ from the global ones by more "
                        f"than {CLASS_SHIFT_THRESHOLD} (total variation; {listing}): the slices are not "
                        "identically distributed; shuffle the rows before splitting them (mpitrain shuffle, "
                        "or train --shuffle)"
                    ),
                }
            )
    flagged = shifts["flagged"]
    if flagged.any():
        ranks_flagged = [int(r) for r in np.flatnonzero(flagged.any(axis=1))]
        cols_flagged = [int(j) for j in np.flatnonzero(flagged.any(axis=0))]
        r, j = np.unravel_index(
            np.argmax(np.where(flagged, shifts["effect"], -1.0)), flagged.shape
        )
        shown = ", ".join(column_names[c] for c in cols_flagged[:8]) + (
            ", ..." if len(cols_flagged) > 8 else ""
        )
        warnings_.append(
            {
                "kind": "column_means",
                "ranks": ranks_flagged,
                "columns": [column_names[c] for c in cols_flagged],
                "message": (
                    f"column means on {_ranks_text(ranks_flagged)} differ from the global means by more than "
                    f"{MEAN_SHIFT_Z:g} standard errors and {MEAN_SHIFT_STD:g} standard deviations "
                    f"(columns {shown}; largest: {column_names[j]!r} on rank {r}, "
                    f"{shifts['effect'][r, j]:.2f} standard deviations): the slices are not identically "
                    "distributed (sorted rows?); shuffle the rows before splitting them (mpitrain shuffle, "
                    "or train --shuffle)"
                ),
            }
        )

    return {
        "source": source,
        "rows": overall.rows,
        "features": n_features,
        "ranks": size,
        "rows_with_missing": overall.rows_with_missing,
        "columns": columns,
        "quantile_levels": [float(v) for v in levels],
        "quantile_method": method["method"],
        "quantiles_approximate": method["approximate"],
        "histogram_bins": method["bins"],
        "target": target_info,
        "per_rank": rank_rows,
        "warnings": warnings_,
        "thresholds": {
            "class_tv_distance": CLASS_SHIFT_THRESHOLD,
            "mean_shift_se": MEAN_SHIFT_Z,
            "mean_shift_std": MEAN_SHIFT_STD,
        },
    }


def _ranks_text(ranks: list[int]) -> str:
    return (
        f"rank {ranks[0]}" if len(ranks) == 1 else "ranks " + ", ".join(map(str, ranks))
    )


def _target_summary(
    target: _Target | None, parts: list | None, max_classes: int
) -> tuple[dict | None, dict]:
    """Global class counts and each rank's counts and distance from them. Pure."""
    if target is None or parts is None:
        return None, {}
    info: dict = {
        "name": target.name,
        "dtype": target.dtype,
        "rows": sum(p[2] for p in parts),
        "missing": sum(p[1] for p in parts),
        "classes": None,
        "counts": None,
        "note": None,
    }
    if any(p[0] is None for p in parts):
        info["note"] = (
            f"more than {max_classes} distinct values: not treated as classes"
        )
        return info, {}
    classes = sorted({label for p in parts for label in p[0]})
    if len(classes) > max_classes:
        info["note"] = (
            f"more than {max_classes} distinct values: not treated as classes"
        )
        return info, {}
    per_rank = [[int(p[0].get(c, 0)) for c in classes] for p in parts]
    matrix = np.array(per_rank, dtype=np.int64).reshape(len(parts), len(classes))
    total = matrix.sum(axis=0)
    info["classes"], info["counts"] = classes, [int(c) for c in total]
    # The classifiers' rule; a rank without labelled rows has no distance.
    tv: list[float | None] = [
        float(d) if rows > 0 else None
        for d, rows in zip(class_shift(matrix), matrix.sum(axis=1))
    ]
    return info, {"counts": per_rank, "tv": tv}


def _mean_shifts(
    per_rank: list[ColumnStats], overall: ColumnStats
) -> dict[str, np.ndarray]:
    """How far each rank's column means are from the global ones. Pure.

    ``z``: in standard errors of the mean of ``n_r`` values drawn without
    replacement from the ``N`` of all ranks, ``σ √((N − n_r) / ((N − 1) n_r))``
    with ``σ`` the global (population) standard deviation; under a random
    split of i.i.d. rows it is about standard normal, so a rule at 5 fires
    by chance about once in 1.7 million (rank, column) pairs.  ``effect``:
    in global standard deviations, so that a drift too small to matter on
    huge slices is not flagged.  Constant columns (numerically) never are.
    """
    N = overall.count.astype(np.float64)
    sigma = np.sqrt(np.divide(overall.m2, N, out=np.zeros_like(N), where=N > 0))
    varying = (overall.max > overall.min) & (sigma > 64 * EPS * np.abs(overall.mean))
    zs, effects = [], []
    for part in per_rank:
        n = part.count.astype(np.float64)
        usable = varying & (n > 0) & (n < N)
        with np.errstate(invalid="ignore", divide="ignore"):
            delta = np.abs(part.mean - overall.mean)
            se = sigma * np.sqrt((N - n) / ((N - 1) * n))
            zs.append(np.where(usable, delta / se, 0.0))
            effects.append(np.where(usable, delta / sigma, 0.0))
    z, effect = (
        np.array(zs).reshape(len(per_rank), -1),
        np.array(effects).reshape(len(per_rank), -1),
    )
    return {
        "z": z,
        "effect": effect,
        "flagged": (z > MEAN_SHIFT_Z) & (effect > MEAN_SHIFT_STD),
    }


def _check_options(quantiles: Any, bins: int, max_classes: int) -> np.ndarray:
    levels = check_levels(quantiles)
    if levels.ndim != 1 or levels.size == 0:
        raise ValueError(
            f"quantiles must be a non-empty sequence of levels in [0, 1], got {quantiles!r}"
        )
    if not (isinstance(bins, (int, np.integer)) and bins >= 2):
        raise ValueError(f"bins must be an integer >= 2, got {bins!r}")
    if not (isinstance(max_classes, (int, np.integer)) and max_classes >= 1):
        raise ValueError(f"max_classes must be a positive integer, got {max_classes!r}")
    return levels


def _target_kind(y: np.ndarray | None) -> str | None:
    if y is None:
        return None
    return "numeric" if y.dtype.kind in "biuf" else "text"


def describe_arrays(
    X: Any,
    y: Any = None,
    *,
    feature_names: Sequence[str] | None = None,
    target_name: str = "y",
    quantiles: Sequence[float] = DEFAULT_QUANTILES,
    bins: int = HISTOGRAM_BINS,
    exact_quantiles: bool = False,
    max_classes: int = MAX_CLASSES,
    block_rows: int | None = None,
    comm: Intracomm | None = None,
) -> dict:
    """Describe the rows that all ranks hold in memory.

    Collective over ``comm``: every rank passes its own rows (possibly
    none) with the same columns.  Two passes over the rows in blocks of
    ``block_rows``, a handful of reductions; rows never move.

    Parameters
    ----------
    X : array-like of shape (n_local_rows, n_features)
        Numeric features; NaN and ±inf count as missing.  A DataFrame's
        column names are used as feature names.
    y : array-like of shape (n_local_rows,), default=None
        A target or label column: numbers (also summarised as a column
        named ``target_name``) or text.  If it has at most ``max_classes``
        distinct values on all ranks together, its class counts are
        reported, per rank too.
    feature_names : sequence of str, default=None
        ``None``: the DataFrame's columns, else ``x0, x1, ...``.
    target_name : str, default="y"
    quantiles : sequence of float, default=DEFAULT_QUANTILES
        Levels in [0, 1] (numpy's "linear" definition).
    bins : int, default=HISTOGRAM_BINS
        Histogram bins per column for approximate quantiles.
    exact_quantiles : bool, default=False
        Compute exact quantiles with :func:`global_quantiles` instead of
        histograms (a sorted copy of the local rows; 10 to 18 reductions).
    max_classes : int, default=MAX_CLASSES
    block_rows : int, default=None
        Rows per block (``None``: about 16 MB of float64).
    comm : mpi4py.MPI.Intracomm, default=None

    Returns
    -------
    dict
        JSON-serialisable (no NaN: undefined numbers are ``None``) and
        identical on every rank:

        - ``source`` (None here), ``rows``, ``features``, ``ranks``,
          ``rows_with_missing`` (rows with a missing value in a column of
          the table: a feature or a numeric target);
        - ``columns``: one dict per feature (and numeric target): ``name``,
          ``role`` ("feature" or "target"), ``count`` (finite values),
          ``missing`` (= ``nan`` + ``posinf`` + ``neginf``), ``mean``,
          ``std`` (sample, ddof=1), ``min``, ``max``, ``quantiles`` (one per
          level) and ``quantile_bounds`` (the exact quantile lies within
          ``± bound``; 0 when exact);
        - ``quantile_levels``, ``quantile_method`` ("histogram" or "exact"),
          ``quantiles_approximate``, ``histogram_bins``;
        - ``target``: None, or ``name``, ``dtype``, ``rows``, ``missing``,
          ``classes`` and ``counts`` (None if not classes), ``note``;
        - ``per_rank``: per rank ``rank``, ``rows``, ``start``, ``stop``
          (offsets in rank order), ``missing_values``, ``rows_with_missing``,
          ``mean`` (per column), ``max_mean_shift_se`` and
          ``max_mean_shift_std`` (the largest distance of a column mean from
          the global one, in standard errors and in standard deviations),
          and with classes ``class_counts``, ``class_proportions`` and
          ``class_tv_distance`` (half the L1 distance of the proportions from
          the global ones; None for a rank without labelled rows);
        - ``warnings``: dicts with ``kind`` ("class_proportions" or
          "column_means"), ``ranks``, ``message`` (and ``columns``);
        - ``thresholds`` of the two warnings.

    Raises
    ------
    DistributedError
        The same on every rank if some rank's input is not numeric or not
        2-D, or its ``y`` has the wrong length.
    ValueError
        If ranks disagree on the columns, or an option is invalid.
    """
    levels = _check_options(quantiles, bins, max_classes)
    comm = get_comm(comm)
    with library_comm(comm) as lib:
        local: dict = {}
        with collective_check(lib, "checking the input"):
            if hasattr(X, "columns") and feature_names is None:
                local["names"] = [str(c) for c in X.columns]
            if hasattr(X, "toarray"):
                raise TypeError("describe_arrays needs dense rows, not a sparse matrix")
            Xa = np.asarray(X)
            if Xa.ndim != 2 or Xa.dtype.kind not in "biuf":
                raise ValueError(
                    f"X must be a 2-D numeric array, got shape {Xa.shape} and dtype {Xa.dtype}"
                )
            ya = None if y is None else np.asarray(y)
            if ya is not None and (ya.ndim != 1 or ya.shape[0] != Xa.shape[0]):
                raise ValueError(
                    f"y must be 1-D with one value per row of X ({Xa.shape[0]}), got shape {ya.shape}"
                )
        n_features, names, target = _agree_layout(
            lib, Xa, ya, feature_names, local.get("names"), target_name
        )
        blocks = _ArrayBlocks(Xa, ya, block_rows or _default_block_rows(n_features + 1))

        def exact() -> np.ndarray:
            Z = _columns_of(Xa, ya, target is not None and target.kind == "numeric")
            Z = np.where(
                np.isfinite(Z), Z, np.nan
            )  # a copy: ±inf are missing here, like NaN
            stats = None
            with collective_check(lib, "sorting the rows"):
                stats = OrderStatistics(Z)
            return np.atleast_2d(quantiles_from(stats.reduce(lib), levels))

        return _describe_blocks(
            blocks,
            n_features=n_features,
            names=names,
            target=target,
            levels=levels,
            bins=bins,
            max_classes=max_classes,
            comm=lib,
            what="describing the rows",
            source=None,
            ranges=None,
            exact=exact if exact_quantiles else None,
        )


def _agree_layout(
    comm: Intracomm,
    X: np.ndarray,
    y: np.ndarray | None,
    feature_names: Sequence[str] | None,
    frame_names: list[str] | None,
    target_name: str,
) -> tuple[int, list[str], _Target | None]:
    """The columns every rank agrees on. Collective over ``comm`` (one small allgather)."""
    kind = _target_kind(y)
    mine = (
        X.shape[1],
        frame_names,
        y is not None,
        kind if y is not None and y.shape[0] else None,
        None if y is None else str(y.dtype),
    )
    everyone = allgather_object(mine, comm)
    for what, index in (
        ("numbers of features", 0),
        ("feature names", 1),
        ("targets (y given or not)", 2),
    ):
        if len({repr(m[index]) for m in everyone}) > 1:
            listing = ", ".join(f"rank {r}: {m[index]}" for r, m in enumerate(everyone))
            raise ValueError(f"ranks have different {what} ({listing})")
    kinds = {m[3] for m in everyone if m[3] is not None}
    if len(kinds) > 1:
        raise ValueError(
            "ranks have targets of different kinds (numbers on some, text on others)"
        )
    n_features = everyone[0][0]
    names = (
        list(feature_names)
        if feature_names is not None
        else everyone[0][1] or [f"x{j}" for j in range(n_features)]
    )
    if len(names) != n_features:
        raise ValueError(
            f"feature_names has {len(names)} names for {n_features} features"
        )
    target = None
    if everyone[0][2]:
        kind = kinds.pop() if kinds else "numeric"
        dtypes = [m[4] for m in everyone if m[3] is not None] or [everyone[0][4]]
        target = _Target(target_name, kind, "str" if kind == "text" else dtypes[0])
    return n_features, [str(n) for n in names], target


class _FileBlocks:
    """This rank's rows of an HDF5 data set, streamed once per pass. Collective ``prepare``.

    Each pass streams the rows through :meth:`mpitrain.data.RowReader.stream`,
    whose ring of a few blocks bounds the memory whatever the slice's size;
    the second pass opens the files again (a streamed read goes once).  If
    every rank's slice takes no more memory than that ring, the rows are
    kept instead and read only once.  The choice depends only on the data
    set's size, so every rank makes the same one.
    """

    def __init__(
        self, open_reader: Callable[[], RowReader], first: RowReader, keep: bool
    ):
        self.open_reader, self.keep = open_reader, keep
        self.reader: RowReader | None = first
        self.read_seconds = 0.0

    def prepare(self, pass_index: int) -> None:
        """Start reading for pass 0 or 1. Collective when it opens the files again."""
        if pass_index == 0:
            self.reader.begin(keep_rows=self.keep)
        elif not self.keep:
            self.read_seconds += self.reader.read_seconds
            self.reader.close()
            self.reader = None  # released before the next open: never two rings at once
            self.reader = self.open_reader().begin(keep_rows=False)

    def __call__(self) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        for block in self.reader.stream():
            yield block.X, block.y

    def close(self) -> None:
        """Stop the reading thread (an error elsewhere must not leave it inside HDF5)."""
        if self.reader is not None:
            self.read_seconds += self.reader.read_seconds
            self.reader.close()


def _file_feature_names(path: str, x: str, n_features: int) -> list[str] | None:
    """``feature_names`` stored as an attribute of the feature dataset or the file, if it fits. Local."""
    import h5py

    with h5py.File(path, "r") as f:
        stored = f[x].attrs.get("feature_names", f.attrs.get("feature_names"))
    if stored is None:
        return None
    names = [
        n.decode() if isinstance(n, bytes) else str(n) for n in np.atleast_1d(stored)
    ]
    return names if len(names) == n_features else None


def describe_file(
    path: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    x: str = "X",
    y: str | None = None,
    comm: Intracomm | None = None,
    block_rows: int | None = None,
    quantiles: Sequence[float] = DEFAULT_QUANTILES,
    bins: int = HISTOGRAM_BINS,
    max_classes: int = MAX_CLASSES,
    feature_names: Sequence[str] | None = None,
) -> dict:
    """Describe an HDF5 data set, each rank streaming its own slice of rows.

    Collective over ``comm``.  The files' metadata are checked and agreed
    by :func:`mpitrain.data.open_rows`; then every rank streams its own
    contiguous rows (:func:`mpitrain.data.row_range`) in blocks, twice:
    moments and labels, then histograms for the quantiles.  Memory stays
    at a few blocks whatever the file size (slices no larger than that are
    kept and read once).  Quantiles are approximate, each with its
    guaranteed bound (see :func:`histogram_quantiles`).

    Parameters
    ----------
    path : str, path-like, or a sequence of them
        An HDF5 file, a glob pattern or a list of files (see
        :func:`~mpitrain.data.open_rows`).
    x : str, default="X"
        The 2-D numeric feature dataset.
    y : str, default=None
        A 1-D target or label dataset (numeric or text), if any.
    comm : mpi4py.MPI.Intracomm, default=None
    block_rows : int, default=None
        About how many rows to read per block (rounded to the file's
        chunks); ``None``: :data:`mpitrain.data.BLOCK_BYTES` of features.
    quantiles : sequence of float, default=DEFAULT_QUANTILES
    bins : int, default=HISTOGRAM_BINS
    max_classes : int, default=MAX_CLASSES
    feature_names : sequence of str, default=None
        ``None``: the ``feature_names`` attribute of the (first file's)
        feature dataset or file if it has one name per column, else
        ``x0, x1, ...``.

    Returns
    -------
    dict
        As :func:`describe_arrays`, with ``source`` the file (or files)
        and ``per_rank`` ``start``/``stop`` the rank's rows in the data set.

    Raises
    ------
    DistributedError
        The same on every rank if a file, a dataset or a read fails.
    """
    from mpitrain.data import BLOCK_BYTES, RING_BLOCKS, open_rows, row_range

    levels = _check_options(quantiles, bins, max_classes)
    if block_rows is not None and not (
        isinstance(block_rows, (int, np.integer)) and block_rows >= 1
    ):
        raise ValueError(f"block_rows must be a positive integer, got {block_rows!r}")
    comm = get_comm(comm)
    with library_comm(comm) as lib:

        def open_reader(block_bytes: int = BLOCK_BYTES) -> RowReader:
            return open_rows(
                path, x=x, y=y, comm=lib, labels=True, block_bytes=block_bytes
            )

        first = open_reader()
        row_bytes = first.x_dtype.itemsize * max(first.n_features, 1)
        block_bytes = BLOCK_BYTES if block_rows is None else int(block_rows) * row_bytes
        if block_bytes != BLOCK_BYTES:
            first = open_reader(block_bytes)  # never begun: nothing to close
        size = lib.Get_size()
        ranges = [row_range(first.n_rows, size, r) for r in range(size)]
        largest = max(b - a for a, b in ranges)
        keep = (
            largest
            * (row_bytes + (first.y_dtype.itemsize if first.y_dtype is not None else 0))
            <= RING_BLOCKS * block_bytes
        )
        blocks = _FileBlocks(lambda: open_reader(block_bytes), first, keep)
        try:
            n_features = first.n_features
            names: list[str] | None = (
                list(feature_names) if feature_names is not None else None
            )
            with collective_check(lib, f"reading {first.path}"):
                if names is None:
                    names = _file_feature_names(first.paths[0], x, n_features)
                elif len(names) != n_features:
                    raise ValueError(
                        f"feature_names has {len(names)} names for {n_features} features"
                    )
            names = names or [f"x{j}" for j in range(n_features)]
            target = None
            if y is not None:
                kind = "text" if first.y_dtype.kind == "O" else "numeric"
                target = _Target(
                    y, kind, "str" if kind == "text" else str(first.y_dtype)
                )
            source = (
                os.path.abspath(first.paths[0])
                if len(first.paths) == 1
                else [os.path.abspath(p) for p in first.paths]
            )
            return _describe_blocks(
                blocks,
                n_features=n_features,
                names=names,
                target=target,
                levels=levels,
                bins=bins,
                max_classes=max_classes,
                comm=lib,
                what=f"reading {first.path}",
                source=source,
                ranges=ranges,
            )
        finally:
            blocks.close()


# ----------------------------------------------------------------------------
# Rendering (pure)


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return f"{value:,}"
    return f"{value:.{digits}g}"


def _level_label(level: float) -> str:
    percent = 100 * level
    return (
        f"{percent:.0f}%" if abs(percent - round(percent)) < 1e-9 else f"{percent:g}%"
    )


def format_description(result: dict) -> str:
    """Render the result of :func:`describe_file` or :func:`describe_arrays` as text. Pure.

    A fixed-width table with one row per column (name, count, missing,
    mean, std, min, the quantiles, max, and the largest quantile bound),
    the class counts, the rows of each rank, and the warnings.
    """
    from mpitrain.report import format_table

    lines = []
    source = result.get("source")
    where = (
        ""
        if not source
        else f"{source}: "
        if isinstance(source, str)
        else f"{len(source)} files: "
    )
    lines.append(
        f"{where}{result['rows']:,} rows x {result['features']} features on {result['ranks']} rank(s); "
        f"{result['rows_with_missing']:,} rows with missing values"
    )
    levels = result["quantile_levels"]
    # The 0 and 1 levels are the min and max columns already.
    shown = [i for i, q in enumerate(levels) if 0 < q < 1]
    header = (
        ["column", "count", "missing", "mean", "std", "min"]
        + [_level_label(levels[i]) for i in shown]
        + ["max"]
    )
    approximate = result["quantiles_approximate"]
    if approximate:
        header.append("quantile ±")
    rows = []
    for c in result["columns"]:
        name = c["name"] + (" (target)" if c["role"] == "target" else "")
        row = [
            name,
            _fmt(c["count"]),
            _fmt(c["missing"]),
            _fmt(c["mean"]),
            _fmt(c["std"]),
            _fmt(c["min"]),
        ]
        row += [_fmt(c["quantiles"][i]) for i in shown] + [_fmt(c["max"])]
        if approximate:
            bounds = [
                c["quantile_bounds"][i]
                for i in shown
                if c["quantile_bounds"][i] is not None
            ]
            row.append(_fmt(max(bounds), 2) if bounds else "-")
        rows.append(row)
    lines += ["", format_table(header, rows)]
    missing_kinds = [
        f"{c['name']}: {c['nan']} NaN, {c['posinf']} +inf, {c['neginf']} -inf"
        for c in result["columns"]
        if c["posinf"] or c["neginf"]
    ]
    if missing_kinds:
        lines.append(
            "missing values include infinities (" + "; ".join(missing_kinds) + ")"
        )
    all_bounds = [
        b for c in result["columns"] for b in c["quantile_bounds"] if b is not None
    ]
    if approximate and any(all_bounds):
        lines.append(
            f"quantiles are approximate ({result['histogram_bins']}-bin histograms between each column's "
            "min and max): each is within the ± shown of the exact value (numpy's linear quantile)"
        )
    elif approximate:
        lines.append(
            "quantiles are exact: each fell on the first or last value of a histogram bin"
        )
    else:
        lines.append("quantiles are exact (numpy's linear quantile)")

    target = result.get("target")
    if target is not None:
        lines.append("")
        lines.append(
            f"target {target['name']!r} ({target['dtype']}): {target['rows']:,} rows, "
            f"{target['missing']:,} missing"
            + (f"; {target['note']}" if target["note"] else "")
        )
        if target["classes"] is not None:
            total = sum(target["counts"]) or 1
            lines.append(
                format_table(
                    ["class", "count", "share"],
                    [
                        [str(c), _fmt(n), f"{n / total:.3f}"]
                        for c, n in zip(target["classes"], target["counts"])
                    ],
                )
            )

    lines.append("")
    with_classes = target is not None and target["classes"] is not None
    header = [
        "rank",
        "rows",
        "first row",
        "missing values",
        "rows with missing",
        "max mean shift (se / std)",
    ]
    if with_classes:
        header.append("class TV distance")
    rows = []
    for p in result["per_rank"]:
        shift = (
            "-"
            if p["max_mean_shift_se"] is None
            else f"{p['max_mean_shift_se']:.2f} / {p['max_mean_shift_std']:.3f}"
        )
        row = [
            str(p["rank"]),
            _fmt(p["rows"]),
            _fmt(p["start"]),
            _fmt(p["missing_values"]),
            _fmt(p["rows_with_missing"]),
            shift,
        ]
        if with_classes:
            row.append(_fmt(p.get("class_tv_distance"), 3))
        rows.append(row)
    lines.append(format_table(header, rows))

    if result["warnings"]:
        lines.append("")
        lines += [f"warning: {w['message']}" for w in result["warnings"]]
    return "\n".join(lines)
