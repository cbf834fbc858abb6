"""Inputs that used to hang, lie or save nonsense, through the command line.

Each case runs ``mpitrain`` at 2 ranks: under ``mpiexec`` for one case of
each kind, the others through the same entry point in the session's shared
MPI job (tests/cli_in_job.py).  An invalid input must give one clear
message (printed once, from rank 0, naming what is wrong), a non-zero exit,
no hang, and nothing in the output directory (no model, no temporary file).
A valid input must give the result scikit-learn gives on all rows.
"""

from __future__ import annotations

import json
import os

import h5py
import numpy as np
import pytest
from cli_in_job import cli_in_job
from conftest import regression_problem, write_h5

from mpitrain.testing import mpirun

RANKS = 2
TIMEOUT = 120


def _run(mpitrain_cli, *argv, env=None):
    """The real command when ``mpitrain_cli`` is given, else the same entry point
    in the shared job (tests/cli_in_job.py): each behaviour of the command line
    keeps at least one real launch."""
    if mpitrain_cli is None:
        return cli_in_job(RANKS, argv, env=env, timeout=TIMEOUT)
    return mpirun(RANKS, [*mpitrain_cli, *argv], timeout=TIMEOUT, env=env)


def _train(mpitrain_cli, data, out_dir, *extra, env=None):
    return _run(
        mpitrain_cli,
        "train",
        str(data),
        "--out",
        str(out_dir / "m.skops"),
        "--report",
        str(out_dir / "report.json"),
        "--quiet",
        *extra,
        env=env,
    )


def _assert_refused(run, message, out_dir, *, agreed=True):
    # agreed=False: an error every rank raises from rank 0's verdict (a
    # checkpoint's), whose message names no ranks.
    assert not run.timed_out, f"hung: {run.command_line}"
    assert run.returncode == 1, (run.returncode, run.stderr)
    assert "Traceback" not in run.stderr, run.stderr
    errors = [
        line for line in run.stderr.splitlines() if line.startswith("mpitrain: error")
    ]
    assert len(errors) == 1, f"expected the error once, got:\n{run.stderr}"
    assert message in errors[0], errors[0]
    assert not agreed or "all 2 ranks" in errors[0], errors[0]
    assert sorted(os.listdir(out_dir)) == [], "a file was left behind"


def _assert_fitted(run, out_dir):
    assert not run.timed_out, f"hung: {run.command_line}"
    assert run.returncode == 0, run.stderr
    assert sorted(os.listdir(out_dir)) == ["m.skops", "report.json"]
    return _strict_json((out_dir / "report.json").read_text())


def _strict_json(text):
    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def _ridge_reference(X, y, alpha=1.0):
    from sklearn.linear_model import Ridge

    return Ridge(alpha=alpha).fit(np.asarray(X, dtype=np.float64), np.ravel(y))


@pytest.fixture
def dirs(tmp_path):
    data, out = tmp_path / "data", tmp_path / "out"
    data.mkdir()
    out.mkdir()
    return data, out


def _scalar(p):
    with h5py.File(p, "w") as f:
        f["X"] = np.float64(3.0)
        f["y"] = np.ones(4)


def _complex(p):
    X, y = regression_problem(n=20, d=3)
    write_h5(p, X.astype(np.complex128), y)


def _zero_features(p):
    write_h5(p, np.zeros((20, 0)), np.ones(20))


def _zero_rows(p):
    write_h5(p, np.zeros((0, 3)), np.zeros(0))


def _huge_declared_shape(p):
    # A file of about 2 kB that declares 10**12 rows of 1000 features.
    with h5py.File(p, "w") as f:
        f.create_dataset(
            "X",
            shape=(10**12, 1000),
            dtype="f8",
            chunks=(1000, 100),
            compression="gzip",
        )
        f.create_dataset(
            "y", shape=(10**12,), dtype="f8", chunks=(10**5,), compression="gzip"
        )


def _unwritten_chunks(p):
    X, y = regression_problem(n=40, d=3)
    with h5py.File(p, "w") as f:
        ds = f.create_dataset("X", shape=X.shape, dtype="f8", chunks=(10, 3))
        ds[:20] = X[:20]  # rows 20-39 never written
        f["y"] = y


def _external_link(p):
    X, y = regression_problem(n=20, d=3)
    elsewhere = p.parent.parent / "elsewhere.h5"
    write_h5(elsewhere, X, y)
    with h5py.File(p, "w") as f:
        f["X"] = h5py.ExternalLink(str(elsewhere), "X")
        f["y"] = y


def _virtual_missing_source(p):
    X, y = regression_problem(n=20, d=3)
    write_h5(p.parent / "part0.h5", X[:10], y[:10])
    layout = h5py.VirtualLayout(shape=X.shape, dtype="f8")
    layout[:10] = h5py.VirtualSource(str(p.parent / "part0.h5"), "X", shape=(10, 3))
    layout[10:] = h5py.VirtualSource(str(p.parent / "part1.h5"), "X", shape=(10, 3))
    with h5py.File(p, "w") as f:
        f.create_virtual_dataset("X", layout, fillvalue=0)
        f["y"] = y


def _directory(p):
    p.mkdir()


def _records(p):
    X, y = regression_problem(n=20, d=2)
    table = np.zeros(20, dtype=[("a", "f8"), ("b", "f8")])
    table["a"], table["b"] = X[:, 0], X[:, 1]
    write_h5(p, table, y)


def _text_target(p):
    X, _ = regression_problem(n=20, d=3)
    write_h5(p, X, np.array([b"a", b"b"] * 10))


def _missing_values(p):
    X, y = regression_problem(n=20, d=3)
    X[4, 1] = np.nan
    write_h5(p, X, y)


REFUSED = {
    "directory as data": (_directory, [], "is a directory, not an HDF5 file"),
    "table of records": (_records, [], "is a table of records with fields (a, b)"),
    "text target of an exact regressor": (
        _text_target,
        [],
        "target dataset '/y' has dtype |S1; it must be numeric",
    ),
    "a parameter given twice": (
        lambda p: write_h5(p, *regression_problem(n=20, d=3)),
        ["--alpha", "1", "--param", "alpha=2"],
        "--param alpha=2 and --alpha 1.0 both set alpha; give one",
    ),
    "drop and impute": (
        _missing_values,
        ["--drop-missing", "--impute", "mean"],
        "--drop-missing drops every row that --impute would fill; give one",
    ),
    "scalar dataset": (_scalar, [], "must be 2-D (rows x features), it is a scalar"),
    "complex X": (_complex, [], "holds complex numbers (complex128)"),
    "zero features": (_zero_features, [], "has no feature columns (shape (20, 0))"),
    # Streamed: exact ridge from sufficient statistics, no rows held.
    "zero rows in total, streamed": (_zero_rows, [], "no rows to fit"),
    "huge declared shape": (
        _huge_declared_shape,
        [],
        "declares shape (1000000000000, 1000)",
    ),
    "unwritten chunks": (_unwritten_chunks, [], "never written (rows 20-39)"),
    "external link": (_external_link, [], "is reached through an external link"),
    "virtual dataset with a missing source": (
        _virtual_missing_source,
        [],
        "part1.h5:X does not exist",
    ),
}


USAGE = {"a parameter given twice", "drop and impute"}

# Launched as the real command: a refusal from the file's metadata (one found
# in the fit is tests/test_errors.py's); the others take the same path in the
# shared job.
REAL_COMMAND = {"huge declared shape"}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_bad_input_is_refused_on_every_rank_leaving_nothing(dirs, case, mpitrain_cli):
    data, out = dirs
    make, extra, message = REFUSED[case]
    make(data / "d.h5")
    cli = mpitrain_cli if case in REAL_COMMAND else None
    run = _train(cli, data / "d.h5", out, "--model", "ridge", *extra)
    # Options refused before any rank reads: the same error on every rank, unnamed.
    _assert_refused(run, message, out, agreed=case not in USAGE)


@pytest.mark.parametrize(
    "case", ["huge declared shape", "unwritten chunks", "external link"]
)
def test_describe_refuses_what_train_refuses(dirs, case, mpitrain_cli):
    data, out = dirs
    make, _, message = REFUSED[case]
    make(data / "d.h5")
    cli = mpitrain_cli if case == "external link" else None  # one real launch
    run = _run(cli, "describe", str(data / "d.h5"), "--json", str(out / "d.json"))
    _assert_refused(run, message, out)


@pytest.mark.parametrize("command", ["train", "describe"])
def test_streamed_reading_is_checked_against_the_memory_limit(
    dirs, command, mpitrain_cli
):
    # Streaming holds a few blocks, not the rows: still more than 4 kB.
    data, out = dirs
    X, y = regression_problem(n=2000, d=5)
    write_h5(data / "d.h5", X, y)
    env = {"MPITRAIN_MEMORY_LIMIT": "4000"}
    if command == "train":  # in the shared job; describe is the real command
        run = _train(None, data / "d.h5", out, "--model", "ridge", env=env)
    else:
        run = _run(
            mpitrain_cli,
            "describe",
            str(data / "d.h5"),
            "--json",
            str(out / "d.json"),
            env=env,
        )
    _assert_refused(run, "needs about", out)
    assert "MPITRAIN_MEMORY_LIMIT" in run.stderr


@pytest.mark.parametrize("dtype", [np.float16, np.int8, np.bool_])
def test_small_numeric_feature_types_give_scikit_learns_model(dirs, dtype):
    data, out = dirs
    X, y = regression_problem(n=60, d=4)
    X = (X > 0) if dtype is np.bool_ else (X * 20).astype(dtype)
    write_h5(data / "d.h5", X, y)
    report = _assert_fitted(
        _train(None, data / "d.h5", out, "--model", "ridge", "--alpha", "1"), out
    )
    reference = _ridge_reference(X, y)
    np.testing.assert_allclose(report["coef"], reference.coef_, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(report["intercept"], reference.intercept_, rtol=1e-9)


def test_column_vector_target_is_read_as_1d_with_one_warning(dirs, mpitrain_cli):
    data, out = dirs
    X, y = regression_problem(n=50, d=3)
    write_h5(data / "d.h5", X, y[:, None])
    run = _train(mpitrain_cli, data / "d.h5", out, "--model", "ridge", "--alpha", "1")
    report = _assert_fitted(run, out)
    reference = _ridge_reference(X, y)
    np.testing.assert_allclose(report["coef"], reference.coef_, rtol=1e-9, atol=1e-12)
    assert run.stderr.count("has shape (50, 1); read as 1-D (50,)") == 1, run.stderr


def test_column_chunked_compressed_features_give_scikit_learns_model(dirs):
    # Chunks one column wide and all rows tall, as R and Julia writers make them.
    data, out = dirs
    X, y = regression_problem(n=3000, d=6)
    with h5py.File(data / "d.h5", "w") as f:
        f.create_dataset("X", data=X, chunks=(3000, 1), compression="gzip")
        f.create_dataset("y", data=y, chunks=(3000,), compression="gzip")
    report = _assert_fitted(
        _train(None, data / "d.h5", out, "--model", "ridge", "--alpha", "1"), out
    )
    reference = _ridge_reference(X, y)
    np.testing.assert_allclose(report["coef"], reference.coef_, rtol=1e-9, atol=1e-12)


def test_virtual_dataset_with_sources_beside_it_is_read(dirs):
    data, out = dirs
    X, y = regression_problem(n=30, d=3)
    layout = h5py.VirtualLayout(shape=X.shape, dtype="f8")
    for i, (a, b) in enumerate([(0, 12), (12, 30)]):
        write_h5(data / f"part{i}.h5", X[a:b])
        # Relative names: found beside the virtual file wherever it is run from.
        layout[a:b] = h5py.VirtualSource(f"part{i}.h5", "X", shape=(b - a, 3))
    with h5py.File(data / "d.h5", "w") as f:
        f.create_virtual_dataset("X", layout)
        f["y"] = y
    report = _assert_fitted(
        _train(None, data / "d.h5", out, "--model", "ridge", "--alpha", "1"), out
    )
    reference = _ridge_reference(X, y)
    np.testing.assert_allclose(report["coef"], reference.coef_, rtol=1e-9, atol=1e-12)


def test_report_with_an_undefined_roc_is_strict_json(dirs):
    # Every test row is of one class: the ROC curve and its AUC are undefined.
    from mpitrain.model_selection import global_test_mask

    data, out = dirs
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 3))
    y = (X[:, 0] > 0).astype(np.int64)
    y[global_test_mask(60, test_size=0.25, seed=0)] = 1
    write_h5(data / "d.h5", X, y)
    run = _train(None, data / "d.h5", out, "--model", "logistic", "--test-size", "0.25")
    report = _assert_fitted(run, out)
    text = (out / "report.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    roc = report["test_scores"]["roc"]
    assert roc["auc"] is None
    assert None in roc["fpr"]  # no negative test rows: 0/0, written as null


# ----------------------------------------------------------------------------
# Resuming: a checkpoint made on other data is refused


def _stopped_after_first_checkpoint(comm, argv, env):
    """The mpitrain command, stopped by an error right after its first checkpoint
    (the checkpoint stays for a resume)."""
    from cli_in_job import run_main

    from mpitrain.checkpoint import CheckpointLoop

    step = CheckpointLoop.step

    def stop_after_saving(self, *args, **kwargs):
        if step(self, *args, **kwargs):
            raise RuntimeError("stopped after the first checkpoint")
        return False

    CheckpointLoop.step = stop_after_saving
    try:
        return run_main(argv, env)
    finally:
        CheckpointLoop.step = step


def _rewritten_same_shape_and_time(p):
    # Other values, the same shape, size and time: what cp -p or a restore gives.
    stat = os.stat(p)
    with h5py.File(p, "r+") as f:
        f["X"][...] = f["X"][...] + 1.0
    os.utime(p, ns=(stat.st_atime_ns, stat.st_mtime_ns))


REFUSED_ON_RESUME = {
    "data changed before resume": (
        _rewritten_same_shape_and_time,
        "/data/d.h5: checkpoint 'blake2b:",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSED_ON_RESUME))
def test_resume_on_changed_input_is_refused_on_every_rank_leaving_nothing(
    dirs, case, mpitrain_cli
):
    data, out = dirs
    change, message = REFUSED_ON_RESUME[case]
    X, y = regression_problem(n=400, d=3)
    write_h5(data / "d.h5", X, y)
    checkpoint = ["--checkpoint", str(data / "c.ckpt")]
    stopped = cli_in_job(
        RANKS,
        ["train", str(data / "d.h5"), "--model", "ridge", "--out", str(out / "m.skops"),
         "--quiet", *checkpoint, "--checkpoint-every", "1"],
        timeout=TIMEOUT,
        body=_stopped_after_first_checkpoint,
    )  # fmt: skip
    assert stopped.returncode == 1 and (data / "c.ckpt").exists(), stopped.stderr
    change(data / "d.h5")
    run = _train(
        mpitrain_cli, data / "d.h5", out, "--model", "ridge", *checkpoint, "--resume"
    )
    _assert_refused(run, message, out, agreed=False)
    assert "belongs to a different run (contents of " in run.stderr
    assert "remove it, or choose another checkpoint path" in run.stderr
    assert (data / "c.ckpt").exists()  # kept: the original data may come back


def test_describe_clusters_and_plots_need_pca_before_any_work(tmp_path, monkeypatch):
    """An argument error: raised before the run starts (MPI), a file is looked at or a folder made."""
    from mpitrain.errors import UsageError
    from mpitrain.workflow import describe

    def no_run(*args, **kwargs):
        pytest.fail("the run started before the arguments were checked")

    monkeypatch.setattr("mpitrain.workflow._describe.Run", no_run)
    for extra in ({"clusters": 3}, {"plots": str(tmp_path / "plots")}):
        with pytest.raises(UsageError, match="--clusters and --plots need --pca K"):
            describe(str(tmp_path / "missing.h5"), **extra)
    assert list(tmp_path.iterdir()) == []


def test_evaluate_and_predict_refuse_what_would_lose_or_fake_results(dirs):
    """No rows to evaluate, R² of one row, and --dataset names that lose the predictions."""
    from sklearn.metrics import r2_score

    data, out = dirs
    X, y = regression_problem(n=60, d=3)
    write_h5(data / "d.h5", X, y)
    write_h5(data / "zero.h5", X[:0], y[:0])
    write_h5(data / "one.h5", X[:1], y[:1])
    model = data / "m.skops"
    assert (
        _run(
            None,
            "train",
            str(data / "d.h5"),
            "--model",
            "ridge",
            "--out",
            str(model),
            "--quiet",
        ).returncode
        == 0
    )
    _assert_refused(
        _run(None, "evaluate", str(model), str(data / "zero.h5")),
        "no rows to evaluate",
        out,
        agreed=False,
    )
    # One row: scikit-learn's R² is NaN, with its warning.
    one = _run(
        None,
        "evaluate",
        str(model),
        str(data / "one.h5"),
        "--report",
        str(out / "r.json"),
    )
    assert one.returncode == 0, one.stderr
    assert np.isnan(r2_score(y[:1], y[:1] + 1.0))
    assert (
        _strict_json((out / "r.json").read_text().replace("NaN", "null"))["metrics"][
            "r2"
        ]
        is None
    )
    assert (
        one.stderr.count("R^2 score is not well-defined with less than two samples")
        == 1
    )
    os.unlink(out / "r.json")
    # A name h5py would refuse only after predicting, and the parts' row_id.
    _assert_refused(
        _run(
            None,
            "predict",
            str(model),
            str(data / "d.h5"),
            "--out",
            str(out / "p.h5"),
            "--dataset",
            "",
        ),
        "--dataset '': expected a dataset name",
        out,
        agreed=False,
    )
    parts = data / "parts"
    assert (
        _run(
            None, "shuffle", str(data / "d.h5"), "--out", str(parts), "--quiet"
        ).returncode
        == 0
    )
    _assert_refused(
        _run(
            None,
            "predict",
            str(model),
            str(parts / "*.h5"),
            "--out",
            str(out / "p.h5"),
            "--dataset",
            "row_id",
        ),
        "the predictions would be overwritten by the parts' 'row_id'",
        out,
        agreed=False,
    )


def test_files_that_are_not_what_they_claim_are_named_in_one_line(dirs):
    """A damaged model, a junk report or checkpoint, mismatched labels, an
    output directory that refuses files: one clear line each, before the work."""
    data, out = dirs
    X, y = regression_problem(n=60, d=3)
    labels = (y > np.median(y)).astype(np.int64)
    write_h5(data / "c.h5", X, labels)
    write_h5(data / "text.h5", X, np.where(labels == 1, b"yes", b"no"))
    model = data / "m.skops"
    trained = _run(
        None,
        "train",
        str(data / "c.h5"),
        "--model",
        "logistic",
        "--out",
        str(model),
        "--quiet",
    )
    assert trained.returncode == 0, trained.stderr
    damaged = data / "damaged.skops"
    damaged.write_bytes(model.read_bytes()[:200])
    junk = data / "junk.json"
    junk.write_text("junk\n")
    other = data / "other.json"
    other.write_text('{"command": "train"}\n')  # JSON, but not a search report
    cases = [
        (
            ["predict", str(damaged), str(data / "c.h5"), "--out", str(out / "p.h5")],
            "damaged.skops is a damaged skops file (a truncated or corrupt zip archive",
            True,
        ),
        (
            ["evaluate", str(model), str(data / "text.h5")],
            "--y y holds text labels, but the model's classes are numbers (0, 1)",
            False,
        ),
        (
            [
                "search",
                str(junk),
                "--merge",
                "--out",
                str(out / "s.skops"),
                "--report",
                str(out / "r.json"),
            ],
            "--merge " + str(junk) + ": not a search report (it is not JSON",
            False,
        ),
        (
            [
                "search",
                str(other),
                "--merge",
                "--out",
                str(out / "s.skops"),
                "--report",
                str(out / "r.json"),
            ],
            "--merge " + str(other) + ": not a search report (no cv_results)",
            False,
        ),
        (
            [
                "search",
                str(data / "c.h5"),
                "--model",
                "logistic",
                "--grid",
                "C=1,2",
                "--out",
                str(out / "s.skops"),
                "--checkpoint",
                str(junk),
                "--quiet",
            ],
            "is not a search checkpoint (it is not JSON",
            False,
        ),
        (
            [
                "make-data",
                "regression",
                str(out / "no" / "d.h5"),
                "--rows",
                "5",
                "--features",
                "2",
            ],
            "OUT.h5 " + str(out / "no" / "d.h5") + ": the directory",
            False,
        ),
    ]
    if os.path.isdir("/proc"):
        # Writable by its permissions for root, and refusing every new file.
        cases.append(
            (
                [
                    "train",
                    str(data / "c.h5"),
                    "--model",
                    "logistic",
                    "--out",
                    "/proc/m.skops",
                ],
                "--out /proc/m.skops: no file can be created in /proc",
                False,
            )
        )
    for argv, message, agreed in cases:
        _assert_refused(_run(None, *argv), message, out, agreed=agreed)
