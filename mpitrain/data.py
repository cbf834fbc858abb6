"""Row partitioning, reading a rank's rows from HDF5, and writing files safely.

A data set is one HDF5 file or several (a list or a glob pattern) whose
rows are concatenated into one row space.  Each rank opens read-only only
the files that hold its own contiguous range of rows and reads them in
chunk-aligned blocks on a background thread: either into arrays of its
whole slice (models that need their rows in memory) or through a small ring
of reused blocks (models that stream their rows, memory bounded).  No
parallel HDF5 build is needed.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import groupby
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from .comm import (
    agree,
    allgather_object,
    bcast_object,
    collective_check,
    get_comm,
    library_comm,
    node_layout,
    recv_token_quietly,
    send_token_quietly,
)
from .errors import MpitrainError

if TYPE_CHECKING:  # pragma: no cover
    from mpi4py.MPI import Intracomm

__all__ = [
    "row_range",
    "row_counts",
    "RowSlice",
    "RowReader",
    "RowBlock",
    "SourceFile",
    "ReadBlock",
    "BLOCK_BYTES",
    "RING_BLOCKS",
    "expand_paths",
    "plan_blocks",
    "open_rows",
    "read_rows",
    "rows_memory_bytes",
    "smallest_rank_count",
    "check_rows_fit",
    "atomic_path",
    "write_rows_in_order",
    "make_data",
    "MAKE_DATA_BLOCK_ROWS",
]

#: Rows generated per random block by :func:`make_data`.  Block ``b`` always
#: uses the random stream ``(seed, b)``, so the file depends only on the seed.
MAKE_DATA_BLOCK_ROWS = 65536


def row_range(n_rows: int, size: int, rank: int) -> tuple[int, int]:
    """The contiguous rows ``[start, stop)`` that ``rank`` of ``size`` owns.

    Balanced: counts differ by at most one, the lowest ranks taking the
    leftover rows.  Ranks beyond ``n_rows`` get an empty range.  Pure.
    """
    if size < 1 or not 0 <= rank < size:
        raise ValueError(f"rank {rank} is not in a communicator of size {size}")
    if n_rows < 0:
        raise ValueError(f"n_rows must be non-negative, got {n_rows}")
    base, extra = divmod(n_rows, size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def row_counts(n_rows: int, size: int) -> np.ndarray:
    """Rows per rank for every rank, as :func:`row_range` assigns them. Pure."""
    base, extra = divmod(n_rows, size)
    return np.array([base + (1 if r < extra else 0) for r in range(size)], dtype=np.int64)


@dataclass
class RowSlice:
    """One rank's rows of an HDF5 data set (one file or several).

    Attributes
    ----------
    X : ndarray of shape (stop - start, n_features)
        Features; float32 if stored as float32 in every file, float64 otherwise.
    y : ndarray of shape (stop - start,) or None
        Target: float64 for floating-point targets, integer labels as stored.
    sample_weight : ndarray of shape (stop - start,) or None
    start, stop : int
        The global row range of this rank.
    n_rows : int
        Rows in the whole data set (all files).
    path : str
        The file, or a short description of the files, for messages.
    paths : tuple of str
        Every file of the data set, in row order.
    """

    X: np.ndarray
    y: np.ndarray | None
    sample_weight: np.ndarray | None
    start: int
    stop: int
    n_rows: int
    path: str
    paths: tuple[str, ...] = ()

    @property
    def n_features(self) -> int:
        return self.X.shape[1]

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.X, self.y, self.sample_weight) if a is not None)


def _numeric(dtype: np.dtype) -> bool:
    return dtype.kind in "biuf"


def _dataset(f, name: str, path: str):
    import h5py

    if name not in f:
        found = []
        f.visititems(lambda n, obj: found.append(n) if isinstance(obj, h5py.Dataset) else None)
        raise MpitrainError(f"{path} has no dataset {name!r}; it has: {', '.join(found) or 'none'}")
    obj = f[name]
    if not isinstance(obj, h5py.Dataset):
        raise MpitrainError(f"{path}: {name!r} is a group, not a dataset")
    return obj


def _is_text(dtype: np.dtype) -> bool:
    import h5py

    return dtype.kind in "SU" or h5py.check_string_dtype(dtype) is not None


def _check_column(ds, role: str, n_rows: int, path: str, labels: bool = False) -> None:
    if ds.ndim != 1:
        raise MpitrainError(f"{path}: {role} dataset {ds.name!r} must be 1-D, it has shape {ds.shape}")
    if ds.shape[0] != n_rows:
        raise MpitrainError(
            f"{path}: {role} dataset {ds.name!r} has {ds.shape[0]} rows but the features have {n_rows}"
        )
    if not (_numeric(ds.dtype) or (labels and _is_text(ds.dtype))):
        kind = "numeric or text labels" if labels else "numeric"
        raise MpitrainError(f"{path}: {role} dataset {ds.name!r} has dtype {ds.dtype}; it must be {kind}")


def _open(path: str):
    import h5py

    if not os.path.exists(path):
        raise MpitrainError(f"no such file: {path}")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise MpitrainError(f"cannot open {path} as HDF5: {exc}") from None


#: Feature bytes per block read, before rounding to the dataset's chunks.
BLOCK_BYTES = 32 << 20

#: Blocks held by a streamed read: one being computed on, one being read, and
#: one spare so that reading runs ahead of a consumer whose pace varies.
RING_BLOCKS = 3

# Column chunk caches (target, weights) hold this many chunks: a block that
# ends inside a compressed chunk leaves it cached for the next block, so every
# chunk is decompressed once per rank rather than once per block touching it.
_COLUMN_CACHE_CHUNKS = 2

# The arrays of a block, in the order the reader keeps them.
_ROLES = ("X", "y", "sample_weight")


@dataclass(frozen=True)
class SourceFile:
    """One file of a data set and where its rows sit in the global row space.

    Attributes
    ----------
    path : str
    first_row : int
        Global number of the file's first row (files are concatenated in order).
    n_rows : int
    chunk_rows : int or None
        Rows per chunk of the feature dataset; ``None`` if it is contiguous.
    compressed : bool
        Whether the feature dataset has filters (gzip, lzf, ...).
    """

    path: str
    first_row: int
    n_rows: int
    chunk_rows: int | None = None
    compressed: bool = False


@dataclass(frozen=True)
class ReadBlock:
    """One read of the plan: rows ``[file_start, file_stop)`` of ``sources[source]``.

    ``offset`` is the block's first row counted from the rank's first row.
    """

    source: int
    file_start: int
    file_stop: int
    offset: int

    @property
    def n_rows(self) -> int:
        return self.file_stop - self.file_start


@dataclass
class RowBlock:
    """A block of a rank's rows, as :meth:`RowReader.stream` yields it.

    In a streamed read the arrays are views into a reused buffer: they are
    valid until the next block is asked for; copy what must outlive that.

    Attributes
    ----------
    X : ndarray of shape (n_rows, n_features)
    y, sample_weight : ndarray of shape (n_rows,) or None
    start : int
        Global number of the first row.
    offset : int
        Number of the first row counted from the rank's first row.
    path : str
        The file the rows come from.
    """

    X: np.ndarray
    y: np.ndarray | None
    sample_weight: np.ndarray | None
    start: int
    offset: int
    path: str

    @property
    def n_rows(self) -> int:
        return self.X.shape[0]

    @property
    def stop(self) -> int:
        return self.start + self.n_rows


def expand_paths(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """The files that a path, a glob pattern or a list of them name, in order. Local.

    A pattern (``*``, ``?`` or ``[``) expands to its matches, sorted, so
    every caller sees the same order; plain paths are kept as given (a
    missing one is reported when opened).  A list keeps its order, each
    pattern expanded in place.

    Raises
    ------
    MpitrainError
        If a pattern matches no file, the list is empty, or a file is named
        twice (its rows would count twice).
    """
    import glob

    given = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not given:
        raise MpitrainError("no data files given")
    files: list[str] = []
    for item in given:
        item = os.fspath(item)
        if glob.has_magic(item):
            matches = sorted(glob.glob(item))
            if not matches:
                raise MpitrainError(f"no file matches the pattern {item!r}")
            files.extend(matches)
        else:
            files.append(item)
    seen: dict[str, str] = {}
    for name in files:
        key = os.path.realpath(name)
        if key in seen:
            raise MpitrainError(f"{name} is named twice among the data files (also as {seen[key]}); "
                                "its rows would be counted twice")
        seen[key] = name
    return files


def _block_layout(chunk_rows: int | None, row_bytes: int, block_bytes: int) -> tuple[int, int]:
    """``(block_rows, period)``: blocks end where ``(row % period) % block_rows == 0``. Pure.

    Chunks smaller than a block: blocks are whole numbers of chunks
    (``period == block_rows``).  Chunks larger than a block: each chunk is
    cut into equal blocks that never straddle two chunks (``period`` is the
    chunk), so a compressed chunk is needed by consecutive blocks only.
    """
    target = max(1, block_bytes // max(row_bytes, 1))
    if not chunk_rows:
        return target, target
    if chunk_rows <= target:
        block = target // chunk_rows * chunk_rows
        return block, block
    pieces = -(-chunk_rows // target)
    return -(-chunk_rows // pieces), chunk_rows


def plan_blocks(sources: Sequence[SourceFile], start: int, stop: int, row_bytes: int,
                block_bytes: int = BLOCK_BYTES) -> list[ReadBlock]:
    """The reads that cover global rows ``[start, stop)``, in order. Pure.

    Blocks never cross a file boundary, and end on the boundaries of
    :func:`_block_layout` counted in the file's own rows, so they align with
    the file's chunks whatever the rank's range.
    """
    plan: list[ReadBlock] = []
    for index, source in enumerate(sources):
        a = max(start, source.first_row) - source.first_row
        b = min(stop, source.first_row + source.n_rows) - source.first_row
        if a >= b:
            continue
        block, period = _block_layout(source.chunk_rows, row_bytes, block_bytes)
        p = a
        while p < b:
            r = p % period
            q = min(b, p - r + min(period, (r // block + 1) * block))
            plan.append(ReadBlock(index, p, q, source.first_row + p - start))
            p = q
    return plan


def _describe_paths(paths: Sequence[str]) -> str:
    """A short name of one or several files, for messages."""
    if len(paths) == 1:
        return paths[0]
    return f"{paths[0]} ... {paths[-1]} ({len(paths)} files)"


def _describe_given(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> str:
    """What the caller asked for (before expanding patterns), for messages."""
    if isinstance(paths, (str, os.PathLike)):
        return os.fspath(paths)
    names = [os.fspath(p) for p in paths]
    return ", ".join(names) if len(names) <= 3 else f"{names[0]} ... {names[-1]} ({len(names)} names)"


class RowReader:
    """Reads one rank's rows of an HDF5 data set on a background thread.

    Made by :func:`open_rows` once the files' metadata has been agreed.
    The rows are read in blocks of whole dataset chunks (about 32 MB of
    features each), file after file, on a thread, so computing on block k
    overlaps reading block k+1 (HDF5 reads release the GIL).  Nothing here
    communicates.  Two ways to use it, chosen by :meth:`begin`:

    * ``begin()`` (rows in memory): the rank's whole slice is allocated and
      filled in place; :meth:`blocks` yields local row ranges as they are
      read, :meth:`result` waits for all of them.
    * ``begin(keep_rows=False)`` (streamed): only a ring of
      :data:`RING_BLOCKS` block buffers exists; :meth:`stream` yields each
      block, whose buffer is reused once the consumer asks for the next.
      Memory stays bounded however many rows the rank has.

    :meth:`stream` works in both modes.

    Attributes
    ----------
    X, y, sample_weight : ndarray or None
        This rank's rows once ``begin()`` kept them in memory (filled in as
        reading proceeds); ``None`` before that and in a streamed read.
    x_dtype, y_dtype : numpy.dtype or None
        The dtypes of the rows as given out (``y_dtype`` is ``None`` without
        a target).
    start, stop, n_rows, n_features
        The rank's global row range and the data set's size.
    path : str
        The file, or a short description of the files.
    paths : list of str
        Every file, in row order.
    sources : list of SourceFile
    block_rows : int
        Rows of a full block.
    read_seconds : float
        Time the reading thread spent reading.
    """

    def __init__(self, sources: Sequence[SourceFile], names: dict, start: int, stop: int, n_features: int,
                 x_dtype: Any, y_dtype: Any, *, block_bytes: int = BLOCK_BYTES, ring_blocks: int = RING_BLOCKS):
        if ring_blocks < 2:
            raise ValueError(f"ring_blocks must be at least 2 (one computed on, one being read), got {ring_blocks}")
        self.sources = list(sources)
        self.paths = [s.path for s in self.sources]
        self.path = _describe_paths(self.paths)
        self.names = names
        self.start, self.stop = start, stop
        self.n_rows = sum(s.n_rows for s in self.sources)
        self.n_features = n_features
        self.x_dtype = np.dtype(x_dtype)
        self.y_dtype = np.dtype(y_dtype) if names["y"] is not None else None
        row_bytes = self.x_dtype.itemsize * max(n_features, 1)
        self._plan = plan_blocks(self.sources, start, stop, row_bytes, block_bytes)
        mine = {b.source for b in self._plan} or {0}
        self.block_rows = max(_block_layout(self.sources[i].chunk_rows, row_bytes, block_bytes)[0]
                              for i in mine) if self.sources else 0
        self._block_bytes = block_bytes
        self._ring_blocks = ring_blocks
        self.X: np.ndarray | None = None
        self.y: np.ndarray | None = None
        self.sample_weight: np.ndarray | None = None
        self.keep_rows: bool | None = None
        self.read_seconds = 0.0
        self._done = 0  # rows of the slice read so far (rows in memory)
        self._ring: list[tuple[np.ndarray, np.ndarray | None, np.ndarray | None]] = []
        self._free: list[int] = []  # ring slots the reader may fill
        self._ready: deque[tuple[ReadBlock, int]] = deque()  # read, not yet given out
        self._streaming = False
        self._error: BaseException | None = None
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._cancelled = False

    @property
    def nbytes(self) -> int:
        """Bytes of this rank's rows as :meth:`result` holds them (whether or not they are held)."""
        n = self.stop - self.start
        row = self.x_dtype.itemsize * self.n_features
        row += self.y_dtype.itemsize if self.y_dtype is not None else 0
        row += 8 if self.names["sample_weight"] is not None else 0
        return n * row

    @property
    def buffer_bytes(self) -> int:
        """Bytes of row buffers allocated so far: the slice, or the ring of a streamed read."""
        arrays = [self.X, self.y, self.sample_weight] + [a for slot in self._ring for a in slot]
        return sum(a.nbytes for a in arrays if a is not None)

    def _allocate(self, n: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        return (np.empty((n, self.n_features), dtype=self.x_dtype),
                np.empty(n, dtype=self.y_dtype) if self.y_dtype is not None else None,
                np.empty(n) if self.names["sample_weight"] is not None else None)

    def begin(self, keep_rows: bool = True) -> "RowReader":
        """Start the reading thread (once); returns ``self``.

        Parameters
        ----------
        keep_rows : bool, default=True
            Keep the rank's whole slice in memory (for :meth:`result` and
            :meth:`blocks`), or stream it through a bounded ring of blocks
            (for :meth:`stream` only).
        """
        if self._thread is not None:
            if keep_rows != self.keep_rows:
                raise RuntimeError(f"{self.path}: reading already began with keep_rows={self.keep_rows}")
            return self
        self.keep_rows = keep_rows
        if keep_rows:
            self.X, self.y, self.sample_weight = self._allocate(self.stop - self.start)
        else:
            slot_rows = max((b.n_rows for b in self._plan), default=0)
            self._ring = [self._allocate(slot_rows) for _ in range(min(self._ring_blocks, len(self._plan)))]
            self._free = list(range(len(self._ring)))
        self._thread = threading.Thread(target=self._read_all, name="mpitrain-reader", daemon=True)
        self._thread.start()
        return self

    def _columns(self, f, source: SourceFile) -> list[tuple[str, Any]]:
        """The datasets to read from an open file, with chunk caches that suit the plan."""
        import h5py

        block_rows = _block_layout(source.chunk_rows, self.x_dtype.itemsize * max(self.n_features, 1),
                                   self._block_bytes)[0]
        columns = []
        for role, key in zip(_ROLES, ("x", "y", "sample_weight")):
            name = self.names[key]
            if name is None:
                continue
            ds = f[name]
            chunks = ds.chunks
            if chunks is None:
                columns.append((role, ds))
                continue
            filtered = ds.id.get_create_plist().get_nfilters() > 0
            # Chunks that a block reads whole, or reads in part once, need no
            # cache: without one HDF5 reads them straight into our arrays, where
            # a cache that can hold them costs a copy (about half the speed of
            # a warm read).  A compressed chunk that several blocks share must
            # stay cached, or each block decompresses it again: the features'
            # chunks when larger than a block, the target's and weights' chunks
            # (blocks follow the features' chunks, not theirs).
            if not filtered:
                cached = 0
            elif role == "X":
                cached = 1 if chunks[0] > block_rows else 0
            else:
                cached = _COLUMN_CACHE_CHUNKS
            chunk_bytes = int(np.prod(chunks)) * ds.dtype.itemsize
            slots, default_bytes, _ = ds.id.get_access_plist().get_chunk_cache()
            path = ds.name.encode()
            # HDF5 ignores the access properties of a dataset that is already
            # open: close it before opening it again with its own cache.
            del ds
            dapl = h5py.h5p.create(h5py.h5p.DATASET_ACCESS)
            dapl.set_chunk_cache(slots, max(default_bytes, cached * chunk_bytes + (64 << 10)) if cached else 0, 1.0)
            ds = h5py.Dataset(h5py.h5d.open(f.id, path, dapl))
            columns.append((role, ds))
        return columns

    def _claim(self, block: ReadBlock) -> tuple[tuple, int, int | None] | None:
        """Where to read ``block``: ``(arrays, first row, ring slot)``; ``None`` if cancelled."""
        if self.keep_rows:
            return (self.X, self.y, self.sample_weight), block.offset, None
        with self._cond:
            while not self._free and not self._cancelled:
                self._cond.wait()
            if self._cancelled:
                return None
            slot = self._free.pop()
        return self._ring[slot], 0, slot

    def _read_all(self) -> None:
        import time

        try:
            for index, blocks in groupby(self._plan, key=lambda block: block.source):
                source = self.sources[index]
                with _open(source.path) as f:
                    columns = self._columns(f, source)
                    for block in blocks:
                        claimed = None if self._cancelled else self._claim(block)
                        if claimed is None:
                            return
                        arrays, a, slot = claimed
                        b = a + block.n_rows
                        tic = time.perf_counter()
                        for role, ds in columns:
                            out = arrays[_ROLES.index(role)]
                            if out.dtype == object:  # text labels cannot be read in place
                                out[a:b] = ds.asstr()[block.file_start : block.file_stop]
                            else:
                                # Into a view of the block's rows (contiguous), so HDF5's memory
                                # space is the block's own, whatever the size of the slice.
                                ds.read_direct(out[a:b], np.s_[block.file_start : block.file_stop])
                        self.read_seconds += time.perf_counter() - tic
                        w = arrays[2]
                        if w is not None:
                            ok = np.isfinite(w[a:b]) & (w[a:b] >= 0)
                            if not ok.all():
                                bad = source.first_row + block.file_start + int(np.argmin(ok))
                                raise MpitrainError(
                                    f"{source.path}: sample weights {self.names['sample_weight']!r} must be "
                                    f"finite and non-negative; row {bad} is not")
                        with self._cond:
                            if slot is None:
                                self._done = block.offset + block.n_rows
                            else:
                                self._ready.append((block, slot))
                            self._cond.notify_all()
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            with self._cond:
                self._error = exc
                self._cond.notify_all()

    def _in_memory(self, what: str) -> None:
        self.begin()
        if not self.keep_rows:
            raise RuntimeError(f"{what} needs the rows in memory, but {self.path} is being streamed "
                               "(begin(keep_rows=False)); use stream()")

    def blocks(self) -> Iterator[tuple[int, int]]:
        """Yield local row ranges ``(a, b)`` of :attr:`X` as they finish reading.

        Rows in memory only (begins that way if not begun).  Raises the
        reading thread's error, if it had one.
        """
        self._in_memory("blocks()")
        given, n = 0, self.stop - self.start
        while True:
            with self._cond:
                while self._done == given and self._error is None and given < n:
                    self._cond.wait()
                done, error = self._done, self._error
            if done > given:
                yield given, done
                given = done
            elif error is not None:
                raise error
            elif given >= n:
                break
        self._thread.join()
        if self._error is not None:
            raise self._error

    def stream(self) -> Iterator[RowBlock]:
        """Yield the rank's rows block by block, in order, as they are read.

        Begins a streamed read if reading has not begun.  In a streamed read
        each block's arrays are reused once the next block is asked for, and
        the rows can be streamed once; with the rows in memory the blocks
        are views of :attr:`X`.  Raises the reading thread's error, if any.
        """
        if self._thread is None:
            self.begin(keep_rows=False)
        if self.keep_rows:
            yield from self._stream_kept()
            return
        if self._streaming:
            raise RuntimeError(f"{self.path} is streamed once only; begin() with keep_rows=True to go over "
                               "the rows again")
        self._streaming = True
        for _ in range(len(self._plan)):
            with self._cond:
                while not self._ready and self._error is None:
                    self._cond.wait()
                if not self._ready:
                    raise self._error
                block, slot = self._ready.popleft()
            try:
                X, y, w = self._ring[slot]
                n = block.n_rows
                yield RowBlock(X[:n], None if y is None else y[:n], None if w is None else w[:n],
                               self.start + block.offset, block.offset, self.sources[block.source].path)
            finally:
                with self._cond:
                    self._free.append(slot)
                    self._cond.notify_all()
        self._thread.join()
        if self._error is not None:
            raise self._error

    def _stream_kept(self) -> Iterator[RowBlock]:
        for block in self._plan:
            end = block.offset + block.n_rows
            with self._cond:
                while self._done < end and self._error is None:
                    self._cond.wait()
                if self._done < end:
                    raise self._error
            a = block.offset
            yield RowBlock(self.X[a:end], None if self.y is None else self.y[a:end],
                           None if self.sample_weight is None else self.sample_weight[a:end],
                           self.start + a, a, self.sources[block.source].path)
        self._thread.join()
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        """Stop reading after the current block and wait for the thread.

        Call it when giving up early (an error elsewhere): a thread left
        inside HDF5 while the interpreter shuts down can hang the exit.
        """
        with self._cond:
            self._cancelled = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()

    def result(self) -> RowSlice:
        """Wait for all rows and return them as a :class:`RowSlice` (rows in memory only)."""
        for _ in self.blocks():
            pass
        return RowSlice(self.X, self.y, self.sample_weight, self.start, self.stop, self.n_rows, self.path,
                        tuple(self.paths))


def _describe_sources(paths: str | os.PathLike | Sequence[str | os.PathLike], names: dict,
                      labels: bool) -> dict:
    """Expand the file names and check every file's metadata. Local (rank 0 runs it).

    Returns the :class:`SourceFile` list and the dtypes every file agrees
    on; raises :class:`MpitrainError` naming the file otherwise.
    """
    x, y, sample_weight = names["x"], names["y"], names["sample_weight"]
    files = expand_paths(paths)
    sources: list[SourceFile] = []
    x_dtypes: list[np.dtype] = []
    targets: list[tuple[str, np.dtype | None]] = []  # (file, stored dtype; None for text)
    n_features = first = None
    for path in files:
        with _open(path) as f:
            X_ds = _dataset(f, x, path)
            if X_ds.ndim != 2:
                raise MpitrainError(f"{path}: feature dataset {x!r} must be 2-D, it has shape {X_ds.shape}")
            if not _numeric(X_ds.dtype):
                raise MpitrainError(f"{path}: feature dataset {x!r} has non-numeric dtype {X_ds.dtype}")
            if n_features is None:
                n_features, first = X_ds.shape[1], path
            elif X_ds.shape[1] != n_features:
                raise MpitrainError(f"{path}: feature dataset {x!r} has {X_ds.shape[1]} columns but {first} has "
                                    f"{n_features}; every file must have the same columns")
            n_rows = X_ds.shape[0]
            for role, name in (("target", y), ("sample-weight", sample_weight)):
                if name is not None:
                    column = _dataset(f, name, path)
                    _check_column(column, role, n_rows, path, labels=labels and role == "target")
                    if role == "target":
                        targets.append((path, None if _is_text(column.dtype) else column.dtype))
            chunks = X_ds.chunks
            sources.append(SourceFile(path, sum(s.n_rows for s in sources), n_rows,
                                      chunks[0] if chunks else None,
                                      bool(chunks) and X_ds.id.get_create_plist().get_nfilters() > 0))
            x_dtypes.append(X_ds.dtype)
    # float32 stays float32 (half the memory) when every file has it; anything else becomes float64.
    x_dtype = np.float32 if all(dt == np.float32 for dt in x_dtypes) else np.float64
    y_dtype = None
    if targets:
        text = [p for p, dt in targets if dt is None]
        if text and len(text) < len(targets):
            numeric = next(p for p, dt in targets if dt is not None)
            raise MpitrainError(f"{text[0]}: target dataset {y!r} holds text but in {numeric} it holds numbers; "
                                "every file must have the same kind of target")
        stored = [dt for _, dt in targets if dt is not None]
        if text:
            y_dtype = object  # text labels become str
        elif any(dt.kind == "f" for dt in stored):
            y_dtype = np.float64  # float targets as float64
        else:
            # Integer labels keep their type (promoted across files; int64 with uint64 has no integer type).
            common = np.result_type(*stored)
            y_dtype = common if common.kind in "biu" else np.float64
    return {"sources": sources, "n_features": n_features, "x_dtype": x_dtype, "y_dtype": y_dtype}


def open_rows(
    path: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    x: str = "X",
    y: str | None = "y",
    sample_weight: str | None = None,
    comm: "Intracomm | None" = None,
    block_bytes: int = BLOCK_BYTES,
    labels: bool = False,
    ring_blocks: int = RING_BLOCKS,
) -> RowReader:
    """Check an HDF5 data set of one or more files and prepare to read this rank's rows.

    Collective over ``comm`` (one broadcast, one agreement): rank 0 expands
    the patterns and checks every file's metadata, and broadcasts the list
    of files and their row counts, so ranks cannot disagree about the files
    (on different nodes, say); a missing file or dataset, a wrong shape, a
    non-numeric dtype or files that do not fit together are raised
    identically on every rank, naming the file.  Reading starts with
    :meth:`RowReader.begin`; each rank opens only the files that hold its
    rows, read-only.

    Several files form one row space: their rows are concatenated in the
    order given (patterns expanded in sorted order), and :func:`row_range`
    splits the total, so a rank's rows may span several files.  Every file
    must have the same number of feature columns and the same kind of
    target.  Dtypes combine as follows: features are float32 if every file
    stores float32, float64 otherwise; a float target in any file makes the
    target float64; integer labels take the common integer type; text
    labels (``labels=True``) must be text in every file.

    Parameters
    ----------
    path : str, path-like, or sequence of them
        An HDF5 file, a glob pattern (``"days/*.h5"``), or a list of files
        and patterns.
    x : str, default="X"
        Name of the 2-D feature dataset.
    y : str or None, default="y"
        Name of the 1-D numeric target dataset; ``None`` to read none.
    sample_weight : str or None, default=None
        Name of a 1-D dataset of non-negative row weights.
    comm : mpi4py.MPI.Intracomm, default=None
        ``None`` means ``COMM_WORLD``.
    block_bytes : int, default=32 MiB
        Feature bytes per block read, rounded to whole chunks of the dataset
        (or to equal parts of a chunk larger than that).
    labels : bool, default=False
        The target holds class labels: text datasets are then allowed (read
        as Python ``str``), as well as numeric ones.
    ring_blocks : int, default=3
        Blocks held at once by a streamed read (``begin(keep_rows=False)``).

    Returns
    -------
    RowReader
    """
    comm = get_comm(comm)
    names = {"x": x, "y": y, "sample_weight": sample_weight}
    described: dict | None = None
    with collective_check(comm, f"reading {_describe_given(path)}"):
        outcome: dict | str | None = None
        if comm.Get_rank() == 0:
            try:
                outcome = _describe_sources(path, names, labels)
            except Exception as exc:  # noqa: BLE001 - broadcast, then raised on every rank
                outcome = str(exc) if isinstance(exc, MpitrainError) else f"{type(exc).__name__}: {exc}"
        # Every rank reaches the broadcast: rank 0 sends the metadata or the error's text.
        outcome = bcast_object(outcome, comm)
        if isinstance(outcome, str):
            raise MpitrainError(outcome)
        described = outcome
    assert described is not None
    start, stop = row_range(sum(s.n_rows for s in described["sources"]), comm.Get_size(), comm.Get_rank())
    return RowReader(described["sources"], names, start, stop, described["n_features"], described["x_dtype"],
                     described["y_dtype"], block_bytes=block_bytes, ring_blocks=ring_blocks)


def read_rows(
    path: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    x: str = "X",
    y: str | None = "y",
    sample_weight: str | None = None,
    comm: "Intracomm | None" = None,
    labels: bool = False,
) -> RowSlice:
    """Read this rank's rows of the feature, target and weight datasets.

    Collective over ``comm`` (the checks of :func:`open_rows`, then one
    agreement on the read, whose failure on any rank (an I/O error,
    negative weights) is raised on all of them).  ``path`` may name several
    files or patterns, read as one row space.  Parameters as for
    :func:`open_rows`.

    Returns
    -------
    RowSlice
    """
    comm = get_comm(comm)
    reader = open_rows(path, x=x, y=y, sample_weight=sample_weight, comm=comm, labels=labels)
    rows: RowSlice | None = None
    try:
        with collective_check(comm, f"reading {reader.path}"):
            rows = reader.result()
    finally:
        reader.close()
    assert rows is not None
    return rows


def rows_memory_bytes(n_rows: int, n_features: int, *, weights: bool = False, copies: float = 1.0,
                      fixed_bytes: int = 0) -> int:
    """Bytes that ``n_rows`` rows take in memory for a model that holds them. Pure.

    Each row counts as float64 features, a float64 target and, with
    ``weights``, a float64 weight, held ``copies`` times (the rows as read
    plus the model's own copies), plus ``fixed_bytes`` however many rows
    there are (a kernel cache, say).
    """
    return int(np.ceil(n_rows * 8 * (n_features + 1 + int(weights)) * copies)) + int(fixed_bytes)


def smallest_rank_count(n_rows: int, row_bytes: float, fixed_bytes: float, limit_bytes: float) -> int | None:
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


def check_rows_fit(reader: "RowReader", comm: "Intracomm", *, copies: float, fixed_bytes: int = 0,
                   what: str = "the model") -> tuple[int, int | None]:
    """Refuse, before reading, rows that would not fit in memory, on every rank alike.

    Collective over ``comm``.  The need is :func:`rows_memory_bytes` of the
    largest share of the rows (``ceil(n_rows / ranks)``), the same on every
    rank; the limit is ``$MPITRAIN_MEMORY_LIMIT`` bytes per rank if set,
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
    from .report import format_bytes
    from .sufficient import MEMORY_LIMIT_VARIABLE, _available_memory

    size = comm.Get_size()
    share = -(-reader.n_rows // size)
    weights = reader.names["sample_weight"] is not None
    need = rows_memory_bytes(share, reader.n_features, weights=weights, copies=copies, fixed_bytes=fixed_bytes)
    ranks_on_node = node_layout(comm)["local_size"] if need > _SMALL_ROWS_BYTES else 1
    limit = None
    with collective_check(comm, "checking memory for the rows"):
        from_env = bool(os.environ.get(MEMORY_LIMIT_VARIABLE, "").strip())
        limit = _available_memory(ranks_on_node)
        if limit is not None and need > limit:
            row_bytes = rows_memory_bytes(1, reader.n_features, weights=weights, copies=copies)
            fewest = smallest_rank_count(reader.n_rows, row_bytes, fixed_bytes, limit)
            source = (MEMORY_LIMIT_VARIABLE if from_env else
                      f"MemAvailable shared by {ranks_on_node} rank(s) on this node")
            extra = f" + {format_bytes(fixed_bytes)} fixed" if fixed_bytes else ""
            advice = (f"at least {fewest} ranks with {format_bytes(limit)} each would fit" if fewest is not None
                      else "no number of ranks fits: the fixed part alone exceeds the limit")
            raise MemoryError(
                f"{what} needs about {format_bytes(need)} per rank to hold its rows "
                f"({share:,} rows x {reader.n_features} features, {copies:g} float64 copies{extra}) but a rank "
                f"may use {format_bytes(limit)} ({source}); {advice}")
    # Below _SMALL_ROWS_BYTES the limit was not shared among the node's ranks: not worth saying.
    return need, (limit if need > _SMALL_ROWS_BYTES else None)


def _temporary_beside(final: str) -> str:
    """An empty temporary file in ``final``'s directory, with the umask's permissions. Local.

    mkstemp makes the file private (0600); the result should get the usual
    permissions, like any file the user creates.
    """
    directory = os.path.dirname(os.path.abspath(final))
    if not os.path.isdir(directory):
        raise MpitrainError(f"cannot write {final}: directory {directory} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(final)}.", suffix=".tmp", dir=directory)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_current_umask())
    return tmp


@contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path beside ``final``; rename it to ``final`` on success.

    On any error the temporary file is removed, so a reader never sees a
    half-written file under the final name and an older good file survives.
    """
    final = os.fspath(final)
    tmp = _temporary_beside(final)
    try:
        yield tmp
        os.replace(tmp, final)
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
        raise TypeError(f"dataset {name!r}: expected an array with shape and dtype, got {type(local).__name__}")
    if len(shape) < 1:
        raise ValueError(f"dataset {name!r}: expected at least one dimension (rows), got a scalar")
    dtype = np.dtype(dtype)
    if dtype.kind in "OUS":
        kind = _TEXT  # object arrays hold text labels (str), as read_rows gives them
    elif dtype.kind in "biuf":
        kind = dtype.str
    else:
        raise TypeError(f"dataset {name!r}: cannot store dtype {dtype} (numbers or text only)")
    return int(shape[0]), tuple(int(k) for k in shape[1:]), kind


def _agree_on_layout(everyone: list[dict], names: list[str], total_rows: int | None, path: str) -> dict:
    """Shapes, dtypes and row offsets of the output from every rank's metadata. Pure.

    Every rank calls it with the same allgathered list, so every rank gets
    the same answer or raises the same error.  Ranks without rows do not
    constrain the shape or dtype (an empty prediction may carry any).
    """
    for rank, mine in enumerate(everyone):
        if sorted(mine) != sorted(names):
            raise ValueError(f"writing {path}: rank {rank} passed datasets {sorted(mine)}, rank 0 {sorted(names)}")
    counts = []
    for rank, mine in enumerate(everyone):
        rows = {mine[name][0] for name in names}
        if len(rows) > 1:
            listing = ", ".join(f"{name}: {mine[name][0]}" for name in names)
            raise ValueError(f"writing {path}: rank {rank}'s datasets have different numbers of rows ({listing})")
        counts.append(rows.pop() if rows else 0)
    n_rows = sum(counts)
    if total_rows is not None and n_rows != total_rows:
        listing = ", ".join(f"rank {r}: {c}" for r, c in enumerate(counts))
        raise ValueError(f"writing {path}: the ranks hold {n_rows} rows in all ({listing}), expected {total_rows}")
    columns = {}
    for name in names:
        holders = [mine[name] for mine, count in zip(everyone, counts) if count > 0] or [everyone[0][name]]
        trailing = {h[1] for h in holders}
        if len(trailing) > 1:
            raise ValueError(f"writing {path}: dataset {name!r} has different shapes per row on different ranks: "
                             f"{sorted(trailing)}")
        kinds = {h[2] for h in holders}
        if _TEXT in kinds and len(kinds) > 1:
            raise TypeError(f"writing {path}: dataset {name!r} is text on some ranks and numbers on others")
        kind = _TEXT if _TEXT in kinds else np.result_type(*[np.dtype(k) for k in kinds]).str
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
                row_bytes = max(1, int(np.prod(trailing, dtype=np.int64))) * (16 if kind == _TEXT else dtype.itemsize)
                # About 1 MiB chunks of whole rows: each rank's slice maps onto whole chunks mostly.
                chunk_rows = max(1, min(n_rows, (1 << 20) // row_bytes))
                f.create_dataset(name, shape=(n_rows, *trailing), dtype=dtype,
                                 chunks=(chunk_rows, *trailing) if n_rows and all(trailing) else None)
            for key, value in (attrs or {}).items():
                f.attrs[key] = value
    except BaseException:
        os.unlink(tmp)
        raise
    return tmp


def _write_slice(tmp: str, datasets: Mapping[str, Any], layout: dict, offset: int, block_bytes: int) -> None:
    """Write this rank's rows of every dataset at ``offset``, in bounded blocks. Local."""
    import h5py

    with h5py.File(tmp, "r+") as f:
        for name, local in datasets.items():
            trailing, kind = layout["columns"][name]
            ds = f[name]
            n = int(local.shape[0])
            row_bytes = max(1, int(np.prod(trailing, dtype=np.int64))) * (16 if kind == _TEXT else ds.dtype.itemsize)
            step = max(1, block_bytes // row_bytes)
            for a in range(0, n, step):
                b = min(n, a + step)
                # Slicing block by block lets ``local`` be lazy (an h5py dataset, a memmap).
                block = np.asarray(local[a:b], dtype=object if kind == _TEXT else ds.dtype)
                if block.shape != (b - a, *trailing):
                    raise ValueError(f"dataset {name!r}: rows {a}:{b} have shape {block.shape}, "
                                     f"expected {(b - a, *trailing)}")
                if kind == _TEXT:
                    ds[offset + a : offset + b] = block
                else:
                    ds.write_direct(np.ascontiguousarray(block), dest_sel=np.s_[offset + a : offset + b])


def write_rows_in_order(
    path: str | os.PathLike,
    datasets: Mapping[str, Any],
    *,
    comm: "Intracomm | None" = None,
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
            mine = {name: _column_layout(name, local) for name, local in datasets.items()}
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
                except Exception as exc:  # noqa: BLE001 - agreed below
                    failure = exc
            if rank < size - 1:
                send_token_quietly(1 if earlier_failed or failure is not None else 0, rank + 1, lib)
            agree(failure, lib, f"writing {path}")
            with collective_check(lib, f"renaming the output to {path}"):
                if rank == 0:
                    os.replace(tmp, path)
                    renamed = True
        finally:
            if rank == 0 and tmp is not None and not renamed and os.path.exists(tmp):
                os.unlink(tmp)
    return {
        "path": os.path.abspath(path),
        "n_rows": layout["n_rows"],
        "row_offset": offset,
        "shapes": {name: (layout["n_rows"], *trailing) for name, (trailing, _) in layout["columns"].items()},
        "dtypes": {name: kind if kind == _TEXT else str(np.dtype(kind)) for name, (_, kind) in
                   layout["columns"].items()},
    }


def _block_rng(seed: int, block: int) -> np.random.Generator:
    return np.random.default_rng([seed, 1, block])


def make_data(
    kind: str,
    out: str | os.PathLike,
    *,
    rows: int,
    features: int,
    classes: int = 2,
    informative: int | None = None,
    noise: float | None = None,
    seed: int = 0,
    dtype: str = "float64",
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Write a synthetic regression or classification data set to HDF5.

    Memory stays bounded by one block of :data:`MAKE_DATA_BLOCK_ROWS` rows,
    so files larger than RAM can be written.  Block ``b`` is drawn from its
    own random stream ``(seed, b)``: the file depends only on the arguments,
    never on how many processes run.  The file appears under its final name
    only when complete.  Not collective: call it on one rank.

    Regression: ``y = X @ coef + intercept + noise * N(0, 1)`` with the
    first ``informative`` coefficients non-zero.  Classification: ``y`` is
    the arg-max over classes of ``X[:, :informative] @ W + noise * Gumbel``,
    i.e. drawn from a multinomial logistic model (``noise`` is its
    temperature), labels ``0 .. classes - 1``.

    Returns
    -------
    dict
        The generating parameters, also stored as attributes of the file.
    """
    import h5py

    if kind not in ("regression", "classification"):
        raise MpitrainError(f"kind must be 'regression' or 'classification', got {kind!r}")
    if rows < 1 or features < 1:
        raise MpitrainError(f"need at least one row and one feature, got rows={rows}, features={features}")
    informative = features if informative is None else informative
    if not 1 <= informative <= features:
        raise MpitrainError(f"informative must be between 1 and features={features}, got {informative}")
    if kind == "classification" and classes < 2:
        raise MpitrainError(f"classification needs at least 2 classes, got {classes}")
    if dtype not in ("float32", "float64"):
        raise MpitrainError(f"dtype must be float32 or float64, got {dtype!r}")
    noise = (1.0 if kind == "regression" else 0.5) if noise is None else float(noise)
    if noise < 0:
        raise MpitrainError(f"noise must be non-negative, got {noise}")

    model_rng = np.random.default_rng([seed, 0])
    meta: dict = {"kind": kind, "rows": rows, "features": features, "informative": informative,
                  "noise": noise, "seed": seed, "generator": "mpitrain make-data"}
    if kind == "regression":
        coef = np.zeros(features)
        coef[:informative] = model_rng.uniform(-10, 10, size=informative)
        intercept = float(model_rng.uniform(-5, 5))
        meta.update(coef=coef, intercept=intercept)
    else:
        weights = model_rng.normal(size=(informative, classes))
        meta.update(classes=classes)

    # ~4 MiB chunks of whole rows: a rank's row range maps onto whole chunks.
    chunk_rows = int(max(1, min(rows, (4 << 20) // (features * np.dtype(dtype).itemsize))))
    with atomic_path(out) as tmp:
        with h5py.File(tmp, "w") as f:
            X_ds = f.create_dataset("X", shape=(rows, features), dtype=dtype, chunks=(chunk_rows, features))
            y_dtype = dtype if kind == "regression" else np.int64
            y_ds = f.create_dataset("y", shape=(rows,), dtype=y_dtype, chunks=(min(rows, 1 << 18),))
            for block, start in enumerate(range(0, rows, MAKE_DATA_BLOCK_ROWS)):
                stop = min(rows, start + MAKE_DATA_BLOCK_ROWS)
                rng = _block_rng(seed, block)
                X = rng.standard_normal((stop - start, features))
                if kind == "regression":
                    y = X @ coef + intercept + noise * rng.standard_normal(stop - start)
                else:
                    scores = X[:, :informative] @ weights
                    if noise > 0:
                        scores += noise * rng.gumbel(size=scores.shape)
                    y = scores.argmax(axis=1)
                X_ds[start:stop] = X.astype(dtype, copy=False)
                y_ds[start:stop] = y
                if progress is not None:
                    progress(stop)
            for key, value in meta.items():
                f.attrs[key] = value
    return meta
