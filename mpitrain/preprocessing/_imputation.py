"""Cleaning rows split across ranks: drop or impute missing values, clip outliers.

The statistics that cleaning learns — a column's mean, median or most
frequent value, its 1% and 99% quantiles — must be those of *all* ranks'
rows, or every rank fills and clips its rows differently and the model
trained next mixes them without any error.  This module offers:

- :class:`SimpleImputer`: scikit-learn's ``SimpleImputer`` (same parameters,
  same ``statistics_``) fitted on all ranks' rows; ``estimator_`` is that
  fitted scikit-learn imputer, which pickles and transforms without MPI;
- :class:`QuantileClipper`: clips each column to its exact global
  quantiles;
- :func:`drop_missing`: drops rows with a missing value and reports, per
  rank, how many went (:class:`DroppedRows`, for the train report).

How the statistics are reduced (rows never move):

- mean: per-column sums and counts, one reduction (on rank 0, then
  broadcast, so every rank holds the same bits);
- median: the two middle order statistics, exact, found by the search over
  ordered float keys of :func:`mpitrain.describe.global_order_statistics`
  (10 to 18 small reductions), then averaged exactly as ``numpy.ma.median``
  (which scikit-learn uses) does;
- most frequent: each rank counts its distinct values per column, the
  (value, count) pairs are merged on rank 0 one column at a time, summed
  there and the winner broadcast.  Traffic is the number of *distinct*
  values, not rows: small for categorical or integer columns, but for a
  continuous column every value is distinct and the whole column travels
  (16 bytes a row) — the median is cheaper there.  Rank 0 receives them in
  chunks of at most about a million pairs (16 MB), one interval of values
  at a time (:func:`mpitrain.stats.merge_on_root`), so its memory stays
  bounded whatever the number of distinct values;
- quantile bounds: exact, as for the median.
"""

from __future__ import annotations

import numbers
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.base import OneToOneFeatureMixin, TransformerMixin
from sklearn.impute import SimpleImputer as _SkSimpleImputer
from sklearn.preprocessing import FunctionTransformer
from sklearn.utils.validation import FLOAT_DTYPES, check_is_fitted

from mpitrain.base import DistributedEstimator
from mpitrain.comm import (
    allreduce_identical,
    allreduce_sum,
    bcast_array,
    collective_check,
    get_comm,
    library_comm,
    require_same,
)
from mpitrain.data._missing import DroppedRows, _missing_labels, missing_row_mask
from mpitrain.stats import OrderStatistics, merge_on_root, quantiles_from
from mpitrain.utils.fixes import (
    Interval,
    MissingValues,
    StrOptions,
    constant_imputer_statistics,
)
from mpitrain.utils.validation import check_local_weights, check_local_X

if TYPE_CHECKING:  # pragma: no cover
    from mpi4py.MPI import Intracomm

__all__ = [
    "SimpleImputer",
    "QuantileClipper",
    "missing_row_mask",
    "DroppedRows",
    "drop_missing",
]


# ----------------------------------------------------------------------------
# Shared glue


def _is_nan_marker(value: Any) -> bool:
    """Whether ``missing_values`` means NaN (``np.nan`` or ``pandas.NA``)."""
    if isinstance(value, numbers.Real) and value != value:
        return True
    return type(value).__name__ == "NAType"


# ----------------------------------------------------------------------------
# Imputation


def _global_most_frequent(
    X: np.ndarray, missing: np.ndarray, comm: Intracomm
) -> np.ndarray:
    """The most frequent non-missing value of each column over all ranks (ties: the smallest).

    Collective over ``comm``.  Per column, every rank's (distinct value,
    count) pairs are merged on rank 0 by :func:`mpitrain.stats.merge_on_root`
    in ascending order of the values: one ``Gatherv`` when the column has
    few distinct values (at most :data:`mpitrain.stats.MERGE_CHUNK_ROWS`
    pairs over all ranks), else one per chunk of consecutive values, so rank
    0 holds one chunk (16 MB of pairs) however many distinct values there
    are.  The running winner (the largest total count; on a tie the smaller
    value, as scikit-learn) carries from chunk to chunk.  Then one
    broadcast of the winners.  NaN for columns without any value.
    """
    d = X.shape[1]
    # Pairs travel in one dtype: integers stay exact as int64/uint64, floats as float64.
    carrier = np.dtype(
        np.int64
        if X.dtype.kind == "i"
        else np.uint64
        if X.dtype.kind == "u"
        else np.float64
    )
    local = []
    with collective_check(comm, "counting distinct values"):
        for j in range(d):
            values, counts = np.unique(X[~missing[:, j], j], return_counts=True)
            local.append(
                np.column_stack([values.astype(carrier), counts.astype(carrier)])
            )
    winners = np.full(d, np.nan)
    for j in range(d):
        best: list = [None, 0]  # rank 0: the winner so far and its count

        def consume(chunk: np.ndarray) -> None:
            if not len(chunk):
                return
            values, inverse = np.unique(chunk[:, 0], return_inverse=True)
            totals = np.zeros(values.size, dtype=np.int64)
            np.add.at(totals, inverse, chunk[:, 1].astype(np.int64))
            # np.unique sorts and argmax takes the first maximum, chunks come in
            # ascending order and only a larger count replaces: ties go to the smallest.
            k = int(np.argmax(totals))
            if totals[k] > best[1]:
                best[:] = [values[k], int(totals[k])]

        merge_on_root(
            local[j],
            local[j][:, 0].astype(np.float64),
            consume,
            comm,
            what=f"counting the distinct values of column {j}",
        )
        local[j] = None  # free as we go
        if best[0] is not None:
            winners[j] = best[0]
    return bcast_array(winners, comm)


class SimpleImputer(TransformerMixin, DistributedEstimator):
    """Replace missing values by the mean, median or most frequent value of all ranks' rows.

    The same parameters and fitted attributes as
    :class:`sklearn.impute.SimpleImputer` fitted on all ranks' rows together,
    and ``estimator_`` is that fitted scikit-learn imputer (it pickles and
    transforms without MPI).  ``fit`` is collective; ``transform`` is local
    to the rows you pass.  Use it as a step of a pipeline whose final step
    is an mpitrain estimator (see :func:`mpitrain.preprocessing.make_pipeline`).

    As in scikit-learn, with ``missing_values=np.nan`` only NaN is missing
    and infinity is refused; a column without any observed value on any
    rank gets a NaN statistic and is dropped by ``transform`` (or kept and
    filled with 0 with ``keep_empty_features=True``).  ``"median"`` is
    exact (the middle order statistics of all rows, not an estimate).

    Differences from scikit-learn: numeric data only (no strings), dense
    only (no sparse matrices), and ``strategy`` cannot be a callable (a
    function of one rank's column is not a function of all rows).  The cost
    of ``"most_frequent"`` grows with the number of distinct values (see
    the module docstring).

    Parameters
    ----------
    missing_values : int, float or np.nan, default=np.nan
        The placeholder for missing values.
    strategy : {"mean", "median", "most_frequent", "constant"}, default="mean"
    fill_value : number, default=None
        With ``strategy="constant"``, the replacement (``None``: 0).
    copy : bool, default=True
        Passed to ``estimator_``.
    add_indicator : bool, default=False
        Append scikit-learn's ``MissingIndicator`` columns, for the columns
        with missing values on any rank.
    keep_empty_features : bool, default=False
    comm : mpi4py.MPI.Intracomm, default=None
        Communicator of the ranks that share the rows; ``None`` means
        ``COMM_WORLD``.  Resolved in ``fit``, never stored on ``estimator_``.

    Attributes
    ----------
    estimator_ : sklearn.impute.SimpleImputer
        The fitted imputer, identical on every rank.
    statistics_ : ndarray of shape (n_features,)
        The fill value of each column (dtype as in scikit-learn: float64
        for mean and most_frequent, the data's float dtype for median,
        object for constant).
    indicator_ : sklearn.impute.MissingIndicator or None
    n_features_in_ : int
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Only when every rank's ``X`` has the same string column names.
    n_rows_ : int
        Rows of all ranks together.
    """

    _parameter_constraints: dict = {
        "missing_values": [MissingValues(numeric_only=True)],
        "strategy": [StrOptions({"mean", "median", "most_frequent", "constant"})],
        "fill_value": "no_validation",
        "copy": ["boolean"],
        "add_indicator": ["boolean"],
        "keep_empty_features": ["boolean"],
        "comm": "no_validation",
    }

    def __init__(
        self,
        *,
        missing_values=np.nan,
        strategy="mean",
        fill_value=None,
        copy=True,
        add_indicator=False,
        keep_empty_features=False,
        comm=None,
    ):
        self.missing_values = missing_values
        self.strategy = strategy
        self.fill_value = fill_value
        self.copy = copy
        self.add_indicator = add_indicator
        self.keep_empty_features = keep_empty_features
        self.comm = comm

    _sklearn_class = _SkSimpleImputer
    _target = None

    def _input_checks(self) -> dict[str, Any]:
        return {
            "dtype": FLOAT_DTYPES if self.strategy in ("mean", "median") else "numeric",
            "ensure_all_finite": "allow-nan"
            if _is_nan_marker(self.missing_values)
            else True,
        }

    def _check_local_rows(self, X, y, sample_weight):
        try:
            X, y, sample_weight = super()._check_local_rows(X, y, sample_weight)
        except ValueError as exc:
            if "could not convert" in str(exc):
                raise ValueError(
                    f"Cannot use {self.strategy} strategy with non-numeric data:\n{exc}"
                ) from None
            raise
        if X.dtype.kind not in "iuf":
            raise ValueError(
                f"SimpleImputer does not support data with dtype {X.dtype}: "
                "mpitrain's SimpleImputer takes numeric arrays only"
            )
        return X, y, sample_weight

    def _missing(self, X: np.ndarray) -> np.ndarray:
        if _is_nan_marker(self.missing_values):
            return np.isnan(X) if X.dtype.kind == "f" else np.zeros(X.shape, dtype=bool)
        return X == self.missing_values

    def fit(self, X, y=None):
        """Compute the statistic of every column over all ranks' rows.

        Collective over ``comm``: every rank of ``comm`` must call ``fit``
        with its own rows (possibly none) and the same parameters.  An error
        in one rank's rows (infinity, non-numeric data) is raised on every
        rank, naming the ranks.

        Parameters
        ----------
        X : array-like of shape (n_local_rows, n_features)
        y : None
            Ignored.

        Returns
        -------
        self : object
        """
        with self._fitting(X) as fit:
            lib, X = fit.comm, fit.X
            # The widest dtype of the ranks that hold rows (an empty rank's says nothing).
            dtype, n_rows = fit.rows.dtype, fit.rows.n_rows
            with collective_check(lib, "finding missing values"):
                X = X.astype(dtype, copy=False)
                missing = self._missing(X)
                d = X.shape[1]
                counts = np.concatenate(
                    [(~missing).sum(axis=0), missing.any(axis=0)]
                ).astype(np.int64)
            allreduce_sum(counts, lib)  # integers: exact, identical everywhere
            present, any_missing = counts[:d], counts[d:] > 0
            statistics = self._statistics(X, missing, present, dtype, lib)
        self._set_fitted(statistics, any_missing, dtype, n_rows)
        return self

    def _statistics(
        self,
        X: np.ndarray,
        missing: np.ndarray,
        present: np.ndarray,
        dtype: np.dtype,
        comm: Intracomm,
    ) -> np.ndarray:
        """Each column's statistic, as scikit-learn stores it. Collective over ``comm``."""
        empty = present == 0
        if self.strategy == "constant":
            # As the installed scikit-learn stores them (they changed in 1.8).
            return constant_imputer_statistics(self._unfitted_estimator(), empty, dtype)
        if self.strategy == "mean":
            with collective_check(comm, "summing the columns"):
                sums = np.where(missing, 0.0, X).sum(axis=0, dtype=np.float64)
            allreduce_identical(sums, comm)
            with np.errstate(invalid="ignore", divide="ignore"):
                statistics = sums / present
        elif self.strategy == "median":
            order_stats = None
            with collective_check(comm, "sorting the columns"):
                order_stats = OrderStatistics(np.where(missing, np.nan, X))
            order_stats.reduce(comm)
            # numpy.ma.median: the mean of the two middle values (the middle one twice if odd).
            high = present // 2
            low = np.where(present % 2 == 1, high, high - 1)
            middle = order_stats.select(np.stack([low, high]))
            # In the data's own dtype, as numpy.ma.median sums and halves them.
            with np.errstate(invalid="ignore", over="ignore"):
                statistics = (
                    middle[0].astype(dtype) + middle[1].astype(dtype)
                ) / dtype.type(2)
        else:  # most_frequent
            statistics = _global_most_frequent(X, missing, comm)
        statistics[empty] = 0 if self.keep_empty_features else np.nan
        return statistics

    def _set_fitted(
        self,
        statistics: np.ndarray,
        any_missing: np.ndarray,
        dtype: np.dtype,
        n_rows: int,
    ) -> None:
        """Build ``estimator_`` and mirror its attributes. Local and deterministic."""
        imputer = self._unfitted_estimator()
        # scikit-learn sets its private dtypes and its MissingIndicator in fit:
        # fit it on two rows with the global dtype and the global missing
        # columns, then put the global statistics in place.  The same rows on
        # every rank, so a parameter error (a fill_value of the wrong type) is
        # raised identically everywhere.
        usable = (
            1
            if not _is_nan_marker(self.missing_values) and self.missing_values == 0
            else 0
        )
        rows = np.full((2, statistics.size), usable, dtype=dtype)
        if (
            any_missing.any()
        ):  # never for integer data with a NaN marker, which cannot hold NaN
            rows[1, any_missing] = (
                np.nan if _is_nan_marker(self.missing_values) else self.missing_values
            )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            imputer.fit(rows)
        imputer.statistics_ = statistics
        if hasattr(self, "feature_names_in_"):
            imputer.feature_names_in_ = self.feature_names_in_
        self.estimator_ = imputer
        self.statistics_ = statistics
        self.indicator_ = imputer.indicator_
        self.n_rows_ = n_rows

    def transform(self, X):
        """Impute the missing values of the given rows, locally (no communication).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        X_imputed : ndarray of shape (n_samples, n_features_out)
            Columns without any observed value in ``fit`` are dropped unless
            ``keep_empty_features``; indicator columns follow with
            ``add_indicator``.  A rank without rows gets (0, n_features_out).
        """
        return self._forward("transform", X)

    def fit_transform(self, X, y=None):
        """Fit on every rank's rows, then impute this rank's rows.

        Collective over ``comm``.  An error while imputing this rank's rows
        is agreed too, so a pipeline never leaves the other ranks waiting in
        the next step's collectives.
        """
        return self._fit_transform_agreed(X, y, what="imputing the rows")

    def inverse_transform(self, X):
        """Put the missing values back (needs ``add_indicator=True``). Local."""
        return self._forward("inverse_transform", X, same_columns=False)

    def get_feature_names_out(self, input_features=None):
        """Output feature names, as scikit-learn's imputer gives them. Local."""
        check_is_fitted(self)
        return self.estimator_.get_feature_names_out(input_features)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = _is_nan_marker(self.missing_values)
        tags.input_tags.sparse = False
        return tags


# ----------------------------------------------------------------------------
# Clipping


class QuantileClipper(OneToOneFeatureMixin, TransformerMixin, DistributedEstimator):
    """Clip each column to its exact quantiles over all ranks' rows.

    ``fit`` finds, for each column, ``np.nanquantile(all_rows, [lower,
    upper], axis=0)`` exactly (linear interpolation, NaN ignored) without
    moving rows (:func:`mpitrain.describe.global_quantiles`); ``transform``
    is ``np.clip`` to those bounds, local, and keeps NaN.  Infinity is
    refused, as scikit-learn's transformers do.  A column without any
    value on any rank gets NaN bounds and is left as it is.

    ``estimator_`` is a plain scikit-learn ``FunctionTransformer`` that
    applies ``np.clip`` with the fitted bounds: it pickles and transforms
    without MPI or mpitrain (save that one; this object keeps its ``comm``
    parameter).

    Parameters
    ----------
    lower : float in [0, 1], default=0.01
    upper : float in [0, 1], default=0.99
        Must not be below ``lower``.
    copy : bool, default=True
        ``False`` clips a float array in place.
    comm : mpi4py.MPI.Intracomm, default=None
        ``None`` means ``COMM_WORLD``.  Resolved in ``fit``.

    Attributes
    ----------
    estimator_ : sklearn.preprocessing.FunctionTransformer
        ``np.clip`` with the bounds (±inf for columns without values), in
        the data's float dtype; identical on every rank.
    lower_bounds_, upper_bounds_ : ndarray of float64, shape (n_features,)
        NaN for columns without any value.
    n_features_in_ : int
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Only when every rank's ``X`` has the same string column names.
    n_rows_ : int
        Rows of all ranks together.
    """

    _parameter_constraints: dict = {
        "lower": [Interval(numbers.Real, 0, 1, closed="both")],
        "upper": [Interval(numbers.Real, 0, 1, closed="both")],
        "copy": ["boolean"],
        "comm": "no_validation",
    }

    _target = None
    _x_checks = {"dtype": FLOAT_DTYPES, "ensure_all_finite": "allow-nan"}
    # Clipping is its own arithmetic (in place with copy=False), not estimator_'s.
    _forwarded = ()

    def __init__(self, lower=0.01, upper=0.99, *, copy=True, comm=None):
        self.lower = lower
        self.upper = upper
        self.copy = copy
        self.comm = comm

    def _check_params(self) -> None:
        if self.lower > self.upper:
            raise ValueError(f"lower={self.lower} must not be above upper={self.upper}")

    def fit(self, X, y=None):
        """Find the global quantiles of every column.

        Collective over ``comm`` (10 to 20 small reductions): every rank
        calls it with its own rows (possibly none).

        Parameters
        ----------
        X : array-like of shape (n_local_rows, n_features)
        y : None
            Ignored.

        Returns
        -------
        self : object
        """
        with self._fitting(X) as fit:
            lib = fit.comm
            dtype, n_rows = fit.rows.dtype, fit.rows.n_rows
            order_stats = None
            with collective_check(lib, "sorting the columns"):
                order_stats = OrderStatistics(fit.X)
            bounds = quantiles_from(
                order_stats.reduce(lib),
                np.array([self.lower, self.upper], dtype=np.float64),
            )
        self.lower_bounds_, self.upper_bounds_ = bounds[0].copy(), bounds[1].copy()
        self.n_rows_ = n_rows
        # Bounds rounded to float32 clip float32 rows exactly as the float64
        # bounds do (then rounded): the nearest float32 is the same either way.
        lower = np.where(
            np.isnan(self.lower_bounds_), -np.inf, self.lower_bounds_
        ).astype(dtype)
        upper = np.where(
            np.isnan(self.upper_bounds_), np.inf, self.upper_bounds_
        ).astype(dtype)
        clip = FunctionTransformer(
            np.clip,
            kw_args={"a_min": lower, "a_max": upper},
            check_inverse=False,
            feature_names_out="one-to-one",
        )
        clip.fit(np.zeros((1, self.n_features_in_), dtype=dtype))
        if hasattr(self, "feature_names_in_"):
            clip.feature_names_in_ = self.feature_names_in_
        self.estimator_ = clip
        return self

    def transform(self, X):
        """Clip the given rows to the fitted bounds, locally (no communication).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        ndarray of shape (n_samples, n_features)
            In ``X``'s float dtype; NaN stays NaN.
        """
        check_is_fitted(self, "estimator_")
        X = check_local_X(self, X, reset=False, copy=self.copy, **self._x_checks)
        lower = np.where(np.isnan(self.lower_bounds_), -np.inf, self.lower_bounds_)
        upper = np.where(np.isnan(self.upper_bounds_), np.inf, self.upper_bounds_)
        return np.clip(X, lower, upper, out=X)

    def fit_transform(self, X, y=None):
        """Fit on every rank's rows, then clip this rank's rows. Collective over ``comm``."""
        return self._fit_transform_agreed(X, y, what="clipping the rows")

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags


# ----------------------------------------------------------------------------
# Dropping rows


def _take(a: Any, keep: np.ndarray) -> Any:
    return a.iloc[keep] if hasattr(a, "iloc") else np.asarray(a)[keep]


def drop_missing(
    X: Any,
    y: Any = None,
    sample_weight: Any = None,
    *,
    comm: Intracomm | None = None,
    return_kept: bool = False,
) -> tuple:
    """Drop this rank's rows with a missing value, and count them on all ranks.

    A row is dropped if ``X`` has NaN or ±inf in it, or its target is
    missing (NaN or ±inf for numbers, ``None`` for text).  Sample weights
    are checked as every estimator checks them
    (:func:`mpitrain.utils.validation.check_local_weights`), then subset.

    Collective over ``comm`` (an agreement, a check of the number of
    features, one ``Allgather`` of the counts).  Every rank calls it with
    its own rows, possibly none.

    Parameters
    ----------
    X : array-like of shape (n_local_rows, n_features)
    y : array-like of shape (n_local_rows,) or (n_local_rows, n_targets), default=None
    sample_weight : array-like of shape (n_local_rows,), default=None
    comm : mpi4py.MPI.Intracomm, default=None
    return_kept : bool, default=False
        Also return the mask of this rank's kept rows, to subset other
        per-row arrays (a test-set mask, ids) alike.

    Returns
    -------
    X, y, sample_weight
        The kept rows (the inputs themselves where this rank dropped
        nothing; pandas objects stay pandas objects).
    dropped : DroppedRows
        Identical on every rank.
    kept : ndarray of bool, shape (n_local_rows,)
        Only with ``return_kept=True``.

    Raises
    ------
    DistributedError
        The same on every rank if some rank's arrays have wrong shapes.
    ValueError
        If the ranks have different numbers of features.
    """
    comm = get_comm(comm)
    with library_comm(comm) as lib:
        mask = by_column = None
        missing_target = 0
        with collective_check(lib, "dropping rows with missing values"):
            Xa = np.asarray(X)
            mask = missing_row_mask(Xa, y)
            # The estimators' own check and message; the user's object is what is subset.
            check_local_weights(sample_weight, Xa.shape[0])
            by_column = (
                (~np.isfinite(Xa)).sum(axis=0)
                if Xa.dtype.kind in "fc"
                else np.zeros(Xa.shape[1], dtype=np.int64)
            )
            if y is not None:
                missing_target = int(_missing_labels(np.asarray(y)).sum())
        require_same(lib, "features", Xa.shape[1])
        dropped = DroppedRows.gather(
            int(mask.sum()),
            Xa.shape[0],
            lib,
            missing_by_column=by_column,
            missing_target=missing_target,
        )
    keep = ~mask
    if not mask.any():
        result = (X, y, sample_weight, dropped)
    else:
        result = (
            _take(X, keep),
            None if y is None else _take(y, keep),
            sample_weight
            if sample_weight is None or isinstance(sample_weight, numbers.Number)
            else _take(sample_weight, keep),
            dropped,
        )
    return (*result, keep) if return_kept else result
