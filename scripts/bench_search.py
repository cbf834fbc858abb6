#!/usr/bin/env python
"""Benchmark: small-data hyperparameter search on 2 ranks against scikit-learn's GridSearchCV.

The data: scikit-learn's digits (1,797 images of 8 x 8 pixels) scaled up to
``--rows`` rows with noisy copies (seeded), pixels divided by 16.  The
search: a kernel ``SVC`` over ``C`` x ``gamma`` (20 candidates by default)
x 5 folds, refitting the best.  Sides, each in its own process(es), side
by side in one run so that the machine's load falls on all of them:

- ``mpitrain``: ``mpiexec -n 2``, one thread per rank; each rank starts
  with its own rows, and :class:`mpitrain.model_selection.GridSearchCV`
  (small mode) gathers them and shares the (candidate, fold) fits;
- ``sklearn-1``: ``GridSearchCV(n_jobs=1)`` in one process (2 BLAS threads);
- ``sklearn-2``: ``GridSearchCV(n_jobs=2)`` in one process (joblib workers).

Recorded: the wall time of ``fit`` (mpitrain's: the slowest rank, from a
barrier), the refit's share, whether the table equals scikit-learn's, and
the load average before and after each side.  ``--repeats`` runs the sides
in turn that many times; the median counts.

    python scripts/bench_search.py --out bench-results/search.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from _side_by_side import run_side

C_VALUES = [0.3, 1.0, 3.0, 10.0, 30.0]
GAMMA_VALUES = [0.005, 0.01, 0.02, 0.05]


def digits_rows(rows: int):
    """Digits scaled up to ``rows`` rows with noisy copies; the same in every process. Local."""
    import numpy as np
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    rng = np.random.default_rng(0)
    extra = rows - len(X)
    if extra > 0:
        pick = rng.integers(0, len(X), size=extra)
        noisy = np.clip(X[pick] + rng.normal(0, 0.1, size=(extra, X.shape[1])), 0, 1)
        X, y = np.vstack([X, noisy]), np.concatenate([y, y[pick]])
    order = rng.permutation(len(X))[:rows]
    return X[order], y[order]


def grid() -> dict:
    return {"C": C_VALUES, "gamma": GAMMA_VALUES}


def cpu_seconds(children: bool = False) -> float:
    """User + system CPU seconds of this process (and of its waited-for children). Local."""
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF)
    total = own.ru_utime + own.ru_stime
    if children:
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        total += kids.ru_utime + kids.ru_stime
    return total


def side_sklearn(rows: int, n_jobs: int) -> dict:
    from sklearn.model_selection import GridSearchCV
    from sklearn.svm import SVC

    X, y = digits_rows(rows)
    cpu = cpu_seconds()
    tic = time.perf_counter()
    search = GridSearchCV(SVC(), grid(), cv=5, n_jobs=n_jobs).fit(X, y)
    seconds = time.perf_counter() - tic
    # joblib's workers outlive the fit: their CPU time is not counted (n_jobs=2).
    return {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds() - cpu,
        "refit_seconds": search.refit_time_,
        "mean_test_score": search.cv_results_["mean_test_score"].tolist(),
        "best_params": search.best_params_,
    }


def side_mpitrain(rows: int) -> dict:
    from mpi4py import MPI

    from mpitrain.data import row_range
    from mpitrain.model_selection import GridSearchCV
    from mpitrain.svm import SVC

    comm = MPI.COMM_WORLD
    X, y = digits_rows(rows)
    start, stop = row_range(len(X), comm.Get_size(), comm.Get_rank())
    X, y = X[start:stop].copy(), y[start:stop].copy()
    comm.Barrier()
    cpu = cpu_seconds()
    tic = time.perf_counter()
    search = GridSearchCV(SVC(), grid(), cv=5, mode="small", comm=comm).fit(X, y)
    seconds = comm.allreduce(time.perf_counter() - tic, op=MPI.MAX)
    per_rank = comm.allgather(cpu_seconds() - cpu)
    return {
        "seconds": seconds,
        "cpu_seconds": sum(per_rank),
        # Near-equal shares: the tasks were balanced; wall above the larger
        # share is time the ranks waited for a core (the machine's load).
        "cpu_seconds_per_rank": per_rank,
        "refit_seconds": search.refit_time_,
        "search_seconds": search.timings_["search"],
        "mean_test_score": search.cv_results_["mean_test_score"].tolist(),
        "best_params": search.best_params_,
        "mode": search.search_mode_,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=2500)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("bench-results/search.json"))
    parser.add_argument("--side", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side is not None:
        if args.side == "mpitrain":
            result = side_mpitrain(args.rows)
        else:
            result = side_sklearn(args.rows, int(args.side.split("-")[1]))
        from mpitrain.comm import is_root

        if args.side != "mpitrain" or is_root():
            print(json.dumps(result))
        return

    from mpitrain.report import provenance

    made_with = provenance(Path(__file__).resolve().parent)
    script = str(Path(__file__).resolve())
    sides = {"sklearn-1": 1, "sklearn-2": 1, "mpitrain": 2}
    runs: dict[str, list[dict]] = {side: [] for side in sides}
    load = [{"at": "start", "loadavg": os.getloadavg()}]
    for repeat in range(args.repeats):
        for side, ranks in sides.items():
            runs[side].append(run_side(script, side, ["--rows", str(args.rows)], ranks))
            load.append({"at": f"after {side} #{repeat}", "loadavg": os.getloadavg()})
    median = {s: statistics.median(r["seconds"] for r in runs[s]) for s in sides}
    reference = runs["sklearn-1"][0]
    same = all(
        max(
            abs(a - b)
            for a, b in zip(r["mean_test_score"], reference["mean_test_score"])
        )
        < 1e-12
        and r["best_params"] == reference["best_params"]
        for r in runs["mpitrain"]
    )
    result = {
        "benchmark": "small-data search: mpitrain GridSearchCV on 2 ranks vs scikit-learn",
        "rows": args.rows,
        "features": 64,
        "candidates": len(C_VALUES) * len(GAMMA_VALUES),
        "folds": 5,
        "grid": grid(),
        "seconds": {s: [r["seconds"] for r in runs[s]] for s in sides},
        "median_seconds": median,
        "refit_seconds": {s: [r["refit_seconds"] for r in runs[s]] for s in sides},
        # CPU of the fit: all ranks summed for mpitrain; the one process for
        # scikit-learn (n_jobs=2: the parent only, its workers are not counted).
        "cpu_seconds": {s: [r["cpu_seconds"] for r in runs[s]] for s in sides},
        "mpitrain_cpu_seconds_per_rank": [
            r["cpu_seconds_per_rank"] for r in runs["mpitrain"]
        ],
        "ratio_per_repeat_to_n_jobs_1": [
            m["seconds"] / s["seconds"]
            for m, s in zip(runs["mpitrain"], runs["sklearn-1"])
        ],
        "ratio_to_sklearn_n_jobs_1": median["mpitrain"] / median["sklearn-1"],
        "ratio_to_sklearn_n_jobs_2": median["mpitrain"] / median["sklearn-2"],
        "target_ratio_to_n_jobs_1": 0.6,
        "same_table_as_sklearn": same,
        "best_params": reference["best_params"],
        "load": load,
        "provenance": made_with,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from mpitrain.data import write_json

    write_json(args.out, result)
    print(json.dumps({k: v for k, v in result.items() if k != "provenance"}, indent=1))


if __name__ == "__main__":
    main()
