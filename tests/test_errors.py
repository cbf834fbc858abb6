"""Bad input: one clear message, printed once, a non-zero exit on every rank, and no hang."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
from cli_in_job import cli_in_job
from conftest import regression_problem, write_h5

from mpitrain.testing import mpirun, run_function


def _train(tmp_path, data, *extra, ranks=2, cli=None):
    """The real command when ``cli`` is given, else the same entry point in the shared job."""
    argv = ["train", str(data), "--out", str(tmp_path / "m.skops"), *extra]
    if cli is None:
        return cli_in_job(ranks, argv, timeout=90)
    return mpirun(ranks, [*cli, *argv], timeout=90)


def _assert_clean_failure(run, message, status=1):
    assert not run.timed_out, f"hung: {run.command_line}"
    assert run.returncode == status, (run.returncode, run.stderr)
    assert "Traceback" not in run.stderr, run.stderr
    errors = [
        line for line in run.stderr.splitlines() if line.startswith("mpitrain: error")
    ]
    assert len(errors) == 1, f"expected the error once, got:\n{run.stderr}"
    assert message in errors[0], errors[0]


@pytest.fixture
def good_data(tmp_path):
    return write_h5(tmp_path / "good.h5", *regression_problem(n=20, d=3))


def _nan_on_last_rank(tmp_path):
    X, y = regression_problem(n=20, d=3)
    X[-1, 1] = np.nan
    return write_h5(tmp_path / "nan.h5", X, y)


BAD_INPUTS = {
    "missing file": (lambda p: str(p / "nope.h5"), [], "no such file"),
    "not HDF5": (
        lambda p: (p / "t.h5").write_text("hello") and str(p / "t.h5"),
        [],
        "cannot open",
    ),
    "missing dataset": (
        lambda p: write_h5(p / "d.h5", *regression_problem(n=5, d=2)),
        ["--x", "Z"],
        "has no dataset 'Z'; it has: X, y",
    ),
    "1-D features": (
        lambda p: write_h5(p / "d.h5", np.ones(5), np.ones(5)),
        [],
        "must be 2-D",
    ),
    "2-D target": (
        lambda p: write_h5(p / "d.h5", np.ones((5, 2)), np.ones((5, 2))),
        [],
        "must be 1-D",
    ),
    "length mismatch": (
        lambda p: write_h5(p / "d.h5", np.ones((5, 2)), np.ones(4)),
        [],
        "has 4 rows but the features have 5",
    ),
    "non-numeric": (
        lambda p: write_h5(p / "d.h5", np.array([[b"a"], [b"b"]]), np.ones(2)),
        [],
        "non-numeric dtype",
    ),
    "NaN on one rank": (
        _nan_on_last_rank,
        [],
        "failed on rank 1 (of 2): Input X contains NaN",
    ),
    "negative weights": (
        lambda p: write_h5(p / "d.h5", np.ones((4, 2)), np.ones(4), w=[1, 1, 1, -1.0]),
        ["--sample-weight", "w"],
        "must be finite and non-negative",
    ),
    "unknown param": (
        lambda p: write_h5(p / "d.h5", *regression_problem(n=5, d=2)),
        ["--param", "alhpa=3"],
        "Ridge has no parameter 'alhpa'",
    ),
    "ill-typed param": (
        lambda p: write_h5(p / "d.h5", *regression_problem(n=5, d=2)),
        ["--param", "alpha='big'"],
        "The 'alpha' parameter of Ridge must be",
    ),
    "out of range param": (
        lambda p: write_h5(p / "d.h5", *regression_problem(n=5, d=2)),
        ["--alpha", "-1"],
        "The 'alpha' parameter of Ridge must be",
    ),
}


# Launched as the real command (exit status, one message through mpiexec, no
# file): an error known from metadata; one found on one rank's rows is the
# real launch of test_failed_training_keeps_the_old_model.  The others take
# the same path in the shared job (tests/cli_in_job.py).
REAL_COMMAND = {"missing file"}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_fails_cleanly_on_all_ranks(tmp_path, case, mpitrain_cli):
    make, extra, message = BAD_INPUTS[case]
    data = make(tmp_path)
    cli = mpitrain_cli if case in REAL_COMMAND else None
    run = _train(tmp_path, data, "--model", "ridge", *extra, cli=cli)
    _assert_clean_failure(run, message)
    assert not (tmp_path / "m.skops").exists()


def test_error_found_on_several_ranks_names_them(tmp_path):
    X, y = regression_problem(n=12, d=2)
    X[0, 0] = np.inf  # rank 0
    X[9, 1] = np.nan  # rank 3 of 4 (rows 9-11)
    run = _train(
        tmp_path,
        write_h5(tmp_path / "d.h5", X, y),
        "--model",
        "linear",
        # Equal shares, so that rank 0 reads rows 0-2 (by default it reads none of so few).
        "--root-share",
        "1",
        ranks=4,
    )
    _assert_clean_failure(run, "failed on ranks 0,3 (of 4)")


def test_unwritable_output_is_agreed(tmp_path, good_data):
    run = cli_in_job(
        3,
        ["train", good_data, "--model", "linear", "--out", tmp_path / "no" / "m.skops"],
        timeout=90,
    )
    _assert_clean_failure(run, "does not exist")


def test_failed_training_keeps_the_old_model(tmp_path, good_data, mpitrain_cli):
    out = tmp_path / "m.skops"
    # The old model from the shared job; the failing run is the real command.
    assert _train(tmp_path, good_data, "--model", "linear").returncode == 0
    before = out.read_bytes()
    run = _train(
        tmp_path, _nan_on_last_rank(tmp_path), "--model", "linear", cli=mpitrain_cli
    )
    _assert_clean_failure(run, "failed on rank 1 (of 2): Input X contains NaN")
    assert out.read_bytes() == before


def test_usage_errors_print_once(tmp_path, good_data, mpitrain_cli):
    run = _train(tmp_path, good_data, "--model", "svm", cli=mpitrain_cli)
    assert run.returncode == 2 and not run.timed_out
    assert run.stderr.count("invalid choice: 'svm'") == 1
    run = _train(tmp_path, good_data, "--model", "linear", "--alpha", "2")
    _assert_clean_failure(run, "--alpha does not apply to --model linear")


def test_debug_shows_the_traceback(tmp_path, mpitrain_cli):
    run = _train(
        tmp_path, tmp_path / "nope.h5", "--model", "linear", "--debug", cli=mpitrain_cli
    )
    assert (
        run.returncode == 1
        and "Traceback" in run.stderr
        and "no such file" in run.stderr
    )


def _one_rank_nan_body(comm):
    import mpitrain
    from mpitrain.errors import DistributedValueError

    X, y = regression_problem(n=9, d=2)
    if comm.Get_rank() == 1:
        X[0, 0] = np.nan
    try:
        mpitrain.Ridge(comm=comm).fit(X, y)
    except DistributedValueError as exc:
        return str(exc), exc.ranks
    return None


def test_python_api_raises_the_same_error_on_every_rank():
    outcomes = run_function(_one_rank_nan_body, 3)
    assert len({o[0] for o in outcomes}) == 1  # identical on all ranks
    message, ranks = outcomes[0]
    assert ranks == [1] and "rank 1 (of 3)" in message and "NaN" in message


def _mismatched_features_body(comm):
    import mpitrain

    X, y = regression_problem(n=6, d=2 + comm.Get_rank())
    try:
        mpitrain.LinearRegression(comm=comm).fit(X, y)
    except ValueError as exc:
        return str(exc)


def test_ranks_with_different_feature_counts_are_refused():
    messages = run_function(_mismatched_features_body, 2)
    assert messages[0] == messages[1]
    assert "different numbers of features (rank 0: 2, rank 1: 3)" in messages[0]


@pytest.mark.openmpi  # the abort and agreement paths, under Open MPI too
def test_error_on_one_rank_only_aborts_instead_of_hanging(tmp_path):
    # A rank fails where the others cannot know it (they wait in a receive
    # that never comes): the failing rank must end the whole job.
    script = tmp_path / "lonely.py"
    script.write_text(
        textwrap.dedent("""
        from mpi4py import MPI
        from mpitrain.comm import finish_job
        comm = MPI.COMM_WORLD
        exit_comm = comm.Dup()
        if comm.Get_rank() == 1:
            finish_job(exit_comm, "boom on one rank", grace=0.5)
        else:
            comm.recv(source=1)
    """)
    )
    import sys

    run = mpirun(2, [sys.executable, str(script)], timeout=60)
    assert not run.timed_out
    assert run.returncode != 0
    assert "boom on one rank" in run.stderr and "aborting the whole job" in run.stderr
    assert run.seconds < 30


def _memory_error_on_rank_one(comm):
    from mpitrain.comm import collective_check
    from mpitrain.errors import DistributedMemoryError

    try:
        with collective_check(comm, "fitting locally"):
            if comm.Get_rank() == 1:
                raise MemoryError("Unable to allocate 12.0 GiB")
    except DistributedMemoryError as exc:
        return str(exc), exc.ranks, isinstance(exc, MemoryError)


@pytest.mark.openmpi  # the abort and agreement paths, under Open MPI too
def test_memory_error_on_one_rank_is_raised_on_all():
    outcomes = run_function(_memory_error_on_rank_one, 3)
    assert all(o == outcomes[0] for o in outcomes)
    message, ranks, is_memory_error = outcomes[0]
    assert ranks == [1] and is_memory_error
    assert (
        message
        == "fitting locally failed on rank 1 (of 3): out of memory: Unable to allocate 12.0 GiB"
    )
