"""A thin base for distributed estimators: the fit preamble once, prediction forwarded once.

Every mpitrain estimator is a scikit-learn estimator whose ``fit`` is
collective over a communicator and whose fitted result is a plain
scikit-learn estimator in ``estimator_`` (it pickles and predicts without
MPI).  :class:`DistributedEstimator` holds what they all share:

- the collective preamble of ``fit`` (:meth:`~DistributedEstimator._fitting`):
  validate the parameters (the same on every rank, so a bad one fails
  everywhere at once), resolve ``comm`` (``None`` means ``COMM_WORLD``),
  duplicate it into a library communicator, check this rank's rows with
  :func:`mpitrain.utils.validation.check_local_rows` inside a collective
  check, then agree on the rows of all ranks
  (:func:`mpitrain.utils.validation.agree_rows`);
- prediction methods forwarded to ``estimator_`` (``predict``,
  ``predict_proba``, ``predict_log_proba``, ``decision_function``,
  ``transform``, ``inverse_transform``): each exists exactly when the
  wrapped scikit-learn estimator has it (``hasattr`` answers as
  scikit-learn's ``available_if`` does, before and after ``fit``), checks
  the rows as ``fit`` did, and works on a rank without rows too.  They are
  local: no communication.  ``score`` comes from scikit-learn's mixins,
  through ``predict``.

``comm`` stays a parameter, resolved in ``fit``; no communicator is ever
stored on the estimator.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import sparse
from sklearn.base import BaseEstimator
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import check_is_fitted

from mpitrain.comm import collective_check, get_comm, library_comm
from mpitrain.utils.fixes import sklearn_params
from mpitrain.utils.validation import (
    FLOAT_DTYPES,
    GlobalRows,
    agree_parameters,
    agree_rows,
    check_local_rows,
    check_local_X,
)

if TYPE_CHECKING:  # pragma: no cover
    from mpi4py.MPI import Intracomm

__all__ = ["LocalFit", "DistributedEstimator", "strategy_name"]

#: The methods :class:`DistributedEstimator` can forward to ``estimator_``.
FORWARDED = (
    "predict",
    "predict_proba",
    "predict_log_proba",
    "decision_function",
    "transform",
    "inverse_transform",
)


@dataclass
class LocalFit:
    """This rank's checked input and the library communicator, inside :meth:`DistributedEstimator._fitting`.

    Attributes
    ----------
    comm : mpi4py.MPI.Intracomm
        The library communicator (a duplicate of the user's, freed when the
        ``with`` block ends): every collective of the fit goes on it.
    X, y, sample_weight
        This rank's checked rows (``y`` is ``None`` for transformers,
        ``sample_weight`` when not given).
    rows : GlobalRows
        What all ranks agreed on: rows per rank, total weight, dtype.
    """

    comm: Intracomm
    X: Any
    y: np.ndarray | None
    sample_weight: np.ndarray | None
    rows: GlobalRows


def _wrapped_has(method: str):
    """``available_if`` check: the wrapped scikit-learn estimator has ``method``."""

    def check(self: DistributedEstimator) -> bool:
        if method not in self._forwarded:
            return False
        wrapped = getattr(self, "estimator_", None)
        if wrapped is None:
            wrapped = self._unfitted_estimator()
        return hasattr(wrapped, method)

    return check


def _forwarded_method(
    method: str, summary: str, returns: str, *, same_columns: bool = True
) -> Any:
    """A method that forwards to ``estimator_.<method>``, present when that one is."""

    def forwarded(self: DistributedEstimator, X: Any) -> Any:
        return self._forward(method, X, same_columns=same_columns)

    forwarded.__name__ = method
    forwarded.__qualname__ = f"DistributedEstimator.{method}"
    forwarded.__doc__ = f"""{summary}, locally (no communication).

        Parameters
        ----------
        X : {{array-like, sparse matrix}} of shape (n_samples, n_features)

        Returns
        -------
        {returns}
        """
    return available_if(_wrapped_has(method))(forwarded)


def _one_row_like(X: Any) -> Any:
    """One row of zeros of ``X``'s type, dtype and width. Pure."""
    if sparse.issparse(X):
        return type(X)((1, X.shape[1]), dtype=X.dtype)
    return np.zeros((1, X.shape[1]), dtype=X.dtype)


class DistributedEstimator(BaseEstimator):
    """Base of mpitrain's estimators: collective ``fit`` preamble, local forwarded prediction.

    Subclasses set the class attributes below, call
    :meth:`_fitting` in ``fit`` and leave a fitted scikit-learn estimator in
    ``estimator_``.  Put scikit-learn's mixins (``RegressorMixin``,
    ``ClassifierMixin``, ``TransformerMixin``) before this class.
    """

    #: The scikit-learn estimator that ``estimator_`` is.
    _sklearn_class: type
    #: Parameters of ours that the scikit-learn estimator does not take.
    _own_params: tuple[str, ...] = ("comm",)
    #: The target ``fit`` takes: "continuous", "classes" or None (transformers).
    _target: str | None = "continuous"
    #: Whether a 2-D continuous target is kept (several outputs).
    _multi_output: bool = False
    #: How rows are checked in ``fit`` and when predicting (see check_local_X).
    _x_checks: dict[str, Any] = {"dtype": FLOAT_DTYPES}
    #: Which of FORWARDED this estimator forwards to ``estimator_``.
    _forwarded: tuple[str, ...] = FORWARDED
    #: How the ranks' work is combined, for estimators without a ``strategy``
    #: parameter (forests: "merged", XGBoost: "collective"); see strategy_name.
    _combination: str = "exact"

    # -- parameters -----------------------------------------------------------

    def __sklearn_clone__(self) -> DistributedEstimator:
        """``sklearn.base.clone``, sharing the communicator. Local.

        A communicator is a handle on a group of processes: it cannot be
        deep-copied (``clone`` copies other parameters that way), and the
        clone is meant to run on the same ranks.
        """
        comm = self.comm
        self.comm = None
        try:
            fresh = super().__sklearn_clone__()
        finally:
            self.comm = comm
        return fresh.set_params(comm=comm)

    def _sklearn_params(self) -> dict[str, Any]:
        """The parameters the installed scikit-learn estimator takes. Local.

        Ours, without :attr:`_own_params`; one the installed scikit-learn
        does not have yet is left out while at its default (see
        :func:`mpitrain.utils.fixes.sklearn_params`).
        """
        params = self.get_params(deep=False)
        for name in self._own_params:
            params.pop(name, None)
        sklearn_class = getattr(self, "_sklearn_class", None)
        if sklearn_class is None:
            return params
        return sklearn_params(sklearn_class, params, type(self))

    def _unfitted_estimator(self) -> Any:
        """The unfitted scikit-learn estimator with the user's parameters. Local."""
        return self._sklearn_class(**self._sklearn_params())

    def _check_params(self) -> None:
        """Refuse parameters that the constraints cannot express. Local.

        Run on every rank by :func:`~mpitrain.utils.validation.agree_parameters`,
        which also compares the parameters over the ranks: an error raised
        on some ranks only reaches the others.
        """

    def _input_checks(self) -> dict[str, Any]:
        """Keywords of :func:`~mpitrain.utils.validation.check_local_X` for this estimator."""
        return dict(self._x_checks)

    # -- fit ------------------------------------------------------------------

    @contextmanager
    def _fit_comm(self, every_rank: bool = True) -> Iterator[Intracomm]:
        """Validate the parameters, then the library communicator of ``comm``. Collective.

        For fits from something else than rows (pooled statistics); fits
        from rows use :meth:`_fitting`, which starts with this.  With
        ``every_rank=False`` only rank 0 holds the estimator (the others
        contribute statistics without one): it checks its parameters alone
        and the caller agrees its verdict.
        """
        with library_comm(get_comm(self.comm)) as lib:
            if every_rank:
                # Checked on every rank, and compared: a value refused or set on
                # some ranks only would leave the others alone in the fit's collectives.
                agree_parameters(self, lib)
            else:
                self._validate_params()
                self._check_params()
            yield lib

    @contextmanager
    def _fitting(
        self, X: Any, y: Any = None, sample_weight: Any = None
    ) -> Iterator[LocalFit]:
        """The collective preamble of ``fit``. Collective over ``comm``.

        Validates the parameters, resolves ``comm``, opens the library
        communicator, checks this rank's rows (an error on any rank is
        raised on every rank, naming the ranks) and agrees on the rows of
        all ranks; the block then runs with a :class:`LocalFit`.  The
        library communicator is freed when the block ends.
        """
        with self._fit_comm() as lib:
            with collective_check(lib, "checking the input"):
                X, y, sample_weight = self._check_local_rows(X, y, sample_weight)
            rows = agree_rows(lib, X, sample_weight, estimator=self, y=y)
            yield LocalFit(lib, X, y, sample_weight, rows)

    def _check_local_rows(
        self, X: Any, y: Any, sample_weight: Any
    ) -> tuple[Any, np.ndarray | None, np.ndarray | None]:
        """This rank's rows, checked the one way. Local.

        Runs inside the preamble's collective check.  A family with checks
        of its own (a sparse format it refuses, say) overrides this and
        calls ``super()`` first.
        """
        return check_local_rows(
            self,
            X,
            y,
            sample_weight,
            target=self._target,
            multi_output=self._multi_output,
            **self._input_checks(),
        )

    def _fit_transform_agreed(
        self, X: Any, y: Any = None, *, what: str, **fit_params: Any
    ) -> Any:
        """``fit``, then ``transform`` this rank's rows, a failure agreed. Collective.

        An error while transforming one rank's rows is raised on every
        rank, so a pipeline never leaves the other ranks waiting in the
        next step's collectives.
        """
        self.fit(X, y, **fit_params)
        out = None
        with library_comm(get_comm(self.comm)) as lib:
            with collective_check(lib, what):
                out = self.transform(X)
        return out

    # -- prediction, forwarded to estimator_ (local) ---------------------------

    def _forward(
        self, method: str, X: Any, *, same_columns: bool = True, **kwargs: Any
    ) -> Any:
        """``estimator_.<method>(X)`` on rows checked as in ``fit``. Local.

        scikit-learn refuses zero rows; a rank without rows gets an empty
        result of the right shape and dtype (from one row of zeros), so a
        pipeline or an evaluation goes on on every rank.  ``same_columns``
        compares ``X``'s columns with ``fit``'s (not for the output space
        that ``inverse_transform`` takes).
        """
        check_is_fitted(self, "estimator_")
        checked = check_local_X(
            self, X, reset=False if same_columns else None, **self._input_checks()
        )
        forward = getattr(self.estimator_, method)
        if checked.shape[0] == 0:
            return forward(_one_row_like(checked), **kwargs)[:0]
        # A model fitted with column names checks them itself; others get the checked array.
        if hasattr(X, "columns") and hasattr(self.estimator_, "feature_names_in_"):
            return forward(X, **kwargs)
        return forward(checked, **kwargs)

    predict = _forwarded_method(
        "predict",
        "Predict for the given rows",
        "ndarray of shape (n_samples,) or (n_samples, n_outputs)",
    )
    predict_proba = _forwarded_method(
        "predict_proba",
        "Class probabilities of the given rows",
        "ndarray of shape (n_samples, n_classes)",
    )
    predict_log_proba = _forwarded_method(
        "predict_log_proba",
        "Logarithm of the class probabilities of the given rows",
        "ndarray of shape (n_samples, n_classes)",
    )
    decision_function = _forwarded_method(
        "decision_function",
        "Confidence scores of the given rows",
        "ndarray of shape (n_samples,) or (n_samples, n_classes)",
    )
    transform = _forwarded_method(
        "transform",
        "Transform the given rows",
        "{ndarray, sparse matrix} of shape (n_samples, n_features_out)",
    )
    inverse_transform = _forwarded_method(
        "inverse_transform",
        "Undo the transformation of the given rows",
        "{ndarray, sparse matrix} of shape (n_samples, n_features)",
        same_columns=False,
    )


def strategy_name(estimator: Any) -> str:
    """How ``estimator`` combines the ranks' work, as progress lines and reports name it. Local.

    Its ``strategy`` parameter where it has one, else its class's
    ``_combination``; for voting and stacking, each member's in turn
    (``"combined: ridge exact, forest merged"``).
    """
    params = estimator.get_params(deep=False)
    members = getattr(estimator, "_members_param", None)
    if members is not None:
        parts = [
            f"{name} {strategy_name(member)}"
            for name, member in params[members]
            if member != "drop"
        ]
        return "combined: " + ", ".join(parts)
    return params.get("strategy") or getattr(estimator, "_combination", "exact")
