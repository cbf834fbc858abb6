#!/usr/bin/env python3
"""Collect the results of a sweep (slurm/sweep.sbatch) into one table.

Each array task ``i`` of the sweep leaves in the sweep folder::

    task-<i>.options   the ``mpitrain train`` options it tried
    task-<i>.json      its report (``mpitrain train --report``), if it finished
    task-<i>.skops     its model, if it finished

This script reads them, optionally scores every model on held-out rows
(``--valid``), writes ``sweep.csv`` into the folder (best score first) and
prints the same table.  A task without a report is listed as failed, and the
exit status is then 1, so that the collecting job shows up as failed too.

Usage::

    python slurm/collect_sweep.py sweep-1234 --valid valid.h5
    python slurm/collect_sweep.py sweep-1234 --tasks 12 --out results.csv

Plain Python (json, csv); h5py and mpitrain's model loader are imported only for
``--valid``.  Models are loaded without running code from them (skops files of
the types mpitrain writes); a pickle or joblib model only with ``--trust-pickle``
(see docs/trust.md).
One process: the held-out rows must fit in its memory.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

#: Columns always present, in this order; varying hyperparameters go after "options".
FIRST_COLUMNS = ["task", "status", "options"]
LAST_COLUMNS = [
    "ranks",
    "nodes",
    "threads_per_rank",
    "rows",
    "fit_seconds",
    "wall_seconds",
    "model_file",
]


def find_tasks(folder: Path, expected: int | None) -> list[int]:
    """Task numbers of the sweep: ``0 .. expected-1``, or those that left a file."""
    found = {
        int(m.group(1))
        for p in folder.iterdir()
        if (m := re.fullmatch(r"task-(\d+)\.(options|json)", p.name))
    }
    if expected is not None:
        return sorted(found | set(range(expected)))
    return sorted(found)


def read_task(folder: Path, task: int) -> dict[str, Any]:
    """One row of the table from a task's files (the report may be missing)."""
    options_file = folder / f"task-{task}.options"
    report_file = folder / f"task-{task}.json"
    row: dict[str, Any] = {
        "task": task,
        "options": options_file.read_text().strip() if options_file.exists() else "",
    }
    if not report_file.exists():
        row["status"] = (
            "failed: no report (see the task's log)"
            if options_file.exists()
            else "did not start"
        )
        return row
    try:
        report = json.loads(report_file.read_text())
    except (OSError, ValueError) as exc:
        row["status"] = f"failed: unreadable report ({exc})"
        return row
    layout = report.get("layout") or {}
    seconds = report.get("seconds") or {}
    row.update(
        {
            "status": "ok",
            "params": report.get("params") or {},
            "estimator": report.get("estimator"),
            "ranks": report.get("ranks"),
            "nodes": layout.get("nodes"),
            "threads_per_rank": layout.get("threads_per_rank"),
            "rows": report.get("rows"),
            # Every timed phase but the read: the training itself.
            "fit_seconds": round(sum(v for k, v in seconds.items() if k != "read"), 3),
            "wall_seconds": round(report.get("wall_seconds") or 0.0, 3),
            "model_file": report.get("model_file"),
        }
    )
    return row


def varying_params(rows: list[dict[str, Any]]) -> list[str]:
    """Hyperparameters whose value differs between the finished tasks.

    With a single finished task nothing differs: then those its options name.
    """
    finished = [r["params"] for r in rows if r["status"] == "ok"]
    names = sorted({name for params in finished for name in params})
    if len(finished) <= 1:
        return [
            n
            for n in names
            if any(
                f"--{n.replace('_', '-')}" in r["options"] or f"{n}=" in r["options"]
                for r in rows
            )
        ]
    return [
        n
        for n in names
        if len({json.dumps(p.get(n), sort_keys=True, default=str) for p in finished})
        > 1
    ]


def score_models(
    rows: list[dict[str, Any]],
    valid: str,
    x: str,
    y: str,
    trust_pickle: bool = False,
) -> str:
    """Score each finished task's model on the held-out rows; returns the metric's name.

    A model that cannot be loaded safely (a pickle without ``trust_pickle``)
    marks its task as failed, saying why.
    """
    import h5py
    from sklearn.base import is_classifier

    from mpitrain.model_io import load_model

    with h5py.File(valid, "r") as f:
        X, target = f[x][...], f[y][...]
    if target.dtype.kind in "SO":  # text labels are stored as bytes
        target = target.astype(str)
    metric = "score"
    for row in rows:
        if row["status"] != "ok":
            continue
        try:
            model = load_model(row["model_file"], trusted=trust_pickle)
            row["score"] = float(model.score(X, target))
            metric = "accuracy" if is_classifier(model) else "r2"
        except Exception as exc:
            row["status"] = f"failed: cannot score ({type(exc).__name__}: {exc})"
    return metric


def format_table(header: list[str], rows: list[list[str]]) -> str:
    """A plain left-aligned text table."""
    cells = [header, *rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def cell(value: Any, precise: bool = False) -> str:
    """How a value looks in the printed table (or, ``precise``, in the CSV: every digit)."""
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value) if precise or not math.isfinite(value) else f"{value:.6g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def collect(
    folder: Path,
    expected: int | None,
    valid: str | None,
    x: str,
    y: str,
    out: Path,
    trust_pickle: bool = False,
) -> tuple[list[str], list[dict[str, Any]]]:
    """Build the table of a sweep folder, write it as CSV to ``out``; returns (columns, rows)."""
    rows = [read_task(folder, t) for t in find_tasks(folder, expected)]
    params = varying_params(rows)
    score_columns: list[str] = []
    if valid:
        metric = score_models(rows, valid, x, y, trust_pickle)
        score_columns = ["score", "metric"]
        for row in rows:
            if "score" in row:
                row["metric"] = metric
    for row in rows:
        for name in params:
            if row["status"] == "ok" or "params" in row:
                row[name] = row["params"].get(name)
    # Best score first (failures last); without scores, in task order.
    rows.sort(
        key=lambda r: (
            r["status"] != "ok",
            -r.get("score", -math.inf) if valid else 0,
            r["task"],
        )
    )
    columns = FIRST_COLUMNS + params + score_columns + LAST_COLUMNS
    with replaced_atomically(out) as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([cell(row.get(c), precise=True) for c in columns])
    return columns, rows


@contextmanager
def replaced_atomically(out: Path) -> Iterator[TextIO]:
    """A text file that replaces ``out`` once written whole; on an error ``out`` is untouched.

    The temporary file beside ``out`` gets an unpredictable name and is
    created exclusively (``tempfile.mkstemp``: ``O_CREAT | O_EXCL``, which
    never follows a symbolic link), so nobody can plant a link there that
    would make this script write elsewhere; it gets the umask's permissions,
    as ``open`` would give, is flushed to disk and renamed over ``out``:
    readers never see half a table.
    """
    fd, tmp = tempfile.mkstemp(
        prefix=f".{out.name}.", suffix=".tmp", dir=out.parent or "."
    )
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "w", newline="") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "folder", type=Path, help="the sweep folder (sweep-<arrayjobid>)"
    )
    parser.add_argument(
        "--tasks",
        type=int,
        default=None,
        help="how many configurations the sweep had (lists tasks that left nothing)",
    )
    parser.add_argument(
        "--valid",
        default=None,
        metavar="VALID.h5",
        help="held-out rows to score each model on",
    )
    parser.add_argument(
        "--x", default="X", help="feature dataset in VALID (default: X)"
    )
    parser.add_argument("--y", default="y", help="target dataset in VALID (default: y)")
    parser.add_argument(
        "--trust-pickle",
        action="store_true",
        help="also load pickle or joblib model files with --valid: loading one can run "
        "any code, so pass this only for files you trust as a program (docs/trust.md)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="CSV to write (default: FOLDER/sweep.csv)",
    )
    args = parser.parse_args(argv)
    if not args.folder.is_dir():
        parser.error(f"{args.folder} is not a folder")
    out = args.out or args.folder / "sweep.csv"
    columns, rows = collect(
        args.folder, args.tasks, args.valid, args.x, args.y, out, args.trust_pickle
    )
    shown = [c for c in columns if c != "model_file"]
    print(format_table(shown, [[cell(r.get(c)) for c in shown] for r in rows]))
    failed = [r["task"] for r in rows if r["status"] != "ok"]
    if rows and rows[0]["status"] == "ok" and args.valid:
        best = rows[0]
        print(
            f"\nbest: task {best['task']} ({best['options']}): {best['metric']} {best['score']:.6g}"
        )
    print(
        f"\n{len(rows) - len(failed)} of {len(rows)} task(s) finished; table written to {out}"
    )
    if failed:
        print(f"failed tasks: {failed}", file=sys.stderr)
    return 1 if failed or not rows else 0


if __name__ == "__main__":
    sys.exit(main())
