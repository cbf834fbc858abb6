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
    assert (
        "the job hung: killed after 8 s" in text and "ranks [1] did not report" in text
    )
    assert "re-run with:" in text


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
