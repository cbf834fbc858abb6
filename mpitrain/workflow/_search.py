"""``search``: a hyperparameter search on an HDF5 data set, with every rank.

The workflow of ``mpitrain search``, callable from Python with the same
options: read this rank's rows, run
:class:`mpitrain.model_selection.GridSearchCV` (or a random sample of the
grid), save the best candidate refitted on all rows (skops) and write the
report (JSON, and the table as CSV beside it).  ``candidates="I:J"`` runs a
slice of the candidates (one Slurm array task each, slurm/search.sbatch);
:func:`merge_search_reports` joins their partial reports.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from mpitrain import __version__
from mpitrain.errors import UsageError
from mpitrain.workflow._options import MODELS, TrainOptions, make_estimator
from mpitrain.workflow._paths import Named, check_paths, data_inputs
from mpitrain.workflow._run import Run

if TYPE_CHECKING:  # pragma: no cover
    from mpi4py.MPI import Intracomm

__all__ = [
    "search",
    "parse_grid",
    "parse_value",
    "candidate_slice",
    "report_table",
    "csv_path",
    "merge_search_reports",
]


def parse_value(text: str) -> Any:
    """One value of ``--grid``: ``None``, a bool, an int, a float, else the text. Pure."""
    if not isinstance(text, str):
        return text
    stripped = text.strip()
    if stripped in ("None", "none", "null"):
        return None
    if stripped in ("True", "true"):
        return True
    if stripped in ("False", "false"):
        return False
    for kind in (int, float):
        try:
            return kind(stripped)
        except ValueError:
            pass
    return stripped


def parse_grid(grid: Mapping[str, Any] | Iterable[str] | None) -> dict[str, list]:
    """``{name: [values]}`` from ``["NAME=V1,V2", ...]`` (or a mapping, kept). Pure.

    Raises :class:`~mpitrain.errors.UsageError` for a malformed entry or a
    name given twice.
    """
    if grid is None:
        return {}
    if isinstance(grid, Mapping):
        return {
            str(k): [
                parse_value(v) for v in (vs if isinstance(vs, (list, tuple)) else [vs])
            ]
            for k, vs in grid.items()
        }
    out: dict[str, list] = {}
    for entry in grid:
        name, sep, values = str(entry).partition("=")
        name = name.strip()
        if not sep or not name.isidentifier() or not values.strip():
            raise UsageError(f"--grid: expected NAME=V1,V2,..., got {entry!r}")
        if name in out:
            raise UsageError(f"--grid: {name} is given twice")
        out[name] = [parse_value(v) for v in values.split(",")]
    return out


def candidate_slice(text: str | None, n_candidates: int) -> slice:
    """``"I:J"`` (Python slice bounds, either may be empty) as a slice of the candidates. Pure."""
    if text is None:
        return slice(0, n_candidates)
    start, sep, stop = str(text).partition(":")
    try:
        bounds = [int(b) if b.strip() else None for b in (start, stop)]
    except ValueError:
        bounds = None
    if not sep or bounds is None:
        raise UsageError(f"--candidates: expected I:J, got {text!r}")
    chosen = slice(*bounds)
    if not range(n_candidates)[chosen]:
        raise UsageError(
            f"--candidates {text} selects none of the {n_candidates} candidates"
        )
    return chosen


def csv_path(report: str | os.PathLike) -> str:
    """The CSV beside a report: ``R.json`` -> ``R.csv``. Pure."""
    root, ext = os.path.splitext(os.fspath(report))
    return (root if ext.lower() == ".json" else os.fspath(report)) + ".csv"


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return value


def report_table(cv_results: Mapping[str, Any]) -> dict[str, list]:
    """``cv_results_`` as JSON-ready lists (masked ``param_`` entries as ``None``). Pure."""
    table: dict[str, list] = {}
    for key, values in cv_results.items():
        if key == "params":
            table[key] = [{k: _plain(v) for k, v in p.items()} for p in values]
        elif isinstance(values, np.ma.MaskedArray):
            mask = np.ma.getmaskarray(values)
            table[key] = [
                None if m else _plain(v) for v, m in zip(values.data.tolist(), mask)
            ]
        else:
            table[key] = [_plain(v) for v in np.asarray(values).tolist()]
    return table


def _write_csv(path: str, table: Mapping[str, list]) -> None:
    """The table as CSV, one candidate a line, atomically. Local."""
    from mpitrain.data import atomic_path

    keys = [k for k in table if k != "params"]
    n = len(table["params"])
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["params", *keys])
            for i in range(n):
                writer.writerow(
                    [
                        json.dumps(table["params"][i], sort_keys=True, default=repr),
                        *(_csv_cell(table[k][i]) for k in keys),
                    ]
                )


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan"
    return value


def _refuse_unknown(grid: Mapping[str, list], estimators: list[Any]) -> None:
    """Raise UsageError for a ``--grid`` name that none of ``estimators`` has. Local."""
    valid = set().union(*(e.get_params() for e in estimators)) - {"comm"}
    unknown = sorted(set(grid) - valid)
    if unknown:
        names = " or ".join(sorted({type(e).__name__ for e in estimators}))
        raise UsageError(
            f"--grid {', '.join(unknown)}: {names} has no such parameter; "
            f"it has: {', '.join(sorted(valid))}"
        )


#: Metrics of predicted values against a continuous target; the others need a classifier.
_REGRESSION_SCORINGS = frozenset(
    {
        "r2",
        "neg_mean_squared_error",
        "neg_root_mean_squared_error",
        "neg_mean_absolute_error",
    }
)


def _check_search_model(
    estimators: list[Any], model: str, scoring: str | Sequence[str] | None, why: str
) -> None:
    """Refuse a model the search cannot score, or metrics it cannot give. Local.

    ``estimators`` are the model's variants that may be fitted (before the
    rows are read, its classifier and its regressor; after, the one the
    target chose).  The same on every rank.
    """
    from sklearn.base import is_classifier, is_regressor

    if not any(is_classifier(e) or is_regressor(e) for e in estimators):
        raise UsageError(
            f"search scores classifiers and regressors against the target; --model "
            f"{model} is neither (fit it with mpitrain train)"
        )
    names = [scoring] if isinstance(scoring, str) else list(scoring or [])
    needs_labels = [n for n in names if n not in _REGRESSION_SCORINGS]
    if needs_labels and not any(is_classifier(e) for e in estimators):
        raise UsageError(
            f"--scoring {','.join(needs_labels)} needs a classifier; --model {model} "
            f"is a regressor{why}"
        )


def _check_candidates(candidates: list[dict[str, Any]], estimators: list[Any]) -> None:
    """Refuse a candidate whose values no variant of the model takes. Local.

    scikit-learn's check of each candidate's parameters (types and ranges),
    as ``train`` makes of ``--param``, so that a mistyped value stops the
    search before any fit instead of failing in every fold.
    """
    for candidate in candidates:
        errors = []
        for estimator in estimators:
            before = estimator.get_params()
            try:
                estimator.set_params(**candidate)._validate_params()
            except (ValueError, TypeError) as exc:
                errors.append(exc)
            finally:
                estimator.set_params(**{k: before[k] for k in candidate})
        if errors and len(errors) == len(estimators):
            shown = ", ".join(f"{k}={v!r}" for k, v in candidate.items())
            raise UsageError(f"--grid candidate {shown}: {errors[0]}")


def _variants(options: TrainOptions, comm: Any) -> list[Any]:
    """The model's classifier and regressor, where it has them. Local."""
    variants = []
    for labels in (True, False):
        try:
            variants.append(make_estimator(options, comm, labels=labels))
        except UsageError:
            continue  # this variant does not exist (say, a regressor-only model)
    return variants


def _candidates(
    grid: dict[str, list], random: int | None, seed: int
) -> list[dict[str, Any]]:
    """The search's candidates: the whole grid, or ``random`` of its points. Local."""
    from sklearn.model_selection import ParameterGrid, ParameterSampler

    if random is None:
        return list(ParameterGrid(grid))
    if random < 1:
        raise UsageError(f"--random must be at least 1, got {random}")
    # Lists only: scikit-learn samples without replacement, the same on every rank.
    return list(ParameterSampler(grid, random, random_state=seed))


def search(
    data,
    *,
    model: str,
    grid: Mapping[str, Any] | Iterable[str],
    out: str | os.PathLike,
    report: str | os.PathLike | None = None,
    random: int | None = None,
    cv: int = 5,
    scoring: str | Sequence[str] | None = None,
    refit: str | None = None,
    mode: str = "auto",
    group_size: int | None = None,
    checkpoint: str | os.PathLike | None = None,
    candidates: str | None = None,
    params: Mapping[str, Any] | Iterable[tuple[str, Any]] | None = None,
    x: str = "X",
    y: str = "y",
    sample_weight: str | None = None,
    seed: int = 0,
    comm: Intracomm | None = None,
    quiet: bool = False,
    threads_per_rank: int | None = None,
) -> dict | None:
    """Search hyperparameters of ``model`` on all rows of ``data``, as ``mpitrain search`` does.

    Collective over ``comm``.  Rank 0 saves the best candidate refitted on
    all rows to ``out`` (skops) and writes ``report`` (JSON) with the CSV
    table beside it (``R.json`` -> ``R.csv``); it prints the best
    parameters and score once.

    Parameters
    ----------
    data : str, path or sequence of them
        HDF5 file(s) with a 2-D feature and a 1-D target dataset.
    model : str
        A key of :data:`mpitrain.workflow.MODELS` (``--model``).
    grid : mapping or iterable of "NAME=V1,V2,..."
        Values of each parameter (``--grid``); strings are parsed as
        int, float, None, bool or text.
    out : str or path
        The best model (``--out``).
    report : str or path, default=None
        The JSON report (``--report``).
    random : int, default=None
        Try this many random points of the grid (``--random``).
    cv : int, default=5
        Folds (``--cv``).
    scoring : str or list of str, default=None
        One of :data:`mpitrain.model_selection.SEARCH_SCORINGS` (``--scoring``),
        or several: each is scored on every fold, and ``refit`` picks the best.
    refit : str, default=None
        With several scorings, the one that picks the best (``--refit``;
        default: the first).
    mode : {"auto", "small", "large"}, default="auto"
    group_size : int, default=None
        Ranks per candidate in large mode (``--group-size``).
    checkpoint : str or path, default=None
        Finished results, to resume from (``--checkpoint``).
    candidates : str, default=None
        ``"I:J"``: only candidates I .. J-1 (``--candidates``; for Slurm arrays).
    params : mapping, default=None
        Fixed parameters of the model (``--param NAME=VALUE``).
    x, y : str
        Feature and target datasets.
    sample_weight : str, default=None
        Dataset of row weights (``--sample-weight``): they weight every fit
        and every held-out score.
    seed : int, default=0
        Seed of ``random``'s draws.

    Returns
    -------
    dict or None
        The report on rank 0, ``None`` elsewhere.
    """
    from sklearn.base import is_classifier

    from mpitrain.comm import collective_check, print_root

    if model not in MODELS:
        raise UsageError(
            f"unknown model {model!r}; choose from {', '.join(sorted(MODELS))}"
        )
    parsed = parse_grid(grid)
    if not parsed:
        raise UsageError("search needs at least one --grid NAME=V1,V2,...")
    metrics, refit = _check_scoring(scoring, refit)
    run = Run(comm, quiet=quiet, threads_per_rank=threads_per_rank)
    options = TrainOptions(
        data=data,
        model=model,
        out=out,
        params=params,
        x=x,
        y=y,
        sample_weight=sample_weight,
    )
    outputs = [
        Named("--out", out),
        Named("--report", report),
        Named("--report (CSV)", csv_path(report) if report else None),
        Named("--checkpoint", checkpoint),
    ]
    check_paths(
        run.comm, "search", data_inputs(options.data, (x, y, sample_weight)), outputs
    )
    # A misspelt --grid name, a value out of range, a model that cannot be
    # scored or a metric it cannot give is refused before any row is read: no
    # variant of the model (classifier or regressor, decided by the labels)
    # would take it.
    everyone = _candidates(parsed, random, seed)
    variants = _variants(options, run.comm)
    if variants:
        _refuse_unknown(parsed, variants)
        _check_search_model(variants, model, metrics or scoring, "")
        _check_candidates(everyone, variants)

    from mpitrain.data import check_rows_fit, open_rows
    from mpitrain.model_selection import GridSearchCV

    reader = open_rows(
        options.data,
        x=x,
        y=y,
        sample_weight=sample_weight,
        comm=run.comm,
        labels=True,
    )
    try:
        check_rows_fit(reader, run.comm, copies=3.0, what=f"search --model {model}")
        tic = time.perf_counter()
        reader.begin()
        with collective_check(run.comm, f"reading {reader.path}"):
            rows = reader.result()
        read_seconds = time.perf_counter() - tic
    finally:
        reader.close()
    labels = rows.y.dtype.kind in "OUSiub"
    estimator = make_estimator(options, run.comm, labels=labels)
    _refuse_unknown(parsed, [estimator])
    _check_search_model(
        [estimator], model, metrics or scoring, " for a target of floats"
    )
    _check_candidates(everyone, [estimator])
    chosen = candidate_slice(candidates, len(everyone))
    picked = everyone[chosen]
    first = range(len(everyone))[chosen]
    run.say(
        f"searching {len(picked)} candidate(s) of {len(everyone)} x {cv} folds of "
        f"{type(estimator).__name__} on {rows.n_rows:,} rows, {run.size} rank(s)"
    )
    finder = GridSearchCV(
        estimator,
        # One single-point grid per candidate: exactly these, in this order.
        [{k: [v] for k, v in c.items()} for c in picked],
        scoring=metrics if metrics is not None else scoring,
        refit=refit if metrics is not None else True,
        cv=cv,
        mode=mode,
        group_size=group_size,
        checkpoint=checkpoint,
        comm=run.comm,
    )
    finder.fit(rows.X, rows.y, sample_weight=rows.sample_weight, row_offset=rows.start)
    run.say(f"mode {finder.search_mode_}: {finder.mode_reason_}")
    if not math.isfinite(finder.best_score_):
        # scikit-learn would refit the first candidate; a batch job says so instead.
        metric = refit or scoring or ("accuracy" if is_classifier(estimator) else "r2")
        raise ValueError(
            f"no candidate has a finite mean {metric}: on each, a fold's fit or "
            "score failed (the warnings above say why); no model was written"
        )
    table = report_table(finder.cv_results_)
    table["candidate"] = list(first)
    payload = {
        "mpitrain_version": __version__,
        "command": "search",
        "data": [os.path.abspath(p) for p in rows.paths] or rows.path,
        "model": model,
        "estimator": type(estimator).__name__,
        "fixed_params": {k: _plain(v) for k, v in dict(options.params).items()},
        "sample_weight": sample_weight,
        "grid": parsed,
        "random": random,
        "seed": seed,
        "n_candidates_total": len(everyone),
        "candidates": [first.start, first.stop],
        "scoring": metrics
        or scoring
        or ("accuracy" if is_classifier(estimator) else "r2"),
        "refit": refit,
        "cv": cv,
        "n_splits": finder.n_splits_,
        "mode": finder.search_mode_,
        "mode_reason": finder.mode_reason_,
        "group_size": group_size,
        "ranks": run.size,
        "rows": rows.n_rows,
        "features": rows.n_features,
        "cv_results": table,
        "best_index": int(first[finder.best_index_]),
        "best_params": {k: _plain(v) for k, v in finder.best_params_.items()},
        "best_score": finder.best_score_,
        "seconds": {
            "read": read_seconds,
            "search": finder.timings_["search"],
            "refit": finder.timings_.get("refit"),
            "wall": run.progress.elapsed(),
        },
        "model_file": os.path.abspath(out),
    }

    def save() -> None:
        from mpitrain.data import write_json
        from mpitrain.model_io import save_model

        save_model(finder.estimator_, out)
        if report:
            write_json(report, payload)
            _write_csv(csv_path(report), table)

    run.on_root(f"writing the model to {out}", save)
    print_root(
        f"best {refit or payload['scoring']} {finder.best_score_:.6g} with "
        + ", ".join(f"{k}={v!r}" for k, v in finder.best_params_.items()),
        comm=run.comm,
    )
    return payload if run.rank == 0 else None


def _check_scoring(
    scoring: str | Sequence[str] | None, refit: str | None
) -> tuple[list[str] | None, str | None]:
    """``(metrics, refit)``: several metrics and the one that picks the best, or ``(None, None)``. Pure.

    The search's own check (:func:`~mpitrain.model_selection.check_search_scoring`),
    made before any row is read, the same on every rank; ``refit`` defaults
    to the first of several metrics.
    """
    from mpitrain.model_selection import check_search_scoring

    several = isinstance(scoring, (list, tuple))
    if not several and refit is not None:
        # The command's --refit is a metric's name (the estimator's also True/False).
        raise UsageError("--refit names one of several --scoring metrics")
    if several and refit is None and scoring:
        refit = scoring[0]
    if several and refit not in scoring:
        # scikit-learn's wording names a callable and refit=False, which the command has not.
        raise UsageError(f"--refit {refit} is not one of --scoring {','.join(scoring)}")
    try:
        metrics = check_search_scoring(scoring, refit if several else True)
    except ValueError as exc:
        raise UsageError(f"--scoring / --refit: {exc}") from None
    return metrics, refit if metrics is not None else None


def merge_search_reports(
    partials: Sequence[str | os.PathLike],
    *,
    report: str | os.PathLike,
    out: str | os.PathLike | None = None,
) -> dict:
    """Join partial reports of ``search --candidates I:J`` into one. Local (one process).

    The candidates' rows are put in candidate order and ranked again as
    scikit-learn does; the best partial report's model file is copied to
    ``out``.  The partial reports must come from one search (same data,
    model, grid, folds and scoring) and must not overlap.
    """
    from mpitrain.data import atomic_path, read_json_object, write_json
    from mpitrain.model_selection import search_results

    loaded = []
    for path in partials:
        try:
            partial = read_json_object(path, "cv_results")
        except ValueError as exc:
            raise UsageError(
                f"--merge {path}: not a search report ({exc}); give the --report "
                "files of 'mpitrain search --candidates I:J'"
            ) from None
        loaded.append(partial)
    if not loaded:
        raise UsageError("--merge needs at least one partial report")
    same = (
        "data",
        "model",
        "grid",
        "random",
        "seed",
        "scoring",
        "cv",
        "fixed_params",
        "sample_weight",
        "refit",
    )
    for part, path in zip(loaded[1:], partials[1:]):
        differ = [k for k in same if part.get(k) != loaded[0].get(k)]
        if differ:
            raise UsageError(
                f"{path} comes from another search than {partials[0]} (differs in {', '.join(differ)})"
            )
    rows: dict[int, tuple[dict, dict]] = {}
    for part in loaded:
        t = part["cv_results"]
        for j, index in enumerate(t["candidate"]):
            if index in rows:
                raise UsageError(
                    f"candidate {index} is in more than one partial report"
                )
            rows[index] = ({k: v[j] for k, v in t.items()}, part)
    order = sorted(rows)
    n_splits = loaded[0]["n_splits"]

    def column(key: str) -> np.ndarray:
        return np.array(
            [np.nan if rows[i][0][key] is None else rows[i][0][key] for i in order],
            dtype=np.float64,
        ).reshape(len(order), -1)

    # Several metrics: a column of each per fold, and "refit" picks the best.
    scoring = loaded[0].get("scoring")
    names = scoring if isinstance(scoring, list) else None
    metric = loaded[0]["refit"] if names else "score"

    def splits(name: str) -> np.ndarray:
        return np.hstack([column(f"split{k}_test_{name}") for k in range(n_splits)])

    scores = {name: splits(name) for name in names} if names else splits("score")
    # Only means and deviations of the times survive in a report: re-expand them as constant.
    fit = np.repeat(column("mean_fit_time"), n_splits, axis=1)
    score_t = np.repeat(column("mean_score_time"), n_splits, axis=1)
    merged = search_results([rows[i][0]["params"] for i in order], scores, fit, score_t)
    for key in ("std_fit_time", "std_score_time"):
        merged[key] = column(key).ravel()
    table = report_table(merged)
    table["candidate"] = order
    best = int(np.argmin(merged[f"rank_test_{metric}"]))
    best_part = rows[order[best]][1]
    payload = {
        **{k: loaded[0].get(k) for k in ("mpitrain_version", "command", *same)},
        "n_candidates_total": loaded[0].get("n_candidates_total"),
        "n_splits": n_splits,
        "merged_from": [os.path.abspath(p) for p in partials],
        "modes": sorted({p["mode"] for p in loaded}),
        "cv_results": table,
        "best_index": order[best],
        "best_params": table["params"][best],
        "best_score": float(merged[f"mean_test_{metric}"][best]),
        "seconds": {"search": [p["seconds"]["search"] for p in loaded]},
        "model_file": None,
    }
    if out is not None:
        with atomic_path(out) as tmp:
            shutil.copyfile(best_part["model_file"], tmp)
        payload["model_file"] = os.path.abspath(out)
    write_json(report, payload)
    _write_csv(csv_path(report), table)
    return payload
