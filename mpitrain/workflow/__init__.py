"""The workflows of the ``mpitrain`` commands, callable from Python with the same options.

One function per command, each collective over its ``comm`` (``None``:
``COMM_WORLD``), with the command's options as keywords and their defaults:
:func:`train` (``mpitrain train``), :func:`describe`, :func:`evaluate`,
:func:`predict`, :func:`run_demo` (``mpitrain demo``), :func:`info`,
:func:`make_data` (``mpitrain make-data``), :func:`search` (``mpitrain
search``, with :func:`merge_search_reports` for ``--merge``) and
:func:`shuffle` (``mpitrain shuffle``).  The command line (:mod:`mpitrain.cli`)
only parses arguments and calls them; the demo, the
Slurm scripts, the tests and users share this one path.

Run them under ``mpiexec -n P python script.py``, e.g.::

    from mpitrain.workflow import train

    result = train("data.h5", model="ridge", alpha=1.0, out="model.skops")
    result.model  # a plain scikit-learn Ridge, the same on every rank

Also here: what a fitted model shows (its coefficients, each rank's own
fit beside them, its evaluation as text and plots) and the run context.
"""

from mpitrain.workflow._demo import demo_models, run_demo
from mpitrain.workflow._describe import describe
from mpitrain.workflow._evaluate import evaluate, load_model, predict
from mpitrain.workflow._info import info
from mpitrain.workflow._make_data import make_data
from mpitrain.workflow._options import (
    CHECKPOINT_SECONDS,
    MODELS,
    SHORTCUTS,
    TrainOptions,
    make_estimator,
)
from mpitrain.workflow._results import (
    coefficient_plot,
    evaluation_plots,
    format_evaluation,
    local_coefficients,
    local_coefficients_from_statistics,
    model_coefficients,
)
from mpitrain.workflow._run import Run, limit_threads
from mpitrain.workflow._search import merge_search_reports, search
from mpitrain.workflow._shuffle import shuffle
from mpitrain.workflow._streamed import default_root_share
from mpitrain.workflow._train import TrainResult, run_train, train

__all__ = [
    "train",
    "run_train",
    "TrainOptions",
    "TrainResult",
    "MODELS",
    "SHORTCUTS",
    "CHECKPOINT_SECONDS",
    "make_estimator",
    "describe",
    "evaluate",
    "predict",
    "load_model",
    "run_demo",
    "demo_models",
    "info",
    "make_data",
    "search",
    "merge_search_reports",
    "shuffle",
    "Run",
    "limit_threads",
    "model_coefficients",
    "local_coefficients",
    "local_coefficients_from_statistics",
    "evaluation_plots",
    "coefficient_plot",
    "format_evaluation",
    "default_root_share",
]
