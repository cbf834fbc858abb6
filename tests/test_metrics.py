"""Exact metrics across ranks and predictions written in row order: gold tests on all rows.

Each distributed body runs every case in one MPI launch per rank count and
returns every rank's results; the parent compares rank 0's with
scikit-learn or numpy on all rows, and the other ranks' with rank 0's
(bit-identical).  Layouts include uneven slices and a rank without rows.
"""

from __future__ import annotations

import os
import warnings

import h5py
import numpy as np
import pytest
from conftest import regression_problem, write_h5
from sklearn import linear_model
from sklearn import metrics as skm

from mpitrain.data import row_range
from mpitrain.testing import run_function

LAYOUTS = ["balanced", "uneven"]


def _my_rows(n: int, comm, layout: str) -> slice:
    """This rank's contiguous rows: balanced, or uneven with rank 1 (or the only rank) empty."""
    size, rank = comm.Get_size(), comm.Get_rank()
    if layout == "balanced" or size == 1:
        return slice(*row_range(n, size, rank))
    # Shares 3 : 0 : 1 : 5 ...: rank 1 holds nothing, the others differ in size.
    shares = np.array([3, 0, 1, 5][:size] + [2] * max(0, size - 4), dtype=float)
    bounds = np.r_[0, np.round(np.cumsum(shares) / shares.sum() * n)].astype(int)
    return slice(bounds[rank], bounds[rank + 1])


# ---------------------------------------------------------------- problems


def _classification_problem(n=157, seed=0):
    rng = np.random.default_rng(seed)
    y = np.sort(
        rng.integers(0, 4, n)
    )  # sorted: the uneven layout leaves ranks without some classes
    y_pred = np.where(
        rng.random(n) < 0.6, y, rng.integers(0, 5, n)
    )  # class 4 only ever predicted
    w = rng.uniform(0, 3, n)
    w[:7] = 0.0
    names = np.array(["ant", "bee", "cat", "dog", "eel"], dtype=object)
    return y, y_pred, w, names[y], names[y_pred]


def _score_problem(n=211, seed=1):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    scores = rng.normal(size=(n, 3)) + np.eye(3)[y]
    proba = np.exp(scores) / np.exp(scores).sum(axis=1, keepdims=True)
    tied = np.round(scores[:, 0], 1)  # many ties
    w = rng.uniform(0, 2, n)
    w[::11] = 0.0
    return y, proba, tied, w


LABELS = [
    2,
    0,
    9,
]  # reordered, with a label that never occurs; 1, 3, 4 still count as "other"


def _metrics_body(comm, problems):
    """Every metric on this rank's rows, for each layout."""
    from mpitrain import metrics
    from mpitrain.errors import DistributedValueError

    y, y_pred, w, ys, ys_pred = problems["classification"]
    yr, yr_pred, wr = problems["regression"]
    yb, proba, tied, wb = problems["scores"]
    continuous = problems["continuous"]
    out = {}
    for layout in LAYOUTS:
        c = _my_rows(len(y), comm, layout)
        r = _my_rows(len(yr), comm, layout)
        s = _my_rows(len(yb), comm, layout)
        k = _my_rows(len(continuous[0]), comm, layout)
        out[layout] = {
            "cls": metrics.classification_scores(y[c], y_pred[c], comm=comm),
            "cls_w": metrics.classification_scores(
                y[c], y_pred[c], sample_weight=w[c], comm=comm
            ),
            "cls_int_w": metrics.classification_scores(
                y[c], y_pred[c], sample_weight=(w[c] * 4).astype(np.int64), comm=comm
            ),
            "cls_labels": metrics.classification_scores(
                y[c], y_pred[c], labels=LABELS, sample_weight=w[c], comm=comm
            ),
            "cls_text": metrics.classification_scores(ys[c], ys_pred[c], comm=comm),
            "accuracy": metrics.accuracy(y[c], y_pred[c], comm=comm),
            "reg": metrics.regression_scores(yr[r], yr_pred[r], comm=comm),
            "reg_w": metrics.regression_scores(yr[r], yr_pred[r], wr[r], comm=comm),
            "hist": metrics.regression_histograms(yr[r], yr_pred[r], bins=9, comm=comm),
            "hist_w": metrics.regression_histograms(
                yr[r], yr_pred[r], bins=7, sample_weight=wr[r], comm=comm
            ),
            "roc_tied": metrics.roc_curve(
                yb[s] == 0, tied[s], pos_label=True, comm=comm
            ),
            "roc_tied_w": metrics.roc_curve(
                yb[s] == 0, tied[s], pos_label=True, sample_weight=wb[s], comm=comm
            ),
            "roc_01": metrics.roc_auc((yb[s] == 2).astype(int), proba[s, 2], comm=comm),
            "roc_text": metrics.roc_auc(
                np.array(["no", "yes"], dtype=object)[(yb[s] == 1).astype(int)],
                proba[s, 1],
                pos_label="yes",
                sample_weight=wb[s],
                comm=comm,
            ),
            "ovr": metrics.roc_auc_ovr(yb[s], proba[s], comm=comm),
            "ovr_w": metrics.roc_auc_ovr(
                yb[s], proba[s], average="weighted", sample_weight=wb[s], comm=comm
            ),
            "roc_long": metrics.roc_curve(
                continuous[0][k], continuous[1][k], max_points=50, comm=comm
            ),
            "score_hist": metrics.binary_score_histograms(
                yb[s] == 0,
                tied[s],
                pos_label=True,
                bins=8,
                sample_weight=wb[s],
                comm=comm,
            ),
        }
    # Errors found on one rank's data are raised identically on every rank.
    errors = {}
    last = comm.Get_size() - 1
    cases = {
        "length": lambda: metrics.classification_scores(
            [1, 2, 3], [1, 2] if comm.Get_rank() == last else [1, 2, 3], comm=comm
        ),
        "nan_scores": lambda: metrics.roc_auc(
            [0, 1], [0.5, np.nan] if comm.Get_rank() == last else [0.1, 0.2], comm=comm
        ),
        "continuous": lambda: metrics.classification_scores(
            [0.5, 1.0], [1.0, 1.0], comm=comm
        ),
    }
    for name, case in cases.items():
        try:
            case()
            errors[name] = None
        except DistributedValueError as exc:
            errors[name] = ("distributed", str(exc), exc.ranks)
        except ValueError as exc:
            errors[name] = ("local", str(exc), None)
    # Edge cases: one class only (nan, as scikit-learn), text labels without pos_label, no rows at all.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        errors["single_class_auc"] = metrics.roc_auc(
            np.ones(4, dtype=int), np.arange(4.0), comm=comm
        )
    errors["single_class_warnings"] = len(caught)
    try:
        metrics.roc_auc(np.array(["a", "b"]), np.array([0.1, 0.2]), comm=comm)
    except ValueError as exc:
        errors["text_without_pos_label"] = str(exc)
    errors["no_rows"] = metrics.classification_scores(
        np.zeros(0), np.zeros(0), comm=comm
    )
    return out, errors


@pytest.fixture(scope="module")
def problems():
    yr, yr_pred = regression_problem(n=173, d=1, seed=4)[1], None
    rng = np.random.default_rng(4)
    yr_pred = yr + rng.normal(scale=2.0, size=yr.size)
    yc = rng.integers(0, 2, 3000)
    sc = rng.normal(size=3000) + yc  # 3000 distinct scores: the curve is thinned
    return {
        "classification": _classification_problem(),
        "regression": (yr, yr_pred, rng.uniform(0, 2, yr.size)),
        "scores": _score_problem(),
        "continuous": (yc, sc),
    }


def _assert_classification(mine, y, y_pred, labels=None, sample_weight=None):
    """classification_scores equal to scikit-learn's metrics on all rows."""
    ref_labels = np.unique(np.r_[y, y_pred]) if labels is None else np.asarray(labels)
    np.testing.assert_array_equal(mine["labels"], ref_labels)
    cm = skm.confusion_matrix(y, y_pred, labels=ref_labels, sample_weight=sample_weight)
    assert mine["confusion_matrix"].dtype == cm.dtype
    np.testing.assert_allclose(mine["confusion_matrix"], cm, rtol=1e-12)
    np.testing.assert_allclose(
        mine["accuracy"],
        skm.accuracy_score(y, y_pred, sample_weight=sample_weight),
        rtol=1e-12,
    )
    p, r, f, s = skm.precision_recall_fscore_support(
        y, y_pred, labels=labels, sample_weight=sample_weight, zero_division=0
    )
    for key, ref in (("precision", p), ("recall", r), ("f1", f), ("support", s)):
        np.testing.assert_allclose(mine[key], ref, rtol=1e-12, err_msg=key)
    for average in ("macro", "weighted", "micro"):
        ref = skm.precision_recall_fscore_support(
            y,
            y_pred,
            labels=labels,
            sample_weight=sample_weight,
            average=average,
            zero_division=0,
        )[:3]
        got = [mine[average][k] for k in ("precision", "recall", "f1")]
        np.testing.assert_allclose(got, ref, rtol=1e-12, err_msg=average)


def _assert_same_everywhere(per_rank):
    """Every rank's results equal rank 0's, bit for bit (arrays, floats, nested dicts)."""

    def same(a, b, where):
        if isinstance(a, dict):
            assert a.keys() == b.keys(), where
            for key in a:
                same(a[key], b[key], f"{where}/{key}")
        elif isinstance(a, (list, tuple)):
            assert len(a) == len(b), where
            for i, (x, z) in enumerate(zip(a, b)):
                same(x, z, f"{where}[{i}]")
        elif isinstance(a, np.ndarray):
            np.testing.assert_array_equal(a, b, err_msg=where)
        elif isinstance(a, float) and np.isnan(a):
            assert np.isnan(b), where
        else:
            assert a == b, where

    for rank, other in enumerate(per_rank[1:], start=1):
        same(per_rank[0], other, f"rank {rank}")


@pytest.mark.mpi(ranks=[1, 2, 3, 4])
def test_metrics_equal_sklearn_on_all_rows(mpi_ranks, problems):
    per_rank = run_function(_metrics_body, mpi_ranks, problems)
    _assert_same_everywhere([results for results, _ in per_rank])
    results, errors = per_rank[0]
    y, y_pred, w, ys, ys_pred = problems["classification"]
    yr, yr_pred, wr = problems["regression"]
    yb, proba, tied, wb = problems["scores"]
    for layout in LAYOUTS:
        got = results[layout]
        _assert_classification(got["cls"], y, y_pred)
        _assert_classification(got["cls_w"], y, y_pred, sample_weight=w)
        _assert_classification(
            got["cls_int_w"], y, y_pred, sample_weight=(w * 4).astype(np.int64)
        )
        _assert_classification(
            got["cls_labels"], y, y_pred, labels=LABELS, sample_weight=w
        )
        _assert_classification(got["cls_text"], ys, ys_pred)
        assert got["cls"]["n_rows"] == len(y)
        assert got["accuracy"] == skm.accuracy_score(y, y_pred)

        for key, weights in (("reg", None), ("reg_w", wr)):
            ref = {
                "r2": skm.r2_score(yr, yr_pred, sample_weight=weights),
                "mse": skm.mean_squared_error(yr, yr_pred, sample_weight=weights),
                "mae": skm.mean_absolute_error(yr, yr_pred, sample_weight=weights),
            }
            for name in ref:
                np.testing.assert_allclose(
                    got[key][name], ref[name], rtol=1e-12, err_msg=f"{key} {name}"
                )

        for key, bins, weights in (("hist", 9, None), ("hist_w", 7, wr)):
            hist = got[key]
            low, high = min(yr.min(), yr_pred.min()), max(yr.max(), yr_pred.max())
            np.testing.assert_allclose(
                hist["edges"], np.linspace(low, high, bins + 1), rtol=1e-15
            )
            resid = yr - yr_pred
            np.testing.assert_allclose(
                hist["residual_edges"], np.linspace(resid.min(), resid.max(), bins + 1)
            )
            joint = np.histogram2d(
                yr, yr_pred, bins=[hist["edges"], hist["edges"]], weights=weights
            )[0]
            vs_pred = np.histogram2d(
                yr_pred,
                resid,
                bins=[hist["edges"], hist["residual_edges"]],
                weights=weights,
            )[0]
            residual = np.histogram(
                resid, bins=hist["residual_edges"], weights=weights
            )[0]
            for name, ref in (
                ("joint", joint),
                ("residual_vs_predicted", vs_pred),
                ("residual", residual),
            ):
                if weights is None:
                    assert hist[name].dtype == np.int64
                    np.testing.assert_array_equal(hist[name], ref, err_msg=name)
                else:
                    np.testing.assert_allclose(
                        hist[name], ref, rtol=1e-12, err_msg=name
                    )
            assert hist["joint"].sum() == pytest.approx(
                len(yr) if weights is None else weights.sum()
            )
            assert hist["n_rows"] == len(yr)

        for key, weights in (("roc_tied", None), ("roc_tied_w", wb)):
            curve = got[key]
            fpr, tpr, thresholds = skm.roc_curve(yb == 0, tied, sample_weight=weights)
            np.testing.assert_allclose(curve["fpr"], fpr, rtol=1e-12, atol=1e-15)
            np.testing.assert_allclose(curve["tpr"], tpr, rtol=1e-12, atol=1e-15)
            np.testing.assert_array_equal(curve["thresholds"], thresholds)
            np.testing.assert_allclose(
                curve["auc"],
                skm.roc_auc_score(yb == 0, tied, sample_weight=weights),
                rtol=1e-13,
            )
            assert (
                0 < curve["bytes_gathered"] <= 24 * len(yb)
            )  # distinct scores only, 24 bytes each
        assert got["roc_01"] == pytest.approx(
            skm.roc_auc_score(yb == 2, proba[:, 2]), rel=1e-14
        )
        assert got["roc_text"] == pytest.approx(
            skm.roc_auc_score(yb == 1, proba[:, 1], sample_weight=wb), rel=1e-13
        )
        assert got["ovr"]["auc"] == pytest.approx(
            skm.roc_auc_score(yb, proba, multi_class="ovr"), rel=1e-14
        )
        assert got["ovr_w"]["auc"] == pytest.approx(
            skm.roc_auc_score(
                yb, proba, multi_class="ovr", average="weighted", sample_weight=wb
            ),
            rel=1e-13,
        )
        per_class = [skm.roc_auc_score(yb == k, proba[:, k]) for k in range(3)]
        np.testing.assert_allclose(got["ovr"]["per_class"], per_class, rtol=1e-14)

        # 3000 distinct scores: the AUC is the full curve's, the points are thinned to 50 of scikit-learn's.
        long = got["roc_long"]
        yc, sc = problems["continuous"]
        fpr, tpr, _ = skm.roc_curve(yc, sc)
        assert long["auc"] == pytest.approx(skm.roc_auc_score(yc, sc), rel=1e-14)
        assert long["n_points"] == len(fpr) > 50 and len(long["fpr"]) <= 50
        points = set(zip(fpr.tolist(), tpr.tolist()))
        assert set(zip(long["fpr"].tolist(), long["tpr"].tolist())) <= points
        assert (long["fpr"][0], long["tpr"][0], long["fpr"][-1], long["tpr"][-1]) == (
            0,
            0,
            1,
            1,
        )
        assert np.all(np.diff(long["fpr"] + long["tpr"]) > 0)

        hist = got["score_hist"]
        np.testing.assert_allclose(
            hist["edges"], np.linspace(tied.min(), tied.max(), 9)
        )
        for name, mask in (("positive", yb == 0), ("negative", yb != 0)):
            ref = np.histogram(tied[mask], bins=hist["edges"], weights=wb[mask])[0]
            np.testing.assert_allclose(hist[name], ref, rtol=1e-12)

    last = mpi_ranks - 1
    kind, message, ranks = errors["length"]
    assert "y_true has 3 rows but y_pred has 2" in message
    assert kind == "distributed" and ranks == [last]
    if mpi_ranks > 1:
        assert f"rank {last}" in message
    assert "NaN or infinity" in errors["nan_scores"][1]
    assert "continuous" in errors["continuous"][1]
    assert np.isnan(errors["single_class_auc"]) and errors["single_class_warnings"] == 1
    assert "pos_label" in errors["text_without_pos_label"]
    assert (
        np.isnan(errors["no_rows"]["accuracy"])
        and errors["no_rows"]["labels"].size == 0
    )


# ----------------------------------------------------------- evaluate a model


def _evaluate_body(comm, models, data):
    from mpitrain.metrics import evaluate_estimator

    out = {}
    for name, model in models.items():
        X, y = data[name]
        rows = _my_rows(len(y), comm, "uneven")
        out[name] = evaluate_estimator(model, X[rows], y[rows], bins=5, comm=comm)
    return out


def test_evaluate_estimator_equals_sklearn():
    from sklearn.datasets import make_classification

    X, y = make_classification(
        n_samples=300, n_features=5, n_informative=3, n_classes=3, random_state=0
    )
    Xb, yb = make_classification(n_samples=200, n_features=4, random_state=1)
    Xr, yr = regression_problem(n=150, d=3)
    models = {
        "multi": linear_model.LogisticRegression().fit(X, y),
        "binary": linear_model.LogisticRegression().fit(Xb, yb),
        "regression": linear_model.Ridge().fit(Xr, yr),
    }
    data = {"multi": (X, y), "binary": (Xb, yb), "regression": (Xr, yr)}
    got = run_function(_evaluate_body, 3, models, data)[0]

    multi = got["multi"]
    assert multi["task"] == "classification" and multi["roc"]["kind"] == "ovr"
    assert multi["accuracy"] == skm.accuracy_score(y, models["multi"].predict(X))
    np.testing.assert_array_equal(
        multi["confusion_matrix"], skm.confusion_matrix(y, models["multi"].predict(X))
    )
    assert multi["roc"]["auc"] == pytest.approx(
        skm.roc_auc_score(y, models["multi"].predict_proba(X), multi_class="ovr"),
        rel=1e-14,
    )
    binary = got["binary"]
    assert binary["roc"]["score_source"] == "decision_function"
    assert binary["roc"]["auc"] == pytest.approx(
        skm.roc_auc_score(yb, models["binary"].decision_function(Xb)), rel=1e-14
    )
    assert binary["roc"]["score_histograms"]["positive"].sum() == (yb == 1).sum()
    reg = got["regression"]
    pred = models["regression"].predict(Xr)
    assert reg["r2"] == pytest.approx(skm.r2_score(yr, pred), rel=1e-12)
    assert reg["rmse"] == pytest.approx(
        np.sqrt(skm.mean_squared_error(yr, pred)), rel=1e-12
    )
    assert reg["histograms"]["joint"].sum() == reg["n_rows"] == 150


# ------------------------------------------ ROC in bounded memory on rank 0


def _many_scores(n=6000, seed=7):
    """Continuous scores (all distinct) and a block of tied ones, with weights."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    scores = rng.normal(size=n) + 0.8 * y
    scores[: n // 10] = np.round(scores[: n // 10], 1)  # ties across ranks too
    w = rng.uniform(0, 2, n)
    w[:5] = 0.0
    return y, scores, w


def _bounded_roc_body(comm, layout, merge_rows):
    """roc_curve with chunks of ``merge_rows``; records the chunk sizes rank 0 received."""
    import mpitrain.metrics._metrics as metrics_module
    import mpitrain.stats._merge as merge
    from mpitrain import metrics

    y, scores, w = _many_scores()
    rows = _my_rows(len(y), comm, layout)
    received = []
    gatherv_rows, block = merge.gatherv_rows, metrics_module._CURVE_BLOCK

    def recording(local, comm, *args, **kwargs):
        out = gatherv_rows(local, comm, *args, **kwargs)
        if out is not None:
            received.append(len(out))
        return out

    # Small steps of the curve's arithmetic too, so that they split chunks.
    merge.gatherv_rows, metrics_module._CURVE_BLOCK = recording, 97
    try:
        out = {
            "plain": metrics.roc_curve(
                y[rows], scores[rows], merge_rows=merge_rows, max_points=300, comm=comm
            ),
            "weighted": metrics.roc_curve(
                y[rows],
                scores[rows],
                sample_weight=w[rows],
                merge_rows=merge_rows,
                max_points=300,
                comm=comm,
            ),
            "ovr": metrics.roc_auc_ovr(
                y[rows],
                np.column_stack([-scores[rows], scores[rows]]),
                merge_rows=merge_rows,
                comm=comm,
            ),
        }
    finally:
        merge.gatherv_rows, metrics_module._CURVE_BLOCK = gatherv_rows, block
    out["received"] = received
    return out


@pytest.mark.mpi(ranks=[1, 2, 3])
@pytest.mark.parametrize("merge_rows", [1000, 100_000])
def test_roc_merges_in_bounded_chunks_and_equals_sklearn(mpi_ranks, merge_rows):
    y, scores, w = _many_scores()
    for layout in LAYOUTS:
        out = run_function(_bounded_roc_body, mpi_ranks, layout, merge_rows)
        got = out[0]
        # Rank 0 never held more than one chunk: merge_rows + ranks - 1 rows.
        assert max(got["received"]) <= merge_rows + mpi_ranks - 1, got["received"]
        many = merge_rows < len(y)
        assert (got["plain"]["merge_chunks"] > 1) == many, got["plain"]["merge_chunks"]
        for key, weights in (("plain", None), ("weighted", w)):
            curve = got[key]
            assert curve["auc"] == pytest.approx(
                skm.roc_auc_score(y, scores, sample_weight=weights), rel=1e-14
            ), (layout, key)
            fpr, tpr, thresholds = skm.roc_curve(y, scores, sample_weight=weights)
            assert curve["n_points"] == len(fpr) > 300
            # The thinned points are scikit-learn's own points.
            where = np.searchsorted(-thresholds, -curve["thresholds"])
            np.testing.assert_array_equal(thresholds[where], curve["thresholds"])
            np.testing.assert_allclose(curve["fpr"], fpr[where], rtol=1e-12, atol=1e-15)
            np.testing.assert_allclose(curve["tpr"], tpr[where], rtol=1e-12, atol=1e-15)
            assert len(curve["fpr"]) <= 300
        assert got["ovr"]["auc"] == pytest.approx(
            skm.roc_auc_score(y, scores), rel=1e-14
        )
        for other in out[1:]:  # the same bits on every rank
            assert other["plain"]["auc"] == got["plain"]["auc"]
            np.testing.assert_array_equal(
                other["weighted"]["tpr"], got["weighted"]["tpr"]
            )


# ------------------------------------------------- predictions in row order


def _predict_body(comm, data_path, model, out_paths):
    return [
        _predict_and_write(comm, data_path, model, out_paths[layout], layout)
        for layout in ("file", "uneven")
    ]


def _predict_and_write(comm, data_path, model, out_path, layout):
    from mpitrain.data import read_rows, write_rows_in_order
    from mpitrain.metrics import predict_local

    if layout == "file":  # each rank reads its own rows of the file, as the CLI does
        rows = read_rows(data_path, y=None, comm=comm)
        X = rows.X
    else:
        with h5py.File(data_path, "r") as f:
            X_all = f["X"][:]
        X = X_all[_my_rows(len(X_all), comm, "uneven")]
    labels = predict_local(model, X)
    names = np.array(["low", "high", "médium"], dtype=object)[
        labels
    ]  # text, and not ASCII
    return write_rows_in_order(
        out_path,
        {
            "label": labels,
            "name": names,
            "proba": predict_local(model, X, "predict_proba"),
        },
        comm=comm,
        attrs={"model": "LogisticRegression"},
    )


@pytest.mark.mpi(ranks=[1, 2, 3, 4])
def test_predictions_land_in_row_order(tmp_path, mpi_ranks):
    from sklearn.datasets import make_classification

    X, y = make_classification(
        n_samples=103, n_features=5, n_classes=3, n_informative=3, random_state=2
    )
    model = linear_model.LogisticRegression().fit(X, y)
    data = write_h5(tmp_path / "data.h5", X, y)
    outs = {"file": tmp_path / "pred.h5", "uneven": tmp_path / "pred-uneven.h5"}
    write_h5(
        outs["file"], np.zeros((1, 1))
    )  # an older file under the final name gets replaced
    per_rank = run_function(
        _predict_body, mpi_ranks, data, model, {k: str(v) for k, v in outs.items()}
    )
    for i, layout in enumerate(outs):
        info, out = [r[i] for r in per_rank], outs[layout]
        assert [i["row_offset"] for i in info] == sorted(i["row_offset"] for i in info)
        assert info[0]["n_rows"] == 103 and info[0]["shapes"]["proba"] == (103, 3)
        with h5py.File(out, "r") as f:
            np.testing.assert_array_equal(f["label"][:], model.predict(X))
            expected = np.array(["low", "high", "médium"])[model.predict(X)]
            np.testing.assert_array_equal(f["name"].asstr()[:], expected)
            np.testing.assert_allclose(
                f["proba"][:], model.predict_proba(X), rtol=1e-15
            )
            assert f.attrs["model"] == "LogisticRegression"
            assert "X" not in f
    assert sorted(os.listdir(tmp_path)) == [
        "data.h5",
        "pred-uneven.h5",
        "pred.h5",
    ]  # no temporary file left


class _FailingRows:
    """An array-like whose rows cannot be read: a rank that fails halfway through writing."""

    def __init__(self, n: int):
        self.shape, self.dtype = (n,), np.dtype(np.float64)

    def __getitem__(self, index):
        raise OSError("disk quota exceeded")


FAILURES = ["fails_while_writing", "wrong_shape", "no_directory"]


def _failing_writes_body(comm, out_path):
    return [_failing_write(comm, out_path, case) for case in FAILURES]


def _failing_write(comm, out_path, case):
    from mpitrain.data import write_rows_in_order
    from mpitrain.errors import DistributedError

    rank = comm.Get_rank()
    values = np.arange(5.0) + 10 * rank
    if case == "fails_while_writing" and rank == 1:
        values = _FailingRows(5)
    if case == "wrong_shape" and rank == 1:
        values = values.reshape(5, 1)
    if case == "no_directory":
        out_path = os.path.join(out_path + ".missing", "pred.h5")
    try:
        write_rows_in_order(out_path, {"y_pred": values}, comm=comm)
        return None
    except (DistributedError, ValueError) as exc:
        return type(exc).__name__, str(exc)


@pytest.mark.parametrize("ranks", [2, 4])
def test_failed_write_leaves_no_file_and_the_old_one_intact(tmp_path, ranks):
    out = tmp_path / "pred.h5"
    write_h5(out, np.arange(3.0))
    before = out.read_bytes()
    per_rank = run_function(_failing_writes_body, ranks, str(out))
    for i, case in enumerate(FAILURES):
        errors = [r[i] for r in per_rank]
        assert errors[0] is not None and len(set(errors)) == 1, (
            case
        )  # the same error on every rank
        kind, message = errors[0]
        if case == "fails_while_writing":
            assert (
                kind == "DistributedError"
                and "rank 1 (of" in message
                and "disk quota exceeded" in message
            )
        elif case == "wrong_shape":
            assert "different shapes per row" in message
        else:
            assert "does not exist" in message
        assert out.read_bytes() == before, case
        assert sorted(os.listdir(tmp_path)) == ["pred.h5"], case  # no temporary file
