"""Stochastic gradient descent across ranks, by (iterative) coefficient averaging.

SGD has no exact distributed counterpart here: its answer depends on the
order in which rows are visited.  Each rank runs scikit-learn's SGD on its
own rows and the ranks average the coefficients (see
:mod:`mpitrain.linear_model._averaging`).  With ``rounds=R > 1`` they do so R times:
every rank runs one epoch of ``partial_fit`` from the current average, then
the ranks average again (iterative parameter mixing).
"""

from __future__ import annotations

from numbers import Integral

from sklearn import linear_model as _sk
from sklearn.base import ClassifierMixin, RegressorMixin

from mpitrain.base import DistributedEstimator
from mpitrain.linear_model._averaging import fit_average
from mpitrain.utils.fixes import Interval, StrOptions

__all__ = [
    "SGDRegressor",
    "SGDClassifier",
]


_COMMON = {
    "rounds": [Interval(Integral, 1, None, closed="left")],
    "strategy": [StrOptions({"average"})],
    "comm": "no_validation",
}


class _AveragedSGD(DistributedEstimator):
    """Shared fit of the averaged SGD estimators (prediction: the base's)."""

    _own_params = ("comm", "rounds", "strategy")
    _classifier = False

    def fit(self, X, y, sample_weight=None):
        """Fit on this rank's rows by (iterative) averaging across ranks.

        Collective over ``comm``: every rank calls it with its own rows
        (possibly none) and the same parameters.

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
            self.estimator_, self.averaging_ = fit_average(
                self._unfitted_estimator(),
                fit.X,
                fit.y,
                fit.sample_weight,
                fit.comm,
                classifier=self._classifier,
                rounds=self.rounds,
            )
        if self._classifier:
            self.classes_ = self.estimator_.classes_
        self.n_iter_ = self.estimator_.n_iter_
        self.n_rows_ = fit.rows.n_rows
        return self


class SGDRegressor(RegressorMixin, _AveragedSGD):
    """:class:`sklearn.linear_model.SGDRegressor` across ranks, by averaging.

    Takes scikit-learn's parameters (same meaning, applied on each rank),
    plus ``rounds`` (averaging rounds; 1 = one full local fit per rank,
    then one average) and ``comm``.  ``strategy`` is always "average".
    ``estimator_`` is a plain fitted scikit-learn ``SGDRegressor``.
    """

    _sklearn_class = _sk.SGDRegressor
    _parameter_constraints = {**_sk.SGDRegressor._parameter_constraints, **_COMMON}

    def __init__(
        self,
        loss="squared_error",
        *,
        penalty="l2",
        alpha=0.0001,
        l1_ratio=0.15,
        fit_intercept=True,
        max_iter=1000,
        tol=0.001,
        shuffle=True,
        verbose=0,
        epsilon=0.1,
        random_state=None,
        learning_rate="invscaling",
        eta0=0.01,
        power_t=0.25,
        early_stopping=False,
        validation_fraction=0.1,
        n_iter_no_change=5,
        warm_start=False,
        average=False,
        rounds=1,
        strategy="average",
        comm=None,
    ):
        self.loss = loss
        self.penalty = penalty
        self.alpha = alpha
        self.l1_ratio = l1_ratio
        self.fit_intercept = fit_intercept
        self.max_iter = max_iter
        self.tol = tol
        self.shuffle = shuffle
        self.verbose = verbose
        self.epsilon = epsilon
        self.random_state = random_state
        self.learning_rate = learning_rate
        self.eta0 = eta0
        self.power_t = power_t
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.warm_start = warm_start
        self.average = average
        self.rounds = rounds
        self.strategy = strategy
        self.comm = comm


class SGDClassifier(ClassifierMixin, _AveragedSGD):
    """:class:`sklearn.linear_model.SGDClassifier` across ranks, by averaging.

    Classes are agreed over all ranks first, so a rank may hold only some of
    them.  Parameters as for scikit-learn, plus ``rounds`` and ``comm``.
    """

    _sklearn_class = _sk.SGDClassifier
    _parameter_constraints = {**_sk.SGDClassifier._parameter_constraints, **_COMMON}
    _classifier = True
    _target = "classes"

    def __init__(
        self,
        loss="hinge",
        *,
        penalty="l2",
        alpha=0.0001,
        l1_ratio=0.15,
        fit_intercept=True,
        max_iter=1000,
        tol=0.001,
        shuffle=True,
        verbose=0,
        epsilon=0.1,
        n_jobs=None,
        random_state=None,
        learning_rate="optimal",
        eta0=0.01,
        power_t=0.5,
        early_stopping=False,
        validation_fraction=0.1,
        n_iter_no_change=5,
        class_weight=None,
        warm_start=False,
        average=False,
        rounds=1,
        strategy="average",
        comm=None,
    ):
        self.loss = loss
        self.penalty = penalty
        self.alpha = alpha
        self.l1_ratio = l1_ratio
        self.fit_intercept = fit_intercept
        self.max_iter = max_iter
        self.tol = tol
        self.shuffle = shuffle
        self.verbose = verbose
        self.epsilon = epsilon
        self.n_jobs = n_jobs
        self.random_state = random_state
        self.learning_rate = learning_rate
        self.eta0 = eta0
        self.power_t = power_t
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.class_weight = class_weight
        self.warm_start = warm_start
        self.average = average
        self.rounds = rounds
        self.strategy = strategy
        self.comm = comm
