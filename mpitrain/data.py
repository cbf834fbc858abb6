"""Row partitioning, reading a rank's rows from HDF5, and writing files safely.

Each rank opens the HDF5 file read-only by itself and reads only its own
contiguous block of rows, straight into preallocated arrays.  No parallel
HDF5 build is needed.
"""

from __future__ import annotations

import os
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np

from .comm import collective_check, get_comm
from .errors import MpitrainError

if TYPE_CHECKING:  # pragma: no cover
    from mpi4py.MPI import Intracomm

__all__ = [
    "row_range",
    "row_counts",
    "RowSlice",
    "RowReader",
    "open_rows",
    "read_rows",
    "atomic_path",
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
    """One rank's rows of an HDF5 data set.

    Attributes
    ----------
    X : ndarray of shape (stop - start, n_features)
        Features; float32 if stored as float32, float64 otherwise.
    y : ndarray of shape (stop - start,) or None
        Target: float64 for floating-point targets, integer labels as stored.
    sample_weight : ndarray of shape (stop - start,) or None
    start, stop : int
        The global row range of this rank.
    n_rows : int
        Rows in the whole data set.
    path : str
    """

    X: np.ndarray
    y: np.ndarray | None
    sample_weight: np.ndarray | None
    start: int
    stop: int
    n_rows: int
    path: str

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


class RowReader:
    """Reads one rank's rows of an HDF5 data set on a background thread.

    Made by :func:`open_rows` once the file's metadata has been agreed.
    :meth:`begin` starts reading blocks of whole dataset chunks (about 32 MB
    each) into preallocated arrays; :meth:`blocks` yields each block as soon
    as it is in memory, so computing on block k overlaps reading block k+1
    (HDF5 reads release the GIL).  Nothing here communicates.

    Attributes
    ----------
    X, y, sample_weight : ndarray or None
        This rank's rows, filled in as reading proceeds.
    start, stop, n_rows, n_features, path
        The rank's global row range, the data set's size and its file.
    read_seconds : float
        Time the reading thread spent reading.
    """

    def __init__(self, path: str, names: dict, start: int, stop: int, n_rows: int, n_features: int,
                 x_dtype, y_dtype, chunk_rows: int | None, block_bytes: int = 32 << 20):
        self.path, self.names = path, names
        self.start, self.stop, self.n_rows, self.n_features = start, stop, n_rows, n_features
        n = stop - start
        self.X = np.empty((n, n_features), dtype=x_dtype)
        self.y = np.empty(n, dtype=y_dtype) if names["y"] is not None else None
        self.sample_weight = np.empty(n) if names["sample_weight"] is not None else None
        row_bytes = self.X.itemsize * max(n_features, 1)
        step = chunk_rows or 1
        self.block_rows = max(step, block_bytes // row_bytes // step * step)
        self.read_seconds = 0.0
        self._done = 0
        self._error: BaseException | None = None
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._cancelled = False

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.X, self.y, self.sample_weight) if a is not None)

    def begin(self) -> "RowReader":
        """Start the reading thread (once); returns ``self``."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._read_all, name="mpitrain-reader", daemon=True)
            self._thread.start()
        return self

    def _edges(self) -> list[int]:
        # Blocks end on the file's chunk-aligned block boundaries, not the rank's.
        n = self.stop - self.start
        first = self.block_rows - self.start % self.block_rows
        return [0] + list(range(min(first, n), n, self.block_rows)) + [n] if n else [0]

    def _read_all(self) -> None:
        import time

        try:
            with _open(self.path) as f:
                targets = [(f[self.names["x"]], self.X)]
                for role in ("y", "sample_weight"):
                    if self.names[role] is not None:
                        targets.append((f[self.names[role]], getattr(self, role)))
                edges = self._edges()
                for a, b in zip(edges, edges[1:]):
                    if self._cancelled:
                        return
                    tic = time.perf_counter()
                    for ds, out in targets:
                        if out.dtype == object:  # text labels cannot be read in place
                            out[a:b] = ds.asstr()[self.start + a : self.start + b]
                        else:
                            ds.read_direct(out, np.s_[self.start + a : self.start + b], np.s_[a:b])
                    self.read_seconds += time.perf_counter() - tic
                    w = self.sample_weight
                    if w is not None and not (w[a:b] >= 0).all():
                        bad = self.start + a + int(np.argmax(~(w[a:b] >= 0)))
                        raise MpitrainError(f"{self.path}: sample weights {self.names['sample_weight']!r} must "
                                            f"be finite and non-negative; row {bad} is not")
                    with self._cond:
                        self._done = b
                        self._cond.notify_all()
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            with self._cond:
                self._error = exc
                self._cond.notify_all()

    def blocks(self) -> Iterator[tuple[int, int]]:
        """Yield local row ranges ``(a, b)`` as they finish reading.

        Raises the reading thread's error, if it had one.
        """
        self.begin()
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

    def close(self) -> None:
        """Stop reading after the current block and wait for the thread.

        Call it when giving up early (an error elsewhere): a thread left
        inside HDF5 while the interpreter shuts down can hang the exit.
        """
        self._cancelled = True
        if self._thread is not None:
            self._thread.join()

    def result(self) -> RowSlice:
        """Wait for all rows and return them as a :class:`RowSlice`."""
        for _ in self.blocks():
            pass
        return RowSlice(self.X, self.y, self.sample_weight, self.start, self.stop, self.n_rows, self.path)


def open_rows(
    path: str | os.PathLike,
    *,
    x: str = "X",
    y: str | None = "y",
    sample_weight: str | None = None,
    comm: "Intracomm | None" = None,
    block_bytes: int = 32 << 20,
    labels: bool = False,
) -> RowReader:
    """Check an HDF5 data set and prepare to read this rank's rows.

    Collective over ``comm`` (one agreement): every rank opens the file
    read-only itself and checks its metadata, so a missing file or dataset,
    a wrong shape or a non-numeric dtype is raised identically on every
    rank.  Reading starts with :meth:`RowReader.begin`.

    Parameters
    ----------
    path : str or path-like
        The HDF5 file.
    x : str, default="X"
        Name of the 2-D feature dataset.
    y : str or None, default="y"
        Name of the 1-D numeric target dataset; ``None`` to read none.
    sample_weight : str or None, default=None
        Name of a 1-D dataset of non-negative row weights.
    comm : mpi4py.MPI.Intracomm, default=None
        ``None`` means ``COMM_WORLD``.
    block_bytes : int, default=32 MiB
        Feature bytes per block read, rounded to whole chunks of the dataset.
    labels : bool, default=False
        The target holds class labels: text datasets are then allowed (read
        as Python ``str``), as well as numeric ones.

    Returns
    -------
    RowReader
    """
    comm = get_comm(comm)
    path = os.fspath(path)
    reader: RowReader | None = None
    with collective_check(comm, f"reading {path}"):
        with _open(path) as f:
            X_ds = _dataset(f, x, path)
            if X_ds.ndim != 2:
                raise MpitrainError(f"{path}: feature dataset {x!r} must be 2-D, it has shape {X_ds.shape}")
            if not _numeric(X_ds.dtype):
                raise MpitrainError(f"{path}: feature dataset {x!r} has non-numeric dtype {X_ds.dtype}")
            n_rows = X_ds.shape[0]
            y_dtype = None
            for role, name in (("target", y), ("sample-weight", sample_weight)):
                if name is not None:
                    column = _dataset(f, name, path)
                    _check_column(column, role, n_rows, path, labels=labels and role == "target")
                    if role == "target":
                        # Float targets as float64; integer labels keep their type; text labels become str.
                        y_dtype = (object if _is_text(column.dtype) else
                                   np.float64 if column.dtype.kind == "f" else column.dtype)
            start, stop = row_range(n_rows, comm.Get_size(), comm.Get_rank())
            # float32 stays float32 (half the memory); anything else becomes float64.
            x_dtype = np.float32 if X_ds.dtype == np.float32 else np.float64
            chunk_rows = X_ds.chunks[0] if X_ds.chunks else None
            reader = RowReader(path, {"x": x, "y": y, "sample_weight": sample_weight}, start, stop, n_rows,
                               X_ds.shape[1], x_dtype, y_dtype, chunk_rows, block_bytes)
    assert reader is not None
    return reader


def read_rows(
    path: str | os.PathLike,
    *,
    x: str = "X",
    y: str | None = "y",
    sample_weight: str | None = None,
    comm: "Intracomm | None" = None,
    labels: bool = False,
) -> RowSlice:
    """Read this rank's rows of the feature, target and weight datasets.

    Collective over ``comm`` (two agreements): the metadata checks of
    :func:`open_rows`, then the read, whose failure on any rank (an I/O
    error, negative weights) is raised on all of them.  Parameters as for
    :func:`open_rows`.

    Returns
    -------
    RowSlice
    """
    comm = get_comm(comm)
    reader = open_rows(path, x=x, y=y, sample_weight=sample_weight, comm=comm, labels=labels)
    rows: RowSlice | None = None
    with collective_check(comm, f"reading {os.fspath(path)}"):
        rows = reader.result()
    assert rows is not None
    return rows


@contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path beside ``final``; rename it to ``final`` on success.

    On any error the temporary file is removed, so a reader never sees a
    half-written file under the final name and an older good file survives.
    """
    final = os.fspath(final)
    directory = os.path.dirname(os.path.abspath(final))
    if not os.path.isdir(directory):
        raise MpitrainError(f"cannot write {final}: directory {directory} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(final)}.", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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
