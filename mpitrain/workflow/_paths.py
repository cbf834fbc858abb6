"""A command's inputs and outputs, checked before any work.

Every command that writes (``train``, ``predict``, ``evaluate --report``,
``describe --json``, ``make-data``, ``demo``) names its inputs (data files
and the files their datasets reach through external links or virtual
datasets, the model file) and its outputs (``--out``, ``--report``,
``--checkpoint``, ``--json``, the ``--plots`` folder and the PNG files it
writes there).  Before a row is read or a model fitted they are resolved
(``os.path.realpath``; ``os.path.samefile`` for existing files, so hard and
symbolic links count) and refused when an output is an input, two outputs
are one file, or an output cannot be written: :func:`path_problems` says
what is wrong (Local: it only looks at the file system), :func:`check_paths`
agrees on it across the ranks and raises one :class:`UsageError` on every
rank.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

from mpitrain.errors import DistributedError, UsageError

if TYPE_CHECKING:  # pragma: no cover
    from mpi4py.MPI import Intracomm

__all__ = [
    "Named",
    "path_problems",
    "check_paths",
    "data_inputs",
    "PLOT_SUFFIX",
]

#: The plots are PNG files directly inside the ``--plots`` folder; every file
#: of that folder with this suffix may be (over)written by a run.
PLOT_SUFFIX = ".png"


class Named(NamedTuple):
    """A path and the option that names it (``"--out"``, ``"DATA"``, ...).

    ``folder``: an output folder (``--plots``, the demo's ``--out``), made
    with its parents if missing, whose ``*.png`` files a run may replace.
    """

    option: str
    path: str | os.PathLike
    folder: bool = False


def _identity(path: str) -> tuple:
    """What makes two paths one file: device and inode if it exists, else the resolved path. Local."""
    try:
        st = os.stat(path)
    except OSError:
        return ("path", os.path.realpath(path))
    return ("inode", st.st_dev, st.st_ino)


def _describe(named: Named) -> str:
    shown = os.fspath(named.path)
    real = os.path.realpath(shown)
    return f"{named.option} {shown}" + (
        f" (that is {real})" if os.path.abspath(shown) != real else ""
    )


def _nearest_existing(path: str) -> str:
    """The longest existing prefix of ``path`` (``path`` itself if it exists). Local."""
    current = os.path.abspath(path)
    while not os.path.lexists(current):
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    return current


def _writable_directory(directory: str, named: Named, made: bool) -> str | None:
    """Why files cannot be made in ``directory`` (``None`` if they can). Local.

    ``made``: a missing directory is made (with its parents) by the run, so
    only its nearest existing ancestor must be a writable directory.
    """
    if os.path.isdir(directory):
        if not os.access(directory, os.W_OK | os.X_OK):
            return f"{_describe(named)}: the directory {directory} is not writable"
        return None
    existing = _nearest_existing(directory)
    if os.path.lexists(existing) and not os.path.isdir(existing):
        return f"{_describe(named)}: {existing} is not a directory" + (
            f", so {directory} cannot exist" if existing != directory else ""
        )
    if not made:
        return f"{_describe(named)}: the directory {directory} does not exist"
    if not os.access(existing, os.W_OK | os.X_OK):
        return (
            f"{_describe(named)}: {directory} does not exist and cannot be made "
            f"({existing} is not writable)"
        )
    return None


def _cannot_create_in(directory: str, named: Named) -> str | None:
    """Why no file can be created in the existing ``directory`` (``None`` if one can). Local.

    Creates and removes one empty file there: permissions say yes on file
    systems that refuse new files all the same (``/proc``, a read-only
    mount, a full quota, or anything as root).
    """
    import tempfile

    try:
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".mpitrain-probe-"):
            pass
    except OSError as exc:
        return (
            f"{_describe(named)}: no file can be created in {directory} "
            f"({exc.strerror or exc})"
        )
    return None


def path_problems(
    inputs: Sequence[Named], outputs: Sequence[Named], *, probe: bool = False
) -> list[str]:
    """What is wrong with a command's inputs and outputs; empty if nothing. Local.

    Looks only at the file system (no MPI); nothing is written, except
    with ``probe``: then one empty file is created and removed in each
    existing output directory, to find directories that refuse new files
    whatever their permissions say.  Refused:

    * an output that is an input (same file by inode, or by resolved path
      for files that do not exist yet), and a PNG file an output folder
      would replace that is an input or another output;
    * two outputs that are the same file;
    * an output file whose directory does not exist or is not writable
      (or, with ``probe``, refuses a new file), an output file that is a
      directory or exists and is not writable;
    * an output folder that exists and is not a directory, is not writable,
      or cannot be made (its nearest existing ancestor is not a writable
      directory).

    Missing inputs are not reported here: reading them says why.

    Parameters
    ----------
    inputs, outputs : sequence of Named
        ``None`` paths are skipped (options not given).

    Returns
    -------
    list of str
        One sentence per problem, naming the options and both paths.
    """
    inputs = [n for n in inputs if n.path is not None]
    outputs = [n for n in outputs if n.path is not None]
    problems: list[str] = []
    input_ids = [(_identity(os.fspath(n.path)), n) for n in inputs]
    seen_outputs: list[tuple[tuple, Named]] = []
    folders = [n for n in outputs if n.folder]
    for out in outputs:
        path = os.fspath(out.path)
        ident = _identity(path)
        for other_id, source in input_ids:
            if other_id == ident:
                problems.append(
                    f"{_describe(out)} is the input {_describe(source)}: writing it "
                    "would destroy it; choose another path"
                )
        for other_id, other in seen_outputs:
            if other_id == ident:
                problems.append(
                    f"{_describe(other)} and {_describe(out)} are the same file: "
                    "one would overwrite the other; choose two paths"
                )
        seen_outputs.append((ident, out))
        if out.folder:
            if os.path.lexists(path) and not os.path.isdir(path):
                problems.append(
                    f"{_describe(out)} exists and is not a directory; name a folder"
                )
            else:
                why = _writable_directory(os.path.abspath(path), out, made=True)
                if why:
                    problems.append(why)
            continue
        if os.path.isdir(path):
            problems.append(f"{_describe(out)} is a directory; name a file")
            continue
        directory = os.path.dirname(os.path.abspath(path))
        why = _writable_directory(directory, out, made=False) or (
            _cannot_create_in(directory, out) if probe else None
        )
        if why:
            problems.append(why)
        elif os.path.exists(path) and not os.access(path, os.W_OK):
            problems.append(f"{_describe(out)} exists and is not writable")
    # The plots: files of an output folder that a run may replace.
    for folder in folders:
        real = os.path.realpath(os.fspath(folder.path))
        for other in [*inputs, *(n for n in outputs if not n.folder)]:
            path = os.path.realpath(os.fspath(other.path))
            if os.path.dirname(path) == real and path.endswith(PLOT_SUFFIX):
                role = "the input" if other in inputs else "the output"
                problems.append(
                    f"{_describe(folder)} would hold plots named *{PLOT_SUFFIX}, and "
                    f"{role} {_describe(other)} is one of its {PLOT_SUFFIX} files; "
                    "choose another folder or name"
                )
    return problems


def data_inputs(
    data, datasets: Sequence[str | None], option: str = "DATA"
) -> list[Named]:
    """The files a data set reads: its files (patterns expanded) and what their datasets link to. Local.

    Reads HDF5 metadata only (:func:`mpitrain.data.fingerprint_files`);
    never raises for a file that cannot be read (reading it says why).
    """
    from mpitrain.data import fingerprint_files

    return [
        Named(
            option
            if entry["via"] is None
            else f"{option} (read by {entry['via']} through a link)",
            entry["path"],
        )
        for entry in fingerprint_files(data, list(datasets))
    ]


def check_paths(
    comm: Intracomm, command: str, inputs: Sequence[Named], outputs: Sequence[Named]
) -> None:
    """Refuse, on every rank, a command whose outputs would destroy inputs or cannot be written.

    Collective over ``comm`` (one small agreement): every rank checks what
    it sees (nodes may see other file systems), and any problem on any rank
    is raised as the same :class:`~mpitrain.errors.UsageError` on every
    rank, naming the ranks, before any work.
    """
    from mpitrain.comm import agree

    failure: BaseException | None = None
    try:
        # Rank 0 writes the outputs' files: it alone probes their directories
        # (one file each, not one per rank on a shared file system).
        problems = path_problems(inputs, outputs, probe=comm.Get_rank() == 0)
        if problems:
            failure = UsageError("; ".join(problems))
    except Exception as exc:  # a file system error: agreed like a problem
        failure = exc
    try:
        agree(failure, comm, f"checking the files of {command}", quiet=False)
    except DistributedError as exc:
        raise UsageError(str(exc)) from failure
