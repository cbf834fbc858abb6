"""Preprocessing that is the same on every rank: global scaling, safe pipelines.

A transformer that learns from the rows it sees (a scaler, a quantile
binner, PCA) gives every rank different parameters when each rank fits it
on its own slice, and the model trained after it then mixes differently
scaled rows without any error.  This module offers:

- :class:`StandardScaler`: the per-column mean and variance of *all* ranks'
  rows, pooled by reduction, so ``estimator_`` is scikit-learn's
  ``StandardScaler`` fitted on all rows together;
- :func:`check_pipeline` and :func:`make_pipeline`: refuse a pipeline that
  would fit a data-dependent scikit-learn step on each rank's rows;
- ``PolynomialFeatures``, re-exported from scikit-learn: its fit depends
  only on the number of columns, so it is row-local and safe across ranks.

Numerical stability: each rank summarises its rows in blocks with
:class:`mpitrain.stats.ColumnStats` (each block centred on its own mean,
with the rounding correction scikit-learn uses), and blocks and ranks are
pooled with the exact formula ``M2 = Σ_r M2_r + Σ_r W_r (m_r - m)²``: one
reduction of counts and sums for the global mean ``m``, then one of the
centred sums.  ``E[x²] - E[x]²`` is never formed, so a column with mean 1e6
and unit spread keeps its variance.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import sparse
from sklearn import preprocessing as _skp
from sklearn.base import OneToOneFeatureMixin, TransformerMixin
from sklearn.preprocessing import (
    PolynomialFeatures,  # row-local: fit only counts the columns, safe across ranks
)

from mpitrain.base import DistributedEstimator
from mpitrain.comm import collective_check
from mpitrain.stats import ColumnStats, allreduce_column_stats
from mpitrain.utils.fixes import (
    handle_zeros_in_scale,
    is_constant_feature,
    scaler_count_dtype,
)
from mpitrain.utils.validation import FLOAT_DTYPES

if TYPE_CHECKING:  # pragma: no cover
    from mpi4py.MPI import Intracomm
    from sklearn.pipeline import Pipeline

__all__ = [
    "StandardScaler",
    "PolynomialFeatures",
    "check_pipeline",
    "make_pipeline",
]


# ----------------------------------------------------------------------------
# Estimator


class StandardScaler(OneToOneFeatureMixin, TransformerMixin, DistributedEstimator):
    """Standardize features with the mean and variance of all ranks' rows.

    The same parameters and fitted attributes as
    :class:`sklearn.preprocessing.StandardScaler` fitted on all ranks' rows
    together; ``estimator_`` is that fitted scikit-learn scaler (it pickles
    and transforms without MPI).  ``fit`` is collective; ``transform`` and
    ``inverse_transform`` are local to the rows you pass.  Use it as the
    first step of a pipeline whose final step is an mpitrain estimator (see
    :func:`make_pipeline`).

    NaNs are ignored in ``fit`` and kept by ``transform``, as scikit-learn
    does: each column's mean and variance use its non-NaN values only, so
    ``n_samples_seen_`` is an array when the columns' counts differ.
    Infinity is refused.  Sparse CSR/CSC input needs ``with_mean=False``.
    Unlike scikit-learn, negative sample weights are refused: pooled
    variances are only guaranteed non-negative with non-negative weights.

    Parameters
    ----------
    copy : bool, default=True
        Passed to ``estimator_``: ``transform`` copies its input.
    with_mean : bool, default=True
        Center the data before scaling.
    with_std : bool, default=True
        Scale the data to unit variance.
    comm : mpi4py.MPI.Intracomm, default=None
        Communicator of the ranks that share the rows; ``None`` means
        ``COMM_WORLD``.  Resolved in ``fit``, never stored on ``estimator_``.

    Attributes
    ----------
    estimator_ : sklearn.preprocessing.StandardScaler
        The fitted scaler, identical on every rank.
    mean_ : ndarray of shape (n_features,) or None
    var_ : ndarray of shape (n_features,) or None
    scale_ : ndarray of shape (n_features,) or None
        Zero-variance columns get scale 1, as in scikit-learn.
    n_samples_seen_ : int or ndarray of shape (n_features,)
        Rows (total weight, if weighted) of all ranks with a non-NaN value.
    n_features_in_ : int
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Only when every rank's ``X`` has the same string column names.
    n_rows_ : int
        Rows of all ranks together.
    """

    _sklearn_class = _skp.StandardScaler
    _parameter_constraints = {
        **_skp.StandardScaler._parameter_constraints,
        "comm": "no_validation",
    }
    _target = None
    _x_checks = {
        "accept_sparse": ("csr", "csc"),
        "dtype": FLOAT_DTYPES,
        "ensure_all_finite": "allow-nan",
    }

    def __init__(self, *, copy=True, with_mean=True, with_std=True, comm=None):
        self.copy = copy
        self.with_mean = with_mean
        self.with_std = with_std
        self.comm = comm

    def _check_local_rows(self, X, y, sample_weight):
        X, y, sample_weight = super()._check_local_rows(X, y, sample_weight)
        if sparse.issparse(X) and self.with_mean:
            raise ValueError(
                "Cannot center sparse matrices: pass `with_mean=False` instead."
            )
        if sample_weight is not None:
            # Rounded to X's dtype first, as scikit-learn does, then summed in float64.
            sample_weight = sample_weight.astype(X.dtype).astype(np.float64)
        return X, y, sample_weight

    def fit(self, X, y=None, sample_weight=None):
        """Compute the global mean and standard deviation of every column.

        Collective over ``comm``: every rank of ``comm`` must call ``fit``
        with its own rows (possibly none) and the same parameters.  An error
        in one rank's rows (infinity, a bad weight, sparse input with
        ``with_mean=True``) is raised on every rank, naming the ranks.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_local_rows, n_features)
        y : None
            Ignored.
        sample_weight : array-like of shape (n_local_rows,), default=None

        Returns
        -------
        self : object
        """
        with self._fitting(X, None, sample_weight) as fit:
            X, w = fit.X, fit.sample_weight
            local = None
            with collective_check(fit.comm, "summarising the columns"):
                # With neither centring nor scaling, scikit-learn counts dense rows
                # unweighted (and sparse ones weighted); follow it.
                counts_only = not (
                    self.with_mean or self.with_std
                ) and not sparse.issparse(X)
                local = ColumnStats.of_rows(X, None if counts_only else w)
            pooled = allreduce_column_stats(local, fit.comm, with_m2=self.with_std)
        # Everything below uses only the identical reduced values: no more communication.
        # Weighted counts take X's dtype in scikit-learn; ranks may differ: the widest.
        self._set_fitted(pooled, fit.rows.dtype if fit.rows.weighted else None)
        return self

    def _set_fitted(self, pooled: ColumnStats, weighted_dtype: np.dtype | None) -> None:
        """Build ``estimator_`` and mirror its attributes. Local and deterministic."""
        # The installed scikit-learn's dtype (it changed in 1.8).
        seen = scaler_count_dtype(
            with_mean=self.with_mean,
            with_std=self.with_std,
            weighted=weighted_dtype is not None,
            dtype=np.float64 if weighted_dtype is None else weighted_dtype,
        )
        count: Any = (
            np.rint(pooled.weight) if seen.kind in "iu" else pooled.weight
        ).astype(seen)
        if count.max() == count.min():
            count = count[0]  # scikit-learn's scalar when no column has missing values
        mean = var = scale = None
        if self.with_mean or self.with_std:
            # A column without any value has no mean: NaN, as scikit-learn's 0/0 gives.
            mean = np.where(pooled.weight > 0, pooled.mean, np.nan)
        if self.with_std:
            var = pooled.variance()
            # scikit-learn's own rule for "constant up to rounding" gives scale 1.
            scale = handle_zeros_in_scale(
                np.sqrt(var),
                copy=False,
                constant_mask=is_constant_feature(var, mean, count),
            )
        scaler = _skp.StandardScaler(
            copy=self.copy, with_mean=self.with_mean, with_std=self.with_std
        )
        scaler.mean_, scaler.var_, scaler.scale_, scaler.n_samples_seen_ = (
            mean,
            var,
            scale,
            count,
        )
        scaler.n_features_in_ = self.n_features_in_
        if hasattr(self, "feature_names_in_"):
            scaler.feature_names_in_ = self.feature_names_in_
        self.estimator_ = scaler
        self.mean_, self.var_, self.scale_, self.n_samples_seen_ = (
            mean,
            var,
            scale,
            count,
        )
        self.n_rows_ = pooled.rows

    def transform(self, X, copy=None):
        """Standardize the given rows, locally (no communication).

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
        copy : bool, default=None
            Copy the input; ``None`` means the ``copy`` parameter.

        Returns
        -------
        X_tr : {ndarray, sparse matrix} of shape (n_samples, n_features)
        """
        return self._forward("transform", X, copy=copy)

    def fit_transform(self, X, y=None, sample_weight=None):
        """Fit on every rank's rows, then standardize this rank's rows.

        Collective over ``comm``.  An error while scaling this rank's rows
        is agreed too, so a pipeline never leaves the other ranks waiting in
        the next step's collectives.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_local_rows, n_features)
        y : None
            Ignored.
        sample_weight : array-like of shape (n_local_rows,), default=None

        Returns
        -------
        X_tr : {ndarray, sparse matrix} of shape (n_local_rows, n_features)
        """
        return self._fit_transform_agreed(
            X, y, what="scaling the rows", sample_weight=sample_weight
        )

    def inverse_transform(self, X, copy=None):
        """Undo the scaling of the given rows, locally (no communication).

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
        copy : bool, default=None
            Copy the input; ``None`` means the ``copy`` parameter.

        Returns
        -------
        X_original : {ndarray, sparse matrix} of shape (n_samples, n_features)
        """
        return self._forward("inverse_transform", X, same_columns=False, copy=copy)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        tags.input_tags.sparse = not self.with_mean
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags


# ----------------------------------------------------------------------------
# Pipelines that cannot scale per rank


def _row_local_transformers() -> frozenset[type]:
    """scikit-learn transformers whose fitted state does not depend on the rows.

    An allow-list: a transformer missing here is refused, which is the safe
    mistake.  Exact classes only, since a subclass may learn in ``fit``.
    """
    from sklearn.feature_extraction import FeatureHasher
    from sklearn.feature_extraction.text import HashingVectorizer

    return frozenset(
        {
            PolynomialFeatures,  # fit only counts the columns
            _skp.FunctionTransformer,  # row-local if the user's function is
            _skp.Normalizer,  # each row by its own norm
            _skp.Binarizer,  # a fixed threshold
            FeatureHasher,  # stateless hashing
            HashingVectorizer,
        }
    )


def _replacements() -> dict[type, str]:
    """Data-dependent scikit-learn steps that mpitrain can fit globally instead."""
    from sklearn import impute, linear_model

    return {
        _skp.StandardScaler: "mpitrain.preprocessing.StandardScaler",
        impute.SimpleImputer: "mpitrain.preprocessing.SimpleImputer",
        linear_model.LinearRegression: "mpitrain.linear_model.LinearRegression",
        linear_model.Ridge: "mpitrain.linear_model.Ridge",
    }


def _is_mpitrain(step: Any) -> bool:
    return type(step).__module__.split(".")[0] == "mpitrain"


def _walk_steps(
    estimator: Any, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every leaf step with its path, through Pipeline, FeatureUnion and ColumnTransformer."""
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import FeatureUnion, Pipeline

    if estimator is None or isinstance(estimator, str):  # "passthrough", "drop"
        return
    if isinstance(estimator, Pipeline):
        children = [(name, step) for name, step in estimator.steps]
    elif isinstance(estimator, FeatureUnion):
        children = list(estimator.transformer_list)
    elif isinstance(estimator, ColumnTransformer):
        children = [(name, step) for name, step, _ in estimator.transformers]
        children.append(("remainder", estimator.remainder))
    else:
        yield path, estimator
        return
    for name, child in children:
        yield from _walk_steps(child, path + (name,))


def check_pipeline(estimator: Any, *, allow: Iterable[type] = ()) -> Any:
    """Refuse a pipeline that would fit data-dependent steps on each rank's rows.

    Local (no communication); every rank sees the same pipeline, so every
    rank raises the same error.  A step passes if it comes from mpitrain
    (fitted over all ranks), or is a scikit-learn transformer on the
    allow-list of row-local ones (``PolynomialFeatures``,
    ``FunctionTransformer``, ``Normalizer``, ``Binarizer``, ``FeatureHasher``,
    ``HashingVectorizer``), or its class is in ``allow``.  Anything else —
    ``StandardScaler``, ``MinMaxScaler``, ``RobustScaler``, ``MaxAbsScaler``,
    ``SplineTransformer``, ``KBinsDiscretizer``, ``QuantileTransformer``,
    ``PowerTransformer``, ``PCA``, ``SimpleImputer``, a scikit-learn final
    estimator — would learn different parameters on each rank, and is
    refused.  Nested ``Pipeline``, ``FeatureUnion`` and ``ColumnTransformer``
    are searched.

    Parameters
    ----------
    estimator : estimator or Pipeline
    allow : iterable of type, default=()
        Further classes that you know to be row-local.

    Returns
    -------
    estimator
        The same object, unchanged.

    Raises
    ------
    ValueError
        Naming every refused step and, where there is one, its mpitrain
        replacement.
    """
    allowed = _row_local_transformers() | frozenset(allow)
    replacements = _replacements()
    problems = []
    for path, step in _walk_steps(estimator):
        if _is_mpitrain(step) or type(step) in allowed:
            continue
        cls = type(step)
        name = "/".join(path) or cls.__name__
        where = f"step '{name}' ({cls.__module__.split('._')[0]}.{cls.__name__})"
        if cls in replacements:
            fix = f"use {replacements[cls]} instead, which fits over all ranks' rows"
        else:
            fix = (
                f"mpitrain has no distributed {cls.__name__}; fit it on all rows before splitting them, "
                f"or pass allow=[{cls.__name__}] if its fit really does not depend on the rows"
            )
        problems.append(
            f"  {where} learns from the rows it is fitted on, so each rank would fit "
            f"different parameters: {fix}"
        )
    if problems:
        raise ValueError(
            "this pipeline cannot be fitted on rows split across ranks:\n"
            + "\n".join(problems)
        )
    return estimator


def make_pipeline(
    *steps: Any, comm: Intracomm | None = None, allow: Iterable[type] = ()
) -> Pipeline:
    """A scikit-learn ``Pipeline`` that is safe to fit on rows split across ranks.

    Like :func:`sklearn.pipeline.make_pipeline`, after :func:`check_pipeline`.
    Local (no communication); the returned pipeline's ``fit`` is collective
    over the communicator of its mpitrain steps.

    Parameters
    ----------
    *steps : estimators
    comm : mpi4py.MPI.Intracomm, default=None
        Set as ``comm`` on every mpitrain step that has one (nested ones
        too); ``None`` leaves each step's own ``comm``.
    allow : iterable of type, default=()
        Further classes that you know to be row-local (see :func:`check_pipeline`).

    Returns
    -------
    sklearn.pipeline.Pipeline

    Raises
    ------
    ValueError
        If a step would learn from one rank's rows only, or an mpitrain step
        already has a different ``comm``.
    """
    from sklearn.pipeline import make_pipeline as sk_make_pipeline

    pipeline = sk_make_pipeline(*steps)
    check_pipeline(pipeline, allow=allow)
    if comm is not None:
        for path, step in _walk_steps(pipeline):
            if not (_is_mpitrain(step) and "comm" in step.get_params(deep=False)):
                continue
            current = step.get_params(deep=False)["comm"]
            # Two communicators in one pipeline would make its steps' collectives disagree.
            if current is not None and current is not comm:
                raise ValueError(
                    f"step '{'/'.join(path)}' already has a different comm; pass comm once"
                )
            step.set_params(comm=comm)
    return pipeline
