"""Stacking across MPI ranks: out-of-fold predictions made where the rows are.

scikit-learn's stacking trains a final estimator on the members'
out-of-fold predictions (``cross_val_predict``), then refits the members on
all rows.  Across ranks the same is done without moving a row:

1. **Folds by global row id.**  Each row's fold comes from its global row
   id and the seed (:func:`mpitrain.model_selection.fold_ids`; for a
   classifier :func:`~mpitrain.model_selection.stratified_fold_ids`, with
   scikit-learn's ``StratifiedKFold`` allocation), so the folds do not
   depend on the number of ranks; or the caller gives each rank's fold ids
   (``cv`` as an array).
2. **Each member, each fold, data-parallel.**  For fold ``k`` the member
   is fitted across the ranks on the rows outside fold ``k`` (with its own
   strategy: exact, merged forest, cascade ...), and every rank predicts
   its own rows of fold ``k`` with the fitted model.  These out-of-fold
   predictions stay on the rank that holds the rows: they become that
   rank's rows of the final estimator's input.
3. **The final estimator, exactly.**  The final estimator (an mpitrain
   estimator: by default the exact ``LogisticRegression`` or ``Ridge``) is
   fitted across the ranks on the predictions (plus the features with
   ``passthrough``).
4. **The members, on all rows.**  Each member is refitted across the
   ranks on all rows; these are the members that predict.

What travels is only what the members and the final estimator exchange in
their own fits (and one class agreement, one fold assignment): never rows,
never predictions.  Memory per rank: a copy of the rows outside the fold
while a member is fitted on them, and the out-of-fold predictions (rows ×
meta-features).

The fitted ``estimator_`` is scikit-learn's own ``StackingClassifier`` or
``StackingRegressor`` with the attributes its ``fit`` sets
(``estimators_``, ``named_estimators_``, ``final_estimator_``,
``stack_method_``, ``classes_``): it predicts without MPI.  With members
whose distributed fit is exact, it equals scikit-learn's stacking on all
rows with the same folds.
"""

from __future__ import annotations

import time
from numbers import Integral
from typing import Any

import numpy as np
from sklearn import ensemble as _sk_ensemble
from sklearn.base import ClassifierMixin, RegressorMixin, is_classifier, is_regressor
from sklearn.utils import Bunch

from mpitrain.base import DistributedEstimator
from mpitrain.comm import allreduce_minmax, allreduce_sum, collective_check
from mpitrain.ensemble._members import (
    MemberParams,
    check_member,
    check_members,
    fit_member,
    is_drop,
    kept,
    unfitted_plain,
)
from mpitrain.metrics import predict_local
from mpitrain.model_selection import fold_ids, stratified_fold_ids
from mpitrain.utils.fixes import Interval, StrOptions, set_stacking_state
from mpitrain.utils.multiclass import agree_classes

__all__ = ["StackingClassifier", "StackingRegressor", "stack_columns"]

#: ``stack_method="auto"``: the first of these a member has (scikit-learn's order).
_AUTO_METHODS = ("predict_proba", "decision_function", "predict")


def stack_columns(
    predictions: np.ndarray, method: str, n_classes: int | None
) -> np.ndarray:
    """One member's predictions as meta-feature columns, as scikit-learn stacks them. Pure.

    1-D predictions become one column; ``predict_proba`` of two classes
    keeps the second column only (the first is one minus it).
    """
    predictions = np.asarray(predictions, dtype=np.float64)
    if predictions.ndim == 1:
        return predictions.reshape(-1, 1)
    if method == "predict_proba" and n_classes == 2:
        return predictions[:, 1:]
    return predictions


class _DistributedStacking(MemberParams, DistributedEstimator):
    """Shared fit of the stacking estimators (prediction: the base's)."""

    _own_params = ("comm", "seed")
    #: "classifier" or "regressor": what the final estimator must be.
    _kind: str

    # -- parameters -----------------------------------------------------------

    def _check_params(self) -> None:
        """Members, final estimator and folds, checked on every rank before the fit's work. Local."""
        check_members(
            self,
            self.estimators,
            kind=None if self._kind == "classifier" else "regressor",
        )
        final = self._final_template()
        check_member("final_estimator", final)
        if self._kind == "classifier" and not is_classifier(final):
            raise ValueError(
                f"'final_estimator' parameter should be a classifier. Got {final}"
            )
        if self._kind == "regressor" and not is_regressor(final):
            raise ValueError(
                f"'final_estimator' parameter should be a regressor. Got {final}"
            )
        self._stack_methods()

    def _final_template(self) -> Any:
        """The final estimator, unfitted: the given one or the default. Local."""
        if self.final_estimator is not None:
            return self.final_estimator
        return self._default_final()

    def _default_final(self) -> Any:
        raise NotImplementedError

    def _stack_methods(self) -> list[str]:
        """The prediction method of each kept member, as scikit-learn picks it. Local."""
        wanted = getattr(self, "stack_method", "predict")
        methods = []
        for name, member in self.estimators:
            if is_drop(member):
                continue
            options = _AUTO_METHODS if wanted == "auto" else (wanted,)
            # An mpitrain member has a method exactly when its scikit-learn model has it.
            found = next((m for m in options if hasattr(member, m)), None)
            if found is None:
                raise ValueError(
                    f"Underlying estimator {name} does not implement the method "
                    f"{list(options) if wanted == 'auto' else wanted}."
                )
            methods.append(found)
        return methods

    def _unfitted_estimator(self) -> Any:
        """scikit-learn's stacking estimator of the unfitted plain models. Local."""
        params = self._sklearn_params()
        params["estimators"] = [
            (name, unfitted_plain(member)) for name, member in self.estimators
        ]
        params["final_estimator"] = unfitted_plain(self._final_template())
        # Our folds come from global row ids; scikit-learn's model records their number.
        params["cv"] = self.cv if isinstance(self.cv, Integral) else None
        return self._sklearn_class(**params)

    # -- fit ------------------------------------------------------------------

    def _folds(
        self, target: np.ndarray, n_classes: int | None, comm: Any
    ) -> tuple[np.ndarray, int]:
        """This rank's fold of each row, and the number of folds. Collective over ``comm``.

        A number of folds for a classifier (``n_classes`` given) is stratified
        by the class indices ``target``, as scikit-learn's ``StratifiedKFold``.
        """
        n_local = len(target)
        if isinstance(self.cv, Integral):
            if n_classes is not None:
                folds = stratified_fold_ids(
                    target, n_folds=int(self.cv), seed=self.seed, comm=comm
                )
            else:
                folds = fold_ids(
                    n_local, n_folds=int(self.cv), seed=self.seed, comm=comm
                )
            return folds, int(self.cv)
        with collective_check(comm, "checking the fold ids (cv)"):
            folds = np.asarray(self.cv)
            if (
                folds.shape != (n_local,)
                or folds.dtype.kind not in "iu"
                or (folds.size and folds.min() < 0)
            ):
                raise ValueError(
                    f"cv must be a number of folds or this rank's {n_local} non-negative "
                    f"integer fold ids, got an array of shape {folds.shape} and dtype {folds.dtype}"
                )
            folds = folds.astype(np.int64)
        _, highest = allreduce_minmax(
            np.array([folds.max() if folds.size else -1], dtype=np.int64), comm
        )
        n_folds = int(highest[0]) + 1
        sizes = allreduce_sum(
            np.bincount(folds, minlength=n_folds).astype(np.int64), comm
        )
        # Decided from reduced counts: the same error on every rank.
        if n_folds < 2 or (sizes == 0).any():
            raise ValueError(
                f"cv needs at least 2 folds, each with rows; the fold sizes over all ranks "
                f"are {sizes.tolist()}"
            )
        return folds, n_folds

    def _fit_stack(
        self, fit: Any, target: np.ndarray, n_classes: int | None
    ) -> tuple[list[tuple[str, Any]], Any, list[str], list[int]]:
        """Out-of-fold predictions, the final estimator, the members on all rows. Collective.

        Returns the fitted members, the fitted final estimator, the stack
        method of each member and the meta-features each gives.
        """
        lib, X, w = fit.comm, fit.X, fit.sample_weight
        n_local = X.shape[0]
        methods = self._stack_methods()
        folds, n_folds = self._folds(target, n_classes, lib)
        names = [name for name, _ in self.estimators]
        members = kept(names, [member for _, member in self.estimators])
        self.timings_ = {}
        blocks, widths, fitted = [], [], []
        for (name, member), method in zip(members, methods):
            tic = time.perf_counter()
            oof = None
            for k in range(n_folds):
                held_out = folds == k
                # A copy of the rows outside the fold: a failure (memory) on one rank fails all.
                with collective_check(lib, f"taking the rows outside fold {k}"):
                    train = ~held_out
                    rows = (
                        X[train],
                        target[train],
                        None if w is None else w[train],
                    )
                model = fit_member(member, lib, *rows)
                del rows
                if n_classes is not None and method != "predict":
                    # The same classes on every rank: raised alike, no agreement needed.
                    learned = len(getattr(model, "classes_", ()))
                    if learned != n_classes:
                        raise ValueError(
                            f"the rows outside fold {k} hold {learned} of the {n_classes} "
                            f"classes, so {name}'s {method} has too few columns; use fewer "
                            "folds (cv) or another seed"
                        )
                with collective_check(lib, f"predicting fold {k} with {name}"):
                    columns = stack_columns(
                        predict_local(model, X[held_out], method), method, n_classes
                    )
                    if oof is None:
                        oof = np.empty((n_local, columns.shape[1]))
                    oof[held_out] = columns
            blocks.append(oof)
            widths.append(oof.shape[1])
            fitted.append((name, fit_member(member, lib, X, target, w)))
            self.timings_[f"fit {name} ({n_folds} folds and all rows)"] = (
                time.perf_counter() - tic
            )
        with collective_check(lib, "stacking the out-of-fold predictions"):
            if self.passthrough:
                blocks.append(np.asarray(X, dtype=np.float64))
            meta = np.hstack(blocks)
        tic = time.perf_counter()
        final = fit_member(self._final_template(), lib, meta, target, w)
        self.timings_["fit final_estimator"] = time.perf_counter() - tic
        self.n_folds_ = n_folds
        return fitted, final, methods, widths

    def _build(
        self,
        fitted: list[tuple[str, Any]],
        final: Any,
        methods: list[str],
        widths: list[int],
        classes: np.ndarray | None,
    ) -> None:
        """The plain scikit-learn stacking model, with the attributes its ``fit`` sets. Local."""
        model = self._unfitted_estimator()
        if model.cv is None:
            model.cv = self.n_folds_
        plain = dict((name, member.estimator_) for name, member in fitted)
        model.estimators_ = list(plain.values())
        model.named_estimators_ = Bunch()
        for name, member in self.estimators:
            current = member if is_drop(member) else plain[name]
            model.named_estimators_[name] = current
            if hasattr(current, "feature_names_in_"):
                model.feature_names_in_ = current.feature_names_in_
        model.stack_method_ = list(methods)
        model.final_estimator_ = final.estimator_
        set_stacking_state(model, classes, widths)
        self.estimator_ = model
        self.estimators_ = model.estimators_
        self.named_estimators_ = model.named_estimators_
        self.final_estimator_ = model.final_estimator_
        self.stack_method_ = model.stack_method_


class StackingClassifier(ClassifierMixin, _DistributedStacking):
    """Stacking of mpitrain estimators, out-of-fold predictions made where the rows are.

    scikit-learn's ``StackingClassifier`` with the same parameters (no
    ``n_jobs`` and ``verbose``), plus ``seed`` and ``comm``.  ``fit`` is
    collective over ``comm``; prediction is local.

    Parameters
    ----------
    estimators : list of (str, estimator)
        mpitrain estimators (or ``"drop"``); parameters as ``name__param``.
    final_estimator : mpitrain classifier, default=None
        Fitted across the ranks on the members' out-of-fold predictions;
        ``None``: mpitrain's exact ``LogisticRegression()`` (scikit-learn's
        default, fitted exactly).
    cv : int or array-like of shape (n_local_rows,), default=5
        The number of folds, stratified as scikit-learn's
        ``StratifiedKFold`` (every fold holds each class's rows to within
        one), the rows of a class assigned by global row id
        (:func:`mpitrain.model_selection.stratified_fold_ids`; the same
        folds whatever the number of ranks, with rows in rank order); or
        this rank's fold id of each row (0 .. K-1).
    stack_method : {"auto", "predict_proba", "decision_function", "predict"}, default="auto"
        As scikit-learn: ``"auto"`` takes the first a member has.
    passthrough : bool, default=False
        Also give the final estimator the features.
    seed : int, default=0
        Seed of the fold assignment when ``cv`` is a number.
    comm : mpi4py.MPI.Intracomm, default=None

    Attributes
    ----------
    estimator_ : sklearn.ensemble.StackingClassifier
        The plain fitted model.
    estimators_, named_estimators_, final_estimator_, stack_method_, classes_
        The same as ``estimator_``'s.
    n_folds_ : int
    timings_ : dict
        Seconds of each member's fits and of the final estimator's, on this rank.
    """

    _sklearn_class = _sk_ensemble.StackingClassifier
    _target = "classes"
    _kind = "classifier"
    _parameter_constraints = {
        "estimators": [list],
        "final_estimator": "no_validation",
        "cv": [Interval(Integral, 2, None, closed="left"), "array-like"],
        "stack_method": [
            StrOptions({"auto", "predict_proba", "decision_function", "predict"})
        ],
        "passthrough": ["boolean"],
        "seed": [Interval(Integral, 0, None, closed="left")],
        "comm": "no_validation",
    }

    def __init__(
        self,
        estimators,
        final_estimator=None,
        *,
        cv=5,
        stack_method="auto",
        passthrough=False,
        seed=0,
        comm=None,
    ):
        self.estimators = estimators
        self.final_estimator = final_estimator
        self.cv = cv
        self.stack_method = stack_method
        self.passthrough = passthrough
        self.seed = seed
        self.comm = comm

    def _default_final(self) -> Any:
        from mpitrain.linear_model import LogisticRegression

        return LogisticRegression()

    def fit(self, X, y, sample_weight=None):
        """Fit the members and the final estimator on all ranks' rows. Collective over ``comm``.

        Parameters
        ----------
        X : array-like of shape (n_local_rows, n_features)
        y : array-like of shape (n_local_rows,)
        sample_weight : array-like of shape (n_local_rows,), default=None
            Passed to every member's fits and to the final estimator's.

        Returns
        -------
        self : object
        """
        with self._fitting(X, y, sample_weight) as fit:
            agreed = agree_classes(fit.y, fit.sample_weight, fit.comm)
            # As scikit-learn: the members and the final estimator learn class indices.
            fitted, final, methods, widths = self._fit_stack(
                fit, agreed.index(fit.y), len(agreed.classes)
            )
        self._build(fitted, final, methods, widths, agreed.classes)
        self.classes_ = self.estimator_.classes_
        self.n_rows_ = agreed.n_rows
        return self


class StackingRegressor(RegressorMixin, _DistributedStacking):
    """Stacking of mpitrain regressors, out-of-fold predictions made where the rows are.

    scikit-learn's ``StackingRegressor`` with the same parameters (no
    ``n_jobs`` and ``verbose``), plus ``seed`` and ``comm``.

    Parameters
    ----------
    estimators : list of (str, estimator)
        mpitrain regressors (or ``"drop"``).
    final_estimator : mpitrain regressor, default=None
        ``None``: mpitrain's exact ``Ridge()`` (scikit-learn's default is
        ``RidgeCV``, which mpitrain does not have).
    cv : int or array-like of shape (n_local_rows,), default=5
    passthrough : bool, default=False
    seed : int, default=0
    comm : mpi4py.MPI.Intracomm, default=None

    Attributes
    ----------
    estimator_ : sklearn.ensemble.StackingRegressor
    estimators_, named_estimators_, final_estimator_, stack_method_
    n_folds_ : int
    timings_ : dict
    """

    _sklearn_class = _sk_ensemble.StackingRegressor
    _kind = "regressor"
    _parameter_constraints = {
        key: value
        for key, value in StackingClassifier._parameter_constraints.items()
        if key != "stack_method"
    }

    def __init__(
        self,
        estimators,
        final_estimator=None,
        *,
        cv=5,
        passthrough=False,
        seed=0,
        comm=None,
    ):
        self.estimators = estimators
        self.final_estimator = final_estimator
        self.cv = cv
        self.passthrough = passthrough
        self.seed = seed
        self.comm = comm

    def _default_final(self) -> Any:
        from mpitrain.linear_model import Ridge

        return Ridge()

    def fit(self, X, y, sample_weight=None):
        """Fit the members and the final estimator on all ranks' rows. Collective over ``comm``.

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
            fitted, final, methods, widths = self._fit_stack(fit, fit.y, None)
            n_rows = fit.rows.n_rows
        self._build(fitted, final, methods, widths, None)
        self.n_rows_ = n_rows
        return self
