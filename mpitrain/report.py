"""What a run tells its user: progress on rank 0, timings, memory, the JSON report.

Nothing here communicates; callers gather per-rank figures with
:mod:`mpitrain.comm` and pass them in.
"""

from __future__ import annotations

import os
import resource
import sys
import time
from typing import Any, TextIO

__all__ = [
    "Progress",
    "peak_memory_bytes",
    "format_bytes",
    "format_table",
    "provenance",
    "installed_version",
    "PROVENANCE_PACKAGES",
]

#: Distributions whose versions :func:`provenance` records (names as pip knows them).
PROVENANCE_PACKAGES = (
    "mpitrain",
    "numpy",
    "scipy",
    "scikit-learn",
    "h5py",
    "mpi4py",
    "threadpoolctl",
    "joblib",
    "skops",
    "xgboost-cpu",
    "xgboost",
    "mpich",
    "scikit-learn-intelex",
)


def installed_version(*names: str) -> str | None:
    """The version of the first of these distributions that is installed, else ``None``. Local.

    Several names for one package: ``installed_version("xgboost-cpu", "xgboost")``.
    """
    import importlib.metadata

    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def peak_memory_bytes() -> int:
    """Peak resident memory of this process so far, in bytes. Local.

    On Linux the high-water mark of its own memory (``VmHWM`` of
    ``/proc/self/status``): ``ru_maxrss`` is carried over from the parent
    across ``fork`` and ``exec``, so a process started by a large one (a
    benchmark's script, a notebook) would report the parent's size.
    Elsewhere ``ru_maxrss``.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def format_bytes(n: float) -> str:
    """``1.6 GB`` style sizes (powers of 1000, like disk and network rates)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


class Progress:
    """Progress for long work, on rank 0 only.

    On a terminal it draws a bar that redraws in place; in a batch log it
    writes a plain line per phase and at most one progress line every
    ``interval`` seconds.  Disabled (silent) with ``enabled=False``.
    """

    def __init__(
        self, enabled: bool, stream: TextIO | None = None, interval: float = 10.0
    ):
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.tty = enabled and self.stream.isatty()
        self.interval = interval
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def line(self, text: str) -> None:
        """One line: ``[   1.2 s] text``."""
        if self.enabled:
            self.stream.write(f"[{self.elapsed():7.1f} s] {text}\n")
            self.stream.flush()

    def counter(self, label: str, total: int, unit: str = "rows"):
        """Return ``update(done)`` that reports ``done`` of ``total``."""
        last = [-1.0]

        def update(done: int) -> None:
            if not self.enabled:
                return
            now = self.elapsed()
            final = done >= total
            if not final and now - last[0] < (0.1 if self.tty else self.interval):
                return
            last[0] = now
            frac = done / total if total else 1.0
            if self.tty:
                bar = "#" * int(30 * frac)
                self.stream.write(
                    f"\r[{now:7.1f} s] {label} [{bar:<30}] {done:,}/{total:,} {unit}"
                )
                if final:
                    self.stream.write("\n")
            else:
                self.stream.write(
                    f"[{now:7.1f} s] {label}: {done:,}/{total:,} {unit} ({100 * frac:.0f}%)\n"
                )
            self.stream.flush()

        return update


def format_table(header: list[str], rows: list[list[Any]]) -> str:
    """A plain left-aligned text table."""
    cells = [header] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _run_text(
    command: list[str], cwd: str | None = None, strip: bool = True
) -> str | None:
    """The stdout of a command (stripped), or ``None`` if it is missing or fails."""
    import subprocess

    try:
        done = subprocess.run(
            command, cwd=cwd, capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    return done.stdout.strip() if strip else done.stdout


def provenance(source: str | os.PathLike | None = None) -> dict[str, Any]:
    """What a measurement was made with: commit, date, host and library versions.

    Local.  For benchmark results (``scripts/bench_*.py``) and reports, so a
    figure can be traced to the code and libraries that produced it.  The
    git commit and the MPI library are asked of child processes (``git``,
    ``python -m mpi4py``), so this process does not initialise MPI.

    Parameters
    ----------
    source : str or path-like, default=None
        A directory inside the git checkout to describe (a benchmark passes
        its own folder).  By default the folder that holds the imported
        ``mpitrain`` package, which is the checkout for an editable install.

    Returns
    -------
    dict
        ``git`` (``commit``, ``dirty`` and the changed tracked paths, or
        ``None`` values outside a checkout), ``date`` (UTC, ISO 8601),
        ``host``, ``platform``, ``python``, ``mpitrain_path`` (where the
        measured package was imported from), ``versions`` (every name of
        :data:`PROVENANCE_PACKAGES`, ``None`` if not installed),
        ``mpi_library_version`` and ``mpi_library`` (as mpi4py reports them)
        and ``blas`` (threadpoolctl's description of the BLAS libraries that
        numpy and scipy load, with this process's thread counts).
    """
    import datetime
    import platform
    import socket
    from pathlib import Path

    package_dir = Path(__file__).resolve().parent
    where = str(Path(source).resolve() if source is not None else package_dir.parent)
    commit = _run_text(["git", "rev-parse", "HEAD"], cwd=where)
    # Tracked files only: untracked scratch files do not change what was measured.
    status = _run_text(
        ["git", "status", "--porcelain", "--untracked-files=no"], cwd=where, strip=False
    )
    # Porcelain lines are "XY path" (or "XY old -> new" for a rename).
    changed = sorted(line[3:] for line in status.splitlines()) if status else []
    git = {
        "directory": where,
        "commit": commit,
        "dirty": None if commit is None or status is None else bool(changed),
        "changed_paths": changed,
    }

    versions = {name: installed_version(name) for name in PROVENANCE_PACKAGES}

    mpi4py = [sys.executable, "-m", "mpi4py"]
    # threadpoolctl sees only libraries already loaded: load numpy's and scipy's BLAS.
    import numpy  # noqa: F401

    try:
        import scipy.linalg  # noqa: F401
    except ImportError:
        pass
    from threadpoolctl import threadpool_info

    keys = ("internal_api", "version", "architecture", "threading_layer")
    blas = [
        {
            **{k: info.get(k) for k in keys},
            "num_threads": info.get("num_threads"),
            "filepath": info.get("filepath"),
        }
        for info in threadpool_info()
        if info.get("user_api") == "blas"
    ]
    return {
        "git": git,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"
        ),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "mpitrain_path": str(package_dir),
        "versions": versions,
        "mpi_library_version": _run_text([*mpi4py, "--mpi-lib-version"]),
        "mpi_library": _run_text([*mpi4py, "--mpi-library"]),
        "blas": blas,
    }
