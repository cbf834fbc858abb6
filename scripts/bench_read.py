#!/usr/bin/env python
"""Benchmark: read throughput of mpitrain's reader against raw ``os.pread`` of the same bytes.

One HDF5 file (features float64 plus a float64 target) is read by 1 and by 2
ranks (``mpiexec -n P``), each rank its own row range, in four ways measured
side by side in the same job, alternating, several times each:

* ``pread-ring``: raw ``os.preadv`` of the rank's bytes of X and y into a
  reused ring as large as the reader's (3 x 32 MiB, filled in turn): the
  limit for a streamed read;
* ``reader-stream``: :meth:`mpitrain.data.RowReader.stream` (a ring of
  blocks, what ``train`` of the exact linear models does);
* ``pread-memory``: raw ``os.preadv`` into one new array of the whole slice:
  the limit for rows held in memory (it pays the first touch of every page);
* ``reader-memory``: :meth:`RowReader.result` (rows held in memory, what
  the SVMs and averaging do).

The two ``memory`` ways pay the first touch of every page of a new array
of the slice's size; on a virtual machine whose host backs memory lazily
that can cost more than the read and vary from run to run (look at the
spread in ``runs``), while the ring ways reuse their buffers.

Each is measured **cold** (the file's pages dropped from the page cache with
``posix_fadvise(POSIX_FADV_DONTNEED)`` just before; dropping the whole cache
needs root) and **warm** (the rank's bytes read once, untimed, just before).
A measurement is the wall time from a barrier to the last rank's end; the
rate is all ranks' bytes over it.  Medians are reported, with the ratio of
the reader to raw pread.  Results go to a JSON file::

    python scripts/bench_read.py --gb 1 --repeats 3
    python scripts/bench_read.py --gb 8 --repeats 5 --layout chunked --out bench-results/bench_read_chunked.json

Targets (issue 7): at least 2.5 GB/s per machine cold and 10 GB/s warm.  The
script writes the file itself unless ``--file`` names one (datasets X, y).
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

METHODS = ("pread-ring", "reader-stream", "pread-memory", "reader-memory")
RING_BYTES = 32 << 20  # bytes per pread, the reader's block size


def write_file(path: Path, gb: float, features: int, layout: str) -> dict:
    """Write ``gb`` GB of float64 features and a target; fsync so the pages can be dropped."""
    import h5py

    rows = int(gb * 1e9 / (8 * (features + 1)))
    block_rows = max(1, (64 << 20) // (8 * features))
    rng = np.random.default_rng(0)
    block = rng.standard_normal((block_rows, features))
    chunk_rows = max(1, (4 << 20) // (8 * features))
    with h5py.File(path, "w") as f:
        X = f.create_dataset(
            "X",
            shape=(rows, features),
            dtype="f8",
            chunks=(chunk_rows, features) if layout == "chunked" else None,
        )
        y = f.create_dataset(
            "y",
            shape=(rows,),
            dtype="f8",
            chunks=(min(rows, 1 << 18),) if layout == "chunked" else None,
        )
        for a in range(0, rows, block_rows):
            b = min(rows, a + block_rows)
            X[a:b] = block[: b - a]
            y[a:b] = block[: b - a, 0]
    with open(path, "rb+") as f:
        os.fsync(f.fileno())
    return {
        "rows": rows,
        "features": features,
        "layout": layout,
        "bytes": os.path.getsize(path),
    }


def byte_ranges(path: str, start: int, stop: int) -> list[tuple[int, int]]:
    """``(offset, length)`` in the file of rows ``[start, stop)`` of X and y: the bytes the reader reads."""
    import h5py

    ranges = []
    with h5py.File(path, "r") as f:
        for name in ("X", "y"):
            ds = f[name]
            row_bytes = ds.dtype.itemsize * int(np.prod(ds.shape[1:], dtype=np.int64))
            if ds.chunks is None:
                ranges.append(
                    (ds.id.get_offset() + start * row_bytes, (stop - start) * row_bytes)
                )
                continue
            for i in range(ds.id.get_num_chunks()):
                info = ds.id.get_chunk_info(i)
                first = info.chunk_offset[0]
                # Whole chunks that hold the rank's rows (as the reader's chunk-aligned blocks read them).
                if first + ds.chunks[0] > start and first < stop:
                    ranges.append((info.byte_offset, info.size))
    return ranges


def pread_ranges(fd: int, ranges: list[tuple[int, int]], into_memory: bool) -> int:
    """Read the ranges with ``os.preadv`` in pieces of at most 32 MiB, one after the other.

    Into one new array of all the bytes, or into a ring of the reader's
    size (``RING_BLOCKS`` x 32 MiB, filled in turn and reused), so the
    destination memory is touched as the reader touches it.
    """
    from mpitrain.data import RING_BLOCKS

    total = sum(length for _, length in ranges)
    size = total if into_memory else min(total, RING_BLOCKS * RING_BYTES)
    view, at = memoryview(np.empty(size, dtype=np.uint8)), 0
    for offset, length in ranges:
        done = 0
        while done < length:
            n = min(RING_BYTES, length - done)
            if at + n > size:
                at = 0  # the ring wraps (an array of all the bytes never does)
            got = os.preadv(fd, [view[at : at + n]], offset + done)
            if got <= 0:
                raise OSError(f"short read at {offset + done}")
            done += got
            at += got
    return total


def drop_cache(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def worker(path: str, repeats: int) -> None:
    """Body of every rank (``--worker``): all methods, cold and warm, alternating."""
    from mpi4py import MPI

    from mpitrain.data import open_rows

    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    probe = open_rows(path, comm=comm)
    start, stop = probe.start, probe.stop
    ranges = byte_ranges(path, start, stop)
    fd = os.open(path, os.O_RDONLY)
    results = []

    def measure(method: str) -> int:
        if method.startswith("pread"):
            return pread_ranges(fd, ranges, into_memory=method == "pread-memory")
        reader = open_rows(path, comm=comm)
        try:
            if method == "reader-stream":
                total = 0
                for block in reader.begin(keep_rows=False).stream():
                    total += block.X.nbytes + block.y.nbytes
                return total
            return reader.result().nbytes
        finally:
            reader.close()

    for repeat in range(repeats):
        for method in METHODS:
            for state in ("cold", "warm"):
                if state == "cold":
                    drop_cache(
                        path
                    )  # every rank: on several nodes each has its own cache
                else:
                    pread_ranges(
                        fd, ranges, into_memory=False
                    )  # this rank's bytes into the cache, untimed
                comm.Barrier()
                tic = time.perf_counter()
                nbytes = measure(method)
                mine = time.perf_counter() - tic
                comm.Barrier()
                wall = time.perf_counter() - tic
                seconds = comm.gather(mine, root=0)
                total = comm.reduce(nbytes, root=0)
                if rank == 0:
                    results.append(
                        {
                            "repeat": repeat,
                            "method": method,
                            "state": state,
                            "bytes": total,
                            "seconds": wall,
                            "per_rank_seconds": seconds,
                            "gb_per_s": total / wall / 1e9,
                        }
                    )
    os.close(fd)
    if rank == 0:
        print(json.dumps(results))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--gb", type=float, default=1.0, help="size of the file to write (default 1 GB)"
    )
    parser.add_argument("--features", type=int, default=100)
    parser.add_argument(
        "--layout", choices=["contiguous", "chunked"], default="contiguous"
    )
    parser.add_argument(
        "--file",
        default=None,
        help="read this HDF5 file (datasets X, y) instead of writing one",
    )
    parser.add_argument(
        "--dir",
        default=None,
        help="where to write the file (default: the temporary folder)",
    )
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="bench-results/bench_read.json")
    parser.add_argument(
        "--note",
        default="",
        help="recorded in the JSON (e.g. how quiet the machine was)",
    )
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.repeats)
        return 0

    from mpitrain.report import provenance
    from mpitrain.testing import find_mpiexec

    # Recorded before the runs: the code and libraries these rates measure.
    made_with = provenance(Path(__file__).resolve().parent)
    tmpdir = None
    if args.file:
        path = args.file
        import h5py

        with h5py.File(path, "r") as f:
            info = {
                "rows": f["X"].shape[0],
                "features": f["X"].shape[1],
                "layout": "chunked" if f["X"].chunks else "contiguous",
                "bytes": os.path.getsize(path),
            }
    else:
        tmpdir = tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-read-")
        path = os.path.join(tmpdir.name, "data.h5")
        print(f"writing {args.gb:g} GB to {path} ...", file=sys.stderr, flush=True)
        info = write_file(Path(path), args.gb, args.features, args.layout)
    runs = []
    try:
        for ranks in args.ranks:
            print(f"reading with {ranks} rank(s) ...", file=sys.stderr, flush=True)
            env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
            out = subprocess.run(
                [
                    *find_mpiexec(),  # with Open MPI's flags as root
                    "-n",
                    str(ranks),
                    sys.executable,
                    __file__,
                    "--worker",
                    path,
                    "--repeats",
                    str(args.repeats),
                ],
                capture_output=True,
                text=True,
                env=env,
            )
            if out.returncode != 0:
                sys.stderr.write(out.stderr)
                return 1
            for run in json.loads(out.stdout.strip().splitlines()[-1]):
                runs.append({"ranks": ranks, **run})
    finally:
        if tmpdir is not None:
            tmpdir.cleanup()

    summary: dict = {}
    for ranks in args.ranks:
        for state in ("cold", "warm"):
            row = {
                m: statistics.median(
                    r["gb_per_s"]
                    for r in runs
                    if (r["ranks"], r["method"], r["state"]) == (ranks, m, state)
                )
                for m in METHODS
            }
            row["reader_over_pread_stream"] = row["reader-stream"] / row["pread-ring"]
            row["reader_over_pread_memory"] = row["reader-memory"] / row["pread-memory"]
            summary[f"{ranks} rank(s), {state}"] = row
    result = {
        "benchmark": "read throughput, mpitrain reader vs raw pread of the same bytes (GB/s = 1e9 bytes/s)",
        "file": info,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": sys.version.split()[0],
        },
        "targets_gb_per_s": {"cold": 2.5, "warm": 10.0},
        "cold_means": "posix_fadvise(DONTNEED) on the file before each cold run (no root: the rest of the page "
        "cache is kept)",
        "repeats": args.repeats,
        "note": args.note,
        "provenance": made_with,
        "summary_median_gb_per_s": summary,
        "runs": runs,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    for key, row in summary.items():
        print(
            f"{key:>20}: "
            + ", ".join(f"{m} {row[m]:.2f}" for m in METHODS)
            + f"  (reader/pread: stream {row['reader_over_pread_stream']:.2f}, "
            f"memory {row['reader_over_pread_memory']:.2f})"
        )
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
