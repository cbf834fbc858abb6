#!/usr/bin/env python
"""Benchmark: MLPClassifier on 2 ranks (one thread each) against scikit-learn in one process on 2 threads.

A generated image-like set (28 x 28 pixels, 10 classes: smooth class
templates, shifted and noisy, values in [0, 1]) of ``--rows`` rows, made
block by block from fixed seeds so every rank makes only its own rows.
One hidden layer of ``--hidden`` units (784 x 100 + 100 x 10 + 110 =
79,510 weights by default: the 10^5 case of the cost model).

- lbfgs at equal iterations (``--lbfgs-iterations``, scikit-learn's
  ``max_iter``): scikit-learn in one process with 2 BLAS threads vs
  ``mpiexec -n 2`` with 1 thread per rank, strategy exact;
- adam at equal epochs (``--adam-epochs``), batch 200, the same.

Fit time only (the data are made before the clock starts); each side's
final ``loss_`` is recorded (they agree, as the tests check at small
sizes), and the ranks' communication: lbfgs, the time in the broadcasts
and reductions per evaluation; adam, the time in the Allreduce per step.
The machine's load average is recorded before and after: timings taken on
a shared machine are noisy.

    python scripts/bench_mlp.py --out bench-results/mlp.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from pathlib import Path

import numpy as np
from _side_by_side import run_side

SIDE = 28
CLASSES = 10
BLOCK = 1000


def templates(seed: int) -> np.ndarray:
    """Ten smooth 28 x 28 class templates in [0, 1]. Pure."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    out = np.empty((CLASSES, SIDE, SIDE))
    for c in range(CLASSES):
        field = gaussian_filter(rng.normal(size=(SIDE, SIDE)), sigma=3.0)
        field -= field.min()
        out[c] = field / field.max()
    return out


def make_rows(start: int, stop: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``start .. stop - 1`` of the image-like set, the same whoever makes them. Pure."""
    base = templates(seed)
    X, y = [], []
    for block in range(start // BLOCK, (stop - 1) // BLOCK + 1):
        rng = np.random.default_rng([seed, block])
        labels = rng.integers(0, CLASSES, BLOCK)
        shifts = rng.integers(-2, 3, size=(BLOCK, 2))
        noise = rng.normal(scale=0.35, size=(BLOCK, SIDE, SIDE))
        images = np.empty((BLOCK, SIDE, SIDE))
        for i in range(BLOCK):
            images[i] = np.roll(base[labels[i]], tuple(shifts[i]), axis=(0, 1))
        images = np.clip(images + noise, 0.0, 1.0).reshape(BLOCK, -1)
        lo = max(start - block * BLOCK, 0)
        hi = min(stop - block * BLOCK, BLOCK)
        X.append(images[lo:hi])
        y.append(labels[lo:hi])
    return np.concatenate(X), np.concatenate(y)


def params(solver: str, args) -> dict:
    common = dict(hidden_layer_sizes=(args.hidden,), random_state=0, solver=solver)
    if solver == "lbfgs":
        return {**common, "max_iter": args.lbfgs_iterations}
    return {**common, "max_iter": args.adam_epochs, "batch_size": 200}


def sklearn_side(args) -> None:
    """One process, BLAS threads as the environment says: fit and print JSON."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    warnings.simplefilter("ignore", ConvergenceWarning)
    X, y = make_rows(0, args.rows)
    out = {}
    for solver in ("lbfgs", "adam"):
        model = MLPClassifier(**params(solver, args))
        tic = time.perf_counter()
        model.fit(X, y)
        out[solver] = {
            "seconds": time.perf_counter() - tic,
            "loss": float(model.loss_),
            "n_iter": int(model.n_iter_),
        }
    print(json.dumps(out))


def mpitrain_side(args) -> None:
    """Every rank: its rows, then the collective fits; rank 0 prints JSON."""
    from sklearn.exceptions import ConvergenceWarning

    from mpitrain.comm import get_comm
    from mpitrain.data import row_range
    from mpitrain.neural_network import MLPClassifier

    warnings.simplefilter("ignore", ConvergenceWarning)
    comm = get_comm()
    start, stop = row_range(args.rows, comm.Get_size(), comm.Get_rank())
    X, y = make_rows(start, stop)
    out = {}
    for solver in ("lbfgs", "adam"):
        model = MLPClassifier(**params(solver, args), comm=comm)
        comm.Barrier()
        tic = time.perf_counter()
        model.fit(X, y)
        seconds = time.perf_counter() - tic
        times = comm.gather(model.timings_, root=0)
        if comm.Get_rank() == 0:
            entry = {
                "seconds": seconds,
                "loss": float(model.loss_),
                "n_iter": int(model.n_iter_),
                "timings_per_rank": times,
            }
            n_weights = sum(c.size for c in model.coefs_) + sum(
                b.size for b in model.intercepts_
            )
            entry["n_weights"] = int(n_weights)
            if solver == "lbfgs":
                entry["n_evaluations"] = int(model.n_evaluations_)
                # rank 1 waits for rank 0's optimiser inside its communication time:
                # rank 0's is the collectives' own cost
                entry["communicate_per_evaluation_rank0_ms"] = (
                    1e3 * times[0]["communicate"] / model.n_evaluations_
                )
            else:
                entry["n_steps"] = int(model.n_steps_)
                entry["communicate_per_step_ms"] = [
                    1e3 * t["communicate"] / model.n_steps_ for t in times
                ]
            out[solver] = entry
    if comm.Get_rank() == 0:
        print(json.dumps(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=60000)
    parser.add_argument("--hidden", type=int, default=100)
    parser.add_argument("--lbfgs-iterations", type=int, default=20)
    parser.add_argument("--adam-epochs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench-results/mlp.json"))
    parser.add_argument(
        "--side", choices=("sklearn", "mpitrain"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.side == "sklearn":
        return sklearn_side(args)
    if args.side == "mpitrain":
        return mpitrain_side(args)

    from mpitrain.data import write_json
    from mpitrain.report import provenance

    made_with = provenance(Path(__file__).resolve().parent)
    load_before = os.getloadavg()
    forwarded = [
        "--rows",
        str(args.rows),
        "--hidden",
        str(args.hidden),
        "--lbfgs-iterations",
        str(args.lbfgs_iterations),
        "--adam-epochs",
        str(args.adam_epochs),
    ]
    script = str(Path(__file__).resolve())
    sklearn_result = run_side(script, "sklearn", forwarded)
    mpitrain_result = run_side(script, "mpitrain", forwarded, ranks=2)
    targets = {"lbfgs": 0.7, "adam": 0.8}
    # The targets are at equal iterations (lbfgs) and epochs (adam): a side
    # that stopped early did less work, and its ratio meets nothing.
    equal_work = {
        solver: sklearn_result[solver]["n_iter"] == mpitrain_result[solver]["n_iter"]
        for solver in targets
    }
    ratios = {
        solver: mpitrain_result[solver]["seconds"] / sklearn_result[solver]["seconds"]
        for solver in targets
    }
    result = {
        "benchmark": "MLPClassifier: 2 ranks x 1 thread (exact) vs scikit-learn, 1 process x 2 threads",
        "data": {
            "rows": args.rows,
            "features": SIDE * SIDE,
            "classes": CLASSES,
            "kind": "generated image-like (scripts/bench_mlp.py make_rows)",
        },
        "network": {"hidden_layer_sizes": [args.hidden]},
        "lbfgs_iterations": args.lbfgs_iterations,
        "adam_epochs": args.adam_epochs,
        "sklearn": sklearn_result,
        "mpitrain": mpitrain_result,
        "time_ratio": ratios,
        "targets": {
            solver: {
                "at_most": t,
                "ratio": ratios[solver],
                "met": equal_work[solver] and ratios[solver] <= t,
            }
            for solver, t in targets.items()
        },
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "note": "a shared 2-core machine: other work ran at the same time (see the load averages)",
        "provenance": made_with,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, result)
    print(json.dumps(result["targets"], indent=2))


if __name__ == "__main__":
    main()
