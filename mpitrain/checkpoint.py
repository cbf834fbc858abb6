"""Checkpoint and restart of long fits.

Long jobs die: time limits, preemption, node failures.  Inside a
:func:`checkpointing` context, the iterative loops of mpitrain (the
quasi-Newton iterations of the exact classifiers, the averaging rounds of
SGD, the passes of the cascade SVMs (and the layers of their first pass),
the blocks of the streamed exact least squares of ``mpitrain train``) save
their state to one file, written by rank 0, and continue from it when the
context is entered again with ``resume=True``::

    from mpitrain.checkpoint import checkpointing

    with checkpointing("fit.ckpt", every=10, resume=True):
        model = LogisticRegression(C=10.0).fit(X_local, y_local)

Estimators fitted outside a context behave exactly as without this module;
no estimator signature changes.

When a checkpoint is saved.  Every loop calls :meth:`CheckpointLoop.step`
at its iteration boundaries, on every rank (it is collective).  A step saves
when ``every`` iterations have completed (``iteration % every == 0``), when
``seconds`` have passed on rank 0 since the last save, or when SIGTERM or
SIGUSR1 (Slurm's ``--signal``) reached *any* rank since the previous step:
the handlers only set a flag, and one tiny ``Allreduce`` per step makes the
decision the same on every rank.  After a save caused by a signal, every
rank raises :class:`CheckpointInterrupted`, whose exit status for the
command line is :data:`EXIT_CHECKPOINTED` (75, ``EX_TEMPFAIL`` of
``sysexits.h``: "temporary failure, retry").  A second SIGTERM before the
next boundary is not deferred again: the previous handler (by default,
termination) runs at once.

Atomic files.  Rank 0 writes the whole checkpoint to a temporary file in
the same directory, flushes it to disk (``fsync``) and renames it over the
old one, so the file under the final name is always a complete checkpoint
(old or new).  The file has mode 0600 whatever the umask (the cascade's
states hold raw rows).

Arrays and JSON, never pickles.  A checkpoint is one ``.npz`` archive read
with ``allow_pickle=False``: a JSON manifest (a uint8 array) describing each
loop's nested state, and the arrays it names (see :class:`_Frozen`).  The
few objects a loop keeps are stored by their attributes
(:class:`mpitrain.stats.StatisticsAccumulator` and
its ``PolynomialMap``) or, for estimators, as skops bytes loaded with
:data:`mpitrain.model_io.TRUSTED_TYPES`.  A file that is not such an
archive (a pickle planted at the path) is refused without being run.  A temporary file left by a killed job is removed when the
next run starts.  On success the context removes the checkpoint (``keep``
keeps it); on an error or interruption it stays for ``resume``.

Same run.  The file records a fingerprint of the run (given by the caller:
the command line gives the model, its parameters and the data file's path,
size and modification time) and, per loop, a key of the problem (estimator
parameters, shapes, classes, starting point).  A checkpoint that does not
match is refused with the same :class:`CheckpointError` on every rank,
naming what differs.

Same result.  A resumed fit continues from exactly the saved state:

* L-BFGS-B: :func:`lbfgsb` drives scipy's own L-BFGS-B routine step by
  step (the loop of ``scipy.optimize.minimize(method="L-BFGS-B")``), so its
  whole state (iterate, limited memory, line search) is saved and the
  resumed run takes bit-for-bit the iterates of the uninterrupted one.  On
  scipy older than 1.15, whose routine has another interface, it falls back
  to restarting scipy's minimiser from the saved iterate (same optimum
  within the solver's tolerance; the memory is rebuilt).
* SGD rounds: every rank's local SGD model is saved whole (coefficients,
  learning-rate counter, random state), so rounds continue bit for bit
  when ``random_state`` is fixed.  The same number of ranks is required.
* Cascade passes: the global support vectors, the ids of the margin
  violators, the dual objective and the report are saved: the next
  feedback pass is the same bit for bit (with the same number of ranks;
  with another number the dual objective's sum is rounded differently).
  Within the first pass, at the boundaries between the layers of its
  tree, every rank's surviving rows (kept on rank 0): the next merge is
  the same bit for bit; the same number of ranks is required.
* Streamed statistics: every rank's partial sums and rows done, in fixed
  blocks aligned to the file; the same number of ranks is required.

The module calls MPI only through :mod:`mpitrain.comm`.
"""

from __future__ import annotations

import contextvars
import json
import os
import signal
import threading
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from mpitrain.comm import (
    allreduce_minmax,
    bcast_array,
    bcast_object,
    collective_check,
    gather_object,
    get_comm,
    library_comm,
    scatter_object,
)
from mpitrain.errors import MpitrainError

if TYPE_CHECKING:  # pragma: no cover
    from mpi4py.MPI import Intracomm


#: Exit status of ``mpitrain train`` after a checkpoint caused by a signal:
#: ``EX_TEMPFAIL`` of ``sysexits.h`` ("temporary failure; the user is invited
#: to retry"), distinct from 0 (done), 1 (error) and 2 (usage).
EXIT_CHECKPOINTED = 75

#: Signals that ask for a checkpoint and a stop at the next iteration boundary.
CHECKPOINT_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

_FORMAT = "mpitrain-checkpoint"
_VERSION = 1

_CURRENT: contextvars.ContextVar[Checkpoint | None] = contextvars.ContextVar(
    "mpitrain_checkpoint", default=None
)


class CheckpointError(MpitrainError):
    """A checkpoint cannot be used: it exists without ``resume``, belongs to another run, or is unreadable.

    Raised identically on every rank.
    """


class CheckpointInterrupted(MpitrainError):
    """Raised on every rank after a signal made the ranks save a checkpoint and stop.

    Attributes
    ----------
    path : str
        The checkpoint file.
    iteration : int
        Iterations of the loop completed and saved.
    signal_name : str
        ``"SIGTERM"`` or ``"SIGUSR1"``.
    exit_status : int
        :data:`EXIT_CHECKPOINTED`, the command line's exit status.
    """

    exit_status = EXIT_CHECKPOINTED

    def __init__(
        self, message: str, *, path: str = "", iteration: int = 0, signal_name: str = ""
    ):
        super().__init__(message)
        self.path, self.iteration, self.signal_name = path, iteration, signal_name

    def __reduce__(self):
        # Keyword-only attributes survive pickling (a test harness, a pool).
        return (
            type(self),
            (str(self),),
            {
                "path": self.path,
                "iteration": self.iteration,
                "signal_name": self.signal_name,
            },
        )


# ----------------------------------------------------------------------------
# Signals


class _SignalFlag:
    """Handlers that only note that SIGTERM or SIGUSR1 arrived. Local.

    Python runs signal handlers in the main thread between bytecodes, so
    the handler cannot interrupt a collective half-way: it sets a flag that
    the next :meth:`CheckpointLoop.step` agrees on.  A second SIGTERM means
    "stop now": the previous handlers come back and the signal is raised again.
    """

    def __init__(self, signals: Iterable[int]):
        self.signals = tuple(signals)
        self.received = 0  # the first signal's number; 0 for none
        self._previous: dict[int, Any] = {}

    def install(self) -> bool:
        # signal.signal works in the main thread only; elsewhere signals keep their handlers.
        if threading.current_thread() is not threading.main_thread():
            return False
        for signum in self.signals:
            self._previous[signum] = signal.signal(signum, self._handle)
        return True

    def _handle(self, signum: int, frame) -> None:
        if self.received and signum == signal.SIGTERM:
            self.restore()
            os.kill(os.getpid(), signum)
            return
        if not self.received:
            self.received = signum

    def restore(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


# ----------------------------------------------------------------------------
# Comparing fingerprints and keys


def _canonical(value: Any) -> Any:
    """A plain, comparable form of a fingerprint or key value. Pure.

    Arrays become nested lists (with their dtype), tuples lists, mappings
    sorted lists of pairs; objects without a value semantics (a
    ``RandomState``) compare by type only.
    """
    if isinstance(value, Mapping):
        return [
            [str(k), _canonical(v)]
            for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))
        ]
    if isinstance(value, np.ndarray):
        return ["array", value.dtype.str, list(value.shape), _canonical(value.tolist())]
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return value
    return f"<{type(value).__module__}.{type(value).__qualname__}>"


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _differences(saved: Mapping, now: Mapping) -> list[str]:
    """Human-readable differences between two fingerprints or keys. Pure."""
    out = []
    for name in sorted(set(saved) | set(now), key=str):
        if name not in saved:
            out.append(f"{name} (not in the checkpoint)")
        elif name not in now:
            out.append(f"{name} (only in the checkpoint)")
        elif _canonical(saved[name]) != _canonical(now[name]):
            out.append(
                f"{name}: checkpoint {_short(saved[name])}, now {_short(now[name])}"
            )
    return out


# ----------------------------------------------------------------------------
# Files


def _temporary_files(path: str) -> list[str]:
    """Temporary files that :func:`mpitrain.data.atomic_path` makes for ``path``. Local."""
    directory = os.path.dirname(os.path.abspath(path))
    prefix = f".{os.path.basename(path)}."
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    return [
        os.path.join(directory, n)
        for n in names
        if n.startswith(prefix) and n.endswith(".tmp")
    ]


# ----------------------------------------------------------------------------
# States as arrays and JSON (never pickles)


class _Frozen:
    """A value as a JSON tree and the numpy arrays it refers to (copies). Pure.

    The tree's leaves are JSON's own values (``None``, ``bool``, ``int``,
    ``str``); everything else is a one-key object: ``{"f": float.hex()}``
    (exact, NaN and infinities included), ``{"l": [...]}``, ``{"t": [...]}``,
    ``{"d": [[key, value], ...]}``, ``{"a": i}`` (an array of numbers,
    booleans or text), ``{"g": i}`` (a numpy scalar, as a 0-d array),
    ``{"b": i}`` (bytes, as uint8), ``{"O": [...], "shape": [...]}`` (an
    object array, element by element), ``{"e": i}`` (a fitted estimator as
    the bytes of a skops file, see :mod:`mpitrain.model_io`) and
    ``{"o": class name, "state": ...}`` (one of the few mpitrain objects in
    :data:`_STATE_CLASSES`).
    """

    __slots__ = ("tree", "arrays")

    def __init__(self, tree: Any, arrays: list[np.ndarray]):
        self.tree, self.arrays = tree, arrays


def _state_classes() -> dict[str, type]:
    """The mpitrain objects a checkpoint may hold, by name. Local (imports)."""
    from mpitrain.stats import PolynomialMap, StatisticsAccumulator

    return {
        "StatisticsAccumulator": StatisticsAccumulator,
        "PolynomialMap": PolynomialMap,
    }


def _freeze(value: Any) -> _Frozen:
    """``value`` as a JSON tree and copies of its arrays. Pure.

    Raises TypeError for a value that has no such form (a function, an
    object that is neither an estimator nor in :data:`_STATE_CLASSES`).
    """
    arrays: list[np.ndarray] = []
    classes = _state_classes()

    def add(array: np.ndarray) -> int:
        arrays.append(np.array(array, copy=True))
        return len(arrays) - 1

    def enc(v: Any) -> Any:
        if v is None or isinstance(v, (bool, str)):
            return v if not isinstance(v, np.generic) else {"g": add(np.asarray(v))}
        if isinstance(v, int) and not isinstance(v, np.generic):
            return int(v)
        if isinstance(v, float) and not isinstance(v, np.generic):
            return {"f": float(v).hex()}
        if isinstance(v, np.generic):
            if v.dtype.kind == "O":
                raise TypeError("cannot checkpoint a numpy object scalar")
            return {"g": add(np.asarray(v))}
        if isinstance(v, np.ndarray):
            if v.dtype.kind == "O":
                return {
                    "O": [enc(x) for x in v.ravel().tolist()],
                    "shape": list(v.shape),
                }
            if v.dtype.kind not in "biufcUSmM" or v.dtype.fields is not None:
                raise TypeError(f"cannot checkpoint an array of dtype {v.dtype}")
            return {"a": add(v)}
        if isinstance(v, (bytes, bytearray)):
            return {"b": add(np.frombuffer(bytes(v), dtype=np.uint8))}
        if isinstance(v, tuple):
            return {"t": [enc(x) for x in v]}
        if isinstance(v, list):
            return {"l": [enc(x) for x in v]}
        if isinstance(v, Mapping):
            return {"d": [[enc(k), enc(x)] for k, x in v.items()]}
        name = type(v).__name__
        if name in classes and type(v) is classes[name]:
            state = v.__getstate__() if hasattr(v, "__getstate__") else vars(v)
            return {"o": name, "state": enc(dict(state or {}))}
        if hasattr(v, "get_params") and hasattr(v, "fit"):
            from mpitrain.model_io import model_to_bytes

            blob = model_to_bytes(v)
            return {"e": add(np.frombuffer(blob, dtype=np.uint8))}
        raise TypeError(
            f"cannot checkpoint a {type(v).__module__}.{type(v).__qualname__}: a "
            "checkpoint holds arrays, numbers, text, containers, estimators and "
            f"{', '.join(sorted(classes))} only"
        )

    return _Frozen(enc(value), arrays)


def _decode(frozen: _Frozen, what: str = "the checkpoint") -> Any:
    """The value of :func:`_freeze`. Pure; builds no object outside its allow-lists.

    Raises CheckpointError for a tree it does not know.
    """
    arrays = frozen.arrays
    classes = _state_classes()

    def array(i: Any) -> np.ndarray:
        if not isinstance(i, int) or not 0 <= i < len(arrays):
            raise CheckpointError(f"{what} refers to an array it does not hold")
        return arrays[i]

    def dec(node: Any) -> Any:
        if node is None or isinstance(node, (bool, int, str)):
            return node
        if not isinstance(node, dict) or not node:
            raise CheckpointError(f"{what} holds a value mpitrain did not write")
        tag = next(iter(node))
        body = node[tag]
        if tag == "f":
            return float.fromhex(body)
        if tag == "a":
            return array(body).copy()
        if tag == "g":
            return array(body)[()]
        if tag == "b":
            return array(body).tobytes()
        if tag == "t":
            return tuple(dec(x) for x in body)
        if tag == "l":
            return [dec(x) for x in body]
        if tag == "d":
            return {dec(k): dec(x) for k, x in body}
        if tag == "O":
            out = np.empty(len(body), dtype=object)
            out[:] = [dec(x) for x in body]
            return out.reshape(node["shape"])
        if tag == "o" and body in classes:
            cls = classes[body]
            obj = cls.__new__(cls)
            state = dec(node["state"])
            if hasattr(obj, "__setstate__"):
                obj.__setstate__(state)
            else:
                obj.__dict__.update(state)
            return obj
        if tag == "e":
            from mpitrain.model_io import UntrustedModelError, model_from_bytes

            try:
                return model_from_bytes(
                    array(body).tobytes(), what=f"an estimator in {what}"
                )
            except UntrustedModelError as exc:
                raise CheckpointError(str(exc)) from None
        raise CheckpointError(f"{what} holds a value mpitrain did not write ({tag!r})")

    return dec(frozen.tree)


def _thaw(frozen: _Frozen, what: str = "the checkpoint") -> Any:
    """A loop's saved state (:func:`_decode`), when the loop asks for it. Pure."""
    return _decode(frozen, what)


def _write_atomically(path: str, content: dict) -> int:
    """Write a checkpoint: temporary file (mode 0600), fsync, rename, fsync of the directory. Local.

    One ``.npz`` archive (``numpy.savez``): the manifest, a JSON text as a
    uint8 array, and every state's arrays, named by the manifest.  The file
    is created with mode 0600 whatever the umask: states may hold raw rows
    (the cascade's).  :func:`mpitrain.data.atomic_path` does the syncs and
    the rename.  Returns the bytes written.
    """
    from mpitrain.data import atomic_path

    arrays: dict[str, np.ndarray] = {}

    def place(frozen: _Frozen, prefix: str) -> dict:
        for i, a in enumerate(frozen.arrays):
            arrays[f"{prefix}{i}"] = a
        return {"tree": frozen.tree, "arrays": len(frozen.arrays), "prefix": prefix}

    manifest = {
        "format": content["format"],
        "version": content["version"],
        "fingerprint": place(_freeze(content["fingerprint"]), "fingerprint_"),
        "loops": {},
    }
    for k, (loop_id, entry) in enumerate(content["loops"].items()):
        manifest["loops"][loop_id] = {
            **{
                n: entry[n]
                for n in ("name", "what", "unit", "iteration", "mode", "ranks")
            },
            "key": place(_freeze(entry["key"]), f"key{k}_"),
            "state": place(entry["state"], f"state{k}_"),
        }
    text = json.dumps(manifest, allow_nan=False).encode()
    arrays["manifest"] = np.frombuffer(text, dtype=np.uint8)
    with atomic_path(path, private=True) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
            size = f.tell()
    return size


def _read(path: str) -> dict:
    """Load and check a checkpoint file; never unpickles. Local; raises CheckpointError.

    The states stay frozen (:class:`_Frozen`) until a loop asks for its own.
    """
    with open(path, "rb") as f:
        head = f.read(4)
    if head != b"PK\x03\x04":
        what = (
            "it is a pickle, which mpitrain never loads: loading one can run any code"
            if head[:1] == b"\x80"
            else "a checkpoint is an .npz archive of arrays and JSON"
        )
        raise CheckpointError(
            f"{path} is not an mpitrain checkpoint ({what}); remove it or choose "
            "another path"
        )
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
        manifest = json.loads(arrays.pop("manifest").tobytes().decode())
    except Exception as exc:
        raise CheckpointError(
            f"cannot read the checkpoint {path} ({type(exc).__name__}: {exc}); "
            "remove it to start again"
        ) from None
    if not isinstance(manifest, dict) or manifest.get("format") != _FORMAT:
        raise CheckpointError(
            f"{path} is not an mpitrain checkpoint; remove it or choose another path"
        )
    if manifest.get("version") != _VERSION:
        raise CheckpointError(
            f"the checkpoint {path} has format version {manifest.get('version')}, this "
            f"mpitrain reads version {_VERSION}; remove it to start again"
        )

    def take(placed: Any) -> _Frozen:
        try:
            prefix, count = placed["prefix"], int(placed["arrays"])
            return _Frozen(
                placed["tree"], [arrays[f"{prefix}{i}"] for i in range(count)]
            )
        except Exception:
            raise CheckpointError(
                f"the checkpoint {path} is damaged (an array is missing); remove it to start again"
            ) from None

    what = f"the checkpoint {path}"
    loops = {}
    for loop_id, entry in manifest.get("loops", {}).items():
        loops[loop_id] = {
            **entry,
            "key": _decode(take(entry["key"]), what),
            "state": take(entry["state"]),
        }
    return {
        "format": _FORMAT,
        "version": _VERSION,
        "fingerprint": _decode(take(manifest["fingerprint"]), what),
        "loops": loops,
    }


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The content of a checkpoint file, every state decoded. Local.

    ``{"format", "version", "fingerprint", "loops": {loop id: {"name",
    "what", "unit", "iteration", "mode", "ranks", "key", "state"}}}``.  For
    inspection and tests; nothing in it is unpickled.

    Raises
    ------
    CheckpointError
        The file is not a checkpoint mpitrain wrote, or is damaged.
    """
    path = os.fspath(path)
    content = _read(path)
    for entry in content["loops"].values():
        entry["state"] = _thaw(entry["state"], f"the checkpoint {path}")
    return content


def _format_bytes(n: float) -> str:
    from mpitrain.report import format_bytes

    return format_bytes(n)


# ----------------------------------------------------------------------------
# Moving states between ranks


def _bcast_state(state: Any, comm: Intracomm) -> Any:
    """Rank 0's state on every rank. Collective over ``comm``.

    A dict's numeric arrays travel as buffers (``Bcast``), everything else
    (small metadata) pickled in one ``bcast``.
    """
    rank = comm.Get_rank()
    layout = None
    if rank == 0:
        if isinstance(state, dict):
            layout = {
                k: (
                    ("array", v.shape, v.dtype.str)
                    if isinstance(v, np.ndarray) and v.dtype.kind in "biuf"
                    else ("value", v)
                )
                for k, v in state.items()
            }
        else:
            layout = ("whole", state)
    layout = bcast_object(layout, comm)
    if isinstance(layout, tuple):
        return layout[1]
    out = {}
    # Every rank allocates its buffers, and the ranks agree on that, before
    # any array moves: a rank that cannot would never join the broadcasts.
    with collective_check(comm, "allocating the saved state"):
        for name, spec in layout.items():
            if spec[0] == "value":
                out[name] = spec[1]
            elif rank == 0:
                out[name] = np.ascontiguousarray(state[name])
            else:
                out[name] = np.empty(spec[1], dtype=np.dtype(spec[2]))
    for name, spec in layout.items():
        if spec[0] == "array" and out[name].size:
            bcast_array(out[name], comm)
    return out


# ----------------------------------------------------------------------------
# The checkpoint and its loops


class Checkpoint:
    """A checkpoint file shared by the iterative loops run inside it.

    Use it as a context manager (see :func:`checkpointing`).  Entering is
    collective over ``comm``; leaving communicates nothing (so an error on
    some ranks only cannot leave the others waiting there).

    Parameters
    ----------
    path : str or path-like
        The checkpoint file, written by rank 0.  Its directory must exist.
    every : int or None, default=None
        Save after every ``every``-th iteration of a loop (its iterations,
        rounds, passes or blocks).
    seconds : float or None, default=None
        Save when this many seconds have passed on rank 0 since the last
        save (checked at iteration boundaries).
    resume : bool, default=False
        Continue from ``path`` if it exists (start from the beginning if it
        does not).  Without ``resume`` an existing file is an error, so that
        a forgotten checkpoint is never silently overwritten.
    fingerprint : mapping, default=None
        What identifies the run (command, model, parameters, data); a
        checkpoint with another fingerprint is refused.
    comm : mpi4py.MPI.Intracomm, default=None
        ``None`` means ``COMM_WORLD``.  The fits inside must use
        communicators of the same ranks.
    keep : bool, default=False
        Keep the file when the context ends without an error.
    signals : iterable of int, default=(SIGTERM, SIGUSR1)
        Signals that ask for a checkpoint and a stop.  Handlers are installed
        only when the context is entered in the main thread.
    log : callable, default=None
        ``log(text)`` for progress lines (called on rank 0 only).

    Attributes
    ----------
    resumed : bool
        A checkpoint was found and accepted when the context was entered.
    saves : int
        Checkpoints written so far.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        every: int | None = None,
        seconds: float | None = None,
        resume: bool = False,
        fingerprint: Mapping[str, Any] | None = None,
        comm: Intracomm | None = None,
        keep: bool = False,
        signals: Iterable[int] = CHECKPOINT_SIGNALS,
        log: Callable[[str], None] | None = None,
    ):
        if every is not None and int(every) < 1:
            raise ValueError(
                f"every must be a positive number of iterations, got {every}"
            )
        if seconds is not None and not float(seconds) >= 0:
            raise ValueError(f"seconds must be non-negative, got {seconds}")
        self.path = os.fspath(path)
        self.every = None if every is None else int(every)
        self.seconds = None if not seconds else float(seconds)
        self.resume = bool(resume)
        self.fingerprint = dict(fingerprint or {})
        self.comm = comm
        self.keep = keep
        self.log = log
        self.resumed = False
        self.saves = 0
        self._signal_numbers = tuple(signals)
        self._signals = _SignalFlag(self._signal_numbers)
        self._content: dict | None = None  # rank 0 only: what the file holds
        self._ordinals: dict[str, int] = defaultdict(int)
        self._size = 0
        self._rank = 0
        self._last_save = 0.0
        self._token: contextvars.Token | None = None
        self._acted_on_signal = False

    # -- entering and leaving ---------------------------------------------------

    def __enter__(self) -> Checkpoint:
        """Check the file on rank 0, agree, install the signal handlers. Collective over ``comm``."""
        if _CURRENT.get() is not None:
            raise RuntimeError("checkpointing contexts do not nest")
        comm = get_comm(self.comm)
        self._size, self._rank = comm.Get_size(), comm.Get_rank()
        # Entering again starts afresh: loops are counted, and signals noted, per entry.
        self._ordinals.clear()
        self._signals = _SignalFlag(self._signal_numbers)
        self._acted_on_signal = False
        with library_comm(comm) as lib:
            verdict: tuple[str | None, str | None] = (None, None)
            if self._rank == 0:
                try:
                    verdict = (None, self._open_on_root())
                except CheckpointError as exc:
                    verdict = (str(exc), None)
                except Exception as exc:
                    verdict = (
                        f"cannot use the checkpoint {self.path}: {type(exc).__name__}: {exc}",
                        None,
                    )
                # Logged before the verdict travels, so that a log that cannot
                # be written fails on every rank, not on rank 0 alone.
                if verdict[1] and self.log is not None:
                    try:
                        self.log(verdict[1])
                    except Exception as exc:
                        verdict = (
                            f"cannot write the log line {verdict[1]!r}: "
                            f"{type(exc).__name__}: {exc}",
                            None,
                        )
            error, note = bcast_object(verdict, lib)
        if error is not None:
            raise CheckpointError(error)
        self.resumed = note is not None and note.startswith("resuming")
        self._signals.install()
        self._last_save = time.monotonic()
        self._token = _CURRENT.set(self)
        return self

    def _open_on_root(self) -> str | None:
        """Rank 0: clean up, load or refuse the file. Returns a note for the log."""
        directory = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(directory):
            raise CheckpointError(
                f"cannot write the checkpoint {self.path}: directory {directory} does not exist"
            )
        if not os.access(directory, os.W_OK):
            raise CheckpointError(
                f"cannot write the checkpoint {self.path}: directory {directory} is not writable"
            )
        # A job killed while writing leaves its temporary file: never a checkpoint, remove it.
        for stale in _temporary_files(self.path):
            try:
                os.unlink(stale)
            except OSError:
                pass
        fresh = {
            "format": _FORMAT,
            "version": _VERSION,
            "fingerprint": self.fingerprint,
            "loops": {},
        }
        if not os.path.exists(self.path):
            self._content = fresh
            return (
                f"no checkpoint at {self.path} yet: starting from the beginning"
                if self.resume
                else None
            )
        if not self.resume:
            raise CheckpointError(
                f"the checkpoint {self.path} exists: pass --resume (resume=True) to continue "
                "from it, or remove it to start again"
            )
        content = _read(self.path)
        differ = _differences(content.get("fingerprint", {}), self.fingerprint)
        if differ:
            raise CheckpointError(
                f"the checkpoint {self.path} belongs to a different run ({'; '.join(differ)}); "
                "remove it, or choose another checkpoint path"
            )
        self._content = content
        loops = ", ".join(
            f"{e['what']} {e['unit']} {e['iteration']}"
            for e in content["loops"].values()
        )
        return (
            f"resuming from the checkpoint {self.path} ({loops or 'no loop saved yet'})"
        )

    def __exit__(self, exc_type, exc, tb) -> bool:
        """Restore the handlers; on success remove the file (rank 0). Local: no communication.

        No collective here: an error on some ranks only must not leave the
        others waiting in ``__exit__``.
        """
        self._signals.restore()
        if self._token is not None:
            _CURRENT.reset(self._token)
            self._token = None
        if exc_type is None and self._rank == 0:
            # The work is done on every rank: a log line or a removal that
            # fails here only warns, as raising on rank 0 alone would send it
            # down another path than the others.
            try:
                if (
                    self._signals.received
                    and not self._acted_on_signal
                    and self.log is not None
                ):
                    self.log(
                        f"{_signal_name(self._signals.received)} arrived after the last iteration boundary; "
                        "the work was completed"
                    )
                if not self.keep and os.path.exists(self.path):
                    os.unlink(self.path)
            except Exception as exc:
                warnings.warn(
                    f"the work is done, but finishing the checkpoint {self.path} failed "
                    f"({type(exc).__name__}: {exc}); remove it before the next run",
                    RuntimeWarning,
                    stacklevel=2,
                )
        return False

    # -- loops ---------------------------------------------------------------------

    def loop(
        self,
        name: str,
        *,
        key: Mapping[str, Any],
        comm: Intracomm,
        mode: str = "all",
        what: str | None = None,
        unit: str = "iteration",
    ) -> CheckpointLoop:
        """Start (or resume) one iterative loop. Collective over ``comm``.

        Loops are told apart by ``name`` and by their order within the
        context (the second "lbfgs" loop of a run is another loop), so a
        program that runs its loops in the same order finds its own states.

        Parameters
        ----------
        name : str
            The kind of loop, e.g. ``"lbfgs"``.
        key : mapping
            What identifies the problem (parameters, shapes, classes, start);
            a saved state with another key is refused.
        comm : mpi4py.MPI.Intracomm
            The communicator the loop's ranks work on (same ranks as the
            checkpoint's).
        mode : {"all", "root", "per_rank"}, default="all"
            Whose state is saved and restored: ``"all"``, rank 0's, restored
            on every rank; ``"root"``, rank 0's, restored on rank 0 only;
            ``"per_rank"``, every rank's own (gathered to rank 0, scattered
            back; the number of ranks must match).
        what, unit : str
            For messages: ``f"{what} {unit} {iteration}"``.

        Returns
        -------
        CheckpointLoop
            With ``iteration`` and ``state`` from the file when resuming
            (``0`` and ``None`` otherwise).
        """
        if mode not in ("all", "root", "per_rank"):
            raise ValueError(f"mode must be 'all', 'root' or 'per_rank', got {mode!r}")
        if self._token is None:
            raise RuntimeError(
                "the checkpoint is not active: use it in a `with` statement"
            )
        size, rank = comm.Get_size(), comm.Get_rank()
        if size != self._size:
            raise ValueError(
                f"the fit runs on {size} ranks but the checkpoint was opened on {self._size}: "
                "use communicators of the same ranks"
            )
        what = what or name
        loop_id = f"{name}:{self._ordinals[name]}"
        self._ordinals[name] += 1
        answer: tuple[str | None, int] = (None, 0)
        entry = None
        if rank == 0:
            entry = (
                self._content["loops"].get(loop_id)
                if self._content is not None
                else None
            )
            if entry is not None:
                differ = _differences(entry["key"], key)
                if differ:
                    answer = (
                        f"the checkpoint {self.path} holds another {what} problem ({'; '.join(differ)}); "
                        "remove it, or choose another checkpoint path",
                        0,
                    )
                elif mode == "per_rank" and entry["ranks"] != size:
                    answer = (
                        f"the checkpoint {self.path} holds the per-rank state of {what} on {entry['ranks']} "
                        f"ranks; it can only be resumed on {entry['ranks']} ranks, not {size} (or remove it "
                        "to start again)",
                        0,
                    )
                else:
                    answer = (None, int(entry["iteration"]))
        error, iteration = bcast_object(answer, comm)
        if error is not None:
            raise CheckpointError(error)
        state = None
        if iteration > 0:
            saved = None
            # Rank 0 alone loads (and logs) between two collectives: its
            # failure (a damaged state, no memory for it) is agreed, so the
            # other ranks raise it too instead of waiting in the broadcast.
            with collective_check(
                comm, f"loading the saved state of {what} from {self.path}"
            ):
                if rank == 0:
                    saved = _thaw(entry["state"], f"the checkpoint {self.path}")
                    if self.log is not None:
                        self.log(f"resuming {what} after {unit} {iteration}")
            if mode == "root":
                state = saved
            elif mode == "all":
                state = _bcast_state(saved, comm)
            else:
                state = scatter_object(saved, comm)
        # Kept in its plain form: the caller's arrays may change afterwards.
        plain_key = {str(k): _canonical(v) for k, v in key.items()}
        return CheckpointLoop(
            self, loop_id, plain_key, comm, mode, iteration, state, what, unit
        )

    # -- used by the loops -------------------------------------------------------------

    def _due_by_time(self) -> bool:
        return (
            self.seconds is not None
            and time.monotonic() - self._last_save >= self.seconds
        )

    def _save_on_root(self, loop: CheckpointLoop, iteration: int, state: Any) -> None:
        """Rank 0: put the loop's state in the content and write the whole file atomically."""
        assert self._content is not None
        # Frozen now (arrays copied): the loop goes on changing its objects, and
        # later saves (of this or another loop) rewrite the whole file.
        frozen = _freeze(state)
        self._content["loops"][loop.id] = {
            "name": loop.id.split(":")[0],
            "key": loop.key,
            "what": loop.what,
            "unit": loop.unit,
            "iteration": iteration,
            "mode": loop.mode,
            "ranks": loop.comm.Get_size(),
            "state": frozen,
        }
        tic = time.perf_counter()
        size = _write_atomically(self.path, self._content)
        if self.log is not None:
            self.log(
                f"checkpoint: {loop.what} {loop.unit} {iteration} saved to {self.path} "
                f"({_format_bytes(size)} in {time.perf_counter() - tic:.2f} s)"
            )


class CheckpointLoop:
    """One iterative loop of a :class:`Checkpoint`; made by :meth:`Checkpoint.loop`.

    Attributes
    ----------
    iteration : int
        Iterations completed: restored from the file when resuming, then
        advanced by :meth:`step`.
    state : object or None
        The restored state (see ``mode`` of :meth:`Checkpoint.loop`), ``None``
        when starting from the beginning (and off rank 0 in mode "root").
    resumed : bool
        The loop continues from a saved state.
    """

    def __init__(
        self,
        checkpoint: Checkpoint,
        loop_id: str,
        key: dict,
        comm: Intracomm,
        mode: str,
        iteration: int,
        state: Any,
        what: str,
        unit: str,
    ):
        self.checkpoint, self.id, self.key, self.comm, self.mode = (
            checkpoint,
            loop_id,
            key,
            comm,
            mode,
        )
        self.iteration, self.state, self.what, self.unit = iteration, state, what, unit
        self.resumed = iteration > 0

    def step(
        self, state: Callable[[], Any] | None = None, iteration: int | None = None
    ) -> bool:
        """An iteration boundary: save if due, and stop if a signal asked for it. Collective over the loop's comm.

        Every rank calls it at the same boundaries.  One ``Allreduce`` of
        three numbers decides, the same on every rank, whether to save:
        ``every`` iterations completed, ``seconds`` passed on rank 0, or a
        signal reached some rank.  If so, ``state()`` is called on every
        rank (it may communicate), rank 0 writes the file, and any failure
        to write is raised on every rank.

        Parameters
        ----------
        state : callable or None
            ``state() -> object``: what to save, called only when saving, on
            every rank; in mode "all" and "root" rank 0's value is kept, in
            mode "per_rank" every rank's.  ``None`` saves ``None``.
        iteration : int, default=None
            Iterations completed now; ``None`` means one more than before.

        Returns
        -------
        bool
            Whether a checkpoint was written.

        Raises
        ------
        CheckpointInterrupted
            On every rank, after saving, if a signal arrived on any rank.
        """
        ck = self.checkpoint
        self.iteration = self.iteration + 1 if iteration is None else int(iteration)
        rank = self.comm.Get_rank()
        received = ck._signals.received
        flags = np.array(
            [
                1.0 if rank == 0 and ck._due_by_time() else 0.0,
                float(received),
                float(rank + 1) if received else 0.0,
            ]
        )
        _, top = allreduce_minmax(flags, self.comm)
        by_time, signum, signalled_rank = bool(top[0]), int(top[1]), int(top[2]) - 1
        periodic = by_time or (ck.every is not None and self.iteration % ck.every == 0)
        if not (periodic or signum):
            return False
        payload = state() if state is not None else None
        if self.mode == "per_rank":
            payload = gather_object(payload, self.comm)
        with collective_check(self.comm, f"writing the checkpoint {ck.path}"):
            if rank == 0:
                ck._save_on_root(self, self.iteration, payload)
        ck.saves += 1
        ck._last_save = time.monotonic()
        if signum:
            ck._acted_on_signal = True
            name = _signal_name(signum)
            where = (
                f" (received by rank {signalled_rank})"
                if self.comm.Get_size() > 1
                else ""
            )
            raise CheckpointInterrupted(
                f"stopped by {name}{where}: checkpointed {self.what} at {self.unit} {self.iteration} to {ck.path}; "
                "rerun with --resume (resume=True) to continue",
                path=ck.path,
                iteration=self.iteration,
                signal_name=name,
            )
        return True


def checkpointing(
    path: str | os.PathLike,
    *,
    every: int | None = None,
    seconds: float | None = None,
    resume: bool = False,
    fingerprint: Mapping[str, Any] | None = None,
    comm: Intracomm | None = None,
    keep: bool = False,
    log: Callable[[str], None] | None = None,
    signals: Iterable[int] = CHECKPOINT_SIGNALS,
) -> Checkpoint:
    """Checkpoint the iterative fits run inside a ``with`` block.

    Collective over ``comm`` on entering (rank 0 checks the file, every rank
    gets the verdict).  See :class:`Checkpoint` for the parameters and the
    module docstring for what is saved and how.

    Examples
    --------
    >>> with checkpointing("fit.ckpt", every=10, resume=True):   # doctest: +SKIP
    ...     model = LogisticRegression().fit(X_local, y_local)
    """
    return Checkpoint(
        path,
        every=every,
        seconds=seconds,
        resume=resume,
        fingerprint=fingerprint,
        comm=comm,
        keep=keep,
        log=log,
        signals=signals,
    )


def current_checkpoint() -> Checkpoint | None:
    """The active checkpoint of this thread's context, or ``None``. Local."""
    return _CURRENT.get()


def checkpoint_loop(
    name: str,
    *,
    key: Mapping[str, Any],
    comm: Intracomm,
    mode: str = "all",
    what: str | None = None,
    unit: str = "iteration",
) -> CheckpointLoop | None:
    """:meth:`Checkpoint.loop` of the active checkpoint, or ``None`` outside one.

    Collective over ``comm`` inside a context; nothing happens outside one.
    Every rank is inside the same context or none, as contexts are entered
    collectively.
    """
    checkpoint = _CURRENT.get()
    if checkpoint is None:
        return None
    return checkpoint.loop(name, key=key, comm=comm, mode=mode, what=what, unit=unit)
