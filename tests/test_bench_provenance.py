"""Benchmark results say what they measured: the git commit and the library versions.

One benchmark script (``scripts/bench_startup.py``, its smallest run: one
repeat at one rank, a few seconds) is run as a user would run it, and its
JSON is checked against references taken independently here: the commit from
``git rev-parse``, the versions from each package's ``__version__``, the MPI
library's version string from ``MPI.Get_library_version()`` in an ``mpiexec``
job, the BLAS from numpy's build configuration.  ``provenance()`` itself is
checked on a throw-away git repository, clean and then dirty, and outside any
repository.  Every script that writes JSON must record it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import mpi4py
import numpy as np
import pytest
import scipy
import sklearn

import mpitrain
from mpitrain.report import PROVENANCE_PACKAGES, provenance
from mpitrain.testing import run_function

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"


def _git(*args: str, cwd: Path) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, check=True
    ).stdout.strip()


def _mpi_library_version(comm) -> str:
    from mpi4py import MPI

    return MPI.Get_library_version()


@pytest.fixture(scope="module")
def startup_result(tmp_path_factory):
    """``bench_startup.py --repeats 1 --ranks 1`` and the HEAD commits around it."""
    out = tmp_path_factory.mktemp("bench") / "startup.json"
    # Other work may commit meanwhile: the recorded commit is one of these two.
    before = _git("rev-parse", "HEAD", cwd=ROOT)
    done = subprocess.run(
        [
            sys.executable,
            str(SCRIPTS / "bench_startup.py"),
            "--repeats",
            "1",
            "--ranks",
            "1",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        },
    )
    after = _git("rev-parse", "HEAD", cwd=ROOT)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    return json.loads(out.read_text()), {before, after}


def test_benchmark_json_records_the_commit(startup_result):
    result, heads = startup_result
    git = result["provenance"]["git"]
    assert git["commit"] in heads and len(git["commit"]) == 40
    assert Path(git["directory"]) == SCRIPTS
    assert isinstance(git["dirty"], bool)
    assert git["dirty"] is bool(git["changed_paths"])
    for path in git["changed_paths"]:  # paths of the repository's tracked files
        assert _git("ls-files", "--", path, cwd=ROOT) or not (ROOT / path).exists()


def test_benchmark_json_records_the_library_versions(startup_result):
    result, _ = startup_result
    made_with = result["provenance"]
    assert set(made_with["versions"]) == set(PROVENANCE_PACKAGES)
    modules = {
        "mpitrain": mpitrain,
        "numpy": np,
        "scipy": scipy,
        "scikit-learn": sklearn,
        "h5py": h5py,
        "mpi4py": mpi4py,
    }
    for name, module in modules.items():
        assert made_with["versions"][name] == module.__version__, name
    assert made_with["python"] == ".".join(map(str, sys.version_info[:3]))
    assert made_with["mpitrain_path"] == str(Path(mpitrain.__file__).resolve().parent)
    assert made_with["date"].endswith("+00:00")
    assert made_with["host"] and made_with["platform"]


def test_benchmark_json_records_the_mpi_library(startup_result):
    result, _ = startup_result
    (reference,) = run_function(_mpi_library_version, 1, timeout=120)
    assert result["provenance"]["mpi_library_version"] == reference.strip()
    assert Path(result["provenance"]["mpi_library"]).exists()


def test_benchmark_json_records_the_blas(startup_result):
    result, _ = startup_result
    blas = result["provenance"]["blas"]
    assert blas and all(b["internal_api"] and b["version"] for b in blas)
    built = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
    if "openblas" not in built["name"]:
        pytest.skip(f"numpy is built with {built['name']}, not OpenBLAS")
    # numpy's own BLAS, as its build configuration names it, is among those recorded.
    assert built["version"] in {b["version"] for b in blas}


def test_provenance_of_a_clean_then_dirty_checkout(tmp_path):
    identity = ["-c", "user.name=test", "-c", "user.email=test@example.org"]
    _git("init", "-q", cwd=tmp_path)
    (tmp_path / "tracked.py").write_text("x = 1\n")
    _git("add", "tracked.py", cwd=tmp_path)
    _git(*identity, "commit", "-q", "-m", "first", cwd=tmp_path)
    head = _git("rev-parse", "HEAD", cwd=tmp_path)
    (tmp_path / "untracked.txt").write_text("scratch\n")  # not part of the code

    clean = provenance(tmp_path)["git"]
    assert clean == {
        "directory": str(tmp_path.resolve()),
        "commit": head,
        "dirty": False,
        "changed_paths": [],
    }
    (tmp_path / "tracked.py").write_text("x = 2\n")
    dirty = provenance(tmp_path)["git"]
    assert dirty["commit"] == head and dirty["dirty"] is True
    assert dirty["changed_paths"] == ["tracked.py"]


def test_provenance_outside_a_checkout(tmp_path):
    made_with = provenance(tmp_path)
    assert made_with["git"]["commit"] is None and made_with["git"]["dirty"] is None
    # The rest does not depend on git.
    assert made_with["versions"]["numpy"] == np.__version__
    json.dumps(made_with)  # plain JSON types only


def test_every_script_that_writes_json_records_provenance():
    writers = [
        p
        for p in sorted(SCRIPTS.glob("*.py"))
        if any(w in p.read_text() for w in ("json.dump", "write_json"))
    ]
    assert len(writers) >= 7
    missing = [p.name for p in writers if "provenance(" not in p.read_text()]
    assert missing == []


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="VmHWM is Linux's")
def test_peak_memory_is_the_processs_own_not_its_parents():
    """A process started by a large one reports its own peak, as the kernel counts it."""
    # The parent holds 400 MB, touched, while it starts the child.
    held = np.ones(50_000_000)
    code = (
        "import json, resource\n"
        "from mpitrain.report import peak_memory_bytes\n"
        "import numpy as np\n"
        "mine = np.ones(12_500_000)  # 100 MB of its own\n"
        "hwm = next(int(l.split()[1]) * 1024 for l in open('/proc/self/status')"
        " if l.startswith('VmHWM:'))\n"
        "print(json.dumps([peak_memory_bytes(), hwm,"
        " resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    peak, hwm, maxrss = json.loads(done.stdout)
    assert held.sum() == 50_000_000
    # ru_maxrss carries the parent's 400 MB over; the process's own peak does not.
    assert maxrss > 400e6
    assert 100e6 < peak < 350e6
    assert abs(peak - hwm) < 20e6
