"""scripts/bench_scaling.py: a quick real run (schema, rows, phases, PNG), the phase split, the cost model.

The smoke test runs the script as a user would, with tiny sizes at 1 and 2
ranks, and checks its JSON against what it must describe: the row split
against numpy's ``array_split``, the phases against the outside wall time,
and the PNG by decoding it.  The pure parts (phases from a report, the
cost model of docs/performance.md) are tested in the pytest process.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from mpitrain.data import row_counts

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bench_scaling.py"
PHASES = {"read", "compute", "communicate", "solve", "wait", "startup"}


def _load_script():
    spec = importlib.util.spec_from_file_location("bench_scaling", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


bench = _load_script()


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One quick run of the script: ridge (streamed statistics) and svc (cascade), 1 and 2 ranks."""
    tmp = tmp_path_factory.mktemp("bench")
    out = tmp / "results" / "scaling.json"
    command = [
        sys.executable,
        str(SCRIPT),
        "--quick",
        "--models",
        "ridge,svc",
        "--rows",
        "2001",
        "--data-dir",
        str(tmp / "data"),
        "--out",
        str(out),
    ]
    tic = time.perf_counter()
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=400,
        env={
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        },
    )
    wall = time.perf_counter() - tic
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    return json.loads(out.read_text()), out, wall, done.stdout


@pytest.mark.slow
def test_quick_run_schema(quick_run):
    result, _, wall, _ = quick_run
    assert result["machine"]["cores"] == _cores()
    assert result["failures"] == []
    for experiment in ("strong", "weak"):
        entries = result[experiment]
        assert {(e["model"], e["ranks"]) for e in entries} == {
            ("ridge (exact)", 1),
            ("ridge (exact)", 2),
            ("svc (cascade)", 1),
            ("svc (cascade)", 2),
        }
        for e in entries:
            assert isinstance(e["ranks"], int) and isinstance(e["model"], str)
            assert isinstance(e["seconds"], float) and 0 < e["seconds"] < wall
            # The five phases, and the ones a report measures apart (the cascade's import).
            assert PHASES <= set(e["phases"]) <= PHASES | {"import", "save"}
            assert all(isinstance(v, float) and v >= 0 for v in e["phases"].values())
            # The phases split the outside wall time, apart from phases that ran concurrently.
            assert sum(e["phases"].values()) == pytest.approx(
                e["seconds"] + e["overlap_seconds"], rel=1e-9
            )
            assert e["oversubscribed"] is (
                e["ranks"] * e["threads_per_rank"] > _cores()
            )
            assert e["threads_per_rank"] == 1
            memory = e["peak_memory_bytes_per_rank"]
            assert len(memory) == e["ranks"] and all(
                isinstance(m, int) and m > 10_000_000 for m in memory
            )
            assert len(e["phases_per_rank"]) == e["ranks"]
    assert result["config"]["weak_rows_per_rank"] == {"ridge": 1000, "svc": 150}
    # What the timings measured (tests/test_bench_provenance.py checks the fields in depth).
    made_with = result["provenance"]
    assert len(made_with["git"]["commit"]) == 40
    assert made_with["versions"]["numpy"] == np.__version__
    # The ranks' own report names the same MPI library (its first line).
    first_line = made_with["mpi_library_version"].splitlines()[0].strip()
    assert first_line == result["machine"]["mpi_library"]


@pytest.mark.slow
def test_quick_run_rows_match_the_requested_split(quick_run):
    result, _, _, _ = quick_run
    for experiment in ("strong", "weak"):
        for e in result[experiment]:
            svm = e["model"].startswith("svc")
            features = 4 if svm else 5
            if experiment == "strong":
                rows = 300 if svm else 2001
            else:
                rows = (150 if svm else 1000) * e["ranks"]
            assert e["rows"] == rows and e["features"] == features
            # The partition at the share the run reports (1 for the SVM, which holds its rows).
            split = list(row_counts(rows, e["ranks"], e["root_share"]))
            if svm:
                assert e["root_share"] == 1.0
            assert e["rows_per_rank"] == split
            # Each rank holds its X rows and its targets as float64 (svc: integer labels, also 8 bytes).
            assert e["slice_bytes_per_rank"] == [8 * r * (features + 1) for r in split]


@pytest.mark.slow
def test_quick_run_phase_sources_and_details(quick_run):
    result, _, _, _ = quick_run
    for e in result["strong"]:
        if e["model"] == "ridge (exact)":
            # Streamed statistics: the report splits the fit.
            assert e["phase_sources"]["compute"] == "report local_compute"
            assert e["phase_sources"]["communicate"] == "report communicate"
            if e["ranks"] == 1:
                assert e["phases"]["communicate"] < 0.05
        else:
            # The cascade splits its fit too: local fits and margin checks,
            # rank 0's refits, model broadcasts.
            assert e["phase_sources"]["compute"] == "report local_compute"
            assert e["phase_sources"]["solve"] == "report solve"
            cascade = e["details"]["cascade"]
            assert cascade["support_vectors"] == e["details"]["support_vectors"] > 0
            assert cascade["layers"] == (0 if e["ranks"] == 1 else 1)
            if e["ranks"] == 2:
                assert cascade["bytes_moved"] > 0


@pytest.mark.slow
def test_quick_run_shares_identical_runs_and_summarises(quick_run):
    result, _, _, stdout = quick_run

    def pair(model):
        return [
            next(e for e in result[x] if e["model"] == model and e["ranks"] == 2)
            for x in ("strong", "weak")
        ]

    # svc: the weak run at 2 ranks reads the strong file (2 x 150 = 300 rows): measured once, listed in both.
    strong, weak = pair("svc (cascade)")
    assert strong["data"] == weak["data"] and strong["seconds"] == weak["seconds"]
    # ridge: 2 x 1000 rows is not the strong file of 2001 rows: two runs.
    strong, weak = pair("ridge (exact)")
    assert strong["data"] != weak["data"] and strong["command"] != weak["command"]
    for row in result["summary"]["strong"]:
        entry = next(
            e
            for e in result["strong"]
            if e["model"] == row["model"] and e["ranks"] == row["ranks"]
        )
        assert (
            row["median_seconds"] == entry["seconds"]
        )  # one repeat: the median is the run
        one = next(
            e
            for e in result["strong"]
            if e["model"] == row["model"] and e["ranks"] == 1
        )
        assert row["speedup"] == pytest.approx(one["seconds"] / entry["seconds"])
    assert "strong scaling (medians)" in stdout and "weak scaling (medians)" in stdout


@pytest.mark.slow
def test_quick_run_png(quick_run):
    result, out, _, _ = quick_run
    png = out.with_suffix(".png")
    assert result["plot"] == str(png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(png)
    # Two columns (strong, weak) by two rows (speedup or time, phases).
    assert image.shape[0] > 800 and image.shape[1] > 1000
    rgb = (image[..., :3] * 255).round().astype(np.uint32)
    assert np.unique(rgb[..., 0] << 16 | rgb[..., 1] << 8 | rgb[..., 2]).size > 50
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]


# --------------------------------------------------------------------- pure parts


def _report(seconds: dict, wall: float, per_rank: list[dict] | None = None) -> dict:
    return {
        "seconds": seconds,
        "wall_seconds": wall,
        "per_rank": per_rank or [{"rank": 0, "seconds": seconds}],
    }


def test_phases_of_a_streamed_fit():
    split = bench.derive_phases(
        _report(
            {"read": 1.0, "local_compute": 2.0, "communicate": 0.5, "solve": 0.25}, 5.0
        ),
        7.0,
    )
    assert split["phases"] == {
        "read": 1.0,
        "compute": 2.0,
        "communicate": 0.5,
        "solve": 0.25,
        "wait": 1.25,
        "startup": 2.0,
    }
    assert split["overlap_seconds"] == 0.0


def test_phases_that_overlap_leave_no_negative_wait():
    # Reading on its thread overlaps computing: 3 + 3 s of phases in 5 s.
    split = bench.derive_phases(_report({"read": 3.0, "local_compute": 3.0}, 5.0), 6.0)
    assert split["phases"]["wait"] == 0.0 and split["overlap_seconds"] == 1.0
    assert sum(split["phases"].values()) == 6.0 + 1.0


def test_phases_of_an_undivided_fit_and_of_a_reported_wait():
    split = bench.derive_phases(_report({"read": 0.5, "fit": 2.0}, 4.0), 5.0)
    assert split["phases"]["compute"] == 2.0 and split["phases"]["communicate"] == 0.0
    assert "undivided" in split["phase_sources"]["compute"]
    assert split["phases"]["wait"] == 1.5
    # A report that splits the fit (and measures waiting) is used as it is; "fit" is then a total.
    seconds = {
        "read": 0.5,
        "fit": 2.0,
        "local_compute": 1.0,
        "communicate": 0.5,
        "solve": 0.25,
        "idle": 0.25,
    }
    split = bench.derive_phases(_report(seconds, 4.0), 5.0)
    assert split["phases"] == {
        "read": 0.5,
        "compute": 1.0,
        "communicate": 0.5,
        "solve": 0.25,
        "wait": 0.25,
        "startup": 1.0,
    }
    assert split["phase_sources"]["wait"] == "report idle"


def test_phases_the_report_names_itself_are_kept_out_of_wait():
    split = bench.derive_phases(
        _report({"read": 0.5, "fit": 2.0, "import": 0.75, "save": 0.25}, 4.0), 5.0
    )
    assert split["phases"] == {
        "read": 0.5,
        "compute": 2.0,
        "communicate": 0.0,
        "solve": 0.0,
        "wait": 0.5,
        "import": 0.75,
        "save": 0.25,
        "startup": 1.0,
    }


def test_phases_per_rank():
    per_rank = [
        {
            "rank": 0,
            "seconds": {
                "read": 1.0,
                "local_compute": 2.0,
                "communicate": 0.1,
                "solve": 0.3,
            },
        },
        {
            "rank": 1,
            "seconds": {
                "read": 0.5,
                "local_compute": 1.0,
                "communicate": 1.4,
                "solve": 0.0,
            },
        },
    ]
    split = bench.derive_phases(
        _report(
            {"read": 1.0, "local_compute": 2.0, "communicate": 1.4, "solve": 0.3},
            4.0,
            per_rank,
        ),
        4.5,
    )
    assert [r["rank"] for r in split["phases_per_rank"]] == [0, 1]
    assert split["phases_per_rank"][1]["communicate"] == 1.4
    assert split["phases_per_rank"][0]["wait"] == pytest.approx(0.6)
    assert split["phases_per_rank"][1]["wait"] == pytest.approx(1.1)


def test_cost_model_collectives_follow_the_textbook_limits():
    c = bench.CostParameters()
    m = 8.0 * 1001**2
    # One rank: nothing to send.
    assert bench.allreduce_cost(m, 1, c).seconds == 0.0
    # Large buffers: Rabenseifner and ring move 2 (P-1)/P of the buffer; a tree moves it 2 log P times.
    for P in (4, 64, 1024):
        rab, ring, tree = (
            bench.allreduce_cost(m, P, c, a) for a in ("mpich", "ring", "tree")
        )
        assert rab.bytes == pytest.approx(2 * (P - 1) / P * m) == ring.bytes
        assert tree.bytes == pytest.approx(2 * np.log2(P) * m)
        assert rab.messages == 2 * np.log2(P) and ring.messages == 2 * (P - 1)
        assert rab.seconds < tree.seconds
    # Small buffers: latency-bound recursive doubling, log P steps.
    small = bench.allreduce_cost(8.0, 1024, c)
    assert small.messages == 10 and small.seconds == pytest.approx(
        10 * (c.alpha + 8 / c.beta + 8 / c.gamma)
    )


def test_cost_model_supports_the_documents_conclusions():
    c = bench.CostParameters()
    # Exact least squares: communication does not depend on the rows, computing shrinks as 1/P.
    a, b = (
        bench.predict("exact", 64, c, n=1e9, d=1000),
        bench.predict("exact", 64, c, n=1e6, d=1000),
    )
    assert a["communicate"] == b["communicate"] and a["compute"] == pytest.approx(
        1000 * b["compute"]
    )
    assert bench.predict("exact", 1024, c, n=1e9, d=1000)["compute"] == pytest.approx(
        a["compute"] / 16
    )
    # The (d+1)² Gram dominates the bytes of the exact fit at d = 1000.
    assert a["bytes"] > 2 * (63 / 64) * 8 * 1001**2
    # The cascade stops scaling near n / s ranks (rank 0's refits on s rows), the others far beyond 1,024.
    assert bench.stops_scaling("cascade", c, n=1e6, d=100, s=1e5) <= 32
    for strategy, size in (
        ("exact", {"n": 1e9, "d": 100}),
        ("lbfgs", {"n": 1e9, "d": 100, "k": 100}),
        ("average", {"n": 1e9, "d": 100}),
    ):
        assert bench.stops_scaling(strategy, c, **size) > 1024
    cascade = bench.predict("cascade", 1024, c, n=1e6, d=100, s=1e5)
    assert cascade["serial"] > 100 * (cascade["compute"] + cascade["communicate"])


def test_cost_model_table_prints():
    table = bench.cost_model_table()
    # 2 sizes x 2 rank counts in the predictions, 2 sizes in the limits.
    assert table.count("\n| exact least squares |") == 6
    assert "stops scaling at P" in table
