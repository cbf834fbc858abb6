#!/usr/bin/env python
"""Benchmark: exact ridge on a file larger than the machine's memory, streamed.

Generates (once) a regression file bigger than RAM with ``mpitrain
make-data``, trains ridge exactly with ``mpiexec -n P mpitrain train`` and
records the wall time, the peak memory of every rank and the read
throughput.  The page cache cannot hold the file, so the reads are cold.
The model is checked against an independent reference: XᵀX and Xᵀy summed
by numpy over the file's chunks in this process, then scikit-learn's ridge
solution of those sums (``(XcᵀXc + αI)⁻¹ Xcᵀyc``).

    python scripts/bench_out_of_core.py --path /tmp/big.h5 --rows 34000000 --features 100
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np


def memory_total() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no MemTotal in /proc/meminfo")


def reference_ridge(path: str, alpha: float) -> tuple[np.ndarray, float, float]:
    """Ridge from sums accumulated chunk by chunk with plain numpy (shifted by the first chunk's mean)."""
    tic = time.perf_counter()
    with h5py.File(path, "r") as f:
        X, y = f["X"], f["y"]
        n, d = X.shape
        step = 200_000
        shift_x = shift_y = None
        sxx = np.zeros((d, d))
        sx = np.zeros(d)
        sxy = np.zeros(d)
        sy = 0.0
        for a in range(0, n, step):
            xb = X[a : a + step].astype(np.float64)
            yb = y[a : a + step].astype(np.float64)
            if shift_x is None:
                shift_x, shift_y = xb.mean(axis=0), yb.mean()
            xb -= shift_x
            yb -= shift_y
            sxx += xb.T @ xb
            sx += xb.sum(axis=0)
            sxy += xb.T @ yb
            sy += yb.sum()
    mx, my = sx / n, sy / n
    cxx = sxx - n * np.outer(mx, mx)
    cxy = sxy - n * mx * my
    coef = np.linalg.solve(cxx + alpha * np.eye(d), cxy)
    intercept = (shift_y + my) - (shift_x + mx) @ coef
    return coef, float(intercept), time.perf_counter() - tic


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--path", default="/tmp/mpitrain-bigger-than-ram.h5")
    parser.add_argument("--rows", type=int, default=34_000_000)
    parser.add_argument("--features", type=int, default=100)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument(
        "--out", type=Path, default=Path("bench-results/bench_out_of_core.json")
    )
    parser.add_argument("--keep", action="store_true", help="keep the generated file")
    args = parser.parse_args()
    from mpitrain.report import provenance

    # Recorded before the run: the code and libraries this measurement is of.
    made_with = provenance(Path(__file__).resolve().parent)

    mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    generated = None
    if not os.path.exists(args.path):
        tic = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "mpitrain",
                "make-data",
                "regression",
                args.path,
                "--rows",
                str(args.rows),
                "--features",
                str(args.features),
                "--quiet",
            ],
            check=True,
        )
        generated = time.perf_counter() - tic
    size = os.path.getsize(args.path)
    ram = memory_total()
    report = args.out.with_suffix(".report.json")
    model = args.out.with_suffix(".skops")
    tic = time.perf_counter()
    done = subprocess.run(
        [
            mpiexec,
            "-n",
            str(args.ranks),
            sys.executable,
            "-m",
            "mpitrain",
            "train",
            args.path,
            "--model",
            "ridge",
            "--alpha",
            str(args.alpha),
            "--out",
            str(model),
            "--report",
            str(report),
            "--quiet",
        ],
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - tic
    if done.returncode:
        sys.exit(f"train failed:\n{done.stderr}")
    rep = json.loads(report.read_text())

    from mpitrain.model_io import load_model

    fitted = load_model(model)
    coef, intercept, reference_seconds = reference_ridge(args.path, args.alpha)
    scale = np.abs(coef).max()
    result = {
        "benchmark": f"exact ridge streamed from a file larger than RAM, mpiexec -n {args.ranks} mpitrain train",
        "file_bytes": size,
        "memory_total_bytes": ram,
        "file_over_memory": size / ram,
        "rows": rep["rows"],
        "features": rep["features"],
        "ranks": args.ranks,
        "generate_seconds": generated,
        "wall_seconds": wall,
        "seconds": rep["seconds"],
        "read_throughput_bytes_per_second": size / wall,
        "read_throughput_note": "whole file over the whole job's wall time (launch, import and solve included)",
        "read_phase_throughput_bytes_per_second": size
        / max(rep["seconds"]["read"], 1e-9),
        "peak_memory_bytes_per_rank": rep["peak_memory_bytes_per_rank"],
        "slice_bytes_per_rank": [r["slice_bytes"] for r in rep["per_rank"]],
        "max_relative_coef_difference_to_reference": float(
            np.abs(fitted.coef_ - coef).max() / scale
        ),
        "intercept_difference_to_reference": float(abs(fitted.intercept_ - intercept)),
        "reference": "numpy XᵀX over the file's chunks in one process, ridge solve",
        "reference_seconds": reference_seconds,
        "machine": {"cores": os.cpu_count(), "platform": platform.platform()},
        "provenance": made_with,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    model.unlink()
    report.unlink()
    if generated is not None and not args.keep:
        os.unlink(args.path)
    print(
        json.dumps(
            {k: v for k, v in result.items() if k not in ("machine", "provenance")},
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
