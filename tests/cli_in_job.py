"""The mpitrain command run inside the session's shared MPI job.

``mpirun(ranks, [python, -m, mpitrain, ...])`` pays Python's and
scikit-learn's imports on every rank, about 2.5-3.5 s a launch on two cores.
:func:`cli_in_job` calls the same entry point, ``mpitrain.cli.main(argv)``,
on every rank of the shared job instead: the same parsing, workflow, error
agreement and printing from rank 0, with each rank's standard streams
captured.  What only a process of its own shows (the exit status
``python -m mpitrain`` hands to ``mpiexec``, output through the launcher)
stays with the tests that launch the real program; every behaviour of the
command line keeps at least one of those.
"""

from __future__ import annotations

from dataclasses import dataclass

from mpitrain.testing import run_function


@dataclass
class InJobRun:
    """What :func:`cli_in_job` saw, shaped like :class:`mpitrain.testing.MPIRun`."""

    command_line: str
    returncode: int
    stdout: str
    stderr: str
    timed_out: bool = False


def _main_body(comm, argv, env):
    return run_main(argv, env)


def _nothing_left_on_world(comm):
    """The command runs on ``COMM_WORLD``, which the shared job's bodies share
    (each body gets its own duplicate, the command does not): a message it
    left unreceived would reach the next command, so it fails this one."""
    from mpi4py import MPI

    comm.Barrier()  # every rank's command has ended: what it sent has been sent
    assert not MPI.COMM_WORLD.Iprobe(source=MPI.ANY_SOURCE, tag=MPI.ANY_TAG), (
        "the command left a message unreceived on COMM_WORLD"
    )


def run_main(argv, env=None):
    """``mpitrain.cli.main(argv)`` on this rank: (status, stdout, stderr).

    Collective over ``COMM_WORLD``, as the command is.  For a body that
    changes something (restored in ``finally``) before calling the command.
    """
    import contextlib
    import io
    import os

    from threadpoolctl import threadpool_limits

    from mpitrain.cli import main

    os.environ.update(env or {})  # the shared job restores the environment afterwards
    out, err = io.StringIO(), io.StringIO()
    # The command caps BLAS threads for its ranks; the next body gets the job's again.
    threads = threadpool_limits(limits=None)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = main(list(argv))
    finally:
        threads.restore_original_limits()
    from mpi4py import MPI

    check = MPI.COMM_WORLD.Dup()
    try:
        _nothing_left_on_world(check)
    finally:
        check.Free()
    return status, out.getvalue(), err.getvalue()


def cli_in_job(ranks, argv, *, env=None, timeout=120, body=_main_body, body_args=()):
    """Run ``mpitrain argv...`` on ``ranks`` ranks of the shared job.

    Every rank must return the same exit status; the streams of all ranks
    are joined in rank order (as ``mpiexec`` joins them), so a line printed
    by two ranks shows twice.  ``body(comm, argv, env, *body_args)``, a
    module-level function that ends in :func:`run_main`, may change
    something around the command first (and undo it in ``finally``).
    """
    results = run_function(
        body,
        ranks,
        [str(a) for a in argv],
        dict(env or {}),
        *body_args,
        timeout=timeout,
    )
    statuses = [status for status, _, _ in results]
    assert len(set(statuses)) == 1, f"ranks exited differently: {statuses}"
    return InJobRun(
        f"mpitrain.cli.main({list(map(str, argv))}) on {ranks} ranks of the shared job",
        statuses[0],
        "".join(out for _, out, _ in results),
        "".join(err for _, _, err in results),
    )


__all__ = ["InJobRun", "cli_in_job", "run_main"]
