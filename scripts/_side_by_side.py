"""Side-by-side benchmarks: each side of a comparison runs in its own child process.

A benchmark script that calls itself with ``--side NAME`` runs one side:
one process with every core as threads (scikit-learn, XGBoost), or
``mpiexec -n 2`` ranks with one thread each (mpitrain), so ranks x threads
is the 2 cores either way.  The child prints its result as JSON on its
last stdout line.

Scripts run as ``python scripts/x.py``, which puts this folder on
``sys.path``: ``from _side_by_side import run_side``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

# The variables that set the BLAS and OpenMP threads of a child (light: os only).
from mpitrain.utils.threads import THREAD_VARIABLES

if TYPE_CHECKING:
    import numpy as np

__all__ = ["CORES", "THREAD_VARIABLES", "read", "run_side"]

#: The cores a side may use: ranks x threads per rank.
CORES = 2


def read(
    path: str, start: int = 0, stop: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``start .. stop - 1`` (all by default) of ``X`` and ``y`` in an HDF5 file. Local."""
    import h5py

    with h5py.File(path, "r") as f:
        stop = f["X"].shape[0] if stop is None else stop
        return f["X"][start:stop], f["y"][start:stop]


def run_side(script: str, side: str, forwarded: Sequence[str], ranks: int = 1) -> dict:
    """Run ``script --side side`` on ``ranks`` ranks of ``CORES // ranks`` threads; its JSON.

    One rank runs as a plain child process, more under ``mpiexec -n ranks``.
    Local (the child may be an MPI job; this process never is).

    Returns
    -------
    dict
        The child's last stdout line, parsed as JSON.

    Raises
    ------
    SystemExit
        The child failed: the message holds its command and standard error.
    """
    from mpitrain.testing import find_mpiexec  # $MPITRAIN_MPIEXEC, Open MPI's flags

    launcher = [] if ranks == 1 else [*find_mpiexec(), "-n", str(ranks)]
    command = [*launcher, sys.executable, script, *forwarded, "--side", side]
    threads = str(CORES // ranks)
    env = {**os.environ, **dict.fromkeys(THREAD_VARIABLES, threads)}
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(
            f"side {side!r} failed (exit status {done.returncode}): "
            f"{' '.join(command)}\n{done.stderr}"
        )
    return json.loads(done.stdout.strip().splitlines()[-1])
