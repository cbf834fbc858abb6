"""Plots from reduced statistics: valid PNGs of sensible size, atomic writes, clear errors.

The plotting functions are pure (no MPI), so these tests run in the pytest
process.  Inputs are built the way the distributed code builds them: per-part
histograms with shared edges, summed (checked equal to numpy on all rows),
models fitted on each part, and ROC points and confusion matrices from
scikit-learn on all rows.
"""

from __future__ import annotations

import os
import subprocess
import sys

import matplotlib.image
import numpy as np
import pytest
from sklearn.datasets import make_blobs
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.metrics import confusion_matrix, roc_auc_score, roc_curve
from sklearn.svm import SVC

from mpitrain import plots
from mpitrain.data import row_range
from mpitrain.errors import MpitrainError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# One panel is 6.4 x 4.8 in at 110 dpi (704 x 528 px); multi-panel figures are whole multiples.
MIN_WIDTH, MAX_WIDTH = 600, 1500
MIN_HEIGHT, MAX_HEIGHT = 400, 1100
MIN_BYTES, MAX_BYTES = 5_000, 2_000_000


def check_png(
    path, *, width: int | None = None, height: int | None = None
) -> np.ndarray:
    """Assert ``path`` is a sensible, non-blank PNG and its directory holds no temp files."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        assert f.read(8) == PNG_SIGNATURE
    assert MIN_BYTES <= os.path.getsize(path) <= MAX_BYTES, os.path.getsize(path)
    image = matplotlib.image.imread(path)
    rows, columns = image.shape[:2]
    assert image.ndim == 3 and image.shape[2] in (3, 4)
    assert MIN_WIDTH <= columns <= MAX_WIDTH and MIN_HEIGHT <= rows <= MAX_HEIGHT, (
        image.shape
    )
    if width is not None:
        assert columns == width
    if height is not None:
        assert rows == height
    rgb = (image[..., :3] * 255).round().astype(np.uint32)
    colours = np.unique(rgb[..., 0] << 16 | rgb[..., 1] << 8 | rgb[..., 2])
    assert colours.size > 10, f"nearly blank image: {colours.size} colours"
    assert not [
        name for name in os.listdir(os.path.dirname(path)) if name.endswith(".tmp")
    ]
    return image


def parts(n: int, size: int) -> list[slice]:
    """Row slices of ``size`` ranks plus an empty one in the middle (a rank with no rows)."""
    slices = [slice(*row_range(n, size, r)) for r in range(size)]
    return slices[:1] + [slice(0, 0)] + slices[1:]


# --------------------------------------------------------------- regression


@pytest.fixture(scope="module")
def regression_rows():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(3000, 3))
    y = X @ [2.0, -1.0, 0.5] + 3.0 + rng.normal(scale=0.7, size=3000)
    model = LinearRegression().fit(X, y)
    return X, y, model.predict(X), model


def test_regression_plots_from_summed_histograms(tmp_path, regression_rows):
    X, y, pred, model = regression_rows
    # Edges agreed from global min/max, then one histogram per rank, summed: what the caller reduces.
    actual_edges = np.linspace(min(y.min(), pred.min()), max(y.max(), pred.max()), 41)
    predicted_edges = actual_edges.copy()
    resid = y - pred
    resid_edges = np.linspace(resid.min(), resid.max(), 31)
    hist2d = np.zeros((40, 40))
    counts = np.zeros(30)
    resid2d = np.zeros((40, 30))
    for rows in parts(len(y), 3):
        hist2d += np.histogram2d(y[rows], pred[rows], [actual_edges, predicted_edges])[
            0
        ]
        counts += np.histogram(resid[rows], resid_edges)[0]
        resid2d += np.histogram2d(
            pred[rows], resid[rows], [predicted_edges, resid_edges]
        )[0]
    np.testing.assert_array_equal(
        hist2d, np.histogram2d(y, pred, [actual_edges, predicted_edges])[0]
    )
    np.testing.assert_array_equal(counts, np.histogram(resid, resid_edges)[0])
    assert hist2d.sum() == counts.sum() == len(y)

    r2 = model.score(X, y)
    out = plots.plot_predicted_vs_actual(
        hist2d, actual_edges, predicted_edges, tmp_path / "pva.png", r2=r2
    )
    assert out == str(tmp_path / "pva.png")
    check_png(out, width=704, height=528)
    check_png(
        plots.plot_residuals(counts, resid_edges, tmp_path / "res.png"),
        width=704,
        height=528,
    )
    # With the residual-vs-predicted panel the figure is two panels wide.
    wide = plots.plot_residuals(
        counts,
        resid_edges,
        tmp_path / "res2.png",
        hist2d=resid2d,
        predicted_edges=predicted_edges,
        title="Residuals of the test set",
    )
    check_png(wide, width=2 * 704, height=528)
    assert sorted(os.listdir(tmp_path)) == ["pva.png", "res.png", "res2.png"]


def test_density_colour_scale_is_log_only_when_counts_span_decades():
    from matplotlib.colors import LogNorm

    assert isinstance(plots._density_norm(np.array([[0, 1], [5, 1000]])), LogNorm)
    linear = plots._density_norm(np.array([[0, 10], [20, 30]]))
    assert not isinstance(linear, LogNorm) and linear.vmax == 30
    assert not isinstance(plots._density_norm(np.zeros((3, 3))), LogNorm)


def test_empty_histograms_still_draw(tmp_path):
    edges = np.linspace(0, 1, 11)
    check_png(
        plots.plot_predicted_vs_actual(
            np.zeros((10, 10)), edges, edges, tmp_path / "a.png"
        )
    )
    check_png(plots.plot_residuals(np.zeros(10), edges, tmp_path / "b.png"))


# ---------------------------------------------------------- classification


@pytest.fixture(scope="module")
def three_classes():
    X, y = make_blobs(n_samples=900, centers=3, cluster_std=2.5, random_state=3)
    model = LogisticRegression().fit(X, y)
    return X, y, model


def test_confusion_matrix_counts_and_shares(tmp_path, three_classes):
    X, y, model = three_classes
    pred = model.predict(X)
    # Per-part matrices summed equal the matrix of all rows.
    # (scikit-learn refuses empty input; a rank with no rows contributes zeros.)
    matrix = sum(
        confusion_matrix(y[rows], pred[rows], labels=[0, 1, 2])
        if rows.stop > rows.start
        else np.zeros((3, 3), dtype=np.int64)
        for rows in parts(len(y), 4)
    )
    np.testing.assert_array_equal(matrix, confusion_matrix(y, pred))
    check_png(
        plots.plot_confusion_matrix(
            matrix, ["setosa", "versicolor", "virginica"], tmp_path / "cm.png"
        )
    )
    check_png(
        plots.plot_confusion_matrix(
            matrix, np.array([0, 1, 2]), tmp_path / "cmn.png", normalize="true"
        )
    )
    # Many classes: colours only, and a class with no rows (a zero row) is fine when normalized.
    big = np.random.default_rng(1).integers(0, 50, size=(25, 25)) + np.diag(
        np.full(25, 400)
    )
    big[3] = 0
    check_png(
        plots.plot_confusion_matrix(
            big,
            [f"class {i}" for i in range(25)],
            tmp_path / "big.png",
            normalize="true",
        )
    )


def test_roc_binary_and_one_vs_rest(tmp_path, three_classes):
    X, y, model = three_classes
    scores = model.predict_proba(X)
    curves = []
    for k in range(3):
        fpr, tpr, _ = roc_curve(y == k, scores[:, k])
        curves.append(
            {
                "fpr": fpr,
                "tpr": tpr,
                "auc": roc_auc_score(y == k, scores[:, k]),
                "label": f"class {k}",
            }
        )
    check_png(plots.plot_roc(curves, tmp_path / "ovr.png"))
    # Binary, with auc missing (computed from the points) and as a tuple of one.
    fpr, tpr = curves[0]["fpr"], curves[0]["tpr"]
    check_png(
        plots.plot_roc(
            ({"fpr": fpr, "tpr": tpr},), tmp_path / "binary.png", title="ROC"
        )
    )
    # An absent class: a NaN AUC on a degenerate curve still draws.
    nan_curve = {
        "fpr": [0.0, 1.0],
        "tpr": [0.0, 1.0],
        "auc": float("nan"),
        "label": "absent",
    }
    check_png(plots.plot_roc([curves[1], nan_curve], tmp_path / "nan.png"))


# ------------------------------------------------------------------ models


def test_coefficients_of_local_models_next_to_global(tmp_path, regression_rows):
    X, y, _, model = regression_rows
    local = []
    for rows in parts(len(y), 4):
        # A rank with no rows has no local model: a NaN row.
        local.append(
            LinearRegression().fit(X[rows], y[rows]).coef_
            if rows.stop > rows.start
            else np.full(X.shape[1], np.nan)
        )
    local = np.array(local)
    assert local.shape == (5, 3) and np.isnan(local[1]).all()
    check_png(
        plots.plot_coefficients(
            model.coef_,
            local,
            tmp_path / "coef.png",
            feature_names=["age", "income", "distance"],
        )
    )
    # No local models at all: the global coefficients alone.
    check_png(
        plots.plot_coefficients(model.coef_, np.empty((0, 3)), tmp_path / "global.png")
    )


def test_coefficients_show_at_most_50_features(tmp_path, monkeypatch):
    rng = np.random.default_rng(4)
    coef = rng.normal(size=120)
    local = coef + 0.2 * rng.normal(size=(3, 120))
    ticks = []
    from matplotlib.axes import Axes

    original = Axes.set_xticks

    def record(self, positions, labels=None, **kwargs):
        ticks.append(list(labels))
        return original(self, positions, labels, **kwargs)

    monkeypatch.setattr(Axes, "set_xticks", record)
    check_png(plots.plot_coefficients(coef, local, tmp_path / "many.png"))
    expected = [f"x{i}" for i in np.argsort(-np.abs(coef))[:50]]
    assert ticks == [expected]


class SpyClassifier:
    """Wraps a fitted classifier and records what the plot asks of it."""

    def __init__(self, model):
        self.model = model
        self.classes_ = model.classes_
        self.n_features_in_ = model.n_features_in_
        self.calls: list[tuple[str, np.ndarray]] = []

    def predict(self, X):
        self.calls.append(("predict", np.array(X)))
        return self.model.predict(X)

    def decision_function(self, X):
        self.calls.append(("decision_function", np.array(X)))
        return self.model.decision_function(X)


@pytest.mark.parametrize("centers", [2, 3])
def test_decision_regions_from_model_and_class_histograms(tmp_path, centers):
    X, y = make_blobs(n_samples=600, centers=centers, random_state=centers)
    model = SVC(kernel="rbf").fit(X, y)
    bounds = (
        X[:, 0].min() - 1,
        X[:, 0].max() + 1,
        X[:, 1].min() - 1,
        X[:, 1].max() + 1,
    )
    x_edges = np.linspace(bounds[0], bounds[1], 26)
    y_edges = np.linspace(bounds[2], bounds[3], 21)
    class_hist = np.zeros((centers, 25, 20))
    for rows in parts(len(y), 3):
        for k in range(centers):
            mine = y[rows] == k
            class_hist[k] += np.histogram2d(
                X[rows][mine, 0], X[rows][mine, 1], [x_edges, y_edges]
            )[0]
    assert class_hist.sum() == len(y)

    spy = SpyClassifier(model)
    out = plots.plot_decision_regions(
        spy, bounds, tmp_path / "regions.png", class_hist=class_hist, resolution=120
    )
    check_png(out, width=704, height=528)
    # The model is evaluated on the grid over the bounds, never on the rows.
    methods = [name for name, _ in spy.calls]
    assert methods == (
        ["predict", "decision_function"] if centers == 2 else ["predict"]
    )
    for _, grid in spy.calls:
        assert grid.shape == (120 * 120, 2)
        np.testing.assert_allclose(
            [grid[:, 0].min(), grid[:, 0].max(), grid[:, 1].min(), grid[:, 1].max()],
            bounds,
        )


@pytest.mark.parametrize("kernel", ["rbf", "linear", "poly"])
def test_decision_regions_of_a_binary_svc_equal_its_own_predictions(kernel):
    """The two-class SVC's grid, by blocked kernels, against scikit-learn's predict and decision_function."""
    X, y = make_blobs(n_samples=300, centers=2, cluster_std=3.0, random_state=1)
    labels = np.where(y == 0, "cat", "dog")
    model = SVC(kernel=kernel, C=2.0).fit(X, labels)
    gx, gy = np.meshgrid(np.linspace(-15, 15, 90), np.linspace(-15, 15, 70))
    grid = np.column_stack([gx.ravel(), gy.ravel()])
    predicted, decision = plots._grid_regions(model, grid)
    want = model.decision_function(grid)
    np.testing.assert_allclose(decision, want, rtol=0, atol=1e-9 * np.abs(want).max())
    np.testing.assert_array_equal(predicted, model.predict(grid))


def test_decision_regions_without_data_and_with_labels(tmp_path):
    X, y = make_blobs(n_samples=200, centers=2, random_state=0)
    labels = np.where(y == 0, "cat", "dog")
    model = SVC(kernel="linear").fit(X, labels)  # string classes
    bounds = (X[:, 0].min(), X[:, 0].max(), X[:, 1].min(), X[:, 1].max())
    check_png(
        plots.plot_decision_regions(
            model, bounds, tmp_path / "plain.png", title="Linear SVM"
        )
    )
    hist = np.ones((2, 5, 5))
    check_png(
        plots.plot_decision_regions(
            model,
            bounds,
            tmp_path / "labelled.png",
            class_hist=hist,
            class_labels=["Cat", "Dog"],
            resolution=50,
        )
    )


# ----------------------------------------------------------------- scaling


def _entry(ranks, seconds, model="ridge", **extra):
    phases = {
        "read": 0.3 * seconds,
        "compute": 0.5 * seconds,
        "communicate": 0.1 * seconds,
        "solve": 0.05,
        "wait": 0.05 * seconds,
    }
    return {
        "ranks": ranks,
        "seconds": seconds,
        "phases": phases,
        "model": model,
        **extra,
    }


def test_scaling_full_result(tmp_path):
    result = {
        "strong": [
            _entry(1, 10.0, oversubscribed=False),
            _entry(2, 5.4, oversubscribed=False),
            _entry(4, 4.1, oversubscribed=True),
            _entry(4, 3.9, oversubscribed=True),
            _entry(1, 4.0, "svm"),
            _entry(2, 2.5, "svm"),
        ],
        "weak": [_entry(1, 2.0), _entry(2, 2.1), _entry(4, 3.2)],
        "machine": {"cores": 2},
    }
    # Two experiments, each with a speedup/time panel above its phase bars.
    check_png(
        plots.plot_scaling(result, tmp_path / "scaling.png"),
        width=2 * 704,
        height=2 * 528,
    )


def test_scaling_tolerates_missing_keys(tmp_path):
    # Only strong, no phases, no machine, one entry without seconds, junk entries skipped.
    result = {
        "strong": [
            {"ranks": 1, "seconds": 3.0},
            {"ranks": 2, "seconds": 1.8},
            {"ranks": 4},
            {"seconds": 1.0},
            "junk",
            {"ranks": "many", "seconds": 1.0},
        ]
    }
    check_png(
        plots.plot_scaling(result, tmp_path / "strong.png"), width=704, height=528
    )
    # Only weak phases, no times; unknown phase names are stacked too.
    weak = {
        "weak": [
            {"ranks": 1, "phases": {"read": 1.0, "gpu": 0.5}},
            {"ranks": 8, "phases": {"read": 1.2, "compute": 0.4}},
        ],
        "machine": {"cores": 4},
    }
    check_png(plots.plot_scaling(weak, tmp_path / "weak.png"), width=704, height=528)
    # A single run still draws.
    check_png(plots.plot_scaling({"strong": [_entry(1, 2.0)]}, tmp_path / "one.png"))


@pytest.mark.parametrize(
    "result",
    [{}, {"strong": []}, {"strong": [{"model": "x"}]}, {"weak": "none"}, [1, 2]],
)
def test_scaling_with_nothing_to_plot_raises(tmp_path, result):
    with pytest.raises(ValueError, match="scaling result|benchmark's dict"):
        plots.plot_scaling(result, tmp_path / "nothing.png")
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------ errors and atomicity


EDGES = np.linspace(0, 1, 6)
BAD_CALLS = {
    "hist2d shape": (
        lambda p: plots.plot_predicted_vs_actual(np.ones((5, 4)), EDGES, EDGES, p),
        r"hist2d has shape \(5, 4\).*\(5, 5\)",
    ),
    "edges not increasing": (
        lambda p: plots.plot_predicted_vs_actual(
            np.ones((5, 5)), EDGES[::-1], EDGES, p
        ),
        "actual_edges must be strictly increasing",
    ),
    "negative counts": (
        lambda p: plots.plot_residuals(-np.ones(5), EDGES, p),
        "non-negative",
    ),
    "counts vs edges": (
        lambda p: plots.plot_residuals(np.ones(4), EDGES, p),
        "counts has 4 bins",
    ),
    "residual edges without hist2d": (
        lambda p: plots.plot_residuals(np.ones(5), EDGES, p, predicted_edges=EDGES),
        "pass hist2d",
    ),
    "residual hist2d shape": (
        lambda p: plots.plot_residuals(
            np.ones(5), EDGES, p, hist2d=np.ones((3, 5)), predicted_edges=EDGES
        ),
        "hist2d has shape",
    ),
    "matrix not square": (
        lambda p: plots.plot_confusion_matrix(np.ones((2, 3)), ["a", "b"], p),
        "square",
    ),
    "labels count": (
        lambda p: plots.plot_confusion_matrix(np.eye(3), ["a", "b"], p),
        "labels has 2 entries",
    ),
    "normalize": (
        lambda p: plots.plot_confusion_matrix(
            np.eye(2), ["a", "b"], p, normalize="all"
        ),
        "normalize must be None or 'true'",
    ),
    "roc not a list": (
        lambda p: plots.plot_roc({"fpr": [0, 1], "tpr": [0, 1]}, p),
        "non-empty list",
    ),
    "roc lengths": (
        lambda p: plots.plot_roc([{"fpr": [0, 0.5, 1], "tpr": [0, 1]}], p),
        "equal length",
    ),
    "roc rates": (
        lambda p: plots.plot_roc([{"fpr": [0, 2], "tpr": [0, 1]}], p),
        r"in \[0, 1\]",
    ),
    "coef shapes": (
        lambda p: plots.plot_coefficients(np.ones(3), np.ones((2, 4)), p),
        "local_coefs has shape",
    ),
    "coef names": (
        lambda p: plots.plot_coefficients(
            np.ones(3), np.ones((2, 3)), p, feature_names=["a"]
        ),
        "feature_names has 1 entries",
    ),
    "global coef NaN": (
        lambda p: plots.plot_coefficients(np.array([1.0, np.nan]), np.ones((1, 2)), p),
        "global_coef must be finite",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CALLS))
def test_bad_inputs_raise_and_leave_the_old_file(tmp_path, case):
    call, message = BAD_CALLS[case]
    target = tmp_path / "plot.png"
    target.write_bytes(b"old plot")
    with pytest.raises(ValueError, match=message):
        call(target)
    assert target.read_bytes() == b"old plot"
    assert os.listdir(tmp_path) == ["plot.png"]


@pytest.fixture(scope="module")
def blobs_svc():
    X, y = make_blobs(n_samples=100, centers=2, random_state=0)
    return SVC().fit(X, y)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"bounds": (0, 1, 0)}, r"bounds must be \(xmin, xmax, ymin, ymax\)"),
        ({"bounds": (1, 0, 0, 1)}, "xmin < xmax"),
        ({"bounds": (0, 1, 0, 1), "resolution": 1}, "resolution must be an integer"),
        (
            {"bounds": (0, 1, 0, 1), "class_hist": np.ones((3, 4, 4))},
            r"class_hist must have shape \(n_classes=2",
        ),
        (
            {
                "bounds": (0, 1, 0, 1),
                "class_hist": np.ones((2, 4, 4)),
                "class_labels": ["a"],
            },
            "class_labels has 1",
        ),
    ],
)
def test_decision_regions_bad_inputs(tmp_path, blobs_svc, kwargs, message):
    with pytest.raises(ValueError, match=message):
        plots.plot_decision_regions(blobs_svc, path=tmp_path / "r.png", **kwargs)
    assert os.listdir(tmp_path) == []


def test_decision_regions_needs_a_two_feature_classifier(tmp_path, regression_rows):
    X, y, _, model = regression_rows
    with pytest.raises(ValueError, match="2 features; this one has 3"):
        plots.plot_decision_regions(model, (0, 1, 0, 1), tmp_path / "r.png")
    with pytest.raises(ValueError, match="predict"):
        plots.plot_decision_regions(object(), (0, 1, 0, 1), tmp_path / "r.png")
    regressor = LinearRegression().fit(X[:, :2], y)
    with pytest.raises(ValueError, match="classes_"):
        plots.plot_decision_regions(regressor, (0, 1, 0, 1), tmp_path / "r.png")
    assert os.listdir(tmp_path) == []


def test_failure_while_writing_leaves_no_partial_file(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    def broken_savefig(self, fname, **kwargs):
        with open(fname, "wb") as f:
            f.write(PNG_SIGNATURE + b"half")
        raise OSError("disk full")

    target = tmp_path / "cm.png"
    target.write_bytes(b"old plot")
    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    with pytest.raises(OSError, match="disk full"):
        plots.plot_confusion_matrix(np.eye(2), ["a", "b"], target)
    assert target.read_bytes() == b"old plot"
    assert os.listdir(tmp_path) == ["cm.png"]


def test_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(MpitrainError, match="does not exist"):
        plots.plot_confusion_matrix(np.eye(2), ["a", "b"], tmp_path / "no" / "cm.png")


def test_file_mode_follows_umask(tmp_path):
    mask = os.umask(0o027)
    try:
        path = plots.plot_confusion_matrix(
            np.eye(2) * 5, ["a", "b"], tmp_path / "cm.png"
        )
    finally:
        os.umask(mask)
    assert os.stat(path).st_mode & 0o777 == 0o640


# ----------------------------------------------------- headless, no pyplot


def test_pyplot_state_is_untouched(tmp_path):
    import matplotlib.pyplot as plt

    backend, figures = plt.get_backend(), plt.get_fignums()
    plots.plot_roc(
        [{"fpr": [0, 0.2, 1], "tpr": [0, 0.7, 1], "auc": 0.75}], tmp_path / "roc.png"
    )
    assert plt.get_backend() == backend
    assert plt.get_fignums() == figures


def test_import_is_cheap_and_plots_need_no_display(tmp_path):
    code = (
        "import sys, numpy as np, mpitrain.plots as p\n"
        "assert 'matplotlib' not in sys.modules, 'matplotlib imported at import time'\n"
        "p.plot_confusion_matrix(np.eye(2) * 3, ['a', 'b'], sys.argv[1])\n"
        "import matplotlib\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
    )
    env = {
        k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")
    }
    env["MPLBACKEND"] = (
        "TkAgg"  # an interactive backend that cannot start here: must not matter
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "cm.png")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    check_png(tmp_path / "cm.png")
