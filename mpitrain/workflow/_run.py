"""The context of one workflow run: communicator, progress, threads, node layout.

Every workflow function (``train``, ``describe``, ...) makes one
:class:`Run` from its ``comm``, ``quiet`` and ``threads_per_rank`` options.
Rank 0 speaks (progress lines on stderr) and writes the files while the
other ranks wait without spinning.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TextIO

from mpitrain.comm import get_comm, node_layout, run_on_root

if TYPE_CHECKING:  # pragma: no cover
    from mpi4py.MPI import Intracomm

__all__ = ["Run", "limit_threads"]


class _ProgressStream:
    """Rank 0's standard error for progress lines, never raising. Local.

    Rank 0 writes progress between collective steps; a write that raised
    there (standard error closed, a broken pipe, a full disk) would take
    rank 0 out of the run alone while the others wait in the next
    collective.  The first failure is kept instead, later lines are
    dropped, and :meth:`Run.on_root` raises it, agreed on every rank.
    """

    def __init__(self, stream: TextIO):
        self.stream = stream
        self.failure: BaseException | None = None

    def isatty(self) -> bool:
        try:
            return self.stream.isatty()
        except (OSError, ValueError):
            return False

    def write(self, text: str) -> None:
        if self.failure is None:
            try:
                self.stream.write(text)
            except (OSError, ValueError) as exc:
                self.failure = exc

    def flush(self) -> None:
        if self.failure is None:
            try:
                self.stream.flush()
            except (OSError, ValueError) as exc:
                self.failure = exc


class Run:
    """Per-run context: communicator, progress on rank 0, threads, layout.

    Collective over ``comm`` when made (the node layout is gathered).

    Parameters
    ----------
    comm : mpi4py.MPI.Intracomm or None, default=None
        The ranks that run the workflow; ``None`` means ``COMM_WORLD``.
    quiet : bool, default=False
        No progress output.
    threads_per_rank : int or None, default=None
        BLAS/OpenMP threads of this process; see :func:`limit_threads`.

    Attributes
    ----------
    comm, rank, size
        The communicator, this rank and the number of ranks.
    quiet : bool
    progress : mpitrain.report.Progress
        Enabled on rank 0 unless ``quiet``.
    layout : dict
        :func:`mpitrain.comm.node_layout` plus ``threads_per_rank``.
    threads : int
        BLAS/OpenMP threads per rank now in force.
    """

    def __init__(
        self,
        comm: Intracomm | None = None,
        *,
        quiet: bool = False,
        threads_per_rank: int | None = None,
    ):
        from mpitrain.report import Progress

        self.comm = get_comm(comm)
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        self.quiet = quiet
        self._stream = _ProgressStream(sys.stderr)
        self.progress = Progress(
            enabled=self.rank == 0 and not quiet, stream=self._stream
        )
        self.layout = node_layout(self.comm)
        # The ranks whose cores overlap this one's share them (every rank on
        # the node unless the launcher bound each to cores of its own).
        self.threads = limit_threads(threads_per_rank, self.layout["cpu_sharers"])
        self.layout["threads_per_rank"] = self.threads

    @property
    def verbose(self) -> bool:
        """Whether this rank shows progress (rank 0, not quiet). Local."""
        return self.rank == 0 and not self.quiet

    def say(self, text: str) -> None:
        """A progress line from rank 0 (nothing elsewhere or when quiet). Local."""
        self.progress.line(text)

    def on_root(self, what: str, work: Callable[[], Any]) -> Any:
        """Rank 0 runs ``work()`` (writing a file, drawing); the others wait quietly.

        Collective over ``self.comm``: every rank gets the result, and a
        failure on rank 0 is raised on every rank (:func:`mpitrain.comm.run_on_root`).
        A progress line that rank 0 could not write since the last step
        stops the run here, with that error, on every rank.
        """

        def checked() -> Any:
            failure = self._stream.failure
            if failure is not None:
                raise OSError(
                    f"progress could not be written to standard error "
                    f"({type(failure).__name__}: {failure}); stopped before this step"
                ) from failure
            return work()

        return run_on_root(self.comm, what, checked)


def limit_threads(requested: int | None, local_ranks: int) -> int:
    """Cap this process's BLAS/OpenMP threads so ranks × threads never exceeds the cores. Local.

    ``None`` takes ``SLURM_CPUS_PER_TASK`` if set, else the cores this
    process may run on divided by the ranks on its node.  The libraries
    loaded now are limited at once;
    :data:`~mpitrain.utils.threads.THREAD_VARIABLES` are set in
    this process's environment for those loaded later, which read them
    when they load: scikit-learn's import brings scipy's own OpenBLAS and
    its OpenMP runtime after this, which were left at every core
    (logistic regression, 500,000 x 100 on 2 ranks: rank 0's fit 0.69 s,
    against 0.41 s with one thread forced from outside, its L-BFGS-B steps
    0.13 s against 0.04 s).  A later limit can still raise them (the
    cascade's refit on an otherwise idle node).  Returns the number of
    threads now in force.
    """
    from threadpoolctl import threadpool_limits

    from mpitrain.utils.threads import THREAD_VARIABLES, default_threads

    if requested is None:
        requested = default_threads(local_ranks)
    threadpool_limits(requested)
    for name in THREAD_VARIABLES:
        os.environ[name] = str(requested)
    return requested
