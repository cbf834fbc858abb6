"""Reading a rank's rows from HDF5: one file or several as one row space.

A data set is one HDF5 file or several (a list or a glob pattern) whose
rows are concatenated into one row space.  Each rank opens read-only only
the files that hold its own contiguous range of rows and reads them in
chunk-aligned blocks on a background thread: either into arrays of its
whole slice (models that need their rows in memory) or through a small ring
of reused blocks (models that stream their rows, memory bounded).  No
parallel HDF5 build is needed.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import threading
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import groupby
from typing import TYPE_CHECKING, Any

import numpy as np

from mpitrain.comm import (
    bcast_object,
    collective_check,
    get_comm,
)
from mpitrain.data._inspect import (
    CHUNK_BYTES_LIMIT,
    band_bytes,
    check_dataset,
    column_chunk_bytes,
    linked_files,
    refuse_chunks,
    resolve_dataset,
)
from mpitrain.data._memory import check_reading_fits
from mpitrain.data._partition import (
    RowSlice,
    check_root_share,
    row_counts,
    row_range,
)
from mpitrain.errors import MpitrainError

if TYPE_CHECKING:  # pragma: no cover
    from mpi4py.MPI import Intracomm

__all__ = [
    "BLOCK_BYTES",
    "RING_BLOCKS",
    "SourceFile",
    "ReadBlock",
    "RowBlock",
    "expand_paths",
    "fingerprint_files",
    "content_digest",
    "SAMPLE_BLOCKS",
    "SAMPLE_BLOCK_BYTES",
    "plan_blocks",
    "reading_bytes",
    "RowReader",
    "open_rows",
    "read_rows",
]


def _numeric(dtype: np.dtype) -> bool:
    return dtype.kind in "biuf"


def _is_text(dtype: np.dtype) -> bool:
    import h5py

    return dtype.kind in "SU" or h5py.check_string_dtype(dtype) is not None


def _check_column(ds, role: str, n_rows: int, path: str, labels: bool = False) -> None:
    if ds.ndim == 2 and ds.shape[1] == 1:
        # A column vector, as R, MATLAB and Julia write one: read as 1-D, as
        # scikit-learn does (with a warning, since it may be a mistake).
        warnings.warn(
            f"{path}: {role} dataset {ds.name!r} has shape {ds.shape}; read as 1-D "
            f"({ds.shape[0]},)",
            UserWarning,
            stacklevel=2,
        )
    elif ds.ndim != 1:
        raise MpitrainError(
            f"{path}: {role} dataset {ds.name!r} must be 1-D, it has shape {ds.shape}"
        )
    if ds.shape[0] != n_rows:
        raise MpitrainError(
            f"{path}: {role} dataset {ds.name!r} has {ds.shape[0]} rows but the features have {n_rows}"
        )
    if not (_numeric(ds.dtype) or (labels and _is_text(ds.dtype))):
        kind = "numeric or text labels" if labels else "numeric"
        raise MpitrainError(
            f"{path}: {role} dataset {ds.name!r} has dtype {ds.dtype}; it must be {kind}"
        )


def _open(path: str):
    import h5py

    if not os.path.exists(path):
        raise MpitrainError(f"no such file: {path}")
    if os.path.isdir(path):
        raise MpitrainError(f"{path} is a directory, not an HDF5 file")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise MpitrainError(
            f"cannot open {path} as HDF5: {_hdf5_reason(exc)}"
        ) from None


def _hdf5_reason(exc: OSError) -> str:
    """HDF5's reason for an error, without the dump of its call. Pure.

    A failed read ends in "(file read failed: time = ..., filename = ...,
    file descriptor = ..., errno = ..., error message = '...', buf = ...)":
    only what failed and the system's message say something to a user.
    """
    text = " ".join(str(exc).split())
    found = re.search(r"\((\w[\w ]*): [^()]*error message = '([^']*)'", text)
    if found:
        return f"{text.split(' (', 1)[0]} ({found.group(1)}: {found.group(2)})"
    return text


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
    held_bytes : int
        Decompressed chunk bytes HDF5 holds at once while a rank reads the
        file (a band of feature chunks, the target's and weights' chunk
        caches); 0 for uncompressed data.
    """

    path: str
    first_row: int
    n_rows: int
    chunk_rows: int | None = None
    compressed: bool = False
    held_bytes: int = 0


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
            raise MpitrainError(
                f"{name} is named twice among the data files (also as {seen[key]}); "
                "its rows would be counted twice"
            )
        seen[key] = name
    return files


def fingerprint_files(
    paths: str | os.PathLike | Sequence[str | os.PathLike],
    datasets: Sequence[str | None] = ("X", "y"),
    *,
    digest: Callable[[str], Any] | None = None,
) -> list[dict]:
    """Every file a data set reads, with what identifies its contents. Local.

    For a resume fingerprint: the data files (patterns expanded as
    :func:`expand_paths` does) and the files their ``datasets`` read through
    external links, virtual datasets or external storage (whether or not
    :func:`open_rows` would allow them), each once, in order.  Never raises
    for a file that cannot be read: its size and time are then ``None``
    (reading it will say why).

    Parameters
    ----------
    paths : str, path-like or sequence of them
        As for :func:`open_rows`.
    datasets : sequence of str or None, default=("X", "y")
        The datasets read (``None`` entries are skipped).
    digest : callable, default=None
        Called with each resolved path that exists; its result is stored
        as ``digest`` (a content hash, say).  ``None``: no digest.

    Returns
    -------
    list of dict
        ``path`` (resolved, absolute), ``size`` (bytes), ``mtime_ns``,
        ``digest``, and ``via``: ``None`` for a data file, else
        ``"<data file>:<dataset>"``, the dataset that reads it.
    """
    import h5py

    try:
        files = expand_paths(paths)
    except MpitrainError:
        given = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
        files = [os.fspath(p) for p in given]
    entries: list[tuple[str, str | None]] = []
    for path in files:
        entries.append((os.path.realpath(path), None))
        try:
            with h5py.File(path, "r") as f:
                for name in datasets:
                    try:
                        ds = None if name is None else f[name]
                    except (KeyError, OSError, ValueError):
                        continue  # a missing dataset or link target: reading says so
                    if isinstance(ds, h5py.Dataset):
                        entries += [
                            (linked, f"{path}:{name}")
                            for linked in linked_files(ds, path)
                        ]
        except OSError:
            continue
    result: list[dict] = []
    seen: set[str] = set()
    for resolved, via in entries:
        if resolved in seen:
            continue
        seen.add(resolved)
        try:
            st = os.stat(resolved)
            size, mtime = st.st_size, st.st_mtime_ns
        except OSError:
            size = mtime = None
        result.append(
            {
                "path": resolved,
                "size": size,
                "mtime_ns": mtime,
                "digest": None if digest is None or size is None else digest(resolved),
                "via": via,
            }
        )
    return result


#: Blocks of raw bytes that :func:`content_digest` reads from a file larger
#: than ``SAMPLE_BLOCKS * SAMPLE_BLOCK_BYTES`` (4 MiB); a smaller file is
#: hashed whole.
SAMPLE_BLOCKS = 64
SAMPLE_BLOCK_BYTES = 65536


def _dataset_layout(f, name: str) -> dict | None:
    """What a dataset is, from its metadata: link, shape, type, storage, filters. Local."""
    import h5py

    link = f.get(name, getlink=True)
    if link is None:
        return None
    out: dict[str, Any] = {"link": type(link).__name__}
    if isinstance(link, h5py.ExternalLink):
        out["target"] = [link.filename, link.path]
    elif isinstance(link, h5py.SoftLink):
        out["target"] = link.path
    try:
        ds = f[name]
    except (KeyError, OSError, ValueError):
        return out  # a dangling link: reading says so
    if not isinstance(ds, h5py.Dataset):
        return out
    out.update(
        shape=list(ds.shape),
        dtype=str(ds.dtype),
        chunks=None if ds.chunks is None else list(ds.chunks),
        compression=ds.compression,
        compression_opts=repr(ds.compression_opts),
        shuffle=bool(ds.shuffle),
        fletcher32=bool(ds.fletcher32),
        scaleoffset=ds.scaleoffset,
        virtual=bool(ds.is_virtual),
        external=repr(ds.external),
    )
    return out


def content_digest(
    path: str | os.PathLike,
    datasets: Sequence[str | None] = (),
    *,
    blocks: int = SAMPLE_BLOCKS,
    block_bytes: int = SAMPLE_BLOCK_BYTES,
) -> str:
    """A digest of a file's contents that reads at most ``blocks * block_bytes`` bytes. Local.

    Hashes (BLAKE2b) the size, the layout of ``datasets`` if the file is
    HDF5 (link targets, shape, dtype, chunks, filters) and the raw bytes of
    the whole file when it is small, else of ``blocks`` evenly spaced blocks
    of ``block_bytes`` including the first and the last.  A rewrite of a
    large file that changes none of the sampled bytes (nor its layout, size
    and time, which a fingerprint records beside) goes unnoticed; reading
    the whole of a terabyte-scale data set a second time is the price of a
    complete hash.

    Raises
    ------
    OSError
        If the file cannot be read.
    """
    import hashlib
    import json

    import h5py

    path = os.fspath(path)
    digest = hashlib.blake2b(digest_size=16)
    size = os.path.getsize(path)
    layout: dict[str, Any] = {}
    if h5py.is_hdf5(path):
        with h5py.File(path, "r") as f:
            for name in datasets:
                if name is not None:
                    layout[name] = _dataset_layout(f, name)
    digest.update(json.dumps([size, layout], sort_keys=True, default=str).encode())
    with open(path, "rb") as f:
        if size <= blocks * block_bytes:
            for piece in iter(lambda: f.read(1 << 20), b""):
                digest.update(piece)
        else:
            last = size - block_bytes
            for i in range(blocks):
                f.seek(i * last // (blocks - 1))
                digest.update(f.read(block_bytes))
    mode = "whole" if size <= blocks * block_bytes else f"{blocks}x{block_bytes}B"
    return f"blake2b:{digest.hexdigest()} ({mode})"


def _block_layout(
    chunk_rows: int | None, row_bytes: int, block_bytes: int
) -> tuple[int, int]:
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


def plan_blocks(
    sources: Sequence[SourceFile],
    start: int,
    stop: int,
    row_bytes: int,
    block_bytes: int = BLOCK_BYTES,
) -> list[ReadBlock]:
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
    return (
        ", ".join(names)
        if len(names) <= 3
        else f"{names[0]} ... {names[-1]} ({len(names)} names)"
    )


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
    root_share : float
        Rank 0's share of the partition the ranges come from (:func:`row_range`).
    largest_share : int
        Rows of the rank that reads the most, the same on every rank (for
        memory checks that must agree).
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

    def __init__(
        self,
        sources: Sequence[SourceFile],
        names: dict,
        start: int,
        stop: int,
        n_features: int,
        x_dtype: Any,
        y_dtype: Any,
        *,
        block_bytes: int = BLOCK_BYTES,
        ring_blocks: int = RING_BLOCKS,
        root_share: float = 1.0,
        largest_share: int | None = None,
    ):
        if ring_blocks < 2:
            raise ValueError(
                f"ring_blocks must be at least 2 (one computed on, one being read), got {ring_blocks}"
            )
        self.sources = list(sources)
        self.paths = [s.path for s in self.sources]
        self.path = _describe_paths(self.paths)
        self.names = names
        self.start, self.stop = start, stop
        self.n_rows = sum(s.n_rows for s in self.sources)
        self.root_share = root_share
        self.largest_share = stop - start if largest_share is None else largest_share
        self.n_features = n_features
        self.x_dtype = np.dtype(x_dtype)
        self.y_dtype = np.dtype(y_dtype) if names["y"] is not None else None
        row_bytes = self.x_dtype.itemsize * max(n_features, 1)
        self._plan = plan_blocks(self.sources, start, stop, row_bytes, block_bytes)
        mine = {b.source for b in self._plan} or {0}
        self.block_rows = (
            max(
                _block_layout(self.sources[i].chunk_rows, row_bytes, block_bytes)[0]
                for i in mine
            )
            if self.sources
            else 0
        )
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

    def from_row(self, start: int) -> RowReader:
        """A new reader of the same files and columns for global rows ``start:stop``. Local.

        The block size and ring are this reader's; reading has not begun.
        Resuming a streamed read takes it, so the rows before ``start`` are
        not read again.
        """
        return RowReader(
            self.sources,
            self.names,
            start,
            self.stop,
            self.n_features,
            self.x_dtype,
            self.y_dtype,
            block_bytes=self._block_bytes,
            ring_blocks=self._ring_blocks,
            root_share=self.root_share,
            largest_share=self.largest_share,
        )

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
        arrays = [self.X, self.y, self.sample_weight] + [
            a for slot in self._ring for a in slot
        ]
        return sum(a.nbytes for a in arrays if a is not None)

    def _allocate(
        self, n: int
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        return (
            np.empty((n, self.n_features), dtype=self.x_dtype),
            np.empty(n, dtype=self.y_dtype) if self.y_dtype is not None else None,
            np.empty(n) if self.names["sample_weight"] is not None else None,
        )

    def begin(self, keep_rows: bool = True) -> RowReader:
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
                raise RuntimeError(
                    f"{self.path}: reading already began with keep_rows={self.keep_rows}"
                )
            return self
        self.keep_rows = keep_rows
        if keep_rows:
            self.X, self.y, self.sample_weight = self._allocate(self.stop - self.start)
        else:
            slot_rows = max((b.n_rows for b in self._plan), default=0)
            self._ring = [
                self._allocate(slot_rows)
                for _ in range(min(self._ring_blocks, len(self._plan)))
            ]
            self._free = list(range(len(self._ring)))
        self._thread = threading.Thread(
            target=self._read_all, name="mpitrain-reader", daemon=True
        )
        self._thread.start()
        return self

    def _columns(self, f, source: SourceFile) -> list[tuple[str, Any]]:
        """The datasets to read from an open file, with chunk caches that suit the plan."""
        import h5py

        block_rows = _block_layout(
            source.chunk_rows,
            self.x_dtype.itemsize * max(self.n_features, 1),
            self._block_bytes,
        )[0]
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
            # Features in chunks narrower than the row (column-chunked files, as
            # R and Julia write them): a block needs the chunks of every column,
            # so the cache holds the whole band across the columns; with room
            # for one chunk each block would decompress every column again.
            if not filtered:
                cached = 0
            elif role == "X":
                cached = (
                    -(-max(self.n_features, 1) // max(chunks[1], 1))
                    if chunks[0] > block_rows
                    else 0
                )
            else:
                cached = _COLUMN_CACHE_CHUNKS
            chunk_bytes = int(np.prod(chunks)) * ds.dtype.itemsize
            slots, default_bytes, _ = ds.id.get_access_plist().get_chunk_cache()
            path = ds.name.encode()
            # The file that holds it (another one behind an allowed external link).
            holder = ds.file
            # HDF5 ignores the access properties of a dataset that is already
            # open: close it before opening it again with its own cache.
            del ds
            dapl = h5py.h5p.create(h5py.h5p.DATASET_ACCESS)
            dapl.set_chunk_cache(
                # Enough hash slots that the chunks of a band never evict each other.
                max(slots, _prime_at_least(8 * cached)) if cached else slots,
                max(default_bytes, cached * chunk_bytes + (64 << 10)) if cached else 0,
                1.0,
            )
            ds = h5py.Dataset(h5py.h5d.open(holder.id, path, dapl))
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
                            rows = np.s_[block.file_start : block.file_stop]
                            if role != "X" and ds.ndim == 2:
                                rows = (rows, 0)  # a column vector (n, 1), read as 1-D
                            if (
                                out.dtype == object
                            ):  # text labels cannot be read in place
                                out[a:b] = ds.asstr()[rows]
                            else:
                                # Into a view of the block's rows (contiguous), so HDF5's memory
                                # space is the block's own, whatever the size of the slice.
                                ds.read_direct(out[a:b], rows)
                        self.read_seconds += time.perf_counter() - tic
                        w = arrays[2]
                        if w is not None:
                            ok = np.isfinite(w[a:b]) & (w[a:b] >= 0)
                            if not ok.all():
                                bad = (
                                    source.first_row
                                    + block.file_start
                                    + int(np.argmin(ok))
                                )
                                raise MpitrainError(
                                    f"{source.path}: sample weights {self.names['sample_weight']!r} must be "
                                    f"finite and non-negative; row {bad} is not"
                                )
                        with self._cond:
                            if slot is None:
                                self._done = block.offset + block.n_rows
                            else:
                                self._ready.append((block, slot))
                            self._cond.notify_all()
        except BaseException as exc:
            with self._cond:
                self._error = exc
                self._cond.notify_all()

    def _in_memory(self, what: str) -> None:
        self.begin()
        if not self.keep_rows:
            raise RuntimeError(
                f"{what} needs the rows in memory, but {self.path} is being streamed "
                "(begin(keep_rows=False)); use stream()"
            )

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
            raise RuntimeError(
                f"{self.path} is streamed once only; begin() with keep_rows=True to go over "
                "the rows again"
            )
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
                yield RowBlock(
                    X[:n],
                    None if y is None else y[:n],
                    None if w is None else w[:n],
                    self.start + block.offset,
                    block.offset,
                    self.sources[block.source].path,
                )
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
            yield RowBlock(
                self.X[a:end],
                None if self.y is None else self.y[a:end],
                None if self.sample_weight is None else self.sample_weight[a:end],
                self.start + a,
                a,
                self.sources[block.source].path,
            )
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
        return RowSlice(
            self.X,
            self.y,
            self.sample_weight,
            self.start,
            self.stop,
            self.n_rows,
            self.path,
            tuple(self.paths),
        )


def _prime_at_least(n: int) -> int:
    """The smallest prime >= n (HDF5's advice for chunk cache hash slots). Pure."""
    n = max(n, 2)
    while any(n % k == 0 for k in range(2, math.isqrt(n) + 1)):
        n += 1
    return n


def _check_features(ds, x: str, path: str) -> None:
    """Refuse a feature dataset that is not a 2-D real table with columns. Local."""
    if ds.dtype.names:
        # A table of records (one field per column) is 1-D: its shape is not the problem.
        fields = ", ".join(ds.dtype.names[:5]) + (
            ", ..." if len(ds.dtype.names) > 5 else ""
        )
        raise MpitrainError(
            f"{path}: feature dataset {x!r} is a table of records with fields ({fields}); "
            "mpitrain reads a 2-D numeric array (rows x features): store the columns "
            "as one 2-D dataset"
        )
    if ds.ndim != 2:
        what = "a scalar" if ds.ndim == 0 else f"{ds.ndim}-D, shape {ds.shape}"
        raise MpitrainError(
            f"{path}: feature dataset {x!r} must be 2-D (rows x features), it is {what}"
        )
    if ds.dtype.kind == "c":
        raise MpitrainError(
            f"{path}: feature dataset {x!r} holds complex numbers ({ds.dtype}); "
            "mpitrain needs real features: store the real and imaginary parts as "
            "separate columns"
        )
    if not _numeric(ds.dtype):
        raise MpitrainError(
            f"{path}: feature dataset {x!r} has non-numeric dtype {ds.dtype}"
        )
    if ds.shape[1] == 0:
        raise MpitrainError(
            f"{path}: feature dataset {x!r} has no feature columns (shape {ds.shape}); "
            "a model needs at least one"
        )


def _describe_sources(
    paths: str | os.PathLike | Sequence[str | os.PathLike],
    names: dict,
    labels: bool,
    *,
    external_files: bool = False,
    max_chunk_bytes: int = CHUNK_BYTES_LIMIT,
    block_bytes: int = BLOCK_BYTES,
) -> dict:
    """Expand the file names and check every file's metadata. Local (rank 0 runs it).

    Returns the :class:`SourceFile` list and the dtypes every file agrees
    on; raises :class:`MpitrainError` naming the file otherwise (see
    :mod:`mpitrain.data._inspect` for links, virtual datasets, unwritten
    chunks and chunk sizes).
    """
    x, y, sample_weight = names["x"], names["y"], names["sample_weight"]
    files = expand_paths(paths)
    sources: list[SourceFile] = []
    x_dtypes: list[np.dtype] = []
    # Per file: the feature chunks, their stored dtype, and the columns' cache bytes.
    x_chunks: list[tuple[tuple[int, ...] | None, np.dtype, tuple[int, ...], int]] = []
    targets: list[
        tuple[str, np.dtype | None]
    ] = []  # (file, stored dtype; None for text)
    n_features = first = None
    checks = {"external_files": external_files, "max_chunk_bytes": max_chunk_bytes}
    for path in files:
        with _open(path) as f:
            X_ds = resolve_dataset(f, x, path, external_files=external_files)
            _check_features(X_ds, x, path)
            if n_features is None:
                n_features, first = X_ds.shape[1], path
            elif X_ds.shape[1] != n_features:
                raise MpitrainError(
                    f"{path}: feature dataset {x!r} has {X_ds.shape[1]} columns but {first} has "
                    f"{n_features}; every file must have the same columns"
                )
            check_dataset(X_ds, path, "feature", **checks)
            n_rows = X_ds.shape[0]
            columns_held = 0
            for role, name in (("target", y), ("sample-weight", sample_weight)):
                if name is not None:
                    column = resolve_dataset(
                        f, name, path, external_files=external_files
                    )
                    _check_column(
                        column, role, n_rows, path, labels=labels and role == "target"
                    )
                    check_dataset(column, path, role, **checks)
                    columns_held += _COLUMN_CACHE_CHUNKS * column_chunk_bytes(column)
                    if role == "target":
                        targets.append(
                            (path, None if _is_text(column.dtype) else column.dtype)
                        )
            chunks = X_ds.chunks
            compressed = bool(chunks) and X_ds.id.get_create_plist().get_nfilters() > 0
            sources.append(
                SourceFile(
                    path,
                    sum(s.n_rows for s in sources),
                    n_rows,
                    chunks[0] if chunks else None,
                    compressed,
                )
            )
            x_chunks.append(
                (chunks if compressed else None, X_ds.dtype, X_ds.shape, columns_held)
            )
            x_dtypes.append(X_ds.dtype)
    # float32 stays float32 (half the memory) when every file has it; anything else becomes float64.
    x_dtype = np.float32 if all(dt == np.float32 for dt in x_dtypes) else np.float64
    # What a rank holds decompressed depends on the blocks, hence on the dtype read.
    row_bytes = np.dtype(x_dtype).itemsize * max(n_features or 1, 1)
    for i, (source, (chunks, stored, shape, columns_held)) in enumerate(
        zip(sources, x_chunks)
    ):
        held = 0
        if chunks is not None:
            block_rows = _block_layout(chunks[0], row_bytes, block_bytes)[0]
            held = band_bytes(chunks, shape[1], stored.itemsize, block_rows, True)
            if held > max_chunk_bytes:
                chunk = math.prod(chunks) * stored.itemsize
                refuse_chunks(
                    source.path,
                    "feature",
                    x,
                    chunks,
                    shape,
                    stored,
                    chunk,
                    held,
                    max_chunk_bytes,
                )
        sources[i] = dataclasses.replace(source, held_bytes=held + columns_held)
    y_dtype = None
    if targets:
        text = [p for p, dt in targets if dt is None]
        if text and len(text) < len(targets):
            numeric = next(p for p, dt in targets if dt is not None)
            raise MpitrainError(
                f"{text[0]}: target dataset {y!r} holds text but in {numeric} it holds numbers; "
                "every file must have the same kind of target"
            )
        stored = [dt for _, dt in targets if dt is not None]
        if text:
            y_dtype = object  # text labels become str
        elif any(dt.kind == "f" for dt in stored):
            y_dtype = np.float64  # float targets as float64
        else:
            # Integer labels keep their type (promoted across files; int64 with uint64 has no integer type).
            common = np.result_type(*stored)
            y_dtype = common if common.kind in "biu" else np.float64
    return {
        "sources": sources,
        "n_features": n_features,
        "x_dtype": x_dtype,
        "y_dtype": y_dtype,
    }


def open_rows(
    path: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    x: str = "X",
    y: str | None = "y",
    sample_weight: str | None = None,
    comm: Intracomm | None = None,
    block_bytes: int = BLOCK_BYTES,
    labels: bool = False,
    ring_blocks: int = RING_BLOCKS,
    external_files: bool = False,
    max_chunk_bytes: int = CHUNK_BYTES_LIMIT,
    root_share: float | Callable[[int, int], float] = 1.0,
) -> RowReader:
    """Check an HDF5 data set of one or more files and prepare to read this rank's rows.

    Collective over ``comm`` (one broadcast, two agreements): rank 0
    expands the patterns and checks every file's metadata, and broadcasts
    the list of files and their row counts, so ranks cannot disagree about
    the files (on different nodes, say); a missing file or dataset, a wrong
    shape, a non-numeric or complex dtype, no feature columns or files that
    do not fit together are raised identically on every rank, naming the
    file.  So are datasets whose reading would be silently wrong or
    unbounded (see :mod:`mpitrain.data._inspect`): external links and
    external storage (unless ``external_files``), virtual datasets with
    missing sources or sources outside the input's directory, chunks never
    written (unless the fill value is NaN), declared shapes that the file
    does not back, and compressed chunks that would decompress to more than
    ``max_chunk_bytes`` per rank.  Then the memory that reading itself
    takes (blocks in flight, decompressed chunks; :func:`reading_bytes`)
    is checked against each rank's limit, as for the rows of models that
    hold them (:func:`~mpitrain.data.check_rows_fit`).  Reading starts with
    :meth:`RowReader.begin`; each rank opens only the files that hold its
    rows, read-only.

    Several files form one row space: their rows are concatenated in the
    order given (patterns expanded in sorted order), and :func:`row_range`
    splits the total (with ``root_share``), so a rank's rows may span
    several files.  Every file
    must have the same number of feature columns and the same kind of
    target.  Dtypes combine as follows: features are float32 if every file
    stores float32, float64 otherwise (float16, integers and booleans are
    read as float64); a float target in any file makes the target float64;
    integer labels take the common integer type; text labels
    (``labels=True``) must be text in every file.  A target or weights of
    shape ``(n, 1)`` is read as 1-D, with a warning.

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
    external_files : bool, default=False
        Let the datasets read other files than those named: through
        external links, external storage, and virtual datasets whose
        sources lie outside the input's directory.
    max_chunk_bytes : int, default=CHUNK_BYTES_LIMIT (256 MiB)
        Decompressed chunk bytes a rank may hold to read a dataset.
    root_share : float or callable, default=1.0
        Rank 0's rows relative to each other rank's (:func:`row_range`):
        below 1, rank 0 reads less, for work it does alone.  Or a pure
        function of ``(n_rows, n_features)`` that gives it, called on every
        rank with the agreed metadata (a default that depends on the size
        of the data).  It must be the same on every rank.

    Returns
    -------
    RowReader
    """
    comm = get_comm(comm)
    if not callable(root_share):
        check_root_share(root_share)  # before any work: the same on every rank
    names = {"x": x, "y": y, "sample_weight": sample_weight}
    described: dict | None = None
    with collective_check(comm, f"reading {_describe_given(path)}"):
        outcome: dict | str | None = None
        if comm.Get_rank() == 0:
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    outcome = _describe_sources(
                        path,
                        names,
                        labels,
                        external_files=external_files,
                        max_chunk_bytes=max_chunk_bytes,
                        block_bytes=block_bytes,
                    )
                # Once, from rank 0, however many files say the same.
                for message in dict.fromkeys(str(w.message) for w in caught):
                    warnings.warn(message, UserWarning, stacklevel=2)
            except Exception as exc:
                outcome = (
                    str(exc)
                    if isinstance(exc, MpitrainError)
                    else f"{type(exc).__name__}: {exc}"
                )
        # Every rank reaches the broadcast: rank 0 sends the metadata or the error's text.
        outcome = bcast_object(outcome, comm)
        if isinstance(outcome, str):
            raise MpitrainError(outcome)
        described = outcome
    assert described is not None
    n_rows = sum(s.n_rows for s in described["sources"])
    if callable(root_share):
        root_share = root_share(n_rows, described["n_features"])
    root_share = check_root_share(root_share)
    start, stop = row_range(n_rows, comm.Get_size(), comm.Get_rank(), root_share)
    largest = int(row_counts(n_rows, comm.Get_size(), root_share).max())
    reader = RowReader(
        described["sources"],
        names,
        start,
        stop,
        described["n_features"],
        described["x_dtype"],
        described["y_dtype"],
        block_bytes=block_bytes,
        ring_blocks=ring_blocks,
        root_share=root_share,
        largest_share=largest,
    )
    # The same figure on every rank (from the largest share), so all agree.
    need, detail = reading_bytes(reader, largest, block_bytes, ring_blocks)
    check_reading_fits(need, comm, what=f"reading {reader.path}", detail=detail)
    return reader


def reading_bytes(
    reader: RowReader,
    share: int,
    block_bytes: int = BLOCK_BYTES,
    ring_blocks: int = RING_BLOCKS,
) -> tuple[int, str]:
    """Bytes a rank holds to read ``share`` rows, whatever the model, and what they are. Pure.

    A streamed read holds ``ring_blocks`` blocks (a read in memory holds
    the slice, counted by :func:`~mpitrain.data.check_rows_fit`); HDF5
    holds the decompressed chunks of :attr:`SourceFile.held_bytes` of the
    file being read.  Taken over every file, so the figure does not depend
    on the rank.
    """
    row = reader.x_dtype.itemsize * reader.n_features
    row += reader.y_dtype.itemsize if reader.y_dtype is not None else 0
    row += 8 if reader.names["sample_weight"] is not None else 0
    row_bytes = reader.x_dtype.itemsize * max(reader.n_features, 1)
    block_rows = max(
        (
            _block_layout(s.chunk_rows, row_bytes, block_bytes)[0]
            for s in reader.sources
        ),
        default=0,
    )
    blocks = min(ring_blocks, -(-share // max(block_rows, 1)))
    ring = blocks * min(block_rows, share) * row
    held = max((s.held_bytes for s in reader.sources), default=0)
    from mpitrain.report import format_bytes

    detail = f"{blocks} block(s) of {min(block_rows, share):,} rows"
    if held:
        detail += f" and {format_bytes(held)} of decompressed chunks"
    return ring + held, detail


def read_rows(
    path: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    x: str = "X",
    y: str | None = "y",
    sample_weight: str | None = None,
    comm: Intracomm | None = None,
    labels: bool = False,
    external_files: bool = False,
    root_share: float = 1.0,
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
    reader = open_rows(
        path,
        x=x,
        y=y,
        sample_weight=sample_weight,
        comm=comm,
        labels=labels,
        external_files=external_files,
        root_share=root_share,
    )
    rows: RowSlice | None = None
    try:
        with collective_check(comm, f"reading {reader.path}"):
            rows = reader.result()
    finally:
        reader.close()
    assert rows is not None
    return rows
