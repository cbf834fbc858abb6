"""Run test bodies under ``mpiexec`` from pytest; a small MPI test launcher.

The pytest process itself never initialises MPI.  A test launches
``mpiexec -n N`` as a child with a timeout; every rank runs the same
function and reports its outcome in a file; the parent collects them and
fails with the failing ranks, their tracebacks and the command to re-run.
A hung job is killed at the timeout and reported the same way.

Use it in your own tests too::

    # conftest.py
    pytest_plugins = ["mpitrain.testing"]

    # test_something.py
    from mpitrain.testing import run_function

    def body(comm, n):            # module level: the ranks import it
        return comm.allreduce(n)

    @pytest.mark.mpi(ranks=[1, 2, 3])
    def test_sum(mpi_ranks):
        assert run_function(body, mpi_ranks, 5) == [5 * mpi_ranks] * mpi_ranks

This module imports neither MPI nor scikit-learn at import time.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import pickle
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "MPIRun",
    "MPITestFailure",
    "RankOutcome",
    "find_mpiexec",
    "mpirun",
    "run_function",
]

#: Default seconds before a launched job counts as hung and is killed.
DEFAULT_TIMEOUT = float(os.environ.get("MPITRAIN_TEST_TIMEOUT", "120"))

# One BLAS thread per rank unless the caller says otherwise: tests run more
# ranks than cores, and oversubscribed BLAS threads only slow them down.
_QUIET_THREADS = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    # Open MPI refuses root (containers, CI) unless told; MPICH ignores these.
    "OMPI_ALLOW_RUN_AS_ROOT": "1",
    "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
}


class MPITestFailure(AssertionError):
    """A launched MPI job failed, timed out, or some rank did not report."""


@dataclass
class RankOutcome:
    """What one rank's function did: returned ``value`` or raised ``error``."""

    rank: int
    ok: bool
    value: Any = None
    error_type: str = ""
    error: str = ""
    traceback: str = ""


@dataclass
class MPIRun:
    """A finished (or killed) ``mpiexec`` job."""

    command: list[str]
    returncode: int | None
    stdout: str
    stderr: str
    timed_out: bool
    seconds: float
    outcomes: list[RankOutcome] = field(default_factory=list)

    @property
    def command_line(self) -> str:
        return shlex.join(self.command)


@functools.cache
def find_mpiexec() -> tuple[str, ...]:
    """The launcher command: ``$MPITRAIN_MPIEXEC``, else ``mpiexec`` beside Python, else on PATH."""
    if os.environ.get("MPITRAIN_MPIEXEC"):
        return tuple(shlex.split(os.environ["MPITRAIN_MPIEXEC"]))
    beside = Path(sys.executable).parent / "mpiexec"
    found = (
        str(beside)
        if beside.exists()
        else shutil.which("mpiexec") or shutil.which("mpirun")
    )
    if not found:
        raise MPITestFailure(
            "no mpiexec found: install an MPI (e.g. `pip install mpich`) or set MPITRAIN_MPIEXEC"
        )
    try:
        version = subprocess.run(
            [found, "--version"], capture_output=True, text=True, timeout=20
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        version = ""
    # Open MPI refuses more ranks than cores unless told; tests need that.
    return (
        (found, "--oversubscribe")
        if "Open MPI" in version or "OpenRTE" in version
        else (found,)
    )


def mpirun(
    ranks: int,
    argv: list[str],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    env: dict[str, str] | None = None,
    cwd: str | os.PathLike | None = None,
) -> MPIRun:
    """Run ``mpiexec -n ranks argv...`` and return its outcome; never hangs.

    A job still running after ``timeout`` seconds is killed with its whole
    process group, and returned with ``timed_out=True``.
    """
    import time

    command = [*find_mpiexec(), "-n", str(ranks), *argv]
    full_env = {**os.environ, **_QUIET_THREADS, **(env or {})}
    tic = time.monotonic()
    proc = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=full_env,
        cwd=cwd,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        timed_out = True
    return MPIRun(
        command,
        None if timed_out else proc.returncode,
        stdout,
        stderr,
        timed_out,
        time.monotonic() - tic,
    )


def run_function(
    func: Callable[..., Any],
    ranks: int,
    *args: Any,
    timeout: float = DEFAULT_TIMEOUT,
    env: dict[str, str] | None = None,
    **kwargs: Any,
) -> list[Any]:
    """Run ``func(comm, *args, **kwargs)`` on every rank of an ``mpiexec`` job.

    ``func`` must be defined at module level in a file (the ranks import it).
    Returns the per-rank return values, rank 0 first.  Raises
    :class:`MPITestFailure` if any rank raised (naming the ranks and showing
    each distinct traceback once), if the job hung, or if a rank did not
    report; the message includes the command that re-runs the job.
    """
    module_file = Path(sys.modules[func.__module__].__file__).resolve()
    workdir = Path(tempfile.mkdtemp(prefix="mpitrain-test-"))
    with open(workdir / "input.pkl", "wb") as f:
        pickle.dump((args, kwargs), f)
    run = mpirun(
        ranks,
        [
            sys.executable,
            "-m",
            "mpitrain.testing",
            str(module_file),
            func.__qualname__,
            str(workdir),
        ],
        timeout=timeout,
        env=env,
    )
    outcomes: list[RankOutcome | None] = []
    for rank in range(ranks):
        path = workdir / f"rank-{rank}.pkl"
        outcomes.append(pickle.loads(path.read_bytes()) if path.exists() else None)
    failed = [o for o in outcomes if o is not None and not o.ok]
    silent = [r for r, o in enumerate(outcomes) if o is None]
    if run.timed_out or failed or silent or run.returncode != 0:
        raise MPITestFailure(
            _describe_failure(run, failed, silent, ranks, timeout, workdir)
        )
    shutil.rmtree(workdir, ignore_errors=True)
    return [o.value for o in outcomes]  # type: ignore[union-attr]


def _describe_failure(
    run: MPIRun,
    failed: list[RankOutcome],
    silent: list[int],
    ranks: int,
    timeout: float,
    workdir: Path,
) -> str:
    lines = []
    if run.timed_out:
        lines.append(f"the job hung: killed after {timeout:g} s")
    by_error: dict[str, list[int]] = {}
    for o in failed:
        by_error.setdefault(o.traceback or f"{o.error_type}: {o.error}", []).append(
            o.rank
        )
    for text, where in by_error.items():
        lines.append(f"failed on ranks {where} of {ranks}:\n{text.rstrip()}")
    if silent:
        lines.append(f"ranks {silent} did not report (crashed, killed or hung)")
    if not lines:
        lines.append(f"mpiexec exited with status {run.returncode}")
    tail = "\n".join((run.stderr or "").strip().splitlines()[-15:])
    lines.append(f"stderr (last lines):\n{tail}" if tail else "stderr: (empty)")
    lines.append(f"re-run with:\n  {run.command_line}\n(input kept in {workdir})")
    return "\n".join(lines)


def _child_main(module_file: str, qualname: str, workdir: str) -> int:
    """Body of each rank of :func:`run_function` (``python -m mpitrain.testing``)."""
    from mpi4py import MPI

    from mpitrain.comm import quiet_barrier

    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    try:
        sys.path.insert(0, str(Path(module_file).parent))
        spec = importlib.util.spec_from_file_location(
            f"_mpitrain_test_{Path(module_file).stem}", module_file
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        func = module
        for part in qualname.split("."):
            func = getattr(func, part)
        with open(Path(workdir) / "input.pkl", "rb") as f:
            args, kwargs = pickle.load(f)
        outcome = RankOutcome(rank, True, func(comm, *args, **kwargs))
    except BaseException as exc:
        outcome = RankOutcome(
            rank, False, None, type(exc).__name__, str(exc), traceback.format_exc()
        )
    try:
        payload = pickle.dumps(outcome)
    except Exception as exc:
        payload = pickle.dumps(
            RankOutcome(
                rank, False, None, "PicklingError", f"cannot return value: {exc}"
            )
        )
    tmp = Path(workdir) / f".rank-{rank}.pkl"
    tmp.write_bytes(payload)
    tmp.replace(Path(workdir) / f"rank-{rank}.pkl")
    # A rank that skipped or added a collective shows up here as a hang.
    if not quiet_barrier(comm, timeout=60):
        sys.stderr.write(f"rank {rank}: the barrier after the test did not complete\n")
        comm.Abort(3)
    return 0 if outcome.ok else 1


# --------------------------------------------------------------------------
# pytest plugin: ``pytest_plugins = ["mpitrain.testing"]``


def pytest_configure(config) -> None:
    config.addinivalue_line(
        "markers", "mpi(ranks): run the test at each of these MPI rank counts"
    )


def pytest_generate_tests(metafunc) -> None:
    marker = metafunc.definition.get_closest_marker("mpi")
    if marker is None or "mpi_ranks" not in metafunc.fixturenames:
        return
    ranks = marker.kwargs.get("ranks", marker.args[0] if marker.args else (1, 2, 3, 4))
    metafunc.parametrize("mpi_ranks", list(ranks), ids=[f"{n}ranks" for n in ranks])


if __name__ == "__main__":
    # Run the importable module's copy, so outcomes unpickle as mpitrain.testing.RankOutcome.
    from mpitrain.testing import _child_main as child_main

    raise SystemExit(child_main(*sys.argv[1:4]))
