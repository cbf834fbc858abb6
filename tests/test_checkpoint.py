"""Checkpoint → interrupt → resume equals an uninterrupted run.

For each kind of iterative work: the exact classifiers' L-BFGS-B
iterations, SGD averaging rounds, cascade SVM passes (estimator API, a real
SIGUSR1/SIGTERM sent to one rank's own process just before a checkpoint
step), and the streamed statistics of exact ridge (command line, a real
``kill -9`` of the whole job after a periodic checkpoint; and a logistic
fit stopped by SIGTERM sent to one rank's process from outside, exit
status 75).

What "equal" means.  The resumed model is compared with ``np.array_equal``
(bit for bit) with the uninterrupted one: the saved states are complete
(scipy's L-BFGS-B arrays, every rank's SGD model, the cascade's support
vectors and rows to send, every rank's partial sums at fixed block
boundaries).  Exact models are also compared with scikit-learn on all
rows, at the tolerances of their own test files.  The L-BFGS-B fallback for
old scipy (restart from the saved iterate, memory lost) is only equal within
the solver's tolerance: checked with ``rtol=1e-4`` of the largest
coefficient (measured: 2e-7 for LogisticRegression, 5e-8 for LinearSVC).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from cli_in_job import cli_in_job
from conftest import write_h5
from sklearn import linear_model, svm
from sklearn.datasets import make_classification, make_regression

from mpitrain.data import row_range
from mpitrain.model_io import load_model
from mpitrain.testing import find_mpiexec, mpirun, run_function

TIMEOUT = 90


# ----------------------------------------------------------------------------
# Helpers run in the rank processes


def _my_rows(n: int, comm, empty_last: bool) -> tuple[int, int]:
    """This rank's rows; with ``empty_last`` the last rank (of several) gets none."""
    size, rank = comm.Get_size(), comm.Get_rank()
    if empty_last and size > 1:
        return (n, n) if rank == size - 1 else row_range(n, size - 1, rank)
    return row_range(n, size, rank)


@contextmanager
def _signal_before_step(at: int, rank: int, signum: int, loop: str | None = None):
    """Send ``signum`` to this very process on ``rank`` just before checkpoint step ``at``.

    A real signal through the real handler: the step must notice it and
    agree on it with the ranks that did not get it.  ``loop`` names the
    kind of loop whose step it is (e.g. ``"cascade"``, not its layers).
    """
    from mpitrain.checkpoint import CheckpointLoop

    original = CheckpointLoop.step

    def step(self, state=None, iteration=None):
        upcoming = self.iteration + 1 if iteration is None else iteration
        named = loop is None or self.id.split(":")[0] == loop
        if upcoming == at and named and self.comm.Get_rank() == rank:
            os.kill(os.getpid(), signum)
        return original(self, state, iteration)

    CheckpointLoop.step = step
    try:
        yield
    finally:
        CheckpointLoop.step = original


def _interrupt_and_resume(
    comm,
    path: str,
    make,
    X,
    y,
    *,
    every: int,
    at: int,
    rank: int,
    signum: int,
    loop: str | None = None,
):
    """Fit uninterrupted (checkpointing), then interrupted by a signal at step ``at``, then resumed."""
    from mpitrain.checkpoint import CheckpointInterrupted, checkpointing

    with checkpointing(path, every=every, comm=comm) as ck:
        plain = make().fit(X, y)
    out = {
        "plain": plain,
        "saves": ck.saves,
        "removed_after_success": not os.path.exists(path),
    }
    try:
        with (
            _signal_before_step(at, rank, signum, loop),
            checkpointing(path, every=every, comm=comm),
        ):
            make().fit(X, y)
        out["stopped"] = None
    except CheckpointInterrupted as exc:
        out["stopped"] = (str(exc), exc.iteration, exc.signal_name)
    out["kept_after_interrupt"] = os.path.exists(path)
    with checkpointing(path, every=every, resume=True, comm=comm) as ck:
        out["resumed"] = make().fit(X, y)
    out["resumed_flag"] = ck.resumed
    return out


def _classes_problem(n=300, classes=3, seed=0):
    X, y = make_classification(
        n_samples=n,
        n_features=6,
        n_informative=4,
        n_redundant=0,
        n_classes=classes,
        n_clusters_per_class=1,
        flip_y=0.05,
        random_state=seed,
    )
    return X, y


def _lbfgs_part(comm, folder, empty_last):
    import mpitrain.checkpoint as ck
    import mpitrain.optimize as mo
    from mpitrain.linear_model import LinearSVC, LogisticRegression

    X, y = _classes_problem()
    a, b = _my_rows(len(X), comm, empty_last)
    size = comm.Get_size()
    makers = {
        "logistic": lambda C=10.0: LogisticRegression(
            C=C, tol=1e-10, max_iter=500, comm=comm
        ),
        "linear-svc": lambda: LinearSVC(C=1.0, tol=1e-8, max_iter=2000, comm=comm),
    }
    out = {}
    for name, make in makers.items():
        path = os.path.join(folder, f"{name}.ckpt")
        ref = make().fit(X[a:b], y[a:b])  # no context: scipy's own minimiser, as always
        runs = _interrupt_and_resume(
            comm,
            path,
            make,
            X[a:b],
            y[a:b],
            every=3,
            at=5,
            rank=size - 1,
            signum=signal.SIGUSR1,
        )
        out[name] = {
            "ref": ref.estimator_,
            **{
                k: v.estimator_ if hasattr(v, "estimator_") else v
                for k, v in runs.items()
            },
        }
    path = os.path.join(folder, "other.ckpt")
    try:
        with (
            _signal_before_step(4, 0, signal.SIGUSR1),
            ck.checkpointing(path, comm=comm),
        ):
            makers["logistic"]().fit(X[a:b], y[a:b])
    except ck.CheckpointInterrupted:
        pass
    # An existing checkpoint without resume, and a saved state of another problem
    # (another C), are refused on every rank; the file is kept.
    refusals = []
    for resume, C in ((False, 10.0), (True, 1.0)):
        try:
            with ck.checkpointing(path, resume=resume, comm=comm):
                makers["logistic"](C=C).fit(X[a:b], y[a:b])
            refusals.append(None)
        except ck.CheckpointError as exc:
            refusals.append(str(exc))
    out["refusals"] = refusals
    out["other_kept"] = os.path.exists(path)
    # scipy older than 1.15: restart from the saved iterate (within tolerance only).
    exact, mo.EXACT_LBFGSB = mo.EXACT_LBFGSB, False
    try:
        with ck.checkpointing(path, resume=True, comm=comm):
            out["restart"] = makers["logistic"]().fit(X[a:b], y[a:b]).estimator_
    finally:
        mo.EXACT_LBFGSB = exact
    return out


def _sgd_part(comm, folder, empty_last):
    from mpitrain.linear_model import SGDClassifier, SGDRegressor

    Xc, yc = _classes_problem(seed=1)
    Xr, yr = make_regression(n_samples=300, n_features=5, noise=3.0, random_state=2)
    yr = yr / yr.std()
    a, b = _my_rows(300, comm, empty_last)
    makers = {
        "classifier": (
            lambda: SGDClassifier(random_state=0, rounds=6, comm=comm),
            Xc,
            yc,
        ),
        "regressor": (
            lambda: SGDRegressor(
                random_state=3, rounds=6, average=True, eta0=0.005, comm=comm
            ),
            Xr,
            yr,
        ),
    }
    out = {}
    for name, (make, X, y) in makers.items():
        ref = make().fit(X[a:b], y[a:b])
        runs = _interrupt_and_resume(
            comm,
            os.path.join(folder, f"{name}.ckpt"),
            make,
            X[a:b],
            y[a:b],
            every=2,
            at=3,
            rank=0,
            signum=signal.SIGTERM,
        )
        out[name] = {
            "ref": ref.estimator_,
            **{
                k: v.estimator_ if hasattr(v, "estimator_") else v
                for k, v in runs.items()
            },
        }
    return out


def _svc_problem():
    X, y = make_classification(
        n_samples=400,
        n_features=5,
        n_informative=3,
        n_redundant=0,
        n_classes=3,
        n_clusters_per_class=1,
        flip_y=0.1,
        random_state=0,
    )
    return X, y


def _svc(comm):
    from mpitrain.svm import SVC

    # Four passes on these rows (three feedback passes), at 2 and 3 ranks.
    return SVC(
        kernel="rbf", C=50.0, tol=1e-5, max_passes=30, feedback_margin=0.0, comm=comm
    )


def _cascade_part(comm, folder, empty_last):
    from mpitrain.checkpoint import CheckpointInterrupted, checkpointing

    X, y = _svc_problem()
    a, b = _my_rows(len(X), comm, empty_last)
    ref = _svc(comm).fit(X[a:b], y[a:b])
    runs = _interrupt_and_resume(
        comm,
        os.path.join(folder, "svc.ckpt"),
        lambda: _svc(comm),
        X[a:b],
        y[a:b],
        every=1,
        at=2,
        rank=1,
        signum=signal.SIGUSR1,
        loop="cascade",
    )
    out = {
        "ref": (ref.estimator_, ref.cascade_),
        **{
            k: (v.estimator_, v.cascade_) if hasattr(v, "estimator_") else v
            for k, v in runs.items()
        },
    }
    # Stopped after pass 2 and left for a resume on another number of ranks.
    a, b = row_range(len(X), comm.Get_size(), comm.Get_rank())
    try:
        with (
            _signal_before_step(2, 0, signal.SIGUSR1, "cascade"),
            checkpointing(os.path.join(folder, "moved", "svc.ckpt"), comm=comm),
        ):
            _svc(comm).fit(X[a:b], y[a:b])
    except CheckpointInterrupted as exc:
        out["left_at"] = exc.iteration
    return out


def estimators_body(comm, folder, empty_last):
    """Every estimator-level case in one job (one launch per rank count)."""
    if comm.Get_rank() == 0:
        os.makedirs(os.path.join(folder, "moved"))
    comm.Barrier()
    out = {
        "lbfgs": _lbfgs_part(comm, folder, empty_last),
        "sgd": _sgd_part(comm, folder, empty_last),
        "cascade": _cascade_part(comm, folder, empty_last),
    }
    comm.Barrier()  # rank 0 removes the files of successful runs
    out["leftovers"] = sorted(os.listdir(folder))
    return out


_RUNS: dict[int, tuple[list, Path]] = {}


def _estimator_runs(ranks: int, tmp_path_factory) -> tuple[list, Path]:
    """Per-rank results of :func:`estimators_body` at ``ranks`` (the last one empty at 3), run once."""
    if ranks not in _RUNS:
        folder = tmp_path_factory.mktemp(f"estimators{ranks}")
        _RUNS[ranks] = (
            run_function(
                estimators_body, ranks, str(folder), ranks == 3, timeout=TIMEOUT
            ),
            folder,
        )
    return _RUNS[ranks]


@pytest.mark.mpi(ranks=[2, 3])
def test_lbfgs_resumes_bit_for_bit(tmp_path_factory, mpi_ranks):
    out, _ = _estimator_runs(mpi_ranks, tmp_path_factory)
    X, y = _classes_problem()
    sklearn_models = {
        "logistic": linear_model.LogisticRegression(
            C=10.0, tol=1e-10, max_iter=500
        ).fit(X, y),
        "linear-svc": svm.LinearSVC(C=1.0, tol=1e-8, max_iter=100_000).fit(X, y),
    }
    for rank_out in out:
        lbfgs = rank_out["lbfgs"]
        for name, sk in sklearn_models.items():
            got = lbfgs[name]
            assert got["stopped"] is not None, name
            message, iteration, signal_name = got["stopped"]
            assert (iteration, signal_name) == (5, "SIGUSR1")
            assert (
                f"received by rank {mpi_ranks - 1}" in message and "--resume" in message
            )
            assert (
                got["kept_after_interrupt"]
                and got["resumed_flag"]
                and got["saves"] >= 1
            )
            # Rank 0 removes the file on success (the others may look before it did).
            assert got["removed_after_success"] or rank_out is not out[0]
            for run in ("plain", "resumed"):
                # Bit for bit: the same iterates as scipy's own minimiser without checkpoints.
                assert np.array_equal(got[run].coef_, got["ref"].coef_), (name, run)
                assert np.array_equal(got[run].intercept_, got["ref"].intercept_), (
                    name,
                    run,
                )
                assert np.array_equal(got[run].n_iter_, got["ref"].n_iter_), (name, run)
            scale = np.abs(sk.coef_).max()
            np.testing.assert_allclose(
                got["resumed"].coef_, sk.coef_, atol=1e-4 * scale, err_msg=name
            )
            np.testing.assert_allclose(
                got["resumed"].intercept_,
                sk.intercept_,
                atol=1e-4 * scale,
                err_msg=name,
            )
        exists, other = lbfgs["refusals"]
        assert "exists: pass --resume (resume=True)" in exists
        assert (
            "another LogisticRegression L-BFGS problem" in other and "params" in other
        )
        assert lbfgs["other_kept"]
        ref = lbfgs["logistic"]["ref"]
        np.testing.assert_allclose(
            lbfgs["restart"].coef_,
            ref.coef_,
            rtol=0,
            atol=1e-4 * np.abs(ref.coef_).max(),
        )
    assert all(o["lbfgs"]["refusals"] == out[0]["lbfgs"]["refusals"] for o in out)
    # Rank 0 writes and removes: every checkpoint gone after its successful resume, no temporary file.
    assert out[0]["leftovers"] == ["moved"]


@pytest.mark.mpi(ranks=[2, 3])
def test_sgd_rounds_resume_bit_for_bit(tmp_path_factory, mpi_ranks):
    out, _ = _estimator_runs(mpi_ranks, tmp_path_factory)
    for rank_out in out:
        for name in ("classifier", "regressor"):
            got = rank_out["sgd"][name]
            assert got["stopped"] is not None and got["stopped"][1:] == (
                3,
                "SIGTERM",
            ), name
            assert "SGD averaging at round 3" in got["stopped"][0]
            assert got["resumed_flag"] and got["kept_after_interrupt"]
            for run in ("plain", "resumed"):
                for attr in ("coef_", "intercept_", "t_", "n_iter_"):
                    assert np.array_equal(
                        getattr(got[run], attr), getattr(got["ref"], attr)
                    ), (name, run, attr)
    # The averaged model is the same on every rank.
    first = out[0]["sgd"]["classifier"]["resumed"].coef_
    assert all(
        np.array_equal(o["sgd"]["classifier"]["resumed"].coef_, first) for o in out
    )


@pytest.mark.mpi(ranks=[2, 3])
def test_cascade_passes_resume_bit_for_bit(tmp_path_factory, mpi_ranks):
    out, _ = _estimator_runs(mpi_ranks, tmp_path_factory)
    X, y = _svc_problem()
    sk = svm.SVC(kernel="rbf", C=50.0, tol=1e-5).fit(X, y)
    for rank_out in out:
        got = rank_out["cascade"]
        ref, report = got["ref"]
        assert report["passes"] >= 3 and report["converged"], report
        assert got["stopped"] is not None and got["stopped"][1:] == (2, "SIGUSR1")
        assert got["resumed_flag"] and got["kept_after_interrupt"]
        assert got["removed_after_success"] or rank_out is not out[0]
        for run in ("plain", "resumed"):
            model, run_report = got[run]
            for attr in (
                "support_vectors_",
                "dual_coef_",
                "intercept_",
                "support_",
                "n_support_",
            ):
                assert np.array_equal(getattr(model, attr), getattr(ref, attr)), (
                    run,
                    attr,
                )
            if rank_out is out[0]:
                assert run_report == report, run
            else:
                # svm.py's feedback pass counts its refit's support vectors on rank 0
                # only (others record 0); a resumed run has rank 0's report everywhere.
                drop = "support_vectors_per_layer"
                assert {**run_report, drop: None} == {**report, drop: None}, run
        scale = np.abs(sk.decision_function(X)).max()
        np.testing.assert_allclose(
            got["resumed"][0].decision_function(X),
            sk.decision_function(X),
            atol=1e-3 * scale,
        )
        assert got["left_at"] == 2


def cascade_resume_body(comm, path):
    from mpitrain.checkpoint import checkpointing

    X, y = _svc_problem()
    a, b = row_range(len(X), comm.Get_size(), comm.Get_rank())
    with checkpointing(path, resume=True, comm=comm):
        model = _svc(comm).fit(X[a:b], y[a:b])
    return model.estimator_, model.cascade_


def test_cascade_resumes_on_another_number_of_ranks(tmp_path_factory):
    _, folder = _estimator_runs(3, tmp_path_factory)
    path = str(folder / "moved" / "svc.ckpt")
    assert os.path.exists(path)  # left by 3 ranks after pass 2
    model, report = run_function(cascade_resume_body, 2, path, timeout=TIMEOUT)[0]
    X, y = _svc_problem()
    sk = svm.SVC(kernel="rbf", C=50.0, tol=1e-5).fit(X, y)
    assert (
        report["converged"]
        and report["passes"] >= 3
        and len(report["violators"]) == report["passes"]
    )
    scale = np.abs(sk.decision_function(X)).max()
    np.testing.assert_allclose(
        model.decision_function(X), sk.decision_function(X), atol=1e-3 * scale
    )
    assert not os.path.exists(path)


# ----------------------------------------------------------------------------
# The command line


# Runs mpitrain's command with small read blocks (many checkpoint boundaries on
# small files) and, optionally, a pause after each checkpoint step, so a test
# can kill or signal the job in the middle.
_SLOW_CLI = """
import os, sys, time
import mpitrain.data as data
from mpitrain.checkpoint import CheckpointLoop

_open_rows = data.open_rows
data.open_rows = lambda *a, **k: _open_rows(*a, block_bytes=int(os.environ["T_BLOCK_BYTES"]), **k)
_delay = float(os.environ.get("T_STEP_DELAY", "0"))
_step = CheckpointLoop.step


def step(self, *args, **kwargs):
    result = _step(self, *args, **kwargs)
    time.sleep(_delay)
    return result


CheckpointLoop.step = step
from mpitrain.cli import main

sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture
def slow_cli(tmp_path):
    script = tmp_path / "slow_cli.py"
    script.write_text(_SLOW_CLI)
    return [sys.executable, str(script)]


def _cli_with_blocks(comm, argv, env, block_bytes):
    """The command in the shared job, reading blocks of ``block_bytes`` as
    ``slow_cli`` does (tests/cli_in_job.py).  The runs a test stops from
    outside and the resumes stay real launches."""
    from cli_in_job import run_main

    import mpitrain.data as data

    open_rows = data.open_rows
    data.open_rows = lambda *a, **k: open_rows(*a, block_bytes=block_bytes, **k)
    try:
        return run_main(argv, env)
    finally:
        data.open_rows = open_rows


def _in_job(ranks, argv, env):
    return cli_in_job(
        ranks,
        argv,
        timeout=TIMEOUT,
        body=_cli_with_blocks,
        body_args=(int(env["T_BLOCK_BYTES"]),),
    )


def _job_pids(root: int) -> list[int]:
    """``root`` and all its descendants (mpiexec, hydra's proxy, the ranks)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(
                int(entry)
            )
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def _rank_pids(root: int, script: str) -> list[int]:
    return [
        pid
        for pid in _job_pids(root)[1:]
        if script in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    ]


def _start(ranks: int, argv: list[str], env: dict) -> subprocess.Popen:
    from mpitrain.testing import _QUIET_THREADS

    return subprocess.Popen(
        [*find_mpiexec(), "-n", str(ranks), *argv],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **_QUIET_THREADS, **env},
        start_new_session=True,
    )


def _wait_for(
    condition, proc: subprocess.Popen, what: str, timeout: float = 60.0
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(
                f"the job ended before {what}: {proc.returncode}\n{proc.communicate()[1]}"
            )
        if time.monotonic() > deadline:
            for pid in _job_pids(proc.pid):
                os.kill(pid, signal.SIGKILL)
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _load_checkpoint(path: Path) -> dict:
    from mpitrain.checkpoint import read_checkpoint

    content = read_checkpoint(path)
    assert content["format"] == "mpitrain-checkpoint"
    return content


@pytest.fixture(scope="module")
def ridge_data(tmp_path_factory):
    X, y = make_regression(n_samples=3001, n_features=5, noise=2.0, random_state=4)
    X += 50.0  # a large mean: the shifted sums must carry over a resume exactly
    return write_h5(tmp_path_factory.mktemp("ridge") / "d.h5", X, y), X, y


@pytest.mark.slow
def test_streamed_ridge_survives_kill_9(tmp_path, ridge_data, slow_cli):
    path, X, y = ridge_data
    ckpt = tmp_path / "stats.ckpt"
    # About 100 rows per block: some 15 blocks per rank.
    env = {"T_BLOCK_BYTES": str(100 * 5 * 8)}
    common = [
        "train",
        path,
        "--model",
        "ridge",
        "--alpha",
        "0.5",
        "--checkpoint",
        str(ckpt),
        "--checkpoint-every",
        "2",
    ]

    uninterrupted = _in_job(2, [*common, "--out", tmp_path / "a.skops"], env)
    assert uninterrupted.returncode == 0, uninterrupted.stderr
    assert "checkpoint: streamed statistics block 2 saved" in uninterrupted.stderr
    assert not ckpt.exists()  # removed after success

    job = _start(
        2,
        [*slow_cli, *common, "--out", str(tmp_path / "killed.skops")],
        {**env, "T_STEP_DELAY": "0.3"},
    )
    # Kill -9 every process of the job once a periodic checkpoint has been replaced by a later one.
    _wait_for(
        lambda: (
            ckpt.exists()
            and _load_checkpoint(ckpt)["loops"]["statistics:0"]["iteration"] >= 4
        ),
        job,
        "the second checkpoint",
    )
    for pid in _job_pids(job.pid):
        os.kill(pid, signal.SIGKILL)
    job.wait()
    content = _load_checkpoint(
        ckpt
    )  # complete: written to a temporary file, then renamed
    saved = content["loops"]["statistics:0"]
    assert saved["ranks"] == 2 and saved["iteration"] >= 4
    assert not (tmp_path / "killed.skops").exists()

    # The per-rank statistics need the same number of ranks: refused on every rank, no hang.
    other = _in_job(3, [*common, "--resume", "--out", tmp_path / "b.skops"], env)
    assert other.returncode == 1 and not other.timed_out
    assert "it can only be resumed on 2 ranks, not 3" in other.stderr
    assert other.stderr.count("mpitrain: error") == 1
    assert (
        _load_checkpoint(ckpt)["loops"]["statistics:0"]["iteration"]
        == saved["iteration"]
    )

    # A temporary file left by a job killed while writing is never a checkpoint: removed.
    stale = tmp_path / ".stats.ckpt.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    resumed = mpirun(
        2,
        [*slow_cli, *common, "--resume", "--out", str(tmp_path / "c.skops")],
        env=env,
        timeout=TIMEOUT,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert (
        f"resuming streamed statistics after block {saved['iteration']}"
        in resumed.stderr
    )
    assert not stale.exists() and not ckpt.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []

    a, c = load_model(tmp_path / "a.skops"), load_model(tmp_path / "c.skops")
    assert (
        np.array_equal(a.coef_, c.coef_) and a.intercept_ == c.intercept_
    )  # bit for bit
    ref = linear_model.Ridge(alpha=0.5).fit(X, y)
    np.testing.assert_allclose(c.coef_, ref.coef_, rtol=1e-8)
    np.testing.assert_allclose(c.intercept_, ref.intercept_, rtol=1e-8)


@pytest.fixture(scope="module")
def labels_data(tmp_path_factory):
    X, y = _classes_problem(n=600, seed=5)
    return write_h5(tmp_path_factory.mktemp("labels") / "d.h5", X, y), X, y


@pytest.mark.slow
def test_sigterm_to_one_rank_checkpoints_and_exits_75(tmp_path, labels_data, slow_cli):
    path, X, y = labels_data
    ckpt = tmp_path / "logistic.ckpt"
    env = {"T_BLOCK_BYTES": str(32 << 20)}
    common = [
        "train",
        path,
        "--model",
        "logistic",
        "--C",
        "10",
        "--param",
        "tol=1e-10",
        "--param",
        "max_iter=500",
        "--checkpoint",
        str(ckpt),
        "--checkpoint-every",
        "2",
    ]

    plain = _in_job(2, [*common, "--out", tmp_path / "a.skops"], env)
    assert plain.returncode == 0, plain.stderr

    job = _start(
        2,
        [*slow_cli, *common, "--out", str(tmp_path / "b.skops")],
        {**env, "T_STEP_DELAY": "0.25"},
    )
    _wait_for(ckpt.exists, job, "the first checkpoint")
    ranks = _rank_pids(job.pid, slow_cli[1])
    assert len(ranks) == 2
    os.kill(
        ranks[-1], signal.SIGTERM
    )  # one rank only, as `srun --signal` without B: may reach one task first
    try:
        stdout, stderr = job.communicate(timeout=TIMEOUT)
    finally:
        if job.poll() is None:
            for pid in _job_pids(job.pid):
                os.kill(pid, signal.SIGKILL)
    assert job.returncode == 75, stderr
    assert stderr.count("mpitrain: error: stopped by SIGTERM (received by rank") == 1, (
        stderr
    )
    assert "rerun with --resume" in stderr
    assert ckpt.exists() and not (tmp_path / "b.skops").exists()
    iteration = _load_checkpoint(ckpt)["loops"]["lbfgs:0"]["iteration"]

    # Another run's parameters are refused, on every rank, without a hang.
    other = _in_job(
        2, [*common, "--C", "1", "--resume", "--out", tmp_path / "c.skops"], env
    )
    assert (
        other.returncode == 1
        and "belongs to a different run (C: checkpoint 10.0, now 1.0)" in other.stderr
    )
    assert other.stderr.count("mpitrain: error") == 1

    resumed = mpirun(
        2,
        [*slow_cli, *common, "--resume", "--out", str(tmp_path / "c.skops")],
        env=env,
        timeout=TIMEOUT,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert (
        f"resuming LogisticRegression L-BFGS after iteration {iteration}"
        in resumed.stderr
    )
    assert not ckpt.exists()
    a, c = load_model(tmp_path / "a.skops"), load_model(tmp_path / "c.skops")
    assert np.array_equal(a.coef_, c.coef_) and np.array_equal(
        a.intercept_, c.intercept_
    )
    assert np.array_equal(a.n_iter_, c.n_iter_)
    ref = linear_model.LogisticRegression(C=10.0, tol=1e-10, max_iter=500).fit(X, y)
    np.testing.assert_allclose(c.coef_, ref.coef_, atol=1e-4 * np.abs(ref.coef_).max())


def test_checkpoint_options_need_a_path():
    from mpitrain.errors import UsageError
    from mpitrain.workflow import TrainOptions

    with pytest.raises(UsageError, match="--resume needs --checkpoint PATH"):
        TrainOptions(data="d.h5", model="ridge", out="m.skops", resume=True)


def test_lbfgsb_driver_is_scipys_minimiser():
    """Pure (no MPI): the resumable driver takes scipy's iterates, and resumes exactly."""
    from scipy import optimize

    import mpitrain.optimize as ck
    from mpitrain.linear_model import multinomial_loss_gradient

    X, y = _classes_problem(n=200)
    w = np.ones(len(y))

    def objective(x):
        loss, grad = multinomial_loss_gradient(
            x.reshape((3, 7), order="F"), X, y, w, True
        )
        return loss / len(y) + 5e-3 * x @ x, grad.ravel(order="F") / len(y) + 1e-2 * x

    options = {
        "gtol": 1e-10,
        "ftol": 64 * np.finfo(float).eps,
        "maxiter": 300,
        "maxls": 50,
    }
    want = optimize.minimize(
        objective, np.zeros(21), method="L-BFGS-B", jac=True, options=options
    )
    got = ck.lbfgsb(objective, np.zeros(21), **options)
    assert ck.EXACT_LBFGSB
    assert np.array_equal(got.x, want.x) and (got.nit, got.nfev, got.status) == (
        want.nit,
        want.nfev,
        want.status,
    )
    assert got.message == want.message and got.fun == want.fun

    from mpitrain.checkpoint import _freeze, _thaw

    states = []

    class Stop(Exception):
        pass

    def stop_at_7(state):
        states.append(None)
        if len(states) == 7:
            states[-1] = _thaw(_freeze(state()))  # as through the file
            raise Stop

    with pytest.raises(Stop):
        ck.lbfgsb(objective, np.zeros(21), iteration_done=stop_at_7, **options)
    resumed = ck.lbfgsb(objective, np.zeros(21), resume=states[-1], **options)
    assert np.array_equal(resumed.x, want.x) and (resumed.nit, resumed.nfev) == (
        want.nit,
        want.nfev,
    )


def _streamed_resume_with_a_root_share(comm, path, folder):
    """Train streamed ridge at root share 0.5 with checkpoints: whole, stopped by
    SIGUSR1 on rank 1 at step 3, refused at another share, then resumed."""
    from cli_in_job import run_main

    import mpitrain.data as data
    from mpitrain.checkpoint import CheckpointLoop

    ckpt = os.path.join(folder, "s.ckpt")
    common = ["train", path, "--model", "ridge", "--alpha", "0.5"]
    common += ["--checkpoint", ckpt, "--checkpoint-every", "2"]
    open_rows, step = data.open_rows, CheckpointLoop.step

    def signalled_step(self, state=None, iteration=None):
        if self.iteration + 1 == 3 and comm.Get_rank() == 1:
            os.kill(os.getpid(), signal.SIGUSR1)
        return step(self, state, iteration)

    def run(name, *extra):
        out = [f"--out={folder}/{name}.skops", f"--report={folder}/{name}.json"]
        return run_main([*common, *extra, *out])

    # About 100 rows per block: rank 0 has 11 blocks, rank 1 20.
    data.open_rows = lambda *a, **k: open_rows(*a, block_bytes=100 * 5 * 8, **k)
    outcome = {}
    try:
        outcome["whole"] = run("whole", "--root-share", "0.5")
        CheckpointLoop.step = signalled_step
        try:
            outcome["stopped"] = run("stopped", "--root-share", "0.5")
        finally:
            CheckpointLoop.step = step
        outcome["kept"] = os.path.exists(ckpt)
        outcome["other share"] = run("other", "--root-share", "0.75", "--resume")
        outcome["resumed"] = run("resumed", "--root-share", "0.5", "--resume")
    finally:
        data.open_rows = open_rows
        CheckpointLoop.step = step
    return outcome


def test_streamed_statistics_resume_at_a_root_share(tmp_path, ridge_data):
    import json

    path, X, y = ridge_data
    outcome = run_function(
        _streamed_resume_with_a_root_share, 2, path, str(tmp_path), timeout=TIMEOUT
    )[0]  # the exit statuses are the same on every rank (cli_in_job checks it)
    assert outcome["whole"][0] == 0, outcome["whole"][2]
    assert outcome["stopped"][0] == 75 and outcome["kept"], outcome["stopped"][2]
    status, _, stderr = outcome["other share"]
    assert status == 1 and "root_share: checkpoint 0.5, now 0.75" in stderr, stderr
    status, _, stderr = outcome["resumed"]
    assert status == 0 and "resuming streamed statistics after block" in stderr
    assert not (tmp_path / "s.ckpt").exists()
    whole = load_model(tmp_path / "whole.skops")
    resumed = load_model(tmp_path / "resumed.skops")
    assert np.array_equal(whole.coef_, resumed.coef_)  # bit for bit
    assert whole.intercept_ == resumed.intercept_
    ref = linear_model.Ridge(alpha=0.5).fit(X, y)
    np.testing.assert_allclose(resumed.coef_, ref.coef_, rtol=1e-8)
    np.testing.assert_allclose(resumed.intercept_, ref.intercept_, rtol=1e-8)
    report = json.loads((tmp_path / "resumed.json").read_text())
    ranges = [r["row_range"] for r in report["per_rank"]]
    assert ranges == [list(row_range(3001, 2, r, 0.5)) for r in range(2)]
    assert ranges[0][1] - ranges[0][0] < ranges[1][1] - ranges[1][0]
