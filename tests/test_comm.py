"""``minimize_on_root``: rank 0 drives the optimiser, the other ranks only evaluate.

The bodies below run on every rank of an ``mpiexec`` job (see
:mod:`mpitrain.testing`).  Each gives every rank a *different* minimiser and
slightly different arithmetic, as nodes with other CPUs and BLAS kernels
would: only rank 0's may count, and every rank must still leave together
with rank 0's answer.  Short timeouts turn a hang into a quick failure.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from mpitrain.data import row_range
from mpitrain.testing import run_function

# Also run under Open MPI by .ci/run (docs/mpi-libraries.md).
pytestmark = pytest.mark.openmpi

TIMEOUT = 60


def _least_squares(n=90, d=4, seed=3):
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(n, d))
    b = A @ rng.uniform(-2, 2, size=d) + 0.1 * rng.normal(size=n)
    return A, b


def _local_least_squares(comm):
    """This rank's rows of a least-squares problem, and its ``evaluate_local``."""
    rank, size = comm.Get_rank(), comm.Get_size()
    A, b = _least_squares()
    lo, hi = row_range(len(b), size, rank)
    A, b = A[lo:hi], b[lo:hi]
    calls = []

    def evaluate_local(x):
        calls.append(x.copy())
        r = A @ x - b
        # Other CPUs round differently: the last bits of each rank's sums differ.
        return np.concatenate([[0.5 * r @ r], A.T @ r]) * (1 + rank * 2.0**-50)

    return evaluate_local, calls


def _disagreeing_minimizers_body(comm):
    """Every rank passes its own, different minimiser; rank 0's must be the one used."""
    from scipy import optimize

    from mpitrain.comm import minimize_on_root

    rank = comm.Get_rank()
    evaluate_local, calls = _local_least_squares(comm)
    d = 4

    def minimize(summed, x0):
        # On rank r > 0 this would take another path (other tolerance, other
        # iteration cap, perturbed gradients); with the old "every rank runs
        # its own optimiser" design the ranks would call different numbers
        # of collectives and hang.
        def fun(x):
            s = summed(x)
            return s[0], s[1:] * (1 + rank * 1e-3 * np.cos(np.arange(d)))

        return optimize.minimize(
            fun,
            x0,
            jac=True,
            method="L-BFGS-B",
            options={
                "gtol": 1e-10 * 10**rank,
                "ftol": 1e-15,
                "maxiter": 200 - 50 * rank,
            },
        )

    result = minimize_on_root(evaluate_local, np.zeros(d), comm, minimize, n_sums=1 + d)
    fields = {
        k: result[k]
        for k in ("nit", "nfev", "status", "success", "message", "fun", "n_evaluations")
    }
    return result.x, fields, len(calls), sorted(result.seconds)


@pytest.mark.mpi(ranks=[1, 2, 3, 4])
def test_only_rank_0_minimiser_counts_and_every_rank_gets_its_answer(mpi_ranks):
    per_rank = run_function(_disagreeing_minimizers_body, mpi_ranks, timeout=TIMEOUT)
    x0, fields0, calls0, seconds0 = per_rank[0]
    A, b = _least_squares()
    np.testing.assert_allclose(x0, np.linalg.lstsq(A, b, rcond=None)[0], rtol=1e-8)
    assert fields0["success"] and fields0["nit"] > 0
    # One collective evaluation per local call, on every rank, as many as rank 0 asked for.
    assert fields0["n_evaluations"] == calls0 <= fields0["nfev"]
    assert seconds0 == ["communicate", "local_compute"]
    for x, fields, calls, _ in per_rank[1:]:
        assert np.array_equal(x, x0)  # bit-identical: rank 0's answer
        assert fields == fields0
        assert calls == calls0


def _failures_body(comm):
    """Evaluation failing on one rank, then the minimiser failing on rank 0."""
    from scipy import optimize

    from mpitrain.comm import minimize_on_root

    rank, size = comm.Get_rank(), comm.Get_size()
    evaluate_local, calls = _local_least_squares(comm)
    d = 4
    outcomes = {}

    def lbfgs(summed, x0):
        return optimize.minimize(
            lambda x: (summed(x)[0], summed(x)[1:]), x0, jac=True, method="L-BFGS-B"
        )

    def failing_on_last_rank(x):
        if rank == size - 1 and len(calls) == 2:
            calls.append(x)
            raise ValueError(f"row 7 is broken on rank {rank}")
        return evaluate_local(x)

    def failing_minimizer(summed, x0):
        summed(x0)
        summed(x0 + 1)
        return 1 / 0

    for name, local, minimize in [
        ("evaluation", failing_on_last_rank, lbfgs),
        (
            "wrong_length",
            lambda x: evaluate_local(x)[:-1] if rank == size - 1 else evaluate_local(x),
            lbfgs,
        ),
        ("minimizer", evaluate_local, failing_minimizer),
    ]:
        calls.clear()
        try:
            minimize_on_root(
                local,
                np.zeros(d),
                comm,
                minimize,
                n_sums=1 + d,
                what="evaluating the test loss",
            )
            outcomes[name] = None
        except Exception as exc:
            outcomes[name] = (type(exc).__name__, str(exc), len(calls))
    return outcomes


@pytest.mark.mpi(ranks=[1, 2, 3, 4])
def test_failures_raise_the_same_error_everywhere_without_hanging(mpi_ranks):
    per_rank = run_function(_failures_body, mpi_ranks, timeout=TIMEOUT)
    where = f"rank {mpi_ranks - 1} (of {mpi_ranks})"
    first = per_rank[0]
    for outcomes in per_rank:
        # The same type and message on every rank; every rank stopped after
        # the failing evaluation (the third), none evaluated again.
        assert {k: v[:2] for k, v in outcomes.items()} == {
            k: v[:2] for k, v in first.items()
        }
    kind, message, _ = first["evaluation"]
    assert kind == "DistributedValueError"
    assert "evaluating the test loss" in message and "row 7 is broken" in message
    if mpi_ranks > 1:
        assert where in message
    assert all(outcomes["evaluation"][2] == 3 for outcomes in per_rank)
    kind, message, _ = first["wrong_length"]
    assert (
        kind == "DistributedValueError" and "returned 4 values, expected 5" in message
    )
    kind, message, _ = first["minimizer"]
    assert (
        kind == "DistributedError"
        and "running the minimiser" in message
        and "division by zero" in message
    )
    if mpi_ranks > 1:
        assert "rank 0 (of" in message
    # Rank 0's two evaluations were collective: every rank evaluated twice.
    assert all(outcomes["minimizer"][2] == 2 for outcomes in per_rank)


# ----------------------------------------------------------------------------
# Row blocks: point-to-point and broadcast, waited for without spinning.


def _rows_body(comm):
    from mpitrain.comm import bcast_rows_quietly, recv_rows_quietly, send_rows_quietly

    rank, size = comm.Get_rank(), comm.Get_size()
    mine = np.arange(rank * 6, dtype=np.float64).reshape(
        rank * 2, 3
    )  # rank 0 sends zero rows
    received = []
    if rank == 0:
        received = [recv_rows_quietly(source, comm) for source in range(1, size)]
    else:
        assert send_rows_quietly(mine, 0, comm) == mine.nbytes
    block = bcast_rows_quietly(np.full((2, 4), 7.0) if rank == 0 else None, comm)
    empty = bcast_rows_quietly(np.zeros((0, 5)) if rank == 0 else None, comm)
    return [r.tolist() for r in received], block.tolist(), empty.shape


@pytest.mark.mpi(ranks=[1, 3])
def test_row_blocks_travel_with_their_shapes(mpi_ranks):
    results = run_function(_rows_body, mpi_ranks, timeout=TIMEOUT)
    received, block, empty = results[0]
    assert received == [
        np.arange(r * 6, dtype=float).reshape(r * 2, 3).tolist()
        for r in range(1, mpi_ranks)
    ]
    for _, other_block, other_empty in results:
        assert other_block == [[7.0] * 4] * 2
        assert other_empty == (0, 5)


def _run_on_root_body(comm):
    from mpitrain.comm import run_on_root

    ran = []
    result = run_on_root(
        comm, "adding", lambda: ran.append(comm.Get_rank()) or {"sum": 1 + 2}
    )
    try:
        run_on_root(comm, "writing the file", lambda: 1 / 0)
        error = ""
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
    return ran, result, error


@pytest.mark.mpi(ranks=[1, 3])
def test_run_on_root_runs_once_and_agrees_on_failure(mpi_ranks):
    results = run_function(_run_on_root_body, mpi_ranks, timeout=60)
    assert [r[0] for r in results] == [[0]] + [[]] * (
        mpi_ranks - 1
    )  # only rank 0 worked
    assert all(r[1] == {"sum": 3} for r in results)  # every rank has the result
    errors = {r[2] for r in results}
    assert len(errors) == 1
    error = errors.pop()
    assert (
        error.startswith("DistributedError: writing the file")
        and "division by zero" in error
    )
    if mpi_ranks > 1:
        assert "on rank 0" in error


def test_layout_counts_ranks_by_host_where_the_shared_split_says_alone():
    """srun --distribution=arbitrary under MPICH: every rank alone in its split, 3 on one host."""
    from mpitrain.comm import layout_from_hosts

    hosts = ["n1", "n2", "n1", "n1"]
    got = [layout_from_hosts(hosts, rank, 0, 1) for rank in range(4)]
    assert [g["local_size"] for g in got] == [3, 1, 3, 3]
    assert [g["local_rank"] for g in got] == [0, 0, 1, 2]
    assert {(g["nodes"], g["ranks_per_node"]) for g in got} == {(2, 3)}
    # Where the split agrees, or shares more than the host names say (one
    # machine under several names), the split is what shares memory.
    assert layout_from_hosts(hosts, 2, 1, 3)["local_rank"] == 1
    split = layout_from_hosts(["a", "b"], 1, 1, 2)
    assert (split["local_rank"], split["local_size"], split["nodes"]) == (1, 2, 2)


def test_ranks_share_cores_only_where_their_cores_overlap():
    """Threads per rank divide a rank's cores by the ranks whose cores overlap them."""
    from mpitrain.comm import cpu_sharers

    def masks(seen):  # the cores as node_layout gathers them: one bit each
        return [(host, sum(1 << c for c in cores)) for host, cores in seen]

    full = tuple(range(16))
    unbound = [("n1", full)] * 4
    assert [cpu_sharers(masks(unbound), r) for r in range(4)] == [4, 4, 4, 4]
    # Bound to a core each (srun --cpu-bind=cores): each rank its own.
    cores = [("n1", (r,)) for r in range(4)]
    assert [cpu_sharers(masks(cores), r) for r in range(4)] == [1, 1, 1, 1]
    # Two ranks per socket of 8 cores (Open MPI's --bind-to socket): 2, not 4.
    sockets = [("n1", tuple(range(8 * (r % 2), 8 * (r % 2) + 8))) for r in range(4)]
    assert [cpu_sharers(masks(sockets), r) for r in range(4)] == [2, 2, 2, 2]
    # Other hosts never count; an unknown core set overlaps the whole host.
    mixed = [("n1", (0,)), ("n2", (0,)), ("n1", ()), ("n1", (1,))]
    assert [cpu_sharers(masks(mixed), r) for r in range(4)] == [2, 1, 3, 2]


_BOUND_PROBE = """
import json, os, sys
from mpi4py import MPI
from mpitrain.comm import node_layout
layout = node_layout(MPI.COMM_WORLD)
path = os.path.join(sys.argv[1], f"{MPI.COMM_WORLD.Get_rank()}.json")
with open(path, "w") as f:
    json.dump([sorted(os.sched_getaffinity(0)), layout], f)
"""


def test_node_layout_sees_a_launchers_core_binding(monkeypatch, tmp_path):
    """MPICH's hydra with -bind-to core: each rank on a core of its own, so it shares with none."""
    import json
    import sys

    from mpitrain.testing import find_mpiexec, mpiexec_flavour, mpirun

    if os.environ.get("MPITRAIN_MPIEXEC"):
        pytest.skip("MPITRAIN_MPIEXEC names the launcher: its flags are the user's")
    if mpiexec_flavour() != "MPICH":
        pytest.skip("-bind-to core is hydra's (MPICH) flag")
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs 2 cores to bind 2 ranks apart")
    launcher = find_mpiexec()
    for flags, sharers in (((), 2), (("-bind-to", "core"), 1)):
        monkeypatch.setenv("MPITRAIN_MPIEXEC", " ".join([*launcher, *flags]))
        folder = tmp_path / str(sharers)
        folder.mkdir()
        argv = [sys.executable, "-c", _BOUND_PROBE, str(folder)]
        find_mpiexec.cache_clear()  # it caches the launcher: read the variable again
        try:
            run = mpirun(2, argv, timeout=120)
        finally:
            monkeypatch.delenv("MPITRAIN_MPIEXEC")
            find_mpiexec.cache_clear()
        assert run.returncode == 0, run.stderr
        seen = [json.loads((folder / f"{r}.json").read_text()) for r in range(2)]
        cores = [set(c) for c, _ in seen]
        # An independent count: do the ranks' affinity sets overlap?
        assert bool(cores[0] & cores[1]) == (sharers == 2), (run.command, cores)
        for _, layout in seen:
            assert layout["local_size"] == 2 and layout["cpu_sharers"] == sharers


def _root_flag_body(comm):
    """Rank 0 sends its number late, after other collectives' time; the others poll meanwhile."""
    import time

    from mpitrain.comm import RootFlag, allgather_object

    flag = RootFlag(comm)
    polls_before = 0
    if comm.Get_rank() == 0:
        time.sleep(0.3)  # rank 0 still deciding
        flag.send(7)
    else:
        while flag.poll() is None:  # the others keep working until it arrives
            polls_before += 1
            time.sleep(0.01)
    value = flag.wait()
    # The next collective on the same communicator matches on every rank.
    return value, polls_before, allgather_object(comm.Get_rank(), comm)


@pytest.mark.mpi(ranks=[1, 2, 3])
def test_root_flag_arrives_late_and_keeps_collectives_in_order(mpi_ranks):
    results = run_function(_root_flag_body, mpi_ranks)
    assert [value for value, _, _ in results] == [7] * mpi_ranks
    assert all(polls > 0 for _, polls, _ in results[1:])  # they worked while waiting
    assert all(order == list(range(mpi_ranks)) for _, _, order in results)
