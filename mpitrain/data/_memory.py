"""Memory budgets: how much a rank may hold, and checks made before rows are read."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Protocol

import numpy as np

from mpitrain.comm import (
    collective_check,
    node_layout,
)

if TYPE_CHECKING:  # pragma: no cover
    from mpi4py.MPI import Intracomm

__all__ = [
    "rows_memory_bytes",
    "smallest_rank_count",
    "check_rows_fit",
    "check_reading_fits",
    "MEMORY_LIMIT_VARIABLE",
    "available_memory",
    "memory_limit",
    "ranks_sharing_memory",
]


def rows_memory_bytes(
    n_rows: int,
    n_features: int,
    *,
    weights: bool = False,
    copies: float = 1.0,
    fixed_bytes: int = 0,
) -> int:
    """Bytes that ``n_rows`` rows take in memory for a model that holds them. Pure.

    Each row counts as float64 features, a float64 target and, with
    ``weights``, a float64 weight, held ``copies`` times (the rows as read
    plus the model's own copies), plus ``fixed_bytes`` however many rows
    there are (a kernel cache, say).
    """
    return int(np.ceil(n_rows * 8 * (n_features + 1 + int(weights)) * copies)) + int(
        fixed_bytes
    )


def smallest_rank_count(
    n_rows: int, row_bytes: float, fixed_bytes: float, limit_bytes: float
) -> int | None:
    """Fewest ranks whose largest share of ``n_rows`` (as :func:`row_range` splits) fits. Pure.

    A rank needs ``rows × row_bytes + fixed_bytes``; ``None`` if no number of
    ranks fits (the fixed part alone exceeds the limit).
    """
    room = limit_bytes - fixed_bytes
    if room < 0 or (n_rows > 0 and room < row_bytes):
        return None
    if n_rows == 0:
        return 1
    per_rank = int(room // row_bytes)
    return max(1, -(-n_rows // per_rank))


# Below this need, asking how many ranks share a node is not worth a collective.
_SMALL_ROWS_BYTES = 256 << 20


class _Rows(Protocol):
    """What the memory checks need of a :class:`~mpitrain.data.RowReader`."""

    n_rows: int
    n_features: int
    names: dict
    largest_share: int


def ranks_sharing_memory(need: int, comm: Intracomm) -> int:
    """Ranks sharing this node's memory, asked only for needs that matter. Collective.

    ``need`` must be the same on every rank: it decides whether the ranks
    take part in the collective that counts them.
    """
    return node_layout(comm)["local_size"] if need > _SMALL_ROWS_BYTES else 1


def memory_limit(ranks_on_node: int) -> tuple[float | None, str]:
    """``(bytes this rank may use, where that comes from)``. Local.

    :func:`available_memory`, and the words an error names it by
    (``$MPITRAIN_MEMORY_LIMIT``, or the node's MemAvailable shared by the
    ranks of :func:`ranks_sharing_memory`).
    """
    from_env = bool(os.environ.get(MEMORY_LIMIT_VARIABLE, "").strip())
    source = (
        MEMORY_LIMIT_VARIABLE
        if from_env
        else f"MemAvailable shared by {ranks_on_node} rank(s) on this node"
    )
    return available_memory(ranks_on_node), source


def check_reading_fits(
    need: int, comm: Intracomm, *, what: str, detail: str
) -> float | None:
    """Refuse, before reading, a reader whose own buffers would not fit in memory.

    Collective over ``comm``; ``need`` (bytes per rank, the same on every
    rank) is what reading takes whatever the model: the blocks in flight
    and the decompressed chunks that HDF5 holds (see
    :attr:`RowReader.reading_bytes <mpitrain.data.RowReader.reading_bytes>`).
    The limit is as for :func:`check_rows_fit`.

    Returns
    -------
    float or None
        The limit compared against (``None`` where it is unknown).

    Raises
    ------
    DistributedMemoryError
        The same on every rank if the need exceeds some rank's limit.
    """
    from mpitrain.report import format_bytes

    ranks_on_node = ranks_sharing_memory(need, comm)
    limit = None
    with collective_check(comm, "checking memory for reading"):
        limit, source = memory_limit(ranks_on_node)
        if limit is not None and need > limit:
            raise MemoryError(
                f"{what} needs about {format_bytes(need)} per rank ({detail}) but a "
                f"rank may use {format_bytes(limit)} ({source}); give each rank more "
                "memory, or rewrite the file with smaller chunks (h5repack -l)"
            )
    return limit


def check_rows_fit(
    reader: _Rows,
    comm: Intracomm,
    *,
    copies: float,
    fixed_bytes: int = 0,
    what: str = "the model",
) -> tuple[int, int | None]:
    """Refuse, before reading, rows that would not fit in memory, on every rank alike.

    Collective over ``comm``.  The need is :func:`rows_memory_bytes` of the
    largest share of the rows (``reader.largest_share``: ``ceil(n_rows /
    ranks)`` with a root share of 1), the same on every rank; the limit is ``$MPITRAIN_MEMORY_LIMIT`` bytes per rank if set,
    else the node's MemAvailable shared by the ranks on the node (as for the
    Gram matrix of the exact linear models).  The error says the need, the
    limit and the fewest ranks (each with that limit, e.g. on more nodes)
    that would fit.

    Returns
    -------
    (need, limit) : bytes per rank (the limit ``None`` where it is unknown)

    Raises
    ------
    DistributedMemoryError
        If the rows do not fit on some rank.
    """
    from mpitrain.report import format_bytes

    # The rank that reads the most (rank 0 reads less with a root share below 1).
    share = reader.largest_share
    weights = reader.names["sample_weight"] is not None
    need = rows_memory_bytes(
        share,
        reader.n_features,
        weights=weights,
        copies=copies,
        fixed_bytes=fixed_bytes,
    )
    ranks_on_node = ranks_sharing_memory(need, comm)
    limit = None
    with collective_check(comm, "checking memory for the rows"):
        limit, source = memory_limit(ranks_on_node)
        if limit is not None and need > limit:
            row_bytes = rows_memory_bytes(
                1, reader.n_features, weights=weights, copies=copies
            )
            fewest = smallest_rank_count(reader.n_rows, row_bytes, fixed_bytes, limit)
            extra = f" + {format_bytes(fixed_bytes)} fixed" if fixed_bytes else ""
            advice = (
                f"at least {fewest} ranks with {format_bytes(limit)} each would fit"
                if fewest is not None
                else "no number of ranks fits: the fixed part alone exceeds the limit"
            )
            raise MemoryError(
                f"{what} needs about {format_bytes(need)} per rank to hold its rows "
                f"({share:,} rows x {reader.n_features} features, {copies:g} float64 copies{extra}) but a rank "
                f"may use {format_bytes(limit)} ({source}); {advice}"
            )
    # Below _SMALL_ROWS_BYTES the limit was not shared among the node's ranks: not worth saying.
    return need, (limit if need > _SMALL_ROWS_BYTES else None)


#: Environment variable: bytes of memory each rank may use for the Gram matrix.
MEMORY_LIMIT_VARIABLE = "MPITRAIN_MEMORY_LIMIT"


def available_memory(ranks_on_node: int) -> float | None:
    """Bytes this rank may use: ``$MPITRAIN_MEMORY_LIMIT``, else its share of MemAvailable."""
    limit = os.environ.get(MEMORY_LIMIT_VARIABLE, "").strip()
    if limit:
        try:
            return float(limit)
        except ValueError:
            raise ValueError(
                f"{MEMORY_LIMIT_VARIABLE}={limit!r} is not a number of bytes"
            ) from None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 / ranks_on_node
    except OSError:
        pass
    return None  # not Linux: no test, only the feature limit
