"""A rank that dies mid-fit ends the whole job, quickly and with a message.

Each test starts a 2-rank SVM fit long enough to be killed in the middle,
waits until the ranks are fitting, kills one rank with SIGKILL (what the
kernel's out-of-memory killer does), and checks that every process of the
job is gone within a bound, that the exit status is not 0, that the log
names what happened, and that no model file was left behind.

Under plain ``mpiexec`` (MPICH's hydra), and in a real Slurm job (see
test_slurm.py) under ``srun`` and under ``mpiexec`` inside the allocation.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from conftest import write_h5
from test_slurm import SLURM_SCRIPTS, job_env, job_field, slurm  # noqa: F401 - slurm is a fixture

from mpitrain.testing import find_mpiexec

#: Seconds within which the whole job must be gone after one rank is killed.
BOUND = 30.0
#: Seconds the job may take to reach the fit (start-up, imports, reading).
START_TIMEOUT = 120.0
#: What launchers tell each rank about its rank (MPICH/PMI, PMIx, Open MPI).
RANK_VARIABLES = (b"PMI_RANK", b"PMIX_RANK", b"OMPI_COMM_WORLD_RANK")


@pytest.fixture(scope="module")
def svm_data(tmp_path_factory) -> str:
    """Noisy labels: an RBF SVC keeps many support vectors and needs many seconds."""
    rng = np.random.default_rng(3)
    X = rng.normal(size=(20_000, 10))
    y = (X[:, :3].sum(axis=1) + rng.normal(scale=1.5, size=20_000) > 0).astype(np.int64)
    return write_h5(tmp_path_factory.mktemp("faults") / "svm.h5", X, y)


def rank_pids(marker: str) -> dict[int, int]:
    """``{MPI rank: pid}`` of the running MPI ranks whose command line contains ``marker``.

    A rank is told apart from its launcher (which has the same arguments) by
    the rank variable that the launcher gives it (PMI_RANK from hydra and
    Slurm's PMI-2).
    """
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if not any(marker.encode() in arg for arg in argv):
                continue
            environ = dict(
                item.split(b"=", 1)
                for item in (entry / "environ").read_bytes().split(b"\0")
                if b"=" in item
            )
            state = next(
                line
                for line in (entry / "status").read_text().splitlines()
                if line.startswith("State:")
            )
        except (OSError, StopIteration):
            continue  # ended meanwhile
        rank = next((environ[k] for k in RANK_VARIABLES if k in environ), None)
        if rank is not None and "zombie" not in state:
            found[int(rank)] = int(entry.name)
    return found


def shared_memory_of(pids) -> set[Path]:
    """The /dev/shm files that these processes have mapped.

    MPICH removes them in MPI_Finalize; a killed job leaves them behind,
    and a later job step with the same name (job id) would stumble on them.
    """
    files = set()
    for pid in pids:
        try:
            maps = Path(f"/proc/{pid}/maps").read_text()
        except OSError:
            continue
        for line in maps.splitlines():
            path = line.split(maxsplit=5)[5:]
            if (
                path
                and path[0].startswith("/dev/shm/")
                and not path[0].endswith("(deleted)")
            ):
                files.add(Path(path[0]))
    return files


def remove_files(paths: set[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


def wait_for_fit(log: Path, marker: str, running) -> dict[int, int]:
    """Wait until the log says the fit started and both ranks run; returns their pids."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        assert running(), (
            f"the job ended before the fit:\n{log.read_text() if log.exists() else ''}"
        )
        if log.exists() and "fitting SVC" in log.read_text():
            pids = rank_pids(marker)
            if len(pids) == 2:
                time.sleep(0.5)  # well inside the fit, not at its first instruction
                return pids
        time.sleep(0.2)
    pytest.fail(
        f"the fit did not start within {START_TIMEOUT:g} s:\n{log.read_text() if log.exists() else ''}"
    )


@pytest.mark.slow
@pytest.mark.parametrize("victim", [0, 1])
def test_killed_rank_ends_mpiexec_job(tmp_path, svm_data, victim):
    model = (
        tmp_path / f"model-{uuid.uuid4().hex[:8]}.skops"
    )  # unique: finds this job's ranks
    log = tmp_path / "job.log"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    command = [
        *find_mpiexec(),
        "-n",
        "2",
        sys.executable,
        "-m",
        "mpitrain",
        "train",
        svm_data,
        "--model",
        "svc",
        "--out",
        str(model),
    ]
    with open(log, "w") as out:
        job = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    leftovers: set[Path] = set()
    try:
        pids = wait_for_fit(log, str(model), lambda: job.poll() is None)
        leftovers = shared_memory_of(pids.values())
        os.kill(pids[victim], signal.SIGKILL)
        tic = time.monotonic()
        try:
            status = job.wait(timeout=BOUND)
        except subprocess.TimeoutExpired:
            pytest.fail(
                f"the job still ran {BOUND:g} s after rank {victim} was killed:\n{log.read_text()}"
            )
        seconds = time.monotonic() - tic
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()
        remove_files(leftovers)
    text = log.read_text()
    assert status != 0, text
    assert seconds < BOUND
    # MPICH's hydra: "BAD TERMINATION ... PID <pid> ... EXIT STRING: Killed (signal 9)".
    assert "BAD TERMINATION" in text and f"PID {pids[victim]} " in text, text
    assert "Killed (signal 9)" in text, text
    assert rank_pids(str(model)) == {}, "ranks outlived the job"
    assert not model.exists()


@pytest.mark.parametrize("launcher, victim", [("srun", 1), ("mpiexec", 0)])
def test_killed_rank_ends_slurm_job(slurm, tmp_path, svm_data, launcher, victim):  # noqa: F811
    model = tmp_path / f"model-{uuid.uuid4().hex[:8]}.skops"
    log = tmp_path / "job.out"
    env = job_env(
        DATA=svm_data,
        MODEL="svc",
        OUT=str(model),
        REPORT=str(tmp_path / "report.json"),
        LAUNCHER=launcher,
    )
    # Without --wait: this test watches the job itself, to time its end closely.
    submitted = subprocess.run(
        [
            "sbatch",
            "--parsable",
            f"--output={log}",
            "--ntasks=2",
            "--cpus-per-task=1",
            str(SLURM_SCRIPTS / "train.sbatch"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip().split(";")[0]

    def active() -> bool:
        """Slurm still lists the job as pending, running or completing."""
        listed = subprocess.run(
            ["squeue", "-h", "-j", job_id], capture_output=True, text=True, timeout=30
        )
        return bool(listed.stdout.strip())

    leftovers: set[Path] = set()
    try:
        pids = wait_for_fit(log, str(model), active)
        leftovers = shared_memory_of(pids.values())
        os.kill(pids[victim], signal.SIGKILL)
        tic = time.monotonic()
        while active() and time.monotonic() - tic < BOUND:
            time.sleep(0.2)
        seconds = time.monotonic() - tic
    finally:
        subprocess.run(["scancel", job_id], capture_output=True, timeout=30)
        if not active():
            remove_files(leftovers)
    text = log.read_text()
    assert seconds < BOUND, (
        f"the job still ran {BOUND:g} s after rank {victim} was killed:\n{text}"
    )
    assert job_field(job_id, "JobState") == "FAILED", text
    assert not job_field(job_id, "ExitCode").startswith("0:"), text
    if launcher == "srun":
        assert f"task {victim}: Killed" in text, text
    else:
        assert "BAD TERMINATION" in text and "Killed (signal 9)" in text, text
    assert (
        "mpitrain-train: FAILED" in text
        and "a rank was killed (SIGKILL: out of memory" in text
    ), text
    assert rank_pids(str(model)) == {}, "ranks outlived the job"
    assert not model.exists()
