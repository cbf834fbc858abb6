#!/usr/bin/env python
"""Benchmark: exact Ridge with ``mpiexec -n P mpitrain train`` against scikit-learn in one process.

Both sides are whole processes timed from outside (start-up, imports, reading
the same HDF5 file, fitting, saving the model), run alternately in the same
invocation, several times each; medians are reported.  Each repeat is run
with the file evicted from the page cache ("cold", ``posix_fadvise``
DONTNEED, no root needed) and again with it cached ("warm").

Writes a JSON file with every run, the medians, the wall-time ratio, the
coefficient difference and the peak memory per rank against its slice::

    python scripts/bench.py --rows 2000000 --features 100 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# One process, all cores: scikit-learn's own BLAS threading is its best case.
SKLEARN_SCRIPT = """
import json, resource, sys, time
import h5py, joblib, numpy as np
from sklearn.linear_model import Ridge
path, out, alpha = sys.argv[1], sys.argv[2], float(sys.argv[3])
with h5py.File(path, "r") as f:
    X = f["X"][:]
    y = f["y"][:]
model = Ridge(alpha=alpha).fit(X, y)
joblib.dump(model, out)
print(json.dumps({"peak_memory_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def evict(path: Path) -> None:
    """Drop the file's pages from the page cache so the next read is cold."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def timed(command: list[str], env: dict | None = None) -> tuple[float, subprocess.CompletedProcess]:
    tic = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - tic
    if done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{done.stderr}")
    return seconds, done


def mpiexec() -> str:
    beside = Path(sys.executable).parent / "mpiexec"
    return str(beside) if beside.exists() else "mpiexec"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--features", type=int, default=100)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--data", type=Path, default=None, help="HDF5 file to use (generated if missing)")
    parser.add_argument("--out", type=Path, default=Path("bench-results/bench_ridge.json"))
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="mpitrain-bench-"))
    data = args.data or work / f"ridge_{args.rows}x{args.features}.h5"
    if not data.exists():
        print(f"generating {data} ...", flush=True)
        subprocess.run([sys.executable, "-m", "mpitrain", "make-data", "regression", str(data), "--rows",
                        str(args.rows), "--features", str(args.features), "--seed", "0", "--quiet"], check=True)
    script = work / "sklearn_ridge.py"
    script.write_text(SKLEARN_SCRIPT)

    runs = []
    for repeat in range(args.repeats):
        for cache in ("cold", "warm"):
            for side in ("mpitrain", "sklearn"):
                if cache == "cold":
                    evict(data)
                else:  # warm the cache with a plain read
                    with open(data, "rb") as f:
                        while f.read(64 << 20):
                            pass
                model = work / f"{side}.joblib"
                if side == "mpitrain":
                    report = work / "report.json"
                    seconds, _ = timed([mpiexec(), "-n", str(args.ranks), sys.executable, "-m", "mpitrain", "train",
                                        str(data), "--model", "ridge", "--alpha", str(args.alpha), "--out",
                                        str(model), "--report", str(report), "--quiet"])
                    rep = json.loads(report.read_text())
                    extra = {"peak_memory_bytes_per_rank": rep["peak_memory_bytes_per_rank"],
                             "slice_bytes_per_rank": [r["slice_bytes"] for r in rep["per_rank"]],
                             "phase_seconds": rep["seconds"]}
                else:
                    seconds, done = timed([sys.executable, str(script), str(data), str(model), str(args.alpha)])
                    extra = json.loads(done.stdout)
                runs.append({"repeat": repeat, "cache": cache, "side": side, "wall_seconds": seconds, **extra})
                print(f"repeat {repeat} {cache:4s} {side:8s} {seconds:6.2f} s", flush=True)

    import joblib

    mine, theirs = joblib.load(work / "mpitrain.joblib"), joblib.load(work / "sklearn.joblib")
    a = np.append(mine.coef_, mine.intercept_)
    b = np.append(theirs.coef_, theirs.intercept_)
    coef_diff = float(np.max(np.abs(a - b)) / np.max(np.abs(b)))

    summary = {}
    for cache in ("cold", "warm"):
        med = {side: statistics.median(r["wall_seconds"] for r in runs if r["cache"] == cache and r["side"] == side)
               for side in ("mpitrain", "sklearn")}
        summary[cache] = {"median_wall_seconds": med, "ratio": med["mpitrain"] / med["sklearn"]}
    mpi_runs = [r for r in runs if r["side"] == "mpitrain"]
    memory_ok = all(
        peak <= 1.3 * sl + 150e6
        for r in mpi_runs for peak, sl in zip(r["peak_memory_bytes_per_rank"], r["slice_bytes_per_rank"])
    )
    phases = {p: statistics.median(r["phase_seconds"][p] for r in mpi_runs) for p in mpi_runs[0]["phase_seconds"]}
    result = {
        "benchmark": "exact Ridge: mpiexec -n P mpitrain train vs scikit-learn Ridge in one process",
        "rows": args.rows, "features": args.features, "dtype": "float64", "ranks": args.ranks,
        "alpha": args.alpha, "repeats": args.repeats, "data_bytes": data.stat().st_size,
        "machine": {"cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "summary": summary,
        "mpitrain_median_phase_seconds": phases,
        "max_relative_coef_difference": coef_diff,
        "peak_memory_bytes_per_rank_max": max(max(r["peak_memory_bytes_per_rank"]) for r in mpi_runs),
        "slice_bytes_per_rank_max": max(max(r["slice_bytes_per_rank"]) for r in mpi_runs),
        "sklearn_peak_memory_bytes_max": max(r["peak_memory_bytes"] for r in runs if r["side"] == "sklearn"),
        "targets": {
            "ratio_at_most_0.35_cold": summary["cold"]["ratio"] <= 0.35,
            "ratio_at_most_0.35_warm": summary["warm"]["ratio"] <= 0.35,
            "coef_within_1e-8": coef_diff <= 1e-8,
            "peak_memory_per_rank_at_most_1.3_slice_plus_150MB": memory_ok,
        },
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("summary", "max_relative_coef_difference", "targets",
                                             "mpitrain_median_phase_seconds")}, indent=2))
    print(f"wrote {args.out}")
    if args.data is None:
        data.unlink()


if __name__ == "__main__":
    main()
