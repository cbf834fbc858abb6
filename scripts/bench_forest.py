#!/usr/bin/env python
"""Benchmark: RandomForestClassifier on 2 ranks (one thread each) against scikit-learn in one process on 2 threads.

A synthetic classification set of ``--rows`` rows (``mpitrain make-data``'s
generator: a multinomial logistic model, 2 classes) is written to HDF5 once,
with a held-out set of ``--test-rows`` rows from another seed.

- scikit-learn: one process reads all rows and fits
  ``RandomForestClassifier(n_jobs=2)``;
- mpitrain: ``mpiexec -n 2``, each rank reads its own rows and fits
  :class:`mpitrain.ensemble.RandomForestClassifier` with ``n_jobs=1``:
  each rank grows half the trees on half the rows, then the trees are
  merged on every rank.

Both grow ``--trees`` trees with the same parameters and ``random_state``.
Recorded: fit wall time (the data are read before the clock starts; the
mpitrain time includes the merge, and is the slowest rank's), held-out
accuracy, the peak resident memory of each process (``VmHWM``, which
includes the rows read), the merged forest's size, and the machine's load
average before and after: timings taken on a shared machine are noisy.

    python scripts/bench_forest.py --out bench-results/forest.json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from _side_by_side import read, run_side

FEATURES = 20
INFORMATIVE = 10


def forest_params(args) -> dict:
    return {
        "n_estimators": args.trees,
        "min_samples_leaf": args.min_samples_leaf,
        "random_state": 0,
    }


def forest_bytes(model) -> int:
    """Bytes of the forest's node and value arrays. Local."""
    return int(
        sum(
            t.tree_.__getstate__()["nodes"].nbytes + t.tree_.value.nbytes
            for t in model.estimators_
        )
    )


def sklearn_side(args) -> None:
    """One process, 2 threads: fit and print JSON."""
    from sklearn.ensemble import RandomForestClassifier

    from mpitrain.report import peak_memory_bytes

    X, y = read(args.train)
    Xt, yt = read(args.test)
    model = RandomForestClassifier(n_jobs=2, **forest_params(args))
    tic = time.perf_counter()
    model.fit(X, y)
    seconds = time.perf_counter() - tic
    accuracy = float(model.score(Xt, yt))
    print(
        json.dumps(
            {
                "seconds": seconds,
                "accuracy": accuracy,
                "peak_memory_bytes": peak_memory_bytes(),
                "forest_bytes": forest_bytes(model),
            }
        )
    )


def mpitrain_side(args) -> None:
    """Every rank: its rows, then the collective fit; rank 0 prints JSON."""
    from mpitrain.comm import get_comm
    from mpitrain.data import row_range
    from mpitrain.ensemble import RandomForestClassifier
    from mpitrain.report import peak_memory_bytes

    comm = get_comm()
    n = int(args.rows)
    start, stop = row_range(n, comm.Get_size(), comm.Get_rank())
    X, y = read(args.train, start, stop)
    model = RandomForestClassifier(n_jobs=1, comm=comm, **forest_params(args))
    comm.Barrier()
    tic = time.perf_counter()
    model.fit(X, y)
    # The slowest rank's time: the fit ends when the last rank has its merged forest.
    seconds = max(comm.allgather(time.perf_counter() - tic))
    accuracy = None
    if comm.Get_rank() == 0:
        Xt, yt = read(args.test)
        accuracy = float(model.score(Xt, yt))
    peaks = comm.gather(peak_memory_bytes(), root=0)
    if comm.Get_rank() == 0:
        print(
            json.dumps(
                {
                    "seconds": seconds,
                    "accuracy": accuracy,
                    "peak_memory_bytes_per_rank": peaks,
                    "forest_bytes": forest_bytes(model.estimator_),
                    "trees_per_rank": model.trees_per_rank_.tolist(),
                }
            )
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--test-rows", type=int, default=100_000)
    parser.add_argument("--trees", type=int, default=12)
    parser.add_argument("--min-samples-leaf", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("bench-results/forest.json"))
    parser.add_argument(
        "--side", choices=("sklearn", "mpitrain"), help=argparse.SUPPRESS
    )
    parser.add_argument("--train", help=argparse.SUPPRESS)
    parser.add_argument("--test", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side == "sklearn":
        return sklearn_side(args)
    if args.side == "mpitrain":
        return mpitrain_side(args)

    from mpitrain.data import write_json
    from mpitrain.datasets import make_data
    from mpitrain.report import provenance

    made_with = provenance(Path(__file__).resolve().parent)
    with tempfile.TemporaryDirectory(prefix="bench-forest-") as folder:
        train, test = f"{folder}/train.h5", f"{folder}/test.h5"
        common = dict(features=FEATURES, classes=2, informative=INFORMATIVE, noise=0.3)
        make_data("classification", train, rows=args.rows, seed=1, **common)
        make_data("classification", test, rows=args.test_rows, seed=2, **common)
        forwarded = [
            "--rows", str(args.rows), "--trees", str(args.trees),
            "--min-samples-leaf", str(args.min_samples_leaf), "--train", train, "--test", test,
        ]  # fmt: skip
        script = str(Path(__file__).resolve())
        load_before = os.getloadavg()
        sklearn_result = run_side(script, "sklearn", forwarded)
        load_between = os.getloadavg()
        mpitrain_result = run_side(script, "mpitrain", forwarded, ranks=2)
    ratio = mpitrain_result["seconds"] / sklearn_result["seconds"]
    result = {
        "benchmark": "RandomForestClassifier: 2 ranks x 1 thread (merged forest) vs scikit-learn, 1 process x 2 threads",
        "data": {
            "rows": args.rows,
            "test_rows": args.test_rows,
            "features": FEATURES,
            "informative": INFORMATIVE,
            "classes": 2,
            "kind": "mpitrain.datasets.make_data('classification', noise=0.3), train seed 1, test seed 2",
        },
        "forest": {**forest_params(args), "max_features": "sqrt"},
        "sklearn": sklearn_result,
        "mpitrain": mpitrain_result,
        "time_ratio": ratio,
        "accuracy_gap_points": 100
        * (mpitrain_result["accuracy"] - sklearn_result["accuracy"]),
        "target": {"at_most": 0.7, "ratio": ratio, "met": ratio <= 0.7},
        "load_average_before": load_before,
        "load_average_between": load_between,
        "load_average_after": os.getloadavg(),
        "note": "a shared 2-core machine: other work ran at the same time (see the load averages)",
        "provenance": made_with,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, result)
    print(
        json.dumps(
            {k: result[k] for k in ("time_ratio", "accuracy_gap_points", "target")},
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
