"""Reading and writing data across ranks: the row partition, HDF5 slices, many files, atomic and ordered writes, memory budgets."""

from mpitrain.data._hdf5 import (
    BLOCK_BYTES,
    RING_BLOCKS,
    SAMPLE_BLOCK_BYTES,
    SAMPLE_BLOCKS,
    ReadBlock,
    RowBlock,
    RowReader,
    SourceFile,
    content_digest,
    expand_paths,
    fingerprint_files,
    open_rows,
    plan_blocks,
    read_rows,
    reading_bytes,
)
from mpitrain.data._inspect import CHUNK_BYTES_LIMIT
from mpitrain.data._memory import (
    MEMORY_LIMIT_VARIABLE,
    available_memory,
    check_reading_fits,
    check_rows_fit,
    rows_memory_bytes,
    smallest_rank_count,
)
from mpitrain.data._partition import (
    RowSlice,
    row_counts,
    row_range,
)
from mpitrain.data._write import (
    STALE_TEMPORARY_SECONDS,
    atomic_path,
    write_json,
    write_rows_in_order,
)

__all__ = [
    "BLOCK_BYTES",
    "RING_BLOCKS",
    "CHUNK_BYTES_LIMIT",
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
    "rows_memory_bytes",
    "smallest_rank_count",
    "check_rows_fit",
    "check_reading_fits",
    "MEMORY_LIMIT_VARIABLE",
    "available_memory",
    "row_range",
    "row_counts",
    "RowSlice",
    "STALE_TEMPORARY_SECONDS",
    "atomic_path",
    "write_rows_in_order",
    "write_json",
]
