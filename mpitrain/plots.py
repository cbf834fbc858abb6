"""PNG plots drawn on rank 0 from reduced statistics.

Every function here is pure (no MPI): it takes small arrays that the caller
has already reduced across ranks -- histograms, a confusion matrix, ROC
points, coefficient vectors, a fitted model -- never the rows themselves,
and writes one PNG file, atomically (a temporary file beside the final name,
renamed on success), then returns the final path.  Inputs are checked before
anything is drawn, so bad shapes raise a :class:`ValueError` and leave no
file behind and an older file under the same name untouched.

matplotlib is imported lazily inside the functions, through its object
oriented API (:class:`matplotlib.figure.Figure` with the Agg canvas): no
display is needed, no global backend is switched, and nothing is registered
with :mod:`matplotlib.pyplot`, so a user's own pyplot session is unaffected
and ``import mpitrain.plots`` costs only numpy.

Figures are :data:`FIGSIZE` inches per panel at :data:`DPI` dots per inch.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from mpitrain.data import atomic_path

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

__all__ = [
    "plot_explained_variance",
    "plot_projection",
    "plot_predicted_vs_actual",
    "plot_residuals",
    "plot_confusion_matrix",
    "plot_roc",
    "plot_coefficients",
    "plot_decision_regions",
    "plot_scaling",
    "plot_loss_curve",
    "plot_feature_importances",
    "FIGSIZE",
    "DPI",
    "MAX_COEFFICIENTS",
    "MAX_IMPORTANCES",
]

#: Size of one panel, in inches; multi-panel figures are whole multiples of it.
FIGSIZE = (6.4, 4.8)
#: Resolution of the PNG files.
DPI = 110
#: At most this many features are shown by :func:`plot_coefficients`.
MAX_COEFFICIENTS = 50
#: Confusion matrices with more classes than this are drawn without numbers in the cells.
_MAX_ANNOTATED_CLASSES = 20
#: Counts spanning at least this ratio are coloured on a log scale.
_LOG_SCALE_RATIO = 100.0
#: The phases of the scaling benchmark, bottom to top in the stacked bars.
_PHASES = ("read", "compute", "communicate", "solve", "wait")


# --------------------------------------------------------------------------
# checking inputs (before anything is drawn or written)


def _array(
    value: Any,
    name: str,
    ndim: int,
    *,
    finite: bool = True,
    nonnegative: bool = False,
    allow_nan: bool = False,
) -> np.ndarray:
    """``value`` as a float64 array of ``ndim`` dimensions, or a clear ValueError."""
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(
            f"{name} must be a numeric array, got {type(value).__name__}"
        ) from None
    if array.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, it has shape {array.shape}")
    values = array[~np.isnan(array)] if allow_nan else array
    if finite and not np.isfinite(values).all():
        raise ValueError(
            f"{name} must be finite{' (NaN allowed)' if allow_nan else ''}"
        )
    if nonnegative and (values < 0).any():
        raise ValueError(f"{name} must be non-negative (they are counts)")
    return array


def _edges(value: Any, name: str) -> np.ndarray:
    """Histogram bin edges: 1-D, at least two, finite and strictly increasing."""
    edges = _array(value, name, 1)
    if edges.size < 2:
        raise ValueError(f"{name} must hold at least 2 bin edges, got {edges.size}")
    if not (np.diff(edges) > 0).all():
        raise ValueError(f"{name} must be strictly increasing")
    return edges


def _counts_2d(
    value: Any,
    name: str,
    x_edges: np.ndarray,
    y_edges: np.ndarray,
    x_name: str,
    y_name: str,
) -> np.ndarray:
    counts = _array(value, name, 2, nonnegative=True)
    expected = (x_edges.size - 1, y_edges.size - 1)
    if counts.shape != expected:
        raise ValueError(
            f"{name} has shape {counts.shape}, but {x_name} and {y_name} give "
            f"{expected} bins (len(edges) - 1 each)"
        )
    return counts


def _title(title: str | None, default: str) -> str:
    if title is not None and not isinstance(title, str):
        raise ValueError(f"title must be a string or None, got {type(title).__name__}")
    return default if title is None else title


def _labels(
    labels: Sequence[Any] | None, n: int, name: str, default_prefix: str
) -> list[str]:
    if labels is None:
        return [f"{default_prefix}{i}" for i in range(n)]
    labels = [str(label) for label in labels]
    if len(labels) != n:
        raise ValueError(f"{name} has {len(labels)} entries, expected {n}")
    return labels


def _short(label: str, width: int = 18) -> str:
    """Long tick labels would squeeze the plot area; keep their start."""
    return label if len(label) <= width else label[: width - 1] + "\u2026"


# --------------------------------------------------------------------------
# drawing helpers


def _figure(ncols: int = 1, nrows: int = 1) -> Figure:
    """A figure not registered with pyplot, on the Agg canvas (no display, no backend switch)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(
        figsize=(FIGSIZE[0] * ncols, FIGSIZE[1] * nrows), dpi=DPI, layout="constrained"
    )
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: str | os.PathLike[str]) -> str:
    """Write ``figure`` to ``path`` as PNG via a temporary file, then free it."""
    final = os.fspath(path)
    try:
        with atomic_path(final) as tmp:
            # The temporary name ends in .tmp: say the format explicitly.
            figure.savefig(tmp, format="png", dpi=DPI)
            # mkstemp made the file private (0600); a plot should be as readable as any new file.
            os.chmod(tmp, 0o666 & ~_umask())
    finally:
        # Figures outside pyplot are freed when unreferenced; clearing breaks
        # the artist reference cycles at once, which matters for big images.
        figure.clear()
    return final


def _umask() -> int:
    """The process's file-creation mask (reading it means setting it, so set it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _density_norm(counts: np.ndarray) -> Normalize:
    """Colour scale for count images: log when the non-zero counts span decades."""
    from matplotlib.colors import LogNorm, Normalize

    positive = counts[counts > 0]
    if positive.size and positive.max() / positive.min() >= _LOG_SCALE_RATIO:
        return LogNorm(vmin=positive.min(), vmax=positive.max())
    return Normalize(vmin=0.0, vmax=float(positive.max()) if positive.size else 1.0)


def _density_image(
    figure: Figure,
    ax: Axes,
    counts: np.ndarray,
    x_edges: np.ndarray,
    y_edges: np.ndarray,
    label: str = "rows per bin",
) -> None:
    """Draw a (len(x_edges)-1, len(y_edges)-1) count histogram; empty bins stay blank."""
    masked = np.ma.masked_less_equal(counts.T, 0.0)  # rows of the image are y bins
    mesh = ax.pcolormesh(
        x_edges,
        y_edges,
        masked,
        norm=_density_norm(counts),
        cmap="viridis",
        shading="flat",
        rasterized=True,
    )
    figure.colorbar(mesh, ax=ax, label=label)
    ax.set_xlim(x_edges[0], x_edges[-1])
    ax.set_ylim(y_edges[0], y_edges[-1])
    if not (counts > 0).any():
        ax.text(
            0.5,
            0.5,
            "no rows",
            transform=ax.transAxes,
            ha="center",
            va="center",
            color="0.4",
        )


def _format_count(value: float) -> str:
    """Counts as integers when they are (``1,234``), else three significant digits."""
    if float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:.3g}"


def _class_colours(n: int) -> list[tuple[float, float, float, float]]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


# --------------------------------------------------------------------------
# regression


def plot_predicted_vs_actual(
    hist2d: np.ndarray,
    actual_edges: np.ndarray,
    predicted_edges: np.ndarray,
    path: str | os.PathLike[str],
    *,
    title: str | None = None,
    r2: float | None = None,
) -> str:
    """Predicted against actual target values, as a density image with the line y = x.

    Parameters
    ----------
    hist2d : array-like of shape (len(actual_edges) - 1, len(predicted_edges) - 1)
        Rows per (actual, predicted) bin, summed over all ranks (counts or
        weights, non-negative).  ``hist2d[i, j]`` counts rows with actual
        value in bin ``i`` and prediction in bin ``j``, as
        ``numpy.histogram2d(y_true, y_pred, [actual_edges, predicted_edges])``
        returns it.
    actual_edges : array-like of shape (n_actual_bins + 1,)
        Strictly increasing bin edges of the actual values (x axis).
    predicted_edges : array-like of shape (n_predicted_bins + 1,)
        Strictly increasing bin edges of the predictions (y axis).
    path : str or path-like
        The PNG file to write; its directory must exist.
    title : str, default=None
        Default ``"Predicted vs actual"``.
    r2 : float, default=None
        The global R², shown in the plot when given.

    Returns
    -------
    str
        ``path``.

    Notes
    -----
    Empty bins are left blank; the colour scale is logarithmic when the
    non-empty bins' counts span two decades or more.
    """
    actual_edges = _edges(actual_edges, "actual_edges")
    predicted_edges = _edges(predicted_edges, "predicted_edges")
    counts = _counts_2d(
        hist2d,
        "hist2d",
        actual_edges,
        predicted_edges,
        "actual_edges",
        "predicted_edges",
    )
    title = _title(title, "Predicted vs actual")
    if r2 is not None and not isinstance(r2, (int, float, np.floating, np.integer)):
        raise ValueError(f"r2 must be a number or None, got {type(r2).__name__}")

    figure = _figure()
    ax = figure.add_subplot()
    _density_image(figure, ax, counts, actual_edges, predicted_edges)
    low = min(actual_edges[0], predicted_edges[0])
    high = max(actual_edges[-1], predicted_edges[-1])
    ax.plot(
        [low, high],
        [low, high],
        color="crimson",
        linewidth=1.2,
        linestyle="--",
        label="y = x (perfect)",
    )
    # The limits set by the image clip the line to the plotted range.
    ax.set_xlim(actual_edges[0], actual_edges[-1])
    ax.set_ylim(predicted_edges[0], predicted_edges[-1])
    ax.set_xlabel("actual")
    ax.set_ylabel("predicted")
    ax.set_title(title)
    summary = f"{_format_count(counts.sum())} rows"
    if r2 is not None:
        summary = f"R\u00b2 = {float(r2):.4f}\n" + summary
    ax.text(
        0.02,
        0.98,
        summary,
        transform=ax.transAxes,
        ha="left",
        va="top",
        bbox={
            "boxstyle": "round",
            "facecolor": "white",
            "alpha": 0.8,
            "edgecolor": "0.7",
        },
    )
    ax.legend(loc="lower right")
    return _save(figure, path)


def plot_residuals(
    counts: np.ndarray,
    edges: np.ndarray,
    path: str | os.PathLike[str],
    *,
    title: str | None = None,
    hist2d: np.ndarray | None = None,
    predicted_edges: np.ndarray | None = None,
    residual_edges: np.ndarray | None = None,
) -> str:
    """Histogram of the residuals ``actual - predicted``, and optionally residual vs predicted.

    Parameters
    ----------
    counts : array-like of shape (len(edges) - 1,)
        Rows per residual bin, summed over all ranks (non-negative).
    edges : array-like of shape (n_bins + 1,)
        Strictly increasing residual bin edges.
    path : str or path-like
        The PNG file to write; its directory must exist.
    title : str, default=None
        Default ``"Residuals"``.
    hist2d : array-like of shape (len(predicted_edges) - 1, len(residual_edges) - 1), default=None
        Rows per (predicted, residual) bin, summed over all ranks.  When
        given, a second panel shows residuals against predictions as a
        density image.
    predicted_edges : array-like of shape (n_predicted_bins + 1,), default=None
        Prediction bin edges of ``hist2d`` (x axis of the second panel);
        required with ``hist2d``.
    residual_edges : array-like of shape (n_residual_bins + 1,), default=None
        Residual bin edges of ``hist2d`` (its y axis); default ``edges``.

    Returns
    -------
    str
        ``path``.
    """
    edges = _edges(edges, "edges")
    counts = _array(counts, "counts", 1, nonnegative=True)
    if counts.size != edges.size - 1:
        raise ValueError(
            f"counts has {counts.size} bins but edges gives {edges.size - 1} (len(edges) - 1)"
        )
    title = _title(title, "Residuals")
    if hist2d is None:
        if predicted_edges is not None or residual_edges is not None:
            raise ValueError(
                "predicted_edges and residual_edges describe hist2d; pass hist2d too"
            )
        density = None
    else:
        if predicted_edges is None:
            raise ValueError("hist2d needs predicted_edges (its x bins)")
        predicted_edges = _edges(predicted_edges, "predicted_edges")
        residual_edges = (
            edges
            if residual_edges is None
            else _edges(residual_edges, "residual_edges")
        )
        density = _counts_2d(
            hist2d,
            "hist2d",
            predicted_edges,
            residual_edges,
            "predicted_edges",
            "residual_edges",
        )

    figure = _figure(ncols=1 if density is None else 2)
    ax = figure.add_subplot(1, 1 if density is None else 2, 1)
    ax.stairs(
        counts, edges, fill=True, color="steelblue", alpha=0.85, label="rows per bin"
    )
    ax.stairs(counts, edges, color="navy", linewidth=0.8)
    ax.axvline(
        0.0, color="crimson", linestyle="--", linewidth=1.2, label="zero residual"
    )
    ax.set_xlim(edges[0], edges[-1])
    ax.set_ylim(bottom=0)
    ax.set_xlabel("residual (actual \u2212 predicted)")
    ax.set_ylabel("rows")
    ax.legend(loc="upper right")
    total = counts.sum()
    if total > 0:
        # Mean and spread from bin centres: exact enough to read, and honest about it.
        centres = (edges[:-1] + edges[1:]) / 2
        mean = float(counts @ centres / total)
        spread = float(np.sqrt(max(counts @ (centres - mean) ** 2 / total, 0.0)))
        summary = f"{_format_count(total)} rows\nmean \u2248 {mean:.3g}\nstd \u2248 {spread:.3g}"
    else:
        summary = "no rows"
    ax.text(
        0.02,
        0.98,
        summary,
        transform=ax.transAxes,
        ha="left",
        va="top",
        bbox={
            "boxstyle": "round",
            "facecolor": "white",
            "alpha": 0.8,
            "edgecolor": "0.7",
        },
    )
    if density is None:
        ax.set_title(title)
    else:
        ax.set_title("Residual distribution")
        side = figure.add_subplot(1, 2, 2)
        _density_image(figure, side, density, predicted_edges, residual_edges)
        side.axhline(0.0, color="crimson", linestyle="--", linewidth=1.2)
        side.set_xlabel("predicted")
        side.set_ylabel("residual (actual \u2212 predicted)")
        side.set_title("Residual vs predicted")
        figure.suptitle(title)
    return _save(figure, path)


# --------------------------------------------------------------------------
# classification


def plot_confusion_matrix(
    matrix: np.ndarray,
    labels: Sequence[Any],
    path: str | os.PathLike[str],
    *,
    normalize: str | None = None,
    title: str | None = None,
) -> str:
    """The confusion matrix as a coloured grid with the counts written in the cells.

    Parameters
    ----------
    matrix : array-like of shape (n_classes, n_classes)
        ``matrix[i, j]`` rows of true class ``i`` predicted as class ``j``,
        summed over all ranks (as :func:`sklearn.metrics.confusion_matrix`).
    labels : sequence of length n_classes
        Class names, in the order of the matrix's rows.
    path : str or path-like
        The PNG file to write; its directory must exist.
    normalize : {None, "true"}, default=None
        ``"true"`` colours each cell by its share of the true class (each row
        sums to 1) and writes the share above the count.
    title : str, default=None
        Default ``"Confusion matrix"`` with the accuracy.

    Returns
    -------
    str
        ``path``.

    Notes
    -----
    With more than 20 classes the cells are too small to write in, and only
    colours are drawn.
    """
    matrix = _array(matrix, "matrix", 2, nonnegative=True)
    n = matrix.shape[0]
    if matrix.shape != (n, n) or n == 0:
        raise ValueError(
            f"matrix must be square with at least one class, it has shape {matrix.shape}"
        )
    if normalize not in (None, "true"):
        raise ValueError(f"normalize must be None or 'true', got {normalize!r}")
    labels = _labels(labels, n, "labels", "class ")
    total = matrix.sum()
    accuracy = np.trace(matrix) / total if total > 0 else float("nan")
    default = "Confusion matrix" + (f" (accuracy {accuracy:.3f})" if total > 0 else "")
    if normalize == "true":
        default += "\nshares of each true class"
    title = _title(title, default)

    row_sums = matrix.sum(axis=1, keepdims=True)
    if normalize == "true":
        with np.errstate(invalid="ignore", divide="ignore"):
            shown = np.where(
                row_sums > 0, matrix / np.where(row_sums > 0, row_sums, 1.0), 0.0
            )
        vmax, colour_label = 1.0, "share of true class"
    else:
        shown = matrix
        vmax, colour_label = max(float(matrix.max()), 1.0), "rows"

    figure = _figure()
    ax = figure.add_subplot()
    image = ax.imshow(
        shown, cmap="Blues", vmin=0.0, vmax=vmax, interpolation="nearest", aspect="auto"
    )
    figure.colorbar(image, ax=ax, label=colour_label)
    if n <= _MAX_ANNOTATED_CLASSES:
        size = 10 if n <= 6 else 8 if n <= 12 else 6
        for i in range(n):
            for j in range(n):
                text = _format_count(matrix[i, j])
                if normalize == "true":
                    text = f"{100 * shown[i, j]:.1f}%\n({text})"
                dark = shown[i, j] > 0.6 * vmax
                ax.text(
                    j,
                    i,
                    text,
                    ha="center",
                    va="center",
                    fontsize=size,
                    color="white" if dark else "black",
                )
    tick_size = 10 if n <= 10 else 7 if n <= 25 else 5
    ticks = np.arange(n)
    ax.set_xticks(
        ticks,
        [_short(s) for s in labels],
        fontsize=tick_size,
        rotation=45 if n > 5 or max(map(len, labels)) > 6 else 0,
        ha="right" if n > 5 else "center",
    )
    ax.set_yticks(ticks, [_short(s) for s in labels], fontsize=tick_size)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    return _save(figure, path)


def plot_roc(
    curves: Sequence[Mapping[str, Any]],
    path: str | os.PathLike[str],
    *,
    title: str | None = None,
) -> str:
    """ROC curves, one per class (one-vs-rest) or one for a binary problem, with the chance line.

    Parameters
    ----------
    curves : sequence of dict
        Each ``{"fpr": array, "tpr": array, "auc": float, "label": str}``:
        false and true positive rates of shape (n_points,) each, in [0, 1],
        computed from all ranks' rows (e.g. from reduced score histograms).
        ``auc`` may be NaN (a class absent from the data) or missing (then
        the trapezoidal area under the given points is shown); ``label``
        defaults to ``"class i"``.
    path : str or path-like
        The PNG file to write; its directory must exist.
    title : str, default=None
        Default ``"ROC curve"`` (one curve) or ``"ROC curves (one vs rest)"``.

    Returns
    -------
    str
        ``path``.
    """
    if (
        isinstance(curves, Mapping)
        or not isinstance(curves, Sequence)
        or len(curves) == 0
    ):
        raise ValueError(
            "curves must be a non-empty list of dicts with keys 'fpr', 'tpr', 'auc', 'label'"
        )
    checked = []
    for i, curve in enumerate(curves):
        if not isinstance(curve, Mapping) or "fpr" not in curve or "tpr" not in curve:
            raise ValueError(
                f"curves[{i}] must be a dict with at least 'fpr' and 'tpr'"
            )
        fpr = _array(curve["fpr"], f"curves[{i}]['fpr']", 1)
        tpr = _array(curve["tpr"], f"curves[{i}]['tpr']", 1)
        if fpr.size != tpr.size or fpr.size == 0:
            raise ValueError(
                f"curves[{i}]: fpr and tpr must be non-empty and of equal length, "
                f"got {fpr.size} and {tpr.size}"
            )
        tolerance = 1e-9
        if (
            fpr.min() < -tolerance
            or fpr.max() > 1 + tolerance
            or tpr.min() < -tolerance
            or tpr.max() > 1 + tolerance
        ):
            raise ValueError(
                f"curves[{i}]: fpr and tpr are rates and must lie in [0, 1]"
            )
        auc = curve.get("auc")
        if auc is None:
            order = np.argsort(fpr, kind="stable")
            auc = float(
                np.sum(np.diff(fpr[order]) * (tpr[order][1:] + tpr[order][:-1]) / 2)
            )
        try:
            auc = float(auc)
        except (TypeError, ValueError):
            raise ValueError(
                f"curves[{i}]['auc'] must be a number, got {auc!r}"
            ) from None
        checked.append((fpr, tpr, auc, str(curve.get("label", f"class {i}"))))
    title = _title(
        title, "ROC curve" if len(checked) == 1 else "ROC curves (one vs rest)"
    )

    figure = _figure()
    ax = figure.add_subplot()
    ax.plot(
        [0, 1],
        [0, 1],
        color="0.5",
        linestyle="--",
        linewidth=1,
        label="chance (AUC = 0.5)",
    )
    for (fpr, tpr, auc, label), colour in zip(checked, _class_colours(len(checked))):
        area = "n/a" if math.isnan(auc) else f"{auc:.3f}"
        ax.plot(
            fpr,
            tpr,
            color=colour,
            linewidth=1.6,
            label=f"{_short(label, 24)} (AUC = {area})",
            drawstyle="default",
            marker="." if fpr.size <= 2 else None,
        )
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.grid(True, alpha=0.3)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title)
    ax.legend(
        loc="lower right",
        fontsize=9 if len(checked) <= 8 else 6,
        ncol=1 if len(checked) <= 12 else 2,
    )
    return _save(figure, path)


# --------------------------------------------------------------------------
# models


def plot_coefficients(
    global_coef: np.ndarray,
    local_coefs: np.ndarray,
    path: str | os.PathLike[str],
    *,
    feature_names: Sequence[str] | None = None,
    title: str | None = None,
) -> str:
    """Each rank's local coefficients next to the global model's, per feature.

    Shows what combining did: the faint dots are models fitted on one
    rank's rows only, the strong marker is the global model.

    Parameters
    ----------
    global_coef : array-like of shape (n_features,)
        Coefficients of the combined (global) model.
    local_coefs : array-like of shape (n_ranks, n_features)
        Row ``r``: coefficients of a model fitted on rank ``r``'s rows only.
        A row of NaN marks a rank without a local model (e.g. no rows); it
        is left out.
    path : str or path-like
        The PNG file to write; its directory must exist.
    feature_names : sequence of str of length n_features, default=None
        Default ``x0, x1, ...``.
    title : str, default=None
        Default ``"Coefficients: global model vs each rank's local model"``.
        When there are more than :data:`MAX_COEFFICIENTS` features, only the
        ones with the largest ``|global_coef|`` are shown, ordered by it, and
        the title says so.

    Returns
    -------
    str
        ``path``.
    """
    global_coef = _array(global_coef, "global_coef", 1)
    local_coefs = _array(local_coefs, "local_coefs", 2, allow_nan=True)
    n_features = global_coef.size
    if n_features == 0:
        raise ValueError("global_coef is empty: there are no coefficients to plot")
    if local_coefs.shape[1] != n_features:
        raise ValueError(
            f"local_coefs has shape {local_coefs.shape}; expected (n_ranks, {n_features}) "
            f"to match global_coef"
        )
    names = _labels(feature_names, n_features, "feature_names", "x")
    title = _title(title, "Coefficients: global model vs each rank's local model")
    shown = np.arange(n_features)
    if n_features > MAX_COEFFICIENTS:
        shown = np.argsort(-np.abs(global_coef), kind="stable")[:MAX_COEFFICIENTS]
        title += (
            f"\n({MAX_COEFFICIENTS} of {n_features} features, largest |global| first)"
        )
    has_model = ~np.isnan(local_coefs).all(axis=1)
    local = local_coefs[has_model][:, shown]
    n_ranks = local.shape[0]

    figure = _figure()
    ax = figure.add_subplot()
    positions = np.arange(shown.size)
    ax.axhline(0.0, color="0.6", linewidth=0.8)
    if n_ranks:
        with warnings.catch_warnings():
            warnings.simplefilter(
                "ignore", RuntimeWarning
            )  # a feature NaN on every rank
            low, high = np.nanmin(local, axis=0), np.nanmax(local, axis=0)
        ax.vlines(
            positions,
            low,
            high,
            color="tab:blue",
            alpha=0.35,
            linewidth=3,
            label="range of local models",
        )
        # Spread ranks sideways a little so equal values stay visible.
        offsets = np.linspace(-0.12, 0.12, n_ranks) if n_ranks > 1 else np.zeros(1)
        ax.plot(
            (positions[None, :] + offsets[:, None]).ravel(),
            local.ravel(),
            linestyle="none",
            marker="o",
            markersize=4,
            color="tab:blue",
            alpha=0.45,
            label=f"local models, one per rank ({n_ranks} rank{'s' if n_ranks > 1 else ''})",
        )
    ax.plot(
        positions,
        global_coef[shown],
        linestyle="none",
        marker="D",
        markersize=6,
        color="crimson",
        markeredgecolor="black",
        markeredgewidth=0.6,
        label="global model",
        zorder=3,
    )
    label_size = 10 if shown.size <= 12 else 8 if shown.size <= 25 else 6
    ax.set_xticks(
        positions,
        [_short(names[i], 14) for i in shown],
        fontsize=label_size,
        rotation=0 if shown.size <= 8 else 90,
    )
    ax.set_xlim(-0.6, shown.size - 0.4)
    ax.set_xlabel("feature")
    ax.set_ylabel("coefficient")
    ax.grid(True, axis="y", alpha=0.3)
    ax.set_title(title, fontsize=11)
    ax.legend(loc="best", fontsize=8)
    return _save(figure, path)


def _grid_predictions(estimator: Any, grid: np.ndarray, method: str) -> np.ndarray:
    """``estimator.method(grid)``; warnings about a model fitted with column names are noise here."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=".*feature names.*", category=UserWarning
        )
        return np.asarray(getattr(estimator, method)(grid))


def _libsvm_binary(estimator: Any) -> bool:
    """Whether ``estimator`` is a fitted two-class libsvm ``SVC`` that :func:`mpitrain.svm.decision_values` takes. Pure."""
    from sklearn.svm import SVC

    from mpitrain.svm._smo import KERNELS

    return (
        isinstance(estimator, SVC)
        and estimator.kernel in KERNELS
        and len(getattr(estimator, "classes_", ())) == 2
        and hasattr(estimator, "support_vectors_")
    )


def _grid_regions(estimator: Any, grid: np.ndarray) -> tuple[np.ndarray, Any]:
    """The predicted labels on ``grid`` and, for a binary model, its decision values (else None).

    A two-class libsvm SVC is evaluated once, by blocked BLAS kernels
    (:func:`mpitrain.svm.decision_values`, the same values as its
    ``decision_function`` to about 1e-12; 0.39 s against 2.44 s on a
    300 × 300 grid and 1,423 support vectors), and its labels are the
    decision's sign, as libsvm's are (a point within that 1e-12 of the
    boundary may take the other colour).  Other models are asked for
    ``predict`` and, with two classes, ``decision_function``.
    """
    if _libsvm_binary(estimator):
        from mpitrain.svm import decision_values

        decision = decision_values(estimator, grid)
        # libsvm's two-class rule: classes_[1] where the decision is not negative.
        return np.asarray(estimator.classes_)[(decision >= 0).astype(np.intp)], decision
    predicted = _grid_predictions(estimator, grid, "predict").ravel()
    decision = None
    if len(getattr(estimator, "classes_", ())) == 2 and callable(
        getattr(estimator, "decision_function", None)
    ):
        try:
            decision = _grid_predictions(estimator, grid, "decision_function")
        except Exception:
            decision = None
    return predicted, decision


def plot_decision_regions(
    estimator: Any,
    bounds: Sequence[float],
    path: str | os.PathLike[str],
    *,
    class_hist: np.ndarray | None = None,
    class_labels: Sequence[Any] | None = None,
    resolution: int = 300,
    title: str | None = None,
) -> str:
    """Decision regions of a fitted 2-feature classifier, with the data as per-class histograms.

    The model is evaluated on a ``resolution`` x ``resolution`` grid over
    ``bounds`` (on the calling rank: the model, not the rows).  For a binary
    model with ``decision_function`` the boundary (level 0) and the margins
    (levels -1 and +1) are drawn as contours.  The data are shown from
    ``class_hist``, not as raw points: each non-empty bin is a dot at its
    centre in its class's colour, its area proportional to the count.

    Parameters
    ----------
    estimator : fitted classifier
        Anything with ``predict`` taking arrays of shape (n, 2), e.g. a
        fitted :class:`sklearn.svm.SVC` or pipeline.
    bounds : (xmin, xmax, ymin, ymax)
        The plotted range of feature 0 (x) and feature 1 (y).
    path : str or path-like
        The PNG file to write; its directory must exist.
    class_hist : array-like of shape (n_classes, bx, by), default=None
        ``class_hist[k, i, j]``: rows of class ``k`` in bin ``(i, j)`` of a
        regular ``bx`` x ``by`` grid over ``bounds`` (feature 0 along
        ``i``), summed over all ranks.  Classes in the order of
        ``estimator.classes_``.
    class_labels : sequence of length n_classes, default=None
        Class names for the legend; default ``estimator.classes_``.
    resolution : int, default=300
        Grid points per axis at which the model is evaluated (2 to 2000).
    title : str, default=None
        Default ``"Decision regions"`` with the estimator's class name.

    Returns
    -------
    str
        ``path``.
    """
    if not callable(getattr(estimator, "predict", None)):
        raise ValueError(
            f"estimator must be a fitted classifier with predict(), got {type(estimator).__name__}"
        )
    n_in = getattr(estimator, "n_features_in_", 2)
    if n_in != 2:
        raise ValueError(
            f"decision regions need a model of 2 features; this one has {n_in}"
        )
    bounds = _array(bounds, "bounds", 1)
    if bounds.size != 4:
        raise ValueError(
            f"bounds must be (xmin, xmax, ymin, ymax), got {bounds.size} numbers"
        )
    xmin, xmax, ymin, ymax = (float(b) for b in bounds)
    if not (xmin < xmax and ymin < ymax):
        raise ValueError(
            f"bounds must have xmin < xmax and ymin < ymax, got {tuple(bounds)}"
        )
    if (
        isinstance(resolution, bool)
        or not isinstance(resolution, (int, np.integer))
        or not 2 <= resolution <= 2000
    ):
        raise ValueError(
            f"resolution must be an integer from 2 to 2000, got {resolution!r}"
        )
    classes = getattr(estimator, "classes_", None)
    if classes is None:
        raise ValueError(
            f"estimator must be a fitted classifier with classes_, got {type(estimator).__name__}"
        )
    classes = np.asarray(classes)
    n_classes = classes.size
    hist = None
    if class_hist is not None:
        hist = _array(class_hist, "class_hist", 3, nonnegative=True)
        if hist.shape[0] != n_classes or min(hist.shape[1:]) < 1:
            raise ValueError(
                f"class_hist must have shape (n_classes={n_classes}, bx, by) with classes in "
                f"the order of estimator.classes_, got {hist.shape}"
            )
    names = _labels(
        classes if class_labels is None else class_labels,
        n_classes,
        "class_labels",
        "class ",
    )
    title = _title(title, f"Decision regions ({type(estimator).__name__})")

    xs = np.linspace(xmin, xmax, resolution)
    ys = np.linspace(ymin, ymax, resolution)
    gx, gy = np.meshgrid(xs, ys)  # rows of the image are y
    grid = np.column_stack([gx.ravel(), gy.ravel()])
    try:
        predicted, decision = _grid_regions(estimator, grid)
    except Exception as exc:
        raise ValueError(
            f"estimator.predict failed on the 2-feature grid: {exc}"
        ) from exc
    if predicted.size != grid.shape[0]:
        raise ValueError(
            f"estimator.predict returned {predicted.size} values for {grid.shape[0]} points"
        )
    # classes_ is sorted for scikit-learn models, but do not rely on it.
    order = np.argsort(classes, kind="stable")
    where = np.clip(np.searchsorted(classes, predicted, sorter=order), 0, n_classes - 1)
    region = order[where]
    if not (classes[region] == predicted).all():
        raise ValueError(
            "estimator.predict returned labels that are not in estimator.classes_"
        )
    if decision is not None and decision.shape != (grid.shape[0],):
        decision = None

    from matplotlib.colors import BoundaryNorm, ListedColormap, to_rgba
    from matplotlib.lines import Line2D

    colours = _class_colours(n_classes)
    # Regions in pale versions of the class colours, so the data stand out on them.
    pale = [tuple(0.65 + 0.35 * np.asarray(to_rgba(c)[:3])) + (1.0,) for c in colours]
    figure = _figure()
    ax = figure.add_subplot()
    ax.pcolormesh(
        xs,
        ys,
        region.reshape(gx.shape),
        cmap=ListedColormap(pale),
        norm=BoundaryNorm(np.arange(n_classes + 1) - 0.5, n_classes),
        shading="nearest",
        rasterized=True,
    )
    handles = [
        Line2D(
            [],
            [],
            linestyle="none",
            marker="s",
            markersize=10,
            color=pale[k],
            markeredgecolor="0.5",
            label=f"predicted {_short(names[k])}",
        )
        for k in range(n_classes)
    ]
    if decision is not None:
        ax.contour(
            xs,
            ys,
            decision.reshape(gx.shape),
            levels=[-1.0, 0.0, 1.0],
            colors="black",
            linestyles=["--", "-", "--"],
            linewidths=[0.9, 1.5, 0.9],
        )
        handles += [
            Line2D([], [], color="black", linewidth=1.5, label="decision function = 0"),
            Line2D(
                [],
                [],
                color="black",
                linestyle="--",
                linewidth=0.9,
                label="decision function = \u00b11",
            ),
        ]
    if hist is not None:
        _, bx, by = hist.shape
        cx = xmin + (np.arange(bx) + 0.5) * (xmax - xmin) / bx
        cy = ymin + (np.arange(by) + 0.5) * (ymax - ymin) / by
        ccx, ccy = np.meshgrid(cx, cy, indexing="ij")
        # The fullest bin's dot about fills its cell (the axes take ~65% x 80% of the figure).
        cell_points = min(0.65 * FIGSIZE[0] * 72 / bx, 0.8 * FIGSIZE[1] * 72 / by)
        largest = hist.max() if hist.max() > 0 else 1.0
        for k in range(hist.shape[0]):
            filled = hist[k] > 0
            if not filled.any():
                continue
            ax.scatter(
                ccx[filled],
                ccy[filled],
                s=(cell_points**2) * hist[k][filled] / largest,
                color=colours[k],
                alpha=0.7,
                edgecolors="black",
                linewidths=0.3,
                zorder=3,
            )
            handles.append(
                Line2D(
                    [],
                    [],
                    linestyle="none",
                    marker="o",
                    markersize=6,
                    color=colours[k],
                    markeredgecolor="black",
                    markeredgewidth=0.3,
                    label=f"{_short(names[k])}: {_format_count(hist[k].sum())} rows",
                )
            )
    ax.set_xlim(xmin, xmax)
    ax.set_ylim(ymin, ymax)
    feature_names = getattr(estimator, "feature_names_in_", None)
    axis_names = (
        [str(n) for n in feature_names]
        if feature_names is not None and len(feature_names) == 2
        else ["feature 0", "feature 1"]
    )
    ax.set_xlabel(axis_names[0])
    ax.set_ylabel(axis_names[1])
    ax.set_title(title)
    ax.legend(
        handles=handles,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize=8,
        borderaxespad=0,
    )
    return _save(figure, path)


# --------------------------------------------------------------------------
# scaling benchmark


def _number(value: Any) -> float | None:
    """A finite float, or None for anything missing or unusable."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _scaling_points(entries: Any, cores: int | None) -> dict[str, list[dict]]:
    """Benchmark entries grouped by model, one point per rank count (median of repeats)."""
    if not isinstance(entries, Sequence) or isinstance(entries, (str, bytes)):
        return {}
    by_key: dict[tuple[str, int], list[Mapping]] = {}
    for entry in entries:
        if not isinstance(entry, Mapping):
            continue
        ranks = _number(entry.get("ranks"))
        if ranks is None or ranks < 1 or not float(ranks).is_integer():
            continue
        by_key.setdefault((str(entry.get("model") or ""), int(ranks)), []).append(entry)
    models: dict[str, list[dict]] = {}
    for (model, ranks), repeats in sorted(by_key.items()):
        seconds = [
            s
            for s in (_number(e.get("seconds")) for e in repeats)
            if s is not None and s > 0
        ]
        phases: dict[str, list[float]] = {}
        for entry in repeats:
            given = entry.get("phases")
            for name, value in given.items() if isinstance(given, Mapping) else ():
                number = _number(value)
                if number is not None and number >= 0:
                    phases.setdefault(str(name), []).append(number)
        flags = [
            e.get("oversubscribed")
            for e in repeats
            if isinstance(e.get("oversubscribed"), bool)
        ]
        over = any(flags) if flags else (cores is not None and ranks > cores)
        models.setdefault(model, []).append(
            {
                "ranks": ranks,
                "seconds": float(np.median(seconds)) if seconds else None,
                "phases": {name: float(np.median(v)) for name, v in phases.items()},
                "oversubscribed": over,
            }
        )
    return models


def _rank_axis(ax: Axes, ranks: list[int]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(ranks, [str(r) for r in ranks])
    ax.minorticks_off()
    ax.set_xlabel("MPI ranks")


def _scaling_lines(
    ax: Axes, models: dict[str, list[dict]], strong: bool, cores: int | None
) -> bool:
    """Speedup (strong) or time (weak) against ranks; False if nothing had a time."""
    drawn = False
    all_ranks: set[int] = set()
    colours = _class_colours(max(len(models), 1))
    for (model, points), colour in zip(models.items(), colours):
        timed = [p for p in points if p["seconds"] is not None]
        if not timed:
            continue
        drawn = True
        ranks = np.array([p["ranks"] for p in timed])
        seconds = np.array([p["seconds"] for p in timed])
        base_ranks, base_seconds = ranks[0], seconds[0]
        values = base_seconds / seconds if strong else seconds
        all_ranks.update(ranks.tolist())
        label = model or ("measured" if strong else "measured time")
        ax.plot(ranks, values, color=colour, marker="o", label=label)
        over = np.array([p["oversubscribed"] for p in timed])
        if over.any():
            ax.plot(
                ranks[over],
                values[over],
                linestyle="none",
                marker="o",
                markersize=11,
                markerfacecolor="none",
                markeredgecolor="crimson",
                markeredgewidth=1.5,
            )
            for x, y in zip(ranks[over], values[over]):
                # Left of the point, so the label stays inside the axes at the largest rank count.
                ax.annotate(
                    "oversubscribed",
                    (x, y),
                    textcoords="offset points",
                    xytext=(-8, 6),
                    ha="right",
                    fontsize=7,
                    color="crimson",
                )
        if strong:
            ideal = ranks / base_ranks
        else:
            ideal = np.full(ranks.shape, base_seconds)
        ax.plot(ranks, ideal, color=colour, linestyle=":", linewidth=1)
    if not drawn:
        return False
    from matplotlib.lines import Line2D

    handles, _ = ax.get_legend_handles_labels()
    handles.append(Line2D([], [], color="0.3", linestyle=":", label="ideal"))
    if any(
        p["oversubscribed"]
        for points in models.values()
        for p in points
        if p["seconds"] is not None
    ):
        handles.append(
            Line2D(
                [],
                [],
                linestyle="none",
                marker="o",
                markersize=9,
                markerfacecolor="none",
                markeredgecolor="crimson",
                label="oversubscribed (ranks > cores)",
            )
        )
    if cores is not None and min(all_ranks) <= cores < max(all_ranks):
        ax.axvline(cores, color="0.5", linestyle="--", linewidth=0.8)
        ax.annotate(
            f"{cores} cores",
            (cores, 1),
            xycoords=("data", "axes fraction"),
            xytext=(3, -12),
            textcoords="offset points",
            fontsize=7,
            color="0.4",
        )
    _rank_axis(ax, sorted(all_ranks))
    if strong:
        ax.set_ylabel(
            f"speedup over {min(all_ranks)} rank{'s' if min(all_ranks) > 1 else ''}"
        )
        ax.set_title("Strong scaling (fixed problem)")
    else:
        ax.set_ylim(bottom=0)
        ax.set_ylabel("seconds")
        ax.set_title("Weak scaling (fixed rows per rank)")
    ax.grid(True, alpha=0.3)
    ax.legend(handles=handles, fontsize=8, loc="best")
    return True


def _phase_bars(ax: Axes, models: dict[str, list[dict]], label: str) -> bool:
    """Stacked bars of the time per phase, one bar per (model, ranks); False if no phases."""
    bars = [
        (model, p) for model, points in models.items() for p in points if p["phases"]
    ]
    if not bars:
        return False
    names = [name for name in _PHASES if any(name in p["phases"] for _, p in bars)]
    names += sorted({name for _, p in bars for name in p["phases"]} - set(names))
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    positions = np.arange(len(bars))
    bottom = np.zeros(len(bars))
    for index, name in enumerate(names):
        heights = np.array([p["phases"].get(name, 0.0) for _, p in bars])
        ax.bar(
            positions,
            heights,
            bottom=bottom,
            width=0.7,
            color=cmap(index % cmap.N),
            label=name,
            edgecolor="white",
            linewidth=0.5,
        )
        bottom += heights
    over = np.array([p["oversubscribed"] for _, p in bars])
    if over.any():
        ax.bar(
            positions[over],
            bottom[over],
            width=0.7,
            fill=False,
            hatch="//",
            edgecolor="crimson",
            linewidth=0.8,
            label="oversubscribed",
        )
    several = len(models) > 1
    ticks = [
        f"{p['ranks']}{'*' if p['oversubscribed'] else ''}"
        + (f"\n{_short(m, 10)}" if several else "")
        for m, p in bars
    ]
    ax.set_xticks(positions, ticks, fontsize=8 if len(bars) <= 16 else 6)
    ax.set_xlabel("MPI ranks" + ("  (* oversubscribed)" if over.any() else ""))
    ax.set_ylabel("seconds")
    ax.set_title(f"Time per phase, {label}")
    ax.legend(fontsize=8, loc="best")
    ax.grid(True, axis="y", alpha=0.3)
    return True


def plot_scaling(result: Mapping[str, Any], path: str | os.PathLike[str]) -> str:
    """The scaling benchmark: speedup (strong), time (weak) and the time of each phase.

    Parameters
    ----------
    result : dict
        The benchmark's JSON document::

            {"strong": [{"ranks": int, "seconds": float,
                         "phases": {"read": s, "compute": s, "communicate": s,
                                    "solve": s, "wait": s},
                         "oversubscribed": bool, "model": str}, ...],
             "weak": [... the same ...],
             "machine": {"cores": int}}

        Every key is optional: entries without a usable ``ranks`` are
        skipped, entries without ``seconds`` appear only in the phase bars,
        unknown phases are stacked after the known ones, and a missing
        ``oversubscribed`` means ``ranks > machine.cores`` (when known).
        Repeated (model, ranks) runs are combined by their median.  Strong
        speedup is relative to each model's smallest rank count.
    path : str or path-like
        The PNG file to write; its directory must exist.

    Returns
    -------
    str
        ``path``.

    Raises
    ------
    ValueError
        If ``result`` is not a dict or holds nothing that can be plotted.
    """
    if not isinstance(result, Mapping):
        raise ValueError(
            f"result must be the benchmark's dict, got {type(result).__name__}"
        )
    machine = (
        result.get("machine") if isinstance(result.get("machine"), Mapping) else {}
    )
    cores_value = _number(machine.get("cores"))
    cores = int(cores_value) if cores_value is not None and cores_value >= 1 else None
    experiments = [
        (kind, _scaling_points(result.get(kind), cores)) for kind in ("strong", "weak")
    ]
    experiments = [(kind, models) for kind, models in experiments if models]
    timed = [
        (kind, models)
        for kind, models in experiments
        if any(p["seconds"] is not None for points in models.values() for p in points)
    ]
    phased = [
        (kind, models)
        for kind, models in experiments
        if any(p["phases"] for points in models.values() for p in points)
    ]
    if not timed and not phased:
        raise ValueError(
            "the scaling result has no 'strong' or 'weak' entries with 'ranks' and "
            "'seconds' or 'phases' to plot"
        )

    columns = [
        kind
        for kind, _ in experiments
        if (kind in dict(timed)) or (kind in dict(phased))
    ]
    nrows = (1 if timed else 0) + (1 if phased else 0)
    figure = _figure(ncols=len(columns), nrows=nrows)
    axes = figure.subplots(nrows, len(columns), squeeze=False)
    for column, kind in enumerate(columns):
        models = dict(experiments)[kind]
        row = 0
        if timed:
            if not _scaling_lines(axes[row, column], models, kind == "strong", cores):
                axes[row, column].set_axis_off()
                axes[row, column].text(
                    0.5,
                    0.5,
                    f"no {kind}-scaling times",
                    ha="center",
                    va="center",
                    transform=axes[row, column].transAxes,
                    color="0.4",
                )
            row += 1
        if phased and not _phase_bars(axes[row, column], models, f"{kind} scaling"):
            axes[row, column].set_axis_off()
            axes[row, column].text(
                0.5,
                0.5,
                f"no {kind}-scaling phases",
                ha="center",
                va="center",
                transform=axes[row, column].transAxes,
                color="0.4",
            )
    figure.suptitle(
        "Scaling" + (f" on a machine with {cores} cores" if cores is not None else "")
    )
    return _save(figure, path)


def plot_loss_curve(
    loss_curve: Sequence[float],
    path: str | os.PathLike[str],
    *,
    title: str | None = None,
    validation_scores: Sequence[float] | None = None,
) -> str:
    """The training loss of a network per epoch, and its validation score if early stopping.

    Parameters
    ----------
    loss_curve : sequence of float
        The loss after each epoch (a fitted MLP's ``loss_curve_``): the
        mean over all ranks' rows, the same on every rank.
    path : str or path-like
        The PNG file to write; its directory must exist.
    title : str, default=None
        Default ``"training loss"``.
    validation_scores : sequence of float, default=None
        The validation score after each epoch (``validation_scores_``), drawn
        on a second axis.

    Returns
    -------
    str
        ``path``.
    """
    loss = _array(loss_curve, "loss_curve", 1)
    if loss.size == 0:
        raise ValueError("loss_curve must hold at least one epoch")
    scores = None
    if validation_scores is not None:
        scores = _array(validation_scores, "validation_scores", 1, allow_nan=True)
        if scores.size != loss.size:
            raise ValueError(
                f"validation_scores ({scores.size}) and loss_curve ({loss.size}) "
                "must have one value per epoch each"
            )
    figure = _figure()
    ax = figure.add_subplot()
    epochs = np.arange(1, loss.size + 1)
    ax.plot(epochs, loss, marker="." if loss.size <= 50 else None, label="loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss")
    positive = loss[np.isfinite(loss)]
    if positive.size and positive.min() > 0 and positive.max() / positive.min() > 100:
        ax.set_yscale("log")
    if scores is not None:
        right = ax.twinx()
        right.plot(epochs, scores, color="tab:orange", label="validation score")
        right.set_ylabel("validation score")
        right.legend(loc="upper right")
    ax.legend(loc="upper left" if scores is not None else "best")
    ax.grid(True, alpha=0.3)
    ax.set_title(_title(title, "training loss"))
    return _save(figure, path)


#: At most this many features are shown by :func:`plot_feature_importances`.
MAX_IMPORTANCES = 30


def plot_feature_importances(
    importances: Any,
    path: str | os.PathLike[str],
    *,
    feature_names: Sequence[str] | None = None,
    title: str | None = None,
) -> str:
    """A fitted model's feature importances as horizontal bars, largest on top.

    For tree ensembles (``feature_importances_`` of a forest or of
    gradient-boosted trees).  When there are more than
    :data:`MAX_IMPORTANCES` features only the largest are shown, and the
    title says so.

    Parameters
    ----------
    importances : array-like of shape (n_features,)
        Non-negative, finite.
    path : str or path-like
        The PNG file to write; its directory must exist.
    feature_names : sequence of str of length n_features, default=None
        Default ``x0, x1, ...``.
    title : str, default=None
        Default ``"feature importances"``.

    Returns
    -------
    str
        ``path``.
    """
    values = _array(importances, "importances", 1)
    n_features = values.size
    if n_features == 0:
        raise ValueError("importances is empty: there are no features to plot")
    if np.any(values < 0):
        raise ValueError("importances must be non-negative")
    names = _labels(feature_names, n_features, "feature_names", "x")
    title = _title(title, "feature importances")
    shown = np.argsort(-values, kind="stable")[:MAX_IMPORTANCES]
    if n_features > MAX_IMPORTANCES:
        title += f"\n({MAX_IMPORTANCES} of {n_features} features, largest first)"
    figure = _figure()
    ax = figure.add_subplot()
    positions = np.arange(shown.size)[::-1]  # the largest on top
    ax.barh(positions, values[shown], color="tab:green", alpha=0.8)
    label_size = 10 if shown.size <= 12 else 8 if shown.size <= 25 else 6
    ax.set_yticks(positions, [_short(names[i], 24) for i in shown], fontsize=label_size)
    ax.set_ylim(-0.6, shown.size - 0.4)
    ax.set_xlabel("importance")
    ax.grid(True, axis="x", alpha=0.3)
    ax.set_title(title, fontsize=11)
    return _save(figure, path)


# --------------------------------------------------------------------------
# structure without labels: PCA and k-means


def plot_explained_variance(
    explained_variance_ratio: Sequence[float],
    path: str | os.PathLike[str],
    *,
    title: str | None = None,
) -> str:
    """The share of variance of each principal component, and its running total.

    Parameters
    ----------
    explained_variance_ratio : sequence of float
        A fitted PCA's ``explained_variance_ratio_`` (all ranks' rows), in
        decreasing order.
    path : str or path-like
        The PNG file to write; its directory must exist.
    title : str, default=None
        Default ``"explained variance"``.

    Returns
    -------
    str
        ``path``.
    """
    ratio = _array(
        explained_variance_ratio, "explained_variance_ratio", 1, nonnegative=True
    )
    if ratio.size == 0:
        raise ValueError("explained_variance_ratio must hold at least one component")
    figure = _figure()
    ax = figure.add_subplot()
    components = np.arange(1, ratio.size + 1)
    ax.bar(components, ratio, color="tab:blue", label="component")
    ax.step(
        components,
        np.cumsum(ratio),
        where="mid",
        color="tab:orange",
        label="cumulative",
    )
    ax.set_xlabel("principal component")
    ax.set_ylabel("share of the variance")
    ax.set_ylim(0.0, max(1.0, float(np.cumsum(ratio)[-1])) * 1.05)
    if ratio.size <= 30:
        ax.set_xticks(components)
    ax.legend(loc="center right")
    ax.grid(True, alpha=0.3)
    ax.set_title(_title(title, "explained variance"))
    return _save(figure, path)


def plot_projection(
    hist2d: np.ndarray,
    x_edges: np.ndarray,
    y_edges: np.ndarray,
    path: str | os.PathLike[str],
    *,
    cluster_sizes: Sequence[float] | None = None,
    axis_labels: tuple[str, str] = ("component 1", "component 2"),
    title: str | None = None,
) -> str:
    """Rows projected on two axes, from reduced 2-D histograms, coloured by cluster.

    Parameters
    ----------
    hist2d : ndarray of shape (n_x_bins, n_y_bins) or (n_clusters, n_x_bins, n_y_bins)
        Rows per bin of all ranks (one histogram per cluster for k-means).
        One histogram is drawn as a density image; with clusters each bin
        takes the colour of the cluster with most rows in it, its opacity
        growing with the bin's count (log scale).
    x_edges, y_edges : ndarray
        Bin edges of the two axes.
    path : str or path-like
        The PNG file to write; its directory must exist.
    cluster_sizes : sequence of float, default=None
        Rows of each cluster (shown in the legend).
    axis_labels : (str, str), default=("component 1", "component 2")
    title : str, default=None
        Default ``"2-D projection"``.

    Returns
    -------
    str
        ``path``.
    """
    x_edges = _edges(x_edges, "x_edges")
    y_edges = _edges(y_edges, "y_edges")
    hist = _array(hist2d, "hist2d", np.ndim(hist2d), nonnegative=True)
    if hist.ndim == 2:
        hist = hist[np.newaxis]
    if hist.ndim != 3:
        raise ValueError(f"hist2d must be 2-D or 3-D, got {hist.ndim} dimensions")
    for counts in hist:
        _counts_2d(counts, "hist2d", x_edges, y_edges, "x_edges", "y_edges")
    n_clusters = hist.shape[0]
    sizes = None
    if cluster_sizes is not None:
        sizes = _array(cluster_sizes, "cluster_sizes", 1, nonnegative=True)
        if sizes.size != n_clusters:
            raise ValueError(
                f"cluster_sizes has {sizes.size} entries, expected {n_clusters}"
            )
    figure = _figure()
    ax = figure.add_subplot()
    total = hist.sum(axis=0)
    if n_clusters == 1:
        _density_image(figure, ax, total, x_edges, y_edges)
    else:
        from matplotlib.patches import Patch

        colours = np.array(_class_colours(n_clusters))
        dominant = np.argmax(hist, axis=0)
        rgba = colours[dominant].copy()  # (x bins, y bins, 4)
        positive = total > 0
        opacity = np.zeros_like(total)
        if positive.any():
            logs = np.log1p(total[positive])
            opacity[positive] = 0.25 + 0.75 * logs / logs.max()
        rgba[..., 3] = opacity
        ax.imshow(
            np.transpose(rgba, (1, 0, 2)),  # rows of the image are y bins
            origin="lower",
            extent=(x_edges[0], x_edges[-1], y_edges[0], y_edges[-1]),
            aspect="auto",
            interpolation="nearest",
        )
        handles = [
            Patch(
                color=colours[j],
                label=f"cluster {j}"
                + ("" if sizes is None else f": {_format_count(sizes[j])} rows"),
            )
            for j in range(n_clusters)
        ]
        ax.legend(handles=handles, loc="best", fontsize="small")
    ax.set_xlabel(axis_labels[0])
    ax.set_ylabel(axis_labels[1])
    ax.set_title(_title(title, "2-D projection"))
    return _save(figure, path)
