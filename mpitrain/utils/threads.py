"""Threads per rank: how many a rank may use, and how many are in force.

One rule for every model: ranks × threads never exceeds the cores a node
gives the job.  Light to import (``threadpoolctl`` is loaded on first use).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

__all__ = [
    "THREAD_VARIABLES",
    "cores_available",
    "cores_of_process",
    "default_threads",
    "start_ahead",
    "threads_in_force",
]


#: The environment variables that set the BLAS and OpenMP runtimes' threads;
#: a runtime reads them when it loads.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def cores_of_process() -> int:
    """The cores this process may run on as a bit mask (bit ``c``: core ``c``); 0 where unknown. Local.

    One integer per rank, small enough to gather from every rank of a big job.
    """
    if hasattr(os, "sched_getaffinity"):
        return sum(1 << core for core in os.sched_getaffinity(0))
    return 0


def cores_available() -> int:
    """The cores this process may run on (a Slurm or taskset pinning), not all the node's. Local."""
    return cores_of_process().bit_count() or os.cpu_count() or 1


def default_threads(local_ranks: int) -> int:
    """Threads per rank when none are asked for. Local.

    ``SLURM_CPUS_PER_TASK`` if set (Slurm gave each task its cores), else
    :func:`cores_available` divided by ``local_ranks``: the ranks that share
    those cores (``node_layout(comm)["cpu_sharers"]``: every rank on the
    node unless the launcher bound each rank to cores of its own).
    """
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if slurm.isdigit() and int(slurm) > 0:
        return int(slurm)
    return max(1, cores_available() // max(local_ranks, 1))


def threads_in_force() -> int:
    """The smallest thread count of the BLAS and OpenMP libraries loaded now. Local.

    :func:`mpitrain.workflow.limit_threads` limits the libraries loaded when
    it runs (numpy's BLAS always is); a library loaded later (the OpenMP
    runtime of scikit-learn's trees or XGBoost) starts with all cores, so
    the smallest count is the limit the user set.
    """
    from threadpoolctl import threadpool_info

    counts = [int(info["num_threads"]) for info in threadpool_info()]
    return max(1, min(counts)) if counts else 1


def start_ahead(work: Callable[[], object], name: str) -> threading.Thread:
    """Start ``work`` (an import, a load) on a daemon thread, ahead of its need. Local.

    Its failure is not reported here: the caller does the same work again
    when it needs it, which waits for this thread's import or compiler lock
    and reports any error itself, on the caller's thread.
    """

    def run() -> None:
        try:
            work()
        except Exception:  # met again, and reported, where the work is needed
            pass

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread
