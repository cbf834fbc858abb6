"""The MPI test launcher itself: failures name their ranks, hangs are killed."""

from __future__ import annotations

import pytest

from mpitrain.testing import MPITestFailure, run_function


def _sum_body(comm, n):
    return comm.allreduce(n)


@pytest.mark.mpi(ranks=[1, 2, 3])
def test_values_come_back_from_every_rank(mpi_ranks):
    assert run_function(_sum_body, mpi_ranks, 5) == [5 * mpi_ranks] * mpi_ranks


def _fail_on_odd_ranks(comm):
    assert comm.Get_rank() % 2 == 0, f"odd rank {comm.Get_rank()}"


def test_assertions_are_gathered_with_their_ranks():
    with pytest.raises(MPITestFailure) as info:
        run_function(_fail_on_odd_ranks, 4)
    text = str(info.value)
    assert "failed on ranks [1] of 4" in text and "failed on ranks [3] of 4" in text
    assert "re-run with:" in text and "-n 4" in text


def _hang_on_rank_one(comm):
    if comm.Get_rank() == 1:
        comm.recv(source=0)  # rank 0 never sends


def test_a_hung_job_is_killed_and_reported():
    with pytest.raises(MPITestFailure) as info:
        run_function(_hang_on_rank_one, 2, timeout=8)
    text = str(info.value)
    assert "the job hung: killed after 8 s" in text and "ranks [1] did not report" in text
    assert "re-run with:" in text
