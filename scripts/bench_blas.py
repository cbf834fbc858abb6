#!/usr/bin/env python
"""Benchmark: local XᵀX throughput of the exact path against the machine's BLAS peak.

The exact linear models spend their local compute in
:class:`mpitrain.stats.StatisticsAccumulator`: each block of rows is
copied into a float64 work buffer ``[x - s, y - s, 1]`` (shifted for
stability) and added with one ``syrk`` (``zᵀz``).  This script measures, in
one run, side by side, for each BLAS thread count:

* **peak (gemm)**: a large square ``A @ B`` (2·n³ flops), the machine's
  usual BLAS peak;
* **peak (syrk)**: ``AᵀA`` of a tall matrix with many columns (n·k·(k+1)
  flops), the best that the symmetric product itself reaches;
* **syrk at our shape**: ``zᵀz`` on work buffers of the accumulator's shape
  (its chunk rows × (features + 2)), without the copy;
* **accumulator**: ``StatisticsAccumulator.add`` on in-memory blocks of
  32 MiB (as the reader gives them), float64 and float32 rows, counting the
  useful flops of ``zᵀz`` (rows · p · (p + 1), p = features + 2): with the
  compiled kernel (``mpitrain.stats._gram``, up to 256 columns) and, as
  ``accumulator_blas``, with the copy and ``syrk`` it replaces; with
  ``--baseline COMMIT``, also as ``accumulator_baseline`` with the kernel
  of that commit (its ``mpitrain/stats/_gram*.py`` loaded from git), in the
  same alternation, so that a change of the kernel is measured side by side
  under the same load.

GFLOP/s are best-of-``--repeats``; the ratios accumulator / peak are the
figures of issues 7 and 18 (target: at least 75 % of the gemm peak at
d = 100, one thread).  Results go to JSON::

    python scripts/bench_blas.py --rows 400000 --features 100 --threads 1 2 \\
        --baseline 16cbebd
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def best_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: page faults, BLAS thread start-up
    best = float("inf")
    for _ in range(repeats):
        tic = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - tic)
    return best


def baseline_kernel(commit: str, workdir: Path):
    """``GramKernel`` of an earlier commit, from its two modules in git, for side-by-side runs."""
    import importlib
    import subprocess

    repo = Path(__file__).resolve().parent.parent
    package = workdir / "gram_baseline"
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text("")
    for name in ("_gram.py", "_gram_kernels.py"):
        text = subprocess.run(
            ["git", "-C", str(repo), "show", f"{commit}:mpitrain/stats/{name}"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        text = text.replace(
            "mpitrain.stats._gram_kernels", "gram_baseline._gram_kernels"
        )
        text = text.replace(
            "from mpitrain.stats import _gram_kernels",
            "from gram_baseline import _gram_kernels",
        )
        (package / name).write_text(text)
    sys.path.insert(0, str(workdir))
    return importlib.import_module("gram_baseline._gram").GramKernel


def measure(
    threads: int,
    rows: int,
    features: int,
    square: int,
    tall_cols: int,
    repeats: int,
    baseline=None,
) -> dict:
    from threadpoolctl import threadpool_limits

    from mpitrain.stats import StatisticsAccumulator
    from mpitrain.stats._gram import GramKernel

    rng = np.random.default_rng(0)
    out: dict = {"threads": threads}
    with threadpool_limits(threads):
        A, B = (
            rng.standard_normal((square, square)),
            rng.standard_normal((square, square)),
        )
        s = best_seconds(lambda: A @ B, repeats)
        out["peak_gemm_gflops"] = 2 * square**3 / s / 1e9

        T = rng.standard_normal((max(4 * tall_cols, 8192), tall_cols))
        s = best_seconds(lambda: T.T @ T, repeats)
        out["peak_syrk_gflops"] = T.shape[0] * tall_cols * (tall_cols + 1) / s / 1e9

        p = features + 2
        probe = StatisticsAccumulator(features, 1)
        chunk = probe._rows  # the accumulator's work-buffer rows
        Z = rng.standard_normal((chunk, p))
        n_chunks = max(1, rows // chunk)
        s = best_seconds(lambda: [Z.T @ Z for _ in range(n_chunks)], repeats)
        out["syrk_at_our_shape_gflops"] = n_chunks * chunk * p * (p + 1) / s / 1e9
        out["work_buffer_rows"] = chunk

        y = rng.standard_normal((rows, 1))
        block_rows = max(1, (32 << 20) // (8 * features))
        for dtype in ("float64", "float32"):
            X = rng.standard_normal((rows, features)).astype(dtype)
            # The compiled kernel, the BLAS path and the baseline's kernel,
            # alternately in the same run.
            sides = [("accumulator", True), ("accumulator_blas", False)]
            if baseline is not None:
                sides.append(("accumulator_baseline", baseline))
            for name, use_kernel in sides:

                def accumulate():
                    stats = StatisticsAccumulator(
                        features, 1, use_kernel=use_kernel is not False
                    )
                    if use_kernel not in (True, False):
                        # The earlier commit's kernel, where the accumulator keeps its own.
                        stats._gram_kernel = use_kernel(p, threads=threads)
                    for a in range(0, rows, block_rows):
                        stats.add(X[a : a + block_rows], y[a : a + block_rows])
                    return stats

                s = best_seconds(accumulate, repeats)
                out[f"{name}_{dtype}_gflops"] = rows * p * (p + 1) / s / 1e9
                out[f"{name}_{dtype}_rows_per_s"] = rows / s
            # The kernels alone, all rows in one call: without the accumulator's
            # fixed cost per fit (a new accumulator and kernel, the thread count
            # read from threadpoolctl, the first chunk's mean), which is a few
            # per cent of these 0.03-0.1 s runs and nothing in a long fit.
            shift = np.zeros(p - 1)
            kernels = [("kernel", GramKernel)]
            if baseline is not None:
                kernels.append(("kernel_baseline", baseline))
            for name, kernel_class in kernels:
                kernel = kernel_class(p, threads=threads)
                s = best_seconds(lambda: kernel.gram(X, y, shift), repeats)
                out[f"{name}_{dtype}_gflops"] = rows * p * (p + 1) / s / 1e9
        for dtype in ("float64", "float32"):
            for name in [side for side, _ in sides] + [k for k, _ in kernels]:
                mine = out[f"{name}_{dtype}_gflops"]
                out[f"{name}_{dtype}_over_peak_gemm"] = mine / out["peak_gemm_gflops"]
                out[f"{name}_{dtype}_over_peak_syrk"] = mine / out["peak_syrk_gflops"]
    return out


_LOAD = """
import time, numpy as np
tic = time.perf_counter()
import mpitrain.stats
mid = time.perf_counter()
from mpitrain.stats._gram import GramKernel
GramKernel(8).gram(np.ones((4, 6)), np.ones((4, 1)), np.zeros(7))
print(time.perf_counter() - mid, mid - tic)
"""


def kernel_load_seconds(repeats: int) -> dict:
    """Fixed cost of the compiled kernel in a fresh process: llvmlite's import and the cached object code."""
    import subprocess

    subprocess.run([sys.executable, "-c", _LOAD], check=True, capture_output=True)
    loads = []
    for _ in range(repeats):
        out = subprocess.run(
            [sys.executable, "-c", _LOAD], check=True, capture_output=True, text=True
        )
        loads.append(float(out.stdout.split()[0]))
    return {"median_s": sorted(loads)[len(loads) // 2], "all_s": loads}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=400_000)
    parser.add_argument("--features", type=int, default=100)
    parser.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=None,
        help="BLAS thread counts (default: 1 and all cores)",
    )
    parser.add_argument(
        "--square", type=int, default=3000, help="size of the square gemm for the peak"
    )
    parser.add_argument(
        "--tall-cols",
        type=int,
        default=1500,
        help="columns of the tall syrk for the peak",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--baseline",
        default=None,
        help="an earlier commit whose Gram kernel is measured side by side",
    )
    parser.add_argument("--out", default="bench-results/bench_blas.json")
    parser.add_argument(
        "--note",
        default="",
        help="recorded in the JSON (e.g. how quiet the machine was)",
    )
    args = parser.parse_args()
    from threadpoolctl import threadpool_info

    from mpitrain.report import provenance

    # Recorded before the runs: the code and libraries these figures measure.
    made_with = provenance(Path(__file__).resolve().parent)

    before_load = os.getloadavg()
    threads = args.threads or sorted({1, os.cpu_count() or 1})
    with tempfile.TemporaryDirectory() as workdir:
        baseline = (
            baseline_kernel(args.baseline, Path(workdir)) if args.baseline else None
        )
        results = [
            measure(
                t,
                args.rows,
                args.features,
                args.square,
                args.tall_cols,
                args.repeats,
                baseline,
            )
            for t in threads
        ]
    load = kernel_load_seconds(max(3, args.repeats))
    one = next((r for r in results if r["threads"] == 1), results[0])
    p = args.features + 2
    # Seconds saved per rows · p² by the kernel, and the rows that repay its load.
    saved = (p + 1) / p / 1e9 / one["accumulator_blas_float64_gflops"] - (
        p + 1
    ) / p / 1e9 / one["accumulator_float64_gflops"]
    load["saved_s_per_rows_p2"] = saved
    load["break_even_rows_p2"] = load["median_s"] / saved if saved > 0 else None
    result = {
        "benchmark": "local XᵀX of the exact path (StatisticsAccumulator) vs the BLAS peak, "
        "GFLOP/s (best of repeats)",
        "target": "accumulator at least 75% of the dgemm peak at d = 100, one thread (issue 18)",
        "rows": args.rows,
        "features": args.features,
        "square": args.square,
        "tall_cols": args.tall_cols,
        "repeats": args.repeats,
        "flops_counted": {
            "gemm": "2 n^3",
            "syrk and accumulator": "rows * p * (p + 1), p = columns of z",
        },
        "blas": [
            {
                k: i.get(k)
                for k in ("internal_api", "version", "num_threads", "architecture")
            }
            for i in threadpool_info()
        ],
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "processor": platform.processor(),
            "python": sys.version.split()[0],
            "numpy": np.__version__,
        },
        "note": args.note,
        "baseline_commit": args.baseline,
        "load_average": {"before": before_load, "after": os.getloadavg()},
        "provenance": made_with,
        "results": results,
        "kernel_load": load,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    for r in results:
        print(
            f"{r['threads']} thread(s): peak gemm {r['peak_gemm_gflops']:.1f}, "
            f"peak syrk {r['peak_syrk_gflops']:.1f}, "
            f"syrk at our shape {r['syrk_at_our_shape_gflops']:.1f}, accumulator float64 "
            f"{r['accumulator_float64_gflops']:.1f} ({r['accumulator_float64_over_peak_gemm']:.0%} of gemm peak, "
            f"{r['accumulator_float64_over_peak_syrk']:.0%} of syrk peak), float32 "
            f"{r['accumulator_float32_gflops']:.1f} GFLOP/s; BLAS path float64 "
            f"{r['accumulator_blas_float64_gflops']:.1f} "
            f"({r['accumulator_blas_float64_over_peak_gemm']:.0%} of gemm peak)"
            + f"; kernel alone float64 {r['kernel_float64_gflops']:.1f} "
            f"({r['kernel_float64_over_peak_gemm']:.0%})"
            + (
                f"; baseline kernel float64 {r['accumulator_baseline_float64_gflops']:.1f} "
                f"({r['accumulator_baseline_float64_over_peak_gemm']:.0%}), float32 "
                f"{r['accumulator_baseline_float32_gflops']:.1f}, alone float64 "
                f"{r['kernel_baseline_float64_gflops']:.1f} "
                f"({r['kernel_baseline_float64_over_peak_gemm']:.0%})"
                if "accumulator_baseline_float64_gflops" in r
                else ""
            )
        )
    print(
        f"kernel load in a fresh process {load['median_s']:.2f} s; repaid from "
        f"rows * p^2 = {load['break_even_rows_p2'] or float('inf'):.3g}"
    )
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
