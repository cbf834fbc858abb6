"""The MPI test launcher itself: failures name their ranks, hangs are killed,
and the shared per-rank-count job keeps every test apart from the next."""

from __future__ import annotations

import os
import re
import shlex
import sys

import pytest

from mpitrain.testing import SHARED_VARIABLE, MPITestFailure, run_function

# Also run under Open MPI by .ci/run (docs/mpi-libraries.md).
pytestmark = pytest.mark.openmpi

# The same assertions for a body in the session's shared job and in a job of its own.
SHARED_OR_OWN = pytest.mark.parametrize(
    "shared",
    [True, pytest.param(False, marks=pytest.mark.mpi_own_job)],
    ids=["shared", "own-job"],
)


@pytest.fixture
def sharing(monkeypatch):
    """Whatever the caller's environment says, the shared job is on."""
    monkeypatch.delenv(SHARED_VARIABLE, raising=False)


def _where(comm):
    """This rank's process, and whether it is a shared job's rank."""
    return os.getpid(), sys.argv[1:2] == ["--serve"]


def _sum_body(comm, n):
    return comm.allreduce(n)


@pytest.mark.mpi(ranks=[1, 2, 3])
def test_values_come_back_from_every_rank(mpi_ranks):
    assert run_function(_sum_body, mpi_ranks, 5) == [5 * mpi_ranks] * mpi_ranks


def _fail_on_odd_ranks(comm):
    assert comm.Get_rank() % 2 == 0, f"odd rank {comm.Get_rank()}"


@SHARED_OR_OWN
def test_assertions_are_gathered_with_their_ranks(sharing, shared):
    before = run_function(_where, 4)
    with pytest.raises(MPITestFailure) as info:
        run_function(_fail_on_odd_ranks, 4)
    text = str(info.value)
    assert "failed on ranks [1] of 4" in text and "failed on ranks [3] of 4" in text
    assert "AssertionError: odd rank 1" in text and "AssertionError: odd rank 3" in text
    # The command re-runs the body alone, in a job of its own, with its input.
    assert "re-run with:" in text and "-n 4" in text
    assert "-m mpitrain.testing" in text and "_fail_on_odd_ranks" in text
    assert "--serve" not in text
    after = run_function(_where, 4)
    assert all(serving == shared for _, serving in before + after)
    # A body that raised leaves the shared job running: the next body gets the same ranks.
    assert (before == after) == shared


def _hang_on_rank_one(comm):
    if comm.Get_rank() == 1:
        comm.recv(source=0)  # rank 0 never sends


@SHARED_OR_OWN
def test_a_hung_job_is_killed_and_reported(sharing, shared):
    before = run_function(_where, 2)
    # The shared job's timeout counts from a ready job, so rank 0 reports well
    # within 4 s; a job of its own first starts Python on both ranks.
    timeout = 4 if shared else 8
    with pytest.raises(MPITestFailure) as info:
        run_function(_hang_on_rank_one, 2, timeout=timeout)
    text = str(info.value)
    assert f"the job hung: killed after {timeout} s" in text
    assert "ranks [1] did not report" in text
    assert "re-run with:" in text and "_hang_on_rank_one" in text
    assert ("which was stopped; the next test starts a fresh one" in text) == shared
    # The next body runs, in a fresh job.
    after = run_function(_where, 2)
    assert all(serving == shared for _, serving in after)
    assert not set(before) & set(after)


def _exit_on_last_rank(comm):
    if comm.Get_rank() == comm.Get_size() - 1:
        os._exit(7)  # no exception, no report: the process is simply gone
    return comm.Get_rank()


@SHARED_OR_OWN
def test_a_crashed_job_is_reported_and_the_next_body_runs(sharing, shared):
    with pytest.raises(MPITestFailure) as info:
        run_function(_exit_on_last_rank, 3, timeout=60)
    text = str(info.value)
    # The launcher may kill the other ranks before they report: rank 2 at least.
    assert re.search(r"ranks \[(\d, )*2\] did not report", text)
    assert "re-run with:" in text
    assert "the job hung" not in text
    assert run_function(_sum_body, 3, 1) == [3, 3, 3]


_TOUCHED: list[int] = []  # a module global: every body finds its module afresh


def _observe(comm):
    """What a body could have left behind in this process for the next one."""
    import logging
    import signal
    import warnings

    import numpy as np
    import sklearn
    from mpi4py import MPI

    umask = os.umask(0o022)
    os.umask(umask)
    import conftest  # a module of the tests' folder, imported afresh per body

    return {
        "cwd": os.getcwd(),
        "environ": "MPITRAIN_LEFT_BEHIND" in os.environ,
        "sys.path": list(sys.path),
        "umask": umask,
        "warnings": len(warnings.filters),
        "SIGUSR1": signal.getsignal(signal.SIGUSR1) == signal.SIG_IGN,
        "log handlers": len(logging.getLogger().handlers),
        "numpy errors": np.geterr(),
        "assume_finite": sklearn.get_config()["assume_finite"],
        "module global": list(_TOUCHED),
        "conftest": hasattr(conftest, "LEFT_BEHIND"),
        # A message left unreceived must not reach the next body's communicator.
        "message": comm.Iprobe(source=MPI.ANY_SOURCE, tag=MPI.ANY_TAG),
        "stdout": sys.stdout is sys.__stdout__,
    }


def _leave_state_behind(comm, folder):
    import logging
    import signal
    import warnings

    import conftest
    import numpy as np
    import sklearn

    before = _observe(comm)
    _TOUCHED.append(comm.Get_rank())
    os.environ["MPITRAIN_LEFT_BEHIND"] = "1"
    os.chdir(folder)
    sys.path.insert(0, folder)
    os.umask(0o077)
    warnings.simplefilter("error")
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    logging.getLogger().addHandler(logging.NullHandler())
    np.seterr(all="raise")
    sklearn.set_config(assume_finite=True)
    conftest.LEFT_BEHIND = True
    sys.stdout = open(os.devnull, "w")  # replaced, left open
    comm.send(b"left behind", dest=comm.Get_rank(), tag=5)  # to itself, never received
    after = _observe(comm)
    assert after != before  # the changes took effect here
    return before, _where(comm)


def _state_now(comm):
    return _observe(comm), _where(comm)


def test_state_from_one_body_is_not_visible_in_the_next(sharing, tmp_path):
    first = run_function(_leave_state_behind, 2, str(tmp_path))
    second = run_function(_state_now, 2)
    for (before, where), (now, where_now) in zip(first, second):
        assert where[1] and where == where_now  # the same processes of the shared job
        assert now == before


def test_env_gives_a_job_of_its_own(sharing):
    assert all(not serving for _, serving in run_function(_where, 2, env={"X": "1"}))


def test_the_shared_job_can_be_switched_off(monkeypatch):
    monkeypatch.setenv(SHARED_VARIABLE, "0")
    assert all(not serving for _, serving in run_function(_where, 2))


def _identical_sum_body(comm):

    from mpitrain.comm import allreduce_identical

    return allreduce_identical(_wide_values(comm.Get_rank()), comm)


def _wide_values(seed):
    import numpy as np

    rng = np.random.default_rng(seed)
    return rng.normal(size=1000) * 10.0 ** rng.integers(-8, 8, size=1000)


def test_allreduce_identical_gives_every_rank_the_same_bits():
    import numpy as np

    sums = run_function(_identical_sum_body, 4)
    expected = sum(_wide_values(r) for r in range(4))
    assert all(np.array_equal(s, sums[0]) for s in sums)  # bit for bit
    np.testing.assert_allclose(sums[0], expected, rtol=1e-12)


def test_a_shared_job_whose_launcher_fails_to_start_is_started_once_more(
    sharing, tmp_path, monkeypatch
):
    # A launcher that exits at once the first time, as Open MPI's did once in
    # CI ("The PMIx server's listener thread failed to start"), then works.
    from mpitrain.testing import _discard_shared_job, find_mpiexec

    real = find_mpiexec()
    mark = tmp_path / "failed-once"
    fake = tmp_path / "flaky-mpiexec"
    fake.write_text(
        "#!/bin/sh\n"
        f'if [ ! -e "{mark}" ]; then touch "{mark}"; '
        'echo "The PMIx server\'s listener thread failed to start." >&2; exit 1; fi\n'
        'exec "$@"\n'
    )
    fake.chmod(0o755)
    monkeypatch.setenv("MPITRAIN_MPIEXEC", shlex.join([str(fake), *real]))
    find_mpiexec.cache_clear()  # it is read once per session
    _discard_shared_job(1)
    try:
        ((pid, in_shared_job),) = run_function(_where, 1)
        assert mark.exists()  # the first start did fail
        assert in_shared_job and pid != os.getpid()
    finally:
        monkeypatch.delenv("MPITRAIN_MPIEXEC")
        find_mpiexec.cache_clear()
        _discard_shared_job(1)  # the next test starts its own, with the real launcher
