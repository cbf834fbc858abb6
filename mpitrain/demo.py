"""``mpitrain demo``: the whole exact-regression workflow on generated data.

Generate a data set, fit linear, ridge and polynomial regression across the
ranks (each rank reads only its rows), score them by reduction, and check
each against scikit-learn fitted in one process on all rows.  For that
check only, rank 0 reads the whole file itself; no rows move between ranks.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import argparse

    from .cli import _Run

__all__ = ["run_demo"]


def _models():
    from sklearn import linear_model
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import PolynomialFeatures

    from . import linear

    return [
        ("linear", linear.LinearRegression(), lambda: linear_model.LinearRegression()),
        ("ridge", linear.Ridge(alpha=10.0), lambda: linear_model.Ridge(alpha=10.0)),
        (
            "polynomial",
            linear.PolynomialRegression(degree=2),
            lambda: make_pipeline(PolynomialFeatures(2, include_bias=False), linear_model.LinearRegression()),
        ),
    ]


def _coef(model) -> np.ndarray:
    final = model.steps[-1][1] if hasattr(model, "steps") else model
    return np.append(np.ravel(final.coef_), final.intercept_)


def run_demo(run: "_Run", args: "argparse.Namespace") -> None:
    """Run the demo. Collective over ``run.comm``."""
    import joblib

    from .cli import _read, _write_on_root
    from .data import atomic_path, make_data
    from .metrics import regression_scores
    from .report import format_table, write_json

    out = os.path.abspath(args.out)
    data = os.path.join(out, "data.h5")

    def generate():
        os.makedirs(out, exist_ok=True)
        make_data("regression", data, rows=args.rows, features=args.features,
                  informative=max(1, args.features // 2), noise=1.0, seed=0,
                  progress=run.progress.counter("generating data", args.rows))

    run.say(f"demo: {args.rows:,} rows x {args.features} features, {run.size} rank(s), "
            f"{run.threads} thread(s) per rank")
    _write_on_root(run, f"writing {data}", generate)
    rows, read_seconds = _read(run, data, "X", "y", None)

    results = []
    for name, estimator, _ in _models():
        estimator.set_params(comm=run.comm)
        tic = time.perf_counter()
        estimator.fit(rows.X, rows.y)
        fit_seconds = time.perf_counter() - tic
        scores = regression_scores(rows.y, estimator.predict(rows.X), comm=run.comm)
        path = os.path.join(out, f"{name}.joblib")

        def save(model=estimator.estimator_, path=path):
            with atomic_path(path) as tmp:
                joblib.dump(model, tmp)

        _write_on_root(run, f"writing {path}", save)
        run.say(f"{name}: fitted in {fit_seconds:.2f} s, R² {scores['r2']:.6f}")
        results.append({"model": name, "fit_seconds": fit_seconds, "scores": scores,
                        "coef": _coef(estimator.estimator_), "model_file": path})

    run.say("reference: scikit-learn on all rows in one process (rank 0 reads the whole file)")
    reference: list[dict] = []

    def fit_reference():
        import h5py
        from sklearn.metrics import r2_score

        with h5py.File(data, "r") as f:
            X, y = f["X"][:], f["y"][:]
        for (name, _, make), mine in zip(_models(), results):
            tic = time.perf_counter()
            model = make().fit(X, y)
            seconds = time.perf_counter() - tic
            theirs = _coef(model)
            diff = float(np.max(np.abs(mine["coef"] - theirs)) / np.max(np.abs(theirs)))
            reference.append({"fit_seconds": seconds, "r2": float(r2_score(y, model.predict(X))),
                              "max_relative_coef_difference": diff})

    _write_on_root(run, "fitting the scikit-learn reference", fit_reference)
    if run.rank != 0:
        return
    table = [
        [r["model"], f"{r['fit_seconds']:.3f}", f"{ref['fit_seconds']:.3f}",
         f"{ref['max_relative_coef_difference']:.1e}", f"{r['scores']['r2']:.6f}", f"{ref['r2']:.6f}"]
        for r, ref in zip(results, reference)
    ]
    text = format_table(
        ["model", f"mpitrain fit s ({run.size} ranks)", "sklearn fit s (1 process)",
         "max rel. coef diff", "R² mpitrain", "R² sklearn"], table)
    report = {"rows": args.rows, "features": args.features, "ranks": run.size, "layout": run.layout,
              "read_seconds_rank0": read_seconds, "models": [dict(r, reference=ref) for r, ref in
                                                             zip(results, reference)]}
    write_json(os.path.join(out, "report.json"), report)
    print(text, flush=True)
    print(f"\nmodels, data and report.json written to {out}", flush=True)
