#!/usr/bin/env python
"""Benchmark: exact models with ``mpiexec -n P mpitrain train`` against scikit-learn in one process.

Both sides are whole processes timed from outside (start-up, imports, reading
the same HDF5 file, fitting, saving the model), run alternately in the same
invocation, several times each; medians are reported.  Each repeat is run
with the file evicted from the page cache ("cold", ``posix_fadvise``
DONTNEED, no root needed) and again with it cached ("warm").

Writes a JSON file with every run, the medians, the wall-time ratio, the
coefficient difference (and for lasso/elasticnet the zero pattern, for
logistic the penalised objective) and the peak memory per rank::

    python scripts/bench.py --model ridge --rows 2000000 --features 100 --repeats 5
    python scripts/bench.py --model lasso --rows 500000 --features 100 --repeats 3
    python scripts/bench.py --model logistic --rows 500000 --features 100 --repeats 3

``--sklearn-program-gc`` adds a side running scikit-learn's script with
the collector settings of the ``mpitrain`` program (``mpitrain.cli.program_gc``):
how much of the difference is the interpreter's own overhead, which any
script can avoid::

    python scripts/bench.py --model logistic --rows 500000 --sklearn-program-gc

``--root-share`` passes ``mpitrain train --root-share``; several values
(``auto`` for the command's default) run one mpitrain side each, side by
side in the same repeats, with a ratio and a phase table for each::

    python scripts/bench.py --model ridge --rows 4000000 --root-share 1.0 auto \
        --out bench-results/bench_ridge_root_share.json
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
import json, sys, time
import h5py, numpy as np
from sklearn import linear_model
from mpitrain.model_io import save_model
def peak_memory_bytes():
    # This process's own peak (ru_maxrss would carry over the parent's).
    with open("/proc/self/status") as status:
        return next(int(l.split()[1]) * 1024 for l in status if l.startswith("VmHWM:"))
path, out, name, params = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
with h5py.File(path, "r") as f:
    X = f["X"][:]
    y = f["y"][:]
model = getattr(linear_model, name)(**params).fit(X, y)
save_model(model, out)
print(json.dumps({"peak_memory_bytes": peak_memory_bytes()}))
"""

#: --model: (scikit-learn class, its parameters, mpitrain train options, kind of data,
#: target ratio of wall times, informative features).
MODELS = {
    "ridge": ("Ridge", {"alpha": 1.0}, ["--alpha", "1.0"], "regression", 0.35, None),
    "lasso": ("Lasso", {"alpha": 0.1}, ["--alpha", "0.1"], "regression", 0.5, 20),
    "elasticnet": (
        "ElasticNet",
        {"alpha": 0.1, "l1_ratio": 0.5},
        ["--alpha", "0.1", "--l1-ratio", "0.5"],
        "regression",
        0.5,
        20,
    ),
    "logistic": (
        "LogisticRegression",
        {"C": 1.0},
        ["--C", "1.0"],
        "classification",
        0.7,
        20,
    ),
}


def logistic_objective(model, X, y) -> float:
    """scikit-learn's penalised objective: Σ log-loss + ‖w‖² / (2C)."""
    z = X @ model.coef_.ravel() + model.intercept_[0]
    t = (y == model.classes_[1]).astype(float)
    return float(
        np.sum(np.logaddexp(0.0, z) - t * z) + 0.5 * np.sum(model.coef_**2) / model.C
    )


def evict(path: Path) -> None:
    """Drop the file's pages from the page cache so the next read is cold."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def timed(
    command: list[str], env: dict | None = None, cwd: Path | None = None
) -> tuple[float, subprocess.CompletedProcess]:
    tic = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd)
    seconds = time.perf_counter() - tic
    if done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{done.stderr}")
    return seconds, done


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", choices=sorted(MODELS), default="ridge")
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--features", type=int, default=100)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help="HDF5 file to use (generated if missing)",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="default: bench-results/bench_MODEL.json"
    )
    parser.add_argument(
        "--root-share",
        nargs="+",
        default=None,
        metavar="S",
        help="mpitrain train --root-share S; several values (or 'auto': the default) run "
        "one mpitrain side each",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        default=None,
        metavar="DIR",
        help="also run mpitrain from DIR (a copy of an older mpitrain package's parent folder, "
        "e.g. from git archive), with its defaults, as the side 'baseline'",
    )
    parser.add_argument(
        "--sklearn-program-gc",
        action="store_true",
        help="also run scikit-learn's script with the mpitrain program's garbage-collector "
        "settings (mpitrain.cli.program_gc), as the side 'sklearn_program_gc'",
    )
    parser.add_argument(
        "--gram-kernel",
        nargs="+",
        default=None,
        choices=["auto", "always", "never"],
        help="also run mpitrain sides with MPITRAIN_GRAM_KERNEL set to each value "
        "(the compiled XᵀX kernel or BLAS), at the default root share",
    )
    args = parser.parse_args()
    # mpitrain sides: (label, extra options of mpitrain train).
    shares = args.root_share or ["auto"]
    variants = [
        (
            "mpitrain" if len(shares) == 1 else f"mpitrain root_share={share}",
            [] if share == "auto" else ["--root-share", share],
        )
        for share in shares
    ]
    # Environment of a side where it is not the caller's.
    side_env: dict[str, dict[str, str]] = {}
    for choice in args.gram_kernel or []:
        label = f"mpitrain gram_kernel={choice}"
        variants.append((label, []))
        side_env[label] = {**os.environ, "MPITRAIN_GRAM_KERNEL": choice}
    if args.baseline is not None:
        variants.append(("baseline", []))
        side_env["baseline"] = {
            **os.environ,
            "PYTHONPATH": str(args.baseline.resolve()),
        }
    labels = [label for label, _ in variants]
    from mpitrain.report import provenance
    from mpitrain.testing import find_mpiexec

    # Recorded before the runs: the code and libraries these timings measure.
    made_with = provenance(Path(__file__).resolve().parent)
    sk_name, sk_params, options, kind, target, informative = MODELS[args.model]
    args.out = args.out or Path(f"bench-results/bench_{args.model}.json")

    work = Path(tempfile.mkdtemp(prefix="mpitrain-bench-"))
    data = (args.data or work / f"{kind}_{args.rows}x{args.features}.h5").resolve()
    if not data.exists():
        print(f"generating {data} ...", flush=True)
        extra = ["--informative", str(informative)] if informative else []
        subprocess.run(
            [
                sys.executable,
                "-m",
                "mpitrain",
                "make-data",
                kind,
                str(data),
                "--rows",
                str(args.rows),
                "--features",
                str(args.features),
                "--seed",
                "0",
                "--quiet",
                *extra,
            ],
            check=True,
        )
    script = work / "sklearn_ridge.py"
    script.write_text(SKLEARN_SCRIPT)
    # The same script under the mpitrain program's collector settings: how much
    # of the gap is the interpreter's own overhead, which any script can avoid.
    from mpitrain.cli import PROGRAM_GC_THRESHOLD

    scripts = {"sklearn": script}
    if args.sklearn_program_gc:
        scripts["sklearn_program_gc"] = work / "sklearn_program_gc.py"
        scripts["sklearn_program_gc"].write_text(
            f"import gc\ngc.set_threshold({PROGRAM_GC_THRESHOLD}, *gc.get_threshold()[1:])\n"
            + SKLEARN_SCRIPT
            + "gc.freeze()\n"
        )

    runs = []
    for repeat in range(args.repeats):
        for cache in ("cold", "warm"):
            for side, share_options in [*variants, *((r, None) for r in scripts)]:
                if cache == "cold":
                    evict(data)
                else:  # warm the cache with a plain read
                    with open(data, "rb") as f:
                        while f.read(64 << 20):
                            pass
                model = work / f"{side}.skops"
                if side not in scripts:
                    report = work / "report.json"
                    seconds, _ = timed(
                        [
                            *find_mpiexec(),  # with Open MPI's flags as root
                            "-n",
                            str(args.ranks),
                            sys.executable,
                            "-m",
                            "mpitrain",
                            "train",
                            str(data),
                            "--model",
                            args.model,
                            *options,
                            *share_options,
                            "--out",
                            str(model),
                            "--report",
                            str(report),
                            "--quiet",
                        ],
                        # From its folder: `python -m` puts the working directory first.
                        env=side_env.get(side),
                        cwd=args.baseline if side == "baseline" else None,
                    )
                    rep = json.loads(report.read_text())
                    extra = {
                        "peak_memory_bytes_per_rank": rep["peak_memory_bytes_per_rank"],
                        "slice_bytes_per_rank": [
                            r["slice_bytes"] for r in rep["per_rank"]
                        ],
                        # Rank 0's writing of the model, where the report says it.
                        "phase_seconds": {
                            **rep["seconds"],
                            **(
                                {"write": rep["write_seconds"]}
                                if rep.get("write_seconds") is not None
                                else {}
                            ),
                        },
                        "root_share": rep.get("root_share"),
                        "rows_per_rank": [r["rows"] for r in rep["per_rank"]],
                        "reported_wall_seconds": rep.get("wall_seconds"),
                    }
                else:
                    seconds, done = timed(
                        [
                            sys.executable,
                            str(scripts[side]),
                            str(data),
                            str(model),
                            sk_name,
                            json.dumps(sk_params),
                        ]
                    )
                    extra = json.loads(done.stdout)
                runs.append(
                    {
                        "repeat": repeat,
                        "cache": cache,
                        "side": side,
                        "wall_seconds": seconds,
                        **extra,
                    }
                )
                print(
                    f"repeat {repeat} {cache:4s} {side:8s} {seconds:6.2f} s", flush=True
                )

    from mpitrain.model_io import load_model

    mine, theirs = (
        load_model(work / f"{labels[0]}.skops"),
        load_model(work / "sklearn.skops"),
    )
    b = np.append(np.ravel(theirs.coef_), theirs.intercept_)
    coef_diff = 0.0
    for label in labels:  # every mpitrain side's model against scikit-learn's
        side_model = load_model(work / f"{label}.skops")
        a = np.append(np.ravel(side_model.coef_), side_model.intercept_)
        coef_diff = max(coef_diff, float(np.max(np.abs(a - b)) / np.max(np.abs(b))))
    quality = {"max_relative_coef_difference": coef_diff}
    if args.model in ("lasso", "elasticnet"):
        quality["zeros_mpitrain"] = int(np.sum(mine.coef_ == 0))
        quality["zeros_sklearn"] = int(np.sum(theirs.coef_ == 0))
        quality["identical_zero_pattern"] = bool(
            np.array_equal(mine.coef_ == 0, theirs.coef_ == 0)
        )
    if args.model == "logistic":
        import h5py

        with h5py.File(data, "r") as f:
            X, y = f["X"][:], f["y"][:]
        ours, ref = logistic_objective(mine, X, y), logistic_objective(theirs, X, y)
        quality.update(
            objective_mpitrain=ours,
            objective_sklearn=ref,
            objective_relative_difference=abs(ours - ref) / abs(ref),
            n_iter_mpitrain=int(np.max(mine.n_iter_)),
            n_iter_sklearn=int(np.max(theirs.n_iter_)),
        )

    summary = {}
    for cache in ("cold", "warm"):
        med = {
            side: statistics.median(
                r["wall_seconds"]
                for r in runs
                if r["cache"] == cache and r["side"] == side
            )
            for side in (*labels, *scripts)
        }
        summary[cache] = {
            "median_wall_seconds": med,
            "ratio": med[labels[0]] / med["sklearn"],
        }
        if len(labels) > 1:
            summary[cache]["ratios"] = {
                label: med[label] / med["sklearn"] for label in labels
            }
        if "sklearn_program_gc" in med:
            summary[cache]["ratio_to_sklearn_program_gc"] = (
                med[labels[0]] / med["sklearn_program_gc"]
            )
    mpi_runs = [r for r in runs if r["side"] not in scripts]
    memory_ok = all(
        peak <= 1.3 * sl + 150e6
        for r in mpi_runs
        for peak, sl in zip(r["peak_memory_bytes_per_rank"], r["slice_bytes_per_rank"])
    )
    names = list(dict.fromkeys(p for r in mpi_runs for p in r["phase_seconds"]))
    phases_by_side = {
        label: {
            p: statistics.median(
                r["phase_seconds"][p]
                for r in mpi_runs
                if r["side"] == label and p in r["phase_seconds"]
            )
            for p in names
            if any(r["side"] == label and p in r["phase_seconds"] for r in mpi_runs)
        }
        for label in labels
    }
    phases = phases_by_side[labels[0]]
    result = {
        "benchmark": f"exact {sk_name}: mpiexec -n P mpitrain train vs scikit-learn {sk_name} in one process",
        "model": args.model,
        "params": sk_params,
        "data": kind,
        "rows": args.rows,
        "features": args.features,
        "dtype": "float64",
        "ranks": args.ranks,
        "repeats": args.repeats,
        "data_bytes": data.stat().st_size,
        "machine": {
            "cores": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "provenance": made_with,
        "summary": summary,
        "mpitrain_median_phase_seconds": phases,
        **({"median_phase_seconds_by_side": phases_by_side} if len(labels) > 1 else {}),
        **quality,
        "peak_memory_bytes_per_rank_max": max(
            max(r["peak_memory_bytes_per_rank"]) for r in mpi_runs
        ),
        "slice_bytes_per_rank_max": max(
            max(r["slice_bytes_per_rank"]) for r in mpi_runs
        ),
        "sklearn_peak_memory_bytes_max": max(
            r["peak_memory_bytes"] for r in runs if r["side"] == "sklearn"
        ),
        "targets": {
            f"ratio_at_most_{target}_cold": summary["cold"]["ratio"] <= target,
            f"ratio_at_most_{target}_warm": summary["warm"]["ratio"] <= target,
            **(
                {
                    "coef_within_1e-8": coef_diff <= 1e-8,
                    "peak_memory_per_rank_at_most_1.3_slice_plus_150MB": memory_ok,
                }
                if args.model == "ridge"
                else {}
            ),
            **(
                {"identical_zero_pattern": quality["identical_zero_pattern"]}
                if "identical_zero_pattern" in quality
                else {}
            ),
        },
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        json.dumps(
            {
                k: result[k]
                for k in (
                    "summary",
                    "targets",
                    "mpitrain_median_phase_seconds",
                    *quality,
                )
            },
            indent=2,
        )
    )
    print(f"wrote {args.out}")
    if args.data is None:
        data.unlink()


if __name__ == "__main__":
    main()
