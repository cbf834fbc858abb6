"""Model files that cannot run code, checkpoints without pickles, raw rows kept private (issue 12).

- Every model mpitrain writes (each family's ``estimator_``, the workflow's
  pipelines, and the families scikit-learn and XGBoost fit for it) is a skops
  file made only of :data:`mpitrain.model_io.TRUSTED_TYPES`, and the loaded
  model predicts exactly as the one saved.
- Anything else is refused, naming the types; a pickle or joblib file is
  refused before anything in it runs, on every command that loads a model,
  unless ``--trust-pickle`` says the file is trusted.
- A checkpoint path holding a pickle bomb is refused on resume without
  running it.
- Models holding raw rows (support vectors) and checkpoints are created
  with mode 0600 under a umask of 022; other models keep the umask's mode.
"""

from __future__ import annotations

import os
import stat
import warnings

import joblib
import numpy as np
import pytest
import skops.io as sio
from cli_in_job import cli_in_job
from conftest import regression_problem, write_h5
from sklearn import ensemble, neural_network, tree
from sklearn.datasets import make_classification, make_regression
from sklearn.linear_model import Ridge as SklearnRidge
from sklearn.linear_model import SGDClassifier, SGDRegressor
from sklearn.neighbors import KNeighborsClassifier
from sklearn.preprocessing import FunctionTransformer

from mpitrain.model_io import (
    TRUSTED_TYPES,
    UntrustedModelError,
    file_kind,
    load_model,
    save_model,
)
from mpitrain.testing import mpirun, run_function

TIMEOUT = 120
PICKLE_REFUSED = "a pickle file can run any code when loaded"


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _assert_round_trip(path, original, X) -> None:
    """Only trusted types in the file, and the loaded model predicts exactly as ``original``."""
    untrusted = set(sio.get_untrusted_types(file=str(path)))
    assert untrusted <= TRUSTED_TYPES, (path, untrusted - TRUSTED_TYPES)
    loaded = load_model(path)
    assert type(loaded) is type(original)
    method = "predict" if hasattr(original, "predict") else "transform"
    np.testing.assert_array_equal(
        getattr(loaded, method)(X), getattr(original, method)(X)
    )


# ----------------------------------------------------------------------------
# mpitrain's families, their file modes and a checkpoint's (one MPI job)


def families_body(comm, folder: str):
    """Fit every mpitrain family, save its estimator_ under umask 022; return the predictions."""
    # The shared job runs other bodies after this one: restore the umask.
    umask = os.umask(0o022)
    try:
        return _fit_and_save_families(comm, folder)
    finally:
        os.umask(umask)


def _fit_and_save_families(comm, folder: str):
    from sklearn.pipeline import make_pipeline

    from mpitrain import linear_model, preprocessing, svm
    from mpitrain.checkpoint import checkpointing

    Xr, yr = make_regression(n_samples=120, n_features=4, noise=1.0, random_state=0)
    Xc, yc = make_classification(n_samples=120, n_features=4, random_state=0)
    regressors = {
        "linear": linear_model.LinearRegression(),
        "ridge": linear_model.Ridge(alpha=2.0),
        "polynomial": linear_model.PolynomialRegression(degree=2),
        "lasso": linear_model.Lasso(alpha=0.1),
        "elasticnet": linear_model.ElasticNet(alpha=0.1),
        "sgd-regressor": linear_model.SGDRegressor(random_state=0),
        "svr": svm.SVR(),
    }
    classifiers = {
        "logistic": linear_model.LogisticRegression(),
        "logistic-average": linear_model.LogisticRegression(strategy="average"),
        "linear-svc": linear_model.LinearSVC(),
        "sgd-classifier": linear_model.SGDClassifier(random_state=0),
        "svc": svm.SVC(),
    }
    from mpitrain import neural_network

    regressors["mlp-regressor"] = neural_network.MLPRegressor(
        hidden_layer_sizes=(5,), max_iter=20, random_state=0
    )
    classifiers["mlp-classifier"] = neural_network.MLPClassifier(
        hidden_layer_sizes=(5,), solver="sgd", max_iter=20, random_state=0
    )
    # The ensemble families, as they land in mpitrain.ensemble.
    import mpitrain.ensemble as ensembles

    for name in ("RandomForest", "ExtraTrees", "XGB"):
        if hasattr(ensembles, f"{name}Classifier"):
            classifiers[name] = getattr(ensembles, f"{name}Classifier")(n_estimators=3)
            regressors[name] = getattr(ensembles, f"{name}Regressor")(n_estimators=3)
    fitted = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the short MLP fits do not converge
        for name, model in regressors.items():
            model.set_params(comm=comm).fit(Xr, yr)
            fitted[f"{name}-r"] = (model.estimator_, "r")
        for name, model in classifiers.items():
            model.set_params(comm=comm).fit(Xc, yc)
            fitted[f"{name}-c"] = (model.estimator_, "c")
    # The workflow's pipeline: the imputer's and scaler's estimator_ before the model.
    imputer = preprocessing.SimpleImputer(strategy="median", comm=comm).fit(Xc)
    scaler = preprocessing.StandardScaler(comm=comm).fit(Xc)
    fitted["pipeline-svc"] = (
        make_pipeline(imputer.estimator_, scaler.estimator_, fitted["svc-c"][0]),
        "c",
    )
    fitted["clipper"] = (
        preprocessing.QuantileClipper(comm=comm).fit(Xr).estimator_,
        "r",
    )
    out = {}
    for name, (model, kind) in fitted.items():
        save_model(model, os.path.join(folder, f"{name}.skops"))
        method = "predict" if hasattr(model, "predict") else "transform"
        out[name] = (kind, getattr(model, method)(Xr if kind == "r" else Xc))
    # A checkpoint kept after the fit: its mode.
    with checkpointing(os.path.join(folder, "fit.ckpt"), every=1, keep=True, comm=comm):
        linear_model.LogisticRegression(comm=comm).fit(Xc, yc)
    return out


@pytest.mark.mpi(ranks=[1])
def test_every_family_saves_trusted_types_and_loads_equal(tmp_path, mpi_ranks):
    predictions = run_function(
        families_body, mpi_ranks, str(tmp_path), timeout=TIMEOUT
    )[0]
    Xr, _ = make_regression(n_samples=120, n_features=4, noise=1.0, random_state=0)
    Xc, _ = make_classification(n_samples=120, n_features=4, random_state=0)
    assert len(predictions) >= 16
    for name, (kind, expected) in predictions.items():
        path = tmp_path / f"{name}.skops"
        assert file_kind(path) == "skops"
        untrusted = set(sio.get_untrusted_types(file=str(path)))
        assert untrusted <= TRUSTED_TYPES, (name, untrusted - TRUSTED_TYPES)
        loaded = load_model(path)
        method = "predict" if hasattr(loaded, "predict") else "transform"
        got = getattr(loaded, method)(Xr if kind == "r" else Xc)
        np.testing.assert_array_equal(got, expected, name)
    # Raw rows (support vectors) are private whatever the umask; other models are not.
    for name in ("svc-c", "svr-r", "pipeline-svc"):
        assert _mode(tmp_path / f"{name}.skops") == 0o600, name
    for name in (
        "ridge-r",
        "logistic-c",
        "linear-svc-c",
        "mlp-classifier-c",
        "clipper",
    ):
        assert _mode(tmp_path / f"{name}.skops") == 0o644, name
    assert _mode(tmp_path / "fit.ckpt") == 0o600


def test_sklearn_and_xgboost_fits_save_trusted_types_and_load_equal(tmp_path):
    """The new families as scikit-learn and XGBoost fit them, and SGD's local models as
    the averaging rounds checkpoint them (log_loss keeps a loss object)."""
    Xr, yr = make_regression(n_samples=150, n_features=5, random_state=1)
    Xc, yc = make_classification(n_samples=150, n_features=5, random_state=1)
    labels = np.array(["no", "yes", "maybe"])[np.arange(150) % 3]
    models = [
        (SGDClassifier(loss="log_loss", max_iter=5, random_state=0), Xc, labels),
        (SGDClassifier(loss="modified_huber", max_iter=5, random_state=0), Xc, yc),
        (SGDRegressor(loss="huber", max_iter=5, random_state=0), Xr, yr),
        (ensemble.RandomForestClassifier(n_estimators=4, random_state=0), Xc, yc),
        (ensemble.RandomForestRegressor(n_estimators=4, random_state=0), Xr, yr),
        (ensemble.ExtraTreesClassifier(n_estimators=4, random_state=0), Xc, labels),
        (ensemble.ExtraTreesRegressor(n_estimators=4, random_state=0), Xr, yr),
        (tree.DecisionTreeClassifier(random_state=0), Xc, yc),
        (tree.DecisionTreeRegressor(random_state=0), Xr, yr),
        (tree.ExtraTreeClassifier(random_state=0), Xc, yc),
        (tree.ExtraTreeRegressor(random_state=0), Xr, yr),
        (neural_network.MLPClassifier(max_iter=30, random_state=0), Xc, labels),
        (
            neural_network.MLPRegressor(max_iter=30, solver="sgd", random_state=0),
            Xr,
            yr,
        ),
    ]
    for k, (model, X, y) in enumerate(models):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the short fits do not converge
            model.fit(X, y)
        path = tmp_path / f"{k}.skops"
        save_model(model, path)
        _assert_round_trip(path, model, X)


def test_xgboost_fits_save_trusted_types_and_load_equal(tmp_path):
    xgboost = pytest.importorskip("xgboost")
    Xr, yr = make_regression(n_samples=150, n_features=5, random_state=1)
    Xc, yc = make_classification(n_samples=150, n_features=5, random_state=1)
    for k, (model, X, y) in enumerate(
        [
            (xgboost.XGBClassifier(n_estimators=5, max_depth=3), Xc, yc),
            (xgboost.XGBRegressor(n_estimators=5, max_depth=3), Xr, yr),
        ]
    ):
        model.fit(X, y)
        path = tmp_path / f"{k}.skops"
        save_model(model, path)
        _assert_round_trip(path, model, X)


def test_other_types_are_refused_naming_them(tmp_path):
    Xc, yc = make_classification(n_samples=40, n_features=4, random_state=0)
    # A scikit-learn class that mpitrain never writes (skops itself would trust it).
    neighbours = tmp_path / "knn.skops"
    sio.dump(KNeighborsClassifier(n_neighbors=3).fit(Xc, yc), neighbours)
    with pytest.raises(UntrustedModelError, match="KNeighborsClassifier"):
        load_model(neighbours)
    assert load_model(neighbours, trusted=True).predict(Xc).shape == (40,)
    # A function that runs a command when called: named, refused.
    command = tmp_path / "command.skops"
    sio.dump(FunctionTransformer(os.system), command)
    with pytest.raises(UntrustedModelError, match="system"):
        load_model(command)


# ----------------------------------------------------------------------------
# Pickles: refused before they run, on every command that loads a model


class _Bomb:
    """Unpickling it runs a shell command that leaves a file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    X, y = regression_problem(n=90, d=3)
    folder = tmp_path_factory.mktemp("trust")
    return write_h5(folder / "d.h5", X, y), X, y


def test_pickle_model_refused_without_running_it(tmp_path, data, mpitrain_cli):
    path, X, y = data
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.joblib"
    joblib.dump(_Bomb(str(marker)), evil)
    # By content, not by name: the same pickle named .skops.
    disguised = tmp_path / "evil.skops"
    disguised.write_bytes(evil.read_bytes())
    with pytest.raises(UntrustedModelError, match=PICKLE_REFUSED):
        load_model(disguised)
    # evaluate is the real command; predict the same entry point in the shared
    # job (tests/cli_in_job.py), where a pickle that ran would leave its marker too.
    for command, real in (
        (["evaluate", str(evil), path], True),
        (["predict", str(evil), path, "--out", str(tmp_path / "p.h5")], False),
    ):
        if real:
            run = mpirun(2, [*mpitrain_cli, *command], timeout=TIMEOUT)
        else:
            run = cli_in_job(2, command, timeout=TIMEOUT)
        assert not run.timed_out and run.returncode == 1, run.stderr
        assert run.stderr.count(PICKLE_REFUSED) == 1, run.stderr
        assert "--trust-pickle" in run.stderr
        assert not marker.exists(), "the pickle ran"
    assert not (tmp_path / "p.h5").exists()
    # A harmless pickle loads when the user says it is trusted, and only then.
    plain = tmp_path / "ridge.joblib"
    joblib.dump(SklearnRidge(alpha=1.0).fit(X, y), plain)
    refused = cli_in_job(2, ["evaluate", str(plain), path], timeout=TIMEOUT)
    assert refused.returncode == 1 and PICKLE_REFUSED in refused.stderr
    trusted = mpirun(
        2,
        [*mpitrain_cli, "evaluate", str(plain), path, "--trust-pickle", "--quiet"],
        timeout=TIMEOUT,
    )
    assert trusted.returncode == 0, trusted.stderr
    assert "R²" in trusted.stdout or "r2" in trusted.stdout.lower(), trusted.stdout


def test_checkpoint_pickle_bomb_refused_on_resume(tmp_path, data, mpitrain_cli):
    path, _, _ = data
    marker = tmp_path / "pwned"
    checkpoint = tmp_path / "train-1234.ckpt"
    joblib.dump(_Bomb(str(marker)), checkpoint)
    out = tmp_path / "m.skops"
    run = mpirun(
        2,
        [
            *mpitrain_cli,
            "train",
            path,
            "--model",
            "ridge",
            "--out",
            str(out),
            "--checkpoint",
            str(checkpoint),
            "--resume",
        ],
        timeout=TIMEOUT,
    )
    assert not run.timed_out and run.returncode == 1, run.stderr
    assert run.stderr.count("is not an mpitrain checkpoint") == 1, run.stderr
    assert "pickle" in run.stderr
    assert not marker.exists(), "the checkpoint's pickle ran"
    assert not out.exists() and checkpoint.exists()


def test_collect_sweep_refuses_a_pickle_model_without_running_it(tmp_path, data):
    import json
    import subprocess
    import sys
    from pathlib import Path

    path, X, y = data
    marker = tmp_path / "pwned"
    sweep = tmp_path / "sweep-1"
    sweep.mkdir()
    good = sweep / "task-0.skops"
    save_model(SklearnRidge(alpha=1.0).fit(X, y), good)
    joblib.dump(_Bomb(str(marker)), sweep / "task-1.skops")
    for task, model_file in enumerate([good, sweep / "task-1.skops"]):
        (sweep / f"task-{task}.options").write_text("--alpha 1\n")
        report = {"params": {"alpha": 1.0}, "model_file": str(model_file)}
        (sweep / f"task-{task}.json").write_text(json.dumps(report))
    script = Path(__file__).resolve().parents[1] / "slurm" / "collect_sweep.py"
    run = subprocess.run(
        [sys.executable, str(script), str(sweep), "--valid", path],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert run.returncode == 1, run.stderr
    assert not marker.exists(), "the pickle ran"
    table = (sweep / "sweep.csv").read_text()
    assert "cannot score" in table and PICKLE_REFUSED in table, table
    assert "failed tasks: [1]" in run.stderr


def resume_planted_checkpoint_body(comm, path: str):
    from mpitrain.checkpoint import checkpointing

    try:
        with checkpointing(path, resume=True, comm=comm):
            pass
    except Exception as exc:
        return type(exc).__name__, str(exc)
    return None


@pytest.mark.mpi(ranks=[2])
def test_planted_checkpoint_is_refused_alike_on_every_rank(tmp_path, mpi_ranks):
    marker = tmp_path / "pwned"
    path = tmp_path / "fit.ckpt"
    joblib.dump(_Bomb(str(marker)), path)
    outcomes = run_function(
        resume_planted_checkpoint_body, mpi_ranks, str(path), timeout=TIMEOUT
    )
    assert len(set(outcomes)) == 1, outcomes
    kind, message = outcomes[0]
    assert kind == "CheckpointError" and "is not an mpitrain checkpoint" in message
    assert "pickle" in message and not marker.exists()
