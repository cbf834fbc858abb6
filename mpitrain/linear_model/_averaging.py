"""Coefficient averaging: each rank fits scikit-learn on its own rows, the ranks average.

The ``average`` strategy of mpitrain's linear estimators.  Every rank fits
a clone of the scikit-learn estimator on its own rows, with any
regularisation that scales with the number of rows rescaled to the rank's
share (see :data:`RESCALE`), so that each local fit estimates the same
model; then coefficients and intercepts are averaged, weighted by each
rank's total sample weight (its row count when unweighted), with one
reduction.  Raw rows never leave their rank.

It is cheaper than ``exact`` (one fit per rank, one reduction of the
coefficients), but it is an approximation: on identically distributed
slices the gap to the exact answer shrinks as rows per rank grow; on slices
that differ (sorted data, one class per rank) it can be large.  ``--compare``
measures it.

Classes are agreed globally first.  A coefficient row of a classifier is
averaged over the ranks that could fit it: for a binary problem, the ranks
that saw both classes; for one-vs-rest or multinomial rows, the ranks that
saw that class (and at least one other).  A rank with no rows, or only one
class, still takes part in every collective with zero weight.

SGD estimators can average repeatedly (``rounds``): each round every rank
runs one epoch of ``partial_fit`` from the current average, then the ranks
average again (iterative parameter mixing).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from mpitrain.comm import allgather_object, allreduce_identical, collective_check
from mpitrain.utils.multiclass import agree_classes, balanced_class_weights
from mpitrain.utils.validation import require_rows

if TYPE_CHECKING:  # pragma: no cover
    from mpi4py.MPI import Intracomm

__all__ = [
    "rescaled_params",
    "weighted_average",
    "fit_average",
]


#: How regularisation must change on a rank holding a share ``W_r / W`` of
#: the total sample weight, so its fit estimates the model of all rows.
#: ``"times_share"``: the penalty is added to a *sum* over rows (Ridge's
#: ``‖y − Xw‖² + α‖w‖²``), so ``α_r = α · W_r / W``.  ``"over_share"``: the
#: loss sum is multiplied by ``C`` (``C Σ loss + ½‖w‖²``), so
#: ``C_r = C · W / W_r``.  Estimators whose loss is a *mean* over rows
#: (Lasso, ElasticNet, SGD) need no change.
RESCALE: dict[str, tuple[str, str] | None] = {
    "LinearRegression": None,
    "Ridge": ("alpha", "times_share"),
    "Lasso": None,
    "ElasticNet": None,
    "LogisticRegression": ("C", "over_share"),
    "LinearSVC": ("C", "over_share"),
    "SGDRegressor": None,
    "SGDClassifier": None,
}


def _final(model):
    return model.steps[-1][1] if hasattr(model, "steps") else model


def rescaled_params(model, share: float) -> dict[str, Any]:
    """Parameters to set on a rank's clone, holding ``share`` of the weight. Pure.

    Parameters
    ----------
    model : estimator or Pipeline
        The scikit-learn estimator (a Pipeline's final step is rescaled).
    share : float
        ``W_r / W``, in (0, 1].
    """
    final = _final(model)
    rule = RESCALE.get(type(final).__name__)
    if rule is None:
        return {}
    name, how = rule
    prefix = f"{model.steps[-1][0]}__" if hasattr(model, "steps") else ""
    value = np.asarray(getattr(final, name), dtype=np.float64)
    scaled = value * share if how == "times_share" else value / share
    return {prefix + name: scaled.item() if scaled.ndim == 0 else scaled}


def weighted_average(coefs: list[np.ndarray], weights: list[np.ndarray]) -> np.ndarray:
    """Row-wise weighted mean of coefficient arrays of shape (k, p). Pure.

    ``weights[r]`` has one weight per row; rows with total weight zero stay zero.
    The same arithmetic as :func:`fit_average` does with one reduction.
    """
    total = sum(weights)
    acc = sum(w[:, None] * c for c, w in zip(coefs, weights))
    return np.divide(
        acc, total[:, None], out=np.zeros_like(acc), where=total[:, None] > 0
    )


def _row_weights(
    classes: np.ndarray, my_weights: np.ndarray, weight: float
) -> np.ndarray:
    """This rank's weight for each coefficient row of a fitted classifier's layout.

    ``my_weights`` are this rank's sample-weight totals per global class.
    """
    seen = my_weights > 0
    if seen.sum() < 2:
        return np.zeros(1 if len(classes) == 2 else len(classes))
    if len(classes) == 2:
        return np.array([weight])
    return np.where(seen, weight, 0.0)


def _global_layout(
    final, local_classes: np.ndarray, classes: np.ndarray, n_features: int
):
    """Coefficients and intercepts of a local classifier in the global class layout."""
    coef = np.atleast_2d(final.coef_)
    intercept = np.atleast_1d(np.asarray(final.intercept_, dtype=np.float64))
    if len(classes) == 2:
        return coef, intercept
    out_c = np.zeros((len(classes), n_features))
    out_i = np.zeros(len(classes))
    rows = np.searchsorted(classes, local_classes)
    if len(local_classes) == 2:
        # A binary local fit has one row: local_classes[1] against local_classes[0].
        # One-vs-rest rows read it as "b vs rest" and "a vs rest" (±w); multinomial
        # rows only fix differences, so the symmetric split is ±w/2.
        half = 0.5 if type(final).__name__ == "LogisticRegression" else 1.0
        out_c[rows[1]], out_i[rows[1]] = half * coef[0], half * intercept[0]
        out_c[rows[0]], out_i[rows[0]] = -half * coef[0], -half * intercept[0]
    else:
        out_c[rows], out_i[rows] = coef, intercept
    return out_c, out_i


def fit_average(
    model,
    X: np.ndarray,
    y: np.ndarray,
    sample_weight: np.ndarray | None,
    comm: Intracomm,
    *,
    classifier: bool = False,
    rounds: int = 1,
) -> tuple[Any, dict]:
    """Fit ``model`` on every rank's rows and average the coefficients.

    Collective over ``comm``: every rank calls it with its own rows (possibly
    none) and the same unfitted ``model``.

    Parameters
    ----------
    model : scikit-learn estimator or Pipeline
        Unfitted; cloned per rank.  A Pipeline's earlier steps must be
        row-local (fitted on a row of zeros to rebuild them).
    X, y, sample_weight : this rank's rows.
    comm : mpi4py.MPI.Intracomm
    classifier : bool
        Agree classes globally first and average per class row.
    rounds : int, default=1
        1: one full local fit per rank, then one average.  More (SGD
        estimators only): rounds of one ``partial_fit`` epoch per rank from
        the current average, each followed by averaging.  Inside a
        :func:`mpitrain.checkpoint.checkpointing` context the rounds are
        checkpointed (every rank's local model and the average) and resumed.

    Returns
    -------
    fitted : estimator
        A plain fitted clone of ``model`` with the user's parameters and the
        averaged coefficients, bit-identical on every rank.
    info : dict
        ``rounds`` and ``ranks_contributing`` (ranks whose fit entered the average).
    """
    from sklearn.base import clone

    n_local, n_inputs = X.shape
    weight = float(n_local if sample_weight is None else np.sum(sample_weight))
    rows, total = allreduce_identical(np.array([float(n_local), weight]), comm)
    require_rows(int(rows), comm.Get_size(), total)
    share = weight / total
    classes = my_weights = None
    if classifier:
        agreed = agree_classes(y, sample_weight, comm)
        classes, my_weights = agreed.classes, agreed.rank_weights[comm.Get_rank()]
    sgd = type(_final(model)).__name__.startswith("SGD")
    if rounds > 1 and not sgd:
        raise ValueError(
            f"rounds > 1 needs an SGD estimator, not {type(_final(model)).__name__}"
        )
    can_fit = (
        n_local > 0 and weight > 0 and (not classifier or (my_weights > 0).sum() >= 2)
    )

    local = clone(model)
    if share > 0:
        local.set_params(**rescaled_params(model, share))
    if classifier and getattr(_final(model), "class_weight", None) == "balanced":
        # "balanced" from one rank's counts would weight each rank differently.
        balanced = balanced_class_weights(agreed.weighted)
        _final(local).set_params(class_weight=dict(zip(classes.tolist(), balanced)))
    state: tuple[np.ndarray, np.ndarray] | None = None
    first_round = 0
    loop = (
        _rounds_checkpoint(model, classes, n_inputs, total, rounds, classifier, comm)
        if rounds > 1
        else None
    )
    if loop is not None and loop.resumed:
        # Every rank's own SGD model (coefficients, learning-rate counter, random
        # state) continues exactly where it was, from the saved average.
        local, state = loop.state["local"], loop.state["average"]
        first_round = loop.iteration
    for round_index in range(first_round, rounds):
        with collective_check(comm, "fitting the local model"):
            if can_fit and rounds > 1:
                final = _final(local)
                if (
                    state is not None
                ):  # continue from the average, as SGD would from its own state
                    final.coef_, final.intercept_ = _sgd_state(*state, classifier)
                final.partial_fit(
                    X,
                    y,
                    sample_weight=sample_weight,
                    **({"classes": classes} if classifier else {}),
                )
            elif can_fit:
                _fit(local, X, y, sample_weight)
            coef, intercept, row_w = _local_coefficients(
                local,
                can_fit,
                classes,
                my_weights,
                weight,
                _n_coef_columns(model, n_inputs),
            )
        # One reduction: [Σ w·coef, Σ w·intercept, Σ w per row].
        k, p = coef.shape
        buf = np.concatenate(
            [(row_w[:, None] * coef).ravel(), row_w * intercept, row_w]
        )
        allreduce_identical(buf, comm)
        sums, isums, wsum = (
            buf[: k * p].reshape(k, p),
            buf[k * p : k * p + k],
            buf[k * p + k :],
        )
        if not (wsum > 0).all():
            raise ValueError(
                "no rank could fit every coefficient row (each needs a rank with rows of "
                "at least two classes); shuffle the rows over the ranks (mpitrain "
                "shuffle, or train --shuffle) so that ranks hold several classes, or "
                "use strategy='exact' where the model has it (LogisticRegression, "
                "LinearSVC)"
            )
        state = (sums / wsum[:, None], isums / wsum)
        if loop is not None and round_index + 1 < rounds:
            loop.step(
                lambda: {"local": local, "average": state}, iteration=round_index + 1
            )
    iterations = allgather_object(_iterations(local) if can_fit else None, comm)
    contributing = [r for r, it in enumerate(iterations) if it is not None]
    fitted = _build(
        model, state, classes, n_inputs, max(it for it in iterations if it is not None)
    )
    return fitted, {"rounds": rounds, "ranks_contributing": contributing}


def _rounds_checkpoint(
    model,
    classes,
    n_inputs: int,
    total: float,
    rounds: int,
    classifier: bool,
    comm: Intracomm,
):
    """The checkpoint loop of the averaging rounds inside a checkpointing context, else ``None``.

    Collective over ``comm`` inside a context.  The state is every rank's
    own (its local model), so a resume needs the same number of ranks.
    """
    from mpitrain.checkpoint import checkpoint_loop

    key = {
        "estimator": type(_final(model)).__name__,
        "params": model.get_params(deep=True),
        "classes": classes,
        "features": n_inputs,
        "total_weight": total,
        "rounds": rounds,
        "classifier": classifier,
    }
    return checkpoint_loop(
        "averaging",
        key=key,
        comm=comm,
        mode="per_rank",
        what="SGD averaging",
        unit="round",
    )


def _fit(model, X, y, sample_weight) -> None:
    if hasattr(model, "steps"):
        model.fit(X, y, **{f"{model.steps[-1][0]}__sample_weight": sample_weight})
    else:
        model.fit(X, y, sample_weight=sample_weight)


def _iterations(model) -> int:
    n_iter = getattr(_final(model), "n_iter_", None)
    return int(np.max(n_iter)) if n_iter is not None else 1


def _local_coefficients(
    local, fitted: bool, classes, my_weights, weight: float, width: int
):
    """This rank's (coef, intercept, row weights) in the global layout; zeros if it did not fit."""
    if classes is None:
        rows = 1
    else:
        rows = 1 if len(classes) == 2 else len(classes)
    if not fitted:
        return np.zeros((rows, width)), np.zeros(rows), np.zeros(rows)
    final = _final(local)
    if classes is not None:
        coef, intercept = _global_layout(final, final.classes_, classes, width)
        return coef, intercept, _row_weights(classes, my_weights, weight)
    coef = np.atleast_2d(final.coef_)
    intercept = np.atleast_1d(np.asarray(final.intercept_, dtype=np.float64))
    return coef, intercept, np.full(rows, weight)


def _n_coef_columns(model, n_inputs: int) -> int:
    """Coefficients per row: the inputs, or what a Pipeline's row-local steps make of them."""
    if not hasattr(model, "steps"):
        return n_inputs
    from sklearn.base import clone

    return clone(model[:-1]).fit_transform(np.zeros((1, n_inputs))).shape[1]


def _sgd_state(coef: np.ndarray, intercept: np.ndarray, classifier: bool):
    """The averaged state in the shapes SGD keeps: (d,) and (1,) for a regressor."""
    if classifier:
        return coef.copy(), intercept.copy()
    return coef[0].copy(), intercept.copy()


def _build(model, state, classes, n_inputs: int, n_iter: int):
    """A fitted clone of ``model`` (the user's parameters) holding the averaged coefficients."""
    from sklearn.base import clone

    coef, intercept = state
    fitted = clone(model)
    if hasattr(fitted, "steps"):
        for _, step in fitted.steps[:-1]:
            step.fit(
                np.zeros((1, n_inputs))
            )  # row-local: the fit depends on the width only
        fitted.n_features_in_ = n_inputs
    final = _final(fitted)
    name = type(final).__name__
    if classes is not None:
        final.classes_ = classes
        final.coef_, final.intercept_ = coef, intercept
    elif name.startswith("SGD"):
        final.coef_, final.intercept_ = coef[0], intercept.copy()
    else:
        final.coef_, final.intercept_ = coef[0], float(intercept[0])
    final.n_features_in_ = coef.shape[1]
    # n_iter_ in the type scikit-learn uses for this estimator.
    if name == "LogisticRegression":
        final.n_iter_ = np.array([n_iter], dtype=np.int32)
    elif name == "Ridge":
        final.n_iter_ = None
    else:
        final.n_iter_ = n_iter
    if name.startswith("SGD"):
        final.t_ = float(n_iter)
    return fitted
