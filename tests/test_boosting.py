"""Gradient boosting on XGBoost's collective against one-process XGBoost on all rows.

Fidelity.  With integer features of at most ``max_bin`` distinct values,
XGBoost's merged quantile sketch has exactly one cut per value, whatever the
split of the rows: the trees, and so the predictions, equal those of one
process on all rows (to 1e-6; measured 0.0).  Continuous features may get
other cuts (docs/boosting.md measures the gap); they are not tested here.
"""

from __future__ import annotations

import importlib
import os
import signal
import threading
import time

import numpy as np
import pytest
import xgboost
from conftest import write_h5

from mpitrain.data import row_range
from mpitrain.errors import UsageError
from mpitrain.model_selection import global_test_mask
from mpitrain.testing import mpirun, run_function

TIMEOUT = 240
ATOL = 1e-6
PARAMS = {"n_estimators": 12, "max_depth": 3, "learning_rate": 0.3, "n_jobs": 1}


def _integer_problem(n=600, seed=0, classes=3):
    """Integer features (at most 25 distinct values each) and a target of both kinds."""
    rng = np.random.default_rng(seed)
    X = rng.integers(0, 25, size=(n, 5)).astype(np.float64)
    X[rng.random(X.shape) < 0.03] = np.nan  # missing values: XGBoost's default branch
    score = np.nan_to_num(X[:, 0]) + 0.5 * np.nan_to_num(X[:, 1]) + rng.normal(0, 4, n)
    labels = np.digitize(
        score, np.quantile(score, np.linspace(0, 1, classes + 1)[1:-1])
    )
    target = score + 0.3 * np.nan_to_num(X[:, 2])
    return X, labels.astype(np.int64), target


def _split(n, size, rank, empty_last):
    """Rows of ``rank``: row_range, or with the last rank holding none."""
    if empty_last and size > 1:
        return (n, n) if rank == size - 1 else row_range(n, size - 1, rank)
    return row_range(n, size, rank)


def _fidelity_body(comm, X, labels, target, X_test, params, empty_last):
    """Fit classifier, regressor and an early-stopped regressor on this rank's rows."""
    from mpitrain.ensemble import XGBClassifier, XGBRegressor

    a, b = _split(len(X), comm.Get_size(), comm.Get_rank(), empty_last)
    clf = XGBClassifier(**params, comm=comm).fit(X[a:b], labels[a:b])
    binary = XGBClassifier(**params, comm=comm).fit(X[a:b], labels[a:b] > 0)
    reg = XGBRegressor(**params, comm=comm).fit(X[a:b], target[a:b])
    early = XGBRegressor(
        **{**params, "n_estimators": 200, "learning_rate": 0.5},
        early_stopping_rounds=3,
        validation_fraction=0.2,
        random_state=5,
        comm=comm,
    ).fit(X[a:b], target[a:b])
    return {
        "proba": clf.predict_proba(X_test),
        "predict": clf.predict(X_test),
        "binary": binary.predict_proba(X_test),
        "classes": clf.classes_,
        "regression": reg.predict(X_test),
        "early": early.predict(X_test),
        "best_iteration": early.best_iteration,
        "clf": clf.estimator_,
    }


@pytest.mark.mpi(ranks=[1, 2, 4])
def test_predictions_equal_one_process_xgboost_on_all_rows(mpi_ranks):
    X, labels, target = _integer_problem()
    X_test = _integer_problem(n=200, seed=1)[0]
    results = run_function(
        _fidelity_body,
        mpi_ranks,
        X,
        labels,
        target,
        X_test,
        PARAMS,
        mpi_ranks == 4,  # at 4 ranks, the last rank holds no rows
        timeout=TIMEOUT,
    )
    clf = xgboost.XGBClassifier(**PARAMS).fit(X, labels)
    binary = xgboost.XGBClassifier(**PARAMS).fit(X, labels > 0)
    reg = xgboost.XGBRegressor(**PARAMS).fit(X, target)
    # The reference early-stops on the same validation rows: chosen by global row id.
    valid = global_test_mask(len(X), test_size=0.2, seed=5)
    early = xgboost.XGBRegressor(
        **{**PARAMS, "n_estimators": 200, "learning_rate": 0.5},
        early_stopping_rounds=3,
    ).fit(
        X[~valid], target[~valid], eval_set=[(X[valid], target[valid])], verbose=False
    )
    for got in results:
        np.testing.assert_array_equal(got["classes"], [0, 1, 2])
        np.testing.assert_allclose(got["proba"], clf.predict_proba(X_test), atol=ATOL)
        np.testing.assert_array_equal(got["predict"], clf.predict(X_test))
        np.testing.assert_allclose(
            got["binary"], binary.predict_proba(X_test), atol=ATOL
        )
        np.testing.assert_allclose(got["regression"], reg.predict(X_test), atol=ATOL)
        assert got["best_iteration"] == early.best_iteration < 199
        np.testing.assert_allclose(got["early"], early.predict(X_test), atol=ATOL)
    # The fitted estimator_ is plain XGBoost: it came back pickled and predicts here, without MPI.
    plain = results[0]["clf"]
    assert type(plain) is xgboost.XGBClassifier
    np.testing.assert_allclose(
        plain.predict_proba(X_test), clf.predict_proba(X_test), atol=ATOL
    )


def _rank_lacks_a_class_body(comm, X, labels):
    """Rank 1 holds no row of class 2: trees still grow for 3 classes."""
    from mpitrain.ensemble import XGBClassifier

    rank = comm.Get_rank()
    mine = (labels == 2) == (rank == 0)
    model = XGBClassifier(**PARAMS, comm=comm).fit(X[mine], labels[mine])
    return model.predict_proba(X), model.n_classes_


@pytest.mark.minversions  # XGBoost's oldest supported release too
@pytest.mark.mpi(ranks=[2])
def test_rank_without_a_class_trains_in_the_global_class_space(mpi_ranks):
    X, labels, _ = _integer_problem()
    results = run_function(
        _rank_lacks_a_class_body, mpi_ranks, X, labels, timeout=TIMEOUT
    )
    order = np.concatenate([np.flatnonzero(labels == 2), np.flatnonzero(labels != 2)])
    reference = xgboost.XGBClassifier(**PARAMS).fit(X[order], labels[order])
    for proba, n_classes in results:
        assert n_classes == 3
        np.testing.assert_allclose(proba, reference.predict_proba(X), atol=ATOL)


def _resume_body(comm, X, target, folder):
    """Uninterrupted, then stopped by SIGUSR1 on rank 1 at round 7, then resumed."""
    import xgboost as xgb

    from mpitrain.checkpoint import CheckpointInterrupted, checkpointing
    from mpitrain.ensemble import XGBRegressor

    a, b = row_range(len(X), comm.Get_size(), comm.Get_rank())
    path = os.path.join(folder, "boost.ckpt")
    params = {**PARAMS, "n_estimators": 40, "learning_rate": 0.2}

    class SignalAt(xgb.callback.TrainingCallback):
        def after_iteration(self, model, epoch, evals_log):
            if comm.Get_rank() == 1 and epoch == 6:
                os.kill(os.getpid(), signal.SIGUSR1)
            return False

    def make(callbacks=None):
        return XGBRegressor(
            **params,
            early_stopping_rounds=30,
            validation_fraction=0.2,
            callbacks=callbacks,
            comm=comm,
        )

    with checkpointing(path, every=5, comm=comm) as ck:
        plain = make().fit(X[a:b], target[a:b])
    saves = ck.saves
    stopped = None
    try:
        with checkpointing(path, every=5, comm=comm):
            make([SignalAt()]).fit(X[a:b], target[a:b])
    except CheckpointInterrupted as exc:
        stopped = exc.iteration
    with checkpointing(path, every=5, resume=True, comm=comm) as ck:
        resumed = make().fit(X[a:b], target[a:b])
    return {
        "saves": saves,
        "stopped": stopped,
        "resumed_flag": ck.resumed,
        "plain": bytes(plain.estimator_.get_booster().save_raw("ubj")),
        "resumed": bytes(resumed.estimator_.get_booster().save_raw("ubj")),
        "history": (plain.evals_result(), resumed.evals_result()),
        "predictions": (plain.predict(X), resumed.predict(X)),
    }


@pytest.mark.mpi(ranks=[2])
def test_resumed_model_equals_the_uninterrupted_one(mpi_ranks, tmp_path):
    X, _, target = _integer_problem()
    for got in run_function(
        _resume_body, mpi_ranks, X, target, str(tmp_path), timeout=TIMEOUT
    ):
        assert got["saves"] == 8  # rounds 5, 10, ..., 40
        # Saved at a boundary right after the signal (round 7 with XGBoost 3, 8 with 2.1).
        assert got["stopped"] in (7, 8)
        assert got["resumed_flag"]
        assert got["resumed"] == got["plain"]  # the same booster, byte for byte
        assert got["history"][0] == got["history"][1]
        np.testing.assert_array_equal(*got["predictions"])


def _failure_body(comm, X, labels, how):
    """One rank fails in the way ``how`` says; then every rank fits again."""
    import xgboost as xgb

    from mpitrain.ensemble import XGBClassifier

    rank = comm.Get_rank()
    a, b = row_range(len(X), comm.Get_size(), rank)
    Xr, yr = X[a:b].copy(), labels[a:b].copy()
    callbacks = None
    if how == "bad data" and rank == 1:
        Xr[0, 0] = np.inf
    if how == "labels":
        yr = yr + 1
    if how == "while training":

        class Fail(xgb.callback.TrainingCallback):
            def after_iteration(self, model, epoch, evals_log):
                if rank == 1 and epoch == 3:
                    raise RuntimeError("injected failure in round 4")
                return False

        callbacks = [Fail()]
    if how == "stop on one rank":

        class StopHere(xgb.callback.TrainingCallback):
            def after_iteration(self, model, epoch, evals_log):
                return rank == 1 and epoch == 3

        callbacks = [StopHere()]
    boosting = importlib.import_module("mpitrain.ensemble._boosting")
    original = boosting._select_rows
    if how == "before training" and rank == 0:

        def no_memory(*args, **kwargs):
            raise MemoryError("injected: no memory for the rows given to XGBoost")

        boosting._select_rows = no_memory
    tic = time.perf_counter()
    try:
        fitted = XGBClassifier(**PARAMS, callbacks=callbacks, comm=comm).fit(Xr, yr)
        error = None
    except Exception as exc:
        error = (type(exc).__name__, str(exc), getattr(exc, "ranks", None))
    finally:
        boosting._select_rows = original
    if error is None:
        # Stopped by one rank's callback: every rank's booster has the rounds until then.
        return fitted.estimator_.get_booster().num_boosted_rounds(), fitted.predict(
            X[:5]
        )
    seconds = time.perf_counter() - tic
    # Nothing is left behind: the same ranks fit again at once.
    again = XGBClassifier(**PARAMS, comm=comm).fit(X[a:b], labels[a:b])
    return error, seconds, again.predict(X[:5])


@pytest.mark.minversions  # XGBoost's oldest supported release too
@pytest.mark.mpi(ranks=[2])
def test_failure_on_one_rank_is_one_agreed_error_without_hang(mpi_ranks):
    X, labels, _ = _integer_problem()
    expected = {
        "bad data": (1, "infinity"),
        "labels": (None, "class labels 0, 1, ..., n_classes - 1"),
        "while training": (1, "injected failure in round 4"),
        "before training": (0, "injected: no memory"),
        "stop on one rank": (None, ""),
    }
    for how, (rank, words) in expected.items():
        results = run_function(
            _failure_body, mpi_ranks, X, labels, how, timeout=TIMEOUT
        )
        if how == "stop on one rank":
            # Stopping is agreed: every rank ends after round 4 with the same model.
            assert [r[0] for r in results] == [4] * mpi_ranks
            for _, predicted in results:
                np.testing.assert_array_equal(predicted, results[0][1])
            continue
        errors = [error for error, _, _ in results]
        assert errors[0] is not None, how
        assert all(e == errors[0] for e in errors), (how, errors)  # one agreed message
        kind, message, ranks = errors[0]
        assert words in message, (how, message)
        if rank is not None:
            assert ranks == [rank], (how, message)  # the rank where it began only
            assert "Allreduce" not in message and "Stack trace" not in message
        if how == "before training":
            assert kind == "DistributedMemoryError"
        # XGBoost's collective ends the others' waits at once (its timeout is 1800 s).
        assert max(s for _, s, _ in results) < 60, how
        reference = results[0][2]
        for _, _, predicted in results:
            np.testing.assert_array_equal(predicted, reference)


def _stuck_peer_body(comm, X, labels):
    """Rank 0 fails inside XGBoost's collective; rank 1 stays inside it (as XGBoost 3.2 rarely did)."""
    import xgboost as xgb

    from mpitrain.ensemble import XGBClassifier

    rank = comm.Get_rank()
    a, b = row_range(len(X), comm.Get_size(), rank)

    def stuck_or_failing(*args, **kwargs):
        if rank == 0:
            raise RuntimeError("injected: rank 0 failed inside the collective")
        time.sleep(600)  # never leaves: only the job's end frees it

    xgb.train = stuck_or_failing
    XGBClassifier(**PARAMS, collective_timeout=3, comm=comm).fit(X[a:b], labels[a:b])


@pytest.mark.mpi_own_job  # the job is aborted
def test_a_peer_stuck_inside_xgboost_aborts_the_job_with_the_reason():
    from mpitrain.testing import MPITestFailure

    X, labels, _ = _integer_problem()
    tic = time.perf_counter()
    with pytest.raises(MPITestFailure) as failed:
        run_function(_stuck_peer_body, 2, X, labels, timeout=120, env={})
    # collective_timeout (3 s) and as long again, not the stuck rank's 600 s.
    assert time.perf_counter() - tic < 60
    text = str(failed.value)
    assert "injected: rank 0 failed inside the collective" in text, text
    assert "stayed inside XGBoost's collective for 6 s" in text, text
    assert "aborting the whole job" in text


@pytest.mark.minversions  # XGBoost's oldest supported release too
def test_bad_parameters_are_usage_errors_before_any_work():
    from mpitrain.ensemble import XGBClassifier, XGBRegressor
    from mpitrain.workflow import TrainOptions, make_estimator

    cases = [
        ({"max_depth": -1}, "max_depth"),
        ({"subsample": 2.0}, "subsample"),
        ({"objective": "reg:nonsense"}, "nonsense"),
        ({"eval_metric": "nonsense"}, "nonsense"),
        ({"tree_method": "exact"}, "tree_method"),
        ({"grow_policy": "widest"}, "grow_policy"),
    ]
    for params, words in cases:
        with pytest.raises(UsageError, match=words):
            XGBRegressor(**params)._validate_params()
    with pytest.raises(ValueError, match="callable"):
        XGBClassifier(objective=lambda y, p: (y, p))._validate_params()
    # Through the command line's --param: unknown names and bad values, before any row.
    options = TrainOptions(
        "data.h5", "gradient-boosting", "m.skops", params={"max_bin": 1}
    )
    with pytest.raises(UsageError, match="max_bin"):
        make_estimator(options, None, labels=True)
    options = TrainOptions(
        "data.h5", "gradient-boosting", "m.skops", params={"depth": 3}
    )
    with pytest.raises(UsageError, match="has no parameter 'depth'"):
        make_estimator(options, None, labels=False)


def _stream_body(comm, path, params):
    """fit_reader (streamed blocks) against fit on the same rows in memory."""
    from mpitrain.data import open_rows
    from mpitrain.ensemble import XGBClassifier

    reader = open_rows(path, comm=comm, labels=True, block_bytes=4096)
    streamed = XGBClassifier(**params, early_stopping_rounds=3, comm=comm)
    streamed.fit_reader(reader)
    rows = open_rows(path, comm=comm, labels=True).begin().result()
    in_memory = XGBClassifier(**params, early_stopping_rounds=3, comm=comm)
    in_memory.fit(rows.X, rows.y)
    # Weights that sum to zero over all ranks: the same agreed error as fit's.
    errors = []
    weighted = open_rows(path, comm=comm, labels=True, sample_weight="zero_weight")
    for fit in (
        lambda model: model.fit_reader(weighted),
        lambda model: model.fit(rows.X, rows.y, sample_weight=np.zeros(len(rows.y))),
    ):
        try:
            fit(XGBClassifier(**params, comm=comm))
            errors.append(None)
        except ValueError as exc:
            errors.append(str(exc))
    # An infinity in rank 0's first block of many: one agreed error, and the
    # checking pass's reading thread is stopped, not left waiting for the ring.
    bad = open_rows(path, x="X_bad", comm=comm, labels=True, block_bytes=1024)
    try:
        XGBClassifier(**params, comm=comm).fit_reader(bad)
        errors.append(None)
    except Exception as exc:
        errors.append((type(exc).__name__, getattr(exc, "ranks", None)))
    # XGBoost fails on rank 0 after its first batch of a pass: that pass's
    # reading thread is stopped too.
    original = xgboost.QuantileDMatrix

    def fail_in_pass(data, **kwargs):
        data.next(lambda **batch: None)
        raise MemoryError("injected: no memory in the middle of a pass")

    if comm.Get_rank() == 0:
        xgboost.QuantileDMatrix = fail_in_pass
    bad = open_rows(path, comm=comm, labels=True, block_bytes=1024)
    try:
        XGBClassifier(**params, comm=comm).fit_reader(bad)
        errors.append(None)
    except Exception as exc:
        errors.append((type(exc).__name__, getattr(exc, "ranks", None)))
    finally:
        xgboost.QuantileDMatrix = original
    readers = [t for t in threading.enumerate() if t.name == "mpitrain-reader"]
    return (
        streamed.predict_proba(rows.X),
        in_memory.predict_proba(rows.X),
        streamed.stream_stats_["passes"],
        streamed.n_rows_,
        errors,
        len(readers),
    )


def test_errors_that_only_say_a_peer_left_are_told_from_a_rank_s_own():
    """The collective's messages seen on the ranks that did not fail (XGBoost 3.x)."""
    from mpitrain.ensemble._boosting import _lost_peer

    error = xgboost.core.XGBoostError
    seen = [
        "[10:49:30] /workspace/src/collective/result.cc:83: [comm_group.cc:125|10:49:30]:"
        "\n\n- [comm.cc:409|10:49:30]: Failed to shutdown.\n- [loop.cc:101|10:49:30]: "
        "Encountered EOF. The other end is likely closed.\nStack trace:\n",
        "[quantile_dmatrix.cc:127|10:48:38]:\n\n- [allreduce.cc:39|10:48:38]: Ring "
        "allreduce small failed.\n- [socket.h:79|10:48:38]: Poll error condition:Success",
    ]
    for text in seen:
        assert _lost_peer(error(text))
    # A rank's own errors: XGBoost's parameter check, and any Python error.
    assert not _lost_peer(error("[learner.cc:742]: Invalid parameter 'max_bin' = 1"))
    assert not _lost_peer(MemoryError("Encountered EOF"))


@pytest.mark.mpi(ranks=[3])
def test_streamed_blocks_equal_rows_in_memory(mpi_ranks, tmp_path):
    X, labels, _ = _integer_problem()
    X_bad = X.copy()
    X_bad[10, 0] = np.inf
    path = write_h5(
        tmp_path / "c.h5", X, labels, zero_weight=np.zeros(len(X)), X_bad=X_bad
    )
    params = {**PARAMS, "n_estimators": 30}
    for streamed, in_memory, passes, n_rows, errors, readers in run_function(
        _stream_body, mpi_ranks, path, params, timeout=TIMEOUT
    ):
        np.testing.assert_array_equal(streamed, in_memory)
        assert n_rows == len(X)
        assert passes >= 2  # XGBoost read the blocks more than once: never all at once
        assert errors[:2] == ["the sample weights of all rows sum to zero"] * 2
        assert errors[2] == ("DistributedValueError", [0])
        assert errors[3] == ("DistributedMemoryError", [0])
        assert readers == 0


@pytest.mark.slow
def test_cli_train_evaluate_predict(tmp_path, mpitrain_cli):
    import h5py
    from cli_in_job import cli_in_job

    from mpitrain.model_io import load_model

    X, labels, _ = _integer_problem()
    data = write_h5(tmp_path / "c.h5", X, labels)
    model, report, pred = tmp_path / "m.skops", tmp_path / "e.json", tmp_path / "p.h5"
    steps = [
        ["train", data, "--model", "gradient-boosting", "--out", str(model)]
        + [
            "--param",
            "n_estimators=10",
            "--param",
            "max_depth=3",
            "--test-size",
            "0.25",
        ],
        ["evaluate", str(model), data, "--report", str(report)],
        ["predict", str(model), data, "--out", str(pred)],
    ]
    # Training is the real command; evaluate and predict the same entry point
    # in the shared job (tests/cli_in_job.py).
    run = mpirun(2, [*mpitrain_cli, *steps[0], "--quiet"], timeout=TIMEOUT)
    assert run.returncode == 0, run.stderr
    for argv in steps[1:]:
        run = cli_in_job(2, [*argv, "--quiet"], timeout=TIMEOUT)
        assert run.returncode == 0, run.stderr
    fitted = load_model(model)
    assert type(fitted) is xgboost.XGBClassifier
    with h5py.File(pred) as f:
        predicted = f[next(iter(f))][...]
    np.testing.assert_array_equal(predicted, fitted.predict(X))
    import json

    accuracy = json.loads(report.read_text())["metrics"]["accuracy"]
    assert accuracy == pytest.approx(np.mean(fitted.predict(X) == labels), rel=1e-12)
