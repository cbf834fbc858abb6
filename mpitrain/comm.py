"""The one module of mpitrain that calls MPI.

Everything that communicates goes through these few functions: resolving the
communicator, reductions of numpy buffers, small pickled metadata, the
collective error check, the minimiser that rank 0 drives while the other
ranks evaluate, printing from rank 0, and waiting without spinning.

``mpi4py.MPI`` is imported lazily, on first use, so that ``import mpitrain``
(and ``mpitrain --help``) never initialises MPI.
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np

from mpitrain.errors import (
    DistributedError,
    DistributedMemoryError,
    DistributedTypeError,
    DistributedValueError,
    format_ranks,
)

if TYPE_CHECKING:  # pragma: no cover
    from mpi4py.MPI import Intracomm, Request
    from scipy.optimize import OptimizeResult

__all__ = [
    "RootFlag",
    "abort_job",
    "mpi",
    "get_comm",
    "self_comm",
    "library_comm",
    "split_comm",
    "allreduce_sum",
    "allreduce_identical",
    "allreduce_minmax",
    "allgather_object",
    "allgather_array",
    "allgatherv_array",
    "require_same",
    "gather_object",
    "scatter_object",
    "bcast_array",
    "bcast_object",
    "collective_check",
    "run_on_root",
    "agree",
    "minimize_on_root",
    "wait_quietly",
    "quiet_barrier",
    "send_rows_quietly",
    "recv_rows_quietly",
    "bcast_rows_quietly",
    "gatherv_rows",
    "merge_rows_to_leaders",
    "scatterv_rows",
    "alltoallv_rows",
    "send_token_quietly",
    "recv_token_quietly",
    "is_root",
    "print_root",
    "env_rank",
    "launcher_layout",
    "mpi_library_version",
    "node_layout",
    "layout_from_hosts",
    "cpu_sharers",
    "finish_job",
]

# What launchers tell each rank before MPI_Init: (launcher, rank, size,
# local rank, local size).  The first launcher whose rank variable is set
# wins: a launcher started inside another's job (mpiexec in a Slurm batch
# script) comes before it, so its own variables beat the inherited ones.
_LAUNCHER_VARIABLES = (
    (
        "Open MPI",
        "OMPI_COMM_WORLD_RANK",
        "OMPI_COMM_WORLD_SIZE",
        "OMPI_COMM_WORLD_LOCAL_RANK",
        "OMPI_COMM_WORLD_LOCAL_SIZE",
    ),
    # MPICH's hydra, also Intel MPI's; Slurm's PMI-2 sets PMI_RANK alone.
    ("MPICH hydra", "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "MPI_LOCALNRANKS"),
    (
        "MVAPICH",
        "MV2_COMM_WORLD_RANK",
        "MV2_COMM_WORLD_SIZE",
        "MV2_COMM_WORLD_LOCAL_RANK",
        "MV2_COMM_WORLD_LOCAL_SIZE",
    ),
    ("PMIx", "PMIX_RANK", None, None, None),  # srun --mpi=pmix
    ("Slurm", "SLURM_PROCID", "SLURM_STEP_NUM_TASKS", "SLURM_LOCALID", None),
)


def mpi():
    """Return the ``mpi4py.MPI`` module, initialising MPI on first call."""
    from mpi4py import MPI

    return MPI


def get_comm(comm: Intracomm | None = None) -> Intracomm:
    """Resolve the ``comm`` parameter of an estimator: ``None`` means ``COMM_WORLD``."""
    MPI = mpi()
    if comm is None:
        return MPI.COMM_WORLD
    if not isinstance(comm, MPI.Intracomm):
        raise TypeError(
            f"comm must be an mpi4py intracommunicator or None, got {type(comm).__name__}"
        )
    return comm


def self_comm() -> Intracomm:
    """``COMM_SELF``: for fitting a rank's rows alone (e.g. to compare with the combined model)."""
    return mpi().COMM_SELF


@contextmanager
def library_comm(comm: Intracomm) -> Iterator[Intracomm]:
    """Duplicate ``comm`` so mpitrain's messages never match the user's.

    Collective over ``comm`` (``MPI_Comm_dup`` and ``MPI_Comm_free``).
    """
    dup = comm.Dup()
    try:
        yield dup
    finally:
        dup.Free()


@contextmanager
def split_comm(comm: Intracomm, color: int) -> Iterator[Intracomm]:
    """The ranks of ``comm`` with the same ``color``, on a communicator of their own.

    Collective over ``comm`` (``MPI_Comm_split``, ranks kept in ``comm``'s
    order, and ``MPI_Comm_free`` at the end): groups of ranks that work
    on different tasks at once, such as the candidates of a search.
    """
    part = comm.Split(int(color), comm.Get_rank())
    try:
        yield part
    finally:
        part.Free()


def allreduce_sum(buf: np.ndarray, comm: Intracomm) -> np.ndarray:
    """Sum a contiguous numpy array over all ranks, in place.

    Collective over ``comm``.  Returns ``buf``, now holding the global sum.
    """
    if not buf.flags.c_contiguous:
        raise ValueError("allreduce_sum needs a C-contiguous buffer")
    if comm.Get_size() > 1:
        comm.Allreduce(mpi().IN_PLACE, buf, op=mpi().SUM)
    return buf


def allreduce_identical(buf: np.ndarray, comm: Intracomm) -> np.ndarray:
    """Sum a contiguous numpy array over all ranks, bit-identical everywhere, in place.

    Collective over ``comm`` (``Reduce`` to rank 0, then ``Bcast``).
    ``Allreduce`` may add in a different order on different ranks, so its
    results can differ in the last bit; iterative solvers that branch on
    the sums (line searches, stopping tests) need every rank to see the
    same numbers, or ranks take different paths and the job hangs.
    """
    if not buf.flags.c_contiguous:
        raise ValueError("allreduce_identical needs a C-contiguous buffer")
    if comm.Get_size() > 1:
        MPI = mpi()
        if comm.Get_rank() == 0:
            comm.Reduce(MPI.IN_PLACE, buf, op=MPI.SUM, root=0)
        else:
            comm.Reduce(buf, None, op=MPI.SUM, root=0)
        comm.Bcast(buf, root=0)
    return buf


def allreduce_minmax(
    values: np.ndarray, comm: Intracomm
) -> tuple[np.ndarray, np.ndarray]:
    """Element-wise global minimum and maximum of a small float or int array.

    Collective over ``comm`` (one ``Allreduce``: the minimum travels negated).
    """
    values = np.asarray(values)
    both = np.concatenate([values, -values]).astype(np.float64)
    comm.Allreduce(mpi().IN_PLACE, both, op=mpi().MAX)
    k = values.size
    return (-both[k:]).astype(values.dtype), both[:k].astype(values.dtype)


def require_same(comm: Intracomm, what: str, value: int) -> None:
    """Raise the same ValueError on every rank unless ``value`` agrees everywhere.

    Collective over ``comm`` (one small ``allgather``).  ``what`` names the
    quantity, e.g. ``"features"``.
    """
    values = comm.allgather(value)
    if len(set(values)) > 1:
        listing = ", ".join(f"rank {r}: {k}" for r, k in enumerate(values))
        raise ValueError(f"ranks have different numbers of {what} ({listing})")


def allgather_object(obj: Any, comm: Intracomm) -> list[Any]:
    """Gather a small picklable object from every rank on every rank. Collective."""
    return comm.allgather(obj)


def allgather_array(buf: np.ndarray, comm: Intracomm) -> np.ndarray:
    """Gather a fixed-shape numpy array from every rank onto every rank.

    Collective over ``comm`` (one ``Allgather``).  Every rank passes an
    array of the same shape and dtype (agree on them first: MPI cannot
    report a mismatch, it hangs or corrupts).  Returns a new array of shape
    ``(size, *buf.shape)``, rank ``r``'s copy in row ``r``, bit-identical
    on every rank.  For per-rank summaries (counts, moments) that every
    rank needs, e.g. to merge them in rank order.
    """
    buf = np.ascontiguousarray(buf)
    out = np.empty((comm.Get_size(), *buf.shape), dtype=buf.dtype)
    if (
        comm.Get_size() == 1 or buf.size == 0
    ):  # nothing to move: skip MPI, which may refuse empty buffers
        out[...] = buf
        return out
    comm.Allgather(buf, out)
    return out


def allgatherv_array(local: np.ndarray, comm: Intracomm) -> np.ndarray:
    """Concatenate every rank's 1-D array, in rank order, on every rank.

    Collective over ``comm`` (an ``Allgather`` of the lengths, then one
    ``Allgatherv``).  Every rank passes a 1-D array of the same dtype, of
    any length (zero too).  For small per-row metadata that every rank
    needs whole, such as the class index of every row of a stratified
    split.
    """
    local = np.ascontiguousarray(local).ravel()
    counts = allgather_array(np.array([local.size], dtype=np.int64), comm).ravel()
    out = np.empty(int(counts.sum()), dtype=local.dtype)
    if comm.Get_size() == 1:
        out[...] = local
        return out
    displs = np.concatenate([[0], np.cumsum(counts)[:-1]])
    comm.Allgatherv(local, [out, (counts, displs)])
    return out


def gather_object(obj: Any, comm: Intracomm, root: int = 0) -> list[Any] | None:
    """Gather a small picklable object on ``root`` (``None`` elsewhere). Collective."""
    return comm.gather(obj, root=root)


def scatter_object(objs: list[Any] | None, comm: Intracomm, root: int = 0) -> Any:
    """Give rank ``r`` the small picklable object ``objs[r]`` of ``root``. Collective.

    The inverse of :func:`gather_object`: ``objs`` (one entry per rank) is
    used on ``root`` only.  For per-rank states restored from a file, such
    as a checkpoint's partial statistics of each rank.
    """
    return comm.scatter(objs, root=root)


def bcast_array(buf: np.ndarray, comm: Intracomm, root: int = 0) -> np.ndarray:
    """Overwrite ``buf`` on every rank with root's copy, in place. Collective.

    Used for results that must be bit-identical on every rank: reductions may
    round differently on different ranks, so the root's answer is the one kept.
    """
    if comm.Get_size() > 1:
        comm.Bcast(buf, root=root)
    return buf


def bcast_object(obj: Any, comm: Intracomm, root: int = 0) -> Any:
    """Broadcast a small picklable object (metadata, a fitted model). Collective."""
    return comm.bcast(obj, root=root)


def wait_quietly(request: Request, timeout: float | None = None) -> bool:
    """Wait for a non-blocking request by polling with growing sleeps.

    Blocking MPI calls busy-poll and take a whole core; a rank waiting for
    another rank's long work should leave the core to it.  Returns ``False``
    if ``timeout`` seconds passed first (the request is then still pending).
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    pause = 0.0
    while not request.Test():
        if deadline is not None and time.monotonic() > deadline:
            return False
        time.sleep(pause)
        pause = min(max(2 * pause, 5e-5), 5e-3)
    return True


class RootFlag:
    """A number rank 0 sends once it knows it, which the other ranks look for meanwhile.

    Creating it is collective over ``comm`` in effect: it posts a
    non-blocking broadcast (``Ibcast`` of one integer from rank 0) on the
    ranks other than 0, and rank 0 posts its side with :meth:`send`; no
    other collective on ``comm`` may come between the two on any rank.
    The others :meth:`poll` while they work (a typo found on rank 0 stops
    their long read) and every rank ends with :meth:`wait`.
    """

    def __init__(self, comm: Intracomm) -> None:
        self._comm = comm
        self._buf = np.zeros(1, dtype=np.int64)
        self._request: Request | None = None
        if comm.Get_rank() != 0:
            self._request = comm.Ibcast(self._buf, root=0)

    def send(self, value: int) -> None:
        """Rank 0: send ``value`` to the others (once). Local; completes in :meth:`wait`."""
        if self._comm.Get_rank() != 0 or self._request is not None:
            raise RuntimeError("RootFlag.send is rank 0's, once")
        self._buf[0] = value
        self._request = self._comm.Ibcast(self._buf, root=0)

    @property
    def sent(self) -> bool:
        """Rank 0: whether :meth:`send` was called."""
        return self._comm.Get_rank() == 0 and self._request is not None

    def poll(self) -> int | None:
        """The value if it has arrived, else ``None``. Local."""
        if self._request is None or not self._request.Test():
            return None
        return int(self._buf[0])

    def wait(self) -> int:
        """The value, waiting for it without spinning. Local (rank 0 must have sent)."""
        if self._request is None:
            raise RuntimeError("RootFlag.wait on rank 0 before send")
        wait_quietly(self._request)
        return int(self._buf[0])


def quiet_barrier(comm: Intracomm, timeout: float | None = None) -> bool:
    """A barrier that does not spin. Collective over ``comm``.

    Returns ``False`` if the other ranks did not arrive within ``timeout``.
    """
    if comm.Get_size() == 1:
        return True
    return wait_quietly(comm.Ibarrier(), timeout)


# Tags of mpitrain's point-to-point row transfers: the header (the block's
# shape) and the data.  They only need to differ from each other, because
# library traffic is on a duplicated communicator (see library_comm) and MPI
# keeps messages between one pair of ranks in order.
_ROWS_HEADER_TAG = 71
_ROWS_DATA_TAG = 72


def send_rows_quietly(block: np.ndarray, dest: int, comm: Intracomm) -> int:
    """Send a 2-D float64 row block to ``dest``, waiting without spinning.

    Point-to-point over ``comm``: ``dest`` must call :func:`recv_rows_quietly`
    with this rank as ``source``.  The shape travels first (two int64), then
    the rows, so the receiver can allocate exactly.  Both sends are
    non-blocking and polled with sleeps: the receiver may be busy with a long
    computation (a refit) before it posts its receive, and a blocking
    ``Send`` of a large message would busy-poll a core meanwhile.

    Returns
    -------
    int
        The number of bytes of rows sent (the header is not counted).
    """
    block = np.ascontiguousarray(block, dtype=np.float64)
    if block.ndim != 2:
        raise ValueError(
            f"send_rows_quietly needs a 2-D block, got {block.ndim} dimension(s)"
        )
    header = np.array(block.shape, dtype=np.int64)
    requests = [comm.Isend(header, dest=dest, tag=_ROWS_HEADER_TAG)]
    if block.size:
        requests.append(comm.Isend(block, dest=dest, tag=_ROWS_DATA_TAG))
    for request in requests:
        wait_quietly(request)
    return int(block.nbytes)


def recv_rows_quietly(source: int, comm: Intracomm) -> np.ndarray:
    """Receive a 2-D float64 row block sent by :func:`send_rows_quietly` from ``source``.

    Point-to-point over ``comm``.  Waits without spinning (non-blocking
    receives polled with sleeps): the sender may still be fitting.
    """
    header = np.zeros(2, dtype=np.int64)
    wait_quietly(comm.Irecv(header, source=source, tag=_ROWS_HEADER_TAG))
    block = np.empty((int(header[0]), int(header[1])), dtype=np.float64)
    if block.size:
        wait_quietly(comm.Irecv(block, source=source, tag=_ROWS_DATA_TAG))
    return block


def bcast_rows_quietly(
    block: np.ndarray | None, comm: Intracomm, root: int = 0
) -> np.ndarray:
    """Broadcast a 2-D float64 row block from ``root``; every rank returns a copy.

    Collective over ``comm`` (two ``Ibcast``: the shape, then the rows),
    waited for without spinning, because the root may reach the broadcast
    only after a long computation.  ``block`` is used on ``root`` only
    (others may pass ``None``).
    """
    rank = comm.Get_rank()
    if rank == root:
        block = np.ascontiguousarray(block, dtype=np.float64)
        if block.ndim != 2:
            raise ValueError(
                f"bcast_rows_quietly needs a 2-D block, got {block.ndim} dimension(s)"
            )
    if comm.Get_size() == 1:
        return block.copy()
    header = np.array(block.shape if rank == root else (0, 0), dtype=np.int64)
    wait_quietly(comm.Ibcast(header, root=root))
    out = None
    # Every rank allocates before any rows move, and agrees: a rank that
    # cannot would otherwise never post its part of the broadcast.
    with collective_check(
        comm, f"allocating {_rows_text(header)} to receive", quiet=False
    ):  # all just met in the header's broadcast: a plain Allreduce agrees
        out = (
            block.copy()
            if rank == root
            else np.empty((int(header[0]), int(header[1])), dtype=np.float64)
        )
    if out.size:
        wait_quietly(comm.Ibcast(out, root=root))
    return out


def _rows_text(shape) -> str:
    """``"1,000 rows x 13 columns (104.0 kB)"`` for a float64 block. Pure."""
    from mpitrain.report import format_bytes

    n, d = (int(v) for v in shape)
    return f"{n:,} rows x {d} columns ({format_bytes(8 * n * d)})"


def merge_rows_to_leaders(
    block: np.ndarray,
    groups: list[list[int]],
    comm: Intracomm,
    *,
    what: str = "merging rows",
    reserve: Callable[[int, int], None] | None = None,
    row_counts: np.ndarray | None = None,
) -> tuple[np.ndarray, int]:
    """Move each group's float64 row blocks to the group's first rank. Collective over ``comm``.

    ``groups`` lists disjoint groups of ranks (the same on every rank); the
    first rank of a group is its leader.  A leader returns its own rows
    followed by each member's, in group order; a member returns zero rows;
    a rank in no group keeps its block.  Every block has the same number of
    columns (zero rows allowed).

    The sizes travel first (one ``Allgather`` of two integers, unless the
    caller knows them), then every leader allocates the whole union at
    once, and the ranks agree on that (one small ``Allreduce``) *before*
    any row moves.  A leader that
    cannot allocate (a ``MemoryError`` at the merge's peak) or that
    ``reserve`` refuses therefore raises the same error on every rank, while
    no send is pending: a failure after rows started to move would leave its
    members blocked in sends that no receive will ever match.  Members then
    send (non-blocking) straight into the leader's buffer, and everyone
    waits without spinning.

    Parameters
    ----------
    block : ndarray of shape (n_rows, n_columns)
        This rank's rows (float64; others are converted).
    groups : list of list of int
        The groups of this step.
    comm : mpi4py.MPI.Intracomm
    what : str, default="merging rows"
        Names the step in the agreed error message.
    reserve : callable, default=None
        ``reserve(n_rows, n_columns)``, called on each leader with the size
        of its union before allocating; raises (say, a ``MemoryError``
        naming the size and the budget) to refuse.
    row_counts : ndarray of int, default=None
        Every rank's number of rows, in rank order, the same on every rank
        (then the blocks' widths are taken to agree): saves the first
        ``Allgather`` when the caller has just exchanged them.

    Returns
    -------
    (rows, bytes_sent) : tuple
        The union on leaders (this block elsewhere, zero rows on members),
        and the bytes of rows this rank sent.

    Raises
    ------
    DistributedError
        On every rank, if some leader could not allocate or refused.
    ValueError
        On every rank, if the blocks' column counts differ.
    """
    block = np.ascontiguousarray(block, dtype=np.float64)
    if block.ndim != 2:
        raise ValueError(
            f"merge_rows_to_leaders needs a 2-D block, got {block.ndim} dimension(s)"
        )
    rank = comm.Get_rank()
    if row_counts is None:
        shapes = allgather_array(np.array(block.shape, dtype=np.int64), comm)
        widths = {int(d) for d in shapes[:, 1]}
        if len(widths) > 1:
            raise ValueError(f"ranks have blocks of different widths: {sorted(widths)}")
        width = widths.pop()
    else:
        width = block.shape[1]
        shapes = np.column_stack(
            [np.asarray(row_counts, dtype=np.int64), np.full(len(row_counts), width)]
        )
    group = next((g for g in groups if rank in g), None)
    leading = group is not None and group[0] == rank
    out = block
    # Every rank comes straight from the previous step: a plain Allreduce.
    with collective_check(comm, what, quiet=False):
        if leading:
            total = int(shapes[group, 0].sum())
            if reserve is not None:
                reserve(total, width)
            out = np.empty((total, width), dtype=np.float64)
            out[: block.shape[0]] = block
    if group is None:
        return out, 0
    if not leading:
        if block.size:
            wait_quietly(comm.Isend(block, dest=group[0], tag=_ROWS_DATA_TAG))
        return block[:0], int(block.nbytes)
    requests = []
    start = block.shape[0]
    for member in group[1:]:
        stop = start + int(shapes[member, 0])
        if stop > start and width:
            requests.append(
                comm.Irecv(out[start:stop], source=member, tag=_ROWS_DATA_TAG)
            )
        start = stop
    for request in requests:
        wait_quietly(request)
    return out, 0


def gatherv_rows(
    local: np.ndarray,
    comm: Intracomm,
    root: int = 0,
    *,
    reserve: Callable[[int, tuple[int, ...]], None] | None = None,
    what: str = "gathering rows",
) -> np.ndarray | None:
    """Concatenate every rank's rows on ``root``, in rank order; ``None`` elsewhere.

    Collective over ``comm``: one small ``allgather`` of the row counts, one
    agreement (a non-blocking reduction) that ``root`` could allocate the
    result, then one ``Gatherv`` of the numpy buffers.  Every rank passes an
    array of the same dtype and the same shape after the first axis; a rank
    may pass zero rows.  Rows travel as one contiguous MPI datatype per row,
    so the limit is 2**31 - 1 rows per rank, not elements.

    ``reserve(n_rows, row_shape)``, if given, runs on ``root`` with the
    total before it allocates and may raise to refuse (a ``MemoryError``
    naming the size and the budget, say).  A refusal or a failed
    allocation is raised on every rank (named ``what``) before any row
    moves, so no rank is left waiting in the ``Gatherv``.
    """
    from mpi4py.util.dtlib import from_numpy_dtype

    local = np.ascontiguousarray(local)
    counts = [int(n) for n in comm.allgather(int(local.shape[0]))]
    rank = comm.Get_rank()
    trailing = local.shape[1:]
    out = None
    # Every rank has just met in the allgather: a plain Allreduce agrees.
    with collective_check(comm, what, quiet=False):
        if rank == root:
            if reserve is not None:
                reserve(sum(counts), trailing)
            out = (
                local.copy()
                if comm.Get_size() == 1
                else np.empty((sum(counts), *trailing), dtype=local.dtype)
            )
    if comm.Get_size() == 1:
        return out
    row_items = int(np.prod(trailing, dtype=np.int64))
    if row_items == 0:  # nothing to move; MPI refuses zero-sized datatypes
        return out
    row_type = from_numpy_dtype(local.dtype).Create_contiguous(row_items).Commit()
    try:
        displacements = (
            np.concatenate([[0], np.cumsum(counts[:-1])]).astype(int).tolist()
        )
        receive = [out, (counts, displacements), row_type] if rank == root else None
        comm.Gatherv([local, local.shape[0], row_type], receive, root=root)
    finally:
        row_type.Free()
    return out


def scatterv_rows(
    rows: np.ndarray | None,
    counts: list[int],
    comm: Intracomm,
    root: int = 0,
    *,
    what: str = "scattering rows",
) -> np.ndarray:
    """Give rank ``r`` its ``counts[r]`` consecutive rows of root's ``rows``. Collective over ``comm``.

    The inverse of :func:`gatherv_rows`: ``rows`` (used on ``root`` only)
    holds every rank's rows in rank order; ``counts`` is the same on every
    rank.  The row shape and dtype travel first (one small broadcast), every
    rank allocates its part and the ranks agree on that before the
    ``Scatterv``, so a rank that cannot allocate fails everywhere, never
    leaving the others in the scatter.
    """
    from mpi4py.util.dtlib import from_numpy_dtype

    rank = comm.Get_rank()
    if rank == root:
        rows = np.ascontiguousarray(rows)
        if rows.shape[0] != sum(counts):
            raise ValueError(
                f"scatterv_rows got {rows.shape[0]} rows for counts summing to {sum(counts)}"
            )
    if comm.Get_size() == 1:
        return rows.copy()
    layout = bcast_object(
        (rows.shape[1:], rows.dtype.str) if rank == root else None, comm, root=root
    )
    trailing, dtype = tuple(layout[0]), np.dtype(layout[1])
    out = None
    with collective_check(comm, what, quiet=False):  # all just met in the bcast
        out = np.empty((int(counts[rank]), *trailing), dtype=dtype)
    row_items = int(np.prod(trailing, dtype=np.int64))
    if row_items == 0:
        return out
    row_type = from_numpy_dtype(dtype).Create_contiguous(row_items).Commit()
    try:
        displacements = (
            np.concatenate([[0], np.cumsum(counts[:-1])]).astype(int).tolist()
        )
        send = (
            [rows, ([int(c) for c in counts], displacements), row_type]
            if rank == root
            else None
        )
        comm.Scatterv(send, [out, out.shape[0], row_type], root=root)
    finally:
        row_type.Free()
    return out


def alltoallv_rows(
    rows: np.ndarray,
    send_counts: np.ndarray,
    comm: Intracomm,
    *,
    what: str = "exchanging rows",
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Send ``send_counts[r]`` consecutive rows of ``rows`` to rank ``r``, every rank at once.

    Collective over ``comm``: one ``Alltoall`` of the counts, one agreement
    that every rank could allocate what it receives (so a rank that cannot
    fails everywhere before any row moves), then one ``Alltoallv`` of the
    numpy buffers.  ``rows`` is sorted by destination rank; any dtype
    (structured records too) and any shape after the first axis, the same
    on every rank.  Rows travel as one contiguous byte datatype each, so
    the limit is 2**31 - 1 rows per pair of ranks, not bytes.

    ``out``, if given, receives the rows when it has room for them (same
    dtype and row shape): a caller exchanging in rounds reuses one buffer
    instead of allocating (and first touching) fresh memory every round.
    The result is then a view of ``out``.

    Returns
    -------
    (received, recv_counts) : tuple
        The rows sent to this rank, in the senders' rank order, and how
        many came from each rank.
    """
    rows = np.ascontiguousarray(rows)
    size = comm.Get_size()
    send_counts = np.ascontiguousarray(send_counts, dtype=np.int64)
    if send_counts.shape != (size,) or int(send_counts.sum()) != rows.shape[0]:
        raise ValueError(
            f"alltoallv_rows: {rows.shape[0]} rows for counts {send_counts.tolist()} "
            f"({size} ranks)"
        )
    if size == 1:
        return rows.copy(), send_counts.copy()
    recv_counts = np.empty(size, dtype=np.int64)
    comm.Alltoall(send_counts, recv_counts)
    total = int(recv_counts.sum())
    reusable = (
        out is not None
        and out.dtype == rows.dtype
        and out.shape[1:] == rows.shape[1:]
        and out.shape[0] >= total
        and out.flags.c_contiguous
    )
    # Every rank has just met in the Alltoall: a plain Allreduce agrees.
    with collective_check(comm, what, quiet=False):
        out = (
            out[:total]
            if reusable
            else np.empty((total, *rows.shape[1:]), dtype=rows.dtype)
        )
    row_bytes = rows.dtype.itemsize * int(np.prod(rows.shape[1:], dtype=np.int64))
    if row_bytes == 0:  # nothing to move; MPI refuses zero-sized datatypes
        return out, recv_counts
    MPI = mpi()
    row_type = MPI.BYTE.Create_contiguous(row_bytes).Commit()
    try:

        def displacements(counts: np.ndarray) -> list[int]:
            return np.concatenate([[0], np.cumsum(counts[:-1])]).astype(int).tolist()

        comm.Alltoallv(
            [
                rows.reshape(-1).view(np.uint8),
                (send_counts.astype(int).tolist(), displacements(send_counts)),
                row_type,
            ],
            [
                out.reshape(-1).view(np.uint8),
                (recv_counts.astype(int).tolist(), displacements(recv_counts)),
                row_type,
            ],
        )
    finally:
        row_type.Free()
    return out, recv_counts


# Tag of the token that ranks pass along in rank order (see send_token_quietly).
_TOKEN_TAG = 73


def send_token_quietly(value: int, dest: int, comm: Intracomm) -> None:
    """Pass a small integer token to ``dest``, waiting without spinning.

    Point-to-point over ``comm``: ``dest`` must call :func:`recv_token_quietly`
    with this rank as ``source``.  Used to let ranks take turns at a shared
    resource (one HDF5 file without parallel HDF5), the token saying
    whether an earlier rank failed.
    """
    token = np.array([value], dtype=np.int64)
    wait_quietly(comm.Isend(token, dest=dest, tag=_TOKEN_TAG))


def recv_token_quietly(source: int, comm: Intracomm) -> int:
    """Receive the token of :func:`send_token_quietly` from ``source``.

    Point-to-point over ``comm``.  Polls with sleeps: the sender may be
    writing a large slice first, and a waiting rank should leave it the core.
    """
    token = np.zeros(1, dtype=np.int64)
    wait_quietly(comm.Irecv(token, source=source, tag=_TOKEN_TAG))
    return int(token[0])


def _quiet_allreduce_int(value: int, comm: Intracomm) -> int:
    send = np.array([value], dtype=np.int64)
    recv = np.zeros(1, dtype=np.int64)
    if comm.Get_size() == 1:
        return value
    wait_quietly(comm.Iallreduce(send, recv, op=mpi().SUM))
    return int(recv[0])


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    if isinstance(exc, MemoryError):
        return f"out of memory{': ' + text if text else ''}"
    if isinstance(exc, KeyError) and text.startswith("'") and text.endswith("'"):
        text = text[1:-1]
    return text or type(exc).__name__


def agree(
    failure: BaseException | None,
    comm: Intracomm,
    what: str = "",
    *,
    quiet: bool = True,
) -> None:
    """Raise the same error on every rank if any rank has a ``failure``.

    Collective over ``comm``: one small ``Iallreduce`` (waited for without
    spinning) when all is well; an ``allgather`` of the messages otherwise.
    The raised :class:`DistributedError` names the failing ranks and keeps
    the original type where all agree (``ValueError``, ``TypeError``,
    ``MemoryError``), and is chained to the local exception on failing ranks.
    ``quiet=False`` waits in a plain ``Allreduce`` instead: for a check
    that every rank reaches at about the same time, where polling with
    sleeps would only add its sleep to the latency.
    """
    flag = 0 if failure is None else 1
    if (_quiet_allreduce_int(flag, comm) if quiet else comm.allreduce(flag)) == 0:
        return
    mine = (
        None
        if failure is None
        else (type(failure).__name__, _describe(failure), _kind(failure))
    )
    everyone = comm.allgather(mine)
    failures = {r: (v[0], v[1]) for r, v in enumerate(everyone) if v is not None}
    kinds = {v[2] for v in everyone if v is not None}
    by_message = _group_ranks({r: m for r, (_, m) in failures.items()})
    size = comm.Get_size()
    prefix = f"{what} failed" if what else "failed"
    if len(by_message) == 1:
        ((message, ranks),) = by_message.items()
        text = (
            f"{prefix} on {format_ranks(ranks, size)} (of {size}): {message}"
            if size > 1
            else (f"{what}: {message}" if what else message)
        )
    else:
        lines = [f"{prefix} on {format_ranks(list(failures), size)} (of {size}):"]
        lines += [
            f"  {format_ranks(ranks, size)}: {message}"
            for message, ranks in by_message.items()
        ]
        text = "\n".join(lines)
    cls: type[DistributedError] = DistributedError
    if "memory" in kinds:
        cls = DistributedMemoryError
    elif kinds == {"value"}:
        cls = DistributedValueError
    elif kinds == {"type"}:
        cls = DistributedTypeError
    raise cls(text, failures) from failure


_BRACED = re.compile(r"\{([^{}]*)\}")


def same_text_key(text: str) -> str:
    """``text`` with the items of each ``{a, b, c}`` sorted: the key under which ranks' texts are one. Pure.

    Each process orders a set of strings by its own hash seed, so the same
    error (scikit-learn's "must be a str among {...}") reads differently on
    each rank.
    """
    return _BRACED.sub(
        lambda m: (
            "{" + ", ".join(sorted(p.strip() for p in m.group(1).split(","))) + "}"
        ),
        text,
    )


def _group_ranks(messages: dict[int, str]) -> dict[str, list[int]]:
    """Invert ``{rank: message}`` into ``{message: [ranks]}``, in rank order.

    Messages equal up to the order of a set's items are one (see
    :func:`same_text_key`), shown as the lowest rank wrote it.
    """
    groups: dict[str, list[int]] = defaultdict(list)
    shown: dict[str, str] = {}
    for rank in sorted(messages):
        key = same_text_key(messages[rank])
        groups[shown.setdefault(key, messages[rank])].append(rank)
    return dict(groups)


def _group_ranks_many(texts: Sequence[Sequence[str]]) -> dict[str, list[int]]:
    """Invert each rank's distinct texts into ``{text: [ranks]}``: first seen first, ranks in order. Pure.

    Texts equal up to the order of a set's items are one (see :func:`same_text_key`).
    """
    groups: dict[str, list[int]] = defaultdict(list)
    shown: dict[str, str] = {}
    for rank, mine in enumerate(texts):
        for text in dict.fromkeys(shown.setdefault(same_text_key(t), t) for t in mine):
            groups[text].append(rank)
    return dict(groups)


def _kind(exc: BaseException) -> str:
    if isinstance(exc, MemoryError):
        return "memory"
    if isinstance(exc, ValueError):
        return "value"
    if isinstance(exc, TypeError):
        return "type"
    return "other"


@contextmanager
def collective_check(
    comm: Intracomm, what: str = "", *, quiet: bool = True
) -> Iterator[None]:
    """Run a block whose errors may happen on some ranks only, then agree.

    Collective over ``comm``: every rank must enter and leave the block.  An
    exception inside the block on any rank becomes the same
    :class:`DistributedError` on all ranks (see :func:`agree`, also for
    ``quiet``).
    """
    failure: BaseException | None = None
    try:
        yield
    except Exception as exc:
        failure = exc
    agree(failure, comm, what, quiet=quiet)


def run_on_root(comm: Intracomm, what: str, work: Callable[[], Any]) -> Any:
    """Rank 0 runs ``work()``; every rank gets its result. Collective over ``comm``.

    The other ranks wait in the agreement (a non-blocking reduction polled
    with sleeps), so they leave the CPU to rank 0; a failure of ``work`` is
    raised alike on every rank (see :func:`collective_check`).  The result
    is broadcast pickled: keep it small (``None`` for a write).
    """
    result = None
    with collective_check(comm, what):
        if comm.Get_rank() == 0:
            result = work()
    return bcast_object(result, comm)


# Commands that rank 0 broadcasts to the evaluating ranks, in slot 0 of the
# command buffer (a float64 slot, so that the point travels in the same Bcast).
_EVALUATE = 1.0
_FINISHED = 0.0
_MINIMIZER_FAILED = 2.0  # finished, and the minimiser raised on rank 0: agreed as such
_ABANDONED = (
    -1.0
)  # rank 0 leaves on a BaseException (an interrupt): no further collectives
_ITERATION = (
    3.0  # an iteration boundary of the minimiser: every rank calls at_iteration
)


class _EvaluationFailed(Exception):
    """Raised on rank 0 to stop the minimiser when some rank's evaluation failed."""


def _small_fields(result: Any) -> dict[str, Any]:
    """The scalar and string fields of an optimiser's result: cheap to pickle. Local."""
    fields = {}
    for key, value in dict(result).items():
        if isinstance(value, np.ndarray) and value.ndim == 0:
            value = value.item()
        if key != "x" and isinstance(value, (bool, int, float, str, np.generic)):
            fields[key] = value
    return fields


def minimize_on_root(
    evaluate_local: Callable[[np.ndarray], np.ndarray],
    x0: np.ndarray,
    comm: Intracomm,
    minimize: Callable[[Callable[[np.ndarray], np.ndarray], np.ndarray], Any],
    *,
    n_sums: int,
    what: str = "evaluating the objective",
    at_iteration: Callable[[Any], None] | None = None,
) -> OptimizeResult:
    """Minimise a function of sums over ranks, with the optimiser on rank 0 only.

    Rank 0 calls ``minimize(summed, x0)``.  Each call ``summed(x)`` there
    broadcasts the command "evaluate" and ``x`` (one ``Bcast``), every rank
    (rank 0 included) computes ``evaluate_local(x)``, and the values are
    summed onto rank 0 (one ``Reduce``), which returns them.  The other
    ranks never run the optimiser: they loop, waiting for the next command,
    until rank 0 broadcasts "finished".  Every step, stopping test and
    iteration count is therefore rank 0's alone, so ranks whose arithmetic
    differs (other CPUs, other BLAS kernels) cannot take different paths
    and leave each other waiting in a collective.

    Collective over ``comm``: every rank calls it with the same ``x0``
    shape and ``n_sums``; only rank 0's ``x0`` and ``minimize`` are used.
    On one rank nothing is communicated.

    Parameters
    ----------
    evaluate_local : callable
        ``evaluate_local(x) -> array of n_sums floats``: this rank's share of
        the sums (loss values, gradient, ...) at ``x``, given with the shape
        of ``x0``; a rank without rows returns zeros.  Called on every rank,
        the same number of times.
    x0 : ndarray
        Starting point.
    comm : mpi4py.MPI.Intracomm
        Preferably a library communicator (see :func:`library_comm`).
    minimize : callable
        ``minimize(summed, x0) -> scipy.optimize.OptimizeResult`` (or any
        mapping with ``"x"``), run on rank 0 only.  ``summed(x)`` returns
        the global sums at ``x`` as a new float64 array of ``n_sums``
        values; ``minimize`` may call it outside the optimiser too (say, for
        a scale at ``x0``).  Repeated calls at the last point are free.
    n_sums : int
        Length of the array returned by ``evaluate_local``.
    what : str, default="evaluating the objective"
        Names the evaluation in the agreed error message.
    at_iteration : callable, default=None
        A collective hook at the minimiser's iteration boundaries (used to
        checkpoint, see :mod:`mpitrain.checkpoint`).  If given, rank 0 calls
        ``minimize(summed, x0, iteration_done)``; each call
        ``iteration_done(state)`` there broadcasts the command "iteration"
        and then calls ``at_iteration(state)`` on rank 0 and
        ``at_iteration(None)`` on every other rank.  ``at_iteration`` may
        communicate over any communicator of the same ranks, and may raise,
        but only identically on every rank (after agreeing): the exception
        then leaves ``minimize_on_root`` on every rank with no further
        communication here, so ``minimize`` must let it propagate.

    Returns
    -------
    scipy.optimize.OptimizeResult
        The same on every rank: rank 0's ``x`` (bit-identical, float64, of
        the shape of ``x0``) and the scalar and string fields of its result
        (``nit``, ``nfev``, ``status``, ``success``, ``message``, ``fun``,
        ...), plus ``n_evaluations``, the number of collective evaluations.
        Only ``seconds`` is this rank's own: ``{"local_compute": ...,
        "communicate": ...}``, the time in ``evaluate_local`` and in the
        broadcasts and reductions (which, off rank 0, includes waiting for
        the optimiser).

    Raises
    ------
    DistributedError
        The same on every rank (see :func:`agree`) if ``evaluate_local``
        raised on any rank, naming those ranks, or if ``minimize`` raised on
        rank 0.  A ``BaseException`` on rank 0 (``KeyboardInterrupt``) is
        re-raised there after releasing the other ranks, which raise
        :class:`DistributedError`.
    """
    from scipy.optimize import OptimizeResult

    MPI = mpi()
    rank, size = comm.Get_rank(), comm.Get_size()
    x0 = np.asarray(x0, dtype=np.float64)
    shape = x0.shape
    # Slot 0: the command; the rest: the point.  One broadcast per evaluation.
    command = np.zeros(1 + x0.size)
    # The local sums, then a failure flag that the reduction turns into a count.
    sums = np.zeros(n_sums + 1)
    seconds = {"local_compute": 0.0, "communicate": 0.0}
    failure: BaseException | None = None

    def evaluate() -> None:
        """This rank's sums at the commanded point into ``sums``, or zeros and the flag."""
        nonlocal failure
        tic = time.perf_counter()
        try:
            values = np.asarray(
                evaluate_local(command[1:].reshape(shape).copy()), dtype=np.float64
            ).ravel()
            if values.size != n_sums:
                raise ValueError(
                    f"evaluate_local returned {values.size} values, expected {n_sums}"
                )
            sums[:n_sums] = values
            sums[n_sums] = 0.0
        except Exception as exc:
            failure = exc
            sums[:] = 0.0
            sums[n_sums] = 1.0
        seconds["local_compute"] += time.perf_counter() - tic

    def reduce_sums() -> None:
        tic = time.perf_counter()
        if size > 1:
            if rank == 0:
                comm.Reduce(MPI.IN_PLACE, sums, op=MPI.SUM, root=0)
            else:
                comm.Reduce(sums, None, op=MPI.SUM, root=0)
        seconds["communicate"] += time.perf_counter() - tic

    def bcast_command() -> None:
        tic = time.perf_counter()
        if size > 1:
            comm.Bcast(command, root=0)
        seconds["communicate"] += time.perf_counter() - tic

    n_evaluations = 0
    fields: dict[str, Any] = {}
    if rank == 0:
        last: tuple[np.ndarray, np.ndarray] | None = None
        stopped = False
        hook_error: BaseException | None = None  # raised by at_iteration on every rank

        def summed(x: np.ndarray) -> np.ndarray:
            nonlocal last, n_evaluations, stopped
            if (
                stopped or hook_error is not None
            ):  # a minimiser that swallowed the stop must not evaluate again
                raise _EvaluationFailed(what)
            x = np.asarray(x, dtype=np.float64).reshape(shape)
            # Only rank 0 decides, so skipping a repeated point needs no agreement.
            if last is not None and np.array_equal(last[0], x):
                return last[1].copy()
            command[0] = _EVALUATE
            command[1:] = x.ravel()
            bcast_command()
            evaluate()
            reduce_sums()
            n_evaluations += 1
            if sums[n_sums] > 0:
                stopped = True
                raise _EvaluationFailed(what)
            last = (x.copy(), sums[:n_sums].copy())
            return sums[:n_sums].copy()

        def iteration_done(state: Any = None) -> None:
            nonlocal hook_error
            if hook_error is not None:
                raise hook_error
            command[0] = _ITERATION
            bcast_command()
            try:
                at_iteration(state)
            except BaseException as exc:
                # Every rank raises it (the hook's contract): nothing more to release.
                hook_error = exc
                raise

        command[0] = _ABANDONED  # unless replaced below: a BaseException is under way
        try:
            if at_iteration is None:
                result = minimize(summed, x0.copy())
            else:
                result = minimize(summed, x0.copy(), iteration_done)
            x = np.ascontiguousarray(
                np.asarray(result["x"], dtype=np.float64).reshape(shape)
            )
            fields = _small_fields(result)
            command[0] = _FINISHED
        except _EvaluationFailed:
            command[0] = _FINISHED  # the failing ranks' own exceptions are agreed below
        except Exception as exc:
            failure = exc
            command[0] = _MINIMIZER_FAILED
        finally:
            if hook_error is None:
                bcast_command()  # always release the evaluating ranks
        if hook_error is not None:
            raise hook_error
    else:
        x = np.empty(shape)
        while True:
            # A plain blocking Bcast, not wait_quietly: between two evaluations
            # rank 0 only does the optimiser's own arithmetic (a few vector
            # operations of length x.size), much shorter than an evaluation,
            # while polling with sleeps would add its sleep granularity to
            # every one of the hundreds or thousands of evaluations.
            bcast_command()
            if command[0] == _ITERATION:
                at_iteration(None)
                continue
            if command[0] != _EVALUATE:
                break
            evaluate()
            reduce_sums()
            n_evaluations += 1
        if command[0] == _ABANDONED:
            raise DistributedError(
                f"{what} stopped: rank 0 was interrupted",
                {0: ("BaseException", "interrupted")},
            )

    agree(
        failure,
        comm,
        "running the minimiser" if command[0] == _MINIMIZER_FAILED else what,
    )
    # Rank 0's answer, bit-identical everywhere: the point, then the small metadata.
    if size > 1:
        comm.Bcast(x, root=0)
        fields, n_evaluations = comm.bcast((fields, n_evaluations), root=0)
    return OptimizeResult(x=x, **fields, n_evaluations=n_evaluations, seconds=seconds)


def _env_int(environ: Mapping[str, str], name: str | None) -> int | None:
    value = environ.get(name, "") if name else ""
    return int(value) if value.strip().isdigit() else None


def _slurm_tasks_on_node(environ: Mapping[str, str]) -> int | None:
    """This node's task count from Slurm's ``2(x3),1`` list and ``SLURM_NODEID``."""
    listed = environ.get("SLURM_STEP_TASKS_PER_NODE") or environ.get(
        "SLURM_TASKS_PER_NODE", ""
    )
    node = _env_int(environ, "SLURM_NODEID")
    counts: list[int] = []
    for part in filter(None, listed.split(",")):
        count, _, repeat = part.partition("(x")
        if not count.isdigit() or not (repeat.rstrip(")") or "1").isdigit():
            return None
        counts += [int(count)] * int(repeat.rstrip(")") or "1")
    return counts[node] if node is not None and node < len(counts) else None


def launcher_layout(environ: Mapping[str, str] | None = None) -> dict:
    """This process's place in the job as its launcher tells it, without MPI. Local.

    Reads the variables that Open MPI's ``mpirun``, MPICH's (and Intel
    MPI's) hydra, MVAPICH, PMIx and Slurm's ``srun`` set before
    ``MPI_Init``; :func:`node_layout` asks MPI itself once it runs.

    Parameters
    ----------
    environ : mapping or None, default=None
        The environment to read; ``None`` means ``os.environ``.

    Returns
    -------
    dict
        ``launcher`` (``"Open MPI"``, ``"MPICH hydra"``, ``"MVAPICH"``,
        ``"PMIx"``, ``"Slurm"``, or ``None`` when started without one),
        ``rank`` (0 without a launcher), and ``size``, ``local_rank`` and
        ``local_size`` (``None`` where the launcher does not say).
        Slurm's local rank and count fill in for PMI-2 and PMIx under
        ``srun``, whose own variables name only the rank.
    """
    environ = os.environ if environ is None else environ
    for (
        launcher,
        rank_name,
        size_name,
        local_name,
        local_size_name,
    ) in _LAUNCHER_VARIABLES:
        rank = _env_int(environ, rank_name)
        if rank is None:
            continue
        size = _env_int(environ, size_name)
        local_rank = _env_int(environ, local_name)
        local_size = _env_int(environ, local_size_name)
        # srun's PMI-2 or PMIx: the same step's Slurm variables say where.
        same_step = _env_int(environ, "SLURM_PROCID") == rank
        if local_rank is None and same_step:
            if size is None:
                size = _env_int(environ, "SLURM_STEP_NUM_TASKS")
            local_rank = _env_int(environ, "SLURM_LOCALID")
        if local_size is None and same_step:
            local_size = _slurm_tasks_on_node(environ)
        return {
            "launcher": launcher,
            "rank": rank,
            "size": size,
            "local_rank": local_rank,
            "local_size": local_size,
        }
    return {
        "launcher": None,
        "rank": 0,
        "size": None,
        "local_rank": None,
        "local_size": None,
    }


def env_rank() -> int:
    """This process's rank as told by the launcher, without initialising MPI. Local."""
    return launcher_layout()["rank"]


def is_root(comm: Intracomm | None = None) -> bool:
    """Whether this process is rank 0 of ``comm`` (or of the job, before MPI starts)."""
    if comm is not None:
        return comm.Get_rank() == 0
    module = sys.modules.get("mpi4py.MPI")
    if module is not None and module.Is_initialized() and not module.Is_finalized():
        return module.COMM_WORLD.Get_rank() == 0
    return env_rank() == 0


def print_root(
    *args: Any, comm: Intracomm | None = None, file=None, **kwargs: Any
) -> None:
    """``print`` on rank 0 only, flushed at once (batch logs buffer otherwise)."""
    if is_root(comm):
        print(
            *args, file=file if file is not None else sys.stdout, flush=True, **kwargs
        )


def mpi_library_version() -> str:
    """The first line of the MPI library's version string."""
    return mpi().Get_library_version().strip().splitlines()[0].strip()


def node_layout(comm: Intracomm) -> dict:
    """How the ranks of ``comm`` sit on nodes. Collective over ``comm``.

    Returns
    -------
    dict
        ``nodes``, ``ranks_per_node`` (the largest count on any node),
        ``local_rank`` and ``local_size`` (this rank's place on its node).
    """
    MPI = mpi()
    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    local_rank, local_size = node.Get_rank(), node.Get_size()
    node.Free()
    from mpitrain.utils.threads import cores_of_process

    # Small metadata: a host name and this rank's cores (a bit mask).
    seen = comm.allgather((MPI.Get_processor_name(), cores_of_process()))
    hosts = [host for host, _ in seen]
    layout = layout_from_hosts(hosts, comm.Get_rank(), local_rank, local_size)
    layout["cpu_sharers"] = cpu_sharers(seen, comm.Get_rank())
    return layout


def cpu_sharers(seen: list[tuple[str, int]], rank: int) -> int:
    """Ranks (this one included) on this rank's host whose cores overlap its own. Pure.

    ``seen[r]`` is rank ``r``'s ``(host, cores)``, the cores as a bit mask
    (:func:`mpitrain.utils.threads.cores_of_process`).  Unbound ranks all have
    the node's (or the job's) cores and count as ``local_size``; ranks that a
    launcher bound to their own cores (``--cpu-bind=cores``, Open MPI's
    ``--bind-to core``) count 1 each, and two ranks bound to one socket 2:
    a rank's threads are its cores divided by this, not by every rank on
    the node.  An unknown core set (0) overlaps every rank on the host.
    """
    host, own = seen[rank]
    return sum(
        1
        for other_host, cores in seen
        if other_host == host and (not own or not cores or own & cores)
    )


def layout_from_hosts(
    hosts: list[str], rank: int, shared_rank: int, shared_size: int
) -> dict:
    """:func:`node_layout` from every rank's host name and MPI's shared-memory split. Pure.

    The split (``MPI_COMM_TYPE_SHARED``: ``shared_rank`` of
    ``shared_size``) is what shares memory.  When it counts fewer ranks than
    share this rank's host name, the host names win: under ``srun
    --distribution=arbitrary`` MPICH's pmi2 puts every rank in a split of its
    own although three share a node's memory and cores, and memory budgets
    and threads per rank must count them all.
    """
    counts: dict[str, int] = defaultdict(int)
    for host in hosts:
        counts[host] += 1
    same_host = [r for r, host in enumerate(hosts) if host == hosts[rank]]
    if shared_size < len(same_host):
        shared_rank, shared_size = same_host.index(rank), len(same_host)
    return {
        "nodes": len(counts),
        "ranks_per_node": max(counts.values()),
        "local_rank": shared_rank,
        "local_size": shared_size,
    }


def _write_stderr(text: str) -> bool:
    """Write and flush ``text`` to standard error; ``False`` if that failed. Local."""
    try:
        sys.stderr.write(text)
        sys.stderr.flush()
    except Exception:
        return False
    return True


def abort_job(text: str) -> NoReturn:
    """Write ``text`` to standard error and abort the whole job (``MPI_Abort``). Local.

    The last resort when other ranks are stuck where no message reaches
    them (a collective they will never leave): ending the job is the only
    way not to hang.
    """
    _write_stderr(text)
    # Abort tears the job down at once; give the launcher's output forwarding
    # a moment, or the one message that explains the failure can be lost.
    time.sleep(0.5)
    mpi().COMM_WORLD.Abort(1)
    raise SystemExit(1)  # not reached: Abort does not return


def finish_job(
    exit_comm: Intracomm,
    message: str | None,
    grace: float | None = None,
    warned: Sequence[str] = (),
) -> int:
    """End a command on every rank with one exit status, one message and no hang.

    Collective over ``exit_comm``, a communicator used for nothing else (so
    it cannot be entangled with a collective that a failing rank left).
    Ranks that succeeded pass ``message=None``, failing ranks their error;
    every rank passes the warnings it raised (``warned``, as text).  If
    every rank arrives (failing ranks wait at most ``grace`` seconds),
    rank 0 prints each distinct warning and then each distinct message
    once, naming the ranks when not every rank had it, and all ranks
    return the same status (0 or 1).  If a failing rank times out, some
    other rank is stuck in work or in a collective that will never
    complete: it prints its own warnings and message and aborts the job.
    A message that cannot be written (standard error closed or a broken
    pipe) still ends every rank with status 1.
    """
    # Each warning once per rank, in the order raised (what _group_ranks_many expects).
    warned = list(dict.fromkeys(warned))
    if not quiet_barrier(exit_comm, timeout=grace if message is not None else None):
        rank = exit_comm.Get_rank()
        abort_job(
            "".join(f"mpitrain: warning on rank {rank}: {w}\n" for w in warned)
            + f"mpitrain: error on rank {rank}: {message}\n"
            f"mpitrain: the other ranks did not stop within {grace:g} s; aborting the whole job\n"
        )
    reports = exit_comm.gather((message, warned), root=0)
    status = 0
    if reports is not None:
        messages = [m for m, _ in reports]
        size = exit_comm.Get_size()
        lines = []
        for w, ranks in _group_ranks_many([ws for _, ws in reports]).items():
            where = "" if len(ranks) == size else f" on {format_ranks(ranks, size)}"
            lines.append(f"mpitrain: warning{where}: {w}\n")
        groups = _group_ranks({r: m for r, m in enumerate(messages) if m is not None})
        for m, ranks in groups.items():
            where = (
                ""
                if len(groups) == 1 and len(ranks) == size
                else f" on {format_ranks(ranks, size)}"
            )
            lines.append(f"mpitrain: error{where}: {m}\n")
        status = 1 if groups else 0
        if lines:
            # A standard error that cannot be written (closed, a broken pipe, a
            # full disk) must not keep rank 0 from the broadcast the others wait in.
            _write_stderr("".join(lines))
    return exit_comm.bcast(status, root=0)
