"""What an HDF5 dataset really reads, checked from its metadata before reading it.

A dataset's values may come from other files (external links, virtual
datasets, external raw storage), may never have been written (chunks or
storage never allocated read as the fill value, silently), or may
decompress to far more memory than a block (one huge chunk, or chunks one
column wide that every block needs all of).  These checks read metadata
only; :func:`mpitrain.data.open_rows` runs them on rank 0 and broadcasts the
outcome, so every rank raises the same error.

The rules, and why:

- **External links** are refused unless ``external_files=True``: a file
  whose datasets point to another file reads data the user did not name.
  Soft links are followed inside the file.
- **Virtual datasets** may read source files in the input's directory (or
  below it), the usual layout of a data set split into parts; a source
  elsewhere is refused unless ``external_files=True``.  A source file or
  dataset that is missing, smaller than its mapping, or an extent mapped to
  no source is refused: HDF5 reads those as the fill value, silently.
- **External raw storage** (``H5Pset_external``) is refused unless
  ``external_files=True``, for the same reason as external links.
- **Unwritten storage**: chunks (or contiguous storage) never written read
  as the dataset's fill value.  That is refused, naming the rows, unless
  the fill value is NaN: then the unwritten rows read as missing values,
  which the missing-value checks and options see.  A dataset whose
  declared size exceeds what it stores by :data:`IMPLAUSIBLE_RATIO` and
  which is mostly unwritten is refused even then: reading it would mean
  reading a declared shape that nothing backs (a 1.6 kB file declaring
  10¹² rows).
- **Decompressed chunks**: HDF5 decompresses a whole chunk to read any part
  of it, and when blocks cut chunks (chunks taller than a block) the chunks
  a block needs across all columns stay cached so that each is
  decompressed once.  That memory, per rank, may not exceed
  ``max_chunk_bytes`` (:data:`CHUNK_BYTES_LIMIT` by default); above it the
  file is refused with advice to re-chunk it (``h5repack -l``).
"""

from __future__ import annotations

import math
import os
import posixpath
from typing import Any

import numpy as np

from mpitrain.errors import MpitrainError

__all__ = [
    "CHUNK_BYTES_LIMIT",
    "IMPLAUSIBLE_RATIO",
    "resolve_dataset",
    "check_dataset",
    "band_bytes",
    "column_chunk_bytes",
    "linked_files",
    "refuse_chunks",
]

#: Bytes of decompressed chunks a rank may hold to read one dataset.
CHUNK_BYTES_LIMIT = 256 << 20

#: Declared raw bytes per stored byte beyond which a mostly unwritten
#: dataset is refused: zlib cannot compress better than about 1032:1.
IMPLAUSIBLE_RATIO = 1000

# Soft links followed before a path is taken for a loop.
_MAX_LINK_HOPS = 40

# Virtual datasets whose sources are virtual datasets, followed this deep.
_MAX_VIRTUAL_DEPTH = 8


def _format_bytes(n: float) -> str:
    from mpitrain.report import format_bytes

    return format_bytes(n)


def _datasets_in(f) -> list[str]:
    """Names of the datasets stored in ``f`` (reached by hard links)."""
    import h5py

    found: list[str] = []
    f.visititems(
        lambda n, obj: found.append(n) if isinstance(obj, h5py.Dataset) else None
    )
    return found


def resolve_dataset(f, name: str, path: str, *, external_files: bool = False):
    """The dataset ``name`` of the open file ``f``, following its links. Local.

    Every component of ``name`` is resolved in turn: soft links are
    followed inside the file; an external link is refused unless
    ``external_files`` (then h5py follows it).

    Raises
    ------
    MpitrainError
        If the name leads nowhere (naming the datasets the file has), to a
        group, through an external link (unless allowed), or around a loop
        of soft links.
    """
    import h5py

    def missing(what: str) -> MpitrainError:
        return MpitrainError(
            f"{path} has no dataset {name!r}{what}; it has: "
            f"{', '.join(_datasets_in(f)) or 'none'}"
        )

    parts = [p for p in name.split("/") if p and p != "."]
    current, hops = "/", 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            current = posixpath.dirname(current.rstrip("/")) or "/"
            continue
        candidate = posixpath.join(current, part)
        link = f.get(candidate, getlink=True)
        if link is None:
            raise missing("")
        if isinstance(link, h5py.SoftLink):
            hops += 1
            if hops > _MAX_LINK_HOPS:
                raise MpitrainError(
                    f"{path}: the soft links on the way to {name!r} form a loop"
                )
            target = [p for p in link.path.split("/") if p and p != "."]
            if link.path.startswith("/"):
                current = "/"
            parts = target + parts
            continue
        if isinstance(link, h5py.ExternalLink):
            if not external_files:
                raise MpitrainError(
                    f"{path}: {name!r} is reached through an external link "
                    f"({candidate!r} -> {link.filename}:{link.path}), which reads "
                    "another file; refused by default: copy the data into the file "
                    "(h5copy, h5repack), or allow external files (external_files=True)"
                )
            try:
                obj = f[posixpath.join(candidate, *parts)]
            except (KeyError, OSError) as exc:
                raise MpitrainError(
                    f"{path}: the external link {candidate!r} -> "
                    f"{link.filename}:{link.path} cannot be followed ({exc})"
                ) from None
            break
        if not isinstance(link, h5py.HardLink):
            raise MpitrainError(
                f"{path}: {candidate!r} is a user-defined link; it cannot be read"
            )
        current = candidate
    else:
        obj = f[current] if current != "/" else f
    if not isinstance(obj, h5py.Dataset):
        raise MpitrainError(f"{path}: {name!r} is a group, not a dataset")
    return obj


def _inside(child: str, directory: str) -> bool:
    child, directory = os.path.realpath(child), os.path.realpath(directory)
    return os.path.commonpath([child, directory]) == directory


def _prefixes(variable: str, origin: str) -> list[str]:
    value = os.environ.get(variable, "")
    return [p.replace("${ORIGIN}", origin) for p in value.split(os.pathsep) if p]


def _source_file(virtual_file: str, name: str) -> str | None:
    """The file HDF5 opens for a virtual dataset's source ``name``, or ``None``. Local.

    HDF5's order: an absolute name as given, else its bare file name; under
    each prefix of ``$HDF5_VDS_PREFIX``; in the virtual file's directory;
    relative to the working directory.
    """
    if name == ".":
        return os.path.realpath(virtual_file)
    origin = os.path.dirname(os.path.abspath(virtual_file))
    candidates = []
    relative = name
    if os.path.isabs(name):
        candidates.append(name)
        relative = os.path.basename(name)
    candidates += [
        os.path.join(p, relative) for p in _prefixes("HDF5_VDS_PREFIX", origin)
    ]
    candidates += [os.path.join(origin, relative), os.path.abspath(relative)]
    for candidate in candidates:
        if os.path.isfile(candidate):
            return os.path.realpath(candidate)
    return None


def _virtual_sources(ds, path: str) -> list[tuple[Any, str, str, str | None]]:
    """``(mapping, source name as stored, dataset, resolved file or None)`` per mapping."""
    return [
        (m, m.file_name, m.dset_name, _source_file(path, m.file_name))
        for m in ds.virtual_sources()
    ]


def _check_virtual(
    ds,
    path: str,
    role: str,
    top: str,
    *,
    external_files: bool,
    max_chunk_bytes: int,
    depth: int,
) -> None:
    """Refuse a virtual dataset that would read fill values or files it may not. Local."""
    import h5py

    if depth > _MAX_VIRTUAL_DEPTH:
        raise MpitrainError(
            f"{path}: {role} dataset {ds.name!r} is a virtual dataset nested more "
            f"than {_MAX_VIRTUAL_DEPTH} deep"
        )
    directory = os.path.dirname(os.path.abspath(top))
    mapped = 0
    for mapping, stored, dset_name, source in _virtual_sources(ds, path):
        what = f"{path}: {role} dataset {ds.name!r} is a virtual dataset whose source {stored}:{dset_name}"
        if "%" in stored or "%" in dset_name:
            raise MpitrainError(
                f"{what} is a printf-style pattern; mpitrain cannot check which files "
                "it reads (rewrite the virtual dataset with literal names)"
            )
        if source is None:
            raise MpitrainError(
                f"{what} does not exist; HDF5 would read that part as the fill "
                "value, silently"
            )
        if not external_files and not _inside(source, directory):
            raise MpitrainError(
                f"{what} is the file {source}, outside the input's directory "
                f"{directory}; refused by default: move the source next to the input, "
                "or allow external files (external_files=True)"
            )
        mapped += mapping.vspace.get_select_npoints()
        try:
            with h5py.File(source, "r") as sf:
                try:
                    sds = resolve_dataset(
                        sf, dset_name, source, external_files=external_files
                    )
                except MpitrainError as exc:
                    raise MpitrainError(
                        f"{what} cannot be read: {exc}; HDF5 would read that part as "
                        "the fill value, silently"
                    ) from None
                _check_source_extent(mapping, sds, what)
                check_dataset(
                    sds,
                    source,
                    role,
                    top,
                    external_files=external_files,
                    max_chunk_bytes=max_chunk_bytes,
                    _depth=depth + 1,
                )
        except OSError as exc:
            raise MpitrainError(f"{what} cannot be opened: {exc}") from None
    if mapped < ds.size:
        raise MpitrainError(
            f"{path}: {role} dataset {ds.name!r} is a virtual dataset whose sources "
            f"cover {mapped:,} of its {ds.size:,} values; HDF5 would read the rest as "
            "the fill value, silently"
        )


def _check_source_extent(mapping, source, what: str) -> None:
    """Refuse a mapping that reads beyond its source dataset (read as fill). Local."""
    import h5py

    src = mapping.src_space
    wanted = mapping.vspace.get_select_npoints()
    if src.get_select_type() == h5py.h5s.SEL_ALL:
        # The whole source is mapped: it must have as many values as its place.
        if source.size < wanted:
            raise MpitrainError(
                f"{what} has {source.size:,} values (shape {source.shape}) but fills "
                f"{wanted:,} of the virtual dataset; HDF5 would read the rest as the "
                "fill value, silently"
            )
        return
    if not src.get_select_npoints():
        return
    _, end = src.get_select_bounds()
    if len(end) != source.ndim or any(e >= n for e, n in zip(end, source.shape)):
        raise MpitrainError(
            f"{what} has shape {source.shape}, smaller than the part mapped from it "
            f"(up to {tuple(int(e) + 1 for e in end)}); HDF5 would read the rest as "
            "the fill value, silently"
        )


def _external_storage(ds) -> list[str]:
    dcpl = ds.id.get_create_plist()
    return [
        os.fsdecode(dcpl.get_external(i)[0]) for i in range(dcpl.get_external_count())
    ]


def _fill_is_nan(ds) -> bool:
    """Whether unwritten values of ``ds`` read as NaN (a user-set NaN fill value)."""
    import h5py

    dcpl = ds.id.get_create_plist()
    if dcpl.fill_value_defined() != h5py.h5d.FILL_VALUE_USER_DEFINED:
        return False
    if ds.dtype.kind != "f":
        return False
    return bool(np.isnan(ds.fillvalue))


def _chunk_grid(ds) -> tuple[int, ...]:
    return tuple(-(-n // c) for n, c in zip(ds.shape, ds.chunks))


def _written_row_bands(ds) -> set[int]:
    """Indices (along the rows) of chunk rows whose every chunk is allocated."""
    grid = _chunk_grid(ds)
    across = math.prod(grid[1:])
    per_band: dict[int, int] = {}

    def count(info) -> None:
        band = info.chunk_offset[0] // ds.chunks[0]
        per_band[band] = per_band.get(band, 0) + 1

    dsid = ds.id
    if hasattr(dsid, "chunk_iter"):
        try:
            dsid.chunk_iter(count)
        except (NotImplementedError, RuntimeError):
            per_band.clear()
            for i in range(dsid.get_num_chunks()):
                count(dsid.get_chunk_info(i))
    else:  # pragma: no cover - old HDF5
        for i in range(dsid.get_num_chunks()):
            count(dsid.get_chunk_info(i))
    return {band for band, n in per_band.items() if n >= across}


def _missing_extent(ds) -> str:
    """The rows of ``ds`` in chunks never written, as ``"rows a-b, c-d, ..."``."""
    rows, bands = ds.chunks[0], _chunk_grid(ds)[0]
    gaps: list[tuple[int, int]] = []  # [first, last] missing bands
    previous = -1
    for band in [*sorted(_written_row_bands(ds)), bands]:
        if band > previous + 1:
            gaps.append((previous + 1, band - 1))
            if len(gaps) > 3:
                break
        previous = band
    shown = ", ".join(
        f"{a * rows:,}-{min(ds.shape[0], (b + 1) * rows) - 1:,}" for a, b in gaps[:3]
    )
    return f"rows {shown}" + (", ..." if len(gaps) > 3 else "")


def _check_written(ds, path: str, role: str) -> None:
    """Refuse storage that was never written (it would read as the fill value). Local."""
    import h5py

    if ds.size == 0:
        return
    dcpl = ds.id.get_create_plist()
    layout = dcpl.get_layout()
    raw = ds.size * ds.dtype.itemsize
    if layout == h5py.h5d.CHUNKED:
        expected = math.prod(_chunk_grid(ds))
        allocated = ds.id.get_num_chunks()
    elif layout == h5py.h5d.CONTIGUOUS:
        expected, allocated = 1, int(ds.id.get_storage_size() >= raw)
    else:
        return  # compact: stored in the header, always there
    if allocated >= expected:
        return
    stored = ds.id.get_storage_size()
    declared = (
        f"declares shape {ds.shape} ({_format_bytes(raw)} of {ds.dtype}) but stores "
        f"{_format_bytes(stored)}"
    )
    if _fill_is_nan(ds):
        # Unwritten rows read as NaN, which the missing-value checks see;
        # but a declared size nothing backs would be read for nothing.
        if allocated * 2 < expected and raw > IMPLAUSIBLE_RATIO * max(stored, 1):
            raise MpitrainError(
                f"{path}: {role} dataset {ds.name!r} {declared}: "
                f"{expected - allocated:,} of its {expected:,} chunks were never "
                "written; reading it would read NaN fill values for nothing"
            )
        return
    if layout == h5py.h5d.CONTIGUOUS:
        where = "its storage was never written"
    else:
        where = (
            f"{expected - allocated:,} of its {expected:,} chunks were never written "
            f"({_missing_extent(ds)})"
        )
    fill = ds.fillvalue.item() if hasattr(ds.fillvalue, "item") else ds.fillvalue
    raise MpitrainError(
        f"{path}: {role} dataset {ds.name!r} {declared}: {where}; HDF5 would read "
        f"them as the fill value {fill!r}, not data.  Write those rows, or "
        "create the dataset with fillvalue=NaN if they are missing values"
    )


def column_chunk_bytes(ds) -> int:
    """Bytes of one decompressed chunk of ``ds`` if it has filters, else 0. Pure."""
    if ds.chunks is None or ds.id.get_create_plist().get_nfilters() == 0:
        return 0
    return math.prod(ds.chunks) * ds.dtype.itemsize


def band_bytes(
    chunks: tuple[int, ...] | None,
    n_columns: int,
    itemsize: int,
    block_rows: int,
    compressed: bool,
) -> int:
    """Decompressed bytes HDF5 holds at once to read a 2-D dataset in blocks. Pure.

    Chunks no taller than a block are read whole, one at a time: one
    chunk.  Taller chunks are cut by blocks; the chunks of one chunk row
    across all the columns (a band) stay cached so that each is
    decompressed once.  Uncompressed chunks are read in place: 0.
    """
    if not chunks or not compressed:
        return 0
    chunk = math.prod(chunks) * itemsize
    if chunks[0] <= block_rows:
        return chunk
    return chunk * -(-max(n_columns, 1) // max(chunks[1], 1))


def check_dataset(
    ds,
    path: str,
    role: str,
    top: str | None = None,
    *,
    external_files: bool = False,
    max_chunk_bytes: int = CHUNK_BYTES_LIMIT,
    _depth: int = 0,
) -> None:
    """Refuse a dataset whose reading would be silently wrong or unbounded. Local.

    Checks, from metadata only: virtual sources (present, inside the
    directory of ``top``, the input file, unless ``external_files``),
    external raw storage, unwritten storage, and one decompressed chunk
    against ``max_chunk_bytes`` (the band of chunks that blocks of
    features need is checked by the caller, who knows the blocks: see
    :func:`band_bytes` and :func:`refuse_chunks`).  See the module's rules.

    Raises
    ------
    MpitrainError
        Naming the file, the dataset and what is wrong.
    """
    top = path if top is None else top
    if ds.is_virtual:
        _check_virtual(
            ds,
            path,
            role,
            top,
            external_files=external_files,
            max_chunk_bytes=max_chunk_bytes,
            depth=_depth,
        )
        return
    external = _external_storage(ds)
    if external and not external_files:
        raise MpitrainError(
            f"{path}: {role} dataset {ds.name!r} keeps its values in external files "
            f"({', '.join(external)}); refused by default: copy them into the file "
            "(h5repack), or allow external files (external_files=True)"
        )
    if not external:
        _check_written(ds, path, role)
    chunk = column_chunk_bytes(ds)
    if chunk > max_chunk_bytes:
        refuse_chunks(
            path,
            role,
            ds.name,
            ds.chunks,
            ds.shape,
            ds.dtype,
            chunk,
            chunk,
            max_chunk_bytes,
        )


def refuse_chunks(
    path: str,
    role: str,
    name: str,
    chunks: tuple[int, ...],
    shape: tuple[int, ...],
    dtype: Any,
    chunk: int,
    held: int,
    limit: int,
) -> None:
    """Raise the error for chunks that decompress to more than ``limit`` bytes. Pure.

    ``chunk`` is one decompressed chunk, ``held`` what a rank holds at once
    (a band of chunks across the columns, or one chunk).
    """
    shown = "x".join(str(c) for c in chunks)
    why = (
        f"its chunks ({shown}, {_format_bytes(chunk)} each decompressed) form row "
        f"bands of {_format_bytes(held)} across the columns, each needed whole by "
        "every block that reads its rows"
        if held > chunk
        else f"one compressed chunk ({shown}) decompresses to {_format_bytes(chunk)}"
    )
    raise MpitrainError(
        f"{path}: {role} dataset {name!r}: {why}, more than the "
        f"{_format_bytes(limit)} a rank may hold to read it; re-chunk it in rows of "
        f"all columns, e.g. h5repack -l {name.lstrip('/')}:CHUNK="
        f"{_suggested_chunk(shape, np.dtype(dtype).itemsize)} "
        f"{os.path.basename(path)} rechunked.h5"
    )


def _suggested_chunk(shape: tuple[int, ...], itemsize: int) -> str:
    """A chunk shape of about 1 MiB holding whole rows. Pure."""
    row = max(1, math.prod(shape[1:])) * itemsize
    rows = max(1, min(shape[0] or 1, (1 << 20) // row))
    return "x".join(str(n) for n in (rows, *shape[1:]))


def linked_files(ds, path: str) -> list[str]:
    """Files other than ``path`` that reading ``ds`` opens, resolved. Local.

    The file an external link led to, the sources of a virtual dataset
    (recursively) and external raw storage files; missing files are left
    out (the checks refuse them).
    """
    import h5py

    mine = os.path.realpath(path)
    found: list[str] = []

    def add(name: str | None) -> None:
        if name is not None:
            name = os.path.realpath(name)
            if name != mine and name not in found:
                found.append(name)

    def walk(d, where: str, depth: int) -> None:
        add(d.file.filename)
        if d.is_virtual and depth <= _MAX_VIRTUAL_DEPTH:
            for _, _, dset_name, source in _virtual_sources(d, where):
                add(source)
                if source is None:
                    continue
                try:
                    with h5py.File(source, "r") as sf:
                        if isinstance(sf.get(dset_name), h5py.Dataset):
                            walk(sf[dset_name], source, depth + 1)
                except OSError:
                    pass
        origin = os.path.dirname(os.path.abspath(where))
        for name in _external_storage(d):
            add(name if os.path.isabs(name) else os.path.join(origin, name))

    walk(ds, ds.file.filename, 0)
    return found
