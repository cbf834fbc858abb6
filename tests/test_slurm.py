"""The batch scripts in slurm/, submitted to a real Slurm (submitted, then watched with squeue).

A single-node Slurm runs on this machine (scripts/local_slurm.sh, from
Debian's slurm-wlm and munge); the session fixture starts it when needed and
skips these tests, with the reason, when it cannot (not root, packages
missing).  ``MPITRAIN_REQUIRE_SLURM=1`` (set by .ci/run) turns such a skip
into a failure, so CI cannot pass without running them.  The collector of
the sweep is also tested alone, without Slurm.

Jobs run with this Python's environment: its bin folder first on PATH,
copied into the job by sbatch (``--export=ALL``), as a user's activated
virtual environment would be.
"""

from __future__ import annotations

import csv
import functools
import json
import math
import os
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import regression_problem, write_h5
from sklearn.linear_model import Ridge

from mpitrain.model_io import load_model, save_model
from mpitrain.testing import mpirun

REPO = Path(__file__).resolve().parents[1]
SLURM_SCRIPTS = REPO / "slurm"
STARTER = REPO / "scripts" / "local_slurm.sh"
#: Seconds a submitted job may take before the test cancels it and fails.
JOB_TIMEOUT = 180
#: Variables that would decide threads (or the job) for us: the tests must see Slurm's choice.
_FOREIGN = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "MPITRAIN_MPIEXEC",
)


def _run(argv: list[str], timeout: float = 60, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, **kwargs
    )


@pytest.fixture(scope="session")
def slurm():
    """A single-node Slurm ready for jobs: running already, or started here (and stopped after)."""
    required = os.environ.get("MPITRAIN_REQUIRE_SLURM") == "1"

    def unavailable(reason: str):
        if required:
            pytest.fail(f"MPITRAIN_REQUIRE_SLURM=1, but {reason}", pytrace=False)
        pytest.skip(reason)

    sbin = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    missing = [
        t
        for t in ("sbatch", "srun", "squeue", "slurmctld", "slurmd", "munged")
        if shutil.which(t, path=sbin) is None
    ]
    if missing:
        unavailable(
            f"Slurm is not installed (no {', '.join(missing)}): apt-get install -y slurm-wlm munge"
        )
    status = _run(["bash", str(STARTER), "status"])
    started = False
    conf = None
    if status.returncode != 0 and (answering := answering_slurm()) is not None:
        # A Slurm that is not ours already answers: use it (starting a second
        # one would fail on its ports).
        conf = answering
    elif status.returncode != 0:
        if os.geteuid() != 0:
            unavailable(
                "no Slurm is running and starting one needs root: sudo scripts/local_slurm.sh start"
            )
        try:
            start = _run(["bash", str(STARTER), "start"], timeout=90)
        except subprocess.TimeoutExpired:
            unavailable("scripts/local_slurm.sh start did not finish within 90 s")
        if start.returncode != 0:
            unavailable(f"scripts/local_slurm.sh start failed:\n{start.stderr[-2000:]}")
        started = True
        status = _run(["bash", str(STARTER), "status"])
    if conf is None:
        # "running: config PATH": talk to this cluster even if /etc/slurm/slurm.conf is another's.
        conf = status.stdout.splitlines()[0].split("config ", 1)[1].strip()
    patch = pytest.MonkeyPatch()
    if conf:
        patch.setenv("SLURM_CONF", conf)
    yield
    patch.undo()
    if started:
        _run(["bash", str(STARTER), "stop"], timeout=90)


def answering_slurm() -> str | None:
    """The ``SLURM_CONF`` of a Slurm that already answers ``sinfo`` with a usable node, else ``None``.

    ``""`` when it answers through the default configuration (no
    ``SLURM_CONF`` needed).
    """
    conf = os.environ.get("SLURM_CONF", "")
    try:
        done = _run(["sinfo", "-h", "-o", "%T"], timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    usable = {"idle", "mixed", "allocated", "completing"}
    if done.returncode == 0 and usable & set(done.stdout.split()):
        return conf
    return None


def job_env(**knobs: str) -> dict[str, str]:
    """The environment sbatch copies into the job: this Python's bin first, plus the scripts' knobs."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in _FOREIGN
        and not (k.startswith(("SLURM_", "SBATCH_", "SRUN_")) and k != "SLURM_CONF")
    }
    env["PATH"] = os.pathsep.join(
        [str(Path(sys.executable).parent), env.get("PATH", "")]
    )
    env.update(knobs)
    return env


@dataclass
class Job:
    """A finished batch job."""

    job_id: str
    returncode: int
    stdout: str
    stderr: str


def sbatch_wait(
    args: list[str], cwd: Path, env: dict[str, str], timeout: float = JOB_TIMEOUT
) -> Job:
    """Submit with ``sbatch --parsable ARGS`` in ``cwd`` and wait for the job (all tasks of an array).

    Like ``sbatch --wait``, the return code is the highest exit status of the
    job's tasks; but ``sbatch --wait`` looks at the job only after 2, 8 and
    then every 32 s, so the tests watch ``squeue`` themselves.
    """
    name = f"mpitrain-test-{uuid.uuid4().hex[:10]}"
    command = ["sbatch", "--parsable", f"--job-name={name}", *args]
    done = _run(command, timeout=60, cwd=cwd, env=env)
    job_id = (
        done.stdout.strip().splitlines()[0].split(";")[0] if done.stdout.strip() else ""
    )
    assert job_id.isdigit(), f"sbatch did not submit: {done.stderr}"
    wait_for_job(job_id, timeout, env=env)
    codes = []
    for token in _run(["scontrol", "show", "job", job_id], env=env).stdout.split():
        if token.startswith("ExitCode="):
            status, signal = (int(v) for v in token.split("=", 1)[1].split(":"))
            codes.append(status or (128 + signal if signal else 0))
    assert codes, f"Slurm forgot job {job_id} (MinJobAge too short?)"
    return Job(job_id, max(codes), done.stdout, done.stderr)


#: Reasons of a pending job that waiting cannot cure: the job asks for more
#: than the partition or its nodes can ever give (e.g. a node configured with
#: too few CPUs, as local_slurm.sh once wrote under OMP_NUM_THREADS=1).
NEVER_SCHEDULED = (
    "PartitionConfig",
    "PartitionNodeLimit",
    "PartitionTimeLimit",
    "BadConstraints",
    "DependencyNeverSatisfied",
    "InvalidAccount",
    "InvalidQOS",
)


def pending_reason(job_id: str, env: dict[str, str] | None = None) -> str | None:
    """``None`` once Slurm no longer lists the job; else its state and reason (``"PENDING Resources"``)."""
    listed = _run(["squeue", "-h", "-j", job_id, "-o", "%T %r"], env=env).stdout.strip()
    return listed.splitlines()[0] if listed else None


def wait_for_job(
    job_id: str, timeout: float = JOB_TIMEOUT, env: dict[str, str] | None = None
) -> None:
    """Wait until Slurm no longer lists a job as pending or running.

    A job pending for a reason that waiting cannot cure fails the test at
    once, naming the reason, instead of at the timeout.
    """
    deadline = time.monotonic() + timeout
    while (listed := pending_reason(job_id, env)) is not None:
        state, _, reason = listed.partition(" ")
        if state == "PENDING" and reason.startswith(NEVER_SCHEDULED):
            _run(["scancel", job_id], env=env)
            nodes = _run(["sinfo", "-h", "-N", "-o", "%N %c CPUs %T"], env=env).stdout
            pytest.fail(
                f"job {job_id} can never run here (pending: {reason}); the nodes:\n{nodes}"
            )
        if time.monotonic() > deadline:
            _run(["scancel", job_id], env=env)
            pytest.fail(
                f"job {job_id} did not finish within {timeout} s ({state} {reason})"
            )
        time.sleep(0.3)


def job_field(job_id: str, field: str, env: dict[str, str] | None = None) -> str:
    """A field of ``scontrol show job`` (kept for MinJobAge after the job ends)."""
    for token in _run(["scontrol", "show", "job", job_id], env=env).stdout.split():
        if token.startswith(field + "="):
            return token.split("=", 1)[1]
    return ""


def process_titles() -> list[str]:
    """The command lines of this machine's processes (slurmstepd's show ``[jobid.step]``)."""
    titles = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                titles.append(
                    (entry / "cmdline")
                    .read_bytes()
                    .replace(b"\0", b" ")
                    .decode(errors="replace")
                )
            except OSError:
                continue  # ended meanwhile
    return titles


@pytest.fixture(scope="module")
def regression_data(tmp_path_factory):
    X, y = regression_problem(n=301, d=4, offset=3.0)
    return write_h5(tmp_path_factory.mktemp("slurm-data") / "train.h5", X, y), X, y


@dataclass
class CheckpointCase:
    """The SVC of the checkpoint tests and its uninterrupted 2-rank fit."""

    data: str
    X: np.ndarray
    uninterrupted: Path

    @functools.cached_property
    def model(self):
        """The uninterrupted model, loaded once."""
        return load_model(self.uninterrupted)

    @functools.cached_property
    def predictions(self) -> np.ndarray:
        """The uninterrupted model's predictions on X (seconds for 12,000 rows: made once)."""
        return self.model.predict(self.X)


#: One CheckpointCase per session: test_multinode imports the fixture, and
#: pytest would otherwise make it once per module.
_CHECKPOINT_CASE: list[CheckpointCase] = []


@pytest.fixture(scope="session")
def checkpoint_case(tmp_path_factory) -> CheckpointCase:
    """Noisy labels, an RBF SVC long enough to interrupt; fitted once, uninterrupted, by 2 ranks.

    The reference of every checkpoint test (here and in test_multinode.py):
    the same data, the same 2-rank computation, so it is fitted once.
    """
    if not _CHECKPOINT_CASE:
        folder = tmp_path_factory.mktemp("svc-checkpoint")
        rng = np.random.default_rng(5)
        X = rng.normal(size=(12_000, 6))
        y = (X[:, :2].sum(axis=1) + rng.normal(scale=1.0, size=12_000) > 0).astype(
            np.int64
        )
        data = write_h5(folder / "svm.h5", X, y)
        done = mpirun(
            2,
            [
                sys.executable,
                "-m",
                "mpitrain",
                "train",
                data,
                "--model",
                "svc",
                "--out",
                str(folder / "uninterrupted.skops"),
                "--quiet",
            ],
            timeout=JOB_TIMEOUT,
        )
        assert done.returncode == 0, done.stderr
        _CHECKPOINT_CASE.append(CheckpointCase(data, X, folder / "uninterrupted.skops"))
    return _CHECKPOINT_CASE[0]


# --------------------------------------------------------------------------
# train.sbatch


@pytest.mark.parametrize(
    "launcher, ntasks, cpus",
    [("srun", 2, 1), ("mpiexec", 2, 1), ("srun", 1, 2)],
    ids=["srun-2ranks", "mpiexec-2ranks", "srun-1rank-2threads"],
)
def test_train_job_fits_exactly_with_slurms_layout(
    slurm, tmp_path, regression_data, launcher, ntasks, cpus
):
    path, X, y = regression_data
    job = sbatch_wait(
        [
            f"--ntasks={ntasks}",
            f"--cpus-per-task={cpus}",
            str(SLURM_SCRIPTS / "train.sbatch"),
        ],
        cwd=tmp_path,
        env=job_env(DATA=path, MODEL="ridge", ARGS="--alpha 2.5", LAUNCHER=launcher),
    )
    log = tmp_path / f"mpitrain-train-{job.job_id}.out"
    assert log.exists(), (
        f"no job log in the submission directory: {sorted(os.listdir(tmp_path))}"
    )
    text = log.read_text()
    assert job.returncode == 0, text
    assert f"launcher {launcher}" in text and "mpitrain-train: done" in text
    # Outputs land in the job's working directory (the submission directory) by default.
    model = load_model(tmp_path / f"model-{job.job_id}.skops")
    report = json.loads((tmp_path / f"report-{job.job_id}.json").read_text())

    reference = Ridge(alpha=2.5).fit(X, y)
    assert type(model) is Ridge
    np.testing.assert_allclose(model.coef_, reference.coef_, rtol=1e-9)
    np.testing.assert_allclose(model.intercept_, reference.intercept_, rtol=1e-9)
    assert report["ranks"] == ntasks and report["rows"] == 301
    assert sum(r["rows"] for r in report["per_rank"]) == 301
    assert (
        report["layout"]["nodes"] == 1 and report["layout"]["ranks_per_node"] == ntasks
    )
    assert report["layout"]["threads_per_rank"] == cpus  # SLURM_CPUS_PER_TASK


@pytest.mark.parametrize("launcher", ["srun", "mpiexec"])
def test_evaluate_job_scores_and_predicts_in_row_order(
    slurm, tmp_path, regression_data, launcher
):
    import h5py
    from sklearn.metrics import mean_squared_error, r2_score

    path, X, y = regression_data
    model = Ridge(alpha=1.0).fit(X[:200], y[:200])
    save_model(model, tmp_path / "m.skops")
    job = sbatch_wait(
        [str(SLURM_SCRIPTS / "evaluate.sbatch")],
        cwd=tmp_path,
        env=job_env(
            MODEL_FILE=str(tmp_path / "m.skops"),
            DATA=path,
            PLOTS="plots",
            LAUNCHER=launcher,
        ),
    )
    text = (tmp_path / f"mpitrain-evaluate-{job.job_id}.out").read_text()
    assert job.returncode == 0, text
    assert "mpitrain-evaluate: done" in text
    metrics = json.loads((tmp_path / f"eval-{job.job_id}.json").read_text())["metrics"]
    assert metrics["r2"] == pytest.approx(r2_score(y, model.predict(X)), rel=1e-12)
    assert metrics["mse"] == pytest.approx(
        mean_squared_error(y, model.predict(X)), rel=1e-12
    )
    with h5py.File(tmp_path / f"predictions-{job.job_id}.h5", "r") as f:
        np.testing.assert_allclose(f["prediction"][:], model.predict(X), rtol=1e-12)
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == [
        "predicted_vs_actual.png",
        "residuals.png",
    ]


def test_train_job_reports_mpitrain_errors(slurm, tmp_path, regression_data):
    job = sbatch_wait(
        [str(SLURM_SCRIPTS / "train.sbatch")],
        cwd=tmp_path,
        env=job_env(DATA=regression_data[0], MODEL="ridge", ARGS="--C 2"),
    )
    text = (tmp_path / f"mpitrain-train-{job.job_id}.out").read_text()
    assert job.returncode == 1, text
    assert "mpitrain: error: --C does not apply to --model ridge" in text
    assert "mpitrain-train: FAILED (exit status 1): mpitrain reported an error" in text
    assert not list(tmp_path.glob("model-*"))


def sbatch_directives(script: Path) -> list[str]:
    """The options of a batch script's ``#SBATCH`` lines, as sbatch reads them.

    sbatch stops at the first line that is neither blank nor a comment;
    ``##SBATCH`` is a comment; text after the option (``# ...``) is not part
    of it.
    """
    options = []
    for line in script.read_text().splitlines()[1:]:
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            break
        if stripped.startswith("#SBATCH"):
            options.append(stripped[len("#SBATCH") :].split()[0])
    return options


def test_train_script_requeues_by_itself_and_signals_before_the_time_limit(slurm):
    """--requeue and --signal=B:USR1@T are active lines, and Slurm accepts them."""
    script = SLURM_SCRIPTS / "train.sbatch"
    options = sbatch_directives(script)
    assert "--requeue" in options, options
    signal = [o for o in options if o.startswith("--signal=")]
    assert len(signal) == 1 and signal[0].startswith("--signal=B:USR1@"), options
    assert int(signal[0].rsplit("@", 1)[1]) >= 60  # time to save before the limit
    # Submitted held (it never runs): Slurm took the script's own lines.
    submitted = _run(["sbatch", "--parsable", "--hold", str(script)], env=job_env())
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip().split(";")[0]
    try:
        assert job_field(job_id, "Requeue") == "1"
    finally:
        _run(["scancel", job_id])


@pytest.mark.parametrize(
    "signal_to, launcher",
    [("ranks", "srun"), ("script", "srun"), ("script", "mpiexec")],
    ids=["scancel-to-ranks", "time-limit-signal-srun", "time-limit-signal-mpiexec"],
)
def test_train_job_checkpoints_on_signal_requeues_and_resumes(
    slurm, tmp_path, checkpoint_case, signal_to, launcher
):
    """SIGUSR1 mid-fit: the ranks checkpoint (exit 75), the script requeues, the rerun resumes.

    ``ranks``: ``scancel --signal=USR1`` signals the job steps, the ranks
    under srun.  ``script``: ``scancel --batch --signal=USR1`` signals the
    batch script only, which is what ``--signal=B:USR1@T`` does before the
    time limit; the script must pass it on through the launcher.
    """
    data, X = checkpoint_case.data, checkpoint_case.X
    env = job_env(
        DATA=data,
        MODEL="svc",
        OUT="model.skops",
        CHECKPOINT="fit.ckpt",
        LAUNCHER=launcher,
    )
    submitted = _run(
        [
            "sbatch",
            "--parsable",
            "--output=train.out",
            str(SLURM_SCRIPTS / "train.sbatch"),
        ],
        cwd=tmp_path,
        env=env,
    )
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip().split(";")[0]
    log = tmp_path / "train.out"
    try:
        deadline = time.monotonic() + JOB_TIMEOUT
        while not (log.exists() and "fitting SVC" in log.read_text()):
            assert time.monotonic() < deadline, (
                f"the fit did not start:\n{log.read_text() if log.exists() else ''}"
            )
            time.sleep(0.2)
        # What Slurm does before the time limit with --signal=B:USR1@T (to the
        # script), or a user's scancel --signal=USR1 (to the ranks).
        target = ["--batch"] if signal_to == "script" else []
        assert _run(["scancel", *target, "--signal=USR1", job_id]).returncode == 0
        while job_field(job_id, "Restarts") in ("", "0"):
            assert time.monotonic() < deadline, (
                f"the job was not requeued:\n{log.read_text()}"
            )
            time.sleep(0.3)
        # Slurm holds a requeued job back for a while (minutes); this test
        # releases it at once, but only after the first run's job step has
        # ended completely on the node: the rerun reuses its step id.
        while job_field(job_id, "JobState") not in (
            "PENDING",
            "RUNNING",
            "COMPLETED",
            "FAILED",
        ) or any(f"[{job_id}." in argv for argv in process_titles()):
            assert time.monotonic() < deadline, (
                f"the first run did not end:\n{log.read_text()}"
            )
            time.sleep(0.2)
        # slurmd refuses to launch a job whose credential was revoked (the
        # requeue revokes the first run's, before its step ended) in the same
        # second: release the rerun in a later second than the step's end,
        # or it is killed as "already killed".
        ended = time.time()
        time.sleep(math.floor(ended) + 1.1 - ended)
        _run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"])
        wait_for_job(job_id)
    finally:
        _run(["scancel", job_id])
    text = log.read_text()
    assert job_field(job_id, "JobState") == "COMPLETED", text
    assert "checkpoint: SVC cascade" in text and "stopped by SIGUSR1" in text, text
    if signal_to == "script":
        assert "mpitrain-train: SIGUSR1: the ranks checkpoint to fit.ckpt" in text
    assert "requeueing job" in text and f"job {job_id} (restart 1)" in text, text
    assert (
        "resuming from the checkpoint fit.ckpt" in text
        and "mpitrain-train: done" in text
    ), text
    assert not (tmp_path / "fit.ckpt").exists()  # deleted once the model is written
    # The interrupted and resumed fit is the uninterrupted one.
    model, expected = load_model(tmp_path / "model.skops"), checkpoint_case.model
    np.testing.assert_array_equal(model.support_vectors_, expected.support_vectors_)
    np.testing.assert_allclose(
        model.dual_coef_, expected.dual_coef_, rtol=1e-12, atol=1e-12
    )
    np.testing.assert_array_equal(model.predict(X), checkpoint_case.predictions)


# --------------------------------------------------------------------------
# Threads per rank, seen by threadpoolctl inside the ranks

PROBE = """\
import json, os, sys
import numpy  # loads OpenBLAS with its default thread count
from threadpoolctl import threadpool_info
before = [p["num_threads"] for p in threadpool_info()]
from mpitrain.cli import main
status = main(["info", "--quiet", *sys.argv[2:]])
after = {p["internal_api"]: p["num_threads"] for p in threadpool_info()}
rank = os.environ.get("PMI_RANK", os.environ.get("SLURM_PROCID"))
with open(f"{sys.argv[1]}-rank{rank}.json", "w") as f:
    json.dump({"status": status, "before": before, "after": after,
               "cpus_per_task": os.environ.get("SLURM_CPUS_PER_TASK")}, f)
"""


def test_threads_per_rank_follow_cpus_per_task(slurm, tmp_path):
    (tmp_path / "probe.py").write_text(PROBE)
    # One allocation of 2 CPUs, four job steps: the step's --cpus-per-task
    # sets SLURM_CPUS_PER_TASK in its ranks, and --threads-per-rank wins over it.
    steps = "\n".join(
        [
            "set -e",
            "srun --ntasks=2 --cpus-per-task=1 python probe.py two-ranks",
            "srun --ntasks=1 --cpus-per-task=1 python probe.py one-cpu",
            "srun --ntasks=1 --cpus-per-task=2 python probe.py two-cpus",
            "srun --ntasks=1 --cpus-per-task=2 python probe.py forced --threads-per-rank 1",
        ]
    )
    job = sbatch_wait(
        ["--ntasks=2", "--cpus-per-task=1", "--output=probe.out", f"--wrap={steps}"],
        cwd=tmp_path,
        env=job_env(),
    )
    assert job.returncode == 0, (tmp_path / "probe.out").read_text()

    def seen(name: str, rank: int = 0) -> dict:
        return json.loads((tmp_path / f"{name}-rank{rank}.json").read_text())

    expected = {
        ("two-ranks", 0): 1,
        ("two-ranks", 1): 1,
        ("one-cpu", 0): 1,
        ("two-cpus", 0): 2,
        ("forced", 0): 1,
    }
    for (name, rank), threads in expected.items():
        probe = seen(name, rank)
        assert probe["status"] == 0
        assert probe["after"] and set(probe["after"].values()) == {threads}, (
            name,
            rank,
            probe,
        )
    assert (
        seen("one-cpu")["cpus_per_task"] == "1"
        and seen("two-cpus")["cpus_per_task"] == "2"
    )
    if (os.cpu_count() or 1) > 1:
        # One task with one CPU on a bigger node: without Slurm's value the
        # default would be all the cores, which BLAS used before the limit.
        assert max(seen("one-cpu")["before"]) > 1


# --------------------------------------------------------------------------
# sweep.sbatch + collect_sweep.py


def test_sweep_job_array_collects_one_table(slurm, tmp_path):
    rng = np.random.default_rng(4)
    X = rng.normal(size=(400, 5))
    coef = rng.uniform(-2, 2, size=5)
    y = X @ coef + 0.5 * rng.normal(size=400)
    train, valid = (X[:250], y[:250]), (X[250:], y[250:])
    write_h5(tmp_path / "train.h5", *train)
    write_h5(tmp_path / "valid.h5", *valid)
    alphas = [0.1, 30.0, 300.0]
    # A fourth configuration that mpitrain refuses: the table must list it as failed.
    configs = "\n".join([f"--alpha {a:g}" for a in alphas] + ["--degree 2"])

    job = sbatch_wait(
        ["--array=0-3", str(SLURM_SCRIPTS / "sweep.sbatch")],
        cwd=tmp_path,
        env=job_env(DATA="train.h5", VALID="valid.h5", CONFIGS=configs),
    )
    # The highest exit status of the array's tasks.
    assert job.returncode != 0
    sweep = tmp_path / f"sweep-{job.job_id}"
    for task in range(3):
        log = (tmp_path / f"mpitrain-sweep-{job.job_id}_{task}.out").read_text()
        assert "mpitrain-train: done" in log, log
        assert f"--alpha {alphas[task]:g}" in log
    failed_log = (tmp_path / f"mpitrain-sweep-{job.job_id}_3.out").read_text()
    assert "mpitrain reported an error" in failed_log

    collector = (sweep / "collector.jobid").read_text().strip()
    wait_for_job(collector)
    collected = (sweep / f"collect-{collector}.out").read_text()
    assert job_field(collector, "ExitCode").startswith("1:"), collected  # a task failed
    with open(sweep / "sweep.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4
    ok = [r for r in rows if r["status"] == "ok"]
    # Failures last, with what they tried.
    assert rows[3]["task"] == "3" and rows[3]["status"].startswith("failed")
    assert rows[3]["options"] == "--degree 2"
    assert sorted(float(r["alpha"]) for r in ok) == alphas

    scores = {}
    for alpha in alphas:
        reference = Ridge(alpha=alpha).fit(*train)
        scores[alpha] = reference.score(*valid)
        row = next(r for r in ok if float(r["alpha"]) == alpha)
        assert float(row["score"]) == pytest.approx(scores[alpha], rel=1e-9, abs=1e-12)
        assert (
            row["metric"] == "r2"
            and row["ranks"] == "2"
            and row["threads_per_rank"] == "1"
        )
        np.testing.assert_allclose(
            load_model(row["model_file"]).coef_, reference.coef_, rtol=1e-9
        )
    # Best validation score first, and the printed table says which.
    assert [float(r["alpha"]) for r in ok] == sorted(alphas, key=lambda a: -scores[a])
    best = max(alphas, key=lambda a: scores[a])
    assert f"best: task {alphas.index(best)} (--alpha {best:g}): r2" in collected
    assert "3 of 4 task(s) finished" in collected


def test_collect_sweep_lists_failures_and_sorts_by_score(tmp_path):
    """The collector alone (no Slurm): reports as mpitrain writes them, one task failed, one never ran."""
    rng = np.random.default_rng(8)
    X, y = rng.normal(size=(120, 3)), rng.normal(size=120)
    X[:, 0] += y  # something to learn
    write_h5(tmp_path / "valid.h5", X[80:], y[80:])
    sweep = tmp_path / "sweep-7"
    sweep.mkdir()
    scores = {}
    for task, alpha in enumerate([1000.0, 0.01]):
        model = Ridge(alpha=alpha).fit(X[:80], y[:80])
        scores[task] = model.score(X[80:], y[80:])
        save_model(model, sweep / f"task-{task}.skops")
        (sweep / f"task-{task}.options").write_text(f"--alpha {alpha:g}\n")
        (sweep / f"task-{task}.json").write_text(
            json.dumps(
                {
                    "params": {"alpha": alpha, "fit_intercept": True},
                    "estimator": "Ridge",
                    "ranks": 3,
                    "rows": 80,
                    "layout": {"nodes": 1, "ranks_per_node": 3, "threads_per_rank": 1},
                    "seconds": {"read": 0.5, "communicate": 0.25, "solve": 0.125},
                    "wall_seconds": 2.0,
                    "model_file": str(sweep / f"task-{task}.skops"),
                }
            )
        )
    (sweep / "task-2.options").write_text("--alpha -1\n")  # started, left no report

    done = _run(
        [
            sys.executable,
            str(SLURM_SCRIPTS / "collect_sweep.py"),
            str(sweep),
            "--tasks",
            "4",
            "--valid",
            str(tmp_path / "valid.h5"),
        ]
    )
    assert done.returncode == 1, done.stderr  # not every task finished
    with open(sweep / "sweep.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["task"] for r in rows] == [
        "1",
        "0",
        "2",
        "3",
    ]  # best r2 first, failures last
    assert scores[1] > scores[0]
    for row in rows[:2]:
        task = int(row["task"])
        assert (
            float(row["score"]) == scores[task] and row["metric"] == "r2"
        )  # every digit in the CSV
        assert row["ranks"] == "3" and row["fit_seconds"] == "0.375"
    assert (
        rows[0]["alpha"] == "0.01" and "fit_intercept" not in rows[0]
    )  # only what varies
    assert rows[2]["status"].startswith("failed") and rows[2]["options"] == "--alpha -1"
    assert rows[3]["status"] == "did not start"
    assert "best: task 1 (--alpha 0.01): r2" in done.stdout
    assert "2 of 4 task(s) finished" in done.stdout


def test_collect_sweep_never_writes_through_a_planted_link(tmp_path):
    """The table's temporary file cannot be redirected by a symbolic link planted beside it."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "collect_sweep", SLURM_SCRIPTS / "collect_sweep.py"
    )
    collector = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(collector)
    sweep = tmp_path / "sweep-9"
    sweep.mkdir()
    (sweep / "task-0.options").write_text("--alpha 1\n")  # started, left no report
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    # Links at every name a writer could predict: the old one had this pid in it.
    for name in (f".sweep.csv.{os.getpid()}.tmp", ".sweep.csv.tmp"):
        (sweep / name).symlink_to(victim)
    umask = os.umask(0o027)
    try:
        collector.collect(sweep, 1, None, "X", "y", sweep / "sweep.csv")
    finally:
        os.umask(umask)
    assert victim.read_text() == "precious\n"
    table = sweep / "sweep.csv"
    assert table.is_file() and not table.is_symlink()
    assert "did not start" in table.read_text() or "failed" in table.read_text()
    assert (table.stat().st_mode & 0o777) == 0o640  # the umask's, as open() would give
    leftovers = {p.name for p in sweep.iterdir() if p.name.endswith(".tmp")}
    assert leftovers == {f".sweep.csv.{os.getpid()}.tmp", ".sweep.csv.tmp"}


# --------------------------------------------------------------------------
# scripts/local_slurm.sh: root's state folder


def _starter_with_stub_tools(
    tmp_path: Path, state: Path
) -> subprocess.CompletedProcess:
    """``local_slurm.sh start`` with MPITRAIN_SLURM_DIR=state and do-nothing Slurm and munge tools.

    The stubs stand in for the daemons and clients, so nothing on the
    machine is started, stopped or configured: only the state folder matters.
    """
    stubs = tmp_path / "stub-bin"
    stubs.mkdir(exist_ok=True)
    for tool in (
        "munged",
        "munge",
        "unmunge",
        "slurmctld",
        "slurmd",
        "sinfo",
        "scontrol",
        "sbatch",
        "srun",
        "squeue",
        "scancel",
    ):
        (stubs / tool).write_text("#!/bin/sh\nexit 0\n")
        (stubs / tool).chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{stubs}:/usr/bin:/bin",
        "MPITRAIN_SLURM_DIR": str(state),
        "MPITRAIN_SLURM_START_TIMEOUT": "1",
        # Common on clusters; nproc alone would then count 1 CPU (issue 17).
        "OMP_NUM_THREADS": "1",
    }
    return _run(["bash", str(STARTER), "start"], env=env, timeout=60)


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0, reason="start needs root"
)
def test_local_slurm_refuses_a_state_folder_others_could_write(tmp_path):
    safe = tmp_path / "safe"
    safe.mkdir(mode=0o755)
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # like /tmp: anyone may create files in it
    foreign = tmp_path / "foreign"
    foreign.mkdir(mode=0o755)
    os.chown(foreign, 65534, 65534)  # another user's (nobody)
    link = tmp_path / "link"
    link.symlink_to(safe)
    for state, why in (
        (shared, "mode 1777"),
        (foreign, "owner nobody"),
        (link, "link"),
    ):
        done = _starter_with_stub_tools(tmp_path, state)
        assert done.returncode == 1, (why, done.stderr)
        assert (
            f"{state} must be a folder owned by root that no one else may write"
            in done.stderr
        ), (why, done.stderr)
        assert not (state / "slurm.conf").exists(), why
    if os.path.lexists("/etc/slurm/slurm.conf"):  # start then leaves it alone
        fresh = tmp_path / "fresh"
        done = _starter_with_stub_tools(tmp_path, fresh)
        assert "did not start" in done.stderr, done.stderr  # the stubs never answer
        modes = {
            p.name: p.stat().st_mode & 0o777
            for p in (fresh, *(fresh / d for d in ("state", "spool", "log", "run")))
        }
        assert modes == {
            "fresh": 0o755,
            "state": 0o700,
            "spool": 0o700,
            "log": 0o700,
            "run": 0o755,
        }
        conf = (fresh / "slurm.conf").read_text()
        assert conf.startswith("# written by mpitrain scripts/local_slurm.sh")
        # The CPUs this process may run on, as mpitrain.utils.threads counts them.
        assert f" CPUs={len(os.sched_getaffinity(0))} " in conf, conf


def test_a_job_that_can_never_run_fails_at_once_naming_why(slurm, tmp_path):
    """More nodes than the partition has: pending for good, so the wait fails now, with the reason."""
    nodes = len(_run(["sinfo", "-h", "-N", "-o", "%N"]).stdout.split())
    tic = time.monotonic()
    with pytest.raises(
        pytest.fail.Exception,
        match=r"can never run here \(pending: Partition(Config|NodeLimit)",
    ):
        sbatch_wait(
            [f"--nodes={nodes + 1}", "--wrap=true"], cwd=tmp_path, env=job_env()
        )
    assert time.monotonic() - tic < 30
