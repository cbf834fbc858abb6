"""Many nodes on one machine: a 2-node Slurm over real TCP (scripts/local_slurm.sh start --nodes 2).

Each node is a network namespace with its own hostname and address on a
bridge, running its own slurmd; jobs on a node run inside its namespace, so
ranks on different nodes talk over TCP and ranks on one node over shared
memory.  The session fixture uses that cluster when it runs, else starts it
(as root) and stops it afterwards; it runs beside the single-node cluster of
tests/test_slurm.py (its own folder and ports).  Without root or the
packages these tests are skipped with the reason; ``MPITRAIN_REQUIRE_SLURM=1``
turns the skip into a failure.

What runs here: the ``train`` batch script with ``--nodes=2`` under srun and
under mpiexec (an exact model against scikit-learn, and the report's node
layout); the cascade SVC, gradient-boosting and forest gold tests of their
own test files at 2 nodes x 2 ranks (their bodies, references and
tolerances, launched across the nodes by srun); an uneven 3 + 1 placement
(memory and threads per rank from each node's ranks); a node lost mid-job;
a node whose link is down; a checkpoint written on 2 nodes and resumed on 1.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import regression_problem, write_h5
from sklearn.linear_model import Ridge
from test_faults import remove_files, shared_memory_of
from test_slurm import (  # noqa: F401 - checkpoint_case is a fixture
    SLURM_SCRIPTS,
    STARTER,
    checkpoint_case,
    job_env,
    job_field,
    pending_reason,
    sbatch_wait,
)

from mpitrain.model_io import load_model

pytestmark = pytest.mark.slurm

NODES = ("mpitrain-node1", "mpitrain-node2")
#: Seconds a job step across the nodes may take.
STEP_TIMEOUT = 300
#: Seconds within which a job must be gone after one of its nodes was lost.
NODE_LOSS_BOUND = 60.0


def _run(argv, timeout: float = 60, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, **kwargs
    )


@dataclass
class Cluster:
    """The running multi-node cluster: its slurm.conf, and the environment that talks to it."""

    conf: str

    def env(self, **knobs: str) -> dict[str, str]:
        """:func:`test_slurm.job_env` pointed at this cluster (not the single-node one)."""
        return {**job_env(**knobs), "SLURM_CONF": self.conf}

    def run(self, argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
        return _run(argv, timeout=timeout, env=self.env())

    def node_states(self) -> dict[str, str]:
        out = self.run(["sinfo", "-h", "-N", "-o", "%N %T"]).stdout.split()
        return dict(zip(out[::2], out[1::2]))

    def restore(self) -> None:
        """Bring every node back (a killed slurmd restarted, a down node resumed)."""
        done = _run(["bash", str(STARTER), "start", "--nodes", "2"], timeout=120)
        assert done.returncode == 0, done.stderr


@pytest.fixture(scope="session")
def nodes():
    """A 2-node Slurm ready for jobs: running already, or started here (and stopped after)."""
    required = os.environ.get("MPITRAIN_REQUIRE_SLURM") == "1"

    def unavailable(reason: str):
        if required:
            pytest.fail(f"MPITRAIN_REQUIRE_SLURM=1, but {reason}", pytrace=False)
        pytest.skip(reason)

    sbin = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    missing = [
        t
        for t in ("sbatch", "srun", "slurmctld", "slurmd", "munged", "ip", "nsenter")
        if shutil.which(t, path=sbin) is None
    ]
    if missing:
        unavailable(
            f"missing {', '.join(missing)}: apt-get install -y slurm-wlm munge iproute2"
        )
    status = _run(["bash", str(STARTER), "status", "--nodes"])
    started = False
    if status.returncode != 0:
        if os.geteuid() != 0:
            unavailable(
                "no multi-node Slurm runs and starting one needs root (network "
                "namespaces): sudo scripts/local_slurm.sh start --nodes 2"
            )
        try:
            start = _run(["bash", str(STARTER), "start", "--nodes", "2"], timeout=120)
        except subprocess.TimeoutExpired:
            unavailable("scripts/local_slurm.sh start --nodes 2 took over 120 s")
        if start.returncode != 0:
            unavailable(
                f"scripts/local_slurm.sh start --nodes 2 failed:\n{start.stderr[-2000:]}"
            )
        started = True
        status = _run(["bash", str(STARTER), "status", "--nodes"])
    cluster = Cluster(status.stdout.splitlines()[0].split("config ", 1)[1].strip())
    found = set(cluster.node_states())
    if not set(NODES) <= found:
        unavailable(f"the multi-node Slurm has nodes {sorted(found)}, not {NODES}")
    yield cluster
    if started:
        _run(["bash", str(STARTER), "stop", "--nodes"], timeout=120)


def namespace_pids(node: str) -> list[int]:
    """The processes running inside a node's network namespace."""
    out = _run(["ip", "netns", "pids", node]).stdout.split()
    return [int(p) for p in out if p.isdigit()]


def process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def rank_pids_in(node: str) -> list[int]:
    """The MPI ranks (processes that the launcher gave a rank) in a node's namespace."""
    found = []
    for pid in namespace_pids(node):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if b"\0PMI_RANK=" in b"\0" + environ:
            found.append(pid)
    return found


def run_on_nodes(
    cluster: Cluster,
    func,
    *args,
    placement: tuple[str, ...] = ("--nodes=2", "--ntasks-per-node=2"),
    timeout: float = STEP_TIMEOUT,
    threads: bool = True,
    env: dict[str, str] | None = None,
    **kwargs,
) -> list:
    """``run_function`` across the nodes: ``srun --mpi=pmi2 PLACEMENT python -m mpitrain.testing ...``.

    The ranks run the body as a lone job of mpitrain.testing does (its
    outcome files), so the gold bodies of the other test files run here
    unchanged.  ``threads=True`` gives each rank one BLAS thread, as
    run_function does.
    """
    module_file = Path(sys.modules[func.__module__].__file__).resolve()
    workdir = Path(tempfile.mkdtemp(prefix="mpitrain-nodes-"))
    with open(workdir / "input.pkl", "wb") as f:
        pickle.dump((args, kwargs), f)
    name = f"mpitrain-test-{uuid.uuid4().hex[:10]}"
    command = [
        "srun",
        "--mpi=pmi2",
        "--kill-on-bad-exit=1",
        f"--job-name={name}",
        *placement,
        sys.executable,
        "-m",
        "mpitrain.testing",
        str(module_file),
        func.__qualname__,
        str(workdir),
    ]
    knobs = (
        {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        if threads
        else {}
    )
    knobs.update(env or {})
    try:
        done = _run(command, timeout=timeout, env=cluster.env(**knobs))
    except subprocess.TimeoutExpired:
        cluster.run(["scancel", f"--name={name}"])
        pytest.fail(f"{' '.join(command)} hung: cancelled after {timeout} s")
    outcomes = sorted(workdir.glob("rank-*.pkl"), key=lambda p: int(p.stem[5:]))
    results = [pickle.loads(p.read_bytes()) for p in outcomes]
    failed = [o for o in results if not o.ok]
    assert done.returncode == 0 and not failed and results, (
        f"{' '.join(command)}: exit status {done.returncode}\n"
        + "\n".join(o.traceback or str(o.error) for o in failed)
        + f"\nstderr:\n{done.stderr[-3000:]}"
    )
    shutil.rmtree(workdir, ignore_errors=True)
    return [o.value for o in results]


# --------------------------------------------------------------------------
# train.sbatch with --nodes=2: srun and mpiexec inside the allocation


@pytest.fixture(scope="module")
def regression_data(tmp_path_factory):
    X, y = regression_problem(n=301, d=4, offset=3.0)
    return write_h5(tmp_path_factory.mktemp("nodes-data") / "train.h5", X, y), X, y


@pytest.mark.parametrize(
    "launcher, per_node, cpus",
    [("srun", 2, 1), ("mpiexec", 2, 1), ("srun", 1, 2)],
    ids=["srun-2x2", "mpiexec-2x2", "srun-2x1-2threads"],
)
def test_train_job_on_two_nodes_is_exact_and_reports_the_layout(
    nodes, tmp_path, regression_data, launcher, per_node, cpus
):
    path, X, y = regression_data
    env = nodes.env(DATA=path, MODEL="ridge", ARGS="--alpha 2.5", LAUNCHER=launcher)
    ranks = 2 * per_node
    job = sbatch_wait(
        [
            "--nodes=2",
            f"--ntasks={ranks}",
            f"--ntasks-per-node={per_node}",
            f"--cpus-per-task={cpus}",
            str(SLURM_SCRIPTS / "train.sbatch"),
        ],
        cwd=tmp_path,
        env=env,
    )
    text = (tmp_path / f"mpitrain-train-{job.job_id}.out").read_text()
    assert job.returncode == 0, text
    assert f"{ranks} rank(s) on 2 node(s)" in text, text
    assert "mpitrain-train: done" in text, text
    model = load_model(tmp_path / f"model-{job.job_id}.skops")
    report = json.loads((tmp_path / f"report-{job.job_id}.json").read_text())
    reference = Ridge(alpha=2.5).fit(X, y)
    np.testing.assert_allclose(model.coef_, reference.coef_, rtol=1e-9)
    np.testing.assert_allclose(model.intercept_, reference.intercept_, rtol=1e-9)
    assert report["ranks"] == ranks
    assert sum(r["rows"] for r in report["per_rank"]) == 301
    assert report["layout"]["nodes"] == 2
    assert report["layout"]["ranks_per_node"] == per_node
    # SLURM_CPUS_PER_TASK with --ntasks-per-node, on every node.
    assert report["layout"]["threads_per_rank"] == cpus


def test_train_job_refuses_ranks_per_node_capped_by_its_own_ntasks(
    nodes, tmp_path, regression_data
):
    """--ntasks-per-node=2 on 2 nodes under the script's --ntasks=2 would run 2 ranks, not 4."""
    job = sbatch_wait(
        ["--nodes=2", "--ntasks-per-node=2", str(SLURM_SCRIPTS / "train.sbatch")],
        cwd=tmp_path,
        env=nodes.env(DATA=regression_data[0], MODEL="ridge"),
    )
    text = (tmp_path / f"mpitrain-train-{job.job_id}.out").read_text()
    assert job.returncode == 2, text
    assert "asks for 4 ranks, but --ntasks=2 caps the job" in text, text
    assert "submit with --ntasks=4 too" in text and not list(tmp_path.glob("model-*"))


# --------------------------------------------------------------------------
# The gold tests of the model families, at 2 nodes x 2 ranks


@pytest.mark.slow
@pytest.mark.parametrize(
    "module, test",
    [
        ("test_svm", "test_converged_cascade_is_scikit_learns_optimum"),
        ("test_boosting", "test_predictions_equal_one_process_xgboost_on_all_rows"),
        ("test_forest", "test_merged_forest_is_the_ranks_forests_averaged"),
    ],
    ids=["cascade-svc", "gradient-boosting", "random-forest"],
)
def test_gold_test_holds_across_nodes(nodes, monkeypatch, module, test):
    """The family's own gold test (body, reference, tolerances) with its ranks on 2 nodes."""
    import importlib

    tests = importlib.import_module(module)

    def across_nodes(func, ranks, *args, timeout=STEP_TIMEOUT, env=None, **kwargs):
        assert ranks == 4
        return run_on_nodes(nodes, func, *args, **kwargs)

    monkeypatch.setattr(tests, "run_function", across_nodes)
    getattr(tests, test)(4)


# --------------------------------------------------------------------------
# Uneven placement: memory and threads per rank from the rank's own node


def _placement_body(comm, need):
    import socket

    from mpitrain.comm import node_layout
    from mpitrain.data import memory_limit, ranks_sharing_memory
    from mpitrain.workflow import limit_threads

    layout = node_layout(comm)
    sharing = ranks_sharing_memory(need, comm)
    limit, source = memory_limit(sharing)
    return {
        "host": socket.gethostname(),
        "layout": layout,
        "sharing": sharing,
        "limit": limit,
        "source": source,
        "threads": limit_threads(None, layout["local_size"]),
        "cpus_per_task": os.environ.get("SLURM_CPUS_PER_TASK"),
    }


def _mem_available() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no MemAvailable")


@pytest.mark.parametrize("distribution", ["block", "arbitrary"])
def test_uneven_placement_takes_memory_and_threads_from_each_node(
    nodes, distribution, tmp_path
):
    """3 ranks on node 1, 1 on node 2: each rank's share is its node's, not the job's average."""
    if distribution == "block":
        # Slurm fills the first node's 4 CPUs before the second: 3 + 1.
        placement, env = ("--nodes=2", "--ntasks=4", "--distribution=block"), {}
    else:
        # Ranks 0, 2, 3 on node 1 and rank 1 on node 2, from a host file.
        # MPICH's shared-memory split puts each of these ranks alone; the
        # host names must win (comm.layout_from_hosts).
        hostfile = tmp_path / "hosts"
        hostfile.write_text("\n".join([NODES[0], NODES[1], NODES[0], NODES[0]]) + "\n")
        placement = ("--ntasks=4", "--distribution=arbitrary")
        env = {"SLURM_HOSTFILE": str(hostfile)}
    results = run_on_nodes(
        nodes,
        _placement_body,
        1 << 40,  # big enough that the ranks count who shares the node
        placement=placement,
        threads=False,
        env=env,
    )
    available = _mem_available()
    cores = len(
        os.sched_getaffinity(0)
    )  # the ranks are not pinned (TaskPlugin=task/none)
    hosts = [r["host"] for r in results]
    assert sorted(hosts.count(node) for node in NODES) == [1, 3], hosts
    crowded = max(NODES, key=hosts.count)
    for rank, got in enumerate(results):
        on_node = hosts.count(got["host"])
        assert got["cpus_per_task"] is None
        assert got["layout"]["nodes"] == 2 and got["layout"]["ranks_per_node"] == 3
        assert got["layout"]["local_size"] == on_node == got["sharing"]
        assert got["threads"] == max(1, cores // on_node), (rank, got)
        assert f"shared by {on_node} rank(s) on this node" in got["source"]
        # MemAvailable moves a little between the readings.
        assert got["limit"] == pytest.approx(available / on_node, rel=0.15), rank
    alone = next(r for r in results if r["host"] != crowded)
    shared = next(r for r in results if r["host"] == crowded)
    assert alone["limit"] / shared["limit"] == pytest.approx(3, rel=0.1)


# --------------------------------------------------------------------------
# Faults: a node lost mid-job, a node whose link is down


@pytest.fixture(scope="module")
def svm_data(tmp_path_factory) -> str:
    """Noisy labels: an RBF SVC fit long enough to lose a node in the middle."""
    rng = np.random.default_rng(3)
    X = rng.normal(size=(20_000, 10))
    y = (X[:, :3].sum(axis=1) + rng.normal(scale=1.5, size=20_000) > 0).astype(np.int64)
    return write_h5(tmp_path_factory.mktemp("nodes-faults") / "svm.h5", X, y)


def wait_until(condition, timeout: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            text = log.read_text() if log is not None and log.exists() else ""
            pytest.fail(f"{what} not within {timeout:g} s\n{text}")
        time.sleep(0.2)


@pytest.mark.slow
def test_node_lost_mid_job_ends_the_job_within_seconds(nodes, tmp_path, svm_data):
    """Every process of node 2's namespace killed mid-fit (its slurmd too): the job ends, nothing survives."""
    model = tmp_path / "model.skops"
    log = tmp_path / "job.out"
    env = nodes.env(
        DATA=svm_data,
        MODEL="svc",
        OUT=str(model),
        REPORT=str(tmp_path / "report.json"),
        LAUNCHER="srun",
    )
    submitted = _run(
        [
            "sbatch",
            "--parsable",
            "--nodes=2",
            "--ntasks=2",
            "--ntasks-per-node=1",
            f"--output={log}",
            str(SLURM_SCRIPTS / "train.sbatch"),
        ],
        env=env,
        cwd=tmp_path,
    )
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip().split(";")[0]
    leftovers: set[Path] = set()

    def fitting() -> bool:
        if pending_reason(job_id, env) is None:
            pytest.fail(f"the job ended before the fit:\n{log.read_text()}")
        return True

    try:
        wait_until(
            lambda: (
                fitting()
                and log.exists()
                and "fitting SVC" in log.read_text()
                and rank_pids_in(NODES[1])
                and rank_pids_in(NODES[0])
            ),
            180,
            "the fit did not start on both nodes",
            log,
        )
        time.sleep(0.5)  # inside the fit
        ranks = rank_pids_in(NODES[0]) + rank_pids_in(NODES[1])
        leftovers = shared_memory_of(ranks)
        victims = namespace_pids(NODES[1])
        assert "slurmd" in {process_name(p) for p in victims}
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        tic = time.monotonic()

        def run_over() -> bool:
            # train.sbatch has --requeue: Slurm puts the job back in the queue
            # after a node failure (PENDING, Restarts=1), or it ends failed.
            state = job_field(job_id, "JobState", env)
            return state not in ("RUNNING", "COMPLETING", "") and not (
                rank_pids_in(NODES[0])
                or "slurmstepd" in {process_name(p) for p in namespace_pids(NODES[0])}
            )

        wait_until(
            run_over,
            NODE_LOSS_BOUND,
            f"job {job_id} still ran after node {NODES[1]} was lost",
            log,
        )
        seconds = time.monotonic() - tic
        state = job_field(job_id, "JobState", env)
        restarts = job_field(job_id, "Restarts", env)
    finally:
        nodes.run(["scancel", job_id])
        remove_files(leftovers)
    text = log.read_text()
    print(
        f"job {job_id} over {seconds:.1f} s after node {NODES[1]} was lost "
        f"(then {state}, restarts {restarts})"
    )
    assert (state == "PENDING" and restarts == "1") or state in (
        "FAILED",
        "NODE_FAIL",
    ), (state, text)
    assert f"srun: error: Node failure on {NODES[1]}" in text, text
    assert "mpitrain-train: done" not in text
    assert not model.exists()
    assert namespace_pids(NODES[1]) == []  # nothing is left in the lost node
    assert {process_name(p) for p in namespace_pids(NODES[0])} == {"slurmd"}, text
    nodes.restore()
    assert set(nodes.node_states().values()) <= {"idle", "mixed"}


def test_node_with_its_link_down_is_named_without_a_hang(
    nodes, tmp_path, regression_data
):
    """Node 2's link is cut before the job starts: the job fails or waits naming mpitrain-node2."""
    veth = "mpitrain-v2"  # the host side of node 2's link (local_slurm.sh)
    log = tmp_path / "job.out"
    env = nodes.env(DATA=regression_data[0], MODEL="ridge", LAUNCHER="srun")
    down = _run(["ip", "link", "set", veth, "down"])
    assert down.returncode == 0, down.stderr
    job_id = ""
    try:
        tic = time.monotonic()
        submitted = _run(
            [
                "sbatch",
                "--parsable",
                "--nodes=2",
                "--ntasks=2",
                "--ntasks-per-node=1",
                f"--output={log}",
                str(SLURM_SCRIPTS / "train.sbatch"),
            ],
            env=env,
            cwd=tmp_path,
        )
        assert submitted.returncode == 0, submitted.stderr
        job_id = submitted.stdout.strip().split(";")[0]
        said: list[str] = []

        def named() -> bool:
            listed = pending_reason(job_id, env)
            said[:] = [listed or "", log.read_text() if log.exists() else ""]
            # The script's last line ends it too: Slurm lists the job as
            # COMPLETING until it marks the unreachable node down.
            return (
                listed is None
                or NODES[1] in said[0]
                or "mpitrain-train: FAILED" in said[1]
            )

        wait_until(named, 90, f"job {job_id} neither ended nor named {NODES[1]}", log)
        seconds = time.monotonic() - tic
    finally:
        _run(["ip", "link", "set", veth, "up"])
        if job_id:
            nodes.run(["scancel", job_id])
    print(
        f"link down: '{' | '.join(s.strip() for s in said if s)}' after {seconds:.1f} s"
    )
    assert NODES[1] in " ".join(said), said
    if said[1]:  # it ran (before Slurm marked the node down): the script names the node
        failed = [
            line for line in said[1].splitlines() if "mpitrain-train: FAILED" in line
        ]
        assert failed and NODES[1] in failed[0] and "cannot be reached" in failed[0], (
            said
        )
    assert not list(tmp_path.glob("model-*"))
    # Before the next test: the job off node 2 (its link is back, or Slurm
    # marks the node down), the node idle again.
    wait_until(
        lambda: pending_reason(job_id, env) is None, 60, f"job {job_id} still listed"
    )
    nodes.restore()


# --------------------------------------------------------------------------
# A checkpoint written on 2 nodes, resumed on 1


def test_checkpoint_from_two_nodes_resumes_on_one(nodes, tmp_path, checkpoint_case):  # noqa: F811
    """SIGUSR1 mid-fit on 2 nodes x 1 rank; then resumed on node 1 alone, by 2 ranks and by 1.

    The cascade saves the global support vectors and every rank's surviving
    rows (kept on rank 0), not per-node state: the resumed fit continues the
    2-rank computation wherever it runs, and ends with the model of the
    uninterrupted 2-rank fit (test_slurm's checkpoint_case: the same data,
    fitted once per session by 2 ranks under mpiexec).
    """
    data = checkpoint_case.data
    ckpt = tmp_path / "fit.ckpt"

    def train(placement: list[str], out: str, *extra: str, name: str = "x"):
        # Not --kill-on-bad-exit: the first rank to exit 75 after saving
        # would have srun terminate the others (status 143, not 75).
        return [
            "srun",
            "--mpi=pmi2",
            f"--job-name={name}",
            *placement,
            sys.executable,
            "-m",
            "mpitrain",
            "train",
            data,
            "--model",
            "svc",
            "--out",
            str(tmp_path / out),
            *extra,
        ]

    one_node = ["--nodes=1", f"--nodelist={NODES[0]}"]
    name = f"mpitrain-test-{uuid.uuid4().hex[:10]}"
    log = tmp_path / "interrupted.log"
    with open(log, "w") as out:
        interrupted = subprocess.Popen(
            train(
                ["--nodes=2", "--ntasks=2", "--ntasks-per-node=1"],
                "interrupted.skops",
                "--checkpoint",
                str(ckpt),
                "--checkpoint-every",
                "1",
                name=name,
            ),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=nodes.env(OMP_NUM_THREADS="1"),
        )
    try:
        wait_until(
            lambda: ckpt.exists() or interrupted.poll() is not None,
            240,
            "no checkpoint was written",
            log,
        )
        nodes.run(["scancel", "--signal=USR1", f"--name={name}"])
        status = interrupted.wait(timeout=120)
    finally:
        if interrupted.poll() is None:
            nodes.run(["scancel", f"--name={name}"])
            interrupted.wait()
    text = log.read_text()
    assert status == 75 and ckpt.exists(), text  # saved and stopped
    saved = ckpt.read_bytes()

    models = {}
    for ranks in (2, 1):
        ckpt.write_bytes(saved)  # as the interrupted run left it
        resumed = nodes.run(
            train(
                [*one_node, f"--ntasks={ranks}"],
                f"resumed-{ranks}.skops",
                "--checkpoint",
                str(ckpt),
                "--resume",
            ),
            timeout=STEP_TIMEOUT,
        )
        assert resumed.returncode == 0, resumed.stderr
        assert "resuming from the checkpoint" in resumed.stderr, resumed.stderr
        assert f"across {ranks} rank(s)" in resumed.stderr, resumed.stderr
        models[ranks] = load_model(tmp_path / f"resumed-{ranks}.skops")
    expected = checkpoint_case.model
    for ranks, model in models.items():
        np.testing.assert_array_equal(
            model.support_vectors_, expected.support_vectors_, err_msg=str(ranks)
        )
        # 1 rank sums the dual objective in another order (docs/checkpoints.md).
        np.testing.assert_allclose(
            model.dual_coef_, expected.dual_coef_, rtol=1e-9, atol=1e-12
        )
