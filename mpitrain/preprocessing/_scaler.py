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

Numerical stability: each rank centres its rows on its own per-column mean
(two passes over the rows, with the rounding correction scikit-learn uses),
and the ranks are pooled with the exact formula
``M2 = Σ_r M2_r + Σ_r W_r (m_r - m)²``: one reduction of counts and sums for
the global mean ``m``, then one of the centred sums.  ``E[x²] - E[x]²`` is
never formed, so a column with mean 1e6 and unit spread keeps its variance.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import sparse
from sklearn import preprocessing as _skp
from sklearn.base import BaseEstimator, OneToOneFeatureMixin, TransformerMixin
from sklearn.preprocessing import (
    PolynomialFeatures,  # row-local: fit only counts the columns, safe across ranks
)
from sklearn.utils.validation import (
    _check_sample_weight,
    check_is_fitted,
    validate_data,
)

from mpitrain.comm import allgather_object, collective_check, get_comm, library_comm
from mpitrain.stats import ColumnMoments, allreduce_moments, local_moments
from mpitrain.utils.fixes import handle_zeros_in_scale, is_constant_feature, num_samples

if TYPE_CHECKING:  # pragma: no cover
    from mpi4py.MPI import Intracomm
    from sklearn.pipeline import Pipeline

__all__ = [
    "StandardScaler",
    "check_pipeline",
    "make_pipeline",
]


# ----------------------------------------------------------------------------
# Estimator


def _local_sample_weight(sample_weight: Any, X: Any) -> np.ndarray:
    """scikit-learn's weight checks, except that a rank may hold no rows. Local."""
    if X.shape[0] == 0:
        w = np.asarray(sample_weight, dtype=np.float64).reshape(-1)
        if w.shape != (0,):
            raise ValueError(f"sample_weight.shape == {w.shape}, expected (0,)!")
        return w
    # Rounded to X's dtype first, as scikit-learn does, then summed in float64.
    w = _check_sample_weight(
        sample_weight,
        X,
        dtype=X.dtype,
        ensure_non_negative=True,
        allow_all_zero_weights=True,
    ).astype(np.float64)
    if not np.isfinite(w).all():
        raise ValueError("sample_weight must be finite")
    return w


class StandardScaler(OneToOneFeatureMixin, TransformerMixin, BaseEstimator):
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

    _parameter_constraints = {
        **_skp.StandardScaler._parameter_constraints,
        "comm": "no_validation",
    }

    def __init__(self, *, copy=True, with_mean=True, with_std=True, comm=None):
        self.copy = copy
        self.with_mean = with_mean
        self.with_std = with_std
        self.comm = comm

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
        # Parameters are the same on every rank, so a bad one fails everywhere at once.
        self._validate_params()
        comm = get_comm(self.comm)
        with library_comm(comm) as lib:
            with collective_check(lib, "checking the input"):
                X = validate_data(
                    self,
                    X,
                    accept_sparse=("csr", "csc"),
                    dtype=[np.float64, np.float32],
                    ensure_all_finite="allow-nan",
                    ensure_min_samples=0,
                )
                if sparse.issparse(X) and self.with_mean:
                    raise ValueError(
                        "Cannot center sparse matrices: pass `with_mean=False` instead."
                    )
                w = (
                    None
                    if sample_weight is None
                    else _local_sample_weight(sample_weight, X)
                )
                # With neither centring nor scaling, scikit-learn counts dense rows
                # unweighted (and sparse ones weighted); follow it.
                counts_only = not (
                    self.with_mean or self.with_std
                ) and not sparse.issparse(X)
                local = local_moments(X, None if counts_only else w)
            count_dtype = self._agree_on_columns(lib, X, weighted=w is not None)
            pooled = allreduce_moments(local, lib, with_m2=self.with_std)
        # Everything below uses only the identical reduced values: no more communication.
        if pooled.n_rows == 0:
            raise ValueError(
                f"no rows to fit: all {comm.Get_size()} ranks have 0 samples "
                "(Found array with 0 sample(s) on every rank)"
            )
        if w is not None and not pooled.weight.sum() > 0:
            raise ValueError("the sample weights of all rows sum to zero")
        self._set_fitted(pooled, count_dtype if w is not None else None)
        return self

    def _agree_on_columns(self, lib: Intracomm, X: Any, weighted: bool) -> np.dtype:
        """Check that every rank has the same columns and names. Collective over ``lib``.

        Returns the dtype of weighted counts: scikit-learn gives them X's
        dtype, and ranks may differ, so the widest is taken.
        """
        names = getattr(self, "feature_names_in_", None)
        mine = (
            X.shape[1],
            None if names is None else tuple(names),
            X.dtype.str,
            weighted,
        )
        everyone = allgather_object(mine, lib)
        for what, index in (("features", 0), ("feature names", 1)):
            if len({m[index] for m in everyone}) > 1:
                listing = ", ".join(
                    f"rank {r}: {m[index]}" for r, m in enumerate(everyone)
                )
                raise ValueError(f"ranks have different {what} ({listing})")
        if len({m[3] for m in everyone}) > 1:
            which = [r for r, m in enumerate(everyone) if m[3]]
            raise ValueError(
                f"sample_weight was given on ranks {which} only; give it on every rank or none"
            )
        return np.result_type(*[np.dtype(m[2]) for m in everyone])

    def _set_fitted(
        self, pooled: ColumnMoments, weighted_dtype: np.dtype | None
    ) -> None:
        """Build ``estimator_`` and mirror its attributes. Local and deterministic."""
        # scikit-learn's dtypes: float64 counts whenever moments are computed;
        # otherwise int64, or X's dtype when weighted.
        if self.with_mean or self.with_std:
            count: Any = pooled.weight.copy()
        elif weighted_dtype is None:
            count = np.rint(pooled.weight).astype(np.int64)
        else:
            count = pooled.weight.astype(weighted_dtype)
        if count.max() == count.min():
            count = count[0]  # scikit-learn's scalar when no column has missing values
        mean = var = scale = None
        if self.with_mean or self.with_std:
            mean = pooled.mean
        if self.with_std:
            with np.errstate(invalid="ignore", divide="ignore"):
                var = pooled.m2 / pooled.weight
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
        self.n_rows_ = pooled.n_rows

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
        check_is_fitted(self)
        empty = self._empty_rows(X)
        return self.estimator_.transform(X, copy=copy) if empty is None else empty

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
        self.fit(X, y, sample_weight=sample_weight)
        out = None
        with library_comm(get_comm(self.comm)) as lib:
            with collective_check(lib, "scaling the rows"):
                out = self.transform(X)
        return out

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
        check_is_fitted(self)
        empty = self._empty_rows(X)
        return (
            self.estimator_.inverse_transform(X, copy=copy) if empty is None else empty
        )

    def _empty_rows(self, X):
        """``X`` checked and copied if it has no rows (scikit-learn refuses them), else ``None``."""
        if num_samples(X) != 0:
            return None
        # A rank without rows still passes them along a pipeline, as (0, n_features).
        return validate_data(
            self,
            X,
            reset=False,
            accept_sparse="csr",
            dtype=[np.float64, np.float32],
            ensure_all_finite="allow-nan",
            ensure_min_samples=0,
            copy=True,
        )

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
