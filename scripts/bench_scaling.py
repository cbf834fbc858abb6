#!/usr/bin/env python
"""Scaling benchmark of mpitrain's strategies: strong and weak scaling, time per phase, memory per rank.

For each model family it runs ``mpiexec -n P python -m mpitrain train FILE
--model ... --report R.json --quiet`` as whole processes, timed from
outside, at every rank count, on data written by ``mpitrain make-data``:

- **strong scaling**: the same file at every rank count;
- **weak scaling**: a fixed number of rows per rank, i.e. files of
  ``n, 2n, 4n, ...`` rows for ``1, 2, 4, ...`` ranks.

Families (``--models``): ``ridge`` (exact least squares from streamed
sufficient statistics), ``logistic`` (exact, L-BFGS with the optimiser on
rank 0), ``average`` (ridge, coefficient averaging), ``sgd`` (SGD, several
averaging rounds; not run by default) and ``svc`` (the cascade kernel SVM, on
smaller data: kernel SVMs grow quadratically with the rows).  Rank counts
above the machine's cores (times threads per rank) are run anyway and
flagged ``oversubscribed``.

Each run's entry has the wall seconds measured from outside and its
``phases``, derived from the run's report (``mpitrain train --report``):

- ``read``, ``compute``, ``communicate``, ``solve``: the report's
  ``seconds``, which hold each phase's largest value over the ranks (report
  keys ``read``, ``local_compute``, ``communicate``, ``solve``).  Where the
  report has only an undivided ``fit`` (models fitted from rows held in
  memory), all of it is counted as ``compute``, and ``phase_sources`` says
  so.  Reading runs on a background thread and overlaps computing (exact
  least squares) or the import of scikit-learn (the others), so phases may
  add up to more than the wall time; ``overlap_seconds`` says by how much.
- ``wait``: the report's own ``wait``/``idle`` phase if it has one, else the
  rest of rank 0's in-process time (the report's ``wall_seconds``) after the
  phases the report measured: waiting for other ranks and for the
  scikit-learn import, agreements, checks, saving the model (never below
  zero).  Phases a report may add (``import``, ``save``) keep their names.
- ``startup``: outside wall minus the in-process wall: launching the ranks,
  starting Python, importing mpitrain, ``MPI_Init``, writing the report,
  ending the job.

So the phases of an entry add up to its ``seconds`` (unless phases overlap).
``phases_per_rank`` has the same split for every rank (``wait`` from rank 0's
wall).  Identical runs (the weak-scaling run whose file is the strong-scaling
file, at the same rank count) are measured once and listed in both.

Output: a JSON file (default ``bench-results/bench_scaling.json``) in the
schema of :func:`mpitrain.plots.plot_scaling` plus details, and a PNG plot
next to it::

    python scripts/bench_scaling.py                     # defaults: a few minutes on 2 cores
    python scripts/bench_scaling.py --quick             # tiny sizes, 1 and 2 ranks (smoke test)
    python scripts/bench_scaling.py --models ridge,logistic --ranks 1,2,4,8 --rows 4000000 --repeats 5
    python scripts/bench_scaling.py --cost-model        # print the cost model's predictions, run nothing

``--cost-model`` prints the predictions of the communication-cost model of
``docs/performance.md`` (same formulas, machine constants as options).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "Family",
    "FAMILIES",
    "PHASES",
    "derive_phases",
    "run_benchmark",
    "CostParameters",
    "Cost",
    "allreduce_cost",
    "bcast_cost",
    "reduce_cost",
    "predict",
    "stops_scaling",
    "cost_model_table",
    "main",
]

# ---------------------------------------------------------------------------
# The benchmark


@dataclass(frozen=True)
class Family:
    """One model family: how to train it and on what data."""

    name: str
    label: str
    strategy: str
    kind: str  # make-data kind
    train_args: tuple[str, ...]
    svm_sizes: bool = False  # uses --svm-rows / --svm-features


FAMILIES: dict[str, Family] = {
    "ridge": Family(
        "ridge",
        "ridge (exact)",
        "exact sufficient statistics",
        "regression",
        ("--model", "ridge", "--alpha", "1.0"),
    ),
    "logistic": Family(
        "logistic",
        "logistic (exact)",
        "exact L-BFGS",
        "classification",
        ("--model", "logistic", "--C", "1.0"),
    ),
    "average": Family(
        "average",
        "ridge (average)",
        "coefficient averaging",
        "regression",
        ("--model", "ridge", "--alpha", "1.0", "--strategy", "average"),
    ),
    "sgd": Family(
        "sgd",
        "sgd (average, 5 rounds)",
        "iterative averaging",
        "regression",
        ("--model", "sgd", "--rounds", "5"),
    ),
    "svc": Family(
        "svc",
        "svc (cascade)",
        "cascade",
        "classification",
        ("--model", "svc", "--C", "1.0"),
        svm_sizes=True,
    ),
}
DEFAULT_MODELS = ("ridge", "logistic", "average", "svc")

#: The phases of an entry, in plotting order (``startup`` comes last, as an extra).
PHASES = ("read", "compute", "communicate", "solve", "wait")

# Report ``seconds`` keys -> phase.  Later mpitrain versions may report more.
_REPORT_PHASE = {
    "read": "read",
    "local_compute": "compute",
    "compute": "compute",
    "communicate": "communicate",
    "solve": "solve",
    "refit": "solve",
    "wait": "wait",
    "idle": "wait",
    "idle_wait": "wait",
}
# Undivided fit time, used as ``compute`` only when nothing splits it.
_UNDIVIDED = ("fit", "fit_and_average")
# Parts of the in-process time a report may measure that are none of the five phases
# (waiting for an import, saving the model): kept under their own names, so "wait"
# holds only what nothing measured.
_OWN_PHASES = ("import", "save")

QUICK = {
    "rows": 2_000,
    "features": 5,
    "svm_rows": 300,
    "svm_features": 4,
    "ranks": "1,2",
    "repeats": 1,
}
DEFAULTS = {
    "rows": 800_000,
    "features": 50,
    "svm_rows": 10_000,
    "svm_features": 10,
    "ranks": "1,2,4",
    "repeats": 3,
}


class RunFailed(RuntimeError):
    """A benchmark subprocess failed or timed out."""


def machine_cores() -> int:
    """Cores this process may run on (the affinity mask where there is one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def derive_phases(report: Mapping[str, Any], outside_seconds: float) -> dict[str, Any]:
    """Split one run's time into phases from its ``mpitrain train`` report. Pure.

    Parameters
    ----------
    report : mapping
        The JSON report: ``seconds`` (phase -> largest seconds over ranks),
        ``wall_seconds`` (rank 0's in-process time) and ``per_rank`` (each
        rank's ``seconds``).
    outside_seconds : float
        Wall time of the whole ``mpiexec`` job, measured from outside.

    Returns
    -------
    dict
        ``phases`` ({read, compute, communicate, solve, wait, startup}),
        ``phase_sources`` (where each came from), ``overlap_seconds`` (how
        much the measured phases exceed rank 0's in-process time: they ran
        concurrently) and ``phases_per_rank``.
    """
    inside = float(report.get("wall_seconds") or 0.0)
    phases, sources = _map_phases(report.get("seconds") or {})
    measured = sum(phases.values())  # wait counts here only when the report measured it
    if "wait" not in sources:
        phases["wait"] = max(0.0, inside - measured)
        sources["wait"] = (
            "report wall_seconds minus the phases the report measured, at least 0"
        )
    phases["startup"] = max(0.0, outside_seconds - inside)
    sources["startup"] = (
        "outside wall - report wall_seconds (launch, imports, MPI_Init, report, exit)"
    )
    per_rank = []
    for rank in report.get("per_rank") or []:
        mine, mine_sources = _map_phases(rank.get("seconds") or {})
        if "wait" not in mine_sources:
            mine["wait"] = max(0.0, inside - sum(mine.values()))
        per_rank.append({"rank": rank.get("rank"), **mine})
    return {
        "phases": phases,
        "phase_sources": sources,
        "overlap_seconds": max(0.0, measured - inside),
        "phases_per_rank": per_rank,
    }


def _map_phases(seconds: Mapping[str, Any]) -> tuple[dict[str, float], dict[str, str]]:
    """Report seconds -> the five phases (and any of ``_OWN_PHASES``), and which keys each came from."""
    phases = {p: 0.0 for p in PHASES}
    keys: dict[str, list[str]] = {}
    for key, value in seconds.items():
        phase = key if key in _OWN_PHASES else _REPORT_PHASE.get(key)
        if (
            phase is not None
            and isinstance(value, (int, float))
            and not isinstance(value, bool)
        ):
            phases.setdefault(phase, 0.0)
            phases[phase] += float(value)
            keys.setdefault(phase, []).append(key)
    sources = {
        phase: " + ".join(f"report {k}" for k in ks) for phase, ks in keys.items()
    }
    if not keys.keys() & {"compute", "communicate", "solve"}:
        undivided = next(
            (k for k in _UNDIVIDED if isinstance(seconds.get(k), (int, float))), None
        )
        if undivided is not None:
            phases["compute"] = float(seconds[undivided])
            sources["compute"] = (
                f"report {undivided} (undivided: includes communicating, solving and "
                "waiting, which the report does not separate)"
            )
    return phases, sources


def _model_details(report: Mapping[str, Any], model_file: Path) -> dict[str, Any]:
    """Iterations, support vectors and the like, for the cost model's inputs."""
    details: dict[str, Any] = {}
    if report.get("cascade"):
        cascade = report["cascade"]
        details["cascade"] = {
            k: cascade.get(k)
            for k in (
                "passes",
                "layers",
                "arity",
                "support_vectors",
                "support_vectors_per_layer",
                "violators",
                "bytes_moved",
                "stopped_because",
            )
        }
    if report.get("averaging"):
        details["averaging"] = report["averaging"]
    try:
        from mpitrain.model_io import load_model

        model = load_model(model_file)
        final = model[-1] if hasattr(model, "steps") else model
        n_iter = getattr(final, "n_iter_", None)
        if n_iter is not None:
            details["n_iter"] = int(
                max(n_iter) if hasattr(n_iter, "__len__") else n_iter
            )
        if hasattr(final, "n_support_"):
            details["support_vectors"] = int(sum(final.n_support_))
    except Exception as exc:
        details["model_error"] = f"{type(exc).__name__}: {exc}"
    return details


def _mpiexec() -> list[str]:
    from mpitrain.testing import find_mpiexec  # handles Open MPI's --oversubscribe

    return list(find_mpiexec())


def _run(
    command: list[str], timeout: float
) -> tuple[float, subprocess.CompletedProcess]:
    """Run a command, timed from outside; its whole process group is killed at ``timeout``."""
    env = {
        **os.environ,
        "OMPI_ALLOW_RUN_AS_ROOT": "1",
        "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
    }
    tic = time.perf_counter()
    proc = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise RunFailed(
            f"timed out after {timeout:g} s: {shlex.join(command)}"
        ) from None
    seconds = time.perf_counter() - tic
    done = subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)
    if proc.returncode != 0:
        tail = "\n".join(stderr.strip().splitlines()[-10:])
        raise RunFailed(f"exit status {proc.returncode}: {shlex.join(command)}\n{tail}")
    return seconds, done


def _data_path(directory: Path, kind: str, rows: int, features: int) -> Path:
    """Where the data set ``kind`` of ``rows`` x ``features`` lives.  Pure."""
    return directory / f"{kind}_{rows}x{features}.h5"


#: Runs ``mpitrain make-data`` once per argv given as JSON, in one process:
#: the same command and files, without starting Python for each file.
_MAKE_DATA = """
import json, sys
from mpitrain.cli import main
for argv in json.loads(sys.argv[1]):
    status = main(argv)
    if status:
        sys.exit(status)
"""


def _write_data_files(wanted: list[tuple[Path, str, int, int]], timeout: float) -> None:
    """Write each (path, kind, rows, features) not yet present with ``mpitrain make-data``."""
    commands = []
    for path, kind, rows, features in dict.fromkeys(wanted):
        if not path.exists():
            print(f"  writing {path.name} ...", flush=True)
            commands.append(
                [
                    "make-data",
                    kind,
                    str(path),
                    "--rows",
                    str(rows),
                    "--features",
                    str(features),
                    "--seed",
                    "0",
                    "--quiet",
                ]
            )
    if commands:
        _run([sys.executable, "-c", _MAKE_DATA, json.dumps(commands)], timeout)


def _warm(path: Path) -> None:
    """Read the file once, so every run starts with it in the page cache."""
    with open(path, "rb") as f:
        while f.read(64 << 20):
            pass


def _evict(path: Path) -> None:
    """Drop the file's pages from the page cache (no root needed), so the next read is cold."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


@dataclass
class Plan:
    """What to run: families, sizes, rank counts, repeats."""

    models: list[str]
    rows: int
    features: int
    svm_rows: int
    svm_features: int
    ranks: list[int]
    repeats: int
    weak_rows: int | None = None  # rows per rank; default rows / max(ranks)
    svm_weak_rows: int | None = None
    threads_per_rank: str = "1"
    cold: bool = False
    timeout: float = 1800.0
    experiments: tuple[str, ...] = ("strong", "weak")

    def sizes(self, family: Family) -> tuple[int, int, int]:
        """(strong rows, features, weak rows per rank) of ``family``."""
        if family.svm_sizes:
            return (
                self.svm_rows,
                self.svm_features,
                self.svm_weak_rows or max(1, self.svm_rows // max(self.ranks)),
            )
        return (
            self.rows,
            self.features,
            self.weak_rows or max(1, self.rows // max(self.ranks)),
        )


def run_benchmark(
    plan: Plan, workdir: Path, data_dir: Path | None = None
) -> dict[str, Any]:
    """Run every (experiment, family, rank count, repeat) and return the result document.

    Runs are interleaved (repeat by repeat) so that a slow spell of the
    machine spreads over all configurations instead of spoiling one.
    """
    cores = machine_cores()
    data_dir = data_dir or workdir
    data_dir.mkdir(parents=True, exist_ok=True)
    runs_dir = workdir / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    threads = (
        []
        if plan.threads_per_rank == "auto"
        else ["--threads-per-rank", plan.threads_per_rank]
    )

    # (experiment, family, ranks) -> file; identical (file, ranks) runs are measured once.
    configs: list[tuple[str, Family, int, Path, int, int]] = []
    for experiment in plan.experiments:
        for name in plan.models:
            family = FAMILIES[name]
            rows, features, weak_rows = plan.sizes(family)
            for ranks in plan.ranks:
                total = rows if experiment == "strong" else weak_rows * ranks
                path = _data_path(data_dir, family.kind, total, features)
                configs.append((experiment, family, ranks, path, total, features))
    _write_data_files(
        [(path, f.kind, total, d) for _, f, _, path, total, d in configs], plan.timeout
    )

    load_start = os.getloadavg()
    if load_start[0] > 0.5 * cores:
        print(
            f"note: load average {load_start[0]:.1f} on {cores} cores: other work is running, "
            "timings will be noisy",
            flush=True,
        )
    entries: dict[str, list[dict]] = {e: [] for e in plan.experiments}
    failures: list[dict] = []
    mpi_library = None
    for repeat in range(plan.repeats):
        measured: dict[tuple[str, Path, int], dict | None] = {}
        for experiment, family, ranks, path, total, _features in configs:
            key = (family.name, path, ranks)
            if key not in measured:
                measured[key] = None
                try:
                    measured[key] = _measure(
                        family, ranks, path, runs_dir, threads, plan, cores
                    )
                except RunFailed as exc:
                    failures.append(
                        {
                            "experiment": experiment,
                            "model": family.label,
                            "ranks": ranks,
                            "repeat": repeat,
                            "error": str(exc),
                        }
                    )
                    print(
                        f"  FAILED {family.label} on {ranks} rank(s): {exc}", flush=True
                    )
            run = measured[key]
            if run is None:
                continue
            mpi_library = mpi_library or run.pop("_mpi_library", None)
            run.pop("_mpi_library", None)
            entry = {
                "experiment": experiment,
                "model": family.label,
                "family": family.name,
                "strategy": family.strategy,
                "repeat": repeat,
                **run,
            }
            entries[experiment].append(entry)
            print(
                f"[{repeat + 1}/{plan.repeats}] {experiment:6s} {family.label:24s} {ranks} rank(s)"
                f"{' (oversubscribed)' if entry['oversubscribed'] else '':17s} {total:>10,} rows  "
                f"{entry['seconds']:7.2f} s  " + _phase_text(entry["phases"]),
                flush=True,
            )

    result: dict[str, Any] = {
        "benchmark": "mpitrain scaling: strong (fixed data) and weak (fixed rows per rank) scaling per strategy",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"
        ),
        **{e: entries[e] for e in plan.experiments},
        "machine": {
            "cores": cores,
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "mpiexec": shlex.join(_mpiexec()),
            "mpi_library": mpi_library,
            "load_average_start": list(load_start),
            "load_average_end": list(os.getloadavg()),
        },
        "config": {
            **asdict(plan),
            "weak_rows_per_rank": {n: plan.sizes(FAMILIES[n])[2] for n in plan.models},
            "cache": "cold (evicted before each run)"
            if plan.cold
            else "warm (read before each run)",
        },
        "phase_definitions": {
            "seconds": "wall time of the whole mpiexec job, measured from outside",
            "read, compute, communicate, solve": "the report's seconds: each phase's largest value over the "
            "ranks (keys read, local_compute, communicate, solve); a report with only 'fit' counts it all "
            "as compute (see phase_sources)",
            "wait": "the report's wait phase if any, else rank 0's in-process wall (report wall_seconds) "
            "minus the phases the report measured, at least 0: load imbalance, the scikit-learn import, "
            "checks, saving the model",
            "startup": "outside wall minus in-process wall: launch, imports, MPI_Init, report, exit",
            "overlap_seconds": "how much the phases exceed the in-process wall (reading overlaps computing)",
        },
        "summary": summarise(entries),
        "failures": failures,
    }
    return result


def _measure(
    family: Family,
    ranks: int,
    path: Path,
    runs_dir: Path,
    threads: list[str],
    plan: Plan,
    cores: int,
) -> dict[str, Any]:
    """One ``mpiexec -n ranks mpitrain train`` run: wall seconds, phases, memory."""
    report_file = runs_dir / "report.json"
    model_file = runs_dir / "model.skops"
    for stale in (report_file, model_file):
        stale.unlink(missing_ok=True)
    if plan.cold:
        _evict(path)
    else:
        _warm(path)
    command = [
        *_mpiexec(),
        "-n",
        str(ranks),
        sys.executable,
        "-m",
        "mpitrain",
        "train",
        str(path),
        *family.train_args,
        "--out",
        str(model_file),
        "--report",
        str(report_file),
        "--quiet",
        *threads,
    ]
    seconds, _ = _run(command, plan.timeout)
    report = json.loads(report_file.read_text())
    split = derive_phases(report, seconds)
    threads_per_rank = int((report.get("layout") or {}).get("threads_per_rank") or 1)
    return {
        "ranks": ranks,
        "seconds": seconds,
        "phases": split["phases"],
        "oversubscribed": ranks * threads_per_rank > cores,
        "peak_memory_bytes_per_rank": report.get("peak_memory_bytes_per_rank"),
        "slice_bytes_per_rank": [
            r.get("slice_bytes") for r in report.get("per_rank") or []
        ],
        "rows": report.get("rows"),
        "features": report.get("features"),
        "rows_per_rank": [r.get("rows") for r in report.get("per_rank") or []],
        # Rank 0's share of the partition (train's default: below 1 for exact least squares).
        "root_share": report.get("root_share"),
        "threads_per_rank": threads_per_rank,
        "phase_sources": split["phase_sources"],
        "overlap_seconds": split["overlap_seconds"],
        "phases_per_rank": split["phases_per_rank"],
        "report_wall_seconds": report.get("wall_seconds"),
        "report_seconds": report.get("seconds"),
        "data": path.name,
        "command": shlex.join(command),
        "details": _model_details(report, model_file),
        "_mpi_library": report.get("mpi_library"),
    }


def _phase_names(phases: Mapping[str, float]) -> list[str]:
    """The five phases, then any others (``startup``, ``import``, ...), in a stable order."""
    return [
        *PHASES,
        *sorted(set(phases) - set(PHASES), key=lambda p: (p != "startup", p)),
    ]


def _phase_text(phases: Mapping[str, float]) -> str:
    return " ".join(
        f"{name} {phases[name]:.2f}" for name in _phase_names(phases) if name in phases
    )


def summarise(
    entries: Mapping[str, Sequence[Mapping[str, Any]]],
) -> dict[str, list[dict]]:
    """Medians over repeats per (experiment, model, ranks), with speedup and efficiency. Pure.

    Strong scaling: speedup = T(smallest P) / T(P), efficiency = speedup ×
    smallest P / P.  Weak scaling: efficiency = T(smallest P) / T(P).
    """
    summary: dict[str, list[dict]] = {}
    for experiment, items in entries.items():
        groups: dict[tuple[str, int], list[Mapping[str, Any]]] = {}
        for e in items:
            groups.setdefault((e["model"], e["ranks"]), []).append(e)
        rows: list[dict] = []
        base: dict[str, tuple[int, float]] = {}
        for (model, ranks), runs in sorted(
            groups.items(), key=lambda kv: (kv[0][0], kv[0][1])
        ):
            median = statistics.median(r["seconds"] for r in runs)
            names = _phase_names({p: 0.0 for r in runs for p in r["phases"]})
            phases = {
                p: statistics.median(r["phases"].get(p, 0.0) for r in runs)
                for p in names
            }
            base.setdefault(model, (ranks, median))
            p0, t0 = base[model]
            row = {
                "model": model,
                "ranks": ranks,
                "repeats": len(runs),
                "median_seconds": median,
                "median_phases": phases,
                "oversubscribed": any(r["oversubscribed"] for r in runs),
                "max_peak_memory_bytes_per_rank": max(
                    max(r["peak_memory_bytes_per_rank"] or [0]) for r in runs
                ),
            }
            if experiment == "strong":
                row["speedup"] = t0 / median
                row["efficiency"] = t0 / median * p0 / ranks
            else:
                row["efficiency"] = t0 / median
            rows.append(row)
        summary[experiment] = rows
    return summary


def _print_summary(result: Mapping[str, Any]) -> None:
    for experiment, rows in result["summary"].items():
        print(f"\n{experiment} scaling (medians)")
        print(
            f"  {'model':24s} {'ranks':>5s} {'seconds':>8s} {'speedup':>8s} {'effic.':>7s}  phases"
        )
        for row in rows:
            speedup = f"{row['speedup']:.2f}" if "speedup" in row else ""
            print(
                f"  {row['model']:24s} {row['ranks']:>4d}{'*' if row['oversubscribed'] else ' '} "
                f"{row['median_seconds']:8.2f} {speedup:>8s} {row['efficiency']:7.2f}  "
                + _phase_text(row["median_phases"])
            )
    if any(r["oversubscribed"] for rows in result["summary"].values() for r in rows):
        print("  * oversubscribed: more ranks x threads than cores")


def _plot(result: Mapping[str, Any], png: Path) -> str:
    """Draw the result with :func:`mpitrain.plots.plot_scaling`."""
    from mpitrain.plots import plot_scaling

    return plot_scaling(result, png)


# ---------------------------------------------------------------------------
# The communication-cost model (docs/performance.md)


@dataclass(frozen=True)
class CostParameters:
    """Machine constants of the cost model; the defaults are those docs/performance.md states."""

    alpha: float = 2e-6  # s per message between nodes (InfiniBand: 1-5 µs)
    beta: float = 10e9  # bytes/s of one link (InfiniBand EDR/HDR: 10-25 GB/s)
    gamma: float = 5e9  # bytes/s of summing float64 buffers in a reduction
    flops: float = (
        20e9  # flop/s of one rank in dense BLAS-3 (syrk, Cholesky), one thread
    )
    memory_bandwidth: float = (
        5e9  # bytes/s one rank streams from memory with its whole node busy
    )
    optimizer_step: float = 50e-6  # s of scipy's L-BFGS-B per iteration on rank 0 ...
    optimizer_step_per_dof: float = 0.45e-6  # ... plus this per coefficient
    python_call: float = (
        20e-6  # s of Python overhead per collective evaluation, every rank
    )
    sgd_epoch: float = (
        1.4e-8  # s per (row · feature) of one SGD epoch (scikit-learn, Cython)
    )
    svm_fit: float = 1.5e-9  # s per (rows² · features) of one libsvm fit (RBF kernel)
    kernel_entry: float = (
        20e-9  # s per kernel entry beyond its 2d flops (exp, norms, BLAS-2 products)
    )
    read_per_rank: float = 1e9  # bytes/s one rank reads from the parallel file system
    read_aggregate: float = 100e9  # bytes/s the file system gives all ranks together
    small_collectives: int = (
        20  # latency-bound collectives of every `mpitrain train` job
    )


@dataclass(frozen=True)
class Cost:
    """One collective (or a sum of them) on its busiest rank: seconds, bytes through it, message steps."""

    seconds: float = 0.0
    bytes: float = 0.0
    messages: float = 0.0

    def __add__(self, other: Cost) -> Cost:
        return Cost(
            self.seconds + other.seconds,
            self.bytes + other.bytes,
            self.messages + other.messages,
        )

    def __mul__(self, times: float) -> Cost:
        return Cost(self.seconds * times, self.bytes * times, self.messages * times)


# MPICH's default algorithm switch points (bytes).
_ALLREDUCE_SHORT = 2048
_REDUCE_SHORT = 2048
_BCAST_SHORT = 12288
_BCAST_MEDIUM = 524288


def _log2(P: int) -> int:
    return math.ceil(math.log2(P)) if P > 1 else 0


def allreduce_cost(
    nbytes: float, P: int, c: CostParameters, algorithm: str = "mpich"
) -> Cost:
    """An Allreduce of ``nbytes`` over ``P`` ranks. Pure.

    ``mpich`` (its default choice): recursive doubling up to 2 KiB (``log P``
    steps, each the whole buffer), else Rabenseifner's reduce-scatter +
    allgather (``2 log P`` steps, ``2 (P-1)/P`` of the buffer).  ``ring``:
    ``2 (P-1)`` steps of ``1/P`` of the buffer.  ``tree``: a binomial Reduce
    then Bcast (``2 log P`` steps, each the whole buffer).
    """
    if P <= 1:
        return Cost()
    L, share = _log2(P), (P - 1) / P
    if algorithm == "ring":
        return Cost(
            2 * (P - 1) * c.alpha
            + 2 * share * nbytes / c.beta
            + share * nbytes / c.gamma,
            2 * share * nbytes,
            2 * (P - 1),
        )
    if algorithm == "tree":
        return Cost(
            2 * L * (c.alpha + nbytes / c.beta) + L * nbytes / c.gamma,
            2 * L * nbytes,
            2 * L,
        )
    if nbytes <= _ALLREDUCE_SHORT:
        return Cost(L * (c.alpha + nbytes / c.beta + nbytes / c.gamma), L * nbytes, L)
    return Cost(
        2 * L * c.alpha + 2 * share * nbytes / c.beta + share * nbytes / c.gamma,
        2 * share * nbytes,
        2 * L,
    )


def reduce_cost(nbytes: float, P: int, c: CostParameters) -> Cost:
    """A Reduce to one root: MPICH's binomial tree, or reduce-scatter + gather above 2 KiB. Pure."""
    if P <= 1:
        return Cost()
    L, share = _log2(P), (P - 1) / P
    if nbytes <= _REDUCE_SHORT:
        return Cost(L * (c.alpha + nbytes / c.beta + nbytes / c.gamma), L * nbytes, L)
    return Cost(
        2 * L * c.alpha + 2 * share * nbytes / c.beta + share * nbytes / c.gamma,
        2 * share * nbytes,
        2 * L,
    )


def bcast_cost(nbytes: float, P: int, c: CostParameters) -> Cost:
    """A Bcast: MPICH's binomial tree below 12 KiB, else scatter + allgather (ring above 512 KiB). Pure."""
    if P <= 1:
        return Cost()
    L, share = _log2(P), (P - 1) / P
    if nbytes < _BCAST_SHORT:
        return Cost(L * (c.alpha + nbytes / c.beta), L * nbytes, L)
    if nbytes < _BCAST_MEDIUM and P & (P - 1) == 0:
        return Cost(
            2 * L * c.alpha + 2 * share * nbytes / c.beta, 2 * share * nbytes, 2 * L
        )
    return Cost(
        (L + P - 1) * c.alpha + 2 * share * nbytes / c.beta,
        2 * share * nbytes,
        L + P - 1,
    )


def allgather_cost(nbytes_per_rank: float, P: int, c: CostParameters) -> Cost:
    """An Allgather of ``nbytes_per_rank`` from every rank. Pure.

    MPICH's default: recursive doubling (Bruck's algorithm for other rank
    counts) while the gathered total is below 512 KiB, ``log P`` steps;
    a ring of ``P - 1`` steps above.  Every rank receives ``(P-1)/P`` of the
    total either way.
    """
    if P <= 1:
        return Cost()
    L, total = _log2(P), nbytes_per_rank * P
    received = (P - 1) / P * total
    steps = L if total < _BCAST_MEDIUM else P - 1
    return Cost(steps * c.alpha + received / c.beta, received, steps)


def _small_collectives(P: int, c: CostParameters) -> Cost:
    """The job's checks and agreements: a few bytes each, ``log P`` latency each."""
    return allreduce_cost(8.0, P, c) * c.small_collectives


def predict(
    strategy: str, P: int, c: CostParameters | None = None, **size: Any
) -> dict[str, float]:
    """Predicted seconds per phase of one ``mpitrain train`` fit on ``P`` ranks. Pure.

    ``strategy`` and its sizes (the derivations are in docs/performance.md):

    - ``"exact"``: ``n`` rows, ``d`` features (one target).
    - ``"lbfgs"``: ``n``, ``d``, ``k`` loss evaluations (about the iterations).
    - ``"average"``: ``n``, ``d``, ``rounds``; ``local="ridge"`` (one local
      fit) or ``"sgd"`` (one epoch per round).
    - ``"cascade"``: ``n``, ``d``, ``s`` global support vectors, ``passes``
      (the first plus feedback passes, the last one checked for
      convergence), ``violators`` per feedback pass (default ``s / 10``),
      ``arity`` (default 2).

    Returns
    -------
    dict
        ``read`` (the rank's rows from the file system), ``compute`` (work
        that shrinks with P), ``communicate``, ``serial`` (work that does
        not shrink with P: rank 0's solve, optimiser or refits, or each
        rank's own d×d solve), ``total`` (all but ``read``), and on the
        busiest rank ``bytes`` (sent or received) and ``messages`` (message
        steps, each paying the latency), and ``memory`` (bytes of rows each
        rank holds).
    """
    c = c or CostParameters()
    n, d = float(size["n"]), int(size["d"])
    rows = n / P
    comm = _small_collectives(P, c)
    serial = 0.0
    if strategy == "exact":
        # Rows [x, y, 1] add to a (d+2)² Gram by syrk; the pooled scatter matrix of [x, y] is
        # (d+1)², full (not packed), after a reduction of the d+3 counts, weights and means.
        compute = rows * (d + 2) ** 2 / c.flops
        comm += allreduce_cost(8.0 * (d + 3), P, c) + allreduce_cost(
            8.0 * (d + 1) ** 2, P, c
        )
        comm += bcast_cost(8.0 * (d + 1), P, c)  # rank 0's coefficients and intercept
        # Rank 0: Cholesky (d³/3 flops), then two np.linalg.solve with the triangular factor,
        # which factorise it again by LU (2d³/3 each): 5d³/3 in all.
        serial = 5 * d**3 / 3 / c.flops
    elif strategy == "lbfgs":
        k = float(size.get("k", 100))
        dof = d + 1
        # Each evaluation reads the rank's X twice (X w, then Xᵀ r): memory-bound.
        compute = k * (16.0 * rows * d / c.memory_bandwidth + c.python_call)
        # Per evaluation: Bcast [command, x] from rank 0, Reduce [loss, gradient, failure flag] to it.
        comm += (
            bcast_cost(8.0 * (dof + 1), P, c) + reduce_cost(8.0 * (dof + 2), P, c)
        ) * k
        comm += bcast_cost(8.0 * dof, P, c)  # the final point
        serial = k * (
            c.optimizer_step + c.optimizer_step_per_dof * dof
        )  # rank 0's L-BFGS; others wait
    elif strategy == "average":
        rounds = float(size.get("rounds", 1))
        if size.get("local", "ridge") == "sgd":
            compute = rounds * rows * d * c.sgd_epoch
        else:
            compute = rows * (d + 1) ** 2 / c.flops
            serial = (
                d**3 / 3
            ) / c.flops  # every rank solves its own d×d system: not shrinking with P
        nbytes = 8.0 * (
            d + 2
        )  # Σ w·coef, Σ w·intercept, Σ w: Reduce then Bcast (bit-identical)
        comm += (reduce_cost(nbytes, P, c) + bcast_cost(nbytes, P, c)) * rounds
        comm += reduce_cost(8.0, P, c) + bcast_cost(
            8.0, P, c
        )  # the total weight, first
    elif strategy == "cascade":
        s, arity = float(size["s"]), int(size.get("arity", 2))
        passes = int(size.get("passes", 2))
        violators = float(size.get("violators", 0.1 * s))
        row = 8.0 * (d + 3)  # [x, label, weight, id]
        fraction = min(
            1.0, s / n
        )  # support vectors per row, assumed the same in every subset
        compute = c.svm_fit * rows**2 * d  # layer 0: every rank fits its own rows
        group_rows = rows
        while group_rows < n * (1 - 1e-12) and P > 1:
            group_rows = min(n, group_rows * arity)
            union = (
                fraction * group_rows
            )  # the leader merges its group's survivors and refits
            serial += c.svm_fit * union**2 * d
            # comm.merge_rows_to_leaders: the sizes are known from the last layer's
            # Allgather, every rank agrees on the leaders' buffers (a small Allreduce),
            # then the arity-1 members' rows land in the leader's buffer.  After the
            # refit every rank agrees (a small Iallreduce), and the survivors' counts
            # travel in one Allgather (the report's sum, the next merge's sizes).
            comm += Cost(
                (arity - 1) * c.alpha + union * (arity - 1) / arity * row / c.beta,
                union * (arity - 1) / arity * row,
                arity - 1,
            )
            comm += allreduce_cost(8.0, P, c) * 2 + allgather_cost(8.0, P, c)
        model = (
            8.0 * s * (d + 2)
        )  # the pickled model: support vectors, dual coefficients
        entry = (
            2 * d / c.flops + c.kernel_entry
        )  # blocked BLAS kernels (mpitrain.svm.decision_values)
        for number in range(1, passes + 1):
            if number > 1:
                # A feedback pass (comm.gatherv_rows): the row counts in one Allgather,
                # rank 0's buffer agreed (a small Allreduce), then one Gatherv in which
                # rank 0 receives every rank's violators; rank 0 refits them with the
                # global support vectors; the counts are summed (Reduce + Bcast).
                comm += allgather_cost(8.0, P, c) + allreduce_cost(8.0, P, c)
                comm += Cost(
                    (P - 1) * c.alpha + violators * row / c.beta,
                    violators * row,
                    P - 1,
                )
                comm += reduce_cost(8.0, P, c) + bcast_cost(8.0, P, c)
                serial += c.svm_fit * (s + violators) ** 2 * d
            # After every pass: the fit agreed (a small Iallreduce), the model (pickled),
            # then its support vectors as rows (comm.bcast_rows_quietly: the shape, every
            # rank's buffer agreed, the rows); every rank tests its rows against them and
            # sums a share of the dual objective's s² entries (Reduce + Bcast).
            comm += allreduce_cost(8.0, P, c) + bcast_cost(model, P, c)
            comm += bcast_cost(16.0, P, c) + allreduce_cost(8.0, P, c)
            comm += bcast_cost(s * row, P, c)
            comm += reduce_cost(16.0, P, c) + bcast_cost(16.0, P, c)
            compute += entry * (rows * s + s * s / P)
    else:
        raise ValueError(f"unknown strategy {strategy!r}")
    nbytes = 8.0 * n * d
    read = max(nbytes / P / c.read_per_rank, nbytes / c.read_aggregate)
    return {
        "read": read,
        "compute": compute,
        "communicate": comm.seconds,
        "serial": serial,
        "total": compute + comm.seconds + serial,
        "bytes": comm.bytes,
        "messages": comm.messages,
        "memory": nbytes / P,
    }


def stops_scaling(
    strategy: str, c: CostParameters | None = None, limit: int = 1 << 30, **size: Any
) -> int:
    """The smallest P at which the parts that do not shrink with P reach those that do. Pure.

    Doubling, then bisection between the last two powers of two.
    """

    def saturated(P: int) -> bool:
        t = predict(strategy, P, c, **size)
        return t["communicate"] + t["serial"] >= t["compute"]

    high = 2
    while high < limit and not saturated(high):
        high *= 2
    low = high // 2
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if saturated(middle) else (middle, high)
    return high


def _format_seconds(t: float) -> str:
    if t >= 100:
        return f"{t:,.0f} s"
    if t >= 1:
        return f"{t:.1f} s"
    if t >= 1e-3:
        return f"{t * 1e3:.1f} ms"
    return f"{t * 1e6:.0f} µs"


def _format_bytes(b: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if b < 1000 or unit == "TB":
            return f"{b:.0f} {unit}" if unit == "B" else f"{b:.1f} {unit}"
        b /= 1000
    return f"{b:.1f} TB"


#: The examples of docs/performance.md: (title, strategy, sizes).
COST_EXAMPLES: list[tuple[str, str, dict[str, Any]]] = [
    ("exact least squares", "exact", {"n": 1e9, "d": 100}),
    ("exact least squares", "exact", {"n": 1e9, "d": 1000}),
    ("exact L-BFGS, k = 100", "lbfgs", {"n": 1e9, "d": 100, "k": 100}),
    ("exact L-BFGS, k = 100", "lbfgs", {"n": 1e9, "d": 1000, "k": 100}),
    ("averaging, ridge", "average", {"n": 1e9, "d": 100}),
    ("averaging, ridge", "average", {"n": 1e9, "d": 1000}),
    (
        "averaging, SGD, 10 rounds",
        "average",
        {"n": 1e9, "d": 100, "rounds": 10, "local": "sgd"},
    ),
    ("cascade SVM, 2 passes", "cascade", {"n": 1e6, "d": 100, "s": 1e5, "passes": 2}),
]


def _size_label(size: Mapping[str, Any]) -> str:
    def number(v: float) -> str:
        return (
            f"10^{round(math.log10(v))}"
            if v >= 1e4 and math.log10(v).is_integer()
            else f"{v:g}"
        )

    return ", ".join(
        f"{k} = {number(v)}" for k, v in size.items() if k in ("n", "d", "s")
    )


def cost_model_table(
    c: CostParameters | None = None, ranks: Sequence[int] = (64, 1024)
) -> str:
    """The predictions of docs/performance.md as Markdown tables. Pure."""
    c = c or CostParameters()
    lines = [
        "| strategy | size | P | data per rank | read | compute | communicate "
        "| serial | total (no read) | bytes, busiest rank | messages |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for title, strategy, size in COST_EXAMPLES:
        for P in ranks:
            t = predict(strategy, P, c, **size)
            lines.append(
                f"| {title} | {_size_label(size)} | {P:,} | {_format_bytes(t['memory'])} | "
                f"{_format_seconds(t['read'])} | {_format_seconds(t['compute'])} | "
                f"{_format_seconds(t['communicate'])} | {_format_seconds(t['serial'])} | "
                f"{_format_seconds(t['total'])} | {_format_bytes(t['bytes'])} | {t['messages']:,.0f} |"
            )
    lines += [
        "",
        "| strategy | size | stops scaling at P ≈ | rows per rank there |",
        "|---|---|---:|---:|",
    ]
    for title, strategy, size in COST_EXAMPLES:
        P = stops_scaling(strategy, c, **size)
        lines.append(
            f"| {title} | {_size_label(size)} | {P:,} | {size['n'] / P:,.0f} |"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# Command line


def _ranks(text: str) -> list[int]:
    values = sorted({int(v) for v in text.split(",") if v.strip()})
    if not values or values[0] < 1:
        raise argparse.ArgumentTypeError(f"need positive rank counts, got {text!r}")
    return values


def _models(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [n for n in names if n not in FAMILIES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown model(s) {unknown}; choose from {', '.join(FAMILIES)}"
        )
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"tiny sizes for a smoke test: {', '.join(f'{k}={v}' for k, v in QUICK.items())}",
    )
    parser.add_argument(
        "--models",
        type=_models,
        default=None,
        help=f"comma-separated families from {', '.join(FAMILIES)} "
        f"(default {','.join(DEFAULT_MODELS)})",
    )
    parser.add_argument(
        "--ranks",
        type=_ranks,
        default=None,
        help=f"rank counts (default {DEFAULTS['ranks']})",
    )
    parser.add_argument(
        "--rows",
        type=int,
        default=None,
        help=f"rows of the strong-scaling file of the linear families (default {DEFAULTS['rows']:,})",
    )
    parser.add_argument(
        "--features", type=int, default=None, help=f"default {DEFAULTS['features']}"
    )
    parser.add_argument(
        "--svm-rows",
        type=int,
        default=None,
        help=f"rows of the strong-scaling file of svc (default {DEFAULTS['svm_rows']:,})",
    )
    parser.add_argument(
        "--svm-features",
        type=int,
        default=None,
        help=f"default {DEFAULTS['svm_features']}",
    )
    parser.add_argument(
        "--weak-rows",
        type=int,
        default=None,
        help="rows per rank in weak scaling (default: --rows / the largest rank count, so the "
        "largest weak file is the strong file)",
    )
    parser.add_argument(
        "--svm-weak-rows", type=int, default=None, help="the same for svc"
    )
    parser.add_argument(
        "--experiments",
        default="strong,weak",
        help="strong, weak or both (default both)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help=f"runs per configuration (default "
        f"{DEFAULTS['repeats']}; medians are reported)",
    )
    parser.add_argument(
        "--threads-per-rank",
        default="1",
        help="BLAS threads per rank, or 'auto' for mpitrain's default (cores / ranks); default 1, "
        "so that the rank count is the only thing that changes",
    )
    parser.add_argument(
        "--cold",
        action="store_true",
        help="evict the data file from the page cache before each run (default: read it first)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds per run before it counts as hung (default 1800; --quick 300)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="where data files are written and reused across invocations (default: a temporary "
        "folder, removed afterwards)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("bench-results/bench_scaling.json"),
        help="the JSON result; the PNG goes next to it (default bench-results/bench_scaling.json)",
    )
    parser.add_argument(
        "--cost-model",
        action="store_true",
        help="print the cost model's predictions (docs/performance.md) and exit; no runs",
    )
    parser.add_argument(
        "--alpha",
        type=float,
        default=CostParameters.alpha,
        help="cost model: latency, s",
    )
    parser.add_argument(
        "--beta",
        type=float,
        default=CostParameters.beta,
        help="cost model: bandwidth, bytes/s",
    )
    parser.add_argument(
        "--flops",
        type=float,
        default=CostParameters.flops,
        help="cost model: BLAS-3 flop/s per rank",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.cost_model:
        c = CostParameters(alpha=args.alpha, beta=args.beta, flops=args.flops)
        print(f"cost model constants: {c}\n")
        print(cost_model_table(c))
        return 0
    base = QUICK if args.quick else DEFAULTS
    experiments = tuple(e.strip() for e in args.experiments.split(",") if e.strip())
    if not experiments or set(experiments) - {"strong", "weak"}:
        raise SystemExit(
            f"--experiments takes strong, weak or both, got {args.experiments!r}"
        )
    if args.threads_per_rank != "auto" and not args.threads_per_rank.isdigit():
        raise SystemExit(
            f"--threads-per-rank takes a positive integer or 'auto', got {args.threads_per_rank!r}"
        )
    plan = Plan(
        models=args.models or list(DEFAULT_MODELS),
        rows=args.rows or base["rows"],
        features=args.features or base["features"],
        svm_rows=args.svm_rows or base["svm_rows"],
        svm_features=args.svm_features or base["svm_features"],
        ranks=args.ranks or _ranks(base["ranks"]),
        repeats=args.repeats or base["repeats"],
        weak_rows=args.weak_rows,
        svm_weak_rows=args.svm_weak_rows,
        threads_per_rank=args.threads_per_rank,
        cold=args.cold,
        timeout=args.timeout or (300.0 if args.quick else 1800.0),
        experiments=experiments,
    )
    from mpitrain.report import provenance

    # Recorded before the runs: the code and libraries these timings measure.
    made_with = provenance(Path(__file__).resolve().parent)
    workdir = Path(tempfile.mkdtemp(prefix="mpitrain-scaling-"))
    tic = time.perf_counter()
    try:
        result = run_benchmark(plan, workdir, args.data_dir)
    finally:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    result["benchmark_seconds"] = time.perf_counter() - tic
    result["provenance"] = made_with
    args.out.parent.mkdir(parents=True, exist_ok=True)
    png = args.out.with_suffix(".png")
    result["plot"] = None
    if any(result.get(e) for e in experiments):
        try:
            result["plot"] = str(_plot(result, png))
        except Exception as exc:
            result["plot_error"] = f"{type(exc).__name__}: {exc}"
            print(f"could not draw {png}: {result['plot_error']}", file=sys.stderr)
    from mpitrain.data import write_json

    write_json(args.out, result)
    _print_summary(result)
    print(
        f"\nwrote {args.out}"
        + (f" and {png}" if result["plot"] else "")
        + f" in {result['benchmark_seconds']:.0f} s"
    )
    if result["failures"]:
        print(
            f"{len(result['failures'])} run(s) failed; see 'failures' in {args.out}",
            file=sys.stderr,
        )
    return 1 if result["failures"] or "plot_error" in result else 0


if __name__ == "__main__":
    raise SystemExit(main())
