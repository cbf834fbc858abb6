"""Failures on one rank end every rank with the agreed message, promptly, never a hang.

Each test injects a failure on one rank only, in the middle of collective
work, and checks that every rank raises the same error (naming the rank and
the cause) within the launcher's timeout.  A hang is a failure: the job is
killed at ``TIMEOUT`` seconds and reported with the command to re-run it.

The failures are injected where real ones happen: an allocation that fails
on a group leader at the peak of a cascade merge (as on a node short of
memory), a checkpoint whose saved state cannot be loaded, a write to a
closed standard error.
"""

from __future__ import annotations

import types

import numpy as np
import pytest

from mpitrain.data import row_range
from mpitrain.testing import MPITestFailure, run_function

# Also run under Open MPI by .ci/run (docs/mpi-libraries.md).
pytestmark = pytest.mark.openmpi

TIMEOUT = 120


# ----------------------------------------------------------------------------
# Helpers run in the rank processes


class _NumpyWithoutLargeEmpty(types.ModuleType):
    """numpy, except that ``empty`` of more than ``limit`` bytes raises MemoryError.

    Installed as the ``np`` of :mod:`mpitrain.comm` on one rank: every
    buffer that module allocates to receive rows fails there, as on a
    node whose memory is exhausted at that moment.
    """

    def __init__(self, limit: int):
        super().__init__("numpy")
        self.limit = limit

    def __getattr__(self, name):
        return getattr(np, name)

    def empty(self, shape, dtype=float, *args, **kwargs):
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        if nbytes > self.limit:
            raise MemoryError(
                f"Unable to allocate {nbytes} bytes for an array with shape {shape}"
            )
        return np.empty(shape, dtype, *args, **kwargs)


def _noisy_classes(n: int, d: int = 10, seed: int = 3):
    """Noisy labels: an RBF SVC keeps most rows as support vectors."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    y = (X[:, :3].sum(axis=1) + rng.normal(scale=1.5, size=n) > 0).astype(np.int64)
    return X, y


def cascade_leader_cannot_allocate_body(comm, arity: int, limit: int):
    """Every rank fits its share; the first group leader cannot allocate the members' rows."""
    import mpitrain.comm
    from mpitrain.svm import SVC

    rank, size = comm.Get_rank(), comm.Get_size()
    X, y = _noisy_classes(3000)
    a, b = row_range(len(X), size, rank)
    if rank == 0:
        mpitrain.comm.np = _NumpyWithoutLargeEmpty(limit)
    try:
        SVC(kernel="rbf", C=1.0, arity=arity, max_passes=1, comm=comm).fit(
            X[a:b], y[a:b]
        )
    except Exception as exc:
        return type(exc).__name__, str(exc)
    finally:
        mpitrain.comm.np = np
    return None


# ----------------------------------------------------------------------------
# Item 3: the cascade merge cannot hang


@pytest.mark.parametrize("ranks, arity", [(2, 2), (3, 3)])
def test_cascade_leader_out_of_memory_while_receiving_is_agreed(ranks, arity):
    # Each member sends about 1,000 support vectors x 13 float64 (100 kB):
    # above MPICH's eager limit, so a send completes only when the leader
    # receives it.  The leader's buffer for them cannot be allocated.
    try:
        outcomes = run_function(
            cascade_leader_cannot_allocate_body, ranks, arity, 50_000, timeout=TIMEOUT
        )
    except MPITestFailure as exc:
        pytest.fail(f"the job did not end with an agreed error:\n{exc}")
    assert all(o is not None for o in outcomes), outcomes
    assert len(set(outcomes)) == 1, outcomes  # the same error on every rank
    kind, message = outcomes[0]
    assert kind == "DistributedMemoryError", outcomes
    assert "cascade layer 1" in message and "rank 0" in message, message
    assert "out of memory" in message and "Unable to allocate" in message, message


# ----------------------------------------------------------------------------
# Item 4: rank 0 checks its memory before it gathers O(rows)


def _separable_classes(n: int, seed: int = 5):
    """Two well-separated classes: few support vectors, most rows far from the margin."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=n)
    X = rng.normal(size=(n, 5)) + 3.0 * y[:, None]
    return X, y


def cascade_violators_over_budget_body(comm, limit: str):
    """Feedback sends nearly every row (a huge feedback_margin) to a rank 0 with ``limit`` bytes."""
    import os

    from mpitrain.svm import SVC

    rank, size = comm.Get_rank(), comm.Get_size()
    X, y = _separable_classes(4000)
    a, b = row_range(len(X), size, rank)
    before = os.environ.get("MPITRAIN_MEMORY_LIMIT")
    os.environ["MPITRAIN_MEMORY_LIMIT"] = limit
    try:
        model = SVC(
            kernel="linear",
            C=1.0,
            cache_size=1,
            max_passes=2,
            feedback_margin=1000.0,
            comm=comm,
        ).fit(X[a:b], y[a:b])
    except Exception as exc:
        return type(exc).__name__, str(exc)
    finally:
        if before is None:
            del os.environ["MPITRAIN_MEMORY_LIMIT"]
        else:
            os.environ["MPITRAIN_MEMORY_LIMIT"] = before
    return model.cascade_["support_vectors_per_layer"]


@pytest.mark.mpi(ranks=[2, 3])
def test_cascade_refuses_violators_that_rank_0_cannot_hold(mpi_ranks):
    # With room to spare the fit runs: the first pass's merges (a few
    # hundred support vectors) and the feedback pass (almost all 4,000 rows).
    layers = run_function(
        cascade_violators_over_budget_body, mpi_ranks, "1e9", timeout=TIMEOUT
    )[0]
    assert isinstance(layers, list) and layers[1][0] > 3000, layers
    # 1.5 MB: the merges fit, the feedback union (about 2 MB) does not.
    outcomes = run_function(
        cascade_violators_over_budget_body, mpi_ranks, "1.5e6", timeout=TIMEOUT
    )
    assert len(set(outcomes)) == 1, outcomes
    kind, message = outcomes[0]
    assert kind == "DistributedMemoryError", message
    assert message.startswith(
        f"gathering margin violators failed on rank 0 (of {mpi_ranks}): out of memory: "
        "the feedback pass gathers "
    ), message
    assert "margin violators and near-violators on rank 0" in message, message
    assert "MPITRAIN_MEMORY_LIMIT" in message and "1.5 MB" in message, message
    assert "lower feedback_margin" in message, message


# ----------------------------------------------------------------------------
# Item 3: rank-0-only work between collectives fails on every rank


def _thaw_that_cannot_load(*args, **kwargs):
    """The checkpoint's state decoder, running out of memory (a state too big for rank 0)."""
    raise MemoryError("cannot allocate the saved state")


def _toy_loop(comm):
    from mpitrain.checkpoint import checkpoint_loop

    return checkpoint_loop("toy", key={"n": 5}, comm=comm, what="toy", unit="round")


def checkpoint_failure_on_root_body(comm, path: str, failure: str):
    """Save a loop's state; resume it while rank 0 fails to load the state or to log."""
    import mpitrain.checkpoint
    from mpitrain.checkpoint import checkpointing

    rank = comm.Get_rank()
    with checkpointing(path, every=1, comm=comm, keep=True):
        _toy_loop(comm).step(lambda: {"x": np.arange(5.0), "note": "saved"})

    def log(text):
        if failure == "log":
            raise BrokenPipeError(32, "Broken pipe")

    thaw = mpitrain.checkpoint._thaw
    if rank == 0 and failure == "load":
        mpitrain.checkpoint._thaw = _thaw_that_cannot_load
    try:
        with checkpointing(path, resume=True, comm=comm, log=log):
            state = _toy_loop(comm).state
            # What the fit would do next: a collective with every rank.
            comm.allreduce(1)
    except Exception as exc:
        return type(exc).__name__, str(exc)
    finally:
        mpitrain.checkpoint._thaw = thaw
    return state["note"]


@pytest.mark.mpi(ranks=[2, 3])
def test_checkpoint_state_rank_0_cannot_load_is_agreed(tmp_path, mpi_ranks):
    path = str(tmp_path / "toy.ckpt")
    # The same run without a failure resumes the saved state.
    assert (
        run_function(
            checkpoint_failure_on_root_body, mpi_ranks, path, "none", timeout=TIMEOUT
        )
        == ["saved"] * mpi_ranks
    )
    outcomes = run_function(
        checkpoint_failure_on_root_body, mpi_ranks, path, "load", timeout=TIMEOUT
    )
    assert len(set(outcomes)) == 1, outcomes
    kind, message = outcomes[0]
    assert kind == "DistributedMemoryError", outcomes
    assert message == (
        f"loading the saved state of toy from {path} failed on rank 0 (of {mpi_ranks}): "
        "out of memory: cannot allocate the saved state"
    )


@pytest.mark.mpi(ranks=[2])
def test_checkpoint_log_that_rank_0_cannot_write_is_agreed(tmp_path, mpi_ranks):
    path = str(tmp_path / "toy.ckpt")
    outcomes = run_function(
        checkpoint_failure_on_root_body, mpi_ranks, path, "log", timeout=TIMEOUT
    )
    assert len(set(outcomes)) == 1, outcomes
    kind, message = outcomes[0]
    assert kind == "CheckpointError", outcomes
    assert message.startswith("cannot write the log line 'resuming from the checkpoint")
    assert "BrokenPipeError: [Errno 32] Broken pipe" in message


def finish_job_stderr_closed_body(comm):
    """Rank 1 failed; rank 0's standard error is closed when it reports that."""
    import io
    import sys

    from mpitrain.comm import finish_job

    rank = comm.Get_rank()
    exit_comm = comm.Dup()
    saved = sys.stderr
    if rank == 0:
        sys.stderr = io.StringIO()
        sys.stderr.close()
    try:
        return finish_job(exit_comm, "disk full" if rank == 1 else None, 10.0)
    finally:
        sys.stderr = saved
        exit_comm.Free()


@pytest.mark.mpi(ranks=[2, 3])
def test_finish_job_with_a_closed_stderr_still_ends_every_rank(mpi_ranks):
    assert (
        run_function(finish_job_stderr_closed_body, mpi_ranks, timeout=TIMEOUT)
        == [1] * mpi_ranks
    )


def _finish_job_printed(comm, message, warned):
    """``finish_job``'s status on this rank and what it printed to standard error."""
    import io
    import sys

    from mpitrain.comm import finish_job

    exit_comm = comm.Dup()
    saved, sys.stderr = sys.stderr, io.StringIO()
    try:
        status = finish_job(exit_comm, message, 10.0, warned)
        return status, sys.stderr.getvalue()
    finally:
        sys.stderr = saved
        exit_comm.Free()


def finish_job_warnings_body(comm):
    """Every rank warned alike once, rank 1 also alone (twice), rank 2 failed."""
    rank = comm.Get_rank()
    warned = ["UserWarning: everywhere"]
    if rank == 1:
        warned += ["UserWarning: only here", "UserWarning: only here"]
    return _finish_job_printed(comm, "boom" if rank == 2 else None, warned)


@pytest.mark.mpi(ranks=[3])
def test_finish_job_prints_each_warning_once_naming_the_ranks(mpi_ranks):
    """Rank 0 prints the warnings before the error, each once; the others print nothing."""
    (status, text), *others = run_function(
        finish_job_warnings_body, mpi_ranks, timeout=TIMEOUT
    )
    assert text == (
        "mpitrain: warning: UserWarning: everywhere\n"
        "mpitrain: warning on rank 1: UserWarning: only here\n"
        "mpitrain: error on rank 2: boom\n"
    )
    assert status == 1 and others == [(1, ""), (1, "")]


def finish_job_set_orders_body(comm):
    """Every rank fails and warns with a set whose items each rank orders differently."""
    rank = comm.Get_rank()
    items = ["'squared_error'", "'absolute_error'", "'poisson'"]
    # As each process's hash seed orders it.
    mine = ", ".join(items[rank:] + items[:rank])
    message = (
        f"The 'criterion' parameter must be a str among {{{mine}}}. Got 'gini' instead."
    )
    return _finish_job_printed(comm, message, [f"UserWarning: one of {{{mine}}}"])


@pytest.mark.mpi(ranks=[3])
def test_finish_job_prints_an_error_once_whatever_each_rank_s_set_order(mpi_ranks):
    """The same error, its set ordered by each process's hash seed, is one message."""
    (status, text), *others = run_function(
        finish_job_set_orders_body, mpi_ranks, timeout=TIMEOUT
    )
    assert text == (
        "mpitrain: warning: UserWarning: one of "
        "{'squared_error', 'absolute_error', 'poisson'}\n"
        "mpitrain: error: The 'criterion' parameter must be a str among "
        "{'squared_error', 'absolute_error', 'poisson'}. Got 'gini' instead.\n"
    )
    assert status == 1 and others == [(1, ""), (1, "")]


def test_same_text_key_sorts_the_items_of_each_set_only():
    from mpitrain.comm import same_text_key

    assert same_text_key("among {'b', 'a'} or {2, 1}") == "among {'a', 'b'} or {1, 2}"
    assert same_text_key("no set here (b, a)") == "no set here (b, a)"
    assert same_text_key("{'b', 'a'}") != same_text_key("{'b', 'c'}")


def _imputation_problem(n: int = 900, seed: int = 11):
    """A continuous column (every value distinct), integer columns with ties, an empty column."""
    rng = np.random.default_rng(seed)
    X = np.column_stack(
        [
            rng.normal(size=n),
            rng.integers(0, 300, size=n).astype(float),
            np.zeros(n),
            np.full(n, np.nan),
        ]
    )
    X[rng.random(X.shape) < 0.1] = np.nan
    # Two values share the top count: the smaller must win.
    X[:, 2] = np.r_[np.full(40, 7.0), np.full(40, 3.0), rng.uniform(10, 20, n - 80)]
    return X[rng.permutation(n)]


def most_frequent_in_chunks_body(comm, chunk_rows: int):
    """SimpleImputer(most_frequent) with merge chunks of ``chunk_rows``; rank 0's chunk sizes."""
    import mpitrain.stats._merge as merge
    from mpitrain.preprocessing import SimpleImputer

    X = _imputation_problem()
    a, b = row_range(len(X), comm.Get_size(), comm.Get_rank())
    received = []
    gatherv_rows, limit = merge.gatherv_rows, merge.MERGE_CHUNK_ROWS

    def recording(local, comm, *args, **kwargs):
        out = gatherv_rows(local, comm, *args, **kwargs)
        if out is not None:
            received.append(len(out))
        return out

    merge.gatherv_rows, merge.MERGE_CHUNK_ROWS = recording, chunk_rows
    try:
        imputer = SimpleImputer(
            strategy="most_frequent", keep_empty_features=True, comm=comm
        ).fit(X[a:b])
    finally:
        merge.gatherv_rows, merge.MERGE_CHUNK_ROWS = gatherv_rows, limit
    return imputer.statistics_, received


@pytest.mark.mpi(ranks=[1, 2, 3])
def test_most_frequent_merges_in_bounded_chunks_and_equals_sklearn(mpi_ranks):
    from sklearn.impute import SimpleImputer

    X = _imputation_problem()
    want = (
        SimpleImputer(strategy="most_frequent", keep_empty_features=True)
        .fit(X)
        .statistics_
    )
    out = run_function(most_frequent_in_chunks_body, mpi_ranks, 50, timeout=TIMEOUT)
    statistics, received = out[0]
    np.testing.assert_array_equal(statistics, want)
    assert statistics[2] == 3.0  # the tie went to the smaller value
    # The continuous column alone has about 800 distinct values: many chunks,
    # none over 50 + ranks - 1 pairs on rank 0.
    assert len(received) > 16 and max(received) <= 50 + mpi_ranks - 1, received
    for other, _ in out[1:]:
        np.testing.assert_array_equal(other, statistics)


# ----------------------------------------------------------------------------
# Item 3: the command line's rank-0 work between collectives


class _BrokenPipe:
    """A standard error whose every write fails, as after ``mpitrain ... 2>&1 | head``."""

    def write(self, text):
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self):
        raise BrokenPipeError(32, "Broken pipe")

    def isatty(self):
        return False


class _Captured:
    """A standard error that keeps what is written."""

    def __init__(self):
        self.text = ""

    def write(self, text):
        self.text += text

    def flush(self):
        pass

    def isatty(self):
        return False


def cli_rank_0_fails_body(comm, folder: str, failure: str):
    """``mpitrain train`` in-process on every rank, with one failure injected on rank 0.

    Returns every rank's exit status, rank 0's standard error, the seconds
    the command took and whether the model file exists.
    """
    import os
    import sys
    import time

    import h5py

    import mpitrain.workflow._in_memory as in_memory
    import mpitrain.workflow._train as train
    from mpitrain.cli import main

    rank = comm.Get_rank()
    data = os.path.join(folder, "data.h5")
    if rank == 0:
        X, y = _separable_classes(400)
        with h5py.File(data, "w") as f:
            f["X"], f["y"] = X, y
    comm.Barrier()
    model = os.path.join(folder, f"model-{failure}.skops")
    argv = ["train", data, "--model", "logistic", "--out", model]
    argv += ["--report", os.path.join(folder, f"report-{failure}.json")]
    argv += ["--test-size", "0.25"]
    saved = sys.stderr, in_memory.format_evaluation, train._train_report

    def broken(*args, **kwargs):
        raise ValueError(f"cannot format {failure}")

    if rank == 0:
        sys.stderr = _BrokenPipe() if failure == "stderr" else _Captured()
        if failure == "formatting":
            in_memory.format_evaluation = broken
        if failure == "report":
            train._train_report = broken
    tic = time.monotonic()
    try:
        status = main(argv)
    finally:
        seconds = time.monotonic() - tic
        captured = getattr(sys.stderr, "text", None)
        sys.stderr, in_memory.format_evaluation, train._train_report = saved
    return status, captured, seconds, os.path.exists(model)


@pytest.mark.mpi(ranks=[2])
@pytest.mark.parametrize("failure", ["formatting", "report", "stderr"])
def test_cli_rank_0_failure_between_collectives_is_agreed(tmp_path, mpi_ranks, failure):
    # Before: rank 0 left the command alone, the others waited in the next
    # collective, and the job was aborted after the 10 s grace period.
    out = run_function(
        cli_rank_0_fails_body, mpi_ranks, str(tmp_path), failure, timeout=TIMEOUT
    )
    assert [o[0] for o in out] == [1] * mpi_ranks, out
    assert all(o[2] < 10 for o in out), out  # no grace period ran out
    stderr = out[0][1]
    if failure == "formatting":
        assert (
            "mpitrain: error: formatting the evaluation failed on rank 0 (of 2): "
            "cannot format formatting"
        ) in stderr, stderr
        assert not out[0][3]  # stopped before the model was saved
    elif failure == "report":
        assert (
            "mpitrain: error: writing the report to "
            f"{tmp_path / 'report-report.json'} failed on rank 0 (of 2): cannot format report"
        ) in stderr, stderr
        assert not (tmp_path / "report-report.json").exists()
    else:
        # Nothing can be read on that standard error; the status says it.
        assert stderr is None
        assert not out[0][3]
