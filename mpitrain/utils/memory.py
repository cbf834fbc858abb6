"""Large scratch arrays without numpy's huge-page advice.

numpy asks Linux for transparent huge pages (``madvise(MADV_HUGEPAGE)``) on
every array of 4 MB or more.  How long those pages take to fault in
depends on whether the kernel has huge pages at hand: on the 2-core VM of
``docs/unsupervised.md`` (THP ``madvise``), writing a fresh 1,000,000 x
50 float64 array with numpy took 0.08-1.1 s, on base pages a steady
0.21-0.49 s, and a pass of distance products over it ran at the same speed
either way (0.110 against 0.111 s).  k-means' centred copy, made once per
fit, uses base pages (``scripts/bench_unsupervised.py``, 2 ranks: 3.18-3.54
s in six runs against 3.74-3.82 s in the three just before).  Reading
rows into memory does not: there huge pages were faster (``RowReader``
into base pages, 1 rank: 1.07 against 2.69 GB/s cold, 1.08 against 4.28
warm, ``scripts/bench_read.py``).  Where THP is ``always`` the kernel
still gives these mappings huge pages.
"""

from __future__ import annotations

import mmap

import numpy as np

__all__ = ["empty_base_pages"]

# Below numpy's own threshold for the advice, numpy's allocator is used.
_ADVISED_FROM = 4 << 20


def empty_base_pages(shape: tuple[int, ...], dtype=np.float64) -> np.ndarray:
    """An uninitialised, writable C-ordered array not advised to use huge pages. Local.

    The memory is an anonymous mapping, returned to the system when the
    array (and every view of it) is freed.  Object arrays (text) and arrays
    under 4 MB come from numpy's allocator.
    """
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if nbytes < _ADVISED_FROM or dtype.hasobject:
        return np.empty(shape, dtype=dtype)
    return np.frombuffer(mmap.mmap(-1, nbytes), dtype=dtype).reshape(shape)
