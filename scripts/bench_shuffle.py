#!/usr/bin/env python
"""Benchmark: ``mpitrain shuffle`` against reading the same file once, GB/s per rank.

One HDF5 file (float64 features and a float64 target, 1 GB by default) is
handled by 2 ranks (``mpiexec -n 2``), in three ways measured side by side
in the same job, alternating, ``--repeats`` times each:

* ``read-once``: every rank streams its own rows with
  :meth:`mpitrain.data.RowReader.stream` (what ``train`` reads): the floor
  that any pass over the data pays;
* ``shuffle``: :func:`mpitrain.data.shuffle_files` into a fresh folder:
  read, one ``Alltoallv`` per 8 MiB block, each part written and flushed
  to disk (fsync) and renamed, the manifest written;
* ``shuffle-bounded``: the same with ``MPITRAIN_MEMORY_LIMIT`` set so
  that a part needs several passes (each pass reads the input again).

A measurement is the wall time from a barrier to the last rank's end; the
rate per rank is the input's bytes of X and y over that time, divided by
the ranks.  The page cache is left warm (the file is read once, untimed,
before the runs), so the figures are for a file that fits the cache;
writes go to the disk (fsync).  Results go to a JSON file::

    python scripts/bench_shuffle.py --gb 1 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

METHODS = ("read-once", "shuffle", "shuffle-bounded")


def write_file(path: Path, gb: float, features: int) -> dict:
    """Write ``gb`` GB of float64 features and a target, sorted by the target."""
    import h5py

    rows = int(gb * 1e9 / (8 * (features + 1)))
    block_rows = max(1, (64 << 20) // (8 * features))
    rng = np.random.default_rng(0)
    block = rng.standard_normal((block_rows, features))
    with h5py.File(path, "w") as f:
        X = f.create_dataset("X", shape=(rows, features), dtype="f8")
        y = f.create_dataset("y", shape=(rows,), dtype="f8")
        for a in range(0, rows, block_rows):
            b = min(rows, a + block_rows)
            X[a:b] = block[: b - a]
            y[a:b] = np.arange(
                a, b, dtype=np.float64
            )  # sorted, as a date column would be
    with open(path, "rb+") as f:
        os.fsync(f.fileno())
    return {
        "rows": rows,
        "features": features,
        "bytes": os.path.getsize(path),
        "row_bytes": 8 * (features + 1),
    }


def worker(path: str, workdir: str, repeats: int, bounded_limit: int) -> None:
    """Body of every rank (``--worker``): the methods, alternating."""
    from mpi4py import MPI

    from mpitrain.data import open_rows, shuffle_files

    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    results = []
    # Warm the page cache with this rank's rows, untimed.
    reader = open_rows(path, comm=comm)
    for _ in reader.begin(keep_rows=False).stream():
        pass
    reader.close()

    def measure(method: str, out: str) -> tuple[int, dict]:
        if method == "read-once":
            reader = open_rows(path, comm=comm)
            total = 0
            try:
                for block in reader.begin(keep_rows=False).stream():
                    total += block.X.nbytes + block.y.nbytes
            finally:
                reader.close()
            return total, {}
        saved = os.environ.get("MPITRAIN_MEMORY_LIMIT")
        try:
            if method == "shuffle-bounded":
                os.environ["MPITRAIN_MEMORY_LIMIT"] = str(bounded_limit)
            lines: list[str] = []
            manifest = shuffle_files(path, out, seed=1, comm=comm, log=lines.append)
        finally:
            if saved is None:
                os.environ.pop("MPITRAIN_MEMORY_LIMIT", None)
            else:
                os.environ["MPITRAIN_MEMORY_LIMIT"] = saved
        mine = manifest["rows_per_part"][rank]
        phases = dict(manifest["seconds"])
        phases["passes"] = (
            sum("written" in line for line in lines) if rank == 0 else None
        )
        return mine * 8 * (manifest["datasets"]["X"]["shape"][1] + 1), phases

    for repeat in range(repeats):
        for method in METHODS:
            out = os.path.join(workdir, f"{method}-{repeat}")
            if rank == 0:
                os.makedirs(out, exist_ok=True)
            comm.Barrier()
            tic = time.perf_counter()
            nbytes, phases = measure(method, out)
            comm.Barrier()
            wall = time.perf_counter() - tic
            per_rank = comm.gather(phases, root=0)
            total = comm.reduce(nbytes, root=0)
            if rank == 0:
                shutil.rmtree(out, ignore_errors=True)
                results.append(
                    {
                        "repeat": repeat,
                        "method": method,
                        "bytes": total,
                        "seconds": wall,
                        "gb_per_s_per_rank": total / wall / 1e9 / comm.Get_size(),
                        "per_rank_phases": per_rank,
                        "loadavg": os.getloadavg()[0],
                    }
                )
            comm.Barrier()
    if rank == 0:
        print(json.dumps(results))


def find_mpiexec() -> str:
    beside = Path(sys.executable).parent / "mpiexec"
    return str(beside) if beside.exists() else "mpiexec"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gb", type=float, default=1.0)
    parser.add_argument("--features", type=int, default=100)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--bounded-mb",
        type=int,
        default=400,
        help="MPITRAIN_MEMORY_LIMIT of shuffle-bounded, in MB per rank (default 400)",
    )
    parser.add_argument("--dir", default=None, help="where to write (default: /tmp)")
    parser.add_argument("--out", default="bench-results/shuffle.json")
    parser.add_argument("--note", default="")
    parser.add_argument("--worker", nargs=2, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker[0], args.worker[1], args.repeats, args.bounded_mb * 10**6)
        return 0

    from mpitrain.report import provenance

    made_with = provenance(Path(__file__).resolve().parent)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-shuffle-") as tmp:
        path = os.path.join(tmp, "data.h5")
        print(f"writing {args.gb:g} GB to {path} ...", file=sys.stderr, flush=True)
        info = write_file(Path(path), args.gb, args.features)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
        tic = time.time()
        out = subprocess.run(
            [
                find_mpiexec(),
                "-n",
                str(args.ranks),
                sys.executable,
                __file__,
                "--worker",
                path,
                tmp,
                "--repeats",
                str(args.repeats),
                "--bounded-mb",
                str(args.bounded_mb),
            ],
            capture_output=True,
            text=True,
            env=env,
        )
        if out.returncode != 0:
            sys.stderr.write(out.stderr)
            return 1
        runs = json.loads(out.stdout.strip().splitlines()[-1])
        elapsed = time.time() - tic
    summary = {}
    for method in METHODS:
        rates = [r["gb_per_s_per_rank"] for r in runs if r["method"] == method]
        summary[method] = {
            "median_gb_per_s_per_rank": statistics.median(rates),
            "min": min(rates),
            "max": max(rates),
        }
    base = summary["read-once"]["median_gb_per_s_per_rank"]
    for method in METHODS[1:]:
        summary[method]["time_over_read_once"] = (
            base / summary[method]["median_gb_per_s_per_rank"]
        )
    result = {
        "benchmark": "mpitrain shuffle vs reading the file once (GB/s per rank = 1e9 bytes of X and y "
        "per second per rank; warm page cache, parts fsynced to disk)",
        "file": info,
        "ranks": args.ranks,
        "repeats": args.repeats,
        "bounded_memory_limit_bytes": args.bounded_mb * 10**6,
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "wall_seconds": elapsed,
        "note": args.note,
        "provenance": made_with,
        "summary": summary,
        "runs": runs,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    for method, row in summary.items():
        print(
            f"{method:>16}: {row['median_gb_per_s_per_rank']:.3f} GB/s per rank "
            f"(min {row['min']:.3f}, max {row['max']:.3f})"
            + (
                f", {row['time_over_read_once']:.1f}x the time of one read"
                if "time_over_read_once" in row
                else ""
            )
        )
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
