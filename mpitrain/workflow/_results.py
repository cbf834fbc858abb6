"""What a fitted model shows: its coefficients, its evaluation as text and as plots.

Each function here that takes a communicator is collective over it: every
rank holds its own rows, statistics are reduced (``mpitrain.metrics``,
``mpitrain.stats``), and rank 0 draws the plots (``mpitrain.plots``) while
the other ranks wait without spinning.  No raw rows move between ranks.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

from mpitrain.comm import run_on_root

if TYPE_CHECKING:  # pragma: no cover
    from mpi4py.MPI import Intracomm

__all__ = [
    "final_step",
    "is_classifier",
    "model_coefficients",
    "model_parameters",
    "relative_gap",
    "coefficient_names",
    "local_coefficients",
    "local_coefficients_from_statistics",
    "evaluation_plots",
    "coefficient_plot",
    "format_evaluation",
]


# --------------------------------------------------------------------------
# Models


def final_step(model):
    """The last step of a pipeline, or the model itself. Pure."""
    return model.steps[-1][1] if hasattr(model, "steps") else model


def is_classifier(model) -> bool:
    """Whether a fitted model (or pipeline) predicts classes. Pure."""
    return hasattr(final_step(model), "classes_")


def model_coefficients(model) -> np.ndarray | None:
    """The linear coefficients of a fitted model (flattened over classes/targets), or ``None``. Local."""
    final = final_step(getattr(model, "estimator_", model))
    coef = getattr(final, "coef_", None)
    if coef is None:
        return None
    try:
        return np.asarray(coef, dtype=np.float64).ravel()
    except (TypeError, ValueError):  # e.g. a kernel SVM's coef_ property raises
        return None


def model_parameters(model) -> np.ndarray:
    """All fitted weights of a linear model or a neural network, flat. Local.

    ``coef_`` then ``intercept_``, or a multilayer perceptron's ``coefs_``
    then ``intercepts_`` (for the gap between two strategies' fits).
    """
    final = final_step(getattr(model, "estimator_", model))
    if hasattr(final, "coefs_"):
        parts = [*final.coefs_, *final.intercepts_]
    else:
        parts = [final.coef_, final.intercept_]
    return np.concatenate([np.ravel(np.asarray(p, dtype=np.float64)) for p in parts])


def relative_gap(ours, reference) -> float | None:
    """Largest ``|ours - reference|`` over the largest ``|reference|``. Pure.

    Absolute when the reference is all zeros; ``None`` when either is
    ``None`` or their shapes differ (nothing to compare).
    """
    if ours is None or reference is None or np.shape(ours) != np.shape(reference):
        return None
    reference = np.asarray(reference, dtype=np.float64)
    diff = np.abs(np.asarray(ours, dtype=np.float64) - reference)
    return float(diff.max() / (np.abs(reference).max() or 1.0))


def coefficient_names(model, feature_names) -> list[str] | None:
    """Names of the flattened coefficients: features, prefixed by the class when there are several rows. Local."""
    final = final_step(getattr(model, "estimator_", model))
    coef = np.atleast_2d(getattr(final, "coef_", np.zeros((1, 0))))
    if feature_names is None or coef.shape[1] != len(feature_names):
        return None
    if coef.shape[0] == 1:
        return [str(n) for n in feature_names]
    classes = getattr(final, "classes_", range(coef.shape[0]))
    return [f"{c}: {n}" for c in classes for n in feature_names]


def _gather_local(coef: np.ndarray | None, width: int, comm: Intracomm) -> np.ndarray:
    """Every rank's local coefficients as rows (NaN for a rank without a local model). Collective."""
    from mpitrain.comm import allgather_object

    mine = np.full(width, np.nan) if coef is None or coef.size != width else coef
    return np.array(allgather_object(mine, comm))


def local_coefficients(
    estimator, X, y, sample_weight, comm: Intracomm
) -> np.ndarray | None:
    """Each rank's model fitted on its own rows only, as a (ranks, coefficients) array.

    Collective over ``comm`` (one allgather).  The same mpitrain estimator
    on ``COMM_SELF``: what the rank would have learnt alone, to set next to
    the combined model.  A rank without rows, or whose rows cannot be
    fitted alone (one class, too few rows), gives a row of NaN.  ``None``
    when the model has no linear coefficients.
    """
    from sklearn.base import clone

    from mpitrain.comm import self_comm

    global_coef = model_coefficients(estimator)
    if global_coef is None:
        return None
    local = None
    if len(X):
        try:
            alone = clone(estimator).set_params(comm=self_comm())
            local = model_coefficients(alone.fit(X, y, sample_weight=sample_weight))
        except Exception:
            local = None
    return _gather_local(local, global_coef.size, comm)


def local_coefficients_from_statistics(
    estimator, statistics, comm: Intracomm
) -> np.ndarray | None:
    """As :func:`local_coefficients`, from this rank's sufficient statistics (streamed fits). Collective."""
    from sklearn.base import clone

    from mpitrain.comm import self_comm

    global_coef = model_coefficients(estimator)
    if global_coef is None:
        return None
    local = None
    if statistics.count:
        try:
            alone = clone(estimator).set_params(comm=self_comm())
            local = model_coefficients(alone.fit_statistics(statistics))
        except Exception:
            local = None
    return _gather_local(local, global_coef.size, comm)


# --------------------------------------------------------------------------
# Plots


def _feature_importances(model) -> np.ndarray | None:
    """A fitted model's ``feature_importances_`` as float64, or ``None``. Local."""
    try:
        values = getattr(model, "feature_importances_", None)
    except (AttributeError, ValueError):  # a property that cannot answer (no trees)
        return None
    if values is None:
        return None
    values = np.asarray(values, dtype=np.float64).ravel()
    return values if values.size and np.all(np.isfinite(values)) else None


def _decision_region_inputs(model, X, y, comm: Intracomm, bins: int = 40):
    """Global bounds and per-class 2-D histograms of the rows, by reduction. Collective.

    The bounds are the exact 0.5% and 99.5% quantiles of each feature (not
    the extremes, which a few outliers would stretch until the bulk of the
    data is a sliver); the rows outside are left out of the histograms.
    """
    from mpitrain.comm import allreduce_sum
    from mpitrain.stats import global_quantiles

    classes = np.asarray(model.classes_)
    X = np.asarray(X, dtype=np.float64)
    lo, hi = global_quantiles(X, [0.005, 0.995], comm=comm)
    pad = 0.05 * np.where(hi > lo, hi - lo, 1.0)
    bounds = (
        float(lo[0] - pad[0]),
        float(hi[0] + pad[0]),
        float(lo[1] - pad[1]),
        float(hi[1] + pad[1]),
    )
    xe = np.linspace(bounds[0], bounds[1], bins + 1)
    ye = np.linspace(bounds[2], bounds[3], bins + 1)
    hist = np.zeros((len(classes), bins, bins))
    for k, c in enumerate(classes):
        rows = np.asarray(X)[np.asarray(y) == c]
        if len(rows):
            hist[k] = np.histogram2d(rows[:, 0], rows[:, 1], bins=[xe, ye])[0]
    return bounds, allreduce_sum(hist, comm)


def evaluation_plots(
    result: dict,
    model,
    X,
    y,
    comm: Intracomm,
    directory: str,
    *,
    prefix: str = "",
    title: str = "",
) -> list[str]:
    """Draw the plots of an evaluation on rank 0. Collective over ``comm``.

    Regression: predicted vs actual and residuals.  Classification:
    confusion matrix, ROC (when the model gives scores) and, for two
    features, the decision regions over per-class densities.  Everything
    drawn comes from reduced statistics (``result`` from
    :func:`mpitrain.metrics.evaluate_estimator`, and per-class histograms
    reduced here); no row leaves its rank.

    Returns
    -------
    list of str
        The PNG files written (the same list on every rank).
    """
    from mpitrain import plots

    region = None
    final = final_step(model)
    if (
        result["task"] == "classification"
        and getattr(final, "n_features_in_", None) == 2
        and np.asarray(X).shape[1] == 2
    ):
        region = _decision_region_inputs(model, X, y, comm)
    head = f"{title}: " if title else ""

    def draw() -> list[str]:
        os.makedirs(directory, exist_ok=True)
        out = []

        def path(name: str) -> str:
            return os.path.join(directory, f"{prefix}{name}.png")

        curve = getattr(final, "loss_curve_", None)
        if curve:  # a network trained by epochs (adam, sgd)
            out.append(
                plots.plot_loss_curve(
                    curve,
                    path("loss_curve"),
                    title=f"{head}training loss",
                    validation_scores=getattr(final, "validation_scores_", None),
                )
            )
        importances = _feature_importances(final)
        if importances is not None:  # tree ensembles: forests, boosted trees
            out.append(
                plots.plot_feature_importances(
                    importances,
                    path("feature_importances"),
                    feature_names=getattr(final, "feature_names_in_", None),
                    title=f"{head}feature importances",
                )
            )
        if result["task"] == "regression":
            h = result["histograms"]
            out.append(
                plots.plot_predicted_vs_actual(
                    h["joint"],
                    h["edges"],
                    h["edges"],
                    path("predicted_vs_actual"),
                    title=f"{head}predicted vs actual",
                    r2=result["r2"],
                )
            )
            out.append(
                plots.plot_residuals(
                    h["residual"],
                    h["residual_edges"],
                    path("residuals"),
                    title=f"{head}residuals",
                    hist2d=h["residual_vs_predicted"],
                    predicted_edges=h["edges"],
                    residual_edges=h["residual_edges"],
                )
            )
            return out
        out.append(
            plots.plot_confusion_matrix(
                result["confusion_matrix"],
                result["labels"],
                path("confusion_matrix"),
                title=f"{head}confusion matrix",
            )
        )
        roc = result.get("roc")
        if roc is not None:
            if roc.get("kind") == "binary":
                curves = [
                    {
                        "fpr": roc["fpr"],
                        "tpr": roc["tpr"],
                        "auc": roc["auc"],
                        "label": f"positive: {roc['pos_label']}",
                    }
                ]
            else:
                curves = [
                    {
                        "fpr": c["fpr"],
                        "tpr": c["tpr"],
                        "auc": c["auc"],
                        "label": str(label),
                    }
                    for label, c in zip(roc["classes"], roc["curves"])
                ]
            out.append(plots.plot_roc(curves, path("roc"), title=f"{head}ROC"))
        if region is not None:
            bounds, hist = region
            out.append(
                plots.plot_decision_regions(
                    model,
                    bounds,
                    path("decision_regions"),
                    class_hist=hist,
                    class_labels=[str(c) for c in final.classes_],
                    # 200 x 200 points: a kernel SVM with thousands of support
                    # vectors evaluates them in about a second (300 x 300: 2.3 s).
                    resolution=200,
                    title=f"{head}decision regions",
                )
            )
        return out

    return run_on_root(comm, f"drawing plots in {directory}", draw)


def coefficient_plot(
    global_coef: np.ndarray,
    local_coefs: np.ndarray,
    model,
    feature_names,
    comm: Intracomm,
    directory: str,
    *,
    prefix: str = "",
    title: str = "",
) -> list[str]:
    """Each rank's local coefficients next to the combined model's, drawn on rank 0. Collective."""
    from mpitrain import plots

    names = coefficient_names(model, feature_names)

    def draw() -> list[str]:
        os.makedirs(directory, exist_ok=True)
        name = os.path.join(directory, f"{prefix}coefficients.png")
        text = (
            f"{title}: each rank alone vs combined"
            if title
            else "each rank alone vs combined"
        )
        return [
            plots.plot_coefficients(
                global_coef, local_coefs, name, feature_names=names, title=text
            )
        ]

    return run_on_root(comm, f"drawing the coefficient plot in {directory}", draw)


# --------------------------------------------------------------------------
# Text


def format_evaluation(result: dict) -> str:
    """A short readable summary of :func:`mpitrain.metrics.evaluate_estimator`'s result. Pure."""
    from mpitrain.report import format_table

    if result["task"] == "regression":
        return format_table(
            ["rows", "R²", "MSE", "RMSE", "MAE"],
            [
                [
                    f"{result['n_rows']:,}",
                    f"{result['r2']:.6f}",
                    f"{result['mse']:.6g}",
                    f"{result['rmse']:.6g}",
                    f"{result['mae']:.6g}",
                ]
            ],
        )
    labels = [str(label) for label in result["labels"]]
    rows = [
        [label, f"{p:.4f}", f"{r:.4f}", f"{f:.4f}", f"{int(s):,}"]
        for label, p, r, f, s in zip(
            labels,
            result["precision"],
            result["recall"],
            result["f1"],
            result["support"],
        )
    ]
    macro = result["macro"]
    rows.append(
        [
            "macro avg",
            f"{macro['precision']:.4f}",
            f"{macro['recall']:.4f}",
            f"{macro['f1']:.4f}",
            f"{int(np.sum(result['support'])):,}",
        ]
    )
    text = format_table(["class", "precision", "recall", "F1", "support"], rows)
    text += f"\naccuracy {result['accuracy']:.6f} on {result['n_rows']:,} rows"
    roc = result.get("roc")
    if roc is not None and roc.get("auc") is not None:
        how = "binary" if roc.get("kind") == "binary" else "one-vs-rest macro"
        text += f"; ROC AUC {roc['auc']:.6f} ({how}, exact)"
    matrix = np.asarray(result["confusion_matrix"])
    text += "\nconfusion matrix (rows: true, columns: predicted)\n" + format_table(
        [""] + labels,
        [
            [label] + [f"{v:,}" if float(v).is_integer() else f"{v:.3g}" for v in row]
            for label, row in zip(labels, matrix)
        ],
    )
    return text
