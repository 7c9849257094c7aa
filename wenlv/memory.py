"""Large work buffers on ordinary pages.

numpy asks the kernel for transparent huge pages (``madvise``) on every large array. Where
THP defrag is ``madvise`` (as on these machines), the first touch of such an array can stall
in memory compaction: 0.9 GB took 0.08 s or 2.1 s by the state of memory, against a steady
0.35 s on 4 KiB pages. The federated fit touches ≈ 1 GB of fresh buffers at 300k users,
so it allocates them here. Streaming passes over them run as fast on either page size.
"""
from __future__ import annotations

import mmap

import numpy as np


def plain_pages_empty(shape, dtype=np.float64) -> np.ndarray:
    """Like ``np.empty(shape, dtype)``, on anonymous memory without the huge-page advice."""
    shape = tuple(int(d) for d in np.atleast_1d(shape))
    count = int(np.prod(shape, dtype=np.int64))
    dtype = np.dtype(dtype)
    pages = mmap.mmap(-1, max(count * dtype.itemsize, 1))  # freed (unmapped) with the last view of it
    return np.frombuffer(pages, dtype=dtype, count=count).reshape(shape)
