"""``info``: the MPI library, ranks, nodes and threads of a run."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mpitrain import __version__
from mpitrain.workflow._run import Run

if TYPE_CHECKING:  # pragma: no cover
    from mpi4py.MPI import Intracomm

__all__ = ["info"]


def info(
    *,
    comm: Intracomm | None = None,
    quiet: bool = False,
    threads_per_rank: int | None = None,
) -> dict:
    """Show the MPI library, ranks, nodes and threads, as ``mpitrain info`` does. Collective over ``comm``.

    Rank 0 prints the summary (also when ``quiet``).

    Returns
    -------
    dict
        ``mpitrain``, ``mpi4py``, ``mpi_library``, ``skops`` (the model
        files' library, see docs/trust.md) and ``xgboost`` (gradient
        boosting, see docs/boosting.md) versions, ``mpi4py_file``,
        ``ranks``, ``layout`` (nodes, ranks per node, threads per rank) and
        ``blas`` (this rank's BLAS/OpenMP libraries), on every rank.
    """
    import mpi4py
    from threadpoolctl import threadpool_info

    from mpitrain.comm import mpi, mpi_library_version, print_root
    from mpitrain.report import installed_version

    run = Run(comm, quiet=quiet, threads_per_rank=threads_per_rank)
    blas = [
        f"{i['internal_api']} {i.get('version')} ({i['num_threads']} threads)"
        for i in threadpool_info()
    ]
    result = {
        "mpitrain": __version__,
        "skops": installed_version("skops") or "not installed",
        # The full wheel (with GPU support) serves as well as xgboost-cpu.
        "xgboost": installed_version("xgboost-cpu", "xgboost") or "not installed",
        "mpi4py": mpi4py.__version__,
        "mpi_library": mpi_library_version(),
        "mpi4py_file": getattr(mpi(), "__file__", "?"),
        "ranks": run.size,
        "layout": run.layout,
        "blas": blas,
    }
    print_root(
        f"mpitrain {result['mpitrain']}\n"
        f"mpi4py {result['mpi4py']}, MPI library: {result['mpi_library']}\n"
        f"  loaded from: {result['mpi4py_file']}\n"
        f"model files: skops {result['skops']}\n"
        f"gradient boosting: xgboost {result['xgboost']}\n"
        f"ranks: {run.size} on {run.layout['nodes']} node(s), up to {run.layout['ranks_per_node']} per node, "
        f"{run.threads} thread(s) per rank\n"
        f"BLAS on rank 0: {'; '.join(blas) or 'none found'}",
        comm=run.comm,
    )
    return result
