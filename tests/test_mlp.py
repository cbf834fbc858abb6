"""Multilayer perceptrons across ranks against scikit-learn's MLP on all rows (digits)."""

from __future__ import annotations

import functools
import json
import warnings

import h5py
import numpy as np
import pytest
from conftest import regression_problem, write_h5
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier, MLPRegressor
from threadpoolctl import threadpool_limits

from mpitrain.data import row_range
from mpitrain.testing import mpirun, run_function

HIDDEN = (16,)


def _digits():
    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    return X[:1400], y[:1400], X[1400:], y[1400:]


def _slice(n, comm):
    return slice(*row_range(n, comm.Get_size(), comm.Get_rank()))


def _quiet():
    warnings.simplefilter("ignore", ConvergenceWarning)


@pytest.fixture(autouse=True)
def _one_thread():
    """scikit-learn's references in this process on one thread (the ranks are limited too)."""
    with threadpool_limits(1):
        yield


# ----------------------------------------------------------------------------
# lbfgs: rank 0's L-BFGS-B on every rank's sums follows scikit-learn's iterates


def _lbfgs_body(comm, X, y, X_test, y_test):
    from mpitrain.neural_network import MLPClassifier as Ours

    _quiet()
    sl = _slice(len(X), comm)
    short = Ours(HIDDEN, solver="lbfgs", max_iter=30, random_state=0, comm=comm)
    short.fit(X[sl], y[sl])
    long = Ours(HIDDEN, solver="lbfgs", max_iter=400, random_state=0, comm=comm)
    long.fit(X[sl], y[sl])
    return {
        "loss": short.loss_,
        "n_iter": short.n_iter_,
        "accuracy": long.score(X_test, y_test),
        "plain": type(long.estimator_).__module__,
    }


@functools.cache
def _lbfgs_reference() -> tuple[float, int, float]:
    """scikit-learn on all rows: loss_ and n_iter_ after 30 iterations, converged test accuracy."""
    X, y, X_test, y_test = _digits()
    with warnings.catch_warnings(), threadpool_limits(1):
        _quiet()
        ref = MLPClassifier(HIDDEN, solver="lbfgs", max_iter=30, random_state=0)
        ref.fit(X, y)
        ref_long = MLPClassifier(HIDDEN, solver="lbfgs", max_iter=400, random_state=0)
        ref_long.fit(X, y)
    return ref.loss_, ref.n_iter_, ref_long.score(X_test, y_test)


@pytest.mark.minversions  # the oldest supported releases too
@pytest.mark.mpi(ranks=[1, 2, 4])
def test_lbfgs_follows_scikit_learn(mpi_ranks):
    X, y, X_test, y_test = _digits()
    loss, n_iter, accuracy = _lbfgs_reference()
    for out in run_function(_lbfgs_body, mpi_ranks, X, y, X_test, y_test):
        assert out["n_iter"] == n_iter == 30
        assert abs(out["loss"] - loss) <= 1e-8 * loss
        assert abs(out["accuracy"] - accuracy) <= 0.003
        assert out["plain"].startswith("sklearn.neural_network")


# ----------------------------------------------------------------------------
# adam and sgd: scikit-learn's minibatches of global rows, one Allreduce per step

STOCHASTIC = {
    "adam_full_batch": dict(solver="adam", shuffle=False, batch_size=1400, max_iter=4),
    "sgd_full_batch": dict(
        solver="sgd",
        shuffle=False,
        batch_size=1400,
        max_iter=4,
        learning_rate="invscaling",
        learning_rate_init=0.1,
    ),
    "adam_minibatch_early_stopping": dict(
        solver="adam", batch_size=64, max_iter=8, early_stopping=True
    ),
    "sgd_minibatch_adaptive": dict(
        solver="sgd",
        batch_size=100,
        max_iter=8,
        learning_rate="adaptive",
        n_iter_no_change=2,
        tol=0.05,
    ),
}


def _regression():
    X, y = regression_problem(n=600, d=6, seed=3)
    return X, (y - y.mean()) / y.std()


def _stochastic_body(comm, X, y, X_test):
    from mpitrain.neural_network import MLPClassifier as Ours
    from mpitrain.neural_network import MLPRegressor as OursRegressor

    _quiet()
    sl = _slice(len(X), comm)
    out = {}
    for name, params in STOCHASTIC.items():
        model = Ours(HIDDEN, random_state=0, comm=comm, **params).fit(X[sl], y[sl])
        out[name] = {
            "coefs": model.coefs_,
            "intercepts": model.intercepts_,
            "loss_curve": model.loss_curve_,
            "validation_scores": model.validation_scores_,
            "predict": model.predict(X_test),
            "n_iter": model.n_iter_,
        }
    # two classes: scikit-learn stratifies the validation split (by global row id here)
    binary = Ours(HIDDEN, batch_size=64, max_iter=6, early_stopping=True)
    binary.set_params(random_state=0, comm=comm).fit(X[sl], y[sl] >= 5)
    out["binary"] = {"validation_scores": binary.validation_scores_}
    Xr, yr = _regression()
    sl = _slice(len(Xr), comm)
    reg = OursRegressor(
        hidden_layer_sizes=(8,),
        solver="sgd",
        batch_size=50,
        max_iter=10,
        early_stopping=True,
        learning_rate_init=0.01,
        random_state=1,
        comm=comm,
    ).fit(Xr[sl], yr[sl])
    out["regressor"] = {
        "loss_curve": reg.loss_curve_,
        "validation_scores": reg.validation_scores_,
        "coefs": reg.coefs_,
    }
    return out


@pytest.mark.mpi(ranks=[3])
def test_adam_and_sgd_take_scikit_learns_steps(mpi_ranks):
    X, y, X_test, y_test = _digits()
    refs = {}
    with warnings.catch_warnings():
        _quiet()
        for name, params in STOCHASTIC.items():
            refs[name] = MLPClassifier(HIDDEN, random_state=0, **params).fit(X, y)
        ref_binary = MLPClassifier(
            HIDDEN, batch_size=64, max_iter=6, early_stopping=True, random_state=0
        ).fit(X, y >= 5)
        Xr, yr = _regression()
        ref_reg = MLPRegressor(
            hidden_layer_sizes=(8,),
            solver="sgd",
            batch_size=50,
            max_iter=10,
            early_stopping=True,
            learning_rate_init=0.01,
            random_state=1,
        ).fit(Xr, yr)
    for out in run_function(_stochastic_body, mpi_ranks, X, y, X_test):
        for name, ref in refs.items():
            got = out[name]
            assert got["n_iter"] == ref.n_iter_, name
            if "full_batch" in name:  # the updates themselves, to 1e-10
                for a, b in zip(
                    got["coefs"] + got["intercepts"], ref.coefs_ + ref.intercepts_
                ):
                    np.testing.assert_allclose(a, b, rtol=0, atol=1e-10)
            accuracy = np.mean(got["predict"] == y_test)
            assert abs(accuracy - ref.score(X_test, y_test)) <= 0.01, name
            # the same minibatches as scikit-learn's: the same curve, to rounding
            np.testing.assert_allclose(got["loss_curve"], ref.loss_curve_, rtol=1e-7)
            if ref.validation_scores_ is not None:
                np.testing.assert_allclose(
                    got["validation_scores"], ref.validation_scores_, rtol=1e-9
                )
        np.testing.assert_allclose(
            out["binary"]["validation_scores"], ref_binary.validation_scores_, rtol=1e-9
        )
        np.testing.assert_allclose(
            out["regressor"]["loss_curve"], ref_reg.loss_curve_, rtol=1e-7
        )
        np.testing.assert_allclose(
            out["regressor"]["validation_scores"], ref_reg.validation_scores_, rtol=1e-7
        )


# ----------------------------------------------------------------------------
# Uneven ranks: one without rows, one with a single class; the average strategy


def _uneven_body(comm, X, y, parts, shuffled):
    from mpitrain.neural_network import MLPClassifier as Ours

    _quiet()
    rank = comm.Get_rank()
    mine = parts[rank]
    exact = Ours(HIDDEN, solver="lbfgs", max_iter=20, random_state=0, comm=comm)
    exact.fit(X[mine], y[mine])
    adam = Ours(HIDDEN, batch_size=50, max_iter=5, random_state=0, comm=comm)
    adam.fit(X[mine], y[mine])
    # average on identically distributed slices (shuffled rows, every class on every rank)
    sl = _slice(len(shuffled[0]), comm)
    average = Ours(
        HIDDEN,
        solver="lbfgs",
        max_iter=15,
        random_state=0,
        strategy="average",
        comm=comm,
    ).fit(shuffled[0][sl], shuffled[1][sl])
    return {
        "exact_loss": exact.loss_,
        "adam_curve": adam.loss_curve_,
        "classes": list(exact.classes_),
        "average": average.coefs_ + average.intercepts_,
    }


@pytest.mark.mpi(ranks=[3])
def test_rank_without_rows_one_class_rank_and_average(mpi_ranks):
    X, y, _, _ = _digits()
    order = np.argsort(y, kind="stable")
    X, y = X[order], y[order]
    one_class = np.flatnonzero(y == 9)
    parts = [np.flatnonzero(y != 9), np.array([], dtype=int), one_class]
    rows = np.concatenate(parts)  # scikit-learn sees the rows in rank order
    rng = np.random.default_rng(0)
    mix = rng.permutation(len(X))
    shuffled = (X[mix], y[mix])
    with warnings.catch_warnings():
        _quiet()
        ref = MLPClassifier(HIDDEN, solver="lbfgs", max_iter=20, random_state=0)
        ref.fit(X[rows], y[rows])
        ref_adam = MLPClassifier(HIDDEN, batch_size=50, max_iter=5, random_state=0)
        ref_adam.fit(X[rows], y[rows])
        # The average strategy's reference, without mpitrain: scikit-learn on each
        # slice (alpha times its share, the same start), weights averaged by rows.
        n = len(X)
        weights, total = [], None
        for r in range(3):
            sl = slice(*row_range(n, 3, r))
            share = (sl.stop - sl.start) / n
            local = MLPClassifier(
                HIDDEN,
                solver="lbfgs",
                max_iter=15,
                random_state=0,
                alpha=1e-4 * share,
            ).fit(shuffled[0][sl], shuffled[1][sl])
            w = [a * share for a in local.coefs_ + local.intercepts_]
            total = w if total is None else [a + b for a, b in zip(total, w)]
            weights.append(share)
    for out in run_function(_uneven_body, mpi_ranks, X, y, parts, shuffled):
        assert out["classes"] == list(range(10))
        assert abs(out["exact_loss"] - ref.loss_) <= 1e-8 * ref.loss_
        np.testing.assert_allclose(out["adam_curve"], ref_adam.loss_curve_, rtol=1e-7)
        for a, b in zip(out["average"], total):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-7)


# ----------------------------------------------------------------------------
# Checkpoint and resume: the resumed fit is the uninterrupted one, bit for bit


def _resume_body(comm, X, y, path):
    from mpitrain.checkpoint import checkpointing
    from mpitrain.neural_network import MLPClassifier as Ours

    _quiet()
    sl = _slice(len(X), comm)
    out = {}
    cases = {
        "adam": dict(batch_size=100, max_iter=5, early_stopping=True),
        "lbfgs": dict(solver="lbfgs", max_iter=12),
        "average": dict(solver="sgd", max_iter=6, strategy="average", rounds=3),
    }
    for name, params in cases.items():
        file = f"{path}.{name}"

        def make(params=params):
            return Ours(HIDDEN, random_state=0, comm=comm, **params)

        plain = make().fit(X[sl], y[sl])
        # keep=True: the file holds the last state saved before the fit ended
        with checkpointing(file, every=2, keep=True, comm=comm) as ck:
            make().fit(X[sl], y[sl])
        saves = ck.saves
        with checkpointing(file, resume=True, comm=comm) as ck:
            resumed = make().fit(X[sl], y[sl])
        out[name] = {
            "saves": saves,
            "resumed": ck.resumed,
            "equal": all(
                np.array_equal(a, b)
                for a, b in zip(
                    plain.coefs_ + plain.intercepts_,
                    resumed.coefs_ + resumed.intercepts_,
                )
            ),
            "loss": (plain.loss_, resumed.loss_),
            "curve": (
                getattr(plain, "loss_curve_", None),
                getattr(resumed, "loss_curve_", None),
            ),
        }
    return out


@pytest.mark.mpi(ranks=[2])
def test_resume_is_bit_identical(mpi_ranks, tmp_path):
    X, y, _, _ = _digits()
    for out in run_function(_resume_body, mpi_ranks, X, y, str(tmp_path / "ck")):
        for name, got in out.items():
            assert got["saves"] >= 1 and got["resumed"], name
            assert got["equal"], name
            assert got["loss"][0] == got["loss"][1], name
            assert got["curve"][0] == got["curve"][1], name


# ----------------------------------------------------------------------------
# The command line: train (cv, plots, compare), evaluate and predict at 2 ranks


@pytest.mark.slow
def test_command_line_round_trip(tmp_path, mpitrain_cli):
    X, y, _, _ = _digits()
    data = write_h5(tmp_path / "digits.h5", X, y.astype(np.int64))
    model, report, plots = tmp_path / "m.skops", tmp_path / "r.json", tmp_path / "p"
    params = ["hidden_layer_sizes=(16,)", "solver='lbfgs'", "max_iter=25"]
    params += ["random_state=0"]
    run = mpirun(
        2,
        [
            *mpitrain_cli,
            "train",
            data,
            "--model",
            "mlp",
            *[a for p in params for a in ("--param", p)],
            "--cv",
            "2",
            "--plots",
            str(plots),
            "--compare",
            "--report",
            str(report),
            "--out",
            str(model),
            "--quiet",
        ],
        timeout=400,
    )
    assert run.returncode == 0, run.stderr
    train = json.loads(report.read_text())
    text = json.dumps(train)
    assert "cross_validation" in text and "compare" in text
    assert (plots / "confusion_matrix.png").exists()
    # Training is the real command; evaluate and predict the same entry point
    # in the shared job (tests/cli_in_job.py).
    from cli_in_job import cli_in_job

    evaluated, predicted = tmp_path / "e.json", tmp_path / "pred.h5"
    for argv in (
        ["evaluate", str(model), data, "--report", str(evaluated)],
        ["predict", str(model), data, "--out", str(predicted)],
    ):
        run = cli_in_job(2, [*argv, "--quiet"], timeout=200)
        assert run.returncode == 0, run.stderr
    with warnings.catch_warnings():
        _quiet()
        ref = MLPClassifier(HIDDEN, solver="lbfgs", max_iter=25, random_state=0).fit(
            X, y
        )
    got = json.loads(evaluated.read_text())["metrics"]["accuracy"]
    assert got == pytest.approx(ref.score(X, y), abs=1.5 / len(X))
    with h5py.File(predicted) as f:
        pred = f[next(iter(f))][...]
    assert np.mean(pred.ravel() == ref.predict(X)) >= 0.998


# ----------------------------------------------------------------------------
# Errors reach every rank: a failed step on one rank, arguments, a tiny split


def _errors_body(comm, X, y):
    import mpitrain.neural_network._multilayer_perceptron as mlp
    from mpitrain.neural_network import MLPClassifier as Ours

    _quiet()
    sl = _slice(len(X), comm)
    out = {}
    original = mlp.local_sums
    calls = [0]

    def failing(*args, **kwargs):
        calls[0] += 1
        if comm.Get_rank() == 1 and calls[0] == 3:
            raise MemoryError("no memory for this minibatch")
        return original(*args, **kwargs)

    mlp.local_sums = failing
    cases = {
        "step": dict(batch_size=50, max_iter=2),
        "warm_start": dict(warm_start=True),
        "tiny_split": dict(early_stopping=True, validation_fraction=0.05),
        # averaged: rank 1's own validation split of its 8 rows is too small
        "tiny_local_split": dict(early_stopping=True, strategy="average", max_iter=2),
    }
    try:
        for name, params in cases.items():
            rows = slice(None)
            if name == "tiny_split" or (
                name == "tiny_local_split" and comm.Get_rank() == 1
            ):
                rows = slice(0, 8)
            model = Ours(HIDDEN, random_state=0, comm=comm, **params)
            try:
                model.fit(X[sl][rows], y[sl][rows])
                out[name] = None
            except Exception as exc:  # the same type and text on every rank
                out[name] = (type(exc).__name__, str(exc))
    finally:
        mlp.local_sums = original
    return out


@pytest.mark.mpi(ranks=[2])
def test_errors_are_raised_on_every_rank(mpi_ranks):
    X, y, _, _ = _digits()
    results = run_function(_errors_body, mpi_ranks, X, y)
    assert results[0] == results[1]
    step = results[0]["step"]
    assert step is not None and "computing a minibatch's gradient failed" in step[1]
    assert "rank 1" in step[1] and "no memory for this minibatch" in step[1]
    assert "warm_start" in results[0]["warm_start"][1]
    assert "validation set is too small" in results[0]["tiny_split"][1]
    local_split = results[0]["tiny_local_split"][1]
    assert "preparing training on this rank's rows failed on rank 1" in local_split
    assert "validation set is too small" in local_split
