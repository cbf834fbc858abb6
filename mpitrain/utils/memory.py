"""Large scratch arrays without numpy's huge-page advice.

numpy asks Linux for transparent huge pages (``madvise(MADV_HUGEPAGE)``) on
every array of 4 MB or more.  Where the kernel's THP setting is
``madvise`` (the default of many distributions) and the machine is a
virtual one, faulting those pages in can cost more than the work done on
them: on the 2-core VM of ``docs/unsupervised.md``, writing a fresh
1,000,000 x 50 float64 array took 0.6–1.1 s with the advice and 0.21–0.28 s
without, while a pass of distance products over it ran at the same speed
either way (0.110 against 0.111 s).  The arrays here are anonymous
mappings that numpy does not advise; where THP is ``always`` the kernel
still gives them huge pages.
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
    array (and every view of it) is freed.
    """
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if nbytes < _ADVISED_FROM:
        return np.empty(shape, dtype=dtype)
    return np.frombuffer(mmap.mmap(-1, nbytes), dtype=dtype).reshape(shape)
