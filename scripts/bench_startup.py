#!/usr/bin/env python
"""Benchmark: start-up time of ``mpiexec -n 2 mpitrain --help`` beside the bare launcher.

Four commands are timed from outside (``subprocess``, wall clock), run in
turn in the same invocation, several times each, after one untimed warm-up
round (so every command finds Python's files in the page cache):

* ``mpiexec -n 2 mpitrain --help``: the target, under 0.5 s;
* ``mpiexec -n 2 python -c pass``: the floor that the launcher and two
  Python interpreters cost whatever the program;
* ``mpitrain --help`` and ``python -c pass`` without the launcher.

The median, minimum and the overhead of mpitrain over the bare interpreter
are written to a JSON file::

    python scripts/bench_startup.py --repeats 20
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


def tool(name: str) -> str:
    """A command beside this Python (the venv's), else on PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        raise SystemExit(f"{name} not found beside {sys.executable} or on PATH")
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--out", default="bench-results/bench_startup.json")
    parser.add_argument(
        "--note",
        default="",
        help="recorded in the JSON (e.g. how quiet the machine was)",
    )
    args = parser.parse_args()

    from mpitrain.report import provenance

    # Recorded before the runs: the code and libraries these times measure.
    made_with = provenance(Path(__file__).resolve().parent)
    mpiexec, mpitrain = tool("mpiexec"), tool("mpitrain")
    commands = {
        "mpiexec mpitrain --help": [mpiexec, "-n", str(args.ranks), mpitrain, "--help"],
        "mpiexec python -c pass": [
            mpiexec,
            "-n",
            str(args.ranks),
            sys.executable,
            "-c",
            "pass",
        ],
        "mpitrain --help": [mpitrain, "--help"],
        "python -c pass": [sys.executable, "-c", "pass"],
    }
    times: dict[str, list[float]] = {name: [] for name in commands}
    for repeat in range(args.repeats + 1):
        for name, command in commands.items():
            tic = time.perf_counter()
            out = subprocess.run(
                command, stdin=subprocess.DEVNULL, capture_output=True, text=True
            )
            seconds = time.perf_counter() - tic
            if out.returncode != 0:
                sys.stderr.write(f"{' '.join(command)} failed:\n{out.stderr}")
                return 1
            if repeat > 0:  # the first round only warms the page cache
                times[name].append(seconds)
    summary = {
        name: {"median_s": statistics.median(t), "min_s": min(t), "max_s": max(t)}
        for name, t in times.items()
    }
    under = summary["mpiexec mpitrain --help"]["median_s"]
    floor = summary["mpiexec python -c pass"]["median_s"]
    result = {
        "benchmark": f"start-up: mpiexec -n {args.ranks} mpitrain --help vs the bare launcher and interpreter",
        "target_s": 0.5,
        "meets_target": under < 0.5,
        "mpitrain_over_bare_launch_s": under - floor,
        "summary": summary,
        "repeats": args.repeats,
        "commands": {name: " ".join(c) for name, c in commands.items()},
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": sys.version.split()[0],
        },
        "note": args.note,
        "provenance": made_with,
        "seconds": times,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    for name, row in summary.items():
        print(f"{name:>26}: median {row['median_s']:.3f} s, min {row['min_s']:.3f} s")
    print(
        f"mpitrain adds {under - floor:+.3f} s to the bare launch; target < 0.5 s total: "
        f"{'met' if under < 0.5 else 'NOT met'}"
    )
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
