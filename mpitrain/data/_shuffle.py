"""Slices made alike: a seeded global permutation of the rows, whatever the rank count.

Averaging, per-rank forests and the cascade assume that every rank's slice
looks like the whole data set; a file sorted by date or by class breaks
that.  Here every row moves to the place a seeded permutation gives it:

* **The permutation** (:func:`permute_rows`) sends input row ``i`` to
  output position ``pi(i)`` in ``[0, n)``: a six-round Feistel network on
  the smallest even number of bits that holds ``n``, keyed by the seed,
  walked until the value falls inside ``[0, n)`` (cycle walking keeps a
  bijection of ``[0, n)``).  It depends on ``n`` and the seed only, so the
  output order is the same with 1 or 400 ranks, and every rank computes any
  row's place without communicating.
* **The parts**: output positions are split by :func:`row_range`, so part
  ``r`` of ``P`` holds positions ``row_range(n, P, r)`` in order.  The
  parts concatenated in order are the same rows in the same order whatever
  ``P``, and ``P`` ranks reading the parts as one data set get exactly one
  part each.
* **The exchange**: each rank reads its own slice in blocks and sends each
  row to the rank that owns its position, one ``Alltoallv`` of packed
  records per round (:func:`mpitrain.comm.alltoallv_rows`).  Memory is
  bounded: a rank receives into a window of its part that fits its budget
  (:func:`mpitrain.data.memory_limit`); a part larger than the window is
  filled in several passes over the input, each one reading the input
  again and keeping only the rows of that window.
* **What is kept**: the features, the target, the weights, every other
  dataset of the input with one row per row (numbers or text), and
  ``row_id``, the original row number of every row (carried through from
  the input when it has a ``row_id`` already, so a shuffle of shuffled
  parts still maps back to the very first order).

:func:`shuffle_files` writes one HDF5 part per rank, atomically, and a
JSON manifest; :func:`shuffle_rows` permutes rows held in memory
(``train --shuffle``) with the same permutation and the same exchange, so
the result equals reading the written parts.
"""

from __future__ import annotations

import json
import os
import re
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from mpitrain.comm import (
    agree,
    allgather_object,
    allreduce_minmax,
    alltoallv_rows,
    bcast_object,
    collective_check,
    get_comm,
    library_comm,
    node_layout,
)
from mpitrain.data._hdf5 import fingerprint_files, open_rows
from mpitrain.data._memory import memory_limit
from mpitrain.data._partition import row_counts
from mpitrain.data._write import atomic_path, write_json
from mpitrain.errors import DistributedError, MpitrainError
from mpitrain.utils.hashing import GOLDEN as _GOLDEN
from mpitrain.utils.hashing import MASK64 as _MASK64
from mpitrain.utils.hashing import mix64 as _mix64
from mpitrain.utils.hashing import mix64_int as _mix64_int

if TYPE_CHECKING:  # pragma: no cover
    from mpi4py.MPI import Intracomm

__all__ = [
    "ROW_ID",
    "MANIFEST_NAME",
    "permute_rows",
    "part_name",
    "is_part_name",
    "move_rows",
    "shuffle_rows",
    "shuffle_files",
    "read_manifest",
    "part_paths",
    "PERMUTATION_NAME",
]

#: Dataset of the original row number of every row, in the parts.
ROW_ID = "row_id"

#: The manifest written beside the parts, last: it exists only once every part does.
MANIFEST_NAME = "shuffle.json"

_FEISTEL_ROUNDS = 6
#: What the manifest names the permutation by (bump if it ever changes).
PERMUTATION_NAME = "feistel-6-splitmix64-cycle-walk-v1"

#: Feature bytes a rank reads and sends per round.  Smaller than the
#: reader's usual 32 MiB blocks, so a round's send and receive buffers stay
#: closer to the caches (measured side by side at 2 ranks, after a first
#: run: 1.1 GB in 3.3-4.3 s with 8 MiB rounds, 4.0-4.3 s with 32 MiB;
#: 400 MB in 2.4 s against 3.7 s; 2 MiB rounds were slower again).
ROUND_BYTES = 8 << 20

_PART_PATTERN = re.compile(r"part-(?P<rank>[0-9]+)-of-(?P<parts>[0-9]+)\.h5")


def _feistel(values: np.ndarray, keys: list[int], half: int) -> np.ndarray:
    """One pass of the keyed Feistel network on ``2 * half``-bit uint64 values. Pure."""
    mask = np.uint64((1 << half) - 1)
    shift = np.uint64(half)
    left, right = values >> shift, values & mask
    for key in keys:
        with np.errstate(over="ignore"):
            mixed = _mix64((right + np.uint64(key)) * np.uint64(_GOLDEN))
        left, right = right, left ^ (mixed & mask)
    return (left << shift) | right


def permute_rows(rows: np.ndarray, n_rows: int, seed: int = 0) -> np.ndarray:
    """Output position of each input row ``rows`` of ``n_rows`` for ``seed``. Pure.

    A bijection of ``[0, n_rows)`` that depends only on ``n_rows`` and
    ``seed`` (never on the rank count): a six-round Feistel network keyed
    by the seed on ``2k`` bits (``4**k >= n_rows``), applied again to the
    few values that fall outside ``[0, n_rows)`` (cycle walking; fewer than
    four tries per row on average).  About 0.3 microseconds per row (10
    million rows on a loaded 2-core machine).

    Parameters
    ----------
    rows : array of int
        Input row numbers in ``[0, n_rows)``.
    n_rows : int
    seed : int, default=0

    Returns
    -------
    ndarray of int64
    """
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"the shuffle seed must be an integer, got {seed!r}")
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size and (rows.min() < 0 or rows.max() >= n_rows):
        raise ValueError(f"row numbers must lie in [0, {n_rows})")
    if n_rows <= 1:
        return rows.copy()
    bits = max(2, (n_rows - 1).bit_length())
    bits += bits % 2
    base = _mix64_int(_mix64_int(int(seed) & _MASK64) ^ n_rows)
    keys = [_mix64_int(base + (r + 1) * _GOLDEN) for r in range(_FEISTEL_ROUNDS)]
    out = _feistel(rows.astype(np.uint64), keys, bits // 2)
    outside = np.flatnonzero(out >= np.uint64(n_rows))
    while outside.size:
        out[outside] = _feistel(out[outside], keys, bits // 2)
        outside = outside[out[outside] >= np.uint64(n_rows)]
    return out.astype(np.int64)


def part_name(rank: int, parts: int) -> str:
    """``part-<rank>-of-<parts>.h5``, the rank zero-padded so names sort in rank order. Pure."""
    width = len(str(max(parts - 1, 0)))
    return f"part-{rank:0{width}d}-of-{parts}.h5"


def is_part_name(name: str) -> bool:
    """Whether a file name is one :func:`part_name` gives (for some rank count). Pure."""
    return _PART_PATTERN.fullmatch(name) is not None


# --- Packing rows of several columns into one record per row ----------------


def _is_text(array: np.ndarray) -> bool:
    return array.dtype.kind in "OUS"


def _encode_text(values: np.ndarray) -> np.ndarray:
    """Text values as UTF-8 bytes (``S`` dtype, as wide as the longest). Local."""
    encoded = [
        v if isinstance(v, bytes) else str(v).encode("utf-8") for v in values.ravel()
    ]
    return np.array(encoded, dtype=f"S{max(1, max(map(len, encoded), default=1))}")


def _record_dtype(columns: Mapping[str, np.ndarray], widths: dict[str, int]):
    """One record per row: the output position, then every column. Pure."""
    fields: list[tuple] = [("position", np.int64)]
    for i, (name, array) in enumerate(columns.items()):
        if name in widths:
            fields.append((f"c{i}", f"S{widths[name]}"))
        else:
            fields.append((f"c{i}", array.dtype, array.shape[1:]))
    return np.dtype(fields)


def _reused(buffers: dict, key: str, dtype: np.dtype, n: int) -> np.ndarray:
    """A buffer of at least ``n`` records kept in ``buffers`` across rounds. Local.

    A round's send and receive buffers are reused by the next, instead of
    allocating and first touching fresh memory every round.
    """
    buf = buffers.get(key)
    if buf is None or buf.dtype != dtype or len(buf) < n:
        buf = buffers[key] = np.empty(n, dtype=dtype)
    return buf


def _exchange(
    columns: Mapping[str, np.ndarray],
    positions: np.ndarray,
    part_starts: np.ndarray,
    window: tuple[int, int],
    comm: Intracomm,
    buffers: dict | None = None,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Send each row to the rank that owns its output position. Collective over ``comm``.

    ``columns`` are this rank's rows (the same names, dtypes and shapes
    after the first axis on every rank; text as object arrays);
    ``positions`` their output positions; ``part_starts`` the first
    position of every part (and the total at the end).  Only rows whose
    offset inside their part lies in ``window`` travel.  Text travels as
    UTF-8 bytes as wide as the longest value of the round on any rank (one
    small ``Allreduce``), then one :func:`~mpitrain.comm.alltoallv_rows`.
    ``buffers`` (a dict the caller keeps across rounds) holds the send and
    receive buffers for reuse.

    Returns
    -------
    (received, offsets) : the received rows by column (text as ``str``
    objects; numbers as views of a reused buffer, valid until the next
    round) and each one's offset inside this rank's part.
    """
    buffers = {} if buffers is None else buffers
    text = [name for name, array in columns.items() if _is_text(array)]
    dest = order = None
    encoded: dict[str, np.ndarray] = {}
    # Local work that may fail on one rank (memory, a value that is not
    # text) is agreed before the next collective, so no rank is left in it.
    with collective_check(comm, "sorting rows by destination", quiet=False):
        dest = np.searchsorted(part_starts, positions, side="right") - 1
        offset = positions - part_starts[dest]
        keep = np.flatnonzero((offset >= window[0]) & (offset < window[1]))
        order = keep[np.argsort(dest[keep], kind="stable")]
        encoded = {name: _encode_text(columns[name][order]) for name in text}
    widths: dict[str, int] = {}
    if text:
        local = np.array([encoded[name].dtype.itemsize for name in text])
        _, most = allreduce_minmax(local, comm)
        widths = {name: int(w) for name, w in zip(text, most)}
    record = None
    with collective_check(comm, "packing rows", quiet=False):
        dtype = _record_dtype(columns, widths)
        record = _reused(buffers, "send", dtype, order.size)[: order.size]
        record["position"] = positions[order]
        for i, (name, array) in enumerate(columns.items()):
            if name in widths:
                record[f"c{i}"] = encoded[name]
            else:
                # Straight into the record: no temporary copy of the rows.
                np.take(array, order, axis=0, out=record[f"c{i}"], mode="clip")
    counts = np.bincount(dest[order], minlength=comm.Get_size())
    received, _ = alltoallv_rows(
        record, counts, comm, what="exchanging rows", out=buffers.get("receive")
    )
    if received.base is None or received.base is not buffers.get("receive"):
        buffers["receive"] = received if received.base is None else received.base
    rank = comm.Get_rank()
    out: dict[str, np.ndarray] = {}
    for i, name in enumerate(columns):
        values = received[f"c{i}"]
        if name in widths:
            out[name] = np.array(
                [v.decode("utf-8") for v in values], dtype=object
            ).reshape(len(values))
        else:
            out[name] = values
    return out, received["position"] - part_starts[rank]


def _part_starts(n_rows: int, parts: int) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(row_counts(n_rows, parts))]).astype(np.int64)


def _empty_like(array: np.ndarray, n: int) -> np.ndarray:
    return np.empty((n, *array.shape[1:]), dtype=array.dtype)


def move_rows(
    columns: Mapping[str, np.ndarray | None],
    positions: np.ndarray,
    n_rows: int,
    *,
    comm: Intracomm | None = None,
    block_bytes: int = ROUND_BYTES,
    what: str = "moving rows",
) -> tuple[dict[str, np.ndarray | None], int, int]:
    """Put every rank's rows at the global ``positions`` given, each rank holding its share.

    Collective over ``comm``.  Every rank passes its rows (any number,
    zero too) and their output positions; the positions of all ranks
    together are ``0 .. n_rows - 1``, each once.  Afterwards rank ``r``
    holds positions ``row_range(n_rows, P, r)``, in order.  The rows travel
    in rounds of about ``block_bytes`` sent per rank (one ``Alltoallv``
    each, :func:`~mpitrain.comm.alltoallv_rows`), so the transient buffers
    stay bounded.  :func:`shuffle_rows` moves rows to the positions of
    :func:`permute_rows`; ``predict --original-order`` moves predictions
    back to their ``row_id``.

    Parameters
    ----------
    columns : mapping of str to ndarray or None
        This rank's rows of every column (same names, dtypes and shapes
        after the first axis on every rank; text as object arrays of
        ``str``).  ``None`` values are passed through.
    positions : array of int
        The output position of each of this rank's rows.
    n_rows : int
        Rows on all ranks.
    comm : mpi4py.MPI.Intracomm, default=None
    block_bytes : int, default=ROUND_BYTES (8 MiB)
    what : str, default="moving rows"
        Names the step in agreed error messages.

    Returns
    -------
    (columns, start, stop) : this rank's rows by column and its positions
    ``[start, stop)``.

    Raises
    ------
    DistributedValueError
        On every rank, if the positions are not ``0 .. n_rows - 1`` each
        once (a position out of range, twice, or missing).
    """
    comm = get_comm(comm)
    present = {k: np.asarray(v) for k, v in columns.items() if v is not None}
    positions = np.asarray(positions, dtype=np.int64)
    n_local = len(positions)
    size, rank = comm.Get_size(), comm.Get_rank()
    part_starts = _part_starts(n_rows, size)
    lo, hi = int(part_starts[rank]), int(part_starts[rank + 1])
    out: dict[str, np.ndarray] = {}
    with library_comm(comm) as lib:
        with collective_check(lib, what, quiet=False):
            lengths = {len(v) for v in present.values()}
            if lengths - {n_local}:
                raise ValueError(
                    f"columns of {sorted(lengths)} rows for {n_local} positions"
                )
            if n_local and (positions.min() < 0 or positions.max() >= n_rows):
                raise ValueError(
                    f"positions must lie in [0, {n_rows}), got "
                    f"[{positions.min()}, {positions.max()}]"
                )
            out = {k: _empty_like(v, hi - lo) for k, v in present.items()}
        row_bytes = 8 + sum(
            max(1, v.dtype.itemsize) * int(np.prod(v.shape[1:], dtype=np.int64))
            for v in present.values()
        )
        step = max(1, block_bytes // row_bytes)
        rounds = int(allreduce_minmax(np.array([-(-n_local // step)]), lib)[1][0])
        filled = np.zeros(hi - lo, dtype=bool)
        # Rows received in all: with every one of [lo, hi) filled, more than
        # hi - lo means a position came twice (no sort of each round's offsets).
        arrived = 0
        buffers: dict = {}
        for r in range(rounds):
            a, b = min(r * step, n_local), min((r + 1) * step, n_local)
            received, offsets = _exchange(
                {k: v[a:b] for k, v in present.items()},
                positions[a:b],
                part_starts,
                (0, max(n_rows, 1)),
                lib,
                buffers,
            )
            arrived += offsets.size
            filled[offsets] = True
            for k, v in received.items():
                out[k][offsets] = v
        with collective_check(lib, what, quiet=False):
            twice = arrived > hi - lo
            if twice or not filled.all():
                raise ValueError(
                    f"the positions are not 0 .. {n_rows - 1} each once: some of "
                    f"[{lo}, {hi}) came {'twice' if twice else 'never'}"
                )
    return {k: out.get(k) for k in columns}, lo, hi


def shuffle_rows(
    columns: Mapping[str, np.ndarray | None],
    start: int,
    n_rows: int,
    *,
    seed: int = 0,
    comm: Intracomm | None = None,
    block_bytes: int = ROUND_BYTES,
) -> tuple[dict[str, np.ndarray | None], int, int]:
    """Permute rows held in memory across the ranks, as :func:`shuffle_files` does on disk.

    Collective over ``comm``.  Rank ``r`` holds the consecutive input rows
    ``start, start + 1, ...`` of ``n_rows`` (the slices of the ranks, in
    rank order, cover them all; a rank may hold none).  Afterwards rank
    ``r`` holds the output positions ``row_range(n_rows, P, r)`` of
    :func:`permute_rows`, in order: the rows a rank would read from the
    parts that :func:`shuffle_files` writes with the same seed (see
    :func:`move_rows` for the rounds).

    Parameters
    ----------
    columns : mapping of str to ndarray or None
        This rank's rows of every column (same names, dtypes and shapes
        after the first axis on every rank; text labels as object arrays).
        ``None`` values are passed through.
    start : int
        Global number of this rank's first row.
    n_rows : int
        Rows on all ranks.
    seed : int, default=0
    comm : mpi4py.MPI.Intracomm, default=None
    block_bytes : int, default=ROUND_BYTES (8 MiB)

    Returns
    -------
    (columns, start, stop) : the permuted rows by column, plus
    :data:`ROW_ID` (their input row numbers), and this rank's output
    positions ``[start, stop)``.
    """
    lengths = {len(v) for v in columns.values() if v is not None}
    if len(lengths) > 1:
        raise ValueError(f"columns of different lengths: {sorted(lengths)}")
    n_local = lengths.pop() if lengths else 0
    ids = np.arange(start, start + n_local, dtype=np.int64)
    return move_rows(
        {**columns, ROW_ID: ids},
        permute_rows(ids, n_rows, seed),
        n_rows,
        comm=comm,
        block_bytes=block_bytes,
        what="shuffling rows",
    )


# --- Shuffling files into parts ----------------------------------------------


@dataclass
class _Column:
    """A dataset the parts get: its name, how it is read, and its stored type."""

    name: str
    role: str  # "X", "y", "sample_weight", "extra", or ROW_ID when carried through
    text: bool
    dtype: str  # numpy dtype string of the numbers; "text" for text
    trailing: tuple[int, ...]


def _row_aligned_datasets(
    paths: Sequence[str], taken: set[str], n_rows: Sequence[int]
) -> tuple[list[_Column], list[str]]:
    """Every other dataset with one row per row in every file, and what was left out. Local."""
    import h5py

    def kind(ds) -> tuple[str, tuple[int, ...], str] | None:
        if ds.ndim < 1:
            return None
        if h5py.check_string_dtype(ds.dtype) is not None or ds.dtype.kind in "SU":
            # One text value per row only: wider text tables are left out.
            return ("text", (), "text") if ds.ndim == 1 else None
        if ds.dtype.kind in "biuf":
            return ("number", tuple(ds.shape[1:]), ds.dtype.str)
        return None

    found: dict[str, tuple] | None = None
    left_out: set[str] = set()
    for path, rows in zip(paths, n_rows):
        here: dict[str, tuple] = {}
        with h5py.File(path, "r") as f:

            def visit(name: str, obj) -> None:
                if isinstance(obj, h5py.Dataset) and name not in taken:
                    k = kind(obj)
                    if k is not None and obj.shape[0] == rows:
                        here[name] = k
                    elif obj.ndim >= 1 and obj.shape[0] == rows:
                        left_out.add(f"{name} (dtype {obj.dtype})")

            f.visititems(visit)
        if found is None:
            found = here
            continue
        for name in list(found):
            mine = here.get(name)
            if mine is None or mine[:2] != found[name][:2]:
                left_out.add(f"{name} (not in every file alike)")
                del found[name]
            elif mine[0] == "number" and mine[2] != found[name][2]:
                common = np.result_type(np.dtype(mine[2]), np.dtype(found[name][2]))
                found[name] = (mine[0], mine[1], common.str)
        left_out.update(
            f"{name} (not in every file alike)" for name in here if name not in found
        )
    columns = [
        _Column(name, "extra", k[0] == "text", k[2], k[1])
        for name, k in sorted((found or {}).items())
    ]
    return columns, sorted(left_out)


def _strip(name: str | None) -> str | None:
    return None if name is None else name.strip("/")


def _describe_input(reader, names: dict) -> dict:
    """The columns of the parts, from the reader and the first file. Local (rank 0)."""
    x, y, w = (_strip(names[k]) for k in ("x", "y", "sample_weight"))
    columns = [_Column(x, "X", False, reader.x_dtype.str, (reader.n_features,))]
    if y is not None:
        text = reader.y_dtype.kind == "O"
        columns.append(
            _Column(y, "y", text, "text" if text else reader.y_dtype.str, ())
        )
    if w is not None:
        columns.append(_Column(w, "sample_weight", False, np.dtype("f8").str, ()))
    taken = {c.name for c in columns}
    extras, left_out = _row_aligned_datasets(
        reader.paths, taken, [s.n_rows for s in reader.sources]
    )
    # An input row_id (the input is itself a shuffle's part) is carried through
    # as an extra dataset, so the parts still map back to the very first order.
    if not any(c.name == ROW_ID and not c.text for c in extras):
        extras = [c for c in extras if c.name != ROW_ID]
        extras.append(_Column(ROW_ID, ROW_ID, False, np.dtype("i8").str, ()))
    return {"columns": columns + extras, "left_out": left_out}


def _budget(comm: Intracomm) -> tuple[float | None, str]:
    """This node's memory per rank, the same figure on every rank. Collective."""
    layout = node_layout(comm)
    limit, source = memory_limit(layout["local_size"])
    values = allgather_object(limit, comm)
    known = [v for v in values if v is not None]
    return (min(known) if known else None), source


def _block_bytes_for(limit: float | None) -> int:
    """Feature bytes per read block: a tenth of the budget, at most :data:`ROUND_BYTES`. Pure."""
    if limit is None:
        return ROUND_BYTES
    return int(max(256, min(ROUND_BYTES, limit / 10)))


def _read_extras(files: dict, block, first_rows: dict, extras: list[_Column]) -> dict:
    """The extra datasets' rows of one read block, from the block's file. Local."""
    import h5py

    if not extras:
        return {}
    f = files.get(block.path)
    if f is None:
        for other in files.values():
            other.close()
        files.clear()
        f = files[block.path] = h5py.File(block.path, "r")
    a = block.start - first_rows[block.path]
    b = a + block.n_rows
    out = {}
    for column in extras:
        ds = f[column.name]
        if column.text:
            out[column.name] = np.asarray(ds.asstr()[a:b], dtype=object)
        else:
            out[column.name] = np.asarray(ds[a:b], dtype=np.dtype(column.dtype))
    return out


def _create_part(path: str, columns: list[_Column], n: int, attrs: dict) -> None:
    """An HDF5 part of ``n`` rows with one dataset per column, unwritten. Local."""
    import h5py

    with h5py.File(path, "w") as f:
        for column in columns:
            dtype = h5py.string_dtype() if column.text else np.dtype(column.dtype)
            row_bytes = max(1, int(np.prod(column.trailing, dtype=np.int64))) * (
                16 if column.text else dtype.itemsize
            )
            chunk_rows = max(1, min(n, (1 << 20) // row_bytes))
            f.create_dataset(
                column.name,
                shape=(n, *column.trailing),
                dtype=dtype,
                chunks=(chunk_rows, *column.trailing) if n else None,
            )
        for key, value in attrs.items():
            f.attrs[key] = value


def shuffle_files(
    data: str | os.PathLike | Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    seed: int = 0,
    x: str = "X",
    y: str | None = "y",
    sample_weight: str | None = None,
    comm: Intracomm | None = None,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Redistribute the rows of ``data`` by a seeded permutation into one HDF5 part per rank.

    Collective over ``comm``.  Rank ``r`` of ``P`` writes
    ``out/part-<r>-of-<P>.h5`` (:func:`part_name`) holding the output
    positions ``row_range(n, P, r)`` of :func:`permute_rows`, in order:
    the features, target and weights under their input names, every other
    row-aligned dataset of the input (numbers or text), and
    :data:`ROW_ID`.  Each part is written under a temporary name, flushed
    to disk, and renamed only once every rank has written its part; then
    parts of another rank count left in ``out`` by an earlier shuffle are
    removed, and rank 0 writes the manifest :data:`MANIFEST_NAME` (seed,
    parts, rows per part, datasets, the input's fingerprint) last.  On a
    failure no part appears under its final name from this run, and every
    rank raises the same error.

    Memory: a rank holds a window of its part (half of its budget,
    :func:`~mpitrain.data.memory_limit`), a few read blocks and the round's
    send and receive buffers; a part larger than the window is filled in
    several passes, each reading the input again.

    Parameters
    ----------
    data : str, path or sequence of them
        HDF5 file(s) or glob patterns, one row space.
    out : str or path
        The folder of the parts (made with its parents if missing; a failed
        shuffle removes again the folders it made, while they are empty).
        The caller checks that it holds no input
        (:mod:`mpitrain.workflow`'s ``shuffle`` does).
    seed : int, default=0
    x, y, sample_weight : str or None
        The feature, target and weight datasets (``y=None``: none).
    comm : mpi4py.MPI.Intracomm, default=None
    log : callable, default=None
        Called on rank 0 with progress lines.

    Returns
    -------
    dict
        The manifest, on every rank, plus ``seconds``: this rank's read,
        exchange and write times and its total.
    """
    comm = get_comm(comm)
    out = os.fspath(out)
    permute_rows(np.zeros(0, dtype=np.int64), 1, seed)  # the seed's type, checked alike
    say = log if log is not None and comm.Get_rank() == 0 else (lambda text: None)
    tic = time.perf_counter()
    seconds = {"read": 0.0, "exchange": 0.0, "write": 0.0}
    with library_comm(comm) as lib:
        size, rank = lib.Get_size(), lib.Get_rank()
        # Before any row is read: a folder that cannot be made must not cost a shuffle.
        with _output_folder(out, lib):
            limit, source = _budget(lib)
            reader = open_rows(
                data,
                x=x,
                y=y,
                sample_weight=sample_weight,
                comm=lib,
                labels=True,
                block_bytes=_block_bytes_for(limit),
            )
            try:
                plan = _plan(
                    reader,
                    {"x": x, "y": y, "sample_weight": sample_weight},
                    seed,
                    limit,
                    lib,
                )
                say(
                    f"shuffling {plan.n_rows:,} rows of {reader.path} into {size} part(s) in {out} "
                    f"(seed {seed}; {len(plan.columns)} datasets; "
                    + (
                        "one pass"
                        if plan.passes == 1
                        else f"{plan.passes} passes of {plan.window:,} rows per part ({source})"
                    )
                    + ")"
                )
                final = os.path.join(out, part_name(rank, size))
                rename_failure: BaseException | None = None
                try:
                    with atomic_path(final) as tmp:
                        _write_part(plan, reader, tmp, final, lib, seconds, say)
                        # Every part is complete before any is renamed; from the first
                        # rename on there is no manifest, so a folder whose parts are
                        # half replaced never looks complete.
                        manifest_path = os.path.join(out, MANIFEST_NAME)
                        with collective_check(lib, f"removing the old {manifest_path}"):
                            if rank == 0 and os.path.lexists(manifest_path):
                                os.unlink(manifest_path)
                except DistributedError:
                    raise  # agreed: every rank leaves alike
                except Exception as exc:  # the rename of this rank's part alone
                    rename_failure = exc
            finally:
                reader.close()
            agree(rename_failure, lib, "renaming the parts")
            manifest: dict[str, Any] = {}
            with collective_check(lib, f"writing {os.path.join(out, MANIFEST_NAME)}"):
                if rank == 0:
                    manifest = _finish_folder(plan, data, out, size)
            manifest = bcast_object(manifest, lib)
    manifest = dict(manifest)
    seconds["total"] = time.perf_counter() - tic
    manifest["seconds"] = seconds
    return manifest


def _missing_folders(path: str) -> list[str]:
    """The folders ``os.makedirs(path)`` would make, deepest first. Local."""
    missing = []
    path = os.path.abspath(path)
    while not os.path.lexists(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return missing


@contextmanager
def _output_folder(out: str, comm: Intracomm) -> Iterator[None]:
    """Make the folder ``out`` (with its parents) for the block; undo it on a failure. Collective over ``comm``.

    A failed shuffle leaves no folder it made behind: each one is removed
    again, deepest first, if it is empty (every rank tries, after its own
    temporary part is gone, so the last one to leave succeeds).  A folder
    that any rank saw before is never removed.
    """
    missing = _missing_folders(out)
    # One reduction, before any rank makes a folder: the fewest missing on any
    # rank are the folders that no rank saw.
    fewest, _ = allreduce_minmax(np.array([len(missing)]), comm)
    made = missing[: int(fewest[0])]
    try:
        with collective_check(comm, f"making the folder {out}"):
            os.makedirs(out, exist_ok=True)
        yield
    except BaseException:
        for folder in made:
            try:
                os.rmdir(folder)
            except FileNotFoundError:
                continue  # another rank removed it
            except OSError:
                break  # not empty: it and its parents stay
        raise


@dataclass
class _Plan:
    """What every rank knows of a shuffle before any row moves."""

    columns: list[_Column]
    n_rows: int
    seed: int
    part_starts: np.ndarray
    window: int  # rows of a part held at once
    passes: int

    @property
    def carried(self) -> bool:
        """Whether the input's own row_id is carried through."""
        return not any(c.role == ROW_ID for c in self.columns)


def _plan(
    reader, names: dict, seed: int, limit: float | None, comm: Intracomm
) -> _Plan:
    """The columns, the parts and the window of a shuffle. Collective (one broadcast)."""
    described = None
    with collective_check(comm, f"listing the datasets of {reader.path}"):
        if comm.Get_rank() == 0:
            described = _describe_input(reader, names)
    described = bcast_object(described, comm)
    if described["left_out"] and comm.Get_rank() == 0:
        warnings.warn(
            "shuffle: datasets with one row per row that are not copied to the "
            "parts: " + ", ".join(described["left_out"]),
            UserWarning,
            stacklevel=3,
        )
    columns: list[_Column] = described["columns"]
    part_starts = _part_starts(reader.n_rows, comm.Get_size())
    # Text counts as a generous 48 bytes a value (a Python str and its slot).
    row_bytes = sum(
        (48 if c.text else np.dtype(c.dtype).itemsize)
        * max(1, int(np.prod(c.trailing, dtype=np.int64)))
        for c in columns
    )
    largest = int(np.diff(part_starts).max())
    # Half the budget for the window; the read blocks and a round's buffers share the rest.
    window = (
        largest
        if limit is None
        else max(1, min(largest, int(limit // 2 // max(row_bytes, 1))))
    )
    passes = max(1, -(-largest // max(window, 1)))
    return _Plan(columns, reader.n_rows, seed, part_starts, window, passes)


def _empty_rows(columns: list[_Column], n: int) -> dict[str, np.ndarray]:
    return {
        c.name: np.empty(
            (n, *c.trailing), dtype=object if c.text else np.dtype(c.dtype)
        )
        for c in columns
    }


def _write_part(
    plan: _Plan,
    reader,
    tmp: str,
    final: str,
    comm: Intracomm,
    seconds: dict,
    say: Callable[[str], None],
) -> None:
    """Fill this rank's part in ``tmp``, one window per pass over the input. Collective."""
    import h5py

    rank = comm.Get_rank()
    lo, hi = int(plan.part_starts[rank]), int(plan.part_starts[rank + 1])
    with collective_check(comm, f"creating {final}"):
        _create_part(
            tmp,
            plan.columns,
            hi - lo,
            {
                "part": rank,
                "parts": comm.Get_size(),
                "first_position": lo,
                "seed": plan.seed,
            },
        )
    for step in range(plan.passes):
        wlo = step * plan.window
        mine = max(0, min(hi - lo, wlo + plan.window) - wlo)
        held: dict[str, np.ndarray] = {}
        with collective_check(comm, "allocating the window", quiet=False):
            held = _empty_rows(plan.columns, mine)
        # Each pass reads the input again (a RowReader streams once).
        pass_reader = reader if step == 0 else reader.from_row(reader.start)
        try:
            _one_pass(plan, pass_reader, (wlo, wlo + plan.window), held, comm, seconds)
        finally:
            if pass_reader is not reader:
                pass_reader.close()
        t0 = time.perf_counter()
        with collective_check(comm, f"writing {final}"):
            if mine:
                with h5py.File(tmp, "r+") as f:
                    for k, v in held.items():
                        f[k][wlo : wlo + mine] = v
        del held
        seconds["write"] += time.perf_counter() - t0
        say(f"pass {step + 1} of {plan.passes} written")


def _one_pass(
    plan: _Plan,
    reader,
    window: tuple[int, int],
    held: dict[str, np.ndarray],
    comm: Intracomm,
    seconds: dict,
) -> None:
    """Stream the input once; keep in ``held`` the rows of this rank's ``window``. Collective.

    One round per read block: the block's rows go to their ranks in one
    exchange (:func:`_exchange`); a rank whose rows are all read takes part
    with none, until no rank has any left (one small reduction a round).
    """
    by_role = {c.role: c for c in plan.columns}
    extras = [c for c in plan.columns if c.role == "extra"]
    first_rows = {s.path: s.first_row for s in reader.sources}
    stream = reader.stream()
    files: dict = {}
    buffers: dict = {}
    ahead = _PositionsAhead(plan.n_rows, plan.seed, reader.stop)
    try:
        while True:
            block = None
            rows = _empty_rows(plan.columns, 0)
            global_rows = np.zeros(0, dtype=np.int64)
            t0 = time.perf_counter()
            with collective_check(comm, f"reading {reader.path}"):
                block = next(stream, None)
                if block is not None:
                    rows[by_role["X"].name] = block.X
                    if "y" in by_role:
                        rows[by_role["y"].name] = block.y
                    if "sample_weight" in by_role:
                        rows[by_role["sample_weight"].name] = block.sample_weight
                    rows.update(_read_extras(files, block, first_rows, extras))
                    global_rows = np.arange(block.start, block.stop, dtype=np.int64)
                    if not plan.carried:
                        rows[ROW_ID] = global_rows
            seconds["read"] += time.perf_counter() - t0
            if not allreduce_minmax(np.array([int(block is not None)]), comm)[1][0]:
                break
            t0 = time.perf_counter()
            positions = ahead.positions(global_rows)
            received, offsets = _exchange(
                rows, positions, plan.part_starts, window, comm, buffers
            )
            for k, v in received.items():
                held[k][offsets - window[0]] = v
            seconds["exchange"] += time.perf_counter() - t0
    finally:
        for f in files.values():
            f.close()


class _PositionsAhead:
    """:func:`permute_rows` of consecutive row ranges, computed a chunk ahead. Local.

    The permutation's cycle walking repeats until the last value of a call
    lands in range (about 26 rounds of small numpy calls for a read block
    of 10,000 rows); one call per ``chunk`` rows (2 MiB of positions)
    instead of one per block pays that once per chunk.  The positions are
    the same as :func:`permute_rows` of each block.
    """

    def __init__(self, n_rows: int, seed: int, stop: int, chunk: int = 1 << 18):
        self.n_rows, self.seed, self.stop, self.chunk = n_rows, seed, stop, chunk
        self.start = 0
        self.cached = np.zeros(0, dtype=np.int64)

    def positions(self, rows: np.ndarray) -> np.ndarray:
        """The output positions of ``rows``, consecutive global row numbers."""
        if not rows.size:
            return permute_rows(rows, self.n_rows, self.seed)
        first, last = int(rows[0]), int(rows[-1]) + 1
        if first < self.start or last > self.start + self.cached.size:
            self.start = first
            end = max(last, min(self.stop, first + self.chunk))
            self.cached = permute_rows(
                np.arange(first, end, dtype=np.int64), self.n_rows, self.seed
            )
        return self.cached[first - self.start : last - self.start]


def _finish_folder(plan: _Plan, data, out: str, size: int) -> dict:
    """Remove parts of another rank count, then write the manifest. Local (rank 0)."""
    from mpitrain import __version__

    stale = [
        name
        for name in sorted(os.listdir(out))
        if is_part_name(name) and _PART_PATTERN.fullmatch(name)["parts"] != str(size)
    ]
    for name in stale:
        os.unlink(os.path.join(out, name))
    content = {
        "command": "shuffle",
        "mpitrain_version": __version__,
        "permutation": PERMUTATION_NAME,
        "seed": int(plan.seed),
        "rows": plan.n_rows,
        "parts": size,
        "files": [part_name(r, size) for r in range(size)],
        "rows_per_part": np.diff(plan.part_starts).tolist(),
        "datasets": {
            c.name: {
                "role": c.role,
                "dtype": c.dtype,
                "shape": [plan.n_rows, *c.trailing],
            }
            for c in plan.columns
        },
        "row_id": f"{ROW_ID}: the row's number in the input"
        + (" (carried from the input's own row_id)" if plan.carried else ""),
        "removed_stale_parts": stale,
        "source": fingerprint_files(
            data, [c.name for c in plan.columns if c.role != ROW_ID]
        ),
    }
    write_json(os.path.join(out, MANIFEST_NAME), content)
    return content


def read_manifest(directory: str | os.PathLike) -> dict:
    """The manifest of a shuffled folder. Local.

    Raises
    ------
    MpitrainError
        If the folder has none (no shuffle finished there).
    """
    path = os.path.join(os.fspath(directory), MANIFEST_NAME)
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise MpitrainError(
            f"{directory} has no {MANIFEST_NAME}: no shuffle finished there"
        ) from None


def part_paths(directory: str | os.PathLike) -> list[str]:
    """The parts of a shuffled folder, in order, as its manifest lists them. Local."""
    manifest = read_manifest(directory)
    return [os.path.join(os.fspath(directory), name) for name in manifest["files"]]
