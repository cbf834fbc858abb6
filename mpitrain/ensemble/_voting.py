"""Voting across MPI ranks: members of different kinds, each fitted across the ranks.

Each member is an mpitrain estimator and is fitted on the rows of all ranks
with its own strategy (exact logistic regression, a merged forest, the SVM
cascade, an MLP ...).  Nothing more is communicated than what the members
communicate themselves, plus one class agreement for the classifier.  The
fitted ``estimator_`` is scikit-learn's own ``VotingClassifier`` or
``VotingRegressor`` holding the members' plain scikit-learn models, with
the fitted attributes scikit-learn's ``fit`` sets (``estimators_``,
``named_estimators_``, ``le_`` and ``classes_``): it predicts, with
scikit-learn's combination rule, without MPI, and saves with
:mod:`mpitrain.model_io`.

As in scikit-learn, the classifier's members learn the class indices
``0 .. K-1`` (``le_`` maps them back); the classes are those of all ranks
(:func:`mpitrain.utils.multiclass.agree_classes`), so a rank may lack some.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from sklearn import ensemble as _sk_ensemble
from sklearn.base import ClassifierMixin, RegressorMixin
from sklearn.preprocessing import LabelEncoder
from sklearn.utils import Bunch

from mpitrain.base import DistributedEstimator
from mpitrain.ensemble._members import (
    MemberParams,
    check_members,
    fit_member,
    is_drop,
    kept,
    unfitted_plain,
)
from mpitrain.utils.fixes import StrOptions
from mpitrain.utils.multiclass import agree_classes

__all__ = ["VotingClassifier", "VotingRegressor"]


class _DistributedVoting(MemberParams, DistributedEstimator):
    """Shared fit of the voting estimators (prediction: the base's)."""

    #: "classifier" or "regressor": what every member must be.
    _kind: str

    def _check_params(self) -> None:
        """The members and weights, checked on every rank before the fit's work. Local."""
        check_members(self, self.estimators, kind=self._kind)
        if self.weights is not None and len(self.weights) != len(self.estimators):
            raise ValueError(
                "Number of `estimators` and weights must be equal; got "
                f"{len(self.weights)} weights, {len(self.estimators)} estimators"
            )

    def _unfitted_estimator(self) -> Any:
        """scikit-learn's voting estimator of the members' unfitted models. Local."""
        params = self._sklearn_params()
        params["estimators"] = [
            (name, unfitted_plain(member)) for name, member in self.estimators
        ]
        return self._sklearn_class(**params)

    def _fit_members(self, fit: Any, y: np.ndarray) -> list[tuple[str, Any]]:
        """Every kept member fitted across the ranks, in order. Collective over ``fit.comm``."""
        names = [name for name, _ in self.estimators]
        members = [member for _, member in self.estimators]
        fitted = []
        self.timings_ = {}
        for name, member in kept(names, members):
            tic = time.perf_counter()
            fitted.append(
                (name, fit_member(member, fit.comm, fit.X, y, fit.sample_weight))
            )
            self.timings_[f"fit {name}"] = time.perf_counter() - tic
        return fitted

    def _set_members(self, model: Any, fitted: list[tuple[str, Any]]) -> None:
        """The members' plain models in ``model`` as scikit-learn's ``fit`` sets them. Local."""
        plain = dict((name, member.estimator_) for name, member in fitted)
        model.estimators_ = list(plain.values())
        model.named_estimators_ = Bunch()
        for name, member in self.estimators:
            current = member if is_drop(member) else plain[name]
            model.named_estimators_[name] = current
            if hasattr(current, "feature_names_in_"):
                model.feature_names_in_ = current.feature_names_in_
        self.estimator_ = model
        self.estimators_ = model.estimators_
        self.named_estimators_ = model.named_estimators_


class VotingClassifier(ClassifierMixin, _DistributedVoting):
    """Soft or hard voting of mpitrain classifiers, each fitted across the ranks.

    scikit-learn's ``VotingClassifier`` with the same parameters (no
    ``n_jobs``, ``flatten_transform`` and ``verbose``: scikit-learn's
    defaults), plus ``comm``.  Each member is fitted on every rank's rows
    with its own strategy, on the communicator of this fit (whatever
    ``comm`` the member was given).  ``fit`` is collective over ``comm``;
    prediction is local.

    Parameters
    ----------
    estimators : list of (str, estimator)
        mpitrain classifiers (or ``"drop"``), as in scikit-learn.  Their
        parameters are reachable as ``name__param``.
    voting : {"hard", "soft"}, default="hard"
        ``"soft"`` needs ``predict_proba`` from every member (for ``SVC``,
        which has none in mpitrain, use ``"hard"``).
    weights : array-like of shape (n_estimators,), default=None
    comm : mpi4py.MPI.Intracomm, default=None
        ``None``: ``COMM_WORLD``.

    Attributes
    ----------
    estimator_ : sklearn.ensemble.VotingClassifier
        The fitted plain model: ``estimators_``, ``named_estimators_``,
        ``le_`` and ``classes_`` set as scikit-learn's ``fit`` sets them.
    estimators_, named_estimators_, classes_
        The same as ``estimator_``'s.
    timings_ : dict
        Seconds of each member's fit (``"fit <name>"``), on this rank.
    """

    _sklearn_class = _sk_ensemble.VotingClassifier
    _target = "classes"
    _kind = "classifier"
    _parameter_constraints = {
        "estimators": [list],
        "voting": [StrOptions({"hard", "soft"})],
        "weights": ["array-like", None],
        "comm": "no_validation",
    }

    def __init__(self, estimators, *, voting="hard", weights=None, comm=None):
        self.estimators = estimators
        self.voting = voting
        self.weights = weights
        self.comm = comm

    def _check_params(self) -> None:
        super()._check_params()
        if self.voting == "soft":
            missing = [
                f"{name} ({type(member).__name__})"
                for name, member in self.estimators
                if not is_drop(member) and not hasattr(member, "predict_proba")
            ]
            if missing:
                raise ValueError(
                    "voting='soft' averages the members' predict_proba; members "
                    f"without it: {', '.join(missing)}. Use voting='hard'"
                )

    def fit(self, X, y, sample_weight=None):
        """Fit every member on all ranks' rows. Collective over ``comm``.

        Every rank calls ``fit`` with its own rows (possibly none).  The
        classes are those of all ranks; each member learns their indices,
        as scikit-learn's ``VotingClassifier`` does.

        Parameters
        ----------
        X : array-like of shape (n_local_rows, n_features)
        y : array-like of shape (n_local_rows,)
        sample_weight : array-like of shape (n_local_rows,), default=None
            Passed to every member's ``fit``.

        Returns
        -------
        self : object
        """
        with self._fitting(X, y, sample_weight) as fit:
            agreed = agree_classes(fit.y, fit.sample_weight, fit.comm)
            fitted = self._fit_members(fit, agreed.index(fit.y))
        model = self._unfitted_estimator()
        model.le_ = LabelEncoder().fit(agreed.classes)
        model.classes_ = model.le_.classes_
        self._set_members(model, fitted)
        self.classes_ = model.classes_
        self.n_rows_ = agreed.n_rows
        return self


class VotingRegressor(RegressorMixin, _DistributedVoting):
    """The (weighted) mean of mpitrain regressors, each fitted across the ranks.

    scikit-learn's ``VotingRegressor`` with the same parameters (no
    ``n_jobs`` and ``verbose``), plus ``comm``.  ``fit`` is collective over
    ``comm``; prediction is local.

    Parameters
    ----------
    estimators : list of (str, estimator)
        mpitrain regressors (or ``"drop"``).
    weights : array-like of shape (n_estimators,), default=None
    comm : mpi4py.MPI.Intracomm, default=None

    Attributes
    ----------
    estimator_ : sklearn.ensemble.VotingRegressor
        With ``estimators_`` and ``named_estimators_`` set.
    estimators_, named_estimators_
    timings_ : dict
    """

    _sklearn_class = _sk_ensemble.VotingRegressor
    _kind = "regressor"
    _parameter_constraints = {
        "estimators": [list],
        "weights": ["array-like", None],
        "comm": "no_validation",
    }

    def __init__(self, estimators, *, weights=None, comm=None):
        self.estimators = estimators
        self.weights = weights
        self.comm = comm

    def fit(self, X, y, sample_weight=None):
        """Fit every member on all ranks' rows. Collective over ``comm``.

        Parameters
        ----------
        X : array-like of shape (n_local_rows, n_features)
        y : array-like of shape (n_local_rows,)
        sample_weight : array-like of shape (n_local_rows,), default=None

        Returns
        -------
        self : object
        """
        with self._fitting(X, y, sample_weight) as fit:
            fitted = self._fit_members(fit, fit.y)
            n_rows = fit.rows.n_rows
        self._set_members(self._unfitted_estimator(), fitted)
        self.n_rows_ = n_rows
        return self
