"""Writing files safely: durable atomic renames, and one HDF5 file written by every rank in row order."""

from __future__ import annotations

import errno
import json
import math
import os
import re
import socket
import stat
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np

from mpitrain.comm import (
    agree,
    allgather_object,
    bcast_object,
    collective_check,
    get_comm,
    library_comm,
    recv_token_quietly,
    send_token_quietly,
)
from mpitrain.errors import MpitrainError

if TYPE_CHECKING:  # pragma: no cover
    from mpi4py.MPI import Intracomm

__all__ = [
    "STALE_TEMPORARY_SECONDS",
    "atomic_path",
    "write_rows_in_order",
    "write_json",
]

#: A temporary file left by a writer that is gone (killed, crashed) is removed
#: by the next write to the same final path once it is this old (seconds).
#: The age guards against a live writer whose process this host cannot see
#: (another PID namespace under the same host name).
STALE_TEMPORARY_SECONDS = 600.0

# fsync errors that only say the file system cannot sync this kind of file.
_CANNOT_SYNC = {errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF}


def _host_tag() -> str:
    """This host's name as it appears in temporary file names (no separators)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname()) or "host"


def _temporary_pattern(final: str) -> re.Pattern:
    """Names of the temporary files of :func:`_temporary_beside` for ``final``. Pure.

    ``.<final name>.<host>.<pid>.<random>.tmp``: the writer's host and process
    id let a later writer tell a dead writer's file from a live one's.
    """
    return re.compile(
        re.escape(f".{os.path.basename(final)}.")
        + r"(?P<host>[A-Za-z0-9_-]+)\.(?P<pid>[0-9]+)\.[A-Za-z0-9_]+\.tmp"
    )


def _process_exists(pid: int) -> bool:
    """Whether a process with this id runs on this host. Local."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    except OSError:
        return True  # cannot tell: assume alive, never remove a live writer's file
    return True


def _sweep_stale_temporaries(final: str) -> list[str]:
    """Remove temporary files of ``final`` left by writers that are gone. Local.

    Only files written on this host (whose process ids mean something here)
    by a process that no longer exists, and older than
    :data:`STALE_TEMPORARY_SECONDS`, are removed; anything else, including
    a live writer's file and files of other hosts, is left alone.  Returns
    the removed paths.
    """
    directory = os.path.dirname(os.path.abspath(final))
    pattern = _temporary_pattern(final)
    host = _host_tag()
    now = time.time()
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        match = pattern.fullmatch(name)
        if match is None or match["host"] != host:
            continue
        path = os.path.join(directory, name)
        try:
            info = os.lstat(path)
        except OSError:
            continue
        if not stat.S_ISREG(info.st_mode):
            continue
        if now - info.st_mtime < STALE_TEMPORARY_SECONDS:
            continue
        if _process_exists(int(match["pid"])):
            continue
        try:
            os.unlink(path)
            removed.append(path)
        except OSError:
            pass  # gone already (another sweeper), or not ours to remove
    return removed


def _temporary_beside(final: str, private: bool = False) -> str:
    """An empty temporary file in ``final``'s directory, with the umask's permissions. Local.

    mkstemp makes the file private (0600); the result should get the usual
    permissions, like any file the user creates, unless ``private``: then
    it stays 0600 from its creation on (set again explicitly, as a umask
    can only take bits away), so no other user can open it, not even
    while it is empty.  Stale temporary files of the same final path
    (their writers killed) are swept first.
    """
    directory = os.path.dirname(os.path.abspath(final))
    if not os.path.isdir(directory):
        raise MpitrainError(
            f"cannot write {final}: directory {directory} does not exist"
        )
    _sweep_stale_temporaries(final)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{os.path.basename(final)}.{_host_tag()}.{os.getpid()}.",
        suffix=".tmp",
        dir=directory,
    )
    os.close(fd)
    os.chmod(tmp, 0o600 if private else 0o666 & ~_current_umask())
    return tmp


def _fsync(path: str, directory: bool = False) -> None:
    """Flush a file's (or a directory's entries') data to stable storage. Local.

    A file system that cannot sync this kind of file (some network and
    FUSE file systems for directories) is not an error; a failed sync
    (EIO, ENOSPC) is.
    """
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        if directory:
            return  # cannot open a directory here (not POSIX): nothing to sync
        raise
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _CANNOT_SYNC:
            raise
    finally:
        os.close(fd)


def _publish(tmp: str, final: str) -> None:
    """Make ``tmp`` durable, rename it to ``final``, make the rename durable. Local.

    Without the first fsync a crash can leave ``final`` renamed but empty
    (the rename reaching the disk before the data); without the second the
    rename itself can be lost, and with it the file, after the caller went
    on (say, to delete the checkpoint the file replaces).
    """
    _fsync(tmp)
    os.replace(tmp, final)
    _fsync(os.path.dirname(os.path.abspath(final)), directory=True)


@contextmanager
def atomic_path(final: str | os.PathLike, *, private: bool = False) -> Iterator[str]:
    """Yield a temporary path beside ``final``; publish it as ``final`` on success. Local.

    The caller writes (and closes) the temporary file; then it is flushed to
    disk (``fsync``), renamed to ``final`` and the directory flushed, so
    that once the block ends the file survives a crash of the node.  On any
    error the temporary file is removed, so a reader never sees a
    half-written file under the final name and an older good file
    survives.  Temporary files of earlier writers of ``final`` that were
    killed are swept (see :data:`STALE_TEMPORARY_SECONDS`).

    ``private``: the file has mode 0600 whatever the umask from the moment
    it is created (for files that hold raw data rows); otherwise the
    umask's default, like any file the user creates.
    """
    final = os.fspath(final)
    tmp = _temporary_beside(final, private)
    try:
        yield tmp
        _publish(tmp, final)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


#: Marks text (variable-length UTF-8) columns in the metadata that ranks exchange.
_TEXT = "text"


def _column_layout(name: str, local: Any) -> tuple[int, tuple[int, ...], str]:
    """``(rows, shape after the first axis, dtype or "text")`` of one rank's column. Local."""
    shape = getattr(local, "shape", None)
    dtype = getattr(local, "dtype", None)
    if shape is None or dtype is None or not hasattr(local, "__getitem__"):
        raise TypeError(
            f"dataset {name!r}: expected an array with shape and dtype, got {type(local).__name__}"
        )
    if len(shape) < 1:
        raise ValueError(
            f"dataset {name!r}: expected at least one dimension (rows), got a scalar"
        )
    dtype = np.dtype(dtype)
    if dtype.kind in "OUS":
        kind = _TEXT  # object arrays hold text labels (str), as read_rows gives them
    elif dtype.kind in "biuf":
        kind = dtype.str
    else:
        raise TypeError(
            f"dataset {name!r}: cannot store dtype {dtype} (numbers or text only)"
        )
    return int(shape[0]), tuple(int(k) for k in shape[1:]), kind


def _agree_on_layout(
    everyone: list[dict], names: list[str], total_rows: int | None, path: str
) -> dict:
    """Shapes, dtypes and row offsets of the output from every rank's metadata. Pure.

    Every rank calls it with the same allgathered list, so every rank gets
    the same answer or raises the same error.  Ranks without rows do not
    constrain the shape or dtype (an empty prediction may carry any).
    """
    for rank, mine in enumerate(everyone):
        if sorted(mine) != sorted(names):
            raise ValueError(
                f"writing {path}: rank {rank} passed datasets {sorted(mine)}, rank 0 {sorted(names)}"
            )
    counts = []
    for rank, mine in enumerate(everyone):
        rows = {mine[name][0] for name in names}
        if len(rows) > 1:
            listing = ", ".join(f"{name}: {mine[name][0]}" for name in names)
            raise ValueError(
                f"writing {path}: rank {rank}'s datasets have different numbers of rows ({listing})"
            )
        counts.append(rows.pop() if rows else 0)
    n_rows = sum(counts)
    if total_rows is not None and n_rows != total_rows:
        listing = ", ".join(f"rank {r}: {c}" for r, c in enumerate(counts))
        raise ValueError(
            f"writing {path}: the ranks hold {n_rows} rows in all ({listing}), expected {total_rows}"
        )
    columns = {}
    for name in names:
        holders = [
            mine[name] for mine, count in zip(everyone, counts) if count > 0
        ] or [everyone[0][name]]
        trailing = {h[1] for h in holders}
        if len(trailing) > 1:
            raise ValueError(
                f"writing {path}: dataset {name!r} has different shapes per row on different ranks: "
                f"{sorted(trailing)}"
            )
        kinds = {h[2] for h in holders}
        if _TEXT in kinds and len(kinds) > 1:
            raise TypeError(
                f"writing {path}: dataset {name!r} is text on some ranks and numbers on others"
            )
        kind = (
            _TEXT
            if _TEXT in kinds
            else np.result_type(*[np.dtype(k) for k in kinds]).str
        )
        columns[name] = (trailing.pop(), kind)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return {"n_rows": n_rows, "counts": counts, "offsets": offsets, "columns": columns}


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _create_rows_file(path: str, layout: dict, attrs: Mapping[str, Any] | None) -> str:
    """Create the empty output beside ``path`` under a temporary name; return that name. Local."""
    import h5py

    tmp = _temporary_beside(path)
    try:
        n_rows = layout["n_rows"]
        with h5py.File(tmp, "w") as f:
            for name, (trailing, kind) in layout["columns"].items():
                dtype = h5py.string_dtype() if kind == _TEXT else np.dtype(kind)
                row_bytes = max(1, int(np.prod(trailing, dtype=np.int64))) * (
                    16 if kind == _TEXT else dtype.itemsize
                )
                # About 1 MiB chunks of whole rows: each rank's slice maps onto whole chunks mostly.
                chunk_rows = max(1, min(n_rows, (1 << 20) // row_bytes))
                f.create_dataset(
                    name,
                    shape=(n_rows, *trailing),
                    dtype=dtype,
                    chunks=(chunk_rows, *trailing)
                    if n_rows and all(trailing)
                    else None,
                )
            for key, value in (attrs or {}).items():
                f.attrs[key] = value
    except BaseException:
        os.unlink(tmp)
        raise
    return tmp


def _write_slice(
    tmp: str, datasets: Mapping[str, Any], layout: dict, offset: int, block_bytes: int
) -> None:
    """Write this rank's rows of every dataset at ``offset``, in bounded blocks. Local."""
    import h5py

    with h5py.File(tmp, "r+") as f:
        for name, local in datasets.items():
            trailing, kind = layout["columns"][name]
            ds = f[name]
            n = int(local.shape[0])
            row_bytes = max(1, int(np.prod(trailing, dtype=np.int64))) * (
                16 if kind == _TEXT else ds.dtype.itemsize
            )
            step = max(1, block_bytes // row_bytes)
            for a in range(0, n, step):
                b = min(n, a + step)
                # Slicing block by block lets ``local`` be lazy (an h5py dataset, a memmap).
                block = np.asarray(
                    local[a:b], dtype=object if kind == _TEXT else ds.dtype
                )
                if block.shape != (b - a, *trailing):
                    raise ValueError(
                        f"dataset {name!r}: rows {a}:{b} have shape {block.shape}, "
                        f"expected {(b - a, *trailing)}"
                    )
                if kind == _TEXT:
                    ds[offset + a : offset + b] = block
                else:
                    ds.write_direct(
                        np.ascontiguousarray(block),
                        dest_sel=np.s_[offset + a : offset + b],
                    )
    # Each writer flushes its own rows: on a parallel file system rank 0's
    # fsync before the rename need not reach the data other nodes wrote.
    _fsync(tmp)


def write_rows_in_order(
    path: str | os.PathLike,
    datasets: Mapping[str, Any],
    *,
    comm: Intracomm | None = None,
    total_rows: int | None = None,
    attrs: Mapping[str, Any] | None = None,
    block_bytes: int = 32 << 20,
) -> dict:
    """Write every rank's rows into one HDF5 file, in rank order, all or nothing.

    Each rank holds a contiguous slice of the output's rows (as
    :func:`row_range` or any rank-ordered split gives them, possibly
    empty); the file gets one dataset per entry of ``datasets`` with all
    ranks' rows in rank order.  Without a parallel HDF5 build only one
    process may have the file open for writing at a time, so:

    1. the ranks agree on the layout (row counts, shapes, dtypes) with one
       small ``allgather``;
    2. rank 0 creates the datasets in a temporary file beside ``path``;
    3. the ranks write their own slices in turn, a token passing from rank
       to rank (rows never travel between ranks; memory stays bounded by
       ``block_bytes``; waiting ranks sleep instead of spinning), a failed
       rank telling the later ones to skip their writes;
    4. every rank's success is agreed, and only then does rank 0 rename the
       temporary file to ``path`` (atomic on POSIX file systems).

    On any failure the temporary file is removed, an older file under
    ``path`` stays untouched, and every rank raises the same error.

    Collective over ``comm``.

    Parameters
    ----------
    path : str or path-like
        The HDF5 file to write; replaced if it exists.
    datasets : mapping of str to array-like
        Dataset name -> this rank's rows: a numpy array, or any object with
        ``shape``, ``dtype`` and slicing (read block by block).  Every
        dataset has the same number of rows on a rank.  Numbers are stored
        with the dtype common to the ranks that hold rows; object, str and
        bytes arrays (text labels) as variable-length UTF-8 strings.  The
        same names on every rank.
    comm : mpi4py.MPI.Intracomm, default=None
        ``None`` means ``COMM_WORLD``.
    total_rows : int, default=None
        If given, the ranks' rows must add up to it.
    attrs : mapping, default=None
        Attributes of the file (anything h5py can store), set by rank 0.
    block_bytes : int, default=32 MiB
        Bytes written per block on each rank.

    Returns
    -------
    dict
        ``path`` (absolute), ``n_rows`` (all ranks), ``row_offset`` (this
        rank's first row), ``shapes`` and ``dtypes`` (per dataset; dtype
        ``"text"`` for strings).  The same on every rank except
        ``row_offset``.

    Raises
    ------
    ValueError, TypeError
        If the ranks' arrays do not fit together (raised on every rank
        before anything is written).
    DistributedError
        If creating, writing or renaming failed on any rank (the same on
        every rank, naming those ranks).
    """
    comm = get_comm(comm)
    path = os.fspath(path)
    names = list(datasets)
    if not names:
        raise ValueError("write_rows_in_order needs at least one dataset")
    with library_comm(comm) as lib:
        rank, size = lib.Get_rank(), lib.Get_size()
        mine: dict = {}
        with collective_check(lib, f"writing {path}"):
            mine = {
                name: _column_layout(name, local) for name, local in datasets.items()
            }
        layout = _agree_on_layout(allgather_object(mine, lib), names, total_rows, path)
        offset = int(layout["offsets"][rank])
        tmp: str | None = None
        renamed = False
        try:
            with collective_check(lib, f"creating {path}"):
                if rank == 0:
                    tmp = _create_rows_file(path, layout, attrs)
            tmp = bcast_object(tmp, lib)
            # One writer at a time, in rank order; the token says whether an earlier rank failed.
            earlier_failed = recv_token_quietly(rank - 1, lib) if rank > 0 else 0
            failure: BaseException | None = None
            if not earlier_failed and layout["counts"][rank] > 0:
                try:
                    _write_slice(tmp, datasets, layout, offset, block_bytes)
                except Exception as exc:
                    failure = exc
            if rank < size - 1:
                send_token_quietly(
                    1 if earlier_failed or failure is not None else 0, rank + 1, lib
                )
            agree(failure, lib, f"writing {path}")
            with collective_check(lib, f"renaming the output to {path}"):
                if rank == 0:
                    _publish(tmp, path)
                    renamed = True
        finally:
            if rank == 0 and tmp is not None and not renamed and os.path.exists(tmp):
                os.unlink(tmp)
    return {
        "path": os.path.abspath(path),
        "n_rows": layout["n_rows"],
        "row_offset": offset,
        "shapes": {
            name: (layout["n_rows"], *trailing)
            for name, (trailing, _) in layout["columns"].items()
        },
        "dtypes": {
            name: kind if kind == _TEXT else str(np.dtype(kind))
            for name, (_, kind) in layout["columns"].items()
        },
    }


def _jsonable(value: Any) -> Any:
    """``value`` as plain JSON types; non-finite numbers become ``None``. Pure.

    Strict JSON has no NaN or Infinity: a ROC AUC undefined on one class,
    the statistics of an all-missing column and the like are written as
    ``null``, also inside numpy arrays and numpy scalars.
    """
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, bool) or value is None or isinstance(value, (str, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return repr(value)


def write_json(path: str | os.PathLike, payload: dict) -> None:
    """Write ``payload`` as strict JSON, atomically and durably. Local.

    Non-finite numbers anywhere in ``payload`` are written as ``null``
    (strict parsers reject ``NaN`` and ``Infinity``); anything else that is
    not JSON is written as its ``repr``.  Never a half-written file.
    """
    content = json.dumps(_jsonable(payload), indent=2, allow_nan=False) + "\n"
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            f.write(content)


def read_json_object(path: str | os.PathLike, key: str) -> dict:
    """A JSON object that holds ``key``, read from ``path``. Local.

    Raises ValueError saying "not JSON" (with the parser's reason) or "no
    ``key``" for anything else, so that a caller can name what the file
    should have been.
    """
    with open(path, "rb") as f:
        try:
            found = json.loads(f.read())
        except ValueError as exc:  # also bytes that are not text
            raise ValueError(f"it is not JSON: {exc}") from None
    if not isinstance(found, dict) or key not in found:
        raise ValueError(f"no {key}")
    return found
